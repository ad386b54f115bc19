//! The apex trust anchor update (RFC 5934 §4.5, `TAMPApexUpdate`): the message that replaces
//! the root a meter trusts. It is signed by the root the meter holds now (its apex trust
//! anchor), with that root's own key and hash (P-384, SHA-384), and carries the new root as a
//! certificate. [`sign_apex`] builds it, [`verify_apex`] checks it as a meter holding the
//! current apex would.
//!
//! ```text
//! id-ct-TAMP-apexUpdate OBJECT IDENTIFIER ::= { id-tamp 5 }   -- 2.16.840.1.101.2.1.2.77.5
//! TAMPApexUpdate ::= SEQUENCE {
//!   version           [0] TAMPVersion DEFAULT v2,
//!   terse             [1] TerseOrVerbose DEFAULT verbose,
//!   msgRef            TAMPMsgRef,
//!   clearTrustAnchors BOOLEAN,
//!   clearCommunities  BOOLEAN,
//!   seqNumber         SeqNumber OPTIONAL,
//!   apexTA            TrustAnchorChoice }
//! ```
//!
//! meterpki's apex updates target every module (`allModules`) or every module of one hardware
//! type (`hwModules` with `all`), keep the meters' other trust anchors (the supplier
//! certificates: `clearTrustAnchors` FALSE) and communities, and start the new apex's own
//! sequence numbers at 0 (`seqNumber`). The envelope is the one TAMP updates have (module
//! documentation of [`crate::tamp`]) with SHA-384 and ecdsa-with-SHA384, and the signing root's
//! certificate in `certificates` so that `openssl cms -verify` can check it too.

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use der::asn1::{Null, ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Sequence};
use spki::AlgorithmIdentifierOwned;
use x509_cert::anchor::TrustAnchorChoice;
use x509_cert::attr::Attribute;
use x509_cert::Certificate;

use super::asn1::{
    HardwareModules, HardwareSerialEntry, SeqNumber, TampMsgRef, TampVersion, TargetIdentifier,
    TerseOrVerbose,
};
use super::error::{canonical, malformed, TampError};
use super::{ID_CONTENT_TYPE, ID_MESSAGE_DIGEST, ID_SIGNED_DATA};
use crate::signer::{verify_signature, KeyAlgorithm, Signer};

/// id-ct-TAMP-apexUpdate (RFC 5934 Appendix A).
pub const ID_CT_TAMP_APEX_UPDATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.2.1.2.77.5");
/// id-sha384 (RFC 5754 §2).
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");

/// `TAMPApexUpdate` (RFC 5934 §4.5). The DEFAULT fields are `Option`s, `None` meaning the
/// default (which DER omits).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct TampApexUpdate {
    /// `[0] TAMPVersion DEFAULT v2`.
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub version: Option<TampVersion>,
    /// `[1] TerseOrVerbose DEFAULT verbose`.
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub terse: Option<TerseOrVerbose>,
    /// Target and the message's sequence number.
    pub msg_ref: TampMsgRef,
    /// Whether the meter removes every other trust anchor.
    pub clear_trust_anchors: bool,
    /// Whether the meter forgets its communities.
    pub clear_communities: bool,
    /// The first sequence number the new apex's messages must exceed.
    pub seq_number: Option<SeqNumber>,
    /// The new apex trust anchor.
    pub apex_ta: TrustAnchorChoice,
}

/// Which meters an apex update is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApexTarget {
    /// Every meter (`allModules`).
    All,
    /// Every meter of one hardware type (`hwModules { hwType, { all } }`).
    HwType(ObjectIdentifier),
}

/// The DER `TAMPApexUpdate` installing `new_apex` in `target`, message number `seq`.
pub fn encode_apex(
    target: &ApexTarget,
    seq: u64,
    new_apex: &Certificate,
) -> Result<Vec<u8>, TampError> {
    let seq_num = SeqNumber::new(seq).ok_or(TampError::SeqOutOfRange { seq })?;
    let target = match target {
        ApexTarget::All => TargetIdentifier::AllModules(Null),
        ApexTarget::HwType(oid) => TargetIdentifier::HwModules(vec![HardwareModules {
            hw_type: *oid,
            hw_serial_entries: vec![HardwareSerialEntry::All(Null)],
        }]),
    };
    let update = TampApexUpdate {
        version: None,
        terse: Some(TerseOrVerbose::Terse),
        msg_ref: TampMsgRef { target, seq_num },
        clear_trust_anchors: false,
        clear_communities: false,
        seq_number: SeqNumber::new(0),
        apex_ta: TrustAnchorChoice::Certificate(new_apex.clone()),
    };
    Ok(update.to_der()?)
}

