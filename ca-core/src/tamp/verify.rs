//! The meter's side: [`verify_update`] checks the CMS envelope, the signer and its signature,
//! the path to the root, then the `TAMPUpdate`'s target and sequence number.

use std::time::SystemTime;

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{SignedAttributes, SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode, Tag, Tagged};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::anchor::TrustAnchorChoice;
use x509_cert::Certificate;

use super::asn1::{
    decode_update, HardwareSerialEntry, TargetIdentifier, TerseOrVerbose, TrustAnchorUpdate,
};
use super::error::{canonical, malformed, TampError};
use super::path::check_path;
use super::{
    ECDSA_WITH_SHA256, ID_CONTENT_TYPE, ID_CT_TAMP_UPDATE, ID_MESSAGE_DIGEST, ID_SHA256,
    ID_SIGNED_DATA,
};
use crate::model::Eui64;
use crate::signer::{verify_signature_fast, KeyAlgorithm};

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
    let (sd, content) = envelope(der)?;
    let (si, key_id, attrs) = signer_info(&sd)?;
    check_content_attributes(attrs, &content)?;
    let pool = certificates(&sd);
    let signer = check_signature(&pool, si, key_id, attrs)?;
    check_path(signer, &pool, root, opts)?;
    let read = read_update(&content, opts)?;
    Ok(VerifiedUpdate {
        seq: read.seq,
        terse: read.terse,
        hw_type: read.hw_type,
        devices: read.devices,
        removed: read.removed,
        added: read.added,
        signer: signer.clone(),
        content,
    })
}

/// What the TAMPUpdate itself says.
struct UpdateRead {
    seq: u64,
    terse: bool,
    hw_type: ObjectIdentifier,
    devices: Vec<Eui64>,
    removed: Vec<SubjectPublicKeyInfoOwned>,
    added: Vec<Certificate>,
}

/// The envelope (RFC 5652 §3, §5.1): strict DER, a SignedData of version 3 with SHA-256 alone,
/// encapsulating a TAMP update. Returns the SignedData and the DER `TAMPUpdate`.
fn envelope(der: &[u8]) -> Result<(SignedData, Vec<u8>), TampError> {
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
    Ok((sd, content.as_bytes().to_vec()))
}

/// The one SignerInfo (RFC 5652 §5.3): version 3, identified by subjectKeyIdentifier (RFC 5934
/// §2), SHA-256 and ecdsa-with-SHA256, with signed attributes.
fn signer_info(sd: &SignedData) -> Result<(&SignerInfo, &[u8], &SignedAttributes), TampError> {
    let si = match sd.signer_infos.0.as_slice() {
        [si] => si,
        other => {
            return Err(TampError::Malformed {
                what: "SignedData signerInfos",
                reason: format!("{} SignerInfos, expected exactly 1", other.len()),
            })
        }
    };
    if si.version != CmsVersion::V3 {
        return Err(TampError::Malformed {
            what: "SignerInfo version",
            reason: format!(
                "{:?}, expected 3 (RFC 5934 §2: the signer is named by subjectKeyIdentifier)",
                si.version
            ),
        });
    }
    let key_id = match &si.sid {
        SignerIdentifier::SubjectKeyIdentifier(ski) => ski.0.as_bytes(),
        SignerIdentifier::IssuerAndSerialNumber(_) => {
            return Err(TampError::Malformed {
                what: "SignerInfo sid",
                reason: "issuerAndSerialNumber; RFC 5934 §2 requires subjectKeyIdentifier".into(),
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
    Ok((si, key_id, attrs))
}

/// The signed contentType and messageDigest attributes name and hash this content.
fn check_content_attributes(attrs: &SignedAttributes, content: &[u8]) -> Result<(), TampError> {
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

    Ok(())
}

/// The certificates the message carries.
fn certificates(sd: &SignedData) -> Vec<&Certificate> {
    sd.certificates
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
        .unwrap_or_default()
}

/// The signer among them (RFC 5652 §5.4, §5.6): a P-256 key whose signature over the signed
/// attributes verifies.
fn check_signature<'a>(
    pool: &[&'a Certificate],
    si: &SignerInfo,
    key_id: &[u8],
    attrs: &SignedAttributes,
) -> Result<&'a Certificate, TampError> {
    // Every certificate carrying the identifier is a candidate (a renewed certificate of the
    // same key, or another key whose identifier collides): the one whose key verifies is the
    // signer.
    let candidates: Vec<&Certificate> = pool
        .iter()
        .copied()
        .filter(|c| {
            crate::certs::subject_key_identifier(c).is_some_and(|ski| ski.0.as_bytes() == key_id)
        })
        .collect();
    if candidates.is_empty() {
        return Err(TampError::SignerNotFound {
            key_id: hex::encode(key_id),
        });
    }
    let signed_bytes = attrs.to_der().map_err(malformed("signedAttrs"))?;
    let mut last = None;
    for signer in candidates {
        let signer_spki = &signer.tbs_certificate.subject_public_key_info;
        if KeyAlgorithm::of_spki(signer_spki) != Some(KeyAlgorithm::EcP256) {
            last = Some(TampError::Algorithm {
                what: "signer certificate key",
                found: signer_spki.algorithm.oid.to_string(),
                expected: "an EC P-256 key (for ecdsa-with-SHA256)",
            });
            continue;
        }
        match verify_signature_fast(signer_spki, &signed_bytes, si.signature.as_bytes()) {
            Ok(()) => return Ok(signer),
            Err(e) => last = Some(TampError::Signature(e)),
        }
    }
    Err(last.unwrap_or(TampError::SignerNotFound {
        key_id: hex::encode(key_id),
    }))
}

/// The TAMPUpdate (RFC 5934 §4.3, §6): one hwModules target of `single` EUI-64s (this meter
/// among them, when asked), a sequence number greater than the last accepted, removes and
/// certificate adds.
fn read_update(content: &[u8], opts: &VerifyOptions) -> Result<UpdateRead, TampError> {
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
    let (hw_type, terse) = (modules.hw_type, update.terse == Some(TerseOrVerbose::Terse));
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for u in update.updates {
        match u {
            TrustAnchorUpdate::Remove(spki) => removed.push(spki),
            TrustAnchorUpdate::Add(TrustAnchorChoice::Certificate(c)) => added.push(c),
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
    Ok(UpdateRead {
        seq,
        terse,
        hw_type,
        devices,
        removed,
        added,
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
