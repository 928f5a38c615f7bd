//! Personal thresholds and hysteresis.
//!
//! Each series tracks three quantiles of its own signed point-wise surprise `z` (`s = |z|`) by stochastic
//! approximation, fed only with ordinary observations (no alert open, not itself beyond the threshold, no
//! sustained evidence building up): `q_up`, the level `z` exceeds upwards 1.25 % of the time, `q_dn`, the
//! level `−z` exceeds 1.25 % of the time, and `q_lo`, the 0.75 quantile of `|z|` (the body, both sides). For
//! symmetric noise `q_up = q_dn` is the 0.975 quantile of `|z|`. Each side's ratio `r = q_side/q_lo` measures
//! how heavy that side's tail is, and its threshold extrapolates from `q_side` to a false-alarm rate of
//! 3·10⁻⁶ per observation (one per 1,000 series-days at 5-minute epochs) along the family of Student-t
//! tails, fitted from Gaussian (r = 1.95: T = 2.08·q) to t(3) (r = 2.94: T = 21.6·q). A heavy-tailed series
//! earns a much higher bar than a Gaussian one instead of flooding its owner with alerts:
//!
//! ```text
//! log2 q_up ← log2 q_up + (80·1[z > q_up] − 1)/2048       (exceeded 1/80 = 1.25 % of the time; λ = 0.027)
//! log2 q_dn ← log2 q_dn + (80·1[−z > q_dn] − 1)/2048
//! log2 q_lo ← log2 q_lo + (148·1[s > q_lo] − 37)/2048      (25 %; λ = 0.050, κ·37 codes down once mature)
//!                                                          q₀ = 2.24, 2.24, 1.15
//! r = clamp(q_side/q_lo, 1.2, 3.9),  c(r) = piecewise linear through (1.95, 1.10) (2.01, 1.27) (2.16, 1.65) (2.33, 2.04)
//!                                              (2.60, 2.49) (2.94, 2.85), constant outside
//! q̄ = √(q_up·q_dn),  q_side' = max(q_side, q̄)                            no side below the two sides' mean
//! T_side = max(threshold_floor, threshold_margin · q_side' · r^c(r)), r = q_side'/q_lo   per side
//! score = s / T_up if z > 0, else s / T_dn                                   ≥ 1: anomalous for *this* series
//! tail factor of the sustained bar: (T(q̄)/T_gauss)^e                       (the threshold of q̄ itself)
//! ```
//!
//! Why per side: bounded features are one-sided. A loss or failure percentage near 0 is clipped from below
//! (the generator's `wan_loss_pct` sits at exactly 0 in 5–17 % of its logs) while its upper tail is t(3)-
//! heavy; pooled, the clipped side made `|z|`'s tail look light (r 2.2 instead of 2.85) and the threshold
//! fell to a fifth: t(3) noise clipped 1.3 sd below its level exceeded it 2.25·10⁻⁴ of the time, 47 times the
//! design rate; per side 1.0·10⁻⁵ (`examples/calibration_probe.rs` with PROBE_CLIP=1.3). Each side alone is a
//! noisier estimate on symmetric noise (it sees half the tail events: t(3) 4.8 → 12.4·10⁻⁶); the floor at q̄
//! — a side that merely looks lighter through its estimate's noise is held at the mean of both — brings that
//! to 7.2·10⁻⁶ (t(4): 3.2 pooled, 7.4 per side, 2.6 with the floor). A truly lighter side keeps the floor too:
//! drops on a series clipped from below are judged against a bar between the two.
//!
//! q₀ are the quantiles of N(0,1) and |N(0,1)|. κ = `mature_lo_rate` slows the body quantile once the series is
//! mature (255 observations): the threshold is steep in `r` (at t(3) tails, `d ln T / d ln r ≈ 6`), so the
//! 10 % noise of a fast `q_lo` became 60 % noise in `T` and false alarms — home-wifi.toml uses κ = 0.25,
//! which halves the realised false-alarm rate of t(3–6) noise (`examples/calibration_probe.rs`). The side
//! quantiles keep their rate: their downward step is only λ·(1 − p), and slowing them further leaves a
//! threshold that an early excursion pushed up high for weeks.
//!
//! With `threshold_margin = 1.4` a Gaussian series alerts beyond 6.5σ; home-wifi.toml uses 1.75 (8.2σ), which
//! its heavy-tailed features and the fleet's false-alert target need. The margin pays for the estimation
//! noise of the quantiles: the threshold is convex in `r`, so an underestimated tail costs more false alarms
//! than an overestimated one costs misses (`examples/calibration_probe.rs` measures this).
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
use crate::state::le;

/// Initial estimates of the side and body quantiles (those of N(0,1) and |N(0,1)|).
pub const Q0_HI: f32 = 2.24;
pub const Q0_LO: f32 = 1.15;

/// A series' three surprise quantiles (see the module docs) as log-codes: `code = round((log2 q + 16)·2048)`,
/// q from 1.5·10⁻⁵ to 65,536 in steps of 2⁻¹¹ in log2 (0.034 %); code 0 means not yet calibrated.
///
/// The estimates step in whole codes, so every step is exact: an f16 (the format before the quantiles went
/// per side) rounds a one-sided tracker's downward step of 0.04 % back to the value it left in the lower
/// half of each binade, and the estimate then only ever rose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quantiles {
    pub up: u16,
    pub dn: u16,
    pub lo: u16,
}

