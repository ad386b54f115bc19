//! CA certificates: the self-signed root and the issuing CAs it certifies.
//!
//! The TBSCertificate is built here with `x509-cert` types, the signature is made by a [`Signer`]
//! (the HSM) between building and assembling, and the result is verified with an independent
//! implementation before anyone sees it.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der::{Decode, DecodePem, Encode, EncodePem};
use sha1::Digest as _;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::signer::{spki_der, verify_signature, Signer, VerifyError};

/// Why a certificate could not be built, parsed or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// DER encoding or decoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// A distinguished name did not parse.
    #[error("distinguished name {name:?}: {reason}")]
    Name {
        /// The text given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] crate::signer::SignError),
    /// The signature made by the signer does not verify with the issuer's public key.
    #[error("the signature on {what} does not verify with the issuer's public key: {source}")]
    Verify {
        /// What was being signed.
        what: String,
        /// Why it failed.
        #[source]
        source: VerifyError,
    },
    /// The HSM key does not match the certificate that claims it.
    #[error("the HSM key {key} does not match the public key in {cert}")]
    KeyMismatch {
        /// The key's label.
        key: String,
        /// The certificate's description.
        cert: String,
    },
    /// A date is outside what X.509 can express.
    #[error("validity: {0}")]
    Validity(String),
}

/// What a CA certificate says about its subject.
#[derive(Debug, Clone)]
pub struct CaCertSpec {
    /// Subject distinguished name, RFC 4514 text (`CN=...,O=...`).
    pub subject: String,
    /// Validity: days from now, or no end date (`99991231235959Z`).
    pub validity: policies::Validity,
    /// basicConstraints pathLenConstraint.
    pub path_len: u8,
    /// certificatePolicies (non-critical); none: no extension.
    pub policies: Vec<const_oid::ObjectIdentifier>,
    /// The URL of the CRL that lists this certificate (the root's ARL), for its
    /// cRLDistributionPoints; none: no pointer.
    pub crl_url: Option<String>,
    /// Further extensions, appended last (a root's wrapped contingency key, RFC 5934 §2.2.4).
    pub extra_extensions: Vec<Extension>,
}

/// A summary of a certificate for status output and transcripts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// Subject DN as text.
    pub subject: String,
    /// Issuer DN as text.
    pub issuer: String,
    /// Serial as lowercase hex.
    pub serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, colon-separated uppercase hex (as `openssl x509 -fingerprint -sha256`).
    pub sha256_fingerprint: String,
    /// subjectKeyIdentifier, hex.
    pub subject_key_id: Option<String>,
}

impl CertInfo {
    /// Summarises `cert`.
    pub fn of(cert: &Certificate) -> CertInfo {
        let tbs = &cert.tbs_certificate;
        let ski = tbs.extensions.as_ref().and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
                .and_then(|e| OctetString::from_der(e.extn_value.as_bytes()).ok())
                .map(|o| hex::encode(o.as_bytes()))
        });
        CertInfo {
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            serial: hex::encode(tbs.serial_number.as_bytes()),
            not_before: rfc3339(&tbs.validity.not_before),
            not_after: rfc3339(&tbs.validity.not_after),
            sha256_fingerprint: fingerprint_sha256(cert),
            subject_key_id: ski,
        }
    }
}

