//! Ceremonies end to end: the real CLI on a real SoftHSM token, checked with openssl and
//! pkcs11-tool. Every refused command is checked to have changed nothing.

use meterpki_tests::{softhsm_module, tool, Scratch};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

#[test]
fn full_hierarchy_verifies_with_openssl_and_keys_are_sensitive() {
    let s = Scratch::new(EXE);
    s.run("h", &["init"]).ok();
    let root = s
        .run(
            "h",
            &[
                "ceremony",
                "root",
                "--officers",
                "5",
                "--quorum",
                "3",
                "--shares-dir",
                "shares",
                "--officer",
                "alice",
                "--officer",
                "bob",
                "--officer",
                "carol",
                "--officer",
                "dave",
                "--officer",
                "erin",
                "--operator",
                "officer-of-the-day",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(root["quorum"], 3);
    assert_eq!(root["root_key"]["algorithm"], "EC P-384");
    // Three different quorums open the root token for the three issuing CAs.
    for (kind, who) in [
        ("device", ["alice", "bob", "carol"]),
        ("organisation", ["erin", "carol", "alice"]),
        ("access", ["dave", "erin", "bob"]),
    ] {
        let mut args = vec!["ceremony", "issuing-ca", "--kind", kind];
        let files: Vec<String> = who
            .iter()
            .map(|w| s.path(&format!("shares/{w}.share")).display().to_string())
            .collect();
        for f in &files {
            args.push("--share");
            args.push(f);
        }
        s.run("h", &args).ok();
    }

    let root_pem = s.path("h/ca/root.pem").display().to_string();
    for kind in ["device", "organisation", "access"] {
        let pem = s.path(&format!("h/ca/{kind}.pem")).display().to_string();
        let r = tool(
            "openssl",
            &["verify", "-x509_strict", "-CAfile", &root_pem, &pem],
            &[],
        );
        assert_eq!(
            r.code, 0,
            "openssl verify {kind}: {} {}",
            r.stdout, r.stderr
        );
        let text = tool("openssl", &["x509", "-in", &pem, "-noout", "-text"], &[])
            .ok()
            .stdout;
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("ASN1 OID: prime256v1"), "{text}");
        // Relying parties that check revocation and policy down the whole path: a pointer at
        // the root's ARL, and the policies of what the CA issues.
        assert!(
            text.contains("URI:http://127.0.0.1:8080/crl/root/arl.crl"),
            "{text}"
        );
        assert!(text.contains("X509v3 Certificate Policies"), "{text}");
        if kind == "device" {
            assert!(
                text.contains("Policy: 1.3.6.1.4.1.32473.1.1")
                    && text.contains("Policy: 1.3.6.1.4.1.32473.1.2"),
                "{text}"
            );
        }
        let lint = tool(
            &meterpki_tests::pkilint(),
            &["lint", "-s", "WARNING", &pem],
            &[],
        );
        assert_eq!(lint.code, 0, "{} {}", lint.stdout, lint.stderr);
        assert!(
            lint.stdout.trim().is_empty(),
            "pkilint on the {kind} CA:\n{}",
            lint.stdout
        );
    }
    let text = tool(
        "openssl",
        &["x509", "-in", &root_pem, "-noout", "-text"],
        &[],
    )
    .ok()
    .stdout;
    assert!(
        text.contains("CA:TRUE, pathlen:1") && text.contains("secp384r1"),
        "{text}"
    );
    assert!(text.contains("ecdsa-with-SHA384"), "{text}");
    assert!(text.contains("Policy: X509v3 Any Policy"), "{text}");
    let lint = tool(
        &meterpki_tests::pkilint(),
        &["lint", "-s", "WARNING", &root_pem],
        &[],
    );
    assert!(
        lint.code == 0 && lint.stdout.trim().is_empty(),
        "pkilint on the root: {}{}",
        lint.stdout,
        lint.stderr
    );
    // The root's ARL: signed by the root, a CRL by pkilint's ARL rules.
    s.arl_linted("h");
    // The audit signer is certified by the root too.
    let audit = s.path("h/ca/audit.pem").display().to_string();
    assert_eq!(
        tool("openssl", &["verify", "-CAfile", &root_pem, &audit], &[]).code,
        0
    );

    // Share files and PIN files are 0600.
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "shares/alice.share",
        "shares/erin.share",
        "h/secrets/online.pin",
    ] {
        let mode = std::fs::metadata(s.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // The PIN never appears in what the CLI printed or logged.
    let pin = std::fs::read_to_string(s.path("h/secrets/online.pin")).unwrap();
    let status = s.run("h", &["status"]).ok();
    assert!(!status.stdout.contains(pin.trim()) && !status.stderr.contains(pin.trim()));
    let audit_log = std::fs::read_to_string(s.path("h/audit/audit.log")).unwrap();
    assert!(!audit_log.contains(pin.trim()));
    let share_text = std::fs::read_to_string(s.path("shares/alice.share")).unwrap();
    let share_hex = share_text
        .lines()
        .find(|l| l.contains("\"share\""))
        .unwrap()
        .split('"')
        .nth(3)
        .unwrap()
        .to_string();
    assert!(!audit_log.contains(&share_hex));

    // pkcs11-tool, independently of meterpki: every private key sensitive, never extractable.
    let conf = s.path("h/softhsm/softhsm2.conf").display().to_string();
    let module = softhsm_module();
    let listing = tool(
        "pkcs11-tool",
        &[
            "--module",
            &module,
            "--token-label",
            "meterpki-online",
            "--login",
            "--pin",
            "env:TEST_PIN",
            "--list-objects",
            "--type",
            "privkey",
        ],
        &[("SOFTHSM2_CONF", &conf), ("TEST_PIN", pin.trim())],
    )
    .ok()
    .stdout;
    let keys: Vec<&str> = listing.split("Private Key Object").skip(1).collect();
    assert_eq!(
        keys.len(),
        4,
        "device, organisation, access, audit keys:\n{listing}"
    );
    for k in keys {
        let access = k
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap();
        let flags: Vec<&str> = access
            .split(':')
            .nth(1)
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        assert!(
            flags.contains(&"sensitive") && flags.contains(&"never extractable"),
            "{k}"
        );
        assert!(!flags.contains(&"extractable"), "{k}");
        let usage = k
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap();
        assert_eq!(
            usage.split(':').nth(1).unwrap().trim(),
            "sign",
            "a CA key only signs: {k}"
        );
    }

    // status --json lists the hierarchy and finds each CA's key.
    let st = s.run("h", &["status", "--json"]).ok().json();
    let cas = st["cas"].as_array().unwrap();
    assert_eq!(cas.len(), 4);
    for c in cas {
        assert_eq!(c["key_present"], true, "{c}");
        assert!(
            c["certificate"]["sha256_fingerprint"]
                .as_str()
                .unwrap()
                .len()
                == 95
        );
    }
    let v = s.run("h", &["audit", "verify", "--json"]).ok().json();
    assert_eq!(v["ok"], true);
    assert!(v["signed_heads"].as_u64().unwrap() >= 4);
}

#[test]
fn bad_shares_are_refused_and_change_nothing() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 5, 3, &[]);
    s.ceremonies("other", 3, 2, &[]);
    let sh = |i: u8| s.share("h", i).display().to_string();
    let truncated = s.path("truncated.share");
    let text = std::fs::read_to_string(s.share("h", 2)).unwrap();
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let flipped = s.path("flipped.share");
    let i = text.find("\"share\": \"").unwrap() + 12;
    let mut bytes = text.clone().into_bytes();
    bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
    std::fs::write(&flipped, bytes).unwrap();
    let empty = s.path("empty.share");
    std::fs::write(&empty, "").unwrap();
    let foreign = s.share("other", 1).display().to_string();
    let trunc = truncated.display().to_string();
    let flip = flipped.display().to_string();
    let emp = empty.display().to_string();
    let missing = s.path("nope.share").display().to_string();

    // A refused share is a security event: the audit log gains a record for it, and nothing
    // else changes.
    let unchanged = |s: &Scratch| {
        let mut snap = s.snapshot();
        snap.remove("h/audit/audit.log");
        snap
    };
    let before = unchanged(&s);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![sh(1), sh(2)],
            "got 2 distinct share(s), the quorum is 3 of 5",
        ),
        (vec![sh(1), sh(1), sh(2)], "are the same share (officer-1)"),
        (vec![sh(1), sh(2), foreign.clone()], "belongs to ceremony"),
        (vec![sh(1), sh(3), trunc], "is corrupt or truncated"),
        (vec![sh(1), sh(3), flip], "checksum does not match"),
        (vec![sh(1), sh(3), emp], "the file is empty"),
        // Reading is bounded: a device that never ends is refused, not read into memory.
        (
            vec![sh(1), sh(3), "/dev/zero".to_string()],
            "larger than 64 KiB",
        ),
        (vec![sh(1), sh(3), missing], "nope.share"),
    ];
    for (files, needle) in cases {
        let mut args = vec!["ceremony", "issuing-ca", "--kind", "device"];
        for f in &files {
            args.push("--share");
            args.push(f);
        }
        let r = s.run("h", &args);
        let code = if needle == "nope.share" { 1 } else { 2 };
        r.fails(code, needle);
        assert!(!s.path("h/ca/device.pem").exists());
        assert_eq!(
            unchanged(&s),
            before,
            "refused with {needle:?} but something changed"
        );
    }
    let audit = s.run("h", &["audit", "list", "--json"]).ok().json();
    let refused: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "ceremony.share-refused")
        .collect();
    // Every refusal but the unreadable file (an I/O error, not a share) is recorded.
    assert_eq!(refused.len(), 7, "{audit:#}");
    assert!(refused[0]["details"]["reason"]
        .as_str()
        .unwrap()
        .contains("quorum is 3 of 5"));
    s.run("h", &["audit", "verify"]).ok();
    // A quorum including a share from the right ceremony still works afterwards.
    s.run(
        "h",
        &[
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--share",
            &sh(5),
            "--share",
            &sh(4),
            "--share",
            &sh(2),
        ],
    )
    .ok();
}

