//! `seasonal-robust`: the default per-series model. A robust level with a learned daily rhythm and a learned
//! noise memory, a weekend offset, a robust noise scale, two-sided CUSUM for shifts and drifts, a short-term
//! volatility tracker, a stuck-value detector and (optionally) either the range of everything the series
//! ever showed or a fast CUSUM pair for big shifts — 36 bytes of state, O(1) per observation.
//!
//! # State (36 bytes, little-endian)
//!
//! ```text
//! 0..4    L     f32      level (de-seasonalised)
//! 4..6    S     scale16  0.8-expectile of the absolute one-step residual (σ̂ = 0.8605·S); an unsigned
//!                        16-bit float (state::le::scale16), a half's precision up to 4·10⁹: byte counters fit
//! 6..22   θ     [f32;4]  daily harmonics a1 b1 a2 b2          (rate series: 6..10 = previous raw value)
//! 22      C⁺    u8       upper CUSUM, σ units ×8
//! 23      C⁻    u8       lower CUSUM, σ units ×8
//! 24      m     u8       short-term mean of min(|z|, 4), ×32
//! 25      run   u8       current run of exactly repeated raw values
//! 26      R     u8       the longest run the series normally shows (up to its bar), ×2 (decays slowly)
//! 27      h     u8       8-bit hash of the last raw value
//! 28      ψ₋    i8       the previous observation's clipped base residual ψ_b, ×50
//! 29      ρ     i8       sign autocorrelation of residuals, ×127
//! 30..32  W     float16  weekend offset: Saturdays and Sundays (UTC) sit W above the rest of the week;
//!                        state::le::bound16's format rounded to nearest (2⁻¹⁰ relative), up to 4·10⁹
//! 32..34  lo    bound16  the smallest value the series ever showed, rounded down (state::le::bound16)
//! 34..36  hi    bound16  the largest, rounded up           (both 0 while range_tolerance = 0: not tracked)
//!   or, with the range rule off (range_tolerance = 0) and the fast shift statistic on (fast_cusum_h > 0):
//! 32      F⁺    u8       upper fast CUSUM, σ units ×8
//! 33      F⁻    u8       lower fast CUSUM, σ units ×8       (34..36 unused)
//! ```
//!
//! # Equations (per observation x at daily phase φ, n = observations so far)
//!
//! ```text
//! f      = [cos φ, sin φ, cos 2φ, sin 2φ]
//! ρ_r    = sin(π/2 · ρ) clamped to [0, 0.6]             (Gaussian: E[sgn z_t · sgn z_t−1] = (2/π)·asin ρ_r)
//! base   = L + θ·f + w·W                                w = 1 on Saturdays and Sundays (UTC), else 0
//! p      = base + ρ_r·σ·ψ₋                              prediction with the residual's own memory
//! σ_own  = 0.8605·S                                     (S → 1.162σ for Gaussian noise, see S below)
//! σ      = √((n·σ_own² + k·σ_prior²)/(n + k))  while n < warm, else σ_own; floored; inflated after gaps
//! r      = x − p,  z = r/σ,  ψ = clamp(z, −c, c)        Huber influence, c = huber
//!          z = 0 when x sits at a declared bound that p lies beyond (censored: a percentage of exactly 0
//!          is a quantity ≤ 0, and p < 0 agrees with it)
//! ψ_b    = clamp((x − base)/σ, −c, c)                   the residual the memory term models
//! C⁺     = max(0, C⁺ + min(z, z_c) − k_c),  C⁻ = max(0, C⁻ − max(z, −z_c) − k_c)   z_c = cusum_cap (4):
//!          spikes are the spike term's job; a larger cap detects big shifts an epoch sooner, with more
//!          false shifts on heavy tails (QUALITY.md: cap 6 gave the fleet a 2-epoch median shift delay and
//!          4.8 false alerts per 1,000 series-days against 3 and 3.7)
//! F⁺     = max(0, F⁺ + min(z, z_f) − k_f),  F⁻ likewise   the fast shift statistic (fast_cusum_*; off at
//!          h_f = 0): a higher allowance k_f (2.5) forgets ordinary noise within an epoch or two, a higher
//!          cap z_f (6) lets two or three observations of a big shift reach h_f (5.375: home-wifi's until 2026-12-06) — the slow pair
//!          above needs at least ⌈h·κ/(z_c − k_c)⌉ observations (κ ∈ [1, 2]: the framework's tail factor,
//!          `alert.rs`, which raises both pairs' bars), 3 at κ = 1, more on heavy tails, and keeps the small
//!          shifts and the drifts
//! m      = m + γ·(min(|z|, 4) − m)                      (E|z| = 0.8 for Gaussian noise)
//! ρ      = ρ + (sgn ψ_b · sgn ψ₋ − ρ)/64 while max(C⁺, C⁻) < h/2,  ψ₋ ← ψ_b
//! run    = run + 1 if x repeats the last raw value exactly, else 0
//! R      = max(min(run_ended, 2R + 4), R·(1 − 1/256)) when a run of length ≥ 1 ends (a run longer than
//!          the bar teaches the bar: a quantised series' runs are learned within a few raises)
//! surprise = |z|                                         point-wise, calibrated per series by the framework
//! range  = max(x − hi, lo − x)/(τ·(hi − lo))            τ = range_tolerance; 0 inside [lo, hi]
//! lo, hi = min(lo, x), max(hi, x)                       after scoring; lo = hi = x at the first value
//! sustained = max(max(C⁺, C⁻)/h, max(F⁺, F⁻)/h_f, max(0, m − 0.8)/(m_alarm − 0.8), run/(2R + 4), range)
//!                                                        1 = alarm
//!   (the stuck term only for series with real noise: σ above twice its floor; the range term only with
//!   τ > 0: a value beyond its whole history by more than τ of that history's span, whatever the noise —
//!   NAB's HTM detector has the same rule with τ = 5 %)
//! learning (gain a = max(α, 1/(n+1)), b = max(β, 1/(n+1)), η_n = η·(1 + 4·(1 − n/255))):
//!   L += a·σ·ψ_b,   θ += η_n·σ·ψ_b·f                   (the base residual: the carry is noise)
//!   W += w·g_W·σ·ψ_b,  g_W = g·a, or with weekend_memory m > 0: max(g·a, 1/(k + 1 + m))
//!                      g = weekend_gain (0: no weekly rhythm), k = epochs since Saturday 00:00 UTC:
//!                      each weekend's offset first learns as the running mean of that weekend's residuals,
//!                      the offset it starts from counting as m of them
//!   S += b·(min(|r|, 4σ) − S) when it grows, b/4 of that when it shrinks: an expectile, slow to collapse
//!   during quiet hours (nights of zero clients) and quick to widen when the noise rises
//!   if max(C⁺, C⁻) ≥ 3h or max(F⁺, F⁻) ≥ 3h_f: L = x − θ·f − w·W, C± = F± = 0
//!                                                       (a confirmed shift: jump to the new level)
//! ```
//!
//! Rate series (monotone counters) model `x_rate = (x − x_prev)/max(gap, 1)` without seasonality; a decrease is
//! a counter reset, reported and not scored.

use super::{
    AnomalyKind, Assessment, AtBound, DetectorState, FeaturePrior, Observation, SeriesSummary,
    Transform,
};
use crate::model::{Detector, DetectorParams};
use crate::state::le;

/// S tracks the 0.8-expectile of |r| (growth gain b, shrink gain b/4), which is 1.162σ for Gaussian noise.
const MAD_TO_SIGMA: f32 = 0.8605;

