//! The dataflow spec: a `dataflows/*.toml` file naming the features, the epoch and lateness policy, the
//! detector and its parameters, and the alerting rules. One spec describes one deployment of the pipeline.
//!
//! ```toml
//! name = "home-wifi"
//! [epoch]
//! length_seconds = 300
//! allowed_lateness_seconds = 60
//! late_policy = "next_epoch"
//! [detector]
//! name = "seasonal-robust"
//! [[features]]
//! name = "rssi_dbm"
//! ```

use serde::Deserialize;
use std::path::Path;

use crate::record::MAX_FEATURES;

/// Errors reading or validating a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("spec {path} is not valid TOML for a fleetwatch dataflow: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("spec {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("spec {path}: {error}")]
    GlobalModel {
        path: String,
        error: Box<crate::model::global::GlobalModelError>,
    },
}

/// What to do with a record carrying a feature the spec does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFeaturePolicy {
    /// The whole record goes to the dead-letter output (a producer is sending something unexpected).
    #[default]
    DeadLetter,
    /// The unknown field is ignored and the rest of the record is used.
    Ignore,
}

/// What to do with a record whose epoch has already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Fold it into the first epoch still open in its partition (counted as late).
    #[default]
    NextEpoch,
    /// Send it to the dead-letter output (counted as late and as dead-lettered).
    DeadLetter,
}

/// How a feature's raw values become the series the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// The value itself (signal strength, latency, utilisation...).
    #[default]
    Level,
    /// The increase since the previous log of the customer (monotone counters such as uptime); a decrease is
    /// a counter reset.
    Rate,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Customer ids must start with this (empty: any id of the allowed characters).
    #[serde(default)]
    pub customer_id_prefix: String,
    #[serde(default)]
    pub unknown_features: UnknownFeaturePolicy,
    /// A record more than this far ahead of its partition's watermark is refused as an absurd timestamp.
    #[serde(default = "default_future_skew")]
    pub max_future_skew_seconds: u64,
    /// Records before this Unix time are refused as absurd.
    #[serde(default = "default_min_ts")]
    pub min_timestamp: i64,
    /// Records at or after this Unix time are refused as absurd.
    #[serde(default = "default_max_ts")]
    pub max_timestamp: i64,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            customer_id_prefix: String::new(),
            unknown_features: UnknownFeaturePolicy::default(),
            max_future_skew_seconds: default_future_skew(),
            min_timestamp: default_min_ts(),
            max_timestamp: default_max_ts(),
        }
    }
}

fn default_future_skew() -> u64 {
    86_400
}
fn default_min_ts() -> i64 {
    946_684_800 // 2000-01-01
}
fn default_max_ts() -> i64 {
    4_102_444_800 // 2100-01-01
}

/// The global model (`[global_model]`, `model::global`): one network shared by the fleet whose residual,
/// calibrated per series, is each feature's `relationship` evidence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalModelSpec {
    /// The weights (`fleetwatch train --out`), relative to the spec's folder; the embedded spec's are built in.
    pub weights: String,
    /// Off: the weights are neither loaded nor used (the per-series model alone).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The relationship evidence's bar is `margin` × the series' own threshold on its residual (1: the same
    /// design rate as its point evidence).
    #[serde(default = "default_global_margin")]
    pub margin: f64,
}

fn default_true() -> bool {
    true
}

fn default_global_margin() -> f64 {
    1.0
}

/// Global model weights built into the binary, by the file name a spec gives (for the embedded specs).
pub const EMBEDDED_WEIGHTS: &[(&str, &[u8])] = &[(
    "home-wifi.safetensors",
    include_bytes!("../dataflows/home-wifi.safetensors"),
)];

/// Checkpoints (used when a run is given `--checkpoint-dir`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// A checkpoint after every epoch `e` with `(e + 1) % every == 0` (`--checkpoint-every` overrides).
    #[serde(default = "default_checkpoint_every")]
    pub every: u64,
}

fn default_checkpoint_every() -> u64 {
    crate::checkpoint::DEFAULT_EVERY
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            every: default_checkpoint_every(),
        }
    }
}

