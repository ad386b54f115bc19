//! Trust-anchor updates for meters: RFC 5934 (TAMP) `TAMPUpdate` messages in RFC 5652 CMS
//! `SignedData`, built here, signed through the [`Signer`] seam and verified as a meter would.
//!
//! The flow reads in order: [`UpdateContent`] -> [`encode_update`] (the DER `TAMPUpdate`) ->
//! [`UpdateSigner::to_be_signed`] (the signed attributes) -> [`Signer::sign`] (the HSM) ->
//! [`UpdateSigner::assemble`] (signature verified, CMS `ContentInfo` built). [`UpdateSigner::sign`]
//! does all three. [`verify_update`] is the meter's side.
//!
//! # The ASN.1 (RFC 5934 Appendix A, `DEFINITIONS IMPLICIT TAGS`)
//!
//! ```text
//! id-tamp OBJECT IDENTIFIER ::= { joint-iso-ccitt(2) country(16) us(840) organization(1)
//!                                 gov(101) dod(2) infosec(1) formats(2) 77 }
//! id-ct-TAMP-update OBJECT IDENTIFIER ::= { id-tamp 3 }      -- 2.16.840.1.101.2.1.2.77.3
//!
//! -- §4.3 TAMP Update
//! TAMPUpdate ::= SEQUENCE {
//!   version  [0] TAMPVersion DEFAULT v2,
//!   terse    [1] TerseOrVerbose DEFAULT verbose,
//!   msgRef   TAMPMsgRef,
//!   updates  SEQUENCE SIZE (1..MAX) OF TrustAnchorUpdate,
//!   tampSeqNumbers [2] TAMPSequenceNumbers OPTIONAL }
//! TAMPVersion ::= INTEGER { v1(1), v2(2) }
//! TerseOrVerbose ::= ENUMERATED { terse(1), verbose(2) }
//! TrustAnchorUpdate ::= CHOICE {
//!   add    [1] TrustAnchorChoice,              -- a tagged CHOICE: always EXPLICIT
//!   remove [2] SubjectPublicKeyInfo,
//!   change [3] EXPLICIT TrustAnchorChangeInfoChoice }
//! TAMPSequenceNumbers ::= SEQUENCE SIZE (1..MAX) OF TAMPSequenceNumber
//! TAMPSequenceNumber ::= SEQUENCE { keyId SubjectKeyIdentifier, seqNumber SeqNumber }
//!
//! -- §4.1 TAMP Status Query: TAMPMsgRef and TargetIdentifier
//! TAMPMsgRef ::= SEQUENCE { target TargetIdentifier, seqNum SeqNumber }
//! SeqNumber ::= INTEGER (0..9223372036854775807)
//! TargetIdentifier ::= CHOICE {
//!   hwModules   [1] HardwareModuleIdentifierList,
//!   communities [2] CommunityIdentifierList,
//!   allModules  [3] NULL,
//!   uri         [4] IA5String,
//!   otherName   [5] AnotherName }
//! HardwareModuleIdentifierList ::= SEQUENCE SIZE (1..MAX) OF HardwareModules
//! HardwareModules ::= SEQUENCE {
//!   hwType OBJECT IDENTIFIER,
//!   hwSerialEntries SEQUENCE SIZE (1..MAX) OF HardwareSerialEntry }
//! HardwareSerialEntry ::= CHOICE {
//!   all    NULL,
//!   single OCTET STRING,
//!   block  BlockOfSerialNumbers }
//! BlockOfSerialNumbers ::= SEQUENCE { low OCTET STRING, high OCTET STRING }
//! CommunityIdentifierList ::= SEQUENCE SIZE (0..MAX) OF CommunityIdentifier
//! ```
//!
//! Under IMPLICIT TAGS `[0] TAMPVersion` and `[1] TerseOrVerbose` stay primitive (`81 01 01`),
//! `remove [2]` replaces the SEQUENCE tag of the SubjectPublicKeyInfo (`a2 ..`), and `add [1]`
//! wraps the TrustAnchorChoice (`a1 .. 30 ..`, X.680 §31.2.7: a tagged CHOICE is explicit).
//!
//! # The envelope (RFC 5652 §5, RFC 5934 §2)
//!
//! `ContentInfo { id-signedData, [0] SignedData }`; SignedData version 3 (§5.1: eContentType
//! is not id-data), digestAlgorithms `{ sha256 }` with absent parameters (RFC 5754 §2),
//! encapContentInfo `{ id-ct-TAMP-update, [0] OCTET STRING TAMPUpdate }`, certificates = the
//! signer certificate and its chain (a DER SET OF, so sorted, not in path order), no CRLs, one
//! SignerInfo: version 1, issuerAndSerialNumber, sha256, signed attributes contentType and
//! messageDigest (§5.3, §11.1, §11.2; the bytes signed are the DER SET OF with tag `0x31`,
//! §5.4), ecdsa-with-SHA256 with absent parameters (RFC 5758 §3.2), the DER ECDSA-Sig-Value.
//!
//! # Strictness
//!
//! Decoding is strict DER: besides what the `der` crate enforces, every decoded structure is
//! encoded again and must give back the exact input, which refuses unsorted SET OFs and the
//! unknown context-specific fields `der` skips before an OPTIONAL field. A DEFAULT value
//! encoded explicitly is refused (X.690 §11.5), as are empty `SIZE (1..MAX)` lists and a
//! SeqNumber above 2^63 - 1.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use der::asn1::{Ia5String, Null, ObjectIdentifier, OctetString, SetOfVec};
use der::{
    Any, Choice, Decode, DecodeValue, Encode, EncodeValue, Enumerated, FixedTag, Header, Length,
    Reader, Sequence, Tag, Tagged, Writer,
};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::anchor::TrustAnchorChoice;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::OtherName;
use x509_cert::ext::pkix::{BasicConstraints, CertificatePolicies, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use crate::certs::{check_key_matches, verify_certificate_signature, CertError};
use crate::model::Eui64;
use crate::signer::{verify_signature_fast, KeyAlgorithm, SignError, Signer, VerifyError};

/// id-ct-TAMP-update (RFC 5934 Appendix A): the eContentType of a TAMP update.
pub const ID_CT_TAMP_UPDATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.2.1.2.77.3");
/// id-signedData (RFC 5652 §5.1).
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-contentType (RFC 5652 §11.1).
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// id-messageDigest (RFC 5652 §11.2).
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// id-sha256 (RFC 5754 §2).
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// ecdsa-with-SHA256 (RFC 5758 §3.2).
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// RFC 5280 §4.2.1.9, §4.2.1.3, §4.2.1.4, §4.2.1.2, §4.2.1.1.
const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const ID_CE_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const ID_CE_CERTIFICATE_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
const ID_CE_SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const ID_CE_AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");

/// Longest path accepted between the signer certificate and the root.
const MAX_INTERMEDIATES: usize = 4;

// ---------------------------------------------------------------------------------------------
// The TAMP types
// ---------------------------------------------------------------------------------------------

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
    /// it and [`verify_update`] reports it as unsupported.
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

// ---------------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------------

/// What one update says: for the meter `device` of type `hw_type`, remove these trust anchors
/// and add these, as message number `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateContent {
    /// The meter's hardware type (`hwType`).
    pub hw_type: ObjectIdentifier,
    /// The meter.
    pub device: Eui64,
    /// The message's sequence number, at most 2^63 - 1.
    pub seq: u64,
    /// Trust anchors to remove, by public key.
    pub remove: Vec<SubjectPublicKeyInfoOwned>,
    /// Trust anchors to add.
    pub add: Vec<Certificate>,
}

