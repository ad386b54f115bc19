//! [`TampError`], and the two decoding helpers that turn a `der` error or non-canonical input
//! into one.

use der::asn1::ObjectIdentifier;
use der::Encode;

use crate::certs::CertError;
use crate::signer::{SignError, VerifyError};

/// Why a TAMP update could not be built, signed or verified. Each variant names the check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TampError {
    /// A structure does not decode, is not DER, or breaks a constraint of its ASN.1.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A content type is not the expected one.
    #[error("{what} is {found}, expected {expected}")]
    ContentType {
        /// Which field.
        what: &'static str,
        /// What it says.
        found: ObjectIdentifier,
        /// What it should say.
        expected: ObjectIdentifier,
    },
    /// A digest or signature algorithm, or the signer's key type, is not the one meterpki uses.
    #[error("{what} is {found}, expected {expected}")]
    Algorithm {
        /// Which field.
        what: &'static str,
        /// What it says.
        found: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The messageDigest signed attribute is not the SHA-256 of the content.
    #[error("the messageDigest signed attribute is not the SHA-256 of the TAMPUpdate")]
    MessageDigest,
    /// The SignerInfo signature does not verify with the signer certificate's key.
    #[error("the SignerInfo signature does not verify with the signer certificate's key: {0}")]
    Signature(#[source] VerifyError),
    /// No certificate in the message carries the SignerInfo's subjectKeyIdentifier.
    #[error("the signer certificate (subjectKeyIdentifier {key_id}) is not in the message")]
    SignerNotFound {
        /// The subjectKeyIdentifier named by the SignerInfo, hex.
        key_id: String,
    },
    /// No acceptable path from the signer certificate to the root.
    #[error("certification path: {reason}")]
    Chain {
        /// Which certificate and check.
        reason: String,
    },
    /// The signer certificate lacks the required certificate policy.
    #[error("the signer certificate {subject} does not carry the certificate policy {policy}")]
    SignerPolicy {
        /// The signer's subject.
        subject: String,
        /// The policy required.
        policy: ObjectIdentifier,
    },
    /// The signer certificate is not an end entity allowed to sign (keyUsage, basicConstraints).
    #[error("the signer certificate {subject}: {reason}")]
    SignerKeyUsage {
        /// The signer's subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A certificate of the path is not valid at the verification time.
    #[error("the certificate {subject} is not valid at {now}: {reason}")]
    Expired {
        /// Its subject.
        subject: String,
        /// The verification time.
        now: String,
        /// Not yet valid or expired, and when.
        reason: String,
    },
    /// The update is not for this meter, or targets in a way meterpki does not handle.
    #[error("target: {reason}")]
    Target {
        /// Why.
        reason: String,
    },
    /// The sequence number does not advance (RFC 5934 §6: replay protection).
    #[error("sequence number {seq} is not greater than the last accepted {after}")]
    SeqNotGreater {
        /// The message's.
        seq: u64,
        /// The last accepted.
        after: u64,
    },
    /// A sequence number above what SeqNumber allows.
    #[error("sequence number {seq} is above 9223372036854775807 (RFC 5934 §4.1: SeqNumber)")]
    SeqOutOfRange {
        /// The number given.
        seq: u64,
    },
    /// An update that neither adds nor removes anything.
    #[error("a TAMP update needs at least one trust anchor to add or remove (RFC 5934 §4.3: updates SIZE (1..MAX))")]
    EmptyUpdates,
    /// A valid construct meterpki does not handle.
    #[error("{what} is not supported")]
    Unsupported {
        /// What.
        what: String,
    },
    /// The signing key is not the one in the signer certificate.
    #[error("TAMP signer: {0}")]
    KeyMismatch(#[source] CertError),
    /// The signer failed.
    #[error("signing the TAMP update: {0}")]
    Sign(#[from] SignError),
    /// The signer returned a signature that does not verify: nothing was emitted.
    #[error("the signature returned by the signer does not verify with the signer certificate's key, nothing was emitted: {source}")]
    SignerSignature {
        /// Why it failed.
        #[source]
        source: VerifyError,
    },
    /// [`UpdateSigner::assemble`](super::UpdateSigner::assemble) was given bytes that are not
    /// the signed attributes of the content.
    #[error("the to-be-signed bytes are not the signed attributes of this TAMPUpdate")]
    NotOurSignedAttributes,
    /// Encoding failed (building, never decoding).
    #[error("DER encoding: {0}")]
    Der(#[from] der::Error),
}

pub(super) fn malformed(what: &'static str) -> impl Fn(der::Error) -> TampError {
    move |e| TampError::Malformed {
        what,
        reason: e.to_string(),
    }
}

/// Refuses `input` unless it is exactly the DER of the value decoded from it.
pub(super) fn canonical<T: Encode>(
    value: &T,
    input: &[u8],
    what: &'static str,
) -> Result<(), TampError> {
    let again = value.to_der().map_err(malformed(what))?;
    if again != input {
        return Err(TampError::Malformed {
            what,
            reason: "not DER: re-encoding the decoded value gives different bytes (unsorted SET \
                     OF, or an unknown field skipped before an OPTIONAL one)"
                .into(),
        });
    }
    Ok(())
}
