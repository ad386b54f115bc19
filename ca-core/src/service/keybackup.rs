//! The key-backup ceremonies (docs/hsms.md#key-replication-and-backup-under-a-quorum):
//! `backup-key` (in `backupkey.rs`) makes the quorum's key-backup key, `replicate` copies every
//! online key to another token, `backup` writes them wrapped to a file and `restore` brings them
//! into a fresh token. Every one needs M shares, refuses a home made with `--key-backup none`,
//! checks everything it was given before changing any token, and is an audit record naming the
//! officers whose shares opened it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::ceremony::{json_text, stage, undo, Prepared};
use super::error::io_at;
use super::{authorize, now_compact, now_rfc3339, Action, Actor, Service, ServiceError};
use crate::config::{KeyBackup, TokenConfig};
use crate::fsutil::write_new_secret;
use crate::hsm::{HsmErrorKind, HsmToken, KeyProtection, SecretString, WrappedKey};
use crate::keybackup::{BackupBody, BackupFileError, BackupSecret, KeyBackupRecord};
use crate::quorum::{combine_checked, ShareFile};
use crate::store::Txn;

/// What `ceremony backup-key` is asked for.
#[derive(Clone, Debug)]
pub struct BackupKeyCeremony {
    /// Officers N.
    pub officers: u8,
    /// Shares needed, M.
    pub quorum: u8,
    /// Officer names (default officer-1 .. officer-N).
    pub officer_names: Vec<String>,
    /// Where the share files go.
    pub shares_dir: PathBuf,
}

/// The secret rebuilt for one ceremony and the officers whose shares rebuilt it.
pub(super) struct Opened {
    pub(super) record: KeyBackupRecord,
    pub(super) secret: BackupSecret,
    pub(super) officers: Vec<String>,
}

impl From<BackupFileError> for ServiceError {
    fn from(e: BackupFileError) -> ServiceError {
        match e {
            // A file that is not there, or too large to be a backup, is the caller's mistake.
            BackupFileError::Io { file, source }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
                ) =>
            {
                ServiceError::invalid("from", format!("backup file {}: {source}", file.display()))
            }
            BackupFileError::Io { file, source } => {
                ServiceError::io(format!("reading backup file {}", file.display()), source)
            }
            other => ServiceError::invalid("from", other.to_string()),
        }
    }
}

impl Service {
    /// How keys generated for the online tokens are protected (`hsm.key_backup`).
    pub(super) fn key_protection(&self) -> KeyProtection {
        self.config.hsm.key_backup.protection()
    }

    pub(super) fn require_key_backup(&self, ceremony: &str) -> Result<(), ServiceError> {
        if self.config.hsm.key_backup == KeyBackup::None {
            return Err(ServiceError::conflict(
                "key-backup-disabled",
                format!(
                    "{} was created with --key-backup none: its keys were generated never extractable and cannot be copied or backed up; ceremony {ceremony} changed nothing. A home that needs backup is created with `meterpki init --key-backup quorum`",
                    self.home.root().display()
                ),
            ));
        }
        Ok(())
    }

