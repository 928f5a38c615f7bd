//! Cohort priors: per-feature population statistics, maintained incrementally by the dataflow.
//!
//! Every warm series contributes its summary (level, noise scale, daily harmonics) to its feature's
//! statistics; when its summary changes, it contributes the difference. The statistics are integers — counts
//! in log-spaced histograms and fixed-point sums — so they form an Abelian group and accumulate to exactly
//! the same values whatever the order, worker layout or batching of the contributions. Each epoch every
//! worker emits the sparse sum of its series' differences; all workers receive all differences (broadcast)
//! and derive the same [`FeaturePrior`] per feature: the histogram medians and the mean harmonics.
//!
//! ```text
//! stat 0         count of warm series
//! stat 1..=4     Σ round(1024·θ_k)                   (mean daily rhythm)
//! stat 5..261    level histogram, bin = round(4·sign(x)·log2(1+|x|)) clamped to ±127
//! stat 261..421  relative-scale histogram, bin = round(4·log2(S/|L|)) clamped to [−80, 79]
//!
//! The scale is kept relative to the level: customers of one feature differ by orders of magnitude in level
//! (10 vs 900 Mbps) far more than in relative noise, so `S/|L|` transfers to a newcomer, `S` does not.
//! ```

use serde::{Deserialize, Serialize};

use super::{FeaturePrior, SeriesSummary};

const SEASON_SCALE: f64 = 1024.0;
const LEVEL_BINS: usize = 256;
const SCALE_BINS: usize = 160;
const LEVEL_BASE: usize = 5;
const SCALE_BASE: usize = LEVEL_BASE + LEVEL_BINS;
/// Statistics per feature.
pub const STATS_PER_FEATURE: usize = SCALE_BASE + SCALE_BINS;

/// One difference of one statistic (what crosses the network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CohortDelta {
    pub feature: u16,
    pub stat: u16,
    pub delta: i64,
}

fn level_bin(x: f32) -> usize {
    let x = x as f64;
    let b = (4.0 * x.signum() * (1.0 + x.abs()).log2()).round();
    (b.clamp(-127.0, 127.0) as i64 + 128) as usize
}

fn level_center(i: usize) -> f32 {
    let b = i as f64 - 128.0;
    (b.signum() * ((b.abs() / 4.0).exp2() - 1.0)) as f32
}

fn scale_bin(s: f32) -> usize {
    let s = (s as f64).max(1e-12);
    let b = (4.0 * s.log2()).round();
    (b.clamp(-80.0, 79.0) as i64 + 80) as usize
}

fn scale_center(i: usize) -> f32 {
    ((i as f64 - 80.0) / 4.0).exp2() as f32
}

/// Sparse per-worker accumulation of one epoch's differences.
pub struct CohortAccumulator {
    features: usize,
    dense: Vec<i64>,
    touched: Vec<u32>,
}

impl CohortAccumulator {
    pub fn new(features: usize) -> Self {
        CohortAccumulator {
            features,
            dense: vec![0; features * STATS_PER_FEATURE],
            touched: Vec::new(),
        }
    }

    #[inline]
    fn add(&mut self, feature: usize, stat: usize, d: i64) {
        if d == 0 {
            return;
        }
        let i = feature * STATS_PER_FEATURE + stat;
        if self.dense[i] == 0 {
            self.touched.push(i as u32);
        }
        self.dense[i] += d;
    }

    /// Adds (`sign = 1`) or removes (`sign = -1`) one series' summary.
    pub fn contribute(&mut self, feature: usize, s: &SeriesSummary, sign: i64) {
        if feature >= self.features || !s.level.is_finite() || !s.scale.is_finite() {
            return;
        }
        self.add(feature, 0, sign);
        for k in 0..4 {
            let v = (s.season[k] as f64 * SEASON_SCALE).round();
            let v = v.clamp(-1e12, 1e12) as i64;
            self.add(feature, 1 + k, sign * v);
        }
        self.add(feature, LEVEL_BASE + level_bin(s.level), sign);
        let rel = s.scale / s.level.abs().max(1e-6);
        self.add(feature, SCALE_BASE + scale_bin(rel), sign);
    }

    /// Replaces a series' old summary by its new one (no-op when they fall in the same bins).
    pub fn replace(
        &mut self,
        feature: usize,
        old: Option<&SeriesSummary>,
        new: Option<&SeriesSummary>,
    ) {
        if let Some(o) = old {
            self.contribute(feature, o, -1);
        }
        if let Some(n) = new {
            self.contribute(feature, n, 1);
        }
    }

