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
pub fn check(store: &dyn Store) -> Result<CheckReport, StoreError> {
    let mut r = CheckReport::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = store.raw_entries(after.as_deref(), 10_000)?;
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        for (k, v) in &chunk {
            r.entries += 1;
            check_entry(store, &mut r, k, v)?;
        }
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

fn check_entry(
    store: &dyn Store,
    r: &mut CheckReport,
    k: &[u8],
    v: &[u8],
) -> Result<(), StoreError> {
    let Some((&prefix, rest)) = k.split_first() else {
        r.problem("an empty key".into());
        return Ok(());
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
                    if store.raw_get(&s)?.is_none() {
                        r.problem(format!("{name}: missing from its subject's index"));
                    }
                }
                Err(e) => r.problem(e.to_string()),
            }
        }
        ACTIVE => {
            r.active += 1;
            match store.cert(v)? {
                None => r.problem(format!(
                    "{name}: names a missing certificate {}",
                    hex::encode(v)
                )),
                Some(c) => {
                    if active_key(&c.subject_id, &c.profile) != k {
                        r.problem(format!(
                            "{name}: names certificate {} of another subject or usage",
                            c.serial_hex()
                        ));
                    }
                    if store.revocation(&c.serial)?.is_some() {
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
            match store.cert(rest)? {
                None => r.problem(format!("{name}: revokes a missing certificate")),
                Some(c) => {
                    if store
                        .raw_get(&revoked_shard_key(c.issuer, c.shard, &c.serial))?
                        .is_none()
                    {
                        r.problem(format!("{name}: missing from its CRL shard"));
                    }
                }
            }
            if let Err(e) = decode_rev(k, v) {
                r.problem(e.to_string());
            }
        }
        REVOKED_BY_SHARD => {
            // issuer \0 shard(4) serial
            let serial = rest
                .iter()
                .position(|b| *b == 0)
                .and_then(|i| rest.get(i + 5..));
            match serial {
                Some(s) if store.revocation(s)?.is_some() => {}
                _ => r.problem(format!("{name}: a CRL shard entry without its revocation")),
            }
        }
        KEY_OF | COMPROMISED => {
            r.keys += 1;
            match store.cert(v)? {
                Some(c) if c.key_hash.as_slice() == rest => {}
                _ => r.problem(format!(
                    "{name}: names a certificate of another key, or none"
                )),
            }
        }
        _ => {}
    }
    Ok(())
}
