//! `meterpki-bench issue`: N meter certificates through the `issue --batch` use case, beside
//! the raw signing rate of the Device CA key measured in the same run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ca_core::service::Actor;
use ca_core::CaKind;
use hsm_bridge::{bench_bare_cryptoki, bench_signer};
use meterpki_cli::support::{progress_bar, Bar};
use serde_json::json;

use crate::figures::{
    peak_rss_kb, print_ceiling, print_rates, rates_json, verify_rate, CERTIFICATE_VERIFICATIONS,
};
use crate::Bench;

pub(crate) fn run(b: &Bench, count: usize, raw_seconds: f64) -> Result<()> {
    let service = &b.service;
    let sessions = service.config().hsm.sessions;
    let dir = tempfile::tempdir()?;
    let batch = dir.path().join("batch.ndjson");
    let results = dir.path().join("results.ndjson");
    eprintln!("making {count} CSRs with software P-256 keys (benchmark input only)...");
    crate::input::write_batch(count, &batch, "meter-signing")?;
    let d = Duration::from_secs_f64(raw_seconds);
    eprintln!(
        "raw signing rate of the Device CA key, {sessions} session(s), {raw_seconds} s each..."
    );
    let token = b.raw_token(sessions)?;
    let bare = bench_bare_cryptoki(&token, &CaKind::Device.key_label(), 32, sessions, d)?;
    let device = Arc::new(token.signer(&CaKind::Device.key_label())?);
    let bridge = bench_signer("hsm-bridge", device, sessions, d)?;
    drop(token);
    let verify = verify_rate(sessions, d)?;
    // The engine (and its HSM sessions) made before the clock starts, as a CLI run has it.
    service.engine()?;
    // Peak RSS from here on: the issuance, not the CSR generation.
    crate::figures::reset_peak_rss();
    eprintln!("issuing {count} certificates through the `issue --batch` path...");
    let bar = Bar(std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| progress_bar(count as u64, "certificates")));
    let summary = service.issue_file(&Actor::local(), &batch, &results, 1000, &bar)?;
    bar.finish();
    let rss = peak_rss_kb();
    let rate = summary.issued as f64 / summary.seconds;
    let mut out = json!({
        "certificates": summary.issued,
        "rejected": summary.rejected,
        "seconds": summary.seconds,
        "certificates_per_second": rate,
        "sessions": sessions,
        "store_certificates": service.store()?.cert_count()?,
    });
    if let Some(o) = out.as_object_mut() {
        o.extend(rates_json(rate, &bare, &bridge, verify, 2, rss));
    }
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "issued                 {} certificates in {:.1} s ({} rejected)",
            summary.issued, summary.seconds, summary.rejected
        );
        print_rates(
            ("issuance rate", "certificates/s", rate),
            &bare,
            &bridge,
            sessions,
            70,
        );
        print_ceiling(bare.per_second, verify, 2, CERTIFICATE_VERIFICATIONS);
        println!(
            "share of the ceiling   {:>7.0} % (target >= 85 %)",
            100.0 * out["share_of_ceiling"].as_f64().unwrap_or(0.0)
        );
        if let Some(k) = rss {
            println!("peak RSS (issuance)    {:>8.1} MB", k as f64 / 1024.0);
        }
    }
    if summary.rejected > 0 {
        anyhow::bail!("{} requests were rejected", summary.rejected);
    }
    Ok(())
}
