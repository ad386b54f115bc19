//! The root's contingency key in the ceremonies (docs/lifecycle.md §4): made with every new
//! root (`ceremony root`, `root-rollover`, `apex-recover`), its public key wrapped into the root
//! certificate under a key only a quorum of contingency shares rebuilds; and
//! `ceremony apex-recover`, which uses it when the root key can no longer be trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use x509_cert::ext::Extension;

use super::error::io_at;
use super::{now_rfc3339, random_hex, Service, ServiceError};
use crate::fsutil::write_new_secret;
use crate::hsm::HsmToken;
use crate::quorum::{combine_shares, split_secret, CeremonyRecord, RootSecret, ShareFile};
use crate::signer::{KeyAlgorithm, Signer};
use crate::{CaKind, IssuerId};

/// The label of a root generation's contingency key: `meterpki-root-ca-contingency`,
/// `meterpki-root-ca-g2-contingency`.
pub(super) fn contingency_label(root: IssuerId) -> String {
    format!("{}-contingency", root.key_label())
}

/// What derives the contingency public key's decryption key from the contingency secret.
const DECRYPT_KEY_LABEL: &[u8] = b"meterpki apex contingency decrypt key\0";

/// A contingency public key's decryption key (AES-256), wiped when dropped.
pub(super) type DecryptKey = zeroize::Zeroizing<[u8; 32]>;

/// The decryption key of a contingency secret.
pub(super) fn decrypt_key(secret: &RootSecret) -> DecryptKey {
    secret.derive_key(DECRYPT_KEY_LABEL)
}

/// A contingency key made for a new root: the extension its certificate carries, and the
/// public record (written once the ceremony is recorded) that checks its shares.
pub(super) struct Contingency {
    pub(super) extension: Extension,
    pub(super) record: CeremonyRecord,
    pub(super) record_path: PathBuf,
    pub(super) label: String,
}

/// The share files of the contingency quorum in `dir`: `<officer>.share`, never overwritten.
pub(super) fn contingency_share_paths(
    dir: &Path,
    names: &[String],
) -> Result<Vec<PathBuf>, ServiceError> {
    super::ceremony::new_share_paths(dir, names)
}

impl Service {
    /// `ceremonies/contingency-<root>.json`: the record of a root generation's contingency key.
    pub(super) fn contingency_record_path(&self, root: IssuerId) -> PathBuf {
        self.home
            .ceremonies_dir()
            .join(format!("contingency-{}.json", root.name()))
    }

    /// Makes the contingency key of root generation `root` in `token` and its secret, split
    /// into the shares at `share_paths` (one per officer of `names`, `quorum` needed; written
    /// now, 0600). The key pair never leaves the token; the secret only as shares.
    pub(super) fn make_contingency(
        &self,
        token: &Arc<dyn HsmToken>,
        root: IssuerId,
        quorum: u8,
        names: &[String],
        share_paths: &[PathBuf],
    ) -> Result<Contingency, ServiceError> {
        let label = contingency_label(root);
        if token.find_key(&label)?.is_some() {
            // What an interrupted ceremony leaves: its certificate never landed.
            token.destroy_key(&label)?;
        }
        let key = token.generate_key_as(&label, KeyAlgorithm::EcP384, self.key_protection())?;
        let secret = RootSecret::generate();
        let ceremony_id = random_hex(16);
        let (shares, digests) = split_secret(&secret, &ceremony_id, quorum, names)?;
        for (share, path) in shares.iter().zip(share_paths) {
            if let Some(dir) = path.parent() {
                super::ceremony::create_private_dir(dir)?;
            }
            write_new_secret(
                path,
                share
                    .to_text_for(
                        "apex-contingency",
                        "decrypt the root's contingency key for `ceremony apex-recover`",
                    )
                    .as_bytes(),
            )
            .map_err(io_at(format!("writing share file {}", path.display())))?;
        }
        let extension = crate::contingency::wrapped_key_extension(&key.spki, &decrypt_key(&secret))
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let record = CeremonyRecord {
            ceremony_id: ceremony_id.clone(),
            created: now_rfc3339(),
            quorum,
            officers: names.len() as u8,
            officer_names: names.to_vec(),
            share_digests: digests,
            secret_check: secret.check_value(&ceremony_id),
            root_token: self.config.hsm.root_token.clone(),
            root_key_label: label.clone(),
            root_key_id: hex::encode(&key.id),
            // Filled in once the root certificate exists.
            root_cert_sha256: String::new(),
        };
        Ok(Contingency {
            extension,
            record,
            record_path: self.contingency_record_path(root),
            label,
        })
    }

    /// The contingency key of the opened root `root`, checked: the shares rebuild the secret
    /// of its record, whose decryption key unwraps the root certificate's wrapped key to the
    /// token's contingency key. Returns its signer and the decryption key.
    pub(super) fn open_contingency(
        &self,
        root: &super::arl::OpenedRoot,
        shares: &[PathBuf],
    ) -> Result<(Arc<dyn Signer>, DecryptKey), ServiceError> {
        let path = self.contingency_record_path(root.id);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            ServiceError::invalid(
                "contingency",
                format!(
                    "{} has no contingency key ({} missing): roots made before contingency keys existed cannot be recovered this way",
                    root.id,
                    path.display()
                ),
            )
        })?;
        let record: CeremonyRecord = serde_json::from_str(&text)
            .map_err(|e| ServiceError::Internal(format!("reading {}: {e}", path.display())))?;
        let mut read = Vec::with_capacity(shares.len());
        for p in shares {
            read.push((p.clone(), ShareFile::read(p)?));
        }
        let secret = combine_shares(&record, &read)?;
        let key = decrypt_key(&secret);
        drop(secret);
        let spki = crate::contingency::unwrap_contingency_key(&root.cert, key.as_ref())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let signer = root._token.signer(&record.root_key_label)?;
        if crate::signer::spki_der(signer.public_key()) != crate::signer::spki_der(&spki) {
            return Err(ServiceError::Internal(format!(
                "the contingency key {} in the root token is not the one {} carries",
                record.root_key_label,
                self.home.ca_cert(CaKind::Root).display()
            )));
        }
        Ok((signer, key))
    }
}
