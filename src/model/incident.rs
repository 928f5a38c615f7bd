//! Network-element incidents: one element's (an OLT, a cable node, a DNS resolver) epoch, against the
//! element's own learned normal.
//!
//! Every epoch, for every element of the topology, the series models of its members add up (exactly, in
//! integers, whatever the worker layout) an [`ElementPartial`]: how many members were active (logged within
//! the last day), how many reported this epoch, and per feature the sum of the members' residuals against
//! their own level and rhythm (`Assessment::baseline`, in their own σ, clipped at ±1 so that one member's
//! burst moves its element by at most 1/c; left out right after a gap). The members' open alerts arrive from
//! the join of the open-anomaly collection with the topology. Per element and epoch:
//!
//! ```text
//! missing     m = active − reporting,      p_m its learned share of the active members
//!             z_m = (m − a·p_m) / √(a·p_m·(1 − p_m) + 1)              (+1: a handful is never certain)
//! alerting    k = members with an open alert (silence apart),  p_k its learned share of the reporting ones
//!             z_k = (k − r·p_k) / √(r·p_k·(1 − p_k) + 1)
//! congestion  T_f = Σ clip(z, ±1)/c_f − F_f      over the c_f ≥ 5 members scored on feature f; F_f the
//!                                                 median over elements of that mean (what every element shares)
//!             w_f = mean of (T_f − μ_f) over this epoch and the last;  d_f = w_f / √(max(v_f, 0.25/c_f)/2)
//!             J   = √(Σ d_f²) over the three largest |d_f| ≥ 1        (members moving on several features)
//! score       s = max(z_m/Z · 1[m ≥ 3],  z_k/Z · 1[k ≥ 3],  J/D)        Z = 6, D = 7
//! ```
//!
//! The congestion evidence finds an element whose customers each move a little in the same direction at
//! once: on the generator's fleet a congestion moves `T` by ≈ 0.4 on throughput and latency where its
//! epoch-to-epoch noise is ≈ 0.1, while no member crosses its own bar. A feature's evidence counts once it
//! has been scored for 36 epochs.
//!
//! Learning (a warm element learns only while no incident is open and `s < 0.65`, so a fault does not teach
//! itself normal; after an incident has been open a day it learns anyway — a permanent change ends):
//!
//! ```text
//! g = 1/(n + 1), at least 1/288 for the rates, 1/36 for μ_f (it follows the element's wander over hours)
//!     and 1/72 for v_f                                         n: epochs the element has been seen
//! p_m += g·(m/a − p_m),   p_k += g·(k/r − p_k)                 (p₀ = 0.02, floored at 0.002)
//! μ_f += g·(T_f − μ_f),   v_f += g·(min((T_f − μ_f)², 16·v_f) − v_f)      (v₀ = 1/c_f)
//! ```
//!
//! Hysteresis like a customer's alert: raise at `s ≥ 1` once the element is warm (`n ≥ 24` epochs), critical
//! at `s ≥ 2`, `updated` when the kind or severity changes, clear after 3 epochs in a row below `½`. When a
//! congestion incident clears, the members' models have partly adapted to it, so the congestion's end moves
//! the same features the other way: for 36 epochs such a reverse move is its recovery, not a new incident.
//! A *faint* congestion (a congestion score of ¾ or more, below the bar: the members adapting as it lasts)
//! keeps its features and directions the same way, for 36 epochs after its last such epoch.
//!
//! **Regions.** A region's members are its elements. An element is *affected* at an epoch when its incident
//! is open or its score is at least ¾ (three quarters of the way to its own bar, so a fault that moves every
//! element of a region nearly to its bar is seen even when none raises; not ½: a quiet element's three
//! largest of twenty feature evidences alone make `J ≈ 3.3`, a score of ≈ 0.47). Per region and epoch, with
//! `n` elements stepped:
//!
//! ```text
//! x  = affected elements,  p_a its learned share of the region's elements (p₀ = 0.02, floored at 0.002)
//! z  = (x − n·p_a) / √(n·p_a·(1 − p_a) + 1),     s = z/Z · 1[x ≥ 3]        Z = 6
//! p_a += g·(x/n − p_a)    while quiet, as an element's rates (g = max(1/(epochs + 1), 1/288))
//! ```
//!
//! with the elements' hysteresis (warm after 24 epochs, critical at `s ≥ 2`, clear after 3 epochs below ½),
//! and their recovery: for 36 epochs after a congestion incident clears, congestion is its way back.
//! Its kind is the most common among the affected elements; one element's fault is one of `n`, so a region
//! raises only when several of its elements are hit at once (20 elements at p_a = 0.02: 8 or more).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::AnomalyKind;
use crate::model::alert::Transition;
use crate::model::header::Severity;
use crate::topology::ElementId;

/// Deviations are summed in units of 1/1024 (exact integer sums: the same under any worker layout).
pub const DEVIATION_UNIT: f32 = 1024.0;
/// A member's deviation is clipped here before it is summed (one member's spike does not move its element).
pub const DEVIATION_CLIP: f32 = 1.0;
/// A member is active when it logged within this many epochs (a day at 5-minute epochs).
pub const ACTIVE_EPOCHS: u64 = 288;

/// Incident detection parameters (the equations of the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IncidentParams {
    /// The count tests' bar, in standard deviations (Z).
    pub count_bar: f32,
    /// The congestion bar (D).
    pub shift_bar: f32,
    /// At least this many members missing (or alerting) for the count evidence.
    pub min_members: u32,
    /// At least this many members scored on a feature for its congestion evidence.
    pub min_scored: u32,
    /// Epochs an element is seen before it may raise, and before its congestion evidence may.
    pub warm_epochs: u32,
    pub warm_shift_epochs: u32,
    /// The slowest learning gain of the count rates (1/288: a day at 5-minute epochs).
    pub min_gain: f32,
    /// The slowest gains of `μ_f` (1/36: it follows the element's slow wander over hours) and of `v_f`
    /// (1/72).
    pub mean_gain: f32,
    pub var_gain: f32,
    /// The slowest gain of the features' covariances (1/72, as the variances': on the generator's fleets
    /// 1/288 and 1/36 both gave more false incidents — a correlation moves with the hour's load).
    pub cov_gain: f32,
    /// After a congestion incident clears, a move of its features the other way within this many epochs is
    /// its recovery, not a new incident.
    pub recovery_epochs: u64,
    /// A congestion move at this fraction of the bar that raises no incident (the members' models adapting
    /// to it as it lasts) also has a recovery window: its way back is not a new incident either.
    pub faint_at: f32,
    /// Hysteresis and learning (shared with regions).
    pub rules: Rules,
}

