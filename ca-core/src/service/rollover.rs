//! Root rollover (docs/lifecycle.md, RFC 4210 §4.4): a new root key in the root token, its
//! self-signed certificate (NewWithNew), the new key certified by the old (NewWithOld) and the
//! old by the new (OldWithNew), and every issuing CA generation and the audit signer
//! re-certified under the new root, so that every existing certificate validates under either
//! root while meters move from one to the other. Once an issuing CA has been revoked for a
//! compromise, no OldWithNew is made (docs/lifecycle.md §5): meters check no CRL.

use std::path::{Path, PathBuf};

use serde_json::json;
use x509_cert::Certificate;

use super::arl::{OpenedRoot, AUDIT_SUBJECT_ID};
use super::ceremony::{json_text, stage, undo, Prepared};
use super::error::io_at;
use super::{authorize, now_compact, now_rfc3339, Action, Actor, Service, ServiceError};
use crate::certs::{
    build_ca_certificate_named, build_self_signed_root_named, build_signer_certificate_named,
    certificate_to_pem, fingerprint_sha256, CertInfo,
};
use crate::signer::KeyAlgorithm;
use crate::store::{CertRecord, Op, Txn};
use crate::tamp::ApexTarget;
use crate::{CaKind, IssuerId};

/// Refuses a contingency shares folder that holds a root share given: the two quorums' shares
/// are kept apart, so that one theft does not yield both.
fn apart_from_root_shares(dir: &Path, shares: &[PathBuf]) -> Result<(), ServiceError> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = canon(dir);
    if shares
        .iter()
        .filter_map(|s| s.parent())
        .any(|p| canon(p) == dir)
    {
        return Err(ServiceError::invalid(
            "contingency-shares-dir",
            format!(
                "--contingency-shares-dir {}: it holds root shares; put the contingency shares in a folder of their own (kept apart from the root's)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// How the apex update installing a new root is signed.
enum ApexSigning {
    /// By the previous root (a rollover).
    Root,
    /// By the previous root's contingency key (a recovery), with its decryption key.
    Contingency {
        signer: std::sync::Arc<dyn crate::signer::Signer>,
        decrypt_key: zeroize::Zeroizing<[u8; 32]>,
    },
}

impl ApexSigning {
    fn event(&self) -> &'static str {
        match self {
            ApexSigning::Root => "ceremony.root-rollover",
            ApexSigning::Contingency { .. } => "ceremony.apex-recover",
        }
    }
}

/// The store's subject of the rollover's link certificates.
const LINK_SUBJECT_ID: &str = "ca:root-link";

/// A certificate the rollover makes: where it lands, what it replaces there (moved under
/// `ca/generations/root-<N>/`), and its store record.
struct Made {
    what: String,
    path: PathBuf,
    cert: Certificate,
    record: Option<CertRecord>,
}

impl Service {
    /// `meterpki ceremony root-rollover --share ...`: see the module documentation. The
    /// previous root stays `ca/generations/root-<N>.pem`, its key stays in the root token and
    /// keeps signing its ARL; the link certificates are `ca/links/new-with-old.pem` and
    /// `ca/links/old-with-new.pem` (not made after a compromise: see the module
    /// documentation). Nothing is left behind by a rollover refused or failed before its audit
    /// record.
    pub fn root_rollover_ceremony(
        &self,
        actor: &Actor,
        shares: &[PathBuf],
        target: ApexTarget,
        contingency_dir: &Path,
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        apart_from_root_shares(contingency_dir, shares)?;
        let old = self.open_root(actor, shares)?;
        self.new_root(actor, old, target, contingency_dir, ApexSigning::Root)
    }

    /// `meterpki ceremony apex-recover --share … --contingency-share … --contingency-shares-dir
    /// DIR`: when the root key can no longer be trusted. As a rollover, but the apex update is
    /// signed with the root's contingency key and carries the key that decrypts it (RFC 5934
    /// §4.5), no link certificate ties the new root to the old, and once recorded the old root
    /// key and the spent contingency key are destroyed.
    pub fn apex_recover_ceremony(
        &self,
        actor: &Actor,
        shares: &[PathBuf],
        contingency_shares: &[PathBuf],
        target: ApexTarget,
        contingency_dir: &Path,
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        // Checked before any share is opened.
        if target != ApexTarget::All {
            return Err(ServiceError::invalid(
                "hw-type",
                "a recovery must reach every meter: the untrusted root key is destroyed once it \
                 is recorded, so no later update could be signed for the other device types",
            ));
        }
        apart_from_root_shares(contingency_dir, shares)?;
        let old = self.open_root(actor, shares)?;
        let (signer, decrypt_key) = match self.open_contingency(&old, contingency_shares) {
            Ok(c) => c,
            Err(e) => {
                // A wrong, altered or foreign share is a security event (a missing record or
                // an unreadable file is not).
                if matches!(&e, ServiceError::Quorum(q) if !matches!(q, crate::QuorumError::Io { .. }))
                {
                    self.note_refusal(
                        "ceremony.share-refused",
                        actor.name(),
                        serde_json::json!({"contingency_shares": contingency_shares, "reason": e.to_string()}),
                    );
                }
                return Err(e);
            }
        };
        self.new_root(
            actor,
            old,
            target,
            contingency_dir,
            ApexSigning::Contingency {
                signer,
                decrypt_key,
            },
        )
    }

    fn new_root(
        &self,
        actor: &Actor,
        old: OpenedRoot,
        target: ApexTarget,
        contingency_dir: &Path,
        apex: ApexSigning,
    ) -> Result<serde_json::Value, ServiceError> {
        let names = old.record.officer_names.clone();
        let contingency_paths =
            super::contingency::contingency_share_paths(contingency_dir, &names)?;
        let new_id = old.id.next();
        let label = new_id.key_label();
        let token = old._token.clone();
        if token.find_key(&label)?.is_some() {
            // A key without its certificate is what an interrupted rollover leaves behind.
            tracing::warn!(key = %label, "removing a root key left by an interrupted rollover");
            token.destroy_key(&label)?;
        }
        let key = token.generate_key_as(&label, KeyAlgorithm::EcP384, self.key_protection())?;
        let event = apex.event();
        let outcome = self
            .rollover_after_key(
                actor,
                &old,
                new_id,
                &key.id,
                &target,
                &apex,
                &contingency_paths,
            )
            .and_then(|(p, new_root, withdrawn)| {
                let recorded = self.record_ceremony(actor, p);
                let mut not_withdrawn = Vec::new();
                if matches!(&recorded, Ok(_) | Err(ServiceError::Incomplete(_))) {
                    for path in &withdrawn {
                        // Its copy is kept under ca/generations/root-<N>/.
                        if let Err(e) = std::fs::remove_file(path) {
                            not_withdrawn.push(format!("{} ({e})", path.display()));
                        }
                    }
                }
                if let (ApexSigning::Contingency { .. }, Ok(_) | Err(ServiceError::Incomplete(_))) =
                    (&apex, &recorded)
                {
                    // Recorded (even if a file is still to be put in place): the old root key is
                    // not to be trusted and the contingency key's decryption key is now public,
                    // so neither signs anything again, whatever else happens.
                    self.destroy_spent_root_keys(actor, &old)?;
                }
                let mut summary = recorded?;
                // The new root's ARL, and the previous root's re-signed (if its key is kept).
                summary["arl"] = self.arl_after_ceremony(actor, &new_root, event)?;
                if !not_withdrawn.is_empty() {
                    return Err(ServiceError::Incomplete(format!(
                        "the ceremony was recorded and the ARLs published, but these earlier link certificates are still in ca/links/ (their copies are kept under ca/generations/): {}; remove them by hand so that nobody fetches them as current",
                        not_withdrawn.join(", ")
                    )));
                }
                Ok(summary)
            });
        if undo(&outcome) {
            let _ = token.destroy_key(&label);
            let _ = token.destroy_key(&super::contingency::contingency_label(new_id));
            for p in &contingency_paths {
                let _ = std::fs::remove_file(p);
            }
        }
        outcome
    }

    /// After a recovery: the old root key and its spent contingency key destroyed in the root
    /// token, with an audit record of their own. A key that cannot be destroyed is reported
    /// as incomplete, with what to do.
    fn destroy_spent_root_keys(&self, actor: &Actor, old: &OpenedRoot) -> Result<(), ServiceError> {
        let token = &old._token;
        let mut destroyed = Vec::new();
        let mut failed = Vec::new();
        for l in [
            old.id.key_label(),
            super::contingency::contingency_label(old.id),
        ] {
            match token.destroy_key(&l) {
                Ok(n) if n > 0 => destroyed.push(l),
                Ok(_) => {}
                Err(e) => failed.push(format!("{l} ({e})")),
            }
        }
        self.audit()?.append(
            "ceremony.apex-recover.destroyed",
            actor.name(),
            serde_json::json!({"root": old.id.name(), "destroyed": destroyed, "failed": failed, "token": old.record.root_token}),
        )?;
        if !failed.is_empty() {
            return Err(ServiceError::Incomplete(format!(
                "the recovery was recorded, but these keys of the untrusted root are still in the root token: {}; destroy them (pkcs11-tool --delete-object) before anything else",
                failed.join(", ")
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rollover_after_key(
        &self,
        actor: &Actor,
        old: &OpenedRoot,
        new_id: IssuerId,
        key_id: &[u8],
        target: &ApexTarget,
        signing: &ApexSigning,
        contingency_paths: &[PathBuf],
    ) -> Result<(Prepared, OpenedRoot, Vec<PathBuf>), ServiceError> {
        let home = &self.home;
        let recover = matches!(signing, ApexSigning::Contingency { .. });
        let new_signer = old._token.signer(&new_id.key_label())?;
        let old_n = old.id.generation;
        // NewWithNew: the new key under the root's unchanged name (RFC 4210 §4.4). The link
        // certificates are then self-issued, which RFC 5280 §4.2.1.9 does not count against
        // a path's length: a meter's chain through OldWithNew or NewWithOld fits the root's
        // pathLenConstraint. The generations are told apart by their key identifiers.
        let mut contingency = self.make_contingency(
            &old._token,
            new_id,
            old.record.quorum,
            &old.record.officer_names,
            contingency_paths,
        )?;
        let mut spec = self.ca_spec_under(CaKind::Root, new_id)?;
        spec.extra_extensions.push(contingency.extension.clone());
        let new_root = build_self_signed_root_named(
            new_signer.as_ref(),
            old.cert.tbs_certificate.subject.clone(),
            &spec,
        )?;
        let new_name = new_root.tbs_certificate.subject.clone();
        let new_spki = new_root.tbs_certificate.subject_public_key_info.clone();
        // NewWithOld: the new key certified by the old, pointing at the old root's ARL, which
        // lists it; OldWithNew the other way round.
        let old_spec = self.ca_spec_under(CaKind::Root, old.id)?;
        let new_with_old = build_ca_certificate_named(
            old.signer.as_ref(),
            &old.cert,
            new_name,
            &new_spki,
            &old_spec,
        )?;
        let old_with_new = build_ca_certificate_named(
            new_signer.as_ref(),
            &new_root,
            old.cert.tbs_certificate.subject.clone(),
            &old.cert.tbs_certificate.subject_public_key_info,
            &spec,
        )?;
        let record = |root: IssuerId, subject: String, profile: &str, cert: &Certificate| {
            Self::root_issued_record(root, subject, profile, cert)
        };
        contingency.record.root_cert_sha256 = fingerprint_sha256(&new_root);
        let links = home.ca_links_dir();
        let mut made = vec![
            Made {
                what: "new-with-old".into(),
                path: links.join("new-with-old.pem"),
                record: Some(record(
                    old.id,
                    LINK_SUBJECT_ID.into(),
                    "root-link",
                    &new_with_old,
                )?),
                cert: new_with_old.clone(),
            },
            Made {
                what: "old-with-new".into(),
                path: links.join("old-with-new.pem"),
                record: Some(record(
                    new_id,
                    LINK_SUBJECT_ID.into(),
                    "root-link",
                    &old_with_new,
                )?),
                cert: old_with_new.clone(),
            },
        ];
        // OldWithNew gives every certificate the old root key signed a path to the new root.
        // Meters check no CRL: when an issuing CA is revoked for a compromise, a chain through
        // its compromised key would still reach the new root through OldWithNew, so it is not
        // made. The live issuing CAs are certified again below, so no valid chain needs it.
        let compromised = self.compromised_generations()?;
        if !compromised.is_empty() {
            made.retain(|m| m.what != "old-with-new");
        }
        let mut untrusted_links = Vec::new();
        if recover {
            // No path may join the new root to a key that is no longer trusted, nor an earlier
            // root to it: the link certificates of an earlier rollover that certify the old key
            // (NewWithOld) or that it signed (OldWithNew) are revoked in the same write.
            made.clear();
            let old_spki = &old.cert.tbs_certificate.subject_public_key_info;
            let old_hash = crate::sha256(&crate::signer::spki_der(old_spki));
            for r in self.store()?.certs_of_subject(LINK_SUBJECT_ID)? {
                let signed_by_old = r.issuer_generation == old.id.generation;
                if r.key_hash == old_hash || signed_by_old {
                    untrusted_links.push(r.serial);
                }
            }
        }
        // Every issuing-CA generation the old root certified and did not revoke, and the audit
        // signer: the same name and key, certified by the new root (its ARL named).
        for kind in CaKind::ISSUING {
            let spec = self.ca_spec_under(kind, new_id)?;
            for id in self.generations(kind) {
                if self.generation_revocation(id)?.is_some() {
                    continue;
                }
                let cert = self.generation_cert(id)?;
                let again = build_ca_certificate_named(
                    new_signer.as_ref(),
                    &new_root,
                    cert.tbs_certificate.subject.clone(),
                    &cert.tbs_certificate.subject_public_key_info,
                    &spec,
                )?;
                made.push(Made {
                    what: id.name(),
                    path: self.generation_cert_path(id),
                    record: Some(record(
                        new_id,
                        id.store_subject(),
                        &format!("{}-ca", kind.name()),
                        &again,
                    )?),
                    cert: again,
                });
            }
        }
        let audit_cert = crate::certs::certificate_from_pem(
            &std::fs::read_to_string(home.audit_cert())
                .map_err(io_at(format!("reading {}", home.audit_cert().display())))?,
        )?;
        let audit_again = build_signer_certificate_named(
            new_signer.as_ref(),
            &new_root,
            audit_cert.tbs_certificate.subject.clone(),
            &audit_cert.tbs_certificate.subject_public_key_info,
            &crate::certs::CaCertSpec {
                crl_url: self.crl_settings().arl_url(new_id),
                ..self.audit_signer_spec()?
            },
        )?;
        made.push(Made {
            what: "audit".into(),
            path: home.audit_cert(),
            record: Some(record(
                new_id,
                AUDIT_SUBJECT_ID.into(),
                "audit-signer",
                &audit_again,
            )?),
            cert: audit_again,
        });

        // The apex update that installs the new root in the meters, signed by the root they
        // hold now, checked as a meter would before it is written.
        let apex_seq = self.store()?.reserve("tamp.apex.seq", 1)?;
        let old_key_id = crate::certs::subject_key_identifier(&old.cert)
            .map(|s| s.0.as_bytes().to_vec())
            .unwrap_or_else(|| {
                crate::certs::key_identifier(&old.cert.tbs_certificate.subject_public_key_info)
                    .to_vec()
            });
        let apex_error = |e: crate::tamp::TampError| {
            ServiceError::Internal(format!("the apex update for the new root: {e}"))
        };
        let content = crate::tamp::encode_apex(target, apex_seq, &new_root).map_err(apex_error)?;
        let apex = match signing {
            ApexSigning::Root => crate::tamp::sign_apex(
                old.signer.as_ref(),
                Some(&old.cert),
                &old_key_id,
                &content,
                Vec::new(),
            ),
            ApexSigning::Contingency {
                signer,
                decrypt_key,
            } => {
                // Signed with the contingency key, named by its key identifier (it has no
                // certificate); the unsigned attribute publishes the key that decrypts it
                // from the meters' apex certificate.
                let attr = x509_cert::attr::Attribute {
                    oid: crate::contingency::ID_AA_CONTINGENCY_DECRYPT_KEY,
                    values: der::asn1::SetOfVec::try_from(vec![der::Any::encode_from(
                        &der::asn1::OctetString::new(decrypt_key.as_slice())
                            .map_err(crate::certs::CertError::from)?,
                    )
                    .map_err(crate::certs::CertError::from)?])
                    .map_err(crate::certs::CertError::from)?,
                };
                crate::tamp::sign_apex(
                    signer.as_ref(),
                    None,
                    &crate::certs::key_identifier(signer.public_key()),
                    &content,
                    vec![attr],
                )
            }
        }
        .map_err(apex_error)?;
        crate::tamp::verify_apex(&apex, &old.cert, &crate::tamp::ApexOptions::default())
            .map_err(apex_error)?;
        let apex_path = home.updates_dir().join(format!("apex-{apex_seq}.der"));

        let mut ceremony_record = old.record.clone();
        ceremony_record.root_key_label = new_id.key_label();
        ceremony_record.root_key_id = hex::encode(key_id);
        ceremony_record.root_cert_sha256 = fingerprint_sha256(&new_root);
        let transcript_path = home.ceremonies_dir().join(format!(
            "{}-{}.json",
            now_compact(),
            signing.event().trim_start_matches("ceremony.")
        ));
        let kept = home.ca_generations_dir().join(format!("root-{old_n}"));
        // An earlier rollover's link this one does not replace is kept with the old root's
        // certificates and withdrawn from `ca/links/` once the ceremony is recorded.
        let withdrawn: Vec<PathBuf> = ["new-with-old.pem", "old-with-new.pem"]
            .iter()
            .map(|name| links.join(name))
            .filter(|path| path.exists() && !made.iter().any(|m| &m.path == path))
            .collect();
        let transcript = json!({
            "ceremony": signing.event().trim_start_matches("ceremony."),
            "apex_signed_by": if recover { "the previous root's contingency key" } else { "the previous root" },
            "contingency": {"key": contingency.label, "share_files": contingency_paths, "record": contingency.record_path},
            "root_ceremony_id": old.record.ceremony_id,
            "operator": actor.name(),
            "started_by_os_user": Actor::local().name(),
            "time": now_rfc3339(),
            "quorum": old.record.quorum,
            "previous": {"generation": old_n, "certificate": CertInfo::of(&old.cert), "file": home.ca_generation_cert(CaKind::Root, old_n)},
            "root": {"generation": new_id.generation, "name": new_id.name(), "key": {"label": new_id.key_label(), "id": hex::encode(key_id), "token": old.record.root_token, "algorithm": "EC P-384", "sensitive": true, "protection": self.key_protection()}, "certificate": CertInfo::of(&new_root), "file": home.ca_cert(CaKind::Root)},
            "certified": made.iter().map(|m| json!({"what": m.what, "file": m.path, "certificate": CertInfo::of(&m.cert)})).collect::<Vec<_>>(),
            "previous_certificates_kept_in": kept,
            "links_withdrawn": withdrawn,
            "old_with_new": if recover { json!({"made": false, "why": "a recovery links nothing to the untrusted root"}) } else if compromised.is_empty() { json!({"made": true}) } else { json!({"made": false, "why": "issuing CA generations revoked for a compromise: meters check no CRL, so nothing may link the old root's certificates to the new root", "compromised": compromised}) },
            "apex_update": {"file": apex_path, "seq": apex_seq, "target": match target { ApexTarget::All => "all".to_string(), ApexTarget::HwType(o) => o.to_string() }, "signed_by": if recover { "the previous root's contingency key".to_string() } else { CertInfo::of(&old.cert).sha256_fingerprint }, "bytes": apex.len()},
        });

        // Staged in this order; each appears once the audit record is committed. The files the
        // rollover replaces are kept first: the old root as `ca/generations/root-<N>.pem`, the
        // old root's certificates of the issuing CAs and the audit signer (and earlier links)
        // under `ca/generations/root-<N>/`.
        for dir in [&links, &kept, &home.updates_dir()] {
            std::fs::create_dir_all(dir).map_err(io_at(format!("creating {}", dir.display())))?;
        }
        let mut files = vec![stage(&transcript_path, &json_text(&transcript)?)?];
        let copy = |from: &Path, to: PathBuf| -> Result<_, ServiceError> {
            let text = std::fs::read_to_string(from)
                .map_err(io_at(format!("reading {}", from.display())))?;
            stage(&to, &text)
        };
        files.push(copy(
            &home.ca_cert(CaKind::Root),
            home.ca_generation_cert(CaKind::Root, old_n),
        )?);
        for m in &made {
            if m.path.exists() {
                let name = m.path.file_name().map(PathBuf::from).unwrap_or_default();
                files.push(copy(&m.path, kept.join(name))?);
            }
        }
        for path in &withdrawn {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            files.push(copy(path, kept.join(name))?);
        }
        for m in &made {
            files.push(stage(&m.path, &certificate_to_pem(&m.cert)?)?);
        }
        files.push(stage(
            &home.ca_cert(CaKind::Root),
            &certificate_to_pem(&new_root)?,
        )?);
        files.push(stage(
            &contingency.record_path,
            &json_text(&contingency.record)?,
        )?);
        files.push(stage(&home.root_ceremony(), &json_text(&ceremony_record)?)?);
        files.push(
            crate::fsutil::StagedFile::write(&apex_path, &apex, 0o644)
                .map_err(io_at(format!("writing {}", apex_path.display())))?,
        );
        let records = made.iter().filter_map(|m| m.record.clone()).collect();
        let prepared = Prepared {
            event: signing.event().into(),
            transcript,
            transcript_path,
            files,
            txn: Txn::new()
                .with(Op::CommitIssued {
                    items: self.unrecorded_root_issued()?,
                    all_or_nothing: true,
                })
                .with(Op::RecordCertificates(records))
                .with(Op::Revoke {
                    serials: untrusted_links,
                    revocation: crate::model::Revocation {
                        reason: crate::model::Reason::CaCompromise,
                        revoked_at: crate::unix_now(),
                        invalidity_date: None,
                    },
                }),
        };
        let opened = OpenedRoot {
            id: new_id,
            record: ceremony_record,
            cert: new_root,
            signer: new_signer,
            _token: old._token.clone(),
        };
        Ok((prepared, opened, withdrawn))
    }
}
