//! `meterpki.toml`: what the home is configured with. Unknown fields are refused so that a typo
//! never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HSM.
    pub hsm: HsmConfig,
    /// The CA hierarchy.
    #[serde(default)]
    pub ca: CaConfig,
    /// CRL shards and where they are published.
    #[serde(default)]
    pub crl: CrlConfig,
    /// The API server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the store lives.
    #[serde(default)]
    pub store: crate::store::StoreConfig,
}

/// CRL sharding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// Shards per issuer (N); a certificate is bound to one at issuance, so N is fixed once
    /// certificates exist.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Base URL named in certificates' cRLDistributionPoints: `<base>/<issuer>/<shard>.crl`.
    /// Empty: certificates carry no CRL pointer.
    #[serde(default = "default_crl_base")]
    pub base_url: String,
    /// Hours from a CRL's thisUpdate to its nextUpdate.
    #[serde(default = "default_next_update")]
    pub next_update_hours: u32,
    /// Days from the root's ARL's thisUpdate to its nextUpdate: the root is opened only at
    /// ceremonies, so its CRL lives long (`status` warns when a quarter of it is left).
    #[serde(default = "default_arl_days")]
    pub arl_next_update_days: u32,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            shards: default_shards(),
            base_url: default_crl_base(),
            next_update_hours: default_next_update(),
            arl_next_update_days: default_arl_days(),
        }
    }
}

fn default_arl_days() -> u32 {
    365
}

fn default_shards() -> u32 {
    16
}

fn default_next_update() -> u32 {
    24
}

/// The server's plain-HTTP CRL listener (`server.crl_listen`): relying parties fetch CRLs over
/// plain HTTP (RFC 5280 §4.2.1.13; a CRL is signed).
fn default_crl_base() -> String {
    format!("http://{}/crl", default_crl_listen())
}

fn default_crl_listen() -> String {
    "127.0.0.1:8080".into()
}

/// Names and lifetimes of the CA certificates made at the ceremonies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// `O=` in every CA subject.
    #[serde(default = "default_org")]
    pub organisation: String,
    /// Old homes' root certificate lifetime in days. CA certificates take their validity from
    /// their profiles (`policies/root-ca.toml`); a value here must agree with the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_validity_days: Option<u32>,
    /// Old homes' issuing CA lifetime in days; as `root_validity_days`, for the issuing-CA
    /// profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_validity_days: Option<u32>,
    /// Subject of the root (RFC 4514 text); default `CN=<organisation> Root CA,O=<organisation>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_subject: Option<String>,
    /// Subject of the Device CA. It is the issuer name of every meter certificate, so it is kept
    /// short: the default `CN=MDCA1` keeps a meter certificate within 410 bytes (docs/design.md#certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_subject: Option<String>,
    /// Subject of the Organisation CA; default `CN=<organisation> Organisation CA,O=<organisation>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_subject: Option<String>,
    /// Subject of the Access CA; default `CN=<organisation> Access CA,O=<organisation>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_subject: Option<String>,
}

impl CaConfig {
    /// The subject `meterpki.toml` names for a CA of `kind`, if it names one.
    pub fn explicit_subject(&self, kind: crate::CaKind) -> Option<&str> {
        use crate::CaKind;
        match kind {
            CaKind::Root => self.root_subject.as_deref(),
            CaKind::Device => self.device_subject.as_deref(),
            CaKind::Organisation => self.organisation_subject.as_deref(),
            CaKind::Access => self.access_subject.as_deref(),
        }
    }

    /// The subject a CA of `kind` gets at its ceremony when its profile names none.
    pub fn subject(&self, kind: crate::CaKind) -> String {
        use crate::CaKind;
        let org = &self.organisation;
        let (explicit, default) = match kind {
            CaKind::Root => (&self.root_subject, format!("CN={org} Root CA,O={org}")),
            CaKind::Device => (&self.device_subject, "CN=MDCA1".to_string()),
            CaKind::Organisation => (
                &self.organisation_subject,
                format!("CN={org} Organisation CA,O={org}"),
            ),
            CaKind::Access => (&self.access_subject, format!("CN={org} Access CA,O={org}")),
        };
        explicit.clone().unwrap_or(default)
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            organisation: default_org(),
            root_validity_days: None,
            issuing_validity_days: None,
            root_subject: None,
            device_subject: None,
            organisation_subject: None,
            access_subject: None,
        }
    }
}

