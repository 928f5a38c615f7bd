//! The part every source shares: per-partition event-time clocks, the lateness policy, and the buffers of
//! epoched logs, dead letters and counts that the source operator ships.
//!
//! A source (file or Kafka) parses a record and hands it to [`Intake::admit`], which asks the record's
//! partition clock what happens to it (on time, late and folded into the next open epoch, late and
//! dead-lettered, or absurdly far ahead) and buffers the outcome. A *floor* can be raised under the clocks:
//! no record is delivered below it. File replays never raise it; a live Kafka source raises it when the
//! wall-clock guard closes an epoch or an idle partition stops holding one, and the records that arrive for
//! epochs below it then follow the lateness policy like any late record — counted, never silently dropped.

use std::collections::{BTreeMap, HashMap};

use crate::epoch::{Admission, EpochClock, PartitionClock};
#[cfg(test)]
use crate::record::Log;
use crate::record::{DeadLetter, LogN, RejectCode, Rejection};

/// Counts of one epoch at one worker's source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceCounts {
    pub records: u64,
    pub late: u64,
    pub dead: u64,
    /// Workers whose wall-clock guard closed this epoch before every partition had passed it.
    pub guard_closed: u64,
}

/// The event-time state of one source partition.
#[derive(Debug, Clone, Copy)]
pub struct PartitionState {
    pub clock: PartitionClock,
    /// Epoch the partition's first record may open (file sources: from the prescan; `None`: unknown).
    pub start: Option<u64>,
    /// The partition's own floor (a restored partition keeps the floor its earlier owner had raised): no
    /// record of it is delivered below this or the intake's floor.
    pub floor: u64,
}

impl PartitionState {
    pub fn new(start: Option<u64>) -> Self {
        PartitionState {
            clock: PartitionClock::default(),
            start,
            floor: 0,
        }
    }
}

/// Where an admitted record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Delivered at this epoch (on time or folded).
    Delivered(u64),
    /// Dead-lettered and attributed to this epoch (or to none).
    DeadLettered(Option<u64>),
}

/// Where one source partition stood when its worker's share of a checkpoint was taken: its event-time
/// clock and the position after the last line its owner had read (the partition resumes after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionCut {
    pub input: u32,
    pub partition: u32,
    pub watermark: Option<i64>,
    pub start: Option<u64>,
    /// No record of the partition is delivered below this epoch (its owner's floor, see [`Intake`]): a
    /// restored partition keeps it on whichever worker owns it next.
    pub floor: u64,
    /// Byte offset just past the last line read and that line's number (0: nothing read yet).
    pub at: crate::sources::chunks::Start,
    /// The partition a line without a readable partition would have inherited there.
    pub last_partition: u32,
    /// CSV inputs: the records read. Kafka inputs (where `at.offset` is the offset to resume at): the
    /// partition's commit position, the earliest offset whose outputs were not yet durable.
    pub record: u64,
}

/// One worker's source at a checkpoint epoch `c`: where each of its partitions stands, and what it had
/// already read and shipped for epochs after `c` (read before every partition had closed `c`: a restored run
/// re-delivers it instead of reading it again).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceSnapshot {
    pub epoch: u64,
    pub partitions: Vec<PartitionCut>,
    /// Logs as `(epoch, wire bytes)` ([`LogN::to_wire`]).
    pub logs: Vec<(u64, Vec<u8>)>,
    /// Dead letters attributed to later epochs, and every one without an epoch this worker shipped (those
    /// go after the run's end line: the source keeps them, not the sink).
    pub dead: Vec<DeadLetter>,
    pub counts: Vec<(u64, SourceCounts)>,
    pub unattributed_count: u64,
}

/// A worker's source snapshots, handed over to the model operator of the same worker, which writes them
/// into the checkpoint beside its state (it processes epoch `c` only after every source passed `c`).
#[derive(Default)]
pub struct SourceSnaps {
    /// Snapshots taken as the source's frontier passed each checkpoint epoch.
    pub by_epoch: BTreeMap<u64, SourceSnapshot>,
    /// One snapshot for a run of checkpoint epochs the frontier passed at once (`first → (last, snapshot
    /// taken at first)`): the same cut serves each of them, with what it holds after that epoch.
    pub spans: BTreeMap<u64, (u64, SourceSnapshot)>,
    /// Before the first read: valid for every checkpoint epoch below the first frontier.
    pub initial: Option<(u64, SourceSnapshot)>,
    /// Once the source can deliver nothing more (every partition done, or none owned): valid for every
    /// checkpoint epoch from its `epoch` on (updated as the source goes on reading others' lines).
    pub standing: Option<SourceSnapshot>,
}

