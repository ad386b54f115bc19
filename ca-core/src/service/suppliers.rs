//! Suppliers: the registry, key enrolment, and the operations that change the keys in their
//! meters — rotation, key revocation, takeover and exit — each journaled so that a re-run after
//! a crash completes it.

use std::collections::BTreeSet;
use std::sync::Arc;

use policies::ProfileKind;
use serde::Serialize;
use serde_json::json;

use super::{authorize, unix_now, Action, Actor, Progress, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::churn::{registered, Churn, ChurnError, UpdateSink};
use crate::issue::{parse_request, AccountLimits, Outcome, RequestItem};
use crate::model::{
    check_supplier_name, Eui64, OpKind, OpRecord, OpState, Reason, Revocation, Supplier,
    SupplierState,
};
use crate::store::{CertRecord, Op, Revoked, Txn};
use crate::CaKind;

/// One supplier as `supplier list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SupplierRow {
    /// The registry entry.
    #[serde(flatten)]
    pub supplier: Supplier,
    /// Its active certificates: `{"profile", "serial"}`.
    pub active_keys: Vec<serde_json::Value>,
    /// Meters it serves.
    pub meters: u64,
}

/// What a journaled operation did in this run.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// The journal's ID.
    pub operation: String,
    /// What it is.
    pub kind: OpKind,
    /// The supplier whose meters were updated.
    pub from: String,
    /// The supplier serving them after.
    pub to: String,
    /// Where it stands.
    pub state: OpState,
    /// When it was completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// Meters updated by this run.
    pub meters_updated: u64,
    /// Meters that could not be updated: `{"device_id", "code", "detail"}`.
    pub refused: Vec<serde_json::Value>,
    /// Where the updates went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates: Option<String>,
    /// True when the operation had been completed before: nothing was done.
    #[serde(skip)]
    pub already_complete: bool,
    /// What the operation adds (serials, counts).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn extra(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

impl Service {
    /// The names of the supplier profiles (the keys a supplier can hold in meters).
    pub fn supplier_profiles(&self) -> Result<Vec<String>, ServiceError> {
        Ok(self
            .profiles()?
            .of_kind(ProfileKind::Supplier)
            .map(|p| p.name().to_string())
            .collect())
    }

    /// The churn engine, acting as `actor`.
    pub(crate) fn churn(&self, actor: &Actor) -> Result<Churn, ServiceError> {
        let signer = self.update_signer(actor)?;
        Ok(Churn::new(
            self.audit()?,
            Arc::new(signer),
            self.supplier_profiles()?,
            self.config.hsm.sessions,
            actor.name(),
        )?)
    }

    /// Registers a supplier (active from now on). Registering it again with the same name is
    /// harmless (`true`: it existed).
    pub fn register_supplier(
        &self,
        actor: &Actor,
        id: &Eui64,
        name: &str,
    ) -> Result<(Supplier, bool), ServiceError> {
        authorize(actor, Action::Administer)?;
        check_supplier_name(name).map_err(|e| ServiceError::invalid("name", format!("--{e}")))?;
        if let Some(s) = self.store()?.supplier(&id.to_string())? {
            if s.name == name && s.state == SupplierState::Active {
                return Ok((s, true));
            }
            return Err(ServiceError::conflict(
                "supplier-exists",
                format!(
                    "--id: supplier {id} is already registered as {:?} ({})",
                    s.name, s.state
                ),
            ));
        }
        let s = Supplier {
            id: id.to_string(),
            name: name.into(),
            state: SupplierState::Active,
            registered_at: unix_now(),
            ended_at: None,
            successor: None,
        };
        self.audit()?
            .commit(Txn::new().with(Op::InsertSupplier(s.clone())), |_| {
                Some(AuditEntry::new(
                    "supplier.register",
                    actor.name(),
                    json!({"supplier": s.id, "name": s.name}),
                ))
            })?;
        Ok((s, false))
    }

