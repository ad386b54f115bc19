//! The public endpoints: published CRLs, readiness, metrics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn get_crl(
    State(state): State<Arc<AppState>>,
    Path((issuer, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = state
        .service
        .crl_file(&issuer, &file)
        .ok_or_else(|| ApiError::not_found("no such CRL"))?;
    sync_crl(&state, &path).await;
    // A publication may rename a new file into place between reading the CRL's facts and
    // opening it: then the new version is read again (twice at most, then the client retries).
    for _ in 0..2 {
        match state.crls.get(&path).await {
            Ok(Some(crl)) => {
                if let Some(body) = crl.body().await {
                    return Ok(crl.respond(&headers, body));
                }
            }
            Ok(None) => return Err(ApiError::not_found("no such CRL (not published yet)")),
            // Never a damaged file served as a CRL: the next publication replaces it.
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "a published CRL file is damaged; run `meterpki crl publish` (a starting server republishes it)");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "crl-damaged",
                    "the published CRL is damaged; it is being replaced",
                ));
            }
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "crl-replaced",
        "the CRL was being replaced by a new publication; retry",
    ))
}

/// A shared store's CRL may have been published by another server: this machine's copy is
/// brought up to it first (a small read at most once a second per CRL). When the store cannot
/// be reached, the copy this server has is served: a CRL stays valid until its nextUpdate.
async fn sync_crl(state: &Arc<AppState>, path: &std::path::Path) {
    if !state.service.audit_in_store() {
        return;
    }
    let service = state.service.clone();
    let p = path.to_path_buf();
    match tokio::task::spawn_blocking(move || service.sync_crl(&p)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "the shared store's CRL could not be read; serving this server's copy")
        }
        Err(e) => tracing::warn!(error = %e, "syncing a CRL"),
    }
}

pub(super) async fn get_ca_cert(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let (path, pem) = state
        .service
        .ca_cert_file(&file)
        .ok_or_else(|| ApiError::not_found("no such CA certificate"))?;
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|_| ApiError::not_found("no such CA certificate (no such CA yet)"))?;
    if pem {
        return Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response());
    }
    let cert = ca_core::certificate_from_pem(&text).map_err(ApiError::internal)?;
    let der = der::Encode::to_der(&cert).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response())
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let readiness = state.readiness.clone();
    // From the last probe while it is fresh: a flood of /readyz costs no HSM signatures.
    let probe = tokio::task::spawn_blocking(move || readiness.ready_cached());
    match tokio::time::timeout(state.ready_deadline, probe).await {
        Ok(Ok(true)) => {
            // Ready while every key has a token up; a token out of the rotation is named.
            let mut body = String::from("ready\n");
            for (key, tokens) in state.readiness.token_states() {
                for t in tokens.iter().filter(|t| !t.up) {
                    body.push_str(&format!(
                        "token {} out of the rotation for {key}: {}\n",
                        t.token,
                        t.reason.as_deref().unwrap_or("failing")
                    ));
                }
            }
            (StatusCode::OK, body).into_response()
        }
        _ if !state.readiness.store_reached() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "the store (the database) cannot be reached",
        )
        .into_response(),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "hsm-unavailable",
            "the HSM cannot sign",
        )
        .into_response(),
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = state
        .metrics
        .render(state.readiness.sessions(), state.readiness.probes());
    // The nextUpdate of the ARL (which only a quorum can re-sign) and of each issuer's full
    // CRL, and how many of them need an operator soon; read through the CRL cache (one parse
    // per published version), so a scrape costs no store read and no CRL parse.
    use std::fmt::Write;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut lines = String::new();
    let mut warnings = 0;
    for kind in ca_core::CaKind::ALL {
        let file = if kind == ca_core::CaKind::Root {
            "arl.crl"
        } else {
            "full.crl"
        };
        let Some(path) = state.service.crl_file(kind.name(), file) else {
            continue;
        };
        sync_crl(&state, &path).await;
        let crl = match state.crls.get(&path).await {
            Ok(Some(crl)) => crl,
            Ok(None) => continue,
            Err(_) => {
                warnings += 1;
                continue;
            }
        };
        if let Some(next) = crl.facts.next_update {
            let _ = writeln!(
                lines,
                "meterpki_crl_next_update_timestamp_seconds{{issuer=\"{}\",crl=\"{file}\"}} {next}",
                kind.name()
            );
        }
        if ca_core::service::crl_warning(kind, file, &crl.facts, now).is_some() {
            warnings += 1;
        }
    }
    let states = state.readiness.token_states();
    if !states.is_empty() {
        let mut up = String::new();
        let mut signatures = String::new();
        let mut failures = String::new();
        for (key, tokens) in &states {
            for t in tokens {
                let labels = format!("key=\"{key}\",token=\"{}\"", t.token);
                let _ = writeln!(up, "meterpki_hsm_token_up{{{labels}}} {}", u8::from(t.up));
                let _ = writeln!(
                    signatures,
                    "meterpki_hsm_token_signatures_total{{{labels}}} {}",
                    t.signatures
                );
                let _ = writeln!(
                    failures,
                    "meterpki_hsm_token_failures_total{{{labels}}} {}",
                    t.failures
                );
            }
        }
        let _ = write!(body, "# HELP meterpki_hsm_token_up Whether a token is in the rotation for an online key ([[hsm.tokens]]).\n# TYPE meterpki_hsm_token_up gauge\n{up}# HELP meterpki_hsm_token_signatures_total Signatures a token made for an online key.\n# TYPE meterpki_hsm_token_signatures_total counter\n{signatures}# HELP meterpki_hsm_token_failures_total Signatures a token failed for an online key (each retried on another token).\n# TYPE meterpki_hsm_token_failures_total counter\n{failures}");
    }
    let _ = writeln!(body, "# HELP meterpki_crl_next_update_timestamp_seconds nextUpdate of the root's ARL and each issuer's full CRL (Unix seconds).\n# TYPE meterpki_crl_next_update_timestamp_seconds gauge\n{lines}# HELP meterpki_crl_warnings The ARL with less than a quarter of its lifetime left, or a CRL past its nextUpdate; see `meterpki status`.\n# TYPE meterpki_crl_warnings gauge\nmeterpki_crl_warnings {warnings}");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
