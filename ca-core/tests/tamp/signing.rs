//! Signing through the `Signer` seam and verifying as a meter would: the envelope, every flipped
//! byte, and each check of the signer, its path, the target, the sequence number and the time.

use std::time::{Duration, SystemTime};

use ca_core::tamp::{
    encode_update, verify_update, TampError, UpdateSigner, VerifyOptions, ID_CT_TAMP_UPDATE,
};
use ca_core::{Eui64, Signer};
use der::{Decode, Encode};

use crate::fixtures::{content, opts, pki, pki_with, DEVICE, HW_TYPE, OTHER_POLICY, TEST_POLICY};

#[test]
fn signed_update_verifies_as_a_meter_would() {
    let p = pki();
    let signer = p.signer();
    assert_eq!(signer.signer_certificate(), &p.cert);
    let content_der = encode_update(&content(7, &p)).unwrap();
    let tbs = signer.to_be_signed(&content_der).unwrap();
    assert_eq!(tbs[0], 0x31, "signed attributes are signed as a SET OF");
    let der = signer.sign(&content_der).unwrap();

    let v = verify_update(&der, &p.root, &opts()).unwrap();
    assert_eq!(v.seq, 7);
    assert!(v.terse, "the update asks for a terse confirm");
    assert_eq!(v.hw_type, HW_TYPE);
    assert_eq!(v.devices, vec![DEVICE]);
    assert_eq!(v.removed, vec![p.ca_key.spki.clone()]);
    assert_eq!(v.added, vec![p.ca.clone()]);
    assert_eq!(v.signer, p.cert);
    assert_eq!(v.content, content_der);

    // The envelope is what RFC 5652 and the brief say, read back with the cms types.
    let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
    assert_eq!(ci.content_type.to_string(), "1.2.840.113549.1.7.2");
    let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
    assert_eq!(sd.version, cms::content_info::CmsVersion::V3);
    assert_eq!(sd.encap_content_info.econtent_type, ID_CT_TAMP_UPDATE);
    assert_eq!(sd.certificates.as_ref().unwrap().0.len(), 2);
    assert!(sd.crls.is_none());
    let si = &sd.signer_infos.0.as_slice()[0];
    // RFC 5934 §2: version 3, the signer named by its subjectKeyIdentifier.
    assert_eq!(si.version, cms::content_info::CmsVersion::V3);
    let ski = p
        .cert
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.14")
        .map(|e| {
            x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).unwrap()
        })
        .unwrap();
    assert_eq!(
        si.sid,
        cms::signed_data::SignerIdentifier::SubjectKeyIdentifier(ski)
    );
    assert_eq!(
        si.signature_algorithm.oid.to_string(),
        "1.2.840.10045.4.3.2"
    );
    assert!(si.signature_algorithm.parameters.is_none());
    assert_eq!(si.digest_alg.oid.to_string(), "2.16.840.1.101.3.4.2.1");
    assert!(si.digest_alg.parameters.is_none());
    assert_eq!(si.signed_attrs.as_ref().unwrap().to_der().unwrap(), tbs);

    // Unconstrained device and sequence number.
    let any = VerifyOptions {
        device: None,
        after_seq: None,
        ..opts()
    };
    assert_eq!(verify_update(&der, &p.root, &any).unwrap(), v);
}

#[test]
fn every_flipped_byte_is_refused() {
    let p = pki();
    let der = p
        .signer()
        .sign(&encode_update(&content(7, &p)).unwrap())
        .unwrap();
    let step = (der.len() / 200).max(1);
    let mut tried = 0;
    for pos in (0..der.len()).step_by(step) {
        for mask in [0x01u8, 0x80] {
            let mut bad = der.clone();
            bad[pos] ^= mask;
            tried += 1;
            if let Ok(v) = verify_update(&bad, &p.root, &opts()) {
                panic!(
                    "flipping {mask:#04x} at byte {pos} of {} still verifies: {v:?}",
                    der.len()
                );
            }
        }
    }
    assert!(tried >= 300, "{tried}");
}

