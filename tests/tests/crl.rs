//! Revocation and sharded CRLs end to end: the CLI on SoftHSM, every CRL checked by openssl
//! (`crl -CAfile`, `verify -crl_check`) and pkilint's CRL linter.

use std::collections::BTreeMap;

use meterpki_tests::{openssl_csr, tool, Run, Scratch};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn p(s: &Scratch, rel: &str) -> String {
    s.path(rel).display().to_string()
}

/// A home with `shards` CRL shards, the device and organisation CAs, and `n` meter certificates
/// from openssl CSRs; returns (device id, serial, shard, pem path) per certificate.
fn setup(shards: u32, n: usize) -> (Scratch, Vec<(String, String, u64, String)>) {
    let s = Scratch::new(EXE);
    s.run("h", &["init"]).ok();
    let cfg = std::fs::read_to_string(s.path("h/meterpki.toml")).unwrap();
    std::fs::write(
        s.path("h/meterpki.toml"),
        cfg.replace("shards = 16", &format!("shards = {shards}")),
    )
    .unwrap();
    s.run(
        "h",
        &[
            "ceremony",
            "root",
            "--officers",
            "3",
            "--quorum",
            "2",
            "--shares-dir",
            "h-shares",
        ],
    )
    .ok();
    for kind in ["device", "organisation"] {
        let (a, b) = (
            p(&s, "h-shares/officer-1.share"),
            p(&s, "h-shares/officer-2.share"),
        );
        s.run(
            "h",
            &[
                "ceremony",
                "issuing-ca",
                "--kind",
                kind,
                "--share",
                &a,
                "--share",
                &b,
            ],
        )
        .ok();
    }
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap(),
        std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap()
    );
    std::fs::write(s.path("chain.pem"), chain).unwrap();
    let mut certs = Vec::new();
    for i in 0..n {
        let id = format!("00-DB-12-34-56-78-90-{:02X}", i + 1);
        let (_, csr) = openssl_csr(&s.path(""), &format!("m{i}"), "prime256v1");
        let pem = p(&s, &format!("m{i}.pem"));
        let out = s
            .run(
                "h",
                &[
                    "issue",
                    "--profile",
                    "meter-signing",
                    "--device-id",
                    &id,
                    "--csr",
                    &csr.display().to_string(),
                    "--out",
                    &pem,
                    "--json",
                ],
            )
            .ok()
            .json();
        let shown = s
            .run(
                "h",
                &[
                    "show",
                    "--serial",
                    out["serial"].as_str().unwrap(),
                    "--json",
                ],
            )
            .ok()
            .json();
        certs.push((
            id,
            out["serial"].as_str().unwrap().to_string(),
            shown[0]["shard"].as_u64().unwrap(),
            pem,
        ));
    }
    (s, certs)
}

fn crl_pem(s: &Scratch, issuer: &str, scope: &str) -> String {
    let der = p(s, &format!("h/crl/{issuer}/{scope}.crl"));
    let pem = p(s, &format!("{issuer}-{scope}.crl.pem"));
    tool(
        "openssl",
        &["crl", "-in", &der, "-inform", "DER", "-out", &pem],
        &[],
    )
    .ok();
    pem
}

fn verify_with_crl(s: &Scratch, crl: &str, cert: &str) -> Run {
    tool(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            &p(s, "chain.pem"),
            "-CRLfile",
            crl,
            cert,
        ],
        &[],
    )
}

