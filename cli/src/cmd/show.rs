//! `meterpki show`.

use anyhow::Result;
use ca_core::{CertRecord, Eui64, Store};
use serde_json::json;

use crate::args::ShowArgs;
use crate::cmd::print_json;
use crate::ctx::Ctx;
use crate::errors::input;

pub fn run(ctx: &Ctx, a: ShowArgs) -> Result<()> {
    let store = ctx.store()?;
    let records: Vec<CertRecord> = if let Some(s) = &a.serial {
        let serial = crate::cmd::revoke::parse_serial(s)?;
        let r = store
            .cert(&serial)?
            .ok_or_else(|| input(format!("no certificate with serial {s}")))?;
        vec![r]
    } else {
        let id: Eui64 = a
            .device_id
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| input(format!("--device-id: {e}")))?;
        let v = store.certs_of_subject(&id.to_string())?;
        if v.is_empty() {
            return Err(input(format!("no certificate for {id}")));
        }
        v
    };
    let rows: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let active = store
                .active_cert(&r.subject_id, &r.profile)
                .ok()
                .flatten()
                .map(|a| a.serial == r.serial)
                .unwrap_or(false);
            let revocation = store.revocation(&r.serial).ok().flatten();
            let status = match (&revocation, active) {
                (Some(rev), _) => format!("revoked ({})", rev.reason.name()),
                (None, true) => "active".to_string(),
                (None, false) => r
                    .replaced_by
                    .as_ref()
                    .map(|s| format!("replaced by {}", hex::encode(s)))
                    .unwrap_or_else(|| "inactive".into()),
            };
            json!({
                "serial": r.serial_hex(),
                "revocation": revocation.map(|rev| json!({"reason": rev.reason.name(), "revoked_at": rev.revoked_at, "invalidity_date": rev.invalidity_date})),
                "profile": r.profile,
                "issuer": r.issuer,
                "subject": r.subject_id,
                "shard": r.shard,
                "issued_at": time::OffsetDateTime::from_unix_timestamp(r.issued_at).ok().and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                "status": status,
                "bytes": r.der.len(),
                "certificate": der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &r.der).unwrap_or_default(),
            })
        })
        .collect();
    if ctx.json {
        return print_json(&rows);
    }
    for r in rows {
        println!(
            "serial {}  {}  {}  issuer {}  shard {}  issued {}  {}  ({} bytes)",
            r["serial"].as_str().unwrap_or(""),
            r["profile"].as_str().unwrap_or(""),
            r["subject"].as_str().unwrap_or(""),
            r["issuer"].as_str().unwrap_or(""),
            r["shard"],
            r["issued_at"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["bytes"]
        );
        print!("{}", r["certificate"].as_str().unwrap_or(""));
    }
    Ok(())
}
