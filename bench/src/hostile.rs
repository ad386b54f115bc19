//! `meterpki-bench hostile`: a real batch's latency and the server's memory while callers
//! without an account attack it: refused 16 MiB uploads, idle TLS connections (HTTP/1.1, HTTP/2
//! after its preface), TCP connections that never start TLS, bodies trickled a byte a second,
//! and a `/readyz` flood, from several client addresses (127.0.0.2 onwards). The batch is sent
//! once before the attack and once during it, from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use meterpki_cli::support::input;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{add_factory_account, meterpki_binary, mtls_client, start_server, RssSampler};
use crate::Bench;

/// `meterpki-bench hostile` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct HostileArgs {
    /// Items in the real batch (sent once alone, once during the attack).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Client addresses the attack comes from (127.0.0.2 onwards).
    #[arg(long, default_value_t = 8)]
    pub addresses: u8,
    /// Refused 16 MiB uploads (no client certificate) kept going at once.
    #[arg(long, default_value_t = 64)]
    pub uploads: usize,
    /// Idle connections kept open (a third each: TLS then nothing, HTTP/2 preface then nothing, TCP without TLS); each reconnects when the server closes it.
    #[arg(long, default_value_t = 400)]
    pub idle: usize,
    /// Request bodies trickled at one byte a second.
    #[arg(long, default_value_t = 64)]
    pub trickle: usize,
    /// Clients flooding /readyz.
    #[arg(long, default_value_t = 4)]
    pub readyz: usize,
    /// Seconds the attack runs before the batch is sent.
    #[arg(long, default_value_t = 10.0)]
    pub warmup: f64,
    /// The `meterpki` binary that serves (default: the one beside this binary, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub meterpki: Option<PathBuf>,
}

/// What the attack did.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    ended: AtomicU64,
    uploads_refused: AtomicU64,
    readyz: AtomicU64,
}

/// `meterpki-bench hostile`.
pub(crate) fn run(b: &Bench, a: &HostileArgs) -> Result<()> {
    if a.batch == 0 || a.batch > ca_core::issue::MAX_BATCH || a.addresses == 0 {
        return Err(input(
            "--batch between 1 and 10000 and --addresses at least 1",
        ));
    }
    if !(a.warmup.is_finite() && a.warmup >= 0.0) {
        return Err(input("--warmup: seconds, 0 or more"));
    }
    let exe = meterpki_binary(a.meterpki.as_deref())?;
    let home = b.service.home().root().to_path_buf();
    let work = tempfile::tempdir()?;
    eprintln!("making {} CSRs...", 2 * a.batch);
    let file = work.path().join("requests.ndjson");
    crate::input::write_batch(2 * a.batch, &file, "meter-signing")?;
    let lines: Vec<String> = std::fs::read_to_string(&file)?
        .lines()
        .map(str::to_string)
        .collect();
    let creds = work.path().join("creds");
    let name = add_factory_account(&exe, &home, &creds)?;
    let (server, addr) = start_server(&exe, &home)?;
    let sampler = RssSampler::start(server.0.id());
    let client = mtls_client(&creds, &name)?;
    let roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(creds.join("ca.pem"))?.collect::<Result<_, _>>()?;
    let server_addr: SocketAddr = addr.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let batch_body = |n: usize, part: &[String]| {
        format!(
            "{{\"request_id\":\"{name}-hostile-{n}\",\"items\":[{}]}}",
            part.join(",")
        )
    };
    let url = format!("https://{addr}");
    let send_batch = |body: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t = Instant::now();
            let resp = client
                .post(format!("{url}/v1/batches"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await?;
            anyhow::ensure!(status.is_success(), "batch answered {status}: {text}");
            let issued = text.matches("\"status\":\"issued\"").count();
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64(), issued))
        }
    };
    let probes = |client: reqwest::Client, url: String| async move {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix("meterpki_hsm_readiness_probes_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no readiness probe count in /metrics"))
    };
    let outcome = runtime.block_on(async {
        eprintln!("a batch of {} alone...", a.batch);
        let (alone, issued_alone) = send_batch(batch_body(0, &lines[..a.batch])).await?;
        let rss_alone = sampler.peak_mb();
        let probes_before = probes(client.clone(), url.clone()).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let tls = {
            let mut store = rustls::RootCertStore::empty();
            for r in &roots {
                store.add(r.clone())?;
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth()
        };
        let source = |i: usize| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (i % usize::from(a.addresses)) as u8,
            ))
        };
        let mut tasks = Vec::new();
        let mut n = 0;
        // Idle connections, a third of each kind.
        for i in 0..a.idle {
            let kind = i % 3;
            tasks.push(tokio::spawn(attacker(
                source(n),
                server_addr,
                tls.clone(),
                kind,
                stop.clone(),
                tally.clone(),
            )));
            n += 1;
        }
        for _ in 0..a.trickle {
            tasks.push(tokio::spawn(attacker(
                source(n),
                server_addr,
                tls.clone(),
                3,
                stop.clone(),
                tally.clone(),
            )));
            n += 1;
        }
        let big = bytes::Bytes::from(vec![b'x'; 16 * 1024 * 1024]);
        for _ in 0..a.uploads {
            let c = outsider(&roots, source(n))?;
            let (big, url, stop, tally) = (big.clone(), url.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .post(format!("{url}/v1/batches"))
                        .header("content-type", "application/json")
                        .body(big.clone())
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 401) {
                        tally.uploads_refused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
            n += 1;
        }
        for _ in 0..a.readyz {
            let c = outsider(&roots, source(n))?;
            let (url, stop, tally) = (url.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if c.get(format!("{url}/readyz")).send().await.is_ok() {
                        tally.readyz.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            n += 1;
        }
        eprintln!(
            "attacking from {} addresses ({} idle, {} trickling, {} uploading, {} flooding /readyz) for {:.0} s, then the batch...",
            a.addresses, a.idle, a.trickle, a.uploads, a.readyz, a.warmup
        );
        let attack_start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
        let open_at_batch = open_connections(server.0.id());
        let (attacked, issued_attacked) =
            send_batch(batch_body(1, &lines[a.batch..])).await?;
        let attack_seconds = attack_start.elapsed().as_secs_f64();
        let probes_made = probes(client.clone(), url.clone()).await? - probes_before;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        Ok::<_, anyhow::Error>(json!({
            "batch_items": a.batch,
            "batch_seconds_alone": alone,
            "batch_seconds_under_attack": attacked,
            "latency_ratio": attacked / alone,
            "issued": issued_alone + issued_attacked,
            "server_peak_rss_mb_alone": rss_alone,
            "server_open_sockets_at_batch": open_at_batch,
            "attack_seconds": attack_seconds,
            "attack_connections_made": tally.connections.load(Ordering::Relaxed),
            "attack_connections_ended": tally.ended.load(Ordering::Relaxed),
            "uploads_refused": tally.uploads_refused.load(Ordering::Relaxed),
            "readyz_answered": tally.readyz.load(Ordering::Relaxed),
            "readiness_hsm_probes_during_attack": probes_made,
            "addresses": a.addresses, "idle": a.idle, "trickle": a.trickle,
            "uploads": a.uploads, "readyz_clients": a.readyz,
        }))
    });
    drop(server);
    let peak = sampler.stop();
    let mut out = outcome?;
    out["server_peak_rss_mb"] = json!(peak);
    let issued = out["issued"].as_u64().unwrap_or(0);
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let f = |k: &str| out[k].as_f64().unwrap_or(0.0);
        println!(
            "batch of {} alone          {:.2} s",
            a.batch,
            f("batch_seconds_alone")
        );
        println!(
            "the same under attack      {:.2} s ({:.1} x)",
            f("batch_seconds_under_attack"),
            f("latency_ratio")
        );
        println!(
            "server peak RSS            {peak:.1} MB with the attack running (target <= 256 MB); {:.1} MB before it",
            f("server_peak_rss_mb_alone")
        );
        println!(
            "attack                     {:.0} s: {} connections made, {} ended (closed by the server, or refused before TLS), {} uploads refused, {} /readyz answered, {} HSM readiness probes",
            f("attack_seconds"),
            out["attack_connections_made"],
            out["attack_connections_ended"],
            out["uploads_refused"],
            out["readyz_answered"],
            out["readiness_hsm_probes_during_attack"]
        );
        println!(
            "server sockets open        {} when the batch was sent",
            out["server_open_sockets_at_batch"]
        );
    }
    anyhow::ensure!(
        issued == 2 * a.batch as u64,
        "{issued} of {} certificates issued",
        2 * a.batch
    );
    Ok(())
}

