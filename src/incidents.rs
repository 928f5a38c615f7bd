//! The incident operator: every network element's epoch, on the worker that owns the element.
//!
//! ```text
//!  topology collection ──arrange by customer──┐
//!  open anomalies (arranged by customer) ──────┴─ join_core ─▶ (element, (member, its open anomaly)) ─┐
//!  SeriesModel ── per-element sums of each worker ─────────────────────────────────────────────────────┤
//!  topology's member counts per element ────────────────────────────────────────────────────────────────┤
//!                                                               exchange by element                     ▼
//!                                              Incidents: per epoch, per element in id order,
//!                                              model::incident::ElementState::step
//!                                              ──▶ incident changes, and the members' changes of the epoch
//!                                                  that happened under an open incident (annotations)
//! ```
//!
//! The join is incremental: only the members' alert *changes* and topology changes flow through it, never
//! the fleet. The per-element sums are integers, so every layout sums the same; every element of the
//! topology is stepped at every epoch from the first one any worker ran (an element whose members have not
//! logged yet is stepped with zeros), so an element's history does not depend on which worker ran what.

use std::collections::{BTreeMap, HashMap};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;

use crate::keys::{CustomerId, stable_hash};
use crate::model::AnomalyKind;
use crate::model::alert::Transition;
use crate::model::customer::{OpenAnomaly, is_customer_level};
use crate::model::incident::{
    AlertCounts, ElementPartial, ElementState, IncidentChange, IncidentParams, MemberAlerts,
};
use crate::topology::ElementId;

/// A difference of an element's member count: ((element, region), time, members added or removed).
pub type MemberCountDiff = ((ElementId, ElementId), u64, isize);

/// The member counts of a topology's placements, per (element, region), as differences at time 0.
pub fn member_counts(placements: &[crate::topology::Placement]) -> Vec<MemberCountDiff> {
    let mut counts: BTreeMap<(ElementId, ElementId), isize> = BTreeMap::new();
    for p in placements {
        *counts.entry((p.element, p.region)).or_default() += 1;
    }
    counts.into_iter().map(|(k, n)| (k, 0u64, n)).collect()
}

/// A difference of the members' open anomalies, per element (the join's output).
pub type MemberAlertDiff = ((ElementId, (CustomerId, OpenAnomaly)), u64, isize);

/// A member's change at an epoch while its element had an incident open: (customer, feature, element).
pub type Annotation = (CustomerId, u16, ElementId);

fn element_route(e: &ElementId) -> u64 {
    stable_hash(e.as_str().as_bytes())
}

/// What the incident operator produces.
pub struct IncidentStreams<'scope> {
    pub changes: Stream<'scope, u64, Vec<IncidentChange>>,
    pub annotations: Stream<'scope, u64, Vec<Annotation>>,
}

/// Per element: the members' open anomalies (accumulated differences) and the member count.
#[derive(Default)]
struct ElementBook {
    region: Option<ElementId>,
    members: isize,
    open: BTreeMap<(CustomerId, OpenAnomaly), isize>,
    state: Option<ElementState>,
}

impl ElementBook {
    fn alert_counts(&self) -> AlertCounts {
        let mut customers: Vec<CustomerId> = Vec::new();
        let mut by: BTreeMap<(u16, AnomalyKind), u32> = BTreeMap::new();
        for ((c, a), n) in &self.open {
            if *n <= 0 || a.kind == AnomalyKind::Silent {
                continue;
            }
            if customers.last() != Some(c) {
                customers.push(*c);
            }
            if !is_customer_level(a.feature) {
                *by.entry((a.feature, a.kind)).or_default() += 1;
            }
        }
        let mut top: Vec<MemberAlerts> = by
            .into_iter()
            .map(|((feature, kind), members)| MemberAlerts {
                feature,
                kind,
                members,
            })
            .collect();
        top.sort_by_key(|a| std::cmp::Reverse(a.members));
        top.truncate(3);
        AlertCounts {
            alerting: customers.len() as u32,
            top,
        }
    }
}