const CODE_SCALE: f32 = 2048.0;
const CODE_OFFSET: f32 = 16.0;
/// Codes of Q0_HI and Q0_LO.
const C0_HI: u16 = 35_151;
const C0_LO: u16 = 33_181;
/// Code ranges: the side quantiles in [0.1, 1000], the body quantile in [0.05, 1000].
const C_SIDE_MIN: u16 = 25_965;
const C_LO_MIN: u16 = 23_917;
const C_MAX: u16 = 53_178;
/// Side steps: up 79 codes when the side's tail is exceeded, down 1 otherwise — the equilibrium exceedance
/// rate is 1/80 = 1.25 %, λ_hi = 80·ln 2/2048 = 0.0271.
const SIDE_UP: u16 = 79;
const SIDE_DOWN: u16 = 1;
/// Body steps of a young series: up 111, down 37 (rate 37/148 = 25 %, λ_lo = 148·ln 2/2048 = 0.0501).
const LO_UP: u16 = 111;
const LO_DOWN: u16 = 37;

impl Quantiles {
    /// Those of Gaussian noise: where a series starts calibrating.
    pub const INITIAL: Quantiles = Quantiles {
        up: C0_HI,
        dn: C0_HI,
        lo: C0_LO,
    };

    /// The three codes stored little-endian at `b[at..at + 6]` (up, dn, lo): a series header's layout, and
    /// the global model's per-series calibration.
    #[inline(always)]
    pub fn read_le(b: &[u8], at: usize) -> Quantiles {
        Quantiles {
            up: le::u16(b, at),
            dn: le::u16(b, at + 2),
            lo: le::u16(b, at + 4),
        }
    }

    /// Stores the three codes as [`Quantiles::read_le`] reads them.
    #[inline(always)]
    pub fn write_le(self, b: &mut [u8], at: usize) {
        le::set_u16(b, at, self.up);
        le::set_u16(b, at + 2, self.dn);
        le::set_u16(b, at + 4, self.lo);
    }

    /// The code of a quantile value (for tests and tools).
    pub fn code(q: f32) -> u16 {
        ((fast_log2(q) + CODE_OFFSET) * CODE_SCALE)
            .round()
            .clamp(1.0, u16::MAX as f32) as u16
    }

    /// The quantile value of a code (0: the initial estimate `q0`).
    #[inline]
    fn value(code: u16, q0: f32) -> f32 {
        if code == 0 { q0 } else { code_value(code) }
    }

    /// The upper side's, lower side's and body's quantile values.
    #[inline]
    pub fn values(&self) -> (f32, f32, f32) {
        (
            Self::value(self.up, Q0_HI),
            Self::value(self.dn, Q0_HI),
            Self::value(self.lo, Q0_LO),
        )
    }

    /// 0 stands for the initial estimate.
    #[inline]
    fn or_initial(self) -> Quantiles {
        Quantiles {
            up: if self.up > 0 { self.up } else { C0_HI },
            dn: if self.dn > 0 { self.dn } else { C0_HI },
            lo: if self.lo > 0 { self.lo } else { C0_LO },
        }
    }
}

/// 2^(code/2048 − 16): the exponent from the code's top five bits, the mantissa 2^(f/2048) from a table of the
/// 2,048 fractions (a load and a multiply; this runs three times per series per epoch).
#[inline]
fn code_value(code: u16) -> f32 {
    static FRACTIONS: std::sync::OnceLock<[f32; 2048]> = std::sync::OnceLock::new();
    let t = FRACTIONS.get_or_init(|| {
        let mut t = [0f32; 2048];
        for (i, v) in t.iter_mut().enumerate() {
            *v = (i as f64 / 2048.0).exp2() as f32;
        }
        t
    });
    let e = (code >> 11) as u32 + 127 - 16;
    f32::from_bits(e << 23) * t[(code & 2047) as usize]
}

/// Largest code difference a tail ratio can use: log2(R_MAX)·2048.
const D_MAX: usize = 4021;

/// `r^c(r)` for the ratio of two codes `d` apart, r = 2^(d/2048) clamped to [1.2, R_MAX] (a table over
/// d ∈ [0, D_MAX] built from `tail_factor`; every ratio of two codes is on that grid).
#[inline]
fn tail_factor_of_codes(side: u16, lo: u16) -> f32 {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        (0..=D_MAX)
            .map(|d| tail_factor(((d as f64 / 2048.0).exp2() as f32).clamp(1.2, R_MAX)))
            .collect()
    });
    let d = (side as i32 - lo as i32).clamp(0, D_MAX as i32) as usize;
    t[d]
}

/// The tail exponent c(r) for r = q_side/q_lo, fitted to Student-t noise (df 3, 4, 6, 10, 30, ∞) so that
/// `q_side · r^c` is the 3·10⁻⁶ quantile (one-sided 1.5·10⁻⁶ on each side).
const TAIL_FIT: [(f32, f32); 6] = [
    (1.948, 1.10),
    (2.011, 1.27),
    (2.157, 1.645),
    (2.331, 2.04),
    (2.600, 2.49),
    (2.936, 2.85),
];

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

