//! The routes (DESIGN §7). Every `/v1` handler first resolves the caller from its client
//! certificate; the blocking work (HSM, store) runs on tokio's blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use ca_core::issue::{
    AccountLimits, Engine, ErrorCode, IssueError, Outcome, RequestItem, MAX_BATCH,
};
use ca_core::{
    Account, AuditLog, CertRecord, DeviceRange, Eui64, Reason, Revocation, Revoked, Role, Store,
    SupplierState,
};
use der::Decode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::error::ApiError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HSM signatures made through [`TimedSigner`].
    pub signatures: AtomicU64,
    /// Their total time, microseconds.
    pub sign_micros: AtomicU64,
    issued: AtomicU64,
    existing: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
    batches: AtomicU64,
    batch_micros: AtomicU64,
    sign_checks: AtomicU64,
}

/// A `Signer` that times every signature into [`Metrics`] (the HSM sign latency on /metrics).
#[derive(Debug)]
pub struct TimedSigner {
    /// The signer.
    pub inner: Arc<dyn ca_core::Signer>,
    /// Where the time goes.
    pub metrics: Arc<Metrics>,
}

impl ca_core::Signer for TimedSigner {
    fn algorithm(&self) -> ca_core::KeyAlgorithm {
        self.inner.algorithm()
    }
    fn public_key(&self) -> &spki::SubjectPublicKeyInfoOwned {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ca_core::SignError> {
        let t = Instant::now();
        let r = self.inner.sign(message);
        self.metrics.signatures.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .sign_micros
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }
}

/// What the handlers share.
pub struct AppState {
    /// The issuance engine (profiles, issuers, store).
    pub engine: Arc<Engine>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The audit log.
    pub audit: AuditLog,
    /// `<home>/crl`.
    pub crl_dir: PathBuf,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Whether the HSM can sign now (for `/readyz`).
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Requests one account may have in flight.
    pub per_account_limit: usize,
    /// HSM sessions in use and in the pool, for /metrics.
    pub pool: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// How long a batch may take at most before the client gets a 503.
    pub batch_deadline: std::time::Duration,
    /// True while a signature has been in the HSM longer than the sign timeout (a hung HSM):
    /// batches then answer 503 at once rather than at the deadline.
    pub hsm_stuck: Arc<dyn Fn() -> bool + Send + Sync>,
    /// How long `/readyz` waits for its probe signature.
    pub ready_deadline: std::time::Duration,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl AppState {
    /// State for the router.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Arc<Engine>,
        audit: AuditLog,
        crl_dir: PathBuf,
        ready: Arc<dyn Fn() -> bool + Send + Sync>,
        per_account_limit: usize,
        metrics: Arc<Metrics>,
        pool: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
    ) -> AppState {
        AppState {
            store: engine.store().clone(),
            engine,
            audit,
            crl_dir,
            metrics,
            ready,
            per_account_limit: per_account_limit.max(1),
            pool,
            batch_deadline: std::time::Duration::from_secs(120),
            hsm_stuck: Arc::new(|| false),
            ready_deadline: std::time::Duration::from_secs(2),
            permits: Mutex::new(HashMap::new()),
        }
    }

    /// Watches the HSM: `stuck` says whether a signature has been pending longer than the sign
    /// timeout; `/readyz` waits at most the sign timeout (capped at 2 s) for its probe.
    pub fn with_hsm_watch(
        mut self,
        sign_timeout: std::time::Duration,
        stuck: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> AppState {
        self.ready_deadline = sign_timeout.min(std::time::Duration::from_secs(2));
        self.hsm_stuck = stuck;
        self
    }

    fn permit(&self, account: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let sem = self
            .permits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(account.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_account_limit)))
            .clone();
        sem.try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                format!(
                    "account {account} already has {} requests in flight",
                    self.per_account_limit
                ),
            )
        })
    }

    fn refused(&self, code: &str) {
        *self
            .metrics
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code.to_string())
            .or_default() += 1;
    }
}

