//! Issuance: one request, a batch file from a factory line (NDJSON, millions of lines), and an
//! API batch idempotent by (account, request ID).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use serde::Serialize;
use serde_json::json;

use super::{authorize, limits, may_request, Action, Actor, Progress, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::issue::{
    AccountLimits, ErrorCode, IssueError, Outcome, RequestItem, SignedBatch, MAX_BATCH,
};
use crate::store::{BatchItem, BatchRecord, BatchState, Claim, Op, Txn};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One item of a batch's answer: the certificate issued (now or before), or the refusal.
#[derive(Clone, Debug, Serialize)]
pub struct ItemResult {
    /// Position in the request.
    pub index: usize,
    /// Line of the batch file (CLI batches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// `issued` or `rejected`.
    pub status: &'static str,
    /// Serial, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The certificate, base64 DER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Issued before (same device, usage and key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing: Option<bool>,
    /// `{"code", "detail"}` of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

impl ItemResult {
    fn issued(index: usize, serial: String, der: &[u8], existing: bool) -> ItemResult {
        ItemResult {
            index,
            line: None,
            status: "issued",
            serial: Some(serial),
            certificate: Some(B64.encode(der)),
            existing: Some(existing),
            error: None,
        }
    }

    fn rejected(index: usize, error: serde_json::Value) -> ItemResult {
        ItemResult {
            index,
            line: None,
            status: "rejected",
            serial: None,
            certificate: None,
            existing: None,
            error: Some(error),
        }
    }

    /// The answer to item `index` from its outcome.
    pub fn of(index: usize, r: &Result<Outcome, IssueError>) -> ItemResult {
        match r {
            Ok(o) => ItemResult::issued(index, o.record.serial_hex(), &o.record.der, o.existing),
            Err(e) => ItemResult::rejected(index, json!({"code": e.code, "detail": e.detail})),
        }
    }
}

/// An API batch, parsed.
#[derive(Debug)]
pub struct ApiBatch {
    /// The client's request ID.
    pub request_id: String,
    /// All or nothing.
    pub atomic: bool,
    /// SHA-256 of the body, hex: a request ID is bound to one body.
    pub body_sha256: String,
    /// The items, or why each could not be read.
    pub items: Vec<Result<RequestItem, IssueError>>,
}

/// The answer to an API batch.
#[derive(Debug)]
pub struct BatchAnswer {
    /// One per item, in request order.
    pub results: Vec<ItemResult>,
    /// Answered from the batch's record (a retry): nothing was signed.
    pub replayed: bool,
}

/// Totals of a batch file run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BatchSummary {
    /// Items read.
    pub items: usize,
    /// Issued now.
    pub issued: usize,
    /// Issued before.
    pub existing: usize,
    /// Refused.
    pub rejected: usize,
    /// Refusals by code.
    pub rejected_by_code: std::collections::BTreeMap<String, usize>,
    /// Wall time.
    pub seconds: f64,
    /// Certificates answered per second.
    pub per_second: f64,
}

fn counts(r: &[Result<Outcome, IssueError>]) -> (usize, usize, usize) {
    let existing = r
        .iter()
        .filter(|x| matches!(x, Ok(o) if o.existing))
        .count();
    let issued = r
        .iter()
        .filter(|x| matches!(x, Ok(o) if !o.existing))
        .count();
    (issued, existing, r.len() - issued - existing)
}

impl Service {
    /// One certificate, the whole flow; answered once stored with its audit record
    /// (`certificate.issue`, or `certificate.refused` with the code).
    pub fn issue_one(&self, actor: &Actor, item: RequestItem) -> Result<Outcome, ServiceError> {
        authorize(actor, Action::Administer)?;
        let engine = self.engine()?;
        let subject = item.device_id.clone().or(item.entity_id.clone());
        let profile = item.profile.clone();
        let outcome = engine.issue(&item, &AccountLimits::default(), &|r| {
            Some(match r.first()? {
                Ok(o) => AuditEntry::new(
                    "certificate.issue",
                    actor.name(),
                    json!({"serial": o.record.serial_hex(), "profile": o.record.profile, "subject": o.record.subject_id, "existing": o.existing}),
                ),
                Err(e) => AuditEntry::new(
                    "certificate.refused",
                    actor.name(),
                    json!({"profile": profile, "subject": subject, "code": e.code, "detail": e.detail}),
                ),
            })
        })?;
        Ok(outcome)
    }

    /// Runs an NDJSON batch file: chunk by chunk, each chunk stored with its
    /// `certificate.batch` audit record before its results are written (and synced), so every
    /// answered certificate is stored. A line that is not JSON is refused with its number; the
    /// others still run. `progress` is called with the items done after each chunk.
    pub fn issue_file(
        &self,
        actor: &Actor,
        input: &Path,
        output: &Path,
        chunk: usize,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, ServiceError> {
        self.run_file(actor, (input, output), chunk, progress, false)
    }

    /// A re-issuance campaign (after a Device CA compromise and renewal): as [`issue_file`],
    /// but every line must name a meter that already has a certificate, with a meter profile;
    /// its certificate for that usage is replaced by one from the current Device CA generation
    /// (the same key re-certified, or the new key of the line's CSR). Lines naming an unknown
    /// meter or another profile are refused with their line numbers. Re-running the file after
    /// a crash answers the certificates already issued.
    ///
    /// [`issue_file`]: Service::issue_file
    pub fn reissue_file(
        &self,
        actor: &Actor,
        input: &Path,
        output: &Path,
        chunk: usize,
        progress: &dyn Progress,
    ) -> Result<BatchSummary, ServiceError> {
        self.run_file(actor, (input, output), chunk, progress, true)
    }

    fn run_file(
        &self,
        actor: &Actor,
        (input, output): (&Path, &Path),
        chunk: usize,
        progress: &dyn Progress,
        reissue: bool,
    ) -> Result<BatchSummary, ServiceError> {
        authorize(actor, Action::Administer)?;
        let store = self.store()?;
        let flag = if reissue { "file" } else { "batch" };
        if input.canonicalize().ok() == output.canonicalize().ok() && output.exists() {
            return Err(ServiceError::invalid(
                "out",
                format!("--out must not be the --{flag} file"),
            ));
        }
        let file = File::open(input).map_err(|e| {
            ServiceError::invalid(flag, format!("--{flag} {}: {e}", input.display()))
        })?;
        let engine = self.engine()?;
        // The Device CA generation the engine issues from (read with it, once).
        let mut campaign = reissue.then(|| Campaign {
            generation: self.current_id(crate::CaKind::Device).generation,
            recent: std::collections::VecDeque::new(),
        });
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(output)
            .map_err(|e| ServiceError::io(format!("--out {}", output.display()), e))?;
        let mut writer = BufWriter::new(out);
        let start = Instant::now();
        let mut lines = crate::fsutil::BoundedLines::new(BufReader::new(file));
        let mut index = 0usize;
        let describe = |r: &[Result<Outcome, IssueError>]| {
            let (issued, existing, rejected) = counts(r);
            let mut by_code = std::collections::BTreeMap::<&str, usize>::new();
            for e in r.iter().filter_map(|x| x.as_ref().err()) {
                *by_code.entry(e.code.as_str()).or_default() += 1;
            }
            Some(AuditEntry::new(
                if reissue {
                    "certificate.reissue"
                } else {
                    "certificate.batch"
                },
                actor.name(),
                json!({"file": input, "results": output, "items": r.len(), "issued": issued, "existing": existing, "rejected": rejected, "rejected_by_code": by_code}),
            ))
        };
        // Two stages: this thread parses and signs chunk k+1 while the committer stores chunk
        // k with its audit record, and only then writes and syncs chunk k's results.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<(usize, usize)>, SignedBatch)>(1);
        let committed: Result<BatchSummary, ServiceError> = std::thread::scope(|s| {
            let engine = &engine;
            let describe = &describe;
            let committer = s.spawn(move || -> Result<BatchSummary, ServiceError> {
                let mut summary = BatchSummary::default();
                let io = |e: std::io::Error| {
                    ServiceError::io(format!("writing {}", output.display()), e)
                };
                for (meta, signed) in rx {
                    let results = engine.commit_signed(signed, false, describe)?;
                    // Tests stop here: the chunk stored, its results not yet written.
                    crate::failpoint("issue.before-results");
                    for ((i, line), r) in meta.iter().zip(&results) {
                        let mut row = ItemResult::of(*i, r);
                        row.line = Some(*line);
                        serde_json::to_writer(&mut writer, &row)
                            .map_err(|e| ServiceError::Internal(e.to_string()))?;
                        writer.write_all(b"\n").map_err(io)?;
                        summary.items += 1;
                        match r {
                            Ok(o) if o.existing => summary.existing += 1,
                            Ok(_) => summary.issued += 1,
                            Err(e) => {
                                summary.rejected += 1;
                                *summary
                                    .rejected_by_code
                                    .entry(e.code.to_string())
                                    .or_default() += 1;
                            }
                        }
                    }
                    writer.flush().map_err(io)?;
                    writer.get_ref().sync_data().map_err(io)?;
                    progress.done(summary.items as u64);
                }
                Ok(summary)
            });
            let produced = (|| -> Result<(), ServiceError> {
                loop {
                    if let Some(c) = campaign.as_mut() {
                        c.next_chunk();
                    }
                    let mut items: Vec<Result<RequestItem, IssueError>> = Vec::with_capacity(chunk);
                    let mut meta: Vec<(usize, usize)> = Vec::with_capacity(chunk);
                    for read in lines.by_ref() {
                        let (n, line) = read.map_err(|e| {
                            ServiceError::io(format!("reading {}", input.display()), e)
                        })?;
                        let item = match line {
                            Ok(line) if line.trim().is_empty() => continue,
                            Ok(line) => serde_json::from_str::<RequestItem>(&line)
                                .map_err(|e| {
                                    IssueError::new(ErrorCode::Json, format!("line {n}: {e}"))
                                })
                                .and_then(|item| match campaign.as_mut() {
                                    Some(c) => c.item(store.as_ref(), engine.profiles(), item, n),
                                    None => Ok(item),
                                }),
                            // A line that is not text, or too long, is refused as a line.
                            Err(why) => {
                                Err(IssueError::new(ErrorCode::Json, format!("line {n}: {why}")))
                            }
                        };
                        items.push(item);
                        meta.push((index, n));
                        index += 1;
                        if items.len() == chunk {
                            break;
                        }
                    }
                    if items.is_empty() {
                        return Ok(());
                    }
                    let signed = engine.sign_batch(&items, &AccountLimits::default())?;
                    if tx.send((meta, signed)).is_err() {
                        // The committer stopped on an error; it reports it below.
                        return Ok(());
                    }
                }
            })();
            drop(tx);
            let summary = committer
                .join()
                .map_err(|_| ServiceError::Internal("the committer thread panicked".into()))??;
            produced.map(|()| summary)
        });
        let mut summary = committed?;
        summary.seconds = start.elapsed().as_secs_f64();
        summary.per_second = (summary.issued + summary.existing) as f64 / summary.seconds.max(1e-9);
        Ok(summary)
    }

    /// An API batch, idempotent by (account, request ID): the ID is bound to the body before
    /// anything is signed (another body under it gets a conflict and issues nothing); a retry
    /// with the same body answers the same certificates. Each chunk is stored with an
    /// `api.batch` record; the answer is recorded once every item has one.
    pub fn api_batch(&self, actor: &Actor, batch: ApiBatch) -> Result<BatchAnswer, ServiceError> {
        authorize(actor, Action::IssueBatch)?;
        let account = actor.name().to_string();
        let rid = &batch.request_id;
        // The request ID goes into the audit log and URLs: printable ASCII only (no control or
        // bidirectional-override characters that would make a record read differently from
        // what it holds).
        if rid.is_empty()
            || rid.len() > 128
            || !rid.chars().all(|c| c.is_ascii_graphic() && c != '/')
        {
            return Err(ServiceError::invalid(
                "request-id",
                "request_id: 1 to 128 printable ASCII characters, no space or '/'",
            ));
        }
        if batch.items.is_empty() {
            return Err(ServiceError::invalid(
                "items",
                "items: a batch holds at least one request item",
            ));
        }
        if batch.items.len() > MAX_BATCH {
            return Err(ServiceError::invalid(
                "batch-too-large",
                format!("{} items; at most {MAX_BATCH} per batch", batch.items.len()),
            ));
        }
        let store = self.store()?;
        let claim = Txn::new().with(Op::ClaimBatch {
            account: account.clone(),
            request_id: rid.clone(),
            body_sha256: batch.body_sha256.clone(),
        });
        match store.apply(claim, None)?.claim(0).cloned() {
            Some(Claim::Conflict) => {
                return Err(ServiceError::conflict(
                    "request-id-conflict",
                    format!("request_id {rid:?} was used with a different body"),
                ))
            }
            Some(Claim::Complete(record)) => {
                return Ok(BatchAnswer {
                    results: self.expand(&record)?,
                    replayed: true,
                })
            }
            Some(Claim::New | Claim::Pending) => {}
            None => {
                return Err(ServiceError::Internal(
                    "the store did not answer the claim".into(),
                ))
            }
        }
        let engine = self.engine()?;
        let profiles = engine.profiles();
        let items: Vec<Result<RequestItem, IssueError>> = batch
            .items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let item = item?;
                if let Some(p) = profiles.get(&item.profile) {
                    may_request(actor, p).map_err(|d| {
                        IssueError::new(ErrorCode::ProfileLimit, format!("items[{i}]: {d}"))
                    })?;
                }
                Ok(item)
            })
            .collect();
        let results = engine.issue_batch(&items, &limits(actor), batch.atomic, &|r| {
            let (issued, existing, refused) = counts(r);
            Some(AuditEntry::new(
                "api.batch",
                &account,
                json!({"request_id": rid, "items": r.len(), "issued": issued, "existing": existing, "refused": refused}),
            ))
        })?;
        if let Some(Err(e)) = results
            .iter()
            .find(|r| matches!(r, Err(e) if !e.code.is_client_error()))
        {
            // The HSM failed (or returned a signature that did not verify), or the store could
            // not be reached: no answer is recorded, so that a retry with the same request_id
            // issues what is missing (the items stored before the failure come back as
            // existing). A store that cannot be reached cannot take the failure's record either.
            if e.code == ErrorCode::StoreUnavailable {
                return Err(ServiceError::Issue(IssueError::new(
                    e.code,
                    "the store could not be reached; nothing was issued that is not stored; retry later with the same request_id",
                )));
            }
            self.audit()?.append(
                "api.batch.failed",
                &account,
                json!({"request_id": rid, "items": results.len(), "code": e.code}),
            )?;
            return Err(ServiceError::Issue(IssueError::new(
                e.code,
                "the HSM could not sign; nothing unsigned was issued; retry later with the same request_id",
            )));
        }
        let issued = results.iter().filter(|r| r.is_ok()).count();
        let authz_refusals = results
            .iter()
            .filter(|r| {
                matches!(r, Err(e) if matches!(e.code, ErrorCode::DeviceRange | ErrorCode::ProfileLimit))
            })
            .count();
        if issued == 0 && authz_refusals == results.len() && !results.is_empty() {
            // Nothing issued, every item outside what this account may ask for.
            let range = actor
                .account()
                .and_then(|a| a.device_range)
                .map(|r| r.to_string())
                .unwrap_or_default();
            return Err(ServiceError::denied(
                "forbidden",
                format!("nothing issued: every item is outside what account {account} may request (device range {range})"),
            ));
        }
        let record = BatchRecord {
            body_sha256: batch.body_sha256,
            state: BatchState::Complete,
            results: results
                .iter()
                .map(|r| match r {
                    Ok(o) => BatchItem::Issued {
                        serial: o.record.serial_hex(),
                        existing: o.existing,
                    },
                    Err(e) => BatchItem::Rejected {
                        error: json!({"code": e.code, "detail": e.detail}),
                    },
                })
                .collect(),
        };
        let answer: Vec<ItemResult> = results
            .iter()
            .enumerate()
            .map(|(i, r)| ItemResult::of(i, r))
            .collect();
        drop(results);
        store.apply(
            Txn::new().with(Op::CompleteBatch {
                account: account.clone(),
                request_id: rid.clone(),
                record,
            }),
            None,
        )?;
        Ok(BatchAnswer {
            results: answer,
            replayed: false,
        })
    }

    /// The recorded answer of one of the caller's batches.
    pub fn batch_answer(
        &self,
        actor: &Actor,
        request_id: &str,
    ) -> Result<Vec<ItemResult>, ServiceError> {
        authorize(actor, Action::ReadBatch)?;
        let record = self
            .store()?
            .batch(actor.name(), request_id)?
            .filter(|r| r.state == BatchState::Complete)
            .ok_or_else(|| {
                ServiceError::not_found(format!(
                    "no batch {request_id:?} for account {}",
                    actor.name()
                ))
            })?;
        self.expand(&record)
    }

    /// A batch's answer rebuilt from its record: the certificates come from the store.
    fn expand(&self, record: &BatchRecord) -> Result<Vec<ItemResult>, ServiceError> {
        let store = self.store()?;
        let mut out = Vec::with_capacity(record.results.len());
        for (i, r) in record.results.iter().enumerate() {
            out.push(match r {
                BatchItem::Issued { serial, existing } => {
                    let der = hex::decode(serial)
                        .ok()
                        .map(|s| store.cert(&s))
                        .transpose()?
                        .flatten()
                        .map(|c| c.der)
                        .unwrap_or_default();
                    ItemResult::issued(i, serial.clone(), &der, *existing)
                }
                BatchItem::Rejected { error } => ItemResult::rejected(i, error.clone()),
            });
        }
        Ok(out)
    }
}

