//! The series-state arrangement and the operator that maintains it.
//!
//! Per-series state lives in a differential arrangement keyed by customer (value: block index, difference:
//! [`Block`] — see [`crate::state`] for why the difference *is* the state). The `SeriesModel` operator owns
//! the arrangement's write side, like differential's own upsert operator: for each epoch, once every log of
//! the epoch has arrived, it walks the trace's cursor and the epoch's logs (both sorted by customer) in one
//! merge, runs each customer's model step, and builds one batch of Abelian differences (`new − old` per
//! changed block) that it inserts into the trace. The trace is compacted to the current epoch and merged
//! eagerly, so between epochs it holds one consolidated batch: the current state of every series.
//!
//! Outputs (all at the epoch's time): the differences of the open-anomaly collection, the evidence behind
//! them, per-epoch counters, dead letters (duplicate logs), and the cohort-statistics differences that feed
//! back (broadcast, one epoch later) as the priors of the next epoch.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ord_neu::val_batch::OrdValStorage;
use differential_dataflow::trace::implementations::ord_neu::{OrdValBatch, Upds, Vals};
use differential_dataflow::trace::implementations::{BatchContainer, ValSpine, Vector};
use differential_dataflow::trace::{Cursor, Description, Span, Trace, TraceReader};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::Antichain;

use crate::checkpoint::{Checkpointing, Loaded, StateHeader, part::PartWriter, record_bytes};
use crate::keys::{CustomerId, customer_route};
use crate::model::Detector;
use crate::model::cohort::{CohortAccumulator, CohortDelta, CohortStats};
use crate::model::customer::{
    CustomerMeta, Evidence, ModelConfig, OpenAnomaly, StepContext, StepOut, contribute_customer,
    step_customer,
};
use crate::model::incident::{ACTIVE_EPOCHS, ElementPartial};
use crate::record::{DeadLetter, LogN, RejectCode, Rejection};
use crate::state::{BLOCK_SLOTS, Block, SLOT_BYTES, Slot};
use crate::topology::{Membership, Placement};

/// The trace type of the series-state arrangement.
pub type StateSpine = ValSpine<CustomerId, u8, u64, Block>;
type StateLayout = Vector<((CustomerId, u8), u64, Block)>;
/// A batch of the series-state arrangement.
pub type StateBatch = OrdValBatch<StateLayout>;

/// Builds a batch of the state arrangement directly in its final containers. The model produces its
/// differences already sorted by (customer, block) and consolidated (one per block), so the generic builder's
/// staging (a tuple vector, then per-value sort-and-consolidate buffers) would only copy each 320-byte
/// difference twice more.
struct DirectBatch {
    storage: OrdValStorage<StateLayout>,
    updates: usize,
    time: u64,
}

impl DirectBatch {
    fn new(time: u64, keys: usize, vals: usize) -> Self {
        DirectBatch {
            storage: OrdValStorage {
                keys: Vec::with_capacity(keys),
                vals: Vals::with_capacity(keys + 1, vals),
                upds: Upds::with_capacity(vals + 1, vals),
            },
            updates: 0,
            time,
        }
    }

    /// Appends one customer's changed blocks (in block order); customers must come in key order.
    fn push(&mut self, customer: CustomerId, blocks: &[(u8, Block)]) {
        if blocks.is_empty() {
            return;
        }
        let s = &mut self.storage;
        s.keys.push(customer);
        for (v, d) in blocks {
            s.vals.vals.push(*v);
            s.upds.times.push(self.time);
            s.upds.diffs.push(*d);
            s.upds.offs.push_ref(s.upds.times.len());
            self.updates += 1;
        }
        s.vals.offs.push_ref(s.vals.vals.len());
    }

    fn done(self) -> Option<StateBatch> {
        (self.updates > 0).then_some(OrdValBatch {
            storage: self.storage,
            updates: self.updates,
        })
    }
}
/// The arranged series state, for downstream readers (queries, checkpoints).
pub type StateArrangement<'scope> = Arranged<'scope, TraceAgent<StateSpine>>;

/// The size of the series-state arrangement, counted by walking its trace when the input ends (summed over
/// the workers of this process).
#[derive(Debug, Default)]
pub struct StateSize {
    pub customers: std::sync::atomic::AtomicU64,
    pub blocks: std::sync::atomic::AtomicU64,
    pub updates: std::sync::atomic::AtomicU64,
}

impl StateSize {
    /// Bytes the arrangement's batches hold for this content: per key the id and an offset, per value the
    /// block index and an offset, per update the epoch and the block difference.
    pub fn bytes(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let key = (std::mem::size_of::<CustomerId>() + 4) as u64;
        let val = (1 + 4) as u64;
        let upd = (8 + std::mem::size_of::<Block>()) as u64;
        self.customers.load(Relaxed) * key
            + self.blocks.load(Relaxed) * val
            + self.updates.load(Relaxed) * upd
    }
}

