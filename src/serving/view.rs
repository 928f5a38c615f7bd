//! The epoch view: what the model said about every series at its latest observation, in columns.
//!
//! The series-state arrangement holds each series' *model* (48 bytes: detector state, thresholds, alert),
//! not what it saw: the latest observation, the prediction it was compared with, the band and the score are
//! computed during the epoch's step and then gone. `--serve` and `--predictions` need exactly those, so
//! the series-model operator writes them, while its merge-walk visits each customer, into an [`EpochView`]
//! of its worker's customers:
//!
//! ```text
//!   per customer (sorted by id):  id · last_seen · customer alert · silence alert
//!   per series (customer-major):  scored_at · observed · expected · lower · upper · score · alert
//! ```
//!
//! `scored_at` is the epoch of the series' latest scored observation + 1 (0: none yet). A series scored at
//! this epoch takes this epoch's numbers; with `carry` (serving), every other series keeps its numbers from
//! the previous view (a merge walk beside the state's, both in customer order), so the view answers for every
//! series the worker holds; without it (predictions only) the view holds the customers stepped this epoch.
//! The alerts are read from the state after the step, so they are the open alerts as of this epoch.
//!
//! A finished view is immutable and shared by reference (`Arc`): the HTTP server reads the last one the
//! worker published, the Parquet writer the one of its epoch, while the worker builds the next. Cost: 25
//! bytes per series per view (the published one and the one being built coexist).

use std::ops::Range;
use std::sync::Arc;

use crate::keys::CustomerId;
use crate::model::customer::Evidence;
use crate::state::Slot;

/// The series columns of one customer, and its own fields.
#[derive(Debug, Default, Clone)]
pub struct EpochView {
    /// The epoch this view is as of (its worker finished stepping it).
    pub epoch: u64,
    /// Series per customer (the spec's features).
    pub features: usize,
    pub customers: Vec<CustomerId>,
    /// Epoch of the customer's last log + 1 (0: never).
    pub last_seen: Vec<u32>,
    /// The customer alert and the silence alert (alert byte encoding, [`crate::model::header`]).
    pub customer_alert: Vec<u8>,
    pub silence: Vec<u8>,
    /// Per series: epoch of its latest scored observation + 1 (0: none in this run yet).
    pub scored_at: Vec<u32>,
    pub observed: Vec<f32>,
    pub expected: Vec<f32>,
    pub lower: Vec<f32>,
    pub upper: Vec<f32>,
    pub score: Vec<f32>,
    /// Per series: its open alert after the epoch (alert byte encoding).
    pub alert: Vec<u8>,
}

impl EpochView {
    /// Empties a retired view for reuse as epoch `epoch`'s (its columns keep their capacity: a worker that
    /// recycles its views allocates, and faults in, no new memory from epoch to epoch).
    fn reset(mut self, epoch: u64, features: usize, customers: usize) -> EpochView {
        self.epoch = epoch;
        self.features = features;
        self.customers.clear();
        self.last_seen.clear();
        self.customer_alert.clear();
        self.silence.clear();
        self.scored_at.clear();
        self.observed.clear();
        self.expected.clear();
        self.lower.clear();
        self.upper.clear();
        self.score.clear();
        self.alert.clear();
        let series = customers * features;
        self.customers.reserve(customers);
        self.last_seen.reserve(customers);
        self.customer_alert.reserve(customers);
        self.silence.reserve(customers);
        self.scored_at.reserve(series);
        self.observed.reserve(series);
        self.expected.reserve(series);
        self.lower.reserve(series);
        self.upper.reserve(series);
        self.score.reserve(series);
        self.alert.reserve(series);
        self
    }

    /// The customer's index (binary search; customers are in id order).
    pub fn find(&self, customer: &CustomerId) -> Option<usize> {
        self.customers.binary_search(customer).ok()
    }

    /// The indexes of customer `i`'s series in the series columns.
    pub fn series(&self, i: usize) -> Range<usize> {
        i * self.features..(i + 1) * self.features
    }

    pub fn len(&self) -> usize {
        self.customers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
    }