/// The default detector.
#[derive(Debug, Clone)]
pub struct SeasonalRobust {
    pub alpha: f32,
    pub eta: f32,
    pub beta: f32,
    pub huber: f32,
    pub cusum_k: f32,
    pub cusum_h: f32,
    pub cusum_cap: f32,
    /// The fast shift statistic (`fast_cusum_k`, `fast_cusum_h`, `fast_cusum_cap`; h = 0: off): a second
    /// CUSUM pair with a higher allowance and cap, for big shifts within two or three observations.
    pub fast_k: f32,
    pub fast_h: f32,
    pub fast_cap: f32,
    pub weekend_gain: f32,
    /// m: the offset a weekend starts from counts as m of its observations (0: W learns at g·a only).
    pub weekend_memory: f32,
    /// τ: score values outside the series' whole observed range by more than τ of its span (0: off).
    pub range_tolerance: f32,
    pub vol_gain: f32,
    pub vol_alarm: f32,
    pub prior_weight: f32,
    pub warm: u8,
}

impl Default for SeasonalRobust {
    fn default() -> Self {
        SeasonalRobust {
            alpha: 0.04,
            eta: 0.02,
            beta: 0.02,
            huber: 2.5,
            cusum_k: 1.0,
            cusum_h: 7.0,
            cusum_cap: 4.0,
            fast_k: 2.5,
            fast_h: 0.0,
            fast_cap: 6.0,
            weekend_gain: 0.0,
            weekend_memory: 0.0,
            range_tolerance: 0.0,
            vol_gain: 0.2,
            vol_alarm: 2.2,
            prior_weight: 6.0,
            warm: 24,
        }
    }
}

/// Decoded state.
#[derive(Debug, Clone, Copy, PartialEq)]
struct St {
    level: f32,
    mad: f32,
    season: [f32; 4],
    prev: f32,
    c_hi: f32,
    c_lo: f32,
    f_hi: f32,
    f_lo: f32,
    vol: f32,
    run: u8,
    run_max: f32,
    hash: u8,
    psi_prev: f32,
    rho: f32,
    weekend: f32,
    lo: f32,
    hi: f32,
}

// Rounding half away from zero without a libm call (`as` truncates toward zero, saturating).
fn q_u8(v: f32, scale: f32) -> u8 {
    (v * scale + 0.5).clamp(0.0, 255.0) as u8
}
fn q_i8(v: f32, scale: f32) -> u8 {
    let x = v * scale;
    let r = if x >= 0.0 { x + 0.5 } else { x - 0.5 };
    (r.clamp(-127.0, 127.0) as i8) as u8
}

impl St {
    /// The run of repeated values that is stuck: `2R + 4` (1 is the alarm point of `run / bar`).
    #[inline(always)]
    fn run_bar(&self) -> f32 {
        2.0 * self.run_max + 4.0
    }

    #[inline(always)]
    fn decode(b: &DetectorState, transform: Transform, range: bool) -> St {
        let (season, prev) = match transform {
            Transform::Level => (
                [
                    le::f32(b, 6),
                    le::f32(b, 10),
                    le::f32(b, 14),
                    le::f32(b, 18),
                ],
                0.0,
            ),
            Transform::Rate => ([0.0; 4], le::f32(b, 6)),
        };
        St {
            level: le::f32(b, 0),
            mad: le::scale16(b, 4),
            season,
            prev,
            c_hi: b[22] as f32 / 8.0,
            c_lo: b[23] as f32 / 8.0,
            vol: b[24] as f32 / 32.0,
            run: b[25],
            run_max: b[26] as f32 / 2.0,
            hash: b[27],
            psi_prev: (b[28] as i8) as f32 / 50.0,
            rho: (b[29] as i8) as f32 / 127.0,
            weekend: le::bound16(b, 30),
            lo: if range { le::bound16(b, 32) } else { 0.0 },
            hi: if range { le::bound16(b, 34) } else { 0.0 },
            f_hi: if range { 0.0 } else { b[32] as f32 / 8.0 },
            f_lo: if range { 0.0 } else { b[33] as f32 / 8.0 },
        }
    }

    #[inline(always)]
    fn encode(&self, transform: Transform, range: bool) -> DetectorState {
        let mut b = [0u8; super::DETECTOR_BYTES];
        le::set_f32(&mut b, 0, self.level);
        le::set_scale16(&mut b, 4, self.mad);
        match transform {
            Transform::Level => {
                for k in 0..4 {
                    le::set_f32(&mut b, 6 + 4 * k, self.season[k]);
                }
            }
            Transform::Rate => le::set_f32(&mut b, 6, self.prev),
        }
        b[22] = q_u8(self.c_hi, 8.0);
        b[23] = q_u8(self.c_lo, 8.0);
        b[24] = q_u8(self.vol, 32.0);
        b[25] = self.run;
        b[26] = q_u8(self.run_max, 2.0);
        b[27] = self.hash;
        b[28] = q_i8(self.psi_prev, 50.0);
        b[29] = q_i8(self.rho, 127.0);
        le::set_nearest16(&mut b, 30, self.weekend);
        if range {
            le::set_bound16(&mut b, 32, self.lo, false);
            le::set_bound16(&mut b, 34, self.hi, true);
        } else {
            b[32] = q_u8(self.f_hi, 8.0);
            b[33] = q_u8(self.f_lo, 8.0);
        }
        b
    }

    fn seasonal(&self, phase: &[f32; 4]) -> f32 {
        self.season[0] * phase[0]
            + self.season[1] * phase[1]
            + self.season[2] * phase[2]
            + self.season[3] * phase[3]
    }

    /// The residual autocorrelation implied by the sign statistic, clamped to [0, 0.6] (beyond that a
    /// "memory" is a level the model should be tracking instead).
    fn ar(&self) -> f32 {
        (std::f32::consts::FRAC_PI_2 * self.rho)
            .sin()
            .clamp(0.0, 0.6)
    }
}

/// One step of a two-sided CUSUM pair in σ units: each side adds its surprise, capped at `cap`, beyond the
/// allowance `k`, and stays within [0, 31] (stored as a byte of eighths). Both pairs, slow and fast, step so.
#[inline(always)]
fn cusum_step(hi: f32, lo: f32, z: f32, cap: f32, k: f32) -> (f32, f32) {
    (
        (hi + z.min(cap) - k).clamp(0.0, 31.0),
        (lo - z.max(-cap) - k).clamp(0.0, 31.0),
    )
}

/// 8-bit hash of a value's bits (for exact-repeat detection).
fn hash8(x: f32) -> u8 {
    let h = (x.to_bits() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 56) as u8
}

/// Smallest σ allowed: half the series' resolution (integer counts cannot be calmer than ±0.5), and a
/// relative floor so constant series do not divide by zero.
fn sigma_floor(p: f32, resolution: f32) -> f32 {
    (1e-3 * p.abs()).max(0.5 * resolution).max(1e-6)
}

