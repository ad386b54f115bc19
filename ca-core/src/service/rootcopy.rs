//! `ceremony replicate-root`: the root key copied into a second root token, in a ceremony of its
//! own that takes both quorums (docs/hsms.md#the-root-key): the root officers' shares open the
//! root token and give the new token the root's PINs; the key-backup officers' shares give the
//! key it travels under. As for the online keys, the root key leaves its token only wrapped
//! under the trusted key-backup key, and the target's unwrap-only copy lives for this ceremony.

use std::path::PathBuf;

use serde_json::json;

use super::{authorize, now_rfc3339, Action, Actor, Service, ServiceError};
use crate::hsm::{HsmErrorKind, SecretString};
use crate::quorum::CeremonyRecord;
use crate::CaKind;

impl Service {
    /// Copies the root key into a new SoftHSM token `to_token` made with the root token's
    /// PINs. `root_shares` are the root officers', `backup_shares` the key-backup officers'.
    pub fn replicate_root_ceremony(
        &self,
        actor: &Actor,
        to_token: &str,
        root_shares: &[PathBuf],
        backup_shares: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        // Everything given is checked before any token is touched.
        let opened = self.open_key_backup("replicate-root", backup_shares)?;
        let record_path = self.home.root_ceremony();
        let record: CeremonyRecord = std::fs::read_to_string(&record_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| {
                ServiceError::invalid(
                    "no-root",
                    format!(
                        "no root ceremony record in {}: run `meterpki ceremony root` first",
                        record_path.display()
                    ),
                )
            })?;
        let root_secret = self.check_shares(&record, root_shares)?;
        // The names the root ceremony gave each share index, not what a share file says.
        let mut root_officers: Vec<String> = Vec::new();
        for p in root_shares {
            if let Ok(s) = crate::quorum::ShareFile::read(p) {
                if let Some(name) = record
                    .officer_names
                    .get(usize::from(s.index).wrapping_sub(1))
                {
                    root_officers.push(name.clone());
                }
            }
        }
        root_officers.sort();
        root_officers.dedup();
        if !self.config.hsm.softhsm {
            return Err(ServiceError::invalid(
                "to-token",
                "ceremony replicate-root makes the new root token itself, in a SoftHSM home; with another HSM, copy the root key with the HSM's own backup or cloning under its officers",
            ));
        }
        let hsm = &self.config.hsm;
        let source = hsm.root_token.clone();
        if to_token == source
            || to_token == hsm.online_token
            || hsm.tokens.iter().any(|t| t.label == to_token)
        {
            return Err(ServiceError::invalid(
                "to-token",
                format!("{to_token:?} is a token this home already uses: name a new one"),
            ));
        }
        let module = self.module()?;
        let so = SecretString::from(root_secret.so_pin().to_string());
        let user_pin = root_secret.user_pin();
        let user = || SecretString::from(user_pin.to_string());
        drop(root_secret);
        let key_label = opened.record.key_label.clone();
        let opened_root_label = record.root_key_label.clone();
        let key = opened.secret.wrapping_key();
        // The root token gets the wrap-only key-backup key (its SO is the root quorum's).
        module.install_backup_key(&source, &so, &key_label, key.as_ref(), None)?;
        module
            .init_token(to_token, &so, &user())
            .map_err(|e| match e.kind {
                HsmErrorKind::TokenExists => ServiceError::conflict(
                    "token-exists",
                    format!("{e}: name a new token for the root key's copy; nothing changed"),
                ),
                _ => e.into(),
            })?;
        let run = || -> Result<serde_json::Value, ServiceError> {
            module.install_backup_key(to_token, &so, &key_label, key.as_ref(), None)?;
            let root = module.open(&source, user(), 1)?;
            let target = module.open(to_token, user(), 1)?;
            target.load_unwrap_key(&key_label, key.as_ref())?;
            // Every root key the token holds: each root generation's (an earlier one still
            // signs its ARL) and each contingency key; each checked against its certificate,
            // or for a contingency key against the source's public key.
            let mut labels = Vec::new();
            for id in self.generations(CaKind::Root) {
                labels.push((id.key_label(), Some(self.generation_cert(id)?)));
                labels.push((super::contingency::contingency_label(id), None));
            }
            let mut copied_keys = Vec::new();
            let mut copy_all = || -> Result<(), ServiceError> {
                for (label, cert) in &labels {
                    let Some(source_key) = root.find_key(label)? else {
                        continue;
                    };
                    let w = root.wrap_key(&key_label, label)?;
                    let copied = target.unwrap_key(&key_label, &w)?;
                    let expected = cert
                        .as_ref()
                        .map(|c| c.tbs_certificate.subject_public_key_info.clone())
                        .unwrap_or(source_key.spki);
                    if copied.spki != expected {
                        return Err(ServiceError::Internal(format!(
                            "the key {label} copied into {to_token:?} is not the one it must be"
                        )));
                    }
                    copied_keys.push(copied);
                }
                Ok(())
            };
            let result = copy_all();
            let _ = target.remove_unwrap_key(&key_label);
            result?;
            let Some(copied) = copied_keys
                .iter()
                .find(|k| k.label == opened_root_label)
                .cloned()
            else {
                return Err(ServiceError::Internal(format!(
                    "the root key {opened_root_label} is not in the root token {source}"
                )));
            };
            self.record_event(
                actor,
                "ceremony.replicate-root",
                json!({
                    "ceremony": "replicate-root",
                    "root_ceremony": record.ceremony_id,
                    "key_backup_ceremony": opened.record.ceremony_id,
                    "root_officers": root_officers,
                    "officers": opened.officers,
                    "operator": actor.name(),
                    "time": now_rfc3339(),
                    "from_token": source,
                    "to_token": to_token,
                    "key": {"label": copied.label, "id": hex::encode(&copied.id), "algorithm": copied.algorithm.name()},
                    "keys": copied_keys.iter().map(|k| json!({"label": k.label, "id": hex::encode(&k.id), "algorithm": k.algorithm.name()})).collect::<Vec<_>>(),
                }),
            )
        };
        let out = run();
        if out.is_err() {
            // Nothing half-made: the new token goes.
            let _ = module.discard_token(to_token);
        }
        out
    }
}
