//! The issuance pipeline (docs/design.md#issuance), one module a step, each turning one type
//! into the next, in the order a directory listing shows them:
//!
//! ```text
//! RequestItem -s1_request-> Request -s2_policy-> Approved -s3_tbs-> Tbs -s4_lint-> Linted
//!             -s5_sign-> Issued -s6_commit-> Outcome
//! ```
//!
//! Only `s4_lint` can make a `Linted` and `s5_sign` consumes it: nothing unlinted is signed,
//! nothing is signed twice. Every signature is verified before the certificate is stored, and
//! the store commits it with its audit record before anyone is answered.

mod error;
mod issuer;
mod s1_request;
mod s2_policy;
mod s3_tbs;
mod s4_lint;
mod s5_sign;
mod s6_commit;

use std::sync::Arc;
use std::time::SystemTime;

use policies::{Profile, ProfileSet};

pub use error::{ErrorCode, IssueError};
pub use issuer::IssuerCtx;
pub use s1_request::{parse_request, tls_request, KeySource, Request, RequestItem, Subject};
pub use s2_policy::{AccountLimits, Approved, Decision};
pub use s3_tbs::{
    shard_of, CrlSettings, HardwareModuleName, Tbs, ID_ON_HARDWARE_MODULE_NAME,
    SERIAL_NUMBER_ATTRIBUTE, SUPPLIER_ROLE_CODE, X500_UNIQUE_IDENTIFIER,
};
pub use s4_lint::Linted;
pub use s5_sign::Issued;
pub use s6_commit::{Describe, PlannedCommit, SignedBatch};

use crate::audit::AuditLog;
use crate::par::{par_map_cpu, par_map_owned};
use crate::store::{CertRecord, Store, Txn};
use s6_commit::SignedOrExisting;

/// Most items in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Items signed and stored together inside a larger batch.
const COMMIT_CHUNK: usize = 1_000;

/// An answered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The certificate.
    pub record: CertRecord,
    /// True when it had been issued before (same device, usage and key): nothing new was signed.
    pub existing: bool,
}

/// What the steps before the store produce.
enum Prepared {
    Existing(Box<CertRecord>),
    ToSign(Box<Linted>, Arc<IssuerCtx>),
}

/// The issuance engine: profiles, issuers, the store it reads and the audit log it commits with.
pub struct Engine {
    profiles: ProfileSet,
    issuers: Vec<Arc<IssuerCtx>>,
    store: Arc<dyn Store>,
    audit: AuditLog,
    crl: CrlSettings,
    workers: usize,
    revoked: Vec<crate::CaKind>,
    reserved_keys: std::collections::HashSet<[u8; 32]>,
    /// One chunk signs at a time, with every signing thread. Batches in flight together would
    /// otherwise share the HSMs evenly, finish signing together and then all parse, store and
    /// answer at once while the HSMs wait (a convoy); taking turns, one batch signs while the
    /// others are parsed, stored and answered.
    sign_turn: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Engine({} issuers, {} workers)",
            self.issuers.len(),
            self.workers
        )
    }
}

impl Engine {
    /// An engine; `workers` threads sign in parallel (one per HSM session).
    pub fn new(
        profiles: ProfileSet,
        issuers: Vec<Arc<IssuerCtx>>,
        audit: AuditLog,
        crl: CrlSettings,
        workers: usize,
    ) -> Result<Engine, IssueError> {
        let store = audit.store().cloned().ok_or_else(|| {
            IssueError::new(ErrorCode::Internal, "the engine needs a writable audit log")
        })?;
        Ok(Engine {
            profiles,
            issuers,
            store,
            audit,
            crl,
            workers: workers.max(1),
            revoked: Vec::new(),
            reserved_keys: Default::default(),
            sign_turn: std::sync::Mutex::new(()),
        })
    }

    /// The profiles.
    pub fn profiles(&self) -> &ProfileSet {
        &self.profiles
    }

