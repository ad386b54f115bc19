//! Loading and writing profile directories: round trips, user edits, one bad file, a missing
//! directory, and never overwriting.

use crate::{Profile, ProfileSet, Validity};

use super::{builtin_text, edit};

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
