//! `meterpki meter ...`: assignment and change of supplier, one meter or a bulk file.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use ca_core::churn::{Churn, ChurnError, Plan, UpdateSink};
use ca_core::{Eui64, Store};
use serde_json::json;

use crate::args::{MeterCommand, UpdatesOut};
use crate::cmd::churn::{bar, churn, churn_err, required_sink, sink};
use crate::cmd::print_json;
use crate::ctx::{os_user, Ctx};
use crate::errors::input;

pub fn run(ctx: &Ctx, cmd: MeterCommand) -> Result<()> {
    match cmd {
        MeterCommand::Assign {
            device_id,
            supplier,
            file,
            out,
        } => apply(
            ctx,
            Mode::Assign,
            device_id.zip(supplier),
            file.as_deref(),
            &out.updates,
            out.chunk as usize,
        ),
        MeterCommand::ChangeSupplier {
            device_id,
            to,
            file,
            out,
        } => apply(
            ctx,
            Mode::Change,
            device_id.zip(to),
            file.as_deref(),
            &out.updates,
            out.chunk as usize,
        ),
        MeterCommand::Show { device_id } => show(ctx, &device_id),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Assign,
    Change,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Assign => "assign",
            Mode::Change => "change-supplier",
        }
    }

    /// The supplier column of a bulk line.
    fn field(self) -> &'static str {
        match self {
            Mode::Assign => "supplier",
            Mode::Change => "to",
        }
    }
}

/// One line of a bulk file: `{"device_id": D, "supplier"|"to": S}` or `D,S` (a CSV header line
/// starting with `device_id` is skipped).
fn parse_line(mode: Mode, line: &str) -> Result<Option<(Eui64, Eui64)>, String> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let (d, s) = if t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        if let Some(k) = obj
            .keys()
            .find(|k| k.as_str() != "device_id" && k.as_str() != mode.field())
        {
            return Err(format!(
                "unknown field {k:?} (expected device_id and {})",
                mode.field()
            ));
        }
        let get = |k: &str| -> Result<String, String> {
            obj.get(k)
                .and_then(|v| v.as_str())
                .map(String::from)
                .ok_or_else(|| format!("{k}: missing or not a string"))
        };
        (get("device_id")?, get(mode.field())?)
    } else {
        let cols: Vec<&str> = t.split(',').map(str::trim).collect();
        if cols.first() == Some(&"device_id") {
            return Ok(None);
        }
        if cols.len() != 2 {
            return Err(format!(
                "expected 2 comma-separated columns (device_id,{}), got {}",
                mode.field(),
                cols.len()
            ));
        }
        (cols[0].to_string(), cols[1].to_string())
    };
    let d: Eui64 = d.parse().map_err(|e| format!("device_id: {e}"))?;
    let s: Eui64 = s.parse().map_err(|e| format!("{}: {e}", mode.field()))?;
    Ok(Some((d, s)))
}

/// Planned lines waiting to be run as one chunk, and where their updates go.
struct Pending<'a> {
    churn: &'a Churn,
    op: &'a str,
    sink: Option<Box<dyn UpdateSink>>,
    plans: Vec<Plan>,
    lines: Vec<usize>,
    /// The meters planned: a meter named again waits for the chunk that moves it first.
    devices: HashSet<Eui64>,
}

impl Pending<'_> {
    /// Runs the pending chunk (signed, written, stored) and counts its results.
    fn run(&mut self, summary: &mut Summary) -> Result<()> {
        let sink: Option<&mut dyn UpdateSink> = self.sink.as_deref_mut().map(|s| s as _);
        let results = self
            .churn
            .execute(&self.plans, self.op, sink)
            .map_err(churn_err)?;
        for (line, r) in self.lines.iter().zip(results) {
            match r {
                Ok(_) => summary.applied += 1,
                Err(e) => summary.refuse(*line, e.code().unwrap_or("internal"), e.to_string()),
            }
        }
        self.plans.clear();
        self.lines.clear();
        self.devices.clear();
        Ok(())
    }
}

#[derive(Default, serde::Serialize)]
struct Summary {
    lines: u64,
    applied: u64,
    unchanged: u64,
    refused: u64,
    seconds: f64,
    per_second: f64,
    #[serde(skip)]
    errors: Vec<serde_json::Value>,
}

impl Summary {
    fn refuse(&mut self, line: usize, code: &str, detail: String) {
        self.refused += 1;
        self.errors
            .push(json!({"line": line, "code": code, "detail": detail}));
    }
}

