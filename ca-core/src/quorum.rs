//! M-of-N custody of the root token (docs/design.md#the-hierarchy).
//!
//! At the root ceremony a 32-byte secret is drawn from the OS RNG; the root token's user and SO
//! PINs are derived from it and it is split with Shamir's scheme over GF(2^8) (`vsss-rs`) into N
//! shares, one file per officer. Any M shares rebuild it; fewer reveal nothing.
//!
//! What `vsss-rs` does not do, and this module adds: a share *file* format with a checksum (a
//! truncated or corrupted file is named as such), the ceremony's identity in every share (a
//! share from another ceremony is refused, never combined into a wrong PIN), and a public
//! ceremony record holding the SHA-256 of every share and a check value of the secret, so a
//! share altered with a recomputed checksum is caught too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

const FORMAT: &str = "meterpki-share/1";

/// Why shares could not be made or combined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// The file could not be read.
    #[error("share file {file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a complete meterpki share.
    #[error("share file {file} is corrupt or truncated: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The share belongs to another ceremony.
    #[error(
        "share file {file} belongs to ceremony {found}, not to this home's {what} ceremony {expected}"
    )]
    Foreign {
        /// Which ceremony's shares were expected (`root`, `key-backup`).
        what: &'static str,
        /// The file.
        file: PathBuf,
        /// The ceremony the share names.
        found: String,
        /// This home's ceremony.
        expected: String,
    },
    /// The share's content differs from what was issued at the ceremony.
    #[error("share file {file} ({officer}) does not match the share issued at the {what} ceremony: it was altered")]
    Altered {
        /// Which ceremony.
        what: &'static str,
        /// The file.
        file: PathBuf,
        /// The officer it names.
        officer: String,
    },
    /// Two files carry the same share.
    #[error("share files {first} and {second} are the same share ({officer}); each officer's share counts once")]
    Duplicate {
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
        /// The officer.
        officer: String,
    },
    /// Fewer distinct shares than the quorum.
    #[error("got {got} distinct share(s), the quorum is {need} of {officers}")]
    TooFew {
        /// Distinct valid shares given.
        got: usize,
        /// The quorum M.
        need: usize,
        /// N.
        officers: usize,
    },
    /// Parameters out of range.
    #[error("{0}")]
    Parameters(String),
    /// The rebuilt secret does not match the ceremony's check value.
    #[error("the shares combine to a secret that does not match the {0} ceremony's check value")]
    WrongSecret(&'static str),
}

/// The secret behind the root token's PINs. Zeroized on drop; never printed.
pub struct RootSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootSecret([secret elided])")
    }
}

impl RootSecret {
    /// Draws a fresh secret from the OS RNG.
    pub fn generate() -> RootSecret {
        let mut s = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(s.as_mut());
        RootSecret(s)
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<String> {
        let mut h = Sha256::new();
        h.update(label);
        h.update(self.0.as_ref());
        let mut d = h.finalize();
        let s = Zeroizing::new(hex::encode(d));
        d.iter_mut().for_each(|b| *b = 0);
        s
    }

    /// 32 bytes derived from the secret for one purpose (`label` names it): the key-backup
    /// ceremony's AES key, MAC key and SO PINs all come from its one shared secret.
    pub fn derive_key(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(label);
        h.update(self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        let mut d = h.finalize();
        out.copy_from_slice(&d);
        d.iter_mut().for_each(|b| *b = 0);
        out
    }

    /// The root token's user PIN (64 hex characters).
    pub fn user_pin(&self) -> Zeroizing<String> {
        self.derive(b"meterpki root token user PIN\0")
    }

    /// The root token's security-officer PIN.
    pub fn so_pin(&self) -> Zeroizing<String> {
        self.derive(b"meterpki root token SO PIN\0")
    }

    /// A public check value bound to the ceremony: reveals nothing of the 256-bit secret.
    pub fn check_value(&self, ceremony_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"meterpki root secret check\0");
        h.update(ceremony_id.as_bytes());
        h.update(self.0.as_ref());
        hex::encode(h.finalize())
    }
}

/// One officer's share, as written to its file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareFile {
    /// Always `meterpki-share/1`.
    pub format: String,
    /// The root ceremony this share belongs to.
    pub ceremony: String,
    /// The officer who holds it.
    pub officer: String,
    /// Share index, 1..=N.
    pub index: u8,
    /// M.
    pub quorum: u8,
    /// N.
    pub officers: u8,
    /// The share bytes (identifier byte then 32 bytes), hex.
    pub share: String,
    /// First 16 hex digits of SHA-256 over the fields above: catches truncation and typos.
    pub checksum: String,
}

