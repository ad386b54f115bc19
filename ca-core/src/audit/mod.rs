//! The audit log: every security event a JSON line, each record holding the SHA-256 of the one
//! before it and, once the audit key exists, its own signature by that HSM key over its
//! sequence number and hash (docs/design.md#the-audit-log): nobody without the HSM can append
//! or alter a record that `audit verify` accepts.
//!
//! A record and the state change it describes commit together (docs/design.md#audit):
//! [`AuditLog::commit`] hands the store a stage that writes the record once the outcome is
//! known and before anything is stored, and the store moves its head to that record in the same
//! write. If the record cannot be written, nothing changes. A record past the store's head was
//! never committed (a crash came between the two writes); the next write removes it and says so
//! in the chain.

mod stage;
mod verify;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signer::Signer;
use crate::store::{Applied, ApplyError, AuditHead, Store, Txn};

pub use verify::AuditReport;

/// The event name of a record that signs the chain head (written by versions that signed the
/// head now and then rather than every record; still verified).
pub const HEAD_SIGNED_EVENT: &str = "audit.head-signed";
/// The note a writer leaves when it finds records past the store's head that the audit key did
/// not sign: someone wrote them by hand. They stay in the log, named by `audit verify`.
pub const FOREIGN_EVENT: &str = "audit.foreign-records-found";
/// The record that says an append cut short by a crash was removed from the end of the log.
pub const TORN_TAIL_EVENT: &str = "audit.torn-tail-removed";
/// The record that says records never committed by the store were removed from the end.
pub const UNCOMMITTED_EVENT: &str = "audit.uncommitted-removed";
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// The end of the log does not match what the store committed, so nothing can be chained
    /// to it.
    #[error("audit log {path}: {reason}; run `meterpki audit verify`")]
    BadTail {
        /// The log.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Signing the head failed.
    #[error("signing the audit head: {0}")]
    Sign(#[from] crate::signer::SignError),
    /// The store could not be read.
    #[error("audit log: reading the store's head: {0}")]
    Store(#[from] crate::store::StoreError),
    /// This log was opened for reading only.
    #[error("audit log {0}: opened without its store, it cannot be written")]
    ReadOnly(PathBuf),
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
    /// SHA-256 of this record without this field and `sig`, hex.
    pub hash: String,
    /// The audit key's ECDSA signature (DER, base64) over `head_message(seq, hash)`: present on
    /// every record written once the audit key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
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

    /// True when the record carries a signature by `key` over its sequence number and hash.
    pub fn signature_verifies(&self, key: &spki::SubjectPublicKeyInfoOwned) -> bool {
        use base64::Engine as _;
        self.sig
            .as_deref()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .is_some_and(|sig| {
                crate::signer::verify_signature(key, &head_message(self.seq, &self.hash), &sig)
                    .is_ok()
            })
    }

    /// This record as a head.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// What a record says: the event, who did it, the facts.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// E.g. `account.disable`.
    pub event: String,
    /// Who (OS user, account name, officer, `meterpki-serve`).
    pub actor: String,
    /// The facts. Never a secret.
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// An entry.
    pub fn new(
        event: impl Into<String>,
        actor: impl Into<String>,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            event: event.into(),
            actor: actor.into(),
            details,
        }
    }
}

/// The message a head signature covers.
pub(crate) fn head_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("meterpki audit head\n{seq}\n{hash}\n").into_bytes()
}

