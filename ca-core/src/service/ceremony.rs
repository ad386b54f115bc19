//! Key ceremonies: the root (a new token whose PIN only a quorum of officers can rebuild) and
//! the issuing CAs (a quorum opens the root token to certify a key made on the online token).
//! A ceremony that fails leaves nothing behind: no share, no key, no token, no certificate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::arl::{OpenedRoot, AUDIT_SUBJECT_ID};
use super::error::io_at;
use super::identity::AUDIT_KEY_LABEL;
use super::{
    authorize, now_compact, now_rfc3339, random_hex, Action, Actor, Service, ServiceError,
};
use crate::audit::AuditEntry;
use crate::certs::{
    build_ca_certificate, build_self_signed_root, build_signer_certificate, certificate_to_pem,
    check_key_matches, fingerprint_sha256, CertInfo,
};
use crate::fsutil::{write_new_secret, StagedFile};
use crate::hsm::{HsmToken, SecretString};
use crate::quorum::{combine_shares, split_secret, CeremonyRecord, RootSecret, ShareFile};
use crate::signer::KeyAlgorithm;
use crate::store::{Op, Txn};
use crate::{CaKind, IssuerId};

/// What a root ceremony is asked for.
#[derive(Clone, Debug)]
pub struct RootCeremony {
    /// Officers N (one share each).
    pub officers: u8,
    /// Shares needed, M.
    pub quorum: u8,
    /// Officer names, in order (default officer-1 .. officer-N).
    pub officer_names: Vec<String>,
    /// Where the share files go (created 0700 when missing).
    pub shares_dir: PathBuf,
}

/// What an issuing-CA ceremony is asked for.
#[derive(Debug)]
pub struct IssuingCeremony {
    /// Which CA.
    pub kind: CaKind,
    /// Make the next generation of an existing CA (a new key and name); the current one keeps
    /// signing the CRLs of what it issued.
    pub renew: bool,
    /// The share files given.
    pub shares: Vec<PathBuf>,
}

pub(super) fn json_text(value: &impl serde::Serialize) -> Result<String, ServiceError> {
    serde_json::to_string_pretty(value).map_err(|e| ServiceError::Internal(e.to_string()))
}

/// A public file of the ceremony, written and synced under a temporary name: it appears only
/// once the ceremony's audit record is committed.
pub(super) fn stage(path: &Path, text: &str) -> Result<StagedFile, ServiceError> {
    StagedFile::write(path, text.as_bytes(), 0o600)
        .map_err(io_at(format!("writing {}", path.display())))
}

/// A ceremony done in the HSM, its files staged: what is left is its audit record, then its
/// files.
pub(super) struct Prepared {
    pub(super) event: String,
    pub(super) transcript: serde_json::Value,
    pub(super) transcript_path: PathBuf,
    pub(super) files: Vec<StagedFile>,
    /// The store's side of the ceremony (the certificates the root issued), written with its
    /// record.
    pub(super) txn: Txn,
}

/// Whether a ceremony's outcome is to be undone: it failed before its record was committed.
pub(super) fn undo(outcome: &Result<serde_json::Value, ServiceError>) -> bool {
    matches!(outcome, Err(e) if !matches!(e, ServiceError::Incomplete(_)))
}

impl Service {
    /// Commits the ceremony's audit record; until it is committed, a failure is the caller's to
    /// undo. After it the ceremony stands and is only finished: its files put in place (any
    /// that cannot be are reported, with where their content was kept, as
    /// [`ServiceError::Incomplete`], which is not undone) and the head signed.
    pub(super) fn record_ceremony(
        &self,
        actor: &Actor,
        p: Prepared,
    ) -> Result<serde_json::Value, ServiceError> {
        let entry = AuditEntry::new(p.event.clone(), actor.name(), p.transcript.clone());
        self.audit()?.commit(p.txn, |_| Some(entry))?;
        let mut missing = Vec::new();
        for f in p.files {
            let path = f.path().to_path_buf();
            match f.commit_or_keep() {
                Ok(()) => {}
                Err((e, Some(kept))) => missing.push(format!(
                    "{} ({e}; its content is in {}: move it there)",
                    path.display(),
                    kept.display()
                )),
                Err((e, None)) => missing.push(format!(
                    "{} (in place, but its directory could not be synced: {e})",
                    path.display()
                )),
            }
        }
        if !missing.is_empty() {
            return Err(ServiceError::Incomplete(format!(
                "the {} ceremony was made and recorded in the audit log, but not all its files are in place: {}",
                p.event,
                missing.join("; ")
            )));
        }
        let mut summary = p.transcript;
        summary["transcript"] = json!(p.transcript_path);
        Ok(summary)
    }
}

