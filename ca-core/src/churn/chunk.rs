//! One chunk of meters: sequence numbers reserved, updates signed and verified in parallel,
//! written and synced, then the moves stored with the chunk's audit record.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::json;

use super::{Churn, ChurnError, Plan, UpdateSink, SEQ_COUNTER};
use crate::audit::AuditEntry;
use crate::store::{MeterMove, MoveOutcome, Op, Txn, UpdateMark};

/// One meter done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Done {
    /// The meter.
    pub device: String,
    /// Supplier before.
    pub from: Option<String>,
    /// Supplier after.
    pub to: String,
    /// The update's sequence number (none for an assignment made without updates).
    pub seq: Option<u64>,
}

/// A chunk's updates, signed and verified, not yet written or stored.
#[derive(Debug, Default)]
pub struct SignedChunk {
    seqs: Vec<u64>,
    ders: Vec<Vec<u8>>,
}

/// A chunk names each meter once: two moves of one meter in one write would be planned from
/// the same state.
fn check_distinct(plans: &[Plan]) -> Result<(), ChurnError> {
    let mut seen = HashSet::new();
    match plans.iter().find(|p| !seen.insert(p.device)) {
        Some(p) => Err(ChurnError::Internal(format!(
            "device {} planned twice in one chunk",
            p.device
        ))),
        None => Ok(()),
    }
}

impl Churn {
    /// Runs one chunk of plans: sequence numbers reserved, updates signed in parallel and
    /// written to `sink` (synced), then the moves stored in one write with an `event` audit
    /// record. With no sink (first assignments only) nothing is signed. Results in order.
    pub fn execute(
        &self,
        plans: &[Plan],
        op: &str,
        event: &str,
        sink: Option<&mut dyn UpdateSink>,
    ) -> Result<Vec<Result<Done, ChurnError>>, ChurnError> {
        let signed = match sink.is_some() {
            true => Some(self.sign_chunk(plans)?),
            false => {
                check_distinct(plans)?;
                None
            }
        };
        self.commit_chunk(plans, signed, op, event, sink)
    }

    /// First half of [`Churn::execute`]: sequence numbers reserved (durably: a chunk that fails
    /// later skips its numbers, never reuses them), then one update built, signed and verified
    /// per plan.
    pub fn sign_chunk(&self, plans: &[Plan]) -> Result<SignedChunk, ChurnError> {
        check_distinct(plans)?;
        if plans.is_empty() {
            return Ok(SignedChunk::default());
        }
        let first = self.store.reserve(SEQ_COUNTER, plans.len() as u64)?;
        let seqs: Vec<u64> = (0..plans.len() as u64).map(|i| first + i).collect();
        let ders = self.sign_all(plans, &seqs)?;
        Ok(SignedChunk { seqs, ders })
    }

    /// Second half: the updates written to `sink` and synced, then the moves stored in one
    /// write with the chunk's audit record (`event`). Only then are the meters reported done.
    pub fn commit_chunk(
        &self,
        plans: &[Plan],
        signed: Option<SignedChunk>,
        op: &str,
        event: &str,
        mut sink: Option<&mut dyn UpdateSink>,
    ) -> Result<Vec<Result<Done, ChurnError>>, ChurnError> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = match (signed, sink.as_mut()) {
            (Some(signed), Some(sink)) => {
                if signed.seqs.len() != plans.len() {
                    return Err(ChurnError::Internal(
                        "signed chunk does not match its plans".into(),
                    ));
                }
                for ((p, seq), der) in plans.iter().zip(&signed.seqs).zip(&signed.ders) {
                    sink.put(&p.device, *seq, der)?;
                }
                sink.sync()?;
                crate::failpoint("churn.before-commit");
                Some(signed.seqs)
            }
            (None, None) => None,
            _ => return Err(ChurnError::Internal("updates without a sink".into())),
        };
        let moves: Vec<MeterMove> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| MeterMove {
                device: p.device.to_string(),
                from: p.from.clone(),
                to: p.to.clone(),
                update: seqs.as_ref().map(|s| UpdateMark {
                    seq: s[i],
                    op: op.to_string(),
                }),
            })
            .collect();
        let location = sink.as_ref().map(|s| s.location());
        let committed = self
            .audit
            .commit(Txn::new().with(Op::MoveMeters(moves)), |applied| {
                let outcomes = applied.moved(0).unwrap_or_default();
                let count = |f: fn(&MoveOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
                Some(AuditEntry::new(
                    event,
                    &self.actor,
                    json!({
                        "operation": op,
                        "meters": plans.len(),
                        "moved": count(|o| matches!(o, MoveOutcome::Applied)),
                        "stale": count(|o| matches!(o, MoveOutcome::Stale(_))),
                        "already_updated": count(|o| matches!(o, MoveOutcome::AlreadyDone)),
                        "seq_first": seqs.as_ref().and_then(|s| s.first()),
                        "seq_last": seqs.as_ref().and_then(|s| s.last()),
                        "updates": location,
                    }),
                ))
            });
        let applied = match committed {
            Ok((applied, _)) => applied,
            Err(e) => {
                // Nothing was stored: withdraw the updates written for this chunk.
                if let Some(sink) = sink.as_mut() {
                    for p in plans {
                        sink.discard(&p.device);
                    }
                }
                return Err(e.into());
            }
        };
        let outcomes = applied.moved(0).unwrap_or_default();
        if outcomes.len() != plans.len() {
            return Err(ChurnError::Internal(
                "the store answered fewer moves than it was given".into(),
            ));
        }
        let mut out = Vec::with_capacity(plans.len());
        for (i, (p, o)) in plans.iter().zip(outcomes).enumerate() {
            out.push(match o {
                MoveOutcome::Applied => Ok(Done {
                    device: p.device.to_string(),
                    from: p.from.clone(),
                    to: p.to.clone(),
                    seq: seqs.as_ref().map(|s| s[i]),
                }),
                MoveOutcome::Stale(cur) => {
                    if let Some(sink) = sink.as_mut() {
                        sink.discard(&p.device);
                    }
                    Err(ChurnError::refused(
                        "meter-changed",
                        format!(
                            "device_id {}: its supplier changed meanwhile (now {}); its update was withdrawn",
                            p.device,
                            cur.as_deref().unwrap_or("none")
                        ),
                    ))
                }
                MoveOutcome::AlreadyDone => Err(ChurnError::refused(
                    "already-updated",
                    format!("device_id {} already has this operation's update", p.device),
                )),
            });
        }
        Ok(out)
    }

    /// Builds and signs one update per plan, `workers` threads in parallel (the HSM session pool
    /// serves them); each signature is verified before it leaves [`UpdateSigner::sign`].
    ///
    /// [`UpdateSigner::sign`]: crate::tamp::UpdateSigner::sign
    fn sign_all(&self, plans: &[Plan], seqs: &[u64]) -> Result<Vec<Vec<u8>>, ChurnError> {
        let jobs: Vec<(&Plan, u64)> = plans.iter().zip(seqs.iter().copied()).collect();
        crate::par::par_map(&jobs, self.workers, |(p, seq)| {
            let content = p.updates.encode_for(p.hw_type, &p.device, *seq)?;
            Ok(self.signer.sign_encoded(&content)?)
        })
        .into_iter()
        .collect()
    }
}
