//! The RFC 5934 types as DER values (`TAMPUpdate` and what it is made of), and the strict
//! decoder [`decode_update`].

use der::asn1::{Ia5String, Null, ObjectIdentifier, OctetString};
use der::{
    Any, Choice, Decode, DecodeValue, Encode, EncodeValue, Enumerated, FixedTag, Header, Length,
    Reader, Sequence, Tag, Writer,
};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::anchor::TrustAnchorChoice;
use x509_cert::ext::pkix::name::OtherName;

use super::error::{canonical, malformed, TampError};

/// `SeqNumber ::= INTEGER (0..9223372036854775807)` (RFC 5934 §4.1); the range is enforced when
/// decoding and by [`SeqNumber::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNumber(u64);

impl SeqNumber {
    /// The largest sequence number, 2^63 - 1.
    pub const MAX: u64 = i64::MAX as u64;

    /// `value` if it is in range.
    pub fn new(value: u64) -> Option<SeqNumber> {
        (value <= Self::MAX).then_some(SeqNumber(value))
    }

    /// The number.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl FixedTag for SeqNumber {
    const TAG: Tag = Tag::Integer;
}

impl<'a> DecodeValue<'a> for SeqNumber {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        // u64's decoder refuses negative and non-minimal INTEGERs; the upper bound is ours.
        let value = u64::decode_value(reader, header)?;
        SeqNumber::new(value).ok_or_else(|| Tag::Integer.value_error())
    }
}

impl EncodeValue for SeqNumber {
    fn value_len(&self) -> der::Result<Length> {
        self.0.value_len()
    }
    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        self.0.encode_value(writer)
    }
}

/// `TAMPVersion ::= INTEGER { v1(1), v2(2) }` (RFC 5934 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enumerated)]
#[asn1(type = "INTEGER")]
#[repr(u8)]
pub enum TampVersion {
    /// Version 1 (RFC 5934 drafts); not supported.
    V1 = 1,
    /// Version 2, the DEFAULT.
    V2 = 2,
}

/// `TerseOrVerbose ::= ENUMERATED { terse(1), verbose(2) }` (RFC 5934 §4.1): how the meter's
/// confirmation is to be formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enumerated)]
#[repr(u8)]
pub enum TerseOrVerbose {
    /// A terse confirmation.
    Terse = 1,
    /// A verbose confirmation, the DEFAULT.
    Verbose = 2,
}

/// `BlockOfSerialNumbers` (RFC 5934 §4.1): an inclusive range of serial numbers.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct BlockOfSerialNumbers {
    /// First serial number.
    pub low: OctetString,
    /// Last serial number.
    pub high: OctetString,
}

/// `HardwareSerialEntry` (RFC 5934 §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Choice)]
pub enum HardwareSerialEntry {
    /// Every module of the type.
    All(Null),
    /// One module: for meterpki, the 8 bytes of its EUI-64.
    Single(OctetString),
    /// A range of modules.
    Block(BlockOfSerialNumbers),
}

/// `HardwareModules` (RFC 5934 §4.1): modules of one hardware type.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct HardwareModules {
    /// The hardware type.
    pub hw_type: ObjectIdentifier,
    /// Which modules of that type; `SIZE (1..MAX)`.
    pub hw_serial_entries: Vec<HardwareSerialEntry>,
}

/// `TargetIdentifier` (RFC 5934 §4.1): which modules the message is for.
#[derive(Clone, Debug, PartialEq, Eq, Choice)]
pub enum TargetIdentifier {
    /// `[1] HardwareModuleIdentifierList`, `SIZE (1..MAX)`: the only target meterpki produces.
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    HwModules(Vec<HardwareModules>),
    /// `[2] CommunityIdentifierList`, kept opaque (each element a `CommunityIdentifier`).
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", constructed = "true")]
    Communities(Vec<Any>),
    /// `[3] NULL`: every module.
    #[asn1(context_specific = "3", tag_mode = "IMPLICIT")]
    AllModules(Null),
    /// `[4] IA5String`.
    #[asn1(context_specific = "4", tag_mode = "IMPLICIT")]
    Uri(Ia5String),
    /// `[5] AnotherName`.
    #[asn1(context_specific = "5", tag_mode = "IMPLICIT", constructed = "true")]
    OtherName(OtherName),
}

/// `TAMPMsgRef` (RFC 5934 §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct TampMsgRef {
    /// Which modules.
    pub target: TargetIdentifier,
    /// The message's sequence number; a module accepts only increasing ones (RFC 5934 §6).
    pub seq_num: SeqNumber,
}