    /// Every registered supplier with its active keys and meter count.
    pub fn suppliers(&self, actor: &Actor) -> Result<Vec<SupplierRow>, ServiceError> {
        authorize(actor, Action::Administer)?;
        let store = self.store()?;
        let profiles = self.supplier_profiles()?;
        let mut rows = Vec::new();
        for s in store.suppliers()? {
            let mut keys = Vec::new();
            for p in &profiles {
                if let Some(r) = store.active_cert(&s.id, p)? {
                    keys.push(json!({"profile": p, "serial": r.serial_hex()}));
                }
            }
            let meters = store.count_meters_of_supplier(&s.id)?;
            rows.push(SupplierRow {
                supplier: s,
                active_keys: keys,
                meters,
            });
        }
        Ok(rows)
    }

    fn enrol_item(
        &self,
        actor: &Actor,
        id: &Eui64,
        profile: &str,
        csr: String,
        name: Option<String>,
        replace: bool,
    ) -> Result<RequestItem, ServiceError> {
        let kind = self.profiles()?.get(profile).map(|p| p.kind());
        authorize(
            actor,
            Action::Enrol {
                supplier: id,
                profile,
                kind,
            },
        )?;
        if kind != Some(ProfileKind::Supplier) {
            return Err(ServiceError::invalid(
                "profile",
                format!("--profile {profile:?} is not a supplier profile (supplier-signing, supplier-key-agreement)"),
            ));
        }
        Ok(RequestItem {
            profile: profile.into(),
            device_id: None,
            entity_id: Some(id.to_string()),
            name,
            csr: Some(csr),
            public_key: None,
            replace,
            recertify: false,
        })
    }

    /// Issues a supplier certificate from its CSR (signing or key agreement): an operator for
    /// any active supplier, a supplier account for itself. The same key again answers the
    /// certificate already issued.
    pub fn enrol_key(
        &self,
        actor: &Actor,
        id: &Eui64,
        profile: &str,
        csr: String,
        name: Option<String>,
        replace: bool,
    ) -> Result<Outcome, ServiceError> {
        let item = self.enrol_item(actor, id, profile, csr, name, replace)?;
        let engine = self.engine()?;
        Ok(engine.issue(&item, &AccountLimits::default(), &|r| {
            let o = r.first()?.as_ref().ok()?;
            Some(AuditEntry::new(
                "supplier.enrol",
                actor.name(),
                json!({"supplier": o.record.subject_id, "profile": o.record.profile, "serial": o.record.serial_hex(), "existing": o.existing}),
            ))
        })?)
    }