/// Sockets the process holds now.
fn open_connections(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// A client without a certificate, from `source`.
fn outsider(roots: &[CertificateDer<'static>], source: IpAddr) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .local_address(source)
        .timeout(Duration::from_secs(120));
    for r in roots {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(r)?);
    }
    Ok(builder.build()?)
}

/// One hostile connection, made again whenever the server closes it: kind 0 TLS then nothing,
/// 1 HTTP/2 preface then nothing, 2 TCP without TLS, 3 a body trickled a byte a second.
async fn attacker(
    source: IpAddr,
    server: SocketAddr,
    tls: rustls::ClientConfig,
    kind: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let tls = Arc::new({
        let mut c = tls;
        c.alpn_protocols = match kind {
            1 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        c
    });
    while !stop.load(Ordering::Relaxed) {
        let attempt = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let tcp = socket.connect(server).await?;
            tally.connections.fetch_add(1, Ordering::Relaxed);
            if kind == 2 {
                let mut tcp = tcp;
                let mut buf = [0u8; 256];
                while tcp.read(&mut buf).await? > 0 {}
                return Ok::<_, std::io::Error>(());
            }
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            let mut s = connector
                .connect(ServerName::IpAddress(server.ip().into()), tcp)
                .await?;
            match kind {
                1 => {
                    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
                    s.write_all(&preface).await?;
                }
                3 => {
                    s.write_all(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n").await?;
                    let mut buf = [0u8; 256];
                    loop {
                        tokio::select! {
                            r = s.read(&mut buf) => if r? == 0 { return Ok(()) },
                            _ = tokio::time::sleep(Duration::from_secs(1)) => s.write_all(b" ").await?,
                        }
                    }
                }
                _ => {}
            }
            let mut buf = [0u8; 256];
            while s.read(&mut buf).await? > 0 {}
            Ok(())
        };
        let _ = attempt.await;
        tally.ended.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
