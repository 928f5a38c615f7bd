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
//! ln q ← ln q + λ·(1[s > q] − (1 − p))     λ_hi = 0.03, λ_lo = 0.05·(κ once mature);  q₀ = 2.24, 1.15
//! r = clamp(q_hi/q_lo, 1.2, 3.9),  c(r) = piecewise linear through (1.95, 1.10) (2.01, 1.27) (2.16, 1.65) (2.33, 2.04)
//!                                              (2.60, 2.49) (2.94, 2.85), constant outside
//! T = max(threshold_floor, threshold_margin · q_hi · r^c(r))                   the series' own threshold
//! score = s / T                                                                ≥ 1: anomalous for *this* series
//! ```
//!
//! q₀ are the quantiles of |N(0,1)|. κ = `mature_lo_rate` slows the lower quantile once the series is
//! mature (255 observations): the threshold is steep in `r` (at t(3) tails, `d ln T / d ln r ≈ 6`), so the
//! 10 % noise of a fast `q_lo` became 60 % noise in `T` and false alarms — home-wifi.toml uses κ = 0.25,
//! which halves the realised false-alarm rate of t(3–6) noise (`examples/calibration_probe.rs`). `q_hi` keeps
//! its rate: its downward step is only λ·(1 − p), and slowing it further leaves a threshold that an early
//! excursion pushed up high for weeks.
//!
//! With `threshold_margin = 1.4` a Gaussian series alerts beyond 6.5σ; home-wifi.toml uses 1.7 (7.9σ), which
//! its heavy-tailed features need. The margin pays for the estimation noise of the two quantiles: the
//! threshold is convex in `r`, so an underestimated tail costs more false alarms than an overestimated one
//! costs misses (`examples/calibration_probe.rs` measures this).
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

// e^(λ·p) and e^(−λ·(1 − p)) for the two tracked quantiles (λ_hi = 0.03, p = 0.975; λ_lo = 0.05, p = 0.75).
const HI_UP: f32 = 1.029_684_3; // e^(0.03·0.975)
const HI_DOWN: f32 = 0.999_250_3; // e^(−0.03·0.025)
const LO_UP: f32 = 1.038_211_8; // e^(0.05·0.75)
const LO_DOWN: f32 = 0.987_577_6; // e^(−0.05·0.25)

/// log2 of a positive finite `x`, to about 1e-5: exponent bits, and ln of the mantissa m ∈ [1, 2) by the
/// series ln m = 2·(y + y³/3 + y⁵/5 + y⁷/7), y = (m − 1)/(m + 1) ∈ [0, 1/3).
#[inline]
pub fn fast_log2(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let y = (m - 1.0) / (m + 1.0);
    let y2 = y * y;
    let ln = 2.0 * y * (1.0 + y2 * (1.0 / 3.0 + y2 * (0.2 + y2 / 7.0)));
    e as f32 + ln * std::f32::consts::LOG2_E
}

/// 2^x, to about 1e-5: exponent bits, and 2^f for f ∈ [0, 1) by its Taylor polynomial (degree 6).
#[inline]
pub fn fast_exp2(x: f32) -> f32 {
    let x = x.clamp(-126.0, 126.0);
    // floor without a libm call: truncate, then step down for negative non-integers
    let t = x as i32;
    let i = if (t as f32) > x { t - 1 } else { t };
    let f = x - i as f32;
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_1
                    + f * (0.009_618_13 + f * (0.001_333_355 + f * 0.000_154_035_3)))));
    f32::from_bits(((i + 127) as u32) << 23) * p
}

/// `r^c(r)` by linear interpolation in a table over r ∈ [1.2, 3.2] (step 1/256; relative error below 1e-4),
/// the exact value beyond. This runs for every series every epoch.
fn tail_factor(r: f32) -> f32 {
    const LO: f32 = 1.2;
    const STEP: f32 = 1.0 / 256.0;
    const N: usize = 512;
    static TABLE: std::sync::OnceLock<[f32; N + 1]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0f32; N + 1];
        for (i, v) in t.iter_mut().enumerate() {
            let r = LO + i as f32 * STEP;
            *v = fast_exp2(tail_exponent(r) * fast_log2(r));
        }
        t
    });
    let x = (r - LO) / STEP;
    if x >= N as f32 {
        return fast_exp2(tail_exponent(r) * fast_log2(r));
    }
    let i = (x as usize).min(N - 1);
    let frac = x - i as f32;
    table[i] + (table[i + 1] - table[i]) * frac
}

