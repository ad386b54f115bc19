//! `meterpki revoke`.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use ca_core::{certificate_from_pem, CaKind, Eui64, Reason, Revocation, Revoked, Store};
use serde_json::json;
use sha2::Digest;

use crate::args::RevokeArgs;
use crate::cmd::print_json;
use crate::ctx::{os_user, Ctx};
use crate::errors::input;

/// A serial as typed by a user: hex, with or without `0x` and colons.
pub(crate) fn parse_serial(s: &str) -> Result<Vec<u8>> {
    let t = s.trim().trim_start_matches("0x").replace(':', "");
    let b = hex::decode(&t).map_err(|e| input(format!("serial {s:?} is not hex: {e}")))?;
    if b.is_empty() || b.len() > 20 {
        return Err(input(format!("serial {s:?}: 1 to 20 octets")));
    }
    Ok(b)
}

pub fn run(ctx: &Ctx, a: RevokeArgs) -> Result<()> {
    let reason = Reason::parse(&a.reason).map_err(|e| input(format!("--reason: {e}")))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let invalidity_date = match &a.invalidity_date {
        None => None,
        Some(d) => {
            let t = time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    input(format!(
                        "--invalidity-date {d:?}: not an RFC 3339 time ({e})"
                    ))
                })?
                .unix_timestamp();
            if t > now {
                return Err(input(format!("--invalidity-date {d:?} is in the future")));
            }
            Some(t)
        }
    };
    let store = ctx.store()?;
    // CA certificates are not in the end-entity store and are never revoked from here.
    let mut ca_serials = Vec::new();
    for kind in [
        CaKind::Root,
        CaKind::Device,
        CaKind::Organisation,
        CaKind::Access,
    ] {
        if let Ok(pem) = std::fs::read_to_string(ctx.home.ca_cert(kind)) {
            let cert = certificate_from_pem(&pem)?;
            ca_serials.push((kind, cert.tbs_certificate.serial_number.as_bytes().to_vec()));
        }
    }
    let w = &a.which;
    let (serials, selector): (Vec<Vec<u8>>, serde_json::Value) = if !w.serial.is_empty()
        || w.serials_file.is_some()
    {
        let mut list = Vec::new();
        for s in &w.serial {
            list.push(parse_serial(s)?);
        }
        if let Some(f) = &w.serials_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| input(format!("--serials-file {}: {e}", f.display())))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                list.push(
                    parse_serial(line)
                        .with_context(|| format!("{} line {}", f.display(), n + 1))?,
                );
            }
        }
        for s in &list {
            if let Some((kind, _)) = ca_serials.iter().find(|(_, c)| c == s) {
                return Err(input(format!(
                    "serial {} is the {kind} CA's own certificate: CA certificates are not revoked through `meterpki revoke`",
                    hex::encode(s)
                )));
            }
        }
        let sel = if list.len() <= 1000 {
            json!({"serials": list.iter().map(hex::encode).collect::<Vec<_>>()})
        } else {
            let mut sorted: Vec<&Vec<u8>> = list.iter().collect();
            sorted.sort();
            let mut h = sha2::Sha256::new();
            for s in sorted {
                h.update(s);
            }
            json!({"serial_count": list.len(), "serials_sha256": hex::encode(h.finalize()), "file": w.serials_file})
        };
        (list, sel)
    } else if let Some(d) = &w.device_id {
        let id: Eui64 = d.parse().map_err(|e| input(format!("--device-id: {e}")))?;
        let list = unrevoked(store.as_ref(), &id, "meter-")?;
        if list.is_empty() {
            return Err(input(format!("{id} has no unrevoked meter certificate")));
        }
        (list, json!({"device_id": id.to_string()}))
    } else {
        let id: Eui64 = w
            .supplier
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| input(format!("--supplier: {e}")))?;
        let list = unrevoked(store.as_ref(), &id, "supplier-")?;
        if list.is_empty() {
            return Err(input(format!("supplier {id} has no unrevoked certificate")));
        }
        (list, json!({"supplier": id.to_string()}))
    };
    let revocation = Revocation {
        reason,
        revoked_at: now,
        invalidity_date,
    };
    let outcomes = store.revoke(&serials, &revocation)?;
    let mut now_n = 0;
    let mut already = 0;
    let mut unknown = Vec::new();
    let mut shards: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut rows = Vec::new();
    for o in &outcomes {
        match o {
            Revoked::Now(r) => {
                now_n += 1;
                shards.insert((r.issuer.clone(), r.shard));
                rows.push(json!({"serial": r.serial_hex(), "status": "revoked", "profile": r.profile, "subject": r.subject_id, "reason": reason.name()}));
            }
            Revoked::Already(r, earlier) => {
                already += 1;
                rows.push(json!({"serial": r.serial_hex(), "status": "already-revoked", "profile": r.profile, "subject": r.subject_id, "reason": earlier.reason.name(), "revoked_at": earlier.revoked_at}));
            }
            Revoked::Unknown(s) => {
                unknown.push(hex::encode(s));
                rows.push(json!({"serial": hex::encode(s), "status": "unknown"}));
            }
        }
    }
    if now_n > 0 || already > 0 {
        let mut details = selector;
        details["reason"] = json!(reason.name());
        details["invalidity_date"] = json!(invalidity_date);
        details["revoked"] = json!(now_n);
        details["already_revoked"] = json!(already);
        details["unknown"] = json!(unknown.len());
        ctx.audit(store.clone())
            .append("certificate.revoke", &os_user(), details)?;
    }
    drop(store);
    let published = if a.publish && !shards.is_empty() {
        let hsm = ctx.hsm()?;
        let online = ctx.online(&hsm)?;
        let issuers = crate::cmd::crl::issuers(ctx, &online, None)?;
        crate::cmd::crl::publish_issuers(ctx, &online, &issuers, false, Some(&shards))?
    } else {
        Vec::new()
    };
    if ctx.json {
        print_json(
            &json!({"results": rows, "revoked": now_n, "already_revoked": already, "unknown": unknown.len(), "published": published}),
        )?;
    } else {
        for r in rows.iter().take(50) {
            println!(
                "{:<16} {}  {} {}  {}",
                r["status"].as_str().unwrap_or(""),
                r["serial"].as_str().unwrap_or(""),
                r["profile"].as_str().unwrap_or(""),
                r["subject"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
        if rows.len() > 50 {
            println!("... {} more", rows.len() - 50);
        }
        println!(
            "{now_n} revoked, {already} already revoked, {} unknown",
            unknown.len()
        );
        if !published.is_empty() {
            crate::cmd::crl::print_published(ctx, &published)?;
        } else if now_n > 0 {
            println!("Publish the CRLs for relying parties to see it: meterpki crl publish (or revoke with --publish)");
        }
    }
    if !unknown.is_empty() {
        return Err(input(format!(
            "no certificate with serial {}",
            unknown
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Serials of a subject's certificates of one family (`meter-` or `supplier-` profiles) that
/// are not revoked yet.
fn unrevoked(store: &dyn Store, id: &Eui64, family: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for r in store.certs_of_subject(&id.to_string())? {
        if r.profile.starts_with(family) && store.revocation(&r.serial)?.is_none() {
            out.push(r.serial);
        }
    }
    Ok(out)
}
