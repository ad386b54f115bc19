//! The public endpoints: published CRLs, readiness, metrics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn get_crl(
    State(state): State<Arc<AppState>>,
    Path((issuer, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = state
        .service
        .crl_file(&issuer, &file)
        .ok_or_else(|| ApiError::not_found("no such CRL"))?;
    match tokio::fs::read(&path).await {
        Ok(der) => Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response()),
        Err(_) => Err(ApiError::not_found("no such CRL (not published yet)")),
    }
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let readiness = state.readiness.clone();
    state.metrics.probe();
    let probe = tokio::task::spawn_blocking(move || readiness.ready());
    match tokio::time::timeout(state.ready_deadline, probe).await {
        Ok(Ok(true)) => (StatusCode::OK, "ready\n").into_response(),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hsm-unavailable",
            "the HSM cannot sign",
        )
        .into_response(),
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(state.readiness.sessions());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
