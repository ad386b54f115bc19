//! A supplier takeover seen through the API: the old supplier is refused at once, the acquirer
//! served.

use meterpki_tests::Scratch;
use serde_json::{json, Value};

use crate::support::{curl, Server, EXE};

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
