//! Helpers for meterpki's end-to-end tests: a home in a temporary directory, the CLI run as a
//! real process, snapshots that prove a refused command changed nothing.
#![forbid(unsafe_code)]

mod hsm;
mod pg;

pub use pg::{pg_database, PgCluster};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use sha2::{Digest, Sha256};

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics unless the exit code is 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the exit code is `code` and stderr contains `needle`.
    pub fn fails(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).expect("JSON on stdout")
    }
}

/// A scratch directory holding one or more homes.
pub struct Scratch {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Scratch {
    /// A new scratch directory; `exe` is the CLI binary.
    pub fn new(exe: &str) -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("meterpki-e2e-")
                .tempdir()
                .expect("tempdir"),
            exe: PathBuf::from(exe),
        }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `exe --home <home> args...` in the scratch directory, with none of the caller's
    /// meterpki environment and with `env` added.
    fn exec(&self, exe: &Path, home: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.exec_command(Command::new(exe), home, args, env)
    }

    /// Runs `meterpki --home <home> args...` under the umask `umask` (through `sh`).
    pub fn run_umask(&self, umask: &str, home: &str, args: &[&str]) -> Run {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(&self.exe);
        self.exec_command(c, home, args, &[])
    }

    fn exec_command(&self, mut c: Command, home: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let exe = c.get_program().to_os_string();
        c.current_dir(self.dir.path())
            .arg("--home")
            .arg(self.path(home))
            .args(args)
            .env_remove("METERPKI_HSM_PIN")
            .env_remove("METERPKI_HOME")
            .env_remove("SOFTHSM2_CONF")
            .env_remove("METERPKI_REEXEC");
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(
            c.output()
                .unwrap_or_else(|e| panic!("running {}: {e}", exe.to_string_lossy())),
        )
    }

    /// Runs `meterpki --home <home> args...` with extra environment variables.
    pub fn run_env(&self, home: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.exec(&self.exe, home, args, env)
    }

    /// Runs `meterpki --home <home> args...`.
    pub fn run(&self, home: &str, args: &[&str]) -> Run {
        self.run_env(home, args, &[])
    }

    /// The benchmark binary built beside the CLI under test (`meterpki-bench-e2e`).
    pub fn bench_exe(&self) -> PathBuf {
        self.exe.with_file_name("meterpki-bench-e2e")
    }

    /// Runs `meterpki-bench --home <home> args...` with extra environment variables.
    pub fn bench_env(&self, home: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.exec(&self.bench_exe(), home, args, env)
    }

    /// Runs `meterpki-bench --home <home> args...`.
    pub fn bench(&self, home: &str, args: &[&str]) -> Run {
        self.bench_env(home, args, &[])
    }

    /// `init`, a root ceremony (`officers`, `quorum`, shares in `<home>-shares/`) and the given
    /// issuing CAs, each opened with the first `quorum` shares.
    pub fn ceremonies(&self, home: &str, officers: u8, quorum: u8, issuing: &[&str]) {
        self.run(home, &["init"]).ok();
        self.ceremonies_only(home, officers, quorum, issuing);
    }

    /// `init`, then the home's CRL URLs pointed at a free port on 127.0.0.1 (`crl.base_url`
    /// and `server.crl_listen`, before any certificate names them), then the ceremonies.
    /// Returns the port: `Server::start_with(s, &["--crl-listen", &format!("127.0.0.1:{port}")])`
    /// serves the CRLs where the certificates say they are.
    pub fn ceremonies_with_crl_port(
        &self,
        home: &str,
        officers: u8,
        quorum: u8,
        issuing: &[&str],
    ) -> u16 {
        self.run(home, &["init"]).ok();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = self.path(&format!("{home}/meterpki.toml"));
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text
            .replace(
                "base_url = \"http://127.0.0.1:8080/crl\"",
                &format!("base_url = \"http://127.0.0.1:{port}/crl\""),
            )
            .replace(
                "crl_listen = \"127.0.0.1:8080\"",
                &format!("crl_listen = \"127.0.0.1:{port}\""),
            );
        assert!(text.contains(&format!(":{port}/crl")), "{text}");
        std::fs::write(&config, text).unwrap();
        self.ceremonies_only(home, officers, quorum, issuing);
        port
    }

