//! Step 3: an [`Approved`] request becomes a TBSCertificate: a fresh serial, the CRL shard it is
//! bound to, the profile's extensions.
//!
//! Written with `x509-cert` types rather than its builder: the meter certificate's exact shape
//! (empty subject, critical hardwareModuleName SAN, 8-octet key identifiers,
//! `99991231235959Z`) is the product, so every field is chosen here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{
    Any, BitString, GeneralizedTime, Ia5String, ObjectIdentifier, OctetString, SetOfVec,
    Utf8StringRef,
};
use der::{Encode, Sequence};
use policies::{KeyUsageBit, Profile, Validity};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName, OtherName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, CertificatePolicies, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity as X509Validity};
use x509_cert::{TbsCertificate, Version};

use super::error::{ErrorCode, IssueError};
use super::s1_request::Subject;
use super::s2_policy::Approved;
use super::IssuerCtx;
use crate::certs::{key_identifier, x509_time};

/// id-on-hardwareModuleName (RFC 4108 §5).
pub const ID_ON_HARDWARE_MODULE_NAME: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.8.4");
/// serialNumber (X.520, RFC 4519 §2.31): the entity ID in the `serial-number` form.
pub const SERIAL_NUMBER_ATTRIBUTE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
/// x500UniqueIdentifier (X.520, RFC 4519 §2.39).
pub const X500_UNIQUE_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.45");
const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");

/// `HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }`
/// (RFC 4108 §5).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct HardwareModuleName {
    /// The device type.
    pub hw_type: ObjectIdentifier,
    /// The device's serial: here its 8-byte EUI-64.
    pub hw_serial_num: OctetString,
}

/// The party role code of a supplier (GB SMKI: OU=02).
pub const SUPPLIER_ROLE_CODE: &str = "02";

/// notAfter for devices without an end date: `99991231235959Z` (RFC 5280 §4.1.2.5).
use crate::certs::NO_END_UNIX as NO_WELL_DEFINED_EXPIRATION;

/// Where a certificate's CRL is published.
#[derive(Clone, Debug)]
pub struct CrlSettings {
    /// Shards per issuer (N).
    pub shards: u32,
    /// Base URL; the certificate names `<base>/<issuer>/<shard>.crl`. None: no pointer.
    pub base_url: Option<String>,
    /// Hours from a CRL's thisUpdate to its nextUpdate.
    pub next_update_hours: u32,
    /// Days from the ARL's thisUpdate to its nextUpdate.
    pub arl_next_update_days: u32,
}

impl CrlSettings {
    /// The shard's URL.
    pub fn url(&self, issuer: &str, shard: u32) -> Option<String> {
        self.base_url
            .as_ref()
            .map(|b| format!("{}/{issuer}/{shard}.crl", b.trim_end_matches('/')))
    }

    /// The ARL's URL of root generation `root` (`<base>/root/arl.crl`, `<base>/root-g2/arl.crl`),
    /// named by the certificates that root issues.
    pub fn arl_url(&self, root: crate::IssuerId) -> Option<String> {
        self.base_url
            .as_ref()
            .map(|b| format!("{}/{root}/arl.crl", b.trim_end_matches('/')))
    }

    /// Seconds from a CRL's thisUpdate to its nextUpdate: the ARL's for the root.
    pub fn lifetime_secs(&self, issuer: crate::CaKind) -> i64 {
        if issuer == crate::CaKind::Root {
            i64::from(self.arl_next_update_days) * 86_400
        } else {
            i64::from(self.next_update_hours) * 3600
        }
    }
}

/// A built, unsigned certificate body and what it was built from.
#[derive(Clone, Debug)]
pub struct Tbs {
    pub(crate) approved: Approved,
    pub(crate) tbs: TbsCertificate,
    pub(crate) serial: Vec<u8>,
    pub(crate) shard: u32,
    pub(crate) crl_url: Option<String>,
    pub(crate) issued_at: i64,
}

fn internal(e: impl std::fmt::Display) -> IssueError {
    IssueError::new(ErrorCode::Internal, e.to_string())
}

/// A serial of 9 octets: one octet that changes every second (cycling through 1..=127), then 64
/// random bits (docs/design.md#certificates asks for at least 64 random bits, and a meter
/// certificate must stay within 410 bytes, so no octet more). Positive and minimally encoded. A collision is caught when the
/// certificate is stored, which refuses a serial already used.
///
/// The first octet is for the store, not for anyone reading the serial: with purely random
/// serials every new certificate landed in a random leaf of the store's B-tree, so each insert
/// paged in and rewrote a cold page. With it, the certificates issued in one second all go to
/// one 127th of the tree (a few hundred pages for a million certificates), read in once.
fn fresh_serial() -> Vec<u8> {
    use rand::RngCore;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut b = [0u8; 9];
    b[0] = (secs % 127) as u8 + 1;
    rand::rngs::OsRng.fill_bytes(&mut b[1..]);
    b.to_vec()
}

