//! Refusals at the TOML level: unknown fields and tables, syntax errors, duplicate keys,
//! missing fields and unknown enum values, each named by its field.

use crate::Profile;

use super::{builtin_text, edit, path_of, refused};

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
