//! `fleetwatch report`: one self-contained HTML page of a run — what changed per epoch, alerts by kind and
//! feature, the customers and network elements that alerted most, and links to pictures of those customers
//! ([`crate::plot`]).
//!
//! The page carries its charts as inline SVG and its style inline: it opens from disk, without a server or
//! anything fetched. It is built from the run's output alone ([`crate::plot::RunLines`]); the pictures it
//! links to are drawn by replaying the run's input (`crate::commands::report`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::plot::{ChangeRef, PlotError, RunLines, draw_err, spans_of, tick_label};

/// One customer's alerting in a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerRow {
    pub customer: String,
    /// Alerts raised (feature and customer level).
    pub raises: u64,
    /// Epochs with at least one of its alerts open, summed over its alerts.
    pub alert_epochs: u64,
    pub max_customer_score: f64,
    pub features: BTreeSet<String>,
    pub kinds: BTreeSet<String>,
    /// Raises annotated with an incident of its element.
    pub under_incident: u64,
}

/// One network element's incidents in a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElementRow {
    pub element: String,
    pub region: String,
    pub incidents: u64,
    pub epochs_open: u64,
    pub kinds: BTreeSet<String>,
    pub max_affected: u64,
    pub members: u64,
    pub first_start: u64,
}

/// What the page shows, computed from a run's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub epoch_len: i64,
    pub first_epoch: u64,
    pub last_epoch: u64,
    pub records: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub series_scored: u64,
    pub raised: u64,
    pub updated: u64,
    pub cleared: u64,
    pub incidents_raised: u64,
    /// Per epoch with a summary: (epoch, raised, cleared, open anomalies).
    pub per_epoch: Vec<(u64, u64, u64, u64)>,
    /// Raises by (feature, kind).
    pub by_feature_kind: BTreeMap<(String, String), u64>,
    /// Customers by raises, then alert epochs, then id.
    pub customers: Vec<CustomerRow>,
    /// Elements by incidents, then epochs open, then id.
    pub elements: Vec<ElementRow>,
}

