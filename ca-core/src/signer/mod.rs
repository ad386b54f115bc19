//! The signer seam: the one trait through which every certificate, CRL, audit head and
//! trust-anchor update is signed. It carries no backend type, so `ca-core` never sees PKCS#11
//! (`hsm-bridge` implements it), and tests can plug in any implementation.

mod set;

pub use set::{SignerSet, SignerSetError, TokenState};

use der::{asn1::ObjectIdentifier, Decode, Encode};
use sha2::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// OID of id-ecPublicKey (RFC 5480).
pub(crate) const ID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 / prime256v1 (RFC 5480).
pub(crate) const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1 (RFC 5480).
pub(crate) const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// ecdsa-with-SHA256 (RFC 5758).
pub(crate) const ECDSA_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA384 (RFC 5758).
pub(crate) const ECDSA_WITH_SHA384: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// The key types meterpki signs with: ECDSA on P-256 (issuing CAs) and P-384 (the root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256.
    EcP256,
    /// ECDSA over NIST P-384 with SHA-384.
    EcP384,
}

impl KeyAlgorithm {
    /// The curve OID (namedCurve in the SPKI parameters).
    pub fn curve_oid(self) -> ObjectIdentifier {
        match self {
            KeyAlgorithm::EcP256 => SECP256R1,
            KeyAlgorithm::EcP384 => SECP384R1,
        }
    }

    /// Length in bytes of one coordinate / of r and s.
    pub fn field_len(self) -> usize {
        match self {
            KeyAlgorithm::EcP256 => 32,
            KeyAlgorithm::EcP384 => 48,
        }
    }

    /// The signatureAlgorithm this key produces (RFC 5758 §3.2: parameters absent).
    pub fn signature_algorithm(self) -> AlgorithmIdentifierOwned {
        let oid = match self {
            KeyAlgorithm::EcP256 => ECDSA_WITH_SHA256,
            KeyAlgorithm::EcP384 => ECDSA_WITH_SHA384,
        };
        AlgorithmIdentifierOwned {
            oid,
            parameters: None,
        }
    }

