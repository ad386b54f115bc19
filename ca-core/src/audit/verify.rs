//! `audit verify`: every hash, link, sequence number and head signature, and the log against
//! the head the store committed.

use std::collections::HashSet;

use base64::Engine as _;
use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;

use super::{head_message, AuditError, AuditLog, AuditRecord, GENESIS, HEAD_SIGNED_EVENT};
use crate::signer::verify_signature;

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// True when the whole chain is intact.
    pub ok: bool,
    /// Records read.
    pub records: u64,
    /// Signatures by the audit key that verified (one per record since records are signed
    /// one by one; older logs have head signatures now and then).
    pub signed_heads: u64,
    /// Records no valid signature covers (0 when the log is intact).
    pub uncovered: u64,
    /// Signed records of writes that never reached the store, kept (and named void in a signed
    /// note) because records someone else wrote follow or precede them.
    pub void_records: u64,
    /// The last record's seq and hash.
    pub head: Option<(u64, String)>,
    /// Records after the store's committed head: written by a write whose store change never
    /// happened (a crash between the two); the next write removes them.
    pub uncommitted: u64,
    /// Bytes at the end that are not a whole line: a record cut by a crash while it was being
    /// written, before its store write (the next write removes them). A committed record cut
    /// this way is reported as removed.
    pub torn_tail_bytes: u64,
    /// The first problem, naming the line and the record.
    pub problem: Option<String>,
}

impl AuditLog {
    /// Checks the whole chain: every hash, every link, every sequence number, every head
    /// signature (with `audit_key`), and that the log reaches the head the store committed.
    pub fn verify(
        &self,
        audit_key: Option<&SubjectPublicKeyInfoOwned>,
    ) -> Result<AuditReport, AuditError> {
        let text = self.text()?;
        // A last line without its newline was cut while being written.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        let torn = (text.len() - whole) as u64;
        let lines: Vec<&str> = text[..whole].lines().collect();
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
            uncovered: 0,
            void_records: 0,
            head: None,
            uncommitted: 0,
            torn_tail_bytes: torn,
            problem: None,
        };
        // Records a writer found past the store's head without the audit key's signature (kept
        // as evidence, named in a signed note) and records of a write that never reached the
        // store kept with them (void).
        let mut notes = Notes::default();
        for rec in lines
            .iter()
            .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
            .filter(|r| r.event == super::FOREIGN_EVENT)
            .filter(|r| audit_key.is_some_and(|k| r.signature_verifies(k)))
        {
            let seqs = |field: &str| -> Vec<u64> {
                rec.details[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_u64)
                    .collect()
            };
            for s in seqs("records") {
                notes.foreign.insert(s, rec.seq);
            }
            notes.void.extend(seqs("void"));
        }
        let mut prev = GENESIS.to_string();
        let mut hashes = Vec::with_capacity(lines.len());
        let mut cover = Coverage::default();
        let mut problems = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            match check_line(
                i + 1,
                line,
                &prev,
                &present,
                audit_key,
                &notes,
                &mut cover,
                &mut report,
            ) {
                Ok(None) => {}
                // Named, and the rest of the log is still checked.
                Ok(Some(msg)) => problems.push(msg),
                Err(msg) => {
                    problems.push(msg);
                    report.ok = false;
                    report.problem = Some(summary(&problems));
                    return Ok(report);
                }
            }
            prev = report
                .head
                .as_ref()
                .map(|h| h.1.clone())
                .unwrap_or_default();
            hashes.push(prev.clone());
        }
        report.void_records = notes.void.len() as u64;
        // Records after the last signature: nobody with the HSM vouched for them.
        if audit_key.is_some() {
            if let Some((seq, event)) = &cover.first_uncovered {
                report.uncovered = report.records - cover.covered_to;
                problems.push(format!(
                    "record {seq} ({event}) is not covered by a valid signature of the audit key{}: it was not written by meterpki (added by hand?)",
                    if report.uncovered > 1 { format!(", nor are the {} after it", report.uncovered - 1) } else { String::new() }
                ));
            }
        }
        if !problems.is_empty() {
            report.ok = false;
            report.problem = Some(summary(&problems));
            return Ok(report);
        }
        if let Some(store) = &self.store {
            if let Some(head) = store.audit_head()? {
                let last = report.head.as_ref().map(|h| h.0).unwrap_or(0);
                let problem = if head.seq > last {
                    Some(format!(
                        "record {} was removed: the log ends at record {last} but the store recorded record {} as the head",
                        last + 1,
                        head.seq
                    ))
                } else if head.seq.checked_sub(1).and_then(|i| hashes.get(i as usize))
                    != Some(&head.hash)
                {
                    Some(format!(
                        "record {} differs from the head the store recorded",
                        head.seq
                    ))
                } else {
                    report.uncommitted = last - head.seq;
                    None
                };
                if problem.is_some() {
                    report.ok = false;
                    report.problem = problem;
                }
            }
        }
        Ok(report)
    }
}

