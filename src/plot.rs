//! Pictures of what the model saw: one customer's features over a time range, as an SVG (`fleetwatch plot`).
//!
//! The picture is assembled from three sources, all replayed or read, none re-derived here:
//!
//! * the model's own per-observation evidence of the customer ([`crate::watch`]): observed value, prediction
//!   and band, one point per scored epoch (a rate feature shows its increase per epoch, as the model does);
//! * the run's output lines ([`RunLines`]): the customer's feature alerts (raised → updated → cleared), its
//!   customer-level alert and silence, and the incidents of its network element;
//! * optionally labels: the generator's `labels.jsonl` (per feature, or `*`) or point labels
//!   `customer_id,ts,label` (runs of 1s become spans).
//!
//! ```text
//!  title: customer, element, time range, legend
//!  ┌ customer strip ───────────────────────────────────────────────┐
//!  │ customer alert ▆▆    silence ▆▆▆   incident ▆▆▆▆   labels ▆▆   │
//!  ├ one panel per feature ────────────────────────────────────────┤
//!  │ red/orange background = alert / incident span; blue band = the │
//!  │ series' band; dashed = expected; black = observed; purple bar   │
//!  │ along the bottom = labelled span                                │
//!  └────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Drawn with `plotters`' SVG backend and its built-in text estimate (no font files): the output depends only
//! on the data, so the same input gives the same bytes.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::watch::WatchRow;

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("drawing: {0}")]
    Draw(String),
    #[error(transparent)]
    Labels(#[from] crate::eval::EvalError),
    #[error("{0}")]
    Usage(String),
}

pub(crate) fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// A change line of a run's output (feature or customer level).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeLine {
    pub epoch: u64,
    pub customer: String,
    /// The feature's name, `*` for a customer-level change.
    pub feature: String,
    pub status: String,
    pub severity: String,
    pub kind: String,
    pub score: f64,
    pub customer_score: f64,
    /// `"silence"`, `"customer"` or the detector's name.
    pub model: String,
    /// The element whose incident the change was annotated with.
    pub incident: Option<String>,
}

/// An incident line of a run's output.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentLine {
    pub epoch: u64,
    /// `element` or `region`.
    pub level: String,
    /// The element (a region-level incident: its region).
    pub element: String,
    pub region: String,
    pub status: String,
    pub severity: String,
    pub kind: String,
    pub members_affected: u64,
    pub members: u64,
    pub start: u64,
}

/// One change as [`spans_of`] reads it: epoch, status, kind, severity.
pub type ChangeRef<'a> = (u64, &'a str, &'a str, &'a str);

impl ChangeLine {
    pub fn as_change(&self) -> ChangeRef<'_> {
        (self.epoch, &self.status, &self.kind, &self.severity)
    }
}

impl IncidentLine {
    pub fn as_change(&self) -> ChangeRef<'_> {
        (self.epoch, &self.status, &self.kind, &self.severity)
    }
}

/// A summary line of a run's output (one per epoch).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryLine {
    pub epoch: u64,
    pub records: u64,
    pub late: u64,
    pub dead_lettered: u64,
    pub series_scored: u64,
    pub changes: u64,
    pub open_anomalies: u64,
}

