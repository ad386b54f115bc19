//! What the root certifies, and its revocation: the CA certificates' profiles, the records of
//! every certificate the root issued (the issuing CAs and the audit signer), the root's CRL (its
//! ARL, RFC 5280 §5 with the root as issuer) and the two ceremonies that only re-sign it or
//! revoke an issuing CA.
//!
//! The ARL is signed with the root key, which only a quorum opens: at every ceremony that opens
//! the root, and on demand (`meterpki ceremony root-crl`). Its nextUpdate is long
//! (`crl.arl_next_update_days`, default a year) and `status` warns well before it lapses.

use std::path::PathBuf;
use std::sync::Arc;

use policies::Validity;
use serde_json::json;
use x509_cert::Certificate;

use super::{authorize, now_rfc3339, Action, Actor, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::certs::{certificate_from_pem, fingerprint_sha256, CaCertSpec, CertInfo};
use crate::crl::{CrlScope, Published};
use crate::hsm::HsmToken;
use crate::issue::IssuerCtx;
use crate::model::{Reason, Revocation};
use crate::quorum::CeremonyRecord;
use crate::signer::{spki_der, Signer};
use crate::store::{CertRecord, Op, Txn};
use crate::{CaKind, IssuerId};

/// anyPolicy (RFC 5280 §4.2.1.4): what the root's certificate names when its profile names no
/// policy of the scheme's own.
const ANY_POLICY: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("2.5.29.32.0");

/// The store's subject for the audit signer's certificate.
pub(super) const AUDIT_SUBJECT_ID: &str = "ca:audit";

/// The root, opened by a quorum for one ceremony.
pub(super) struct OpenedRoot {
    /// Which root generation.
    pub(super) id: IssuerId,
    /// The root ceremony's public record.
    pub(super) record: CeremonyRecord,
    /// `ca/root.pem`, checked against the record and the key.
    pub(super) cert: Certificate,
    /// The root key.
    pub(super) signer: Arc<dyn Signer>,
    /// The root token, open for as long as this is.
    pub(super) _token: Arc<dyn HsmToken>,
}

impl Service {
    /// The CA certificate `kind` gets, from its profile (`root-ca`, `device-ca`, ...): validity,
    /// path length and policies (the profile's OID, else anyPolicy for the root and, for an
    /// issuing CA, every policy OID of the profiles it issues), and a CRL pointer at the
    /// root's ARL.
    pub(super) fn ca_spec(&self, kind: CaKind) -> Result<CaCertSpec, ServiceError> {
        self.ca_spec_under(kind, self.current_id(CaKind::Root))
    }

    /// [`Service::ca_spec`] for a certificate root generation `root` issues (its CRL pointer
    /// names that root's ARL).
    pub(super) fn ca_spec_under(
        &self,
        kind: CaKind,
        root: IssuerId,
    ) -> Result<CaCertSpec, ServiceError> {
        let profiles = self.profiles()?;
        let name = format!("{}-ca", kind.name());
        let profile = profiles
            .get(&name)
            .filter(|p| p.kind().is_ca())
            .ok_or_else(|| {
                ServiceError::invalid(
                    "profile",
                    format!(
                        "no CA profile `{name}` in {}: the {kind} CA's certificate is made from it",
                        self.home.policies_dir().display()
                    ),
                )
            })?;
        let validity = profile.validity();
        let (field, old) = if kind == CaKind::Root {
            ("ca.root_validity_days", self.config.ca.root_validity_days)
        } else {
            (
                "ca.issuing_validity_days",
                self.config.ca.issuing_validity_days,
            )
        };
        if let Some(old) = old.filter(|d| validity != Validity::Days(*d)) {
            let says = match validity {
                Validity::Days(d) => format!("validity-days = {d}"),
                Validity::Unlimited => "validity = \"unlimited\"".into(),
            };
            return Err(ServiceError::invalid(
                "config",
                format!(
                    "{field} = {old} in meterpki.toml, but profile `{name}` says {says}: \
                     CA certificates take their validity from their profiles; remove {field} or \
                     change the profile"
                ),
            ));
        }
        let policies = match (profile.policy_oid(), kind) {
            (Some(oid), _) => vec![oid],
            (None, CaKind::Root) => vec![ANY_POLICY],
            (None, _) => {
                let mut oids: Vec<_> = profiles
                    .iter()
                    .filter(|p| !p.kind().is_ca() && p.issuer() == kind)
                    .filter_map(|p| p.policy_oid())
                    .collect();
                oids.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                oids.dedup();
                oids
            }
        };
        // The root names its own ARL too: RFC 5280 path validation never checks a trust
        // anchor's revocation, but `openssl verify -crl_check_all` does, and it can only fetch
        // a CRL the certificate points at.
        let crl_url = if profile.crl_distribution_point() {
            // The URL goes into a certificate: it must be the one the home is bound to.
            let settings = self.crl_settings();
            crate::crl::check_shards(self.store()?.as_ref(), &settings)?;
            settings.arl_url(root)
        } else {
            None
        };
        // The name: the profile's, else meterpki.toml's (`ca.<kind>_subject`) or the default;
        // never two different ones.
        let subject = match (profile.subject(), self.config.ca.explicit_subject(kind)) {
            (Some(p), Some(c)) if p != c => {
                return Err(ServiceError::invalid(
                    "config",
                    format!(
                        "profile `{name}` names the subject {p:?} but meterpki.toml's ca section names {c:?}: keep one"
                    ),
                ))
            }
            (Some(p), _) => {
                crate::certs::parse_name(p).map_err(|e| {
                    ServiceError::invalid("profile", format!("profile `{name}`, field `subject`: {e}"))
                })?;
                p.to_string()
            }
            (None, _) => self.config.ca.subject(kind),
        };
        Ok(CaCertSpec {
            subject,
            validity,
            path_len: profile.path_len().unwrap_or(0),
            policies,
            crl_url,
            extra_extensions: Vec::new(),
        })
    }

    /// The audit signer's certificate: as long-lived as the root (old heads stay verifiable),
    /// listed in the ARL.
    pub(super) fn audit_signer_spec(&self) -> Result<CaCertSpec, ServiceError> {
        let root = self.ca_spec(CaKind::Root)?;
        let org = &self.config.ca.organisation;
        Ok(CaCertSpec {
            subject: format!("CN={org} Audit Signer,O={org}"),
            validity: root.validity,
            path_len: 0,
            policies: Vec::new(),
            crl_url: self.crl_settings().arl_url(self.current_id(CaKind::Root)),
            extra_extensions: Vec::new(),
        })
    }

    /// Opens the root with the officers' shares: every share checked against the root
    /// ceremony's record, the PIN rebuilt in memory only, `ca/root.pem` checked to be the
    /// certificate of that ceremony and of the key.
    pub(super) fn open_root(
        &self,
        actor: &Actor,
        shares: &[PathBuf],
    ) -> Result<OpenedRoot, ServiceError> {
        let home = &self.home;
        let record_text = std::fs::read_to_string(home.root_ceremony()).map_err(|_| {
            ServiceError::invalid(
                "no-root",
                format!(
                    "no root ceremony in {} yet: run `meterpki ceremony root` first",
                    home.root().display()
                ),
            )
        })?;
        let record: CeremonyRecord = serde_json::from_str(&record_text).map_err(|e| {
            ServiceError::Internal(format!("reading {}: {e}", home.root_ceremony().display()))
        })?;
        let secret = match self.check_shares(&record, shares) {
            Ok(s) => s,
            Err(e) => {
                // A wrong, altered, foreign or missing share is a security event.
                if !matches!(e, ServiceError::Quorum(crate::QuorumError::Io { .. })) {
                    self.note_refusal(
                        "ceremony.share-refused",
                        actor.name(),
                        json!({"shares": shares, "reason": e.to_string(), "root_ceremony_id": record.ceremony_id}),
                    );
                }
                return Err(e);
            }
        };
        let cert = self.ca_cert(CaKind::Root)?;
        if fingerprint_sha256(&cert) != record.root_cert_sha256 {
            return Err(ServiceError::Internal(format!(
                "{} is not the certificate made at root ceremony {}",
                home.ca_cert(CaKind::Root).display(),
                record.ceremony_id
            )));
        }
        let token = self.module()?.open(
            // The configured root token: the one made at the root ceremony, or its copy made by
            // `ceremony replicate-root` once `hsm.root_token` names it.
            &self.config.hsm.root_token,
            crate::hsm::SecretString::from(secret.user_pin().to_string()),
            1,
        )?;
        drop(secret);
        let signer = token.signer(&record.root_key_label)?;
        crate::certs::check_key_matches(signer.as_ref(), &cert, "root")?;
        crate::certs::verify_certificate_signature(&cert, signer.public_key())?;
        Ok(OpenedRoot {
            id: self.current_id(CaKind::Root),
            record,
            cert,
            signer,
            _token: token,
        })
    }

    /// The store's record of a certificate the root issued.
    pub(super) fn root_issued_record(
        root: IssuerId,
        subject_id: String,
        profile: &str,
        cert: &Certificate,
    ) -> Result<CertRecord, ServiceError> {
        let root_generation = root.generation;
        use der::Encode;
        let der = cert.to_der().map_err(crate::certs::CertError::from)?;
        let tbs = &cert.tbs_certificate;
        Ok(CertRecord {
            serial: tbs.serial_number.as_bytes().to_vec(),
            issuer: CaKind::Root,
            profile: profile.to_string(),
            subject_id,
            key_hash: crate::sha256(&spki_der(&tbs.subject_public_key_info)),
            shard: 0,
            issued_at: tbs.validity.not_before.to_unix_duration().as_secs() as i64,
            der,
            replaced_by: None,
            hw_type: None,
            issuer_generation: root_generation,
        })
    }

    /// Records of the certificates the root issued that the store does not hold yet: homes
    /// made before the ARL kept them only as files. A ceremony that opens the root stores them
    /// with its own record, so that the ARL can list them.
    pub(super) fn unrecorded_root_issued(&self) -> Result<Vec<(CertRecord, bool)>, ServiceError> {
        let store = self.store()?;
        let mut out = Vec::new();
        let mut files: Vec<(String, String, PathBuf)> = CaKind::ISSUING
            .iter()
            .map(|k| {
                (
                    self.current_id(*k).store_subject(),
                    format!("{}-ca", k.name()),
                    self.home.ca_cert(*k),
                )
            })
            .collect();
        files.push((
            AUDIT_SUBJECT_ID.into(),
            "audit-signer".into(),
            self.home.audit_cert(),
        ));
        for (subject, profile, path) in files {
            let Ok(pem) = std::fs::read_to_string(&path) else {
                continue;
            };
            let cert = certificate_from_pem(&pem)
                .map_err(|e| ServiceError::Internal(format!("reading {}: {e}", path.display())))?;
            let rec =
                Self::root_issued_record(self.current_id(CaKind::Root), subject, &profile, &cert)?;
            if store.cert(&rec.serial)?.is_some() {
                continue;
            }
            if let Some(other) = store.active_cert(&rec.subject_id, &rec.profile)? {
                return Err(ServiceError::conflict(
                    "ca-certificate",
                    format!(
                        "{} is not the {} certificate the store records (serial {}): put the recorded one back ({})",
                        path.display(),
                        rec.profile,
                        other.serial_hex(),
                        "meterpki show --serial <serial> prints it"
                    ),
                ));
            }
            out.push((rec, false));
        }
        Ok(out)
    }

    /// The revocation of the `kind` CA's certificate, if the root revoked it.
    pub fn ca_revocation(&self, kind: CaKind) -> Result<Option<Revocation>, ServiceError> {
        if kind == CaKind::Root || !self.has_ca(kind) {
            return Ok(None);
        }
        let cert = self.ca_cert(kind)?;
        Ok(self
            .store()?
            .revocation(cert.tbs_certificate.serial_number.as_bytes())?)
    }

    /// Signs and publishes the root's ARL (`<home>/crl/root/arl.crl`) with the opened root,
    /// with its `crl.publish` record.
    pub(super) fn publish_arl(
        &self,
        actor: &Actor,
        root: &OpenedRoot,
    ) -> Result<Vec<Published>, ServiceError> {
        // The ARL of this root, then of every earlier root generation whose key the root token
        // still holds (after a rollover, the old root's ARL lists what the old root issued).
        let mut issuers = vec![IssuerCtx::of_generation(
            root.id,
            root.cert.clone(),
            root.signer.clone(),
        )?];
        for g in (1..root.id.generation).rev() {
            let id = IssuerId::new(CaKind::Root, g);
            if root._token.find_key(&id.key_label())?.is_none() {
                continue;
            }
            let signer = root._token.signer(&id.key_label())?;
            issuers.push(IssuerCtx::of_generation(
                id,
                self.generation_cert(id)?,
                signer,
            )?);
        }
        let settings = self.crl_settings();
        let mut published = Vec::new();
        for issuer in issuers {
            published.extend(crate::crl::publish(
                &issuer,
                &self.audit()?,
                &settings,
                &[CrlScope::Full],
                &self.crl_dir().join(issuer.id().name()),
                &|p| {
                    AuditEntry::new(
                        "crl.publish",
                        actor.name(),
                        json!({"arl": true, "crls": p.iter().map(|p| json!({"issuer": p.issuer, "scope": "arl", "crl_number": p.crl_number, "entries": p.entries, "next_update": p.next_update})).collect::<Vec<_>>()}),
                    )
                },
            )?);
        }
        Ok(published)
    }

    /// Publishes the ARL after a ceremony was recorded: a failure no longer undoes the
    /// ceremony, it is reported as incomplete with the command that finishes it.
    pub(super) fn arl_after_ceremony(
        &self,
        actor: &Actor,
        root: &OpenedRoot,
        event: &str,
    ) -> Result<serde_json::Value, ServiceError> {
        match self.publish_arl(actor, root) {
            Ok(p) => Ok(json!(p)),
            Err(e) => Err(ServiceError::Incomplete(format!(
                "the {event} ceremony was made and recorded, but the root's ARL could not be \
                 published ({e}); run `meterpki ceremony root-crl --share ...` to publish it"
            ))),
        }
    }

    /// `meterpki ceremony root-crl`: a quorum opens the root to re-sign its ARL (before it
    /// lapses, or after it was lost). Certificates the root issued before the ARL existed are
    /// recorded in the same write.
    pub fn root_crl_ceremony(
        &self,
        actor: &Actor,
        shares: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        let root = self.open_root(actor, shares)?;
        let adopt = self.unrecorded_root_issued()?;
        let adopted: Vec<String> = adopt.iter().map(|(r, _)| r.subject_id.clone()).collect();
        let txn = Txn::new().with(Op::CommitIssued {
            items: adopt,
            all_or_nothing: true,
        });
        self.audit()?.commit(txn, |_| {
            Some(AuditEntry::new(
                "ceremony.root-crl",
                actor.name(),
                json!({"root_ceremony_id": root.record.ceremony_id, "quorum": root.record.quorum, "shares": shares, "recorded": adopted, "time": now_rfc3339()}),
            ))
        })?;
        let published = self.arl_after_ceremony(actor, &root, "root-crl")?;
        Ok(json!({"ceremony": "root-crl", "recorded": adopted, "published": published}))
    }

    /// `meterpki ceremony revoke-ca`: a quorum opens the root, revokes the `kind` CA's
    /// certificate and publishes the ARL that lists it. Every certificate below that CA then
    /// fails a relying party's revocation check; the CA itself signs nothing more.
    pub fn revoke_ca_ceremony(
        &self,
        actor: &Actor,
        kind: CaKind,
        generation: Option<u32>,
        reason: Reason,
        shares: &[PathBuf],
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        if kind == CaKind::Root {
            return Err(ServiceError::invalid(
                "kind",
                "the root cannot revoke itself: replace it with a root rollover",
            ));
        }
        if !matches!(
            reason,
            Reason::Unspecified
                | Reason::KeyCompromise
                | Reason::CaCompromise
                | Reason::AffiliationChanged
                | Reason::Superseded
                | Reason::CessationOfOperation
        ) {
            return Err(ServiceError::invalid(
                "reason",
                format!(
                    "--reason {}: a CA certificate is revoked for cACompromise, keyCompromise, \
                     affiliationChanged, superseded, cessationOfOperation or unspecified",
                    reason.name()
                ),
            ));
        }
        let current = self.current_id(kind);
        let id = match generation {
            None => current,
            Some(g) if (1..=current.generation).contains(&g) && self.has_ca(kind) => {
                IssuerId::new(kind, g)
            }
            Some(g) => {
                return Err(ServiceError::invalid(
                    "generation",
                    format!(
                        "the {kind} CA has no generation {g}: {}",
                        if self.has_ca(kind) {
                            format!("its generations are 1 to {}", current.generation)
                        } else {
                            "there is no such CA in this home".to_string()
                        }
                    ),
                ))
            }
        };
        let cert = self.generation_cert(id)?;
        let root = self.open_root(actor, shares)?;
        let serial = cert.tbs_certificate.serial_number.as_bytes().to_vec();
        // The same CA key certified by every root generation (a rollover re-certifies it):
        // each certificate is revoked, so that no path through either root stays open.
        let spki = spki_der(&cert.tbs_certificate.subject_public_key_info);
        let key_hash = crate::sha256(&spki);
        let mut serials = vec![serial.clone()];
        for r in self.store()?.certs_of_subject(&id.store_subject())? {
            if r.key_hash == key_hash && !serials.contains(&r.serial) {
                serials.push(r.serial);
            }
        }
        let adopt = self.unrecorded_root_issued()?;
        let revocation = Revocation {
            reason,
            revoked_at: super::unix_now(),
            invalidity_date: None,
        };
        let txn = Txn::new()
            .with(Op::CommitIssued {
                items: adopt,
                all_or_nothing: true,
            })
            .with(Op::Revoke {
                serials: serials.clone(),
                revocation,
            });
        let info = CertInfo::of(&cert);
        let (applied, _) = self.audit()?.commit(txn, |applied| {
            if !matches!(
                applied.revoked(1),
                Some([crate::store::Revoked::Now(_) | crate::store::Revoked::Already(..), ..])
            ) {
                // Not in the store (it could not be recorded): nothing to record either.
                return None;
            }
            let already = matches!(
                applied.revoked(1),
                Some([crate::store::Revoked::Already(..), ..])
            );
            Some(AuditEntry::new(
                "ceremony.revoke-ca",
                actor.name(),
                json!({"kind": kind.name(), "generation": id.generation, "reason": reason.name(), "certificate": info, "serials": serials.iter().map(hex::encode).collect::<Vec<_>>(), "already_revoked": already, "root_ceremony_id": root.record.ceremony_id, "quorum": root.record.quorum, "shares": shares}),
            ))
        })?;
        let status = match applied.revoked(1) {
            Some([crate::store::Revoked::Already(..), ..]) => "already-revoked",
            Some([crate::store::Revoked::Now(_), ..]) if applied.written => "revoked",
            _ => {
                return Err(ServiceError::Internal(format!(
                    "the {kind} CA's certificate (serial {}) is not in the store, so it was not revoked",
                    hex::encode(&serial)
                )))
            }
        };
        let published = self.arl_after_ceremony(actor, &root, "revoke-ca")?;
        Ok(json!({
            "ceremony": "revoke-ca",
            "kind": kind.name(),
            "generation": id.generation,
            "name": id.name(),
            "serial": hex::encode(&serial),
            "status": status,
            "reason": reason.name(),
            "published": published,
        }))
    }
}
