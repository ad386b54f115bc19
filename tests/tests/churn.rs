//! Supplier churn end to end (issue 6): registry, enrolment, assignment, change of supplier,
//! rotation, key revocation, takeover and exit, each producing trust-anchor updates that openssl
//! verifies (`openssl cms -verify`) and `meterpki update verify` checks as a meter would; bad
//! input refused with nothing changed; a takeover killed half-way and completed by a re-run.

use std::collections::BTreeSet;

use meterpki_tests::{openssl_csr, tool, Scratch};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");
const A: &str = "90-B3-D5-1F-30-00-00-0A";
const B: &str = "90-B3-D5-1F-30-00-00-0B";
const X: &str = "90-B3-D5-1F-30-00-00-0C";

fn p(s: &Scratch, rel: &str) -> String {
    s.path(rel).display().to_string()
}

/// Enrols a key for `supplier` from an openssl CSR; returns the certificate's PEM path.
fn enrol(s: &Scratch, supplier: &str, profile: &str, name: &str) -> String {
    let (_, csr) = openssl_csr(&s.path(""), name, "prime256v1");
    let out = p(s, &format!("{name}.pem"));
    s.run(
        "h",
        &[
            "supplier",
            "enrol",
            "--id",
            supplier,
            "--profile",
            profile,
            "--csr",
            &csr.display().to_string(),
            "--out",
            &out,
        ],
    )
    .ok();
    out
}

/// A home with suppliers A and B (two keys each), X (one key), and `n` meters with
/// certificates; returns the meters' IDs.
fn setup(n: usize) -> (Scratch, Vec<String>) {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.supplier("h", A, "Alpha Energy");
    s.supplier("h", B, "Beta Power");
    s.supplier("h", X, "Gamma Gas");
    enrol(&s, A, "supplier-signing", "a-sign");
    enrol(&s, A, "supplier-key-agreement", "a-ka");
    enrol(&s, B, "supplier-signing", "b-sign");
    enrol(&s, B, "supplier-key-agreement", "b-ka");
    enrol(&s, X, "supplier-signing", "x-sign");
    let batch = p(&s, "meters.ndjson");
    s.bench(
        "h",
        &["make-batch", "--count", &n.to_string(), "--out", &batch],
    )
    .ok();
    s.run(
        "h",
        &["issue", "--batch", &batch, "--out", &p(&s, "meters.out")],
    )
    .ok();
    let ids = std::fs::read_to_string(s.path("meters.ndjson"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["device_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    (s, ids)
}

fn assign_all(s: &Scratch, ids: &[String], supplier: &str) {
    let csv: String = ids.iter().map(|d| format!("{d},{supplier}\n")).collect();
    std::fs::write(s.path("assign.csv"), csv).unwrap();
    s.run("h", &["meter", "assign", "--file", &p(s, "assign.csv")])
        .ok();
}

/// `meterpki update verify` as JSON, or the failure.
fn verify(s: &Scratch, file: &str, extra: &[&str]) -> Result<Value, String> {
    let mut args = vec![
        "update",
        "verify",
        file,
        "--root",
        "h/ca/root.pem",
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = s.run("h", &args);
    if r.code == 0 {
        Ok(r.json())
    } else {
        Err(format!("exit {}: {}", r.code, r.stderr))
    }
}

/// openssl's CMS verification against our root; on success the DER TAMPUpdate content.
fn openssl_verify(s: &Scratch, file: &str) -> Result<Vec<u8>, String> {
    let out = s.path("content.der");
    let _ = std::fs::remove_file(&out);
    let r = tool(
        "openssl",
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            file,
            "-CAfile",
            &p(s, "h/ca/root.pem"),
            "-purpose",
            "any",
            "-binary",
            "-out",
            &out.display().to_string(),
        ],
        &[],
    );
    if r.code != 0 {
        return Err(r.stderr);
    }
    Ok(std::fs::read(out).unwrap())
}

fn meter(s: &Scratch, d: &str) -> Value {
    s.run("h", &["meter", "show", "--device-id", d, "--json"])
        .ok()
        .json()
}

fn suppliers(s: &Scratch) -> Vec<Value> {
    s.run("h", &["supplier", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn supplier(s: &Scratch, id: &str) -> Value {
    suppliers(s)
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no supplier {id}"))
}

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

#[test]
fn a_takeover_killed_half_way_is_completed_by_a_rerun() {
    let (s, ids) = setup(40);
    assign_all(&s, &ids, A);
    // Abort (like SIGKILL: no flush, no destructor) after the third chunk's updates are written
    // and before its meters are stored as moved.
    let r = s.run_env(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            A,
            "--to",
            B,
            "--updates-out",
            "upd",
            "--chunk",
            "7",
        ],
        &[("METERPKI_FAILPOINT", "churn.before-commit:3")],
    );
    assert_ne!(r.code, 0, "the failpoint did not fire");
    assert!(r.stderr.contains("failpoint"), "{}", r.stderr);
    // A already lost its power; two chunks moved.
    assert_eq!(supplier(&s, A)["state"], "acquired");
    assert_eq!(supplier(&s, B)["meters"], 14);
    let seq_before: u64 = meter(&s, &ids[0])["last_update"]["seq"]
        .as_u64()
        .unwrap_or(0);
    // A takeover to someone else is refused while this one is open.
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
    .fails(2, "re-run it with --to");
    // The re-run completes it.
    let r = s
        .run(
            "h",
            &[
                "supplier",
                "takeover",
                "--from",
                A,
                "--to",
                B,
                "--updates-out",
                "upd",
                "--chunk",
                "7",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(r["meters_updated"], 26, "{r}");
    assert_eq!(r["state"], "complete");
    assert_eq!(supplier(&s, A)["meters"], 0);
    assert_eq!(supplier(&s, B)["meters"], 40);
    // Every meter: moved once, its file's sequence number is the recorded one, no number twice.
    let mut seqs = BTreeSet::new();
    for d in &ids {
        let m = meter(&s, d);
        assert_eq!(m["supplier"], B);
        let v = verify(
            &s,
            &p(&s, &format!("upd/{d}.tamp.der")),
            &["--device-id", d],
        )
        .unwrap();
        assert_eq!(m["last_update"]["seq"], v["seq"], "{d}");
        assert!(
            seqs.insert(v["seq"].as_u64().unwrap()),
            "sequence number reused"
        );
        assert!(m["last_update"]["op"]
            .as_str()
            .unwrap()
            .starts_with("takeover:"));
    }
    assert!(seq_before > 0);
    // A third run has nothing to do.
    let r = s
        .run(
            "h",
            &[
                "supplier",
                "takeover",
                "--from",
                A,
                "--to",
                B,
                "--updates-out",
                "upd",
            ],
        )
        .ok();
    assert!(r.stdout.contains("already completed"), "{}", r.stdout);
    s.run("h", &["audit", "verify"]).ok();
}
