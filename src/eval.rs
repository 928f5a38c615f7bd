//! `fleetwatch eval`: event-level scoring of an alert output against labelled anomalies.
//!
//! A label covers the epochs from its start to its end; its *detection window* is those epochs, extended to at
//! least the epoch after its start (a one-epoch spike may only be scored when its epoch closes). A label is
//! **detected** when a `raised` change for its customer and feature — any feature, for a customer-wide `*`
//! label — falls in the window; its delay is the first such change's epoch minus the start epoch. A `raised`
//! change that falls in no window of its customer (same feature, or a `*` label) is a **false alert**.
//!
//! ```text
//! precision = raised changes inside some window / all raised changes
//! recall    = detected labels / labels
//! false alerts per 1,000 series-days = false alerts / (Σ_epochs series scored · epoch length / 1 day) · 1000
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One label line.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Label {
    pub customer: String,
    pub feature: String,
    pub kind: String,
    pub start: i64,
    pub end: i64,
    /// When the customer's first log was due (Unix seconds; the generator writes it): labels within an hour
    /// of it measure cold start.
    #[serde(default)]
    pub joined: Option<i64>,
}

/// One raised change.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub epoch: u64,
    pub customer: String,
    pub feature: String,
}

/// Per-kind figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KindReport {
    pub labels: u64,
    pub detected: u64,
    pub recall: f64,
    pub median_delay_epochs: Option<f64>,
}

impl KindReport {
    /// Sets recall and median delay from the counts and the detected labels' delays.
    fn finish(&mut self, delays: Vec<f64>) {
        self.recall = if self.labels > 0 {
            self.detected as f64 / self.labels as f64
        } else {
            0.0
        };
        self.median_delay_epochs = median(delays);
    }
}

/// The evaluation result (printed as one JSON object).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EvalReport {
    pub labels: u64,
    pub detected: u64,
    pub alerts: u64,
    pub true_alerts: u64,
    pub false_alerts: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub median_delay_epochs: Option<f64>,
    pub series_days: f64,
    pub false_alerts_per_1000_series_days: f64,
    pub by_kind: BTreeMap<String, KindReport>,
    /// Recall of the customers that joined mid-stream, inside their first hour (12 epochs) and after it,
    /// next to the fleet that was there from the start (labels that carry `joined` only).
    pub cold_start: Option<ColdStart>,
}

/// Cold-start recall.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ColdStart {
    pub first_hour: KindReport,
    pub joiners_later: KindReport,
    pub from_the_start: KindReport,
}

/// Errors reading the inputs.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

