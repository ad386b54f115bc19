//! Certificate profiles as validated TOML (docs/design.md#certificates).
//!
//! A *profile* says what one kind of certificate looks like: who issues it, its keyUsage bits, the
//! curves its subject key may use, its policy and device-type OIDs, its lifetime and a few
//! extension switches. Profiles are data: meterpki ships one TOML file per profile (see
//! [`BUILTIN`], copied into a home by [`ProfileSet::write_builtin`]) and users edit OIDs,
//! validity and extensions without recompiling.
//!
//! Every file is validated when it is loaded ([`Profile::from_toml`], [`ProfileSet::load_dir`]).
//! The hard limits (one keyUsage bit per meter or supplier certificate, P-256 only for meters and
//! suppliers, the right issuer for each kind, well-formed OIDs, ...) cannot be switched off; a
//! profile that breaks one is refused with a [`ProfileError`] naming the file, the field and the
//! reason.
//!
//! ```
//! use policies::{ProfileKind, ProfileSet, Validity};
//!
//! let set = ProfileSet::builtin();
//! let meter = set.get("meter-signing").expect("shipped profile");
//! assert_eq!(meter.kind(), ProfileKind::Meter);
//! assert_eq!(meter.validity(), Validity::Unlimited);
//! ```
#![forbid(unsafe_code)]

mod error;
mod kinds;
mod profile;
mod raw;
mod set;

pub use const_oid::ObjectIdentifier;
pub use error::ProfileError;
pub use kinds::{
    CaKind, Curve, EntityIdForm, ExtendedKeyUsage, KeyUsageBit, ProfileKind, Validity,
};
pub use profile::Profile;
pub use set::{ProfileSet, BUILTIN};

#[cfg(test)]
mod tests;
