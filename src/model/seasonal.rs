//! `seasonal-robust`: the default per-series model. A robust level with a learned daily rhythm, a robust
//! noise scale, two-sided CUSUM for shifts and drifts, a short-term volatility tracker and a stuck-value
//! detector — 24 bytes of state, O(1) per observation.
//!
//! # State (24 bytes, little-endian)
//!
//! ```text
//! 0..4    L     f32      level (de-seasonalised)
//! 4..8    S     f32      mean absolute one-step residual (σ̂ = 1.2533·S)
//! 8..16   θ     [f16;4]  daily harmonics a1 b1 a2 b2          (rate series: 8..12 = previous raw value, f32)
//! 16      C⁺    u8       upper CUSUM, σ units ×8
//! 17      C⁻    u8       lower CUSUM, σ units ×8
//! 18      m     u8       short-term mean of min(|z|, 4), ×32
//! 19      run   u8       current run of exactly repeated raw values
//! 20..22  R     f16      the longest benign run the series normally shows (decays slowly)
//! 22..24  h     u16      16-bit hash of the last raw value
//! ```
//!
//! # Equations (per observation x at daily phase φ, n = observations so far)
//!
//! ```text
//! f      = [cos φ, sin φ, cos 2φ, sin 2φ]
//! p      = L + θ·f                                  prediction
//! σ_own  = 1.2533·S                                 (E|r| = σ·√(2/π) for Gaussian noise)
//! σ      = √((n·σ_own² + k·σ_prior²)/(n + k))  while n < warm, else σ_own; floored; inflated after gaps
//! r      = x − p,  z = r/σ,  ψ = clamp(z, −c, c)    Huber influence, c = huber
//! C⁺     = max(0, C⁺ + min(z, 4) − k_c),  C⁻ = max(0, C⁻ − max(z, −4) − k_c)   (spikes are the spike term's job)
//! m      = m + γ·(min(|z|, 4) − m)                    (E|z| = 0.8 for Gaussian noise)
//! run    = run + 1 if x repeats the last raw value exactly, else 0
//! R      = max(run_ended, R·(1 − 1/256)) when a benign run of length ≥ 1 ends
//! surprise components (σ-equivalents; 5 is the default threshold floor):
//!   spike = |z|,  shift = 5·max(C⁺, C⁻)/h,  variance = 5·max(0, m − 0.8)/(m_alarm − 0.8),
//!   stuck = 5·run/(2R + 4)
//! learning (gain a = max(α, 1/(n+1)), b = max(β, 1/(n+1))):
//!   L += a·σ·ψ,   θ += η·σ·ψ·f,   S += b·(min(|r|, 4σ) − S)
//!   if max(C⁺, C⁻) ≥ 3h: L = x − θ·f, C± = 0        (a confirmed shift: jump to the new level)
//! ```
//!
//! Rate series (monotone counters) model `x_rate = (x − x_prev)/max(gap, 1)` without seasonality; a decrease is
//! a counter reset, reported and not scored.

use super::{
    AnomalyKind, Assessment, DetectorState, FeaturePrior, Observation, SeriesSummary, Transform,
};
use crate::model::{Detector, DetectorParams};

const MAD_TO_SIGMA: f32 = 1.2533;

/// The default detector.
#[derive(Debug, Clone)]
pub struct SeasonalRobust {
    pub alpha: f32,
    pub eta: f32,
    pub beta: f32,
    pub huber: f32,
    pub cusum_k: f32,
    pub cusum_h: f32,
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
            cusum_k: 0.5,
            cusum_h: 8.0,
            vol_gain: 0.25,
            vol_alarm: 1.9,
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
    vol: f32,
    run: u8,
    hash: u16,
    run_max: f32,
}

fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn rd_f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}
fn wr_f32(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

impl St {
    fn decode(b: &DetectorState, transform: Transform) -> St {
        let (season, prev) = match transform {
            Transform::Level => (
                [rd_f16(b, 8), rd_f16(b, 10), rd_f16(b, 12), rd_f16(b, 14)],
                0.0,
            ),
            Transform::Rate => ([0.0; 4], rd_f32(b, 8)),
        };
        St {
            level: rd_f32(b, 0),
            mad: rd_f32(b, 4),
            season,
            prev,
            c_hi: b[16] as f32 / 8.0,
            c_lo: b[17] as f32 / 8.0,
            vol: b[18] as f32 / 32.0,
            run: b[19],
            run_max: rd_f16(b, 20),
            hash: u16::from_le_bytes([b[22], b[23]]),
        }
    }

    fn encode(&self, transform: Transform) -> DetectorState {
        let mut b = [0u8; super::DETECTOR_BYTES];
        wr_f32(&mut b, 0, self.level);
        wr_f32(&mut b, 4, self.mad);
        match transform {
            Transform::Level => {
                for k in 0..4 {
                    wr_f16(&mut b, 8 + 2 * k, self.season[k]);
                }
            }
            Transform::Rate => wr_f32(&mut b, 8, self.prev),
        }
        b[16] = (self.c_hi * 8.0).round().clamp(0.0, 255.0) as u8;
        b[17] = (self.c_lo * 8.0).round().clamp(0.0, 255.0) as u8;
        b[18] = (self.vol * 32.0).round().clamp(0.0, 255.0) as u8;
        b[19] = self.run;
        wr_f16(&mut b, 20, self.run_max);
        b[22..24].copy_from_slice(&self.hash.to_le_bytes());
        b
    }

    fn seasonal(&self, phase: &[f32; 4]) -> f32 {
        self.season[0] * phase[0]
            + self.season[1] * phase[1]
            + self.season[2] * phase[2]
            + self.season[3] * phase[3]
    }
}

/// 16-bit hash of a value's bits (for exact-repeat detection; 1 in 65536 false repeats).
fn hash16(x: f32) -> u16 {
    let h = (x.to_bits() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 48) as u16
}

/// Smallest σ allowed: a relative floor so constant series do not divide by zero.
fn sigma_floor(p: f32) -> f32 {
    (1e-3 * p.abs()).max(1e-3)
}

impl SeasonalRobust {
    pub fn from_params(p: &DetectorParams) -> Result<Self, String> {
        let d = SeasonalRobust::default();
        Ok(SeasonalRobust {
            alpha: p.f32("alpha", d.alpha, 1e-4, 1.0)?,
            eta: p.f32("eta", d.eta, 0.0, 1.0)?,
            beta: p.f32("beta", d.beta, 1e-4, 1.0)?,
            huber: p.f32("huber", d.huber, 0.5, 20.0)?,
            cusum_k: p.f32("cusum_k", d.cusum_k, 0.0, 5.0)?,
            cusum_h: p.f32("cusum_h", d.cusum_h, 1.0, 100.0)?,
            vol_gain: p.f32("vol_gain", d.vol_gain, 0.001, 1.0)?,
            vol_alarm: p.f32("vol_alarm", d.vol_alarm, 1.0, 4.0)?,
            prior_weight: p.f32("prior_weight", d.prior_weight, 0.0, 1000.0)?,
            warm: p.f32("warm", d.warm as f32, 1.0, 255.0)? as u8,
        })
    }

    /// σ for a state with `n` observations, blending in the cohort prior while cold.
    fn sigma(&self, st: &St, n: u8, prior: &FeaturePrior, p: f32) -> f32 {
        let own = MAD_TO_SIGMA * st.mad;
        let s = if n < self.warm && prior.count > 0 {
            let pr = MAD_TO_SIGMA * prior.scale;
            let n = n as f32;
            ((n * own * own + self.prior_weight * pr * pr) / (n + self.prior_weight)).sqrt()
        } else {
            own
        };
        s.max(sigma_floor(p))
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
        let mut st = St::decode(state, obs.transform);
        let n = obs.seen;
        let raw = obs.value;

        // The quantity modelled: the value, or the counter's increase per epoch.
        let x = match obs.transform {
            Transform::Level => raw,
            Transform::Rate => {
                if n == 0 {
                    st.prev = raw;
                    st.hash = hash16(raw);
                    *state = st.encode(obs.transform);
                    return Assessment::learn_only(0.0, 0.0);
                }
                let prev = st.prev;
                st.prev = raw;
                if raw < prev {
                    // Counter reset: remember the new base, score nothing.
                    *state = st.encode(obs.transform);
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

        // First modelled value: initialise from the value and the cohort prior.
        let first = match obs.transform {
            Transform::Level => n == 0,
            Transform::Rate => n == 1,
        };
        if first {
            if prior.count > 0 {
                if obs.transform == Transform::Level {
                    st.season = prior.season;
                }
                st.mad = prior.scale;
            } else {
                st.mad = (0.05 * x.abs()).max(1e-3);
            }
            st.level = x - st.seasonal(&season);
            st.hash = hash16(raw);
            *state = st.encode(obs.transform);
            return Assessment::learn_only(x, x);
        }

        let p = st.level + st.seasonal(&season);
        let mut sigma = self.sigma(&st, n, prior, p);
        if obs.gap_epochs > 1 {
            // Uncertainty grows while the series was unobserved (a day without data doubles σ).
            let g = (obs.gap_epochs - 1).min(288) as f32;
            sigma *= (1.0 + g / 96.0).sqrt();
        }
        let r = x - p;
        let z = r / sigma;
        let psi = z.clamp(-self.huber, self.huber);

        // Scores.
        st.c_hi = (st.c_hi + z.min(4.0) - self.cusum_k).clamp(0.0, 31.0);
        st.c_lo = (st.c_lo - z.max(-4.0) - self.cusum_k).clamp(0.0, 31.0);
        st.vol += self.vol_gain * (z.abs().min(4.0) - st.vol);
        let h = hash16(raw);
        let repeat = h == st.hash;
        if repeat {
            st.run = st.run.saturating_add(1);
        } else {
            if st.run >= 1 && st.run as f32 <= 2.0 * st.run_max + 4.0 {
                // A run that ended without being suspicious is the series' normal behaviour.
                st.run_max = (st.run_max * (1.0 - 1.0 / 256.0)).max(st.run as f32);
            }
            st.run = 0;
        }
        st.hash = h;

        let spike = z.abs();
        let shift = 5.0 * st.c_hi.max(st.c_lo) / self.cusum_h;
        let variance = 5.0 * (st.vol - 0.8).max(0.0) / (self.vol_alarm - 0.8);
        let stuck = if st.run >= 2 {
            5.0 * st.run as f32 / (2.0 * st.run_max + 4.0)
        } else {
            0.0
        };
        let mut kind = AnomalyKind::Spike;
        let mut surprise = spike;
        for (s, k) in [
            (shift, AnomalyKind::LevelShift),
            (variance, AnomalyKind::VarianceBurst),
            (stuck, AnomalyKind::StuckValue),
        ] {
            if s > surprise {
                surprise = s;
                kind = k;
            }
        }

        // Learning (robust: one observation moves the level by at most a·σ·c).
        let a = self.alpha.max(1.0 / (n as f32 + 1.0));
        let b = self.beta.max(1.0 / (n as f32 + 1.0));
        st.level += a * sigma * psi;
        if obs.transform == Transform::Level {
            for (k, f) in season.iter().enumerate() {
                st.season[k] += self.eta * sigma * psi * f;
            }
        }
        st.mad += b * (r.abs().min(4.0 * sigma) - st.mad);
        if st.c_hi.max(st.c_lo) >= 3.0 * self.cusum_h {
            // A confirmed shift: adopt the new level instead of crawling towards it.
            st.level = x - st.seasonal(&season);
            st.c_hi = 0.0;
            st.c_lo = 0.0;
        }
        *state = st.encode(obs.transform);

        Assessment {
            observed: x,
            expected: p,
            sigma,
            surprise,
            kind,
            reset: false,
            scored: true,
        }
    }

    fn predict(&self, state: &DetectorState, ts: i64, transform: Transform) -> (f32, f32) {
        let st = St::decode(state, transform);
        let p = match transform {
            Transform::Level => st.level + st.seasonal(&Observation::daily_phase(ts)),
            Transform::Rate => st.level,
        };
        (p, (MAD_TO_SIGMA * st.mad).max(sigma_floor(p)))
    }

    fn summary(
        &self,
        state: &DetectorState,
        seen: u8,
        transform: Transform,
    ) -> Option<SeriesSummary> {
        if seen < self.warm {
            return None;
        }
        let st = St::decode(state, transform);
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
            phase: [0.0; 4], // no seasonal contribution: hand computation stays simple
            transform: Transform::Level,
        }
    }

    #[test]
    fn first_observation_initialises_from_the_value_and_prior() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior {
            count: 10,
            level: 0.0,
            scale: 2.0,
            season: [0.0; 4],
        };
        let a = d.observe(&mut s, &obs(10.0, 0, 0), &prior);
        assert!(!a.scored);
        let st = St::decode(&s, Transform::Level);
        assert_eq!(st.level, 10.0);
        assert_eq!(st.mad, 2.0);
    }

    #[test]
    fn second_observation_hand_computed() {
        // State after init: L = 10, S = 2 (prior), n = 1, k = 6, σ_prior = 1.2533·2.
        // σ = sqrt((1·(1.2533·2)² + 6·(1.2533·2)²)/7) = 2.5066
        // x = 15: r = 5, z = 1.99473, ψ = z (|z| < 2.5)
        // a = max(0.04, 1/2) = 0.5 → L = 10 + 0.5·2.5066·1.99473 = 12.5
        // b = 0.5 → S = 2 + 0.5·(min(5, 10.03) − 2) = 3.5
        // C⁺ = max(0, 0 + 1.99473 − 0.5) = 1.49473; C⁻ = max(0, 0 − 1.99473 − 0.5) = 0
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior {
            count: 10,
            level: 0.0,
            scale: 2.0,
            season: [0.0; 4],
        };
        d.observe(&mut s, &obs(10.0, 0, 0), &prior);
        let a = d.observe(&mut s, &obs(15.0, 300, 1), &prior);
        assert!(a.scored);
        assert!((a.expected - 10.0).abs() < 1e-6);
        assert!((a.sigma - 2.5066).abs() < 1e-3, "{}", a.sigma);
        assert!((a.surprise - 1.99473).abs() < 1e-3, "{}", a.surprise);
        assert_eq!(a.kind, AnomalyKind::Spike);
        let st = St::decode(&s, Transform::Level);
        assert!((st.level - 12.5).abs() < 1e-3, "{}", st.level);
        assert!((st.mad - 3.5).abs() < 1e-5, "{}", st.mad);
        assert_eq!(st.c_hi, 1.5); // 1.49473 stored in eighths
        assert_eq!(st.c_lo, 0.0);
    }

    #[test]
    fn outlier_moves_level_by_at_most_huber_bound() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut rng = crate::rng::Rng::new(1, 1);
        for i in 0..200u32 {
            let x = 100.0 + rng.normal() as f32;
            d.observe(&mut s, &obs(x, i as i64 * 300, i.min(255) as u8), &prior);
        }
        let before = St::decode(&s, Transform::Level);
        let a = d.observe(&mut s, &obs(1000.0, 200 * 300, 255), &prior);
        let after = St::decode(&s, Transform::Level);
        assert!(a.surprise > 50.0, "huge spike is surprising: {}", a.surprise);
        // L moves by at most α·σ·c = 0.04·σ·2.5
        let bound = 0.04 * a.sigma * 2.5 + 1e-4;
        assert!((after.level - before.level).abs() <= bound);
        // learned noise scale is near the true mean absolute deviation 0.798
        assert!((before.mad - 0.798).abs() < 0.2, "mad {}", before.mad);
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
            d.observe(&mut s, &obs(50.0 + rng.normal() as f32, t, i.min(255) as u8), &prior);
        }
        // 3σ shift: spike score alone stays below 5, the CUSUM component crosses 5 within a few steps.
        let mut first_alarm = None;
        let mut last = 0.0;
        for j in 1..40 {
            let a = d.observe(&mut s, &obs(53.0 + rng.normal() as f32, t + j * 300, 255), &prior);
            if first_alarm.is_none() && a.surprise >= 5.0 && a.kind == AnomalyKind::LevelShift {
                first_alarm = Some(j);
            }
            last = a.surprise;
        }
        let j = first_alarm.expect("shift detected");
        assert!(j <= 6, "detected after {j} steps");
        assert!(last < 5.0, "model adapted to the new level (last surprise {last})");
    }

    #[test]
    fn stuck_value_detected_on_a_continuous_series() {
        let d = SeasonalRobust::default();
        let mut s = [0u8; super::super::DETECTOR_BYTES];
        let prior = FeaturePrior::NONE;
        let mut rng = crate::rng::Rng::new(3, 1);
        for i in 0..300u32 {
            d.observe(&mut s, &obs(20.0 + rng.normal() as f32, i as i64 * 300, i.min(255) as u8), &prior);
        }
        let mut got = None;
        for j in 0..12 {
            let a = d.observe(&mut s, &obs(20.3, (300 + j) * 300, 255), &prior);
            if a.kind == AnomalyKind::StuckValue && a.surprise >= 5.0 {
                got = Some(j);
                break;
            }
        }
        assert_eq!(got.expect("stuck detected"), 4, "run of 4 repeats on a series that never repeats");
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

    #[test]
    fn state_round_trips_through_bytes() {
        let st = St {
            level: -61.25,
            mad: 1.5,
            season: [1.0, -2.0, 0.5, 0.25],
            prev: 0.0,
            c_hi: 3.0,
            c_lo: 0.0,
            vol: 1.25,
            run: 4,
            hash: 60_000,
            run_max: 2.5,
        };
        assert_eq!(St::decode(&st.encode(Transform::Level), Transform::Level), st);
    }
}
