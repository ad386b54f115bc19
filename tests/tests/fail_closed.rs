//! Every state change commits with its audit record, and only with it: when the audit log
//! cannot be written, the CLI exits 1 and the API answers 503, and nothing changed. And an API
//! batch's request ID is bound to one body: two bodies sent at once under one ID issue once.

use std::process::{Child, Command, Stdio};

use meterpki_tests::{openssl_csr, Scratch, Server};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

/// curl as account `line`: a process that writes the body to `out` and the status on stdout.
fn curl(s: &Scratch, port: u16, method: &str, path: &str, body: Option<&str>, out: &str) -> Child {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", &s.path(out).display().to_string()])
        .args(["-w", "%{http_code}", "-X", method])
        .args(["--cacert", &s.path("creds/ca.pem").display().to_string()])
        .args(["--cert", &s.path("creds/line.pem").display().to_string()])
        .args(["--key", &s.path("creds/line.key").display().to_string()])
        .args(["-H", "content-type: application/json"]);
    if let Some(b) = body {
        let f = s.path(&format!("{out}.request"));
        std::fs::write(&f, b).unwrap();
        c.args(["--data-binary", &format!("@{}", f.display())]);
    }
    c.arg(format!("https://127.0.0.1:{port}{path}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed")
}

/// Waits for a curl process: (HTTP status, body).
fn answer(s: &Scratch, child: Child, out: &str) -> (u16, String) {
    let o = child.wait_with_output().unwrap();
    let code = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        code,
        std::fs::read_to_string(s.path(out)).unwrap_or_default(),
    )
}

fn request(
    s: &Scratch,
    srv: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    answer(s, curl(s, srv.port, method, path, body, "resp"), "resp")
}

/// A batch body of `n` meter requests for devices `00-DB-00-00-00-00-<tag>-<i>`.
fn batch(s: &Scratch, request_id: &str, tag: u8, n: u8) -> String {
    // A key of its own for each meter: a key is certified for one subject only.
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let (_, csr) = openssl_csr(&s.path(""), &format!("m{tag}-{i}"), "prime256v1");
            let pem = std::fs::read_to_string(csr).unwrap();
            serde_json::json!({"profile": "meter-signing", "device_id": format!("00-DB-00-00-00-00-{tag:02X}-{i:02X}"), "csr": pem})
        })
        .collect();
    serde_json::json!({"request_id": request_id, "items": items}).to_string()
}

/// Certificates of a device (through the CLI, which reads the store).
fn certs_of(s: &Scratch, device: &str) -> usize {
    let r = s.run("h", &["show", "--device-id", device, "--json"]);
    if r.code != 0 {
        return 0;
    }
    r.json().as_array().map(Vec::len).unwrap_or(0)
}

fn setup() -> Scratch {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line",
        &["--device-range", "00-DB-00-00-00-00-00-00/48"],
    );
    s
}

/// Makes the audit log unwritable (a folder where the file was) and gives it back.
struct BrokenAudit<'a>(&'a Scratch);

impl<'a> BrokenAudit<'a> {
    fn new(s: &'a Scratch) -> BrokenAudit<'a> {
        let log = s.path("h/audit/audit.log");
        std::fs::rename(&log, s.path("audit.log.saved")).unwrap();
        std::fs::create_dir(&log).unwrap();
        BrokenAudit(s)
    }
}

impl Drop for BrokenAudit<'_> {
    fn drop(&mut self) {
        let log = self.0.path("h/audit/audit.log");
        let _ = std::fs::remove_dir(&log);
        std::fs::rename(self.0.path("audit.log.saved"), &log).unwrap();
    }
}

