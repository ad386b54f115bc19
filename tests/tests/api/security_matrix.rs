//! The security matrix: every kind of caller against every `/v1` endpoint.

use serde_json::{json, Value};

use crate::support::{curl, items, setup, Server};

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
