//! `status`: tokens, keys, CA certificates and whether each matches its HSM key, counts, the
//! audit head; and `audit verify` with the audit key trusted through the root.

use serde::Serialize;
use serde_json::json;

use super::{authorize, Action, Actor, Service, ServiceError};
use crate::audit::{AuditRecord, AuditReport};
use crate::certs::{verify_certificate_signature, CertInfo};
use crate::hsm::{ObjectSummary, TokenSummary};
use crate::quorum::CeremonyRecord;
use crate::{CaKind, IssuerId};

/// One published CRL, as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CrlStatus {
    /// `root` (the ARL), `device`, `organisation`, `access`.
    pub issuer: String,
    /// The file's name: `3.crl`, `full.crl`, `arl.crl`.
    pub file: String,
    /// What the CRL says of itself.
    #[serde(flatten)]
    pub facts: crate::crl::CrlFacts,
}

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
    /// With `[[hsm.tokens]]`: each token holding the online keys, `{"label", "error", "keys":
    /// [{"label", "present", "same_as_online_token"}]}`; empty with the online token alone.
    pub online_tokens: Vec<serde_json::Value>,
    /// The root ceremony's public record.
    pub root_ceremony: Option<serde_json::Value>,
    /// Each CA: its certificate, whether its key is on the token and matches it.
    pub cas: Vec<serde_json::Value>,
    /// Certificates issued (end entities; the CA certificates the root issued are in `cas`).
    pub certificates: u64,
    /// Every published CRL: issuer, file, cRLNumber, entries, thisUpdate, nextUpdate.
    pub crls: Vec<CrlStatus>,
    /// What needs an operator soon (the ARL lapsing, a CRL missing or past its nextUpdate).
    pub warnings: Vec<String>,
    /// `{"records", "head_seq", "head_hash", "last_event"}`.
    pub audit: serde_json::Value,
    /// Where the store has less than the audit log says it committed (a cRLNumber, the
    /// certificate or revocation count): a store older than its log.
    pub store_problems: Vec<String>,
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
            let current = self.current_id(kind);
            let key_on_token = if kind == CaKind::Root {
                root_objects.iter().any(|o| o.label == current.key_label())
            } else {
                online_objects
                    .iter()
                    .any(|o| o.label == current.key_label() && o.class == "private-key")
            };
            // An issuing CA whose HSM key does not match its certificate is refused (and shown).
            let key_matches = (kind != CaKind::Root && online.is_ok() && key_on_token)
                .then(|| self.issuer(kind).map(|_| ()).map_err(|e| e.to_string()));
            if let Some(Err(e)) = &key_matches {
                mismatches.push(e.clone());
            }
            cas.push(json!({
                "kind": kind.name(),
                "generation": self.current_id(kind).generation,
                "generations": self.generations_status(kind)?,
                "file": self.home.ca_cert(kind),
                "key_label": current.key_label(),
                "key_present": key_on_token,
                "key_matches_certificate": key_matches.as_ref().map(|r| r.is_ok()),
                "certificate": CertInfo::of(&cert),
            }));
        }
        let ceremony: Option<CeremonyRecord> = std::fs::read_to_string(self.home.root_ceremony())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let records = self.audit_reader()?.records()?;
        let last = records.last().cloned();
        let store = self.store()?;
        let mut root_issued = 0;
        for kind in CaKind::ISSUING {
            for id in self.generations(kind) {
                root_issued += store.certs_of_subject(&id.store_subject())?.len() as u64;
            }
            if let Some(rev) = self.ca_revocation(kind)? {
                if let Some(c) = cas.iter_mut().find(|c| c["kind"] == kind.name()) {
                    c["revoked"] =
                        json!({"reason": rev.reason.name(), "revoked_at": rev.revoked_at});
                }
            }
        }
        root_issued += store.certs_of_subject(super::arl::AUDIT_SUBJECT_ID)?.len() as u64;
        let (crls, warnings) = self.crl_status()?;
        let store_problems = self.store_against_log(&records)?;
        Ok(Status {
            home: self.home.root().to_path_buf(),
            module: self.config.hsm.module.clone(),
            manufacturer: module.manufacturer().unwrap_or_default(),
            tokens,
            online_token: json!({"label": self.config.hsm.online_token, "objects": online_objects, "error": online_error}),
            root_token: json!({"label": root_label, "public_objects": root_objects}),
            online_tokens: self.online_tokens_status(),
            root_ceremony: ceremony.as_ref().map(|c| json!({"id": c.ceremony_id, "quorum": c.quorum, "officers": c.officers, "time": c.created})),
            cas,
            certificates: store.cert_count()?.saturating_sub(root_issued),
            crls,
            warnings,
            store_problems,
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

    /// Holds the store to what the audit log says it committed: the cRLNumbers of the last
    /// publications, the certificate count and each issuer's revocation count at them. A store
    /// has never less than that (its counts never go back); less means it is older than its log.
    pub(super) fn store_against_log(
        &self,
        records: &[AuditRecord],
    ) -> Result<Vec<String>, ServiceError> {
        use crate::crl::{last_number, CrlScope};
        use std::collections::BTreeMap;
        let store = self.store()?;
        // Only what the store committed (records up to its head), written by meterpki (signed,
        // once the log is signed) and not named foreign or void by a writer's note.
        let head = store.audit_head()?.map_or(0, |h| h.seq);
        let signing = records.iter().any(|r| r.sig.is_some());
        let void: std::collections::HashSet<u64> = records
            .iter()
            .filter(|r| r.event == crate::audit::FOREIGN_EVENT && r.sig.is_some())
            .flat_map(|r| {
                ["void", "records"]
                    .iter()
                    .flat_map(|f| r.details[*f].as_array().cloned().unwrap_or_default())
                    .filter_map(|v| v.as_u64())
                    .collect::<Vec<_>>()
            })
            .collect();
        let records = records
            .iter()
            .filter(|r| r.seq <= head && (!signing || r.sig.is_some()) && !void.contains(&r.seq));
        let mut numbers: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        let mut full_entries: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut certificates = (0, 0);
        for r in records.filter(|r| r.event == "crl.publish") {
            if let Some(n) = r.details["store_certificates"].as_u64() {
                certificates = (n, r.seq);
            }
            for c in r.details["crls"].as_array().into_iter().flatten() {
                let (Some(issuer), Some(scope), Some(n)) = (
                    c["issuer"].as_str(),
                    c["scope"].as_str(),
                    c["crl_number"].as_u64(),
                ) else {
                    continue;
                };
                numbers.insert((issuer.into(), scope.into()), (n, r.seq));
                if matches!(scope, "full" | "arl") {
                    if let Some(e) = c["entries"].as_u64() {
                        full_entries.insert(issuer.into(), (e, r.seq));
                    }
                }
            }
        }
        let mut problems = Vec::new();
        for ((issuer, scope), (n, seq)) in &numbers {
            let Some(kind) = IssuerId::parse(issuer) else {
                continue;
            };
            let scope_of = match scope.as_str() {
                "full" | "arl" => CrlScope::Full,
                s => match s.parse() {
                    Ok(n) => CrlScope::Shard(n),
                    Err(_) => continue,
                },
            };
            let stored = last_number(store.as_ref(), kind, scope_of)?;
            if stored < *n {
                problems.push(format!(
                    "the store's last cRLNumber for {issuer}/{scope} is {stored}, but audit record {seq} says {n} was published: the store is older than its audit log"
                ));
            }
        }
        let stored = store.cert_count()?;
        if stored < certificates.0 {
            problems.push(format!(
                "the store holds {stored} certificates, but audit record {} says it held {} then: the store is older than its audit log",
                certificates.1, certificates.0
            ));
        }
        for (issuer, (entries, seq)) in &full_entries {
            let Some(kind) = IssuerId::parse(issuer) else {
                continue;
            };
            let stored = store.count_revoked_of_issuer(kind)?;
            if stored < *entries {
                problems.push(format!(
                    "the store holds {stored} revocations by the {issuer} CA, but audit record {seq} published {entries}: revocations were lost"
                ));
            }
        }
        Ok(problems)
    }

    /// Every published CRL with what it says of itself, and warnings: the ARL missing or with
    /// less than a quarter of its lifetime left, an issuing CA's CRL missing or past its
    /// nextUpdate.
    pub fn crl_status(&self) -> Result<(Vec<CrlStatus>, Vec<String>), ServiceError> {
        let now = crate::unix_now();
        let mut crls = Vec::new();
        let mut warnings = Vec::new();
        for kind in CaKind::ALL {
            if !self.has_ca(kind) {
                continue;
            }
            // A shared store's CRLs as any server last published them.
            self.sync_crls_of(kind)?;
            for id in self.generations(kind) {
                let dir = self.crl_dir().join(id.name());
                let mut files: Vec<_> = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.ends_with(".crl"))
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort_by_key(|n| {
                    (
                        n.trim_end_matches(".crl")
                            .parse::<u64>()
                            .unwrap_or(u64::MAX),
                        n.clone(),
                    )
                });
                if files.is_empty() {
                    warnings.push(if kind == CaKind::Root {
                    "the root has published no ARL yet (homes made before it existed): run `meterpki ceremony root-crl --share ...`".to_string()
                } else {
                    format!("the {kind} CA has published no CRL: run `meterpki crl publish` or start `meterpki serve`")
                });
                }
                for file in files {
                    if !dir.join(&file).exists() {
                        continue;
                    }
                    let Ok(facts) = crate::crl::CrlFacts::read(&dir.join(&file)) else {
                        warnings.push(format!("{}/{file} is not a readable CRL", dir.display()));
                        continue;
                    };
                    if let Some(w) = crl_warning(kind, &file, &facts, now) {
                        warnings.push(w);
                    }
                    if matches!(file.as_str(), "full.crl" | "arl.crl") {
                        // A revocation committed but never published (a crash between the two, a
                        // `--no-publish`): relying parties do not see it yet.
                        let stored = self.store()?.count_revoked_of_issuer(id)? as usize;
                        if facts.entries < stored {
                            warnings.push(format!(
                                "{}/{file} lists {} revocations but the store holds {stored}: {}",
                                id.name(),
                                facts.entries,
                                if kind == CaKind::Root {
                                    "run `meterpki ceremony root-crl --share ...`"
                                } else {
                                    "run `meterpki crl publish` (a starting server does it)"
                                }
                            ));
                        }
                    }
                    crls.push(CrlStatus {
                        issuer: id.name(),
                        file,
                        facts,
                    });
                }
            }
        }
        Ok((crls, warnings))
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
        // A store that does not match the log is reported here, not refused: this is the
        // command that tells what is wrong.
        let (log, mismatch) = match self.audit_unsigned() {
            Ok(log) => (log, None),
            Err(e) if e.code() == "store-mismatch" => (self.audit_reader()?, Some(e.to_string())),
            Err(e) => return Err(e),
        };
        let mut report = log.verify(key.as_ref())?;
        if report.ok {
            let problem = match mismatch {
                Some(m) => Some(m),
                None => self.store_against_log(&log.records()?)?.into_iter().next(),
            };
            if let Some(p) = problem {
                report.ok = false;
                report.problem = Some(p);
            }
        }
        Ok((report, key.is_some()))
    }

    /// Every audit record (for display).
    pub fn audit_records(&self, actor: &Actor) -> Result<Vec<AuditRecord>, ServiceError> {
        authorize(actor, Action::Administer)?;
        Ok(self.audit_reader()?.records()?)
    }
}

