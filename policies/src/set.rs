//! The profiles of a home, and the shipped ones.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ProfileError;
use crate::kinds::ProfileKind;
use crate::profile::Profile;

/// Field named in errors about reading or writing a file rather than its content.
const FILE_FIELD: &str = "(file)";

/// Every shipped profile as `(file name, TOML text)`, embedded from `policies/profiles/*.toml`.
///
/// The file name is `<profile name>.toml`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("root-ca.toml", include_str!("../profiles/root-ca.toml")),
    ("device-ca.toml", include_str!("../profiles/device-ca.toml")),
    (
        "organisation-ca.toml",
        include_str!("../profiles/organisation-ca.toml"),
    ),
    ("access-ca.toml", include_str!("../profiles/access-ca.toml")),
    (
        "meter-signing.toml",
        include_str!("../profiles/meter-signing.toml"),
    ),
    (
        "meter-key-agreement.toml",
        include_str!("../profiles/meter-key-agreement.toml"),
    ),
    (
        "supplier-signing.toml",
        include_str!("../profiles/supplier-signing.toml"),
    ),
    (
        "supplier-key-agreement.toml",
        include_str!("../profiles/supplier-key-agreement.toml"),
    ),
    (
        "api-server.toml",
        include_str!("../profiles/api-server.toml"),
    ),
    (
        "api-client.toml",
        include_str!("../profiles/api-client.toml"),
    ),
    (
        "trust-update-signer.toml",
        include_str!("../profiles/trust-update-signer.toml"),
    ),
];

/// All profiles of a home, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
}

impl ProfileSet {
    /// The shipped profiles ([`BUILTIN`]).
    ///
    /// # Panics
    /// Only if a shipped file is invalid, which the crate's tests rule out.
    pub fn builtin() -> ProfileSet {
        let mut profiles = BTreeMap::new();
        for (file, text) in BUILTIN {
            let profile = Profile::from_toml(Path::new(file), text)
                .unwrap_or_else(|e| panic!("shipped profile is invalid: {e}"));
            profiles.insert(profile.name().to_string(), profile);
        }
        ProfileSet { profiles }
    }

    /// Loads every `*.toml` file in `dir` (other files and sub-directories are ignored).
    ///
    /// One invalid file fails the whole load. Two files cannot define the same profile, since a
    /// profile's name must equal its file's stem. A directory without any `*.toml` file gives an
    /// empty set.
    pub fn load_dir(dir: &Path) -> Result<ProfileSet, ProfileError> {
        let entries = fs::read_dir(dir).map_err(|e| {
            ProfileError::new(
                dir,
                FILE_FIELD,
                format!("cannot read the profile directory: {e}"),
            )
        })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                ProfileError::new(
                    dir,
                    FILE_FIELD,
                    format!("cannot read the profile directory: {e}"),
                )
            })?;
            let path = entry.path();
            if path.extension() == Some(OsStr::new("toml")) && path.is_file() {
                files.push(path);
            }
        }
        files.sort();

        let mut profiles = BTreeMap::new();
        for path in files {
            let text = fs::read_to_string(&path).map_err(|e| {
                ProfileError::new(&path, FILE_FIELD, format!("cannot read the profile: {e}"))
            })?;
            let profile = Profile::from_toml(&path, &text)?;
            profiles.insert(profile.name().to_string(), profile);
        }
        Ok(ProfileSet { profiles })
    }

    /// Writes the shipped profiles ([`BUILTIN`]) into `dir`, creating it if missing.
    ///
    /// Refuses (with field `(file)`) if any of the files already exists, before writing anything,
    /// so that a user's edited profiles are never overwritten.
    pub fn write_builtin(dir: &Path) -> Result<(), ProfileError> {
        fs::create_dir_all(dir).map_err(|e| {
            ProfileError::new(
                dir,
                FILE_FIELD,
                format!("cannot create the profile directory: {e}"),
            )
        })?;
        for (file, _) in BUILTIN {
            let path = dir.join(file);
            if fs::symlink_metadata(&path).is_ok() {
                return Err(already_exists(&path));
            }
        }
        for (file, text) in BUILTIN {
            let path = dir.join(file);
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        already_exists(&path)
                    } else {
                        ProfileError::new(&path, FILE_FIELD, format!("cannot create: {e}"))
                    }
                })?;
            out.write_all(text.as_bytes())
                .and_then(|()| out.sync_all())
                .map_err(|e| ProfileError::new(&path, FILE_FIELD, format!("cannot write: {e}")))?;
        }
        Ok(())
    }

    /// The profile called `name`, if the set has one.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The profiles of one kind, by name (e.g. every supplier profile).
    pub fn of_kind(&self, kind: ProfileKind) -> impl Iterator<Item = &Profile> {
        self.profiles.values().filter(move |p| p.kind() == kind)
    }

    /// The names of all profiles, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    /// All profiles, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// How many profiles the set holds.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// True if the set holds no profile.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// The error for a file [`ProfileSet::write_builtin`] will not overwrite.
fn already_exists(path: &Path) -> ProfileError {
    ProfileError::new(
        path,
        FILE_FIELD,
        "already exists; refusing to overwrite it (move it away to get the shipped profile back)",
    )
}
