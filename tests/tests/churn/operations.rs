//! Every churn operation in turn (bulk assignment, change of supplier, refusals, rotation, key
//! revocation, exit, takeover), each update accepted by openssl and by a meter's checks.

use std::collections::BTreeSet;

use meterpki_tests::{openssl_csr, tool};
use serde_json::Value;

use crate::support::{meter, openssl_verify, p, setup, supplier, suppliers, verify, A, B, X};

#[test]
fn every_operation_makes_updates_that_openssl_and_a_meter_accept() {
    let (s, ids) = setup(6);
    // Bulk assignment: bad lines reported with their numbers, the rest applied.
    let mut lines = vec!["device_id,supplier".to_string()];
    lines.extend(ids[..4].iter().map(|d| format!("{d},{A}")));
    lines.push("not-an-id,90-B3-D5-1F-30-00-00-0A".into());
    lines.push(format!("00-00-00-00-00-00-00-99,{A}"));
    lines.push(format!("{},{}", ids[4], "90-B3-D5-1F-30-00-00-FF"));
    lines.push(format!(
        "{{\"device_id\": \"{}\", \"supplier\": \"{A}\"}}",
        ids[4]
    ));
    std::fs::write(s.path("assign.csv"), lines.join("\n")).unwrap();
    let r = s
        .run(
            "h",
            &[
                "meter",
                "assign",
                "--file",
                &p(&s, "assign.csv"),
                "--updates-out",
                "assign-updates",
                "--json",
            ],
        )
        .fails(2, "3 of 8 line(s) refused");
    let v = r.json();
    assert_eq!(v["applied"], 5, "{v}");
    let errors: Vec<(u64, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (6, "bad-line".to_string()),
            (7, "unknown-meter".to_string()),
            (8, "supplier-unknown".to_string())
        ]
    );
    assert_eq!(supplier(&s, A)["meters"], 5);

    // Each update verifies with openssl against the root and prints the TAMPUpdate content; a
    // meter's view (update verify) agrees; one byte altered fails both.
    let f = p(&s, &format!("assign-updates/{}.tamp.der", ids[0]));
    let content = openssl_verify(&s, &f).expect("openssl cms -verify");
    let v = verify(&s, &f, &["--device-id", &ids[0]]).unwrap();
    assert_eq!(v["devices"][0], ids[0].as_str());
    assert_eq!(
        v["add"].as_array().unwrap().len(),
        2,
        "A's two certificates"
    );
    assert_eq!(v["content_bytes"], content.len());
    let asn1 = tool(
        "openssl",
        &["asn1parse", "-inform", "DER", "-in", &p(&s, "content.der")],
        &[],
    )
    .ok();
    assert!(
        asn1.stdout.contains("cont [ 1 ]"),
        "hwModules target: {}",
        asn1.stdout
    );
    let original = std::fs::read(&f).unwrap();
    for pos in [
        10,
        original.len() / 3,
        original.len() / 2,
        original.len() - 5,
    ] {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        std::fs::write(s.path("bad.der"), &bad).unwrap();
        assert!(
            openssl_verify(&s, &p(&s, "bad.der")).is_err(),
            "openssl accepted a change at {pos}"
        );
        assert!(
            verify(&s, &p(&s, "bad.der"), &[]).is_err(),
            "update verify accepted a change at {pos}"
        );
    }
    // A meter checks the target and the sequence number.
    let seq = v["seq"].as_u64().unwrap();
    assert!(verify(&s, &f, &["--device-id", &ids[1]])
        .unwrap_err()
        .contains("target"));
    assert!(verify(&s, &f, &["--after", &seq.to_string()]).is_err());
    assert!(verify(&s, &f, &["--after", &(seq - 1).to_string()]).is_ok());

    // Change of supplier: A's keys removed, B's certificates added, a greater sequence number.
    s.run(
        "h",
        &[
            "meter",
            "change-supplier",
            "--device-id",
            &ids[0],
            "--to",
            B,
            "--updates-out",
            "change-updates",
        ],
    )
    .ok();
    let f = p(&s, &format!("change-updates/{}.tamp.der", ids[0]));
    openssl_verify(&s, &f).expect("openssl");
    let v = verify(
        &s,
        &f,
        &["--device-id", &ids[0], "--after", &seq.to_string()],
    )
    .unwrap();
    assert_eq!(v["remove_key_ids"].as_array().unwrap().len(), 2);
    assert_eq!(v["add"].as_array().unwrap().len(), 2);
    assert!(v["add"][0]["subject"]
        .as_str()
        .unwrap()
        .contains("Beta Power"));
    assert_eq!(meter(&s, &ids[0])["supplier"], B);
    assert_eq!(meter(&s, &ids[0])["last_update"]["seq"], v["seq"]);

    // Refusals, each changing nothing.
    let before = (suppliers(&s), meter(&s, &ids[0]), s.snapshot());
    s.run(
        "h",
        &[
            "meter",
            "change-supplier",
            "--device-id",
            &ids[0],
            "--to",
            B,
            "--updates-out",
            "x",
        ],
    )
    .fails(2, "already served by supplier");
    s.run(
        "h",
        &[
            "meter",
            "change-supplier",
            "--device-id",
            "00-00-00-00-00-00-00-99",
            "--to",
            B,
            "--updates-out",
            "x",
        ],
    )
    .fails(2, "no meter certificate");
    s.run(
        "h",
        &[
            "meter",
            "change-supplier",
            "--device-id",
            &ids[0],
            "--to",
            A,
        ],
    )
    .fails(2, "--updates-out");
    s.run(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            A,
            "--to",
            A,
            "--updates-out",
            "x",
        ],
    )
    .fails(2, "its own meters");
    s.run(
        "h",
        &["supplier", "register", "--id", A, "--name", "Someone Else"],
    )
    .fails(2, "already registered");
    assert!(
        !s.path("x").exists(),
        "a refused command created its output folder"
    );
    assert_eq!(before.0, suppliers(&s));
    assert_eq!(before.1, meter(&s, &ids[0]));
    let mut after = s.snapshot();
    after.remove("h/audit/audit.log");
    let mut was = before.2;
    was.remove("h/audit/audit.log");
    assert_eq!(was, after, "a refusal changed files");

    // Rotation: the new certificate in place, the old one superseded, every meter of A updated.
    let (_, csr) = openssl_csr(&s.path(""), "a-sign-2", "prime256v1");
    let r = s
        .run(
            "h",
            &[
                "supplier",
                "rotate",
                "--id",
                A,
                "--profile",
                "supplier-signing",
                "--csr",
                &csr.display().to_string(),
                "--updates-ndjson",
                "rotate.ndjson",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(r["meters_updated"], 4, "{r}");
    let old = r["superseded_serial"].as_str().unwrap().to_string();
    let shown = s
        .run("h", &["show", "--serial", &old, "--json"])
        .ok()
        .stdout;
    assert!(shown.contains("revoked (superseded)"), "{shown}");
    let lines = std::fs::read_to_string(s.path("rotate.ndjson")).unwrap();
    let mut seqs = BTreeSet::new();
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(v["update"].as_str().unwrap())
            .unwrap();
        std::fs::write(s.path("rot.der"), der).unwrap();
        openssl_verify(&s, &p(&s, "rot.der")).expect("openssl");
        let u = verify(
            &s,
            &p(&s, "rot.der"),
            &["--device-id", v["device_id"].as_str().unwrap()],
        )
        .unwrap();
        assert_eq!(u["remove_key_ids"].as_array().unwrap().len(), 1);
        assert_eq!(u["add"].as_array().unwrap().len(), 1);
        assert!(seqs.insert(u["seq"].as_u64().unwrap()));
    }
    assert_eq!(seqs.len(), 4);

    // A keyCompromise revocation: the key leaves every meter of A; the CRL says so.
    let a_ka = s
        .run("h", &["show", "--device-id", A, "--json"])
        .ok()
        .json();
    let ka_serial = a_ka
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["profile"] == "supplier-key-agreement")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .run(
            "h",
            &[
                "supplier",
                "revoke-key",
                "--serial",
                &ka_serial,
                "--reason",
                "keyCompromise",
                "--updates-out",
                "compromise",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(r["meters_updated"], 4, "{r}");
    let chain = s.path("org-chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap()
            + &std::fs::read_to_string(s.path("h/ca/organisation.pem")).unwrap(),
    )
    .unwrap();
    let crl_check = |cert: &str| {
        let crls = s.path("org-crls.pem");
        let mut all = String::new();
        for e in std::fs::read_dir(s.path("h/crl/organisation")).unwrap() {
            let path = e.unwrap().path();
            all += &tool(
                "openssl",
                &["crl", "-inform", "DER", "-in", &path.display().to_string()],
                &[],
            )
            .ok()
            .stdout;
        }
        std::fs::write(&crls, all).unwrap();
        tool(
            "openssl",
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                &chain.display().to_string(),
                "-CRLfile",
                &crls.display().to_string(),
                cert,
            ],
            &[],
        )
    };
    let r = crl_check(&p(&s, "a-ka.pem"));
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("revoked") || r.stderr.contains("revoked"));
    for d in &ids[1..4] {
        let f = p(&s, &format!("compromise/{d}.tamp.der"));
        openssl_verify(&s, &f).expect("openssl");
    }

    // Exit of X (one meter) to B, then a takeover into the exited X is refused.
    s.run(
        "h",
        &["meter", "assign", "--device-id", &ids[5], "--supplier", X],
    )
    .ok();
    s.run(
        "h",
        &[
            "supplier",
            "exit",
            "--id",
            X,
            "--successor",
            B,
            "--updates-out",
            "exit",
        ],
    )
    .ok();
    assert_eq!(supplier(&s, X)["state"], "exited");
    assert_eq!(meter(&s, &ids[5])["supplier"], B);
    let f = p(&s, &format!("exit/{}.tamp.der", ids[5]));
    openssl_verify(&s, &f).expect("openssl verifies the exit's update");
    let v = verify(&s, &f, &["--device-id", &ids[5]]).unwrap();
    assert_eq!(
        v["remove_key_ids"].as_array().unwrap().len(),
        1,
        "X's one key"
    );
    assert!(v["add"][0]["subject"]
        .as_str()
        .unwrap()
        .contains("Beta Power"));
    s.run(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            A,
            "--to",
            X,
            "--updates-out",
            "x",
        ],
    )
    .fails(2, "exited");
    assert_eq!(supplier(&s, A)["state"], "active");
    s.run(
        "h",
        &[
            "supplier",
            "enrol",
            "--id",
            X,
            "--profile",
            "supplier-key-agreement",
            "--csr",
            &csr.display().to_string(),
        ],
    )
    .fails(2, "supplier-inactive");

    // Takeover A -> B: every certificate of A revoked in the republished CRLs, B's still good.
    s.run(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            A,
            "--to",
            B,
            "--updates-out",
            "takeover",
        ],
    )
    .ok();
    assert_eq!(supplier(&s, A)["state"], "acquired");
    assert_eq!(supplier(&s, A)["meters"], 0);
    assert_eq!(supplier(&s, B)["meters"], 6);
    let a_sign_2 = s.path("a-sign-2-cert.pem");
    let a_certs = s
        .run("h", &["show", "--device-id", A, "--json"])
        .ok()
        .json();
    for c in a_certs.as_array().unwrap() {
        assert!(c["revocation"].is_object(), "{c}");
        std::fs::write(&a_sign_2, c["certificate"].as_str().unwrap()).unwrap();
        let r = crl_check(&a_sign_2.display().to_string());
        assert_ne!(r.code, 0, "A's certificate {} still verifies", c["serial"]);
    }
    assert_eq!(crl_check(&p(&s, "b-sign.pem")).code, 0);
    for d in &ids[1..5] {
        let f = p(&s, &format!("takeover/{d}.tamp.der"));
        openssl_verify(&s, &f).expect("openssl");
        let v = verify(&s, &f, &["--device-id", d]).unwrap();
        assert!(v["add"][0]["subject"]
            .as_str()
            .unwrap()
            .contains("Beta Power"));
    }
    // A can no longer enrol; the audit chain holds every step.
    s.run(
        "h",
        &[
            "supplier",
            "enrol",
            "--id",
            A,
            "--profile",
            "supplier-signing",
            "--csr",
            &csr.display().to_string(),
        ],
    )
    .fails(2, "acquired");
    let audit = s.run("h", &["audit", "list", "--json"]).ok().stdout;
    for event in [
        "supplier.register",
        "meter.assign",
        "meter.change-supplier",
        "supplier.rotate",
        "supplier.revoke-key",
        "supplier.exit",
        "supplier.takeover",
    ] {
        assert!(audit.contains(event), "no {event} in the audit log");
    }
    s.run("h", &["audit", "verify"]).ok();
}

/// A bulk file is read a bounded line at a time: a line that is not UTF-8 is refused as that
/// line (`bad-line`, with its number) and the others are applied.
#[test]
fn a_bulk_line_that_is_not_text_is_refused_as_a_line() {
    let (s, ids) = setup(2);
    let mut bytes = format!("device_id,supplier\n{},{A}\n", ids[0]).into_bytes();
    bytes.extend_from_slice(b"\xff\xfe,90-B3-D5-1F-30-00-00-0A\n");
    bytes.extend_from_slice(format!("{},{A}\n", ids[1]).as_bytes());
    std::fs::write(s.path("assign.csv"), bytes).unwrap();
    let r = s
        .run(
            "h",
            &["meter", "assign", "--file", &p(&s, "assign.csv"), "--json"],
        )
        .fails(2, "1 of 3 line(s) refused");
    let v = r.json();
    assert_eq!(v["applied"], 2, "{v}");
    assert_eq!(v["errors"][0]["line"], 3, "{v}");
    assert_eq!(v["errors"][0]["code"], "bad-line", "{v}");
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not UTF-8"),
        "{v}"
    );
}
