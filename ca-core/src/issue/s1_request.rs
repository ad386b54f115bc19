//! Step 1: a request item (JSON) becomes a [`Request`]: profile found, subject identified, the
//! public key taken from a PKCS#10 CSR whose signature proves possession of the private key, or
//! from a bare SubjectPublicKeyInfo where the profile allows it.

use base64::Engine as _;
use der::{Decode, Encode};
use policies::{Curve, Profile, ProfileKind, ProfileSet};
use sha2::Digest;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::request::CertReq;

use super::error::{ErrorCode, IssueError};
use crate::model::Eui64;
use crate::signer::{
    verify_signature_fast, ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, ID_EC_PUBLIC_KEY, SECP256R1,
    SECP384R1,
};

/// One request item, as in a CLI NDJSON line or an API batch's `items` (docs/design.md#issuance).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestItem {
    /// Profile name, e.g. `meter-signing`.
    pub profile: String,
    /// The meter's EUI-64 (meter profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The party's EUI-64 entity ID (supplier profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// The party's registered name, CN= (supplier profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PKCS#10 CSR: base64 DER, or PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// A bare SubjectPublicKeyInfo, base64 DER (only where the profile allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Replace an active certificate held for the same device and usage with another key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
    /// Certify the same key again when its active certificate comes from an earlier generation
    /// of the issuing CA (set by re-certification campaigns, never read from a request: an
    /// API batch or batch file sending the same key again gets the certificate it has).
    #[serde(skip)]
    pub recertify: bool,
}

/// Who the certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A meter, by its EUI-64 (the certificate's subject is empty; the ID is in the SAN).
    Device(Eui64),
    /// A party (supplier): entity ID and registered name.
    Party {
        /// EUI-64 entity ID.
        entity_id: Eui64,
        /// Registered name.
        name: String,
    },
    /// A TLS client (an API account) or the API server.
    Tls {
        /// CN=.
        common_name: String,
        /// OU= (the account's role), if any.
        unit: Option<String>,
        /// subjectAltName dNSNames (servers).
        dns: Vec<String>,
        /// subjectAltName iPAddresses (servers).
        ips: Vec<std::net::IpAddr>,
    },
}

impl Subject {
    /// The ID the certificate is indexed under: the EUI-64 for meters and parties,
    /// `tls:<common name>` for TLS certificates.
    pub fn key(&self) -> String {
        match self {
            Subject::Device(d) => d.to_string(),
            Subject::Party { entity_id, .. } => entity_id.to_string(),
            Subject::Tls { common_name, .. } => format!("tls:{common_name}"),
        }
    }
}

/// A parsed request whose key is proven.
#[derive(Clone, Debug)]
pub struct Request {
    /// The profile.
    pub profile: Profile,
    /// The subject.
    pub subject: Subject,
    /// The subject's public key.
    pub spki: SubjectPublicKeyInfoOwned,
    /// SHA-256 of the SPKI DER: the key's identity for idempotency.
    pub key_hash: [u8; 32],
    /// Replace an existing active certificate.
    pub replace: bool,
    /// The key came as a bare SubjectPublicKeyInfo (no proof of possession).
    pub bare: bool,
    /// Certify the same key again when its active certificate comes from an earlier generation
    /// of the issuing CA; otherwise that certificate is the answer.
    pub recertify: bool,
}

fn err(code: ErrorCode, detail: impl Into<String>) -> IssueError {
    IssueError::new(code, detail)
}

