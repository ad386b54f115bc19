//! Certificate profiles as validated TOML (DESIGN §3).
//!
//! Not built yet: the profiles (meter, supplier, TLS, trust-update signer) and their validation
//! arrive with the issuance issue. Until then the CA certificates made at the ceremonies take
//! their names and lifetimes from `[ca]` in `meterpki.toml`.
#![forbid(unsafe_code)]
