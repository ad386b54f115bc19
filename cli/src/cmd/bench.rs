//! `meterpki bench hsm`: raw signing rates, for later issues to compare against.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ca_core::{KeyAlgorithm, Signer};
use hsm_bridge::{bench_bare_cryptoki, bench_bare_cryptoki_with, bench_signer, BenchFigure};
use serde_json::json;

use crate::cmd::print_json;
use crate::ctx::Ctx;

pub fn hsm(ctx: &Ctx, seconds: f64) -> Result<()> {
    if !(0.1..=600.0).contains(&seconds) {
        return Err(crate::errors::input(
            "--seconds must be between 0.1 and 600",
        ));
    }
    let d = Duration::from_secs_f64(seconds);
    let hsm = ctx.hsm()?;
    let token = ctx.online(&hsm)?;
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
                    crate::pin::online_pin(&ctx.home, &ctx.config)?,
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

/// One meter request with a fresh software P-256 key: a CSR (RFC 2986) signed by that key.
fn meter_request(profile: &str, device_id: &str) -> Result<String> {
    use base64::Engine as _;
    Ok(serde_json::to_string(&json!({
        "profile": profile,
        "device_id": device_id,
        "csr": base64::engine::general_purpose::STANDARD.encode(software_csr()?),
    }))?)
}

/// A CSR (RFC 2986, DER) for a fresh software P-256 key, signed by that key.
fn software_csr() -> Result<Vec<u8>> {
    use der::asn1::{BitString, SetOfVec};
    use der::{Decode, Encode};
    use p256::ecdsa::signature::Signer as _;
    use x509_cert::request::{CertReq, CertReqInfo, Version};
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let spki = ca_core::spki_from_point(KeyAlgorithm::EcP256, point.as_bytes())?;
    let info = CertReqInfo {
        version: Version::V1,
        subject: x509_cert::name::Name::default(),
        public_key: spki,
        attributes: SetOfVec::new(),
    };
    let sig: p256::ecdsa::Signature = key.sign(&info.to_der()?);
    let csr = CertReq {
        info,
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    };
    let der = csr.to_der()?;
    debug_assert!(CertReq::from_der(&der).is_ok());
    Ok(der)
}

/// Writes `count` requests for distinct devices (a random 32-bit prefix and a counter).
fn write_batch(count: usize, out: &std::path::Path, profile: &str) -> Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let prefix = rand::rngs::OsRng.next_u32().to_be_bytes();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let per = count.div_ceil(workers);
    let parts: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
        (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let lo = w * per;
                    let hi = (lo + per).min(count);
                    (lo..hi)
                        .map(|i| {
                            let c = (i as u32).to_be_bytes();
                            let id = [
                                prefix[0], prefix[1], prefix[2], prefix[3], c[0], c[1], c[2], c[3],
                            ];
                            meter_request(profile, &ca_core::Eui64(id).to_string())
                        })
                        .collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?)
            .collect()
    });
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for part in parts {
        for line in part? {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
        }
    }
    f.flush()?;
    Ok(())
}

pub fn make_batch(count: usize, out: &std::path::Path, profile: &str) -> Result<()> {
    if count == 0 {
        return Err(crate::errors::input("--count must be at least 1"));
    }
    write_batch(count, out, profile)?;
    eprintln!("wrote {count} requests to {}", out.display());
    Ok(())
}

/// Peak resident set size of this process in kB (VmHWM).
fn peak_rss_kb() -> Option<u64> {
    rss_kb("VmHWM:")
}

