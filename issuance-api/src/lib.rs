//! The issuance API (DESIGN §7): axum over rustls, TLS 1.3 and 1.2, client certificates checked
//! against the root and the Access CA's CRLs during the handshake; the caller's role comes from
//! the account bound to its certificate, never from the request body. Errors are RFC 9457
//! `application/problem+json`. Handlers are thin: the work is in `ca-core`.
#![forbid(unsafe_code)]

mod error;
mod routes;
mod server;
mod tls;

pub use error::ApiError;
pub use routes::{router, AppState, Metrics, TimedSigner};
pub use server::{serve, ServeOptions};
pub use tls::{server_tls_config, SignerKey};
