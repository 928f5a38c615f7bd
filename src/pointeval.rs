//! `fleetwatch eval --alerts … --points …`: scoring a run against customer-level *point* labels
//! (`customer_id,ts,label`), as real telemetry sets are labelled, with a streaming robust z-score baseline
//! computed on the same data.
//!
//! A customer is **flagged** at an epoch when it has an open alert then: a customer-level alert when the
//! output has any (`"level":"customer"`), otherwise any open feature alert or whole-customer alert. A point
//! `(customer, ts)` falls in epoch `⌊ts / epoch length⌋`.
//!
//! ```text
//! point precision = flagged anomalous points / flagged points
//! point recall    = flagged anomalous points / anomalous points
//! event           = a run of consecutive anomalous points of one customer (in the points file's order)
//! event recall    = events with at least one flagged point / events
//! composite F1    = harmonic mean of point precision and event recall        (Garg et al., 2021)
//! flagged share   = flagged points / points
//! normal raises   = raised changes at an epoch whose point is labelled 0 (or with no label at all)
//! raises per 1,000 series-days = normal raises / (series scored · epoch length / 1 day · normal share) · 1000
//! ```
//!
//! Without a points file every point of the run is normal: the figure is then the raises per 1,000
//! series-days of the whole run (unlabelled sets such as azure-vm-cpu).
//!
//! The baseline is the detector an engineer would write first: for every series the robust z-score of each
//! value against the median and MAD of the series' previous `window` values (streaming: only the past is
//! used), fused per customer as the max over features, or the mean of the top three; its threshold is then
//! chosen *with the labels* to maximise point F1, so it is an upper bound on what that rule can do.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use crate::eval::EvalError;

/// Point labels: per customer, its `(ts, label)` points in file order.
#[derive(Debug, Default, Clone)]
pub struct Points {
    pub by_customer: BTreeMap<String, Vec<(i64, bool)>>,
}

fn io_err(path: &Path, source: std::io::Error) -> EvalError {
    EvalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parse_err(path: &Path, line: usize, message: impl Into<String>) -> EvalError {
    EvalError::Parse {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Opens a CSV file with a header line: the reader and the header.
fn open_csv(path: &Path) -> Result<(csv::Reader<std::fs::File>, csv::StringRecord), EvalError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(io) => io_err(path, io),
            other => parse_err(path, 1, format!("{other:?}")),
        })?;
    let header = rdr
        .headers()
        .map_err(|e| parse_err(path, 1, e.to_string()))?
        .clone();
    Ok((rdr, header))
}

/// Reads a `customer_id,ts,label` file (header required; `ts` in Unix seconds or RFC 3339; label 0 or 1).
pub fn read_points(path: &Path) -> Result<Points, EvalError> {
    let (mut rdr, header) = open_csv(path)?;
    let cols: Vec<&str> = header.iter().map(str::trim).collect();
    if cols.len() < 3 || cols[0] != "customer_id" || cols[1] != "ts" || cols[2] != "label" {
        return Err(parse_err(
            path,
            1,
            "the header must be customer_id,ts,label",
        ));
    }
    let mut points = Points::default();
    for (i, row) in rdr.records().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| parse_err(path, line, e.to_string()))?;
        let (Some(c), Some(ts), Some(label)) = (row.get(0), row.get(1), row.get(2)) else {
            return Err(parse_err(path, line, "expected customer_id,ts,label"));
        };
        let ts = parse_ts(ts.trim())
            .ok_or_else(|| parse_err(path, line, format!("bad timestamp '{ts}'")))?;
        let label = match label.trim() {
            "0" => false,
            "1" => true,
            other => {
                return Err(parse_err(
                    path,
                    line,
                    format!("label '{other}' is not 0 or 1"),
                ));
            }
        };
        points
            .by_customer
            .entry(c.trim().to_string())
            .or_default()
            .push((ts, label));
    }
    Ok(points)
}

/// A time given as Unix seconds (integer or decimal) or RFC 3339.
pub fn parse_ts(s: &str) -> Option<i64> {
    s.parse::<i64>()
        .ok()
        .or_else(|| {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f as i64)
        })
        .or_else(|| crate::timefmt::parse_rfc3339(s.as_bytes()))
}

