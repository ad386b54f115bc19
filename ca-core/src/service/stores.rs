//! The store's administration: its schema (`meterpki store migrate`), a copy of an embedded
//! store into PostgreSQL that switches the home over only when both agree (`meterpki store
//! migrate --to postgres`), and a check of every index and counter (`meterpki store check`).

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{authorize, Action, Actor, Service, ServiceError};
use crate::store::{CheckReport, Store, StoreBackend, StoreConfig};

/// What `store migrate` did to a PostgreSQL schema.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaMigrated {
    /// The schema version before.
    pub from: i32,
    /// The schema version now.
    pub to: i32,
}

/// What a copy into PostgreSQL found and did.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCopied {
    /// Entries (records and index entries) in each store.
    pub entries: u64,
    /// Certificates copied.
    pub certificates: u64,
    /// Revocations copied.
    pub revocations: u64,
    /// SHA-256 over every entry, in key order, the same in both stores.
    pub digest: String,
    /// The home's meterpki.toml now names the PostgreSQL store.
    pub switched: bool,
}

/// Entries per chunk copied.
const CHUNK: usize = 5_000;

/// Count and SHA-256 of every entry of `store`, in key order (each as the lengths and bytes of
/// its key and value), but the audit records a shared store keeps (the embedded store's are in
/// the home's file; they are copied and checked on their own).
fn fingerprint(store: &dyn Store) -> Result<(u64, String), ServiceError> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = store.raw_entries(after.as_deref(), CHUNK)?;
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        for (k, v) in &chunk {
            if k.first() == Some(&crate::store::kv::codec::AUDIT_RECORD) {
                continue;
            }
            h.update((k.len() as u64).to_be_bytes());
            h.update(k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
            n += 1;
        }
    }
    Ok((n, hex::encode(h.finalize())))
}

impl Service {
    /// Applies the PostgreSQL schema migrations this build ships to the home's database.
    pub fn store_migrate_schema(&self, actor: &Actor) -> Result<SchemaMigrated, ServiceError> {
        authorize(actor, Action::Administer)?;
        if self.config.store.backend != StoreBackend::Postgres {
            return Err(ServiceError::invalid(
                "store",
                "this home's store is the embedded one (store.backend = \"sled\"), which upgrades itself when opened; to move it to PostgreSQL: meterpki store migrate --to postgres --url-file FILE",
            ));
        }
        let config = crate::store::postgres_config(&self.config.store, &self.home)?;
        let (from, to) = crate::store::postgres::migrate(&config)?;
        Ok(SchemaMigrated { from, to })
    }

    /// Checks every index and counter of the home's store.
    pub fn store_check(&self, actor: &Actor) -> Result<CheckReport, ServiceError> {
        authorize(actor, Action::Administer)?;
        Ok(crate::store::check(self.store()?.as_ref())?)
    }

