//! Key backup under a quorum (docs/hsms.md#key-replication-and-backup-under-a-quorum): the
//! key-backup ceremony's public record, what its one secret derives, and the backup file.
//!
//! One 32-byte secret is drawn at `ceremony backup-key` and split into the officers' Shamir
//! shares, as the root token's PIN is ([`crate::quorum`]). From it are derived, each for one
//! purpose and nothing else:
//! * the key-backup key (AES-256), imported into each token as `CKA_TRUSTED`: the only key
//!   the tokens will wrap the online keys under;
//! * the security-officer PIN of every online token once it holds that key, so that no SO PIN
//!   that could make another trusted key stays on the host;
//! * the MAC key of backup files (HMAC-SHA256), so one altered byte is refused at restore.
//!
//! The backup file is written by hand (three lines: format, body, MAC) because its MAC must
//! cover the exact bytes read back, which a re-serialised JSON value would not guarantee.

use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spki::SubjectPublicKeyInfoOwned;
use zeroize::Zeroizing;

use crate::hsm::{KeyInfo, WrappedKey};
use crate::quorum::{RootSecret, ShareCheck};
use crate::signer::KeyAlgorithm;

const FORMAT: &str = "meterpki-key-backup/1";
/// A backup holds a few wrapped keys: anything larger is not one.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// The public record of the key-backup ceremony (`ceremonies/key-backup.json`): enough to
/// check shares and find the key in each token, nothing to rebuild the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBackupRecord {
    /// Random identifier of the ceremony, 32 hex digits.
    pub ceremony_id: String,
    /// When it ran, RFC 3339.
    pub created: String,
    /// M.
    pub quorum: u8,
    /// N.
    pub officers: u8,
    /// Officer names, by share index.
    pub officer_names: Vec<String>,
    /// SHA-256 of each share's bytes, by share index.
    pub share_digests: Vec<String>,
    /// [`RootSecret::check_value`] of the secret.
    pub secret_check: String,
    /// CKA_LABEL of the key-backup key in every token (names the ceremony, so a key left by
    /// an abandoned ceremony is never taken for this one's).
    pub key_label: String,
}

impl KeyBackupRecord {
    /// What the key-backup shares are checked against.
    pub fn share_check(&self) -> ShareCheck<'_> {
        ShareCheck {
            what: "key-backup",
            ceremony_id: &self.ceremony_id,
            quorum: self.quorum,
            officers: self.officers,
            share_digests: &self.share_digests,
            secret_check: &self.secret_check,
        }
    }

    /// The key-backup key's label for a ceremony.
    pub fn key_label_for(ceremony_id: &str) -> String {
        format!(
            "meterpki-key-backup-{}",
            &ceremony_id[..ceremony_id.len().min(16)]
        )
    }
}

/// The key-backup ceremony's secret, rebuilt from M shares for one ceremony and zeroized when
/// dropped.
#[derive(Debug)]
pub struct BackupSecret(pub RootSecret);

impl BackupSecret {
    /// The AES-256 key-backup key's value.
    pub fn wrapping_key(&self) -> Zeroizing<[u8; 32]> {
        self.0.derive_key(b"meterpki key-backup AES-256 key\0")
    }

    /// The backup files' MAC key.
    pub fn mac_key(&self) -> Zeroizing<[u8; 32]> {
        self.0.derive_key(b"meterpki key-backup file MAC key\0")
    }

    /// The security-officer PIN of the token labelled `token` once it holds the key-backup
    /// key (64 hex digits).
    pub fn so_pin(&self, token: &str) -> Zeroizing<String> {
        let mut label = b"meterpki online token SO PIN\0".to_vec();
        label.extend_from_slice(token.as_bytes());
        label.push(0);
        Zeroizing::new(hex::encode(self.0.derive_key(&label).as_ref()))
    }
}

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupFileError {
    /// It could not be read.
    #[error("backup file {file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not a meterpki key backup.
    #[error("backup file {file} is not a meterpki key backup: {reason}")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The MAC does not match.
    #[error("backup file {file} fails its integrity check (HMAC-SHA256 under the key-backup key): it was altered, or written under another key-backup ceremony; nothing was restored")]
    Altered {
        /// The file.
        file: PathBuf,
    },
}

/// One key in a backup file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupKey {
    label: String,
    id: String,
    algorithm: String,
    /// SubjectPublicKeyInfo, DER, base64.
    spki: String,
    /// The private key wrapped with CKM_AES_KEY_WRAP_PAD, base64.
    wrapped: String,
}

