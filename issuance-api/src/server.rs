//! The accept loop: connection limits (global and per client address) before any TLS, the
//! rustls handshake (bounded in time), the client certificate handed to the router per
//! connection, HTTP/1.1 and HTTP/2 with header, idle and body-rate limits, back-off when
//! accepting fails, graceful shutdown.
//!
//! Written here rather than taken from a crate: hyper and tower-http time out headers and each
//! body frame, but nothing they offer closes a connection that is idle between requests on
//! both protocols, or cuts a body trickled one byte at a time just inside the frame timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::auth::Peer;

/// How the server runs: its limits on connections, time and body rates.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a new connection has to send its first request's headers.
    pub header_timeout: Duration,
    /// Time a connection may stay with no request being handled and nothing moving.
    pub idle_timeout: Duration,
    /// The slowest a request body may arrive (bytes a second, on average, after
    /// `header_timeout`).
    pub min_body_rate: u64,
    /// Connections at once on the listener.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_connections_per_ip: usize,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions::from_config(&ca_core::ServerConfig::default())
    }
}

impl ServeOptions {
    /// The limits of `[server]` in meterpki.toml.
    pub fn from_config(c: &ca_core::ServerConfig) -> ServeOptions {
        ServeOptions {
            handshake_timeout: Duration::from_secs(c.header_timeout_secs),
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            min_body_rate: c.min_body_bytes_per_sec.max(1),
            max_connections: c.max_connections.max(1),
            max_connections_per_ip: c.max_connections_per_ip.max(1),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves; then stops accepting and
/// lets in-flight connections finish (up to `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    accept_loop(
        listener,
        Some(TlsAcceptor::from(Arc::new(tls))),
        router,
        options,
        shutdown,
    )
    .await
}

/// Serves `router` over plain HTTP (the relying parties' CRL listener) on `listener` until
/// `shutdown` resolves, as [`serve`] does over TLS.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    accept_loop(listener, None, router, options, shutdown).await
}

/// At most one log line per 10 s for a repeated event, with how many were not logged.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// `Some(events not logged since the last line)` when this one may be logged.
    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Connections per client address; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct IpSlot(PerIp, IpAddr);

impl PerIp {
    fn take(&self, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let per_ip = PerIp::default();
    let (mut accept_log, mut ip_log, mut full_log) = (
        Throttled::default(),
        Throttled::default(),
        Throttled::default(),
    );
    // Accepting fails when the process is out of file descriptors (or memory): the pending
    // connection stays queued, so retrying at once would spin. Wait, doubling up to 1 s.
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // Over the global limit, wait for a connection to end (clients queue in the kernel).
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if let Some(n) = full_log.hit() {
                    tracing::warn!(
                        limit = options.max_connections,
                        "connection limit reached (server.max_connections); new clients wait ({n} more times since the last line)"
                    );
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        let (tcp, addr): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => { backoff = Duration::ZERO; c }
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if let Some(n) = accept_log.hit() {
                        tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "accepting a connection failed; backing off ({n} more failures since the last line)");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = &mut shutdown => break,
                    }
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(ip_slot) = per_ip.take(addr.ip(), options.max_connections_per_ip) else {
            if let Some(n) = ip_log.hit() {
                tracing::warn!(ip = %addr.ip(), limit = options.max_connections_per_ip, "connection refused: the client address is at its limit (server.max_connections_per_ip) ({n} more since the last line)");
            }
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let options = options.clone();
        let stop = stop_rx.clone();
        connections.spawn(async move {
            let _slots = (slot, ip_slot);
            let Some(acceptor) = acceptor else {
                return connection(TokioIo::new(tcp), router, Peer(None), addr, &options, stop)
                    .await;
            };
            let tls =
                match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
            let peer = Peer(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec()),
            );
            connection(TokioIo::new(tls), router, peer, addr, &options, stop).await;
        });
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// What is happening on one connection: requests being handled, and when a byte of a request
/// or response body last moved (or a request started or ended).
struct Activity {
    start: Instant,
    handlers: AtomicUsize,
    last_ms: AtomicU64,
    served: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            handlers: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has happened; `None` while a request is being handled.
    fn idle_for(&self) -> Option<Duration> {
        if self.handlers.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.start.elapsed().saturating_sub(last))
    }
}

/// A request being handled (dropped when its handler returns or is cancelled).
struct Handling(Arc<Activity>);

impl Handling {
    fn new(activity: &Arc<Activity>) -> Handling {
        activity.handlers.fetch_add(1, Ordering::AcqRel);
        activity.served.store(true, Ordering::Relaxed);
        activity.touch();
        Handling(activity.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.touch();
        self.0.handlers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {0} bytes a second")]
struct BodyTooSlow(u64);

/// A body whose frames count as activity on the connection. A request body must also keep up
/// with the minimum rate: its deadline is `grace + received / rate` after it is first read. A
/// response body is handed out in pieces of at most [`RESPONSE_PIECE`], so that a client
/// reading a large answer steadily, however slowly, shows activity with every piece it takes.
struct Metered {
    inner: Body,
    activity: Arc<Activity>,
    rate: Option<RateLimit>,
    /// The rest of a response frame larger than a piece.
    pending: Bytes,
}

/// The largest piece of a response body handed to hyper at once.
const RESPONSE_PIECE: usize = 64 * 1024;

struct RateLimit {
    grace: Duration,
    bytes_per_sec: u64,
    received: u64,
    /// Set when the body is first read (time spent before, e.g. authenticating, is not the
    /// client's).
    clock: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
    /// Set when the deadline passed: the request's handler answers 408.
    too_slow: Arc<AtomicBool>,
}

impl RateLimit {
    fn new(grace: Duration, bytes_per_sec: u64, too_slow: Arc<AtomicBool>) -> RateLimit {
        RateLimit {
            grace,
            bytes_per_sec,
            received: 0,
            clock: None,
            too_slow,
        }
    }

    /// Starts the clock (at the first read of the body).
    fn start(&mut self) {
        let grace = self.grace;
        self.clock
            .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(grace))));
    }

