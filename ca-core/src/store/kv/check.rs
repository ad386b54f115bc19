//! `meterpki store check`: every index and counter of a store held against the records they
//! point at, read a chunk at a time in key order (whatever the backend).

use serde::Serialize;

use super::codec::*;
use crate::store::{Store, StoreError};

/// What a check found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// Entries read.
    pub entries: u64,
    /// Certificates.
    pub certificates: u64,
    /// Revocations.
    pub revocations: u64,
    /// Active-certificate index entries.
    pub active: u64,
    /// Key index entries.
    pub keys: u64,
    /// What is wrong (at most 50).
    pub problems: Vec<String>,
}

impl CheckReport {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 50 {
            self.problems.push(p);
        }
    }
}

/// Checks `store`: records decode, every index entry names a record that agrees with it, every
/// revocation is listed in its CRL shard and back, and the certificate count is right.
///
/// A chunk of entries at a time, and the records each chunk's entries point at read in two
/// batched reads (the records, then the CRL shard entries of the revoked ones): on a database
/// server a check is a few round trips per 10,000 entries, not one per entry.
pub fn check(store: &dyn Store) -> Result<CheckReport, StoreError> {
    let mut r = CheckReport::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = store.raw_entries(after.as_deref(), 10_000)?;
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        check_chunk(store, &mut r, &chunk)?;
    }
    let counted = store.cert_count()?;
    if counted != r.certificates {
        r.problem(format!(
            "the certificate count says {counted}, but {} certificates are stored",
            r.certificates
        ));
    }
    Ok(r)
}

/// The values of `keys` (deduplicated), in one batched read.
fn fetch(
    store: &dyn Store,
    keys: Vec<Vec<u8>>,
) -> Result<std::collections::HashMap<Vec<u8>, Vec<u8>>, StoreError> {
    let keys: Vec<Vec<u8>> = keys
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let values = store.raw_get_many(&keys)?;
    Ok(keys
        .into_iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

fn check_chunk(
    store: &dyn Store,
    r: &mut CheckReport,
    chunk: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), StoreError> {
    // What every entry of the chunk points at, read at once.
    let mut wanted = Vec::new();
    for (k, v) in chunk {
        let Some((&prefix, rest)) = k.split_first() else {
            continue;
        };
        match prefix {
            CERT => {
                if let Ok(c) = decode_cert(k, v) {
                    wanted.push(subject_key(&c.subject_id, c.issued_at, &c.serial));
                }
            }
            ACTIVE => {
                wanted.push(cert_key(v));
                wanted.push(revoked_key(v));
            }
            REVOKED => wanted.push(cert_key(rest)),
            REVOKED_BY_SHARD => {
                if let Some(serial) = shard_entry_serial(rest) {
                    wanted.push(revoked_key(serial));
                }
            }
            KEY_OF | COMPROMISED => wanted.push(cert_key(v)),
            _ => {}
        }
    }
    let found = fetch(store, wanted)?;
    let cert_of = |serial: &[u8]| -> Result<Option<crate::store::CertRecord>, StoreError> {
        let k = cert_key(serial);
        found.get(&k).map(|v| decode_cert(&k, v)).transpose()
    };
    // The CRL shard entries of the revoked certificates: they depend on the records just read.
    let mut shard_keys = Vec::new();
    for (k, _) in chunk {
        if let Some((&REVOKED, rest)) = k.split_first() {
            if let Ok(Some(c)) = cert_of(rest) {
                shard_keys.push(revoked_shard_key(c.issuer_id(), c.shard, &c.serial));
            }
        }
    }
    let shards = fetch(store, shard_keys)?;

    for (k, v) in chunk {
        r.entries += 1;
        let Some((&prefix, rest)) = k.split_first() else {
            r.problem("an empty key".into());
            continue;
        };
        let name = printable(k);
        match prefix {
            CERT => {
                r.certificates += 1;
                match decode_cert(k, v) {
                    Ok(c) if c.serial != rest => {
                        r.problem(format!("{name}: holds serial {}", c.serial_hex()))
                    }
                    Ok(c) => {
                        let s = subject_key(&c.subject_id, c.issued_at, &c.serial);
                        if !found.contains_key(&s) {
                            r.problem(format!("{name}: missing from its subject's index"));
                        }
                    }
                    Err(e) => r.problem(e.to_string()),
                }
            }
            ACTIVE => {
                r.active += 1;
                match cert_of(v)? {
                    None => r.problem(format!(
                        "{name}: names a missing certificate {}",
                        hex::encode(v)
                    )),
                    Some(c) => {
                        if active_key(&c.subject_id, &c.profile) != *k {
                            r.problem(format!(
                                "{name}: names certificate {} of another subject or usage",
                                c.serial_hex()
                            ));
                        }
                        if found.contains_key(&revoked_key(&c.serial)) {
                            r.problem(format!(
                                "{name}: names revoked certificate {}",
                                c.serial_hex()
                            ));
                        }
                    }
                }
            }
            REVOKED => {
                r.revocations += 1;
                match cert_of(rest)? {
                    None => r.problem(format!("{name}: revokes a missing certificate")),
                    Some(c) => {
                        if !shards.contains_key(&revoked_shard_key(
                            c.issuer_id(),
                            c.shard,
                            &c.serial,
                        )) {
                            r.problem(format!("{name}: missing from its CRL shard"));
                        }
                    }
                }
                if let Err(e) = decode_rev(k, v) {
                    r.problem(e.to_string());
                }
            }
            REVOKED_BY_SHARD => match shard_entry_serial(rest) {
                Some(s) if found.contains_key(&revoked_key(s)) => {}
                _ => r.problem(format!("{name}: a CRL shard entry without its revocation")),
            },
            KEY_OF | COMPROMISED => {
                r.keys += 1;
                match cert_of(v)? {
                    Some(c) if c.key_hash.as_slice() == rest => {}
                    _ => r.problem(format!(
                        "{name}: names a certificate of another key, or none"
                    )),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The serial of a CRL shard entry's key (after its prefix): issuer, NUL, shard (4 bytes),
/// serial.
fn shard_entry_serial(rest: &[u8]) -> Option<&[u8]> {
    rest.iter()
        .position(|b| *b == 0)
        .and_then(|i| rest.get(i + 5..))
}
