//! CRLs written as a stream (a full CRL of any size is never held in memory): the bytes are
//! checked against an independent whole-object encoding (`x509-cert` decodes them and encodes
//! them again, byte for byte), the signature against the RustCrypto verifier over the whole
//! TBSCertList, and a large CRL (spooled to a temporary file) with `openssl crl -verify`.

mod common;

use ca_core::crl::{build_crl, CrlError, CrlFacts, CrlScope};
use ca_core::issue::{CrlSettings, IssuerCtx};
use ca_core::{verify_signature, CaKind, Reason, Revocation};
use der::{Decode, Encode};
use x509_cert::crl::CertificateList;

fn settings() -> CrlSettings {
    CrlSettings {
        shards: 16,
        base_url: Some("http://crl.example.test/crl".into()),
        next_update_hours: 24,
        arl_next_update_days: 365,
    }
}

/// `n` revocations with every reason, some with an invalidity date.
fn entries(n: usize) -> Vec<(Vec<u8>, Revocation)> {
    let reasons = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::PrivilegeWithdrawn,
    ];
    (0..n)
        .map(|i| {
            (
                ca_core::random_serial_bytes().to_vec(),
                Revocation {
                    reason: reasons[i % reasons.len()],
                    revoked_at: 1_790_000_000 + i as i64,
                    invalidity_date: (i % 5 == 0).then_some(1_789_000_000 + i as i64),
                },
            )
        })
        .collect()
}

/// Decodes `der` with x509-cert, checks that encoding it again gives the same bytes and that
/// the signature verifies over the whole TBSCertList; returns it.
fn independent_check(der: &[u8], issuer: &IssuerCtx) -> CertificateList {
    let crl = CertificateList::from_der(der).expect("x509-cert decodes the CRL");
    assert_eq!(
        crl.to_der().unwrap(),
        der,
        "x509-cert encodes the same bytes"
    );
    let spki = &issuer.certificate().tbs_certificate.subject_public_key_info;
    verify_signature(
        spki,
        &crl.tbs_cert_list.to_der().unwrap(),
        crl.signature.raw_bytes(),
    )
    .expect("the signature verifies over the whole TBSCertList");
    crl
}

#[test]
fn a_streamed_crl_is_the_standard_encoding_and_its_signature_verifies() {
    let ca = common::test_ca("CN=Device CA", false);
    let device = IssuerCtx::new(CaKind::Device, ca.cert.clone(), ca.key.clone()).unwrap();
    let root = IssuerCtx::new(CaKind::Root, ca.root_cert.clone(), ca.root.clone()).unwrap();
    for n in [0, 1, 7, 300] {
        let list = entries(n);
        for (issuer, scope) in [
            (&device, CrlScope::Shard(3)),
            (&device, CrlScope::Full),
            // The root's ARL: P-384, SHA-384.
            (&root, CrlScope::Full),
        ] {
            let der = build_crl(issuer, &settings(), scope, 42, &list, 1_790_000_000).unwrap();
            let crl = independent_check(&der, issuer);
            let listed = crl.tbs_cert_list.revoked_certificates.unwrap_or_default();
            assert_eq!(listed.len(), n);
            for ((serial, _), got) in list.iter().zip(&listed) {
                assert_eq!(got.serial_number.as_bytes(), &serial[..]);
            }
            let facts = CrlFacts::parse(&der).unwrap();
            assert_eq!((facts.entries, facts.crl_number), (n, 42));
            assert_eq!(facts.this_update, 1_790_000_000);
            assert_eq!(
                facts.next_update,
                Some(1_790_000_000 + settings().lifetime_secs(issuer.kind()))
            );
        }
    }
}

/// 150,000 entries (over 6 MB) pass the in-memory spool's limit and go through a temporary
/// file: the CRL is still the standard encoding, openssl verifies it, and its facts are read
/// from the file without holding it.
#[test]
fn a_large_crl_is_spooled_and_openssl_verifies_it() {
    let ca = common::test_ca("CN=Device CA", false);
    let device = IssuerCtx::new(CaKind::Device, ca.cert.clone(), ca.key.clone()).unwrap();
    let list = entries(150_000);
    let der = build_crl(
        &device,
        &settings(),
        CrlScope::Full,
        7,
        &list,
        1_790_000_000,
    )
    .unwrap();
    assert!(der.len() > 6_000_000, "{} bytes", der.len());
    let crl = independent_check(&der, &device);
    assert_eq!(
        crl.tbs_cert_list.revoked_certificates.map(|r| r.len()),
        Some(150_000)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("full.crl");
    std::fs::write(&file, &der).unwrap();
    let ca_pem = dir.path().join("ca.pem");
    let pem = der::EncodePem::to_pem(&ca.cert, der::pem::LineEnding::LF).unwrap();
    std::fs::write(&ca_pem, pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-verify", "-in"])
        .arg(&file)
        .arg("-CAfile")
        .arg(&ca_pem)
        .output()
        .expect("openssl is installed (make test installs it)");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("verify OK"), "{said}");
    let facts = CrlFacts::read(&file).unwrap();
    assert_eq!((facts.entries, facts.crl_number), (150_000, 7));
}

/// A signature that does not verify writes nothing: the caller gets the error, not a CRL.
#[test]
fn a_bad_signature_is_refused_before_anything_is_written() {
    let ca = common::test_ca("CN=Device CA", true);
    let device = IssuerCtx::new(CaKind::Device, ca.cert, ca.key).unwrap();
    let r = build_crl(
        &device,
        &settings(),
        CrlScope::Full,
        1,
        &entries(3),
        1_790_000_000,
    );
    assert!(matches!(r, Err(CrlError::Verify(_))), "{r:?}");
}

/// A file that is not a whole CRL is named as such, never counted.
#[test]
fn facts_refuse_what_is_not_a_crl() {
    let ca = common::test_ca("CN=Device CA", false);
    let device = IssuerCtx::new(CaKind::Device, ca.cert, ca.key).unwrap();
    let der = build_crl(
        &device,
        &settings(),
        CrlScope::Full,
        1,
        &entries(50),
        1_790_000_000,
    )
    .unwrap();
    assert!(CrlFacts::parse(&der).is_ok());
    for cut in [0, 1, 5, 40, der.len() / 2, der.len() - 10, der.len() - 1] {
        assert!(CrlFacts::parse(&der[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = der.clone();
    longer.push(0);
    assert!(CrlFacts::parse(&longer).is_err(), "a byte after the CRL");
    assert!(CrlFacts::parse(b"not a crl").is_err());
}
