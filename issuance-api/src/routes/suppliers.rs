//! `POST /v1/suppliers/{id}/keys`: a supplier enrols one of its own keys from a CSR.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::parse_id;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    profile: String,
    csr: String,
    /// Optional: the registered name is used; if given, it must match it.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replace: bool,
}

pub(super) async fn enrol_key(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id("supplier-id", &id)?;
    // Who may enrol for whom is decided before the body is even parsed.
    ca_core::service::authorize(&actor, ca_core::service::Action::EnrolFor(&id))
        .map_err(|e| state.refuse(e))?;
    let req: EnrolRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed-json",
            format!("the body is not an enrolment request: {e}"),
        )
    })?;
    let o = state
        .blocking(move |s| s.enrol_key(&actor, &id, &req.profile, req.csr, req.name, req.replace))
        .await?;
    state.metrics.issued(o.existing);
    let status = if o.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({
            "serial": o.record.serial_hex(),
            "profile": o.record.profile,
            "certificate": base64::engine::general_purpose::STANDARD.encode(&o.record.der),
            "existing": o.existing,
        })),
    )
        .into_response())
}
