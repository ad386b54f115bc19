//! Recovery after a root compromise (RFC 5934 §4.5): every root carries its contingency key
//! wrapped in id-pe-wrappedApexContinKey; `ceremony apex-recover` installs a new root with an
//! apex update signed by that key and carrying its decryption key, which a meter holding the
//! old root accepts without trusting the old root key.

use meterpki_tests::Scratch;

use crate::rp::{accepts, asn1_decode, crls};
use crate::EXE;

fn args(s: &Scratch, flag: &str, dir: &str, n: &[u8]) -> Vec<String> {
    n.iter()
        .flat_map(|i| {
            [
                flag.to_string(),
                s.path(&format!("{dir}/officer-{i}.share"))
                    .display()
                    .to_string(),
            ]
        })
        .collect()
}

#[test]
fn a_compromised_root_is_replaced_by_an_apex_update_signed_with_its_contingency_key() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "m1.pem")
        .ok();
    let root = s.path("h/ca/root.pem");
    let text = meterpki_tests::tool(
        "openssl",
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            &root.display().to_string(),
        ],
        &[],
    )
    .ok()
    .stdout;
    assert!(text.contains("1.3.6.1.5.5.7.1.20"), "{text}");
    for i in 1..=3 {
        assert!(s
            .path(&format!("h-shares/contingency/officer-{i}.share"))
            .exists());
    }
    let p = |x: &std::path::Path| x.display().to_string();
    // A rollover first (generation 2, its contingency shares apart), so that the recovery
    // also has an earlier link to cut.
    let mut a: Vec<String> = vec![
        "ceremony".into(),
        "root-rollover".into(),
        "--contingency-shares-dir".into(),
        p(&s.path("h-contingency-g2")),
    ];
    a.extend(args(&s, "--share", "h-shares", &[1, 2]));
    s.run("h", &a.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    let link = std::fs::read_to_string(s.path("h/ca/links/new-with-old.pem")).unwrap();
    // The contingency folder may not be a root shares' folder.
    let mut a: Vec<String> = vec![
        "ceremony".into(),
        "root-rollover".into(),
        "--contingency-shares-dir".into(),
        p(&s.path("h-shares")),
    ];
    a.extend(args(&s, "--share", "h-shares", &[1, 2]));
    s.run("h", &a.iter().map(String::as_str).collect::<Vec<_>>())
        .fails(2, "contingency-shares-dir");
    let recover = |root_shares: &[u8], cont: Vec<String>, more: &[&str]| {
        let mut a: Vec<String> = vec![
            "ceremony".into(),
            "apex-recover".into(),
            "--contingency-shares-dir".into(),
            p(&s.path("h-contingency-g3")),
        ];
        a.extend(args(&s, "--share", "h-shares", root_shares));
        a.extend(cont);
        a.extend(more.iter().map(|m| m.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        s.run("h", &a)
    };
    // Refused, nothing changed but the audit log's refusal records: root shares given as
    // contingency shares, and one contingency share short.
    let mut before = s.snapshot();
    recover(
        &[1, 2],
        args(&s, "--contingency-share", "h-shares", &[1, 2]),
        &[],
    )
    .fails(2, "share");
    recover(
        &[1, 2],
        args(&s, "--contingency-share", "h-contingency-g2", &[3]),
        &[],
    )
    .fails(2, "share");
    // The first root's contingency shares do not open generation 2's contingency key.
    recover(
        &[1, 2],
        args(&s, "--contingency-share", "h-shares/contingency", &[1, 2]),
        &[],
    )
    .fails(2, "share");
    // A recovery reaches every meter (the untrusted key is destroyed after it): it takes no
    // device type.
    recover(
        &[1, 2],
        args(&s, "--contingency-share", "h-contingency-g2", &[1, 2]),
        &["--hw-type", "1.3.6.1.4.1.32473.9.9"],
    )
    .fails(2, "--hw-type");
    let mut after = s.snapshot();
    before.remove("h/audit/audit.log");
    after.remove("h/audit/audit.log");
    assert_eq!(before, after);

    let out = recover(
        &[1, 3],
        args(&s, "--contingency-share", "h-contingency-g2", &[2, 3]),
        &["--json"],
    )
    .ok()
    .json();
    assert_eq!(out["root"]["generation"], 3);
    let destroyed: Vec<_> = audit_details(&s, "ceremony.apex-recover.destroyed")["destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        destroyed,
        ["meterpki-root-ca-g2", "meterpki-root-ca-g2-contingency"]
    );
    // No link certificate to or from a root that is no longer trusted: the earlier links
    // are withdrawn from ca/links/ and kept with generation 2's certificates.
    for name in ["new-with-old.pem", "old-with-new.pem"] {
        assert!(!s.path(&format!("h/ca/links/{name}")).exists(), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(s.path("h/ca/generations/root-2/new-with-old.pem")).unwrap(),
        link
    );
    assert_eq!(out["old_with_new"]["made"], false);
    let old_root = s.path("h/ca/generations/root-2.pem");
    let apex = std::path::PathBuf::from(out["apex_update"]["file"].as_str().unwrap());
    let v = crate::meter_verifies(&s, &apex, &old_root, &[]);
    assert_eq!(v["signed_by"], "contingency");
    assert_eq!(
        v["new_apex"]["sha256_fingerprint"],
        out["root"]["certificate"]["sha256_fingerprint"]
    );
    // A meter already holding the new root does not take it; one altered byte of the
    // decryption key it carries (the message's last bytes): refused.
    s.run("h", &["update", "verify", &p(&apex), "--root", &p(&root)])
        .fails(2, "does not verify");
    let mut bad = std::fs::read(&apex).unwrap();
    let n = bad.len();
    bad[n - 3] ^= 0x01;
    let bad_path = s.path("apex-bad.der");
    std::fs::write(&bad_path, bad).unwrap();
    s.run(
        "h",
        &["update", "verify", &p(&bad_path), "--root", &p(&old_root)],
    )
    .fails(2, "contingency");
    // pyasn1-modules decodes it strictly: the decryption key as RFC 5934's unsigned attribute.
    let d = asn1_decode(&apex);
    assert_eq!(d["kind"], "apex");
    assert_eq!(d["certificates"], 0);
    assert_eq!(
        d["unsigned_attributes"][0]["type"],
        "2.16.840.1.101.2.1.5.63"
    );
    assert_eq!(d["unsigned_attributes"][0]["decrypt_key_bytes"], 32);
    assert!(d["apex_wrapped_contingency_key"].is_object(), "{d}");

    // The hierarchy goes on under the new root: the meter issued before, and one issued now.
    s.issue_one("h", "00-DB-12-34-56-78-90-02", None, "m2.pem")
        .ok();
    s.run("h", &["crl", "publish"]).ok();
    let device = s.path("h/ca/device.pem");
    let crl = crls(&s, "h");
    accepts(
        &root,
        std::slice::from_ref(&device),
        &crl,
        &s.path("m1.pem"),
    );
    accepts(
        &root,
        std::slice::from_ref(&device),
        &crl,
        &s.path("m2.pem"),
    );
    // Only the new root's ARL is signed from now on: the old key is gone.
    let out = s
        .run(
            "h",
            &[
                "ceremony",
                "root-crl",
                "--share",
                &p(&s.share("h", 2)),
                "--share",
                &p(&s.share("h", 3)),
                "--json",
            ],
        )
        .ok()
        .json();
    let issuers: Vec<_> = out["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["issuer"].as_str().unwrap().to_string())
        .collect();
    // The new root's ARL, and the first root's (its key is kept); generation 2's key is gone.
    assert_eq!(issuers, ["root-g3", "root"]);
    // The earlier link that certified the untrusted key (NewWithOld, generation 2 under
    // generation 1) is revoked in the first root's ARL: no path from it to the untrusted key.
    crate::rp::refuses(
        &s.path("h/ca/generations/root-1.pem"),
        &[],
        &crls(&s, "h"),
        &s.path("h/ca/generations/root-2/new-with-old.pem"),
        "revoked",
    );
    s.run("h", &["audit", "verify"]).ok();
    s.run("h", &["store", "check"]).ok();
}

/// The details of the one audit record of `event` in the home `h`.
fn audit_details(s: &Scratch, event: &str) -> serde_json::Value {
    let found: Vec<serde_json::Value> = std::fs::read_to_string(s.path("h/audit/audit.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == event)
        .collect();
    assert_eq!(found.len(), 1, "{event}: {found:?}");
    found[0]["details"].clone()
}