/// The client certificate of the connection (leaf DER), set by the server per connection.
#[derive(Clone, Debug, Default)]
pub struct Peer(pub Option<Vec<u8>>);

/// The account behind the client certificate.
pub struct Caller(pub Account);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        // Set by `authenticate`, which every /v1 route passes through first.
        parts
            .extensions
            .get::<Account>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::internal("a /v1 route was reached without authentication"))
    }
}

/// Resolves the account of the connection's client certificate for every `/v1` request. A
/// refused request never reaches a handler; its body is read (within the limit) before the
/// answer, so that HTTP/2 clients still uploading see the response rather than a reset stream.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or_default();
    match resolve_account(&state, peer).await {
        Ok(account) => {
            request.extensions_mut().insert(account);
            next.run(request).await
        }
        Err(e) => {
            let _ = axum::body::to_bytes(request.into_body(), 16 * 1024 * 1024).await;
            e.into_response()
        }
    }
}

async fn resolve_account(state: &Arc<AppState>, peer: Peer) -> Result<Account, ApiError> {
    let Some(der) = peer.0 else {
        state.refused("no-client-certificate");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client-certificate-required",
            "this endpoint needs a client certificate from the Access CA",
        ));
    };
    // The handshake already verified the chain and the CRLs; find the account it belongs to.
    let cert = x509_cert::Certificate::from_der(&der).map_err(ApiError::internal)?;
    let serial = cert.tbs_certificate.serial_number.as_bytes().to_vec();
    let store = state.store.clone();
    let account = tokio::task::spawn_blocking(move || store.account_by_cert(&serial))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match account {
        None => {
            state.refused("unknown-account");
            Err(ApiError::forbidden(
                "no account is bound to this client certificate",
            ))
        }
        Some(a) if a.disabled => {
            state.refused("account-disabled");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "account-disabled",
                format!("account {} is disabled", a.name),
            ))
        }
        Some(a) if a.role == Role::Supplier => {
            // A supplier that was taken over or left the market loses its power at once.
            let id = a.supplier.clone().unwrap_or_default();
            let store = state.store.clone();
            let supplier = tokio::task::spawn_blocking(move || store.supplier(&id))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            match supplier {
                Some(s) if s.state == SupplierState::Active => Ok(a),
                Some(s) => {
                    state.refused("supplier-inactive");
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "supplier-inactive",
                        format!("supplier {} ({}) is {}", s.id, s.name, s.state),
                    ))
                }
                None => {
                    state.refused("supplier-unknown");
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "supplier-unknown",
                        format!("account {} names no registered supplier", a.name),
                    ))
                }
            }
        }
        Some(a) => Ok(a),
    }
}

/// The router: `/v1` for accounts, `/crl` and health endpoints public.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/batches", post(post_batch))
        .route("/v1/batches/{request_id}", get(get_batch))
        .route("/v1/certificates/{serial}", get(get_certificate))
        .route("/v1/certificates/{serial}/revoke", post(revoke_certificate))
        .route(
            "/v1/devices/{device_id}/certificates",
            get(device_certificates),
        )
        .route(
            "/v1/suppliers/{id}/certificates",
            get(supplier_certificates),
        )
        .route("/v1/suppliers/{id}/keys", post(enrol_supplier_key))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .merge(v1)
        .route("/crl/{issuer}/{file}", get(get_crl))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::map_response(problem_for_rejections))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        // A client that stops sending its body mid-way (slowloris) is cut off.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_secs(30),
        ))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(state)
}

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

/// One item of a batch's answer (DESIGN §7), serialised as it is: an issued item carries its
/// serial, certificate and whether it existed already; a refused one its error.
#[derive(serde::Serialize)]
struct ItemResult {
    index: usize,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    existing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

impl ItemResult {
    fn issued(index: usize, serial: String, der: &[u8], existing: bool) -> ItemResult {
        ItemResult {
            index,
            status: "issued",
            serial: Some(serial),
            certificate: Some(B64.encode(der)),
            existing: Some(existing),
            error: None,
        }
    }

