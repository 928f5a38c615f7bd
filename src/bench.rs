//! `fleetwatch bench`: the whole pipeline on a fleet of a given size, measured.
//!
//! Without `--input` it first writes a recorded topic of the requested size (in a child process, so the
//! generator's memory does not count in the pipeline's peak RSS), then runs the full pipeline on it — parse,
//! epoching, exchange by customer, model, series-state arrangement, open-anomaly arrangement, changed-only
//! output to a file — and reports per-epoch wall seconds, throughput, peak RSS and the arrangement's bytes per
//! series. Epochs are timed at the sink: an epoch's time is the wall time between its output and the previous
//! epoch's (for the first, since the start of the run). The first `warmup` epochs are reported apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::arrangement::StateSize;
use crate::commands::CommandError;
use crate::dataflow::{DEFAULT_READ_BUDGET, RunConfig};
use crate::generate::GenerateConfig;
use crate::model::Registry;
use crate::sources::InputFile;
use crate::spec::Spec;

/// Options of `fleetwatch bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub customers: usize,
    pub features: usize,
    pub epochs: usize,
    pub workers: usize,
    pub warmup: usize,
    pub seed: u64,
    /// An existing recorded topic to read instead of generating one.
    pub input: Option<PathBuf>,
    /// Where to write the generated topic and the output (a temporary directory if `None`).
    pub dir: Option<PathBuf>,
    /// Executable used to generate the topic in a child process (`None`: generate in-process).
    pub generator: Option<PathBuf>,
    /// Keep the generated topic (and output) after the run.
    pub keep: bool,
    /// Measure home-wifi's alerting before 2026-12-06 instead of today's: the fast shift statistic on, the
    /// memory of recent point evidence and the shift/variance calibration (whose bytes it takes) off.
    pub fast_shift: bool,
    /// With the embedded spec's global model switched on (`[global_model]`, off by default): the model's
    /// cost side by side with the per-series model alone.
    pub global_model: bool,
    /// Run the spec without its global model as a shadow variant beside it (its output in `dir`): with
    /// `global_model`, the model's A/B in one dataflow.
    pub shadow: bool,
    /// Write checkpoints there (and resume from the last complete one found there: a restore
    /// measurement), every `checkpoint_every` epochs.
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_every: u64,
    /// The fleet's topology (`run --topology`): measures the cost of network-element incidents.
    pub topology: Option<PathBuf>,
    /// Topology changes (`run --topology-changes FILE`): the cost of the topology moving while it runs.
    pub topology_changes: Option<PathBuf>,
    /// The live query API and the Parquet files of every prediction: their cost.
    pub serving: crate::commands::ServingOptions,
}

/// Checkpoint figures of a bench run.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointFigures {
    pub every: u64,
    /// Steady epochs after which a checkpoint was taken: (epoch, wall seconds).
    pub checkpoint_epochs: Vec<(u64, f64)>,
    /// The median of the other steady epochs.
    pub other_epochs_median: f64,
    /// Completed checkpoints: bytes, and seconds from the epoch being durable to the manifest.
    pub completed: Vec<crate::checkpoint::Completed>,
    /// When the run resumed: from which checkpoint, the seconds to load it (read, verify), and the first
    /// epoch's wall time after it (building the state from it included).
    pub restored_from: Option<u64>,
    pub restore_load_seconds: f64,
    pub first_epoch_seconds: Option<f64>,
}

/// The measured figures (printed as one JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub customers: usize,
    pub features: usize,
    pub series: usize,
    pub workers: usize,
    pub epochs: usize,
    pub input_bytes: u64,
    pub logs: u64,
    /// Steady-state epochs (after warm-up), wall seconds each.
    pub epoch_seconds: Vec<f64>,
    pub epoch_seconds_median: f64,
    pub epoch_seconds_max: f64,
    pub epoch_seconds_min: f64,
    pub warmup_epoch_seconds: Vec<f64>,
    /// Series scored per second over the steady-state epochs.
    pub series_updates_per_s: f64,
    pub peak_rss_bytes: u64,
    /// The series-state arrangement's bytes (keys, values, times, block differences) per series.
    pub state_bytes_per_series: f64,
    pub state_bytes: u64,
    pub changes: u64,
    pub wall_seconds: f64,
    pub generate_seconds: f64,
    pub checkpoints: Option<CheckpointFigures>,
}

