//! The issuance API end to end: `meterpki serve` on SoftHSM, driven by curl (an independent TLS
//! client) with the client certificates `account add` wrote. Every refusal is checked to have
//! issued nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use meterpki_tests::{tool, Scratch};
use serde_json::{json, Value};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(s: &Scratch) -> Server {
        Server::start_with(s, &[])
    }

    fn start_with(s: &Scratch, extra: &[&str]) -> Server {
        Server::start_env(s, extra, &[])
    }

    fn start_env(s: &Scratch, extra: &[&str], env: &[(&str, String)]) -> Server {
        let mut child = Command::new(EXE)
            .args([
                "--home",
                &s.path("h").display().to_string(),
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("METERPKI_REEXEC")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("server said {line:?}"));
        Server { child, port }
    }

    fn stop(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTPS request with curl: (HTTP status, body); status 0 when there was no HTTP answer.
/// curl's arguments for one request: the answer's body to `out`, the status on stdout; the
/// request body read from `body` (a file), the client certificate of `account` (`other:NAME`
/// for the other hierarchy's credentials).
fn curl_args(
    s: &Scratch,
    port: u16,
    account: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&std::path::Path>,
    out: &std::path::Path,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-o".into(),
        out.display().to_string(),
        "-w".into(),
        "%{http_code}".into(),
        "--cacert".into(),
        s.path("creds/ca.pem").display().to_string(),
        "-X".into(),
        method.into(),
        "-H".into(),
        "content-type: application/json".into(),
    ];
    if let Some(a) = account {
        let dir = if a.starts_with("other:") {
            "other-creds"
        } else {
            "creds"
        };
        let name = a.trim_start_matches("other:");
        args.extend([
            "--cert".into(),
            s.path(&format!("{dir}/{name}.pem")).display().to_string(),
            "--key".into(),
            s.path(&format!("{dir}/{name}.key")).display().to_string(),
        ]);
    }
    if let Some(b) = body {
        args.extend(["--data-binary".into(), format!("@{}", b.display())]);
    }
    args.push(format!("https://127.0.0.1:{port}{path}"));
    args
}

fn curl(
    s: &Scratch,
    srv: &Server,
    account: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[&str],
) -> (u16, String) {
    let body_file = s.path("req.body");
    if let Some(b) = body {
        std::fs::write(&body_file, b).unwrap();
    }
    let mut args = curl_args(
        s,
        srv.port,
        account,
        method,
        path,
        body.map(|_| body_file.as_path()),
        &s.path("resp.body"),
    );
    // Extra options go before the URL.
    let url = args.pop().unwrap();
    args.extend(extra.iter().map(|e| e.to_string()));
    args.push(url);
    let _ = std::fs::remove_file(s.path("resp.body"));
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl is installed");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let body = std::fs::read_to_string(s.path("resp.body")).unwrap_or_default();
    if code == 0 {
        // No HTTP answer: say why (curl's message), for the assertion that reads it.
        return (0, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    (code, body)
}

fn items(s: &Scratch, n: usize, ids: &[&str]) -> Vec<Value> {
    let f = s.path(&format!("items-{n}-{}.ndjson", ids.len()));
    s.bench(
        "h",
        &[
            "make-batch",
            "--count",
            &n.to_string(),
            "--out",
            &f.display().to_string(),
        ],
    )
    .ok();
    std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if let Some(id) = ids.get(i) {
                v["device_id"] = json!(id);
            }
            v
        })
        .collect()
}

fn setup() -> Scratch {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation", "access"]);
    s.account(
        "h",
        "factory",
        "line-all",
        &["--device-range", "00-00-00-00-00-00-00-00/0"],
    );
    s.account(
        "h",
        "factory",
        "line-7",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    s.supplier("h", "90-B3-D5-1F-30-00-00-0A", "Energy A");
    s.supplier("h", "90-B3-D5-1F-30-00-00-0B", "Energy B");
    s.account(
        "h",
        "supplier",
        "energy-a",
        &["--supplier", "90-B3-D5-1F-30-00-00-0A"],
    );
    s.run(
        "h",
        &[
            "account", "add", "--role", "operator", "--name", "ops", "--out", "creds",
        ],
    )
    .ok();
    // Another hierarchy's client certificate: a valid certificate from another CA.
    s.ceremonies("other", 3, 2, &["access"]);
    s.run(
        "other",
        &[
            "account",
            "add",
            "--role",
            "factory",
            "--name",
            "intruder",
            "--device-range",
            "00-00-00-00-00-00-00-00/0",
            "--out",
            "other-creds",
        ],
    )
    .ok();
    s
}

fn device_certs(s: &Scratch, srv: &Server, id: &str) -> usize {
    let (code, body) = curl(
        s,
        srv,
        Some("ops"),
        "GET",
        &format!("/v1/devices/{id}/certificates"),
        None,
        &[],
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["certificates"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn the_api_issues_over_mutual_tls_and_refuses_what_an_account_may_not_do() {
    let s = setup();
    let srv = Server::start(&s);

    // A factory batch over mTLS: certificates that openssl verifies.
    let batch = json!({"request_id": "r1", "items": items(&s, 3, &[])}).to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&batch),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let res: Value = serde_json::from_str(&body).unwrap();
    let chain = s.path("device-chain.pem");
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap(),
            std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap()
        ),
    )
    .unwrap();
    for (i, r) in res["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["status"], "issued", "{r}");
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(r["certificate"].as_str().unwrap())
            .unwrap();
        let f = s.path(&format!("api-{i}.der"));
        std::fs::write(&f, der).unwrap();
        let pem = s.path(&format!("api-{i}.pem")).display().to_string();
        tool(
            "openssl",
            &[
                "x509",
                "-inform",
                "DER",
                "-in",
                &f.display().to_string(),
                "-out",
                &pem,
            ],
            &[],
        )
        .ok();
        let v = tool(
            "openssl",
            &["verify", "-CAfile", &chain.display().to_string(), &pem],
            &[],
        );
        assert_eq!(v.code, 0, "{}", v.stderr);
    }
    // The same request again: the same certificates. The same request_id with another body: 409.
    let (code, again) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&batch),
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["results"],
        res["results"]
    );
    let other = json!({"request_id": "r1", "items": items(&s, 1, &[])}).to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&other),
        &[],
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("urn:meterpki:problem:request-id-conflict"),
        "{body}"
    );
    let (code, stored) = curl(
        &s,
        &srv,
        Some("line-all"),
        "GET",
        "/v1/batches/r1",
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&stored).unwrap()["results"],
        res["results"]
    );
    // NDJSON when asked.
    let (code, nd) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&batch),
        &["-H", "accept: application/x-ndjson"],
    );
    assert_eq!(code, 200);
    assert_eq!(nd.lines().count(), 3);

    // No client certificate: 401 on /v1, public endpoints still answer.
    let (code, body) = curl(&s, &srv, None, "POST", "/v1/batches", Some(&batch), &[]);
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("\"status\":401") && body.contains("client-certificate-required"),
        "{body}"
    );
    assert_eq!(curl(&s, &srv, None, "GET", "/healthz", None, &[]).0, 200);
    assert_eq!(curl(&s, &srv, None, "GET", "/readyz", None, &[]).0, 200);
    assert_eq!(
        curl(&s, &srv, None, "GET", "/crl/access/0.crl", None, &[]).0,
        200
    );
    assert_eq!(
        curl(
            &s,
            &srv,
            None,
            "GET",
            "/crl/device/../../secrets.crl",
            None,
            &[]
        )
        .0,
        404
    );
    let (code, metrics) = curl(&s, &srv, None, "GET", "/metrics", None, &[]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("meterpki_certificates_issued_total 3"),
        "{metrics}"
    );

    // A certificate from another CA never completes the handshake: no HTTP answer at all.
    let (code, _) = curl(
        &s,
        &srv,
        Some("other:intruder"),
        "POST",
        "/v1/batches",
        Some(&batch),
        &[],
    );
    assert_eq!(code, 0, "the handshake must fail");

    // A factory outside its range: 403 and nothing issued; in a mixed batch the rest is issued.
    let outside = json!({"request_id": "o1", "items": items(&s, 1, &["00-DC-00-00-00-00-00-01"])})
        .to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&outside),
        &[],
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(device_certs(&s, &srv, "00-DC-00-00-00-00-00-01"), 0);
    let mixed_items = items(
        &s,
        2,
        &["00-DB-12-00-00-00-00-01", "00-DC-00-00-00-00-00-02"],
    );
    let atomic = json!({"request_id": "m0", "atomic": true, "items": mixed_items}).to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&atomic),
        &[],
    );
    let r: Value = serde_json::from_str(&body).unwrap();
    assert!(code == 200 || code == 403, "{code} {body}");
    if code == 200 {
        assert!(
            r["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["status"] == "rejected"),
            "{body}"
        );
    }
    assert_eq!(
        device_certs(&s, &srv, "00-DB-12-00-00-00-00-01"),
        0,
        "atomic: nothing issued"
    );
    let mixed = json!({"request_id": "m1", "items": mixed_items}).to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&mixed),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["results"][0]["status"], "issued");
    assert_eq!(r["results"][1]["error"]["code"], "device-range");
    assert_eq!(device_certs(&s, &srv, "00-DB-12-00-00-00-00-01"), 1);
    assert_eq!(device_certs(&s, &srv, "00-DC-00-00-00-00-00-02"), 0);

    // A factory asking for a supplier profile; a supplier posting a batch.
    let mut sup = items(&s, 1, &["00-DB-12-00-00-00-00-09"]);
    sup[0]["profile"] = json!("supplier-signing");
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&json!({"request_id": "s1", "items": sup}).to_string()),
        &[],
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        "/v1/batches",
        Some(&batch),
        &[],
    );
    assert_eq!(code, 403, "{body}");

    // Malformed JSON: 400 with the position. Over the body limit: 413.
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some("{\"request_id\": \"x\", \"items\": [}"),
        &[],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("line 1 column"), "{body}");
    let big = format!(
        "{{\"request_id\": \"big\", \"items\": [\"{}\"]}}",
        "a".repeat(17 * 1024 * 1024)
    );
    // Over HTTP/1.1: with HTTP/2 the server answers 413 and resets the stream while curl is still
    // uploading, and curl reports the reset rather than the status.
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&big),
        &["--http1.1"],
    );
    assert_eq!(code, 413, "{body}");
    // Nothing of the refused body was kept: no batch under its request_id.
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "GET",
        "/v1/batches/big",
        None,
        &[],
    );
    assert_eq!(code, 404, "{body}");

    // Revocation: a supplier may not revoke a meter certificate (to it, it does not exist:
    // 404, as for a lookup); an operator may.
    let serial = res["results"][0]["serial"].as_str().unwrap();
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some("{\"reason\": \"keyCompromise\"}"),
        &[],
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some("{\"reason\": \"keyCompromise\"}"),
        &[],
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        &format!("/v1/certificates/{serial}"),
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "active"
    );
    let (code, body) = curl(
        &s,
        &srv,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some("{\"reason\": \"stolen\"}"),
        &[],
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some("{\"reason\": \"keyCompromise\"}"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "revoked"
    );
    let (_, body) = curl(
        &s,
        &srv,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some("{\"reason\": \"superseded\"}"),
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "already-revoked"
    );
    // A supplier sees nothing of meters: the certificate does not exist for it.
    assert_eq!(
        curl(
            &s,
            &srv,
            Some("energy-a"),
            "GET",
            &format!("/v1/certificates/{serial}"),
            None,
            &[]
        )
        .0,
        404
    );

    // Suppliers enrol their own keys, never another supplier's.
    let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), "sup-a", "prime256v1");
    let enrol = json!({"profile": "supplier-signing", "name": "Energy A", "csr": std::fs::read_to_string(&csr).unwrap()}).to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        "/v1/suppliers/90-B3-D5-1F-30-00-00-0B/keys",
        Some(&enrol),
        &[],
    );
    assert_eq!(code, 403, "supplier A enrolling for supplier B: {body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        "/v1/suppliers/90-B3-D5-1F-30-00-00-0B/certificates",
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["certificates"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing enrolled for B"
    );
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        "/v1/suppliers/90-B3-D5-1F-30-00-00-0A/keys",
        Some(&enrol),
        &[],
    );
    assert_eq!(code, 201, "{body}");
    let sup_serial = serde_json::from_str::<Value>(&body).unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        "/v1/suppliers/90b3d51f3000000a/keys",
        Some(&enrol),
        &[],
    );
    assert_eq!(code, 200, "the same key again: {body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["existing"],
        true
    );
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "GET",
        "/v1/suppliers/90-B3-D5-1F-30-00-00-0A/certificates",
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["certificates"][0]["serial"],
        sup_serial.as_str()
    );
    assert_eq!(
        curl(
            &s,
            &srv,
            Some("energy-a"),
            "GET",
            "/v1/suppliers/90-B3-D5-1F-30-00-00-0B/certificates",
            None,
            &[]
        )
        .0,
        403
    );
    // A factory may not revoke a supplier's key; the supplier revokes its own.
    assert_eq!(
        curl(
            &s,
            &srv,
            Some("line-all"),
            "POST",
            &format!("/v1/certificates/{sup_serial}/revoke"),
            Some("{\"reason\": \"keyCompromise\"}"),
            &[]
        )
        .0,
        403
    );
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        &format!("/v1/certificates/{sup_serial}/revoke"),
        Some("{\"reason\": \"keyCompromise\"}"),
        &[],
    );
    assert_eq!(code, 200, "{body}");

    // SIGTERM: the server stops cleanly.
    assert_eq!(srv.stop(), 0);

    // A disabled account is refused: its certificate is revoked in the Access CA's CRL.
    s.run("h", &["account", "disable", "--name", "line-7"]).ok();
    let srv = Server::start(&s);
    let (code, _) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(
            &json!({"request_id": "d1", "items": items(&s, 1, &["00-DB-12-00-00-00-00-05"])})
                .to_string(),
        ),
        &[],
    );
    assert!(
        code == 0 || code == 403,
        "a disabled account is refused (handshake or 403), got {code}"
    );
    assert_eq!(device_certs(&s, &srv, "00-DB-12-00-00-00-00-05"), 0);
    assert_eq!(srv.stop(), 0);
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn the_api_limits_each_account_and_finishes_in_flight_batches_at_sigterm() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-all",
        &["--device-range", "00-00-00-00-00-00-00-00/0"],
    );
    // The largest batch the API takes, so that it is still in flight when the probe arrives.
    let big = json!({"request_id": "big-1", "items": items(&s, 10_000, &[])}).to_string();
    let small = json!({"request_id": "small-1", "items": items(&s, 1, &[])}).to_string();
    std::fs::write(s.path("big.json"), &big).unwrap();
    let srv = Server::start_with(&s, &["--per-account-limit", "1"]);
    let port = srv.port;
    let bg = |file: &str| {
        let body = s.path(&format!("{file}.json"));
        let args = curl_args(
            &s,
            port,
            Some("line-all"),
            "POST",
            "/v1/batches",
            Some(&body),
            &s.path(&format!("{file}.out")),
        );
        Command::new("curl")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = bg("big");
    // While the big batch is being issued, another request of the same account gets 429.
    let mut saw_429 = false;
    for _ in 0..1000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (code, body) = curl(
            &s,
            &srv,
            Some("line-all"),
            "POST",
            "/v1/batches",
            Some(&small),
            &[],
        );
        if code == 429 {
            assert!(body.contains("too-many-requests"), "{body}");
            saw_429 = true;
            break;
        }
        assert_eq!(code, 200, "{body}");
        if first.try_wait().unwrap().is_some() {
            break;
        }
    }
    assert!(
        saw_429,
        "a second request while the account's only slot is busy gets 429"
    );
    // SIGTERM while a batch is in flight: it finishes, is answered, and the server exits 0.
    let second_big = json!({"request_id": "big-2", "items": items(&s, 4000, &[])}).to_string();
    std::fs::write(s.path("big2.json"), &second_big).unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let inflight = bg("big2");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let code = srv.stop();
    assert_eq!(code, 0, "the server exits cleanly");
    let out = inflight.wait_with_output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    if status == "200" {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(s.path("big2.out")).unwrap()).unwrap();
        assert!(r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["status"] == "issued"));
    }
    // Whatever the client saw, nothing is half-stored: a retry answers every item, issued once.
    let srv = Server::start(&s);
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&second_big),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 4000);
    assert!(r["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["status"] == "issued"));
    let (_, metrics) = curl(&s, &srv, None, "GET", "/metrics", None, &[]);
    assert!(
        metrics.contains("meterpki_hsm_sessions_max 2")
            && metrics.contains("meterpki_hsm_sign_seconds_count"),
        "{metrics}"
    );
    assert_eq!(srv.stop(), 0);
}

/// After a takeover the old supplier's account is refused at once and the acquirer is served.
#[test]
fn after_a_takeover_the_old_supplier_is_refused_and_the_new_one_served() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation", "access"]);
    let (a, b) = ("90-B3-D5-1F-30-00-00-0A", "90-B3-D5-1F-30-00-00-0B");
    s.supplier("h", a, "Energy A");
    s.supplier("h", b, "Energy B");
    s.account("h", "supplier", "energy-a", &["--supplier", a]);
    s.account("h", "supplier", "energy-b", &["--supplier", b]);
    let enrol = |name: &str, profile: &str| {
        let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), name, "prime256v1");
        json!({"profile": profile, "csr": std::fs::read_to_string(&csr).unwrap()}).to_string()
    };
    let srv = Server::start(&s);
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        &format!("/v1/suppliers/{a}/keys"),
        Some(&enrol("a-sign", "supplier-signing")),
        &[],
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-b"),
        "POST",
        &format!("/v1/suppliers/{b}/keys"),
        Some(&enrol("b-sign", "supplier-signing")),
        &[],
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(srv.stop(), 0);
    s.run(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            a,
            "--to",
            b,
            "--updates-out",
            "updates",
        ],
    )
    .ok();
    let srv = Server::start(&s);
    for (method, path, body) in [
        ("GET", format!("/v1/suppliers/{a}/certificates"), None),
        (
            "POST",
            format!("/v1/suppliers/{a}/keys"),
            Some(enrol("a-ka", "supplier-key-agreement")),
        ),
    ] {
        let (code, resp) = curl(
            &s,
            &srv,
            Some("energy-a"),
            method,
            &path,
            body.as_deref(),
            &[],
        );
        assert_eq!(code, 403, "{method} {path}: {resp}");
        assert!(resp.contains("supplier-inactive"), "{resp}");
    }
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-b"),
        "POST",
        &format!("/v1/suppliers/{b}/keys"),
        Some(&enrol("b-ka", "supplier-key-agreement")),
        &[],
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = curl(
        &s,
        &srv,
        Some("energy-b"),
        "GET",
        &format!("/v1/suppliers/{b}/certificates"),
        None,
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["certificates"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(srv.stop(), 0);
    let shown = s
        .run("h", &["show", "--device-id", a, "--json"])
        .ok()
        .json();
    assert_eq!(
        shown[0]["revocation"]["reason"], "cessationOfOperation",
        "{shown}"
    );
}

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
    let shim = std::path::Path::new(EXE)
        .parent()
        .unwrap()
        .join("libmeterpki_pkcs11_faults.so");
    assert!(shim.exists(), "{} not built", shim.display());
    let toml_path = s.path("h/meterpki.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let real = meterpki_tests::softhsm_module();
    let mut toml = toml.replace(&real, &shim.display().to_string());
    toml = match toml.find("sign_timeout_ms") {
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
    let t = std::time::Instant::now();
    while ready(&srv) != 200 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "readyz stayed red"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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

/// The security matrix: every kind of caller against every `/v1` endpoint, with the status
/// each must get; every refusal changes nothing (checked at the end through the operator).
#[test]
fn security_matrix_every_caller_against_every_endpoint() {
    let s = setup();
    s.account(
        "h",
        "supplier",
        "energy-b",
        &["--supplier", "90-B3-D5-1F-30-00-00-0B"],
    );
    let (a, b) = ("90-B3-D5-1F-30-00-00-0A", "90-B3-D5-1F-30-00-00-0B");
    let srv = Server::start(&s);
    // What the matrix aims at: a meter certificate of line-7, a supplier certificate of A.
    let meter_dev = "00-DB-12-00-00-00-30-01";
    let body = json!({"request_id": "fixture", "items": items(&s, 1, &[meter_dev])}).to_string();
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
    let m = serde_json::from_str::<Value>(&resp).unwrap()["results"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), "sa", "prime256v1");
    let enrol =
        json!({"profile": "supplier-signing", "csr": std::fs::read_to_string(&csr).unwrap()})
            .to_string();
    let (code, resp) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        &format!("/v1/suppliers/{a}/keys"),
        Some(&enrol),
        &[],
    );
    assert_eq!(code, 201, "{resp}");
    let sa = serde_json::from_str::<Value>(&resp).unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let revoke = r#"{"reason": "keyCompromise"}"#.to_string();

    // Callers: no certificate, another CA's certificate, and the four accounts.
    let callers: [(&str, Option<&str>); 6] = [
        ("none", None),
        ("other-ca", Some("other:intruder")),
        ("factory", Some("line-7")),
        ("supplier-a", Some("energy-a")),
        ("supplier-b", Some("energy-b")),
        ("operator", Some("ops")),
    ];
    // One row per endpoint: method, path, body, then the status for each caller in order.
    // 0 = no TLS handshake (the certificate is not from our Access CA).
    let refused_device = |who: &str| match who {
        "none" => "00-DB-12-00-00-00-31-01",
        "other-ca" => "00-DB-12-00-00-00-31-02",
        "supplier-a" => "00-DB-12-00-00-00-31-04",
        "supplier-b" => "00-DB-12-00-00-00-31-05",
        _ => "00-DB-12-00-00-00-31-06",
    };
    type Row = (&'static str, String, Option<String>, [u16; 6]);
    let rows: Vec<Row> = vec![
        (
            "GET",
            "/v1/batches/fixture".into(),
            None,
            [401, 0, 200, 404, 404, 404],
        ),
        (
            "GET",
            format!("/v1/certificates/{m}"),
            None,
            [401, 0, 200, 404, 404, 200],
        ),
        (
            "GET",
            format!("/v1/certificates/{sa}"),
            None,
            [401, 0, 404, 200, 404, 200],
        ),
        (
            "GET",
            format!("/v1/devices/{meter_dev}/certificates"),
            None,
            [401, 0, 200, 403, 403, 200],
        ),
        (
            "GET",
            format!("/v1/suppliers/{a}/certificates"),
            None,
            [401, 0, 403, 200, 403, 200],
        ),
        (
            "POST",
            format!("/v1/certificates/{m}/revoke"),
            Some(revoke.clone()),
            [401, 0, 403, 404, 404, 0],
        ),
        (
            "POST",
            format!("/v1/certificates/{sa}/revoke"),
            Some(revoke.clone()),
            [401, 0, 403, 0, 404, 0],
        ),
        (
            "POST",
            format!("/v1/suppliers/{a}/keys"),
            Some(enrol.clone()),
            [401, 0, 403, 0, 403, 403],
        ),
        (
            "POST",
            format!("/v1/suppliers/{b}/keys"),
            Some(enrol.clone()),
            [401, 0, 403, 403, 0, 403],
        ),
    ];
    let mut tried = 0;
    for (method, path, body, expected) in &rows {
        for ((who, account), want) in callers.iter().zip(expected) {
            if *want == 0 && *who != "other-ca" {
                continue; // allowed and state-changing: not part of the refusal matrix
            }
            let (code, resp) = curl(&s, &srv, *account, method, path, body.as_deref(), &[]);
            assert_eq!(code, *want, "{who} {method} {path}: {resp}");
            if (400..500).contains(&code) {
                let v: Value = serde_json::from_str(&resp).unwrap_or_else(|_| {
                    panic!("{who} {method} {path}: not a problem document: {resp}")
                });
                assert!(
                    v["type"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("urn:meterpki:problem:"),
                    "{resp}"
                );
            }
            tried += 1;
        }
    }
    // Batches: only the factory issues, and only in its range.
    for (who, account) in &callers {
        if *who == "factory" {
            continue;
        }
        let dev = refused_device(who);
        let body =
            json!({"request_id": format!("m-{who}"), "items": items(&s, 1, &[dev])}).to_string();
        let (code, resp) = curl(&s, &srv, *account, "POST", "/v1/batches", Some(&body), &[]);
        let want = match *who {
            "none" => 401,
            "other-ca" => 0,
            _ => 403,
        };
        assert_eq!(code, want, "{who} POST /v1/batches: {resp}");
        tried += 1;
    }
    let out_of_range =
        json!({"request_id": "m-range", "items": items(&s, 1, &["00-DC-00-00-00-00-00-01"])})
            .to_string();
    let (code, resp) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&out_of_range),
        &[],
    );
    assert_eq!(code, 403, "{resp}");

    // Nothing changed: the targets are not revoked, the refused batches issued nothing, B has
    // no key, and the issuance counter counts only the fixture's two certificates.
    for serial in [&m, &sa] {
        let (code, resp) = curl(
            &s,
            &srv,
            Some("ops"),
            "GET",
            &format!("/v1/certificates/{serial}"),
            None,
            &[],
        );
        assert_eq!(code, 200);
        assert!(
            !resp.contains("\"revoked\""),
            "{serial} was revoked: {resp}"
        );
    }
    for who in ["none", "other-ca", "supplier-a", "supplier-b", "operator"] {
        let dev = refused_device(who);
        let (_, resp) = curl(
            &s,
            &srv,
            Some("ops"),
            "GET",
            &format!("/v1/devices/{dev}/certificates"),
            None,
            &[],
        );
        assert_eq!(
            serde_json::from_str::<Value>(&resp).unwrap()["certificates"],
            json!([]),
            "{who}"
        );
    }
    let (_, resp) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        &format!("/v1/suppliers/{b}/certificates"),
        None,
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&resp).unwrap()["certificates"],
        json!([])
    );
    let metrics = curl(&s, &srv, None, "GET", "/metrics", None, &[]).1;
    let issued = metrics
        .lines()
        .find(|l| l.starts_with("meterpki_certificates_issued_total"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(issued.ends_with(" 2"), "{issued}");
    eprintln!("security matrix: {tried} refused requests, nothing changed");
    // The allowed state changes work for those they belong to.
    let (code, resp) = curl(
        &s,
        &srv,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{m}/revoke"),
        Some(&revoke),
        &[],
    );
    assert_eq!(code, 200, "{resp}");
    let (code, resp) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        &format!("/v1/certificates/{sa}/revoke"),
        Some(&revoke),
        &[],
    );
    assert_eq!(code, 200, "{resp}");
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

/// Sustained mixed load for a bounded time (`METERPKI_LOAD_SECONDS`, default 8): batches, lookups,
/// revocations and CRL fetches from four clients at once. Every answer is a success or a 429;
/// latency percentiles and the server's RSS at the start and the end are printed (figures, not
/// assertions: the machine is shared).
#[test]
fn sustained_mixed_load_answers_only_successes_and_429() {
    let secs: u64 = std::env::var("METERPKI_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let s = setup();
    // Started as a child of a meterpki process that re-executed itself would be (`bench api`
    // starts its server so): the marker it inherits names its parent, not itself, so the
    // server still re-executes once for its own settings.
    let srv = Server::start_env(
        &s,
        &["--per-account-limit", "2"],
        &[("METERPKI_REEXEC", "1".to_string())],
    );
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Request bodies made before the clock starts.
    let bodies: Vec<String> = (0..200)
        .map(|i| {
            json!({"request_id": format!("load-{i}"), "items": items(&s, 20, &[])}).to_string()
        })
        .collect();
    let pid = srv.child.id();
    // The server runs with mimalloc returning freed memory at once (set by `serve` itself).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"MIMALLOC_PURGE_DELAY=0"),
        "serve runs without its allocator setting"
    );
    let rss_start = rss(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (tx, rx) = std::sync::mpsc::channel::<(String, u16, std::time::Duration)>();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let tx = tx.clone();
            let (s, srv, bodies) = (&s, &srv, &bodies);
            scope.spawn(move || {
                // curl() shares its body files between calls: each client has files of its own.
                let curl = |s: &Scratch,
                            srv: &Server,
                            account: Option<&str>,
                            method: &str,
                            path: &str,
                            body: Option<&str>,
                            _extra: &[&str]|
                 -> (u16, String) {
                    let req = s.path(&format!("load-{client}.req"));
                    let out = s.path(&format!("load-{client}.out"));
                    if let Some(b) = body {
                        std::fs::write(&req, b).unwrap();
                    }
                    let _ = std::fs::remove_file(&out);
                    let args = curl_args(
                        s,
                        srv.port,
                        account,
                        method,
                        path,
                        body.map(|_| req.as_path()),
                        &out,
                    );
                    let o = Command::new("curl").args(&args).output().unwrap();
                    let code = String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    (code, std::fs::read_to_string(&out).unwrap_or_default())
                };
                let mut i = client;
                let mut serials: Vec<String> = Vec::new();
                while std::time::Instant::now() < deadline {
                    let t = std::time::Instant::now();
                    let (kind, code, resp) = match i % 4 {
                        0 => {
                            let b = &bodies[(i / 4) % bodies.len()];
                            let (c, r) = curl(
                                s,
                                srv,
                                Some("line-all"),
                                "POST",
                                "/v1/batches",
                                Some(b),
                                &[],
                            );
                            ("batch", c, r)
                        }
                        1 => match serials.last() {
                            Some(serial) => {
                                let (c, r) = curl(
                                    s,
                                    srv,
                                    Some("ops"),
                                    "GET",
                                    &format!("/v1/certificates/{serial}"),
                                    None,
                                    &[],
                                );
                                ("lookup", c, r)
                            }
                            None => {
                                let (c, r) = curl(s, srv, None, "GET", "/healthz", None, &[]);
                                ("health", c, r)
                            }
                        },
                        2 => match serials.pop() {
                            Some(serial) => {
                                let (c, r) = curl(
                                    s,
                                    srv,
                                    Some("ops"),
                                    "POST",
                                    &format!("/v1/certificates/{serial}/revoke"),
                                    Some(r#"{"reason": "superseded"}"#),
                                    &[],
                                );
                                ("revoke", c, r)
                            }
                            None => {
                                let (c, r) = curl(s, srv, None, "GET", "/readyz", None, &[]);
                                ("ready", c, r)
                            }
                        },
                        _ => {
                            let (c, r) = curl(
                                s,
                                srv,
                                None,
                                "GET",
                                &format!("/crl/device/{}.crl", i % 16),
                                None,
                                &[],
                            );
                            ("crl", c, r)
                        }
                    };
                    if kind == "batch" && code == 200 {
                        if let Ok(v) = serde_json::from_str::<Value>(&resp) {
                            for r in v["results"].as_array().into_iter().flatten().take(2) {
                                if let Some(x) = r["serial"].as_str() {
                                    serials.push(x.to_string());
                                }
                            }
                        }
                    }
                    let ok = matches!(code, 200 | 201 | 429) || (kind == "crl" && code == 404);
                    assert!(ok, "{kind}: {code} {resp}");
                    let _ = tx.send((kind.to_string(), code, t.elapsed()));
                    i += 1;
                }
            });
        }
    });
    drop(tx);
    let rss_end = rss(pid);
    let mut by_kind: std::collections::BTreeMap<String, Vec<std::time::Duration>> =
        Default::default();
    let mut throttled = 0;
    for (kind, code, took) in rx {
        throttled += (code == 429) as usize;
        by_kind.entry(kind).or_default().push(took);
    }
    let total: usize = by_kind.values().map(Vec::len).sum();
    assert!(total > 0);
    for (kind, mut v) in by_kind {
        v.sort();
        let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_millis();
        eprintln!(
            "load {kind:<7} {:>5} requests  p50 {:>4} ms  p99 {:>4} ms",
            v.len(),
            pct(0.5),
            pct(0.99)
        );
    }
    eprintln!(
        "load: {total} requests in {secs} s, {throttled} answered 429; server RSS {} MB -> {} MB",
        rss_start / 1024,
        rss_end / 1024
    );
    // A memory bound, not a timing: a leak per request would pass it within seconds.
    assert!(
        rss_end < rss_start + 128 * 1024,
        "server RSS grew from {rss_start} kB to {rss_end} kB under load"
    );
    assert_eq!(srv.stop(), 0);
}