fn measure(reader: &mut TraceAgent<StateSpine>, size: &StateSize) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(batches) = reader.batches_through(Antichain::new().borrow()) else {
        return;
    };
    let (mut cursor, storage) = differential_dataflow::trace::cursor::cursor_list(batches);
    let (mut keys, mut vals, mut upds) = (0u64, 0u64, 0u64);
    while cursor.key_valid(&storage) {
        keys += 1;
        while cursor.val_valid(&storage) {
            vals += 1;
            cursor.map_times(&storage, |_, _| upds += 1);
            cursor.step_val(&storage);
        }
        cursor.step_key(&storage);
    }
    size.customers.fetch_add(keys, Relaxed);
    size.blocks.fetch_add(vals, Relaxed);
    size.updates.fetch_add(upds, Relaxed);
}

/// One worker's counters for one epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCounts {
    pub series_scored: u64,
    pub duplicates: u64,
    pub customers: u64,
}

/// A difference of the topology collection.
pub type TopologyDiff = (Placement, u64, isize);

/// A difference of the open-anomaly collection.
pub type AnomalyDiff = ((CustomerId, OpenAnomaly), u64, isize);

/// The streams the model operator produces.
pub struct ModelStreams<'scope> {
    pub state: StateArrangement<'scope>,
    pub anomalies: Stream<'scope, u64, Vec<AnomalyDiff>>,
    pub evidence: Stream<'scope, u64, Vec<Evidence>>,
    pub counts: Stream<'scope, u64, Vec<ModelCounts>>,
    pub dead: Stream<'scope, u64, Vec<DeadLetter>>,
    pub cohort: Stream<'scope, u64, Vec<CohortDelta>>,
    /// With a topology: every worker's per-element sums of each epoch.
    pub elements: Stream<'scope, u64, Vec<ElementPartial>>,
}

/// Background writes of checkpoint parts still in progress (joined when the run ends).
pub type PendingWrites = Arc<
    std::sync::Mutex<
        Vec<
            std::thread::JoinHandle<
                Result<crate::checkpoint::PartInfo, crate::checkpoint::CheckpointError>,
            >,
        >,
    >,
>;

/// A worker's part in checkpoints: where to write, and what to resume from.
#[derive(Clone)]
pub struct ModelCheckpoint {
    pub cfg: Checkpointing,
    pub worker: usize,
    pub peers: usize,
    pub pending: PendingWrites,
    /// The snapshots of this worker's source (written beside the state part).
    pub snaps: Rc<std::cell::RefCell<crate::sources::intake::SourceSnaps>>,
}

/// This worker's share of a restored checkpoint: the series-state batch, the open anomalies it holds, the
/// cohort statistics and (worker 0) the cohort window.
pub struct Restored {
    pub epoch: u64,
    pub batch: Option<StateBatch>,
    pub anomalies: Vec<AnomalyDiff>,
    pub stats: CohortStats,
    pub window: std::collections::VecDeque<(u64, Vec<CohortDelta>)>,
    pub customers: usize,
}

/// Why a checkpoint's state could not be taken over.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {dir}: {message}")]
pub struct RestoreError {
    pub dir: String,
    pub message: String,
}

impl Restored {
    /// Takes this worker's customers (by the routing hash, under the new layout) out of every state part.
    pub fn take(
        loaded: &Loaded,
        worker: usize,
        peers: usize,
        features: usize,
        blocks: usize,
    ) -> Result<Restored, RestoreError> {
        let err = |message: String| RestoreError {
            dir: loaded.dir.display().to_string(),
            message,
        };
        let epoch = loaded.manifest.epoch;
        let rec = record_bytes(blocks);
        let id_bytes = CustomerId::WIRE_BYTES;
        // (customer, part, offset of its blocks)
        let mut mine: Vec<(CustomerId, u32, usize)> = Vec::new();
        for (p, part) in loaded.states.iter().enumerate() {
            for (i, r) in part.body.chunks_exact(rec).enumerate() {
                let id = CustomerId::from_wire(&r[..id_bytes])
                    .ok_or_else(|| err(format!("part {p}: record {i} has no valid customer id")))?;
                if customer_route(&id) % peers as u64 == worker as u64 {
                    mine.push((id, p as u32, i * rec + id_bytes));
                }
            }
        }
        mine.sort_unstable_by_key(|a| a.0);
        if mine.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(err("a customer appears in two parts".into()));
        }
        let mut batch = DirectBatch::new(epoch, mine.len(), mine.len() * blocks);
        let mut anomalies = Vec::new();
        let mut slots = vec![[0u8; SLOT_BYTES]; blocks * BLOCK_SLOTS];
        let mut bl: Vec<(u8, Block)> = Vec::with_capacity(blocks);
        let mut open = Vec::new();
        for (id, p, at) in &mine {
            let body = &loaded.states[*p as usize].body;
            bl.clear();
            for b in 0..blocks {
                let block =
                    Block::read_le(&body[at + b * Block::BYTES..at + (b + 1) * Block::BYTES]);
                for s in 0..BLOCK_SLOTS {
                    slots[b * BLOCK_SLOTS + s] = block.slot(s);
                }
                if block != Block::ZERO {
                    bl.push((b as u8, block));
                }
            }
            batch.push(*id, &bl);
            open.clear();
            crate::model::customer::open_anomalies(&slots[..=features], &mut open);
            anomalies.extend(open.iter().map(|a| ((*id, *a), epoch, 1isize)));
        }
        let stats = CohortStats::from_raw(features, loaded.cohort_stats())
            .ok_or_else(|| err("its population statistics are of another size".into()))?;
        let window = if worker == 0 {
            loaded.cohort_window().into_iter().collect()
        } else {
            Default::default()
        };
        Ok(Restored {
            epoch,
            batch: batch.done(),
            anomalies,
            stats,
            window,
            customers: mine.len(),
        })
    }
}

