//! Step 2: a [`Request`] is checked against the profile, the account and what is already
//! issued, and becomes an [`Approved`] request (or the certificate already issued for it).

use policies::ProfileKind;

use super::error::{ErrorCode, IssueError};
use super::s1_request::{Request, Subject};
use crate::model::DeviceRange;
use crate::model::SupplierState;
use crate::store::{CertRecord, Store};

/// What the requesting account may do (API accounts; the CLI operator is unrestricted).
#[derive(Clone, Debug, Default)]
pub struct AccountLimits {
    /// The EUI-64 range this account may name, for device certificates.
    pub device_range: Option<DeviceRange>,
    /// Why this account may not replace an active certificate (`"replace": true`), if it may
    /// not.
    pub no_replace: Option<String>,
    /// Why this account may not send a bare public key instead of a CSR, if it may not.
    pub no_bare_key: Option<String>,
}

/// A request that passed every check and will be signed.
#[derive(Clone, Debug)]
pub struct Approved {
    pub(crate) request: Request,
}

/// The result of the policy step.
#[derive(Debug)]
pub enum Decision {
    /// Sign it.
    Approve(Box<Approved>),
    /// The same subject, usage and key already has its certificate: answer it, sign nothing.
    Existing(Box<CertRecord>),
}

/// Applies the account's range and the one-active-certificate rule (docs/design.md#issuance).
///
/// `generation` is the issuing CA's current generation: the same key again is answered with
/// its certificate, unless the request asks to `recertify` a certificate from an earlier
/// generation (after a renewal), which this generation then certifies again, superseding it.
pub(super) fn approve(
    request: Request,
    limits: &AccountLimits,
    store: &dyn Store,
    generation: u32,
) -> Result<Decision, IssueError> {
    if let (true, Some(why)) = (request.bare, &limits.no_bare_key) {
        return Err(IssueError::new(ErrorCode::BareKeyForbidden, why.clone()));
    }
    if let (ProfileKind::Meter, Subject::Device(id), Some(range)) = (
        request.profile.kind(),
        &request.subject,
        &limits.device_range,
    ) {
        if !range.contains(id) {
            return Err(IssueError::new(
                ErrorCode::DeviceRange,
                format!("device_id {id} is outside this account's range {range}"),
            ));
        }
    }
    let mut request = request;
    if let Subject::Party { entity_id, name } = &mut request.subject {
        let internal = IssueError::store;
        let supplier = store.supplier(&entity_id.to_string()).map_err(internal)?.ok_or_else(|| {
            IssueError::new(
                ErrorCode::SupplierUnknown,
                format!("entity_id {entity_id} is not a registered supplier: run `meterpki supplier register --id {entity_id} --name NAME` first"),
            )
        })?;
        if supplier.state != SupplierState::Active {
            return Err(IssueError::new(
                ErrorCode::SupplierInactive,
                format!(
                    "supplier {entity_id} ({}) is {}: it cannot enrol keys",
                    supplier.name, supplier.state
                ),
            ));
        }
        if name.is_empty() {
            *name = supplier.name;
        } else if *name != supplier.name {
            return Err(IssueError::new(
                ErrorCode::ProfileLimit,
                format!(
                    "name {name:?} is not supplier {entity_id}'s registered name {:?}",
                    supplier.name
                ),
            ));
        }
    }
    let subject_id = request.subject.key();
    let active = store
        .active_cert(&subject_id, request.profile.name())
        .map_err(IssueError::store)?;
    if let Some(active) = active {
        let same_key = active.key_hash == request.key_hash;
        if same_key && (active.issuer_generation >= generation || !request.recertify) {
            return Ok(Decision::Existing(Box::new(active)));
        }
        // Re-certifying the same key under a newer CA generation (asked for by a campaign,
        // never by an account) is not a replacement by another key: `no_replace` is not for it.
        if let (false, true, Some(why)) = (same_key, request.replace, &limits.no_replace) {
            return Err(IssueError::new(
                ErrorCode::ReplaceForbidden,
                format!(
                    "{subject_id} holds an active {} certificate (serial {}) for another key: {why}",
                    request.profile.name(),
                    active.serial_hex()
                ),
            ));
        }
        if !same_key && !request.replace {
            return Err(IssueError::new(
                ErrorCode::ExistingCertificate,
                format!(
                    "{subject_id} already holds an active {} certificate (serial {}) for another key; send \"replace\": true to replace it",
                    request.profile.name(),
                    active.serial_hex()
                ),
            ));
        }
    }
    // One key, one subject and usage: checked here before signing, and again in the store's
    // transaction (two requests at once).
    let internal = IssueError::store;
    if let Some(revoked) = store.compromised_key(&request.key_hash).map_err(internal)? {
        return Err(key_compromised(&revoked));
    }
    if let Some(holder) = store.cert_with_key(&request.key_hash).map_err(internal)? {
        if holder.subject_id != subject_id || holder.profile != request.profile.name() {
            if let Some(active) = store
                .active_cert(&holder.subject_id, &holder.profile)
                .map_err(internal)?
            {
                if active.key_hash == request.key_hash {
                    return Err(key_reused(&active));
                }
            }
        }
    }
    Ok(Decision::Approve(Box::new(Approved { request })))
}

/// The refusal of a key a certificate of which (`revoked`) was revoked for keyCompromise.
pub(crate) fn key_compromised(revoked: &CertRecord) -> IssueError {
    IssueError::new(
        ErrorCode::KeyCompromised,
        format!(
            "this public key was reported compromised (certificate {} of {} revoked for keyCompromise): no certificate is issued for it again; make a new key pair",
            revoked.serial_hex(),
            revoked.subject_id
        ),
    )
}

/// The refusal of a key bound to another subject or usage by `holder`.
pub(crate) fn key_reused(holder: &CertRecord) -> IssueError {
    IssueError::new(
        ErrorCode::KeyReused,
        format!(
            "this public key is already certified for {} as {} (serial {}): a key belongs to one subject and one usage; make a new key pair",
            holder.subject_id,
            holder.profile,
            holder.serial_hex()
        ),
    )
}
