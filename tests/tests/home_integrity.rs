//! A home's state cannot silently vanish or move: a store that is missing, another home's or
//! older than the audit log is refused by every command (and by the server) before anything is
//! published; a changed `crl.base_url` is refused, and the certificates already issued keep the
//! CRL location they name.

use meterpki_tests::{tool, Scratch, Server};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn issue_meter(s: &Scratch, home: &str, id: &str, out: &str) -> meterpki_tests::Run {
    s.issue_one(home, id, None, out)
}

/// What a user can see of `home` without its store: CRLs, the audit log, CA files.
fn published(s: &Scratch, home: &str) -> std::collections::BTreeMap<String, String> {
    s.snapshot()
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{home}/")) && !k.starts_with(&format!("{home}/store"))
        })
        .collect()
}

fn every_command_refuses(s: &Scratch, needle: &str) {
    let before = published(s, "h");
    for args in [
        vec!["status"],
        vec!["crl", "publish"],
        vec![
            "revoke",
            "--device-id",
            "00-DB-12-34-56-78-90-01",
            "--reason",
            "keyCompromise",
        ],
        vec!["show", "--device-id", "00-DB-12-34-56-78-90-01"],
        vec!["supplier", "list"],
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--crl-listen",
            "127.0.0.1:0",
        ],
    ] {
        let r = s.run("h", &args).fails(1, "refusing to use the store");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    issue_meter(s, "h", "00-DB-12-34-56-78-90-09", "x.pem").fails(1, needle);
    let r = s.run("h", &["audit", "verify"]).fails(1, "NOT intact");
    assert!(r.stderr.contains(needle), "{}", r.stderr);
    assert_eq!(
        published(s, "h"),
        before,
        "something was published or written"
    );
}

#[test]
fn a_missing_foreign_or_older_store_is_refused_by_every_command() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    issue_meter(&s, "h", "00-DB-12-34-56-78-90-01", "m.pem").ok();
    s.run("h", &["crl", "publish"]).ok();
    s.ceremonies("other", 3, 2, &["device"]);
    let mv = |from: &str, to: &str| {
        std::fs::rename(s.path(from), s.path(to)).unwrap();
    };

    // Removed: refused, and not re-created.
    mv("h/store", "h-store");
    every_command_refuses(&s, "is missing or empty");
    assert!(!s.path("h/store").exists(), "the store was re-created");

    // Another home's store.
    tool(
        "cp",
        &[
            "-a",
            &s.path("other/store").display().to_string(),
            &s.path("h/store").display().to_string(),
        ],
        &[],
    )
    .ok();
    every_command_refuses(&s, "belongs to another home");
    std::fs::remove_dir_all(s.path("h/store")).unwrap();

    // The store and the audit log both removed: the root ceremony's record still says the
    // home had them.
    mv("h/audit", "h-audit");
    every_command_refuses(&s, "has a root CA");
    mv("h-audit", "h/audit");

    // Damaged store files (cut short, emptied): a clear error naming the store, never a panic.
    let db = s.path("h-store/db");
    let whole = std::fs::read(&db).unwrap();
    mv("h-store", "h/store");
    for len in [100, 0] {
        std::fs::write(s.path("h/store/db"), &whole[..len]).unwrap();
        for args in [vec!["status"], vec!["crl", "publish"]] {
            s.run("h", &args).fails(1, "its files are damaged");
        }
    }
    std::fs::write(s.path("h/store/db"), &whole).unwrap();
    mv("h/store", "h-store");

    // Its own store again: everything works, nothing was lost.
    mv("h-store", "h/store");
    s.run("h", &["status"]).ok();
    s.run("h", &["audit", "verify"]).ok();

    // A copy taken before later changes (a backup restored): older than the log, refused.
    tool(
        "cp",
        &[
            "-a",
            &s.path("h/store").display().to_string(),
            &s.path("h-backup").display().to_string(),
        ],
        &[],
    )
    .ok();
    for i in 2..=4 {
        issue_meter(
            &s,
            "h",
            &format!("00-DB-12-34-56-78-90-0{i}"),
            &format!("m{i}.pem"),
        )
        .ok();
    }
    s.run(
        "h",
        &[
            "revoke",
            "--device-id",
            "00-DB-12-34-56-78-90-02",
            "--reason",
            "superseded",
        ],
    )
    .ok();
    mv("h/store", "h-current");
    mv("h-backup", "h/store");
    every_command_refuses(&s, "older than the audit log");
    std::fs::remove_dir_all(s.path("h/store")).unwrap();
    mv("h-current", "h/store");
    s.run("h", &["audit", "verify"]).ok();
}