/// What the model operator does besides modelling: measure the state's size (benchmarks), write its share
/// of checkpoints, start from a restored one, and end at a graceful stop's epoch.
#[derive(Default)]
pub struct ModelRun {
    pub size: Option<Arc<StateSize>>,
    pub checkpoint: Option<ModelCheckpoint>,
    pub restored: Option<Restored>,
    pub stop: Option<Arc<crate::stop::Stop>>,
    pub watch: Option<Arc<crate::watch::Watch>>,
    /// The epoch views for `--serve` and `--predictions` ([`crate::serving`]).
    pub publish: crate::serving::Publish,
}

/// A restored run's first output: the checkpoint epoch, its open anomalies, its state batch.
type RestoredOut = (u64, Vec<AnomalyDiff>, Span<u64, Rc<StateBatch>>);

/// Builds the `SeriesModel` operator. `logs` is exchanged by customer here; `cohort` must already carry
/// every worker's cohort differences (broadcast) delayed by one epoch. With `run.checkpoint`, the worker
/// writes its part of every checkpoint (and of a graceful stop's), and starts from `run.restored` (its
/// share of a checkpoint) when given.
pub fn series_model<'scope, const N: usize>(
    logs: Stream<'scope, u64, Vec<LogN<N>>>,
    cohort: Stream<'scope, u64, Vec<CohortDelta>>,
    topology: Option<Stream<'scope, u64, Vec<TopologyDiff>>>,
    config: ModelConfig,
    detector: Arc<dyn Detector>,
    run: ModelRun,
) -> ModelStreams<'scope> {
    let ModelRun {
        size,
        checkpoint: ckpt,
        restored,
        stop,
        watch,
        publish,
    } = run;
    let scope = logs.scope();
    let (scope_index, scope_peers) = (scope.index(), scope.peers());
    let mut builder = OperatorBuilder::new("SeriesModel".to_owned(), scope);
    let info = builder.operator_info();
    let mut in_logs = builder.new_input(
        logs,
        Exchange::new(|l: &LogN<N>| customer_route(&l.customer)),
    );
    let mut in_cohort = builder.new_input(cohort, Pipeline);
    let with_topology = topology.is_some();
    let mut in_topo = topology.map(|t| {
        builder.new_input(
            t,
            Exchange::new(|d: &TopologyDiff| customer_route(&d.0.customer)),
        )
    });
    let (out_spans, spans) = builder.new_output();
    let (out_anom, anomalies) = builder.new_output::<Vec<AnomalyDiff>>();
    let (out_ev, evidence) = builder.new_output::<Vec<Evidence>>();
    let (out_counts, counts) = builder.new_output::<Vec<ModelCounts>>();
    let (out_dead, dead) = builder.new_output::<Vec<DeadLetter>>();
    let (out_cohort, cohort_out) = builder.new_output::<Vec<CohortDelta>>();
    let (out_elements, elements) = builder.new_output::<Vec<ElementPartial>>();
    let mut out_spans = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_spans);
    let mut out_anom = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_anom);
    let mut out_ev = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_ev);
    let mut out_counts = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_counts);
    let mut out_dead = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_dead);
    let mut out_cohort = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_cohort);
    let mut out_elements = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_elements);

    let activator = scope.activator_for(Rc::clone(&info.address));
    let mut trace = StateSpine::new(info.clone(), None, Some(activator));
    // Merge eagerly: between epochs the trace should be one consolidated batch (one copy of the state, and
    // one cursor to read).
    trace.set_exert_logic(Arc::new(|layers: &[(usize, usize, usize)]| {
        let batches: usize = layers
            .iter()
            .filter(|(_, count, len)| *count > 0 && *len > 0)
            .map(|(_, count, _)| *count)
            .sum();
        (batches > 1).then_some(1usize << 30)
    }));
    let (mut reader, mut writer) = TraceAgent::new(trace, info, None);
    let published = reader.clone();

    // A restored run starts with the checkpoint's state as one batch covering every epoch up to it.
    let mut stats = CohortStats::new(config.features);
    let mut window: std::collections::VecDeque<(u64, Vec<CohortDelta>)> = Default::default();
    let mut next: Option<u64> = None;
    let mut upper: u64 = 0;
    let mut restored_out: Option<RestoredOut> = None;
    if let Some(r) = restored {
        let c = r.epoch;
        let desc = Description::new(
            Antichain::from_elem(0),
            Antichain::from_elem(c + 1),
            Antichain::from_elem(0),
        );
        let span = Span::new(desc, r.batch.map(Rc::new));
        writer.insert(span.clone(), timely::progress::Stamp::from_elem(c));
        upper = c + 1;
        reader.set_logical_compaction(Antichain::from_elem(c + 1).borrow());
        reader.set_physical_compaction(Antichain::from_elem(c + 1).borrow());
        stats = r.stats;
        window = r.window;
        next = Some(c + 1);
        restored_out = Some((c, r.anomalies, span));
    }
    // The first checkpoint epoch this worker has not written yet.
    let mut ckpt_from: u64 = next.unwrap_or(0);

    builder.build(move |caps| {
        let mut caps: Option<Vec<Capability<u64>>> = Some(caps);
        let mut stash: BTreeMap<u64, Vec<LogN<N>>> = BTreeMap::new();
        let mut spare: Vec<Vec<LogN<N>>> = Vec::new();
        let mut cohort_stash: BTreeMap<u64, Vec<CohortDelta>> = BTreeMap::new();
        let mut acc = CohortAccumulator::new(config.features);
        let blocks = config.blocks();
        let mut worker = EpochWorker::new(config.clone(), Arc::clone(&detector), blocks);
        let mut membership = with_topology.then(|| Membership::new(config.features));
        let mut topo_stash: BTreeMap<u64, Vec<TopologyDiff>> = BTreeMap::new();
        let mut publisher = crate::serving::Publisher::new(publish, scope_index, scope_peers);

        move |frontiers| {
            in_logs.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    stash
                        .entry(t)
                        .or_insert_with(|| spare.pop().unwrap_or_default())
                        .append(data);
                }
            });
            in_cohort.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    cohort_stash.entry(t).or_default().append(data);
                }
            });
            if let Some(input) = in_topo.as_mut() {
                input.for_each(|_cap, data| {
                    for d in data.drain(..) {
                        // A difference no later than the next epoch to run applies at once (compactly);
                        // a later one waits for its epoch.
                        match membership.as_mut() {
                            Some(m) if d.1 == 0 || next.is_some_and(|n| d.1 <= n) => {
                                m.apply(d.0, d.2)
                            }
                            _ => topo_stash.entry(d.1).or_default().push(d),
                        }
                    }
                });
            }
            let Some(held) = caps.as_mut() else { return };
            // A restored run: the checkpoint's batch and open anomalies leave at the checkpoint epoch (the
            // sink writes nothing for it: it is already in the output).
            if let Some((c, mut anom, span)) = restored_out.take() {
                out_spans
                    .activate()
                    .session(&held[0].delayed(&c))
                    .give(span);
                if !anom.is_empty() {
                    out_anom
                        .activate()
                        .session(&held[1].delayed(&c))
                        .give_container(&mut anom);
                }
            }
            let f_logs = frontiers[0].frontier().first().copied();
            let f_cohort = frontiers[1].frontier().first().copied();
            let f_topo = frontiers.get(2).and_then(|f| f.frontier().first().copied());
            let bound = [f_logs, f_cohort, f_topo].into_iter().flatten().min();
            // A worker that has had no data yet holds no state: its part of a checkpoint it passes is empty
            // (with the statistics every worker applied).
            let stop_at = stop.as_ref().and_then(|s| s.epoch());
            if let Some(ck) = &ckpt
                && next.is_none()
            {
                let limit = match (bound, stash.keys().next()) {
                    (Some(b), Some(&s)) => Some(b.min(s)),
                    (b, s) => b.or(s.copied()),
                };
                // (A stopped run's inputs end after the stop epoch.)
                let limit = limit.or(stop_at.map(|s| s + 1));
                // The last checkpoint epoch below the limit (the stop epoch is one).
                let regular = limit
                    .filter(|l| *l >= ck.cfg.every)
                    .map(|l| l - 1 - l % ck.cfg.every);
                let stopping = stop_at.filter(|s| limit.is_some_and(|l| *s < l));
                if let Some(c) = regular.max(stopping) {
                    if c >= ckpt_from {
                        let mut at_c = stats.clone();
                        for (_, ds) in cohort_stash.range(..=c) {
                            for d in ds {
                                at_c.apply(d);
                            }
                        }
                        if let Some(w) = start_state_part(ck, c) {
                            finish_state_part(
                                ck,
                                w,
                                c,
                                config.features,
                                blocks,
                                0,
                                at_c.raw(),
                                &[],
                                &window,
                            );
                        }
                        ckpt_from = c + 1;
                    }
                }
            }
            loop {
                // The next epoch to process: contiguous after the first epoch with data.
                let e = match next {
                    Some(e) => e,
                    None => match stash.keys().next() {
                        Some(&e) => e,
                        None => break,
                    },
                };
                if bound.is_some_and(|b| e >= b) {
                    break;
                }
                let mut logs = stash.remove(&e).unwrap_or_default();
                if f_logs.is_none()
                    && logs.is_empty()
                    && stash.is_empty()
                    && stop_at.is_none_or(|s| e > s)
                {
                    // Input exhausted: nothing more will ever change (a stopped run goes on to the stop
                    // epoch, as the uninterrupted run would).
                    next = Some(e);
                    break;
                }
                // Fold in the cohort differences of earlier epochs.
                let ready: Vec<u64> = cohort_stash.range(..=e).map(|(t, _)| *t).collect();
                for t in ready {
                    if let Some(ds) = cohort_stash.remove(&t) {
                        for d in &ds {
                            stats.apply(d);
                        }
                    }
                }
                let priors = stats.priors();
                // The topology as of this epoch.
                if let Some(m) = membership.as_mut() {
                    let ready: Vec<u64> = topo_stash.range(..=e).map(|(t, _)| *t).collect();
                    for t in ready {
                        for (p, _, d) in topo_stash.remove(&t).unwrap_or_default() {
                            m.apply(p, d);
                        }
                    }
                }
                if upper < e {
                    writer.seal(Antichain::from_elem(e));
                    upper = e;
                }
                let mut dump = match &ckpt {
                    Some(ck)
                        if (ck.cfg.is_checkpoint(e) || stop_at == Some(e)) && e >= ckpt_from =>
                    {
                        start_state_part(ck, e)
                    }
                    _ => None,
                };
                let mut view = publisher
                    .as_mut()
                    .and_then(|p| p.begin(e, config.features, worker.customers_hint));
                let result = worker.run_epoch(
                    e,
                    &mut logs,
                    &mut reader,
                    &priors,
                    &mut acc,
                    EpochSide {
                        dump: dump.as_mut(),
                        membership: membership.as_mut(),
                        watch: watch.as_deref(),
                        view: view.as_mut(),
                    },
                );
                if let (Some(p), Some(v)) = (publisher.as_mut(), view) {
                    p.finish(v);
                }
                // Keep the epoch's buffer for a later epoch: its capacity is already the size of an
                // epoch, so the next epoch's logs append without growing (and copying) a new vector.
                logs.clear();
                if spare.len() < 2 {
                    spare.push(logs);
                }
                // Compact to the next epoch first, so the new batch is merged as soon as it is inserted.
                reader.set_logical_compaction(Antichain::from_elem(e + 1).borrow());
                reader.set_physical_compaction(Antichain::from_elem(e + 1).borrow());
                let desc = Description::new(
                    Antichain::from_elem(e),
                    Antichain::from_elem(e + 1),
                    Antichain::from_elem(0),
                );
                let span = Span::new(desc, result.batch);
                writer.insert(span.clone(), timely::progress::Stamp::from_elem(e));
                upper = e + 1;
                writer.exert();

                let cap_at = |i: usize| held[i].delayed(&e);
                out_spans.activate().session(&cap_at(0)).give(span);
                let mut anom = result.anomalies;
                if !anom.is_empty() {
                    out_anom
                        .activate()
                        .session(&cap_at(1))
                        .give_container(&mut anom);
                }
                let mut ev = result.evidence;
                if !ev.is_empty() {
                    out_ev
                        .activate()
                        .session(&cap_at(2))
                        .give_container(&mut ev);
                }
                out_counts
                    .activate()
                    .session(&cap_at(3))
                    .give(result.counts);
                let mut dead = result.dead;
                if !dead.is_empty() {
                    out_dead
                        .activate()
                        .session(&cap_at(4))
                        .give_container(&mut dead);
                }
                let mut el = result.elements;
                if !el.is_empty() {
                    out_elements
                        .activate()
                        .session(&cap_at(6))
                        .give_container(&mut el);
                }
                // The cohort sample of this epoch enters the window; the one of COHORT_WINDOW epochs ago
                // leaves it.
                let mut sample = Vec::new();
                acc.drain(&mut sample);
                let mut deltas = sample.clone();
                window.push_back((e, sample));
                while window.front().is_some_and(|(t, _)| t + COHORT_WINDOW <= e) {
                    if let Some((_, old)) = window.pop_front() {
                        deltas.extend(old.into_iter().map(|d| CohortDelta {
                            delta: -d.delta,
                            ..d
                        }));
                    }
                }
                consolidate_deltas(&mut deltas);
                if let (Some(ck), Some(w)) = (&ckpt, dump.take()) {
                    finish_state_part(
                        ck,
                        w,
                        e,
                        config.features,
                        blocks,
                        result.dumped,
                        stats.raw(),
                        &deltas,
                        &window,
                    );
                    ckpt_from = e + 1;
                }
                if !deltas.is_empty() {
                    out_cohort
                        .activate()
                        .session(&cap_at(5))
                        .give_container(&mut deltas);
                }
                next = Some(e + 1);
            }
            // Hold capabilities at the next epoch to process; release them all once the input is done.
            let finished = f_logs.is_none() && stash.is_empty();
            if finished {
                caps = None;
                if let Some(size) = &size {
                    measure(&mut reader, size);
                }
                writer.seal(Antichain::new());
                return;
            }
            let low = match (next, stash.keys().next(), f_logs) {
                (Some(n), _, _) => Some(n),
                (None, Some(&s), f) => Some(f.map_or(s, |f| s.min(f))),
                (None, None, f) => f,
            };
            if let Some(low) = low {
                for c in held.iter_mut() {
                    if *c.time() < low {
                        c.downgrade(&low);
                    }
                }
            }
        }
    });

    ModelStreams {
        state: Arranged {
            stream: spans,
            trace: published,
        },
        anomalies,
        evidence,
        counts,
        dead,
        cohort: cohort_out,
        elements,
    }
}