    /// Replaces a supplier key: the new certificate issued, the old one revoked as superseded
    /// and the rotation journaled, in one write; then every meter of the supplier gets the
    /// update that swaps the key. Returns the report and the new certificate.
    #[allow(clippy::too_many_arguments)]
    pub fn rotate_key(
        &self,
        actor: &Actor,
        id: &Eui64,
        profile: &str,
        csr: String,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &dyn Progress,
    ) -> Result<(ChurnReport, CertRecord), ServiceError> {
        authorize(actor, Action::Administer)?;
        let item = self.enrol_item(actor, id, profile, csr, None, true)?;
        let engine = self.engine()?;
        let request = parse_request(&item, engine.profiles())?;
        let supplier = id.to_string();
        let churn = self.churn(actor)?;
        let store = self.store()?;
        // The journal is named after the new key, so a re-run with the same CSR resumes it.
        let op_id = format!(
            "rotate:{supplier}:{profile}:{}",
            hex::encode(&request.key_hash[..8])
        );
        let mut op = match churn.op(&op_id)? {
            Some(op) => op,
            None => {
                let old = store.active_cert(&supplier, profile)?.ok_or_else(|| {
                    ServiceError::invalid(
                        "no-key",
                        format!("supplier {supplier} has no active {profile} certificate to rotate: use `meterpki supplier enrol`"),
                    )
                })?;
                if old.key_hash == request.key_hash {
                    return Err(ServiceError::invalid(
                        "same-key",
                        format!(
                            "--csr: this key is already supplier {supplier}'s active {profile} key (serial {}); a rotation needs a new key",
                            old.serial_hex()
                        ),
                    ));
                }
                OpRecord {
                    id: op_id.clone(),
                    kind: OpKind::Rotate,
                    from: supplier.clone(),
                    to: supplier.clone(),
                    remove: vec![old.serial_hex()],
                    add: Vec::new(),
                    state: OpState::Running,
                    started_at: unix_now(),
                    completed_at: None,
                }
            }
        };
        if op.add.is_empty() {
            // The new certificate (the old one is revoked as superseded by the same write) and
            // the journal naming both keys, committed together.
            // The request parsed (and its CSR checked) above, signed as it is.
            let signed = engine.sign_request(request);
            let new = match signed.items().next() {
                Some(Ok((rec, _))) => rec.clone(),
                Some(Err(e)) => return Err(ServiceError::Issue(e.clone())),
                None => return Err(ServiceError::Internal("nothing was signed".into())),
            };
            op.add = vec![new.serial_hex()];
            let mut txn = Txn::new();
            let plan = signed.into_txn(&mut txn, true);
            txn.push(Op::PutOperation(op.clone()));
            let (applied, _) = self.audit()?.commit(txn, |applied| {
                applied.written.then(|| AuditEntry::new(
                    "supplier.rotate",
                    actor.name(),
                    json!({"supplier": supplier, "profile": profile, "old": op.remove, "new": op.add, "operation": op.id}),
                ))
            })?;
            match plan.results(&applied).into_iter().next() {
                Some(Ok(o)) if applied.written && o.record.serial == new.serial => {}
                Some(Err(e)) => return Err(ServiceError::Issue(e)),
                _ => {
                    return Err(ServiceError::conflict(
                        "conflict",
                        "the supplier's key changed meanwhile; nothing was rotated",
                    ))
                }
            }
        }
        let new = churn.certs_by_serial(&op.add)?.remove(0);
        let extra = json!({"new_serial": op.add.first(), "superseded_serial": op.remove.first()});
        let report = self.finish_op(actor, &churn, op, chunk, sink, progress, (extra, None))?;
        Ok((report, new))
    }

    /// Revokes one supplier certificate and journals it, in one write; the Organisation CA's
    /// CRLs republished; every meter of the supplier gets the update that removes the key.
    pub fn revoke_key(
        &self,
        actor: &Actor,
        serial: &[u8],
        reason: Reason,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &dyn Progress,
    ) -> Result<ChurnReport, ServiceError> {
        authorize(actor, Action::Administer)?;
        let store = self.store()?;
        let rec = store.cert(serial)?.ok_or_else(|| {
            ServiceError::invalid(
                "serial",
                format!("--serial: no certificate {}", hex::encode(serial)),
            )
        })?;
        let is_supplier = self
            .profiles()?
            .get(&rec.profile)
            .is_some_and(|p| p.kind() == ProfileKind::Supplier);
        if !is_supplier {
            return Err(ServiceError::invalid(
                "serial",
                format!(
                    "--serial {} is a {} certificate, not a supplier key (use `meterpki revoke`)",
                    rec.serial_hex(),
                    rec.profile
                ),
            ));
        }
        super::revoke::check_key_compromise_reaches_active(
            store.as_ref(),
            &rec,
            (reason, true),
            &[],
        )?;
        let churn = self.churn(actor)?;
        let op_id = format!("revoke-key:{}", rec.serial_hex());
        let existing = churn.op(&op_id)?;
        let new_op = existing.is_none();
        let op = existing.unwrap_or_else(|| OpRecord {
            id: op_id,
            kind: OpKind::RevokeKey,
            from: rec.subject_id.clone(),
            to: rec.subject_id.clone(),
            remove: vec![rec.serial_hex()],
            add: Vec::new(),
            state: OpState::Running,
            started_at: unix_now(),
            completed_at: None,
        });
        let mut txn = Txn::new();
        if new_op {
            txn.push(Op::PutOperation(op.clone()));
        }
        txn.push(Op::Revoke {
            serials: vec![rec.serial.clone()],
            revocation: Revocation {
                reason,
                revoked_at: unix_now(),
                invalidity_date: None,
            },
        });
        let at = txn.ops().len() - 1;
        let (applied, _) = self.audit()?.commit(txn, |applied| {
            let now = matches!(applied.revoked(at), Some([Revoked::Now(_)]));
            // A new journal is always recorded, also for a key revoked before (by `revoke`):
            // the meters' updates it starts are this operation's.
            (now || new_op).then(|| {
                AuditEntry::new(
                    "supplier.revoke-key",
                    actor.name(),
                    json!({"supplier": rec.subject_id, "serial": rec.serial_hex(), "profile": rec.profile, "reason": reason.name(), "operation": op.id, "already_revoked": !now}),
                )
            })
        })?;
        let first_time = matches!(applied.revoked(at), Some([Revoked::Now(_)]));
        let extra = json!({"serial": rec.serial_hex(), "reason": reason.name(), "already_revoked": !first_time});
        self.finish_op(actor, &churn, op, chunk, sink, progress, (extra, None))
    }

