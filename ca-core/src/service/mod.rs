//! The use cases, one function each (docs/design.md#the-service-layer): ceremonies, issuance,
//! revocation, CRL publication, accounts, suppliers and churn, service identities, status.
//!
//! Each use case decides who may do it ([`authorize`]), does all of its writes in one store
//! transaction (or journaled and resumable, for operations over many meters), commits its audit
//! record with them and fails closed: nothing is reported done unless its record is written.
//! The CLI and the API parse their input, call one of these and render the result.

mod accounts;
mod admin;
mod arl;
mod authz;
mod backupkey;
mod ceremony;
mod contingency;
mod crls;
mod error;
mod generations;
mod identity;
mod init;
mod issuance;
mod keybackup;
mod meters;
mod recertify;
mod refusals;
mod revoke;
mod rollover;
mod rootcopy;
mod server;
mod status;
mod stores;
mod suppliers;
mod tokens;
mod views;

use std::sync::{Arc, Mutex, OnceLock};

use policies::ProfileSet;
use x509_cert::Certificate;

pub use accounts::{AccountCreated, ClientKey, Disabled, NewAccount};
pub use admin::{AdminAnswer, AdminRequest, RevokeWhich};
pub use authz::{authorize, limits, may_request, may_see, Action, Actor};
pub use ceremony::{IssuingCeremony, RootCeremony};
pub use error::{ErrorClass, ServiceError};
pub use identity::{ServerIdentity, AUDIT_KEY_LABEL, SERVER_KEY_LABEL, UPDATE_KEY_LABEL};
pub use issuance::{ApiBatch, BatchAnswer, BatchSummary, ItemResult};
pub use keybackup::BackupKeyCeremony;
pub use meters::{parse_bulk_line, BulkMode, BulkSummary, MeterView};
pub use revoke::{RevokeOutcome, RevokeRow, Selector};
pub use server::{Readiness, ServerStart};
pub use status::{crl_warning, CrlStatus, Status};
pub use stores::{SchemaMigrated, StoreCopied};
pub use suppliers::{ChurnReport, SupplierRow};
pub use views::CertView;

use crate::audit::AuditLog;
use crate::certs::{certificate_from_pem, check_key_matches};
use crate::config::Config;
use crate::home::Home;
use crate::hsm::{HsmModule, HsmToken, SecretString};
use crate::issue::{CrlSettings, Engine, IssuerCtx};
use crate::signer::Signer;
use crate::store::Store;
use crate::CaKind;

/// How a long use case reports how far it got (the CLI draws a progress bar).
pub trait Progress: Send + Sync {
    /// Whether the total is wanted: counting it can cost a pass over the work.
    fn wants_total(&self) -> bool {
        false
    }
    /// The total, once known.
    fn total(&self, _total: u64) {}
    /// Items done so far.
    fn done(&self, done: u64);
}

/// No progress report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn done(&self, _done: u64) {}
}

/// Wraps every issuer's signer (the server times signatures for its metrics).
pub type SignerWrap = Arc<dyn Fn(Arc<dyn Signer>) -> Arc<dyn Signer> + Send + Sync>;

/// Loads the configured PKCS#11 module.
pub type LoadModule = Arc<
    dyn Fn(&Config, &std::path::Path) -> Result<Arc<dyn HsmModule>, ServiceError> + Send + Sync,
>;

/// Supplies the online token's user PIN.
pub type OnlinePin = Arc<dyn Fn(&Config) -> Result<SecretString, ServiceError> + Send + Sync>;

/// A token holding the online keys, with its label.
pub type LabelledToken = (String, Arc<dyn HsmToken>);

/// Supplies the user PIN of one of `[[hsm.tokens]]`.
pub type TokenPin =
    Arc<dyn Fn(&Config, &crate::TokenConfig) -> Result<SecretString, ServiceError> + Send + Sync>;

/// How the service reaches the HSM: the front end loads the module (and, for SoftHSM homes,
/// looks after its token files) and supplies the online token's PIN (from the environment, a
/// file or a prompt; never the command line).
#[derive(Clone)]
pub struct HsmAccess {
    /// Loads a PKCS#11 module (the configured one, or a token's own).
    pub load: LoadModule,
    /// The online token's user PIN.
    pub online_pin: OnlinePin,
    /// The user PIN of another token holding the online keys.
    pub token_pin: TokenPin,
}

/// How the audit log kept in a shared store is named in messages.
const STORE_LOG_LABEL: &str = "the store's audit log (PostgreSQL)";

