//! How the CLI opens a home: the service with the PKCS#11 module (SoftHSM's token files looked
//! after first), the online PIN from its sources, and a watchdog that stops a command whose HSM
//! hangs. Also the process environment the CLI re-executes itself for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use ca_core::hsm::{HsmModule, HsmToken, ObjectSummary, SecretString, TokenSummary};
use ca_core::service::{Actor, HsmAccess, Service, ServiceError};
use ca_core::{Config, Home};

/// An opened home.
pub(crate) struct Ctx {
    pub service: Service,
    pub json: bool,
}

/// Whether a command may stop the process when the HSM hangs (the CLI) or answers 503 instead
/// (the server).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Watchdog {
    /// A signature pending past the sign timeout stops the process (exit 1).
    On,
    /// No watchdog: the caller answers a hung HSM itself (the server's 503).
    Off,
}

impl Ctx {
    /// Opens an initialised home.
    pub(crate) fn open(home: Home, json: bool, watchdog: Watchdog) -> Result<Ctx> {
        Ok(Ctx {
            service: Service::open(home.clone(), hsm_access(&home, watchdog))?,
            json,
        })
    }

    pub(crate) fn home(&self) -> &Home {
        self.service.home()
    }

    pub(crate) fn config(&self) -> &Config {
        self.service.config()
    }
}

/// The operator at this shell, for the audit log.
pub(crate) fn operator() -> Actor {
    Actor::local()
}

/// The PKCS#11 module of `home` and the online PIN's sources.
pub fn hsm_access(home: &Home, watchdog: Watchdog) -> HsmAccess {
    let (h1, h2, h3) = (home.clone(), home.clone(), home.clone());
    HsmAccess {
        load: Arc::new(move |config: &Config, module: &Path| {
            load_module(&h1, config, module, watchdog)
        }),
        online_pin: Arc::new(move |config: &Config| {
            crate::pin::online_pin(&h2, config)
                .map_err(|e| ServiceError::invalid("pin", format!("{e:#}")))
        }),
        token_pin: Arc::new(move |config: &Config, token: &ca_core::TokenConfig| {
            crate::pin::token_pin(&h3, config, token)
                .map_err(|e| ServiceError::invalid("pin", format!("{e:#}")))
        }),
    }
}

/// Before SoftHSM reads its tokens (a home with `hsm.softhsm`): token files an interrupted
/// process left empty are restored from their copies (see `softhsm_config::heal_tokens`).
/// Returns the token directory.
fn heal_softhsm(home: &Home, config: &Config) -> Result<Option<PathBuf>, ServiceError> {
    let tokens = config.hsm.softhsm.then(|| home.softhsm_tokens());
    if let Some(dir) = &tokens {
        let backup = home.softhsm_dir().join("token-copies");
        let healed = softhsm_config::heal_tokens(dir, &backup)
            .map_err(|e| ServiceError::io("checking the SoftHSM token files", e))?;
        for d in healed {
            tracing::warn!(token_dir = %d.display(), "a SoftHSM token file was left empty by an interrupted process; restored from its copy");
        }
    }
    Ok(tokens)
}

/// Every token holding the online keys (`[[hsm.tokens]]`, or the online token alone), each
/// opened as a pool of `sessions` through its own module, for the raw-rate benchmarks.
pub fn raw_online_tokens(
    home: &Home,
    config: &Config,
    sessions: usize,
) -> Result<Vec<Arc<hsm_bridge::Token>>> {
    let (hsm, online) = raw_online_token(home, config, sessions)?;
    let mut out = vec![online];
    for t in &config.hsm.tokens {
        if t.label == config.hsm.online_token {
            continue;
        }
        let module = t.module.as_deref().unwrap_or(&config.hsm.module);
        let other = if module == config.hsm.module {
            hsm.clone()
        } else {
            hsm_bridge::Hsm::load(module)?
        };
        let pin = crate::pin::token_pin(home, config, t)?;
        out.push(other.open(&t.label, pin, sessions)?);
    }
    Ok(out)
}

/// The PKCS#11 module, loaded as the service loads it (SoftHSM token files repaired first),
/// and the online token opened as a pool of `sessions`, for the raw signing-rate benchmarks
/// (`meterpki hsm bench`, `meterpki-bench`), which bypass the service.
pub fn raw_online_token(
    home: &Home,
    config: &Config,
    sessions: usize,
) -> Result<(hsm_bridge::Hsm, Arc<hsm_bridge::Token>)> {
    let tokens = heal_softhsm(home, config)?;
    let mut hsm = hsm_bridge::Hsm::load(&config.hsm.module)?;
    if let Some(dir) = tokens.as_deref().and_then(Path::parent) {
        hsm = hsm.with_token_lock(dir.join("token.lock"));
    }
    let token = hsm.open(
        &config.hsm.online_token,
        crate::pin::online_pin(home, config)?,
        sessions,
    )?;
    Ok((hsm, token))
}

fn load_module(
    home: &Home,
    config: &Config,
    path: &Path,
    watchdog: Watchdog,
) -> Result<Arc<dyn HsmModule>, ServiceError> {
    // The home's SoftHSM token directory belongs to the configured module; another module
    // (a second vendor's HSM) manages its own tokens.
    let tokens = if path == config.hsm.module {
        heal_softhsm(home, config)?
    } else {
        None
    };
    let module =
        hsm_bridge::Pkcs11Module::load(path, tokens).map_err(ca_core::hsm::HsmError::from)?;
    Ok(match watchdog {
        Watchdog::On => Arc::new(Watched(module)),
        Watchdog::Off => Arc::new(module),
    })
}

/// A module whose tokens are watched: a signature pending longer than `hsm.sign_timeout_ms`
/// (a hung HSM) stops the command with exit 1 (what was answered is stored; nothing
/// unanswered is).
#[derive(Debug)]
struct Watched(hsm_bridge::Pkcs11Module);

