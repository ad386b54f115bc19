//! The API over mutual TLS: factory batches (idempotent under their request_id, NDJSON when
//! asked), lookups, revocation and supplier enrolment, and every refusal of what an account
//! may not do, each checked to have issued nothing.

use meterpki_tests::tool;
use serde_json::{json, Value};

use crate::support::{curl, device_certs, items, setup, Server};

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
    // ... nor any serial: the answer does not tell which serials exist.
    assert_eq!(
        curl(
            &s,
            &srv,
            Some("line-all"),
            "POST",
            "/v1/certificates/7f00000000000000000001/revoke",
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

/// A batch's request ID is printable ASCII (no control or bidirectional-override characters,
/// which would reach the audit log), and a batch holds at least one item: each refused with
/// a 400 naming the field, nothing stored under the ID.
#[test]
fn request_ids_are_printable_and_batches_are_not_empty() {
    let s = setup();
    let srv = Server::start(&s);
    for (body, kind) in [
        (
            "{\"request_id\": \"r\u{202e}1\", \"items\": []}",
            "request-id",
        ),
        ("{\"request_id\": \"r 1\", \"items\": []}", "request-id"),
        ("{\"request_id\": \"r1\", \"items\": []}", "items"),
    ] {
        let (code, answer) = curl(
            &s,
            &srv,
            Some("line-7"),
            "POST",
            "/v1/batches",
            Some(body),
            &[],
        );
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            answer.contains(&format!("problem:{kind}")),
            "{body}: {answer}"
        );
    }
    let (code, _) = curl(&s, &srv, Some("line-7"), "GET", "/v1/batches/r1", None, &[]);
    assert_eq!(code, 404, "an empty batch is not stored");
}

/// A factory cannot take over a device that already holds an active certificate: `replace`
/// from a factory account is refused (`replace-forbidden`), the device keeps its certificate;
/// an operator replaces from the CA's shell.
#[test]
fn a_factory_may_not_replace_an_active_certificate() {
    let s = setup();
    let id = "00-DB-12-00-00-00-77-01";
    let first = items(&s, 2, &[id, id]);
    let srv = Server::start(&s);
    let batch = |rid: &str, item: &Value| json!({"request_id": rid, "items": [item]}).to_string();
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&batch("a", &first[0])),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let serial = issued["results"][0]["serial"].as_str().unwrap().to_string();
    let mut takeover = first[1].clone();
    takeover["replace"] = json!(true);
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&batch("b", &takeover)),
        &[],
    );
    assert!(code == 200 || code == 403, "{code} {body}");
    assert!(body.contains("replace-forbidden"), "{body}");
    let (_, answer) = curl(
        &s,
        &srv,
        Some("line-7"),
        "GET",
        &format!("/v1/certificates/{serial}"),
        None,
        &[],
    );
    assert!(
        answer.contains("\"active\""),
        "the device keeps its certificate: {answer}"
    );
    assert_eq!(srv.stop(), 0);
    // The operator may.
    let csr = s.path("takeover.csr");
    let der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        takeover["csr"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(&csr, der).unwrap();
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            id,
            "--csr",
            &csr.display().to_string(),
            "--replace",
        ],
    )
    .ok();
}

