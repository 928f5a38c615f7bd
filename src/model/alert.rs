//! Personal thresholds and hysteresis.
//!
//! Each series tracks two quantiles of its own point-wise surprise `s` — `q_hi` at 0.975 and `q_lo` at 0.75 —
//! by stochastic approximation, fed only with ordinary observations (no alert open, not itself beyond the
//! threshold, no sustained evidence building up). Their ratio `r = q_hi/q_lo` measures how heavy the series'
//! tail is, and the threshold extrapolates from `q_hi` to a false-alarm rate of 3·10⁻⁶ per observation (one per
//! 1,000 series-days at 5-minute epochs) along the family of Student-t tails, fitted from Gaussian
//! (r = 1.95: T = 2.08·q_hi) to t(3) (r = 2.94: T = 21.6·q_hi). A heavy-tailed series earns a much higher
//! bar than a Gaussian one instead of flooding its owner with alerts:
//!
//! ```text
//! ln q ← ln q + λ·(1[s > q] − (1 − p))     λ_hi = 0.03, λ_lo = 0.05;  q₀ = 2.24, 1.15 (|N(0,1)| quantiles)
//! r = q_hi/q_lo,  c(r) = piecewise linear through (1.95, 1.10) (2.01, 1.27) (2.16, 1.65) (2.33, 2.04)
//!                                              (2.60, 2.49) (2.94, 2.85), constant outside
//! T = max(threshold_floor, threshold_margin · q_hi · r^c(r))                   the series' own threshold
//! score = s / T                                                                ≥ 1: anomalous for *this* series
//! ```
//!
//! With `threshold_margin = 1.4` a Gaussian series alerts beyond 6.5σ. The margin pays for the estimation
//! noise of the two quantiles: the threshold is convex in `r`, so an underestimated tail costs more false
//! alarms than an overestimated one costs misses (`examples/calibration_probe.rs` measures this).
//!
//! The alert state machine (per series, once per epoch):
//!
//! ```text
//! closed ── score ≥ 1 and raising allowed ──▶ open(severity)            → raised
//! open   ── score ≥ 1, severity changes ─────▶ open(new severity)        → updated
//! open   ── score < clear_ratio for clear_epochs epochs in a row ──▶ closed → cleared
//! ```
//!
//! Severity is `critical` when score ≥ critical_ratio, else `warning`. Between `clear_ratio` and 1 an open
//! alert keeps its severity and its clear counter resets: this band is what stops flapping.

use super::AnomalyKind;
use super::header::{OpenAlert, Severity};
use crate::spec::AlertSpec;

/// The tracked quantiles of the surprise.
pub const P_HI: f32 = 0.975;
pub const P_LO: f32 = 0.75;
/// Initial estimates of the upper and lower quantiles (those of |N(0,1)|).
pub const Q0_HI: f32 = 2.24;
pub const Q0_LO: f32 = 1.15;
/// The tail exponent c(r) for r = q_hi/q_lo, fitted to Student-t noise (df 3, 4, 6, 10, 30, ∞) so that
/// `q_hi · r^c` is the 3·10⁻⁶ quantile.
const TAIL_FIT: [(f32, f32); 6] = [
    (1.948, 1.10),
    (2.011, 1.27),
    (2.157, 1.645),
    (2.331, 2.04),
    (2.600, 2.49),
    (2.936, 2.85),
];

fn tail_exponent(r: f32) -> f32 {
    if r <= TAIL_FIT[0].0 {
        return TAIL_FIT[0].1;
    }
    for w in TAIL_FIT.windows(2) {
        let ((r0, c0), (r1, c1)) = (w[0], w[1]);
        if r <= r1 {
            return c0 + (c1 - c0) * (r - r0) / (r1 - r0);
        }
    }
    TAIL_FIT[TAIL_FIT.len() - 1].1
}
/// Quantile step sizes.
pub const LAMBDA_HI: f32 = 0.03;
pub const LAMBDA_LO: f32 = 0.05;

#[derive(Debug, Clone, Copy)]
pub struct AlertParams {
    pub floor: f32,
    pub margin: f32,
    pub sustained_tail_exponent: f32,
    pub clear_ratio: f32,
    pub clear_epochs: u8,
    pub critical_ratio: f32,
}

