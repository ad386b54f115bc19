//! `meterpki hsm init-token`: a new SoftHSM token in the home.
//!
//! `meterpki hsm bench`: raw signing rates of the online token (bare PKCS#11 and hsm-bridge),
//! the figures every issuance benchmark compares against.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ca_core::{KeyAlgorithm, Signer};
use hsm_bridge::{bench_bare_cryptoki_with, bench_signer, BenchFigure};
use serde_json::json;

use crate::cmd::print_json;
use crate::ctx::Ctx;

pub(super) fn bench(ctx: &Ctx, seconds: f64) -> Result<()> {
    crate::errors::check_seconds("--seconds", seconds)?;
    let d = Duration::from_secs_f64(seconds);
    let config = ctx.config();
    let (hsm, token) = crate::ctx::raw_online_token(ctx.home(), config, config.hsm.sessions)?;
    let mut figures: Vec<(String, BenchFigure)> = Vec::new();
    for (alg, label, digest_len) in [
        (KeyAlgorithm::EcP256, "meterpki-bench-p256", 32),
        (KeyAlgorithm::EcP384, "meterpki-bench-p384", 48),
    ] {
        // A throwaway key, destroyed afterwards, so the CA keys are never used for benchmarks.
        let _ = token.destroy_key(label);
        token.generate_ec_key(label, alg)?;
        let mut run = || -> Result<()> {
            let curve = alg.name().to_string();
            for threads in [1usize, 2] {
                // The token object itself (SoftHSM re-reads its file on every C_SignInit), then
                // a session copy of it, as the pool signs.
                for copy in [false, true] {
                    let fig =
                        bench_bare_cryptoki_with(&token, label, digest_len, threads, d, copy)?;
                    eprintln!(
                        "  {curve:<9} {:<34} {threads} session(s): {:>8.0} sig/s",
                        fig.name, fig.per_second
                    );
                    figures.push((curve.clone(), fig));
                }
                let pooled = hsm.open(
                    token.label(),
                    crate::pin::online_pin(ctx.home(), config)?,
                    threads,
                )?;
                let signer: Arc<dyn Signer> = Arc::new(pooled.signer(label)?);
                let fig = bench_signer("hsm-bridge HsmSigner::sign (DER)", signer, threads, d)?;
                eprintln!(
                    "  {curve:<9} {:<34} {threads} session(s): {:>8.0} sig/s",
                    fig.name, fig.per_second
                );
                figures.push((curve.clone(), fig));
            }
            Ok(())
        };
        let r = run();
        token.destroy_key(label)?;
        r?;
    }
    let out: Vec<_> = figures
        .iter()
        .map(|(curve, f)| json!({"curve": curve, "name": f.name, "sessions": f.threads, "signatures": f.signatures, "seconds": f.seconds, "per_second": f.per_second}))
        .collect();
    if ctx.json {
        print_json(&out)?;
    } else {
        println!(
            "\n{:<9} {:<34} {:>8} {:>12}",
            "curve", "path", "sessions", "sig/s"
        );
        for (curve, f) in &figures {
            println!(
                "{curve:<9} {:<34} {:>8} {:>12.0}",
                f.name, f.threads, f.per_second
            );
        }
        for curve in ["EC P-256", "EC P-384"] {
            for threads in [1usize, 2] {
                let get = |prefix: &str| {
                    figures
                        .iter()
                        .find(|(c, f)| {
                            c == curve && f.threads == threads && f.name.starts_with(prefix)
                        })
                        .map(|(_, f)| f.per_second)
                };
                if let (Some(bare), Some(bridge)) = (get("bare cryptoki C_Sign"), get("hsm-bridge"))
                {
                    println!(
                        "{curve} {threads} session(s): hsm-bridge / bare cryptoki = {:.0} %",
                        100.0 * bridge / bare
                    );
                }
                if let (Some(object), Some(copy)) = (
                    get("bare cryptoki, token object"),
                    get("bare cryptoki C_Sign"),
                ) {
                    println!(
                        "{curve} {threads} session(s): session copy / token object = {:.0} %",
                        100.0 * copy / object
                    );
                }
            }
        }
    }
    Ok(())
}

pub(super) fn init_token(ctx: &Ctx, label: &str) -> Result<()> {
    let summary = ctx.service.init_token(&crate::ctx::operator(), label)?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "Token {label} created in {}.",
        ctx.home().softhsm_tokens().display()
    );
    println!(
        "  user PIN     {} (0600)",
        summary["pin_file"].as_str().unwrap_or("")
    );
    println!(
        "  SO PIN       {} (0600; replaced by the quorum's when the key-backup key goes in)",
        summary["so_pin_file"].as_str().unwrap_or("")
    );
    println!("  listed in    [[hsm.tokens]] of meterpki.toml");
    println!(
        "Next: meterpki ceremony replicate --to-token {label} --share ... (or ceremony restore)"
    );
    Ok(())
}
