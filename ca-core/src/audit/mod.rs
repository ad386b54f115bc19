//! The audit log: every security event a JSON line, each record holding the SHA-256 of the one
//! before it, the chain head signed with an HSM key at each ceremony and CRL publication.
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

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signer::Signer;
use crate::store::{Applied, ApplyError, AuditHead, Store, Txn};

pub use verify::AuditReport;

/// The event name of a record that signs the chain head.
pub const HEAD_SIGNED_EVENT: &str = "audit.head-signed";
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
        }
    }

    /// The log at `path`, for reading only (listing records).
    pub fn reader(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog {
            path: path.into(),
            store: None,
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

    /// Signs the current head with `signer` and appends the signature as a record.
    pub fn sign_head(
        &self,
        signer: &dyn Signer,
        key_name: &str,
        actor: &str,
    ) -> Result<AuditRecord, ApplyError> {
        let store = self.writer()?;
        let actor = actor.to_string();
        let key_name = key_name.to_string();
        let mut stage = stage::FileStage::new(self, move |_applied, prev: Option<&AuditHead>| {
            let (seq, hash) = prev
                .map(|h| (h.seq, h.hash.clone()))
                .unwrap_or((0, GENESIS.to_string()));
            let sig = signer.sign(&head_message(seq, &hash))?;
            Ok(Some(AuditEntry::new(
                HEAD_SIGNED_EVENT,
                actor,
                serde_json::json!({
                    "signed_seq": seq,
                    "signed_hash": hash,
                    "key": key_name,
                    "signature": base64::engine::general_purpose::STANDARD.encode(sig),
                }),
            )))
        });
        store.apply(Txn::new(), Some(&mut stage))?;
        stage
            .into_record()
            .ok_or_else(|| AuditError::ReadOnly(self.path.clone()).into())
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
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
