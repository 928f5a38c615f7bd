//! The commands behind the CLI, as library functions (so tests and examples call exactly what users run).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::{ClusterError, ClusterFile};
use crate::dataflow::{DEFAULT_MAX_AHEAD, DEFAULT_READ_BUDGET, RunConfig, RunError, RunReport};
use crate::eval::{EvalError, EvalReport};
use crate::generate::{GenerateConfig, GenerateReport};
use crate::model::Registry;
use crate::sources::{InputFile, SourceError};
use crate::spec::{Spec, SpecError};

/// Any failure a command can report.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Nab(#[from] crate::nab::NabError),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Where a run executes.
#[derive(Debug, Clone)]
pub enum Layout {
    /// One process with this many worker threads.
    Threads(usize),
    /// Process `index` of a cluster file.
    Cluster { file: PathBuf, index: usize },
}

/// Options of `fleetwatch run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The spec file; `None` uses the embedded home Wi-Fi spec.
    pub dataflow: Option<PathBuf>,
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub dead_letter: Option<PathBuf>,
    pub layout: Layout,
    pub reproducible: bool,
}

/// Loads the spec named by `--dataflow`, or the embedded one.
pub fn load_spec(path: Option<&Path>) -> Result<Spec, CommandError> {
    Ok(match path {
        Some(p) => Spec::load(p)?,
        None => Spec::embedded(),
    })
}

/// `fleetwatch run`, with the built-in detectors.
pub fn run(opts: &RunOptions) -> Result<RunReport, CommandError> {
    run_with(opts, &Registry::builtin())
}

