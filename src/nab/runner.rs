//! Runs the configured per-series model over every NAB series as a stream, and writes the results in NAB's
//! layout (`OUT/<detector>/<category>/<detector>_<file>.csv`, columns `timestamp,value,anomaly_score,label`).
//!
//! Each series is one customer with one feature, stepped by the very code the fleet pipeline runs per
//! customer and epoch ([`step_customer`]): the spec's detector, the series' own calibrated threshold, the
//! alert hysteresis. Each row is one epoch (a NAB row is one log); its real timestamp gives the daily phase,
//! so irregular cadences (realTraffic, realAdExchange) are modelled on their own clock. No row sees a later
//! one. There is no cohort here (one series per "fleet"), so a series learns for its first 255 observations
//! before it may raise, as a fleet that starts all at once does.
//!
//! The anomaly score NAB thresholds is the model's normalised score `s` (≥ 1: anomalous for this series),
//! squashed to `[0, 1)` as `s/(1 + s)`, reported on the rows where the series has no alert open. While an
//! alert is open the row reports `0`: that anomaly is already out, as the fleet pipeline emits only changes
//! (an open alert is not raised again until it clears).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::NabError;
use super::corpus::{Corpus, DataFile};
use crate::keys::CustomerId;
use crate::model::customer::{ModelConfig, StepContext, StepOut, step_customer};
use crate::model::{AnomalyKind, Detector, FeaturePrior, Registry};
use crate::record::Log;
use crate::spec::{FeatureSpec, Spec, Transform};
use crate::state::SLOT_BYTES;

/// What `fleetwatch eval --nab` runs.
#[derive(Debug, Clone)]
pub struct NabOptions {
    /// The spec whose detector and alerting parameters are used (its features are replaced by NAB's one).
    pub spec: Spec,
    /// The detector name in the results layout.
    pub name: String,
}

/// The model set up for single-series streams.
pub struct SeriesModel {
    config: ModelConfig,
    detector: std::sync::Arc<dyn Detector>,
}

impl SeriesModel {
    /// The spec's detector and alerting, for a spec with one feature, `value`, modelled as a level.
    pub fn new(spec: &Spec) -> Result<SeriesModel, NabError> {
        let mut one = spec.clone();
        one.features = vec![FeatureSpec {
            name: "value".into(),
            transform: Transform::default(),
            description: String::new(),
            bounds: None,
        }];
        let config = ModelConfig::from_spec(&one);
        let detector = Registry::builtin()
            .build(&spec.detector.name, &spec.detector.params)
            .map_err(|e| NabError::Format {
                path: "spec".into(),
                reason: e.to_string(),
            })?;
        Ok(SeriesModel { config, detector })
    }

    /// Streams one series through the model; returns its per-row anomaly scores in `[0, 1)`.
    pub fn stream(&self, file: &DataFile) -> Vec<f64> {
        to_anomaly_scores(&self.trace(file))
    }

    /// Streams one series through the model; per row, the model's normalised score and whether an alert
    /// was open before the row.
    pub fn trace(&self, file: &DataFile) -> Vec<RowTrace> {
        let customer = match CustomerId::parse(b"nab", b"") {
            Ok(c) => c,
            Err(_) => return vec![RowTrace::default(); file.len()],
        };
        let priors = [FeaturePrior::NONE];
        let mut slots = [[0u8; SLOT_BYTES]; 2];
        let mut out = StepOut {
            trace: true,
            ..StepOut::default()
        };
        let mut alert_open = false;
        let mut rows = Vec::with_capacity(file.len());
        for (i, &v) in file.values.iter().enumerate() {
            let mut log = Log::empty(customer);
            log.ts = file.unix_seconds(i);
            log.values[0] = v as f32;
            out.changes.clear();
            out.evidence.clear();
            out.scored.clear();
            out.duplicates.clear();
            let ctx = StepContext {
                config: &self.config,
                detector: self.detector.as_ref(),
                priors: &priors,
                epoch: i as u64,
            };
            step_customer(&ctx, customer, &mut slots, &[log], &mut out);
            let score = out
                .scored
                .iter()
                .find(|e| e.feature == 0)
                .map_or(0.0, |e| e.score);
            let score = if score.is_finite() {
                score.max(0.0)
            } else {
                0.0
            };
            let open_before = alert_open;
            // an update retracts and inserts (still open); a clear only retracts
            let last = out.changes.iter().rev().find(|((_, a), _)| a.feature == 0);
            if let Some(last) = last {
                alert_open = last.1 > 0;
            }
            let out_of_range = open_before
                && last.is_some_and(|((_, a), d)| *d > 0 && a.kind == AnomalyKind::OutOfRange);
            rows.push(RowTrace {
                learning: i < self.config.min_seen_without_prior as usize,
                score,
                open_before,
                out_of_range,
            });
        }
        rows
    }
}

/// One row of a series as the model saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowTrace {
    /// The series is still too young to raise (no cohort prior: its first 255 observations).
    pub learning: bool,
    /// The normalised score (≥ 1: anomalous for this series).
    pub score: f32,
    /// An alert was open before this row.
    pub open_before: bool,
    /// This row turned the open alert into an out-of-range one (a value beyond the series' history).
    pub out_of_range: bool,
}

/// NAB's anomaly score of each row: `s/(1 + s)` while no alert is open and where an open alert becomes an
/// out-of-range one (the pipeline emits both as changes), `0` otherwise (and while the series is too young
/// to raise).
pub fn to_anomaly_scores(rows: &[RowTrace]) -> Vec<f64> {
    rows.iter()
        .map(|r| {
            if (r.open_before && !r.out_of_range) || r.learning {
                0.0
            } else {
                let s = r.score as f64;
                s / (1.0 + s)
            }
        })
        .collect()
}

