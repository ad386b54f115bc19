//! The issuance pipeline against a software signer and a real sled store: every refused request
//! is checked to have stored nothing. (The same pipeline on SoftHSM, checked with openssl and an
//! independent linter, is in the workspace's `tests` crate.)

mod common;
use common::SoftSigner;
use std::sync::Arc;

use base64::Engine as _;
use ca_core::issue::{AccountLimits, CrlSettings, Engine, ErrorCode, IssuerCtx, RequestItem};
use ca_core::issue::{IssueError, Outcome};
use ca_core::store::StoreConfig;
use ca_core::{spki_from_point, AuditEntry, AuditLog, CaKind, Home, KeyAlgorithm, Store};
use der::asn1::{BitString, SetOfVec};
use der::{Decode, Encode};
use p256::ecdsa::signature::Signer as _;
use policies::ProfileSet;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::Certificate;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    engine: Engine,
}

/// Every commit of these tests is recorded in the audit log, as the service records them.
fn record(r: &[Result<Outcome, IssueError>]) -> Option<AuditEntry> {
    Some(AuditEntry::new(
        "test.issue",
        "test",
        serde_json::json!({"items": r.len()}),
    ))
}

fn ca(kind_subject: &str, corrupt: bool) -> (Certificate, Arc<SoftSigner>) {
    let ca = common::test_ca(kind_subject, corrupt);
    (ca.cert, ca.key)
}

fn fixture_with(crl_base: Option<&str>, corrupt: bool, profiles: ProfileSet) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path());
    let store = ca_core::store::open(&StoreConfig::default(), &home).unwrap();
    let (dcert, dkey) = ca("CN=MDCA1", corrupt);
    let (ocert, okey) = ca("CN=Test Organisation CA,O=Test", corrupt);
    let issuers = vec![
        Arc::new(IssuerCtx::new(CaKind::Device, dcert, dkey).unwrap()),
        Arc::new(IssuerCtx::new(CaKind::Organisation, ocert, okey).unwrap()),
    ];
    let crl = CrlSettings {
        shards: 16,
        base_url: crl_base.map(String::from),
        next_update_hours: 24,
        arl_next_update_days: 365,
    };
    let audit = AuditLog::new(home.audit_log(), store.clone());
    let engine = Engine::new(profiles, issuers, audit, crl, 2).unwrap();
    Fixture {
        _dir: dir,
        store,
        engine,
    }
}

fn fixture() -> Fixture {
    fixture_with(None, false, ProfileSet::builtin())
}

fn csr_p256(key: &p256::ecdsa::SigningKey) -> Vec<u8> {
    let spki = spki_from_point(
        KeyAlgorithm::EcP256,
        key.verifying_key().to_encoded_point(false).as_bytes(),
    )
    .unwrap();
    let info = CertReqInfo {
        version: Version::V1,
        subject: Default::default(),
        public_key: spki,
        attributes: SetOfVec::new(),
    };
    let sig: p256::ecdsa::Signature = key.sign(&info.to_der().unwrap());
    CertReq {
        info,
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: BitString::from_bytes(sig.to_der().as_bytes()).unwrap(),
    }
    .to_der()
    .unwrap()
}

fn csr_p384(key: &p384::ecdsa::SigningKey) -> Vec<u8> {
    let spki = spki_from_point(
        KeyAlgorithm::EcP384,
        key.verifying_key().to_encoded_point(false).as_bytes(),
    )
    .unwrap();
    let info = CertReqInfo {
        version: Version::V1,
        subject: Default::default(),
        public_key: spki,
        attributes: SetOfVec::new(),
    };
    let sig: p384::ecdsa::Signature = key.sign(&info.to_der().unwrap());
    CertReq {
        info,
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3"),
            parameters: None,
        },
        signature: BitString::from_bytes(sig.to_der().as_bytes()).unwrap(),
    }
    .to_der()
    .unwrap()
}

/// A CSR whose SPKI is replaced (signature left as is): for keys we cannot sign with here.
fn csr_with_spki(spki: SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let mut csr = CertReq::from_der(&csr_p256(&key)).unwrap();
    csr.info.public_key = spki;
    csr.to_der().unwrap()
}