#[test]
fn openssl_rejects_a_revoked_certificate_and_accepts_its_shard_neighbour() {
    let (s, certs) = setup(2, 6);
    // Six certificates in two shards: one shard holds at least three.
    let mut by_shard: BTreeMap<u64, Vec<&(String, String, u64, String)>> = BTreeMap::new();
    for c in &certs {
        by_shard.entry(c.2).or_default().push(c);
    }
    let (shard, group) = by_shard.iter().max_by_key(|(_, v)| v.len()).unwrap();
    let (victim, neighbour) = (group[0], group[1]);
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            &victim.1,
            "--reason",
            "keyCompromise",
            "--invalidity-date",
            "2026-01-02T03:04:05Z",
        ],
    )
    .ok();
    let published = s
        .run("h", &["crl", "publish", "--full", "--json"])
        .ok()
        .json();
    let device: Vec<_> = published
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["issuer"] == "device")
        .collect();
    assert_eq!(device.len(), 3, "2 shards and the full CRL: {published}");

    for scope in ["0", "1", "full"] {
        let der = p(&s, &format!("h/crl/device/{scope}.crl"));
        let v = tool(
            "openssl",
            &[
                "crl",
                "-in",
                &der,
                "-inform",
                "DER",
                "-CAfile",
                &p(&s, "chain.pem"),
                "-noout",
            ],
            &[],
        );
        assert!(
            v.stderr.contains("verify OK") || v.stdout.contains("verify OK"),
            "{scope}: {} {}",
            v.stdout,
            v.stderr
        );
        let pem = crl_pem(&s, "device", scope);
        let lint = tool(
            &meterpki_tests::pkilint().replace("lint_pkix_cert", "lint_crl"),
            &["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", &pem],
            &[],
        );
        assert!(
            lint.stdout.trim().is_empty() && lint.code == 0,
            "pkilint on CRL {scope}: {}{}",
            lint.stdout,
            lint.stderr
        );
    }
    for scope in [shard.to_string(), "full".to_string()] {
        let pem = crl_pem(&s, "device", &scope);
        verify_with_crl(&s, &pem, &victim.3).fails(2, "certificate revoked");
        let ok = verify_with_crl(&s, &pem, &neighbour.3);
        assert_eq!(ok.code, 0, "{scope}: {} {}", ok.stdout, ok.stderr);
    }
    let text = tool(
        "openssl",
        &[
            "crl",
            "-in",
            &crl_pem(&s, "device", &shard.to_string()),
            "-noout",
            "-text",
        ],
        &[],
    )
    .ok()
    .stdout;
    assert!(text.contains("Version 2"), "{text}");
    assert!(
        text.contains("X509v3 Issuing Distribution Point: critical"),
        "{text}"
    );
    assert!(
        text.contains(&format!("URI:http://127.0.0.1:8080/crl/device/{shard}.crl")),
        "{text}"
    );
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(
        text.contains("Key Compromise") && text.contains("Invalidity Date"),
        "{text}"
    );
    assert!(text.contains(&victim.1.to_uppercase()), "{text}");
    // The certificate names the same URL as the shard's IDP.
    let cert_text = tool(
        "openssl",
        &["x509", "-in", &victim.3, "-noout", "-text"],
        &[],
    )
    .ok()
    .stdout;
    assert!(
        cert_text.contains(&format!("URI:http://127.0.0.1:8080/crl/device/{shard}.crl")),
        "{cert_text}"
    );

    // By device: every active certificate of the device, both usages; published at once.
    let (_, ka) = openssl_csr(&s.path(""), "ka", "prime256v1");
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-key-agreement",
            "--device-id",
            &neighbour.0,
            "--csr",
            &ka.display().to_string(),
        ],
    )
    .ok();
    let r = s
        .run(
            "h",
            &[
                "revoke",
                "--device-id",
                &neighbour.0,
                "--reason",
                "cessationOfOperation",
                "--publish",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(r["revoked"], 2, "{r}");
    assert!(!r["published"].as_array().unwrap().is_empty());
    let pem = crl_pem(&s, "device", &shard.to_string());
    verify_with_crl(&s, &pem, &neighbour.3).fails(2, "certificate revoked");

    // By supplier: every certificate of the supplier, in the organisation CA's CRLs.
    let (_, sc) = openssl_csr(&s.path(""), "sup", "prime256v1");
    s.supplier("h", "90-B3-D5-1F-30-00-00-02", "Example Energy");
    let sup_pem = p(&s, "sup.pem");
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "supplier-signing",
            "--entity-id",
            "90-B3-D5-1F-30-00-00-02",
            "--name",
            "Example Energy",
            "--csr",
            &sc.display().to_string(),
            "--out",
            &sup_pem,
        ],
    )
    .ok();
    let r = s
        .run(
            "h",
            &[
                "revoke",
                "--supplier",
                "90B3D51F30000002",
                "--reason",
                "affiliationChanged",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(r["revoked"], 1);
    s.run(
        "h",
        &["crl", "publish", "--issuer", "organisation", "--full"],
    )
    .ok();
    let org_chain = format!(
        "{}{}",
        std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap(),
        std::fs::read_to_string(s.path("h/ca/organisation.pem")).unwrap()
    );
    std::fs::write(s.path("org-chain.pem"), org_chain).unwrap();
    let full = crl_pem(&s, "organisation", "full");
    tool(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            &p(&s, "org-chain.pem"),
            "-CRLfile",
            &full,
            &sup_pem,
        ],
        &[],
    )
    .fails(2, "certificate revoked");
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn revocation_refusals_change_nothing_and_revoking_twice_is_harmless() {
    let (s, certs) = setup(2, 2);
    let (_, serial, _, _) = &certs[0];
    let before = s.snapshot();
    s.run("h", &["revoke", "--serial", serial, "--reason", "stolen"])
        .fails(2, "is not a revocation reason");
    s.run(
        "h",
        &["revoke", "--serial", serial, "--reason", "certificateHold"],
    )
    .fails(2, "revocation is final");
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            "0123456789abcdef01",
            "--reason",
            "keyCompromise",
        ],
    )
    .fails(2, "no certificate with serial 0123456789abcdef01");
    s.run(
        "h",
        &["revoke", "--serial", "zz", "--reason", "keyCompromise"],
    )
    .fails(2, "not hex");
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            serial,
            "--reason",
            "keyCompromise",
            "--invalidity-date",
            "2999-01-01T00:00:00Z",
        ],
    )
    .fails(2, "in the future");
    // Whole seconds only (a CRL's invalidityDate has none), and end-entity reasons only.
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            serial,
            "--reason",
            "keyCompromise",
            "--invalidity-date",
            "2026-01-01T00:00:00.5Z",
        ],
    )
    .fails(2, "whole seconds");
    for reason in ["cACompromise", "aACompromise"] {
        s.run("h", &["revoke", "--serial", serial, "--reason", reason])
            .fails(2, "is not a reason for an end-entity certificate");
    }
    // The Device CA's own certificate through the end-entity path.
    let ca_text = tool(
        "openssl",
        &[
            "x509",
            "-in",
            &p(&s, "h/ca/device.pem"),
            "-noout",
            "-serial",
        ],
        &[],
    )
    .ok()
    .stdout;
    let ca_serial = ca_text.trim().trim_start_matches("serial=").to_lowercase();
    s.run(
        "h",
        &[
            "revoke",
            "--serial",
            &ca_serial,
            "--reason",
            "keyCompromise",
        ],
    )
    .fails(2, "the device CA's own certificate");
    assert_eq!(s.snapshot(), before, "refused revocations changed nothing");

    let first = s
        .run(
            "h",
            &[
                "revoke",
                "--serial",
                serial,
                "--reason",
                "superseded",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(first["revoked"], 1);
    let again = s
        .run(
            "h",
            &[
                "revoke",
                "--serial",
                serial,
                "--reason",
                "keyCompromise",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(again["already_revoked"], 1);
    assert_eq!(again["results"][0]["status"], "already-revoked");
    assert_eq!(
        again["results"][0]["reason"], "superseded",
        "the first revocation stands"
    );
    // A revoked device may get a new certificate without `replace`.
    let (_, csr) = openssl_csr(&s.path(""), "new", "prime256v1");
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            &certs[0].0,
            "--csr",
            &csr.display().to_string(),
        ],
    )
    .ok();
}

fn crl_number(s: &Scratch, scope: &str) -> u64 {
    let text = tool(
        "openssl",
        &[
            "crl",
            "-in",
            &crl_pem(s, "device", scope),
            "-noout",
            "-text",
        ],
        &[],
    )
    .ok()
    .stdout;
    let line = text
        .lines()
        .skip_while(|l| !l.contains("CRL Number"))
        .nth(1)
        .unwrap();
    line.trim().parse().unwrap()
}

fn file_hash(path: &std::path::Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn crl_numbers_only_grow_across_restarts_hsm_failures_and_crashes() {
    let (s, _) = setup(2, 1);
    s.run("h", &["crl", "publish"]).ok();
    assert_eq!(crl_number(&s, "0"), 1);
    s.run("h", &["crl", "publish"]).ok();
    assert_eq!(crl_number(&s, "0"), 2);

    // The HSM unreachable: a clear error, the previous CRLs in place, no number consumed.
    let cfg_path = s.path("h/meterpki.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let module = cfg
        .lines()
        .find(|l| l.starts_with("module"))
        .unwrap()
        .to_string();
    std::fs::write(
        &cfg_path,
        cfg.replace(&module, "module = \"/nonexistent/libhsm.so\""),
    )
    .unwrap();
    let before = file_hash(&s.path("h/crl/device/0.crl"));
    s.run("h", &["crl", "publish"])
        .fails(2, "cannot load PKCS#11 module /nonexistent/libhsm.so");
    assert_eq!(file_hash(&s.path("h/crl/device/0.crl")), before);
    std::fs::write(&cfg_path, &cfg).unwrap();
    s.run("h", &["crl", "publish"]).ok();
    assert_eq!(
        crl_number(&s, "0"),
        3,
        "the failed attempt consumed no number"
    );

    // A failure after signing, before the rename (the target cannot be replaced): the number
    // was recorded, so the next publication goes strictly higher and writes a valid file.
    let shard0 = s.path("h/crl/device/0.crl");
    std::fs::remove_file(&shard0).unwrap();
    std::fs::create_dir(&shard0).unwrap();
    s.run("h", &["crl", "publish"]).fails(1, "0.crl");
    std::fs::remove_dir(&shard0).unwrap();
    s.run("h", &["crl", "publish"]).ok();
    let n = crl_number(&s, "0");
    assert!(
        n > 4,
        "strictly greater than the number signed before the failure: {n}"
    );
    let v = tool(
        "openssl",
        &[
            "crl",
            "-in",
            &shard0.display().to_string(),
            "-inform",
            "DER",
            "-CAfile",
            &p(&s, "chain.pem"),
            "-noout",
        ],
        &[],
    );
    assert!(v.stderr.contains("verify OK") || v.stdout.contains("verify OK"));
    // Shard 1 was never disturbed: its numbers went 1, 2, 3, 4, 5 with each publication that reached it.
    assert!(crl_number(&s, "1") >= 4);
}

#[test]
fn shards_are_fixed_once_certificates_exist_and_a_certificate_keeps_its_shard() {
    let (s, certs) = setup(4, 3);
    for (id, serial, shard, pem) in &certs {
        let text = tool("openssl", &["x509", "-in", pem, "-noout", "-text"], &[])
            .ok()
            .stdout;
        assert!(text.contains(&format!("/crl/device/{shard}.crl")), "{text}");
        // Asked again in another process: the same shard.
        let shown = s
            .run("h", &["show", "--device-id", id, "--json"])
            .ok()
            .json();
        assert_eq!(shown[0]["serial"], serial.as_str());
        assert_eq!(shown[0]["shard"].as_u64(), Some(*shard));
    }
    let cfg_path = s.path("h/meterpki.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("shards = 4", "shards = 8")).unwrap();
    let (_, csr) = openssl_csr(&s.path(""), "x", "prime256v1");
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            "00-DB-00-00-00-00-00-99",
            "--csr",
            &csr.display().to_string(),
        ],
    )
    .fails(
        2,
        "crl.shards is 8 in meterpki.toml, but certificates are bound to 4 shards",
    );
    s.run("h", &["crl", "publish"])
        .fails(2, "bound to 4 shards");
}
