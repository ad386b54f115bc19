//! Who may do what: one model for the CLI and the API (docs/design.md#who-may-do-what).
//!
//! An [`Actor`] is either someone at the home's shell (the CLI: an operator with every right the
//! home's files already give them), an API account (its role and scope from the store, never
//! from a request), or the server itself (scheduled work). Every use case asks [`authorize`]
//! before it reads or writes; a refusal names the account and what it may do instead.

use std::fmt;

use policies::{Profile, ProfileKind};

use super::error::{ErrorClass, ServiceError};
use crate::issue::AccountLimits;
use crate::model::{Account, DeviceRange, Eui64, Role};
use crate::store::CertRecord;

/// Who is acting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// Someone at the home's shell (the CLI), named for the audit log (the OS user or the
    /// `--operator` of a ceremony).
    Operator(String),
    /// An API account, authenticated by its client certificate.
    Account(Account),
    /// The server's own scheduled work (`meterpki-serve`).
    System(&'static str),
}

impl Actor {
    /// The name the audit log records.
    pub fn name(&self) -> &str {
        match self {
            Actor::Operator(n) => n,
            Actor::Account(a) => &a.name,
            Actor::System(n) => n,
        }
    }

    /// The operator at the shell, named by the OS user.
    pub fn local() -> Actor {
        Actor::Operator(
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into()),
        )
    }

    /// The account, for API actors.
    pub fn account(&self) -> Option<&Account> {
        match self {
            Actor::Account(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator(n) => write!(f, "operator {n}"),
            Actor::Account(a) => write!(f, "account {} ({})", a.name, a.role),
            Actor::System(n) => f.write_str(n),
        }
    }
}