/// A measured rate beside the raw signing rates of the same run, and their ratios.
fn print_rates(
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
fn verify_rate(threads: usize, raw_duration: Duration) -> Result<f64> {
    // As long as the raw measurement, at most 3 s: the rate settles within a second.
    let duration = raw_duration.min(Duration::from_secs(3));
    use p256::ecdsa::signature::Signer as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    eprintln!("P-256 verification rate, {threads} thread(s)...");
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let spki = ca_core::spki_from_point(KeyAlgorithm::EcP256, point.as_bytes())?;
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
fn ceiling(raw: f64, verify: f64, verifications: u32) -> f64 {
    1.0 / (1.0 + f64::from(verifications) * raw / verify)
}

/// What a certificate's two verifications are, for [`print_ceiling`].
const CERTIFICATE_VERIFICATIONS: &str =
    "its 2 verifications (the CSR's proof of possession, the check of the HSM's signature)";

fn print_ceiling(raw: f64, verify: f64, verifications: u32, which: &str) {
    println!(
        "P-256 verification     {verify:>8.0} verifications/s (ring, as the pipeline runs it, same thread count)"
    );
    println!(
        "ratio ceiling          {:>7.0} % = 1 / (1 + {verifications} x raw / verification rate): the ratio if each item cost only its HSM signature and {which}, nothing else",
        100.0 * ceiling(raw, verify, verifications)
    );
}

/// A memory figure of this process from /proc/self/status, in kB.
fn rss_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub fn issue(ctx: &Ctx, count: usize, raw_seconds: f64) -> Result<()> {
    use ca_core::CaKind;
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let store = ctx.store()?;
    let engine = ctx.engine(&online, store.clone())?;
    let (device_signer, _) = ctx.issuer(&online, CaKind::Device)?;
    let sessions = ctx.config.hsm.sessions;
    let dir = tempfile::tempdir()?;
    let batch = dir.path().join("batch.ndjson");
    let results = dir.path().join("results.ndjson");
    eprintln!("making {count} CSRs with software P-256 keys (benchmark input only)...");
    write_batch(count, &batch, "meter-signing")?;
    let d = Duration::from_secs_f64(raw_seconds);
    eprintln!(
        "raw signing rate of the Device CA key, {sessions} session(s), {raw_seconds} s each..."
    );
    let bare = bench_bare_cryptoki(&online, &CaKind::Device.key_label(), 32, sessions, d)?;
    let bridge = bench_signer("hsm-bridge", Arc::new(device_signer), sessions, d)?;
    let verify = verify_rate(sessions, d)?;
    // Peak RSS from here on: the issuance, not the CSR generation.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    eprintln!("issuing {count} certificates through the `issue --batch` path...");
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = crate::cmd::issue::process_batch(&engine, &batch, &results, 1000, progress)?;
    let rss = peak_rss_kb();
    let rate = summary.issued as f64 / summary.seconds;
    let out = json!({
        "certificates": summary.issued,
        "rejected": summary.rejected,
        "seconds": summary.seconds,
        "certificates_per_second": rate,
        "sessions": sessions,
        "raw_bare_cryptoki_per_second": bare.per_second,
        "raw_hsm_bridge_per_second": bridge.per_second,
        "ratio_to_bare": rate / bare.per_second,
        "ratio_to_hsm_bridge": rate / bridge.per_second,
        "peak_rss_mb": rss.map(|k| k as f64 / 1024.0),
        "verify_per_second": verify,
        "ratio_ceiling": ceiling(bare.per_second, verify, 2),
        "store_certificates": ca_core::Store::cert_count(store.as_ref())?,
    });
    if ctx.json {
        print_json(&out)?;
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
        if let Some(k) = rss {
            println!("peak RSS (issuance)    {:>8.1} MB", k as f64 / 1024.0);
        }
    }
    if summary.rejected > 0 {
        anyhow::bail!("{} requests were rejected", summary.rejected);
    }
    Ok(())
}

/// `bench crl`: a scratch store (never the home's) with `certs` certificate records written
/// straight through `Store::commit_issued` (unsigned: the CRL only needs serials and shards),
/// `revoke` of them revoked by list, then every shard and the full CRL built and signed with the
/// Device CA's HSM key, written to a scratch folder.
pub fn crl(ctx: &Ctx, certs: usize, revoke: usize) -> Result<()> {
    use ca_core::issue::{shard_of, IssuerCtx};
    use ca_core::{CaKind, CertRecord, Reason, Revocation, SledStore, Store};
    use rand::RngCore;
    if revoke > certs {
        return Err(crate::errors::input("--revoke cannot exceed --certs"));
    }
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let (signer, cert) = ctx.issuer(&online, CaKind::Device)?;
    let issuer = IssuerCtx::new(policies::IssuerKind::Device, cert, Arc::new(signer))?;
    let settings = ctx.crl_settings();
    let dir = tempfile::tempdir()?;
    let store = SledStore::open(&dir.path().join("store"))?;
    eprintln!("writing {certs} certificate records to a scratch store...");
    let start = std::time::Instant::now();
    let mut revoke_list = Vec::with_capacity(revoke);
    let every = certs.checked_div(revoke).unwrap_or(usize::MAX);
    let mut chunk = Vec::with_capacity(10_000);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for i in 0..certs {
        let mut serial = [0u8; 9];
        rand::rngs::OsRng.fill_bytes(&mut serial);
        serial[0] = (serial[0] & 0x7f).max(1);
        let c = (i as u64).to_be_bytes();
        if revoke_list.len() < revoke && i % every == 0 {
            revoke_list.push(serial.to_vec());
        }
        chunk.push((
            CertRecord {
                serial: serial.to_vec(),
                issuer: "device".into(),
                profile: "meter-signing".into(),
                subject_id: ca_core::Eui64(c).to_string(),
                key_hash: [0; 32],
                shard: shard_of(&serial, settings.shards),
                issued_at: now,
                der: Vec::new(),
                replaced_by: None,
            },
            false,
        ));
        if chunk.len() == 10_000 {
            store.commit_issued(&chunk, false)?;
            chunk.clear();
        }
    }
    store.commit_issued(&chunk, false)?;
    eprintln!(
        "  {certs} records in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let start = std::time::Instant::now();
    let rev = Revocation {
        reason: Reason::KeyCompromise,
        revoked_at: now,
        invalidity_date: None,
    };
    for part in revoke_list.chunks(10_000) {
        store.revoke(part, &rev)?;
    }
    let revoke_secs = start.elapsed().as_secs_f64();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let baseline = rss_kb("VmRSS:");
    let start = std::time::Instant::now();
    let published =
        ca_core::crl::publish_all(&issuer, &store, &settings, &dir.path().join("crl"), true)?;
    let publish_secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kb();
    let entries: usize = published
        .iter()
        .filter(|p| p.scope != "full")
        .map(|p| p.entries)
        .sum();
    let full = published.iter().find(|p| p.scope == "full");
    let largest_shard = published
        .iter()
        .filter(|p| p.scope != "full")
        .map(|p| p.bytes)
        .max()
        .unwrap_or(0);
    let out = json!({
        "certificates": certs,
        "revoked": revoke_list.len(),
        "revocations_per_second": revoke_list.len() as f64 / revoke_secs,
        "shards": settings.shards,
        "crls_signed": published.len(),
        "shard_entries_total": entries,
        "largest_shard_bytes": largest_shard,
        "full_crl_bytes": full.map(|p| p.bytes),
        "publish_seconds": publish_secs,
        "peak_rss_mb_while_publishing": rss.map(|k| k as f64 / 1024.0),
        "rss_mb_before_publishing": baseline.map(|k| k as f64 / 1024.0),
        "peak_rss_growth_mb_while_publishing": rss.zip(baseline).map(|(p, b)| p.saturating_sub(b) as f64 / 1024.0),
    });
    if ctx.json {
        print_json(&out)?;
    } else {
        println!("certificates           {certs} (records in a scratch store)");
        println!(
            "revoked by list        {} in {revoke_secs:.2} s ({:.0} revocations/s)",
            revoke_list.len(),
            revoke_list.len() as f64 / revoke_secs
        );
        println!("CRLs signed            {} ({} shards + full), {} shard entries, largest shard {} bytes, full CRL {} bytes", published.len(), settings.shards, entries, largest_shard, full.map(|p| p.bytes).unwrap_or(0));
        println!("all CRLs rebuilt+signed {publish_secs:.2} s (target <= 2 s)");
        if let (Some(p), Some(b)) = (rss, baseline) {
            println!(
                "RSS                    {:.1} MB before publishing (the scratch store), peak {:.1} MB: publishing added {:.1} MB",
                b as f64 / 1024.0,
                p as f64 / 1024.0,
                p.saturating_sub(b) as f64 / 1024.0
            );
        }
    }
    Ok(())
}

/// `bench api`: the whole path a factory line uses, measured from outside the server.
pub fn api(
    ctx: &Ctx,
    count: usize,
    requests: Option<&std::path::Path>,
    batch: usize,
    in_flight: usize,
    raw_seconds: f64,
) -> Result<()> {
    use ca_core::CaKind;
    use std::io::BufRead;
    if batch == 0 || batch > ca_core::issue::MAX_BATCH || count == 0 || in_flight == 0 {
        return Err(crate::errors::input(
            "--count and --in-flight at least 1, --batch between 1 and 10000",
        ));
    }
    if !(0.1..=600.0).contains(&raw_seconds) {
        return Err(crate::errors::input(
            "--raw-seconds must be between 0.1 and 600",
        ));
    }
    let exe = std::env::current_exe()?;
    let home = ctx.home.root().to_path_buf();
    let work = tempfile::tempdir()?;
    // 1. The requests, read (or made) before anything starts.
    let batch_file = match requests {
        Some(file) => file.to_path_buf(),
        None => {
            eprintln!("making {count} CSRs...");
            let file = work.path().join("requests.ndjson");
            write_batch(count, &file, "meter-signing")?;
            file
        }
    };
    // Counted here, read batch by batch while sending: the load client keeps one batch in
    // memory, not the whole file (330 MB for a million requests).
    let unreadable = |e: std::io::Error| {
        crate::errors::input(format!("--requests {}: {e}", batch_file.display()))
    };
    let open_requests = || {
        std::fs::File::open(&batch_file)
            .map(std::io::BufReader::new)
            .map_err(unreadable)
    };
    let mut count = 0usize;
    for line in open_requests()?.lines() {
        let line = line.map_err(unreadable)?;
        if !line.trim().is_empty() {
            count += 1;
        }
    }
    if count == 0 {
        return Err(crate::errors::input(format!(
            "--requests {}: no request lines",
            batch_file.display()
        )));
    }
    // 2. The raw rate, with the sessions the server will use, before the server holds the token.
    let sessions = ctx.config.hsm.sessions;
    let raw = {
        let hsm = ctx.hsm()?;
        let online = ctx.online(&hsm)?;
        let d = Duration::from_secs_f64(raw_seconds);
        eprintln!("raw signing rate of the Device CA key, {sessions} session(s)...");
        bench_bare_cryptoki(&online, &CaKind::Device.key_label(), 32, sessions, d)?
    };
    let verify = verify_rate(sessions, Duration::from_secs_f64(raw_seconds))?;
    // 3. A factory account for the run (through the CLI, as an operator would).
    let name = format!("bench-{}", crate::cmd::random_hex(4));
    let creds = work.path().join("creds");
    let st = std::process::Command::new(&exe)
        .arg("--home")
        .arg(&home)
        .args([
            "account",
            "add",
            "--role",
            "factory",
            "--name",
            &name,
            "--device-range",
            "00-00-00-00-00-00-00-00/0",
            "--out",
        ])
        .arg(&creds)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "creating the bench account failed");
    // 4. The server, as its own process.
    let mut server = std::process::Command::new(&exe)
        .arg("--home")
        .arg(&home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line)?;
    let addr = line
        .trim()
        .trim_start_matches("listening on https://")
        .to_string();
    anyhow::ensure!(!addr.is_empty(), "the server did not start");
    let pid = server.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kb) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // 5. The load: batches over mTLS, `in_flight` at a time.
    let identity = {
        let mut pem = std::fs::read(creds.join(format!("{name}.key")))?;
        pem.extend(std::fs::read(creds.join(format!("{name}.pem")))?);
        reqwest::Identity::from_pem(&pem)?
    };
    let roots = reqwest::Certificate::from_pem_bundle(&std::fs::read(creds.join("ca.pem"))?)?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .identity(identity)
        .tls_built_in_root_certs(false);
    for r in roots {
        builder = builder.add_root_certificate(r);
    }
    let client = builder.timeout(Duration::from_secs(600)).build()?;
    // The next batch's body, from the next `batch` request lines (None at the end).
    let mut requests = open_requests()?.lines();
    let mut batches_made = 0usize;
    let mut next_body = move || -> Result<Option<String>> {
        let mut body = format!("{{\"request_id\":\"{name}-{batches_made}\",\"items\":[");
        body.reserve(batch * 340);
        let mut items = 0;
        while items < batch {
            let Some(line) = requests.next() else { break };
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            if items > 0 {
                body.push(',');
            }
            body.push_str(&line);
            items += 1;
        }
        if items == 0 {
            return Ok(None);
        }
        body.push_str("]}");
        batches_made += 1;
        Ok(Some(body))
    };
    let url = format!("https://{addr}/v1/batches");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    eprintln!(
        "sending {count} requests in {} batches of {batch}, {in_flight} in flight, to https://{addr}...",
        count.div_ceil(batch)
    );
    let start = std::time::Instant::now();
    let outcome: Result<(Vec<f64>, usize, usize)> = runtime.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let mut tasks = Vec::new();
        while let Some(body) = next_body()? {
            let permit = sem.clone().acquire_owned().await?;
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let t = std::time::Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                drop(permit);
                anyhow::ensure!(
                    status.is_success(),
                    "batch answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                // Only each item's status is read (the load client shares the server's cores,
                // so it does not build a tree of a batch's 5,000 certificates).
                #[derive(serde::Deserialize)]
                struct Item<'a> {
                    #[serde(borrow)]
                    status: &'a str,
                }
                #[derive(serde::Deserialize)]
                struct Answer<'a> {
                    #[serde(borrow)]
                    results: Vec<Item<'a>>,
                }
                let answer: Answer<'_> = serde_json::from_slice(&body)?;
                let issued = answer
                    .results
                    .iter()
                    .filter(|r| r.status == "issued")
                    .count();
                Ok::<_, anyhow::Error>((
                    t.elapsed().as_secs_f64(),
                    issued,
                    answer.results.len() - issued,
                ))
            }));
        }
        let mut lat = Vec::new();
        let (mut issued, mut rejected) = (0, 0);
        for t in tasks {
            let (l, i, r) = t.await??;
            lat.push(l);
            issued += i;
            rejected += r;
        }
        Ok((lat, issued, rejected))
    });
    let wall = start.elapsed().as_secs_f64();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = server.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let (mut lat, issued, rejected) = outcome?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let rate = issued as f64 / wall;
    let peak_mb = peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
    let out = json!({
        "certificates": issued, "rejected": rejected, "wall_seconds": wall, "certificates_per_second": rate,
        "raw_signing_per_second": raw.per_second, "sessions": sessions, "ratio": rate / raw.per_second,
        "verify_per_second": verify, "ratio_ceiling": ceiling(raw.per_second, verify, 2),
        "server_peak_rss_mb": peak_mb, "batch_size": batch, "in_flight": in_flight,
        "batch_latency_p50_seconds": pct(0.5), "batch_latency_p99_seconds": pct(0.99),
        "projected_seconds_for_1000000": 1_000_000.0 / rate,
    });
    if ctx.json {
        print_json(&out)?;
    } else {
        println!(
            "issued over mTLS       {issued} certificates in {wall:.1} s ({rejected} rejected)"
        );
        println!("API issuance rate      {rate:>8.0} certificates/s  (1,000,000 would take {:.0} s; target <= 180 s)", 1_000_000.0 / rate);
        println!("raw SoftHSM rate       {:>8.0} signatures/s (bare cryptoki, {sessions} session(s), measured before the server started)", raw.per_second);
        println!(
            "ratio                  {:>7.0} % (target >= 60 %)",
            100.0 * rate / raw.per_second
        );
        print_ceiling(raw.per_second, verify, 2, CERTIFICATE_VERIFICATIONS);
        println!("server peak RSS        {peak_mb:>8.1} MB (target <= 256 MB)");
        println!("batch latency          p50 {:.2} s, p99 {:.2} s ({batch} items a batch, {in_flight} in flight)", pct(0.5), pct(0.99));
    }
    if rejected > 0 {
        anyhow::bail!("{rejected} requests were rejected");
    }
    Ok(())
}

