//! The live Kafka source (feature `kafka`): each worker consumes the partitions it owns, epochs them like a
//! replay would, and commits its input offsets once the sink has made every output of an epoch durable.
//!
//! # Partitions and epochs
//!
//! Partition `p` of topic `i` (in `--input` order) belongs to worker `partition_owner(i, p, peers)` over all
//! workers of all processes — the same rule as a recorded topic, so a replay of what was consumed reads the
//! same partitions on the same workers. Every message becomes the recorded-topic line `record` would have
//! written (partition, offset, timestamp, key, value) and is parsed and epoched from it: per-partition
//! watermarks and the lateness policy decide exactly as they do for a replay of the recorded topic.
//!
//! A worker holds the pipeline's epoch at the least open epoch over its partitions, with three exceptions
//! that keep a live run from stalling:
//!
//! * a partition that has not delivered its first message holds the epoch where it is while it may have
//!   data (its position is below the broker's high watermark) or, empty, until it counts as idle — like the
//!   prescan of a file, and so that a run started before its data does not run ahead of it;
//! * an **idle** partition — caught up with the broker and silent for `kafka.idle_partition_seconds` —
//!   holds nothing; when every partition of a worker is idle the worker follows an event-time clock: the
//!   latest event time it delivered, advanced at wall-clock speed since (for a live fleet, the wall clock);
//!   a worker that owns no partition holds nothing at all;
//! * the **guard**: when the worker's epoch has not moved for `kafka.epoch_timeout_seconds` of wall time
//!   although later data exists (a partition already past it, or the wall clock), the epoch is closed with
//!   what arrived; its summary carries `"closed_by_guard":true`.
//!
//! Whatever the exceptions let through is raised into the intake's floor: a record that arrives afterwards
//! for an epoch below it follows the lateness policy (folded into the open epoch, or dead-lettered), and is
//! counted as late.
//!
//! # Offsets
//!
//! For each partition the source remembers the first offset it delivered (or dead-lettered) at each epoch.
//! When the sink reports that every output of every epoch below `A` is acknowledged, the partition's commit
//! position becomes the first offset at an epoch `≥ A` (or, with none, one past the last consumed message),
//! and is committed to the consumer group. A restarted run without a checkpoint re-reads its inputs from the
//! beginning to rebuild its models (README: "Kafka: what a consumer sees after a crash").
//!
//! # Checkpoints
//!
//! A partition's cut is the offset after the last message consumed — or, while the partition has only
//! refused messages waiting for its first good record, the first of those (they are not in the intake yet:
//! read again, they are attributed as the first run would have). What was consumed before the cut for
//! epochs after the checkpoint is in the snapshot and re-delivered; a restored run assigns each owned
//! partition at its cut in its one assignment and takes over its event-time clock, so it reads every
//! message once, on whichever worker owns the partition in the new layout.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::parse::LogParser;
use super::{Admitted, Intake, PartitionCut, Source, SourceError, SourceSnapshot, partition_owner};
use crate::epoch::EpochClock;
use crate::keys::CustomerId;
use crate::record::{DeadLetter, LogN, SourcePos};
use crate::spec::Spec;

/// How a run consumes Kafka.
#[derive(Debug, Clone)]
pub struct KafkaInput {
    pub brokers: crate::kafka::Brokers,
    pub topics: Vec<String>,
    pub group_id: String,
    /// Stop once every partition has been caught up and silent this long (replays, tests); `None`: run on.
    pub until_idle: Option<Duration>,
    /// A partition caught up and silent this long stops holding the epoch.
    pub idle_partition: Duration,
    /// The wall-clock guard: an epoch held this long while later data exists is closed with what arrived.
    pub epoch_timeout: Duration,
}

impl KafkaInput {
    /// The inputs' names, as dead letters name their input.
    pub fn names(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| format!("kafka://{}/{t}", self.brokers))
            .collect()
    }
}

/// One owned partition's progress.
struct Part {
    topic: String,
    /// Where consumption started: 0 (the beginning) or a restored checkpoint's cut.
    from: i64,
    /// Offset after the last consumed message (`None`: nothing consumed yet).
    next: Option<i64>,
    /// Caught up with the broker's high watermark, as last seen.
    caught_up: bool,
    /// The last message (or the assignment).
    last_message: Instant,
    /// Epoch → the first offset delivered or dead-lettered at it, for epochs not yet acknowledged.
    pending: BTreeMap<u64, i64>,
    /// Dead letters that came before the partition's first good record: attributed, as a replay's prescan
    /// would, to the epoch that record opens (or, if the partition goes idle first, to the held epoch).
    unstarted_dead: Vec<DeadLetter>,
    committed: i64,
    /// Fetching is paused: the partition ran more than [`AHEAD_EPOCHS`] past the others.
    paused: bool,
    /// Its `fleetwatch_consumer_lag` gauge (high watermark − position), looked up once.
    lag: prometheus_client::metrics::gauge::Gauge,
}