impl SeasonalRobust {
    pub fn from_params(p: &DetectorParams) -> Result<Self, String> {
        let d = SeasonalRobust::default();
        let m = SeasonalRobust {
            alpha: p.f32("alpha", d.alpha, 1e-4, 1.0)?,
            eta: p.f32("eta", d.eta, 0.0, 1.0)?,
            beta: p.f32("beta", d.beta, 1e-4, 1.0)?,
            huber: p.f32("huber", d.huber, 0.5, 20.0)?,
            cusum_k: p.f32("cusum_k", d.cusum_k, 0.0, 5.0)?,
            cusum_h: p.f32("cusum_h", d.cusum_h, 1.0, 10.0)?,
            cusum_cap: p.f32("cusum_cap", d.cusum_cap, 1.0, 10.0)?,
            fast_k: p.f32("fast_cusum_k", d.fast_k, 0.0, 10.0)?,
            fast_h: p.f32("fast_cusum_h", d.fast_h, 0.0, 10.0)?,
            fast_cap: p.f32("fast_cusum_cap", d.fast_cap, 1.0, 10.0)?,
            weekend_gain: p.f32("weekend_gain", d.weekend_gain, 0.0, 1.0)?,
            weekend_memory: p.f32("weekend_memory", d.weekend_memory, 0.0, 1e6)?,
            range_tolerance: p.f32("range_tolerance", d.range_tolerance, 0.0, 10.0)?,
            vol_gain: p.f32("vol_gain", d.vol_gain, 0.001, 1.0)?,
            vol_alarm: p.f32("vol_alarm", d.vol_alarm, 1.0, 4.0)?,
            prior_weight: p.f32("prior_weight", d.prior_weight, 0.0, 1000.0)?,
            warm: p.f32("warm", d.warm as f32, 1.0, 255.0)? as u8,
        };
        if m.fast_h > 0.0 {
            if m.fast_h < 1.0 {
                return Err(format!(
                    "detector parameter fast_cusum_h = {} must be 0 (off) or in [1, 10]",
                    m.fast_h
                ));
            }
            if m.fast_cap <= m.fast_k {
                return Err(format!(
                    "detector parameter fast_cusum_cap = {} must exceed fast_cusum_k = {}: the fast shift \
                     statistic could never step up",
                    m.fast_cap, m.fast_k
                ));
            }
            if m.range_tolerance > 0.0 {
                // Both live in the state's last bytes (32..36): a spec has one or the other.
                return Err(format!(
                    "detector parameters fast_cusum_h = {} and range_tolerance = {} exclude each other: the \
                     fast shift statistic and the range rule share the last bytes of the series' state; set \
                     one to 0",
                    m.fast_h, m.range_tolerance
                ));
            }
        }
        Ok(m)
    }

    /// w: 1 on Saturdays and Sundays (UTC) for a level series of a model with a weekend offset
    /// (`weekend_gain` > 0), else 0.
    #[inline]
    fn weekend_weight(&self, ts: i64, transform: Transform) -> f32 {
        if self.weekend_gain == 0.0 || transform != Transform::Level {
            return 0.0;
        }
        if crate::timefmt::weekday(ts) >= 5 {
            1.0
        } else {
            0.0
        }
    }

    /// W's gain for the `k`-th epoch of a weekend (0-based) at level gain `a`: `g·a`, or with a weekend
    /// memory `m > 0` at least `1/(k + 1 + m)`. A level is mostly known when a weekend starts and the
    /// weekend's offset is not, so the weekend's first residuals are mostly the offset's: learned as their
    /// running mean, the offset settles within the weekend's first hour where `g·a` alone would leave the
    /// level to absorb it (and hand it back on Monday) for weeks.
    #[inline]
    fn weekend_rate(&self, a: f32, k: u32) -> f32 {
        let slow = self.weekend_gain * a;
        if self.weekend_memory > 0.0 {
            slow.max(1.0 / (k as f32 + 1.0 + self.weekend_memory))
        } else {
            slow
        }
    }

    /// σ for a state with `n` observations, blending in the cohort prior while cold.
    fn sigma(&self, st: &St, n: u8, prior_sigma: Option<f32>, p: f32, resolution: f32) -> f32 {
        let own = MAD_TO_SIGMA * st.mad;
        let s = match prior_sigma {
            Some(pr) if n < self.warm => {
                let n = n as f32;
                ((n * own * own + self.prior_weight * pr * pr) / (n + self.prior_weight)).sqrt()
            }
            _ => own,
        };
        s.max(sigma_floor(p, resolution))
    }
}

/// The cohort's noise scale for a series at `x`: the population's relative scale times the series' own
/// magnitude (customers of one feature differ by orders of magnitude, their relative noise much less).
fn prior_mad(prior: &FeaturePrior, x: f32) -> Option<f32> {
    (prior.count > 0).then(|| prior.scale * x.abs().max(0.1 * prior.level.abs()).max(1e-3))
}