/// The body quantile's steps in codes at `rate` × λ_lo: down `round(37·rate)` (at least 1), up three times
/// that, so the equilibrium stays at P_LO exactly (rate 1: `LO_UP`, `LO_DOWN`).
fn lo_steps(rate: f64) -> (u16, u16) {
    let down = ((LO_DOWN as f64 * rate).round() as u16).clamp(1, LO_DOWN);
    (3 * down, down)
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

#[derive(Debug, Clone, Copy)]
pub struct AlertParams {
    pub floor: f32,
    pub margin: f32,
    pub clear_ratio: f32,
    pub clear_epochs: u8,
    pub critical_ratio: f32,
    /// The body quantile's steps in codes once a series is mature (`lo_steps(mature_lo_rate)`).
    pub lo_steps_mature: (u16, u16),
    /// `x^sustained_tail_exponent` (the spec's exponent lives here only).
    pub tail_power: TailPower,
    /// `score_margin` (0: the score calibration is off): see [`ScoreQuantile`].
    pub score_margin: f32,
    /// `memory_margin` (0: the memory is off): see [`Memory`].
    pub memory_margin: f32,
    /// The design rate's factor on the threshold (identity at the fitted 3·10⁻⁶ per observation).
    pub rate: RateFactor,
}

/// The threshold's factor for a design rate `p` per observation other than the fitted `P_FIT` (3·10⁻⁶):
/// `g(r)`, the ratio of t(ν) quantiles at `p` and at `P_FIT` (`model::tails`), at the tail ratios `r` of the
/// fit's knots (ν = ∞, 30, 10, 6, 4, 3, and 2 at `R_MAX`), linear in log r between them, constant outside.
/// Held in code differences (`d = 2048·log2 r`), so a series' factor is a few comparisons on the two codes
/// its threshold already reads. Identity (the multiply skipped) at `P_FIT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateFactor {
    identity: bool,
    knots: [(f32, f32); 7],
}

impl RateFactor {
    /// The tail ratios of the fit's knots and the degrees of freedom they stand for.
    const NU: [(f32, f64); 7] = [
        (1.948, f64::INFINITY),
        (2.011, 30.0),
        (2.157, 10.0),
        (2.331, 6.0),
        (2.600, 4.0),
        (2.936, 3.0),
        (R_MAX, 2.0),
    ];

    pub const IDENTITY: RateFactor = RateFactor {
        identity: true,
        knots: [(0.0, 1.0); 7],
    };

    /// For a design rate of `p` false alarms per observation (both sides).
    pub fn for_rate(p: f64) -> RateFactor {
        if (p / super::tails::P_FIT - 1.0).abs() < 1e-9 {
            return RateFactor::IDENTITY;
        }
        let mut knots = [(0.0, 1.0); 7];
        for (k, &(r, nu)) in knots.iter_mut().zip(Self::NU.iter()) {
            *k = (
                (r as f64).log2() as f32 * 2048.0,
                super::tails::rate_factor(nu, p) as f32,
            );
        }
        RateFactor {
            identity: false,
            knots,
        }
    }

    /// g at the tail ratio of two codes `d = side − lo` apart.
    #[inline]
    fn at_codes(&self, side: u16, lo: u16) -> f32 {
        let d = (side as f32 - lo as f32).max(0.0);
        let k = &self.knots;
        if d <= k[0].0 {
            return k[0].1;
        }
        for w in k.windows(2) {
            if d <= w[1].0 {
                return w[0].1 + (w[1].1 - w[0].1) * (d - w[0].0) / (w[1].0 - w[0].0);
            }
        }
        k[6].1
    }

    /// g of a Gaussian tail (r = 1.947826, below the first knot: the first knot's value; 1 for the identity).
    /// `bar` reads it for every series every epoch, so it is a field read, not an interpolation.
    #[inline]
    fn gaussian(&self) -> f32 {
        self.knots[0].1
    }