/// Starts worker `ck.worker`'s series-state part of checkpoint `c` (`None`, logged, if it cannot be).
fn start_state_part(ck: &ModelCheckpoint, c: u64) -> Option<PartWriter> {
    let started = ck.cfg.make_epoch_dir(c).and_then(|d| {
        PartWriter::start(d.join(crate::checkpoint::state_part(ck.worker, ck.peers)))
    });
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("checkpoint at epoch {c}: {e}");
            None
        }
    }
}

/// Hands the part's header to its writer; the write completes in the background.
#[allow(clippy::too_many_arguments)]
fn finish_state_part(
    ck: &ModelCheckpoint,
    w: PartWriter,
    c: u64,
    features: usize,
    blocks: usize,
    customers: u64,
    stats: &[i64],
    deltas: &[CohortDelta],
    window: &std::collections::VecDeque<(u64, Vec<CohortDelta>)>,
) {
    let header = StateHeader {
        epoch: c,
        worker: ck.worker as u32,
        peers: ck.peers as u32,
        features: features as u32,
        blocks: blocks as u32,
        customers,
        stats: stats.to_vec(),
        deltas: deltas.to_vec(),
        window: window.iter().cloned().collect(),
    };
    match bincode::serialize(&header) {
        Ok(h) => {
            let handle = w.finish(h);
            if let Ok(mut p) = ck.pending.lock() {
                p.push(handle);
            }
        }
        Err(e) => tracing::error!("checkpoint at epoch {c}: header: {e}"),
    }
    // The source's cut for the same epoch (taken when its frontier passed `c`, which it has).
    let Some(snap) = ck.snaps.borrow_mut().take(c) else {
        tracing::error!(
            "checkpoint at epoch {c}: worker {} has no source snapshot for it (left incomplete)",
            ck.worker
        );
        return;
    };
    let body = match bincode::serialize(&snap) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("checkpoint at epoch {c}: source snapshot: {e}");
            return;
        }
    };
    let path = ck
        .cfg
        .epoch_dir(c)
        .join(crate::checkpoint::source_part(ck.worker, ck.peers));
    write_in_background(&ck.pending, c, path, body);
}

