//! NAB's scoring rules (v1.1), ported from `nab/sweeper.py`, `nab/optimizer.py`, `nab/scorer.py` and
//! `nab/runner.py` (`normalize`). Each step keeps NAB's order of operations so ties and edge cases behave the
//! same.
//!
//! Per row `i` of a file with `n` rows (`calcSweepScore`):
//!
//! ```text
//! σ(x) = 1/(1 + e^(−x)),   S(y) = −1 if y > 3, else 2σ(−5y) − 1                the scaled sigmoid
//! inside window [a, b]:   y = −(b − i + 1)/(b − a + 1),  w = S(y)·A_TP / S(−1)   earliest row ≈ A_TP
//! outside, after [a', b']: y = |b' − i| / (b' − a'),     w = S(y)·A_FP            (negative: a penalty)
//! outside, before any window:                              w = −A_FP
//! probationary rows, i < min(⌊0.15·n⌋, 0.15·5000), are not scored at all
//! ```
//!
//! At a threshold θ every scored row with anomaly score ≥ θ is a detection (`calcScoreByThreshold`):
//!
//! ```text
//! score(θ) = Σ_{detections outside windows} w  +  Σ_windows (max w of its detections, or −A_FN if none)
//! ```
//!
//! θ is optimised once per detector and profile over the whole corpus (the highest θ among the best scores),
//! every file is scored at it, and the corpus total is normalised:
//!
//! ```text
//! normalised = 100 · (score − score_null) / (perfect − score_null),   perfect = A_TP · (number of windows)
//! ```
//!
//! where `score_null` is the same procedure applied to the null detector (a constant score on every row).

use serde::Serialize;

use super::corpus::{Corpus, DataFile, Profile};

/// Where a row sits for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// In the probationary period: not scored.
    Probationary,
    /// Inside the label window with this corpus-wide id.
    Window(u32),
    /// Outside every window.
    Outside,
}

/// One row with its anomaly score and its weighted reward if it were a detection (NAB's `AnomalyPoint`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub score: f64,
    pub sweep: f64,
    pub zone: Zone,
}

/// The outcome at one threshold (NAB's `ThresholdScore`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdScore {
    pub threshold: f64,
    pub score: f64,
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub total: u64,
}

impl ThresholdScore {
    /// The row for a threshold and its counts (`total` is their sum).
    pub fn new(threshold: f64, score: f64, tp: u64, tn: u64, fp: u64, fn_: u64) -> ThresholdScore {
        ThresholdScore {
            threshold,
            score,
            tp,
            tn,
            fp,
            fn_,
            total: tp + tn + fp + fn_,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// NAB's scaled sigmoid of a relative position (−1: the window's left edge, 0: its right edge, > 0: after it).
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 * sigmoid(-5.0 * y) - 1.0
    }
}

/// NAB's `Sweeper` for one profile.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub probation_percent: f64,
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
}

impl Sweeper {
    pub fn new(probation_percent: f64, profile: &Profile) -> Sweeper {
        Sweeper {
            probation_percent,
            tp_weight: profile.tp_weight,
            fp_weight: profile.fp_weight,
            fn_weight: profile.fn_weight,
        }
    }

    /// `min(⌊p·n⌋, p·5000)` rows.
    pub fn probationary_length(&self, rows: usize) -> f64 {
        (self.probation_percent * rows as f64)
            .floor()
            .min(self.probation_percent * 5000.0)
    }

    /// Appends one file's rows to `out` (`calcSweepScore`); its windows get ids `first_window..`.
    pub fn sweep_file(
        &self,
        file: &DataFile,
        scores: &[f64],
        first_window: u32,
        out: &mut Vec<Point>,
    ) {
        let ts = &file.micros;
        let max_tp = scaled_sigmoid(-1.0);
        let probation = self.probationary_length(ts.len());
        let mut pending = file.windows.iter().enumerate().peekable();
        // (id, right index, width)
        let mut cur: Option<(u32, usize, f64)> = None;
        let mut prev: Option<(usize, f64)> = None;
        for (i, (&t, &s)) in ts.iter().zip(scores).enumerate() {
            if let Some(&(k, &(a, b))) = pending.peek()
                && t == ts[a]
            {
                pending.next();
                cur = Some((first_window + k as u32, b, (b - a + 1) as f64));
            }
            let sweep = match cur {
                Some((_, right, width)) => {
                    let y = -((right as f64 - i as f64 + 1.0) / width);
                    scaled_sigmoid(y) * self.tp_weight / max_tp
                }
                None => {
                    let unweighted = match prev {
                        None => -1.0,
                        Some((right, width)) => {
                            scaled_sigmoid((right as f64 - i as f64).abs() / (width - 1.0))
                        }
                    };
                    unweighted * self.fp_weight
                }
            };
            let zone = if (i as f64) < probation {
                Zone::Probationary
            } else {
                cur.map_or(Zone::Outside, |(id, _, _)| Zone::Window(id))
            };
            out.push(Point {
                score: if s.is_nan() { 0.0 } else { s },
                sweep,
                zone,
            });
            if let Some((_, right, width)) = cur
                && t == ts[right]
            {
                prev = Some((i, width));
                cur = None;
            }
        }
    }