/// How many epochs a partition may run ahead of the slowest active partition of its worker before its
/// fetching is paused: a replay's consumer otherwise drains whichever partition the broker answers for
/// first, buffering its records (and shipping them) far ahead of the epoch the worker holds.
const AHEAD_EPOCHS: u64 = 24;

/// A paused partition resumes once the slowest active one is within this many epochs of it.
const RESUME_EPOCHS: u64 = 8;

/// One worker's Kafka consumer and epoching state.
pub struct KafkaSource<const N: usize> {
    consumer: BaseConsumer,
    cfg: KafkaInput,
    parser: LogParser,
    intake: Intake<N>,
    parts: HashMap<(u32, u32), Part>,
    scratch: LogN<N>,
    line: Vec<u8>,
    /// The epoch this worker holds (what `frontier` last returned).
    held: u64,
    held_since: Instant,
    finished: bool,
    idle_pumps: u32,
    last_status: Instant,
    /// The largest event time delivered so far, and when it was delivered: the anchor of the event-time
    /// clock that idle partitions follow.
    max_ts: Option<(i64, Instant)>,
    /// The acknowledged frontier last acted on.
    acked: u64,
    /// The least open epoch of the partitions that have delivered and are not idle (as `frontier` last
    /// saw them): partitions more than [`AHEAD_EPOCHS`] past it are paused, and `--speed` paces by it.
    slowest: Option<u64>,
}