/// Base64 (padded or not, standard or URL-safe) or PEM, to DER.
fn decode_blob(field: &str, text: &str, pem_label: &str) -> Result<Vec<u8>, IssueError> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        let (label, der) = der::pem::decode_vec(t.as_bytes()).map_err(|e| {
            err(
                ErrorCode::CsrMalformed,
                format!("{field}: not valid PEM: {e}"),
            )
        })?;
        if label != pem_label
            && !(pem_label == "CERTIFICATE REQUEST" && label == "NEW CERTIFICATE REQUEST")
        {
            return Err(err(
                ErrorCode::CsrMalformed,
                format!("{field}: PEM label is {label:?}, expected {pem_label:?}"),
            ));
        }
        return Ok(der);
    }
    // One canonical form, as documented: standard base64 (RFC 4648 §4) with its padding, no
    // spaces or line breaks (those belong to PEM), no URL-safe alphabet. Whatever else is
    // refused naming the field, so that two spellings of one request never exist.
    if text.chars().any(char::is_whitespace) {
        return Err(err(
            ErrorCode::CsrMalformed,
            format!("{field}: base64 with spaces or line breaks: send standard base64 of the DER on one line, or PEM"),
        ));
    }
    if text.contains(['-', '_']) {
        return Err(err(
            ErrorCode::CsrMalformed,
            format!("{field}: URL-safe base64 ('-' or '_'): send standard base64 (RFC 4648 §4) of the DER, or PEM"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| {
            err(
                ErrorCode::CsrMalformed,
                format!("{field}: not standard padded base64 of DER, nor PEM: {e}"),
            )
        })
}

/// An EUI-64 from a request item, in one of the documented spellings and nothing around it.
fn item_eui64(field: &str, text: &str) -> Result<Eui64, IssueError> {
    if text.trim() != text {
        return Err(err(
            ErrorCode::DeviceId,
            format!("{field}: {text:?} has spaces around it"),
        ));
    }
    text.parse()
        .map_err(|e| err(ErrorCode::DeviceId, format!("{field}: {e}")))
}

/// Checks that `spki` is a key the profile takes: EC, on one of its curves, a valid
/// uncompressed point.
pub(crate) fn check_key(
    profile: &Profile,
    spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), IssueError> {
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        let what = match spki.algorithm.oid.to_string().as_str() {
            "1.2.840.113549.1.1.1" => "an RSA key".to_string(),
            "1.3.101.112" => "an Ed25519 key".to_string(),
            other => format!("a key of algorithm {other}"),
        };
        return Err(err(
            ErrorCode::KeyType,
            format!(
                "{what} is not accepted: profile {} takes EC keys",
                profile.name()
            ),
        ));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
        .ok_or_else(|| {
            err(
                ErrorCode::Curve,
                "the EC key does not name its curve (namedCurve required, RFC 5480)",
            )
        })?;
    let ours = match curve {
        c if c == SECP256R1 => Some(Curve::P256),
        c if c == SECP384R1 => Some(Curve::P384),
        _ => None,
    };
    let Some(ours) = ours.filter(|c| profile.curves().contains(c)) else {
        let name = match curve.to_string().as_str() {
            "1.3.132.0.10" => "secp256k1".to_string(),
            "1.3.132.0.34" => "P-384".to_string(),
            "1.3.132.0.35" => "P-521".to_string(),
            "1.2.840.10045.3.1.7" => "P-256".to_string(),
            other => other.to_string(),
        };
        let allowed: Vec<&str> = profile
            .curves()
            .iter()
            .map(|c| match c {
                Curve::P256 => "P-256",
                Curve::P384 => "P-384",
            })
            .collect();
        return Err(err(
            ErrorCode::Curve,
            format!(
                "curve {name} is not accepted: profile {} takes {}",
                profile.name(),
                allowed.join(", ")
            ),
        ));
    };
    // Whatever is copied into a certificate must be canonical DER: a key is whole bytes.
    if spki.subject_public_key.unused_bits() != 0 {
        return Err(err(
            ErrorCode::PointNotOnCurve,
            format!(
                "the public key's BIT STRING declares {} unused bit(s): an EC public key is a whole number of bytes (RFC 5480 §2.2)",
                spki.subject_public_key.unused_bits()
            ),
        ));
    }
    let point = spki.subject_public_key.raw_bytes();
    let want = match ours {
        Curve::P256 => 65,
        Curve::P384 => 97,
    };
    if point.len() != want || point[0] != 0x04 {
        return Err(err(
            ErrorCode::PointNotOnCurve,
            format!(
                "the public key must be an uncompressed point of {want} bytes, got {} bytes",
                point.len()
            ),
        ));
    }
    let valid = match ours {
        Curve::P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
        Curve::P384 => p384::PublicKey::from_sec1_bytes(point).is_ok(),
    };
    if !valid {
        return Err(err(
            ErrorCode::PointNotOnCurve,
            "the public key is not a point on its curve",
        ));
    }
    if ours == Curve::P256 && small_multiple_of_g(&point[1..33]) {
        return Err(err(
            ErrorCode::WeakKey,
            "the public key is a small multiple of the curve's generator: its private key is a small number anyone can find",
        ));
    }
    Ok(())
}

/// How many multiples of the generator (and their negatives, which share the x-coordinate)
/// are refused as public keys: private keys 1 to this, found by trying them.
const SMALL_MULTIPLES: u64 = 1024;

/// True when `x` is the x-coordinate of k·G for some 1 <= k <= [`SMALL_MULTIPLES`] (P-256).
fn small_multiple_of_g(x: &[u8]) -> bool {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    static XS: std::sync::OnceLock<std::collections::HashSet<[u8; 32]>> =
        std::sync::OnceLock::new();
    let xs = XS.get_or_init(|| {
        let g = p256::ProjectivePoint::GENERATOR;
        let mut p = g;
        let mut out = std::collections::HashSet::new();
        for _ in 0..SMALL_MULTIPLES {
            let enc = p256::AffinePoint::from(p).to_encoded_point(false);
            if let Some(px) = enc.x() {
                let mut k = [0u8; 32];
                k.copy_from_slice(px);
                out.insert(k);
            }
            p += g;
        }
        out
    });
    <[u8; 32]>::try_from(x).is_ok_and(|k| xs.contains(&k))
}

/// Parses a CSR and verifies its self-signature (proof of possession).
fn key_from_csr(profile: &Profile, text: &str) -> Result<SubjectPublicKeyInfoOwned, IssueError> {
    let der = decode_blob("csr", text, "CERTIFICATE REQUEST")?;
    let csr = CertReq::from_der(&der).map_err(|e| {
        err(
            ErrorCode::CsrMalformed,
            format!("csr: not a PKCS#10 request: {e}"),
        )
    })?;
    let spki = csr.info.public_key.clone();
    check_key(profile, &spki)?;
    let alg = csr.algorithm.oid;
    if alg != ECDSA_WITH_SHA256 && alg != ECDSA_WITH_SHA384 {
        return Err(err(
            ErrorCode::CsrSignature,
            format!("csr: signature algorithm {alg} is not ecdsa-with-SHA256 or -SHA384"),
        ));
    }
    // The der crate decodes strict DER only, so re-encoding the request info gives back exactly
    // the bytes that were signed.
    let info = csr
        .info
        .to_der()
        .map_err(|e| err(ErrorCode::CsrMalformed, format!("csr: {e}")))?;
    let sig = csr
        .signature
        .as_bytes()
        .ok_or_else(|| err(ErrorCode::CsrSignature, "csr: signature has unused bits"))?;
    let digest_matches_alg = match crate::signer::KeyAlgorithm::of_spki(&spki) {
        Some(crate::signer::KeyAlgorithm::EcP256) => alg == ECDSA_WITH_SHA256,
        Some(crate::signer::KeyAlgorithm::EcP384) => alg == ECDSA_WITH_SHA384,
        None => false,
    };
    if !digest_matches_alg {
        return Err(err(
            ErrorCode::CsrSignature,
            "csr: the signature's hash does not match the key's curve (P-256 with SHA-256, P-384 with SHA-384)",
        ));
    }
    verify_signature_fast(&spki, &info, sig).map_err(|e| {
        err(
            ErrorCode::CsrSignature,
            format!("csr: the signature does not verify with the CSR's own key ({e}): no proof of possession"),
        )
    })?;
    Ok(spki)
}

/// Turns one item into a [`Request`].
pub fn parse_request(item: &RequestItem, profiles: &ProfileSet) -> Result<Request, IssueError> {
    let profile = profiles.get(&item.profile).ok_or_else(|| {
        err(
            ErrorCode::ProfileUnknown,
            format!(
                "profile {:?} does not exist; profiles: {}",
                item.profile,
                profiles.names().join(", ")
            ),
        )
    })?;
    let subject = match profile.kind() {
        ProfileKind::Meter => {
            if item.entity_id.is_some() || item.name.is_some() {
                return Err(err(
                    ErrorCode::ProfileLimit,
                    format!(
                        "profile {} names a device: give device_id, not entity_id or name",
                        profile.name()
                    ),
                ));
            }
            let id = item.device_id.as_deref().ok_or_else(|| {
                err(
                    ErrorCode::ProfileLimit,
                    format!("device_id is required for profile {}", profile.name()),
                )
            })?;
            Subject::Device(item_eui64("device_id", id)?)
        }
        ProfileKind::Supplier => {
            if item.device_id.is_some() {
                return Err(err(
                    ErrorCode::ProfileLimit,
                    format!(
                        "profile {} names a party: give entity_id and name, not device_id",
                        profile.name()
                    ),
                ));
            }
            let id = item.entity_id.as_deref().ok_or_else(|| {
                err(
                    ErrorCode::ProfileLimit,
                    format!("entity_id is required for profile {}", profile.name()),
                )
            })?;
            let entity_id = item_eui64("entity_id", id)?;
            // The name is the registered one (the policy step fills it in); a request may give
            // it, and then it must match.
            let name = item.name.clone().unwrap_or_default();
            if item.name.is_some() {
                crate::model::check_supplier_name(&name)
                    .map_err(|e| err(ErrorCode::ProfileLimit, e))?;
            }
            Subject::Party { entity_id, name }
        }
        _ => {
            return Err(err(
                ErrorCode::ProfileLimit,
                format!(
                    "profile {} is not issued through requests (meter and supplier profiles are)",
                    profile.name()
                ),
            ))
        }
    };
    let spki = match (&item.csr, &item.public_key) {
        (Some(_), Some(_)) => {
            return Err(err(
                ErrorCode::ProfileLimit,
                "give csr or public_key, not both",
            ));
        }
        (None, None) => return Err(err(ErrorCode::ProfileLimit, "csr is required")),
        (Some(csr), None) => key_from_csr(profile, csr)?,
        (None, Some(pk)) => {
            if !profile.allow_bare_public_key() {
                return Err(err(
                    ErrorCode::ProfileLimit,
                    format!("profile {} requires a CSR (proof of possession); public_key is not allowed", profile.name()),
                ));
            }
            let der = decode_blob("public_key", pk, "PUBLIC KEY")?;
            let spki = SubjectPublicKeyInfoOwned::from_der(&der).map_err(|e| {
                err(
                    ErrorCode::CsrMalformed,
                    format!("public_key: not a SubjectPublicKeyInfo: {e}"),
                )
            })?;
            check_key(profile, &spki)?;
            spki
        }
    };
    let spki_der = spki
        .to_der()
        .map_err(|e| err(ErrorCode::CsrMalformed, format!("public key: {e}")))?;
    let key_hash: [u8; 32] = sha2::Sha256::digest(&spki_der).into();
    Ok(Request {
        profile: profile.clone(),
        subject,
        spki,
        key_hash,
        replace: item.replace,
        bare: item.csr.is_none(),
        recertify: item.recertify,
    })
}

/// Where a TLS request's key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A PKCS#10 CSR (base64 DER or PEM), proof of possession checked.
    Csr(String),
    /// A key the caller generated itself (an account's key made by the CLI).
    Spki(SubjectPublicKeyInfoOwned),
}

/// Builds a request for a TLS profile (`api-server`, `api-client`) or the trust-update signer:
/// these are not issued from request items but by the operator (`account add`, the server's own
/// certificate, the signer of trust-anchor updates), and name a CN.
pub fn tls_request(
    profiles: &ProfileSet,
    profile: &str,
    subject: Subject,
    key: KeySource,
    replace: bool,
) -> Result<Request, IssueError> {
    let profile = profiles.get(profile).ok_or_else(|| {
        err(
            ErrorCode::ProfileUnknown,
            format!("profile {profile:?} does not exist"),
        )
    })?;
    if !matches!(
        profile.kind(),
        ProfileKind::TlsServer | ProfileKind::TlsClient | ProfileKind::TrustUpdateSigner
    ) {
        return Err(err(
            ErrorCode::ProfileLimit,
            format!(
                "profile {} is not issued by the operator (TLS and trust-update-signer profiles are)",
                profile.name()
            ),
        ));
    }
    let Subject::Tls {
        common_name,
        dns,
        ips,
        ..
    } = &subject
    else {
        return Err(err(
            ErrorCode::ProfileLimit,
            "a TLS certificate names a TLS subject",
        ));
    };
    if common_name.trim().is_empty()
        || common_name.chars().count() > 64
        || common_name.chars().any(char::is_control)
    {
        return Err(err(
            ErrorCode::ProfileLimit,
            "common name: 1 to 64 printable characters",
        ));
    }
    if profile.kind() == ProfileKind::TlsServer && dns.is_empty() && ips.is_empty() {
        return Err(err(
            ErrorCode::ProfileLimit,
            "a server certificate needs at least one DNS name or IP address",
        ));
    }
    for d in dns {
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(err(
                ErrorCode::ProfileLimit,
                format!(
                    "{d:?} is not a DNS name (letters, digits and '-' in dot-separated labels)"
                ),
            ));
        }
    }
    let spki = match key {
        KeySource::Csr(text) => key_from_csr(profile, &text)?,
        KeySource::Spki(spki) => {
            check_key(profile, &spki)?;
            spki
        }
    };
    let spki_der = spki
        .to_der()
        .map_err(|e| err(ErrorCode::CsrMalformed, format!("public key: {e}")))?;
    Ok(Request {
        profile: profile.clone(),
        subject,
        key_hash: sha2::Sha256::digest(&spki_der).into(),
        spki,
        replace,
        bare: false,
        recertify: false,
    })
}