/// Everything in a run's output a picture or a report uses.
#[derive(Debug, Clone, Default)]
pub struct RunLines {
    pub changes: Vec<ChangeLine>,
    pub incidents: Vec<IncidentLine>,
    pub summaries: Vec<SummaryLine>,
    /// The end record's fields, as written.
    pub end: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds per epoch (from the summaries' `epoch_start`; 0 when the output has no summary).
    pub epoch_len: i64,
}

impl RunLines {
    /// The first and last epoch with a summary.
    pub fn epoch_range(&self) -> Option<(u64, u64)> {
        let first = self.summaries.first()?.epoch;
        let last = self.summaries.last()?.epoch;
        Some((first.min(last), first.max(last)))
    }
}

/// Reads a `fleetwatch run` output file.
pub fn read_run_lines(path: &Path) -> Result<RunLines, PlotError> {
    let f = std::fs::File::open(path).map_err(|source| PlotError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_run_lines(std::io::BufReader::new(f), &path.display().to_string())
}

/// Parses a run output (JSON lines; unknown line types are skipped, a line that is not JSON is an error).
pub fn parse_run_lines(r: impl BufRead, name: &str) -> Result<RunLines, PlotError> {
    let mut out = RunLines::default();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|source| PlotError::Io {
            path: name.to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| PlotError::Parse {
            path: name.to_string(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let u = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        match v.get("type").and_then(|t| t.as_str()) {
            Some("change") => {
                let Some(epoch) = v.get("epoch").and_then(|x| x.as_u64()) else {
                    return Err(bad("change line without an epoch".into()));
                };
                if s("customer").is_empty() {
                    return Err(bad("change line without a customer".into()));
                }
                out.changes.push(ChangeLine {
                    epoch,
                    customer: s("customer"),
                    feature: s("feature"),
                    status: s("status"),
                    severity: s("severity"),
                    kind: s("kind"),
                    score: f("score"),
                    customer_score: f("customer_score"),
                    model: s("model"),
                    incident: v
                        .get("incident")
                        .and_then(|x| x.as_str())
                        .map(str::to_string),
                });
            }
            Some("incident") => {
                let Some(epoch) = v.get("epoch").and_then(|x| x.as_u64()) else {
                    return Err(bad("incident line without an epoch".into()));
                };
                let level = s("level");
                out.incidents.push(IncidentLine {
                    epoch,
                    element: if level == "region" {
                        s("region")
                    } else {
                        s("element")
                    },
                    level,
                    region: s("region"),
                    status: s("status"),
                    severity: s("severity"),
                    kind: s("kind"),
                    members_affected: u("members_affected"),
                    members: u("members"),
                    start: u("start"),
                });
            }
            Some("summary") => {
                let epoch = u("epoch");
                if out.epoch_len == 0
                    && epoch > 0
                    && let Some(t) = crate::timefmt::parse_rfc3339(s("epoch_start").as_bytes())
                {
                    out.epoch_len = t / epoch as i64;
                }
                out.summaries.push(SummaryLine {
                    epoch,
                    records: u("records"),
                    late: u("late"),
                    dead_lettered: u("dead_lettered"),
                    series_scored: u("series_scored"),
                    changes: u("changes"),
                    open_anomalies: u("open_anomalies"),
                });
            }
            Some("end") => out.end = v.as_object().cloned(),
            _ => {}
        }
    }
    Ok(out)
}

/// A stretch of time with a name: an alert (kind, severity), an incident, a label.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSpan {
    /// Unix seconds, inclusive.
    pub start: i64,
    /// Unix seconds, exclusive.
    pub end: i64,
    pub what: String,
    pub severity: String,
}

/// Turns a sequence of changes of one alert (sorted by epoch) into spans: raised opens one, updated closes it
/// and opens the next (its kind or severity changed), cleared closes it. An alert still open at the end runs
/// to `end_epoch + 1`.
pub fn spans_of<'a>(
    changes: impl IntoIterator<Item = ChangeRef<'a>>,
    epoch_len: i64,
    end_epoch: u64,
) -> Vec<TimeSpan> {
    let mut spans = Vec::new();
    let mut open: Option<(u64, String, String)> = None;
    let t = |e: u64| e as i64 * epoch_len;
    for (epoch, status, kind, severity) in changes {
        match status {
            "raised" | "updated" => {
                if let Some((s, k, sev)) = open.take() {
                    spans.push(TimeSpan {
                        start: t(s),
                        end: t(epoch),
                        what: k,
                        severity: sev,
                    });
                }
                open = Some((epoch, kind.to_string(), severity.to_string()));
            }
            "cleared" => {
                if let Some((s, k, sev)) = open.take() {
                    spans.push(TimeSpan {
                        start: t(s),
                        end: t(epoch),
                        what: k,
                        severity: sev,
                    });
                }
            }
            _ => {}
        }
    }
    if let Some((s, k, sev)) = open {
        spans.push(TimeSpan {
            start: t(s),
            end: t(end_epoch.max(s) + 1),
            what: k,
            severity: sev,
        });
    }
    // an update that lands in the epoch it was raised leaves an empty span
    spans.retain(|s| s.end > s.start);
    spans
}

/// Labels of one customer: per feature name (`*` for the customer), their spans.
pub type LabelSpans = BTreeMap<String, Vec<TimeSpan>>;

/// Reads one customer's labels: the generator's `labels.jsonl`, or point labels (`.csv`,
/// `customer_id,ts,label`) whose runs of 1s become customer-level spans of `epoch_len` per point.
pub fn read_customer_labels(
    path: &Path,
    customer: &str,
    epoch_len: i64,
) -> Result<LabelSpans, PlotError> {
    let mut out = LabelSpans::new();
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        let points =
            crate::pointeval::read_points(path).map_err(|e| PlotError::Usage(e.to_string()))?;
        let Some(pts) = points.by_customer.get(customer) else {
            return Ok(out);
        };
        let mut sorted = pts.clone();
        sorted.sort_unstable();
        let step = epoch_len.max(1);
        let mut spans: Vec<TimeSpan> = Vec::new();
        for (ts, label) in sorted {
            if !label {
                continue;
            }
            match spans.last_mut() {
                Some(s) if ts <= s.end => s.end = s.end.max(ts + step),
                _ => spans.push(TimeSpan {
                    start: ts,
                    end: ts + step,
                    what: "label".into(),
                    severity: String::new(),
                }),
            }
        }
        if !spans.is_empty() {
            out.insert("*".into(), spans);
        }
        return Ok(out);
    }
    for l in crate::eval::read_labels(path)? {
        if l.customer != customer {
            continue;
        }
        out.entry(l.feature).or_default().push(TimeSpan {
            start: l.start,
            end: l.end.max(l.start + 1),
            what: l.kind,
            severity: String::new(),
        });
    }
    Ok(out)
}

/// One scored observation as drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotPoint {
    pub ts: i64,
    /// NaN when the feature did not report (a dropout's evidence).
    pub observed: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
}