    /// The root and issuing-CA ceremonies on an initialised `home`.
    pub fn ceremonies_only(&self, home: &str, officers: u8, quorum: u8, issuing: &[&str]) {
        let shares = format!("{home}-shares");
        self.run(
            home,
            &[
                "ceremony",
                "root",
                "--officers",
                &officers.to_string(),
                "--quorum",
                &quorum.to_string(),
                "--shares-dir",
                &shares,
            ],
        )
        .ok();
        for kind in issuing {
            let mut args = vec![
                "ceremony".to_string(),
                "issuing-ca".into(),
                "--kind".into(),
                kind.to_string(),
            ];
            for i in 1..=quorum {
                args.push("--share".into());
                args.push(self.share(home, i).display().to_string());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run(home, &args).ok();
        }
    }

    /// `meterpki store migrate --to postgres --url-file FILE [extra...]` on `home`.
    pub fn migrate_to_postgres(&self, home: &str, url_file: &Path, extra: &[&str]) -> Run {
        let file = url_file.display().to_string();
        let mut args = vec!["store", "migrate", "--to", "postgres", "--url-file", &file];
        args.extend_from_slice(extra);
        self.run(home, &args)
    }

    /// A copy of the home `from` as `to` (`cp -a`): another machine's home on a shared store,
    /// with the same configuration, CA certificates and HSM keys.
    pub fn copy_home(&self, from: &str, to: &str) {
        let copied = Command::new("cp")
            .args([
                "-a",
                &self.path(from).display().to_string(),
                &self.path(to).display().to_string(),
            ])
            .status()
            .unwrap();
        assert!(copied.success(), "cp -a {from} {to}");
    }

    /// `meterpki account add --role ROLE --name NAME [extra...] --out creds` on `home`.
    pub fn account(&self, home: &str, role: &str, name: &str, extra: &[&str]) {
        let mut args = vec!["account", "add", "--role", role, "--name", name];
        args.extend_from_slice(extra);
        args.extend(["--out", "creds"]);
        self.run(home, &args).ok();
    }

    /// `meterpki supplier enrol --json` of `profile` for `supplier` on `home`, from the openssl
    /// CSR `<name>.csr` (made the first time, reused after: the same key again); the
    /// certificate goes to `<name>.pem` in the scratch directory.
    pub fn enrol(&self, home: &str, supplier: &str, profile: &str, name: &str) -> Run {
        let csr = self.path(&format!("{name}.csr"));
        if !csr.exists() {
            openssl_csr(&self.path(""), name, "prime256v1");
        }
        let out = self.path(&format!("{name}.pem"));
        self.run(
            home,
            &[
                "supplier",
                "enrol",
                "--id",
                supplier,
                "--profile",
                profile,
                "--csr",
                &csr.display().to_string(),
                "--out",
                &out.display().to_string(),
                "--json",
            ],
        )
    }

    /// `meterpki supplier register --id ID --name NAME` on `home`.
    pub fn supplier(&self, home: &str, id: &str, name: &str) {
        self.run(home, &["supplier", "register", "--id", id, "--name", name])
            .ok();
    }

    /// `meterpki issue` of one certificate from a fresh openssl CSR: `meter-signing` for
    /// `id` (an EUI-64 device ID), or `supplier-signing` for `id` as a supplier's entity ID
    /// when `supplier` names it. The certificate goes to `out` (relative to the scratch
    /// directory).
    pub fn issue_one(&self, home: &str, id: &str, supplier: Option<&str>, out: &str) -> Run {
        let (_, csr) = openssl_csr(&self.path(""), &format!("{home}-{id}-{out}"), "prime256v1");
        let csr = csr.display().to_string();
        let out = self.path(out).display().to_string();
        let mut args = match supplier {
            None => vec!["issue", "--profile", "meter-signing", "--device-id", id],
            Some(name) => vec![
                "issue",
                "--profile",
                "supplier-signing",
                "--entity-id",
                id,
                "--name",
                name,
            ],
        };
        args.extend(["--csr", &csr, "--out", &out]);
        self.run(home, &args)
    }

    /// `home`'s ARL in PEM (written beside it in the scratch directory), checked to be clean
    /// by pkilint's ARL rules and signed by the root; returns its text form.
    pub fn arl_linted(&self, home: &str) -> String {
        let pem = self.path(&format!("{home}-arl.pem")).display().to_string();
        let der = self
            .path(&format!("{home}/crl/root/arl.crl"))
            .display()
            .to_string();
        tool(
            "openssl",
            &["crl", "-inform", "DER", "-in", &der, "-out", &pem],
            &[],
        )
        .ok();
        let root = self
            .path(&format!("{home}/ca/root.pem"))
            .display()
            .to_string();
        let v = tool(
            "openssl",
            &["crl", "-in", &pem, "-CAfile", &root, "-noout"],
            &[],
        );
        assert!(
            v.stderr.contains("verify OK") || v.stdout.contains("verify OK"),
            "{v:?}"
        );
        let lint = tool(
            &pkilint().replace("lint_pkix_cert", "lint_crl"),
            &["lint", "-t", "ARL", "-p", "PKIX", "-s", "WARNING", &pem],
            &[],
        );
        assert!(
            lint.code == 0 && lint.stdout.trim().is_empty(),
            "pkilint on the ARL: {}{}",
            lint.stdout,
            lint.stderr
        );
        tool("openssl", &["crl", "-in", &pem, "-noout", "-text"], &[])
            .ok()
            .stdout
    }

    /// The share file of officer `i` of `home`'s root ceremony.
    pub fn share(&self, home: &str, i: u8) -> PathBuf {
        self.path(&format!("{home}-shares/officer-{i}.share"))
    }

    /// Everything in the scratch directory that a command could change: every file's content,
    /// except SoftHSM's token files, whose *names* are kept (SoftHSM rewrites a token file to
    /// count failed logins; a new key or token shows up as a new file), meterpki's copies of
    /// them, and the sled store's files, which sled rewrites on every open (tests check the
    /// store through the CLI).
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if rel.contains("softhsm/token-copies") {
            // meterpki's copies of SoftHSM's token files (see `softhsm_config::heal_tokens`):
            // SoftHSM state, made or refreshed by any command that opens the HSM.
            continue;
        }
        if p.is_dir() {
            out.insert(format!("{rel}/"), String::new());
            walk(root, &p, out);
        } else if rel.contains("/store/") {
            // sled rewrites its snapshot files whenever the store is opened, even read-only; the
            // store's content is checked through the CLI (status, show, account list) instead.
            continue;
        } else if rel.contains("softhsm/tokens/") {
            out.insert(rel, "(token file)".into());
        } else {
            let bytes = std::fs::read(&p).unwrap_or_default();
            out.insert(rel, hex::encode(Sha256::digest(bytes)));
        }
    }
}

