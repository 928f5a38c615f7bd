//! One customer's epoch: the framework logic around the detectors.
//!
//! Given the customer's slots (one per feature plus a meta slot) and its logs of the epoch (sorted by time),
//! [`step_customer`] drops duplicate logs, detects reboots, runs every feature's detector, calibrates each
//! series' threshold, advances each series' alert state machine (including dropouts), reports silence, and
//! updates the cohort statistics — emitting the *changes* of the open-anomaly collection and their evidence.

use serde::{Deserialize, Serialize};

use super::alert::{self, AlertParams, Memory, ScoreQuantile, Transition};
use super::cohort::CohortAccumulator;
use super::global::Relationship;
use super::header::{self, OpenAlert, SeriesSlot, Severity};
use super::{
    AnomalyKind, Assessment, AtBound, DETECTOR_BYTES, Detector, DetectorState, FeaturePrior,
    Observation, Transform,
};
use crate::keys::CustomerId;
#[cfg(test)]
use crate::record::Log;
use crate::record::LogN;
use crate::spec::Spec;
use crate::state::{SLOT_BYTES, Slot, le};

const RESOLUTION: [f32; 7] = [1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6];

/// The feature index that stands for the whole customer (`"*"` in output): its silence.
pub const CUSTOMER_FEATURE: u16 = u16::MAX;

/// The feature index of a customer's own anomaly alert (`"*"`, `"level":"customer"` in output): its
/// features' fused evidence against the customer's own history.
pub const CUSTOMER_ALERT: u16 = u16::MAX - 1;

/// True for the indexes that stand for the whole customer rather than one of its features.
pub fn is_customer_level(feature: u16) -> bool {
    feature >= CUSTOMER_ALERT
}

/// Framework parameters derived once from the spec.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub features: usize,
    /// The order features are processed in a log: the reboot feature first, then the rest.
    pub order: Vec<usize>,
    pub transforms: Vec<Transform>,
    /// Each feature's declared bounds (`[lo, hi]`, spec `bounds`), if any.
    pub bounds: Vec<Option<(f32, f32)>>,
    pub reboot_feature: Option<usize>,
    pub alert: AlertParams,
    pub silence_epochs: u32,
    pub reboot_grace: u32,
    /// Logs in a row without a feature (while the customer reports) before it is a dropout.
    pub dropout_logs: u8,
    /// Observations a series needs before it may raise (with a cohort prior).
    pub min_seen_to_raise: u8,
    /// Observations a series needs before it may raise when its feature has no cohort prior yet.
    pub min_seen_without_prior: u8,
    /// Observations before a series starts calibrating its threshold (its first scores are unreliable).
    pub calibrate_after: u8,
    /// Warm series a cohort prior must summarise before it is trusted.
    pub min_prior_count: u64,
    /// Observations a series needs before its absence counts as a dropout.
    pub warm_for_dropout: u8,
    /// The epoch length (spec `epoch.length_seconds`): the unit of an observation's `weekend_step`.
    pub epoch_seconds: i64,
    /// Spec `alerting.first_day_margin`: extra evidence a series that started without a cohort prior
    /// needs until it has seen a whole day.
    pub first_day_margin: f32,
    /// How far the memory of point evidence decays per epoch, in log-code steps (2048 per halving; spec
    /// `alerting.memory_half_life_hours`); unused when the memory is off.
    pub memory_codes_per_epoch: f64,
    /// `memory_codes_per_epoch` rounded: the decay over one epoch, the usual gap (see [`ModelConfig::memory_codes`]).
    pub memory_codes_one_epoch: u32,
    /// Spec `alerting.calibrate_on_anomalies`: the surprise quantiles also learn from points beyond the
    /// threshold and during open alerts.
    pub calibrate_on_anomalies: bool,
    /// Spec `alerting.customer_alerts`: raise customer-level alerts from the fused feature scores.
    pub customer_alerts: bool,
    /// The global model (spec `[global_model]`, loaded): its per-series calibration lives in the slots after
    /// the meta slot.
    pub global: Option<std::sync::Arc<super::global::GlobalModel>>,
}

impl ModelConfig {
    pub fn from_spec(spec: &Spec) -> ModelConfig {
        let reboot_feature = spec.feature_index(&spec.alerting.reboot_feature);
        let order = reboot_feature
            .into_iter()
            .chain((0..spec.features.len()).filter(|f| Some(*f) != reboot_feature))
            .collect();
        let memory_codes_per_epoch = if spec.alerting.memory_half_life_hours > 0.0 {
            2048.0 * spec.epoch.length_seconds as f64
                / (spec.alerting.memory_half_life_hours * 3600.0)
        } else {
            0.0
        };
        ModelConfig {
            features: spec.features.len(),
            order,
            transforms: spec.features.iter().map(|f| f.transform).collect(),
            bounds: spec
                .features
                .iter()
                .map(|f| f.bounds.map(|[lo, hi]| (lo as f32, hi as f32)))
                .collect(),
            reboot_feature: spec.feature_index(&spec.alerting.reboot_feature),
            alert: AlertParams::from_spec(&spec.alerting, spec.epoch.length_seconds),
            silence_epochs: spec.alerting.silence_epochs,
            reboot_grace: spec.alerting.reboot_grace_epochs,
            dropout_logs: 3,
            min_seen_to_raise: 3,
            min_seen_without_prior: u8::MAX,
            min_prior_count: 20,
            calibrate_after: 24,
            warm_for_dropout: 24,
            epoch_seconds: spec.epoch.length_seconds.clamp(1, i64::MAX as u64) as i64,
            first_day_margin: spec.alerting.first_day_margin as f32,
            calibrate_on_anomalies: spec.alerting.calibrate_on_anomalies,
            customer_alerts: spec.alerting.customer_alerts,
            global: spec.global.clone(),
            memory_codes_per_epoch,
            memory_codes_one_epoch: memory_codes_per_epoch.round() as u32,
        }
    }

    /// A series' score calibration G as its detector state holds it (0, not yet calibrated, when the spec
    /// has the calibration off).
    #[inline]
    pub fn score_quantile(&self, detector: &DetectorState) -> ScoreQuantile {
        ScoreQuantile(if self.alert.score_margin > 0.0 {
            le::u16(detector, SCORE_QUANTILE_AT)
        } else {
            0
        })
    }

    /// A series' memory M of its recent point evidence as its detector state holds it (0 when the spec has
    /// the memory off).
    #[inline]
    pub fn memory(&self, detector: &DetectorState) -> Memory {
        Memory(if self.alert.memory_margin > 0.0 {
            le::u16(detector, MEMORY_AT)
        } else {
            0
        })
    }

    /// The log-codes a memory decays by over `gap` epochs since its last update (at least 1; one epoch's
    /// from a field, the rest multiplied out).
    #[inline]
    pub fn memory_codes(&self, gap: u64) -> u32 {
        let codes = if gap <= 1 {
            self.memory_codes_one_epoch
        } else {
            (self.memory_codes_per_epoch * gap as f64).round() as u32
        };
        codes.max(1)
    }