/// `TrustAnchorUpdate` (RFC 5934 §4.3).
#[derive(Clone, Debug, PartialEq, Eq, Choice)]
#[allow(clippy::large_enum_variant)]
pub enum TrustAnchorUpdate {
    /// `add [1] TrustAnchorChoice` (explicit: the tagged type is a CHOICE).
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    Add(TrustAnchorChoice),
    /// `remove [2] SubjectPublicKeyInfo` (implicit).
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", constructed = "true")]
    Remove(SubjectPublicKeyInfoOwned),
    /// `change [3] EXPLICIT TrustAnchorChangeInfoChoice`, kept opaque: meterpki never produces
    /// it and [`verify_update`](super::verify_update) reports it as unsupported.
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", constructed = "true")]
    Change(Any),
}

/// `TAMPSequenceNumber` (RFC 5934 §4.3).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct TampSequenceNumber {
    /// `SubjectKeyIdentifier` of the trust anchor.
    pub key_id: OctetString,
    /// Its new sequence number.
    pub seq_number: SeqNumber,
}

/// `TAMPUpdate` (RFC 5934 §4.3).
///
/// The two DEFAULT fields are `Option`s: `None` is the default, and DER forbids encoding the
/// default, so `Some(TampVersion::V2)` and `Some(TerseOrVerbose::Verbose)` are refused by
/// [`decode_update`] and [`TampUpdate::to_der_checked`].
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct TampUpdate {
    /// `[0] TAMPVersion DEFAULT v2`.
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub version: Option<TampVersion>,
    /// `[1] TerseOrVerbose DEFAULT verbose`.
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub terse: Option<TerseOrVerbose>,
    /// Target and sequence number.
    pub msg_ref: TampMsgRef,
    /// The changes, `SIZE (1..MAX)`.
    pub updates: Vec<TrustAnchorUpdate>,
    /// `[2] TAMPSequenceNumbers OPTIONAL`, `SIZE (1..MAX)`.
    #[asn1(
        context_specific = "2",
        tag_mode = "IMPLICIT",
        constructed = "true",
        optional = "true"
    )]
    pub tamp_seq_numbers: Option<Vec<TampSequenceNumber>>,
}

impl TampUpdate {
    /// The constraints DER and RFC 5934 put on a value that the types alone do not.
    fn check(&self) -> Result<(), TampError> {
        let bad = |reason: &str| {
            Err(TampError::Malformed {
                what: "TAMPUpdate",
                reason: reason.to_string(),
            })
        };
        match self.version {
            None => {}
            Some(TampVersion::V2) => {
                return bad("version v2 is the DEFAULT and must be omitted in DER (X.690 §11.5)")
            }
            Some(TampVersion::V1) => {
                return Err(TampError::Unsupported {
                    what: "TAMPUpdate version v1".into(),
                })
            }
        }
        if self.terse == Some(TerseOrVerbose::Verbose) {
            return bad("terse = verbose is the DEFAULT and must be omitted in DER (X.690 §11.5)");
        }
        if self.updates.is_empty() {
            return bad("updates is empty (RFC 5934 §4.3: SIZE (1..MAX))");
        }
        if let TargetIdentifier::HwModules(list) = &self.msg_ref.target {
            if list.is_empty() {
                return bad("hwModules is empty (RFC 5934 §4.1: SIZE (1..MAX))");
            }
            if list.iter().any(|m| m.hw_serial_entries.is_empty()) {
                return bad("hwSerialEntries is empty (RFC 5934 §4.1: SIZE (1..MAX))");
            }
        }
        if matches!(&self.tamp_seq_numbers, Some(v) if v.is_empty()) {
            return bad("tampSeqNumbers is empty (RFC 5934 §4.3: SIZE (1..MAX))");
        }
        Ok(())
    }

    /// DER, after checking the constraints [`decode_update`] enforces.
    pub fn to_der_checked(&self) -> Result<Vec<u8>, TampError> {
        self.check()?;
        Ok(self.to_der()?)
    }
}

/// Decodes a DER `TAMPUpdate` strictly: canonical DER only, no trailing data, DEFAULT fields
/// omitted, no empty lists, sequence numbers in range; version v1 is unsupported.
pub fn decode_update(der: &[u8]) -> Result<TampUpdate, TampError> {
    let update = TampUpdate::from_der(der).map_err(malformed("TAMPUpdate"))?;
    canonical(&update, der, "TAMPUpdate")?;
    update.check()?;
    Ok(update)
}
