//! The fleet's topology: which network element (an OLT, a cable node, a DNS resolver…) serves each customer,
//! and which region the element is in (`run --topology FILE`).
//!
//! The file is CSV as `fleetwatch generate` writes it (`topology.csv`): an optional header
//! `customer,element,region`, then one row per customer. In the dataflow the rows are a differential
//! collection of [`Placement`]s (`dataflow.rs`): arranged by customer and joined with the open anomalies
//! (the members' alerts, per element), and delivered to the series model, which sums its customers' signed
//! deviations per element every epoch (the congestion evidence, [`crate::model::incident`]).
//!
//! A row that cannot be used is dead-lettered with its reason (code `topology`), and the rest flows on:
//! a wrong number of columns, an id that is not a valid id (the same rules as customer ids: 1–23 bytes of
//! `[A-Za-z0-9._:-]`, starting with a letter or digit), or a customer placed a second time (the first row
//! stands).
//!
//! **Changes** (`run --topology-changes FILE|kafka://HOST:PORT/TOPIC`): the topology moves while the fleet
//! runs — a customer moved to another element, an element added (its first customers placed on it), a
//! customer gone. Each change is one JSON line (one Kafka message), in effect from the epoch of its `ts`:
//!
//! ```text
//! {"ts":1700000000,"customer":"cust-0000042","element":"olt-0017","region":"north"}   place or move
//! {"ts":"2023-11-14T22:13:20Z","customer":"cust-0000042","remove":true}                  take out
//! ```
//!
//! [`Placements`] folds them into the current placement of every customer and turns each into differences
//! of the topology collection (a move retracts the old placement and adds the new one), which the dataflow
//! feeds at the change's epoch (`topology_feed.rs`). A line that is not such an object, an invalid id, or a
//! removal of a customer that is not placed is dead-lettered with its reason (code `topology`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::keys::CustomerId;
use crate::model::incident::ElementPartial;
use crate::record::{DeadLetter, RejectCode, Rejection};

/// A network element's or region's id: an inline string with the rules of a customer id.
pub type ElementId = CustomerId;

/// One customer's place in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub customer: CustomerId,
    pub element: ElementId,
    pub region: ElementId,
}

/// Why a topology file could not be read at all (a bad row is a dead letter, not an error).
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A topology file's usable rows and its refused ones.
#[derive(Debug, Default)]
pub struct Topology {
    /// The file it was read from (dead letters name it).
    pub path: String,
    pub placements: Vec<Placement>,
    /// Refused rows, as dead letters of input `input` (the topology's index among the run's inputs).
    pub dead: Vec<DeadLetter>,
    /// Where changes to it come from while the run goes on (`--topology-changes`), if anywhere.
    pub changes: Option<ChangeFeedSpec>,
}

/// Where a run's topology changes come from.
#[derive(Debug, Clone)]
pub enum ChangeFeedSpec {
    /// A file of change lines, read whole at start (a replay: every change at the epoch of its `ts`).
    File {
        /// As dead letters name it.
        path: String,
        /// Its index among the run's inputs (dead letters).
        input: u32,
        /// The file's lines, 1-based numbers (blank ones left out).
        lines: Arc<Vec<(u64, Vec<u8>)>>,
    },
    /// A Kafka topic of change messages, read from its beginning (a compacted changelog of the topology),
    /// then as they arrive.
    #[cfg(feature = "kafka")]
    Kafka {
        address: crate::kafka::KafkaAddress,
        input: u32,
    },
}

impl ChangeFeedSpec {
    /// What dead letters name it by.
    pub fn name(&self) -> String {
        match self {
            ChangeFeedSpec::File { path, .. } => path.clone(),
            #[cfg(feature = "kafka")]
            ChangeFeedSpec::Kafka { address, .. } => {
                format!("kafka://{}/{}", address.brokers, address.topics.join(","))
            }
        }
    }
}

/// Reads a file of topology changes (see the module documentation); its lines are parsed as they are fed.
pub fn read_changes(path: &Path, input: u32) -> Result<ChangeFeedSpec, TopologyError> {
    let text = std::fs::read(path).map_err(|source| TopologyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let lines = text
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(|b| b.is_ascii_whitespace()))
        .map(|(i, l)| (i, l.to_vec()))
        .collect();
    Ok(ChangeFeedSpec::File {
        path: path.display().to_string(),
        input,
        lines: Arc::new(lines),
    })
}

