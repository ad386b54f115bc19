//! Key replication and backup under a quorum, end to end with the real CLI on SoftHSM tokens,
//! checked with pkcs11-tool and PyKCS11 (independent PKCS#11 clients). Every refusal is checked
//! to have changed nothing.

use meterpki_tests::{pkcs11_key_audit, softhsm_module, tool, Scratch};
use serde_json::{json, Value};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn kb_share(s: &Scratch, name: &str) -> String {
    s.path(&format!("kb/{name}.share")).display().to_string()
}

/// The private keys pkcs11-tool lists on a token, with their "Access:" line.
fn pkcs11_tool_private_keys(s: &Scratch, home: &str, label: &str, pin: &str) -> Vec<String> {
    let conf = s.path(&format!("{home}/softhsm/softhsm2.conf"));
    let pin = std::fs::read_to_string(s.path(&format!("{home}/{pin}"))).unwrap();
    let out = tool(
        "pkcs11-tool",
        &[
            "--module",
            &softhsm_module(),
            "--token-label",
            label,
            "--login",
            "--pin",
            pin.trim(),
            "--list-objects",
            "--type",
            "privkey",
        ],
        &[("SOFTHSM2_CONF", &conf.display().to_string())],
    )
    .ok();
    let mut keys = Vec::new();
    let mut current = None;
    for line in out.stdout.lines() {
        if let Some(l) = line.trim().strip_prefix("label:") {
            current = Some(l.trim().to_string());
        }
        if let Some(a) = line.trim().strip_prefix("Access:") {
            keys.push(format!(
                "{}: {}",
                current.take().unwrap_or_default(),
                a.trim()
            ));
        }
    }
    keys
}

fn audit_events(s: &Scratch, home: &str, event: &str) -> Vec<Value> {
    std::fs::read_to_string(s.path(&format!("{home}/audit/audit.log")))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == event)
        .collect()
}

