//! Sinks: the anomaly-change output and the dead-letter output, as JSON lines.
//!
//! The output is written by one worker (global worker 0: process 0 in a cluster), which receives the few
//! changes, their evidence and the per-epoch counters of every worker. Within an epoch, change lines are sorted
//! by (customer, feature, status) and followed by the epoch's summary line, so the file is byte-identical for
//! any worker and process layout (with `--reproducible`, which leaves out the wall-clock field).
//!
//! ```text
//! {"type":"change","epoch":5666667,"epoch_start":"2023-11-14T22:15:00Z","customer":"cust-0000042","feature":"rssi_dbm","status":"raised","severity":"warning","kind":"spike","score":1.31,"observed":-83.5,"expected":-61.2,"lower":-78.2,"upper":-44.2,"customer_score":1.52,"top_features":[{"feature":"rssi_dbm","score":1.31},{"feature":"snr_db","score":0.87}],"model":"seasonal-robust"}
//! {"type":"summary","epoch":5666667,"epoch_start":"2023-11-14T22:15:00Z","records":2000,"late":0,"dead_lettered":1,"series_scored":39990,"changes":3,"open_anomalies":17,"wall_seconds":0.41}
//! {"type":"end","epochs":288,"records":576000,"late":0,"dead_lettered":3,"dead_lettered_unattributed":0,"changes":912}
//! ```

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::keys::CustomerId;
use crate::model::AnomalyKind;
use crate::model::alert::Transition;
#[cfg(test)]
use crate::model::customer::TopFeature;
use crate::model::customer::{
    CUSTOMER_ALERT, CUSTOMER_FEATURE, Evidence, OpenAnomaly, is_customer_level,
};
use crate::model::incident::{IncidentChange, IncidentKind, RegionChange};
use crate::record::DeadLetter;
use crate::timefmt::format_rfc3339;

/// One output line's worth of change, before formatting.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub customer: CustomerId,
    pub feature: u16,
    pub status: Transition,
    pub anomaly: OpenAnomaly,
    pub evidence: Option<Evidence>,
}

/// Counters of one epoch, summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochSummary {
    pub records: u64,
    pub late: u64,
    pub dead_lettered: u64,
    pub series_scored: u64,
    pub changes: u64,
    pub open_anomalies: i64,
    /// A live source's wall-clock guard closed the epoch before every partition had passed it.
    pub closed_by_guard: bool,
}

/// Writes a number as JSON (`null` for NaN/∞), shortest round-trip form.
pub fn push_num(s: &mut String, v: f32) {
    if v.is_finite() {
        let _ = write!(s, "{v}");
    } else {
        s.push_str("null");
    }
}

/// Writes a JSON string literal.
pub fn push_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// A feature change's size and its reason, for the operator reading it: `deviation` = observed − expected
/// (in the series' units), `band_fraction` = that deviation over the band's half on its side (±1 is the
/// band's edge: the series' own threshold), and `why` in words.
fn explain_feature(out: &mut String, c: &Change, e: &Evidence) {
    let (o, x) = (e.observed, e.expected);
    let deviation = o - x;
    let half = if deviation >= 0.0 {
        e.upper - x
    } else {
        x - e.lower
    };
    let fraction = if half > 0.0 {
        deviation / half
    } else {
        f32::NAN
    };
    if deviation.is_finite() {
        out.push_str(",\"deviation\":");
        push_num(out, deviation);
        out.push_str(",\"band_fraction\":");
        push_num(out, fraction);
    }
    let side = if deviation >= 0.0 { "above" } else { "below" };
    let why = if c.status == Transition::Cleared {
        "back within its own normal for clear_epochs epochs".to_string()
    } else {
        match c.anomaly.kind {
            AnomalyKind::Spike => format!(
                "{} {side} expected {}: {:.2}× the way to its own band's edge, larger than this series' \
                 tail and its recent excursions",
                fmt3(o),
                fmt3(x),
                fraction.abs()
            ),
            AnomalyKind::LevelShift => format!(
                "a sustained shift {side} expected {} (this log {}, {:.2} of the band's half): deviations \
                 adding up beyond this series' own history of them",
                fmt3(x),
                fmt3(o),
                fraction.abs()
            ),
            AnomalyKind::VarianceBurst => format!(
                "its values scatter more than this series' own history allows (this log {}, expected {})",
                fmt3(o),
                fmt3(x)
            ),
            AnomalyKind::StuckValue => format!(
                "{} repeated longer than any ordinary run of this series",
                fmt3(o)
            ),
            AnomalyKind::OutOfRange => {
                format!("{} is beyond every value this series has shown", fmt3(o))
            }
            AnomalyKind::Dropout => {
                "the feature stopped reporting while the customer reports".to_string()
            }
            AnomalyKind::Silent => "no log from the customer".to_string(),
            AnomalyKind::Relationship => format!(
                "{} {side} what the customer's other features imply for it ({}, the fleet model's \
                 expectation): {:.2}× the way to that band's edge, while inside this series' own band",
                fmt3(o),
                fmt3(x),
                fraction.abs()
            ),
        }
    };
    out.push_str(",\"why\":");
    push_str(out, &why);
}

