//! The generations of each CA (docs/lifecycle.md): which is current, where each one's
//! certificate is, each bound to its key for the CRLs it keeps signing, and the renewal that
//! makes the next.
//!
//! The current generation of a CA is `ca/<kind>.pem`; each earlier one is
//! `ca/generations/<kind>-<N>.pem`. So the current generation's number is one more than the
//! highest N there (1 when there is none: every home made before renewal existed).

use std::path::PathBuf;

use serde_json::json;
use x509_cert::Certificate;

use super::{Service, ServiceError};
use crate::certs::{certificate_from_pem, CertInfo};
use crate::issue::IssuerCtx;
use crate::{CaKind, IssuerId};

impl Service {
    /// The current generation of `kind`.
    pub fn current_id(&self, kind: CaKind) -> IssuerId {
        let prefix = format!("{}-", kind.name());
        let highest = std::fs::read_dir(self.home.ca_generations_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix(&prefix)?.strip_suffix(".pem")?;
                // One file per generation: `device-2.pem`, never `device-02.pem`.
                (!n.starts_with('0'))
                    .then(|| n.parse::<u32>().ok())
                    .flatten()
            })
            .max()
            .unwrap_or(0);
        // A renewal or rollover stopped between its two renames (the previous certificate
        // copied to `ca/generations/`, the new one not yet in `ca/<kind>.pem`): the copy is
        // still the current generation, and the ceremony, run again, finishes it.
        if highest > 0 {
            let current = std::fs::read(self.home.ca_cert(kind)).ok();
            if current.is_some()
                && current == std::fs::read(self.home.ca_generation_cert(kind, highest)).ok()
            {
                return IssuerId::new(kind, highest);
            }
        }
        IssuerId::new(kind, highest + 1)
    }

    /// Every generation of `kind` the home holds, oldest first (none without the CA).
    pub fn generations(&self, kind: CaKind) -> Vec<IssuerId> {
        if !self.has_ca(kind) {
            return Vec::new();
        }
        let current = self.current_id(kind);
        (1..=current.generation)
            .map(|g| IssuerId::new(kind, g))
            .collect()
    }

    /// Where the certificate of generation `id` is.
    pub fn generation_cert_path(&self, id: IssuerId) -> PathBuf {
        if id == self.current_id(id.kind) {
            self.home.ca_cert(id.kind)
        } else {
            self.home.ca_generation_cert(id.kind, id.generation)
        }
    }

    /// The certificate of generation `id`.
    pub fn generation_cert(&self, id: IssuerId) -> Result<Certificate, ServiceError> {
        if id == self.current_id(id.kind) {
            return self.ca_cert(id.kind);
        }
        let path = self.generation_cert_path(id);
        let pem = std::fs::read_to_string(&path).map_err(|e| {
            ServiceError::invalid(
                "generation",
                format!(
                    "the {} CA has no generation {} here ({}: {e})",
                    id.kind,
                    id.generation,
                    path.display()
                ),
            )
        })?;
        certificate_from_pem(&pem)
            .map_err(|e| ServiceError::Internal(format!("reading {}: {e}", path.display())))
    }

    /// Generation `id` of an issuing CA ready to sign (its CRLs, or for the current one
    /// certificates too): its certificate bound to its key on the online token(s).
    pub fn issuer_of(&self, id: IssuerId) -> Result<IssuerCtx, ServiceError> {
        let cert = self.generation_cert(id)?;
        let signer = self.online_signer(&id.key_label())?;
        crate::certs::check_key_matches(signer.as_ref(), &cert, &id.name()).map_err(|e| {
            ServiceError::Internal(format!(
                "refusing the {id} CA: {} is not the certificate of its HSM key {}: {e}",
                self.generation_cert_path(id).display(),
                id.key_label()
            ))
        })?;
        let signer = match &self.wrap {
            Some(wrap) => wrap(signer),
            None => signer,
        };
        Ok(IssuerCtx::of_generation(id, cert, signer)?)
    }

    /// The certificates of every generation of `kind` the root has not revoked, newest first:
    /// what relying parties of that CA may chain to.
    pub fn live_generation_certs(&self, kind: CaKind) -> Result<Vec<Certificate>, ServiceError> {
        let mut out = Vec::new();
        for id in self.generations(kind).into_iter().rev() {
            if self.generation_revocation(id)?.is_none() {
                out.push(self.generation_cert(id)?);
            }
        }
        Ok(out)
    }

    /// The generation of `kind` whose key signed `cert` (its issuer among the generations),
    /// newest first; the current one when none did.
    pub(super) fn issuing_generation_cert(
        &self,
        kind: CaKind,
        cert: &Certificate,
    ) -> Result<Certificate, ServiceError> {
        for id in self.generations(kind).into_iter().rev() {
            let ca = self.generation_cert(id)?;
            if crate::certs::verify_certificate_signature(
                cert,
                &ca.tbs_certificate.subject_public_key_info,
            )
            .is_ok()
            {
                return Ok(ca);
            }
        }
        self.ca_cert(kind)
    }

    /// The issuing-CA generations the root revoked for cACompromise or keyCompromise, by name.
    pub(super) fn compromised_generations(&self) -> Result<Vec<String>, ServiceError> {
        let mut out = Vec::new();
        for kind in CaKind::ISSUING {
            for id in self.generations(kind) {
                if let Some(r) = self.generation_revocation(id)? {
                    if matches!(
                        r.reason,
                        crate::model::Reason::CaCompromise | crate::model::Reason::KeyCompromise
                    ) {
                        out.push(id.name());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The revocation of generation `id`'s certificate, if the root revoked it.
    pub fn generation_revocation(
        &self,
        id: IssuerId,
    ) -> Result<Option<crate::Revocation>, ServiceError> {
        if id.kind == CaKind::Root || !self.has_ca(id.kind) {
            return Ok(None);
        }
        let cert = self.generation_cert(id)?;
        Ok(self
            .store()?
            .revocation(cert.tbs_certificate.serial_number.as_bytes())?)
    }

    /// `status`'s list of a CA's generations: each one's name, key, certificate, file and
    /// whether the root revoked it.
    pub(super) fn generations_status(
        &self,
        kind: CaKind,
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let current = self.current_id(kind);
        let mut out = Vec::new();
        for id in self.generations(kind) {
            let cert = self.generation_cert(id)?;
            let revoked = self.generation_revocation(id)?;
            out.push(json!({
                "generation": id.generation,
                "name": id.name(),
                "current": id == current,
                "key_label": id.key_label(),
                "file": self.generation_cert_path(id),
                "certificate": CertInfo::of(&cert),
                "revoked": revoked.map(|r| json!({"reason": r.reason.name(), "revoked_at": r.revoked_at})),
            }));
        }
        Ok(out)
    }
}

impl Service {
    /// `meterpki ceremony issuing-ca --kind KIND --renew`: the next generation of an issuing CA
    /// (a new key on the online token, a new name, certified by the opened root). New
    /// issuance moves to it; the previous generation's certificate moves to
    /// `ca/generations/<kind>-<N>.pem` and its key stays, signing the CRLs of what it issued
    /// at their unchanged URLs. The ARL is published after.
    pub(super) fn renew_issuing_ca(
        &self,
        actor: &super::Actor,
        kind: CaKind,
        root: &super::arl::OpenedRoot,
    ) -> Result<serde_json::Value, ServiceError> {
        let current = self.current_id(kind);
        let next = current.next();
        // A renewal recorded but whose certificate file never landed (a crash after its audit
        // record): finished now from the store's record, if its key is there.
        if let Some(rec) = self
            .store()?
            .active_cert(&next.store_subject(), &format!("{}-ca", kind.name()))?
        {
            return self.finish_renewal(kind, next, &rec);
        }
        // The current generation must be whole: its key present and matching its certificate
        // (the CRLs it keeps signing need it).
        self.issuer_of(current)?;
        let online = self.online()?;
        let label = next.key_label();
        if online.find_key(&label)?.is_some() {
            // A key without its certificate is what an interrupted renewal leaves behind.
            tracing::warn!(key = %label, "removing a key left by an interrupted renewal");
            online.destroy_key(&label)?;
        }
        let prepared = self.issuing_after_key(actor, next, &online, root);
        let outcome = prepared.and_then(|p| {
            let mut summary = self.record_ceremony(actor, p)?;
            summary["arl"] = self.arl_after_ceremony(actor, root, "issuing-ca --renew")?;
            Ok(summary)
        });
        if super::ceremony::undo(&outcome) {
            let _ = online.destroy_key(&label);
        }
        outcome
    }
}

impl Service {
    /// Puts the certificate of a recorded renewal in place: `ca/generations/<kind>-<N-1>.pem`
    /// (the previous one, unless there already) and `ca/<kind>.pem`, after checking the online
    /// key is the recorded certificate's.
    fn finish_renewal(
        &self,
        kind: CaKind,
        next: IssuerId,
        rec: &crate::CertRecord,
    ) -> Result<serde_json::Value, ServiceError> {
        let home = &self.home;
        let cert = crate::certificate_from_bytes(&rec.der)?;
        let signer = self.online_signer(&next.key_label()).map_err(|e| {
            ServiceError::Internal(format!(
                "generation {} of the {kind} CA is recorded (serial {}) but its key {} cannot be used ({e}): restore it from a key backup",
                next.generation,
                rec.serial_hex(),
                next.key_label()
            ))
        })?;
        crate::certs::check_key_matches(signer.as_ref(), &cert, &next.name())?;
        let previous = home.ca_generation_cert(kind, next.generation - 1);
        if !previous.exists() {
            let old = std::fs::read(home.ca_cert(kind)).map_err(super::error::io_at(format!(
                "reading {}",
                home.ca_cert(kind).display()
            )))?;
            crate::write_atomic(&previous, &old, 0o600).map_err(super::error::io_at(format!(
                "writing {}",
                previous.display()
            )))?;
        }
        let pem = crate::certificate_to_pem(&cert)?;
        crate::write_atomic(&home.ca_cert(kind), pem.as_bytes(), 0o600).map_err(
            super::error::io_at(format!("writing {}", home.ca_cert(kind).display())),
        )?;
        Ok(json!({
            "ceremony": format!("issuing-ca {} --renew", kind.name()),
            "finished": "an interrupted renewal: its recorded certificate put in place, no new key made",
            "generation": next.generation,
            "name": next.name(),
            "key": {"label": next.key_label()},
            "certificate": CertInfo::of(&cert),
            "previous": {"generation": next.generation - 1, "file": previous},
        }))
    }
}

/// The subject of generation `generation` of a CA named `subject` (RFC 4514 text): the first
/// generation keeps it, a later one has ` G<N>` added to its common name, so that relying
/// parties and CRLs tell the generations apart by name as well as by key identifier.
pub(super) fn generation_subject(subject: &str, generation: u32) -> Result<String, ServiceError> {
    if generation <= 1 {
        return Ok(subject.to_string());
    }
    // RFC 4514: attributes are separated by unescaped ',' or '+'; a value may hold escaped
    // characters (`\,`). The CN's value ends at the first unescaped separator after it.
    let bytes = subject.as_bytes();
    let mut start = 0;
    let mut escaped = false;
    for (i, b) in bytes
        .iter()
        .copied()
        .enumerate()
        .chain([(bytes.len(), b',')])
    {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' => escaped = true,
            b',' | b'+' => {
                let attr = subject[start..i].trim_start();
                if attr.len() > 3 && attr[..3].eq_ignore_ascii_case("cn=") {
                    let renamed =
                        format!("{} G{generation}{}", subject[..i].trim_end(), &subject[i..]);
                    crate::certs::parse_name(&renamed).map_err(|e| {
                        ServiceError::invalid("subject", format!("generation {generation}: {e}"))
                    })?;
                    return Ok(renamed);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    Err(ServiceError::invalid(
        "subject",
        format!(
            "{subject:?} has no common name (CN=...): a renewed CA's name is its first \
             generation's with \" G<N>\" added to the common name"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::generation_subject;

    #[test]
    fn a_later_generation_adds_its_number_to_the_common_name() {
        assert_eq!(
            generation_subject("CN=Example Device CA,O=Example", 2).unwrap(),
            "CN=Example Device CA G2,O=Example"
        );
        assert_eq!(
            generation_subject("O=Example,CN=Dev\\, CA", 3).unwrap(),
            "O=Example,CN=Dev\\, CA G3"
        );
        assert_eq!(generation_subject("CN=X,O=Y", 1).unwrap(), "CN=X,O=Y");
        assert!(generation_subject("O=Example", 2).is_err());
    }
}