fn digest_oid(alg: KeyAlgorithm) -> ObjectIdentifier {
    match alg {
        KeyAlgorithm::EcP256 => super::ID_SHA256,
        KeyAlgorithm::EcP384 => ID_SHA384,
    }
}

fn algorithm(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}

/// Signs the apex update `content` with `signer`, the key of `signer_cert` (the apex the meters
/// hold, or its contingency key: then `signer_cert` is None and `key_id` names the key), with
/// `unsigned` attributes (the contingency key's decryption key). The signature is checked
/// before anything is returned.
pub fn sign_apex(
    signer: &dyn Signer,
    signer_cert: Option<&Certificate>,
    key_id: &[u8],
    content: &[u8],
    unsigned: Vec<Attribute>,
) -> Result<Vec<u8>, TampError> {
    let alg = signer.algorithm();
    let digest = alg.digest(content);
    let attrs: SignedAttributes = SetOfVec::try_from(vec![
        Attribute {
            oid: ID_CONTENT_TYPE,
            values: SetOfVec::try_from(vec![Any::encode_from(&ID_CT_TAMP_APEX_UPDATE)?])?,
        },
        Attribute {
            oid: ID_MESSAGE_DIGEST,
            values: SetOfVec::try_from(vec![Any::encode_from(&OctetString::new(digest)?)?])?,
        },
    ])?;
    let signed = attrs.to_der()?;
    let signature = signer.sign(&signed)?;
    verify_signature(signer.public_key(), &signed, &signature)
        .map_err(|source| TampError::SignerSignature { source })?;
    let si = SignerInfo {
        version: CmsVersion::V3,
        sid: SignerIdentifier::SubjectKeyIdentifier(x509_cert::ext::pkix::SubjectKeyIdentifier(
            OctetString::new(key_id)?,
        )),
        digest_alg: algorithm(digest_oid(alg)),
        signed_attrs: Some(attrs),
        signature_algorithm: alg.signature_algorithm(),
        signature: OctetString::new(signature)?,
        unsigned_attrs: if unsigned.is_empty() {
            None
        } else {
            Some(SetOfVec::try_from(unsigned)?)
        },
    };
    let certificates = match signer_cert {
        Some(c) => Some(CertificateSet(SetOfVec::try_from(vec![
            CertificateChoices::Certificate(c.clone()),
        ])?)),
        None => None,
    };
    let sd = SignedData {
        version: CmsVersion::V3,
        digest_algorithms: SetOfVec::try_from(vec![algorithm(digest_oid(alg))])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_CT_TAMP_APEX_UPDATE,
            econtent: Some(Any::encode_from(&OctetString::new(content)?)?),
        },
        certificates,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![si])?),
    };
    let ci = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&sd)?,
    };
    Ok(ci.to_der()?)
}

/// What a meter checks besides the signature: its hardware type (when the update targets one)
/// and the last apex sequence number it accepted.
#[derive(Clone, Debug, Default)]
pub struct ApexOptions {
    /// The meter's hardware type: the update must target it or every module.
    pub hw_type: Option<ObjectIdentifier>,
    /// The last sequence number accepted from the current apex.
    pub after_seq: Option<u64>,
}

/// An apex update whose envelope, signature and content checked out.
#[derive(Clone, Debug)]
pub struct VerifiedApex {
    /// The message's sequence number.
    pub seq: u64,
    /// Every module, or one hardware type.
    pub target: ApexTarget,
    /// The new apex trust anchor.
    pub new_apex: Certificate,
    /// Whether the meter removes its other trust anchors.
    pub clear_trust_anchors: bool,
    /// Whether the meter forgets its communities.
    pub clear_communities: bool,
    /// The new apex's first sequence number, when given: its messages must exceed it.
    pub apex_seq_number: Option<u64>,
    /// Which key signed it: the apex's own (`apex`) or its contingency key (`contingency`).
    pub signed_by: &'static str,
}