/// One topology change: where a customer is placed from its `ts` on, or that it is taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Place(Placement),
    Remove(CustomerId),
}

/// A parsed change line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeLine {
    /// Unix seconds: the change holds from the epoch of this event time on.
    pub ts: i64,
    pub change: Change,
}

/// A change line that could not be used: why, and its event time when that much could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedChange {
    pub ts: Option<i64>,
    pub reason: String,
}

/// Parses one change line (see the module documentation). Unknown fields are refused (a misspelt
/// `"elemnt"` must not silently become a removal or a placement without it).
pub fn parse_change(line: &[u8]) -> Result<ChangeLine, RefusedChange> {
    let refuse = |ts: Option<i64>, reason: String| RefusedChange { ts, reason };
    let v: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| refuse(None, format!("a topology change is a JSON object: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(refuse(None, "a topology change is a JSON object".into()));
    };
    let ts = match o.get("ts") {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => crate::timefmt::parse_rfc3339(s.as_bytes()),
        _ => None,
    }
    .ok_or_else(|| {
        refuse(
            None,
            "ts (Unix seconds or an RFC 3339 string) is missing or invalid".into(),
        )
    })?;
    if let Some(k) = o.keys().find(|k| {
        !matches!(
            k.as_str(),
            "ts" | "customer" | "element" | "region" | "remove"
        )
    }) {
        return Err(refuse(Some(ts), format!("unknown field {k:?}")));
    }
    let id = |what: &str| -> Result<Option<CustomerId>, RefusedChange> {
        match o.get(what) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => {
                CustomerId::parse(s.as_bytes(), b"").map(Some).map_err(|e| {
                    refuse(
                        Some(ts),
                        format!(
                            "{what} {s:?}: {}",
                            e.to_string().replacen("customer id", "id", 1)
                        ),
                    )
                })
            }
            Some(_) => Err(refuse(Some(ts), format!("{what} must be a string"))),
        }
    };
    let customer = id("customer")?.ok_or_else(|| refuse(Some(ts), "customer is missing".into()))?;
    let element = id("element")?;
    let region = id("region")?;
    let remove = match o.get("remove") {
        None | Some(serde_json::Value::Bool(false)) => false,
        Some(serde_json::Value::Bool(true)) => true,
        Some(_) => return Err(refuse(Some(ts), "remove must be true or false".into())),
    };
    let change = match (remove, element, region) {
        (true, None, None) => Change::Remove(customer),
        (true, _, _) => {
            return Err(refuse(
                Some(ts),
                "a removal names no element or region".into(),
            ));
        }
        (false, Some(element), Some(region)) => Change::Place(Placement {
            customer,
            element,
            region,
        }),
        (false, _, _) => {
            return Err(refuse(
                Some(ts),
                "a placement names both element and region (or \"remove\":true takes the customer out)"
                    .into(),
            ));
        }
    };
    Ok(ChangeLine { ts, change })
}

/// The current placement of every customer, as the changes leave it (the topology collection, folded).
/// Compact: a customer holds the index of its (element, region) pair, ~30 bytes a customer with the map's
/// slack (2 M customers: ~120 MB, on worker 0 only, only with `--topology-changes`).
#[derive(Debug, Default)]
pub struct Placements {
    at: HashMap<CustomerId, u32>,
    places: Vec<(ElementId, ElementId)>,
    index: HashMap<(ElementId, ElementId), u32>,
}

impl Placements {
    pub fn new(initial: &[Placement]) -> Placements {
        let mut p = Placements::default();
        p.at.reserve(initial.len());
        for x in initial {
            let i = p.place_index(x.element, x.region);
            p.at.insert(x.customer, i);
        }
        p
    }

    fn place_index(&mut self, element: ElementId, region: ElementId) -> u32 {
        *self.index.entry((element, region)).or_insert_with(|| {
            self.places.push((element, region));
            self.places.len() as u32 - 1
        })
    }

