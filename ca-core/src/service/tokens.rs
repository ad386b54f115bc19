//! The HSM side of the service: the PKCS#11 modules, the online token and, with
//! `[[hsm.tokens]]`, every token holding the online keys and one signer set per key
//! (docs/hsms.md).

use std::sync::Arc;

use super::{LabelledToken, Service, ServiceError};
use crate::hsm::{HsmModule, HsmToken};
use crate::Signer;

impl Service {
    /// The HSM module.
    pub fn module(&self) -> Result<Arc<dyn HsmModule>, ServiceError> {
        if let Some(m) = self.module.get() {
            return Ok(m.clone());
        }
        let m = (self.hsm.load)(&self.config, &self.config.hsm.module)?;
        Ok(self.module.get_or_init(|| m).clone())
    }

    /// The PKCS#11 module at `path`: `hsm.module`'s, or another token's, loaded once.
    pub(super) fn module_at(
        &self,
        path: &std::path::Path,
    ) -> Result<Arc<dyn HsmModule>, ServiceError> {
        if path == self.config.hsm.module {
            return self.module();
        }
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(path) {
            return Ok(m.clone());
        }
        let m = (self.hsm.load)(&self.config, path)?;
        modules.insert(path.to_path_buf(), m.clone());
        Ok(m)
    }

    /// Every token holding the online keys, each logged in once: those of `[[hsm.tokens]]`, or
    /// the online token alone.
    pub fn online_tokens(&self) -> Result<Vec<LabelledToken>, ServiceError> {
        if self.config.hsm.tokens.is_empty() {
            return Ok(vec![(self.config.hsm.online_token.clone(), self.online()?)]);
        }
        let mut slot = self.online_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let mut out = Vec::new();
        for t in &self.config.hsm.tokens {
            let token = if t.label == self.config.hsm.online_token {
                self.online()?
            } else {
                let module =
                    self.module_at(t.module.as_deref().unwrap_or(&self.config.hsm.module))?;
                let pin = (self.hsm.token_pin)(&self.config, t)?;
                let token = module.open(&t.label, pin, self.config.hsm.sessions)?;
                token.set_sign_timeout(std::time::Duration::from_millis(
                    self.config.hsm.sign_timeout_ms,
                ));
                token
            };
            out.push((t.label.clone(), token));
        }
        *slot = Some(out.clone());
        Ok(out)
    }

    /// The signer of the online key `label`: on the online token, or, when `[[hsm.tokens]]`
    /// lists several, a [`SignerSet`](crate::SignerSet) over the key on each of them (its
    /// public key checked equal on all at first use, a token holding another refused by name).
    pub fn online_signer(&self, label: &str) -> Result<Arc<dyn Signer>, ServiceError> {
        let tokens = self.online_tokens()?;
        if tokens.len() == 1 {
            return Ok(tokens[0].1.signer(label)?);
        }
        let mut sets = self.signer_sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = sets.get(label) {
            return Ok(set.clone());
        }
        let mut members = Vec::new();
        for (token, t) in &tokens {
            members.push((token.clone(), t.signer(label)?));
        }
        let set = Arc::new(
            crate::SignerSet::new(label, members)
                .map_err(|e| ServiceError::invalid("hsm.tokens", e.to_string()))?,
        );
        sets.insert(label.to_string(), set.clone());
        Ok(set)
    }