    /// Slots per customer: its series, the meta slot, the global model's calibration.
    pub fn slots(&self) -> usize {
        crate::state::slots_for(self.features, self.global.is_some())
    }

    /// Blocks per customer in the series-state arrangement.
    pub fn blocks(&self) -> usize {
        crate::state::blocks_for(self.features, self.global.is_some())
    }

    /// What an explanation shows for feature `f`: the prediction and its band, clamped into the feature's
    /// declared bounds for a level feature (a percentage's band does not reach below 0 %; a prediction beyond
    /// a bound means the bound, as a censored value at it agrees with it). Rate features model increases,
    /// which the bounds of the raw value do not constrain.
    #[inline]
    pub fn explained(&self, f: usize, expected: f32, lower: f32, upper: f32) -> (f32, f32, f32) {
        match (self.bounds[f], self.transforms[f]) {
            (Some((lo, hi)), Transform::Level) => (
                expected.clamp(lo, hi),
                lower.clamp(lo, hi),
                upper.clamp(lo, hi),
            ),
            _ => (expected, lower, upper),
        }
    }
}

/// A member of the open-anomaly collection (keyed by customer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpenAnomaly {
    pub feature: u16,
    pub kind: AnomalyKind,
    pub severity: Severity,
}

/// The numbers behind a change, joined to it in the sink.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub customer: CustomerId,
    pub feature: u16,
    pub score: f32,
    pub observed: f32,
    pub expected: f32,
    pub lower: f32,
    pub upper: f32,
    /// The customer's fused score at this epoch ([`CustomerScore`]); 0 where it does not apply (silence).
    pub customer_score: f32,
    /// The customer's top contributing features at this epoch, highest score first.
    pub top: [TopFeature; 3],
}

/// A feature's share in a customer's fused score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopFeature {
    /// Feature index, or [`CUSTOMER_FEATURE`] for an empty place.
    pub feature: u16,
    pub score: f32,
}

impl TopFeature {
    pub const NONE: TopFeature = TopFeature {
        feature: CUSTOMER_FEATURE,
        score: 0.0,
    };
}

/// The customer-level view of one epoch: its features' normalised scores fused into one number, and the
/// features that contribute most.
///
/// ```text
/// customer_score = √( Σ_f min(s_f, 4)² · 1[s_f ≥ ½] )
/// ```
///
/// where `s_f` is feature f's normalised score (≥ 1: anomalous for that series). Features less than half-way
/// to their own bar add nothing (twenty features of ordinary noise do not add up to an alarm); each is capped
/// at 4 so that one extreme feature does not drown the others. The score is ≥ 1 whenever one feature is
/// anomalous, and grows when several are unusual together: two features at 0.8 fuse to 1.13. It ranks
/// customers for operators and explains every change with its top three features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerScore {
    sum_sq: f32,
    pub top: [TopFeature; 3],
}

impl Default for CustomerScore {
    fn default() -> Self {
        CustomerScore {
            sum_sq: 0.0,
            top: [TopFeature::NONE; 3],
        }
    }
}

impl CustomerScore {
    /// Adds feature `f`'s normalised score.
    pub fn add(&mut self, feature: u16, score: f32) {
        if score.is_nan() || score <= 0.0 {
            return;
        }
        if score >= 0.5 {
            let c = score.min(4.0);
            self.sum_sq += c * c;
        }
        // Most features of most epochs are no higher than the third of a full top three: nothing moves.
        let third = self.top[2];
        if third.feature != CUSTOMER_FEATURE && score <= third.score {
            return;
        }
        // insertion into the top three (ties keep the earlier feature first)
        let Some(pos) = self
            .top
            .iter()
            .position(|t| t.feature == CUSTOMER_FEATURE || score > t.score)
        else {
            return;
        };
        for k in (pos + 1..self.top.len()).rev() {
            self.top[k] = self.top[k - 1];
        }
        self.top[pos] = TopFeature { feature, score };
    }

    pub fn score(&self) -> f32 {
        self.sum_sq.sqrt()
    }
}

/// What one customer's epoch produced.
#[derive(Default)]
pub struct StepOut {
    /// Differences of the open-anomaly collection.
    pub changes: Vec<((CustomerId, OpenAnomaly), i64)>,
    pub evidence: Vec<Evidence>,
    /// Indexes (into the logs given) of duplicate logs.
    pub duplicates: Vec<usize>,
    /// Series that got a prediction and score this epoch.
    pub series_scored: u64,
    /// When set, the evidence of every scored series (not only of changes) also goes to `scored`: a
    /// per-observation trace (the NAB runner).
    pub trace: bool,
    pub scored: Vec<Evidence>,
    /// When set, each stepped customer's signed deviations `(x − p)/σ` of the features that may raise go to
    /// `deviations` (feature, z): what the element's congestion evidence sums (`model::incident`). The
    /// caller drains it after each customer.
    pub deviate: bool,
    pub deviations: Vec<(u16, f32)>,
    /// When set, each stepped customer's normalised residuals `z_f = (x − p)/σ` of the features the global
    /// model knows go to `samples` (feature, z): what `fleetwatch train` learns from (`model::global`). The
    /// caller drains it after each customer.
    pub sample: bool,
    pub samples: Vec<(u16, f32)>,
}

/// The customer's meta slot.
///
/// ```text
/// 0..4   last_seen   u32  epoch of the last log + 1 (0: never)
/// 4..8   last_ts     u32  event time of the last log (Unix seconds)
/// 8..12  reboot      u32  epoch of the last detected reboot + 1 (0: none)
/// 12     silent      u8   the silence alert (alert byte encoding)
/// 13     silent_run  u8   clear counter of the silence alert
/// 14..32 reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CustomerMeta {
    pub last_seen: u32,
    pub last_ts: u32,
    pub reboot: u32,
    pub silent: Option<OpenAlert>,
    pub silent_run: u8,
    /// The customer alert ([`CUSTOMER_ALERT`]): open or not, its clear counter, and the memory of the
    /// customer's alert-level fused scores (a log-code, [`Memory`]).
    pub alert: Option<OpenAlert>,
    pub alert_clear_run: u8,
    pub memory: u16,
}

impl CustomerMeta {
    pub fn decode(s: &Slot) -> CustomerMeta {
        CustomerMeta {
            last_seen: le::u32(s, 0),
            last_ts: le::u32(s, 4),
            reboot: le::u32(s, 8),
            silent: header::decode_alert(s[12]),
            silent_run: s[13],
            alert: header::decode_alert(s[14]),
            alert_clear_run: s[15],
            memory: le::u16(s, 16),
        }
    }

    pub fn encode(&self) -> Slot {
        let mut s = [0u8; SLOT_BYTES];
        le::set_u32(&mut s, 0, self.last_seen);
        le::set_u32(&mut s, 4, self.last_ts);
        le::set_u32(&mut s, 8, self.reboot);
        s[12] = header::encode_alert(self.silent);
        s[13] = self.silent_run;
        s[14] = header::encode_alert(self.alert);
        s[15] = self.alert_clear_run;
        le::set_u16(&mut s, 16, self.memory);
        s
    }
}

