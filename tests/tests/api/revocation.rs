//! Trust withdrawn everywhere and at once, as a strict relying party sees it: `openssl verify
//! -crl_check_all -crl_download` fetching every CRL (the root's ARL included) over plain HTTP
//! from the URLs in the certificates, for a meter, a supplier certificate, the trust-update
//! signer and an API client; a revocation through the API or the CLI seen on the very next
//! fetch; an issuing CA revoked in the ARL taking every certificate below it with it.

use std::path::{Path, PathBuf};

use meterpki_tests::{tool, Run, Scratch};

use crate::support::{curl, Server, EXE};

const METER_POLICY: &str = "1.3.6.1.4.1.32473.1.1";

/// `openssl verify -crl_check_all -crl_download` of `cert` below the `issuing` CA.
fn verify(s: &Scratch, issuing: &str, cert: &Path, extra: &[&str]) -> Run {
    let root = s.path("h/ca/root.pem").display().to_string();
    let untrusted = s.path(&format!("h/ca/{issuing}.pem")).display().to_string();
    let cert = cert.display().to_string();
    let mut args = vec![
        "verify",
        "-crl_check_all",
        "-crl_download",
        "-CAfile",
        &root,
        "-untrusted",
        &untrusted,
    ];
    args.extend_from_slice(extra);
    args.push(&cert);
    tool("openssl", &args, &[])
}

fn serial_of(cert: &Path) -> String {
    let out = tool(
        "openssl",
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            &cert.display().to_string(),
        ],
        &[],
    )
    .ok()
    .stdout;
    out.trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

struct Fixture {
    s: Scratch,
    port: u16,
    meter: PathBuf,
    supplier: PathBuf,
    signer: PathBuf,
    client: PathBuf,
}

