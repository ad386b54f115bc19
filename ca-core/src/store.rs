//! Persistent state behind a trait, so that a server database can replace the embedded `sled`
//! store when one machine is not enough (DESIGN §8). The trait holds only what the code uses.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::revocation::{Reason, Revocation};
use crate::supplier::Supplier;

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
    /// Revokes certificates (one atomic write, flushed). Revoking twice is harmless: the first
    /// revocation stands and is reported. A revoked certificate is no longer the active one of
    /// its device and usage.
    fn revoke(
        &self,
        serials: &[Vec<u8>],
        revocation: &Revocation,
    ) -> Result<Vec<Revoked>, StoreError>;
    /// The revocation of a certificate, if revoked.
    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError>;
    /// The revoked certificates bound to one CRL shard of an issuer: only that shard is read.
    fn revoked_in_shard(
        &self,
        issuer: &str,
        shard: u32,
    ) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError>;
    /// Every revoked certificate of an issuer (the full CRL).
    fn revoked_of_issuer(&self, issuer: &str) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError>;
    /// A persistent counter or setting.
    fn meta_u64(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Sets a persistent counter or setting, durably.
    fn set_meta_u64(&self, key: &str, value: u64) -> Result<(), StoreError>;
    /// Stores (creates or updates) an account, durably.
    fn put_account(&self, account: &Account) -> Result<(), StoreError>;
    /// An account by name.
    fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;
    /// The account a client certificate belongs to.
    fn account_by_cert(&self, serial: &[u8]) -> Result<Option<Account>, StoreError>;
    /// Every account, by name.
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// The stored answer to an API batch (by account and request_id), for idempotent retries.
    fn batch_record(&self, account: &str, request_id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores the answer to an API batch, durably.
    fn put_batch_record(
        &self,
        account: &str,
        request_id: &str,
        record: &[u8],
    ) -> Result<(), StoreError>;
    /// Whether any certificate was ever issued to `subject_id`.
    fn subject_known(&self, subject_id: &str) -> Result<bool, StoreError>;
    /// A registered supplier.
    fn supplier(&self, id: &str) -> Result<Option<Supplier>, StoreError>;
    /// Registers or updates a supplier, durably.
    fn put_supplier(&self, supplier: &Supplier) -> Result<(), StoreError>;
    /// Every registered supplier, by ID.
    fn suppliers(&self) -> Result<Vec<Supplier>, StoreError>;
    /// The supplier currently serving a meter.
    fn meter_supplier(&self, device: &str) -> Result<Option<String>, StoreError>;
    /// The last trust-anchor update made for a meter.
    fn meter_update(&self, device: &str) -> Result<Option<UpdateMark>, StoreError>;
    /// Up to `limit` meters served by `supplier`, in ID order, starting after `after`.
    fn meters_of_supplier(
        &self,
        supplier: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// How many meters `supplier` serves.
    fn count_meters_of_supplier(&self, supplier: &str) -> Result<u64, StoreError>;
    /// Applies assignment changes in one atomic write, flushed; each only if the meter is still
    /// served by its `from` (and has not had this operation's update already).
    fn move_meters(&self, moves: &[MeterMove]) -> Result<Vec<MoveOutcome>, StoreError>;
    /// Reserves `n` numbers of a counter that only grows: returns the first (at least 1); the
    /// reservation is durable before this returns, so a number is never handed out twice.
    fn reserve_counter(&self, key: &str, n: u64) -> Result<u64, StoreError>;
    /// The journal record of a multi-step operation (JSON).
    fn op_record(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes an operation's journal record, durably.
    fn put_op_record(&self, id: &str, record: &[u8]) -> Result<(), StoreError>;
}

/// The last trust-anchor update made for a meter: its sequence number and the operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateMark {
    /// The TAMP sequence number.
    pub seq: u64,
    /// The operation that produced it.
    pub op: String,
}

/// A meter's assignment change, applied only if the meter is still where the caller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterMove {
    /// The meter, normalised EUI-64 text.
    pub device: String,
    /// The supplier the caller saw serving it (None: unassigned).
    pub from: Option<String>,
    /// The supplier serving it after the move (may equal `from`: a key change only).
    pub to: String,
    /// The update delivered for this move, recorded with it.
    pub update: Option<UpdateMark>,
}

/// What [`Store::move_meters`] did with one move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Applied.
    Applied,
    /// The meter is no longer where the caller saw it: nothing changed. Carries the current one.
    Stale(Option<String>),
    /// The meter's last update already came from this operation: nothing changed.
    AlreadyDone,
}

