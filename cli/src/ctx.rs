//! What every command needs: the home, its config, the HSM, the store, the audit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use ca_core::{AuditLog, Config, Home, SledStore, Store};
use hsm_bridge::{Hsm, Token};

use crate::errors::input;

/// An opened home.
pub struct Ctx {
    pub home: Home,
    pub config: Config,
    pub json: bool,
    /// The store, opened once per process (sled locks its files per open).
    pub store: std::sync::OnceLock<Arc<SledStore>>,
}

impl Ctx {
    /// Opens an initialised home.
    pub fn open(home: Home, json: bool) -> Result<Ctx> {
        if !home.config_path().exists() {
            return Err(input(format!(
                "{} is not a meterpki home (no meterpki.toml): run `meterpki --home {} init` first",
                home.root().display(),
                home.root().display()
            )));
        }
        let config = Config::load(&home.config_path())?;
        Ok(Ctx {
            home,
            config,
            json,
            store: std::sync::OnceLock::new(),
        })
    }

    pub fn hsm(&self) -> Result<Hsm> {
        if self.config.hsm.softhsm {
            // Before SoftHSM reads its tokens: see `softhsm_config::heal_tokens`.
            let backup = self.home.softhsm_dir().join("token-copies");
            let healed = softhsm_config::heal_tokens(&self.home.softhsm_tokens(), &backup)
                .context("checking the SoftHSM token files")?;
            for dir in healed {
                tracing::warn!(token_dir = %dir.display(), "a SoftHSM token file was left empty by an interrupted process; restored from its copy");
            }
        }
        Ok(Hsm::load(&self.config.hsm.module)?)
    }

    /// The online token, logged in with the PIN from its configured source, with a watchdog:
    /// a signature pending longer than `hsm.sign_timeout_ms` (a hung HSM) stops the command
    /// with exit 1 (what was answered is stored; nothing unanswered is).
    pub fn online(&self, hsm: &Hsm) -> Result<Arc<Token>> {
        let token = self.online_unwatched(hsm)?;
        let watched = Arc::downgrade(&token);
        let limit = token.sign_timeout();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let Some(t) = watched.upgrade() else { return };
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

    /// The online token without the watchdog (the server answers 503 instead of stopping).
    pub fn online_unwatched(&self, hsm: &Hsm) -> Result<Arc<Token>> {
        let pin = crate::pin::online_pin(&self.home, &self.config)?;
        let token = hsm.open(&self.config.hsm.online_token, pin, self.config.hsm.sessions)?;
        token.set_sign_timeout(std::time::Duration::from_millis(
            self.config.hsm.sign_timeout_ms,
        ));
        Ok(token)
    }

    /// An issuing CA ready to sign: its certificate from `ca/<kind>.pem` and a signer for its
    /// key on the online token. Refused when the key does not match the certificate.
    pub fn issuer(
        &self,
        online: &Arc<Token>,
        kind: ca_core::CaKind,
    ) -> Result<(hsm_bridge::HsmSigner, x509_cert::Certificate)> {
        let path = self.home.ca_cert(kind);
        let pem = std::fs::read_to_string(&path).map_err(|_| {
            input(format!(
                "no {kind} CA in {} ({} missing): run `meterpki ceremony issuing-ca --kind {kind}`",
                self.home.root().display(),
                path.display()
            ))
        })?;
        let cert = ca_core::certificate_from_pem(&pem)
            .with_context(|| format!("reading {}", path.display()))?;
        let signer = online.signer(&kind.key_label())?;
        ca_core::check_key_matches(&signer, &cert, kind.name()).with_context(|| {
            format!(
                "refusing the {kind} CA: {} is not the certificate of its HSM key",
                path.display()
            )
        })?;
        Ok((signer, cert))
    }

    /// The certificate profiles: `<home>/policies/*.toml`, or the shipped ones when the home
    /// has no such folder. A profile that does not validate stops the command here.
    pub fn profiles(&self) -> Result<policies::ProfileSet> {
        let dir = self.home.policies_dir();
        if dir.is_dir() {
            Ok(policies::ProfileSet::load_dir(&dir).map_err(|e| input(e.to_string()))?)
        } else {
            Ok(policies::ProfileSet::builtin())
        }
    }

    /// The issuance engine with every issuing CA that exists in this home (device,
    /// organisation), each refused if its HSM key does not match its certificate.
    pub fn engine(
        &self,
        online: &Arc<Token>,
        store: Arc<SledStore>,
    ) -> Result<ca_core::issue::Engine> {
        self.engine_with(online, store, &|s| s)
    }

    /// [`Ctx::engine`], with every issuer's signer passed through `wrap` (the server times them).
    pub fn engine_with(
        &self,
        online: &Arc<Token>,
        store: Arc<SledStore>,
        wrap: &dyn Fn(Arc<dyn ca_core::Signer>) -> Arc<dyn ca_core::Signer>,
    ) -> Result<ca_core::issue::Engine> {
        let profiles = self.profiles()?;
        let mut issuers = Vec::new();
        for (kind, ikind) in [
            (ca_core::CaKind::Device, policies::IssuerKind::Device),
            (
                ca_core::CaKind::Organisation,
                policies::IssuerKind::Organisation,
            ),
            (ca_core::CaKind::Access, policies::IssuerKind::Access),
        ] {
            if !self.home.ca_cert(kind).exists() {
                continue;
            }
            let (signer, cert) = self.issuer(online, kind)?;
            issuers.push(Arc::new(ca_core::issue::IssuerCtx::new(
                ikind,
                cert,
                wrap(Arc::new(signer)),
            )?));
        }
        let crl = self.crl_settings();
        ca_core::crl::check_shards(store.as_ref(), &crl).map_err(|e| input(e.to_string()))?;
        Ok(ca_core::issue::Engine::new(
            profiles,
            issuers,
            store as Arc<dyn Store>,
            crl,
            self.config.hsm.sessions,
        ))
    }

    /// The certificate of an HSM key meterpki's own services use (the API server, the
    /// trust-update signer): the one in `path` while it certifies this key and has more than 30
    /// days left, else a new one issued through `engine` from `request` and written to `path`.
    /// Returns the DER and, when one was issued, its record.
    pub fn service_certificate(
        &self,
        engine: &ca_core::issue::Engine,
        path: &Path,
        spki: &spki::SubjectPublicKeyInfoOwned,
        request: impl FnOnce() -> Result<ca_core::issue::Request>,
    ) -> Result<(Vec<u8>, Option<ca_core::CertRecord>)> {
        use der::Encode;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let reuse = std::fs::read_to_string(path)
            .ok()
            .and_then(|pem| ca_core::certificate_from_pem(&pem).ok())
            .filter(|c| {
                let left = c
                    .tbs_certificate
                    .validity
                    .not_after
                    .to_unix_duration()
                    .as_secs() as i64
                    - now;
                c.tbs_certificate.subject_public_key_info.to_der().ok() == spki.to_der().ok()
                    && left > 30 * 86_400
            });
        if let Some(c) = reuse {
            return Ok((c.to_der()?, None));
        }
        let out = engine
            .issue_request(request()?)
            .map_err(|e| anyhow::anyhow!("issuing {}: {e}", path.display()))?;
        let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &out.record.der)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ca_core::write_atomic(path, pem.as_bytes(), 0o644)?;
        eprintln!(
            "issued {} (serial {})",
            path.display(),
            out.record.serial_hex()
        );
        Ok((out.record.der.clone(), Some(out.record)))
    }

