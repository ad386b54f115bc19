//! meterpki's CA core: everything a certification authority does that does not depend on how keys
//! are held (PKCS#11 lives in `hsm-bridge`) or how requests arrive (HTTP in `issuance-api`, the
//! command line in `cli`).
//!
//! Modules are private; this list of re-exports *is* the public API.
#![forbid(unsafe_code)]

mod audit;
mod certs;
pub mod churn;
mod config;
pub mod contingency;
pub mod crl;
mod fsutil;
mod generation;
mod home;
pub mod hsm;
pub mod issue;
pub mod keybackup;
mod model;
mod par;
mod quorum;
pub mod service;
mod signer;
pub mod store;
pub mod tamp;

pub use audit::{
    AuditEntry, AuditError, AuditLog, AuditRecord, AuditReport, FOREIGN_EVENT, HEAD_SIGNED_EVENT,
    TORN_TAIL_EVENT, UNCOMMITTED_EVENT,
};
pub use certs::{
    build_ca_certificate, build_self_signed_root, build_signer_certificate, certificate_from_bytes,
    certificate_from_pem, certificate_to_pem, check_key_matches, der_to_pem, fingerprint_sha256,
    key_identifier, parse_name, random_serial_bytes, verify_certificate_signature, CaCertSpec,
    CertError, CertInfo,
};
pub use config::{
    CaConfig, Config, ConfigError, CrlConfig, HsmConfig, KeyBackup, PinSource, ServerConfig,
    TokenConfig,
};
pub use fsutil::{read_bounded, write_atomic, write_new_secret, BoundedLines, MAX_LINE};
pub use generation::IssuerId;
pub use home::Home;
pub use model::{
    check_account_name, check_supplier_name, Account, DeviceRange, Eui64, OpKind, OpRecord,
    OpState, Reason, Revocation, Role, Supplier, SupplierState,
};
pub use policies::CaKind;
pub use quorum::{
    combine_checked, combine_shares, split_secret, CeremonyRecord, QuorumError, RootSecret,
    ShareCheck, ShareFile,
};
pub use signer::{
    spki_from_point, verify_signature, verify_signature_fast, KeyAlgorithm, SignError, Signer,
    SignerSet, SignerSetError, TokenState, VerifyError,
};
pub use store::{
    Applied, ApplyError, AuditHead, CertRecord, Commit, Committed, MeterMove, MoveOutcome, Op,
    Revoked, Store, StoreError, Txn, UpdateMark,
};

/// Now, Unix seconds.
pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// SHA-256 of `bytes` (for callers that need a digest without their own hash dependency).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Crash injection for the crash-safety tests: with `METERPKI_FAILPOINT=<name>:<n>` in the
/// environment the process aborts (as a SIGKILL would stop it: no destructor, no flush) the
/// `n`-th time it passes the point `name`. Without the variable this is one environment lookup.
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("METERPKI_FAILPOINT") else {
        return;
    };
    let Some((point, n)) = spec.rsplit_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    let n: u64 = n.parse().unwrap_or(1);
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
