//! The records the store keeps and the outcomes its writes report.

use const_oid::ObjectIdentifier;
use serde::{Deserialize, Serialize};

use crate::model::Revocation;
use crate::CaKind;

/// One issued certificate, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    /// Serial number bytes (positive, minimal DER content).
    pub serial: Vec<u8>,
    /// The CA that issued it.
    pub issuer: CaKind,
    /// Profile name; with `subject_id` it names the usage.
    pub profile: String,
    /// Device ID or entity ID, normalised EUI-64 text (`tls:<name>` for TLS certificates).
    pub subject_id: String,
    /// SHA-256 of the subject's SubjectPublicKeyInfo DER.
    pub key_hash: [u8; 32],
    /// The CRL shard the certificate is bound to.
    pub shard: u32,
    /// Issuance time, Unix seconds.
    pub issued_at: i64,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial of the certificate that replaced this one (`replace: true`).
    pub replaced_by: Option<Vec<u8>>,
    /// Meter certificates: the device type (hwType) its hardwareModuleName names, kept here so
    /// that trust-anchor updates need not parse the certificate again.
    #[serde(with = "oid_opt")]
    pub hw_type: Option<ObjectIdentifier>,
    /// The generation of the issuer that signed it (1 until the CA is first renewed): which
    /// key signs the CRL that lists it.
    pub issuer_generation: u32,
}

impl CertRecord {
    /// The CA generation that issued it.
    pub fn issuer_id(&self) -> crate::IssuerId {
        crate::IssuerId::new(self.issuer, self.issuer_generation)
    }

    /// Serial as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

mod oid_opt {
    use const_oid::ObjectIdentifier;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<ObjectIdentifier>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.map(|o| o.to_string()).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ObjectIdentifier>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| ObjectIdentifier::new(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// What committing one issued certificate did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Stored.
    Stored,
    /// The same subject, usage and key already had an active certificate (a concurrent request
    /// got there first): this one is not stored, the existing one is the answer.
    Existing(Box<CertRecord>),
    /// An active certificate with another key exists and the request did not say `replace`.
    Conflict(Box<CertRecord>),
    /// The key is bound to another subject or usage, whose active certificate this is.
    KeyReused(Box<CertRecord>),
    /// A certificate for the key was revoked for keyCompromise (this one).
    KeyCompromised(Box<CertRecord>),
}

/// The outcome of an [`Op::CommitIssued`](super::Op::CommitIssued).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// False when an all-or-nothing commit stored nothing (then `Stored` items mean "would
    /// have been stored").
    pub stored: bool,
    /// One per item, in order.
    pub items: Vec<Commit>,
}

/// What revoking one serial did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now(Box<CertRecord>),
    /// It had been revoked before; that revocation stands.
    Already(Box<CertRecord>, Revocation),
    /// No certificate has that serial.
    Unknown(Vec<u8>),
}

/// The last trust-anchor update made for a meter: its sequence number and the operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateMark {
    /// The TAMP sequence number.
    pub seq: u64,
    /// The operation that produced it.
    pub op: String,
}

/// A meter's assignment change, applied only if the meter is still where the caller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterMove {
    /// The meter, normalised EUI-64 text.
    pub device: String,
    /// The supplier the caller saw serving it (None: unassigned).
    pub from: Option<String>,
    /// The supplier serving it after the move (may equal `from`: a key change only).
    pub to: String,
    /// The update delivered for this move, recorded with it.
    pub update: Option<UpdateMark>,
}

/// What an [`Op::MoveMeters`](super::Op::MoveMeters) did with one move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Applied.
    Applied,
    /// The meter is no longer where the caller saw it: nothing changed. Carries the current one.
    Stale(Option<String>),
    /// The meter's last update already came from this operation: nothing changed.
    AlreadyDone,
}

/// The audit record a write committed: its sequence number and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// The record's `seq`.
    pub seq: u64,
    /// The record's `hash` (hex).
    pub hash: String,
}

/// Where an API batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BatchState {
    /// Claimed: its request ID is bound to its body; issuance under way (or interrupted: a
    /// retry with the same body completes it).
    Pending,
    /// Answered; the results are recorded.
    #[default]
    Complete,
}

/// One item of a recorded batch: the certificate's serial, or the refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchItem {
    /// Issued now or before.
    Issued {
        /// Serial, hex (the certificate itself is in the store).
        serial: String,
        /// Issued before this batch.
        existing: bool,
    },
    /// Refused.
    Rejected {
        /// `{"code": ..., "detail": ...}`.
        error: serde_json::Value,
    },
}

/// An API batch as recorded: the request ID bound to its body, and its answer once complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// SHA-256 of the request body, hex.
    pub body_sha256: String,
    /// Where it stands (records written before claims existed are complete).
    #[serde(default)]
    pub state: BatchState,
    /// One per item, in request order (empty while pending).
    #[serde(default)]
    pub results: Vec<BatchItem>,
}

/// What an [`Op::ClaimBatch`](super::Op::ClaimBatch) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The request ID was free: it is now bound to this body.
    New,
    /// Already claimed with the same body and not complete (in flight elsewhere, or
    /// interrupted): issuing again is safe, every certificate already stored comes back as
    /// existing.
    Pending,
    /// Already answered with the same body: the recorded answer.
    Complete(BatchRecord),
    /// Bound to another body: refused, nothing issued.
    Conflict,
}