fn meter(device: &str, csr: &[u8]) -> RequestItem {
    RequestItem {
        profile: "meter-signing".into(),
        device_id: Some(device.into()),
        entity_id: None,
        name: None,
        csr: Some(B64.encode(csr)),
        public_key: None,
        replace: false,
        recertify: false,
    }
}

fn new_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)
}

fn refused(f: &Fixture, item: RequestItem, code: ErrorCode, needle: &str) {
    let before = f.store.cert_count().unwrap();
    let err = f
        .engine
        .issue(&item, &AccountLimits::default(), &record)
        .unwrap_err();
    assert_eq!(err.code, code, "{err}");
    assert!(
        err.detail.contains(needle),
        "{err} should mention {needle:?}"
    );
    assert_eq!(
        f.store.cert_count().unwrap(),
        before,
        "nothing stored for a refused request"
    );
}

#[test]
fn a_meter_certificate_is_issued_once_and_retries_return_it() {
    let f = fixture();
    let key = new_key();
    let item = meter("00db123456789001", &csr_p256(&key));
    let first = f
        .engine
        .issue(&item, &AccountLimits::default(), &record)
        .unwrap();
    assert!(!first.existing);
    assert_eq!(
        first.record.subject_id, "00-DB-12-34-56-78-90-01",
        "stored normalised"
    );
    let again = f
        .engine
        .issue(
            &meter("00:DB:12:34:56:78:90:01", &csr_p256(&key)),
            &AccountLimits::default(),
            &record,
        )
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.record, first.record);
    assert_eq!(f.store.cert_count().unwrap(), 1);
    // The certificate verifies with the p256 crate against the Device CA key and carries the
    // device ID in its hardwareModuleName.
    let cert = Certificate::from_der(&first.record.der).unwrap();
    assert!(cert.tbs_certificate.subject.0.is_empty());
    let der = cert.tbs_certificate.to_der().unwrap();
    let device_ca = f.engine.issuer(CaKind::Device).unwrap().certificate();
    let ca_spki = device_ca.tbs_certificate.subject_public_key_info.clone();
    ca_core::verify_signature(&ca_spki, &der, cert.signature.raw_bytes()).unwrap();
}

#[test]
fn bad_requests_get_their_code_and_store_nothing() {
    let f = fixture();
    let good = csr_p256(&new_key());

    // CSR signature that does not verify (one bit of the signature flipped).
    let mut bad_sig = good.clone();
    let n = bad_sig.len();
    bad_sig[n - 5] ^= 0x01;
    refused(
        &f,
        meter("00DB123456789001", &bad_sig),
        ErrorCode::CsrSignature,
        "proof of possession",
    );

    // P-384, secp256k1 and RSA keys for a meter profile.
    let p384 = csr_p384(&p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    refused(
        &f,
        meter("00DB123456789001", &p384),
        ErrorCode::Curve,
        "P-384",
    );
    let k1 = SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
            parameters: Some(
                der::Any::encode_from(&der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.10"))
                    .unwrap(),
            ),
        },
        subject_public_key: BitString::from_bytes(&[4u8; 65]).unwrap(),
    };
    refused(
        &f,
        meter("00DB123456789001", &csr_with_spki(k1)),
        ErrorCode::Curve,
        "secp256k1",
    );
    let rsa = SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"),
            parameters: Some(der::Any::null()),
        },
        subject_public_key: BitString::from_bytes(&[0x30, 0x03, 0x02, 0x01, 0x03]).unwrap(),
    };
    refused(
        &f,
        meter("00DB123456789001", &csr_with_spki(rsa)),
        ErrorCode::KeyType,
        "RSA",
    );

    // Truncated and garbage DER, and text that is not base64.
    refused(
        &f,
        meter("00DB123456789001", &good[..good.len() / 2]),
        ErrorCode::CsrMalformed,
        "PKCS#10",
    );
    refused(
        &f,
        meter("00DB123456789001", b"\x30\x82\xff\xffgarbage"),
        ErrorCode::CsrMalformed,
        "PKCS#10",
    );
    let mut not_b64 = meter("00DB123456789001", &good);
    not_b64.csr = Some("%%% not base64 %%%".into());
    refused(&f, not_b64, ErrorCode::CsrMalformed, "base64");

    // A public key that is not on the curve (bare key, as the meter profiles allow).
    let key = new_key();
    let mut point = key
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    point[40] ^= 0x01;
    let off_curve = spki_from_point(KeyAlgorithm::EcP256, &point).unwrap();
    let mut bare = meter("00DB123456789001", &good);
    bare.csr = None;
    bare.public_key = Some(B64.encode(off_curve.to_der().unwrap()));
    refused(&f, bare, ErrorCode::PointNotOnCurve, "not a point");

    // EUI-64 of 7 bytes, and with non-hex characters.
    refused(
        &f,
        meter("00-DB-12-34-56-78-90", &good),
        ErrorCode::DeviceId,
        "7 group",
    );
    refused(
        &f,
        meter("00DB12345678900Z", &good),
        ErrorCode::DeviceId,
        "'Z'",
    );

    // Unknown profile.
    let mut unknown = meter("00DB123456789001", &good);
    unknown.profile = "meter-signin".into();
    refused(&f, unknown, ErrorCode::ProfileUnknown, "meter-signing");

    // A supplier profile without entity_id.
    let mut sup = meter("00DB123456789001", &good);
    sup.profile = "supplier-signing".into();
    refused(&f, sup, ErrorCode::ProfileLimit, "device_id");
}