/// `fleetwatch run` with a caller-provided detector registry (for detectors defined outside this crate).
pub fn run_with(opts: &RunOptions, registry: &Registry) -> Result<RunReport, CommandError> {
    let spec = load_spec(opts.dataflow.as_deref())?;
    if opts.inputs.is_empty() {
        return Err(CommandError::Usage("give at least one --input file".into()));
    }
    let detector = registry
        .build(&spec.detector.name, &spec.detector.params)
        .map_err(|m| CommandError::Usage(format!("[detector] in the spec: {m}")))?;
    let inputs = opts
        .inputs
        .iter()
        .map(|p| InputFile::detect(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (timely, process) = match &opts.layout {
        Layout::Threads(w) => {
            if *w == 0 {
                return Err(CommandError::Usage("--workers must be at least 1".into()));
            }
            (timely::Config::process(*w), 0)
        }
        Layout::Cluster { file, index } => {
            let c = ClusterFile::load(file)?;
            (c.timely_config(*index)?, *index)
        }
    };
    let cfg = RunConfig {
        spec,
        inputs,
        output: opts.output.clone(),
        dead_letter: opts.dead_letter.clone(),
        reproducible: opts.reproducible,
        detector: Arc::clone(&detector),
        read_budget: DEFAULT_READ_BUDGET,
        max_ahead: DEFAULT_MAX_AHEAD,
        state_size: None,
    };
    Ok(crate::dataflow::run(cfg, timely, process)?)
}

/// `fleetwatch generate`.
pub fn generate(cfg: &GenerateConfig, out: &Path) -> Result<GenerateReport, CommandError> {
    crate::generate::generate(cfg, out).map_err(|source| CommandError::Io {
        context: format!("writing the fleet to {}", out.display()),
        source,
    })
}

/// `fleetwatch eval --labels --alerts`.
pub fn eval(labels: &Path, alerts: &Path) -> Result<EvalReport, CommandError> {
    let labels = crate::eval::read_labels(labels)?;
    let (raised, epoch_len, series_epochs) = crate::eval::read_alerts(alerts)?;
    if epoch_len == 0 && !raised.is_empty() {
        return Err(CommandError::Usage(
            "the alerts file has no summary lines; pass a fleetwatch run output".into(),
        ));
    }
    Ok(crate::eval::evaluate(
        &labels,
        &raised,
        epoch_len.max(1),
        series_epochs,
    ))
}

/// `fleetwatch eval --nab`: NAB's three normalised scores (printed as one JSON object).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct NabReport {
    pub standard: f64,
    #[serde(rename = "reward_low_FP_rate")]
    pub reward_low_fp_rate: f64,
    #[serde(rename = "reward_low_FN_rate")]
    pub reward_low_fn_rate: f64,
}

/// `fleetwatch eval --nab DIR --out OUT`: streams every NAB series through the spec's model (or, with
/// `results`, takes a detector's published per-row scores from NAB's results layout), writes the per-row
/// results, the score tables and a summary under `OUT/<name>/`, and scores them with NAB's rules.
pub fn eval_nab(
    nab: &Path,
    out: &Path,
    spec: Option<&Path>,
    results: Option<(&Path, &str)>,
) -> Result<(NabReport, crate::nab::CorpusScore), CommandError> {
    let corpus = crate::nab::Corpus::load(nab)?;
    let (name, scores) = match results {
        Some((dir, detector)) => (detector.to_string(), corpus.read_results(dir, detector)?),
        None => {
            let spec = match spec {
                Some(p) => Spec::load(p)?,
                None => Spec::embedded_nab(),
            };
            let opts = crate::nab::NabOptions {
                spec,
                name: "fleetwatch".into(),
            };
            let scores = crate::nab::run_detector(&corpus, &opts)?;
            crate::nab::runner::write_results(&corpus, &opts.name, &scores, out)?;
            (opts.name, scores)
        }
    };
    let score = crate::nab::score_corpus(&corpus, &scores);
    crate::nab::runner::write_scores(&corpus, &name, &score, &out.join(&name))?;
    let get = |p: &str| score.normalised(p).unwrap_or(f64::NAN);
    let report = NabReport {
        standard: get("standard"),
        reward_low_fp_rate: get("reward_low_FP_rate"),
        reward_low_fn_rate: get("reward_low_FN_rate"),
    };
    Ok((report, score))
}

/// What `demo` did.
pub struct DemoReport {
    pub dir: PathBuf,
    pub run: RunReport,
    pub eval: EvalReport,
    pub changes: Vec<String>,
}

/// `fleetwatch demo`: generates a small fleet, runs the embedded spec on two workers, and evaluates.
pub fn demo(
    dir: &Path,
    customers: usize,
    epochs: usize,
    workers: usize,
) -> Result<DemoReport, CommandError> {
    let gen_cfg = GenerateConfig {
        customers,
        epochs,
        seed: 42,
        malformed_rate: 0.0005,
        ..Default::default()
    };
    generate(&gen_cfg, dir)?;
    let opts = RunOptions {
        dataflow: None,
        inputs: vec![dir.join("telemetry.jsonl")],
        output: dir.join("changes.jsonl"),
        dead_letter: Some(dir.join("dead-letters.jsonl")),
        layout: Layout::Threads(workers),
        reproducible: false,
    };
    let run = run(&opts)?;
    let eval = eval(&dir.join("labels.jsonl"), &opts.output)?;
    let text = std::fs::read_to_string(&opts.output).map_err(|source| CommandError::Io {
        context: format!("reading {}", opts.output.display()),
        source,
    })?;
    let changes = text
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"change\""))
        .map(|l| l.to_string())
        .collect();
    Ok(DemoReport {
        dir: dir.to_path_buf(),
        run,
        eval,
        changes,
    })
}

/// Renders one change line for humans.
pub fn pretty_change(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| match v.get(k).and_then(|x| x.as_f64()) {
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    format!(
        "{}  {:<13} {:<21} {:<8} {:<8} {:<15} score {:>6}  observed {:>9}  expected {:>9}  band [{}, {}]",
        s("epoch_start"),
        s("customer"),
        s("feature"),
        s("status"),
        s("severity"),
        s("kind"),
        n("score"),
        n("observed"),
        n("expected"),
        n("lower"),
        n("upper")
    )
}