impl std::fmt::Debug for ShareFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFile")
            .field("ceremony", &self.ceremony)
            .field("officer", &self.officer)
            .field("index", &self.index)
            .field("share", &"[secret elided]")
            .finish()
    }
}

impl Drop for ShareFile {
    fn drop(&mut self) {
        self.share.zeroize();
    }
}

impl ShareFile {
    fn compute_checksum(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.format.as_str(),
            &self.ceremony,
            &self.officer,
            &self.index.to_string(),
            &self.quorum.to_string(),
            &self.officers.to_string(),
            &self.share,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }

    /// The share's bytes.
    fn bytes(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        let b = Zeroizing::new(hex::decode(&self.share).map_err(|e| format!("share: {e}"))?);
        if b.len() != 33 {
            return Err(format!("share: expected 33 bytes, found {}", b.len()));
        }
        if b[0] != self.index {
            return Err("share: identifier byte does not match index".into());
        }
        Ok(b)
    }

    /// SHA-256 of the share bytes, as recorded in the ceremony record.
    fn digest(&self) -> Result<String, String> {
        Ok(hex::encode(Sha256::digest(self.bytes()?.as_slice())))
    }

    /// Reads and checks a share file.
    pub fn read(path: &Path) -> Result<ShareFile, QuorumError> {
        use std::io::Read;
        // A share file is a few hundred bytes: reading is bounded (`--share /dev/zero` is an
        // error, not all the memory).
        const LIMIT: u64 = 64 * 1024;
        let io = |source| QuorumError::Io {
            file: path.to_path_buf(),
            source,
        };
        let mut bytes = Zeroizing::new(Vec::new());
        std::fs::File::open(path)
            .map_err(io)?
            .take(LIMIT + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > LIMIT {
            return Err(QuorumError::Corrupt {
                file: path.to_path_buf(),
                reason: format!("it is larger than {} KiB: not a share file", LIMIT / 1024),
            });
        }
        let text = Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| {
            QuorumError::Corrupt {
                file: path.to_path_buf(),
                reason: "it is not text: not a share file".into(),
            }
        })?);
        ShareFile::parse(&text, path)
    }

    /// Parses and checks the text of a share file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ShareFile, QuorumError> {
        let corrupt = |reason: String| QuorumError::Corrupt {
            file: path.to_path_buf(),
            reason,
        };
        // Comment lines (the header telling an officer what the file is) are skipped.
        let body: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let body = Zeroizing::new(body);
        if body.trim().is_empty() {
            return Err(corrupt("the file is empty".into()));
        }
        let share: ShareFile = serde_json::from_str(&body).map_err(|e| {
            // serde_json's message never contains the secret: only positions and field names.
            corrupt(format!("not a complete share ({e})"))
        })?;
        if share.format != FORMAT {
            return Err(corrupt(format!(
                "format is {:?}, expected {FORMAT:?}",
                share.format
            )));
        }
        if share.compute_checksum() != share.checksum {
            return Err(corrupt("checksum does not match the content".into()));
        }
        share.bytes().map_err(corrupt)?;
        if share.index == 0 || share.index > share.officers || share.quorum > share.officers {
            return Err(corrupt(
                "index, quorum and officers are inconsistent".into(),
            ));
        }
        Ok(share)
    }

    /// The file's text: a comment header, then one JSON object.
    pub fn to_text(&self) -> Zeroizing<String> {
        self.to_text_for("root-token", "open the root token")
    }

    /// The file's text, its header naming what the share is for (`kind`) and what any M do.
    pub fn to_text_for(&self, kind: &str, purpose: &str) -> Zeroizing<String> {
        let json = Zeroizing::new(serde_json::to_string_pretty(self).unwrap_or_default());
        Zeroizing::new(format!(
            "# meterpki {kind} share for {officer} (share {index} of {n}, any {m} {purpose}).\n\
             # Keep it offline and apart from the other shares. Ceremony {ceremony}.\n{json}\n",
            officer = self.officer,
            index = self.index,
            n = self.officers,
            m = self.quorum,
            ceremony = self.ceremony,
            json = json.as_str(),
        ))
    }
}

