//! What the ca-core integration tests share: a software key behind the `Signer` seam.
#![allow(dead_code)]

use std::sync::Arc;

use ca_core::{
    build_ca_certificate, build_self_signed_root, spki_from_point, CaCertSpec, KeyAlgorithm,
    SignError, Signer,
};
use p256::ecdsa::signature::Signer as _;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;

/// A software key behind the Signer seam, for tests only. `corrupt` makes it return a
/// signature that does not verify (a bit flipped), as a faulty HSM might.
#[derive(Debug)]
pub(crate) struct SoftSigner {
    pub p256: Option<p256::ecdsa::SigningKey>,
    pub p384: Option<p384::ecdsa::SigningKey>,
    pub spki: SubjectPublicKeyInfoOwned,
    pub corrupt: bool,
}

impl SoftSigner {
    pub(crate) fn p256() -> SoftSigner {
        let k = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = k.verifying_key().to_encoded_point(false);
        SoftSigner {
            spki: spki_from_point(KeyAlgorithm::EcP256, point.as_bytes()).unwrap(),
            p256: Some(k),
            p384: None,
            corrupt: false,
        }
    }

    pub(crate) fn p384() -> SoftSigner {
        let k = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = k.verifying_key().to_encoded_point(false);
        SoftSigner {
            spki: spki_from_point(KeyAlgorithm::EcP384, point.as_bytes()).unwrap(),
            p256: None,
            p384: Some(k),
            corrupt: false,
        }
    }
}

impl Signer for SoftSigner {
    fn algorithm(&self) -> KeyAlgorithm {
        if self.p256.is_some() {
            KeyAlgorithm::EcP256
        } else {
            KeyAlgorithm::EcP384
        }
    }
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(self.finish(match (&self.p256, &self.p384) {
            (Some(k), _) => p256_der(k.sign(message)),
            (_, Some(k)) => p384_der(k.sign(message)),
            _ => unreachable!("a SoftSigner holds one key"),
        }))
    }
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        use ecdsa::signature::hazmat::PrehashSigner;
        Ok(self.finish(match (&self.p256, &self.p384) {
            (Some(k), _) => p256_der(k.sign_prehash(digest).unwrap()),
            (_, Some(k)) => p384_der(k.sign_prehash(digest).unwrap()),
            _ => unreachable!("a SoftSigner holds one key"),
        }))
    }
}

impl SoftSigner {
    /// The DER signature, a bit flipped when the signer is told to corrupt.
    fn finish(&self, mut sig: Vec<u8>) -> Vec<u8> {
        if self.corrupt {
            let n = sig.len();
            sig[n - 3] ^= 0x01;
        }
        sig
    }
}

fn p256_der(s: p256::ecdsa::Signature) -> Vec<u8> {
    s.to_der().as_bytes().to_vec()
}

fn p384_der(s: p384::ecdsa::Signature) -> Vec<u8> {
    s.to_der().as_bytes().to_vec()
}

/// A test root (P-384) and a CA (P-256) it certifies, both software keys.
pub(crate) struct TestCa {
    pub root_cert: Certificate,
    pub root: Arc<SoftSigner>,
    pub cert: Certificate,
    pub key: Arc<SoftSigner>,
}

/// A root and a CA named `subject` under it; `corrupt`: the CA's signatures do not verify.
pub(crate) fn test_ca(subject: &str, corrupt: bool) -> TestCa {
    let root = SoftSigner::p384();
    let root_cert = build_self_signed_root(
        &root,
        &CaCertSpec {
            subject: "CN=Test Root".into(),
            validity: policies::Validity::Days(3650),
            path_len: 1,
            policies: Vec::new(),
            crl_url: None,
            extra_extensions: Vec::new(),
        },
    )
    .unwrap();
    let mut ca = SoftSigner::p256();
    let cert = build_ca_certificate(
        &root,
        &root_cert,
        &ca.spki,
        &CaCertSpec {
            subject: subject.into(),
            validity: policies::Validity::Days(1000),
            path_len: 0,
            policies: Vec::new(),
            crl_url: None,
            extra_extensions: Vec::new(),
        },
    )
    .unwrap();
    ca.corrupt = corrupt;
    TestCa {
        root_cert,
        root: Arc::new(root),
        cert,
        key: Arc::new(ca),
    }
}
