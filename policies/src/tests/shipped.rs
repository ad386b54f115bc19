//! The shipped profiles: every one is present, valid, on disk as built in, and carries the
//! shipped values.

use std::path::Path;

use crate::{
    CaKind, Curve, ExtendedKeyUsage, KeyUsageBit, Profile, ProfileKind, ProfileSet, Validity,
    BUILTIN,
};

use super::oid;

#[test]
fn builtin_has_every_shipped_profile() {
    let set = ProfileSet::builtin();
    assert_eq!(
        set.names(),
        vec![
            "access-ca",
            "api-client",
            "api-server",
            "device-ca",
            "meter-key-agreement",
            "meter-signing",
            "organisation-ca",
            "root-ca",
            "supplier-key-agreement",
            "supplier-signing",
            "trust-update-signer",
        ]
    );
    assert_eq!(BUILTIN.len(), 11);
    for (file, text) in BUILTIN {
        let p = Profile::from_toml(Path::new(file), text).expect("shipped profile is valid");
        assert_eq!(format!("{}.toml", p.name()), *file);
        assert!(
            text.starts_with('#'),
            "{file} must start with its explanatory comment"
        );
        assert!(
            text.contains("EXAMPLES"),
            "{file} must say the OIDs are examples"
        );
    }
}

#[test]
fn shipped_files_on_disk_match_builtin() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let on_disk = ProfileSet::load_dir(&dir).expect("profiles/ loads");
    assert_eq!(on_disk.names(), ProfileSet::builtin().names());
    for (file, text) in BUILTIN {
        let disk = std::fs::read_to_string(dir.join(file)).expect("shipped file");
        assert_eq!(&disk, text);
    }
}

#[test]
fn meter_profiles_have_shipped_values() {
    let set = ProfileSet::builtin();
    for (name, bit, policy) in [
        (
            "meter-signing",
            KeyUsageBit::DigitalSignature,
            "1.3.6.1.4.1.32473.1.1",
        ),
        (
            "meter-key-agreement",
            KeyUsageBit::KeyAgreement,
            "1.3.6.1.4.1.32473.1.2",
        ),
    ] {
        let p = set.get(name).expect(name);
        assert_eq!(p.name(), name);
        assert_eq!(p.kind(), ProfileKind::Meter);
        assert_eq!(p.issuer(), CaKind::Device);
        assert_eq!(p.key_usage(), [bit]);
        assert_eq!(p.curves(), [Curve::P256]);
        assert_eq!(p.policy_oid(), Some(oid(policy)));
        assert_eq!(p.device_type_oid(), Some(oid("1.3.6.1.4.1.32473.2.1")));
        assert_eq!(p.validity(), Validity::Unlimited);
        assert!(p.allow_bare_public_key());
        assert!(p.crl_distribution_point());
        assert_eq!(p.max_der_bytes(), Some(512));
        assert!(p.extended_key_usage().is_empty());
        assert_eq!(p.path_len(), None);
    }
}

#[test]
fn supplier_profiles_have_shipped_values() {
    let set = ProfileSet::builtin();
    for (name, bit, policy) in [
        (
            "supplier-signing",
            KeyUsageBit::DigitalSignature,
            "1.3.6.1.4.1.32473.1.3",
        ),
        (
            "supplier-key-agreement",
            KeyUsageBit::KeyAgreement,
            "1.3.6.1.4.1.32473.1.4",
        ),
    ] {
        let p = set.get(name).expect(name);
        assert_eq!(p.kind(), ProfileKind::Supplier);
        assert_eq!(p.issuer(), CaKind::Organisation);
        assert_eq!(p.key_usage(), [bit]);
        assert_eq!(p.curves(), [Curve::P256]);
        assert_eq!(p.policy_oid(), Some(oid(policy)));
        assert_eq!(p.device_type_oid(), None);
        assert_eq!(p.validity(), Validity::Days(1826));
        assert!(!p.allow_bare_public_key());
        assert!(p.crl_distribution_point());
        assert_eq!(p.max_der_bytes(), Some(700));
        assert!(p.extended_key_usage().is_empty());
        assert_eq!(p.path_len(), None);
    }
}

