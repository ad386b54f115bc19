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
