//! The topology feed: the operator that gives the dataflow the fleet's topology as a differential collection
//! that changes while the run goes on (`--topology FILE` for where customers start, `--topology-changes
//! FILE|kafka://…` for where they move).
//!
//! ```text
//!  --topology CSV ─────────┐
//!  --topology-changes ─────┤  worker 0: Placements (the current placement of every customer)
//!   (file, or a Kafka      │  each change at the epoch of its ts, released once every source has closed
//!    topic from its start) │  that epoch (the sources' progress stream tells: its frontier)
//!                          ▼
//!        topology differences (placement, epoch, ±1) ──▶ series model (per-element sums), join with the
//!                                                        open anomalies (members' alerts per element)
//!        member counts ((element, region), epoch, ±1) ─▶ incident operator
//!        refused lines ────────────────────────────────▶ dead letters (code `topology`)
//! ```
//!
//! A change takes effect at the epoch of its `ts`: the operator holds its capability at the sources'
//! frontier, so no model steps an epoch before the topology of that epoch is known. A change whose epoch
//! has already been stepped (a Kafka message that arrives late) takes effect at the first epoch still open.
//! A replay from a file is therefore exact and the same for every worker and process layout (only worker 0
//! reads, and only the changes' own event times decide when they apply).
//!
//! Restarts: the changes are read again from the beginning (the file; the topic from its first offset — a
//! topology topic is a compacted changelog), so a restored run starts with every change up to its checkpoint
//! epoch applied at its own epoch, as the uninterrupted run did; the refusals the uninterrupted run already
//! wrote (those of epochs up to the checkpoint) are not written again.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use crate::arrangement::TopologyDiff;
use crate::incidents::MemberCountDiff;
use crate::record::{DeadLetter, RejectCode, Rejection};
use crate::sources::SourceCounts;
use crate::stop::Stop;
use crate::topology::{ChangeFeedSpec, ElementId, Placement, Placements, Topology, parse_change};

/// What the feed gives the dataflow.
pub struct TopologyStreams<'scope> {
    /// The topology collection's differences.
    pub placements: Stream<'scope, u64, Vec<TopologyDiff>>,
    /// Each element's member count, as differences.
    pub members: Stream<'scope, u64, Vec<MemberCountDiff>>,
    /// Refused rows and changes.
    pub dead: Stream<'scope, u64, Vec<DeadLetter>>,
}

/// A raw change as a feed delivers it: where it was (line number or Kafka offset) and its bytes.
struct RawChange {
    line: u64,
    partition: Option<u32>,
    offset: Option<u64>,
    bytes: Vec<u8>,
}

/// Where the changes come from, once opened on worker 0.
enum Feed {
    File {
        lines: Arc<Vec<(u64, Vec<u8>)>>,
        next: usize,
    },
    #[cfg(feature = "kafka")]
    Kafka(kafka::TopicReader),
}

impl Feed {
    /// New changes: a file's all at once (they are in memory already), at most `budget` of a topic's.
    fn poll(&mut self, budget: usize, out: &mut Vec<RawChange>) -> Result<(), String> {
        match self {
            Feed::File { lines, next } => {
                let end = lines.len();
                for (line, bytes) in &lines[*next..end] {
                    out.push(RawChange {
                        line: *line,
                        partition: None,
                        offset: None,
                        bytes: bytes.clone(),
                    });
                }
                *next = end;
                let _ = budget;
                Ok(())
            }
            #[cfg(feature = "kafka")]
            Feed::Kafka(r) => r.poll(budget, out),
        }
    }

    /// Whether what the feed held when the run started has been read (a topic's changelog up to the end
    /// offsets it had then): no epoch is released before, so a (re)started run sees the topology as it
    /// stands.
    fn caught_up(&self) -> bool {
        match self {
            Feed::File { lines, next } => *next >= lines.len(),
            #[cfg(feature = "kafka")]
            Feed::Kafka(r) => r.caught_up(),
        }
    }
}

/// One change waiting for its epoch, or a refusal waiting to be written.
enum Pending {
    Change(RawChange, crate::topology::Change),
    Refused(RawChange, String),
}

/// Kafka messages read per activation.
const BUDGET: usize = 65_536;

