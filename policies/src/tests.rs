//! Tests: the shipped profiles, loading a directory, and every hard limit.

use std::path::{Path, PathBuf};

use crate::*;

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new(s).expect("test OID")
}

/// Where the test profiles pretend to live; every error must name this path.
fn path_of(name: &str) -> PathBuf {
    Path::new("home")
        .join("profiles")
        .join(format!("{name}.toml"))
}

/// The shipped TOML text of profile `name`.
fn builtin_text(name: &str) -> String {
    let file = format!("{name}.toml");
    BUILTIN
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, t)| t.to_string())
        .expect("shipped profile")
}

/// `text` with the line `key = ...` replaced by `key = value` (appended if absent), or removed
/// when `value` is `None`.
fn edit(text: &str, key: &str, value: Option<&str>) -> String {
    let prefix = format!("{key} =");
    let mut found = false;
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with(&prefix) {
            found = true;
            if let Some(v) = value {
                out.push(format!("{key} = {v}"));
            }
        } else {
            out.push(line.to_string());
        }
    }
    if !found {
        if let Some(v) = value {
            out.push(format!("{key} = {v}"));
        }
    }
    out.join("\n") + "\n"
}

/// Loads the shipped profile `name` with `edits` applied.
fn load_edited(name: &str, edits: &[(&str, Option<&str>)]) -> Result<Profile, ProfileError> {
    let mut text = builtin_text(name);
    for (key, value) in edits {
        text = edit(&text, key, *value);
    }
    Profile::from_toml(&path_of(name), &text)
}

/// Asserts that the edited profile is refused naming `field`, with the file path in the message.
fn refused(name: &str, edits: &[(&str, Option<&str>)], field: &str) -> ProfileError {
    let e = match load_edited(name, edits) {
        Ok(p) => panic!("{name} with {edits:?} was accepted: {p:?}"),
        Err(e) => e,
    };
    assert_eq!(e.field, field, "wrong field in: {e}");
    assert_eq!(e.file, path_of(name));
    let shown = e.to_string();
    assert!(
        shown.contains(&path_of(name).display().to_string()),
        "path missing from: {shown}"
    );
    assert!(
        shown.contains(&format!("`{field}`")),
        "field missing from: {shown}"
    );
    assert!(!e.reason.contains('\n'), "reason spans lines: {shown}");
    e
}

// ---- shipped profiles -------------------------------------------------------------------------

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
    assert_eq!(root.validity(), Validity::Days(9131));
    assert_eq!(root.path_len(), Some(1));
    assert_eq!(root.policy_oid(), None);
    assert_eq!(root.device_type_oid(), None);
    assert!(!root.crl_distribution_point());
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
        assert_eq!(p.validity(), Validity::Days(5479));
        assert_eq!(p.path_len(), Some(0));
        assert_eq!(p.policy_oid(), None);
        assert_eq!(p.device_type_oid(), None);
        assert!(!p.crl_distribution_point());
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

// ---- directories ------------------------------------------------------------------------------

#[test]
fn write_builtin_then_load_dir_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("profiles");
    ProfileSet::write_builtin(&dir).expect("write into a fresh directory");
    std::fs::write(dir.join("README.txt"), "not a profile").expect("write");
    std::fs::create_dir(dir.join("old.toml")).expect("mkdir");
    let loaded = ProfileSet::load_dir(&dir).expect("load_dir");
    assert_eq!(loaded, ProfileSet::builtin());
}

#[test]
fn load_dir_sees_user_edits_and_extra_profiles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    ProfileSet::write_builtin(tmp.path()).expect("write");
    let text = edit(
        &builtin_text("supplier-signing"),
        "validity-days",
        Some("365"),
    );
    let extra = edit(&text, "name", Some("\"other-party-signing\""));
    std::fs::write(tmp.path().join("supplier-signing.toml"), &text).expect("write");
    std::fs::write(tmp.path().join("other-party-signing.toml"), &extra).expect("write");
    let set = ProfileSet::load_dir(tmp.path()).expect("load");
    assert_eq!(set.len(), 12);
    assert_eq!(
        set.get("supplier-signing").map(Profile::validity),
        Some(Validity::Days(365))
    );
    assert!(set.get("other-party-signing").is_some());
}

