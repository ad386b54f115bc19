//! `meterpki issue`: one certificate, or a batch from NDJSON.

use std::path::Path;

use anyhow::{Context, Result};
use ca_core::issue::RequestItem;
use ca_core::service::ItemResult;

use crate::args::IssueArgs;
use crate::cmd::churn::{self, Bar};
use crate::cmd::{pem, print_json, read_blob};
use crate::ctx::{operator, Ctx};
use crate::errors::input;

pub(super) fn run(ctx: &Ctx, a: IssueArgs) -> Result<()> {
    if let Some(batch) = &a.batch {
        let out = a
            .out
            .as_deref()
            .ok_or_else(|| input("--batch needs --out FILE for the results"))?;
        return run_batch(ctx, batch, out, a.chunk as usize, false);
    }
    let profile = a
        .profile
        .clone()
        .ok_or_else(|| input("give --profile (one certificate) or --batch FILE (many)"))?;
    let item = RequestItem {
        profile,
        device_id: a.device_id.clone(),
        entity_id: a.entity_id.clone(),
        name: a.name.clone(),
        csr: a
            .csr
            .as_deref()
            .map(|p| read_blob("--csr", p))
            .transpose()?,
        public_key: a
            .public_key
            .as_deref()
            .map(|p| read_blob("--public-key", p))
            .transpose()?,
        replace: a.replace,
        recertify: false,
    };
    if item.csr.is_none() && item.public_key.is_none() {
        return Err(input(
            "give --csr FILE (or --public-key FILE where the profile allows it)",
        ));
    }
    let o = ctx.service.issue_one(&operator(), item)?;
    let pem = pem(&o.record.der)?;
    if let Some(out) = &a.out {
        ca_core::write_atomic(out, pem.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if ctx.json {
        return print_json(&ItemResult::of(0, &Ok(o)));
    }
    eprintln!(
        "{} serial {} ({} for {}, {} bytes)",
        if o.existing {
            "already issued:"
        } else {
            "issued"
        },
        o.record.serial_hex(),
        o.record.profile,
        o.record.subject_id,
        o.record.der.len()
    );
    if a.out.is_none() {
        print!("{pem}");
    }
    Ok(())
}

/// A batch file (`issue --batch`), or a re-issuance campaign (`meter reissue`).
pub(super) fn run_batch(
    ctx: &Ctx,
    batch: &Path,
    out: &Path,
    chunk: usize,
    reissue: bool,
) -> Result<()> {
    let bar = Bar(churn::bar(
        ctx,
        || churn::count_lines(batch),
        "certificates",
    ));
    let summary = if reissue {
        ctx.service
            .reissue_file(&operator(), batch, out, chunk, &bar)
    } else {
        ctx.service.issue_file(&operator(), batch, out, chunk, &bar)
    };
    bar.finish();
    let summary = summary?;
    if ctx.json {
        print_json(&summary)?;
    } else {
        let by_code = if summary.rejected_by_code.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                summary
                    .rejected_by_code
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!(
            "{} items: {} issued, {} already issued, {} rejected{by_code} in {:.1} s ({:.0} certificates/s); results in {}",
            summary.items,
            summary.issued,
            summary.existing,
            summary.rejected,
            summary.seconds,
            summary.per_second,
            out.display()
        );
    }
    if summary
        .rejected_by_code
        .keys()
        .any(|c| c == "internal" || c == "hsm-unavailable")
    {
        anyhow::bail!(
            "some items failed inside meterpki or the HSM; see {}",
            out.display()
        );
    }
    if summary.rejected > 0 {
        return Err(input(format!(
            "{} of {} items were rejected; see {}",
            summary.rejected,
            summary.items,
            out.display()
        )));
    }
    Ok(())
}
