//! The whole life of a home (docs/lifecycle.md): root ceremony, issuance, Device CA renewal,
//! root rollover with its apex update, a Device CA compromise with its re-issuance campaign, an
//! Organisation CA compromise with the supplier re-certification campaign, and a root
//! compromise recovered with the contingency key. After each step a strict relying party
//! (`openssl verify -crl_check_all`, every CRL and ARL the home published) accepts every
//! certificate still valid and refuses every revoked one, and the meters' updates verify as a
//! meter holding its root would check them.

use std::path::{Path, PathBuf};

use meterpki_tests::{openssl_csr, Scratch};
use serde_json::Value;

use crate::rp::{accepts, crls, verify};
use crate::{run, shares, EXE};

const A: &str = "90-B3-D5-1F-30-00-00-0A";
const METERS: [&str; 4] = [
    "00-DB-12-34-56-78-90-01",
    "00-DB-12-34-56-78-90-02",
    "00-DB-12-34-56-78-90-03",
    "00-DB-12-34-56-78-90-04",
];

fn p(x: &Path) -> String {
    x.display().to_string()
}

/// Every CA certificate a relying party may build a path from now: the current issuing CAs and
/// their earlier generations (as the current root certifies them), and the link certificates.
fn intermediates(s: &Scratch) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["h/ca", "h/ca/generations", "h/ca/links"] {
        let Ok(entries) = std::fs::read_dir(s.path(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let ca = name.ends_with(".pem")
                && !name.starts_with("root")
                && !["api-server.pem", "trust-update-signer.pem", "audit.pem"]
                    .contains(&name.as_str());
            if ca {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// After a step: under the current root, every certificate of `valid` verifies and every one
/// of `revoked` fails, with every CRL and ARL published.
fn check(s: &Scratch, step: &str, valid: &[&str], revoked: &[&str]) {
    s.run("h", &["crl", "publish"]).ok();
    let crl = crls(s, "h");
    let root = s.path("h/ca/root.pem");
    let untrusted = intermediates(s);
    for c in valid {
        accepts(&root, &untrusted, &crl, &s.path(c));
    }
    for c in revoked {
        let r = verify(&root, &untrusted, &crl, None, &s.path(c));
        assert!(
            r.code != 0 && !r.stdout.contains(": OK"),
            "{step}: {c} should no longer verify: {}{}",
            r.stdout,
            r.stderr
        );
    }
    s.run("h", &["store", "check"]).ok();
    s.run("h", &["audit", "verify"]).ok();
}

/// `meterpki update verify` of the update for meter `d` in `dir` as a meter holding `root`.
fn meter_accepts(s: &Scratch, dir: &str, d: &str, root: &Path) -> Value {
    crate::meter_verifies(
        s,
        &s.path(&format!("{dir}/{d}.tamp.der")),
        root,
        &["--device-id", d],
    )
}

/// The apex update of a rollover or recovery verified as a meter holding `root` would.
fn apex_accepted(s: &Scratch, out: &Value, root: &Path) -> Value {
    let apex = out["apex_update"]["file"].as_str().unwrap().to_string();
    let v = crate::meter_verifies(s, Path::new(&apex), root, &[]);
    assert_eq!(v["kind"], "apex");
    assert_eq!(
        v["new_apex"]["sha256_fingerprint"],
        out["root"]["certificate"]["sha256_fingerprint"]
    );
    let decoded = crate::rp::asn1_decode(Path::new(&apex));
    assert_eq!(decoded["kind"], "apex");
    v
}

fn ceremony(s: &Scratch, args: &[&str], officers: &[u8]) -> Value {
    let mut all = vec!["ceremony"];
    all.extend_from_slice(args);
    all.push("--json");
    run(s, &all, &shares(s, officers)).ok().json()
}

#[test]
fn a_home_lives_through_renewal_rollover_and_three_compromises() {
    let s = Scratch::new(EXE);
    // 1. The root ceremony and the issuing CAs.
    s.ceremonies("h", 3, 2, &["device", "organisation"]);

    // 2. Issuance: a supplier with two keys, three meters served by it.
    s.supplier("h", A, "Alpha Energy");
    s.enrol("h", A, "supplier-signing", "a-sign").ok();
    s.enrol("h", A, "supplier-key-agreement", "a-ka").ok();
    for (i, d) in METERS[..3].iter().enumerate() {
        s.issue_one("h", d, None, &format!("m{}.pem", i + 1)).ok();
        s.run(
            "h",
            &[
                "meter",
                "assign",
                "--device-id",
                d,
                "--supplier",
                A,
                "--updates-out",
                "upd-assign",
            ],
        )
        .ok();
        meter_accepts(&s, "upd-assign", d, &s.path("h/ca/root.pem"));
    }
    let mut valid = vec!["m1.pem", "m2.pem", "m3.pem", "a-sign.pem", "a-ka.pem"];
    let mut revoked: Vec<&str> = Vec::new();
    check(&s, "issuance", &valid, &revoked);

    // 3. Device CA renewal: generation 2 issues from now on.
    ceremony(&s, &["issuing-ca", "--kind", "device", "--renew"], &[1, 2]);
    s.issue_one("h", METERS[3], None, "m4.pem").ok();
    valid.push("m4.pem");
    check(&s, "device renewal", &valid, &revoked);

    // 4. Root rollover; its apex update, signed by the first root, installs the second.
    let rolled = ceremony(
        &s,
        &[
            "root-rollover",
            "--contingency-shares-dir",
            &p(&s.path("h-contingency-g2")),
        ],
        &[1, 3],
    );
    assert_eq!(rolled["old_with_new"]["made"], true);
    apex_accepted(&s, &rolled, &s.path("h/ca/generations/root-1.pem"));
    check(&s, "root rollover", &valid, &revoked);

    // 5. Device CA compromise (generation 2, which issued m4): revoked in the ARL, a new
    //    generation, and the re-issuance campaign from the CSR the head end collected.
    ceremony(
        &s,
        &["revoke-ca", "--kind", "device", "--reason", "cACompromise"],
        &[2, 3],
    );
    revoked.push("m4.pem");
    valid.retain(|c| *c != "m4.pem");
    check(&s, "device compromise revoked", &valid, &revoked);
    // Issuing from a revoked generation is refused until the new one exists.
    s.issue_one("h", "00-DB-12-34-56-78-90-09", None, "m9.pem")
        .fails(2, "revoked");
    ceremony(&s, &["issuing-ca", "--kind", "device", "--renew"], &[1, 2]);
    let (_, csr) = openssl_csr(&s.path(""), "m4-new", "prime256v1");
    let csr_text = std::fs::read_to_string(&csr).unwrap();
    let lines = [
        serde_json::json!({"device_id": METERS[3], "profile": "meter-signing", "csr": csr_text}),
        // A meter never certified is no part of a re-issuance campaign.
        serde_json::json!({"device_id": "00-DB-12-34-56-78-90-77", "profile": "meter-signing", "csr": csr_text}),
        // Nor a supplier profile.
        serde_json::json!({"device_id": METERS[0], "profile": "supplier-signing", "csr": csr_text}),
        // Nor a second line for the same meter and usage.
        serde_json::json!({"device_id": METERS[3], "profile": "meter-signing", "csr": csr_text}),
    ];
    let file = s.path("collected.ndjson");
    std::fs::write(
        &file,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let out = s.path("reissued.ndjson");
    // Killed after the chunk is stored, before its results are written: the re-run answers
    // the certificate already issued, and issues nothing twice.
    let r = s.run_env(
        "h",
        &["meter", "reissue", "--file", &p(&file), "--out", &p(&out)],
        &[("METERPKI_FAILPOINT", "issue.before-results:1")],
    );
    assert!(r.stderr.contains("failpoint"), "{r:?}");
    let r = s.run(
        "h",
        &[
            "meter",
            "reissue",
            "--file",
            &p(&file),
            "--out",
            &p(&out),
            "--json",
        ],
    );
    assert_eq!(r.code, 2, "three lines are refused: {r:?}");
    let summary = r.json();
    assert_eq!(summary["existing"], 1, "{summary}");
    assert_eq!(summary["issued"], 0, "{summary}");
    assert_eq!(summary["rejected"], 3, "{summary}");
    let results: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(results[1]["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("no meter certificate was ever issued"));
    assert!(results[2]["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("not a meter profile"));
    assert!(results[3]["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("on line 1 already"));
    let cert = results[0]["certificate"].as_str().unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        cert.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::write(s.path("m4-new.pem"), pem).unwrap();
    let shown = s
        .run("h", &["show", "--device-id", METERS[3], "--json"])
        .ok()
        .json();
    let generations: Vec<u64> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["issuer_generation"].as_u64().unwrap())
        .collect();
    assert_eq!(
        generations,
        [2, 3],
        "one new certificate, from generation 3"
    );
    // A second line for the same meter with yet another key replaces nothing: the meter's
    // certificate already comes from the current generation.
    let (_, other) = openssl_csr(&s.path(""), "m4-other", "prime256v1");
    let line = serde_json::json!({"device_id": METERS[3], "profile": "meter-signing", "csr": std::fs::read_to_string(&other).unwrap()});
    std::fs::write(s.path("again.ndjson"), format!("{line}\n")).unwrap();
    s.run(
        "h",
        &[
            "meter",
            "reissue",
            "--file",
            &p(&s.path("again.ndjson")),
            "--out",
            &p(&s.path("again.out")),
        ],
    )
    .fails(2, "rejected");
    let shown = s
        .run("h", &["show", "--device-id", METERS[3], "--json"])
        .ok()
        .json();
    assert_eq!(shown.as_array().unwrap().len(), 2, "nothing issued twice");
    valid.push("m4-new.pem");
    check(&s, "device compromise recovered", &valid, &revoked);

    // 6. Organisation CA compromise: generation 1 revoked, generation 2, a rollover that
    //    re-anchors the meters without OldWithNew, then every supplier key certified again
    //    and replaced in every meter.
    let old_signer = s.path("old-signer.pem");
    std::fs::copy(s.path("h/ca/trust-update-signer.pem"), &old_signer).unwrap();
    ceremony(
        &s,
        &[
            "revoke-ca",
            "--kind",
            "organisation",
            "--reason",
            "cACompromise",
        ],
        &[1, 2],
    );
    revoked.extend(["a-sign.pem", "a-ka.pem"]);
    valid.retain(|c| !c.starts_with("a-"));
    check(&s, "organisation compromise revoked", &valid, &revoked);
    ceremony(
        &s,
        &["issuing-ca", "--kind", "organisation", "--renew"],
        &[1, 2],
    );
    let rolled = ceremony(
        &s,
        &[
            "root-rollover",
            "--contingency-shares-dir",
            &p(&s.path("h-contingency-g3")),
        ],
        &[2, 3],
    );
    assert_eq!(rolled["old_with_new"]["made"], false, "{rolled}");
    assert!(!s.path("h/ca/links/old-with-new.pem").exists());
    assert!(s.path("h/ca/generations/root-2/old-with-new.pem").exists());
    apex_accepted(&s, &rolled, &s.path("h/ca/generations/root-2.pem"));
    // A meter holding the new root checks no CRL: no path may lead from the compromised
    // Organisation CA to it. The old signer's certificate (issued by the compromised
    // generation) finds none, whatever certificates the attacker brings along.
    let mut everything = intermediates(&s);
    for dir in ["h/ca/generations/root-1", "h/ca/generations/root-2"] {
        for e in std::fs::read_dir(s.path(dir)).unwrap().flatten() {
            everything.push(e.path());
        }
    }
    let r = verify(
        &s.path("h/ca/root.pem"),
        &everything,
        &[],
        None,
        &old_signer,
    );
    assert!(
        r.code != 0 && !r.stdout.contains(": OK"),
        "a chain from the compromised Organisation CA reaches the new root: {r:?}"
    );
    // The same as a meter checks it: an update signed under the compromised generation is
    // refused by a meter holding the new root.
    s.run(
        "h",
        &[
            "update",
            "verify",
            &p(&s.path(&format!("upd-assign/{}.tamp.der", METERS[0]))),
            "--root",
            "h/ca/root.pem",
        ],
    )
    .fails(2, "does not verify");
    // The re-certification campaign, killed after its first chunk of meters, then re-run.
    let recertify = |extra: &[(&str, &str)]| {
        s.run_env(
            "h",
            &[
                "supplier",
                "recertify",
                "--updates-out",
                "upd-recertify",
                "--chunk",
                "2",
                "--json",
            ],
            extra,
        )
    };
    let r = recertify(&[("METERPKI_FAILPOINT", "churn.before-commit:2")]);
    assert!(r.stderr.contains("failpoint"), "{r:?}");
    let report = recertify(&[]).ok().json();
    let ops = report["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{report}");
    assert_eq!(ops[0]["kind"], "recertify");
    assert_eq!(ops[0]["state"], "complete");
    assert_eq!(ops[0]["organisation_generation"], 2);
    assert_eq!(
        ops[0]["meters_updated"], 1,
        "two were done before the crash"
    );
    // Every meter's update replaces both supplier certificates, verified as a meter holding
    // the new root would, and as one that has not yet taken the apex update (through
    // NewWithOld); openssl verifies the CMS signature; the new certificates verify.
    let shown = s
        .run("h", &["show", "--device-id", A, "--json"])
        .ok()
        .json();
    let current: Vec<&Value> = shown
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "active")
        .collect();
    assert_eq!(current.len(), 2, "{shown}");
    let mut new_serials: Vec<String> = Vec::new();
    for (i, c) in current.iter().enumerate() {
        assert_eq!(c["issuer_generation"], 2);
        new_serials.push(c["serial"].as_str().unwrap().to_string());
        let f = s.path(&format!("a-new-{i}.pem"));
        std::fs::write(&f, c["certificate"].as_str().unwrap()).unwrap();
    }
    new_serials.sort();
    for d in &METERS[..3] {
        let v = meter_accepts(&s, "upd-recertify", d, &s.path("h/ca/root.pem"));
        assert_eq!(crate::sorted(&v, "add", "serial"), new_serials, "{v}");
        // The same keys: removed, then added with their new certificates.
        let mut removed: Vec<&str> = v["remove_key_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        removed.sort();
        assert_eq!(removed, crate::sorted(&v, "add", "key_id"));
        meter_accepts(
            &s,
            "upd-recertify",
            d,
            &s.path("h/ca/generations/root-2.pem"),
        );
        let content = crate::rp::cms_verify(
            &s.path(&format!("upd-recertify/{d}.tamp.der")),
            &s.path("h/ca/root.pem"),
        );
        assert!(!content.is_empty());
    }
    let decoded = crate::rp::asn1_decode(&s.path(&format!("upd-recertify/{}.tamp.der", METERS[0])));
    assert_eq!(decoded["kind"], "update");
    valid.extend(["a-new-0.pem", "a-new-1.pem"]);
    // The trust-update signer was certified again by generation 2.
    assert_ne!(
        std::fs::read_to_string(s.path("h/ca/trust-update-signer.pem")).unwrap(),
        std::fs::read_to_string(&old_signer).unwrap()
    );
    valid.push("h/ca/trust-update-signer.pem");
    revoked.push("old-signer.pem");
    // A third run has nothing left to do.
    let again = recertify(&[]).ok().json();
    assert_eq!(again["operations"].as_array().unwrap().len(), 0, "{again}");
    check(&s, "organisation compromise recovered", &valid, &revoked);

    // 7. Root compromise: the contingency key of generation 3 signs the apex update that
    //    installs generation 4; the untrusted root's key is destroyed.
    let recovered = run(
        &s,
        &[
            "ceremony",
            "apex-recover",
            "--contingency-shares-dir",
            &p(&s.path("h-contingency-g4")),
            "--json",
        ],
        &[
            shares(&s, &[1, 3]),
            ["1", "3"]
                .iter()
                .flat_map(|i| {
                    [
                        "--contingency-share".to_string(),
                        p(&s.path(&format!("h-contingency-g3/officer-{i}.share"))),
                    ]
                })
                .collect(),
        ]
        .concat(),
    )
    .ok()
    .json();
    assert_eq!(recovered["root"]["generation"], 4);
    let v = apex_accepted(&s, &recovered, &s.path("h/ca/generations/root-3.pem"));
    assert_eq!(v["signed_by"], "contingency");
    check(&s, "root compromise recovered", &valid, &revoked);
}
