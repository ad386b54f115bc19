//! The test PKI (P-384 root -> P-256 Organisation CA -> P-256 TAMP signer) and the inputs the
//! tests share: policies, hardware type, meter, update content and verification options.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ca_core::tamp::{UpdateContent, UpdateSigner, VerifyOptions};
use ca_core::{
    build_ca_certificate, build_self_signed_root, key_identifier, CaCertSpec, Eui64, Signer,
};
use der::asn1::{BitString, ObjectIdentifier, OctetString};
use der::Encode;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::common::SoftSigner;

pub(crate) const TEST_POLICY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.2.3");
pub(crate) const OTHER_POLICY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.2.4");
pub(crate) const HW_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.3.4");
pub(crate) const DEVICE: Eui64 = Eui64([0x00, 0xdb, 0x12, 0x34, 0x56, 0x78, 0x90, 0x01]);

fn spec(subject: &str, path_len: u8) -> CaCertSpec {
    CaCertSpec {
        subject: subject.into(),
        validity: policies::Validity::Days(3650),
        path_len,
        policies: Vec::new(),
        crl_url: None,
        extra_extensions: Vec::new(),
    }
}

fn extension<T: Encode>(oid: &str, critical: bool, value: &T) -> Extension {
    Extension {
        extn_id: ObjectIdentifier::new_unwrap(oid),
        critical,
        extn_value: OctetString::new(value.to_der().unwrap()).unwrap(),
    }
}

/// An end-entity TAMP signing certificate (digitalSignature, critical certificatePolicies with
/// `policy`), built here because no ca-core builder adds policies.
fn signer_cert(
    ca: &SoftSigner,
    ca_cert: &Certificate,
    spki: &SubjectPublicKeyInfoOwned,
    policy: ObjectIdentifier,
) -> Certificate {
    let exts = vec![
        extension(
            "2.5.29.19",
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        ),
        extension(
            "2.5.29.15",
            true,
            &KeyUsage(KeyUsages::DigitalSignature.into()),
        ),
        extension(
            "2.5.29.32",
            true,
            &CertificatePolicies(vec![PolicyInformation {
                policy_identifier: policy,
                policy_qualifiers: None,
            }]),
        ),
        extension(
            "2.5.29.14",
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(spki).to_vec()).unwrap()),
        ),
        extension(
            "2.5.29.35",
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(
                    OctetString::new(
                        key_identifier(&ca_cert.tbs_certificate.subject_public_key_info).to_vec(),
                    )
                    .unwrap(),
                ),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        ),
    ];
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[0x42, 0x01, 0x02, 0x03]).unwrap(),
        signature: ca.algorithm().signature_algorithm(),
        issuer: ca_cert.tbs_certificate.subject.clone(),
        validity: Validity::from_now(Duration::from_secs(365 * 86_400)).unwrap(),
        subject: ca_core::parse_name("CN=TAMP Signer,O=Test").unwrap(),
        subject_public_key_info: spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    };
    let sig = ca.sign(&tbs.to_der().unwrap()).unwrap();
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ca.algorithm().signature_algorithm(),
        signature: BitString::from_bytes(&sig).unwrap(),
    }
}

/// P-384 root -> P-256 Organisation CA -> P-256 TAMP signer.
pub(crate) struct Pki {
    pub(crate) root: Certificate,
    pub(crate) ca_key: Arc<SoftSigner>,
    pub(crate) ca: Certificate,
    pub(crate) key: Arc<SoftSigner>,
    pub(crate) cert: Certificate,
}

pub(crate) fn pki() -> Pki {
    pki_with(TEST_POLICY, false)
}

pub(crate) fn pki_with(policy: ObjectIdentifier, corrupt: bool) -> Pki {
    let root_key = SoftSigner::p384();
    let root = build_self_signed_root(&root_key, &spec("CN=Test Root,O=Test", 1)).unwrap();
    let ca_key = SoftSigner::p256();
    let ca = build_ca_certificate(
        &root_key,
        &root,
        &ca_key.spki,
        &spec("CN=Test Organisation CA,O=Test", 0),
    )
    .unwrap();
    let mut key = SoftSigner::p256();
    let cert = signer_cert(&ca_key, &ca, &key.spki, policy);
    key.corrupt = corrupt;
    Pki {
        root,
        ca_key: Arc::new(ca_key),
        ca,
        key: Arc::new(key),
        cert,
    }
}

impl Pki {
    pub(crate) fn signer(&self) -> UpdateSigner {
        UpdateSigner::new(self.key.clone(), self.cert.clone(), vec![self.ca.clone()]).unwrap()
    }
}

/// SubjectPublicKeyInfo { algorithm { `oid` }, empty BIT STRING }: small enough to pin by hand.
pub(crate) fn test_spki(oid: &str) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap(oid),
            parameters: None,
        },
        subject_public_key: BitString::new(0, Vec::new()).unwrap(),
    }
}

pub(crate) fn content(seq: u64, pki: &Pki) -> UpdateContent {
    UpdateContent {
        hw_type: HW_TYPE,
        device: DEVICE,
        seq,
        remove: vec![pki.ca_key.spki.clone()],
        add: vec![pki.ca.clone()],
    }
}

pub(crate) fn opts() -> VerifyOptions {
    VerifyOptions {
        signer_policy: TEST_POLICY,
        device: Some(DEVICE),
        after_seq: Some(6),
        now: SystemTime::now(),
    }
}
