//! The store as ordered keys and values, whatever holds them: the key layout and encodings
//! ([`codec`]), the one transaction logic every backend runs ([`write`]), and [`KvStore`], the
//! [`Store`] of any [`KvBackend`]. The embedded `sled` tree and a PostgreSQL table are two such
//! backends: the rules of the store (a serial once, one active certificate per device and usage,
//! keys bound to one subject, counters that only grow, ...) are written once, here, and checked
//! once by the conformance suite for both.

pub(crate) mod cache;
pub(crate) mod check;
pub(crate) mod codec;
pub(crate) mod write;

use codec::*;

use crate::model::{Account, OpRecord, Revocation, Supplier};
use crate::store::{
    Applied, ApplyError, AuditHead, AuditStage, BatchRecord, CertRecord, PublishedCrl, RevokedPage,
    Store, StoreError, Txn, UpdateMark,
};

/// Reads of the committed state a transaction runs against.
pub(crate) trait KvRead {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values of `keys`, in their order.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
}

/// What a transaction writes: each key's new value, or `None` to remove it.
pub(crate) type WriteSet = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Keys and their values, in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The body of a write: reads through the view, returns what to write (`None`: nothing).
pub(crate) type WriteBody<'a> = dyn FnMut(&dyn KvRead) -> Result<Option<WriteSet>, ApplyError> + 'a;

/// Ordered keys and values with atomic, durable multi-key writes by one writer at a time.
pub(crate) trait KvBackend: Send + Sync {
    /// `sled`, `postgres`.
    fn name(&self) -> &'static str;
    /// True for a store several processes and machines share (PostgreSQL): the audit log and
    /// the published CRLs are kept in it.
    fn shared(&self) -> bool {
        false
    }
    /// The committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The committed values of `keys`, in their order (a database answers them in one round
    /// trip).
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Keys and values under `prefix` in key order, at most `limit`.
    fn scan_prefix(&self, prefix: &[u8], limit: Option<usize>) -> Result<Entries, StoreError>;
    /// Keys from `start` on that begin with `prefix`, in order, at most `limit`.
    fn keys_from(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError>;
    /// How many keys begin with `prefix`.
    fn count_prefix(&self, prefix: &[u8]) -> Result<u64, StoreError>;
    /// Holds the lease `name` (one holder among every process) until the guard drops.
    fn lease(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError>;
    /// Keys and values from `start` on, in key order, at most `limit`.
    fn entries_from(&self, start: &[u8], limit: usize) -> Result<Entries, StoreError>;
    /// Keys and values from `start` on that begin with `prefix`, in key order, at most `limit`.
    fn entries_under(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError>;
    /// Moves the u64 counter under `key` forward by `n` and returns its old value, durably.
    fn advance(&self, key: &[u8], n: u64, name: &str) -> Result<u64, StoreError>;
    /// One write: under the store's write lock (one writer at a time: across processes for a
    /// shared database), runs `body` against the committed state and writes what it returns in
    /// one atomic, durable write. `Err`: nothing of it was stored. `Ok(Err)`: it was applied
    /// but may not be durable (a failed flush): the caller must hear it, and the audit record
    /// stays.
    fn write(&self, body: &mut WriteBody<'_>) -> Result<Result<(), StoreError>, ApplyError>;
}

/// A [`Store`] over any [`KvBackend`].
pub(crate) struct KvStore<B> {
    pub(crate) backend: B,
}

impl<B: KvBackend> std::fmt::Debug for KvStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvStore({})", self.backend.name())
    }
}

impl<B: KvBackend> KvStore<B> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(key)
    }