#[test]
fn a_wrong_online_pin_is_refused_before_anything_is_created() {
    let s = Scratch::new(EXE);
    s.run("h", &["init"]).ok();
    let before = s.snapshot();
    let wrong = [("METERPKI_HSM_PIN", "not-the-pin")];
    s.run_env(
        "h",
        &[
            "ceremony",
            "root",
            "--officers",
            "3",
            "--quorum",
            "2",
            "--shares-dir",
            "sh",
        ],
        &wrong,
    )
    .fails(2, "CKR_PIN_INCORRECT");
    assert_eq!(s.snapshot(), before);
    assert!(!s.path("sh/officer-1.share").exists());
    let st = s.run("h", &["status", "--json"]).ok().json();
    assert_eq!(
        st["tokens"].as_array().unwrap().len(),
        1,
        "no root token was created"
    );

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
            "sh",
        ],
    )
    .ok();
    let before = s.snapshot();
    let a = s.path("sh/officer-1.share").display().to_string();
    let b = s.path("sh/officer-2.share").display().to_string();
    s.run_env(
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
        &wrong,
    )
    .fails(2, "CKR_PIN_INCORRECT");
    assert_eq!(s.snapshot(), before);
    let st = s.run("h", &["status", "--json"]).ok().json();
    let labels: Vec<&str> = st["online_token"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["label"].as_str().unwrap())
        .collect();
    assert!(!labels.contains(&"meterpki-access-ca"), "{labels:?}");
}

