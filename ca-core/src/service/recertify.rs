//! Supplier re-certification: after an Organisation CA renewal, or a compromise of its earlier
//! generation, every active supplier key is certified again by the current generation and every
//! meter gets the update that replaces the supplier's certificates (docs/lifecycle.md §5).
//!
//! Per supplier, one write: the new certificates (the same keys, the earlier certificates
//! superseded by the store's re-certification rule) and a journal naming both serial lists,
//! with a `supplier.recertify` audit record. Then the meters of the supplier are updated chunk
//! by chunk, as a rotation's are. A re-run after a crash resumes the journal of the current
//! Organisation CA generation; a supplier whose certificates all come from it is left alone.

use der::Decode;
use serde::Serialize;
use serde_json::json;

use super::suppliers::ChurnReport;
use super::{authorize, unix_now, Action, Actor, Progress, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::churn::{Churn, UpdateSink};
use crate::issue::{Request, Subject};
use crate::model::{Eui64, OpKind, OpRecord, OpState, Supplier, SupplierState};
use crate::store::{CertRecord, Txn};
use crate::CaKind;

/// What `supplier recertify` did.
#[derive(Clone, Debug, Serialize)]
pub struct RecertifyReport {
    /// The Organisation CA generation the keys are certified by.
    pub organisation_generation: u32,
    /// One report per supplier whose meters were updated (or whose journal was running).
    pub operations: Vec<ChurnReport>,
    /// Journals closed without updating every meter, and why: `{"operation", "why"}`.
    pub closed: Vec<serde_json::Value>,
    /// Suppliers that could not be re-certified: `{"supplier", "code", "detail", "client"}`;
    /// the others went on.
    pub failed: Vec<serde_json::Value>,
}

impl Service {
    /// Re-certifies the active keys of `only` (or of every active supplier) under the current
    /// Organisation CA generation, and updates their meters. A supplier that fails is reported
    /// and the others go on.
    pub fn recertify_suppliers(
        &self,
        actor: &Actor,
        only: Option<&Eui64>,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &dyn Progress,
    ) -> Result<RecertifyReport, ServiceError> {
        authorize(actor, Action::Administer)?;
        if !self.has_ca(CaKind::Organisation) {
            return Err(ServiceError::invalid(
                "no-ca",
                "there is no Organisation CA: nothing to re-certify",
            ));
        }
        let store = self.store()?;
        let suppliers: Vec<Supplier> = match only {
            Some(id) => {
                let Some(s) = store.supplier(&id.to_string())? else {
                    return Err(ServiceError::invalid(
                        "supplier-unknown",
                        format!("--supplier: supplier {id} is not registered"),
                    ));
                };
                if s.state != SupplierState::Active {
                    return Err(ServiceError::invalid(
                        "supplier-inactive",
                        format!(
                            "--supplier: supplier {id} ({}) is {}: it holds no key in meters to re-certify",
                            s.name, s.state
                        ),
                    ));
                }
                vec![s]
            }
            None => store
                .suppliers()?
                .into_iter()
                .filter(|s| s.state == SupplierState::Active)
                .collect(),
        };
        let generation = self.current_id(CaKind::Organisation).generation;
        // The churn engine certifies the trust-update signer again first if an earlier
        // generation issued it.
        let churn = self.churn(actor)?;
        let mut report = RecertifyReport {
            organisation_generation: generation,
            operations: Vec::new(),
            closed: Vec::new(),
            failed: Vec::new(),
        };
        for s in suppliers {
            let one = self.recertify_one(actor, &churn, &s, generation, &mut report.closed);
            let op = match one {
                Ok(Some(op)) => op,
                Ok(None) => continue,
                Err(e) => {
                    report.failed.push(failure(&s.id, &e));
                    continue;
                }
            };
            let extra = json!({"organisation_generation": generation, "superseded": op.remove, "new": op.add});
            // Only the CRL shards that list the superseded certificates (and the full CRL),
            // not every shard once per supplier.
            let shards = match churn.certs_by_serial(&op.remove) {
                Ok(old) => old.iter().map(|r| (r.issuer_id(), r.shard)).collect(),
                Err(e) => {
                    report.failed.push(failure(&s.id, &e.into()));
                    continue;
                }
            };
            match self.finish_op(
                actor,
                &churn,
                op,
                chunk,
                sink,
                progress,
                (extra, Some(&shards)),
            ) {
                Ok(r) => report.operations.push(r),
                Err(e) => report.failed.push(failure(&s.id, &e)),
            }
        }
        Ok(report)
    }

    /// The journal to run for supplier `s`: the running one of this generation, or a new one
    /// (its certificates issued); `None` when there is nothing to do.
    fn recertify_one(
        &self,
        actor: &Actor,
        churn: &Churn,
        s: &Supplier,
        generation: u32,
        closed: &mut Vec<serde_json::Value>,
    ) -> Result<Option<OpRecord>, ServiceError> {
        // A journal of an earlier generation still running is overtaken by this one: its
        // meters' keys are removed by key and the current certificates added, whichever
        // certificate a meter holds now.
        for g in 2..generation {
            let id = op_id(&s.id, g);
            if let Some(mut old) = churn.op(&id)?.filter(|o| !o.is_complete()) {
                let why = format!("overtaken by generation {generation}'s re-certification, which updates every meter of the supplier");
                churn.close(&mut old, &why)?;
                closed.push(json!({"operation": id, "why": why}));
            }
        }
        let id = op_id(&s.id, generation);
        match churn.op(&id)? {
            Some(op) if op.is_complete() => Ok(None),
            Some(op) => self.narrow(actor, churn, op, closed),
            None => self.recertify_keys(actor, churn, s, &id, generation),
        }
    }

    /// A running journal, without the certificates it installs that were revoked since it
    /// started by a change whose own journal updates every meter (a rotation, a key
    /// revocation); closed when none is left. A certificate revoked without such a journal is
    /// refused: its key would stay in the meters.
    fn narrow(
        &self,
        actor: &Actor,
        churn: &Churn,
        mut op: OpRecord,
        closed: &mut Vec<serde_json::Value>,
    ) -> Result<Option<OpRecord>, ServiceError> {
        let store = self.store()?;
        let adds = churn.certs_by_serial(&op.add)?;
        if adds.len() != op.remove.len() {
            return Err(ServiceError::Internal(format!(
                "journal {} pairs {} certificates with {} earlier ones",
                op.id,
                adds.len(),
                op.remove.len()
            )));
        }
        let (mut remove, mut add, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        for (rec, old) in adds.iter().zip(&op.remove) {
            let Some(r) = store.revocation(&rec.serial)? else {
                remove.push(old.clone());
                add.push(rec.serial_hex());
                continue;
            };
            match self.journal_covering(churn, rec)? {
                Some(by) => dropped.push(format!("{} ({}, by {by})", rec.serial_hex(), r.reason.name())),
                None => {
                    return Err(ServiceError::conflict(
                        "anchor-revoked",
                        format!(
                            "journal {}: certificate {} it installs in meters was revoked ({}) without an operation that updates the meters; remove the key from them with `meterpki supplier revoke-key --serial {} --reason {}`, then run this again",
                            op.id,
                            rec.serial_hex(),
                            r.reason.name(),
                            rec.serial_hex(),
                            r.reason.name()
                        ),
                    ))
                }
            }
        }
        if dropped.is_empty() {
            return Ok(Some(op));
        }
        let why = format!(
            "later changes replaced {} in every meter",
            dropped.join(", ")
        );
        if add.is_empty() {
            churn.close(&mut op, &why)?;
            closed.push(json!({"operation": op.id, "why": why}));
            return Ok(None);
        }
        op.remove = remove;
        op.add = add;
        self.audit()?.commit(
            Txn::new().with(crate::store::Op::PutOperation(op.clone())),
            |_| {
                Some(AuditEntry::new(
                    "supplier.recertify.narrowed",
                    actor.name(),
                    json!({"operation": op.id, "why": why, "superseded": op.remove, "new": op.add}),
                ))
            },
        )?;
        closed.push(json!({"operation": op.id, "why": why, "narrowed": true}));
        Ok(Some(op))
    }

    /// The journal that updates every meter for a revoked supplier certificate: its rotation
    /// (`replaced_by` names the new certificate, whose key names the journal) or its key
    /// revocation.
    fn journal_covering(
        &self,
        churn: &Churn,
        rec: &CertRecord,
    ) -> Result<Option<String>, ServiceError> {
        let revoke_key = format!("revoke-key:{}", rec.serial_hex());
        if churn.op(&revoke_key)?.is_some() {
            return Ok(Some(revoke_key));
        }
        if let Some(by) = &rec.replaced_by {
            if let Some(new) = self.store()?.cert(by)? {
                let rotate = format!(
                    "rotate:{}:{}:{}",
                    rec.subject_id,
                    rec.profile,
                    hex::encode(&new.key_hash[..8])
                );
                if churn.op(&rotate)?.is_some() {
                    return Ok(Some(rotate));
                }
            }
        }
        Ok(None)
    }

    /// One supplier's new certificates and journal (`op_id`), in one write; `None` when every
    /// active certificate of the supplier already comes from `generation`.
    fn recertify_keys(
        &self,
        actor: &Actor,
        churn: &Churn,
        s: &Supplier,
        op_id: &str,
        generation: u32,
    ) -> Result<Option<OpRecord>, ServiceError> {
        let old: Vec<CertRecord> = churn
            .active_certs(&s.id)?
            .into_iter()
            .filter(|r| r.issuer_generation < generation)
            .collect();
        if old.is_empty() {
            return Ok(None);
        }
        let engine = self.engine()?;
        let entity_id: Eui64 =
            s.id.parse()
                .map_err(|e| ServiceError::Internal(format!("stored supplier {}: {e}", s.id)))?;
        let mut txn = Txn::new();
        let mut plans = Vec::new();
        let mut new = Vec::new();
        for rec in &old {
            let cert = x509_cert::Certificate::from_der(&rec.der).map_err(|e| {
                ServiceError::Internal(format!("stored certificate {}: {e}", rec.serial_hex()))
            })?;
            let profile = engine
                .profiles()
                .get(&rec.profile)
                .cloned()
                .ok_or_else(|| {
                    ServiceError::Internal(format!(
                    "supplier {}'s certificate {} names profile {}, which is no longer configured",
                    s.id,
                    rec.serial_hex(),
                    rec.profile
                ))
                })?;
            // The key was proven by the CSR of its first enrolment; the store's record of it is
            // what is certified again (RFC 4210 §4.4: a CA key change re-certifies keys).
            let request = Request {
                profile,
                subject: Subject::Party {
                    entity_id,
                    name: s.name.clone(),
                },
                spki: cert.tbs_certificate.subject_public_key_info,
                key_hash: rec.key_hash,
                replace: false,
                bare: false,
                recertify: true,
            };
            let signed = engine.sign_request(request);
            match signed.items().next() {
                Some(Ok((r, false))) => new.push(r.serial_hex()),
                Some(Ok((r, true))) => {
                    return Err(ServiceError::conflict(
                        "conflict",
                        format!("supplier {}'s {} key already has certificate {} from the issuing generation (a renewal or another run meanwhile); nothing was re-certified: run the command again", s.id, rec.profile, r.serial_hex()),
                    ))
                }
                Some(Err(e)) => return Err(ServiceError::Issue(e.clone())),
                None => return Err(ServiceError::Internal("nothing was signed".into())),
            }
            plans.push(signed.into_txn(&mut txn, true));
        }
        let op = OpRecord {
            id: op_id.to_string(),
            kind: OpKind::Recertify,
            from: s.id.clone(),
            to: s.id.clone(),
            remove: old.iter().map(CertRecord::serial_hex).collect(),
            add: new,
            state: OpState::Running,
            started_at: unix_now(),
            completed_at: None,
        };
        txn.push(crate::store::Op::PutOperation(op.clone()));
        let (applied, _) = self.audit()?.commit(txn, |applied| {
            applied.written.then(|| {
                AuditEntry::new(
                    "supplier.recertify",
                    actor.name(),
                    json!({"supplier": s.id, "organisation_generation": generation, "superseded": op.remove, "new": op.add, "operation": op.id}),
                )
            })
        })?;
        let results: Vec<_> = plans
            .into_iter()
            .filter_map(|plan| plan.results(&applied).into_iter().next())
            .collect();
        if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
            return Err(ServiceError::Issue(e.clone()));
        }
        let stored = results.len() == op.add.len()
            && results.iter().zip(&op.add).all(
                |(r, serial)| matches!(r, Ok(o) if !o.existing && &o.record.serial_hex() == serial),
            );
        if !applied.written || !stored {
            return Err(ServiceError::conflict(
                "conflict",
                format!("supplier {}'s keys changed meanwhile; nothing was re-certified: run the command again", s.id),
            ));
        }
        Ok(Some(op))
    }
}

/// The journal of supplier `supplier`'s re-certification by Organisation CA generation `g`.
fn op_id(supplier: &str, g: u32) -> String {
    format!("recertify:{supplier}:organisation-g{g}")
}

/// A supplier that could not be re-certified: `{"supplier", "code", "detail", "client"}`
/// (`client`: the request or the state is wrong, rather than meterpki or its HSM or store).
fn failure(supplier: &str, e: &ServiceError) -> serde_json::Value {
    let client = !matches!(
        e.class(),
        super::ErrorClass::Internal | super::ErrorClass::Unavailable
    );
    json!({"supplier": supplier, "code": e.code(), "detail": e.to_string(), "client": client})
}