fn rfc3339(t: &Time) -> String {
    let secs = t.to_unix_duration().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// SHA-256 fingerprint of the certificate's DER, `AA:BB:...` as openssl prints it.
pub fn fingerprint_sha256(cert: &Certificate) -> String {
    let der = cert.to_der().unwrap_or_default();
    let digest = sha2::Sha256::digest(&der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses RFC 4514 text into a Name, with an error that repeats the input.
pub fn parse_name(text: &str) -> Result<Name, CertError> {
    Name::from_str(text).map_err(|e| CertError::Name {
        name: text.to_string(),
        reason: e.to_string(),
    })
}

/// The subjectKeyIdentifier extension of `cert`, if it has a well-formed one.
pub(crate) fn subject_key_identifier(cert: &Certificate) -> Option<SubjectKeyIdentifier> {
    use der::Decode;
    use x509_cert::der::oid::AssociatedOid;
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == SubjectKeyIdentifier::OID)
        .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
}

/// An 8-octet key identifier: RFC 5280 §4.2.1.2 method 2 (the four-bit type field 0100 followed
/// by the least significant 60 bits of the SHA-1 hash of the subjectPublicKey BIT STRING value).
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> [u8; 8] {
    let hash = sha1::Sha1::digest(spki.subject_public_key.raw_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash[12..20]);
    id[0] = 0x40 | (id[0] & 0x0f);
    id
}

/// A positive serial of 64 random bits plus a leading zero-free byte: 9 octets, never negative.
pub(crate) fn random_serial() -> Result<SerialNumber, der::Error> {
    SerialNumber::new(&random_serial_bytes())
}

/// 72 random bits as a serial number's content octets: the first in 0x01..=0x7f, so that the
/// INTEGER is positive and minimally encoded and DER keeps all 72 bits.
pub fn random_serial_bytes() -> [u8; 9] {
    use rand::RngCore;
    let mut bytes = [0u8; 9];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    bytes
}

/// X.509 time for a moment: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5).
pub(crate) fn x509_time(at: SystemTime) -> Result<Time, CertError> {
    let since = at
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CertError::Validity(e.to_string()))?;
    // Whole seconds only: DER forbids fractional seconds here.
    let since = Duration::from_secs(since.as_secs());
    const Y2050: u64 = 2_524_608_000;
    if since.as_secs() < Y2050 {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(since)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_unix_duration(
            since,
        )?))
    }
}

fn ext<T: AsExtension>(
    value: &T,
    subject: &Name,
    exts: &[Extension],
) -> Result<Extension, der::Error> {
    value.to_extension(subject, exts)
}

/// certificatePolicies and cRLDistributionPoints as `spec` asks, appended to `exts`.
fn policy_and_crl_extensions(
    spec: &CaCertSpec,
    subject: &Name,
    exts: &mut Vec<Extension>,
) -> Result<(), der::Error> {
    use x509_cert::ext::pkix::certpolicy::PolicyInformation;
    use x509_cert::ext::pkix::crl::dp::DistributionPoint;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    use x509_cert::ext::pkix::{CertificatePolicies, CrlDistributionPoints};
    if !spec.policies.is_empty() {
        let policies = CertificatePolicies(
            spec.policies
                .iter()
                .map(|oid| PolicyInformation {
                    policy_identifier: *oid,
                    policy_qualifiers: None,
                })
                .collect(),
        );
        // Non-critical: RFC 5280 §4.2.1.4 allows either, and a CA certificate is read by
        // every relying party's stack, embedded ones included.
        let mut e = ext(&policies, subject, exts)?;
        e.critical = false;
        exts.push(e);
    }
    if let Some(url) = &spec.crl_url {
        let cdp = CrlDistributionPoints(vec![DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![
                GeneralName::UniformResourceIdentifier(der::asn1::Ia5String::new(url)?),
            ])),
            reasons: None,
            crl_issuer: None,
        }]);
        exts.push(ext(&cdp, subject, exts)?);
    }
    Ok(())
}

fn ca_extensions(
    subject: &Name,
    subject_spki: &SubjectPublicKeyInfoOwned,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    spec: &CaCertSpec,
) -> Result<Vec<Extension>, der::Error> {
    let mut exts: Vec<Extension> = Vec::new();
    let bc = BasicConstraints {
        ca: true,
        path_len_constraint: Some(spec.path_len),
    };
    exts.push(ext(&bc, subject, &exts)?);
    let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
    exts.push(ext(&ku, subject, &exts)?);
    let ski = SubjectKeyIdentifier(OctetString::new(key_identifier(subject_spki).to_vec())?);
    exts.push(ext(&ski, subject, &exts)?);
    if spki_der(subject_spki) != spki_der(issuer_spki) {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(key_identifier(issuer_spki).to_vec())?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        exts.push(ext(&aki, subject, &exts)?);
    }
    policy_and_crl_extensions(spec, subject, &mut exts)?;
    exts.extend(spec.extra_extensions.iter().cloned());
    Ok(exts)
}

