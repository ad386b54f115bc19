//! Two `meterpki serve` processes on one home whose store is PostgreSQL: batches for the same
//! devices sent to both at once issue one active certificate per device, a retry to the other
//! server answers the same certificates, and a revocation or a disabled account made through
//! one is enforced by the other on the next request.

use std::process::Command;

use serde_json::{json, Value};

use super::support::{curl, curl_args, items, setup, Server};

#[test]
fn two_servers_on_one_postgres_store_keep_every_invariant() {
    let s = setup();
    let url_file = s.path("db.url");
    std::fs::write(&url_file, meterpki_tests::pg_database("two")).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    let a = Server::start(&s);
    let b = Server::start(&s);

    // The same 40 devices, other keys, one batch to each server at once.
    let ids: Vec<String> = (0..40)
        .map(|i| format!("00-DB-12-00-00-00-50-{i:02X}"))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let body_a = json!({"request_id": "shared-a", "items": items(&s, 40, &refs)}).to_string();
    let body_b = json!({"request_id": "shared-b", "items": items(&s, 40, &refs)}).to_string();
    std::fs::write(s.path("a.json"), &body_a).unwrap();
    std::fs::write(s.path("b.json"), &body_b).unwrap();
    let send = |port: u16, file: &str, out: &str| {
        Command::new("curl")
            .args(curl_args(
                &s,
                port,
                Some("line-7"),
                "POST",
                "/v1/batches",
                Some(&s.path(file)),
                &s.path(out),
            ))
            .spawn()
            .unwrap()
    };
    let (mut ca, mut cb) = (
        send(a.port, "a.json", "a.out"),
        send(b.port, "b.json", "b.out"),
    );
    assert!(ca.wait().unwrap().success() && cb.wait().unwrap().success());
    let answer = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(s.path(f)).unwrap()).unwrap()
    };
    let (ra, rb) = (answer("a.out"), answer("b.out"));
    let mut issued = 0;
    for (x, y) in ra["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(rb["results"].as_array().unwrap())
    {
        let statuses = [x["status"].as_str().unwrap(), y["status"].as_str().unwrap()];
        issued += statuses.iter().filter(|st| **st == "issued").count();
        for (r, st) in [(x, statuses[0]), (y, statuses[1])] {
            if st != "issued" {
                assert_eq!(r["error"]["code"], "existing-certificate", "{r}");
            }
        }
    }
    assert_eq!(issued, 40, "one certificate per device: {ra} {rb}");

    // A retry of batch A to the other server answers the same certificates.
    let (code, again) = curl(
        &s,
        &b,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&body_a),
        &[],
    );
    assert_eq!(code, 200, "{again}");
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["results"], ra["results"]);

    // Revoked through A, seen revoked through B.
    let serial = ra["results"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rb["results"].as_array().unwrap())
        .find(|r| r["status"] == "issued")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = curl(
        &s,
        &a,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some(r#"{"reason": "superseded"}"#),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        &s,
        &b,
        Some("ops"),
        "GET",
        &format!("/v1/certificates/{serial}"),
        None,
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("superseded"), "{body}");

    // An account disabled (from the shell) is refused by both servers on its next request.
    s.run("h", &["account", "disable", "--name", "line-7"]).ok();
    for srv in [&a, &b] {
        let (code, body) = curl(
            &s,
            srv,
            Some("line-7"),
            "GET",
            "/v1/batches/shared-a",
            None,
            &[],
        );
        assert_eq!(code, 403, "{body}");
    }
    drop((a, b));
    // One audit chain in the database, appended by both servers: both starts, both batches.
    let records = s.run("h", &["audit", "list", "--json"]).ok().json();
    let events = |name: &str| {
        records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == name)
            .count()
    };
    assert_eq!(events("api.start"), 2, "{records}");
    assert!(events("api.batch") >= 2, "{records}");
    let check = s.run("h", &["store", "check", "--json"]).ok().json();
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    s.run("h", &["audit", "verify"]).ok();
}

/// Two machines, each with its own copy of the home (its own CRL folder), on one PostgreSQL
/// store: a CRL published through one is served by the other, and the other's copy follows
/// every later publication.
#[test]
fn a_crl_published_on_one_machine_is_served_by_every_other() {
    let s = setup();
    let url_file = s.path("db.url");
    std::fs::write(&url_file, meterpki_tests::pg_database("crls")).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    // The second machine: the same configuration, CA certificates and HSM keys.
    s.copy_home("h", "h2");
    let a = Server::start(&s);
    let b = Server::start_in(&s, "h2", &[], &[]);
    let full_crl = |srv: &Server| -> String {
        let der = s.path("fetched.crl");
        let url = format!(
            "http://127.0.0.1:{}/crl/device/full.crl",
            srv.crl_port.unwrap()
        );
        meterpki_tests::tool(
            "curl",
            &["-sSf", "-o", &der.display().to_string(), &url],
            &[],
        )
        .ok();
        meterpki_tests::tool(
            "openssl",
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &der.display().to_string(),
                "-noout",
                "-text",
            ],
            &[],
        )
        .ok()
        .stdout
    };
    let number = |text: &str| -> u64 {
        let line = text
            .lines()
            .skip_while(|l| !l.contains("X509v3 CRL Number"))
            .nth(1)
            .unwrap();
        line.trim().parse().unwrap()
    };
    let before = number(&full_crl(&b));

    // Issued and revoked (keyCompromise: published at once) through A.
    let body = json!({"request_id": "crl-1", "items": items(&s, 1, &["00-DB-12-00-00-00-60-01"])})
        .to_string();
    let (code, answer) = curl(
        &s,
        &a,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&body),
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    let serial = serde_json::from_str::<Value>(&answer).unwrap()["results"][0]["serial"]
        .as_str()
        .unwrap()
        .to_uppercase();
    let (code, answer) = curl(
        &s,
        &a,
        Some("ops"),
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        Some(r#"{"reason": "keyCompromise"}"#),
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    // B never published anything, yet serves A's CRL listing the certificate (after at most a
    // second of its check interval).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let text = full_crl(&b);
    assert!(number(&text) > before, "{text}");
    assert!(
        text.to_uppercase().contains(&serial),
        "{serial} not in B's CRL: {text}"
    );
    assert_eq!(
        std::fs::read(s.path("h2/crl/device/full.crl")).unwrap(),
        std::fs::read(s.path("h/crl/device/full.crl")).unwrap()
    );
    drop((a, b));
    s.run("h2", &["audit", "verify"]).ok();
}
