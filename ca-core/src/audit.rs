//! The audit log (DESIGN §8): every security event appended as a JSON line, each record holding
//! the SHA-256 of the one before it, and the chain head signed with an HSM key at each ceremony
//! (and, in later issues, each CRL publication). `verify` names the first altered, removed or
//! reordered record.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spki::SubjectPublicKeyInfoOwned;

use crate::signer::{verify_signature, Signer};
use crate::store::Store;

/// The event name of a record that signs the chain head.
pub const HEAD_SIGNED_EVENT: &str = "audit.head-signed";
/// The record that says an append cut short by a crash was removed from the end of the log.
pub const TORN_TAIL_EVENT: &str = "audit.torn-tail-removed";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// File system.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The last record cannot be read, so nothing can be chained to it.
    #[error(
        "audit log {path}: the last record is unreadable ({reason}); run `meterpki audit verify`"
    )]
    BadTail {
        /// The log.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Signing the head failed.
    #[error("signing the audit head: {0}")]
    Sign(#[from] crate::signer::SignError),
    /// The store could not record the head.
    #[error("recording the audit head: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// One record of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 1, 2, 3, ... with no gap.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// What happened, e.g. `ceremony.root`.
    pub event: String,
    /// Who did it (OS user, account name or officer).
    pub actor: String,
    /// Event-specific facts. Never a secret.
    pub details: serde_json::Value,
    /// The previous record's hash (64 zeros for the first).
    pub prev: String,
    /// SHA-256 of this record without this field, hex.
    pub hash: String,
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    event: &'a str,
    actor: &'a str,
    details: &'a serde_json::Value,
    prev: &'a str,
}

impl AuditRecord {
    /// The hash this record should carry: SHA-256 over every field but `hash`.
    pub fn compute_hash(&self) -> String {
        let body = Body {
            seq: self.seq,
            time: &self.time,
            event: &self.event,
            actor: &self.actor,
            details: &self.details,
            prev: &self.prev,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// True when the whole chain is intact.
    pub ok: bool,
    /// Records read.
    pub records: u64,
    /// Head signatures that verified.
    pub signed_heads: u64,
    /// The last record's seq and hash.
    pub head: Option<(u64, String)>,
    /// The first problem, naming the line and the record.
    pub problem: Option<String>,
}

/// The message a head signature covers.
fn head_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("meterpki audit head\n{seq}\n{hash}\n").into_bytes()
}

/// An append-only, hash-chained audit log file.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// The log at `path`; `store`, when given, records the head after every append so that
    /// records removed from the end are detected too.
    pub fn new(path: impl Into<PathBuf>, store: Option<Arc<dyn Store>>) -> AuditLog {
        AuditLog {
            path: path.into(),
            store,
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one event. Concurrent appenders (other processes) are serialised by a file lock.
    pub fn append(
        &self,
        event: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditRecord, AuditError> {
        self.append_with(|_| Ok((event.to_string(), details)), actor)
    }

    /// Signs the current head with `signer` and appends the signature as a record.
    pub fn sign_head(
        &self,
        signer: &dyn Signer,
        key_name: &str,
        actor: &str,
    ) -> Result<AuditRecord, AuditError> {
        self.append_with(
            |head| {
                let (seq, hash) = head.unwrap_or((0, GENESIS.to_string()));
                let sig = signer.sign(&head_message(seq, &hash))?;
                Ok((
                    HEAD_SIGNED_EVENT.to_string(),
                    serde_json::json!({
                        "signed_seq": seq,
                        "signed_hash": hash,
                        "key": key_name,
                        "signature": base64::engine::general_purpose::STANDARD.encode(sig),
                    }),
                ))
            },
            actor,
        )
    }

    fn append_with(
        &self,
        make: impl FnOnce(Option<(u64, String)>) -> Result<(String, serde_json::Value), AuditError>,
        actor: &str,
    ) -> Result<AuditRecord, AuditError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        // The end of the file, read once: checked for a cut last line, then for the head.
        let (start, mut tail) = self.read_end(&mut file)?;
        let torn = self.drop_torn_tail(&mut file, start, &mut tail)?;
        let mut head = self.head_of(&tail)?;
        if let Some((bytes, digest)) = torn {
            // Say in the chain itself what was removed.
            let rec = self.write_record(
                &mut file,
                head.clone(),
                TORN_TAIL_EVENT.to_string(),
                serde_json::json!({"removed_bytes": bytes, "removed_sha256": digest}),
                "meterpki",
            )?;
            head = Some((rec.seq, rec.hash));
        }
        let (event, details) = make(head.clone())?;
        self.write_record(&mut file, head, event, details, actor)
    }

    /// A crash in the middle of an append leaves a last line without its newline, written
    /// before the store recorded the new head. When the store's head is the last complete
    /// record, that cut line is such an unfinished append: it is removed (its size and SHA-256
    /// are recorded in the chain by the caller) and the log goes on. Anything else — no store
    /// to compare with, a head that is not the last complete record — is refused as before:
    /// that is not a crash but an edit.
    fn drop_torn_tail(
        &self,
        file: &mut File,
        start: u64,
        tail: &mut Vec<u8>,
    ) -> Result<Option<(u64, String)>, AuditError> {
        if tail.is_empty() || tail.last() == Some(&b'\n') {
            return Ok(None);
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(nl) = tail.iter().rposition(|b| *b == b'\n') else {
            return Ok(None);
        };
        let Ok(rec) = last_record(&tail[..nl]) else {
            return Ok(None);
        };
        if store.audit_head()? != Some((rec.seq, rec.hash)) {
            return Ok(None);
        }
        let removed = tail.split_off(nl + 1);
        let digest = hex::encode(crate::sha256(&removed));
        file.set_len(start + tail.len() as u64)
            .map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        tracing::warn!(path = %self.path.display(), bytes = removed.len(), "removed an audit record cut short by a crash");
        Ok(Some((removed.len() as u64, digest)))
    }

    fn write_record(
        &self,
        file: &mut File,
        head: Option<(u64, String)>,
        event: String,
        details: serde_json::Value,
        actor: &str,
    ) -> Result<AuditRecord, AuditError> {
        let (prev_seq, prev) = head.unwrap_or((0, GENESIS.to_string()));
        let mut rec = AuditRecord {
            seq: prev_seq + 1,
            time: now_rfc3339(),
            event,
            actor: actor.to_string(),
            details,
            prev,
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        let mut line = serde_json::to_vec(&rec).map_err(|e| self.io(e.into()))?;
        line.push(b'\n');
        file.write_all(&line).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        if let Some(store) = &self.store {
            store.set_audit_head(rec.seq, &rec.hash)?;
        }
        Ok(rec)
    }

    /// The last 64 KiB of the file (where it starts, and the bytes): enough for the last
    /// record, without reading the whole log.
    fn read_end(&self, file: &mut File) -> Result<(u64, Vec<u8>), AuditError> {
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        let start = len.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(start)).map_err(|e| self.io(e))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| self.io(e))?;
        Ok((start, buf))
    }

    /// The last record's seq and hash, from the end of the file.
    fn head_of(&self, tail: &[u8]) -> Result<Option<(u64, String)>, AuditError> {
        if tail.is_empty() {
            return Ok(None);
        }
        let bad = |reason: String| AuditError::BadTail {
            path: self.path.clone(),
            reason,
        };
        if tail.last() != Some(&b'\n') {
            return Err(bad("the file does not end with a complete line".into()));
        }
        let rec = last_record(&tail[..tail.len() - 1]).map_err(bad)?;
        Ok(Some((rec.seq, rec.hash)))
    }

    /// Reads every record (for display); stops at the first unreadable line.
    pub fn records(&self) -> Result<Vec<AuditRecord>, AuditError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| self.io(e))?;
            match serde_json::from_str(&line) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Checks the whole chain: every hash, every link, every sequence number, every head
    /// signature (with `audit_key`), and that the log reaches the head the store last recorded.
    pub fn verify(
        &self,
        audit_key: Option<&SubjectPublicKeyInfoOwned>,
    ) -> Result<AuditReport, AuditError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.io(e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        // Every seq that appears anywhere, to tell a reordering from a removal.
        let present: HashSet<u64> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
            .map(|r| r.seq)
            .collect();
        let mut report = AuditReport {
            ok: true,
            records: 0,
            signed_heads: 0,
            head: None,
            problem: None,
        };
        let mut prev = GENESIS.to_string();
        let fail = |report: &mut AuditReport, msg: String| {
            report.ok = false;
            report.problem = Some(msg);
        };
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            // Records are numbered from 1 with no gap, so line n must hold record n.
            let expected_seq = n as u64;
            let rec: AuditRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(e) => {
                    fail(
                        &mut report,
                        format!(
                            "line {n}: record {expected_seq} is unreadable, it was altered ({e})"
                        ),
                    );
                    return Ok(report);
                }
            };
            if rec.compute_hash() != rec.hash {
                fail(
                    &mut report,
                    format!(
                        "line {n}: record {} ({}) was altered: its content does not match its hash",
                        rec.seq, rec.event
                    ),
                );
                return Ok(report);
            }
            if rec.seq != expected_seq {
                let msg = if rec.seq < expected_seq || present.contains(&expected_seq) {
                    format!(
                        "line {n}: records are out of order: expected record {expected_seq}, found record {} ({})",
                        rec.seq, rec.event
                    )
                } else {
                    format!(
                        "line {n}: record {expected_seq} was removed: record {} ({}) follows record {}",
                        rec.seq,
                        rec.event,
                        expected_seq - 1
                    )
                };
                fail(&mut report, msg);
                return Ok(report);
            }
            if rec.prev != prev {
                fail(
                    &mut report,
                    format!(
                        "line {n}: record {} ({}) does not chain to record {}: a record was replaced",
                        rec.seq,
                        rec.event,
                        expected_seq - 1
                    ),
                );
                return Ok(report);
            }
            if rec.event == HEAD_SIGNED_EVENT {
                if let Err(msg) = check_head_signature(&rec, &prev, audit_key) {
                    fail(&mut report, format!("line {n}: record {}: {msg}", rec.seq));
                    return Ok(report);
                }
                report.signed_heads += 1;
            }
            prev = rec.hash.clone();
            report.records += 1;
            report.head = Some((rec.seq, rec.hash));
        }
        if let Some(store) = &self.store {
            if let Some((seq, hash)) = store.audit_head()? {
                let last = report.head.as_ref().map(|h| h.0).unwrap_or(0);
                if seq > last {
                    fail(
                        &mut report,
                        format!(
                            "record {} was removed: the log ends at record {last} but the store recorded record {seq} as the head",
                            last + 1
                        ),
                    );
                } else if seq == last && report.head.as_ref().map(|h| &h.1) != Some(&hash) {
                    fail(
                        &mut report,
                        format!("record {seq} differs from the head the store recorded"),
                    );
                }
            }
        }
        Ok(report)
    }
}

