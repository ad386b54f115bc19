//! The shared store: PostgreSQL, for homes that outgrow one machine. Any number of
//! `meterpki serve` processes (and CLI commands) use one database at once.
//!
//! The store keeps the same ordered keys and values as the embedded store (`store::kv`), in
//! one table, `meterpki_kv (k bytea PRIMARY KEY, v bytea)`: the rules of the store are written
//! once (`kv::write`) and checked once (the conformance suite) for both backends. Keys compare
//! as bytes in PostgreSQL as in sled, so a prefix scan is a range scan of the primary key.
//!
//! Writes: every transaction takes one transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`) before it reads anything, so writers from every process run one at
//! a time and each sees everything committed before it (READ COMMITTED, each statement reading
//! the latest commits). That is what makes the single-writer rules of the embedded store hold
//! across servers: a serial is never stored twice, a device has one active certificate per
//! usage, a request ID binds one body, counters only grow. Reads need no lock.
//!
//! The driver is `postgres` (the blocking client over `tokio-postgres`, by the same
//! maintainers): the store is called from blocking threads, as the sled store is, so a
//! blocking client with a small pool of connections is the natural fit; an async pool
//! (deadpool) would need a runtime inside every call.
//!
//! The schema is versioned and applied by `meterpki store migrate` ([`migrate`]); a store
//! opened on a database whose schema is missing or newer than this build knows is refused.

use std::cell::RefCell;
use std::sync::Mutex;

use postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::kv::{Entries, KvBackend, KvRead, KvStore, WriteBody};
use crate::store::{ApplyError, StoreError};

const BACKEND: &str = "postgres";

/// The key of the advisory lock every write takes (any 64-bit number the home owns).
const WRITE_LOCK: i64 = 0x6d65_7465_7270_6b69; // "meterpki"

/// The schema versions and how to reach each, in order. Each runs in its own transaction with
/// the version bump, so a migration killed half-way left nothing and is run again.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE meterpki_kv (k bytea PRIMARY KEY, v bytea NOT NULL)",
)];

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i32 = 1;

/// True when `e` says the database cannot be reached or cannot take this now, rather than that
/// the request or the data is wrong: a connection lost or refused, a timeout, a server shutting
/// down, starting or in recovery (SQLSTATE classes 08 and 57P), a read-only standby (25006), no
/// free connection slot (53300). Retrying later, perhaps on another host of a multi-host URL,
/// may succeed.
fn is_unavailable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("57P") || c == "25006" || c == "53300"
        }
        None => {
            // Not a message from the server: an I/O error (refused, reset, a host that does not
            // allow writes under target_session_attrs) or a timeout.
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if s.is::<std::io::Error>() {
                    return true;
                }
                source = s.source();
            }
            e.to_string().contains("timeout")
        }
    }
}

fn pg_err(what: impl Into<String>) -> impl FnOnce(postgres::Error) -> StoreError {
    let what = what.into();
    move |e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        if is_unavailable(&e) {
            return StoreError::Unavailable {
                backend: BACKEND,
                message: format!("{what}: {detail}"),
                source: Some(Box::new(e)),
            };
        }
        StoreError::Backend {
            backend: BACKEND,
            message: format!("{what}: {detail}"),
            source: Some(Box::new(e)),
        }
    }
}

/// Where the server is, for messages (never the password).
fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let ports = config
        .get_ports()
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{}@{host}:{ports}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// How to reach the database: the connection settings, and TLS when the URL asks for it.
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) config: postgres::Config,
    /// TLS that verifies the server's certificate (chain and host name) against the roots the
    /// URL's `sslrootcert` names; `None`: plain TCP or a Unix socket.
    tls: Option<MakeRustlsConnect>,
}

impl From<postgres::Config> for PgConfig {
    /// Settings without TLS.
    fn from(config: postgres::Config) -> PgConfig {
        PgConfig { config, tls: None }
    }
}