/// The CRL URL written into a certificate is the one its CRL is published at for its whole
/// life: a changed `crl.base_url` is refused (saying what to do), and the old certificates
/// still pass a relying party that fetches their CRLs.
#[test]
fn a_changed_crl_base_url_is_refused_and_old_certificates_keep_their_crl() {
    let s = Scratch::new(EXE);
    let port = s.ceremonies_with_crl_port("h", 3, 2, &["device", "access"]);
    issue_meter(&s, "h", "00-DB-12-34-56-78-90-01", "m.pem").ok();
    let config = s.path("h/meterpki.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let old = format!("http://127.0.0.1:{port}/crl");
    std::fs::write(
        &config,
        original.replace(&old, "http://crl.example.net/meterpki"),
    )
    .unwrap();
    let before = published(&s, "h");
    let r = issue_meter(&s, "h", "00-DB-12-34-56-78-90-02", "m2.pem").fails(2, "crl.base_url");
    assert!(r.stderr.contains(&old), "names the bound URL: {}", r.stderr);
    assert!(r.stderr.contains("never changes"), "{}", r.stderr);
    s.run("h", &["crl", "publish"]).fails(2, "crl.base_url");
    assert_eq!(published(&s, "h"), before);

    std::fs::write(&config, &original).unwrap();
    let _srv = Server::start_with(&s, &["--crl-listen", &format!("127.0.0.1:{port}")]);
    let root = s.path("h/ca/root.pem").display().to_string();
    let device = s.path("h/ca/device.pem").display().to_string();
    let m = s.path("m.pem").display().to_string();
    tool(
        "openssl",
        &[
            "verify",
            "-crl_check_all",
            "-crl_download",
            "-CAfile",
            &root,
            "-untrusted",
            &device,
            &m,
        ],
        &[],
    )
    .ok();
}

/// Modes of everything under `dir` that give group or others any access.
fn exposed_modes(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        if meta.permissions().mode() & 0o077 != 0 && !meta.file_type().is_symlink() {
            out.push(format!(
                "{} {:o}",
                d.display(),
                meta.permissions().mode() & 0o7777
            ));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Under `umask 000` the home, its store, log, policies, SoftHSM files and the officers' shares
/// are still for the user alone; a home (or anything in it) that another user can write is
/// refused by every command, naming the path, until it is fixed.
#[test]
fn a_home_is_private_whatever_the_umask_and_refused_when_others_can_write_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new(EXE);
    s.run_umask("000", "h", &["init"]).ok();
    s.run_umask(
        "000",
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
    let (a, b) = (
        s.share("h", 1).display().to_string(),
        s.share("h", 2).display().to_string(),
    );
    s.run_umask(
        "000",
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
    .ok();
    issue_meter(&s, "h", "00-DB-12-34-56-78-90-01", "m.pem").ok();
    let home = s.path("h");
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    for dir in [home.clone(), s.path("h-shares")] {
        let open = exposed_modes(&dir);
        assert!(open.is_empty(), "open to group or others: {open:#?}");
    }
    let status = || s.run("h", &["status"]);
    status().ok();
    let set = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (path, open, closed, why) in [
        (
            home.join("meterpki.toml"),
            0o666,
            0o600,
            "writable by every user",
        ),
        (home.join("store"), 0o770, 0o700, "writable by its group"),
        (home.clone(), 0o777, 0o700, "writable by every user"),
        (home.join("policies"), 0o722, 0o700, "writable by"),
    ] {
        set(&path, open);
        let r = status().fails(2, why);
        assert!(
            r.stderr.contains(&path.display().to_string()),
            "{}",
            r.stderr
        );
        issue_meter(&s, "h", "00-DB-12-34-56-78-90-02", "n.pem").fails(2, why);
        set(&path, closed);
        status().ok();
    }
}