/// The bare-public-key path (no proof of possession) is opt-in per factory account: refused
/// (`bare-key-forbidden`) for an ordinary factory account, accepted for one an operator
/// allowed it.
#[test]
fn bare_public_keys_are_opt_in_per_account() {
    let s = setup();
    s.account(
        "h",
        "factory",
        "line-se",
        &[
            "--device-range",
            "00-DB-12-00-00-00-00-00/24",
            "--allow-bare-public-key",
        ],
    );
    // A key's SubjectPublicKeyInfo as openssl writes it, in base64: a bare public key.
    let spki_b64 = |key: &std::path::Path, name: &str| {
        let out = s.path(&format!("{name}.spki"));
        tool(
            "openssl",
            &[
                "pkey",
                "-in",
                &key.display().to_string(),
                "-pubout",
                "-outform",
                "DER",
                "-out",
                &out.display().to_string(),
            ],
            &[],
        )
        .ok();
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            std::fs::read(&out).unwrap(),
        )
    };
    let (key, _) = meterpki_tests::openssl_csr(&s.path(""), "bare", "prime256v1");
    let b64 = spki_b64(&key, "bare");
    let item = json!({"profile": "meter-signing", "device_id": "00-DB-12-00-00-00-88-01", "public_key": b64});
    let srv = Server::start(&s);
    let body = |rid: &str| json!({"request_id": rid, "items": [item]}).to_string();
    let (code, answer) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&body("x1")),
        &[],
    );
    assert!(answer.contains("bare-key-forbidden"), "{code} {answer}");
    let (code, answer) = curl(
        &s,
        &srv,
        Some("line-se"),
        "POST",
        "/v1/batches",
        Some(&body("x2")),
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("\"issued\""), "{answer}");

    // One key, one subject and usage: the same key for another meter, or for the same meter's
    // other usage, is refused naming the certificate that holds it; so is a supplier's key.
    let (sup_key, sup_csr) = meterpki_tests::openssl_csr(&s.path(""), "sup-reuse", "prime256v1");
    let enrol = json!({"profile": "supplier-signing", "name": "Energy A", "csr": std::fs::read_to_string(&sup_csr).unwrap()}).to_string();
    let (code, answer) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        "/v1/suppliers/90-B3-D5-1F-30-00-00-0A/keys",
        Some(&enrol),
        &[],
    );
    assert_eq!(code, 201, "{answer}");
    let supplier_b64 = spki_b64(&sup_key, "sup-reuse");
    for (n, (profile, device, key)) in [
        ("meter-signing", "00-DB-12-00-00-00-88-02", &b64),
        ("meter-key-agreement", "00-DB-12-00-00-00-88-01", &b64),
        ("meter-signing", "00-DB-12-00-00-00-88-03", &supplier_b64),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"request_id": format!("reuse-{n}"), "items": [{"profile": profile, "device_id": device, "public_key": key}]}).to_string();
        let (code, answer) = curl(
            &s,
            &srv,
            Some("line-se"),
            "POST",
            "/v1/batches",
            Some(&body),
            &[],
        );
        assert_eq!(code, 200, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["results"][0]["error"]["code"], "key-reused", "{answer}");
        let detail = v["results"][0]["error"]["detail"].as_str().unwrap();
        let holder = if n < 2 {
            "00-DB-12-00-00-00-88-01"
        } else {
            "90-B3-D5-1F-30-00-00-0A"
        };
        assert!(detail.contains(holder), "{detail}");
    }
    // The same supplier key enrolled again for the other usage: 409.
    let enrol = json!({"profile": "supplier-key-agreement", "name": "Energy A", "csr": std::fs::read_to_string(&sup_csr).unwrap()}).to_string();
    let (code, answer) = curl(
        &s,
        &srv,
        Some("energy-a"),
        "POST",
        "/v1/suppliers/90-B3-D5-1F-30-00-00-0A/keys",
        Some(&enrol),
        &[],
    );
    assert_eq!(code, 409, "{answer}");
    assert!(answer.contains("key-reused"), "{answer}");

    // Revoked for keyCompromise, the key is never certified again, not even for its meter.
    let (code, answer) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        "/v1/devices/00-DB-12-00-00-00-88-01/certificates",
        None,
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    let serial = serde_json::from_str::<Value>(&answer).unwrap()["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, answer) = curl(
        &s,
        &srv,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some(r#"{"reason": "keyCompromise"}"#),
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    let body = json!({"request_id": "after-compromise", "items": [item]}).to_string();
    let (code, answer) = curl(
        &s,
        &srv,
        Some("line-se"),
        "POST",
        "/v1/batches",
        Some(&body),
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("key-compromised"), "{answer}");
}
