//! Why a use case refused or failed, classed the way both front ends answer it: the CLI's exit
//! code, the API's status.

use crate::audit::AuditError;
use crate::churn::ChurnError;
use crate::crl::CrlError;
use crate::hsm::HsmError;
use crate::issue::IssueError;
use crate::quorum::QuorumError;
use crate::store::{ApplyError, StoreError};

/// How a failure is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (a field, a file, a value): 400, exit 2.
    Invalid,
    /// Not found, or not the caller's to see: 404, exit 2.
    NotFound,
    /// The caller may not do this: 403, exit 2.
    Denied,
    /// The current state forbids it (exists already, another body under the same request ID,
    /// an operation running): 409, exit 2.
    Conflict,
    /// The HSM or the audit log cannot take it now; nothing changed, retry later: 503, exit 1.
    Unavailable,
    /// Something inside meterpki failed: 500, exit 1.
    Internal,
}

impl ErrorClass {
    /// True for the requester's mistakes (exit 2 / 4xx).
    pub fn is_client_error(self) -> bool {
        matches!(
            self,
            ErrorClass::Invalid | ErrorClass::NotFound | ErrorClass::Denied | ErrorClass::Conflict
        )
    }
}

/// A use case's refusal or failure. Except for [`ServiceError::Incomplete`] (and a store that
/// applied a write it could not flush, which says so), nothing was changed: no change is ever
/// made without its audit record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Refused, with a stable code and a detail naming the field or the state.
    #[error("{detail}")]
    Refused {
        /// How it is answered.
        class: ErrorClass,
        /// Stable code, e.g. `device-range`, `request-id-conflict`.
        code: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An issuance request refused or failed, with its own code.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The HSM failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The audit record could not be written.
    #[error("the audit record could not be written, so nothing changed: {0}")]
    Audit(#[from] AuditError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Share files refused (or unreadable).
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Publishing CRLs failed.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// A churn operation refused or failed.
    #[error(transparent)]
    Churn(#[from] ChurnError),
    /// Building a certificate failed.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// Which file, doing what.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something inside meterpki failed.
    #[error("{0}")]
    Internal(String),
    /// The change was made and audited, but what follows it could not all be done (a
    /// ceremony's files put in place): the detail says what is missing and how to finish.
    #[error("{0}")]
    Incomplete(String),
}

impl From<ApplyError> for ServiceError {
    fn from(e: ApplyError) -> ServiceError {
        match e {
            ApplyError::Store(StoreError::Refused(detail)) => ServiceError::Refused {
                class: ErrorClass::Conflict,
                code: "conflict",
                detail,
            },
            ApplyError::Store(e) => ServiceError::Store(e),
            ApplyError::Audit(e) => ServiceError::Audit(e),
        }
    }
}

/// Maps a file error to [`ServiceError::Io`] with `context` (which file, doing what).
pub(crate) fn io_at(context: String) -> impl FnOnce(std::io::Error) -> ServiceError {
    move |e| ServiceError::io(context, e)
}

impl ServiceError {
    /// A refusal.
    pub fn refused(class: ErrorClass, code: &'static str, detail: impl Into<String>) -> Self {
        ServiceError::Refused {
            class,
            code,
            detail: detail.into(),
        }
    }

    /// The request is wrong (400 / exit 2).
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::refused(ErrorClass::Invalid, code, detail)
    }

    /// Not found (404 / exit 2).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::refused(ErrorClass::NotFound, "not-found", detail)
    }

    /// Not allowed (403 / exit 2).
    pub fn denied(code: &'static str, detail: impl Into<String>) -> Self {
        Self::refused(ErrorClass::Denied, code, detail)
    }

    /// The state forbids it (409 / exit 2).
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::refused(ErrorClass::Conflict, code, detail)
    }

    /// A file error.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServiceError::Io {
            context: context.into(),
            source,
        }
    }

    /// The store behind this failure could not be reached (a database server down or failing
    /// over), whichever step met it: answered 503 `store-unavailable`, retry later.
    pub fn store_unavailable(&self) -> bool {
        match self {
            ServiceError::Store(e)
            | ServiceError::Audit(AuditError::Store(e))
            | ServiceError::Crl(CrlError::Store(e) | CrlError::Audit(AuditError::Store(e)))
            | ServiceError::Churn(ChurnError::Store(e) | ChurnError::Audit(AuditError::Store(e))) => {
                e.is_unavailable()
            }
            ServiceError::Issue(e) => e.code == crate::issue::ErrorCode::StoreUnavailable,
            _ => false,
        }
    }

    /// How it is answered.
    pub fn class(&self) -> ErrorClass {
        if self.store_unavailable() {
            return ErrorClass::Unavailable;
        }
        match self {
            ServiceError::Refused { class, .. } => *class,
            ServiceError::Store(StoreError::Config(_)) => ErrorClass::Invalid,
            ServiceError::Issue(e) => match e.code {
                crate::issue::ErrorCode::HsmUnavailable
                | crate::issue::ErrorCode::AuditUnavailable => ErrorClass::Unavailable,
                crate::issue::ErrorCode::Internal => ErrorClass::Internal,
                crate::issue::ErrorCode::DeviceRange
                | crate::issue::ErrorCode::ReplaceForbidden
                | crate::issue::ErrorCode::BareKeyForbidden
                | crate::issue::ErrorCode::SupplierInactive
                | crate::issue::ErrorCode::SupplierUnknown => ErrorClass::Denied,
                crate::issue::ErrorCode::ExistingCertificate
                | crate::issue::ErrorCode::KeyReused
                | crate::issue::ErrorCode::KeyCompromised
                | crate::issue::ErrorCode::IssuerRevoked => ErrorClass::Conflict,
                _ => ErrorClass::Invalid,
            },
            ServiceError::Hsm(e) if e.kind.is_input() => ErrorClass::Invalid,
            ServiceError::Hsm(_) | ServiceError::Audit(_) => ErrorClass::Unavailable,
            ServiceError::Quorum(QuorumError::Io { .. }) => ErrorClass::Internal,
            ServiceError::Quorum(_) | ServiceError::Config(_) => ErrorClass::Invalid,
            ServiceError::Crl(
                CrlError::ShardsChanged { .. }
                | CrlError::NoBaseUrl
                | CrlError::BaseUrlChanged { .. },
            ) => ErrorClass::Invalid,
            ServiceError::Crl(CrlError::Sign(_) | CrlError::Verify(_) | CrlError::Audit(_)) => {
                ErrorClass::Unavailable
            }
            ServiceError::Churn(ChurnError::Refused { .. }) => ErrorClass::Invalid,
            ServiceError::Churn(ChurnError::Audit(_)) => ErrorClass::Unavailable,
            _ => ErrorClass::Internal,
        }
    }

    /// The stable code of the failure.
    pub fn code(&self) -> &'static str {
        if self.store_unavailable() {
            return "store-unavailable";
        }
        match self {
            ServiceError::Refused { code, .. } => code,
            ServiceError::Issue(e) => e.code.as_str(),
            ServiceError::Hsm(_) => "hsm-unavailable",
            ServiceError::Audit(_)
            | ServiceError::Crl(CrlError::Audit(_))
            | ServiceError::Churn(ChurnError::Audit(_)) => "audit-unavailable",
            ServiceError::Churn(e) => e.code().unwrap_or("internal"),
            ServiceError::Quorum(_) => "share",
            ServiceError::Incomplete(_) => "incomplete",
            ServiceError::Config(_) => "config",
            _ => match self.class() {
                ErrorClass::Unavailable => "hsm-unavailable",
                ErrorClass::Invalid => "invalid",
                _ => "internal",
            },
        }
    }
}
