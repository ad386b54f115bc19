//! The fast path used for many meters ([`PreparedUpdates`], the hand-built envelope) gives the
//! same bytes as the typed encoders.

use ca_core::tamp::{encode_update, verify_update, PreparedUpdates, TampError, UpdateContent};
use der::Decode;
use x509_cert::Certificate;

use crate::fixtures::{content, opts, pki, pki_with, DEVICE, HW_TYPE, TEST_POLICY};

#[test]
fn prepared_updates_and_the_hand_built_envelope_equal_the_typed_encodings() {
    let p = pki();
    let signer = p.signer();
    let c = content(42, &p);
    let prepared = PreparedUpdates::new(&c.remove, &c.add).unwrap();
    let fast = prepared.encode_for(c.hw_type, &c.device, c.seq).unwrap();
    assert_eq!(fast, encode_update(&c).unwrap());
    assert!(matches!(
        PreparedUpdates::new(&[], &[]),
        Err(TampError::EmptyUpdates)
    ));
    assert!(prepared.encode_for(c.hw_type, &c.device, 1 << 63).is_err());

    let der = signer.sign_encoded(&fast).unwrap();
    let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
    let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
    let sig = sd.signer_infos.0.as_slice()[0]
        .signature
        .as_bytes()
        .to_vec();
    assert_eq!(
        der,
        signer.envelope_with_cms_types(&fast, &sig).unwrap(),
        "the concatenated envelope differs from the cms crate's encoding"
    );
    assert!(verify_update(&der, &p.root, &opts()).is_ok());
    // A corrupted HSM signature never leaves the fast path either.
    let bad = pki_with(TEST_POLICY, true);
    let c = encode_update(&content(7, &bad)).unwrap();
    assert!(matches!(
        bad.signer().sign_encoded(&c),
        Err(TampError::SignerSignature { .. })
    ));
    // Long contents (length octets 0x82 and 0x83) come out the same as well.
    let many: Vec<Certificate> = std::iter::repeat_n(p.ca.clone(), 200).collect();
    let big = PreparedUpdates::new(&[], &many).unwrap();
    let fast = big.encode_for(HW_TYPE, &DEVICE, 9).unwrap();
    assert!(fast.len() > 65_536);
    let typed = encode_update(&UpdateContent {
        hw_type: HW_TYPE,
        device: DEVICE,
        seq: 9,
        remove: Vec::new(),
        add: many,
    })
    .unwrap();
    assert_eq!(fast, typed);
    let der = signer.sign_encoded(&fast).unwrap();
    let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
    let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
    let sig = sd.signer_infos.0.as_slice()[0]
        .signature
        .as_bytes()
        .to_vec();
    assert_eq!(der, signer.envelope_with_cms_types(&fast, &sig).unwrap());
}