impl Default for IncidentParams {
    fn default() -> Self {
        IncidentParams {
            count_bar: 6.0,
            shift_bar: 7.0,
            min_members: 3,
            min_scored: 5,
            warm_epochs: 24,
            warm_shift_epochs: 36,
            min_gain: 1.0 / 288.0,
            mean_gain: 1.0 / 36.0,
            var_gain: 1.0 / 72.0,
            cov_gain: 1.0 / 72.0,
            recovery_epochs: 36,
            faint_at: 0.75,
            rules: Rules {
                critical_ratio: 2.0,
                clear_ratio: 0.5,
                clear_epochs: 3,
                learn_below: 0.65,
                relearn_after: 288,
            },
        }
    }
}

/// One worker's (or, summed, the whole fleet's) epoch of one element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementPartial {
    pub element: ElementId,
    pub region: ElementId,
    pub members: u32,
    pub active: u32,
    pub reporting: u32,
    /// Per feature: the members' clipped signed deviations, summed in units of 1/[`DEVIATION_UNIT`].
    pub sums: Vec<i64>,
    /// Per feature: how many members were scored.
    pub counts: Vec<u32>,
}

impl ElementPartial {
    pub fn new(element: ElementId, region: ElementId, features: usize) -> Self {
        ElementPartial {
            element,
            region,
            members: 0,
            active: 0,
            reporting: 0,
            sums: vec![0; features],
            counts: vec![0; features],
        }
    }

    /// Adds another worker's share of the same element's epoch.
    pub fn add(&mut self, o: &ElementPartial) {
        self.members += o.members;
        self.active += o.active;
        self.reporting += o.reporting;
        for (a, b) in self.sums.iter_mut().zip(&o.sums) {
            *a += b;
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
    }

    /// Per feature, the mean deviation `Σ/c` (NaN where no member was scored).
    pub fn means(&self) -> Vec<f32> {
        self.sums
            .iter()
            .zip(&self.counts)
            .map(|(s, c)| {
                if *c == 0 {
                    f32::NAN
                } else {
                    *s as f32 / DEVIATION_UNIT / *c as f32
                }
            })
            .collect()
    }

    /// Adds one member's signed deviation `z` on feature `f`.
    #[inline]
    pub fn add_deviation(&mut self, f: usize, z: f32) {
        if let (Some(s), Some(c)) = (self.sums.get_mut(f), self.counts.get_mut(f))
            && z.is_finite()
        {
            *s += (z.clamp(-DEVIATION_CLIP, DEVIATION_CLIP) * DEVIATION_UNIT).round() as i64;
            *c += 1;
        }
    }
}

/// What an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IncidentKind {
    /// Many members stopped reporting at once.
    Outage,
    /// Many members raised alerts at once.
    Alerts,
    /// The members' features moved together, each a little.
    Congestion,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Outage => "outage",
            IncidentKind::Alerts => "alerts",
            IncidentKind::Congestion => "congestion",
        }
    }
}

/// An open incident.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OpenIncident {
    pub start: u64,
    pub kind: IncidentKind,
    pub severity: Severity,
}

/// A feature the members moved on together: its index, and `T_f − μ_f` (the members' mean move, in their
/// own noise units) with the evidence `d_f`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub feature: u16,
    pub shift: f32,
    pub evidence: f32,
}

/// The members' alerts on one (feature, kind), and how many members have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAlerts {
    pub feature: u16,
    pub kind: AnomalyKind,
    pub members: u32,
}

/// The members' open alerts at an epoch, as the element operator counts them from the join.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertCounts {
    /// Distinct members with an open alert other than `silent`.
    pub alerting: u32,
    /// The most common (feature, kind) among them, most members first (at most 3).
    pub top: Vec<MemberAlerts>,
}

/// An incident's change, with what it was raised on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentChange {
    pub element: ElementId,
    pub region: ElementId,
    pub status: Transition,
    pub incident: OpenIncident,
    pub score: f32,
    pub members: u32,
    pub active: u32,
    pub missing: u32,
    pub alerting: u32,
    pub moved: Vec<Moved>,
    pub alerts: Vec<MemberAlerts>,
}

/// An element's learned normal and its incident (kept by the element operator, one per element; written
/// whole into checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElementState {
    pub epochs: u32,
    pub p_missing: f32,
    pub p_alerting: f32,
    pub mean: Vec<f32>,
    /// Learned variance of `T_f`; 0 until the feature is first seen with enough members.
    pub var: Vec<f32>,
    /// Learned variance of the two-epoch mean of `T_f − μ_f` (`v₂`): `v_f/2` for independent epochs, more
    /// for a feature whose members wander together; 0 until first learned.
    pub var_pair: Vec<f32>,
    /// Learned covariances of the two-epoch means of every pair of features (`C_ij`, `i < j`, at
    /// [`pair_index`]): the members' features move together (more traffic loads the channel, the CPU and
    /// the queue), so three features' evidence at once may be one move seen three times.
    pub cov_pair: Vec<f32>,
    /// The previous epoch's `T_f − μ_f` (NaN when the feature was not scored then).
    pub last_dev: Vec<f32>,
    /// Epochs each feature has had enough members scored (its evidence counts from `warm_shift_epochs`).
    pub scored: Vec<u32>,
    /// The features (and directions: true = up) an open congestion incident moved, all epochs it was open.
    pub signature: Vec<(u16, bool)>,
    /// After a congestion incident: until when its reverse move is its recovery.
    pub recovery: Option<Recovery>,
    pub open: Option<OpenIncident>,
    pub clear_run: u8,
}

impl ElementState {
    /// The correlation of two features' two-epoch means, `C_ij/√(v₂_i·v₂_j)`, shrunk towards none:
    /// `(1 − λ)·ρ` with λ = 0.1, so that the matrix [`ElementState::joint_evidence`] inverts stays well
    /// conditioned while its estimate is noisy (0 while either variance is not learned).
    pub fn correlation(&self, i: usize, j: usize) -> f32 {
        if i == j {
            return 1.0;
        }
        let (vi, vj) = (self.var_pair[i], self.var_pair[j]);
        if vi <= 0.0 || vj <= 0.0 {
            return 0.0;
        }
        let c = self.cov_pair[pair_index(i.min(j), i.max(j))];
        0.9 * (c / (vi * vj).sqrt()).clamp(-1.0, 1.0)
    }

    /// The joint congestion evidence of (at most three) features' evidence `d`: the Mahalanobis length
    /// `J = √(dᵀ R⁻¹ d)` with `R` their correlations ([`ElementState::correlation`]). Independent
    /// features give `√(Σ d²)`; features that always move together count about once, and features that
    /// usually move together but moved apart (throughput down while the queue grows) count more.
    pub fn joint_evidence(&self, moved: &[Moved]) -> f32 {
        let n = moved.len().min(3);
        let d: Vec<f64> = moved[..n].iter().map(|m| m.evidence as f64).collect();
        let r = |a: usize, b: usize| {
            self.correlation(moved[a].feature as usize, moved[b].feature as usize) as f64
        };
        // Cholesky of R (n ≤ 3, positive definite: |ρ| ≤ 0.9), then J² = |L⁻¹ d|².
        let mut l = [[0.0f64; 3]; 3];
        for a in 0..n {
            for b in 0..=a {
                let s: f64 = (0..b).map(|k| l[a][k] * l[b][k]).sum();
                if a == b {
                    l[a][a] = (r(a, a) - s).max(1e-6).sqrt();
                } else {
                    l[a][b] = (r(a, b) - s) / l[b][b];
                }
            }
        }
        let mut y = [0.0f64; 3];
        let mut j2 = 0.0;
        for a in 0..n {
            let s: f64 = (0..a).map(|k| l[a][k] * y[k]).sum();
            y[a] = (d[a] - s) / l[a][a];
            j2 += y[a] * y[a];
        }
        j2.sqrt() as f32
    }
}

