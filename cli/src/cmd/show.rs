//! `meterpki show`.

use anyhow::Result;
use ca_core::service::CertView;
use serde_json::json;

use crate::args::ShowArgs;
use crate::cmd::{parse_id, parse_serial, pem, print_json, rfc3339};
use crate::ctx::{operator, Ctx};
use crate::errors::input;

pub(super) fn run(ctx: &Ctx, a: ShowArgs) -> Result<()> {
    let views: Vec<CertView> = if let Some(s) = &a.serial {
        let serial = parse_serial(s)?;
        vec![ctx
            .service
            .certificate(&operator(), &serial)
            .map_err(|e| match e.class() {
                ca_core::service::ErrorClass::NotFound => {
                    input(format!("no certificate with serial {s}"))
                }
                _ => e.into(),
            })?]
    } else {
        let id = parse_id("--device-id", a.device_id.as_deref().unwrap_or_default())?;
        let v = ctx.service.certificates_of(&operator(), &id)?;
        if v.is_empty() {
            return Err(input(format!("no certificate for {id}")));
        }
        v
    };
    let mut rows = Vec::new();
    for v in &views {
        let r = &v.record;
        let status = match (&v.revocation, v.active) {
            (Some(rev), _) => format!("revoked ({})", rev.reason.name()),
            (None, true) => "active".to_string(),
            (None, false) => r
                .replaced_by
                .as_ref()
                .map(|s| format!("replaced by {}", hex::encode(s)))
                .unwrap_or_else(|| "inactive".into()),
        };
        rows.push(json!({
            "serial": r.serial_hex(),
            "revocation": v.revocation.map(|rev| json!({"reason": rev.reason.name(), "revoked_at": rev.revoked_at, "invalidity_date": rev.invalidity_date})),
            "profile": r.profile,
            "issuer": r.issuer,
            "issuer_generation": r.issuer_generation,
            "subject": r.subject_id,
            "shard": r.shard,
            "issued_at": rfc3339(r.issued_at),
            "status": status,
            "bytes": r.der.len(),
            "certificate": pem(&r.der)?,
        }));
    }
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