impl SourceSnaps {
    /// The snapshot for checkpoint epoch `c` (earlier ones are dropped).
    pub fn take(&mut self, c: u64) -> Option<SourceSnapshot> {
        self.by_epoch = self.by_epoch.split_off(&c);
        if let Some(s) = self.by_epoch.remove(&c) {
            return Some(s);
        }
        self.spans.retain(|_, (last, _)| *last >= c);
        if let Some((_, (_, s))) = self.spans.range(..=c).next_back() {
            return Some(s.after(c));
        }
        if let Some((f0, s)) = &self.initial
            && c < *f0
        {
            return Some(s.after(c));
        }
        match &self.standing {
            Some(s) if c >= s.epoch => Some(s.after(c)),
            _ => None,
        }
    }
}

impl SourceSnapshot {
    /// The same cut for a later checkpoint epoch `c`: what it holds for epochs after `c` only.
    fn after(&self, c: u64) -> SourceSnapshot {
        SourceSnapshot {
            epoch: c,
            partitions: self.partitions.clone(),
            logs: self.logs.iter().filter(|(e, _)| *e > c).cloned().collect(),
            dead: self
                .dead
                .iter()
                .filter(|d| d.epoch.is_none_or(|e| e > c))
                .cloned()
                .collect(),
            counts: self
                .counts
                .iter()
                .filter(|(e, _)| *e > c)
                .copied()
                .collect(),
            unattributed_count: self.unattributed_count,
        }
    }
}

/// Copies of what a source shipped for epochs after the next checkpoint epoch (see [`SourceSnapshot`]).
pub struct Retained<const N: usize> {
    /// The next checkpoint epoch (`None`: no checkpoints).
    pub above: Option<u64>,
    logs: Vec<(u64, LogN<N>)>,
    dead: Vec<DeadLetter>,
    counts: BTreeMap<u64, SourceCounts>,
    unattributed_count: u64,
}

impl<const N: usize> Retained<N> {
    fn new() -> Self {
        Retained {
            above: None,
            logs: Vec::new(),
            dead: Vec::new(),
            counts: BTreeMap::new(),
            unattributed_count: 0,
        }
    }
}

fn add_counts(a: &mut SourceCounts, b: &SourceCounts) {
    a.records += b.records;
    a.late += b.late;
    a.dead += b.dead;
    a.guard_closed += b.guard_closed;
}

/// What a stopped source keeps back from shipping (see [`Intake::withhold_above`]).
pub struct Withheld<const N: usize> {
    logs: BTreeMap<u64, Vec<LogN<N>>>,
    dead: Vec<DeadLetter>,
    counts: BTreeMap<Option<u64>, SourceCounts>,
}

/// One worker's epoching state and output buffers (logs of `N` values: the spec's width).
pub struct Intake<const N: usize> {
    pub clock: EpochClock,
    /// Partitions by (input index, partition).
    pub partitions: HashMap<(u32, u32), PartitionState>,
    /// No record is delivered at an epoch below this.
    floor: u64,
    /// Buffered output: logs by epoch.
    pub logs: BTreeMap<u64, Vec<LogN<N>>>,
    /// Buffered dead letters (with their epoch attribution).
    pub dead: Vec<DeadLetter>,
    /// Buffered counts by epoch (`None`: dead letters of partitions that never had a good record).
    pub counts: BTreeMap<Option<u64>, SourceCounts>,
    /// What was shipped for epochs after the next checkpoint epoch.
    pub retained: Retained<N>,
    /// The last epoch a log was delivered at.
    pub max_epoch: Option<u64>,
}

