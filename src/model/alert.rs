//! Personal thresholds and hysteresis.
//!
//! Each series tracks `q`, a running estimate of a high quantile (`alerting.quantile`, default 0.99) of its own
//! surprise, by stochastic approximation, fed only with observations that are not themselves alerts:
//!
//! ```text
//! q ← q + λ·(1[s > q] − (1 − p))          λ = 0.3, q₀ = 2.6 (the 99% quantile of |N(0,1)|)
//! T = max(threshold_floor, threshold_multiplier · q)     the series' own threshold
//! score = s / T                                           ≥ 1 means anomalous for *this* series
//! ```
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

/// Initial quantile estimate.
pub const Q0: f32 = 2.6;
/// Quantile step size.
pub const LAMBDA: f32 = 0.3;

#[derive(Debug, Clone, Copy)]
pub struct AlertParams {
    pub quantile: f32,
    pub floor: f32,
    pub multiplier: f32,
    pub clear_ratio: f32,
    pub clear_epochs: u8,
    pub critical_ratio: f32,
}

impl AlertParams {
    pub fn from_spec(a: &AlertSpec) -> Self {
        AlertParams {
            quantile: a.quantile as f32,
            floor: a.threshold_floor as f32,
            multiplier: a.threshold_multiplier as f32,
            clear_ratio: a.clear_ratio as f32,
            clear_epochs: a.clear_epochs,
            critical_ratio: a.critical_ratio as f32,
        }
    }

    /// The series' threshold for its current quantile estimate (`q = 0` means not yet calibrated).
    pub fn threshold(&self, q: f32) -> f32 {
        let q = if q > 0.0 { q } else { Q0 };
        self.floor.max(self.multiplier * q)
    }

    /// One calibration step with surprise `s` (call only for non-alert observations).
    pub fn update_quantile(&self, q: f32, s: f32) -> f32 {
        let q = if q > 0.0 { q } else { Q0 };
        let up = if s > q { 1.0 } else { 0.0 };
        (q + LAMBDA * (up - (1.0 - self.quantile))).clamp(0.1, 1000.0)
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
            quantile: 0.99,
            floor: 5.0,
            multiplier: 1.5,
            clear_ratio: 0.6,
            clear_epochs: 3,
            critical_ratio: 2.0,
        }
    }

    #[test]
    fn thresholds_are_personal() {
        let p = params();
        assert_eq!(p.threshold(0.0), 5.0); // uncalibrated: max(5, 1.5·2.6=3.9)
        assert_eq!(p.threshold(2.6), 5.0);
        assert_eq!(p.threshold(6.0), 9.0); // a heavy-tailed series earns a higher bar
    }

    #[test]
    fn quantile_steps_hand_computed() {
        let p = params();
        // above: q + 0.3·(1 − 0.01) = 2.6 + 0.297
        assert!((p.update_quantile(2.6, 4.0) - 2.897).abs() < 1e-6);
        // below: q + 0.3·(0 − 0.01) = 2.6 − 0.003
        assert!((p.update_quantile(2.6, 1.0) - 2.597).abs() < 1e-6);
    }

    #[test]
    fn quantile_converges_to_the_target_tail() {
        let p = params();
        let mut rng = crate::rng::Rng::new(5, 5);
        let mut q = 0.0;
        for _ in 0..200_000 {
            q = p.update_quantile(q, rng.normal().abs() as f32);
        }
        // 99% quantile of |N(0,1)| is 2.576
        assert!((q - 2.576).abs() < 0.25, "q = {q}");
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
