//! Faults: a failing, hung or corrupting HSM (through the PKCS#11 fault injector) and a server
//! SIGKILLed in the middle of batches; nothing answered is lost, nothing half-stored.

use std::process::{Command, Stdio};

use meterpki_tests::Scratch;
use serde_json::{json, Value};

use crate::support::{curl, curl_args, items, Server, EXE};

/// The PKCS#11 fault injector (`pkcs11-faults`, loaded in place of SoftHSM and forwarding to it):
/// a failing, hung or corrupting `C_Sign` gives a 503 within a bounded time and no certificate;
/// `/readyz` goes red and back to green without a restart; the CLI stops with exit 1.
#[test]
fn hsm_faults_give_503_nothing_stored_and_readyz_recovers() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-7",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    // Load the injector instead of SoftHSM; a signature slower than 1.5 s is a failure.
    let real = s.use_fault_module("h");
    let toml_path = s.path("h/meterpki.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let toml = match toml.find("sign_timeout_ms") {
        Some(_) => toml
            .lines()
            .map(|l| {
                if l.starts_with("sign_timeout_ms") {
                    "sign_timeout_ms = 1500".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => toml.replace("[hsm]\n", "[hsm]\nsign_timeout_ms = 1500\n"),
    };
    std::fs::write(&toml_path, toml).unwrap();
    let faults = s.path("faults");
    std::fs::write(&faults, "").unwrap();
    let env = [
        ("METERPKI_FAULTS_FILE", faults.display().to_string()),
        ("METERPKI_FAULTS_MODULE", real.clone()),
    ];
    let set = |f: &str| std::fs::write(&faults, f).unwrap();
    let srv = Server::start_env(&s, &[], &env);
    let ready = |srv: &Server| curl(&s, srv, None, "GET", "/readyz", None, &[]).0;
    let batch = |srv: &Server, rid: &str, ids: &[&str]| {
        let body = json!({"request_id": rid, "items": items(&s, ids.len(), ids)}).to_string();
        let t = std::time::Instant::now();
        let (code, resp) = curl(
            &s,
            srv,
            Some("line-7"),
            "POST",
            "/v1/batches",
            Some(&body),
            &[],
        );
        (code, resp, t.elapsed())
    };
    assert_eq!(ready(&srv), 200);
    let (code, resp, _) = batch(&srv, "ok-1", &["00-DB-12-00-00-00-20-01"]);
    assert_eq!(code, 200, "{resp}");

    // A failing C_Sign (CKR_DEVICE_ERROR): 503, not ready.
    // The faults hit the Device CA's key only: the server's TLS key is in the same HSM, and a
    // whole-HSM failure shows as failed handshakes (checked below with the CLI).
    set("sign=fail:0x30\nkey=meterpki-device-ca");
    let (code, resp, _) = batch(&srv, "fail-1", &["00-DB-12-00-00-00-20-02"]);
    assert_eq!(code, 503, "{resp}");
    assert!(resp.contains("hsm-unavailable"), "{resp}");
    assert_eq!(ready(&srv), 503, "the Device CA's key cannot sign");

    // A corrupted signature: caught by the verification, never answered or stored.
    set("sign=corrupt\nkey=meterpki-device-ca");
    let (code, resp, _) = batch(&srv, "corrupt-1", &["00-DB-12-00-00-00-20-03"]);
    assert_eq!(code, 503, "{resp}");
    assert_eq!(
        ready(&srv),
        503,
        "a probe whose signature does not verify is not ready"
    );

    // A hung C_Sign: the client gets a 503 within a bounded time, readyz too.
    set("sign=hang\nkey=meterpki-device-ca");
    let (code, resp, took) = batch(&srv, "hang-1", &["00-DB-12-00-00-00-20-04"]);
    assert_eq!(code, 503, "{resp}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "answered after {took:?}"
    );
    let t = std::time::Instant::now();
    assert_eq!(ready(&srv), 503);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));

    // Cleared: ready again without a restart (sessions rebuilt), and issuing works.
    set("");
    wait_until(20, "readyz stayed red", || ready(&srv) == 200);
    let (code, resp, _) = batch(&srv, "ok-2", &["00-DB-12-00-00-00-20-05"]);
    assert_eq!(code, 200, "{resp}");
    let metrics = curl(&s, &srv, None, "GET", "/metrics", None, &[]).1;
    assert!(metrics.contains("hsm-unavailable"), "{metrics}");
    assert_eq!(srv.stop(), 0);

    // Nothing was stored for the failed, corrupted and hung requests.
    for d in [
        "00-DB-12-00-00-00-20-02",
        "00-DB-12-00-00-00-20-03",
        "00-DB-12-00-00-00-20-04",
    ] {
        s.run_env(
            "h",
            &["show", "--device-id", d],
            &[
                ("METERPKI_FAULTS_FILE", &faults.display().to_string()),
                ("METERPKI_FAULTS_MODULE", &real),
            ],
        )
        .fails(2, "no certificate");
    }
    // The CLI: a failing HSM is exit 1 with the PKCS#11 error; a hung one exit 1 within bounds.
    let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), "m", "prime256v1");
    let csr = csr.display().to_string();
    let issue = |d: &str| {
        let t = std::time::Instant::now();
        let r = s.run_env(
            "h",
            &[
                "issue",
                "--profile",
                "meter-signing",
                "--device-id",
                d,
                "--csr",
                &csr,
            ],
            &[
                ("METERPKI_FAULTS_FILE", &faults.display().to_string()),
                ("METERPKI_FAULTS_MODULE", &real),
            ],
        );
        (r, t.elapsed())
    };
    set("sign=fail:0x30");
    let (r, _) = issue("00-DB-12-00-00-00-20-06");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("CKR_DEVICE_ERROR"), "{}", r.stderr);
    set("sign=hang");
    let (r, took) = issue("00-DB-12-00-00-00-20-07");
    set("");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("has not answered"), "{}", r.stderr);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let (r, _) = issue("00-DB-12-00-00-00-20-08");
    assert_eq!(r.code, 0, "{}", r.stderr);
    for d in ["00-DB-12-00-00-00-20-06", "00-DB-12-00-00-00-20-07"] {
        s.run_env(
            "h",
            &["show", "--device-id", d],
            &[
                ("METERPKI_FAULTS_FILE", &faults.display().to_string()),
                ("METERPKI_FAULTS_MODULE", &real),
            ],
        )
        .fails(2, "no certificate");
    }
}

