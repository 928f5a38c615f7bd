//! The whole pipeline as one timely dataflow, and `run`, which executes it on a worker/process layout.
//!
//! ```text
//!  Source (per worker: its partitions; files or Kafka) ──dead letters, counts─────────────────────┐
//!     │ logs @ epoch                                                                              │
//!     ▼ exchange by customer                                                                      │
//!  SeriesModel ── owns the series-state arrangement (key customer, Abelian block diffs) ──▶ state │
//!     │   ▲                                                                                       │
//!     │   └── cohort priors ◀── broadcast ◀── feedback(+1 epoch) ◀── cohort differences           │
//!     │ open-anomaly differences, evidence, counts, duplicate dead letters                        │
//!     ▼                                                                                           │
//!  arrange_by_key (open anomalies, keyed by customer) ── its changes ──▶ Sink (worker 0) ◀────────┘
//!                                                       JSON lines: changes + summary per epoch,
//!                                                       to files or Kafka topics
//!  Sink ── "acknowledged" frontier (a held capability: every epoch below it is durable) ──▶ probe
//!       ──▶ every source (Kafka commits its input offsets there)
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Exchange as _;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{
    Capability, Concat, ConnectLoop, Feedback, Input, Inspect, Probe,
};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::arrangement::{
    ModelCheckpoint, ModelCounts, ModelRun, PendingWrites, Restored, series_model,
};
use crate::checkpoint::{
    CheckpointError, Checkpointing, Completed, Coordinator, Loaded, RunIdentity, SinkCheckpoint,
    SinkSnapshot,
};
use crate::incidents::Annotation;
use crate::keys::CustomerId;
use crate::model::Detector;
use crate::model::cohort::CohortDelta;
use crate::model::customer::{Evidence, ModelConfig, OpenAnomaly};
use crate::model::incident::IncidentChange;
use crate::record::{DeadLetter, LogN, MAX_FEATURES, NARROW};
use crate::sinks::{
    EpochSummary, FileOutput, LineKind, Output, OutputError, OutputFormat, dead_letter_line,
    derive_changes,
};
use crate::sources::intake::SourceSnaps;
use crate::sources::{FileSource, InputFile, Source, SourceCounts, SourceError};
use crate::spec::Spec;
use crate::stop::{Agreement, Stop};
use crate::topology::Placement;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("timely could not start: {0}")]
    Timely(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Worker(String),
}

/// Where a run reads.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// Recorded topics and CSV files, read in order.
    Files(Vec<InputFile>),
    /// Kafka topics, consumed live.
    #[cfg(feature = "kafka")]
    Kafka(crate::sources::kafka::KafkaInput),
}

impl Inputs {
    /// The inputs' names, as dead letters name them.
    pub fn names(&self) -> Vec<String> {
        match self {
            Inputs::Files(f) => f.iter().map(|i| i.path.display().to_string()).collect(),
            #[cfg(feature = "kafka")]
            Inputs::Kafka(k) => k.names(),
        }
    }
}

/// Where a run writes.
#[derive(Debug, Clone)]
pub enum Outputs {
    /// Changes and summaries to `output`, dead letters to `dead_letter`.
    Files {
        output: PathBuf,
        dead_letter: Option<PathBuf>,
    },
    /// Kafka topics.
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::KafkaOutputConfig),
}

/// Everything a run needs.
#[derive(Clone)]
pub struct RunConfig {
    pub spec: Spec,
    pub inputs: Inputs,
    pub outputs: Outputs,
    /// Pace a replay at this many times event time (`None`: as fast as possible).
    pub speed: Option<f64>,
    /// Leave out wall-clock fields so output can be compared byte for byte.
    pub reproducible: bool,
    pub detector: Arc<dyn Detector>,
    /// Lines a source reads per activation.
    pub read_budget: usize,
    /// Epochs the sources may read ahead of the last completed one.
    pub max_ahead: u64,
    /// Where to count the series-state arrangement's size at the end (benchmarks).
    pub state_size: Option<Arc<crate::arrangement::StateSize>>,
    /// Write checkpoints there, and resume from the last complete one found there.
    pub checkpoint: Option<Checkpointing>,
    /// A graceful stop (SIGTERM / SIGINT, or `Stop::request`): the run ends after an epoch every worker
    /// agrees on, with a checkpoint there (see [`crate::stop`]).
    pub stop: Arc<Stop>,
    /// Cluster layouts: how long to wait for the peer processes at start.
    pub connect_timeout: Duration,
    /// The fleet's topology (`--topology`): network-element incidents, and the members' alerts annotated
    /// with them.
    pub topology: Option<Arc<crate::topology::Topology>>,
    /// With a topology: a member's alert raised under its element's open incident is not written (the
    /// incident stands for it), nor are its later changes.
    pub group_incidents: bool,
    /// Customers whose every scored observation is kept (`fleetwatch plot`, [`crate::watch`]).
    pub watch: Option<Arc<crate::watch::Watch>>,
    /// `--serve` and `--predictions`: the epoch views the series model publishes, and the open alerts the
    /// sink keeps for queries ([`crate::serving`]).
    pub publish: crate::serving::Publish,
    /// `--shadow`: a second spec's model on the same records, its changes to its own file.
    pub shadow: Option<Shadow>,
}

/// A shadow variant (`run --shadow SPEC --shadow-output FILE`): a second series model (another spec's
/// parameters, detector or global model) in the same dataflow, fed by the same source and the same exchange
/// by customer, with its own cohort loop, arrangement of open anomalies and sink. Its output has the same
/// lines as the run's (changes, summaries, end) and no dead letters (the run writes those). The spec must
/// pass [`Spec::check_shadow`]; a shadow has no checkpoints, incidents, serving or metrics of its own.
#[derive(Clone)]
pub struct Shadow {
    pub spec: Spec,
    pub detector: Arc<dyn Detector>,
    pub output: PathBuf,
}

/// Totals of a run, as seen by the worker that wrote the output.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunReport {
    /// True in the process that wrote the output (the totals below are meaningful only there).
    pub writer: bool,
    pub epochs: u64,
    pub records: u64,
    pub late: u64,
    pub dead_lettered: u64,
    pub series_scored: u64,
    pub changes: u64,
    /// Wall seconds per epoch, in order (time between consecutive epoch completions at the sink).
    pub epoch_seconds: Vec<f64>,
    pub wall_seconds: f64,
    /// The checkpoint epoch this run resumed from.
    pub restored_from: Option<u64>,
    /// Seconds spent loading that checkpoint before the dataflow started.
    pub restore_seconds: f64,
    /// Checkpoints completed (process 0).
    pub checkpoints: Vec<Completed>,
    /// The epoch each entry of `epoch_seconds` belongs to.
    pub epoch_ids: Vec<u64>,
    /// A graceful stop: the epoch the run ended after (a checkpoint there, with `--checkpoint-dir`).
    pub stopped_after: Option<u64>,
    /// The shadow variant's totals (`--shadow`), as its sink counted them.
    pub shadow: Option<Box<RunReport>>,
}

type Shared<T> = Arc<Mutex<Option<T>>>;

pub(crate) fn record_error(slot: &Shared<String>, msg: String) {
    tracing::error!("{msg}");
    if let Ok(mut g) = slot.lock()
        && g.is_none()
    {
        *g = Some(msg);
    }
}

/// Runs the pipeline on a timely configuration (threads, or one process of a cluster).
pub fn run(cfg: RunConfig, timely: timely::Config, process: usize) -> Result<RunReport, RunError> {
    // The pipeline is instantiated at the spec's width: a log carries as many values as the spec can have.
    if cfg.spec.features.len() <= NARROW {
        run_width::<NARROW>(cfg, timely, process)
    } else {
        run_width::<MAX_FEATURES>(cfg, timely, process)
    }
}

