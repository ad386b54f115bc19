//! Persistent state behind a trait, so that a server database can replace the embedded `sled`
//! store when one machine is not enough (DESIGN §8). Issue by issue this trait grows: it holds
//! only what the code uses.

use std::path::Path;

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

/// What meterpki keeps between runs.
pub trait Store: Send + Sync {
    /// The audit chain head last appended: seq and hash.
    fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Records the audit chain head (durably, before returning).
    fn set_audit_head(&self, seq: u64, hash: &str) -> Result<(), StoreError>;
}

/// The embedded `sled` store under `<home>/store`.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledStore")
    }
}

impl SledStore {
    /// Opens (creating) the store at `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let meta = db.open_tree("meta")?;
        Ok(SledStore { db, meta })
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
}
