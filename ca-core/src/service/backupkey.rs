//! `ceremony backup-key`: the key-backup key made, shared among the officers and put into every
//! online token (docs/hsms.md#ceremony-backup-key).

use std::path::PathBuf;

use serde_json::json;

use super::ceremony::{
    check_officers, create_private_dir, json_text, new_share_paths, stage, undo, Prepared,
    RootCeremony,
};
use super::error::io_at;
use super::keybackup::{BackupKeyCeremony, Opened};
use super::{
    authorize, now_compact, now_rfc3339, random_hex, Action, Actor, Service, ServiceError,
};
use crate::fsutil::write_new_secret;
use crate::keybackup::{BackupSecret, KeyBackupRecord};
use crate::quorum::{split_secret, RootSecret};
use crate::store::Txn;

impl Service {
    /// `ceremony backup-key`: a fresh secret split into N shares (M needed), its key-backup
    /// key put into every online token as a trusted key, each token's SO PIN replaced by one
    /// only the quorum can rebuild.
    pub fn backup_key_ceremony(
        &self,
        actor: &Actor,
        c: &BackupKeyCeremony,
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        self.require_key_backup("backup-key")?;
        if self.home.key_backup_ceremony().exists() {
            return Err(ServiceError::conflict(
                "key-backup-exists",
                format!(
                    "this home already has a key-backup key ({}); a second backup-key ceremony changes nothing",
                    self.home.key_backup_ceremony().display()
                ),
            ));
        }
        let names = check_officers(&RootCeremony {
            officers: c.officers,
            quorum: c.quorum,
            officer_names: c.officer_names.clone(),
            shares_dir: c.shares_dir.clone(),
        })?;
        // Every token must be securable: its SO PIN file is there.
        for t in self.configured_tokens() {
            let file = self
                .home
                .token_so_pin(&t.label, &self.config.hsm.online_token);
            if !file.exists() {
                return Err(ServiceError::conflict(
                    "no-so-pin",
                    format!(
                        "token {:?}: its security-officer PIN is not in {}; the ceremony installs the key-backup key with it. Put it there (0600) for the ceremony; nothing changed",
                        t.label,
                        file.display()
                    ),
                ));
            }
        }
        let share_paths = new_share_paths(&c.shares_dir, &names)?;
        let created_dir = create_private_dir(&c.shares_dir)?;
        let secret = RootSecret::generate();
        let ceremony_id = random_hex(16);
        let outcome = self.backup_key_shares(actor, c, secret, &ceremony_id, &names, &share_paths);
        if undo(&outcome) {
            for p in &share_paths {
                let _ = std::fs::remove_file(p);
            }
            if created_dir {
                let _ = std::fs::remove_dir(&c.shares_dir);
            }
        }
        outcome
    }

    fn backup_key_shares(
        &self,
        actor: &Actor,
        c: &BackupKeyCeremony,
        secret: RootSecret,
        ceremony_id: &str,
        names: &[String],
        share_paths: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        let (shares, digests) = split_secret(&secret, ceremony_id, c.quorum, names)?;
        for (share, path) in shares.iter().zip(share_paths) {
            write_new_secret(
                path,
                share
                    .to_text_for("key-backup", "copy, back up or restore the online keys")
                    .as_bytes(),
            )
            .map_err(io_at(format!("writing share file {}", path.display())))?;
        }
        let record = KeyBackupRecord {
            ceremony_id: ceremony_id.into(),
            created: now_rfc3339(),
            quorum: c.quorum,
            officers: c.officers,
            officer_names: names.to_vec(),
            share_digests: digests.clone(),
            secret_check: secret.check_value(ceremony_id),
            key_label: KeyBackupRecord::key_label_for(ceremony_id),
        };
        // The record is written before any token is touched: from the first token secured on,
        // the shares (and the record that checks them) are the only way to its SO PIN, and a
        // crash must not lose them. A failure before any token changed removes both again.
        let record_path = self.home.key_backup_ceremony();
        // Created, never overwritten: a second backup-key running at once fails here.
        write_new_secret(&record_path, json_text(&record)?.as_bytes()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ServiceError::conflict(
                    "key-backup-exists",
                    format!(
                        "{} appeared while this ceremony ran: another backup-key ceremony; nothing of this one is kept",
                        record_path.display()
                    ),
                )
            } else {
                ServiceError::io(format!("writing {}", record_path.display()), e)
            }
        })?;
        // The tokens get the key and their SO PINs change now, before this process logs in
        // to them as user (the audit record below is signed on the online token).
        let opened = Opened {
            record,
            secret: BackupSecret(secret),
            officers: names.to_vec(),
        };
        let mut secured = Vec::new();
        let secure = self.secure_tokens_into(&opened, &mut secured);
        let record = opened.record;
        let keep = |e: ServiceError| -> ServiceError {
            if secured.is_empty() {
                let _ = std::fs::remove_file(&record_path);
                return e;
            }
            ServiceError::Incomplete(format!(
                "the key-backup key is in token(s) {} and its shares ({}) and record ({}) are written, but the ceremony did not finish: {e}; keep the shares and run `meterpki ceremony backup --out FILE --share ...` with M of them to finish",
                secured.join(", "),
                c.shares_dir.display(),
                record_path.display(),
            ))
        };
        if let Err(e) = secure {
            return Err(keep(e));
        }
        let finish = || -> Result<serde_json::Value, ServiceError> {
            let tokens: Vec<String> = self
                .configured_tokens()
                .into_iter()
                .map(|t| t.label)
                .collect();
            let transcript = json!({
                "ceremony": "backup-key",
                "ceremony_id": ceremony_id,
                "operator": actor.name(),
                "time": record.created,
                "quorum": c.quorum,
                "officers": names,
                "share_files": share_paths.iter().zip(&digests).map(|(p, d)| json!({"file": p, "sha256_of_share": d})).collect::<Vec<_>>(),
                "key_label": record.key_label,
                "key": "AES-256, CKA_TRUSTED, wrap only, not modifiable, sensitive, not extractable",
                "tokens": tokens,
            });
            let transcript_path = self
                .home
                .ceremonies_dir()
                .join(format!("{}-backup-key.json", now_compact()));
            let files = vec![stage(&transcript_path, &json_text(&transcript)?)?];
            self.record_ceremony(
                actor,
                Prepared {
                    event: "ceremony.backup-key".into(),
                    transcript,
                    transcript_path,
                    files,
                    txn: Txn::new(),
                },
            )
        };
        finish().map_err(|e| match e {
            ServiceError::Incomplete(_) => e,
            other => keep(other),
        })
    }
}
