//! PostgreSQL for the end-to-end tests: a database of the test's own on the cluster `make test`
//! starts, or a cluster of the test's own to stop, kill or promote.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A database of its own on the PostgreSQL test cluster that `make test` starts
/// (`scripts/test-postgres.sh`; its URL in `METERPKI_TEST_PG_URL` or target/pg-test.url):
/// its connection URL. A test that needs PostgreSQL fails when there is none.
pub fn pg_database(label: &str) -> String {
    let url = std::env::var("METERPKI_TEST_PG_URL")
        .ok()
        .or_else(|| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg-test.url"),
            )
            .ok()
        })
        .map(|s| s.trim().to_string())
        .expect("no PostgreSQL test cluster: run `make test`, or `scripts/test-postgres.sh start` first");
    let name = format!("e2e_{label}_{:016x}", rand::random::<u64>());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls)
        .expect("connecting to the PostgreSQL test cluster");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    format!("{base}/{name}")
}

/// A PostgreSQL cluster of the test's own (`scripts/pg-cluster.sh`), for the tests that stop,
/// kill or promote a database: a primary, and with [`PgCluster::standby`] a synchronous
/// streaming standby. Destroyed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
}

impl PgCluster {
    fn script(&self, args: &[&str]) -> String {
        let out =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh"))
                .args(args)
                .output()
                .expect("running scripts/pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn dir(&self) -> String {
        self.dir.path().join("pg").display().to_string()
    }

    /// A new primary.
    pub fn primary() -> PgCluster {
        let c = PgCluster {
            dir: tempfile::tempdir().unwrap(),
        };
        // The server runs as the unprivileged `postgres` user when the tests run as root: it
        // must be able to pass through the temporary folder to its own.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        c.script(&["primary", &c.dir()]);
        c
    }

    /// A synchronous standby of the primary: every commit waits for it.
    pub fn standby(&self) {
        self.script(&["standby", &self.dir()]);
    }

    /// A new database `name` on the primary, and its URL: every host of the cluster, primary
    /// first, with `target_session_attrs=read-write`.
    pub fn database(&self, name: &str) -> String {
        let port = std::fs::read_to_string(self.dir.path().join("pg/primary.port")).unwrap();
        let mut admin = postgres::Client::connect(
            &format!("postgresql://postgres@127.0.0.1:{}/postgres", port.trim()),
            postgres::NoTls,
        )
        .expect("connecting to the test's PostgreSQL primary");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
        self.script(&["url", &self.dir(), name])
    }

    /// TLS on the primary, required of every TCP client (create databases first): the path
    /// of the test CA's certificate that signed the server's.
    pub fn tls(&self) -> PathBuf {
        PathBuf::from(self.script(&["tls", &self.dir()]))
    }

    /// A role `name` that must give `password` to connect over TCP.
    pub fn user(&self, name: &str, password: &str) {
        self.script(&["user", &self.dir(), name, password]);
    }

    /// `start`, `stop` (fast), `kill` (immediate, as a crash) or `promote` the cluster `name`
    /// (`primary` or `standby`).
    pub fn ctl(&self, action: &str, name: &str) {
        self.script(&[action, &self.dir(), name]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh"))
                .args(["destroy", &self.dir()])
                .output();
    }
}