/// Checks a DER `ContentInfo` as a meter holding `current` as its apex trust anchor: strict
/// DER; a SignedData of version 3 over an apex update, one SignerInfo naming the apex key by
/// its subjectKeyIdentifier, the hash of that key's curve, contentType and messageDigest, the
/// signature by the apex key; then the `TAMPApexUpdate`: version 2, a target this meter is in,
/// a sequence number above the last accepted, and a new apex that is a self-signed CA
/// certificate whose signature verifies.
pub fn verify_apex(
    der: &[u8],
    current: &Certificate,
    opts: &ApexOptions,
) -> Result<VerifiedApex, TampError> {
    let (sd, content) = envelope(der)?;
    let si = match sd.signer_infos.0.as_slice() {
        [si] => si,
        other => {
            return Err(TampError::Malformed {
                what: "SignedData signerInfos",
                reason: format!("{} SignerInfos, expected exactly 1", other.len()),
            })
        }
    };
    let key_id = match &si.sid {
        SignerIdentifier::SubjectKeyIdentifier(ski) if si.version == CmsVersion::V3 => {
            ski.0.as_bytes()
        }
        _ => {
            return Err(TampError::Malformed {
                what: "SignerInfo sid",
                reason: "not a version-3 subjectKeyIdentifier (RFC 5934 §2)".into(),
            })
        }
    };
    let apex_spki = &current.tbs_certificate.subject_public_key_info;
    let apex_id = crate::certs::subject_key_identifier(current)
        .map(|s| s.0.as_bytes().to_vec())
        .unwrap_or_else(|| crate::certs::key_identifier(apex_spki).to_vec());
    if key_id != apex_id.as_slice() {
        if let Some(decrypt_key) = contingency_decrypt_key(si)? {
            return verify_by_contingency(si, &content, current, key_id, &decrypt_key, opts);
        }
        return Err(TampError::Chain {
            reason: format!(
                "signed by the key {}, not by this meter's apex trust anchor {} (key {})",
                hex::encode(key_id),
                current.tbs_certificate.subject,
                hex::encode(&apex_id)
            ),
        });
    }
    let signed = check_signer_info(si, &content, apex_spki)?;
    verify_signature(apex_spki, &signed, si.signature.as_bytes()).map_err(TampError::Signature)?;
    read_apex(&content, opts, "apex")
}

/// The ContingencyPublicKeyDecryptKey unsigned attribute, if the SignerInfo carries one
/// (exactly one attribute with one value, or the message is refused).
fn contingency_decrypt_key(si: &SignerInfo) -> Result<Option<Vec<u8>>, TampError> {
    use crate::contingency::ID_AA_CONTINGENCY_DECRYPT_KEY;
    let Some(attrs) = &si.unsigned_attrs else {
        return Ok(None);
    };
    let found: Vec<&Attribute> = attrs
        .iter()
        .filter(|a| a.oid == ID_AA_CONTINGENCY_DECRYPT_KEY)
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [a] if a.values.len() == 1 => {
            let key: OctetString = a
                .values
                .get(0)
                .expect("one value")
                .decode_as()
                .map_err(malformed("ContingencyPublicKeyDecryptKey"))?;
            Ok(Some(key.as_bytes().to_vec()))
        }
        _ => Err(TampError::Malformed {
            what: "unsignedAttrs",
            reason: "the contingency decryption key must appear once, with one value".into(),
        }),
    }
}

/// An apex update signed with the contingency key (RFC 5934 §4.5): the decryption key it
/// carries must unwrap the current apex's wrapped contingency key, that key must be the one
/// the SignerInfo names, and the signature must verify with it.
fn verify_by_contingency(
    si: &SignerInfo,
    content: &[u8],
    current: &Certificate,
    key_id: &[u8],
    decrypt_key: &[u8],
    opts: &ApexOptions,
) -> Result<VerifiedApex, TampError> {
    let spki = crate::contingency::unwrap_contingency_key(current, decrypt_key).map_err(|e| {
        TampError::Chain {
            reason: format!("signed by the contingency key, but {e}"),
        }
    })?;
    if crate::certs::key_identifier(&spki).as_slice() != key_id {
        return Err(TampError::Chain {
            reason: format!(
                "the SignerInfo names the key {}, which is neither this meter's apex key nor its contingency key",
                hex::encode(key_id)
            ),
        });
    }
    let signed = check_signer_info(si, content, &spki)?;
    verify_signature(&spki, &signed, si.signature.as_bytes()).map_err(TampError::Signature)?;
    read_apex(content, opts, "contingency")
}