#[test]
fn load_dir_fails_on_one_invalid_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    ProfileSet::write_builtin(tmp.path()).expect("write");
    let bad = edit(&builtin_text("meter-signing"), "curves", Some("[\"p384\"]"));
    let path = tmp.path().join("meter-signing.toml");
    std::fs::write(&path, bad).expect("write");
    let e = ProfileSet::load_dir(tmp.path()).expect_err("invalid profile");
    assert_eq!(e.file, path);
    assert_eq!(e.field, "curves");
    assert!(e.to_string().contains(&path.display().to_string()));
}

#[test]
fn load_dir_of_missing_directory_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nowhere");
    let e = ProfileSet::load_dir(&dir).expect_err("missing dir");
    assert_eq!(e.field, "(file)");
    assert!(e.to_string().contains(&dir.display().to_string()));
}

#[test]
fn write_builtin_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("api-client.toml");
    std::fs::write(&path, "# my own edits\n").expect("write");
    let e = ProfileSet::write_builtin(tmp.path()).expect_err("must not overwrite");
    assert_eq!(e.field, "(file)");
    assert_eq!(e.file, path);
    assert!(e.to_string().contains(&path.display().to_string()));
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "# my own edits\n"
    );
    // Nothing was written before the refusal.
    assert!(!tmp.path().join("root-ca.toml").exists());

    // A second write over a complete copy is refused too.
    let tmp = tempfile::tempdir().expect("tempdir");
    ProfileSet::write_builtin(tmp.path()).expect("first write");
    let e = ProfileSet::write_builtin(tmp.path()).expect_err("second write");
    assert_eq!(e.field, "(file)");
}

// ---- TOML-level refusals ----------------------------------------------------------------------

#[test]
fn unknown_field_is_refused_by_name() {
    let e = refused("meter-signing", &[("colour", Some("\"blue\""))], "colour");
    assert!(e.reason.contains("unknown field"), "{e}");
}

#[test]
fn unknown_table_is_refused_by_name() {
    let text = builtin_text("meter-signing") + "\n[extras]\nx = 1\n";
    let e = Profile::from_toml(&path_of("meter-signing"), &text).expect_err("unknown table");
    assert_eq!(e.field, "extras");
}

#[test]
fn toml_syntax_error_is_refused() {
    let text = builtin_text("meter-signing") + "this is not toml\n";
    let e = Profile::from_toml(&path_of("meter-signing"), &text).expect_err("syntax");
    assert_eq!(e.field, "(toml)");
    assert!(e
        .to_string()
        .contains(&path_of("meter-signing").display().to_string()));
    assert!(!e.reason.contains('\n'));

    let e = refused("meter-signing", &[("kind", Some("\"meter"))], "kind");
    assert!(!e.reason.is_empty());
}

#[test]
fn duplicate_key_is_refused_by_name() {
    let text = builtin_text("meter-signing") + "kind = \"meter\"\n";
    let e = Profile::from_toml(&path_of("meter-signing"), &text).expect_err("duplicate");
    assert_eq!(e.field, "kind");
}

#[test]
fn missing_required_fields_are_refused_by_name() {
    for key in ["name", "kind", "issuer", "key-usage", "curves"] {
        refused("meter-signing", &[(key, None)], key);
    }
}

#[test]
fn unknown_enum_values_are_refused_by_field() {
    refused("meter-signing", &[("kind", Some("\"gas-meter\""))], "kind");
    refused("meter-signing", &[("issuer", Some("\"sub-ca\""))], "issuer");
    refused("meter-signing", &[("curves", Some("[\"p521\"]"))], "curves");
    refused(
        "meter-signing",
        &[("key-usage", Some("[\"encipher-only\"]"))],
        "key-usage",
    );
    refused(
        "api-server",
        &[("extended-key-usage", Some("[\"code-signing\"]"))],
        "extended-key-usage",
    );
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("\"460\""))],
        "max-der-bytes",
    );
}