    fn rejected(index: usize, error: Value) -> ItemResult {
        ItemResult {
            index,
            status: "rejected",
            serial: None,
            certificate: None,
            existing: None,
            error: Some(error),
        }
    }

    fn of(index: usize, r: &Result<Outcome, IssueError>) -> ItemResult {
        match r {
            Ok(o) => ItemResult::issued(index, o.record.serial_hex(), &o.record.der, o.existing),
            Err(e) => ItemResult::rejected(index, json!({"code": e.code, "detail": e.detail})),
        }
    }
}

async fn post_batch(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if account.role != Role::Factory {
        state.refused("forbidden");
        return Err(ApiError::forbidden(format!(
            "account {} is a {} account; batches are for factory accounts",
            account.name, account.role
        )));
    }
    let req: BatchRequest<'_> = serde_json::from_slice(&body).map_err(|e| {
        state.refused("malformed-json");
        ApiError::bad_request(
            "malformed-json",
            format!("the body is not a valid batch: {e}"),
        )
    })?;
    if req.request_id.is_empty()
        || req.request_id.len() > 128
        || req.request_id.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ApiError::bad_request(
            "request-id",
            "request_id: 1 to 128 characters, no '/' or control characters",
        ));
    }
    if req.items.len() > MAX_BATCH {
        state.refused("batch-too-large");
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch-too-large",
            format!("{} items; at most {MAX_BATCH} per batch", req.items.len()),
        ));
    }
    let _permit = state.permit(&account.name)?;
    let hash = hex::encode(ca_core::sha256(&body));
    // Idempotent by (account, request_id).
    let store = state.store.clone();
    let (name, rid) = (account.name.clone(), req.request_id.clone());
    if let Some(rec) = tokio::task::spawn_blocking(move || store.batch_record(&name, &rid))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    {
        let rec: Value = serde_json::from_slice(&rec).map_err(ApiError::internal)?;
        if rec["body_sha256"] != hash.as_str() {
            state.refused("request-id-conflict");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request-id-conflict",
                format!(
                    "request_id {:?} was used with a different body",
                    req.request_id
                ),
            ));
        }
        let items = expand_record(&state, rec).await?;
        return Ok(respond(&headers, &req.request_id, items));
    }
    let limits = AccountLimits {
        device_range: match &account.device_range {
            Some(r) => Some(r.parse::<DeviceRange>().map_err(ApiError::internal)?),
            None => Some(
                "00-00-00-00-00-00-00-00/64"
                    .parse::<DeviceRange>()
                    .map_err(ApiError::internal)?,
            ),
        },
    };
    // Items that are not request items, or name a profile a factory may not use, are refused here.
    let profiles = state.engine.profiles().clone();
    let items: Vec<Result<RequestItem, IssueError>> = req
        .items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let item: RequestItem = serde_json::from_str(v.get())
                .map_err(|e| IssueError::new(ErrorCode::Json, format!("items[{i}]: {e}")))?;
            match profiles.get(&item.profile) {
                Some(p) if p.kind() == policies::ProfileKind::Meter => Ok(item),
                Some(_) => Err(IssueError::new(
                    ErrorCode::ProfileLimit,
                    format!(
                        "items[{i}]: a factory account may only request meter profiles, not {}",
                        item.profile
                    ),
                )),
                None => Ok(item),
            }
        })
        .collect();
    let (request_id, atomic) = (req.request_id, req.atomic);
    // The body is not needed any more: its items are parsed, its hash taken.
    drop(body);
    let started = Instant::now();
    let engine = state.engine.clone();
    // A hung HSM must not hold the client forever: past the deadline the client gets a 503;
    // the signatures still in the HSM then fail on their own (slower than the token's sign
    // timeout, they are not used), so nothing is stored for them.
    let mut work = tokio::task::spawn_blocking(move || engine.issue_batch(&items, &limits, atomic));
    let results = loop {
        tokio::select! {
            joined = &mut work => break joined,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if (state.hsm_stuck)() || started.elapsed() > state.batch_deadline {
                    state.refused("hsm-unavailable");
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "hsm-unavailable",
                        "the HSM did not answer in time; retry later with the same request_id",
                    ));
                }
            }
        }
    };
    let results = results
        .map_err(ApiError::internal)?
        .map_err(|e| match e.code {
            ErrorCode::BatchTooLarge => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch-too-large", e.detail)
            }
            c if c.is_client_error() => ApiError::bad_request(c.as_str(), e.detail),
            _ => ApiError::internal(e),
        })?;
    state.metrics.batches.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .batch_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let mut authz_refusals = 0;
    for r in &results {
        match r {
            Ok(o) if o.existing => {
                state.metrics.existing.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                state.metrics.issued.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                state.refused(e.code.as_str());
                if matches!(e.code, ErrorCode::DeviceRange | ErrorCode::ProfileLimit) {
                    authz_refusals += 1;
                }
            }
        }
    }
    if let Some(Err(e)) = results
        .iter()
        .find(|r| matches!(r, Err(e) if !e.code.is_client_error()))
    {
        // The HSM failed (or returned a signature that did not verify): a clear 503, and no
        // batch record, so that a retry with the same request_id issues what is missing (the
        // items stored before the failure come back as existing).
        let _ = state.audit.append(
            "api.batch.failed",
            &account.name,
            json!({"request_id": request_id, "items": results.len(), "code": e.code}),
        );
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.code.as_str(),
            "the HSM could not sign; nothing unsigned was issued; retry later with the same request_id",
        ));
    }
    let issued = results.iter().filter(|r| r.is_ok()).count();
    let _ = state.audit.append("api.batch", &account.name, json!({"request_id": request_id, "items": results.len(), "issued": issued, "refused": results.len() - issued}));
    if issued == 0 && authz_refusals == results.len() && !results.is_empty() {
        // Nothing issued, every item outside what this account may ask for.
        return Err(ApiError::forbidden(format!(
            "nothing issued: every item is outside what account {} may request (device range {})",
            account.name,
            account.device_range.unwrap_or_default()
        )));
    }
    let items: Vec<ItemResult> = results
        .iter()
        .enumerate()
        .map(|(i, r)| ItemResult::of(i, r))
        .collect();
    drop(results);
    let store = state.store.clone();
    // The record keeps serials, not certificates: the certificates are in the store already.
    let compact: Vec<Value> = items
        .iter()
        .map(|r| match &r.error {
            None => json!({"serial": r.serial, "existing": r.existing}),
            Some(e) => json!({"error": e}),
        })
        .collect();
    let record = serde_json::to_vec(&json!({"body_sha256": hash, "results": compact}))
        .map_err(ApiError::internal)?;
    let (name, rid) = (account.name.clone(), request_id.clone());
    tokio::task::spawn_blocking(move || store.put_batch_record(&name, &rid, &record))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(respond(&headers, &request_id, items))
}

