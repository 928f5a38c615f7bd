//! The incident operator: every network element's and region's epoch, on the worker that owns the region.
//!
//! ```text
//!  topology collection ──arrange by customer──┐
//!  open anomalies (arranged by customer) ──────┴─ join_core ─▶ ((element, region), (member, its anomaly)) ─┐
//!  SeriesModel ── per-element sums of each worker ──────────────────────────────────────────────────────────┤
//!  topology feed's member counts per element (at time 0, then as customers move) ────────────────────────────┤
//!                                                               exchange by region                           ▼
//!                                              Incidents: per epoch, per element in id order,
//!                                              model::incident::ElementState::step, then per region
//!                                              RegionState::step over its elements' views
//!                                              ──▶ element and region incident changes, and the members'
//!                                                  changes of the epoch that happened under an open element
//!                                                  incident (annotations)
//! ```
//!
//! Everything is routed by region, so a region's elements are stepped on one worker and the region right
//! after them, without another exchange (a region of 20 elements, 1,000 customers, is a small unit of work).
//! An element is kept as (element, region): one whose members all moved to another region is another element
//! there (its state would otherwise sit on the old region's worker under one layout and not another); an
//! element left without members, open alerts or an open incident is dropped.
//!
//! The join is incremental: only the members' alert *changes* and topology changes flow through it, never
//! the fleet. The per-element sums are integers, so every layout sums the same; every element of the
//! topology is stepped at every epoch from the first one any worker ran (an element whose members have not
//! logged yet is stepped with zeros), so an element's history does not depend on which worker ran what.
//!
//! Checkpoints: after stepping a checkpoint epoch (or a graceful stop's), the operator writes the state of
//! every element it owns into its worker's incident part; a restored run gives each worker the elements
//! it owns under the new layout (by the same routing hash) and steps on from the epoch after. The members'
//! open anomalies need no part: the restored series model re-seeds them at the checkpoint epoch, and they
//! reach this operator through the join like any change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;

