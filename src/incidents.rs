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

/// The incident operator's part in checkpoints.
pub struct IncidentCheckpoint {
    pub cfg: Checkpointing,
    pub worker: usize,
    pub peers: usize,
    pub pending: PendingWrites,
    /// A graceful stop's epoch is a checkpoint too.
    pub stop: Arc<crate::stop::Stop>,
}

/// The elements one worker owns in a restored run, as of the checkpoint epoch.
#[derive(Debug, Default)]
pub struct RestoredIncidents {
    pub epoch: u64,
    pub elements: Vec<(ElementId, ElementId, ElementState)>,
}

impl RestoredIncidents {
    /// Takes worker `worker`'s elements (routed as the operator's exchange routes them, under the new
    /// layout) out of every incident part of the checkpoint.
    pub fn take(loaded: &Loaded, worker: usize, peers: usize) -> RestoredIncidents {
        let mut elements: Vec<(ElementId, ElementId, ElementState)> = loaded
            .incidents
            .iter()
            .flat_map(|s| s.elements.iter())
            .filter(|(e, _, _)| element_route(e) % peers as u64 == worker as u64)
            .cloned()
            .collect();
        elements.sort_by_key(|x| x.0);
        RestoredIncidents {
            epoch: loaded.manifest.epoch,
            elements,
        }
    }
}

/// The borrowed form of [`IncidentSnapshot`] (the same bytes, without copying the elements' state).
#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    epoch: u64,
    elements: Vec<(&'a ElementId, &'a ElementId, &'a ElementState)>,
}

/// Writes worker `ck.worker`'s incident part of checkpoint `c` in the background.
fn write_part(ck: &IncidentCheckpoint, c: u64, books: &BTreeMap<ElementId, ElementBook>) {
    let snap = SnapshotRef {
        epoch: c,
        elements: books
            .iter()
            .filter_map(|(e, b)| Some((e, b.region.as_ref().unwrap_or(e), b.state.as_ref()?)))
            .collect(),
    };
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
    let spawned = std::thread::Builder::new()
        .name("fleetwatch-ckpt".into())
        .spawn(move || crate::checkpoint::part::write_part(&path, &body, &[]));
    match spawned {
        Ok(handle) => {
            if let Ok(mut p) = ck.pending.lock() {
                p.push(handle);
            }
        }
        Err(e) => tracing::error!("checkpoint at epoch {c}: {e}"),
    }
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
#[allow(clippy::too_many_arguments)]
pub fn incidents<'scope>(
    partials: Stream<'scope, u64, Vec<ElementPartial>>,
    member_alerts: Stream<'scope, u64, Vec<MemberAlertDiff>>,
    members: Stream<'scope, u64, Vec<MemberCountDiff>>,
    features: usize,
    params: IncidentParams,
    checkpoint: Option<IncidentCheckpoint>,
    restored: Option<RestoredIncidents>,
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
                let b = books.entry(element).or_default();
                b.region = Some(region);
                b.state = Some(state);
            }
        }
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
                if let Some(ck) = &checkpoint
                    && e >= ck_from
                    && (ck.cfg.is_checkpoint(e) || ck.stop.epoch() == Some(e))
                {
                    write_part(ck, e, &books);
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
                    write_part(ck, c, &books);
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
        annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::IncidentSnapshot;

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
        let mut books: BTreeMap<ElementId, ElementBook> = BTreeMap::new();
        books.insert(
            id("elem-1"),
            ElementBook {
                region: Some(id("region-1")),
                members: 12,
                state: Some(state.clone()),
                ..Default::default()
            },
        );
        // Not stepped yet: no state, not in the part.
        books.insert(id("elem-2"), ElementBook::default());
        let snap = SnapshotRef {
            epoch: 11,
            elements: books
                .iter()
                .filter_map(|(e, b)| Some((e, b.region.as_ref().unwrap_or(e), b.state.as_ref()?)))
                .collect(),
        };
        let bytes = bincode::serialize(&snap).unwrap();
        let back: IncidentSnapshot = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back.epoch, 11);
        assert_eq!(back.elements.len(), 1);
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
    fn every_element_is_restored_to_the_worker_the_exchange_sends_it_to() {
        for peers in [1usize, 2, 3, 4, 6] {
            for i in 0..200 {
                let e = id(&format!("elem-{i:05}"));
                let owners: Vec<usize> = (0..peers)
                    .filter(|w| element_route(&e) % peers as u64 == *w as u64)
                    .collect();
                assert_eq!(owners.len(), 1);
                // timely's exchange: a mask for a power of two, the remainder otherwise (the same).
                if peers.is_power_of_two() {
                    assert_eq!(owners[0] as u64, element_route(&e) & (peers as u64 - 1));
                }
            }
        }
    }
}
