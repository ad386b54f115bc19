//! Revocation: by serial (a list, or one through the API), every unrevoked certificate of a
//! device, or every certificate of a supplier. One write with its audit record; the affected
//! CRL shards republished at once when asked.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;

use super::{authorize, crls::shards_of, unix_now, Action, Actor, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::crl::Published;
use crate::model::{Eui64, Reason, Revocation};
use crate::store::{Op, Revoked, Txn};
use crate::CaKind;

/// Which certificates.
#[derive(Clone, Debug)]
pub enum Selector {
    /// These serials.
    Serials {
        /// The serials.
        serials: Vec<Vec<u8>>,
        /// The file they came from, for the audit record.
        file: Option<std::path::PathBuf>,
    },
    /// Every unrevoked meter certificate of a device.
    Device(Eui64),
    /// Every unrevoked certificate of a supplier.
    Supplier(Eui64),
}

/// One serial's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokeRow {
    /// Serial, hex.
    pub serial: String,
    /// `revoked`, `already-revoked` or `unknown`.
    pub status: String,
    /// Profile (known serials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Subject (known serials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The reason that stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the earlier revocation was made (already-revoked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// What a revocation did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokeOutcome {
    /// One per serial, in order.
    pub results: Vec<RevokeRow>,
    /// Revoked now.
    pub revoked: usize,
    /// Revoked before.
    pub already_revoked: usize,
    /// Unknown serials.
    pub unknown: usize,
    /// CRLs republished.
    pub published: Vec<Published>,
}

fn rows(outcomes: &[Revoked], reason: Reason) -> Vec<RevokeRow> {
    outcomes
        .iter()
        .map(|o| match o {
            Revoked::Now(r) => RevokeRow {
                serial: r.serial_hex(),
                status: "revoked".into(),
                profile: Some(r.profile.clone()),
                subject: Some(r.subject_id.clone()),
                reason: Some(reason.name().into()),
                revoked_at: None,
            },
            Revoked::Already(r, earlier) => RevokeRow {
                serial: r.serial_hex(),
                status: "already-revoked".into(),
                profile: Some(r.profile.clone()),
                subject: Some(r.subject_id.clone()),
                reason: Some(earlier.reason.name().into()),
                revoked_at: Some(earlier.revoked_at),
            },
            Revoked::Unknown(s) => RevokeRow {
                serial: hex::encode(s),
                status: "unknown".into(),
                profile: None,
                subject: None,
                reason: None,
                revoked_at: None,
            },
        })
        .collect()
}

