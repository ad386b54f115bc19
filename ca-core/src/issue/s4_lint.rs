//! Step 4: the TBSCertificate is checked before anything is signed. Only this module can make a
//! [`Linted`], and only a `Linted` can be signed (STYLE: Boulder's lint-before-sign).
//!
//! The checks read the DER back, as a relying party would, rather than trusting the builder:
//! RFC 5280 structure (§4.1, §4.2) and the profile's rules (docs/design.md#certificates).

use std::collections::HashSet;

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use policies::{KeyUsageBit, ProfileKind};
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, CertificatePolicies, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::{TbsCertificate, Version};

use super::error::{ErrorCode, IssueError};
use super::s1_request::{check_key, Subject};
use super::s3_tbs::{HardwareModuleName, Tbs, ID_ON_HARDWARE_MODULE_NAME};
use super::IssuerCtx;
use crate::certs::key_identifier;

use const_oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_CERTIFICATE_POLICIES,
    ID_CE_CRL_DISTRIBUTION_POINTS, ID_CE_KEY_USAGE, ID_CE_SUBJECT_ALT_NAME,
    ID_CE_SUBJECT_KEY_IDENTIFIER,
};

/// Upper bound of the bytes a certificate adds around its TBS: outer SEQUENCE header (4),
/// signatureAlgorithm (12 for ecdsa-with-SHA256/384), BIT STRING header (2) plus an ECDSA
/// signature (at most 72 bytes for P-256, 104 for P-384) with its unused-bits octet.
fn signature_overhead(field_len: usize) -> usize {
    4 + 12 + 3 + 8 + 2 * (field_len + 1)
}

/// A TBSCertificate that passed every check. Its fields are private to this module: nothing
/// else can make one, and signing consumes it.
#[derive(Debug)]
pub struct Linted {
    tbs: Tbs,
    der: Vec<u8>,
}

impl Linted {
    pub(crate) fn der(&self) -> &[u8] {
        &self.der
    }
    pub(crate) fn into_parts(self) -> (Tbs, Vec<u8>) {
        (self.tbs, self.der)
    }
}

fn fail(detail: impl Into<String>) -> IssueError {
    IssueError::new(
        ErrorCode::Internal,
        format!(
            "lint refused the certificate before signing: {}",
            detail.into()
        ),
    )
}

fn ext_value<'a, T: Decode<'a>>(value: &'a OctetString, what: &str) -> Result<T, IssueError> {
    T::from_der(value.as_bytes()).map_err(|e| fail(format!("{what}: {e}")))
}