/// What revoking one serial did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now(Box<CertRecord>),
    /// It had been revoked before; that revocation stands.
    Already(Box<CertRecord>, Revocation),
    /// No certificate has that serial.
    Unknown(Vec<u8>),
}

/// The embedded `sled` store under `<home>/store`.
///
/// One tree holds certificates and their indexes under one-letter key prefixes, so that a whole
/// chunk of issued certificates is written with one atomic `apply_batch` (sled's multi-tree
/// transactions cost several times more). Writers are serialised by a mutex: sled's file lock
/// already makes the store single-process.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    pki: sled::Tree,
    write: std::sync::Mutex<()>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledStore")
    }
}

const CERT: u8 = b'c';
const ACTIVE: u8 = b'a';
const BY_SUBJECT: u8 = b's';
// b'h' (every certificate by issuer and shard) was written by earlier versions and never read:
// the CRLs need only the revoked ones (REVOKED_BY_SHARD). Stores that have it keep it, unused.
const CERT_COUNT: &[u8] = b"n/certs";
const REVOKED: u8 = b'r';
const ACCOUNT: u8 = b'u';
const BATCH: u8 = b'b';
const ACCOUNT_BY_CERT: u8 = b'k';
const REVOKED_BY_SHARD: u8 = b'v';
const SUPPLIER: u8 = b'p';
const METER: u8 = b'm';
const METERS_OF: u8 = b'g';
const METER_UPDATE: u8 = b't';
const OP: u8 = b'o';

fn meters_of_key(supplier: &str, device: &str) -> Vec<u8> {
    key(METERS_OF, &[supplier.as_bytes(), &[0], device.as_bytes()])
}