impl Service {
    /// Revokes the certificates `which` names, with `reason` (and an invalidityDate in the
    /// past, if given), in one write with its audit record; with `publish`, the CRL shards
    /// they belong to are republished at once.
    pub fn revoke(
        &self,
        actor: &Actor,
        which: Selector,
        reason: Reason,
        invalidity_date: Option<i64>,
        publish: bool,
    ) -> Result<RevokeOutcome, ServiceError> {
        authorize(actor, Action::Administer)?;
        if !publish && matches!(reason, Reason::KeyCompromise | Reason::CaCompromise) {
            return Err(ServiceError::invalid(
                "publish",
                format!("a {} revocation is always published at once", reason.name()),
            ));
        }
        let now = unix_now();
        check_invalidity_date(invalidity_date, now)?;
        check_end_entity_reason(reason)?;
        let (serials, mut details) = match which {
            Selector::Serials { serials, file } => {
                // CA certificates are not in the end-entity store and are never revoked here.
                for kind in CaKind::ALL {
                    if !self.has_ca(kind) {
                        continue;
                    }
                    let ca = self.ca_cert(kind)?;
                    let own = ca.tbs_certificate.serial_number.as_bytes();
                    if let Some(s) = serials.iter().find(|s| s.as_slice() == own) {
                        return Err(ServiceError::invalid(
                            "ca-certificate",
                            format!(
                                "serial {} is the {kind} CA's own certificate: CA certificates are not revoked through `meterpki revoke`",
                                hex::encode(s)
                            ),
                        ));
                    }
                }
                let store = self.store()?;
                for s in &serials {
                    let Some(rec) = store.cert(s)? else {
                        continue;
                    };
                    check_not_service_certificate(&rec)?;
                    check_key_compromise_reaches_active(
                        store.as_ref(),
                        &rec,
                        (reason, false),
                        &serials,
                    )?;
                    if rec.issuer == CaKind::Root {
                        return Err(ServiceError::invalid(
                            "ca-certificate",
                            format!(
                                "serial {} was issued by the root: certificates the root issued are revoked at `meterpki ceremony revoke-ca`",
                                hex::encode(s)
                            ),
                        ));
                    }
                }
                let details = if serials.len() <= 1000 {
                    json!({"serials": serials.iter().map(hex::encode).collect::<Vec<_>>()})
                } else {
                    let mut sorted: Vec<&Vec<u8>> = serials.iter().collect();
                    sorted.sort();
                    let mut h = sha2::Sha256::new();
                    for s in sorted {
                        h.update(s);
                    }
                    json!({"serial_count": serials.len(), "serials_sha256": hex::encode(h.finalize()), "file": file})
                };
                (serials, details)
            }
            Selector::Device(id) => {
                let list = self.unrevoked(&id, CaKind::Device)?;
                if list.is_empty() {
                    return Err(ServiceError::invalid(
                        "no-certificate",
                        format!("{id} has no unrevoked meter certificate"),
                    ));
                }
                (list, json!({"device_id": id.to_string()}))
            }
            Selector::Supplier(id) => {
                let list = self.unrevoked(&id, CaKind::Organisation)?;
                if list.is_empty() {
                    return Err(ServiceError::invalid(
                        "no-certificate",
                        format!("supplier {id} has no unrevoked certificate"),
                    ));
                }
                (list, json!({"supplier": id.to_string()}))
            }
        };
        let revocation = Revocation {
            reason,
            revoked_at: now,
            invalidity_date,
        };
        let (applied, _) = self.audit()?.commit(
            Txn::new().with(Op::Revoke {
                serials,
                revocation,
            }),
            |applied| {
                let out = applied.revoked(0).unwrap_or_default();
                let count = |f: fn(&Revoked) -> bool| out.iter().filter(|r| f(r)).count();
                let (now_n, already) = (
                    count(|r| matches!(r, Revoked::Now(_))),
                    count(|r| matches!(r, Revoked::Already(..))),
                );
                if now_n + already == 0 {
                    return None;
                }
                details["reason"] = json!(reason.name());
                details["invalidity_date"] = json!(invalidity_date);
                details["revoked"] = json!(now_n);
                details["already_revoked"] = json!(already);
                details["unknown"] = json!(count(|r| matches!(r, Revoked::Unknown(_))));
                Some(AuditEntry::new(
                    "certificate.revoke",
                    actor.name(),
                    details.clone(),
                ))
            },
        )?;
        let outcomes = applied.revoked(0).unwrap_or_default();
        // Already-revoked ones too: a retry after a failed publication publishes.
        let shards = shards_of(outcomes, true);
        let published = if publish && !shards.is_empty() {
            self.publish_crls(actor, None, false, Some(&shards))
                .map_err(|e| unpublished(outcomes.len(), &e))?
        } else {
            Vec::new()
        };
        let results = rows(outcomes, reason);
        let count = |s: &str| results.iter().filter(|r| r.status == s).count();
        Ok(RevokeOutcome {
            revoked: count("revoked"),
            already_revoked: count("already-revoked"),
            unknown: count("unknown"),
            results,
            published,
        })
    }

    /// Revokes one certificate for an API caller: an operator any, a supplier its own (others
    /// are "not found"), a factory none. Its CRL shard (and the full CRL) is published before
    /// the answer. Returns the outcome for that serial.
    pub fn revoke_one(
        &self,
        actor: &Actor,
        serial: &[u8],
        reason: Reason,
        invalidity_date: Option<i64>,
    ) -> Result<RevokeRow, ServiceError> {
        authorize(actor, Action::Revoke(None))?;
        let now = unix_now();
        check_invalidity_date(invalidity_date, now)?;
        let store = self.store()?;
        let rec = store
            .cert(serial)?
            .ok_or_else(|| ServiceError::not_found("no such certificate"))?;
        authorize(actor, Action::Revoke(Some(&rec)))?;
        check_end_entity_reason(reason)?;
        check_not_service_certificate(&rec)?;
        check_key_compromise_reaches_active(store.as_ref(), &rec, (reason, false), &[])?;
        if rec.issuer == CaKind::Root {
            return Err(ServiceError::invalid(
                "ca-certificate",
                "this certificate was issued by the root: it is revoked at a `meterpki ceremony revoke-ca` with a quorum of officers",
            ));
        }
        let revocation = Revocation {
            reason,
            revoked_at: now,
            invalidity_date,
        };
        let (applied, _) = self.audit()?.commit(
            Txn::new().with(Op::Revoke {
                serials: vec![serial.to_vec()],
                revocation,
            }),
            |applied| {
                let status = match applied.revoked(0) {
                    Some([Revoked::Now(_)]) => "revoked",
                    _ => "already-revoked",
                };
                Some(AuditEntry::new(
                    "api.revoke",
                    actor.name(),
                    json!({"serial": hex::encode(serial), "reason": reason.name(), "status": status}),
                ))
            },
        )?;
        let outcomes = applied.revoked(0).unwrap_or_default();
        // Published before the caller is answered, so that a relying party sees the revocation
        // as soon as the revoker does. A compromise that could not be published is not
        // reported done: the caller hears it (the revocation itself stands, and the schedule
        // retries the publication).
        let shards = shards_of(outcomes, true);
        if !shards.is_empty() {
            self.publish_crls(&Actor::System("meterpki-serve"), None, false, Some(&shards))
                .map_err(|e| unpublished(1, &e))?;
        }
        rows(outcomes, reason)
            .into_iter()
            .next()
            .filter(|r| r.status != "unknown")
            .ok_or_else(|| ServiceError::not_found("no such certificate"))
    }

