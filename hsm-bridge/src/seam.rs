//! ca-core's HSM seam (`HsmModule`, `HsmToken`) implemented with PKCS#11.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ca_core::hsm::{
    HsmErrorKind, HsmModule, HsmToken, KeyInfo, KeyProtection, ObjectSummary, SecretString,
    TokenSummary, WrappedKey,
};
use ca_core::{KeyAlgorithm, Signer};

use crate::error::HsmError;
use crate::module::Hsm;
use crate::pool::Token;

impl HsmError {
    /// What kind of failure, as the seam classes them.
    pub fn kind(&self) -> HsmErrorKind {
        match self {
            HsmError::ModuleLoad { .. } => HsmErrorKind::ModuleLoad,
            HsmError::TokenNotFound { .. } => HsmErrorKind::TokenNotFound,
            HsmError::TokenExists { .. } => HsmErrorKind::TokenExists,
            HsmError::PinIncorrect { .. } => HsmErrorKind::PinIncorrect,
            HsmError::PinLocked { .. } => HsmErrorKind::PinLocked,
            HsmError::KeyNotFound { .. } => HsmErrorKind::KeyNotFound,
            HsmError::Timeout { .. } => HsmErrorKind::Timeout,
            HsmError::BackupKeyMissing { .. } => HsmErrorKind::BackupKeyMissing,
            HsmError::NotExportable { .. } => HsmErrorKind::NotExportable,
            HsmError::WrappedKeyRefused { .. } => HsmErrorKind::WrappedKeyRefused,
            HsmError::ForeignTrustedKey { .. } | HsmError::BackupKeyMismatch { .. } => {
                HsmErrorKind::ForeignTrustedKey
            }
            HsmError::KeyExists { .. } => HsmErrorKind::KeyExists,
            _ => HsmErrorKind::Device,
        }
    }
}

