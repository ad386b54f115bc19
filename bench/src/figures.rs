//! What every benchmark prints beside its rate: the raw signing rates and the P-256
//! verification rate of the same run, the ceiling they imply, and memory.

use std::time::Duration;

use anyhow::Result;
use hsm_bridge::BenchFigure;

/// Peak resident set size of this process in kB (VmHWM).
pub(crate) fn peak_rss_kb() -> Option<u64> {
    rss_kb("VmHWM:")
}

/// Starts this process's peak RSS afresh (what was used to make the input does not count).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A measured rate beside the raw signing rates of the same run, and their ratios.
pub(crate) fn print_rates(
    (label, unit, rate): (&str, &str, f64),
    bare: &BenchFigure,
    bridge: &BenchFigure,
    sessions: usize,
    target_percent: u32,
) {
    println!("{label:<22} {rate:>8.0} {unit}");
    println!(
        "raw SoftHSM rate       {:>8.0} signatures/s (bare cryptoki C_Sign, {sessions} session(s))",
        bare.per_second
    );
    println!(
        "raw via hsm-bridge     {:>8.0} signatures/s (HsmSigner::sign, {sessions} session(s))",
        bridge.per_second
    );
    println!(
        "ratio                  {:>7.0} % of the bare rate, {:.0} % of the hsm-bridge rate (target >= {target_percent} %)",
        100.0 * rate / bare.per_second,
        100.0 * rate / bridge.per_second
    );
}

/// Verifications per second of a P-256 ECDSA signature with `ca_core::verify_signature_fast`
/// (what the pipeline runs for a CSR's proof of possession and after every HSM signature), from
/// `threads` threads at once, as the signing rate is measured. Distinct messages and signatures,
/// so that nothing is served from a cache.
pub(crate) fn verify_rate(threads: usize, raw_duration: Duration) -> Result<f64> {
    // As long as the raw measurement, at most 3 s: the rate settles within a second.
    let duration = raw_duration.min(Duration::from_secs(3));
    use p256::ecdsa::signature::Signer as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    eprintln!("P-256 verification rate, {threads} thread(s)...");
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let spki = ca_core::spki_from_point(ca_core::KeyAlgorithm::EcP256, point.as_bytes())?;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..64u8)
        .map(|i| {
            let msg = vec![i; 300];
            let sig: p256::ecdsa::Signature = key.sign(&msg);
            (msg, sig.to_der().as_bytes().to_vec())
        })
        .collect();
    let count = AtomicU64::new(0);
    let start = std::time::Instant::now();
    let deadline = start + duration;
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut n = 0u64;
                    while std::time::Instant::now() < deadline {
                        for (msg, sig) in &pairs {
                            ca_core::verify_signature_fast(&spki, msg, sig)
                                .map_err(|e| anyhow::anyhow!("verification benchmark: {e}"))?;
                        }
                        n += pairs.len() as u64;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a verification thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The highest ratio the pipeline could reach on these cores if each item cost nothing but its
/// HSM signature and `verifications` P-256 verifications, all competing for the same cores:
/// items/s = 1 / (1/raw + verifications/verify), divided by raw.
pub(crate) fn ceiling(raw: f64, verify: f64, verifications: u32) -> f64 {
    1.0 / (1.0 + f64::from(verifications) * raw / verify)
}

/// What a certificate's two verifications are, for [`print_ceiling`].
pub(crate) const CERTIFICATE_VERIFICATIONS: &str =
    "its 2 verifications (the CSR's proof of possession, the check of the HSM's signature)";

pub(crate) fn print_ceiling(raw: f64, verify: f64, verifications: u32, which: &str) {
    println!(
        "P-256 verification     {verify:>8.0} verifications/s (ring, as the pipeline runs it, same thread count)"
    );
    println!(
        "ratio ceiling          {:>7.0} % = 1 / (1 + {verifications} x raw / verification rate): the ratio if each item cost only its HSM signature and {which}, nothing else",
        100.0 * ceiling(raw, verify, verifications)
    );
}

/// A memory figure of this process from /proc/self/status, in kB.
pub(crate) fn rss_kb(field: &str) -> Option<u64> {
    rss_kb_of("self", field)
}

/// A memory figure of process `pid` (`self`: this one) from /proc/<pid>/status, in kB.
pub(crate) fn rss_kb_of(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The JSON fields every in-process benchmark reports beside its own: the raw rates of the same
/// run, the ratios, the verification rate, the ceiling for `verifications` per item and the
/// share of it reached, and the peak RSS.
pub(crate) fn rates_json(
    rate: f64,
    bare: &BenchFigure,
    bridge: &BenchFigure,
    verify: f64,
    verifications: u32,
    rss_kb: Option<u64>,
) -> serde_json::Map<String, serde_json::Value> {
    let c = ceiling(bare.per_second, verify, verifications);
    let fields = [
        ("raw_bare_cryptoki_per_second", bare.per_second.into()),
        ("raw_hsm_bridge_per_second", bridge.per_second.into()),
        ("ratio_to_bare", (rate / bare.per_second).into()),
        ("ratio_to_hsm_bridge", (rate / bridge.per_second).into()),
        ("peak_rss_mb", rss_kb.map(|k| k as f64 / 1024.0).into()),
        ("verify_per_second", verify.into()),
        ("ratio_ceiling", c.into()),
        ("share_of_ceiling", (rate / bare.per_second / c).into()),
    ];
    fields
        .into_iter()
        .map(|(k, v): (&str, serde_json::Value)| (k.to_string(), v))
        .collect()
}
