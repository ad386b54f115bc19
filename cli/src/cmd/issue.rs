//! `meterpki issue`: one certificate, or a batch from NDJSON.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use base64::Engine as _;
use ca_core::issue::{
    AccountLimits, Engine, ErrorCode, IssueError, Outcome, RequestItem, SignedBatch,
};
use serde_json::json;

use crate::args::IssueArgs;
use crate::cmd::print_json;
use crate::ctx::{os_user, Ctx};
use crate::errors::{input, issue_error};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn run(ctx: &Ctx, a: IssueArgs) -> Result<()> {
    if let Some(batch) = &a.batch {
        let out = a
            .out
            .as_deref()
            .ok_or_else(|| input("--batch needs --out FILE for the results"))?;
        return run_batch(ctx, batch, out, a.chunk as usize);
    }
    let profile = a
        .profile
        .clone()
        .ok_or_else(|| input("give --profile (one certificate) or --batch FILE (many)"))?;
    let read = |p: &Path, what: &str| -> Result<String> {
        let bytes = std::fs::read(p).map_err(|e| input(format!("{what} {}: {e}", p.display())))?;
        // PEM stays text; DER becomes base64 for the request item.
        Ok(match String::from_utf8(bytes.clone()) {
            Ok(t) if t.contains("-----BEGIN") => t,
            _ => B64.encode(bytes),
        })
    };
    let item = RequestItem {
        profile,
        device_id: a.device_id.clone(),
        entity_id: a.entity_id.clone(),
        name: a.name.clone(),
        csr: a.csr.as_deref().map(|p| read(p, "--csr")).transpose()?,
        public_key: a
            .public_key
            .as_deref()
            .map(|p| read(p, "--public-key"))
            .transpose()?,
        replace: a.replace,
    };
    if item.csr.is_none() && item.public_key.is_none() {
        return Err(input(
            "give --csr FILE (or --public-key FILE where the profile allows it)",
        ));
    }
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let store = ctx.store()?;
    let engine = ctx.engine(&online, store.clone())?;
    let outcome = engine.issue(&item, &AccountLimits::default());
    let audit = ctx.audit(store);
    match outcome {
        Ok(o) => {
            audit.append(
                "certificate.issue",
                &os_user(),
                json!({"serial": o.record.serial_hex(), "profile": o.record.profile, "subject": o.record.subject_id, "existing": o.existing}),
            )?;
            let pem =
                der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &o.record.der)
                    .map_err(|e| anyhow::anyhow!("encoding PEM: {e}"))?;
            if let Some(out) = &a.out {
                ca_core::write_atomic(out, pem.as_bytes(), 0o644)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            if ctx.json {
                print_json(&result_json(0, None, &Ok(o)))?;
            } else {
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
            }
            Ok(())
        }
        Err(e) => {
            audit.append(
                "certificate.refused",
                &os_user(),
                json!({"profile": item.profile, "subject": item.device_id.or(item.entity_id), "code": e.code, "detail": e.detail}),
            )?;
            Err(issue_error(e))
        }
    }
}

fn result_json(
    index: usize,
    line: Option<usize>,
    r: &Result<Outcome, IssueError>,
) -> serde_json::Value {
    let mut v = match r {
        Ok(o) => json!({
            "index": index,
            "status": "issued",
            "serial": o.record.serial_hex(),
            "certificate": B64.encode(&o.record.der),
            "existing": o.existing,
        }),
        Err(e) => json!({
            "index": index,
            "status": "rejected",
            "error": {"code": e.code, "detail": e.detail},
        }),
    };
    if let Some(l) = line {
        v["line"] = json!(l);
    }
    v
}

/// Totals of a batch run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BatchSummary {
    pub items: usize,
    pub issued: usize,
    pub existing: usize,
    pub rejected: usize,
    pub rejected_by_code: std::collections::BTreeMap<String, usize>,
    pub seconds: f64,
    pub per_second: f64,
}