fn epoch_u32(e: u64) -> u32 {
    (e.min(u32::MAX as u64 - 1)) as u32
}

/// Where the framework keeps a series' score calibration G in its detector state: the last two bytes (the
/// detector leaves them zero; the spec refuses the one detector rule that uses them together with it).
pub const SCORE_QUANTILE_AT: usize = DETECTOR_BYTES - 2;
/// Where it keeps the memory M: the two bytes before G (the fast shift statistic's, refused together).
pub const MEMORY_AT: usize = DETECTOR_BYTES - 4;

/// Everything `step_customer` needs besides the customer's own data.
pub struct StepContext<'a> {
    pub config: &'a ModelConfig,
    pub detector: &'a dyn Detector,
    pub priors: &'a [FeaturePrior],
    pub epoch: u64,
}

/// Runs one customer's epoch. `slots` holds [`ModelConfig::slots`] slots (the series, the meta slot, then
/// the global model's calibration when it is on) and is updated in place. `logs` must be sorted by
/// `(ts, pos)`.
pub fn step_customer<const N: usize>(
    ctx: &StepContext<'_>,
    customer: CustomerId,
    slots: &mut [Slot],
    logs: &[LogN<N>],
    out: &mut StepOut,
) {
    let f_count = ctx.config.features;
    let mut meta = CustomerMeta::decode(&slots[f_count]);

    // Quick check for duplicates and whether the customer reported at all.
    let mut reported = false;
    {
        let mut last_ts = meta.last_ts as i64;
        for (i, log) in logs.iter().enumerate() {
            if last_ts != 0 && log.ts == last_ts {
                out.duplicates.push(i);
            } else {
                reported = true;
                last_ts = log.ts;
            }
        }
    }
    if reported {
        // The per-series scratch arrays live on the stack, as wide as the spec's logs.
        step_reported(ctx, customer, slots, logs, &mut meta, out);
    } else if meta.last_seen != 0 {
        step_silent(ctx, customer, &mut meta, out);
    }
    slots[f_count] = meta.encode();
}

