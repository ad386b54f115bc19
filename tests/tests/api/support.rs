//! What the API tests share: the `meterpki serve` process, curl requests with an account's
//! client certificate, request items, and the home most tests start from.

use std::process::Command;

use meterpki_tests::Scratch;
use serde_json::{json, Value};

pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

pub(crate) use meterpki_tests::Server;

/// One HTTPS request with curl: (HTTP status, body); status 0 when there was no HTTP answer.
/// curl's arguments for one request: the answer's body to `out`, the status on stdout; the
/// request body read from `body` (a file), the client certificate of `account` (`other:NAME`
/// for the other hierarchy's credentials).
pub(crate) fn curl_args(
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

pub(crate) fn curl(
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

pub(crate) fn items(s: &Scratch, n: usize, ids: &[&str]) -> Vec<Value> {
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

pub(crate) fn setup() -> Scratch {
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

pub(crate) fn device_certs(s: &Scratch, srv: &Server, id: &str) -> usize {
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
