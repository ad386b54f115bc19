//! `meterpki audit verify` catches an edited, a deleted, a swapped and a truncated record.

use meterpki_tests::Scratch;

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let r = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(r.success());
}

fn tamper(s: &Scratch, name: &str, f: impl FnOnce(&mut Vec<String>)) {
    copy_dir(&s.path("h"), &s.path(name));
    let log = s.path(&format!("{name}/audit/audit.log"));
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    f(&mut lines);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
}

#[test]
fn audit_verify_names_the_first_altered_removed_or_reordered_record() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    let ok = s.run("h", &["audit", "verify"]).ok();
    assert!(ok.stdout.contains("intact"), "{}", ok.stdout);
    let n = std::fs::read_to_string(s.path("h/audit/audit.log"))
        .unwrap()
        .lines()
        .count();
    assert!(n >= 6, "{n} records");

    tamper(&s, "edited", |l| {
        l[1] = l[1].replacen("\"actor\":\"", "\"actor\":\"mallory", 1)
    });
    s.run("edited", &["audit", "verify"])
        .fails(1, "line 2: record 2 (ceremony.root) was altered");
    // ... and still after the next legitimate change.
    s.run(
        "edited",
        &[
            "supplier",
            "register",
            "--id",
            "90-B3-D5-1F-30-00-00-0C",
            "--name",
            "C",
        ],
    )
    .ok();
    s.run("edited", &["audit", "verify"])
        .fails(1, "line 2: record 2 (ceremony.root) was altered");

    tamper(&s, "deleted", |l| {
        l.remove(2);
    });
    s.run("deleted", &["audit", "verify"])
        .fails(1, "record 3 was removed");

    tamper(&s, "swapped", |l| l.swap(3, 4));
    s.run("swapped", &["audit", "verify"]).fails(
        1,
        "line 4: records are out of order: expected record 4, found record 5",
    );

    tamper(&s, "truncated", |l| {
        l.pop();
    });
    s.run("truncated", &["audit", "verify"])
        .fails(1, &format!("record {n} was removed"));

    // A forger who re-chains the log (recomputing every hash) cannot forge the HSM's
    // signature: change a signed record and re-hash it, and its signature no longer verifies.
    tamper(&s, "forged", |l| {
        let last = l.len() - 1;
        let mut rec: ca_core::AuditRecord = serde_json::from_str(&l[last]).unwrap();
        assert!(rec.sig.is_some(), "every record is signed: {rec:?}");
        rec.actor = "mallory".into();
        rec.hash = rec.compute_hash();
        l[last] = serde_json::to_string(&rec).unwrap();
    });
    s.run("forged", &["audit", "verify"])
        .fails(1, "its signature does not verify with the audit key");

    // The original is untouched by all this.
    s.run("h", &["audit", "verify"]).ok();
}

/// A crash in the middle of an append leaves a cut last line; the next append removes it (it
/// is an unfinished append: the store's head is the last complete record), says so in the
/// chain, and the chain verifies. An edit that is not such a cut is still refused.
#[test]
fn an_append_cut_short_by_a_crash_is_removed_and_recorded() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    let log = s.path("h/audit/audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(b"{\"seq\":99,\"time\":\"2026-");
    std::fs::write(&log, &bytes).unwrap();
    // `audit verify` tells the cut line from an alteration.
    let verified = s.run("h", &["audit", "verify"]).ok().stdout;
    assert!(verified.contains("cut by a crash"), "{verified}");
    let register =
        |id: &str, name: &str| s.run("h", &["supplier", "register", "--id", id, "--name", name]);
    register("90-B3-D5-1F-30-00-00-0A", "A").ok();
    s.run("h", &["audit", "verify"]).ok();
    let list = s.run("h", &["audit", "list", "--json"]).ok().stdout;
    assert!(list.contains("audit.torn-tail-removed"), "{list}");
    // A cut line that follows a record the store never saw as its head is not a crash: refused.
    let mut bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let last_line_start = text.trim_end().rfind('\n').unwrap() + 1;
    bytes.truncate(last_line_start); // drop the last record: the store's head is now ahead
    bytes.extend_from_slice(b"{\"seq\":");
    std::fs::write(&log, &bytes).unwrap();
    register("90-B3-D5-1F-30-00-00-0B", "B").fails(1, "does not end with a complete line");
    s.run("h", &["audit", "verify"]).fails(1, "was removed");
}

/// Whoever can write the log but has no HSM cannot extend it: a record appended by hand with a
/// correct hash chain is named by `audit verify`, before and after the next legitimate append
/// (which keeps it, says so in a signed note, and chains after it).
#[test]
fn a_record_appended_by_hand_is_named_before_and_after_the_next_append() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    let log = s.path("h/audit/audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let last: ca_core::AuditRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    // Four records, chained; three carry a signature the audit key never made (one interrupted
    // write leaves at most three of its own past the store's head, so these also test that
    // forged records do not make the store look older than the log).
    let mut text = text;
    let mut prev = last.clone();
    let mut forged_seqs = Vec::new();
    for i in 0..4u64 {
        let mut r = ca_core::AuditRecord {
            seq: prev.seq + 1,
            time: prev.time.clone(),
            event: if i == 0 {
                "account.add".into()
            } else {
                "crl.publish".into()
            },
            actor: "mallory".into(),
            details: serde_json::json!({"name": "backdoor", "role": "operator", "crls": [{"issuer": "device", "scope": "0", "crl_number": 999, "entries": 0}], "store_certificates": 99999}),
            prev: prev.hash.clone(),
            hash: String::new(),
            sig: (i > 0).then(|| "MEUCIQD7".to_string()),
        };
        r.hash = r.compute_hash();
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
        forged_seqs.push(r.seq);
        prev = r;
    }
    let forged = ca_core::AuditRecord {
        seq: forged_seqs[0],
        ..last.clone()
    };
    std::fs::write(&log, &text).unwrap();
    // Every command still runs (the forgeries prove nothing about the store).
    s.run("h", &["status"]).ok();
    let named = format!(
        "record {} (account.add) is not signed by the audit key",
        forged.seq
    );
    s.run("h", &["audit", "verify"]).fails(1, &named);
    // The next legitimate change keeps the forged record, notes it, and goes on.
    s.run(
        "h",
        &[
            "supplier",
            "register",
            "--id",
            "90-B3-D5-1F-30-00-00-0A",
            "--name",
            "A",
        ],
    )
    .ok();
    s.run("h", &["audit", "verify"]).fails(
        1,
        &format!(
            "record {} (account.add) is not signed by the audit key",
            forged.seq
        ),
    );
    let list = s.run("h", &["audit", "list", "--json"]).ok().json();
    let events: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    let at = forged.seq as usize;
    assert_eq!(
        &events[at - 1..],
        [
            "account.add",
            "crl.publish",
            "crl.publish",
            "crl.publish",
            ca_core::FOREIGN_EVENT,
            "supplier.register"
        ],
        "{events:?}"
    );
    let note = &list.as_array().unwrap()[at + 3];
    assert_eq!(note["details"]["records"], serde_json::json!(forged_seqs));
    // The forged publication's numbers are not held against the store.
    s.run("h", &["status"]).ok();
    // The forged record changed nothing: there is no such account.
    let accounts = s.run("h", &["account", "list", "--json"]).ok().stdout;
    assert!(!accounts.contains("backdoor"), "{accounts}");
}