impl From<HsmError> for ca_core::hsm::HsmError {
    fn from(e: HsmError) -> ca_core::hsm::HsmError {
        let kind = e.kind();
        ca_core::hsm::HsmError {
            kind,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// A PKCS#11 module behind the seam. For a SoftHSM home, `softhsm_tokens` names its token
/// directory: a token this process created can then be removed again (PKCS#11 has no call to
/// delete a token; SoftHSM keeps each in a directory of its own).
#[derive(Debug)]
pub struct Pkcs11Module {
    hsm: Hsm,
    softhsm_tokens: Option<PathBuf>,
    created: Mutex<HashMap<String, Vec<PathBuf>>>,
}

impl Pkcs11Module {
    /// Loads `module` (once per process).
    pub fn load(module: &Path, softhsm_tokens: Option<PathBuf>) -> Result<Pkcs11Module, HsmError> {
        let mut hsm = Hsm::load(module)?;
        if let Some(lock) = softhsm_tokens
            .as_deref()
            .and_then(Path::parent)
            .map(|d| d.join("token.lock"))
        {
            hsm = hsm.with_token_lock(lock);
        }
        Ok(Pkcs11Module {
            hsm,
            softhsm_tokens,
            created: Mutex::new(HashMap::new()),
        })
    }

    /// The loaded module.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    fn token_dirs(&self) -> BTreeSet<PathBuf> {
        self.softhsm_tokens
            .as_ref()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

impl HsmModule for Pkcs11Module {
    fn manufacturer(&self) -> Result<String, ca_core::hsm::HsmError> {
        Ok(self.hsm.manufacturer()?)
    }

    fn tokens(&self) -> Result<Vec<TokenSummary>, ca_core::hsm::HsmError> {
        Ok(self.hsm.tokens()?)
    }

    fn init_token(
        &self,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), ca_core::hsm::HsmError> {
        let before = self.token_dirs();
        self.hsm.init_token(label, so_pin, user_pin)?;
        let new: Vec<PathBuf> = self.token_dirs().difference(&before).cloned().collect();
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_string(), new);
        Ok(())
    }

    fn discard_token(&self, label: &str) -> Result<bool, ca_core::hsm::HsmError> {
        let dirs = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label)
            .unwrap_or_default();
        let mut removed = false;
        for d in dirs {
            removed |= std::fs::remove_dir_all(&d).is_ok();
        }
        Ok(removed)
    }

    fn open(
        &self,
        label: &str,
        pin: SecretString,
        sessions: usize,
    ) -> Result<Arc<dyn HsmToken>, ca_core::hsm::HsmError> {
        Ok(Arc::new(TokenHandle(self.hsm.open(label, pin, sessions)?)))
    }

    fn public_objects(&self, label: &str) -> Result<Vec<ObjectSummary>, ca_core::hsm::HsmError> {
        Ok(self.hsm.public_objects(label)?)
    }

    fn install_backup_key(
        &self,
        token: &str,
        so_pin: &SecretString,
        key_label: &str,
        value: &[u8],
        new_so_pin: Option<&SecretString>,
    ) -> Result<(), ca_core::hsm::HsmError> {
        Ok(self
            .hsm
            .install_backup_key(token, so_pin, key_label, value, new_so_pin)?)
    }
}

/// A logged-in token behind the seam.
#[derive(Debug)]
pub(crate) struct TokenHandle(pub(crate) Arc<Token>);

impl HsmToken for TokenHandle {
    fn label(&self) -> &str {
        self.0.label()
    }

    fn generate_key(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyInfo, ca_core::hsm::HsmError> {
        Ok(self.0.generate_ec_key(label, algorithm)?)
    }

    fn generate_key_as(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        protection: KeyProtection,
    ) -> Result<KeyInfo, ca_core::hsm::HsmError> {
        Ok(self.0.generate_ec_key_as(label, algorithm, protection)?)
    }

    fn has_secret_key(&self, label: &str) -> Result<bool, ca_core::hsm::HsmError> {
        Ok(self.0.has_secret_key(label)?)
    }

    fn trusted_keys(&self) -> Result<Vec<String>, ca_core::hsm::HsmError> {
        Ok(self.0.trusted_keys()?)
    }

    fn load_unwrap_key(&self, key_label: &str, value: &[u8]) -> Result<(), ca_core::hsm::HsmError> {
        Ok(self.0.load_unwrap_key(key_label, value)?)
    }

    fn remove_unwrap_key(&self, key_label: &str) -> Result<usize, ca_core::hsm::HsmError> {
        Ok(self.0.remove_unwrap_key(key_label)?)
    }

    fn wrap_key(
        &self,
        wrapping_label: &str,
        label: &str,
    ) -> Result<WrappedKey, ca_core::hsm::HsmError> {
        Ok(self.0.wrap_key(wrapping_label, label)?)
    }

    fn unwrap_key(
        &self,
        wrapping_label: &str,
        wrapped: &WrappedKey,
    ) -> Result<KeyInfo, ca_core::hsm::HsmError> {
        Ok(self.0.unwrap_key(wrapping_label, wrapped)?)
    }

    fn find_key(&self, label: &str) -> Result<Option<KeyInfo>, ca_core::hsm::HsmError> {
        Ok(self.0.find_key(label)?)
    }

    fn destroy_key(&self, label: &str) -> Result<usize, ca_core::hsm::HsmError> {
        Ok(self.0.destroy_key(label)?)
    }

    fn signer(&self, label: &str) -> Result<Arc<dyn Signer>, ca_core::hsm::HsmError> {
        Ok(Arc::new(self.0.signer(label)?))
    }

    fn objects(&self) -> Result<Vec<ObjectSummary>, ca_core::hsm::HsmError> {
        Ok(self.0.objects()?)
    }

    fn set_sign_timeout(&self, limit: Duration) {
        self.0.set_sign_timeout(limit);
    }

    fn sign_timeout(&self) -> Duration {
        self.0.sign_timeout()
    }

    fn oldest_sign_in_progress(&self) -> Option<Duration> {
        self.0.oldest_sign_in_progress()
    }

    fn sessions_in_use(&self) -> usize {
        self.0.sessions_in_use()
    }

    fn pool_size(&self) -> usize {
        self.0.pool_size()
    }
}