use crate::arrangement::PendingWrites;
use crate::checkpoint::{Checkpointing, Loaded};
use crate::keys::{CustomerId, stable_hash};
use crate::model::AnomalyKind;
use crate::model::alert::Transition;
use crate::model::customer::{OpenAnomaly, is_customer_level};
use crate::model::incident::{
    AlertCounts, DEVIATION_UNIT, ElementPartial, ElementState, ElementView, IncidentChange,
    IncidentParams, MemberAlerts, RegionChange, RegionParams, RegionState,
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

/// A difference of the members' open anomalies, per (element, region) (the join's output).
pub type MemberAlertDiff = (
    ((ElementId, ElementId), (CustomerId, OpenAnomaly)),
    u64,
    isize,
);

/// A member's change at an epoch while its element had an incident open: (customer, feature, element).
pub type Annotation = (CustomerId, u16, ElementId);

/// The members' alert changes of one epoch, each under the element the member is placed in at that epoch:
/// `(customer, feature, element, diff)` from the join's differences. A member that moved in the epoch its
/// alert changed has differences under both elements (its old alert leaves the old one, its new alert
/// arrives at the new one): the element with an arriving alert is where it is now. Sorted by element.
fn changed_members(
    mut now: Vec<(CustomerId, u16, ElementKey, isize)>,
) -> Vec<(ElementKey, CustomerId, u16)> {
    // per (customer, feature): arrivals first, then by element (deterministic for any arrival order)
    now.sort_unstable_by_key(|a| (a.0, a.1, a.3 <= 0, a.2));
    now.dedup_by(|later, first| (later.0, later.1) == (first.0, first.1));
    let mut out: Vec<(ElementKey, CustomerId, u16)> =
        now.into_iter().map(|(c, f, el, _)| (el, c, f)).collect();
    out.sort_unstable();
    out
}

/// The worker of a region (and of its elements): `region_route % peers`.
fn region_route(region: &ElementId) -> u64 {
    stable_hash(region.as_str().as_bytes())
}

/// The incident operator's part in checkpoints.
pub struct IncidentCheckpoint {
    pub cfg: Checkpointing,
    pub worker: usize,
    pub peers: usize,
    pub pending: PendingWrites,
    /// A graceful stop's epoch is a checkpoint too.
    pub stop: Arc<crate::stop::Stop>,
}

/// The elements and regions one worker owns in a restored run, as of the checkpoint epoch.
#[derive(Debug, Default)]
pub struct RestoredIncidents {
    pub epoch: u64,
    pub elements: Vec<(ElementId, ElementId, ElementState)>,
    pub regions: Vec<(ElementId, RegionState)>,
}

impl RestoredIncidents {
    /// Takes worker `worker`'s elements and regions (routed as the operator's exchange routes them, under
    /// the new layout) out of every incident part of the checkpoint.
    pub fn take(loaded: &Loaded, worker: usize, peers: usize) -> RestoredIncidents {
        let mine = |r: &ElementId| region_route(r) % peers as u64 == worker as u64;
        let mut elements: Vec<(ElementId, ElementId, ElementState)> = loaded
            .incidents
            .iter()
            .flat_map(|s| s.elements.iter())
            .filter(|(_, r, _)| mine(r))
            .cloned()
            .collect();
        elements.sort_by_key(|x| x.0);
        let mut regions: Vec<(ElementId, RegionState)> = loaded
            .incidents
            .iter()
            .flat_map(|s| s.regions.iter())
            .filter(|(r, _)| mine(r))
            .cloned()
            .collect();
        regions.sort_by_key(|x| x.0);
        RestoredIncidents {
            epoch: loaded.manifest.epoch,
            elements,
            regions,
        }
    }
}

/// The borrowed form of [`IncidentSnapshot`] (the same bytes, without copying the elements' state).
#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    epoch: u64,
    elements: Vec<(&'a ElementId, &'a ElementId, &'a ElementState)>,
    regions: Vec<(&'a ElementId, &'a RegionState)>,
}

impl<'a> SnapshotRef<'a> {
    fn new(
        epoch: u64,
        books: &'a BTreeMap<ElementKey, ElementBook>,
        regions: &'a BTreeMap<ElementId, RegionState>,
    ) -> Self {
        SnapshotRef {
            epoch,
            elements: books
                .iter()
                .filter_map(|((e, r), b)| Some((e, r, b.state.as_ref()?)))
                .collect(),
            regions: regions.iter().collect(),
        }
    }
}

/// Writes worker `ck.worker`'s incident part of checkpoint `c` in the background.
fn write_part(
    ck: &IncidentCheckpoint,
    c: u64,
    books: &BTreeMap<ElementKey, ElementBook>,
    regions: &BTreeMap<ElementId, RegionState>,
) {
    let snap = SnapshotRef::new(c, books, regions);
    let body = match bincode::serialize(&snap) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("checkpoint at epoch {c}: incident state: {e}");
            return;
        }
    };
    let dir = match ck.cfg.make_epoch_dir(c) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("checkpoint at epoch {c}: {e}");
            return;
        }
    };
    let path = dir.join(crate::checkpoint::incidents_part(ck.worker, ck.peers));
    crate::arrangement::write_in_background(&ck.pending, c, path, body);
}

/// What the incident operator produces.
pub struct IncidentStreams<'scope> {
    pub changes: Stream<'scope, u64, Vec<IncidentChange>>,
    pub regions: Stream<'scope, u64, Vec<RegionChange>>,
    pub annotations: Stream<'scope, u64, Vec<Annotation>>,
}

/// An element as the operator keeps it: (element, region). An element whose members are all placed in
/// another region is another element there (its learned normal starts again): its state lives on the
/// region's worker, and which worker that is must not decide what it remembers.
type ElementKey = (ElementId, ElementId);

