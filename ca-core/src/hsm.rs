//! The HSM seam for key management, as [`Signer`] is the seam for signing: what the ceremonies
//! and the service identities need from a token (create it, log in, generate, find and destroy
//! keys, list objects), with no PKCS#11 type. `hsm-bridge` implements it with `cryptoki`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;

pub use secrecy::SecretString;

use crate::signer::{KeyAlgorithm, Signer};

/// What kind of HSM failure, for callers that branch on it (a wrong PIN is the user's mistake;
/// a device error is the system's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HsmErrorKind {
    /// The module could not be loaded.
    ModuleLoad,
    /// No token with that label.
    TokenNotFound,
    /// A token with that label exists already.
    TokenExists,
    /// The PIN was refused.
    PinIncorrect,
    /// Too many wrong PINs.
    PinLocked,
    /// No key with that label.
    KeyNotFound,
    /// A signature took too long.
    Timeout,
    /// A key exists where one was to be created.
    KeyExists,
    /// The token holds no key-backup key.
    BackupKeyMissing,
    /// The key may not leave its token.
    NotExportable,
    /// The token refused a wrapped key (wrong key-backup key, or altered).
    WrappedKeyRefused,
    /// The token holds a trusted key the key-backup ceremony did not make.
    ForeignTrustedKey,
    /// Anything else the module reported.
    Device,
}

impl HsmErrorKind {
    /// True for the operator's mistakes (a wrong PIN, a missing token or module): exit 2.
    pub fn is_input(self) -> bool {
        matches!(
            self,
            HsmErrorKind::ModuleLoad
                | HsmErrorKind::TokenNotFound
                | HsmErrorKind::TokenExists
                | HsmErrorKind::PinIncorrect
                | HsmErrorKind::PinLocked
                | HsmErrorKind::KeyExists
                | HsmErrorKind::BackupKeyMissing
                | HsmErrorKind::NotExportable
                | HsmErrorKind::WrappedKeyRefused
                | HsmErrorKind::ForeignTrustedKey
        )
    }
}

/// An HSM failure: its kind and the module's own words (the PKCS#11 function and CKR code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HsmError {
    /// What kind.
    pub kind: HsmErrorKind,
    /// For a human: which call failed and why.
    pub message: String,
    /// The backend's error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HsmError {
    /// An error of `kind`.
    pub fn new(kind: HsmErrorKind, message: impl Into<String>) -> HsmError {
        HsmError {
            kind,
            message: message.into(),
            source: None,
        }
    }
}

/// A key pair on a token, by its public half.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID.
    pub id: Vec<u8>,
    /// Curve.
    pub algorithm: KeyAlgorithm,
    /// The public key.
    pub spki: SubjectPublicKeyInfoOwned,
}

/// How a key generated in a token may ever leave it (docs/hsms.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyProtection {
    /// `CKA_EXTRACTABLE` false: the key never leaves its token (`--key-backup none`).
    #[default]
    NeverExtractable,
    /// `CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED` true: the key leaves its token only
    /// wrapped under a `CKA_TRUSTED` key, which only the security officer can create
    /// (`--key-backup quorum`).
    TrustedWrapOnly,
}

/// A private key wrapped (encrypted) by a token under its key-backup key with
/// `CKM_AES_KEY_WRAP_PAD`, with what is needed to recreate the pair on another token.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    /// The key pair: label, CKA_ID, curve, public key.
    pub key: KeyInfo,
    /// The wrapped private key (AES key wrap with padding, RFC 5649, of its PKCS#8 encoding).
    pub wrapped: Vec<u8>,
}

/// One token, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    /// Slot id.
    pub slot: u64,
    /// Label.
    pub label: String,
    /// Serial number.
    pub serial: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Whether the user PIN is set.
    pub user_pin_initialized: bool,
}

/// One object on a token.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectSummary {
    /// `private-key`, `public-key`, ...
    pub class: String,
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID, hex.
    pub id: String,
    /// CKA_SENSITIVE (private keys).
    pub sensitive: Option<bool>,
    /// CKA_EXTRACTABLE (private keys).
    pub extractable: Option<bool>,
    /// CKA_WRAP_WITH_TRUSTED (private keys): extractable only wrapped under a trusted key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap_with_trusted: Option<bool>,
    /// CKA_TRUSTED (secret keys: the key-backup key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
    /// CKA_TOKEN.
    pub token: Option<bool>,
}

