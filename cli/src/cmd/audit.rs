//! `meterpki audit verify` and `meterpki audit list`.

use anyhow::Result;

use crate::cmd::print_json;
use crate::ctx::{operator, Ctx};

pub(super) fn verify(ctx: &Ctx) -> Result<()> {
    let (report, keyed) = ctx.service.verify_audit(&operator())?;
    if ctx.json {
        print_json(&report)?;
    } else if report.ok {
        println!(
            "audit log intact: {} records, {} signatures{}, head #{}{}",
            report.records,
            report.signed_heads,
            if keyed {
                " verified with the root-certified audit key"
            } else {
                " (no audit key yet: signatures not checked)"
            },
            report.head.as_ref().map(|h| h.0).unwrap_or(0),
            if report.uncommitted > 0 {
                format!(
                    "; {} record(s) after the store's head were never committed (a change interrupted by a crash) and go at the next write",
                    report.uncommitted
                )
            } else {
                String::new()
            }
        );
        if report.torn_tail_bytes > 0 {
            println!(
                "the log ends with {} bytes of a record cut by a crash before it was committed; the next write removes them",
                report.torn_tail_bytes
            );
        }
    }
    if !report.ok {
        anyhow::bail!(
            "audit log {} is NOT intact: {}",
            ctx.service.audit_location(),
            report.problem.unwrap_or_default()
        );
    }
    Ok(())
}

pub(super) fn list(ctx: &Ctx) -> Result<()> {
    let records = ctx.service.audit_records(&operator())?;
    if ctx.json {
        return print_json(&records);
    }
    for r in records {
        println!("#{:<5} {}  {:<32} {}", r.seq, r.time, r.event, r.actor);
    }
    Ok(())
}