/// A body declared larger than the limit (Content-Length) is refused before a byte of it is
/// read: no `100 Continue` is sent, and the client reads the 413 instead of being cut off while
/// still uploading (bodies without a declared length are cut at the limit by DefaultBodyLimit).
async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > 16 * 1024 * 1024) {
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
async fn problem_for_rejections(response: Response) -> Response {
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

/// JSON, or NDJSON (one result per line) when the client asks for it.
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

async fn get_batch(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let name = account.name.clone();
    let rid = request_id.clone();
    let rec = tokio::task::spawn_blocking(move || store.batch_record(&name, &rid))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let rec = rec.ok_or_else(|| {
        ApiError::not_found(format!(
            "no batch {request_id:?} for account {}",
            account.name
        ))
    })?;
    let rec: Value = serde_json::from_slice(&rec).map_err(ApiError::internal)?;
    let items = expand_record(&state, rec).await?;
    Ok(respond(&headers, &request_id, items))
}

/// Rebuilds a batch's answer from its stored record: the certificates come from the store.
async fn expand_record(state: &Arc<AppState>, rec: Value) -> Result<Vec<ItemResult>, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        let mut results = Vec::new();
        let stored = rec["results"].as_array().cloned().unwrap_or_default();
        for (i, r) in stored.into_iter().enumerate() {
            if let Some(serial) = r["serial"].as_str() {
                let der = hex::decode(serial)
                    .ok()
                    .map(|s| store.cert(&s))
                    .transpose()?
                    .flatten()
                    .map(|c| c.der)
                    .unwrap_or_default();
                let existing = r["existing"].as_bool().unwrap_or(false);
                results.push(ItemResult::issued(i, serial.to_string(), &der, existing));
            } else {
                results.push(ItemResult::rejected(i, r["error"].clone()));
            }
        }
        Ok(results)
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ca_core::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Whether `account` may see or act on `rec`.
fn may_see(account: &Account, rec: &CertRecord) -> bool {
    match account.role {
        Role::Operator => true,
        Role::Supplier => {
            rec.profile.starts_with("supplier-")
                && account.supplier.as_deref() == Some(rec.subject_id.as_str())
        }
        Role::Factory => {
            rec.profile.starts_with("meter-")
                && account
                    .device_range
                    .as_deref()
                    .and_then(|r| r.parse::<DeviceRange>().ok())
                    .zip(rec.subject_id.parse::<Eui64>().ok())
                    .is_some_and(|(r, id)| r.contains(&id))
        }
    }
}

fn cert_json(rec: &CertRecord, revocation: Option<Revocation>, active: bool) -> Value {
    json!({
        "serial": rec.serial_hex(),
        "profile": rec.profile,
        "issuer": rec.issuer,
        "subject": rec.subject_id,
        "shard": rec.shard,
        "issued_at": rec.issued_at,
        "status": match (revocation, active) {
            (Some(_), _) => "revoked",
            (None, true) => "active",
            (None, false) => "inactive",
        },
        "revocation": revocation.map(|r| json!({"reason": r.reason.name(), "revoked_at": r.revoked_at, "invalidity_date": r.invalidity_date})),
        "certificate": B64.encode(&rec.der),
    })
}

fn describe(store: &dyn Store, rec: &CertRecord) -> Result<Value, ca_core::StoreError> {
    let rev = store.revocation(&rec.serial)?;
    let active = store
        .active_cert(&rec.subject_id, &rec.profile)?
        .map(|a| a.serial == rec.serial)
        .unwrap_or(false);
    Ok(cert_json(rec, rev, active))
}

fn parse_serial(s: &str) -> Result<Vec<u8>, ApiError> {
    let b = hex::decode(s)
        .map_err(|_| ApiError::bad_request("serial", format!("{s:?} is not a hex serial")))?;
    if b.is_empty() || b.len() > 20 {
        return Err(ApiError::bad_request(
            "serial",
            "a serial is 1 to 20 octets",
        ));
    }
    Ok(b)
}

async fn get_certificate(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    let serial = parse_serial(&serial)?;
    let store = state.store.clone();
    let out = blocking(move || {
        let Some(rec) = store.cert(&serial)? else {
            return Ok(None);
        };
        if !may_see(&account, &rec) {
            return Ok(None);
        }
        Ok(Some(describe(store.as_ref(), &rec)?))
    })
    .await?;
    // Not yours and not there look the same: an account learns nothing of others' certificates.
    out.map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found("no such certificate"))
}

async fn device_certificates(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let id: Eui64 = device
        .parse()
        .map_err(|e: String| ApiError::bad_request("device-id", e))?;
    let normalised = id.to_string();
    if account.role == Role::Supplier {
        return Err(ApiError::forbidden(
            "supplier accounts do not look up devices",
        ));
    }
    let store = state.store.clone();
    let list = blocking(move || {
        let mut out = Vec::new();
        for rec in store.certs_of_subject(&id.to_string())? {
            if rec.profile.starts_with("meter-") && may_see(&account, &rec) {
                out.push(describe(store.as_ref(), &rec)?);
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({"device_id": normalised, "certificates": list})).into_response())
}

async fn supplier_certificates(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: Eui64 = id
        .parse()
        .map_err(|e: String| ApiError::bad_request("supplier-id", e))?;
    match account.role {
        Role::Operator => {}
        Role::Supplier if account.supplier.as_deref() == Some(id.to_string().as_str()) => {}
        _ => {
            return Err(ApiError::forbidden(format!(
                "account {} may not list supplier {id}'s certificates",
                account.name
            )))
        }
    }
    let store = state.store.clone();
    let list = blocking(move || {
        let mut out = Vec::new();
        for rec in store.certs_of_subject(&id.to_string())? {
            if rec.profile.starts_with("supplier-") {
                out.push(describe(store.as_ref(), &rec)?);
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({"supplier": id.to_string(), "certificates": list})).into_response())
}

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

/// A supplier enrols one of its own keys (signing or key agreement) from a CSR.
async fn enrol_supplier_key(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id: Eui64 = id
        .parse()
        .map_err(|e: String| ApiError::bad_request("supplier-id", e))?;
    if account.role != Role::Supplier
        || account.supplier.as_deref() != Some(id.to_string().as_str())
    {
        state.refused("forbidden");
        return Err(ApiError::forbidden(format!(
            "account {} may not enrol keys for supplier {id}",
            account.name
        )));
    }
    let req: EnrolRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed-json",
            format!("the body is not an enrolment request: {e}"),
        )
    })?;
    if !req.profile.starts_with("supplier-") {
        return Err(ApiError::forbidden(format!(
            "a supplier enrols supplier profiles, not {}",
            req.profile
        )));
    }
    let item = RequestItem {
        profile: req.profile,
        device_id: None,
        entity_id: Some(id.to_string()),
        name: req.name,
        csr: Some(req.csr),
        public_key: None,
        replace: req.replace,
    };
    let engine = state.engine.clone();
    let outcome =
        tokio::task::spawn_blocking(move || engine.issue(&item, &AccountLimits::default()))
            .await
            .map_err(ApiError::internal)?;
    match outcome {
        Ok(o) => {
            if !o.existing {
                state.metrics.issued.fetch_add(1, Ordering::Relaxed);
            }
            let _ = state.audit.append("api.supplier-key", &account.name, json!({"supplier": id.to_string(), "serial": o.record.serial_hex(), "profile": o.record.profile, "existing": o.existing}));
            Ok((if o.existing { StatusCode::OK } else { StatusCode::CREATED }, Json(json!({"serial": o.record.serial_hex(), "profile": o.record.profile, "certificate": B64.encode(&o.record.der), "existing": o.existing}))).into_response())
        }
        Err(e) => {
            state.refused(e.code.as_str());
            Err(match e.code {
                ErrorCode::ExistingCertificate => {
                    ApiError::new(StatusCode::CONFLICT, "existing-certificate", e.detail)
                }
                c @ (ErrorCode::SupplierInactive | ErrorCode::SupplierUnknown) => {
                    ApiError::new(StatusCode::FORBIDDEN, c.as_str(), e.detail)
                }
                c if c.is_client_error() => ApiError::bad_request(c.as_str(), e.detail),
                _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hsm-unavailable", e.detail),
            })
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
    #[serde(default)]
    invalidity_date: Option<i64>,
}

async fn revoke_certificate(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
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
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if req.invalidity_date.is_some_and(|d| d > now) {
        return Err(ApiError::bad_request(
            "invalidity-date",
            "invalidity_date is in the future",
        ));
    }
    if account.role == Role::Factory {
        state.refused("forbidden");
        return Err(ApiError::forbidden(
            "factory accounts do not revoke certificates (operators and the owning supplier do)",
        ));
    }
    let store = state.store.clone();
    let who = account.clone();
    let outcome = blocking(move || {
        let Some(rec) = store.cert(&serial)? else {
            return Ok(Err(ApiError::not_found("no such certificate")));
        };
        // A supplier learns nothing about certificates that are not its own: they are "not
        // found", as for a lookup. (Factories were refused before the lookup.)
        if who.role == Role::Supplier && !may_see(&who, &rec) {
            return Ok(Err(ApiError::not_found("no such certificate")));
        }
        let r = store.revoke(
            &[serial],
            &Revocation {
                reason,
                revoked_at: now,
                invalidity_date: req.invalidity_date,
            },
        )?;
        Ok(Ok(r))
    })
    .await??;
    let (status, rec, already) = match outcome.into_iter().next() {
        Some(Revoked::Now(r)) => ("revoked", r, None),
        Some(Revoked::Already(r, earlier)) => ("already-revoked", r, Some(earlier)),
        _ => return Err(ApiError::not_found("no such certificate")),
    };
    let _ = state.audit.append(
        "api.revoke",
        &account.name,
        json!({"serial": rec.serial_hex(), "reason": reason.name(), "status": status}),
    );
    Ok(Json(json!({"serial": rec.serial_hex(), "status": status, "reason": already.map(|e| e.reason).unwrap_or(reason).name()})).into_response())
}

async fn get_crl(
    State(state): State<Arc<AppState>>,
    Path((issuer, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !["device", "organisation", "access"].contains(&issuer.as_str()) {
        return Err(ApiError::not_found("no such CRL"));
    }
    let stem = file
        .strip_suffix(".crl")
        .ok_or_else(|| ApiError::not_found("no such CRL"))?;
    if !(stem == "full"
        || (!stem.is_empty() && stem.len() <= 5 && stem.chars().all(|c| c.is_ascii_digit())))
    {
        return Err(ApiError::not_found("no such CRL"));
    }
    let path = state.crl_dir.join(&issuer).join(format!("{stem}.crl"));
    match tokio::fs::read(&path).await {
        Ok(der) => Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response()),
        Err(_) => Err(ApiError::not_found("no such CRL (not published yet)")),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.ready.clone();
    state.metrics.sign_checks.fetch_add(1, Ordering::Relaxed);
    let probe = tokio::task::spawn_blocking(move || ready());
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP meterpki_certificates_issued_total Certificates issued through the API.\n# TYPE meterpki_certificates_issued_total counter\n");
    out.push_str(&format!(
        "meterpki_certificates_issued_total {}\n",
        m.issued.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP meterpki_certificates_existing_total Requests answered with a certificate issued before.\n# TYPE meterpki_certificates_existing_total counter\n");
    out.push_str(&format!(
        "meterpki_certificates_existing_total {}\n",
        m.existing.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP meterpki_refused_total Refused requests and items, by reason.\n# TYPE meterpki_refused_total counter\n");
    for (k, v) in m.refused.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!("meterpki_refused_total{{reason=\"{k}\"}} {v}\n"));
    }
    let n = m.signatures.load(Ordering::Relaxed);
    out.push_str("# HELP meterpki_hsm_sign_seconds Time the HSM takes to sign.\n# TYPE meterpki_hsm_sign_seconds summary\n");
    out.push_str(&format!("meterpki_hsm_sign_seconds_count {n}\n"));
    out.push_str(&format!(
        "meterpki_hsm_sign_seconds_sum {}\n",
        m.sign_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    let (in_use, size) = (state.pool)();
    out.push_str("# HELP meterpki_hsm_sessions_in_use HSM sessions lent to a request now.\n# TYPE meterpki_hsm_sessions_in_use gauge\n");
    out.push_str(&format!("meterpki_hsm_sessions_in_use {in_use}\n"));
    out.push_str("# HELP meterpki_hsm_sessions_max HSM sessions in the pool.\n# TYPE meterpki_hsm_sessions_max gauge\n");
    out.push_str(&format!("meterpki_hsm_sessions_max {size}\n"));
    out.push_str("# HELP meterpki_batch_seconds Time to answer a batch.\n# TYPE meterpki_batch_seconds summary\n");
    out.push_str(&format!(
        "meterpki_batch_seconds_count {}\n",
        m.batches.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "meterpki_batch_seconds_sum {}\n",
        m.batch_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
