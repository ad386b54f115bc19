//! Writing a record as part of a store write: the end of the log brought back to the store's
//! last committed record, then the new record written and synced, the file kept locked until
//! the store has written (or the record withdrawn if it could not).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use super::{
    now_rfc3339, AuditEntry, AuditError, AuditLog, AuditRecord, GENESIS, TORN_TAIL_EVENT,
    UNCOMMITTED_EVENT,
};
use crate::store::{Applied, AuditHead, AuditStage};

/// How much of the end of the log is read first to find the store's head, which is almost
/// always its last line: more than the records one interrupted write leaves behind it. When
/// the head is not in it (larger records), the window doubles until it is, up to the whole file.
const TAIL_WINDOW: u64 = 16 * 1024;

type MakeEntry<'a> =
    dyn FnOnce(&Applied, Option<&AuditHead>) -> Result<Option<AuditEntry>, AuditError> + 'a;

/// The log's side of one store write.
pub(super) struct FileStage<'a> {
    log: &'a AuditLog,
    make: Option<Box<MakeEntry<'a>>>,
    /// The log, locked, between staging and the end of the store's write.
    file: Option<File>,
    /// Its length before this write's records (what a rollback truncates to).
    start_len: u64,
    record: Option<AuditRecord>,
}

impl<'a> FileStage<'a> {
    pub(super) fn new(
        log: &'a AuditLog,
        make: impl FnOnce(&Applied, Option<&AuditHead>) -> Result<Option<AuditEntry>, AuditError> + 'a,
    ) -> FileStage<'a> {
        FileStage {
            log,
            make: Some(Box::new(make)),
            file: None,
            start_len: 0,
            record: None,
        }
    }

    /// The record written, once the store has committed it.
    pub(super) fn into_record(self) -> Option<AuditRecord> {
        self.record
    }
}

impl AuditStage for FileStage<'_> {
    fn stage(
        &mut self,
        store_head: Option<&AuditHead>,
        applied: &Applied,
    ) -> Result<Option<AuditHead>, AuditError> {
        let log = self.log;
        let io = |e| log.io(e);
        if let Some(dir) = log.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let created = !log.path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log.path)
            .map_err(io)?;
        if created {
            // The new log's name is durable before anything is committed against it.
            if let Some(dir) = log.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        // Other processes that write this log (a CLI beside a server) wait here.
        file.lock().map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut window = TAIL_WINDOW;
        let (start, tail, end) = loop {
            let start = len.saturating_sub(window);
            file.seek(SeekFrom::Start(start)).map_err(io)?;
            let mut tail = Vec::new();
            file.read_to_end(&mut tail).map_err(io)?;
            match settle(log, &tail, start, store_head)? {
                Some(end) => break (start, tail, end),
                None => window = window.saturating_mul(2),
            }
        };
        let mut head = end.head.clone();
        if end.keep < len {
            let removed = &tail[(end.keep - start) as usize..];
            let digest = hex::encode(crate::sha256(removed));
            file.set_len(end.keep).map_err(io)?;
            file.sync_data().map_err(io)?;
            tracing::warn!(path = %log.path.display(), bytes = removed.len(), records = end.uncommitted, "removed from the end of the audit log what the store never committed");
            let (event, details) = if end.uncommitted == 0 {
                (
                    TORN_TAIL_EVENT,
                    serde_json::json!({"removed_bytes": removed.len(), "removed_sha256": digest}),
                )
            } else {
                (
                    UNCOMMITTED_EVENT,
                    serde_json::json!({"records": end.uncommitted, "removed_bytes": removed.len(), "removed_sha256": digest}),
                )
            };
            // The note is written with this write's record and committed with it.
            let note = write_record(
                log,
                &mut file,
                head.as_ref(),
                AuditEntry::new(event, "meterpki", details),
            )?;
            head = Some(note.head());
        }
        if !end.foreign.is_empty() {
            tracing::error!(path = %log.path.display(), records = ?end.foreign, "records past the store's head are not signed by the audit key: someone else wrote them; they stay in the log and `meterpki audit verify` names them");
            let note = write_record(
                log,
                &mut file,
                head.as_ref(),
                AuditEntry::new(
                    super::FOREIGN_EVENT,
                    "meterpki",
                    serde_json::json!({"records": end.foreign, "void": end.void, "reason": "past the store's committed head and not signed by the audit key; `void`: records of writes the store never committed"}),
                ),
            )?;
            head = Some(note.head());
        }
        self.start_len = end.keep;
        let make = self.make.take().expect("a stage is staged once");
        let Some(entry) = make(applied, head.as_ref())? else {
            if head.as_ref() != end.head.as_ref() {
                // Only the note: commit it alone.
                file.sync_data().map_err(io)?;
                self.file = Some(file);
                return Ok(head);
            }
            return Ok(None);
        };
        let rec = write_record(log, &mut file, head.as_ref(), entry)?;
        file.sync_data().map_err(io)?;
        let new_head = rec.head();
        self.record = Some(rec);
        self.file = Some(file);
        Ok(Some(new_head))
    }

    fn rollback(&mut self) {
        if let Some(file) = &self.file {
            let _ = file.set_len(self.start_len);
            let _ = file.sync_data();
        }
        self.record = None;
    }
}

