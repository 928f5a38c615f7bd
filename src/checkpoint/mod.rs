//! Checkpoints: every N epochs each worker writes its share of the state, and a run started again on the
//! same checkpoint directory resumes from the last complete one (under any worker/process layout).
//!
//! ```text
//! DIR/ckpt-<epoch, 20 digits>/
//!     state-<w>-of-<W>.part    worker w's series state (customer records) and its cohort statistics
//!     source-<w>-of-<W>.part   worker w's source: each owned partition's clock and read position, and
//!                              what it had read for later epochs before every partition closed the epoch
//!     incidents-<w>-of-<W>.part  (runs with a topology) the learned normal and open incident of every
//!                              network element and region worker w owns
//!     MANIFEST.json            written last by process 0: epoch, layout, spec, output position, sink
//!                              totals, and each part's size and CRC-32. No manifest: not a checkpoint.
//! ```
//!
//! A checkpoint at epoch `c` is a consistent cut: the state after epoch `c`; each partition's position
//! after the last line its worker read before every one of its partitions had closed `c` (so every record
//! of an epoch ≤ `c` lies before it) together with copies of what those lines delivered for later epochs;
//! and the output as it stood once epoch `c` was durable. Restoring loads the state, re-delivers the copies,
//! reads each partition from its cut, and truncates the output files to the recorded position: the rest of
//! the run is byte for byte what the uninterrupted run wrote.
//!
//! Parts are written by background threads (the series state with `O_DIRECT`, [`part`]); process 0's
//! [`Coordinator`] writes the manifest once every part is in place and the sink has made the epoch
//! durable, then prunes older checkpoints. The directory must be visible to every process (shared storage
//! when processes run on several hosts).

pub mod part;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::cohort::CohortDelta;
use crate::sources::SourceSnapshot;
pub use part::PartInfo;

/// The version of the state layout a checkpoint holds (slots, blocks, part formats). A checkpoint of
/// another version is refused.
/// 3: the sink's grouped element incidents are keyed by (element, region).
/// 4: an element's learned variance of its two-epoch congestion mean (`ElementState::var_pair`).
pub const LAYOUT_VERSION: u32 = 4;
/// The default checkpoint interval, in epochs (one hour of 5-minute epochs).
pub const DEFAULT_EVERY: u64 = 12;
/// Complete checkpoints kept (the newest; older ones are deleted once a newer one is complete).
pub const KEEP: usize = 2;
const MANIFEST: &str = "MANIFEST.json";
const FORMAT: &str = "fleetwatch-checkpoint";

/// Errors of checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} has state layout version {found}; this build reads version {expected} \
         (resume with the release that wrote it, or start from an empty --checkpoint-dir)"
    )]
    Version {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error("checkpoint {path} does not fit this run: {message}")]
    Mismatch { path: String, message: String },
    #[error("checkpoint {path} is damaged: {message}")]
    Corrupt { path: String, message: String },
}

/// Where and how often a run writes checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointing {
    pub dir: PathBuf,
    /// A checkpoint after every epoch `e` with `(e + 1) % every == 0`.
    pub every: u64,
    pub keep: usize,
}

impl Checkpointing {
    pub fn new(dir: PathBuf, every: u64) -> Checkpointing {
        Checkpointing {
            dir,
            every: every.max(1),
            keep: KEEP,
        }
    }

    /// True for an epoch after which a checkpoint is taken (absolute epoch numbers: every process and
    /// every restart agrees).
    pub fn is_checkpoint(&self, e: u64) -> bool {
        (e + 1) % self.every == 0
    }

    /// The last checkpoint epoch before `e`.
    pub fn last_below(&self, e: u64) -> Option<u64> {
        (e / self.every * self.every).checked_sub(1)
    }

    /// The first checkpoint epoch at or after `e`.
    pub fn first_from(&self, e: u64) -> u64 {
        e + (self.every - 1 - e % self.every)
    }

    /// The directory of checkpoint `c`.
    pub fn epoch_dir(&self, c: u64) -> PathBuf {
        self.dir.join(format!("ckpt-{c:020}"))
    }