    /// The score at every distinct threshold, from above the highest anomaly score down to the lowest
    /// (`calcScoreByThreshold`). `windows` bounds the window ids.
    pub fn score_by_threshold(&self, points: &[Point], windows: usize) -> Vec<ThresholdScore> {
        let mut scorable: Vec<&Point> = points
            .iter()
            .filter(|p| p.zone != Zone::Probationary)
            .collect();
        // stable, descending (Python's `sorted(..., reverse=True)` keeps equal scores in input order)
        scorable.sort_by(|a, b| b.score.total_cmp(&a.score));
        // score parts: "fp" first, then each window in order of first appearance, starting at −A_FN
        let mut part: Vec<Option<f64>> = vec![None; windows];
        let mut order: Vec<u32> = Vec::new();
        for p in &scorable {
            if let Zone::Window(w) = p.zone
                && part[w as usize].is_none()
            {
                part[w as usize] = Some(-self.fn_weight);
                order.push(w);
            }
        }
        let mut fp_part = 0.0f64;
        let sum = |fp_part: f64, part: &[Option<f64>]| -> f64 {
            let mut s = fp_part;
            for &w in &order {
                s += part[w as usize].unwrap_or(0.0);
            }
            s
        };
        let mut tn = scorable.iter().filter(|p| p.zone == Zone::Outside).count() as u64;
        let mut fn_ = scorable.len() as u64 - tn;
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut out = Vec::new();
        let mut threshold = 1.1f64;
        for p in &scorable {
            if p.score != threshold {
                out.push(ThresholdScore::new(
                    threshold,
                    sum(fp_part, &part),
                    tp,
                    tn,
                    fp,
                    fn_,
                ));
                threshold = p.score;
            }
            match p.zone {
                Zone::Window(w) => {
                    tp += 1;
                    fn_ -= 1;
                    let slot = &mut part[w as usize];
                    *slot = Some(slot.unwrap_or(-self.fn_weight).max(p.sweep));
                }
                _ => {
                    fp += 1;
                    tn -= 1;
                    fp_part += p.sweep;
                }
            }
        }
        out.push(ThresholdScore::new(
            threshold,
            sum(fp_part, &part),
            tp,
            tn,
            fp,
            fn_,
        ));
        out
    }

    /// The row of `rows` that applies at `threshold` (`scoreDataSet`): the exact threshold, or the last one
    /// above it. (NAB fails when the threshold is below every score of a file; this takes the last row, which
    /// is what detecting every row means.)
    pub fn at_threshold(rows: &[ThresholdScore], threshold: f64) -> ThresholdScore {
        let mut prev: Option<&ThresholdScore> = None;
        for r in rows {
            if r.threshold == threshold {
                return *r;
            }
            if r.threshold < threshold {
                return *prev.unwrap_or(r);
            }
            prev = Some(r);
        }
        rows.last()
            .copied()
            .unwrap_or(ThresholdScore::new(threshold, 0.0, 0, 0, 0, 0))
    }
}

/// One file's figures at the corpus threshold (a line of NAB's `<detector>_<profile>_scores.csv`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileScore {
    pub file: String,
    pub category: String,
    #[serde(flatten)]
    pub at: ThresholdScore,
    /// The null detector's score on this file (for per-category normalisation).
    pub null_score: f64,
    pub windows: usize,
}

/// One profile's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileScore {
    pub profile: String,
    /// The corpus-optimal threshold.
    pub threshold: f64,
    /// The raw corpus score (Σ of the files' scores at the threshold).
    pub raw: f64,
    pub null_raw: f64,
    pub perfect: f64,
    /// 100·(raw − null)/(perfect − null).
    pub normalised: f64,
    /// Windows with at least one detection (outside the probationary period) at the threshold.
    pub windows_detected: usize,
    /// Detections outside every window.
    pub false_positives: u64,
    pub files: Vec<FileScore>,
}

