//! `meterpki status`.

use anyhow::Result;
use ca_core::{certificate_from_pem, AuditLog, CaKind, CeremonyRecord, CertInfo};
use serde_json::json;

use crate::cmd::print_json;
use crate::ctx::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let home = &ctx.home;
    let hsm = ctx.hsm()?;
    let tokens = hsm.tokens()?;
    let online = ctx.online(&hsm);
    let (online_objects, online_error) = match online
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|t| Ok(t.objects()?))
    {
        Ok(o) => (o, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let root_objects = if tokens.iter().any(|t| t.label == ctx.config.hsm.root_token) {
        hsm.public_objects(&ctx.config.hsm.root_token)?
    } else {
        Vec::new()
    };
    let mut cas = Vec::new();
    let mut mismatches: Vec<String> = Vec::new();
    for kind in [
        CaKind::Root,
        CaKind::Device,
        CaKind::Organisation,
        CaKind::Access,
    ] {
        let path = home.ca_cert(kind);
        let Ok(pem) = std::fs::read_to_string(&path) else {
            continue;
        };
        let cert = certificate_from_pem(&pem)?;
        let key_on_token = if kind == CaKind::Root {
            root_objects.iter().any(|o| o.label == kind.key_label())
        } else {
            online_objects
                .iter()
                .any(|o| o.label == kind.key_label() && o.class == "private-key")
        };
        // An issuing CA whose HSM key does not match its certificate is refused (and shown).
        let key_matches = match (&online, kind) {
            (_, CaKind::Root) => None,
            (Ok(token), _) if key_on_token => Some(match ctx.issuer(token, kind) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e:#}")),
            }),
            _ => None,
        };
        if let Some(Err(e)) = &key_matches {
            mismatches.push(e.clone());
        }
        cas.push(json!({
            "kind": kind.name(),
            "file": path,
            "key_label": kind.key_label(),
            "key_present": key_on_token,
            "key_matches_certificate": key_matches.as_ref().map(|r| r.is_ok()),
            "certificate": CertInfo::of(&cert),
        }));
    }
    let ceremony: Option<CeremonyRecord> = std::fs::read_to_string(home.root_ceremony())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let records = AuditLog::new(home.audit_log(), None).records()?;
    let certificates = ca_core::Store::cert_count(ctx.store()?.as_ref())?;
    let last = records.last();
    let status = json!({
        "home": home.root(),
        "module": ctx.config.hsm.module,
        "manufacturer": hsm.manufacturer().unwrap_or_default(),
        "tokens": tokens,
        "online_token": {"label": ctx.config.hsm.online_token, "objects": online_objects, "error": online_error},
        "root_token": {"label": ctx.config.hsm.root_token, "public_objects": root_objects},
        "root_ceremony": ceremony.as_ref().map(|c| json!({"id": c.ceremony_id, "quorum": c.quorum, "officers": c.officers, "time": c.created})),
        "cas": cas,
        "certificates": certificates,
        "audit": {"records": records.len(), "head_seq": last.map(|r| r.seq), "head_hash": last.map(|r| r.hash.clone()), "last_event": last.map(|r| r.event.clone())},
    });
    let result = if mismatches.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", mismatches.join("; ")))
    };
    if ctx.json {
        print_json(&status)?;
        return result;
    }
    println!("home    {}", home.root().display());
    println!(
        "module  {} ({})",
        ctx.config.hsm.module.display(),
        status["manufacturer"].as_str().unwrap_or("")
    );
    println!("\nTokens");
    for t in &tokens {
        println!(
            "  slot {:<12} {:<20} serial {}  {} {}",
            t.slot, t.label, t.serial, t.manufacturer, t.model
        );
    }
    println!("\nKeys on {} (online)", ctx.config.hsm.online_token);
    if let Some(e) = &online_error {
        println!("  (not listed: {e})");
    }
    for o in &online_objects {
        print_object(o);
    }
    if !root_objects.is_empty() {
        println!(
            "\nPublic objects on {} (root; private keys need a quorum)",
            ctx.config.hsm.root_token
        );
        for o in &root_objects {
            print_object(o);
        }
    }
    println!("\nCertification authorities");
    if cas.is_empty() {
        println!("  none yet: run `meterpki ceremony root`");
    }
    for c in &cas {
        let info = &c["certificate"];
        println!(
            "  {:<13} {}",
            c["kind"].as_str().unwrap_or(""),
            info["subject"].as_str().unwrap_or("")
        );
        println!(
            "                SHA-256 {}",
            info["sha256_fingerprint"].as_str().unwrap_or("")
        );
        println!(
            "                valid {} .. {}   key {} {}",
            info["not_before"].as_str().unwrap_or(""),
            info["not_after"].as_str().unwrap_or(""),
            c["key_label"].as_str().unwrap_or(""),
            match (
                c["key_present"].as_bool(),
                c["key_matches_certificate"].as_bool()
            ) {
                (Some(true), Some(false)) => "DOES NOT MATCH THE CERTIFICATE",
                (Some(true), _) => "present",
                _ => "NOT FOUND",
            }
        );
    }
    println!("\nCertificates issued: {certificates}");
    if let Some(c) = &ceremony {
        println!(
            "\nRoot ceremony {} at {}: quorum {} of {}",
            c.ceremony_id, c.created, c.quorum, c.officers
        );
    }
    println!(
        "\nAudit log: {} records, head {}",
        records.len(),
        last.map(|r| format!(
            "#{} {} ({})",
            r.seq,
            &r.hash[..16.min(r.hash.len())],
            r.event
        ))
        .unwrap_or_else(|| "none".into())
    );
    result
}

fn print_object(o: &hsm_bridge::ObjectSummary) {
    let flags = match (o.sensitive, o.extractable) {
        (Some(s), Some(e)) => format!("sensitive={s} extractable={e}"),
        _ => String::new(),
    };
    println!("  {:<12} {:<28} id {}  {}", o.class, o.label, o.id, flags);
}