#[test]
fn wrong_root_policy_sequence_device_and_time_are_refused() {
    let p = pki();
    let der = p
        .signer()
        .sign(&encode_update(&content(7, &p)).unwrap())
        .unwrap();

    let other = pki();
    assert!(matches!(
        verify_update(&der, &other.root, &opts()),
        Err(TampError::Chain { .. })
    ));

    let policy = VerifyOptions {
        signer_policy: OTHER_POLICY,
        ..opts()
    };
    assert!(matches!(
        verify_update(&der, &p.root, &policy),
        Err(TampError::SignerPolicy { policy, .. }) if policy == OTHER_POLICY
    ));

    for after in [7, 8, u64::MAX] {
        let o = VerifyOptions {
            after_seq: Some(after),
            ..opts()
        };
        assert!(matches!(
            verify_update(&der, &p.root, &o),
            Err(TampError::SeqNotGreater { seq: 7, after: a }) if a == after
        ));
    }

    let o = VerifyOptions {
        device: Some(Eui64([0, 0xdb, 0x12, 0x34, 0x56, 0x78, 0x90, 0x02])),
        ..opts()
    };
    let err = verify_update(&der, &p.root, &o).unwrap_err();
    assert!(matches!(err, TampError::Target { .. }), "{err}");
    assert!(err.to_string().contains("00-DB-12-34-56-78-90-02"), "{err}");

    for at in [
        SystemTime::now() + Duration::from_secs(2 * 365 * 86_400),
        SystemTime::now() - Duration::from_secs(86_400),
    ] {
        let o = VerifyOptions { now: at, ..opts() };
        assert!(matches!(
            verify_update(&der, &p.root, &o),
            Err(TampError::Expired { .. })
        ));
    }
}

#[test]
fn missing_intermediate_and_ca_as_signer_are_refused() {
    let p = pki();
    let c = encode_update(&content(7, &p)).unwrap();
    // Without the Organisation CA in the message there is no path to the root.
    let alone = UpdateSigner::new(p.key.clone(), p.cert.clone(), vec![])
        .unwrap()
        .sign(&c)
        .unwrap();
    let err = verify_update(&alone, &p.root, &opts()).unwrap_err();
    assert!(matches!(err, TampError::Chain { .. }), "{err}");

    // A CA certificate is not a TAMP signer, even with a valid path.
    let ca_signed = UpdateSigner::new(p.ca_key.clone(), p.ca.clone(), vec![])
        .unwrap()
        .sign(&c)
        .unwrap();
    let err = verify_update(&ca_signed, &p.root, &opts()).unwrap_err();
    assert!(matches!(err, TampError::SignerKeyUsage { .. }), "{err}");
}

#[test]
fn signer_refuses_mismatched_key_corrupt_signature_and_foreign_bytes() {
    let p = pki();
    assert!(matches!(
        UpdateSigner::new(p.ca_key.clone(), p.cert.clone(), vec![p.ca.clone()]),
        Err(TampError::KeyMismatch(_))
    ));

    let bad = pki_with(TEST_POLICY, true);
    let c = encode_update(&content(7, &bad)).unwrap();
    assert!(matches!(
        bad.signer().sign(&c),
        Err(TampError::SignerSignature { .. })
    ));

    let signer = p.signer();
    let c = encode_update(&content(7, &p)).unwrap();
    let tbs = signer.to_be_signed(&c).unwrap();
    let sig = p.key.sign(&tbs).unwrap();
    // Bytes that are not a TAMPUpdate are not signed.
    assert!(matches!(
        signer.to_be_signed(b"not DER"),
        Err(TampError::Malformed { .. })
    ));
    // The to-be-signed bytes must belong to the content.
    let other = encode_update(&content(8, &p)).unwrap();
    assert!(matches!(
        signer.assemble(&other, &tbs, &sig),
        Err(TampError::NotOurSignedAttributes)
    ));
    // A signature over something else does not verify.
    let wrong = p.key.sign(b"something else").unwrap();
    assert!(matches!(
        signer.assemble(&c, &tbs, &wrong),
        Err(TampError::SignerSignature { .. })
    ));
    let der = signer.assemble(&c, &tbs, &sig).unwrap();
    assert!(verify_update(&der, &p.root, &opts()).is_ok());
}

/// A SignerInfo of version 1 naming its signer by issuer and serial (what CMS allows, RFC 5934
/// §2 does not) is refused, although its signature is good.
#[test]
fn a_signer_named_by_issuer_and_serial_is_refused() {
    let p = pki();
    let der = p
        .signer()
        .sign(&encode_update(&content(7, &p)).unwrap())
        .unwrap();
    let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
    let mut sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
    let mut si = sd.signer_infos.0.as_slice()[0].clone();
    si.version = cms::content_info::CmsVersion::V1;
    si.sid = cms::signed_data::SignerIdentifier::IssuerAndSerialNumber(
        cms::cert::IssuerAndSerialNumber {
            issuer: p.cert.tbs_certificate.issuer.clone(),
            serial_number: p.cert.tbs_certificate.serial_number.clone(),
        },
    );
    sd.signer_infos =
        cms::signed_data::SignerInfos(der::asn1::SetOfVec::try_from(vec![si]).unwrap());
    let old = cms::content_info::ContentInfo {
        content_type: ci.content_type,
        content: der::Any::encode_from(&sd).unwrap(),
    }
    .to_der()
    .unwrap();
    let e = verify_update(&old, &p.root, &opts()).unwrap_err();
    assert!(e.to_string().contains("RFC 5934 §2"), "{e}");
}
