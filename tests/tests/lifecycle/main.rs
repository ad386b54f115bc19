//! The CA lifecycle end to end (docs/lifecycle.md): chains that outlive today's CA end dates,
//! issuing-CA renewal into generations whose CRLs keep being signed by their own keys, checked
//! as a strict relying party checks them (`openssl verify -crl_check_all` with every CRL of
//! the path, the root's ARL included).

mod recover;
mod renewal;
mod rollover;
mod rp;

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");