    /// g at a tail ratio `r`.
    pub fn at_ratio(&self, r: f32) -> f32 {
        if self.identity {
            return 1.0;
        }
        let d = r.max(1.0).log2() * 2048.0;
        self.at_codes(d.round().clamp(0.0, 65535.0) as u16, 0)
    }
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
        self.floor
            .max(self.margin * Q0_HI * 2.082_13 * self.rate.gaussian())
    }

    /// A series' bar for this epoch: its threshold on each side, and how much its tails raise the bar for
    /// sustained evidence (`(√(T_up·T_dn)/T_gauss)^e` clamped to [1, 2]). Computed once per series per epoch
    /// (inlined: a call per series cost a tenth of the step in `cargo bench --bench kernels -- model/`).
    #[inline(always)]
    pub fn bar(&self, q: Quantiles) -> Bar {
        let q = q.or_initial();
        // Neither side below the two sides' geometric mean (the mean of their log-codes, rounded down): a
        // heavier side keeps its own tail, a side that merely looks lighter through its estimate's noise is
        // held at the mean. The lighter side's threshold is the mean's, which also sets the tail factor.
        let mean = ((q.up as u32 + q.dn as u32) / 2) as u16;
        let heavy = self.threshold_of_codes(q.up.max(q.dn), q.lo);
        let light = self.threshold_of_codes(mean, q.lo);
        let (up, down) = if q.up >= q.dn {
            (heavy, light)
        } else {
            (light, heavy)
        };
        let ratio = light / self.gaussian_threshold();
        Bar {
            up,
            down,
            tail: self.tail_power.eval(ratio),
        }
    }

    /// One side of [`AlertParams::bar`]: the threshold above the prediction (`upward`) or below it, without
    /// computing the other side and the tail factor.
    #[inline]
    pub fn threshold_on(&self, q: Quantiles, upward: bool) -> f32 {
        let q = q.or_initial();
        if upward == (q.up >= q.dn) {
            self.threshold_of_codes(q.up.max(q.dn), q.lo)
        } else {
            self.threshold_of_codes(((q.up as u32 + q.dn as u32) / 2) as u16, q.lo)
        }
    }

    /// The spec's alerting parameters for epochs of `epoch_seconds`: the threshold's design rate per
    /// observation is `threshold_false_alarms_per_1000_series_days` spread over a day's epochs.
    pub fn from_spec(a: &AlertSpec, epoch_seconds: u64) -> Self {
        AlertParams {
            rate: RateFactor::for_rate(a.threshold_rate_per_observation(epoch_seconds)),
            floor: a.threshold_floor as f32,
            margin: a.threshold_margin as f32,
            clear_ratio: a.clear_ratio as f32,
            clear_epochs: a.clear_epochs,
            critical_ratio: a.critical_ratio as f32,
            lo_steps_mature: lo_steps(a.mature_lo_rate),
            tail_power: TailPower::new(a.sustained_tail_exponent as f32),
            score_margin: a.score_margin as f32,
            memory_margin: if a.memory_half_life_hours > 0.0 {
                a.memory_margin as f32
            } else {
                0.0
            },
        }
    }

    /// `threshold` for two quantile codes: the same formula, by tables.
    #[inline(always)]
    fn threshold_of_codes(&self, side: u16, lo: u16) -> f32 {
        let t = self.margin * code_value(side) * tail_factor_of_codes(side, lo);
        if self.rate.identity {
            self.floor.max(t)
        } else {
            self.floor.max(t * self.rate.at_codes(side, lo))
        }
    }

    /// One side's threshold for that side's tail quantile and the body quantile (`0` means not yet
    /// calibrated).
    pub fn threshold(&self, q_hi: f32, q_lo: f32) -> f32 {
        let hi = if q_hi > 0.0 { q_hi } else { Q0_HI };
        let lo = if q_lo > 0.0 { q_lo } else { Q0_LO };
        let r = (hi / lo).clamp(1.2, R_MAX);
        self.floor
            .max(self.margin * hi * tail_factor(r) * self.rate.at_ratio(r))
    }

    /// One calibration step with the signed surprise `z` (call only for ordinary observations); `mature`:
    /// the series has seen 255 observations (the body quantile then steps by `mature_lo_rate`).
    pub fn update_quantiles(&self, q: Quantiles, z: f32, mature: bool) -> Quantiles {
        let Quantiles { up, dn, lo } = q.or_initial();
        let s = z.abs();
        // Multiplicative steps (factors e^(λ·(1 − (1 − p))) and e^(−λ·(1 − p)), precomputed): the estimate
        // recovers from an overshoot in proportion to its size.
        let (lo_up, lo_down) = if mature {
            self.lo_steps_mature
        } else {
            (LO_UP, LO_DOWN)
        };
        let side = |q: u16, beyond: bool| {
            if beyond {
                (q + SIDE_UP).min(C_MAX)
            } else {
                q.saturating_sub(SIDE_DOWN).max(C_SIDE_MIN)
            }
        };
        Quantiles {
            up: side(up, z > code_value(up)),
            dn: side(dn, -z > code_value(dn)),
            lo: if s > code_value(lo) {
                (lo + lo_up).min(C_MAX)
            } else {
                lo.saturating_sub(lo_down).max(C_LO_MIN)
            },
        }
    }

    /// The normalised score of an assessment (`upward`: above its prediction) for a series with bar `bar`,
    /// and the kind it points at: the point-wise surprise against the series' own threshold on that side,
    /// or the sustained evidence against the
    /// detector's alarm point raised with how heavy the series' tail is (`(t / T_gauss)^e`, in [1, 2], e =
    /// `sustained_tail_exponent`: sustained statistics average capped inputs, so tails matter less to them;
    /// stuck values are not a matter of tails).
    ///
    /// Shift and variance evidence is further divided by `calibration` (the series' own history of that
    /// evidence, [`AlertParams::score_divisor`]) and point evidence by `memory` ([`AlertParams::memory_divisor`]);
    /// both 1 when off. [`Scored`] also carries each evidence before that division: what the calibrations
    /// learn from.
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &self,
        surprise: f32,
        upward: bool,
        sustained: f32,
        kind: AnomalyKind,
        bar: &Bar,
        calibration: f32,
        memory: f32,
    ) -> Scored {
        let point = surprise / bar.threshold(upward);
        let tail = bar.tail;
        let (sustained, learned) = match kind {
            // Neither is a matter of tails: a stuck value repeats, an out-of-range value leaves the series'
            // whole history behind.
            AnomalyKind::StuckValue | AnomalyKind::OutOfRange => (sustained, 0.0),
            // The volatility statistic averages |z| capped at 4: tails matter to it less still.
            AnomalyKind::VarianceBurst => {
                let v = sustained / tail.sqrt();
                (v / calibration, v)
            }
            _ => {
                let v = sustained / tail;
                (v / calibration, v)
            }
        };
        let divided = point / memory;
        let (score, kind) = if sustained > divided {
            (sustained, kind)
        } else {
            (divided, AnomalyKind::Spike)
        };
        Scored {
            score,
            kind,
            point,
            sustained: learned,
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

/// The level a series' own score exceeds 1/256 of the time, `G`, as a log-code like [`Quantiles`] (0: not yet
/// calibrated, read as [`ScoreQuantile::Q0`]). It is fed every scored, uncensored observation — anomalies and
/// open alerts included — so it measures how often the series' ordinary life crosses its bars:
///
/// ```text
/// log2 G ← log2 G + (256·1[s > G] − 1)/2048          (exceeded 1/256 of the time; λ = 0.087)
/// s' = s / max(1, score_margin · G)                   what raises, updates and clears
/// ```
///
/// Gaussian noise scores G ≈ 0.45 (the 1/256 quantile of |z| is 2.9σ against a 6.5σ threshold at the
/// default margin; a CUSUM's is about the same fraction of its bar), so with `score_margin` 2 such a series
/// keeps its bars. A series whose residuals are autocorrelated, bursty or switch regimes crosses half its bar
/// every day or two; its G rises and its bar with it — each exceedance lifts G by 9 %, and it decays by half
/// over 2,048 observations (a week of 5-minute epochs), so after an episode the same kind of episode is
/// less news for about a week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScoreQuantile(pub u16);

impl ScoreQuantile {
    /// Where a series starts: about the 1/256 quantile of a Gaussian series' score.
    pub const Q0: f32 = 0.45;
    const UP: u16 = 32;
    const DOWN: u16 = 1;
    /// Observations per downward step.
    pub const DOWN_EVERY: u64 = 8;
    /// Codes of 0.05 and 1,000.
    const MIN: u16 = 23_917;

    /// The current estimate.
    #[inline]
    pub fn value(self) -> f32 {
        if self.0 == 0 {
            Self::Q0
        } else {
            code_value(self.0)
        }
    }

    /// One step with the evidence `s` of an observation; `tick`: this observation may step down (one in
    /// [`ScoreQuantile::DOWN_EVERY`]: a code is the smallest step, and a slow estimate needs a smaller one).
    #[inline]
    pub fn update(self, s: f32, tick: bool) -> ScoreQuantile {
        let c = if self.0 == 0 {
            Quantiles::code(Self::Q0)
        } else {
            self.0
        };
        ScoreQuantile(if s > code_value(c) {
            (c + Self::UP).min(C_MAX)
        } else if tick {
            c.saturating_sub(Self::DOWN).max(Self::MIN)
        } else {
            c
        })
    }
}

/// `max(1, margin · learned)`, or 1 when the margin is 0 (that calibration is off; `learned` is then not
/// decoded: this runs for every series every epoch).
#[inline]
fn margin_divisor(margin: f32, learned: impl FnOnce() -> f32) -> f32 {
    if margin > 0.0 {
        (margin * learned()).max(1.0)
    } else {
        1.0
    }
}

impl AlertParams {
    /// What a score is divided by under the score calibration: `max(1, score_margin · G)` (1 when off).
    #[inline]
    pub fn score_divisor(&self, g: ScoreQuantile) -> f32 {
        margin_divisor(self.score_margin, || g.value())
    }
}

/// One observation's normalised score, and the evidence behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The score that raises, updates and clears (≥ 1: anomalous for this series).
    pub score: f32,
    pub kind: AnomalyKind,
    /// The point-wise evidence `|z|/T_side` before the memory's division.
    pub point: f32,
    /// Shift or variance evidence before the calibration's division (0 for other kinds).
    pub sustained: f32,
}

/// A series' memory of its largest recent point-wise evidence, `M`, as a log-code like [`Quantiles`] (0:
/// nothing remembered). It decays with a half-life in time (`memory_half_life_hours`) and jumps to any larger
/// evidence at once:
///
/// ```text
/// log2 M ← max(log2 M − gap·epoch/half-life, log2 s_p)      s_p = |z|/T_side, every scored observation
/// s_p' = s_p / max(1, memory_margin · M)                    M as it was before this observation
/// ```
///
/// An excursion is news when it is larger than what the series did lately: a daily batch job's 30σ spike
/// raises on its first day, then its next ones are no larger than the memory (which has decayed by a quarter
/// in a day at a 3-day half-life) and stay quiet; a series whose noise merely has a heavier tail than its
/// calibration extrapolates to raises once, not every day. Gaussian noise keeps M below 0.5 (its largest
/// |z| over a few days is about 3.5σ against a 6.5σ threshold), so a quiet series keeps its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory(pub u16);

impl Memory {
    /// The remembered evidence (0: none).
    #[inline]
    pub fn value(self) -> f32 {
        if self.0 == 0 { 0.0 } else { code_value(self.0) }
    }

    /// Decay by `codes` (log2 steps of 1/2048), then remember `s` if it is larger.
    #[inline]
    pub fn update(self, s: f32, codes: u32) -> Memory {
        let decayed = if self.0 == 0 {
            0
        } else {
            (self.0 as u32).saturating_sub(codes).max(C_LO_MIN as u32) as u16
        };
        // Evidence no larger than what is remembered leaves the code where it is: the code is monotone in
        // `s` and its logarithm errs by about 0.02 of a code, far below the half code that would round it
        // up. Most observations take this exit, without the logarithm (a division and a polynomial).
        if decayed != 0 && (s <= code_value(decayed) || s.is_nan()) {
            return Memory(decayed);
        }
        if s > 0.0 && s.is_finite() {
            let c = Quantiles::code(s.min(1000.0)).max(C_LO_MIN);
            Memory(decayed.max(c))
        } else {
            Memory(decayed)
        }
    }
}

impl AlertParams {
    /// What point evidence is divided by under the memory: `max(1, memory_margin · M)` (1 when off).
    #[inline]
    pub fn memory_divisor(&self, m: Memory) -> f32 {
        margin_divisor(self.memory_margin, || m.value())
    }
}

/// A series' personal bar for one epoch (see [`AlertParams::bar`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bar {
    /// The threshold above the prediction.
    pub up: f32,
    /// The threshold below it.
    pub down: f32,
    pub tail: f32,
}

