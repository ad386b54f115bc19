//! The issuance API end to end: `meterpki serve` on SoftHSM, driven by curl (an independent TLS
//! client) with the client certificates `account add` wrote. Every refusal is checked to have
//! issued nothing.
//!
//! One module per concern: `support` (the server process, curl, the homes the tests start
//! from), `mutual_tls` (batches, lookups, revocation and supplier enrolment over mTLS, and what
//! each account may not do), `limits` (per-account limits and SIGTERM), `takeover`,
//! `security_matrix`, `faults` (HSM faults and a server killed mid-batch), `load` (sustained
//! load and stalled connections), `hostile` (callers without an account: refused uploads, connection limits, idle
//! and trickling connections, `/readyz` floods, descriptors running out), `secrets`, `bench` (`bench api`) and `revocation` (relying parties checking every CRL
//! over plain HTTP while revocations happen).

mod bench;
mod database;
mod drill;
mod faults;
mod hostile;
mod limits;
mod load;
mod mutual_tls;
mod revocation;
mod secrets;
mod security_matrix;
mod shared;
mod support;
mod takeover;