/// `bench takeover`: a scratch store (never the home's) with suppliers A and B, each with real
/// signing and key-agreement certificates from the Organisation CA, and `meters` meters of A
/// (records sharing one real meter certificate, so each has its hwType); then a takeover A -> B
/// through the same code as `supplier takeover`: one signed, verified update per meter written to
/// a scratch folder. Prints updates/s beside the raw signing rate of the trust-update signer key
/// measured in the same run with the same sessions, their ratio, and peak RSS.
pub fn takeover(
    ctx: &Ctx,
    meters: usize,
    raw_seconds: f64,
    chunk: usize,
    ndjson: bool,
) -> Result<()> {
    use base64::Engine as _;
    use ca_core::churn::{Churn, DirSink, NdjsonSink, UpdateSink};
    use ca_core::issue::{AccountLimits, RequestItem};
    use ca_core::{CertRecord, Eui64, MeterMove, SledStore, Store, Supplier, SupplierState};
    use rand::RngCore;
    let b64 = |d: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(d);
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let sessions = ctx.config.hsm.sessions;
    // The home's trust-update signer (made if missing), then nothing more of the home's store.
    let real = ctx.engine(&online, ctx.store()?)?;
    let signer = crate::cmd::churn::update_signer(ctx, &online, &real)?;
    drop(real);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SledStore::open(&dir.path().join("store"))?);
    let engine = ctx.engine(&online, store.clone())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (a, b) = ("90-B3-D5-1F-30-00-0B-0A", "90-B3-D5-1F-30-00-0B-0B");
    for (id, name) in [(a, "Bench Supplier A"), (b, "Bench Supplier B")] {
        store.put_supplier(&Supplier {
            id: id.into(),
            name: name.into(),
            state: SupplierState::Active,
            registered_at: now,
            ended_at: None,
            successor: None,
        })?;
        for profile in ["supplier-signing", "supplier-key-agreement"] {
            let item = RequestItem {
                profile: profile.into(),
                device_id: None,
                entity_id: Some(id.into()),
                name: None,
                csr: Some(b64(software_csr()?)),
                public_key: None,
                replace: false,
            };
            engine
                .issue(&item, &AccountLimits::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let meter: CertRecord = engine
        .issue(
            &serde_json::from_str(&meter_request("meter-signing", "00-DB-BE-00-00-00-00-00")?)?,
            &AccountLimits::default(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .record;
    eprintln!("writing {meters} meters of supplier A to a scratch store...");
    let mut prefix = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    let mut certs = Vec::with_capacity(10_000);
    let mut moves = Vec::with_capacity(10_000);
    for i in 0..meters {
        let mut id = [0u8; 8];
        id[..4].copy_from_slice(&prefix);
        id[4..].copy_from_slice(&(i as u32).to_be_bytes());
        let device = Eui64(id).to_string();
        let mut serial = [0u8; 9];
        rand::rngs::OsRng.fill_bytes(&mut serial);
        serial[0] = (serial[0] & 0x7f).max(1);
        certs.push((
            CertRecord {
                serial: serial.to_vec(),
                subject_id: device.clone(),
                key_hash: ca_core::sha256(&id),
                ..meter.clone()
            },
            false,
        ));
        moves.push(MeterMove {
            device,
            from: None,
            to: a.into(),
            update: None,
        });
        if certs.len() == 10_000 || i + 1 == meters {
            store.commit_issued(&certs, false)?;
            store.move_meters(&moves)?;
            certs.clear();
            moves.clear();
        }
    }
    let profiles = vec![
        "supplier-signing".to_string(),
        "supplier-key-agreement".to_string(),
    ];
    let signer = Arc::new(signer);
    let churn = Churn::new(
        store.clone() as Arc<dyn Store>,
        signer.clone(),
        profiles,
        sessions,
    );
    let d = Duration::from_secs_f64(raw_seconds);
    eprintln!("raw signing rate of the trust-update signer key, {sessions} session(s), {raw_seconds} s each...");
    let bare = bench_bare_cryptoki(
        &online,
        crate::cmd::churn::UPDATE_KEY_LABEL,
        32,
        sessions,
        d,
    )?;
    let bridge = bench_signer(
        "hsm-bridge",
        Arc::new(online.signer(crate::cmd::churn::UPDATE_KEY_LABEL)?),
        sessions,
        d,
    )?;
    let verify = verify_rate(sessions, d)?;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    eprintln!("taking over {meters} meters (A -> B)...");
    let updates = dir.path().join("updates");
    let stream = dir.path().join("updates.ndjson");
    let mut sink: Box<dyn UpdateSink> = if ndjson {
        Box::new(NdjsonSink::open(&stream)?)
    } else {
        Box::new(DirSink::create(&updates)?)
    };
    let start = std::time::Instant::now();
    let (mut op, revoked) = churn
        .begin_supplier_end("takeover", a, b)
        .map_err(crate::cmd::churn::churn_err)?;
    let (done, refused) = churn
        .run_op(&op, chunk, sink.as_mut(), &mut |_| {})
        .map_err(crate::cmd::churn::churn_err)?;
    churn
        .complete(&mut op)
        .map_err(crate::cmd::churn::churn_err)?;
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kb();
    // One update checked as a meter would, against the root.
    let root = ca_core::certificate_from_pem(&std::fs::read_to_string(
        ctx.home.ca_cert(ca_core::CaKind::Root),
    )?)?;
    drop(sink);
    let sample: Vec<u8> = if ndjson {
        use std::io::BufRead;
        let line = std::io::BufReader::new(std::fs::File::open(&stream)?)
            .lines()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no update written"))??;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        base64::engine::general_purpose::STANDARD
            .decode(v["update"].as_str().unwrap_or_default())?
    } else {
        let f = std::fs::read_dir(&updates)?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".tamp.der"))
            .ok_or_else(|| anyhow::anyhow!("no update written"))?;
        std::fs::read(f.path())?
    };
    let policy = engine
        .profiles()
        .get("trust-update-signer")
        .and_then(|p| p.policy_oid())
        .ok_or_else(|| anyhow::anyhow!("no trust-update-signer policy"))?;
    let checked = ca_core::tamp::verify_update(
        &sample,
        &root,
        &ca_core::tamp::VerifyOptions {
            signer_policy: policy,
            device: None,
            after_seq: None,
            now: std::time::SystemTime::now(),
        },
    )?;
    let rate = done as f64 / secs;
    let out = json!({
        "meters": meters,
        "updates": done,
        "refused": refused.len(),
        "certificates_revoked": revoked.len(),
        "seconds": secs,
        "updates_per_second": rate,
        "sessions": sessions,
        "raw_bare_cryptoki_per_second": bare.per_second,
        "raw_hsm_bridge_per_second": bridge.per_second,
        "ratio_to_bare": rate / bare.per_second,
        "ratio_to_hsm_bridge": rate / bridge.per_second,
        "peak_rss_mb": rss.map(|k| k as f64 / 1024.0),
        "verify_per_second": verify,
        "ratio_ceiling": ceiling(bare.per_second, verify, 1),
        "sample_update_bytes": sample.len(),
        "sink": if ndjson { "ndjson" } else { "one file per meter" },
        "sample_update_seq": checked.seq,
    });
    if ctx.json {
        print_json(&out)?;
    } else {
        println!(
            "takeover               {done} meters moved, {} updates in {secs:.1} s ({} refused)",
            done,
            refused.len()
        );
        print_rates(
            ("update rate", "updates/s", rate),
            &bare,
            &bridge,
            sessions,
            60,
        );
        print_ceiling(
            bare.per_second,
            verify,
            1,
            "the verification of that signature before the update is written",
        );
        if let Some(k) = rss {
            println!("peak RSS (takeover)    {:>8.1} MB", k as f64 / 1024.0);
        }
        println!(
            "sample update          {} bytes, seq {}, verified against the root",
            out["sample_update_bytes"], checked.seq
        );
    }
    Ok(())
}