fn run_width<const N: usize>(
    cfg: RunConfig,
    timely: timely::Config,
    process: usize,
) -> Result<RunReport, RunError> {
    // Validate inputs up front (readable, CSV headers map), so usage errors are reported before any work.
    #[allow(irrefutable_let_patterns)] // (refutable with the `kafka` feature)
    if let Inputs::Files(files) = &cfg.inputs {
        for input in files {
            FileSource::<N>::new(&cfg.spec, vec![input.clone()], 0, usize::MAX)?;
        }
    }
    // A checkpoint to resume from (every process loads and verifies the same one).
    let load_started = Instant::now();
    let identity = RunIdentity {
        spec: cfg.spec.name.clone(),
        features: cfg.spec.features.iter().map(|f| f.name.clone()).collect(),
        detector: cfg.detector.name().to_string(),
        epoch_seconds: cfg.spec.epoch.length_seconds,
        inputs: cfg.inputs.names(),
        topology: cfg.topology.is_some(),
        global_model: cfg.spec.global.is_some(),
    };
    let loaded: Option<Arc<Loaded>> = match &cfg.checkpoint {
        Some(ck) => crate::checkpoint::load_latest(&ck.dir, &identity)?.map(Arc::new),
        None => None,
    };
    if let Some(l) = &loaded {
        tracing::info!(
            "resuming from the checkpoint at epoch {} ({}), taken by {} workers",
            l.manifest.epoch,
            l.dir.display(),
            l.manifest.workers
        );
    }
    let restore_seconds = load_started.elapsed().as_secs_f64();
    // Process 0 writes the output; open it now so a bad path or an unreachable broker fails fast.
    let output: Shared<(Box<dyn Output>, Option<u64>)> = Arc::new(Mutex::new(None));
    if process == 0 {
        let opened: (Box<dyn Output>, Option<u64>) = match &cfg.outputs {
            Outputs::Files {
                output,
                dead_letter,
            } => match loaded.as_ref() {
                Some(l) => match &l.manifest.output {
                    Some(at) => (
                        Box::new(FileOutput::resume(output, dead_letter.as_deref(), at)?),
                        None,
                    ),
                    None => {
                        return Err(RunError::Checkpoint(CheckpointError::Mismatch {
                            path: l.dir.display().to_string(),
                            message:
                                "it was written by a run with a Kafka output, this run writes \
                                      files"
                                    .into(),
                        }));
                    }
                },
                None => (
                    Box::new(FileOutput::create(output, dead_letter.as_deref())?),
                    None,
                ),
            },
            #[cfg(feature = "kafka")]
            Outputs::Kafka(k) => {
                let out = crate::kafka::KafkaOutput::connect(k)?;
                let written = out.written_through();
                (Box::new(out), written)
            }
        };
        if let Ok(mut g) = output.lock() {
            *g = Some(opened);
        }
    }
    let shadow_output: Shared<(Box<dyn Output>, Option<u64>)> = Arc::new(Mutex::new(None));
    if let Some(sh) = &cfg.shadow {
        if let Err(m) = cfg.spec.check_shadow(&sh.spec) {
            return Err(RunError::Worker(format!(
                "the shadow spec {}: {m}",
                sh.spec.name
            )));
        }
        if cfg.checkpoint.is_some() {
            return Err(RunError::Worker(
                "a shadow variant is not checkpointed: run it without --checkpoint-dir".into(),
            ));
        }
        if process == 0
            && let Ok(mut g) = shadow_output.lock()
        {
            *g = Some((Box::new(FileOutput::create(&sh.output, None)?), None));
        }
    }
    let shadow_report: Shared<RunReport> = Arc::new(Mutex::new(None));
    // Every recorded-topic input is read once per process and shared by its workers.
    let local_workers = match &timely.communication {
        timely::CommunicationConfig::Thread => 1,
        timely::CommunicationConfig::Process(n) | timely::CommunicationConfig::ProcessBinary(n) => {
            *n
        }
        timely::CommunicationConfig::Cluster { threads, .. } => *threads,
    };
    let peers_total = match &timely.communication {
        timely::CommunicationConfig::Cluster {
            threads, addresses, ..
        } => threads * addresses.len(),
        _ => local_workers,
    };
    let n_inputs = cfg.inputs.names().len();
    let starts = loaded
        .as_ref()
        .map(|l| crate::sources::resume_starts(&l.sources, n_inputs))
        .unwrap_or_else(|| vec![Default::default(); n_inputs]);
    let shared_inputs = match &cfg.inputs {
        Inputs::Files(files) => {
            let paths: Vec<&std::path::Path> = files.iter().map(|f| f.path.as_path()).collect();
            let at: Vec<crate::sources::chunks::Start> = starts.iter().map(|s| s.0).collect();
            Some(crate::sources::chunks::SharedInputs::new(
                &paths,
                local_workers,
                &at,
            ))
        }
        #[cfg(feature = "kafka")]
        Inputs::Kafka(_) => None,
    };
    let errors: Shared<String> = Arc::new(Mutex::new(None));
    let report: Shared<RunReport> = Arc::new(Mutex::new(None));
    let pending: PendingWrites = Arc::new(Mutex::new(Vec::new()));
    let coordinator = match (&cfg.checkpoint, process) {
        (Some(ck), 0) => Some(Coordinator::start(ck.clone(), peers_total, identity)),
        _ => None,
    };
    let to_coordinator = coordinator.as_ref().and_then(|c| c.sender());
    let restored_from = loaded.as_ref().map(|l| l.manifest.epoch);
    // The loaded checkpoint is handed to the workers and freed once the last of them has taken its share
    // (it can be gigabytes).
    let loaded = Arc::new(Mutex::new((loaded, local_workers)));
    let started = Instant::now();
    let cfg_stop = Arc::clone(&cfg.stop);
    let cfg_shadow = cfg.shadow.is_some();
    {
        let pending = Arc::clone(&pending);
        let to_coordinator = to_coordinator.clone();
        let errors = Arc::clone(&errors);
        let report = Arc::clone(&report);
        let shadow_report = Arc::clone(&shadow_report);
        let (builders, others) =
            crate::cluster::communication(&timely.communication, cfg.connect_timeout)?;
        let worker_config = timely.worker.clone();
        let guards =
            timely::execute::execute_from(builders, others, worker_config, move |worker| {
                let index = worker.index();
                let peers = worker.peers();
                let loaded: Option<Arc<Loaded>> = match loaded.lock() {
                    Ok(mut g) => {
                        let l = g.0.clone();
                        g.1 = g.1.saturating_sub(1);
                        if g.1 == 0 {
                            g.0 = None;
                        }
                        l
                    }
                    Err(_) => None,
                };
                let source: Result<Box<dyn Source<N>>, SourceError> = match &cfg.inputs {
                    Inputs::Files(files) => {
                        FileSource::<N>::new(&cfg.spec, files.clone(), index, peers).map(|mut s| {
                            if let Some(shared) = &shared_inputs {
                                // (Timely numbers the workers of process p as p·threads + local index.)
                                s = s.with_shared(shared.for_slot(index % local_workers.max(1)));
                            }
                            if let Some(l) = &loaded {
                                s.restore(&l.sources, starts.clone());
                            }
                            Box::new(s) as Box<dyn Source<N>>
                        })
                    }
                    #[cfg(feature = "kafka")]
                    Inputs::Kafka(k) => {
                        let resume = loaded.as_ref().map_or(&[][..], |l| &l.sources[..]);
                        crate::sources::kafka::KafkaSource::<N>::new(
                            &cfg.spec, k, index, peers, resume,
                        )
                        .map(|s| Box::new(s) as Box<dyn Source<N>>)
                    }
                };
                // Worker 0 re-delivers what the earlier workers (of any layout) had read past the
                // checkpoint.
                let source = source.map(|mut s| {
                    if let Some(l) = &loaded
                        && index == 0
                    {
                        let bad: usize = l
                            .sources
                            .iter()
                            .map(|snap| s.intake().redeliver(snap))
                            .sum();
                        if bad > 0 {
                            record_error(
                                &errors,
                                format!(
                                    "checkpoint {}: {bad} retained logs could not be decoded",
                                    l.dir.display()
                                ),
                            );
                        }
                    }
                    s
                });
                let source = Rc::new(RefCell::new(match source {
                    Ok(s) => Some(s),
                    Err(e) => {
                        record_error(&errors, e.to_string());
                        None
                    }
                }));
                let sink_output = if index == 0 {
                    output.lock().ok().and_then(|mut g| g.take())
                } else {
                    None
                };
                let shadow_sink = ShadowSink {
                    output: if index == 0 {
                        shadow_output.lock().ok().and_then(|mut g| g.take())
                    } else {
                        None
                    },
                    report: Arc::clone(&shadow_report),
                };
                let probe = ProbeHandle::new();
                let snaps: Rc<RefCell<SourceSnaps>> = Rc::default();
                let ckpt = cfg.checkpoint.as_ref().map(|ck| ModelCheckpoint {
                    cfg: ck.clone(),
                    worker: index,
                    peers,
                    pending: Arc::clone(&pending),
                    snaps: Rc::clone(&snaps),
                });
                let restored = loaded.as_ref().and_then(|l| {
                    match Restored::take(
                        l,
                        index,
                        peers,
                        cfg.spec.features.len(),
                        crate::state::blocks_for(
                            cfg.spec.features.len(),
                            cfg.spec.global.is_some(),
                        ),
                    ) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            record_error(&errors, e.to_string());
                            None
                        }
                    }
                });
                let restored_incidents = loaded
                    .as_ref()
                    .filter(|_| cfg.topology.is_some())
                    .map(|l| crate::incidents::RestoredIncidents::take(l, index, peers));
                let incident_ckpt =
                    cfg.checkpoint
                        .as_ref()
                        .map(|ck| crate::incidents::IncidentCheckpoint {
                            cfg: ck.clone(),
                            worker: index,
                            peers,
                            pending: Arc::clone(&pending),
                            stop: Arc::clone(&cfg.stop),
                        });
                let resume = loaded
                    .as_ref()
                    .map(|l| (l.manifest.epoch, l.manifest.sink.clone()));
                drop(loaded);
                let agree: Rc<RefCell<Agreement>> = Rc::default();
                let main_dataflow = worker.next_dataflow_index();
                worker.dataflow::<u64, _, _>(|scope| {
                    build(
                        scope,
                        &cfg,
                        Rc::clone(&source),
                        sink_output,
                        &probe,
                        Arc::clone(&errors),
                        Arc::clone(&report),
                        started,
                        Rc::clone(&agree),
                        shadow_sink,
                        Checkpoints {
                            model: ckpt,
                            restored,
                            incidents: incident_ckpt,
                            restored_incidents,
                            snaps,
                            resume,
                            to_coordinator: if index == 0 {
                                to_coordinator.clone()
                            } else {
                                None
                            },
                        },
                    );
                });
                // A second, tiny dataflow carries the workers' stop proposals to every worker.
                let mut proposals = Some(worker.dataflow::<u64, _, _>(|scope| {
                    let (input, stream) = scope.new_input::<Vec<u64>>();
                    let heard = Rc::clone(&agree);
                    stream
                        .broadcast()
                        .inspect(move |p: &u64| heard.borrow_mut().heard.push(*p));
                    input
                }));
                loop {
                    if proposals.is_some() {
                        let wants = agree.borrow().should_propose(cfg.stop.is_requested());
                        let floor = agree.borrow().floor;
                        if wants && let Some(p) = floor {
                            agree.borrow_mut().proposed = Some(p);
                            if let Some(mut input) = proposals.take() {
                                input.send(p);
                            }
                            tracing::info!(
                                "worker {index}: stop requested, proposing to stop after epoch {p}"
                            );
                        } else if probe.done()
                            && !worker.installed_dataflows().contains(&main_dataflow)
                        {
                            // (The probe also reads done before the first progress reaches it.)
                            proposals = None;
                        }
                    }
                    if agree.borrow().holding()
                        && let Some(s) = agree.borrow_mut().decide(peers)
                    {
                        // (Every worker of the process decides the same epoch.)
                        cfg.stop.settle(s);
                        tracing::info!("worker {index}: stopping after epoch {s}");
                    }
                    if !worker.step_or_park(Some(Duration::from_millis(50))) {
                        break;
                    }
                }
                // The dataflow is complete, so the sink has made every output durable (it held the
                // acknowledged frontier until then): unless something failed, the source commits all it read
                // (after a stop: all it read up to the stop epoch).
                if errors.lock().map(|g| g.is_none()).unwrap_or(false)
                    && let Some(src) = source.borrow_mut().as_mut()
                    && src.wants_acks()
                {
                    src.acknowledged(cfg.stop.epoch().map_or(u64::MAX, |s| s + 1));
                }
            })
            .map_err(RunError::Timely)?;
        for r in guards.join() {
            if let Err(e) = r {
                return Err(RunError::Worker(format!("a worker failed: {e}")));
            }
        }
    }
    // Checkpoint parts still being written, then (process 0) their manifests.
    let handles: Vec<_> = pending
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for h in handles {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("a checkpoint part failed: {e}"),
            Err(_) => tracing::error!("a checkpoint writer panicked"),
        }
    }
    drop(to_coordinator);
    let checkpoints = coordinator.map(|c| c.finish()).unwrap_or_default();
    if let Some(e) = errors.lock().ok().and_then(|mut g| g.take()) {
        return Err(RunError::Worker(e));
    }
    let mut r = report
        .lock()
        .ok()
        .and_then(|mut g| g.take())
        .unwrap_or_default();
    r.writer = process == 0;
    r.wall_seconds = started.elapsed().as_secs_f64();
    r.restored_from = restored_from;
    r.restore_seconds = restore_seconds;
    if r.stopped_after.is_none() && process != 0 {
        r.stopped_after = cfg_stop.epoch();
    }
    r.checkpoints = checkpoints;
    if cfg_shadow {
        r.shadow = shadow_report
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .map(|mut s| {
                s.writer = process == 0;
                s.wall_seconds = r.wall_seconds;
                Box::new(s)
            });
    }
    Ok(r)
}

