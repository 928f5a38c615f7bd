//! The commands behind the CLI, as library functions (so tests and examples call exactly what users run).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

impl CommandError {
    /// A peer process could not be reached or its connection failed (exit status
    /// [`crate::cluster::EXIT_PEER_LOST`]).
    pub fn is_peer_fault(&self) -> bool {
        use crate::cluster::ClusterError as C;
        matches!(
            self,
            CommandError::Cluster(C::Unreachable { .. } | C::Connection { .. })
                | CommandError::Run(RunError::Cluster(
                    C::Unreachable { .. } | C::Connection { .. }
                ))
        )
    }
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
    /// Pace a file replay at this many times event time (`None`: as fast as possible).
    pub speed: Option<f64>,
    /// Settings for `kafka://` inputs and outputs.
    pub kafka: KafkaRunOptions,
    /// Where checkpoints go and whence the run resumes (see [`crate::checkpoint`]).
    pub checkpoint_dir: Option<PathBuf>,
    /// Epochs between checkpoints (default: the spec's `checkpoint.every`).
    pub checkpoint_every: Option<u64>,
    /// Stop gracefully on SIGTERM / SIGINT (the binary installs the handlers: [`crate::stop`]).
    pub signals: bool,
    /// The fleet's topology (CSV `customer,element,region`): network-element incidents ([`crate::topology`]).
    pub topology: Option<PathBuf>,
    /// Changes to the topology while the run goes on: a file of change lines or `kafka://HOST:PORT/TOPIC`
    /// ([`crate::topology`], "Changes").
    pub topology_changes: Option<String>,
    /// With a topology: write an element's incident instead of the member alerts raised under it.
    pub group_incidents: bool,
    /// Keep every scored observation of these customers (`fleetwatch plot`, [`crate::watch`]).
    pub watch: Option<Arc<crate::watch::Watch>>,
    /// The live query API and the Parquet files of every prediction ([`crate::serving`]).
    pub serving: ServingOptions,
    /// A shadow variant on the same records ([`crate::dataflow::Shadow`]).
    pub shadow: Option<ShadowOptions>,
}

/// `run --shadow SPEC --shadow-output FILE`.
#[derive(Debug, Clone)]
pub struct ShadowOptions {
    /// The shadow's spec (its weights, if any, beside it).
    pub dataflow: PathBuf,
    /// Where its changes and summaries go (a file: JSON lines, like `--output`'s).
    pub output: PathBuf,
}

/// `run --serve ADDR [--serve-token-file F] --predictions DIR [--predictions-every N]`.
#[derive(Debug, Clone, Default)]
pub struct ServingOptions {
    /// Serve live queries at `HOST:PORT` (in a cluster, process i at the port + i).
    pub serve: Option<String>,
    /// The bearer token requests must carry (required for an address other than loopback).
    pub token_file: Option<PathBuf>,
    /// Write every scored series of an epoch as Parquet under this directory.
    pub predictions: Option<PathBuf>,
    /// Every this many epochs (default 1).
    pub predictions_every: Option<u64>,
}

/// `HOST:PORT` with the port moved up by `by` (each process of a cluster serves on its own port).
pub fn offset_port(addr: &str, by: usize, what: &str) -> Result<String, CommandError> {
    if by == 0 {
        return Ok(addr.to_string());
    }
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| CommandError::Usage(format!("{what} must be HOST:PORT")))?;
    let port = u16::try_from(usize::from(port) + by)
        .map_err(|_| CommandError::Usage(format!("{what} port + process index is beyond 65535")))?;
    Ok(format!("{host}:{port}"))
}