/// One feature's panel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeaturePanel {
    pub name: String,
    pub points: Vec<PlotPoint>,
    pub alerts: Vec<TimeSpan>,
    pub labels: Vec<TimeSpan>,
}

/// Everything drawn for one customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerPicture {
    pub customer: String,
    pub element: Option<String>,
    pub epoch_len: i64,
    /// Unix seconds: the range drawn, `[from, to)`.
    pub from: i64,
    pub to: i64,
    pub features: Vec<FeaturePanel>,
    /// The customer-level alert's spans.
    pub customer_alerts: Vec<TimeSpan>,
    pub silences: Vec<TimeSpan>,
    pub incidents: Vec<TimeSpan>,
    /// Labels that belong to no drawn feature (`*`, or a feature not drawn), named by feature and kind.
    pub customer_labels: Vec<TimeSpan>,
}

/// Which features to draw.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureChoice {
    /// Those with an alert or a label in the range; all with data when there is none.
    Eventful,
    All,
    Named(Vec<String>),
}

/// What [`assemble`] needs besides the run.
pub struct PictureInput<'a> {
    pub customer: &'a str,
    /// The customer's element and region (from the topology), when a topology was given.
    pub element: Option<&'a str>,
    pub feature_names: &'a [String],
    pub rows: &'a [WatchRow],
    pub run: &'a RunLines,
    pub labels: &'a LabelSpans,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub features: &'a FeatureChoice,
}

fn overlaps(s: &TimeSpan, from: i64, to: i64) -> bool {
    s.end > from && s.start < to
}

