//! Every `/v1` request is made by an account: the service resolves it from the connection's
//! client certificate before any handler runs.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use ca_core::service::Actor;

use crate::error::ApiError;
use crate::state::AppState;

/// The client certificate of the connection (leaf DER), set by the server per connection.
#[derive(Clone, Debug, Default)]
pub struct Peer(pub Option<Vec<u8>>);

/// The account behind the client certificate.
pub(crate) struct Caller(pub(crate) Actor);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        // Set by `authenticate`, which every /v1 route passes through first.
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::internal("a /v1 route was reached without authentication"))
    }
}

/// Resolves the account of the connection's client certificate for every `/v1` request. A
/// refused request never reaches a handler; its body is read (within the limit) before the
/// answer, so that HTTP/2 clients still uploading see the response rather than a reset stream.
pub(crate) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or_default();
    let what = format!("{} {}", request.method(), request.uri().path());
    let who = match &peer.0 {
        Some(der) => format!(
            "client certificate sha256:{}",
            hex::encode(&ca_core::sha256(der)[..8])
        ),
        None => "no client certificate".to_string(),
    };
    match state
        .blocking(move |s| s.authenticate(peer.0.as_deref()))
        .await
    {
        Ok(actor) => {
            let name = actor.name().to_string();
            request.extensions_mut().insert(actor);
            let response = next.run(request).await;
            let status = response.status();
            // 404 is how a caller is told it may not see something; every 4xx but a 429
            // (flow control, not a refusal) is a refused request.
            if status.is_client_error() && status != axum::http::StatusCode::TOO_MANY_REQUESTS {
                note(&state, name, what, status);
            }
            response
        }
        Err(e) => {
            let status = e.status;
            let _ = axum::body::to_bytes(request.into_body(), crate::routes::BODY_LIMIT).await;
            note(&state, who, what, status);
            e.into_response()
        }
    }
}

/// A refused request in the audit log (the service limits how many).
fn note(state: &Arc<AppState>, who: String, what: String, status: axum::http::StatusCode) {
    let service = state.service.clone();
    tokio::task::spawn_blocking(move || {
        service.note_refusal(
            "api.refused",
            &who,
            serde_json::json!({"request": what, "status": status.as_u16()}),
        )
    });
}