    /// Creates the directory of checkpoint `c` (every worker may; the first one wins).
    pub fn make_epoch_dir(&self, c: u64) -> Result<PathBuf, CheckpointError> {
        let d = self.epoch_dir(c);
        std::fs::create_dir_all(&d).map_err(|source| CheckpointError::Io {
            path: d.display().to_string(),
            source,
        })?;
        Ok(d)
    }
}

/// The name of worker `w`'s series-state part in a layout of `peers` workers.
pub fn state_part(w: usize, peers: usize) -> String {
    format!("state-{w:04}-of-{peers:04}.part")
}

/// The name of worker `w`'s source part.
pub fn source_part(w: usize, peers: usize) -> String {
    format!("source-{w:04}-of-{peers:04}.part")
}

/// The name of worker `w`'s incident part (runs with a topology).
pub fn incidents_part(w: usize, peers: usize) -> String {
    format!("incidents-{w:04}-of-{peers:04}.part")
}

/// Every part worker `w` writes, in the manifest's order.
fn worker_parts(w: usize, peers: usize, incidents: bool) -> Vec<String> {
    let mut v = vec![state_part(w, peers), source_part(w, peers)];
    if incidents {
        v.push(incidents_part(w, peers));
    }
    v
}

/// An incident part's body: the network elements one worker owned as of the checkpoint epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentSnapshot {
    pub epoch: u64,
    /// (element, region, its state), in element order.
    pub elements: Vec<(
        crate::topology::ElementId,
        crate::topology::ElementId,
        crate::model::incident::ElementState,
    )>,
    /// (region, its state), in region order.
    pub regions: Vec<(
        crate::topology::ElementId,
        crate::model::incident::RegionState,
    )>,
}

/// The header of a series-state part (its body: fixed-size customer records, sorted by customer: the
/// id's wire form, then every block of the customer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateHeader {
    pub epoch: u64,
    pub worker: u32,
    pub peers: u32,
    pub features: u32,
    pub blocks: u32,
    pub customers: u64,
    /// The population statistics the worker applied before epoch `epoch` (the same on every worker).
    pub stats: Vec<i64>,
    /// The cohort differences the worker emitted at `epoch` (every worker applies them at `epoch + 1`).
    pub deltas: Vec<CohortDelta>,
    /// The worker's cohort samples still in the window, by epoch (retracted `COHORT_WINDOW` epochs later).
    pub window: Vec<(u64, Vec<CohortDelta>)>,
}

/// Bytes of one customer record in a state part.
pub fn record_bytes(blocks: usize) -> usize {
    crate::keys::CustomerId::WIRE_BYTES + blocks * std::mem::size_of::<crate::state::Block>()
}

/// The sink's totals as of a checkpoint epoch (dead letters without an epoch, written after the end line,
/// are kept by the sources: [`SourceSnapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkSnapshot {
    pub open: i64,
    pub epochs: u64,
    pub records: u64,
    pub late: u64,
    pub dead_lettered: u64,
    pub series_scored: u64,
    pub changes: u64,
    /// Grouped incidents: the member alerts held back as of the epoch (their later changes are held back
    /// too), sorted.
    #[serde(default)]
    pub grouped: Vec<(crate::keys::CustomerId, u16)>,
    /// Regions with an open incident, and the element incidents held back under them (grouped).
    #[serde(default)]
    pub open_regions: Vec<crate::topology::ElementId>,
    /// (element, region): an element is another one in another region (`incidents.rs`).
    #[serde(default)]
    pub grouped_elements: Vec<(crate::topology::ElementId, crate::topology::ElementId)>,
}

/// Bytes of the output files once the checkpoint epoch was durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPosition {
    pub output_bytes: u64,
    pub dead_letter_bytes: Option<u64>,
}

