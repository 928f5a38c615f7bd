//! The per-series model: detectors, personal thresholds with hysteresis, cohort priors, and the per-customer
//! epoch step that ties them together.
//!
//! The math is isolated here, free of timely and differential: every function works on plain slots and logs
//! and is unit-tested against hand-computed values. `docs/model.md` states the equations.
//!
//! * [`Detector`] — the pluggable part: learns a series online and scores each observation. Implement it,
//!   register it in [`registry`], name it in a spec's `[detector]`, done.
//! * [`alert`] — per-series calibration (the series' own surprise quantile) and raise/update/clear hysteresis.
//! * [`cohort`] — per-feature population statistics (integer histograms, exact under any merge order) that give
//!   a new series its prior until its own model is warm.
//! * [`customer`] — one customer's epoch: dedupe, reboot detection, every feature's detector, dropout and
//!   silence, alert transitions, cohort contributions.
//! * [`global`] — the global model: one network shared by the fleet says what a customer's features imply
//!   about each other; its residual, calibrated per series, is the `relationship` evidence.
//! * [`incident`] — a network element's epoch against its own learned normal: outages, many members
//!   alerting, congestion (members moving together, each a little).

pub mod alert;
pub mod cohort;
pub mod customer;
pub mod ewma;
pub mod global;
pub mod header;
pub mod incident;
pub mod registry;
pub mod seasonal;
pub mod tails;

use serde::{Deserialize, Serialize};

use crate::state::SLOT_BYTES;

pub use registry::{DetectorParams, Registry};

/// Bytes of a slot the detector owns (the rest is the framework's [`header::SeriesHeader`]).
pub const DETECTOR_BYTES: usize = SLOT_BYTES - header::HEADER_BYTES;

/// A detector's private state, as bytes (each detector defines its own little-endian layout).
pub type DetectorState = [u8; DETECTOR_BYTES];

/// What kind of anomaly a score points at.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A single observation far from the prediction.
    #[default]
    Spike,
    /// A persistent move of the level (or a slow drift that accumulated), from the CUSUM statistics.
    LevelShift,
    /// The series became much noisier than its own normal.
    VarianceBurst,
    /// The series repeats the exact same value far longer than it ever does.
    StuckValue,
    /// The feature stopped reporting while the customer still sends logs.
    Dropout,
    /// The customer sent no log for several epochs.
    Silent,
    /// A value outside everything the series ever showed, by more than a tolerance of that range.
    OutOfRange,
    /// The feature no longer fits the customer's other features (the global model, [`global`]): each may
    /// be inside its own band.
    Relationship,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 8] = [
        AnomalyKind::Spike,
        AnomalyKind::LevelShift,
        AnomalyKind::VarianceBurst,
        AnomalyKind::StuckValue,
        AnomalyKind::Dropout,
        AnomalyKind::Silent,
        AnomalyKind::OutOfRange,
        AnomalyKind::Relationship,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::LevelShift => "level_shift",
            AnomalyKind::VarianceBurst => "variance_burst",
            AnomalyKind::StuckValue => "stuck_value",
            AnomalyKind::Dropout => "dropout",
            AnomalyKind::Silent => "silent",
            AnomalyKind::OutOfRange => "out_of_range",
            AnomalyKind::Relationship => "relationship",
        }
    }

    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn from_index(i: u8) -> AnomalyKind {
        AnomalyKind::ALL
            .get(i as usize)
            .copied()
            .unwrap_or(AnomalyKind::Spike)
    }
}

/// How the series' raw values are turned into what the detector models (copied from the spec).
pub use crate::spec::Transform;

/// One observation of one series, with everything a detector may use.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// The raw value from the log.
    pub value: f32,
    /// Event time, Unix seconds.
    pub ts: i64,
    /// Epochs since this series' previous observation (0 for the first one).
    pub gap_epochs: u32,
    /// Observations this series has had before this one (saturating).
    pub seen: u8,
    /// The finest step its values have shown (1 for integer counts, 0.1 for one decimal...): a noise scale
    /// below half of it is an artefact of rounding, not a real calm.
    pub resolution: f32,
    /// `[cos φ, sin φ, cos 2φ, sin 2φ]` of the daily phase φ = 2π·(ts mod 86400)/86400.
    pub phase: [f32; 4],
    /// Epochs since the start of the current weekend (Saturday 00:00 UTC), counting the one holding `ts`
    /// as 0; 0 on weekdays ([`Observation::weekend_step_of`]).
    pub weekend_step: u32,
    pub transform: Transform,
    /// Whether the value sits at one of the feature's declared bounds (spec `bounds`): a run of repeats
    /// there is saturation, not a stuck sensor, and the value is censored (the quantity behind it may lie
    /// anywhere beyond the bound).
    pub at_bound: AtBound,
}

/// Where an observation sits relative to its feature's declared bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtBound {
    /// Strictly inside (or the feature declares none).
    #[default]
    Inside,
    /// At (or below) the lower bound: the quantity is at most this value.
    Lower,
    /// At (or above) the upper bound: the quantity is at least this value.
    Upper,
}

impl AtBound {
    /// The side of `[lo, hi]` that `v` sits at.
    #[inline]
    pub fn of(v: f32, bounds: Option<(f32, f32)>) -> AtBound {
        match bounds {
            Some((lo, _)) if v <= lo => AtBound::Lower,
            Some((_, hi)) if v >= hi => AtBound::Upper,
            _ => AtBound::Inside,
        }
    }