/// A home whose CRL URLs reach a free port, a meter and a supplier certificate, the
/// trust-update signer (made by a first assignment) and two API accounts.
fn fixture() -> Fixture {
    let s = Scratch::new(EXE);
    let port = s.ceremonies_with_crl_port("h", 3, 2, &["device", "organisation", "access"]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "meter.pem")
        .ok();
    let sup = "90-B3-D5-1F-30-00-00-0A";
    s.supplier("h", sup, "Energy A");
    s.issue_one("h", sup, Some("Energy A"), "supplier.pem").ok();
    let (meter, supplier) = (s.path("meter.pem"), s.path("supplier.pem"));
    s.run(
        "h",
        &[
            "meter",
            "assign",
            "--device-id",
            "00-DB-12-34-56-78-90-01",
            "--supplier",
            sup,
            "--updates-out",
            "updates",
        ],
    )
    .ok();
    s.account("h", "operator", "ops", &[]);
    s.account(
        "h",
        "factory",
        "line-1",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    s.account(
        "h",
        "factory",
        "line-2",
        &["--device-range", "00-DB-13-00-00-00-00-00/24"],
    );
    Fixture {
        port,
        meter,
        supplier,
        signer: s.path("h/ca/trust-update-signer.pem"),
        client: s.path("creds/line-1.pem"),
        s,
    }
}

/// Every kind of end entity passes a relying party that checks every CRL of the path (fetched
/// from the certificates' URLs over plain HTTP) and enforces the meter policy; each revocation
/// — through the API, through the CLI while the server runs, an account disabled — fails the
/// very next check; `ceremony revoke-ca` fails everything below that CA.
#[test]
fn every_chain_passes_crl_check_all_and_a_revocation_fails_the_next_check() {
    let f = fixture();
    let s = &f.s;
    let crl_listen = format!("127.0.0.1:{}", f.port);
    let srv = Server::start_with(s, &["--crl-listen", &crl_listen]);
    assert_eq!(srv.crl_port, Some(f.port));
    for (issuing, cert) in [
        ("device", &f.meter),
        ("organisation", &f.supplier),
        ("organisation", &f.signer),
        ("access", &f.client),
    ] {
        let r = verify(s, issuing, cert, &[]).ok();
        assert!(r.stdout.contains(": OK"), "{}", r.stdout);
    }
    // A relying party that enforces the meter policy accepts the meter's chain.
    verify(
        s,
        "device",
        &f.meter,
        &["-policy_check", "-explicit_policy", "-policy", METER_POLICY],
    )
    .ok();

    // Through the API: the meter's key is compromised.
    let (code, body) = curl(
        s,
        &srv,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{}/revoke", serial_of(&f.meter)),
        Some(r#"{"reason": "keyCompromise"}"#),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    verify(s, "device", &f.meter, &[]).fails(2, "certificate revoked");

    // Through the CLI while the server holds the store: the supplier's certificate.
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            &serial_of(&f.supplier),
            "--reason",
            "affiliationChanged",
        ],
    )
    .ok();
    verify(s, "organisation", &f.supplier, &[]).fails(2, "certificate revoked");
    verify(s, "organisation", &f.signer, &[]).ok();

    // An account disabled from the CLI is refused on its next request, the server still
    // running, and its certificate fails a relying party's check too.
    let batch = r#"{"request_id": "r1", "items": []}"#;
    let (code, _) = curl(
        s,
        &srv,
        Some("line-1"),
        "POST",
        "/v1/batches",
        Some(batch),
        &[],
    );
    assert_ne!(code, 401, "the factory is served before it is disabled");
    s.run("h", &["account", "disable", "--name", "line-1"]).ok();
    let (code, body) = curl(
        s,
        &srv,
        Some("line-1"),
        "POST",
        "/v1/batches",
        Some(batch),
        &[],
    );
    assert!(code == 401 || code == 403, "{code} {body}");
    assert!(body.contains("account-disabled"), "{body}");
    verify(s, "access", &f.client, &[]).fails(2, "certificate revoked");

    // A client certificate revoked through the API: refused on its next request.
    let (code, _) = curl(
        s,
        &srv,
        Some("line-2"),
        "POST",
        "/v1/batches",
        Some(batch),
        &[],
    );
    assert_ne!(code, 401);
    let (code, body) = curl(
        s,
        &srv,
        Some("ops"),
        "POST",
        &format!(
            "/v1/certificates/{}/revoke",
            serial_of(&s.path("creds/line-2.pem"))
        ),
        Some(r#"{"reason": "keyCompromise"}"#),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        s,
        &srv,
        Some("line-2"),
        "POST",
        "/v1/batches",
        Some(batch),
        &[],
    );
    assert!(code == 401 || code == 403, "{code} {body}");
    verify(s, "access", &s.path("creds/line-2.pem"), &[]).fails(2, "certificate revoked");
    assert_eq!(srv.stop(), 0);

    // The Organisation CA is compromised: the ARL lists it, and every certificate below it
    // fails, the trust-update signer included; the CA signs nothing more.
    let mut args = vec![
        "ceremony".to_string(),
        "revoke-ca".into(),
        "--kind".into(),
        "organisation".into(),
        "--reason".into(),
        "cACompromise".into(),
    ];
    for i in 1..=2 {
        args.push("--share".into());
        args.push(s.share("h", i).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.run("h", &args).ok();
    // The ARL that lists it: signed by the root, clean by pkilint's ARL rules.
    let text = s.arl_linted("h");
    assert!(text.contains("CA Compromise"), "{text}");
    let srv = Server::start_with(s, &["--crl-listen", &crl_listen]);
    let r = verify(s, "organisation", &f.signer, &[]).fails(2, "certificate revoked");
    assert!(r.stderr.contains("at 1 depth"), "{}", r.stderr);
    // Other CAs' certificates are untouched.
    drop(srv);
    s.issue_one("h", "00-DB-12-34-56-78-90-02", None, "meter2.pem")
        .ok();
    s.issue_one(
        "h",
        "90-B3-D5-1F-30-00-00-0A",
        Some("Energy A"),
        "supplier2.pem",
    )
    .fails(2, "issuer-revoked");
    let st = s.run("h", &["status", "--json"]).ok().json();
    let org = st["cas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "organisation")
        .unwrap()
        .clone();
    assert_eq!(org["revoked"]["reason"], "cACompromise", "{org}");
    let _srv = Server::start_with(s, &["--crl-listen", &crl_listen]);
    verify(s, "device", &s.path("meter2.pem"), &[]).ok();
}

/// The plain-HTTP listener serves CRLs (with the caching headers relying parties and caches
/// need) and CA certificates, and nothing else.
#[test]
fn the_crl_listener_serves_crls_with_caching_headers_and_nothing_else() {
    let s = Scratch::new(EXE);
    let port = s.ceremonies_with_crl_port("h", 3, 2, &["device", "access"]);
    let _srv = Server::start_with(&s, &["--crl-listen", &format!("127.0.0.1:{port}")]);
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str, extra: &[&str]| {
        let url = format!("{base}{path}");
        let mut args = vec!["-sS", "-D", "-", "-o", "/dev/null", &url];
        args.extend_from_slice(extra);
        tool("curl", &args, &[]).ok().stdout
    };
    let headers = get("/crl/device/full.crl", &[]);
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(
        headers.contains("content-type: application/pkix-crl"),
        "{headers}"
    );
    assert!(
        headers.contains("cache-control: public, max-age="),
        "{headers}"
    );
    assert!(headers.contains("expires: "), "{headers}");
    assert!(headers.contains("last-modified: "), "{headers}");
    let etag = headers
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an ETag")
        .trim()
        .to_string();
    let again = get(
        "/crl/device/full.crl",
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    assert!(get("/crl/root/arl.crl", &[]).starts_with("HTTP/1.1 200"));
    assert!(get("/ca/root.pem", &[]).starts_with("HTTP/1.1 200"));
    // A damaged CRL file is never served as a CRL (503), and a starting server replaces it;
    // a stray file that is not a CRL does not stop it from starting.
    let full = s.path("h/crl/device/full.crl");
    let whole = std::fs::read(&full).unwrap();
    std::fs::write(&full, &whole[..whole.len() / 2]).unwrap();
    let h = get("/crl/device/full.crl", &[]);
    assert!(h.starts_with("HTTP/1.1 503"), "{h}");
    drop(_srv);
    std::fs::write(s.path("h/crl/access/stray.crl"), b"not a CRL").unwrap();
    std::fs::write(s.path("h/crl/access/0.crl"), b"").unwrap();
    let _srv = Server::start_with(&s, &["--crl-listen", &format!("127.0.0.1:{port}")]);
    for path in ["/crl/device/full.crl", "/crl/access/0.crl"] {
        let h = get(path, &[]);
        assert!(h.starts_with("HTTP/1.1 200"), "{path}: {h}");
    }
    // Nothing but CRLs and CA certificates over plain HTTP.
    for path in [
        "/v1/batches",
        "/metrics",
        "/readyz",
        "/healthz",
        "/crl/../meterpki.toml",
    ] {
        let h = get(path, &[]);
        assert!(h.starts_with("HTTP/1.1 404"), "{path}: {h}");
    }
}

/// Refused requests are audit events, at most one per caller a minute (the next says how many
/// were left out): a flood of refusals cannot flood the log.
#[test]
fn refused_requests_are_audit_events_without_flooding_the_log() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-1",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    let srv = Server::start(&s);
    let mut refused_with = 0;
    for _ in 0..5 {
        let (code, _) = curl(&s, &srv, None, "POST", "/v1/batches", Some("{}"), &[]);
        assert_eq!(code, 401);
        let (code, _) = curl(
            &s,
            &srv,
            Some("line-1"),
            "GET",
            "/v1/suppliers/90-B3-D5-1F-30-00-00-0A/certificates",
            None,
            &[],
        );
        assert!(
            (400..500).contains(&code),
            "a factory may not list suppliers: {code}"
        );
        refused_with = code;
    }
    let refused = |who: &str| {
        let list = s.run("h", &["audit", "list", "--json"]).ok().json();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == "api.refused" && r["actor"] == who)
            .cloned()
            .collect::<Vec<_>>()
    };
    // The records are written beside the answers; give them a moment.
    for _ in 0..50 {
        if !refused("line-1").is_empty() && !refused("no client certificate").is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(srv.stop(), 0);
    let factory = refused("line-1");
    assert_eq!(factory.len(), 1, "{factory:?}");
    assert_eq!(factory[0]["details"]["status"], refused_with);
    assert!(factory[0]["details"]["request"]
        .as_str()
        .unwrap()
        .contains("/v1/suppliers/"));
    assert_eq!(refused("no client certificate").len(), 1);
    s.run("h", &["audit", "verify"]).ok();
}

/// Revocation input over the API: an invalidity date before 1970, a CA's reason for an end
/// entity, and the server's own TLS certificate are each refused, naming the field, and
/// nothing is revoked.
#[test]
fn revocation_input_is_refused_naming_the_field() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account("h", "operator", "ops", &[]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "m.pem")
        .ok();
    let srv = Server::start(&s);
    let meter = serial_of(&s.path("m.pem"));
    let server_cert = serial_of(&s.path("h/ca/api-server.pem"));
    for (serial, body, kind) in [
        (
            &meter,
            r#"{"reason": "keyCompromise", "invalidity_date": -86400}"#,
            "invalidity-date",
        ),
        (
            &meter,
            r#"{"reason": "keyCompromise", "invalidity_date": 1.5}"#,
            "",
        ),
        (&meter, r#"{"reason": "cACompromise"}"#, "reason"),
        (&meter, r#"{"reason": "aACompromise"}"#, "reason"),
        (
            &server_cert,
            r#"{"reason": "keyCompromise"}"#,
            "service-certificate",
        ),
    ] {
        let (code, answer) = curl(
            &s,
            &srv,
            Some("ops"),
            "POST",
            &format!("/v1/certificates/{serial}/revoke"),
            Some(body),
            &[],
        );
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(kind), "{body}: {answer}");
    }
    for serial in [&meter, &server_cert] {
        let (_, answer) = curl(
            &s,
            &srv,
            Some("ops"),
            "GET",
            &format!("/v1/certificates/{serial}"),
            None,
            &[],
        );
        assert!(
            !answer.contains("\"revoked\""),
            "nothing was revoked: {answer}"
        );
    }
}