/// A `meterpki serve` process on the home `h` of a scratch directory, on a free port; killed
/// when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The port of its plain-HTTP CRL listener, if it has one.
    pub crl_port: Option<u16>,
    /// Where its standard error (its log) goes.
    pub log: PathBuf,
}

impl Server {
    /// Starts the server.
    pub fn start(s: &Scratch) -> Server {
        Server::start_with(s, &[])
    }

    /// Starts the server with extra arguments.
    pub fn start_with(s: &Scratch, extra: &[&str]) -> Server {
        Server::start_env(s, extra, &[])
    }

    /// Starts the server with extra arguments and environment variables.
    pub fn start_env(s: &Scratch, extra: &[&str], env: &[(&str, String)]) -> Server {
        Server::start_in(s, "h", extra, env)
    }

    /// Starts the server of the home `home` (in the scratch directory).
    pub fn start_in(s: &Scratch, home: &str, extra: &[&str], env: &[(&str, String)]) -> Server {
        // Tests run side by side: the CRL listener gets a free port unless the test names one.
        let crl_default: &[&str] = if extra.contains(&"--crl-listen") {
            &[]
        } else {
            &["--crl-listen", "127.0.0.1:0"]
        };
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = s.path(&format!(
            "server-{}.log",
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut child = Command::new(&s.exe)
            .args([
                "--home",
                &s.path(home).display().to_string(),
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(crl_default)
            .args(extra)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("METERPKI_REEXEC")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let port_of = |line: &str| -> Option<u16> {
            line.trim()
                .trim_end_matches("/crl/")
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = port_of(&line).unwrap_or_else(|| {
            let _ = child.wait();
            panic!(
                "server said {line:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let mut second = String::new();
        let crl_port = if line.starts_with("listening") {
            out.read_line(&mut second).unwrap();
            second
                .starts_with("serving CRLs")
                .then(|| port_of(&second))
                .flatten()
        } else {
            None
        };
        // The server writes nothing more to stdout; keep the pipe open while it runs.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Server {
            child,
            port,
            crl_port,
            log,
        }
    }

    /// SIGTERM, then its exit code.
    pub fn stop(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a program (openssl, pkcs11-tool) and returns its output.
pub fn tool(program: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(program);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(
        c.output()
            .unwrap_or_else(|e| panic!("{program} must be installed: {e}")),
    )
}

/// The installed SoftHSM module.
pub fn softhsm_module() -> String {
    softhsm_config::find_module()
        .expect("SoftHSM2 is not installed (apt-get install softhsm2)")
        .display()
        .to_string()
}

/// pkilint's RFC 5280 linter (`lint_pkix_cert`): `METERPKI_PKILINT`, else `.tools/venv` (where
/// `make test` installs it), else `PATH`.
pub fn pkilint() -> String {
    if let Ok(p) = std::env::var("METERPKI_PKILINT") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/lint_pkix_cert");
    if venv.exists() {
        return venv.display().to_string();
    }
    "lint_pkix_cert".into()
}

/// `scripts/pkcs11-key-audit.py` (PyKCS11, installed by `make test` into `.tools/venv`) on the
/// token `label` of a SoftHSM home: one JSON object per private key (sensitive, extractable,
/// wrap-with-trusted, and whether a wrap under an untrusted key was refused); exit 1 when a
/// key could leave the token other than wrapped under a trusted key.
pub fn pkcs11_key_audit(home: &Path, label: &str, pin_file: &Path) -> Run {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/install-deps.sh (make test does)",
        python.display()
    );
    let conf = home.join("softhsm/softhsm2.conf");
    tool(
        &python.display().to_string(),
        &[
            &root
                .join("scripts/pkcs11-key-audit.py")
                .display()
                .to_string(),
            &softhsm_module(),
            label,
            &pin_file.display().to_string(),
        ],
        &[("SOFTHSM2_CONF", &conf.display().to_string())],
    )
}

/// A P-256 (or other curve) key and a CSR made by openssl, independently of meterpki.
pub fn openssl_csr(dir: &Path, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    tool(
        "openssl",
        &[
            "ecparam",
            "-name",
            curve,
            "-genkey",
            "-noout",
            "-out",
            &key.display().to_string(),
        ],
        &[],
    )
    .ok();
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            &key.display().to_string(),
            "-subj",
            "/",
            "-out",
            &csr.display().to_string(),
        ],
        &[],
    )
    .ok();
    (key, csr)
}
