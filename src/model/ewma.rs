//! `ewma-zscore`: the plain per-series baseline — an exponentially weighted mean and variance and the z-score
//! of each observation against them. No seasonality, no robustness. It exists to show what the default model
//! buys, and as the smallest example of a [`Detector`] implementation.
//!
//! ```text
//! state: m f32 (mean), v f32 (variance), prev f32 (rate series' previous raw value)
//! z = (x − m)/√v;   m += α(x − m);   v = (1 − α)(v + α(x − m_old)²)
//! ```

use super::{
    AnomalyKind, Assessment, DETECTOR_BYTES, DetectorState, FeaturePrior, Observation,
    SeriesSummary, Transform,
};
use crate::model::{Detector, DetectorParams};
use crate::state::le;

#[derive(Debug, Clone)]
pub struct EwmaZscore {
    pub alpha: f32,
    pub warm: u8,
}

impl EwmaZscore {
    pub fn from_params(p: &DetectorParams) -> Result<Self, String> {
        Ok(EwmaZscore {
            alpha: p.f32("alpha", 0.05, 1e-4, 1.0)?,
            warm: p.f32("warm", 24.0, 1.0, 255.0)? as u8,
        })
    }
}

impl Detector for EwmaZscore {
    fn name(&self) -> &'static str {
        "ewma-zscore"
    }

    fn observe(
        &self,
        state: &mut DetectorState,
        obs: &Observation,
        prior: &FeaturePrior,
    ) -> Assessment {
        let (mut m, mut v, prev) = (le::f32(state, 0), le::f32(state, 4), le::f32(state, 8));
        let x = match obs.transform {
            Transform::Level => obs.value,
            Transform::Rate => {
                le::set_f32(state, 8, obs.value);
                if obs.seen == 0 {
                    return Assessment::learn_only(0.0, 0.0);
                }
                if obs.value < prev {
                    let mut a = Assessment::learn_only(obs.value, m);
                    a.reset = true;
                    return a;
                }
                (obs.value - prev) / obs.gap_epochs.max(1) as f32
            }
        };
        let first = match obs.transform {
            Transform::Level => obs.seen == 0,
            Transform::Rate => obs.seen == 1,
        };
        if first {
            let s = if prior.count > 0 {
                1.2533 * prior.scale
            } else {
                (0.05 * x.abs()).max(1e-3)
            };
            le::set_f32(state, 0, x);
            le::set_f32(state, 4, s * s);
            return Assessment::learn_only(x, x);
        }
        let sigma = v.sqrt().max(0.5 * obs.resolution).max(1e-3);
        let z = (x - m) / sigma;
        let d = x - m;
        m += self.alpha * d;
        v = (1.0 - self.alpha) * (v + self.alpha * d * d);
        le::set_f32(state, 0, m);
        le::set_f32(state, 4, v);
        Assessment {
            observed: x,
            expected: m - self.alpha * d,
            sigma,
            surprise: z.abs(),
            baseline: if z.is_finite() { z } else { 0.0 },
            sustained: 0.0,
            kind: AnomalyKind::Spike,
            reset: false,
            scored: true,
            censored: false,
        }
    }

    fn predict(&self, state: &DetectorState, _ts: i64, _t: Transform) -> (f32, f32) {
        (le::f32(state, 0), le::f32(state, 4).sqrt().max(1e-3))
    }

    fn summary(&self, state: &DetectorState, seen: u8, _t: Transform) -> Option<SeriesSummary> {
        (seen == u8::MAX).then(|| SeriesSummary {
            level: le::f32(state, 0),
            scale: le::f32(state, 4).sqrt() / 1.2533,
            season: [0.0; 4],
        })
    }
}

const _: () = assert!(DETECTOR_BYTES >= 12);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_update() {
        // init at x=10 with no prior: v = (0.05·10)² = 0.25, m = 10.
        // x = 11: σ = 0.5, z = 2; m = 10 + 0.05·1 = 10.05; v = 0.95·(0.25 + 0.05·1) = 0.285
        let d = EwmaZscore {
            alpha: 0.05,
            warm: 24,
        };
        let mut s = [0u8; DETECTOR_BYTES];
        let mut o = Observation {
            value: 10.0,
            ts: 0,
            gap_epochs: 0,
            seen: 0,
            resolution: 0.0,
            phase: [0.0; 4],
            weekend_step: 0,
            transform: Transform::Level,
            at_bound: crate::model::AtBound::Inside,
        };
        d.observe(&mut s, &o, &FeaturePrior::NONE);
        o.value = 11.0;
        o.seen = 1;
        let a = d.observe(&mut s, &o, &FeaturePrior::NONE);
        assert!((a.surprise - 2.0).abs() < 1e-5);
        assert!((le::f32(&s, 0) - 10.05).abs() < 1e-5);
        assert!((le::f32(&s, 4) - 0.285).abs() < 1e-5);
    }
}
