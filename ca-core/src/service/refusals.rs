//! Refusals in the audit log (refused API requests, refused shares at ceremonies), without
//! letting whoever is refused flood it: per caller and kind at most one record a minute (the
//! next one says how many were left out), and at most [`PER_MINUTE`] refusal records a minute
//! in all.

use std::collections::HashMap;

use serde_json::json;

use super::Service;

/// Refusal records written per minute at most, over all callers.
const PER_MINUTE: u32 = 60;
/// Callers remembered at most (a flood of distinct callers is cut off by [`PER_MINUTE`]).
const CALLERS: usize = 10_000;

/// The limiter's state.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    minute: i64,
    written: u32,
    /// Per (event, caller): the minute of its last record, refusals left out since.
    callers: HashMap<(String, String), (i64, u64)>,
    /// Refusals left out because the minute's budget was spent.
    dropped: u64,
}

impl Service {
    /// Records a refusal as `event` by `who` with `details`, unless the limit says it is the
    /// same caller again within a minute (or the minute's budget is spent). A failure to write
    /// it is logged: the refusal itself stands either way.
    pub fn note_refusal(&self, event: &str, who: &str, mut details: serde_json::Value) {
        let minute = crate::unix_now() / 60;
        let (left_out, dropped) = {
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if r.minute != minute {
                r.minute = minute;
                r.written = 0;
            }
            if r.callers.len() >= CALLERS {
                r.callers.clear();
            }
            let key = (event.to_string(), who.to_string());
            let within_budget = r.written < PER_MINUTE;
            let entry = r.callers.entry(key).or_insert((i64::MIN, 0));
            if entry.0 == minute {
                entry.1 += 1;
                return;
            }
            if !within_budget {
                r.dropped += 1;
                return;
            }
            entry.0 = minute;
            let left_out = std::mem::take(&mut entry.1);
            r.written += 1;
            (left_out, std::mem::take(&mut r.dropped))
        };
        details["left_out_since_last"] = json!(left_out);
        if dropped > 0 {
            details["left_out_over_budget"] = json!(dropped);
        }
        let written = self
            .audit()
            .and_then(|a| a.append(event, who, details).map_err(Into::into));
        if let Err(e) = written {
            tracing::warn!(error = %e, event, who, "a refusal could not be recorded in the audit log");
        }
    }
}