/// Peak resident set size of this process, bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes the struct we pass; zeroed is a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        usage.ru_maxrss as u64 * 1024
    } else {
        0
    }
}

/// The embedded home Wi-Fi spec cut to its first `features` features.
pub fn spec_with_features(features: usize) -> Spec {
    let mut spec = Spec::embedded();
    let keep = features.clamp(1, spec.features.len());
    if keep < spec.features.len() {
        // The global model is trained for the whole feature list.
        spec.drop_global_model();
    }
    spec.features.truncate(keep);
    if spec.feature_index(&spec.alerting.reboot_feature).is_none() {
        spec.alerting.reboot_feature.clear();
    }
    spec
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> CommandError {
    move |source| CommandError::Io { context, source }
}

/// Runs the benchmark.
pub fn bench(opts: &BenchOptions) -> Result<BenchReport, CommandError> {
    if opts.features == 0 || opts.features > 20 {
        return Err(CommandError::Usage(
            "--features must be between 1 and 20".into(),
        ));
    }
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("fleetwatch-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let started = std::time::Instant::now();
    let input = match &opts.input {
        Some(p) => p.clone(),
        None => {
            let out = dir.join("topic");
            generate(opts, &out)?;
            out.join("telemetry.jsonl")
        }
    };
    let generate_seconds = started.elapsed().as_secs_f64();
    let input_bytes = std::fs::metadata(&input)
        .map_err(io(format!("reading {}", input.display())))?
        .len();
    let mut spec = spec_with_features(opts.features);
    if opts.global_model && spec.global_model.is_none() {
        return Err(CommandError::Usage(
            "--global-model needs all 20 features (its weights are trained for the whole list)"
                .into(),
        ));
    }
    if opts.global_model {
        spec.enable_global_model(None, "the embedded home-wifi spec")?;
    }
    if opts.fast_shift {
        for (key, value) in [
            ("fast_cusum_h", 5.375),
            ("fast_cusum_k", 2.5),
            ("fast_cusum_cap", 6.0),
        ] {
            spec.detector
                .params
                .insert(key.into(), toml::Value::Float(value));
        }
        spec.alerting.score_margin = 0.0;
        spec.alerting.memory_half_life_hours = 0.0;
    }
    let detector = Registry::builtin()
        .build(&spec.detector.name, &spec.detector.params)
        .map_err(CommandError::Usage)?;
    let shadow = opts.shadow.then(|| {
        let mut s = spec.clone();
        s.drop_global_model();
        (s, Arc::clone(&detector))
    });
    let size = Arc::new(StateSize::default());
    let publish = crate::commands::start_serving(&opts.serving, &spec, None, opts.workers.max(1))?;
    let cfg = RunConfig {
        spec,
        inputs: crate::dataflow::Inputs::Files(vec![InputFile::detect(&input)?]),
        outputs: crate::dataflow::Outputs::Files {
            output: dir.join("changes.jsonl"),
            dead_letter: None,
        },
        speed: None,
        reproducible: false,
        detector,
        read_budget: DEFAULT_READ_BUDGET,
        // No read-ahead: each epoch is parsed, exchanged, modelled and written before the next is read, so
        // an epoch's time is its whole end-to-end cost (with read-ahead, epochs complete in pairs).
        max_ahead: 0,
        state_size: Some(Arc::clone(&size)),
        checkpoint: opts.checkpoint_dir.as_ref().map(|d| {
            crate::checkpoint::Checkpointing::new(d.clone(), opts.checkpoint_every.max(1))
        }),
        stop: Default::default(),
        connect_timeout: std::time::Duration::ZERO,
        topology: {
            let mut t = match &opts.topology {
                Some(p) => Some(
                    crate::topology::read_topology(p, 1)
                        .map_err(|e| CommandError::Usage(format!("--topology: {e}")))?,
                ),
                None => None,
            };
            if let Some(p) = &opts.topology_changes {
                let input = 1 + u32::from(t.is_some());
                let feed = crate::topology::read_changes(p, input)
                    .map_err(|e| CommandError::Usage(format!("--topology-changes: {e}")))?;
                t.get_or_insert_with(Default::default).changes = Some(feed);
            }
            t.map(Arc::new)
        },
        group_incidents: false,
        watch: None,
        publish,
        shadow: shadow.map(|(spec, detector)| crate::dataflow::Shadow {
            spec,
            detector,
            output: dir.join("shadow.jsonl"),
        }),
    };
    let run = crate::dataflow::run(cfg, timely::Config::process(opts.workers.max(1)), 0)?;
    let peak = peak_rss_bytes();
    let warm = opts.warmup.min(run.epoch_seconds.len());
    let (warmup, steady) = run.epoch_seconds.split_at(warm);
    let series = opts.customers * opts.features;
    let steady_secs: f64 = steady.iter().sum();
    let checkpoints = opts.checkpoint_dir.as_ref().map(|_| {
        let every = opts.checkpoint_every.max(1);
        let ids = &run.epoch_ids[warm.min(run.epoch_ids.len())..];
        let (mut at, mut other) = (Vec::new(), Vec::new());
        for (e, t) in ids.iter().zip(steady) {
            if (e + 1) % every == 0 {
                at.push((*e, *t));
            } else {
                other.push(*t);
            }
        }
        CheckpointFigures {
            every,
            checkpoint_epochs: at,
            other_epochs_median: median(&other),
            completed: run.checkpoints.clone(),
            restored_from: run.restored_from,
            restore_load_seconds: run.restore_seconds,
            first_epoch_seconds: run.epoch_seconds.first().copied(),
        }
    });
    let scored_per_epoch = if run.epochs > 0 {
        run.series_scored as f64 / run.epochs as f64
    } else {
        0.0
    };
    let report = BenchReport {
        customers: opts.customers,
        features: opts.features,
        series,
        workers: opts.workers,
        epochs: run.epochs as usize,
        input_bytes,
        logs: run.records,
        epoch_seconds: steady.to_vec(),
        epoch_seconds_median: median(steady),
        epoch_seconds_max: steady.iter().copied().fold(0.0, f64::max),
        epoch_seconds_min: steady
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(1e300),
        warmup_epoch_seconds: warmup.to_vec(),
        series_updates_per_s: if steady_secs > 0.0 {
            scored_per_epoch * steady.len() as f64 / steady_secs
        } else {
            0.0
        },
        peak_rss_bytes: peak,
        state_bytes_per_series: size.bytes() as f64 / series.max(1) as f64,
        state_bytes: size.bytes(),
        changes: run.changes,
        wall_seconds: run.wall_seconds,
        generate_seconds,
        checkpoints,
    };
    if !opts.keep && opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

fn generate(opts: &BenchOptions, out: &Path) -> Result<(), CommandError> {
    let cfg = GenerateConfig {
        customers: opts.customers,
        epochs: opts.epochs,
        seed: opts.seed,
        features: opts.features,
        join_fraction: 0.0,
        ..Default::default()
    };
    match &opts.generator {
        None => {
            crate::commands::generate(&cfg, out)?;
        }
        Some(exe) => {
            let status = std::process::Command::new(exe)
                .args([
                    "generate",
                    "--customers",
                    &cfg.customers.to_string(),
                    "--epochs",
                    &cfg.epochs.to_string(),
                    "--seed",
                    &cfg.seed.to_string(),
                    "--features",
                    &cfg.features.to_string(),
                    "--join-fraction",
                    "0",
                    "--out",
                ])
                .arg(out)
                .status()
                .map_err(io(format!("starting {}", exe.display())))?;
            if !status.success() {
                return Err(CommandError::Usage(format!(
                    "generating the topic failed: {status}"
                )));
            }
        }
    }
    Ok(())
}
