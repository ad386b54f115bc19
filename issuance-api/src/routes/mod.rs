//! The routes (README.md#the-issuance-api), one module per concern: batches, certificate
//! lookups and revocation, supplier keys, and the public endpoints. Handlers parse, call the
//! service and render; who may do what is decided by the service.

mod batches;
mod certificates;
mod limits;
mod public;
mod suppliers;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// The largest request body accepted (a 10,000-item batch of PEM CSRs fits).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The router: `/v1` for accounts, `/crl` and health endpoints public.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/batches", post(batches::post_batch))
        .route("/v1/batches/{request_id}", get(batches::get_batch))
        .route(
            "/v1/certificates/{serial}",
            get(certificates::get_certificate),
        )
        .route(
            "/v1/certificates/{serial}/revoke",
            post(certificates::revoke_certificate),
        )
        .route(
            "/v1/devices/{device_id}/certificates",
            get(certificates::device_certificates),
        )
        .route(
            "/v1/suppliers/{id}/certificates",
            get(certificates::supplier_certificates),
        )
        .route("/v1/suppliers/{id}/keys", post(suppliers::enrol_key))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ));
    Router::new()
        .merge(v1)
        .route("/crl/{issuer}/{file}", get(public::get_crl))
        .route("/ca/{file}", get(public::get_ca_cert))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(public::readyz))
        .route("/metrics", get(public::metrics))
        .layer(axum::middleware::map_response(
            limits::problem_for_rejections,
        ))
        // A body sent too slowly (slowloris) is cut off per connection by the server's
        // minimum body rate (server.min_body_bytes_per_sec).
        .layer(axum::middleware::from_fn(limits::refuse_declared_oversize))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The plain-HTTP router for relying parties: published CRLs and the CA certificates, nothing
/// else (no account, no health or metrics: those stay behind TLS).
pub fn crl_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/crl/{issuer}/{file}", get(public::get_crl))
        .route("/ca/{file}", get(public::get_ca_cert))
        .layer(axum::middleware::map_response(
            limits::problem_for_rejections,
        ))
        // Relying parties send no bodies.
        .layer(axum::extract::DefaultBodyLimit::max(0))
        .with_state(state)
}

/// A serial from a path: hex, 1 to 20 octets.
fn parse_serial(s: &str) -> Result<Vec<u8>, crate::error::ApiError> {
    let b = hex::decode(s).map_err(|_| {
        crate::error::ApiError::bad_request("serial", format!("{s:?} is not a hex serial"))
    })?;
    if b.is_empty() || b.len() > 20 {
        return Err(crate::error::ApiError::bad_request(
            "serial",
            "a serial is 1 to 20 octets",
        ));
    }
    Ok(b)
}

/// An EUI-64 from a path, or a 400 naming `field`.
fn parse_id(field: &'static str, s: &str) -> Result<ca_core::Eui64, crate::error::ApiError> {
    s.parse()
        .map_err(|e: String| crate::error::ApiError::bad_request(field, e))
}