/// PINs and share contents never appear in any output (every command's `--help`, normal and
/// `-vv` runs, errors, the server's log, the audit log) nor in the server's arguments; files
/// holding secrets are 0600; the server never opens the root token (the PKCS#11 module we load in
/// place of SoftHSM logs every session's token).
#[test]
fn secrets_never_leak_and_the_server_never_opens_the_root_token() {
    let s = setup();
    let shim = std::path::Path::new(EXE)
        .parent()
        .unwrap()
        .join("libmeterpki_pkcs11_faults.so");
    let real = meterpki_tests::softhsm_module();
    let toml_path = s.path("h/meterpki.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    std::fs::write(&toml_path, toml.replace(&real, &shim.display().to_string())).unwrap();
    let log = s.path("pkcs11.log");
    let env = [
        ("METERPKI_FAULTS_MODULE", real.clone()),
        ("METERPKI_FAULTS_LOG", log.display().to_string()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The secrets: the online token's user and SO PINs, every officer's share.
    let mut secrets: Vec<String> = ["h/secrets/online.pin", "h/secrets/online-so.pin"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(s.path(f))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    for i in 1..=3 {
        let text = std::fs::read_to_string(s.share("h", i)).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        let v: Value = serde_json::from_str(&body).unwrap();
        secrets.push(v["share"].as_str().unwrap().to_string());
    }
    assert!(secrets.iter().all(|x| x.len() >= 16), "{secrets:?}");

    let mut seen = String::new();
    let helps: &[&[&str]] = &[
        &[],
        &["init"],
        &["ceremony", "root"],
        &["ceremony", "issuing-ca"],
        &["issue"],
        &["revoke"],
        &["crl", "publish"],
        &["account", "add"],
        &["account", "list"],
        &["account", "disable"],
        &["serve"],
        &["show"],
        &["status"],
        &["audit", "verify"],
        &["audit", "list"],
        &["supplier", "register"],
        &["supplier", "enrol"],
        &["supplier", "rotate"],
        &["supplier", "revoke-key"],
        &["supplier", "takeover"],
        &["supplier", "exit"],
        &["supplier", "list"],
        &["meter", "assign"],
        &["meter", "change-supplier"],
        &["meter", "show"],
        &["update", "verify"],
        &["hsm", "bench"],
    ];
    for h in helps {
        let mut args: Vec<&str> = h.to_vec();
        args.push("--help");
        let r = s.run_env("h", &args, &env_ref);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        seen += &r.stdout;
        seen += &r.stderr;
    }
    // The benchmark binary's help texts too.
    for h in [
        &[][..],
        &["api"],
        &["issue"],
        &["takeover"],
        &["crl"],
        &["make-batch"],
    ] {
        let mut args: Vec<&str> = h.to_vec();
        args.push("--help");
        let r = s.bench_env("h", &args, &env_ref);
        assert_eq!(r.code, 0, "meterpki-bench {args:?}: {}", r.stderr);
        seen += &r.stdout;
        seen += &r.stderr;
    }
    // Ordinary work, verbose, and refusals (errors print their causes).
    let batch = s.path("b.ndjson").display().to_string();
    let r = s.bench_env(
        "h",
        &["make-batch", "--count", "3", "--out", &batch],
        &env_ref,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    seen += &r.stdout;
    seen += &r.stderr;
    for args in [
        vec!["-vv", "status", "--json"],
        vec!["-vv", "issue", "--batch", &batch, "--out", "b.out"],
        vec!["-vv", "crl", "publish"],
        vec!["-vv", "account", "list"],
        vec!["-vv", "audit", "verify"],
        vec![
            "-vv",
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--share",
            "h-shares/officer-1.share",
            "--share",
            "h-shares/officer-2.share",
        ],
        vec![
            "-vv",
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--share",
            "h-shares/officer-1.share",
        ],
        vec![
            "-vv",
            "revoke",
            "--serial",
            "00ff",
            "--reason",
            "keyCompromise",
        ],
    ] {
        let r = s.run_env("h", &args, &env_ref);
        seen += &r.stdout;
        seen += &r.stderr;
    }
    // A wrong PIN from the environment: refused, and not echoed.
    let r = s.run_env(
        "h",
        &["-vv", "status"],
        &[
            ("METERPKI_HSM_PIN", "wrong-pin-0000000000"),
            ("METERPKI_FAULTS_MODULE", &real),
        ],
    );
    seen += &r.stdout;
    seen += &r.stderr;
    // The server, verbose, with a request served; its log, arguments and environment.
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new(EXE)
        .args([
            "--home",
            &s.path("h").display().to_string(),
            "-vv",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("SOFTHSM2_CONF")
        .env_remove("METERPKI_REEXEC")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(s.path("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let srv = Server { child, port };
    let (code, _) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        "/v1/devices/00-DB-12-00-00-00-00-01/certificates",
        None,
        &[],
    );
    assert_eq!(code, 200);
    let pid = srv.child.id();
    seen += &std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    seen += &String::from_utf8_lossy(
        &std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default(),
    );
    assert_eq!(srv.stop(), 0);
    seen += &std::fs::read_to_string(s.path("serve.log")).unwrap();
    seen += &std::fs::read_to_string(s.path("h/audit/audit.log")).unwrap();
    assert!(
        seen.len() > 10_000,
        "too little output captured to mean anything"
    );
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            !seen.contains(secret.as_str()),
            "secret {i} appears in the output"
        );
    }
    // The server opened the online token, never the root token.
    let opened = std::fs::read_to_string(&log).unwrap();
    assert!(opened.contains("open meterpki-online"), "{opened}");
    assert!(
        !opened.contains("open meterpki-root"),
        "the server opened the root token: {opened}"
    );
    // Files holding secrets are 0600.
    use std::os::unix::fs::PermissionsExt;
    let mut secret_files = vec![
        s.path("h/secrets/online.pin"),
        s.path("h/secrets/online-so.pin"),
    ];
    secret_files.extend((1..=3).map(|i| s.share("h", i)));
    for e in std::fs::read_dir(s.path("creds")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "key") {
            secret_files.push(p);
        }
    }
    for f in &secret_files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
    assert!(secret_files.len() >= 8);
}

/// Slowloris: connections that never finish their TLS handshake, and one that sends half a
/// request after it, do not stop others from being served, and the server closes them itself.
#[test]
fn slow_and_silent_connections_are_cut_off_and_others_served() {
    use std::io::{Read, Write};
    let s = setup();
    let srv = Server::start(&s);
    let mut silent: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
        .collect();
    // A client that starts a handshake and stops: half a ClientHello.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    silent.push(half);
    std::thread::sleep(std::time::Duration::from_millis(500));
    for path in ["/healthz", "/readyz"] {
        let (code, body) = curl(&s, &srv, None, "GET", path, None, &[]);
        assert_eq!(code, 200, "{path} while 51 connections idle: {body}");
    }
    let (code, _) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        "/v1/devices/00-DB-12-00-00-00-00-01/certificates",
        None,
        &["--http1.1"],
    );
    assert_eq!(code, 200);
    // Each is closed by the server (the handshake timeout is 10 s).
    let start = std::time::Instant::now();
    for (i, c) in silent.iter_mut().enumerate() {
        c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        let closed = loop {
            match c.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // an alert, then the close
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(_) => break true, // reset by the server
            }
        };
        assert!(closed, "connection {i} left open");
    }
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(25),
        "closed after {took:?}"
    );
    eprintln!("51 stalled connections closed by the server within {took:?}");
    assert_eq!(srv.stop(), 0);
}

/// `bench api` end to end on a small request file (`--requests`): it starts the server on the
/// home, every request is issued over mTLS and stored (one checked with `show` and openssl), the
/// figures are in its JSON with the verification rate and the ceiling it derives; bad input is
/// refused before anything starts.
#[test]
fn bench_api_issues_a_request_file_over_mtls_and_reports_its_figures() {
    let s = setup();
    let req = s.path("bench-req.ndjson").display().to_string();
    s.bench("h", &["make-batch", "--count", "30", "--out", &req])
        .ok();
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&req)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let device = first["device_id"].as_str().unwrap().to_string();
    let v = s
        .bench(
            "h",
            &[
                "--json",
                "api",
                "--requests",
                &req,
                "--batch",
                "8",
                "--raw-seconds",
                "0.3",
                "--meterpki",
                EXE,
            ],
        )
        .ok()
        .json();
    assert_eq!(v["certificates"], 30, "{v}");
    assert_eq!(v["rejected"], 0, "{v}");
    for f in [
        "certificates_per_second",
        "raw_signing_per_second",
        "verify_per_second",
        "server_peak_rss_mb",
    ] {
        assert!(v[f].as_f64().unwrap() > 0.0, "{f}: {v}");
    }
    let (raw, verify, ceiling) = (
        v["raw_signing_per_second"].as_f64().unwrap(),
        v["verify_per_second"].as_f64().unwrap(),
        v["ratio_ceiling"].as_f64().unwrap(),
    );
    assert!(
        (ceiling - 1.0 / (1.0 + 2.0 * raw / verify)).abs() < 1e-9,
        "{v}"
    );
    // The first request's certificate is in the home's store and chains to the root.
    let shown = s
        .run("h", &["show", "--device-id", &device, "--json"])
        .ok()
        .json();
    let shown = if shown.is_array() {
        shown[0].clone()
    } else {
        shown
    };
    assert_eq!(shown["profile"], "meter-signing", "{shown}");
    std::fs::write(
        s.path("bench-cert.pem"),
        shown["certificate"].as_str().unwrap(),
    )
    .unwrap();
    let chain = s.path("bench-chain.pem");
    let mut pem = std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap();
    pem += &std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap();
    std::fs::write(&chain, pem).unwrap();
    let r = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            &chain.display().to_string(),
            &s.path("bench-cert.pem").display().to_string(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Refusals: a missing file, an empty one, a nonsense measurement time, both inputs at once.
    s.bench("h", &["api", "--requests", "nope.ndjson"])
        .fails(2, "--requests");
    std::fs::write(s.path("empty.ndjson"), "\n").unwrap();
    s.bench(
        "h",
        &[
            "api",
            "--requests",
            &s.path("empty.ndjson").display().to_string(),
        ],
    )
    .fails(2, "no request lines");
    s.bench("h", &["api", "--count", "5", "--raw-seconds", "0"])
        .fails(2, "--raw-seconds");
    s.bench("h", &["api", "--count", "5", "--requests", &req])
        .fails(2, "cannot be used with");
}