#[test]
fn a_second_active_certificate_needs_replace() {
    let f = fixture();
    let a = f
        .engine
        .issue(
            &meter("00DB123456789002", &csr_p256(&new_key())),
            &AccountLimits::default(),
            &record,
        )
        .unwrap();
    refused(
        &f,
        meter("00DB123456789002", &csr_p256(&new_key())),
        ErrorCode::ExistingCertificate,
        &a.record.serial_hex(),
    );
    let mut item = meter("00DB123456789002", &csr_p256(&new_key()));
    item.replace = true;
    let b = f
        .engine
        .issue(&item, &AccountLimits::default(), &record)
        .unwrap();
    assert_ne!(a.record.serial, b.record.serial);
    let old = f.store.cert(&a.record.serial).unwrap().unwrap();
    assert_eq!(old.replaced_by.as_deref(), Some(&b.record.serial[..]));
    // The replaced certificate is revoked as superseded, in the same write.
    let rev = f.store.revocation(&a.record.serial).unwrap().unwrap();
    assert_eq!(rev.reason, ca_core::Reason::Superseded);
    assert_eq!(
        f.store
            .revoked_in_shard(ca_core::IssuerId::first(CaKind::Device), a.record.shard)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        f.store
            .active_cert("00-DB-12-34-56-78-90-02", "meter-signing")
            .unwrap()
            .unwrap()
            .serial,
        b.record.serial
    );
    // Another usage of the same device is independent.
    let mut ka = meter("00DB123456789002", &csr_p256(&new_key()));
    ka.profile = "meter-key-agreement".into();
    f.engine
        .issue(&ka, &AccountLimits::default(), &record)
        .unwrap();
}

#[test]
fn batches_keep_order_limit_size_and_atomic_is_all_or_nothing() {
    let f = fixture();
    let good1 = meter("00DB123456789010", &csr_p256(&new_key()));
    let good2 = meter("00DB123456789011", &csr_p256(&new_key()));
    let bad = meter("00DB1234567890", &csr_p256(&new_key()));
    let items = vec![Ok(good1.clone()), Ok(bad.clone()), Ok(good2.clone())];

    let out = f
        .engine
        .issue_batch(&items, &AccountLimits::default(), true, &record)
        .unwrap();
    assert_eq!(out[1].as_ref().unwrap_err().code, ErrorCode::DeviceId);
    assert_eq!(out[0].as_ref().unwrap_err().code, ErrorCode::BatchAborted);
    assert_eq!(out[2].as_ref().unwrap_err().code, ErrorCode::BatchAborted);
    assert_eq!(f.store.cert_count().unwrap(), 0, "atomic: nothing stored");

    let out = f
        .engine
        .issue_batch(&items, &AccountLimits::default(), false, &record)
        .unwrap();
    assert!(out[0].is_ok() && out[1].is_err() && out[2].is_ok());
    assert_eq!(f.store.cert_count().unwrap(), 2);
    assert_eq!(
        out[0].as_ref().unwrap().record.subject_id,
        "00-DB-12-34-56-78-90-10"
    );
    assert_eq!(
        out[2].as_ref().unwrap().record.subject_id,
        "00-DB-12-34-56-78-90-11"
    );

    // The same device and key twice in one batch: one certificate, answered twice.
    let key = new_key();
    let twice = vec![
        Ok(meter("00DB123456789012", &csr_p256(&key))),
        Ok(meter("00DB123456789012", &csr_p256(&key))),
    ];
    let out = f
        .engine
        .issue_batch(&twice, &AccountLimits::default(), false, &record)
        .unwrap();
    let (a, b) = (out[0].as_ref().unwrap(), out[1].as_ref().unwrap());
    assert_eq!(a.record.serial, b.record.serial);
    assert!(a.existing != b.existing);
    assert_eq!(f.store.cert_count().unwrap(), 3);

    // Over 10,000 items: refused whole, nothing stored.
    let many: Vec<_> = (0..10_001).map(|_| Ok(good1.clone())).collect();
    let err = f
        .engine
        .issue_batch(&many, &AccountLimits::default(), false, &record)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BatchTooLarge);
    assert_eq!(f.store.cert_count().unwrap(), 3);
}