    fn key_backup_record(&self) -> Result<KeyBackupRecord, ServiceError> {
        let path = self.home.key_backup_ceremony();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ServiceError::conflict(
                    "no-key-backup-key",
                    "this home has no key-backup key yet: run `meterpki ceremony backup-key --officers N --quorum M --shares-dir DIR` first; nothing changed",
                ))
            }
            Err(e) => return Err(ServiceError::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            ServiceError::Internal(format!(
                "{} is not a key-backup record: {e}",
                path.display()
            ))
        })
    }

    /// Reads the shares and rebuilds the key-backup secret; nothing else happens before.
    pub(super) fn open_key_backup(
        &self,
        ceremony: &str,
        shares: &[PathBuf],
    ) -> Result<Opened, ServiceError> {
        self.require_key_backup(ceremony)?;
        let record = self.key_backup_record()?;
        let mut files = Vec::with_capacity(shares.len());
        for p in shares {
            files.push((p.clone(), ShareFile::read(p)?));
        }
        let secret = BackupSecret(combine_checked(&record.share_check(), &files)?);
        // The names the ceremony gave each share index (the record's), not what a share file
        // says of itself: the share's digest does not cover its `officer` field.
        let mut officers: Vec<String> = files
            .iter()
            .map(|(_, s)| {
                record
                    .officer_names
                    .get(usize::from(s.index).wrapping_sub(1))
                    .cloned()
                    .unwrap_or_else(|| s.officer.clone())
            })
            .collect();
        officers.sort();
        officers.dedup();
        Ok(Opened {
            record,
            secret,
            officers,
        })
    }

    /// The online tokens of the config: `[[hsm.tokens]]`, or the online token alone.
    pub(super) fn configured_tokens(&self) -> Vec<TokenConfig> {
        if self.config.hsm.tokens.is_empty() {
            return vec![TokenConfig {
                label: self.config.hsm.online_token.clone(),
                module: None,
                pin_env: None,
                pin_file: None,
            }];
        }
        self.config.hsm.tokens.clone()
    }

    /// Puts the key-backup key into every configured token whose SO PIN is still in
    /// `secrets/` (a token not yet under the quorum), changes its SO PIN to the quorum's and
    /// removes the file. Runs before this process logs in to any token as user (PKCS#11 does
    /// not allow an SO and a user login at once). Returns the tokens secured now.
    fn secure_tokens(&self, opened: &Opened) -> Result<Vec<String>, ServiceError> {
        let mut secured = Vec::new();
        match self.secure_tokens_into(opened, &mut secured) {
            Ok(()) => Ok(secured),
            Err(e) => Err(e),
        }
    }

    /// [`Service::secure_tokens`], telling the caller which tokens were secured before a
    /// failure (their SO PIN is then the quorum's: the ceremony's shares must be kept).
    pub(super) fn secure_tokens_into(
        &self,
        opened: &Opened,
        secured: &mut Vec<String>,
    ) -> Result<(), ServiceError> {
        let key = opened.secret.wrapping_key();
        for t in self.configured_tokens() {
            let file = self
                .home
                .token_so_pin(&t.label, &self.config.hsm.online_token);
            if !file.exists() {
                continue;
            }
            let pin = zeroize::Zeroizing::new(
                crate::read_bounded(&file, 1024)
                    .map_err(io_at(format!("reading {}", file.display())))?,
            );
            let pin = zeroize::Zeroizing::new(String::from_utf8_lossy(&pin).trim().to_string());
            let module = self.module_at(t.module.as_deref().unwrap_or(&self.config.hsm.module))?;
            let new_pin = opened.secret.so_pin(&t.label);
            let installed = module.install_backup_key(
                &t.label,
                &SecretString::from(pin.to_string()),
                &opened.record.key_label,
                key.as_ref(),
                Some(&SecretString::from(new_pin.to_string())),
            );
            match installed {
                Ok(()) => {}
                // The file outlived a PIN change (a crash, or a file that could not be
                // removed): the token is secured already if the quorum's PIN opens it.
                Err(e) if e.kind == HsmErrorKind::PinIncorrect => module.install_backup_key(
                    &t.label,
                    &SecretString::from(new_pin.to_string()),
                    &opened.record.key_label,
                    key.as_ref(),
                    None,
                )?,
                Err(e) => return Err(e.into()),
            }
            // From here the token's SO PIN is the quorum's: it counts as secured even if the
            // file cannot be removed (the next ceremony tries the file, then the quorum's PIN).
            secured.push(t.label.clone());
            std::fs::remove_file(&file).map_err(io_at(format!("removing {}", file.display())))?;
            crate::fsutil::sync_dir(&self.home.secrets_dir())
                .map_err(io_at("syncing secrets/".into()))?;
        }
        Ok(())
    }

    /// The target of a replication or restore: its unwrap-only key put in by its SO (with the
    /// SO PIN only the quorum rebuilds), then the token logged in as user and checked. A token
    /// whose SO PIN is not the quorum's is one meterpki did not make: refused, nothing in it.
    fn open_unwrap_target(
        &self,
        opened: &Opened,
        label: &str,
    ) -> Result<Arc<dyn HsmToken>, ServiceError> {
        let listed = self.listed(label)?;
        let module = self.module_at(listed.module.as_deref().unwrap_or(&self.config.hsm.module))?;
        let key = opened.secret.wrapping_key();
        let pin = opened.secret.so_pin(label);
        module
            .install_backup_key(
                label,
                &SecretString::from(pin.to_string()),
                &opened.record.key_label,
                key.as_ref(),
                None,
            )
            .map_err(|e| match e.kind {
                HsmErrorKind::PinIncorrect => self.no_backup_key(label, &opened.record.key_label),
                _ => e.into(),
            })?;
        let pin = (self.hsm.token_pin)(&self.config, &listed)?;
        let target = module.open(label, pin, 1)?;
        self.with_backup_key(&target, opened)?;
        // The unwrap-only copy lives in this process's session with the target: gone when the
        // ceremony ends, whatever ends it.
        target.load_unwrap_key(&opened.record.key_label, key.as_ref())?;
        Ok(target)
    }

    fn no_backup_key(&self, label: &str, key_label: &str) -> ServiceError {
        let file = self.home.token_so_pin(label, &self.config.hsm.online_token);
        ServiceError::conflict(
            "no-key-backup-key",
            format!(
                "token {label:?} holds no key-backup key ({key_label}) and its security-officer PIN is neither the quorum's nor in {} for the ceremony to install it: a token meterpki did not create (use `meterpki hsm init-token`), or one whose SO PIN file was removed; nothing changed",
                file.display()
            ),
        )
    }

    fn listed(&self, label: &str) -> Result<TokenConfig, ServiceError> {
        self.config
            .hsm
            .tokens
            .iter()
            .find(|t| t.label == label)
            .cloned()
            .ok_or_else(|| {
                ServiceError::invalid(
                    "to-token",
                    format!(
                        "token {label:?} is not in [[hsm.tokens]] of meterpki.toml: create it with `meterpki hsm init-token --label {label}` (SoftHSM), or list it with its module and PIN source; nothing changed"
                    ),
                )
            })
    }

    /// Unwraps `keys` into `target`, then removes its unwrap-only key whatever happened.
    fn unwrap_into(
        &self,
        target: &Arc<dyn HsmToken>,
        opened: &Opened,
        keys: &[WrappedKey],
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let out = self.unwrap_all(target, opened, keys);
        if let Err(e) = target.remove_unwrap_key(&opened.record.key_label) {
            tracing::warn!(token = %target.label(), error = %e, "the unwrap key could not be removed; the next ceremony removes it");
        }
        out
    }

    /// A token that must hold the key-backup key: refused by name when it does not.
    fn with_backup_key(
        &self,
        token: &Arc<dyn HsmToken>,
        opened: &Opened,
    ) -> Result<(), ServiceError> {
        let foreign: Vec<String> = token
            .trusted_keys()?
            .into_iter()
            .filter(|l| *l != opened.record.key_label)
            .collect();
        if !foreign.is_empty() {
            return Err(ServiceError::conflict(
                "foreign-trusted-key",
                format!(
                    "token {:?} holds trusted key(s) the key-backup ceremony did not make ({}): someone who knew its security-officer PIN made them, and could wrap every key out under them; nothing was done. Investigate, then remove them with the token's SO",
                    token.label(),
                    foreign.join(", ")
                ),
            ));
        }
        if token.has_secret_key(&opened.record.key_label)? {
            return Ok(());
        }
        Err(self.no_backup_key(token.label(), &opened.record.key_label))
    }

    /// Every online key pair on `source`, wrapped under the key-backup key: all or nothing
    /// (a key the token will not wrap is named, and nothing is copied).
    fn wrap_all(
        &self,
        source: &Arc<dyn HsmToken>,
        opened: &Opened,
    ) -> Result<Vec<WrappedKey>, ServiceError> {
        let mut labels: Vec<String> = source
            .objects()?
            .into_iter()
            .filter(|o| o.class == "private-key")
            .map(|o| o.label)
            .collect();
        labels.sort();
        labels.dedup();
        if labels.is_empty() {
            return Err(ServiceError::conflict(
                "no-keys",
                format!("token {:?} holds no key pair to copy", source.label()),
            ));
        }
        let mut out = Vec::with_capacity(labels.len());
        for l in labels {
            out.push(source.wrap_key(&opened.record.key_label, &l)?);
        }
        Ok(out)
    }

    fn unwrap_all(
        &self,
        target: &Arc<dyn HsmToken>,
        opened: &Opened,
        keys: &[WrappedKey],
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let info = target.unwrap_key(&opened.record.key_label, k)?;
            out.push(json!({
                "label": info.label,
                "id": hex::encode(&info.id),
                "algorithm": info.algorithm.name(),
                "public_key_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    der::Encode::to_der(&info.spki).unwrap_or_default(),
                )),
            }));
        }
        Ok(out)
    }

    pub(super) fn record_event(
        &self,
        actor: &Actor,
        event: &str,
        details: serde_json::Value,
    ) -> Result<serde_json::Value, ServiceError> {
        let transcript_path = self.home.ceremonies_dir().join(format!(
            "{}-{}.json",
            now_compact(),
            event.replace('.', "-")
        ));
        let files = vec![stage(&transcript_path, &json_text(&details)?)?];
        self.record_ceremony(
            actor,
            Prepared {
                event: event.into(),
                transcript: details,
                transcript_path,
                files,
                txn: Txn::new(),
            },
        )
    }

    /// `ceremony replicate --to-token LABEL`: every online key pair copied, wrapped under the
    /// key-backup key, from the online token into `to_token` (listed in `[[hsm.tokens]]`).
    pub fn replicate_ceremony(
        &self,
        actor: &Actor,
        to_token: &str,
        shares: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        let opened = self.open_key_backup("replicate", shares)?;
        let source_label = self.config.hsm.online_token.clone();
        if to_token == source_label {
            return Err(ServiceError::invalid(
                "to-token",
                format!("{to_token:?} is the online token itself: name another token"),
            ));
        }
        self.listed(to_token)?;
        let secured = self.secure_tokens(&opened)?;
        let target = self.open_unwrap_target(&opened, to_token)?;
        let source = self.online()?;
        let keys = self
            .with_backup_key(&source, &opened)
            .and_then(|()| self.wrap_all(&source, &opened));
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                let _ = target.remove_unwrap_key(&opened.record.key_label);
                return Err(e);
            }
        };
        let copied = self.unwrap_into(&target, &opened, &keys)?;
        self.record_event(
            actor,
            "ceremony.replicate",
            json!({
                "ceremony": "replicate",
                "key_backup_ceremony": opened.record.ceremony_id,
                "officers": opened.officers,
                "operator": actor.name(),
                "time": now_rfc3339(),
                "from_token": source_label,
                "to_token": to_token,
                "tokens_secured": secured,
                "keys": copied,
            }),
        )
    }

    /// `ceremony backup --out FILE`: every online key pair wrapped under the key-backup key
    /// into a file, with a MAC under a key only the quorum can rebuild.
    pub fn backup_ceremony(
        &self,
        actor: &Actor,
        out: &Path,
        shares: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        let opened = self.open_key_backup("backup", shares)?;
        if out.exists() {
            return Err(ServiceError::conflict(
                "file-exists",
                format!(
                    "{} already exists; a backup file is never overwritten",
                    out.display()
                ),
            ));
        }
        let secured = self.secure_tokens(&opened)?;
        let source = self.online()?;
        self.with_backup_key(&source, &opened)?;
        let keys = self.wrap_all(&source, &opened)?;
        let root_sha256 = std::fs::read(self.home.ca_cert(crate::CaKind::Root))
            .ok()
            .and_then(|pem| crate::certs::certificate_from_pem(&String::from_utf8_lossy(&pem)).ok())
            .map(|c| crate::certs::fingerprint_sha256(&c))
            .unwrap_or_default();
        let created = now_rfc3339();
        let body = BackupBody::new(
            &opened.record.ceremony_id,
            &created,
            &root_sha256,
            source.label(),
            &keys,
        )
        .map_err(ServiceError::Internal)?;
        let bytes = body
            .to_file(&opened.secret)
            .map_err(ServiceError::Internal)?;
        write_new_secret(out, &bytes).map_err(io_at(format!("writing {}", out.display())))?;
        let labels: Vec<&str> = keys.iter().map(|k| k.key.label.as_str()).collect();
        let outcome = self.record_event(
            actor,
            "ceremony.backup",
            json!({
                "ceremony": "backup",
                "key_backup_ceremony": opened.record.ceremony_id,
                "officers": opened.officers,
                "operator": actor.name(),
                "time": created,
                "from_token": source.label(),
                "file": out,
                "file_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                "tokens_secured": secured,
                "keys": labels,
            }),
        );
        if undo(&outcome) {
            let _ = std::fs::remove_file(out);
        }
        outcome
    }

    /// `ceremony restore --from FILE --to-token LABEL`: the keys of a backup file unwrapped
    /// into `to_token` (listed in `[[hsm.tokens]]`), after the file's MAC is checked.
    pub fn restore_ceremony(
        &self,
        actor: &Actor,
        from: &Path,
        to_token: &str,
        shares: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        let opened = self.open_key_backup("restore", shares)?;
        let body = BackupBody::read(from, &opened.secret)?;
        if body.ceremony_id != opened.record.ceremony_id {
            return Err(ServiceError::invalid(
                "from",
                format!(
                    "backup file {} was written under key-backup ceremony {}, not this home's {}; nothing was restored",
                    from.display(),
                    body.ceremony_id,
                    opened.record.ceremony_id
                ),
            ));
        }
        let keys = body.keys().map_err(|e| {
            ServiceError::invalid("from", format!("backup file {}: {e}", from.display()))
        })?;
        self.listed(to_token)?;
        let secured = self.secure_tokens(&opened)?;
        let target = self.open_unwrap_target(&opened, to_token)?;
        let restored = self
            .unwrap_into(&target, &opened, &keys)
            .map_err(|e| match e {
                ServiceError::Hsm(h) if h.kind == HsmErrorKind::KeyExists => {
                    ServiceError::conflict(
                        "key-exists",
                        format!("{h}: restore goes into a fresh token; nothing was replaced"),
                    )
                }
                other => other,
            })?;
        self.record_event(
            actor,
            "ceremony.restore",
            json!({
                "ceremony": "restore",
                "key_backup_ceremony": opened.record.ceremony_id,
                "officers": opened.officers,
                "operator": actor.name(),
                "time": now_rfc3339(),
                "file": from,
                "written": body.created,
                "from_token": body.source_token,
                "to_token": to_token,
                "tokens_secured": secured,
                "keys": restored,
            }),
        )
    }
}