/// The lower quantile's step factors at `rate` × λ_lo (rate 1: exactly `LO_UP`, `LO_DOWN`).
fn lo_steps(rate: f64) -> (f32, f32) {
    if rate == 1.0 {
        return (LO_UP, LO_DOWN);
    }
    let l = LAMBDA_LO as f64 * rate;
    (
        (l * P_LO as f64).exp() as f32,
        (-l * (1.0 - P_LO as f64)).exp() as f32,
    )
}

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
/// The heaviest tail the threshold extrapolates to: r of |t(2)| (q_0.975 = 6.21, q_0.75 = 1.60). A larger
/// ratio does not mean a heavier tail but a mixture — mostly near-zero residuals (a quantised or often
/// constant series) with ordinary ones between — where `r^c` would grow without bound and silence the series.
pub const R_MAX: f32 = 3.9;

/// Quantile step sizes.
pub const LAMBDA_HI: f32 = 0.03;
pub const LAMBDA_LO: f32 = 0.05;

#[derive(Debug, Clone, Copy)]
pub struct AlertParams {
    pub floor: f32,
    pub margin: f32,
    pub clear_ratio: f32,
    pub clear_epochs: u8,
    pub critical_ratio: f32,
    /// The lower quantile's steps once a series is mature, `(e^(κ·λ_lo·p), e^(−κ·λ_lo·(1 − p)))`.
    pub lo_steps_mature: (f32, f32),
    /// `x^sustained_tail_exponent` (the spec's exponent lives here only).
    pub tail_power: TailPower,
}

/// `x^e` for `x ≥ 1`, clamped to [1, 2] (the sustained-evidence bar's tail factor), computed once per series
/// per epoch. `e = 0.5` is a square root; other exponents in [0.2, 2] interpolate linearly in a table over
/// [1, 2^(1/e)] (129 knots, relative error below 1e-4); others take `2^(e·log2 x)` (about 40 cycles more per
/// series than the table: 17 % of a 500,000-customer epoch, BENCHMARKS.md).
#[derive(Debug, Clone, Copy)]
pub struct TailPower {
    e: f32,
    /// Knots per unit of x above 1; 0 when the table is not used.
    scale: f32,
    table: [f32; TAIL_POWER_STEPS + 1],
}

const TAIL_POWER_STEPS: usize = 128;

impl TailPower {
    pub fn new(e: f32) -> TailPower {
        let mut t = TailPower {
            e,
            scale: 0.0,
            table: [1.0; TAIL_POWER_STEPS + 1],
        };
        if e != 0.5 && (0.2..=2.0).contains(&e) {
            let top = 2f64.powf(1.0 / e as f64);
            let step = (top - 1.0) / TAIL_POWER_STEPS as f64;
            for (i, v) in t.table.iter_mut().enumerate() {
                *v = (1.0 + i as f64 * step).powf(e as f64) as f32;
            }
            t.scale = (1.0 / step) as f32;
        }
        t
    }

    /// `x^e` clamped to [1, 2].
    #[inline]
    pub fn eval(&self, x: f32) -> f32 {
        let x = x.max(1.0);
        let v = if self.e == 0.5 {
            x.sqrt()
        } else if self.scale > 0.0 {
            let u = (x - 1.0) * self.scale;
            if u >= TAIL_POWER_STEPS as f32 {
                2.0
            } else {
                let i = u as usize;
                let frac = u - i as f32;
                self.table[i] + (self.table[i + 1] - self.table[i]) * frac
            }
        } else {
            fast_exp2(self.e * fast_log2(x))
        };
        v.clamp(1.0, 2.0)
    }
}

impl AlertParams {
    /// The threshold of an uncalibrated (Gaussian-tailed) series: `threshold(Q0_HI, Q0_LO)`, whose
    /// r = 1.947826 lies below the first knot (c = 1.10), so r^c = 2.082 13 is a constant.
    pub fn gaussian_threshold(&self) -> f32 {
        self.floor.max(self.margin * Q0_HI * 2.082_13)
    }

