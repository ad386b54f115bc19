//! `meterpki status`.

use anyhow::Result;
use ca_core::hsm::ObjectSummary;

use crate::cmd::print_json;
use crate::ctx::{operator, Ctx};

pub(super) fn run(ctx: &Ctx) -> Result<()> {
    let st = ctx.service.status(&operator())?;
    let mut problems = st.mismatches.clone();
    problems.extend(st.store_problems.iter().cloned());
    let result = if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", problems.join("; ")))
    };
    if ctx.json {
        print_json(&st)?;
        return result;
    }
    let config = ctx.config();
    println!("home    {}", st.home.display());
    println!("module  {} ({})", st.module.display(), st.manufacturer);
    println!("\nTokens");
    for t in &st.tokens {
        println!(
            "  slot {:<12} {:<20} serial {}  {} {}",
            t.slot, t.label, t.serial, t.manufacturer, t.model
        );
    }
    println!("\nKeys on {} (online)", config.hsm.online_token);
    if let Some(e) = &st.online_error {
        println!("  (not listed: {e})");
    }
    for o in &st.online_objects {
        print_object(o);
    }
    if !st.online_tokens.is_empty() {
        println!("\nTokens holding the online keys ([[hsm.tokens]])");
        for t in &st.online_tokens {
            if let Some(e) = t["error"].as_str() {
                println!("  {}: {e}", t["label"].as_str().unwrap_or_default());
                continue;
            }
            let keys = t["keys"].as_array().cloned().unwrap_or_default();
            let bad: Vec<String> = keys
                .iter()
                .filter(|k| k["same_as_online_token"] != true)
                .map(|k| {
                    let why = if k["present"] == true {
                        "a different key"
                    } else {
                        "missing"
                    };
                    format!("{} ({why})", k["label"].as_str().unwrap_or_default())
                })
                .collect();
            if bad.is_empty() {
                println!(
                    "  {:<20} all {} online keys, the same as the online token's",
                    t["label"].as_str().unwrap_or_default(),
                    keys.len()
                );
            } else {
                println!(
                    "  {:<20} NOT USABLE: {}",
                    t["label"].as_str().unwrap_or_default(),
                    bad.join(", ")
                );
            }
        }
    }
    if !st.root_objects.is_empty() {
        println!(
            "\nPublic objects on {} (root; private keys need a quorum)",
            config.hsm.root_token
        );
        for o in &st.root_objects {
            print_object(o);
        }
    }
    println!("\nCertification authorities");
    if st.cas.is_empty() {
        println!("  none yet: run `meterpki ceremony root`");
    }
    for c in &st.cas {
        let info = &c["certificate"];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        println!("  {:<13} {}", s(&c["kind"]), s(&info["subject"]));
        println!("                SHA-256 {}", s(&info["sha256_fingerprint"]));
        println!(
            "                valid {} .. {}   key {} {}",
            s(&info["not_before"]),
            s(&info["not_after"]),
            s(&c["key_label"]),
            match (
                c["key_present"].as_bool(),
                c["key_matches_certificate"].as_bool()
            ) {
                (Some(true), Some(false)) => "DOES NOT MATCH THE CERTIFICATE",
                (Some(true), _) => "present",
                _ => "NOT FOUND",
            }
        );
        if let Some(r) = c.get("revoked") {
            println!(
                "                REVOKED by the root ({}): it signs nothing more",
                s(&r["reason"])
            );
        }
    }
    println!("\nCertificates issued: {}", st.certificates);
    print_crls(&st.crls);
    if !st.warnings.is_empty() {
        println!("\nWarnings");
        for w in &st.warnings {
            println!("  ! {w}");
        }
    }
    if let Some(c) = &st.ceremony {
        println!(
            "\nRoot ceremony {} at {}: quorum {} of {}",
            c.ceremony_id, c.created, c.quorum, c.officers
        );
    }
    println!(
        "\nAudit log: {} records, head {}",
        st.records,
        st.last_record
            .as_ref()
            .map(|r| format!(
                "#{} {} ({})",
                r.seq,
                &r.hash[..16.min(r.hash.len())],
                r.event
            ))
            .unwrap_or_else(|| "none".into())
    );
    result
}

fn print_object(o: &ObjectSummary) {
    let mut flags = match (o.sensitive, o.extractable) {
        (Some(s), Some(e)) => format!("sensitive={s} extractable={e}"),
        _ => String::new(),
    };
    if o.wrap_with_trusted == Some(true) {
        flags.push_str(" (only wrapped under a trusted key)");
    }
    if o.trusted == Some(true) {
        flags.push_str(" trusted (the key-backup key)");
    }
    println!("  {:<12} {:<28} id {}  {}", o.class, o.label, o.id, flags);
}

/// Each issuer's CRLs in one line (count, cRLNumbers, entries, the earliest nextUpdate), and
/// the ARL and full CRLs on their own.
fn print_crls(crls: &[ca_core::service::CrlStatus]) {
    if crls.is_empty() {
        return;
    }
    let when = |t: Option<i64>| {
        t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into())
    };
    println!("\nCRLs (cRLNumber, entries, nextUpdate)");
    let mut issuers: Vec<&str> = crls.iter().map(|c| c.issuer.as_str()).collect();
    issuers.dedup();
    for issuer in issuers {
        let (shards, single): (Vec<_>, Vec<_>) = crls
            .iter()
            .filter(|c| c.issuer == issuer)
            .partition(|c| c.file.trim_end_matches(".crl").parse::<u64>().is_ok());
        for c in single {
            println!(
                "  {:<13} {:<10} #{:<12} {:>7} entries  next {}",
                issuer,
                c.file,
                c.facts.crl_number,
                c.facts.entries,
                when(c.facts.next_update)
            );
        }
        if !shards.is_empty() {
            let lo = shards.iter().map(|c| c.facts.crl_number).min().unwrap_or(0);
            let hi = shards.iter().map(|c| c.facts.crl_number).max().unwrap_or(0);
            let entries: usize = shards.iter().map(|c| c.facts.entries).sum();
            let next = shards.iter().filter_map(|c| c.facts.next_update).min();
            println!(
                "  {:<13} {:<10} #{:<12} {:>7} entries  next {} (earliest)",
                issuer,
                format!("{} shards", shards.len()),
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}..{hi}")
                },
                entries,
                when(next)
            );
        }
    }
}