/// The epoch of a customer that sent logs: every series learns and is scored, alerts move, silence clears.
fn step_reported<const N: usize>(
    ctx: &StepContext<'_>,
    customer: CustomerId,
    slots: &mut [Slot],
    logs: &[LogN<N>],
    meta: &mut CustomerMeta,
    out: &mut StepOut,
) {
    let cfg = ctx.config;
    let f_count = cfg.features;
    let e = ctx.epoch;
    // Decode every series once; work on the decoded form; encode once at the end.
    let mut series: [SeriesSlot; N] = [SeriesSlot::ZERO; N];
    for f in 0..f_count {
        series[f] = SeriesSlot::decode(&slots[f]);
    }
    // The best (highest normalised score) assessment per feature this epoch, and each series' threshold
    // (computed once per epoch, when first needed).
    let mut best: [Option<(Assessment, f32, AnomalyKind, f32)>; N] = [None; N];
    let mut bars = [alert::Bar::default(); N];
    // Whether each feature's scored observation came right after a gap (its residual then says more about
    // the gap than about the network: left out of the element's congestion evidence).
    let mut after_gap = [false; N];
    let mut last_ts = meta.last_ts as i64;
    let mut max_ts = meta.last_ts as i64;

    for log in logs {
        if last_ts != 0 && log.ts == last_ts {
            continue; // a duplicate (already reported by step_customer)
        }
        last_ts = log.ts;
        max_ts = max_ts.max(log.ts);
        let phase = Observation::daily_phase(log.ts);
        let weekend_step = Observation::weekend_step_of(log.ts, cfg.epoch_seconds);
        // The reboot feature goes first so the rest of the log already knows about the reboot.
        for &f in &cfg.order {
            let v = log.values[f];
            let s = &mut series[f];
            if v.is_nan() {
                s.miss_run = s.miss_run.saturating_add(1).min(31);
                continue;
            }
            let gap = if s.seen == 0 {
                0
            } else {
                header::epochs_since(s.last_epoch, e)
            };
            s.decimals = header::raise_decimals(s.decimals, v);
            let obs = Observation {
                value: v,
                ts: log.ts,
                gap_epochs: gap,
                seen: s.seen,
                resolution: RESOLUTION[s.decimals.min(6) as usize],
                phase,
                weekend_step,
                transform: cfg.transforms[f],
                at_bound: AtBound::of(v, cfg.bounds[f]),
            };
            // G and M live in the detector state's last four bytes (`SCORE_QUANTILE_AT`, `MEMORY_AT`): kept
            // across the detector's step, which leaves them zero.
            let calibrated = cfg.alert.score_margin > 0.0;
            let remembers = cfg.alert.memory_margin > 0.0;
            let g = cfg.score_quantile(&s.detector);
            let m = cfg.memory(&s.detector);
            let a = ctx.detector.observe(&mut s.detector, &obs, &ctx.priors[f]);
            if calibrated {
                le::set_u16(&mut s.detector, SCORE_QUANTILE_AT, g.0);
            }
            if remembers {
                le::set_u16(&mut s.detector, MEMORY_AT, m.0);
            }
            // A series that starts on a cohort prior is as mature as its observations; one that starts
            // without counts the quarter days it sees after its 255th observation (it has not seen a
            // whole day before).
            if s.seen == 0 {
                if ctx.priors[f].count >= cfg.min_prior_count {
                    s.maturity = header::MATURE;
                }
            } else if s.seen == u8::MAX && s.maturity < header::MATURE {
                let quarter = |epoch: u64| epoch * cfg.epoch_seconds as u64 / 21_600;
                if quarter(e.saturating_sub(gap as u64)) != quarter(e) {
                    s.maturity += 1;
                }
            }
            s.seen = s.seen.saturating_add(1);
            s.last_epoch = e as u16;
            s.miss_run = 0;
            if a.reset && Some(f) == cfg.reboot_feature {
                meta.reboot = epoch_u32(e + 1);
            }
            if a.scored {
                if bars[f].up == 0.0 {
                    bars[f] = cfg.alert.bar(s.q);
                }
                let upward = a.observed > a.expected;
                let t = bars[f].threshold(upward);
                let alert::Scored {
                    score,
                    kind,
                    point,
                    sustained: learned,
                } = cfg.alert.score(
                    a.surprise,
                    upward,
                    a.sustained,
                    a.kind,
                    &bars[f],
                    cfg.alert.score_divisor(g),
                    cfg.alert.memory_divisor(m),
                );
                // A young series (cold start on a cohort prior) needs up to twice the evidence, one that
                // started without a prior a little more until it has seen a whole day.
                // (A mature series' factor is exactly 1: its divisions are skipped.)
                let (score, young_point) = if s.seen == u8::MAX && s.maturity >= header::MATURE {
                    (score, point)
                } else {
                    let unseen_quarters = (header::MATURE - s.maturity.min(header::MATURE)) as f32;
                    let young = 2.0 - s.seen as f32 / 255.0
                        + cfg.first_day_margin * unseen_quarters / header::MATURE as f32;
                    (score / young, point / young)
                };
                // What the customer alert fuses: the same score without the series' memory of its recent
                // point evidence (the customer alert keeps its own memory, of the customer's episodes).
                let unremembered = score.max(young_point);
                // The shift and variance evidence's own history: G learns from every observation but the
                // censored ones (they say nothing of the series' residuals) and the very first ones.
                if remembers && !a.censored && s.seen >= cfg.calibrate_after {
                    le::set_u16(
                        &mut s.detector,
                        MEMORY_AT,
                        m.update(point, cfg.memory_codes(gap as u64)).0,
                    );
                }
                if calibrated && !a.censored && s.seen >= cfg.calibrate_after {
                    let tick = e % ScoreQuantile::DOWN_EVERY == 0;
                    le::set_u16(
                        &mut s.detector,
                        SCORE_QUANTILE_AT,
                        g.update(learned, tick).0,
                    );
                }
                // Calibrate on the series' own observations, not while sustained evidence builds up (a shift
                // in progress is not the series' normal); with `calibrate_on_anomalies` off, not during
                // alerts nor on points beyond the threshold either. On real telemetry the excursions are
                // part of the series' life: a threshold that never sees them cannot learn that a daily batch
                // job's burst is ordinary (QUALITY.md, "Real telemetry").
                let sustained_quiet = kind == AnomalyKind::Spike || score < 0.5;
                let ordinary = cfg.calibrate_on_anomalies || (s.alert.is_none() && a.surprise < t);
                if ordinary && !a.censored && sustained_quiet && s.seen >= cfg.calibrate_after {
                    let z = if upward { a.surprise } else { -a.surprise };
                    s.q = cfg.alert.update_quantiles(s.q, z, s.seen == u8::MAX);
                } else if s.q.lo == 0 {
                    s.q = alert::Quantiles::INITIAL;
                }
                if best[f].is_none_or(|(_, bs, _, _)| score > bs) {
                    best[f] = Some((a, score, kind, unremembered));
                    after_gap[f] = gap > 1;
                }
            }
        }
    }

    // The global model: what the customer's features imply about each other, against each series' own
    // calibration of it (model::global). Known: scored this epoch, not censored, past the first epochs.
    let mut related: [Option<Relationship>; N] = [None; N];
    if cfg.global.is_some() || out.sample {
        let mut z: [Option<f32>; N] = [None; N];
        let mut learn = [false; N];
        let mut mature = [false; N];
        let mut known = 0;
        for f in 0..f_count {
            if let Some((a, ..)) = best[f]
                && !a.censored
                && a.sigma > 0.0
                && series[f].seen >= cfg.calibrate_after
            {
                let zf = (a.observed - a.expected) / a.sigma;
                z[f] = Some(zf);
                learn[f] = true;
                mature[f] = series[f].seen == u8::MAX;
                known += 1;
                if out.sample {
                    out.samples.push((f as u16, zf));
                }
            }
        }
        // (a caller that passes only the series and the meta slot runs without it)
        if let Some(g) = cfg.global.as_deref()
            && known >= 2
            && let Some(state) = slots
                .get_mut(f_count + 1..)
                .filter(|s| s.len() >= super::global::GlobalModel::slots_for(f_count))
        {
            g.assess(
                &cfg.alert,
                &z[..f_count],
                max_ts,
                state,
                (&learn[..f_count], &mature[..f_count]),
                &mut related[..f_count],
            );
        }
    }

    let in_grace = meta.reboot != 0 && e + 1 - meta.reboot as u64 <= cfg.reboot_grace as u64;
    let first_evidence = out.evidence.len();
    let mut fused = CustomerScore::default();
    // The same fusion over the features that may raise (not young, not in a reboot's grace), with the kind
    // of the strongest: what the customer alert is made of.
    let mut alertable = CustomerScore::default();
    let mut alertable_kind = (0.0f32, AnomalyKind::Spike);
    for f in 0..f_count {
        let s = &mut series[f];
        let (score, kind, evidence, unremembered) =
            if let Some((a, score, kind, unremembered)) = best[f] {
                out.series_scored += 1;
                let bar = &bars[f];
                let (expected, lower, upper) = cfg.explained(
                    f,
                    a.expected,
                    a.expected - bar.down * a.sigma,
                    a.expected + bar.up * a.sigma,
                );
                let ev = Evidence {
                    customer,
                    feature: f as u16,
                    score,
                    observed: a.observed,
                    expected,
                    lower,
                    upper,
                    customer_score: 0.0,
                    top: [TopFeature::NONE; 3],
                };
                match (related[f], cfg.global.as_deref()) {
                    // A mature series inside its own band whose value the customer's other features do
                    // not imply: the relationship evidence, with the global model's expectation and band.
                    (Some(r), Some(g))
                        if unremembered < 1.0 && r.evidence > score && s.seen == u8::MAX =>
                    {
                        let expected = a.expected + r.expected_z * a.sigma;
                        let half = r.bar * g.net.residual_scale[f] * a.sigma;
                        let ev = Evidence {
                            score: r.evidence,
                            expected,
                            lower: expected - half,
                            upper: expected + half,
                            ..ev
                        };
                        (r.evidence, AnomalyKind::Relationship, Some(ev), r.evidence)
                    }
                    _ => (score, kind, Some(ev), unremembered),
                }
            } else if s.miss_run >= cfg.dropout_logs && s.seen >= cfg.warm_for_dropout {
                let (p, sigma) = ctx.detector.predict(&s.detector, max_ts, cfg.transforms[f]);
                let bar = cfg.alert.bar(s.q);
                let score = s.miss_run as f32 / cfg.dropout_logs as f32;
                let (expected, lower, upper) =
                    cfg.explained(f, p, p - bar.down * sigma, p + bar.up * sigma);
                let ev = Evidence {
                    customer,
                    feature: f as u16,
                    score,
                    observed: f32::NAN,
                    expected,
                    lower,
                    upper,
                    customer_score: 0.0,
                    top: [TopFeature::NONE; 3],
                };
                (score, AnomalyKind::Dropout, Some(ev), score)
            } else {
                (0.0, AnomalyKind::Spike, None, 0.0)
            };
        fused.add(f as u16, score);
        if out.trace
            && let Some(ev) = evidence
        {
            out.scored.push(ev);
        }
        // Without a cohort prior a young series cannot know its own noise yet: it needs more history. That
        // holds for a series that started before its feature had a prior, too, when one appears later.
        let min_seen = if ctx.priors[f].count >= cfg.min_prior_count && s.maturity >= header::MATURE
        {
            cfg.min_seen_to_raise
        } else {
            cfg.min_seen_without_prior
        };
        let can_raise = !in_grace
            && s.seen >= min_seen
            && (kind != AnomalyKind::Dropout || s.seen >= cfg.warm_for_dropout);
        if can_raise {
            if out.deviate
                && !after_gap[f]
                && let Some((a, ..)) = best[f]
            {
                out.deviations.push((f as u16, a.baseline));
            }
            alertable.add(f as u16, unremembered);
            if unremembered > alertable_kind.0 {
                alertable_kind = (unremembered, kind);
            }
        }
        let before = s.alert;
        let (after, run, transition) =
            alert::step(&cfg.alert, before, s.clear_run, score, kind, can_raise);
        s.alert = after;
        s.clear_run = run;
        if let Some(t) = transition {
            emit(out, customer, f as u16, before, after, t, evidence, score);
        }
        slots[f] = s.encode();
    }
    // Every change of this customer's features carries the customer's fused view of the epoch (the customer
    // alert's own evidence, pushed after this, carries the fusion it was raised on: its features' scores
    // without their memories, which name the features behind it).
    for ev in &mut out.evidence[first_evidence..] {
        ev.customer_score = fused.score();
        ev.top = fused.top;
    }
    if cfg.customer_alerts {
        let gap = if meta.last_seen == 0 {
            1
        } else {
            e + 1 - meta.last_seen as u64
        };
        customer_alert(cfg, customer, meta, &alertable, alertable_kind, gap, out);
    }

    // The customer is back: its silence, if reported, clears.
    if let Some(open) = meta.silent {
        let silent_for = e + 1 - meta.last_seen.max(1) as u64;
        let ev = silence_evidence(customer, cfg, silent_for, 0.0);
        emit(
            out,
            customer,
            CUSTOMER_FEATURE,
            Some(open),
            None,
            Transition::Cleared,
            Some(ev),
            0.0,
        );
        meta.silent = None;
        meta.silent_run = 0;
    }
    meta.last_seen = epoch_u32(e + 1);
    meta.last_ts = max_ts.clamp(0, u32::MAX as i64) as u32;
}

