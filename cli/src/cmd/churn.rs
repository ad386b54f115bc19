//! What the churn commands share: the trust-update signer, the churn engine, update sinks,
//! progress bars, and running a journaled operation to its end.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result};
use ca_core::churn::{Churn, ChurnError, DirSink, NdjsonSink, OpRecord, UpdateSink};
use ca_core::issue::{tls_request, Engine, KeySource, Subject};
use ca_core::tamp::UpdateSigner;
use ca_core::{certificate_from_pem, CaKind, KeyAlgorithm, Signer};
use der::Decode;
use hsm_bridge::Token;
use serde_json::json;

use crate::args::UpdatesOut;
use crate::ctx::{os_user, Ctx};
use crate::errors::input;

/// The trust-update signer's key on the online token.
pub const UPDATE_KEY_LABEL: &str = "meterpki-trust-update-signer";
const UPDATE_PROFILE: &str = "trust-update-signer";

/// A churn error as the CLI reports it: refusals are the user's (exit 2).
pub fn churn_err(e: ChurnError) -> anyhow::Error {
    match e {
        ChurnError::Refused { .. } => input(e.to_string()),
        other => anyhow::Error::new(other),
    }
}

/// The signer of trust-anchor updates: its key made in the online token and its certificate
/// issued by the Organisation CA the first time it is needed (`<home>/ca/trust-update-signer.pem`),
/// renewed when the key changed or fewer than 30 days are left.
pub fn update_signer(ctx: &Ctx, online: &Arc<Token>, engine: &Engine) -> Result<UpdateSigner> {
    let org_path = ctx.home.ca_cert(CaKind::Organisation);
    let org = certificate_from_pem(&std::fs::read_to_string(&org_path).map_err(|_| {
        input(format!(
            "no Organisation CA ({} missing): run `meterpki ceremony issuing-ca --kind organisation` first",
            org_path.display()
        ))
    })?)?;
    let key = match online.find_key(UPDATE_KEY_LABEL)? {
        Some(k) => k,
        None => online.generate_ec_key(UPDATE_KEY_LABEL, KeyAlgorithm::EcP256)?,
    };
    let cert_path = ctx.home.ca_dir().join("trust-update-signer.pem");
    let (der, issued) = ctx.service_certificate(engine, &cert_path, &key.spki, || {
        tls_request(
            engine.profiles(),
            UPDATE_PROFILE,
            Subject::Tls {
                common_name: "meterpki trust-update signer".into(),
                unit: None,
                dns: Vec::new(),
                ips: Vec::new(),
            },
            KeySource::Spki(key.spki.clone()),
            true,
        )
        .map_err(|e| input(e.to_string()))
    })?;
    if let Some(rec) = issued {
        ctx.audit(ctx.store()?).append(
            "trust-update-signer.issue",
            &os_user(),
            json!({"serial": rec.serial_hex(), "certificate": cert_path}),
        )?;
    }
    let cert = x509_cert::Certificate::from_der(&der)?;
    let signer: Arc<dyn Signer> = Arc::new(online.signer(UPDATE_KEY_LABEL)?);
    UpdateSigner::new(signer, cert, vec![org]).context("the trust-update signer")
}

/// The names of the supplier profiles (the keys a supplier can hold in meters).
pub fn supplier_profiles(profiles: &policies::ProfileSet) -> Vec<String> {
    profiles
        .of_kind(policies::ProfileKind::Supplier)
        .map(|p| p.name().to_string())
        .collect()
}

/// Whether `profile` names a supplier profile.
pub fn is_supplier_profile(profiles: &policies::ProfileSet, profile: &str) -> bool {
    profiles
        .get(profile)
        .is_some_and(|p| p.kind() == policies::ProfileKind::Supplier)
}

/// The churn engine for this home.
pub fn churn(ctx: &Ctx, online: &Arc<Token>, engine: &Engine) -> Result<Churn> {
    let signer = update_signer(ctx, online, engine)?;
    let supplier_profiles = supplier_profiles(engine.profiles());
    Ok(Churn::new(
        engine.store().clone(),
        Arc::new(signer),
        supplier_profiles,
        ctx.config.hsm.sessions,
    ))
}

/// The sink named by `--updates-out` / `--updates-ndjson`, if any.
pub fn sink(u: &UpdatesOut) -> Result<Option<Box<dyn UpdateSink>>> {
    if let Some(dir) = &u.updates_out {
        return Ok(Some(Box::new(DirSink::create(dir).map_err(|e| {
            input(format!("--updates-out {}: {e}", dir.display()))
        })?)));
    }
    if let Some(f) = &u.updates_ndjson {
        return Ok(Some(Box::new(NdjsonSink::open(f).map_err(|e| {
            input(format!("--updates-ndjson {}: {e}", f.display()))
        })?)));
    }
    Ok(None)
}

/// The sink, required.
pub fn required_sink(u: &UpdatesOut) -> Result<Box<dyn UpdateSink>> {
    sink(u)?.ok_or_else(|| {
        input("give --updates-out DIR or --updates-ndjson FILE: this operation makes trust-anchor updates for the meters")
    })
}

/// A progress bar on a terminal, nothing otherwise. `len` is only computed when the bar is shown
/// (counting a bulk file's lines or an operation's meters is a pass over them).
pub fn bar(ctx: &Ctx, len: impl FnOnce() -> u64, what: &str) -> Option<indicatif::ProgressBar> {
    if ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(len());
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

/// Runs a journaled operation over its meters with a progress bar, marks it complete and
/// returns the meters updated by this run and the refusals.
pub fn run_op(
    ctx: &Ctx,
    churn: &Churn,
    op: &mut OpRecord,
    chunk: usize,
    sink: &mut dyn UpdateSink,
) -> Result<(u64, Vec<(String, ChurnError)>)> {
    let bar = bar(ctx, || churn.remaining(op).unwrap_or(0), "meters");
    let (done, refused) = churn
        .run_op(op, chunk, sink, &mut |n| {
            if let Some(b) = &bar {
                b.set_position(n);
            }
        })
        .map_err(churn_err)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if refused.is_empty() {
        churn.complete(op).map_err(churn_err)?;
    }
    Ok((done, refused))
}
