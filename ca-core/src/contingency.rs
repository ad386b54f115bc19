//! The root's contingency key (RFC 5934 §2.2.4, docs/lifecycle.md): a second key pair made
//! with every root, in the root token, whose public key the root certificate carries only
//! encrypted (extension id-pe-wrappedApexContinKey). The symmetric key that decrypts it is
//! derived from a secret held by a quorum of officers, apart from the root's own shares, and is
//! published only in the apex update that uses the contingency key, when the root key itself
//! can no longer be trusted (`ceremony apex-recover`).
//!
//! ```text
//! id-pe-wrappedApexContinKey OBJECT IDENTIFIER ::= { id-pe 20 }        -- 1.3.6.1.5.5.7.1.20
//! ApexContingencyKey ::= SEQUENCE {
//!   wrapAlgorithm       AlgorithmIdentifier,   -- id-aes256-wrap-pad (RFC 5649)
//!   wrappedContinPubKey OCTET STRING }         -- the SubjectPublicKeyInfo, wrapped
//! id-aa-TAMP-contingencyPublicKeyDecryptKey ::= { 2 16 840 1 101 2 1 5 63 }
//! ContingencyPublicKeyDecryptKey ::= PlaintextSymmetricKey      -- OCTET STRING
//! ```
//!
//! Written here rather than taken from a crate: no maintained crate models these two RFC 5934
//! types; the wrapping itself is the `aes-kw` crate's (AES Key Wrap with Padding, RFC 5649,
//! since an EC SubjectPublicKeyInfo is not a multiple of 8 bytes).

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::Extension;
use x509_cert::Certificate;

/// id-pe-wrappedApexContinKey (RFC 5934 §2.2.4).
pub const ID_PE_WRAPPED_APEX_CONTIN_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.20");
/// id-aa-TAMP-contingencyPublicKeyDecryptKey (RFC 5934 §4.5).
pub const ID_AA_CONTINGENCY_DECRYPT_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.2.1.5.63");
/// id-aes256-wrap-pad (RFC 5649 §3).
pub const ID_AES256_WRAP_PAD: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.48");

/// `ApexContingencyKey` (RFC 5934 Appendix A).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct ApexContingencyKey {
    /// The symmetric algorithm the public key is wrapped with.
    pub wrap_algorithm: AlgorithmIdentifierOwned,
    /// The wrapped SubjectPublicKeyInfo.
    pub wrapped_contin_pub_key: OctetString,
}

/// Why a contingency key could not be wrapped or recovered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContingencyError {
    /// The certificate carries no id-pe-wrappedApexContinKey extension.
    #[error(
        "the apex certificate {0} carries no wrapped contingency key (id-pe-wrappedApexContinKey)"
    )]
    NoExtension(String),
    /// The extension or the unwrapped key does not decode, or uses another algorithm.
    #[error("the wrapped contingency key: {0}")]
    Malformed(String),
    /// The key does not unwrap it: not the decryption key of this apex.
    #[error("the decryption key does not unwrap this apex's contingency key (RFC 5649 integrity check failed)")]
    WrongKey,
    /// Encoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
}

/// The id-pe-wrappedApexContinKey extension for `spki` wrapped under `key` (non-critical).
pub fn wrapped_key_extension(
    spki: &SubjectPublicKeyInfoOwned,
    key: &[u8; 32],
) -> Result<Extension, ContingencyError> {
    let kek = aes_kw::KekAes256::from(*key);
    let wrapped = kek
        .wrap_with_padding_vec(&spki.to_der()?)
        .map_err(|e| ContingencyError::Malformed(format!("wrapping: {e}")))?;
    let value = ApexContingencyKey {
        wrap_algorithm: AlgorithmIdentifierOwned {
            oid: ID_AES256_WRAP_PAD,
            parameters: None,
        },
        wrapped_contin_pub_key: OctetString::new(wrapped)?,
    };
    Ok(Extension {
        extn_id: ID_PE_WRAPPED_APEX_CONTIN_KEY,
        critical: false,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// The contingency public key of the apex `cert`, unwrapped with `key` (the
/// ContingencyPublicKeyDecryptKey an apex update carries).
pub fn unwrap_contingency_key(
    cert: &Certificate,
    key: &[u8],
) -> Result<SubjectPublicKeyInfoOwned, ContingencyError> {
    let ext = cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == ID_PE_WRAPPED_APEX_CONTIN_KEY)
        .ok_or_else(|| ContingencyError::NoExtension(cert.tbs_certificate.subject.to_string()))?;
    unwrap_extension_value(ext.extn_value.as_bytes(), key)
}

/// The SubjectPublicKeyInfo an `ApexContingencyKey` (DER) wraps, unwrapped with `key`.
fn unwrap_extension_value(
    der: &[u8],
    key: &[u8],
) -> Result<SubjectPublicKeyInfoOwned, ContingencyError> {
    let value = ApexContingencyKey::from_der(der)
        .map_err(|e| ContingencyError::Malformed(e.to_string()))?;
    if value.wrap_algorithm.oid != ID_AES256_WRAP_PAD || value.wrap_algorithm.parameters.is_some() {
        return Err(ContingencyError::Malformed(format!(
            "wrapAlgorithm {}, expected id-aes256-wrap-pad without parameters",
            value.wrap_algorithm.oid
        )));
    }
    let key: [u8; 32] = key.try_into().map_err(|_| {
        ContingencyError::Malformed(format!(
            "the decryption key is {} bytes, an AES-256 key is 32",
            key.len()
        ))
    })?;
    let kek = aes_kw::KekAes256::from(key);
    let spki_der = kek
        .unwrap_with_padding_vec(value.wrapped_contin_pub_key.as_bytes())
        .map_err(|_| ContingencyError::WrongKey)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der)
        .map_err(|e| ContingencyError::Malformed(format!("the unwrapped key: {e}")))?;
    if spki.to_der()? != spki_der {
        return Err(ContingencyError::Malformed(
            "the unwrapped key is not DER".into(),
        ));
    }
    Ok(spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_key() {
        let sk = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let spki = crate::spki_from_point(
            crate::KeyAlgorithm::EcP384,
            sk.public_key().to_sec1_bytes().as_ref(),
        )
        .unwrap();
        let key = [7u8; 32];
        let ext = wrapped_key_extension(&spki, &key).unwrap();
        assert!(!ext.critical);
        let value = ext.extn_value.as_bytes();
        assert_eq!(unwrap_extension_value(value, &key).unwrap(), spki);
        assert!(matches!(
            unwrap_extension_value(value, &[8u8; 32]),
            Err(ContingencyError::WrongKey)
        ));
        assert!(unwrap_extension_value(value, &[7u8; 16]).is_err());
    }
}
