//! What meterpki's records are made of: identifiers, accounts, suppliers, revocations and the
//! journal of long operations. Plain data with their own checks; no storage, no I/O.

mod account;
mod eui64;
mod operation;
mod revocation;
mod supplier;

pub use account::{check_account_name, Account, Role};
pub use eui64::{DeviceRange, Eui64};
pub use operation::{OpKind, OpRecord, OpState};
pub use revocation::{Reason, Revocation};
pub use supplier::{check_supplier_name, Supplier, SupplierState};
