//! The disaster drill of docs/hsms.md: keys made on token A, replicated to B under a quorum,
//! backed up to a file; A's token directory destroyed while batches are being issued (issuance
//! goes on, on B); a fresh token C restored from the backup with another quorum of officers, A
//! removed from the configuration, B and C serving. Every certificate issued throughout verifies
//! with openssl under the same CA certificates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;
use meterpki_tests::{tool, Scratch, Server};
use serde_json::{json, Value};

use crate::support::{curl, items, EXE};

fn share(s: &Scratch, name: &str) -> String {
    s.path(&format!("kb/{name}.share")).display().to_string()
}

fn ceremony(s: &Scratch, args: &[&str], officers: &[&str]) {
    let shares: Vec<String> = officers.iter().map(|o| share(s, o)).collect();
    let mut a: Vec<&str> = args.to_vec();
    for sh in &shares {
        a.extend(["--share", sh.as_str()]);
    }
    s.run("h", &a).ok();
}

/// The SoftHSM directory of the token labelled `label` in home `h`.
fn token_dir(s: &Scratch, label: &str) -> std::path::PathBuf {
    std::fs::read_dir(s.path("h/softhsm/tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| {
            std::fs::read(d.join("token.object")).is_ok_and(|b| {
                b.windows(32)
                    .any(|w| w == format!("{label:<32}").as_bytes())
            })
        })
        .unwrap_or_else(|| panic!("no token directory for {label}"))
}