/// The server SIGKILLed in the middle of batches, then restarted: every batch answered before
/// the kill is answered again identically under its request_id, a retry of an unanswered one
/// issues what is missing once, and no serial is used twice (`METERPKI_CRASH_ROUNDS` rounds).
#[test]
fn a_server_killed_mid_batch_loses_nothing_answered() {
    let rounds: usize = std::env::var("METERPKI_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-all",
        &["--device-range", "00-00-00-00-00-00-00-00/0"],
    );
    let mut serials = std::collections::BTreeSet::new();
    let mut kills = 0;
    for round in 0..rounds {
        let body =
            json!({"request_id": format!("r{round}"), "items": items(&s, 3000, &[])}).to_string();
        std::fs::write(s.path(&format!("r{round}.json")), &body).unwrap();
        let srv = Server::start(&s);
        let args = curl_args(
            &s,
            srv.port,
            Some("line-all"),
            "POST",
            "/v1/batches",
            Some(&s.path(&format!("r{round}.json"))),
            &s.path(&format!("r{round}.out")),
        );
        let client = Command::new("curl")
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill the server at a moment within the batch (it takes about a second here).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        std::thread::sleep(std::time::Duration::from_millis(100 + nanos % 900));
        let mut srv = srv;
        let killed = srv.child.try_wait().unwrap().is_none();
        let _ = srv.child.kill(); // SIGKILL
        let _ = srv.child.wait();
        kills += killed as usize;
        let first = client.wait_with_output().unwrap();
        let first_status = String::from_utf8_lossy(&first.stdout).to_string();
        let answered: Option<Value> = (first_status == "200").then(|| {
            serde_json::from_str(
                &std::fs::read_to_string(s.path(&format!("r{round}.out"))).unwrap(),
            )
            .unwrap()
        });
        drop(srv);
        // Restart; the retry under the same request_id answers every item.
        let srv = Server::start(&s);
        let (code, resp) = curl(
            &s,
            &srv,
            Some("line-all"),
            "POST",
            "/v1/batches",
            Some(&body),
            &[],
        );
        assert_eq!(code, 200, "round {round}: {resp}");
        let retry: Value = serde_json::from_str(&resp).unwrap();
        let results = retry["results"].as_array().unwrap();
        assert_eq!(results.len(), 3000);
        assert!(
            results.iter().all(|r| r["status"] == "issued"),
            "round {round}"
        );
        if let Some(a) = answered {
            assert_eq!(
                a["results"], retry["results"],
                "round {round}: a stored answer changed"
            );
        }
        for r in results {
            let serial = r["serial"].as_str().unwrap().to_string();
            assert!(
                serials.insert(serial.clone()),
                "round {round}: serial {serial} twice"
            );
        }
        assert_eq!(srv.stop(), 0);
    }
    let st = s.run("h", &["status", "--json"]).ok().json();
    // + the account's certificate and the server's own.
    assert_eq!(
        st["certificates"].as_u64().unwrap() as usize,
        serials.len() + 2
    );
    s.run("h", &["audit", "verify"]).ok();
    eprintln!("server crash harness: {rounds} round(s), {kills} kill(s) mid-batch");
}

