//! Why the store failed, in words that name no backend type.

use std::error::Error;

/// Why the store failed. Whatever the variant, a failed write stored nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (I/O, a lock held by another process, a lost connection).
    #[error("store ({backend}): {message}")]
    Backend {
        /// `sled`, `postgres`.
        backend: &'static str,
        /// What failed, for a human.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn Error + Send + Sync>>,
    },
    /// The store cannot be reached or cannot take writes now (a lost connection, a database
    /// server shutting down or starting, a standby not yet promoted): nothing the caller asked
    /// was refused; the same request, retried later, is safe (a batch is idempotent by its
    /// request ID). A write that failed at its commit may or may not have been stored.
    #[error("store ({backend}) unavailable: {message}")]
    Unavailable {
        /// `postgres`.
        backend: &'static str,
        /// What failed, for a human.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn Error + Send + Sync>>,
    },
    /// The store's settings are wrong: a database URL that does not parse, a database that does
    /// not exist, credentials it refuses. Nothing was changed; the home's configuration needs
    /// fixing.
    #[error("store: {0}")]
    Config(String),
    /// A stored value could not be decoded.
    #[error("store: corrupt value under {key}: {reason}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// Why.
        reason: String,
    },
    /// A write would break one of the store's rules (a serial used twice, a counter going
    /// back, an account created twice, ...): the whole transaction was refused.
    #[error("store: refused: {0}")]
    Refused(String),
    /// The store was written by a newer meterpki.
    #[error("store: schema version {found} is newer than this meterpki understands ({supported}); upgrade meterpki")]
    Version {
        /// Found in the store.
        found: u64,
        /// The newest this build reads.
        supported: u64,
    },
}

impl StoreError {
    /// A backend failure.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// True when the store could not be reached (retry later), not refused or broken.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// A corrupt value under `key`.
    pub fn corrupt(key: impl Into<String>, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// Why [`Store::apply`](super::Store::apply) stored nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written, so the change was not made.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}
