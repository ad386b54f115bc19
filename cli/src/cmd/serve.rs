//! `meterpki serve`: the server's identity and CRLs from the service, the TLS configuration,
//! then `issuance-api` until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::{Context, Result};
use ca_core::service::Actor;
use ca_core::Signer;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::ctx::Ctx;

pub(super) fn run(
    ctx: Ctx,
    listen: Option<String>,
    crl_listen: Option<String>,
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
    per_account_limit: usize,
) -> Result<()> {
    let listen = listen.unwrap_or_else(|| ctx.config().server.listen.clone());
    let crl_listen = crl_listen.unwrap_or_else(|| ctx.config().server.crl_listen.clone());
    let dns = if dns.is_empty() && ips.is_empty() {
        vec!["localhost".to_string()]
    } else {
        dns
    };
    let ips = if ips.is_empty() {
        vec![std::net::IpAddr::from([127, 0, 0, 1])]
    } else {
        ips
    };
    let ctx_home = ctx.home().clone();
    let serve_options = issuance_api::ServeOptions::from_config(&ctx.config().server);
    let listeners = if crl_listen.is_empty() { 1 } else { 2 };
    raise_descriptor_limit(serve_options.max_connections as u64 * listeners + 256);
    let metrics = Arc::new(issuance_api::Metrics::default());
    let timed = metrics.clone();
    let service = Arc::new(ctx.service.with_signer_wrap(Arc::new(move |inner| {
        Arc::new(issuance_api::TimedSigner {
            inner,
            metrics: timed.clone(),
        }) as Arc<dyn Signer>
    })));
    let actor = Actor::System("meterpki-serve");
    let start = service.start_server(&actor, &listen, dns, ips)?;
    let identity = start.identity;
    let tls = issuance_api::server_tls_config(
        identity
            .chain
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        identity.signer.clone(),
        start
            .client_anchors
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        start
            .access_crls
            .into_iter()
            .map(CertificateRevocationListDer::from)
            .collect(),
    )
    .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
    // Every issuer's CRLs republished before they reach nextUpdate, while the server runs.
    service.spawn_crl_schedule()?;
    let readiness = Arc::new(service.readiness(identity.signer)?);
    readiness.spawn_token_probes();
    let service_for_admin = service.clone();
    let shared_store = service.config().store.backend == ca_core::store::StoreBackend::Postgres;
    let admin_path = ctx_home.admin_socket();
    let state = Arc::new(issuance_api::AppState::new(
        service,
        readiness,
        per_account_limit,
        metrics,
    ));
    for p in &start.published {
        tracing::info!(issuer = %p.issuer, scope = %p.scope, crl_number = p.crl_number, "published at start");
    }
    let router = issuance_api::router(state.clone());
    let crl_router = issuance_api::crl_router(state);
    let admin_service = service_for_admin;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let crl_listener = if crl_listen.is_empty() {
            None
        } else {
            Some(
                tokio::net::TcpListener::bind(&crl_listen)
                    .await
                    .with_context(|| {
                        format!("listening for CRL fetches on {crl_listen} (server.crl_listen)")
                    })?,
            )
        };
        // The stop signals are taken over before the server says it listens: a SIGTERM sent
        // as soon as it does stops it cleanly, never by the default action.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let addr = listener.local_addr()?;
        println!("listening on https://{addr}");
        match &crl_listener {
            Some(l) => println!("serving CRLs on http://{}/crl/", l.local_addr()?),
            None => println!("no plain-HTTP CRL listener (server.crl_listen is empty)"),
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        // The operator's commands (revoke, account disable, crl publish) reach an embedded
        // store through this server while it holds it. A shared store is every process's:
        // commands open the database themselves, beside any number of servers.
        let bound = (!shared_store).then(|| issuance_api::AdminSocket::bind(&admin_path));
        let admin = match bound {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                eprintln!(
                    "warning: no operator socket at {} ({e}): `meterpki revoke`, `account disable` and `crl publish` cannot reach this server's store",
                    admin_path.display()
                );
                None
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let tls_server = issuance_api::serve(
            listener,
            tls,
            router,
            serve_options.clone(),
            stopped(stop_rx.clone()),
        );
        let plain_server = async {
            match crl_listener {
                Some(l) => {
                    issuance_api::serve_plain(
                        l,
                        crl_router,
                        serve_options.clone(),
                        stopped(stop_rx.clone()),
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let admin_server = async {
            if let Some(a) = admin {
                a.serve(admin_service, stopped(stop_rx.clone())).await;
            }
        };
        let (a, b, ()) = tokio::join!(tls_server, plain_server, admin_server);
        a?;
        b?;
        eprintln!("stopped");
        Ok::<(), anyhow::Error>(())
    })
}

/// Raises the soft limit on open files to the hard limit: every connection holds a descriptor,
/// and the store, the audit log, CRL publication and the HSM need more, so the connection
/// limits must run out before the descriptors do (or callers without an account could make
/// issuance fail). Warns when even the hard limit is below what the limits need.
fn raise_descriptor_limit(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let target = now.maximum.unwrap_or(u64::MAX).min(1 << 20);
    let current = now.current.unwrap_or(u64::MAX);
    let current = if current < target {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: now.maximum,
            },
        ) {
            Ok(()) => target,
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-file limit");
                current
            }
        }
    } else {
        current
    };
    if current < needed {
        eprintln!(
            "warning: the open-file limit is {current}, below the {needed} that server.max_connections needs on every listener plus a reserve: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower server.max_connections"
        );
    }
}
