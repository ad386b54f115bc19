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
    /// A PostgreSQL database shared by any number of processes (`store.url_file`,
    /// `METERPKI_STORE_URL` or `store.url`).
    Postgres,
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
    /// PostgreSQL: a file holding the connection URL (relative to the home; keep it 0600 when
    /// it holds a password). Read first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// PostgreSQL: the connection URL, when no `url_file` and no `METERPKI_STORE_URL` is given
    /// (`postgresql://meterpki@db1,db2/meterpki?target_session_attrs=read-write`). Put no
    /// password here: use `url_file`, the environment or `~/.pgpass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The environment variable that may hold the PostgreSQL URL.
pub const STORE_URL_ENV: &str = "METERPKI_STORE_URL";

/// The PostgreSQL connection settings of `config`: from `url_file`, then `METERPKI_STORE_URL`,
/// then `url`. Errors name where the URL came from, never the URL (it may hold a password).
pub fn postgres_config(config: &StoreConfig, home: &Home) -> Result<postgres::Config, StoreError> {
    use std::str::FromStr;
    let bad = StoreError::Config;
    let (url, from) = if let Some(f) = &config.url_file {
        let path = home.resolve(f);
        let bytes = crate::fsutil::read_bounded(&path, 64 * 1024)
            .map_err(|e| bad(format!("store.url_file {}: {e}", path.display())))?;
        let private = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
        };
        if !private && String::from_utf8_lossy(&bytes).contains("password") {
            return Err(bad(format!(
                "store.url_file {} holds a password and others can read it: chmod 600 it",
                path.display()
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| bad(format!("store.url_file {}: not UTF-8 text", path.display())))?;
        (
            text.lines().next().unwrap_or_default().trim().to_string(),
            format!("store.url_file {}", path.display()),
        )
    } else if let Ok(u) = std::env::var(STORE_URL_ENV) {
        (u.trim().to_string(), STORE_URL_ENV.to_string())
    } else if let Some(u) = &config.url {
        (u.trim().to_string(), "store.url".to_string())
    } else {
        return Err(bad(format!(
            "store.backend = \"postgres\" needs the database's URL: store.url_file, {STORE_URL_ENV} or store.url"
        )));
    };
    if url.is_empty() {
        return Err(bad(format!(
            "{from} is empty: it must hold a postgresql:// URL"
        )));
    }
    let mut pg = postgres::Config::from_str(&url)
        .map_err(|e| bad(format!("{from} is not a PostgreSQL connection URL: {e}")))?;
    // A host that does not answer (down, or a standby's address during a failover) is given up
    // after a few seconds and the next host of a multi-host URL tried, instead of the request
    // waiting for the system's TCP timeout.
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(5));
    }
    Ok(pg)
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
        StoreBackend::Postgres => Ok(Arc::new(super::postgres::PgStore::open(postgres_config(
            config, home,
        )?)?)),
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
        StoreBackend::Postgres => None,
    }
}