impl HsmModule for Watched {
    fn manufacturer(&self) -> Result<String, ca_core::hsm::HsmError> {
        self.0.manufacturer()
    }
    fn tokens(&self) -> Result<Vec<TokenSummary>, ca_core::hsm::HsmError> {
        self.0.tokens()
    }
    fn init_token(
        &self,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), ca_core::hsm::HsmError> {
        self.0.init_token(label, so_pin, user_pin)
    }
    fn discard_token(&self, label: &str) -> Result<bool, ca_core::hsm::HsmError> {
        self.0.discard_token(label)
    }
    fn open(
        &self,
        label: &str,
        pin: SecretString,
        sessions: usize,
    ) -> Result<Arc<dyn HsmToken>, ca_core::hsm::HsmError> {
        let token = self.0.open(label, pin, sessions)?;
        let watched = Arc::downgrade(&token);
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let Some(t) = watched.upgrade() else { return };
            let limit = t.sign_timeout();
            if let Some(d) = t.oldest_sign_in_progress().filter(|d| *d > limit) {
                eprintln!(
                    "error: the HSM has not answered a signature for {} ms (hsm.sign_timeout_ms = {}): stopping; nothing unanswered was stored",
                    d.as_millis(),
                    limit.as_millis()
                );
                std::process::exit(1);
            }
        });
        Ok(token)
    }
    fn public_objects(&self, label: &str) -> Result<Vec<ObjectSummary>, ca_core::hsm::HsmError> {
        self.0.public_objects(label)
    }
    fn install_backup_key(
        &self,
        token: &str,
        so_pin: &SecretString,
        key_label: &str,
        value: &[u8],
        new_so_pin: Option<&SecretString>,
    ) -> Result<(), ca_core::hsm::HsmError> {
        self.0
            .install_backup_key(token, so_pin, key_label, value, new_so_pin)
    }
}

/// Makes `p` absolute without requiring it to exist.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// SoftHSM reads `SOFTHSM2_CONF` once, when the module initialises. A SoftHSM home keeps its
/// tokens inside itself, so before loading the module the process must run with that variable
/// pointing at the home's config. Rather than `unsafe` `set_var` in a running process, the
/// CLI re-executes itself once with the variable set (`exec`, same pid, same arguments).
pub(crate) fn ensure_softhsm_env(home: &Home) -> Result<()> {
    ensure_process_env(Some(home), false)
}

/// The allocator setting of a long-running server: mimalloc returns freed memory to the OS at
/// once instead of after a delay. Measured with `meterpki-bench api` (a million certificates):
/// peak RSS 277 -> 230 MB, the ratio to the raw signing rate unchanged. mimalloc reads it only
/// at process start, hence the re-exec; an operator's own `MIMALLOC_PURGE_DELAY` is left alone.
const SERVER_ALLOCATOR_ENV: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "0");

/// Re-executes the CLI once (`exec`: same pid, same arguments) when the environment it needs
/// is missing: `SOFTHSM2_CONF` for a SoftHSM `home`, the allocator setting for a `server`.
pub fn ensure_process_env(softhsm_home: Option<&Home>, server: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut wanted: Vec<(&str, std::ffi::OsString)> = Vec::new();
    if let Some(home) = softhsm_home {
        let conf = absolute(&home.softhsm_conf());
        if std::env::var_os(softhsm_config::CONF_ENV).as_deref() != Some(conf.as_os_str()) {
            wanted.push((softhsm_config::CONF_ENV, conf.into_os_string()));
        }
    }
    if server && std::env::var_os(SERVER_ALLOCATOR_ENV.0).is_none() {
        wanted.push((SERVER_ALLOCATOR_ENV.0, SERVER_ALLOCATOR_ENV.1.into()));
    }
    // A PIN in the environment stays readable in /proc/<pid>/environ for the process's whole
    // life (unsetting it does not erase the original block): the process runs again without
    // it, and gets the PIN through a pipe instead.
    let pin = std::env::var(crate::pin::PIN_ENV)
        .ok()
        .map(zeroize::Zeroizing::new);
    if wanted.is_empty() && pin.is_none() {
        return Ok(());
    }
    let names: Vec<&str> = wanted.iter().map(|(n, _)| *n).collect();
    // The marker holds the pid that re-executed (`exec` keeps it): seeing our own pid means the
    // re-execution did not take, and stops a loop; a child of a re-executed meterpki inherits
    // its parent's pid and may re-execute itself.
    let me = std::process::id().to_string();
    if std::env::var_os("METERPKI_REEXEC").is_some_and(|v| v == me.as_str()) {
        anyhow::bail!("could not set {} for this process", names.join(", "));
    }
    let exe = std::env::current_exe().context("locating the meterpki executable")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .envs(wanted)
        .env("METERPKI_REEXEC", &me);
    let _pipe_reader;
    if let Some(pin) = &pin {
        let (reader, mut writer) = std::io::pipe().context("making a pipe for the PIN")?;
        use std::io::Write;
        writer
            .write_all(pin.as_bytes())
            .context("handing the PIN over")?;
        drop(writer);
        // The reading end survives the exec (std makes it close-on-exec).
        rustix::io::fcntl_setfd(&reader, rustix::io::FdFlags::empty())
            .context("handing the PIN over")?;
        use std::os::fd::AsRawFd;
        command
            .env_remove(crate::pin::PIN_ENV)
            .env(crate::pin::PIN_FD_ENV, reader.as_raw_fd().to_string());
        _pipe_reader = reader;
    }
    let err = command.exec();
    Err(anyhow::Error::new(err).context(format!(
        "re-executing meterpki with {} set",
        names.join(", ")
    )))
}