/// The customer alert's epoch: the fused score of the features that may raise (or its strongest feature's
/// score, if higher), `c`, against the customer's own history of alert-level episodes:
///
/// ```text
/// c' = c / max(1, memory_margin · M_c)          (1 when the memory is off)
/// log2 M_c ← max(log2 M_c − gap·epoch/half-life, log2 c)   only when c ≥ 1: sub-threshold epochs (a build-up
///                                                           in progress) teach it nothing
/// ```
///
/// and the same hysteresis as a feature's alert (raise at c' ≥ 1, clear after `clear_epochs` epochs below
/// `clear_ratio`). Its kind is the strongest feature's; its evidence lists the top features.
fn customer_alert(
    cfg: &ModelConfig,
    customer: CustomerId,
    meta: &mut CustomerMeta,
    fused: &CustomerScore,
    (strongest, kind): (f32, AnomalyKind),
    gap: u64,
    out: &mut StepOut,
) {
    // The fusion caps each feature at 4 so that one extreme feature does not drown the rest; the customer
    // alert also sees the strongest feature whole, so that an excursion beyond any remembered one is news.
    let c = fused.score().max(strongest);
    let m = Memory(meta.memory);
    let score = c / cfg.alert.memory_divisor(m);
    if cfg.alert.memory_margin > 0.0 {
        meta.memory = m
            .update(if c >= 1.0 { c } else { 0.0 }, cfg.memory_codes(gap))
            .0;
    }
    let before = meta.alert;
    let (after, run, transition) =
        alert::step(&cfg.alert, before, meta.alert_clear_run, score, kind, true);
    meta.alert = after;
    meta.alert_clear_run = run;
    if let Some(t) = transition {
        let ev = Evidence {
            customer,
            feature: CUSTOMER_ALERT,
            score,
            observed: c,
            expected: f32::NAN,
            lower: f32::NAN,
            upper: cfg.alert.memory_divisor(m),
            customer_score: c,
            top: fused.top,
        };
        emit(
            out,
            customer,
            CUSTOMER_ALERT,
            before,
            after,
            t,
            Some(ev),
            score,
        );
    }
}

/// The evidence of a customer's silence: epochs without a log (observed) against one expected, with the
/// spec's silence limit as the band's upper edge.
fn silence_evidence(
    customer: CustomerId,
    cfg: &ModelConfig,
    silent_for: u64,
    score: f32,
) -> Evidence {
    Evidence {
        customer,
        feature: CUSTOMER_FEATURE,
        score,
        observed: silent_for as f32,
        expected: 1.0,
        lower: 0.0,
        upper: cfg.silence_epochs as f32,
        customer_score: 0.0,
        top: [TopFeature::NONE; 3],
    }
}

/// The epoch of a known customer without a log: its silence grows.
fn step_silent(
    ctx: &StepContext<'_>,
    customer: CustomerId,
    meta: &mut CustomerMeta,
    out: &mut StepOut,
) {
    let cfg = ctx.config;
    let e = ctx.epoch;
    let silent_for = e + 1 - meta.last_seen as u64;
    let score = silent_for as f32 / cfg.silence_epochs as f32;
    let before = meta.silent;
    let (after, run, transition) = alert::step(
        &cfg.alert,
        before,
        meta.silent_run,
        score,
        AnomalyKind::Silent,
        true,
    );
    meta.silent = after;
    meta.silent_run = run;
    if let Some(t) = transition {
        let ev = silence_evidence(customer, cfg, silent_for, score);
        emit(
            out,
            customer,
            CUSTOMER_FEATURE,
            before,
            after,
            t,
            Some(ev),
            score,
        );
    }
}

/// The anomalies a customer's state holds open (what the open-anomaly collection holds for it): each
/// series' alert, the silence alert and the customer alert. `slots` are the customer's series slots
/// followed by its meta slot. A restored run seeds the collection with these.
pub fn open_anomalies(slots: &[Slot], out: &mut Vec<OpenAnomaly>) {
    let Some((meta, series)) = slots.split_last() else {
        return;
    };
    for (f, slot) in series.iter().enumerate() {
        if let Some(a) = SeriesSlot::decode(slot).alert {
            out.push(OpenAnomaly {
                feature: f as u16,
                kind: a.kind,
                severity: a.severity,
            });
        }
    }
    let meta = CustomerMeta::decode(meta);
    for (feature, a) in [
        (CUSTOMER_FEATURE, meta.silent),
        (CUSTOMER_ALERT, meta.alert),
    ] {
        if let Some(a) = a {
            out.push(OpenAnomaly {
                feature,
                kind: a.kind,
                severity: a.severity,
            });
        }
    }
}