    /// One write of entries outside the transaction rules (a published CRL's).
    fn write_raw(&self, body: &mut WriteBody<'_>) -> Result<(), StoreError> {
        match self.backend.write(body) {
            Ok(r) => r,
            Err(ApplyError::Store(e)) => Err(e),
            Err(e) => Err(StoreError::Refused(e.to_string())),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let k = meta_key(name);
        self.get(&k)?.map(|v| decode_u64(&k, &v)).transpose()
    }

    fn text(&self, k: &[u8]) -> Result<Option<String>, StoreError> {
        self.get(k)?
            .map(|v| String::from_utf8(v).map_err(|e| StoreError::corrupt(printable(k), e)))
            .transpose()
    }
}

impl<B: KvBackend + 'static> Store for KvStore<B> {
    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        let k = cert_key(serial);
        self.get(&k)?.map(|v| decode_cert(&k, &v)).transpose()
    }

    fn serial_taken(&self, serial: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(&cert_key(serial))?.is_some())
    }

    fn active_cert(
        &self,
        subject_id: &str,
        profile: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        match self.get(&active_key(subject_id, profile))? {
            Some(serial) => self.cert(&serial),
            None => Ok(None),
        }
    }

    fn cert_with_key(&self, key_hash: &[u8; 32]) -> Result<Option<CertRecord>, StoreError> {
        match self.get(&key_of_key(key_hash))? {
            Some(serial) => self.cert(&serial),
            None => Ok(None),
        }
    }

    fn compromised_key(&self, key_hash: &[u8; 32]) -> Result<Option<CertRecord>, StoreError> {
        match self.get(&compromised_key(key_hash))? {
            Some(serial) => self.cert(&serial),
            None => Ok(None),
        }
    }

    fn certs_of_subject(&self, subject_id: &str) -> Result<Vec<CertRecord>, StoreError> {
        let prefix = subject_prefix(subject_id);
        let mut out = Vec::new();
        for (k, _) in self.backend.scan_prefix(&prefix, None)? {
            if let Some(r) = self.cert(&k[prefix.len() + 8..])? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn subject_known(&self, subject_id: &str) -> Result<bool, StoreError> {
        Ok(!self
            .backend
            .scan_prefix(&subject_prefix(subject_id), Some(1))?
            .is_empty())
    }

    fn cert_count(&self) -> Result<u64, StoreError> {
        Ok(match self.get(CERT_COUNT)? {
            Some(v) => decode_u64(CERT_COUNT, &v)?,
            None => 0,
        })
    }

    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError> {
        let k = revoked_key(serial);
        self.get(&k)?.map(|v| decode_rev(&k, &v)).transpose()
    }

    fn revoked_in_shard(
        &self,
        issuer: crate::IssuerId,
        shard: u32,
    ) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let mut prefix = shard_prefix(issuer);
        prefix.extend_from_slice(&shard.to_be_bytes());
        self.backend
            .scan_prefix(&prefix, None)?
            .into_iter()
            .map(|(k, v)| Ok((k[prefix.len()..].to_vec(), decode_rev(&k, &v)?)))
            .collect()
    }

    fn revoked_of_issuer(
        &self,
        issuer: crate::IssuerId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<RevokedPage, StoreError> {
        let prefix = shard_prefix(issuer);
        let mut start = prefix.clone();
        if let Some(after) = after {
            // The cursor is a key's tail (shard and serial): the next key is the first after
            // it, which its tail followed by a zero byte is.
            start.extend_from_slice(after);
            start.push(0);
        }
        let limit = limit.max(1);
        let mut page = RevokedPage::default();
        let mut last = None;
        for (k, v) in self.backend.entries_under(&start, &prefix, limit)? {
            if k.len() < prefix.len() + 4 {
                return Err(StoreError::corrupt(
                    printable(&k),
                    "a revocation key without its shard",
                ));
            }
            page.entries
                .push((k[prefix.len() + 4..].to_vec(), decode_rev(&k, &v)?));
            last = Some(k[prefix.len()..].to_vec());
        }
        if page.entries.len() == limit {
            page.next = last;
        }
        Ok(page)
    }

    fn count_revoked_of_issuer(&self, issuer: crate::IssuerId) -> Result<u64, StoreError> {
        self.backend.count_prefix(&shard_prefix(issuer))
    }

    fn counter(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.meta(name)
    }

    fn setting_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.text(&text_key(name))
    }

    fn reserve(&self, counter: &str, n: u64) -> Result<u64, StoreError> {
        Ok(self.backend.advance(&meta_key(counter), n, counter)? + 1)
    }

    fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let k = meta_key(AUDIT_HEAD);
        self.get(&k)?.map(|v| decode_head(&k, &v)).transpose()
    }

    fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let k = key(ACCOUNT, &[name.as_bytes()]);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn account_by_cert(&self, serial: &[u8]) -> Result<Option<Account>, StoreError> {
        match self.get(&key(ACCOUNT_BY_CERT, &[serial]))? {
            Some(name) => self.account(&String::from_utf8_lossy(&name)),
            None => Ok(None),
        }
    }

    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.backend
            .scan_prefix(&[ACCOUNT], None)?
            .into_iter()
            .map(|(k, v)| decode_json(&k, &v))
            .collect()
    }

    fn supplier(&self, id: &str) -> Result<Option<Supplier>, StoreError> {
        let k = key(SUPPLIER, &[id.as_bytes()]);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn suppliers(&self) -> Result<Vec<Supplier>, StoreError> {
        self.backend
            .scan_prefix(&[SUPPLIER], None)?
            .into_iter()
            .map(|(k, v)| decode_json(&k, &v))
            .collect()
    }

    fn meter_supplier(&self, device: &str) -> Result<Option<String>, StoreError> {
        self.text(&key(METER, &[device.as_bytes()]))
    }

    fn meter_update(&self, device: &str) -> Result<Option<UpdateMark>, StoreError> {
        let k = key(METER_UPDATE, &[device.as_bytes()]);
        self.get(&k)?.map(|v| decode_bin(&k, &v)).transpose()
    }

    fn meters_of_supplier(
        &self,
        supplier: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = meters_of_prefix(supplier);
        let start = match after {
            // The smallest key after `after`'s own.
            Some(a) => {
                let mut k = meters_of_key(supplier, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        self.backend
            .keys_from(&start, &prefix, limit)?
            .into_iter()
            .map(|k| {
                String::from_utf8(k[prefix.len()..].to_vec())
                    .map_err(|e| StoreError::corrupt(printable(&k), e))
            })
            .collect()
    }

    fn count_meters_of_supplier(&self, supplier: &str) -> Result<u64, StoreError> {
        self.backend.count_prefix(&meters_of_prefix(supplier))
    }

    fn operation(&self, id: &str) -> Result<Option<OpRecord>, StoreError> {
        let k = key(OPERATION, &[id.as_bytes()]);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn batch(&self, account: &str, request_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let k = batch_key(account, request_id);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn raw_entries(&self, after: Option<&[u8]>, limit: usize) -> Result<Entries, StoreError> {
        let start = match after {
            Some(a) => [a, &[0]].concat(),
            None => Vec::new(),
        };
        self.backend.entries_from(&start, limit)
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }

    fn raw_get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.backend.get_many(keys)
    }

    fn lease(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError> {
        self.backend.lease(name)
    }

    fn is_shared(&self) -> bool {
        self.backend.shared()
    }

    fn put_published_crl_part(
        &self,
        name: &str,
        number: u64,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let k = crl_part_key(name, number, index);
        let mut entries = Some(vec![(k, Some(bytes.to_vec()))]);
        self.write_raw(&mut |_| Ok(entries.take()))
    }

    fn put_published_crl(&self, name: &str, crl: &PublishedCrl) -> Result<bool, StoreError> {
        let meta_k = key(CRL_META, &[name.as_bytes()]);
        // The parts of every other version of this CRL (an older one's, a crashed writer's)
        // go with this write. The `crl.publish` lease its callers hold keeps another writer's
        // parts from appearing meanwhile.
        let prefix = crl_part_key(name, 0, 0)[..name.len() + 2].to_vec();
        let mut stale = Vec::new();
        let mut start = prefix.clone();
        loop {
            let keys = self.backend.keys_from(&start, &prefix, 1_000)?;
            let Some(last) = keys.last() else { break };
            start = last.clone();
            start.push(0);
            let n = keys.len();
            stale.extend(keys.into_iter().filter(|k| {
                k.get(prefix.len()..prefix.len() + 8) != Some(&crl.number.to_be_bytes()[..])
            }));
            if n < 1_000 {
                break;
            }
        }
        let mut stored = false;
        self.write_raw(&mut |view: &dyn KvRead| {
            // Only ever a newer CRL: a late writer never puts an older one back.
            let current = match view.get(&meta_k)? {
                Some(v) => Some(crl_meta_number(&meta_k, &v)?),
                None => None,
            };
            if current.is_some_and(|n| n >= crl.number) {
                return Ok(None);
            }
            stored = true;
            // The version replaced keeps its parts until the next publication, so that a
            // server reading it now finishes; every other version's go.
            let replaced = current.map(u64::to_be_bytes);
            let mut w: WriteSet = stale
                .iter()
                .filter(|k| {
                    replaced.as_ref().map(|r| &r[..]) != k.get(prefix.len()..prefix.len() + 8)
                })
                .map(|k| (k.clone(), None))
                .collect();
            // The whole DER under one key, as the first PostgreSQL builds kept it.
            w.push((key(CRL_DER, &[name.as_bytes()]), None));
            w.push((meta_k.clone(), Some(encode_crl_meta(crl))));
            Ok(Some(w))
        })?;
        Ok(stored)
    }

    fn published_crl(&self, name: &str) -> Result<Option<PublishedCrl>, StoreError> {
        let k = key(CRL_META, &[name.as_bytes()]);
        match self.get(&k)? {
            // An entry of the first PostgreSQL builds (the DER whole, no parts): nothing to
            // fetch in parts; the next publication replaces it.
            Some(v) if v.len() == LEGACY_CRL_META_LEN => Ok(None),
            Some(v) => decode_crl_meta(&k, &v).map(Some),
            None => Ok(None),
        }
    }

    fn published_crl_part(
        &self,
        name: &str,
        number: u64,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&crl_part_key(name, number, index))
    }

    fn audit_record_lines(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .backend
            .scan_prefix(&[AUDIT_RECORD], None)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    fn raw_import(&self, entries: Entries) -> Result<(), StoreError> {
        let mut entries = Some(entries);
        match self.backend.write(&mut |_| {
            Ok(Some(
                entries
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, Some(v)))
                    .collect(),
            ))
        }) {
            Ok(r) => r,
            Err(ApplyError::Store(e)) => Err(e),
            Err(e) => Err(StoreError::Refused(e.to_string())),
        }
    }

    fn apply(&self, txn: Txn, audit: Option<&mut dyn AuditStage>) -> Result<Applied, ApplyError> {
        let mut audit = audit;
        let mut txn = Some(txn);
        let mut result = None;
        let mut staged = false;
        let written = self.backend.write(&mut |view: &dyn KvRead| {
            let mut w = write::Writer::new(view);
            let applied = w.run(txn.take().unwrap_or_default())?;
            let head = match audit.as_deref_mut() {
                Some(stage) => {
                    let k = meta_key(AUDIT_HEAD);
                    let current = view.get(&k)?.map(|v| decode_head(&k, &v)).transpose()?;
                    stage.stage(current.as_ref(), &applied)?
                }
                None => None,
            };
            // Nothing to write (held back, or every operation found what it asked for).
            if (!applied.written || w.is_empty()) && head.is_none() {
                result = Some(applied);
                return Ok(None);
            }
            let mut writes = if applied.written {
                w.into_writes()
            } else {
                Vec::new()
            };
            if let Some(h) = &head {
                if let Some((seq, line)) = audit.as_deref_mut().and_then(|s| s.record_for_store()) {
                    writes.push((audit_record_key(seq), Some(line)));
                }
                writes.push((meta_key(AUDIT_HEAD), Some(encode_head(h))));
                staged = true;
                // The record is written, the change not yet: a crash here leaves an
                // uncommitted record, which the next write removes.
                crate::failpoint("store.after-audit");
            }
            result = Some(applied);
            Ok(Some(writes))
        });
        match written {
            Err(e) => {
                // Nothing was written: the record goes too.
                if staged {
                    if let Some(stage) = audit {
                        stage.rollback();
                    }
                }
                return Err(e);
            }
            // Applied, perhaps not durable: the record stays, the caller hears it.
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(())) => {}
        }
        result.ok_or_else(|| {
            ApplyError::Store(StoreError::Refused(
                "the store's write ran no transaction".into(),
            ))
        })
    }
}
