//! `POST /v1/batches` and `GET /v1/batches/{request_id}`: a factory's batch of certificate
//! requests, parsed here, issued by the service, answered as JSON or NDJSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ca_core::issue::{ErrorCode, IssueError, RequestItem};
use ca_core::service::{ApiBatch, ItemResult};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    request_id: String,
    #[serde(default)]
    atomic: bool,
    /// Each item as its JSON text, borrowed from the body: parsed straight into a
    /// [`RequestItem`] (no intermediate `Value` tree for 10,000 items).
    #[serde(borrow)]
    items: Vec<&'a serde_json::value::RawValue>,
}

/// The body parsed: items that are not request items are refused one by one, the others go on.
fn parse(body: &[u8]) -> Result<ApiBatch, ApiError> {
    let req: BatchRequest<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "malformed-json",
            format!("the body is not a valid batch: {e}"),
        )
    })?;
    let items = req
        .items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_str::<RequestItem>(v.get())
                .map_err(|e| IssueError::new(ErrorCode::Json, format!("items[{i}]: {e}")))
        })
        .collect();
    Ok(ApiBatch {
        request_id: req.request_id,
        atomic: req.atomic,
        body_sha256: hex::encode(ca_core::sha256(body)),
        items,
    })
}

pub(super) async fn post_batch(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    ca_core::service::authorize(&actor, ca_core::service::Action::IssueBatch)
        .map_err(|e| state.refuse(e))?;
    let batch = parse(&body).inspect_err(|e| state.metrics.refused(e.kind))?;
    // The body is not needed any more: its items are parsed, its hash taken.
    drop(body);
    let _permit = state.permit(actor.name())?;
    let request_id = batch.request_id.clone();
    let started = Instant::now();
    let service = state.service.clone();
    // A hung HSM must not hold the client forever: past the deadline the client gets a 503;
    // the signatures still in the HSM then fail on their own (slower than the token's sign
    // timeout, they are not used), so nothing is stored for them.
    let mut work = tokio::task::spawn_blocking(move || service.api_batch(&actor, batch));
    let answer = loop {
        tokio::select! {
            joined = &mut work => break joined.map_err(ApiError::internal)?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if state.readiness.stuck() || started.elapsed() > state.batch_deadline {
                    state.metrics.refused("hsm-unavailable");
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "hsm-unavailable",
                        "the HSM did not answer in time; retry later with the same request_id",
                    ));
                }
            }
        }
    };
    let answer = answer.map_err(|e| state.refuse(e))?;
    if !answer.replayed {
        state.metrics.batch(started.elapsed());
        state.metrics.items(&answer.results);
    }
    Ok(respond(&headers, &request_id, answer.results))
}

pub(super) async fn get_batch(
    State(state): State<Arc<AppState>>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let rid = request_id.clone();
    let results = state
        .blocking(move |s| s.batch_answer(&actor, &rid))
        .await?;
    Ok(respond(&headers, &request_id, results))
}

/// A batch's answer: one JSON document, or one line per item with `Accept: application/x-ndjson`.
fn respond(headers: &HeaderMap, request_id: &str, items: Vec<ItemResult>) -> Response {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        request_id: &'a str,
        results: Vec<ItemResult>,
    }
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let encoded = if wants_ndjson {
        let mut out = Vec::new();
        items
            .iter()
            .try_for_each(|r| {
                serde_json::to_writer(&mut out, r)?;
                out.push(b'\n');
                Ok::<_, serde_json::Error>(())
            })
            .map(|()| ("application/x-ndjson", out))
    } else {
        serde_json::to_vec(&Answer {
            request_id,
            results: items,
        })
        .map(|out| ("application/json", out))
    };
    match encoded {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