/// Where the pair `(i, j)`, `i < j`, of features sits in [`ElementState::cov_pair`].
pub fn pair_index(i: usize, j: usize) -> usize {
    debug_assert!(i < j);
    j * (j - 1) / 2 + i
}

/// A congestion incident's recovery window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub until: u64,
    pub moved: Vec<(u16, bool)>,
}

/// The count test `(x − n·p)/√(n·p·(1 − p) + 1)`.
pub fn count_z(x: u32, n: u32, p: f32) -> f32 {
    let (x, n) = (x as f32, n as f32);
    (x - n * p) / (n * p * (1.0 - p) + 1.0).sqrt()
}

impl ElementState {
    pub const P0: f32 = 0.02;
    pub const P_FLOOR: f32 = 0.002;

    pub fn new(features: usize) -> Self {
        ElementState {
            epochs: 0,
            p_missing: Self::P0,
            p_alerting: Self::P0,
            mean: vec![0.0; features],
            var: vec![0.0; features],
            var_pair: vec![0.0; features],
            cov_pair: vec![0.0; features * features.saturating_sub(1) / 2],
            last_dev: vec![f32::NAN; features],
            scored: vec![0; features],
            signature: Vec::new(),
            recovery: None,
            open: None,
            clear_run: 0,
        }
    }

    /// One epoch `e` of the element: scores it, moves its incident, learns. Returns the incident's change.
    pub fn step(
        &mut self,
        p: &IncidentParams,
        e: u64,
        x: &ElementPartial,
        alerts: &AlertCounts,
        fleet: &[f32],
    ) -> Option<IncidentChange> {
        self.step_viewed(p, e, x, alerts, fleet).0
    }

    /// [`ElementState::step`], with what its region sees of the element's epoch.
    pub fn step_viewed(
        &mut self,
        p: &IncidentParams,
        e: u64,
        x: &ElementPartial,
        alerts: &AlertCounts,
        fleet: &[f32],
    ) -> (Option<IncidentChange>, ElementView) {
        let missing = x.active.saturating_sub(x.reporting);
        let alerting = alerts.alerting.min(x.members);
        let z_m = if missing >= p.min_members {
            count_z(missing, x.active, self.p_missing.max(Self::P_FLOOR))
        } else {
            0.0
        };
        let z_k = if alerting >= p.min_members {
            count_z(alerting, x.reporting, self.p_alerting.max(Self::P_FLOOR))
        } else {
            0.0
        };
        // The congestion evidence, per feature: the members' mean move over this epoch and the last,
        // against the element's own recent mean and its epoch-to-epoch variability.
        let mut moved: Vec<Moved> = Vec::new();
        let mut t = vec![f32::NAN; self.mean.len()];
        let mut pair = vec![f32::NAN; self.mean.len()];
        let warm_shift = self.epochs >= p.warm_shift_epochs;
        for (f, slot) in t.iter_mut().enumerate() {
            let c = x.counts.get(f).copied().unwrap_or(0);
            if c < p.min_scored {
                self.last_dev[f] = f32::NAN;
                continue;
            }
            // Relative to the whole fleet's mean at this epoch (what every element shares).
            let common = fleet
                .get(f)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0);
            let tf = x.sums[f] as f32 / DEVIATION_UNIT / c as f32 - common;
            *slot = tf;
            if self.var[f] <= 0.0 {
                self.last_dev[f] = f32::NAN;
                continue; // first seen: T_f starts its history
            }
            self.scored[f] = self.scored[f].saturating_add(1);
            let v = self.var[f].max(0.25 / c as f32);
            let dev = tf - self.mean[f];
            let prev = self.last_dev[f];
            self.last_dev[f] = dev;
            // Two epochs against the learned variance of their mean, never below what two independent
            // epochs would have (`v/2`): the members of an element share slow wander on some features, and
            // two epochs of it are not independent draws.
            let (w, vw) = if prev.is_finite() {
                ((dev + prev) / 2.0, self.var_pair[f].max(v / 2.0))
            } else {
                (dev, v)
            };
            pair[f] = if prev.is_finite() { w } else { f32::NAN };
            let d = w / vw.sqrt();
            if warm_shift && self.scored[f] >= p.warm_shift_epochs && d.abs() >= 1.0 {
                moved.push(Moved {
                    feature: f as u16,
                    shift: w,
                    evidence: d,
                });
            }
        }
        moved.sort_by(|a, b| b.evidence.abs().total_cmp(&a.evidence.abs()));
        // The way back: after a congestion, the members' models have partly adapted to it, so its end moves
        // the same features the other way. That is the recovery, not a new incident: within the recovery
        // window the joint evidence is that of the three largest moves that are not the way back (a move of
        // other features still raises).
        let window = self.recovery.as_ref().filter(|r| e <= r.until);
        let joint = match window {
            Some(r) => {
                let own: Vec<Moved> = moved
                    .iter()
                    .filter(|m| {
                        !r.moved
                            .iter()
                            .any(|(f, sign)| *f == m.feature && *sign != (m.evidence > 0.0))
                    })
                    .take(3)
                    .copied()
                    .collect();
                self.joint_evidence(&own)
            }
            None => self.joint_evidence(&moved),
        };
        moved.truncate(3);
        moved.retain(|m| m.evidence.abs() >= 2.0);
        let congestion = joint / p.shift_bar;
        // A faint congestion (no incident open, below the bar): its features and directions, kept for its
        // way back, for as long as it lasts and the recovery window after.
        if self.open.is_none() && congestion >= p.faint_at && congestion < 1.0 && !moved.is_empty()
        {
            let mut sig = match self.recovery.take() {
                Some(r) if e <= r.until => r.moved,
                _ => Vec::new(),
            };
            for m in &moved {
                if !sig.iter().any(|(f, _)| *f == m.feature) {
                    sig.push((m.feature, m.evidence > 0.0));
                }
            }
            self.recovery = Some(Recovery {
                until: e + p.recovery_epochs,
                moved: sig,
            });
        }
        let candidates = [
            (z_m / p.count_bar, IncidentKind::Outage),
            (z_k / p.count_bar, IncidentKind::Alerts),
            (congestion, IncidentKind::Congestion),
        ];
        let (score, kind) =
            candidates
                .into_iter()
                .fold((0.0f32, IncidentKind::Outage), |best, c| {
                    if c.0 > best.0 { c } else { best }
                });
        let warm = self.epochs >= p.warm_epochs;

