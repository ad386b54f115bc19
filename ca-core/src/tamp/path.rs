//! The certification path [`verify_update`](super::verify_update) checks, reduced to what a
//! meter checks (RFC 5280 §6.1): the path from the signer through the message's CAs to the
//! root, each certificate's signature and validity, the extensions a meter acts on, and what
//! the CAs and the signer must be.

use std::time::UNIX_EPOCH;

use der::asn1::ObjectIdentifier;
use der::Decode;
use x509_cert::ext::pkix::{BasicConstraints, CertificatePolicies, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use super::error::TampError;
use super::verify::VerifyOptions;
use crate::certs::verify_certificate_signature;
use crate::signer::KeyAlgorithm;

/// RFC 5280 §4.2.1.9, §4.2.1.3, §4.2.1.4, §4.2.1.2, §4.2.1.1.
const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const ID_CE_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const ID_CE_CERTIFICATE_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
const ID_CE_SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const ID_CE_AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");

/// Longest path accepted between the signer certificate and the root.
const MAX_INTERMEDIATES: usize = 4;

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

/// RFC 5280 §3.3: a CA certificate whose subject and issuer are the same non-empty name.
fn self_issued(cert: &Certificate) -> bool {
    let tbs = &cert.tbs_certificate;
    !tbs.subject.0.is_empty() && tbs.issuer == tbs.subject
}

/// An intermediate CA with `below` CA certificates that are not self-issued under it in the
/// path (RFC 5280 §6.1.4 (l)); it is checked as a CA all the same.
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
                    "{subject} has pathLenConstraint {limit} but {below} CA(s) that are not self-issued below it"
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

/// The path signer -> CAs from the message -> `root` (RFC 5280 §6.1, reduced to what a meter
/// checks): every certificate valid at `opts.now`, the root's pathLenConstraint kept, the CAs
/// with cA and keyCertSign, the signer an end entity with digitalSignature and the policy.
pub(super) fn check_path(
    signer: &Certificate,
    pool: &[&Certificate],
    root: &Certificate,
    opts: &VerifyOptions,
) -> Result<(), TampError> {
    let now = opts
        .now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TampError::Chain {
            reason: "the verification time is before 1970".into(),
        })?
        .as_secs();
    let intermediates = build_path(signer, pool, root)?;
    check_valid_at(root, now)?;
    // RFC 5280 §4.2.1.9 and §6.1.4 (l): self-issued intermediates (a root rollover's link
    // certificates, issuer and subject the same name) do not count against pathLenConstraint.
    let counted = |cas: &[&Certificate]| cas.iter().filter(|c| !self_issued(c)).count();
    let root_exts = extensions(root)?;
    if let Some(limit) = root_exts.bc.as_ref().and_then(|bc| bc.path_len_constraint) {
        let n = counted(&intermediates);
        if n > usize::from(limit) {
            return Err(TampError::Chain {
                reason: format!(
                    "{n} intermediate CA(s) that are not self-issued under the root {}, its pathLenConstraint is {limit}",
                    root.tbs_certificate.subject
                ),
            });
        }
    }
    for (i, ca) in intermediates.iter().enumerate() {
        check_valid_at(ca, now)?;
        check_ca(ca, counted(&intermediates[..i]))?;
    }
    check_valid_at(signer, now)?;
    check_signer(signer, &opts.signer_policy)?;
    Ok(())
}
