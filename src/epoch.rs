//! Event-time epochs and the lateness policy, per source partition.
//!
//! Epoch `e` covers event times `[e·L, (e+1)·L)`. Each source partition keeps a watermark: the largest event
//! time it has delivered. A partition has *closed* epoch `e` once its watermark reaches `(e+1)·L + lateness`,
//! so its first open epoch is `epoch_of(watermark − lateness)`. A record whose epoch is below its partition's
//! first open epoch is late. Lateness is decided per partition — from that partition's own order, which Kafka
//! preserves and a recorded topic replays — so the decision does not depend on how partitions are spread over
//! workers or interleaved with each other, and a replay decides exactly as the live run did.
//!
//! An epoch closes for the whole pipeline when every partition has closed it (timely's frontier is the minimum
//! over the workers' capabilities, and each worker holds the minimum over its partitions).

use crate::spec::{EpochSpec, LatePolicy};

/// Epoch arithmetic for one spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochClock {
    pub length: i64,
    pub lateness: i64,
    pub max_future_skew: i64,
    pub late_policy: LatePolicy,
}

impl EpochClock {
    pub fn new(e: &EpochSpec, max_future_skew: u64) -> Self {
        EpochClock {
            length: e.length_seconds as i64,
            lateness: e.allowed_lateness_seconds as i64,
            max_future_skew: max_future_skew as i64,
            late_policy: e.late_policy,
        }
    }

    /// The epoch of an event time.
    #[inline]
    pub fn epoch_of(&self, ts: i64) -> u64 {
        ts.div_euclid(self.length).max(0) as u64
    }

    /// The first event time of an epoch.
    #[inline]
    pub fn start_of(&self, epoch: u64) -> i64 {
        epoch as i64 * self.length
    }

    /// The first epoch still open for a partition whose watermark is `watermark`.
    #[inline]
    pub fn open_epoch(&self, watermark: i64) -> u64 {
        self.epoch_of(watermark - self.lateness)
    }
}

/// What happens to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// In time: deliver at this epoch.
    OnTime(u64),
    /// Its epoch had closed; deliver at `into` (the partition's first open epoch).
    Late { epoch: u64, into: u64 },
    /// Its epoch had closed and the policy is to dead-letter it; attribute it to `open`.
    LateDeadLetter { epoch: u64, open: u64 },
    /// Absurdly far ahead of the partition's watermark (would close every open epoch at once).
    TooFarAhead { watermark: i64 },
}

/// The event-time state of one source partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionClock {
    pub watermark: Option<i64>,
}

impl PartitionClock {
    /// The first open epoch (`None` before the first record).
    pub fn open_epoch(&self, clock: &EpochClock) -> Option<u64> {
        self.watermark.map(|w| clock.open_epoch(w))
    }

    /// Decides what happens to a record at `ts` and advances the watermark if it is delivered.
    pub fn admit(&mut self, clock: &EpochClock, ts: i64) -> Admission {
        let epoch = clock.epoch_of(ts);
        let Some(w) = self.watermark else {
            self.watermark = Some(ts);
            return Admission::OnTime(epoch);
        };
        if ts > w + clock.max_future_skew {
            return Admission::TooFarAhead { watermark: w };
        }
        let open = clock.open_epoch(w);
        if epoch < open {
            return match clock.late_policy {
                LatePolicy::NextEpoch => Admission::Late { epoch, into: open },
                LatePolicy::DeadLetter => Admission::LateDeadLetter { epoch, open },
            };
        }
        self.watermark = Some(w.max(ts));
        Admission::OnTime(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(policy: LatePolicy) -> EpochClock {
        EpochClock {
            length: 300,
            lateness: 60,
            max_future_skew: 3600,
            late_policy: policy,
        }
    }

    #[test]
    fn epochs_and_open_epoch() {
        let c = clock(LatePolicy::NextEpoch);
        assert_eq!(c.epoch_of(0), 0);
        assert_eq!(c.epoch_of(299), 0);
        assert_eq!(c.epoch_of(300), 1);
        // watermark 659: 659 − 60 = 599 → epoch 1 still open (epoch 1 closes at 600 + 60)
        assert_eq!(c.open_epoch(659), 1);
        assert_eq!(c.open_epoch(660), 2);
    }

    #[test]
    fn lateness_is_per_partition() {
        let c = clock(LatePolicy::NextEpoch);
        let mut p = PartitionClock::default();
        assert_eq!(p.admit(&c, 950), Admission::OnTime(3));
        // within lateness: epoch 2 ([600, 900)) stays open while watermark − 60 < 900
        assert_eq!(p.admit(&c, 850), Admission::OnTime(2));
        assert_eq!(p.admit(&c, 1300), Admission::OnTime(4));
        // watermark 1300 − 60 = 1240 → open epoch 4; a record of epoch 3 is late, folded into 4
        assert_eq!(p.admit(&c, 950), Admission::Late { epoch: 3, into: 4 });
        assert_eq!(p.watermark, Some(1300));
        assert_eq!(
            p.admit(&c, 1300 + 3601),
            Admission::TooFarAhead { watermark: 1300 }
        );
        let c = clock(LatePolicy::DeadLetter);
        let mut p = PartitionClock {
            watermark: Some(1300),
        };
        assert_eq!(
            p.admit(&c, 950),
            Admission::LateDeadLetter { epoch: 3, open: 4 }
        );
    }
}
