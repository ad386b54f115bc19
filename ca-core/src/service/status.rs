//! `status`: tokens, keys, CA certificates and whether each matches its HSM key, counts, the
//! audit head; and `audit verify` with the audit key trusted through the root.

use serde::Serialize;
use serde_json::json;

use super::{authorize, Action, Actor, Service, ServiceError};
use crate::audit::{AuditLog, AuditRecord, AuditReport};
use crate::certs::{verify_certificate_signature, CertInfo};
use crate::hsm::{ObjectSummary, TokenSummary};
use crate::quorum::CeremonyRecord;
use crate::CaKind;

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The home.
    pub home: std::path::PathBuf,
    /// The PKCS#11 module.
    pub module: std::path::PathBuf,
    /// Its manufacturer.
    pub manufacturer: String,
    /// Every token.
    pub tokens: Vec<TokenSummary>,
    /// The online token: `{"label", "objects", "error"}`.
    pub online_token: serde_json::Value,
    /// The root token: `{"label", "public_objects"}`.
    pub root_token: serde_json::Value,
    /// The root ceremony's public record.
    pub root_ceremony: Option<serde_json::Value>,
    /// Each CA: its certificate, whether its key is on the token and matches it.
    pub cas: Vec<serde_json::Value>,
    /// Certificates issued.
    pub certificates: u64,
    /// `{"records", "head_seq", "head_hash", "last_event"}`.
    pub audit: serde_json::Value,
    /// CAs whose HSM key does not match their certificate (each refused).
    #[serde(skip)]
    pub mismatches: Vec<String>,
    /// The online token's objects.
    #[serde(skip)]
    pub online_objects: Vec<ObjectSummary>,
    /// The root token's public objects.
    #[serde(skip)]
    pub root_objects: Vec<ObjectSummary>,
    /// Why the online token could not be listed.
    #[serde(skip)]
    pub online_error: Option<String>,
    /// The root ceremony record.
    #[serde(skip)]
    pub ceremony: Option<CeremonyRecord>,
    /// The last audit record.
    #[serde(skip)]
    pub last_record: Option<AuditRecord>,
    /// How many audit records.
    #[serde(skip)]
    pub records: usize,
}

impl Service {
    /// The home's state. Listing the online token may fail (a wrong PIN): that is reported in
    /// the status, not as an error.
    pub fn status(&self, actor: &Actor) -> Result<Status, ServiceError> {
        authorize(actor, Action::Administer)?;
        let module = self.module()?;
        let tokens = module.tokens()?;
        let online = self.online();
        let (online_objects, online_error) = match online
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|t| t.objects().map_err(|e| e.to_string()))
        {
            Ok(o) => (o, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let root_label = &self.config.hsm.root_token;
        let root_objects = if tokens.iter().any(|t| &t.label == root_label) {
            module.public_objects(root_label)?
        } else {
            Vec::new()
        };
        let mut cas = Vec::new();
        let mut mismatches = Vec::new();
        for kind in CaKind::ALL {
            if !self.has_ca(kind) {
                continue;
            }
            let cert = self.ca_cert(kind)?;
            let key_on_token = if kind == CaKind::Root {
                root_objects.iter().any(|o| o.label == kind.key_label())
            } else {
                online_objects
                    .iter()
                    .any(|o| o.label == kind.key_label() && o.class == "private-key")
            };
            // An issuing CA whose HSM key does not match its certificate is refused (and shown).
            let key_matches = (kind != CaKind::Root && online.is_ok() && key_on_token)
                .then(|| self.issuer(kind).map(|_| ()).map_err(|e| e.to_string()));
            if let Some(Err(e)) = &key_matches {
                mismatches.push(e.clone());
            }
            cas.push(json!({
                "kind": kind.name(),
                "file": self.home.ca_cert(kind),
                "key_label": kind.key_label(),
                "key_present": key_on_token,
                "key_matches_certificate": key_matches.as_ref().map(|r| r.is_ok()),
                "certificate": CertInfo::of(&cert),
            }));
        }
        let ceremony: Option<CeremonyRecord> = std::fs::read_to_string(self.home.root_ceremony())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let records = AuditLog::reader(self.home.audit_log()).records()?;
        let last = records.last().cloned();
        Ok(Status {
            home: self.home.root().to_path_buf(),
            module: self.config.hsm.module.clone(),
            manufacturer: module.manufacturer().unwrap_or_default(),
            tokens,
            online_token: json!({"label": self.config.hsm.online_token, "objects": online_objects, "error": online_error}),
            root_token: json!({"label": root_label, "public_objects": root_objects}),
            root_ceremony: ceremony.as_ref().map(|c| json!({"id": c.ceremony_id, "quorum": c.quorum, "officers": c.officers, "time": c.created})),
            cas,
            certificates: self.store()?.cert_count()?,
            audit: json!({"records": records.len(), "head_seq": last.as_ref().map(|r| r.seq), "head_hash": last.as_ref().map(|r| r.hash.clone()), "last_event": last.as_ref().map(|r| r.event.clone())}),
            mismatches,
            online_objects,
            root_objects,
            online_error,
            ceremony,
            last_record: last,
            records: records.len(),
        })
    }

    /// Checks the audit chain, trusting the audit signer's key only through the root
    /// certificate. Returns the report and whether signatures were checked.
    pub fn verify_audit(&self, actor: &Actor) -> Result<(AuditReport, bool), ServiceError> {
        authorize(actor, Action::Administer)?;
        let key = if self.home.audit_cert().exists() {
            let root = self.ca_cert(CaKind::Root)?;
            let pem = std::fs::read_to_string(self.home.audit_cert())
                .map_err(|e| ServiceError::io("reading the audit signer's certificate", e))?;
            let audit = crate::certs::certificate_from_pem(&pem)?;
            verify_certificate_signature(&audit, &root.tbs_certificate.subject_public_key_info)
                .map_err(|e| {
                    ServiceError::Internal(format!(
                        "the audit signer certificate is not signed by the root: {e}"
                    ))
                })?;
            Some(audit.tbs_certificate.subject_public_key_info)
        } else {
            None
        };
        let report = self.audit()?.verify(key.as_ref())?;
        Ok((report, key.is_some()))
    }

    /// Every audit record (for display).
    pub fn audit_records(&self, actor: &Actor) -> Result<Vec<AuditRecord>, ServiceError> {
        authorize(actor, Action::Administer)?;
        Ok(AuditLog::reader(self.home.audit_log()).records()?)
    }
}