/// Starts what `opts.serving` asks for: the HTTP server (now, so a bad address fails before any work) and
/// the predictions' settings.
pub fn start_serving(
    opts: &ServingOptions,
    spec: &Spec,
    cluster: Option<(&crate::cluster::ClusterFile, usize)>,
    workers: usize,
) -> Result<crate::serving::Publish, CommandError> {
    let mut publish = crate::serving::Publish::default();
    if let Some(every) = opts.predictions_every {
        if every == 0 {
            return Err(CommandError::Usage(
                "--predictions-every must be at least 1".into(),
            ));
        }
        if opts.predictions.is_none() {
            return Err(CommandError::Usage(
                "--predictions-every needs --predictions DIR".into(),
            ));
        }
    }
    if let Some(dir) = &opts.predictions {
        std::fs::create_dir_all(dir).map_err(|source| CommandError::Io {
            context: format!("--predictions {}", dir.display()),
            source,
        })?;
        publish.predictions = Some(crate::serving::predictions::PredictionsConfig {
            dir: dir.clone(),
            every: opts.predictions_every.unwrap_or(1),
            features: spec.features.iter().map(|f| f.name.clone()).collect(),
            epoch_seconds: spec.epoch.length_seconds,
        });
    }
    if opts.token_file.is_some() && opts.serve.is_none() {
        return Err(CommandError::Usage(
            "--serve-token-file needs --serve ADDR".into(),
        ));
    }
    if let Some(addr) = &opts.serve {
        let token = match &opts.token_file {
            Some(p) => Some(
                crate::serving::http::read_token(p)
                    .map_err(|e| CommandError::Usage(e.to_string()))?,
            ),
            None => None,
        };
        let (process, servers) = match cluster {
            Some((c, index)) => {
                let (_, port) = addr
                    .rsplit_once(':')
                    .ok_or_else(|| CommandError::Usage("--serve must be HOST:PORT".into()))?;
                let mut servers = Vec::new();
                for (i, p) in c.processes.iter().enumerate() {
                    let host = p.rsplit_once(':').map_or(p.as_str(), |(h, _)| h);
                    servers.push(offset_port(&format!("{host}:{port}"), i, "--serve")?);
                }
                (index, servers)
            }
            None => (0, vec![addr.clone()]),
        };
        let bind = offset_port(addr, process, "--serve")?;
        let listener = crate::serving::http::bind(&bind, token.is_some())
            .map_err(|e| CommandError::Usage(e.to_string()))?;
        let servers = match cluster {
            Some(_) => servers,
            // A single process names the address it bound (port 0 picks one).
            None => vec![listener.local_addr().map_or(bind, |a| a.to_string())],
        };
        let serving = Arc::new(crate::serving::Serving::new(
            spec, process, workers, servers,
        ));
        crate::serving::http::spawn(listener, token, Arc::clone(&serving))
            .map_err(|e| CommandError::Usage(e.to_string()))?;
        publish.serving = Some(serving);
    }
    Ok(publish)
}

/// `run` settings that apply to `kafka://` inputs and outputs (feature `kafka`).
#[derive(Debug, Clone, Default)]
pub struct KafkaRunOptions {
    /// The consumer group (default: the spec's `kafka.group_id`, else `fleetwatch-<spec name>`).
    pub group_id: Option<String>,
    /// Stop once every input partition has been caught up and silent this many seconds.
    pub until_idle: Option<f64>,
    /// Summaries and the end record go to this topic (default: partition 0 of the output topic).
    pub summary_topic: Option<String>,
    /// Partitions of the output topic if it has to be created (default: as many as the first input topic
    /// has, or 1).
    pub output_partitions: Option<u32>,
    /// librdkafka properties as `KEY=VALUE`, over the spec's `[kafka.properties]`
    /// ([`crate::kafka_properties`]).
    pub properties: Vec<String>,
    /// `KEY=PATH`: properties whose value (a secret) is read from a file, over the spec's
    /// `[kafka.secret_files]`.
    pub secret_files: Vec<String>,
}

fn kafka_address(p: &Path) -> Option<&str> {
    p.to_str().filter(|s| s.starts_with("kafka://"))
}

#[cfg(not(feature = "kafka"))]
fn no_kafka(what: &str) -> CommandError {
    CommandError::Usage(format!(
        "{what} is a kafka:// address, but this binary was built without Kafka support \
         (cargo build --release --features kafka)"
    ))
}

