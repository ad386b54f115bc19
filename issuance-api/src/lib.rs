//! The issuance API: axum over rustls, TLS 1.3 and 1.2, client certificates checked
//! against the root and the Access CA's CRLs during the handshake; the caller's role comes from
//! the account bound to its certificate, never from the request body. Errors are RFC 9457
//! `application/problem+json`. Handlers are thin: they parse, call `ca_core::service` and
//! render; who may do what, every write and every audit record are decided there.
#![forbid(unsafe_code)]

mod admin;
mod auth;
mod crl_cache;
mod error;
mod metrics;
mod routes;
mod server;
mod state;
mod tls;

pub use admin::AdminSocket;
pub use auth::Peer;
pub use crl_cache::CrlCache;
pub use error::ApiError;
pub use metrics::{Metrics, TimedSigner};
pub use routes::{crl_router, router, BODY_LIMIT};
pub use server::{serve, serve_plain, ServeOptions};
pub use state::AppState;
pub use tls::{server_tls_config, SignerKey};
