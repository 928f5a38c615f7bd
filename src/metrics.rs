//! Prometheus metrics of a run: `run --metrics ADDR` serves them at `http://ADDR/metrics` in the
//! Prometheus text format (0.0.4), through the `prometheus-client` crate.
//!
//! One registry per process ([`global`]); the parts of the pipeline record into it as they go:
//!
//! * the sink (global worker 0, so process 0 in a cluster), once per epoch and under the epoch guard, so a
//!   scrape sees every per-epoch counter as of the same last closed epoch: epochs closed, the wall time
//!   between epochs (histogram), records, late records, dead letters by reason, series scored, changes by
//!   status, kind and level, open alerts by kind and level, the last closed epoch (number and start time;
//!   `time() - fleetwatch_last_epoch_start_seconds` is how far the output trails real time on a live run);
//! * every Kafka source worker: consumer lag per partition (the broker's high watermark minus the position);
//! * the checkpoint coordinator: checkpoints completed and failed, bytes and seconds of the last one;
//! * the scrape itself: the process's resident set size.
//!
//! Counters count this process's work since it started (a restarted run starts again from zero, as
//! Prometheus expects of counters); the per-epoch counters equal the sums of the run's summary lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::keys::CustomerId;
use crate::model::alert::Transition;
use crate::model::customer::is_customer_level;
use crate::record::DeadLetter;
use crate::sinks::{Change, EpochSummary};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    status: &'static str,
    kind: &'static str,
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    kind: &'static str,
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: u32,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Held for writing while the sink records an epoch, for reading while a scrape encodes.
    epoch_guard: RwLock<()>,
    epochs: Counter,
    epoch_seconds: Histogram,
    last_epoch: Gauge,
    last_epoch_start: Gauge,
    records: Counter,
    late: Counter,
    dead: Family<ReasonLabels, Counter>,
    series_scored: Counter,
    changes: Family<ChangeLabels, Counter>,
    open_alerts: Family<AlertLabels, Gauge>,
    /// (customer, feature) → the labels of its open alert, to move the gauges on updates and clears.
    open: Mutex<HashMap<(CustomerId, u16), AlertLabels>>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoint_bytes: Gauge,
    checkpoint_seconds: Gauge<f64, AtomicU64>,
    predictions_files: Counter,
    predictions_rows: Counter,
    predictions_failures: Counter,
    predictions_seconds: Gauge<f64, AtomicU64>,
    rss: Gauge,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics (created on first use).
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