/// A value with about four significant digits, for sentences.
fn fmt3(v: f32) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.3e}")
    }
}

/// Formats the change lines and summary of one epoch.
#[derive(Clone)]
pub struct OutputFormat {
    pub features: Vec<String>,
    pub model: String,
    pub epoch_len: i64,
    pub reproducible: bool,
}

impl OutputFormat {
    pub fn feature_name(&self, f: u16) -> &str {
        if is_customer_level(f) {
            "*"
        } else {
            self.features
                .get(f as usize)
                .map(|s| s.as_str())
                .unwrap_or("?")
        }
    }

    pub fn change_line(&self, epoch: u64, c: &Change, out: &mut String) {
        self.change_line_in(epoch, c, None, out);
    }

    /// A change line; `incident` names the network element whose open incident the change happened under
    /// (`run --topology`).
    pub fn change_line_in(
        &self,
        epoch: u64,
        c: &Change,
        incident: Option<crate::topology::ElementId>,
        out: &mut String,
    ) {
        out.push_str("{\"type\":\"change\",\"epoch\":");
        let _ = write!(out, "{epoch}");
        out.push_str(",\"epoch_start\":\"");
        out.push_str(&format_rfc3339(epoch as i64 * self.epoch_len));
        out.push_str("\",\"customer\":");
        push_str(out, c.customer.as_str());
        out.push_str(",\"feature\":");
        push_str(out, self.feature_name(c.feature));
        out.push_str(if is_customer_level(c.feature) {
            ",\"level\":\"customer\""
        } else {
            ",\"level\":\"feature\""
        });
        out.push_str(",\"status\":\"");
        out.push_str(c.status.as_str());
        out.push_str("\",\"severity\":\"");
        out.push_str(c.anomaly.severity.as_str());
        out.push_str("\",\"kind\":\"");
        out.push_str(c.anomaly.kind.as_str());
        out.push('"');
        let ev = c.evidence;
        for (name, v) in [
            ("score", ev.map(|e| e.score)),
            ("observed", ev.map(|e| e.observed)),
            ("expected", ev.map(|e| e.expected)),
            ("lower", ev.map(|e| e.lower)),
            ("upper", ev.map(|e| e.upper)),
        ] {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            push_num(out, v.unwrap_or(f32::NAN));
        }
        if let Some(e) = ev.filter(|_| !is_customer_level(c.feature)) {
            explain_feature(out, c, &e);
        }
        if let Some(e) = ev.filter(|_| c.feature == CUSTOMER_ALERT) {
            self.explain_customer(out, c, &e);
        }
        if let Some(e) = ev.filter(|_| c.feature == CUSTOMER_FEATURE) {
            out.push_str(",\"why\":");
            push_str(
                out,
                &if c.status == Transition::Cleared {
                    "the customer reports again".to_string()
                } else {
                    format!("no log from the customer for {:.0} epochs", e.observed)
                },
            );
        }
        if let Some(e) = ev.filter(|_| c.feature != CUSTOMER_FEATURE) {
            out.push_str(",\"customer_score\":");
            push_num(out, e.customer_score);
            out.push_str(",\"top_features\":[");
            let mut first = true;
            for t in e.top.iter().filter(|t| t.feature != CUSTOMER_FEATURE) {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str("{\"feature\":");
                push_str(out, self.feature_name(t.feature));
                out.push_str(",\"score\":");
                push_num(out, t.score);
                out.push('}');
            }
            out.push(']');
        }
        out.push_str(",\"model\":");
        push_str(
            out,
            match c.feature {
                CUSTOMER_FEATURE => "silence",
                CUSTOMER_ALERT => "customer",
                _ => &self.model,
            },
        );
        if let Some(el) = incident {
            out.push_str(",\"incident\":");
            push_str(out, el.as_str());
        }
        out.push_str("}\n");
    }

