//! The issuance pipeline (DESIGN §4), one module a step, each turning one type into the next:
//!
//! ```text
//! RequestItem -request-> Request -policy-> Approved -tbs-> Tbs -lint-> Linted -sign-> Issued -store-> Outcome
//! ```
//!
//! Only `lint` can make a `Linted` and `sign` consumes it: nothing unlinted is signed, nothing is
//! signed twice. Every signature is verified before the certificate is stored, and the store is
//! flushed before anyone is answered.

mod error;
mod lint;
mod policy;
mod request;
mod sign;
mod tbs;

use std::sync::Arc;

use crate::par::{par_map, par_map_owned};
use std::time::SystemTime;

use der::{Decode, Encode};
use policies::{IssuerKind, Profile, ProfileSet};
use x509_cert::name::Name;
use x509_cert::Certificate;

pub use error::{ErrorCode, IssueError};
pub use lint::Linted;
pub use policy::{AccountLimits, Approved, Decision};
pub use request::{parse_request, tls_request, KeySource, Request, RequestItem, Subject};
pub use sign::Issued;

/// `SEQUENCE { tbs, signatureAlgorithm, signatureValue }` around already-encoded TBS bytes: the
/// shape of a certificate and of a CRL alike (RFC 5280 §4.1, §5.1).
pub(crate) fn assemble_signed(
    tbs_der: &[u8],
    alg_der: &[u8],
    signature: &[u8],
) -> Result<Vec<u8>, der::Error> {
    sign::assemble(tbs_der, alg_der, signature)
}
pub use tbs::{
    shard_of, CrlSettings, HardwareModuleName, Tbs, ID_ON_HARDWARE_MODULE_NAME, SUPPLIER_ROLE_CODE,
    X500_UNIQUE_IDENTIFIER,
};

use crate::certs::{check_key_matches, key_identifier, CertError};
use crate::signer::{KeyAlgorithm, Signer, VerifyError};
use crate::store::{CertRecord, Commit, Store};

/// Most items in one batch (DESIGN §4).
pub const MAX_BATCH: usize = 10_000;

/// Items signed and stored together inside a larger batch.
const COMMIT_CHUNK: usize = 1_000;

/// An issuing CA ready to sign: its certificate, its key, and what the pipeline reads from them.
pub struct IssuerCtx {
    pub(crate) kind: IssuerKind,
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
        write!(f, "IssuerCtx({} CA, {:?})", self.kind.name(), self.signer)
    }
}

