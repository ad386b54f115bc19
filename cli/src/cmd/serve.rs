//! `meterpki serve`: builds the engine, the server's TLS identity (key in the HSM) and the
//! client-certificate verifier, then runs `issuance-api`.

use std::sync::Arc;

use anyhow::{Context, Result};
use ca_core::issue::{tls_request, KeySource, Subject};
use ca_core::{certificate_from_pem, CaKind, KeyAlgorithm, Signer};
use der::Encode;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::ctx::{os_user, Ctx};
use crate::errors::input;

const SERVER_KEY_LABEL: &str = "meterpki-api-server";

pub fn run(
    ctx: &Ctx,
    listen: Option<String>,
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
    per_account_limit: usize,
) -> Result<()> {
    if !ctx.home.ca_cert(CaKind::Access).exists() {
        return Err(input(
            "there is no Access CA yet: run `meterpki ceremony issuing-ca --kind access`",
        ));
    }
    let listen = listen.unwrap_or_else(|| ctx.config.server.listen.clone());
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
    let hsm = ctx.hsm()?;
    let online = ctx.online_unwatched(&hsm)?;
    let store = ctx.store()?;
    let metrics = Arc::new(issuance_api::Metrics::default());
    let timed = metrics.clone();
    let engine = Arc::new(ctx.engine_with(&online, store.clone(), &move |inner| {
        Arc::new(issuance_api::TimedSigner {
            inner,
            metrics: timed.clone(),
        }) as Arc<dyn Signer>
    })?);

    // The server's identity: a key that never leaves the token, a certificate from the Access CA.
    let key = match online.find_key(SERVER_KEY_LABEL)? {
        Some(k) => k,
        None => online.generate_ec_key(SERVER_KEY_LABEL, KeyAlgorithm::EcP256)?,
    };
    let server_signer: Arc<dyn Signer> = Arc::new(online.signer(SERVER_KEY_LABEL)?);
    let cert_path = ctx.home.ca_dir().join("api-server.pem");
    let (server_cert, _) = ctx.service_certificate(&engine, &cert_path, &key.spki, || {
        let subject = Subject::Tls {
            common_name: "meterpki API".into(),
            unit: None,
            dns: dns.clone(),
            ips: ips.clone(),
        };
        tls_request(
            engine.profiles(),
            "api-server",
            subject,
            KeySource::Spki(key.spki.clone()),
            true,
        )
        .map_err(|e| input(e.to_string()))
    })?;
    let access = certificate_from_pem(&std::fs::read_to_string(ctx.home.ca_cert(CaKind::Access))?)?;
    let root = certificate_from_pem(&std::fs::read_to_string(ctx.home.ca_cert(CaKind::Root))?)?;

    // Every shard of the Access CA has a CRL before the first client connects.
    let access_issuers = crate::cmd::crl::issuers(ctx, &online, Some(CaKind::Access))?;
    drop(store);
    crate::cmd::crl::publish_issuers(ctx, &online, &access_issuers, false, None)?;
    let mut crls = Vec::new();
    for entry in std::fs::read_dir(ctx.home.crl_dir().join("access"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "crl") {
            crls.push(CertificateRevocationListDer::from(std::fs::read(&path)?));
        }
    }
    let tls = issuance_api::server_tls_config(
        vec![
            CertificateDer::from(server_cert),
            CertificateDer::from(access.to_der()?),
        ],
        server_signer.clone(),
        CertificateDer::from(root.to_der()?),
        crls,
    )
    .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;

    // Republish every issuer's CRLs before they reach nextUpdate, for as long as the server runs.
    let all_issuers = crate::cmd::crl::issuers(ctx, &online, None)?;
    let settings = ctx.crl_settings();
    let crl_dir = ctx.home.crl_dir();
    let republish_store = engine.store().clone();
    let republish_audit =
        ca_core::AuditLog::new(ctx.home.audit_log(), Some(engine.store().clone()));
    let audit_signer = online.signer(crate::cmd::ceremony::AUDIT_KEY_LABEL)?;
    let every =
        std::time::Duration::from_secs((u64::from(settings.next_update_hours) * 3600 / 2).max(60));
    std::thread::Builder::new().name("crl-republish".into()).spawn(move || loop {
        std::thread::sleep(every);
        let mut done = Vec::new();
        for issuer in &all_issuers {
            let dir = crl_dir.join(issuer.kind().name());
            match ca_core::crl::publish_all(issuer, republish_store.as_ref(), &settings, &dir, false) {
                Ok(p) => done.extend(p.into_iter().map(|p| serde_json::json!({"issuer": p.issuer, "scope": p.scope, "crl_number": p.crl_number, "entries": p.entries}))),
                Err(e) => tracing::error!(issuer = %issuer.kind().name(), error = %e, "scheduled CRL publication failed; the previous CRLs stay in place"),
            }
        }
        if !done.is_empty() {
            let _ = republish_audit.append("crl.publish", "meterpki-serve", serde_json::json!({"scheduled": true, "crls": done}));
            let _ = republish_audit.sign_head(&audit_signer, crate::cmd::ceremony::AUDIT_KEY_LABEL, "meterpki-serve");
        }
    })?;

    // Ready = the HSM signs now, within the sign timeout, and the signature verifies (a module
    // returning garbage is not ready either).
    let ready_signer = server_signer.clone();
    let sign_timeout = online.sign_timeout();
    let watched = Arc::downgrade(&online);
    let stuck: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || {
        watched
            .upgrade()
            .and_then(|t| t.oldest_sign_in_progress())
            .is_some_and(|d| d > sign_timeout)
    });
    let ready_stuck = stuck.clone();
    // Every key the server signs with: its TLS key and each issuing CA's.
    let mut probe_signers: Vec<Arc<dyn Signer>> = vec![ready_signer];
    for kind in [CaKind::Device, CaKind::Organisation, CaKind::Access] {
        if ctx.home.ca_cert(kind).exists() {
            probe_signers.push(Arc::new(ctx.issuer(&online, kind)?.0));
        }
    }
    let ready: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || {
        const PROBE: &[u8] = b"meterpki readiness probe";
        !ready_stuck()
            && probe_signers.iter().all(|signer| {
                signer.sign(PROBE).is_ok_and(|sig| {
                    ca_core::verify_signature_fast(signer.public_key(), PROBE, &sig).is_ok()
                })
            })
    });
    let store_for_audit = engine.store().clone();
    let audit = ca_core::AuditLog::new(ctx.home.audit_log(), Some(store_for_audit));
    audit.append(
        "api.start",
        &os_user(),
        serde_json::json!({"listen": listen, "dns": dns, "ips": ips}),
    )?;
    let pool_token = online.clone();
    let pool: Arc<dyn Fn() -> (usize, usize) + Send + Sync> =
        Arc::new(move || (pool_token.sessions_in_use(), pool_token.pool_size()));
    let state = Arc::new(
        issuance_api::AppState::new(
            engine,
            audit,
            ctx.home.crl_dir(),
            ready,
            per_account_limit,
            metrics,
            pool,
        )
        .with_hsm_watch(sign_timeout, stuck),
    );
    let router = issuance_api::router(state);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("listening on https://{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        issuance_api::serve(
            listener,
            tls,
            router,
            issuance_api::ServeOptions::default(),
            shutdown,
        )
        .await?;
        eprintln!("stopped");
        Ok::<(), anyhow::Error>(())
    })
}