    fn deadline(&mut self) -> Pin<&mut tokio::time::Sleep> {
        let grace = self.grace;
        self.clock
            .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(grace))))
            .1
            .as_mut()
    }

    fn received(&mut self, n: usize) {
        self.received += n as u64;
        let allowed =
            self.grace + Duration::from_secs_f64(self.received as f64 / self.bytes_per_sec as f64);
        if let Some((started, sleep)) = self.clock.as_mut() {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(*started + allowed));
        }
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            this.activity.touch();
            let n = this.pending.len().min(RESPONSE_PIECE);
            return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(n)))));
        }
        if let Some(rate) = this.rate.as_mut() {
            rate.start();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.activity.touch();
                if let Some(rate) = this.rate.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        rate.received(data.len());
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                // A response: large data frames go out in pieces.
                match frame.into_data() {
                    Ok(mut data) if data.len() > RESPONSE_PIECE => {
                        this.pending = data.split_off(RESPONSE_PIECE);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if let Some(rate) = this.rate.as_mut() {
                    if std::future::Future::poll(rate.deadline(), cx).is_ready() {
                        rate.too_slow.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(BodyTooSlow(rate.bytes_per_sec).into())));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        hint.set_lower(hint.lower() + pending);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// One connection's HTTP/1.1 or HTTP/2: closed when idle (no request handled and nothing
/// moving for `header_timeout` before the first request, `idle_timeout` after), ended
/// gracefully when the server stops.
async fn connection<I>(
    io: TokioIo<I>,
    router: Router,
    peer: Peer,
    addr: SocketAddr,
    options: &ServeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let (grace, rate) = (options.header_timeout, options.min_body_rate);
    let router = router
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let activity = tracked.clone();
                async move {
                    let handling = Handling::new(&activity);
                    // Per request: one slow body answers its own request 408, no other.
                    let too_slow = Arc::new(AtomicBool::new(false));
                    let request = request.map(|inner| {
                        Body::new(Metered {
                            inner,
                            activity: activity.clone(),
                            rate: Some(RateLimit::new(grace, rate, too_slow.clone())),
                            pending: Bytes::new(),
                        })
                    });
                    let mut response = next.run(request).await;
                    if too_slow.load(Ordering::Relaxed) {
                        response = crate::error::ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "body-too-slow",
                            format!("the request body arrived slower than {rate} bytes a second (server.min_body_bytes_per_sec)"),
                        )
                        .into_response();
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                    }
                    drop(handling);
                    response.map(|inner| {
                        Body::new(Metered {
                            inner,
                            activity,
                            rate: None,
                            pending: Bytes::new(),
                        })
                    })
                }
            },
        ))
        .layer(axum::Extension(peer));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(64 * 1024);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let idle = async {
        loop {
            let limit = if activity.served.load(Ordering::Relaxed) {
                options.idle_timeout
            } else {
                options.header_timeout
            };
            match activity.idle_for() {
                Some(d) if d >= limit => return limit,
                Some(d) => tokio::time::sleep(limit - d).await,
                None => tokio::time::sleep(limit).await,
            }
        }
    };
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(%addr, error = %e, "connection ended"); } }
        limit = idle => {
            tracing::debug!(%addr, idle_secs = limit.as_secs(), "closing an idle connection");
            conn.as_mut().graceful_shutdown();
            // A request whose headers arrived as the connection was found idle still runs to
            // its end (up to the drain timeout); with nothing running, a second is enough.
            let settled = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if activity.handlers.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = settled => {}
                _ = tokio::time::sleep(options.drain_timeout) => {}
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(options.drain_timeout, conn).await;
        }
    }
}
