//! Databases for tests, on the throwaway cluster `make test` starts
//! (`scripts/test-postgres.sh`): its URL from `METERPKI_TEST_PG_URL` or target/pg-test.url. A
//! test that needs PostgreSQL fails when there is none; it never skips.

use std::path::Path;
use std::str::FromStr;

use super::{migrate, PgStore};
use crate::store::kv::KvStore;

/// The cluster's admin connection settings.
pub(crate) fn cluster() -> postgres::Config {
    let url = std::env::var("METERPKI_TEST_PG_URL").ok().or_else(|| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg-test.url");
        std::fs::read_to_string(file)
            .ok()
            .map(|s| s.trim().to_string())
    });
    let url = url.unwrap_or_else(|| {
        panic!(
            "no PostgreSQL test cluster: run `make test`, or `scripts/test-postgres.sh start` first (or set METERPKI_TEST_PG_URL)"
        )
    });
    postgres::Config::from_str(&url).expect("a PostgreSQL URL")
}

/// A database named `name` on the test cluster (created when missing), for the connection
/// settings of which the caller gets a copy.
pub(crate) fn database(name: &str) -> postgres::Config {
    let admin = cluster();
    let mut client = admin
        .connect(postgres::NoTls)
        .expect("connecting to the PostgreSQL test cluster");
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some();
    if !exists {
        // Two processes may create it at once: the loser's error is harmless.
        let _ = client.batch_execute(&format!("CREATE DATABASE \"{name}\""));
    }
    let mut config = admin.clone();
    config.dbname(name);
    config
}

/// A database of its own for `label` (a random name).
pub(crate) fn fresh_database(label: &str) -> postgres::Config {
    let name = format!("t_{label}_{:016x}", rand::random::<u64>());
    database(&name)
}

/// The store of the scratch folder `dir`: one database per folder, so that opening the same
/// folder again opens the same store.
pub(crate) fn store_for(dir: &Path) -> KvStore<PgStore> {
    let digest = crate::sha256(dir.display().to_string().as_bytes());
    let config = database(&format!("t_{}", hex::encode(&digest[..10])));
    let config = config.into();
    migrate(&config).expect("migrating the test database");
    PgStore::open(config).expect("opening the test database")
}