/// Builds the incident operator (see the module documentation).
pub fn incidents<'scope>(
    partials: Stream<'scope, u64, Vec<ElementPartial>>,
    member_alerts: Stream<'scope, u64, Vec<MemberAlertDiff>>,
    members: Stream<'scope, u64, Vec<MemberCountDiff>>,
    features: usize,
    params: IncidentParams,
) -> IncidentStreams<'scope> {
    let scope = partials.scope();
    // The whole fleet's sums, to every worker: what every element shares at an epoch (the time of day the
    // members' models all get a little wrong) is not congestion.
    let fleet = partials
        .clone()
        .unary::<CapacityContainerBuilder<Vec<ElementPartial>>, _, _, _>(
            Pipeline,
            "FleetSums",
            |_cap, _info| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut sum: Option<ElementPartial> = None;
                        for p in data.iter() {
                            match sum.as_mut() {
                                Some(s) => s.add(p),
                                None => sum = Some(p.clone()),
                            }
                        }
                        if let Some(s) = sum {
                            output.session(&cap).give(s);
                        }
                    });
                }
            },
        )
        .broadcast();
    let mut builder = OperatorBuilder::new("Incidents".to_owned(), scope);
    let mut in_partials = builder.new_input(
        partials,
        Exchange::new(|p: &ElementPartial| element_route(&p.element)),
    );
    let mut in_alerts = builder.new_input(
        member_alerts,
        Exchange::new(|d: &MemberAlertDiff| element_route(&(d.0).0)),
    );
    let mut in_topo = builder.new_input(
        members,
        Exchange::new(|d: &MemberCountDiff| element_route(&(d.0).0)),
    );
    let mut in_fleet = builder.new_input(fleet, Pipeline);
    let (out_changes, changes) = builder.new_output::<Vec<IncidentChange>>();
    let (out_notes, annotations) = builder.new_output::<Vec<Annotation>>();
    let mut out_changes = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_changes);
    let mut out_notes = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_notes);

    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut books: BTreeMap<ElementId, ElementBook> = BTreeMap::new();
        let mut sums: BTreeMap<u64, HashMap<ElementId, ElementPartial>> = BTreeMap::new();
        let mut alert_diffs: BTreeMap<u64, Vec<MemberAlertDiff>> = BTreeMap::new();
        let mut topo_diffs: BTreeMap<u64, Vec<MemberCountDiff>> = BTreeMap::new();
        let mut fleet_sums: BTreeMap<u64, ElementPartial> = BTreeMap::new();
        let mut next: Option<u64> = None;
        move |frontiers| {
            in_partials.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let at = sums.entry(t).or_default();
                for p in data.drain(..) {
                    match at.get_mut(&p.element) {
                        Some(s) => s.add(&p),
                        None => {
                            at.insert(p.element, p);
                        }
                    }
                }
            });
            in_alerts.for_each(|_cap, data| {
                for d in data.drain(..) {
                    alert_diffs.entry(d.1).or_default().push(d);
                }
            });
            in_fleet.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                for p in data.drain(..) {
                    match fleet_sums.get_mut(&t) {
                        Some(s) => s.add(&p),
                        None => {
                            fleet_sums.insert(t, p);
                        }
                    }
                }
            });
            in_topo.for_each(|_cap, data| {
                for d in data.drain(..) {
                    topo_diffs.entry(d.1).or_default().push(d);
                }
            });
            let Some(held) = caps.as_mut() else { return };
            let bound = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            // Epochs run contiguously from the first one any worker's model ran.
            while let Some(e) = next.or_else(|| sums.keys().next().copied()) {
                if bound.is_some_and(|b| e >= b) {
                    break;
                }
                if bound.is_none() && sums.range(e..).next().is_none() {
                    break; // the input is over and every epoch with data is done
                }
                let ready: Vec<u64> = topo_diffs.range(..=e).map(|(t, _)| *t).collect();
                for t in ready {
                    for ((element, region), _, d) in topo_diffs.remove(&t).unwrap_or_default() {
                        let b = books.entry(element).or_default();
                        b.members += d;
                        if d > 0 {
                            b.region = Some(region);
                        }
                    }
                }
                // The members' alert changes of this epoch (and any earlier ones not yet applied).
                let mut now: Vec<(ElementId, CustomerId, u16)> = Vec::new();
                let ready: Vec<u64> = alert_diffs.range(..=e).map(|(t, _)| *t).collect();
                for t in ready {
                    for ((el, (c, a)), _, d) in alert_diffs.remove(&t).unwrap_or_default() {
                        let b = books.entry(el).or_default();
                        let n = b.open.entry((c, a)).or_insert(0);
                        *n += d;
                        if *n == 0 {
                            b.open.remove(&(c, a));
                        }
                        if t == e {
                            now.push((el, c, a.feature));
                        }
                    }
                }
                now.sort_unstable();
                now.dedup();
                let mut at = sums.remove(&e).unwrap_or_default();
                let fleet: Vec<f32> = match fleet_sums.remove(&e) {
                    Some(f) => f.means(),
                    None => vec![f32::NAN; features],
                };
                let mut changes = Vec::new();
                for (el, b) in books.iter_mut() {
                    if b.members <= 0 && b.state.is_none() {
                        continue;
                    }
                    let region = b.region.unwrap_or(*el);
                    let mut x = at
                        .remove(el)
                        .unwrap_or_else(|| ElementPartial::new(*el, region, features));
                    // Members from the topology itself (a worker that has run nothing yet has summed none).
                    x.members = b.members.max(0) as u32;
                    x.region = region;
                    let counts = b.alert_counts();
                    let state = b.state.get_or_insert_with(|| ElementState::new(features));
                    if let Some(ch) = state.step(&params, e, &x, &counts, &fleet) {
                        changes.push(ch);
                    }
                }
                // Annotations: the members' changes of this epoch under an incident open at it (or
                // raised or cleared at it).
                let mut notes: Vec<Annotation> = Vec::new();
                for (el, c, f) in now {
                    let open = books
                        .get(&el)
                        .is_some_and(|b| b.state.as_ref().is_some_and(|s| s.open.is_some()))
                        || changes
                            .iter()
                            .any(|ch| ch.element == el && ch.status == Transition::Cleared);
                    if open {
                        notes.push((c, f, el));
                    }
                }
                if !changes.is_empty() {
                    out_changes
                        .activate()
                        .session(&held[0].delayed(&e))
                        .give_container(&mut changes);
                }
                if !notes.is_empty() {
                    out_notes
                        .activate()
                        .session(&held[1].delayed(&e))
                        .give_container(&mut notes);
                }
                next = Some(e + 1);
            }
            match bound {
                None => {
                    caps = None;
                }
                Some(b) => {
                    let low = next.map_or(b, |n| n.min(b));
                    for c in held.iter_mut() {
                        if *c.time() < low {
                            c.downgrade(&low);
                        }
                    }
                }
            }
        }
    });
    IncidentStreams {
        changes,
        annotations,
    }
}
