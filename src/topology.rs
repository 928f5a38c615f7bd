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

use std::collections::HashMap;
use std::path::Path;

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