/// Network-element and region incidents (`[incidents]`, used with `run --topology`; the equations and the
/// meaning of each bar are in docs/model.md, "Network-element incidents"). Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentSpec {
    /// Z: the bar of the count tests (members missing, members alerting), in standard deviations.
    pub count_bar: f64,
    /// D: the bar of the congestion evidence `J` (members moving a little together on several features).
    pub congestion_bar: f64,
    /// At least this many members missing (or alerting) for the count evidence to count.
    pub min_members: u32,
    /// A score at this multiple of 1 makes an incident critical.
    pub critical_ratio: f64,
    /// An incident clears after `clear_epochs` epochs in a row with its score below `clear_ratio`.
    pub clear_ratio: f64,
    pub clear_epochs: u8,
    /// After a congestion, a move of its features the other way within this many epochs is its way back.
    pub recovery_epochs: u64,
    /// A region's element is affected when its incident is open or its score is at least this.
    pub region_affected_at: f64,
    /// At least this many elements affected for a region incident.
    pub region_min_elements: u32,
}

impl Default for IncidentSpec {
    fn default() -> Self {
        let e = crate::model::incident::IncidentParams::default();
        let r = crate::model::incident::RegionParams::default();
        IncidentSpec {
            count_bar: e.count_bar as f64,
            congestion_bar: e.shift_bar as f64,
            min_members: e.min_members,
            critical_ratio: e.rules.critical_ratio as f64,
            clear_ratio: e.rules.clear_ratio as f64,
            clear_epochs: e.rules.clear_epochs,
            recovery_epochs: e.recovery_epochs,
            region_affected_at: r.affected_at as f64,
            region_min_elements: r.min_elements,
        }
    }
}

impl IncidentSpec {
    /// The element and region parameters this table sets (the rest at their defaults).
    pub fn params(
        &self,
    ) -> (
        crate::model::incident::IncidentParams,
        crate::model::incident::RegionParams,
    ) {
        let mut e = crate::model::incident::IncidentParams {
            count_bar: self.count_bar as f32,
            shift_bar: self.congestion_bar as f32,
            min_members: self.min_members,
            recovery_epochs: self.recovery_epochs,
            ..Default::default()
        };
        e.rules.critical_ratio = self.critical_ratio as f32;
        e.rules.clear_ratio = self.clear_ratio as f32;
        e.rules.clear_epochs = self.clear_epochs;
        let r = crate::model::incident::RegionParams {
            affected_at: self.region_affected_at as f32,
            count_bar: e.count_bar,
            min_elements: self.region_min_elements,
            rules: e.rules,
            recovery_epochs: e.recovery_epochs,
            ..Default::default()
        };
        (e, r)
    }

    fn validate(&self) -> Result<(), String> {
        for (name, v, lo, hi) in [
            ("incidents.count_bar", self.count_bar, 1.0, 100.0),
            ("incidents.congestion_bar", self.congestion_bar, 1.0, 100.0),
            ("incidents.critical_ratio", self.critical_ratio, 1.0, 100.0),
            ("incidents.clear_ratio", self.clear_ratio, 0.01, 1.0),
            (
                "incidents.region_affected_at",
                self.region_affected_at,
                0.01,
                1.0,
            ),
        ] {
            if !(v.is_finite() && (lo..=hi).contains(&v)) {
                return Err(format!("{name} = {v} must be in [{lo}, {hi}]"));
            }
        }
        if self.min_members == 0 || self.region_min_elements == 0 || self.clear_epochs == 0 {
            return Err(
                "incidents.min_members, region_min_elements and clear_epochs must be at least 1"
                    .into(),
            );
        }
        if self.recovery_epochs > 100_000 {
            return Err("incidents.recovery_epochs must be at most 100000".into());
        }
        Ok(())
    }
}

/// How a run consumes and produces Kafka (used with `kafka://` inputs and outputs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// The consumer group whose offsets the run commits (default: `fleetwatch-<spec name>`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// A partition caught up with the broker and silent this long stops holding epochs open.
    #[serde(default = "default_idle_partition")]
    pub idle_partition_seconds: f64,
    /// The wall-clock guard: an epoch held open this long while later data exists is closed with what
    /// arrived (its summary says `"closed_by_guard":true`; what comes later for it is late).
    #[serde(default = "default_epoch_timeout")]
    pub epoch_timeout_seconds: f64,
    /// librdkafka properties for every client of the run (TLS, SASL, timeouts; see
    /// [`crate::kafka_properties`]). Secrets are refused here: they go in `secret_files`.
    #[serde(default)]
    pub properties: toml::Table,
    /// Property → file holding its value (`sasl.password = "/run/secrets/kafka"`), read at start.
    #[serde(default)]
    pub secret_files: toml::Table,
}

impl Default for KafkaSpec {
    fn default() -> Self {
        KafkaSpec {
            group_id: None,
            idle_partition_seconds: default_idle_partition(),
            epoch_timeout_seconds: default_epoch_timeout(),
            properties: toml::Table::new(),
            secret_files: toml::Table::new(),
        }
    }
}

