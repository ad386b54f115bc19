//! A meter's chain outlives today's CA end dates, and a renewed Device CA: a new generation
//! with its own key, name and CRLs; the previous one keeps signing the CRL of what it issued at
//! the unchanged URL, and can itself be revoked in the ARL.

use meterpki_tests::Scratch;

use crate::rp::{accepts, crls, refuses, serial, unix, verify, x509_field};
use crate::{run, shares, EXE};

/// The chain a meter installed today holds (root, Device CA, its own certificate) still
/// validates in 2045, after the date today's 15-year Device CAs would have ended, because the
/// Device CA and the root have no end date (notAfter 99991231235959Z, as the meter's own);
/// the Organisation CA, whose suppliers renew, keeps a fixed lifetime.
#[test]
fn a_meter_chain_validates_for_the_meters_whole_life() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "m.pem")
        .ok();
    let (root, device, org) = (
        s.path("h/ca/root.pem"),
        s.path("h/ca/device.pem"),
        s.path("h/ca/organisation.pem"),
    );
    for cert in [&root, &device, &s.path("m.pem")] {
        assert_eq!(
            x509_field(cert, "enddate"),
            "notAfter=Dec 31 23:59:59 9999 GMT",
            "{}",
            cert.display()
        );
    }
    assert_ne!(
        x509_field(&org, "enddate"),
        "notAfter=Dec 31 23:59:59 9999 GMT"
    );
    for year in ["2045-06-01", "2060-01-01"] {
        let r = verify(
            &root,
            std::slice::from_ref(&device),
            &[],
            Some(unix(year)),
            &s.path("m.pem"),
        );
        assert!(r.code == 0 && r.stdout.contains("OK"), "{year}: {r:?}");
    }
    // And with every CRL checked today.
    s.run("h", &["crl", "publish"]).ok();
    accepts(
        &root,
        std::slice::from_ref(&device),
        &crls(&s, "h"),
        &s.path("m.pem"),
    );
}