#[test]
fn value_in_multi_line_array_is_refused_by_field() {
    let text = edit(
        &builtin_text("meter-signing"),
        "curves",
        Some("[\n  \"p256\",\n  \"p999\",\n]"),
    );
    let e = Profile::from_toml(&path_of("meter-signing"), &text).expect_err("bad curve");
    assert_eq!(e.field, "curves", "{e}");
}

// ---- name ------------------------------------------------------------------------------------

#[test]
fn name_rules() {
    refused("meter-signing", &[("name", Some("\"\""))], "name");
    refused(
        "meter-signing",
        &[("name", Some("\"Meter-Signing\""))],
        "name",
    );
    refused(
        "meter-signing",
        &[("name", Some("\"meter_signing\""))],
        "name",
    );
    let long = format!("\"{}\"", "a".repeat(65));
    refused("meter-signing", &[("name", Some(long.as_str()))], "name");
}

#[test]
fn name_must_equal_file_stem() {
    let e = refused(
        "meter-signing",
        &[("name", Some("\"meter-signing-2\""))],
        "name",
    );
    assert!(e.reason.contains("file name"), "{e}");

    // The same valid text under another file name.
    let text = builtin_text("meter-signing");
    let e = Profile::from_toml(Path::new("x/meter.toml"), &text).expect_err("stem");
    assert_eq!(e.field, "name");

    // A 64-character name is fine when the file matches.
    let name = "a".repeat(64);
    let text = edit(&text, "name", Some(&format!("\"{name}\"")));
    Profile::from_toml(&path_of(&name), &text).expect("64 characters");
}

// ---- lists ------------------------------------------------------------------------------------

#[test]
fn lists_must_be_non_empty_without_duplicates() {
    refused("root-ca", &[("curves", Some("[]"))], "curves");
    refused(
        "root-ca",
        &[("curves", Some("[\"p384\", \"p384\"]"))],
        "curves",
    );
    refused("root-ca", &[("key-usage", Some("[]"))], "key-usage");
    refused(
        "root-ca",
        &[(
            "key-usage",
            Some("[\"key-cert-sign\", \"crl-sign\", \"crl-sign\"]"),
        )],
        "key-usage",
    );
    // Several curves are fine where no rule fixes them.
    let p = load_edited("device-ca", &[("curves", Some("[\"p256\", \"p384\"]"))]).expect("ok");
    assert_eq!(p.curves(), [Curve::P256, Curve::P384]);
}

// ---- meters and suppliers ---------------------------------------------------------------------

#[test]
fn meters_and_suppliers_are_p256_only() {
    for name in ["meter-signing", "supplier-key-agreement"] {
        let e = refused(name, &[("curves", Some("[\"p384\"]"))], "curves");
        assert!(e.reason.contains("P-256 only"), "{e}");
        refused(name, &[("curves", Some("[\"p256\", \"p384\"]"))], "curves");
    }
}

#[test]
fn meters_and_suppliers_have_one_key_usage_bit() {
    for name in ["meter-key-agreement", "supplier-signing"] {
        let e = refused(
            name,
            &[(
                "key-usage",
                Some("[\"digital-signature\", \"key-agreement\"]"),
            )],
            "key-usage",
        );
        assert!(e.reason.contains("one keyUsage bit per certificate"), "{e}");
        refused(
            name,
            &[("key-usage", Some("[\"key-cert-sign\"]"))],
            "key-usage",
        );
    }
}

#[test]
fn meter_rules() {
    let e = refused(
        "meter-signing",
        &[("device-type-oid", None)],
        "device-type-oid",
    );
    assert!(e.reason.contains("hardwareModuleName"), "{e}");
    refused("meter-signing", &[("policy-oid", None)], "policy-oid");
    refused(
        "meter-signing",
        &[("issuer", Some("\"organisation\""))],
        "issuer",
    );
}

#[test]
fn supplier_rules() {
    refused("supplier-signing", &[("policy-oid", None)], "policy-oid");
    refused(
        "supplier-signing",
        &[("device-type-oid", Some("\"1.3.6.1.4.1.32473.2.1\""))],
        "device-type-oid",
    );
    refused(
        "supplier-signing",
        &[("issuer", Some("\"device\""))],
        "issuer",
    );
}

// ---- trust-update signer, TLS -----------------------------------------------------------------

