//! Journaled operations over every meter of a supplier: run chunk by chunk, resumable.

use serde_json::json;

use super::{unix_now, Churn, ChurnError, Plan, SignedChunk, UpdateSink};
use crate::audit::AuditEntry;
use crate::model::{Eui64, OpRecord, OpState};
use crate::store::{Op, Txn};

impl Churn {
    /// The journal of an operation, if one was started.
    pub fn op(&self, id: &str) -> Result<Option<OpRecord>, ChurnError> {
        Ok(self.store.operation(id)?)
    }

    /// How many meters an operation still has to update (for a progress bar).
    pub fn remaining(&self, op: &OpRecord) -> Result<u64, ChurnError> {
        if op.kind.moves_meters() {
            return Ok(self.store.count_meters_of_supplier(&op.from)?);
        }
        let mut n = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .meters_of_supplier(&op.from, after.as_deref(), 10_000)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for d in &page {
                if self.store.meter_update(d)?.map(|u| u.op).as_deref() != Some(op.id.as_str()) {
                    n += 1;
                }
            }
            after = Some(last);
        }
        Ok(n)
    }

    /// Runs a journaled operation over every meter it still has to update, in chunks of
    /// `chunk` (each stored with an `event` audit record), calling `progress` with the meters
    /// done after each chunk. Returns the meters updated by this run and the refusals (meters
    /// that could not be planned).
    pub fn run_op(
        &self,
        op: &OpRecord,
        chunk: usize,
        event: &str,
        sink: &mut dyn UpdateSink,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(u64, Vec<(String, ChurnError)>), ChurnError> {
        let add = self.certs_by_serial(&op.add)?;
        // A key revoked since the operation started is never installed in a meter.
        for rec in &add {
            if let Some(r) = self.store.revocation(&rec.serial)? {
                return Err(ChurnError::refused(
                    "anchor-revoked",
                    format!(
                        "operation {} installs {}'s key {} in meters, but that certificate was revoked ({}) at {} (Unix time), after the operation started; no meter was updated by this run",
                        op.id,
                        rec.subject_id,
                        rec.serial_hex(),
                        r.reason.name(),
                        r.revoked_at
                    ),
                ));
            }
        }
        let updates = Churn::prepare(&self.certs_by_serial(&op.remove)?, &add)?;
        let moving = op.kind.moves_meters();
        let mut refused = Vec::new();
        // Two stages: this thread plans and signs chunk k+1 while the committer writes chunk k's
        // updates, syncs them and stores its moves, in chunk order.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<Plan>, SignedChunk)>(1);
        let (done, commit_refused) = std::thread::scope(|scope| {
            let committer = scope.spawn(
                move || -> Result<(u64, Vec<(String, ChurnError)>), ChurnError> {
                    let mut done = 0u64;
                    let mut refused = Vec::new();
                    for (plans, signed) in rx {
                        let results = self.commit_chunk(
                            &plans,
                            Some(signed),
                            &op.id,
                            event,
                            Some(&mut *sink),
                        )?;
                        for (p, r) in plans.iter().zip(results) {
                            match r {
                                Ok(_) => done += 1,
                                Err(e) => refused.push((p.device.to_string(), e)),
                            }
                        }
                        progress(done);
                    }
                    Ok((done, refused))
                },
            );
            let produced = (|| -> Result<(), ChurnError> {
                let mut after: Option<String> = None;
                loop {
                    // The cursor steps over meters already planned (moved ones leave A's index
                    // behind it) and over meters that could not be planned.
                    let page = self
                        .store
                        .meters_of_supplier(&op.from, after.as_deref(), chunk)?;
                    if page.is_empty() {
                        return Ok(());
                    }
                    after = page.last().cloned();
                    let mut plans = Vec::with_capacity(page.len());
                    for d in &page {
                        if !moving
                            && self.store.meter_update(d)?.map(|u| u.op).as_deref()
                                == Some(op.id.as_str())
                        {
                            continue;
                        }
                        let device: Eui64 = d
                            .parse()
                            .map_err(|e| ChurnError::Internal(format!("stored meter {d}: {e}")))?;
                        match super::plan::meter_hw_type(self.store.as_ref(), &device) {
                            Ok(hw_type) => plans.push(Plan {
                                device,
                                hw_type,
                                from: Some(op.from.clone()),
                                to: op.to.clone(),
                                updates: updates.clone(),
                            }),
                            Err(e) => refused.push((d.clone(), e)),
                        }
                    }
                    let signed = self.sign_chunk(&plans)?;
                    if tx.send((plans, signed)).is_err() {
                        // The committer stopped on an error; it is reported below.
                        return Ok(());
                    }
                }
            })();
            drop(tx);
            let committed = committer
                .join()
                .map_err(|_| ChurnError::Internal("the committer thread panicked".into()))??;
            produced.map(|()| committed)
        })?;
        refused.extend(commit_refused);
        Ok((done, refused))
    }

    /// Closes an operation that did not update every meter because later operations' updates
    /// reach the rest, with a `supplier.<kind>.closed` audit record saying `why`.
    pub fn close(&self, op: &mut OpRecord, why: &str) -> Result<(), ChurnError> {
        let mut closed = op.clone();
        closed.state = OpState::Closed;
        closed.completed_at = Some(unix_now());
        self.audit
            .commit(Txn::new().with(Op::PutOperation(closed.clone())), |_| {
                Some(AuditEntry::new(
                    format!("supplier.{}.closed", op.kind),
                    &self.actor,
                    json!({"operation": op.id, "from": op.from, "why": why}),
                ))
            })?;
        *op = closed;
        Ok(())
    }

    /// Marks an operation complete, with an audit record saying so.
    pub fn complete(&self, op: &mut OpRecord) -> Result<(), ChurnError> {
        let mut done = op.clone();
        done.state = OpState::Complete;
        done.completed_at = Some(unix_now());
        self.audit
            .commit(Txn::new().with(Op::PutOperation(done.clone())), |_| {
                Some(AuditEntry::new(
                    format!("supplier.{}.complete", op.kind),
                    &self.actor,
                    json!({"operation": op.id, "from": op.from, "to": op.to}),
                ))
            })?;
        *op = done;
        Ok(())
    }
}