    /// How many customers are placed.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Applies a change; its differences of the topology collection are appended to `out` (a move: the
    /// old placement retracted, the new one added; placing a customer where it is already: none).
    /// Removing a customer that is not placed is refused.
    pub fn apply(
        &mut self,
        change: Change,
        out: &mut Vec<(Placement, isize)>,
    ) -> Result<(), String> {
        let placement = |places: &[(ElementId, ElementId)], customer: CustomerId, i: u32| {
            let (element, region) = places[i as usize];
            Placement {
                customer,
                element,
                region,
            }
        };
        match change {
            Change::Place(p) => {
                let i = self.place_index(p.element, p.region);
                match self.at.insert(p.customer, i) {
                    Some(old) if old == i => {}
                    Some(old) => {
                        out.push((placement(&self.places, p.customer, old), -1));
                        out.push((p, 1));
                    }
                    None => out.push((p, 1)),
                }
            }
            Change::Remove(customer) => match self.at.remove(&customer) {
                Some(old) => out.push((placement(&self.places, customer, old), -1)),
                None => {
                    return Err(format!(
                        "customer {customer} is not placed: nothing to remove"
                    ));
                }
            },
        }
        Ok(())
    }
}

/// Reads a topology file; refused rows become dead letters of input number `input`.
pub fn read_topology(path: &Path, input: u32) -> Result<Topology, TopologyError> {
    let text = std::fs::read(path).map_err(|source| TopologyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut t = parse_topology(&text, input);
    t.path = path.display().to_string();
    Ok(t)
}

/// Parses topology CSV (see the module documentation).
pub fn parse_topology(text: &[u8], input: u32) -> Topology {
    let mut out = Topology::default();
    let mut first_line: HashMap<CustomerId, u64> = HashMap::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if i == 0 && line.starts_with(b"customer,") {
            continue; // the header
        }
        match parse_row(line) {
            Ok(p) => match first_line.get(&p.customer) {
                Some(first) => out.dead.push(DeadLetter::new(
                    input,
                    line_no,
                    line,
                    Rejection::new(
                        RejectCode::Topology,
                        format!(
                            "customer {} is already placed by line {first}; the first placement stands",
                            p.customer
                        ),
                    ),
                )),
                None => {
                    first_line.insert(p.customer, line_no);
                    out.placements.push(p);
                }
            },
            Err(reason) => out.dead.push(DeadLetter::new(
                input,
                line_no,
                line,
                Rejection::new(RejectCode::Topology, reason),
            )),
        }
    }
    out.placements.sort_unstable();
    out
}

/// One row: `customer,element,region` (surrounding spaces allowed).
fn parse_row(line: &[u8]) -> Result<Placement, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b',').map(|f| f.trim_ascii()).collect();
    if fields.len() != 3 {
        return Err(format!(
            "a topology row has 3 columns (customer,element,region), this one {}",
            fields.len()
        ));
    }
    let id = |what: &str, f: &[u8]| {
        CustomerId::parse(f, b"").map_err(|e| {
            format!(
                "{what} {:?}: {}",
                String::from_utf8_lossy(f),
                e.to_string().replacen("customer id", "id", 1)
            )
        })
    };
    Ok(Placement {
        customer: id("customer", fields[0])?,
        element: id("element", fields[1])?,
        region: id("region", fields[2])?,
    })
}

/// A worker's view of the topology inside the series model: its customers' elements (from the topology
/// collection's differences, exchanged by customer like the logs), walked in customer order beside the
/// state, and the per-element sums of one epoch. Compact: 32 bytes per placed customer.
#[derive(Debug, Default)]
pub struct Membership {
    /// (customer, element index), sorted by customer: the collection as accumulated so far.
    placed: Vec<(CustomerId, u32)>,
    /// Differences not yet merged into `placed` (customer, element index, difference).
    pending: Vec<(CustomerId, u32, isize)>,
    /// Element index → (element, region); indexes are this worker's own (partials carry the ids).
    elements: Vec<(ElementId, ElementId)>,
    index: HashMap<(ElementId, ElementId), u32>,
    /// This epoch's sums, per element index.
    acc: Vec<ElementPartial>,
    features: usize,
    /// Where the epoch's walk is in `placed`.
    at: usize,
}