/// An append-only, hash-chained audit log file, committed through the store.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    store: Option<Arc<dyn Store>>,
    signer: Option<Arc<dyn Signer>>,
    /// The records live in the store itself (a shared store: every server appends to one
    /// chain there), not in the file at `path`.
    in_store: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// The log at `path`, committed through `store` (whose head is the commit point).
    pub fn new(path: impl Into<PathBuf>, store: Arc<dyn Store>) -> AuditLog {
        AuditLog {
            path: path.into(),
            store: Some(store),
            signer: None,
            in_store: false,
        }
    }

    /// The log kept in `store` itself, each record written in the same transaction as the
    /// change it describes: the log of a shared store, which every server appends to as one
    /// chain (docs/design.md#one-audit-chain-for-every-server). `label` names it in messages.
    pub fn in_store(label: impl Into<PathBuf>, store: Arc<dyn Store>) -> AuditLog {
        AuditLog {
            path: label.into(),
            store: Some(store),
            signer: None,
            in_store: true,
        }
    }

    /// True for a log kept in its store ([`AuditLog::in_store`]).
    pub fn is_in_store(&self) -> bool {
        self.in_store
    }

    /// Every record this log writes is signed by `signer` (the audit key), and records past the
    /// store's head that it did not sign are kept and named instead of removed.
    pub fn with_signer(mut self, signer: Arc<dyn Signer>) -> AuditLog {
        self.signer = Some(signer);
        self
    }

    /// The same log's chain (and signer) continued in another store, kept there: the home's
    /// store after a copy to a shared backend, whose head is the same and which holds the
    /// records copied from the file (`label` names it in messages).
    pub fn moved_into(mut self, label: impl Into<PathBuf>, store: Arc<dyn Store>) -> AuditLog {
        self.store = Some(store);
        self.path = label.into();
        self.in_store = true;
        self
    }

    /// The log at `path`, for reading only (listing records).
    pub fn reader(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog {
            path: path.into(),
            store: None,
            signer: None,
            in_store: false,
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store this log commits through.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    fn io(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn writer(&self) -> Result<&Arc<dyn Store>, ApplyError> {
        self.store
            .as_ref()
            .ok_or_else(|| AuditError::ReadOnly(self.path.clone()).into())
    }

    /// Applies `txn` with the record `entry` makes of its outcome, committed together: the
    /// record is written before the store writes anything and the store's head moves to it in
    /// the same write (`entry` returning `None` writes no record). If the record cannot be
    /// written, nothing is stored. Returns the outcome and the record.
    pub fn commit(
        &self,
        txn: Txn,
        entry: impl FnOnce(&Applied) -> Option<AuditEntry>,
    ) -> Result<(Applied, Option<AuditRecord>), ApplyError> {
        let store = self.writer()?;
        if self.in_store {
            let mut stage = stage::StoreStage::new(self, move |applied| entry(applied));
            let applied = store.apply(txn, Some(&mut stage))?;
            return Ok((applied, stage.into_record()));
        }
        let mut stage = stage::FileStage::new(self, move |applied, _prev| Ok(entry(applied)));
        let applied = store.apply(txn, Some(&mut stage))?;
        Ok((applied, stage.into_record()))
    }

    /// Appends a record that goes with no store change (a ceremony's transcript, a refusal).
    pub fn append(
        &self,
        event: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditRecord, ApplyError> {
        let entry = AuditEntry::new(event, actor, details);
        let (_, rec) = self.commit(Txn::new(), |_| Some(entry))?;
        rec.ok_or_else(|| AuditError::ReadOnly(self.path.clone()).into())
    }

    /// The log's text: the file, or the records kept in the store as the file would hold them
    /// (one JSON line each).
    pub(crate) fn text(&self) -> Result<String, AuditError> {
        if self.in_store {
            let store = self
                .store
                .as_ref()
                .ok_or_else(|| AuditError::ReadOnly(self.path.clone()))?;
            let mut text = String::new();
            for line in store.audit_record_lines()? {
                text.push_str(&String::from_utf8_lossy(&line));
                text.push('\n');
            }
            return Ok(text);
        }
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Reads every record (for display); stops at the first unreadable line.
    pub fn records(&self) -> Result<Vec<AuditRecord>, AuditError> {
        if self.in_store {
            let mut out = Vec::new();
            for line in self.text()?.lines() {
                match serde_json::from_str(line) {
                    Ok(r) => out.push(r),
                    Err(_) => break,
                }
            }
            return Ok(out);
        }
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
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How many records one interrupted write can leave past the store's head: a note about a cut
/// line or uncommitted records, a note about foreign records, and the write's own record.
const MAX_UNCOMMITTED: u64 = 3;

/// Whether the store a home opened is the one its audit log was written with: the log records
/// every committed change, so a store that committed nothing while the log has records, a store
/// whose last committed record is not in the log, or one whose last record is followed by more
/// signed records than one interrupted write leaves, is missing, foreign or older than the log.
/// `Err` says which, for a human.
pub(crate) fn check_store_matches(
    log_path: &Path,
    store_head: Option<&AuditHead>,
    audit_key: Option<&spki::SubjectPublicKeyInfoOwned>,
) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match File::open(log_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return check_tail(log_path, store_head, audit_key, &[], false, 0)
        }
        // A log that cannot be read cannot be written either: the change fails there, with
        // the audit log's own error.
        Err(_) => return Ok(()),
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return Ok(());
    };
    // The head is almost always among the last records: read the end of the log, more of it
    // only while the head is not found (the whole log at most, when it is not there at all).
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        let mut tail = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut tail).is_err() {
            return Ok(());
        }
        let torn = !tail.is_empty() && !tail.ends_with(b"\n");
        let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        let records: Vec<AuditRecord> = lines
            .iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let found = match store_head {
            None => !records.is_empty(),
            Some(h) => records.iter().any(|r| r.seq == h.seq && r.hash == h.hash),
        };
        if found || start == 0 {
            return check_tail(log_path, store_head, audit_key, &records, torn, start);
        }
        window = window.saturating_mul(2);
    }
}

/// [`check_store_matches`] on the records at the end of the log (all of them when `start` is
/// 0).
fn check_tail(
    log_path: &Path,
    store_head: Option<&AuditHead>,
    audit_key: Option<&spki::SubjectPublicKeyInfoOwned>,
    records: &[AuditRecord],
    torn: bool,
    start: u64,
) -> Result<(), String> {
    let last_seq = records.last().map_or(0, |r| r.seq);
    let Some(head) = store_head else {
        if last_seq > MAX_UNCOMMITTED {
            return Err(format!(
                "the store has committed nothing, but the audit log {} holds {last_seq} records: \
                 the store was removed, emptied or replaced by a new one",
                log_path.display()
            ));
        }
        return Ok(());
    };
    let Some(pos) = records
        .iter()
        .rposition(|r| r.seq == head.seq && r.hash == head.hash)
    else {
        return Err(if records.is_empty() && start == 0 {
            format!(
                "the store committed audit record {} but the audit log {} is missing or empty",
                head.seq,
                log_path.display()
            )
        } else if last_seq < head.seq {
            format!(
                "record {} was removed from the audit log {}: it ends at record {last_seq}{}, but the store committed up to record {}",
                last_seq + 1,
                log_path.display(),
                if torn { " and does not end with a complete line" } else { "" },
                head.seq
            )
        } else {
            format!(
                "the store's last committed audit record (#{} {}) is not in the audit log {}: \
                 the store belongs to another home, or the log was replaced",
                head.seq,
                &head.hash[..16.min(head.hash.len())],
                log_path.display()
            )
        });
    };
    // Records past the head that chain to it and that the audit key signed were written by
    // meterpki: more of them than one interrupted write leaves were committed by a store this
    // one is older than. Lines that do not chain, and records the key did not sign, are
    // someone else's (the writer keeps and names those); they prove nothing about the store.
    let mut prev = head.clone();
    let mut later = 0u64;
    for r in &records[pos + 1..] {
        if r.compute_hash() != r.hash || r.seq != prev.seq + 1 || r.prev != prev.hash {
            break;
        }
        prev = r.head();
        // Without an audit key yet (before the root ceremony) every chained record counts.
        let ours = audit_key.is_none_or(|key| r.signature_verifies(key));
        if ours {
            later += 1;
        }
    }
    if later > MAX_UNCOMMITTED {
        return Err(format!(
            "the store is older than the audit log {}: its last committed record is #{}, but the log goes on to #{last_seq} \
             (a store restored from a backup, or copied from an earlier state of this home)",
            log_path.display(),
            head.seq
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `n` chained records (checked here without an audit key, as before a root
    /// ceremony: every chained record counts).
    fn log_of(n: u64) -> (tempfile::TempDir, PathBuf, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut prev = GENESIS.to_string();
        let mut out = Vec::new();
        let mut text = String::new();
        for seq in 1..=n {
            let mut r = AuditRecord {
                seq,
                time: "2026-12-01T00:00:00Z".into(),
                event: "test".into(),
                actor: "t".into(),
                details: serde_json::json!({"pad": "x".repeat(200)}),
                prev: prev.clone(),
                hash: String::new(),
                sig: None,
            };
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            text.push_str(&serde_json::to_string(&r).unwrap());
            text.push('\n');
            out.push(r);
        }
        std::fs::write(&path, text).unwrap();
        (dir, path, out)
    }

    /// The store's head found deep in a long log (past the first window read) makes the store
    /// older than the log; at the end it matches; a head from elsewhere, or none, is refused.
    #[test]
    fn the_store_is_held_to_the_log_however_long_it_is() {
        let (_dir, path, recs) = log_of(3000);
        let last = recs.last().unwrap().head();
        assert_eq!(check_store_matches(&path, Some(&last), None), Ok(()));
        let near = recs[recs.len() - 3].head();
        assert_eq!(
            check_store_matches(&path, Some(&near), None),
            Ok(()),
            "a crash's leftovers"
        );
        let deep = recs[100].head();
        let e = check_store_matches(&path, Some(&deep), None).unwrap_err();
        assert!(e.contains("older than the audit log"), "{e}");
        let foreign = AuditHead {
            seq: 2000,
            hash: "ab".repeat(32),
        };
        let e = check_store_matches(&path, Some(&foreign), None).unwrap_err();
        assert!(e.contains("another home"), "{e}");
        let e = check_store_matches(&path, None, None).unwrap_err();
        assert!(e.contains("committed nothing"), "{e}");
        let ahead = AuditHead {
            seq: 3005,
            hash: "cd".repeat(32),
        };
        let e = check_store_matches(&path, Some(&ahead), None).unwrap_err();
        assert!(e.contains("record 3001 was removed"), "{e}");
        let missing = path.with_file_name("none.log");
        let e = check_store_matches(&missing, Some(&last), None).unwrap_err();
        assert!(e.contains("missing or empty"), "{e}");
        assert_eq!(
            check_store_matches(&missing, None, None),
            Ok(()),
            "a new home"
        );
    }
}
