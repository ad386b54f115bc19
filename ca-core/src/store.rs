//! Persistent state behind a trait, so that a server database can replace the embedded `sled`
//! store when one machine is not enough (DESIGN §8). The trait holds only what the code uses.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(#[from] sled::Error),
    /// A stored value could not be decoded.
    #[error("store: corrupt value under {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// One issued certificate, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    /// Serial number bytes (positive, minimal DER content).
    pub serial: Vec<u8>,
    /// Issuing CA: `device`, `organisation`, `access`.
    pub issuer: String,
    /// Profile name; with `subject_id` it names the usage.
    pub profile: String,
    /// Device ID or entity ID, normalised EUI-64 text.
    pub subject_id: String,
    /// SHA-256 of the subject's SubjectPublicKeyInfo DER.
    pub key_hash: [u8; 32],
    /// The CRL shard the certificate is bound to.
    pub shard: u32,
    /// Issuance time, Unix seconds.
    pub issued_at: i64,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial of the certificate that replaced this one (`replace: true`).
    pub replaced_by: Option<Vec<u8>>,
}

impl CertRecord {
    /// Serial as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

/// What committing one issued certificate did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Stored.
    Stored,
    /// The same subject, usage and key already had an active certificate (a concurrent request
    /// got there first): this one is not stored, the existing one is the answer.
    Existing(Box<CertRecord>),
    /// An active certificate with another key exists and the request did not say `replace`.
    Conflict(Box<CertRecord>),
}

/// The outcome of [`Store::commit_issued`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// False when an all-or-nothing commit stored nothing (then `Stored` items mean "would
    /// have been stored").
    pub stored: bool,
    /// One per item, in order.
    pub items: Vec<Commit>,
}

/// What meterpki keeps between runs.
pub trait Store: Send + Sync {
    /// The audit chain head last appended: seq and hash.
    fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Records the audit chain head (durably, before returning).
    fn set_audit_head(&self, seq: u64, hash: &str) -> Result<(), StoreError>;
    /// The active certificate of `subject_id` for `profile`.
    fn active_cert(
        &self,
        subject_id: &str,
        profile: &str,
    ) -> Result<Option<CertRecord>, StoreError>;
    /// A certificate by serial.
    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError>;
    /// Whether a serial was ever used.
    fn serial_taken(&self, serial: &[u8]) -> Result<bool, StoreError>;
    /// Every certificate of a subject, oldest first.
    fn certs_of_subject(&self, subject_id: &str) -> Result<Vec<CertRecord>, StoreError>;
    /// Stores issued certificates (each with its `replace` flag) in one transaction,
    /// re-checking each against the active index. With `all_or_nothing`, nothing is stored
    /// unless every item is. Durable before returning.
    fn commit_issued(
        &self,
        items: &[(CertRecord, bool)],
        all_or_nothing: bool,
    ) -> Result<Committed, StoreError>;
    /// How many certificates are stored.
    fn cert_count(&self) -> Result<u64, StoreError>;
}

/// The embedded `sled` store under `<home>/store`.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    certs: sled::Tree,
    active: sled::Tree,
    by_subject: sled::Tree,
    by_shard: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledStore")
    }
}

fn active_key(subject_id: &str, profile: &str) -> Vec<u8> {
    let mut k = subject_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(profile.as_bytes());
    k
}

fn subject_key(subject_id: &str, issued_at: i64, serial: &[u8]) -> Vec<u8> {
    let mut k = subject_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&issued_at.to_be_bytes());
    k.extend_from_slice(serial);
    k
}

fn shard_key(issuer: &str, shard: u32, serial: &[u8]) -> Vec<u8> {
    let mut k = issuer.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(serial);
    k
}