impl Membership {
    pub fn new(features: usize) -> Self {
        Membership {
            features,
            ..Default::default()
        }
    }

    /// Applies a difference of the topology collection (merged at the next [`Membership::begin`]).
    pub fn apply(&mut self, p: Placement, diff: isize) {
        let i = self.element_index(p.element, p.region);
        self.pending.push((p.customer, i, diff));
    }

    /// Starts an epoch's walk.
    pub fn begin(&mut self) {
        if !self.pending.is_empty() {
            let mut all: Vec<(CustomerId, u32, isize)> = self
                .placed
                .drain(..)
                .map(|(c, i)| (c, i, 1))
                .chain(self.pending.drain(..))
                .collect();
            all.sort_unstable_by_key(|a| (a.0, a.1));
            let mut merged: Vec<(CustomerId, u32, isize)> = Vec::with_capacity(all.len());
            for (c, i, d) in all {
                match merged.last_mut() {
                    Some(last) if last.0 == c && last.1 == i => last.2 += d,
                    _ => merged.push((c, i, d)),
                }
            }
            // Two current placements of one customer (a move whose retraction has not arrived): the first
            // in order stands for this epoch.
            let mut last: Option<CustomerId> = None;
            for (c, i, d) in merged {
                if d > 0 && last != Some(c) {
                    self.placed.push((c, i));
                    last = Some(c);
                }
            }
            self.placed.shrink_to_fit();
            self.pending = Vec::new();
        }
        self.at = 0;
    }

    fn element_index(&mut self, element: ElementId, region: ElementId) -> u32 {
        if let Some(&i) = self.index.get(&(element, region)) {
            return i;
        }
        let i = self.elements.len() as u32;
        self.elements.push((element, region));
        self.index.insert((element, region), i);
        self.acc
            .push(ElementPartial::new(element, region, self.features));
        i
    }

    /// The element of `customer`, visited in increasing customer order; members passed over on the way
    /// (placed, but without state or logs) are counted as members.
    #[inline]
    pub fn visit(&mut self, customer: CustomerId) -> Option<u32> {
        while let Some(&(c, i)) = self.placed.get(self.at) {
            if c > customer {
                return None;
            }
            self.at += 1;
            self.acc[i as usize].members += 1;
            if c == customer {
                return Some(i);
            }
        }
        None
    }

    /// The epoch's sums for element `i`.
    #[inline]
    pub fn partial(&mut self, i: u32) -> &mut ElementPartial {
        &mut self.acc[i as usize]
    }