/// Writes a small part of checkpoint `c` (`part::write_part`) on a thread of its own, joined with the
/// run's other pending writes.
pub fn write_in_background(
    pending: &PendingWrites,
    c: u64,
    path: std::path::PathBuf,
    body: Vec<u8>,
) {
    let spawned = std::thread::Builder::new()
        .name("fleetwatch-ckpt".into())
        .spawn(move || crate::checkpoint::part::write_part(&path, &body, &[]));
    match spawned {
        Ok(handle) => {
            if let Ok(mut p) = pending.lock() {
                p.push(handle);
            }
        }
        Err(e) => tracing::error!("checkpoint at epoch {c}: {e}"),
    }
}

/// Epochs a cohort sample stays in the population statistics: every mature customer is sampled once per
/// window (on the epochs where `(route hash + epoch) % COHORT_WINDOW == 0`), so the statistics describe the
/// whole population as of the last few hours, at 1/64 of the cost of tracking every series every epoch.
pub const COHORT_WINDOW: u64 = 64;

fn consolidate_deltas(d: &mut Vec<CohortDelta>) {
    d.sort_by_key(|x| (x.feature, x.stat));
    let mut out: Vec<CohortDelta> = Vec::with_capacity(d.len());
    for x in d.drain(..) {
        match out.last_mut() {
            Some(l) if l.feature == x.feature && l.stat == x.stat => l.delta += x.delta,
            _ => out.push(x),
        }
    }
    out.retain(|x| x.delta != 0);
    *d = out;
}

