//! `meterpki audit verify` and `meterpki audit list`.

use std::sync::Arc;

use anyhow::{Context, Result};
use ca_core::{
    certificate_from_pem, verify_certificate_signature, AuditLog, CaKind, SledStore, Store,
};

use crate::cmd::print_json;
use crate::ctx::Ctx;

pub fn verify(ctx: &Ctx) -> Result<()> {
    let home = &ctx.home;
    // The audit signer's key is trusted only through the root certificate.
    let key = if home.audit_cert().exists() {
        let root = certificate_from_pem(
            &std::fs::read_to_string(home.ca_cert(CaKind::Root))
                .with_context(|| format!("reading {}", home.ca_cert(CaKind::Root).display()))?,
        )?;
        let audit = certificate_from_pem(&std::fs::read_to_string(home.audit_cert())?)?;
        verify_certificate_signature(&audit, &root.tbs_certificate.subject_public_key_info)
            .context("the audit signer certificate is not signed by the root")?;
        Some(audit.tbs_certificate.subject_public_key_info)
    } else {
        None
    };
    let store: Arc<SledStore> = ctx.store()?;
    let log = AuditLog::new(home.audit_log(), Some(store as Arc<dyn Store>));
    let report = log.verify(key.as_ref())?;
    if ctx.json {
        print_json(&report)?;
    } else if report.ok {
        println!(
            "audit log intact: {} records, {} signed heads{}, head #{}",
            report.records,
            report.signed_heads,
            if key.is_some() {
                " verified with the root-certified audit key"
            } else {
                " (no audit key yet: signatures not checked)"
            },
            report.head.as_ref().map(|h| h.0).unwrap_or(0)
        );
    }
    if !report.ok {
        anyhow::bail!(
            "audit log {} is NOT intact: {}",
            home.audit_log().display(),
            report.problem.unwrap_or_default()
        );
    }
    Ok(())
}

pub fn list(ctx: &Ctx) -> Result<()> {
    let records = AuditLog::new(ctx.home.audit_log(), None).records()?;
    if ctx.json {
        return print_json(&records);
    }
    for r in records {
        println!("#{:<5} {}  {:<32} {}", r.seq, r.time, r.event, r.actor);
    }
    Ok(())
}