    /// Series scored at this view's epoch.
    pub fn scored_now(&self) -> usize {
        let now = epoch_u32(self.epoch + 1);
        self.scored_at.iter().filter(|s| **s == now).count()
    }

    /// Bytes held by the columns.
    pub fn bytes(&self) -> usize {
        self.customers.capacity() * std::mem::size_of::<CustomerId>()
            + self.last_seen.capacity() * 4
            + self.customer_alert.capacity()
            + self.silence.capacity()
            + self.scored_at.capacity() * 4
            + 5 * self.observed.capacity() * 4
            + self.alert.capacity()
    }

    fn push_customer(&mut self, customer: CustomerId, meta: &Slot) {
        self.customers.push(customer);
        self.last_seen.push(crate::state::le::u32(meta, 0));
        self.silence.push(meta[12]);
        self.customer_alert.push(meta[14]);
    }

    /// Appends customer `i` of `prev` (its series and its own fields) unchanged.
    fn copy_customer(&mut self, prev: &EpochView, i: usize) {
        self.customers.push(prev.customers[i]);
        self.last_seen.push(prev.last_seen[i]);
        self.silence.push(prev.silence[i]);
        self.customer_alert.push(prev.customer_alert[i]);
        let r = prev.series(i);
        self.scored_at.extend_from_slice(&prev.scored_at[r.clone()]);
        self.observed.extend_from_slice(&prev.observed[r.clone()]);
        self.expected.extend_from_slice(&prev.expected[r.clone()]);
        self.lower.extend_from_slice(&prev.lower[r.clone()]);
        self.upper.extend_from_slice(&prev.upper[r.clone()]);
        self.score.extend_from_slice(&prev.score[r.clone()]);
        self.alert.extend_from_slice(&prev.alert[r]);
    }
}

fn epoch_u32(e: u64) -> u32 {
    e.min(u32::MAX as u64) as u32
}

/// Builds one epoch's view while the series model walks its customers in id order.
pub struct ViewBuilder {
    carry: bool,
    prev: Option<Arc<EpochView>>,
    /// The first customer of `prev` not yet passed by the walk.
    prev_at: usize,
    cur: EpochView,
}

impl ViewBuilder {
    /// Starts epoch `epoch`'s view; with `carry`, series not scored in it keep their numbers from `prev`.
    /// `reuse`: a retired view whose columns it fills again.
    pub fn begin(
        epoch: u64,
        features: usize,
        carry: bool,
        prev: Option<Arc<EpochView>>,
        hint: usize,
        reuse: Option<EpochView>,
    ) -> ViewBuilder {
        let prev = prev.filter(|p| carry && p.features == features);
        let customers = prev.as_ref().map_or(hint, |p| p.len().max(hint));
        let cur = match reuse {
            Some(v) => v.reset(epoch, features, customers),
            None => EpochView::default().reset(epoch, features, customers),
        };
        ViewBuilder {
            carry,
            prev,
            prev_at: 0,
            cur,
        }
    }

    /// Moves the previous view's cursor to `customer`; its index there if it has it. Customers the walk
    /// passed without visiting (none: the walk visits every customer of the state) are dropped.
    fn prev_index(&mut self, customer: &CustomerId) -> Option<usize> {
        let prev = self.prev.as_ref()?;
        while self.prev_at < prev.len() && prev.customers[self.prev_at] < *customer {
            self.prev_at += 1;
        }
        (self.prev_at < prev.len() && prev.customers[self.prev_at] == *customer).then(|| {
            self.prev_at += 1;
            self.prev_at - 1
        })
    }

    /// A customer the epoch did not step (nothing of it changed): with `carry`, its numbers stay as they
    /// were. `meta` is its meta slot (for a customer the previous view does not have, e.g. after a restore).
    pub fn unchanged(&mut self, customer: CustomerId, slots: impl FnOnce() -> Vec<Slot>) {
        if !self.carry {
            return;
        }
        match self.prev_index(&customer) {
            Some(i) => {
                if let Some(prev) = self.prev.take() {
                    self.cur.copy_customer(&prev, i);
                    self.prev = Some(prev);
                }
            }
            None => {
                let slots = slots();
                self.stepped(customer, &slots, &[]);
            }
        }
    }

