//! Supplier churn (docs/design.md#suppliers-and-churn): meter assignment, change of supplier,
//! takeover, exit, supplier key rotation and key revocation, each producing per affected meter a
//! signed trust-anchor update ([`crate::tamp`]).
//!
//! The flow of one chunk of meters:
//!
//! ```text
//! Plan (validated, read-only) -> sequence numbers reserved (durable) -> TAMPUpdate built, signed in
//! the HSM and verified (in parallel) -> update files written and synced -> assignments moved and the
//! update recorded with the chunk's audit record, one atomic store write -> answered
//! ```
//!
//! A crash anywhere leaves every meter either moved with its update written, or not moved: the
//! re-run plans it again with a new sequence number (reserved numbers are never handed out twice,
//! so a number is skipped, never reused). Operations over many meters (takeover, exit, rotation,
//! key revocation) keep a journal ([`OpRecord`]) so that a re-run resumes the same operation with
//! the same key lists.

mod chunk;
mod operation;
mod plan;
mod sink;

use std::io;
use std::sync::Arc;

pub use chunk::{Done, SignedChunk};
pub use plan::Plan;
pub use sink::{DirSink, NdjsonSink, UpdateSink};

use crate::audit::AuditLog;
use crate::model::{Supplier, SupplierState};
use crate::store::{ApplyError, CertRecord, Store, StoreError};
use crate::tamp::{TampError, UpdateSigner};

pub use crate::model::{OpKind, OpRecord, OpState};

/// The store counter behind TAMP sequence numbers.
pub const SEQ_COUNTER: &str = "tamp.seq";

/// Why a churn operation, or one meter of it, was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChurnError {
    /// The request is wrong (unknown meter, same supplier, inactive supplier, ...): nothing changed.
    #[error("{code}: {detail}")]
    Refused {
        /// Stable code, e.g. `unknown-meter`.
        code: &'static str,
        /// What was wrong, naming the field.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written: nothing was stored.
    #[error("the audit record could not be written, so nothing was stored: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Building or signing an update failed.
    #[error("trust-anchor update: {0}")]
    Tamp(#[from] TampError),
    /// Writing the updates failed.
    #[error("writing updates: {0}")]
    Io(#[from] io::Error),
    /// Something inside meterpki is inconsistent.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<ApplyError> for ChurnError {
    fn from(e: ApplyError) -> ChurnError {
        match e {
            ApplyError::Store(e) => ChurnError::Store(e),
            ApplyError::Audit(e) => ChurnError::Audit(e),
        }
    }
}

impl ChurnError {
    pub(crate) fn refused(code: &'static str, detail: impl Into<String>) -> ChurnError {
        ChurnError::Refused {
            code,
            detail: detail.into(),
        }
    }

    /// The stable code of a refusal, `None` for failures of the system.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ChurnError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The churn engine: the store, the audit log, the trust-update signer, the supplier profiles,
/// and who is acting (named in every audit record it writes).
pub struct Churn {
    store: Arc<dyn Store>,
    audit: AuditLog,
    signer: Arc<UpdateSigner>,
    supplier_profiles: Vec<String>,
    workers: usize,
    actor: String,
}

impl std::fmt::Debug for Churn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Churn({} workers)", self.workers)
    }
}

pub(crate) use crate::unix_now;

/// A supplier by ID, refused when unknown.
pub fn registered(store: &dyn Store, id: &str) -> Result<Supplier, ChurnError> {
    store.supplier(id)?.ok_or_else(|| {
        ChurnError::refused(
            "supplier-unknown",
            format!("supplier {id} is not registered (meterpki supplier register)"),
        )
    })
}

/// A supplier that must be active.
pub fn active(store: &dyn Store, id: &str, field: &str) -> Result<Supplier, ChurnError> {
    let s = registered(store, id)?;
    if s.state != SupplierState::Active {
        return Err(ChurnError::refused(
            "supplier-inactive",
            format!("{field}: supplier {id} ({}) is {}", s.name, s.state),
        ));
    }
    Ok(s)
}

impl Churn {
    /// A churn engine; `workers` threads sign in parallel (one per HSM session); `actor` is
    /// named in the audit records of its writes.
    pub fn new(
        audit: AuditLog,
        signer: Arc<UpdateSigner>,
        supplier_profiles: Vec<String>,
        workers: usize,
        actor: impl Into<String>,
    ) -> Result<Churn, ChurnError> {
        let store = audit
            .store()
            .cloned()
            .ok_or_else(|| ChurnError::Internal("churn needs a writable audit log".into()))?;
        Ok(Churn {
            store,
            audit,
            signer,
            supplier_profiles,
            workers: workers.max(1),
            actor: actor.into(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The audit log its writes commit with.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Who is acting.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The supplier profiles (the keys a supplier can hold in meters).
    pub fn supplier_profiles(&self) -> &[String] {
        &self.supplier_profiles
    }

    /// The active certificates of a supplier, one per supplier profile that has one.
    pub fn active_certs(&self, supplier: &str) -> Result<Vec<CertRecord>, ChurnError> {
        let mut out = Vec::new();
        for p in &self.supplier_profiles {
            if let Some(r) = self.store.active_cert(supplier, p)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Certificates by their hex serials (a journal's key lists).
    pub(crate) fn certs_by_serial(
        &self,
        serials: &[String],
    ) -> Result<Vec<CertRecord>, ChurnError> {
        let mut out = Vec::new();
        for s in serials {
            let b = hex::decode(s).map_err(|e| ChurnError::Internal(e.to_string()))?;
            out.push(
                self.store
                    .cert(&b)?
                    .ok_or_else(|| ChurnError::Internal(format!("certificate {s} missing")))?,
            );
        }
        Ok(out)
    }
}