#[test]
fn keys_are_replicated_backed_up_and_restored_only_under_a_quorum() {
    let s = Scratch::new(EXE);

    // A home made without key backup: every key-backup ceremony is refused, nothing changes.
    s.ceremonies("plain", 3, 2, &["device"]);
    let before = s.snapshot();
    s.run(
        "plain",
        &[
            "ceremony",
            "backup-key",
            "--officers",
            "3",
            "--quorum",
            "2",
            "--shares-dir",
            "kb-plain",
        ],
    )
    .fails(2, "--key-backup none");
    s.run(
        "plain",
        &[
            "ceremony",
            "replicate",
            "--to-token",
            "x",
            "--share",
            &s.share("plain", 1).display().to_string(),
            "--share",
            &s.share("plain", 2).display().to_string(),
        ],
    )
    .fails(2, "--key-backup none");
    s.run(
        "plain",
        &[
            "ceremony",
            "replicate-root",
            "--to-token",
            "root-b",
            "--share",
            &s.share("plain", 1).display().to_string(),
            "--share",
            &s.share("plain", 2).display().to_string(),
            "--backup-share",
            &s.share("plain", 3).display().to_string(),
        ],
    )
    .fails(2, "--key-backup none");
    assert_eq!(before, s.snapshot(), "a refused ceremony changed files");
    // Its keys are never extractable (PyKCS11's view).
    let plain = pkcs11_key_audit(
        &s.path("plain"),
        "meterpki-online",
        &s.path("plain/secrets/online.pin"),
    )
    .ok();
    assert!(
        plain.stdout.contains("\"extractable\": false"),
        "{}",
        plain.stdout
    );

    // A home with key backup.
    s.run("h", &["init", "--key-backup", "quorum"]).ok();
    s.ceremonies_only("h", 3, 2, &["device", "organisation"]);
    let names = ["alice", "bob", "carol", "dave"];
    let mut args = vec![
        "ceremony",
        "backup-key",
        "--officers",
        "4",
        "--quorum",
        "3",
        "--shares-dir",
        "kb",
        "--json",
    ];
    for n in &names {
        args.extend(["--officer", n]);
    }
    let made = s.run("h", &args).ok().json();
    assert_eq!(made["officers"], serde_json::json!(names), "{made}");
    assert!(
        !s.path("h/secrets/online-so.pin").exists(),
        "the online token's SO PIN file is gone: only the quorum rebuilds it"
    );
    s.run("h", &args).fails(2, "already has a key-backup key");

    s.run("h", &["hsm", "init-token", "--label", "online-b"])
        .ok();
    let toml = std::fs::read_to_string(s.path("h/meterpki.toml")).unwrap();
    assert!(
        toml.contains("label = \"meterpki-online\"") && toml.contains("label = \"online-b\""),
        "{toml}"
    );
    // Until it holds the keys, a command that signs refuses, naming it.
    let issue = |id: &str| {
        let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), id, "prime256v1");
        s.run(
            "h",
            &[
                "issue",
                "--profile",
                "meter-signing",
                "--device-id",
                id,
                "--csr",
                &csr.display().to_string(),
                "--out",
                &s.path(&format!("{id}.pem")).display().to_string(),
            ],
        )
    };
    let r = issue("00-DB-12-00-00-00-00-01");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("online-b"), "{}", r.stderr);

    let replicate = |shares: &[&str]| {
        let mut a = vec![
            "ceremony".to_string(),
            "replicate".into(),
            "--to-token".into(),
            "online-b".into(),
        ];
        for sh in shares {
            a.push("--share".into());
            a.push(kb_share(&s, sh));
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        s.run("h", &a)
    };
    // M-1 shares, a share of the root ceremony, a share altered: refused, nothing changed.
    let before = s.snapshot();
    replicate(&["alice", "bob"]).fails(2, "quorum is 3 of 4");
    let mut a = vec!["ceremony", "replicate", "--to-token", "online-b", "--share"];
    let alice = kb_share(&s, "alice");
    let bob = kb_share(&s, "bob");
    let root_share = s.share("h", 1).display().to_string();
    a.extend([
        alice.as_str(),
        "--share",
        bob.as_str(),
        "--share",
        root_share.as_str(),
    ]);
    s.run("h", &a)
        .fails(2, "not to this home's key-backup ceremony");
    // A target not in [[hsm.tokens]], with a full quorum: refused before any token is touched
    // (online-b's SO PIN file, still there, is not used).
    let carol = kb_share(&s, "carol");
    s.run(
        "h",
        &[
            "ceremony",
            "replicate",
            "--to-token",
            "online-typo",
            "--share",
            alice.as_str(),
            "--share",
            bob.as_str(),
            "--share",
            carol.as_str(),
        ],
    )
    .fails(2, "not in [[hsm.tokens]]");
    assert_eq!(before, s.snapshot(), "a refused replication changed files");
    assert!(
        pkcs11_tool_private_keys(&s, "h", "online-b", "secrets/online-b.pin").is_empty(),
        "a refused replication copied a key"
    );

    let copied = {
        let mut a = vec!["--json".to_string()];
        a.extend(
            ["ceremony", "replicate", "--to-token", "online-b"]
                .iter()
                .map(|x| x.to_string()),
        );
        for sh in ["alice", "bob", "carol"] {
            a.push("--share".into());
            a.push(kb_share(&s, sh));
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        s.run("h", &a).ok().json()
    };
    let labels: Vec<&str> = copied["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    for l in [
        "meterpki-audit",
        "meterpki-device-ca",
        "meterpki-organisation-ca",
    ] {
        assert!(labels.contains(&l), "{l} not copied: {copied}");
    }
    assert!(!s.path("h/secrets/online-b-so.pin").exists());
    // pkcs11-tool: every private key on both tokens is sensitive; PyKCS11: an extractable one
    // is wrap-with-trusted and an untrusted key's wrap is refused by the token.
    for (token, pin) in [
        ("meterpki-online", "secrets/online.pin"),
        ("online-b", "secrets/online-b.pin"),
    ] {
        let keys = pkcs11_tool_private_keys(&s, "h", token, pin);
        assert!(keys.len() >= 3, "{token}: {keys:?}");
        assert!(
            keys.iter().all(|k| k.contains(": sensitive")),
            "{token}: {keys:?}"
        );
        let audit = pkcs11_key_audit(&s.path("h"), token, &s.path(&format!("h/{pin}"))).ok();
        let (secret, private): (Vec<&str>, Vec<&str>) = audit
            .stdout
            .lines()
            .partition(|l| l.contains("\"secret_key\""));
        assert_eq!(private.len(), keys.len(), "{}", audit.stdout);
        // One secret key, the key-backup key: trusted, not modifiable, and unable to unwrap
        // now that the ceremony is over.
        assert_eq!(secret.len(), 1, "{}", audit.stdout);
        let k: Value = serde_json::from_str(secret[0]).unwrap();
        assert_eq!(
            (&k["trusted"], &k["unwrap"], &k["modifiable"]),
            (&json!(true), &json!(false), &json!(false)),
            "{k}"
        );
        for line in private {
            let k: Value = serde_json::from_str(line).unwrap();
            assert_eq!(k["sensitive"], true, "{line}");
            assert_eq!(k["wrap_with_trusted"], true, "{line}");
            assert_eq!(
                k["untrusted_wrap"], "refused: CKR_KEY_NOT_WRAPPABLE",
                "{line}"
            );
        }
    }
    // Both tokens serve: a certificate is issued, status shows the same keys on each.
    issue("00-DB-12-00-00-00-00-02").ok();
    let st = s.run("h", &["--json", "status"]).ok().json();
    for t in st["online_tokens"].as_array().unwrap() {
        assert!(
            t["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["same_as_online_token"] == true),
            "{st}"
        );
    }

    // A token meterpki did not make (its SO PIN unknown to the home) holds no key-backup key:
    // replication into it is refused, and nothing lands in it.
    let conf = s.path("h/softhsm/softhsm2.conf").display().to_string();
    tool(
        "softhsm2-util",
        &[
            "--init-token",
            "--free",
            "--label",
            "foreign",
            "--so-pin",
            "so-foreign-1234",
            "--pin",
            "user-foreign-1234",
        ],
        &[("SOFTHSM2_CONF", &conf)],
    )
    .ok();
    let pin = s.path("h/secrets/foreign.pin");
    std::fs::write(&pin, "user-foreign-1234\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&pin).unwrap().permissions(),
        0o600,
    );
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let toml_path = s.path("h/meterpki.toml");
    let with_b = std::fs::read_to_string(&toml_path).unwrap();
    std::fs::write(
        &toml_path,
        with_b.clone()
            + "\n[[hsm.tokens]]\nlabel = \"foreign\"\npin_file = \"secrets/foreign.pin\"\n",
    )
    .unwrap();
    let r = {
        let mut a = vec!["ceremony", "replicate", "--to-token", "foreign"];
        let shares: Vec<String> = ["alice", "bob", "carol"]
            .iter()
            .map(|n| kb_share(&s, n))
            .collect();
        for sh in &shares {
            a.extend(["--share", sh.as_str()]);
        }
        s.run("h", &a)
    };
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("token \"foreign\" holds no key-backup key"),
        "{}",
        r.stderr
    );
    assert!(pkcs11_tool_private_keys(&s, "h", "foreign", "secrets/foreign.pin").is_empty());
    std::fs::write(&toml_path, &with_b).unwrap();

    // A backup file, then a fresh token restored from it with another quorum.
    let file = s.path("keys.backup").display().to_string();
    let mut a = vec!["ceremony", "backup", "--out", file.as_str()];
    let shares: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| kb_share(&s, n))
        .collect();
    for sh in &shares {
        a.extend(["--share", sh.as_str()]);
    }
    s.run("h", &a).ok();
    s.run("h", &a).fails(2, "never overwritten");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("meterpki-key-backup/1\n"), "{text}");
    s.run("h", &["hsm", "init-token", "--label", "online-c"])
        .ok();
    let other: Vec<String> = ["bob", "carol", "dave"]
        .iter()
        .map(|n| kb_share(&s, n))
        .collect();
    let restore = |from: &str| {
        let mut a = vec![
            "ceremony",
            "restore",
            "--from",
            from,
            "--to-token",
            "online-c",
        ];
        for sh in &other {
            a.extend(["--share", sh.as_str()]);
        }
        s.run("h", &a)
    };
    // One byte altered anywhere in the file: refused before the token is touched.
    let bytes = std::fs::read(&file).unwrap();
    let altered = s.path("altered.backup");
    for at in [0, 40, bytes.len() / 2, bytes.len() - 10] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&altered, &b).unwrap();
        let before = s.snapshot();
        let r = restore(&altered.display().to_string());
        assert_eq!(r.code, 2, "byte {at}: {}", r.stderr);
        assert!(
            r.stderr.contains("integrity check") || r.stderr.contains("not a meterpki key backup"),
            "byte {at}: {}",
            r.stderr
        );
        assert_eq!(
            before,
            s.snapshot(),
            "byte {at}: a refused restore changed files"
        );
    }
    assert!(pkcs11_tool_private_keys(&s, "h", "online-c", "secrets/online-c.pin").is_empty());
    restore(&file).ok();
    let restored = pkcs11_tool_private_keys(&s, "h", "online-c", "secrets/online-c.pin");
    assert_eq!(
        restored.len(),
        pkcs11_tool_private_keys(&s, "h", "meterpki-online", "secrets/online.pin").len()
    );
    issue("00-DB-12-00-00-00-00-03").ok();

    // Every ceremony is in the audit log, naming the officers whose shares opened it.
    let officers = |event: &str| -> Vec<Vec<String>> {
        audit_events(&s, "h", event)
            .iter()
            .map(|r| {
                r["details"]["officers"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{r}"))
                    .iter()
                    .map(|o| o.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        officers("ceremony.backup-key"),
        vec![names.map(String::from).to_vec()]
    );
    assert_eq!(
        officers("ceremony.replicate"),
        vec![vec!["alice", "bob", "carol"]]
    );
    assert_eq!(
        officers("ceremony.backup"),
        vec![vec!["alice", "bob", "carol"]]
    );
    assert_eq!(
        officers("ceremony.restore"),
        vec![vec!["bob", "carol", "dave"]]
    );
    assert_eq!(audit_events(&s, "h", "hsm.init-token").len(), 2);
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn the_root_key_is_copied_only_with_both_quorums_and_the_copy_signs_for_the_root() {
    let s = Scratch::new(EXE);
    s.run("r", &["init", "--key-backup", "quorum"]).ok();
    s.ceremonies_only("r", 3, 2, &["device"]);
    s.run(
        "r",
        &[
            "ceremony",
            "backup-key",
            "--officers",
            "3",
            "--quorum",
            "2",
            "--shares-dir",
            "kb",
        ],
    )
    .ok();
    let root = |i: u8| s.share("r", i).display().to_string();
    let kb = |i: u8| kb_share(&s, &format!("officer-{i}"));
    let replicate = |root_shares: &[String], kb_shares: &[String]| {
        let mut a = vec![
            "ceremony".to_string(),
            "replicate-root".into(),
            "--to-token".into(),
            "meterpki-root-b".into(),
        ];
        for sh in root_shares {
            a.extend(["--share".to_string(), sh.clone()]);
        }
        for sh in kb_shares {
            a.extend(["--backup-share".to_string(), sh.clone()]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        s.run("r", &a)
    };
    // One root share short, or a key-backup share given as a root share: refused, nothing
    // changed (no token made, no key moved).
    let before = s.snapshot();
    replicate(&[root(1)], &[kb(1), kb(2)]).fails(2, "quorum is 2 of 3");
    replicate(&[root(1), kb(3)], &[kb(1), kb(2)]).fails(2, "not to this home's root ceremony");
    replicate(&[root(1), root(2)], &[kb(1)]).fails(2, "quorum is 2 of 3");
    assert_eq!(
        before,
        s.snapshot(),
        "a refused root replication changed files"
    );
    // A rolled-over root: the token holds two root keys and two contingency keys, and all four
    // are copied (the old key still signs its ARL).
    s.run(
        "r",
        &[
            "ceremony",
            "root-rollover",
            "--share",
            &root(1),
            "--share",
            &root(3),
            "--contingency-shares-dir",
            "r-contingency-g2",
        ],
    )
    .ok();

    let done = {
        let r = replicate(&[root(1), root(2)], &[kb(2), kb(3)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    assert!(done.stdout.contains("meterpki-root-b"), "{}", done.stdout);
    let event = audit_events(&s, "r", "ceremony.replicate-root");
    assert_eq!(event.len(), 1);
    assert_eq!(
        event[0]["details"]["root_officers"],
        json!(["officer-1", "officer-2"])
    );
    assert_eq!(
        event[0]["details"]["officers"],
        json!(["officer-2", "officer-3"])
    );
    let copied: Vec<_> = event[0]["details"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        copied,
        [
            "meterpki-root-ca",
            "meterpki-root-ca-contingency",
            "meterpki-root-ca-g2",
            "meterpki-root-ca-g2-contingency"
        ]
    );

    // The root token lost: its directory removed, the copy configured; a root ceremony signs
    // with the copy, and openssl verifies what it signed with the root certificate.
    let tokens = s.path("r/softhsm/tokens");
    let original = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| {
            std::fs::read(d.join("token.object")).is_ok_and(|b| {
                b.windows(32)
                    .any(|w| w == format!("{:<32}", "meterpki-root").as_bytes())
            })
        })
        .expect("the root token's directory");
    std::fs::remove_dir_all(&original).unwrap();
    let toml_path = s.path("r/meterpki.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    assert!(toml.contains("root_token = \"meterpki-root\""), "{toml}");
    std::fs::write(
        &toml_path,
        toml.replace(
            "root_token = \"meterpki-root\"",
            "root_token = \"meterpki-root-b\"",
        ),
    )
    .unwrap();
    s.run(
        "r",
        &[
            "ceremony",
            "root-crl",
            "--share",
            &root(2),
            "--share",
            &root(3),
        ],
    )
    .ok();
    // Both roots' ARLs, each signed by its key in the copy.
    for (arl, ca) in [
        ("r/crl/root-g2/arl.crl", "r/ca/root.pem"),
        ("r/crl/root/arl.crl", "r/ca/generations/root-1.pem"),
    ] {
        let arl = s.path(arl).display().to_string();
        let ca = s.path(ca).display().to_string();
        let v = tool(
            "openssl",
            &[
                "crl", "-inform", "DER", "-in", &arl, "-CAfile", &ca, "-noout",
            ],
            &[],
        );
        assert!(
            v.stderr.contains("verify OK") || v.stdout.contains("verify OK"),
            "{arl}: {}\n{}",
            v.stdout,
            v.stderr
        );
    }
    s.run("r", &["audit", "verify"]).ok();
}