    /// A prediction `p` for an observation `x` at this bound agrees with it: it lies beyond the bound.
    #[inline]
    pub fn agrees(self, x: f32, p: f32) -> bool {
        match self {
            AtBound::Inside => false,
            AtBound::Lower => p < x,
            AtBound::Upper => p > x,
        }
    }
}

impl Observation {
    /// Whole epochs of `epoch_seconds` between Saturday 00:00 UTC and `ts` on a weekend; 0 on weekdays.
    pub fn weekend_step_of(ts: i64, epoch_seconds: i64) -> u32 {
        let day = crate::timefmt::weekday(ts);
        if day < 5 {
            return 0;
        }
        let into_weekend = (day as i64 - 5) * 86_400 + ts.rem_euclid(86_400);
        (into_weekend / epoch_seconds.max(1)) as u32
    }

    /// The daily phase features of a timestamp.
    pub fn daily_phase(ts: i64) -> [f32; 4] {
        let phi = std::f64::consts::TAU * (ts.rem_euclid(86_400) as f64) / 86_400.0;
        let (s1, c1) = phi.sin_cos();
        // double-angle: cos 2φ = c² − s², sin 2φ = 2sc
        [
            c1 as f32,
            s1 as f32,
            (c1 * c1 - s1 * s1) as f32,
            (2.0 * s1 * c1) as f32,
        ]
    }
}

/// A detector's verdict on one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// The quantity the detector modelled: the value itself, or for `rate` series the increase per epoch.
    pub observed: f32,
    /// The prediction for `observed`.
    pub expected: f32,
    /// The series' noise scale σ at this observation (the band is `expected ± threshold·σ`).
    pub sigma: f32,
    /// How surprising this one observation is, in σ (≥ 0): the point-wise score. The framework calibrates
    /// each series' threshold on its own history of it.
    pub surprise: f32,
    /// The signed residual against the series' level and rhythm alone, in σ: without the short-term memory
    /// of the last residual that `expected` carries (for a detector without one, the signed surprise). A
    /// persistent small move stays in it while the memory absorbs most of it from `surprise`: what an
    /// element's congestion evidence sums over its members (`model::incident`). 0 when censored.
    pub baseline: f32,
    /// The strongest sustained evidence (shift, variance, stuck value...), normalised so that 1 is the
    /// detector's own alarm point for a series with Gaussian-like noise; the framework raises that bar for
    /// series with heavier tails.
    pub sustained: f32,
    /// What `sustained` points at.
    pub kind: AnomalyKind,
    /// For `rate` series: the counter went down (a reset, e.g. a reboot for `uptime_s`).
    pub reset: bool,
    /// False while the detector has not seen enough to score (the observation only taught it).
    pub scored: bool,
    /// The observation sat at a declared bound that its prediction lies beyond ([`AtBound::agrees`]): it
    /// is no surprise, and says nothing about the series' tails (the framework does not calibrate on it).
    pub censored: bool,
}

impl Assessment {
    /// A verdict that scores nothing (first observation, counter reset...).
    pub fn learn_only(observed: f32, expected: f32) -> Assessment {
        Assessment {
            observed,
            expected,
            sigma: 0.0,
            surprise: 0.0,
            baseline: 0.0,
            sustained: 0.0,
            kind: AnomalyKind::Spike,
            reset: false,
            scored: false,
            censored: false,
        }
    }
}

/// What a warm series contributes to its cohort's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesSummary {
    pub level: f32,
    pub scale: f32,
    /// Daily seasonal coefficients `[a1, b1, a2, b2]` (zero for detectors without seasonality).
    pub season: [f32; 4],
}

/// The cohort's prior for a feature: what a typical series of the population looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeaturePrior {
    /// How many warm series it summarises (0: no prior yet).
    pub count: u64,
    pub level: f32,
    /// The population's median *relative* noise scale, S/|level|.
    pub scale: f32,
    pub season: [f32; 4],
}

impl FeaturePrior {
    pub const NONE: FeaturePrior = FeaturePrior {
        count: 0,
        level: 0.0,
        scale: 0.0,
        season: [0.0; 4],
    };
}

/// A per-series online model. Implementations must be deterministic (same inputs, same bytes out) and do
/// O(1) work per call; their whole state is [`DetectorState`] ([`DETECTOR_BYTES`] bytes).
pub trait Detector: Send + Sync {
    /// The name the spec uses to select it.
    fn name(&self) -> &'static str;

    /// Scores `obs` against what the state predicts, then learns from it. A fresh (all-zero) state must be
    /// initialised from `prior` on the first observation.
    fn observe(
        &self,
        state: &mut DetectorState,
        obs: &Observation,
        prior: &FeaturePrior,
    ) -> Assessment;

    /// The prediction and noise scale σ at a time, without learning (for a dropout's evidence).
    fn predict(&self, state: &DetectorState, ts: i64, transform: Transform) -> (f32, f32);

    /// What this series tells its cohort, once it has seen `seen` observations; `None` while cold.
    fn summary(
        &self,
        state: &DetectorState,
        seen: u8,
        transform: Transform,
    ) -> Option<SeriesSummary>;
}
