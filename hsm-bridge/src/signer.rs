//! `ca_core::Signer` over a key in a PKCS#11 token.

use std::sync::Arc;

use ca_core::{KeyAlgorithm, SignError, Signer};
use spki::SubjectPublicKeyInfoOwned;

use ca_core::hsm::KeyInfo;

use crate::pool::Token;

/// Signs with a private key that never leaves its token.
#[derive(Clone)]
pub struct HsmSigner {
    token: Arc<Token>,
    key: KeyInfo,
}

impl std::fmt::Debug for HsmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on token {}", self.key.label, self.token.label())
    }
}

impl HsmSigner {
    pub(crate) fn new(token: Arc<Token>, key: KeyInfo) -> HsmSigner {
        HsmSigner { token, key }
    }

    /// The key pair this signer uses.
    pub fn key(&self) -> &KeyInfo {
        &self.key
    }

    /// The token the key lives in.
    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    /// Signs a digest the caller computed; returns raw r||s as the token gives it.
    pub fn sign_digest_raw(&self, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        self.token
            .sign_digest(&self.key.label, digest)
            .map_err(|e| SignError::Backend {
                key: self.key.label.clone(),
                source: Box::new(e),
            })
    }
}

impl HsmSigner {
    /// Signs from async code without blocking the runtime: the PKCS#11 call runs on tokio's
    /// blocking pool, and the session pool bounds how many run at once (one per session).
    pub async fn sign_async(&self, message: Vec<u8>) -> Result<Vec<u8>, SignError> {
        let signer = self.clone();
        tokio::task::spawn_blocking(move || signer.sign(&message))
            .await
            .map_err(|e| SignError::Backend {
                key: self.key.label.clone(),
                source: Box::new(e),
            })?
    }
}

impl Signer for HsmSigner {
    fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.key.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_digest(&self.key.algorithm.digest(message))
    }

    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        let raw = self.sign_digest_raw(digest)?;
        raw_to_der(self.key.algorithm, &raw).map_err(|detail| SignError::Malformed {
            key: self.key.label.clone(),
            detail,
        })
    }
}

/// PKCS#11 `CKM_ECDSA` returns r||s, each the field size; X.509 wants a DER ECDSA-Sig-Value.
fn raw_to_der(alg: KeyAlgorithm, raw: &[u8]) -> Result<Vec<u8>, String> {
    let n = alg.field_len();
    if raw.len() != 2 * n {
        return Err(format!("{} bytes, expected {}", raw.len(), 2 * n));
    }
    match alg {
        KeyAlgorithm::EcP256 => p256::ecdsa::Signature::from_slice(raw)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|e| e.to_string()),
        KeyAlgorithm::EcP384 => p384::ecdsa::Signature::from_slice(raw)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|e| e.to_string()),
    }
}
