//! Crash harness (issue 7): the CLI is SIGKILLed at a random moment during batch issuance,
//! revocation, CRL publication and a takeover, then run again to completion, and the invariants
//! are checked after every round: no serial twice, every answered certificate stored and answered
//! again identically, no cRLNumber or TAMP sequence number reused or going backwards, every
//! published CRL whole and valid, the audit chain intact.
//!
//! `METERPKI_CRASH_ROUNDS` sets the rounds (default 2 per operation, which CI runs);
//! `METERPKI_CRASH_SEED` replays a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use meterpki_tests::{openssl_csr, tool, Scratch};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");
const A: &str = "90-B3-D5-1F-30-00-00-0A";
const B: &str = "90-B3-D5-1F-30-00-00-0B";

/// A small deterministic generator (xorshift), so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn p(s: &Scratch, rel: &str) -> String {
    s.path(rel).display().to_string()
}

/// Starts `meterpki --home h ARGS`, kills it with SIGKILL after `after_ms`, waits. Returns
/// whether it was killed (false: it finished first).
fn kill_after(s: &Scratch, args: &[&str], after_ms: u64) -> bool {
    let mut child = Command::new(EXE)
        .current_dir(s.path(""))
        .arg("--home")
        .arg(s.path("h"))
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("METERPKI_REEXEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(after_ms));
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    !finished
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        // A line cut by the kill is not an answer (results are fsynced per whole chunk).
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// cRLNumber of every published CRL file, read by openssl (a torn file fails here).
fn crl_numbers(s: &Scratch) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for issuer in ["device", "organisation"] {
        let Ok(dir) = std::fs::read_dir(s.path(&format!("h/crl/{issuer}"))) else {
            continue;
        };
        for e in dir {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "crl") {
                continue;
            }
            let text = tool(
                "openssl",
                &[
                    "crl",
                    "-inform",
                    "DER",
                    "-in",
                    &path.display().to_string(),
                    "-noout",
                    "-crlnumber",
                ],
                &[],
            )
            .ok()
            .stdout;
            let hex = text.trim().trim_start_matches("crlNumber=0x");
            out.insert(
                path.display().to_string(),
                u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{text}")),
            );
        }
    }
    out
}

