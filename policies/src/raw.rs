//! A profile's TOML schema and its hard limits: [`RawProfile`] as written, checked rule by rule
//! into a [`Profile`].

use std::collections::BTreeSet;
use std::path::Path;

use const_oid::ObjectIdentifier;
use serde::Deserialize;

use crate::error::ProfileError;
use crate::kinds::{
    CaKind, Curve, EntityIdForm, ExtendedKeyUsage, KeyUsageBit, ProfileKind, Validity,
};
use crate::profile::Profile;

/// Longest profile name accepted, in characters.
const MAX_NAME_LEN: usize = 64;
/// Longest lifetime accepted in `validity-days` (100 years).
const MAX_VALIDITY_DAYS: i64 = 36_500;
/// Smallest `max-der-bytes` accepted: no certificate meterpki signs fits in less.
const MIN_DER_BYTES: i64 = 128;
/// Largest `max-der-bytes` accepted.
const MAX_DER_BYTES: i64 = 8_192;
/// Fewest arcs an OID may have.
const MIN_OID_ARCS: usize = 3;

/// Reason shared by the meter and supplier curve rule.
const P256_ONLY: &str = "meters and suppliers use P-256 only (docs/design.md#certificates)";
/// Reason shared by the meter and supplier keyUsage rule.
const ONE_BIT: &str =
    "one keyUsage bit per certificate (GB SMKI: one certificate per key and usage)";

/// The profile exactly as written in the TOML, before any rule is checked.
///
/// Integers are read as `i64` so that an out-of-range value gets this crate's message (with its
/// reason) rather than the deserializer's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawProfile {
    name: String,
    kind: ProfileKind,
    issuer: CaKind,
    key_usage: Vec<KeyUsageBit>,
    curves: Vec<Curve>,
    policy_oid: Option<String>,
    policy_critical: Option<bool>,
    entity_id_form: Option<EntityIdForm>,
    device_type_oid: Option<String>,
    validity: Option<String>,
    validity_days: Option<i64>,
    allow_bare_public_key: Option<bool>,
    crl_distribution_point: Option<bool>,
    max_der_bytes: Option<i64>,
    key_identifier_bytes: Option<i64>,
    extended_key_usage: Option<Vec<ExtendedKeyUsage>>,
    path_len: Option<i64>,
    subject: Option<String>,
}

