//! The embedded `sled` store under `<home>/store`: one process at a time (sled locks its
//! files), writers serialised by a mutex, every transaction one atomic `apply_batch` of one tree,
//! flushed before it returns.

mod codec;
mod write;

use std::path::Path;
use std::sync::Mutex;

use codec::*;

use crate::model::{Account, OpRecord, Revocation, Supplier};
use crate::store::{
    Applied, ApplyError, AuditHead, AuditStage, BatchRecord, CertRecord, Store, StoreError, Txn,
    UpdateMark,
};
use crate::CaKind;

/// The schema this build writes. 1: certificates without hwType, counters in a second tree;
/// 2: one tree, typed certificate records; 3: the index of certificates by key.
const SCHEMA_VERSION: u64 = 3;
const BACKEND: &str = "sled";

fn db_err(what: &str) -> impl Fn(sled::Error) -> StoreError + '_ {
    move |e| StoreError::backend(BACKEND, what.to_string(), e)
}

/// The embedded store.
pub(crate) struct SledStore {
    db: sled::Db,
    pki: sled::Tree,
    write: Mutex<()>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledStore")
    }
}

impl SledStore {
    /// Opens (creating) the store at `dir`, upgrading a schema-1 store in place.
    pub(crate) fn open(dir: &Path) -> Result<SledStore, StoreError> {
        // A bounded page cache (sled's default is 1 GiB). 24 MiB, measured with `bench api`:
        // certificates are inserted in serial order (time-prefixed serials), so the hot pages
        // are few; at 64 MiB the API server's peak RSS over 1,000,000 certificates was 70 MB
        // higher and issuance no faster.
        // Damaged files can make sled panic rather than return an error: either way the
        // caller gets an error naming the store.
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dir)
                .cache_capacity(24 * 1024 * 1024)
                .open()
        });
        let damaged = |detail: String| {
            StoreError::Backend {
            backend: BACKEND,
            message: format!(
                "opening {}: its files are damaged ({detail}); nothing was changed. Restore the store from a backup of this home",
                dir.display()
            ),
            source: None,
        }
        };
        let db = match opened {
            Err(_) => return Err(damaged("sled stopped while reading them".into())),
            Ok(Err(e @ sled::Error::Corruption { .. })) => return Err(damaged(e.to_string())),
            Ok(Err(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::backend(
                    BACKEND,
                    format!(
                        "opening {}: another meterpki process is using this home. A running `meterpki serve` holds the embedded store: `meterpki revoke`, `account disable` and `crl publish` go through it; stop it for other commands",
                        dir.display()
                    ),
                    e,
                ))
            }
            Ok(Err(e)) => {
                return Err(StoreError::backend(
                    BACKEND,
                    format!("opening {}", dir.display()),
                    e,
                ))
            }
            Ok(Ok(db)) => db,
        };
        let pki = db.open_tree("pki").map_err(db_err("opening tree pki"))?;
        let store = SledStore {
            db,
            pki,
            write: Mutex::new(()),
        };
        store.upgrade()?;
        Ok(store)
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.pki.get(key).map_err(db_err("reading"))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(db_err("flushing"))?;
        Ok(())
    }

    fn meta(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let k = meta_key(name);
        self.get(&k)?.map(|v| decode_u64(&k, &v)).transpose()
    }

    /// Brings an older store to [`SCHEMA_VERSION`]; refuses a newer one. Schema 1 kept counters
    /// and the audit head in a tree of their own and certificates without their hwType: the
    /// counters move into the one tree (copied, then the old tree cleared, so an interrupted
    /// upgrade is simply run again) and every certificate record is re-encoded.
    fn upgrade(&self) -> Result<(), StoreError> {
        let found = self.meta(SCHEMA)?;
        match found {
            Some(v) if v == SCHEMA_VERSION => return Ok(()),
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Version {
                    found: v,
                    supported: SCHEMA_VERSION,
                })
            }
            _ => {}
        }
        if found.is_none_or(|v| v < 2) {
            self.upgrade_to_2()?;
        }
        self.index_keys()
    }

    /// Schema 3: every certificate's key in the key index (`y`), bound to a certificate of it
    /// that is not revoked when there is one, and the keys of certificates revoked for
    /// keyCompromise marked (`x`). Run again from the start if interrupted (entries already
    /// there stay unless a better holder is found). Keys already certified for two subjects that
    /// both hold them now are counted and logged: the one not indexed cannot renew with it.
    fn index_keys(&self) -> Result<(), StoreError> {
        use std::collections::HashMap;
        let mut batch = sled::Batch::default();
        // Bound in this batch, not yet applied: key -> (serial, revoked).
        let mut pending: HashMap<[u8; 32], (Vec<u8>, bool)> = HashMap::new();
        let (mut n, mut shared) = (0usize, 0usize);
        for kv in self.pki.scan_prefix([CERT]) {
            let (k, v) = kv.map_err(db_err("reading certificates"))?;
            let rec = decode_cert(&k, &v)?;
            let revocation = self.revocation(&rec.serial)?;
            if revocation
                .as_ref()
                .is_some_and(|r| r.reason == crate::model::Reason::KeyCompromise)
            {
                batch.insert(compromised_key(&rec.key_hash), rec.serial.clone());
            }
            let revoked = revocation.is_some();
            let kk = key_of_key(&rec.key_hash);
            let current = match pending.get(&rec.key_hash) {
                Some(c) => Some(c.clone()),
                None => match self.get(&kk)? {
                    Some(serial) => {
                        let r = self.revocation(&serial)?.is_some();
                        Some((serial.to_vec(), r))
                    }
                    None => None,
                },
            };
            let bind = match &current {
                None => true,
                Some((serial, _)) if *serial == rec.serial => false,
                Some((_, holder_revoked)) => {
                    if !revoked && !*holder_revoked {
                        shared += 1;
                    }
                    *holder_revoked && !revoked
                }
            };
            if bind {
                batch.insert(kk, rec.serial.clone());
                pending.insert(rec.key_hash, (rec.serial.clone(), revoked));
            }
            n += 1;
            if n.is_multiple_of(10_000) {
                self.pki
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(db_err("indexing keys"))?;
                pending.clear();
            }
        }
        batch.insert(meta_key(SCHEMA), &encode_u64(SCHEMA_VERSION)[..]);
        self.pki
            .apply_batch(batch)
            .map_err(db_err("indexing keys"))?;
        self.flush()?;
        if n > 0 {
            tracing::info!(
                certificates = n,
                "store upgraded to schema {SCHEMA_VERSION} (certificates indexed by key)"
            );
        }
        if shared > 0 {
            tracing::warn!(
                keys = shared,
                "keys certified for more than one subject or usage were found: each stays with one of them, and the others cannot be renewed with that key (revoke them to free it)"
            );
        }
        Ok(())
    }

    /// Schema 1 to 2 (see [`SledStore::upgrade`]).
    fn upgrade_to_2(&self) -> Result<(), StoreError> {
        let old = self
            .db
            .open_tree("meta")
            .map_err(db_err("opening tree meta"))?;
        let mut batch = sled::Batch::default();
        for kv in old.iter() {
            let (k, v) = kv.map_err(db_err("reading tree meta"))?;
            batch.insert(key(META, &[&k]), v);
        }
        let mut n = 0usize;
        for kv in self.pki.scan_prefix([CERT]) {
            let (k, v) = kv.map_err(db_err("reading certificates"))?;
            let rec = decode_cert(&k, &v)?;
            batch.insert(k, encode_cert(&rec));
            n += 1;
            if n.is_multiple_of(10_000) {
                self.pki
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(db_err("upgrading certificates"))?;
            }
        }
        batch.insert(meta_key(SCHEMA), &encode_u64(2)[..]);
        self.pki
            .apply_batch(batch)
            .map_err(db_err("upgrading the store"))?;
        self.flush()?;
        old.clear().map_err(db_err("clearing tree meta"))?;
        self.flush()?;
        if n > 0 {
            tracing::info!(certificates = n, "store upgraded to schema 2");
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        let k = cert_key(serial);
        self.get(&k)?.map(|v| decode_cert(&k, &v)).transpose()
    }

    fn serial_taken(&self, serial: &[u8]) -> Result<bool, StoreError> {
        self.pki
            .contains_key(cert_key(serial))
            .map_err(db_err("reading"))
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
        for kv in self.pki.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(db_err("reading"))?;
            if let Some(r) = self.cert(&k[prefix.len() + 8..])? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn subject_known(&self, subject_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .pki
            .scan_prefix(subject_prefix(subject_id))
            .next()
            .transpose()
            .map_err(db_err("reading"))?
            .is_some())
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
        issuer: CaKind,
        shard: u32,
    ) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let mut prefix = shard_prefix(issuer);
        prefix.extend_from_slice(&shard.to_be_bytes());
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(db_err("reading"))?;
            out.push((k[prefix.len()..].to_vec(), decode_rev(&k, &v)?));
        }
        Ok(out)
    }

    fn revoked_of_issuer(&self, issuer: CaKind) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let prefix = shard_prefix(issuer);
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(db_err("reading"))?;
            out.push((k[prefix.len() + 4..].to_vec(), decode_rev(&k, &v)?));
        }
        Ok(out)
    }

    fn counter(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.meta(name)
    }

    fn setting_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        let k = text_key(name);
        self.get(&k)?
            .map(|v| {
                String::from_utf8(v.to_vec()).map_err(|e| StoreError::corrupt(printable(&k), e))
            })
            .transpose()
    }

    fn reserve(&self, counter: &str, n: u64) -> Result<u64, StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.meta(counter)?.unwrap_or(0);
        let end = last
            .checked_add(n)
            .ok_or_else(|| StoreError::Refused(format!("counter {counter} is exhausted")))?;
        self.pki
            .insert(meta_key(counter), &encode_u64(end)[..])
            .map_err(db_err("writing a counter"))?;
        self.flush()?;
        Ok(last + 1)
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
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix([ACCOUNT]) {
            let (k, v) = kv.map_err(db_err("reading"))?;
            out.push(decode_json(&k, &v)?);
        }
        Ok(out)
    }

    fn supplier(&self, id: &str) -> Result<Option<Supplier>, StoreError> {
        let k = key(SUPPLIER, &[id.as_bytes()]);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn suppliers(&self) -> Result<Vec<Supplier>, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix([SUPPLIER]) {
            let (k, v) = kv.map_err(db_err("reading"))?;
            out.push(decode_json(&k, &v)?);
        }
        Ok(out)
    }

    fn meter_supplier(&self, device: &str) -> Result<Option<String>, StoreError> {
        let k = key(METER, &[device.as_bytes()]);
        self.get(&k)?
            .map(|v| {
                String::from_utf8(v.to_vec()).map_err(|e| StoreError::corrupt(printable(&k), e))
            })
            .transpose()
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
        let mut out = Vec::new();
        for kv in self.pki.range(start..) {
            let (k, _) = kv.map_err(db_err("reading"))?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(
                String::from_utf8(k[prefix.len()..].to_vec())
                    .map_err(|e| StoreError::corrupt(printable(&k), e))?,
            );
        }
        Ok(out)
    }

    fn count_meters_of_supplier(&self, supplier: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.pki.scan_prefix(meters_of_prefix(supplier)) {
            kv.map_err(db_err("reading"))?;
            n += 1;
        }
        Ok(n)
    }

    fn operation(&self, id: &str) -> Result<Option<OpRecord>, StoreError> {
        let k = key(OPERATION, &[id.as_bytes()]);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn batch(&self, account: &str, request_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let k = batch_key(account, request_id);
        self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()
    }

    fn apply(&self, txn: Txn, audit: Option<&mut dyn AuditStage>) -> Result<Applied, ApplyError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut w = write::Writer::new(self);
        let applied = w.run(txn)?;
        let head = match audit {
            Some(stage) => {
                let current = self.audit_head()?;
                stage
                    .stage(current.as_ref(), &applied)?
                    .map(|head| (head, stage))
            }
            None => None,
        };
        // Nothing to write (held back, or every operation found what it asked for): no batch
        // and no flush.
        if (!applied.written || w.is_empty()) && head.is_none() {
            return Ok(applied);
        }
        let mut batch = if applied.written {
            w.into_batch()
        } else {
            sled::Batch::default()
        };
        if let Some((h, _)) = &head {
            batch.insert(meta_key(AUDIT_HEAD), encode_head(h));
            // The record is written, the change not yet: a crash here leaves an uncommitted
            // record, which the next write removes.
            crate::failpoint("store.after-audit");
        }
        if let Err(e) = self.pki.apply_batch(batch) {
            // Nothing was written: the record goes too.
            if let Some((_, stage)) = head {
                stage.rollback();
            }
            return Err(StoreError::backend(BACKEND, "writing", e).into());
        }
        // Applied: readers see the change and the head names the record, which stays. A failed
        // flush leaves both in place, the change perhaps not durable: the caller hears that.
        self.flush().map_err(|e| {
            StoreError::Backend {
                backend: BACKEND,
                message: format!(
                    "the change was applied and audited but may not be on disk ({e}); check the store's disk before going on"
                ),
                source: None,
            }
        })?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;

    crate::store_conformance!(|dir: &Path| -> Arc<dyn Store> { Arc::new(reopen(dir)) });

    /// Opens `dir`, waiting a little for a store this process just dropped: sled's flusher
    /// thread may still hold the file lock for a moment (another process's exit releases it
    /// at once, so only in-process reopening needs this).
    fn reopen(dir: &Path) -> SledStore {
        let mut tries = 0;
        loop {
            match SledStore::open(dir) {
                Ok(s) => return s,
                Err(StoreError::Backend { .. }) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("opening the sled store: {e:?}"),
            }
        }
    }

    /// A store written by schema 1 (counters and the audit head in a tree of their own,
    /// certificates without hwType) opens upgraded, with nothing lost.
    #[test]
    fn a_schema_one_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            let pki = db.open_tree("pki").unwrap();
            meta.insert("crl.shards", &16u64.to_be_bytes()[..]).unwrap();
            meta.insert("tamp.seq", &41u64.to_be_bytes()[..]).unwrap();
            let mut head = 7u64.to_be_bytes().to_vec();
            head.extend_from_slice(b"abc");
            meta.insert("audit.head", head).unwrap();
            let rec = CertRecordV1 {
                serial: vec![0x42, 1],
                issuer: "organisation".into(),
                profile: "supplier-signing".into(),
                subject_id: "90-B3-D5-1F-30-00-00-0A".into(),
                key_hash: [3; 32],
                shard: 2,
                issued_at: 9,
                der: vec![0x30, 0],
                replaced_by: None,
            };
            pki.insert(cert_key(&rec.serial), bincode::serialize(&rec).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.counter("crl.shards").unwrap(), Some(16));
        assert_eq!(s.reserve("tamp.seq", 1).unwrap(), 42);
        assert_eq!(
            s.audit_head().unwrap(),
            Some(AuditHead {
                seq: 7,
                hash: "abc".into()
            })
        );
        let rec = s.cert(&[0x42, 1]).unwrap().unwrap();
        assert_eq!(rec.issuer, CaKind::Organisation);
        let raw = s.get(&cert_key(&[0x42, 1])).unwrap().unwrap();
        assert_eq!(raw[0], 0xC2, "re-encoded in schema 2");
        assert_eq!(s.meta(SCHEMA).unwrap(), Some(SCHEMA_VERSION));
        assert_eq!(s.cert_with_key(&[3; 32]).unwrap(), Some(rec.clone()));
        drop(s);
        // Opening again changes nothing.
        let s = reopen(dir.path());
        assert_eq!(s.cert(&[0x42, 1]).unwrap(), Some(rec));
    }

    /// A schema-2 store (no key index) gets every certificate's key indexed when opened, and
    /// the key stays bound to its certificate's subject and usage.
    #[test]
    fn a_schema_two_store_gets_its_keys_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |serial: u8, subject: &str, key: u8| CertRecord {
            serial: vec![0x40, serial],
            issuer: CaKind::Device,
            profile: "meter-signing".into(),
            subject_id: subject.into(),
            key_hash: [key; 32],
            shard: 0,
            issued_at: 9,
            der: vec![0x30, 0],
            replaced_by: None,
            hw_type: None,
        };
        let a = rec(1, "00-DB-12-00-00-00-00-01", 5);
        let c = rec(3, "00-DB-12-00-00-00-00-03", 6);
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.pki.insert(cert_key(&a.serial), encode_cert(&a)).unwrap();
            s.pki
                .insert(active_key(&a.subject_id, &a.profile), a.serial.clone())
                .unwrap();
            s.pki.remove(key_of_key(&a.key_hash)).unwrap();
            // A certificate revoked for keyCompromise before the index existed.
            s.pki.insert(cert_key(&c.serial), encode_cert(&c)).unwrap();
            s.pki
                .insert(
                    revoked_key(&c.serial),
                    encode_rev(&Revocation {
                        reason: crate::model::Reason::KeyCompromise,
                        revoked_at: 10,
                        invalidity_date: None,
                    }),
                )
                .unwrap();
            s.pki.insert(meta_key(SCHEMA), &encode_u64(2)[..]).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.meta(SCHEMA).unwrap(), Some(SCHEMA_VERSION));
        assert_eq!(s.cert_with_key(&[5; 32]).unwrap(), Some(a.clone()));
        let other = rec(2, "00-DB-12-00-00-00-00-02", 5);
        let applied = s
            .apply(
                Txn::new().with(crate::store::Op::CommitIssued {
                    items: vec![(other, false)],
                    all_or_nothing: false,
                }),
                None,
            )
            .unwrap();
        assert_eq!(
            applied.committed(0).unwrap().items,
            vec![crate::store::Commit::KeyReused(Box::new(a))]
        );
        assert_eq!(s.compromised_key(&[6; 32]).unwrap(), Some(c));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.pki
                .insert(meta_key(SCHEMA), &encode_u64(SCHEMA_VERSION + 1)[..])
                .unwrap();
            s.flush().unwrap();
        }
        // (A lock still held by the dropped store's flusher is waited out.)
        let mut e = SledStore::open(dir.path()).unwrap_err();
        for _ in 0..50 {
            if !matches!(e, StoreError::Backend { .. }) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            e = SledStore::open(dir.path()).unwrap_err();
        }
        assert!(matches!(e, StoreError::Version { .. }), "{e}");
        assert!(e.to_string().contains("upgrade meterpki"), "{e}");
    }
}
