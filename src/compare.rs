//! `fleetwatch compare A B [--labels L | --points P [--telemetry T]]`: two runs' alerts side by side — a run
//! and its shadow variant (`run --shadow`), or any two runs over the same records.
//!
//! An *alert* is one raise of a (customer, feature) — or of a customer (`"level":"customer"`, feature `*`) —
//! from its `raised` change to its `cleared` change (or the end of the run): the epochs `[start, end)`. Two
//! alerts of the two runs are the same alert when they are on the same customer, feature and level and their
//! epochs overlap (a variant that raises one epoch later, or clears earlier, raised the same alert). Per
//! group (all, each kind, each feature):
//!
//! * `a`, `b`: the alerts each run raised (an alert counts under the kind it was raised with);
//! * `both`: A's alerts that B also raised; `only_a = a − both`;
//! * `only_b`: B's alerts that A did not raise;
//! * `median_start_difference`: over the alerts in both, the median of B's raise epoch minus A's (negative:
//!   B raises earlier).
//!
//! With labels, each run's figures from `fleetwatch eval` beside them: the generator's labels (`--labels`,
//! event scoring) or customer-level point labels (`--points`, real telemetry).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::eval::EvalError;
use crate::pointeval::{RunOutput, Status};

/// One alert of a run: a raise and the epochs it stayed open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub customer: String,
    /// The feature's name, `*` for a customer-level alert.
    pub feature: String,
    pub customer_level: bool,
    /// The kind it was raised with.
    pub kind: String,
    pub start: u64,
    /// The epoch it cleared (exclusive), `u64::MAX` if still open at the end.
    pub end: u64,
}

impl Alert {
    fn overlaps(&self, other: &Alert) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// The alerts of a run's changes, in the order they were raised.
pub fn alerts(run: &RunOutput) -> Vec<Alert> {
    let mut out: Vec<Alert> = Vec::new();
    let mut open: HashMap<(&str, &str, bool), usize> = HashMap::new();
    for c in &run.changes {
        let key = (c.customer.as_str(), c.feature.as_str(), c.customer_level);
        match c.status {
            Status::Raised => {
                // (A raise of an alert still open would be a malformed output: the open one ends there.)
                if let Some(i) = open.insert(key, out.len()) {
                    out[i].end = out[i].end.min(c.epoch);
                }
                out.push(Alert {
                    customer: c.customer.clone(),
                    feature: c.feature.clone(),
                    customer_level: c.customer_level,
                    kind: c.kind.clone(),
                    start: c.epoch,
                    end: u64::MAX,
                });
            }
            Status::Updated => {}
            Status::Cleared => {
                if let Some(i) = open.remove(&key) {
                    out[i].end = c.epoch;
                }
            }
        }
    }
    out
}

/// Alerts of the two runs in one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub a: u64,
    pub b: u64,
    pub both: u64,
    pub only_a: u64,
    pub only_b: u64,
    pub median_start_difference: Option<f64>,
}

/// The result of `fleetwatch compare` (printed as one JSON object).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompareReport {
    pub a: String,
    pub b: String,
    /// Epochs closed (summary lines) in each output: they should be equal (the same records).
    pub epochs_a: u64,
    pub epochs_b: u64,
    pub series_scored_a: u64,
    pub series_scored_b: u64,
    pub total: Counts,
    pub by_kind: BTreeMap<String, Counts>,
    pub by_feature: BTreeMap<String, Counts>,
    /// Each run's `fleetwatch eval` figures, with `--labels` or `--points`.
    pub eval_a: Option<serde_json::Value>,
    pub eval_b: Option<serde_json::Value>,
}

#[derive(Default)]
struct Tally {
    counts: Counts,
    /// B's raise epoch minus A's, per alert in both.
    differences: Vec<f64>,
}