/// Copies blocks read from the trace into a slot array.
fn unpack(blocks: &[Block], slots: &mut [Slot]) {
    for (b, block) in blocks.iter().enumerate() {
        for s in 0..BLOCK_SLOTS {
            slots[b * BLOCK_SLOTS + s] = block.slot(s);
        }
    }
}

/// What one epoch produced at one worker.
pub struct EpochResult {
    pub batch: Option<<StateSpine as TraceReader>::Batch>,
    pub anomalies: Vec<AnomalyDiff>,
    pub evidence: Vec<Evidence>,
    pub counts: ModelCounts,
    pub dead: Vec<DeadLetter>,
    /// Customers written to the checkpoint part (when one was given).
    pub dumped: u64,
    /// With a topology: this worker's sums of the epoch per element.
    pub elements: Vec<ElementPartial>,
}

/// What an epoch writes besides the state: a checkpoint part (when the epoch is a checkpoint's), and with a
/// topology the per-element sums.
#[derive(Default)]
pub struct EpochSide<'a> {
    pub dump: Option<&'a mut PartWriter>,
    pub membership: Option<&'a mut Membership>,
    /// Keep every scored observation of the watched customers (`fleetwatch plot`).
    pub watch: Option<&'a crate::watch::Watch>,
    /// Every customer's latest numbers and alerts (`--serve`, `--predictions`).
    pub view: Option<&'a mut crate::serving::view::ViewBuilder>,
}