/// The public record of a root ceremony: enough to check shares, nothing to rebuild the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyRecord {
    /// Random identifier of the ceremony, 32 hex digits.
    pub ceremony_id: String,
    /// When it ran, RFC 3339.
    pub created: String,
    /// M.
    pub quorum: u8,
    /// N.
    pub officers: u8,
    /// Officer names, by share index (1-based: element 0 is share 1).
    pub officer_names: Vec<String>,
    /// SHA-256 of each share's bytes, by share index.
    pub share_digests: Vec<String>,
    /// `RootSecret::check_value`.
    pub secret_check: String,
    /// Label of the root token.
    pub root_token: String,
    /// CKA_LABEL of the root key.
    pub root_key_label: String,
    /// CKA_ID of the root key, hex.
    pub root_key_id: String,
    /// SHA-256 fingerprint of the root certificate.
    pub root_cert_sha256: String,
}

/// Splits `secret` into `officers` shares, any `quorum` of which rebuild it. Returns the share
/// files (in officer order) and the share digests for the ceremony record.
pub fn split_secret(
    secret: &RootSecret,
    ceremony_id: &str,
    quorum: u8,
    officer_names: &[String],
) -> Result<(Vec<ShareFile>, Vec<String>), QuorumError> {
    let officers = officer_names.len();
    if quorum < 2 {
        return Err(QuorumError::Parameters(
            "--quorum must be at least 2: one officer alone is not a quorum".into(),
        ));
    }
    if officers < usize::from(quorum) || officers > 255 {
        return Err(QuorumError::Parameters(format!(
            "--officers must be between the quorum ({quorum}) and 255, got {officers}"
        )));
    }
    let raw = vsss_rs::Gf256::split_array(
        usize::from(quorum),
        officers,
        secret.0.as_ref(),
        rand::rngs::OsRng,
    )
    .map_err(|e| QuorumError::Parameters(format!("secret sharing failed: {e:?}")))?;
    let mut files = Vec::with_capacity(officers);
    let mut digests = Vec::with_capacity(officers);
    for (i, bytes) in raw.into_iter().enumerate() {
        let bytes = Zeroizing::new(bytes);
        let index = u8::try_from(i + 1).expect("at most 255 officers");
        if bytes.first() != Some(&index) {
            return Err(QuorumError::Parameters(
                "secret sharing returned shares out of order".into(),
            ));
        }
        let mut f = ShareFile {
            format: FORMAT.into(),
            ceremony: ceremony_id.into(),
            officer: officer_names[i].clone(),
            index,
            quorum,
            officers: officers as u8,
            share: hex::encode(bytes.as_slice()),
            checksum: String::new(),
        };
        f.checksum = f.compute_checksum();
        digests.push(hex::encode(Sha256::digest(bytes.as_slice())));
        files.push(f);
    }
    Ok((files, digests))
}