/// Decides the run's inputs and outputs from the options (files, or Kafka addresses).
fn endpoints(
    opts: &RunOptions,
    spec: &Spec,
) -> Result<(crate::dataflow::Inputs, crate::dataflow::Outputs), CommandError> {
    use crate::dataflow::{Inputs, Outputs};
    let kafka_in: Vec<&str> = opts
        .inputs
        .iter()
        .filter_map(|p| kafka_address(p))
        .collect();
    let kafka_out = kafka_address(&opts.output);
    let kafka_dead = opts.dead_letter.as_deref().and_then(kafka_address);
    if !kafka_in.is_empty() && kafka_in.len() != opts.inputs.len() {
        return Err(CommandError::Usage(
            "give either files or one kafka://HOST:PORT/TOPIC[,TOPIC...] as --input, not both"
                .into(),
        ));
    }
    if kafka_in.len() > 1 {
        return Err(CommandError::Usage(
            "name several topics in one --input kafka://HOST:PORT/T1,T2".into(),
        ));
    }
    if kafka_dead.is_some() != kafka_out.is_some() && opts.dead_letter.is_some() {
        return Err(CommandError::Usage(
            "a kafka:// --dead-letter goes with a kafka:// --output (and a file with a file)"
                .into(),
        ));
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = spec;
        if let Some(a) = kafka_in.first().or(kafka_out.as_ref()) {
            return Err(no_kafka(a));
        }
        let inputs = opts
            .inputs
            .iter()
            .map(|p| InputFile::detect(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            Inputs::Files(inputs),
            Outputs::Files {
                output: opts.output.clone(),
                dead_letter: opts.dead_letter.clone(),
            },
        ))
    }
    #[cfg(feature = "kafka")]
    {
        use crate::kafka::{KafkaAddress, KafkaOutputConfig};
        let usage = |e: crate::kafka::KafkaIoError| CommandError::Usage(e.to_string());
        // Resolved (secret files read) only when Kafka is used: a replay of files needs none of them.
        let properties = if kafka_in.is_empty() && kafka_out.is_none() {
            crate::kafka_properties::KafkaProperties::default()
        } else {
            crate::kafka_properties::KafkaProperties::resolve(
                &spec.kafka.properties,
                &spec.kafka.secret_files,
                &opts.kafka.properties,
                &opts.kafka.secret_files,
            )
            .map_err(|e| CommandError::Usage(e.to_string()))?
        };
        let mut first_topic_partitions = None;
        let inputs = match kafka_in.first() {
            Some(a) => {
                let mut addr = KafkaAddress::parse(a).map_err(usage)?;
                addr.brokers = addr.brokers.with_properties(properties.clone());
                first_topic_partitions =
                    crate::kafka::partition_count(&addr.brokers, &addr.topics[0]).ok();
                let k = &spec.kafka;
                Inputs::Kafka(crate::sources::kafka::KafkaInput {
                    brokers: addr.brokers,
                    topics: addr.topics,
                    group_id: opts
                        .kafka
                        .group_id
                        .clone()
                        .or_else(|| k.group_id.clone())
                        .unwrap_or_else(|| format!("fleetwatch-{}", spec.name)),
                    until_idle: opts
                        .kafka
                        .until_idle
                        .map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
                    idle_partition: std::time::Duration::from_secs_f64(k.idle_partition_seconds),
                    epoch_timeout: std::time::Duration::from_secs_f64(k.epoch_timeout_seconds),
                })
            }
            None => Inputs::Files(
                opts.inputs
                    .iter()
                    .map(|p| InputFile::detect(p))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let outputs = match kafka_out {
            Some(a) => {
                let mut addr = KafkaAddress::parse(a).map_err(usage)?;
                addr.brokers = addr.brokers.with_properties(properties.clone());
                let topic = addr.topic().map_err(usage)?.to_string();
                let dead_letter_topic = match kafka_dead {
                    Some(d) => {
                        let d = KafkaAddress::parse(d).map_err(usage)?;
                        if d.brokers.bootstrap != addr.brokers.bootstrap {
                            return Err(CommandError::Usage(
                                "the dead-letter topic must live on the output's brokers".into(),
                            ));
                        }
                        Some(d.topic().map_err(usage)?.to_string())
                    }
                    None => None,
                };
                Outputs::Kafka(KafkaOutputConfig {
                    brokers: addr.brokers,
                    topic,
                    summary_topic: opts.kafka.summary_topic.clone(),
                    dead_letter_topic,
                    partitions: opts
                        .kafka
                        .output_partitions
                        .or(first_topic_partitions)
                        .unwrap_or(1)
                        .max(1),
                })
            }
            None => Outputs::Files {
                output: opts.output.clone(),
                dead_letter: opts.dead_letter.clone(),
            },
        };
        Ok((inputs, outputs))
    }
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
    let (inputs, outputs) = endpoints(opts, &spec)?;
    let (timely, process, connect_timeout, publish) = match &opts.layout {
        Layout::Threads(w) => {
            if *w == 0 {
                return Err(CommandError::Usage("--workers must be at least 1".into()));
            }
            let publish = start_serving(&opts.serving, &spec, None, *w)?;
            (timely::Config::process(*w), 0, Duration::ZERO, publish)
        }
        Layout::Cluster { file, index } => {
            let c = ClusterFile::load(file)?;
            let config = c.timely_config(*index)?;
            let publish = start_serving(&opts.serving, &spec, Some((&c, *index)), c.workers)?;
            if c.processes.len() > 1 {
                // A lost peer ends this process with one line and its own exit status, not a panic.
                crate::cluster::install_fault_hook(c.processes.clone(), *index);
            }
            (config, *index, c.connect_timeout(), publish)
        }
    };
    if opts.checkpoint_every == Some(0) {
        return Err(CommandError::Usage(
            "--checkpoint-every must be at least 1".into(),
        ));
    }
    if opts.group_incidents && opts.topology.is_none() && opts.topology_changes.is_none() {
        return Err(CommandError::Usage(
            "--group-incidents needs --topology or --topology-changes".into(),
        ));
    }
    let mut topology = match &opts.topology {
        Some(path) => {
            let t =
                crate::topology::read_topology(path, inputs.names().len() as u32).map_err(|e| {
                    CommandError::Io {
                        context: "--topology".into(),
                        source: std::io::Error::other(e.to_string()),
                    }
                })?;
            tracing::info!(
                placements = t.placements.len(),
                refused = t.dead.len(),
                "topology {} read",
                path.display()
            );
            if t.placements.is_empty() {
                return Err(CommandError::Usage(format!(
                    "--topology {}: no usable row ({} refused)",
                    path.display(),
                    t.dead.len()
                )));
            }
            Some(t)
        }
        None => None,
    };
    if let Some(source) = &opts.topology_changes {
        let input = inputs.names().len() as u32 + u32::from(topology.is_some());
        let feed = topology_changes(source, input, &spec, &opts.kafka)?;
        topology.get_or_insert_with(Default::default).changes = Some(feed);
    }
    let topology = topology.map(Arc::new);
    let shadow = match &opts.shadow {
        Some(sh) => {
            if opts.checkpoint_dir.is_some() {
                return Err(CommandError::Usage(
                    "--shadow cannot be combined with --checkpoint-dir (a shadow variant is not \
                     checkpointed: run the A/B on a replay, or without checkpoints)"
                        .into(),
                ));
            }
            if sh.output == opts.output || opts.dead_letter.as_ref() == Some(&sh.output) {
                return Err(CommandError::Usage(
                    "--shadow-output must be another file than --output and --dead-letter".into(),
                ));
            }
            let shadow_spec = Spec::load(&sh.dataflow)?;
            spec.check_shadow(&shadow_spec).map_err(|m| {
                CommandError::Usage(format!("--shadow {}: {m}", sh.dataflow.display()))
            })?;
            let detector = registry
                .build(&shadow_spec.detector.name, &shadow_spec.detector.params)
                .map_err(|m| {
                    CommandError::Usage(format!(
                        "[detector] in the shadow spec {}: {m}",
                        sh.dataflow.display()
                    ))
                })?;
            Some(crate::dataflow::Shadow {
                spec: shadow_spec,
                detector,
                output: sh.output.clone(),
            })
        }
        None => None,
    };
    let cfg = RunConfig {
        inputs,
        outputs,
        speed: opts.speed,
        reproducible: opts.reproducible,
        detector: Arc::clone(&detector),
        read_budget: DEFAULT_READ_BUDGET,
        max_ahead: DEFAULT_MAX_AHEAD,
        state_size: None,
        checkpoint: opts.checkpoint_dir.as_ref().map(|d| {
            crate::checkpoint::Checkpointing::new(
                d.clone(),
                opts.checkpoint_every.unwrap_or(spec.checkpoint.every),
            )
        }),
        spec,
        stop: Arc::new(crate::stop::Stop::new(opts.signals)),
        connect_timeout,
        topology,
        group_incidents: opts.group_incidents,
        watch: opts.watch.clone(),
        publish,
        shadow,
    };
    Ok(crate::dataflow::run(cfg, timely, process)?)
}

/// Opens `--topology-changes`: a file of change lines, or (feature `kafka`) a Kafka topic.
fn topology_changes(
    source: &str,
    input: u32,
    spec: &Spec,
    kafka: &KafkaRunOptions,
) -> Result<crate::topology::ChangeFeedSpec, CommandError> {
    if source.starts_with("kafka://") {
        #[cfg(feature = "kafka")]
        {
            let mut address = crate::kafka::KafkaAddress::parse(source)
                .map_err(|e| CommandError::Usage(format!("--topology-changes: {e}")))?;
            address
                .topic()
                .map_err(|e| CommandError::Usage(format!("--topology-changes: {e}")))?;
            let properties = crate::kafka_properties::KafkaProperties::resolve(
                &spec.kafka.properties,
                &spec.kafka.secret_files,
                &kafka.properties,
                &kafka.secret_files,
            )
            .map_err(|e| CommandError::Usage(e.to_string()))?;
            address.brokers = address.brokers.with_properties(properties);
            return Ok(crate::topology::ChangeFeedSpec::Kafka { address, input });
        }
        #[cfg(not(feature = "kafka"))]
        {
            let _ = (input, spec, kafka);
            return Err(CommandError::Usage(
                "--topology-changes kafka://…: this build has no Kafka support (build with --features kafka)"
                    .into(),
            ));
        }
    }
    let path = std::path::Path::new(source);
    let feed = crate::topology::read_changes(path, input).map_err(|e| CommandError::Io {
        context: "--topology-changes".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    tracing::info!("topology changes {source} read");
    Ok(feed)
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

/// `fleetwatch eval --alerts [--points] [--telemetry]`: point-wise scoring against customer-level point labels
/// (or, without them, the raises per 1,000 series-days of an unlabelled run), with the robust z-score
/// baseline on the same telemetry when it is given.
pub fn eval_points(
    alerts: &Path,
    points: Option<&Path>,
    telemetry: Option<&Path>,
    baseline_window: usize,
) -> Result<crate::pointeval::PointReport, CommandError> {
    let run = crate::pointeval::read_run_output(alerts)?;
    if run.epochs == 0 {
        return Err(CommandError::Usage(format!(
            "{} has no summary lines; pass a fleetwatch run output",
            alerts.display()
        )));
    }
    let points = points.map(crate::pointeval::read_points).transpose()?;
    let table = telemetry.map(crate::pointeval::read_table).transpose()?;
    let last = match (&points, &table) {
        (Some(p), _) => Some(crate::pointeval::last_points(p)),
        (None, Some(t)) => Some(crate::pointeval::last_rows(t)),
        (None, None) => None,
    };
    let mut report = crate::pointeval::evaluate_points(&run, points.as_ref(), last.as_ref());
    if let (Some(t), Some(p)) = (table.as_ref(), points.as_ref()) {
        report.baseline = Some(crate::pointeval::baseline(
            t,
            p,
            baseline_window,
            report.normal_series_days,
            Some(report.raises_per_1000_series_days),
        ));
    }
    Ok(report)
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
    /// The shadow variant: the embedded spec as it is (the global model off), its figures, and the two
    /// runs' alerts compared.
    pub shadow_eval: EvalReport,
    pub compare: crate::compare::CompareReport,
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
    // The embedded spec with its global model switched on runs; the embedded spec as it is (the model off
    // by default) runs beside it as a shadow variant, on the same records in the same dataflow.
    let write = |name: &str, text: String| -> Result<PathBuf, CommandError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| CommandError::Io {
            context: format!("writing {}", path.display()),
            source,
        })?;
        Ok(path)
    };
    let embedded = crate::spec::EMBEDDED_HOME_WIFI;
    let with_model = embedded.replacen("\nenabled = false\n", "\nenabled = true\n", 1);
    if with_model == embedded {
        return Err(CommandError::Usage(
            "the embedded spec's [global_model] is not `enabled = false` as demo expects".into(),
        ));
    }
    let with_model = write("home-wifi-global-model.toml", with_model)?;
    let without = write("home-wifi.toml", embedded.to_string())?;
    let shadow_output = dir.join("changes-without-global-model.jsonl");
    let opts = RunOptions {
        dataflow: Some(with_model),
        inputs: vec![dir.join("telemetry.jsonl")],
        output: dir.join("changes.jsonl"),
        dead_letter: Some(dir.join("dead-letters.jsonl")),
        layout: Layout::Threads(workers),
        reproducible: false,
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
        shadow: Some(ShadowOptions {
            dataflow: without,
            output: shadow_output.clone(),
        }),
    };
    let run = run(&opts)?;
    let shadow_eval = eval(&dir.join("labels.jsonl"), &shadow_output)?;
    let eval = eval(&dir.join("labels.jsonl"), &opts.output)?;
    let compare = crate::compare::compare_files(&opts.output, &shadow_output)?;
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
        shadow_eval,
        compare,
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

/// `fleetwatch import --dataset DIR --out OUT`: converts a real telemetry dataset (azure-vm-cpu, ms-cloudmon
/// or petshop, detected from its layout) into one directory per set under `OUT` (telemetry.csv, points.csv
/// for labelled sets, spec.toml, set.json); see [`crate::realdata`].
pub fn import(
    dataset: &Path,
    out: &Path,
) -> Result<crate::realdata::ImportReport, crate::realdata::ImportError> {
    crate::realdata::import(dataset, out)
}

/// How `plot` and `report` replay a run's input to watch customers: the run's own settings, so that the
/// replay makes the same predictions, bands and changes (the output is the same for any worker layout).
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub dataflow: Option<PathBuf>,
    pub inputs: Vec<PathBuf>,
    pub topology: Option<PathBuf>,
    pub group_incidents: bool,
    pub workers: usize,
}

/// What a replay saw of the watched customers.
pub struct Replayed {
    pub rows: Vec<crate::watch::WatchRow>,
    pub run: crate::plot::RunLines,
    pub spec: Spec,
    /// Watched customer → its element, from the topology.
    pub elements: std::collections::BTreeMap<String, String>,
}

fn plot_err(e: crate::plot::PlotError) -> CommandError {
    match e {
        crate::plot::PlotError::Usage(m) => CommandError::Usage(m),
        other => CommandError::Io {
            context: "picture".into(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// A scratch path for a replay's output, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Replays the input with a watch on `customers` (`fleetwatch plot`, `fleetwatch report`).
pub fn replay_watching(
    settings: &ReplaySettings,
    customers: &[String],
) -> Result<Replayed, CommandError> {
    let spec = load_spec(settings.dataflow.as_deref())?;
    let mut ids = Vec::with_capacity(customers.len());
    for c in customers {
        let id = crate::keys::CustomerId::parse(c.as_bytes(), b"")
            .map_err(|e| CommandError::Usage(format!("customer {c:?}: {e}")))?;
        ids.push(id);
    }
    let watch = Arc::new(crate::watch::Watch::new(ids));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "fleetwatch-replay-{}-{nanos}.jsonl",
        std::process::id()
    )));
    let opts = RunOptions {
        dataflow: settings.dataflow.clone(),
        inputs: settings.inputs.clone(),
        output: scratch.0.clone(),
        dead_letter: None,
        layout: Layout::Threads(settings.workers),
        reproducible: true,
        speed: None,
        kafka: Default::default(),
        checkpoint_dir: None,
        checkpoint_every: None,
        signals: false,
        topology: settings.topology.clone(),
        topology_changes: None,
        group_incidents: settings.group_incidents,
        watch: Some(Arc::clone(&watch)),
        serving: Default::default(),
        shadow: None,
    };
    if opts.inputs.iter().any(|p| kafka_address(p).is_some()) {
        return Err(CommandError::Usage(
            "pictures replay a recorded topic or CSV file; record a Kafka topic first (fleetwatch record)"
                .into(),
        ));
    }
    run(&opts)?;
    let lines = crate::plot::read_run_lines(&scratch.0).map_err(plot_err)?;
    let mut elements = std::collections::BTreeMap::new();
    if let Some(path) = &settings.topology {
        let t = crate::topology::read_topology(path, 0).map_err(|e| CommandError::Io {
            context: "--topology".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        for p in &t.placements {
            if watch.contains(&p.customer) {
                elements.insert(p.customer.to_string(), p.element.as_str().to_string());
            }
        }
    }
    Ok(Replayed {
        rows: watch.take(),
        run: lines,
        spec,
        elements,
    })
}

/// Options of `fleetwatch plot`.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    pub replay: ReplaySettings,
    pub customer: String,
    pub features: crate::plot::FeatureChoice,
    /// Unix seconds, `[from, to)`; the whole run by default.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// The generator's labels.jsonl, or point labels CSV (`customer_id,ts,label`).
    pub labels: Option<PathBuf>,
    pub out: PathBuf,
}

/// What `plot` drew.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlotReport {
    pub customer: String,
    pub element: Option<String>,
    pub features: Vec<String>,
    pub points: usize,
    pub alert_spans: usize,
    pub incident_spans: usize,
    pub label_spans: usize,
    pub out: PathBuf,
}

fn picture_of(
    r: &Replayed,
    customer: &str,
    features: &crate::plot::FeatureChoice,
    from: Option<i64>,
    to: Option<i64>,
    labels: Option<&Path>,
) -> Result<crate::plot::CustomerPicture, CommandError> {
    let names: Vec<String> = r.spec.features.iter().map(|f| f.name.clone()).collect();
    let labels = match labels {
        Some(p) => crate::plot::read_customer_labels(p, customer, r.run.epoch_len.max(1))
            .map_err(plot_err)?,
        None => Default::default(),
    };
    let pic = crate::plot::assemble(&crate::plot::PictureInput {
        customer,
        element: r.elements.get(customer).map(String::as_str),
        feature_names: &names,
        rows: &r.rows,
        run: &r.run,
        labels: &labels,
        from,
        to,
        features,
    })
    .map_err(plot_err)?;
    Ok(pic)
}

fn write_file(path: &Path, text: &str) -> Result<(), CommandError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CommandError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| CommandError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}

/// `fleetwatch plot`: replays the input watching one customer and draws its features as an SVG.
pub fn plot(opts: &PlotOptions) -> Result<PlotReport, CommandError> {
    let r = replay_watching(&opts.replay, std::slice::from_ref(&opts.customer))?;
    if r.rows.is_empty() && !r.run.changes.iter().any(|c| c.customer == opts.customer) {
        return Err(CommandError::Usage(format!(
            "customer {} has no scored observation and no change in the input",
            opts.customer
        )));
    }
    let pic = picture_of(
        &r,
        &opts.customer,
        &opts.features,
        opts.from,
        opts.to,
        opts.labels.as_deref(),
    )?;
    let svg = crate::plot::draw_svg(&pic).map_err(plot_err)?;
    write_file(&opts.out, &svg)?;
    Ok(PlotReport {
        customer: pic.customer.clone(),
        element: pic.element.clone(),
        features: pic.features.iter().map(|f| f.name.clone()).collect(),
        points: pic.features.iter().map(|f| f.points.len()).sum(),
        alert_spans: pic.features.iter().map(|f| f.alerts.len()).sum::<usize>()
            + pic.customer_alerts.len()
            + pic.silences.len(),
        incident_spans: pic.incidents.len(),
        label_spans: pic.features.iter().map(|f| f.labels.len()).sum::<usize>()
            + pic.customer_labels.len(),
        out: opts.out.clone(),
    })
}

/// Options of `fleetwatch report`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The run's output (`fleetwatch run --output`).
    pub changes: PathBuf,
    /// The directory the page (`index.html`) and its pictures (`plots/`) go to.
    pub out: PathBuf,
    /// Rows of the customer and element tables.
    pub top: usize,
    /// With the run's input: draw the top customers' pictures (one replay watching them all).
    pub replay: Option<ReplaySettings>,
    pub labels: Option<PathBuf>,
}

/// What `report` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportSummary {
    pub page: PathBuf,
    pub plots: Vec<PathBuf>,
    pub raised: u64,
    pub incidents_raised: u64,
    /// Whether the replay's changes were the run's (false: the input, spec or topology given differ from
    /// the run's, and the pictures show the replay).
    pub replay_matches: Option<bool>,
}

/// `fleetwatch report`: a self-contained HTML page of a run, with pictures of its top customers when the
/// run's input is given.
pub fn report(opts: &ReportOptions) -> Result<ReportSummary, CommandError> {
    let lines = crate::plot::read_run_lines(&opts.changes).map_err(plot_err)?;
    if lines.summaries.is_empty() {
        return Err(CommandError::Usage(format!(
            "{} has no summary lines; pass a fleetwatch run output",
            opts.changes.display()
        )));
    }
    let summary = crate::report::summarise(&lines);
    let mut links = crate::report::PlotLinks::new();
    let mut plots = Vec::new();
    let mut replay_matches = None;
    if let Some(settings) = &opts.replay {
        let top: Vec<String> = summary
            .customers
            .iter()
            .filter(|c| c.raises > 0)
            .take(opts.top)
            .map(|c| c.customer.clone())
            .collect();
        if !top.is_empty() {
            let r = replay_watching(settings, &top)?;
            replay_matches =
                Some(r.run.changes == lines.changes && r.run.incidents == lines.incidents);
            if replay_matches == Some(false) {
                tracing::warn!(
                    "the replay's changes differ from {}: the input, spec or topology given are not the run's; \
                     the pictures show the replay",
                    opts.changes.display()
                );
            }
            for c in &top {
                let pic = picture_of(
                    &r,
                    c,
                    &crate::plot::FeatureChoice::Eventful,
                    None,
                    None,
                    opts.labels.as_deref(),
                )?;
                let svg = crate::plot::draw_svg(&pic).map_err(plot_err)?;
                let rel = format!("plots/{c}.svg");
                let path = opts.out.join(&rel);
                write_file(&path, &svg)?;
                links.insert(c.clone(), rel);
                plots.push(path);
            }
        }
    }
    let title = opts.changes.display().to_string();
    let page = crate::report::render_html(&summary, &title, opts.top, &links).map_err(plot_err)?;
    let page_path = opts.out.join("index.html");
    write_file(&page_path, &page)?;
    Ok(ReportSummary {
        page: page_path,
        plots,
        raised: summary.raised,
        incidents_raised: summary.incidents_raised,
        replay_matches,
    })
}