fn default_idle_partition() -> f64 {
    30.0
}
fn default_epoch_timeout() -> f64 {
    60.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSpec {
    #[serde(default = "default_epoch_len")]
    pub length_seconds: u64,
    #[serde(default = "default_lateness")]
    pub allowed_lateness_seconds: u64,
    #[serde(default)]
    pub late_policy: LatePolicy,
}

impl Default for EpochSpec {
    fn default() -> Self {
        EpochSpec {
            length_seconds: default_epoch_len(),
            allowed_lateness_seconds: default_lateness(),
            late_policy: LatePolicy::default(),
        }
    }
}

fn default_epoch_len() -> u64 {
    300
}
fn default_lateness() -> u64 {
    60
}

/// The detector: its registered name and its parameters (read by the detector itself).
#[derive(Debug, Clone, Deserialize)]
pub struct DetectorSpec {
    pub name: String,
    #[serde(flatten)]
    pub params: toml::Table,
}

impl Default for DetectorSpec {
    fn default() -> Self {
        DetectorSpec {
            name: "seasonal-robust".to_string(),
            params: toml::Table::new(),
        }
    }
}

/// Per-series alerting: calibrated thresholds and hysteresis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// Each side's threshold is `max(threshold_floor, threshold_margin · q · r^c(r))` over the series' own
    /// surprise quantiles, `q` that side's tail quantile, `r = q/q_lo` (see `model::alert`).
    #[serde(default = "d_floor")]
    pub threshold_floor: f64,
    #[serde(default = "d_margin")]
    pub threshold_margin: f64,
    /// The false-alarm rate each side's point threshold is extrapolated to, per 1,000 series-days: spread
    /// over a day's epochs, so the same spec means the same daily rate at any cadence (the default, 0.864,
    /// is 3·10⁻⁶ per observation at 5-minute epochs; hourly epochs get 12 times that per observation, 1-
    /// minute ones a fifth). What a series' threshold holds to on noise of the t family; real telemetry's
    /// other evidence and tails add to it (QUALITY.md, "Real telemetry").
    #[serde(default = "d_threshold_rate")]
    pub threshold_false_alarms_per_1000_series_days: f64,
    /// How much a heavy tail raises the bar for sustained evidence (shifts, variance): `(T/T_gauss)^e`.
    #[serde(default = "d_sustained_tail")]
    pub sustained_tail_exponent: f64,
    /// The lower surprise quantile's learning rate once a series is mature (255 observations), relative to
    /// its rate while young: below 1 the tail ratio `r`, and with it the threshold, is steadier.
    #[serde(default = "d_mature_lo_rate")]
    pub mature_lo_rate: f64,
    /// A series that started without a cohort prior raises from its 255th observation (21¼ hours at
    /// 5-minute epochs), before it has seen a whole day; until it has crossed three more quarter-day
    /// boundaries (q = 0..3) its score is divided by `1 + first_day_margin·(3 − q)/3`. 0: off. Default 1:
    /// on every real set it cut the raises in normal stretches (petshop-low 22.4 → 12.2 per 1,000 series-days)
    /// at no measurable cost to the labelled sets' recall (QUALITY.md, "Real telemetry").
    #[serde(default = "d_first_day_margin")]
    pub first_day_margin: f64,
    /// Self-calibration of the whole score: each series tracks `G`, the level its own score exceeds
    /// 1/256 of the time (every evidence kind, anomalies included), and a score counts only beyond
    /// `score_margin · G` (never below 1): a series whose ordinary life keeps crossing its bars (regime
    /// switches, autocorrelated or bursty residuals) earns a higher one. 0: off. Its two bytes are the
    /// detector state's last two, which seasonal-robust's range rule also uses: one or the other.
    #[serde(default = "d_score_margin")]
    pub score_margin: f64,
    /// The surprise quantiles learn from every observation of the series (not while sustained evidence
    /// builds up), points beyond the threshold and open alerts included: a series whose excursions recur
    /// learns that they are its normal. `false`: only from ordinary observations (no alert open, below the
    /// threshold), as NAB's single-anomaly series prefer (nab.toml).
    #[serde(default = "d_true")]
    pub calibrate_on_anomalies: bool,
    /// Customer-level alerts (`"level":"customer"`, feature `"*"`): the customer's features' fused score
    /// against the customer's own history of alert-level episodes, with the same hysteresis. Operators act
    /// on customers, not on twenty feature series.
    #[serde(default = "d_true")]
    pub customer_alerts: bool,
    /// Memory of recent point-wise evidence: each series remembers its largest recent `|z|/T`, decaying
    /// with this half-life, and a point excursion counts only beyond `memory_margin ×` that memory (never
    /// below 1): a recurring excursion (a daily batch job, a heavier tail than the calibration extrapolates)
    /// raises once, not every time. 0: off. Its two bytes are seasonal-robust's fast shift statistic's:
    /// one or the other.
    #[serde(default = "d_memory_half_life")]
    pub memory_half_life_hours: f64,
    #[serde(default = "d_memory_margin")]
    pub memory_margin: f64,
    /// An alert clears once the normalised score stays below this for `clear_epochs` epochs.
    #[serde(default = "d_clear_ratio")]
    pub clear_ratio: f64,
    #[serde(default = "d_clear_epochs")]
    pub clear_epochs: u8,
    /// A normalised score at or above this is `critical` (below: `warning`).
    #[serde(default = "d_critical")]
    pub critical_ratio: f64,
    /// A customer with no log for this many epochs is reported silent.
    #[serde(default = "d_silence")]
    pub silence_epochs: u32,
    /// After a detected reboot, raising is suppressed for this many epochs (models still learn).
    #[serde(default = "d_reboot_grace")]
    pub reboot_grace_epochs: u32,
    /// Feature whose decrease marks a reboot (a `rate` counter such as `uptime_s`); empty: none.
    #[serde(default)]
    pub reboot_feature: String,
}

