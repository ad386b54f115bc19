//! `meterpki meter ...`: assignment and change of supplier, one meter or a bulk file.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::Result;
use ca_core::churn::UpdateSink;
use ca_core::service::BulkMode;
use serde_json::json;

use crate::args::{ChurnOut, MeterCommand};
use crate::cmd::churn::{bar, count_lines, required_sink, sink, Bar};
use crate::cmd::{parse_id, print_json};
use crate::ctx::{operator, Ctx};
use crate::errors::input;

pub(super) fn run(ctx: &Ctx, cmd: MeterCommand) -> Result<()> {
    match cmd {
        MeterCommand::Assign {
            device_id,
            supplier,
            file,
            out,
        } => apply(
            ctx,
            BulkMode::Assign,
            device_id.zip(supplier),
            file.as_deref(),
            &out,
        ),
        MeterCommand::ChangeSupplier {
            device_id,
            to,
            file,
            out,
        } => apply(
            ctx,
            BulkMode::Change,
            device_id.zip(to),
            file.as_deref(),
            &out,
        ),
        MeterCommand::Reissue { file, out, chunk } => {
            super::issue::run_batch(ctx, &file, &out, chunk as usize, true)
        }
        MeterCommand::Show { device_id } => show(ctx, &device_id),
    }
}

fn apply(
    ctx: &Ctx,
    mode: BulkMode,
    one: Option<(String, String)>,
    file: Option<&Path>,
    out: &ChurnOut,
) -> Result<()> {
    let mut sink: Option<Box<dyn UpdateSink>> = match mode {
        BulkMode::Change => Some(required_sink(&out.updates)?),
        BulkMode::Assign => sink(&out.updates)?,
    };
    let mut lines: Box<dyn Iterator<Item = (usize, Result<String, String>)>> = match (&one, file) {
        (Some((d, s)), None) => Box::new(std::iter::once((1, Ok(format!("{d},{s}"))))),
        (None, Some(f)) => {
            let file = File::open(f).map_err(|e| input(format!("--file {}: {e}", f.display())))?;
            // Bounded lines: one bad line (not UTF-8, over 1 MiB) is refused as that line.
            // A read error ends the file as a refused line (the operation stays open: a re-run
            // completes it).
            let mut failed = false;
            Box::new(
                ca_core::BoundedLines::new(BufReader::new(file)).map_while(move |l| {
                    if failed {
                        return None;
                    }
                    Some(l.unwrap_or_else(|e| {
                        failed = true;
                        (0, Err(format!("the file could not be read further: {e}")))
                    }))
                }),
            )
        }
        _ => {
            return Err(input(match mode {
                BulkMode::Assign => "give --device-id and --supplier, or --file FILE",
                BulkMode::Change => "give --device-id and --to, or --file FILE",
            }))
        }
    };
    let bar = Bar(bar(ctx, || file.map(count_lines).unwrap_or(1), "lines"));
    let summary = ctx.service.bulk_meters(
        &operator(),
        mode,
        &mut lines,
        file.is_some(),
        out.chunk as usize,
        sink.as_mut().map(|s| &mut **s as &mut dyn UpdateSink),
        &bar,
    )?;
    bar.finish();
    if ctx.json {
        print_json(&summary)?;
    } else {
        for e in summary.errors.iter().take(100) {
            eprintln!("{}", e["detail"].as_str().unwrap_or(""));
        }
        if summary.errors.len() > 100 {
            eprintln!(
                "... {} more (--json lists them all)",
                summary.errors.len() - 100
            );
        }
        println!(
            "{} line(s): {} {}, {} unchanged, {} refused in {:.1} s{}",
            summary.lines,
            summary.applied,
            if mode == BulkMode::Assign {
                "assigned"
            } else {
                "changed"
            },
            summary.unchanged,
            summary.refused,
            summary.seconds,
            summary
                .updates
                .as_ref()
                .map(|l| format!("; updates in {l}"))
                .unwrap_or_default()
        );
    }
    if summary.refused > 0 {
        return Err(input(format!(
            "{} of {} line(s) refused (the rest applied)",
            summary.refused, summary.lines
        )));
    }
    Ok(())
}

fn show(ctx: &Ctx, device: &str) -> Result<()> {
    let device = parse_id("--device-id", device)?;
    let m = ctx.service.meter(&operator(), &device)?;
    if ctx.json {
        return print_json(
            &json!({"device_id": m.device_id, "supplier": m.supplier, "last_update": m.last_update}),
        );
    }
    println!(
        "{}: supplier {}, last update {}",
        m.device_id,
        m.supplier.as_deref().unwrap_or("none"),
        m.last_update
            .map(|u| format!("seq {} ({})", u.seq, u.op))
            .unwrap_or_else(|| "none".into())
    );
    Ok(())
}
