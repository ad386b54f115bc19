//! The error returned when a profile is refused.

use std::path::{Path, PathBuf};

/// Why a profile was refused: always the file, the field and the reason.
///
/// `field` is the TOML key at fault (for example `key-usage`), or `(file)` when the file itself
/// could not be read or written, or `(toml)` when the text is not valid TOML and no key could be
/// singled out.
#[derive(Debug, thiserror::Error)]
#[error("{file}: field `{field}`: {reason}")]
pub struct ProfileError {
    /// The profile file (or directory) concerned.
    pub file: PathBuf,
    /// The field at fault: a TOML key, `(file)` or `(toml)`.
    pub field: String,
    /// Why it was refused, on one line.
    pub reason: String,
}

impl ProfileError {
    /// Builds an error for `file`, `field` and `reason`.
    pub(crate) fn new(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ProfileError {
            file: file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}