fn write_record(
    log: &AuditLog,
    file: &mut File,
    head: Option<&AuditHead>,
    entry: AuditEntry,
) -> Result<AuditRecord, AuditError> {
    let rec = build_record(log, head, entry)?;
    let mut line = serde_json::to_vec(&rec).map_err(|e| log.io(e.into()))?;
    line.push(b'\n');
    file.write_all(&line).map_err(|e| log.io(e))?;
    Ok(rec)
}

/// The record `entry` makes chained to `head`, hashed and (with the log's signer) signed.
fn build_record(
    log: &AuditLog,
    head: Option<&AuditHead>,
    entry: AuditEntry,
) -> Result<AuditRecord, AuditError> {
    let (prev_seq, prev) = head
        .map(|h| (h.seq, h.hash.clone()))
        .unwrap_or((0, GENESIS.to_string()));
    let mut rec = AuditRecord {
        seq: prev_seq + 1,
        time: now_rfc3339(),
        event: entry.event,
        actor: entry.actor,
        details: entry.details,
        prev,
        hash: String::new(),
        sig: None,
    };
    rec.hash = rec.compute_hash();
    if let Some(signer) = &log.signer {
        use base64::Engine as _;
        let sig = signer.sign(&super::head_message(rec.seq, &rec.hash))?;
        rec.sig = Some(base64::engine::general_purpose::STANDARD.encode(sig));
    }
    Ok(rec)
}

type MakeStoreEntry<'a> = dyn FnOnce(&Applied) -> Option<AuditEntry> + 'a;

/// The side of one store write for a log kept in the store: the record is built under the
/// store's write lock, chained to the head read in the same transaction, and written by the
/// store with the change and the new head, so there is never a record without its change or
/// a change without its record, whichever server writes.
pub(super) struct StoreStage<'a> {
    log: &'a AuditLog,
    make: Option<Box<MakeStoreEntry<'a>>>,
    staged: Option<(u64, Vec<u8>)>,
    record: Option<AuditRecord>,
}

impl<'a> StoreStage<'a> {
    pub(super) fn new(
        log: &'a AuditLog,
        make: impl FnOnce(&Applied) -> Option<AuditEntry> + 'a,
    ) -> StoreStage<'a> {
        StoreStage {
            log,
            make: Some(Box::new(make)),
            staged: None,
            record: None,
        }
    }

    /// The record written, once the store has committed it.
    pub(super) fn into_record(self) -> Option<AuditRecord> {
        self.record
    }
}

