//! A takeover killed half-way (a failpoint between writing a chunk's updates and storing its
//! moves) is completed by a re-run, every meter moved once.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{assign_all, meter, p, setup, supplier, verify, A, B, X};

#[test]
fn a_takeover_killed_half_way_is_completed_by_a_rerun() {
    let (s, ids) = setup(40);
    assign_all(&s, &ids, A);
    // Abort (like SIGKILL: no flush, no destructor) after the third chunk's updates are written
    // and before its meters are stored as moved.
    let r = s.run_env(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            A,
            "--to",
            B,
            "--updates-out",
            "upd",
            "--chunk",
            "7",
        ],
        &[("METERPKI_FAILPOINT", "churn.before-commit:3")],
    );
    assert_ne!(r.code, 0, "the failpoint did not fire");
    assert!(r.stderr.contains("failpoint"), "{}", r.stderr);
    // A already lost its power; two chunks moved.
    assert_eq!(supplier(&s, A)["state"], "acquired");
    assert_eq!(supplier(&s, B)["meters"], 14);
    let seq_before: u64 = meter(&s, &ids[0])["last_update"]["seq"]
        .as_u64()
        .unwrap_or(0);
    // A takeover to someone else is refused while this one is open.
    s.run(
        "h",
        &[
            "supplier",
            "takeover",
            "--from",
            A,
            "--to",
            X,
            "--updates-out",
            "x",
        ],
    )
    .fails(2, "re-run it with --to");
    // The re-run completes it.
    let r = s
        .run(
            "h",
            &[
                "supplier",
                "takeover",
                "--from",
                A,
                "--to",
                B,
                "--updates-out",
                "upd",
                "--chunk",
                "7",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(r["meters_updated"], 26, "{r}");
    assert_eq!(r["state"], "complete");
    assert_eq!(supplier(&s, A)["meters"], 0);
    assert_eq!(supplier(&s, B)["meters"], 40);
    // Every meter: moved once, its file's sequence number is the recorded one, no number twice.
    let mut seqs = BTreeSet::new();
    for d in &ids {
        let m = meter(&s, d);
        assert_eq!(m["supplier"], B);
        let v = verify(
            &s,
            &p(&s, &format!("upd/{d}.tamp.der")),
            &["--device-id", d],
        )
        .unwrap();
        assert_eq!(m["last_update"]["seq"], v["seq"], "{d}");
        assert!(
            seqs.insert(v["seq"].as_u64().unwrap()),
            "sequence number reused"
        );
        assert!(m["last_update"]["op"]
            .as_str()
            .unwrap()
            .starts_with("takeover:"));
    }
    assert!(seq_before > 0);
    // A third run has nothing to do.
    let r = s
        .run(
            "h",
            &[
                "supplier",
                "takeover",
                "--from",
                A,
                "--to",
                B,
                "--updates-out",
                "upd",
            ],
        )
        .ok();
    assert!(r.stdout.contains("already completed"), "{}", r.stdout);
    s.run("h", &["audit", "verify"]).ok();
}

/// A rotation interrupted after its first chunk, whose new key is then revoked, is not
/// resumed: the re-run refuses to install a revoked key and updates no meter.
#[test]
fn a_rotation_whose_new_key_was_revoked_meanwhile_is_not_resumed() {
    let (s, ids) = setup(20);
    assign_all(&s, &ids, A);
    let (_, csr) = meterpki_tests::openssl_csr(&s.path(""), "a-sign-2", "prime256v1");
    let csr = csr.display().to_string();
    let rotate = |env: &[(&str, &str)]| {
        s.run_env(
            "h",
            &[
                "supplier",
                "rotate",
                "--id",
                A,
                "--profile",
                "supplier-signing",
                "--csr",
                &csr,
                "--updates-out",
                "rot",
                "--chunk",
                "7",
            ],
            env,
        )
    };
    let r = rotate(&[("METERPKI_FAILPOINT", "churn.before-commit:2")]);
    assert_ne!(r.code, 0, "the failpoint did not fire");
    // The new key is the active signing certificate of A; revoke it.
    let certs = s
        .run("h", &["show", "--device-id", A, "--json"])
        .ok()
        .json();
    let new = certs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["profile"] == "supplier-signing" && c["status"] == "active")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    s.run(
        "h",
        &["revoke", "--serial", &new, "--reason", "keyCompromise"],
    )
    .ok();
    let meters_before: Vec<Value> = ids.iter().map(|d| meter(&s, d)).collect();
    let files_before = std::fs::read_dir(s.path("rot")).unwrap().count();
    rotate(&[]).fails(2, "was revoked");
    let meters_after: Vec<Value> = ids.iter().map(|d| meter(&s, d)).collect();
    assert_eq!(meters_before, meters_after, "a meter was updated");
    assert_eq!(
        std::fs::read_dir(s.path("rot")).unwrap().count(),
        files_before,
        "an update file was written"
    );
    s.run("h", &["audit", "verify"]).ok();
}

/// On a shared store, a takeover killed half-way on one machine is completed by a re-run on
/// another (its own copy of the home, the same database): every meter moved once, no TAMP
/// sequence number twice, one audit chain.
#[test]
fn a_takeover_killed_on_one_machine_is_completed_on_another_with_a_shared_store() {
    let (s, ids) = setup(30);
    assign_all(&s, &ids, A);
    let url_file = s.path("db.url");
    std::fs::write(&url_file, meterpki_tests::pg_database("takeover")).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    let takeover = |home: &str, env: &[(&str, &str)]| {
        s.run_env(
            home,
            &[
                "supplier",
                "takeover",
                "--from",
                A,
                "--to",
                B,
                "--updates-out",
                &format!("upd-{home}"),
                "--chunk",
                "7",
                "--json",
            ],
            env,
        )
    };
    let r = takeover("h", &[("METERPKI_FAILPOINT", "churn.before-commit:2")]);
    assert_ne!(r.code, 0, "the failpoint did not fire");
    assert_eq!(supplier(&s, B)["meters"], 7);
    // The other machine: a copy of the home, the same database.
    s.copy_home("h", "h2");
    let r = takeover("h2", &[]).ok().json();
    assert_eq!(r["state"], "complete", "{r}");
    assert_eq!(r["meters_updated"], 23, "{r}");
    assert_eq!(supplier(&s, A)["meters"], 0);
    assert_eq!(supplier(&s, B)["meters"], 30);
    let mut seqs = BTreeSet::new();
    for d in &ids {
        let m = meter(&s, d);
        assert_eq!(m["supplier"], B);
        let seq = m["last_update"]["seq"].as_u64().unwrap();
        assert!(seqs.insert(seq), "sequence number {seq} reused");
        // Its update is on whichever machine stored its move.
        let file = ["upd-h", "upd-h2"]
            .iter()
            .map(|dir| p(&s, &format!("{dir}/{d}.tamp.der")))
            .find(|f| {
                verify(&s, f, &["--device-id", d]).is_ok_and(|v| v["seq"].as_u64() == Some(seq))
            });
        assert!(
            file.is_some(),
            "no update of {d} with sequence number {seq}"
        );
    }
    s.run("h", &["audit", "verify"]).ok();
    s.run("h2", &["audit", "verify"]).ok();
}
