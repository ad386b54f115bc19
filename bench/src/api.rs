//! `meterpki-bench api`: a factory line's whole path measured from outside: a real
//! `meterpki serve` process, a factory account made for the run, batches over mTLS, the
//! server's memory sampled throughout.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ca_core::CaKind;
use hsm_bridge::bench_bare_cryptoki;
use meterpki_cli::support::input;
use serde_json::json;

use crate::figures::{ceiling, print_ceiling, verify_rate, CERTIFICATE_VERIFICATIONS};
use crate::Bench;

/// `meterpki-bench api` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ApiArgs {
    /// Certificates to request (fresh CSRs made before the run).
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// Send the requests of this NDJSON file (from `make-batch`) instead of making --count fresh ones, so runs can repeat the same input; each run needs a home that has not seen them (e.g. a fresh copy of the same home).
    #[arg(long, value_name = "FILE", conflicts_with = "count")]
    pub requests: Option<PathBuf>,
    /// Items per batch (at most 10,000).
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2)]
    pub in_flight: usize,
    /// Seconds for the raw signing-rate measurement.
    #[arg(long, default_value_t = 5.0)]
    pub raw_seconds: f64,
    /// The `meterpki` binary that serves (default: the one beside this binary, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub meterpki: Option<PathBuf>,
    /// `meterpki serve` processes on this home, batches sent to each in turn (more than one needs a shared store: store.backend = "postgres").
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// After the run, check the store (`meterpki store check`: every index, one active certificate per device and usage, no serial twice) and that it grew by exactly the certificates answered.
    #[arg(long)]
    pub check: bool,
}

/// The `meterpki` binary: given, beside this one, or on PATH.
pub(crate) fn meterpki_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()?.with_file_name("meterpki");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("meterpki"))
}