    /// The signer sets made so far (one per online key in use, with several tokens).
    pub fn signer_sets(&self) -> Vec<Arc<crate::SignerSet>> {
        self.signer_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The online token, logged in with its PIN, its sign timeout set.
    pub fn online(&self) -> Result<Arc<dyn HsmToken>, ServiceError> {
        let mut slot = self.online.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let module = self.module()?;
        let pin = (self.hsm.online_pin)(&self.config)?;
        let token = module.open(&self.config.hsm.online_token, pin, self.config.hsm.sessions)?;
        token.set_sign_timeout(std::time::Duration::from_millis(
            self.config.hsm.sign_timeout_ms,
        ));
        *slot = Some(token.clone());
        Ok(token)
    }
}

impl Service {
    /// `hsm init-token --label LABEL` (SoftHSM homes): a new token in the home's token
    /// directory with random user and SO PINs in `secrets/<label>.pin` and
    /// `secrets/<label>-so.pin` (0600, as the online token's), listed in `[[hsm.tokens]]` (the
    /// online token listed first when the list was empty). It holds no key until `ceremony
    /// replicate` or `ceremony restore` puts them there. Nothing is left of a failed run.
    pub fn init_token(
        &self,
        actor: &super::Actor,
        label: &str,
    ) -> Result<serde_json::Value, ServiceError> {
        use super::error::io_at;
        use crate::config::TokenConfig;
        use crate::fsutil::write_new_secret;
        use crate::hsm::SecretString;
        super::authorize(actor, super::Action::Administer)?;
        if !self.config.hsm.softhsm {
            return Err(ServiceError::invalid(
                "label",
                "hsm init-token creates SoftHSM tokens inside a SoftHSM home; with another HSM, create the token with its own tools and list it in [[hsm.tokens]] (label, module, pin_file or pin_env)",
            ));
        }
        let ok = !label.is_empty()
            && label.len() <= 32
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !label.starts_with('.');
        if !ok {
            return Err(ServiceError::invalid(
                "label",
                format!("--label {label:?}: use 1 to 32 letters, digits, '-', '_' or '.' (PKCS#11 labels are 32 bytes; it also names the PIN files)"),
            ));
        }
        let hsm = &self.config.hsm;
        if label == hsm.online_token
            || label == hsm.root_token
            || hsm.tokens.iter().any(|t| t.label == label)
        {
            return Err(ServiceError::conflict(
                "token-exists",
                format!("token {label:?} is already in meterpki.toml; nothing changed"),
            ));
        }
        let pin_path = self.home.token_pin(label);
        let so_path = self.home.token_so_pin(label, &hsm.online_token);
        if let Some(p) = [&pin_path, &so_path].into_iter().find(|p| p.exists()) {
            return Err(ServiceError::conflict(
                "pin-exists",
                format!(
                    "{} already exists; a PIN file is never overwritten",
                    p.display()
                ),
            ));
        }
        let module = self.module()?;
        let user = zeroize::Zeroizing::new(super::random_hex(16));
        let so = zeroize::Zeroizing::new(super::random_hex(16));
        let mut config = self.config.clone();
        if config.hsm.tokens.is_empty() {
            config.hsm.tokens.push(TokenConfig {
                label: hsm.online_token.clone(),
                module: None,
                pin_env: None,
                pin_file: None,
            });
        }
        config.hsm.tokens.push(TokenConfig {
            label: label.to_string(),
            module: None,
            pin_env: None,
            pin_file: Some(std::path::PathBuf::from(format!("secrets/{label}.pin"))),
        });
        config.validate(&self.home.config_path())?;
        module.init_token(
            label,
            &SecretString::from(so.to_string()),
            &SecretString::from(user.to_string()),
        )?;
        let run = || -> Result<serde_json::Value, ServiceError> {
            let line = |pin: &str| zeroize::Zeroizing::new(format!("{pin}\n"));
            write_new_secret(&pin_path, line(user.as_str()).as_bytes())
                .map_err(io_at(format!("writing {}", pin_path.display())))?;
            write_new_secret(&so_path, line(so.as_str()).as_bytes())
                .map_err(io_at(format!("writing {}", so_path.display())))?;
            let details = serde_json::json!({
                "token": label,
                "module": self.config.hsm.module,
                "pin_file": pin_path,
                "so_pin_file": so_path,
                "tokens": config.hsm.tokens.iter().map(|t| t.label.clone()).collect::<Vec<_>>(),
            });
            // The record first: a config naming a token the audit log never saw made is worse
            // than a recorded token the config does not list yet.
            self.audit()?
                .append("hsm.init-token", actor.name(), details.clone())?;
            crate::write_atomic(&self.home.config_path(), config.to_toml().as_bytes(), 0o600)
                .map_err(io_at(format!(
                    "writing {}",
                    self.home.config_path().display()
                )))?;
            Ok(details)
        };
        let out = run();
        if out.is_err() {
            let _ = std::fs::remove_file(&pin_path);
            let _ = std::fs::remove_file(&so_path);
            let _ = module.discard_token(label);
        }
        out
    }
}