    /// Copies the embedded store into the (empty) PostgreSQL database that `url_file` names,
    /// checks that both hold the same entries (counts and a SHA-256 of every entry), records
    /// the move in the audit log and only then switches meterpki.toml to the database.
    /// Interrupted, it is simply run again: copying an entry twice writes the same bytes. A
    /// database that holds entries of another store is refused, and nothing is switched.
    pub fn store_copy_to_postgres(
        &self,
        actor: &Actor,
        url_file: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<StoreCopied, ServiceError> {
        authorize(actor, Action::Administer)?;
        if self.config.store.backend == StoreBackend::Postgres {
            return Err(ServiceError::invalid(
                "store",
                "this home's store is already PostgreSQL (store.backend = \"postgres\")",
            ));
        }
        let url_file = std::path::absolute(url_file)
            .map_err(|e| ServiceError::io(format!("--url-file {}", url_file.display()), e))?;
        let target_config = StoreConfig {
            backend: StoreBackend::Postgres,
            path: None,
            url_file: Some(url_file.clone()),
            url: None,
        };
        let pg = crate::store::postgres_config(&target_config, &self.home)?;
        crate::store::postgres::migrate(&pg)?;
        let target: Arc<dyn Store> = Arc::new(crate::store::postgres::PgStore::open(pg)?);
        let source = self.store()?;
        // Copy, a chunk at a time (each one write).
        let mut after: Option<Vec<u8>> = None;
        let mut copied = 0u64;
        loop {
            let chunk = source.raw_entries(after.as_deref(), CHUNK)?;
            let Some((last, _)) = chunk.last() else { break };
            after = Some(last.clone());
            copied += chunk.len() as u64;
            target.raw_import(chunk)?;
            crate::failpoint("store.copy-chunk");
            progress(copied);
        }
        // Both the same, entry for entry?
        let (n_source, d_source) = fingerprint(source.as_ref())?;
        let (n_target, d_target) = fingerprint(target.as_ref())?;
        if (n_source, &d_source) != (n_target, &d_target) {
            return Err(ServiceError::invalid(
                "url-file",
                format!(
                    "the database holds {n_target} entries and this store {n_source}, or they differ (SHA-256 {d_target} against {d_source}): it holds another store's data. Use an empty database; this home still uses its embedded store"
                ),
            ));
        }
        let report = crate::store::check(target.as_ref())?;
        if !report.problems.is_empty() {
            return Err(ServiceError::Internal(format!(
                "the copy does not check clean: {}",
                report.problems.join("; ")
            )));
        }
        // The audit log moves into the database: every record the embedded store committed
        // (up to its head), as the file holds it, then the chain checked there, signatures and
        // all, up to the same head.
        let audit_key = self.audit_public_key()?;
        let head = source.audit_head()?;
        let file_log = self.audit_reader()?;
        let mut records = Vec::new();
        for rec in file_log.records()? {
            if head.as_ref().is_some_and(|h| rec.seq > h.seq) {
                break;
            }
            let line = serde_json::to_vec(&rec)
                .map_err(|e| ServiceError::Internal(format!("an audit record: {e}")))?;
            records.push((crate::store::kv::codec::audit_record_key(rec.seq), line));
            if records.len() == CHUNK {
                target.raw_import(std::mem::take(&mut records))?;
            }
        }
        target.raw_import(records)?;
        let moved = crate::audit::AuditLog::in_store("the database's audit log", target.clone());
        let verified = moved.verify(audit_key.as_ref())?;
        // (A run interrupted after its own record leaves that record past the head copied
        // back from the embedded store: uncommitted, and overwritten by this run's.)
        let reached = verified.head.as_ref().map(|h| h.0 - verified.uncommitted)
            == head.as_ref().map(|h| h.seq);
        if !verified.ok || !reached {
            return Err(ServiceError::Internal(format!(
                "the audit log copied into the database does not verify up to the store's head ({}): {}; this home still uses its embedded store",
                head.as_ref().map_or(0, |h| h.seq),
                verified.problem.unwrap_or_else(|| "it ends elsewhere".into())
            )));
        }
        // Recorded in the audit chain, in the new store, before the home switches to it.
        let audit = self
            .audit()?
            .moved_into("the database's audit log", target.clone());
        audit
            .append(
                "store.migrate",
                &actor.to_string(),
                json!({
                    "to": "postgres",
                    "entries": n_source,
                    "certificates": report.certificates,
                    "revocations": report.revocations,
                    "sha256": d_source,
                }),
            )
            .map_err(ServiceError::from)?;
        crate::failpoint("store.before-switch");
        let mut config = self.config.clone();
        config.store = target_config;
        crate::write_atomic(&self.home.config_path(), config.to_toml().as_bytes(), 0o600)
            .map_err(|e| ServiceError::io("writing meterpki.toml", e))?;
        Ok(StoreCopied {
            entries: n_source,
            certificates: report.certificates,
            revocations: report.revocations,
            digest: d_source,
            switched: true,
        })
    }
}
