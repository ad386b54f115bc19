//! Supplier churn end to end (issue 6): registry, enrolment, assignment, change of supplier,
//! rotation, key revocation, takeover and exit, each producing trust-anchor updates that openssl
//! verifies (`openssl cms -verify`) and `meterpki update verify` checks as a meter would; bad
//! input refused with nothing changed; a takeover killed half-way and completed by a re-run.
//!
//! `support` holds the home with its suppliers and meters and the helpers that run and verify;
//! `operations` runs every churn operation in turn; `interrupted` kills a takeover half-way.

mod interrupted;
mod operations;
mod support;
