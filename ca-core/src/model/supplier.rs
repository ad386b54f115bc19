//! The supplier registry: who may hold supplier certificates and command meters.
//! A supplier is registered by an operator and is `active` until it is `acquired` (takeover) or
//! `exited` (it left the market); only an active supplier may enrol keys or be given meters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a supplier stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupplierState {
    /// Trading: may enrol keys and serve meters.
    Active,
    /// Taken over by another supplier; its meters moved there and its certificates are revoked.
    Acquired,
    /// Left the market; its meters moved to the supplier of last resort.
    Exited,
}

impl SupplierState {
    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            SupplierState::Active => "active",
            SupplierState::Acquired => "acquired",
            SupplierState::Exited => "exited",
        }
    }
}

impl fmt::Display for SupplierState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One registered supplier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supplier {
    /// EUI-64 entity ID, normalised text (`00-DB-...`).
    pub id: String,
    /// Registered name: the CN of its certificates.
    pub name: String,
    /// Where it stands.
    pub state: SupplierState,
    /// Registration time, Unix seconds.
    pub registered_at: i64,
    /// When it stopped being active, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Who took its meters (acquirer or supplier of last resort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

/// Checks a supplier's registered name: it becomes a certificate's CN.
pub fn check_supplier_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty()
        || name.trim() != name
        || name.chars().count() > 64
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "name {name:?}: 1 to 64 printable characters without leading or trailing spaces (it is the certificates' CN, RFC 5280 ub-common-name)"
        ));
    }
    Ok(())
}
