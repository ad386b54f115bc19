//! Transactions: the typed operations a write is made of, what each did, and how the audit
//! record joins the write.

use super::records::{
    AuditHead, BatchRecord, CertRecord, Claim, Committed, MeterMove, MoveOutcome, Revoked,
};
use crate::audit::AuditError;
use crate::model::{Account, OpRecord, Revocation, Supplier};

/// One operation of a [`Txn`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Op {
    /// Stores issued certificates (each with its `replace` flag), re-checking each against the
    /// active index: the same key again is [`Commit::Existing`](super::Commit::Existing),
    /// another key without `replace` a [`Commit::Conflict`](super::Commit::Conflict), a key
    /// bound to another subject or usage a [`Commit::KeyReused`](super::Commit::KeyReused), and a
    /// replaced certificate is revoked as superseded in the same write. A serial ever used is
    /// refused. With `all_or_nothing`, nothing of the transaction is written unless every item
    /// is stored.
    CommitIssued {
        /// The certificates, each with its `replace` flag.
        items: Vec<(CertRecord, bool)>,
        /// Store all or none.
        all_or_nothing: bool,
    },
    /// Records certificates that bind no subject to a key: the root's other certificates for a
    /// CA key it already certified (an issuing CA re-certified under a new root, the rollover's
    /// link certificates), kept so that the ARL can list and revoke them. They never become a
    /// subject's active certificate and bind no key. A serial ever used is refused.
    RecordCertificates(Vec<CertRecord>),
    /// Revokes certificates. Revoking twice is harmless (the first revocation stands and is
    /// reported); a revoked certificate is no longer the active one of its device and usage.
    Revoke {
        /// Serials.
        serials: Vec<Vec<u8>>,
        /// Reason and times.
        revocation: Revocation,
    },
    /// Creates an account; refused if the name exists or its certificate is bound to another.
    InsertAccount(Account),
    /// Replaces an existing account (refused if there is none).
    UpdateAccount(Account),
    /// Registers a supplier; refused if the ID exists.
    InsertSupplier(Supplier),
    /// Replaces a registered supplier (refused if there is none).
    UpdateSupplier(Supplier),
    /// Moves meters, each only if it is still served by its `from` and has not had this
    /// operation's update yet (a compare-and-swap per meter).
    MoveMeters(Vec<MeterMove>),
    /// Writes an operation's journal.
    PutOperation(OpRecord),
    /// Binds an API batch's request ID to its body (see [`Claim`]). Written only when new.
    ClaimBatch {
        /// Account name.
        account: String,
        /// The client's request ID.
        request_id: String,
        /// SHA-256 of the body, hex.
        body_sha256: String,
    },
    /// Records a batch's answer; refused unless the request ID is claimed with the same body.
    /// A batch answered already keeps its first answer.
    CompleteBatch {
        /// Account name.
        account: String,
        /// The client's request ID.
        request_id: String,
        /// The answer (state complete).
        record: BatchRecord,
    },
    /// Moves a counter forward to `to` (a CRL's number); refused unless `to` is greater than
    /// its current value.
    AdvanceCounter {
        /// Counter name.
        name: String,
        /// The new value.
        to: u64,
    },
    /// Sets a setting the first time; refused if it holds another value (`crl.shards`).
    BindSetting {
        /// Setting name.
        name: String,
        /// Its value.
        value: u64,
    },
    /// Sets a text setting the first time; refused if it holds another value
    /// (`crl.base_url`).
    BindText {
        /// Setting name.
        name: String,
        /// Its value.
        value: String,
    },
}

/// What one operation did, in the order of the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpOutcome {
    /// For [`Op::CommitIssued`].
    Committed(Committed),
    /// For [`Op::Revoke`], one per serial.
    Revoked(Vec<Revoked>),
    /// For [`Op::MoveMeters`], one per move.
    Moved(Vec<MoveOutcome>),
    /// For [`Op::ClaimBatch`].
    Claimed(Claim),
    /// Any other operation: done.
    Done,
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// False when a conditional operation held the whole transaction back (an all-or-nothing
    /// commit with an item not stored): none of its operations was written. A record the caller stages anyway (its audit entry is made from
    /// this outcome) is still committed with the audit head.
    pub written: bool,
    /// One per operation, in order.
    pub outcomes: Vec<OpOutcome>,
}

impl Applied {
    /// The outcome of the operation at `index` as a commit, if it is one.
    pub fn committed(&self, index: usize) -> Option<&Committed> {
        match self.outcomes.get(index) {
            Some(OpOutcome::Committed(c)) => Some(c),
            _ => None,
        }
    }

    /// The outcome of the operation at `index` as revocations, if it is one.
    pub fn revoked(&self, index: usize) -> Option<&[Revoked]> {
        match self.outcomes.get(index) {
            Some(OpOutcome::Revoked(r)) => Some(r),
            _ => None,
        }
    }

    /// The outcome of the operation at `index` as meter moves, if it is one.
    pub fn moved(&self, index: usize) -> Option<&[MoveOutcome]> {
        match self.outcomes.get(index) {
            Some(OpOutcome::Moved(m)) => Some(m),
            _ => None,
        }
    }

    /// The outcome of the operation at `index` as a claim, if it is one.
    pub fn claim(&self, index: usize) -> Option<&Claim> {
        match self.outcomes.get(index) {
            Some(OpOutcome::Claimed(c)) => Some(c),
            _ => None,
        }
    }
}

/// Operations applied together or not at all, by [`Store::apply`](super::Store::apply).
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub(crate) ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction (with an audit stage, it commits only the audit record).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds an operation.
    pub fn with(mut self, op: Op) -> Txn {
        self.ops.push(op);
        self
    }

    /// Adds an operation in place.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// The operations.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The audit log's side of a write (implemented by [`AuditLog`](crate::AuditLog)'s stages).
///
/// The store calls [`AuditStage::stage`] once, under its write lock, after computing the
/// outcomes and before writing anything. The stage writes the record durably and returns its
/// head, which the store writes with the change: the store's head is the commit point, so a
/// record that follows it (a crash came between the two) was never committed and the log
/// removes it at its next write. If staging fails, the store writes nothing; if the store's own
/// write fails after staging, it calls [`AuditStage::rollback`].
pub trait AuditStage {
    /// Writes the record for `applied` (or returns `None` when there is nothing to record),
    /// chained to `store_head`, the last committed record.
    fn stage(
        &mut self,
        store_head: Option<&AuditHead>,
        applied: &Applied,
    ) -> Result<Option<AuditHead>, AuditError>;
    /// The store's write failed after [`AuditStage::stage`]: withdraw the record.
    fn rollback(&mut self);
    /// For a log kept in the store itself: the staged record (its sequence number and JSON
    /// line), which the store writes in the same transaction as the change and the head. A
    /// log in a file of its own has written it already and returns `None`.
    fn record_for_store(&mut self) -> Option<(u64, Vec<u8>)> {
        None
    }
}