impl AuditStage for StoreStage<'_> {
    fn stage(
        &mut self,
        store_head: Option<&AuditHead>,
        applied: &Applied,
    ) -> Result<Option<AuditHead>, AuditError> {
        let make = self.make.take().expect("a stage is staged once");
        let Some(entry) = make(applied) else {
            return Ok(None);
        };
        let rec = build_record(self.log, store_head, entry)?;
        let line = serde_json::to_vec(&rec).map_err(|e| self.log.io(e.into()))?;
        let head = rec.head();
        self.staged = Some((rec.seq, line));
        self.record = Some(rec);
        Ok(Some(head))
    }

    fn rollback(&mut self) {
        // Nothing was written: the record goes with the transaction.
        self.staged = None;
        self.record = None;
    }

    fn record_for_store(&mut self) -> Option<(u64, Vec<u8>)> {
        self.staged.take()
    }
}

/// Where the committed part of the log ends.
struct End {
    /// File length to keep.
    keep: u64,
    /// The last committed record, which the next one chains to.
    head: Option<AuditHead>,
    /// Complete records after it (never committed).
    uncommitted: u64,
    /// Records past the store's head that the audit key did not sign (kept, and named in a
    /// note).
    foreign: Vec<u64>,
    /// This log's own records past the head, kept beside foreign ones: never committed.
    void: Vec<u64>,
}