/// What `status` and `/metrics` warn of for one CRL: past its nextUpdate (relying parties
/// refuse everything below it), or for the root's ARL, which only a quorum can re-sign, less
/// than a quarter of its lifetime left.
pub fn crl_warning(
    kind: CaKind,
    file: &str,
    facts: &crate::crl::CrlFacts,
    now: i64,
) -> Option<String> {
    let next = facts.next_update?;
    let lifetime = (next - facts.this_update).max(1);
    if now >= next {
        Some(format!(
            "{}/{file} LAPSED at its nextUpdate {}: relying parties refuse every certificate below it; {}",
            kind.name(),
            super::rfc3339_of(next),
            if kind == CaKind::Root {
                "run `meterpki ceremony root-crl --share ...` now"
            } else {
                "run `meterpki crl publish`"
            }
        ))
    } else if kind == CaKind::Root && next - now < lifetime / 4 {
        Some(format!(
            "the root's ARL lapses at {} (in {} days): run `meterpki ceremony root-crl --share ...` before then",
            super::rfc3339_of(next),
            (next - now) / 86_400
        ))
    } else {
        None
    }
}

impl Service {
    /// Each of `[[hsm.tokens]]` and whether it holds every online key in use, the same as the
    /// online token's (see [`Status::online_tokens`]).
    fn online_tokens_status(&self) -> Vec<serde_json::Value> {
        use super::identity::{AUDIT_KEY_LABEL, SERVER_KEY_LABEL, UPDATE_KEY_LABEL};
        if self.config.hsm.tokens.is_empty() {
            return Vec::new();
        }
        let tokens = match self.online_tokens() {
            Ok(t) => t,
            Err(e) => return vec![json!({"label": "(all)", "error": e.to_string(), "keys": []})],
        };
        let Ok(online) = self.online() else {
            return Vec::new();
        };
        let mut labels: Vec<String> = CaKind::ISSUING
            .iter()
            .flat_map(|k| self.generations(*k))
            .map(|id| id.key_label())
            .collect();
        labels.extend([AUDIT_KEY_LABEL, SERVER_KEY_LABEL, UPDATE_KEY_LABEL].map(String::from));
        tokens
            .iter()
            .map(|(label, token)| {
                let keys: Vec<_> = labels
                    .iter()
                    .filter_map(|key| {
                        let reference = online.find_key(key).ok().flatten()?;
                        let here = token.find_key(key).ok().flatten();
                        Some(json!({
                            "label": key,
                            "present": here.is_some(),
                            "same_as_online_token": here.map(|h| h.spki == reference.spki),
                        }))
                    })
                    .collect();
                json!({"label": label, "error": null, "keys": keys})
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(this: i64, next: i64) -> crate::crl::CrlFacts {
        crate::crl::CrlFacts {
            crl_number: 1,
            entries: 0,
            this_update: this,
            next_update: Some(next),
        }
    }

    /// The ARL warns once less than a quarter of its lifetime is left, and loudly once it has
    /// lapsed; an issuing CA's CRL (republished by the server) only when it lapsed.
    #[test]
    fn the_arl_warns_well_before_it_lapses() {
        let day = 86_400;
        let arl = facts(0, 365 * day);
        assert_eq!(crl_warning(CaKind::Root, "arl.crl", &arl, 200 * day), None);
        let w = crl_warning(CaKind::Root, "arl.crl", &arl, 300 * day).unwrap();
        assert!(
            w.contains("in 65 days") && w.contains("ceremony root-crl"),
            "{w}"
        );
        let w = crl_warning(CaKind::Root, "arl.crl", &arl, 366 * day).unwrap();
        assert!(w.contains("LAPSED"), "{w}");
        let shard = facts(0, day);
        assert_eq!(crl_warning(CaKind::Device, "3.crl", &shard, day - 60), None);
        let w = crl_warning(CaKind::Device, "3.crl", &shard, day).unwrap();
        assert!(
            w.contains("device/3.crl LAPSED") && w.contains("crl publish"),
            "{w}"
        );
    }
}
