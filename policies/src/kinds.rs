//! The small vocabularies of a profile: what it is for, which CA signs it, its keyUsage bits,
//! curves, extendedKeyUsage purposes and validity.

use const_oid::ObjectIdentifier;
use serde::Deserialize;

/// What a certificate made with the profile is for (`kind` in the TOML).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    /// A meter (device) certificate, issued by the Device CA (`meter`).
    Meter,
    /// A supplier (organisation) certificate, issued by the Organisation CA (`supplier`).
    Supplier,
    /// The root CA's self-signed certificate (`root-ca`).
    RootCa,
    /// An issuing CA's certificate (Device, Organisation or Access CA), signed by the root (`issuing-ca`).
    IssuingCa,
    /// A TLS server certificate from the Access CA (`tls-server`).
    TlsServer,
    /// A TLS client certificate from the Access CA (`tls-client`).
    TlsClient,
    /// The trust-update signer's certificate, from the Organisation CA (`trust-update-signer`).
    TrustUpdateSigner,
}

impl ProfileKind {
    /// The kind as spelled in the TOML (`"meter"`, `"root-ca"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Meter => "meter",
            ProfileKind::Supplier => "supplier",
            ProfileKind::RootCa => "root-ca",
            ProfileKind::IssuingCa => "issuing-ca",
            ProfileKind::TlsServer => "tls-server",
            ProfileKind::TlsClient => "tls-client",
            ProfileKind::TrustUpdateSigner => "trust-update-signer",
        }
    }

    /// True for the CA kinds (`root-ca`, `issuing-ca`).
    pub fn is_ca(self) -> bool {
        matches!(self, ProfileKind::RootCa | ProfileKind::IssuingCa)
    }

    /// True for the TLS kinds (`tls-server`, `tls-client`).
    pub fn is_tls(self) -> bool {
        matches!(self, ProfileKind::TlsServer | ProfileKind::TlsClient)
    }

    /// The CA that must sign certificates of this kind (docs/design.md#the-hierarchy).
    pub fn required_issuer(self) -> CaKind {
        match self {
            ProfileKind::Meter => CaKind::Device,
            ProfileKind::Supplier | ProfileKind::TrustUpdateSigner => CaKind::Organisation,
            ProfileKind::TlsServer | ProfileKind::TlsClient => CaKind::Access,
            ProfileKind::RootCa | ProfileKind::IssuingCa => CaKind::Root,
        }
    }
}

/// The four certification authorities of the hierarchy (docs/design.md#the-hierarchy): the
/// one enum everything uses, from a profile's `issuer` to a store record, a key label and a CLI
/// flag.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CaKind {
    /// The P-384 root, on the root token; it also signs its own certificate.
    Root,
    /// The Device CA: meter certificates.
    Device,
    /// The Organisation CA: supplier certificates and the trust-update signer.
    Organisation,
    /// The Access CA: TLS certificates for the API.
    Access,
}

impl CaKind {
    /// The three issuing CAs, in the order they are listed.
    pub const ISSUING: [CaKind; 3] = [CaKind::Device, CaKind::Organisation, CaKind::Access];
    /// All four, root first.
    pub const ALL: [CaKind; 4] = [
        CaKind::Root,
        CaKind::Device,
        CaKind::Organisation,
        CaKind::Access,
    ];

    /// The name used in the TOML, paths, key labels, store records and the CLI: `"root"`,
    /// `"device"`, `"organisation"` or `"access"`.
    pub fn name(self) -> &'static str {
        match self {
            CaKind::Root => "root",
            CaKind::Device => "device",
            CaKind::Organisation => "organisation",
            CaKind::Access => "access",
        }
    }

    /// The CKA_LABEL of this CA's key pair in its token.
    pub fn key_label(self) -> String {
        format!("meterpki-{}-ca", self.name())
    }

    /// Parses a name (`organization` is accepted for `organisation`).
    pub fn from_name(name: &str) -> Option<CaKind> {
        match name {
            "root" => Some(CaKind::Root),
            "device" => Some(CaKind::Device),
            "organisation" | "organization" => Some(CaKind::Organisation),
            "access" => Some(CaKind::Access),
            _ => None,
        }
    }

    /// Parses the name of an issuing CA (not the root), with an error that lists them.
    pub fn parse_issuing(name: &str) -> Result<CaKind, String> {
        match CaKind::from_name(name) {
            Some(k) if k != CaKind::Root => Ok(k),
            _ => Err(format!(
                "{name:?} is not an issuing CA: device, organisation or access"
            )),
        }
    }
}

