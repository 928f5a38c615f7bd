//! Writing your own per-series detector: implement one trait, register it under a name, name it in a spec.
//!
//! ```text
//! cargo run --release --example custom_detector
//! ```
//!
//! The detector here, `level-band`, is deliberately simple: an exponentially weighted mean and mean absolute
//! deviation, and no daily rhythm. Its whole state is 8 of the 30 bytes a detector may use. The framework
//! around it — personal thresholds, hysteresis, cohort priors, dropouts, silence, the arrangement — is the
//! same as for the built-in model.

use std::sync::Arc;

use fleetwatch::commands::{self, Layout, RunOptions};
use fleetwatch::generate::GenerateConfig;
use fleetwatch::model::{
    AnomalyKind, Assessment, Detector, DetectorParams, DetectorState, FeaturePrior, Observation,
    Registry, SeriesSummary, Transform,
};
use fleetwatch::state::le;

/// `level-band`: mean `m` and mean absolute deviation `d`, both exponentially weighted.
struct LevelBand {
    alpha: f32,
}

impl Detector for LevelBand {
    fn name(&self) -> &'static str {
        "level-band"
    }

    fn observe(
        &self,
        state: &mut DetectorState,
        obs: &Observation,
        prior: &FeaturePrior,
    ) -> Assessment {
        let x = obs.value; // (a real detector would handle `Transform::Rate` series too)
        if obs.seen == 0 {
            let d = if prior.count > 0 {
                prior.scale * x.abs()
            } else {
                0.0
            };
            le::set_f32(state, 0, x);
            le::set_f32(state, 4, d);
            return Assessment::learn_only(x, x);
        }
        let (m, d) = (le::f32(state, 0), le::f32(state, 4));
        let sigma = (1.2533 * d).max(0.5 * obs.resolution).max(1e-6);
        let r = x - m;
        le::set_f32(
            state,
            0,
            m + self.alpha * r.clamp(-3.0 * sigma, 3.0 * sigma),
        );
        le::set_f32(state, 4, d + self.alpha * (r.abs().min(4.0 * sigma) - d));
        Assessment {
            observed: x,
            expected: m,
            sigma,
            surprise: (r / sigma).abs(),
            // No short-term memory: the signed residual is the baseline (what element incidents sum).
            baseline: r / sigma,
            sustained: 0.0,
            kind: AnomalyKind::Spike,
            reset: false,
            scored: true,
            censored: false,
        }
    }

    fn predict(&self, state: &DetectorState, _ts: i64, _t: Transform) -> (f32, f32) {
        (le::f32(state, 0), 1.2533 * le::f32(state, 4))
    }

    fn summary(&self, state: &DetectorState, seen: u8, _t: Transform) -> Option<SeriesSummary> {
        (seen == u8::MAX).then(|| SeriesSummary {
            level: le::f32(state, 0),
            scale: le::f32(state, 4),
            season: [0.0; 4],
        })
    }
}

fn build(params: &DetectorParams) -> Result<Arc<dyn Detector>, String> {
    Ok(Arc::new(LevelBand {
        alpha: params.f32("alpha", 0.05, 0.001, 1.0)?,
    }))
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fleetwatch-custom-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    commands::generate(
        &GenerateConfig {
            customers: 100,
            epochs: 432,
            seed: 8,
            ..Default::default()
        },
        &dir,
    )?;
    // 1. register the detector under a name
    let mut registry = Registry::builtin();
    registry.register("level-band", build);
    // 2. name it in a spec (here: the embedded spec with its [detector] section replaced)
    let spec = fleetwatch::spec::EMBEDDED_HOME_WIFI.replace(
        "name = \"seasonal-robust\"",
        "name = \"level-band\"\nalpha = 0.03",
    );
    let spec_path = dir.join("level-band.toml");
    std::fs::write(&spec_path, spec)?;
    // 3. run
    let opts = RunOptions {
        dataflow: Some(spec_path),
        inputs: vec![dir.join("telemetry.jsonl")],
        output: dir.join("changes.jsonl"),
        dead_letter: None,
        layout: Layout::Threads(2),
        reproducible: true,
        speed: None,
        kafka: Default::default(),
        checkpoint_dir: None,
        checkpoint_every: None,
        signals: false,
        topology: None,
        topology_changes: None,
        group_incidents: false,
        watch: None,
        serving: Default::default(),
        shadow: None,
    };
    let run = commands::run_with(&opts, &registry)?;
    let eval = commands::eval(&dir.join("labels.jsonl"), &opts.output)?;
    println!(
        "level-band: {} changes over {} epochs; precision {:.3}, recall {:.3} (compare the built-in \
         seasonal-robust with the replay_recorded_fleet example)",
        run.changes, run.epochs, eval.precision, eval.recall
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