    /// The issuing CA of `kind`, if this engine has it.
    pub fn issuer(&self, kind: crate::CaKind) -> Option<&Arc<IssuerCtx>> {
        self.issuers.iter().find(|i| i.kind == kind)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The audit log commits go through.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The CRL settings certificates are bound with.
    pub fn crl_settings(&self) -> &CrlSettings {
        &self.crl
    }

    /// Signing threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Marks issuing CAs whose certificates the root revoked: their profiles are refused.
    pub fn with_revoked(mut self, kinds: Vec<crate::CaKind>) -> Engine {
        self.revoked = kinds;
        self
    }

    fn issuer_for(&self, profile: &Profile) -> Result<&Arc<IssuerCtx>, IssueError> {
        if self.revoked.contains(&profile.issuer()) {
            return Err(IssueError::new(
                ErrorCode::IssuerRevoked,
                format!(
                    "profile {} is issued by the {} CA, whose certificate the root revoked: it signs nothing more",
                    profile.name(),
                    profile.issuer().name()
                ),
            ));
        }
        self.issuers.iter().find(|i| i.kind == profile.issuer()).ok_or_else(|| {
            IssueError::new(
                ErrorCode::Internal,
                format!(
                    "profile {} is issued by the {} CA, which does not exist yet: run `meterpki ceremony issuing-ca --kind {}`",
                    profile.name(),
                    profile.issuer().name(),
                    profile.issuer().name()
                ),
            )
        })
    }

    /// Steps 1 to 4: request, policy, TBS, lint. No HSM call, nothing stored.
    /// Step 1 for one item: parsed, its proof of possession checked, not one of our keys.
    fn parse(&self, item: &RequestItem) -> Result<Request, IssueError> {
        let request = parse_request(item, &self.profiles)?;
        if self.reserved_keys.contains(&request.key_hash) {
            return Err(IssueError::new(
                ErrorCode::WeakKey,
                "the public key is one meterpki itself uses (a CA's or a service's): a certificate for it would let whoever asks pose as that CA or service",
            ));
        }
        Ok(request)
    }

    /// Steps 1 for every item of a batch, in parallel, and then the store's records the policy
    /// will look at for all of them, read ahead in one go (one round trip to a database
    /// server, not five per certificate). Steps 2 to 4 then read from that view.
    fn parse_all(
        &self,
        items: &[Result<RequestItem, IssueError>],
    ) -> (Vec<Result<Request, IssueError>>, Arc<dyn Store>) {
        use crate::store::kv::codec;
        let parsed = par_map_cpu(items, |item| {
            item.as_ref()
                .map_err(Clone::clone)
                .and_then(|i| self.parse(i))
        });
        let mut keys = Vec::with_capacity(parsed.len() * 4);
        for r in parsed.iter().flatten() {
            keys.push(codec::active_key(&r.subject.key(), r.profile.name()));
            keys.push(codec::key_of_key(&r.key_hash));
            keys.push(codec::compromised_key(&r.key_hash));
            if let Subject::Party { entity_id, .. } = &r.subject {
                keys.push(codec::key(
                    codec::SUPPLIER,
                    &[entity_id.to_string().as_bytes()],
                ));
            }
        }
        // A view that cannot be read ahead is no view: each item reads the store itself.
        let view = crate::store::kv::cache::read_ahead(self.store.clone(), keys)
            .unwrap_or_else(|_| self.store.clone());
        (parsed, view)
    }

    /// Keys no request may name (SHA-256 of each SubjectPublicKeyInfo DER): the CAs' and
    /// meterpki's own services'.
    pub fn with_reserved_keys(mut self, keys: Vec<[u8; 32]>) -> Engine {
        self.reserved_keys = keys.into_iter().collect();
        self
    }

    /// Steps 2 to 4 for a request already built (a TLS certificate made by the operator).
    fn prepare_request(
        &self,
        request: Request,
        limits: &AccountLimits,
        store: &dyn Store,
    ) -> Result<Prepared, IssueError> {
        let issuer = self.issuer_for(&request.profile)?.clone();
        match s2_policy::approve(request, limits, store, issuer.generation)? {
            Decision::Existing(record) => Ok(Prepared::Existing(record)),
            Decision::Approve(approved) => {
                let tbs = s3_tbs::build_tbs(*approved, &issuer, &self.crl, SystemTime::now())?;
                Ok(Prepared::ToSign(
                    Box::new(s4_lint::lint(tbs, &issuer)?),
                    issuer,
                ))
            }
        }
    }

    /// Steps 1 to 5 for a request built by [`tls_request`] (or any [`Request`]): everything but
    /// storing. The result goes to [`SignedBatch::into_txn`] (to be committed with other
    /// writes) or [`Engine::commit_signed`].
    pub fn sign_request(&self, request: Request) -> SignedBatch {
        SignedBatch(vec![self
            .prepare_request(request, &AccountLimits::default(), self.store.as_ref())
            .and_then(sign_prepared)])
    }

    /// One request, the whole flow: answered only once stored with its audit record.
    pub fn issue(
        &self,
        item: &RequestItem,
        limits: &AccountLimits,
        describe: Describe<'_>,
    ) -> Result<Outcome, IssueError> {
        let mut out = self.issue_batch(&[Ok(item.clone())], limits, false, describe)?;
        out.pop()
            .unwrap_or_else(|| Err(IssueError::new(ErrorCode::Internal, "no result")))
    }

    /// A batch: results per item in request order; a bad item does not sink the others unless
    /// `atomic`, when nothing is issued unless everything is. Items that failed to parse upstream
    /// (an NDJSON line that is not JSON) come in as errors and go out unchanged. Stored in
    /// chunks, each with the audit record `describe` makes of it.
    pub fn issue_batch(
        &self,
        items: &[Result<RequestItem, IssueError>],
        limits: &AccountLimits,
        atomic: bool,
        describe: Describe<'_>,
    ) -> Result<Vec<Result<Outcome, IssueError>>, IssueError> {
        check_batch_size(items.len())?;
        if !atomic {
            // In chunks: the signed-but-not-stored state of a chunk is what stays in memory, so
            // a 10,000-item request holds three chunks at most (parsed, signing, being stored).
            // A pipeline of chunks: while chunk k is signed, chunk k+1 is parsed (its CSRs
            // checked, on the CPU threads) and chunk k-1 stored with its audit record, so the
            // HSMs are not left idle while the host parses or the store writes.
            let mut out = Vec::with_capacity(items.len());
            let mut chunks = items.chunks(COMMIT_CHUNK);
            let Some(first) = chunks.next() else {
                return Ok(out);
            };
            check_batch_size(first.len())?;
            let mut parsed = Some(self.parse_all(first));
            let mut to_store: Option<SignedBatch> = None;
            while let Some((requests, view)) = parsed.take() {
                let next = chunks.next();
                let (signed, next_parsed, stored) = std::thread::scope(|scope| {
                    let sign = scope.spawn(|| {
                        let _turn = self.sign_turn.lock().unwrap_or_else(|p| p.into_inner());
                        SignedBatch(par_map_owned(requests, self.workers, |r| {
                            r.and_then(|req| self.prepare_request(req, limits, view.as_ref()))
                                .and_then(sign_prepared)
                        }))
                    });
                    let parse = next.map(|c| scope.spawn(move || self.parse_all(c)));
                    let stored = to_store
                        .take()
                        .map(|s| self.commit_signed(s, false, describe));
                    (
                        join_or_raise(sign.join()),
                        parse.map(|p| join_or_raise(p.join())),
                        stored,
                    )
                });
                if let Some(stored) = stored {
                    out.extend(stored?);
                }
                to_store = Some(signed);
                parsed = next_parsed;
            }
            if let Some(last) = to_store {
                out.extend(self.commit_signed(last, false, describe)?);
            }
            return Ok(out);
        }
        // All-or-nothing: refuse before any signature if one item is bad.
        let (parsed, view) = self.parse_all(items);
        let prepared = par_map_owned(parsed, self.workers, |r| {
            r.and_then(|req| self.prepare_request(req, limits, view.as_ref()))
        });
        if prepared.iter().any(Result::is_err) {
            let out = abort_all(prepared.into_iter().map(|p| p.map(|_| ())).collect());
            // Nothing is stored, but the refusal is on record.
            self.audit
                .commit(Txn::new(), |_| describe(&out))
                .map_err(s6_commit::commit_error)?;
            return Ok(out);
        }
        let signed = par_map_owned(prepared, self.workers, |p| p.and_then(sign_prepared));
        self.commit_signed(SignedBatch(signed), true, describe)
    }

    /// Steps 1 to 5 for a batch, in parallel: everything but storing. What it returns must go
    /// to [`Engine::commit_signed`] before anyone is answered; splitting the two lets a caller
    /// sign the next chunk while the previous one is being stored.
    pub fn sign_batch(
        &self,
        items: &[Result<RequestItem, IssueError>],
        limits: &AccountLimits,
    ) -> Result<SignedBatch, IssueError> {
        check_batch_size(items.len())?;
        let (parsed, view) = self.parse_all(items);
        Ok(SignedBatch(par_map_owned(parsed, self.workers, |r| {
            r.and_then(|req| self.prepare_request(req, limits, view.as_ref()))
                .and_then(sign_prepared)
        })))
    }

    /// Step 6 for a batch from [`Engine::sign_batch`]: stored in one atomic write with the
    /// audit record `describe` makes of the results.
    pub fn commit_signed(
        &self,
        signed: SignedBatch,
        atomic: bool,
        describe: Describe<'_>,
    ) -> Result<Vec<Result<Outcome, IssueError>>, IssueError> {
        s6_commit::commit(&self.audit, signed, atomic, describe)
    }
}

/// A scoped thread's result, its panic raised again here.
fn join_or_raise<T>(r: std::thread::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn check_batch_size(n: usize) -> Result<(), IssueError> {
    if n > MAX_BATCH {
        return Err(IssueError::new(
            ErrorCode::BatchTooLarge,
            format!("{n} items in one batch; at most {MAX_BATCH}"),
        ));
    }
    Ok(())
}

fn sign_prepared(p: Prepared) -> Result<SignedOrExisting, IssueError> {
    match p {
        Prepared::Existing(r) => Ok(SignedOrExisting::Existing(r)),
        Prepared::ToSign(linted, issuer) => Ok(SignedOrExisting::Signed(Box::new(s5_sign::sign(
            *linted, &issuer,
        )?))),
    }
}

fn abort_all(checked: Vec<Result<(), IssueError>>) -> Vec<Result<Outcome, IssueError>> {
    checked
        .into_iter()
        .map(|c| match c {
            Err(e) => Err(e),
            Ok(()) => Err(s6_commit::aborted()),
        })
        .collect()
}