/// The shadow variant's sink: its output (process 0's first worker) and where it leaves its totals.
struct ShadowSink {
    output: Option<(Box<dyn Output>, Option<u64>)>,
    report: Shared<RunReport>,
}

/// A worker's part in checkpoints, as `build` wires it.
struct Checkpoints {
    model: Option<ModelCheckpoint>,
    restored: Option<Restored>,
    /// The incident operator's (runs with a topology).
    incidents: Option<crate::incidents::IncidentCheckpoint>,
    restored_incidents: Option<crate::incidents::RestoredIncidents>,
    snaps: Rc<RefCell<SourceSnaps>>,
    /// The checkpoint epoch resumed from and the sink's totals then.
    resume: Option<(u64, SinkSnapshot)>,
    to_coordinator: Option<std::sync::mpsc::Sender<SinkCheckpoint>>,
}

#[allow(clippy::too_many_arguments)]
fn build<'scope, const N: usize>(
    scope: Scope<'scope, u64>,
    cfg: &RunConfig,
    source: SharedSource<N>,
    sink_output: Option<(Box<dyn Output>, Option<u64>)>,
    probe: &ProbeHandle<u64>,
    errors: Shared<String>,
    report: Shared<RunReport>,
    started: Instant,
    agree: Rc<RefCell<Agreement>>,
    shadow_sink: ShadowSink,
    ck: Checkpoints,
) {
    let acked = ProbeHandle::new();
    let (logs, src_dead, src_counts) = source_operator(
        scope,
        source,
        SourceControl {
            completed: probe.clone(),
            acked: acked.clone(),
            budget: cfg.read_budget,
            max_ahead: cfg.max_ahead,
            speed: cfg.speed.filter(|s| *s > 0.0),
            epoch_len: cfg.spec.epoch.length_seconds as f64,
            checkpoint: cfg
                .checkpoint
                .clone()
                .map(|c| (c, Rc::clone(&ck.snaps), ck.resume.as_ref().map(|r| r.0))),
            agree,
        },
        Arc::clone(&errors),
    );
    // With a shadow, the logs cross to their customer's worker once, here, and both models' own exchanges
    // find every log already in place (nothing more leaves the worker).
    let logs = if cfg.shadow.is_some() {
        logs.exchange(|l: &LogN<N>| crate::keys::customer_route(&l.customer))
    } else {
        logs
    };
    let (cohort_handle, cohort_cycle) = scope.feedback::<Vec<CohortDelta>>(1);
    // The topology as a differential collection: worker 0 introduces every placement at time 0 and each
    // change at its epoch, once the sources have closed it (`topology_feed.rs`).
    let topology = cfg.topology.as_ref().map(|t| {
        let f = crate::topology_feed::topology_feed(
            scope,
            Arc::clone(t),
            cfg.spec.epoch.length_seconds,
            src_counts.clone(),
            ck.resume.as_ref().map(|r| r.0),
            Arc::clone(&cfg.stop),
            Arc::clone(&errors),
        );
        (f.placements, f.dead, f.members)
    });
    let model = series_model(
        logs.clone(),
        cohort_cycle,
        topology.as_ref().map(|t| t.0.clone()),
        ModelConfig::from_spec(&cfg.spec),
        Arc::clone(&cfg.detector),
        ModelRun {
            size: cfg.state_size.clone(),
            checkpoint: ck.model,
            restored: ck.restored,
            stop: Some(Arc::clone(&cfg.stop)),
            watch: cfg.watch.clone(),
            publish: cfg.publish.clone(),
        },
    );
    model.cohort.broadcast().connect_loop(cohort_handle);
    let counts = model.counts.probe_with(probe);
    // The open anomalies as a differential collection, arranged by customer; what leaves is its change.
    let open = model.anomalies.as_collection().arrange_by_key();
    let changes = open
        .clone()
        .as_collection(|k: &CustomerId, v: &OpenAnomaly| (*k, *v));
    let mut dead = src_dead.clone().concat(model.dead);
    // Incidents: the members' open anomalies per element (an incremental join with the topology), and the
    // model's per-element sums, stepped per element.
    let (incident_params, region_params) = cfg.spec.incidents.params();
    let incidents = topology.map(|(topo, topo_dead, member_counts)| {
        dead = dead.clone().concat(topo_dead);
        let by_customer = topo
            .clone()
            .as_collection()
            .map(|p: Placement| (p.customer, (p.element, p.region)))
            .arrange_by_key();
        let members = open.join_core(by_customer, |c: &CustomerId, a: &OpenAnomaly, at| {
            Some((*at, (*c, *a)))
        });
        crate::incidents::incidents(
            model.elements,
            members.inner,
            member_counts,
            cfg.spec.features.len(),
            incident_params,
            region_params,
            ck.incidents,
            ck.restored_incidents,
        )
    });
    let format = OutputFormat {
        features: cfg.spec.features.iter().map(|f| f.name.clone()).collect(),
        model: cfg.detector.name().to_string(),
        epoch_len: cfg.spec.epoch.length_seconds as i64,
        reproducible: cfg.reproducible,
    };
    let mut inputs = cfg.inputs.names();
    if let Some(t) = &cfg.topology {
        if !t.path.is_empty() {
            inputs.push(t.path.clone());
        }
        if let Some(c) = &t.changes {
            inputs.push(c.name());
        }
    }
    if let Some(sh) = &cfg.shadow {
        let (handle, cycle) = scope.feedback::<Vec<CohortDelta>>(1);
        let shadow = series_model(
            logs,
            cycle,
            None,
            ModelConfig::from_spec(&sh.spec),
            Arc::clone(&sh.detector),
            ModelRun {
                stop: Some(Arc::clone(&cfg.stop)),
                ..ModelRun::default()
            },
        );
        shadow.cohort.broadcast().connect_loop(handle);
        // The source reads ahead of the slower of the two models.
        let counts = shadow.counts.probe_with(probe);
        let changes = shadow
            .anomalies
            .as_collection()
            .arrange_by_key()
            .as_collection(|k: &CustomerId, v: &OpenAnomaly| (*k, *v));
        let format = OutputFormat {
            model: sh.detector.name().to_string(),
            ..format.clone()
        };
        sink(
            changes.inner,
            shadow.evidence,
            counts,
            src_counts.clone(),
            src_dead.concat(shadow.dead),
            None,
            SinkState::new(
                format,
                inputs.clone(),
                shadow_sink.output,
                Arc::clone(&errors),
                shadow_sink.report,
                started,
            )
            .with_stop(Arc::clone(&cfg.stop))
            .without_metrics(),
        )
        // Kafka commits wait for the shadow's output too.
        .probe_with(&acked);
    }
    sink(
        changes.inner,
        model.evidence,
        counts,
        src_counts,
        dead,
        incidents,
        SinkState::new(format, inputs, sink_output, errors, report, started)
            .with_checkpoints(cfg.checkpoint.clone(), ck.to_coordinator, ck.resume)
            .with_stop(Arc::clone(&cfg.stop))
            .with_grouping(cfg.group_incidents)
            .with_serving(cfg.publish.serving.clone()),
    )
    .probe_with(&acked);
}