fn kafka_err(e: KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl<const N: usize> KafkaSource<N> {
    /// Connects worker `index` of `peers` and assigns it its partitions: each from its beginning, or, resuming
    /// from a checkpoint's source snapshots (of any earlier layout), from its cut with its event-time clock.
    /// What the earlier workers had read past the checkpoint is re-delivered through the intake, by one
    /// worker.
    pub fn new(
        spec: &Spec,
        cfg: &KafkaInput,
        index: usize,
        peers: usize,
        resume: &[SourceSnapshot],
    ) -> Result<KafkaSource<N>, SourceError> {
        let consumer: BaseConsumer = crate::kafka::client_config(
            &cfg.brokers,
            &[
                ("group.id", &cfg.group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
                // Short long-polls: idle partitions are noticed within a fraction of a second.
                ("fetch.wait.max.ms", "100"),
            ],
        )
        .create()
        .map_err(kafka_err)?;
        let mut intake = Intake::new(EpochClock::new(
            &spec.epoch,
            spec.input.max_future_skew_seconds,
        ));
        let cuts: HashMap<(u32, u32), PartitionCut> = intake
            .restore_cuts(resume, |i, p| partition_owner(i, p, peers) == index)
            .into_iter()
            .map(|c| ((c.input, c.partition), c))
            .collect();
        // The checkpoint epoch: a restored partition's earliest unacknowledged offset is pending after it.
        let resumed_epoch = resume.iter().map(|s| s.epoch).max().unwrap_or(0);
        let mut tpl = TopicPartitionList::new();
        let mut parts = HashMap::new();
        let now = Instant::now();
        let mut max_ts: Option<(i64, Instant)> = None;
        for (i, topic) in cfg.topics.iter().enumerate() {
            let n = crate::kafka::partition_count(&cfg.brokers, topic)
                .map_err(|e| SourceError::Kafka(e.to_string()))?;
            for p in 0..n {
                if partition_owner(i as u32, p, peers) != index {
                    continue;
                }
                let cut = cuts.get(&(i as u32, p));
                let from = cut.map_or(0, |c| i64::try_from(c.at.offset).unwrap_or(i64::MAX));
                let start = if from > 0 {
                    Offset::Offset(from)
                } else {
                    Offset::Beginning
                };
                tpl.add_partition_offset(topic, p as i32, start)
                    .map_err(kafka_err)?;
                let mut pending = BTreeMap::new();
                if let Some(c) = cut {
                    if let Some(w) = c.watermark
                        && max_ts.is_none_or(|(t, _)| w > t)
                    {
                        max_ts = Some((w, now));
                    }
                    let commit = i64::try_from(c.record).unwrap_or(from);
                    if commit < from {
                        pending.insert(resumed_epoch.saturating_add(1), commit);
                    }
                }
                parts.insert(
                    (i as u32, p),
                    Part {
                        topic: topic.clone(),
                        from,
                        next: None,
                        caught_up: false,
                        last_message: now,
                        pending,
                        unstarted_dead: Vec::new(),
                        committed: -1,
                        paused: false,
                        lag: crate::metrics::global().consumer_lag(topic, p),
                    },
                );
            }
        }
        consumer.assign(&tpl).map_err(kafka_err)?;
        let parts_empty = parts.is_empty();
        let placeholder = CustomerId::parse(b"x", b"")
            .map_err(|_| SourceError::Kafka("internal: placeholder id".into()))?;
        Ok(KafkaSource {
            consumer,
            cfg: cfg.clone(),
            parser: LogParser::new(spec),
            intake,
            parts,
            scratch: LogN::empty(placeholder),
            line: Vec::with_capacity(1024),
            held: 0,
            held_since: now,
            idle_pumps: 0,
            last_status: now,
            max_ts,
            acked: 0,
            slowest: None,
            // A worker that owns no partition never emits: it holds nothing.
            finished: parts_empty,
        })
    }

    /// Pauses fetching of a partition that ran more than [`AHEAD_EPOCHS`] past the slowest active one
    /// (what was fetched but not polled is dropped by the client and fetched again on resume).
    fn pause_if_ahead(&mut self, key: (u32, u32)) {
        let Some(slowest) = self.slowest else {
            return;
        };
        let ahead = self
            .intake
            .open_epoch(key)
            .is_some_and(|e| e > slowest.saturating_add(AHEAD_EPOCHS));
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        if ahead && !part.paused {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&part.topic, key.1 as i32);
            match self.consumer.pause(&tpl) {
                Ok(()) => part.paused = true,
                Err(e) => tracing::warn!("kafka: cannot pause {}/{}: {e}", part.topic, key.1),
            }
        }
    }

    /// Resumes the paused partitions the slowest one has come within [`RESUME_EPOCHS`] of (all of them when
    /// no partition is active).
    fn resume_caught_up(&mut self) {
        let mut tpl = TopicPartitionList::new();
        let mut resumed = Vec::new();
        for (key, part) in &self.parts {
            if !part.paused {
                continue;
            }
            let behind = match self.slowest {
                None => true,
                Some(s) => self
                    .intake
                    .open_epoch(*key)
                    .is_none_or(|e| e <= s.saturating_add(RESUME_EPOCHS)),
            };
            if behind {
                tpl.add_partition(&part.topic, key.1 as i32);
                resumed.push(*key);
            }
        }
        if resumed.is_empty() {
            return;
        }
        match self.consumer.resume(&tpl) {
            Ok(()) => {
                for key in resumed {
                    if let Some(p) = self.parts.get_mut(&key) {
                        p.paused = false;
                    }
                }
            }
            Err(e) => tracing::warn!("kafka: cannot resume partitions: {e}"),
        }
    }

    /// Refreshes each partition's caught-up flag from the high watermarks the consumer has cached.
    fn refresh_positions(&mut self) {
        let client = self.consumer.client().native_ptr();
        for (key, part) in self.parts.iter_mut() {
            let Ok(topic) = std::ffi::CString::new(part.topic.as_str()) else {
                continue;
            };
            let (mut low, mut high) = (-1i64, -1i64);
            // SAFETY: `client` is the consumer's live handle (the consumer outlives this call), `topic` is a
            // NUL-terminated string that lives through the call, and librdkafka only writes the two
            // offsets. The call reads the watermarks cached from the last fetch response: no network.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_get_watermark_offsets(
                    client,
                    topic.as_ptr(),
                    key.1 as i32,
                    &mut low,
                    &mut high,
                )
            };
            if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                && high >= 0
            {
                let position = part.next.unwrap_or(low.max(part.from));
                part.caught_up = position >= high;
                part.lag.set((high - position).max(0));
            }
        }
    }

    fn handle(&mut self, topic: u32, partition: u32, offset: i64) {
        let key = (topic, partition);
        let line = &self.line[..self.line.len().saturating_sub(1)];
        let mut log = self.scratch;
        let off = u64::try_from(offset).ok();
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        part.next = Some(offset + 1);
        part.last_message = Instant::now();
        let admitted = match self.parser.parse_recorded(line, &mut log) {
            Ok(env) => {
                log.pos = SourcePos {
                    partition: env.partition,
                    offset: env.offset,
                };
                if self.max_ts.is_none_or(|(t, _)| log.ts > t) {
                    self.max_ts = Some((log.ts, Instant::now()));
                }
                self.intake.admit(log, key, 0, off, || line.to_vec())
            }
            Err(rej) => {
                let mut dl = DeadLetter::new(topic, 0, line, rej);
                dl.partition = Some(partition);
                dl.offset = off;
                if self.intake.open_epoch(key).is_none() {
                    part.unstarted_dead.push(dl);
                    return;
                }
                Admitted::DeadLettered(self.intake.push_dead(dl, key))
            }
        };
        let epoch = match admitted {
            Admitted::Delivered(e) | Admitted::DeadLettered(Some(e)) => e,
            Admitted::DeadLettered(None) => self.held,
        };
        part.pending.entry(epoch).or_insert(offset);
        if !part.unstarted_dead.is_empty() {
            Self::release_unstarted(&mut self.intake, part, key);
        }
    }

    /// Attributes a partition's early dead letters to its open epoch (now known, or the floor).
    fn release_unstarted(intake: &mut Intake<N>, part: &mut Part, key: (u32, u32)) {
        for dl in std::mem::take(&mut part.unstarted_dead) {
            let offset = dl.offset.and_then(|o| i64::try_from(o).ok()).unwrap_or(0);
            if let Some(e) = intake.push_dead(dl, key) {
                let first = part.pending.entry(e).or_insert(offset);
                *first = (*first).min(offset);
            }
        }
    }
}