/// Signs `tbs` with `signer`, assembles the certificate and verifies the signature with the
/// issuer's public key before returning it.
pub(crate) fn sign_tbs(
    tbs: TbsCertificate,
    signer: &dyn Signer,
    what: &str,
) -> Result<Certificate, CertError> {
    let tbs_der = tbs.to_der()?;
    let signature = signer.sign(&tbs_der)?;
    verify_signature(signer.public_key(), &tbs_der, &signature).map_err(|source| {
        CertError::Verify {
            what: what.to_string(),
            source,
        }
    })?;
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: signer.algorithm().signature_algorithm(),
        signature: BitString::from_bytes(&signature)?,
    })
}

/// notAfter for a certificate without a well-defined end: `99991231235959Z` (RFC 5280
/// §4.1.2.5), as GeneralizedTime.
pub(crate) const NO_END_UNIX: u64 = 253_402_300_799;

fn validity(v: policies::Validity) -> Result<Validity, CertError> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CertError::Validity(e.to_string()))?;
    let now = UNIX_EPOCH + Duration::from_secs(since.as_secs());
    let not_after = match v {
        // Both ends are inside the period (RFC 5280 §4.1.2.5): `days` days end one second
        // before the same time `days` days later.
        policies::Validity::Days(days) => {
            x509_time(now + Duration::from_secs(u64::from(days) * 86_400 - 1))?
        }
        policies::Validity::Unlimited => Time::GeneralTime(GeneralizedTime::from_unix_duration(
            Duration::from_secs(NO_END_UNIX),
        )?),
    };
    Ok(Validity {
        not_before: x509_time(now)?,
        not_after,
    })
}

/// Builds and signs the self-signed root certificate for the key behind `signer`.
pub fn build_self_signed_root(
    signer: &dyn Signer,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    build_self_signed_root_named(signer, parse_name(&spec.subject)?, spec)
}

/// [`build_self_signed_root`] for a subject given as a Name: a rolled-over root keeps its
/// name byte for byte (RFC 4210 §4.4), so that the link certificates are self-issued.
pub(crate) fn build_self_signed_root_named(
    signer: &dyn Signer,
    subject: Name,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    let spki = signer.public_key().clone();
    let extensions = ca_extensions(&subject, &spki, &spki, spec)?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: signer.algorithm().signature_algorithm(),
        issuer: subject.clone(),
        validity: validity(spec.validity)?,
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    sign_tbs(tbs, signer, "the root certificate")
}

/// Builds an issuing-CA certificate for `subject_spki`, signed by `issuer_signer` whose
/// certificate is `issuer_cert`. Refuses an issuer whose key does not match its certificate.
pub fn build_ca_certificate(
    issuer_signer: &dyn Signer,
    issuer_cert: &Certificate,
    subject_spki: &SubjectPublicKeyInfoOwned,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    let subject = parse_name(&spec.subject)?;
    build_ca_certificate_named(issuer_signer, issuer_cert, subject, subject_spki, spec)
}

/// [`build_ca_certificate`] for a subject given as a Name rather than `spec.subject`: a CA
/// certified again under another issuer keeps its name byte for byte (root rollover, RFC 4210
/// §4.4), so that the paths through either certificate chain by name.
pub(crate) fn build_ca_certificate_named(
    issuer_signer: &dyn Signer,
    issuer_cert: &Certificate,
    subject: Name,
    subject_spki: &SubjectPublicKeyInfoOwned,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    let issuer_spki = &issuer_cert.tbs_certificate.subject_public_key_info;
    let extensions = ca_extensions(&subject, subject_spki, issuer_spki, spec)?;
    sign_under_issuer(
        issuer_signer,
        issuer_cert,
        subject,
        subject_spki,
        extensions,
        spec,
    )
}

/// Builds an end-entity signing certificate (digitalSignature, not a CA) for a key that signs
/// meterpki's own records, such as the audit chain head.
pub fn build_signer_certificate(
    issuer_signer: &dyn Signer,
    issuer_cert: &Certificate,
    subject_spki: &SubjectPublicKeyInfoOwned,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    let subject = parse_name(&spec.subject)?;
    build_signer_certificate_named(issuer_signer, issuer_cert, subject, subject_spki, spec)
}