#[test]
fn init_refuses_missing_module_missing_token_and_an_existing_root() {
    let s = Scratch::new(EXE);
    s.run("h", &["init", "--module", "/nonexistent/libpkcs11.so"])
        .fails(2, "/nonexistent/libpkcs11.so does not exist");
    assert!(!s.path("h").exists(), "nothing created");

    // A vendor module (SoftHSM under another name, with its own config) whose token does not exist.
    let vendor = s.path("libvendor-pkcs11.so");
    std::os::unix::fs::symlink(softhsm_module(), &vendor).unwrap();
    let vendor_dir = s.path("vendor-hsm");
    let conf = softhsm_config::write_config(&vendor_dir).unwrap();
    let conf = conf.display().to_string();
    s.run_env(
        "v",
        &[
            "init",
            "--module",
            &vendor.display().to_string(),
            "--online-token",
            "NO-SUCH-TOKEN",
        ],
        &[("SOFTHSM2_CONF", &conf), ("METERPKI_HSM_PIN", "1234")],
    )
    .fails(2, "no token labelled \"NO-SUCH-TOKEN\"");
    assert!(!s.path("v").exists(), "nothing created");

    s.ceremonies("h", 3, 2, &["device"]);
    let before = s.snapshot();
    s.run("h", &["init"]).fails(2, "already holds a root CA");
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
            "again",
        ],
    )
    .fails(2, "already holds a root CA");
    let a = s.share("h", 1).display().to_string();
    let b = s.share("h", 2).display().to_string();
    s.run(
        "h",
        &[
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--share",
            &a,
            "--share",
            &b,
        ],
    )
    .fails(2, "the device CA already exists");
    assert_eq!(s.snapshot(), before);
    // A config pointing at a token that is not there: a clear error, not a crash.
    let cfg = std::fs::read_to_string(s.path("h/meterpki.toml")).unwrap();
    std::fs::write(
        s.path("h/meterpki.toml"),
        cfg.replace(
            "online_token = \"meterpki-online\"",
            "online_token = \"gone\"",
        ),
    )
    .unwrap();
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
    .fails(2, "no token labelled \"gone\"");
    assert!(!s.path("h/ca/access.pem").exists());
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new(EXE);
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
            "x",
        ],
    )
    .fails(2, "not a meterpki home");
    s.run("h", &["init"]).ok();
    s.run(
        "h",
        &[
            "ceremony",
            "root",
            "--officers",
            "3",
            "--quorum",
            "1",
            "--shares-dir",
            "x",
        ],
    )
    .fails(2, "--quorum must be at least 2");
    s.run(
        "h",
        &[
            "ceremony",
            "root",
            "--officers",
            "2",
            "--quorum",
            "3",
            "--shares-dir",
            "x",
        ],
    )
    .fails(2, "--quorum");
    s.run(
        "h",
        &[
            "ceremony",
            "root",
            "--officers",
            "2",
            "--quorum",
            "2",
            "--shares-dir",
            "x",
            "--officer",
            "../evil",
            "--officer",
            "b",
        ],
    )
    .fails(2, "names a file");
    s.run(
        "h",
        &["ceremony", "issuing-ca", "--kind", "device", "--share", "a"],
    )
    .fails(2, "no root ceremony");
    s.run("h", &["frobnicate"])
        .fails(2, "unrecognized subcommand");
    let help = s.run("h", &["ceremony", "root", "--help"]).ok();
    assert!(help.stdout.contains("Example"));
    assert!(!s.path("x").exists());
}

#[test]
fn an_issuer_whose_hsm_key_does_not_match_its_certificate_is_refused() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    let st = s.run("h", &["status", "--json"]).ok().json();
    assert!(st["cas"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .all(|c| c["key_matches_certificate"] == true));
    // Someone puts the Access CA's certificate where the Device CA's belongs.
    std::fs::copy(s.path("h/ca/access.pem"), s.path("h/ca/device.pem")).unwrap();
    let r = s.run("h", &["status"]);
    let r = r.fails(1, "refusing the device CA");
    assert!(
        r.stdout.contains("DOES NOT MATCH THE CERTIFICATE"),
        "{}",
        r.stdout
    );
}