impl std::fmt::Display for CaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One keyUsage bit (RFC 5280 §4.2.1.3) (`key-usage` in the TOML).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyUsageBit {
    /// digitalSignature (`digital-signature`).
    DigitalSignature,
    /// keyAgreement (`key-agreement`).
    KeyAgreement,
    /// keyCertSign (`key-cert-sign`).
    KeyCertSign,
    /// cRLSign (`crl-sign`).
    CrlSign,
}

impl KeyUsageBit {
    /// The bit as spelled in the TOML (`"digital-signature"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KeyUsageBit::DigitalSignature => "digital-signature",
            KeyUsageBit::KeyAgreement => "key-agreement",
            KeyUsageBit::KeyCertSign => "key-cert-sign",
            KeyUsageBit::CrlSign => "crl-sign",
        }
    }
}

/// How a supplier certificate's subject carries the supplier's entity ID (`entity-id-form`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntityIdForm {
    /// x500UniqueIdentifier (2.5.4.45): a BIT STRING of the EUI-64's 8 bytes, as X.520 defines
    /// it and GB SMKI uses it. Go's crypto/x509 and several embedded stacks cannot parse a name
    /// holding a BIT STRING and refuse the whole certificate.
    X500UniqueIdentifier,
    /// serialNumber (2.5.4.5): a PrintableString of the EUI-64 as text
    /// (`90-B3-D5-1F-30-00-00-0A`), which every X.509 stack parses (Go reads it into
    /// `pkix.Name.SerialNumber`).
    SerialNumber,
}

impl EntityIdForm {
    /// The form as spelled in the TOML.
    pub fn name(self) -> &'static str {
        match self {
            EntityIdForm::X500UniqueIdentifier => "x500-unique-identifier",
            EntityIdForm::SerialNumber => "serial-number",
        }
    }
}

/// An elliptic curve a subject key may use (`curves` in the TOML).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Curve {
    /// NIST P-256 / secp256r1 (`p256`).
    P256,
    /// NIST P-384 / secp384r1 (`p384`).
    P384,
}

impl Curve {
    /// The curve as spelled in the TOML: `"p256"` or `"p384"`.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "p256",
            Curve::P384 => "p384",
        }
    }
}

/// An extendedKeyUsage purpose (`extended-key-usage` in the TOML).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtendedKeyUsage {
    /// id-kp-serverAuth (`server-auth`).
    ServerAuth,
    /// id-kp-clientAuth (`client-auth`).
    ClientAuth,
}

impl ExtendedKeyUsage {
    /// The purpose as spelled in the TOML: `"server-auth"` or `"client-auth"`.
    pub fn name(self) -> &'static str {
        match self {
            ExtendedKeyUsage::ServerAuth => "server-auth",
            ExtendedKeyUsage::ClientAuth => "client-auth",
        }
    }

    /// The purpose's OID: 1.3.6.1.5.5.7.3.1 (serverAuth) or 1.3.6.1.5.5.7.3.2 (clientAuth).
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            ExtendedKeyUsage::ServerAuth => const_oid::db::rfc5280::ID_KP_SERVER_AUTH,
            ExtendedKeyUsage::ClientAuth => const_oid::db::rfc5280::ID_KP_CLIENT_AUTH,
        }
    }
}

/// How long certificates made with a profile are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// No end date: notAfter = `99991231235959Z` (RFC 5280 §4.1.2.5). Meters, and the CAs
    /// whose chains meters hold for their whole life.
    Unlimited,
    /// This many days from issuance (1 to 36500).
    Days(u32),
}