impl ProfileScore {
    /// One category's raw score (Σ of its files') and normalised score over its files (`None` when it has no
    /// windows: nothing to normalise against).
    pub fn category(&self, category: &str, tp_weight: f64) -> CategoryScore {
        let files = self.files.iter().filter(|f| f.category == category);
        let (mut raw, mut null, mut windows) = (0.0, 0.0, 0usize);
        for f in files {
            raw += f.at.score;
            null += f.null_score;
            windows += f.windows;
        }
        let perfect = windows as f64 * tp_weight;
        CategoryScore {
            raw,
            normalised: (windows > 0).then(|| 100.0 * (raw - null) / (perfect - null)),
        }
    }
}

/// A category's figures at the corpus threshold.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CategoryScore {
    pub raw: f64,
    pub normalised: Option<f64>,
}

/// A detector's result on the corpus, per profile in [`Corpus::profiles`] order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CorpusScore {
    pub profiles: Vec<ProfileScore>,
}

impl CorpusScore {
    pub fn normalised(&self, profile: &str) -> Option<f64> {
        self.profiles
            .iter()
            .find(|p| p.profile == profile)
            .map(|p| p.normalised)
    }
}

/// Optimises the threshold over the corpus and scores every file at it (`optimizeThreshold` +
/// `scoreCorpus`). Returns the threshold row and the per-file rows.
fn optimise_and_score(
    sweeper: &Sweeper,
    corpus: &Corpus,
    scores: &[Vec<f64>],
) -> (ThresholdScore, Vec<ThresholdScore>) {
    let windows = corpus.window_count();
    let mut all = Vec::new();
    let mut per_file = Vec::with_capacity(corpus.files.len());
    let mut first = 0u32;
    for (f, s) in corpus.files.iter().zip(scores) {
        let start = all.len();
        sweeper.sweep_file(f, s, first, &mut all);
        per_file.push(start..all.len());
        first += f.windows.len() as u32;
    }
    let rows = sweeper.score_by_threshold(&all, windows);
    // the first (highest-threshold) row with the best score, as Python's stable sort picks it
    let best = rows
        .iter()
        .fold(None::<&ThresholdScore>, |b, r| match b {
            Some(b) if b.score >= r.score => Some(b),
            _ => Some(r),
        })
        .copied()
        .unwrap_or(ThresholdScore::new(1.1, 0.0, 0, 0, 0, 0));
    let files = per_file
        .into_iter()
        .map(|r| {
            let rows = sweeper.score_by_threshold(&all[r], windows);
            Sweeper::at_threshold(&rows, best.threshold)
        })
        .collect();
    (best, files)
}

