//! The issuance API: axum over rustls with mutual TLS (DESIGN §7).
//!
//! Not built yet: it arrives with the API issue, on top of the issuance pipeline in `ca-core`
//! and the async signing in `hsm-bridge` (`HsmSigner::sign_async`).
#![forbid(unsafe_code)]
