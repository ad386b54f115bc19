//! The TLS accept loop: rustls handshake (bounded in time), the client certificate handed to the
//! router per connection, HTTP/1.1 and HTTP/2, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::Peer;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to read a request's headers.
    pub header_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
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

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let options = options.clone();
        let stop = stop_rx.clone();
        connections.spawn(async move {
            let Some(acceptor) = acceptor else {
                let service = TowerToHyperService::new(router.layer(axum::Extension(Peer(None))));
                return connection(TokioIo::new(tcp), service, addr, &options, stop).await;
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
            let service = TowerToHyperService::new(router.layer(axum::Extension(peer)));
            connection(TokioIo::new(tls), service, addr, &options, stop).await;
        });
        while connections.try_join_next().is_some() {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(options.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// One connection's HTTP/1.1 or HTTP/2, ended gracefully when the server stops.
async fn connection<I>(
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    addr: SocketAddr,
    options: &ServeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(%addr, error = %e, "connection ended"); } }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(options.drain_timeout, conn).await;
        }
    }
}