impl<const N: usize> Source<N> for KafkaSource<N> {
    fn frontier(&mut self) -> Option<u64> {
        if self.finished {
            return None;
        }
        let now = Instant::now();
        if now.duration_since(self.last_status) >= Duration::from_secs(5) {
            self.last_status = now;
            for (key, part) in &self.parts {
                tracing::debug!(
                    topic = %part.topic,
                    partition = key.1,
                    next = ?part.next,
                    caught_up = part.caught_up,
                    quiet_s = now.duration_since(part.last_message).as_secs_f64(),
                    open_epoch = ?self.intake.open_epoch(*key),
                    held = self.held,
                    "kafka partition"
                );
            }
        }
        let mut min: Option<u64> = None;
        let mut waiting = false;
        let mut all_quiet = true;
        let mut started_any = false;
        let mut ahead = false;
        for (key, part) in self.parts.iter_mut() {
            let quiet = now.duration_since(part.last_message);
            if !part.unstarted_dead.is_empty()
                && part.caught_up
                && quiet
                    >= self
                        .cfg
                        .idle_partition
                        .min(self.cfg.until_idle.unwrap_or(Duration::MAX))
            {
                // Only refusals so far, and nothing more coming: attribute them to the held epoch.
                self.intake
                    .partitions
                    .entry(*key)
                    .or_insert(super::PartitionState::new(Some(self.held)));
                Self::release_unstarted(&mut self.intake, part, *key);
            }
            if !(part.caught_up && self.cfg.until_idle.is_some_and(|d| quiet >= d)) {
                all_quiet = false;
            }
            let Some(open) = self.intake.open_epoch(*key) else {
                // No record yet: hold while it may still have data, and an empty partition for as long as
                // any partition may be silent before it counts as idle (a run started before its data).
                if !part.caught_up || quiet < self.cfg.idle_partition {
                    waiting = true;
                }
                continue;
            };
            started_any = true;
            if open > self.held {
                ahead = true;
            }
            if part.caught_up && quiet >= self.cfg.idle_partition {
                continue; // idle: holds nothing
            }
            min = Some(min.map_or(open, |m| m.min(open)));
        }
        self.slowest = min;
        if self.cfg.until_idle.is_some() && all_quiet {
            self.finished = true;
            return None;
        }
        // The event-time clock idle partitions follow: the latest event time delivered, advanced at wall
        // speed since (a live fleet's logs carry the wall clock; a paused replay resumes where it was); before
        // any data, the wall clock itself.
        let estimate = match self.max_ts {
            Some((ts, at)) => ts.saturating_add(now.duration_since(at).as_secs() as i64),
            None => unix_now(),
        };
        let wall = self.intake.clock.open_epoch(estimate);
        let mut f = if waiting {
            self.held
        } else {
            match min {
                Some(m) => m,
                // Every partition idle, or none owned: follow the wall clock.
                None => wall,
            }
        };
        if f <= self.held
            && started_any
            && now.duration_since(self.held_since) >= self.cfg.epoch_timeout
            && (ahead || wall > self.held)
        {
            tracing::warn!(
                epoch = self.held,
                "epoch held for {:?}: closed by the wall-clock guard with what arrived",
                self.cfg.epoch_timeout
            );
            self.intake.note_guard_closed(self.held);
            f = self.held + 1;
        }
        if f > self.held {
            self.held = f;
            self.held_since = now;
            self.intake.raise_floor(f);
        }
        Some(self.held)
    }