/// The DER `TAMPUpdate` for `c`: target `hwModules [{ hwType, [single(EUI-64)] }]`, version
/// and terse omitted (their defaults), the removals first then the additions. Refuses an update
/// that changes nothing and a sequence number above 2^63 - 1.
pub fn encode_update(c: &UpdateContent) -> Result<Vec<u8>, TampError> {
    if c.remove.is_empty() && c.add.is_empty() {
        return Err(TampError::EmptyUpdates);
    }
    TampUpdate {
        version: None,
        terse: None,
        msg_ref: msg_ref(c.hw_type, &c.device, c.seq)?,
        updates: anchor_updates(&c.remove, &c.add),
        tamp_seq_numbers: None,
    }
    .to_der_checked()
}

/// `updates`: the removals first, then the additions.
fn anchor_updates(
    remove: &[SubjectPublicKeyInfoOwned],
    add: &[Certificate],
) -> Vec<TrustAnchorUpdate> {
    remove
        .iter()
        .cloned()
        .map(TrustAnchorUpdate::Remove)
        .chain(
            add.iter()
                .cloned()
                .map(|cert| TrustAnchorUpdate::Add(TrustAnchorChoice::Certificate(cert))),
        )
        .collect()
}

/// `msgRef` for one meter: target `hwModules [{ hwType, [single(EUI-64)] }]`, number `seq`.
fn msg_ref(hw_type: ObjectIdentifier, device: &Eui64, seq: u64) -> Result<TampMsgRef, TampError> {
    Ok(TampMsgRef {
        target: TargetIdentifier::HwModules(vec![HardwareModules {
            hw_type,
            hw_serial_entries: vec![HardwareSerialEntry::Single(OctetString::new(
                device.bytes().to_vec(),
            )?)],
        }]),
        seq_num: SeqNumber::new(seq).ok_or(TampError::SeqOutOfRange { seq })?,
    })
}

/// The `updates` of many messages that differ only in target and sequence number (every meter
/// of a takeover drops the same keys and adds the same certificates): encoded once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedUpdates {
    /// DER `SEQUENCE SIZE (1..MAX) OF TrustAnchorUpdate`.
    der: Vec<u8>,
}

impl PreparedUpdates {
    /// Removals first, then additions, as [`encode_update`] orders them.
    pub fn new(
        remove: &[SubjectPublicKeyInfoOwned],
        add: &[Certificate],
    ) -> Result<PreparedUpdates, TampError> {
        if remove.is_empty() && add.is_empty() {
            return Err(TampError::EmptyUpdates);
        }
        Ok(PreparedUpdates {
            der: anchor_updates(remove, add).to_der()?,
        })
    }

    /// The DER `TAMPUpdate` for one meter: the same bytes [`encode_update`] makes (a test holds
    /// the two together), without re-encoding the certificates for every meter.
    pub fn encode_for(
        &self,
        hw_type: ObjectIdentifier,
        device: &Eui64,
        seq: u64,
    ) -> Result<Vec<u8>, TampError> {
        let msg_ref = msg_ref(hw_type, device, seq)?.to_der()?;
        let mut body = Vec::with_capacity(msg_ref.len() + self.der.len());
        body.extend_from_slice(&msg_ref);
        body.extend_from_slice(&self.der);
        Ok(tlv(0x30, &[&body]))
    }
}

