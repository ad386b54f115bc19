//! What the churn commands share: where the updates go, progress bars, and the report.

use std::io::{BufReader, IsTerminal};
use std::path::Path;

use anyhow::Result;
use ca_core::churn::{DirSink, NdjsonSink, UpdateSink};
use ca_core::service::ChurnReport;

use crate::args::UpdatesOut;
use crate::cmd::print_json;
use crate::ctx::Ctx;
use crate::errors::input;

/// The sink named by `--updates-out` / `--updates-ndjson`, if any.
pub(super) fn sink(u: &UpdatesOut) -> Result<Option<Box<dyn UpdateSink>>> {
    if let Some(dir) = &u.updates_out {
        return Ok(Some(Box::new(DirSink::create(dir).map_err(|e| {
            input(format!("--updates-out {}: {e}", dir.display()))
        })?)));
    }
    if let Some(f) = &u.updates_ndjson {
        return Ok(Some(Box::new(NdjsonSink::open(f).map_err(|e| {
            input(format!("--updates-ndjson {}: {e}", f.display()))
        })?)));
    }
    Ok(None)
}

/// The sink, required.
pub(super) fn required_sink(u: &UpdatesOut) -> Result<Box<dyn UpdateSink>> {
    sink(u)?.ok_or_else(|| {
        input("give --updates-out DIR or --updates-ndjson FILE: this operation makes trust-anchor updates for the meters")
    })
}

/// A progress bar of `len` steps.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// A progress bar on a terminal, nothing otherwise. `len` is only computed when the bar is shown
/// (counting a bulk file's lines or an operation's meters is a pass over them).
pub(super) fn bar(
    ctx: &Ctx,
    len: impl FnOnce() -> u64,
    what: &str,
) -> Option<indicatif::ProgressBar> {
    if ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    Some(progress_bar(len(), what))
}

/// A progress bar (or nothing, off a terminal) as the service's progress report.
pub struct Bar(pub Option<indicatif::ProgressBar>);

impl ca_core::service::Progress for Bar {
    fn wants_total(&self) -> bool {
        self.0.is_some()
    }
    fn total(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }
    fn done(&self, done: u64) {
        if let Some(b) = &self.0 {
            b.set_position(done);
        }
    }
}

impl Bar {
    /// Removes the bar from the terminal.
    pub fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

/// Non-empty lines of a file (for a progress bar's length).
pub(super) fn count_lines(p: &Path) -> u64 {
    std::fs::File::open(p)
        .map(|f| {
            ca_core::BoundedLines::new(BufReader::new(f))
                .map_while(Result::ok)
                .filter(|(_, l)| l.as_ref().map(|l| !l.trim().is_empty()).unwrap_or(true))
                .count() as u64
        })
        .unwrap_or(0)
}

/// Prints what a journaled operation did; refused meters make it exit 2 (the operation stays
/// open: a re-run completes it).
pub(super) fn report(ctx: &Ctx, r: &ChurnReport) -> Result<()> {
    if ctx.json {
        print_json(r)?;
    } else if r.already_complete {
        println!(
            "{} of supplier {} to {} was already completed; nothing to do",
            r.kind, r.from, r.to
        );
    } else {
        println!(
            "{} {}: {} meter(s) updated in this run, updates in {}; operation {}",
            r.kind,
            r.operation,
            r.meters_updated,
            r.updates.as_deref().unwrap_or("-"),
            r.state
        );
        for x in r.refused.iter().take(100) {
            eprintln!(
                "  {}: {}",
                x["device_id"].as_str().unwrap_or(""),
                x["detail"].as_str().unwrap_or("")
            );
        }
    }
    if !r.refused.is_empty() {
        return Err(input(format!(
            "{} meter(s) could not be updated; the operation stays open: re-run the command to complete it",
            r.refused.len()
        )));
    }
    Ok(())
}