#[test]
fn trust_update_signer_rules() {
    refused(
        "trust-update-signer",
        &[("issuer", Some("\"root\""))],
        "issuer",
    );
    refused(
        "trust-update-signer",
        &[("key-usage", Some("[\"key-agreement\"]"))],
        "key-usage",
    );
    refused("trust-update-signer", &[("policy-oid", None)], "policy-oid");
}

#[test]
fn tls_rules() {
    for name in ["api-server", "api-client"] {
        refused(name, &[("issuer", Some("\"organisation\""))], "issuer");
        refused(
            name,
            &[(
                "key-usage",
                Some("[\"digital-signature\", \"key-agreement\"]"),
            )],
            "key-usage",
        );
        refused(name, &[("extended-key-usage", None)], "extended-key-usage");
        refused(
            name,
            &[(
                "extended-key-usage",
                Some("[\"server-auth\", \"client-auth\"]"),
            )],
            "extended-key-usage",
        );
    }
    refused(
        "api-server",
        &[("extended-key-usage", Some("[\"client-auth\"]"))],
        "extended-key-usage",
    );
    refused(
        "api-client",
        &[("extended-key-usage", Some("[\"server-auth\"]"))],
        "extended-key-usage",
    );
    // policy-oid is optional for TLS.
    let p = load_edited("api-server", &[("policy-oid", None)]).expect("no policy OID is fine");
    assert_eq!(p.policy_oid(), None);
    // Default CRL pointer for TLS is on.
    let p = load_edited("api-client", &[("crl-distribution-point", None)]).expect("default");
    assert!(p.crl_distribution_point());
}

#[test]
fn extended_key_usage_is_forbidden_outside_tls() {
    for name in [
        "meter-signing",
        "supplier-signing",
        "trust-update-signer",
        "root-ca",
        "device-ca",
    ] {
        refused(
            name,
            &[("extended-key-usage", Some("[\"server-auth\"]"))],
            "extended-key-usage",
        );
    }
}

// ---- CAs --------------------------------------------------------------------------------------

#[test]
fn ca_rules() {
    refused("root-ca", &[("issuer", Some("\"device\""))], "issuer");
    refused(
        "device-ca",
        &[("issuer", Some("\"organisation\""))],
        "issuer",
    );
    refused("root-ca", &[("path-len", None)], "path-len");
    refused("access-ca", &[("path-len", None)], "path-len");
    refused("access-ca", &[("path-len", Some("-1"))], "path-len");
    refused("access-ca", &[("path-len", Some("256"))], "path-len");
    refused(
        "root-ca",
        &[("key-usage", Some("[\"key-cert-sign\"]"))],
        "key-usage",
    );
    refused(
        "organisation-ca",
        &[(
            "key-usage",
            Some("[\"key-cert-sign\", \"crl-sign\", \"digital-signature\"]"),
        )],
        "key-usage",
    );
    refused(
        "device-ca",
        &[("device-type-oid", Some("\"1.3.6.1.4.1.32473.2.1\""))],
        "device-type-oid",
    );
    // Order of the two bits does not matter; policy-oid is optional for CAs.
    let p = load_edited(
        "root-ca",
        &[
            ("key-usage", Some("[\"crl-sign\", \"key-cert-sign\"]")),
            ("policy-oid", Some("\"2.5.29.32.0\"")),
            ("crl-distribution-point", None),
        ],
    )
    .expect("valid");
    assert_eq!(p.policy_oid(), Some(oid("2.5.29.32.0")));
    assert!(!p.crl_distribution_point(), "CAs default to no CRL pointer");
}

#[test]
fn path_len_is_forbidden_outside_cas() {
    for name in [
        "meter-signing",
        "supplier-signing",
        "api-server",
        "trust-update-signer",
    ] {
        refused(name, &[("path-len", Some("0"))], "path-len");
    }
}

// ---- bare keys, validity ----------------------------------------------------------------------