/// Compares two runs' alerts (see the module documentation).
pub fn compare(a: &RunOutput, b: &RunOutput) -> CompareReport {
    let (alerts_a, alerts_b) = (alerts(a), alerts(b));
    // B's alerts by (customer, feature, level), in raise order.
    let mut by_key: HashMap<(&str, &str, bool), Vec<usize>> = HashMap::new();
    for (i, x) in alerts_b.iter().enumerate() {
        by_key
            .entry((x.customer.as_str(), x.feature.as_str(), x.customer_level))
            .or_default()
            .push(i);
    }
    let mut matched_b = vec![false; alerts_b.len()];
    let mut total = Tally::default();
    let mut kinds: BTreeMap<String, Tally> = BTreeMap::new();
    let mut features: BTreeMap<String, Tally> = BTreeMap::new();
    for x in &alerts_a {
        let key = (x.customer.as_str(), x.feature.as_str(), x.customer_level);
        let mut first: Option<usize> = None;
        for &j in by_key.get(&key).map(Vec::as_slice).unwrap_or(&[]) {
            if x.overlaps(&alerts_b[j]) {
                matched_b[j] = true;
                first = first.or(Some(j));
            }
        }
        for t in [
            &mut total,
            kinds.entry(x.kind.clone()).or_default(),
            features.entry(x.feature.clone()).or_default(),
        ] {
            t.counts.a += 1;
            match first {
                Some(j) => {
                    t.counts.both += 1;
                    t.differences
                        .push(alerts_b[j].start as f64 - x.start as f64);
                }
                None => t.counts.only_a += 1,
            }
        }
    }
    for (x, matched) in alerts_b.iter().zip(&matched_b) {
        for t in [
            &mut total,
            kinds.entry(x.kind.clone()).or_default(),
            features.entry(x.feature.clone()).or_default(),
        ] {
            t.counts.b += 1;
            if !matched {
                t.counts.only_b += 1;
            }
        }
    }
    let finish = |mut t: Tally| {
        t.counts.median_start_difference = crate::eval::median(t.differences);
        t.counts
    };
    CompareReport {
        epochs_a: a.epochs,
        epochs_b: b.epochs,
        series_scored_a: a.series_epochs,
        series_scored_b: b.series_epochs,
        total: finish(total),
        by_kind: kinds.into_iter().map(|(k, t)| (k, finish(t))).collect(),
        by_feature: features.into_iter().map(|(k, t)| (k, finish(t))).collect(),
        ..CompareReport::default()
    }
}

/// Reads both outputs and compares them.
pub fn compare_files(a: &Path, b: &Path) -> Result<CompareReport, EvalError> {
    let ra = crate::pointeval::read_run_output(a)?;
    let rb = crate::pointeval::read_run_output(b)?;
    let mut report = compare(&ra, &rb);
    report.a = a.display().to_string();
    report.b = b.display().to_string();
    Ok(report)
}

/// The report as a Markdown table (what `compare --markdown` prints).
pub fn markdown(r: &CompareReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "A: {} ({} epochs)  ", r.a, r.epochs_a);
    let _ = writeln!(s, "B: {} ({} epochs)\n", r.b, r.epochs_b);
    let _ = writeln!(
        s,
        "| group | A | B | both | only A | only B | median raise B − A (epochs) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mut row = |name: &str, c: &Counts| {
        let d = c
            .median_start_difference
            .map_or("—".to_string(), |d| format!("{d}"));
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {d} |",
            c.a, c.b, c.both, c.only_a, c.only_b
        );
    };
    row("all", &r.total);
    for (k, c) in &r.by_kind {
        row(&format!("kind {k}"), c);
    }
    for (f, c) in &r.by_feature {
        row(&format!("feature {f}"), c);
    }
    if let (Some(a), Some(b)) = (&r.eval_a, &r.eval_b) {
        let _ = writeln!(s, "\n| eval figure | A | B |\n|---|---|---|");
        for (name, x, y) in eval_rows(a, b) {
            let _ = writeln!(s, "| {name} | {x} | {y} |");
        }
    }
    s
}