    /// A customer the epoch stepped: `slots` are its series' slots and its meta slot after the step,
    /// `scored` the evidence of its series scored this epoch.
    pub fn stepped(&mut self, customer: CustomerId, slots: &[Slot], scored: &[Evidence]) {
        let f_count = self.cur.features;
        let Some(meta) = slots.get(f_count) else {
            return;
        };
        let prev_i = if self.carry {
            self.prev_index(&customer)
        } else {
            None
        };
        let v = &mut self.cur;
        let start = v.scored_at.len();
        let now = epoch_u32(v.epoch + 1);
        // This epoch's scored series (usually all of them), by feature: only the others are read from the
        // previous view (its rows are not touched at all for a customer that reported every feature).
        let mut fresh: [Option<&Evidence>; 64] = [None; 64];
        let mut carried = f_count;
        for ev in scored {
            let f = ev.feature as usize;
            if f < f_count.min(64) && ev.observed.is_finite() && fresh[f].is_none() {
                fresh[f] = Some(ev);
                carried -= 1;
            }
        }
        let prev = match (prev_i, self.prev.as_ref()) {
            (Some(i), Some(p)) if carried > 0 || f_count > 64 => Some((p, p.series(i).start)),
            _ => None,
        };
        for f in 0..f_count {
            match (fresh.get(f).copied().flatten(), prev) {
                (Some(ev), _) => {
                    v.scored_at.push(now);
                    v.observed.push(ev.observed);
                    v.expected.push(ev.expected);
                    v.lower.push(ev.lower);
                    v.upper.push(ev.upper);
                    v.score.push(ev.score);
                }
                (None, Some((p, at))) => {
                    let k = at + f;
                    v.scored_at.push(p.scored_at[k]);
                    v.observed.push(p.observed[k]);
                    v.expected.push(p.expected[k]);
                    v.lower.push(p.lower[k]);
                    v.upper.push(p.upper[k]);
                    v.score.push(p.score[k]);
                }
                (None, None) => {
                    v.scored_at.push(0);
                    for col in [
                        &mut v.observed,
                        &mut v.expected,
                        &mut v.lower,
                        &mut v.upper,
                        &mut v.score,
                    ] {
                        col.push(f32::NAN);
                    }
                }
            }
        }
        debug_assert_eq!(v.scored_at.len(), start + f_count);
        v.alert.extend(slots[..f_count].iter().map(|s| s[9] & 0x3F));
        v.push_customer(customer, meta);
    }