/// How far signatures reach: every record up to `covered_to` is vouched for by a signature of
/// the audit key (its own, or a later one whose hash chain includes it).
#[derive(Default)]
struct Coverage {
    /// A record carrying its own signature has been seen: from then on every record must.
    signing: bool,
    /// The last record a valid signature covers.
    covered_to: u64,
    /// The first record after `covered_to`, if any (seq, event).
    first_uncovered: Option<(u64, String)>,
}

/// What signed notes say of other records.
#[derive(Default)]
struct Notes {
    /// Records written by someone else, and the note that names each.
    foreign: std::collections::HashMap<u64, u64>,
    /// Signed records of writes that never reached the store, kept beside foreign ones.
    void: HashSet<u64>,
}

/// The first problem, and how many more there are.
fn summary(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} more problem(s))", rest.len()),
        [] => String::new(),
    }
}

/// Checks line `n` (which must hold record `n`) against the hash before it. `Err`: the chain
/// is broken here and nothing after it can be checked; `Ok(Some)`: this record is named (not
/// signed by the audit key, or wrongly signed) and the chain goes on.
#[allow(clippy::too_many_arguments)]
fn check_line(
    n: usize,
    line: &str,
    prev: &str,
    present: &HashSet<u64>,
    audit_key: Option<&SubjectPublicKeyInfoOwned>,
    notes: &Notes,
    cover: &mut Coverage,
    report: &mut AuditReport,
) -> Result<Option<String>, String> {
    // Records are numbered from 1 with no gap, so line n must hold record n.
    let expected_seq = n as u64;
    let rec: AuditRecord = serde_json::from_str(line).map_err(|e| {
        format!("line {n}: record {expected_seq} is unreadable, it was altered ({e})")
    })?;
    if rec.compute_hash() != rec.hash {
        return Err(format!(
            "line {n}: record {} ({}) was altered: its content does not match its hash",
            rec.seq, rec.event
        ));
    }
    if rec.seq != expected_seq {
        return Err(
            if rec.seq < expected_seq || present.contains(&expected_seq) {
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
            },
        );
    }
    if rec.prev != prev {
        return Err(format!(
            "line {n}: record {} ({}) does not chain to record {}: a record was replaced",
            rec.seq,
            rec.event,
            expected_seq - 1
        ));
    }
    report.records += 1;
    report.head = Some((rec.seq, rec.hash.clone()));
    if let Some(note) = notes.foreign.get(&rec.seq) {
        return Ok(Some(format!(
            "line {n}: record {} ({}) is not signed by the audit key: it was not written by meterpki (found past the store's head by the write of record {note})",
            rec.seq, rec.event
        )));
    }
    let mut covers = false;
    match &rec.sig {
        Some(_) => {
            let key = audit_key.ok_or_else(|| {
                format!(
                    "line {n}: record {} is signed, but the audit signer's certificate (ca/audit.pem) is missing: its signatures cannot be checked",
                    rec.seq
                )
            })?;
            if !rec.signature_verifies(key) {
                return Ok(Some(format!(
                    "line {n}: record {} ({}): its signature does not verify with the audit key: it was altered or forged",
                    rec.seq, rec.event
                )));
            }
            cover.signing = true;
            covers = true;
        }
        None if cover.signing && audit_key.is_some() => {
            return Ok(Some(format!(
                "line {n}: record {} ({}) is not signed by the audit key: it was not written by meterpki (added by hand?)",
                rec.seq, rec.event
            )));
        }
        None => {}
    }
    if rec.event == HEAD_SIGNED_EVENT {
        check_head_signature(&rec, prev, audit_key)
            .map_err(|msg| format!("line {n}: record {}: {msg}", rec.seq))?;
        covers = covers || audit_key.is_some();
    }
    if covers {
        report.signed_heads += 1;
        cover.covered_to = rec.seq;
        cover.first_uncovered = None;
    } else if cover.first_uncovered.is_none() {
        cover.first_uncovered = Some((rec.seq, rec.event.clone()));
    }
    Ok(None)
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
