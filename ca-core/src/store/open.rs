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
///
/// TLS: `sslmode=require` (or `verify-ca`, `verify-full`, all meaning the same here) makes every
/// connection TLS, with the server's certificate chain and host name verified against the CA
/// certificates of `sslrootcert=FILE` (PEM, relative to the home), which is then required: a
/// CA's store is never reached over a connection whose server is not authenticated.
/// `disable`, or no `sslmode`, is plain TCP (a Unix socket, or a private network); `prefer` and
/// `allow`, which fall back to plain TCP when the connection is attacked, are refused.
pub fn postgres_config(
    config: &StoreConfig,
    home: &Home,
) -> Result<super::postgres::PgConfig, StoreError> {
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
    let (url, tls) = take_tls_options(&url);
    let mut pg = postgres::Config::from_str(&url)
        .map_err(|e| bad(format!("{from} is not a PostgreSQL connection URL: {e}")))?;
    // A host that does not answer (down, or a standby's address during a failover) is given up
    // after a few seconds and the next host of a multi-host URL tried, instead of the request
    // waiting for the system's TCP timeout.
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(5));
    }
    match tls.mode.as_deref() {
        None | Some("disable") => {
            if tls.root_cert.is_some() {
                return Err(bad(format!(
                    "{from}: sslrootcert is given but sslmode is not require/verify-full: say sslmode=verify-full to use TLS"
                )));
            }
            Ok(pg.into())
        }
        Some("require" | "verify-ca" | "verify-full") => {
            let Some(file) = tls.root_cert else {
                return Err(bad(format!(
                    "{from}: sslmode={} needs sslrootcert=FILE, the CA certificate(s) (PEM) that signed the database server's certificate: meterpki always verifies the server",
                    tls.mode.unwrap_or_default()
                )));
            };
            let path = home.resolve(std::path::Path::new(&file));
            let pem = crate::fsutil::read_bounded(&path, 1024 * 1024)
                .map_err(|e| bad(format!("{from}: sslrootcert {}: {e}", path.display())))?;
            let roots: Vec<_> = {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        bad(format!("{from}: sslrootcert {}: {e:?}", path.display()))
                    })?
            };
            if roots.is_empty() {
                return Err(bad(format!(
                    "{from}: sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
            pg.ssl_mode(postgres::config::SslMode::Require);
            super::postgres::PgConfig::with_tls(pg, roots).map_err(|e| {
                bad(format!("{from}: sslrootcert {}: {e}", path.display()))
            })
        }
        Some(other) => Err(bad(format!(
            "{from}: sslmode={other} is not accepted: use verify-full (TLS, the server verified against sslrootcert) or disable (a Unix socket or a private network); prefer and allow fall back to plain TCP when the connection is attacked"
        ))),
    }
}

/// The TLS options of a connection URL that meterpki applies itself (the driver knows only
/// `disable`, `prefer` and `require`, and no `sslrootcert`).
#[derive(Default)]
struct TlsOptions {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// `url` without its `sslmode` and `sslrootcert` options, and those options: in a URL's query
/// (`postgresql://h/db?sslmode=verify-full&sslrootcert=ca.pem`, values percent-decoded) or
/// among `key=value` words (`host=h sslmode=verify-full sslrootcert=ca.pem`).
fn take_tls_options(url: &str) -> (String, TlsOptions) {
    let mut tls = TlsOptions::default();
    let mut take = |k: &str, v: String| match k {
        "sslmode" => {
            tls.mode = Some(v);
            true
        }
        "sslrootcert" => {
            tls.root_cert = Some(v);
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), tls);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                !take(k, percent_decode(v))
            })
            .collect();
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (url, tls);
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|word| {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            !take(k.trim(), v.trim_matches('\'').to_string())
        })
        .collect();
    (kept.join(" "), tls)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
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

#[cfg(test)]
mod tls_option_tests {
    use super::take_tls_options;

    #[test]
    fn tls_options_are_taken_out_of_urls_and_key_value_strings() {
        let (url, tls) = take_tls_options(
            "postgresql://m@db1:5432,db2:5432/pki?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=%2Fetc%2Fdb%20ca.pem",
        );
        assert_eq!(
            url,
            "postgresql://m@db1:5432,db2:5432/pki?target_session_attrs=read-write"
        );
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/db ca.pem"));
        let (url, tls) = take_tls_options("postgresql://m@db/pki?sslmode=disable");
        assert_eq!(url, "postgresql://m@db/pki");
        assert_eq!(tls.mode.as_deref(), Some("disable"));
        let (url, tls) =
            take_tls_options("host=db user=m sslmode=require sslrootcert='ca.pem' dbname=pki");
        assert_eq!(url, "host=db user=m dbname=pki");
        assert_eq!(tls.mode.as_deref(), Some("require"));
        assert_eq!(tls.root_cert.as_deref(), Some("ca.pem"));
        let (url, tls) = take_tls_options("postgresql://m@db/pki");
        assert_eq!(url, "postgresql://m@db/pki");
        assert!(tls.mode.is_none() && tls.root_cert.is_none());
    }
}