impl PgConfig {
    /// Settings with TLS to the server, verified against `roots` (DER certificates).
    pub(crate) fn with_tls(
        config: postgres::Config,
        roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<PgConfig, String> {
        let mut store = rustls::RootCertStore::empty();
        for cert in roots {
            store.add(cert).map_err(|e| e.to_string())?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(PgConfig {
            config,
            tls: Some(MakeRustlsConnect::new(tls)),
        })
    }

    /// True when connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Connections to the database, opened on demand and kept for reuse.
struct Pool {
    config: PgConfig,
    idle: Mutex<Vec<Client>>,
}

/// A connection borrowed from the pool; given back when dropped unless it broke.
struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Pool {
    fn get(&self) -> Result<Conn<'_>, StoreError> {
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let client = match reused {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.config)?,
        };
        Ok(Conn {
            pool: self,
            client: Some(client),
        })
    }
}

fn connect(settings: &PgConfig) -> Result<Client, StoreError> {
    use postgres::error::SqlState;
    let config = &settings.config;
    let connected = match &settings.tls {
        Some(tls) => config.connect(tls.clone()),
        None => config.connect(NoTls),
    };
    connected.map_err(|e| {
        let what = format!("connecting to PostgreSQL {}", describe(config));
        // The database or the credentials are wrong: the home's settings, not an outage.
        let settings = [
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        ];
        // A server whose certificate does not verify is not the database the home names (or
        // sslrootcert is not its CA): the settings too, never an outage to retry.
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let tls = s
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .or_else(|| s.downcast_ref::<rustls::Error>());
            if let Some(tls) = tls {
                return StoreError::Config(format!(
                    "{what}: TLS: {tls} (check sslrootcert: the CA that signed the database server's certificate, and the host name in the URL)"
                ));
            }
            source = s.source();
        }
        match e.as_db_error() {
            Some(d) if settings.contains(d.code()) => StoreError::Config(format!(
                "{what}: {} (check store.url_file, METERPKI_STORE_URL or store.url)",
                d.message()
            )),
            _ => pg_err(what)(e),
        }
    })
}

impl Conn<'_> {
    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if c.is_closed() {
                // This connection broke (the server went away, or a failover): the idle ones
                // were to the same server and are broken too, though they do not know it yet.
                // Forgetting them makes the next request connect afresh (to the new primary of
                // a multi-host URL) instead of failing once per stale connection.
                idle.clear();
            } else if idle.len() < 16 {
                idle.push(c);
            }
        }
    }
}

/// The PostgreSQL backend.
pub(crate) struct PgStore {
    pool: Pool,
}

