//! The `fleetwatch` command line: argument parsing only; the work is in the library.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use fleetwatch::commands::{self, Layout, RunOptions};
use fleetwatch::generate::GenerateConfig;

#[global_allocator]
static GLOBAL: fleetwatch::memory::Recycling = fleetwatch::memory::Recycling;

/// Personalised anomaly detection for every (customer, feature) series of a device fleet, every epoch.
#[derive(Parser)]
#[command(name = "fleetwatch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant (run's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate a small fleet, run the embedded home Wi-Fi spec on it, print the anomaly changes and how
    /// they score against the injected labels. Needs nothing but this binary.
    Demo {
        /// Directory for the generated fleet and the outputs.
        #[arg(long, default_value = "fleetwatch-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        customers: usize,
        /// Epochs of 5 minutes (288 = one day).
        #[arg(long, default_value_t = 576)]
        epochs: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// How many change lines to print.
        #[arg(long, default_value_t = 25)]
        show: usize,
    },
    /// Run the pipeline over recorded-topic or CSV files, or live from Kafka.
    Run {
        /// Dataflow spec (TOML). Default: the embedded dataflows/home-wifi.toml.
        #[arg(long)]
        dataflow: Option<PathBuf>,
        /// Input files: recorded topics (JSON lines) or CSV (customer_id,ts,<feature>...), read in order; or
        /// one kafka://HOST:PORT/TOPIC[,TOPIC...] (feature `kafka`).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Where the anomaly changes and per-epoch summaries go: a file (JSON lines) or
        /// kafka://HOST:PORT/TOPIC (one message per change, keyed by customer).
        #[arg(long)]
        output: PathBuf,
        /// Where refused records go, with their reasons: a file (JSON lines), or with a Kafka output a
        /// kafka://HOST:PORT/TOPIC (the reason in the `reason` header).
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        /// Replay at this many times event time (1 = real time, 288 = a day in 5 minutes); default: as fast
        /// as possible.
        #[arg(long)]
        speed: Option<f64>,
        /// Kafka input: the consumer group that gets the committed offsets (default: the spec's
        /// kafka.group_id).
        #[arg(long)]
        group_id: Option<String>,
        /// Kafka input: stop once every partition has been caught up and silent this many seconds (default:
        /// run until stopped).
        #[arg(long)]
        until_idle: Option<f64>,
        /// Kafka output: send the per-epoch summaries and the end record to this topic (default: partition
        /// 0 of the output topic, keys `epoch` and `end`).
        #[arg(long)]
        summary_topic: Option<String>,
        /// Kafka output: partitions of the output topic if it must be created (default: the input topic's).
        #[arg(long)]
        output_partitions: Option<u32>,
        /// Worker threads (ignored with --cluster).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Cluster file (see cluster.toml); with --process.
        #[arg(long, requires = "process")]
        cluster: Option<PathBuf>,
        /// This process's index in the cluster file.
        #[arg(long, requires = "cluster")]
        process: Option<usize>,
        /// Leave wall-clock fields out of the output, so runs can be compared byte for byte.
        #[arg(long)]
        reproducible: bool,
        /// Write checkpoints into this directory, and resume from the last complete one found there
        /// (a restarted run continues exactly where the checkpoint left off; see README, "Operating").
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Epochs between checkpoints (default: the spec's checkpoint.every, 12).
        #[arg(long, requires = "checkpoint_dir")]
        checkpoint_every: Option<u64>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464): epochs, records, dead
        /// letters by reason, changes, open alerts, consumer lag, checkpoints, memory (README, "Metrics").
        /// In a cluster, process i serves on the port + i.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// The fleet's topology, CSV `customer,element,region` (as `generate` writes topology.csv):
        /// network-element incidents (`"type":"incident"` lines) when many members go silent or alert at
        /// once, or move together each a little; members' changes under an open incident name it.
        #[arg(long, value_name = "FILE")]
        topology: Option<PathBuf>,
        /// Changes to the topology while the run goes on, one JSON line (or Kafka message) each, in effect
        /// from the epoch of its ts: {"ts":…,"customer":"…","element":"…","region":"…"} places or moves a
        /// customer, {"ts":…,"customer":"…","remove":true} takes it out. A file (a replay), or
        /// kafka://HOST:PORT/TOPIC (read from its beginning: a compacted changelog). With or without
        /// --topology (where customers start).
        #[arg(long, value_name = "FILE|kafka://HOST:PORT/TOPIC")]
        topology_changes: Option<String>,
        /// With --topology (or --topology-changes): write an element's incident instead of the member alerts
        /// raised under it.
        #[arg(long)]
        group_incidents: bool,
        /// A shadow variant: this spec's model (other parameters, other weights, the global model off) runs
        /// on the same records in the same dataflow (one read, one exchange) and writes its changes to
        /// --shadow-output; compare the two with `fleetwatch compare`. Same features, [input] and [epoch]
        /// as the run's spec; not with --checkpoint-dir.
        #[arg(long, value_name = "SPEC", requires = "shadow_output")]
        shadow: Option<PathBuf>,
        /// Where the shadow's changes and summaries go (a file, JSON lines).
        #[arg(long, value_name = "FILE", requires = "shadow")]
        shadow_output: Option<PathBuf>,
        #[command(flatten)]
        serving: ServingArgs,
        #[command(flatten)]
        kafka_client: KafkaClientArgs,
    },
    /// Train the global model (one network shared by the fleet, personalised per series) on recorded
    /// topics or CSV exports; writes its weights (safetensors) and prints a JSON report of the losses.
    Train {
        /// Recorded-topic files or CSV exports.
        #[arg(long = "input", required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// The dataflow spec (default: the embedded home Wi-Fi spec): its features and per-series model.
        #[arg(long)]
        dataflow: Option<PathBuf>,
        /// The weights file to write (e.g. models/home-wifi.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Customer-epochs to sample (a tenth of the customers are held out for validation).
        #[arg(long, default_value_t = 300_000)]
        samples: usize,
        /// Passes over the training samples.
        #[arg(long, default_value_t = 12)]
        passes: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Hidden units (shared by every feature's output).
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        /// Write the JSON report here too.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Write a synthetic fleet with labelled anomalies (telemetry.jsonl, labels.jsonl, topology.csv).
    Generate {
        #[arg(long)]
        customers: usize,
        #[arg(long)]
        epochs: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// First epoch, RFC 3339 or Unix seconds (default 2026-11-02T00:00:00Z).
        #[arg(long)]
        start: Option<String>,
        /// Expected anomalies per customer per day.
        #[arg(long, default_value_t = 0.5)]
        anomaly_rate: f64,
        /// Fraction of customers that join mid-stream.
        #[arg(long, default_value_t = 0.05)]
        join_fraction: f64,
        /// Probability that a joiner's anomaly falls inside its first hour (cold-start measurement).
        #[arg(long, default_value_t = 0.0)]
        cold_start_rate: f64,
        /// Fraction of messages to corrupt (exercises the dead-letter path).
        #[arg(long, default_value_t = 0.0)]
        malformed_rate: f64,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// Epochs of anomaly-free history before the initial customers' first anomaly.
        #[arg(long, default_value_t = 288)]
        history_epochs: usize,
        /// Features per log (the first N of the home Wi-Fi set).
        #[arg(long, default_value_t = 20)]
        features: usize,
        /// Leave out the normal behaviours of real telemetry (slow wander, Wi-Fi channel regimes, away
        /// periods, bursts, coarse firmware): the fleets of the generator before them, byte for byte.
        #[arg(long)]
        without_normal_behaviours: bool,
        /// Leave out coupled features and their labelled relationship breaks (the fleets of the generator
        /// before them).
        #[arg(long)]
        without_relationships: bool,
        /// Expected element outages (every member silent) per network element per day.
        #[arg(long, default_value_t = 1.0 / 14.0)]
        outage_rate: f64,
        /// Expected element congestions per network element per day: most members' throughput down and
        /// latency up, each mildly (0.6–1.2 times its normal variation), for 6–24 epochs. Labelled per element
        /// in element_labels.jsonl and per member (kind `congestion`) in labels.jsonl.
        #[arg(long, default_value_t = 0.0)]
        congestion_rate: f64,
        /// Expected region faults per region (20 elements) per day: every element of the region has an
        /// outage or a congestion at once. Labelled per region in region_labels.jsonl.
        #[arg(long, default_value_t = 0.0)]
        region_fault_rate: f64,
    },
    /// Measure the whole pipeline on a fleet of a given size; prints one JSON object.
    Bench {
        #[arg(long)]
        customers: usize,
        #[arg(long, default_value_t = 20)]
        features: usize,
        #[arg(long)]
        epochs: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Epochs reported apart as warm-up.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Read this recorded topic instead of generating one.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Directory for the generated topic and the output (default: a temporary one, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Alert as home-wifi did before 2026-12-06: the fast shift statistic on, the memory and the
        /// shift/variance calibration (whose bytes it takes) off — the side-by-side cost of the two.
        #[arg(long)]
        fast_shift: bool,
        /// With the embedded spec's global model switched on (off by default): its cost, side by side with
        /// a run without it.
        #[arg(long)]
        global_model: bool,
        /// Run the spec without its global model as a shadow variant beside it (`run --shadow`): the cost
        /// of a shadow (with --global-model, the model's A/B in one dataflow).
        #[arg(long)]
        shadow: bool,
        /// Write checkpoints into this directory (and resume from the last complete one there: run twice
        /// to measure a restore).
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Epochs between checkpoints.
        #[arg(long, default_value_t = 12)]
        checkpoint_every: u64,
        /// The fleet's topology (as `generate` writes topology.csv): the cost of network-element incidents.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Topology changes (as `run --topology-changes` reads them, a file): the cost of a moving topology.
        #[arg(long)]
        topology_changes: Option<PathBuf>,
        #[command(flatten)]
        serving: ServingArgs,
    },
    /// Compare two runs' alerts over the same records (a run and its shadow variant): alerts in both, only
    /// in A, only in B, per kind and per feature; with labels, each run's eval figures beside them.
    Compare {
        /// A run's output (e.g. `run --output`).
        a: PathBuf,
        /// Another run's output (e.g. `run --shadow-output`).
        b: PathBuf,
        /// The generator's labels: each run's event scores (`eval --labels`).
        #[arg(long, conflicts_with = "points")]
        labels: Option<PathBuf>,
        /// Customer-level point labels, CSV `customer_id,ts,label`: each run's point scores (`eval --points`).
        #[arg(long)]
        points: Option<PathBuf>,
        /// With --points: the runs' input CSV export (the robust z-score baseline, where data ends).
        #[arg(long, requires = "points")]
        telemetry: Option<PathBuf>,
        /// Print a Markdown table instead of JSON.
        #[arg(long)]
        markdown: bool,
    },
    /// Score an output against labels (event-level precision, recall, F1, delay, false-alert rate), or run
    /// and score the Numenta Anomaly Benchmark (`--nab DIR --out OUT`).
    Eval {
        /// The generator's labels file (with `--alerts`).
        #[arg(long, requires = "alerts", conflicts_with_all = ["nab", "points"])]
        labels: Option<PathBuf>,
        /// A `fleetwatch run` output to score against `--labels` (event scoring) or `--points` (point
        /// scoring); alone, its raises per 1,000 series-days (an unlabelled set).
        #[arg(long)]
        alerts: Option<PathBuf>,
        /// Customer-level point labels, CSV `customer_id,ts,label` (real telemetry sets; with `--alerts`).
        #[arg(long, requires = "alerts")]
        points: Option<PathBuf>,
        /// The run's input CSV export (`customer_id,ts,<feature>...`): with `--points`, adds the streaming
        /// robust z-score baseline, its threshold chosen with the labels; alone, tells where each
        /// customer's data ends (raises after it are the recording's end, counted apart).
        #[arg(long, requires = "alerts")]
        telemetry: Option<PathBuf>,
        /// The baseline's trailing window, in values of each series.
        #[arg(long, default_value_t = fleetwatch::pointeval::BASELINE_WINDOW)]
        baseline_window: usize,
        /// NAB's root folder (holding data/, labels/, config/): run the model over its 58 series and score
        /// them with NAB's rules; prints {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}.
        #[arg(long, requires = "out")]
        nab: Option<PathBuf>,
        /// Where NAB results go (`OUT/fleetwatch/<category>/fleetwatch_<file>.csv`, score tables, summary).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The dataflow spec whose detector and alerting run on NAB (default: the embedded
        /// dataflows/nab.toml).
        #[arg(long)]
        dataflow: Option<PathBuf>,
        /// Score another detector's per-row results in NAB's layout (DIR/<category>/<detector>_<file>.csv)
        /// instead of running the model, e.g. NAB's own results/numenta.
        #[arg(long, requires_all = ["nab", "detector"])]
        results: Option<PathBuf>,
        /// The detector name of `--results`.
        #[arg(long, requires = "results")]
        detector: Option<String>,
        /// The generator's element faults (element_labels.jsonl): scores the run's incidents (recall,
        /// precision, delay, false incidents per 1,000 element-days, member raises per fault); with
        /// `--alerts` and `--topology`.
        #[arg(long, requires_all = ["alerts", "topology"], conflicts_with_all = ["labels", "points", "nab"])]
        element_labels: Option<PathBuf>,
        /// The topology the run was given (`run --topology`).
        #[arg(long, requires = "element_labels")]
        topology: Option<PathBuf>,
        /// The generator's region faults (region_labels.jsonl): scores the run's region-level incidents too.
        #[arg(long, requires = "element_labels")]
        region_labels: Option<PathBuf>,
    },
    /// Push a recorded topic (or a generated fleet) into a Kafka topic, each record to its own partition with
    /// its key and timestamp (idempotent producer). Prints a JSON report.
    #[cfg(feature = "kafka")]
    Produce {
        #[arg(long)]
        from: PathBuf,
        /// kafka://HOST:PORT/TOPIC (created with the file's partition count if missing).
        #[arg(long)]
        to: String,
        /// Messages per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        kafka_client: KafkaClientArgs,
    },
    /// Capture a Kafka topic, every partition from its beginning, into the recorded-topic format (partition,
    /// offset, timestamp, key, value). Prints a JSON report.
    #[cfg(feature = "kafka")]
    Record {
        /// kafka://HOST:PORT/TOPIC
        #[arg(long)]
        from: String,
        #[arg(long)]
        out: PathBuf,
        /// Stop after this many seconds without a new message.
        #[arg(long, default_value_t = 10.0)]
        until_idle: f64,
        #[command(flatten)]
        kafka_client: KafkaClientArgs,
    },
    /// Convert a real telemetry dataset (azure-vm-cpu, ms-cloudmon or petshop, detected from its layout) into
    /// one directory per set under OUT: telemetry.csv, points.csv (labelled sets), spec.toml, set.json.
    /// Prints a JSON summary.
    Import {
        /// The dataset's folder (e.g. ../shared/datasets/ms-cloudmon).
        #[arg(long)]
        dataset: PathBuf,
        /// Where the sets go (created if missing; existing files of a set are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw one customer's features as an SVG: observed values, the model's expected value and band, its
    /// alert spans, its element's incidents and, when given, labels. Replays the input (with the run's spec
    /// and topology) to see exactly what the run saw; prints a JSON summary.
    Plot {
        /// The run's input: recorded-topic or CSV files (several files are merged in event time).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// The customer to draw.
        #[arg(long)]
        customer: String,
        /// The run's dataflow spec (default: the embedded home Wi-Fi spec).
        #[arg(long)]
        dataflow: Option<PathBuf>,
        /// The run's topology: draws the incidents of the customer's element.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// The run grouped member alerts into incidents (`run --group-incidents`).
        #[arg(long, requires = "topology")]
        group_incidents: bool,
        /// Features to draw, comma-separated, or `all` (default: those with an alert or a label in the
        /// range; all with data when there is none).
        #[arg(long)]
        features: Option<String>,
        /// Start of the range drawn: Unix seconds or RFC 3339 (default: the run's first epoch).
        #[arg(long)]
        from: Option<String>,
        /// End of the range drawn, exclusive (default: after the run's last epoch).
        #[arg(long)]
        to: Option<String>,
        /// Labels to draw: the generator's labels.jsonl, or point labels CSV `customer_id,ts,label`.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Worker threads of the replay.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a self-contained HTML page of a run (changes per epoch, alerts by kind and feature, top customers
    /// and elements) to OUT/index.html; with the run's --input, also pictures of the top customers in
    /// OUT/plots/, linked from the page. Prints a JSON summary.
    Report {
        /// The run's output (`run --output`).
        #[arg(long)]
        changes: PathBuf,
        /// The directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Rows of the customer and element tables (and pictures drawn).
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// The run's input: draw the top customers (one replay of it).
        #[arg(long, num_args = 1..)]
        input: Vec<PathBuf>,
        /// The run's dataflow spec (default: the embedded home Wi-Fi spec).
        #[arg(long)]
        dataflow: Option<PathBuf>,
        /// The run's topology.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// The run grouped member alerts into incidents.
        #[arg(long, requires = "topology")]
        group_incidents: bool,
        /// Labels to draw on the pictures (labels.jsonl or point labels CSV).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Worker threads of the replay.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Start every process of a cluster file that lives on this host, with the given run arguments, and
    /// supervise them: when one fails, restart them (from the last checkpoint with --checkpoint-dir).
    Launch {
        #[arg(long)]
        cluster: PathBuf,
        /// Restarts after failures in a row before giving up (a cluster that ran 5 minutes resets the count).
        #[arg(long, default_value_t = 3)]
        max_restarts: u32,
        /// Seconds before the first restart, doubled for each further restart in a row (at most 30 s).
        #[arg(long, default_value_t = 1.0)]
        restart_backoff: f64,
        /// Arguments for `fleetwatch run` (after `--`).
        #[arg(last = true, required = true)]
        run_args: Vec<String>,
    },
}

/// What a run serves besides its changes (README, "Serving").
#[derive(clap::Args, Debug, Default)]
struct ServingArgs {
    /// Answer live queries at http://ADDR (GET /customers/{id}, /anomalies, /health), e.g.
    /// 127.0.0.1:8080; an address other than loopback needs --serve-token-file. In a cluster, process i
    /// serves on the port + i and redirects to the process that owns a customer.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// A file holding the bearer token every query must carry (`Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "FILE", requires = "serve")]
    serve_token_file: Option<PathBuf>,
    /// Write every scored series of an epoch as Parquet: DIR/epoch=E/part-W-of-P.parquet (customer,
    /// feature, observed, expected, lower, upper, score, alert), for DuckDB, Spark, pandas or Druid.
    #[arg(long, value_name = "DIR")]
    predictions: Option<PathBuf>,
    /// Write the predictions of every Nth epoch only (epochs that are multiples of N).
    #[arg(long, value_name = "N", requires = "predictions")]
    predictions_every: Option<u64>,
}

impl From<ServingArgs> for commands::ServingOptions {
    fn from(a: ServingArgs) -> Self {
        commands::ServingOptions {
            serve: a.serve,
            token_file: a.serve_token_file,
            predictions: a.predictions,
            predictions_every: a.predictions_every,
        }
    }
}

/// How Kafka clients authenticate and are tuned (README, "Kafka as operators run it").
#[derive(clap::Args, Debug, Default)]
struct KafkaClientArgs {
    /// A librdkafka property for every Kafka client, KEY=VALUE (repeatable; over the spec's
    /// [kafka.properties]), e.g. security.protocol=SASL_SSL. Secrets are refused here.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// A property whose value is read from a file, KEY=PATH (repeatable; over the spec's
    /// [kafka.secret_files]), e.g. sasl.password=/run/secrets/kafka-password.
    #[arg(long = "kafka-secret-file", value_name = "KEY=PATH")]
    secret_files: Vec<String>,
}

#[cfg(feature = "kafka")]
impl KafkaClientArgs {
    /// The brokers of `address` with these properties (for `produce` and `record`, which have no spec).
    fn brokers_for(
        self,
        mut address: fleetwatch::kafka::KafkaAddress,
    ) -> Result<fleetwatch::kafka::KafkaAddress> {
        let none = toml::Table::new();
        let p = fleetwatch::kafka_properties::KafkaProperties::resolve(
            &none,
            &none,
            &self.properties,
            &self.secret_files,
        )?;
        address.brokers = address.brokers.with_properties(p);
        Ok(address)
    }
}

/// Writes to standard output (with a newline after when `newline`); a reader that closed the pipe
/// (`fleetwatch eval … | head`) ends the program quietly with success, as Unix tools do, instead of a panic.
fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    let written = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = &written
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
    written
}

/// A line to standard output through [`write_stdout`].
macro_rules! out {
    () => {
        write_stdout(format_args!(""), true)?
    };
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*), true)?
    };
}

/// [`out!`] without the newline.
macro_rules! out_no_newline {
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*), false)?
    };
}