/// What an actor asks to do.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Key ceremonies, account and supplier administration, meter churn, CRL publication on
    /// demand, revocation by device or supplier: the CA's operation, from its shell.
    Administer,
    /// Send a batch of certificate requests.
    IssueBatch,
    /// Read the recorded answer of one's own batch.
    ReadBatch,
    /// See a certificate and its status.
    See(&'a CertRecord),
    /// Revoke a certificate; `None` asks, before the certificate is looked up, whether the
    /// caller may revoke at all (so that a caller who may not learns nothing of which serials
    /// exist).
    Revoke(Option<&'a CertRecord>),
    /// List the certificates of a device.
    ListDevice,
    /// List the certificates of a supplier.
    ListSupplier(&'a Eui64),
    /// Enrol some key for a supplier: the caller's side of [`Action::Enrol`], asked before the
    /// request (and so the profile) is read.
    EnrolFor(&'a Eui64),
    /// Enrol a key for a supplier.
    Enrol {
        /// The supplier.
        supplier: &'a Eui64,
        /// The profile asked for, by name.
        profile: &'a str,
        /// Its kind, if the profile exists.
        kind: Option<ProfileKind>,
    },
    /// Publish CRLs on the server's schedule.
    Republish,
}

fn forbidden(detail: String) -> ServiceError {
    ServiceError::refused(ErrorClass::Denied, "forbidden", detail)
}

/// Whether `actor` may do `action`; a refusal says why. Things an account may not see are
/// "not found", so that an account learns nothing of others' certificates.
pub fn authorize(actor: &Actor, action: Action<'_>) -> Result<(), ServiceError> {
    let account = match actor {
        Actor::Operator(_) => return Ok(()),
        Actor::System(_) => {
            return match action {
                Action::Republish => Ok(()),
                _ => Err(forbidden(format!("{actor} acts only on its schedule"))),
            }
        }
        Actor::Account(a) => a,
    };
    match action {
        Action::Administer | Action::Republish => Err(forbidden(format!(
            "account {} ({}) cannot do this through the API: it is done by an operator at the CA",
            account.name, account.role
        ))),
        Action::IssueBatch if account.role == Role::Factory => Ok(()),
        Action::IssueBatch => Err(forbidden(format!(
            "account {} is a {} account; batches are for factory accounts",
            account.name, account.role
        ))),
        Action::ReadBatch => Ok(()),
        Action::See(rec) if may_see(account, rec) => Ok(()),
        Action::See(_) => Err(ServiceError::not_found("no such certificate")),
        Action::Revoke(_) if account.role == Role::Factory => Err(forbidden(
            "factory accounts do not revoke certificates (operators and the owning supplier do)"
                .into(),
        )),
        Action::Revoke(None) => Ok(()),
        Action::Revoke(Some(rec)) if may_see(account, rec) => Ok(()),
        Action::Revoke(Some(_)) => Err(ServiceError::not_found("no such certificate")),
        Action::ListDevice if account.role == Role::Supplier => {
            Err(forbidden("supplier accounts do not look up devices".into()))
        }
        Action::ListDevice => Ok(()),
        Action::ListSupplier(id) => match account.role {
            Role::Operator => Ok(()),
            Role::Supplier if own_supplier(account, id) => Ok(()),
            _ => Err(forbidden(format!(
                "account {} may not list supplier {id}'s certificates",
                account.name
            ))),
        },
        Action::EnrolFor(supplier) => enrol_for(account, supplier),
        Action::Enrol {
            supplier,
            profile,
            kind,
        } => {
            enrol_for(account, supplier)?;
            if kind != Some(ProfileKind::Supplier) {
                return Err(forbidden(format!(
                    "a supplier enrols supplier profiles, not {profile}"
                )));
            }
            Ok(())
        }
    }
}

/// A supplier account enrols keys for its own supplier only.
fn enrol_for(account: &Account, supplier: &Eui64) -> Result<(), ServiceError> {
    if account.role != Role::Supplier || !own_supplier(account, supplier) {
        return Err(forbidden(format!(
            "account {} may not enrol keys for supplier {supplier}",
            account.name
        )));
    }
    Ok(())
}

fn own_supplier(account: &Account, id: &Eui64) -> bool {
    account.supplier.as_deref() == Some(id.to_string().as_str())
}

/// Whether `account` may see or act on `rec`: operators everything, a supplier its own
/// supplier certificates, a factory the meter certificates of its range.
pub fn may_see(account: &Account, rec: &CertRecord) -> bool {
    match account.role {
        Role::Operator => true,
        Role::Supplier => {
            rec.issuer == crate::CaKind::Organisation
                && account.supplier.as_deref() == Some(rec.subject_id.as_str())
        }
        Role::Factory => {
            rec.issuer == crate::CaKind::Device
                && account
                    .device_range
                    .zip(rec.subject_id.parse::<Eui64>().ok())
                    .is_some_and(|(r, id)| r.contains(&id))
        }
    }
}

/// What the issuance pipeline lets `actor` ask for in a request item: an account is held to
/// its device range (factories: none other than theirs; other roles: none at all).
pub fn limits(actor: &Actor) -> AccountLimits {
    match actor {
        Actor::Account(a) => AccountLimits {
            device_range: Some(a.device_range.unwrap_or(DeviceRange::ALL)),
            // A factory line provisions new devices: taking over a device that already holds
            // an active certificate (revoking it and binding the identity to another key) is
            // an operator's decision, made from the CA's shell.
            no_bare_key: (!a.bare_public_key).then(|| {
                format!(
                    "account {} may not send bare public keys: its requests carry a CSR (proof of possession); an operator allows bare keys with `account add --allow-bare-public-key`",
                    a.name
                )
            }),
            no_replace: (a.role == Role::Factory).then(|| {
                "a factory account may not replace a certificate: an operator does (`meterpki issue --replace`, or revoke it first)".to_string()
            }),
        },
        _ => AccountLimits::default(),
    }
}

/// Whether `actor` may ask for a certificate of `profile` in a batch (an item outside is
/// refused with `profile-limit`, the others still issued).
pub fn may_request(actor: &Actor, profile: &Profile) -> Result<(), String> {
    match actor {
        Actor::Account(a) if a.role == Role::Factory && profile.kind() != ProfileKind::Meter => {
            Err(format!(
                "a factory account may only request meter profiles, not {}",
                profile.name()
            ))
        }
        _ => Ok(()),
    }
}