impl AlertSpec {
    /// The point threshold's design false-alarm rate per observation at epochs of `epoch_seconds`:
    /// `threshold_false_alarms_per_1000_series_days` spread over a day's epochs.
    pub fn threshold_rate_per_observation(&self, epoch_seconds: u64) -> f64 {
        self.threshold_false_alarms_per_1000_series_days / 1000.0 * epoch_seconds as f64 / 86_400.0
    }
}

impl Default for AlertSpec {
    fn default() -> Self {
        AlertSpec {
            threshold_floor: d_floor(),
            threshold_margin: d_margin(),
            threshold_false_alarms_per_1000_series_days: d_threshold_rate(),
            sustained_tail_exponent: d_sustained_tail(),
            mature_lo_rate: d_mature_lo_rate(),
            first_day_margin: d_first_day_margin(),
            calibrate_on_anomalies: true,
            customer_alerts: true,
            score_margin: d_score_margin(),
            memory_half_life_hours: d_memory_half_life(),
            memory_margin: d_memory_margin(),
            clear_ratio: d_clear_ratio(),
            clear_epochs: d_clear_epochs(),
            critical_ratio: d_critical(),
            silence_epochs: d_silence(),
            reboot_grace_epochs: d_reboot_grace(),
            reboot_feature: String::new(),
        }
    }
}

fn d_floor() -> f64 {
    4.0
}
fn d_first_day_margin() -> f64 {
    1.0
}
fn d_threshold_rate() -> f64 {
    0.864
}
fn d_margin() -> f64 {
    1.4
}
fn d_sustained_tail() -> f64 {
    0.5
}
fn d_mature_lo_rate() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
fn d_score_margin() -> f64 {
    3.0
}
fn d_memory_half_life() -> f64 {
    72.0
}
fn d_memory_margin() -> f64 {
    1.5
}
fn d_clear_ratio() -> f64 {
    0.6
}
fn d_clear_epochs() -> u8 {
    3
}
fn d_critical() -> f64 {
    2.0
}
fn d_silence() -> u32 {
    4
}
fn d_reboot_grace() -> u32 {
    2
}

/// One feature of the logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(default)]
    pub transform: Transform,
    /// Free text for humans (unit, meaning).
    #[serde(default)]
    pub description: String,
    /// The values the feature cannot pass, `[lo, hi]` (a percentage: `[0, 100]`; a count: `[0, inf]`). A value
    /// that repeats at a bound is saturation (no loss, an idle radio, a pegged CPU), not a stuck sensor: such
    /// runs neither raise `stuck_value` nor teach the series what a benign run is.
    #[serde(default)]
    pub bounds: Option<[f64; 2]>,
}

/// A whole dataflow spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default)]
    pub epoch: EpochSpec,
    #[serde(default)]
    pub detector: DetectorSpec,
    #[serde(default)]
    pub alerting: AlertSpec,
    #[serde(default)]
    pub kafka: KafkaSpec,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub incidents: IncidentSpec,
    #[serde(default)]
    pub global_model: Option<GlobalModelSpec>,
    pub features: Vec<FeatureSpec>,
    /// The global model's loaded weights (`[global_model]`, when enabled and loaded).
    #[serde(skip)]
    pub global: Option<std::sync::Arc<crate::model::global::GlobalModel>>,
}