#[test]
fn bare_public_key_is_for_meters_only() {
    for name in [
        "supplier-signing",
        "api-client",
        "trust-update-signer",
        "device-ca",
    ] {
        refused(
            name,
            &[("allow-bare-public-key", Some("true"))],
            "allow-bare-public-key",
        );
    }
    // Saying false explicitly is harmless.
    let p = load_edited(
        "supplier-signing",
        &[("allow-bare-public-key", Some("false"))],
    )
    .expect("false is fine");
    assert!(!p.allow_bare_public_key());
    // Meters default to false.
    let p = load_edited("meter-signing", &[("allow-bare-public-key", None)]).expect("default");
    assert!(!p.allow_bare_public_key());
}

#[test]
fn validity_rules() {
    // "unlimited" is for meters only.
    for name in [
        "supplier-signing",
        "root-ca",
        "api-server",
        "trust-update-signer",
    ] {
        refused(
            name,
            &[("validity-days", None), ("validity", Some("\"unlimited\""))],
            "validity",
        );
    }
    // Exactly one of the two.
    refused(
        "meter-signing",
        &[("validity-days", Some("365"))],
        "validity",
    );
    refused("meter-signing", &[("validity", None)], "validity-days");
    // Only "unlimited" is a word validity accepts.
    refused(
        "meter-signing",
        &[("validity", Some("\"forever\""))],
        "validity",
    );
    refused("meter-signing", &[("validity", Some("36500"))], "validity");
    // Days between 1 and 36500.
    refused(
        "supplier-signing",
        &[("validity-days", Some("0"))],
        "validity-days",
    );
    refused(
        "supplier-signing",
        &[("validity-days", Some("-5"))],
        "validity-days",
    );
    refused(
        "supplier-signing",
        &[("validity-days", Some("36501"))],
        "validity-days",
    );
    refused(
        "supplier-signing",
        &[("validity-days", Some("5000000000"))],
        "validity-days",
    );
    for days in [1, 36500] {
        let p = load_edited(
            "supplier-signing",
            &[("validity-days", Some(&days.to_string()))],
        )
        .expect("in range");
        assert_eq!(p.validity(), Validity::Days(days));
    }
    // A meter may have a fixed lifetime too.
    let p = load_edited(
        "meter-signing",
        &[("validity", None), ("validity-days", Some("3650"))],
    )
    .expect("fixed meter lifetime");
    assert_eq!(p.validity(), Validity::Days(3650));
}

// ---- OIDs, size -------------------------------------------------------------------------------

#[test]
fn oids_must_be_well_formed() {
    for bad in [
        "\"\"",
        "\"1.3.6.1.4.1.32473.1.\"",
        "\"banana\"",
        "\"1.3.x.4\"",
        "\"9.1.2\"",
        "\"1.2\"",
    ] {
        refused("meter-signing", &[("policy-oid", Some(bad))], "policy-oid");
        refused(
            "meter-signing",
            &[("device-type-oid", Some(bad))],
            "device-type-oid",
        );
    }
    let e = refused(
        "meter-signing",
        &[("policy-oid", Some("\"banana\""))],
        "policy-oid",
    );
    assert!(e.reason.contains("not a valid OID"), "{e}");
    let e = refused(
        "supplier-signing",
        &[("policy-oid", Some("\"1.2\""))],
        "policy-oid",
    );
    assert!(e.reason.contains("3"), "{e}");
}

#[test]
fn max_der_bytes_range() {
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("127"))],
        "max-der-bytes",
    );
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("8193"))],
        "max-der-bytes",
    );
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("-1"))],
        "max-der-bytes",
    );
    for n in [128, 8192] {
        let p = load_edited("meter-signing", &[("max-der-bytes", Some(&n.to_string()))])
            .expect("in range");
        assert_eq!(p.max_der_bytes(), Some(n));
    }
    let p = load_edited("meter-signing", &[("max-der-bytes", None)]).expect("optional");
    assert_eq!(p.max_der_bytes(), None);
}

#[test]
fn crl_distribution_point_can_be_switched_off() {
    let p = load_edited(
        "meter-signing",
        &[("crl-distribution-point", Some("false"))],
    )
    .expect("valid");
    assert!(!p.crl_distribution_point());
    let p = load_edited("meter-signing", &[("crl-distribution-point", None)]).expect("valid");
    assert!(
        p.crl_distribution_point(),
        "meters default to a CRL pointer"
    );
}
