//! The `name` rules (form, length, equal to the file stem) and the lists' (non-empty, no
//! duplicates).

use std::path::Path;

use crate::{Curve, Profile};

use super::{builtin_text, edit, load_edited, path_of, refused};

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