fn level(feature: u16) -> &'static str {
    if is_customer_level(feature) {
        "customer"
    } else {
        "feature"
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("fleetwatch");
        let m = Metrics {
            registry: Registry::default(),
            epoch_guard: RwLock::new(()),
            epochs: Counter::default(),
            // 50 ms .. ~100 s
            epoch_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            last_epoch: Gauge::default(),
            last_epoch_start: Gauge::default(),
            records: Counter::default(),
            late: Counter::default(),
            dead: Family::default(),
            series_scored: Counter::default(),
            changes: Family::default(),
            open_alerts: Family::default(),
            open: Mutex::new(HashMap::new()),
            consumer_lag: Family::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            checkpoint_bytes: Gauge::default(),
            checkpoint_seconds: Gauge::default(),
            predictions_files: Counter::default(),
            predictions_rows: Counter::default(),
            predictions_failures: Counter::default(),
            predictions_seconds: Gauge::default(),
            rss: Gauge::default(),
        };
        r.register(
            "epochs_closed",
            "Epochs the sink has closed and written",
            m.epochs.clone(),
        );
        r.register(
            "epoch_seconds",
            "Wall-clock seconds between successive closed epochs (a replay's time per epoch)",
            m.epoch_seconds.clone(),
        );
        r.register(
            "last_epoch",
            "Number of the last closed epoch (event time / epoch length)",
            m.last_epoch.clone(),
        );
        r.register(
            "last_epoch_start_seconds",
            "Event-time start of the last closed epoch, Unix seconds",
            m.last_epoch_start.clone(),
        );
        r.register(
            "records",
            "Well-formed records counted into closed epochs",
            m.records.clone(),
        );
        r.register(
            "late_records",
            "Records that arrived for an epoch already closed",
            m.late.clone(),
        );
        r.register(
            "dead_lettered",
            "Refused records, by reason",
            m.dead.clone(),
        );
        r.register(
            "series_scored",
            "Series scored (one per series with an observation per epoch)",
            m.series_scored.clone(),
        );
        r.register(
            "changes",
            "Anomaly changes emitted, by status (raised, updated, cleared), kind and level (feature, customer)",
            m.changes.clone(),
        );
        r.register(
            "open_alerts",
            "Open alerts after the last closed epoch, by kind and level",
            m.open_alerts.clone(),
        );
        r.register(
            "consumer_lag",
            "Kafka input: messages between a partition's position and its high watermark",
            m.consumer_lag.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints completed (manifest written)",
            m.checkpoints.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoints that failed",
            m.checkpoint_failures.clone(),
        );
        r.register(
            "checkpoint_bytes",
            "Size of the last completed checkpoint",
            m.checkpoint_bytes.clone(),
        );
        r.register(
            "checkpoint_manifest_seconds",
            "Last completed checkpoint: seconds from its epoch's durable output to its manifest",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "prediction_files",
            "Parquet files of every prediction written (--predictions)",
            m.predictions_files.clone(),
        );
        r.register(
            "prediction_rows",
            "Rows in the Parquet files of every prediction written (--predictions)",
            m.predictions_rows.clone(),
        );
        r.register(
            "prediction_failures",
            "Parquet files of every prediction that could not be written (--predictions)",
            m.predictions_failures.clone(),
        );
        r.register(
            "prediction_file_seconds",
            "Seconds the last Parquet file of every prediction took to write (--predictions)",
            m.predictions_seconds.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident set size of this process",
            m.rss.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The sink closed epoch `epoch` (start `epoch_start` Unix seconds) with these changes, dead letters
    /// and counters, `wall` seconds after the previous one.
    pub fn epoch_closed(
        &self,
        epoch: u64,
        epoch_start: i64,
        wall: f64,
        summary: &EpochSummary,
        changes: &[Change],
        dead: &[DeadLetter],
    ) {
        let _guard = self.epoch_guard.write();
        self.epochs.inc();
        self.epoch_seconds.observe(wall);
        self.last_epoch.set(epoch as i64);
        self.last_epoch_start.set(epoch_start);
        self.records.inc_by(summary.records);
        self.late.inc_by(summary.late);
        for d in dead {
            self.dead
                .get_or_create(&ReasonLabels {
                    reason: d.code.as_str(),
                })
                .inc();
        }
        // Refusals the summary counts without a dead-letter line in this epoch. Not expected (every
        // refusal, the model's duplicates included, arrives here as a line); kept so that the reasons
        // always sum to the summary's count, under the `duplicate` label.
        let lines = dead.len() as u64;
        if summary.dead_lettered > lines {
            self.dead
                .get_or_create(&ReasonLabels {
                    reason: "duplicate",
                })
                .inc_by(summary.dead_lettered - lines);
        }
        self.series_scored.inc_by(summary.series_scored);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            let labels = AlertLabels {
                kind: c.anomaly.kind.as_str(),
                level: level(c.feature),
            };
            self.changes
                .get_or_create(&ChangeLabels {
                    status: c.status.as_str(),
                    kind: labels.kind,
                    level: labels.level,
                })
                .inc();
            let key = (c.customer, c.feature);
            if let Some(old) = open.remove(&key) {
                self.open_alerts.get_or_create(&old).dec();
            }
            if c.status != Transition::Cleared {
                self.open_alerts.get_or_create(&labels).inc();
                open.insert(key, labels);
            }
        }
    }

    /// The lag gauge of a Kafka partition (high watermark − position), for its source to set as it
    /// refreshes its positions (a handle: setting it is one atomic store).
    pub fn consumer_lag(&self, topic: &str, partition: u32) -> Gauge {
        self.consumer_lag
            .get_or_create(&PartitionLabels {
                topic: topic.to_string(),
                partition,
            })
            .clone()
    }

    /// A worker wrote its Parquet file of an epoch's predictions: `rows` rows in `seconds`.
    pub fn predictions_written(&self, rows: u64, seconds: f64) {
        self.predictions_files.inc();
        self.predictions_rows.inc_by(rows);
        self.predictions_seconds.set(seconds);
    }

    /// A Parquet file of predictions could not be written.
    pub fn predictions_failed(&self) {
        self.predictions_failures.inc();
    }

    /// A checkpoint completed (`bytes`, manifest `seconds` after the epoch was durable), or failed.
    pub fn checkpoint(&self, done: Option<(u64, f64)>) {
        match done {
            Some((bytes, seconds)) => {
                self.checkpoints.inc();
                self.checkpoint_bytes.set(bytes as i64);
                self.checkpoint_seconds.set(seconds);
            }
            None => {
                self.checkpoint_failures.inc();
            }
        }
    }

    /// The registry in the Prometheus text format, consistent as of the last closed epoch.
    pub fn encode(&self) -> String {
        self.rss.set(resident_bytes().unwrap_or(0) as i64);
        let _guard = self.epoch_guard.read();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// This process's resident set size (Linux: `/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("--metrics {addr}: {source}")]
pub struct MetricsError {
    addr: String,
    source: std::io::Error,
}

/// Serves `GET /metrics` on `addr` from a background thread; returns the bound address (port 0 picks
/// one). Anything else is answered 404 (unknown path) or 405 (another method); a client that sends
/// nothing for 5 s is dropped. The thread lives as long as the process.
pub fn serve(addr: &str) -> Result<SocketAddr, MetricsError> {
    let err = |source| MetricsError {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    std::thread::Builder::new()
        .name("fleetwatch-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = answer(s) {
                            tracing::debug!("metrics request: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("metrics endpoint: {e}"),
                }
            }
        })
        .map_err(err)?;
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers, up to the blank line (bounded: a request is a few hundred bytes).
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            global().encode(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnomalyKind;
    use crate::model::customer::OpenAnomaly;
    use crate::model::header::Severity;

    fn change(customer: u64, feature: u16, status: Transition, kind: AnomalyKind) -> Change {
        Change {
            customer: CustomerId::parse(format!("c{customer}").as_bytes(), b"").unwrap(),
            feature,
            status,
            anomaly: OpenAnomaly {
                feature,
                kind,
                severity: Severity::Warning,
            },
            evidence: None,
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l[series.len() + 1..].trim().parse().ok())
    }

    #[test]
    fn an_epoch_moves_counters_and_open_alert_gauges() {
        let m = Metrics::new();
        let s = EpochSummary {
            records: 10,
            late: 1,
            dead_lettered: 2,
            series_scored: 200,
            changes: 3,
            open_anomalies: 2,
            closed_by_guard: false,
        };
        let changes = vec![
            change(1, 0, Transition::Raised, AnomalyKind::Spike),
            change(2, 1, Transition::Raised, AnomalyKind::LevelShift),
            change(
                3,
                crate::model::customer::CUSTOMER_ALERT,
                Transition::Raised,
                AnomalyKind::Spike,
            ),
        ];
        let dead = vec![DeadLetter::new(
            0,
            3,
            b"{",
            crate::record::Rejection::new(crate::record::RejectCode::Malformed, "x"),
        )];
        m.epoch_closed(7, 2100, 0.5, &s, &changes, &dead);
        // Epoch 8: the spike on (1, 0) turns into a level shift, (2, 1) clears.
        let changes = vec![
            change(1, 0, Transition::Updated, AnomalyKind::LevelShift),
            change(2, 1, Transition::Cleared, AnomalyKind::LevelShift),
        ];
        m.epoch_closed(8, 2400, 0.25, &EpochSummary::default(), &changes, &[]);
        let t = m.encode();
        assert_eq!(value(&t, "fleetwatch_epochs_closed_total"), Some(2.0));
        assert_eq!(value(&t, "fleetwatch_last_epoch"), Some(8.0));
        assert_eq!(
            value(&t, "fleetwatch_last_epoch_start_seconds"),
            Some(2400.0)
        );
        assert_eq!(value(&t, "fleetwatch_records_total"), Some(10.0));
        assert_eq!(value(&t, "fleetwatch_late_records_total"), Some(1.0));
        assert_eq!(value(&t, "fleetwatch_series_scored_total"), Some(200.0));
        assert_eq!(
            value(&t, "fleetwatch_dead_lettered_total{reason=\"malformed\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "fleetwatch_dead_lettered_total{reason=\"duplicate\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                "fleetwatch_changes_total{status=\"raised\",kind=\"spike\",level=\"customer\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                "fleetwatch_changes_total{status=\"updated\",kind=\"level_shift\",level=\"feature\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                "fleetwatch_open_alerts{kind=\"spike\",level=\"feature\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &t,
                "fleetwatch_open_alerts{kind=\"level_shift\",level=\"feature\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                "fleetwatch_open_alerts{kind=\"spike\",level=\"customer\"}"
            ),
            Some(1.0)
        );
        assert_eq!(value(&t, "fleetwatch_epoch_seconds_count"), Some(2.0));
        assert_eq!(value(&t, "fleetwatch_epoch_seconds_sum"), Some(0.75));
        assert!(value(&t, "fleetwatch_resident_memory_bytes").is_some_and(|v| v > 0.0));
    }
}