    /// A series' bar for this epoch: its threshold, and how much its tail raises the bar for sustained
    /// evidence (`(T/T_gauss)^e` clamped to [1, 2]). Computed once per series per epoch.
    pub fn bar(&self, q_hi: f32, q_lo: f32) -> Bar {
        let threshold = self.threshold(q_hi, q_lo);
        let ratio = threshold / self.gaussian_threshold();
        Bar {
            threshold,
            tail: self.tail_power.eval(ratio),
        }
    }

    pub fn from_spec(a: &AlertSpec) -> Self {
        AlertParams {
            floor: a.threshold_floor as f32,
            margin: a.threshold_margin as f32,
            clear_ratio: a.clear_ratio as f32,
            clear_epochs: a.clear_epochs,
            critical_ratio: a.critical_ratio as f32,
            lo_steps_mature: lo_steps(a.mature_lo_rate),
            tail_power: TailPower::new(a.sustained_tail_exponent as f32),
        }
    }

    /// The series' threshold for its quantile estimates (`0` means not yet calibrated).
    pub fn threshold(&self, q_hi: f32, q_lo: f32) -> f32 {
        let hi = if q_hi > 0.0 { q_hi } else { Q0_HI };
        let lo = if q_lo > 0.0 { q_lo } else { Q0_LO };
        let r = (hi / lo).clamp(1.2, R_MAX);
        self.floor.max(self.margin * hi * tail_factor(r))
    }

    /// One calibration step with surprise `s` (call only for ordinary observations); `mature`: the series
    /// has seen 255 observations (the lower quantile then steps by `mature_lo_rate`).
    pub fn update_quantiles(&self, q_hi: f32, q_lo: f32, s: f32, mature: bool) -> (f32, f32) {
        let hi = if q_hi > 0.0 { q_hi } else { Q0_HI };
        let lo = if q_lo > 0.0 { q_lo } else { Q0_LO };
        // Multiplicative steps (factors e^(λ·(1 − (1 − p))) and e^(−λ·(1 − p)), precomputed): the estimate
        // recovers from an overshoot in proportion to its size.
        let (lo_up, lo_down) = if mature {
            self.lo_steps_mature
        } else {
            (LO_UP, LO_DOWN)
        };
        let hi = (hi * if s > hi { HI_UP } else { HI_DOWN }).clamp(0.1, 1000.0);
        let lo = (lo * if s > lo { lo_up } else { lo_down }).clamp(0.05, 1000.0);
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
        bar: &Bar,
    ) -> (f32, AnomalyKind) {
        let point = surprise / bar.threshold;
        let tail = bar.tail;
        let sustained = match kind {
            // Neither is a matter of tails: a stuck value repeats, an out-of-range value leaves the series'
            // whole history behind.
            AnomalyKind::StuckValue | AnomalyKind::OutOfRange => sustained,
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

/// A series' personal bar for one epoch (see [`AlertParams::bar`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bar {
    pub threshold: f32,
    pub tail: f32,
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
                    if kind == AnomalyKind::OutOfRange && a.kind != AnomalyKind::OutOfRange {
                        // A value beyond the series' whole history is news even inside an open episode:
                        // the alert becomes an out-of-range one.
                        let n = OpenAlert {
                            severity: sev,
                            kind,
                        };
                        return (Some(n), 0, Some(Transition::Updated));
                    }
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
            clear_ratio: 0.6,
            clear_epochs: 3,
            critical_ratio: 2.0,
            lo_steps_mature: lo_steps(0.25),
            tail_power: TailPower::new(0.5),
        }
    }