/// The Device CA key's signatures on `token`, from `/metrics`.
fn signatures(metrics: &str, token: &str) -> u64 {
    let line = format!(
        "meterpki_hsm_token_signatures_total{{key=\"meterpki-device-ca\",token=\"{token}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line} not in {metrics}"))
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn disaster_drill_token_lost_mid_load_then_restored_from_backup_by_another_quorum() {
    let s = Scratch::new(EXE);
    s.run("h", &["init", "--key-backup", "quorum"]).ok();
    s.ceremonies_only("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-7",
        &["--device-range", "00-DB-12-00-00-00-00-00/24"],
    );
    // The API server's key is made at the first start: before replication, so it is copied.
    let first = Server::start(&s);
    assert_eq!(first.stop(), 0);
    let ca = |k: &str| s.path(&format!("h/ca/{k}.pem"));
    let ca_before = (sha256(&ca("root")), sha256(&ca("device")));

    let officers = ["alice", "bob", "carol", "dave"];
    let mut args = vec![
        "ceremony",
        "backup-key",
        "--officers",
        "4",
        "--quorum",
        "2",
        "--shares-dir",
        "kb",
    ];
    for o in &officers {
        args.extend(["--officer", o]);
    }
    s.run("h", &args).ok();
    s.run("h", &["hsm", "init-token", "--label", "online-b"])
        .ok();
    ceremony(
        &s,
        &["ceremony", "replicate", "--to-token", "online-b"],
        &["alice", "bob"],
    );
    let backup = s.path("vault/keys.backup");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let backup = backup.display().to_string();
    ceremony(
        &s,
        &["ceremony", "backup", "--out", &backup],
        &["alice", "bob"],
    );

    // Load on A and B; A's token directory destroyed in the middle of it.
    let toml_path = s.path("h/meterpki.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap().replace(
        "ready_probe_interval_ms = 5000",
        "ready_probe_interval_ms = 500",
    );
    std::fs::write(&toml_path, &toml).unwrap();
    let srv = Server::start(&s);
    let batch = |srv: &Server, rid: &str, block: u8, n: u8| -> Vec<String> {
        let ids: Vec<String> = (1..=n)
            .map(|i| format!("00-DB-12-00-00-00-{block:02X}-{i:02X}"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let body = json!({"request_id": rid, "items": items(&s, ids.len(), &ids)}).to_string();
        let (code, resp) = curl(
            &s,
            srv,
            Some("line-7"),
            "POST",
            "/v1/batches",
            Some(&body),
            &[],
        );
        assert_eq!(
            code,
            200,
            "{rid}: {resp}\nserver log:\n{}",
            std::fs::read_to_string(&srv.log).unwrap_or_default()
        );
        let answer: Value = serde_json::from_str(&resp).unwrap();
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), usize::from(n), "{resp}");
        results
            .iter()
            .map(|r| {
                r["certificate"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{rid}: an item not answered: {resp}"))
                    .to_string()
            })
            .collect()
    };
    let a_dir = token_dir(&s, "meterpki-online");
    let go = Arc::new(AtomicBool::new(false));
    let destroyer = {
        let go = go.clone();
        let a_dir = a_dir.clone();
        std::thread::spawn(move || {
            while !go.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
            std::fs::remove_dir_all(&a_dir).unwrap();
        })
    };
    let mut certs = Vec::new();
    for i in 0..10u8 {
        if i == 3 {
            go.store(true, Ordering::SeqCst);
        }
        certs.extend(batch(&srv, &format!("load-{i}"), 0x10 + i, 40));
    }
    destroyer.join().unwrap();
    assert!(!a_dir.exists());
    // A is out of the rotation (its files are gone), B carries every key.
    let (code, m) = curl(&s, &srv, None, "GET", "/metrics", None, &[]);
    assert_eq!(code, 200);
    // B is up and signed through the whole load. (Whether A has left the rotation yet
    // depends on SoftHSM: a session's copy of a key lives in memory and may still sign after
    // the files are gone; once A fails, the signature is made on B and the client never sees
    // it, which the 200s above show either way.)
    assert!(
        m.contains("meterpki_hsm_token_up{key=\"meterpki-device-ca\",token=\"online-b\"} 1"),
        "{m}"
    );
    assert!(signatures(&m, "online-b") > 0, "{m}");
    assert_eq!(srv.stop(), 0);

    // A leaves the configuration (B becomes the online token: the one every ceremony's audit
    // record is signed through), then a fresh token C is restored from the file by another
    // quorum of officers.
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let without_a = toml
        .replace(
            "online_token = \"meterpki-online\"",
            "online_token = \"online-b\"",
        )
        .replace(
            "online_pin_file = \"secrets/online.pin\"",
            "online_pin_file = \"secrets/online-b.pin\"",
        )
        .replace("[[hsm.tokens]]\nlabel = \"meterpki-online\"\n", "");
    assert!(!without_a.contains("\"meterpki-online\""), "{without_a}");
    std::fs::write(&toml_path, &without_a).unwrap();
    s.run("h", &["hsm", "init-token", "--label", "online-c"])
        .ok();
    ceremony(
        &s,
        &[
            "ceremony",
            "restore",
            "--from",
            &backup,
            "--to-token",
            "online-c",
        ],
        &["carol", "dave"],
    );
    let srv = Server::start(&s);
    for i in 0..3u8 {
        certs.extend(batch(&srv, &format!("after-{i}"), 0x30 + i, 40));
    }
    let (_, m) = curl(&s, &srv, None, "GET", "/metrics", None, &[]);
    for token in ["online-b", "online-c"] {
        assert!(signatures(&m, token) > 0, "{token} signed nothing: {m}");
    }
    assert_eq!(srv.stop(), 0);

    // Every certificate issued throughout, under the same CA certificates, verified by openssl.
    assert_eq!(ca_before, (sha256(&ca("root")), sha256(&ca("device"))));
    assert_eq!(certs.len(), 13 * 40);
    let dir = s.path("issued");
    std::fs::create_dir_all(&dir).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut files = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        // PEM is base64 of the DER the API returned, in 64-character lines.
        let b = b64.encode(b64.decode(c).unwrap());
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let pem = dir.join(format!("{i}.pem"));
        std::fs::write(
            &pem,
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            ),
        )
        .unwrap();
        files.push(pem.display().to_string());
    }
    let root = ca("root").display().to_string();
    let device = ca("device").display().to_string();
    let mut args = vec![
        "verify",
        "-CAfile",
        root.as_str(),
        "-untrusted",
        device.as_str(),
    ];
    args.extend(files.iter().map(String::as_str));
    let v = tool("openssl", &args, &[]).ok();
    assert_eq!(
        v.stdout.matches(": OK").count(),
        certs.len(),
        "{}",
        v.stdout
    );
    let check = s.run("h", &["store", "check", "--json"]).ok().json();
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    s.run("h", &["audit", "verify"]).ok();
}
