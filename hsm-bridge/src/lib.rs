//! meterpki's HSM bridge: the only crate that speaks PKCS#11 (through `cryptoki`).
//!
//! * [`Hsm`] loads a vendor module once per process and finds tokens by label.
//! * [`Token`] is a logged-in pool of sessions, one per worker, that replaces a session gone
//!   invalid (closed, device removed, module re-initialised) on the next call.
//! * [`HsmSigner`] implements `ca_core::Signer`: it finds its private key once per session and
//!   signs a host-computed digest with `CKM_ECDSA`, returning DER.
#![forbid(unsafe_code)]

mod bench;
mod error;
mod module;
mod pool;
mod signer;

pub use bench::{bench_bare_cryptoki, bench_bare_cryptoki_with, bench_signer, BenchFigure};
pub use error::{ckr_name, HsmError};
pub use module::{Hsm, ObjectSummary, TokenSummary};
pub use pool::{KeyInfo, Token, DEFAULT_SIGN_TIMEOUT, KEY_RECHECK};
pub use signer::HsmSigner;

/// Re-exported so callers can hold PINs without depending on `secrecy` directly.
pub use secrecy::SecretString;
