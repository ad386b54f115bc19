//! meterpki's HSM bridge: the only crate that speaks PKCS#11 (through `cryptoki`).
//!
//! * [`Hsm`] loads a vendor module once per process and finds tokens by label.
//! * [`Token`] is a logged-in pool of sessions, one per worker, that replaces a session gone
//!   invalid (closed, device removed, module re-initialised) on the next call.
//! * [`HsmSigner`] implements `ca_core::Signer`: it finds its private key once per session and
//!   signs a host-computed digest with `CKM_ECDSA`, returning DER.
//! * [`Pkcs11Module`] implements `ca_core::hsm::HsmModule` (and its tokens `HsmToken`): the
//!   seam through which the ceremonies and the service identities manage keys.
#![forbid(unsafe_code)]

mod backup;
mod bench;
mod error;
mod module;
mod pool;
mod seam;
mod signer;

pub use bench::{bench_bare_cryptoki, bench_bare_cryptoki_with, bench_signer, BenchFigure};
pub use ca_core::hsm::{KeyInfo, ObjectSummary, TokenSummary};
pub use error::{ckr_name, HsmError};
pub use module::Hsm;
pub use pool::{Token, DEFAULT_SIGN_TIMEOUT, KEY_RECHECK};
pub use seam::Pkcs11Module;
pub use signer::HsmSigner;

/// Re-exported so callers can hold PINs without depending on `secrecy` directly.
pub use secrecy::SecretString;