impl<const N: usize> Intake<N> {
    pub fn new(clock: EpochClock) -> Self {
        Intake {
            clock,
            partitions: HashMap::new(),
            floor: 0,
            logs: BTreeMap::new(),
            dead: Vec::new(),
            counts: BTreeMap::new(),
            retained: Retained::new(),
            max_epoch: None,
        }
    }

    /// Before the buffers are shipped: keeps copies of what belongs to epochs after the next checkpoint
    /// epoch (a no-op without checkpoints).
    pub fn retain_shipped(&mut self) {
        let Some(c) = self.retained.above else {
            return;
        };
        let r = &mut self.retained;
        for (e, logs) in self.logs.range(c + 1..) {
            r.logs.extend(logs.iter().map(|l| (*e, *l)));
        }
        r.dead.extend(
            self.dead
                .iter()
                .filter(|d| d.epoch.is_none_or(|e| e > c))
                .cloned(),
        );
        for (k, v) in self.counts.iter() {
            match k {
                Some(e) if *e > c => add_counts(r.counts.entry(*e).or_default(), v),
                Some(_) => {}
                None => r.unattributed_count += v.dead,
            }
        }
    }

    /// The snapshot of what this worker holds now without moving retention on (see [`SourceSnaps`]):
    /// its retained copies plus whatever is buffered and not shipped yet.
    pub fn standing(&self, c: u64, partitions: Vec<PartitionCut>) -> SourceSnapshot {
        let r = &self.retained;
        let mut logs: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut wire = |e: u64, l: &LogN<N>| {
            let (w, n) = l.to_wire();
            logs.push((e, w[..n].to_vec()));
        };
        for (e, l) in &r.logs {
            wire(*e, l);
        }
        for (e, ls) in &self.logs {
            for l in ls {
                wire(*e, l);
            }
        }
        let mut counts = r.counts.clone();
        let mut unattributed_count = r.unattributed_count;
        for (k, v) in &self.counts {
            match k {
                Some(e) => add_counts(counts.entry(*e).or_default(), v),
                None => unattributed_count += v.dead,
            }
        }
        SourceSnapshot {
            epoch: c,
            partitions,
            logs,
            dead: r.dead.iter().chain(self.dead.iter()).cloned().collect(),
            counts: counts.into_iter().collect(),
            unattributed_count,
        }
        .after(c)
    }

    /// Takes this worker's snapshot for checkpoint epoch `c` (every partition has closed it), with the
    /// partitions' cuts given by the source, and moves retention on to the checkpoint epoch `next`.
    pub fn snapshot(&mut self, c: u64, partitions: Vec<PartitionCut>, next: u64) -> SourceSnapshot {
        let r = &mut self.retained;
        let snap = SourceSnapshot {
            epoch: c,
            partitions,
            logs: r
                .logs
                .iter()
                .filter(|(e, _)| *e > c)
                .map(|(e, l)| {
                    let (w, n) = l.to_wire();
                    (*e, w[..n].to_vec())
                })
                .collect(),
            dead: r
                .dead
                .iter()
                .filter(|d| d.epoch.is_none_or(|e| e > c))
                .cloned()
                .collect(),
            counts: r.counts.range(c + 1..).map(|(e, v)| (*e, *v)).collect(),
            unattributed_count: r.unattributed_count,
        };
        r.above = Some(next);
        r.logs.retain(|(e, _)| *e > next);
        r.dead.retain(|d| d.epoch.is_none_or(|e| e > next));
        r.counts = r.counts.split_off(&(next + 1));
        snap
    }

    /// Takes out of the buffers what belongs to epochs after `s` (logs, dead letters and counts attributed
    /// to them), to be put back after the rest is shipped: a stopped run does not process epochs after `s`.
    pub fn withhold_above(&mut self, s: u64) -> Withheld<N> {
        let logs = self.logs.split_off(&(s + 1));
        let (later, now): (Vec<DeadLetter>, Vec<DeadLetter>) = std::mem::take(&mut self.dead)
            .into_iter()
            .partition(|d| d.epoch.is_some_and(|e| e > s));
        self.dead = now;
        let counts = self.counts.split_off(&Some(s + 1));
        Withheld {
            logs,
            dead: later,
            counts,
        }
    }

