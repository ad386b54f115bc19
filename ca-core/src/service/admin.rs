//! The operator's commands that must work while `meterpki serve` holds the embedded store:
//! the CLI hands them to the running server, which does them as that operator. Only
//! commands that touch no key beyond the online token travel this way (revocation, disabling an
//! account, publishing CRLs); ceremonies, which open the root token, are never done by the
//! server process.
//!
//! The requests and answers are plain data (serde) so that the CLI and the server agree on
//! them without sharing anything else; the transport (a Unix socket in the home, only for the
//! home's OS user) is the front ends' business.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Actor, Disabled, RevokeOutcome, Selector, Service, ServiceError};
use crate::crl::Published;
use crate::model::{Eui64, Reason};
use crate::CaKind;

/// Which certificates a forwarded revocation names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevokeWhich {
    /// These serials (hex), from the command line or a file.
    Serials {
        /// Serials, lowercase hex.
        serials: Vec<String>,
        /// The file they came from, for the audit record.
        file: Option<PathBuf>,
    },
    /// Every unrevoked meter certificate of a device.
    Device(String),
    /// Every unrevoked certificate of a supplier.
    Supplier(String),
}

/// An operator's command, as the CLI sends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// `meterpki revoke`.
    Revoke {
        /// Which certificates.
        which: RevokeWhich,
        /// RFC 5280 reason name.
        reason: String,
        /// invalidityDate, Unix seconds.
        invalidity_date: Option<i64>,
        /// Publish the affected CRLs before answering.
        publish: bool,
    },
    /// `meterpki account disable`.
    DisableAccount {
        /// The account.
        name: String,
    },
    /// `meterpki crl publish`.
    PublishCrls {
        /// One issuer (`device`, ...) or all.
        issuer: Option<String>,
        /// The full CRL too.
        full: bool,
    },
}

/// What a forwarded command did.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum AdminAnswer {
    /// For [`AdminRequest::Revoke`].
    Revoked(RevokeOutcome),
    /// For [`AdminRequest::DisableAccount`].
    Disabled(Disabled),
    /// For [`AdminRequest::PublishCrls`].
    Published {
        /// The CRLs written.
        crls: Vec<Published>,
    },
}

fn bad(code: &'static str, detail: impl Into<String>) -> ServiceError {
    ServiceError::invalid(code, detail)
}

impl Service {
    /// Does an operator's command: the same use case the CLI runs on an idle home.
    pub fn admin(&self, actor: &Actor, request: AdminRequest) -> Result<AdminAnswer, ServiceError> {
        match request {
            AdminRequest::Revoke {
                which,
                reason,
                invalidity_date,
                publish,
            } => {
                let reason = Reason::parse(&reason).map_err(|e| bad("reason", e))?;
                let id = |s: &str| s.parse::<Eui64>().map_err(|e| bad("device-id", e));
                let which = match which {
                    RevokeWhich::Serials { serials, file } => Selector::Serials {
                        serials: serials
                            .iter()
                            .map(|s| {
                                hex::decode(s).map_err(|_| {
                                    bad("serial", format!("{s:?} is not a hex serial"))
                                })
                            })
                            .collect::<Result<_, _>>()?,
                        file,
                    },
                    RevokeWhich::Device(d) => Selector::Device(id(&d)?),
                    RevokeWhich::Supplier(d) => Selector::Supplier(id(&d)?),
                };
                Ok(AdminAnswer::Revoked(self.revoke(
                    actor,
                    which,
                    reason,
                    invalidity_date,
                    publish,
                )?))
            }
            AdminRequest::DisableAccount { name } => {
                Ok(AdminAnswer::Disabled(self.disable_account(actor, &name)?))
            }
            AdminRequest::PublishCrls { issuer, full } => {
                let only = issuer
                    .as_deref()
                    .map(|i| CaKind::parse_issuing(i).map_err(|e| bad("issuer", e)))
                    .transpose()?;
                Ok(AdminAnswer::Published {
                    crls: self.publish_crls(actor, only, full, None)?,
                })
            }
        }
    }
}