fn check_head_signature(
    rec: &AuditRecord,
    prev: &str,
    key: Option<&SubjectPublicKeyInfoOwned>,
) -> Result<(), String> {
    let d = &rec.details;
    let seq = d["signed_seq"]
        .as_u64()
        .ok_or("head signature without signed_seq")?;
    let hash = d["signed_hash"]
        .as_str()
        .ok_or("head signature without signed_hash")?;
    if seq + 1 != rec.seq || hash != prev {
        return Err("the head signature does not sign the record before it".into());
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(d["signature"].as_str().unwrap_or_default())
        .map_err(|e| format!("head signature is not base64: {e}"))?;
    if let Some(key) = key {
        verify_signature(key, &head_message(seq, hash), &sig)
            .map_err(|e| format!("the head signature does not verify with the audit key: {e}"))?;
    }
    Ok(())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The last line of `complete` (whole lines, without the final newline) as a record whose hash
/// matches its content.
fn last_record(complete: &[u8]) -> Result<AuditRecord, String> {
    let text = String::from_utf8_lossy(complete);
    let last = text.rsplit('\n').next().unwrap_or_default();
    let rec: AuditRecord = serde_json::from_str(last).map_err(|e| e.to_string())?;
    if rec.compute_hash() != rec.hash {
        return Err(format!("record {} does not match its hash", rec.seq));
    }
    Ok(rec)
}