/// The spec that ships inside the binary: the home Wi-Fi router fleet of `dataflows/home-wifi.toml`.
pub const EMBEDDED_HOME_WIFI: &str = include_str!("../dataflows/home-wifi.toml");

/// The spec `fleetwatch eval --nab` uses by default: `dataflows/nab.toml`.
pub const EMBEDDED_NAB: &str = include_str!("../dataflows/nab.toml");

impl Spec {
    /// Reads and validates a spec file, and loads the global model's weights it names (beside it).
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let mut spec = Spec::load_without_model(path)?;
        spec.load_global_model(path.parent(), &path.display().to_string())?;
        Ok(spec)
    }

    /// Reads and validates a spec file without loading the global model's weights (`train` makes them).
    pub fn load_without_model(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Spec::parse_without_model(&text, &path.display().to_string())
    }

    /// Parses and validates spec text; `origin` names it in errors. A global model's weights are looked up
    /// among the built-in ones, then relative to the current directory.
    pub fn parse(text: &str, origin: &str) -> Result<Spec, SpecError> {
        let mut spec = Spec::parse_without_model(text, origin)?;
        spec.load_global_model(None, origin)?;
        Ok(spec)
    }

    /// Loads the `[global_model]` weights (when enabled), checked against the feature list: the file
    /// relative to `dir` (the spec's folder; the current directory without one), or when that does not exist
    /// (or no folder is given) and the name is one of the built-in weights, those.
    pub fn load_global_model(&mut self, dir: Option<&Path>, origin: &str) -> Result<(), SpecError> {
        use crate::model::global::GlobalModel;
        self.global = None;
        let Some(g) = self.global_model.as_ref().filter(|g| g.enabled) else {
            return Ok(());
        };
        let names: Vec<String> = self.features.iter().map(|f| f.name.clone()).collect();
        let margin = g.margin as f32;
        let builtin = EMBEDDED_WEIGHTS
            .iter()
            .find(|(n, _)| *n == g.weights)
            .map(|(_, b)| *b);
        let path = dir.unwrap_or(Path::new("")).join(&g.weights);
        // A copy of an embedded spec elsewhere keeps its built-in weights; a file beside it comes first.
        let loaded = match builtin {
            Some(bytes) if dir.is_none() || !path.exists() => {
                GlobalModel::from_bytes(bytes, &g.weights, &names, margin)
            }
            _ => GlobalModel::load(&path, &names, margin),
        }
        .map_err(|error| SpecError::GlobalModel {
            path: origin.to_string(),
            error: Box::new(error),
        })?;
        self.global = Some(std::sync::Arc::new(loaded));
        Ok(())
    }

    /// Whether `shadow` can run as a shadow variant of this spec (`run --shadow`): it reads the records this
    /// spec's source has parsed and epoched, so the features (names and order), `[input]` and `[epoch]`
    /// must be the same; everything the model does with them (detector, alerting, transforms, bounds, the
    /// global model) may differ. The error names the first difference.
    pub fn check_shadow(&self, shadow: &Spec) -> Result<(), String> {
        let names = |s: &Spec| {
            s.features
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>()
        };
        if names(self) != names(shadow) {
            return Err(format!(
                "its features [{}] differ from the run's [{}] (a shadow scores the same records: same \
                 names, same order)",
                names(shadow).join(", "),
                names(self).join(", ")
            ));
        }
        if self.input != shadow.input {
            return Err(
                "its [input] table differs from the run's (the run's source reads for both)".into(),
            );
        }
        if self.epoch != shadow.epoch {
            return Err(
                "its [epoch] table differs from the run's (the run's source cuts the epochs for both)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Switches the spec's `[global_model]` on and loads its weights (from `dir`, or built in for the
    /// embedded specs); `origin` names the spec in errors. An error if the spec has no `[global_model]`.
    pub fn enable_global_model(
        &mut self,
        dir: Option<&Path>,
        origin: &str,
    ) -> Result<(), SpecError> {
        match self.global_model.as_mut() {
            Some(g) => g.enabled = true,
            None => {
                return Err(SpecError::Invalid {
                    path: origin.to_string(),
                    message: "it has no [global_model] to switch on".into(),
                });
            }
        }
        self.load_global_model(dir, origin)
    }

    /// The per-series model alone: no `[global_model]` and no weights.
    pub fn drop_global_model(&mut self) {
        self.global_model = None;
        self.global = None;
    }

    /// Parses and validates spec text without loading the global model's weights.
    pub fn parse_without_model(text: &str, origin: &str) -> Result<Spec, SpecError> {
        let spec: Spec = toml::from_str(text).map_err(|source| SpecError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        spec.validate().map_err(|message| SpecError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(spec)
    }

    /// The embedded default spec.
    pub fn embedded() -> Spec {
        Spec::parse_embedded(EMBEDDED_HOME_WIFI, "embedded home-wifi.toml")
    }

    /// The embedded NAB spec (one feature, `value`).
    pub fn embedded_nab() -> Spec {
        Spec::parse_embedded(EMBEDDED_NAB, "embedded nab.toml")
    }

    fn parse_embedded(text: &str, origin: &str) -> Spec {
        // The embedded texts are validated by a unit test; a failure here is a build defect.
        match Spec::parse(text, origin) {
            Ok(s) => s,
            Err(e) => panic!("embedded spec is invalid: {e}"),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(g) = &self.global_model
            && !(g.margin > 0.0 && g.margin.is_finite())
        {
            return Err("global_model.margin must be a positive number".into());
        }
        if self.checkpoint.every == 0 {
            return Err("checkpoint.every must be at least 1".into());
        }
        self.incidents.validate()?;
        for (name, v) in [
            (
                "kafka.idle_partition_seconds",
                self.kafka.idle_partition_seconds,
            ),
            (
                "kafka.epoch_timeout_seconds",
                self.kafka.epoch_timeout_seconds,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return Err(format!("{name} must be a positive number of seconds"));
            }
        }
        if self.features.is_empty() {
            return Err("list at least one [[features]]".into());
        }
        if self.features.len() > MAX_FEATURES {
            return Err(format!(
                "{} features listed; at most {MAX_FEATURES} are supported",
                self.features.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.features {
            if f.name.is_empty() || f.name == "*" || f.name == "customer_id" || f.name == "ts" {
                return Err(format!("feature name {:?} is reserved or empty", f.name));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(format!("feature {:?} is listed twice", f.name));
            }
        }
        if self.epoch.length_seconds < 1 || self.epoch.length_seconds > 86_400 {
            return Err("epoch.length_seconds must be between 1 and 86400".into());
        }
        if self.input.min_timestamp >= self.input.max_timestamp {
            return Err("input.min_timestamp must be below input.max_timestamp".into());
        }
        if self.input.min_timestamp < 1 || self.input.max_timestamp > u32::MAX as i64 {
            return Err("input timestamps must lie within (1970, 2106]".into());
        }
        for f in &self.features {
            if let Some([lo, hi]) = f.bounds
                && lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
            {
                return Err(format!(
                    "feature {:?}: bounds must be [lo, hi] with lo < hi",
                    f.name
                ));
            }
        }
        let a = &self.alerting;
        if a.threshold_floor <= 0.0 || a.threshold_margin <= 0.0 {
            return Err("alerting thresholds must be positive".into());
        }
        // per observation it must stay below the 1.25 % tail the quantiles estimate (extrapolation, not
        // interpolation)
        let per_obs = a.threshold_rate_per_observation(self.epoch.length_seconds);
        if !(a.threshold_false_alarms_per_1000_series_days > 0.0 && per_obs <= 0.0125) {
            return Err(format!(
                "alerting.threshold_false_alarms_per_1000_series_days = {} must be positive and, per {} s epoch, \
                 at most 1.25 % of observations",
                a.threshold_false_alarms_per_1000_series_days, self.epoch.length_seconds
            ));
        }
        if !(a.mature_lo_rate > 0.0 && a.mature_lo_rate <= 1.0) {
            return Err("alerting.mature_lo_rate must be in (0, 1]".into());
        }
        if !(0.0..=4.0).contains(&a.first_day_margin) {
            return Err("alerting.first_day_margin must be in [0, 4]".into());
        }
        if !(a.score_margin == 0.0 || (1.0..=100.0).contains(&a.score_margin)) {
            return Err("alerting.score_margin must be 0 (off) or in [1, 100]".into());
        }
        let range_on = self
            .detector
            .params
            .get("range_tolerance")
            .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
            .is_some_and(|t| t > 0.0);
        if a.score_margin > 0.0 && range_on {
            return Err(format!(
                "alerting.score_margin = {} and detector range_tolerance exclude each other: the score \
                 calibration and the range rule share the last two bytes of the series' state; set one to 0",
                a.score_margin
            ));
        }
        if !(0.0..=8760.0).contains(&a.memory_half_life_hours) {
            return Err("alerting.memory_half_life_hours must be 0 (off) or at most 8760".into());
        }
        if !(1.0..=100.0).contains(&a.memory_margin) {
            return Err("alerting.memory_margin must be in [1, 100]".into());
        }
        let fast_on = self
            .detector
            .params
            .get("fast_cusum_h")
            .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
            .is_some_and(|t| t > 0.0);
        if a.memory_half_life_hours > 0.0 && (fast_on || range_on) {
            return Err(format!(
                "alerting.memory_half_life_hours = {} excludes detector fast_cusum_h and range_tolerance: \
                 the memory uses the state bytes of the fast shift statistic and of the range rule; set \
                 one of them to 0",
                a.memory_half_life_hours
            ));
        }
        if !(0.0..1.0).contains(&a.clear_ratio) {
            return Err("alerting.clear_ratio must be in [0, 1)".into());
        }
        if a.clear_epochs == 0 {
            return Err("alerting.clear_epochs must be at least 1".into());
        }
        if a.critical_ratio < 1.0 {
            return Err("alerting.critical_ratio must be at least 1".into());
        }
        if a.silence_epochs == 0 {
            return Err("alerting.silence_epochs must be at least 1".into());
        }
        if !a.reboot_feature.is_empty() {
            match self.features.iter().find(|f| f.name == a.reboot_feature) {
                None => {
                    return Err(format!(
                        "alerting.reboot_feature {:?} is not a listed feature",
                        a.reboot_feature
                    ));
                }
                Some(f) if f.transform != Transform::Rate => {
                    return Err(format!(
                        "alerting.reboot_feature {:?} must have transform = \"rate\"",
                        a.reboot_feature
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Index of a feature by name.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// Number of features.
    pub fn feature_count(&self) -> usize {
        self.features.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_spec_is_valid() {
        let s = Spec::embedded();
        assert_eq!(s.features.len(), 20);
        assert_eq!(s.epoch.length_seconds, 300);
        let n = Spec::embedded_nab();
        assert_eq!(n.features.len(), 1);
        assert_eq!(n.detector.name, s.detector.name);
        assert_eq!(n.alerting.clear_epochs, 96);
    }

    #[test]
    fn the_embedded_global_model_ships_off_and_switches_on() {
        let mut s = Spec::embedded();
        assert!(s.global_model.is_some() && s.global.is_none());
        s.enable_global_model(None, "embedded").unwrap();
        let g = s.global.as_ref().unwrap();
        assert_eq!(g.net.features, 20);
        let mut nab = Spec::embedded_nab();
        assert!(matches!(
            nab.enable_global_model(None, "nab"),
            Err(SpecError::Invalid { .. })
        ));
    }

    #[test]
    fn a_shadow_needs_the_same_features_input_and_epochs() {
        let s = Spec::embedded();
        let mut other = s.clone();
        other.alerting.clear_epochs += 1;
        other.drop_global_model();
        assert_eq!(s.check_shadow(&other), Ok(()));
        let mut renamed = s.clone();
        renamed.features[3].name = "x".into();
        assert!(s.check_shadow(&renamed).unwrap_err().contains("features"));
        let mut fewer = s.clone();
        fewer.features.pop();
        assert!(s.check_shadow(&fewer).is_err());
        let mut epochs = s.clone();
        epochs.epoch.allowed_lateness_seconds += 1;
        assert!(s.check_shadow(&epochs).unwrap_err().contains("[epoch]"));
        let mut input = s.clone();
        input.input.customer_id_prefix.push_str("x-");
        assert!(s.check_shadow(&input).unwrap_err().contains("[input]"));
        assert!(s.check_shadow(&Spec::embedded_nab()).is_err());
    }

    #[test]
    fn incident_bars_default_to_the_model_and_are_read_and_checked() {
        let (e, r) = Spec::embedded().incidents.params();
        assert_eq!(e, crate::model::incident::IncidentParams::default());
        assert_eq!(r, crate::model::incident::RegionParams::default());
        let text = "name='x'\n[incidents]\ncongestion_bar=8.5\ncount_bar=5\nclear_epochs=4\n\
                    region_min_elements=2\n[[features]]\nname='a'\n";
        let (e, r) = Spec::parse(text, "t").unwrap().incidents.params();
        assert_eq!(
            (e.shift_bar, e.count_bar, e.rules.clear_epochs),
            (8.5, 5.0, 4)
        );
        assert_eq!(
            (r.count_bar, r.min_elements, r.rules.clear_epochs),
            (5.0, 2, 4)
        );
        assert_eq!(
            e.min_scored, 5,
            "fields the table does not name keep their defaults"
        );
        for bad in [
            "congestion_bar=0.5",
            "count_bar=nan",
            "clear_ratio=1.5",
            "min_members=0",
            "region_affected_at=0",
        ] {
            let text = format!("name='x'\n[incidents]\n{bad}\n[[features]]\nname='a'\n");
            assert!(
                matches!(Spec::parse(&text, "t"), Err(SpecError::Invalid { .. })),
                "{bad}"
            );
        }
        let unknown = "name='x'\n[incidents]\ncongestion=8\n[[features]]\nname='a'\n";
        assert!(matches!(
            Spec::parse(unknown, "t"),
            Err(SpecError::Parse { .. })
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let bad = "name='x'\n[epoch]\nlenght_seconds=300\n[[features]]\nname='a'\n";
        assert!(matches!(
            Spec::parse(bad, "t"),
            Err(SpecError::Parse { .. })
        ));
        let dup = "name='x'\n[[features]]\nname='a'\n[[features]]\nname='a'\n";
        assert!(matches!(
            Spec::parse(dup, "t"),
            Err(SpecError::Invalid { .. })
        ));
        let none = "name='x'\nfeatures=[]\n";
        assert!(matches!(
            Spec::parse(none, "t"),
            Err(SpecError::Invalid { .. })
        ));
        let reboot = "name='x'\n[alerting]\nreboot_feature='a'\n[[features]]\nname='a'\n";
        assert!(matches!(
            Spec::parse(reboot, "t"),
            Err(SpecError::Invalid { .. })
        ));
        for bounds in ["[100, 0]", "[5, 5]", "[0, nan]"] {
            let text = format!("name='x'\n[[features]]\nname='a'\nbounds = {bounds}\n");
            assert!(
                matches!(Spec::parse(&text, "t"), Err(SpecError::Invalid { .. })),
                "{bounds}"
            );
        }
        for margin in ["-0.1", "5", "nan"] {
            let text = format!(
                "name='x'\n[alerting]\nfirst_day_margin = {margin}\n[[features]]\nname='a'\n"
            );
            assert!(
                matches!(Spec::parse(&text, "t"), Err(SpecError::Invalid { .. })),
                "{margin}"
            );
        }
        // The threshold's design rate: positive, and at most 1.25 % of observations at the spec's cadence
        // (1,000 per 1,000 series-days is 0.35 % of 5-minute observations, 4.2 % of hourly ones).
        for (rate, epoch, valid) in [
            ("0.864", 300, true),
            ("0", 300, false),
            ("-1", 300, false),
            ("nan", 300, false),
            ("1000", 300, true),
            ("1000", 3600, false),
        ] {
            let text = format!(
                "name='x'\n[epoch]\nlength_seconds = {epoch}\n[alerting]\n\
                 threshold_false_alarms_per_1000_series_days = {rate}\n[[features]]\nname='a'\n"
            );
            assert_eq!(
                Spec::parse(&text, "t").is_ok(),
                valid,
                "{rate} at {epoch} s"
            );
        }
        // The score calibration and the memory use state bytes the range rule (both) and the fast shift
        // statistic (the memory) also use: such specs are refused, unless the one or the other is off.
        let with = |detector: &str, alerting: &str| {
            format!(
                "name='x'\n[detector]\nname='seasonal-robust'\n{detector}\n[alerting]\n{alerting}\n\
                 [[features]]\nname='a'\n"
            )
        };
        for (detector, alerting, valid) in [
            (
                "range_tolerance = 0.05",
                "memory_half_life_hours = 0",
                false,
            ),
            ("range_tolerance = 0.05", "score_margin = 0", false),
            (
                "range_tolerance = 0.05",
                "score_margin = 0\nmemory_half_life_hours = 0",
                true,
            ),
            ("fast_cusum_h = 5", "", false),
            ("fast_cusum_h = 5", "memory_half_life_hours = 0", true),
            ("", "score_margin = 0.5", false),
            ("", "memory_margin = 0.9", false),
            ("", "", true),
        ] {
            assert_eq!(
                Spec::parse(&with(detector, alerting), "t").is_ok(),
                valid,
                "{detector} / {alerting}"
            );
        }
        let ok = "name='x'\n[[features]]\nname='a'\nbounds = [0, inf]\n";
        assert_eq!(
            Spec::parse(ok, "t").map(|s| s.features[0].bounds).ok(),
            Some(Some([0.0, f64::INFINITY]))
        );
    }
}
