//! Root rollover (RFC 4210 §4.4): every certificate issued before validates under either root,
//! every one issued after too, through the link certificates and the issuing CAs certified
//! again under the new root; a CA revoked after the rollover fails under both.

use meterpki_tests::Scratch;

use crate::rp::{accepts, crls, refuses, x509_field};
use crate::{run, shares, EXE};

fn openssl_ok(args: &[&str]) {
    let r = meterpki_tests::tool("openssl", args, &[]);
    assert!(
        r.code == 0 && r.stdout.contains("OK"),
        "openssl {args:?}: {r:?}"
    );
}

#[test]
fn after_a_root_rollover_old_and_new_certificates_validate_under_either_root() {
    let s = Scratch::new(EXE);
    let port = s.ceremonies_with_crl_port("h", 3, 2, &["device", "organisation", "access"]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "m1.pem")
        .ok();
    let old_root_text = std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap();
    let old_device_text = std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap();

    // One share short: refused, nothing but the audit log's record of it changes.
    let mut before = s.snapshot();
    run(
        &s,
        &["ceremony", "root-rollover", "--contingency-shares-dir", "x"],
        &shares(&s, &[3]),
    )
    .fails(2, "share");
    let mut after = s.snapshot();
    before.remove("h/audit/audit.log");
    after.remove("h/audit/audit.log");
    assert_eq!(before, after);

    let contingency = s.path("h-contingency-g2").display().to_string();
    let out = run(
        &s,
        &[
            "ceremony",
            "root-rollover",
            "--contingency-shares-dir",
            &contingency,
            "--json",
        ],
        &shares(&s, &[1, 3]),
    )
    .ok()
    .json();
    assert_eq!(out["root"]["generation"], 2);
    assert_eq!(out["root"]["key"]["label"], "meterpki-root-ca-g2");
    // Where scripts find everything.
    let root = s.path("h/ca/root.pem");
    let old_root = s.path("h/ca/generations/root-1.pem");
    let new_with_old = s.path("h/ca/links/new-with-old.pem");
    let old_with_new = s.path("h/ca/links/old-with-new.pem");
    let device = s.path("h/ca/device.pem");
    let old_device = s.path("h/ca/generations/root-1/device.pem");
    assert_eq!(std::fs::read_to_string(&old_root).unwrap(), old_root_text);
    assert_eq!(
        std::fs::read_to_string(&old_device).unwrap(),
        old_device_text
    );
    // The root keeps its name (RFC 4210 §4.4): the link certificates are self-issued.
    assert_eq!(
        x509_field(&root, "subject"),
        x509_field(&old_root, "subject")
    );
    assert_ne!(
        std::fs::read_to_string(&root).unwrap(),
        old_root_text,
        "a new root certificate"
    );
    // The issuing CA keeps its name and key, under the new root.
    assert_eq!(
        x509_field(&device, "subject"),
        x509_field(&old_device, "subject")
    );
    assert_eq!(
        x509_field(&device, "issuer"),
        x509_field(&root, "subject").replace("subject", "issuer")
    );
    // The link certificates, each verified by openssl under the root that signed it.
    let p = |x: &std::path::Path| x.display().to_string();
    openssl_ok(&["verify", "-CAfile", &p(&old_root), &p(&new_with_old)]);
    openssl_ok(&["verify", "-CAfile", &p(&root), &p(&old_with_new)]);
    openssl_ok(&["verify", "-CAfile", &p(&root), &p(&root)]);
    assert_eq!(
        x509_field(&new_with_old, "subject"),
        x509_field(&root, "subject")
    );
    assert_eq!(
        x509_field(&old_with_new, "subject"),
        x509_field(&old_root, "subject")
    );

    // The apex update installing the new root in the meters, signed by the root they hold.
    let apex = std::path::PathBuf::from(out["apex_update"]["file"].as_str().unwrap());
    assert_eq!(apex, s.path("h/updates/apex-1.der"));
    let new_fp = out["root"]["certificate"]["sha256_fingerprint"].clone();
    let verified = crate::meter_verifies(&s, &apex, &old_root, &[]);
    assert_eq!(verified["kind"], "apex");
    assert_eq!(verified["seq"], 1);
    assert_eq!(verified["target"], "all meters");
    assert_eq!(verified["signed_by"], "apex");
    assert_eq!(verified["new_apex"]["sha256_fingerprint"], new_fp);
    // A meter holding the new root already, or having seen seq 1, refuses it.
    s.run("h", &["update", "verify", &p(&apex), "--root", &p(&root)])
        .fails(2, "not by this meter's apex trust anchor");
    s.run(
        "h",
        &[
            "update",
            "verify",
            &p(&apex),
            "--root",
            &p(&old_root),
            "--after",
            "1",
        ],
    )
    .fails(2, "not greater");
    // openssl verifies the CMS signature; pyasn1-modules decodes it strictly as RFC 5934's.
    let content = crate::rp::cms_verify(&apex, &old_root);
    // One altered byte in what is signed (the content) or in the signature: refused. (The
    // copy of the signing root in `certificates` is for openssl: a meter uses its own.)
    let bytes = std::fs::read(&apex).unwrap();
    let at_content = bytes
        .windows(content.len())
        .position(|w| w == content.as_slice())
        .unwrap();
    for at in [
        bytes.len() - 5,
        at_content + 12,
        at_content + content.len() / 2,
    ] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let f = s.path(&format!("apex-bad-{at}.der"));
        std::fs::write(&f, bad).unwrap();
        s.run("h", &["update", "verify", &p(&f), "--root", &p(&old_root)])
            .fails(2, "does not verify");
    }
    let decoded = crate::rp::asn1_decode(&apex);
    assert_eq!(decoded["kind"], "apex");
    assert_eq!(decoded["content_type"], "2.16.840.1.101.2.1.2.77.5");
    assert_eq!(decoded["seq"], 1);
    assert_eq!(decoded["target"], "allModules");
    assert_eq!(decoded["clear_trust_anchors"], false);
    assert_eq!(decoded["digest_algorithm"], "2.16.840.1.101.3.4.2.2");
    // The new root carries its own wrapped contingency key; its shares are where asked.
    assert_eq!(
        decoded["apex_wrapped_contingency_key"]["wrap_algorithm"],
        "2.16.840.1.101.3.4.1.48"
    );
    for i in 1..=3 {
        assert!(s
            .path(&format!("h-contingency-g2/officer-{i}.share"))
            .exists());
    }
    assert_eq!(decoded["signature_algorithm"], "1.2.840.10045.4.3.3");
    assert!(!content.is_empty());

    s.issue_one("h", "00-DB-12-34-56-78-90-02", None, "m2.pem")
        .ok();
    s.run("h", &["crl", "publish"]).ok();
    let crl = crls(&s, "h");
    assert!(
        crl.iter()
            .any(|c| c.display().to_string().contains("crl-root-g2-arl")),
        "the new root publishes its ARL: {crl:?}"
    );
    let (m1, m2) = (s.path("m1.pem"), s.path("m2.pem"));
    // A meter installed before: its own chain, under the old root.
    accepts(&old_root, std::slice::from_ref(&old_device), &crl, &m1);
    // Under the new root: through the re-certified Device CA, or through OldWithNew.
    accepts(&root, std::slice::from_ref(&device), &crl, &m1);
    accepts(
        &root,
        &[old_device.clone(), old_with_new.clone()],
        &crl,
        &m1,
    );
    // A certificate issued after, under the old root (NewWithOld) and the new.
    accepts(
        &old_root,
        &[device.clone(), new_with_old.clone()],
        &crl,
        &m2,
    );
    accepts(&root, std::slice::from_ref(&device), &crl, &m2);
    // The audit signer is certified again under the new root: the log still verifies.
    s.run("h", &["audit", "verify"]).ok();
    s.run("h", &["store", "check"]).ok();
    let status = s.run("h", &["status", "--json"]).ok().json();
    let r = status["cas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "root")
        .unwrap()
        .clone();
    assert_eq!(r["generation"], 2);
    assert_eq!(r["key_present"], true);

    // Relying parties fetch the link certificates and the previous root from the server's
    // plain-HTTP listener, as they fetch the CRLs.
    {
        let _srv =
            meterpki_tests::Server::start_with(&s, &["--crl-listen", &format!("127.0.0.1:{port}")]);
        for (name, file) in [
            ("new-with-old.pem", &new_with_old),
            ("old-with-new.pem", &old_with_new),
            ("root-1.pem", &old_root),
            ("root.pem", &root),
            ("root-2.pem", &root),
            ("device-1.pem", &s.path("h/ca/device.pem")),
        ] {
            let got = meterpki_tests::tool(
                "curl",
                &["-sf", &format!("http://127.0.0.1:{port}/ca/{name}")],
                &[],
            );
            assert_eq!(got.code, 0, "/ca/{name}: {got:?}");
            assert_eq!(got.stdout, std::fs::read_to_string(file).unwrap(), "{name}");
        }
        for name in ["root-3.pem", "root-01.pem", "device-0.pem", "links.pem"] {
            let got = meterpki_tests::tool(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://127.0.0.1:{port}/ca/{name}"),
                ],
                &[],
            );
            assert_eq!(got.stdout, "404", "/ca/{name}");
        }
    }

    // The same shares open the new root; the ARLs of both roots are re-signed.
    let out = run(
        &s,
        &["ceremony", "root-crl", "--json"],
        &shares(&s, &[2, 3]),
    )
    .ok()
    .json();
    let issuers: Vec<_> = out["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["issuer"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(issuers, ["root-g2", "root"]);

    // The Device CA revoked after the rollover: its certificates under both roots are listed,
    // and no path through either root stays open.
    let out = run(
        &s,
        &[
            "ceremony",
            "revoke-ca",
            "--kind",
            "device",
            "--reason",
            "cACompromise",
            "--json",
        ],
        &shares(&s, &[1, 2]),
    )
    .ok()
    .json();
    assert_eq!(out["status"], "revoked");
    let crl = crls(&s, "h");
    refuses(
        &old_root,
        std::slice::from_ref(&old_device),
        &crl,
        &m1,
        "revoked",
    );
    refuses(&root, std::slice::from_ref(&device), &crl, &m1, "revoked");
    refuses(&root, &[old_device, old_with_new], &crl, &m1, "revoked");
    refuses(
        &old_root,
        &[device.clone(), new_with_old],
        &crl,
        &m2,
        "revoked",
    );
    refuses(&root, &[device], &crl, &m2, "revoked");
    s.run("h", &["store", "check"]).ok();
    s.run("h", &["audit", "verify"]).ok();
}