/// A worker's source, shared by its operator and `run` (which makes the last commit).
type SharedSource<const N: usize> = Rc<RefCell<Option<Box<dyn Source<N>>>>>;

/// What steers a source operator besides its source.
struct SourceControl {
    /// The model's progress (flow control).
    completed: ProbeHandle<u64>,
    /// The sink's acknowledged frontier (commits).
    acked: ProbeHandle<u64>,
    budget: usize,
    max_ahead: u64,
    speed: Option<f64>,
    epoch_len: f64,
    /// Checkpoints: where the source's snapshots go, and the epoch a restored run resumed from.
    checkpoint: Option<(Checkpointing, Rc<RefCell<SourceSnaps>>, Option<u64>)>,
    /// A graceful stop: this worker's floor goes out through it, the agreed stop epoch comes back.
    agree: Rc<RefCell<Agreement>>,
}

/// The per-worker source operator: outputs logs, dead letters and per-epoch counts.
#[allow(clippy::type_complexity)]
fn source_operator<'scope, const N: usize>(
    scope: Scope<'scope, u64>,
    source: SharedSource<N>,
    ctl: SourceControl,
    errors: Shared<String>,
) -> (
    Stream<'scope, u64, Vec<LogN<N>>>,
    Stream<'scope, u64, Vec<DeadLetter>>,
    Stream<'scope, u64, Vec<(Option<u64>, SourceCounts)>>,
) {
    let mut builder = OperatorBuilder::new("Source".to_owned(), scope);
    let info = builder.operator_info();
    let (out_logs, logs) = builder.new_output::<Vec<LogN<N>>>();
    let (out_dead, dead) = builder.new_output::<Vec<DeadLetter>>();
    let (out_counts, counts) = builder.new_output::<Vec<(Option<u64>, SourceCounts)>>();
    let mut out_logs = OutputBuilder::<_, CapacityContainerBuilder<Vec<LogN<N>>>>::from(out_logs);
    let mut out_dead =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(out_dead);
    let mut out_counts = OutputBuilder::<
        _,
        CapacityContainerBuilder<Vec<(Option<u64>, SourceCounts)>>,
    >::from(out_counts);
    let activator = scope.activator_for(Rc::clone(&info.address));
    // Sends what the source buffered, each at its epoch (never below the held capabilities), and notes the
    // latest epoch anything left at. After a stop (`$stop`: the stop epoch), what belongs to later epochs
    // stays in the intake: the checkpoint keeps it, this run does not process it.
    macro_rules! ship {
        ($src:expr, $held:expr, $stop:expr, $shipped:expr) => {{
            let intake = $src.intake();
            let kept = $stop.map(|s: u64| intake.withhold_above(s));
            intake.retain_shipped();
            for (e, mut logs) in std::mem::take(&mut intake.logs) {
                $shipped = Some($shipped.map_or(e, |m: u64| m.max(e)));
                out_logs
                    .activate()
                    .session(&$held[0].delayed(&e))
                    .give_container(&mut logs);
            }
            let now = *$held[1].time();
            let mut by_time: BTreeMap<u64, Vec<DeadLetter>> = BTreeMap::new();
            for d in intake.dead.drain(..) {
                by_time
                    .entry(d.epoch.unwrap_or(now).max(now))
                    .or_default()
                    .push(d);
            }
            for (t, mut v) in by_time {
                $shipped = Some($shipped.map_or(t, |m: u64| m.max(t)));
                out_dead
                    .activate()
                    .session(&$held[1].delayed(&t))
                    .give_container(&mut v);
            }
            for (k, c) in std::mem::take(&mut intake.counts) {
                let t = k.unwrap_or(now).max(now);
                $shipped = Some($shipped.map_or(t, |m: u64| m.max(t)));
                out_counts
                    .activate()
                    .session(&$held[2].delayed(&t))
                    .give((k, c));
            }
            if let Some(k) = kept {
                intake.put_back(k);
            }
        }};
    }
    builder.build(move |caps| {
        let mut caps: Option<Vec<Capability<u64>>> = Some(caps);
        // Pacing (`--speed`): the first epoch and when it was read.
        let mut pace_origin: Option<(u64, Instant)> = None;
        // Checkpoints: the next checkpoint epoch whose snapshot this source has not taken.
        let mut ckpt_next: Option<u64> = None;
        // The latest epoch anything was shipped at (a stop proposal is never below it).
        let mut shipped: Option<u64> = None;
        move |_frontiers| {
            // (Raised below to what this source may still ship; at least set, so that a failed or finished
            // source's worker can still take part in a stop.)
            ctl.agree.borrow_mut().raise_floor(0);
            let mut slot = source.borrow_mut();
            let Some(src) = slot.as_mut() else {
                caps = None;
                return;
            };
            let Some(held) = caps.as_mut() else {
                return;
            };
            // Tell the source how far the outputs are durable (it commits its positions there; the last
            // commit, once the dataflow is complete, is `run`'s).
            if src.wants_acks()
                && let Some(acked) = ctl.acked.with_frontier(|f| f.first().copied())
            {
                src.acknowledged(acked);
            }
            if errors.lock().map(|g| g.is_some()).unwrap_or(true) {
                // Another part of the run failed: stop reading so the run ends and reports it.
                caps = None;
                return;
            }
            // Hold capabilities no lower than the source can still emit at (first call: the prescan's
            // start epochs), so the rest of the dataflow learns where the data begins. What the source
            // buffered while deciding (a guard's note on the epoch it closes) leaves before the downgrade.
            let front = src.frontier();
            if let Some((ck, snaps, resumed)) = &ctl.checkpoint
                && ckpt_next.is_none()
            {
                // Before the first read: the cut that holds for every checkpoint below the first frontier
                // (what a restored run re-delivers is buffered now, not shipped yet).
                let f0 = front.unwrap_or(u64::MAX);
                let first = ck.first_from(
                    f0.max(resumed.map_or(0, |r| r + 1))
                        .min(u64::MAX - ck.every),
                );
                ckpt_next = Some(first);
                if let Some(cuts) = src.cuts() {
                    let intake = src.intake();
                    snaps.borrow_mut().initial = Some((f0, intake.standing(0, cuts)));
                    intake.retained.above = Some(first);
                }
            }
            let stop_at = ctl.agree.borrow().settled;
            ship!(src, held, stop_at, shipped);
            if let Some(f) = front {
                for c in held.iter_mut() {
                    if *c.time() < f && f != u64::MAX {
                        c.downgrade(&f);
                    }
                }
            }
            // A graceful stop: the floor this worker would propose; no reading while the workers decide.
            {
                let mut a = ctl.agree.borrow_mut();
                a.raise_floor_to(front, shipped);
                if a.holding() {
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
            }
            if let (Some(s), Some(c)) = (stop_at, ckpt_next.as_mut())
                && *c > s
            {
                // The stop epoch is the next checkpoint (the source has not passed it: it held at its
                // proposal, which is at most the stop epoch).
                *c = s;
            }
            // Flow control: do not read more than `max_ahead` epochs past the last completed one.
            let completed = ctl.completed.with_frontier(|f| f.first().copied());
            if let (Some(front), Some(done)) = (front, completed)
                && front != u64::MAX
                && front > done.saturating_add(ctl.max_ahead)
            {
                activator.activate_after(Duration::from_millis(2));
                return;
            }
            // Pacing: epoch e is read no sooner than (e − first)·L / speed seconds after the first.
            if let (Some(speed), Some(front)) = (ctl.speed, front.and_then(|f| src.pace_epoch(f)))
                && front != u64::MAX
            {
                let (first, t0) = *pace_origin.get_or_insert((front, Instant::now()));
                let due = (front.saturating_sub(first)) as f64 * ctl.epoch_len / speed;
                let elapsed = t0.elapsed().as_secs_f64();
                if elapsed < due {
                    activator.activate_after(Duration::from_secs_f64((due - elapsed).min(1.0)));
                    return;
                }
            }
            // A paced replay reads in small steps, so that it overshoots its pace by little.
            let budget = if ctl.speed.is_some() {
                ctl.budget.min(PACED_READ_BUDGET)
            } else {
                ctl.budget
            };
            let read = match src.pump(budget) {
                Ok(n) => n,
                Err(e) => {
                    record_error(&errors, e.to_string());
                    caps = None;
                    return;
                }
            };
            ship!(src, held, stop_at, shipped);
            let f_now = src.frontier();
            // The floor again, after this activation's reads: the step loop may propose it before the source
            // runs again, and a proposal below what was just read would let the frontier pass the stop
            // epoch before its snapshot is taken.
            ctl.agree.borrow_mut().raise_floor_to(f_now, shipped);
            if let (Some((ck, snaps, _)), Some(c_next)) = (&ctl.checkpoint, ckpt_next.as_mut())
                && let Some(cuts) = src.cuts()
            {
                match f_now {
                    // Every partition has closed the checkpoint epochs below the frontier: the cut of each.
                    Some(f) if f != u64::MAX => {
                        while *c_next < f && stop_at.is_none_or(|s| *c_next <= s) {
                            let c = *c_next;
                            if stop_at == Some(c) {
                                // The stop epoch: what was read for later epochs is still in the intake.
                                let snap = src.intake().standing(c, cuts.clone());
                                snaps.borrow_mut().by_epoch.insert(c, snap);
                                *c_next = c + 1;
                                break;
                            }
                            // The frontier may pass many checkpoint epochs at once (a gap in the data,
                            // a Kafka source's first records): one cut serves all of them up to the last
                            // below the frontier (and below the stop epoch).
                            let mut last = ck.last_below(f).unwrap_or(c).max(c);
                            if let Some(s) = stop_at {
                                last = last.min(ck.last_below(s).unwrap_or(c).max(c));
                            }
                            let next = match stop_at {
                                Some(s) if s > last => ck.first_from(last + 1).min(s),
                                _ => ck.first_from(last + 1),
                            };
                            let snap = src.intake().snapshot(c, cuts.clone(), next);
                            let mut snaps = snaps.borrow_mut();
                            if last == c {
                                snaps.by_epoch.insert(c, snap);
                            } else {
                                snaps.spans.insert(c, (last, snap));
                            }
                            *c_next = next;
                        }
                    }
                    // Nothing more to deliver: one cut for every later checkpoint.
                    _ => {
                        let snap = src.intake().standing(*c_next, cuts);
                        snaps.borrow_mut().standing = Some(snap);
                    }
                }
            }
            // A graceful stop: once every partition has closed the stop epoch, this source is done.
            if let Some(s) = stop_at
                && f_now.is_none_or(|f| f > s)
            {
                caps = None;
                return;
            }
            match f_now {
                None => {
                    ship!(src, held, stop_at, shipped);
                    ctl.agree.borrow_mut().raise_floor_to(None, shipped);
                    caps = None;
                }
                Some(f) => {
                    for c in held.iter_mut() {
                        if *c.time() < f {
                            c.downgrade(&f);
                        }
                    }
                    match src.idle_wait().filter(|_| read == 0) {
                        Some(wait) => activator.activate_after(wait),
                        None => activator.activate(),
                    }
                }
            }
        }
    });
    (logs, dead, counts)
}

/// One epoch's material at the sink.
#[derive(Default)]
struct Bucket {
    diffs: Vec<((CustomerId, OpenAnomaly), isize)>,
    evidence: Vec<Evidence>,
    model: ModelCounts,
    source: SourceCounts,
    dead: Vec<DeadLetter>,
    incidents: Vec<IncidentChange>,
    regions: Vec<crate::model::incident::RegionChange>,
    annotations: Vec<Annotation>,
}

/// The sink's state (only worker 0 has the output; other workers forward everything to it).
pub struct SinkState {
    format: OutputFormat,
    inputs: Vec<String>,
    output: Option<Box<dyn Output>>,
    /// Epochs up to this one were made durable by an earlier run of the same job (a restart): they are
    /// recomputed, not written again.
    written_through: Option<u64>,
    writer: bool,
    errors: Shared<String>,
    report: Shared<RunReport>,
    buckets: BTreeMap<u64, Bucket>,
    unattributed: Vec<DeadLetter>,
    unattributed_count: u64,
    next: Option<u64>,
    open: i64,
    totals: RunReport,
    last: Instant,
    line: String,
    progress: bool,
    /// A summary was written after the last barrier.
    summary_unflushed: bool,
    /// Checkpoints: the sink reports each checkpoint epoch to process 0's coordinator once it is durable.
    checkpoint: Option<(Checkpointing, std::sync::mpsc::Sender<SinkCheckpoint>)>,
    /// A graceful stop: its epoch is a checkpoint, and a run stopped there is not over (no `end` line).
    stop: Arc<Stop>,
    /// Grouped incidents: members' alerts raised under an open incident are not written, nor their later
    /// changes (the set of those still open).
    group_incidents: bool,
    grouped: std::collections::HashSet<(CustomerId, u16)>,
    /// Regions with an open incident; with grouping, the element incidents raised under one (held back
    /// with their later changes, like members' alerts under an element's).
    open_regions: std::collections::BTreeSet<crate::topology::ElementId>,
    grouped_elements:
        std::collections::BTreeSet<(crate::topology::ElementId, crate::topology::ElementId)>,
    /// `--serve`: the open alerts as of each closed epoch, for `GET /anomalies`.
    serving: Option<Arc<crate::serving::Serving>>,
    /// Report each epoch to the process's metrics (not a shadow's sink).
    metrics: bool,
}

impl SinkState {
    fn new(
        format: OutputFormat,
        inputs: Vec<String>,
        output: Option<(Box<dyn Output>, Option<u64>)>,
        errors: Shared<String>,
        report: Shared<RunReport>,
        started: Instant,
    ) -> Self {
        let writer = output.is_some();
        let (output, written_through) = match output {
            Some((o, w)) => (Some(o), w),
            None => (None, None),
        };
        if let Some(w) = written_through {
            tracing::info!("epochs up to {w} were written before: recomputing them silently");
        }
        let progress = writer && std::io::IsTerminal::is_terminal(&std::io::stderr());
        SinkState {
            format,
            inputs,
            output,
            written_through,
            writer,
            errors,
            report,
            buckets: BTreeMap::new(),
            unattributed: Vec::new(),
            unattributed_count: 0,
            next: None,
            open: 0,
            totals: RunReport::default(),
            last: started,
            line: String::with_capacity(1 << 16),
            progress,
            summary_unflushed: false,
            checkpoint: None,
            stop: Arc::new(Stop::default()),
            group_incidents: false,
            grouped: Default::default(),
            open_regions: Default::default(),
            grouped_elements: Default::default(),
            serving: None,
            metrics: true,
        }
    }

    /// A shadow variant's sink: no metrics and no progress line (the run's sink reports those).
    fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self.progress = false;
        self
    }

    /// `--serve`: keep the open alerts for queries.
    fn with_serving(mut self, serving: Option<Arc<crate::serving::Serving>>) -> Self {
        self.serving = serving;
        self
    }

    /// Grouped incidents (see [`RunConfig::group_incidents`]).
    fn with_grouping(mut self, group: bool) -> Self {
        self.group_incidents = group;
        self
    }

    /// The run's stop (see [`crate::stop`]).
    fn with_stop(mut self, stop: Arc<Stop>) -> Self {
        self.stop = stop;
        self
    }

    /// Reports checkpoint epochs to `to` (the writer only), and continues a restored run: nothing is
    /// written for the checkpoint epoch or before it, and the totals go on from the checkpoint's.
    fn with_checkpoints(
        mut self,
        cfg: Option<Checkpointing>,
        to: Option<std::sync::mpsc::Sender<SinkCheckpoint>>,
        resume: Option<(u64, SinkSnapshot)>,
    ) -> Self {
        if let (Some(c), Some(t)) = (cfg, to) {
            self.checkpoint = Some((c, t));
        }
        if let Some((c, snap)) = resume {
            self.next = Some(c + 1);
            self.open = snap.open;
            let t = &mut self.totals;
            t.epochs = snap.epochs;
            t.records = snap.records;
            t.late = snap.late;
            t.dead_lettered = snap.dead_lettered;
            t.series_scored = snap.series_scored;
            t.changes = snap.changes;
            self.grouped = snap.grouped.into_iter().collect();
            self.open_regions = snap.open_regions.into_iter().collect();
            self.grouped_elements = snap.grouped_elements.into_iter().collect();
        }
        self
    }

    /// After a checkpoint epoch: makes the output durable and tells the coordinator where it stands.
    fn report_checkpoint(&mut self, e: u64) {
        let Some((cfg, to)) = &self.checkpoint else {
            return;
        };
        if !cfg.is_checkpoint(e) && !self.stop.is_stop_epoch(e) {
            return;
        }
        let Some(out) = self.output.as_mut() else {
            return;
        };
        let position = match out.durable_position() {
            Ok(p) => p,
            Err(e) => {
                record_error(&self.errors, e.to_string());
                self.output = None;
                return;
            }
        };
        self.summary_unflushed = false;
        let t = &self.totals;
        let sink = SinkSnapshot {
            open: self.open,
            epochs: t.epochs,
            records: t.records,
            late: t.late,
            dead_lettered: t.dead_lettered,
            series_scored: t.series_scored,
            changes: t.changes,
            grouped: {
                let mut g: Vec<(CustomerId, u16)> = self.grouped.iter().copied().collect();
                g.sort_unstable();
                g
            },
            open_regions: self.open_regions.iter().copied().collect(),
            grouped_elements: self.grouped_elements.iter().copied().collect(),
        };
        let _ = to.send(SinkCheckpoint {
            epoch: e,
            sink,
            output: position,
        });
    }

    fn write(&mut self, text: &str, kinds: &[LineKind<'_>]) {
        let Some(out) = self.output.as_mut() else {
            return;
        };
        if let Err(e) = out.write(text, kinds) {
            record_error(&self.errors, e.to_string());
            self.output = None;
        }
    }

    /// Waits until everything written is durable.
    fn barrier(&mut self) {
        let Some(out) = self.output.as_mut() else {
            return;
        };
        if let Err(e) = out.barrier() {
            record_error(&self.errors, e.to_string());
            self.output = None;
        }
        self.summary_unflushed = false;
    }

    /// Writes every epoch below `upto` (exclusive); `None` means the input is exhausted.
    fn emit_until(&mut self, upto: Option<u64>) {
        let first = match (self.next, self.buckets.keys().next()) {
            (Some(n), _) => n,
            (None, Some(&k)) => k,
            (None, None) => return,
        };
        // (A restored run's model re-seeds the open anomalies at the checkpoint epoch: already written.)
        if self.buckets.keys().next().is_some_and(|&k| k < first) {
            self.buckets = self.buckets.split_off(&first);
        }
        let last_data = self.buckets.keys().next_back().copied();
        let end = match upto {
            Some(u) => u,
            None => match last_data {
                Some(l) => l + 1,
                None => return,
            },
        };
        let mut e = first;
        while e < end {
            // Epochs past the last data are written only once the input is exhausted.
            if upto.is_some() && last_data.is_none_or(|l| e > l) {
                break;
            }
            let b = self.buckets.remove(&e).unwrap_or_default();
            self.emit_epoch(e, b);
            e += 1;
            self.next = Some(e);
        }
        // The summaries written above become durable before the acknowledged frontier moves past them.
        if e > first {
            self.barrier();
        }
    }

    fn emit_epoch(&mut self, e: u64, mut b: Bucket) {
        b.evidence.sort_by_key(|e| (e.customer, e.feature));
        let mut changes = derive_changes(std::mem::take(&mut b.diffs), &b.evidence);
        let silent = self.written_through.is_some_and(|w| e <= w);
        let mut text = std::mem::take(&mut self.line);
        text.clear();
        b.annotations.sort_unstable();
        let incident_of = |c: &crate::sinks::Change| {
            b.annotations
                .binary_search_by(|a| (a.0, a.1).cmp(&(c.customer, c.feature)))
                .ok()
                .map(|i| b.annotations[i].2)
        };
        let mut written = Vec::with_capacity(changes.len());
        for c in changes.drain(..) {
            match c.status {
                crate::model::alert::Transition::Raised => self.open += 1,
                crate::model::alert::Transition::Cleared => self.open -= 1,
                crate::model::alert::Transition::Updated => {}
            }
            let incident = incident_of(&c);
            if self.group_incidents {
                let key = (c.customer, c.feature);
                let held_back = if self.grouped.contains(&key) {
                    if c.status == crate::model::alert::Transition::Cleared {
                        self.grouped.remove(&key);
                    }
                    true
                } else if incident.is_some() && c.status == crate::model::alert::Transition::Raised
                {
                    self.grouped.insert(key);
                    true
                } else {
                    false
                };
                if held_back {
                    continue;
                }
            }
            self.format.change_line_in(e, &c, incident, &mut text);
            written.push(c);
        }
        let changes = written;
        // Regions: open at this epoch, or cleared at it (its elements' changes of the epoch are under it).
        b.regions.sort_by_key(|r| r.region);
        let cleared_now: Vec<crate::topology::ElementId> = b
            .regions
            .iter()
            .filter(|r| r.status == crate::model::alert::Transition::Cleared)
            .map(|r| r.region)
            .collect();
        for r in &b.regions {
            if r.status == crate::model::alert::Transition::Raised {
                self.open_regions.insert(r.region);
            } else if r.status == crate::model::alert::Transition::Cleared {
                self.open_regions.remove(&r.region);
            }
        }
        b.incidents.sort_by_key(|i| (i.element, i.region));
        let mut incidents = Vec::with_capacity(b.incidents.len());
        for i in std::mem::take(&mut b.incidents) {
            let under = (self.open_regions.contains(&i.region) || cleared_now.contains(&i.region))
                .then_some(i.region);
            if self.group_incidents {
                let held_back = if self.grouped_elements.contains(&(i.element, i.region)) {
                    if i.status == crate::model::alert::Transition::Cleared {
                        self.grouped_elements.remove(&(i.element, i.region));
                    }
                    true
                } else if under.is_some() && i.status == crate::model::alert::Transition::Raised {
                    self.grouped_elements.insert((i.element, i.region));
                    true
                } else {
                    false
                };
                if held_back {
                    continue;
                }
            }
            self.format.incident_line(e, &i, under.as_ref(), &mut text);
            incidents.push(i);
        }
        b.incidents = incidents;
        for r in &b.regions {
            self.format.region_line(e, r, &mut text);
        }
        // The previous epoch's summary is durable before this epoch's first change is sent (they may go to
        // different partitions, which the broker does not order): a crash leaves changes without their
        // summary in one epoch at most.
        let lines = !changes.is_empty() || !b.incidents.is_empty() || !b.regions.is_empty();
        let any = lines || !b.dead.is_empty();
        if !silent && self.summary_unflushed && any {
            self.barrier();
        }
        if !silent && lines {
            let kinds: Vec<LineKind<'_>> = changes
                .iter()
                .map(|c| LineKind::Change(&c.customer))
                .chain(b.incidents.iter().map(|i| LineKind::Change(&i.element)))
                .chain(b.regions.iter().map(|r| LineKind::Change(&r.region)))
                .collect();
            self.write(&text, &kinds);
        }
        if !silent && !b.dead.is_empty() {
            b.dead
                .sort_by_key(|d| (d.input, d.line, d.partition, d.offset));
            text.clear();
            for d in &b.dead {
                dead_letter_line(d, &self.inputs, &mut text);
            }
            let kinds: Vec<LineKind<'_>> = b.dead.iter().map(LineKind::DeadLetter).collect();
            self.write(&text, &kinds);
        }
        // An epoch's summary is never durable before its changes and dead letters (a restart trusts it).
        if !silent && any {
            self.barrier();
        }
        let summary = EpochSummary {
            // Duplicates pass the source as well-formed records; the model refuses them.
            records: b.source.records.saturating_sub(b.model.duplicates),
            late: b.source.late,
            dead_lettered: b.source.dead + b.model.duplicates,
            series_scored: b.model.series_scored,
            changes: (changes.len() + b.incidents.len() + b.regions.len()) as u64,
            open_anomalies: self.open,
            closed_by_guard: b.source.guard_closed > 0,
        };
        let now = Instant::now();
        let wall = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if self.metrics {
            crate::metrics::global().epoch_closed(
                e,
                e as i64 * self.format.epoch_len,
                wall,
                &summary,
                &changes,
                &b.dead,
            );
        }
        if let Some(s) = &self.serving {
            s.epoch_closed(e, &changes);
        }
        text.clear();
        self.format.summary_line(e, &summary, wall, &mut text);
        if !silent {
            self.write(&text, &[LineKind::Summary(e)]);
            self.summary_unflushed = true;
        }
        self.line = text;
        if self.progress {
            eprint!(
                "\repoch {e} ({}): {} records, {} changes, {} open{}   ",
                crate::timefmt::format_rfc3339(e as i64 * self.format.epoch_len),
                summary.records,
                summary.changes,
                self.open,
                if silent {
                    " (rebuilt, not rewritten)"
                } else {
                    ""
                }
            );
        }
        let t = &mut self.totals;
        t.epochs += 1;
        t.records += summary.records;
        t.late += summary.late;
        t.dead_lettered += summary.dead_lettered;
        t.series_scored += summary.series_scored;
        t.changes += summary.changes;
        t.epoch_seconds.push(wall);
        t.epoch_ids.push(e);
        self.report_checkpoint(e);
    }

    /// The epoch below which every output is durable (the sink's acknowledged frontier).
    fn acknowledged(&self) -> Option<u64> {
        self.output.as_ref().and(self.next)
    }

    fn finish(&mut self) {
        self.emit_until(None);
        if self.progress {
            eprintln!();
        }
        // Stopped after epoch S (the last written): the run is not over, so no end line and no unattributed
        // dead letters (the checkpoint at S holds them for the resumed run, which writes them at its end).
        if let Some(s) = self.stop.epoch()
            && self.next == Some(s + 1)
        {
            self.barrier();
            if let Some(mut out) = self.output.take()
                && let Err(e) = out.finish()
            {
                record_error(&self.errors, e.to_string());
            }
            if self.writer {
                self.totals.stopped_after = Some(s);
                if let Ok(mut g) = self.report.lock() {
                    *g = Some(self.totals.clone());
                }
            }
            return;
        }
        let mut text = String::new();
        let _ = std::fmt::Write::write_fmt(
            &mut text,
            format_args!(
                "{{\"type\":\"end\",\"epochs\":{},\"records\":{},\"late\":{},\"dead_lettered\":{},\
                 \"dead_lettered_unattributed\":{},\"series_scored\":{},\"changes\":{},\"open_anomalies\":{}}}\n",
                self.totals.epochs,
                self.totals.records,
                self.totals.late,
                self.totals.dead_lettered + self.unattributed_count,
                self.unattributed_count,
                self.totals.series_scored,
                self.totals.changes,
                self.open
            ),
        );
        self.write(&text, &[LineKind::End]);
        if !self.unattributed.is_empty() {
            let mut dead = std::mem::take(&mut self.unattributed);
            dead.sort_by_key(|d| (d.input, d.line, d.partition, d.offset));
            text.clear();
            for d in &dead {
                dead_letter_line(d, &self.inputs, &mut text);
            }
            let kinds: Vec<LineKind<'_>> = dead.iter().map(LineKind::DeadLetter).collect();
            self.write(&text, &kinds);
        }
        if let Some(mut out) = self.output.take()
            && let Err(e) = out.finish()
        {
            record_error(&self.errors, e.to_string());
        }
        if self.writer {
            self.totals.dead_lettered += self.unattributed_count;
            if let Ok(mut g) = self.report.lock() {
                *g = Some(self.totals.clone());
            }
        }
    }
}

fn sink<'scope>(
    changes: Stream<'scope, u64, Vec<crate::arrangement::AnomalyDiff>>,
    evidence: Stream<'scope, u64, Vec<Evidence>>,
    counts: Stream<'scope, u64, Vec<ModelCounts>>,
    src_counts: Stream<'scope, u64, Vec<(Option<u64>, SourceCounts)>>,
    dead: Stream<'scope, u64, Vec<DeadLetter>>,
    incidents: Option<crate::incidents::IncidentStreams<'scope>>,
    mut state: SinkState,
) -> Stream<'scope, u64, Vec<()>> {
    let scope = changes.scope();
    let mut builder = OperatorBuilder::new("Sink".to_owned(), scope);
    // Carries no data: the writer holds a capability at the first epoch not yet durable.
    let (acks_out, acks) = builder.new_output::<Vec<()>>();
    let mut in_changes = builder.new_input(changes, Exchange::new(|_: &_| 0u64));
    let mut in_ev = builder.new_input(evidence, Exchange::new(|_: &_| 0u64));
    let mut in_counts = builder.new_input(counts, Exchange::new(|_: &_| 0u64));
    let mut in_src = builder.new_input(src_counts, Exchange::new(|_: &_| 0u64));
    let mut in_dead = builder.new_input(dead, Exchange::new(|_: &_| 0u64));
    let mut in_incidents = incidents.map(|i| {
        (
            builder.new_input(i.changes, Exchange::new(|_: &_| 0u64)),
            builder.new_input(i.annotations, Exchange::new(|_: &_| 0u64)),
            builder.new_input(i.regions, Exchange::new(|_: &_| 0u64)),
        )
    });
    builder.build(move |caps| {
        let mut finished = false;
        let _acks_out = acks_out;
        let mut ack_cap: Option<Capability<u64>> = if state.writer {
            caps.into_iter().next()
        } else {
            None
        };
        move |frontiers| {
            in_changes.for_each(|_cap, data| {
                for (k, t, d) in data.drain(..) {
                    state.buckets.entry(t).or_default().diffs.push((k, d));
                }
            });
            in_ev.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    state.buckets.entry(t).or_default().evidence.append(data);
                }
            });
            in_counts.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let b = state.buckets.entry(t).or_default();
                for c in data.drain(..) {
                    b.model.series_scored += c.series_scored;
                    b.model.duplicates += c.duplicates;
                    b.model.customers += c.customers;
                }
            });
            in_src.for_each(|_cap, data| {
                for (k, c) in data.drain(..) {
                    match k {
                        Some(e) => {
                            let b = state.buckets.entry(e).or_default();
                            b.source.records += c.records;
                            b.source.late += c.late;
                            b.source.dead += c.dead;
                            b.source.guard_closed += c.guard_closed;
                        }
                        None => state.unattributed_count += c.dead,
                    }
                }
            });
            in_dead.for_each(|_cap, data| {
                for d in data.drain(..) {
                    match d.epoch {
                        Some(e) => state.buckets.entry(e).or_default().dead.push(d),
                        None => state.unattributed.push(d),
                    }
                }
            });
            if let Some((ch, notes, regions)) = in_incidents.as_mut() {
                regions.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        state.buckets.entry(t).or_default().regions.append(data);
                    }
                });
                ch.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        state.buckets.entry(t).or_default().incidents.append(data);
                    }
                });
                notes.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        state.buckets.entry(t).or_default().annotations.append(data);
                    }
                });
            }
            if finished {
                return;
            }
            let bound = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            match bound {
                Some(b) => {
                    state.emit_until(Some(b));
                    if let (Some(cap), Some(n)) = (ack_cap.as_mut(), state.acknowledged())
                        && n > *cap.time()
                    {
                        cap.downgrade(&n);
                    }
                }
                None => {
                    state.finish();
                    finished = true;
                    ack_cap = None;
                }
            }
        }
    });
    acks
}

/// The default number of lines a source reads per activation.
pub const DEFAULT_READ_BUDGET: usize = 65_536;

/// Records read per activation of a paced (`--speed`) source.
const PACED_READ_BUDGET: usize = 2_048;

/// The default read-ahead, in epochs.
pub const DEFAULT_MAX_AHEAD: u64 = 1;