impl SeasonalRobust {
    /// One observation (the trait's `observe`), with the range rule on or off.
    #[inline(always)]
    fn observe_with<const RANGE: bool>(
        &self,
        state: &mut DetectorState,
        obs: &Observation,
        prior: &FeaturePrior,
    ) -> Assessment {
        let range = RANGE;
        let mut st = St::decode(state, obs.transform, range);
        let n = obs.seen;
        let raw = obs.value;

        // The quantity modelled: the value, or the counter's increase per epoch.
        let x = match obs.transform {
            Transform::Level => raw,
            Transform::Rate => {
                if n == 0 {
                    st.prev = raw;
                    st.hash = hash8(raw);
                    *state = st.encode(obs.transform, range);
                    return Assessment::learn_only(0.0, 0.0);
                }
                let prev = st.prev;
                st.prev = raw;
                if raw < prev {
                    // Counter reset: remember the new base, score nothing.
                    *state = st.encode(obs.transform, range);
                    let mut a = Assessment::learn_only(raw, st.level);
                    a.reset = true;
                    return a;
                }
                (raw - prev) / obs.gap_epochs.max(1) as f32
            }
        };
        let season = match obs.transform {
            Transform::Level => obs.phase,
            Transform::Rate => [0.0; 4],
        };
        let wk = self.weekend_weight(obs.ts, obs.transform);

        // First modelled value: initialise from the value and the cohort prior.
        let first = match obs.transform {
            Transform::Level => n == 0,
            Transform::Rate => n == 1,
        };
        if first {
            if prior.count > 0 && obs.transform == Transform::Level {
                st.season = prior.season;
            }
            // Without a prior the scale is learned from scratch (it grows at once from the first residuals).
            st.mad = prior_mad(prior, x).unwrap_or(0.0);
            st.level = x - st.seasonal(&season);
            st.hash = hash8(raw);
            st.lo = x;
            st.hi = x;
            *state = st.encode(obs.transform, range);
            return Assessment::learn_only(x, x);
        }

        let base = st.level + st.seasonal(&season) + wk * st.weekend;
        let sigma_own = self.sigma(
            &st,
            n,
            prior_mad(prior, base).map(|m| MAD_TO_SIGMA * m),
            base,
            obs.resolution,
        );
        // The noise remembers: carry part of the last (clipped) residual, unless the series was unobserved.
        let carry = if obs.gap_epochs <= 1 {
            st.ar() * sigma_own * st.psi_prev
        } else {
            0.0
        };
        let p = base + carry;
        let mut sigma = sigma_own;
        if obs.gap_epochs > 1 {
            // Uncertainty grows while the series was unobserved (a day without data doubles σ).
            let g = (obs.gap_epochs - 1).min(288) as f32;
            sigma *= (1.0 + g / 96.0).sqrt();
        }
        let r = x - p;
        // A value at a declared bound is censored: the quantity behind a percentage of exactly 0 is at most
        // 0. A prediction beyond the bound agrees with it, so it is no surprise (a level learned on a weekend
        // and then a week at exactly 0 predicts below 0: scoring x − p would raise on agreement).
        let censored = obs.at_bound.agrees(x, p);
        let z = if censored { 0.0 } else { r / sigma };
        // The residual against the base prediction (without the carried memory): its autocorrelation is
        // what the carry models.
        let baseline = if censored { 0.0 } else { (x - base) / sigma };
        let psi_base = ((x - base) / sigma).clamp(-self.huber, self.huber);

        // Scores.
        (st.c_hi, st.c_lo) = cusum_step(st.c_hi, st.c_lo, z, self.cusum_cap, self.cusum_k);
        let fast = !range && self.fast_h > 0.0;
        // Most observations leave the fast pair at rest (|z| within its allowance, nothing accumulated):
        // skip its arithmetic then, a well-predicted branch instead of ~20 instructions per series.
        // (A NaN z takes the arithmetic path, exactly as without the shortcut.)
        let fast_active = fast && (st.f_hi + st.f_lo > 0.0 || z.abs() > self.fast_k || z.is_nan());
        if fast_active {
            (st.f_hi, st.f_lo) = cusum_step(st.f_hi, st.f_lo, z, self.fast_cap, self.fast_k);
        }
        st.vol += self.vol_gain * (z.abs().min(4.0) - st.vol);
        let sign = |v: f32| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        // The memory is learned from ordinary stretches only: a shift or a drift in progress is
        // persistent by nature and must not be mistaken for (and then explained away as) noise memory.
        if st.c_hi.max(st.c_lo) < 0.5 * self.cusum_h {
            st.rho += (sign(psi_base) * sign(st.psi_prev) - st.rho) / 64.0;
        }
        st.psi_prev = psi_base;
        let h = hash8(raw);
        let repeat = h == st.hash;
        if repeat {
            st.run = st.run.saturating_add(1);
        } else {
            if st.run >= 1 {
                // A run that ended is the series' normal behaviour up to the bar it had to cross: a run
                // beyond the bar teaches the bar, not its whole length. A quantised series (a PHY rate
                // snapped to the 802.11 rates, a value in whole units) whose runs outgrow what it showed
                // so far raises at most a few times while its bar doubles to its runs; a sensor stuck for
                // hours moves it once, to the bar it crossed.
                st.run_max =
                    (st.run_max * (1.0 - 1.0 / 256.0)).max((st.run as f32).min(st.run_bar()));
            }
            st.run = 0;
        }
        st.hash = h;
        if obs.at_bound != AtBound::Inside {
            // Saturation at a declared bound repeats by nature: not a run, neither evidence nor a lesson.
            st.run = 0;
        }

        let noisy = MAD_TO_SIGMA * st.mad > 2.0 * sigma_floor(base, obs.resolution);
        let mut kind = AnomalyKind::LevelShift;
        let mut sustained = st.c_hi.max(st.c_lo) / self.cusum_h;
        if fast_active {
            sustained = sustained.max(st.f_hi.max(st.f_lo) / self.fast_h);
        }
        let variance = (st.vol - 0.8).max(0.0) / (self.vol_alarm - 0.8);
        let stuck = if st.run >= 2 && noisy {
            st.run as f32 / st.run_bar()
        } else {
            0.0
        };
        let outside = if range && st.hi > st.lo {
            let beyond = (x - st.hi).max(st.lo - x);
            if beyond > 0.0 {
                beyond / (self.range_tolerance * (st.hi - st.lo))
            } else {
                0.0
            }
        } else {
            0.0
        };
        if range {
            st.lo = st.lo.min(x);
            st.hi = st.hi.max(x);
        }
        for (s, k) in [
            (variance, AnomalyKind::VarianceBurst),
            (stuck, AnomalyKind::StuckValue),
            (outside, AnomalyKind::OutOfRange),
        ] {
            if s > sustained {
                sustained = s;
                kind = k;
            }
        }

        // Learning (robust: one observation moves the level by at most a·σ·c).
        let a = self.alpha.max(1.0 / (n as f32 + 1.0));
        let b = self.beta.max(1.0 / (n as f32 + 1.0));
        // Level and rhythm learn from the base residual: the carried memory is short-term noise, and
        // letting it explain away a misfit of the rhythm would stop the rhythm from ever being learned.
        let correction = a * sigma * psi_base;
        st.level += correction;
        // The weekend offset learns from weekend residuals only: at g·a, or (weekend_memory m > 0) as the
        // running mean of this weekend's residuals with the offset it starts from counting as m of them.
        st.weekend += wk * self.weekend_rate(a, obs.weekend_step) * sigma * psi_base;
        if obs.transform == Transform::Level {
            let eta = self.eta * (1.0 + 4.0 * (1.0 - n as f32 / 255.0));
            for (k, f) in season.iter().enumerate() {
                st.season[k] += eta * sigma * psi_base * f;
            }
        }
        // A value at a declared bound is censored: the quantity behind a percentage of exactly 0 is at most
        // 0, so with the prediction inside the bounds its residual only bounds the real one from below. It
        // may teach the noise scale to grow, never to shrink (and nothing when the prediction lies beyond
        // the bound, where it bounds nothing): a series at 0 most of the time (an idle radio) would otherwise
        // learn the scale of its zeros and take every ordinary burst above them for a shift.
        let target = r.abs().min(4.0 * sigma);
        let learns = obs.at_bound == AtBound::Inside || (target > st.mad && !censored);
        if learns {
            let gain = if target > st.mad { b } else { b / 4.0 };
            st.mad += gain * (target - st.mad);
        }
        if st.c_hi.max(st.c_lo) >= 3.0 * self.cusum_h
            || (fast_active && st.f_hi.max(st.f_lo) >= 3.0 * self.fast_h)
        {
            // A confirmed shift: adopt the new level instead of crawling towards it.
            st.level = x - st.seasonal(&season) - wk * st.weekend;
            st.c_hi = 0.0;
            st.c_lo = 0.0;
            st.f_hi = 0.0;
            st.f_lo = 0.0;
            st.psi_prev = 0.0;
        }
        *state = st.encode(obs.transform, range);

        Assessment {
            observed: x,
            expected: p,
            sigma,
            surprise: z.abs(),
            baseline,
            sustained,
            kind,
            reset: false,
            scored: true,
            censored,
        }
    }
}