        // Hysteresis.
        let before = self.open;
        let moved_incident =
            p.rules
                .step(&mut self.open, &mut self.clear_run, e, score, kind, warm);
        if let Some((Transition::Cleared, o)) = moved_incident
            && o.kind == IncidentKind::Congestion
        {
            self.recovery = Some(Recovery {
                until: e + p.recovery_epochs,
                moved: self.signature.clone(),
            });
        }

        // What an open congestion incident moved (every feature at 2 or more of evidence, while open).
        match self.open {
            Some(o) if o.kind == IncidentKind::Congestion => {
                if before.is_none() {
                    self.signature.clear();
                    self.recovery = None;
                }
                for m in &moved {
                    let sign = m.evidence > 0.0;
                    if !self.signature.iter().any(|(f, _)| *f == m.feature) {
                        self.signature.push((m.feature, sign));
                    }
                }
            }
            _ => {}
        }

        // Learning.
        if p.rules.learns(before, self.open, e, score, warm) {
            let first = 1.0 / (self.epochs as f32 + 1.0);
            let g = first.max(p.min_gain);
            let (g_mean, g_var) = (first.max(p.mean_gain), first.max(p.var_gain));
            let g_cov = first.max(p.cov_gain);
            if x.active > 0 {
                self.p_missing += g * (missing as f32 / x.active as f32 - self.p_missing);
            }
            if x.reporting > 0 {
                self.p_alerting += g * (alerting as f32 / x.reporting as f32 - self.p_alerting);
            }
            for (f, tf) in t.iter().enumerate() {
                if tf.is_nan() {
                    continue;
                }
                if self.var[f] <= 0.0 {
                    self.mean[f] = *tf;
                    self.var[f] = 1.0 / x.counts[f] as f32;
                    continue;
                }
                let dev = tf - self.mean[f];
                self.mean[f] += g_mean * dev;
                self.var[f] += g_var * ((dev * dev).min(16.0 * self.var[f]) - self.var[f]);
                let w = pair[f];
                if w.is_finite() {
                    let v2 = if self.var_pair[f] > 0.0 {
                        self.var_pair[f]
                    } else {
                        self.var[f] / 2.0
                    };
                    self.var_pair[f] = v2 + g_var * ((w * w).min(16.0 * v2) - v2);
                }
            }
            for j in 1..pair.len() {
                if !pair[j].is_finite() {
                    continue;
                }
                for i in 0..j {
                    if !pair[i].is_finite() {
                        continue;
                    }
                    let bound = 16.0 * (self.var_pair[i] * self.var_pair[j]).sqrt();
                    let c = &mut self.cov_pair[pair_index(i, j)];
                    *c += g_cov * ((pair[i] * pair[j]).clamp(-bound, bound) - *c);
                }
            }
        }
        self.epochs = self.epochs.saturating_add(1);

        let view = ElementView {
            score,
            kind: self.open.map_or(kind, |o| o.kind),
            open: self.open.is_some(),
            moved: moved.iter().map(|m| m.feature).collect(),
        };
        let Some((status, incident)) = moved_incident else {
            return (None, view);
        };
        let change = IncidentChange {
            element: x.element,
            region: x.region,
            status,
            incident,
            score,
            members: x.members,
            active: x.active,
            missing,
            alerting,
            moved,
            alerts: alerts.top.clone(),
        };
        (Some(change), view)
    }
}

/// The incident rules elements and regions share: hysteresis like a customer's alert, and when a warm one
/// may learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// An open incident is critical at this score.
    pub critical_ratio: f32,
    /// It clears after `clear_epochs` epochs in a row below this score.
    pub clear_ratio: f32,
    pub clear_epochs: u8,
    /// It learns only while its score is below this (and no incident is open).
    pub learn_below: f32,
    /// An incident open this long no longer stops it from learning.
    pub relearn_after: u64,
}

impl Rules {
    /// Moves `open` by the epoch's score: raise at `s ≥ 1` once warm (critical at `critical_ratio`),
    /// `updated` when the kind or severity changes, clear after `clear_epochs` in a row below `clear_ratio`.
    /// Returns the transition and the incident it is about (a cleared one as it was).
    fn step(
        self,
        open: &mut Option<OpenIncident>,
        clear_run: &mut u8,
        e: u64,
        score: f32,
        kind: IncidentKind,
        warm: bool,
    ) -> Option<(Transition, OpenIncident)> {
        let severity = if score >= self.critical_ratio {
            Severity::Critical
        } else {
            Severity::Warning
        };
        match *open {
            None if warm && score >= 1.0 => {
                let o = OpenIncident {
                    start: e,
                    kind,
                    severity,
                };
                *open = Some(o);
                *clear_run = 0;
                Some((Transition::Raised, o))
            }
            None => None,
            Some(o) if score < self.clear_ratio => {
                *clear_run = clear_run.saturating_add(1);
                if *clear_run < self.clear_epochs {
                    return None;
                }
                *open = None;
                *clear_run = 0;
                Some((Transition::Cleared, o))
            }
            Some(o) => {
                *clear_run = 0;
                if score < 1.0 || (kind == o.kind && severity == o.severity) {
                    return None;
                }
                let o = OpenIncident {
                    start: o.start,
                    kind,
                    severity,
                };
                *open = Some(o);
                Some((Transition::Updated, o))
            }
        }
    }

    /// Whether the epoch teaches the normal: no incident open before or after it and a score below
    /// `learn_below` (a young one learns whatever its score: its normal is what it is learning), or an
    /// incident open for `relearn_after` epochs (a permanent change ends).
    fn learns(
        self,
        before: Option<OpenIncident>,
        now: Option<OpenIncident>,
        e: u64,
        score: f32,
        warm: bool,
    ) -> bool {
        let long_open = before.is_some_and(|o| e.saturating_sub(o.start) >= self.relearn_after);
        let quiet = score < self.learn_below || !warm;
        (now.is_none() && before.is_none() && quiet) || long_open
    }
}

/// What a region sees of one of its elements' epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementView {
    /// The element's score `s` (1: its own raise bar).
    pub score: f32,
    /// Its open incident's kind, or else the kind its score is highest on.
    pub kind: IncidentKind,
    pub open: bool,
    /// The features its members moved together on (evidence ≥ 2).
    pub moved: Vec<u16>,
}

/// Region-level incident parameters (the equations of the module documentation, "Regions").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionParams {
    /// An element is affected when its incident is open or its score is at least this.
    pub affected_at: f32,
    /// The count test's bar (Z) and the fewest affected elements it counts.
    pub count_bar: f32,
    pub min_elements: u32,
    pub warm_epochs: u32,
    pub min_gain: f32,
    /// Hysteresis and learning (an element's, by default).
    pub rules: Rules,
    /// After a congestion incident clears, congestion within this many epochs is its way back.
    pub recovery_epochs: u64,
}