#[test]
fn an_account_range_is_enforced() {
    let f = fixture();
    let limits = AccountLimits {
        device_range: Some("00-DB-12-00-00-00-00-00/24".parse().unwrap()),
        no_replace: None,
        no_bare_key: None,
    };
    f.engine
        .issue(
            &meter("00DB12FF00000001", &csr_p256(&new_key())),
            &limits,
            &record,
        )
        .unwrap();
    let before = f.store.cert_count().unwrap();
    let err = f
        .engine
        .issue(
            &meter("00DB13FF00000001", &csr_p256(&new_key())),
            &limits,
            &record,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DeviceRange);
    assert_eq!(f.store.cert_count().unwrap(), before);
}

#[test]
fn a_bad_hsm_signature_is_never_stored() {
    let f = fixture_with(None, true, ProfileSet::builtin());
    let err = f
        .engine
        .issue(
            &meter("00DB123456789001", &csr_p256(&new_key())),
            &AccountLimits::default(),
            &record,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::HsmUnavailable);
    assert_eq!(f.store.cert_count().unwrap(), 0);
}

#[test]
fn meter_certificates_stay_within_the_design_sizes() {
    // docs/design.md#certificates: at most 410 bytes with the CRL pointer off, 460 with a pointer of up to 30
    // characters; the shipped profiles keep 3 bytes of headroom (non-critical policies), 7 with
    // `key-identifier-bytes = 4`. 300 certificates cover the spread of ECDSA signature lengths
    // (70 to 72 bytes); `meterpki-bench sizes` reports the distribution over 10,000.
    let dir = tempfile::tempdir().unwrap();
    ProfileSet::write_builtin(dir.path()).unwrap();
    for name in ["meter-signing", "meter-key-agreement"] {
        let p = dir.path().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&p).unwrap() + "key-identifier-bytes = 4\n";
        std::fs::write(&p, text).unwrap();
    }
    let short_ids = ProfileSet::load_dir(dir.path()).unwrap();
    for (base, limit, profiles, ski) in [
        (None, 407usize, ProfileSet::builtin(), 8),
        (Some("http://c.mp/crl"), 455, ProfileSet::builtin(), 8),
        (None, 403, short_ids.clone(), 4),
        (Some("http://c.mp/crl"), 451, short_ids, 4),
    ] {
        let f = fixture_with(base, false, profiles);
        let mut max = 0;
        for i in 0..300u32 {
            let id = format!("00DB1234{i:08X}");
            let profile = if i % 2 == 0 {
                "meter-signing"
            } else {
                "meter-key-agreement"
            };
            let mut item = meter(&id, &csr_p256(&new_key()));
            item.profile = profile.into();
            let o = f
                .engine
                .issue(&item, &AccountLimits::default(), &record)
                .unwrap();
            if let Some(b) = base {
                let url = format!("{b}/device/{}.crl", o.record.shard);
                assert!(url.len() <= 30, "{url}");
                assert!(o.record.der.windows(url.len()).any(|w| w == url.as_bytes()));
            }
            max = max.max(o.record.der.len());
            let cert = Certificate::from_der(&o.record.der).unwrap();
            let id = cert
                .tbs_certificate
                .extensions
                .unwrap()
                .into_iter()
                .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
                .unwrap();
            assert_eq!(id.extn_value.as_bytes().len(), 2 + ski);
        }
        assert!(
            max <= limit,
            "largest meter certificate {max} bytes, limit {limit}"
        );
    }
}