/// One DER TLV: `tag`, the definite length of the concatenated `parts`, the parts. Written by
/// hand because the envelope of every update is the same but for three fields: concatenating
/// pre-encoded pieces saves re-encoding (and cloning) the certificates for each of a million
/// meters. Tests check the result against the `cms` crate's encoding and openssl.
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Signs TAMP updates: the HSM key behind a [`Signer`], its certificate and the certificates
/// between it and the root (for example the Organisation CA's), which travel in the message.
#[derive(Debug)]
pub struct UpdateSigner {
    signer: Arc<dyn Signer>,
    cert: Certificate,
    sid: SignerIdentifier,
    certificates: CertificateSet,
    /// DER pieces of the envelope that are the same in every message.
    sid_der: Vec<u8>,
    certificates_der: Vec<u8>,
    sha256_der: Vec<u8>,
    signature_algorithm_der: Vec<u8>,
    content_type_der: Vec<u8>,
    signed_data_type_der: Vec<u8>,
}

impl UpdateSigner {
    /// Refuses a key that does not match `cert` and a key other than P-256 (meters verify
    /// ecdsa-with-SHA256). `chain` should not include the root; a copy of `cert` in it is
    /// dropped.
    pub fn new(
        signer: Arc<dyn Signer>,
        cert: Certificate,
        chain: Vec<Certificate>,
    ) -> Result<UpdateSigner, TampError> {
        check_key_matches(signer.as_ref(), &cert, "TAMP signer").map_err(TampError::KeyMismatch)?;
        if signer.algorithm() != KeyAlgorithm::EcP256 {
            return Err(TampError::Unsupported {
                what: format!(
                    "a {} TAMP signing key (meters verify ecdsa-with-SHA256 only)",
                    signer.algorithm().name()
                ),
            });
        }
        let sid = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        });
        let mut all: Vec<Certificate> = vec![cert.clone()];
        for c in chain {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        // A DER SET OF is sorted: the path order cannot be kept (verifiers build the path).
        let certificates = CertificateSet(SetOfVec::try_from(
            all.into_iter()
                .map(CertificateChoices::Certificate)
                .collect::<Vec<_>>(),
        )?);
        // [0] IMPLICIT CertificateSet: the SET OF's content under the context tag.
        let set_der = certificates.to_der()?;
        let set_content = der::SliceReader::new(&set_der)
            .and_then(|mut r| {
                let header = der::Header::decode(&mut r)?;
                r.read_slice(header.length)
            })?
            .to_vec();
        Ok(UpdateSigner {
            signer,
            cert,
            sid_der: sid.to_der()?,
            sid,
            certificates_der: tlv(0xA0, &[&set_content]),
            certificates,
            sha256_der: sha256_algorithm().to_der()?,
            signature_algorithm_der: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            }
            .to_der()?,
            content_type_der: ID_CT_TAMP_UPDATE.to_der()?,
            signed_data_type_der: ID_SIGNED_DATA.to_der()?,
        })
    }

    /// The signer's certificate.
    pub fn signer_certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The bytes the HSM signs for `content_der` (a DER `TAMPUpdate`, checked with
    /// [`decode_update`]): the DER SignedAttributes as a SET OF (tag `0x31`, RFC 5652 §5.4)
    /// holding contentType = id-ct-TAMP-update and messageDigest = SHA-256(content).
    pub fn to_be_signed(&self, content_der: &[u8]) -> Result<Vec<u8>, TampError> {
        decode_update(content_der)?;
        Ok(signed_attributes(content_der)?.to_der()?)
    }

    /// Verifies `signature` (a DER ECDSA-Sig-Value over `to_be_signed`) with the signer
    /// certificate's key and assembles the DER `ContentInfo`. Refuses `to_be_signed` bytes that
    /// are not [`UpdateSigner::to_be_signed`] of this content, and a signature that does not
    /// verify: nothing is returned that a meter would reject.
    pub fn assemble(
        &self,
        content_der: &[u8],
        to_be_signed: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, TampError> {
        if signed_attributes(content_der)?.to_der()? != to_be_signed {
            return Err(TampError::NotOurSignedAttributes);
        }
        verify_signature_fast(
            &self.cert.tbs_certificate.subject_public_key_info,
            to_be_signed,
            signature,
        )
        .map_err(|source| TampError::SignerSignature { source })?;
        self.envelope(content_der, to_be_signed, signature)
    }

    /// The `ContentInfo` around verified pieces, concatenated from DER (RFC 5652 §5.1-5.4):
    /// `SignedData { 3, {sha256}, { id-ct-TAMP-update, [0] content }, [0] certificates,
    /// { SignerInfo { 1, sid, sha256, [0] signedAttrs, ecdsa-with-SHA256, signature } } }`.
    fn envelope(
        &self,
        content_der: &[u8],
        to_be_signed: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, TampError> {
        // signedAttrs [0] IMPLICIT: the signed SET's content under 0xA0.
        let attrs_content = to_be_signed
            .get(header_len(to_be_signed)?..)
            .ok_or(TampError::NotOurSignedAttributes)?;
        let signer_info = tlv(
            0x30,
            &[
                &[0x02, 0x01, 0x01],
                &self.sid_der,
                &self.sha256_der,
                &tlv(0xA0, &[attrs_content]),
                &self.signature_algorithm_der,
                &tlv(0x04, &[signature]),
            ],
        );
        let encap = tlv(
            0x30,
            &[
                &self.content_type_der,
                &tlv(0xA0, &[&tlv(0x04, &[content_der])]),
            ],
        );
        let signed_data = tlv(
            0x30,
            &[
                &[0x02, 0x01, 0x03],
                &tlv(0x31, &[&self.sha256_der]),
                &encap,
                &self.certificates_der,
                &tlv(0x31, &[&signer_info]),
            ],
        );
        Ok(tlv(
            0x30,
            &[&self.signed_data_type_der, &tlv(0xA0, &[&signed_data])],
        ))
    }

    /// The same envelope built with the `cms` crate's types, for the test that holds the two
    /// encodings together.
    #[doc(hidden)]
    pub fn envelope_with_cms_types(
        &self,
        content_der: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, TampError> {
        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: self.sid.clone(),
            digest_alg: sha256_algorithm(),
            signed_attrs: Some(signed_attributes(content_der)?),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            },
            signature: OctetString::new(signature)?,
            unsigned_attrs: None,
        };
        let signed_data = SignedData {
            version: CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_CT_TAMP_UPDATE,
                econtent: Some(Any::encode_from(&OctetString::new(content_der)?)?),
            },
            certificates: Some(self.certificates.clone()),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
        };
        Ok(ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&signed_data)?,
        }
        .to_der()?)
    }

    /// [`to_be_signed`](Self::to_be_signed), the signer, then [`assemble`](Self::assemble)
    /// (which verifies the signature): a faulty HSM signature is an error, never output.
    pub fn sign(&self, content_der: &[u8]) -> Result<Vec<u8>, TampError> {
        let tbs = self.to_be_signed(content_der)?;
        let signature = self.signer.sign(&tbs)?;
        self.assemble(content_der, &tbs, &signature)
    }

    /// [`sign`](Self::sign) for content this crate encoded itself ([`PreparedUpdates`]): the
    /// content is not decoded again; the signature is verified all the same.
    pub fn sign_encoded(&self, content_der: &[u8]) -> Result<Vec<u8>, TampError> {
        let tbs = signed_attributes(content_der)?.to_der()?;
        let signature = self.signer.sign(&tbs)?;
        verify_signature_fast(
            &self.cert.tbs_certificate.subject_public_key_info,
            &tbs,
            &signature,
        )
        .map_err(|source| TampError::SignerSignature { source })?;
        self.envelope(content_der, &tbs, &signature)
    }
}