/// How long a run waits for a topology topic to be read up to where it ended at the start.
#[cfg(feature = "kafka")]
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// Builds the feed (see the module documentation). `progress` is the sources' per-epoch counts (every
/// worker's, gathered here on worker 0): its frontier is the first epoch a source may still emit at, its
/// times the epochs that had data. `resumed`: the checkpoint epoch a restored run resumes after; `stop`: a
/// graceful stop's epoch (changes after it are the resumed run's).
pub fn topology_feed<'scope>(
    scope: Scope<'scope, u64>,
    topology: Arc<Topology>,
    epoch_seconds: u64,
    progress: Stream<'scope, u64, Vec<(Option<u64>, SourceCounts)>>,
    resumed: Option<u64>,
    stop: Arc<Stop>,
    errors: Arc<std::sync::Mutex<Option<String>>>,
) -> TopologyStreams<'scope> {
    let worker = scope.index();
    let mut builder = OperatorBuilder::new("TopologyFeed".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(Rc::clone(&info.address));
    let mut in_progress = builder.new_input(
        progress,
        Exchange::new(|_: &(Option<u64>, SourceCounts)| 0u64),
    );
    let (out_place, placements) = builder.new_output::<Vec<TopologyDiff>>();
    let (out_members, members) = builder.new_output::<Vec<MemberCountDiff>>();
    let (out_dead, dead) = builder.new_output::<Vec<DeadLetter>>();
    let mut out_place = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_place);
    let mut out_members = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_members);
    let mut out_dead = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_dead);
    let epoch_of = move |ts: i64| ts.div_euclid(epoch_seconds.max(1) as i64).max(0) as u64;

    builder.build(move |caps| {
        // Only worker 0 reads and emits; the others hold nothing.
        let mut caps = (worker == 0).then_some(caps);
        let mut started = false;
        let mut placements = Placements::default();
        let mut feed: Option<Feed> = None;
        let mut pending: BTreeMap<u64, Vec<Pending>> = BTreeMap::new();
        // The first epoch a refusal may be written at: the sink writes epochs from the first it holds
        // anything for, so a refusal of an earlier epoch (or of no epoch) goes to the first epoch with data
        // — the sources' first frontier, or the epoch after the checkpoint a restored run resumes from.
        let mut first_epoch: Option<u64> = resumed.map(|c| c + 1);
        // The last epoch any source had data for (the sink writes no epoch after it).
        let mut last_data: Option<u64> = None;
        #[cfg(feature = "kafka")]
        let mut catch_up_since = std::time::Instant::now();
        let input = match &topology.changes {
            Some(ChangeFeedSpec::File { input, .. }) => *input,
            #[cfg(feature = "kafka")]
            Some(ChangeFeedSpec::Kafka { input, .. }) => *input,
            None => 0,
        };
        move |frontiers| {
            in_progress.for_each(|cap, _data| {
                if let Some(&t) = cap.least() {
                    last_data = Some(last_data.map_or(t, |l| l.max(t)));
                }
            });
            let Some(held) = caps.as_mut() else {
                return;
            };
            if !started {
                started = true;
                // Where customers start: the topology file, at time 0 — item by item, so the stream carries
                // it in small buffers (one container of 2 M placements would be cloned whole for each of
                // the stream's two consumers: ~180 MB more at peak).
                let mut counts = crate::incidents::member_counts(&topology.placements);
                let mut refused = topology.dead.clone();
                out_place
                    .activate()
                    .session(&held[0])
                    .give_iterator(topology.placements.iter().map(|p| (*p, 0u64, 1isize)));
                out_members
                    .activate()
                    .session(&held[1])
                    .give_container(&mut counts);
                out_dead
                    .activate()
                    .session(&held[2])
                    .give_container(&mut refused);
                if topology.changes.is_some() {
                    placements = Placements::new(&topology.placements);
                }
                feed = match &topology.changes {
                    None => None,
                    Some(ChangeFeedSpec::File { lines, .. }) => Some(Feed::File {
                        lines: Arc::clone(lines),
                        next: 0,
                    }),
                    #[cfg(feature = "kafka")]
                    Some(ChangeFeedSpec::Kafka { address, .. }) => {
                        catch_up_since = std::time::Instant::now();
                        match kafka::TopicReader::open(address) {
                            Ok(r) => Some(Feed::Kafka(r)),
                            Err(e) => {
                                crate::dataflow::record_error(&errors, e);
                                caps = None;
                                return;
                            }
                        }
                    }
                };
            }
            let now = *held[0].time();
            // Read what the feed has (a file: all of it, at once): each change waits for the epoch of its
            // ts, or the first one still open.
            if let Some(f) = feed.as_mut() {
                let mut raw = Vec::new();
                if let Err(e) = f.poll(BUDGET, &mut raw) {
                    crate::dataflow::record_error(&errors, e);
                    caps = None;
                    return;
                }
                for r in raw {
                    let (epoch, item) = match parse_change(&r.bytes) {
                        Ok(c) => (epoch_of(c.ts), Pending::Change(r, c.change)),
                        Err(why) => (why.ts.map_or(0, epoch_of), Pending::Refused(r, why.reason)),
                    };
                    pending.entry(epoch.max(now)).or_default().push(item);
                }
            }
            let bound = frontiers[0].frontier().first().copied();
            if bound.is_some() && feed.as_ref().is_some_and(|f| !f.caught_up()) {
                #[cfg(feature = "kafka")]
                if catch_up_since.elapsed() > CATCH_UP_LIMIT {
                    crate::dataflow::record_error(
                        &errors,
                        format!(
                            "--topology-changes {}: not read up to its end within {} s",
                            topology
                                .changes
                                .as_ref()
                                .map(|c| c.name())
                                .unwrap_or_default(),
                            CATCH_UP_LIMIT.as_secs()
                        ),
                    );
                    caps = None;
                    return;
                }
                activator.activate_after(Duration::from_millis(10));
                return;
            }
            if first_epoch.is_none() {
                first_epoch = bound.filter(|b| *b > 0);
            }
            // Release every epoch the sources have closed. Once they are done: up to a graceful stop's epoch
            // (the rest is the resumed run's), or up to the last epoch with data — after it a change has
            // nothing to apply to, and a refusal is written with the run's end (unattributed).
            let end = match bound {
                Some(_) => None,
                None => Some(stop.epoch().or(last_data).unwrap_or(0)),
            };
            while let Some(t) = pending.keys().next().copied() {
                if bound.is_some_and(|b| t >= b) {
                    break;
                }
                let items = pending.remove(&t).unwrap_or_default();
                let after_end = end.is_some_and(|e| t > e);
                if after_end && stop.epoch().is_some() {
                    continue;
                }
                let time = t.max(now);
                let mut diffs: Vec<(Placement, isize)> = Vec::new();
                let mut refused: Vec<DeadLetter> = Vec::new();
                for item in items {
                    let (r, reason) = match item {
                        Pending::Change(_, _) if after_end => continue,
                        Pending::Change(r, change) => match placements.apply(change, &mut diffs) {
                            Ok(()) => continue,
                            Err(reason) => (r, reason),
                        },
                        Pending::Refused(r, reason) => (r, reason),
                    };
                    if resumed.is_some_and(|c| t <= c) {
                        continue; // written by the run this one resumes
                    }
                    let mut d = DeadLetter::new(
                        input,
                        r.line,
                        &r.bytes,
                        Rejection::new(RejectCode::Topology, reason),
                    );
                    d.partition = r.partition;
                    d.offset = r.offset;
                    d.epoch = if after_end {
                        None
                    } else {
                        first_epoch.map(|f| time.max(f))
                    };
                    refused.push(d);
                }
                if !diffs.is_empty() {
                    tracing::info!(
                        epoch = time,
                        differences = diffs.len(),
                        placed = placements.len(),
                        "topology changes applied"
                    );
                    let mut by_element: BTreeMap<(ElementId, ElementId), isize> = BTreeMap::new();
                    for (p, d) in &diffs {
                        *by_element.entry((p.element, p.region)).or_default() += d;
                    }
                    let mut members: Vec<MemberCountDiff> = by_element
                        .into_iter()
                        .filter(|(_, d)| *d != 0)
                        .map(|(k, d)| (k, time, d))
                        .collect();
                    let mut place: Vec<TopologyDiff> =
                        diffs.into_iter().map(|(p, d)| (p, time, d)).collect();
                    out_place
                        .activate()
                        .session(&held[0].delayed(&time))
                        .give_container(&mut place);
                    out_members
                        .activate()
                        .session(&held[1].delayed(&time))
                        .give_container(&mut members);
                }
                if !refused.is_empty() {
                    tracing::warn!(
                        epoch = time,
                        refused = refused.len(),
                        "topology changes refused (dead-lettered)"
                    );
                    let at = refused[0].epoch.unwrap_or(time).max(time);
                    out_dead
                        .activate()
                        .session(&held[2].delayed(&at))
                        .give_container(&mut refused);
                }
            }
            match bound {
                // The sources are done: nothing more can apply.
                None => caps = None,
                Some(b) => {
                    for c in held.iter_mut() {
                        if *c.time() < b {
                            c.downgrade(&b);
                        }
                    }
                    // A topic gets new changes at any time: look again.
                    if !matches!(feed, None | Some(Feed::File { .. })) {
                        activator.activate_after(Duration::from_millis(100));
                    }
                }
            }
        }
    });
    TopologyStreams {
        placements,
        members,
        dead,
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    //! A topology topic, read from its beginning on every partition, then as messages arrive.

    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::{Message, Offset, TopicPartitionList};

    use super::RawChange;
    use crate::kafka::KafkaAddress;

    pub struct TopicReader {
        consumer: BaseConsumer,
        name: String,
        /// Per partition: the next offset to read, and the end offset when the run started.
        next: Vec<i64>,
        end: Vec<i64>,
    }

    impl TopicReader {
        pub fn open(address: &KafkaAddress) -> Result<TopicReader, String> {
            let topic = address
                .topic()
                .map_err(|e| format!("--topology-changes: {e}"))?;
            let name = format!("kafka://{}/{topic}", address.brokers);
            let err = |e: &dyn std::fmt::Display| format!("--topology-changes {name}: {e}");
            let partitions =
                crate::kafka::partition_count(&address.brokers, topic).map_err(|e| err(&e))?;
            let consumer: BaseConsumer = crate::kafka::client_config(
                &address.brokers,
                &[
                    ("group.id", "fleetwatch-topology"),
                    ("enable.auto.commit", "false"),
                    // The end of a partition is reported: a partition whose last offsets hold no message
                    // for a consumer (transaction markers, compacted records) still counts as read.
                    ("enable.partition.eof", "true"),
                    ("auto.offset.reset", "earliest"),
                ],
            )
            .create()
            .map_err(|e| err(&e))?;
            let mut tpl = TopicPartitionList::new();
            let mut next = Vec::new();
            let mut end = Vec::new();
            for p in 0..partitions as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(|e| err(&e))?;
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(|e| err(&e))?;
                next.push(low);
                end.push(high);
            }
            consumer.assign(&tpl).map_err(|e| err(&e))?;
            tracing::info!(
                partitions,
                messages = end.iter().zip(&next).map(|(h, l)| h - l).sum::<i64>(),
                "topology changes from {name}, from the beginning"
            );
            Ok(TopicReader {
                consumer,
                name,
                next,
                end,
            })
        }

        /// Whether every partition has been read up to where it ended when the run started.
        pub fn caught_up(&self) -> bool {
            self.next.iter().zip(&self.end).all(|(n, e)| n >= e)
        }

        /// What has arrived (at most `budget` messages), without waiting.
        pub fn poll(&mut self, budget: usize, out: &mut Vec<RawChange>) -> Result<(), String> {
            for _ in 0..budget {
                match self.consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => {
                        if let Some(n) = self.next.get_mut(m.partition().max(0) as usize) {
                            *n = (*n).max(m.offset() + 1);
                        }
                        out.push(RawChange {
                            line: m.offset().max(0) as u64 + 1,
                            partition: Some(m.partition().max(0) as u32),
                            offset: Some(m.offset().max(0) as u64),
                            bytes: m.payload().unwrap_or_default().to_vec(),
                        });
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        if let (Some(n), Some(e)) = (
                            self.next.get_mut(p.max(0) as usize),
                            self.end.get(p.max(0) as usize),
                        ) {
                            *n = (*n).max(*e);
                        }
                    }
                    Some(Err(e)) => {
                        // A transient broker error: librdkafka retries; say so and go on.
                        tracing::warn!("topology changes from {}: {e}", self.name);
                        break;
                    }
                }
            }
            Ok(())
        }
    }
}