pub fn read_labels(path: &Path) -> Result<Vec<Label>, EvalError> {
    let f = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| EvalError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| EvalError::Parse {
            path: path.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    Ok(out)
}

/// Reads the raised changes, the epoch length and the series-epochs scored from an alert output.
pub fn read_alerts(path: &Path) -> Result<(Vec<Raised>, i64, u64), EvalError> {
    let f = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut raised = Vec::new();
    let mut epoch_len = 0i64;
    let mut series_epochs = 0u64;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| EvalError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| EvalError::Parse {
            path: path.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        match v.get("type").and_then(|t| t.as_str()) {
            Some("change") => {
                if v.get("status").and_then(|s| s.as_str()) != Some("raised") {
                    continue;
                }
                // The generator labels features (and whole customers going silent): a customer-level
                // alert summarises its features' alerts and is not scored again here.
                if v.get("level").and_then(|s| s.as_str()) == Some("customer")
                    && v.get("kind").and_then(|s| s.as_str()) != Some("silent")
                {
                    continue;
                }
                let (Some(epoch), Some(c), Some(f)) = (
                    v.get("epoch").and_then(|x| x.as_u64()),
                    v.get("customer").and_then(|x| x.as_str()),
                    v.get("feature").and_then(|x| x.as_str()),
                ) else {
                    return Err(EvalError::Parse {
                        path: path.display().to_string(),
                        line: i + 1,
                        message: "change line without epoch/customer/feature".into(),
                    });
                };
                raised.push(Raised {
                    epoch,
                    customer: c.to_string(),
                    feature: f.to_string(),
                });
            }
            Some("summary") => {
                series_epochs += v.get("series_scored").and_then(|x| x.as_u64()).unwrap_or(0);
                if epoch_len == 0
                    && let (Some(e), Some(s)) = (
                        v.get("epoch").and_then(|x| x.as_u64()),
                        v.get("epoch_start")
                            .and_then(|x| x.as_str())
                            .and_then(|s| crate::timefmt::parse_rfc3339(s.as_bytes())),
                    )
                    && e > 0
                {
                    epoch_len = s / e as i64;
                }
            }
            _ => {}
        }
    }
    Ok((raised, epoch_len, series_epochs))
}

/// The median of `v` (the mean of the middle two for an even count); `None` if empty.
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Scores raised changes against labels.
pub fn evaluate(
    labels: &[Label],
    raised: &[Raised],
    epoch_len: i64,
    series_epochs: u64,
) -> EvalReport {
    let epoch_len = epoch_len.max(1);
    let window = |l: &Label| -> (u64, u64) {
        let s = l.start.div_euclid(epoch_len).max(0) as u64;
        let e = (l.end - 1).div_euclid(epoch_len).max(0) as u64;
        (s, e.max(s + 1))
    };
    // Index raised changes by customer.
    let mut by_customer: HashMap<&str, Vec<&Raised>> = HashMap::new();
    for r in raised {
        by_customer.entry(r.customer.as_str()).or_default().push(r);
    }
    let mut labels_by_customer: HashMap<&str, Vec<&Label>> = HashMap::new();
    for l in labels {
        labels_by_customer
            .entry(l.customer.as_str())
            .or_default()
            .push(l);
    }
    let mut report = EvalReport {
        labels: labels.len() as u64,
        alerts: raised.len() as u64,
        ..Default::default()
    };
    let mut delays = Vec::new();
    let mut kind_delays: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let fleet_start = labels.iter().filter_map(|l| l.joined).min();
    let mut cold = ColdStart::default();
    let mut cold_delays: [Vec<f64>; 3] = Default::default();
    for l in labels {
        let (s, e) = window(l);
        let hit = by_customer
            .get(l.customer.as_str())
            .into_iter()
            .flatten()
            .filter(|r| {
                (l.feature == "*" || r.feature == l.feature) && r.epoch >= s && r.epoch <= e
            })
            .map(|r| r.epoch)
            .min();
        if let (Some(j), Some(f0)) = (l.joined, fleet_start) {
            let (group, d) = if j == f0 {
                (&mut cold.from_the_start, &mut cold_delays[2])
            } else if l.start < j + 12 * epoch_len {
                (&mut cold.first_hour, &mut cold_delays[0])
            } else {
                (&mut cold.joiners_later, &mut cold_delays[1])
            };
            group.labels += 1;
            if let Some(first) = hit {
                group.detected += 1;
                d.push((first - s) as f64);
            }
        }
        let k = report.by_kind.entry(l.kind.clone()).or_default();
        k.labels += 1;
        if let Some(first) = hit {
            report.detected += 1;
            k.detected += 1;
            let d = (first - s) as f64;
            delays.push(d);
            kind_delays.entry(l.kind.clone()).or_default().push(d);
        }
    }
    for r in raised {
        let matched = labels_by_customer
            .get(r.customer.as_str())
            .into_iter()
            .flatten()
            .any(|l| {
                let (s, e) = window(l);
                (l.feature == "*" || l.feature == r.feature) && r.epoch >= s && r.epoch <= e
            });
        if matched {
            report.true_alerts += 1;
        } else {
            report.false_alerts += 1;
        }
    }
    for (kind, k) in report.by_kind.iter_mut() {
        k.finish(kind_delays.remove(kind).unwrap_or_default());
    }
    if fleet_start.is_some() {
        let groups = [
            &mut cold.first_hour,
            &mut cold.joiners_later,
            &mut cold.from_the_start,
        ];
        for (g, d) in groups.into_iter().zip(cold_delays) {
            g.finish(d);
        }
        report.cold_start = Some(cold);
    }
    report.precision = if report.alerts > 0 {
        report.true_alerts as f64 / report.alerts as f64
    } else {
        0.0
    };
    report.recall = if report.labels > 0 {
        report.detected as f64 / report.labels as f64
    } else {
        0.0
    };
    report.f1 = if report.precision + report.recall > 0.0 {
        2.0 * report.precision * report.recall / (report.precision + report.recall)
    } else {
        0.0
    };
    report.median_delay_epochs = median(delays);
    report.series_days = series_epochs as f64 * epoch_len as f64 / 86_400.0;
    report.false_alerts_per_1000_series_days = if report.series_days > 0.0 {
        report.false_alerts as f64 / report.series_days * 1000.0
    } else {
        0.0
    };
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(c: &str, f: &str, kind: &str, s: i64, e: i64) -> Label {
        Label {
            customer: c.into(),
            feature: f.into(),
            kind: kind.into(),
            start: s,
            end: e,
            joined: None,
        }
    }

    fn raised(epoch: u64, c: &str, f: &str) -> Raised {
        Raised {
            epoch,
            customer: c.into(),
            feature: f.into(),
        }
    }

    #[test]
    fn hand_computed_scores() {
        // epoch length 300; label windows in epochs:
        //   A/rssi spike [10, 11]   (one-epoch label, extended to the next epoch)
        //   A/*    outage [20, 25]
        //   B/snr  shift  [30, 33]
        let labels = vec![
            label("A", "rssi", "spike", 3000, 3300),
            label("A", "*", "outage", 6000, 7800),
            label("B", "snr", "level_shift", 9000, 10_200),
        ];
        let alerts = vec![
            raised(11, "A", "rssi"), // detects the spike, delay 1
            raised(22, "A", "*"),    // detects the outage, delay 2
            raised(23, "A", "cpu"),  // inside the outage window: not false
            raised(30, "B", "rssi"), // wrong feature: false
            raised(40, "B", "snr"),  // after the window: false
        ];
        let r = evaluate(&labels, &alerts, 300, 2880);
        assert_eq!(r.detected, 2);
        assert_eq!(r.true_alerts, 3);
        assert_eq!(r.false_alerts, 2);
        assert!((r.precision - 0.6).abs() < 1e-12);
        assert!((r.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.f1 - 2.0 * 0.6 * (2.0 / 3.0) / (0.6 + 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(r.median_delay_epochs, Some(1.5));
        // 2880 series-epochs of 300 s = 10 series-days; 2 false alerts → 200 per 1000 series-days
        assert!((r.series_days - 10.0).abs() < 1e-12);
        assert!((r.false_alerts_per_1000_series_days - 200.0).abs() < 1e-9);
        assert_eq!(r.by_kind["level_shift"].detected, 0);
        assert_eq!(r.by_kind["spike"].median_delay_epochs, Some(1.0));
    }

    #[test]
    fn cold_start_recall_by_hand() {
        // the fleet starts at 0; C joins at epoch 100 (30,000 s): its first hour is epochs 100..112
        let with_join = |mut l: Label, j: i64| {
            l.joined = Some(j);
            l
        };
        let labels = vec![
            with_join(label("A", "rssi", "spike", 3000, 3300), 0), // from the start: detected
            with_join(label("C", "rssi", "spike", 30_900, 31_200), 30_000), // epoch 103: first hour, detected
            with_join(label("C", "snr", "spike", 33_000, 33_300), 30_000), // epoch 110: first hour, missed
            with_join(label("C", "cpu", "spike", 36_000, 36_300), 30_000), // epoch 120: later, detected
        ];
        let alerts = vec![
            raised(10, "A", "rssi"),
            raised(104, "C", "rssi"),
            raised(121, "C", "cpu"),
        ];
        let r = evaluate(&labels, &alerts, 300, 2880);
        let c = r.cold_start.expect("labels carry join times");
        assert_eq!((c.first_hour.labels, c.first_hour.detected), (2, 1));
        assert!((c.first_hour.recall - 0.5).abs() < 1e-12);
        assert_eq!(c.first_hour.median_delay_epochs, Some(1.0));
        assert_eq!((c.joiners_later.labels, c.joiners_later.detected), (1, 1));
        assert_eq!((c.from_the_start.labels, c.from_the_start.detected), (1, 1));
        // labels without join times: no cold-start section
        let plain = vec![label("A", "rssi", "spike", 3000, 3300)];
        assert!(evaluate(&plain, &alerts, 300, 2880).cold_start.is_none());
    }
}