fn main() -> Result<()> {
    let refused = fleetwatch::memory::tune_system_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !refused.is_empty() {
        tracing::warn!(
            ?refused,
            "glibc refused allocator settings; running with its defaults for them"
        );
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            dir,
            customers,
            epochs,
            workers,
            show,
        } => {
            eprintln!(
                "generating {customers} customers x 20 features x {epochs} epochs into {} ...",
                dir.display()
            );
            let r = commands::demo(&dir, customers, epochs, workers).context("demo failed")?;
            out!("anomaly changes (first {show} of {}):", r.changes.len());
            for line in r.changes.iter().take(show) {
                out!("  {}", commands::pretty_change(line));
            }
            out!();
            out!(
                "{} epochs, {} logs, {} series scored, {} changes, {} dead-lettered, {:.1} s",
                r.run.epochs,
                r.run.records,
                r.run.series_scored,
                r.run.changes,
                r.run.dead_lettered,
                r.run.wall_seconds
            );
            out!(
                "against the injected labels: precision {:.3}  recall {:.3}  F1 {:.3}  median delay {} epochs  {:.2} false alerts per 1,000 series-days",
                r.eval.precision,
                r.eval.recall,
                r.eval.f1,
                r.eval
                    .median_delay_epochs
                    .map(|d| format!("{d}"))
                    .unwrap_or_else(|| "-".into()),
                r.eval.false_alerts_per_1000_series_days
            );
            let c = &r.compare.total;
            let rel = r.compare.by_kind.get("relationship");
            out!(
                "the global model (on in this run) against the spec's default (off), run beside it as a \
                 shadow: {} alerts with the model, {} without, {} only with it ({} of kind relationship), \
                 {} only without; recall {:.3} vs {:.3}, {:.2} vs {:.2} false alerts per 1,000 series-days",
                c.a,
                c.b,
                c.only_a,
                rel.map_or(0, |k| k.only_a),
                c.only_b,
                r.eval.recall,
                r.shadow_eval.recall,
                r.eval.false_alerts_per_1000_series_days,
                r.shadow_eval.false_alerts_per_1000_series_days
            );
            out!(
                "files: {0}/changes.jsonl, {0}/changes-without-global-model.jsonl, {0}/dead-letters.jsonl, \
                 {0}/labels.jsonl (fleetwatch compare {0}/changes.jsonl \
                 {0}/changes-without-global-model.jsonl --labels {0}/labels.jsonl --markdown)",
                r.dir.display()
            );
        }
        Command::Run {
            dataflow,
            input,
            output,
            dead_letter,
            workers,
            cluster,
            process,
            reproducible,
            speed,
            group_id,
            until_idle,
            summary_topic,
            output_partitions,
            checkpoint_dir,
            checkpoint_every,
            metrics,
            kafka_client,
            topology,
            topology_changes,
            group_incidents,
            shadow,
            shadow_output,
            serving,
        } => {
            if speed.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
                bail!("--speed must be a positive number");
            }
            let layout = match (cluster, process) {
                (Some(file), Some(index)) => Layout::Cluster { file, index },
                (None, None) => Layout::Threads(workers),
                _ => bail!("--cluster and --process go together"),
            };
            if let Some(addr) = &metrics {
                // In a cluster every process serves its own metrics: process i on the given port + i, so
                // the processes `launch` starts on one host do not collide.
                let addr = commands::offset_port(addr, process.unwrap_or(0), "--metrics")?;
                fleetwatch::metrics::serve(&addr)?;
            }
            // SIGTERM / SIGINT: stop after the open epoch (with a checkpoint); a second one exits at once.
            fleetwatch::stop::install_signal_handlers(true)
                .context("cannot install the SIGTERM / SIGINT handlers")?;
            let opts = RunOptions {
                dataflow,
                inputs: input,
                output,
                dead_letter,
                layout,
                reproducible,
                speed,
                kafka: commands::KafkaRunOptions {
                    group_id,
                    until_idle,
                    summary_topic,
                    output_partitions,
                    properties: kafka_client.properties,
                    secret_files: kafka_client.secret_files,
                },
                checkpoint_dir: checkpoint_dir.clone(),
                checkpoint_every,
                signals: true,
                topology,
                topology_changes,
                group_incidents,
                watch: None,
                serving: serving.into(),
                shadow: shadow
                    .zip(shadow_output)
                    .map(|(dataflow, output)| commands::ShadowOptions { dataflow, output }),
            };
            let report = match commands::run(&opts) {
                Ok(r) => r,
                Err(e) if e.is_peer_fault() => {
                    eprintln!(
                        "fleetwatch: {e}; stopping (exit status {})",
                        fleetwatch::cluster::EXIT_PEER_LOST
                    );
                    std::process::exit(fleetwatch::cluster::EXIT_PEER_LOST);
                }
                Err(e) => return Err(e).context("run failed"),
            };
            if let Some(s) = report.stopped_after {
                match &checkpoint_dir {
                    Some(d) => eprintln!(
                        "stopped after epoch {s}: checkpoint in {}; start the same command again to resume",
                        d.display()
                    ),
                    None => eprintln!(
                        "stopped after epoch {s} (no --checkpoint-dir: a restart begins again at the start \
                         of the inputs)"
                    ),
                }
            }
            if !report.writer {
                eprintln!(
                    "done in {:.2} s (process 0 writes the output)",
                    report.wall_seconds
                );
                return Ok(());
            }
            if let Some(c) = report.restored_from {
                eprintln!(
                    "resumed after epoch {c} (checkpoint loaded in {:.2} s)",
                    report.restore_seconds
                );
            }
            eprintln!(
                "{} epochs, {} logs ({} late), {} dead-lettered, {} series scored, {} changes in {:.2} s",
                report.epochs,
                report.records,
                report.late,
                report.dead_lettered,
                report.series_scored,
                report.changes,
                report.wall_seconds
            );
            if let Some(s) = &report.shadow {
                eprintln!(
                    "shadow: {} series scored, {} changes (fleetwatch compare OUTPUT SHADOW_OUTPUT)",
                    s.series_scored, s.changes
                );
            }
        }
        Command::Train {
            inputs,
            dataflow,
            out,
            samples,
            passes,
            seed,
            hidden,
            report,
        } => {
            let spec = match &dataflow {
                Some(p) => fleetwatch::spec::Spec::load_without_model(p)?,
                None => fleetwatch::spec::Spec::parse_without_model(
                    fleetwatch::spec::EMBEDDED_HOME_WIFI,
                    "embedded home-wifi.toml",
                )?,
            };
            let mut opts = fleetwatch::train::TrainOptions::new(inputs, spec, out);
            opts.samples = samples;
            opts.passes = passes;
            opts.seed = seed;
            opts.hidden = hidden;
            let r = fleetwatch::train::train(&opts)?;
            let text = serde_json::to_string_pretty(&r)?;
            if let Some(p) = report {
                std::fs::write(&p, format!("{text}\n"))
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            out!("{text}");
        }
        Command::Generate {
            customers,
            epochs,
            seed,
            out,
            start,
            anomaly_rate,
            join_fraction,
            cold_start_rate,
            malformed_rate,
            partitions,
            history_epochs,
            features,
            without_normal_behaviours,
            without_relationships,
            outage_rate,
            congestion_rate,
            region_fault_rate,
        } => {
            let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
            if !rate_ok(outage_rate) || !rate_ok(congestion_rate) || !rate_ok(region_fault_rate) {
                bail!(
                    "--outage-rate, --congestion-rate and --region-fault-rate must be non-negative numbers"
                );
            }
            let mut cfg = GenerateConfig {
                customers,
                epochs,
                seed,
                anomaly_rate,
                join_fraction,
                cold_start_rate,
                malformed_rate,
                partitions,
                history_epochs,
                features,
                normal_behaviours: !without_normal_behaviours,
                relationships: !without_relationships,
                outage_rate,
                congestion_rate,
                region_fault_rate,
                ..Default::default()
            };
            if let Some(s) = start {
                cfg.start = match s.parse::<i64>() {
                    Ok(t) => t,
                    Err(_) => {
                        fleetwatch::timefmt::parse_rfc3339(s.as_bytes()).with_context(|| {
                            format!("--start {s:?} is neither Unix seconds nor RFC 3339")
                        })?
                    }
                };
            }
            if partitions == 0 {
                bail!("--partitions must be at least 1");
            }
            let t = std::time::Instant::now();
            let r = commands::generate(&cfg, &out)?;
            eprintln!(
                "wrote {} messages ({:.1} MB), {} labels, {} element faults and {} region faults for {} customers x {} epochs in {:.2} s",
                r.messages,
                r.bytes as f64 / 1e6,
                r.labels,
                r.element_faults,
                r.region_faults,
                r.customers,
                r.epochs,
                t.elapsed().as_secs_f64()
            );
        }
        Command::Bench {
            customers,
            features,
            epochs,
            workers,
            warmup,
            seed,
            input,
            dir,
            fast_shift,
            global_model,
            shadow,
            checkpoint_dir,
            checkpoint_every,
            topology,
            topology_changes,
            serving,
        } => {
            let opts = fleetwatch::bench::BenchOptions {
                customers,
                features,
                epochs,
                workers,
                warmup,
                seed,
                input,
                dir,
                generator: std::env::current_exe().ok(),
                keep: false,
                fast_shift,
                global_model,
                shadow,
                checkpoint_dir,
                checkpoint_every,
                topology,
                topology_changes,
                serving: serving.into(),
            };
            let r = fleetwatch::bench::bench(&opts).context("bench failed")?;
            out!("{}", serde_json::to_string_pretty(&r)?);
        }
        Command::Compare {
            a,
            b,
            labels,
            points,
            telemetry,
            markdown,
        } => {
            let mut r = fleetwatch::compare::compare_files(&a, &b)?;
            if r.epochs_a != r.epochs_b {
                tracing::warn!(
                    "the outputs closed {} and {} epochs: were they run on the same records?",
                    r.epochs_a,
                    r.epochs_b
                );
            }
            if let Some(l) = &labels {
                r.eval_a = Some(serde_json::to_value(commands::eval(l, &a)?)?);
                r.eval_b = Some(serde_json::to_value(commands::eval(l, &b)?)?);
            }
            if let Some(p) = &points {
                let one = |x: &PathBuf| {
                    commands::eval_points(
                        x,
                        Some(p),
                        telemetry.as_deref(),
                        fleetwatch::pointeval::BASELINE_WINDOW,
                    )
                    .map_err(anyhow::Error::from)
                    .and_then(|v| Ok(serde_json::to_value(v)?))
                };
                r.eval_a = Some(one(&a)?);
                r.eval_b = Some(one(&b)?);
            }
            if markdown {
                out_no_newline!("{}", fleetwatch::compare::markdown(&r));
            } else {
                out!("{}", serde_json::to_string_pretty(&r)?);
            }
        }
        Command::Eval {
            labels,
            alerts,
            points,
            telemetry,
            baseline_window,
            nab,
            out,
            dataflow,
            results,
            detector,
            element_labels,
            topology,
            region_labels,
        } => match (nab, out, labels, alerts) {
            (_, _, _, Some(alerts)) if element_labels.is_some() => {
                let (Some(el), Some(topo)) = (element_labels, topology) else {
                    anyhow::bail!("--element-labels needs --topology");
                };
                let labels = fleetwatch::incidenteval::read_element_labels(&el)?;
                let regions = match &region_labels {
                    Some(p) => Some(fleetwatch::incidenteval::read_region_labels(p)?),
                    None => None,
                };
                let r = fleetwatch::incidenteval::evaluate_incidents(
                    &labels,
                    regions.as_deref(),
                    &alerts,
                    &topo,
                )?;
                out!("{}", serde_json::to_string_pretty(&r)?);
            }
            (Some(nab), Some(out), _, _) => {
                let given = results.as_deref().zip(detector.as_deref());
                let (r, _) = commands::eval_nab(&nab, &out, dataflow.as_deref(), given)?;
                out!("{}", serde_json::to_string(&r)?);
            }
            (_, _, Some(labels), Some(alerts)) => {
                let r = commands::eval(&labels, &alerts)?;
                out!("{}", serde_json::to_string_pretty(&r)?);
            }
            (_, _, None, Some(alerts)) => {
                let r = commands::eval_points(
                    &alerts,
                    points.as_deref(),
                    telemetry.as_deref(),
                    baseline_window,
                )?;
                out!("{}", serde_json::to_string_pretty(&r)?);
            }
            _ => anyhow::bail!("give --alerts (with --labels or --points), or --nab and --out"),
        },
        #[cfg(feature = "kafka")]
        Command::Produce {
            from,
            to,
            rate,
            kafka_client,
        } => {
            let to = kafka_client.brokers_for(fleetwatch::kafka::KafkaAddress::parse(&to)?)?;
            let r = fleetwatch::kafka::produce(&from, &to, rate)
                .with_context(|| format!("produce {} failed", from.display()))?;
            out!("{}", serde_json::to_string(&r)?);
        }
        #[cfg(feature = "kafka")]
        Command::Record {
            from,
            out,
            until_idle,
            kafka_client,
        } => {
            let from = kafka_client.brokers_for(fleetwatch::kafka::KafkaAddress::parse(&from)?)?;
            let idle = std::time::Duration::from_secs_f64(until_idle.max(0.1));
            let r = fleetwatch::kafka::record(&from, &out, idle)
                .with_context(|| format!("record into {} failed", out.display()))?;
            out!("{}", serde_json::to_string(&r)?);
        }
        Command::Import { dataset, out } => {
            let r = commands::import(&dataset, &out)
                .with_context(|| format!("import of {} failed", dataset.display()))?;
            out!("{}", serde_json::to_string(&r)?);
        }
        Command::Plot {
            input,
            customer,
            dataflow,
            topology,
            group_incidents,
            features,
            from,
            to,
            labels,
            workers,
            out,
        } => {
            let time = |s: Option<String>, what: &str| -> Result<Option<i64>> {
                s.map(|s| {
                    fleetwatch::pointeval::parse_ts(&s)
                        .with_context(|| format!("--{what} {s:?}: give Unix seconds or RFC 3339"))
                })
                .transpose()
            };
            let features = match features.as_deref() {
                None => fleetwatch::plot::FeatureChoice::Eventful,
                Some("all") => fleetwatch::plot::FeatureChoice::All,
                Some(list) => fleetwatch::plot::FeatureChoice::Named(
                    list.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                ),
            };
            let opts = commands::PlotOptions {
                replay: commands::ReplaySettings {
                    dataflow,
                    inputs: input,
                    topology,
                    group_incidents,
                    workers,
                },
                customer,
                features,
                from: time(from, "from")?,
                to: time(to, "to")?,
                labels,
                out,
            };
            let r = commands::plot(&opts)
                .with_context(|| format!("plot of {} failed", opts.customer))?;
            out!("{}", serde_json::to_string(&r)?);
        }
        Command::Report {
            changes,
            out,
            top,
            input,
            dataflow,
            topology,
            group_incidents,
            labels,
            workers,
        } => {
            let opts = commands::ReportOptions {
                changes,
                out,
                top,
                replay: (!input.is_empty()).then_some(commands::ReplaySettings {
                    dataflow,
                    inputs: input,
                    topology,
                    group_incidents,
                    workers,
                }),
                labels,
            };
            let r = commands::report(&opts)
                .with_context(|| format!("report of {} failed", opts.changes.display()))?;
            out!("{}", serde_json::to_string(&r)?);
        }
        Command::Launch {
            cluster,
            max_restarts,
            restart_backoff,
            run_args,
        } => {
            if !(restart_backoff.is_finite() && restart_backoff >= 0.0) {
                bail!("--restart-backoff must be a number of seconds");
            }
            // Signals are passed on to the processes (the first stops them gracefully, a second at once).
            fleetwatch::stop::install_signal_handlers(false)
                .context("cannot install the SIGTERM / SIGINT handlers")?;
            let exe = std::env::current_exe().context("cannot find this executable")?;
            let sup = fleetwatch::cluster::Supervision {
                max_restarts,
                backoff: std::time::Duration::from_secs_f64(restart_backoff),
                ..Default::default()
            };
            let r = fleetwatch::cluster::launch(&exe, &cluster, &run_args, &sup)?;
            eprintln!(
                "launch: all {} local processes finished{}{}",
                r.processes.len(),
                if r.restarts > 0 {
                    format!(" after {} restarts", r.restarts)
                } else {
                    String::new()
                },
                if r.stopped {
                    " (stopped on a signal)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