/// A loaded HSM module (a PKCS#11 library).
pub trait HsmModule: Send + Sync + fmt::Debug {
    /// The module's manufacturer.
    fn manufacturer(&self) -> Result<String, HsmError>;
    /// Every token present.
    fn tokens(&self) -> Result<Vec<TokenSummary>, HsmError>;
    /// Creates a token labelled `label` in a free slot, with its SO and user PINs.
    fn init_token(
        &self,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), HsmError>;
    /// Removes a token this process created with [`HsmModule::init_token`] (a failed root
    /// ceremony leaves none behind). Returns false when the module cannot remove tokens.
    fn discard_token(&self, label: &str) -> Result<bool, HsmError>;
    /// Logs in to the token labelled `label` with a pool of `sessions` sessions.
    fn open(
        &self,
        label: &str,
        pin: SecretString,
        sessions: usize,
    ) -> Result<Arc<dyn HsmToken>, HsmError>;
    /// The public objects of a token, without logging in.
    fn public_objects(&self, label: &str) -> Result<Vec<ObjectSummary>, HsmError>;
    /// Under a security-officer login to the token labelled `token` (with `so_pin`), creates
    /// the key-backup key `key_label` from `value`: AES, `CKA_TRUSTED`, wrap only, not
    /// modifiable, sensitive, never extractable. Then, when `new_so_pin` is given, changes the
    /// SO PIN to it (if that fails, a key made by this call is removed again). A key already
    /// there under that label is taken only if the token shows it holds `value` and is trusted
    /// and wrap-only (a ceremony run again); anything else under the label, or a trusted key
    /// under another label, is refused ([`HsmErrorKind::ForeignTrustedKey`]). Must run before
    /// this process logs in to the token as user.
    fn install_backup_key(
        &self,
        token: &str,
        so_pin: &SecretString,
        key_label: &str,
        value: &[u8],
        new_so_pin: Option<&SecretString>,
    ) -> Result<(), HsmError>;
}

/// A logged-in token.
pub trait HsmToken: Send + Sync + fmt::Debug {
    /// Its label.
    fn label(&self) -> &str;
    /// Generates a key pair inside the token: sensitive, never extractable, sign-only.
    fn generate_key(&self, label: &str, algorithm: KeyAlgorithm) -> Result<KeyInfo, HsmError>;
    /// [`HsmToken::generate_key`] with the given protection.
    fn generate_key_as(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        protection: KeyProtection,
    ) -> Result<KeyInfo, HsmError>;
    /// Whether a secret key labelled `label` (the key-backup key) is on the token.
    fn has_secret_key(&self, label: &str) -> Result<bool, HsmError>;
    /// The labels of the trusted secret keys on the token.
    fn trusted_keys(&self) -> Result<Vec<String>, HsmError>;
    /// Makes the unwrap-only copy of the key-backup key `key_label` from `value`, as a session
    /// object of this token's session: gone when the session ends.
    fn load_unwrap_key(&self, key_label: &str, value: &[u8]) -> Result<(), HsmError>;
    /// Destroys the unwrap-only copy of the key-backup key `key_label`.
    fn remove_unwrap_key(&self, key_label: &str) -> Result<usize, HsmError>;
    /// Wraps the private key labelled `label` under the secret key `wrapping_label` with
    /// `CKM_AES_KEY_WRAP_PAD`. The token refuses a key that is not extractable, or that may
    /// be wrapped only by a trusted key when the wrapping key is not trusted.
    fn wrap_key(&self, wrapping_label: &str, label: &str) -> Result<WrappedKey, HsmError>;
    /// Unwraps `wrapped` under the unwrap-only copy of `wrapping_label` into a private key (sensitive,
    /// extractable only by trusted wrapping), creates its public half, and checks that the
    /// two belong together by signing with the new key. Nothing is left behind on failure.
    fn unwrap_key(&self, wrapping_label: &str, wrapped: &WrappedKey) -> Result<KeyInfo, HsmError>;
    /// The key pair labelled `label`, if present.
    fn find_key(&self, label: &str) -> Result<Option<KeyInfo>, HsmError>;
    /// Destroys the key pair labelled `label`; returns how many objects went.
    fn destroy_key(&self, label: &str) -> Result<usize, HsmError>;
    /// A signer for the key pair labelled `label`.
    fn signer(&self, label: &str) -> Result<Arc<dyn Signer>, HsmError>;
    /// Every object on the token.
    fn objects(&self) -> Result<Vec<ObjectSummary>, HsmError>;
    /// A signature slower than this counts as a failure.
    fn set_sign_timeout(&self, limit: Duration);
    /// The sign timeout.
    fn sign_timeout(&self) -> Duration;
    /// How long the oldest signature in progress has been waiting, if any.
    fn oldest_sign_in_progress(&self) -> Option<Duration>;
    /// Sessions lent out now.
    fn sessions_in_use(&self) -> usize;
    /// Sessions in the pool.
    fn pool_size(&self) -> usize;
}
