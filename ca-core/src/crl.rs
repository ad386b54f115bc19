//! Sharded CRLs (DESIGN §5): X.509 v2 CRLs (RFC 5280 §5), one per shard of each issuer, each with
//! a critical issuingDistributionPoint naming the URL its certificates carry, an
//! authorityKeyIdentifier and a cRLNumber that only grows; plus a full CRL on request. Signed in
//! the HSM through the same [`Signer`](crate::Signer) as certificates, verified before written,
//! written through a temporary file and a rename.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{GeneralizedTime, Ia5String, OctetString, Uint};
use der::Encode;
use serde::Serialize;
use x509_cert::crl::{RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::crl::{CrlNumber, CrlReason};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use crate::certs::x509_time;
use crate::issue::{CrlSettings, IssuerCtx};
use crate::revocation::{Reason, Revocation};
use crate::store::{Store, StoreError};

/// Which CRL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlScope {
    /// One shard: the certificates bound to it at issuance.
    Shard(u32),
    /// Every certificate of the issuer, no issuingDistributionPoint.
    Full,
}

impl CrlScope {
    /// `3` or `full`: the file stem and the counter's name.
    pub fn name(self) -> String {
        match self {
            CrlScope::Shard(n) => n.to_string(),
            CrlScope::Full => "full".into(),
        }
    }
}

/// Why a CRL could not be published. Nothing was written and no cRLNumber consumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HSM could not sign.
    #[error("signing the CRL: {0}")]
    Sign(#[from] crate::signer::SignError),
    /// The HSM's signature does not verify.
    #[error("the HSM's signature on the CRL does not verify with the issuer's key: {0}")]
    Verify(String),
    /// Encoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sharded CRLs need the URL certificates point at.
    #[error("sharded CRLs need crl.base_url (certificates name <base_url>/<issuer>/<shard>.crl); with no base URL only the full CRL is published")]
    NoBaseUrl,
    /// The shard count changed after certificates were bound to shards.
    #[error("crl.shards is {configured} in meterpki.toml, but certificates are bound to {stored} shards; set crl.shards = {stored} again")]
    ShardsChanged {
        /// Shards certificates were issued with.
        stored: u64,
        /// Shards configured now.
        configured: u32,
    },
}

/// What one publication wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Issuer name.
    pub issuer: String,
    /// Shard number or `full`.
    pub scope: String,
    /// The file written.
    pub path: PathBuf,
    /// Its cRLNumber.
    pub crl_number: u64,
    /// Revoked certificates listed.
    pub entries: usize,
    /// DER size.
    pub bytes: usize,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
}

const SHARDS_KEY: &str = "crl.shards";

/// Binds the store to the configured shard count the first time, and refuses a change later:
/// every certificate names its shard, so N is fixed once certificates exist.
pub fn check_shards(store: &dyn Store, settings: &CrlSettings) -> Result<(), CrlError> {
    match store.meta_u64(SHARDS_KEY)? {
        Some(n) if n != u64::from(settings.shards) => Err(CrlError::ShardsChanged {
            stored: n,
            configured: settings.shards,
        }),
        Some(_) => Ok(()),
        None => Ok(store.set_meta_u64(SHARDS_KEY, u64::from(settings.shards))?),
    }
}

fn counter_key(issuer: &str, scope: CrlScope) -> String {
    format!("crl.number/{issuer}/{}", scope.name())
}

/// The last cRLNumber published for a scope (0: none yet).
pub fn last_number(store: &dyn Store, issuer: &str, scope: CrlScope) -> Result<u64, CrlError> {
    Ok(store.meta_u64(&counter_key(issuer, scope))?.unwrap_or(0))
}

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

/// The shard's URL (the certificates' cRLDistributionPoints and the CRL's IDP).
pub fn shard_url(settings: &CrlSettings, issuer: &str, shard: u32) -> Option<String> {
    settings.url(issuer, shard)
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
    let next_update = time(now + i64::from(settings.next_update_hours) * 3600)?;
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

/// Builds, signs and writes one CRL to `dir/<scope>.crl`. The cRLNumber is recorded after the
/// HSM signed and before the file is written: a failed signature consumes no number, and a crash
/// after recording means the next publication uses a greater one.
pub fn publish(
    issuer: &IssuerCtx,
    store: &dyn Store,
    settings: &CrlSettings,
    scope: CrlScope,
    dir: &Path,
) -> Result<Published, CrlError> {
    let name = issuer.kind.name();
    let entries = match scope {
        CrlScope::Shard(s) => store.revoked_in_shard(name, s)?,
        CrlScope::Full => store.revoked_of_issuer(name)?,
    };
    let number = last_number(store, name, scope)? + 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let der = build_crl(issuer, settings, scope, number, &entries, now)?;
    store.set_meta_u64(&counter_key(name, scope), number)?;
    std::fs::create_dir_all(dir).map_err(|source| CrlError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(format!("{}.crl", scope.name()));
    crate::fsutil::write_atomic(&path, &der, 0o644).map_err(|source| CrlError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Published {
        issuer: name.to_string(),
        scope: scope.name(),
        path,
        crl_number: number,
        entries: entries.len(),
        bytes: der.len(),
        this_update: now,
        next_update: now + i64::from(settings.next_update_hours) * 3600,
    })
}

/// Publishes every shard of an issuer (and the full CRL when `full`), one shard in memory at a time.
pub fn publish_all(
    issuer: &IssuerCtx,
    store: &dyn Store,
    settings: &CrlSettings,
    dir: &Path,
    full: bool,
) -> Result<Vec<Published>, CrlError> {
    let mut out = Vec::new();
    if settings.base_url.is_some() {
        for shard in 0..settings.shards {
            out.push(publish(
                issuer,
                store,
                settings,
                CrlScope::Shard(shard),
                dir,
            )?);
        }
    }
    if full || settings.base_url.is_none() {
        out.push(publish(issuer, store, settings, CrlScope::Full, dir)?);
    }
    Ok(out)
}