    /// Puts back what [`Intake::withhold_above`] took out (ahead of anything buffered since).
    pub fn put_back(&mut self, w: Withheld<N>) {
        for (e, mut logs) in w.logs {
            let slot = self.logs.entry(e).or_default();
            logs.append(slot);
            *slot = logs;
        }
        let mut dead = w.dead;
        dead.append(&mut self.dead);
        self.dead = dead;
        for (k, c) in w.counts {
            add_counts(self.counts.entry(k).or_default(), &c);
        }
    }

    /// A restored run: raises the floor above the checkpoint epoch and takes over the clock and floor of
    /// every partition `owns` accepts; returns those partitions' cuts (where each resumes reading).
    pub fn restore_cuts(
        &mut self,
        snapshots: &[SourceSnapshot],
        owns: impl Fn(u32, u32) -> bool,
    ) -> Vec<PartitionCut> {
        let mut owned = Vec::new();
        for snap in snapshots {
            self.raise_floor(snap.epoch.saturating_add(1));
            for cut in snap
                .partitions
                .iter()
                .filter(|c| owns(c.input, c.partition))
            {
                self.partitions.insert(
                    (cut.input, cut.partition),
                    PartitionState {
                        clock: PartitionClock {
                            watermark: cut.watermark,
                        },
                        start: cut.start,
                        floor: cut.floor,
                    },
                );
                owned.push(*cut);
            }
        }
        owned
    }

    /// A restored run: buffers what earlier workers had read for epochs after the checkpoint (their
    /// snapshots' logs, dead letters and counts) to be shipped again, and retains it for the next checkpoint.
    pub fn redeliver(&mut self, snap: &SourceSnapshot) -> usize {
        let mut bad = 0;
        for (e, w) in &snap.logs {
            match LogN::<N>::from_wire(w) {
                Some(l) => self.logs.entry(*e).or_default().push(l),
                None => bad += 1,
            }
        }
        self.dead.extend(snap.dead.iter().cloned());
        for (e, c) in &snap.counts {
            add_counts(self.counts.entry(Some(*e)).or_default(), c);
        }
        if snap.unattributed_count > 0 {
            self.counts.entry(None).or_default().dead += snap.unattributed_count;
        }
        bad
    }

    /// The floor under partition `key`: the intake's, or the partition's own if higher.
    pub fn floor_of(&self, key: (u32, u32)) -> u64 {
        self.partitions
            .get(&key)
            .map_or(self.floor, |p| self.floor.max(p.floor))
    }

    /// Raises the floor (never lowers it).
    pub fn raise_floor(&mut self, to: u64) {
        self.floor = self.floor.max(to);
    }

    /// The first epoch a partition may still deliver at: its clock's open epoch (or its known start), not
    /// below the floor. `None` for an unknown partition or one that has no record and no known start.
    pub fn open_epoch(&self, key: (u32, u32)) -> Option<u64> {
        let p = self.partitions.get(&key)?;
        p.clock
            .open_epoch(&self.clock)
            .or(p.start)
            .map(|e| e.max(self.floor).max(p.floor))
    }