/// The home, opened: its config, store, audit log, HSM and issuance engine, each made on first
/// use (a command that only reads the audit log never loads the HSM).
pub struct Service {
    home: Home,
    config: Config,
    hsm: HsmAccess,
    wrap: Option<SignerWrap>,
    store: OnceLock<Arc<dyn Store>>,
    /// A scratch folder holding this service's store, audit log and CRLs instead of the home.
    scratch: Option<std::path::PathBuf>,
    module: OnceLock<Arc<dyn HsmModule>>,
    /// Modules of `[[hsm.tokens]]` other than `hsm.module`, by path.
    modules: Mutex<std::collections::HashMap<std::path::PathBuf, Arc<dyn HsmModule>>>,
    online: Mutex<Option<Arc<dyn HsmToken>>>,
    /// Every token holding the online keys, opened once (`[[hsm.tokens]]`, or the online token).
    online_tokens: Mutex<Option<Vec<LabelledToken>>>,
    /// One set per online key when several tokens hold them, shared by every use of the key.
    signer_sets: Mutex<std::collections::HashMap<String, Arc<crate::SignerSet>>>,
    engine: Mutex<Option<Arc<Engine>>>,
    profiles: OnceLock<ProfileSet>,
    /// The audit key, found once.
    audit_key: OnceLock<Arc<dyn Signer>>,
    /// Refusals recorded lately (the audit log's flood limit).
    refusals: Mutex<refusals::Refusals>,
    /// A shared store's published CRLs this process's files hold: name -> (cRLNumber, when
    /// last compared with the store).
    crl_synced: Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service({})", self.home.root().display())
    }
}

impl Service {
    /// Opens an initialised home.
    pub fn open(home: Home, hsm: HsmAccess) -> Result<Service, ServiceError> {
        if !home.config_path().exists() {
            return Err(ServiceError::invalid(
                "not-a-home",
                format!(
                    "{} is not a meterpki home (no meterpki.toml): run `meterpki --home {} init` first",
                    home.root().display(),
                    home.root().display()
                ),
            ));
        }
        if let Err(exposed) = home.check_permissions() {
            let list: Vec<String> = exposed
                .iter()
                .map(|e| format!("{} {}", e.path.display(), e.why))
                .collect();
            let owner = exposed.iter().any(|e| e.why.starts_with("belongs"));
            return Err(ServiceError::invalid(
                "home-permissions",
                format!(
                    "another user could change what this CA signs or records, so meterpki does not run on this home: {}. Everything in it must be yours and writable by you alone: {} (and find out who changed it)",
                    list.join("; "),
                    if owner {
                        format!("`chown -R $(id -un) {}` and `chmod -R go-w {}`", home.root().display(), home.root().display())
                    } else {
                        format!("`chmod -R go-w {}`", home.root().display())
                    }
                ),
            ));
        }
        let config = Config::load(&home.config_path())?;
        Ok(Service {
            home,
            config,
            hsm,
            wrap: None,
            store: OnceLock::new(),
            scratch: None,
            module: OnceLock::new(),
            modules: Mutex::new(Default::default()),
            online: Mutex::new(None),
            online_tokens: Mutex::new(None),
            signer_sets: Mutex::new(Default::default()),
            engine: Mutex::new(None),
            profiles: OnceLock::new(),
            audit_key: OnceLock::new(),
            refusals: Default::default(),
            crl_synced: Default::default(),
        })
    }

    /// The same home's configuration, CAs and HSM over a scratch folder: a store, an audit log
    /// and CRLs of its own in `dir`. Benchmarks run the real code paths this way without
    /// touching the home's state.
    pub fn scratch(&self, dir: &std::path::Path) -> Result<Service, ServiceError> {
        let store = crate::store::open(&crate::store::StoreConfig::default(), &Home::new(dir))?;
        let s = Service {
            home: self.home.clone(),
            config: self.config.clone(),
            hsm: self.hsm.clone(),
            wrap: None,
            store: OnceLock::new(),
            scratch: Some(dir.to_path_buf()),
            module: OnceLock::new(),
            modules: Mutex::new(Default::default()),
            online: Mutex::new(None),
            online_tokens: Mutex::new(None),
            signer_sets: Mutex::new(Default::default()),
            engine: Mutex::new(None),
            profiles: OnceLock::new(),
            audit_key: OnceLock::new(),
            refusals: Default::default(),
            crl_synced: Default::default(),
        };
        let _ = s.store.set(store);
        Ok(s)
    }

