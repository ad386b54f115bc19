//! Trust-anchor updates for meters: RFC 5934 (TAMP) `TAMPUpdate` messages in RFC 5652 CMS
//! `SignedData`, built here, signed through the [`Signer`](crate::signer::Signer) seam and
//! verified as a meter would.
//!
//! The flow reads in order: [`UpdateContent`] -> [`encode_update`] (the DER `TAMPUpdate`) ->
//! [`UpdateSigner::to_be_signed`] (the signed attributes) ->
//! [`Signer::sign`](crate::signer::Signer::sign) (the HSM) -> [`UpdateSigner::assemble`]
//! (signature verified, CMS `ContentInfo` built). [`UpdateSigner::sign`] does all three.
//! [`verify_update`] is the meter's side.
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
//! SignerInfo: version 3, `[0]` subjectKeyIdentifier (RFC 5934 §2: the signer certificate's
//! subjectKeyIdentifier extension), sha256, signed attributes contentType and
//! messageDigest (§5.3, §11.1, §11.2; the bytes signed are the DER SET OF with tag `0x31`,
//! §5.4), ecdsa-with-SHA256 with absent parameters (RFC 5758 §3.2), the DER ECDSA-Sig-Value.
//!
//! The TAMPUpdate states `terse [1] terse(1)`: meters answer with terse confirms. Delivered
//! over HTTP or as a file, a message is `application/tamp-update` (RFC 5934, registered with
//! IANA, file extension `.tur`); meterpki writes them as `.der` files or base64 in NDJSON.
//!
//! # Strictness
//!
//! Decoding is strict DER: besides what the `der` crate enforces, every decoded structure is
//! encoded again and must give back the exact input, which refuses unsorted SET OFs and the
//! unknown context-specific fields `der` skips before an OPTIONAL field. A DEFAULT value
//! encoded explicitly is refused (X.690 §11.5), as are empty `SIZE (1..MAX)` lists and a
//! SeqNumber above 2^63 - 1.
//!
//! # Layout
//!
//! `asn1` holds the DER types and the strict decoder, `encode` builds the `TAMPUpdate`, `sign`
//! wraps it in CMS, `verify` is the meter's side with the certification path checks in `path`,
//! and `error` holds [`TampError`]. The object identifiers that signing and verifying share are
//! defined here.

mod apex;
mod asn1;
mod encode;
mod error;
mod path;
mod sign;
mod verify;

pub use apex::{
    encode_apex, is_apex_update, sign_apex, verify_apex, ApexOptions, ApexTarget, TampApexUpdate,
    VerifiedApex, ID_CT_TAMP_APEX_UPDATE,
};
pub use asn1::{
    decode_update, BlockOfSerialNumbers, HardwareModules, HardwareSerialEntry, SeqNumber,
    TampMsgRef, TampSequenceNumber, TampUpdate, TampVersion, TargetIdentifier, TerseOrVerbose,
    TrustAnchorUpdate,
};
pub use encode::{encode_update, PreparedUpdates, UpdateContent};
pub use error::TampError;
pub use sign::UpdateSigner;
pub use verify::{verify_update, VerifiedUpdate, VerifyOptions};

use der::asn1::ObjectIdentifier;

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