/// Assembles one customer's picture from the model's evidence, the run's changes and the labels.
pub fn assemble(p: &PictureInput<'_>) -> Result<CustomerPicture, PlotError> {
    let len = p.run.epoch_len.max(1);
    let (first, last) = p.run.epoch_range().unwrap_or((0, 0));
    let mine: Vec<&WatchRow> = p
        .rows
        .iter()
        .filter(|r| r.evidence.customer.as_str() == p.customer)
        .collect();
    let data_from = mine.iter().map(|r| r.epoch).min().unwrap_or(first);
    let data_to = mine.iter().map(|r| r.epoch).max().unwrap_or(last);
    let from = p.from.unwrap_or(data_from.min(first) as i64 * len);
    let to = p.to.unwrap_or((data_to.max(last) as i64 + 1) * len);
    if to <= from {
        return Err(PlotError::Usage(format!(
            "the time range is empty ({} .. {})",
            crate::timefmt::format_rfc3339(from),
            crate::timefmt::format_rfc3339(to)
        )));
    }
    let changes: Vec<&ChangeLine> = p
        .run
        .changes
        .iter()
        .filter(|c| c.customer == p.customer)
        .collect();
    let spans_for = |pred: &dyn Fn(&ChangeLine) -> bool| -> Vec<TimeSpan> {
        spans_of(
            changes.iter().filter(|c| pred(c)).map(|c| c.as_change()),
            len,
            last,
        )
        .into_iter()
        .filter(|s| overlaps(s, from, to))
        .collect()
    };

    let mut panels = Vec::new();
    for (fi, name) in p.feature_names.iter().enumerate() {
        let points: Vec<PlotPoint> = mine
            .iter()
            .filter(|r| r.evidence.feature as usize == fi)
            .map(|r| PlotPoint {
                ts: r.epoch as i64 * len,
                observed: r.evidence.observed as f64,
                expected: r.evidence.expected as f64,
                lower: r.evidence.lower as f64,
                upper: r.evidence.upper as f64,
            })
            .filter(|q| q.ts >= from && q.ts < to)
            .collect();
        let alerts = spans_for(&|c: &ChangeLine| c.feature == *name);
        let labels: Vec<TimeSpan> = p
            .labels
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|s| overlaps(s, from, to))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        panels.push(FeaturePanel {
            name: name.clone(),
            points,
            alerts,
            labels,
        });
    }
    let chosen: Vec<FeaturePanel> = match p.features {
        FeatureChoice::All => panels
            .into_iter()
            .filter(|f| !f.points.is_empty())
            .collect(),
        FeatureChoice::Named(names) => {
            let mut out = Vec::new();
            for n in names {
                match panels.iter().find(|f| &f.name == n) {
                    Some(f) => out.push(f.clone()),
                    None => {
                        return Err(PlotError::Usage(format!(
                            "no feature {n:?} in the spec (it has: {})",
                            p.feature_names.join(", ")
                        )));
                    }
                }
            }
            out
        }
        FeatureChoice::Eventful => {
            let eventful: Vec<FeaturePanel> = panels
                .iter()
                .filter(|f| !f.alerts.is_empty() || !f.labels.is_empty())
                .cloned()
                .collect();
            if eventful.is_empty() {
                panels
                    .into_iter()
                    .filter(|f| !f.points.is_empty())
                    .collect()
            } else {
                eventful
            }
        }
    };
    let drawn: Vec<&str> = chosen.iter().map(|f| f.name.as_str()).collect();
    let mut customer_labels: Vec<TimeSpan> = p
        .labels
        .iter()
        .filter(|(f, _)| !drawn.contains(&f.as_str()))
        .flat_map(|(f, v)| {
            v.iter()
                .filter(|s| overlaps(s, from, to))
                .map(move |s| TimeSpan {
                    what: if f == "*" {
                        s.what.clone()
                    } else {
                        format!("{f}: {}", s.what)
                    },
                    ..s.clone()
                })
        })
        .collect();
    customer_labels.sort_by_key(|s| s.start);
    let incidents = match p.element {
        Some(el) => spans_of(
            p.run
                .incidents
                .iter()
                .filter(|i| i.element == el)
                .map(|i| i.as_change()),
            len,
            last,
        )
        .into_iter()
        .filter(|s| overlaps(s, from, to))
        .collect(),
        None => Vec::new(),
    };
    Ok(CustomerPicture {
        customer: p.customer.to_string(),
        element: p.element.map(str::to_string),
        epoch_len: len,
        from,
        to,
        features: chosen,
        customer_alerts: spans_for(&|c: &ChangeLine| c.feature == "*" && c.model != "silence"),
        silences: spans_for(&|c: &ChangeLine| c.feature == "*" && c.model == "silence"),
        incidents,
        customer_labels,
    })
}