/// One anomaly change line, as much of it as point scoring needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub epoch: u64,
    pub customer: String,
    pub feature: String,
    pub status: Status,
    pub kind: String,
    /// `true` for a customer-level alert (`"level":"customer"`).
    pub customer_level: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Raised,
    Updated,
    Cleared,
}

/// What point scoring reads from a run's output.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub changes: Vec<Change>,
    pub epoch_len: i64,
    pub series_epochs: u64,
    /// Σ of the summaries' `records` (logs: one per reporting customer and epoch at a fleet's cadence).
    pub records: u64,
    /// Epochs that closed (summary lines).
    pub epochs: u64,
}

/// Reads the changes and summaries of a `fleetwatch run` output.
pub fn read_run_output(path: &Path) -> Result<RunOutput, EvalError> {
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut out = RunOutput::default();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| io_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| parse_err(path, i + 1, e.to_string()))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        match s("type") {
            Some("change") => {
                let status = match s("status") {
                    Some("raised") => Status::Raised,
                    Some("updated") => Status::Updated,
                    Some("cleared") => Status::Cleared,
                    other => {
                        return Err(parse_err(path, i + 1, format!("unknown status {other:?}")));
                    }
                };
                let (Some(epoch), Some(customer), Some(feature)) = (
                    v.get("epoch").and_then(|x| x.as_u64()),
                    s("customer"),
                    s("feature"),
                ) else {
                    return Err(parse_err(
                        path,
                        i + 1,
                        "change line without epoch/customer/feature",
                    ));
                };
                out.changes.push(Change {
                    epoch,
                    customer: customer.to_string(),
                    feature: feature.to_string(),
                    status,
                    kind: s("kind").unwrap_or("").to_string(),
                    customer_level: s("level") == Some("customer"),
                });
            }
            Some("summary") => {
                out.epochs += 1;
                out.series_epochs += v.get("series_scored").and_then(|x| x.as_u64()).unwrap_or(0);
                out.records += v.get("records").and_then(|x| x.as_u64()).unwrap_or(0);
                if out.epoch_len == 0
                    && let (Some(e), Some(t)) = (
                        v.get("epoch").and_then(|x| x.as_u64()),
                        s("epoch_start").and_then(|t| crate::timefmt::parse_rfc3339(t.as_bytes())),
                    )
                    && e > 0
                {
                    out.epoch_len = t / e as i64;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Point-wise figures of one flagging (the model's alerts, or the baseline at a threshold).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PointScores {
    pub flagged_points: u64,
    pub true_points: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub events_detected: u64,
    pub event_recall: f64,
    pub composite_f1: f64,
    pub flagged_share: f64,
}

/// The result of `eval --alerts … [--points …]` (printed as one JSON object).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PointReport {
    pub customers: u64,
    pub points: u64,
    pub anomalous_points: u64,
    pub events: u64,
    /// `customer` when the run has customer-level alerts, else `feature`.
    pub flagged_by: String,
    pub scores: PointScores,
    pub raises: u64,
    /// Raises after the customer's last record (a recorded set's series that ends before the others reads
    /// as a customer gone silent: the end of the recording, not a fault); not counted below.
    pub raises_after_data_end: u64,
    pub raises_normal: u64,
    pub normal_series_days: f64,
    pub raises_per_1000_series_days: f64,
    /// The same per customer-day (customer-level alerts are one per customer, not per series).
    pub normal_customer_days: f64,
    pub raises_per_1000_customer_days: f64,
    /// Normal raises by kind.
    pub raises_by_kind: BTreeMap<String, u64>,
    pub baseline: Option<Baseline>,
}

/// The robust z-score baseline at its best threshold, both fusions; and the max fusion at the best threshold
/// whose alert volume in normal stretches is no higher than the run's (the same budget).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Baseline {
    pub window: usize,
    pub max: BaselineScores,
    pub top3_mean: BaselineScores,
    /// The max fusion's best point F1 among thresholds raising at most as often in normal stretches as
    /// the run did (`None` if no threshold does).
    pub max_at_run_volume: Option<BaselineScores>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BaselineScores {
    pub threshold: f64,
    #[serde(flatten)]
    pub scores: PointScores,
    /// Raises the baseline would make at normal points: a flagged normal point with no flagged point among
    /// the customer's previous `BASELINE_CLEAR_POINTS` (the alerts' own `clear_epochs` default, 3).
    pub raises_normal: u64,
    pub raises_per_1000_series_days: f64,
}

/// The quiet points after which a flagged point counts as a new raise for the baseline (the alerts'
/// default `clear_epochs`).
pub const BASELINE_CLEAR_POINTS: usize = 3;
/// The robust z-score baseline's trailing window by default, in values of each series (a day of 5-minute
/// epochs): `eval --baseline-window` and `compare --points`.
pub const BASELINE_WINDOW: usize = 288;

/// Normal raises of a per-point flagging (see `BaselineScores::raises_normal`).
fn normal_raises(points: &Points, flagged: &dyn Fn(&str, usize) -> bool) -> u64 {
    let mut raises = 0;
    for (c, pts) in &points.by_customer {
        let mut quiet = BASELINE_CLEAR_POINTS;
        for (i, &(_, label)) in pts.iter().enumerate() {
            if flagged(c, i) {
                if quiet >= BASELINE_CLEAR_POINTS && !label {
                    raises += 1;
                }
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
    }
    raises
}

/// Per customer, the epochs at which it is flagged (sorted, deduplicated), from the run's changes.
pub fn flagged_epochs(run: &RunOutput) -> (HashMap<String, Vec<u64>>, bool) {
    let customer_level = run.changes.iter().any(|c| c.customer_level);
    // Open alerts per customer: (feature) → raised epoch; an epoch is flagged from a raise to its clear.
    let mut spans: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut open: HashMap<(String, String, bool), u64> = HashMap::new();
    for c in run
        .changes
        .iter()
        .filter(|c| !customer_level || c.customer_level)
    {
        // A customer's silence and its anomaly alert are both feature "*": tell them apart by kind.
        let key = (c.customer.clone(), c.feature.clone(), c.kind == "silent");
        match c.status {
            Status::Raised => {
                open.entry(key).or_insert(c.epoch);
            }
            Status::Updated => {
                open.entry(key).or_insert(c.epoch);
            }
            Status::Cleared => {
                if let Some(start) = open.remove(&key) {
                    // cleared at epoch e: the alert was open up to e − 1
                    spans
                        .entry(c.customer.clone())
                        .or_default()
                        .push((start, c.epoch.saturating_sub(1).max(start)));
                }
            }
        }
    }
    // still open when the run ended: flagged from its raise on
    for ((customer, _, _), start) in open {
        spans.entry(customer).or_default().push((start, u64::MAX));
    }
    let mut out = HashMap::new();
    for (customer, s) in spans {
        let mut s = s;
        s.sort_unstable();
        // merge overlapping spans; stored as a flat list of [start, end] pairs
        let mut merged: Vec<u64> = Vec::new();
        for (a, b) in s {
            match merged.len() {
                n if n >= 2 && a <= merged[n - 1].saturating_add(1) => {
                    if b > merged[n - 1] {
                        merged[n - 1] = b;
                    }
                }
                _ => {
                    merged.push(a);
                    merged.push(b);
                }
            }
        }
        out.insert(customer, merged);
    }
    (out, customer_level)
}

fn in_spans(spans: &[u64], epoch: u64) -> bool {
    // spans: sorted, disjoint [start, end] pairs
    let pairs = spans.len() / 2;
    let (mut lo, mut hi) = (0usize, pairs);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if spans[2 * mid + 1] < epoch {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo < pairs && spans[2 * lo] <= epoch
}

/// Point scores of a flagging given per point in the points' order (`flags[customer][i]`).
fn score_flags(points: &Points, flagged: &dyn Fn(&str, usize, i64) -> bool) -> PointScores {
    let mut s = PointScores::default();
    let (mut anomalous, mut all, mut events) = (0u64, 0u64, 0u64);
    for (c, pts) in &points.by_customer {
        let mut in_event = false;
        let mut event_hit = false;
        for (i, &(ts, label)) in pts.iter().enumerate() {
            let f = flagged(c, i, ts);
            all += 1;
            if f {
                s.flagged_points += 1;
            }
            if label {
                anomalous += 1;
                if f {
                    s.true_points += 1;
                }
                if !in_event {
                    in_event = true;
                    event_hit = false;
                    events += 1;
                }
                event_hit |= f;
            } else if in_event {
                in_event = false;
                s.events_detected += event_hit as u64;
            }
        }
        if in_event {
            s.events_detected += event_hit as u64;
        }
    }
    let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let hm = |a: f64, b: f64| {
        if a + b > 0.0 {
            2.0 * a * b / (a + b)
        } else {
            0.0
        }
    };
    s.precision = ratio(s.true_points, s.flagged_points);
    s.recall = ratio(s.true_points, anomalous);
    s.f1 = hm(s.precision, s.recall);
    s.event_recall = ratio(s.events_detected, events);
    s.composite_f1 = hm(s.precision, s.event_recall);
    s.flagged_share = ratio(s.flagged_points, all);
    s
}

/// Scores a run's output against point labels (`None`: an unlabelled set, every point normal). `last_ts`:
/// each customer's last record (from the points, or the telemetry of an unlabelled set), when known.
pub fn evaluate_points(
    run: &RunOutput,
    points: Option<&Points>,
    last_ts: Option<&HashMap<String, i64>>,
) -> PointReport {
    let epoch_len = run.epoch_len.max(1);
    let (flags, customer_level) = flagged_epochs(run);
    let mut r = PointReport {
        flagged_by: if customer_level {
            "customer"
        } else {
            "feature"
        }
        .to_string(),
        ..Default::default()
    };
    let empty = Points::default();
    let labelled = points.is_some();
    let points = points.unwrap_or(&empty);
    // anomalous epochs per customer, for classifying raises
    let mut anomalous: HashMap<&str, Vec<u64>> = HashMap::new();
    for (c, pts) in &points.by_customer {
        r.customers += 1;
        r.points += pts.len() as u64;
        let mut prev = false;
        for &(ts, label) in pts {
            if label {
                r.anomalous_points += 1;
                if !prev {
                    r.events += 1;
                }
                anomalous
                    .entry(c.as_str())
                    .or_default()
                    .push(ts.div_euclid(epoch_len) as u64);
            }
            prev = label;
        }
    }
    for v in anomalous.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    r.scores = score_flags(points, &|c, _, ts| {
        flags
            .get(c)
            .is_some_and(|s| in_spans(s, ts.div_euclid(epoch_len) as u64))
    });
    for ch in run
        .changes
        .iter()
        .filter(|c| c.status == Status::Raised && (!customer_level || c.customer_level))
    {
        r.raises += 1;
        if last_ts
            .and_then(|l| l.get(&ch.customer))
            .is_some_and(|&t| ch.epoch > t.div_euclid(epoch_len) as u64)
        {
            r.raises_after_data_end += 1;
            continue;
        }
        let in_anomaly = anomalous
            .get(ch.customer.as_str())
            .is_some_and(|v| v.binary_search(&ch.epoch).is_ok());
        if !in_anomaly {
            r.raises_normal += 1;
            *r.raises_by_kind.entry(ch.kind.clone()).or_default() += 1;
        }
    }
    let normal_share = if labelled && r.points > 0 {
        (r.points - r.anomalous_points) as f64 / r.points as f64
    } else {
        1.0
    };
    r.normal_series_days = run.series_epochs as f64 * epoch_len as f64 / 86_400.0 * normal_share;
    r.raises_per_1000_series_days = if r.normal_series_days > 0.0 {
        r.raises_normal as f64 / r.normal_series_days * 1000.0
    } else {
        0.0
    };
    r.normal_customer_days = run.records as f64 * epoch_len as f64 / 86_400.0 * normal_share;
    r.raises_per_1000_customer_days = if r.normal_customer_days > 0.0 {
        r.raises_normal as f64 / r.normal_customer_days * 1000.0
    } else {
        0.0
    };
    r
}

/// A CSV export's values: per customer, its rows' timestamps and per-feature values (NaN = missing).
#[derive(Debug, Default, Clone)]
pub struct Table {
    pub features: Vec<String>,
    pub by_customer: BTreeMap<String, (Vec<i64>, Vec<Vec<f64>>)>,
}

/// Each customer's last timestamp in the points.
pub fn last_points(points: &Points) -> HashMap<String, i64> {
    points
        .by_customer
        .iter()
        .filter_map(|(c, p)| p.iter().map(|x| x.0).max().map(|t| (c.clone(), t)))
        .collect()
}

/// Each customer's last timestamp in a CSV export.
pub fn last_rows(table: &Table) -> HashMap<String, i64> {
    table
        .by_customer
        .iter()
        .filter_map(|(c, (ts, _))| ts.iter().max().map(|&t| (c.clone(), t)))
        .collect()
}

/// Reads a CSV export (`customer_id,ts,<feature>...`) for the baseline.
pub fn read_table(path: &Path) -> Result<Table, EvalError> {
    let (mut rdr, header) = open_csv(path)?;
    if header.len() < 3 || &header[0] != "customer_id" || &header[1] != "ts" {
        return Err(parse_err(
            path,
            1,
            "the header must be customer_id,ts,<feature>...",
        ));
    }
    let mut t = Table {
        features: header.iter().skip(2).map(str::to_string).collect(),
        ..Default::default()
    };
    let nf = t.features.len();
    for (i, row) in rdr.records().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| parse_err(path, line, e.to_string()))?;
        let ts = row
            .get(1)
            .and_then(|s| parse_ts(s.trim()))
            .ok_or_else(|| parse_err(path, line, "bad timestamp"))?;
        let c = row.get(0).unwrap_or("").trim().to_string();
        let entry = t
            .by_customer
            .entry(c)
            .or_insert_with(|| (Vec::new(), vec![Vec::new(); nf]));
        entry.0.push(ts);
        for f in 0..nf {
            let v = row
                .get(f + 2)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .unwrap_or(f64::NAN);
            entry.1[f].push(v);
        }
    }
    Ok(t)
}

/// Streaming robust z-score of each value against the previous `window` values of its series: `|x − med| /
/// (1.4826·MAD)`; 0 while fewer than `min(window, 12)` values precede it, or for a missing value. A zero
/// MAD (a quantised or flat series) falls back to 1.2533 × the mean absolute deviation, then to the
/// smallest positive f64 step, so any departure from a flat history scores very high.
pub fn robust_z(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(2);
    let warm = window.min(12);
    let mut sorted: Vec<f64> = Vec::with_capacity(window);
    let mut ring: std::collections::VecDeque<f64> =
        std::collections::VecDeque::with_capacity(window);
    let mut out = Vec::with_capacity(values.len());
    let mut dev: Vec<f64> = Vec::with_capacity(window);
    for &x in values {
        if x.is_nan() {
            out.push(0.0);
            continue;
        }
        let z = if sorted.len() >= warm {
            let med = median_sorted(&sorted);
            dev.clear();
            dev.extend(sorted.iter().map(|v| (v - med).abs()));
            dev.sort_unstable_by(f64::total_cmp);
            let mad = median_sorted(&dev);
            let mut scale = 1.4826 * mad;
            if scale <= 0.0 {
                scale = 1.2533 * dev.iter().sum::<f64>() / dev.len() as f64;
            }
            if scale <= 0.0 {
                scale = f64::MIN_POSITIVE;
            }
            ((x - med).abs() / scale).min(1e12)
        } else {
            0.0
        };
        out.push(z);
        if ring.len() == window
            && let Some(old) = ring.pop_front()
            && let Ok(pos) = sorted.binary_search_by(|p| p.total_cmp(&old))
        {
            sorted.remove(pos);
        }
        ring.push_back(x);
        let pos = sorted.partition_point(|p| p.total_cmp(&x).is_lt());
        sorted.insert(pos, x);
    }
    out
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The baseline's per-customer scores for every point: `(max over features, mean of the top three)`.
fn baseline_scores(
    table: &Table,
    points: &Points,
    window: usize,
) -> HashMap<String, Vec<(f64, f64)>> {
    let mut out = HashMap::new();
    for (c, pts) in &points.by_customer {
        let Some((ts, cols)) = table.by_customer.get(c) else {
            out.insert(c.clone(), vec![(0.0, 0.0); pts.len()]);
            continue;
        };
        let zs: Vec<Vec<f64>> = cols.iter().map(|v| robust_z(v, window)).collect();
        let by_ts: HashMap<i64, usize> = ts.iter().enumerate().map(|(i, &t)| (t, i)).collect();
        let mut top = Vec::with_capacity(zs.len());
        let scores = pts
            .iter()
            .map(|&(t, _)| match by_ts.get(&t) {
                Some(&i) => {
                    top.clear();
                    top.extend(zs.iter().map(|z| z[i]));
                    top.sort_unstable_by(|a, b| b.total_cmp(a));
                    let max = top.first().copied().unwrap_or(0.0);
                    let k = top.len().clamp(1, 3);
                    let mean3 = top.iter().take(k).sum::<f64>() / k as f64;
                    (max, mean3)
                }
                None => (0.0, 0.0),
            })
            .collect();
        out.insert(c.clone(), scores);
    }
    out
}

/// The threshold maximising point F1 over `(score, label)` pairs (flagged: score ≥ threshold).
fn best_threshold(mut pairs: Vec<(f64, bool)>) -> f64 {
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    if positives == 0.0 {
        return f64::INFINITY;
    }
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let (mut best_f1, mut best) = (-1.0f64, f64::INFINITY);
    let mut i = 0;
    while i < pairs.len() {
        let t = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == t {
            if pairs[i].1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        if t <= 0.0 {
            break;
        }
        let f1 = 2.0 * tp / (2.0 * tp + fp + (positives - tp));
        if f1 > best_f1 {
            best_f1 = f1;
            best = t;
        }
    }
    best
}

/// The robust z-score baseline on a CSV export, with its best thresholds chosen on `points`.
/// `normal_series_days` converts its raises into a rate (the run's figure, so both are per the same
/// series-days); `run_volume`, the run's raises per 1,000 normal series-days, caps the volume of
/// `max_at_run_volume`.
pub fn baseline(
    table: &Table,
    points: &Points,
    window: usize,
    normal_series_days: f64,
    run_volume: Option<f64>,
) -> Baseline {
    let scores = baseline_scores(table, points, window);
    let mut result = Baseline {
        window,
        ..Default::default()
    };
    let per_1000 = |raises: u64| {
        if normal_series_days > 0.0 {
            raises as f64 / normal_series_days * 1000.0
        } else {
            0.0
        }
    };
    // a point's score under fusion `which`: 0 the max over features, 1 the mean of the top three
    let pick = |s: &(f64, f64), which: usize| if which == 0 { s.0 } else { s.1 };
    let at = |threshold: f64, which: usize| {
        let flagged = |c: &str, i: usize| {
            scores
                .get(c)
                .is_some_and(|s| pick(&s[i], which) >= threshold)
        };
        let raises_normal = normal_raises(points, &flagged);
        BaselineScores {
            threshold,
            scores: score_flags(points, &|c, i, _| flagged(c, i)),
            raises_normal,
            raises_per_1000_series_days: per_1000(raises_normal),
        }
    };
    for which in 0..2 {
        let pairs: Vec<(f64, bool)> = points
            .by_customer
            .iter()
            .flat_map(|(c, pts)| {
                let s = &scores[c];
                pts.iter()
                    .zip(s.iter())
                    .map(move |(p, s)| (pick(s, which), p.1))
            })
            .collect();
        let b = at(best_threshold(pairs), which);
        if which == 0 {
            result.max = b;
        } else {
            result.top3_mean = b;
        }
    }
    if let Some(cap) = run_volume {
        // candidate thresholds: the max fusion's scores at ranks 1, 2, 3, … growing by 2 % (about 600
        // candidates for 10⁶ points), from the highest down
        let mut all: Vec<f64> = scores.values().flatten().map(|s| s.0).collect();
        all.sort_unstable_by(|a, b| b.total_cmp(a));
        let mut rank = 1.0f64;
        let mut last = f64::NAN;
        while (rank as usize) <= all.len() {
            let t = all[rank as usize - 1];
            rank = (rank * 1.02).max(rank + 1.0);
            if t <= 0.0 {
                break; // every later candidate is lower still: nothing flagged
            }
            if t == last {
                continue;
            }
            last = t;
            let b = at(t, 0);
            if b.raises_per_1000_series_days <= cap
                && result
                    .max_at_run_volume
                    .as_ref()
                    .is_none_or(|best| b.scores.f1 > best.scores.f1)
            {
                result.max_at_run_volume = Some(b);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(epoch: u64, c: &str, f: &str, status: Status) -> Change {
        Change {
            epoch,
            customer: c.into(),
            feature: f.into(),
            status,
            kind: "spike".into(),
            customer_level: false,
        }
    }

    fn points(rows: &[(&str, i64, bool)]) -> Points {
        let mut p = Points::default();
        for &(c, ts, l) in rows {
            p.by_customer
                .entry(c.to_string())
                .or_default()
                .push((ts, l));
        }
        p
    }

    #[test]
    fn point_and_event_scores_by_hand() {
        // epoch length 60; customer A points at epochs 0..10, anomalous at 3,4 (event 1) and 8 (event 2);
        // customer B points at 0..5, anomalous at 2 (event 3).
        let mut rows = Vec::new();
        for e in 0..10 {
            rows.push(("A", e * 60, matches!(e, 3 | 4 | 8)));
        }
        for e in 0..5 {
            rows.push(("B", e * 60, e == 2));
        }
        let p = points(&rows);
        // A: raised at 4 (feature x), cleared at 6 → flagged 4, 5; raised y at 9, never cleared → 9.
        // B: raised at 0 cleared at 1 → flagged 0.
        let run = RunOutput {
            changes: vec![
                change(0, "B", "x", Status::Raised),
                change(1, "B", "x", Status::Cleared),
                change(4, "A", "x", Status::Raised),
                change(6, "A", "x", Status::Cleared),
                change(9, "A", "y", Status::Raised),
            ],
            epoch_len: 60,
            series_epochs: 1440, // 1 series-day at 60 s
            records: 720,        // half a customer-day
            epochs: 10,
        };
        let r = evaluate_points(&run, Some(&p), None);
        // flagged points: A4, A5, A9, B0 = 4; true: A4 = 1
        assert_eq!(r.scores.flagged_points, 4);
        assert_eq!(r.scores.true_points, 1);
        assert!((r.scores.precision - 0.25).abs() < 1e-12);
        assert!((r.scores.recall - 0.25).abs() < 1e-12); // 1 of 4 anomalous points
        assert_eq!(r.events, 3);
        assert_eq!(r.scores.events_detected, 1);
        assert!((r.scores.event_recall - 1.0 / 3.0).abs() < 1e-12);
        let c = 2.0 * 0.25 * (1.0 / 3.0) / (0.25 + 1.0 / 3.0);
        assert!((r.scores.composite_f1 - c).abs() < 1e-12);
        assert!((r.scores.flagged_share - 4.0 / 15.0).abs() < 1e-12);
        // raises: B@0 (normal), A@4 (anomalous), A@9 (normal) → 2 normal raises;
        // normal share 11/15 of 1 series-day
        assert_eq!((r.raises, r.raises_normal), (3, 2));
        assert!((r.normal_series_days - 11.0 / 15.0).abs() < 1e-12);
        assert!((r.raises_per_1000_series_days - 2.0 / (11.0 / 15.0) * 1000.0).abs() < 1e-9);
        assert!((r.normal_customer_days - 0.5 * 11.0 / 15.0).abs() < 1e-12);
        assert_eq!(r.flagged_by, "feature");
        // A's data ending at epoch 8: its raise at 9 is the recording's end, counted apart.
        let last: HashMap<String, i64> = [("A".to_string(), 480), ("B".to_string(), 240)].into();
        let r = evaluate_points(&run, Some(&p), Some(&last));
        assert_eq!(
            (r.raises, r.raises_after_data_end, r.raises_normal),
            (3, 1, 1)
        );
    }

    #[test]
    fn customer_level_alerts_take_precedence() {
        let p = points(&[("A", 0, false), ("A", 60, true), ("A", 120, false)]);
        let mut cust = change(1, "A", "*", Status::Raised);
        cust.customer_level = true;
        let run = RunOutput {
            changes: vec![change(0, "A", "x", Status::Raised), cust],
            epoch_len: 60,
            series_epochs: 3,
            records: 3,
            epochs: 3,
        };
        let r = evaluate_points(&run, Some(&p), None);
        assert_eq!(r.flagged_by, "customer");
        // the feature alert at 0 is ignored: flagged 1 and 2
        assert_eq!(r.scores.flagged_points, 2);
        assert_eq!(r.scores.true_points, 1);
        assert_eq!(r.raises, 1);
    }

    #[test]
    fn robust_z_by_hand() {
        // window 4: history [1, 2, 3, 4] → median 2.5, deviations [0.5, 0.5, 1.5, 1.5] → MAD 1.0
        let v = [1.0, 2.0, 3.0, 4.0, 6.0, f64::NAN, 2.5];
        let z = robust_z(&v, 4);
        assert_eq!(&z[..4], &[0.0; 4]); // warm-up: min(window, 12) = 4 values first
        assert!((z[4] - 3.5 / 1.4826).abs() < 1e-12);
        assert_eq!(z[5], 0.0); // missing
        // history [2, 3, 4, 6] → median 3.5, deviations [1.5, 0.5, 0.5, 2.5] → MAD 1.0; x = 2.5 → 1/1.4826
        assert!((z[6] - 1.0 / 1.4826).abs() < 1e-12);
        // a flat history: MAD 0 and mean deviation 0 → any departure is enormous, equality is 0
        let z = robust_z(&[5.0, 5.0, 5.0, 5.0, 5.0, 6.0], 4);
        assert_eq!(z[4], 0.0);
        assert!(z[5] > 1e9);
    }

    #[test]
    fn best_threshold_maximises_f1() {
        // scores 5 (1), 4 (0), 3 (1), 2 (0), 1 (0): threshold 5 → F1 2/3 (tp 1, fn 1); 3 → tp 2 fp 1, F1 0.8
        let pairs = vec![
            (5.0, true),
            (4.0, false),
            (3.0, true),
            (2.0, false),
            (1.0, false),
        ];
        assert_eq!(best_threshold(pairs), 3.0);
        assert!(best_threshold(vec![(1.0, false)]).is_infinite());
    }

    #[test]
    fn baseline_raises_count_new_episodes_at_normal_points() {
        // flags at 0, 1 (one episode), 5 (4 quiet points before it: new), 8 (2 quiet: same episode),
        // 12 (3 quiet: new, but labelled anomalous: not a normal raise) → 2 normal raises
        let rows: Vec<(&str, i64, bool)> = (0..14).map(|i| ("a", i * 300, i == 12)).collect();
        let p = points(&rows);
        let flagged = |_: &str, i: usize| [0, 1, 5, 8, 12].contains(&i);
        assert_eq!(normal_raises(&p, &flagged), 2);
    }

    #[test]
    fn the_baseline_at_the_run_volume_keeps_to_it() {
        // one customer, one feature alternating 10, 11 (window median 10.5, MAD 0.5: z = (x − 10.5)/0.74);
        // anomalies (labelled) 13.5 at point 25 and 40 at point 30, an ordinary bump to 14 at point 12.
        // Best F1: flag z ≥ z(13.5) = 4.05 → points 12, 25, 30: tp 2, fp 1, F1 0.8, one normal raise.
        // At a volume of zero normal raises: flag only the 40 → tp 1, fn 1, F1 2/3.
        let mut table = Table {
            features: vec!["f".into()],
            ..Default::default()
        };
        let (mut rows, mut vals, mut ts) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..40i64 {
            vals.push(match i {
                12 => 14.0,
                25 => 13.5,
                30 => 40.0,
                _ => 10.0 + (i % 2) as f64,
            });
            ts.push(i * 300);
            rows.push(("a", i * 300, i == 25 || i == 30));
        }
        table.by_customer.insert("a".into(), (ts, vec![vals]));
        let p = points(&rows);
        let b = baseline(&table, &p, 8, 1.0, Some(0.0));
        assert_eq!(b.max.scores.true_points, 2);
        assert_eq!(b.max.scores.flagged_points, 3);
        assert_eq!(b.max.raises_normal, 1);
        assert!((b.max.raises_per_1000_series_days - 1000.0).abs() < 1e-9);
        let matched = b.max_at_run_volume.unwrap();
        assert_eq!(matched.raises_normal, 0);
        assert_eq!(matched.scores.flagged_points, 1);
        assert!((matched.scores.f1 - 2.0 / 3.0).abs() < 1e-12);
        // a cap the best threshold meets: the same threshold
        let loose = baseline(&table, &p, 8, 1.0, Some(1000.0));
        assert_eq!(
            loose.max_at_run_volume.unwrap().threshold,
            loose.max.threshold
        );
    }

    #[test]
    fn reads_points_and_refuses_bad_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("points.csv");
        std::fs::write(
            &p,
            "customer_id,ts,label\nA,60,0\nA,2018-06-13T00:02:00Z,1\n",
        )
        .expect("write");
        let pts = read_points(&p).expect("valid");
        assert_eq!(
            pts.by_customer["A"],
            vec![(60, false), (1_528_848_120, true)]
        );
        std::fs::write(&p, "customer_id,ts,label\nA,60,2\n").expect("write");
        assert!(read_points(&p).is_err());
        std::fs::write(&p, "customer,ts,label\nA,60,1\n").expect("write");
        assert!(read_points(&p).is_err());
    }
}