/// The numbers two eval reports have, side by side: their top-level numbers, those of `scores` (point
/// scoring) and each kind's recall (event scoring).
fn eval_rows(a: &serde_json::Value, b: &serde_json::Value) -> Vec<(String, String, String)> {
    use serde_json::Value;
    let show = |v: Option<&Value>| match v.and_then(Value::as_f64) {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x}"),
        Some(x) => format!("{x:.4}"),
        None => "—".into(),
    };
    let mut rows = Vec::new();
    let mut numbers = |prefix: &str, x: Option<&Value>, y: Option<&Value>| {
        let Some(Value::Object(m)) = x else { return };
        for (k, v) in m {
            if v.is_number() {
                let other = y.and_then(|y| y.get(k));
                rows.push((format!("{prefix}{k}"), show(Some(v)), show(other)));
            }
        }
    };
    numbers("", Some(a), Some(b));
    numbers("scores.", a.get("scores"), b.get("scores"));
    if let Some(Value::Object(kinds)) = a.get("by_kind") {
        for (k, v) in kinds {
            let other = b.get("by_kind").and_then(|m| m.get(k));
            if v.get("recall").is_some() {
                rows.push((
                    format!("recall {k}"),
                    show(v.get("recall")),
                    show(other.and_then(|o| o.get("recall"))),
                ));
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pointeval::Change;

    fn change(epoch: u64, customer: &str, feature: &str, status: Status, kind: &str) -> Change {
        Change {
            epoch,
            customer: customer.into(),
            feature: feature.into(),
            status,
            kind: kind.into(),
            customer_level: feature == "*",
        }
    }

    fn run(changes: Vec<Change>) -> RunOutput {
        RunOutput {
            changes,
            epochs: 10,
            ..RunOutput::default()
        }
    }

    #[test]
    fn alerts_span_from_raise_to_clear() {
        let r = run(vec![
            change(2, "c1", "rssi", Status::Raised, "spike"),
            change(3, "c1", "rssi", Status::Updated, "level_shift"),
            change(5, "c1", "rssi", Status::Cleared, "spike"),
            change(6, "c1", "rssi", Status::Raised, "level_shift"),
        ]);
        let a = alerts(&r);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].start, a[0].end, a[0].kind.as_str()), (2, 5, "spike"));
        assert_eq!((a[1].start, a[1].end), (6, u64::MAX));
    }

    #[test]
    fn overlapping_alerts_are_the_same_alert() {
        // A: c1/rssi [2,5), c1/snr [4,6), c2/* [1,3). B: c1/rssi [3,4) (one epoch later), c1/snr [6,8)
        // (after A's cleared: another alert), c3/rssi [1,2).
        let a = run(vec![
            change(1, "c2", "*", Status::Raised, "silent"),
            change(2, "c1", "rssi", Status::Raised, "spike"),
            change(3, "c2", "*", Status::Cleared, "silent"),
            change(4, "c1", "snr", Status::Raised, "relationship"),
            change(5, "c1", "rssi", Status::Cleared, "spike"),
            change(6, "c1", "snr", Status::Cleared, "relationship"),
        ]);
        let b = run(vec![
            change(1, "c3", "rssi", Status::Raised, "spike"),
            change(2, "c3", "rssi", Status::Cleared, "spike"),
            change(3, "c1", "rssi", Status::Raised, "level_shift"),
            change(4, "c1", "rssi", Status::Cleared, "level_shift"),
            change(6, "c1", "snr", Status::Raised, "spike"),
            change(8, "c1", "snr", Status::Cleared, "spike"),
        ]);
        let r = compare(&a, &b);
        assert_eq!(
            r.total,
            Counts {
                a: 3,
                b: 3,
                both: 1,
                only_a: 2,
                only_b: 2,
                median_start_difference: Some(1.0),
            }
        );
        // A's alert counts under A's kind; B's unmatched ones under theirs.
        assert_eq!((r.by_kind["spike"].a, r.by_kind["spike"].both), (1, 1));
        assert_eq!((r.by_kind["spike"].b, r.by_kind["spike"].only_b), (2, 2));
        assert_eq!(r.by_kind["relationship"].only_a, 1);
        assert_eq!(r.by_kind["level_shift"].b, 1);
        assert_eq!(r.by_kind["level_shift"].only_b, 0);
        assert_eq!(r.by_feature["*"].only_a, 1);
        assert_eq!((r.by_feature["rssi"].a, r.by_feature["rssi"].b), (1, 2));
        // A run compared with itself: every alert in both, none alone.
        let same = compare(&a, &a);
        assert_eq!(
            (same.total.both, same.total.only_a, same.total.only_b),
            (3, 0, 0)
        );
        assert_eq!(same.total.median_start_difference, Some(0.0));
    }
}
