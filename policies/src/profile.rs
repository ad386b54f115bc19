//! One validated certificate profile: what a certificate made with it looks like.

use std::path::Path;

use const_oid::ObjectIdentifier;

use crate::error::ProfileError;
use crate::kinds::{CaKind, Curve, ExtendedKeyUsage, KeyUsageBit, ProfileKind, Validity};
use crate::raw::{toml_error, RawProfile};

/// A validated certificate profile.
////// Made only by [`Profile::from_toml`] (or [`crate::ProfileSet`]), so every value read through
/// the getters has passed the hard limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub(crate) name: String,
    pub(crate) kind: ProfileKind,
    pub(crate) issuer: CaKind,
    pub(crate) key_usage: Vec<KeyUsageBit>,
    pub(crate) curves: Vec<Curve>,
    pub(crate) policy_oid: Option<ObjectIdentifier>,
    pub(crate) policy_critical: bool,
    pub(crate) entity_id_form: crate::kinds::EntityIdForm,
    pub(crate) device_type_oid: Option<ObjectIdentifier>,
    pub(crate) validity: Validity,
    pub(crate) allow_bare_public_key: bool,
    pub(crate) crl_distribution_point: bool,
    pub(crate) max_der_bytes: Option<usize>,
    pub(crate) key_identifier_bytes: u8,
    pub(crate) extended_key_usage: Vec<ExtendedKeyUsage>,
    pub(crate) path_len: Option<u8>,
    pub(crate) subject: Option<String>,
}

impl Profile {
    /// The profile's name (equal to its file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What certificates made with the profile are for.
    pub fn kind(&self) -> ProfileKind {
        self.kind
    }

    /// The CA that signs them.
    pub fn issuer(&self) -> CaKind {
        self.issuer
    }

    /// Their keyUsage bits, in the order of the file (non-empty, no duplicates).
    pub fn key_usage(&self) -> &[KeyUsageBit] {
        &self.key_usage
    }

    /// The curves a subject key may use, in the order of the file (non-empty, no duplicates).
    pub fn curves(&self) -> &[Curve] {
        &self.curves
    }

    /// The certificatePolicies OID, if the profile has one (always for meter, supplier and
    /// trust-update-signer profiles).
    pub fn policy_oid(&self) -> Option<ObjectIdentifier> {
        self.policy_oid
    }

    /// Whether certificatePolicies is marked critical (default false: common embedded X.509
    /// stacks refuse a critical policies extension other than anyPolicy; the GB SMKI profiles
    /// mark it critical).
    pub fn policy_critical(&self) -> bool {
        self.policy_critical
    }

    /// Octets of the subjectKeyIdentifier (8: RFC 5280 §4.2.1.2 method 2; fewer: its first
    /// octets, for meters only).
    pub fn key_identifier_bytes(&self) -> usize {
        usize::from(self.key_identifier_bytes)
    }

    /// Supplier certificates: how the subject carries the entity ID.
    pub fn entity_id_form(&self) -> crate::kinds::EntityIdForm {
        self.entity_id_form
    }

    /// The device-type OID (hwType of the hardwareModuleName SAN); `Some` exactly for meter profiles.
    pub fn device_type_oid(&self) -> Option<ObjectIdentifier> {
        self.device_type_oid
    }

    /// How long the certificates are valid.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// Whether a bare SubjectPublicKeyInfo is accepted instead of a CSR (meter profiles only).
    pub fn allow_bare_public_key(&self) -> bool {
        self.allow_bare_public_key
    }

    /// Whether certificates carry a cRLDistributionPoints pointer.
    pub fn crl_distribution_point(&self) -> bool {
        self.crl_distribution_point
    }

    /// The largest DER certificate the CA may sign with this profile, if limited (128 to 8192).
    pub fn max_der_bytes(&self) -> Option<usize> {
        self.max_der_bytes
    }

    /// The extendedKeyUsage purposes: exactly one for TLS profiles, empty for every other kind.
    pub fn extended_key_usage(&self) -> &[ExtendedKeyUsage] {
        &self.extended_key_usage
    }

    /// The basicConstraints pathLenConstraint: `Some` exactly for CA profiles.
    pub fn path_len(&self) -> Option<u8> {
        self.path_len
    }

    /// CA profiles only: the CA's subject (RFC 4514 text), when the profile names it.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Parses and validates one profile's TOML text.
    ///
    /// `file` is named in errors, and the profile's `name` must equal its stem
    /// (`profiles/meter-signing.toml` must hold `name = "meter-signing"`).
    pub fn from_toml(file: &Path, text: &str) -> Result<Profile, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
        raw.validate(file)
    }
}
