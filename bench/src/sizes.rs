//! `meterpki-bench sizes`: the size distribution of meter certificates as this home issues
//! them (its profiles, its Device CA's name and key in the HSM), without and with a CRL
//! pointer, on a scratch store: N fresh keys each way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ca_core::issue::{AccountLimits, CrlSettings, Engine, IssuerCtx, RequestItem};
use ca_core::{AuditLog, CaKind, Home};
use meterpki_cli::support::input;
use serde_json::json;

use crate::Bench;

/// `meterpki-bench sizes` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct SizesArgs {
    /// Certificates per variant (fresh P-256 keys).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// CRL base URL of the variant with a CRL pointer (the design's bound: a URL of up to 30 characters, e.g. http://c.mp/crl/device/15.crl).
    #[arg(long, default_value = "http://c.mp/crl")]
    pub crl_base: String,
    /// Profiles to issue with (default: the home's policies/).
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// Meter profile.
    #[arg(long, default_value = "meter-signing")]
    pub profile: String,
}

/// `meterpki-bench sizes`.
pub(crate) fn run(b: &Bench, a: &SizesArgs) -> Result<()> {
    if a.count == 0 || a.count > 1_000_000 {
        return Err(input("--count: 1 to 1,000,000"));
    }
    let home = b.service.home();
    let profiles_dir = a.profiles.clone().unwrap_or_else(|| home.policies_dir());
    let profiles = policies::ProfileSet::load_dir(&profiles_dir)
        .with_context(|| format!("loading profiles from {}", profiles_dir.display()))?;
    let cert_path = home.ca_cert(CaKind::Device);
    let cert = ca_core::certificate_from_pem(
        &std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?,
    )?;
    let token = b.raw_token(b.service.config().hsm.sessions)?;
    let signer: Arc<dyn ca_core::Signer> = Arc::new(token.signer(&CaKind::Device.key_label())?);
    let issuer = Arc::new(IssuerCtx::new(CaKind::Device, cert, signer)?);
    let work = tempfile::tempdir()?;
    eprintln!("making {} CSRs...", 2 * a.count);
    let file = work.path().join("requests.ndjson");
    crate::input::write_batch(2 * a.count, &file, &a.profile)?;
    let items: Vec<RequestItem> = std::fs::read_to_string(&file)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut report = Vec::new();
    for (n, base) in [None, Some(a.crl_base.clone())].into_iter().enumerate() {
        let dir = work.path().join(format!("store-{n}"));
        std::fs::create_dir_all(&dir)?;
        let scratch = Home::new(&dir);
        let store = ca_core::store::open(&Default::default(), &scratch)?;
        let audit = AuditLog::new(scratch.audit_log(), store.clone());
        let crl = CrlSettings {
            shards: b.service.config().crl.shards,
            base_url: base.clone(),
            next_update_hours: 24,
            arl_next_update_days: 365,
        };
        let engine = Engine::new(
            profiles.clone(),
            vec![issuer.clone()],
            audit,
            crl,
            b.service.config().hsm.sessions,
        )?;
        let part = &items[n * a.count..(n + 1) * a.count];
        let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
        let mut max_url = 0;
        for chunk in part.chunks(5_000) {
            let batch: Vec<_> = chunk.iter().cloned().map(Ok).collect();
            let results = engine.issue_batch(&batch, &AccountLimits::default(), false, &|r| {
                Some(ca_core::AuditEntry::new(
                    "bench.sizes",
                    "meterpki-bench",
                    json!({"items": r.len()}),
                ))
            })?;
            for r in results {
                let o = r.map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.detail))?;
                *sizes.entry(o.record.der.len()).or_default() += 1;
                if let Some(b) = &base {
                    max_url = max_url.max(format!("{b}/device/{}.crl", o.record.shard).len());
                }
            }
        }
        let total: usize = sizes.values().sum();
        let pct = |p: f64| {
            let want = ((total as f64) * p).ceil().max(1.0) as usize;
            let mut seen = 0;
            for (size, count) in &sizes {
                seen += count;
                if seen >= want {
                    return *size;
                }
            }
            0
        };
        let limit = if base.is_some() { 460 } else { 410 };
        report.push(json!({
            "crl_pointer": base.as_ref().map(|b| format!("{b}/device/<shard>.crl")),
            "longest_crl_url": max_url,
            "certificates": total,
            "min": sizes.keys().next(), "p50": pct(0.5), "p99": pct(0.99),
            "max": sizes.keys().next_back(),
            "limit": limit,
            "headroom_bytes": limit as i64 - *sizes.keys().next_back().unwrap_or(&0) as i64,
            "histogram": sizes.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    let out = json!({"profile": a.profile, "profiles": profiles_dir, "variants": report});
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for v in &report {
            println!(
                "{}: {} certificates, min {} / p50 {} / p99 {} / max {} bytes (limit {}, headroom {})",
                v["crl_pointer"]
                    .as_str()
                    .map_or("no CRL pointer".to_string(), |u| format!(
                        "CRL pointer {u} (longest URL {} characters)",
                        v["longest_crl_url"]
                    )),
                v["certificates"],
                v["min"],
                v["p50"],
                v["p99"],
                v["max"],
                v["limit"],
                v["headroom_bytes"]
            );
            let hist: Vec<String> = v["histogram"]
                .as_object()
                .map(|h| h.iter().map(|(s, c)| format!("{s}: {c}")).collect())
                .unwrap_or_default();
            println!("  {}", hist.join(", "));
        }
    }
    Ok(())
}