impl Detector for SeasonalRobust {
    fn name(&self) -> &'static str {
        "seasonal-robust"
    }

    fn observe(
        &self,
        state: &mut DetectorState,
        obs: &Observation,
        prior: &FeaturePrior,
    ) -> Assessment {
        // Monomorphised on the range rule: a spec without it (the fleet's) pays nothing for it.
        if self.range_tolerance > 0.0 {
            self.observe_with::<true>(state, obs, prior)
        } else {
            self.observe_with::<false>(state, obs, prior)
        }
    }

    fn predict(&self, state: &DetectorState, ts: i64, transform: Transform) -> (f32, f32) {
        let st = St::decode(state, transform, false);
        let p = match transform {
            Transform::Level => {
                st.level
                    + st.seasonal(&Observation::daily_phase(ts))
                    + self.weekend_weight(ts, transform) * st.weekend
            }
            Transform::Rate => st.level,
        };
        (p, (MAD_TO_SIGMA * st.mad).max(sigma_floor(p, 0.0)))
    }

    fn summary(
        &self,
        state: &DetectorState,
        seen: u8,
        transform: Transform,
    ) -> Option<SeriesSummary> {
        // Only mature series (a day of history: daily rhythm learned) speak for their cohort.
        if seen < u8::MAX {
            return None;
        }
        let st = St::decode(state, transform, false);
        Some(SeriesSummary {
            level: st.level,
            scale: st.mad,
            season: st.season,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(value: f32, ts: i64, seen: u8) -> Observation {
        Observation {
            value,
            ts,
            gap_epochs: 1,
            seen,
            resolution: 0.0,
            phase: [0.0; 4], // no seasonal contribution: hand computation stays simple
            weekend_step: Observation::weekend_step_of(ts, 300),
            transform: Transform::Level,
            at_bound: AtBound::Inside,
        }
    }

    #[test]
    fn first_observation_initialises_from_the_value_and_prior() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior {
            count: 10,
            level: 0.0,
            scale: 0.2,
            season: [0.0; 4],
        };
        let a = d.observe(&mut s, &obs(10.0, 0, 0), &prior);
        assert!(!a.scored);
        let st = St::decode(&s, Transform::Level, false);
        assert_eq!(st.level, 10.0);
        assert_eq!(st.mad, 2.0);
    }

    #[test]
    fn second_observation_hand_computed() {
        // Prior: relative scale 0.2 → S_prior = 0.2·|10| = 2, σ_prior = 0.8605·2 = 1.721.
        // State after init: L = 10, S = 2, n = 1, k = 6 → σ = √((1·1.721² + 6·1.721²)/7) = 1.721
        // x = 15: r = 5, z = 2.90529, ψ = 2.5 (clipped at c = 2.5)
        // a = max(0.04, 1/2) = 0.5 → L = 10 + 0.5·1.721·2.5 = 12.15125
        // S grows (target min(5, 4σ) = 5 > 2) with b = 0.5 → S = 2 + 0.5·3 = 3.5
        // C⁺ = 0 + min(2.905, 4) − k (1.0) = 1.90529 → sustained = C⁺/h (7) = 0.27218;
        // stored in eighths: 1.875; C⁻ = 0
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior {
            count: 10,
            level: 0.0,
            scale: 0.2,
            season: [0.0; 4],
        };
        d.observe(&mut s, &obs(10.0, 0, 0), &prior);
        let a = d.observe(&mut s, &obs(15.0, 300, 1), &prior);
        assert!(a.scored);
        assert!((a.expected - 10.0).abs() < 1e-6);
        assert!((a.sigma - 1.721).abs() < 1e-3, "{}", a.sigma);
        assert!((a.surprise - 2.90529).abs() < 1e-3, "{}", a.surprise);
        assert!((a.sustained - 0.27218).abs() < 1e-3, "{}", a.sustained);
        assert_eq!(a.kind, AnomalyKind::LevelShift);
        let st = St::decode(&s, Transform::Level, false);
        assert!((st.level - 12.15125).abs() < 1e-3, "{}", st.level);
        assert!((st.mad - 3.5).abs() < 1e-3, "{}", st.mad);
        assert_eq!(st.c_hi, 1.875);
        assert_eq!(st.c_lo, 0.0);
    }

    #[test]
    fn cusum_step_is_capped_at_cusum_cap() {
        // Same start as above (L = 10, σ = 1.721); x = 30: z = 11.621. Default cap 4: C⁺ = 4 − 1 = 3;
        // cap 6: C⁺ = 6 − 1 = 5 (both exact in eighths).
        let prior = FeaturePrior {
            count: 10,
            level: 0.0,
            scale: 0.2,
            season: [0.0; 4],
        };
        for (cap, want) in [(4.0f32, 3.0f32), (6.0, 5.0)] {
            let d = SeasonalRobust {
                cusum_cap: cap,
                ..SeasonalRobust::default()
            };
            let mut s = [0u8; super::super::DETECTOR_BYTES];
            d.observe(&mut s, &obs(10.0, 0, 0), &prior);
            let a = d.observe(&mut s, &obs(30.0, 300, 1), &prior);
            assert!((a.surprise - 11.621).abs() < 1e-2, "{}", a.surprise);
            assert_eq!(
                St::decode(&s, Transform::Level, false).c_hi,
                want,
                "cap {cap}"
            );
        }
    }

    #[test]
    fn the_fast_shift_statistic_steps_at_its_own_allowance_and_cap() {
        // A quiet mature series: L = 10, S = 1 (σ = 0.8605), no rhythm, no memory. Slow pair k_c = 1, cap 4,
        // h = 7 (defaults); fast pair k_f = 2.5, cap 6, h_f = 5.
        let d = SeasonalRobust {
            fast_h: 5.0,
            ..SeasonalRobust::default()
        };
        let st = quiet(10.0, 1.0);
        let prior = FeaturePrior::NONE;
        // x = 10 + 5σ: z = 5. C⁺ = min(5, 4) − 1 = 3 (3/7 = 0.4286); F⁺ = min(5, 6) − 2.5 = 2.5 (2.5/5 = 0.5)
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &obs(10.0 + 5.0 * 0.8605, 0, 255), &prior);
        assert!((a.surprise - 5.0).abs() < 1e-4, "{}", a.surprise);
        assert!((a.sustained - 0.5).abs() < 1e-6, "{}", a.sustained);
        assert_eq!(a.kind, AnomalyKind::LevelShift);
        let after = St::decode(&s, Transform::Level, false);
        assert_eq!((after.c_hi, after.f_hi, after.f_lo), (3.0, 2.5, 0.0));
        // x = 10 + 20σ: z = 20, each pair at its cap: C⁺ = 4 − 1 = 3, F⁺ = 6 − 2.5 = 3.5 (0.7)
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &obs(10.0 + 20.0 * 0.8605, 0, 255), &prior);
        assert!((a.sustained - 0.7).abs() < 1e-6, "{}", a.sustained);
        // An ordinary value (z = −2) steps neither fast side: F⁻ = max(0, 2 − 2.5) = 0, while C⁻ = 2 − 1 = 1
        let mut s = st.encode(Transform::Level, false);
        d.observe(&mut s, &obs(10.0 - 2.0 * 0.8605, 0, 255), &prior);
        let after = St::decode(&s, Transform::Level, false);
        assert_eq!((after.c_lo, after.f_lo, after.f_hi), (1.0, 0.0, 0.0));
        // Off (h_f = 0, the default): the bytes stay 0 and the slow statistics alone speak: C⁺/h = 3/7 and
        // the volatility's (m − 0.8)/1.4 with m = 0.8125 + 0.2·(4 − 0.8125) = 1.45 (0.8 stored as 26/32)
        let off = SeasonalRobust::default();
        let mut s = st.encode(Transform::Level, false);
        let a = off.observe(&mut s, &obs(10.0 + 5.0 * 0.8605, 0, 255), &prior);
        assert!((a.sustained - 0.65 / 1.4).abs() < 1e-6, "{}", a.sustained);
        assert_eq!(a.kind, AnomalyKind::VarianceBurst);
        assert_eq!(&s[32..36], &[0, 0, 0, 0]);
    }

    #[test]
    fn a_big_shift_reaches_the_fast_bar_in_two_observations_where_the_slow_pair_needs_three() {
        // home-wifi's pairs until 2026-12-06: slow k_c = 1, cap 4, h = 9; fast k_f = 2.5, cap 6, h_f = 5.375. A 6σ
        // shift on a quiet series (L = 10, S = 1, σ = 0.8605): the first value (z = 6) steps C⁺ by 3 and F⁺
        // by 3.5; then the level has learned a·σ·c = 0.04·0.8605·2.5 = 0.086 of it and S has grown to
        // 1 + 0.02·(4σ − 1) = 1.0488 (σ = 0.9025), so the second value is z = (15.163 − 10.086)/0.9025 = 5.63:
        // C⁺ gains 3 more, F⁺ 3.13 — F⁺ = 6.63 (6.625 in eighths) ≥ 5.375 raises, C⁺ = 6 < 9 does not.
        let d = SeasonalRobust {
            cusum_h: 9.0,
            fast_h: 5.375,
            ..SeasonalRobust::default()
        };
        let slow_only = SeasonalRobust {
            fast_h: 0.0,
            ..d.clone()
        };
        let prior = FeaturePrior::NONE;
        let x = 10.0 + 6.0 * 0.8605;
        let mut s = quiet(10.0, 1.0).encode(Transform::Level, false);
        let mut t = s;
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for i in 0..2 {
            fast.push(d.observe(&mut s, &obs(x, 300 * i, 255), &prior).sustained);
            slow.push(
                slow_only
                    .observe(&mut t, &obs(x, 300 * i, 255), &prior)
                    .sustained,
            );
        }
        assert!(fast[0] < 1.0 && fast[1] >= 1.0, "{fast:?}");
        assert!(slow[1] < 1.0, "{slow:?}");
        let after = St::decode(&s, Transform::Level, false);
        assert_eq!((after.c_hi, after.f_hi), (6.0, 6.625));
    }

    #[test]
    fn the_fast_shift_statistic_and_the_range_rule_are_one_or_the_other() {
        let params = |t: &str| DetectorParams::new(t.parse::<toml::Table>().unwrap());
        assert!(SeasonalRobust::from_params(&params("fast_cusum_h = 5.375")).is_ok());
        assert!(SeasonalRobust::from_params(&params("range_tolerance = 0.05")).is_ok());
        let both =
            SeasonalRobust::from_params(&params("fast_cusum_h = 5.375\nrange_tolerance = 0.05"));
        assert!(both.is_err_and(|e| e.contains("exclude each other")));
        assert!(SeasonalRobust::from_params(&params("fast_cusum_h = 0.5")).is_err());
        let never_steps = SeasonalRobust::from_params(&params(
            "fast_cusum_h = 5\nfast_cusum_k = 6\nfast_cusum_cap = 6",
        ));
        assert!(never_steps.is_err_and(|e| e.contains("must exceed")));
    }

    #[test]
    fn outlier_moves_level_by_at_most_huber_bound() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut rng = crate::rng::Rng::new(1, 1);
        for i in 0..2000u32 {
            let x = 100.0 + rng.normal() as f32;
            d.observe(&mut s, &obs(x, i as i64 * 300, i.min(255) as u8), &prior);
        }
        let before = St::decode(&s, Transform::Level, false);
        let a = d.observe(&mut s, &obs(1000.0, 2000 * 300, 255), &prior);
        let after = St::decode(&s, Transform::Level, false);
        assert!(
            a.surprise > 50.0,
            "huge spike is surprising: {}",
            a.surprise
        );
        // L moves by at most α·σ·c = 0.04·σ·2.5
        let bound = 0.04 * a.sigma * 2.5 + 1e-4;
        assert!((after.level - before.level).abs() <= bound);
        // learned noise scale is near the 0.8-expectile of |N(0,1)|, 1.162
        assert!((before.mad - 1.162).abs() < 0.2, "S {}", before.mad);
    }

    #[test]
    fn level_shift_raises_cusum_then_adapts() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut rng = crate::rng::Rng::new(2, 1);
        let mut t = 0;
        for i in 0..300u32 {
            t = i as i64 * 300;
            d.observe(
                &mut s,
                &obs(50.0 + rng.normal() as f32, t, i.min(255) as u8),
                &prior,
            );
        }
        // 3σ shift: the point-wise surprise alone stays small, the CUSUM reaches its alarm point (sustained
        // ≥ 1) within a few steps.
        let mut first_alarm = None;
        let mut last = (0.0, 0.0);
        for j in 1..60 {
            let a = d.observe(
                &mut s,
                &obs(53.0 + rng.normal() as f32, t + j * 300, 255),
                &prior,
            );
            if first_alarm.is_none() && a.sustained >= 1.0 && a.kind == AnomalyKind::LevelShift {
                first_alarm = Some(j);
            }
            last = (a.surprise, a.sustained);
        }
        let j = first_alarm.expect("shift detected");
        assert!(j <= 6, "detected after {j} steps");
        assert!(
            last.0 < 4.0 && last.1 < 0.6,
            "model adapted to the new level (last {last:?})"
        );
    }

    #[test]
    fn stuck_value_detected_on_a_continuous_series() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut rng = crate::rng::Rng::new(3, 1);
        for i in 0..300u32 {
            d.observe(
                &mut s,
                &obs(20.0 + rng.normal() as f32, i as i64 * 300, i.min(255) as u8),
                &prior,
            );
        }
        let mut got = None;
        for j in 0..12 {
            let a = d.observe(&mut s, &obs(20.3, (300 + j) * 300, 255), &prior);
            if a.kind == AnomalyKind::StuckValue && a.sustained >= 1.0 {
                got = Some(j);
                break;
            }
        }
        // 4 repeats on a series that never repeats; the 8-bit hash's rare false repeats (1 in 256) may have
        // taught it runs of 1, which moves the bar to 6
        assert!(got.expect("stuck detected") <= 6);
    }

    #[test]
    fn a_quantised_series_learns_its_long_runs_after_a_few_raises() {
        // A value that sits on one of two levels (a PHY rate snapped to 585 or 650 Mbps) for runs of 3, then
        // for runs of 30. Each run that ends teaches R its length up to the bar it had to cross (2R + 4):
        // R = 3 (stored ×2, exact) → the first 30-run crosses 10 and teaches 10, the second crosses 24 and
        // teaches 24, the third stays under 52. Before, a run beyond the bar taught nothing: every one raised.
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut i = 0u32;
        let mut feed = |run: u32, level: f32, s: &mut [u8; super::super::DETECTOR_BYTES]| {
            let mut raised = false;
            for _ in 0..run {
                let a = d.observe(s, &obs(level, i as i64 * 300, i.min(255) as u8), &prior);
                raised |= a.kind == AnomalyKind::StuckValue && a.sustained >= 1.0;
                i += 1;
            }
            raised
        };
        for r in 0..100 {
            feed(4, if r % 2 == 0 { 585.0 } else { 650.0 }, &mut s);
        }
        let raises: Vec<bool> = (0..6)
            .map(|r| feed(31, if r % 2 == 0 { 585.0 } else { 650.0 }, &mut s))
            .collect();
        assert_eq!(raises, [true, true, false, false, false, false]);
    }

    #[test]
    fn repeats_at_a_declared_bound_are_saturation_not_stuck() {
        let d = SeasonalRobust::default();
        let prior = FeaturePrior::NONE;
        // a loss-like series: noisy, clipped at 0 now and then; then 12 epochs at exactly 0
        let run = |bounded: bool| {
            let mut s = [0u8; super::super::DETECTOR_BYTES];
            let mut rng = crate::rng::Rng::new(3, 1);
            for i in 0..300u32 {
                let x = (2.0 + rng.normal() as f32).max(0.0);
                let mut o = obs(x, i as i64 * 300, i.min(255) as u8);
                if bounded && x <= 0.0 {
                    o.at_bound = AtBound::Lower;
                }
                d.observe(&mut s, &o, &prior);
            }
            let mut best = 0.0f32;
            for j in 0..12 {
                let mut o = obs(0.0, (300 + j) * 300, 255);
                if bounded {
                    o.at_bound = AtBound::Lower;
                }
                let a = d.observe(&mut s, &o, &prior);
                if a.kind == AnomalyKind::StuckValue {
                    best = best.max(a.sustained);
                }
            }
            (best, St::decode(&s, Transform::Level, false))
        };
        let (unbounded, _) = run(false);
        assert!(
            unbounded >= 1.0,
            "without bounds a run of zeros is a stuck value: {unbounded}"
        );
        let (bounded, st) = run(true);
        assert_eq!(bounded, 0.0, "at a bound it is no evidence at all");
        assert_eq!(st.run, 0);
    }

    #[test]
    fn rate_series_and_resets() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut o = obs(1000.0, 0, 0);
        o.transform = Transform::Rate;
        assert!(!d.observe(&mut s, &o, &prior).scored);
        o.value = 1300.0;
        o.seen = 1;
        let a = d.observe(&mut s, &o, &prior);
        assert_eq!(a.observed, 300.0);
        assert!(!a.scored);
        o.value = 1600.0;
        o.seen = 2;
        let a = d.observe(&mut s, &o, &prior);
        assert!(a.scored);
        assert!(a.surprise < 1.0);
        o.value = 50.0;
        o.seen = 3;
        let a = d.observe(&mut s, &o, &prior);
        assert!(a.reset);
        assert!(!a.scored);
    }

    /// A quiet mature state at level `level` with noise scale `mad`: no rhythm, no evidence, no memory,
    /// no weekend offset, the volatility at its Gaussian mean (0.8).
    fn quiet(level: f32, mad: f32) -> St {
        St {
            level,
            mad,
            season: [0.0; 4],
            prev: 0.0,
            c_hi: 0.0,
            c_lo: 0.0,
            f_hi: 0.0,
            f_lo: 0.0,
            vol: 0.8,
            run: 0,
            run_max: 0.0,
            hash: 0,
            psi_prev: 0.0,
            rho: 0.0,
            weekend: 0.0,
            lo: 0.0,
            hi: 0.0,
        }
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let st = St {
            level: -61.25,
            mad: 1.5,
            season: [1.0, -2.0, 0.5, 0.25],
            prev: 0.0,
            c_hi: 3.0,
            c_lo: 0.0,
            f_hi: 2.5,
            f_lo: 31.0,
            vol: 1.25,
            run: 4,
            run_max: 2.5,
            hash: 200,
            psi_prev: -1.5,
            rho: 63.0 / 127.0,
            weekend: -3.75,
            lo: -7.5,
            hi: 1_002_438_656.0, // a bound16 code: 2^29·(1 + 444/512)
        };
        // With the range rule its bounds take bytes 32..36 (the fast pair is off, its values not kept);
        // without it the fast pair takes bytes 32 and 33.
        let range = St {
            f_hi: 0.0,
            f_lo: 0.0,
            ..st
        };
        assert_eq!(
            St::decode(&st.encode(Transform::Level, true), Transform::Level, true),
            range
        );
        let off = St {
            lo: 0.0,
            hi: 0.0,
            ..st
        };
        assert_eq!(
            St::decode(&st.encode(Transform::Level, false), Transform::Level, false),
            off
        );
    }

    #[test]
    fn weekend_offset_hand_computed() {
        // 2026-11-07 00:00 UTC is a Saturday (day 20,764: (20,764 + 3) mod 7 = 5); the day before is a Friday.
        let sat = 20_764 * 86_400;
        let fri = sat - 86_400;
        let d = SeasonalRobust {
            weekend_gain: 0.25,
            ..SeasonalRobust::default()
        };
        assert_eq!(d.weekend_weight(sat, Transform::Level), 1.0);
        assert_eq!(
            d.weekend_weight(sat + 86_400 + 3_600, Transform::Level),
            1.0,
            "Sunday"
        );
        assert_eq!(
            d.weekend_weight(sat + 2 * 86_400, Transform::Level),
            0.0,
            "Monday"
        );
        assert_eq!(d.weekend_weight(fri, Transform::Level), 0.0);
        assert_eq!(
            d.weekend_weight(sat, Transform::Rate),
            0.0,
            "counters have no weekly offset"
        );
        assert_eq!(
            SeasonalRobust::default().weekend_weight(sat, Transform::Level),
            0.0,
            "gain 0: off"
        );
        // A mature state (n = 255: a = α = 0.04) with L = 10, S = 1 (σ = 0.8605), W = 2, no rhythm, no memory.
        let st = St {
            weekend: 2.0,
            ..quiet(10.0, 1.0)
        };
        let prior = FeaturePrior::NONE;
        let mut o = obs(13.0, sat, 255);
        // Saturday: expected L + W = 12; x = 13: z = 1/0.8605 = 1.16212, ψ_b = z (below c = 2.5);
        // correction = a·σ·ψ_b = 0.04·1 = 0.04 → L = 10.04, W = 2 + 0.25·0.04 = 2.01
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &o, &prior);
        assert!((a.expected - 12.0).abs() < 1e-5, "{}", a.expected);
        assert!((a.surprise - 1.16212).abs() < 1e-4, "{}", a.surprise);
        let after = St::decode(&s, Transform::Level, false);
        assert!((after.level - 10.04).abs() < 1e-5, "{}", after.level);
        // (W is stored to 2⁻¹⁰ relative: 2.01 lies within half a code, 2⁻⁹, of the stored value)
        assert!(
            (after.weekend - 2.01).abs() <= 2f32.powi(-9),
            "{}",
            after.weekend
        );
        // Friday, same state: expected L = 10, W untouched (x = 11: correction 0.04 → L = 10.04)
        o.ts = fri;
        o.value = 11.0;
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &o, &prior);
        assert!((a.expected - 10.0).abs() < 1e-5, "{}", a.expected);
        let after = St::decode(&s, Transform::Level, false);
        assert!((after.level - 10.04).abs() < 1e-5);
        assert_eq!(after.weekend, 2.0);
        // predict() adds W on weekends only
        let (p_sat, _) = d.predict(&st.encode(Transform::Level, false), sat, Transform::Level);
        let (p_fri, _) = d.predict(&st.encode(Transform::Level, false), fri, Transform::Level);
        assert_eq!((p_sat, p_fri), (12.0, 10.0));
    }

    #[test]
    fn weekend_memory_learns_each_weekend_as_a_running_mean() {
        let sat = 20_764 * 86_400; // 2026-11-07 00:00 UTC, a Saturday
        assert_eq!(Observation::weekend_step_of(sat, 300), 0);
        assert_eq!(Observation::weekend_step_of(sat + 299, 300), 0);
        assert_eq!(Observation::weekend_step_of(sat + 300, 300), 1);
        assert_eq!(Observation::weekend_step_of(sat + 86_400 + 3_600, 300), 300);
        assert_eq!(Observation::weekend_step_of(sat - 300, 300), 0, "Friday");
        let d = SeasonalRobust {
            weekend_gain: 0.25,
            weekend_memory: 1.0,
            ..SeasonalRobust::default()
        };
        // W's gain: max(g·a, 1/(k + 1 + m)) — 1/2, 1/3, … until it meets g·a = 0.01 (k = 98)
        assert_eq!(d.weekend_rate(0.04, 0), 0.5);
        assert!((d.weekend_rate(0.04, 1) - 1.0 / 3.0).abs() < 1e-7);
        assert!((d.weekend_rate(0.04, 500) - 0.01).abs() < 1e-9);
        let slow = SeasonalRobust {
            weekend_gain: 0.25,
            ..SeasonalRobust::default()
        };
        assert!(
            (slow.weekend_rate(0.04, 0) - 0.01).abs() < 1e-9,
            "memory 0: g·a"
        );
        // A mature state (a = 0.04) with L = 10, S = 1 (σ = 0.8605), W = 0, no rhythm, no memory; the
        // weekend's first value is 12: z = 2/0.8605 = 2.32423, ψ_b = z (below c = 2.5)
        let st = quiet(10.0, 1.0);
        let prior = FeaturePrior::NONE;
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &obs(12.0, sat, 255), &prior);
        assert!((a.surprise - 2.32423).abs() < 1e-4, "{}", a.surprise);
        let after = St::decode(&s, Transform::Level, false);
        // L += a·σ·ψ = 0.04·2 = 0.08; W += ½·σ·ψ = 1 (the slow rule would give 0.02)
        assert!((after.level - 10.08).abs() < 1e-5, "{}", after.level);
        assert!(
            (after.weekend - 1.0).abs() <= 2f32.powi(-10),
            "{}",
            after.weekend
        );
        // The second epoch, x = 12 again: base 11.08, r = 0.92; S grew by b·(2 − 1) = 0.02 → σ = 0.87771,
        // ψ = 1.04818; W += ⅓·σ·ψ = 0.30667 → 1.30667; L += 0.04·0.92 = 0.0368 → 10.1168
        let a = d.observe(&mut s, &obs(12.0, sat + 300, 255), &prior);
        assert!((a.expected - 11.08).abs() < 1e-3, "{}", a.expected);
        let after = St::decode(&s, Transform::Level, false);
        assert!((after.level - 10.1168).abs() < 1e-4, "{}", after.level);
        assert!((after.weekend - 1.30667).abs() < 2e-3, "{}", after.weekend);
        // the slow rule after the same two values: W = 0.02, then base 10.10, r = 1.9: W += 0.01·1.9 = 0.039
        let mut s = st.encode(Transform::Level, false);
        slow.observe(&mut s, &obs(12.0, sat, 255), &prior);
        slow.observe(&mut s, &obs(12.0, sat + 300, 255), &prior);
        let w = St::decode(&s, Transform::Level, false).weekend;
        assert!((w - 0.039).abs() < 1e-4, "{w}");
    }

    #[test]
    fn a_value_at_a_bound_its_prediction_lies_beyond_is_no_surprise() {
        assert_eq!(AtBound::of(0.0, Some((0.0, 100.0))), AtBound::Lower);
        assert_eq!(AtBound::of(100.0, Some((0.0, 100.0))), AtBound::Upper);
        assert_eq!(AtBound::of(3.0, Some((0.0, 100.0))), AtBound::Inside);
        assert_eq!(AtBound::of(0.0, None), AtBound::Inside);
        assert!(AtBound::Lower.agrees(0.0, -1.0) && !AtBound::Lower.agrees(0.0, 1.0));
        assert!(AtBound::Upper.agrees(100.0, 101.0) && !AtBound::Upper.agrees(100.0, 99.0));
        assert!(!AtBound::Inside.agrees(0.0, -1.0));
        let d = SeasonalRobust::default();
        // L = −2 (a level learned, say, on a busy weekend that has since gone to 0), S = 0.1
        let st = quiet(-2.0, 0.1);
        let prior = FeaturePrior::NONE;
        let mut o = obs(0.0, 0, 255);
        // unbounded: x = 0 is 2/0.08605 = 23.2σ above the prediction
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &o, &prior);
        assert!(a.surprise > 23.0 && !a.censored, "{}", a.surprise);
        // at the lower bound: the quantity is ≤ 0, the prediction −2 agrees; no surprise, no CUSUM step,
        // and the level still learns towards the bound (L += a·σ·c = 0.04·0.08605·2.5)
        o.at_bound = AtBound::Lower;
        let mut s = st.encode(Transform::Level, false);
        let a = d.observe(&mut s, &o, &prior);
        assert!(
            a.censored && a.surprise == 0.0 && a.sustained == 0.0,
            "{a:?}"
        );
        let after = St::decode(&s, Transform::Level, false);
        assert_eq!((after.c_hi, after.c_lo), (0.0, 0.0));
        assert!(
            (after.level - (-2.0 + 0.04 * 0.08605 * 2.5)).abs() < 1e-5,
            "{}",
            after.level
        );
        // a prediction inside the bounds disagrees with a value at the bound: scored as usual
        let st_in = St { level: 2.0, ..st };
        let mut s = st_in.encode(Transform::Level, false);
        let a = d.observe(&mut s, &o, &prior);
        assert!(!a.censored && a.surprise > 23.0, "{}", a.surprise);
    }

    #[test]
    fn values_at_a_bound_teach_the_noise_scale_to_grow_never_to_shrink() {
        // An idle radio: channel utilisation at 0 % (its declared lower bound) most of the time, predicted
        // at 0.1 with S = 2. Inside the bounds the residual −0.1 shrinks S by b/4 = 0.005 each time
        // (S ← 2 + 0.005·(0.1 − 2) = 1.9905 once); at the bound it only says the real residual is at least
        // 0.1, which is no reason to shrink: S stays where it is, however long the zeros last.
        let d = SeasonalRobust::default();
        let scale = |s: &DetectorState| St::decode(s, Transform::Level, false).mad;
        let st = quiet(0.1, 2.0);
        let s0 = scale(&st.encode(Transform::Level, false));
        let prior = FeaturePrior::NONE;
        let mut o = obs(0.0, 0, 255);
        let mut s = st.encode(Transform::Level, false);
        d.observe(&mut s, &o, &prior);
        assert!((scale(&s) - 1.9905).abs() < 2e-3, "{}", scale(&s));
        o.at_bound = AtBound::Lower;
        let mut s = st.encode(Transform::Level, false);
        for i in 0..500 {
            o.ts = 300 * i;
            d.observe(&mut s, &o, &prior);
        }
        assert_eq!(scale(&s), s0);
        // A residual at the bound beyond S is a lower bound beyond S: S grows as usual. L = 9, S = 2
        // (σ = 1.721): x = 0 is 9 below, target min(9, 4σ = 6.884) = 6.884, b = 0.02 → S = 2.0977.
        let mut s = quiet(9.0, 2.0).encode(Transform::Level, false);
        d.observe(&mut s, &o, &prior);
        assert!((scale(&s) - 2.0977).abs() < 2e-3, "{}", scale(&s));
        // A prediction beyond the bound (L = −5) agrees with the value: censored, nothing to learn.
        let mut s = quiet(-5.0, 2.0).encode(Transform::Level, false);
        let a = d.observe(&mut s, &o, &prior);
        assert!(a.censored);
        assert_eq!(scale(&s), s0);
    }

    #[test]
    fn range_term_hand_computed() {
        // τ = 0.05; a mature series (n = 200: no prior blending, gains α, β) at L = 10, S = 1 → σ = 0.8605,
        // its history spanning [0, 10].
        let d = SeasonalRobust {
            range_tolerance: 0.05,
            ..SeasonalRobust::default()
        };
        let st = St {
            vol: 0.0,
            hi: 10.0,
            ..quiet(10.0, 1.0)
        };
        let mut s = st.encode(Transform::Level, true);
        // x = 10.75: 0.75 beyond hi, τ·span = 0.05·10 = 0.5 → range 1.5. The other terms stay quiet:
        // z = 0.75/0.8605 = 0.872 → C⁺ = max(0, 0.872 − 1) = 0, m = 0.2·0.872 = 0.174 < 0.8, no run.
        let a = d.observe(&mut s, &obs(10.75, 0, 200), &FeaturePrior::NONE);
        assert_eq!(a.kind, AnomalyKind::OutOfRange);
        assert!((a.sustained - 1.5).abs() < 1e-5, "{}", a.sustained);
        let after = St::decode(&s, Transform::Level, true);
        assert_eq!(
            (after.lo, after.hi),
            (0.0, 10.75),
            "the range widens after scoring"
        );
        // x = −0.5: 0.5 below lo, τ·span = 0.05·10.75 = 0.5375 → range 0.5/0.5375 = 0.9302; the CUSUM
        // (C⁻ = 4 − 1 = 3 → 3/7 = 0.43) and the volatility ((0.2·4 + 0.8·0.174 − 0.8)/1.4 = 0.1) stay below it.
        let a = d.observe(&mut s, &obs(-0.5, 300, 200), &FeaturePrior::NONE);
        assert_eq!(a.kind, AnomalyKind::OutOfRange);
        assert!((a.sustained - 0.5 / 0.5375).abs() < 1e-5, "{}", a.sustained);
        assert_eq!(St::decode(&s, Transform::Level, true).lo, -0.5);
        // inside the range: no range evidence, and the range does not move
        let a = d.observe(&mut s, &obs(5.0, 600, 200), &FeaturePrior::NONE);
        assert_ne!(a.kind, AnomalyKind::OutOfRange);
        let after = St::decode(&s, Transform::Level, true);
        assert_eq!((after.lo, after.hi), (-0.5, 10.75));
    }

    #[test]
    fn range_starts_at_the_first_value_and_is_not_tracked_when_off() {
        let on = SeasonalRobust {
            range_tolerance: 0.05,
            ..SeasonalRobust::default()
        };
        let off = SeasonalRobust::default();
        let (mut s_on, mut s_off) = (
            [0u8; super::super::DETECTOR_BYTES],
            [0u8; super::super::DETECTOR_BYTES],
        );
        for (i, x) in [3.0f32, 7.0, 5.0, 1.0e9, -2.0].into_iter().enumerate() {
            let o = obs(x, 300 * i as i64, i as u8);
            on.observe(&mut s_on, &o, &FeaturePrior::NONE);
            off.observe(&mut s_off, &o, &FeaturePrior::NONE);
            // the rest of the state is the same model either way
            assert_eq!(s_on[..32], s_off[..32], "observation {i}");
        }
        assert_eq!(s_off[32..], [0u8; 4], "off: the range bytes stay zero");
        let st = St::decode(&s_on, Transform::Level, true);
        assert_eq!(st.lo, -2.0);
        // 10^9 rounded up to the codec's next step (2^-9 relative)
        assert!(
            st.hi >= 1.0e9 && st.hi <= 1.0e9 * (1.0 + 1.0 / 512.0),
            "{}",
            st.hi
        );
    }
}