const WIDTH: u32 = 1200;
const HEADER: u32 = 56;
const STRIP: u32 = 110;
const PANEL: u32 = 170;
const ALERT: RGBColor = RGBColor(214, 39, 40);
const INCIDENT: RGBColor = RGBColor(255, 127, 14);
const BAND: RGBColor = RGBColor(31, 119, 180);
const LABEL: RGBColor = RGBColor(148, 103, 189);
const SILENCE: RGBColor = RGBColor(127, 127, 127);

/// `MM-DD HH:MM` (UTC) of Unix seconds.
pub(crate) fn tick_label(t: i64) -> String {
    let s = crate::timefmt::format_rfc3339(t);
    // 2023-11-14T22:15:00Z → 11-14 22:15
    s.get(5..16).map(|x| x.replace('T', " ")).unwrap_or(s)
}

/// A y tick's text, with as many decimals as the panel's span needs.
fn value_label(y: f64, span: f64) -> String {
    let decimals = if span >= 50.0 {
        0
    } else if span >= 5.0 {
        1
    } else if span >= 0.5 {
        2
    } else {
        3
    };
    format!("{y:.decimals$}")
}

/// Splits points into runs without a gap longer than `max_gap` seconds (lines and bands break at gaps).
fn segments(points: &[PlotPoint], max_gap: i64) -> Vec<&[PlotPoint]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].ts - points[i - 1].ts > max_gap {
            if i > start {
                out.push(&points[start..i]);
            }
            start = i;
        }
    }
    out
}