#[test]
fn ca_profiles_have_shipped_values() {
    let set = ProfileSet::builtin();
    let root = set.get("root-ca").expect("root-ca");
    assert_eq!(root.kind(), ProfileKind::RootCa);
    assert_eq!(root.issuer(), CaKind::Root);
    assert_eq!(root.curves(), [Curve::P384]);
    assert_eq!(
        root.key_usage(),
        [KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign]
    );
    // No end date: a meter holds its root for its whole life (docs/lifecycle.md).
    assert_eq!(root.validity(), Validity::Unlimited);
    assert_eq!(root.path_len(), Some(1));
    assert_eq!(root.policy_oid(), None);
    assert_eq!(root.device_type_oid(), None);
    assert!(
        root.crl_distribution_point(),
        "the root points at its own ARL"
    );
    assert!(!root.allow_bare_public_key());
    assert_eq!(root.max_der_bytes(), None);
    assert!(root.extended_key_usage().is_empty());

    for name in ["device-ca", "organisation-ca", "access-ca"] {
        let p = set.get(name).expect(name);
        assert_eq!(p.kind(), ProfileKind::IssuingCa);
        assert_eq!(p.issuer(), CaKind::Root);
        assert_eq!(p.curves(), [Curve::P256]);
        assert_eq!(
            p.key_usage(),
            [KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign]
        );
        // The Device CA has no end date (meters hold it for their whole life); the CAs whose
        // subscribers renew have a fixed lifetime.
        let want = if name == "device-ca" {
            Validity::Unlimited
        } else {
            Validity::Days(5479)
        };
        assert_eq!(p.validity(), want, "{name}");
        assert_eq!(p.path_len(), Some(0));
        assert_eq!(p.policy_oid(), None);
        assert_eq!(p.device_type_oid(), None);
        assert!(
            p.crl_distribution_point(),
            "{name} points at the root's ARL"
        );
        assert!(p.extended_key_usage().is_empty());
    }
}

#[test]
fn tls_and_trust_update_profiles_have_shipped_values() {
    let set = ProfileSet::builtin();
    for (name, kind, eku, days, policy) in [
        (
            "api-server",
            ProfileKind::TlsServer,
            ExtendedKeyUsage::ServerAuth,
            397,
            "1.3.6.1.4.1.32473.1.6",
        ),
        (
            "api-client",
            ProfileKind::TlsClient,
            ExtendedKeyUsage::ClientAuth,
            825,
            "1.3.6.1.4.1.32473.1.7",
        ),
    ] {
        let p = set.get(name).expect(name);
        assert_eq!(p.kind(), kind);
        assert_eq!(p.issuer(), CaKind::Access);
        assert_eq!(p.curves(), [Curve::P256]);
        assert_eq!(p.key_usage(), [KeyUsageBit::DigitalSignature]);
        assert_eq!(p.extended_key_usage(), [eku]);
        assert_eq!(p.validity(), Validity::Days(days));
        assert_eq!(p.policy_oid(), Some(oid(policy)));
        assert!(p.crl_distribution_point());
        assert_eq!(p.path_len(), None);
    }

    let tus = set.get("trust-update-signer").expect("trust-update-signer");
    assert_eq!(tus.kind(), ProfileKind::TrustUpdateSigner);
    assert_eq!(tus.issuer(), CaKind::Organisation);
    assert_eq!(tus.curves(), [Curve::P256]);
    assert_eq!(tus.key_usage(), [KeyUsageBit::DigitalSignature]);
    assert_eq!(tus.validity(), Validity::Days(1826));
    assert_eq!(tus.policy_oid(), Some(oid("1.3.6.1.4.1.32473.1.5")));
    assert!(tus.crl_distribution_point());
    assert!(tus.extended_key_usage().is_empty());
}

#[test]
fn enum_helpers() {
    assert_eq!(ExtendedKeyUsage::ServerAuth.oid(), oid("1.3.6.1.5.5.7.3.1"));
    assert_eq!(ExtendedKeyUsage::ClientAuth.oid(), oid("1.3.6.1.5.5.7.3.2"));
    assert_eq!(CaKind::Root.name(), "root");
    assert_eq!(CaKind::Device.name(), "device");
    assert_eq!(CaKind::Organisation.name(), "organisation");
    assert_eq!(CaKind::Access.name(), "access");
}
