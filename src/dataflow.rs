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
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Concat, ConnectLoop, Feedback, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::arrangement::{ModelCounts, series_model};
use crate::keys::CustomerId;
use crate::model::Detector;
use crate::model::cohort::CohortDelta;
use crate::model::customer::{Evidence, ModelConfig, OpenAnomaly};
use crate::record::{DeadLetter, LogN, MAX_FEATURES, NARROW};
use crate::sinks::{
    EpochSummary, FileOutput, LineKind, Output, OutputError, OutputFormat, dead_letter_line,
    derive_changes,
};
use crate::sources::{FileSource, InputFile, Source, SourceCounts, SourceError};
use crate::spec::Spec;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("timely could not start: {0}")]
    Timely(String),
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
}

type Shared<T> = Arc<Mutex<Option<T>>>;

fn record_error(slot: &Shared<String>, msg: String) {
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
    // Process 0 writes the output; open it now so a bad path or an unreachable broker fails fast.
    let output: Shared<(Box<dyn Output>, Option<u64>)> = Arc::new(Mutex::new(None));
    if process == 0 {
        let opened: (Box<dyn Output>, Option<u64>) = match &cfg.outputs {
            Outputs::Files {
                output,
                dead_letter,
            } => (
                Box::new(FileOutput::create(output, dead_letter.as_deref())?),
                None,
            ),
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
    // Every recorded-topic input is read once per process and shared by its workers.
    let local_workers = match &timely.communication {
        timely::CommunicationConfig::Thread => 1,
        timely::CommunicationConfig::Process(n) | timely::CommunicationConfig::ProcessBinary(n) => {
            *n
        }
        timely::CommunicationConfig::Cluster { threads, .. } => *threads,
    };
    let shared_inputs = match &cfg.inputs {
        Inputs::Files(files) => {
            let paths: Vec<&std::path::Path> = files.iter().map(|f| f.path.as_path()).collect();
            Some(crate::sources::chunks::SharedInputs::new(
                &paths,
                local_workers,
            ))
        }
        #[cfg(feature = "kafka")]
        Inputs::Kafka(_) => None,
    };
    let errors: Shared<String> = Arc::new(Mutex::new(None));
    let report: Shared<RunReport> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    {
        let errors = Arc::clone(&errors);
        let report = Arc::clone(&report);
        let guards = timely::execute(timely, move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let source: Result<Box<dyn Source<N>>, SourceError> = match &cfg.inputs {
                Inputs::Files(files) => {
                    FileSource::<N>::new(&cfg.spec, files.clone(), index, peers).map(|mut s| {
                        if let Some(shared) = &shared_inputs {
                            // (Timely numbers the workers of process p as p·threads + local index.)
                            s = s.with_shared(shared.for_slot(index % local_workers.max(1)));
                        }
                        Box::new(s) as Box<dyn Source<N>>
                    })
                }
                #[cfg(feature = "kafka")]
                Inputs::Kafka(k) => {
                    crate::sources::kafka::KafkaSource::<N>::new(&cfg.spec, k, index, peers)
                        .map(|s| Box::new(s) as Box<dyn Source<N>>)
                }
            };
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
            let probe = ProbeHandle::new();
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
                );
            });
            while worker.step_or_park(None) {}
            // The dataflow is complete, so the sink has made every output durable (it held the
            // acknowledged frontier until then): unless something failed, the source commits all it read.
            if errors.lock().map(|g| g.is_none()).unwrap_or(false)
                && let Some(src) = source.borrow_mut().as_mut()
                && src.wants_acks()
            {
                src.acknowledged(u64::MAX);
            }
        })
        .map_err(RunError::Timely)?;
        for r in guards.join() {
            if let Err(e) = r {
                return Err(RunError::Worker(format!("a worker failed: {e}")));
            }
        }
    }
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
    Ok(r)
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
        },
        Arc::clone(&errors),
    );
    let (cohort_handle, cohort_cycle) = scope.feedback::<Vec<CohortDelta>>(1);
    let model = series_model(
        logs,
        cohort_cycle,
        ModelConfig::from_spec(&cfg.spec),
        Arc::clone(&cfg.detector),
        cfg.state_size.clone(),
    );
    model.cohort.broadcast().connect_loop(cohort_handle);
    let counts = model.counts.probe_with(probe);
    // The open anomalies as a differential collection, arranged by customer; what leaves is its change.
    let open = model.anomalies.as_collection().arrange_by_key();
    let changes = open.as_collection(|k: &CustomerId, v: &OpenAnomaly| (*k, *v));
    let dead = src_dead.concat(model.dead);
    let format = OutputFormat {
        features: cfg.spec.features.iter().map(|f| f.name.clone()).collect(),
        model: cfg.detector.name().to_string(),
        epoch_len: cfg.spec.epoch.length_seconds as i64,
        reproducible: cfg.reproducible,
    };
    let inputs = cfg.inputs.names();
    sink(
        changes.inner,
        model.evidence,
        counts,
        src_counts,
        dead,
        SinkState::new(format, inputs, sink_output, errors, report, started),
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
    // Sends what the source buffered, each at its epoch (never below the held capabilities).
    macro_rules! ship {
        ($src:expr, $held:expr) => {{
            let intake = $src.intake();
            for (e, mut logs) in std::mem::take(&mut intake.logs) {
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
                out_dead
                    .activate()
                    .session(&$held[1].delayed(&t))
                    .give_container(&mut v);
            }
            for (k, c) in std::mem::take(&mut intake.counts) {
                let t = k.unwrap_or(now).max(now);
                out_counts
                    .activate()
                    .session(&$held[2].delayed(&t))
                    .give((k, c));
            }
        }};
    }
    builder.build(move |caps| {
        let mut caps: Option<Vec<Capability<u64>>> = Some(caps);
        // Pacing (`--speed`): the first epoch and when it was read.
        let mut pace_origin: Option<(u64, Instant)> = None;
        move |_frontiers| {
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
            ship!(src, held);
            if let Some(f) = front {
                for c in held.iter_mut() {
                    if *c.time() < f && f != u64::MAX {
                        c.downgrade(&f);
                    }
                }
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
            if let (Some(speed), Some(front)) = (ctl.speed, front)
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
            let read = match src.pump(ctl.budget) {
                Ok(n) => n,
                Err(e) => {
                    record_error(&errors, e.to_string());
                    caps = None;
                    return;
                }
            };
            ship!(src, held);
            match src.frontier() {
                None => {
                    ship!(src, held);
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
        }
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
        let changes = derive_changes(std::mem::take(&mut b.diffs), &b.evidence);
        let silent = self.written_through.is_some_and(|w| e <= w);
        let mut text = std::mem::take(&mut self.line);
        text.clear();
        for c in &changes {
            match c.status {
                crate::model::alert::Transition::Raised => self.open += 1,
                crate::model::alert::Transition::Cleared => self.open -= 1,
                crate::model::alert::Transition::Updated => {}
            }
            self.format.change_line(e, c, &mut text);
        }
        // The previous epoch's summary is durable before this epoch's first change is sent (they may go to
        // different partitions, which the broker does not order): a crash leaves changes without their
        // summary in one epoch at most.
        if !silent && self.summary_unflushed && (!changes.is_empty() || !b.dead.is_empty()) {
            self.barrier();
        }
        if !silent && !changes.is_empty() {
            let kinds: Vec<LineKind<'_>> = changes
                .iter()
                .map(|c| LineKind::Change(&c.customer))
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
        if !silent && (!changes.is_empty() || !b.dead.is_empty()) {
            self.barrier();
        }
        let summary = EpochSummary {
            // Duplicates pass the source as well-formed records; the model refuses them.
            records: b.source.records.saturating_sub(b.model.duplicates),
            late: b.source.late,
            dead_lettered: b.source.dead + b.model.duplicates,
            series_scored: b.model.series_scored,
            changes: changes.len() as u64,
            open_anomalies: self.open,
            closed_by_guard: b.source.guard_closed > 0,
        };
        let now = Instant::now();
        let wall = now.duration_since(self.last).as_secs_f64();
        self.last = now;
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
/// The default read-ahead, in epochs.
pub const DEFAULT_MAX_AHEAD: u64 = 1;