impl IssuerCtx {
    /// Binds a CA certificate to its signer. Refuses a key that does not match the certificate.
    pub fn new(
        kind: IssuerKind,
        cert: Certificate,
        signer: Arc<dyn Signer>,
    ) -> Result<IssuerCtx, CertError> {
        check_key_matches(signer.as_ref(), &cert, kind.name())?;
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

    /// Which CA.
    pub fn kind(&self) -> IssuerKind {
        self.kind
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

/// The issuance engine: profiles, issuers, store.
pub struct Engine {
    profiles: ProfileSet,
    issuers: Vec<Arc<IssuerCtx>>,
    store: Arc<dyn Store>,
    crl: CrlSettings,
    workers: usize,
}

impl Engine {
    /// An engine; `workers` threads sign in parallel (one per HSM session).
    pub fn new(
        profiles: ProfileSet,
        issuers: Vec<Arc<IssuerCtx>>,
        store: Arc<dyn Store>,
        crl: CrlSettings,
        workers: usize,
    ) -> Engine {
        Engine {
            profiles,
            issuers,
            store,
            crl,
            workers: workers.max(1),
        }
    }

    /// The profiles.
    pub fn profiles(&self) -> &ProfileSet {
        &self.profiles
    }

    /// The issuing CA of `kind`, if this engine has it.
    pub fn issuer(&self, kind: IssuerKind) -> Option<&Arc<IssuerCtx>> {
        self.issuers.iter().find(|i| i.kind == kind)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn issuer_for(&self, profile: &Profile) -> Result<&Arc<IssuerCtx>, IssueError> {
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
    fn prepare(&self, item: &RequestItem, limits: &AccountLimits) -> Result<Prepared, IssueError> {
        self.prepare_request(parse_request(item, &self.profiles)?, limits)
    }

    /// Steps 2 to 4 for a request already built (a TLS certificate made by the operator).
    fn prepare_request(
        &self,
        request: Request,
        limits: &AccountLimits,
    ) -> Result<Prepared, IssueError> {
        let issuer = self.issuer_for(&request.profile)?.clone();
        match policy::approve(request, limits, self.store.as_ref())? {
            Decision::Existing(record) => Ok(Prepared::Existing(record)),
            Decision::Approve(approved) => {
                let tbs = tbs::build_tbs(*approved, &issuer, &self.crl, SystemTime::now())?;
                Ok(Prepared::ToSign(
                    Box::new(lint::lint(tbs, &issuer)?),
                    issuer,
                ))
            }
        }
    }

    /// A request built by [`tls_request`], the whole flow: answered only once stored and flushed.
    pub fn issue_request(&self, request: Request) -> Result<Outcome, IssueError> {
        let signed = self
            .prepare_request(request, &AccountLimits::default())
            .and_then(sign_prepared);
        let mut out = self.commit(vec![signed], false)?;
        out.pop()
            .unwrap_or_else(|| Err(IssueError::new(ErrorCode::Internal, "no result")))
    }

    /// One request, the whole flow: answered only once stored and flushed.
    pub fn issue(&self, item: &RequestItem, limits: &AccountLimits) -> Result<Outcome, IssueError> {
        let mut out = self.issue_batch(&[Ok(item.clone())], limits, false)?;
        out.pop()
            .unwrap_or_else(|| Err(IssueError::new(ErrorCode::Internal, "no result")))
    }

    /// A batch: results per item in request order; a bad item does not sink the others unless
    /// `atomic`, when nothing is issued unless everything is. Items that failed to parse upstream
    /// (an NDJSON line that is not JSON) come in as errors and go out unchanged.
    pub fn issue_batch(
        &self,
        items: &[Result<RequestItem, IssueError>],
        limits: &AccountLimits,
        atomic: bool,
    ) -> Result<Vec<Result<Outcome, IssueError>>, IssueError> {
        if !atomic {
            check_batch_size(items.len())?;
            // In chunks: the signed-but-not-stored state of a chunk is what stays in memory, so
            // a 10,000-item request costs no more than a 1,000-item one.
            let mut out = Vec::with_capacity(items.len());
            for chunk in items.chunks(COMMIT_CHUNK) {
                out.extend(self.commit_signed(self.sign_batch(chunk, limits)?)?);
            }
            return Ok(out);
        }
        check_batch_size(items.len())?;
        let prepare = |item: &Result<RequestItem, IssueError>| {
            item.clone().and_then(|i| self.prepare(&i, limits))
        };
        // All-or-nothing: refuse before any signature if one item is bad.
        let prepared = par_map(items, self.workers, prepare);
        if prepared.iter().any(Result::is_err) {
            return Ok(abort_all(
                prepared.into_iter().map(|p| p.map(|_| ())).collect(),
            ));
        }
        let signed = par_map_owned(prepared, self.workers, |p| p.and_then(sign_prepared));
        self.commit(signed, true)
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
        Ok(SignedBatch(par_map(items, self.workers, |item| {
            item.clone()
                .and_then(|i| self.prepare(&i, limits))
                .and_then(sign_prepared)
        })))
    }

    /// Step 6 for a batch from [`Engine::sign_batch`]: stored in one atomic write, flushed.
    pub fn commit_signed(
        &self,
        signed: SignedBatch,
    ) -> Result<Vec<Result<Outcome, IssueError>>, IssueError> {
        self.commit(signed.0, false)
    }

    /// Step 6: store what was signed, in one transaction, flushed; map the store's answer.
    fn commit(
        &self,
        signed: Vec<Result<SignedOrExisting, IssueError>>,
        atomic: bool,
    ) -> Result<Vec<Result<Outcome, IssueError>>, IssueError> {
        let to_store: Vec<(CertRecord, bool)> = signed
            .iter()
            .filter_map(|s| match s {
                Ok(SignedOrExisting::Signed(i)) => Some((i.record.clone(), i.replace)),
                _ => None,
            })
            .collect();
        let committed = self.store.commit_issued(&to_store, atomic).map_err(|e| {
            IssueError::new(ErrorCode::Internal, format!("storing certificates: {e}"))
        })?;
        let mut commits = committed.items.into_iter();
        let mut out = Vec::with_capacity(signed.len());
        for s in signed {
            out.push(match s {
                Err(e) => Err(e),
                Ok(SignedOrExisting::Existing(record)) => Ok(Outcome { record: *record, existing: true }),
                Ok(SignedOrExisting::Signed(issued)) => match commits.next() {
                    Some(Commit::Stored) if committed.stored => Ok(Outcome { record: issued.record, existing: false }),
                    Some(Commit::Stored) => Err(IssueError::new(ErrorCode::BatchAborted, "not issued: another item of this atomic batch was refused")),
                    Some(Commit::Existing(record)) => Ok(Outcome { record: *record, existing: true }),
                    Some(Commit::Conflict(active)) => Err(IssueError::new(
                        ErrorCode::ExistingCertificate,
                        format!("{} already holds an active {} certificate (serial {}) for another key; send \"replace\": true to replace it", active.subject_id, active.profile, active.serial_hex()),
                    )),
                    None => Err(IssueError::new(ErrorCode::Internal, "the store answered fewer items than it was given")),
                },
            });
        }
        Ok(out)
    }
}

/// Signed (or found already issued) but not yet stored: answer nothing from it before
/// [`Engine::commit_signed`] returns.
pub struct SignedBatch(Vec<Result<SignedOrExisting, IssueError>>);

impl SignedBatch {
    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

enum SignedOrExisting {
    Signed(Box<Issued>),
    Existing(Box<CertRecord>),
}

fn sign_prepared(p: Prepared) -> Result<SignedOrExisting, IssueError> {
    match p {
        Prepared::Existing(r) => Ok(SignedOrExisting::Existing(r)),
        Prepared::ToSign(linted, issuer) => Ok(SignedOrExisting::Signed(Box::new(sign::sign(
            *linted, &issuer,
        )?))),
    }
}

fn abort_all(checked: Vec<Result<(), IssueError>>) -> Vec<Result<Outcome, IssueError>> {
    checked
        .into_iter()
        .map(|c| match c {
            Err(e) => Err(e),
            Ok(()) => Err(IssueError::new(
                ErrorCode::BatchAborted,
                "not issued: another item of this atomic batch was refused",
            )),
        })
        .collect()
}