/// Summarises a run's output.
pub fn summarise(run: &RunLines) -> RunSummary {
    let mut s = RunSummary {
        epoch_len: run.epoch_len.max(1),
        ..RunSummary::default()
    };
    let (first, last) = run.epoch_range().unwrap_or((0, 0));
    s.first_epoch = first;
    s.last_epoch = last;
    for m in &run.summaries {
        s.records += m.records;
        s.dead_lettered += m.dead_lettered;
        s.late += m.late;
        s.series_scored += m.series_scored;
    }
    let mut raised_at: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut customers: BTreeMap<&str, CustomerRow> = BTreeMap::new();
    let mut per_alert: BTreeMap<(&str, &str), Vec<ChangeRef<'_>>> = BTreeMap::new();
    for c in &run.changes {
        let row = customers
            .entry(c.customer.as_str())
            .or_insert_with(|| CustomerRow {
                customer: c.customer.clone(),
                ..CustomerRow::default()
            });
        match c.status.as_str() {
            "raised" => {
                s.raised += 1;
                raised_at.entry(c.epoch).or_default().0 += 1;
                *s.by_feature_kind
                    .entry((c.feature.clone(), c.kind.clone()))
                    .or_default() += 1;
                row.raises += 1;
                row.features.insert(c.feature.clone());
                row.kinds.insert(c.kind.clone());
                row.under_incident += c.incident.is_some() as u64;
            }
            "updated" => s.updated += 1,
            "cleared" => {
                s.cleared += 1;
                raised_at.entry(c.epoch).or_default().1 += 1;
            }
            _ => {}
        }
        if c.customer_score.is_finite() {
            row.max_customer_score = row.max_customer_score.max(c.customer_score);
        }
        per_alert
            .entry((c.customer.as_str(), c.feature.as_str()))
            .or_default()
            .push(c.as_change());
    }
    for ((customer, _), changes) in per_alert {
        let epochs: i64 = spans_of(changes, 1, last)
            .iter()
            .map(|sp| sp.end - sp.start)
            .sum();
        if let Some(row) = customers.get_mut(customer) {
            row.alert_epochs += epochs.max(0) as u64;
        }
    }
    s.per_epoch = run
        .summaries
        .iter()
        .map(|m| {
            let (r, c) = raised_at.get(&m.epoch).copied().unwrap_or((0, 0));
            (m.epoch, r, c, m.open_anomalies)
        })
        .collect();
    let mut rows: Vec<CustomerRow> = customers.into_values().collect();
    rows.sort_by(|a, b| {
        b.raises
            .cmp(&a.raises)
            .then(b.alert_epochs.cmp(&a.alert_epochs))
            .then(a.customer.cmp(&b.customer))
    });
    s.customers = rows;

    let mut elements: BTreeMap<&str, ElementRow> = BTreeMap::new();
    let mut per_element: BTreeMap<&str, Vec<ChangeRef<'_>>> = BTreeMap::new();
    for i in &run.incidents {
        let row = elements
            .entry(i.element.as_str())
            .or_insert_with(|| ElementRow {
                element: i.element.clone(),
                region: if i.level == "region" {
                    "(a region)".into()
                } else {
                    i.region.clone()
                },
                first_start: i.start,
                ..ElementRow::default()
            });
        if i.status == "raised" {
            s.incidents_raised += 1;
            row.incidents += 1;
            row.kinds.insert(i.kind.clone());
            row.first_start = row.first_start.min(i.start);
        }
        row.max_affected = row.max_affected.max(i.members_affected);
        row.members = row.members.max(i.members);
        per_element
            .entry(i.element.as_str())
            .or_default()
            .push(i.as_change());
    }
    for (el, changes) in per_element {
        let epochs: i64 = spans_of(changes, 1, last)
            .iter()
            .map(|sp| sp.end - sp.start)
            .sum();
        if let Some(row) = elements.get_mut(el) {
            row.epochs_open = epochs.max(0) as u64;
        }
    }
    let mut rows: Vec<ElementRow> = elements.into_values().collect();
    rows.sort_by(|a, b| {
        b.incidents
            .cmp(&a.incidents)
            .then(b.epochs_open.cmp(&a.epochs_open))
            .then(a.element.cmp(&b.element))
    });
    s.elements = rows;
    s
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The changes-per-epoch chart (raised up, cleared down) and the open anomalies, as inline SVG.
fn epochs_chart(s: &RunSummary) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(240);
        let len = s.epoch_len;
        let from = s.first_epoch as i64 * len;
        let to = (s.last_epoch as i64 + 1) * len;
        let fmt = |t: &i64| tick_label(*t);
        let max_up = s.per_epoch.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
        let max_down = s.per_epoch.iter().map(|p| p.2).max().unwrap_or(0).max(1) as f64;
        let mut c = ChartBuilder::on(&top)
            .margin(8)
            .caption(
                "changes per epoch (raised above the axis, cleared below)",
                ("sans-serif", 14),
            )
            .x_label_area_size(22)
            .y_label_area_size(60)
            .build_cartesian_2d(from..to, -max_down * 1.05..max_up * 1.05)
            .map_err(draw_err)?;
        c.configure_mesh()
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&fmt)
            .y_label_formatter(&|y| format!("{:.0}", y.abs()))
            .light_line_style(WHITE)
            .draw()
            .map_err(draw_err)?;
        let red = RGBColor(214, 39, 40);
        let green = RGBColor(44, 160, 44);
        c.draw_series(s.per_epoch.iter().filter(|p| p.1 > 0).map(|p| {
            let t = p.0 as i64 * len;
            Rectangle::new([(t, p.1 as f64), (t + len, 0.0)], red.filled())
        }))
        .map_err(draw_err)?;
        c.draw_series(s.per_epoch.iter().filter(|p| p.2 > 0).map(|p| {
            let t = p.0 as i64 * len;
            Rectangle::new([(t, 0.0), (t + len, -(p.2 as f64))], green.filled())
        }))
        .map_err(draw_err)?;
        let max_open = s.per_epoch.iter().map(|p| p.3).max().unwrap_or(0).max(1) as f64;
        let mut c = ChartBuilder::on(&bottom)
            .margin(8)
            .caption(
                "open anomalies at the end of each epoch",
                ("sans-serif", 14),
            )
            .x_label_area_size(22)
            .y_label_area_size(60)
            .build_cartesian_2d(from..to, 0.0..max_open * 1.05)
            .map_err(draw_err)?;
        c.configure_mesh()
            .x_labels(8)
            .y_labels(5)
            .x_label_formatter(&fmt)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(draw_err)?;
        c.draw_series(LineSeries::new(
            s.per_epoch.iter().map(|p| (p.0 as i64 * len, p.3 as f64)),
            RGBColor(31, 119, 180).stroke_width(1),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// What the page links to: per customer, the relative path of its picture.
pub type PlotLinks = BTreeMap<String, String>;

/// Renders the page. `title` names the run (its output file), `top` bounds the customer and element tables.
pub fn render_html(
    s: &RunSummary,
    title: &str,
    top: usize,
    plots: &PlotLinks,
) -> Result<String, PlotError> {
    let mut h = String::new();
    let t = |e: u64| crate::timefmt::format_rfc3339(e as i64 * s.epoch_len);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fleetwatch report: {}</title>\n\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0 24px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}\
         td.l,th.l{{text-align:left}}.kpi{{display:inline-block;margin:0 28px 12px 0}}.kpi b{{display:block;font-size:22px}}\
         </style></head><body>\n",
        escape(title)
    );
    let _ = write!(
        h,
        "<h1>fleetwatch report</h1>\n<p>Run output <code>{}</code>: epochs {} .. {} ({} to {} UTC, {}-second epochs).</p>\n",
        escape(title),
        s.first_epoch,
        s.last_epoch,
        t(s.first_epoch),
        t(s.last_epoch + 1),
        s.epoch_len
    );
    let kpis = [
        ("records", s.records),
        ("series scored", s.series_scored),
        ("dead-lettered", s.dead_lettered),
        ("late", s.late),
        ("alerts raised", s.raised),
        ("updated", s.updated),
        ("cleared", s.cleared),
        (
            "customers alerting",
            s.customers.iter().filter(|c| c.raises > 0).count() as u64,
        ),
        ("incidents raised", s.incidents_raised),
    ];
    h.push_str("<div>");
    for (k, v) in kpis {
        let _ = write!(h, "<span class=\"kpi\"><b>{v}</b>{k}</span>");
    }
    h.push_str("</div>\n<h2>Changes per epoch</h2>\n");
    if s.per_epoch.is_empty() {
        h.push_str("<p>The output has no summary line: no epoch closed.</p>\n");
    } else {
        h.push_str(&epochs_chart(s)?);
        h.push('\n');
    }

    h.push_str("<h2>Alerts raised by feature and kind</h2>\n");
    let kinds: BTreeSet<&str> = s.by_feature_kind.keys().map(|(_, k)| k.as_str()).collect();
    let features: BTreeSet<&str> = s.by_feature_kind.keys().map(|(f, _)| f.as_str()).collect();
    if kinds.is_empty() {
        h.push_str("<p>No alert was raised.</p>\n");
    } else {
        let max = s
            .by_feature_kind
            .values()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        h.push_str("<table><tr><th class=\"l\">feature</th>");
        for k in &kinds {
            let _ = write!(h, "<th>{}</th>", escape(k));
        }
        h.push_str("<th>all</th></tr>\n");
        for f in &features {
            let _ = write!(
                h,
                "<tr><td class=\"l\">{}</td>",
                if *f == "*" {
                    "* (customer)".to_string()
                } else {
                    escape(f)
                }
            );
            let mut all = 0;
            for k in &kinds {
                let n = s
                    .by_feature_kind
                    .get(&(f.to_string(), k.to_string()))
                    .copied()
                    .unwrap_or(0);
                all += n;
                if n == 0 {
                    h.push_str("<td></td>");
                } else {
                    // a heat shade: the busiest cell is the darkest
                    let a = 0.08 + 0.5 * n as f64 / max;
                    let _ = write!(
                        h,
                        "<td style=\"background:rgba(214,39,40,{a:.2})\">{n}</td>"
                    );
                }
            }
            let _ = writeln!(h, "<td>{all}</td></tr>");
        }
        h.push_str("</table>\n");
    }

    let _ = writeln!(h, "<h2>Top customers</h2>");
    let alerting: Vec<&CustomerRow> = s
        .customers
        .iter()
        .filter(|c| c.raises > 0)
        .take(top)
        .collect();
    if alerting.is_empty() {
        h.push_str("<p>No customer alerted.</p>\n");
    } else {
        h.push_str(
            "<table><tr><th class=\"l\">customer</th><th>raises</th><th>alert-epochs</th><th>max customer score</th>\
             <th>under an incident</th><th class=\"l\">features</th><th class=\"l\">kinds</th><th class=\"l\">picture</th></tr>\n",
        );
        for c in alerting {
            let link = plots
                .get(&c.customer)
                .map(|p| format!("<a href=\"{}\">plot</a>", escape(p)))
                .unwrap_or_default();
            let _ = writeln!(
                h,
                "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{link}</td></tr>",
                escape(&c.customer),
                c.raises,
                c.alert_epochs,
                c.max_customer_score,
                c.under_incident,
                escape(&c.features.iter().cloned().collect::<Vec<_>>().join(", ")),
                escape(&c.kinds.iter().cloned().collect::<Vec<_>>().join(", ")),
            );
        }
        h.push_str("</table>\n");
    }

    let _ = writeln!(h, "<h2>Top network elements</h2>");
    if s.elements.is_empty() {
        h.push_str(
            "<p>No incident (the run had no topology, or no element left its normal).</p>\n",
        );
    } else {
        h.push_str(
            "<table><tr><th class=\"l\">element</th><th class=\"l\">region</th><th>incidents</th><th>epochs open</th>\
             <th>most members affected</th><th class=\"l\">kinds</th><th class=\"l\">first start</th></tr>\n",
        );
        for e in s.elements.iter().take(top) {
            let _ = writeln!(
                h,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                escape(&e.element),
                escape(&e.region),
                e.incidents,
                e.epochs_open,
                e.max_affected,
                e.members,
                escape(&e.kinds.iter().cloned().collect::<Vec<_>>().join(", ")),
                t(e.first_start),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<p style=\"color:#777\">Written by fleetwatch report; alert-epochs sum the epochs each of a customer's alerts was open.</p>\n</body></html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::parse_run_lines;

    const RUN: &str = r#"{"type":"change","epoch":10,"customer":"c-1","feature":"rssi_dbm","status":"raised","severity":"warning","kind":"spike","customer_score":1.5}
{"type":"change","epoch":10,"customer":"c-2","feature":"*","status":"raised","severity":"critical","kind":"silent","model":"silence","incident":"olt-1"}
{"type":"incident","epoch":10,"element":"olt-1","region":"r<1>","status":"raised","severity":"critical","kind":"outage","start":10,"members_affected":40,"members":50}
{"type":"summary","epoch":10,"epoch_start":"1970-01-01T00:50:00Z","records":3,"series_scored":60,"changes":3,"open_anomalies":2}
{"type":"change","epoch":11,"customer":"c-1","feature":"rssi_dbm","status":"updated","severity":"critical","kind":"level_shift","customer_score":2.5}
{"type":"summary","epoch":11,"epoch_start":"1970-01-01T00:55:00Z","records":3,"series_scored":60,"changes":1,"open_anomalies":2}
{"type":"change","epoch":12,"customer":"c-1","feature":"rssi_dbm","status":"cleared","severity":"critical","kind":"level_shift"}
{"type":"change","epoch":12,"customer":"c-1","feature":"snr_db","status":"raised","severity":"warning","kind":"spike"}
{"type":"incident","epoch":13,"element":"olt-1","region":"r<1>","status":"cleared","severity":"critical","kind":"outage","start":10,"members_affected":0,"members":50}
{"type":"summary","epoch":12,"epoch_start":"1970-01-01T01:00:00Z","records":3,"dead_lettered":2,"series_scored":60,"changes":2,"open_anomalies":2}
{"type":"summary","epoch":13,"epoch_start":"1970-01-01T01:05:00Z","records":3,"series_scored":60,"changes":1,"open_anomalies":2}
"#;

    #[test]
    fn the_summary_counts_what_the_lines_say() {
        let run = parse_run_lines(RUN.as_bytes(), "t").unwrap();
        let s = summarise(&run);
        assert_eq!((s.first_epoch, s.last_epoch, s.epoch_len), (10, 13, 300));
        assert_eq!((s.raised, s.updated, s.cleared), (3, 1, 1));
        assert_eq!((s.records, s.dead_lettered, s.series_scored), (12, 2, 240));
        assert_eq!(s.per_epoch[0], (10, 2, 0, 2));
        assert_eq!(s.per_epoch[2], (12, 1, 1, 2));
        assert_eq!(
            s.by_feature_kind
                .get(&("rssi_dbm".to_string(), "spike".to_string())),
            Some(&1)
        );
        // c-1: two raises; its rssi alert was open epochs 10..12 (2), snr from 12 to the end (13): 2
        let c1 = &s.customers[0];
        assert_eq!(
            (c1.customer.as_str(), c1.raises, c1.alert_epochs),
            ("c-1", 2, 4)
        );
        assert_eq!(c1.max_customer_score, 2.5);
        // c-2: open from 10 to the end: 4 epochs; its raise is under an incident
        let c2 = &s.customers[1];
        assert_eq!((c2.raises, c2.alert_epochs, c2.under_incident), (1, 4, 1));
        assert_eq!(s.incidents_raised, 1);
        let e = &s.elements[0];
        assert_eq!(
            (e.incidents, e.epochs_open, e.max_affected, e.members),
            (1, 3, 40, 50)
        );
    }

    #[test]
    fn the_page_is_self_contained_escaped_and_links_only_the_pictures_it_has() {
        let run = parse_run_lines(RUN.as_bytes(), "t").unwrap();
        let s = summarise(&run);
        let mut links = PlotLinks::new();
        links.insert("c-1".into(), "plots/c-1.svg".into());
        let page = render_html(&s, "out<put>.jsonl", 10, &links).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("out&lt;put&gt;.jsonl") && !page.contains("out<put>"));
        assert!(page.contains("r&lt;1&gt;"));
        assert!(page.contains("<a href=\"plots/c-1.svg\">plot</a>"));
        assert_eq!(page.matches("<a href=").count(), 1, "c-2 has no picture");
        assert!(page.contains("<svg"), "the chart is inline");
        for external in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "<script",
            "<link",
            "<img",
        ] {
            assert!(
                !page.contains(external),
                "{external} in a self-contained page"
            );
        }
        assert_eq!(page, render_html(&s, "out<put>.jsonl", 10, &links).unwrap());
    }
}