/// What the run is, as a checkpoint records it (a restore must match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub spec: String,
    pub features: Vec<String>,
    pub detector: String,
    pub epoch_seconds: u64,
    /// The inputs' names, in order.
    pub inputs: Vec<String>,
    /// Whether the run had a topology (`--topology`): its checkpoints hold the elements' state.
    #[serde(default)]
    pub topology: bool,
    /// Whether the run had the global model on: its series' calibration is part of the state.
    #[serde(default)]
    pub global_model: bool,
}

/// `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub layout: u32,
    pub epoch: u64,
    /// Workers in all (the layout that wrote it: `workers` parts of each kind).
    pub workers: usize,
    pub run: RunIdentity,
    pub output: Option<OutputPosition>,
    pub sink: SinkSnapshot,
    pub parts: Vec<PartInfo>,
}

/// What process 0's sink reports once a checkpoint epoch is durable.
pub struct SinkCheckpoint {
    pub epoch: u64,
    pub sink: SinkSnapshot,
    pub output: Option<OutputPosition>,
}

/// One checkpoint as the coordinator completed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completed {
    pub epoch: u64,
    pub bytes: u64,
    /// From the sink's report (the epoch durable) to the manifest.
    pub seconds: f64,
}

/// Process 0's manifest writer: a thread that waits, per checkpoint epoch, for the sink's report and
/// every worker's parts, writes the manifest, and prunes.
pub struct Coordinator {
    tx: Option<Sender<SinkCheckpoint>>,
    handle: Option<JoinHandle<Vec<Completed>>>,
}

/// How long the coordinator waits for the parts of a checkpoint once the run has ended (this process's
/// writers are done by then; other processes' end at about the same time).
const DRAIN: Duration = Duration::from_secs(5);

impl Coordinator {
    pub fn start(cfg: Checkpointing, workers: usize, run: RunIdentity) -> Coordinator {
        let (tx, rx) = channel();
        let handle = std::thread::Builder::new()
            .name("fleetwatch-manifest".into())
            .spawn(move || coordinate(&cfg, workers, &run, rx))
            .ok();
        Coordinator {
            tx: Some(tx),
            handle,
        }
    }

    /// A sender for the sink.
    pub fn sender(&self) -> Option<Sender<SinkCheckpoint>> {
        self.tx.clone()
    }

    /// Waits for the checkpoints in progress (the run has ended) and returns what was completed.
    pub fn finish(mut self) -> Vec<Completed> {
        self.tx = None;
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn coordinate(
    cfg: &Checkpointing,
    workers: usize,
    run: &RunIdentity,
    rx: Receiver<SinkCheckpoint>,
) -> Vec<Completed> {
    let mut pending: BTreeMap<u64, (SinkCheckpoint, Instant)> = BTreeMap::new();
    let mut done = Vec::new();
    let mut closed: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(s) => {
                pending.insert(s.epoch, (s, Instant::now()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                closed.get_or_insert_with(Instant::now);
            }
        }
        let ready: Vec<u64> = pending
            .keys()
            .copied()
            .filter(|c| parts_present(cfg, *c, workers, run.topology))
            .collect();
        for c in ready {
            let Some((s, since)) = pending.remove(&c) else {
                continue;
            };
            match write_manifest(cfg, c, workers, run, s) {
                Ok(bytes) => {
                    let seconds = since.elapsed().as_secs_f64();
                    tracing::info!(
                        "checkpoint at epoch {c} complete: {:.1} MB, manifest {seconds:.2} s after the \
                         epoch was durable",
                        bytes as f64 / 1e6
                    );
                    crate::metrics::global().checkpoint(Some((bytes, seconds)));
                    done.push(Completed {
                        epoch: c,
                        bytes,
                        seconds,
                    });
                    if let Err(e) = prune(cfg, c, &pending) {
                        tracing::warn!("pruning old checkpoints: {e}");
                    }
                }
                Err(e) => {
                    crate::metrics::global().checkpoint(None);
                    tracing::error!("checkpoint at epoch {c} failed: {e}");
                }
            }
        }
        if let Some(t) = closed {
            if pending.is_empty() {
                return done;
            }
            if t.elapsed() > DRAIN {
                for c in pending.keys() {
                    tracing::warn!(
                        "checkpoint at epoch {c} left incomplete: not every worker wrote its parts"
                    );
                }
                return done;
            }
        }
    }
}

fn parts_present(cfg: &Checkpointing, c: u64, workers: usize, incidents: bool) -> bool {
    let d = cfg.epoch_dir(c);
    (0..workers).all(|w| {
        worker_parts(w, workers, incidents)
            .iter()
            .all(|p| d.join(p).is_file())
    })
}

fn write_manifest(
    cfg: &Checkpointing,
    c: u64,
    workers: usize,
    run: &RunIdentity,
    s: SinkCheckpoint,
) -> Result<u64, CheckpointError> {
    let d = cfg.epoch_dir(c);
    let mut parts = Vec::with_capacity(3 * workers);
    for w in 0..workers {
        for name in worker_parts(w, workers, run.topology) {
            parts.push(part::part_info(&d.join(name))?);
        }
    }
    let bytes = parts.iter().map(|p| p.bytes).sum();
    let m = Manifest {
        format: FORMAT.into(),
        layout: LAYOUT_VERSION,
        epoch: c,
        workers,
        run: run.clone(),
        output: s.output,
        sink: s.sink,
        parts,
    };
    let text = serde_json::to_vec_pretty(&m).map_err(|e| CheckpointError::Io {
        path: d.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let path = d.join(MANIFEST);
    part::write_file_durably(&path, &text).map_err(|source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(bytes)
}

/// Checkpoint directories under `dir`, newest first, with whether they have a manifest.
fn list(dir: &Path) -> Vec<(u64, PathBuf, bool)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(u64, PathBuf, bool)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let epoch = name.strip_prefix("ckpt-")?.parse::<u64>().ok()?;
            let p = e.path();
            let complete = p.join(MANIFEST).is_file();
            Some((epoch, p, complete))
        })
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.0));
    v
}

