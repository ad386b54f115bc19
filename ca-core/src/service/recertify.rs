//! Supplier re-certification: after an Organisation CA renewal, or a compromise of its earlier
//! generation, every active supplier key is certified again by the current generation and every
//! meter gets the update that replaces the supplier's certificates (docs/lifecycle.md §6).
//!
//! Per supplier, one write: the new certificates (the same keys, the earlier certificates
//! superseded by the store's re-certification rule) and a journal naming both serial lists,
//! with a `supplier.recertify` audit record. Then the meters of the supplier are updated chunk
//! by chunk, as a rotation's are. A re-run after a crash resumes the journal of the current
//! Organisation CA generation; a supplier whose certificates all come from it is left alone.

use der::Decode;
use serde_json::json;

use super::suppliers::ChurnReport;
use super::{authorize, unix_now, Action, Actor, Progress, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::churn::{Churn, UpdateSink};
use crate::issue::{Request, Subject};
use crate::model::{Eui64, OpKind, OpRecord, OpState, Supplier, SupplierState};
use crate::store::{CertRecord, Txn};
use crate::CaKind;

impl Service {
    /// Re-certifies the active keys of `only` (or of every active supplier) under the current
    /// Organisation CA generation, and updates their meters. Returns one report per supplier
    /// that had certificates from an earlier generation, or whose journal was still running.
    pub fn recertify_suppliers(
        &self,
        actor: &Actor,
        only: Option<&Eui64>,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &dyn Progress,
    ) -> Result<Vec<ChurnReport>, ServiceError> {
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
                let s = crate::churn::registered(store.as_ref(), &id.to_string())?;
                if s.state != SupplierState::Active {
                    return Err(ServiceError::invalid(
                        "supplier",
                        format!(
                            "--supplier {id} ({}) is {}: it holds no key in meters to re-certify",
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
        let mut reports = Vec::new();
        for s in suppliers {
            let op_id = format!("recertify:{}:organisation-g{generation}", s.id);
            let op = match churn.op(&op_id)? {
                Some(op) if op.is_complete() => continue,
                Some(op) => op,
                None => match self.recertify_keys(actor, &churn, &s, &op_id, generation)? {
                    Some(op) => op,
                    None => continue,
                },
            };
            let extra = json!({"organisation_generation": generation, "superseded": op.remove, "new": op.add});
            reports.push(self.finish_op(actor, &churn, op, chunk, sink, progress, extra)?);
        }
        Ok(reports)
    }

    /// One supplier's new certificates and journal, in one write; `None` when every active
    /// certificate of the supplier already comes from `generation`.
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
                Some(Ok((r, _))) => new.push(r.serial_hex()),
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
        for (plan, serial) in plans.into_iter().zip(&op.add) {
            match plan.results(&applied).into_iter().next() {
                Some(Ok(o)) if applied.written && !o.existing && &o.record.serial_hex() == serial => {}
                Some(Err(e)) => return Err(ServiceError::Issue(e)),
                _ => {
                    return Err(ServiceError::conflict(
                        "conflict",
                        format!("supplier {}'s keys changed meanwhile; nothing was re-certified: run the command again", s.id),
                    ))
                }
            }
        }
        Ok(Some(op))
    }
}
