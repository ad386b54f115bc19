//! API accounts: client certificates from the Access CA, checked by openssl and pkilint; bad
//! input refused with nothing changed; a disabled account's certificate revoked in the CRL.

use meterpki_tests::{openssl_csr, pkilint, tool, Scratch};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn p(s: &Scratch, rel: &str) -> String {
    s.path(rel).display().to_string()
}

#[test]
fn accounts_get_client_certificates_and_disabling_revokes_them() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["access"]);
    let root = p(&s, "h/ca/root.pem");
    let access = p(&s, "h/ca/access.pem");
    s.account(
        "h",
        "factory",
        "line-7",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    s.supplier("h", "90b3d51f30000002", "Example Energy");
    s.account(
        "h",
        "supplier",
        "example-energy",
        &["--supplier", "90b3d51f30000002"],
    );
    let (_, csr) = openssl_csr(&s.path(""), "ops", "prime256v1");
    s.run(
        "h",
        &[
            "account",
            "add",
            "--role",
            "operator",
            "--name",
            "ops-1",
            "--csr",
            &csr.display().to_string(),
            "--out",
            "creds",
        ],
    )
    .ok();
    assert!(
        !s.path("creds/ops-1.key").exists(),
        "no key file when the client brought a CSR"
    );

    use std::os::unix::fs::PermissionsExt;
    for name in ["line-7", "example-energy"] {
        let mode = std::fs::metadata(s.path(&format!("creds/{name}.key")))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}.key");
    }
    for (name, role) in [
        ("line-7", "factory"),
        ("example-energy", "supplier"),
        ("ops-1", "operator"),
    ] {
        let pem = p(&s, &format!("creds/{name}.pem"));
        let v = tool(
            "openssl",
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                "sslclient",
                "-CAfile",
                &root,
                "-untrusted",
                &access,
                &pem,
            ],
            &[],
        );
        assert_eq!(v.code, 0, "{name}: {} {}", v.stdout, v.stderr);
        let text = tool("openssl", &["x509", "-in", &pem, "-noout", "-text"], &[])
            .ok()
            .stdout;
        assert!(
            text.contains(&format!("Subject: CN = {name}, OU = {role}")),
            "{text}"
        );
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        // A subjectAltName for verifiers that want one on every certificate.
        assert!(
            text.contains(&format!("URI:https://accounts.meterpki.invalid/{name}")),
            "{text}"
        );
        // The credential file holds the certificate and the Access CA: lint the leaf alone.
        let leaf = p(&s, &format!("{name}.leaf.pem"));
        tool("openssl", &["x509", "-in", &pem, "-out", &leaf], &[]).ok();
        let lint = tool(&pkilint(), &["lint", "-s", "WARNING", &leaf], &[]);
        assert!(
            lint.code == 0 && lint.stdout.trim().is_empty(),
            "pkilint {name} (exit {}): {}{}",
            lint.code,
            lint.stdout,
            lint.stderr
        );
    }
    // The key file matches the certificate.
    let k = tool(
        "openssl",
        &["pkey", "-in", &p(&s, "creds/line-7.key"), "-pubout"],
        &[],
    )
    .ok()
    .stdout;
    let c = tool(
        "openssl",
        &[
            "x509",
            "-in",
            &p(&s, "creds/line-7.pem"),
            "-noout",
            "-pubkey",
        ],
        &[],
    )
    .ok()
    .stdout;
    assert_eq!(k, c);
    // ca.pem lets a client trust a server certificate from the Access CA.
    let ca = std::fs::read_to_string(s.path("creds/ca.pem")).unwrap();
    assert!(ca.contains(&std::fs::read_to_string(&root).unwrap()));

    let list = s.run("h", &["account", "list", "--json"]).ok().json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["example-energy", "line-7", "ops-1"]);
    assert_eq!(list[1]["device_range"], "00-DB-12-00-00-00-00-00/24");
    assert_eq!(list[0]["supplier"], "90-B3-D5-1F-30-00-00-02");

    // Disable: the certificate is revoked and the Access CA's CRL says so.
    let d = s
        .run("h", &["account", "disable", "--name", "line-7", "--json"])
        .ok()
        .json();
    let shard = d["published"][0]["scope"].as_str().unwrap().to_string();
    let crl = p(&s, "access.crl.pem");
    tool(
        "openssl",
        &[
            "crl",
            "-in",
            &p(&s, &format!("h/crl/access/{shard}.crl")),
            "-inform",
            "DER",
            "-out",
            &crl,
        ],
        &[],
    )
    .ok();
    let chain = p(&s, "access-chain.pem");
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            std::fs::read_to_string(&root).unwrap(),
            std::fs::read_to_string(&access).unwrap()
        ),
    )
    .unwrap();
    tool(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            &chain,
            "-CRLfile",
            &crl,
            &p(&s, "creds/line-7.pem"),
        ],
        &[],
    )
    .fails(2, "certificate revoked");
    let list = s.run("h", &["account", "list", "--json"]).ok().json();
    assert_eq!(list[1]["disabled"], true);
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn bad_account_requests_change_nothing() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    let before = s.snapshot();
    s.run(
        "h",
        &[
            "account",
            "add",
            "--role",
            "factory",
            "--name",
            "l1",
            "--device-range",
            "00-DB-12-00-00-00-00-00/24",
            "--out",
            "c",
        ],
    )
    .fails(2, "no Access CA yet");
    assert_eq!(s.snapshot(), before);
    let (a, b) = (
        s.share("h", 1).display().to_string(),
        s.share("h", 2).display().to_string(),
    );
    s.run(
        "h",
        &[
            "ceremony",
            "issuing-ca",
            "--kind",
            "access",
            "--share",
            &a,
            "--share",
            &b,
        ],
    )
    .ok();
    s.run(
        "h",
        &[
            "account",
            "add",
            "--role",
            "factory",
            "--name",
            "l1",
            "--device-range",
            "00-DB-12-00-00-00-00-00/24",
            "--out",
            "c",
        ],
    )
    .ok();
    let before = s.snapshot();
    let accounts_before = s.run("h", &["account", "list", "--json"]).ok().stdout;
    let certs_before = s.run("h", &["status", "--json"]).ok().json()["certificates"].clone();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--role", "factory", "--name", "l2", "--out", "c"],
            "needs --device-range",
        ),
        (
            vec![
                "--role",
                "factory",
                "--name",
                "l2",
                "--device-range",
                "00-DB-12-00-00-00-00-01/24",
                "--out",
                "c",
            ],
            "bits set beyond",
        ),
        (
            vec!["--role", "supplier", "--name", "s1", "--out", "c"],
            "needs --supplier",
        ),
        (
            vec![
                "--role",
                "supplier",
                "--name",
                "s1",
                "--supplier",
                "90-B3",
                "--out",
                "c",
            ],
            "--supplier",
        ),
        (
            vec![
                "--role",
                "operator",
                "--name",
                "o1",
                "--device-range",
                "00-DB-12-00-00-00-00-00/24",
                "--out",
                "c",
            ],
            "factory accounts only",
        ),
        (
            vec!["--role", "admin", "--name", "o1", "--out", "c"],
            "not a role",
        ),
        (
            vec!["--role", "operator", "--name", "../o1", "--out", "c"],
            "names files",
        ),
        // `ca` would overwrite its own certificate with the trust chain, <out>/ca.pem.
        (
            vec!["--role", "operator", "--name", "ca", "--out", "c"],
            "is reserved",
        ),
        (
            vec![
                "--role",
                "factory",
                "--name",
                "l1",
                "--device-range",
                "00-DB-12-00-00-00-00-00/24",
                "--out",
                "c",
            ],
            "already exists",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["account", "add"];
        full.extend(args);
        s.run("h", &full).fails(2, needle);
        assert_eq!(s.snapshot(), before, "{needle}: nothing changed");
        assert_eq!(
            s.run("h", &["account", "list", "--json"]).ok().stdout,
            accounts_before
        );
        assert_eq!(
            s.run("h", &["status", "--json"]).ok().json()["certificates"],
            certs_before
        );
    }
    s.run("h", &["account", "disable", "--name", "nobody"])
        .fails(2, "no account named");
}