    /// Ends the walk: the members not visited are counted, and every element with members here leaves
    /// with its sums (which start again from zero).
    pub fn finish(&mut self) -> Vec<ElementPartial> {
        while let Some(&(_, i)) = self.placed.get(self.at) {
            self.at += 1;
            self.acc[i as usize].members += 1;
        }
        let mut out = Vec::new();
        for a in &mut self.acc {
            if a.members > 0 {
                let fresh = ElementPartial::new(a.element, a.region, self.features);
                out.push(std::mem::replace(a, fresh));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> CustomerId {
        CustomerId::parse(s.as_bytes(), b"").unwrap()
    }

    #[test]
    fn rows_are_read_and_bad_ones_dead_lettered_with_their_reason() {
        let text = b"customer,element,region\n\
                     c2,elem-1,r1\n\
                     c1 , elem-1 ,r1\r\n\
                     \n\
                     c3,elem-2\n\
                     c4,elem 2,r1\n\
                     c2,elem-9,r9\n\
                     c5,elem-2,r1,extra\n\
                     c6,elem-2,r2\n";
        let t = parse_topology(text, 7);
        let placed: Vec<(String, String, String)> = t
            .placements
            .iter()
            .map(|p| {
                (
                    p.customer.to_string(),
                    p.element.to_string(),
                    p.region.to_string(),
                )
            })
            .collect();
        assert_eq!(
            placed,
            vec![
                ("c1".into(), "elem-1".into(), "r1".into()),
                ("c2".into(), "elem-1".into(), "r1".into()),
                ("c6".into(), "elem-2".into(), "r2".into()),
            ]
        );
        let dead: Vec<(u64, &str)> = t.dead.iter().map(|d| (d.line, d.detail.as_str())).collect();
        assert_eq!(dead.len(), 4, "{dead:?}");
        assert!(
            t.dead
                .iter()
                .all(|d| d.code == RejectCode::Topology && d.input == 7)
        );
        assert_eq!(dead[0].0, 5);
        assert!(dead[0].1.contains("3 columns"), "{}", dead[0].1);
        assert_eq!(dead[1].0, 6);
        assert!(dead[1].1.contains("element \"elem 2\""), "{}", dead[1].1);
        assert_eq!(dead[2].0, 7);
        assert!(
            dead[2].1.contains("already placed by line 2"),
            "{}",
            dead[2].1
        );
        assert_eq!(dead[3].0, 8);
        assert_eq!(t.dead[3].raw, "c5,elem-2,r1,extra");
    }

    fn placed(c: &str, e: &str, r: &str) -> Placement {
        Placement {
            customer: id(c),
            element: id(e),
            region: id(r),
        }
    }

    #[test]
    fn change_lines_are_placements_or_removals_and_bad_ones_say_why() {
        assert_eq!(
            parse_change(
                br#"{"ts":1700000000,"customer":"c1","element":"olt-7","region":"north"}"#
            ),
            Ok(ChangeLine {
                ts: 1_700_000_000,
                change: Change::Place(placed("c1", "olt-7", "north")),
            })
        );
        assert_eq!(
            parse_change(br#"{"ts":"2023-11-14T22:13:20Z","customer":"c1","remove":true}"#),
            Ok(ChangeLine {
                ts: 1_700_000_000,
                change: Change::Remove(id("c1")),
            })
        );
        let why = |line: &[u8]| parse_change(line).unwrap_err();
        assert!(why(b"not json").reason.contains("JSON object"));
        assert!(why(b"[1,2]").reason.contains("JSON object"));
        assert_eq!(why(br#"{"customer":"c1","remove":true}"#).ts, None);
        assert!(
            why(br#"{"ts":"yesterday","customer":"c1"}"#)
                .reason
                .contains("ts")
        );
        let e = why(br#"{"ts":5,"customer":"c1","elemnt":"x","region":"r"}"#);
        assert_eq!(e.ts, Some(5));
        assert!(
            e.reason.contains("unknown field \"elemnt\""),
            "{}",
            e.reason
        );
        assert!(
            why(br#"{"ts":5,"customer":"c1","element":"x"}"#)
                .reason
                .contains("both element and region")
        );
        assert!(
            why(br#"{"ts":5,"customer":"c1","element":"x","region":"r","remove":true}"#)
                .reason
                .contains("removal names no element")
        );
        assert!(
            why(br#"{"ts":5,"customer":"c 1","remove":true}"#)
                .reason
                .contains("customer \"c 1\"")
        );
        assert!(
            why(br#"{"ts":5,"element":"x","region":"r"}"#)
                .reason
                .contains("customer is missing")
        );
        assert!(
            why(br#"{"ts":5,"customer":7,"remove":true}"#)
                .reason
                .contains("must be a string")
        );
        assert!(
            why(br#"{"ts":5,"customer":"c1","remove":"yes"}"#)
                .reason
                .contains("true or false")
        );
    }

    #[test]
    fn placements_turn_changes_into_collection_differences() {
        let mut p = Placements::new(&[placed("c1", "e1", "r1"), placed("c2", "e1", "r1")]);
        let mut out = Vec::new();
        // A move retracts the old placement and adds the new one.
        p.apply(Change::Place(placed("c1", "e2", "r1")), &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![
                (placed("c1", "e1", "r1"), -1),
                (placed("c1", "e2", "r1"), 1)
            ]
        );
        // Placing where it already is: nothing. A new customer (or a new element): added.
        out.clear();
        p.apply(Change::Place(placed("c1", "e2", "r1")), &mut out)
            .unwrap();
        p.apply(Change::Place(placed("c3", "e9", "r2")), &mut out)
            .unwrap();
        assert_eq!(out, vec![(placed("c3", "e9", "r2"), 1)]);
        // The same element in another region is another placement.
        out.clear();
        p.apply(Change::Place(placed("c3", "e9", "r3")), &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![
                (placed("c3", "e9", "r2"), -1),
                (placed("c3", "e9", "r3"), 1)
            ]
        );
        // Removal: retracted; twice: refused, nothing changes.
        out.clear();
        p.apply(Change::Remove(id("c2")), &mut out).unwrap();
        assert_eq!(out, vec![(placed("c2", "e1", "r1"), -1)]);
        out.clear();
        let e = p.apply(Change::Remove(id("c2")), &mut out).unwrap_err();
        assert!(e.contains("c2 is not placed"), "{e}");
        assert!(out.is_empty());
        assert_eq!(p.len(), 2);
    }

    proptest! {
        /// Any bytes: no panic, and every non-blank line is either placed or dead-lettered exactly once.
        #[test]
        fn any_text_is_placed_or_dead_lettered(text in proptest::collection::vec(any::<u8>(), 0..400)) {
            let t = parse_topology(&text, 0);
            let lines = text
                .split(|&b| b == b'\n')
                .enumerate()
                .filter(|(i, l)| {
                    let l = l.strip_suffix(b"\r").unwrap_or(l);
                    let blank = l.iter().all(|b| b.is_ascii_whitespace());
                    let header = *i == 0 && l.starts_with(b"customer,");
                    !blank && !header
                })
                .count();
            prop_assert_eq!(t.placements.len() + t.dead.len(), lines);
        }

        /// Any bytes as a change line: no panic; a refusal says why.
        #[test]
        fn any_change_line_is_parsed_or_refused(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Err(r) = parse_change(&line) {
                prop_assert!(!r.reason.is_empty());
            }
        }

        /// Whatever changes arrive, the differences emitted so far sum to exactly the current placements
        /// (each placed customer once, at its place): what the dataflow's collection then holds.
        #[test]
        fn the_differences_always_sum_to_the_current_placements(
            ops in proptest::collection::vec((0u8..6, 0u8..4, 0u8..3, any::<bool>()), 0..60)
        ) {
            let mut p = Placements::default();
            let mut sum: std::collections::BTreeMap<Placement, isize> = Default::default();
            let mut want: std::collections::BTreeMap<CustomerId, Placement> = Default::default();
            for (c, e, r, remove) in ops {
                let c = format!("c{c}");
                let change = if remove {
                    Change::Remove(id(&c))
                } else {
                    Change::Place(placed(&c, &format!("e{e}"), &format!("r{r}")))
                };
                let mut out = Vec::new();
                let ok = p.apply(change, &mut out).is_ok();
                match change {
                    Change::Place(pl) => { want.insert(pl.customer, pl); prop_assert!(ok); }
                    Change::Remove(cu) => { prop_assert_eq!(ok, want.remove(&cu).is_some()); }
                }
                for (pl, d) in out {
                    *sum.entry(pl).or_default() += d;
                }
                sum.retain(|_, d| *d != 0);
                let now: std::collections::BTreeMap<Placement, isize> = want.values().map(|pl| (*pl, 1)).collect();
                prop_assert_eq!(&sum, &now);
                prop_assert_eq!(p.len(), want.len());
            }
        }

        /// Valid rows round-trip, in customer order, whatever order they came in.
        #[test]
        fn valid_rows_round_trip(rows in proptest::collection::btree_map("[a-z][a-z0-9]{0,8}", ("[a-z][a-z0-9-]{0,10}", "[a-z][0-9]{0,3}"), 0..30)) {
            let mut text = String::from("customer,element,region\n");
            for (c, (e, r)) in rows.iter().rev() {
                text.push_str(&format!("{c},{e},{r}\n"));
            }
            let t = parse_topology(text.as_bytes(), 0);
            prop_assert!(t.dead.is_empty());
            let want: Vec<Placement> = rows
                .iter()
                .map(|(c, (e, r))| Placement { customer: id(c), element: id(e), region: id(r) })
                .collect();
            prop_assert_eq!(t.placements, want);
        }
    }
}
