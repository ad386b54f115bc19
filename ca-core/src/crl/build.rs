//! One X.509 v2 CRL (RFC 5280 §5): built, signed in the HSM and verified before it is returned.

use std::time::{Duration, UNIX_EPOCH};

use der::asn1::{GeneralizedTime, Ia5String, OctetString, Uint};
use der::Encode;
use x509_cert::crl::{RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::crl::{CrlNumber, CrlReason};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use super::{CrlError, CrlScope};
use crate::certs::x509_time;
use crate::issue::{CrlSettings, IssuerCtx};
use crate::model::{Reason, Revocation};

fn ext(
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn time(secs: i64) -> Result<x509_cert::time::Time, CrlError> {
    x509_time(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .map_err(|e| CrlError::Verify(e.to_string()))
}

/// Builds and signs a CRL; the signature is verified before it is returned.
pub fn build_crl(
    issuer: &IssuerCtx,
    settings: &CrlSettings,
    scope: CrlScope,
    number: u64,
    entries: &[(Vec<u8>, Revocation)],
    now: i64,
) -> Result<Vec<u8>, CrlError> {
    let this_update = time(now)?;
    let next_update = time(now + settings.lifetime_secs(issuer.kind))?;
    let mut revoked = Vec::with_capacity(entries.len());
    for (serial, rev) in entries {
        let mut exts = Vec::new();
        // reasonCode unspecified SHOULD be absent (RFC 5280 §5.3.1).
        if rev.reason != Reason::Unspecified {
            let reason = match rev.reason {
                Reason::Unspecified => CrlReason::Unspecified,
                Reason::KeyCompromise => CrlReason::KeyCompromise,
                Reason::CaCompromise => CrlReason::CaCompromise,
                Reason::AffiliationChanged => CrlReason::AffiliationChanged,
                Reason::Superseded => CrlReason::Superseded,
                Reason::CessationOfOperation => CrlReason::CessationOfOperation,
                Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
                Reason::AaCompromise => CrlReason::AaCompromise,
            };
            exts.push(ext(
                const_oid::db::rfc5280::ID_CE_CRL_REASONS,
                false,
                &reason,
            )?);
        }
        if let Some(inv) = rev.invalidity_date {
            // invalidityDate is a GeneralizedTime (RFC 5280 §5.3.2).
            let t = GeneralizedTime::from_unix_duration(Duration::from_secs(inv.max(0) as u64))?;
            exts.push(ext(
                const_oid::db::rfc5280::ID_CE_INVALIDITY_DATE,
                false,
                &t,
            )?);
        }
        revoked.push(RevokedCert {
            serial_number: SerialNumber::new(serial)?,
            revocation_date: time(rev.revoked_at)?,
            crl_entry_extensions: (!exts.is_empty()).then_some(exts),
        });
    }
    let mut crl_exts = vec![
        ext(
            const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer.key_id.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
        ext(
            const_oid::db::rfc5280::ID_CE_CRL_NUMBER,
            false,
            &CrlNumber(Uint::new(&number.to_be_bytes())?),
        )?,
    ];
    if let CrlScope::Shard(shard) = scope {
        let url = settings
            .url(issuer.kind.name(), shard)
            .ok_or(CrlError::NoBaseUrl)?;
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![
                GeneralName::UniformResourceIdentifier(Ia5String::new(&url)?),
            ])),
            only_contains_user_certs: false,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        // Critical, so a relying party that cannot read it does not treat a shard as complete.
        crl_exts.push(ext(
            const_oid::db::rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT,
            true,
            &idp,
        )?);
    }
    let tbs = TbsCertList {
        version: Version::V2,
        signature: issuer.algorithm.signature_algorithm(),
        issuer: issuer.subject.clone(),
        this_update,
        next_update: Some(next_update),
        // An empty list is absent, not empty (RFC 5280 §5.1.2.6).
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(crl_exts),
    };
    let tbs_der = tbs.to_der()?;
    let signature = issuer.signer.sign(&tbs_der)?;
    issuer
        .verify(&tbs_der, &signature)
        .map_err(|e| CrlError::Verify(e.to_string()))?;
    Ok(crate::issue::assemble_signed(
        &tbs_der,
        &issuer.signature_algorithm_der,
        &signature,
    )?)
}
