//! Secrets: PINs and shares never appear in any output, files holding them are 0600, and the
//! server never opens the root token.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{curl, setup, Server, EXE};

/// PINs and share contents never appear in any output (every command's `--help`, normal and
/// `-vv` runs, errors, the server's log, the audit log) nor in the server's arguments; files
/// holding secrets are 0600; the server never opens the root token (the PKCS#11 module we load in
/// place of SoftHSM logs every session's token).
#[test]
fn secrets_never_leak_and_the_server_never_opens_the_root_token() {
    let s = setup();
    let real = s.use_fault_module("h");
    let log = s.path("pkcs11.log");
    let env = [
        ("METERPKI_FAULTS_MODULE", real.clone()),
        ("METERPKI_FAULTS_LOG", log.display().to_string()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The secrets: the online token's user and SO PINs, every officer's share.
    let mut secrets: Vec<String> = ["h/secrets/online.pin", "h/secrets/online-so.pin"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(s.path(f))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    for i in 1..=3 {
        let text = std::fs::read_to_string(s.share("h", i)).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        let v: Value = serde_json::from_str(&body).unwrap();
        secrets.push(v["share"].as_str().unwrap().to_string());
    }
    assert!(secrets.iter().all(|x| x.len() >= 16), "{secrets:?}");

    let mut seen = String::new();
    let helps: &[&[&str]] = &[
        &[],
        &["init"],
        &["ceremony", "root"],
        &["ceremony", "issuing-ca"],
        &["issue"],
        &["revoke"],
        &["crl", "publish"],
        &["account", "add"],
        &["account", "list"],
        &["account", "disable"],
        &["serve"],
        &["show"],
        &["status"],
        &["audit", "verify"],
        &["audit", "list"],
        &["supplier", "register"],
        &["supplier", "enrol"],
        &["supplier", "rotate"],
        &["supplier", "revoke-key"],
        &["supplier", "takeover"],
        &["supplier", "exit"],
        &["supplier", "list"],
        &["meter", "assign"],
        &["meter", "change-supplier"],
        &["meter", "show"],
        &["update", "verify"],
        &["hsm", "bench"],
    ];
    for h in helps {
        let mut args: Vec<&str> = h.to_vec();
        args.push("--help");
        let r = s.run_env("h", &args, &env_ref);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        seen += &r.stdout;
        seen += &r.stderr;
    }
    // The benchmark binary's help texts too.
    for h in [
        &[][..],
        &["api"],
        &["issue"],
        &["takeover"],
        &["crl"],
        &["make-batch"],
    ] {
        let mut args: Vec<&str> = h.to_vec();
        args.push("--help");
        let r = s.bench_env("h", &args, &env_ref);
        assert_eq!(r.code, 0, "meterpki-bench {args:?}: {}", r.stderr);
        seen += &r.stdout;
        seen += &r.stderr;
    }
    // Ordinary work, verbose, and refusals (errors print their causes).
    let batch = s.path("b.ndjson").display().to_string();
    let r = s.bench_env(
        "h",
        &["make-batch", "--count", "3", "--out", &batch],
        &env_ref,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    seen += &r.stdout;
    seen += &r.stderr;
    for args in [
        vec!["-vv", "status", "--json"],
        vec!["-vv", "issue", "--batch", &batch, "--out", "b.out"],
        vec!["-vv", "crl", "publish"],
        vec!["-vv", "account", "list"],
        vec!["-vv", "audit", "verify"],
        vec![
            "-vv",
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--share",
            "h-shares/officer-1.share",
            "--share",
            "h-shares/officer-2.share",
        ],
        vec![
            "-vv",
            "ceremony",
            "issuing-ca",
            "--kind",
            "device",
            "--share",
            "h-shares/officer-1.share",
        ],
        vec![
            "-vv",
            "revoke",
            "--serial",
            "00ff",
            "--reason",
            "keyCompromise",
        ],
    ] {
        let r = s.run_env("h", &args, &env_ref);
        seen += &r.stdout;
        seen += &r.stderr;
    }
    // A wrong PIN from the environment: refused, and not echoed.
    let r = s.run_env(
        "h",
        &["-vv", "status"],
        &[
            ("METERPKI_HSM_PIN", "wrong-pin-0000000000"),
            ("METERPKI_FAULTS_MODULE", &real),
        ],
    );
    seen += &r.stdout;
    seen += &r.stderr;
    // The server, verbose, with a request served; its log, arguments and environment.
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new(EXE)
        .args([
            "--home",
            &s.path("h").display().to_string(),
            "-vv",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--crl-listen",
            "127.0.0.1:0",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("SOFTHSM2_CONF")
        .env_remove("METERPKI_REEXEC")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(s.path("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let srv = Server {
        child,
        port,
        crl_port: None,
        log: s.path("serve.log"),
    };
    let (code, _) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        "/v1/devices/00-DB-12-00-00-00-00-01/certificates",
        None,
        &[],
    );
    assert_eq!(code, 200);
    let pid = srv.child.id();
    seen += &std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    seen += &String::from_utf8_lossy(
        &std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default(),
    );
    assert_eq!(srv.stop(), 0);
    seen += &std::fs::read_to_string(s.path("serve.log")).unwrap();
    seen += &std::fs::read_to_string(s.path("h/audit/audit.log")).unwrap();
    assert!(
        seen.len() > 10_000,
        "too little output captured to mean anything"
    );
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            !seen.contains(secret.as_str()),
            "secret {i} appears in the output"
        );
    }
    // The server opened the online token, never the root token.
    let opened = std::fs::read_to_string(&log).unwrap();
    assert!(opened.contains("open meterpki-online"), "{opened}");
    assert!(
        !opened.contains("open meterpki-root"),
        "the server opened the root token: {opened}"
    );
    // Files holding secrets are 0600.
    use std::os::unix::fs::PermissionsExt;
    let mut secret_files = vec![
        s.path("h/secrets/online.pin"),
        s.path("h/secrets/online-so.pin"),
    ];
    secret_files.extend((1..=3).map(|i| s.share("h", i)));
    for e in std::fs::read_dir(s.path("creds")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "key") {
            secret_files.push(p);
        }
    }
    for f in &secret_files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
    assert!(secret_files.len() >= 8);
}

/// A PIN given in the environment is not left there: the server runs again without it (the
/// PIN handed over through a pipe), writes no core dump and is not dumpable.
#[test]
fn a_pin_from_the_environment_does_not_stay_in_the_servers_environment() {
    let s = meterpki_tests::Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account("h", "operator", "ops", &[]);
    let pin = std::fs::read_to_string(s.path("h/secrets/online.pin"))
        .unwrap()
        .trim()
        .to_string();
    // The PIN file moved away: only the environment has the PIN.
    std::fs::rename(s.path("h/secrets/online.pin"), s.path("online.pin.aside")).unwrap();
    let srv = Server::start_env(&s, &[], &[("METERPKI_HSM_PIN", pin.clone())]);
    let (code, _) = curl(
        &s,
        &srv,
        Some("ops"),
        "GET",
        "/v1/devices/00-DB-12-00-00-00-00-01/certificates",
        None,
        &[],
    );
    assert_eq!(code, 200, "the server signs with the PIN it was handed");
    let pid = srv.child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("METERPKI_HSM_PIN"), "{environ}");
    assert!(
        !environ.contains(&pin),
        "the PIN is in the server's environment"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() == 2,
        "{core}"
    );
    assert_eq!(srv.stop(), 0);
}