    pub fn finish(self) -> EpochView {
        self.cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnomalyKind;
    use crate::model::customer::TopFeature;
    use crate::model::header::{OpenAlert, Severity, encode_alert};
    use crate::state::SLOT_BYTES;

    fn id(s: &str) -> CustomerId {
        CustomerId::parse(s.as_bytes(), b"").unwrap()
    }

    fn ev(c: &str, feature: u16, observed: f32) -> Evidence {
        Evidence {
            customer: id(c),
            feature,
            score: observed / 10.0,
            observed,
            expected: observed - 1.0,
            lower: observed - 3.0,
            upper: observed + 1.0,
            customer_score: 0.0,
            top: [TopFeature::NONE; 3],
        }
    }

    /// Two series and a meta slot: series 1 has a critical level shift open, the customer was last seen at
    /// epoch `seen` (stored + 1).
    fn slots(seen: u32) -> Vec<Slot> {
        let mut s = vec![[0u8; SLOT_BYTES]; 3];
        s[1][9] = encode_alert(Some(OpenAlert {
            severity: Severity::Critical,
            kind: AnomalyKind::LevelShift,
        })) | (3 << 6);
        s[2][0..4].copy_from_slice(&(seen + 1).to_le_bytes());
        s
    }

    #[test]
    fn a_stepped_customer_takes_this_epochs_numbers_and_its_alerts_from_the_state() {
        let mut b = ViewBuilder::begin(7, 2, true, None, 0, None);
        b.stepped(id("a"), &slots(7), &[ev("a", 1, 5.0)]);
        let v = b.finish();
        assert_eq!(v.customers, vec![id("a")]);
        assert_eq!(v.last_seen, vec![8]);
        // series 0 not scored: no numbers yet; series 1 scored at epoch 7 (stored 8)
        assert_eq!(v.scored_at, vec![0, 8]);
        assert!(v.observed[0].is_nan());
        assert_eq!(
            (
                v.observed[1],
                v.expected[1],
                v.lower[1],
                v.upper[1],
                v.score[1]
            ),
            (5.0, 4.0, 2.0, 6.0, 0.5)
        );
        // the maturity bits are not part of the alert byte
        assert_eq!(v.alert, vec![0, 2 | (AnomalyKind::LevelShift.index() << 2)]);
        assert_eq!(v.scored_now(), 1);
    }

    #[test]
    fn with_carry_every_series_keeps_its_latest_numbers_and_new_customers_merge_in_order() {
        let mut b = ViewBuilder::begin(7, 2, true, None, 0, None);
        b.stepped(id("a"), &slots(7), &[ev("a", 0, 1.0), ev("a", 1, 2.0)]);
        b.stepped(id("c"), &slots(7), &[ev("c", 0, 3.0)]);
        let prev = Arc::new(b.finish());
        let mut b = ViewBuilder::begin(8, 2, true, Some(Arc::clone(&prev)), 0, None);
        // a: only series 1 scored at 8; b: new; c: not stepped at all
        b.stepped(id("a"), &slots(8), &[ev("a", 1, 9.0)]);
        b.stepped(id("b"), &slots(8), &[ev("b", 0, 4.0)]);
        b.unchanged(id("c"), || unreachable!("c is in the previous view"));
        let v = b.finish();
        assert_eq!(v.customers, vec![id("a"), id("b"), id("c")]);
        assert_eq!(v.scored_at, vec![8, 9, 9, 0, 8, 0]);
        assert_eq!(v.observed[..3], [1.0, 9.0, 4.0]);
        assert_eq!(v.observed[4], 3.0);
        assert_eq!(v.scored_now(), 2);
        assert_eq!(v.last_seen, vec![9, 9, 8]);
        assert_eq!(v.find(&id("b")), Some(1));
        assert_eq!(v.find(&id("z")), None);
        assert_eq!(v.series(2), 4..6);
    }

    #[test]
    fn a_reused_view_is_filled_as_a_fresh_one_would_be() {
        let build = |reuse: Option<EpochView>| {
            let mut b = ViewBuilder::begin(9, 2, true, None, 0, reuse);
            b.stepped(id("q"), &slots(9), &[ev("q", 0, 2.5)]);
            b.finish()
        };
        let mut old = ViewBuilder::begin(4, 2, true, None, 0, None);
        for c in ["a", "b", "c"] {
            old.stepped(id(c), &slots(4), &[ev(c, 1, 1.0)]);
        }
        let fresh = build(None);
        let reused = build(Some(old.finish()));
        assert_eq!(format!("{fresh:?}"), format!("{reused:?}"));
    }

    #[test]
    fn without_carry_only_stepped_customers_are_kept_with_this_epochs_numbers() {
        let mut b = ViewBuilder::begin(3, 2, false, None, 0, None);
        b.unchanged(id("a"), || {
            unreachable!("without carry an unchanged customer is skipped")
        });
        b.stepped(id("b"), &slots(3), &[ev("b", 0, 4.0)]);
        let v = b.finish();
        assert_eq!(v.customers, vec![id("b")]);
        assert_eq!(v.scored_at, vec![4, 0]);
    }

    #[test]
    fn an_unchanged_customer_missing_from_the_previous_view_is_read_from_its_state() {
        let mut b = ViewBuilder::begin(3, 2, true, None, 0, None);
        b.unchanged(id("a"), || slots(1));
        let v = b.finish();
        assert_eq!(v.customers, vec![id("a")]);
        assert_eq!(v.last_seen, vec![2]);
        assert_eq!(v.scored_at, vec![0, 0]);
        assert_eq!(v.alert[1] & 0b11, 2);
    }
}
