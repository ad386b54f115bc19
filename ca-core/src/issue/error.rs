//! Why one request was refused: a stable code (the API's `error.code`, the CLI's NDJSON) and a
//! detail for a human.

use std::fmt;

/// Stable error codes of an issuance request: each check has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is not valid JSON or has an unknown field.
    Json,
    /// No profile of that name.
    ProfileUnknown,
    /// The profile does not allow this request (missing field, bare key not allowed, ...).
    ProfileLimit,
    /// The CSR or public key is not valid base64/PEM/DER.
    CsrMalformed,
    /// The CSR's signature does not verify with its own key (no proof of possession).
    CsrSignature,
    /// Not an EC key.
    KeyType,
    /// An EC key on a curve the profile does not take.
    Curve,
    /// The public key is not a valid point on its curve.
    PointNotOnCurve,
    /// A key no certificate may be issued for: a known-weak key (a small multiple of the
    /// generator), or a key meterpki itself uses (a CA's, a service's).
    WeakKey,
    /// The device or entity ID is not an EUI-64.
    DeviceId,
    /// The device is outside the account's allowed range.
    DeviceRange,
    /// An active certificate exists for this device and usage with another key.
    ExistingCertificate,
    /// The key is already certified for another subject or usage.
    KeyReused,
    /// A certificate for the key was revoked for keyCompromise: no certificate is issued for it.
    KeyCompromised,
    /// The account may not replace an active certificate (`replace`).
    ReplaceForbidden,
    /// The account may not send a bare public key (its keys come with a CSR).
    BareKeyForbidden,
    /// The supplier is not registered.
    SupplierUnknown,
    /// The supplier is registered but no longer active (acquired or exited).
    SupplierInactive,
    /// The issuing CA's certificate was revoked by the root: it signs nothing more.
    IssuerRevoked,
    /// Too many items in one batch.
    BatchTooLarge,
    /// Not issued because another item of an atomic batch was refused.
    BatchAborted,
    /// The HSM could not sign.
    HsmUnavailable,
    /// The audit record could not be written, so nothing was stored.
    AuditUnavailable,
    /// The store could not be reached (a database server down or failing over): retry.
    StoreUnavailable,
    /// Something inside meterpki failed; the detail is logged.
    Internal,
}

impl ErrorCode {
    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Json => "json",
            ErrorCode::ProfileUnknown => "profile-unknown",
            ErrorCode::ProfileLimit => "profile-limit",
            ErrorCode::CsrMalformed => "csr-malformed",
            ErrorCode::CsrSignature => "csr-signature",
            ErrorCode::KeyType => "key-type",
            ErrorCode::Curve => "curve",
            ErrorCode::PointNotOnCurve => "point-not-on-curve",
            ErrorCode::WeakKey => "weak-key",
            ErrorCode::DeviceId => "device-id",
            ErrorCode::DeviceRange => "device-range",
            ErrorCode::ExistingCertificate => "existing-certificate",
            ErrorCode::KeyReused => "key-reused",
            ErrorCode::KeyCompromised => "key-compromised",
            ErrorCode::ReplaceForbidden => "replace-forbidden",
            ErrorCode::BareKeyForbidden => "bare-key-forbidden",
            ErrorCode::SupplierUnknown => "supplier-unknown",
            ErrorCode::SupplierInactive => "supplier-inactive",
            ErrorCode::IssuerRevoked => "issuer-revoked",
            ErrorCode::BatchTooLarge => "batch-too-large",
            ErrorCode::BatchAborted => "batch-aborted",
            ErrorCode::HsmUnavailable => "hsm-unavailable",
            ErrorCode::AuditUnavailable => "audit-unavailable",
            ErrorCode::StoreUnavailable => "store-unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// True for the requester's mistakes (4xx / exit 2), false for ours (5xx / exit 1).
    pub fn is_client_error(self) -> bool {
        !matches!(
            self,
            ErrorCode::HsmUnavailable
                | ErrorCode::AuditUnavailable
                | ErrorCode::StoreUnavailable
                | ErrorCode::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IssueError {
    /// The stable code.
    pub code: ErrorCode,
    /// What was wrong, naming the field.
    pub detail: String,
}

impl IssueError {
    /// A new error.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> IssueError {
        IssueError {
            code,
            detail: detail.into(),
        }
    }
}

impl IssueError {
    /// A store failure met while issuing: unavailable (retry later) or internal.
    pub fn store(e: crate::store::StoreError) -> IssueError {
        let code = if e.is_unavailable() {
            ErrorCode::StoreUnavailable
        } else {
            ErrorCode::Internal
        };
        IssueError::new(code, e.to_string())
    }
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for IssueError {}