impl Service {
    /// Reads every share file and rebuilds the root PIN from them, checked against the root
    /// ceremony's record; a refused share is named.
    pub(super) fn check_shares(
        &self,
        record: &CeremonyRecord,
        paths: &[PathBuf],
    ) -> Result<RootSecret, ServiceError> {
        let mut shares = Vec::with_capacity(paths.len());
        for p in paths {
            shares.push((p.clone(), ShareFile::read(p)?));
        }
        Ok(combine_shares(record, &shares)?)
    }

    /// The root ceremony: the root token created with a random PIN split into N shares (M
    /// needed), the P-384 root key and its self-signed certificate, the audit signer certified
    /// by the root. Returns the transcript (also written to `ceremonies/`).
    pub fn root_ceremony(
        &self,
        actor: &Actor,
        c: &RootCeremony,
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        let home = &self.home;
        if self.has_ca(CaKind::Root) || home.root_ceremony().exists() {
            return Err(ServiceError::conflict(
                "root-exists",
                format!(
                    "{} already holds a root CA ({}); a second root ceremony changes nothing",
                    home.root().display(),
                    home.ca_cert(CaKind::Root).display()
                ),
            ));
        }
        let names = check_officers(c)?;
        let share_paths = new_share_paths(&c.shares_dir, &names)?;
        // The contingency key's shares: a quorum of their own, in a folder of their own, to be
        // kept apart from the root's (docs/lifecycle.md §4).
        let contingency_dir = c.shares_dir.join("contingency");
        let contingency_paths =
            super::contingency::contingency_share_paths(&contingency_dir, &names)?;
        // The online token first: a wrong PIN fails here, before anything exists.
        let online = self.online()?;
        let module = self.module()?;
        let created_dir = create_private_dir(&c.shares_dir)?;
        let secret = RootSecret::generate();
        let ceremony_id = random_hex(16);
        let root_label = self.config.hsm.root_token.clone();
        module
            .init_token(
                &root_label,
                &SecretString::from(secret.so_pin().to_string()),
                &SecretString::from(secret.user_pin().to_string()),
            )
            .map_err(|e| match e.kind {
                crate::hsm::HsmErrorKind::TokenExists => ServiceError::conflict(
                    "token-exists",
                    format!(
                        "{e}: it belongs to an earlier or abandoned root ceremony. Remove it \
                         (softhsm2-util --delete-token --token {root_label}) or configure another hsm.root_token"
                    ),
                ),
                _ => e.into(),
            })?;
        let made_audit_key = online.find_key(AUDIT_KEY_LABEL)?.is_none();
        let prepared = self.root_after_token(
            actor,
            c,
            &online,
            &secret,
            &ceremony_id,
            &names,
            &share_paths,
            &contingency_paths,
        );
        let outcome = prepared.and_then(|(p, root)| {
            let mut summary = self.record_ceremony(actor, p)?;
            summary["arl"] = self.arl_after_ceremony(actor, &root, "root")?;
            Ok(summary)
        });
        if undo(&outcome) {
            // Undo: no shares, no key, no root token left behind from a failed ceremony.
            for p in share_paths.iter().chain(&contingency_paths) {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_dir(&contingency_dir);
            if made_audit_key {
                let _ = online.destroy_key(AUDIT_KEY_LABEL);
            }
            let _ = module.discard_token(&root_label);
            if created_dir {
                let _ = std::fs::remove_dir(&c.shares_dir);
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn root_after_token(
        &self,
        actor: &Actor,
        c: &RootCeremony,
        online: &Arc<dyn HsmToken>,
        secret: &RootSecret,
        ceremony_id: &str,
        names: &[String],
        share_paths: &[PathBuf],
        contingency_paths: &[PathBuf],
    ) -> Result<(Prepared, OpenedRoot), ServiceError> {
        let home = &self.home;
        let root_label = self.config.hsm.root_token.clone();
        let root_token = self.module()?.open(
            &root_label,
            SecretString::from(secret.user_pin().to_string()),
            1,
        )?;
        // In a home with key backup the root key, too, can leave its token only wrapped under
        // the trusted key-backup key, in `ceremony replicate-root` (both quorums).
        let root_key = root_token.generate_key_as(
            &CaKind::Root.key_label(),
            KeyAlgorithm::EcP384,
            self.key_protection(),
        )?;
        let root_signer = root_token.signer(&CaKind::Root.key_label())?;
        let mut contingency = self.make_contingency(
            &root_token,
            IssuerId::first(CaKind::Root),
            c.quorum,
            names,
            contingency_paths,
        )?;
        let mut spec = self.ca_spec(CaKind::Root)?;
        spec.extra_extensions.push(contingency.extension.clone());
        let root_cert = build_self_signed_root(root_signer.as_ref(), &spec)?;
        contingency.record.root_cert_sha256 = fingerprint_sha256(&root_cert);
        // The audit signer: a P-256 key on the online token, certified by the root, so that
        // `audit verify` can trust head signatures through the root alone.
        let audit_key = match online.find_key(AUDIT_KEY_LABEL)? {
            Some(k) => k,
            None => online.generate_key_as(
                AUDIT_KEY_LABEL,
                KeyAlgorithm::EcP256,
                self.key_protection(),
            )?,
        };
        let audit_cert = build_signer_certificate(
            root_signer.as_ref(),
            &root_cert,
            &audit_key.spki,
            &self.audit_signer_spec()?,
        )?;
        let (shares, digests) = split_secret(secret, ceremony_id, c.quorum, names)?;
        for (share, path) in shares.iter().zip(share_paths) {
            write_new_secret(path, share.to_text().as_bytes())
                .map_err(io_at(format!("writing share file {}", path.display())))?;
        }
        let record = CeremonyRecord {
            ceremony_id: ceremony_id.to_string(),
            created: now_rfc3339(),
            quorum: c.quorum,
            officers: c.officers,
            officer_names: names.to_vec(),
            share_digests: digests.clone(),
            secret_check: secret.check_value(ceremony_id),
            root_token: root_label.clone(),
            root_key_label: CaKind::Root.key_label(),
            root_key_id: hex::encode(&root_key.id),
            root_cert_sha256: fingerprint_sha256(&root_cert),
        };
        let pem = |c: &x509_cert::Certificate| certificate_to_pem(c).map_err(ServiceError::from);
        let transcript_path = home
            .ceremonies_dir()
            .join(format!("{}-root.json", now_compact()));
        let transcript = json!({
            "ceremony": "root",
            "ceremony_id": ceremony_id,
            "operator": actor.name(),
            "started_by_os_user": Actor::local().name(),
            "time": record.created,
            "quorum": c.quorum,
            "officers": names,
            "share_files": share_paths.iter().zip(&digests).map(|(p, d)| json!({"file": p, "sha256_of_share": d})).collect::<Vec<_>>(),
            "root_token": root_label,
            "root_key": {"label": CaKind::Root.key_label(), "id": hex::encode(&root_key.id), "algorithm": "EC P-384", "sensitive": true, "protection": self.key_protection()},
            "root": CertInfo::of(&root_cert),
            "audit_key": {"label": AUDIT_KEY_LABEL, "id": hex::encode(&audit_key.id), "token": self.config.hsm.online_token},
            "audit_signer": CertInfo::of(&audit_cert),
            "contingency": {"key": {"label": contingency.label, "token": root_label, "algorithm": "EC P-384"}, "quorum": c.quorum, "share_files": contingency_paths, "record": contingency.record_path, "extension": "id-pe-wrappedApexContinKey (1.3.6.1.5.5.7.1.20), AES-256 key wrap with padding"},
        });
        // Every public file is staged; they appear once the ceremony's audit record is
        // committed, the ceremony record (which marks the root as made) last.
        let files = vec![
            stage(&home.ca_cert(CaKind::Root), &pem(&root_cert)?)?,
            stage(&home.audit_cert(), &pem(&audit_cert)?)?,
            stage(&transcript_path, &json_text(&transcript)?)?,
            stage(&contingency.record_path, &json_text(&contingency.record)?)?,
            stage(&home.root_ceremony(), &json_text(&record)?)?,
        ];
        let audit_record = Self::root_issued_record(
            IssuerId::first(CaKind::Root),
            AUDIT_SUBJECT_ID.into(),
            "audit-signer",
            &audit_cert,
        )?;
        let prepared = Prepared {
            event: "ceremony.root".into(),
            transcript,
            transcript_path,
            files,
            txn: Txn::new().with(Op::CommitIssued {
                items: vec![(audit_record, false)],
                all_or_nothing: true,
            }),
        };
        let opened = OpenedRoot {
            id: IssuerId::first(CaKind::Root),
            record,
            cert: root_cert,
            signer: root_signer,
            _token: root_token,
        };
        Ok((prepared, opened))
    }

    /// An issuing-CA ceremony: the shares rebuild the root token's PIN; a P-256 key is made on
    /// the online token and certified by the root. Returns the transcript.
    pub fn issuing_ca_ceremony(
        &self,
        actor: &Actor,
        c: IssuingCeremony,
    ) -> Result<serde_json::Value, ServiceError> {
        authorize(actor, Action::Administer)?;
        let home = &self.home;
        let kind = c.kind;
        if kind == CaKind::Root {
            return Err(ServiceError::invalid(
                "kind",
                "the root is not an issuing CA: a new root key is made by `meterpki ceremony root-rollover`",
            ));
        }
        if c.renew && !self.has_ca(kind) {
            return Err(ServiceError::invalid(
                "renew",
                format!(
                    "there is no {kind} CA to renew ({} missing): make it first with                      `meterpki ceremony issuing-ca --kind {kind}` (without --renew)",
                    home.ca_cert(kind).display()
                ),
            ));
        }
        // Every share is read and checked, and the root opened, before anything else happens.
        let root = self.open_root(actor, &c.shares)?;
        if c.renew {
            return self.renew_issuing_ca(actor, kind, &root);
        }
        if self.has_ca(kind) {
            return Err(ServiceError::conflict(
                "ca-exists",
                format!(
                    "the {kind} CA already exists ({}); nothing changed (to make its next \
                     generation, add --renew)",
                    home.ca_cert(kind).display()
                ),
            ));
        }
        // The store must not already record another certificate for this CA (its file was
        // lost): the ARL could not list the new one, nor revoke the old.
        if let Some(other) = self.store()?.active_cert(
            &IssuerId::first(kind).store_subject(),
            &format!("{}-ca", kind.name()),
        )? {
            return Err(ServiceError::conflict(
                "ca-exists",
                format!(
                    "the store records a {kind} CA certificate (serial {}) but {} is missing: put it back                      (`meterpki show --serial {}` prints it) rather than making a second {kind} CA",
                    other.serial_hex(),
                    home.ca_cert(kind).display(),
                    other.serial_hex()
                ),
            ));
        }
        let online = self.online()?;
        let label = kind.key_label();
        if online.find_key(&label)?.is_some() {
            // A key without its certificate is what an interrupted ceremony leaves behind.
            tracing::warn!(key = %label, "removing a key left by an interrupted ceremony");
            online.destroy_key(&label)?;
        }
        let prepared = self.issuing_after_key(actor, IssuerId::first(kind), &online, &root);
        let outcome = prepared.and_then(|p| {
            let mut summary = self.record_ceremony(actor, p)?;
            summary["arl"] = self.arl_after_ceremony(actor, &root, "issuing-ca")?;
            Ok(summary)
        });
        if undo(&outcome) {
            let _ = online.destroy_key(&label);
        }
        outcome
    }

    /// The key and certificate of generation `id` of an issuing CA, made and certified by the
    /// root; the transcript, the certificate file (and for a renewal the previous
    /// generation's, moved to `ca/generations/`) staged, the store's record ready.
    pub(super) fn issuing_after_key(
        &self,
        actor: &Actor,
        id: IssuerId,
        online: &Arc<dyn HsmToken>,
        root: &OpenedRoot,
    ) -> Result<Prepared, ServiceError> {
        let home = &self.home;
        let kind = id.kind;
        let record = &root.record;
        let label = id.key_label();
        let mut spec = self.ca_spec(kind)?;
        spec.subject = super::generations::generation_subject(&spec.subject, id.generation)?;
        let key = online.generate_key_as(&label, KeyAlgorithm::EcP256, self.key_protection())?;
        let cert = build_ca_certificate(root.signer.as_ref(), &root.cert, &key.spki, &spec)?;
        // The issuing CA's own key must sign what its certificate says it does.
        check_key_matches(online.signer(&label)?.as_ref(), &cert, &id.name())?;
        let transcript_path =
            home.ceremonies_dir()
                .join(format!("{}-{}-ca.json", now_compact(), id.name()));
        let previous = (id.generation > 1).then(|| IssuerId::new(kind, id.generation - 1));
        let transcript = json!({
            "ceremony": format!("issuing-ca {}{}", kind.name(), if previous.is_some() { " --renew" } else { "" }),
            "generation": id.generation,
            "name": id.name(),
            "previous": previous.map(|p| self.ca_cert(kind).map(|c| json!({"generation": p.generation, "certificate": CertInfo::of(&c), "file": home.ca_generation_cert(kind, p.generation)}))).transpose()?,
            "root_ceremony_id": record.ceremony_id,
            "operator": actor.name(),
            "started_by_os_user": Actor::local().name(),
            "time": now_rfc3339(),
            "quorum": record.quorum,
            "key": {"label": label, "id": hex::encode(&key.id), "token": self.config.hsm.online_token, "algorithm": "EC P-256", "sensitive": true, "protection": self.key_protection()},
            "certificate": CertInfo::of(&cert),
            "issuer_sha256": record.root_cert_sha256,
        });
        // The certificate file appears once the audit record is committed: its presence is
        // what makes the CA exist.
        let mut files = vec![stage(&transcript_path, &json_text(&transcript)?)?];
        if let Some(p) = previous {
            // The previous generation's certificate moves to `ca/generations/` before the new
            // one takes `ca/<kind>.pem`: it keeps signing the CRLs of what it issued.
            let dir = home.ca_generations_dir();
            std::fs::create_dir_all(&dir).map_err(io_at(format!("creating {}", dir.display())))?;
            let old = std::fs::read_to_string(home.ca_cert(kind))
                .map_err(io_at(format!("reading {}", home.ca_cert(kind).display())))?;
            files.push(stage(&home.ca_generation_cert(kind, p.generation), &old)?);
        }
        files.push(stage(&home.ca_cert(kind), &certificate_to_pem(&cert)?)?);
        // The new CA's certificate is recorded (so that the ARL can list it) with the
        // ceremony, together with any the root issued before the store kept them.
        let mut items = self.unrecorded_root_issued()?;
        items.push((
            Self::root_issued_record(
                root.id,
                id.store_subject(),
                &format!("{}-ca", kind.name()),
                &cert,
            )?,
            false,
        ));
        Ok(Prepared {
            event: if previous.is_some() {
                format!("ceremony.issuing-ca.{}.renew", kind.name())
            } else {
                format!("ceremony.issuing-ca.{}", kind.name())
            },
            transcript,
            transcript_path,
            files,
            txn: Txn::new().with(Op::CommitIssued {
                items,
                all_or_nothing: true,
            }),
        })
    }
}

/// The officers' names: given, or officer-1 .. officer-N; distinct; each names a file.
pub(super) fn check_officers(c: &RootCeremony) -> Result<Vec<String>, ServiceError> {
    let n = usize::from(c.officers);
    if c.quorum < 2 || c.quorum > c.officers {
        return Err(ServiceError::invalid(
            "quorum",
            format!(
                "--quorum must be at least 2 and at most --officers ({}), got {}",
                c.officers, c.quorum
            ),
        ));
    }
    let names: Vec<String> = if c.officer_names.is_empty() {
        (1..=n).map(|i| format!("officer-{i}")).collect()
    } else {
        c.officer_names.clone()
    };
    if names.len() != n {
        return Err(ServiceError::invalid(
            "officers",
            format!(
                "--officer given {} times but --officers is {n}",
                names.len()
            ),
        ));
    }
    if names.iter().collect::<BTreeSet<_>>().len() != n {
        return Err(ServiceError::invalid(
            "officers",
            "--officer names must be distinct",
        ));
    }
    for name in &names {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.');
        if !ok {
            return Err(ServiceError::invalid(
                "officers",
                format!(
                    "--officer {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (it names a file)"
                ),
            ));
        }
    }
    Ok(names)
}

/// The share file of each officer in `dir`, refused when one exists already.
pub(super) fn new_share_paths(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>, ServiceError> {
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(format!("{n}.share")))
        .collect();
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        return Err(ServiceError::conflict(
            "share-exists",
            format!(
                "{} already exists; a share file is never overwritten",
                p.display()
            ),
        ));
    }
    Ok(paths)
}

/// Creates `dir` 0700 when missing (returns whether it did) and proves it takes files.
pub(super) fn create_private_dir(dir: &Path) -> Result<bool, ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    let created = !dir.exists();
    if created {
        std::fs::create_dir_all(dir).map_err(io_at(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_at(format!("setting the mode of {}", dir.display())))?;
    }
    // Prove the directory takes files before the root token is created.
    let probe = dir.join(format!(".meterpki-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(io_at(format!("{} is not writable", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(created)
}
