//! Step 6: what was signed is stored in one transaction with its audit record, and only then
//! answered. The store re-checks every certificate against the active index (a concurrent
//! request may have stored one for the same device and usage meanwhile).

use super::error::{ErrorCode, IssueError};
use super::s5_sign::Issued;
use super::Outcome;
use crate::audit::{AuditEntry, AuditLog};
use crate::store::{Applied, ApplyError, CertRecord, Commit, Op, Txn};

/// Makes the audit record of a commit from its results (called once per commit).
pub type Describe<'a> = &'a (dyn Fn(&[Result<Outcome, IssueError>]) -> Option<AuditEntry> + Sync);

/// One item after signing: signed and not yet stored, or found already issued.
pub(crate) enum SignedOrExisting {
    Signed(Box<Issued>),
    Existing(Box<CertRecord>),
}

/// Signed (or found already issued) but not yet stored: answer nothing from it before it is
/// committed.
pub struct SignedBatch(pub(crate) Vec<Result<SignedOrExisting, IssueError>>);

impl SignedBatch {
    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each item as it stands before the store: the certificate signed (`false`) or found
    /// already issued (`true`), or the refusal.
    pub fn items(&self) -> impl Iterator<Item = Result<(&CertRecord, bool), &IssueError>> {
        self.0.iter().map(|s| match s {
            Ok(SignedOrExisting::Signed(i)) => Ok((&i.record, false)),
            Ok(SignedOrExisting::Existing(r)) => Ok((&**r, true)),
            Err(e) => Err(e),
        })
    }

    /// Adds this batch's certificates to `txn` as one operation; the answers come from
    /// [`PlannedCommit::results`] with the transaction's outcome.
    pub fn into_txn(self, txn: &mut Txn, atomic: bool) -> PlannedCommit {
        let items: Vec<(CertRecord, bool)> = self
            .0
            .iter()
            .filter_map(|s| match s {
                Ok(SignedOrExisting::Signed(i)) => Some((i.record.clone(), i.replace)),
                _ => None,
            })
            .collect();
        let op = txn.ops().len();
        txn.push(Op::CommitIssued {
            items,
            all_or_nothing: atomic,
        });
        PlannedCommit { signed: self, op }
    }
}

/// A batch whose certificates are in a transaction not yet applied.
pub struct PlannedCommit {
    signed: SignedBatch,
    op: usize,
}

impl PlannedCommit {
    /// The answer to each item, from the store's outcome of the transaction.
    pub fn results(self, applied: &Applied) -> Vec<Result<Outcome, IssueError>> {
        let Some(committed) = applied.committed(self.op) else {
            let e = IssueError::new(ErrorCode::Internal, "the store did not report the commit");
            return self.signed.0.iter().map(|_| Err(e.clone())).collect();
        };
        let mut commits = committed.items.iter();
        let mut out = Vec::with_capacity(self.signed.len());
        for s in self.signed.0 {
            out.push(match s {
                Err(e) => Err(e),
                Ok(SignedOrExisting::Existing(record)) => Ok(Outcome {
                    record: *record,
                    existing: true,
                }),
                Ok(SignedOrExisting::Signed(issued)) => match commits.next() {
                    Some(Commit::Stored) if committed.stored => Ok(Outcome {
                        record: issued.record,
                        existing: false,
                    }),
                    Some(Commit::Stored) => Err(aborted()),
                    Some(Commit::Existing(record)) => Ok(Outcome {
                        record: (**record).clone(),
                        existing: true,
                    }),
                    Some(Commit::Conflict(active)) => Err(IssueError::new(
                        ErrorCode::ExistingCertificate,
                        format!(
                            "{} already holds an active {} certificate (serial {}) for another key; send \"replace\": true to replace it",
                            active.subject_id,
                            active.profile,
                            active.serial_hex()
                        ),
                    )),
                    Some(Commit::KeyReused(holder)) => {
                        Err(super::s2_policy::key_reused(holder))
                    }
                    Some(Commit::KeyCompromised(revoked)) => {
                        Err(super::s2_policy::key_compromised(revoked))
                    }
                    None => Err(IssueError::new(
                        ErrorCode::Internal,
                        "the store answered fewer items than it was given",
                    )),
                },
            });
        }
        out
    }
}

/// The refusal of an item of an atomic batch that was fine itself.
pub(crate) fn aborted() -> IssueError {
    IssueError::new(
        ErrorCode::BatchAborted,
        "not issued: another item of this atomic batch was refused",
    )
}

/// Stores `signed` with the audit record `describe` makes of the results.
pub(crate) fn commit(
    audit: &AuditLog,
    signed: SignedBatch,
    atomic: bool,
    describe: Describe<'_>,
) -> Result<Vec<Result<Outcome, IssueError>>, IssueError> {
    let mut txn = Txn::new();
    let plan = signed.into_txn(&mut txn, atomic);
    let mut results = None;
    let slot = &mut results;
    audit
        .commit(txn, move |applied| {
            let r = plan.results(applied);
            let entry = describe(&r);
            *slot = Some(r);
            entry
        })
        .map_err(commit_error)?;
    results.ok_or_else(|| IssueError::new(ErrorCode::Internal, "no results"))
}

/// Why a commit stored nothing, as an issuance error: the audit log is named (the request fails
/// with nothing issued), the store's refusal or failure is internal.
pub(crate) fn commit_error(e: ApplyError) -> IssueError {
    match e {
        ApplyError::Audit(e) => IssueError::new(
            ErrorCode::AuditUnavailable,
            format!("the audit record could not be written, so nothing was issued: {e}"),
        ),
        ApplyError::Store(e) => {
            let mut e = IssueError::store(e);
            e.detail = format!("storing certificates: {}", e.detail);
            e
        }
    }
}