    /// Drains the non-zero differences, sorted (deterministic message content).
    pub fn drain(&mut self, out: &mut Vec<CohortDelta>) {
        self.touched.sort_unstable();
        for &i in &self.touched {
            let i = i as usize;
            let d = self.dense[i];
            if d != 0 {
                out.push(CohortDelta {
                    feature: (i / STATS_PER_FEATURE) as u16,
                    stat: (i % STATS_PER_FEATURE) as u16,
                    delta: d,
                });
            }
            self.dense[i] = 0;
        }
        self.touched.clear();
    }
}

/// The accumulated population statistics (identical on every worker).
#[derive(Clone)]
pub struct CohortStats {
    features: usize,
    stats: Vec<i64>,
}

impl CohortStats {
    pub fn new(features: usize) -> Self {
        CohortStats {
            features,
            stats: vec![0; features * STATS_PER_FEATURE],
        }
    }

    /// Statistics as a checkpoint stored them (`None` unless there are `features · STATS_PER_FEATURE`).
    pub fn from_raw(features: usize, stats: Vec<i64>) -> Option<Self> {
        (stats.len() == features * STATS_PER_FEATURE).then_some(CohortStats { features, stats })
    }

    /// The raw statistics (for a checkpoint).
    pub fn raw(&self) -> &[i64] {
        &self.stats
    }

    pub fn apply(&mut self, d: &CohortDelta) {
        let i = d.feature as usize * STATS_PER_FEATURE + d.stat as usize;
        if let Some(s) = self.stats.get_mut(i) {
            *s += d.delta;
        }
    }

    /// The prior of every feature.
    pub fn priors(&self) -> Vec<FeaturePrior> {
        (0..self.features).map(|f| self.prior(f)).collect()
    }

    pub fn prior(&self, f: usize) -> FeaturePrior {
        let s = &self.stats[f * STATS_PER_FEATURE..(f + 1) * STATS_PER_FEATURE];
        let count = s[0];
        if count <= 0 {
            return FeaturePrior::NONE;
        }
        let mut season = [0f32; 4];
        for k in 0..4 {
            season[k] = (s[1 + k] as f64 / SEASON_SCALE / count as f64) as f32;
        }
        FeaturePrior {
            count: count as u64,
            level: level_center(median_bin(&s[LEVEL_BASE..LEVEL_BASE + LEVEL_BINS], count)),
            scale: scale_center(median_bin(&s[SCALE_BASE..SCALE_BASE + SCALE_BINS], count)),
            season,
        }
    }
}

fn median_bin(hist: &[i64], count: i64) -> usize {
    let half = (count + 1) / 2;
    let mut acc = 0;
    for (i, c) in hist.iter().enumerate() {
        acc += c;
        if acc >= half {
            return i;
        }
    }
    hist.len() / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(level: f32, scale: f32) -> SeriesSummary {
        SeriesSummary {
            level,
            scale,
            season: [2.0, -1.0, 0.0, 0.5],
        }
    }

    #[test]
    fn bins_invert() {
        for x in [-1000.0f32, -60.0, 0.0, 1.0, 250.0, 1e6] {
            let c = level_center(level_bin(x));
            assert!((c - x).abs() <= 0.1 * x.abs() + 0.2, "{x} -> {c}");
        }
        for s in [0.01f32, 0.5, 3.0, 4000.0] {
            let c = scale_center(scale_bin(s));
            assert!((c / s - 1.0).abs() < 0.1, "{s} -> {c}");
        }
    }

    #[test]
    fn order_independent_and_retractable() {
        let mut a = CohortAccumulator::new(2);
        let mut b = CohortAccumulator::new(2);
        let xs = [
            summary(-60.0, 2.0),
            summary(-70.0, 3.0),
            summary(-65.0, 2.5),
        ];
        for s in &xs {
            a.contribute(1, s, 1);
        }
        for s in xs.iter().rev() {
            b.contribute(1, s, 1);
        }
        let (mut da, mut db) = (Vec::new(), Vec::new());
        a.drain(&mut da);
        b.drain(&mut db);
        assert_eq!(da, db);
        let mut stats = CohortStats::new(2);
        for d in &da {
            stats.apply(d);
        }
        let p = stats.prior(1);
        assert_eq!(p.count, 3);
        assert!((p.level - -65.0).abs() < 6.0, "median level {}", p.level);
        // relative scales 2/60, 3/70, 2.5/65 → median 0.0385
        assert!(
            (p.scale - 0.0385).abs() < 0.004,
            "median relative scale {}",
            p.scale
        );
        assert!((p.season[0] - 2.0).abs() < 1e-3);
        assert_eq!(stats.prior(0), FeaturePrior::NONE);
        // retract everything: back to no prior
        let mut r = CohortAccumulator::new(2);
        for s in &xs {
            r.contribute(1, s, -1);
        }
        let mut dr = Vec::new();
        r.drain(&mut dr);
        for d in &dr {
            stats.apply(d);
        }
        assert_eq!(stats.prior(1), FeaturePrior::NONE);
    }
}