/// The envelope: strict DER, a version-3 SignedData encapsulating an apex update.
fn envelope(der: &[u8]) -> Result<(SignedData, Vec<u8>), TampError> {
    let ci = ContentInfo::from_der(der).map_err(malformed("ContentInfo"))?;
    canonical(&ci, der, "ContentInfo")?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(TampError::ContentType {
            what: "ContentInfo contentType",
            found: ci.content_type,
            expected: ID_SIGNED_DATA,
        });
    }
    let sd_der = ci.content.to_der().map_err(malformed("SignedData"))?;
    let sd = SignedData::from_der(&sd_der).map_err(malformed("SignedData"))?;
    canonical(&sd, &sd_der, "SignedData")?;
    if sd.version != CmsVersion::V3 {
        return Err(TampError::Malformed {
            what: "SignedData version",
            reason: format!("{:?}, expected 3", sd.version),
        });
    }
    let eci = &sd.encap_content_info;
    if eci.econtent_type != ID_CT_TAMP_APEX_UPDATE {
        return Err(TampError::ContentType {
            what: "eContentType",
            found: eci.econtent_type,
            expected: ID_CT_TAMP_APEX_UPDATE,
        });
    }
    let content = eci
        .econtent
        .as_ref()
        .ok_or_else(|| TampError::Malformed {
            what: "encapContentInfo",
            reason: "no eContent (a detached signature)".into(),
        })?
        .decode_as::<OctetString>()
        .map_err(malformed("eContent"))?
        .as_bytes()
        .to_vec();
    Ok((sd, content))
}