    /// The start of an incident line: its type, epoch and level.
    fn incident_opening(&self, epoch: u64, level: &str, out: &mut String) {
        out.push_str("{\"type\":\"incident\",\"epoch\":");
        let _ = write!(out, "{epoch}");
        out.push_str(",\"epoch_start\":\"");
        out.push_str(&format_rfc3339(epoch as i64 * self.epoch_len));
        let _ = write!(out, "\",\"level\":\"{level}\"");
    }

    /// An incident line's status, severity, kind, start and score (elements and regions alike).
    fn incident_state(
        &self,
        status: Transition,
        incident: &crate::model::incident::OpenIncident,
        score: f32,
        out: &mut String,
    ) {
        let _ = write!(
            out,
            ",\"status\":\"{}\",\"severity\":\"{}\",\"kind\":\"{}\",\"start\":{},\"start_time\":\"{}\",\"score\":",
            status.as_str(),
            incident.severity.as_str(),
            incident.kind.as_str(),
            incident.start,
            format_rfc3339(incident.start as i64 * self.epoch_len)
        );
        push_num(out, score);
    }

    /// An element's incident change (`"type":"incident"`, `"level":"element"`): the element and its region,
    /// its members affected against its size, what moved, and why that is unusual for this element;
    /// `region_incident` names its region when the region has an incident open (or cleared) at the epoch.
    pub fn incident_line(
        &self,
        epoch: u64,
        i: &IncidentChange,
        region_incident: Option<&crate::topology::ElementId>,
        out: &mut String,
    ) {
        self.incident_opening(epoch, "element", out);
        out.push_str(",\"element\":");
        push_str(out, i.element.as_str());
        out.push_str(",\"region\":");
        push_str(out, i.region.as_str());
        self.incident_state(i.status, &i.incident, i.score, out);
        let affected = match i.incident.kind {
            IncidentKind::Outage => i.missing,
            IncidentKind::Alerts => i.alerting,
            IncidentKind::Congestion => i.active.saturating_sub(i.missing),
        };
        let _ = write!(
            out,
            ",\"members_affected\":{affected},\"members\":{},\"active\":{},\"missing\":{},\"alerting\":{}",
            i.members, i.active, i.missing, i.alerting
        );
        out.push_str(",\"features\":[");
        for (k, m) in i.moved.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str("{\"feature\":");
            push_str(out, self.feature_name(m.feature));
            out.push_str(",\"shift_sigma\":");
            push_num(out, (m.shift * 1000.0).round() / 1000.0);
            out.push_str(",\"evidence\":");
            push_num(out, (m.evidence * 100.0).round() / 100.0);
            out.push('}');
        }
        out.push_str("],\"member_alerts\":[");
        for (k, a) in i.alerts.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str("{\"feature\":");
            push_str(out, self.feature_name(a.feature));
            let _ = write!(
                out,
                ",\"kind\":\"{}\",\"members\":{}}}",
                a.kind.as_str(),
                a.members
            );
        }
        out.push(']');
        if let Some(r) = region_incident {
            out.push_str(",\"region_incident\":");
            push_str(out, r.as_str());
        }
        out.push_str(",\"why\":");
        let why = if i.status == Transition::Cleared {
            "the element's members are back within its own normal".to_string()
        } else {
            match i.incident.kind {
                IncidentKind::Outage => format!(
                    "{} of {} active members stopped reporting at once",
                    i.missing, i.active
                ),
                IncidentKind::Alerts => {
                    format!("{} of {} members alerting at once", i.alerting, i.members)
                }
                IncidentKind::Congestion => match i.moved.first() {
                    Some(m) => format!(
                        "the members' {} moved together by {:.2}σ of their own noise ({:.1} times this element's usual variation)",
                        self.feature_name(m.feature),
                        m.shift,
                        m.evidence.abs()
                    ),
                    None => "the members' features moved together".to_string(),
                },
            }
        };
        push_str(out, &why);
        out.push_str("}\n");
    }

    /// A region's incident change (`"type":"incident"`, `"level":"region"`): its elements affected against
    /// its size, by kind, the features most of them moved on, and why.
    pub fn region_line(&self, epoch: u64, r: &RegionChange, out: &mut String) {
        self.incident_opening(epoch, "region", out);
        out.push_str(",\"region\":");
        push_str(out, r.region.as_str());
        self.incident_state(r.status, &r.incident, r.score, out);
        let _ = write!(
            out,
            ",\"elements_affected\":{},\"elements\":{},\"by_kind\":{{\"outage\":{},\"alerts\":{},\"congestion\":{}}}",
            r.affected, r.elements, r.by_kind[0], r.by_kind[1], r.by_kind[2]
        );
        out.push_str(",\"features\":[");
        for (k, (f, n)) in r.features.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str("{\"feature\":");
            push_str(out, self.feature_name(*f));
            let _ = write!(out, ",\"elements\":{n}}}");
        }
        out.push_str("],\"why\":");
        let why = if r.status == Transition::Cleared {
            "the region's elements are back within their own normal".to_string()
        } else {
            let k = crate::model::incident::kind_index(r.incident.kind);
            format!(
                "{} of {} elements affected at once ({} {})",
                r.affected,
                r.elements,
                r.by_kind[k],
                match r.incident.kind {
                    IncidentKind::Outage => "with members silent",
                    IncidentKind::Alerts => "with members alerting",
                    IncidentKind::Congestion => "congested",
                }
            )
        };
        push_str(out, &why);
        out.push_str("}\n");
    }

    /// A customer alert's `why`: the features behind it (those at least half-way to their own bar).
    fn explain_customer(&self, out: &mut String, c: &Change, e: &Evidence) {
        let names: Vec<&str> = e
            .top
            .iter()
            .filter(|t| !is_customer_level(t.feature) && t.score >= 0.5)
            .map(|t| self.feature_name(t.feature))
            .collect();
        let why = match c.status {
            Transition::Cleared => "its features are back within their own normal".to_string(),
            _ if names.is_empty() => "its features' fused evidence".to_string(),
            _ => format!(
                "{} unusual for this customer: {}",
                if names.len() == 1 {
                    "1 feature"
                } else if names.len() == 2 {
                    "2 features"
                } else {
                    "3 or more features"
                },
                names.join(", ")
            ),
        };
        out.push_str(",\"why\":");
        push_str(out, &why);
    }

    pub fn summary_line(&self, epoch: u64, s: &EpochSummary, wall: f64, out: &mut String) {
        let _ = write!(
            out,
            "{{\"type\":\"summary\",\"epoch\":{epoch},\"epoch_start\":\"{}\",\"records\":{},\"late\":{},\
             \"dead_lettered\":{},\"series_scored\":{},\"changes\":{},\"open_anomalies\":{}",
            format_rfc3339(epoch as i64 * self.epoch_len),
            s.records,
            s.late,
            s.dead_lettered,
            s.series_scored,
            s.changes,
            s.open_anomalies
        );
        if s.closed_by_guard {
            out.push_str(",\"closed_by_guard\":true");
        }
        if !self.reproducible {
            let _ = write!(out, ",\"wall_seconds\":{:.3}", wall);
        }
        out.push_str("}\n");
    }
}