impl RawProfile {
    /// Checks every hard limit and builds the [`Profile`]; the first broken rule is returned.
    pub(crate) fn validate(self, file: &Path) -> Result<Profile, ProfileError> {
        let err = |field: &str, reason: String| ProfileError::new(file, field, reason);
        let kind = self.kind;
        let kind_name = kind.name();

        check_name(file, &self.name)?;
        check_list("key-usage", "keyUsage bit", &self.key_usage, |b| b.name())
            .map_err(|r| err("key-usage", r))?;
        check_list("curves", "curve", &self.curves, |c| c.name()).map_err(|r| err("curves", r))?;
        let policy_oid = self
            .policy_oid
            .as_deref()
            .map(parse_oid)
            .transpose()
            .map_err(|r| err("policy-oid", r))?;
        let device_type_oid = self
            .device_type_oid
            .as_deref()
            .map(parse_oid)
            .transpose()
            .map_err(|r| err("device-type-oid", r))?;

        // Issuer: each kind of certificate comes from its own CA.
        let issuer = kind.required_issuer();
        if self.issuer != issuer {
            let why = match kind {
                ProfileKind::RootCa => "the root CA certificate is self-signed".to_string(),
                ProfileKind::IssuingCa => {
                    "issuing CA certificates are signed by the root CA (docs/design.md#the-hierarchy)".to_string()
                }
                _ => format!(
                    "{kind_name} certificates come from the {} CA (docs/design.md#the-hierarchy)",
                    issuer.name()
                ),
            };
            return Err(err(
                "issuer",
                format!(
                    "is `{}` but must be `{}` for kind `{kind_name}`: {why}",
                    self.issuer.name(),
                    issuer.name()
                ),
            ));
        }

        // Curves: meters and suppliers are P-256 only.
        if matches!(kind, ProfileKind::Meter | ProfileKind::Supplier)
            && self.curves != [Curve::P256]
        {
            return Err(err(
                "curves",
                format!(
                    "is {} but must be exactly [\"p256\"] for kind `{kind_name}`: {P256_ONLY}",
                    show(&self.curves, |c| c.name())
                ),
            ));
        }

        // keyUsage: fixed per kind.
        check_key_usage(kind, &self.key_usage).map_err(|r| err("key-usage", r))?;

        // certificatePolicies: required where the certificate must carry its own policy.
        if matches!(
            kind,
            ProfileKind::Meter | ProfileKind::Supplier | ProfileKind::TrustUpdateSigner
        ) && policy_oid.is_none()
        {
            return Err(err(
                "policy-oid",
                format!(
                    "missing: required for kind `{kind_name}`: these certificates carry a critical \
                     certificatePolicies extension with the profile's own policy OID (docs/design.md#certificates)"
                ),
            ));
        }

        // certificatePolicies criticality: end-entity profiles choose; CA certificates always
        // carry their policies non-critical.
        let policy_critical = self.policy_critical.unwrap_or(false);
        if self.policy_critical.is_some() && policy_oid.is_none() {
            return Err(err(
                "policy-critical",
                "given without policy-oid: there is no certificatePolicies extension to mark"
                    .to_string(),
            ));
        }
        // The entity ID's attribute: supplier certificates only. A profile written before the
        // field existed keeps the form its certificates have (x500UniqueIdentifier).
        if self.entity_id_form.is_some() && kind != ProfileKind::Supplier {
            return Err(err(
                "entity-id-form",
                format!("not allowed for kind `{kind_name}`: only supplier certificates carry an entity ID in their subject"),
            ));
        }
        let entity_id_form = self
            .entity_id_form
            .unwrap_or(EntityIdForm::X500UniqueIdentifier);
        if policy_critical && kind.is_ca() {
            return Err(err(
                "policy-critical",
                format!("not allowed for kind `{kind_name}`: CA certificates carry their policies non-critical, which every relying party's stack parses"),
            ));
        }

        // Device type: meters only, and always for meters.
        match (kind, device_type_oid) {
            (ProfileKind::Meter, None) => {
                return Err(err(
                    "device-type-oid",
                    "missing: required for kind `meter`: it is the hwType of the meter \
                     certificate's hardwareModuleName subjectAltName (RFC 4108; docs/design.md#certificates)"
                        .to_string(),
                ))
            }
            (ProfileKind::Meter, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(err(
                    "device-type-oid",
                    format!(
                        "not allowed for kind `{kind_name}`: only meter certificates carry a \
                         hardwareModuleName subjectAltName with a device type (docs/design.md#certificates)"
                    ),
                ))
            }
        }

        // extendedKeyUsage: exactly the TLS purpose for TLS kinds, none otherwise.
        let eku_given = self.extended_key_usage.is_some();
        let extended_key_usage = self.extended_key_usage.unwrap_or_default();
        let wanted_eku = match kind {
            ProfileKind::TlsServer => Some(ExtendedKeyUsage::ServerAuth),
            ProfileKind::TlsClient => Some(ExtendedKeyUsage::ClientAuth),
            _ => None,
        };
        match wanted_eku {
            Some(eku) if extended_key_usage != [eku] => {
                return Err(err(
                    "extended-key-usage",
                    format!(
                        "{}; it must be exactly [\"{}\"] for kind `{kind_name}`: a TLS \
                         certificate is good for one side of the connection only (docs/design.md#certificates)",
                        if eku_given {
                            format!("is {}", show(&extended_key_usage, |e| e.name()))
                        } else {
                            "missing".to_string()
                        },
                        eku.name()
                    ),
                ))
            }
            None if !extended_key_usage.is_empty() => {
                return Err(err(
                    "extended-key-usage",
                    format!(
                        "not allowed for kind `{kind_name}`: only tls-server and tls-client \
                         certificates carry an extendedKeyUsage (docs/design.md#certificates)"
                    ),
                ))
            }
            _ => {}
        }

        // basicConstraints pathLen: CA kinds only, and required there.
        let path_len = match (kind.is_ca(), self.path_len) {
            (true, None) => {
                return Err(err(
                    "path-len",
                    format!(
                        "missing: required for kind `{kind_name}`: CA certificates carry \
                         basicConstraints with a pathLenConstraint (root 1, issuing CAs 0: docs/design.md#certificates)"
                    ),
                ))
            }
            (true, Some(n)) => Some(u8::try_from(n).map_err(|_| {
                err(
                    "path-len",
                    format!("is {n} but must be between 0 and 255 (a pathLenConstraint is a small count of CA levels)"),
                )
            })?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(err(
                    "path-len",
                    format!(
                        "not allowed for kind `{kind_name}`: only CA certificates (root-ca, \
                         issuing-ca) carry basicConstraints"
                    ),
                ))
            }
        };

        // Bare public keys: meters only.
        let allow_bare_public_key = self.allow_bare_public_key.unwrap_or(false);
        if allow_bare_public_key && kind != ProfileKind::Meter {
            return Err(err(
                "allow-bare-public-key",
                format!(
                    "not allowed for kind `{kind_name}`: only meters, whose keys are made in the \
                     device at manufacture, may be certified from a bare public key; every other \
                     subject must prove possession of its private key with a CSR"
                ),
            ));
        }

        // A CA's own name (RFC 4514 text; parsed again where the certificate is made).
        if let Some(subject) = &self.subject {
            if !kind.is_ca() {
                return Err(err(
                    "subject",
                    format!(
                        "not allowed for kind `{kind_name}`: only CA profiles name their subject; \
                         end-entity subjects come from the request"
                    ),
                ));
            }
            if subject.trim().is_empty() || subject.len() > 512 || !subject.contains('=') {
                return Err(err(
                    "subject",
                    format!(
                        "{subject:?} is not a distinguished name: write RFC 4514 text such as \
                         \"CN=Example Root CA,O=Example\" (at most 512 characters)"
                    ),
                ));
            }
        }

        let validity = check_validity(kind, self.validity.as_deref(), self.validity_days)
            .map_err(|(field, reason)| err(field, reason))?;

        // The subjectKeyIdentifier's length: meters only (the size-bound certificates), 4 to 8.
        let key_identifier_bytes = match self.key_identifier_bytes {
            None => 8,
            Some(_) if kind != ProfileKind::Meter => {
                return Err(err(
                    "key-identifier-bytes",
                    format!("not allowed for kind `{kind_name}`: only meter certificates may shorten their subjectKeyIdentifier"),
                ))
            }
            Some(n) if (4..=8).contains(&n) => n as u8,
            Some(n) => {
                return Err(err(
                    "key-identifier-bytes",
                    format!("{n} is out of range: 4 to 8 octets (8 is RFC 5280 §4.2.1.2 method 2; fewer are its first octets)"),
                ))
            }
        };
        let max_der_bytes = match self.max_der_bytes {
            None => None,
            Some(n) if (MIN_DER_BYTES..=MAX_DER_BYTES).contains(&n) => usize::try_from(n).ok(),
            Some(n) => {
                return Err(err(
                    "max-der-bytes",
                    format!(
                        "is {n} but must be between {MIN_DER_BYTES} and {MAX_DER_BYTES}: no \
                         certificate fits in less, and none meterpki signs needs more"
                    ),
                ))
            }
        };

        Ok(Profile {
            name: self.name,
            kind,
            issuer,
            key_usage: self.key_usage,
            curves: self.curves,
            policy_oid,
            policy_critical,
            entity_id_form,
            device_type_oid,
            validity,
            allow_bare_public_key,
            crl_distribution_point: self.crl_distribution_point.unwrap_or(true),
            max_der_bytes,
            key_identifier_bytes,
            extended_key_usage,
            path_len,
            subject: self.subject,
        })
    }
}

