//! `fleetwatch eval --alerts OUT --element-labels element_labels.jsonl --topology topology.csv`: a run's
//! network-element incidents scored against the generator's element-level faults.
//!
//! * A fault (element, kind, [start, end)) is **found** when the run raised an incident on its element at an
//!   epoch inside it; its delay is that raise's epoch minus the fault's first epoch.
//! * An incident raise on an element with no fault at that epoch is **false**; per 1,000 element-days over
//!   the run's epochs and the topology's elements.
//! * **Member raises per fault**: the feature- and customer-level raises written for the faulted element's
//!   members during the fault — what an operator reads for one fault (the grouped mode's reduction is the
//!   ratio of this figure without and with `--group-incidents`).
//! * An element fault is also found by an incident raised on its *region* inside it (a region incident
//!   stands for its elements': with `--group-incidents` theirs are not written).
//! * With `--region-labels` (region_labels.jsonl), region faults the same way: found when a region-level
//!   incident was raised on the region inside it, or an open one updated there (a fault right after
//!   another, of another kind, moves the open incident to its kind); a region-level raise on a region with no region fault then
//!   is false (per 1,000 region-days); the lines per region fault are every member raise, element incident
//!   raise and region incident raise of the region during it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::{EvalError, median};

/// One element-level fault, as the generator writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ElementLabel {
    pub element: String,
    #[serde(default)]
    pub region: String,
    pub kind: String,
    pub start: i64,
    pub end: i64,
}

/// One region-level fault, as the generator writes it (region_labels.jsonl).
#[derive(Debug, Clone, Deserialize)]
pub struct RegionLabel {
    pub region: String,
    pub kind: String,
    pub start: i64,
    pub end: i64,
}

/// The region-level scores of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RegionReport {
    pub faults: u64,
    pub found: u64,
    pub recall: f64,
    pub median_delay_epochs: Option<f64>,
    pub incidents_raised: u64,
    pub true_incidents: u64,
    pub false_incidents: u64,
    pub regions: u64,
    pub region_days: f64,
    pub false_incidents_per_1000_region_days: f64,
    /// Region incident raises per region fault found.
    pub incidents_per_found_fault: f64,
    /// Member raises, element incident raises and region incident raises in the region during a region
    /// fault, per fault: what an operator reads for one (grouped, one line).
    pub lines_per_fault: f64,
}

/// Per-kind figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FaultKindReport {
    pub faults: u64,
    pub found: u64,
    pub recall: f64,
    pub median_delay_epochs: Option<f64>,
    /// Feature- and customer-level raises written for the members during the faults, per fault.
    pub member_raises_per_fault: f64,
    /// What an operator reads per fault: those raises plus the incident raises on the element during it.
    pub raises_per_fault: f64,
}

/// The incident scores of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IncidentReport {
    pub faults: u64,
    pub found: u64,
    pub recall: f64,
    pub incidents_raised: u64,
    pub true_incidents: u64,
    pub false_incidents: u64,
    pub precision: f64,
    pub median_delay_epochs: Option<f64>,
    pub elements: u64,
    pub element_days: f64,
    pub false_incidents_per_1000_element_days: f64,
    /// Incident raises per fault found (1 is one incident per fault).
    pub incidents_per_found_fault: f64,
    /// Feature- and customer-level raises written for a fault's members during it, per fault.
    pub member_raises_per_fault: f64,
    /// Those plus the incident raises on the faulted element during it, per fault: the lines an operator
    /// reads for one fault (with and without `--group-incidents`, the grouped mode's reduction).
    pub raises_per_fault: f64,
    pub by_kind: BTreeMap<String, FaultKindReport>,
    /// Element faults found only through their region's incident (counted in `found`).
    pub found_by_region: u64,
    /// With region labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<RegionReport>,
}