/// What shares are checked against: the public record of the ceremony that made them.
#[derive(Debug, Clone, Copy)]
pub struct ShareCheck<'a> {
    /// Which ceremony, for errors: `root`, `key-backup`.
    pub what: &'static str,
    /// Its identifier.
    pub ceremony_id: &'a str,
    /// M.
    pub quorum: u8,
    /// N.
    pub officers: u8,
    /// SHA-256 of each share's bytes, by share index.
    pub share_digests: &'a [String],
    /// [`RootSecret::check_value`].
    pub secret_check: &'a str,
}

impl CeremonyRecord {
    /// What the root ceremony's shares are checked against.
    pub fn share_check(&self) -> ShareCheck<'_> {
        ShareCheck {
            what: "root",
            ceremony_id: &self.ceremony_id,
            quorum: self.quorum,
            officers: self.officers,
            share_digests: &self.share_digests,
            secret_check: &self.secret_check,
        }
    }
}

/// Checks the given shares against the root ceremony record and rebuilds the root secret.
pub fn combine_shares(
    record: &CeremonyRecord,
    shares: &[(PathBuf, ShareFile)],
) -> Result<RootSecret, QuorumError> {
    combine_checked(&record.share_check(), shares)
}

/// Checks the given shares against a ceremony's record and rebuilds its secret.
pub fn combine_checked(
    record: &ShareCheck<'_>,
    shares: &[(PathBuf, ShareFile)],
) -> Result<RootSecret, QuorumError> {
    let what = record.what;
    let mut by_index: BTreeMap<u8, &(PathBuf, ShareFile)> = BTreeMap::new();
    for entry in shares {
        let (file, share) = entry;
        if share.ceremony != record.ceremony_id {
            return Err(QuorumError::Foreign {
                what,
                file: file.clone(),
                found: share.ceremony.clone(),
                expected: record.ceremony_id.to_string(),
            });
        }
        let expected = record
            .share_digests
            .get(usize::from(share.index).wrapping_sub(1))
            .ok_or_else(|| QuorumError::Altered {
                what,
                file: file.clone(),
                officer: share.officer.clone(),
            })?;
        let digest = share.digest().map_err(|reason| QuorumError::Corrupt {
            file: file.clone(),
            reason,
        })?;
        if &digest != expected || share.quorum != record.quorum || share.officers != record.officers
        {
            return Err(QuorumError::Altered {
                what,
                file: file.clone(),
                officer: share.officer.clone(),
            });
        }
        if let Some(first) = by_index.get(&share.index) {
            return Err(QuorumError::Duplicate {
                first: first.0.clone(),
                second: file.clone(),
                officer: share.officer.clone(),
            });
        }
        by_index.insert(share.index, entry);
    }
    let need = usize::from(record.quorum);
    if by_index.len() < need {
        return Err(QuorumError::TooFew {
            got: by_index.len(),
            need,
            officers: usize::from(record.officers),
        });
    }
    let mut raw: Vec<Vec<u8>> = Vec::with_capacity(by_index.len());
    for (file, share) in by_index.values() {
        let bytes = share.bytes().map_err(|reason| QuorumError::Corrupt {
            file: file.clone(),
            reason,
        })?;
        raw.push(bytes.to_vec());
    }
    let combined = vsss_rs::Gf256::combine_array(&raw);
    for r in raw.iter_mut() {
        r.zeroize();
    }
    let mut combined = combined.map_err(|_| QuorumError::WrongSecret(what))?;
    if combined.len() != 32 {
        combined.zeroize();
        return Err(QuorumError::WrongSecret(what));
    }
    let mut s = Zeroizing::new([0u8; 32]);
    s.copy_from_slice(&combined);
    combined.zeroize();
    let secret = RootSecret(s);
    if secret.check_value(record.ceremony_id) != record.secret_check {
        return Err(QuorumError::WrongSecret(what));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("officer-{i}")).collect()
    }

    fn ceremony(quorum: u8, n: usize) -> (RootSecret, Vec<ShareFile>, CeremonyRecord) {
        let secret = RootSecret::generate();
        let id = "00112233445566778899aabbccddeeff";
        let (files, digests) = split_secret(&secret, id, quorum, &names(n)).unwrap();
        let record = CeremonyRecord {
            ceremony_id: id.into(),
            created: String::new(),
            quorum,
            officers: n as u8,
            officer_names: names(n),
            share_digests: digests,
            secret_check: secret.check_value(id),
            root_token: "r".into(),
            root_key_label: "k".into(),
            root_key_id: "00".into(),
            root_cert_sha256: String::new(),
        };
        (secret, files, record)
    }

    fn with_paths(files: &[ShareFile]) -> Vec<(PathBuf, ShareFile)> {
        files
            .iter()
            .map(|f| (PathBuf::from(format!("{}.share", f.officer)), f.clone()))
            .collect()
    }

    #[test]
    fn any_quorum_rebuilds_the_same_pin() {
        let (secret, files, record) = ceremony(3, 5);
        for pick in [[0, 1, 2], [0, 2, 4], [4, 3, 1]] {
            let chosen: Vec<_> = pick.iter().map(|&i| files[i].clone()).collect();
            let got = combine_shares(&record, &with_paths(&chosen)).unwrap();
            assert_eq!(*got.user_pin(), *secret.user_pin());
        }
        let all = combine_shares(&record, &with_paths(&files)).unwrap();
        assert_eq!(*all.so_pin(), *secret.so_pin());
    }

    #[test]
    fn too_few_and_duplicates_are_refused() {
        let (_, files, record) = ceremony(3, 5);
        let err = combine_shares(&record, &with_paths(&files[..2])).unwrap_err();
        assert!(
            matches!(
                err,
                QuorumError::TooFew {
                    got: 2,
                    need: 3,
                    ..
                }
            ),
            "{err}"
        );
        let dup = vec![files[0].clone(), files[0].clone(), files[1].clone()];
        let err = combine_shares(&record, &with_paths(&dup)).unwrap_err();
        assert!(matches!(err, QuorumError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn altered_share_with_fixed_checksum_is_caught() {
        let (_, mut files, record) = ceremony(2, 3);
        let mut b = hex::decode(&files[1].share).unwrap();
        b[5] ^= 1;
        files[1].share = hex::encode(b);
        files[1].checksum = files[1].compute_checksum();
        let err = combine_shares(&record, &with_paths(&files[..2])).unwrap_err();
        assert!(matches!(err, QuorumError::Altered { .. }), "{err}");
    }

    #[test]
    fn foreign_share_is_caught() {
        let (_, files, record) = ceremony(2, 3);
        let (_, other, _) = {
            let secret = RootSecret::generate();
            let (f, _) =
                split_secret(&secret, "ffeeddccbbaa99887766554433221100", 2, &names(3)).unwrap();
            (secret, f, ())
        };
        let mixed = vec![files[0].clone(), other[1].clone()];
        let err = combine_shares(&record, &with_paths(&mixed)).unwrap_err();
        assert!(matches!(err, QuorumError::Foreign { .. }), "{err}");
    }

    #[test]
    fn file_round_trip_and_truncation() {
        let (_, files, _) = ceremony(2, 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, files[0].to_text().as_bytes()).unwrap();
        let back = ShareFile::read(&p).unwrap();
        assert_eq!(back.share, files[0].share);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, &text[..text.len() - 40]).unwrap();
        let err = ShareFile::read(&p).unwrap_err();
        assert!(matches!(err, QuorumError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn parameters_are_checked() {
        let s = RootSecret::generate();
        assert!(split_secret(&s, "x", 1, &names(3)).is_err());
        assert!(split_secret(&s, "x", 4, &names(3)).is_err());
    }
}
