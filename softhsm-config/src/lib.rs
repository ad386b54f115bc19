//! SoftHSM2 set-up for meterpki: the configuration file a home (or a test) gets, the module's
//! usual locations, and a harness that runs a test in its own process with its own token
//! directory.
//!
//! SoftHSM reads its configuration from `SOFTHSM2_CONF` once, when the module is initialised,
//! and a process can initialise a module only once. So every home and every test that needs its
//! own tokens needs its own *process* with that variable set: the CLI re-executes itself with it
//! (see `meterpki_cli`), and tests use [`isolated`], which re-runs one test in a child process.
//! Neither needs `unsafe` `std::env::set_var`.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

/// The template shipped in this crate (`softhsm2.conf.template`).
pub const TEMPLATE: &str = include_str!("../softhsm2.conf.template");

/// The environment variable SoftHSM reads.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";

/// Where Debian and others install the module.
pub const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// The SoftHSM module: `METERPKI_SOFTHSM_MODULE` if set, else the first installed candidate.
pub fn find_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("METERPKI_SOFTHSM_MODULE") {
        return Some(PathBuf::from(p));
    }
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// True when `module` looks like SoftHSM (by file name).
pub fn is_softhsm(module: &Path) -> bool {
    module
        .file_name()
        .map(|n| n.to_string_lossy().contains("softhsm"))
        .unwrap_or(false)
}

/// Creates `dir/tokens` and writes `dir/softhsm2.conf` pointing at it; returns the conf path.
pub fn write_config(dir: &Path) -> io::Result<PathBuf> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    set_mode(dir, 0o700)?;
    set_mode(&tokens, 0o700)?;
    let tokens = tokens.canonicalize()?;
    let conf = dir.join("softhsm2.conf");
    let text = TEMPLATE.replace("@TOKENDIR@", &tokens.to_string_lossy());
    std::fs::write(&conf, text)?;
    Ok(conf)
}

/// Repairs tokens that an interrupted SoftHSM left unlisted, and keeps the copies that allow it.
///
/// Why: SoftHSM 2.6 rewrites a token's `token.object` (label, PIN blobs, flags) in place on
/// every login: `ftruncate` to 0, then `write`. A process killed between the two leaves the file
/// empty, and SoftHSM then no longer lists the token, with the CA keys in it (found by our crash
/// harness: about 3 % of SIGKILLs landing in a CLI command's first 100 ms). No SoftHSM setting
/// avoids it, so for each token directory under `tokens` this keeps a copy of a non-empty
/// `token.object` in `backup` (written to a temporary file and renamed, mode 0600), and puts the
/// copy back when it finds the file empty and still empty half a second later (a live writer
/// finishes within microseconds). Returns the token directories it repaired.
pub fn heal_tokens(tokens: &Path, backup: &Path) -> io::Result<Vec<PathBuf>> {
    let mut healed = Vec::new();
    let Ok(entries) = std::fs::read_dir(tokens) else {
        return Ok(healed);
    };
    for entry in entries {
        let dir = entry?.path();
        let object = dir.join("token.object");
        let Ok(meta) = std::fs::metadata(&object) else {
            continue;
        };
        let Some(name) = dir.file_name() else {
            continue;
        };
        let saved = backup.join(format!("{}.token.object", name.to_string_lossy()));
        if meta.len() == 0 {
            let mut still_empty = true;
            for _ in 0..10 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if std::fs::metadata(&object)?.len() > 0 {
                    still_empty = false;
                    break;
                }
            }
            match std::fs::read(&saved) {
                Ok(copy) if still_empty && !copy.is_empty() => {
                    replace_file(&object, &copy)?;
                    healed.push(dir);
                }
                _ => {}
            }
            continue;
        }
        let current = std::fs::read(&object)?;
        // Empty now means a login's rewrite is under way in another process since the size was
        // read: keep the good copy rather than replace it with nothing.
        if !current.is_empty() && std::fs::read(&saved).ok().as_deref() != Some(&current[..]) {
            std::fs::create_dir_all(backup)?;
            set_mode(backup, 0o700)?;
            replace_file(&saved, &current)?;
        }
    }
    Ok(healed)
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600), syncs it, and renames it over
/// `path`: a reader sees the old file or the new one, never a part.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A name of this process's own: two processes (two servers on one home) may save the same
    // copy at once, and must not write or rename each other's temporary file.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".meterpki-tmp.{}.{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