fn decode(key: &[u8], v: &[u8]) -> Result<CertRecord, StoreError> {
    bincode::deserialize(v).map_err(|e| StoreError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

fn encode(r: &CertRecord) -> Vec<u8> {
    bincode::serialize(r).expect("a CertRecord always serialises")
}

impl SledStore {
    /// Opens (creating) the store at `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(SledStore {
            meta: db.open_tree("meta")?,
            certs: db.open_tree("certs")?,
            active: db.open_tree("active")?,
            by_subject: db.open_tree("by_subject")?,
            by_shard: db.open_tree("by_shard")?,
            db,
        })
    }

    /// Flushes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Store for SledStore {
    fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let Some(v) = self.meta.get("audit.head")? else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: "audit.head".into(),
            reason: reason.into(),
        };
        if v.len() < 8 {
            return Err(corrupt("too short"));
        }
        let seq = u64::from_be_bytes(v[..8].try_into().map_err(|_| corrupt("seq"))?);
        let hash = String::from_utf8(v[8..].to_vec()).map_err(|_| corrupt("hash"))?;
        Ok(Some((seq, hash)))
    }

    fn set_audit_head(&self, seq: u64, hash: &str) -> Result<(), StoreError> {
        let mut v = seq.to_be_bytes().to_vec();
        v.extend_from_slice(hash.as_bytes());
        self.meta.insert("audit.head", v)?;
        self.db.flush()?;
        Ok(())
    }

    fn active_cert(
        &self,
        subject_id: &str,
        profile: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        let Some(serial) = self.active.get(active_key(subject_id, profile))? else {
            return Ok(None);
        };
        self.cert(&serial)
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        match self.certs.get(serial)? {
            Some(v) => Ok(Some(decode(serial, &v)?)),
            None => Ok(None),
        }
    }

    fn serial_taken(&self, serial: &[u8]) -> Result<bool, StoreError> {
        Ok(self.certs.contains_key(serial)?)
    }

    fn certs_of_subject(&self, subject_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let mut prefix = subject_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.by_subject.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let serial = &k[prefix.len() + 8..];
            if let Some(r) = self.cert(serial)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn commit_issued(
        &self,
        items: &[(CertRecord, bool)],
        all_or_nothing: bool,
    ) -> Result<Committed, StoreError> {
        enum Abort {
            Store(StoreError),
            NotAll(Vec<Commit>),
        }
        let abort = |e: StoreError| ConflictableTransactionError::Abort(Abort::Store(e));
        let trees = (&self.certs, &self.active, &self.by_subject, &self.by_shard);
        let result: Result<Vec<Commit>, TransactionError<Abort>> =
            trees.transaction(|(certs, active, by_subject, by_shard)| {
                let mut out = Vec::with_capacity(items.len());
                // Writes made earlier in this transaction are visible to later reads, so two
                // items for the same subject and usage in one batch behave like two requests.
                for (rec, replace) in items {
                    let akey = active_key(&rec.subject_id, &rec.profile);
                    let mut previous = None;
                    if let Some(serial) = active.get(&akey)? {
                        let v = certs.get(&serial)?.ok_or_else(|| {
                            abort(StoreError::Corrupt {
                                key: hex::encode(&serial),
                                reason: "the active index names a missing certificate".into(),
                            })
                        })?;
                        let existing = decode(&serial, &v).map_err(abort)?;
                        if existing.key_hash == rec.key_hash {
                            out.push(Commit::Existing(Box::new(existing)));
                            continue;
                        }
                        if !replace {
                            out.push(Commit::Conflict(Box::new(existing)));
                            continue;
                        }
                        previous = Some(existing);
                    }
                    if certs.get(&rec.serial)?.is_some() {
                        return Err(abort(StoreError::Corrupt {
                            key: hex::encode(&rec.serial),
                            reason: "serial already used".into(),
                        }));
                    }
                    if let Some(mut prev) = previous {
                        prev.replaced_by = Some(rec.serial.clone());
                        certs.insert(prev.serial.clone(), encode(&prev))?;
                    }
                    certs.insert(rec.serial.clone(), encode(rec))?;
                    active.insert(akey, rec.serial.clone())?;
                    by_subject.insert(
                        subject_key(&rec.subject_id, rec.issued_at, &rec.serial),
                        &[][..],
                    )?;
                    by_shard.insert(shard_key(&rec.issuer, rec.shard, &rec.serial), &[][..])?;
                    out.push(Commit::Stored);
                }
                if all_or_nothing && out.iter().any(|c| !matches!(c, Commit::Stored)) {
                    return Err(ConflictableTransactionError::Abort(Abort::NotAll(out)));
                }
                Ok(out)
            });
        match result {
            Ok(items) => {
                // Durable before anyone is answered.
                self.db.flush()?;
                Ok(Committed {
                    stored: true,
                    items,
                })
            }
            Err(TransactionError::Abort(Abort::NotAll(items))) => Ok(Committed {
                stored: false,
                items,
            }),
            Err(TransactionError::Abort(Abort::Store(e))) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Db(e)),
        }
    }

    fn cert_count(&self) -> Result<u64, StoreError> {
        Ok(self.certs.len() as u64)
    }
}