/// The length of a DER TLV's header (tag and length octets).
fn header_len(der: &[u8]) -> Result<usize, TampError> {
    let mut r = der::SliceReader::new(der)?;
    let header = der::Header::decode(&mut r)?;
    Ok(header.encoded_len()?.try_into()?)
}

fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: None,
    }
}

fn signed_attributes(content_der: &[u8]) -> Result<SignedAttributes, TampError> {
    let content_type = Attribute {
        oid: ID_CONTENT_TYPE,
        values: SetOfVec::try_from(vec![Any::encode_from(&ID_CT_TAMP_UPDATE)?])?,
    };
    let digest = OctetString::new(crate::sha256(content_der).to_vec())?;
    let message_digest = Attribute {
        oid: ID_MESSAGE_DIGEST,
        values: SetOfVec::try_from(vec![Any::encode_from(&digest)?])?,
    };
    Ok(SetOfVec::try_from(vec![content_type, message_digest])?)
}

// ---------------------------------------------------------------------------------------------
// Verifying, as a meter would
// ---------------------------------------------------------------------------------------------

/// What a meter checks beyond the signature and the path to its root.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The certificate policy the signer certificate must carry.
    pub signer_policy: ObjectIdentifier,
    /// This meter: when set, it must be one of the `single` entries of the target.
    pub device: Option<Eui64>,
    /// The last sequence number accepted: when set, the message's must be greater.
    pub after_seq: Option<u64>,
    /// The time at which every certificate must be valid.
    pub now: SystemTime,
}

/// A TAMP update whose signature, path and content checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUpdate {
    /// The message's sequence number.
    pub seq: u64,
    /// Whether a terse confirmation was asked for.
    pub terse: bool,
    /// The targeted hardware type.
    pub hw_type: ObjectIdentifier,
    /// The targeted meters.
    pub devices: Vec<Eui64>,
    /// Trust anchors to remove.
    pub removed: Vec<SubjectPublicKeyInfoOwned>,
    /// Trust anchors to add.
    pub added: Vec<Certificate>,
    /// The certificate that signed the message.
    pub signer: Certificate,
    /// The DER `TAMPUpdate`.
    pub content: Vec<u8>,
}