/// Turns one epoch's consolidated differences of the open-anomaly collection into changes: for each
/// (customer, feature), an insertion alone is `raised`, a removal alone `cleared`, both `updated`.
pub fn derive_changes(
    mut diffs: Vec<((CustomerId, OpenAnomaly), isize)>,
    evidence: &[Evidence],
) -> Vec<Change> {
    diffs.sort();
    // consolidate
    let mut consolidated: Vec<((CustomerId, OpenAnomaly), isize)> = Vec::with_capacity(diffs.len());
    for (k, d) in diffs {
        match consolidated.last_mut() {
            Some((lk, ld)) if *lk == k => *ld += d,
            _ => consolidated.push((k, d)),
        }
    }
    consolidated.retain(|(_, d)| *d != 0);
    // group by (customer, feature)
    let mut changes = Vec::new();
    let mut i = 0;
    while i < consolidated.len() {
        let (c, f) = (consolidated[i].0.0, consolidated[i].0.1.feature);
        let mut added = None;
        let mut removed = None;
        while i < consolidated.len() && consolidated[i].0.0 == c && consolidated[i].0.1.feature == f
        {
            let (k, d) = &consolidated[i];
            if *d > 0 {
                added = Some(k.1);
            } else {
                removed = Some(k.1);
            }
            i += 1;
        }
        let (status, anomaly) = match (added, removed) {
            (Some(a), None) => (Transition::Raised, a),
            (None, Some(r)) => (Transition::Cleared, r),
            (Some(a), Some(_)) => (Transition::Updated, a),
            (None, None) => continue,
        };
        let ev = evidence
            .binary_search_by(|e| (e.customer, e.feature).cmp(&(c, f)))
            .ok()
            .map(|j| evidence[j]);
        changes.push(Change {
            customer: c,
            feature: f,
            status,
            anomaly,
            evidence: ev,
        });
    }
    changes
}