/// Supplier 90-B3-D5-1F-30-00-00-02, "Example Energy Ltd", acquired (set `state` to use it).
fn example_supplier() -> ca_core::Supplier {
    ca_core::Supplier {
        id: "90-B3-D5-1F-30-00-00-02".into(),
        name: "Example Energy Ltd".into(),
        state: ca_core::SupplierState::Acquired,
        registered_at: 0,
        ended_at: Some(1),
        successor: None,
    }
}

/// A supplier-key-agreement request for [`example_supplier`] with a fresh key.
fn supplier_item(name: Option<&str>) -> RequestItem {
    RequestItem {
        profile: "supplier-key-agreement".into(),
        device_id: None,
        entity_id: Some("90-B3-D5-1F-30-00-00-02".into()),
        name: name.map(String::from),
        csr: Some(B64.encode(csr_p256(&new_key()))),
        public_key: None,
        replace: false,
        recertify: false,
    }
}

#[test]
fn supplier_certificates_name_the_party() {
    let f = fixture();
    // Only a registered, active supplier is issued certificates.
    let mut item = supplier_item(None);
    refused(
        &f,
        item.clone(),
        ErrorCode::SupplierUnknown,
        "not a registered supplier",
    );
    let mut supplier = example_supplier();
    let put = |op| {
        f.engine
            .store()
            .apply(ca_core::Txn::new().with(op), None)
            .unwrap()
    };
    put(ca_core::Op::InsertSupplier(supplier.clone()));
    refused(&f, item.clone(), ErrorCode::SupplierInactive, "acquired");
    supplier.state = ca_core::SupplierState::Active;
    put(ca_core::Op::UpdateSupplier(supplier));
    item.name = Some("Someone Else".into());
    refused(&f, item, ErrorCode::ProfileLimit, "registered name");
    let item = supplier_item(Some("Example Energy Ltd"));
    let o = f
        .engine
        .issue(&item, &AccountLimits::default(), &record)
        .unwrap();
    let cert = Certificate::from_der(&o.record.der).unwrap();
    let subject = cert.tbs_certificate.subject.to_string();
    assert!(
        subject.contains("CN=Example Energy Ltd") && subject.contains("OU=02"),
        "{subject}"
    );
    // The shipped form: serialNumber, a PrintableString every X.509 stack parses.
    let last = &cert.tbs_certificate.subject.0.last().unwrap().0.as_slice()[0];
    assert_eq!(last.oid.to_string(), "2.5.4.5", "{subject}");
    assert_eq!(der::Tagged::tag(&last.value), der::Tag::PrintableString);
    assert_eq!(last.value.value(), b"90-B3-D5-1F-30-00-00-02");
    // Suppliers must bring a CSR: a bare key is refused.
    let mut bare = item.clone();
    bare.csr = None;
    bare.public_key = Some(B64.encode(SoftSigner::p256().spki.to_der().unwrap()));
    bare.entity_id = Some("90-B3-D5-1F-30-00-00-03".into());
    refused(&f, bare, ErrorCode::ProfileLimit, "requires a CSR");
}