    #[test]
    fn thresholds_are_personal() {
        let p = params();
        // uncalibrated (Gaussian quantiles): r = 2.24/1.15 = 1.94783 → c = 1.10,
        // T = 1.15·2.24·1.94783^1.10 = 5.3635
        // (the table interpolates across the knot at r = 1.948: within 0.2%)
        assert!(
            (p.threshold(0.0, 0.0) / 5.3635 - 1.0).abs() < 2e-3,
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
        assert!((p.gaussian_threshold() / p.threshold(0.0, 0.0) - 1.0).abs() < 2e-3);
        // the fast log/exp agree with the library functions
        for x in [1.2f32, 1.95, 2.5, 3.7, 10.0, 0.3] {
            assert!((fast_log2(x) - x.log2()).abs() < 2e-5, "log2 {x}");
        }
        for x in [0.0f32, 0.5, 1.3, 3.77, -2.2] {
            assert!((fast_exp2(x) / x.exp2() - 1.0).abs() < 2e-5, "exp2 {x}");
        }
        assert!((tail_exponent(2.2) - (1.645 + 0.395 * (0.043 / 0.174))).abs() < 1e-4);
    }

    #[test]
    fn tail_power_hand_computed() {
        // e = 0.4: 2^0.4 = 1.319508, 3^0.4 = 1.551846, 5^0.4 = 1.903654; from 2^(1/0.4) = 5.657 on: 2
        let p = TailPower::new(0.4);
        for (x, want) in [
            (1.0f32, 1.0f32),
            (2.0, 1.319_508),
            (3.0, 1.551_846),
            (5.0, 1.903_654),
        ] {
            assert!((p.eval(x) / want - 1.0).abs() < 1e-4, "{x}: {}", p.eval(x));
        }
        assert_eq!(p.eval(6.0), 2.0);
        assert_eq!(p.eval(0.5), 1.0, "below 1 the bar is not lowered");
        // e = 0.5 is the square root exactly; outside [0.2, 2] the exact power
        assert_eq!(TailPower::new(0.5).eval(3.0), 3f32.sqrt());
        assert!((TailPower::new(0.1).eval(3.0) / 3f32.powf(0.1) - 1.0).abs() < 1e-4);
        assert!((TailPower::new(0.1).eval(2e4) - 2.0).abs() < 1e-6);
        // the table agrees with the exact power everywhere on its range
        let p = TailPower::new(0.7);
        for i in 0..=400 {
            let x = 1.0 + i as f32 * 0.004;
            assert!((p.eval(x) / x.powf(0.7).min(2.0) - 1.0).abs() < 1e-4, "{x}");
        }
    }

    #[test]
    fn quantile_steps_hand_computed() {
        let p = params();
        // (s, mature, hi, lo) from q_hi = 2.24, q_lo = 1.15:
        // s above both: hi·e^(0.03·0.975) = 2.24·1.029684 = 2.30649, lo·e^(0.05·0.75) = 1.15·1.038212 = 1.19394
        // s below both: hi·e^(−0.03·0.025) = 2.23832, lo·e^(−0.05·0.25) = 1.13571
        // mature, κ = 0.25: hi as before; lo·e^(0.0125·0.75) = 1.15·1.009419 = 1.16083 and
        // lo·e^(−0.0125·0.25) = 1.15·0.996880 = 1.14641
        for (s, mature, want_hi, want_lo) in [
            (4.0, false, 2.30649, 1.19394),
            (0.5, false, 2.23832, 1.13571),
            (4.0, true, 2.30649, 1.16083),
            (0.5, true, 2.23832, 1.14641),
        ] {
            let (hi, lo) = p.update_quantiles(2.24, 1.15, s, mature);
            assert!((hi - want_hi).abs() < 1e-4, "s {s} mature {mature}: {hi}");
            assert!((lo - want_lo).abs() < 1e-4, "s {s} mature {mature}: {lo}");
        }
        // rate 1 is bit for bit the young step
        assert_eq!(lo_steps(1.0), (LO_UP, LO_DOWN));
    }

    #[test]
    fn quantiles_converge_to_the_target_tail() {
        let p = params();
        let mut rng = crate::rng::Rng::new(5, 5);
        let (mut hi, mut lo) = (0.0, 0.0);
        let (mut sum_hi, mut sum_lo) = (0.0, 0.0);
        for i in 0..300_000 {
            (hi, lo) = p.update_quantiles(hi, lo, rng.normal().abs() as f32, false);
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
        // an out-of-range value turns an open alert of another kind into an out-of-range one, once
        let o = AnomalyKind::OutOfRange;
        let (a, r, t) = step(&p, None, 0, 1.5, k, true);
        let (a, r, t2) = step(&p, a, r, 0.9, o, true);
        assert_eq!(
            (t, t2),
            (Some(Transition::Raised), None),
            "below the bar: no change"
        );
        let (a, r, t) = step(&p, a, r, 1.1, o, true);
        assert_eq!(t, Some(Transition::Updated));
        assert_eq!(a.map(|a| a.kind), Some(o));
        let (a, _, t) = step(&p, a, r, 1.3, o, true);
        assert_eq!(t, None);
        assert_eq!(
            a.map(|a| (a.kind, a.severity)),
            Some((o, Severity::Warning))
        );
    }
}