/// [`build_signer_certificate`] for a subject given as a Name (the same signer certified
/// again under a new root keeps its name byte for byte).
pub(crate) fn build_signer_certificate_named(
    issuer_signer: &dyn Signer,
    issuer_cert: &Certificate,
    subject: Name,
    subject_spki: &SubjectPublicKeyInfoOwned,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    let issuer_spki = &issuer_cert.tbs_certificate.subject_public_key_info;
    let mut exts: Vec<Extension> = Vec::new();
    let bc = BasicConstraints {
        ca: false,
        path_len_constraint: None,
    };
    exts.push(ext(&bc, &subject, &exts)?);
    exts.push(ext(
        &KeyUsage(KeyUsages::DigitalSignature.into()),
        &subject,
        &exts,
    )?);
    let ski = SubjectKeyIdentifier(OctetString::new(key_identifier(subject_spki).to_vec())?);
    exts.push(ext(&ski, &subject, &exts)?);
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(key_identifier(issuer_spki).to_vec())?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    exts.push(ext(&aki, &subject, &exts)?);
    policy_and_crl_extensions(spec, &subject, &mut exts)?;
    sign_under_issuer(
        issuer_signer,
        issuer_cert,
        subject,
        subject_spki,
        exts,
        spec,
    )
}

/// The part every certificate issued under a CA shares: the issuer's key checked against its
/// certificate, a random serial, a validity that never outlives the issuer (RFC 5280 §6.1.3
/// would reject it anyway), the signature made and verified.
fn sign_under_issuer(
    issuer_signer: &dyn Signer,
    issuer_cert: &Certificate,
    subject: Name,
    subject_spki: &SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
    spec: &CaCertSpec,
) -> Result<Certificate, CertError> {
    check_key_matches(issuer_signer, issuer_cert, "issuer")?;
    let mut validity = validity(spec.validity)?;
    let issuer_end = issuer_cert.tbs_certificate.validity.not_after;
    if validity.not_after.to_unix_duration() > issuer_end.to_unix_duration() {
        validity.not_after = issuer_end;
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: issuer_signer.algorithm().signature_algorithm(),
        issuer: issuer_cert.tbs_certificate.subject.clone(),
        validity,
        subject,
        subject_public_key_info: subject_spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    sign_tbs(
        tbs,
        issuer_signer,
        &format!("the certificate for {}", spec.subject),
    )
}

/// Refuses a signer whose public key is not the one in `cert` (docs/design.md#the-hierarchy: an issuer whose HSM key
/// does not match its certificate is refused at start-up).
pub fn check_key_matches(
    signer: &dyn Signer,
    cert: &Certificate,
    what: &str,
) -> Result<(), CertError> {
    if spki_der(signer.public_key()) != spki_der(&cert.tbs_certificate.subject_public_key_info) {
        return Err(CertError::KeyMismatch {
            key: format!("{signer:?}"),
            cert: format!("the {what} certificate {}", cert.tbs_certificate.subject),
        });
    }
    Ok(())
}

/// Parses one PEM certificate.
pub fn certificate_from_pem(pem: &str) -> Result<Certificate, CertError> {
    Ok(Certificate::from_pem(pem)?)
}

/// A certificate from a file's bytes: PEM or DER.
pub fn certificate_from_bytes(bytes: &[u8]) -> Result<Certificate, CertError> {
    match std::str::from_utf8(bytes) {
        Ok(t) if t.contains("-----BEGIN") => certificate_from_pem(t),
        _ => Ok(Certificate::from_der(bytes)?),
    }
}

/// Encodes a certificate as PEM (LF line endings).
pub fn certificate_to_pem(cert: &Certificate) -> Result<String, CertError> {
    Ok(cert.to_pem(der::pem::LineEnding::LF)?)
}

/// A certificate's DER as PEM.
pub fn der_to_pem(der: &[u8]) -> Result<String, CertError> {
    Ok(
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
            .map_err(der::Error::from)?,
    )
}

/// Checks that `cert` carries a valid signature from `issuer`'s key.
pub fn verify_certificate_signature(
    cert: &Certificate,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), CertError> {
    let tbs = cert.tbs_certificate.to_der()?;
    verify_signature(issuer_spki, &tbs, cert.signature.raw_bytes()).map_err(|source| {
        CertError::Verify {
            what: format!("the certificate {}", cert.tbs_certificate.subject),
            source,
        }
    })
}
