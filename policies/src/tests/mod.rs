//! Tests: the shipped profiles, loading a directory, and every hard limit.
//!
//! One module per topic: `shipped` (the shipped profiles' values), `sets` (loading and writing
//! profile directories), `toml_errors` (refusals at the TOML level), `names_and_lists`,
//! `meters_and_suppliers`, `cas_and_tls` (trust-update signer, TLS and CA rules) and `values`
//! (bare keys, validity, OIDs, size, the CRL pointer). The helpers below are shared by all.

mod cas_and_tls;
mod meters_and_suppliers;
mod names_and_lists;
mod sets;
mod shipped;
mod toml_errors;
mod values;

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