/// Adds a customer's mature series to this epoch's cohort sample.
pub fn contribute_customer(ctx: &StepContext<'_>, slots: &[Slot], cohort: &mut CohortAccumulator) {
    for (f, slot) in slots.iter().enumerate().take(ctx.config.features) {
        let s = SeriesSlot::decode(slot);
        if let Some(summary) = ctx
            .detector
            .summary(&s.detector, s.seen, ctx.config.transforms[f])
        {
            cohort.contribute(f, &summary, 1);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn emit(
    out: &mut StepOut,
    customer: CustomerId,
    feature: u16,
    before: Option<OpenAlert>,
    after: Option<OpenAlert>,
    transition: Transition,
    evidence: Option<Evidence>,
    score: f32,
) {
    if let Some(b) = before {
        out.changes.push((
            (
                customer,
                OpenAnomaly {
                    feature,
                    kind: b.kind,
                    severity: b.severity,
                },
            ),
            -1,
        ));
    }
    if let Some(a) = after {
        out.changes.push((
            (
                customer,
                OpenAnomaly {
                    feature,
                    kind: a.kind,
                    severity: a.severity,
                },
            ),
            1,
        ));
    }
    let _ = transition;
    out.evidence.push(evidence.unwrap_or(Evidence {
        customer,
        feature,
        score,
        observed: f32::NAN,
        expected: f32::NAN,
        lower: f32::NAN,
        upper: f32::NAN,
        customer_score: 0.0,
        top: [TopFeature::NONE; 3],
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The top three are the three highest positive scores, ties in the order they were added: a
        /// stable sort of everything added, whatever the shortcut skips.
        #[test]
        fn customer_top_three_is_the_stable_top_of_all_scores(
            scores in proptest::collection::vec(
                proptest::prop_oneof![0.0f32..5.0, proptest::sample::select(vec![0.0f32, 0.5, 1.0, 2.0, -1.0])],
                0..40,
            )
        ) {
            let mut c = CustomerScore::default();
            for (f, &s) in scores.iter().enumerate() {
                c.add(f as u16, s);
            }
            let mut want: Vec<(u16, f32)> = scores
                .iter()
                .enumerate()
                .filter(|(_, s)| **s > 0.0)
                .map(|(f, &s)| (f as u16, s))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            let got: Vec<(u16, f32)> = c
                .top
                .iter()
                .filter(|t| t.feature != CUSTOMER_FEATURE)
                .map(|t| (t.feature, t.score))
                .collect();
            want.truncate(3);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn customer_score_fuses_by_hand() {
        let mut c = CustomerScore::default();
        c.add(0, 0.8);
        c.add(1, 0.8);
        c.add(2, 0.4); // below half its bar: no share in the sum, still a contributor
        // √(0.8² + 0.8²) = 1.1314
        assert!((c.score() - 1.131_371).abs() < 1e-5);
        assert_eq!(
            c.top.map(|t| t.feature),
            [0, 1, 2],
            "ties keep feature order, the smaller score last"
        );
        c.add(3, 9.0); // capped at 4: √(16 + 1.28) = 4.1569
        assert!((c.score() - 4.156_922).abs() < 1e-5);
        assert_eq!(c.top.map(|t| t.feature), [3, 0, 1]);
        assert_eq!(c.top[0].score, 9.0);
        c.add(4, f32::NAN);
        c.add(5, 0.0);
        assert_eq!(c.top.map(|t| t.feature), [3, 0, 1]);
        let empty = CustomerScore::default();
        assert_eq!(empty.score(), 0.0);
        assert!(empty.top.iter().all(|t| *t == TopFeature::NONE));
    }
    use crate::model::cohort::CohortStats;
    use crate::model::seasonal::SeasonalRobust;
    use crate::record::SourcePos;

    fn spec() -> Spec {
        Spec::parse(
            "name='t'\n[alerting]\nreboot_feature='up'\nsilence_epochs=3\n[[features]]\nname='a'\n\
             [[features]]\nname='up'\ntransform='rate'\n",
            "t",
        )
        .unwrap()
    }

    fn log(c: CustomerId, ts: i64, a: f32, up: f32) -> Log {
        let mut l = Log::empty(c);
        l.ts = ts;
        l.pos = SourcePos {
            partition: 0,
            offset: ts as u64,
        };
        l.values[0] = a;
        l.values[1] = up;
        l
    }

    struct Harness {
        cfg: ModelConfig,
        det: SeasonalRobust,
        slots: Vec<Slot>,
        cohort: CohortAccumulator,
        c: CustomerId,
        priors: [FeaturePrior; 2],
    }

    impl Harness {
        fn new() -> Self {
            let s = spec();
            Harness {
                cfg: ModelConfig::from_spec(&s),
                det: SeasonalRobust::default(),
                slots: vec![[0u8; SLOT_BYTES]; 3],
                cohort: CohortAccumulator::new(2),
                c: CustomerId::parse(b"cust-1", b"").unwrap(),
                priors: [FeaturePrior::NONE; 2],
            }
        }
        fn epoch(&mut self, e: u64, logs: &[Log]) -> StepOut {
            let ctx = StepContext {
                config: &self.cfg,
                detector: &self.det,
                priors: &self.priors,
                epoch: e,
            };
            let mut out = StepOut::default();
            step_customer(&ctx, self.c, &mut self.slots, logs, &mut out);
            out
        }
    }

    /// The open-anomaly differences of features and of the customer's silence (its customer alert apart:
    /// [`customer_statuses`]).
    fn statuses(out: &StepOut) -> Vec<(u16, i64)> {
        out.changes
            .iter()
            .filter(|((_, a), _)| a.feature != CUSTOMER_ALERT)
            .map(|((_, a), d)| (a.feature, *d))
            .collect()
    }

    /// The customer alert's open-anomaly differences.
    fn customer_statuses(out: &StepOut) -> Vec<i64> {
        out.changes
            .iter()
            .filter(|((_, a), _)| a.feature == CUSTOMER_ALERT)
            .map(|(_, d)| *d)
            .collect()
    }

    #[test]
    fn the_customer_alert_follows_its_features_and_remembers_its_episodes() {
        // A series on a prior with Gaussian noise; a burst to 40 (60σ) at epochs 300 and 320: the first
        // raises the feature alert and the customer alert (fused score = min(s, 4) ≥ 1); the customer
        // alert clears after clear_epochs quiet epochs; the second burst, no larger than the remembered
        // first (the customer memory learns only alert-level scores), raises neither level (the feature's
        // own memory holds it too). A third at 80, beyond 1.5× the memory, raises both again.
        let mut h = Harness::new();
        h.priors[0] = prior_a();
        let mut rng = crate::rng::Rng::new(21, 3);
        let base = 1_700_000_000 - 1_700_000_000 % 86_400;
        let mut customer = Vec::new();
        let mut feature = Vec::new();
        for e in 0..400u64 {
            let a = match e {
                300 | 320 => 40.0,
                360 => 80.0,
                _ => 10.0 + rng.normal() as f32 * 0.5,
            };
            let out = h.epoch(
                e,
                &[log(
                    h.c,
                    base + e as i64 * 300,
                    a,
                    1000.0 + 300.0 * e as f32,
                )],
            );
            for d in customer_statuses(&out) {
                customer.push((e, d));
            }
            for (f, d) in statuses(&out) {
                if f == 0 {
                    feature.push((e, d));
                }
            }
            if e == 300 {
                // The customer alert's explanation is the fusion it was raised on (c = the strongest
                // feature's whole score here, beyond the fusion's cap of 4), naming the feature behind it.
                let ev = out
                    .evidence
                    .iter()
                    .find(|ev| ev.feature == CUSTOMER_ALERT)
                    .expect("the customer alert's evidence");
                assert!(ev.observed > 4.0, "{}", ev.observed);
                assert_eq!(ev.customer_score, ev.observed);
                assert_eq!(ev.top[0].feature, 0);
                assert_eq!(ev.top[0].score, ev.observed);
            }
        }
        let raised = |v: &[(u64, i64)]| {
            v.iter()
                .filter(|x| x.1 == 1)
                .map(|x| x.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(raised(&customer), vec![300, 360]);
        assert_eq!(raised(&feature), vec![300, 360]);
        // cleared after three quiet epochs (a raise's epoch, then 301, 302, 303 below the clear ratio)
        assert_eq!(customer.iter().find(|x| x.1 == -1).map(|x| x.0), Some(303));
        let meta = CustomerMeta::decode(&h.slots[2]);
        assert!(
            Memory(meta.memory).value() > 3.9,
            "{}",
            Memory(meta.memory).value()
        );
    }

    #[test]
    fn open_anomalies_read_from_the_state_are_the_sum_of_the_changes() {
        // Bursts, a silence and recoveries: after every epoch, the anomalies the slots hold open are exactly
        // the accumulated open-anomaly differences (what a restore seeds the collection with).
        let mut h = Harness::new();
        h.priors[0] = prior_a();
        let mut rng = crate::rng::Rng::new(5, 9);
        let base = 1_700_000_000 - 1_700_000_000 % 86_400;
        let mut open: std::collections::BTreeMap<(u16, u8, u8), i64> = Default::default();
        let key = |a: &OpenAnomaly| (a.feature, a.kind.index(), a.severity as u8);
        let mut seen_open = 0;
        for e in 0..420u64 {
            let logs = if (340..352).contains(&e) {
                Vec::new() // silent
            } else {
                let a = match e {
                    300..=303 | 380 => 60.0,
                    _ => 10.0 + rng.normal() as f32 * 0.5,
                };
                vec![log(
                    h.c,
                    base + e as i64 * 300,
                    a,
                    1000.0 + 300.0 * e as f32,
                )]
            };
            let out = h.epoch(e, &logs);
            for ((_, a), d) in &out.changes {
                *open.entry(key(a)).or_default() += d;
            }
            open.retain(|_, d| *d != 0);
            let mut from_state = Vec::new();
            open_anomalies(&h.slots, &mut from_state);
            let mut got: Vec<(u16, u8, u8)> = from_state.iter().map(key).collect();
            got.sort();
            let want: Vec<(u16, u8, u8)> = open
                .iter()
                .map(|(k, d)| {
                    assert_eq!(*d, 1, "epoch {e}: {k:?} open {d} times");
                    *k
                })
                .collect();
            assert_eq!(got, want, "epoch {e}");
            seen_open += got.len();
        }
        assert!(seen_open > 10, "the run opened anomalies: {seen_open}");
    }

    #[test]
    fn quiet_series_raise_nothing_then_spike_raises_and_clears() {
        let mut h = Harness::new();
        let mut rng = crate::rng::Rng::new(9, 9);
        let base = 1_700_000_000 - 1_700_000_000 % 300;
        let mut up = 1000.0;
        // No cohort prior: a day of history before the series may raise (burn-in), then quiet noise.
        for e in 0..400u64 {
            up += 300.0;
            let l = log(
                h.c,
                base + e as i64 * 300,
                10.0 + rng.normal() as f32 * 0.5,
                up,
            );
            let out = h.epoch(e, &[l]);
            assert!(out.changes.is_empty(), "epoch {e}: {:?}", out.changes);
            assert!(e < 1 || out.series_scored >= 1);
        }
        up += 300.0;
        let out = h.epoch(400, &[log(h.c, base + 400 * 300, 30.0, up)]);
        assert_eq!(statuses(&out), vec![(0, 1)]);
        assert!(out.evidence[0].score >= 1.0);
        assert!(out.evidence[0].observed == 30.0);
        let mut cleared = false;
        for e in 401..410u64 {
            up += 300.0;
            let out = h.epoch(
                e,
                &[log(
                    h.c,
                    base + e as i64 * 300,
                    10.0 + rng.normal() as f32 * 0.5,
                    up,
                )],
            );
            if statuses(&out) == vec![(0, -1)] {
                cleared = true;
                assert!(e >= 403, "clears only after clear_epochs quiet epochs");
                break;
            }
        }
        assert!(cleared);
    }

    #[test]
    fn a_daily_burst_raises_on_its_first_day_only_with_the_memory() {
        // Gaussian noise around 10 (σ 0.5) on a series started on a prior; every day at the same time a
        // burst to 40 (60σ). With the memory (the spec default: 72 h half-life, margin 1.5) the first
        // burst raises and the next day's, no larger than the memory (decayed by 288 epochs × 2.37 codes:
        // ×0.79, so 1.5·M ≈ 1.19× the burst's own evidence), does not; without it both raise.
        let run = |memory: bool| {
            let mut h = Harness::new();
            if !memory {
                h.cfg.alert.memory_margin = 0.0;
            }
            h.priors[0] = prior_a();
            let mut rng = crate::rng::Rng::new(9, 9);
            let base = 1_700_000_000 - 1_700_000_000 % 86_400;
            let mut raised = Vec::new();
            for e in 0..700u64 {
                let a = if e % 288 == 100 && e > 288 {
                    40.0
                } else {
                    10.0 + rng.normal() as f32 * 0.5
                };
                let out = h.epoch(
                    e,
                    &[log(
                        h.c,
                        base + e as i64 * 300,
                        a,
                        1000.0 + 300.0 * e as f32,
                    )],
                );
                for (f, st) in statuses(&out) {
                    if f == 0 && st == 1 {
                        raised.push(e);
                    }
                }
            }
            raised
        };
        assert_eq!(run(true), vec![388]);
        assert_eq!(run(false), vec![388, 676]);
    }

    /// A prior for feature `a` of the test spec (level 10, relative noise 5 %).
    fn prior_a() -> FeaturePrior {
        FeaturePrior {
            count: 100,
            level: 10.0,
            scale: 0.05,
            season: [0.0; 4],
        }
    }

    #[test]
    fn a_series_that_started_without_a_prior_waits_for_its_own_history_then_a_day() {
        let mut h = Harness::new();
        h.cfg.first_day_margin = 0.3;
        // The huge value at epoch 100 would be remembered, and the spike at 256 would not exceed it.
        h.cfg.alert.memory_margin = 0.0;
        let mut rng = crate::rng::Rng::new(4, 4);
        let base = 1_700_000_000 - 1_700_000_000 % 86_400; // epoch e starts at base + 300·e
        let up = |e: u64| 1000.0 + 300.0 * e as f32;
        let step = |h: &mut Harness, e: u64, a: f32| {
            h.epoch(e, &[log(h.c, base + e as i64 * 300, a, up(e))])
        };
        let noise = |rng: &mut crate::rng::Rng| 10.0 + rng.normal() as f32 * 0.5;
        for e in 0..100u64 {
            step(&mut h, e, noise(&mut rng));
        }
        assert_eq!(SeriesSlot::decode(&h.slots[0]).maturity, 0);
        // A prior appears (the feature's population matured): this series still started without one and
        // may not raise on a huge value before its own 255th observation.
        h.priors[0] = prior_a();
        let out = step(&mut h, 100, 60.0);
        assert!(out.changes.is_empty(), "{:?}", out.changes);
        for e in 101..256u64 {
            step(&mut h, e, noise(&mut rng));
        }
        let s = SeriesSlot::decode(&h.slots[0]);
        assert_eq!((s.seen, s.maturity), (255, 0));
        // From its 255th observation it may raise, with 1 + 0.3·3/3 = 1.3 times the evidence: the same
        // spike on a copy with the margin off scores 1.3 times higher.
        let mut off = Harness::new();
        off.cfg.alert.memory_margin = 0.0;
        off.cfg.first_day_margin = 0.0;
        off.slots = h.slots.clone();
        off.priors = h.priors;
        let with = step(&mut h, 256, 40.0);
        let without = off.epoch(256, &[log(off.c, base + 256 * 300, 40.0, up(256))]);
        assert_eq!(statuses(&with), vec![(0, 1)]);
        let ratio = without.evidence[0].score / with.evidence[0].score;
        assert!((ratio - 1.3).abs() < 1e-4, "{ratio}");
        // Quarter days (72 epochs of 5 minutes) crossed after the 255th observation: epochs 288, 360, 432.
        for e in 257..450u64 {
            step(&mut h, e, noise(&mut rng));
            let m = SeriesSlot::decode(&h.slots[0]).maturity;
            let want = match e {
                ..288 => 0,
                288..360 => 1,
                360..432 => 2,
                _ => 3,
            };
            assert_eq!(m, want, "epoch {e}");
        }
        // A series that starts on a prior is as mature as its observations from the first one.
        let mut fresh = Harness::new();
        fresh.priors[0] = prior_a();
        fresh.epoch(0, &[log(fresh.c, base, 10.0, 1000.0)]);
        assert_eq!(SeriesSlot::decode(&fresh.slots[0]).maturity, header::MATURE);
    }

    #[test]
    fn explanations_stay_inside_declared_bounds() {
        let s = Spec::parse(
            "name='t'\n[[features]]\nname='loss'\nbounds=[0, 100]\n[[features]]\nname='n'\n\
             [[features]]\nname='up'\ntransform='rate'\nbounds=[0, inf]\n",
            "t",
        )
        .unwrap();
        let cfg = ModelConfig::from_spec(&s);
        assert_eq!(cfg.explained(0, 0.34, -2.12, 3.62), (0.34, 0.0, 3.62));
        assert_eq!(cfg.explained(0, -2.57, -3.08, -2.06), (0.0, 0.0, 0.0));
        assert_eq!(cfg.explained(0, 99.0, 97.0, 101.5), (99.0, 97.0, 100.0));
        assert_eq!(cfg.explained(1, -2.57, -3.08, -2.06), (-2.57, -3.08, -2.06));
        assert_eq!(
            cfg.explained(2, 1.0, -0.5, 2.5),
            (1.0, -0.5, 2.5),
            "rates: not the raw bounds"
        );
    }

    #[test]
    fn duplicates_silence_and_reboot_grace() {
        let mut h = Harness::new();
        let base: i64 = 1_700_000_100; // a multiple of 300: epochs start on it
        let mut rng = crate::rng::Rng::new(1, 2);
        let mut up = 5000.0;
        for e in 0..50u64 {
            up += 300.0;
            h.epoch(
                e,
                &[log(
                    h.c,
                    base + e as i64 * 300,
                    10.0 + rng.normal() as f32 * 0.5,
                    up,
                )],
            );
        }
        // duplicate: same ts twice in one epoch, and a replay of the last ts
        let l = log(h.c, base + 50 * 300, 10.0, up + 300.0);
        let out = h.epoch(50, &[l, l]);
        assert_eq!(out.duplicates, vec![1]);
        let out = h.epoch(51, &[l]);
        assert_eq!(out.duplicates, vec![0]);
        // silence: epochs 51 (dup only => not reported), 52, 53 without logs: raised once the customer has
        // been silent for 3 epochs (last seen at 50 → silent_for = e + 1 − 51).
        let out = h.epoch(52, &[]);
        assert!(out.changes.is_empty());
        let out = h.epoch(53, &[]);
        assert_eq!(statuses(&out), vec![(CUSTOMER_FEATURE, 1)]);
        // back: cleared at once
        up += 1200.0;
        let out = h.epoch(54, &[log(h.c, base + 54 * 300, 10.0, up)]);
        assert!(statuses(&out).contains(&(CUSTOMER_FEATURE, -1)));
        // reboot: uptime drops; a spike in the same epoch may not raise (grace)
        let out = h.epoch(55, &[log(h.c, base + 55 * 300, 40.0, 100.0)]);
        assert!(
            out.changes.iter().all(|((_, a), _)| a.feature != 0),
            "{:?}",
            out.changes
        );
        let meta = CustomerMeta::decode(&h.slots[2]);
        assert_eq!(meta.reboot, 56);
    }

    #[test]
    fn dropout_raises_when_a_warm_feature_stops() {
        let mut h = Harness::new();
        let base: i64 = 1_700_000_100; // a multiple of 300: epochs start on it
        let mut rng = crate::rng::Rng::new(1, 3);
        let mut up = 5000.0;
        for e in 0..300u64 {
            up += 300.0;
            h.epoch(
                e,
                &[log(
                    h.c,
                    base + e as i64 * 300,
                    10.0 + rng.normal() as f32,
                    up,
                )],
            );
        }
        let mut raised_at = None;
        for e in 300..310u64 {
            up += 300.0;
            let out = h.epoch(e, &[log(h.c, base + e as i64 * 300, f32::NAN, up)]);
            if out
                .changes
                .iter()
                .any(|((_, a), d)| *d == 1 && a.kind == AnomalyKind::Dropout)
            {
                raised_at = Some(e);
                break;
            }
        }
        assert_eq!(raised_at, Some(302), "three missing logs in a row");
    }

    #[test]
    fn cohort_contributions_appear_once_mature() {
        let mut h = Harness::new();
        let base: i64 = 1_700_000_100;
        let mut up = 0.0;
        let priors = [FeaturePrior::NONE; 2];
        let contributed = |h: &mut Harness| {
            let ctx = StepContext {
                config: &h.cfg,
                detector: &h.det,
                priors: &priors,
                epoch: 0,
            };
            contribute_customer(&ctx, &h.slots, &mut h.cohort);
            let mut d = Vec::new();
            h.cohort.drain(&mut d);
            let mut stats = CohortStats::new(2);
            for x in &d {
                stats.apply(x);
            }
            stats
        };
        for e in 0..100u64 {
            up += 300.0;
            h.epoch(e, &[log(h.c, base + e as i64 * 300, 10.0, up)]);
        }
        assert_eq!(contributed(&mut h).prior(0).count, 0, "not mature yet");
        for e in 100..300u64 {
            up += 300.0;
            h.epoch(e, &[log(h.c, base + e as i64 * 300, 10.0, up)]);
        }
        let stats = contributed(&mut h);
        assert_eq!(stats.prior(0).count, 1);
        assert!((stats.prior(0).level - 10.0).abs() < 1.5);
    }
}
