//! API accounts: who a client certificate belongs to and what it may do. The role comes from
//! here, never from a request body.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::eui64::DeviceRange;

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A factory provisioning line: issues meter certificates within its device range.
    Factory,
    /// An energy supplier: enrols, rotates and revokes its own keys.
    Supplier,
    /// An operator: revocation, churn, lookups.
    Operator,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Factory => "factory",
            Role::Supplier => "supplier",
            Role::Operator => "operator",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "factory" => Ok(Role::Factory),
            "supplier" => Ok(Role::Supplier),
            "operator" => Ok(Role::Operator),
            _ => Err(format!(
                "{s:?} is not a role: factory, supplier or operator"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An API account, bound to one client certificate at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Unique name; the client certificate's CN.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Factory accounts: the EUI-64 range it may name (stored as `PREFIX/BITS`).
    pub device_range: Option<DeviceRange>,
    /// Supplier accounts: the supplier's entity ID.
    pub supplier: Option<String>,
    /// Serial of its current client certificate.
    pub cert_serial: Vec<u8>,
    /// Disabled accounts are refused, and their certificate is revoked.
    pub disabled: bool,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Factory accounts: may send a bare public key instead of a CSR (for keys made in a
    /// meter's secure element on an authenticated line). Off unless an operator allowed it.
    #[serde(default)]
    pub bare_public_key: bool,
}

/// Checks an account name: it is a file name and a CN.
pub fn check_account_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "account name {name:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.' or '-' (it names files)"
        ));
    }
    // `account add --out DIR` writes DIR/<name>.pem, DIR/<name>.key and DIR/ca.pem (the chain
    // that trusts the server): an account named `ca` would have its certificate overwritten.
    if name.eq_ignore_ascii_case("ca") {
        return Err(format!(
            "account name {name:?} is reserved: `account add` writes the server's trust chain to <out>/ca.pem"
        ));
    }
    Ok(())
}