fn corrupt(key: &[u8], reason: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn revoked_key(serial: &[u8]) -> Vec<u8> {
    key(REVOKED, &[serial])
}

fn revoked_shard_key(issuer: &str, shard: u32, serial: &[u8]) -> Vec<u8> {
    key(
        REVOKED_BY_SHARD,
        &[issuer.as_bytes(), &[0], &shard.to_be_bytes(), serial],
    )
}

fn decode_rev(key: &[u8], v: &[u8]) -> Result<Revocation, StoreError> {
    bincode::deserialize(v).map_err(|e| StoreError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

fn encode_rev(r: &Revocation) -> Vec<u8> {
    bincode::serialize(r).expect("a Revocation always serialises")
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn active_key(subject_id: &str, profile: &str) -> Vec<u8> {
    key(ACTIVE, &[subject_id.as_bytes(), &[0], profile.as_bytes()])
}

fn subject_prefix(subject_id: &str) -> Vec<u8> {
    key(BY_SUBJECT, &[subject_id.as_bytes(), &[0]])
}

fn subject_key(subject_id: &str, issued_at: i64, serial: &[u8]) -> Vec<u8> {
    key(
        BY_SUBJECT,
        &[
            subject_id.as_bytes(),
            &[0],
            &issued_at.to_be_bytes(),
            serial,
        ],
    )
}

fn cert_key(serial: &[u8]) -> Vec<u8> {
    key(CERT, &[serial])
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
        // A bounded page cache (sled's default is 1 GiB). 24 MiB, measured with `bench api`:
        // certificates are inserted in serial order (time-prefixed serials), so the hot pages
        // are few; at 64 MiB the API server's peak RSS over 1,000,000 certificates was 70 MB
        // higher and issuance no faster.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(24 * 1024 * 1024)
            .open()?;
        Ok(SledStore {
            meta: db.open_tree("meta")?,
            pki: db.open_tree("pki")?,
            db,
            write: std::sync::Mutex::new(()),
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
        let Some(serial) = self.pki.get(active_key(subject_id, profile))? else {
            return Ok(None);
        };
        self.cert(&serial)
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        let k = cert_key(serial);
        match self.pki.get(&k)? {
            Some(v) => Ok(Some(decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn serial_taken(&self, serial: &[u8]) -> Result<bool, StoreError> {
        Ok(self.pki.contains_key(cert_key(serial))?)
    }

    fn certs_of_subject(&self, subject_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let prefix = subject_prefix(subject_id);
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix(&prefix) {
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
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        // What this batch has written so far, as later items must see it.
        let mut active_now: std::collections::HashMap<Vec<u8>, CertRecord> = Default::default();
        let mut serials: std::collections::HashSet<Vec<u8>> = Default::default();
        let mut out = Vec::with_capacity(items.len());
        let mut stored = 0u64;
        for (rec, replace) in items {
            let akey = active_key(&rec.subject_id, &rec.profile);
            let current = match active_now.get(&akey) {
                Some(r) => Some(r.clone()),
                None => match self.pki.get(&akey)? {
                    Some(serial) => {
                        Some(self.cert(&serial)?.ok_or_else(|| StoreError::Corrupt {
                            key: hex::encode(&serial),
                            reason: "the active index names a missing certificate".into(),
                        })?)
                    }
                    None => None,
                },
            };
            if let Some(existing) = &current {
                if existing.key_hash == rec.key_hash {
                    out.push(Commit::Existing(Box::new(existing.clone())));
                    continue;
                }
                if !replace {
                    out.push(Commit::Conflict(Box::new(existing.clone())));
                    continue;
                }
            }
            if serials.contains(&rec.serial) || self.serial_taken(&rec.serial)? {
                return Err(StoreError::Corrupt {
                    key: hex::encode(&rec.serial),
                    reason: "serial already used".into(),
                });
            }
            if let Some(mut prev) = current {
                prev.replaced_by = Some(rec.serial.clone());
                batch.insert(cert_key(&prev.serial), encode(&prev));
                // The replaced certificate is revoked as superseded in the same write.
                if self.pki.get(revoked_key(&prev.serial))?.is_none() {
                    let rev = encode_rev(&Revocation {
                        reason: Reason::Superseded,
                        revoked_at: rec.issued_at,
                        invalidity_date: None,
                    });
                    batch.insert(revoked_key(&prev.serial), rev.clone());
                    batch.insert(
                        revoked_shard_key(&prev.issuer, prev.shard, &prev.serial),
                        rev,
                    );
                }
            }
            batch.insert(cert_key(&rec.serial), encode(rec));
            batch.insert(akey.clone(), rec.serial.clone());
            batch.insert(
                subject_key(&rec.subject_id, rec.issued_at, &rec.serial),
                &[][..],
            );
            serials.insert(rec.serial.clone());
            active_now.insert(akey, rec.clone());
            stored += 1;
            out.push(Commit::Stored);
        }
        if all_or_nothing && out.iter().any(|c| !matches!(c, Commit::Stored)) {
            return Ok(Committed {
                stored: false,
                items: out,
            });
        }
        if stored > 0 {
            let count = self.cert_count()? + stored;
            batch.insert(CERT_COUNT, &count.to_be_bytes()[..]);
            // One atomic batch, then durable before anyone is answered.
            self.pki.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(Committed {
            stored: true,
            items: out,
        })
    }

    fn cert_count(&self) -> Result<u64, StoreError> {
        Ok(match self.pki.get(CERT_COUNT)? {
            Some(v) if v.len() == 8 => {
                u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default())
            }
            _ => 0,
        })
    }

    fn revoke(
        &self,
        serials: &[Vec<u8>],
        revocation: &Revocation,
    ) -> Result<Vec<Revoked>, StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(serials.len());
        let mut seen: std::collections::HashMap<Vec<u8>, Revocation> = Default::default();
        let rev = encode_rev(revocation);
        for serial in serials {
            let Some(rec) = self.cert(serial)? else {
                out.push(Revoked::Unknown(serial.clone()));
                continue;
            };
            let earlier = match seen.get(serial) {
                Some(r) => Some(*r),
                None => self.revocation(serial)?,
            };
            if let Some(earlier) = earlier {
                out.push(Revoked::Already(Box::new(rec), earlier));
                continue;
            }
            batch.insert(revoked_key(serial), rev.clone());
            batch.insert(
                revoked_shard_key(&rec.issuer, rec.shard, serial),
                rev.clone(),
            );
            let akey = active_key(&rec.subject_id, &rec.profile);
            if self.pki.get(&akey)?.as_deref() == Some(serial.as_slice()) {
                batch.remove(akey);
            }
            seen.insert(serial.clone(), *revocation);
            out.push(Revoked::Now(Box::new(rec)));
        }
        if !seen.is_empty() {
            self.pki.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(out)
    }

    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError> {
        let k = revoked_key(serial);
        match self.pki.get(&k)? {
            Some(v) => Ok(Some(decode_rev(&k, &v)?)),
            None => Ok(None),
        }
    }

    fn revoked_in_shard(
        &self,
        issuer: &str,
        shard: u32,
    ) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let prefix = key(
            REVOKED_BY_SHARD,
            &[issuer.as_bytes(), &[0], &shard.to_be_bytes()],
        );
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix(&prefix) {
            let (k, v) = kv?;
            out.push((k[prefix.len()..].to_vec(), decode_rev(&k, &v)?));
        }
        Ok(out)
    }

    fn revoked_of_issuer(&self, issuer: &str) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let prefix = key(REVOKED_BY_SHARD, &[issuer.as_bytes(), &[0]]);
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix(&prefix) {
            let (k, v) = kv?;
            out.push((k[prefix.len() + 4..].to_vec(), decode_rev(&k, &v)?));
        }
        Ok(out)
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.meta.get(key)? {
            Some(v) if v.len() == 8 => Ok(Some(u64::from_be_bytes(
                v.as_ref().try_into().unwrap_or_default(),
            ))),
            Some(_) => Err(StoreError::Corrupt {
                key: key.into(),
                reason: "not a u64".into(),
            }),
            None => Ok(None),
        }
    }

    fn set_meta_u64(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.meta.insert(key, &value.to_be_bytes()[..])?;
        self.db.flush()?;
        Ok(())
    }

    fn put_account(&self, account: &Account) -> Result<(), StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let k = key(ACCOUNT, &[account.name.as_bytes()]);
        if let Some(old) = self.pki.get(&k)? {
            let old: Account = serde_json::from_slice(&old).map_err(|e| StoreError::Corrupt {
                key: account.name.clone(),
                reason: e.to_string(),
            })?;
            if old.cert_serial != account.cert_serial {
                batch.remove(key(ACCOUNT_BY_CERT, &[&old.cert_serial]));
            }
        }
        batch.insert(
            k,
            serde_json::to_vec(account).expect("an Account always serialises"),
        );
        batch.insert(
            key(ACCOUNT_BY_CERT, &[&account.cert_serial]),
            account.name.as_bytes(),
        );
        self.pki.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        match self.pki.get(key(ACCOUNT, &[name.as_bytes()]))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| {
                StoreError::Corrupt {
                    key: name.into(),
                    reason: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    fn account_by_cert(&self, serial: &[u8]) -> Result<Option<Account>, StoreError> {
        match self.pki.get(key(ACCOUNT_BY_CERT, &[serial]))? {
            Some(name) => self.account(&String::from_utf8_lossy(&name)),
            None => Ok(None),
        }
    }

    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix([ACCOUNT]) {
            let (k, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    fn batch_record(&self, account: &str, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .pki
            .get(key(
                BATCH,
                &[account.as_bytes(), &[0], request_id.as_bytes()],
            ))?
            .map(|v| v.to_vec()))
    }

    fn put_batch_record(
        &self,
        account: &str,
        request_id: &str,
        record: &[u8],
    ) -> Result<(), StoreError> {
        self.pki.insert(
            key(BATCH, &[account.as_bytes(), &[0], request_id.as_bytes()]),
            record,
        )?;
        self.db.flush()?;
        Ok(())
    }

    fn subject_known(&self, subject_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .pki
            .scan_prefix(subject_prefix(subject_id))
            .next()
            .transpose()?
            .is_some())
    }

    fn supplier(&self, id: &str) -> Result<Option<Supplier>, StoreError> {
        let k = key(SUPPLIER, &[id.as_bytes()]);
        match self.pki.get(&k)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?,
            )),
            None => Ok(None),
        }
    }

    fn put_supplier(&self, supplier: &Supplier) -> Result<(), StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.pki.insert(
            key(SUPPLIER, &[supplier.id.as_bytes()]),
            serde_json::to_vec(supplier).expect("a Supplier always serialises"),
        )?;
        self.db.flush()?;
        Ok(())
    }

    fn suppliers(&self) -> Result<Vec<Supplier>, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix([SUPPLIER]) {
            let (k, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    fn meter_supplier(&self, device: &str) -> Result<Option<String>, StoreError> {
        let k = key(METER, &[device.as_bytes()]);
        match self.pki.get(&k)? {
            Some(v) => Ok(Some(
                String::from_utf8(v.to_vec()).map_err(|e| corrupt(&k, e))?,
            )),
            None => Ok(None),
        }
    }

    fn meter_update(&self, device: &str) -> Result<Option<UpdateMark>, StoreError> {
        let k = key(METER_UPDATE, &[device.as_bytes()]);
        match self.pki.get(&k)? {
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(|e| corrupt(&k, e))?)),
            None => Ok(None),
        }
    }

    fn meters_of_supplier(
        &self,
        supplier: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = key(METERS_OF, &[supplier.as_bytes(), &[0]]);
        let start = match after {
            // The smallest key after `after`'s own.
            Some(a) => {
                let mut k = meters_of_key(supplier, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for kv in self.pki.range(start..) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(String::from_utf8(k[prefix.len()..].to_vec()).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    fn count_meters_of_supplier(&self, supplier: &str) -> Result<u64, StoreError> {
        let prefix = key(METERS_OF, &[supplier.as_bytes(), &[0]]);
        let mut n = 0;
        for kv in self.pki.scan_prefix(prefix) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    fn move_meters(&self, moves: &[MeterMove]) -> Result<Vec<MoveOutcome>, StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        // What this write has done so far, as later moves of the same meter must see it.
        let mut now: std::collections::HashMap<&str, (Option<String>, Option<String>)> =
            Default::default();
        let mut out = Vec::with_capacity(moves.len());
        let mut changed = false;
        for m in moves {
            let (current, last_op) = match now.get(m.device.as_str()) {
                Some(v) => v.clone(),
                None => (
                    self.meter_supplier(&m.device)?,
                    self.meter_update(&m.device)?.map(|u| u.op),
                ),
            };
            if current != m.from {
                out.push(MoveOutcome::Stale(current));
                continue;
            }
            if let (Some(u), Some(last)) = (&m.update, &last_op) {
                if &u.op == last {
                    out.push(MoveOutcome::AlreadyDone);
                    continue;
                }
            }
            if let Some(from) = &m.from {
                batch.remove(meters_of_key(from, &m.device));
            }
            batch.insert(key(METER, &[m.device.as_bytes()]), m.to.as_bytes());
            batch.insert(meters_of_key(&m.to, &m.device), &[][..]);
            let mut op = last_op;
            if let Some(u) = &m.update {
                batch.insert(
                    key(METER_UPDATE, &[m.device.as_bytes()]),
                    bincode::serialize(u).expect("an UpdateMark always serialises"),
                );
                op = Some(u.op.clone());
            }
            now.insert(&m.device, (Some(m.to.clone()), op));
            changed = true;
            out.push(MoveOutcome::Applied);
        }
        if changed {
            self.pki.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(out)
    }

    fn reserve_counter(&self, name: &str, n: u64) -> Result<u64, StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.meta_u64(name)?.unwrap_or(0);
        let end = last.checked_add(n).ok_or_else(|| StoreError::Corrupt {
            key: name.into(),
            reason: "counter exhausted".into(),
        })?;
        self.meta.insert(name, &end.to_be_bytes()[..])?;
        self.db.flush()?;
        Ok(last + 1)
    }

    fn op_record(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.pki.get(key(OP, &[id.as_bytes()]))?.map(|v| v.to_vec()))
    }

    fn put_op_record(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.pki.insert(key(OP, &[id.as_bytes()]), record)?;
        self.db.flush()?;
        Ok(())
    }
}
