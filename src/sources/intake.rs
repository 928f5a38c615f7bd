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
}

impl PartitionState {
    pub fn new(start: Option<u64>) -> Self {
        PartitionState {
            clock: PartitionClock::default(),
            start,
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
        }
    }

    pub fn floor(&self) -> u64 {
        self.floor
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
            .map(|e| e.max(self.floor))
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
        let floor = self.floor;
        let state = self
            .partitions
            .entry(key)
            .or_insert(PartitionState::new(None));
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
