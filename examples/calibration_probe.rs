//! Measures how often the model's point-wise threshold is exceeded on pure noise (no anomalies): the
//! realised false-alarm rate per observation, by noise shape. The design target is 3·10⁻⁶.
//!
//! ```text
//! cargo run --release --example calibration_probe
//! PROBE_SERIES=2000 PROBE_CLIP=1.3 cargo run --release --example calibration_probe   # noise clipped 1.3 sd
//!                                                        # below the level, like a loss percentage near 0
//! ```

use fleetwatch::model::alert::Quantiles;
use fleetwatch::model::customer::ModelConfig;
use fleetwatch::model::seasonal::SeasonalRobust;
use fleetwatch::model::{Detector, FeaturePrior, Observation, Transform};
use fleetwatch::rng::Rng;
use fleetwatch::spec::Spec;

fn main() {
    let det = SeasonalRobust::default();
    // The alerting parameters the product ships (the embedded home Wi-Fi spec), not a copy of them.
    let alert = ModelConfig::from_spec(&Spec::embedded()).alert;
    println!("df    ar    daily  series  obs        exceed  rate      (target 3e-6)");
    for &(df, ar, daily) in &[
        (1000.0, 0.0, 0.0),
        (30.0, 0.0, 0.0),
        (10.0, 0.0, 0.0),
        (6.0, 0.0, 0.0),
        (4.0, 0.0, 0.0),
        (3.0, 0.0, 0.0),
        (1000.0, 0.5, 0.0),
        (1000.0, 0.0, 5.0),
        (6.0, 0.4, 3.0),
    ] {
        let series: usize = std::env::var("PROBE_SERIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        let n: usize = std::env::var("PROBE_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000);
        let clip: f64 = std::env::var("PROBE_CLIP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::INFINITY);
        let mut ratios: Vec<(f32, f32)> = Vec::new();
        let mut exceed = 0u64;
        let mut total = 0u64;
        for s in 0..series {
            let mut rng = Rng::new(7, s as u64);
            let mut state = [0u8; fleetwatch::model::DETECTOR_BYTES];
            let mut q = Quantiles::default();
            let mut noise = 0.0;
            let phase = rng.range(0.0, std::f64::consts::TAU);
            for i in 0..n {
                let ts = 1_793_577_600 + i as i64 * 300;
                let e = if df > 100.0 {
                    rng.normal()
                } else {
                    rng.student_t(df)
                };
                noise = ar * noise + (1.0f64 - ar * ar).sqrt() * e;
                let phi = std::f64::consts::TAU * (ts % 86400) as f64 / 86400.0;
                let x = 100.0 + daily * (phi + phase).cos() + noise.max(-clip);
                let obs = Observation {
                    value: x as f32,
                    ts,
                    gap_epochs: 1,
                    seen: i.min(255) as u8,
                    resolution: 0.0,
                    phase: Observation::daily_phase(ts),
                    weekend_step: Observation::weekend_step_of(ts, 300),
                    transform: Transform::Level,
                    at_bound: fleetwatch::model::AtBound::Inside,
                };
                let a = det.observe(&mut state, &obs, &FeaturePrior::NONE);
                let upward = a.observed > a.expected;
                let z = if upward { a.surprise } else { -a.surprise };
                if !a.scored || i < 300 {
                    if a.scored && i >= 24 {
                        q = alert.update_quantiles(q, z, i >= 255);
                    }
                    continue;
                }
                let t = alert.bar(q).threshold(upward);
                let (q_up, q_dn, q_lo) = q.values();
                let q_side = if upward { q_up } else { q_dn };
                ratios.push((q_side / q_lo, a.surprise / q_side));
                total += 1;
                if a.surprise >= t {
                    exceed += 1;
                } else {
                    q = alert.update_quantiles(q, z, i >= 255);
                }
            }
        }
        let mut rs: Vec<f32> = ratios.iter().map(|r| r.0).collect();
        rs.sort_by(|a, b| a.total_cmp(b));
        let mut zs: Vec<f32> = ratios.iter().map(|r| r.1).collect();
        zs.sort_by(|a, b| a.total_cmp(b));
        let q = |v: &Vec<f32>, p: f64| v[((v.len() as f64 - 1.0) * p) as usize];
        let need = q(&zs, 1.0 - 3e-6);
        let r_med = q(&rs, 0.5);
        println!(
            "{df:<5} {ar:<5} {daily:<6} {series:<7} {total:<10} {exceed:<7} {:.2e}  r_med {:.3}  need T/q_hi {:.2} (1e-5: {:.2})  c {:.2}",
            exceed as f64 / total as f64,
            r_med,
            need,
            q(&zs, 1.0 - 1e-5),
            need.ln() / r_med.ln()
        );
    }
}
