//! An issuing CA ready to sign: its certificate bound to its key, and what every step reads from
//! them.

use std::sync::Arc;

use der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::certs::{check_key_matches, key_identifier, CertError};
use crate::signer::{KeyAlgorithm, Signer, VerifyError};
use crate::{CaKind, IssuerId};

/// An issuing CA ready to sign: its certificate, its key, and what the pipeline reads from them.
pub struct IssuerCtx {
    pub(crate) kind: CaKind,
    pub(crate) generation: u32,
    pub(crate) subject: Name,
    pub(crate) key_id: Vec<u8>,
    pub(crate) not_after_unix: u64,
    pub(crate) algorithm: KeyAlgorithm,
    pub(crate) signature_algorithm_der: Vec<u8>,
    pub(crate) signer: Arc<dyn Signer>,
    cert: Certificate,
}

impl std::fmt::Debug for IssuerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuerCtx({} CA, {:?})", self.id(), self.signer)
    }
}

impl IssuerCtx {
    /// Binds the certificate of a CA's first generation to its signer. Refuses a key that does
    /// not match the certificate.
    pub fn new(
        kind: CaKind,
        cert: Certificate,
        signer: Arc<dyn Signer>,
    ) -> Result<IssuerCtx, CertError> {
        IssuerCtx::of_generation(IssuerId::first(kind), cert, signer)
    }

    /// Binds the certificate of CA generation `id` to its signer. Refuses a key that does not
    /// match the certificate.
    pub fn of_generation(
        id: IssuerId,
        cert: Certificate,
        signer: Arc<dyn Signer>,
    ) -> Result<IssuerCtx, CertError> {
        let kind = id.kind;
        check_key_matches(signer.as_ref(), &cert, &id.name())?;
        let spki = &cert.tbs_certificate.subject_public_key_info;
        // The AKI of what we issue must equal the CA's own SKI (RFC 5280 §4.2.1.1).
        let key_id = cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
            .and_then(|e| der::asn1::OctetString::from_der(e.extn_value.as_bytes()).ok())
            .map(|o| o.as_bytes().to_vec())
            .unwrap_or_else(|| key_identifier(spki).to_vec());
        let algorithm = signer.algorithm();
        Ok(IssuerCtx {
            kind,
            generation: id.generation,
            subject: cert.tbs_certificate.subject.clone(),
            key_id,
            not_after_unix: cert
                .tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs(),
            algorithm,
            signature_algorithm_der: algorithm.signature_algorithm().to_der()?,
            signer,
            cert,
        })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// Its signer (the HSM key).
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// Which CA.
    pub fn kind(&self) -> CaKind {
        self.kind
    }

    /// Which generation of which CA.
    pub fn id(&self) -> IssuerId {
        IssuerId::new(self.kind, self.generation)
    }

    /// Verifies a DER signature over `message` with the issuer's key.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        crate::signer::verify_signature_fast(
            &self.cert.tbs_certificate.subject_public_key_info,
            message,
            signature,
        )
    }
}