/// Per element: the members' open anomalies (accumulated differences) and the member count.
#[derive(Default)]
struct ElementBook {
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

/// Per feature, the median over elements of their mean moves (NaN where no element had enough members
/// scored). The same on every worker: every worker has every element's means, and the median does not
/// depend on their order.
fn fleet_medians(means: Option<Vec<Vec<f32>>>, features: usize) -> Vec<f32> {
    let means = means.unwrap_or_default();
    let mut column: Vec<f32> = Vec::with_capacity(means.len());
    (0..features)
        .map(|f| {
            column.clear();
            column.extend(
                means
                    .iter()
                    .filter_map(|m| m.get(f).copied())
                    .filter(|x| x.is_finite()),
            );
            column.sort_by(f32::total_cmp);
            let n = column.len();
            match n {
                0 => f32::NAN,
                _ if n % 2 == 1 => column[n / 2],
                _ => (column[n / 2 - 1] + column[n / 2]) / 2.0,
            }
        })
        .collect()
}

/// Builds the incident operator (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn incidents<'scope>(
    partials: Stream<'scope, u64, Vec<ElementPartial>>,
    member_alerts: Stream<'scope, u64, Vec<MemberAlertDiff>>,
    members: Stream<'scope, u64, Vec<MemberCountDiff>>,
    features: usize,
    params: IncidentParams,
    region_params: RegionParams,
    checkpoint: Option<IncidentCheckpoint>,
    restored: Option<RestoredIncidents>,
) -> IncidentStreams<'scope> {
    let scope = partials.scope();
    // Each element's sums, added up from the workers' partials on its region's worker, once every worker
    // has passed the epoch.
    let element_sums = partials
        .unary_frontier::<CapacityContainerBuilder<Vec<ElementPartial>>, _, _, _>(
            Exchange::new(|p: &ElementPartial| region_route(&p.region)),
            "ElementSums",
            |cap, _info| {
                let mut cap = Some(cap);
                let mut pending: BTreeMap<u64, HashMap<ElementKey, ElementPartial>> =
                    BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|c, data| {
                        let Some(&t) = c.least() else { return };
                        let at = pending.entry(t).or_default();
                        for p in data.drain(..) {
                            match at.get_mut(&(p.element, p.region)) {
                                Some(s) => s.add(&p),
                                None => {
                                    at.insert((p.element, p.region), p);
                                }
                            }
                        }
                    });
                    let Some(held) = cap.as_mut() else { return };
                    let bound = frontier.frontier().first().copied();
                    while let Some(t) = pending.keys().next().copied() {
                        if bound.is_some_and(|b| t >= b) {
                            break;
                        }
                        let mut v: Vec<ElementPartial> = pending
                            .remove(&t)
                            .unwrap_or_default()
                            .into_values()
                            .collect();
                        v.sort_by_key(|p| (p.element, p.region));
                        output.session(&held.delayed(&t)).give_container(&mut v);
                    }
                    match bound {
                        None => cap = None,
                        Some(b) => held.downgrade(&b),
                    }
                }
            },
        );
    // Every element's mean move per feature, to every worker: their median is what every element shares
    // at an epoch (the time of day the members' models all get a little wrong), not congestion — robust to
    // the elements that are congested (a mean would move with them: in a fleet of four regions, one
    // region's congestion would make the others look congested the other way).
    let min_scored = params.min_scored;
    let fleet = element_sums
        .clone()
        .unary::<CapacityContainerBuilder<Vec<Vec<f32>>>, _, _, _>(
            Pipeline,
            "ElementMeans",
            move |_cap, _info| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut means: Vec<Vec<f32>> = data
                            .iter()
                            .map(|p| {
                                p.sums
                                    .iter()
                                    .zip(&p.counts)
                                    .map(|(s, c)| {
                                        if *c >= min_scored {
                                            *s as f32 / DEVIATION_UNIT / *c as f32
                                        } else {
                                            f32::NAN
                                        }
                                    })
                                    .collect()
                            })
                            .collect();
                        output.session(&cap).give_container(&mut means);
                    });
                }
            },
        )
        .broadcast();
    let mut builder = OperatorBuilder::new("Incidents".to_owned(), scope);
    let mut in_partials = builder.new_input(element_sums, Pipeline);
    let mut in_alerts = builder.new_input(
        member_alerts,
        Exchange::new(|d: &MemberAlertDiff| region_route(&((d.0).0).1)),
    );
    let mut in_topo = builder.new_input(
        members,
        Exchange::new(|d: &MemberCountDiff| region_route(&((d.0).1))),
    );
    let mut in_fleet = builder.new_input(fleet, Pipeline);
    let (out_changes, changes) = builder.new_output::<Vec<IncidentChange>>();
    let (out_notes, annotations) = builder.new_output::<Vec<Annotation>>();
    let (out_regions, regions) = builder.new_output::<Vec<RegionChange>>();
    let mut out_changes = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_changes);
    let mut out_notes = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_notes);
    let mut out_regions = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(out_regions);

    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut books: BTreeMap<ElementKey, ElementBook> = BTreeMap::new();
        let mut region_states: BTreeMap<ElementId, RegionState> = BTreeMap::new();
        let mut sums: BTreeMap<u64, HashMap<ElementKey, ElementPartial>> = BTreeMap::new();
        let mut alert_diffs: BTreeMap<u64, Vec<MemberAlertDiff>> = BTreeMap::new();
        let mut topo_diffs: BTreeMap<u64, Vec<MemberCountDiff>> = BTreeMap::new();
        let mut fleet_means: BTreeMap<u64, Vec<Vec<f32>>> = BTreeMap::new();
        let mut next: Option<u64> = None;
        // The first checkpoint epoch whose part this worker has not written.
        let mut ck_from: u64 = 0;
        if let Some(r) = restored {
            ck_from = r.epoch + 1;
            // A worker given elements that were being stepped steps on from the epoch after; one given
            // none starts, like a fresh one, at the first epoch it has sums for.
            if !r.elements.is_empty() {
                next = Some(r.epoch + 1);
            }
            for (element, region, state) in r.elements {
                let b = books.entry((element, region)).or_default();
                b.state = Some(state);
            }
            region_states.extend(r.regions);
        }
        move |frontiers| {
            in_partials.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let at = sums.entry(t).or_default();
                for p in data.drain(..) {
                    match at.get_mut(&(p.element, p.region)) {
                        Some(s) => s.add(&p),
                        None => {
                            at.insert((p.element, p.region), p);
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
                fleet_means.entry(t).or_default().append(data);
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
                    for (key, _, d) in topo_diffs.remove(&t).unwrap_or_default() {
                        books.entry(key).or_default().members += d;
                    }
                }
                // The members' alert changes of this epoch (and any earlier ones not yet applied).
                let mut now: Vec<(CustomerId, u16, ElementKey, isize)> = Vec::new();
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
                            now.push((c, a.feature, el, d));
                        }
                    }
                }
                let now = changed_members(now);
                let mut at = sums.remove(&e).unwrap_or_default();
                let fleet: Vec<f32> = fleet_medians(fleet_means.remove(&e), features);
                let mut changes = Vec::new();
                let mut views: BTreeMap<ElementId, Vec<ElementView>> = BTreeMap::new();
                for (key, b) in books.iter_mut() {
                    if b.members <= 0 && b.state.is_none() {
                        continue;
                    }
                    let (el, region) = *key;
                    let mut x = at
                        .remove(key)
                        .unwrap_or_else(|| ElementPartial::new(el, region, features));
                    // Members from the topology itself (a worker that has run nothing yet has summed none).
                    x.members = b.members.max(0) as u32;
                    x.region = region;
                    let counts = b.alert_counts();
                    let state = b.state.get_or_insert_with(|| ElementState::new(features));
                    let (ch, view) = state.step_viewed(&params, e, &x, &counts, &fleet);
                    if let Some(ch) = ch {
                        changes.push(ch);
                    }
                    if b.members > 0 {
                        views.entry(region).or_default().push(view);
                    }
                }
                // Each region, over its elements' views (in element order).
                let mut region_changes = Vec::new();
                for (region, vs) in views {
                    let r = region_states.entry(region).or_default();
                    if let Some(ch) = r.step(&region_params, e, region, &vs) {
                        region_changes.push(ch);
                    }
                }
                // Annotations: the members' changes of this epoch under an incident open at it (or
                // raised or cleared at it).
                let mut notes: Vec<Annotation> = Vec::new();
                for (key, c, f) in now {
                    let open = books
                        .get(&key)
                        .is_some_and(|b| b.state.as_ref().is_some_and(|s| s.open.is_some()))
                        || changes.iter().any(|ch| {
                            (ch.element, ch.region) == key && ch.status == Transition::Cleared
                        });
                    if open {
                        notes.push((c, f, key.0));
                    }
                }
                // An element left without members, alerts or an open incident (its customers all moved
                // elsewhere, or to the same element in another region) is done: its book goes.
                books.retain(|_, b| {
                    b.members > 0
                        || !b.open.is_empty()
                        || b.state.as_ref().is_some_and(|s| s.open.is_some())
                });
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
                if !region_changes.is_empty() {
                    out_regions
                        .activate()
                        .session(&held[2].delayed(&e))
                        .give_container(&mut region_changes);
                }
                if let Some(ck) = &checkpoint
                    && e >= ck_from
                    && (ck.cfg.is_checkpoint(e) || ck.stop.epoch() == Some(e))
                {
                    write_part(ck, e, &books, &region_states);
                    ck_from = e + 1;
                }
                next = Some(e + 1);
            }
            // A worker that has stepped nothing yet holds no element state: its part of a checkpoint its
            // inputs have passed is empty (the last such epoch, as the series model writes its own).
            if let Some(ck) = &checkpoint
                && next.is_none()
            {
                let stop_at = ck.stop.epoch();
                let limit = bound.or(stop_at.map(|s| s + 1));
                let regular = limit
                    .filter(|l| *l >= ck.cfg.every)
                    .map(|l| l - 1 - l % ck.cfg.every);
                let stopping = stop_at.filter(|s| limit.is_some_and(|l| *s < l));
                if let Some(c) = regular.max(stopping)
                    && c >= ck_from
                {
                    write_part(ck, c, &books, &region_states);
                    ck_from = c + 1;
                }
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
        regions,
        annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::IncidentSnapshot;

    #[test]
    fn a_member_that_moves_as_its_alert_changes_is_under_its_new_element_once() {
        let (c1, c2) = (id("cust-1"), id("cust-2"));
        let (old, new, r) = (id("elem-old"), id("elem-new"), id("region"));
        let now = vec![
            // c1 moved old → new as its alert was updated: the old alert leaves old, the new arrives at new
            (c1, 3, (old, r), -1),
            (c1, 3, (new, r), 1),
            // c1's alert on feature 4 updated in place at new (the old record out, the new one in)
            (c1, 4, (new, r), -1),
            (c1, 4, (new, r), 1),
            // c2's alert cleared as it moved: only its leaving the old element is left
            (c2, 3, (old, r), -1),
        ];
        let mut reversed = now.clone();
        reversed.reverse();
        let mut want = vec![((new, r), c1, 3), ((new, r), c1, 4), ((old, r), c2, 3)];
        want.sort_unstable();
        assert_eq!(changed_members(now), want);
        assert_eq!(changed_members(reversed), want);
    }

    fn id(s: &str) -> ElementId {
        ElementId::parse(s.as_bytes(), b"").unwrap()
    }

    #[test]
    fn the_borrowed_snapshot_reads_back_as_an_incident_part() {
        let mut state = ElementState::new(3);
        state.epochs = 40;
        state.mean = vec![0.1, -0.2, 0.3];
        state.open = Some(crate::model::incident::OpenIncident {
            start: 7,
            kind: crate::model::incident::IncidentKind::Congestion,
            severity: crate::model::header::Severity::Critical,
        });
        let mut books: BTreeMap<ElementKey, ElementBook> = BTreeMap::new();
        books.insert(
            (id("elem-1"), id("region-1")),
            ElementBook {
                members: 12,
                state: Some(state.clone()),
                ..Default::default()
            },
        );
        // Not stepped yet: no state, not in the part.
        books.insert((id("elem-2"), id("region-1")), ElementBook::default());
        let mut regions = BTreeMap::new();
        regions.insert(
            id("region-1"),
            RegionState {
                epochs: 30,
                p_affected: 0.01,
                ..Default::default()
            },
        );
        let snap = SnapshotRef::new(11, &books, &regions);
        let bytes = bincode::serialize(&snap).unwrap();
        let back: IncidentSnapshot = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back.epoch, 11);
        assert_eq!(back.elements.len(), 1);
        assert_eq!(
            back.regions,
            vec![(id("region-1"), regions[&id("region-1")].clone())]
        );
        let (e, r, s) = &back.elements[0];
        assert_eq!((*e, *r), (id("elem-1"), id("region-1")));
        // NaN (the previous deviation of a feature not scored) survives: compare through the bytes.
        assert!(s.last_dev.iter().all(|x| x.is_nan()));
        assert_eq!(
            bincode::serialize(s).unwrap(),
            bincode::serialize(&state).unwrap()
        );
    }

    #[test]
    fn the_fleet_median_is_taken_per_feature_over_elements_with_enough_members() {
        let nan = f32::NAN;
        let means = vec![
            vec![0.1, nan, 3.0],
            vec![0.4, nan, -1.0],
            vec![0.2, 5.0, 0.0],
            vec![9.0, nan, 2.0],
        ];
        let m = fleet_medians(Some(means), 4);
        // [0.1, 0.2, 0.4, 9.0] → (0.2 + 0.4)/2; [5.0]; [-1, 0, 2, 3] → 1; no element: NaN.
        assert!((m[0] - 0.3).abs() < 1e-6);
        assert_eq!(m[1], 5.0);
        assert_eq!(m[2], 1.0);
        assert!(m[3].is_nan());
        // One element's congestion does not move it.
        let mut means = vec![vec![0.0]; 9];
        means.push(vec![0.8]);
        assert_eq!(fleet_medians(Some(means), 1), vec![0.0]);
        assert!(fleet_medians(None, 2).iter().all(|x| x.is_nan()));
    }

    #[test]
    fn every_region_is_restored_to_the_worker_the_exchange_sends_it_to() {
        for peers in [1usize, 2, 3, 4, 6] {
            for i in 0..200 {
                let e = id(&format!("region-{i:03}"));
                let owners: Vec<usize> = (0..peers)
                    .filter(|w| region_route(&e) % peers as u64 == *w as u64)
                    .collect();
                assert_eq!(owners.len(), 1);
                // timely's exchange: a mask for a power of two, the remainder otherwise (the same).
                if peers.is_power_of_two() {
                    assert_eq!(owners[0] as u64, region_route(&e) & (peers as u64 - 1));
                }
            }
        }
    }
}
