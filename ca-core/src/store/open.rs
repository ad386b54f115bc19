//! Opening the store a home is configured with: the one place that names a backend.

use std::path::PathBuf;
use std::sync::Arc;

use crate::home::Home;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Which database holds the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded `sled` database under `<home>/store` (one process at a time).
    #[default]
    Sled,
}

/// `[store]` in `meterpki.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The backend (default `sled`).
    #[serde(default)]
    pub backend: StoreBackend,
    /// Where an embedded store lives (default `<home>/store`; relative to the home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Opens the store `config` names for `home`.
pub fn open(config: &StoreConfig, home: &Home) -> Result<Arc<dyn Store>, StoreError> {
    match config.backend {
        StoreBackend::Sled => {
            let path = match &config.path {
                Some(p) => home.resolve(p),
                None => home.store_dir(),
            };
            Ok(Arc::new(super::sled::SledStore::open(&path)?))
        }
    }
}

/// The directory of an embedded store (`None` for a database server): checked to exist
/// before it is opened, since opening an embedded store creates it.
pub fn embedded_dir(config: &StoreConfig, home: &Home) -> Option<PathBuf> {
    match config.backend {
        StoreBackend::Sled => Some(match &config.path {
            Some(p) => home.resolve(p),
            None => home.store_dir(),
        }),
    }
}
