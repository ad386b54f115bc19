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
/// refused request never reaches a handler and its body is never stored. On HTTP/1.1 it is not
/// read at all: the connection is closed after the answer (`Connection: close`). On HTTP/2 up to
/// [`REFUSED_BODY_DRAIN`] of it is read and discarded first, because common clients (curl before
/// 8.x among them) report a stream error instead of the answer when a stream is reset while they
/// still send; beyond that the stream is reset with NO_ERROR after the answer (RFC 9113 §8.1).
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
            let http1 = request.version() <= axum::http::Version::HTTP_11;
            note(&state, who, what, status);
            let mut response = e.into_response();
            if http1 {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            let mut unread = request.into_body();
            if !http1 {
                discard(&mut unread, REFUSED_BODY_DRAIN).await;
            }
            // The rest of the body is dropped once the answer is sent: an HTTP/2 stream dropped
            // before that is reset with CANCEL, and clients report an error instead of the 401.
            response.map(|inner| axum::body::Body::new(Holding { inner, unread }))
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

/// How much of a refused HTTP/2 request's body is read (and discarded) before the answer.
pub(crate) const REFUSED_BODY_DRAIN: usize = 64 * 1024;

/// Reads and drops up to `limit` bytes of `body`, frame by frame (nothing is kept), until it
/// ends, fails (it came too slowly: the connection's minimum body rate) or reaches the limit.
async fn discard(body: &mut axum::body::Body, limit: usize) {
    use http_body::Body as _;
    let mut read = 0;
    while read < limit && !body.is_end_stream() {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// A response body holding the request's unread body until the response has been sent.
struct Holding {
    inner: axum::body::Body,
    #[allow(dead_code)] // held, never read: dropping it is what matters
    unread: axum::body::Body,
}

impl http_body::Body for Holding {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