impl Default for RegionParams {
    fn default() -> Self {
        let e = IncidentParams::default();
        RegionParams {
            affected_at: 0.75,
            count_bar: e.count_bar,
            min_elements: 3,
            warm_epochs: e.warm_epochs,
            min_gain: e.min_gain,
            rules: e.rules,
            recovery_epochs: e.recovery_epochs,
        }
    }
}

/// A region's incident change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionChange {
    pub region: ElementId,
    pub status: Transition,
    pub incident: OpenIncident,
    pub score: f32,
    /// Elements of the region stepped at the epoch, and how many were affected.
    pub elements: u32,
    pub affected: u32,
    /// Affected elements by kind (outage, alerts, congestion).
    pub by_kind: [u32; 3],
    /// The features most affected elements moved together on: (feature, elements), most first (≤ 3).
    pub features: Vec<(u16, u32)>,
}

/// A region's learned normal share of affected elements, and its incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    pub epochs: u32,
    pub p_affected: f32,
    pub open: Option<OpenIncident>,
    pub clear_run: u8,
    /// After a congestion incident: until when congestion is its way back, not a new incident.
    pub recovery_until: Option<u64>,
}

impl Default for RegionState {
    fn default() -> Self {
        RegionState {
            epochs: 0,
            p_affected: ElementState::P0,
            open: None,
            clear_run: 0,
            recovery_until: None,
        }
    }
}

impl RegionState {
    /// One epoch `e` of the region, from its elements' views of the same epoch.
    pub fn step(
        &mut self,
        p: &RegionParams,
        e: u64,
        region: ElementId,
        elements: &[ElementView],
    ) -> Option<RegionChange> {
        let n = elements.len() as u32;
        let affected: Vec<&ElementView> = elements
            .iter()
            .filter(|v| v.open || v.score >= p.affected_at)
            .collect();
        let x = affected.len() as u32;
        let z = if x >= p.min_elements {
            count_z(x, n, self.p_affected.max(ElementState::P_FLOOR))
        } else {
            0.0
        };
        let score = z / p.count_bar;
        let mut by_kind = [0u32; 3];
        let mut features: BTreeMap<u16, u32> = BTreeMap::new();
        for v in &affected {
            by_kind[kind_index(v.kind)] += 1;
            for f in &v.moved {
                *features.entry(*f).or_default() += 1;
            }
        }
        // The most common kind (ties: outage, then alerts, then congestion).
        let kind = [
            IncidentKind::Outage,
            IncidentKind::Alerts,
            IncidentKind::Congestion,
        ]
        .into_iter()
        .fold(IncidentKind::Outage, |best, k| {
            if by_kind[kind_index(k)] > by_kind[kind_index(best)] {
                k
            } else {
                best
            }
        });
        // The way back of a congestion: its elements' models partly adapted to it, and those that did not
        // raise have no recovery rule of their own.
        let score = if self.open.is_none()
            && kind == IncidentKind::Congestion
            && self.recovery_until.is_some_and(|u| e <= u)
        {
            0.0
        } else {
            score
        };
        let warm = self.epochs >= p.warm_epochs;
        let before = self.open;
        let moved_incident =
            p.rules
                .step(&mut self.open, &mut self.clear_run, e, score, kind, warm);
        if let Some((Transition::Cleared, o)) = moved_incident
            && o.kind == IncidentKind::Congestion
        {
            self.recovery_until = Some(e + p.recovery_epochs);
        }
        if n > 0 && p.rules.learns(before, self.open, e, score, warm) {
            let g = (1.0 / (self.epochs as f32 + 1.0)).max(p.min_gain);
            self.p_affected += g * (x as f32 / n as f32 - self.p_affected);
        }
        self.epochs = self.epochs.saturating_add(1);
        let (status, incident) = moved_incident?;
        let mut features: Vec<(u16, u32)> = features.into_iter().collect();
        features.sort_by_key(|(f, k)| (std::cmp::Reverse(*k), *f));
        features.truncate(3);
        Some(RegionChange {
            region,
            status,
            incident,
            score,
            elements: n,
            affected: x,
            by_kind,
            features,
        })
    }
}