/// Formats a dead letter.
pub fn dead_letter_line(d: &DeadLetter, inputs: &[String], out: &mut String) {
    out.push_str("{\"epoch\":");
    match d.epoch {
        Some(e) => {
            let _ = write!(out, "{e}");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"input\":");
    push_str(
        out,
        inputs
            .get(d.input as usize)
            .map(|s| s.as_str())
            .unwrap_or("?"),
    );
    let _ = write!(out, ",\"line\":{}", d.line);
    out.push_str(",\"partition\":");
    match d.partition {
        Some(p) => {
            let _ = write!(out, "{p}");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"offset\":");
    match d.offset {
        Some(o) => {
            let _ = write!(out, "{o}");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"reason\":\"");
    out.push_str(d.code.as_str());
    out.push_str("\",\"detail\":");
    push_str(out, &d.detail);
    out.push_str(",\"raw\":");
    push_str(out, &d.raw);
    out.push_str("}\n");
}

/// What one output line is, for outputs that route lines (a Kafka sink keys changes by customer, sends
/// summaries and the end record apart, and dead letters to their own topic).
#[derive(Debug, Clone, Copy)]
pub enum LineKind<'a> {
    Change(&'a CustomerId),
    Summary(u64),
    End,
    DeadLetter(&'a DeadLetter),
}

/// An output failure.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {target}: {message}")]
pub struct OutputError {
    pub target: String,
    pub message: String,
}

/// Where the sink's lines go: files, or Kafka topics (`kafka::KafkaOutput`).
pub trait Output: Send {
    /// Writes lines: `text` holds them, each ending in a newline, and `kinds[i]` says what line `i` is.
    fn write(&mut self, text: &str, kinds: &[LineKind<'_>]) -> Result<(), OutputError>;
    /// Returns once everything written so far is durable (a broker acknowledged it). The sink calls this
    /// after an epoch's changes and dead letters, before its summary (an epoch's summary is never durable
    /// before its changes), and after each batch of epochs, before it acknowledges them.
    fn barrier(&mut self) -> Result<(), OutputError>;
    /// Flushes and closes.
    fn finish(&mut self) -> Result<(), OutputError>;
    /// Makes everything written so far durable on disk and says where the output stands (files: their
    /// lengths; `None` for outputs a restart finds its place in by itself, like Kafka's last summary).
    fn durable_position(
        &mut self,
    ) -> Result<Option<crate::checkpoint::OutputPosition>, OutputError> {
        self.barrier()?;
        Ok(None)
    }
}

/// The file output: changes, summaries and the end line to one file, dead letters to another (or nowhere).
pub struct FileOutput {
    pub out: LineFile,
    pub dead: Option<LineFile>,
}

impl FileOutput {
    /// Creates (truncates) the files.
    pub fn create(out: &Path, dead: Option<&Path>) -> Result<FileOutput, OutputError> {
        let open = |p: &Path| {
            LineFile::create(p).map_err(|e| OutputError {
                target: p.display().to_string(),
                message: e.to_string(),
            })
        };
        Ok(FileOutput {
            out: open(out)?,
            dead: dead.map(open).transpose()?,
        })
    }

    /// Reopens the files of an interrupted run at a checkpoint's position: anything written after it is
    /// cut off (it is written again, byte for byte).
    pub fn resume(
        out: &Path,
        dead: Option<&Path>,
        at: &crate::checkpoint::OutputPosition,
    ) -> Result<FileOutput, OutputError> {
        let open = |p: &Path, len: u64| {
            LineFile::resume(p, len).map_err(|e| OutputError {
                target: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let dead = match (dead, at.dead_letter_bytes) {
            (Some(p), Some(len)) => Some(open(p, len)?),
            (Some(p), None) => Some(open(p, 0)?),
            (None, _) => None,
        };
        Ok(FileOutput {
            out: open(out, at.output_bytes)?,
            dead,
        })
    }
}

fn file_error(f: &LineFile, e: std::io::Error) -> OutputError {
    OutputError {
        target: f.path().to_string(),
        message: e.to_string(),
    }
}

impl Output for FileOutput {
    fn write(&mut self, text: &str, kinds: &[LineKind<'_>]) -> Result<(), OutputError> {
        let to_dead = matches!(kinds.first(), Some(LineKind::DeadLetter(_)));
        let f = if to_dead {
            match self.dead.as_mut() {
                Some(f) => f,
                None => return Ok(()),
            }
        } else {
            &mut self.out
        };
        f.write(text).map_err(|e| file_error(f, e))
    }

    /// Hands the buffered lines to the operating system, so a live run's file shows every epoch it has
    /// acknowledged (one write per batch of epochs).
    fn barrier(&mut self) -> Result<(), OutputError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), OutputError> {
        self.out.flush().map_err(|e| file_error(&self.out, e))?;
        if let Some(d) = self.dead.as_mut() {
            d.flush().map_err(|e| file_error(d, e))?;
        }
        Ok(())
    }

    fn durable_position(
        &mut self,
    ) -> Result<Option<crate::checkpoint::OutputPosition>, OutputError> {
        self.out.sync().map_err(|e| file_error(&self.out, e))?;
        let dead_letter_bytes = match self.dead.as_mut() {
            Some(d) => {
                d.sync().map_err(|e| file_error(d, e))?;
                Some(d.bytes)
            }
            None => None,
        };
        Ok(Some(crate::checkpoint::OutputPosition {
            output_bytes: self.out.bytes,
            dead_letter_bytes,
        }))
    }
}

/// A buffered file writer that reports the path on error.
pub struct LineFile {
    path: String,
    w: BufWriter<File>,
    /// Bytes in the file (written or buffered).
    bytes: u64,
}

impl LineFile {
    pub fn create(path: &Path) -> std::io::Result<LineFile> {
        Ok(LineFile {
            path: path.display().to_string(),
            w: BufWriter::with_capacity(1 << 20, File::create(path)?),
            bytes: 0,
        })
    }

    /// Opens an existing file cut to its first `len` bytes, for appending. A file shorter than `len` was
    /// replaced or truncated since: refused.
    pub fn resume(path: &Path, len: u64) -> std::io::Result<LineFile> {
        use std::io::Seek;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(len == 0)
            .truncate(false)
            .open(path)?;
        let have = f.metadata()?.len();
        if have < len {
            return Err(std::io::Error::other(format!(
                "holds {have} bytes, fewer than the {len} the checkpoint recorded as written: it was \
                 truncated or replaced, so the run cannot continue it"
            )));
        }
        f.set_len(len)?;
        f.seek(std::io::SeekFrom::Start(len))?;
        Ok(LineFile {
            path: path.display().to_string(),
            w: BufWriter::with_capacity(1 << 20, f),
            bytes: len,
        })
    }

    pub fn write(&mut self, s: &str) -> std::io::Result<()> {
        self.bytes += s.len() as u64;
        self.w.write_all(s.as_bytes())
    }

    /// Flushes and syncs the file to disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.w.flush()?;
        self.w.get_ref().sync_data()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnomalyKind;
    use crate::model::header::Severity;

    fn id(s: &str) -> CustomerId {
        CustomerId::parse(s.as_bytes(), b"").unwrap()
    }

    fn oa(f: u16, s: Severity) -> OpenAnomaly {
        OpenAnomaly {
            feature: f,
            kind: AnomalyKind::Spike,
            severity: s,
        }
    }

    #[test]
    fn statuses_from_collection_differences() {
        let diffs = vec![
            ((id("b"), oa(1, Severity::Warning)), 1),
            ((id("a"), oa(0, Severity::Warning)), -1),
            ((id("a"), oa(0, Severity::Critical)), 1),
            ((id("c"), oa(2, Severity::Warning)), -1),
            ((id("d"), oa(2, Severity::Warning)), 1),
            ((id("d"), oa(2, Severity::Warning)), -1),
        ];
        let ch = derive_changes(diffs, &[]);
        let got: Vec<(&str, Transition)> =
            ch.iter().map(|c| (c.customer.as_str(), c.status)).collect();
        assert_eq!(
            got,
            vec![
                ("a", Transition::Updated),
                ("b", Transition::Raised),
                ("c", Transition::Cleared)
            ]
        );
        assert_eq!(ch[0].anomaly.severity, Severity::Critical);
    }

    #[test]
    fn lines_are_valid_json() {
        let f = OutputFormat {
            features: vec!["rssi_dbm".into()],
            model: "m".into(),
            epoch_len: 300,
            reproducible: true,
        };
        let c = Change {
            customer: id("cust-1"),
            feature: 0,
            status: Transition::Raised,
            anomaly: oa(0, Severity::Warning),
            evidence: Some(Evidence {
                customer: id("cust-1"),
                feature: 0,
                score: 1.5,
                observed: f32::NAN,
                expected: -61.25,
                lower: -70.0,
                upper: -50.0,
                customer_score: 1.7,
                top: [
                    TopFeature {
                        feature: 0,
                        score: 1.5,
                    },
                    TopFeature {
                        feature: 0,
                        score: 0.8,
                    },
                    TopFeature::NONE,
                ],
            }),
        };
        let mut s = String::new();
        f.change_line(5_666_667, &c, &mut s);
        f.summary_line(5_666_667, &EpochSummary::default(), 0.5, &mut s);
        for line in s.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v.get("type").is_some());
        }
        assert!(s.contains("\"observed\":null"));
        assert!(!s.contains("wall_seconds"));
        let mut d = String::new();
        let mut dl = DeadLetter::new(
            0,
            3,
            b"{\"bad\x01",
            crate::record::Rejection::new(crate::record::RejectCode::Malformed, "x"),
        );
        dl.epoch = Some(1);
        dead_letter_line(&dl, &["in.jsonl".into()], &mut d);
        let v: serde_json::Value = serde_json::from_str(d.trim()).unwrap();
        assert_eq!(v["reason"], "malformed");
    }

    #[test]
    fn changes_carry_their_size_level_and_reason() {
        let f = OutputFormat {
            features: vec!["wan_latency_ms".into()],
            model: "m".into(),
            epoch_len: 300,
            reproducible: true,
        };
        let ev = |feature: u16, observed: f32| Evidence {
            customer: id("cust-1"),
            feature,
            score: 1.2,
            observed,
            expected: 20.0,
            lower: 12.0,
            upper: 40.0,
            customer_score: 1.2,
            top: [
                TopFeature {
                    feature: 0,
                    score: 1.2,
                },
                TopFeature::NONE,
                TopFeature::NONE,
            ],
        };
        let line = |feature: u16, kind: AnomalyKind, observed: f32| {
            let c = Change {
                customer: id("cust-1"),
                feature,
                status: Transition::Raised,
                anomaly: OpenAnomaly {
                    feature,
                    kind,
                    severity: Severity::Warning,
                },
                evidence: Some(ev(feature, observed)),
            };
            let mut s = String::new();
            f.change_line(5_666_667, &c, &mut s);
            serde_json::from_str::<serde_json::Value>(&s).unwrap()
        };
        // 25 against expected 20, band [12, 40]: +5 over the upper half of 20 → 0.25 of the band's half.
        let v = line(0, AnomalyKind::LevelShift, 25.0);
        assert_eq!(v["level"], "feature");
        assert_eq!(v["deviation"], 5.0);
        assert_eq!(v["band_fraction"], 0.25);
        let why = v["why"].as_str().unwrap();
        assert!(
            why.starts_with("a sustained shift above expected 20.00"),
            "{why}"
        );
        assert!(why.contains("0.25 of the band's half"), "{why}");
        // 8 below: −12 over the lower half of 8 → −1.5 (beyond the band).
        let v = line(0, AnomalyKind::Spike, 8.0);
        assert_eq!(v["deviation"], -12.0);
        assert_eq!(v["band_fraction"], -1.5);
        assert!(v["why"].as_str().unwrap().contains("1.50× the way"));
        // The customer alert: level customer, feature *, its features named.
        let v = line(
            crate::model::customer::CUSTOMER_ALERT,
            AnomalyKind::Spike,
            1.2,
        );
        assert_eq!(
            (v["level"].as_str(), v["feature"].as_str()),
            (Some("customer"), Some("*"))
        );
        assert_eq!(v["model"], "customer");
        assert_eq!(
            v["why"],
            "1 feature unusual for this customer: wan_latency_ms"
        );
        assert!(v.get("deviation").is_none());
    }
}