#[test]
fn the_lint_refuses_what_the_profile_forbids() {
    // A profile whose size limit no meter certificate can meet: refused before signing.
    let dir = tempfile::tempdir().unwrap();
    ProfileSet::write_builtin(dir.path()).unwrap();
    let p = dir.path().join("meter-signing.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("max-der-bytes = 512", "max-der-bytes = 300");
    std::fs::write(&p, text).unwrap();
    let f = fixture_with(None, false, ProfileSet::load_dir(dir.path()).unwrap());
    refused(
        &f,
        meter("00DB123456789001", &csr_p256(&new_key())),
        ErrorCode::Internal,
        "over the profile's 300",
    );
}

#[test]
fn serials_are_positive_and_carry_64_random_bits_after_a_time_octet() {
    // 9 octets: one that names the second (1..=127, so positive and minimally encoded), then 64
    // random bits (docs/design.md#certificates). Certificates issued in the same second share the first octet,
    // which is what keeps the store's inserts together.
    let f = fixture();
    let second = || {
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 127) as u8
            + 1
    };
    let mut serials = Vec::new();
    for i in 0..40u32 {
        let before = second();
        let o = f
            .engine
            .issue(
                &meter(&format!("00DB5E51{i:08X}"), &csr_p256(&new_key())),
                &AccountLimits::default(),
                &record,
            )
            .unwrap();
        let after = second();
        let s = o.record.serial.clone();
        assert_eq!(s.len(), 9, "{}", hex::encode(&s));
        assert!((1..=0x7f).contains(&s[0]), "{}", hex::encode(&s));
        assert!(
            s[0] == before || s[0] == after,
            "{} at second {before}",
            hex::encode(&s)
        );
        // The certificate carries exactly these octets as its serialNumber.
        let cert = Certificate::from_der(&o.record.der).unwrap();
        assert_eq!(cert.tbs_certificate.serial_number.as_bytes(), &s[..]);
        serials.push(s);
    }
    // The random parts differ (64 bits each: a repeat would be a broken generator).
    let mut tails: Vec<_> = serials.iter().map(|s| s[1..].to_vec()).collect();
    tails.sort();
    tails.dedup();
    assert_eq!(tails.len(), serials.len());
}

/// Keys no certificate may be issued for: a BIT STRING that declares unused bits (not
/// canonical DER: OpenSSL would not load the certificate), small multiples of the generator
/// (private keys anyone can find), and keys meterpki itself uses; each refused naming why,
/// nothing stored.
#[test]
fn weak_foreign_and_non_canonical_keys_are_refused() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let ca_key = new_key();
    let ca_spki = spki_from_point(
        KeyAlgorithm::EcP256,
        ca_key.verifying_key().to_encoded_point(false).as_bytes(),
    )
    .unwrap();
    let mut f = fixture();
    f.engine = f
        .engine
        .with_reserved_keys(vec![ca_core::sha256(&ca_spki.to_der().unwrap())]);
    let bare = |spki: &SubjectPublicKeyInfoOwned| {
        let mut item = meter("00DB123456789001", &[]);
        item.csr = None;
        item.public_key = Some(B64.encode(spki.to_der().unwrap()));
        item
    };
    // Unused bits declared on an otherwise good point.
    let good = new_key();
    let point = good.verifying_key().to_encoded_point(false);
    let mut odd = spki_from_point(KeyAlgorithm::EcP256, point.as_bytes()).unwrap();
    odd.subject_public_key = BitString::new(3, point.as_bytes().to_vec()).unwrap();
    refused(&f, bare(&odd), ErrorCode::PointNotOnCurve, "unused bit");
    // The generator itself (private key 1), 7·G and -1000·G.
    let g = p256::ProjectivePoint::GENERATOR;
    for p in [
        g,
        g * p256::Scalar::from(7u64),
        -(g * p256::Scalar::from(1000u64)),
    ] {
        let enc = p256::AffinePoint::from(p).to_encoded_point(false);
        let spki = spki_from_point(KeyAlgorithm::EcP256, enc.as_bytes()).unwrap();
        refused(&f, bare(&spki), ErrorCode::WeakKey, "small multiple");
    }
    // A key meterpki uses itself.
    refused(
        &f,
        bare(&ca_spki),
        ErrorCode::WeakKey,
        "one meterpki itself uses",
    );
    // An ordinary key still issues.
    let ok = spki_from_point(KeyAlgorithm::EcP256, point.as_bytes()).unwrap();
    f.engine
        .issue(&bare(&ok), &AccountLimits::default(), &record)
        .unwrap();
}