/// Scores a detector's per-row anomaly scores (one vector per file of `corpus`, in its order) with NAB's
/// rules, for every profile.
pub fn score_corpus(corpus: &Corpus, scores: &[Vec<f64>]) -> CorpusScore {
    let null_scores: Vec<Vec<f64>> = corpus.files.iter().map(|f| vec![0.5; f.len()]).collect();
    let profiles = corpus
        .profiles
        .iter()
        .map(|p| {
            let sweeper = Sweeper::new(corpus.probationary_percent, p);
            let (best, rows) = optimise_and_score(&sweeper, corpus, scores);
            let (_, null_rows) = optimise_and_score(&sweeper, corpus, &null_scores);
            let raw: f64 = rows.iter().map(|r| r.score).sum();
            let null_raw: f64 = null_rows.iter().map(|r| r.score).sum();
            let perfect = corpus.window_count() as f64 * p.tp_weight;
            let files = corpus
                .files
                .iter()
                .zip(rows.iter().zip(&null_rows))
                .map(|(f, (r, n))| FileScore {
                    file: f.rel.clone(),
                    category: f.category.clone(),
                    at: *r,
                    null_score: n.score,
                    windows: f.windows.len(),
                })
                .collect();
            let windows_detected = corpus
                .files
                .iter()
                .zip(scores)
                .map(|(f, s)| {
                    let first = sweeper.probationary_length(f.len());
                    f.windows
                        .iter()
                        .filter(|&&(a, b)| {
                            (a..=b).any(|i| (i as f64) >= first && s[i] >= best.threshold)
                        })
                        .count()
                })
                .sum();
            ProfileScore {
                false_positives: rows.iter().map(|r| r.fp).sum(),
                windows_detected,
                profile: p.name.clone(),
                threshold: best.threshold,
                raw,
                null_raw,
                perfect,
                normalised: 100.0 * (raw - null_raw) / (perfect - null_raw),
                files,
            }
        })
        .collect();
    CorpusScore { profiles }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: usize, windows: Vec<(usize, usize)>) -> DataFile {
        DataFile {
            rel: "cat/f.csv".into(),
            category: "cat".into(),
            name: "f.csv".into(),
            timestamps: (0..n).map(|i| i.to_string()).collect(),
            micros: (0..n as i64).map(|i| i * 300_000_000).collect(),
            raw_values: vec!["0".into(); n],
            values: vec![0.0; n],
            windows,
        }
    }

    fn standard() -> Sweeper {
        Sweeper {
            probation_percent: 0.15,
            tp_weight: 1.0,
            fp_weight: 0.11,
            fn_weight: 1.0,
        }
    }

    #[test]
    fn scaled_sigmoid_matches_nab_docstring() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614).abs() < 1e-6);
        assert!((scaled_sigmoid(-0.5) - 0.848_283).abs() < 1e-6);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!((scaled_sigmoid(1.0) + 0.986_614).abs() < 1e-6);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750_rows() {
        let s = standard();
        assert_eq!(s.probationary_length(100), 15.0);
        assert_eq!(s.probationary_length(1243), 186.0);
        assert_eq!(s.probationary_length(20_000), 750.0);
    }

    #[test]
    fn sweep_scores_by_hand() {
        // 40 rows: probation 6; window rows 20..=24 (width 5)
        let f = file(40, vec![(20, 24)]);
        let mut pts = Vec::new();
        standard().sweep_file(&f, &vec![0.0; 40], 0, &mut pts);
        assert_eq!(pts[5].zone, Zone::Probationary);
        assert_eq!(pts[6].zone, Zone::Outside);
        assert!(
            (pts[6].sweep + 0.11).abs() < 1e-12,
            "before any window: −A_FP"
        );
        assert_eq!(pts[20].zone, Zone::Window(0));
        // first row of the window: y = −5/5 = −1 → full A_TP
        assert!((pts[20].sweep - 1.0).abs() < 1e-12);
        // last row: y = −1/5 → S(−0.2)/S(−1)
        let expect = scaled_sigmoid(-0.2) / scaled_sigmoid(-1.0);
        assert!((pts[24].sweep - expect).abs() < 1e-12);
        // two rows after the window: y = 2/(5 − 1) = 0.5 → 0.11·S(0.5)
        assert_eq!(pts[26].zone, Zone::Outside);
        assert!((pts[26].sweep - 0.11 * scaled_sigmoid(0.5)).abs() < 1e-12);
        assert!(pts[26].sweep < 0.0);
    }

    #[test]
    fn threshold_sweep_by_hand() {
        let f = file(40, vec![(20, 24)]);
        let mut scores = vec![0.0; 40];
        scores[22] = 0.9; // a detection in the window, y = −3/5
        scores[30] = 0.7; // a false positive after it
        scores[2] = 1.0; // probationary: never counts
        let s = standard();
        let mut pts = Vec::new();
        s.sweep_file(&f, &scores, 0, &mut pts);
        let rows = s.score_by_threshold(&pts, 1);
        assert_eq!(rows[0].threshold, 1.1);
        assert_eq!(rows[0].score, -1.0); // the window missed
        assert_eq!(rows[1].threshold, 0.9);
        let tp = scaled_sigmoid(-0.6) / scaled_sigmoid(-1.0);
        assert!((rows[1].score - tp).abs() < 1e-12);
        assert_eq!((rows[1].tp, rows[1].fp), (1, 0));
        assert_eq!(rows[2].threshold, 0.7);
        let fp = 0.11 * scaled_sigmoid(6.0 / 4.0);
        assert!((rows[2].score - (tp + fp)).abs() < 1e-12);
        // at 0.0 every scorable row is a detection: 34 rows, 5 in the window
        let last = rows.last().copied().unwrap_or(rows[0]);
        assert_eq!(last.threshold, 0.0);
        assert_eq!((last.tp, last.fp, last.total), (5, 29, 34));
        // the threshold lookup: exact, or the last row above it
        assert_eq!(Sweeper::at_threshold(&rows, 0.9).threshold, 0.9);
        assert_eq!(Sweeper::at_threshold(&rows, 0.8).threshold, 0.9);
        assert_eq!(Sweeper::at_threshold(&rows, -1.0).threshold, 0.0);
    }
}
