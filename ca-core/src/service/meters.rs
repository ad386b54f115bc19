//! Meters: first assignment to a supplier and change of supplier, one meter or a bulk file of
//! millions of lines, each change with its trust-anchor update; and a meter's current state.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::json;

use super::{authorize, now_compact, Action, Actor, Progress, Service, ServiceError};
use crate::churn::{Churn, ChurnError, Plan, UpdateSink};
use crate::model::Eui64;
use crate::store::UpdateMark;

/// Assignment or change of supplier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkMode {
    /// First assignment (updates optional).
    Assign,
    /// Change of supplier (updates required).
    Change,
}

impl BulkMode {
    /// `assign` or `change-supplier`.
    pub fn name(self) -> &'static str {
        match self {
            BulkMode::Assign => "assign",
            BulkMode::Change => "change-supplier",
        }
    }

    /// The supplier column of a bulk line.
    pub fn field(self) -> &'static str {
        match self {
            BulkMode::Assign => "supplier",
            BulkMode::Change => "to",
        }
    }
}

/// What a bulk run did.
#[derive(Default, Debug, Clone, Serialize)]
pub struct BulkSummary {
    /// Lines that named a meter.
    pub lines: u64,
    /// Meters assigned or changed.
    pub applied: u64,
    /// Meters already with that supplier.
    pub unchanged: u64,
    /// Lines refused.
    pub refused: u64,
    /// Wall time.
    pub seconds: f64,
    /// Meters applied per second.
    pub per_second: f64,
    /// The refusals: `{"line", "code", "detail"}`.
    pub errors: Vec<serde_json::Value>,
    /// The operation's name in the meters' update records.
    pub operation: String,
    /// Where the updates went.
    pub updates: Option<String>,
}

impl BulkSummary {
    fn refuse(&mut self, line: usize, code: &str, detail: String) {
        self.refused += 1;
        self.errors
            .push(json!({"line": line, "code": code, "detail": detail}));
    }
}

/// A meter's supplier and last update.
#[derive(Clone, Debug, Serialize)]
pub struct MeterView {
    /// The meter.
    pub device_id: String,
    /// Its supplier.
    pub supplier: Option<String>,
    /// Its last update.
    pub last_update: Option<UpdateMark>,
}

/// One line of a bulk file: `{"device_id": D, "supplier"|"to": S}` or `D,S` (a CSV header line
/// starting with `device_id` is skipped).
pub fn parse_bulk_line(mode: BulkMode, line: &str) -> Result<Option<(Eui64, Eui64)>, String> {
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
struct Pending<'a, 's> {
    churn: &'a Churn,
    op: &'a str,
    event: String,
    sink: Option<&'s mut dyn UpdateSink>,
    plans: Vec<Plan>,
    lines: Vec<usize>,
    /// The meters planned: a meter named again waits for the chunk that moves it first.
    devices: HashSet<Eui64>,
}

impl Pending<'_, '_> {
    /// Runs the pending chunk (signed, written, stored with its audit record) and counts its
    /// results.
    fn run(&mut self, summary: &mut BulkSummary) -> Result<(), ServiceError> {
        let sink: Option<&mut dyn UpdateSink> = match &mut self.sink {
            Some(s) => Some(&mut **s),
            None => None,
        };
        let results = self
            .churn
            .execute(&self.plans, self.op, &self.event, sink)?;
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

impl Service {
    /// Assigns meters or changes their supplier, line by line (`(line number, line)`; a line
    /// that cannot be read comes as its error), chunk by chunk: a line is planned against the
    /// store as it stands after the earlier chunks, and a meter named twice waits for the chunk
    /// that moves it first. Wrong lines are refused with their numbers; the rest is applied.
    /// `from_file` makes refusals name their line. `progress` gets the last line read.
    #[allow(clippy::too_many_arguments)]
    pub fn bulk_meters(
        &self,
        actor: &Actor,
        mode: BulkMode,
        lines: &mut dyn Iterator<Item = (usize, Result<String, String>)>,
        from_file: bool,
        chunk: usize,
        sink: Option<&mut dyn UpdateSink>,
        progress: &dyn Progress,
    ) -> Result<BulkSummary, ServiceError> {
        authorize(actor, Action::Administer)?;
        if mode == BulkMode::Change && sink.is_none() {
            return Err(ServiceError::invalid(
                "updates",
                "give --updates-out DIR or --updates-ndjson FILE: this operation makes trust-anchor updates for the meters",
            ));
        }
        let churn = self.churn(actor)?;
        let op = format!("{}:{}", mode.name(), now_compact());
        let start = std::time::Instant::now();
        let mut summary = BulkSummary {
            operation: op.clone(),
            updates: sink.as_ref().map(|s| s.location()),
            ..BulkSummary::default()
        };
        let mut pending = Pending {
            churn: &churn,
            op: &op,
            event: format!("meter.{}", mode.name()),
            sink,
            plans: Vec::with_capacity(chunk),
            lines: Vec::with_capacity(chunk),
            devices: HashSet::new(),
        };
        let at = |n: usize, detail: String| {
            if from_file {
                format!("line {n}: {detail}")
            } else {
                detail
            }
        };
        for (n, line) in lines {
            progress.done(n as u64);
            let parsed = match line.and_then(|l| parse_bulk_line(mode, &l)) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
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
                BulkMode::Assign => churn.plan_assign(&device, &to.to_string()),
                BulkMode::Change => churn.plan_change(&device, &to.to_string()).map(Some),
            };
            match planned {
                Ok(Some(p)) => {
                    pending.devices.insert(device);
                    pending.plans.push(p);
                    pending.lines.push(n);
                }
                Ok(None) => summary.unchanged += 1,
                Err(ChurnError::Refused { code, detail }) => summary.refuse(n, code, at(n, detail)),
                Err(e) => return Err(e.into()),
            }
            if pending.plans.len() >= chunk {
                pending.run(&mut summary)?;
            }
        }
        pending.run(&mut summary)?;
        summary.seconds = start.elapsed().as_secs_f64();
        summary.per_second = summary.applied as f64 / summary.seconds.max(1e-9);
        Ok(summary)
    }

    /// A meter's supplier and last update.
    pub fn meter(&self, actor: &Actor, device: &Eui64) -> Result<MeterView, ServiceError> {
        authorize(actor, Action::Administer)?;
        let store = self.store()?;
        let id = device.to_string();
        if !store.subject_known(&id)? {
            return Err(ServiceError::invalid(
                "unknown-meter",
                format!("--device-id: no meter certificate was ever issued to {id}"),
            ));
        }
        Ok(MeterView {
            supplier: store.meter_supplier(&id)?,
            last_update: store.meter_update(&id)?,
            device_id: id,
        })
    }
}