fn default_org() -> String {
    "meterpki".into()
}

/// Where the keys are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// True when this home manages its own SoftHSM token directory under `softhsm/`.
    #[serde(default)]
    pub softhsm: bool,
    /// Label of the online token (issuing CA keys, audit key).
    pub online_token: String,
    /// Label of the root token (root key only; opened with a quorum of shares).
    pub root_token: String,
    /// Where the online token's user PIN comes from, in order: the environment variable, then
    /// the file. A prompt is used when neither gives a PIN and a terminal is attached.
    #[serde(default)]
    pub online_pin_env: Option<String>,
    /// File holding the online token's PIN (relative to the home), mode 0600.
    #[serde(default)]
    pub online_pin_file: Option<PathBuf>,
    /// Sessions in the signing pool (one per worker thread).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// A signature slower than this (milliseconds) counts as an HSM failure: the CLI stops with
    /// exit 1, the server answers 503 and reports not ready, the session is replaced.
    #[serde(default = "default_sign_timeout_ms")]
    pub sign_timeout_ms: u64,
    /// The tokens holding the online keys, when there are several (`[[hsm.tokens]]`):
    /// signatures are spread over them and a failing one leaves the rotation. Empty: the
    /// online token alone, as before. When given, the online token is one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
    /// Whether the online keys can be copied to other tokens and backed up under a quorum
    /// (`meterpki init --key-backup`, fixed for the home's life: it decides how keys are made).
    #[serde(default, skip_serializing_if = "KeyBackup::is_none")]
    pub key_backup: KeyBackup,
}

/// `hsm.key_backup`: how online keys are generated (docs/hsms.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyBackup {
    /// Keys never leave their token (`CKA_EXTRACTABLE` false): no replication, no backup.
    #[default]
    None,
    /// Keys leave their token only wrapped under the key-backup key, which only a quorum of
    /// officers can put into a token (`CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED`).
    Quorum,
}

impl KeyBackup {
    /// `none`.
    pub fn is_none(&self) -> bool {
        *self == KeyBackup::None
    }

    /// The protection of keys generated for the online tokens.
    pub fn protection(self) -> crate::hsm::KeyProtection {
        match self {
            KeyBackup::None => crate::hsm::KeyProtection::NeverExtractable,
            KeyBackup::Quorum => crate::hsm::KeyProtection::TrustedWrapOnly,
        }
    }
}

/// One token holding the online keys (`[[hsm.tokens]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Its label.
    pub label: String,
    /// Its PKCS#11 module; `hsm.module` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// The environment variable holding its user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
    /// The file holding its user PIN (relative to the home), mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
}

fn default_sign_timeout_ms() -> u64 {
    10_000
}

/// The API server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the plain-HTTP listener that serves CRLs and CA certificates (and nothing
    /// else) to relying parties; empty: none.
    #[serde(default = "default_crl_listen")]
    pub crl_listen: String,
    /// Connections held at once on each listener; further clients wait in the kernel's queue
    /// until one ends (each connection costs memory and a file descriptor).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold at once on each listener; more are closed as
    /// soon as they are accepted, before any TLS.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Seconds a new connection has for its TLS handshake and its first request's headers.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay without a request being handled and without a byte of a
    /// request or response moving (kept-alive HTTP/1.1, HTTP/2 with no stream, a response the
    /// client does not read) before it is closed.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// The slowest a request body may arrive, in bytes a second on average after the first
    /// `header_timeout_secs` (a body trickled slower is cut off with a 408).
    #[serde(default = "default_min_body_bytes_per_sec")]
    pub min_body_bytes_per_sec: u64,
    /// `/readyz` probes the HSM (one signature with every key) at most once per this many
    /// milliseconds and answers from the last probe in between.
    #[serde(default = "default_ready_probe_interval_ms")]
    pub ready_probe_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            crl_listen: default_crl_listen(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            header_timeout_secs: default_header_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            min_body_bytes_per_sec: default_min_body_bytes_per_sec(),
            ready_probe_interval_ms: default_ready_probe_interval_ms(),
        }
    }
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_connections_per_ip() -> usize {
    64
}