/// Deletes complete checkpoints beyond the newest `keep`, and incomplete ones older than `newest` that are
/// not waiting for parts (`pending`: the sink reported them; their writers may still be at work).
fn prune<T>(
    cfg: &Checkpointing,
    newest: u64,
    pending: &BTreeMap<u64, T>,
) -> Result<(), CheckpointError> {
    let mut complete = 0usize;
    for (epoch, path, is_complete) in list(&cfg.dir) {
        let remove = if is_complete {
            complete += 1;
            complete > cfg.keep
        } else {
            epoch < newest && !pending.contains_key(&epoch)
        };
        if remove {
            std::fs::remove_dir_all(&path).map_err(|source| CheckpointError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// A series-state part loaded for a restore.
#[derive(Debug)]
pub struct StatePart {
    pub header: StateHeader,
    pub body: Vec<u8>,
}

/// A checkpoint loaded and verified.
#[derive(Debug)]
pub struct Loaded {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub states: Vec<StatePart>,
    pub sources: Vec<SourceSnapshot>,
    /// Per worker of the layout that wrote it (runs with a topology).
    pub incidents: Vec<IncidentSnapshot>,
}

impl Loaded {
    /// The population statistics as of the epoch after the checkpoint: what the workers had applied, plus
    /// every worker's differences of the checkpoint epoch.
    pub fn cohort_stats(&self) -> Vec<i64> {
        let mut stats = self
            .states
            .first()
            .map(|s| s.header.stats.clone())
            .unwrap_or_default();
        let per = crate::model::cohort::STATS_PER_FEATURE;
        for s in &self.states {
            for d in &s.header.deltas {
                if let Some(x) = stats.get_mut(d.feature as usize * per + d.stat as usize) {
                    *x += d.delta;
                }
            }
        }
        stats
    }

    /// Every worker's cohort window merged by epoch (any worker can retract any sample: the statistics are
    /// one sum).
    pub fn cohort_window(&self) -> Vec<(u64, Vec<CohortDelta>)> {
        let mut by: BTreeMap<u64, BTreeMap<(u16, u16), i64>> = BTreeMap::new();
        for s in &self.states {
            for (e, ds) in &s.header.window {
                let m = by.entry(*e).or_default();
                for d in ds {
                    *m.entry((d.feature, d.stat)).or_default() += d.delta;
                }
            }
        }
        by.into_iter()
            .map(|(e, m)| {
                (
                    e,
                    m.into_iter()
                        .filter(|(_, d)| *d != 0)
                        .map(|((feature, stat), delta)| CohortDelta {
                            feature,
                            stat,
                            delta,
                        })
                        .collect(),
                )
            })
            .collect()
    }
}

/// Loads the newest complete checkpoint under `dir` that verifies, for a run of identity `run`.
/// A damaged checkpoint is reported and the previous one tried; a checkpoint of another layout version or
/// of another run (spec, features, inputs) is an error. `Ok(None)`: nothing to resume from.
pub fn load_latest(dir: &Path, run: &RunIdentity) -> Result<Option<Loaded>, CheckpointError> {
    for (epoch, path, complete) in list(dir) {
        if !complete {
            continue;
        }
        match load(&path, run) {
            Ok(l) => return Ok(Some(l)),
            Err(e @ (CheckpointError::Version { .. } | CheckpointError::Mismatch { .. })) => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!("{e}; trying the checkpoint before epoch {epoch}");
            }
        }
    }
    Ok(None)
}

fn load(path: &Path, run: &RunIdentity) -> Result<Loaded, CheckpointError> {
    let mp = path.join(MANIFEST);
    let text = std::fs::read(&mp).map_err(|source| CheckpointError::Io {
        path: mp.display().to_string(),
        source,
    })?;
    let corrupt = |message: String| CheckpointError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| corrupt(format!("{MANIFEST} cannot be read: {e}")))?;
    if m.format != FORMAT {
        return Err(corrupt(format!("{MANIFEST} is not a fleetwatch manifest")));
    }
    if m.layout != LAYOUT_VERSION {
        return Err(CheckpointError::Version {
            path: path.display().to_string(),
            found: m.layout,
            expected: LAYOUT_VERSION,
        });
    }
    let mismatch = |message: String| CheckpointError::Mismatch {
        path: path.display().to_string(),
        message,
    };
    if m.run.features != run.features {
        return Err(mismatch(format!(
            "it holds the features [{}], the spec has [{}]",
            m.run.features.join(", "),
            run.features.join(", ")
        )));
    }
    if m.run.detector != run.detector || m.run.epoch_seconds != run.epoch_seconds {
        return Err(mismatch(format!(
            "it was taken with detector {} and {} s epochs, the spec has {} and {} s",
            m.run.detector, m.run.epoch_seconds, run.detector, run.epoch_seconds
        )));
    }
    if m.run.topology != run.topology {
        let with = |t: bool| {
            if t {
                "with --topology"
            } else {
                "without --topology"
            }
        };
        return Err(mismatch(format!(
            "it was taken by a run {}, this run is {} (the elements' state is in a checkpoint only \
             when the run has a topology)",
            with(m.run.topology),
            with(run.topology)
        )));
    }
    if m.run.global_model != run.global_model {
        let with = |g: bool| if g { "with" } else { "without" };
        return Err(mismatch(format!(
            "it was taken by a run {} the global model, this run is {} it (its per-series calibration is \
             part of the state)",
            with(m.run.global_model),
            with(run.global_model)
        )));
    }
    if m.run.inputs.len() != run.inputs.len() {
        return Err(mismatch(format!(
            "it read {} inputs ({}), this run has {}",
            m.run.inputs.len(),
            m.run.inputs.join(", "),
            run.inputs.len()
        )));
    }
    let per_worker = if m.run.topology { 3 } else { 2 };
    if m.parts.len() != per_worker * m.workers {
        return Err(corrupt(format!(
            "the manifest lists {} parts for {} workers",
            m.parts.len(),
            m.workers
        )));
    }
    let mut states = Vec::with_capacity(m.workers);
    let mut sources = Vec::with_capacity(m.workers);
    let mut incidents = Vec::new();
    for w in 0..m.workers {
        for (i, name) in worker_parts(w, m.workers, m.run.topology)
            .into_iter()
            .enumerate()
        {
            let listed = m
                .parts
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| corrupt(format!("the manifest does not list {name}")))?;
            let p = part::read_part(&path.join(&name))?;
            if p.info != *listed {
                return Err(corrupt(format!(
                    "{name} is {} bytes with CRC {:08x}, the manifest says {} bytes, {:08x}",
                    p.info.bytes, p.info.crc32, listed.bytes, listed.crc32
                )));
            }
            if i == 0 {
                let header: StateHeader = bincode::deserialize(&p.header)
                    .map_err(|e| corrupt(format!("{name}: header: {e}")))?;
                let rec = record_bytes(header.blocks as usize);
                if header.epoch != m.epoch
                    || header.features as usize != run.features.len()
                    || header.blocks as usize
                        != crate::state::blocks_for(run.features.len(), run.global_model)
                    || p.body.len() as u64 != header.customers * rec as u64
                {
                    return Err(corrupt(format!(
                        "{name}: its header does not match its body or the manifest"
                    )));
                }
                states.push(StatePart {
                    header,
                    body: p.body,
                });
            } else if i == 1 {
                let snap: SourceSnapshot =
                    bincode::deserialize(&p.body).map_err(|e| corrupt(format!("{name}: {e}")))?;
                if snap.epoch != m.epoch {
                    return Err(corrupt(format!("{name} is of epoch {}", snap.epoch)));
                }
                sources.push(snap);
            } else {
                let snap: IncidentSnapshot =
                    bincode::deserialize(&p.body).map_err(|e| corrupt(format!("{name}: {e}")))?;
                if snap.epoch != m.epoch
                    || snap
                        .elements
                        .iter()
                        .any(|(_, _, s)| s.mean.len() != run.features.len())
                {
                    return Err(corrupt(format!(
                        "{name} does not match the manifest (epoch {}, its elements' features)",
                        snap.epoch
                    )));
                }
                incidents.push(snap);
            }
        }
    }
    if states
        .windows(2)
        .any(|w| w[0].header.stats != w[1].header.stats)
    {
        return Err(corrupt(
            "the workers' population statistics disagree".into(),
        ));
    }
    Ok(Loaded {
        dir: path.to_path_buf(),
        manifest: m,
        states,
        sources,
        incidents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_epochs_are_absolute() {
        let c = Checkpointing::new(PathBuf::from("/x"), 12);
        assert!(c.is_checkpoint(11) && c.is_checkpoint(23) && !c.is_checkpoint(12));
        assert_eq!(c.first_from(0), 11);
        assert_eq!(c.first_from(11), 11);
        assert_eq!(c.first_from(12), 23);
        assert_eq!(c.last_below(11), None);
        assert_eq!(c.last_below(12), Some(11));
        assert_eq!(c.last_below(35), Some(23));
        assert_eq!(c.last_below(36), Some(35));
        assert_eq!(
            c.epoch_dir(5),
            PathBuf::from("/x/ckpt-00000000000000000005")
        );
    }

    #[test]
    fn pruning_keeps_the_newest_complete_and_newer_incomplete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Checkpointing::new(dir.path().to_path_buf(), 1);
        for (c, complete) in [(1, true), (2, false), (3, true), (4, true), (5, false)] {
            let d = cfg.make_epoch_dir(c).unwrap();
            if complete {
                std::fs::write(d.join(MANIFEST), "{}").unwrap();
            }
        }
        // 2 is still being written (the sink reported it): kept until it completes.
        prune(&cfg, 4, &BTreeMap::from([(2u64, ())])).unwrap();
        let left: Vec<u64> = list(dir.path()).iter().map(|x| x.0).collect();
        assert_eq!(left, vec![5, 4, 3, 2]);
        prune::<()>(&cfg, 4, &BTreeMap::new()).unwrap();
        let left: Vec<u64> = list(dir.path()).iter().map(|x| x.0).collect();
        assert_eq!(left, vec![5, 4, 3]);
    }
}