/// A re-issuance campaign's state while its file runs: the Device CA generation it issues
/// from, and the meter and usage of the lines accepted in the chunks that may not be stored
/// yet. A second line for one of those is refused: both would replace the earlier-generation
/// certificate. Once a chunk is stored, its meters' certificates come from the current
/// generation, and a later line for one is answered or refused by the store's rules; so the
/// memory held is a few chunks', whatever the file's length.
struct Campaign {
    generation: u32,
    recent: std::collections::VecDeque<std::collections::HashMap<(String, String), usize>>,
}

/// Chunks whose lines are remembered: the one being read, the one waiting for the committer,
/// the one being stored, and one more.
const CAMPAIGN_WINDOW: usize = 4;

impl Campaign {
    /// A new chunk starts: the oldest remembered one is stored by now.
    fn next_chunk(&mut self) {
        if self.recent.len() == CAMPAIGN_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(std::collections::HashMap::new());
    }

    /// A line of the campaign: a meter profile, a meter with an active certificate for that
    /// usage, named once in the file. Its certificate is replaced (the same key certified
    /// again, or the line's new key) only when it comes from an earlier generation; otherwise
    /// the line answers the certificate it has (the same key) or is refused (another key).
    fn item(
        &mut self,
        store: &dyn crate::store::Store,
        profiles: &policies::ProfileSet,
        mut item: RequestItem,
        line: usize,
    ) -> Result<RequestItem, IssueError> {
        let refuse = |code, why: String| Err(IssueError::new(code, format!("line {line}: {why}")));
        // Never taken from the line: the campaign decides.
        item.replace = false;
        item.recertify = false;
        match profiles.get(&item.profile).map(|p| p.kind()) {
            Some(policies::ProfileKind::Meter) => {}
            Some(_) => {
                return refuse(
                    ErrorCode::ProfileLimit,
                    format!("profile {:?} is not a meter profile: a re-issuance campaign re-certifies meters", item.profile),
                )
            }
            None => {
                return refuse(
                    ErrorCode::ProfileUnknown,
                    format!("profile {:?} does not exist", item.profile),
                )
            }
        }
        let Some(device) = item.device_id.clone() else {
            return refuse(ErrorCode::DeviceId, "device_id is required".into());
        };
        let Ok(id) = device.trim().parse::<crate::model::Eui64>() else {
            return refuse(
                ErrorCode::DeviceId,
                format!("device_id {device:?} is not an EUI-64"),
            );
        };
        let id = id.to_string();
        let key = (id.clone(), item.profile.clone());
        if let Some(first) = self.recent.iter().find_map(|m| m.get(&key)) {
            return refuse(
                ErrorCode::DeviceId,
                format!("device_id {id} and profile {} are on line {first} already: one line per meter and usage", item.profile),
            );
        }
        // A meter profile's certificates all come from the Device CA: an active one shows the
        // meter is known; only without one is the history read, to say which refusal it is.
        let Some(active) = store
            .active_cert(&id, &item.profile)
            .map_err(IssueError::store)?
        else {
            let known = store
                .certs_of_subject(&id)
                .map_err(IssueError::store)?
                .iter()
                .any(|r| r.issuer == crate::CaKind::Device);
            if !known {
                return refuse(
                    ErrorCode::DeviceId,
                    format!("device_id {id}: no meter certificate was ever issued to it; a re-issuance campaign only re-certifies meters already in service (use `meterpki issue --batch` for new meters)"),
                );
            }
            return refuse(
                ErrorCode::DeviceId,
                format!("device_id {id} has no active {} certificate (revoked): a re-issuance campaign replaces active certificates; issue a new one with `meterpki issue`", item.profile),
            );
        };
        if let Some(m) = self.recent.back_mut() {
            m.insert(key, line);
        }
        if active.issuer_generation < self.generation {
            item.replace = true;
            item.recertify = true;
        }
        Ok(item)
    }
}