const CHILD_ENV: &str = "METERPKI_ISOLATED_TEST";
const DIR_ENV: &str = "METERPKI_ISOLATED_DIR";

/// Runs the test `name` (the test function's full path as the harness names it, e.g.
/// `pool::recovers`) in a child process of the test binary with its own SoftHSM token directory.
///
/// In the parent, this creates a temporary directory, writes a SoftHSM config into it, re-runs
/// the current test binary for exactly this test with `SOFTHSM2_CONF` set, and panics with the
/// child's output if it failed. In the child, it calls `body` with the directory.
pub fn isolated(name: &str, body: impl FnOnce(&Path)) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("isolated dir"));
        body(&dir);
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("meterpki-softhsm-")
        .tempdir()
        .expect("temp dir");
    let conf = write_config(tmp.path()).expect("softhsm config");
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, name)
        .env(DIR_ENV, tmp.path())
        .env(CONF_ENV, &conf)
        .output()
        .expect("spawn isolated test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Guard against a name that matched no test: the child would "pass" having run nothing.
    assert!(
        stdout.contains("1 passed"),
        "isolated test {name} did not run exactly one test:\n{stdout}\n{stderr}"
    );
    assert!(
        out.status.success(),
        "isolated test {name} failed:\n{stdout}\n{stderr}"
    );
    print!("{stdout}");
    eprint!("{stderr}");
}

#[cfg(test)]
mod tests {
    use super::heal_tokens;

    #[test]
    fn an_emptied_token_file_is_restored_from_its_copy_and_others_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let (tokens, copies) = (d.path().join("tokens"), d.path().join("copies"));
        for t in ["t1", "t2"] {
            std::fs::create_dir_all(tokens.join(t)).unwrap();
            std::fs::write(tokens.join(t).join("token.object"), format!("token {t}")).unwrap();
        }
        // First pass: copies made, nothing repaired.
        assert!(heal_tokens(&tokens, &copies).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(copies.join("t1.token.object")).unwrap(),
            "token t1"
        );
        // A login's rewrite interrupted: t1's file empty; t2's changed legitimately.
        std::fs::write(tokens.join("t1").join("token.object"), "").unwrap();
        std::fs::write(tokens.join("t2").join("token.object"), "token t2 v2").unwrap();
        let healed = heal_tokens(&tokens, &copies).unwrap();
        assert_eq!(healed, vec![tokens.join("t1")]);
        assert_eq!(
            std::fs::read_to_string(tokens.join("t1").join("token.object")).unwrap(),
            "token t1"
        );
        assert_eq!(
            std::fs::read_to_string(copies.join("t2.token.object")).unwrap(),
            "token t2 v2",
            "the copy follows legitimate changes"
        );
        // An empty file with no copy is left as it is (nothing to restore it from).
        std::fs::create_dir_all(tokens.join("t3")).unwrap();
        std::fs::write(tokens.join("t3").join("token.object"), "").unwrap();
        assert!(heal_tokens(&tokens, &copies).unwrap().is_empty());
        assert_eq!(
            std::fs::metadata(tokens.join("t3").join("token.object"))
                .unwrap()
                .len(),
            0
        );
        // No temporary files left behind.
        for dir in [tokens.join("t1"), copies.clone()] {
            for e in std::fs::read_dir(dir).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.ends_with(".meterpki-tmp"), "{name}");
            }
        }
    }
}