/// The shard a serial belongs to: fixed by the serial, so it never moves.
pub fn shard_of(serial: &[u8], shards: u32) -> u32 {
    let mut v = [0u8; 4];
    let n = serial.len().min(4);
    v[4 - n..].copy_from_slice(&serial[serial.len() - n..]);
    u32::from_be_bytes(v) % shards.max(1)
}

fn key_usage(bits: &[KeyUsageBit]) -> KeyUsage {
    let mut ku = flagset::FlagSet::<KeyUsages>::default();
    for b in bits {
        ku |= match b {
            KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
            KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
            KeyUsageBit::KeyCertSign => KeyUsages::KeyCertSign,
            KeyUsageBit::CrlSign => KeyUsages::CRLSign,
        };
    }
    KeyUsage(ku)
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, IssueError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(internal)?).map_err(internal)?,
    })
}

fn party_name(
    entity_id: &crate::model::Eui64,
    name: &str,
    form: policies::EntityIdForm,
) -> Result<RdnSequence, IssueError> {
    let rdn =
        |oid: ObjectIdentifier, value: Any| -> Result<RelativeDistinguishedName, IssueError> {
            let set =
                SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }]).map_err(internal)?;
            Ok(RelativeDistinguishedName(set))
        };
    let utf8 =
        |s: &str| Any::encode_from(&Utf8StringRef::new(s).map_err(internal)?).map_err(internal);
    let id = match form {
        // UniqueIdentifier ::= BIT STRING (X.520): the 8 bytes of the EUI-64, no unused bits.
        policies::EntityIdForm::X500UniqueIdentifier => rdn(
            X500_UNIQUE_IDENTIFIER,
            Any::encode_from(&BitString::from_bytes(entity_id.bytes()).map_err(internal)?)
                .map_err(internal)?,
        )?,
        // serialNumber ::= PrintableString (SIZE (1..64)) (X.520): the EUI-64 as text.
        policies::EntityIdForm::SerialNumber => rdn(
            SERIAL_NUMBER_ATTRIBUTE,
            Any::encode_from(
                &der::asn1::PrintableStringRef::new(&entity_id.to_string()).map_err(internal)?,
            )
            .map_err(internal)?,
        )?,
    };
    Ok(RdnSequence(vec![
        rdn(CN, utf8(name)?)?,
        rdn(OU, utf8(SUPPLIER_ROLE_CODE)?)?,
        id,
    ]))
}

/// certificatePolicies is critical on meter and supplier certificates (docs/design.md#certificates), where the
/// policy is what binds the key to its use; on TLS certificates it is not, so that generic TLS
/// stacks (which reject unknown critical extensions) accept them.
pub(crate) fn policies_critical(profile: &Profile) -> bool {
    profile.policy_critical()
}

fn tls_name(common_name: &str, unit: Option<&str>) -> Result<RdnSequence, IssueError> {
    let rdn =
        |oid: ObjectIdentifier, value: &str| -> Result<RelativeDistinguishedName, IssueError> {
            let value = Any::encode_from(&Utf8StringRef::new(value).map_err(internal)?)
                .map_err(internal)?;
            let set =
                SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }]).map_err(internal)?;
            Ok(RelativeDistinguishedName(set))
        };
    let mut rdns = vec![rdn(CN, common_name)?];
    if let Some(u) = unit {
        rdns.push(rdn(OU, u)?);
    }
    Ok(RdnSequence(rdns))
}