impl Bar {
    /// The threshold on one side of the prediction.
    #[inline]
    pub fn threshold(&self, upward: bool) -> f32 {
        if upward { self.up } else { self.down }
    }
}

/// What one epoch did to a series' alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
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
            score_margin: 0.0,
            memory_margin: 0.0,
            rate: RateFactor::IDENTITY,
        }
    }

    #[test]
    fn the_design_rate_is_per_series_day() {
        // the default, 0.864 per 1,000 series-days, is the fitted 3·10⁻⁶ per observation at 5-minute epochs
        let spec = AlertSpec::default();
        assert_eq!(
            AlertParams::from_spec(&spec, 300).rate,
            RateFactor::IDENTITY
        );
        // hourly epochs: 12 times the rate per observation. A Gaussian series' bar falls by
        // Q(1.8·10⁻⁵)/Q(1.5·10⁻⁶) = 4.134/4.673, a t(3)-tailed one's by more, a t(2)-tailed one's by √12
        let hourly = AlertParams::from_spec(&spec, 3600);
        let p = params();
        let (g_gauss, g_t3, g_t2) = (
            hourly.rate.at_ratio(1.948),
            hourly.rate.at_ratio(2.936),
            hourly.rate.at_ratio(R_MAX),
        );
        assert!((g_gauss - 0.8847).abs() < 2e-3, "{g_gauss}");
        assert!((g_t2 - 12f32.powf(-0.5)).abs() < 2e-3, "{g_t2}");
        assert!(g_t2 < g_t3 && g_t3 < g_gauss);
        // between knots: linear in log r
        let mid = ((1.948f32.log2() + 2.011f32.log2()) / 2.0).exp2();
        let g_mid = hourly.rate.at_ratio(mid);
        let g30 = hourly.rate.at_ratio(2.011);
        assert!((g_mid - (g_gauss + g30) / 2.0).abs() < 1e-3);
        // the threshold itself, by codes and by values, scales by g at its own ratio
        let q = Quantiles {
            up: Quantiles::code(3.7),
            dn: Quantiles::code(3.7),
            lo: Quantiles::code(1.26),
        };
        let h = AlertParams {
            rate: hourly.rate,
            floor: 0.0,
            ..p
        };
        let base = AlertParams { floor: 0.0, ..p };
        let ratio = h.bar(q).up / base.bar(q).up;
        let r = 3.7f32 / 1.26;
        assert!((ratio - hourly.rate.at_ratio(r)).abs() < 2e-3, "{ratio}");
        assert!((h.threshold(3.7, 1.26) / base.threshold(3.7, 1.26) - ratio).abs() < 2e-3);
        // one-minute epochs: a fifth of the rate, a higher bar
        assert!(AlertParams::from_spec(&spec, 60).rate.at_ratio(2.0) > 1.0);
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
        // codes: round((log2 q + 16)·2048): 2.24 → 35151, 1.15 → 33181
        assert_eq!(Quantiles::code(2.24), 35_151);
        assert_eq!(Quantiles::code(1.15), 33_181);
        let (up, dn, lo) = Quantiles::INITIAL.values();
        assert!((up / 2.24 - 1.0).abs() < 2e-4 && (dn / 2.24 - 1.0).abs() < 2e-4);
        assert!((lo / 1.15 - 1.0).abs() < 2e-4);
        // (z, mature, up, dn, lo) from INITIAL: a side beyond its tail steps up 79 codes, else down 1; the
        // body up 111 beyond, else down 37 (mature with κ = 0.25: round(9.25) = 9 down, 27 up)
        for (z, mature, want) in [
            (4.0, false, (35_230, 35_150, 33_292)),
            (-4.0, false, (35_150, 35_230, 33_292)),
            (0.5, false, (35_150, 35_150, 33_144)),
            (-0.5, false, (35_150, 35_150, 33_144)),
            (4.0, true, (35_230, 35_150, 33_208)),
            (0.5, true, (35_150, 35_150, 33_172)),
            // just inside the upper tail (2.2 < 2.24): down on both sides, up in the body
            (2.2, false, (35_150, 35_150, 33_292)),
        ] {
            let q = p.update_quantiles(Quantiles::INITIAL, z, mature);
            assert_eq!((q.up, q.dn, q.lo), want, "z {z} mature {mature}");
        }
        // 0 stands for the initial estimates
        assert_eq!(
            p.update_quantiles(Quantiles::default(), 4.0, false),
            p.update_quantiles(Quantiles::INITIAL, 4.0, false)
        );
        // rate 1 is the young step; steps keep the 3 : 1 ratio of P_LO = 0.75
        assert_eq!(lo_steps(1.0), (LO_UP, LO_DOWN));
        assert_eq!(lo_steps(0.125), (15, 5));
    }

    #[test]
    fn thresholds_are_per_side_with_a_floor_at_the_mean() {
        let p = params();
        let code = Quantiles::code;
        // a heavy upper tail (q_up 3.7) over a light lower one (q_dn 2.24), body 1.26: the upper side gets
        // threshold(3.7, 1.26) = 91.67 (hand-computed in `thresholds_are_personal`); the lower side is held
        // at the geometric mean √(3.7·2.24) = 2.8789 (the mean of the two codes): threshold(2.8789, 1.26)
        let q = Quantiles {
            up: code(3.7),
            dn: code(2.24),
            lo: code(1.26),
        };
        let gm = (3.7f32 * 2.24).sqrt();
        let close = |a: f32, b: f32| (a / b - 1.0).abs() < 1e-3;
        let bar = p.bar(q);
        assert!(close(bar.up, 91.67), "{bar:?}");
        assert!(close(bar.down, p.threshold(gm, 1.26)), "{bar:?}");
        assert!(bar.down < bar.up / 2.0);
        assert_eq!(
            (bar.threshold(true), bar.threshold(false)),
            (bar.up, bar.down)
        );
        // mirrored
        let m = p.bar(Quantiles {
            up: q.dn,
            dn: q.up,
            lo: q.lo,
        });
        assert_eq!((m.up, m.down, m.tail), (bar.down, bar.up, bar.tail));
        // the sustained bar's tail factor is the mean's: (T(q̄)/T_gauss)^0.5 (params: exponent 0.5)
        assert!(close(
            bar.tail,
            (bar.down / p.gaussian_threshold()).sqrt().clamp(1.0, 2.0)
        ));
        // symmetric: both sides the same, as the pooled threshold was
        let sym = p.bar(Quantiles {
            up: code(3.7),
            dn: code(3.7),
            lo: code(1.26),
        });
        assert_eq!(sym.up, sym.down);
        assert!(close(sym.up, 91.67));
        // uncalibrated: the Gaussian bar on both sides (within 0.2 %: the table interpolates across the knot
        // at r = 1.948, as in `thresholds_are_personal`)
        let g = p.bar(Quantiles::default());
        let near = |a: f32, b: f32| (a / b - 1.0).abs() < 2e-3;
        assert!(
            near(g.up, p.gaussian_threshold()) && near(g.down, p.gaussian_threshold()),
            "{g:?} {}",
            p.gaussian_threshold()
        );
        // the scores use the side of the excursion
        let up_score = p
            .score(9.167, true, 0.0, AnomalyKind::LevelShift, &bar, 1.0, 1.0)
            .score;
        let dn_score = p
            .score(9.167, false, 0.0, AnomalyKind::LevelShift, &bar, 1.0, 1.0)
            .score;
        assert!(close(up_score, 0.1) && dn_score > 2.0 * up_score);
    }

    #[test]
    fn quantiles_converge_to_the_target_tail() {
        let p = params();
        let mut rng = crate::rng::Rng::new(5, 5);
        let mut q = Quantiles::default();
        let (mut sum_up, mut sum_dn, mut sum_lo) = (0.0, 0.0, 0.0);
        for i in 0..300_000 {
            q = p.update_quantiles(q, rng.normal() as f32, false);
            if i >= 100_000 {
                let (u, d, l) = q.values();
                sum_up += u;
                sum_dn += d;
                sum_lo += l;
            }
        }
        let (up, dn, lo) = (sum_up / 2e5, sum_dn / 2e5, sum_lo / 2e5);
        // N(0,1): 98.75% quantile 2.241 on each side; |N(0,1)|: 75% quantile 1.150
        assert!((up - 2.241).abs() < 0.1, "q_up = {up}");
        assert!((dn - 2.241).abs() < 0.1, "q_dn = {dn}");
        assert!((lo - 1.150).abs() < 0.05, "q_lo = {lo}");
        // one-sided noise (clipped below at −0.5): the lower side's tail is gone, the upper's is not
        let mut q = Quantiles::default();
        let (mut sum_up, mut sum_dn) = (0.0, 0.0);
        for i in 0..300_000 {
            q = p.update_quantiles(q, (rng.normal() as f32).max(-0.5), false);
            if i >= 100_000 {
                let (u, d, _) = q.values();
                sum_up += u;
                sum_dn += d;
            }
        }
        let (up, dn) = (sum_up / 2e5, sum_dn / 2e5);
        assert!((up - 2.241).abs() < 0.1, "q_up = {up}");
        assert!(dn < 0.6, "q_dn = {dn}");
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

    #[test]
    fn score_quantile_steps_by_hand() {
        // Uncalibrated: G = Q0 = 0.45. Exceeded: up 32 codes (2^(32/2048) = 1.010889×); not exceeded: down 1
        // code (2^(−1/2048)) on a tick, unchanged otherwise. Equilibrium: 32·p = (1 − p)/8, p = 1/257.
        let g0 = ScoreQuantile::default();
        assert_eq!(g0.value(), ScoreQuantile::Q0);
        let c0 = Quantiles::code(ScoreQuantile::Q0);
        let up = g0.update(0.9, false);
        assert_eq!(up.0, c0 + 32);
        assert!((up.value() / code_value(c0) - 1.010_889).abs() < 1e-5);
        assert_eq!(up.update(0.1, false), up);
        assert_eq!(up.update(0.1, true).0, c0 + 31);
        // The divisor: max(1, margin·G); off (margin 0) it is 1.
        let mut p = params();
        assert_eq!(p.score_divisor(up), 1.0);
        p.score_margin = 3.0;
        assert!((p.score_divisor(up) - 3.0 * up.value()).abs() < 1e-6); // 1.3647 > 1
        assert_eq!(p.score_divisor(ScoreQuantile(Quantiles::code(0.2))), 1.0);
    }

    #[test]
    fn memory_update_skips_the_logarithm_exactly() {
        // The shortcut (evidence no larger than the remembered value keeps the code) against the code
        // computed every time, at every code a memory can hold and at the floats nearest its value.
        let reference = |m: Memory, s: f32, codes: u32| {
            let decayed = if m.0 == 0 {
                0
            } else {
                (m.0 as u32).saturating_sub(codes).max(C_LO_MIN as u32) as u16
            };
            if s > 0.0 && s.is_finite() {
                Memory(decayed.max(Quantiles::code(s.min(1000.0)).max(C_LO_MIN)))
            } else {
                Memory(decayed)
            }
        };
        for c in C_LO_MIN..=C_MAX {
            let v = code_value(c);
            let mut probes = vec![0.0, -1.0, f32::NAN, f32::INFINITY, v * 0.5, v * 2.0];
            let (mut below, mut above) = (v, v);
            for _ in 0..4 {
                probes.push(below);
                probes.push(above);
                below = f32::from_bits(below.to_bits() - 1);
                above = f32::from_bits(above.to_bits() + 1);
            }
            for s in probes {
                for codes in [0, 2] {
                    let m = Memory(c);
                    assert_eq!(
                        m.update(s, codes),
                        reference(m, s, codes),
                        "code {c}, s {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn memory_remembers_the_largest_recent_evidence_and_decays_by_time() {
        let m = Memory::default();
        assert_eq!(m.value(), 0.0);
        // A 4.0 excursion is remembered at once (to the code's 0.034 %).
        let m = m.update(4.0, 2);
        assert!((m.value() - 4.0).abs() < 4.0 * 4e-4);
        // A smaller one decays it by 2 codes and is forgotten.
        let m2 = m.update(1.0, 2);
        assert_eq!(m2.0, m.0 - 2);
        // 2048 codes halve it: 3-day half-life at 5-minute epochs is 2048·300/259200 = 2.37 codes an epoch.
        let m3 = m.update(0.0, 2048);
        assert!((m3.value() - 2.0).abs() < 2.0 * 4e-4);
        // The divisor: max(1, margin·M), margin 1.5: the next 4.0 excursion scores 4/6 of its point score.
        let mut p = params();
        p.memory_margin = 1.5;
        assert!((p.memory_divisor(m) - 6.0).abs() < 6.0 * 4e-4);
        assert_eq!(p.memory_divisor(Memory::default()), 1.0);
        let bar = Bar {
            up: 5.0,
            down: 5.0,
            tail: 1.0,
        };
        // |z| = 20 against T = 5: point 4, divided by 6 → 0.667; a shift of 0.5 wins neither.
        let s = p.score(
            20.0,
            true,
            0.5,
            AnomalyKind::LevelShift,
            &bar,
            1.0,
            p.memory_divisor(m),
        );
        assert_eq!(s.kind, AnomalyKind::Spike);
        assert!((s.point - 4.0).abs() < 1e-6);
        assert!((s.score - 4.0 / p.memory_divisor(m)).abs() < 1e-6);
        assert!((s.sustained - 0.5).abs() < 1e-6);
        // Shift evidence is divided by the calibration, and reported undivided.
        let s = p.score(1.0, true, 2.0, AnomalyKind::LevelShift, &bar, 2.5, 1.0);
        assert_eq!(s.kind, AnomalyKind::LevelShift);
        assert!((s.score - 0.8).abs() < 1e-6);
        assert!((s.sustained - 2.0).abs() < 1e-6);
    }
}