/// A validity of N days is exactly N days: notBefore and notAfter both belong to the period
/// (RFC 5280 §4.1.2.5), so notAfter is N days less one second after notBefore, for end
/// entities and CA certificates alike.
#[test]
fn a_validity_of_n_days_lasts_exactly_n_days() {
    let span = |c: &Certificate| {
        let v = &c.tbs_certificate.validity;
        v.not_after.to_unix_duration().as_secs() - v.not_before.to_unix_duration().as_secs()
    };
    let (ca_cert, _) = ca("CN=Span CA", false);
    assert_eq!(span(&ca_cert), 1000 * 86_400 - 1);
    let dir = tempfile::tempdir().unwrap();
    ProfileSet::write_builtin(dir.path()).unwrap();
    let p = dir.path().join("supplier-key-agreement.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("validity-days = 1826", "validity-days = 30");
    std::fs::write(&p, text).unwrap();
    let f = fixture_with(None, false, ProfileSet::load_dir(dir.path()).unwrap());
    let mut supplier = example_supplier();
    supplier.state = ca_core::SupplierState::Active;
    f.engine
        .store()
        .apply(
            ca_core::Txn::new().with(ca_core::Op::InsertSupplier(supplier)),
            None,
        )
        .unwrap();
    let item = supplier_item(None);
    let o = f
        .engine
        .issue(&item, &AccountLimits::default(), &record)
        .unwrap();
    assert_eq!(
        span(&Certificate::from_der(&o.record.der).unwrap()),
        30 * 86_400 - 1
    );
}

/// certificatePolicies is non-critical with the shipped meter profile (embedded X.509 stacks
/// refuse a critical one naming anything but anyPolicy) and critical with
/// `policy-critical = true` (the GB SMKI form); the lint holds each to its profile.
#[test]
fn policy_criticality_follows_the_profile() {
    let critical_of = |f: &Fixture, id: &str| {
        let o = f
            .engine
            .issue(
                &meter(id, &csr_p256(&new_key())),
                &AccountLimits::default(),
                &record,
            )
            .unwrap();
        let cert = Certificate::from_der(&o.record.der).unwrap();
        let tbs_len = cert.tbs_certificate.to_der().unwrap().len();
        let ext = cert
            .tbs_certificate
            .extensions
            .unwrap()
            .into_iter()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CERTIFICATE_POLICIES)
            .unwrap();
        (ext.critical, tbs_len)
    };
    let (shipped, size) = critical_of(&fixture(), "00DB123456789001");
    assert!(!shipped);
    let dir = tempfile::tempdir().unwrap();
    ProfileSet::write_builtin(dir.path()).unwrap();
    let p = dir.path().join("meter-signing.toml");
    let text = std::fs::read_to_string(&p).unwrap() + "policy-critical = true\n";
    std::fs::write(&p, text).unwrap();
    let f = fixture_with(None, false, ProfileSet::load_dir(dir.path()).unwrap());
    let (gb, gb_size) = critical_of(&f, "00DB123456789002");
    assert!(gb);
    assert_eq!(
        gb_size,
        size + 3,
        "the BOOLEAN TRUE costs 3 bytes of the TBS"
    );
}

/// `entity-id-form = "x500-unique-identifier"` (the GB SMKI form) carries the entity ID as a BIT
/// STRING of its 8 bytes; the lint holds the subject to the profile's form.
#[test]
fn the_gb_entity_id_form_is_a_unique_identifier_bit_string() {
    let dir = tempfile::tempdir().unwrap();
    ProfileSet::write_builtin(dir.path()).unwrap();
    let p = dir.path().join("supplier-key-agreement.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "entity-id-form = \"serial-number\"",
        "entity-id-form = \"x500-unique-identifier\"",
    );
    assert!(text.contains("x500-unique-identifier\"\n"));
    std::fs::write(&p, text).unwrap();
    let f = fixture_with(None, false, ProfileSet::load_dir(dir.path()).unwrap());
    let mut supplier = example_supplier();
    supplier.state = ca_core::SupplierState::Active;
    f.engine
        .store()
        .apply(
            ca_core::Txn::new().with(ca_core::Op::InsertSupplier(supplier)),
            None,
        )
        .unwrap();
    let o = f
        .engine
        .issue(
            &supplier_item(Some("Example Energy Ltd")),
            &AccountLimits::default(),
            &record,
        )
        .unwrap();
    let cert = Certificate::from_der(&o.record.der).unwrap();
    let last = &cert.tbs_certificate.subject.0.last().unwrap().0.as_slice()[0];
    assert_eq!(last.oid.to_string(), "2.5.4.45");
    assert_eq!(der::Tagged::tag(&last.value), der::Tag::BitString);
    // 00: no unused bits, then the EUI-64's 8 bytes.
    assert_eq!(
        last.value.value(),
        [0, 0x90, 0xB3, 0xD5, 0x1F, 0x30, 0, 0, 2]
    );
}