/// The per-epoch work of the operator, separated from the timely plumbing.
pub struct EpochWorker {
    config: ModelConfig,
    detector: Arc<dyn Detector>,
    blocks: usize,
    slots: Vec<Slot>,
    old: Vec<Block>,
    /// Approximate number of customers in the trace (capacity hint for the next batch).
    pub customers_hint: usize,
    /// One checkpoint record (id, then every block).
    record: Vec<u8>,
}

impl EpochWorker {
    pub fn new(config: ModelConfig, detector: Arc<dyn Detector>, blocks: usize) -> Self {
        EpochWorker {
            config,
            detector,
            blocks,
            slots: vec![[0u8; SLOT_BYTES]; blocks * BLOCK_SLOTS],
            old: vec![Block::ZERO; blocks],
            customers_hint: 0,
            record: vec![0u8; record_bytes(blocks)],
        }
    }

    /// Runs epoch `e` over the trace's current state and the epoch's logs; with `side.dump`, writes every
    /// customer's state after the epoch to it (a checkpoint part), in customer order.
    pub fn run_epoch<const N: usize>(
        &mut self,
        e: u64,
        logs: &mut [LogN<N>],
        reader: &mut TraceAgent<StateSpine>,
        priors: &[crate::model::FeaturePrior],
        acc: &mut CohortAccumulator,
        side: EpochSide<'_>,
    ) -> EpochResult {
        let EpochSide {
            mut dump,
            mut membership,
            watch,
            mut view,
        } = side;
        logs.sort_unstable_by(|a, b| {
            a.customer
                .cmp(&b.customer)
                .then(a.ts.cmp(&b.ts))
                .then(a.pos.cmp(&b.pos))
        });
        let batches = reader
            .batches_through(Antichain::new().borrow())
            .expect("the series-state trace is readable through its upper frontier");
        let (mut cursor, storage) = differential_dataflow::trace::cursor::cursor_list(batches);
        let hint = self.customers_hint.max(logs.len());
        let mut batch = DirectBatch::new(e, hint, hint * self.blocks);
        let mut changed: Vec<(u8, Block)> = Vec::with_capacity(self.blocks);
        let ctx = StepContext {
            config: &self.config,
            detector: self.detector.as_ref(),
            priors,
            epoch: e,
        };
        let f_count = self.config.features;
        let mut out = StepOut {
            deviate: membership.is_some(),
            ..StepOut::default()
        };
        if let Some(m) = membership.as_deref_mut() {
            m.begin();
        }
        let mut counts = ModelCounts::default();
        let mut dead = Vec::new();
        let mut dumped = 0u64;
        let mut new_blocks = vec![Block::ZERO; self.blocks];
        let mut li = 0usize;
        loop {
            let trace_key = cursor.get_key(&storage).copied();
            let log_key = logs.get(li).map(|l| l.customer);
            let customer = match (trace_key, log_key) {
                (None, None) => break,
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (Some(a), Some(b)) => a.min(b),
            };
            let element = membership.as_deref_mut().and_then(|m| m.visit(customer));
            for b in self.old.iter_mut() {
                *b = Block::ZERO;
            }
            if trace_key == Some(customer) {
                while let Some(v) = cursor.get_val(&storage) {
                    let v = *v as usize;
                    let mut acc_block = Block::ZERO;
                    cursor.map_times(&storage, |_t, d| acc_block.plus_equals(d));
                    if v < self.blocks {
                        self.old[v] = acc_block;
                    }
                    cursor.step_val(&storage);
                }
                cursor.step_key(&storage);
            }
            let start = li;
            while li < logs.len() && logs[li].customer == customer {
                li += 1;
            }
            let customer_logs = &logs[start..li];
            if let (Some(i), Some(m)) = (element, membership.as_deref_mut()) {
                let meta = CustomerMeta::decode(
                    &self.old[f_count / BLOCK_SLOTS].slot(f_count % BLOCK_SLOTS),
                );
                let p = m.partial(i);
                let reporting = !customer_logs.is_empty();
                p.reporting += reporting as u32;
                let recent = meta.last_seen != 0
                    && (e + 1).saturating_sub(meta.last_seen as u64) <= ACTIVE_EPOCHS;
                p.active += (reporting || recent) as u32;
            }
            let sampled = (customer_route(&customer).wrapping_add(e)) % COHORT_WINDOW == 0;
            if customer_logs.is_empty() && quiet_customer(&self.old, f_count, e, &self.config) {
                if sampled {
                    unpack(&self.old, &mut self.slots);
                    contribute_customer(&ctx, &self.slots[..=f_count], acc);
                }
                if let Some(v) = view.as_deref_mut() {
                    let (old, slots) = (&self.old, &mut self.slots);
                    v.unchanged(customer, || {
                        unpack(old, slots);
                        slots[..=f_count].to_vec()
                    });
                }
                dumped += dump_record(&mut self.record, &mut dump, customer, &self.old);
                continue;
            }
            counts.customers += 1;
            unpack(&self.old, &mut self.slots);
            let dups_before = out.duplicates.len();
            let watched = watch.is_some_and(|w| w.contains(&customer));
            out.trace = watched || view.is_some();
            step_customer(
                &ctx,
                customer,
                &mut self.slots[..self.config.slots()],
                customer_logs,
                &mut out,
            );
            if sampled {
                contribute_customer(&ctx, &self.slots[..=f_count], acc);
            }
            if let Some(v) = view.as_deref_mut() {
                v.stepped(customer, &self.slots[..=f_count], &out.scored);
            }
            match watch {
                Some(w) if watched => w.record(e, &mut out.scored),
                _ => out.scored.clear(),
            }
            if let (Some(i), Some(m)) = (element, membership.as_deref_mut()) {
                let p = m.partial(i);
                for (f, z) in out.deviations.drain(..) {
                    p.add_deviation(f as usize, z);
                }
            }
            for &i in &out.duplicates[dups_before..] {
                let l = &customer_logs[i];
                let mut dl = DeadLetter::new(
                    l.pos.partition >> 20,
                    0,
                    format!(
                        "customer {} ts {} partition {} offset {}",
                        l.customer,
                        l.ts,
                        l.pos.partition & 0xF_FFFF,
                        l.pos.offset
                    )
                    .as_bytes(),
                    Rejection::new(
                        RejectCode::Duplicate,
                        format!(
                            "a log of {} at ts {} was already processed",
                            l.customer, l.ts
                        ),
                    ),
                );
                dl.epoch = Some(e);
                dl.partition = Some(l.pos.partition & 0xF_FFFF);
                dl.offset = Some(l.pos.offset);
                dead.push(dl);
            }
            changed.clear();
            for (b, slot) in new_blocks.iter_mut().enumerate().take(self.blocks) {
                let mut new = Block::ZERO;
                for s in 0..BLOCK_SLOTS {
                    new.set_slot(s, &self.slots[b * BLOCK_SLOTS + s]);
                }
                if new != self.old[b] {
                    changed.push((b as u8, new.minus(&self.old[b])));
                }
                *slot = new;
            }
            batch.push(customer, &changed);
            dumped += dump_record(&mut self.record, &mut dump, customer, &new_blocks);
        }
        drop(cursor);
        drop(storage);
        let elements = membership.map(|m| m.finish()).unwrap_or_default();
        self.customers_hint = counts.customers as usize;
        counts.series_scored = out.series_scored;
        counts.duplicates = out.duplicates.len() as u64;
        let anomalies = out
            .changes
            .into_iter()
            .map(|(k, d)| (k, e, d as isize))
            .collect();
        let mut evidence = out.evidence;
        evidence.sort_by_key(|e| (e.customer, e.feature));
        EpochResult {
            batch: batch.done().map(Rc::new),
            anomalies,
            evidence,
            counts,
            dead,
            dumped,
            elements,
        }
    }
}