fn io(path: &Path, e: std::io::Error) -> EvalError {
    EvalError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Reads `element_labels.jsonl`.
pub fn read_element_labels(path: &Path) -> Result<Vec<ElementLabel>, EvalError> {
    read_jsonl(path)
}

/// Reads `region_labels.jsonl`.
pub fn read_region_labels(path: &Path) -> Result<Vec<RegionLabel>, EvalError> {
    read_jsonl(path)
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: T = serde_json::from_str(line).map_err(|e| EvalError::Parse {
            path: path.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(l);
    }
    Ok(out)
}

/// `n / d`, 0 when there is nothing to divide by.
fn ratio(n: u64, d: u64) -> f64 {
    if d > 0 { n as f64 / d as f64 } else { 0.0 }
}

/// `n` per 1,000 of `days`, 0 over no days.
fn per_1000_days(n: u64, days: f64) -> f64 {
    if days > 0.0 {
        n as f64 * 1000.0 / days
    } else {
        0.0
    }
}

/// Scores a run's output (`alerts`) against element faults (and region faults, when given), with the
/// topology (customer → element → region).
pub fn evaluate_incidents(
    labels: &[ElementLabel],
    region_labels: Option<&[RegionLabel]>,
    alerts: &Path,
    topology: &Path,
) -> Result<IncidentReport, EvalError> {
    let topo = crate::topology::read_topology(topology, 0).map_err(|e| EvalError::Io {
        path: topology.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let element_of: HashMap<String, String> = topo
        .placements
        .iter()
        .map(|p| (p.customer.to_string(), p.element.to_string()))
        .collect();
    let region_of_element: HashMap<String, String> = topo
        .placements
        .iter()
        .map(|p| (p.element.to_string(), p.region.to_string()))
        .collect();
    let region_of_customer: HashMap<String, String> = topo
        .placements
        .iter()
        .map(|p| (p.customer.to_string(), p.region.to_string()))
        .collect();
    let mut elements: Vec<&str> = element_of.values().map(|s| s.as_str()).collect();
    elements.sort_unstable();
    elements.dedup();
    let mut regions: Vec<&str> = region_of_element.values().map(|s| s.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();

    let text = std::fs::read_to_string(alerts).map_err(|e| io(alerts, e))?;
    // (element, epoch) of incident raises; (element, epoch) of member raises; the run's epochs.
    let mut incidents: Vec<(String, u64)> = Vec::new();
    let mut member_raises: Vec<(String, u64)> = Vec::new();
    // (region, epoch) of region incident raises; of member raises and element incident raises by region.
    let mut region_incidents: Vec<(String, u64)> = Vec::new();
    let mut region_lines: Vec<(String, u64)> = Vec::new();
    let mut region_updates: Vec<(String, u64)> = Vec::new();
    let mut epochs = 0u64;
    let mut epoch_len = 0i64;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| EvalError::Parse {
            path: alerts.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let epoch = v.get("epoch").and_then(|x| x.as_u64());
        match s("type") {
            Some("incident") if s("level") == Some("region") => {
                if let (Some(r), Some(e)) = (s("region"), epoch) {
                    match s("status") {
                        Some("raised") => region_incidents.push((r.to_string(), e)),
                        Some("updated") => region_updates.push((r.to_string(), e)),
                        _ => {}
                    }
                }
            }
            Some("incident") if s("status") == Some("raised") => {
                if let (Some(el), Some(e)) = (s("element"), epoch) {
                    incidents.push((el.to_string(), e));
                    if let Some(r) = region_of_element.get(el) {
                        region_lines.push((r.clone(), e));
                    }
                }
            }
            Some("change") if s("status") == Some("raised") => {
                if let (Some(c), Some(e)) = (s("customer"), epoch)
                    && let Some(el) = element_of.get(c)
                {
                    member_raises.push((el.clone(), e));
                    if let Some(r) = region_of_customer.get(c) {
                        region_lines.push((r.clone(), e));
                    }
                }
            }
            Some("summary") => {
                epochs += 1;
                if epoch_len == 0
                    && let (Some(e), Some(st)) = (
                        epoch,
                        s("epoch_start").and_then(|t| crate::timefmt::parse_rfc3339(t.as_bytes())),
                    )
                    && e > 0
                {
                    epoch_len = st / e as i64;
                }
            }
            _ => {}
        }
    }
    if epoch_len == 0 {
        return Err(EvalError::Parse {
            path: alerts.display().to_string(),
            line: 0,
            message: "no summary lines: pass a fleetwatch run output".into(),
        });
    }
    let span = |start: i64, end: i64| -> (u64, u64) {
        let s = start.div_euclid(epoch_len).max(0) as u64;
        let e = (end - 1).div_euclid(epoch_len).max(0) as u64;
        (s, e.max(s))
    };
    let window = |l: &ElementLabel| span(l.start, l.end);
    let mut report = IncidentReport {
        faults: labels.len() as u64,
        incidents_raised: incidents.len() as u64,
        elements: elements.len() as u64,
        ..Default::default()
    };
    let mut delays = Vec::new();
    let mut kind_delays: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut members_total = 0u64;
    let mut incident_total = 0u64;
    let mut kind_raises: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in labels {
        let (s, e) = window(l);
        let own = incidents
            .iter()
            .filter(|(el, t)| *el == l.element && *t >= s && *t <= e)
            .map(|(_, t)| *t)
            .min();
        let region = region_of_element
            .get(&l.element)
            .map_or(l.region.as_str(), String::as_str);
        let by_region = region_incidents
            .iter()
            .filter(|(r, t)| r == region && *t >= s && *t <= e)
            .map(|(_, t)| *t)
            .min();
        if own.is_none() && by_region.is_some() {
            report.found_by_region += 1;
        }
        let first = own.into_iter().chain(by_region).min();
        let k = report.by_kind.entry(l.kind.clone()).or_default();
        k.faults += 1;
        if let Some(f) = first {
            report.found += 1;
            k.found += 1;
            delays.push((f - s) as f64);
            kind_delays
                .entry(l.kind.clone())
                .or_default()
                .push((f - s) as f64);
        }
        let m = member_raises
            .iter()
            .filter(|(el, t)| *el == l.element && *t >= s && *t <= e)
            .count() as u64;
        let i = incidents
            .iter()
            .filter(|(el, t)| *el == l.element && *t >= s && *t <= e)
            .count() as u64;
        members_total += m;
        incident_total += i;
        let kr = kind_raises.entry(l.kind.clone()).or_default();
        kr.0 += m;
        kr.1 += i;
    }
    for (el, t) in &incidents {
        let matched = labels.iter().any(|l| {
            let (s, e) = window(l);
            l.element == *el && *t >= s && *t <= e
        });
        if matched {
            report.true_incidents += 1;
        } else {
            report.false_incidents += 1;
        }
    }
    for (kind, k) in report.by_kind.iter_mut() {
        k.recall = ratio(k.found, k.faults);
        k.median_delay_epochs = median(kind_delays.remove(kind).unwrap_or_default());
        let (m, i) = kind_raises.get(kind).copied().unwrap_or_default();
        k.member_raises_per_fault = ratio(m, k.faults);
        k.raises_per_fault = ratio(m + i, k.faults);
    }
    report.recall = ratio(report.found, report.faults);
    report.precision = ratio(report.true_incidents, report.incidents_raised);
    report.median_delay_epochs = median(delays);
    // Days of `n` elements or regions over the run.
    let days_of = |n: u64| n as f64 * epochs as f64 * epoch_len as f64 / 86_400.0;
    report.element_days = days_of(report.elements);
    report.false_incidents_per_1000_element_days =
        per_1000_days(report.false_incidents, report.element_days);
    report.incidents_per_found_fault = ratio(report.true_incidents, report.found);
    report.member_raises_per_fault = ratio(members_total, report.faults);
    report.raises_per_fault = ratio(members_total + incident_total, report.faults);
    if let Some(rl) = region_labels {
        let mut r = RegionReport {
            faults: rl.len() as u64,
            incidents_raised: region_incidents.len() as u64,
            regions: regions.len() as u64,
            ..Default::default()
        };
        let mut delays = Vec::new();
        let mut lines = 0u64;
        for l in rl {
            let (s, e) = span(l.start, l.end);
            let inside = |(reg, t): &&(String, u64)| *reg == l.region && *t >= s && *t <= e;
            if let Some(f) = region_incidents
                .iter()
                .chain(&region_updates)
                .filter(inside)
                .map(|(_, t)| *t)
                .min()
            {
                r.found += 1;
                delays.push((f - s) as f64);
            }
            lines += region_lines.iter().filter(inside).count() as u64
                + region_incidents.iter().filter(inside).count() as u64;
        }
        for (reg, t) in &region_incidents {
            let matched = rl.iter().any(|l| {
                let (s, e) = span(l.start, l.end);
                l.region == *reg && *t >= s && *t <= e
            });
            if matched {
                r.true_incidents += 1;
            } else {
                r.false_incidents += 1;
            }
        }
        r.recall = ratio(r.found, r.faults);
        r.median_delay_epochs = median(delays);
        r.region_days = days_of(r.regions);
        r.false_incidents_per_1000_region_days = per_1000_days(r.false_incidents, r.region_days);
        r.incidents_per_found_fault = ratio(r.true_incidents, r.found);
        r.lines_per_fault = ratio(lines, r.faults);
        report.regions = Some(r);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_found_false_incidents_and_member_raises_by_hand() {
        let dir = std::env::temp_dir().join(format!("fw-incidenteval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let topo = dir.join("topology.csv");
        std::fs::write(
            &topo,
            "customer,element,region\nc1,e1,r\nc2,e1,r\nc3,e2,r\n",
        )
        .unwrap();
        let out = dir.join("out.jsonl");
        // Epochs of 300 s; epoch 10 starts at 3000. Fault on e1 over epochs 10..=13 (found at 11, delay 1);
        // fault on e2 over 20..=21 (missed); a false incident on e2 at 12. Member raises: c1 at 12 (inside
        // e1's fault), c2 at 30 (outside), c3 at 20 (inside e2's fault).
        let mut text = String::new();
        for e in 10..32u64 {
            text.push_str(&format!(
                "{{\"type\":\"summary\",\"epoch\":{e},\"epoch_start\":\"{}\"}}\n",
                crate::timefmt::format_rfc3339(e as i64 * 300)
            ));
        }
        text.push_str(
            "{\"type\":\"incident\",\"epoch\":11,\"element\":\"e1\",\"status\":\"raised\"}\n",
        );
        text.push_str(
            "{\"type\":\"incident\",\"epoch\":13,\"element\":\"e1\",\"status\":\"updated\"}\n",
        );
        text.push_str(
            "{\"type\":\"incident\",\"epoch\":12,\"element\":\"e2\",\"status\":\"raised\"}\n",
        );
        text.push_str(
            "{\"type\":\"change\",\"epoch\":12,\"customer\":\"c1\",\"status\":\"raised\"}\n",
        );
        text.push_str(
            "{\"type\":\"change\",\"epoch\":30,\"customer\":\"c2\",\"status\":\"raised\"}\n",
        );
        text.push_str(
            "{\"type\":\"change\",\"epoch\":20,\"customer\":\"c3\",\"status\":\"raised\"}\n",
        );
        std::fs::write(&out, text).unwrap();
        let labels = vec![
            ElementLabel {
                element: "e1".into(),
                region: "r".into(),
                kind: "outage".into(),
                start: 3000,
                end: 4200,
            },
            ElementLabel {
                element: "e2".into(),
                region: "r".into(),
                kind: "congestion".into(),
                start: 6000,
                end: 6600,
            },
        ];
        let r = evaluate_incidents(&labels, None, &out, &topo).unwrap();
        assert_eq!((r.faults, r.found, r.incidents_raised), (2, 1, 2));
        assert_eq!((r.true_incidents, r.false_incidents), (1, 1));
        assert_eq!(r.median_delay_epochs, Some(1.0));
        assert_eq!(r.by_kind["outage"].found, 1);
        assert_eq!(r.by_kind["congestion"].found, 0);
        // 2 elements × 22 epochs × 300 s = 0.152778 element-days; 1 false → 6545.45 per 1,000.
        assert!((r.element_days - 2.0 * 22.0 * 300.0 / 86_400.0).abs() < 1e-9);
        assert!((r.false_incidents_per_1000_element_days - 1000.0 / r.element_days).abs() < 1e-6);
        assert_eq!(r.member_raises_per_fault, 1.0);
        // e1: c1's raise and the incident; e2: c3's raise (its false incident at 12 is before the fault).
        assert_eq!(r.raises_per_fault, 1.5);
        assert_eq!(r.by_kind["outage"].raises_per_fault, 2.0);
        assert_eq!(r.by_kind["congestion"].member_raises_per_fault, 1.0);
        assert!(r.regions.is_none());

        // A region incident on r at 20 (raised) inside a region fault over epochs 20..=25; another at 40
        // with no region fault (false); an update at 50 inside a second region fault over 48..=55 (an
        // incident open from before, moved to its kind: found, delay 2). e2's fault over 20..=21 is now
        // found by its region's incident.
        let mut text = std::fs::read_to_string(&out).unwrap();
        for (e, status) in [(20, "raised"), (40, "raised"), (50, "updated")] {
            text.push_str(&format!(
                "{{\"type\":\"incident\",\"epoch\":{e},\"level\":\"region\",\"region\":\"r\",\"status\":\"{status}\"}}\n"
            ));
        }
        std::fs::write(&out, text).unwrap();
        let regions = vec![
            RegionLabel {
                region: "r".into(),
                kind: "outage".into(),
                start: 6000,
                end: 7800,
            },
            RegionLabel {
                region: "r".into(),
                kind: "congestion".into(),
                start: 14400,
                end: 16800,
            },
        ];
        let r = evaluate_incidents(&labels, Some(&regions), &out, &topo).unwrap();
        assert_eq!((r.found, r.found_by_region), (2, 1));
        let g = r.regions.unwrap();
        assert_eq!((g.faults, g.found, g.incidents_raised), (2, 2, 2));
        assert_eq!((g.true_incidents, g.false_incidents), (1, 1));
        assert_eq!(g.median_delay_epochs, Some(1.0));
        // Lines in r during its faults: c3's raise at 20 and the region raise at 20 (the update is not a
        // raise); 1 region over 22 epochs.
        assert_eq!(g.lines_per_fault, 1.0);
        assert_eq!(g.regions, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
