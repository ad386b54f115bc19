//! TAMP updates (RFC 5934 in RFC 5652 SignedData): hand-derived DER vectors, strict decoding,
//! signing through the Signer seam and verifying as a meter would, every tampering refused,
//! and openssl's `cms -verify` agreeing.
//!
//! One module per topic: `fixtures` (the test PKI and the shared inputs), `vectors` (hand-derived
//! DER), `decoding` (what strict decoding and encoding refuse), `signing` (signing and verifying
//! as a meter would), `openssl` (the cross-check with `openssl cms -verify`) and `fast_path`
//! (the encodings used for many meters against the typed ones).

#[path = "../common/mod.rs"]
mod common;

mod decoding;
mod fast_path;
mod fixtures;
mod openssl;
mod signing;
mod vectors;