    /// The digest the signature covers, computed on the host (the HSM signs with raw `CKM_ECDSA`).
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            KeyAlgorithm::EcP256 => sha2::Sha256::digest(message).to_vec(),
            KeyAlgorithm::EcP384 => sha2::Sha384::digest(message).to_vec(),
        }
    }

    /// A fresh hasher of the digest the signature covers, for a message fed in pieces.
    pub fn hasher(self) -> Box<dyn sha2::digest::DynDigest + Send> {
        match self {
            KeyAlgorithm::EcP256 => Box::new(sha2::Sha256::default()),
            KeyAlgorithm::EcP384 => Box::new(sha2::Sha384::default()),
        }
    }

    /// Short name used in transcripts and status output.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "EC P-256",
            KeyAlgorithm::EcP384 => "EC P-384",
        }
    }

    /// Which algorithm a SubjectPublicKeyInfo carries, if it is one of ours.
    pub fn of_spki(spki: &SubjectPublicKeyInfoOwned) -> Option<KeyAlgorithm> {
        if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
            return None;
        }
        let curve: ObjectIdentifier = spki.algorithm.parameters.as_ref()?.decode_as().ok()?;
        match curve {
            c if c == SECP256R1 => Some(KeyAlgorithm::EcP256),
            c if c == SECP384R1 => Some(KeyAlgorithm::EcP384),
            _ => None,
        }
    }
}

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The backend (HSM) failed; the source says which call and why.
    #[error("signing key {key}: {source}")]
    Backend {
        /// The key's label.
        key: String,
        /// The backend's error, kept whole.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend returned something that is not a signature of the expected shape.
    #[error("signing key {key}: the HSM returned a malformed signature ({detail})")]
    Malformed {
        /// The key's label.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

/// Something that signs with a private key it never reveals.
///
/// `sign` takes the whole message (for example a DER TBSCertificate), hashes it with the
/// algorithm's digest and returns a DER `ECDSA-Sig-Value` (RFC 3279 §2.2.3).
pub trait Signer: std::fmt::Debug + Send + Sync {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public half, as SubjectPublicKeyInfo.
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned;
    /// Signs `message`; returns a DER ECDSA-Sig-Value.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;
    /// Signs a digest the caller computed with the algorithm's hash ([`KeyAlgorithm::hasher`]);
    /// returns a DER ECDSA-Sig-Value. For messages too large to hold whole: a CRL of a million
    /// entries is hashed as it is written to its file, and only the digest is signed.
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, SignError>;
    /// True when every signature this signer returns has already been verified in software
    /// against [`Signer::public_key`] (a [`SignerSet`] checks each, to retry a bad one on
    /// another token): the issuance pipeline then does not verify it a second time.
    fn verifies_signatures(&self) -> bool {
        false
    }
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The public key is not a P-256 or P-384 EC key, or is not a valid point.
    #[error("unsupported or invalid public key: {0}")]
    BadKey(String),
    /// The signature is not a DER ECDSA-Sig-Value.
    #[error("malformed signature: {0}")]
    BadEncoding(String),
    /// The signature is well formed but does not match.
    #[error("signature does not verify")]
    Mismatch,
}

/// Verifies a DER ECDSA signature over `message` with the key in `spki`, using the RustCrypto
/// `p256`/`p384` implementations (independent of the HSM that made it).
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    message: &[u8],
    signature_der: &[u8],
) -> Result<(), VerifyError> {
    verify_rustcrypto(spki, Signed::Message(message), signature_der)
}

/// Verifies a DER ECDSA signature over a digest computed with the key's algorithm's hash (see
/// [`Signer::sign_digest`]), with the RustCrypto `p256`/`p384` implementations. `ring` verifies
/// only whole messages, so a message hashed in pieces is checked here.
pub(crate) fn verify_digest(
    spki: &SubjectPublicKeyInfoOwned,
    digest: &[u8],
    signature_der: &[u8],
) -> Result<(), VerifyError> {
    verify_rustcrypto(spki, Signed::Digest(digest), signature_der)
}

/// What a signature covers: the message, or its digest.
#[derive(Clone, Copy)]
enum Signed<'a> {
    Message(&'a [u8]),
    Digest(&'a [u8]),
}

fn verify_rustcrypto(
    spki: &SubjectPublicKeyInfoOwned,
    signed: Signed<'_>,
    signature_der: &[u8],
) -> Result<(), VerifyError> {
    use ecdsa::signature::{hazmat::PrehashVerifier, Verifier};
    let alg = KeyAlgorithm::of_spki(spki)
        .ok_or_else(|| VerifyError::BadKey("not an EC P-256 or P-384 key".into()))?;
    let point = spki.subject_public_key.raw_bytes();
    let bad_key = |e: ecdsa::Error| VerifyError::BadKey(e.to_string());
    let bad_sig = |e: ecdsa::Error| VerifyError::BadEncoding(e.to_string());
    let verified = match alg {
        KeyAlgorithm::EcP256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad_key)?;
            let sig = p256::ecdsa::Signature::from_der(signature_der).map_err(bad_sig)?;
            match signed {
                Signed::Message(m) => key.verify(m, &sig),
                Signed::Digest(d) => key.verify_prehash(d, &sig),
            }
        }
        KeyAlgorithm::EcP384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad_key)?;
            let sig = p384::ecdsa::Signature::from_der(signature_der).map_err(bad_sig)?;
            match signed {
                Signed::Message(m) => key.verify(m, &sig),
                Signed::Digest(d) => key.verify_prehash(d, &sig),
            }
        }
    };
    verified.map_err(|_| VerifyError::Mismatch)
}

/// Verifies a DER ECDSA signature like [`verify_signature`], with `ring`'s constant-time
/// assembly implementation: several times faster than the RustCrypto crates, so it is the one
/// the issuance hot path uses (proof of possession, the check after every HSM signature).
/// Tests cross-check its results with [`verify_signature`] and openssl.
pub fn verify_signature_fast(
    spki: &SubjectPublicKeyInfoOwned,
    message: &[u8],
    signature_der: &[u8],
) -> Result<(), VerifyError> {
    let alg: &'static ring::signature::EcdsaVerificationAlgorithm =
        match KeyAlgorithm::of_spki(spki) {
            Some(KeyAlgorithm::EcP256) => &ring::signature::ECDSA_P256_SHA256_ASN1,
            Some(KeyAlgorithm::EcP384) => &ring::signature::ECDSA_P384_SHA384_ASN1,
            None => return Err(VerifyError::BadKey("not an EC P-256 or P-384 key".into())),
        };
    ring::signature::UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes())
        .verify(message, signature_der)
        .map_err(|_| VerifyError::Mismatch)
}

/// Builds the SubjectPublicKeyInfo for an uncompressed SEC1 point on `alg`'s curve.
pub fn spki_from_point(
    alg: KeyAlgorithm,
    point: &[u8],
) -> Result<SubjectPublicKeyInfoOwned, der::Error> {
    let params = der::Any::encode_from(&alg.curve_oid())?;
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some(params),
        },
        subject_public_key: der::asn1::BitString::from_bytes(point)?,
    })
}

/// Round-trips an SPKI through DER so two keys can be compared byte for byte.
pub(crate) fn spki_der(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    spki.to_der().unwrap_or_default()
}

#[allow(dead_code)]
pub(crate) fn spki_from_der(der: &[u8]) -> Result<SubjectPublicKeyInfoOwned, der::Error> {
    SubjectPublicKeyInfoOwned::from_der(der)
}