/// Name rule: non-empty, `[a-z0-9-]`, at most 64 characters, equal to the file's stem.
fn check_name(file: &Path, name: &str) -> Result<(), ProfileError> {
    let err = |reason: String| ProfileError::new(file, "name", reason);
    const WHY: &str = "profile names are used as file names, in URLs and on the command line";
    if name.is_empty() {
        return Err(err(format!("must not be empty: {WHY}")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(err(format!(
            "contains {c:?}; only lower-case letters, digits and '-' are allowed: {WHY}"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(err(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed: {WHY}",
            name.len()
        )));
    }
    let stem = file.file_stem().and_then(|s| s.to_str());
    if stem != Some(name) {
        return Err(err(format!(
            "is `{name}` but the file is named `{}`: a profile's name must equal its file name \
             without \".toml\", so that no two files can define the same profile",
            file.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        )));
    }
    Ok(())
}

/// List rule (curves, key-usage): non-empty, no value twice.
fn check_list<T: Ord + Copy>(
    field: &str,
    what: &str,
    items: &[T],
    name: fn(T) -> &'static str,
) -> Result<(), String> {
    if items.is_empty() {
        return Err(format!(
            "is empty; list at least one {what}: a certificate needs {field}"
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = items.iter().find(|i| !seen.insert(**i)) {
        return Err(format!(
            "lists \"{}\" twice; give each {what} once",
            name(*dup)
        ));
    }
    Ok(())
}

/// keyUsage rule for each kind; the list is known to be non-empty and free of duplicates.
fn check_key_usage(kind: ProfileKind, bits: &[KeyUsageBit]) -> Result<(), String> {
    use KeyUsageBit::*;
    let shown = show(bits, KeyUsageBit::name);
    let kind_name = kind.name();
    match kind {
        ProfileKind::Meter | ProfileKind::Supplier => {
            if !matches!(bits, [DigitalSignature] | [KeyAgreement]) {
                return Err(format!(
                    "is {shown} but must be exactly one of [\"digital-signature\"] or \
                     [\"key-agreement\"] for kind `{kind_name}`: {ONE_BIT}"
                ));
            }
        }
        ProfileKind::TrustUpdateSigner | ProfileKind::TlsServer | ProfileKind::TlsClient => {
            if bits != [DigitalSignature] {
                let why = if kind == ProfileKind::TrustUpdateSigner {
                    "the trust-update signer only signs trust updates (docs/design.md#certificates)"
                } else {
                    "TLS with ECDSA keys and ECDHE key exchange needs only digitalSignature \
                     (RFC 8446, RFC 5246)"
                };
                return Err(format!(
                    "is {shown} but must be exactly [\"digital-signature\"] for kind \
                     `{kind_name}`: {why}"
                ));
            }
        }
        ProfileKind::RootCa | ProfileKind::IssuingCa => {
            let set: BTreeSet<_> = bits.iter().copied().collect();
            if set != BTreeSet::from([KeyCertSign, CrlSign]) {
                return Err(format!(
                    "is {shown} but must be exactly [\"key-cert-sign\", \"crl-sign\"] for kind \
                     `{kind_name}`: a CA key signs certificates and CRLs and nothing else \
                     (docs/design.md#certificates)"
                ));
            }
        }
    }
    Ok(())
}

/// Validity rule: exactly one of `validity = "unlimited"` (meters and CAs) and `validity-days`
/// (1 to 36500). Errors carry the field they name.
fn check_validity(
    kind: ProfileKind,
    validity: Option<&str>,
    days: Option<i64>,
) -> Result<Validity, (&'static str, String)> {
    const ONE: &str = "give exactly one of validity = \"unlimited\" (meters and CAs) and \
                       validity-days = <days>";
    match (validity, days) {
        (Some(_), Some(_)) => Err((
            "validity",
            format!("both validity and validity-days are given; {ONE}"),
        )),
        (None, None) => Err(("validity-days", format!("missing: {ONE}"))),
        (Some(v), None) => {
            if v != "unlimited" {
                Err((
                    "validity",
                    format!(
                        "is {v:?} but the only value allowed is \"unlimited\"; for a fixed \
                         lifetime use validity-days = <days>"
                    ),
                ))
            } else if !matches!(
                kind,
                ProfileKind::Meter | ProfileKind::RootCa | ProfileKind::IssuingCa
            ) {
                Err((
                    "validity",
                    format!(
                        "\"unlimited\" is not allowed for kind `{}`: only meters, devices without \
                         an end date, and the CAs above them (so that a meter's chain validates \
                         for the meter's whole life) get notAfter 99991231235959Z (RFC 5280 \
                         §4.1.2.5); use validity-days",
                        kind.name()
                    ),
                ))
            } else {
                Ok(Validity::Unlimited)
            }
        }
        (None, Some(d)) => match u32::try_from(d) {
            Ok(d) if (1..=MAX_VALIDITY_DAYS).contains(&i64::from(d)) => Ok(Validity::Days(d)),
            _ => Err((
                "validity-days",
                format!(
                    "is {d} but must be between 1 and {MAX_VALIDITY_DAYS} (100 years): a \
                     certificate must be valid for at least a day and no fixed lifetime \
                     needs more"
                ),
            )),
        },
    }
}

/// OID rule: well formed (as the DER encoder will need it) and at least 3 arcs.
fn parse_oid(text: &str) -> Result<ObjectIdentifier, String> {
    let oid = ObjectIdentifier::new(text).map_err(|e| {
        format!("{text:?} is not a valid OID ({e}); write it in dotted form, e.g. 1.3.6.1.4.1.32473.1.1")
    })?;
    let arcs = oid.arcs().count();
    if arcs < MIN_OID_ARCS {
        return Err(format!(
            "{text:?} has {arcs} arcs but an OID needs at least {MIN_OID_ARCS}: two arcs name \
             only a top-level standards body, never a policy or a device type"
        ));
    }
    Ok(oid)
}

/// Shows a list as it is written in the TOML, e.g. `["p256", "p384"]`.
fn show<T: Copy>(items: &[T], name: fn(T) -> &'static str) -> String {
    let inner: Vec<String> = items.iter().map(|i| format!("\"{}\"", name(*i))).collect();
    format!("[{}]", inner.join(", "))
}

/// Turns a TOML syntax or schema error into a [`ProfileError`], naming the key at fault when it
/// can be found: from the message (`unknown field `x``, `missing field `x``, `duplicate key `x``)
/// or else from the line the error points at.
pub(crate) fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ProfileError {
    let message = e.message().trim();
    let reason = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let field = key_in_message(message)
        .or_else(|| e.span().and_then(|span| key_at(text, span.start)))
        .unwrap_or_else(|| "(toml)".to_string());
    // A missing field has no line of its own (toml points at the whole document).
    let reason = match line_of(text, e.span().map(|s| s.start)) {
        Some(line) if !message.starts_with("missing field") => format!("line {line}: {reason}"),
        _ => reason,
    };
    ProfileError::new(file, field, reason)
}

/// The key named in a serde/toml message such as "unknown field `foo`, expected one of ...".
fn key_in_message(message: &str) -> Option<String> {
    [
        "unknown field `",
        "missing field `",
        "duplicate key `",
        "duplicate field `",
    ]
    .iter()
    .find_map(|prefix| {
        let rest = &message[message.find(prefix)? + prefix.len()..];
        let key = &rest[..rest.find('`')?];
        (!key.is_empty()).then(|| key.to_string())
    })
}

/// 1-based line number of byte offset `at` in `text`.
fn line_of(text: &str, at: Option<usize>) -> Option<usize> {
    let at = at?;
    let before = text.get(..at.min(text.len()))?;
    Some(before.matches('\n').count() + 1)
}

/// The key of the `key = value` line holding byte offset `at`; for an element of a multi-line
/// array, the key that opened the array.
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let lines: Vec<&str> = text.get(..start)?.lines().collect();
    let here = text.get(start..)?.lines().next().unwrap_or("");
    if let Some(key) = line_key(here) {
        return Some(key);
    }
    // Inside a multi-line array: walk up over element, blank and comment lines to the `key = [`.
    for line in lines.iter().rev() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') || t.starts_with('"') || t.starts_with('\'') {
            continue;
        }
        return line_key(line).filter(|_| t.contains('[') && !t.contains(']'));
    }
    None
}

/// The bare key of a `key = value` line, if the line is one.
fn line_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    bare.then(|| key.to_string())
}