/// Lints `tbs` for `issuer`.
pub(super) fn lint(tbs: Tbs, issuer: &IssuerCtx) -> Result<Linted, IssueError> {
    let der = tbs.tbs.to_der().map_err(|e| fail(e.to_string()))?;
    // Read back what will be signed, as a relying party would.
    let t = TbsCertificate::from_der(&der).map_err(|e| fail(format!("does not decode: {e}")))?;
    if t != tbs.tbs {
        return Err(fail(
            "the DER does not decode to the certificate that was built",
        ));
    }
    let req = &tbs.approved.request;
    let profile = &req.profile;
    // §4.1.2.1: extensions present, so v3.
    if t.version != Version::V3 {
        return Err(fail("version is not v3"));
    }
    // §4.1.2.2: positive, at most 20 octets; at least 64 random bits (docs/design.md#certificates).
    let serial = t.serial_number.as_bytes();
    if serial.is_empty()
        || serial.len() > 20
        || serial[0] & 0x80 != 0
        || serial.iter().all(|b| *b == 0)
    {
        return Err(fail(
            "serial is not a positive integer of at most 20 octets",
        ));
    }
    if serial.len() < 9 {
        return Err(fail("serial carries fewer than 64 random bits"));
    }
    // §4.1.2.3, §4.1.2.4.
    if t.signature != issuer.algorithm.signature_algorithm() {
        return Err(fail("signature algorithm does not match the issuer's key"));
    }
    if t.issuer.to_der().ok() != issuer.subject.to_der().ok() {
        return Err(fail("issuer name is not the issuing CA's subject"));
    }
    // §4.1.2.5.
    let nb = t.validity.not_before.to_unix_duration();
    let na = t.validity.not_after.to_unix_duration();
    if nb >= na {
        return Err(fail("notBefore is not before notAfter"));
    }
    if profile.kind() != ProfileKind::Meter && na.as_secs() > issuer.not_after_unix {
        return Err(fail("the certificate outlives its issuer"));
    }
    // §4.1.2.7 and the profile's curves.
    check_key(profile, &t.subject_public_key_info).map_err(|e| fail(e.detail))?;

    let exts = t.extensions.as_deref().unwrap_or_default();
    let mut seen = HashSet::new();
    for e in exts {
        if !seen.insert(e.extn_id) {
            return Err(fail(format!(
                "extension {} appears twice (§4.2)",
                e.extn_id
            )));
        }
    }
    let find = |oid: ObjectIdentifier| exts.iter().find(|e| e.extn_id == oid);

    // keyUsage: critical, exactly the profile's bits (§4.2.1.3).
    let ku = find(ID_CE_KEY_USAGE).ok_or_else(|| fail("keyUsage is missing"))?;
    if !ku.critical {
        return Err(fail("keyUsage is not critical"));
    }
    let ku: KeyUsage = ext_value(&ku.extn_value, "keyUsage")?;
    let want: Vec<KeyUsages> = profile
        .key_usage()
        .iter()
        .map(|b| match b {
            KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
            KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
            KeyUsageBit::KeyCertSign => KeyUsages::KeyCertSign,
            KeyUsageBit::CrlSign => KeyUsages::CRLSign,
        })
        .collect();
    if ku.0.into_iter().count() != want.len() || want.iter().any(|w| !ku.0.contains(*w)) {
        return Err(fail("keyUsage bits differ from the profile's"));
    }
    // Key identifiers: 8 octets, method 2 (§4.2.1.2); AKI = the issuer's SKI (§4.2.1.1).
    let aki = find(ID_CE_AUTHORITY_KEY_IDENTIFIER)
        .ok_or_else(|| fail("authorityKeyIdentifier is missing"))?;
    let aki: AuthorityKeyIdentifier = ext_value(&aki.extn_value, "authorityKeyIdentifier")?;
    if aki.key_identifier.as_ref().map(|k| k.as_bytes()) != Some(&issuer.key_id[..]) {
        return Err(fail(
            "authorityKeyIdentifier is not the issuer's subjectKeyIdentifier",
        ));
    }
    let ski = find(ID_CE_SUBJECT_KEY_IDENTIFIER)
        .ok_or_else(|| fail("subjectKeyIdentifier is missing"))?;
    let ski: SubjectKeyIdentifier = ext_value(&ski.extn_value, "subjectKeyIdentifier")?;
    let n = profile.key_identifier_bytes();
    if ski.0.as_bytes() != &key_identifier(&t.subject_public_key_info)[..n] {
        return Err(fail(format!(
            "subjectKeyIdentifier is not the first {n} octets of the key's method-2 identifier"
        )));
    }
    // certificatePolicies: critical, the profile's policy.
    if let Some(policy) = profile.policy_oid() {
        let cp = find(ID_CE_CERTIFICATE_POLICIES)
            .ok_or_else(|| fail("certificatePolicies is missing"))?;
        if cp.critical != super::s3_tbs::policies_critical(profile) {
            return Err(fail(
                "certificatePolicies criticality differs from the profile's",
            ));
        }
        let cp: CertificatePolicies = ext_value(&cp.extn_value, "certificatePolicies")?;
        if cp.0.len() != 1 || cp.0[0].policy_identifier != policy {
            return Err(fail(
                "certificatePolicies is not exactly the profile's policy",
            ));
        }
    }
    // extendedKeyUsage: exactly the profile's purposes, or absent.
    let want_eku: Vec<ObjectIdentifier> = profile
        .extended_key_usage()
        .iter()
        .map(|e| e.oid())
        .collect();
    match find(const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE) {
        None if want_eku.is_empty() => {}
        Some(e) if !want_eku.is_empty() => {
            let eku: x509_cert::ext::pkix::ExtendedKeyUsage =
                ext_value(&e.extn_value, "extendedKeyUsage")?;
            if eku.0 != want_eku {
                return Err(fail("extendedKeyUsage differs from the profile's"));
            }
        }
        _ => {
            return Err(fail(
                "extendedKeyUsage present or absent against the profile",
            ))
        }
    }
    // No basicConstraints on end-entity certificates of these profiles.
    if find(ID_CE_BASIC_CONSTRAINTS).is_some() {
        return Err(fail(
            "basicConstraints present on an end-entity certificate",
        ));
    }
    match &req.subject {
        Subject::Device(id) => {
            // Empty subject, so a critical SAN (§4.1.2.6, §4.2.1.6) with one hardwareModuleName.
            if !t.subject.0.is_empty() {
                return Err(fail("a meter certificate's subject must be empty"));
            }
            let san =
                find(ID_CE_SUBJECT_ALT_NAME).ok_or_else(|| fail("subjectAltName is missing"))?;
            if !san.critical {
                return Err(fail(
                    "subjectAltName is not critical though the subject is empty",
                ));
            }
            let san: SubjectAltName = ext_value(&san.extn_value, "subjectAltName")?;
            let [GeneralName::OtherName(on)] = san.0.as_slice() else {
                return Err(fail("subjectAltName must hold exactly one otherName"));
            };
            if on.type_id != ID_ON_HARDWARE_MODULE_NAME {
                return Err(fail("subjectAltName otherName is not a hardwareModuleName"));
            }
            let hmn: HardwareModuleName = on
                .value
                .decode_as()
                .map_err(|e| fail(format!("hardwareModuleName: {e}")))?;
            if Some(hmn.hw_type) != profile.device_type_oid()
                || hmn.hw_serial_num.as_bytes() != id.bytes()
            {
                return Err(fail(
                    "hardwareModuleName does not name the profile's device type and the device ID",
                ));
            }
        }
        Subject::Party { entity_id, .. } => {
            // The entity ID's attribute, tag and value as the profile's form says.
            let (id_type, id_tag, id_value) = match profile.entity_id_form() {
                policies::EntityIdForm::X500UniqueIdentifier => (
                    super::X500_UNIQUE_IDENTIFIER,
                    der::Tag::BitString,
                    [&[0u8][..], &entity_id.bytes()[..]].concat(),
                ),
                policies::EntityIdForm::SerialNumber => (
                    super::s3_tbs::SERIAL_NUMBER_ATTRIBUTE,
                    der::Tag::PrintableString,
                    entity_id.to_string().into_bytes(),
                ),
            };
            let last = t.subject.0.last().and_then(|rdn| rdn.0.as_slice().first());
            let id_ok = last.is_some_and(|atv| {
                atv.oid == id_type
                    && der::Tagged::tag(&atv.value) == id_tag
                    && atv.value.value() == id_value.as_slice()
            });
            if t.subject.0.len() != 3 || !id_ok {
                return Err(fail(format!(
                    "a party certificate's subject is CN, OU and the entity ID as {} ({})",
                    profile.entity_id_form().name(),
                    id_type
                )));
            }
            if find(ID_CE_SUBJECT_ALT_NAME).is_some() {
                return Err(fail("a party certificate carries no subjectAltName"));
            }
        }
        Subject::Tls { dns, ips, .. } => {
            if t.subject.0.is_empty() {
                return Err(fail("a TLS certificate names its subject"));
            }
            // A client (no host names) carries its account as one URI.
            let names = (dns.len() + ips.len()).max(1);
            match find(ID_CE_SUBJECT_ALT_NAME) {
                Some(san) => {
                    let san: SubjectAltName = ext_value(&san.extn_value, "subjectAltName")?;
                    if san.0.len() != names {
                        return Err(fail(
                            "subjectAltName does not hold exactly the requested names",
                        ));
                    }
                }
                None if names == 0 => {}
                None => return Err(fail("subjectAltName is missing")),
            }
        }
    }
    // cRLDistributionPoints names the certificate's own shard, or is absent (docs/design.md#revocation-and-crls).
    match (&tbs.crl_url, find(ID_CE_CRL_DISTRIBUTION_POINTS)) {
        (None, None) => {}
        (Some(url), Some(dp)) => {
            let dp: CrlDistributionPoints = ext_value(&dp.extn_value, "cRLDistributionPoints")?;
            let named = dp.0.first().and_then(|p| match &p.distribution_point {
                Some(DistributionPointName::FullName(names)) => names.first(),
                _ => None,
            });
            match named {
                Some(GeneralName::UniformResourceIdentifier(u)) if u.as_str() == url => {}
                _ => {
                    return Err(fail(
                        "cRLDistributionPoints does not name the certificate's shard",
                    ))
                }
            }
        }
        _ => {
            return Err(fail(
                "cRLDistributionPoints present or absent against the profile",
            ))
        }
    }
    // Size (docs/design.md#certificates): the signed certificate, with the longest signature, fits the profile.
    if let Some(max) = profile.max_der_bytes() {
        let worst = der.len() + signature_overhead(issuer.algorithm.field_len());
        if worst > max {
            return Err(fail(format!(
                "the certificate could reach {worst} bytes, over the profile's {max}"
            )));
        }
    }
    Ok(Linted { tbs, der })
}