/// Verifies a DER `ContentInfo` as a meter trusting `root` would: strict DER; one SignerInfo
/// over a TAMP update with the algorithms meterpki uses; messageDigest; the signature; a path
/// signer -> CAs from the message -> `root`, every certificate valid at `opts.now`, the CAs with
/// cA and keyCertSign, the signer an end entity with digitalSignature and `opts.signer_policy`;
/// then the TAMPUpdate itself, its target and its sequence number.
///
/// Accepted but unused: CRLs in the SignedData, unsigned attributes, signed attributes other
/// than contentType and messageDigest, tampSeqNumbers. Refused as unsupported: a subject key
/// identifier `sid`, targets other than one `hwModules` entry of `single` EUI-64s, `change`
/// updates and trust anchors added as anything but a certificate.
pub fn verify_update(
    der: &[u8],
    root: &Certificate,
    opts: &VerifyOptions,
) -> Result<VerifiedUpdate, TampError> {
    // The envelope (RFC 5652 §3, §5.1).
    let content_info = ContentInfo::from_der(der).map_err(malformed("ContentInfo"))?;
    canonical(&content_info, der, "ContentInfo")?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(TampError::ContentType {
            what: "ContentInfo contentType",
            found: content_info.content_type,
            expected: ID_SIGNED_DATA,
        });
    }
    let sd_der = content_info
        .content
        .to_der()
        .map_err(malformed("SignedData"))?;
    let sd = SignedData::from_der(&sd_der).map_err(malformed("SignedData"))?;
    canonical(&sd, &sd_der, "SignedData")?;
    if sd.version != CmsVersion::V3 {
        return Err(TampError::Malformed {
            what: "SignedData version",
            reason: format!(
                "{:?}, expected 3 (RFC 5652 §5.1: eContentType is not id-data)",
                sd.version
            ),
        });
    }
    if sd.digest_algorithms.len() != 1 || !sd.digest_algorithms.iter().all(is_sha256) {
        return Err(TampError::Algorithm {
            what: "SignedData digestAlgorithms",
            found: sd
                .digest_algorithms
                .iter()
                .map(|a| a.oid.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            expected: "sha256 alone",
        });
    }
    let eci = &sd.encap_content_info;
    if eci.econtent_type != ID_CT_TAMP_UPDATE {
        return Err(TampError::ContentType {
            what: "eContentType",
            found: eci.econtent_type,
            expected: ID_CT_TAMP_UPDATE,
        });
    }
    let content = eci
        .econtent
        .as_ref()
        .ok_or_else(|| TampError::Malformed {
            what: "encapContentInfo",
            reason: "eContent is absent (detached content is not supported)".into(),
        })?
        .decode_as::<OctetString>()
        .map_err(malformed("eContent"))?;
    let content = content.as_bytes();

    // The one SignerInfo (RFC 5652 §5.3).
    let si = match sd.signer_infos.0.as_slice() {
        [si] => si,
        other => {
            return Err(TampError::Malformed {
                what: "SignedData signerInfos",
                reason: format!("{} SignerInfos, expected exactly 1", other.len()),
            })
        }
    };
    if si.version != CmsVersion::V1 {
        return Err(TampError::Malformed {
            what: "SignerInfo version",
            reason: format!("{:?}, expected 1 (issuerAndSerialNumber)", si.version),
        });
    }
    let ias = match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => ias,
        SignerIdentifier::SubjectKeyIdentifier(_) => {
            return Err(TampError::Unsupported {
                what: "a SignerInfo identified by subjectKeyIdentifier".into(),
            })
        }
    };
    if !is_sha256(&si.digest_alg) {
        return Err(TampError::Algorithm {
            what: "SignerInfo digestAlgorithm",
            found: si.digest_alg.oid.to_string(),
            expected: "sha256",
        });
    }
    if si.signature_algorithm.oid != ECDSA_WITH_SHA256
        || si.signature_algorithm.parameters.is_some()
    {
        return Err(TampError::Algorithm {
            what: "SignerInfo signatureAlgorithm",
            found: si.signature_algorithm.oid.to_string(),
            expected: "ecdsa-with-SHA256 (1.2.840.10045.4.3.2) with absent parameters",
        });
    }
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| TampError::Malformed {
            what: "SignerInfo",
            reason:
                "signedAttrs are absent (RFC 5652 §5.3: required when eContentType is not id-data)"
                    .into(),
        })?;
    let signed_type: ObjectIdentifier = single_attribute(attrs, ID_CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(malformed("contentType signed attribute"))?;
    if signed_type != ID_CT_TAMP_UPDATE {
        return Err(TampError::ContentType {
            what: "contentType signed attribute",
            found: signed_type,
            expected: ID_CT_TAMP_UPDATE,
        });
    }
    let digest: OctetString = single_attribute(attrs, ID_MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(malformed("messageDigest signed attribute"))?;
    if digest.as_bytes() != crate::sha256(content).as_slice() {
        return Err(TampError::MessageDigest);
    }

    // The signer and its signature (RFC 5652 §5.4, §5.6).
    let pool: Vec<&Certificate> = sd
        .certificates
        .as_ref()
        .map(|set| {
            set.0
                .iter()
                .filter_map(|c| match c {
                    CertificateChoices::Certificate(c) => Some(c),
                    CertificateChoices::Other(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let signer = pool
        .iter()
        .copied()
        .find(|c| {
            c.tbs_certificate.issuer == ias.issuer
                && c.tbs_certificate.serial_number == ias.serial_number
        })
        .ok_or_else(|| TampError::SignerNotFound {
            issuer: ias.issuer.to_string(),
            serial: hex::encode(ias.serial_number.as_bytes()),
        })?;
    let signer_spki = &signer.tbs_certificate.subject_public_key_info;
    if KeyAlgorithm::of_spki(signer_spki) != Some(KeyAlgorithm::EcP256) {
        return Err(TampError::Algorithm {
            what: "signer certificate key",
            found: signer_spki.algorithm.oid.to_string(),
            expected: "an EC P-256 key (for ecdsa-with-SHA256)",
        });
    }
    let signed_bytes = attrs.to_der().map_err(malformed("signedAttrs"))?;
    verify_signature_fast(signer_spki, &signed_bytes, si.signature.as_bytes())
        .map_err(TampError::Signature)?;

    // The path to the root (RFC 5280 §6.1, reduced to what a meter checks).
    let now = opts
        .now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TampError::Chain {
            reason: "the verification time is before 1970".into(),
        })?
        .as_secs();
    let intermediates = build_path(signer, &pool, root)?;
    check_valid_at(root, now)?;
    let root_exts = extensions(root)?;
    if let Some(limit) = root_exts.bc.as_ref().and_then(|bc| bc.path_len_constraint) {
        if intermediates.len() > usize::from(limit) {
            return Err(TampError::Chain {
                reason: format!(
                    "{} intermediate CA(s) under the root {}, its pathLenConstraint is {limit}",
                    intermediates.len(),
                    root.tbs_certificate.subject
                ),
            });
        }
    }
    for (below, ca) in intermediates.iter().enumerate() {
        check_valid_at(ca, now)?;
        check_ca(ca, below)?;
    }
    check_valid_at(signer, now)?;
    check_signer(signer, &opts.signer_policy)?;

    // The TAMPUpdate (RFC 5934 §4.3, §6).
    let update = decode_update(content)?;
    let modules = match &update.msg_ref.target {
        TargetIdentifier::HwModules(list) => match list.as_slice() {
            [one] => one,
            _ => {
                return Err(TampError::Target {
                    reason: format!(
                        "{} hardware module types; meterpki targets exactly one",
                        list.len()
                    ),
                })
            }
        },
        other => {
            return Err(TampError::Target {
                reason: format!(
                    "the target is {}, not hwModules",
                    match other {
                        TargetIdentifier::Communities(_) => "communities",
                        TargetIdentifier::AllModules(_) => "allModules",
                        TargetIdentifier::Uri(_) => "a URI",
                        _ => "otherName",
                    }
                ),
            })
        }
    };
    let mut devices = Vec::with_capacity(modules.hw_serial_entries.len());
    for entry in &modules.hw_serial_entries {
        match entry {
            HardwareSerialEntry::Single(serial) => {
                let bytes: [u8; 8] =
                    serial
                        .as_bytes()
                        .try_into()
                        .map_err(|_| TampError::Target {
                            reason: format!(
                                "serial number of {} byte(s) is not an EUI-64",
                                serial.as_bytes().len()
                            ),
                        })?;
                devices.push(Eui64(bytes));
            }
            HardwareSerialEntry::All(_) | HardwareSerialEntry::Block(_) => {
                return Err(TampError::Unsupported {
                    what: "a target of all modules or a block of serial numbers".into(),
                })
            }
        }
    }
    if let Some(device) = opts.device {
        if !devices.contains(&device) {
            return Err(TampError::Target {
                reason: format!(
                    "{device} is not among the targeted meters ({})",
                    devices
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    let seq = update.msg_ref.seq_num.value();
    if let Some(after) = opts.after_seq {
        if seq <= after {
            return Err(TampError::SeqNotGreater { seq, after });
        }
    }
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for u in &update.updates {
        match u {
            TrustAnchorUpdate::Remove(spki) => removed.push(spki.clone()),
            TrustAnchorUpdate::Add(TrustAnchorChoice::Certificate(c)) => added.push(c.clone()),
            TrustAnchorUpdate::Add(_) => {
                return Err(TampError::Unsupported {
                    what: "adding a trust anchor as tbsCert or taInfo".into(),
                })
            }
            TrustAnchorUpdate::Change(_) => {
                return Err(TampError::Unsupported {
                    what: "a change update".into(),
                })
            }
        }
    }
    Ok(VerifiedUpdate {
        seq,
        terse: update.terse == Some(TerseOrVerbose::Terse),
        hw_type: modules.hw_type,
        devices,
        removed,
        added,
        signer: signer.clone(),
        content: content.to_vec(),
    })
}

fn is_sha256(alg: &AlgorithmIdentifierOwned) -> bool {
    // RFC 5754 §2: parameters absent, but receivers accept NULL too.
    alg.oid == ID_SHA256
        && alg
            .parameters
            .as_ref()
            .is_none_or(|p| p.tag() == Tag::Null && p.value().is_empty())
}

fn single_attribute<'a>(
    attrs: &'a SignedAttributes,
    oid: ObjectIdentifier,
    name: &'static str,
) -> Result<&'a Any, TampError> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let attr = found.next().ok_or_else(|| TampError::Malformed {
        what: "signedAttrs",
        reason: format!("no {name} attribute (RFC 5652 §5.3)"),
    })?;
    if found.next().is_some() {
        return Err(TampError::Malformed {
            what: "signedAttrs",
            reason: format!("{name} appears twice (RFC 5652 §11)"),
        });
    }
    match attr.values.as_slice() {
        [value] => Ok(value),
        values => Err(TampError::Malformed {
            what: "signedAttrs",
            reason: format!(
                "{name} has {} values, expected 1 (RFC 5652 §11)",
                values.len()
            ),
        }),
    }
}

/// The CA certificates from `pool` between `signer` and `root`, nearest the signer first.
fn build_path<'c>(
    signer: &'c Certificate,
    pool: &[&'c Certificate],
    root: &Certificate,
) -> Result<Vec<&'c Certificate>, TampError> {
    let mut path: Vec<&Certificate> = vec![signer];
    loop {
        let current = path[path.len() - 1];
        let issuer_name = &current.tbs_certificate.issuer;
        let mut root_failure = None;
        if *issuer_name == root.tbs_certificate.subject {
            match check_issued_by(current, root) {
                Ok(()) => return Ok(path.split_off(1)),
                Err(e) => root_failure = Some(e),
            }
        }
        if path.len() > MAX_INTERMEDIATES {
            return Err(TampError::Chain {
                reason: format!("no path to the root within {MAX_INTERMEDIATES} intermediate CAs"),
            });
        }
        let next = pool.iter().copied().find(|c| {
            c.tbs_certificate.subject == *issuer_name
                && !path.contains(c)
                && check_issued_by(current, c).is_ok()
        });
        match (next, root_failure) {
            (Some(c), _) => path.push(c),
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(TampError::Chain {
                    reason: format!(
                        "no certificate in the message issued {} (issuer {}), and it is not the root {}",
                        current.tbs_certificate.subject,
                        issuer_name,
                        root.tbs_certificate.subject
                    ),
                })
            }
        }
    }
}

/// `cert`'s signature algorithm matches `issuer`'s key and the signature verifies.
fn check_issued_by(cert: &Certificate, issuer: &Certificate) -> Result<(), TampError> {
    let issuer_spki = &issuer.tbs_certificate.subject_public_key_info;
    let subject = &cert.tbs_certificate.subject;
    let alg = KeyAlgorithm::of_spki(issuer_spki).ok_or_else(|| TampError::Chain {
        reason: format!(
            "the key of {} is not EC P-256 or P-384",
            issuer.tbs_certificate.subject
        ),
    })?;
    let expected = alg.signature_algorithm();
    if cert.signature_algorithm != expected || cert.tbs_certificate.signature != expected {
        return Err(TampError::Chain {
            reason: format!(
                "{subject} is signed with {}, expected {} for the {} key of its issuer",
                cert.signature_algorithm.oid,
                expected.oid,
                alg.name()
            ),
        });
    }
    // A signature BIT STRING with unused bits is not a DER ECDSA-Sig-Value.
    if cert.signature.as_bytes().is_none() {
        return Err(TampError::Chain {
            reason: format!("the signature of {subject} has unused bits"),
        });
    }
    verify_certificate_signature(cert, issuer_spki).map_err(|e| TampError::Chain {
        reason: e.to_string(),
    })
}

fn check_valid_at(cert: &Certificate, now: u64) -> Result<(), TampError> {
    let v = &cert.tbs_certificate.validity;
    let not_before = v.not_before.to_unix_duration().as_secs();
    let not_after = v.not_after.to_unix_duration().as_secs();
    let reason = if now < not_before {
        format!("not valid before {}", rfc3339(not_before))
    } else if now > not_after {
        format!("expired at {}", rfc3339(not_after))
    } else {
        return Ok(());
    };
    Err(TampError::Expired {
        subject: cert.tbs_certificate.subject.to_string(),
        now: rfc3339(now),
        reason,
    })
}

fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after 1970"))
}

/// The extensions a meter acts on; any other critical extension refuses the certificate.
struct Exts {
    bc: Option<BasicConstraints>,
    ku: Option<KeyUsage>,
    policies: Option<CertificatePolicies>,
}

fn extensions(cert: &Certificate) -> Result<Exts, TampError> {
    let subject = &cert.tbs_certificate.subject;
    let chain_err = |reason: String| TampError::Chain {
        reason: format!("{subject}: {reason}"),
    };
    let mut exts = Exts {
        bc: None,
        ku: None,
        policies: None,
    };
    let list = cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    for (i, e) in list.iter().enumerate() {
        if list[..i].iter().any(|p| p.extn_id == e.extn_id) {
            return Err(chain_err(format!(
                "extension {} appears twice (RFC 5280 §4.2)",
                e.extn_id
            )));
        }
        let value = e.extn_value.as_bytes();
        let bad = |err: der::Error| chain_err(format!("extension {}: {err}", e.extn_id));
        match e.extn_id {
            ID_CE_BASIC_CONSTRAINTS => {
                exts.bc = Some(BasicConstraints::from_der(value).map_err(bad)?)
            }
            ID_CE_KEY_USAGE => exts.ku = Some(KeyUsage::from_der(value).map_err(bad)?),
            ID_CE_CERTIFICATE_POLICIES => {
                exts.policies = Some(CertificatePolicies::from_der(value).map_err(bad)?)
            }
            ID_CE_SUBJECT_KEY_IDENTIFIER | ID_CE_AUTHORITY_KEY_IDENTIFIER => {}
            other if e.critical => {
                return Err(chain_err(format!(
                    "unknown critical extension {other} (RFC 5280 §4.2)"
                )))
            }
            _ => {}
        }
    }
    Ok(exts)
}

/// An intermediate CA with `below` CA certificates under it in the path.
fn check_ca(ca: &Certificate, below: usize) -> Result<(), TampError> {
    let subject = &ca.tbs_certificate.subject;
    let exts = extensions(ca)?;
    let bc = exts.bc.filter(|bc| bc.ca).ok_or_else(|| TampError::Chain {
        reason: format!("{subject} is not a CA (basicConstraints cA is not true)"),
    })?;
    if let Some(limit) = bc.path_len_constraint {
        if below > usize::from(limit) {
            return Err(TampError::Chain {
                reason: format!(
                    "{subject} has pathLenConstraint {limit} but {below} CA(s) below it"
                ),
            });
        }
    }
    if !exts
        .ku
        .is_some_and(|ku| ku.0.contains(KeyUsages::KeyCertSign))
    {
        return Err(TampError::Chain {
            reason: format!("{subject} lacks keyCertSign in keyUsage"),
        });
    }
    Ok(())
}

fn check_signer(signer: &Certificate, policy: &ObjectIdentifier) -> Result<(), TampError> {
    let subject = signer.tbs_certificate.subject.to_string();
    let exts = extensions(signer)?;
    if exts.bc.is_some_and(|bc| bc.ca) {
        return Err(TampError::SignerKeyUsage {
            subject,
            reason: "it is a CA certificate, not an end entity".into(),
        });
    }
    if !exts
        .ku
        .is_some_and(|ku| ku.0.contains(KeyUsages::DigitalSignature))
    {
        return Err(TampError::SignerKeyUsage {
            subject,
            reason: "keyUsage lacks digitalSignature".into(),
        });
    }
    if !exts
        .policies
        .is_some_and(|p| p.0.iter().any(|pi| pi.policy_identifier == *policy))
    {
        return Err(TampError::SignerPolicy {
            subject,
            policy: *policy,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a TAMP update could not be built, signed or verified. Each variant names the check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TampError {
    /// A structure does not decode, is not DER, or breaks a constraint of its ASN.1.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A content type is not the expected one.
    #[error("{what} is {found}, expected {expected}")]
    ContentType {
        /// Which field.
        what: &'static str,
        /// What it says.
        found: ObjectIdentifier,
        /// What it should say.
        expected: ObjectIdentifier,
    },
    /// A digest or signature algorithm, or the signer's key type, is not the one meterpki uses.
    #[error("{what} is {found}, expected {expected}")]
    Algorithm {
        /// Which field.
        what: &'static str,
        /// What it says.
        found: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The messageDigest signed attribute is not the SHA-256 of the content.
    #[error("the messageDigest signed attribute is not the SHA-256 of the TAMPUpdate")]
    MessageDigest,
    /// The SignerInfo signature does not verify with the signer certificate's key.
    #[error("the SignerInfo signature does not verify with the signer certificate's key: {0}")]
    Signature(#[source] VerifyError),
    /// No certificate in the message matches the SignerInfo's issuerAndSerialNumber.
    #[error("the signer certificate (issuer {issuer}, serial {serial}) is not in the message")]
    SignerNotFound {
        /// The issuer named by the SignerInfo.
        issuer: String,
        /// The serial named by the SignerInfo, hex.
        serial: String,
    },
    /// No acceptable path from the signer certificate to the root.
    #[error("certification path: {reason}")]
    Chain {
        /// Which certificate and check.
        reason: String,
    },
    /// The signer certificate lacks the required certificate policy.
    #[error("the signer certificate {subject} does not carry the certificate policy {policy}")]
    SignerPolicy {
        /// The signer's subject.
        subject: String,
        /// The policy required.
        policy: ObjectIdentifier,
    },
    /// The signer certificate is not an end entity allowed to sign (keyUsage, basicConstraints).
    #[error("the signer certificate {subject}: {reason}")]
    SignerKeyUsage {
        /// The signer's subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A certificate of the path is not valid at the verification time.
    #[error("the certificate {subject} is not valid at {now}: {reason}")]
    Expired {
        /// Its subject.
        subject: String,
        /// The verification time.
        now: String,
        /// Not yet valid or expired, and when.
        reason: String,
    },
    /// The update is not for this meter, or targets in a way meterpki does not handle.
    #[error("target: {reason}")]
    Target {
        /// Why.
        reason: String,
    },
    /// The sequence number does not advance (RFC 5934 §6: replay protection).
    #[error("sequence number {seq} is not greater than the last accepted {after}")]
    SeqNotGreater {
        /// The message's.
        seq: u64,
        /// The last accepted.
        after: u64,
    },
    /// A sequence number above what SeqNumber allows.
    #[error("sequence number {seq} is above 9223372036854775807 (RFC 5934 §4.1: SeqNumber)")]
    SeqOutOfRange {
        /// The number given.
        seq: u64,
    },
    /// An update that neither adds nor removes anything.
    #[error("a TAMP update needs at least one trust anchor to add or remove (RFC 5934 §4.3: updates SIZE (1..MAX))")]
    EmptyUpdates,
    /// A valid construct meterpki does not handle.
    #[error("{what} is not supported")]
    Unsupported {
        /// What.
        what: String,
    },
    /// The signing key is not the one in the signer certificate.
    #[error("TAMP signer: {0}")]
    KeyMismatch(#[source] CertError),
    /// The signer failed.
    #[error("signing the TAMP update: {0}")]
    Sign(#[from] SignError),
    /// The signer returned a signature that does not verify: nothing was emitted.
    #[error("the signature returned by the signer does not verify with the signer certificate's key, nothing was emitted: {source}")]
    SignerSignature {
        /// Why it failed.
        #[source]
        source: VerifyError,
    },
    /// [`UpdateSigner::assemble`] was given bytes that are not the signed attributes of the
    /// content.
    #[error("the to-be-signed bytes are not the signed attributes of this TAMPUpdate")]
    NotOurSignedAttributes,
    /// Encoding failed (building, never decoding).
    #[error("DER encoding: {0}")]
    Der(#[from] der::Error),
}

fn malformed(what: &'static str) -> impl Fn(der::Error) -> TampError {
    move |e| TampError::Malformed {
        what,
        reason: e.to_string(),
    }
}

/// Refuses `input` unless it is exactly the DER of the value decoded from it.
fn canonical<T: Encode>(value: &T, input: &[u8], what: &'static str) -> Result<(), TampError> {
    let again = value.to_der().map_err(malformed(what))?;
    if again != input {
        return Err(TampError::Malformed {
            what,
            reason: "not DER: re-encoding the decoded value gives different bytes (unsorted SET \
                     OF, or an unknown field skipped before an OPTIONAL one)"
                .into(),
        });
    }
    Ok(())
}