/// The injector as a slow HSM (`sign=rate:N`, `sign=delay:US`): `meterpki hsm bench` on a
/// token limited to 150 signatures a second never measures more, with one session or two, bare
/// PKCS#11 or through hsm-bridge; a 20 ms round trip per signature caps one session at 50/s.
/// (Upper bounds only: the limiter guarantees them; a loaded machine only makes it slower.)
#[test]
fn a_rate_limited_token_never_signs_faster_than_its_rate() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    let real = s.use_fault_module("h");
    let faults = s.path("faults");
    let env = |f: &str| {
        std::fs::write(&faults, f).unwrap();
        s.run_env(
            "h",
            &["--json", "hsm", "bench", "--seconds", "1"],
            &[
                ("METERPKI_FAULTS_FILE", &faults.display().to_string()),
                ("METERPKI_FAULTS_MODULE", &real),
            ],
        )
        .ok()
        .json()
    };
    let rates = |v: &Value, curve: &str| -> Vec<(String, u64, f64)> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["curve"] == curve)
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["sessions"].as_u64().unwrap(),
                    r["per_second"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let limited = env("sign=rate:150\n");
    let p256 = rates(&limited, "EC P-256");
    assert!(p256.len() >= 2, "{limited}");
    for (name, sessions, rate) in &p256 {
        // At most 150 starts a second, plus the first: 151 in the one-second window.
        assert!(*rate <= 151.0, "{name} with {sessions} sessions: {rate}/s");
    }
    let delayed = env("sign=delay:20000\n");
    for (name, sessions, rate) in rates(&delayed, "EC P-256") {
        assert!(
            rate <= 50.5 * sessions as f64,
            "{name} with {sessions} sessions: {rate}/s"
        );
    }
    // Only the token named is limited: another label leaves this one at full speed, which
    // no limit of 150/s would allow (SoftHSM signs P-256 thousands of times a second).
    let other = env("sign=rate:150\ntoken=another-token\n");
    assert!(
        rates(&other, "EC P-256").iter().any(|(_, _, r)| *r > 300.0),
        "{other}"
    );
}

