//! Errors that say which PKCS#11 function failed and with which CKR code.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// An HSM failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {path}: {reason}")]
    ModuleLoad {
        /// The module path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A PKCS#11 call returned an error.
    #[error("{function} failed with {ckr} ({context})")]
    Pkcs11 {
        /// `C_Sign`, `C_Login`, ...
        function: String,
        /// `CKR_...`.
        ckr: String,
        /// The code, for callers that branch on it.
        rv: Option<RvError>,
        /// What meterpki was doing.
        context: String,
    },
    /// No token carries the label.
    #[error("no token labelled {label:?} in {module}; tokens present: {available}")]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// The module.
        module: String,
        /// The labels that do exist.
        available: String,
    },
    /// A signature took longer than the token's sign timeout: the session is thrown away.
    #[error("the HSM took {elapsed_ms} ms to sign on token {label:?} (limit {limit_ms} ms): the signature is not used and the session is replaced")]
    Timeout {
        /// The token.
        label: String,
        /// How long it took.
        elapsed_ms: u128,
        /// The limit.
        limit_ms: u128,
    },
    /// The PIN was refused.
    #[error("login to token {label:?} refused: the PIN is incorrect (C_Login returned CKR_PIN_INCORRECT)")]
    PinIncorrect {
        /// The token.
        label: String,
    },
    /// The token is locked after too many wrong PINs.
    #[error("token {label:?} is locked (CKR_PIN_LOCKED): too many wrong PINs")]
    PinLocked {
        /// The token.
        label: String,
    },
    /// A token with that label already exists.
    #[error("a token labelled {label:?} already exists in {module}")]
    TokenExists {
        /// The label.
        label: String,
        /// The module.
        module: String,
    },
    /// No uninitialised slot is left to create a token in.
    #[error("no free slot in {module} to create token {label:?}")]
    NoFreeSlot {
        /// The label.
        label: String,
        /// The module.
        module: String,
    },
    /// The key is not on the token.
    #[error("no key labelled {label:?} on token {token:?}")]
    KeyNotFound {
        /// The key's label.
        label: String,
        /// The token.
        token: String,
    },
    /// A key exists where a new one was to be generated.
    #[error("a key labelled {label:?} already exists on token {token:?}")]
    KeyExists {
        /// The key's label.
        label: String,
        /// The token.
        token: String,
    },
    /// No key-backup key on the token.
    #[error("token {token:?} holds no key-backup key ({label:?}): it cannot wrap or unwrap keys of this home")]
    BackupKeyMissing {
        /// The key-backup key's label.
        label: String,
        /// The token.
        token: String,
    },
    /// The token will not wrap the key.
    #[error("key {label:?} on token {token:?} cannot be copied out: {reason}")]
    NotExportable {
        /// The key's label.
        label: String,
        /// The token.
        token: String,
        /// Why.
        reason: String,
    },
    /// The key under the key-backup key's label is not the key-backup key.
    #[error("token {token:?} holds an object labelled {label:?} that is not this home's key-backup key ({why}): someone who knew its security-officer PIN may have planted it; nothing was done. Investigate, then remove it with the token's SO")]
    BackupKeyMismatch {
        /// The token.
        token: String,
        /// The label.
        label: String,
        /// What is wrong with it.
        why: String,
    },
    /// The token holds a trusted key meterpki did not make.
    #[error("token {token:?} holds trusted key(s) the key-backup ceremony did not make ({labels}): someone who knew its security-officer PIN made them, and could wrap every key out under them; nothing was done. Investigate, then remove them with the token's SO")]
    ForeignTrustedKey {
        /// The token.
        token: String,
        /// Their labels.
        labels: String,
    },
    /// The token refused a wrapped key (its integrity check failed).
    #[error("token {token:?} refused the wrapped key {label:?} ({ckr}): it was not wrapped under this token's key-backup key, or it was altered")]
    WrappedKeyRefused {
        /// The key's label.
        label: String,
        /// The token.
        token: String,
        /// The CKR code.
        ckr: String,
    },
    /// The token returned something unexpected.
    #[error("token {token:?}: {detail}")]
    Unexpected {
        /// The token.
        token: String,
        /// What.
        detail: String,
    },
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`, and so on: the names PKCS#11 documents.
pub fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `C_Login` from `Function::Login`.
pub(crate) fn function_name(f: Function) -> String {
    format!("C_{f:?}")
}

impl HsmError {
    /// Wraps a cryptoki error, keeping the function and the code.
    pub(crate) fn from_ck(e: CkError, context: impl Into<String>) -> HsmError {
        match e {
            CkError::Pkcs11(rv, f) => HsmError::Pkcs11 {
                function: function_name(f),
                ckr: ckr_name(rv),
                rv: Some(rv),
                context: context.into(),
            },
            other => HsmError::Pkcs11 {
                function: "cryptoki".into(),
                ckr: other.to_string(),
                rv: None,
                context: context.into(),
            },
        }
    }

    /// The PKCS#11 return code, when the failure was one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Pkcs11 { rv, .. } => *rv,
            _ => None,
        }
    }
}

/// Errors after which the session (or the whole module) must be rebuilt, not reused.
pub(crate) fn session_is_dead(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn
                | RvError::DeviceError
                | RvError::SessionCount,
            _
        )
    )
}

/// True when the module itself was finalised under us.
pub(crate) fn module_not_initialised(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::CryptokiNotInitialized, _))
}