/// `METERPKI_CRASH_ROUNDS` (default 2) and `METERPKI_CRASH_SEED` (default: from the clock).
fn rounds_and_seed() -> (usize, u64) {
    let rounds = std::env::var("METERPKI_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let seed = std::env::var("METERPKI_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    (rounds, seed)
}

fn check_audit(s: &Scratch) {
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn killed_at_random_moments_the_ca_keeps_its_invariants() {
    let (rounds, seed) = rounds_and_seed();
    eprintln!("crash harness: {rounds} round(s) per operation, METERPKI_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.supplier("h", A, "Alpha Energy");
    s.supplier("h", B, "Beta Power");
    for (sup, name) in [(A, "a"), (B, "b")] {
        let (_, csr) = openssl_csr(&s.path(""), name, "prime256v1");
        s.run(
            "h",
            &[
                "supplier",
                "enrol",
                "--id",
                sup,
                "--profile",
                "supplier-signing",
                "--csr",
                &csr.display().to_string(),
            ],
        )
        .ok();
    }
    let mut answered: BTreeMap<String, Value> = BTreeMap::new(); // serial -> certificate
    let mut crl_seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut kills = 0;
    // How long each operation takes when not killed (measured on its re-runs): the kill lands
    // at a uniformly random moment within it.
    let mut took: BTreeMap<&str, u64> = BTreeMap::new();
    let at = |rng: &mut Rng, took: &BTreeMap<&str, u64>, op: &str| {
        1 + rng.below(took.get(op).copied().unwrap_or(300).max(2))
    };

    for round in 0..rounds {
        // 1. Batch issuance killed mid-run, then run again.
        let batch = p(&s, &format!("batch-{round}.ndjson"));
        s.bench("h", &["make-batch", "--count", "600", "--out", &batch])
            .ok();
        let out1 = s.path(&format!("killed-{round}.ndjson"));
        kills += kill_after(
            &s,
            &[
                "issue",
                "--batch",
                &batch,
                "--out",
                &out1.display().to_string(),
                "--chunk",
                "50",
            ],
            50 + rng.below(400),
        ) as usize;
        let out2 = s.path(&format!("rerun-{round}.ndjson"));
        s.run(
            "h",
            &[
                "issue",
                "--batch",
                &batch,
                "--out",
                &out2.display().to_string(),
            ],
        )
        .ok();
        let rerun = lines(&out2);
        assert_eq!(rerun.len(), 600);
        for a in lines(&out1) {
            let i = a["index"].as_u64().unwrap() as usize;
            assert_eq!(
                rerun[i]["serial"], a["serial"],
                "round {round}: answer changed"
            );
            assert_eq!(rerun[i]["certificate"], a["certificate"]);
        }
        for r in &rerun {
            let serial = r["serial"].as_str().unwrap().to_string();
            if let Some(before) = answered.insert(serial.clone(), r["certificate"].clone()) {
                panic!("round {round}: serial {serial} used twice ({before})");
            }
        }
        let st = s.run("h", &["status", "--json"]).ok().json();
        assert_eq!(
            st["certificates"].as_u64().unwrap() as usize,
            answered.len() + 2,
            "round {round}: certificates stored = answered (+ the two supplier keys)"
        );
        check_audit(&s);

        // 2. Revocation of 100 of them killed mid-run, then run again: all revoked once.
        let serials: Vec<&String> = answered.keys().skip(round * 100).take(100).collect();
        let list = s.path(&format!("revoke-{round}.txt"));
        std::fs::write(
            &list,
            serials
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        let list = list.display().to_string();
        kills += kill_after(
            &s,
            &[
                "revoke",
                "--serials-file",
                &list,
                "--reason",
                "keyCompromise",
            ],
            at(&mut rng, &took, "revoke"),
        ) as usize;
        let t = std::time::Instant::now();
        let r = s
            .run(
                "h",
                &[
                    "revoke",
                    "--serials-file",
                    &list,
                    "--reason",
                    "keyCompromise",
                    "--json",
                ],
            )
            .ok()
            .json();
        took.insert("revoke", t.elapsed().as_millis() as u64);
        assert_eq!(
            r["revoked"].as_u64().unwrap() + r["already_revoked"].as_u64().unwrap(),
            100
        );
        check_audit(&s);

        // 3. CRL publication killed mid-run, then again: every file whole, numbers only grow.
        kills += kill_after(
            &s,
            &["crl", "publish", "--full"],
            at(&mut rng, &took, "crl"),
        ) as usize;
        let after_kill = crl_numbers(&s);
        for (f, n) in &after_kill {
            if let Some(prev) = crl_seen.get(f) {
                assert!(n >= prev, "round {round}: {f} went back from {prev} to {n}");
            }
        }
        let t = std::time::Instant::now();
        s.run("h", &["crl", "publish", "--full"]).ok();
        took.insert("crl", t.elapsed().as_millis() as u64);
        let now = crl_numbers(&s);
        for (f, n) in &now {
            let floor = after_kill.get(f).max(crl_seen.get(f)).copied().unwrap_or(0);
            assert!(
                *n > floor,
                "round {round}: {f} cRLNumber {n} not above {floor}"
            );
        }
        crl_seen = now;
        check_audit(&s);
    }

    // 4. A takeover killed at random moments, then completed: every meter moved exactly once,
    //    no sequence number twice.
    let meters: Vec<String> = (0..rounds)
        .flat_map(|r| {
            std::fs::read_to_string(s.path(&format!("batch-{r}.ndjson")))
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["device_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let csv: String = meters.iter().map(|d| format!("{d},{A}\n")).collect();
    std::fs::write(s.path("assign.csv"), csv).unwrap();
    s.run("h", &["meter", "assign", "--file", &p(&s, "assign.csv")])
        .ok();
    let takeover = [
        "supplier",
        "takeover",
        "--from",
        A,
        "--to",
        B,
        "--updates-ndjson",
        "takeover.ndjson",
        "--chunk",
        "40",
    ];
    for _ in 0..rounds {
        kills += kill_after(&s, &takeover, at(&mut rng, &took, "takeover")) as usize;
    }
    let r = s
        .run("h", &[&takeover[..], &["--json"]].concat())
        .ok()
        .json();
    assert!(
        r["state"] == "complete" || r["completed_at"].is_number(),
        "{r}"
    );
    let list = s.run("h", &["supplier", "list", "--json"]).ok().json();
    let count = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .unwrap()["meters"]
            .as_u64()
            .unwrap() as usize
    };
    assert_eq!(count(A), 0);
    assert_eq!(count(B), meters.len());
    // The stream may hold updates of chunks that were killed before being stored; every
    // sequence number in it is distinct, and each meter's recorded one is in it.
    let stream = lines(&s.path("takeover.ndjson"));
    let mut seqs = BTreeSet::new();
    for l in &stream {
        assert!(
            seqs.insert(l["seq"].as_u64().unwrap()),
            "sequence number {} twice",
            l["seq"]
        );
    }
    for d in meters.iter().step_by(37) {
        let m = s
            .run("h", &["meter", "show", "--device-id", d, "--json"])
            .ok()
            .json();
        assert_eq!(m["supplier"], B);
        let seq = m["last_update"]["seq"].as_u64().unwrap();
        assert!(
            seqs.contains(&seq),
            "{d}: recorded seq {seq} not in the stream"
        );
    }
    check_audit(&s);
    eprintln!("crash harness: {kills} kill(s) landed mid-operation");
}

/// SoftHSM rewrites `token.object` in place at every login; a process killed mid-rewrite leaves
/// it empty and the token unlisted (the crash harness above hit it). The next command restores
/// it from the copy meterpki keeps, and everything works as before.
#[test]
fn a_token_file_emptied_by_a_killed_login_is_restored_by_the_next_command() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    s.run("h", &["status", "--json"]).ok(); // copies made
    let mut emptied = 0;
    for e in std::fs::read_dir(s.path("h/softhsm/tokens")).unwrap() {
        let f = e.unwrap().path().join("token.object");
        if f.exists() {
            std::fs::write(&f, b"").unwrap();
            emptied += 1;
        }
    }
    assert_eq!(emptied, 2, "root and online tokens");
    let (_, csr) = openssl_csr(&s.path(""), "m", "prime256v1");
    let r = s
        .run(
            "h",
            &[
                "issue",
                "--profile",
                "meter-signing",
                "--device-id",
                "00-DB-12-34-56-78-90-01",
                "--csr",
                &csr.display().to_string(),
                "--out",
                &s.path("m.pem").display().to_string(),
            ],
        )
        .ok();
    assert!(r.stderr.contains("restored from its copy"), "{}", r.stderr);
    for e in std::fs::read_dir(s.path("h/softhsm/tokens")).unwrap() {
        let f = e.unwrap().path().join("token.object");
        assert!(
            std::fs::metadata(&f).unwrap().len() > 0,
            "{} restored",
            f.display()
        );
    }
    s.run("h", &["audit", "verify"]).ok();
}

/// Whether `account`'s client certificate is listed in the Access CA's published CRLs.
fn access_crls_list(s: &Scratch, serial: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(s.path("h/crl/access")) else {
        return false;
    };
    dir.flatten().any(|e| {
        let path = e.path().display().to_string();
        path.ends_with(".crl")
            && tool(
                "openssl",
                &["crl", "-inform", "DER", "-in", &path, "-noout", "-text"],
                &[],
            )
            .ok()
            .stdout
            .to_ascii_lowercase()
            .contains(&format!("serial number: {serial}"))
    })
}

/// The account, as `account list` shows it: (disabled, certificate serial).
fn account_state(s: &Scratch, name: &str) -> (bool, String) {
    let list = s.run("h", &["account", "list", "--json"]).ok().json();
    let a = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name}: {list}"))
        .clone();
    (
        a["disabled"].as_bool().unwrap(),
        a["certificate_serial"].as_str().unwrap().to_string(),
    )
}

/// Whether the store has the certificate revoked.
fn revoked(s: &Scratch, serial: &str) -> bool {
    let v = s
        .run("h", &["show", "--serial", serial, "--json"])
        .ok()
        .json();
    v[0]["status"].as_str().unwrap().starts_with("revoked")
}

/// `account disable` stopped at every point (SIGKILL at random moments, and aborts at the two
/// seams: after the audit record is written but before the store write, and after the store
/// write but before the CRLs are published) never leaves a disabled account whose certificate
/// is not revoked; the re-run finishes the job (the CRL lists the certificate) and the audit
/// chain verifies.
#[test]
fn account_disable_stopped_anywhere_never_leaves_a_disabled_account_unrevoked() {
    let (rounds, seed) = rounds_and_seed();
    eprintln!("account disable: {rounds} random kill(s), METERPKI_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["access"]);
    let check = |name: &str| {
        let (disabled, serial) = account_state(&s, name);
        assert!(
            !disabled || revoked(&s, &serial),
            "{name}: disabled but its certificate {serial} is not revoked"
        );
        // The re-run completes it: disabled, revoked, in the published CRL.
        s.run("h", &["account", "disable", "--name", name]).ok();
        let (disabled, serial) = account_state(&s, name);
        assert!(disabled && revoked(&s, &serial), "{name} after the re-run");
        assert!(
            access_crls_list(&s, &serial),
            "{name}: certificate {serial} missing from the Access CA's CRLs"
        );
        check_audit(&s);
    };
    let mut n = 0;
    let mut add = || {
        n += 1;
        let name = format!("op-{n}");
        s.account("h", "operator", &name, &[]);
        name
    };
    // Stopped after the audit record was written, before the store wrote the change: nothing
    // happened (the record is removed by the next write).
    let name = add();
    let r = s.run_env(
        "h",
        &["account", "disable", "--name", &name],
        &[("METERPKI_FAILPOINT", "store.after-audit:1")],
    );
    assert_ne!(r.code, 0, "the failpoint stopped it");
    let (disabled, serial) = account_state(&s, &name);
    assert!(!disabled && !revoked(&s, &serial), "nothing was changed");
    let v = s.run("h", &["audit", "verify", "--json"]).ok().json();
    assert_eq!(v["uncommitted"], 1, "{v}");
    check(&name);
    let list = s.run("h", &["audit", "list", "--json"]).ok().stdout;
    assert!(list.contains(ca_core::UNCOMMITTED_EVENT), "{list}");
    // Stopped after the store write, before the CRLs: disabled and revoked; the re-run publishes.
    let name = add();
    let r = s.run_env(
        "h",
        &["account", "disable", "--name", &name],
        &[("METERPKI_FAILPOINT", "account.disable.after-commit:1")],
    );
    assert_ne!(r.code, 0, "the failpoint stopped it");
    let (disabled, serial) = account_state(&s, &name);
    assert!(disabled && revoked(&s, &serial));
    check(&name);
    // SIGKILL at random moments.
    let mut kills = 0;
    for _ in 0..rounds {
        let name = add();
        kills += kill_after(
            &s,
            &["account", "disable", "--name", &name],
            1 + rng.below(400),
        ) as usize;
        check(&name);
    }
    eprintln!("account disable: {kills} of {rounds} kill(s) landed mid-run");
}