/// The online keys on two tokens (`[[hsm.tokens]]`; the second a copy of the first's files,
/// as replication will make it): with the Device CA's key failing on one token a batch is
/// answered in full from the other, and the server stays ready; failing on both, 503 and
/// nothing stored; both back, ready and issuing without a restart. A third token holding other
/// keys under the same labels is refused, named.
#[test]
fn with_two_tokens_one_failing_is_invisible_to_clients_and_both_failing_is_503_until_they_recover()
{
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-7",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    // A first start makes the API server's key (on the online token): then the copy holds it.
    let first = Server::start(&s);
    assert_eq!(curl(&s, &first, None, "GET", "/readyz", None, &[]).0, 200);
    assert_eq!(first.stop(), 0);
    s.copy_online_token("h", "h", "meterpki-online2");
    let toml_path = s.path("h/meterpki.toml");
    let tokens = "\n[[hsm.tokens]]\nlabel = \"meterpki-online\"\n\n[[hsm.tokens]]\nlabel = \"meterpki-online2\"\npin_file = \"secrets/online.pin\"\n";
    let toml = std::fs::read_to_string(&toml_path).unwrap().replace(
        "ready_probe_interval_ms = 5000",
        "ready_probe_interval_ms = 500",
    ) + tokens;
    assert!(toml.contains("ready_probe_interval_ms = 500\n"), "{toml}");
    std::fs::write(&toml_path, &toml).unwrap();
    let real = s.use_fault_module("h");
    let faults = s.path("faults");
    std::fs::write(&faults, "").unwrap();
    let env = [
        ("METERPKI_FAULTS_FILE", faults.display().to_string()),
        ("METERPKI_FAULTS_MODULE", real.clone()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let set = |f: &str| std::fs::write(&faults, f).unwrap();
    let srv = Server::start_env(&s, &[], &env);
    let ready = |srv: &Server| curl(&s, srv, None, "GET", "/readyz", None, &[]).0;
    let batch = |srv: &Server, rid: &str, ids: &[String]| {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let body = json!({"request_id": rid, "items": items(&s, ids.len(), &ids)}).to_string();
        curl(
            &s,
            srv,
            Some("line-7"),
            "POST",
            "/v1/batches",
            Some(&body),
            &[],
        )
    };
    let devices = |block: u8, n: u8| -> Vec<String> {
        (1..=n)
            .map(|i| format!("00-DB-12-00-00-00-{block:02X}-{i:02X}"))
            .collect()
    };

    // The Device CA's key fails on the first token (the one every signature goes to first).
    set("sign=fail:0x30\nkey=meterpki-device-ca\ntoken=meterpki-online\n");
    let (code, resp) = batch(&srv, "two-1", &devices(0x30, 40));
    assert_eq!(code, 200, "{resp}");
    let answer: Value = serde_json::from_str(&resp).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 40);
    assert!(
        results.iter().all(|r| r["serial"].is_string()),
        "every item answered: {resp}"
    );
    assert_eq!(ready(&srv), 200, "a key with a token up is ready");
    let (_, body) = curl(&s, &srv, None, "GET", "/readyz", None, &[]);
    assert!(
        body.contains("token meterpki-online out of the rotation for meterpki-device-ca"),
        "{body}"
    );
    let metrics = || curl(&s, &srv, None, "GET", "/metrics", None, &[]).1;
    let m = metrics();
    for line in [
        "meterpki_hsm_token_up{key=\"meterpki-device-ca\",token=\"meterpki-online\"} 0",
        "meterpki_hsm_token_up{key=\"meterpki-device-ca\",token=\"meterpki-online2\"} 1",
        "meterpki_hsm_token_failures_total{key=\"meterpki-device-ca\",token=\"meterpki-online2\"} 0",
    ] {
        assert!(m.contains(line), "{line} not in {m}");
    }
    // Each signature in flight on the first token when it failed counts (one per session).
    let failed: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "meterpki_hsm_token_failures_total{key=\"meterpki-device-ca\",token=\"meterpki-online\"} ",
            )
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{m}"));
    assert!(failed >= 1, "{m}");
    // The token comes back by the server's own probe (every 0.5 s here), /readyz unasked.
    set("");
    wait_until(20, "the token did not come back", || {
        metrics().contains(
            "meterpki_hsm_token_up{key=\"meterpki-device-ca\",token=\"meterpki-online\"} 1",
        )
    });

    // The first token failing in the middle of a batch (every token slowed to 250 signatures
    // a second so that the batch is still signing when the fault comes): the batch completes
    // on the second token, every item answered once.
    let issued_total = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("meterpki_certificates_issued_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{m}"))
    };
    let issued_before = issued_total(&metrics());
    set("sign=rate:250\n");
    let mid = std::thread::scope(|scope| {
        let running = scope.spawn(|| batch(&srv, "two-mid", &devices(0x34, 200)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!running.is_finished(), "the batch ended before the fault");
        set("sign=rate:250\nsign=fail:0x30\nkey=meterpki-device-ca\ntoken=meterpki-online\n");
        running.join().unwrap()
    });
    assert_eq!(mid.0, 200, "{}", mid.1);
    let answer: Value = serde_json::from_str(&mid.1).unwrap();
    let serials: std::collections::BTreeSet<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial"].as_str().expect("every item answered"))
        .collect();
    assert_eq!(serials.len(), 200, "200 distinct certificates: {}", mid.1);
    let m = metrics();
    assert!(
        m.contains("meterpki_hsm_token_up{key=\"meterpki-device-ca\",token=\"meterpki-online\"} 0"),
        "{m}"
    );
    // Stored once each (the store check at the end finds no serial twice and one active
    // certificate per device).
    assert_eq!(issued_total(&m), issued_before + 200, "{m}");
    set("");
    wait_until(
        20,
        "the token did not come back after the mid-batch fault",
        || {
            metrics().contains(
                "meterpki_hsm_token_up{key=\"meterpki-device-ca\",token=\"meterpki-online\"} 1",
            )
        },
    );

    // Failing on both: 503, nothing stored.
    set("sign=fail:0x30\nkey=meterpki-device-ca\n");
    let (code, resp) = batch(&srv, "two-2", &devices(0x31, 1));
    assert_eq!(code, 503, "{resp}");
    assert!(resp.contains("hsm-unavailable"), "{resp}");
    assert_eq!(ready(&srv), 503);

    // Both back: the readiness probe brings them into the rotation, without a restart.
    set("");
    wait_until(20, "readyz stayed red", || ready(&srv) == 200);
    let (code, resp) = batch(&srv, "two-3", &devices(0x32, 2));
    assert_eq!(code, 200, "{resp}");
    assert_eq!(srv.stop(), 0);

    s.run_env(
        "h",
        &["show", "--device-id", "00-DB-12-00-00-00-31-01"],
        &env_ref,
    )
    .fails(2, "no certificate");
    let check = s
        .run_env("h", &["store", "check", "--json"], &env_ref)
        .ok()
        .json();
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    s.run_env("h", &["audit", "verify"], &env_ref).ok();
    let same = |st: &Value, token: &str| -> Vec<Value> {
        st["online_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == token)
            .unwrap_or_else(|| panic!("{token} not in {st}"))["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["same_as_online_token"].clone())
            .collect()
    };
    let st = s.run_env("h", &["--json", "status"], &env_ref).ok().json();
    for token in ["meterpki-online", "meterpki-online2"] {
        let keys = same(&st, token);
        assert!(
            keys.len() >= 4 && keys.iter().all(|k| *k == true),
            "{token}: {st}"
        );
    }

    // A token holding another home's keys under the same labels: refused, named.
    s.ceremonies("other", 3, 2, &["device"]);
    s.copy_online_token("other", "h", "meterpki-online3");
    std::fs::write(
        &toml_path,
        // (`toml` is the configuration before the fault injector replaced SoftHSM in it.)
        toml.clone() + "\n[[hsm.tokens]]\nlabel = \"meterpki-online3\"\npin_file = \"../other/secrets/online.pin\"\n",
    )
    .unwrap();
    let r = s.run_env(
        "h",
        &["show", "--device-id", "00-DB-12-00-00-00-30-01", "--json"],
        &env_ref,
    );
    assert_eq!(r.code, 0, "reading needs no signature: {}", r.stderr);
    let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), "m", "prime256v1");
    let r = s.run_env(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            "00-DB-12-00-00-00-33-01",
            "--csr",
            &csr.display().to_string(),
        ],
        &env_ref,
    );
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("meterpki-online3") && r.stderr.contains("different public key"),
        "{}",
        r.stderr
    );
    // `status` shows it (and fails: the home cannot sign with that set of tokens).
    let r = s.run("h", &["--json", "status"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("meterpki-online3"), "{}", r.stderr);
    let st = r.json();
    assert!(
        same(&st, "meterpki-online3").iter().any(|k| *k == false),
        "{st}"
    );
    let r = s.run("h", &["status"]);
    assert!(r.stdout.contains("NOT USABLE"), "{}", r.stdout);
}

/// Polls `done` every 200 ms; fails with `what` after `seconds`.
fn wait_until(seconds: u64, what: &str, done: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(seconds),
            "{what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