    /// Applies the partition's lateness policy (and the floor) to a parsed log and buffers it, or its dead
    /// letter. `raw` is asked for only when the record is dead-lettered.
    pub fn admit(
        &mut self,
        mut log: LogN<N>,
        key: (u32, u32),
        line_no: u64,
        offset: Option<u64>,
        raw: impl FnOnce() -> Vec<u8>,
    ) -> Admitted {
        let clock = self.clock;
        let state = self
            .partitions
            .entry(key)
            .or_insert(PartitionState::new(None));
        let floor = self.floor.max(state.floor);
        let admission = match state.clock.admit(&clock, log.ts) {
            Admission::OnTime(e) if e < floor => match clock.late_policy {
                crate::spec::LatePolicy::NextEpoch => Admission::Late {
                    epoch: e,
                    into: floor,
                },
                crate::spec::LatePolicy::DeadLetter => Admission::LateDeadLetter {
                    epoch: e,
                    open: floor,
                },
            },
            Admission::Late { epoch, into } => Admission::Late {
                epoch,
                into: into.max(floor),
            },
            Admission::LateDeadLetter { epoch, open } => Admission::LateDeadLetter {
                epoch,
                open: open.max(floor),
            },
            a => a,
        };
        let input = key.0;
        // The input index distinguishes equal (partition, offset) pairs of different inputs.
        log.pos.partition = log.pos.partition.wrapping_add(input << 20);
        if let Admission::OnTime(e) | Admission::Late { into: e, .. } = admission {
            self.max_epoch = Some(self.max_epoch.map_or(e, |m| m.max(e)));
        }
        match admission {
            Admission::OnTime(e) => {
                self.logs.entry(e).or_default().push(log);
                self.counts.entry(Some(e)).or_default().records += 1;
                Admitted::Delivered(e)
            }
            Admission::Late { into, .. } => {
                self.logs.entry(into).or_default().push(log);
                let c = self.counts.entry(Some(into)).or_default();
                c.records += 1;
                c.late += 1;
                Admitted::Delivered(into)
            }
            Admission::LateDeadLetter { epoch, open } => {
                let mut dl = DeadLetter::new(
                    input,
                    line_no,
                    &raw(),
                    Rejection::new(
                        RejectCode::Late,
                        format!("epoch {epoch} had closed (first open epoch {open})"),
                    ),
                );
                dl.partition = Some(key.1);
                dl.offset = offset;
                dl.epoch = Some(open);
                let c = self.counts.entry(Some(open)).or_default();
                c.late += 1;
                c.dead += 1;
                self.dead.push(dl);
                Admitted::DeadLettered(Some(open))
            }
            Admission::TooFarAhead { watermark } => {
                let mut dl = DeadLetter::new(
                    input,
                    line_no,
                    &raw(),
                    Rejection::new(
                        RejectCode::AbsurdTimestamp,
                        format!(
                            "timestamp {} is more than input.max_future_skew_seconds ahead of its \
                             partition (watermark {watermark})",
                            log.ts
                        ),
                    ),
                );
                dl.partition = Some(key.1);
                dl.offset = offset;
                Admitted::DeadLettered(self.push_dead(dl, key))
            }
        }
    }

    /// Buffers a dead letter, attributed to its partition's first open epoch; returns that epoch.
    pub fn push_dead(&mut self, mut dl: DeadLetter, key: (u32, u32)) -> Option<u64> {
        let epoch = self.open_epoch(key);
        dl.epoch = epoch;
        self.counts.entry(epoch).or_default().dead += 1;
        self.dead.push(dl);
        epoch
    }

    /// Notes that the wall-clock guard closed `epoch` at this worker.
    pub fn note_guard_closed(&mut self, epoch: u64) {
        self.counts.entry(Some(epoch)).or_default().guard_closed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::CustomerId;
    use crate::spec::LatePolicy;

    fn intake(policy: LatePolicy) -> Intake<{ crate::record::NARROW }> {
        Intake::new(EpochClock {
            length: 300,
            lateness: 60,
            max_future_skew: 3600,
            late_policy: policy,
        })
    }

    fn log(ts: i64) -> Log {
        let mut l = Log::empty(CustomerId::parse(b"c", b"").expect("id"));
        l.ts = ts;
        l
    }

    #[test]
    fn the_floor_turns_on_time_records_late() {
        let mut i = intake(LatePolicy::NextEpoch);
        assert_eq!(
            i.admit(log(950), (0, 0), 1, Some(0), Vec::new),
            Admitted::Delivered(3)
        );
        // the guard closed epochs up to 4: a record of epoch 3, on time for its partition, is folded into 5
        i.raise_floor(5);
        i.raise_floor(2); // never lowers
        assert_eq!(i.open_epoch((0, 0)), Some(5));
        assert_eq!(
            i.admit(log(960), (0, 0), 2, Some(1), Vec::new),
            Admitted::Delivered(5)
        );
        assert_eq!(i.counts[&Some(5)].late, 1);
        let mut d = intake(LatePolicy::DeadLetter);
        d.raise_floor(5);
        assert_eq!(
            d.admit(log(960), (0, 0), 1, Some(0), || b"raw".to_vec()),
            Admitted::DeadLettered(Some(5))
        );
        assert_eq!(d.dead[0].code, RejectCode::Late);
        assert_eq!(d.counts[&Some(5)].dead, 1);
    }
}
