//! The embedded `sled` store under `<home>/store`: one process at a time (sled locks its
//! files), writers serialised by a mutex, every transaction one atomic `apply_batch` of one tree,
//! flushed before it returns.

use std::path::Path;
use std::sync::Mutex;

use super::kv::codec::*;
use super::kv::{Entries, KvBackend, KvRead, KvStore, WriteBody};
use crate::store::{ApplyError, StoreError};

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
    /// Opens (creating) the store at `dir`, upgrading an older store in place.
    pub(crate) fn open(dir: &Path) -> Result<KvStore<SledStore>, StoreError> {
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
        Ok(KvStore { backend: store })
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.pki.get(key).map_err(db_err("reading"))
    }

    fn revocation_of(&self, serial: &[u8]) -> Result<Option<crate::model::Revocation>, StoreError> {
        let k = revoked_key(serial);
        self.raw_get(&k)?.map(|v| decode_rev(&k, &v)).transpose()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(db_err("flushing"))?;
        Ok(())
    }

    fn meta(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let k = meta_key(name);
        self.raw_get(&k)?.map(|v| decode_u64(&k, &v)).transpose()
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
            let revocation = self.revocation_of(&rec.serial)?;
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
                None => match self.raw_get(&kk)? {
                    Some(serial) => {
                        let r = self.revocation_of(&serial)?.is_some();
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

impl KvBackend for SledStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.raw_get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8], limit: Option<usize>) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.scan_prefix(prefix) {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let (k, v) = kv.map_err(db_err("reading"))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn keys_from(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.range(start..) {
            let (k, _) = kv.map_err(db_err("reading"))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    fn count_prefix(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.pki.scan_prefix(prefix) {
            kv.map_err(db_err("reading"))?;
            n += 1;
        }
        Ok(n)
    }

    fn lease(&self, _name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError> {
        // One process holds the embedded store: its callers' own locks are enough.
        Ok(Box::new(()))
    }

    fn entries_from(&self, start: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(db_err("reading"))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn entries_under(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        for kv in self.pki.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(db_err("reading"))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn advance(&self, key: &[u8], n: u64, name: &str) -> Result<u64, StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let last = match self.raw_get(key)? {
            Some(v) => decode_u64(key, &v)?,
            None => 0,
        };
        let end = last
            .checked_add(n)
            .ok_or_else(|| StoreError::Refused(format!("counter {name} is exhausted")))?;
        self.pki
            .insert(key, &encode_u64(end)[..])
            .map_err(db_err("writing a counter"))?;
        self.flush()?;
        Ok(last)
    }

    fn write(&self, body: &mut WriteBody<'_>) -> Result<Result<(), StoreError>, ApplyError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(writes) = body(self)? else {
            return Ok(Ok(()));
        };
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.pki
            .apply_batch(batch)
            .map_err(|e| StoreError::backend(BACKEND, "writing", e))?;
        // Applied: readers see the change. A failed flush leaves it in place, perhaps not
        // durable: the caller hears that.
        Ok(self.flush().map_err(|e| StoreError::Backend {
            backend: BACKEND,
            message: format!(
                "the change was applied and audited but may not be on disk ({e}); check the store's disk before going on"
            ),
            source: None,
        }))
    }
}

impl KvRead for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        KvBackend::get(self, key)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::model::Revocation;
    use crate::store::{AuditHead, CertRecord, Store, Txn};
    use crate::CaKind;

    crate::store_conformance!(|dir: &Path| -> Arc<dyn Store> { Arc::new(reopen(dir)) });

    /// Opens `dir`, waiting a little for a store this process just dropped: sled's flusher
    /// thread may still hold the file lock for a moment (another process's exit releases it
    /// at once, so only in-process reopening needs this).
    fn reopen(dir: &Path) -> KvStore<SledStore> {
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
        let raw = s.backend.raw_get(&cert_key(&[0x42, 1])).unwrap().unwrap();
        assert_eq!(raw[0], 0xC2, "re-encoded in schema 2");
        assert_eq!(s.backend.meta(SCHEMA).unwrap(), Some(SCHEMA_VERSION));
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
            issuer_generation: 1,
        };
        let a = rec(1, "00-DB-12-00-00-00-00-01", 5);
        let c = rec(3, "00-DB-12-00-00-00-00-03", 6);
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.backend
                .pki
                .insert(cert_key(&a.serial), encode_cert(&a))
                .unwrap();
            s.backend
                .pki
                .insert(active_key(&a.subject_id, &a.profile), a.serial.clone())
                .unwrap();
            s.backend.pki.remove(key_of_key(&a.key_hash)).unwrap();
            // A certificate revoked for keyCompromise before the index existed.
            s.backend
                .pki
                .insert(cert_key(&c.serial), encode_cert(&c))
                .unwrap();
            s.backend
                .pki
                .insert(
                    revoked_key(&c.serial),
                    encode_rev(&Revocation {
                        reason: crate::model::Reason::KeyCompromise,
                        revoked_at: 10,
                        invalidity_date: None,
                    }),
                )
                .unwrap();
            s.backend
                .pki
                .insert(meta_key(SCHEMA), &encode_u64(2)[..])
                .unwrap();
            s.backend.flush().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.backend.meta(SCHEMA).unwrap(), Some(SCHEMA_VERSION));
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
            s.backend
                .pki
                .insert(meta_key(SCHEMA), &encode_u64(SCHEMA_VERSION + 1)[..])
                .unwrap();
            s.backend.flush().unwrap();
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
