//! One error type for every handler: a stable `type`, a status, a detail for the client;
//! internals are logged, never sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ca_core::service::{ErrorClass, ServiceError};
use serde_json::json;

/// An API error, answered as `application/problem+json` (RFC 9457).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable problem type, e.g. `device-range`.
    pub kind: &'static str,
    /// What went wrong, for the client.
    pub detail: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            detail: detail.into(),
        }
    }
    /// 400.
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, detail)
    }
    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    /// 404.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
    }
    /// 500, with the cause logged and not sent.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }
}

impl From<ServiceError> for ApiError {
    /// A use case's refusal as its HTTP status and stable code; failures inside meterpki are
    /// logged and answered without their internals.
    fn from(e: ServiceError) -> ApiError {
        let code = e.code();
        let status = match (code, e.class()) {
            ("client-certificate-required", _) => StatusCode::UNAUTHORIZED,
            ("batch-too-large", _) => StatusCode::PAYLOAD_TOO_LARGE,
            (_, ErrorClass::Invalid) => StatusCode::BAD_REQUEST,
            (_, ErrorClass::NotFound) => StatusCode::NOT_FOUND,
            (_, ErrorClass::Denied) => StatusCode::FORBIDDEN,
            (_, ErrorClass::Conflict) => StatusCode::CONFLICT,
            (_, ErrorClass::Unavailable) => {
                tracing::error!(error = %e, "refused: a dependency is unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
            (_, ErrorClass::Internal) => return ApiError::internal(e),
        };
        let detail = match &e {
            ServiceError::Refused { detail, .. } => detail.clone(),
            ServiceError::Issue(i) => i.detail.clone(),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => match code {
                "store-unavailable" => {
                    "the store (the database) cannot be reached now, so nothing was issued, revoked or changed that was not stored; retry later (a batch with the same request_id and body answers what was stored)".into()
                }
                "audit-unavailable" => {
                    "the audit log cannot be written, so nothing was issued, revoked or changed; retry later (a batch with the same request_id and body)".into()
                }
                _ => "the HSM cannot sign now, so nothing was issued, revoked or changed; retry later (a batch with the same request_id and body)".into(),
            },
            other => other.to_string(),
        };
        ApiError::new(status, code, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:meterpki:problem:{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}