impl AlertParams {
    pub fn from_spec(a: &AlertSpec) -> Self {
        AlertParams {
            floor: a.threshold_floor as f32,
            margin: a.threshold_margin as f32,
            sustained_tail_exponent: a.sustained_tail_exponent as f32,
            clear_ratio: a.clear_ratio as f32,
            clear_epochs: a.clear_epochs,
            critical_ratio: a.critical_ratio as f32,
        }
    }

    /// The series' threshold for its quantile estimates (`0` means not yet calibrated).
    pub fn threshold(&self, q_hi: f32, q_lo: f32) -> f32 {
        let hi = if q_hi > 0.0 { q_hi } else { Q0_HI };
        let lo = if q_lo > 0.0 { q_lo } else { Q0_LO };
        let r = (hi / lo).max(1.2);
        self.floor.max(self.margin * hi * r.powf(tail_exponent(r)))
    }

    /// One calibration step with surprise `s` (call only for ordinary observations).
    pub fn update_quantiles(&self, q_hi: f32, q_lo: f32, s: f32) -> (f32, f32) {
        let hi = if q_hi > 0.0 { q_hi } else { Q0_HI };
        let lo = if q_lo > 0.0 { q_lo } else { Q0_LO };
        let up = |q: f32| if s > q { 1.0 } else { 0.0 };
        // Multiplicative steps: the estimate recovers from an overshoot in proportion to its size.
        let hi = (hi * (LAMBDA_HI * (up(hi) - (1.0 - P_HI))).exp()).clamp(0.1, 1000.0);
        let lo = (lo * (LAMBDA_LO * (up(lo) - (1.0 - P_LO))).exp()).clamp(0.05, 1000.0);
        (hi, lo)
    }

    /// The normalised score of an assessment for a series with threshold `t`, and the kind it points at:
    /// the point-wise surprise against the series' own threshold, or the sustained evidence against the
    /// detector's alarm point raised with how heavy the series' tail is (`(t / T_gauss)^e`, in [1, 2], e =
    /// `sustained_tail_exponent`: sustained statistics average capped inputs, so tails matter less to them;
    /// stuck values are not a matter of tails).
    pub fn score(
        &self,
        surprise: f32,
        sustained: f32,
        kind: AnomalyKind,
        t: f32,
    ) -> (f32, AnomalyKind) {
        let point = surprise / t;
        let tail = (t / self.threshold(0.0, 0.0))
            .powf(self.sustained_tail_exponent)
            .clamp(1.0, 2.0);
        let sustained = match kind {
            AnomalyKind::StuckValue => sustained,
            // The volatility statistic averages |z| capped at 4: tails matter to it less still.
            AnomalyKind::VarianceBurst => sustained / tail.sqrt(),
            _ => sustained / tail,
        };
        if sustained > point {
            (sustained, kind)
        } else {
            (point, AnomalyKind::Spike)
        }
    }

    pub fn severity(&self, score: f32) -> Severity {
        if score >= self.critical_ratio {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }
}

/// What one epoch did to a series' alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transition {
    Raised,
    Updated,
    Cleared,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Updated => "updated",
            Transition::Cleared => "cleared",
        }
    }
}

