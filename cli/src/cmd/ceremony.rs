//! `meterpki ceremony root` and `meterpki ceremony issuing-ca`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ca_core::{
    build_ca_certificate, build_self_signed_root, build_signer_certificate, certificate_from_pem,
    certificate_to_pem, combine_shares, fingerprint_sha256, split_secret,
    verify_certificate_signature, CaCertSpec, CaKind, CeremonyRecord, KeyAlgorithm, RootSecret,
    ShareFile, Signer,
};
use hsm_bridge::{HsmSigner, SecretString, Token};
use serde_json::json;

use crate::args::{IssuingArgs, IssuingKind, RootArgs};
use crate::cmd::{now_compact, now_rfc3339, print_json, random_hex};
use crate::ctx::{os_user, Ctx};
use crate::errors::input;

/// Label of the key that signs the audit chain head (on the online token).
pub const AUDIT_KEY_LABEL: &str = "meterpki-audit";

fn subject(ctx: &Ctx, kind: CaKind) -> String {
    ctx.config.ca.subject(kind)
}

pub fn root(ctx: &Ctx, a: RootArgs) -> Result<()> {
    let home = &ctx.home;
    if home.ca_cert(CaKind::Root).exists() || home.root_ceremony().exists() {
        return Err(input(format!(
            "{} already holds a root CA ({}); a second root ceremony changes nothing",
            home.root().display(),
            home.ca_cert(CaKind::Root).display()
        )));
    }
    let n = usize::from(a.officers);
    if a.quorum < 2 || a.quorum > a.officers {
        return Err(input(format!(
            "--quorum must be at least 2 and at most --officers ({}), got {}",
            a.officers, a.quorum
        )));
    }
    let names: Vec<String> = if a.officer_names.is_empty() {
        (1..=n).map(|i| format!("officer-{i}")).collect()
    } else {
        a.officer_names.clone()
    };
    if names.len() != n {
        return Err(input(format!(
            "--officer given {} times but --officers is {n}",
            names.len()
        )));
    }
    let unique: BTreeSet<&String> = names.iter().collect();
    if unique.len() != n {
        return Err(input("--officer names must be distinct"));
    }
    for name in &names {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.');
        if !ok {
            return Err(input(format!(
                "--officer {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (it names a file)"
            )));
        }
    }
    let shares_dir = crate::ctx::absolute(&a.shares_dir);
    let share_paths: Vec<PathBuf> = names
        .iter()
        .map(|n| shares_dir.join(format!("{n}.share")))
        .collect();
    if let Some(p) = share_paths.iter().find(|p| p.exists()) {
        return Err(input(format!(
            "{} already exists; a share file is never overwritten",
            p.display()
        )));
    }
    // The online token first: a wrong PIN fails here, before anything exists.
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let created_dir = create_private_dir(&shares_dir)?;
    let operator = a.operator.clone().unwrap_or_else(os_user);

    let tokens_before = softhsm_token_dirs(ctx);
    let secret = RootSecret::generate();
    let ceremony_id = random_hex(16);
    let root_label = ctx.config.hsm.root_token.clone();
    hsm.init_token(
        &root_label,
        &SecretString::from(secret.so_pin().to_string()),
        &SecretString::from(secret.user_pin().to_string()),
    )
    .map_err(|e| match e {
        hsm_bridge::HsmError::TokenExists { .. } => input(format!(
            "{e}: it belongs to an earlier or abandoned root ceremony. Remove it \
             (softhsm2-util --delete-token --token {root_label}) or configure another hsm.root_token"
        )),
        other => other.into(),
    })?;

    let made_audit_key = online.find_key(AUDIT_KEY_LABEL)?.is_none();
    let outcome = root_after_token(
        ctx,
        &a,
        &online,
        &secret,
        &ceremony_id,
        &names,
        &share_paths,
        &operator,
    );
    match outcome {
        Ok(summary) => {
            if ctx.json {
                print_json(&summary)?;
            } else {
                println!("Root ceremony {ceremony_id} complete.");
                println!(
                    "  root certificate  {}",
                    home.ca_cert(CaKind::Root).display()
                );
                println!(
                    "  SHA-256           {}",
                    summary["root"]["sha256_fingerprint"].as_str().unwrap_or("")
                );
                println!("  root key          {} on token {root_label} (EC P-384, sensitive, not extractable)", CaKind::Root.key_label());
                println!("  quorum            {} of {}", a.quorum, a.officers);
                for p in &share_paths {
                    println!("  share             {} (0600)", p.display());
                }
                println!(
                    "  transcript        {}",
                    summary["transcript"].as_str().unwrap_or("")
                );
                println!("Hand each officer their share file and remove it from this machine.");
            }
            Ok(())
        }
        Err(e) => {
            // Undo: no shares, no key, no root token left behind from a failed ceremony.
            for p in &share_paths {
                let _ = std::fs::remove_file(p);
            }
            if made_audit_key {
                let _ = online.destroy_key(AUDIT_KEY_LABEL);
            }
            remove_new_softhsm_tokens(ctx, &tokens_before);
            if created_dir {
                let _ = std::fs::remove_dir(&shares_dir);
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn root_after_token(
    ctx: &Ctx,
    a: &RootArgs,
    online: &Arc<Token>,
    secret: &RootSecret,
    ceremony_id: &str,
    names: &[String],
    share_paths: &[PathBuf],
    operator: &str,
) -> Result<serde_json::Value> {
    let home = &ctx.home;
    let hsm = online.hsm().clone();
    let root_label = ctx.config.hsm.root_token.clone();
    let root_token = hsm.open(
        &root_label,
        SecretString::from(secret.user_pin().to_string()),
        1,
    )?;
    let root_key = root_token.generate_ec_key(&CaKind::Root.key_label(), KeyAlgorithm::EcP384)?;
    let root_signer = root_token.signer(&CaKind::Root.key_label())?;
    let root_cert = build_self_signed_root(
        &root_signer,
        &CaCertSpec {
            subject: subject(ctx, CaKind::Root),
            validity_days: ctx.config.ca.root_validity_days,
            path_len: 1,
        },
    )?;

    // The audit signer: a P-256 key on the online token, certified by the root, so that
    // `audit verify` can trust head signatures through the root alone.
    let audit_key = match online.find_key(AUDIT_KEY_LABEL)? {
        Some(k) => k,
        None => online.generate_ec_key(AUDIT_KEY_LABEL, KeyAlgorithm::EcP256)?,
    };
    let audit_cert = build_signer_certificate(
        &root_signer,
        &root_cert,
        &audit_key.spki,
        &CaCertSpec {
            subject: format!(
                "CN={} Audit Signer,O={}",
                ctx.config.ca.organisation, ctx.config.ca.organisation
            ),
            validity_days: ctx.config.ca.issuing_validity_days,
            path_len: 0,
        },
    )?;

    let (shares, digests) = split_secret(secret, ceremony_id, a.quorum, names)?;
    for (share, path) in shares.iter().zip(share_paths) {
        ca_core::write_new_secret(path, share.to_text().as_bytes())
            .with_context(|| format!("writing share file {}", path.display()))?;
    }
    let record = CeremonyRecord {
        ceremony_id: ceremony_id.to_string(),
        created: now_rfc3339(),
        quorum: a.quorum,
        officers: a.officers,
        officer_names: names.to_vec(),
        share_digests: digests.clone(),
        secret_check: secret.check_value(ceremony_id),
        root_token: root_label.clone(),
        root_key_label: CaKind::Root.key_label(),
        root_key_id: hex::encode(&root_key.id),
        root_cert_sha256: fingerprint_sha256(&root_cert),
    };
    let root_pem = certificate_to_pem(&root_cert)?;
    ca_core::write_atomic(&home.ca_cert(CaKind::Root), root_pem.as_bytes(), 0o644)?;
    ca_core::write_atomic(
        &home.audit_cert(),
        certificate_to_pem(&audit_cert)?.as_bytes(),
        0o644,
    )?;
    let root_info = ca_core::CertInfo::of(&root_cert);
    let audit_info = ca_core::CertInfo::of(&audit_cert);
    let transcript_path = home
        .ceremonies_dir()
        .join(format!("{}-root.json", now_compact()));
    let transcript = json!({
        "ceremony": "root",
        "ceremony_id": ceremony_id,
        "operator": operator,
        "started_by_os_user": os_user(),
        "time": record.created,
        "quorum": a.quorum,
        "officers": names,
        "share_files": share_paths.iter().zip(&digests).map(|(p, d)| json!({"file": p, "sha256_of_share": d})).collect::<Vec<_>>(),
        "root_token": root_label,
        "root_key": {"label": CaKind::Root.key_label(), "id": hex::encode(&root_key.id), "algorithm": "EC P-384", "sensitive": true, "extractable": false},
        "root": root_info,
        "audit_key": {"label": AUDIT_KEY_LABEL, "id": hex::encode(&audit_key.id), "token": ctx.config.hsm.online_token},
        "audit_signer": audit_info,
    });
    ca_core::write_atomic(
        &transcript_path,
        serde_json::to_string_pretty(&transcript)?.as_bytes(),
        0o644,
    )?;
    // The ceremony record last: its presence is what marks the root ceremony as done.
    ca_core::write_atomic(
        &home.root_ceremony(),
        serde_json::to_string_pretty(&record)?.as_bytes(),
        0o644,
    )?;
    let store = ctx.store()?;
    let audit = ctx.audit(store.clone());
    audit.append("ceremony.root", operator, transcript.clone())?;
    let audit_signer = online.signer(AUDIT_KEY_LABEL)?;
    audit.sign_head(&audit_signer, AUDIT_KEY_LABEL, operator)?;
    store.flush()?;
    let mut summary = transcript;
    summary["transcript"] = json!(transcript_path);
    Ok(summary)
}

pub fn issuing(ctx: &Ctx, a: IssuingArgs) -> Result<()> {
    let home = &ctx.home;
    let kind = match a.kind {
        IssuingKind::Device => CaKind::Device,
        IssuingKind::Organisation => CaKind::Organisation,
        IssuingKind::Access => CaKind::Access,
    };
    let record_text = std::fs::read_to_string(home.root_ceremony()).map_err(|_| {
        input(format!(
            "no root ceremony in {} yet: run `meterpki ceremony root` first",
            home.root().display()
        ))
    })?;
    let record: CeremonyRecord = serde_json::from_str(&record_text)
        .with_context(|| format!("reading {}", home.root_ceremony().display()))?;
    // Every share is checked before anything else happens.
    let mut shares = Vec::new();
    for p in &a.shares {
        shares.push((p.clone(), ShareFile::read(p)?));
    }
    let secret = combine_shares(&record, &shares)?;
    drop(shares);
    if home.ca_cert(kind).exists() {
        return Err(input(format!(
            "the {kind} CA already exists ({}); nothing changed",
            home.ca_cert(kind).display()
        )));
    }
    let root_pem = std::fs::read_to_string(home.ca_cert(CaKind::Root))
        .with_context(|| format!("reading {}", home.ca_cert(CaKind::Root).display()))?;
    let root_cert = certificate_from_pem(&root_pem)?;
    if fingerprint_sha256(&root_cert) != record.root_cert_sha256 {
        anyhow::bail!(
            "{} is not the certificate made at root ceremony {}",
            home.ca_cert(CaKind::Root).display(),
            record.ceremony_id
        );
    }
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let root_token = hsm.open(
        &record.root_token,
        SecretString::from(secret.user_pin().to_string()),
        1,
    )?;
    drop(secret);
    let root_signer = root_token.signer(&record.root_key_label)?;
    // Refuse a root key that does not match root.pem, and a root.pem not signed by it.
    ca_core::check_key_matches(&root_signer, &root_cert, "root")?;
    verify_certificate_signature(&root_cert, root_signer.public_key())?;

    let label = kind.key_label();
    if online.find_key(&label)?.is_some() {
        // A key without its certificate is what an interrupted ceremony leaves behind.
        tracing::warn!(key = %label, "removing a key left by an interrupted ceremony");
        online.destroy_key(&label)?;
    }
    let operator = a.operator.clone().unwrap_or_else(os_user);
    let result = issuing_after_key(
        ctx,
        kind,
        &online,
        &root_signer,
        &root_cert,
        &record,
        &operator,
    );
    match result {
        Ok(summary) => {
            if ctx.json {
                print_json(&summary)?;
            } else {
                println!("{} CA created.", capitalise(kind.name()));
                println!("  certificate  {}", home.ca_cert(kind).display());
                println!(
                    "  SHA-256      {}",
                    summary["certificate"]["sha256_fingerprint"]
                        .as_str()
                        .unwrap_or("")
                );
                println!(
                    "  key          {label} on token {} (EC P-256, sensitive, not extractable)",
                    ctx.config.hsm.online_token
                );
                println!(
                    "  signed by    {} (quorum {} of {})",
                    root_cert.tbs_certificate.subject, record.quorum, record.officers
                );
                println!(
                    "  verify with  openssl verify -CAfile {} {}",
                    home.ca_cert(CaKind::Root).display(),
                    home.ca_cert(kind).display()
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = online.destroy_key(&label);
            let _ = std::fs::remove_file(home.ca_cert(kind));
            Err(e)
        }
    }
}

fn issuing_after_key(
    ctx: &Ctx,
    kind: CaKind,
    online: &Arc<Token>,
    root_signer: &HsmSigner,
    root_cert: &x509_cert::Certificate,
    record: &CeremonyRecord,
    operator: &str,
) -> Result<serde_json::Value> {
    let home = &ctx.home;
    let label = kind.key_label();
    let key = online.generate_ec_key(&label, KeyAlgorithm::EcP256)?;
    let cert = build_ca_certificate(
        root_signer,
        root_cert,
        &key.spki,
        &CaCertSpec {
            subject: subject(ctx, kind),
            validity_days: ctx.config.ca.issuing_validity_days,
            path_len: 0,
        },
    )?;
    // The issuing CA's own key must sign what its certificate says it does.
    let issuing_signer = online.signer(&label)?;
    ca_core::check_key_matches(&issuing_signer, &cert, kind.name())?;
    ca_core::write_atomic(
        &home.ca_cert(kind),
        certificate_to_pem(&cert)?.as_bytes(),
        0o644,
    )?;
    let info = ca_core::CertInfo::of(&cert);
    let transcript_path =
        home.ceremonies_dir()
            .join(format!("{}-{}-ca.json", now_compact(), kind.name()));
    let transcript = json!({
        "ceremony": format!("issuing-ca {}", kind.name()),
        "root_ceremony_id": record.ceremony_id,
        "operator": operator,
        "started_by_os_user": os_user(),
        "time": now_rfc3339(),
        "quorum": record.quorum,
        "key": {"label": label, "id": hex::encode(&key.id), "token": ctx.config.hsm.online_token, "algorithm": "EC P-256", "sensitive": true, "extractable": false},
        "certificate": info,
        "issuer_sha256": record.root_cert_sha256,
    });
    ca_core::write_atomic(
        &transcript_path,
        serde_json::to_string_pretty(&transcript)?.as_bytes(),
        0o644,
    )?;
    let store = ctx.store()?;
    let audit = ctx.audit(store.clone());
    audit.append(
        &format!("ceremony.issuing-ca.{}", kind.name()),
        operator,
        transcript.clone(),
    )?;
    let audit_signer = online.signer(AUDIT_KEY_LABEL)?;
    audit.sign_head(&audit_signer, AUDIT_KEY_LABEL, operator)?;
    store.flush()?;
    let mut summary = transcript;
    summary["transcript"] = json!(transcript_path);
    Ok(summary)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Creates `dir` 0700 when missing (returns whether it did) and proves it takes files.
fn create_private_dir(dir: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let created = !dir.exists();
    if created {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // Prove the directory takes files before the root token is created.
    let probe = dir.join(format!(".meterpki-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(created)
}

fn softhsm_token_dirs(ctx: &Ctx) -> BTreeSet<PathBuf> {
    if !ctx.config.hsm.softhsm {
        return BTreeSet::new();
    }
    std::fs::read_dir(ctx.home.softhsm_tokens())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// SoftHSM keeps each token in a directory of its own; a failed root ceremony removes the
/// token it created (PKCS#11 has no call to delete a token).
fn remove_new_softhsm_tokens(ctx: &Ctx, before: &BTreeSet<PathBuf>) {
    for p in softhsm_token_dirs(ctx).difference(before) {
        let _ = std::fs::remove_dir_all(p);
    }
}