/// The y range a panel shows: every finite observed, expected and band value, padded by 5 %.
fn y_range(points: &[PlotPoint]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in points {
        for v in [p.observed, p.expected, p.lower, p.upper] {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        let pad = (hi.abs() * 0.05).max(0.5);
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Draws a picture as an SVG document.
pub fn draw_svg(pic: &CustomerPicture) -> Result<String, PlotError> {
    let height = HEADER + STRIP + PANEL * pic.features.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (header, body) = root.split_vertically(HEADER);
        draw_header(&header, pic)?;
        let (strip, panels) = body.split_vertically(STRIP);
        draw_strip(&strip, pic)?;
        if pic.features.is_empty() {
            panels
                .draw(&Text::new(
                    "no scored observation of this customer in the range",
                    (70, 40),
                    ("sans-serif", 14).into_font(),
                ))
                .map_err(draw_err)?;
        } else {
            let areas = panels.split_evenly((pic.features.len(), 1));
            for (area, f) in areas.iter().zip(&pic.features) {
                draw_panel(area, pic, f)?;
            }
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn draw_header(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    pic: &CustomerPicture,
) -> Result<(), PlotError> {
    let title = match &pic.element {
        Some(el) => format!("customer {} (element {el})", pic.customer),
        None => format!("customer {}", pic.customer),
    };
    let range = format!(
        "{} .. {} UTC, {}-second epochs",
        crate::timefmt::format_rfc3339(pic.from),
        crate::timefmt::format_rfc3339(pic.to),
        pic.epoch_len
    );
    area.draw(&Text::new(title, (10, 6), ("sans-serif", 18).into_font()))
        .map_err(draw_err)?;
    area.draw(&Text::new(range, (10, 30), ("sans-serif", 12).into_font()))
        .map_err(draw_err)?;
    // legend
    let items: [(&str, ShapeStyle); 6] = [
        ("observed", BLACK.filled()),
        ("expected", BAND.filled()),
        ("band", BAND.mix(0.2).filled()),
        ("alert", ALERT.mix(0.25).filled()),
        ("incident", INCIDENT.mix(0.3).filled()),
        ("label", LABEL.mix(0.7).filled()),
    ];
    let mut x = 640;
    for (name, style) in items {
        area.draw(&Rectangle::new([(x, 34), (x + 14, 44)], style))
            .map_err(draw_err)?;
        area.draw(&Text::new(
            name,
            (x + 18, 33),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(draw_err)?;
        x += 90;
    }
    Ok(())
}

/// The customer strip: one track each for the customer alert, silence, incidents and labels.
fn draw_strip(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    pic: &CustomerPicture,
) -> Result<(), PlotError> {
    const TRACKS: [&str; 4] = ["labels", "incident", "silence", "customer"];
    let mut chart = ChartBuilder::on(area)
        .margin_left(6)
        .margin_right(16)
        .margin_top(4)
        .x_label_area_size(0)
        .y_label_area_size(90)
        .build_cartesian_2d(pic.from..pic.to, 0f64..4f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .draw()
        .map_err(draw_err)?;
    // the tracks' names, left of the axis
    let base = area.get_base_pixel();
    for (i, name) in TRACKS.iter().enumerate() {
        let (_, py) = chart.backend_coord(&(pic.from, i as f64 + 0.5));
        area.draw(&Text::new(
            *name,
            (8, py - base.1 - 6),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(draw_err)?;
    }
    let tracks: [(&[TimeSpan], RGBColor); 4] = [
        (&pic.customer_labels, LABEL),
        (&pic.incidents, INCIDENT),
        (&pic.silences, SILENCE),
        (&pic.customer_alerts, ALERT),
    ];
    for (i, (spans, color)) in tracks.iter().enumerate() {
        let y = i as f64;
        chart
            .draw_series(spans.iter().map(|s| {
                Rectangle::new(
                    [
                        (s.start.max(pic.from), y + 0.2),
                        (s.end.min(pic.to), y + 0.8),
                    ],
                    color.mix(0.75).filled(),
                )
            }))
            .map_err(draw_err)?;
        // each span's name, where it has room
        let px_per_s = (WIDTH as f64 - 110.0) / (pic.to - pic.from).max(1) as f64;
        chart
            .draw_series(
                spans
                    .iter()
                    .filter(|s| {
                        (s.end.min(pic.to) - s.start.max(pic.from)) as f64 * px_per_s > 60.0
                    })
                    .map(|s| {
                        Text::new(
                            s.what.clone(),
                            (s.start.max(pic.from), y + 0.75),
                            ("sans-serif", 10).into_font().color(&WHITE),
                        )
                    }),
            )
            .map_err(draw_err)?;
    }
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    pic: &CustomerPicture,
    f: &FeaturePanel,
) -> Result<(), PlotError> {
    let (lo, hi) = y_range(&f.points);
    let mut chart = ChartBuilder::on(area)
        .margin_left(6)
        .margin_right(16)
        .margin_top(4)
        .caption(&f.name, ("sans-serif", 13).into_font())
        .x_label_area_size(20)
        .y_label_area_size(90)
        .build_cartesian_2d(pic.from..pic.to, lo..hi)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&|t| tick_label(*t))
        .y_label_formatter(&|y| value_label(*y, hi - lo))
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    let clip = |s: &TimeSpan| (s.start.max(pic.from), s.end.min(pic.to));
    chart
        .draw_series(f.alerts.iter().map(|s| {
            let (a, b) = clip(s);
            let alpha = if s.severity == "critical" { 0.3 } else { 0.16 };
            Rectangle::new([(a, hi), (b, lo)], ALERT.mix(alpha).filled())
        }))
        .map_err(draw_err)?;
    chart
        .draw_series(pic.incidents.iter().map(|s| {
            let (a, b) = clip(s);
            Rectangle::new([(a, hi), (b, lo)], INCIDENT.mix(0.12).filled())
        }))
        .map_err(draw_err)?;
    let bar = (hi - lo) * 0.05;
    chart
        .draw_series(f.labels.iter().map(|s| {
            let (a, b) = clip(s);
            Rectangle::new([(a, lo + bar), (b, lo)], LABEL.mix(0.7).filled())
        }))
        .map_err(draw_err)?;
    let max_gap = pic.epoch_len * 3;
    for seg in segments(&f.points, max_gap) {
        let band: Vec<(i64, f64)> = seg
            .iter()
            .filter(|p| p.upper.is_finite())
            .map(|p| (p.ts, p.upper.clamp(lo, hi)))
            .chain(
                seg.iter()
                    .rev()
                    .filter(|p| p.lower.is_finite())
                    .map(|p| (p.ts, p.lower.clamp(lo, hi))),
            )
            .collect();
        if band.len() >= 2 {
            chart
                .draw_series(std::iter::once(Polygon::new(band, BAND.mix(0.15).filled())))
                .map_err(draw_err)?;
        }
        chart
            .draw_series(LineSeries::new(
                seg.iter()
                    .filter(|p| p.expected.is_finite())
                    .map(|p| (p.ts, p.expected)),
                BAND.stroke_width(2),
            ))
            .map_err(draw_err)?;
        // observed: a line through the values, broken where the feature did not report
        let mut run: Vec<(i64, f64)> = Vec::new();
        let mut runs: Vec<Vec<(i64, f64)>> = Vec::new();
        for p in seg {
            if p.observed.is_finite() {
                run.push((p.ts, p.observed));
            } else if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        for r in runs {
            if r.len() == 1 {
                chart
                    .draw_series(r.iter().map(|&c| Circle::new(c, 2, BLACK.filled())))
                    .map_err(draw_err)?;
            } else {
                chart
                    .draw_series(LineSeries::new(r, BLACK.stroke_width(1)))
                    .map_err(draw_err)?;
            }
        }
    }
    // alert names, above the spans that have room for them
    let px_per_s = (WIDTH as f64 - 110.0) / (pic.to - pic.from).max(1) as f64;
    chart
        .draw_series(
            f.alerts
                .iter()
                .filter(|s| {
                    let (a, b) = clip(s);
                    (b - a) as f64 * px_per_s > 50.0
                })
                .map(|s| {
                    Text::new(
                        s.what.clone(),
                        (clip(s).0, hi),
                        ("sans-serif", 10).into_font().color(&ALERT),
                    )
                }),
        )
        .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_raise_update_clear_and_run_open_alerts_to_the_end() {
        let changes = [
            (10, "raised", "spike", "warning"),
            (12, "updated", "level_shift", "critical"),
            (15, "cleared", "level_shift", "critical"),
            (20, "raised", "dropout", "warning"),
        ];
        let s = spans_of(changes.iter().map(|&(e, a, b, c)| (e, a, b, c)), 300, 25);
        assert_eq!(
            s,
            vec![
                TimeSpan {
                    start: 3000,
                    end: 3600,
                    what: "spike".into(),
                    severity: "warning".into()
                },
                TimeSpan {
                    start: 3600,
                    end: 4500,
                    what: "level_shift".into(),
                    severity: "critical".into()
                },
                TimeSpan {
                    start: 6000,
                    end: 7800,
                    what: "dropout".into(),
                    severity: "warning".into()
                },
            ]
        );
        // a clear without a raise (the run started mid-alert) draws nothing
        assert!(spans_of([(3, "cleared", "spike", "warning")], 300, 9).is_empty());
    }

    #[test]
    fn segments_break_at_gaps_and_the_y_range_covers_every_finite_value() {
        let p = |ts: i64, o: f64| PlotPoint {
            ts,
            observed: o,
            expected: 1.0,
            lower: 0.0,
            upper: 2.0,
        };
        let pts = [p(0, 1.0), p(300, 5.0), p(600, f64::NAN), p(3000, -1.0)];
        let segs = segments(&pts, 900);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].len(), 3);
        let (lo, hi) = y_range(&pts);
        // values −1 .. 5, padded by 5 % of 6
        assert!(
            (lo - (-1.3)).abs() < 1e-9 && (hi - 5.3).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert_eq!(y_range(&[]), (0.0, 1.0));
        let flat = y_range(&[p(0, 1.0)].map(|mut q| {
            q.lower = 1.0;
            q.upper = 1.0;
            q
        }));
        assert!(flat.0 < 1.0 && flat.1 > 1.0);
    }

    #[test]
    fn run_output_lines_are_read_and_a_broken_line_is_reported_with_its_number() {
        let text = r#"{"type":"change","epoch":10,"epoch_start":"1970-01-01T00:50:00Z","customer":"c-1","feature":"rssi_dbm","level":"feature","status":"raised","severity":"warning","kind":"spike","score":1.5,"customer_score":1.5,"model":"seasonal-robust","incident":"olt-1"}
{"type":"incident","epoch":10,"epoch_start":"1970-01-01T00:50:00Z","level":"element","element":"olt-1","region":"r-1","status":"raised","severity":"critical","kind":"outage","start":10,"members_affected":40,"members":50}
{"type":"summary","epoch":10,"epoch_start":"1970-01-01T00:50:00Z","records":3,"late":0,"dead_lettered":1,"series_scored":60,"changes":2,"open_anomalies":2}
{"type":"end","epochs":1,"records":3}
"#;
        let r = parse_run_lines(text.as_bytes(), "t").unwrap();
        assert_eq!(r.epoch_len, 300);
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].incident.as_deref(), Some("olt-1"));
        assert_eq!(r.incidents[0].members_affected, 40);
        assert_eq!(r.summaries[0].dead_lettered, 1);
        assert_eq!(r.epoch_range(), Some((10, 10)));
        assert!(r.end.is_some());
        let err = parse_run_lines("{\"type\":\"end\"}\nnot json\n".as_bytes(), "t").unwrap_err();
        assert!(err.to_string().starts_with("t:2:"), "{err}");
    }

    fn picture() -> CustomerPicture {
        let pts: Vec<PlotPoint> = (0..50)
            .map(|i| PlotPoint {
                ts: i * 300,
                observed: if i == 30 { 9.0 } else { (i % 5) as f64 },
                expected: 2.0,
                lower: 0.0,
                upper: 4.0,
            })
            .collect();
        CustomerPicture {
            customer: "c-1".into(),
            element: Some("olt-1".into()),
            epoch_len: 300,
            from: 0,
            to: 50 * 300,
            features: vec![FeaturePanel {
                name: "rssi_dbm".into(),
                points: pts,
                alerts: vec![TimeSpan {
                    start: 9000,
                    end: 9600,
                    what: "spike".into(),
                    severity: "warning".into(),
                }],
                labels: vec![TimeSpan {
                    start: 9000,
                    end: 9300,
                    what: "spike".into(),
                    severity: String::new(),
                }],
            }],
            incidents: vec![TimeSpan {
                start: 12000,
                end: 15000,
                what: "outage".into(),
                severity: "critical".into(),
            }],
            ..CustomerPicture::default()
        }
    }

    #[test]
    fn the_svg_holds_the_title_a_panel_per_feature_and_is_the_same_twice() {
        let pic = picture();
        let a = draw_svg(&pic).unwrap();
        let b = draw_svg(&pic).unwrap();
        assert_eq!(a, b, "drawing depends only on the data");
        assert!(a.starts_with("<svg"));
        assert!(a.contains("customer c-1 (element olt-1)"));
        assert!(a.contains("rssi_dbm"));
        // the observed line is one polyline through the 50 points
        assert!(a.contains("<polyline"));
        // alert, incident and label spans are filled rectangles in their colours
        assert!(a.contains("#D62728"), "alert colour");
        assert!(a.contains("#FF7F0E"), "incident colour");
        assert!(a.contains("#9467BD"), "label colour");
        let mut two = pic.clone();
        let mut second = two.features[0].clone();
        second.name = "snr_db".into();
        two.features.push(second);
        let c = draw_svg(&two).unwrap();
        assert!(c.contains("snr_db"));
        assert!(c.len() > a.len());
    }
}