/// One step of the state machine. `score` is the normalised score (s/T) of the epoch; `can_raise` is false
/// during a reboot's grace period or while the series is too young.
pub fn step(
    p: &AlertParams,
    open: Option<OpenAlert>,
    clear_run: u8,
    score: f32,
    kind: AnomalyKind,
    can_raise: bool,
) -> (Option<OpenAlert>, u8, Option<Transition>) {
    match open {
        None => {
            if can_raise && score >= 1.0 {
                let a = OpenAlert {
                    severity: p.severity(score),
                    kind,
                };
                (Some(a), 0, Some(Transition::Raised))
            } else {
                (None, 0, None)
            }
        }
        Some(a) => {
            if score >= p.clear_ratio {
                if score >= 1.0 {
                    let sev = p.severity(score);
                    if sev != a.severity {
                        let n = OpenAlert {
                            severity: sev,
                            kind: a.kind,
                        };
                        return (Some(n), 0, Some(Transition::Updated));
                    }
                }
                (Some(a), 0, None)
            } else {
                let run = clear_run.saturating_add(1);
                if run >= p.clear_epochs {
                    (None, 0, Some(Transition::Cleared))
                } else {
                    (Some(a), run, None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> AlertParams {
        AlertParams {
            floor: 4.0,
            margin: 1.15,
            sustained_tail_exponent: 0.5,
            clear_ratio: 0.6,
            clear_epochs: 3,
            critical_ratio: 2.0,
        }
    }

    #[test]
    fn thresholds_are_personal() {
        let p = params();
        // uncalibrated (Gaussian quantiles): r = 2.24/1.15 = 1.94783 → c = 1.10,
        // T = 1.15·2.24·1.94783^1.10 = 5.3635
        assert!(
            (p.threshold(0.0, 0.0) - 5.3635).abs() < 2e-3,
            "{}",
            p.threshold(0.0, 0.0)
        );
        // t(3)-like series (q_hi 3.7, q_lo 1.26): r = 2.93651 (just past the last knot) → c = 2.85,
        // T = 1.15·3.7·2.93651^2.85 = 91.67
        assert!(
            (p.threshold(3.7, 1.26) - 91.67).abs() < 0.3,
            "{}",
            p.threshold(3.7, 1.26)
        );
        // never below the floor
        assert!((p.threshold(1.0, 0.99) - 4.0).abs() < 1e-6);
        assert!((tail_exponent(2.2) - (1.645 + 0.395 * (0.043 / 0.174))).abs() < 1e-4);
    }

    #[test]
    fn quantile_steps_hand_computed() {
        let p = params();
        // s above both: hi·e^(0.03·0.975) = 2.24·1.029684 = 2.30649, lo·e^(0.05·0.75) = 1.15·1.038212 = 1.19394
        let (hi, lo) = p.update_quantiles(2.24, 1.15, 4.0);
        assert!((hi - 2.30649).abs() < 1e-4, "{hi}");
        assert!((lo - 1.19394).abs() < 1e-4, "{lo}");
        // s below both: hi·e^(−0.03·0.025) = 2.23832, lo·e^(−0.05·0.25) = 1.13571
        let (hi, lo) = p.update_quantiles(2.24, 1.15, 0.5);
        assert!((hi - 2.23832).abs() < 1e-4, "{hi}");
        assert!((lo - 1.13571).abs() < 1e-4, "{lo}");
    }

    #[test]
    fn quantiles_converge_to_the_target_tail() {
        let p = params();
        let mut rng = crate::rng::Rng::new(5, 5);
        let (mut hi, mut lo) = (0.0, 0.0);
        let (mut sum_hi, mut sum_lo) = (0.0, 0.0);
        for i in 0..300_000 {
            (hi, lo) = p.update_quantiles(hi, lo, rng.normal().abs() as f32);
            if i >= 100_000 {
                sum_hi += hi;
                sum_lo += lo;
            }
        }
        let (hi, lo) = (sum_hi / 200_000.0, sum_lo / 200_000.0);
        // |N(0,1)|: 97.5% quantile 2.241, 75% quantile 1.150
        assert!((hi - 2.241).abs() < 0.1, "q_hi = {hi}");
        assert!((lo - 1.150).abs() < 0.05, "q_lo = {lo}");
    }

    #[test]
    fn hysteresis_raise_update_clear() {
        let p = params();
        let k = AnomalyKind::Spike;
        let (a, r, t) = step(&p, None, 0, 1.2, k, true);
        assert_eq!(t, Some(Transition::Raised));
        assert_eq!(a.unwrap().severity, Severity::Warning);
        // stays open in the band without flapping
        let (a, r, t) = step(&p, a, r, 0.8, k, true);
        assert_eq!(t, None);
        assert!(a.is_some());
        // escalates
        let (a, r, t) = step(&p, a, r, 2.5, k, true);
        assert_eq!(t, Some(Transition::Updated));
        assert_eq!(a.unwrap().severity, Severity::Critical);
        // needs three quiet epochs to clear; one loud epoch resets the count
        let (a, r, t) = step(&p, a, r, 0.1, k, true);
        let (a, r, _) = step(&p, a, r, 0.1, k, true);
        assert_eq!(t, None);
        let (a, r, t) = step(&p, a, r, 0.7, k, true);
        assert_eq!((r, t), (0, None));
        let (a, r, _) = step(&p, a, r, 0.1, k, true);
        let (a, r, _) = step(&p, a, r, 0.1, k, true);
        let (a, _, t) = step(&p, a, r, 0.1, k, true);
        assert_eq!(t, Some(Transition::Cleared));
        assert!(a.is_none());
        // raising can be suppressed
        assert_eq!(step(&p, None, 0, 9.0, k, false).2, None);
    }
}