    fn pump(&mut self, budget: usize) -> Result<usize, SourceError> {
        self.resume_caught_up();
        let mut n = 0;
        while n < budget {
            let Some(msg) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let m = match msg {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(e) => {
                    // Broker restarts, leader moves: librdkafka reconnects and retries by itself.
                    tracing::warn!("kafka consumer: {e}");
                    continue;
                }
            };
            let Some(topic) = self.cfg.topics.iter().position(|t| t == m.topic()) else {
                continue;
            };
            let (Ok(partition), offset) = (u32::try_from(m.partition()), m.offset()) else {
                continue;
            };
            crate::kafka::recorded_line(&mut self.line, &m);
            drop(m);
            self.handle(topic as u32, partition, offset);
            self.pause_if_ahead((topic as u32, partition));
            n += 1;
        }
        if n == 0 {
            self.idle_pumps = self.idle_pumps.saturating_add(1);
        } else {
            self.idle_pumps = 0;
        }
        if n < budget {
            self.refresh_positions();
        }
        Ok(n)
    }

    fn intake(&mut self) -> &mut Intake<N> {
        &mut self.intake
    }

    fn acknowledged(&mut self, upto: u64) {
        if upto <= self.acked {
            return;
        }
        self.acked = upto;
        let mut tpl = TopicPartitionList::new();
        for (key, part) in self.parts.iter_mut() {
            let keep = part.pending.split_off(&upto);
            part.pending = keep;
            let early = part
                .unstarted_dead
                .first()
                .and_then(|d| d.offset)
                .and_then(|o| i64::try_from(o).ok());
            let position = match part.pending.values().copied().chain(early).min() {
                Some(o) => o,
                None => match part.next {
                    Some(n) => n,
                    None => continue,
                },
            };
            if position > part.committed {
                part.committed = position;
                let _ =
                    tpl.add_partition_offset(&part.topic, key.1 as i32, Offset::Offset(position));
            }
        }
        // The last commit (every output durable, the run ending) waits for the broker's answer.
        let mode = if upto == u64::MAX {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, mode)
        {
            tracing::warn!("kafka offset commit: {e}");
        }
    }

    fn wants_acks(&self) -> bool {
        true
    }

    fn pace_epoch(&self, _frontier: u64) -> Option<u64> {
        // The frontier stays where it is until every partition has delivered (or gone idle): pace by the
        // partitions that have.
        self.slowest
    }

    fn cuts(&self) -> Option<Vec<PartitionCut>> {
        let mut out: Vec<PartitionCut> = self
            .parts
            .iter()
            .map(|(&(input, partition), part)| {
                let early = part
                    .unstarted_dead
                    .first()
                    .and_then(|d| d.offset)
                    .and_then(|o| i64::try_from(o).ok());
                let at = early.or(part.next).unwrap_or(part.from);
                // The commit position a restored run starts from: the earliest offset of an epoch not
                // yet acknowledged (conservative: this includes epochs up to the checkpoint).
                let commit = part
                    .pending
                    .values()
                    .copied()
                    .chain([at])
                    .min()
                    .unwrap_or(at);
                let st = self.intake.partitions.get(&(input, partition));
                PartitionCut {
                    input,
                    partition,
                    watermark: st.and_then(|s| s.clock.watermark),
                    start: st.and_then(|s| s.start),
                    floor: self.intake.floor_of((input, partition)),
                    at: crate::sources::chunks::Start {
                        offset: u64::try_from(at).unwrap_or(0),
                        line: 0,
                    },
                    last_partition: partition,
                    record: u64::try_from(commit).unwrap_or(0),
                }
            })
            .collect();
        out.sort_by_key(|c| (c.input, c.partition));
        Some(out)
    }

    fn idle_wait(&self) -> Option<Duration> {
        Some(Duration::from_millis(if self.idle_pumps > 100 {
            20
        } else {
            2
        }))
    }
}