/// Plans and runs chunk by chunk: a line is planned against the store as it stands after the
/// earlier chunks, and a meter named twice waits for the chunk that moves it first.
fn apply(
    ctx: &Ctx,
    mode: Mode,
    one: Option<(String, String)>,
    file: Option<&Path>,
    updates: &UpdatesOut,
    chunk: usize,
) -> Result<()> {
    let sink: Option<Box<dyn UpdateSink>> = match mode {
        Mode::Assign => sink(updates)?,
        Mode::Change => Some(required_sink(updates)?),
    };
    let lines: Box<dyn Iterator<Item = (usize, Result<String, std::io::Error>)>> =
        match (&one, file) {
            (Some((d, s)), None) => Box::new(std::iter::once((1, Ok(format!("{d},{s}"))))),
            (None, Some(f)) => {
                let file =
                    File::open(f).map_err(|e| input(format!("--file {}: {e}", f.display())))?;
                Box::new(
                    BufReader::new(file)
                        .lines()
                        .enumerate()
                        .map(|(n, l)| (n + 1, l)),
                )
            }
            _ => {
                return Err(input(match mode {
                    Mode::Assign => "give --device-id and --supplier, or --file FILE",
                    Mode::Change => "give --device-id and --to, or --file FILE",
                }))
            }
        };
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let engine = ctx.engine(&online, ctx.store()?)?;
    let store = ctx.store()?;
    let churn: Churn = churn(ctx, &online, &engine)?;
    let op = format!("{}:{}", mode.name(), crate::cmd::now_compact());
    let bar = bar(
        ctx,
        || match file {
            Some(f) => File::open(f)
                .map(|f| BufReader::new(f).lines().count() as u64)
                .unwrap_or(0),
            None => 1,
        },
        "lines",
    );
    let start = std::time::Instant::now();
    let mut summary = Summary::default();
    let mut pending = Pending {
        churn: &churn,
        op: &op,
        sink,
        plans: Vec::with_capacity(chunk),
        lines: Vec::with_capacity(chunk),
        devices: HashSet::new(),
    };
    // A file's refusals name their line; a single meter's speak for themselves.
    let from_file = file.is_some();
    let at = |n: usize, detail: String| {
        if from_file {
            format!("line {n}: {detail}")
        } else {
            detail
        }
    };
    for (n, line) in lines {
        let line = line.with_context(|| format!("reading line {n}"))?;
        let parsed = match parse_line(mode, &line) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if let Some(b) = &bar {
                    b.inc(1);
                }
                continue;
            }
            Err(e) => {
                summary.lines += 1;
                summary.refuse(n, "bad-line", at(n, e));
                continue;
            }
        };
        summary.lines += 1;
        let (device, to) = parsed;
        if pending.devices.contains(&device) {
            pending.run(&mut summary)?;
        }
        let planned: Result<Option<Plan>, ChurnError> = match mode {
            Mode::Assign => churn.plan_assign(&device, &to.to_string()),
            Mode::Change => churn.plan_change(&device, &to.to_string()).map(Some),
        };
        match planned {
            Ok(Some(p)) => {
                pending.devices.insert(device);
                pending.plans.push(p);
                pending.lines.push(n);
            }
            Ok(None) => summary.unchanged += 1,
            Err(ChurnError::Refused { code, detail }) => summary.refuse(n, code, at(n, detail)),
            Err(e) => return Err(churn_err(e)),
        }
        if pending.plans.len() >= chunk {
            pending.run(&mut summary)?;
        }
        if let Some(b) = &bar {
            b.set_position(n as u64);
        }
    }
    pending.run(&mut summary)?;
    let sink = pending.sink;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.seconds = start.elapsed().as_secs_f64();
    summary.per_second = summary.applied as f64 / summary.seconds.max(1e-9);
    ctx.audit(store).append(
        &format!("meter.{}", mode.name()),
        &os_user(),
        json!({"operation": op, "file": file, "lines": summary.lines, "applied": summary.applied, "unchanged": summary.unchanged, "refused": summary.refused, "updates": sink.as_ref().map(|s| s.location())}),
    )?;
    let location = sink.as_ref().map(|s| s.location());
    if ctx.json {
        let mut v = serde_json::to_value(&summary)?;
        v["errors"] = json!(summary.errors);
        v["operation"] = json!(op);
        v["updates"] = json!(location);
        print_json(&v)?;
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
            if mode == Mode::Assign {
                "assigned"
            } else {
                "changed"
            },
            summary.unchanged,
            summary.refused,
            summary.seconds,
            location
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
    let device: Eui64 = device
        .parse()
        .map_err(|e| input(format!("--device-id: {e}")))?;
    let store = ctx.store()?;
    let id = device.to_string();
    if !store.subject_known(&id)? {
        return Err(input(format!(
            "--device-id: no meter certificate was ever issued to {id}"
        )));
    }
    let supplier = store.meter_supplier(&id)?;
    let update = store.meter_update(&id)?;
    if ctx.json {
        print_json(&json!({"device_id": id, "supplier": supplier, "last_update": update}))?;
    } else {
        println!(
            "{id}: supplier {}, last update {}",
            supplier.as_deref().unwrap_or("none"),
            update
                .map(|u| format!("seq {} ({})", u.seq, u.op))
                .unwrap_or_else(|| "none".into())
        );
    }
    Ok(())
}