    /// Serials of a subject's certificates from one issuer that are not revoked yet.
    fn unrevoked(&self, id: &Eui64, issuer: CaKind) -> Result<Vec<Vec<u8>>, ServiceError> {
        let store = self.store()?;
        let mut out = Vec::new();
        for r in store.certs_of_subject(&id.to_string())? {
            if r.issuer == issuer && store.revocation(&r.serial)?.is_none() {
                out.push(r.serial);
            }
        }
        Ok(out)
    }
}

/// A revocation committed whose CRLs could not be published: said as such (a retry of the same
/// revocation publishes them; so does `crl publish`, and a starting server).
fn unpublished(count: usize, e: &ServiceError) -> ServiceError {
    ServiceError::Incomplete(format!(
        "the revocation is recorded ({count} certificate(s)), but its CRLs could not be published ({e}): \
         relying parties do not see it yet. Revoke again (nothing is revoked twice; the CRLs are \
         published) or run `meterpki crl publish`"
    ))
}

/// An invalidityDate, when given, is not in the future and not before 1970 (a negative one
/// would be written as 1970 in the CRL).
fn check_invalidity_date(invalidity_date: Option<i64>, now: i64) -> Result<(), ServiceError> {
    match invalidity_date {
        Some(d) if d > now => Err(ServiceError::invalid(
            "invalidity-date",
            "invalidity_date is in the future",
        )),
        Some(d) if d < 0 => Err(ServiceError::invalid(
            "invalidity-date",
            format!("invalidity_date {d} is before 1970: give the Unix time (seconds) the key was compromised"),
        )),
        _ => Ok(()),
    }
}

/// The reasons an end-entity certificate may be revoked for: not cACompromise (a CA's key;
/// `ceremony revoke-ca`) nor aACompromise (an attribute authority's), RFC 5280 §5.3.1.
fn check_end_entity_reason(reason: Reason) -> Result<(), ServiceError> {
    if matches!(reason, Reason::CaCompromise | Reason::AaCompromise) {
        return Err(ServiceError::invalid(
            "reason",
            format!(
                "{} is not a reason for an end-entity certificate (RFC 5280 §5.3.1: it names a CA's or an attribute authority's compromise; a CA is revoked with `meterpki ceremony revoke-ca`): use keyCompromise",
                reason.name()
            ),
        ));
    }
    Ok(())
}

/// Certificates meterpki itself presents or signs with (the API server's TLS certificate, the
/// trust-update signer's): revoking one would leave the server presenting, or meters receiving
/// updates signed under, a revoked certificate.
fn check_not_service_certificate(rec: &crate::store::CertRecord) -> Result<(), ServiceError> {
    if matches!(rec.profile.as_str(), "api-server" | "trust-update-signer") {
        return Err(ServiceError::invalid(
            "service-certificate",
            format!(
                "serial {} is meterpki's own {} certificate, which it keeps using: revoking it would leave the server presenting (or updates signed under) a revoked certificate. Replacing a service identity is not offered yet",
                rec.serial_hex(),
                rec.profile
            ),
        ));
    }
    Ok(())
}

/// A keyCompromise revocation must reach the key's active certificate. After a
/// re-certification (`supplier recertify`, `meter reissue`) the same key has an earlier,
/// superseded certificate and a newer active one: revoking only the earlier one would leave
/// the compromised key active (and installed in meters), so it is refused unless the active
/// one is revoked in the same request (`also`).
///
/// `supplier revoke-key` passes `any_reason`: it removes the key from every meter, which must
/// not happen while another certificate of the key stays active.
pub(super) fn check_key_compromise_reaches_active(
    store: &dyn crate::store::Store,
    rec: &crate::store::CertRecord,
    (reason, any_reason): (Reason, bool),
    also: &[Vec<u8>],
) -> Result<(), ServiceError> {
    if reason != Reason::KeyCompromise && !any_reason {
        return Ok(());
    }
    if let Some(active) = store.active_cert(&rec.subject_id, &rec.profile)? {
        if active.key_hash == rec.key_hash
            && active.serial != rec.serial
            && !also.contains(&active.serial)
        {
            return Err(ServiceError::invalid(
                "serial",
                format!(
                    "serial {} was certified again as {} (the same key, a newer CA generation): revoke {}, the key's active certificate, for {} (the earlier one is revoked as superseded)",
                    rec.serial_hex(),
                    active.serial_hex(),
                    active.serial_hex(),
                    reason.name()
                ),
            ));
        }
    }
    Ok(())
}