/// The SignerInfo's algorithms (the hash of the key's curve, ecdsa with it, no parameters)
/// and signed attributes (contentType apex update, messageDigest of the content); returns the
/// bytes the signature covers.
pub(super) fn check_signer_info(
    si: &SignerInfo,
    content: &[u8],
    key: &spki::SubjectPublicKeyInfoOwned,
) -> Result<Vec<u8>, TampError> {
    let alg = KeyAlgorithm::of_spki(key).ok_or_else(|| TampError::Algorithm {
        what: "signer key",
        found: key.algorithm.oid.to_string(),
        expected: "EC P-256 or P-384",
    })?;
    if si.digest_alg != algorithm(digest_oid(alg)) {
        return Err(TampError::Algorithm {
            what: "SignerInfo digestAlgorithm",
            found: si.digest_alg.oid.to_string(),
            expected:
                "the hash of the signer's curve (sha256 for P-256, sha384 for P-384), no parameters",
        });
    }
    if si.signature_algorithm != alg.signature_algorithm() {
        return Err(TampError::Algorithm {
            what: "SignerInfo signatureAlgorithm",
            found: si.signature_algorithm.oid.to_string(),
            expected: "ecdsa with the hash of the signer's curve, no parameters",
        });
    }
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| TampError::Malformed {
            what: "SignerInfo",
            reason: "no signed attributes (RFC 5934 §2 requires contentType and messageDigest)"
                .into(),
        })?;
    let one = |oid: ObjectIdentifier, name: &'static str| -> Result<&Any, TampError> {
        let found: Vec<&Attribute> = attrs.iter().filter(|a| a.oid == oid).collect();
        match found.as_slice() {
            [a] if a.values.len() == 1 => Ok(a.values.get(0).expect("one value")),
            _ => Err(TampError::Malformed {
                what: "signedAttrs",
                reason: format!(
                    "{name}: exactly one attribute with one value is required (RFC 5652 §11)"
                ),
            }),
        }
    };
    let ctype: ObjectIdentifier = one(ID_CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(malformed("contentType signed attribute"))?;
    if ctype != ID_CT_TAMP_APEX_UPDATE {
        return Err(TampError::ContentType {
            what: "contentType signed attribute",
            found: ctype,
            expected: ID_CT_TAMP_APEX_UPDATE,
        });
    }
    let digest: OctetString = one(ID_MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(malformed("messageDigest signed attribute"))?;
    if digest.as_bytes() != alg.digest(content).as_slice() {
        return Err(TampError::MessageDigest);
    }
    Ok(attrs.to_der()?)
}

/// The `TAMPApexUpdate` itself, strictly, as a meter acts on it.
pub(super) fn read_apex(
    content: &[u8],
    opts: &ApexOptions,
    signed_by: &'static str,
) -> Result<VerifiedApex, TampError> {
    let u = TampApexUpdate::from_der(content).map_err(malformed("TAMPApexUpdate"))?;
    canonical(&u, content, "TAMPApexUpdate")?;
    match u.version {
        None => {}
        Some(TampVersion::V2) => {
            return Err(TampError::Malformed {
                what: "TAMPApexUpdate",
                reason: "version v2 is the DEFAULT and must be omitted in DER (X.690 §11.5)".into(),
            })
        }
        Some(TampVersion::V1) => {
            return Err(TampError::Unsupported {
                what: "TAMPApexUpdate version v1".into(),
            })
        }
    }
    if u.terse == Some(TerseOrVerbose::Verbose) {
        return Err(TampError::Malformed {
            what: "TAMPApexUpdate",
            reason: "terse = verbose is the DEFAULT and must be omitted in DER (X.690 §11.5)"
                .into(),
        });
    }
    let seq = u.msg_ref.seq_num.value();
    if let Some(after) = opts.after_seq.filter(|a| seq <= *a) {
        return Err(TampError::SeqNotGreater { seq, after });
    }
    let target = match &u.msg_ref.target {
        TargetIdentifier::AllModules(_) => ApexTarget::All,
        TargetIdentifier::HwModules(list) => match list.as_slice() {
            [m] if m.hw_serial_entries == [HardwareSerialEntry::All(Null)] => {
                if opts.hw_type.is_some_and(|h| h != m.hw_type) {
                    return Err(TampError::Target {
                        reason: format!("the update is for hwType {}, not this meter's", m.hw_type),
                    });
                }
                ApexTarget::HwType(m.hw_type)
            }
            _ => {
                return Err(TampError::Unsupported {
                    what: "an apex update target other than allModules or one hwType with all"
                        .into(),
                })
            }
        },
        _ => {
            return Err(TampError::Unsupported {
                what: "an apex update target other than allModules or hwModules".into(),
            })
        }
    };
    let TrustAnchorChoice::Certificate(new_apex) = u.apex_ta else {
        return Err(TampError::Unsupported {
            what: "an apex trust anchor that is not a certificate".into(),
        });
    };
    let tbs = &new_apex.tbs_certificate;
    if tbs.subject != tbs.issuer {
        return Err(TampError::Chain {
            reason: format!("the new apex {} is not self-issued", tbs.subject),
        });
    }
    crate::certs::verify_certificate_signature(&new_apex, &tbs.subject_public_key_info).map_err(
        |e| TampError::Chain {
            reason: format!("the new apex {} is not self-signed: {e}", tbs.subject),
        },
    )?;
    // A trust anchor that certifies: a CA certificate allowed to sign certificates.
    let exts = tbs.extensions.as_deref().unwrap_or_default();
    let find = |oid| exts.iter().find(|e| e.extn_id == oid);
    let is_ca = find(const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS)
        .and_then(|e| {
            x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes()).ok()
        })
        .is_some_and(|bc| bc.ca);
    let cert_sign = find(const_oid::db::rfc5280::ID_CE_KEY_USAGE)
        .and_then(|e| x509_cert::ext::pkix::KeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|ku| ku.key_cert_sign());
    if !is_ca || !cert_sign {
        return Err(TampError::Chain {
            reason: format!(
                "the new apex {} is not a CA certificate with keyCertSign",
                tbs.subject
            ),
        });
    }
    Ok(VerifiedApex {
        seq,
        target,
        clear_trust_anchors: u.clear_trust_anchors,
        clear_communities: u.clear_communities,
        apex_seq_number: u.seq_number.map(|n| n.value()),
        new_apex,
        signed_by,
    })
}

/// Whether `der` is a SignedData over an apex update (rather than a TAMP update): which
/// verifier a file goes to.
pub fn is_apex_update(der: &[u8]) -> bool {
    envelope(der).is_ok()
}