#[test]
fn a_renewed_device_ca_issues_as_generation_two_while_generation_one_keeps_its_crls() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "m1.pem")
        .ok();
    let gen1 = std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap();

    // Refused, changing nothing: fewer shares than the quorum (only the audit log's record of
    // the refused share is new); a CA that does not exist yet; no --renew.
    let mut before = s.snapshot();
    run(
        &s,
        &["ceremony", "issuing-ca", "--kind", "device", "--renew"],
        &shares(&s, &[1]),
    )
    .fails(2, "share");
    let mut after = s.snapshot();
    assert!(s
        .run("h", &["audit", "list", "--json"])
        .stdout
        .contains("ceremony.share-refused"));
    before.remove("h/audit/audit.log");
    after.remove("h/audit/audit.log");
    assert_eq!(after, before);
    let before = s.snapshot();
    run(
        &s,
        &["ceremony", "issuing-ca", "--kind", "access", "--renew"],
        &shares(&s, &[1, 2]),
    )
    .fails(2, "no access CA to renew");
    run(
        &s,
        &["ceremony", "issuing-ca", "--kind", "device"],
        &shares(&s, &[1, 2]),
    )
    .fails(2, "--renew");
    assert_eq!(s.snapshot(), before, "a refused renewal changes nothing");

    let out = run(
        &s,
        &[
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--renew",
            "--json",
        ],
        &shares(&s, &[2, 3]),
    )
    .ok()
    .json();
    assert_eq!(out["generation"], 2);
    assert_eq!(out["key"]["label"], "meterpki-device-ca-g2");
    // The previous generation kept where scripts look for it; the new one has a name of its own.
    let old = s.path("h/ca/generations/device-1.pem");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), gen1);
    let device = s.path("h/ca/device.pem");
    let subject = x509_field(&device, "subject");
    assert!(subject.ends_with(" G2"), "{subject}");
    let root = s.path("h/ca/root.pem");
    let both = vec![old.clone(), device.clone()];

    // A renewal stopped after its audit record, between its two renames (the previous
    // certificate copied, the new one not in place): generation 1 is still current, and the
    // ceremony run again finishes it from the store's record, making no second key.
    let gen2 = std::fs::read_to_string(&device).unwrap();
    std::fs::write(&device, &gen1).unwrap();
    let status = s.run("h", &["status", "--json"]).ok().json();
    assert!(status.to_string().contains("\"generation\":1"), "{status}");
    let out = run(
        &s,
        &[
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--renew",
            "--json",
        ],
        &shares(&s, &[1, 2]),
    )
    .ok()
    .json();
    assert!(
        out["finished"]
            .as_str()
            .unwrap()
            .contains("interrupted renewal"),
        "{out}"
    );
    assert_eq!(out["generation"], 2);
    assert_eq!(std::fs::read_to_string(&device).unwrap(), gen2);

    // New issuance comes from generation 2, with CRL pointers of its own.
    s.issue_one("h", "00-DB-12-34-56-78-90-02", None, "m2.pem")
        .ok();
    let (m1, m2) = (s.path("m1.pem"), s.path("m2.pem"));
    assert_eq!(
        x509_field(&m2, "issuer"),
        subject.replace("subject", "issuer")
    );
    let cdp = |c: &std::path::Path| {
        meterpki_tests::tool(
            "openssl",
            &[
                "x509",
                "-noout",
                "-ext",
                "crlDistributionPoints",
                "-in",
                &c.display().to_string(),
            ],
            &[],
        )
        .ok()
        .stdout
    };
    assert!(cdp(&m2).contains("/crl/device-g2/"), "{}", cdp(&m2));
    assert!(cdp(&m1).contains("/crl/device/"), "{}", cdp(&m1));
    for (cert, generation) in [(&m1, 1), (&m2, 2)] {
        let shown = s
            .run("h", &["show", "--serial", &serial(cert), "--json"])
            .ok()
            .json();
        assert_eq!(shown[0]["issuer_generation"], generation);
    }
    let status = s.run("h", &["status", "--json"]).ok().json();
    let dev = status["cas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "device")
        .unwrap()
        .clone();
    assert_eq!(dev["generation"], 2);
    let names: Vec<_> = dev["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("device".to_string(), false),
            ("device-g2".to_string(), true)
        ]
    );

    // Revoking a generation-1 meter: its CRL, at its unchanged URL, is signed by the
    // generation-1 key; generation 2's meters are untouched.
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            &serial(&m1),
            "--reason",
            "keyCompromise",
        ],
    )
    .ok();
    s.run("h", &["crl", "publish"]).ok();
    let crl = crls(&s, "h");
    assert!(
        crl.iter()
            .any(|c| c.display().to_string().contains("crl-device-g2-")),
        "generation 2 publishes its own CRLs: {crl:?}"
    );
    let d1 = crl
        .iter()
        .find(|c| c.display().to_string().contains("crl-device-full"))
        .unwrap();
    let signed = meterpki_tests::tool(
        "openssl",
        &[
            "crl",
            "-in",
            &d1.display().to_string(),
            "-CAfile",
            &old.display().to_string(),
            "-noout",
        ],
        &[],
    );
    assert!(
        format!("{}{}", signed.stdout, signed.stderr).contains("verify OK"),
        "{signed:?}"
    );
    refuses(&root, &both, &crl, &m1, "certificate revoked");
    accepts(&root, &both, &crl, &m2);

    // Generation 1 itself revoked in the ARL (superseded): what it issued stops validating,
    // generation 2 and its meters do not. A generation that does not exist is refused by name.
    let before = s.snapshot();
    run(
        &s,
        &[
            "ceremony",
            "revoke-ca",
            "--kind",
            "device",
            "--generation",
            "3",
            "--reason",
            "superseded",
        ],
        &shares(&s, &[1, 2]),
    )
    .fails(2, "no generation 3");
    assert_eq!(s.snapshot(), before);
    s.issue_one("h", "00-DB-12-34-56-78-90-03", None, "m3.pem")
        .ok();
    let out = run(
        &s,
        &[
            "ceremony",
            "revoke-ca",
            "--kind",
            "device",
            "--generation",
            "1",
            "--reason",
            "superseded",
            "--json",
        ],
        &shares(&s, &[1, 3]),
    )
    .ok()
    .json();
    assert_eq!(out["name"], "device");
    let arl = s.arl_linted("h");
    assert!(arl.contains(&serial(&old).to_uppercase()), "{arl}");
    let crl = crls(&s, "h");
    refuses(&root, &both, &crl, &m1, "revoked");
    accepts(&root, &both, &crl, &m2);
    accepts(&root, &both, &crl, &s.path("m3.pem"));
    // Issuance goes on under generation 2.
    s.issue_one("h", "00-DB-12-34-56-78-90-04", None, "m4.pem")
        .ok();
    accepts(&root, &both, &crls(&s, "h"), &s.path("m4.pem"));
    s.run("h", &["store", "check"]).ok();
    s.run("h", &["audit", "verify"]).ok();
}