    /// CRL sharding and publication settings from the config.
    pub fn crl_settings(&self) -> ca_core::issue::CrlSettings {
        ca_core::issue::CrlSettings {
            shards: self.config.crl.shards,
            base_url: (!self.config.crl.base_url.is_empty())
                .then(|| self.config.crl.base_url.clone()),
            next_update_hours: self.config.crl.next_update_hours,
        }
    }

    pub fn store(&self) -> Result<Arc<SledStore>> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        let dir = self.home.store_dir();
        let store = Arc::new(SledStore::open(&dir).with_context(|| {
            format!(
                "opening the store {} (is `meterpki serve` running on this home?)",
                dir.display()
            )
        })?);
        Ok(self.store.get_or_init(|| store).clone())
    }

    pub fn audit(&self, store: Arc<SledStore>) -> AuditLog {
        AuditLog::new(self.home.audit_log(), Some(store as Arc<dyn Store>))
    }
}

/// The OS user, for the audit log's `actor`.
pub fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
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
pub fn ensure_softhsm_env(home: &Home) -> Result<()> {
    ensure_process_env(Some(home), false)
}

/// The allocator setting of a long-running server: mimalloc returns freed memory to the OS at
/// once instead of after a delay. Measured with `bench api` (a million certificates): peak RSS
/// 277 -> 230 MB, the ratio to the raw signing rate unchanged. mimalloc reads it only at process
/// start, hence the re-exec; an operator's own `MIMALLOC_PURGE_DELAY` is left alone.
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
    if wanted.is_empty() {
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
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(wanted)
        .env("METERPKI_REEXEC", &me)
        .exec();
    Err(anyhow::Error::new(err).context(format!(
        "re-executing meterpki with {} set",
        names.join(", ")
    )))
}