    /// Where CRLs are published: `<home>/crl` (a scratch service's own folder).
    pub fn crl_dir(&self) -> std::path::PathBuf {
        match &self.scratch {
            Some(d) => d.join("crl"),
            None => self.home.crl_dir(),
        }
    }

    /// Every issuer's signer is passed through `wrap` when the engine is built.
    pub fn with_signer_wrap(mut self, wrap: SignerWrap) -> Service {
        self.wrap = Some(wrap);
        self
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store, opened once per process.
    pub fn store(&self) -> Result<Arc<dyn Store>, ServiceError> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        let log = self.home.audit_log();
        // The store must exist before it is opened (opening an embedded store creates one),
        // and once opened must be the one the audit log was written with.
        let refuse = |why: String| {
            ServiceError::refused(
                ErrorClass::Internal,
                "store-mismatch",
                format!(
                    "refusing to use the store of {}: {why}. Nothing was changed. Restore the \
                     home's own store (see docs/design.md#a-store-that-cannot-silently-vanish)",
                    self.home.root().display()
                ),
            )
        };
        if let Some(dir) = crate::store::embedded_dir(&self.config.store, &self.home) {
            let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
            if empty && self.home.root_ceremony().exists() {
                return Err(refuse(format!(
                    "the store {} is missing or empty, but the home has a root CA ({}) whose ceremony was committed to it",
                    dir.display(),
                    self.home.root_ceremony().display()
                )));
            }
            if empty {
                crate::audit::check_store_matches(&log, None, None).map_err(|_| {
                    refuse(format!(
                        "the store {} is missing or empty, but the audit log {} records changes \
                         committed to it",
                        dir.display(),
                        log.display()
                    ))
                })?;
            }
        }
        let store = crate::store::open(&self.config.store, &self.home)?;
        let head = store.audit_head()?;
        // A shared store keeps its log itself: the two cannot part. An embedded store's log is
        // the home's file, which must reach the store's head.
        if !self.audit_in_store() {
            let audit_key = self.audit_public_key()?;
            crate::audit::check_store_matches(&log, head.as_ref(), audit_key.as_ref())
                .map_err(refuse)?;
        }
        // A home with a root has committed its root ceremony: a store (and log) that never
        // committed anything were both replaced or removed.
        if head.is_none() && self.home.root_ceremony().exists() {
            return Err(refuse(format!(
                "the home has a root CA ({}) but its store has committed nothing: the store and the audit log were removed or replaced",
                self.home.root_ceremony().display()
            )));
        }
        Ok(self.store.get_or_init(|| store).clone())
    }

    /// The audit signer's public key, from `ca/audit.pem` checked against the root; None
    /// before the root ceremony. A home with a root whose audit certificate is missing or not
    /// the root's is refused: its log could be neither checked nor written.
    fn audit_public_key(&self) -> Result<Option<spki::SubjectPublicKeyInfoOwned>, ServiceError> {
        let path = self.home.audit_cert();
        let has_root = self.home.root_ceremony().exists();
        let refuse = |why: String| {
            ServiceError::refused(
                ErrorClass::Internal,
                "audit-key",
                format!(
                    "{why}: the audit log can be neither checked nor written. Restore the file from a copy (it is public; `meterpki status` on a copy of the home shows it)"
                ),
            )
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(_) if !has_root => return Ok(None),
            Err(e) => {
                return Err(refuse(format!(
                "the home has a root CA but its audit signer's certificate {} cannot be read ({e})",
                path.display()
            )))
            }
        };
        let cert = certificate_from_pem(&pem)
            .map_err(|e| refuse(format!("{} is not a certificate ({e})", path.display())))?;
        if let Ok(root) = self.ca_cert(CaKind::Root) {
            // By the root, or by an earlier root generation (a rollover certifies the audit
            // signer again; until its files are all in place, the previous one stands).
            let signed_by = |root: &Certificate| {
                crate::certs::verify_certificate_signature(
                    &cert,
                    &root.tbs_certificate.subject_public_key_info,
                )
            };
            if let Err(e) = signed_by(&root) {
                let earlier = self.generations(CaKind::Root).into_iter().any(|id| {
                    self.generation_cert(id)
                        .is_ok_and(|c| signed_by(&c).is_ok())
                });
                if !earlier {
                    return Err(refuse(format!(
                        "{} is not signed by the root ({e})",
                        path.display()
                    )));
                }
            }
        }
        Ok(Some(cert.tbs_certificate.subject_public_key_info))
    }