/// Runs an NDJSON batch file through the engine: chunk by chunk, each chunk stored and flushed
/// before its results are written (and fsynced), so every answered certificate is stored.
pub fn process_batch(
    engine: &Engine,
    input_path: &Path,
    out_path: &Path,
    chunk: usize,
    progress: bool,
) -> Result<BatchSummary> {
    if input_path.canonicalize().ok() == out_path.canonicalize().ok() && out_path.exists() {
        return Err(input("--out must not be the --batch file"));
    }
    let file = File::open(input_path)
        .map_err(|e| input(format!("--batch {}: {e}", input_path.display())))?;
    let total_lines = if progress {
        count_lines(input_path).unwrap_or(0)
    } else {
        0
    };
    let out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(out_path)
        .with_context(|| format!("--out {}", out_path.display()))?;
    let mut writer = BufWriter::new(out);
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(total_lines as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} certificates  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let start = Instant::now();
    let mut lines = BufReader::new(file).lines().enumerate();
    let mut index = 0usize;
    // Two stages: this thread parses and signs chunk k+1 while the committer stores chunk k,
    // flushes the store, and only then writes and fsyncs chunk k's results.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<(usize, usize)>, SignedBatch)>(1);
    let bar_ref = bar.as_ref();
    let committed: Result<BatchSummary> = std::thread::scope(|s| {
        let committer = s.spawn(move || -> Result<BatchSummary> {
            let mut summary = BatchSummary::default();
            for (meta, signed) in rx {
                let results = engine
                    .commit_signed(signed)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for ((i, line), r) in meta.iter().zip(&results) {
                    serde_json::to_writer(&mut writer, &result_json(*i, Some(*line), r))?;
                    writer.write_all(b"\n")?;
                    summary.items += 1;
                    match r {
                        Ok(o) if o.existing => summary.existing += 1,
                        Ok(_) => summary.issued += 1,
                        Err(e) => {
                            summary.rejected += 1;
                            *summary
                                .rejected_by_code
                                .entry(e.code.to_string())
                                .or_default() += 1;
                        }
                    }
                }
                writer.flush()?;
                writer.get_ref().sync_data()?;
                if let Some(b) = bar_ref {
                    b.inc(results.len() as u64);
                }
            }
            Ok(summary)
        });
        let produced = (|| -> Result<()> {
            loop {
                let mut items: Vec<Result<RequestItem, IssueError>> = Vec::with_capacity(chunk);
                let mut meta: Vec<(usize, usize)> = Vec::with_capacity(chunk);
                for (n, line) in lines.by_ref() {
                    let line = line.with_context(|| format!("reading {}", input_path.display()))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    items.push(serde_json::from_str::<RequestItem>(&line).map_err(|e| {
                        IssueError::new(ErrorCode::Json, format!("line {}: {e}", n + 1))
                    }));
                    meta.push((index, n + 1));
                    index += 1;
                    if items.len() == chunk {
                        break;
                    }
                }
                if items.is_empty() {
                    return Ok(());
                }
                let signed = engine
                    .sign_batch(&items, &AccountLimits::default())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if tx.send((meta, signed)).is_err() {
                    // The committer stopped on an error; it reports it below.
                    return Ok(());
                }
            }
        })();
        drop(tx);
        let summary = committer
            .join()
            .map_err(|_| anyhow::anyhow!("the committer thread panicked"))??;
        produced.map(|()| summary)
    });
    let mut summary = committed?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.seconds = start.elapsed().as_secs_f64();
    summary.per_second = (summary.issued + summary.existing) as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

fn count_lines(p: &Path) -> Result<usize> {
    Ok(BufReader::new(File::open(p)?)
        .lines()
        .filter(|l| l.as_ref().map(|l| !l.trim().is_empty()).unwrap_or(true))
        .count())
}

fn run_batch(ctx: &Ctx, batch: &Path, out: &Path, chunk: usize) -> Result<()> {
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let store = ctx.store()?;
    let engine = ctx.engine(&online, store.clone())?;
    let progress = std::io::stderr().is_terminal() && !ctx.json;
    let summary = process_batch(&engine, batch, out, chunk, progress)?;
    ctx.audit(store).append(
        "certificate.batch",
        &os_user(),
        json!({"file": batch, "results": out, "items": summary.items, "issued": summary.issued, "existing": summary.existing, "rejected": summary.rejected, "rejected_by_code": summary.rejected_by_code}),
    )?;
    if ctx.json {
        print_json(&summary)?;
    } else {
        println!(
            "{} items: {} issued, {} already issued, {} rejected{} in {:.1} s ({:.0} certificates/s); results in {}",
            summary.items,
            summary.issued,
            summary.existing,
            summary.rejected,
            if summary.rejected_by_code.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    summary.rejected_by_code.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
                )
            },
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
