//! Bodies over the limit are refused as problem documents, before they are read when their
//! length is declared.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// A body declared larger than the limit (Content-Length) is refused before a byte of it is
/// read: no `100 Continue` is sent, and the client reads the 413 instead of being cut off while
/// still uploading (bodies without a declared length are cut at the limit by DefaultBodyLimit).
pub(super) async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > super::BODY_LIMIT as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is over the 16 MiB limit",
        )
        .into_response();
    }
    next.run(request).await
}

/// axum answers a body over the limit (413) itself, in plain text: every error is a problem
/// document (RFC 9457), so rewrite it.
pub(super) async fn problem_for_rejections(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_problem {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is over the 16 MiB limit",
        )
        .into_response();
    }
    response
}