/// The index of a kind in [`RegionChange::by_kind`].
pub fn kind_index(k: IncidentKind) -> usize {
    match k {
        IncidentKind::Outage => 0,
        IncidentKind::Alerts => 1,
        IncidentKind::Congestion => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ElementId {
        ElementId::parse(s.as_bytes(), b"").unwrap()
    }

    fn epoch(members: u32, reporting: u32, devs: &[f32]) -> ElementPartial {
        let mut x = ElementPartial::new(id("el"), id("r"), 1);
        x.members = members;
        x.active = members;
        x.reporting = reporting;
        for &z in devs {
            x.add_deviation(0, z);
        }
        x
    }

    #[test]
    fn count_test_by_hand() {
        // 8 of 50 missing at p = 0.01: (8 − 0.5)/√(0.495 + 1) = 7.5/1.22270 = 6.1340
        assert!((count_z(8, 50, 0.01) - 6.1340).abs() < 1e-3);
        // 0 of 10 at p = 0.02: −0.2/√1.196 = −0.18288
        assert!((count_z(0, 10, 0.02) + 0.18288).abs() < 1e-4);
    }

    #[test]
    fn deviations_are_clipped_and_summed_exactly() {
        let mut x = ElementPartial::new(id("el"), id("r"), 2);
        x.add_deviation(0, 0.5);
        x.add_deviation(0, -7.0); // clipped to −1
        x.add_deviation(1, f32::NAN); // not a deviation
        x.add_deviation(5, 1.0); // no such feature
        assert_eq!(x.sums, vec![512 - 1024, 0]);
        assert_eq!(x.counts, vec![2, 0]);
        assert_eq!(x.means()[0], -0.25);
        assert!(x.means()[1].is_nan());
        let mut y = x.clone();
        y.add(&x);
        assert_eq!(y.sums[0], 2 * (512 - 1024));
        assert_eq!(y.counts[0], 4);
    }

    #[test]
    fn learning_follows_the_equations_by_hand() {
        let p = IncidentParams::default();
        let mut s = ElementState::new(1);
        let none = AlertCounts::default();
        // Epoch 0: 10 active, 9 reporting, five members scored at +0.2 each: T = 0.2.
        let x = epoch(10, 9, &[0.2; 5]);
        assert!(s.step(&p, 0, &x, &none, &[]).is_none());
        // g = 1/(0+1) = 1: p_m = 1/10; p_k = 0/9; the first T starts μ = 0.2, v = 1/5.
        assert!((s.p_missing - 0.1).abs() < 1e-6);
        assert_eq!(s.p_alerting, 0.0);
        assert!((s.mean[0] - 0.2).abs() < 1e-3);
        assert!((s.var[0] - 0.2).abs() < 1e-6);
        // Epoch 1: everyone reports, T = 0.6: g = 1/2; p_m = 0.1 + 0.5·(0 − 0.1) = 0.05;
        // μ = 0.2 + 0.5·0.4 = 0.4; v = 0.2 + 0.5·(0.16 − 0.2) = 0.18.
        let x = epoch(10, 10, &[0.6; 5]);
        assert!(s.step(&p, 1, &x, &none, &[]).is_none());
        assert!((s.p_missing - 0.05).abs() < 1e-6);
        assert!((s.mean[0] - 0.4).abs() < 1e-3);
        assert!((s.var[0] - 0.18).abs() < 1e-3);
        assert_eq!(s.epochs, 2);
        assert_eq!(s.var_pair[0], 0.0, "epoch 1 has no scored epoch before it");
        // Epoch 2: T = 0.3, g = 1/3: dev = 0.3 − 0.4 = −0.1 and the last dev 0.4 (against μ = 0.2): w = 0.15.
        // μ = 0.4 − 0.1/3 = 0.36667; v = 0.18 + (0.01 − 0.18)/3 = 0.12333; v₂ starts at v/2 = 0.061667 and
        // learns w² = 0.0225: 0.061667 + (0.0225 − 0.061667)/3 = 0.048611.
        let x = epoch(10, 10, &[0.3; 5]);
        assert!(s.step(&p, 2, &x, &none, &[]).is_none());
        assert!((s.mean[0] - 0.36667).abs() < 1e-3);
        assert!((s.var[0] - 0.12333).abs() < 1e-3);
        assert!((s.var_pair[0] - 0.048611).abs() < 1e-3, "{}", s.var_pair[0]);
    }

    /// An element of `members`, all reporting, every member at `at[f]` on feature `f`.
    fn epoch_at(members: u32, at: &[f32]) -> ElementPartial {
        let mut x = ElementPartial::new(id("el"), id("r"), at.len());
        (x.members, x.active, x.reporting) = (members, members, members);
        for _ in 0..members {
            for (f, &z) in at.iter().enumerate() {
                x.add_deviation(f, z);
            }
        }
        x
    }

    /// [`epoch_at`] with two features.
    fn epoch2(members: u32, a: f32, b: f32) -> ElementPartial {
        epoch_at(members, &[a, b])
    }

    #[test]
    fn the_way_back_does_not_raise_with_a_small_move_beside_it_and_a_large_one_does() {
        let p = IncidentParams::default();
        let none = AlertCounts::default();
        let quiet = |e: u64| if e % 2 == 0 { 0.1 } else { -0.1 };
        let run = |extra: f32| {
            let mut s = ElementState::new(2);
            for e in 0..200u64 {
                let z = quiet(e);
                assert!(s.step(&p, e, &epoch2(50, z, -z), &none, &[]).is_none());
            }
            // A congestion on feature 0 (0.6σ low), raised and cleared.
            let raised = (200..206).any(|e| {
                s.step(&p, e, &epoch2(50, -0.6, quiet(e)), &none, &[])
                    .is_some()
            });
            assert!(raised);
            let cleared = (206..216).any(|e| {
                s.step(&p, e, &epoch2(50, quiet(e), -quiet(e)), &none, &[])
                    .is_some_and(|c| c.status == Transition::Cleared)
            });
            assert!(cleared);
            // Its way back (feature 0 up) with feature 1 moving `extra` beside it.
            (216..222).any(|e| s.step(&p, e, &epoch2(50, 0.6, extra), &none, &[]).is_some())
        };
        // Feature 1 at 0.25σ: d ≈ 3.5 on its own, below the bar (with the way back it made J ≈ 9 before).
        assert!(!run(0.25), "the way back and a small move beside it");
        // Feature 1 at 0.6σ: a move of its own, at the bar by itself.
        assert!(
            run(0.6),
            "a congestion of another feature during the way back"
        );
    }

    #[test]
    fn joint_evidence_counts_features_that_move_together_once_by_hand() {
        let mut s = ElementState::new(3);
        s.var_pair = vec![1.0, 1.0, 4.0];
        // C_01 = 0.5 (ρ 0.5, shrunk to 0.45); feature 2 independent of both.
        s.cov_pair = vec![0.5, 0.0, 0.0];
        assert_eq!(pair_index(0, 1), 0);
        assert_eq!(pair_index(1, 2), 2);
        assert!((s.correlation(1, 0) - 0.45).abs() < 1e-6);
        let m = |f: u16, d: f32| Moved {
            feature: f,
            shift: 0.0,
            evidence: d,
        };
        // Same direction: J² = (16 + 16 − 2·0.45·16)/(1 − 0.45²) = 17.6/0.7975 = 22.069, J = 4.698.
        let j = s.joint_evidence(&[m(0, 4.0), m(1, 4.0)]);
        assert!((j - 4.698).abs() < 1e-3, "{j}");
        // Apart: (32 + 14.4)/0.7975 = 58.18, J = 7.628.
        let j = s.joint_evidence(&[m(0, 4.0), m(1, -4.0)]);
        assert!((j - 7.628).abs() < 1e-3, "{j}");
        // With an independent third feature: J² adds its d² (22.069 + 9 = 31.069, J = 5.574).
        let j = s.joint_evidence(&[m(0, 4.0), m(1, 4.0), m(2, 3.0)]);
        assert!((j - 5.574).abs() < 1e-3, "{j}");
        // Unlearned correlations: √(Σ d²).
        let fresh = ElementState::new(3);
        let j = fresh.joint_evidence(&[m(0, 4.0), m(1, 4.0), m(2, 3.0)]);
        assert!((j - 41.0f32.sqrt()).abs() < 1e-4, "{j}");
        assert_eq!(fresh.joint_evidence(&[]), 0.0);
    }

    #[test]
    fn an_element_learns_which_features_move_together() {
        let p = IncidentParams::default();
        let none = AlertCounts::default();
        let mut s = ElementState::new(3);
        // Features 0 and 1 wander together, feature 2 alternates on its own.
        for e in 0..400u64 {
            let z = if (e / 8) % 2 == 0 { 0.1 } else { -0.1 };
            let own = if e % 2 == 0 { 0.1 } else { -0.1 };
            let x = epoch_at(50, &[z, z, own]);
            assert!(s.step(&p, e, &x, &none, &[]).is_none());
        }
        assert!(s.correlation(0, 1) > 0.85, "{}", s.correlation(0, 1));
        assert!(s.correlation(0, 2).abs() < 0.1, "{}", s.correlation(0, 2));
    }

    #[test]
    fn members_wandering_together_learn_a_wider_two_epoch_variance_and_need_a_larger_move() {
        let p = IncidentParams::default();
        let none = AlertCounts::default();
        // T wanders: eight epochs at +0.1, eight at −0.1. v ≈ 0.01 as for the alternating element, but 14 of
        // 16 two-epoch means are ±0.1 where independent epochs would give them a variance of v/2:
        // v₂ ≈ 14/16 · 0.01 = 0.00875.
        let mut s = ElementState::new(1);
        for e in 0..400u64 {
            let z = if (e / 8) % 2 == 0 { 0.1 } else { -0.1 };
            assert!(
                s.step(&p, e, &epoch(50, 50, &[z; 50]), &none, &[])
                    .is_none()
            );
        }
        assert!((s.var[0] - 0.01).abs() < 0.002, "{}", s.var[0]);
        assert!(
            (s.var_pair[0] - 0.00875).abs() < 0.0015,
            "{}",
            s.var_pair[0]
        );
        // Every member 0.6σ low for six epochs (after an epoch at −0.1, as at epoch 399): the alternating
        // element (μ ≈ −0.017, v ≈ 0.0123: the mean lags the alternation) raises on it (|d| ≈ 0.58/√(v/2)
        // ≈ 7.4 ≥ 7), the wandering one does not (≈ 0.6/√0.00875 ≈ 6.4).
        let low = epoch(50, 50, &[-0.6; 50]);
        assert!((400..406).all(|e| s.step(&p, e, &low, &none, &[]).is_none()));
        let mut q = warmed(&p, 50, 400);
        assert!(q.var_pair[0] < 0.001, "alternating: {}", q.var_pair[0]);
        assert!((400..406).any(|e| q.step(&p, e, &low, &none, &[]).is_some()));
    }

    /// A quiet element for `n` epochs (everyone reports, deviations alternating ±0.1).
    fn warmed(p: &IncidentParams, members: u32, n: u64) -> ElementState {
        let mut s = ElementState::new(1);
        for e in 0..n {
            let z = if e % 2 == 0 { 0.1 } else { -0.1 };
            let devs = vec![z; members as usize];
            assert!(
                s.step(
                    p,
                    e,
                    &epoch(members, members, &devs),
                    &AlertCounts::default(),
                    &[]
                )
                .is_none()
            );
        }
        s
    }

    #[test]
    fn an_outage_raises_at_once_and_clears_after_three_quiet_epochs() {
        let p = IncidentParams::default();
        let mut s = warmed(&p, 50, 100);
        let learned = s.clone();
        // 40 of 50 silent: z = (40 − 50·0.002)/√(0.0998 + 1) ≈ 38, critical.
        let ch = s
            .step(
                &p,
                100,
                &epoch(50, 10, &[0.0; 10]),
                &AlertCounts::default(),
                &[],
            )
            .expect("raised");
        assert_eq!(ch.status, Transition::Raised);
        assert_eq!(ch.incident.kind, IncidentKind::Outage);
        assert_eq!(ch.incident.severity, Severity::Critical);
        assert_eq!((ch.missing, ch.active, ch.members), (40, 50, 50));
        // The outage does not teach the element that silence is normal.
        assert_eq!(s.p_missing, learned.p_missing);
        for e in 101..104 {
            let ch = s.step(
                &p,
                e,
                &epoch(50, 50, &[0.0; 50]),
                &AlertCounts::default(),
                &[],
            );
            if e < 103 {
                assert!(ch.is_none(), "epoch {e}");
            } else {
                let ch = ch.expect("cleared");
                assert_eq!(ch.status, Transition::Cleared);
                assert_eq!(ch.incident.start, 100);
            }
        }
    }

    #[test]
    fn a_few_missing_or_a_young_element_raise_nothing() {
        let p = IncidentParams::default();
        // Two missing: below min_members, whatever the rate.
        let mut s = warmed(&p, 50, 100);
        assert!(
            s.step(
                &p,
                100,
                &epoch(50, 48, &[0.0; 48]),
                &AlertCounts::default(),
                &[]
            )
            .is_none()
        );
        // A young element (10 epochs) does not raise even on a total outage.
        let mut s = warmed(&p, 50, 10);
        assert!(
            s.step(&p, 10, &epoch(50, 0, &[]), &AlertCounts::default(), &[])
                .is_none()
        );
    }

    #[test]
    fn the_way_back_of_a_faint_congestion_is_not_an_incident() {
        let p = IncidentParams::default();
        let none = AlertCounts::default();
        // Every member 0.46σ low for ten epochs: d ≈ −0.46/√(0.01/2) ≈ −6.5 once both epochs of the mean
        // are low, J/D ≈ 0.93 — above ¾ of the bar, below the bar: no incident.
        let mut s = warmed(&p, 50, 100);
        for e in 100..110 {
            assert!(
                s.step(&p, e, &epoch(50, 50, &[-0.46; 50]), &none, &[])
                    .is_none()
            );
        }
        let r = s
            .recovery
            .clone()
            .expect("a faint congestion keeps its way back");
        assert_eq!(r.moved, vec![(0, false)]);
        assert_eq!(r.until, 109 + p.recovery_epochs);
        // Its way back (0.6σ high: J/D ≈ 1.2) is not an incident…
        for e in 110..114 {
            assert!(
                s.step(&p, e, &epoch(50, 50, &[0.6; 50]), &none, &[])
                    .is_none(),
                "epoch {e}"
            );
        }
        // …where the same move on a quiet element is one.
        let mut q = warmed(&p, 50, 100);
        let raised = (100..104).any(|e| {
            q.step(&p, e, &epoch(50, 50, &[0.6; 50]), &none, &[])
                .is_some()
        });
        assert!(raised);
    }

    #[test]
    fn members_moving_a_little_together_raise_congestion_and_their_recovery_does_not() {
        let p = IncidentParams::default();
        let mut s = warmed(&p, 50, 100);
        // Quiet history: T alternates ±0.1, so μ ≈ 0 and v ≈ 0.01 (above the floor 0.25/50 = 0.005).
        assert!(s.mean[0].abs() < 0.01, "{}", s.mean[0]);
        assert!((s.var[0] - 0.01).abs() < 0.002, "{}", s.var[0]);
        // Every member 0.6σ low. Epoch 100: w = (−0.6 + last dev ≈ −0.1)/2 ≈ −0.35, d ≈ −0.35/√(0.01/2)
        // ≈ −5: evidence, not yet an incident (J/D ≈ 0.7), but enough to stop the element learning.
        let low = epoch(50, 50, &[-0.6; 50]);
        assert!(
            s.step(&p, 100, &low, &AlertCounts::default(), &[])
                .is_none()
        );
        let frozen = s.mean[0];
        // Epoch 101: w = −0.6, d ≈ −8.5: raised, one epoch after the move began.
        let ch = s
            .step(&p, 101, &low, &AlertCounts::default(), &[])
            .expect("raised");
        assert_eq!(ch.incident.kind, IncidentKind::Congestion);
        assert_eq!(ch.moved.len(), 1);
        assert_eq!(ch.moved[0].feature, 0);
        assert!((ch.moved[0].shift + 0.6).abs() < 0.02, "{:?}", ch.moved);
        assert!(ch.moved[0].evidence < -7.0, "{:?}", ch.moved);
        assert_eq!(s.mean[0], frozen, "an incident does not teach the element");
        // The members' models adapt: back to the quiet pattern, cleared after three epochs.
        let mut cleared = false;
        for e in 102..110 {
            let z = if e % 2 == 0 { 0.1 } else { -0.1 };
            if let Some(ch) = s.step(
                &p,
                e,
                &epoch(50, 50, &[z; 50]),
                &AlertCounts::default(),
                &[],
            ) {
                assert_eq!(ch.status, Transition::Cleared);
                cleared = true;
                break;
            }
        }
        assert!(cleared);
        // The congestion ends: the same feature moves the other way. Its recovery, not a new incident.
        for e in 110..114 {
            assert!(
                s.step(
                    &p,
                    e,
                    &epoch(50, 50, &[0.6; 50]),
                    &AlertCounts::default(),
                    &[]
                )
                .is_none(),
                "epoch {e}"
            );
        }
        // Half a sigma on a tenth of the members is nothing.
        let mut s = warmed(&p, 50, 100);
        let mut devs = vec![0.1f32; 45];
        devs.extend([-0.5; 5]);
        for e in 100..103 {
            assert!(
                s.step(&p, e, &epoch(50, 50, &devs), &AlertCounts::default(), &[])
                    .is_none()
            );
        }
    }

    #[test]
    fn many_members_alerting_at_once_raise_and_name_their_alerts() {
        let p = IncidentParams::default();
        let mut s = warmed(&p, 50, 100);
        let alerts = AlertCounts {
            alerting: 12,
            top: vec![MemberAlerts {
                feature: 0,
                kind: AnomalyKind::LevelShift,
                members: 12,
            }],
        };
        let ch = s
            .step(&p, 100, &epoch(50, 50, &[0.0; 50]), &alerts, &[])
            .expect("raised");
        assert_eq!(ch.incident.kind, IncidentKind::Alerts);
        assert_eq!(ch.alerting, 12);
        assert_eq!(ch.alerts, alerts.top);
    }

    fn view(score: f32, open: bool, kind: IncidentKind, moved: &[u16]) -> ElementView {
        ElementView {
            score,
            kind,
            open,
            moved: moved.to_vec(),
        }
    }

    #[test]
    fn a_region_learns_its_share_of_affected_elements_by_hand() {
        let p = RegionParams::default();
        let mut r = RegionState::default();
        let quiet = view(0.1, false, IncidentKind::Outage, &[]);
        // Epoch 0: 1 of 4 affected (score ≥ ¾): g = 1, p_a = 1/4; 1 < 3 affected: s = 0.
        let mut els = vec![quiet.clone(); 3];
        els.push(view(0.8, false, IncidentKind::Congestion, &[2]));
        assert!(r.step(&p, 0, id("r"), &els).is_none());
        assert!((r.p_affected - 0.25).abs() < 1e-6);
        // Epoch 1: none of 4: g = 1/2, p_a = 0.25 + 0.5·(0 − 0.25) = 0.125.
        assert!(r.step(&p, 1, id("r"), &vec![quiet.clone(); 4]).is_none());
        assert!((r.p_affected - 0.125).abs() < 1e-6);
        assert_eq!(r.epochs, 2);
    }

    #[test]
    fn a_region_raises_when_many_elements_are_hit_at_once_and_not_for_one() {
        let p = RegionParams::default();
        let mut r = RegionState::default();
        let quiet = view(0.1, false, IncidentKind::Outage, &[]);
        for e in 0..300 {
            assert!(r.step(&p, e, id("r"), &vec![quiet.clone(); 20]).is_none());
        }
        // Learned ≈ 0 (floored at 0.002 in the test).
        assert!(r.p_affected < 0.002);
        // One element's outage, even critical: 1 < 3 affected, nothing.
        let mut els = vec![quiet.clone(); 19];
        els.push(view(5.0, true, IncidentKind::Outage, &[]));
        assert!(r.step(&p, 300, id("r"), &els).is_none());
        // 8 of 20 congested, each below its own bar: z = (8 − 0.04)/√(0.03992 + 1) = 7.8056, s = 1.301.
        let mut els = vec![quiet.clone(); 12];
        for _ in 0..6 {
            els.push(view(0.8, false, IncidentKind::Congestion, &[4, 7]));
        }
        els.push(view(1.2, true, IncidentKind::Congestion, &[4]));
        els.push(view(0.9, false, IncidentKind::Outage, &[]));
        // (Half-way is not affected.)
        els[0] = view(0.7, false, IncidentKind::Congestion, &[4]);
        let ch = r.step(&p, 301, id("r"), &els).expect("raised");
        assert_eq!(ch.status, Transition::Raised);
        assert_eq!((ch.elements, ch.affected), (20, 8));
        assert!((ch.score - 1.3009).abs() < 1e-3, "{}", ch.score);
        assert_eq!(ch.incident.kind, IncidentKind::Congestion);
        assert_eq!(ch.incident.severity, Severity::Warning);
        assert_eq!(ch.by_kind, [1, 0, 7]);
        assert_eq!(ch.features, vec![(4, 7), (7, 6)]);
        // Three quiet epochs clear it; it did not learn while open.
        let learned = r.p_affected;
        for e in 302..304 {
            assert!(r.step(&p, e, id("r"), &vec![quiet.clone(); 20]).is_none());
        }
        let ch = r
            .step(&p, 304, id("r"), &vec![quiet.clone(); 20])
            .expect("cleared");
        assert_eq!(ch.status, Transition::Cleared);
        assert_eq!(ch.incident.start, 301);
        assert_eq!(r.p_affected, learned);
    }

    #[test]
    fn after_a_region_congestion_its_way_back_is_not_a_new_incident() {
        let p = RegionParams::default();
        let mut r = RegionState::default();
        let quiet = view(0.1, false, IncidentKind::Outage, &[]);
        for e in 0..100 {
            r.step(&p, e, id("r"), &vec![quiet.clone(); 20]);
        }
        let congested = vec![view(1.5, true, IncidentKind::Congestion, &[4]); 20];
        assert!(r.step(&p, 100, id("r"), &congested).is_some());
        for e in 101..104 {
            r.step(&p, e, id("r"), &vec![quiet.clone(); 20]);
        }
        assert!(r.open.is_none());
        assert_eq!(r.recovery_until, Some(103 + 36));
        // The way back (elements moving, none open): not raised within 36 epochs…
        let back = vec![view(0.9, false, IncidentKind::Congestion, &[4]); 20];
        assert!(r.step(&p, 110, id("r"), &back).is_none());
        // …but an outage is.
        let down = vec![view(3.0, true, IncidentKind::Outage, &[]); 20];
        let ch = r.step(&p, 111, id("r"), &down).expect("raised");
        assert_eq!(ch.incident.kind, IncidentKind::Outage);
    }
}
