//! Watching a few customers: every prediction the model made for them, not only the changes.
//!
//! A run's output holds the changes (raised / updated / cleared) with the numbers behind each one. A picture
//! of what the model saw needs more: for every epoch and feature of one customer, the observed value, the
//! prediction and the band around it. A [`Watch`] names a few customers; the series-model operator asks it,
//! per stepped customer, whether to keep that customer's per-observation evidence (one binary search in a
//! short sorted list: nothing else changes on the hot path, and nothing at all without a watch), and hands
//! the evidence to it. `fleetwatch plot` and `fleetwatch report` replay a recorded input with a watch on the
//! customers they draw (`crate::plot`), so the band drawn is exactly the one the run used, cohort priors and
//! all: a series replayed alone would start from different priors.

use std::sync::Mutex;

use crate::keys::CustomerId;
use crate::model::customer::Evidence;

/// One scored observation of a watched customer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchRow {
    pub epoch: u64,
    pub evidence: Evidence,
}

/// The customers to watch, and what the model said about them.
#[derive(Debug, Default)]
pub struct Watch {
    customers: Vec<CustomerId>,
    rows: Mutex<Vec<WatchRow>>,
}

impl Watch {
    pub fn new(mut customers: Vec<CustomerId>) -> Watch {
        customers.sort_unstable();
        customers.dedup();
        Watch {
            customers,
            rows: Mutex::new(Vec::new()),
        }
    }

    /// Whether `customer` is watched.
    #[inline]
    pub fn contains(&self, customer: &CustomerId) -> bool {
        self.customers.binary_search(customer).is_ok()
    }

    pub fn customers(&self) -> &[CustomerId] {
        &self.customers
    }

    /// Takes one epoch's evidence of a watched customer (drains `evidence`).
    pub fn record(&self, epoch: u64, evidence: &mut Vec<Evidence>) {
        if evidence.is_empty() {
            return;
        }
        // A poisoned lock means another worker panicked while pushing: the run is failing anyway, and the
        // rows it holds are still whole (a push either happened or did not).
        let mut rows = match self.rows.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        rows.extend(
            evidence
                .drain(..)
                .map(|evidence| WatchRow { epoch, evidence }),
        );
    }

    /// Everything recorded, sorted by customer, feature and epoch (the same for any worker layout).
    pub fn take(&self) -> Vec<WatchRow> {
        let mut rows = match self.rows.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        rows.sort_by(|a, b| {
            (a.evidence.customer, a.evidence.feature, a.epoch).cmp(&(
                b.evidence.customer,
                b.evidence.feature,
                b.epoch,
            ))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::customer::TopFeature;

    fn id(s: &str) -> CustomerId {
        CustomerId::parse(s.as_bytes(), b"").unwrap()
    }

    fn ev(c: &str, feature: u16) -> Evidence {
        Evidence {
            customer: id(c),
            feature,
            score: 0.1,
            observed: 1.0,
            expected: 1.0,
            lower: 0.0,
            upper: 2.0,
            customer_score: 0.0,
            top: [TopFeature::NONE; 3],
        }
    }

    #[test]
    fn watches_only_the_named_customers_and_returns_rows_in_a_layout_free_order() {
        let w = Watch::new(vec![id("c-2"), id("c-1"), id("c-2")]);
        assert_eq!(w.customers(), &[id("c-1"), id("c-2")]);
        assert!(w.contains(&id("c-1")) && w.contains(&id("c-2")));
        assert!(!w.contains(&id("c-3")));
        // two "workers" recording out of order
        let mut a = vec![ev("c-2", 1), ev("c-2", 0)];
        w.record(7, &mut a);
        assert!(a.is_empty());
        let mut b = vec![ev("c-1", 0)];
        w.record(8, &mut b);
        let mut c = vec![ev("c-2", 0)];
        w.record(6, &mut c);
        let rows = w.take();
        let keys: Vec<(String, u16, u64)> = rows
            .iter()
            .map(|r| (r.evidence.customer.to_string(), r.evidence.feature, r.epoch))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("c-1".to_string(), 0, 8),
                ("c-2".to_string(), 0, 6),
                ("c-2".to_string(), 0, 7),
                ("c-2".to_string(), 1, 7),
            ]
        );
        assert!(w.take().is_empty(), "take empties the watch");
    }
}
