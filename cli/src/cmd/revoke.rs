//! `meterpki revoke`.

use anyhow::{Context, Result};
use ca_core::service::{AdminAnswer, AdminRequest, RevokeWhich};
use ca_core::Reason;

use crate::args::RevokeArgs;
use crate::cmd::{parse_id, parse_serial, print_json};
use crate::ctx::Ctx;
use crate::errors::input;

pub(super) fn run(ctx: &Ctx, a: RevokeArgs) -> Result<()> {
    let reason = Reason::parse(&a.reason).map_err(|e| input(format!("--reason: {e}")))?;
    if a.no_publish && matches!(reason, Reason::KeyCompromise | Reason::CaCompromise) {
        return Err(input(format!(
            "--no-publish: a {} revocation is always published at once",
            reason.name()
        )));
    }
    let invalidity_date = match &a.invalidity_date {
        None => None,
        Some(d) => {
            let parsed =
                time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        input(format!(
                            "--invalidity-date {d:?}: not an RFC 3339 time ({e})"
                        ))
                    })?;
            if parsed.nanosecond() != 0 {
                return Err(input(format!(
                    "--invalidity-date {d:?}: a CRL keeps whole seconds only (RFC 5280 §5.3.2): give the time without fractional seconds"
                )));
            }
            let t = parsed.unix_timestamp();
            if t > time::OffsetDateTime::now_utc().unix_timestamp() {
                return Err(input(format!("--invalidity-date {d:?} is in the future")));
            }
            Some(t)
        }
    };
    let w = &a.which;
    let which = if !w.serial.is_empty() || w.serials_file.is_some() {
        let mut serials = Vec::new();
        for s in &w.serial {
            serials.push(hex::encode(parse_serial(s)?));
        }
        if let Some(f) = &w.serials_file {
            let file = std::fs::File::open(f)
                .map_err(|e| input(format!("--serials-file {}: {e}", f.display())))?;
            for line in ca_core::BoundedLines::new(std::io::BufReader::new(file)) {
                let (n, line) =
                    line.map_err(|e| input(format!("--serials-file {}: {e}", f.display())))?;
                let line = line.map_err(|why| {
                    input(format!("--serials-file {} line {n}: {why}", f.display()))
                })?;
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                serials.push(hex::encode(
                    parse_serial(line).with_context(|| format!("{} line {n}", f.display()))?,
                ));
            }
        }
        RevokeWhich::Serials {
            serials,
            file: w.serials_file.clone(),
        }
    } else if let Some(d) = &w.device_id {
        RevokeWhich::Device(parse_id("--device-id", d)?.to_string())
    } else {
        RevokeWhich::Supplier(
            parse_id("--supplier", w.supplier.as_deref().unwrap_or_default())?.to_string(),
        )
    };
    let answer = crate::remote::run(
        ctx,
        AdminRequest::Revoke {
            which,
            reason: reason.name().to_string(),
            invalidity_date,
            publish: !a.no_publish,
        },
    )?;
    let AdminAnswer::Revoked(out) = answer else {
        anyhow::bail!("the server answered another command");
    };
    if ctx.json {
        print_json(&out)?;
    } else {
        for r in out.results.iter().take(50) {
            println!(
                "{:<16} {}  {} {}  {}",
                r.status,
                r.serial,
                r.profile.as_deref().unwrap_or(""),
                r.subject.as_deref().unwrap_or(""),
                r.reason.as_deref().unwrap_or("")
            );
        }
        if out.results.len() > 50 {
            println!("... {} more", out.results.len() - 50);
        }
        println!(
            "{} revoked, {} already revoked, {} unknown",
            out.revoked, out.already_revoked, out.unknown
        );
        if !out.published.is_empty() {
            crate::cmd::crl::print_published(ctx, &out.published)?;
        } else if out.revoked > 0 {
            println!("Not published yet (--no-publish): run `meterpki crl publish` for relying parties to see it");
        }
    }
    if out.unknown > 0 {
        let unknown: Vec<&str> = out
            .results
            .iter()
            .filter(|r| r.status == "unknown")
            .take(5)
            .map(|r| r.serial.as_str())
            .collect();
        return Err(input(format!(
            "no certificate with serial {}",
            unknown.join(", ")
        )));
    }
    Ok(())
}
