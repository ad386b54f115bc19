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
    match state
        .blocking(move |s| s.authenticate(peer.0.as_deref()))
        .await
    {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(e) => {
            let _ = axum::body::to_bytes(request.into_body(), crate::routes::BODY_LIMIT).await;
            e.into_response()
        }
    }
}