/// Finds the store's last committed record at the end of the log. What follows it — a line cut
/// by a crash, records whose store write never happened — is to be removed; anything else (the
/// head missing, records that do not chain to it) is an edit, refused. `None`: the window
/// (which starts at `start`, inside the file) is too small to tell; read more.
fn settle(
    log: &AuditLog,
    tail: &[u8],
    start: u64,
    store_head: Option<&AuditHead>,
) -> Result<Option<End>, AuditError> {
    let bad = |reason: String| AuditError::BadTail {
        path: log.path.clone(),
        reason,
    };
    let complete_end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = complete_end < tail.len();
    // Whole lines in the window, with the offset just past each; the first is partial when the
    // window starts inside the file.
    let mut lines = Vec::new();
    let mut at = 0usize;
    for line in tail[..complete_end].split_inclusive(|b| *b == b'\n') {
        at += line.len();
        lines.push((&line[..line.len() - 1], at));
    }
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let parse = |l: &[u8]| serde_json::from_slice::<AuditRecord>(l).ok();
    let Some(head) = store_head else {
        // A store that never committed a record (a new home, or one whose store was replaced):
        // chain to the last complete record; a line cut by a crash after it is removed.
        if lines.is_empty() && start > 0 {
            return Ok(None);
        }
        let last = match lines.last() {
            Some((l, _)) => Some(
                parse(l)
                    .filter(|r| r.compute_hash() == r.hash)
                    .ok_or_else(|| bad("the last record is unreadable or altered".into()))?
                    .head(),
            ),
            None => None,
        };
        return Ok(Some(End {
            keep: start + complete_end as u64,
            head: last,
            uncommitted: 0,
            foreign: Vec::new(),
            void: Vec::new(),
        }));
    };
    let Some(pos) = lines
        .iter()
        .rposition(|(l, _)| parse(l).is_some_and(|r| r.seq == head.seq && r.hash == head.hash))
    else {
        if start > 0 {
            return Ok(None);
        }
        return Err(bad(if torn {
            "the file does not end with a complete line".into()
        } else {
            format!(
                "record {} (the last one the store committed) is not at the end of the log: records were removed or the log replaced",
                head.seq
            )
        }));
    };
    // What follows the head must be records chained to it, written by a write that never
    // reached the store: signed by the audit key like every record this log writes. A record
    // the key did not sign was written by someone else; it is kept, so that `audit verify`
    // names it for good, and the next record chains after it.
    let mut prev = head.clone();
    let mut foreign = Vec::new();
    let mut ours = Vec::new();
    // Only once the log is signed can an unsigned record be told from an uncommitted one
    // written by an earlier version (which the next write removes as before).
    let signing = parse(lines[pos].0).is_some_and(|r| r.sig.is_some());
    for (l, _) in &lines[pos + 1..] {
        let rec = parse(l)
            .filter(|r| r.compute_hash() == r.hash && r.seq == prev.seq + 1 && r.prev == prev.hash)
            .ok_or_else(|| {
                bad(format!(
                    "what follows record {} (the last one the store committed) is not a record chained to it: the log was edited",
                    prev.seq
                ))
            })?;
        match &log.signer {
            Some(signer) if signing && !rec.signature_verifies(signer.public_key()) => {
                foreign.push(rec.seq)
            }
            _ => ours.push(rec.seq),
        }
        prev = rec.head();
    }
    if !foreign.is_empty() {
        // Everything stays; the note names the foreign records and, as void, this log's own
        // records among them that the store never committed.
        return Ok(Some(End {
            keep: start + complete_end as u64,
            head: Some(prev),
            uncommitted: 0,
            foreign,
            void: ours,
        }));
    }
    Ok(Some(End {
        keep: start + lines[pos].1 as u64,
        head: Some(head.clone()),
        uncommitted: (lines.len() - pos - 1) as u64,
        foreign,
        void: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::AuditLog;
    use crate::store::sled::SledStore;
    use crate::store::Store;

    fn log(dir: &std::path::Path) -> AuditLog {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("store")).unwrap());
        AuditLog::new(dir.join("audit.log"), store)
    }

    /// A record larger than the first window read (a publication of many CRLs, a long list of
    /// serials) is found as the head; the write after it chains to it, and so does one after a
    /// line cut by a crash behind it.
    #[test]
    fn a_head_larger_than_the_window_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let big = "x".repeat(3 * super::TAIL_WINDOW as usize);
        let first = log
            .append("test.big", "t", serde_json::json!({ "big": big }))
            .unwrap();
        let second = log
            .append("test.small", "t", serde_json::json!({}))
            .unwrap();
        assert_eq!(second.seq, first.seq + 1);
        assert_eq!(second.prev, first.hash);
        let big2 = log
            .append("test.big", "t", serde_json::json!({ "big": big }))
            .unwrap();
        let mut bytes = std::fs::read(dir.path().join("audit.log")).unwrap();
        bytes.extend_from_slice(b"{\"seq\":");
        std::fs::write(dir.path().join("audit.log"), &bytes).unwrap();
        let after = log
            .append("test.small", "t", serde_json::json!({}))
            .unwrap();
        let records = log.records().unwrap();
        let events: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(
            events,
            [
                "test.big",
                "test.small",
                "test.big",
                super::TORN_TAIL_EVENT,
                "test.small"
            ]
        );
        assert_eq!(records[3].prev, big2.hash);
        assert_eq!(after.seq, big2.seq + 2);
        let report = log.verify(None).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.torn_tail_bytes, 0);
    }

    /// A line cut by a crash at the end of a log is reported by `verify` as such, not as an
    /// altered record; cut into the store's head, it is a removal.
    #[test]
    fn verify_tells_a_cut_uncommitted_line_from_a_removed_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        log.append("test.one", "t", serde_json::json!({})).unwrap();
        log.append("test.two", "t", serde_json::json!({})).unwrap();
        let path = dir.path().join("audit.log");
        let whole = std::fs::read(&path).unwrap();
        let mut cut = whole.clone();
        cut.extend_from_slice(b"{\"seq\":3,\"ti");
        std::fs::write(&path, &cut).unwrap();
        let report = log.verify(None).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.torn_tail_bytes, 12);
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        let report = log.verify(None).unwrap();
        assert!(!report.ok);
        assert!(
            report.problem.as_deref().unwrap_or("").contains("removed"),
            "{report:?}"
        );
    }
}