    /// Takeover (`kind` = takeover: B takes over A) or exit (A leaves, B is the supplier of last
    /// resort): A marked acquired or exited, every certificate of A revoked
    /// (cessationOfOperation) and the journal written, in one write; the CRLs republished; every
    /// meter of A moved to B with its update. Re-run, it completes an interrupted one.
    #[allow(clippy::too_many_arguments)]
    pub fn end_supplier(
        &self,
        actor: &Actor,
        kind: OpKind,
        from: &Eui64,
        to: &Eui64,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &dyn Progress,
    ) -> Result<ChurnReport, ServiceError> {
        authorize(actor, Action::Administer)?;
        let (field_to, end_state) = match kind {
            OpKind::Takeover => ("--to", SupplierState::Acquired),
            OpKind::Exit => ("--successor", SupplierState::Exited),
            _ => {
                return Err(ServiceError::Internal(format!(
                    "{kind} does not end a supplier"
                )))
            }
        };
        let (from, to) = (from.to_string(), to.to_string());
        let store = self.store()?;
        let op_id = OpRecord::supplier_end_id(kind, &from);
        let existing = store.operation(&op_id)?;
        if let Some(op) = existing.as_ref().filter(|o| o.is_complete() && o.to == to) {
            let op = op.clone();
            return Ok(ChurnReport {
                operation: op.id,
                kind: op.kind,
                from: op.from,
                to: op.to,
                state: op.state,
                completed_at: op.completed_at,
                meters_updated: 0,
                refused: Vec::new(),
                updates: None,
                already_complete: true,
                extra: serde_json::Map::new(),
            });
        }
        if from == to {
            return Err(ChurnError::refused(
                "same-supplier",
                format!("{field_to}: supplier {from} cannot take over its own meters"),
            )
            .into());
        }
        let churn = self.churn(actor)?;
        let mut a = registered(store.as_ref(), &from)?;
        let new_op = existing.is_none();
        // A's supplier certificates: revoked by this write; those unrevoked are the keys the
        // meters lose.
        let a_certs: Vec<CertRecord> = store
            .certs_of_subject(&from)?
            .into_iter()
            .filter(|r| churn.supplier_profiles().contains(&r.profile))
            .collect();
        let op = match existing {
            Some(op) if op.to != to && op.is_complete() => {
                return Err(ChurnError::refused(
                    "supplier-inactive",
                    format!(
                        "--from: supplier {from} ({}) is already {}: its {kind} to {} completed at {} (Unix time); its meters are {}'s now",
                        a.name,
                        a.state,
                        op.to,
                        op.completed_at.unwrap_or(op.started_at),
                        op.to
                    ),
                )
                .into())
            }
            Some(op) if op.to != to => {
                return Err(ChurnError::refused(
                    "operation-running",
                    format!("a {kind} of supplier {from} to {} was started on {}; re-run it with {field_to} {} to complete it", op.to, op.started_at, op.to),
                )
                .into())
            }
            Some(op) => op,
            None => {
                if a.state != SupplierState::Active {
                    return Err(ChurnError::refused(
                        "supplier-inactive",
                        format!("--from: supplier {from} ({}) is already {}", a.name, a.state),
                    )
                    .into());
                }
                // B must be able to serve meters (active, with keys) before A loses them.
                let add = churn.target(&to, field_to)?;
                let mut remove = Vec::new();
                for r in &a_certs {
                    if store.revocation(&r.serial)?.is_none() {
                        remove.push(r.serial_hex());
                    }
                }
                OpRecord {
                    id: op_id,
                    kind,
                    from: from.clone(),
                    to: to.clone(),
                    remove,
                    add: add.iter().map(CertRecord::serial_hex).collect(),
                    state: OpState::Running,
                    started_at: unix_now(),
                    completed_at: None,
                }
            }
        };
        // One write: the journal, A's end, A's certificates revoked (each idempotent, so a
        // re-run repeats it harmlessly).
        let mut txn = Txn::new();
        if new_op {
            txn.push(Op::PutOperation(op.clone()));
        }
        if a.state == SupplierState::Active {
            a.state = end_state;
            a.ended_at = Some(op.started_at);
            a.successor = Some(to.clone());
            txn.push(Op::UpdateSupplier(a));
        }
        txn.push(Op::Revoke {
            serials: a_certs.into_iter().map(|r| r.serial).collect(),
            revocation: Revocation {
                reason: Reason::CessationOfOperation,
                revoked_at: unix_now(),
                invalidity_date: None,
            },
        });
        let at = txn.ops().len() - 1;
        let (applied, _) = self.audit()?.commit(txn, |applied| {
            let now: Vec<String> = applied
                .revoked(at)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| match r {
                    Revoked::Now(rec) => Some(rec.serial_hex()),
                    _ => None,
                })
                .collect();
            Some(AuditEntry::new(
                format!("supplier.{kind}"),
                actor.name(),
                json!({"from": from, "to": to, "operation": op.id, "revoked_now": now, "reason": "cessationOfOperation"}),
            ))
        })?;
        let revoked = applied
            .revoked(at)
            .unwrap_or_default()
            .iter()
            .filter(|r| matches!(r, Revoked::Now(_)))
            .count();
        self.finish_op(
            actor,
            &churn,
            op,
            chunk,
            sink,
            progress,
            (json!({"revoked": revoked}), None),
        )
    }

    /// The end of every journaled operation: the Organisation CA's CRLs republished (its
    /// revocations must be seen at once; only `shards`, and the full CRL, when given), the meters updated unless a run already completed it,
    /// the operation marked complete when no meter was refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_op(
        &self,
        actor: &Actor,
        churn: &Churn,
        mut op: OpRecord,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &dyn Progress,
        (more, shards): (serde_json::Value, Option<&BTreeSet<(crate::IssuerId, u32)>>),
    ) -> Result<ChurnReport, ServiceError> {
        let published = self.publish_crls(actor, Some(CaKind::Organisation), false, shards)?;
        let (done, refused) = if op.is_complete() {
            (0, Vec::new())
        } else {
            let event = format!("supplier.{}.updates", op.kind);
            if progress.wants_total() {
                progress.total(churn.remaining(&op)?);
            }
            churn.run_op(&op, chunk, &event, sink, &mut |n| progress.done(n))?
        };
        if refused.is_empty() && !op.is_complete() {
            churn.complete(&mut op)?;
        }
        let mut extra = extra(more);
        extra.insert("crls_published".into(), json!(published.len()));
        Ok(ChurnReport {
            operation: op.id,
            kind: op.kind,
            from: op.from,
            to: op.to,
            state: op.state,
            completed_at: op.completed_at,
            meters_updated: done,
            refused: refused
                .iter()
                .map(|(d, e)| json!({"device_id": d, "code": e.code().unwrap_or("internal"), "detail": e.to_string()}))
                .collect(),
            updates: Some(sink.location()),
            already_complete: false,
            extra,
        })
    }
}