/// Runs the model over every file of the corpus (in parallel over the machine's cores; each series on its
/// own, so the result does not depend on the thread count).
pub fn run_detector(corpus: &Corpus, opts: &NabOptions) -> Result<Vec<Vec<f64>>, NabError> {
    let model = SeriesModel::new(&opts.spec)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(corpus.files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); corpus.files.len()];
    let chunks: Vec<Vec<(usize, Vec<f64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(f) = corpus.files.get(i) else { break };
                        done.push((i, model.stream(f)));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, s) in chunks.into_iter().flatten() {
        results[i] = s;
    }
    if let Some(f) = corpus
        .files
        .iter()
        .zip(&results)
        .find(|(f, r)| r.len() != f.len())
    {
        return Err(NabError::Format {
            path: f.0.rel.clone(),
            reason: "a runner thread failed".into(),
        });
    }
    Ok(results)
}

/// Writes the per-row results in NAB's layout under `out/<name>/`; returns that folder.
pub fn write_results(
    corpus: &Corpus,
    name: &str,
    scores: &[Vec<f64>],
    out: &Path,
) -> Result<PathBuf, NabError> {
    let base = out.join(name);
    for (f, s) in corpus.files.iter().zip(scores) {
        let dir = base.join(&f.category);
        std::fs::create_dir_all(&dir).map_err(|e| NabError::io(&dir, e))?;
        let path = dir.join(format!("{name}_{}", f.name));
        let file = std::fs::File::create(&path).map_err(|e| NabError::io(&path, e))?;
        let mut w = std::io::BufWriter::new(file);
        let labels = f.labels();
        let mut write = || -> std::io::Result<()> {
            writeln!(w, "timestamp,value,anomaly_score,label")?;
            for i in 0..f.len() {
                writeln!(
                    w,
                    "{},{},{},{}",
                    f.timestamps[i], f.raw_values[i], s[i], labels[i]
                )?;
            }
            w.flush()
        };
        write().map_err(|e| NabError::io(&path, e))?;
    }
    Ok(base)
}

/// Writes NAB's per-profile score tables (`<name>_<profile>_scores.csv`, NAB's columns and a `Totals` row)
/// and `<name>_summary.json` (thresholds, raw and normalised scores, per category) into `dir`.
pub fn write_scores(
    corpus: &Corpus,
    name: &str,
    score: &super::CorpusScore,
    dir: &Path,
) -> Result<(), NabError> {
    std::fs::create_dir_all(dir).map_err(|e| NabError::io(dir, e))?;
    for p in &score.profiles {
        let path = dir.join(format!("{name}_{}_scores.csv", p.profile));
        let file = std::fs::File::create(&path).map_err(|e| NabError::io(&path, e))?;
        let mut w = std::io::BufWriter::new(file);
        let mut write = || -> std::io::Result<()> {
            writeln!(
                w,
                "Detector,Profile,File,Threshold,Score,TP,TN,FP,FN,Total_Count"
            )?;
            let (mut s, mut tp, mut tn, mut fp, mut fn_, mut total) = (0.0, 0, 0, 0, 0, 0);
            for f in &p.files {
                let a = &f.at;
                writeln!(
                    w,
                    "{name},{},{},{},{},{},{},{},{},{}",
                    p.profile, f.file, p.threshold, a.score, a.tp, a.tn, a.fp, a.fn_, a.total
                )?;
                s += a.score;
                (tp, tn, fp, fn_, total) = (
                    tp + a.tp,
                    tn + a.tn,
                    fp + a.fp,
                    fn_ + a.fn_,
                    total + a.total,
                );
            }
            writeln!(w, "Totals,,,,{s},{tp},{tn},{fp},{fn_},{total}")?;
            w.flush()
        };
        write().map_err(|e| NabError::io(&path, e))?;
    }
    let mut categories: Vec<&str> = corpus.files.iter().map(|f| f.category.as_str()).collect();
    categories.dedup();
    let summary: Vec<serde_json::Value> = score
        .profiles
        .iter()
        .map(|p| {
            let tp_weight = corpus.profile(&p.profile).map_or(1.0, |x| x.tp_weight);
            let per_category: std::collections::BTreeMap<&str, super::scorer::CategoryScore> =
                categories
                    .iter()
                    .map(|c| (*c, p.category(c, tp_weight)))
                    .collect();
            serde_json::json!({
                "profile": p.profile,
                "threshold": p.threshold,
                "raw": p.raw,
                "null": p.null_raw,
                "perfect": p.perfect,
                "normalised": p.normalised,
                "windows": corpus.window_count(),
                "windows_detected": p.windows_detected,
                "false_positives": p.false_positives,
                "categories": per_category,
            })
        })
        .collect();
    let path = dir.join(format!("{name}_summary.json"));
    let text = serde_json::to_string_pretty(&summary)
        .map_err(|e| NabError::format(&path, e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| NabError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(score: f32, open_before: bool, out_of_range: bool) -> RowTrace {
        RowTrace {
            learning: false,
            score,
            open_before,
            out_of_range,
        }
    }

    #[test]
    fn a_row_scores_while_no_alert_is_open_and_where_the_alert_turns_out_of_range() {
        let rows = [
            RowTrace {
                learning: true,
                ..row(3.0, false, false)
            }, // learning: nothing
            row(0.25, false, false), // quiet: s/(1+s) = 0.2
            row(1.0, false, false),  // the raise: 0.5
            row(4.0, true, false),   // inside the open episode: hidden
            row(3.0, true, true),    // the open alert became out_of_range: 0.75
            row(9.0, true, false),   // hidden again
        ];
        assert_eq!(to_anomaly_scores(&rows), [0.0, 0.2, 0.5, 0.0, 0.75, 0.0]);
    }
}
