//! Step 5: a [`Linted`] TBSCertificate is signed in the HSM, the certificate is assembled around
//! exactly the linted bytes, and the signature is verified with the issuer's public key before
//! anything is stored: an HSM that returns a bad signature never yields a certificate.

use der::{Encode, Header, Tag};

use super::error::{ErrorCode, IssueError};
use super::s4_lint::Linted;
use super::IssuerCtx;
use crate::store::CertRecord;

/// A signed, verified certificate, not yet stored.
#[derive(Clone, Debug)]
pub struct Issued {
    /// What will be stored.
    pub record: CertRecord,
    /// Whether it replaces an active certificate.
    pub replace: bool,
}

/// `SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }` around the linted TBS bytes
/// (RFC 5280 §4.1), written by hand so that the signed bytes are the linted bytes, unre-encoded.
pub(crate) fn assemble(
    tbs_der: &[u8],
    alg_der: &[u8],
    signature: &[u8],
) -> Result<Vec<u8>, der::Error> {
    let bitstring = der::asn1::BitStringRef::from_bytes(signature)?.to_der()?;
    let len = der::Length::try_from(tbs_der.len() + alg_der.len() + bitstring.len())?;
    let mut out = Vec::with_capacity(usize::try_from(len)? + 4);
    Header::new(Tag::Sequence, len)?.encode_to_vec(&mut out)?;
    out.extend_from_slice(tbs_der);
    out.extend_from_slice(alg_der);
    out.extend_from_slice(&bitstring);
    Ok(out)
}

/// Signs `linted` with the issuer's key and verifies the result.
pub(super) fn sign(linted: Linted, issuer: &IssuerCtx) -> Result<Issued, IssueError> {
    let signature = issuer.signer.sign(linted.der()).map_err(|e| {
        tracing::error!(issuer = %issuer.id(), error = %e, "HSM signing failed");
        IssueError::new(
            ErrorCode::HsmUnavailable,
            format!("the HSM could not sign: {e}"),
        )
    })?;
    // A signer set has verified this signature against the same key already (the issuer's
    // key is checked equal to its certificate's when the engine starts): once is enough.
    let checked = if issuer.signer.verifies_signatures() {
        Ok(())
    } else {
        issuer.verify(linted.der(), &signature)
    };
    if let Err(e) = checked {
        tracing::error!(issuer = %issuer.id(), error = %e, "HSM returned a signature that does not verify");
        return Err(IssueError::new(
            ErrorCode::HsmUnavailable,
            "the HSM returned a signature that does not verify; nothing was issued",
        ));
    }
    let (tbs, tbs_der) = linted.into_parts();
    let der = assemble(&tbs_der, &issuer.signature_algorithm_der, &signature)
        .map_err(|e| IssueError::new(ErrorCode::Internal, e.to_string()))?;
    let req = &tbs.approved.request;
    Ok(Issued {
        record: CertRecord {
            serial: tbs.serial,
            issuer: issuer.kind,
            issuer_generation: issuer.generation,
            profile: req.profile.name().to_string(),
            subject_id: req.subject.key(),
            key_hash: req.key_hash,
            shard: tbs.shard,
            issued_at: tbs.issued_at,
            der,
            replaced_by: None,
            hw_type: req.profile.device_type_oid(),
        },
        replace: req.replace,
    })
}