fn default_header_timeout_secs() -> u64 {
    10
}

fn default_idle_timeout_secs() -> u64 {
    60
}

fn default_min_body_bytes_per_sec() -> u64 {
    1024
}

fn default_ready_probe_interval_ms() -> u64 {
    5000
}

fn default_sessions() -> usize {
    2
}

fn default_listen() -> String {
    "127.0.0.1:8443".into()
}

/// One place a PIN may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable.
    Env(String),
    /// A file (first line, trailing newline removed).
    File(PathBuf),
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks every field; errors name the field and the reason.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        };
        if !(100..=600_000).contains(&self.hsm.sign_timeout_ms) {
            return Err(invalid(
                "hsm.sign_timeout_ms",
                "must be between 100 and 600000 (milliseconds)",
            ));
        }
        if !(1..=64).contains(&self.hsm.sessions) {
            return Err(invalid("hsm.sessions", "must be between 1 and 64"));
        }
        for (field, label) in [
            ("hsm.online_token", &self.hsm.online_token),
            ("hsm.root_token", &self.hsm.root_token),
        ] {
            if label.is_empty() || label.len() > 32 {
                return Err(invalid(
                    field,
                    "a token label is 1 to 32 bytes (PKCS#11 CK_TOKEN_INFO)",
                ));
            }
        }
        if self.ca.organisation.is_empty() || self.ca.organisation.len() > 64 {
            return Err(invalid(
                "ca.organisation",
                "1 to 64 characters (RFC 5280 ub-organization-name)",
            ));
        }
        if self
            .ca
            .organisation
            .contains([',', '+', '=', '"', '\\', '<', '>', ';'])
        {
            return Err(invalid(
                "ca.organisation",
                "must not contain , + = \" \\ < > ;",
            ));
        }
        for (field, kind) in [
            ("ca.root_subject", crate::CaKind::Root),
            ("ca.device_subject", crate::CaKind::Device),
            ("ca.organisation_subject", crate::CaKind::Organisation),
            ("ca.access_subject", crate::CaKind::Access),
        ] {
            if let Err(e) = crate::certs::parse_name(&self.ca.subject(kind)) {
                return Err(invalid(field, &e.to_string()));
            }
        }
        for (field, days) in [
            ("ca.root_validity_days", self.ca.root_validity_days),
            ("ca.issuing_validity_days", self.ca.issuing_validity_days),
        ] {
            if days.is_some_and(|d| !(1..=36_500).contains(&d)) {
                return Err(invalid(field, "must be between 1 and 36500 days"));
            }
        }
        if !(1..=4096).contains(&self.crl.shards) {
            return Err(invalid("crl.shards", "must be between 1 and 4096"));
        }
        if !(1..=3650).contains(&self.crl.arl_next_update_days) {
            return Err(invalid(
                "crl.arl_next_update_days",
                "must be between 1 and 3650 (ten years)",
            ));
        }
        if !(1..=8760).contains(&self.crl.next_update_hours) {
            return Err(invalid(
                "crl.next_update_hours",
                "must be between 1 and 8760 (a year)",
            ));
        }
        if !self.crl.base_url.is_empty() {
            let u = &self.crl.base_url;
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || !u.is_ascii()
                || u.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "crl.base_url",
                    "an http:// or https:// URL in ASCII without spaces (an IA5String, RFC 5280 §4.2.1.13), or empty for none",
                ));
            }
        }
        if !self.server.crl_listen.is_empty() {
            if self
                .server
                .crl_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
            {
                return Err(invalid(
                    "server.crl_listen",
                    "an address and port such as 127.0.0.1:8080, or empty for no plain-HTTP CRL listener",
                ));
            }
            if self.server.crl_listen == self.server.listen {
                return Err(invalid(
                    "server.crl_listen",
                    "must differ from server.listen: one port speaks TLS, the other plain HTTP",
                ));
            }
        }
        let server = &self.server;
        for (field, value, least) in [
            ("server.max_connections", server.max_connections as u64, 1),
            (
                "server.max_connections_per_ip",
                server.max_connections_per_ip as u64,
                1,
            ),
            ("server.header_timeout_secs", server.header_timeout_secs, 1),
            ("server.idle_timeout_secs", server.idle_timeout_secs, 1),
            (
                "server.min_body_bytes_per_sec",
                server.min_body_bytes_per_sec,
                1,
            ),
            (
                "server.ready_probe_interval_ms",
                server.ready_probe_interval_ms,
                100,
            ),
        ] {
            if value < least {
                return Err(invalid(field, &format!("must be at least {least}")));
            }
        }
        if server.max_connections_per_ip > server.max_connections {
            return Err(invalid(
                "server.max_connections_per_ip",
                "must not exceed server.max_connections",
            ));
        }
        if self.hsm.online_token == self.hsm.root_token {
            return Err(invalid(
                "hsm.root_token",
                "the root token must not be the online token",
            ));
        }
        self.validate_tokens(path)
    }

    fn validate_tokens(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        };
        let tokens = &self.hsm.tokens;
        if tokens.is_empty() {
            return Ok(());
        }
        for (i, t) in tokens.iter().enumerate() {
            let field = format!("hsm.tokens[{i}].label");
            if t.label.is_empty() || t.label.len() > 32 {
                return Err(invalid(
                    &field,
                    "a token label is 1 to 32 bytes (PKCS#11 CK_TOKEN_INFO)",
                ));
            }
            if t.label == self.hsm.root_token {
                return Err(invalid(
                    &field,
                    "the root token never holds online keys: it is opened only by a quorum",
                ));
            }
            if tokens[..i].iter().any(|o| o.label == t.label) {
                return Err(invalid(&field, &format!("{:?} is listed twice", t.label)));
            }
            if t.label != self.hsm.online_token && t.pin_env.is_none() && t.pin_file.is_none() {
                return Err(invalid(
                    &format!("hsm.tokens[{i}]"),
                    "needs pin_file or pin_env (only the online token's PIN comes from the [hsm] settings)",
                ));
            }
        }
        if !tokens.iter().any(|t| t.label == self.hsm.online_token) {
            return Err(invalid(
                "hsm.tokens",
                &format!(
                    "must list the online token {:?} (the token ceremonies make keys on)",
                    self.hsm.online_token
                ),
            ));
        }
        Ok(())
    }

    /// The PIN sources of one of `[[hsm.tokens]]`, in the order they are tried: its own, or
    /// the online token's settings for the online token when it names none.
    pub fn token_pin_sources(&self, token: &TokenConfig) -> Vec<PinSource> {
        let mut v = Vec::new();
        if let Some(env) = &token.pin_env {
            v.push(PinSource::Env(env.clone()));
        }
        if let Some(file) = &token.pin_file {
            v.push(PinSource::File(file.clone()));
        }
        if v.is_empty() && token.label == self.hsm.online_token {
            return self.online_pin_sources();
        }
        v
    }

    /// Serialises for writing.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# meterpki configuration (see the README for every field).\n\
             # Relative paths are relative to this file's directory.\n\n{body}"
        )
    }

    /// The online PIN sources in the order they are tried.
    pub fn online_pin_sources(&self) -> Vec<PinSource> {
        let mut v = Vec::new();
        if let Some(env) = &self.hsm.online_pin_env {
            v.push(PinSource::Env(env.clone()));
        }
        if let Some(file) = &self.hsm.online_pin_file {
            v.push(PinSource::File(file.clone()));
        }
        v
    }
}