/// Builds the TBSCertificate for `approved` under `issuer`.
pub(super) fn build_tbs(
    approved: Approved,
    issuer: &IssuerCtx,
    crl: &CrlSettings,
    now: SystemTime,
) -> Result<Tbs, IssueError> {
    let req = &approved.request;
    let profile: &Profile = &req.profile;
    let serial = fresh_serial();
    let shard = shard_of(&serial, crl.shards);
    let now_secs = now.duration_since(UNIX_EPOCH).map_err(internal)?.as_secs();
    let not_before = x509_time(UNIX_EPOCH + Duration::from_secs(now_secs)).map_err(internal)?;
    let not_after = match profile.validity() {
        Validity::Unlimited => Time::GeneralTime(
            GeneralizedTime::from_unix_duration(Duration::from_secs(NO_WELL_DEFINED_EXPIRATION))
                .map_err(internal)?,
        ),
        Validity::Days(d) => {
            // notBefore and notAfter are both inside the period (RFC 5280 §4.1.2.5): d days
            // end one second before the same time d days later.
            let end = now_secs + u64::from(d) * 86_400 - 1;
            let issuer_end = issuer.not_after_unix;
            x509_time(UNIX_EPOCH + Duration::from_secs(end.min(issuer_end))).map_err(internal)?
        }
    };

    let mut exts = Vec::with_capacity(6);
    let subject = match &req.subject {
        Subject::Device(id) => {
            let hw_type = profile.device_type_oid().ok_or_else(|| {
                internal(format!("profile {} has no device-type-oid", profile.name()))
            })?;
            let hmn = HardwareModuleName {
                hw_type,
                hw_serial_num: OctetString::new(id.bytes().to_vec()).map_err(internal)?,
            };
            let san = SubjectAltName(vec![GeneralName::OtherName(OtherName {
                type_id: ID_ON_HARDWARE_MODULE_NAME,
                value: Any::encode_from(&hmn).map_err(internal)?,
            })]);
            // Subject empty, so the SAN is critical (RFC 5280 §4.2.1.6).
            exts.push(extension(
                const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME,
                true,
                &san,
            )?);
            RdnSequence(Vec::new())
        }
        Subject::Party { entity_id, name } => {
            party_name(entity_id, name, profile.entity_id_form())?
        }
        Subject::Tls {
            common_name,
            unit,
            dns,
            ips,
        } => {
            let mut names: Vec<GeneralName> = Vec::new();
            for d in dns {
                names.push(GeneralName::DnsName(Ia5String::new(d).map_err(internal)?));
            }
            for ip in ips {
                let octets = match ip {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                names.push(GeneralName::IpAddress(
                    OctetString::new(octets).map_err(internal)?,
                ));
            }
            if names.is_empty() {
                // A client names no host; TLS verifiers that expect a subjectAltName on every
                // certificate get the account as a URI (RFC 5280 §4.2.1.6) under the reserved
                // `.invalid` name (RFC 2606): it identifies, it resolves nowhere.
                names.push(GeneralName::UniformResourceIdentifier(
                    Ia5String::new(&format!("https://accounts.meterpki.invalid/{common_name}"))
                        .map_err(internal)?,
                ));
            }
            {
                // The subject is not empty, so the SAN is not critical (RFC 5280 §4.2.1.6).
                exts.push(extension(
                    const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME,
                    false,
                    &SubjectAltName(names),
                )?);
            }
            tls_name(common_name, unit.as_deref())?
        }
    };
    exts.push(extension(
        const_oid::db::rfc5280::ID_CE_KEY_USAGE,
        true,
        &key_usage(profile.key_usage()),
    )?);
    if !profile.extended_key_usage().is_empty() {
        let eku = ExtendedKeyUsage(
            profile
                .extended_key_usage()
                .iter()
                .map(|e| e.oid())
                .collect(),
        );
        exts.push(extension(
            const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &eku,
        )?);
    }
    if let Some(policy) = profile.policy_oid() {
        let cp = CertificatePolicies(vec![PolicyInformation {
            policy_identifier: policy,
            policy_qualifiers: None,
        }]);
        exts.push(extension(
            const_oid::db::rfc5280::ID_CE_CERTIFICATE_POLICIES,
            policies_critical(profile),
            &cp,
        )?);
    }
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(issuer.key_id.to_vec()).map_err(internal)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    exts.push(extension(
        const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
        false,
        &aki,
    )?);
    let ski = SubjectKeyIdentifier(
        OctetString::new(key_identifier(&req.spki)[..profile.key_identifier_bytes()].to_vec())
            .map_err(internal)?,
    );
    exts.push(extension(
        const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
        false,
        &ski,
    )?);
    let crl_url = if profile.crl_distribution_point() {
        crl.url(&issuer.id().name(), shard)
    } else {
        None
    };
    {
        if let Some(url) = &crl_url {
            let dp = CrlDistributionPoints(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(Ia5String::new(url).map_err(internal)?),
                ])),
                reasons: None,
                crl_issuer: None,
            }]);
            exts.push(extension(
                const_oid::db::rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS,
                false,
                &dp,
            )?);
        }
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(internal)?,
        signature: issuer.algorithm.signature_algorithm(),
        issuer: issuer.subject.clone(),
        validity: X509Validity {
            not_before,
            not_after,
        },
        subject,
        subject_public_key_info: req.spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    };
    Ok(Tbs {
        approved,
        tbs,
        serial,
        shard,
        crl_url,
        issued_at: now_secs as i64,
    })
}
