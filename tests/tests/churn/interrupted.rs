//! A takeover killed half-way (a failpoint between writing a chunk's updates and storing its
//! moves) is completed by a re-run, every meter moved once.

use std::collections::BTreeSet;

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