/// The exclusive end of a prefix range: the smallest key greater than every key that starts
/// with `prefix` (`None`: no bound, the prefix is all 0xFF).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Applies every migration the database lacks; returns the versions before and after. Safe to
/// run again (and from several processes at once: it holds the write lock).
pub fn migrate(config: &PgConfig) -> Result<(i32, i32), StoreError> {
    let mut client = connect(config)?;
    let mut tx = client
        .transaction()
        .map_err(pg_err("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(pg_err("locking the store"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS meterpki_schema (version integer NOT NULL)")
        .map_err(pg_err("creating meterpki_schema"))?;
    let before: Option<i32> = tx
        .query_opt("SELECT max(version) FROM meterpki_schema", &[])
        .map_err(pg_err("reading the schema version"))?
        .and_then(|r| r.get(0));
    tx.commit().map_err(pg_err("committing the migration"))?;
    let before = before.unwrap_or(0);
    if before > SCHEMA_VERSION {
        return Err(StoreError::Version {
            found: before as u64,
            supported: SCHEMA_VERSION as u64,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > before) {
        let mut tx = client
            .transaction()
            .map_err(pg_err("starting the migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(pg_err("locking the store"))?;
        let now: Option<i32> = tx
            .query_one("SELECT max(version) FROM meterpki_schema", &[])
            .map_err(pg_err("reading the schema version"))?
            .get(0);
        if now.unwrap_or(0) >= *version {
            continue;
        }
        tx.batch_execute(sql)
            .map_err(pg_err(format!("applying schema version {version}")))?;
        tx.execute(
            "INSERT INTO meterpki_schema (version) VALUES ($1)",
            &[version],
        )
        .map_err(pg_err("recording the schema version"))?;
        tx.commit()
            .map_err(pg_err(format!("committing schema version {version}")))?;
    }
    Ok((before, SCHEMA_VERSION))
}

impl PgStore {
    /// Opens the store in the database `config` names; refuses a database without meterpki's
    /// schema (run `meterpki store migrate`) or with a newer one.
    pub(crate) fn open(config: PgConfig) -> Result<KvStore<PgStore>, StoreError> {
        let mut client = connect(&config)?;
        let version: Option<i32> =
            match client.query_one("SELECT max(version) FROM meterpki_schema", &[]) {
                Ok(row) => row.get(0),
                Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => None,
                Err(e) => return Err(pg_err("reading the schema version")(e)),
            };
        match version {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Version {
                    found: v as u64,
                    supported: SCHEMA_VERSION as u64,
                })
            }
            other => {
                return Err(StoreError::Backend {
                    backend: BACKEND,
                    message: format!(
                        "the database {} {}: run `meterpki store migrate` first",
                        describe(&config.config),
                        match other {
                            None => "has no meterpki schema".to_string(),
                            Some(v) => format!(
                            "has schema version {v}, older than this meterpki's {SCHEMA_VERSION}"
                        ),
                        }
                    ),
                    source: None,
                })
            }
        }
        let pool = Pool {
            config,
            idle: Mutex::new(vec![client]),
        };
        Ok(KvStore {
            backend: PgStore { pool },
        })
    }

    fn range(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: Option<usize>,
        values: bool,
    ) -> Result<Entries, StoreError> {
        let end = prefix_end(prefix);
        let limit = limit.map_or(i64::MAX, |l| l as i64);
        let sql = if values {
            "SELECT k, v FROM meterpki_kv WHERE k >= $1 AND ($2::bytea IS NULL OR k < $2) ORDER BY k LIMIT $3"
        } else {
            "SELECT k, ''::bytea FROM meterpki_kv WHERE k >= $1 AND ($2::bytea IS NULL OR k < $2) ORDER BY k LIMIT $3"
        };
        let rows = self
            .pool
            .get()?
            .client()
            .query(sql, &[&start, &end, &limit])
            .map_err(pg_err("reading"))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// A write transaction's view: reads inside it, after the lock.
struct TxView<'a, 'b>(RefCell<&'a mut postgres::Transaction<'b>>);

impl KvRead for TxView<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .borrow_mut()
            .query_opt("SELECT v FROM meterpki_kv WHERE k = $1", &[&key])
            .map_err(pg_err("reading"))?
            .map(|r| r.get(0)))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let rows = self
            .0
            .borrow_mut()
            .query("SELECT k, v FROM meterpki_kv WHERE k = ANY($1)", &[&keys])
            .map_err(pg_err("reading"))?;
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }
}

impl KvBackend for PgStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shared(&self) -> bool {
        true
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .pool
            .get()?
            .client()
            .query_opt("SELECT v FROM meterpki_kv WHERE k = $1", &[&key])
            .map_err(pg_err("reading"))?
            .map(|r| r.get(0)))
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .pool
            .get()?
            .client()
            .query("SELECT k, v FROM meterpki_kv WHERE k = ANY($1)", &[&keys])
            .map_err(pg_err("reading"))?;
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn scan_prefix(&self, prefix: &[u8], limit: Option<usize>) -> Result<Entries, StoreError> {
        self.range(prefix, prefix, limit, true)
    }

    fn keys_from(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .range(start, prefix, Some(limit), false)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn count_prefix(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        let end = prefix_end(prefix);
        let n: i64 = self
            .pool
            .get()?
            .client()
            .query_one(
                "SELECT count(*) FROM meterpki_kv WHERE k >= $1 AND ($2::bytea IS NULL OR k < $2)",
                &[&prefix, &end],
            )
            .map_err(pg_err("counting"))?
            .get(0);
        Ok(n as u64)
    }

    fn lease(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError> {
        // A session-level advisory lock on a connection of its own, held by the guard: closing
        // the connection (the guard dropped, or the process gone) releases it.
        let mut client = connect(&self.pool.config)?;
        let id = i64::from_be_bytes(
            crate::sha256(format!("meterpki lease {name}").as_bytes())[..8]
                .try_into()
                .expect("8 bytes"),
        );
        client
            .execute("SELECT pg_advisory_lock($1)", &[&id])
            .map_err(pg_err(format!("taking the lease {name}")))?;
        Ok(Box::new(client))
    }

    fn entries_from(&self, start: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let rows = self
            .pool
            .get()?
            .client()
            .query(
                "SELECT k, v FROM meterpki_kv WHERE k >= $1 ORDER BY k LIMIT $2",
                &[&start, &(limit as i64)],
            )
            .map_err(pg_err("reading"))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn entries_under(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.range(start, prefix, Some(limit), true)
    }

    fn advance(&self, key: &[u8], n: u64, name: &str) -> Result<u64, StoreError> {
        let mut conn = self.pool.get()?;
        let mut tx = conn
            .client()
            .transaction()
            .map_err(pg_err("reserving numbers"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(pg_err("locking the store"))?;
        let last = match tx
            .query_opt("SELECT v FROM meterpki_kv WHERE k = $1", &[&key])
            .map_err(pg_err("reading a counter"))?
        {
            Some(row) => {
                let v: Vec<u8> = row.get(0);
                super::kv::codec::decode_u64(key, &v)?
            }
            None => 0,
        };
        let end = last
            .checked_add(n)
            .ok_or_else(|| StoreError::Refused(format!("counter {name} is exhausted")))?;
        tx.execute(
            "INSERT INTO meterpki_kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            &[&key, &super::kv::codec::encode_u64(end).as_slice()],
        )
        .map_err(pg_err("writing a counter"))?;
        tx.commit().map_err(pg_err("writing a counter"))?;
        Ok(last)
    }

    fn write(&self, body: &mut WriteBody<'_>) -> Result<Result<(), StoreError>, ApplyError> {
        let mut conn = self.pool.get()?;
        let mut tx = conn
            .client()
            .transaction()
            .map_err(pg_err("starting a write"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(pg_err("locking the store"))?;
        let writes = {
            let view = TxView(RefCell::new(&mut tx));
            body(&view)?
        };
        let Some(writes) = writes else {
            // Nothing to write: the transaction ends, releasing the lock.
            tx.rollback().map_err(pg_err("ending a read"))?;
            return Ok(Ok(()));
        };
        let (mut put_k, mut put_v, mut del) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in writes {
            match v {
                Some(v) => {
                    put_k.push(k);
                    put_v.push(v);
                }
                None => del.push(k),
            }
        }
        if !del.is_empty() {
            tx.execute("DELETE FROM meterpki_kv WHERE k = ANY($1)", &[&del])
                .map_err(pg_err("writing"))?;
        }
        if !put_k.is_empty() {
            tx.execute(
                "INSERT INTO meterpki_kv (k, v) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                &[&put_k, &put_v],
            )
            .map_err(pg_err("writing"))?;
        }
        // A commit that fails may still have committed (the connection broke after the server
        // committed): the caller hears that the outcome is unknown, and the audit record stays
        // (a record past the store's head is removed at the next write if it was not).
        Ok(tx.commit().map_err(|e| StoreError::Unavailable {
            backend: BACKEND,
            message: format!(
                "committing a write failed ({e}); it may or may not have been stored: retry the same request (a batch with the same request_id answers what was stored)"
            ),
            source: None,
        }))
    }
}

#[cfg(test)]
pub(crate) mod testdb;

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::store::Store;

    crate::store_conformance!(|dir: &Path| -> Arc<dyn Store> { Arc::new(testdb::store_for(dir)) });

    /// A lease has one holder at a time: the second waits until the first guard drops.
    #[test]
    fn a_lease_has_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Store> = Arc::new(testdb::store_for(dir.path()));
        let first = s.lease("crl.publish").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = s.clone();
        let waiter = std::thread::spawn(move || {
            let g = other.lease("crl.publish").unwrap();
            tx.send(()).unwrap();
            drop(g);
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(500))
                .is_err(),
            "a second holder got the lease while the first held it"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the lease was not handed over");
        waiter.join().unwrap();
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    /// A database without the schema, or with a newer one, is refused; migrating twice is
    /// harmless.
    #[test]
    fn the_schema_is_migrated_and_checked() {
        let config: PgConfig = testdb::fresh_database("schema").into();
        let e = PgStore::open(config.clone()).unwrap_err();
        assert!(e.to_string().contains("store migrate"), "{e}");
        assert_eq!(migrate(&config).unwrap(), (0, SCHEMA_VERSION));
        assert_eq!(migrate(&config).unwrap(), (SCHEMA_VERSION, SCHEMA_VERSION));
        PgStore::open(config.clone()).unwrap();
        let mut c = connect(&config).unwrap();
        c.execute(
            "INSERT INTO meterpki_schema (version) VALUES ($1)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .unwrap();
        let e = PgStore::open(config.clone()).unwrap_err();
        assert!(matches!(e, StoreError::Version { .. }), "{e}");
        assert!(migrate(&config).is_err());
    }
}
