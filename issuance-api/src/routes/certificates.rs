//! Certificate lookups (by serial, by device, by supplier) and revocation.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use ca_core::service::CertView;
use ca_core::Reason;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_id, parse_serial};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A certificate as the API shows it.
fn cert_json(v: &CertView) -> Value {
    let rec = &v.record;
    json!({
        "serial": rec.serial_hex(),
        "profile": rec.profile,
        "issuer": rec.issuer,
        "issuer_generation": rec.issuer_generation,
        "subject": rec.subject_id,
        "shard": rec.shard,
        "issued_at": rec.issued_at,
        "status": v.status(),
        "revocation": v.revocation.map(|r| json!({"reason": r.reason.name(), "revoked_at": r.revoked_at, "invalidity_date": r.invalidity_date})),
        "certificate": B64.encode(&rec.der),
    })
}

pub(super) async fn get_certificate(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    let serial = parse_serial(&serial)?;
    // Not yours and not there look the same: an account learns nothing of others' certificates.
    let view = state
        .blocking(move |s| s.certificate(&actor, &serial))
        .await?;
    Ok(Json(cert_json(&view)).into_response())
}

pub(super) async fn device_certificates(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("device-id", &device)?;
    let list = state
        .blocking(move |s| s.device_certificates(&actor, &id))
        .await?;
    let list: Vec<Value> = list.iter().map(cert_json).collect();
    Ok(Json(json!({"device_id": id.to_string(), "certificates": list})).into_response())
}

pub(super) async fn supplier_certificates(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("supplier-id", &id)?;
    let list = state
        .blocking(move |s| s.supplier_certificates(&actor, &id))
        .await?;
    let list: Vec<Value> = list.iter().map(cert_json).collect();
    Ok(Json(json!({"supplier": id.to_string(), "certificates": list})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
    #[serde(default)]
    invalidity_date: Option<i64>,
}

pub(super) async fn revoke_certificate(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let serial = parse_serial(&serial)?;
    let req: RevokeRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed-json",
            format!("the body is not a revocation request: {e}"),
        )
    })?;
    let reason = Reason::parse(&req.reason).map_err(|e| ApiError::bad_request("reason", e))?;
    let row = state
        .blocking(move |s| s.revoke_one(&actor, &serial, reason, req.invalidity_date))
        .await?;
    Ok(
        Json(json!({"serial": row.serial, "status": row.status, "reason": row.reason}))
            .into_response(),
    )
}