/// The server under load: stopped (SIGTERM, then waited for) when the run ends, also when it
/// ends early with an error.
pub(crate) struct ServerProcess(pub(crate) std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// `meterpki-bench api`: the whole path a factory line uses, measured from outside the server.
pub(crate) fn run(b: &Bench, a: &ApiArgs) -> Result<()> {
    let (count, requests, batch, in_flight, raw_seconds) = (
        a.count,
        a.requests.as_deref(),
        a.batch,
        a.in_flight,
        a.raw_seconds,
    );
    if batch == 0 || batch > ca_core::issue::MAX_BATCH || count == 0 || in_flight == 0 {
        return Err(input(
            "--count and --in-flight at least 1, --batch between 1 and 10000",
        ));
    }
    if a.servers == 0
        || (a.servers > 1
            && b.service.config().store.backend != ca_core::store::StoreBackend::Postgres)
    {
        return Err(input(
            "--servers: at least 1, and more than 1 only on a shared store (store.backend = \"postgres\"; meterpki store migrate --to postgres)",
        ));
    }
    let exe = meterpki_binary(a.meterpki.as_deref())?;
    let home = b.service.home().root().to_path_buf();
    let work = tempfile::tempdir()?;
    // 1. The requests, read (or made) before anything starts.
    let batch_file = match requests {
        Some(file) => file.to_path_buf(),
        None => {
            eprintln!("making {count} CSRs...");
            let file = work.path().join("requests.ndjson");
            crate::input::write_batch(count, &file, "meter-signing")?;
            file
        }
    };
    // Counted here, read batch by batch while sending: the load client keeps one batch in
    // memory, not the whole file (330 MB for a million requests).
    let unreadable = |e: std::io::Error| input(format!("--requests {}: {e}", batch_file.display()));
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
        return Err(input(format!(
            "--requests {}: no request lines",
            batch_file.display()
        )));
    }
    // 2. The raw rate, with the sessions the server will use, before the server holds the token.
    let sessions = b.service.config().hsm.sessions;
    // With several tokens ([[hsm.tokens]]), each is measured on its own and the rates add up:
    // the tokens' combined rate, what the server's spread over them can reach at best.
    let (raw, raw_each) = {
        let tokens = b.raw_tokens(sessions)?;
        let d = Duration::from_secs_f64(raw_seconds);
        let mut each = Vec::new();
        for token in &tokens {
            eprintln!(
                "raw signing rate of the Device CA key on {}, {sessions} session(s)...",
                token.label()
            );
            let fig = bench_bare_cryptoki(token, &CaKind::Device.key_label(), 32, sessions, d)?;
            each.push((token.label().to_string(), fig.per_second));
        }
        let combined: f64 = each.iter().map(|(_, r)| r).sum();
        (combined, each)
    };
    let verify = verify_rate(sessions, Duration::from_secs_f64(raw_seconds))?;
    // 3. A factory account for the run (through the CLI, as an operator would).
    let creds = work.path().join("creds");
    let name = add_factory_account(&exe, &home, &creds)?;
    let stored_before = if a.check {
        Some(store_check(&exe, &home)?.0)
    } else {
        None
    };
    // 4. The servers, each its own process.
    let mut servers = Vec::new();
    let mut samplers = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..a.servers {
        let (server, addr) = start_server(&exe, &home)?;
        samplers.push(RssSampler::start(server.0.id()));
        urls.push(format!("https://{addr}/v1/batches"));
        servers.push(server);
    }
    // 5. The load: batches over mTLS, `in_flight` at a time.
    let client = mtls_client(&creds, &name)?;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    eprintln!(
        "sending {count} requests in {} batches of {batch}, {in_flight} in flight, to {}...",
        count.div_ceil(batch),
        urls.join(" and ")
    );
    let start = std::time::Instant::now();
    let outcome: Result<(Vec<f64>, usize, usize)> = runtime.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let mut tasks = Vec::new();
        let mut sent = 0usize;
        while let Some(body) = next_body()? {
            let permit = sem.clone().acquire_owned().await?;
            let (client, url) = (client.clone(), urls[sent % urls.len()].clone());
            sent += 1;
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
    // How the servers spread the Device CA's signatures over the tokens (several HSMs).
    let per_token: Vec<(String, u64)> = if raw_each.len() > 1 {
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for url in &urls {
            let metrics_url = url.replace("/v1/batches", "/metrics");
            let text = runtime
                .block_on(async { client.get(&metrics_url).send().await?.text().await })
                .unwrap_or_default();
            let prefix = "meterpki_hsm_token_signatures_total{key=\"meterpki-device-ca\",token=\"";
            for line in text.lines() {
                if let Some((token, n)) = line
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.split_once("\"} "))
                {
                    *counts.entry(token.to_string()).or_default() += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
        counts.into_iter().collect()
    } else {
        Vec::new()
    };
    drop(servers);
    let peaks: Vec<f64> = samplers.into_iter().map(RssSampler::stop).collect();
    let peak_mb = peaks.iter().copied().fold(0.0, f64::max);
    let (mut lat, issued, rejected) = outcome?;
    let checked = match stored_before {
        Some(before) => {
            let (after, problems) = store_check(&exe, &home)?;
            Some(
                json!({"certificates_before": before, "certificates_after": after, "problems": problems}),
            )
        }
        None => None,
    };
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let rate = issued as f64 / wall;
    let out = json!({
        "certificates": issued, "rejected": rejected, "wall_seconds": wall, "certificates_per_second": rate,
        "raw_signing_per_second": raw, "sessions": sessions, "ratio": rate / raw,
        "tokens": raw_each.iter().map(|(l, r)| json!({"label": l, "raw_signing_per_second": r,
            "device_ca_signatures": per_token.iter().find(|(t, _)| t == l).map(|(_, n)| *n)})).collect::<Vec<_>>(),
        "verify_per_second": verify, "ratio_ceiling": ceiling(raw, verify, 2),
        "share_of_ceiling": rate / raw / ceiling(raw, verify, 2),
        "server_peak_rss_mb": peak_mb, "servers": a.servers, "server_peak_rss_mb_each": peaks,
        "store_check": checked, "batch_size": batch, "in_flight": in_flight,
        "batch_latency_p50_seconds": pct(0.5), "batch_latency_p99_seconds": pct(0.99),
        "projected_seconds_for_1000000": 1_000_000.0 / rate,
    });
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "issued over mTLS       {issued} certificates in {wall:.1} s ({rejected} rejected)"
        );
        println!("API issuance rate      {rate:>8.0} certificates/s  (1,000,000 would take {:.0} s; target <= 180 s)", 1_000_000.0 / rate);
        if raw_each.len() > 1 {
            for (label, r) in &raw_each {
                let signed = per_token
                    .iter()
                    .find(|(t, _)| t == label)
                    .map(|(_, n)| format!(", {n} Device CA signatures in the run"))
                    .unwrap_or_default();
                println!("raw rate of {label:<10} {r:>8.0} signatures/s{signed}");
            }
            println!("tokens combined        {:>8.0} signatures/s ({} tokens, each measured alone before the server started)", raw, raw_each.len());
        } else {
            println!("raw SoftHSM rate       {:>8.0} signatures/s (bare cryptoki, {sessions} session(s), measured before the server started)", raw);
        }
        println!(
            "ratio                  {:>7.0} % of the raw rate",
            100.0 * rate / raw
        );
        print_ceiling(raw, verify, 2, CERTIFICATE_VERIFICATIONS);
        println!(
            "share of the ceiling   {:>7.0} % (target >= 75 %)",
            100.0 * rate / raw / ceiling(raw, verify, 2)
        );
        println!(
            "server peak RSS        {} MB (target <= 256 MB{})",
            peaks
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join(" / "),
            if a.servers > 1 { " each" } else { "" }
        );
        if let Some(c) = &checked {
            println!(
                "store check            {} certificates before, {} after (+{}), problems: {}",
                c["certificates_before"],
                c["certificates_after"],
                c["certificates_after"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(c["certificates_before"].as_u64().unwrap_or(0)),
                c["problems"]
            );
        }
        println!("batch latency          p50 {:.2} s, p99 {:.2} s ({batch} items a batch, {in_flight} in flight)", pct(0.5), pct(0.99));
    }
    if rejected > 0 {
        anyhow::bail!("{rejected} requests were rejected");
    }
    if let Some(c) = &checked {
        let grew = c["certificates_after"].as_u64().unwrap_or(0)
            - c["certificates_before"].as_u64().unwrap_or(0);
        // The servers' own TLS certificates are stored too (one each at most).
        anyhow::ensure!(
            c["problems"].as_array().is_some_and(|p| p.is_empty())
                && grew >= issued as u64
                && grew <= (issued + a.servers) as u64,
            "the store does not check clean after the run: {c}"
        );
    }
    Ok(())
}

/// `meterpki store check --json` on `home`: certificates stored and problems found.
fn store_check(exe: &Path, home: &Path) -> Result<(u64, serde_json::Value)> {
    eprintln!("meterpki store check...");
    let out = std::process::Command::new(exe)
        .arg("--home")
        .arg(home)
        .args(["--json", "store", "check"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "meterpki store check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["certificates"].as_u64().unwrap_or(0),
        v["problems"].clone(),
    ))
}

/// A factory account with the whole device range, made through the CLI as an operator would;
/// its credentials are written to `creds`. Returns its name.
pub(crate) fn add_factory_account(exe: &Path, home: &Path, creds: &Path) -> Result<String> {
    let name = format!("bench-{:08x}", rand::random::<u32>());
    let st = std::process::Command::new(exe)
        .arg("--home")
        .arg(home)
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
        .arg(creds)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "creating the bench account failed");
    Ok(name)
}

/// `meterpki serve` on `home` as its own process, on free ports; returns it and its address.
pub(crate) fn start_server(exe: &Path, home: &Path) -> Result<(ServerProcess, String)> {
    let mut server = ServerProcess(
        std::process::Command::new(exe)
            .arg("--home")
            .arg(home)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--crl-listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    let mut out = std::io::BufReader::new(server.0.stdout.take().expect("stdout"));
    out.read_line(&mut line)?;
    // The server says more (its CRL listener); keep its stdout open while it runs.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line
        .trim()
        .trim_start_matches("listening on https://")
        .to_string();
    anyhow::ensure!(!addr.is_empty(), "the server did not start");
    Ok((server, addr))
}

/// A reqwest client with the credentials `account add` wrote for `name` in `creds`.
pub(crate) fn mtls_client(creds: &Path, name: &str) -> Result<reqwest::Client> {
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
    Ok(builder.timeout(Duration::from_secs(600)).build()?)
}

/// The peak resident memory of a process, sampled every 100 ms until stopped.
pub(crate) struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let pid = pid.to_string();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = crate::figures::rss_kb_of(&pid, "VmRSS:") {
                    p.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { peak, stop, thread }
    }

    /// The peak so far, in MB.
    pub(crate) fn peak_mb(&self) -> f64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }

    /// Stops sampling; the peak in MB.
    pub(crate) fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = self.peak.clone();
        let _ = self.thread.join();
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}
