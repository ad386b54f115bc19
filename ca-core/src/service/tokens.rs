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
    fn module_at(&self, path: &std::path::Path) -> Result<Arc<dyn HsmModule>, ServiceError> {
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
