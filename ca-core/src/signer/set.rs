//! One online key held on several tokens (issue 17, `[[hsm.tokens]]`): a [`Signer`] that sends
//! each signature to the least busy token in the rotation, takes a token that fails out of it
//! at once (a backend error, or a signature that does not verify with the key every token was
//! checked to hold) and retries the signature on another, and brings a token back when a probe
//! signs correctly again. It knows nothing of PKCS#11: each member is a `Signer` (in production
//! an `hsm_bridge::HsmSigner` on one token), named by its token's label.
//!
//! With one token configured nothing changes: the service uses that token's signer directly.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;

use super::{spki_der, verify_digest, verify_signature_fast, KeyAlgorithm, SignError, Signer};

/// Why a set of tokens cannot serve one key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerSetError {
    /// No token was given.
    #[error("key {key}: no token holds it")]
    Empty {
        /// The key's label.
        key: String,
    },
    /// A token holds a different key under the same label: it is refused at start.
    #[error("key {key}: token {token:?} holds a different public key than token {first:?}; every token must hold the same key (replicate it, or remove the token from [[hsm.tokens]])")]
    KeyDiffers {
        /// The key's label.
        key: String,
        /// The token whose key differs.
        token: String,
        /// The token it was compared with.
        first: String,
    },
}

/// One token's share of a key, as `status`, `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenState {
    /// The token's label.
    pub token: String,
    /// In the rotation.
    pub up: bool,
    /// Why it left the rotation, while it is out.
    pub reason: Option<String>,
    /// Signatures it made.
    pub signatures: u64,
    /// Signatures it failed (each retried on another token).
    pub failures: u64,
    /// Signatures in progress on it now.
    pub in_flight: usize,
}

#[derive(Debug)]
struct Member {
    token: String,
    signer: Arc<dyn Signer>,
    in_flight: AtomicUsize,
    signatures: AtomicU64,
    failures: AtomicU64,
    /// Out of the rotation since when, and why.
    down: Mutex<Option<(Instant, String)>>,
}

impl Member {
    fn down(&self) -> Option<(Instant, String)> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_down(&self, reason: Option<String>) {
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = reason.map(|r| (Instant::now(), r));
    }
}

/// One key on several tokens (see the module's documentation).
#[derive(Debug)]
pub struct SignerSet {
    key: String,
    spki: SubjectPublicKeyInfoOwned,
    algorithm: KeyAlgorithm,
    members: Vec<Member>,
}

/// One signature made with one member's signer.
type SignOn<'a> = dyn Fn(&dyn Signer) -> Result<Vec<u8>, SignError> + 'a;

/// Decrements a member's in-flight count however its signature ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SignerSet {
    /// The key `key` on each of `members` (token label, its signer for the key). Refuses an
    /// empty list and a token whose public key differs from the first's, naming both.
    pub fn new(
        key: &str,
        members: Vec<(String, Arc<dyn Signer>)>,
    ) -> Result<SignerSet, SignerSetError> {
        let Some((first, first_signer)) = members.first() else {
            return Err(SignerSetError::Empty { key: key.into() });
        };
        let spki = first_signer.public_key().clone();
        let want = spki_der(&spki);
        for (token, signer) in &members[1..] {
            if spki_der(signer.public_key()) != want
                || signer.algorithm() != first_signer.algorithm()
            {
                return Err(SignerSetError::KeyDiffers {
                    key: key.into(),
                    token: token.clone(),
                    first: first.clone(),
                });
            }
        }
        Ok(SignerSet {
            key: key.into(),
            algorithm: first_signer.algorithm(),
            spki,
            members: members
                .into_iter()
                .map(|(token, signer)| Member {
                    token,
                    signer,
                    in_flight: AtomicUsize::new(0),
                    signatures: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    down: Mutex::new(None),
                })
                .collect(),
        })
    }

    /// The key's label.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Each token's state, in configuration order.
    pub fn states(&self) -> Vec<TokenState> {
        self.members
            .iter()
            .map(|m| {
                let down = m.down();
                TokenState {
                    token: m.token.clone(),
                    up: down.is_none(),
                    reason: down.map(|(_, r)| r),
                    signatures: m.signatures.load(Ordering::Relaxed),
                    failures: m.failures.load(Ordering::Relaxed),
                    in_flight: m.in_flight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// True while at least one token is in the rotation.
    pub fn any_up(&self) -> bool {
        self.members.iter().any(|m| m.down().is_none())
    }

    /// Tries every token out of the rotation for at least `after` with a probe signature (a
    /// fixed digest, verified with the key); those that sign correctly come back. Returns the
    /// tokens brought back.
    pub fn probe(&self, after: Duration) -> Vec<String> {
        let digest = vec![0x5a; self.algorithm.field_len()];
        let mut back = Vec::new();
        for m in &self.members {
            let Some((since, _)) = m.down() else {
                continue;
            };
            if since.elapsed() < after {
                continue;
            }
            let ok = m
                .signer
                .sign_digest(&digest)
                .is_ok_and(|sig| verify_digest(&self.spki, &digest, &sig).is_ok());
            if ok {
                m.set_down(None);
                back.push(m.token.clone());
            } else {
                // Still failing: it waits a full interval again.
                m.set_down(m.down().map(|(_, r)| r));
            }
        }
        back
    }

    /// The least busy token in the rotation not yet tried for this signature.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, m)| !tried.contains(i) && m.down().is_none())
            .min_by_key(|(_, m)| m.in_flight.load(Ordering::Relaxed))
            .map(|(i, _)| i)
    }

    /// Signs on the least busy token; a token that fails leaves the rotation and the
    /// signature is made on the next, until one succeeds or none is left.
    fn sign_with(
        &self,
        sign: &SignOn<'_>,
        verifies: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, SignError> {
        let mut tried = Vec::new();
        let mut why = Vec::new();
        while let Some(i) = self.pick(&tried) {
            tried.push(i);
            let m = &self.members[i];
            m.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = {
                let _in_flight = InFlight(&m.in_flight);
                sign(m.signer.as_ref())
            };
            let reason = match result {
                Ok(sig) if verifies(&sig) => {
                    m.signatures.fetch_add(1, Ordering::Relaxed);
                    return Ok(sig);
                }
                Ok(_) => "its signature does not verify with the key".to_string(),
                Err(e) => e.to_string(),
            };
            m.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %self.key, token = %m.token, %reason, "a token left the rotation; the signature is retried on another");
            why.push(format!("{}: {reason}", m.token));
            m.set_down(Some(reason));
        }
        Err(SignError::Backend {
            key: self.key.clone(),
            source: if why.is_empty() {
                "no token is in the rotation (each failed; they are probed and come back when they sign correctly)".into()
            } else {
                format!("every token failed: {}", why.join("; ")).into()
            },
        })
    }
}

impl Signer for SignerSet {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_with(&|s| s.sign(message), &|sig| {
            verify_signature_fast(&self.spki, message, sig).is_ok()
        })
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_with(&|s| s.sign_digest(digest), &|sig| {
            verify_digest(&self.spki, digest, sig).is_ok()
        })
    }

    fn verifies_signatures(&self) -> bool {
        true
    }
}