#[test]
fn a_change_whose_audit_record_cannot_be_written_fails_and_changes_nothing() {
    let s = setup();
    let (_, csr) = openssl_csr(&s.path(""), "meter", "prime256v1");
    let csr = csr.display().to_string();
    let issue = |device: &str| {
        s.run(
            "h",
            &[
                "issue",
                "--profile",
                "meter-signing",
                "--device-id",
                device,
                "--csr",
                &csr,
            ],
        )
    };
    issue("00-DB-00-00-00-00-00-01").ok();
    let serial = s
        .run(
            "h",
            &["show", "--device-id", "00-DB-00-00-00-00-00-01", "--json"],
        )
        .json()[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let accounts = s.run("h", &["account", "list", "--json"]).ok().stdout;
    let records = s.run("h", &["audit", "list", "--json"]).ok().json();
    {
        let _broken = BrokenAudit::new(&s);
        // Each state change the CLI offers refuses with exit 1, naming the audit log.
        issue("00-DB-00-00-00-00-00-02").fails(1, "audit record could not be written");
        s.run(
            "h",
            &["revoke", "--serial", &serial, "--reason", "keyCompromise"],
        )
        .fails(1, "audit record could not be written");
        s.run("h", &["account", "disable", "--name", "line"])
            .fails(1, "audit record could not be written");
        s.run(
            "h",
            &[
                "supplier",
                "register",
                "--id",
                "90-B3-D5-1F-30-00-00-0A",
                "--name",
                "A",
            ],
        )
        .fails(1, "audit record could not be written");
        s.run("h", &["crl", "publish"])
            .fails(1, "audit record could not be written");
    }
    // Nothing changed: no certificate, no revocation, the account enabled, no supplier, no CRL.
    assert_eq!(certs_of(&s, "00-DB-00-00-00-00-00-02"), 0);
    let shown = s
        .run("h", &["show", "--serial", &serial, "--json"])
        .ok()
        .json();
    assert_eq!(shown[0]["status"], "active", "{shown}");
    assert_eq!(
        s.run("h", &["account", "list", "--json"]).ok().stdout,
        accounts
    );
    assert_eq!(
        s.run("h", &["supplier", "list", "--json"]).ok().json(),
        serde_json::json!([])
    );
    let crls = std::fs::read_dir(s.path("h/crl/device"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(crls, 0, "no CRL file was published");
    assert_eq!(
        s.run("h", &["audit", "list", "--json"]).ok().json(),
        records
    );
    s.run("h", &["audit", "verify"]).ok();

    // The API: a batch refused with a 503 problem, nothing issued; the same batch goes through
    // once the log can be written again.
    let srv = Server::start(&s);
    let body = batch(&s, "r-audit", 0x10, 3);
    {
        let _broken = BrokenAudit::new(&s);
        let (code, resp) = request(&s, &srv, "POST", "/v1/batches", Some(&body));
        assert_eq!(code, 503, "{resp}");
        let problem: Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(
            problem["type"], "urn:meterpki:problem:audit-unavailable",
            "{resp}"
        );
        assert_eq!(problem["status"], 503);
    }
    let (code, resp) = request(&s, &srv, "GET", "/v1/batches/r-audit", None);
    assert_eq!(
        code, 404,
        "no answer was recorded for the refused batch: {resp}"
    );
    drop(srv);
    for i in 0..3 {
        assert_eq!(certs_of(&s, &format!("00-DB-00-00-00-00-10-{i:02X}")), 0);
    }
    let srv = Server::start(&s);
    let (code, resp) = request(&s, &srv, "POST", "/v1/batches", Some(&body));
    assert_eq!(code, 200, "the retry issues: {resp}");
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "issued"),
        "{v}"
    );
    drop(srv);
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn two_bodies_sent_at_once_under_one_request_id_issue_once() {
    let s = setup();
    let srv = Server::start(&s);
    for round in 0..4u8 {
        let rid = format!("r-race-{round}");
        let (a, b) = (
            batch(&s, &rid, 0x20 + round, 4),
            batch(&s, &rid, 0x40 + round, 4),
        );
        // Both in flight together.
        let ca = curl(&s, srv.port, "POST", "/v1/batches", Some(&a), "a.out");
        let cb = curl(&s, srv.port, "POST", "/v1/batches", Some(&b), "b.out");
        let (code_a, resp_a) = answer(&s, ca, "a.out");
        let (code_b, resp_b) = answer(&s, cb, "b.out");
        let mut codes = [code_a, code_b];
        codes.sort_unstable();
        assert_eq!(codes, [200, 409], "round {round}: {resp_a} / {resp_b}");
        let (lost, won, loser_tag, winner_tag) = if code_a == 409 {
            (resp_a, resp_b, 0x20 + round, 0x40 + round)
        } else {
            (resp_b, resp_a, 0x40 + round, 0x20 + round)
        };
        let problem: Value = serde_json::from_str(&lost).unwrap();
        assert_eq!(
            problem["type"], "urn:meterpki:problem:request-id-conflict",
            "{lost}"
        );
        let answer: Value = serde_json::from_str(&won).unwrap();
        assert_eq!(answer["results"].as_array().unwrap().len(), 4, "{won}");
        for i in 0..4 {
            let dev = |tag: u8| format!("00-DB-00-00-00-00-{tag:02X}-{i:02X}");
            assert_eq!(certs_of_api(&s, &srv, &dev(winner_tag)), 1);
            assert_eq!(
                certs_of_api(&s, &srv, &dev(loser_tag)),
                0,
                "the refused body issued nothing"
            );
        }
        // The winner's body again answers the same certificates; the loser's is refused again.
        let winner_body = if code_a == 409 { &b } else { &a };
        let (code, again) = request(&s, &srv, "POST", "/v1/batches", Some(winner_body));
        assert_eq!(code, 200);
        let again: Value = serde_json::from_str(&again).unwrap();
        assert_eq!(again["results"], answer["results"]);
    }
}

/// Certificates of a device, through the API (the server holds the store).
fn certs_of_api(s: &Scratch, srv: &Server, device: &str) -> usize {
    let (code, body) = request(
        s,
        srv,
        "GET",
        &format!("/v1/devices/{device}/certificates"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["certificates"].as_array().map(Vec::len).unwrap_or(0)
}