    /// SHA-256 of the SubjectPublicKeyInfo of every key meterpki itself uses and has a
    /// certificate for: the CAs, the audit signer, the API server, the trust-update signer.
    fn own_keys(&self) -> Vec<[u8; 32]> {
        use der::Encode;
        let ca = self.home.ca_dir();
        let mut files: Vec<std::path::PathBuf> =
            CaKind::ALL.iter().map(|k| self.home.ca_cert(*k)).collect();
        // Every earlier generation's key too, and the rollover's link certificates' keys.
        for dir in [self.home.ca_generations_dir(), self.home.ca_links_dir()] {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            entries.sort();
            files.extend(entries);
        }
        files.extend(
            ["audit.pem", "api-server.pem", "trust-update-signer.pem"]
                .iter()
                .map(|f| ca.join(f)),
        );
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|pem| certificate_from_pem(&pem).ok())
            .filter_map(|c| c.tbs_certificate.subject_public_key_info.to_der().ok())
            .map(|der| crate::sha256(&der))
            .collect()
    }

    /// Opens the store and checks it against the audit log (missing, foreign or older is
    /// refused), before a command does anything else.
    pub fn check_store(&self) -> Result<(), ServiceError> {
        self.store().map(|_| ())
    }

    /// The audit log, committed through the store; once the root ceremony made the audit key,
    /// every record it writes is signed with it (and a home whose audit key cannot be used
    /// writes nothing: the change fails).
    pub fn audit(&self) -> Result<AuditLog, ServiceError> {
        let log = self.audit_unsigned()?;
        if let Some(s) = self.audit_key.get() {
            return Ok(log.with_signer(s.clone()));
        }
        // Before the root ceremony there is no audit key; after it, records are signed or not
        // written (a missing ca/audit.pem does not switch signing off).
        if !self.home.audit_cert().exists() && !self.home.root_ceremony().exists() {
            return Ok(log);
        }
        let signer = self.audit_signer()?;
        let pem = std::fs::read_to_string(self.home.audit_cert())
            .map_err(|e| ServiceError::io("reading the audit signer's certificate", e))?;
        let cert = certificate_from_pem(&pem)
            .map_err(|e| ServiceError::Internal(format!("reading ca/audit.pem: {e}")))?;
        check_key_matches(signer.as_ref(), &cert, "audit signer").map_err(|e| {
            ServiceError::Internal(format!(
                "refusing to write the audit log: the audit key on the online token is not the one ca/audit.pem certifies: {e}"
            ))
        })?;
        Ok(log.with_signer(self.audit_key.get_or_init(|| signer).clone()))
    }

    /// The audit log for reading and verifying (no key needed).
    pub(crate) fn audit_unsigned(&self) -> Result<AuditLog, ServiceError> {
        if self.audit_in_store() {
            return Ok(AuditLog::in_store(STORE_LOG_LABEL, self.store()?));
        }
        let path = match &self.scratch {
            Some(d) => d.join("audit.log"),
            None => self.home.audit_log(),
        };
        Ok(AuditLog::new(path, self.store()?))
    }

    /// True when the audit log is kept in the store (a shared store: one chain for every
    /// server), false when it is the home's `audit.log` beside an embedded store.
    pub fn audit_in_store(&self) -> bool {
        self.scratch.is_none() && self.config.store.backend == crate::store::StoreBackend::Postgres
    }

    /// Where the audit log is, for a human.
    pub fn audit_location(&self) -> String {
        if self.audit_in_store() {
            STORE_LOG_LABEL.to_string()
        } else {
            self.home.audit_log().display().to_string()
        }
    }

    /// The audit log for reading only: from the store when it is kept there, else the file
    /// (readable even when the store does not match it).
    pub(crate) fn audit_reader(&self) -> Result<AuditLog, ServiceError> {
        if self.audit_in_store() {
            return self.audit_unsigned();
        }
        Ok(AuditLog::reader(self.home.audit_log()))
    }

    /// The certificate profiles: `<home>/policies/*.toml`, or the shipped ones when the home
    /// has no such folder. A profile that does not validate stops here.
    pub fn profiles(&self) -> Result<&ProfileSet, ServiceError> {
        if let Some(p) = self.profiles.get() {
            return Ok(p);
        }
        let dir = self.home.policies_dir();
        let set = if dir.is_dir() {
            ProfileSet::load_dir(&dir)
                .map_err(|e| ServiceError::invalid("profile", e.to_string()))?
        } else {
            ProfileSet::builtin()
        };
        Ok(self.profiles.get_or_init(|| set))
    }

    /// Whether the home has the CA certificate of `kind`.
    pub fn has_ca(&self, kind: CaKind) -> bool {
        self.home.ca_cert(kind).exists()
    }

    /// The CA certificate of `kind`, from `ca/<kind>.pem`.
    pub fn ca_cert(&self, kind: CaKind) -> Result<Certificate, ServiceError> {
        let path = self.home.ca_cert(kind);
        let pem = std::fs::read_to_string(&path).map_err(|_| {
            ServiceError::invalid(
                "no-ca",
                if kind == CaKind::Root {
                    format!(
                        "no root CA in {} ({} missing): run `meterpki ceremony root`",
                        self.home.root().display(),
                        path.display()
                    )
                } else {
                    format!(
                        "no {kind} CA in {} ({} missing): run `meterpki ceremony issuing-ca --kind {kind}`",
                        self.home.root().display(),
                        path.display()
                    )
                },
            )
        })?;
        certificate_from_pem(&pem)
            .map_err(|e| ServiceError::Internal(format!("reading {}: {e}", path.display())))
    }

    /// The current generation of an issuing CA ready to sign: its certificate and a signer
    /// for its key on the online token. Refused when the key does not match the certificate.
    pub fn issuer(&self, kind: CaKind) -> Result<IssuerCtx, ServiceError> {
        self.issuer_of(self.current_id(kind))
    }

    /// Every generation of every issuing CA of the home (or of `only`), each bound to its HSM
    /// key: the earlier generations keep signing the CRLs of what they issued.
    pub fn issuers(&self, only: Option<CaKind>) -> Result<Vec<IssuerCtx>, ServiceError> {
        let mut out = Vec::new();
        for kind in CaKind::ISSUING {
            if only.is_some_and(|o| o != kind) {
                continue;
            }
            for id in self.generations(kind) {
                out.push(self.issuer_of(id)?);
            }
        }
        if out.is_empty() {
            return Err(ServiceError::invalid(
                "no-ca",
                match only {
                    Some(k) => format!("there is no {k} CA in this home"),
                    None => {
                        "there is no issuing CA in this home yet: run `meterpki ceremony issuing-ca`"
                            .into()
                    }
                },
            ));
        }
        Ok(out)
    }

    /// CRL sharding and publication settings from the config.
    pub fn crl_settings(&self) -> CrlSettings {
        CrlSettings {
            shards: self.config.crl.shards,
            base_url: (!self.config.crl.base_url.is_empty())
                .then(|| self.config.crl.base_url.clone()),
            next_update_hours: self.config.crl.next_update_hours,
            arl_next_update_days: self.config.crl.arl_next_update_days,
        }
    }

    /// The issuance engine with every issuing CA of the home, built once. Refused when the
    /// configured shard count differs from the one certificates were bound to.
    pub fn engine(&self) -> Result<Arc<Engine>, ServiceError> {
        let mut slot = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let mut issuers = Vec::new();
        let mut revoked = Vec::new();
        for kind in CaKind::ISSUING {
            if self.ca_revocation(kind)?.is_some() {
                revoked.push(kind);
            } else if self.has_ca(kind) {
                issuers.push(Arc::new(self.issuer(kind)?));
            }
        }
        let crl = self.crl_settings();
        crate::crl::check_shards(self.store()?.as_ref(), &crl)?;
        let engine = Arc::new(
            Engine::new(
                self.profiles()?.clone(),
                issuers,
                self.audit()?,
                crl,
                // One signing thread per session of every token holding the online keys: a
                // signature in flight on each (several HSMs add up only when each is kept busy).
                self.config.hsm.sessions * self.config.hsm.tokens.len().max(1),
            )?
            .with_revoked(revoked)
            .with_reserved_keys(self.own_keys()),
        );
        *slot = Some(engine.clone());
        Ok(engine)
    }
}

pub(crate) use crate::audit::now_rfc3339;
pub(crate) use crate::unix_now;

/// A Unix time as RFC 3339 UTC.
pub(crate) fn rfc3339_of(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Now, compact, for file names.
pub(crate) fn now_compact() -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

/// Random bytes as lowercase hex, from the OS RNG.
pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let s = hex::encode(&b);
    zeroize::Zeroize::zeroize(&mut b);
    s
}