/// What a backup file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupBody {
    /// The key-backup ceremony whose key wrapped the keys.
    pub ceremony_id: String,
    /// When it was written.
    pub created: String,
    /// SHA-256 fingerprint of the home's root certificate.
    pub root_sha256: String,
    /// The token the keys were wrapped on.
    pub source_token: String,
    keys: Vec<BackupKey>,
}

impl BackupBody {
    /// A body holding `keys`.
    pub fn new(
        ceremony_id: &str,
        created: &str,
        root_sha256: &str,
        source_token: &str,
        keys: &[WrappedKey],
    ) -> Result<BackupBody, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let spki = der::Encode::to_der(&k.key.spki).map_err(|e| e.to_string())?;
            out.push(BackupKey {
                label: k.key.label.clone(),
                id: hex::encode(&k.key.id),
                algorithm: k.key.algorithm.name().into(),
                spki: b64.encode(spki),
                wrapped: b64.encode(&k.wrapped),
            });
        }
        Ok(BackupBody {
            ceremony_id: ceremony_id.into(),
            created: created.into(),
            root_sha256: root_sha256.into(),
            source_token: source_token.into(),
            keys: out,
        })
    }

    /// The wrapped keys.
    pub fn keys(&self) -> Result<Vec<WrappedKey>, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let spki_der = b64
                .decode(&k.spki)
                .map_err(|e| format!("key {:?}: spki: {e}", k.label))?;
            let spki: SubjectPublicKeyInfoOwned = der::Decode::from_der(&spki_der)
                .map_err(|e| format!("key {:?}: spki: {e}", k.label))?;
            let algorithm = KeyAlgorithm::of_spki(&spki)
                .ok_or_else(|| format!("key {:?}: not a P-256 or P-384 key", k.label))?;
            if algorithm.name() != k.algorithm {
                return Err(format!(
                    "key {:?}: algorithm {:?} does not match its public key",
                    k.label, k.algorithm
                ));
            }
            out.push(WrappedKey {
                key: KeyInfo {
                    label: k.label.clone(),
                    id: hex::decode(&k.id).map_err(|e| format!("key {:?}: id: {e}", k.label))?,
                    algorithm,
                    spki,
                },
                wrapped: b64
                    .decode(&k.wrapped)
                    .map_err(|e| format!("key {:?}: wrapped: {e}", k.label))?,
            });
        }
        Ok(out)
    }

    /// The file's bytes: format line, body line, MAC line.
    pub fn to_file(&self, secret: &BackupSecret) -> Result<Vec<u8>, String> {
        let body = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let mac = mac(secret, body.as_bytes());
        Ok(format!("{FORMAT}\n{body}\nmac {mac}\n").into_bytes())
    }

    /// Reads and checks a backup file: nothing in it is believed before its MAC matches.
    pub fn read(path: &Path, secret: &BackupSecret) -> Result<BackupBody, BackupFileError> {
        let malformed = |reason: String| BackupFileError::Malformed {
            file: path.to_path_buf(),
            reason,
        };
        let bytes = crate::read_bounded(path, MAX_FILE).map_err(|source| BackupFileError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| malformed("it is not text".into()))?;
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.first() != Some(&FORMAT) {
            return Err(malformed(format!("its first line is not {FORMAT:?}")));
        }
        if lines.len() != 4 || !lines[3].is_empty() {
            return Err(malformed(
                "it does not have exactly a format line, a body line and a MAC line".into(),
            ));
        }
        let Some(tag) = lines[2].strip_prefix("mac ") else {
            return Err(malformed("its third line is not a MAC".into()));
        };
        let tag = hex::decode(tag).map_err(|_| BackupFileError::Altered {
            file: path.to_path_buf(),
        })?;
        let key = secret.mac_key();
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref())
            .map_err(|e| malformed(e.to_string()))?;
        m.update(lines[1].as_bytes());
        // Constant time, as `hmac` compares.
        m.verify_slice(&tag).map_err(|_| BackupFileError::Altered {
            file: path.to_path_buf(),
        })?;
        serde_json::from_str(lines[1]).map_err(|e| malformed(format!("body: {e}")))
    }
}

fn mac(secret: &BackupSecret, body: &[u8]) -> String {
    let key = secret.mac_key();
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("HMAC takes any key");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}
