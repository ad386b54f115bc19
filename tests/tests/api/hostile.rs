//! Hostile callers without an account: uploads that are refused unread, connection limits
//! before TLS, idle and trickling connections closed on HTTP/1.1 and HTTP/2, `/readyz` floods,
//! and the accept loop out of file descriptors. Each test fails without its limit: the
//! connection it holds would stay open, the upload would be read, the probe would be made.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meterpki_tests::Scratch;

use super::support::{curl, setup, Server};

/// A command started with its output captured.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::process::Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Sets `[server]` fields of the home's meterpki.toml (the server reads them at start).
fn set_server(s: &Scratch, fields: &[(&str, &str)]) {
    let path = s.path("h/meterpki.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let mut section = String::new();
    let mut set = 0;
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        let key = line.split('=').next().unwrap_or("").trim();
        match fields.iter().find(|(k, _)| *k == key) {
            Some((k, v)) if section == "[server]" => {
                out.push_str(&format!("{k} = {v}\n"));
                set += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(set, fields.len(), "[server] fields not found in {text}");
    std::fs::write(&path, out).unwrap();
}

/// Whether the server closes `c` within `limit` (EOF or reset), reading what it sends.
fn closed_within(c: &mut std::net::TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// An `openssl s_client` session (an independent TLS client) that sends each chunk of
/// `script` after its pause and then keeps the connection open. Returns how long the server
/// took to close it (None: still open after `limit`) and what it answered.
fn tls_session(
    s: &Scratch,
    port: u16,
    account: Option<&str>,
    alpn: &str,
    script: Vec<(Duration, Vec<u8>)>,
    limit: Duration,
) -> (Option<Duration>, String) {
    let mut args: Vec<String> = [
        "s_client",
        "-quiet",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-alpn",
        alpn,
        "-CAfile",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(s.path("creds/ca.pem").display().to_string());
    if let Some(a) = account {
        args.extend([
            "-cert".into(),
            s.path(&format!("creds/{a}.pem")).display().to_string(),
            "-key".into(),
            s.path(&format!("creds/{a}.key")).display().to_string(),
        ]);
    }
    let mut child = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut stdin = child.stdin.take().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for (pause, bytes) in script {
            std::thread::sleep(pause);
            if stdin
                .write_all(&bytes)
                .and_then(|()| stdin.flush())
                .is_err()
            {
                return;
            }
        }
        // Keep the connection open (stdin open) until the session ends.
        let _ = done_rx.recv();
        drop(stdin);
    });
    let start = Instant::now();
    let closed = loop {
        if child.try_wait().unwrap().is_some() {
            break Some(start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = done_tx.send(());
    let _ = writer.join();
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    (closed, out)
}

/// A caller without a certificate uploading a body is answered before the body is read (it
/// costs the server nothing); connections beyond a client address's limit are closed before
/// TLS; beyond the global limit they wait and are served once others end.
#[test]
fn refused_uploads_are_not_read_and_connections_are_capped() {
    let s = setup();
    let srv = Server::start(&s);
    // 16 MiB sent at 256 KiB/s would take a minute; over HTTP/1.1 the 401 comes first and
    // the connection is closed.
    let big = s.path("big.body");
    std::fs::write(&big, vec![b'x'; 16 * 1024 * 1024]).unwrap();
    let upload = |proto: &str, rate: &str| {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.path("creds/ca.pem"))
            .args([proto, "--limit-rate", rate, "--max-time", "30"])
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", big.display()))
            .arg(format!("https://127.0.0.1:{}/v1/batches", srv.port))
            .spawn_output()
    };
    let t = Instant::now();
    let out = upload("--http1.1", "256K").wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "401",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("refused HTTP/1.1 upload answered after {:?}", t.elapsed());
    // 24 uploads at once at full speed on each protocol cost the server no memory for their
    // bodies (HTTP/2: at most 64 KiB is read and dropped, then the stream is reset with NO_ERROR
    // after the 401, RFC 9113 §8.1, which curl before 8.x reports as a stream error).
    let peak = || {
        std::fs::read_to_string(format!("/proc/{}/status", srv.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = peak();
    for proto in ["--http1.1", "--http2"] {
        let uploads: Vec<_> = (0..24).map(|_| upload(proto, "1G")).collect();
        for u in uploads {
            let out = u.wait_with_output().unwrap();
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                code == "401" || (proto == "--http2" && out.status.code() == Some(92)),
                "{proto}: {code} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let grew = peak().saturating_sub(before);
    eprintln!("48 refused 16 MiB uploads: server peak RSS grew by {grew} kB");
    assert!(
        grew < 64 * 1024,
        "refused uploads grew the server's peak RSS by {grew} kB"
    );

    assert_eq!(srv.stop(), 0);

    // Four connections from 127.0.0.1 held before TLS: a fifth is closed at once.
    set_server(
        &s,
        &[
            ("max_connections_per_ip", "4"),
            ("header_timeout_secs", "30"),
        ],
    );
    let srv = Server::start(&s);
    let mut held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(10)),
        "a fifth connection from one address was kept (the handshake timeout is 30 s)"
    );
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
            "a connection within the limit was closed"
        );
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&s, &srv, None, "GET", "/healthz", None, &[]).0, 200);
    assert_eq!(srv.stop(), 0);

    // The global limit: the connection beyond it waits in the kernel's queue, unanswered, and
    // is served once a held one ends.
    set_server(
        &s,
        &[("max_connections", "4"), ("max_connections_per_ip", "4")],
    );
    let srv = Server::start(&s);
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, _) = curl(
        &s,
        &srv,
        None,
        "GET",
        "/healthz",
        None,
        &["--max-time", "3"],
    );
    assert_eq!(
        code, 0,
        "a connection beyond server.max_connections was served"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&s, &srv, None, "GET", "/healthz", None, &[]).0, 200);
    assert_eq!(srv.stop(), 0);
}

/// Connections that hold the server without using it are closed: kept-alive HTTP/1.1 after a
/// request, HTTP/2 after its preface, headers never finished, and a body trickled one byte a
/// second (answered 408); a batch sent at a normal pace still issues.
#[test]
fn idle_and_trickling_connections_are_closed_on_both_protocols() {
    let s = setup();
    set_server(
        &s,
        &[
            ("header_timeout_secs", "2"),
            ("idle_timeout_secs", "3"),
            ("min_body_bytes_per_sec", "100"),
        ],
    );
    let srv = Server::start(&s);
    let limit = Duration::from_secs(20);
    let second = Duration::from_secs(1);
    let now = Duration::ZERO;

    // HTTP/1.1: one request answered, then nothing (keep-alive).
    let (closed, out) = tls_session(
        &s,
        srv.port,
        None,
        "http/1.1",
        vec![(now, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())],
        limit,
    );
    assert!(out.contains("200 OK"), "{out}");
    assert!(closed.is_some(), "an idle HTTP/1.1 connection stayed open");

    // HTTP/2: the preface and SETTINGS, then nothing.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let (closed, _) = tls_session(&s, srv.port, None, "h2", vec![(now, preface)], limit);
    assert!(
        closed.is_some(),
        "an HTTP/2 connection with no stream stayed open"
    );

    // Headers trickled and never finished.
    let trickle: Vec<_> = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        .iter()
        .map(|b| (second, vec![*b]))
        .collect();
    let (closed, out) = tls_session(&s, srv.port, None, "http/1.1", trickle, limit);
    assert!(closed.is_some(), "trickled headers kept the connection");
    assert!(!out.contains("200 OK"), "{out}");

    // A body at one byte a second, by an account (the body is read): 408, closed.
    let mut script = vec![(
        now,
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            .to_vec(),
    )];
    script.extend((0..30).map(|_| (second, b" ".to_vec())));
    let (closed, out) = tls_session(&s, srv.port, Some("line-7"), "http/1.1", script, limit);
    assert!(out.contains("408"), "{out}");
    assert!(out.contains("body-too-slow"), "{out}");
    assert!(closed.is_some(), "a trickled body kept the connection");

    // A batch at a normal pace on the same server issues.
    let body = serde_json::json!({
        "request_id": "after-trickle",
        "items": super::support::items(&s, 1, &["00-DB-12-00-00-00-31-01"]),
    })
    .to_string();
    let (code, resp) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&body),
        &[],
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(srv.stop(), 0);
}

/// The metric of HSM probes made.
fn probes(s: &Scratch, srv: &Server) -> u64 {
    let metrics = curl(s, srv, None, "GET", "/metrics", None, &[]).1;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("meterpki_hsm_readiness_probes_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// A flood of `/readyz` is answered from the last probe: at most one HSM probe per interval.
#[test]
fn a_readyz_flood_costs_one_hsm_probe_per_interval() {
    let s = setup();
    set_server(&s, &[("ready_probe_interval_ms", "60000")]);
    let srv = Server::start(&s);
    let before = probes(&s, &srv);
    // 200 requests over 4 connections at once.
    let url = format!("https://127.0.0.1:{}/readyz", srv.port);
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let mut c = Command::new("curl");
            c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}\n", "--cacert"])
                .arg(s.path("creds/ca.pem"));
            for _ in 0..50 {
                c.arg(&url);
            }
            c.output().unwrap()
        })
        .collect();
    for out in floods {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text.lines().filter(|l| *l == "200").count(), 50, "{text}");
    }
    let made = probes(&s, &srv) - before;
    assert!(made <= 1, "200 /readyz made {made} HSM probes");
    assert_eq!(srv.stop(), 0);
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Out of file descriptors, the accept loop backs off instead of spinning and logs a line now
/// and then, not one per attempt; once descriptors are free it serves again.
#[test]
fn out_of_file_descriptors_the_server_backs_off_quietly_and_recovers() {
    let s = setup();
    let srv = Server::start(&s);
    let pid = srv.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = (open + 8).to_string();
    // The soft limit before (restored after), from /proc/PID/limits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    // Only the soft limit changes: an unprivileged process may raise it again.
    let prlimit = |n: &str| {
        let st = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
            .status()
            .expect("prlimit (util-linux) is installed");
        assert!(st.success());
    };
    prlimit(&limit);
    let held: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0;
    let wall = started.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let lines = log
        .lines()
        .filter(|l| l.contains("accepting a connection failed"))
        .count();
    eprintln!("out of descriptors: {used:.2} s CPU in {wall:.1} s, {lines} log lines");
    assert!(lines >= 1, "the failure was not logged: {log}");
    assert!(lines <= 2, "{lines} log lines in {wall:.1} s: {log}");
    assert!(
        used < wall / 2.0,
        "the accept loop used {used:.2} s of CPU in {wall:.1} s"
    );
    drop(held);
    prlimit(&soft);
    let t = Instant::now();
    while curl(
        &s,
        &srv,
        None,
        "GET",
        "/healthz",
        None,
        &["--max-time", "5"],
    )
    .0 != 200
    {
        assert!(t.elapsed() < Duration::from_secs(20), "not served again");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(srv.stop(), 0);
}