/// Appends a customer's state after an epoch to a checkpoint part (nothing for an all-zero state, or
/// without a part); returns the records written.
#[inline]
fn dump_record(
    record: &mut [u8],
    dump: &mut Option<&mut PartWriter>,
    customer: CustomerId,
    blocks: &[Block],
) -> u64 {
    let Some(w) = dump.as_mut() else { return 0 };
    if blocks.iter().all(|b| *b == Block::ZERO) {
        return 0;
    }
    let id = CustomerId::WIRE_BYTES;
    record[..id].copy_from_slice(&customer.to_wire());
    for (b, out) in blocks
        .iter()
        .zip(record[id..].chunks_exact_mut(Block::BYTES))
    {
        b.write_le(out);
    }
    w.push(record);
    1
}

/// A customer without logs this epoch whose silence can no longer change (already reported at the highest
/// severity) needs no work.
fn quiet_customer(old: &[Block], f_count: usize, e: u64, cfg: &ModelConfig) -> bool {
    let b = f_count / BLOCK_SLOTS;
    let s = f_count % BLOCK_SLOTS;
    let meta = CustomerMeta::decode(&old[b].slot(s));
    if meta.last_seen == 0 {
        return true;
    }
    let silent_for = (e + 1).saturating_sub(meta.last_seen as u64);
    let settled = (cfg.alert.critical_ratio * cfg.silence_epochs as f32).ceil() as u64;
    matches!(meta.silent, Some(a) if a.severity == crate::model::header::Severity::Critical)
        && silent_for > settled
}
