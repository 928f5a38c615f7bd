//! `fleetwatch import`: converts the real telemetry datasets (`../shared/datasets/{azure-vm-cpu,ms-cloudmon,
//! petshop}`, each described by its `SOURCE.md`) into fleetwatch inputs.
//!
//! Every *set* becomes one directory `OUT/<set>/` holding
//!
//! * `telemetry.csv` — the CSV export `fleetwatch run` reads: `customer_id,ts,<feature>...`, `ts` in Unix
//!   seconds, one row per (customer, timestamp), sorted by `(ts, customer_id)` (one CSV file is one partition
//!   with an event-time watermark, so rows must come in time order); an empty field is a missing value;
//! * `points.csv` — labelled sets only: `customer_id,ts,label` (0/1), one row per telemetry row, same order;
//! * `spec.toml` — a dataflow spec named after the set: the epoch is the set's cadence, no lateness, the
//!   features with their physical bounds, and no `[detector]` or `[alerting]` (the defaults are measured);
//! * `set.json` — what the set is and how it was derived.
//!
//! | dataset | sets | customers |
//! |---|---|---|
//! | azure-vm-cpu (`vms.csv`) | `azure-vm-cpu` (5 min, `cpu_avg`, `cpu_max`) | `vm-<id>`; step k of n at 2024-01-01 + 300·(N − n + k) s (all end together) |
//! | petshop (`dataset/<scenario>/noissue/metrics.csv`) | `petshop-high`, `petshop-low` (5 min, 7 features) | the node, sanitised |
//! | ms-cloudmon (`data/<domain>/*.csv`) | one per cadence (`-1h`, `-1m`), and the 1-minute series in 5-minute buckets (`-5m`) | the file stem |
//!
//! Bad input is an [`ImportError`] naming the file and the line; nothing is skipped silently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::keys::{CUSTOMER_ID_CAP, CustomerId, stable_hash};
use crate::spec::{Spec, SpecError};

/// Where step 0 of every Azure VM is put: 2024-01-01T00:00:00Z (absolute time is lost upstream).
pub const AZURE_EPOCH0: i64 = 1_704_067_200;
/// The Azure trace's step, in seconds.
pub const AZURE_STEP: i64 = 300;
/// The bucket width the 1-minute ms-cloudmon series are averaged into.
pub const BUCKET_SECONDS: i64 = 300;
/// The spec's default `input.max_future_skew_seconds`: a set with a longer silence between two consecutive
/// timestamps gets a larger one in its spec (else the rows after the silence would be refused).
const DEFAULT_FUTURE_SKEW: i64 = 86_400;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Parse {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "{0}: not a dataset the importer knows (expected vms.csv (azure-vm-cpu), \
         data/<domain>/*.csv with *.csv-metadata.json (ms-cloudmon), or \
         dataset/<scenario>/noissue/metrics.csv (petshop))"
    )]
    UnknownDataset(String),
    #[error("the spec written for set {set} does not load: {source}")]
    Spec { set: String, source: SpecError },
}

fn io_err(path: &Path, source: std::io::Error) -> ImportError {
    ImportError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parse_err(origin: &str, line: u64, message: impl Into<String>) -> ImportError {
    ImportError::Parse {
        path: origin.to_string(),
        line,
        message: message.into(),
    }
}

fn invalid(origin: impl std::fmt::Display, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: origin.to_string(),
        message: message.into(),
    }
}

fn csv_err(origin: &str, e: csv::Error) -> ImportError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => ImportError::Io {
            path: origin.to_string(),
            source,
        },
        _ => parse_err(origin, line, message),
    }
}

fn record_line(r: &csv::StringRecord) -> u64 {
    r.position().map(|p| p.line()).unwrap_or(0)
}

/// A value cell: empty is missing (NaN); otherwise a finite number.
fn parse_value(cell: &str, origin: &str, line: u64, column: &str) -> Result<f64, ImportError> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(f64::NAN);
    }
    match cell.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(parse_err(
            origin,
            line,
            format!("{column} = {cell:?} is not a finite number"),
        )),
        Err(_) => Err(parse_err(
            origin,
            line,
            format!("{column} = {cell:?} is not a number"),
        )),
    }
}

/// The median of positive steps (the upper middle one for an even count); `None` without any.
pub fn median_step(mut diffs: Vec<i64>) -> Option<i64> {
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_unstable();
    Some(diffs[diffs.len() / 2])
}

fn steps(sorted_ts: &[i64]) -> impl Iterator<Item = i64> + '_ {
    sorted_ts.windows(2).map(|w| w[1] - w[0])
}

/// The datasets the importer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    AzureVmCpu,
    MsCloudmon,
    Petshop,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::AzureVmCpu => "azure-vm-cpu",
            DatasetKind::MsCloudmon => "ms-cloudmon",
            DatasetKind::Petshop => "petshop",
        }
    }
}

/// Sorted entries of a directory (files and folders), `[]` if it is not one.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        out.push(e.map_err(|e| io_err(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Decides which dataset `dir` holds, from its layout.
pub fn detect(dir: &Path) -> Result<DatasetKind, ImportError> {
    if dir.join("vms.csv").is_file() {
        return Ok(DatasetKind::AzureVmCpu);
    }
    for domain in list_dir(&dir.join("data"))? {
        for f in list_dir(&domain)? {
            if f.extension().is_some_and(|e| e == "csv")
                && domain
                    .join(format!("{}-metadata.json", file_name(&f)))
                    .is_file()
            {
                return Ok(DatasetKind::MsCloudmon);
            }
        }
    }
    for scenario in list_dir(&dir.join("dataset"))? {
        if scenario.join("noissue/metrics.csv").is_file() {
            return Ok(DatasetKind::Petshop);
        }
    }
    Err(ImportError::UnknownDataset(dir.display().to_string()))
}

/// One feature of a set.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub description: String,
    pub bounds: Option<[f64; 2]>,
}

impl Feature {
    fn new(name: &str, description: &str, bounds: Option<[f64; 2]>) -> Self {
        Feature {
            name: name.to_string(),
            description: description.to_string(),
            bounds,
        }
    }
}

const PERCENT: Option<[f64; 2]> = Some([0.0, 100.0]);
const NON_NEGATIVE: Option<[f64; 2]> = Some([0.0, f64::INFINITY]);

/// A set in memory, before it is written: rows in any order (written sorted by `(ts, customer_id)`).
#[derive(Debug, Clone)]
pub struct ImportedSet {
    pub name: String,
    pub dataset: String,
    pub cadence_seconds: i64,
    pub features: Vec<Feature>,
    /// Customer ids, indexed by the rows.
    pub customers: Vec<String>,
    /// `(ts, customer index)` per row.
    pub rows: Vec<(i64, u32)>,
    /// `rows.len() × features.len()` values, row-major; NaN = missing.
    pub values: Vec<f64>,
    /// One label per row for a labelled set.
    pub labels: Option<Vec<bool>>,
    pub notes: String,
    /// More fields for `set.json`.
    pub extra: Map<String, Value>,
}

impl ImportedSet {
    fn new(name: &str, dataset: DatasetKind, cadence: i64, features: Vec<Feature>) -> Self {
        ImportedSet {
            name: name.to_string(),
            dataset: dataset.name().to_string(),
            cadence_seconds: cadence,
            features,
            customers: Vec::new(),
            rows: Vec::new(),
            values: Vec::new(),
            labels: None,
            notes: String::new(),
            extra: Map::new(),
        }
    }

    fn push(&mut self, ts: i64, customer: u32, values: &[f64], label: Option<bool>) {
        self.rows.push((ts, customer));
        self.values.extend_from_slice(values);
        if let (Some(l), Some(labels)) = (label, self.labels.as_mut()) {
            labels.push(l);
        }
    }
}

/// What was written for one set (the importer's stdout line lists these).
#[derive(Debug, Clone, Serialize)]
pub struct SetSummary {
    pub name: String,
    pub dir: String,
    pub customers: usize,
    pub rows: usize,
    pub cadence_seconds: i64,
    pub features: Vec<String>,
    pub labelled: bool,
    /// Rows labelled 1 (labelled sets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomalous_points: Option<usize>,
    /// Empty cells of the features each customer reports (at least once).
    pub missing_values: usize,
    pub first_ts: i64,
    pub last_ts: i64,
    /// Set in the spec when the set has a silence longer than the default skew (86,400 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_future_skew_seconds: Option<i64>,
}

/// The importer's report, printed as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub dataset: DatasetKind,
    pub source: String,
    pub out: String,
    pub sets: Vec<SetSummary>,
    /// Parts of the dataset that give no set, and why.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// Imports the dataset in `dataset` into one directory per set under `out`.
pub fn import(dataset: &Path, out: &Path) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let kind = detect(dataset)?;
    tracing::info!(dataset = kind.name(), dir = %dataset.display(), "importing");
    let (sets, skipped) = match kind {
        DatasetKind::AzureVmCpu => (vec![read_azure(dataset)?], Vec::new()),
        DatasetKind::Petshop => read_petshop(dataset)?,
        DatasetKind::MsCloudmon => (read_cloudmon(dataset)?, Vec::new()),
    };
    for s in &skipped {
        tracing::warn!("skipped {s}");
    }
    fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let mut summaries = Vec::with_capacity(sets.len());
    for set in &sets {
        let s = write_set(set, &out.join(&set.name), &dataset.display().to_string())?;
        tracing::info!(
            set = %s.name,
            customers = s.customers,
            rows = s.rows,
            cadence = s.cadence_seconds,
            "set written"
        );
        summaries.push(s);
    }
    Ok(ImportReport {
        dataset: kind,
        source: dataset.display().to_string(),
        out: out.display().to_string(),
        sets: summaries,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Writing a set

fn create(path: &Path) -> Result<BufWriter<fs::File>, ImportError> {
    let f = fs::File::create(path).map_err(|e| io_err(path, e))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_bound(v: f64) -> String {
    if v == f64::INFINITY {
        "inf".into()
    } else if v == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{v}")
    }
}

/// The spec text of a set (no `[detector]`, no `[alerting]`: the defaults are what is measured).
pub fn spec_text(set: &ImportedSet, max_future_skew: Option<i64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `fleetwatch import` (set.json says how the set was derived). No [detector] or\n\
         # [alerting]: the detector's defaults are what is measured.\n"
    );
    let _ = writeln!(s, "name = {}", toml_str(&set.name));
    let _ = writeln!(
        s,
        "description = {}",
        toml_str(&format!(
            "{} ({} set, {} s cadence), imported by fleetwatch import",
            set.name, set.dataset, set.cadence_seconds
        ))
    );
    let _ = writeln!(s, "\n[input]\nunknown_features = \"dead_letter\"");
    if let Some(skew) = max_future_skew {
        let _ = writeln!(
            s,
            "# the set has a silence longer than the default 86400 s between two consecutive timestamps\n\
             max_future_skew_seconds = {skew}"
        );
    }
    let _ = writeln!(
        s,
        "\n[epoch]\nlength_seconds = {}\nallowed_lateness_seconds = 0",
        set.cadence_seconds
    );
    for f in &set.features {
        let _ = writeln!(s, "\n[[features]]\nname = {}", toml_str(&f.name));
        if !f.description.is_empty() {
            let _ = writeln!(s, "description = {}", toml_str(&f.description));
        }
        if let Some([lo, hi]) = f.bounds {
            let _ = writeln!(s, "bounds = [{}, {}]", toml_bound(lo), toml_bound(hi));
        }
    }
    s
}

fn write_value(w: &mut impl Write, v: f64) -> std::io::Result<()> {
    if v.is_nan() { Ok(()) } else { write!(w, "{v}") }
}

/// Writes `telemetry.csv`, `points.csv` (labelled), `spec.toml` and `set.json` into `dir`.
pub fn write_set(set: &ImportedSet, dir: &Path, source: &str) -> Result<SetSummary, ImportError> {
    let nf = set.features.len();
    if set.values.len() != set.rows.len() * nf
        || set
            .labels
            .as_ref()
            .is_some_and(|l| l.len() != set.rows.len())
        || set.rows.iter().any(|r| r.1 as usize >= set.customers.len())
    {
        return Err(invalid(&set.name, "rows, values and labels disagree"));
    }
    let mut ids = HashSet::with_capacity(set.customers.len());
    for c in &set.customers {
        CustomerId::parse(c.as_bytes(), b"")
            .map_err(|e| invalid(&set.name, format!("customer id {c:?}: {e}")))?;
        if !ids.insert(c.as_str()) {
            return Err(invalid(
                &set.name,
                format!("customer id {c:?} is used twice"),
            ));
        }
    }
    if set.rows.is_empty() {
        return Err(invalid(&set.name, "the set has no rows"));
    }
    // order: (ts, customer id)
    let mut by_id: Vec<u32> = (0..set.customers.len() as u32).collect();
    by_id.sort_by(|&a, &b| set.customers[a as usize].cmp(&set.customers[b as usize]));
    let mut rank = vec![0u32; set.customers.len()];
    for (r, &c) in by_id.iter().enumerate() {
        rank[c as usize] = r as u32;
    }
    let mut order: Vec<u32> = (0..set.rows.len() as u32).collect();
    order.sort_unstable_by_key(|&i| {
        let (ts, c) = set.rows[i as usize];
        (ts, rank[c as usize])
    });
    let mut max_gap = 0;
    for w in order.windows(2) {
        let (a, b) = (set.rows[w[0] as usize], set.rows[w[1] as usize]);
        if a == b {
            return Err(invalid(
                &set.name,
                format!(
                    "customer {} has two rows at ts {}",
                    set.customers[a.1 as usize], a.0
                ),
            ));
        }
        max_gap = max_gap.max(b.0 - a.0);
    }
    let first_ts = set.rows[order[0] as usize].0;
    let last_ts = set.rows[order[order.len() - 1] as usize].0;

    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tpath = dir.join("telemetry.csv");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| io_err(&p, e)
    };
    let mut w = create(&tpath)?;
    let mut header = String::from("customer_id,ts");
    for f in &set.features {
        header.push(',');
        header.push_str(&f.name);
    }
    writeln!(w, "{header}").map_err(io(&tpath))?;
    // missing: empty cells of the features a customer reports at all (a customer of a set with one feature
    // per source folder leaves the other folders' columns empty: not missing values)
    let mut reports = vec![vec![false; nf]; set.customers.len()];
    for (i, &(_, c)) in set.rows.iter().enumerate() {
        for (f, v) in set.values[i * nf..(i + 1) * nf].iter().enumerate() {
            reports[c as usize][f] |= !v.is_nan();
        }
    }
    let mut missing = 0usize;
    for &i in &order {
        let (ts, c) = set.rows[i as usize];
        write!(w, "{},{ts}", set.customers[c as usize]).map_err(io(&tpath))?;
        for (f, &v) in set.values[i as usize * nf..(i as usize + 1) * nf]
            .iter()
            .enumerate()
        {
            w.write_all(b",").map_err(io(&tpath))?;
            missing += (v.is_nan() && reports[c as usize][f]) as usize;
            write_value(&mut w, v).map_err(io(&tpath))?;
        }
        w.write_all(b"\n").map_err(io(&tpath))?;
    }
    w.flush().map_err(io(&tpath))?;

    let mut anomalous = None;
    if let Some(labels) = &set.labels {
        let ppath = dir.join("points.csv");
        let mut w = create(&ppath)?;
        writeln!(w, "customer_id,ts,label").map_err(io(&ppath))?;
        for &i in &order {
            let (ts, c) = set.rows[i as usize];
            let l = labels[i as usize] as u8;
            writeln!(w, "{},{ts},{l}", set.customers[c as usize]).map_err(io(&ppath))?;
        }
        w.flush().map_err(io(&ppath))?;
        anomalous = Some(labels.iter().filter(|&&l| l).count());
    }

    let skew = (max_gap > DEFAULT_FUTURE_SKEW).then(|| (max_gap / 86_400 + 1) * 86_400);
    let spath = dir.join("spec.toml");
    fs::write(&spath, spec_text(set, skew)).map_err(io(&spath))?;
    let spec = Spec::load(&spath).map_err(|source| ImportError::Spec {
        set: set.name.clone(),
        source,
    })?;
    if spec.epoch.length_seconds as i64 != set.cadence_seconds {
        return Err(invalid(
            spath.display(),
            "the epoch length is not the cadence",
        ));
    }

    let features: Vec<String> = set.features.iter().map(|f| f.name.clone()).collect();
    let mut meta = Map::new();
    meta.insert("name".into(), json!(set.name));
    meta.insert("dataset".into(), json!(set.dataset));
    meta.insert("cadence_seconds".into(), json!(set.cadence_seconds));
    meta.insert("customers".into(), json!(set.customers.len()));
    meta.insert("features".into(), json!(features));
    meta.insert("rows".into(), json!(set.rows.len()));
    meta.insert("labelled".into(), json!(set.labels.is_some()));
    meta.insert("notes".into(), json!(set.notes));
    if let Some(a) = anomalous {
        meta.insert("anomalous_points".into(), json!(a));
    }
    meta.insert("missing_values".into(), json!(missing));
    meta.insert("first_ts".into(), json!(first_ts));
    meta.insert("last_ts".into(), json!(last_ts));
    meta.insert("largest_step_seconds".into(), json!(max_gap));
    if let Some(s) = skew {
        meta.insert("max_future_skew_seconds".into(), json!(s));
    }
    meta.insert("source".into(), json!(source));
    for (k, v) in &set.extra {
        meta.insert(k.clone(), v.clone());
    }
    let jpath = dir.join("set.json");
    let text =
        serde_json::to_string_pretty(&Value::Object(meta)).map_err(|source| ImportError::Json {
            path: jpath.display().to_string(),
            source,
        })?;
    fs::write(&jpath, text + "\n").map_err(io(&jpath))?;

    Ok(SetSummary {
        name: set.name.clone(),
        dir: dir.display().to_string(),
        customers: set.customers.len(),
        rows: set.rows.len(),
        cadence_seconds: set.cadence_seconds,
        features,
        labelled: set.labels.is_some(),
        anomalous_points: anomalous,
        missing_values: missing,
        first_ts,
        last_ts,
        max_future_skew_seconds: skew,
    })
}

// ---------------------------------------------------------------------------------------------------------
// azure-vm-cpu

#[derive(Debug, Deserialize)]
struct VmRow {
    vm_id: String,
    group: String,
    #[serde(default)]
    period_hours: String,
    n_steps: usize,
    file: String,
}

/// A relative path that stays inside its root (no `..`, no absolute part).
fn inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(p))
}

/// One Azure VM file (`step,cpu_avg,cpu_max`): `(step, [cpu_avg, cpu_max])` rows in file order (a repeated
/// step is an error).
pub fn parse_azure_vm<R: Read>(r: R, origin: &str) -> Result<Vec<(i64, [f64; 2])>, ImportError> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(r);
    let header = rdr.headers().map_err(|e| csv_err(origin, e))?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| parse_err(origin, 1, format!("no {name} column in the header")))
    };
    let (cs, ca, cm) = (col("step")?, col("cpu_avg")?, col("cpu_max")?);
    let mut out = Vec::new();
    let mut seen: Vec<bool> = Vec::new();
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec).map_err(|e| csv_err(origin, e))? {
        let line = record_line(&rec);
        let step_text = rec.get(cs).unwrap_or("").trim();
        let step: i64 = step_text
            .parse()
            .ok()
            .filter(|s| (0..10_000_000).contains(s))
            .ok_or_else(|| {
                parse_err(
                    origin,
                    line,
                    format!("step {step_text:?} is not a step index"),
                )
            })?;
        let slot = step as usize;
        if seen.len() <= slot {
            seen.resize(slot + 1, false);
        }
        if std::mem::replace(&mut seen[slot], true) {
            return Err(parse_err(origin, line, format!("step {step} repeats")));
        }
        let avg = parse_value(rec.get(ca).unwrap_or(""), origin, line, "cpu_avg")?;
        let max = parse_value(rec.get(cm).unwrap_or(""), origin, line, "cpu_max")?;
        out.push((step, [avg, max]));
    }
    Ok(out)
}

fn read_azure(dir: &Path) -> Result<ImportedSet, ImportError> {
    let vms_path = dir.join("vms.csv");
    let origin = vms_path.display().to_string();
    let mut rdr = csv::Reader::from_path(&vms_path).map_err(|e| csv_err(&origin, e))?;
    let mut set = ImportedSet::new(
        "azure-vm-cpu",
        DatasetKind::AzureVmCpu,
        AZURE_STEP,
        vec![
            Feature::new(
                "cpu_avg",
                "average CPU utilisation in the 5-minute step, percent",
                PERCENT,
            ),
            Feature::new(
                "cpu_max",
                "maximum CPU utilisation in the 5-minute step, percent",
                PERCENT,
            ),
        ],
    );
    let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut periods = Map::new();
    let mut seen = HashSet::new();
    let mut rec = csv::StringRecord::new();
    let header = rdr.headers().map_err(|e| csv_err(&origin, e))?.clone();
    let mut vms = Vec::new();
    while rdr.read_record(&mut rec).map_err(|e| csv_err(&origin, e))? {
        let line = record_line(&rec);
        let vm: VmRow = rec
            .deserialize(Some(&header))
            .map_err(|e| parse_err(&origin, line, e.to_string()))?;
        vms.push((line, vm));
    }
    // Every VM's last step is put at the same time: the groups differ in length (8,004 and 8,400 steps),
    // and VMs that stopped while the others went on would read as customers gone silent.
    let last = vms.iter().map(|(_, vm)| vm.n_steps).max().unwrap_or(0) as i64;
    for (line, vm) in vms {
        let id = format!("vm-{}", vm.vm_id.trim());
        CustomerId::parse(id.as_bytes(), b"")
            .map_err(|e| parse_err(&origin, line, format!("customer id {id:?}: {e}")))?;
        if !seen.insert(id.clone()) {
            return Err(parse_err(
                &origin,
                line,
                format!("vm_id {} is listed twice", vm.vm_id),
            ));
        }
        let path = inside(dir, vm.file.trim()).ok_or_else(|| {
            parse_err(
                &origin,
                line,
                format!("file {:?} is not a path inside the dataset", vm.file),
            )
        })?;
        let vm_origin = path.display().to_string();
        let f = fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        let rows = parse_azure_vm(std::io::BufReader::new(f), &vm_origin)?;
        if rows.len() != vm.n_steps {
            return Err(invalid(
                &vm_origin,
                format!(
                    "{} rows, vms.csv line {line} says n_steps = {}",
                    rows.len(),
                    vm.n_steps
                ),
            ));
        }
        let c = set.customers.len() as u32;
        set.customers.push(id.clone());
        let offset = last - vm.n_steps as i64;
        for (step, v) in &rows {
            set.push(AZURE_EPOCH0 + AZURE_STEP * (offset + step), c, v, None);
        }
        let g = groups.entry(vm.group.trim().to_string()).or_default();
        g.0 += 1;
        g.1 += rows.len();
        if !vm.period_hours.trim().is_empty() {
            periods.insert(id, json!(vm.period_hours.trim()));
        }
    }
    set.notes = format!(
        "Azure Public Dataset V1 (via the DataCenterSim R package), one customer per VM (vm-<vm_id> of \
         vms.csv). Absolute time is lost upstream: step k of a VM with n steps is put at ts = {AZURE_EPOCH0} + \
         300*(N - n + k), N the longest VM's steps (2024-01-01T00:00:00Z + N - n + k steps: every VM's last \
         step at the same time), so the VMs share a clock only by construction and their daily phases are \
         unrelated. Values are the source's (percent), in shortest round-trip form. Unlabelled: \
         for false-alert rates."
    );
    set.extra.insert(
        "groups".into(),
        Value::Object(
            groups
                .into_iter()
                .map(|(g, (n, r))| (g, json!({"customers": n, "rows": r})))
                .collect(),
        ),
    );
    set.extra
        .insert("period_hours".into(), Value::Object(periods));
    Ok(set)
}

// ---------------------------------------------------------------------------------------------------------
// petshop

/// The petshop features, in the order of the CSV export.
pub const PETSHOP_FEATURES: [&str; 7] = [
    "latency_avg",
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
    "requests_sum",
    "availability_avg",
];

fn petshop_feature(metric: &str, statistic: &str) -> Option<usize> {
    Some(match (metric, statistic) {
        ("latency", "Average") => 0,
        ("latency", "p50") => 1,
        ("latency", "p90") => 2,
        ("latency", "p95") => 3,
        ("latency", "p99") => 4,
        ("requests", "Sum") => 5,
        ("availability", "Average") => 6,
        _ => return None,
    })
}

/// A petshop `metrics.csv`: nodes in column order, timestamps in row order, values `[row][node][feature]`
/// (NaN = missing, also for a (node, feature) the file has no column for).
#[derive(Debug, Clone, PartialEq)]
pub struct PetshopTable {
    pub nodes: Vec<String>,
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
}

impl PetshopTable {
    pub fn value(&self, row: usize, node: usize, feature: usize) -> f64 {
        let nf = PETSHOP_FEATURES.len();
        self.values[(row * self.nodes.len() + node) * nf + feature]
    }
}

/// Parses a petshop `metrics.csv`: the 4-row header (`microservice`, `metric`, `statistic`,
/// `unix_timestamp`), then one row per step, its first field float Unix seconds (rounded).
pub fn parse_petshop<R: Read>(r: R, origin: &str) -> Result<PetshopTable, ImportError> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).from_reader(r);
    let mut head: Vec<csv::StringRecord> = Vec::with_capacity(4);
    let mut rec = csv::StringRecord::new();
    for (i, want) in ["microservice", "metric", "statistic", "unix_timestamp"]
        .iter()
        .enumerate()
    {
        if !rdr.read_record(&mut rec).map_err(|e| csv_err(origin, e))? {
            return Err(parse_err(
                origin,
                i as u64 + 1,
                "the file ends inside its 4-row header",
            ));
        }
        if rec.get(0).map(str::trim) != Some(want) {
            return Err(parse_err(
                origin,
                record_line(&rec),
                format!("header row {} must start with {want:?}", i + 1),
            ));
        }
        head.push(rec.clone());
    }
    let nf = PETSHOP_FEATURES.len();
    let mut nodes: Vec<String> = Vec::new();
    let mut node_index: HashMap<String, usize> = HashMap::new();
    // column i + 1 → (node, feature)
    let mut columns = Vec::with_capacity(head[0].len().saturating_sub(1));
    let mut taken = HashSet::new();
    for i in 1..head[0].len() {
        let node = head[0].get(i).unwrap_or("").trim();
        let metric = head[1].get(i).unwrap_or("").trim();
        let statistic = head[2].get(i).unwrap_or("").trim();
        if node.is_empty() {
            return Err(parse_err(
                origin,
                1,
                format!("column {} has no node name", i + 1),
            ));
        }
        let f = petshop_feature(metric, statistic).ok_or_else(|| {
            parse_err(
                origin,
                3,
                format!(
                    "column {} ({node}): metric {metric:?} / statistic {statistic:?} is not one of \
                     latency Average/p50/p90/p95/p99, requests Sum, availability Average",
                    i + 1
                ),
            )
        })?;
        let n = *node_index.entry(node.to_string()).or_insert_with(|| {
            nodes.push(node.to_string());
            nodes.len() - 1
        });
        if !taken.insert((n, f)) {
            return Err(parse_err(
                origin,
                3,
                format!(
                    "column {}: {node} {metric} {statistic} appears twice",
                    i + 1
                ),
            ));
        }
        columns.push((n, f));
    }
    if nodes.is_empty() {
        return Err(parse_err(origin, 1, "the header names no node"));
    }
    let mut timestamps = Vec::new();
    let mut values = Vec::new();
    let mut seen_ts = HashSet::new();
    while rdr.read_record(&mut rec).map_err(|e| csv_err(origin, e))? {
        let line = record_line(&rec);
        let t = rec.get(0).unwrap_or("").trim();
        let ts = t
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && (0.0..4.0e9).contains(v))
            .ok_or_else(|| parse_err(origin, line, format!("timestamp {t:?} is not Unix seconds")))?
            .round() as i64;
        if !seen_ts.insert(ts) {
            return Err(parse_err(origin, line, format!("timestamp {ts} repeats")));
        }
        let base = values.len();
        values.resize(base + nodes.len() * nf, f64::NAN);
        for (i, &(n, f)) in columns.iter().enumerate() {
            let v = parse_value(rec.get(i + 1).unwrap_or(""), origin, line, &head[0][i + 1])?;
            values[base + n * nf + f] = v;
        }
        timestamps.push(ts);
    }
    if timestamps.is_empty() {
        return Err(invalid(origin, "no data rows after the 4-row header"));
    }
    Ok(PetshopTable {
        nodes,
        timestamps,
        values,
    })
}

/// A node name as a customer id: characters outside `[A-Za-z0-9._:-]` become `_`, runs of `_` collapse to
/// one, leading characters that are not a letter or digit go, and the result is cut to the id capacity
/// (23 bytes). May be empty.
pub fn sanitise_id(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for ch in name.chars() {
        let c = if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | ':' | '-') {
            ch
        } else {
            '_'
        };
        if c == '_' && s.ends_with('_') {
            continue;
        }
        s.push(c);
    }
    let start = s
        .find(|c: char| c.is_ascii_alphanumeric())
        .unwrap_or(s.len());
    let mut s = s[start..].to_string();
    s.truncate(CUSTOMER_ID_CAP); // ASCII only: any byte is a char boundary
    s
}

fn with_suffix(stem: &str, suffix: &str) -> String {
    let keep = CUSTOMER_ID_CAP - 1 - suffix.len();
    let mut s = stem[..stem.len().min(keep)].to_string();
    s.push('-');
    s.push_str(suffix);
    s
}

/// Customer ids for distinct names: [`sanitise_id`]; names whose ids would collide (or be empty) all get a
/// `-xxxx` disambiguator (4 hex digits of the name's stable hash, so a name keeps its id whatever else is in
/// the file), with a counter as the last resort.
pub fn assign_customer_ids(names: &[String]) -> Vec<String> {
    let bases: Vec<String> = names.iter().map(|n| sanitise_id(n)).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for b in &bases {
        *count.entry(b.as_str()).or_default() += 1;
    }
    let unique = |b: &str| !b.is_empty() && count.get(b) == Some(&1);
    let mut taken: HashSet<String> = bases.iter().filter(|b| unique(b)).cloned().collect();
    let mut out = Vec::with_capacity(names.len());
    for (name, base) in names.iter().zip(&bases) {
        if unique(base) {
            out.push(base.clone());
            continue;
        }
        let stem = if base.is_empty() { "id" } else { base.as_str() };
        let mut id = with_suffix(
            stem,
            &format!("{:04x}", stable_hash(name.as_bytes()) & 0xffff),
        );
        let mut n = 2u32;
        while taken.contains(&id) {
            id = with_suffix(stem, &n.to_string());
            n += 1;
        }
        taken.insert(id.clone());
        out.push(id);
    }
    out
}

fn petshop_set_name(scenario: &str) -> String {
    format!(
        "petshop-{}",
        scenario.replace("_traffic", "").replace('_', "-")
    )
}

fn read_petshop(dir: &Path) -> Result<(Vec<ImportedSet>, Vec<String>), ImportError> {
    let mut sets = Vec::new();
    let mut skipped = Vec::new();
    for scenario in list_dir(&dir.join("dataset"))? {
        if !scenario.is_dir() {
            continue;
        }
        let sname = file_name(&scenario);
        let path = scenario.join("noissue/metrics.csv");
        if !path.is_file() {
            skipped.push(format!(
                "petshop scenario {sname}: no noissue/metrics.csv (its issue snippets have no history)"
            ));
            continue;
        }
        let origin = path.display().to_string();
        let f = fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        let table = parse_petshop(std::io::BufReader::new(f), &origin)?;
        let mut sorted = table.timestamps.clone();
        sorted.sort_unstable();
        let cadence = median_step(steps(&sorted).collect())
            .ok_or_else(|| invalid(&origin, "fewer than two timestamps: no cadence"))?;
        let irregular = steps(&sorted).filter(|&d| d != cadence).count();
        let name = petshop_set_name(&sname);
        let features = PETSHOP_FEATURES
            .iter()
            .map(|&f| match f {
                "requests_sum" => {
                    Feature::new(f, "requests in the 5-minute step (count)", NON_NEGATIVE)
                }
                "availability_avg" => Feature::new(f, "availability, percent", PERCENT),
                _ => Feature::new(f, "latency, seconds", NON_NEGATIVE),
            })
            .collect();
        let mut set = ImportedSet::new(&name, DatasetKind::Petshop, cadence, features);
        set.customers = assign_customer_ids(&table.nodes);
        let nf = PETSHOP_FEATURES.len();
        let nn = table.nodes.len();
        for (r, &ts) in table.timestamps.iter().enumerate() {
            for n in 0..nn {
                let at = (r * nn + n) * nf;
                set.push(ts, n as u32, &table.values[at..at + nf], None);
            }
        }
        set.notes = format!(
            "PetShop {sname}/noissue/metrics.csv (normal period, no injected issue): one customer per node \
             (component), its name made a valid customer id (customer_names maps back). Features from the \
             (metric, statistic) header rows: latency Average/p50/p90/p95/p99 (s), requests Sum, \
             availability Average (%). Timestamps are the float Unix seconds rounded; median step \
             {cadence} s ({irregular} other steps). One row per node and step, empty where the source is \
             (latency and availability are empty when the node had no requests). The train/test issue \
             snippets are not imported (25 minutes each, no history). Unlabelled: for false-alert rates."
        );
        set.extra.insert(
            "customer_names".into(),
            Value::Object(
                set.customers
                    .iter()
                    .zip(&table.nodes)
                    .map(|(id, node)| (id.clone(), json!(node)))
                    .collect(),
            ),
        );
        set.extra.insert("scenario".into(), json!(sname));
        sets.push(set);
    }
    if sets.is_empty() {
        return Err(ImportError::UnknownDataset(dir.display().to_string()));
    }
    Ok((sets, skipped))
}

// ---------------------------------------------------------------------------------------------------------
// ms-cloudmon

/// One point of an ms-cloudmon series (`value` NaN = empty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts: i64,
    pub value: f64,
    pub label: bool,
}

/// What de-duplication found in one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeriesStats {
    pub source_rows: usize,
    pub duplicates_dropped: usize,
    pub duplicates_with_other_value: usize,
    pub duplicates_with_other_label: usize,
    pub empty_values: usize,
    pub out_of_order: usize,
}

/// An ms-cloudmon timestamp as Unix seconds, UTC: `2018-07-03 14:00:00` (no zone, read as UTC) or
/// `2018-06-13T00:00:00Z` (RFC 3339, any offset honoured); the CSV reader has removed any quotes.
pub fn parse_cloudmon_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    crate::timefmt::parse_rfc3339(s.as_bytes()).or_else(|| {
        let b = s.as_bytes();
        (b.len() == 19 || (b.len() > 20 && b[19] == b'.' && b[20..].iter().all(u8::is_ascii_digit)))
            .then(|| format!("{s}Z"))
            .and_then(|z| crate::timefmt::parse_rfc3339(z.as_bytes()))
    })
}

/// Parses one ms-cloudmon series (`TimeStamp,Value,Label`): points sorted by time, repeated timestamps
/// reduced to their first row (its value) with the largest label.
pub fn parse_cloudmon_series<R: Read>(
    r: R,
    origin: &str,
) -> Result<(Vec<Point>, SeriesStats), ImportError> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(r);
    let header = rdr.headers().map_err(|e| csv_err(origin, e))?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| parse_err(origin, 1, format!("no {name} column in the header")))
    };
    let (ct, cv, cl) = (col("TimeStamp")?, col("Value")?, col("Label")?);
    let mut stats = SeriesStats::default();
    let mut raw: Vec<Point> = Vec::new();
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec).map_err(|e| csv_err(origin, e))? {
        let line = record_line(&rec);
        let t = rec.get(ct).unwrap_or("");
        let ts = parse_cloudmon_ts(t).ok_or_else(|| {
            parse_err(origin, line, format!("TimeStamp {t:?} is not a timestamp"))
        })?;
        let value = parse_value(rec.get(cv).unwrap_or(""), origin, line, "Value")?;
        let label = match rec.get(cl).unwrap_or("").trim() {
            "0" => false,
            "1" => true,
            other => {
                return Err(parse_err(
                    origin,
                    line,
                    format!("Label {other:?} is not 0 or 1"),
                ));
            }
        };
        if raw.last().is_some_and(|p| p.ts > ts) {
            stats.out_of_order += 1;
        }
        raw.push(Point { ts, value, label });
    }
    stats.source_rows = raw.len();
    raw.sort_by_key(|p| p.ts); // stable: the first row of a timestamp stays first
    let mut points: Vec<Point> = Vec::with_capacity(raw.len());
    for p in raw {
        match points.last_mut() {
            Some(q) if q.ts == p.ts => {
                stats.duplicates_dropped += 1;
                let same = q.value == p.value || (q.value.is_nan() && p.value.is_nan());
                stats.duplicates_with_other_value += (!same) as usize;
                stats.duplicates_with_other_label += (q.label != p.label) as usize;
                q.label |= p.label;
            }
            _ => points.push(p),
        }
    }
    stats.empty_values = points.iter().filter(|p| p.value.is_nan()).count();
    Ok((points, stats))
}

/// Averages sorted, de-duplicated points into buckets of `width` seconds aligned to multiples of `width`:
/// the mean of the bucket's non-empty values (NaN if none), labelled if any point is; with the bucket's
/// point count.
pub fn bucket_points(points: &[Point], width: i64) -> Vec<(Point, usize)> {
    let mut out: Vec<(Point, usize)> = Vec::new();
    let mut sum = 0.0;
    let mut n_values = 0usize;
    let close = |out: &mut Vec<(Point, usize)>, sum: f64, n: usize| {
        if let Some(last) = out.last_mut() {
            last.0.value = if n > 0 { sum / n as f64 } else { f64::NAN };
        }
    };
    for p in points {
        let start = p.ts.div_euclid(width) * width;
        if out.last().is_none_or(|(b, _)| b.ts != start) {
            close(&mut out, sum, n_values);
            sum = 0.0;
            n_values = 0;
            out.push((
                Point {
                    ts: start,
                    value: f64::NAN,
                    label: false,
                },
                0,
            ));
        }
        if let Some((b, count)) = out.last_mut() {
            b.label |= p.label;
            *count += 1;
        }
        if !p.value.is_nan() {
            sum += p.value;
            n_values += 1;
        }
    }
    close(&mut out, sum, n_values);
    out
}

#[derive(Debug, Default, Deserialize)]
struct CsvwMetadata {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    notes: Vec<String>,
}

struct CloudSeries {
    id: String,
    points: Vec<Point>,
    stats: SeriesStats,
}

struct CloudFolder {
    name: String,
    cadence: i64,
    series: Vec<CloudSeries>,
    notes: Vec<String>,
}

fn cadence_label(c: i64) -> String {
    if c % 3600 == 0 {
        format!("{}h", c / 3600)
    } else if c % 60 == 0 {
        format!("{}m", c / 60)
    } else {
        format!("{c}s")
    }
}

fn read_cloudmon_folder(domain: &Path) -> Result<Option<CloudFolder>, ImportError> {
    let name = file_name(domain);
    let mut series = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for f in list_dir(domain)? {
        if !f.is_file() || f.extension().is_none_or(|e| e != "csv") {
            continue;
        }
        let origin = f.display().to_string();
        let id = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        CustomerId::parse(id.as_bytes(), b"").map_err(|e| {
            invalid(
                &origin,
                format!("the file stem {id:?} is not a customer id: {e}"),
            )
        })?;
        let meta_path = domain.join(format!("{}-metadata.json", file_name(&f)));
        if meta_path.is_file() {
            let text = fs::read(&meta_path).map_err(|e| io_err(&meta_path, e))?;
            let meta: CsvwMetadata =
                serde_json::from_slice(&text).map_err(|source| ImportError::Json {
                    path: meta_path.display().to_string(),
                    source,
                })?;
            if meta.url.as_deref().is_some_and(|u| u != file_name(&f)) {
                tracing::warn!(file = %meta_path.display(), url = ?meta.url, "metadata url names another file");
            }
            for n in meta.notes {
                if !notes.contains(&n) {
                    notes.push(n);
                }
            }
        } else {
            tracing::warn!(file = %origin, "no CSVW metadata next to the series");
        }
        let file = fs::File::open(&f).map_err(|e| io_err(&f, e))?;
        let (points, stats) = parse_cloudmon_series(std::io::BufReader::new(file), &origin)?;
        if points.is_empty() {
            return Err(invalid(&origin, "the series has no rows"));
        }
        series.push(CloudSeries { id, points, stats });
    }
    if series.is_empty() {
        return Ok(None);
    }
    let diffs: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.windows(2).map(|w| w[1].ts - w[0].ts))
        .collect();
    let cadence = median_step(diffs)
        .ok_or_else(|| invalid(domain.display(), "fewer than two timestamps: no cadence"))?;
    Ok(Some(CloudFolder {
        name,
        cadence,
        series,
        notes,
    }))
}

/// A folder's feature name: its name with every character but ASCII letters and digits as `_`, lower case.
fn feature_name(folder: &str) -> String {
    folder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn read_cloudmon(dir: &Path) -> Result<Vec<ImportedSet>, ImportError> {
    let mut folders = Vec::new();
    for domain in list_dir(&dir.join("data"))? {
        if domain.is_dir()
            && let Some(f) = read_cloudmon_folder(&domain)?
        {
            folders.push(f);
        }
    }
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for f in &folders {
        for s in &f.series {
            if let Some(other) = owner.insert(&s.id, &f.name) {
                return Err(invalid(
                    dir.join("data").display(),
                    format!(
                        "series {} exists in {other} and in {}: file stems must be unique to be customer ids",
                        s.id, f.name
                    ),
                ));
            }
        }
    }
    // every folder at its own cadence; folders finer than 5 minutes (dividing it) also in 5-minute buckets
    let mut groups: BTreeMap<i64, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, f) in folders.iter().enumerate() {
        groups.entry(f.cadence).or_default().push((i, false));
        if f.cadence < BUCKET_SECONDS && BUCKET_SECONDS % f.cadence == 0 {
            groups.entry(BUCKET_SECONDS).or_default().push((i, true));
        }
    }
    let mut sets = Vec::new();
    for (cadence, members) in groups {
        let name = format!("ms-cloudmon-{}", cadence_label(cadence));
        // One feature per folder: a folder is one metric broken down by entity (SOURCE.md), so its series
        // are a fleet of that metric, and the cohort priors and robust statistics of one feature never mix
        // a crash rate with a latency. Each customer reports its folder's feature only.
        let features = members
            .iter()
            .map(|&(fi, _)| {
                Feature::new(
                    &feature_name(&folders[fi].name),
                    &format!("{} (one series per entity)", folders[fi].name),
                    None,
                )
            })
            .collect();
        let mut set = ImportedSet::new(&name, DatasetKind::MsCloudmon, cadence, features);
        set.labels = Some(Vec::new());
        let mut folder_meta = Vec::new();
        let mut bucketed_any = false;
        let nf = members.len();
        let mut row = vec![f64::NAN; nf];
        for (slot, (fi, bucketed)) in members.into_iter().enumerate() {
            let f = &folders[fi];
            let (mut rows, mut anomalous, mut partial) = (0usize, 0usize, 0usize);
            let mut non_negative = true;
            let mut stats = SeriesStats::default();
            for s in &f.series {
                let c = set.customers.len() as u32;
                set.customers.push(s.id.clone());
                let pts: Vec<(Point, usize)> = if bucketed {
                    bucket_points(&s.points, BUCKET_SECONDS)
                } else {
                    s.points.iter().map(|p| (*p, 1)).collect()
                };
                let full = (BUCKET_SECONDS / f.cadence) as usize;
                for (p, n) in &pts {
                    row[slot] = p.value;
                    set.push(p.ts, c, &row, Some(p.label));
                    non_negative &= p.value.is_nan() || p.value >= 0.0;
                    anomalous += p.label as usize;
                    partial += (bucketed && *n != full) as usize;
                }
                rows += pts.len();
                stats.source_rows += s.stats.source_rows;
                stats.duplicates_dropped += s.stats.duplicates_dropped;
                stats.duplicates_with_other_value += s.stats.duplicates_with_other_value;
                stats.duplicates_with_other_label += s.stats.duplicates_with_other_label;
                stats.empty_values += s.stats.empty_values;
                stats.out_of_order += s.stats.out_of_order;
            }
            row[slot] = f64::NAN;
            if non_negative {
                set.features[slot].bounds = NON_NEGATIVE;
            }
            let mut m = json!({
                "folder": f.name,
                "feature": set.features[slot].name,
                "cadence_seconds": f.cadence,
                "series": f.series.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
                "rows": rows,
                "anomalous_points": anomalous,
                "source": stats,
                "notes": f.notes,
            });
            if bucketed {
                bucketed_any = true;
                m["bucketed_from_seconds"] = json!(f.cadence);
                m["partial_buckets"] = json!(partial);
            }
            folder_meta.push(m);
        }
        let folder_names: Vec<&str> = folder_meta
            .iter()
            .filter_map(|m| m["folder"].as_str())
            .collect();
        set.notes = format!(
            "Microsoft Cloud Monitoring Dataset, folders {} (median timestamp step per folder, see folders). \
             One customer per series file (its file stem); one feature per folder (the folder's name, \
             `-` as `_`), raw (a count, rate or latency depending on the folder): each customer reports its \
             folder's feature only. Both timestamp styles read as UTC (the Z ones are probably US local \
             time upstream). Repeated timestamps de-duplicated: the first row's value, the largest label. \
             An empty Value is an empty field and keeps its point label.{}",
            folder_names.join(", "),
            if bucketed_any {
                format!(
                    " Values averaged into {BUCKET_SECONDS} s buckets aligned to multiples of \
                     {BUCKET_SECONDS} s: a bucket's value is the mean of its non-empty values (empty if \
                     none), and it is labelled 1 if any of its points is."
                )
            } else {
                String::new()
            }
        );
        set.extra
            .insert("folders".into(), Value::Array(folder_meta));
        sets.push(set);
    }
    if sets.is_empty() {
        return Err(ImportError::UnknownDataset(dir.display().to_string()));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudmon_timestamp_styles() {
        // 2018-07-03T14:00:00Z = 1530626400
        assert_eq!(
            parse_cloudmon_ts("2018-07-03 14:00:00"),
            Some(1_530_626_400)
        );
        assert_eq!(
            parse_cloudmon_ts("2018-07-03T14:00:00Z"),
            Some(1_530_626_400)
        );
        assert_eq!(
            parse_cloudmon_ts(" 2018-06-13T00:00:00Z "),
            Some(1_528_848_000)
        );
        assert_eq!(
            parse_cloudmon_ts("2018-06-13 00:00:00.5"),
            Some(1_528_848_000)
        );
        for bad in [
            "",
            "2018-07-03",
            "2018-13-03 14:00:00",
            "2018-07-03 14:00",
            "yesterday",
        ] {
            assert_eq!(parse_cloudmon_ts(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cloudmon_series_quotes_duplicates_and_empty_values() {
        let text = "\"TimeStamp\",\"Value\",\"Label\"\n\
                    \"2018-06-13T00:01:00Z\",\"2.5\",\"0\"\n\
                    \"2018-06-13T00:00:00Z\",\"1\",\"0\"\n\
                    \"2018-06-13T00:01:00Z\",\"2.5\",\"1\"\n\
                    \"2018-06-13T00:02:00Z\",,\"1\"\n\
                    \"2018-06-13T00:02:00Z\",7,\"0\"\n";
        let (pts, st) = parse_cloudmon_series(text.as_bytes(), "t.csv").unwrap();
        let t0 = 1_528_848_000;
        assert_eq!(pts.len(), 3);
        assert_eq!((pts[0].ts, pts[0].value, pts[0].label), (t0, 1.0, false));
        // the duplicate keeps the first row's value, the max label
        assert_eq!(
            (pts[1].ts, pts[1].value, pts[1].label),
            (t0 + 60, 2.5, true)
        );
        assert_eq!(pts[2].ts, t0 + 120);
        assert!(pts[2].value.is_nan() && pts[2].label);
        assert_eq!(
            st,
            SeriesStats {
                source_rows: 5,
                duplicates_dropped: 2,
                duplicates_with_other_value: 1,
                duplicates_with_other_label: 2,
                empty_values: 1,
                out_of_order: 1,
            }
        );
        let bad = "TimeStamp,Value,Label\n2018-06-13 00:00:00,1,0\n2018-06-13 00:01:00,x,0\n";
        let e = parse_cloudmon_series(bad.as_bytes(), "bad.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.csv, line 3") && e.contains("not a number"),
            "{e}"
        );
        let bad = "TimeStamp,Value,Label\n2018-06-13 00:00:00,1,2\n";
        let e = parse_cloudmon_series(bad.as_bytes(), "bad.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("Label"), "{e}");
    }

    #[test]
    fn five_minute_buckets_by_hand() {
        let p = |ts, value, label| Point { ts, value, label };
        let pts = [
            p(600, 1.0, false),
            p(660, 2.0, false),
            p(720, f64::NAN, true),
            p(840, 6.0, false),
            p(900, f64::NAN, false),
            p(960, f64::NAN, false),
            p(1260, 4.0, false),
            p(1500, 0.5, false),
            p(1560, 1.0, true),
        ];
        let b = bucket_points(&pts, 300);
        assert_eq!(b.len(), 4);
        // [600, 900): (1 + 2 + 6) / 3 = 3, one labelled point → 1, 4 points
        assert_eq!(
            (b[0].0.ts, b[0].0.value, b[0].0.label, b[0].1),
            (600, 3.0, true, 4)
        );
        // [900, 1200): no value → empty, unlabelled
        assert_eq!((b[1].0.ts, b[1].0.label, b[1].1), (900, false, 2));
        assert!(b[1].0.value.is_nan());
        // [1200, 1500): 4
        assert_eq!(
            (b[2].0.ts, b[2].0.value, b[2].0.label, b[2].1),
            (1200, 4.0, false, 1)
        );
        // [1500, 1800): (0.5 + 1) / 2 = 0.75, labelled
        assert_eq!(
            (b[3].0.ts, b[3].0.value, b[3].0.label, b[3].1),
            (1500, 0.75, true, 2)
        );
        assert!(bucket_points(&[], 300).is_empty());
    }

    #[test]
    fn azure_vm_file() {
        let rows = parse_azure_vm(
            "step,cpu_avg,cpu_max\n0,9.626042,43.081236\n1,,6.6\n".as_bytes(),
            "v.csv",
        )
        .unwrap();
        assert_eq!(rows[0], (0, [9.626042, 43.081236]));
        assert!(rows[1].0 == 1 && rows[1].1[0].is_nan() && rows[1].1[1] == 6.6);
        let e = parse_azure_vm("step,cpu_avg,cpu_max\n0,1,2\n0,1,2\n".as_bytes(), "v.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("v.csv, line 3") && e.contains("repeats"), "{e}");
        let e = parse_azure_vm("step,cpu_avg,cpu_max\n0,1,inf\n".as_bytes(), "v.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("finite"), "{e}");
        let e = parse_azure_vm("step,cpu\n0,1\n".as_bytes(), "v.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("cpu_avg"), "{e}");
    }

    #[test]
    fn unknown_layouts_and_repeated_stems_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        assert!(matches!(
            import(dir.path(), &out),
            Err(ImportError::UnknownDataset(_))
        ));
        let series = "TimeStamp,Value,Label\n2018-07-03 14:00:00,1,0\n2018-07-03 15:00:00,2,1\n";
        for domain in ["first", "second"] {
            let d = dir.path().join("data").join(domain);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("s-01.csv"), series).unwrap();
            fs::write(
                d.join("s-01.csv-metadata.json"),
                r#"{"url":"s-01.csv","notes":[]}"#,
            )
            .unwrap();
        }
        assert_eq!(detect(dir.path()).unwrap(), DatasetKind::MsCloudmon);
        let e = import(dir.path(), &out).unwrap_err().to_string();
        assert!(e.contains("s-01 exists in first and in second"), "{e}");
        // one folder alone imports: 2 hourly rows, one labelled
        fs::remove_dir_all(dir.path().join("data/second")).unwrap();
        let r = import(dir.path(), &out).unwrap();
        assert_eq!(r.sets.len(), 1);
        assert_eq!(r.sets[0].name, "ms-cloudmon-1h");
        assert_eq!((r.sets[0].rows, r.sets[0].anomalous_points), (2, Some(1)));
        fs::write(dir.path().join("data/first/s-01.csv-metadata.json"), "{").unwrap();
        let e = import(dir.path(), &out).unwrap_err().to_string();
        assert!(e.contains("s-01.csv-metadata.json: not valid JSON"), "{e}");
    }

    const PETSHOP_SAMPLE: &str = "\
microservice,PetSite,PetSite,PetSite,PGSQL Query_remote,PGSQL Query_remote\n\
metric,latency,requests,availability,latency,requests\n\
statistic,p99,Sum,Average,Average,Sum\n\
unix_timestamp,,,,,\n\
1693922400.0,0.25,120,100.0,,0\n\
1693922700.4,0.5,130,99.5,0.01,3\n";

    #[test]
    fn petshop_four_row_header() {
        let t = parse_petshop(PETSHOP_SAMPLE.as_bytes(), "m.csv").unwrap();
        assert_eq!(t.nodes, vec!["PetSite", "PGSQL Query_remote"]);
        assert_eq!(t.timestamps, vec![1_693_922_400, 1_693_922_700]);
        let f = |n: &str| PETSHOP_FEATURES.iter().position(|x| *x == n).unwrap();
        assert_eq!(t.value(0, 0, f("latency_p99")), 0.25);
        assert_eq!(t.value(1, 0, f("requests_sum")), 130.0);
        assert_eq!(t.value(1, 0, f("availability_avg")), 99.5);
        assert!(t.value(0, 0, f("latency_avg")).is_nan()); // no such column
        assert!(t.value(0, 1, f("latency_avg")).is_nan()); // empty cell
        assert_eq!(t.value(1, 1, f("latency_avg")), 0.01);
        assert_eq!(t.value(0, 1, f("requests_sum")), 0.0);

        let bad = PETSHOP_SAMPLE.replace("p99", "p42");
        let e = parse_petshop(bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.csv, line 3") && e.contains("p42"), "{e}");
        let bad = PETSHOP_SAMPLE.replace("statistic,", "stat,");
        let e = parse_petshop(bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("statistic"), "{e}");
        let bad = PETSHOP_SAMPLE.replace("0.5,130", "0.5,lots");
        let e = parse_petshop(bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 6") && e.contains("lots"), "{e}");
        let bad = format!("{PETSHOP_SAMPLE}1693922700.0,1,1,1,1\n");
        let e = parse_petshop(bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 7"), "{e}");
        let bad = format!("{PETSHOP_SAMPLE}1693922700.1,1,1,1,1,1\n");
        let e = parse_petshop(bad.as_bytes(), "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 7") && e.contains("repeats"), "{e}");
    }

    #[test]
    fn sanitised_ids() {
        assert_eq!(sanitise_id("PetSite"), "PetSite");
        assert_eq!(sanitise_id("PGSQL Query_remote"), "PGSQL_Query_remote");
        assert_eq!(
            sanitise_id("AWS::StepFunctions::StateMachine"),
            "AWS::StepFunctions::Sta"
        );
        assert_eq!(
            sanitise_id("https://sqs.us-west-2.amazonaws.com/x"),
            "https:_sqs.us-west-2.am"
        );
        assert_eq!(sanitise_id("a / @ b"), "a_b");
        assert_eq!(sanitise_id("__.-x y"), "x_y");
        assert_eq!(sanitise_id("@@@"), "");
        let names: Vec<String> = [
            "lambda_step_priceGreaterThan55",
            "lambda_step_priceGreaterThan55_AWS::Lambda",
            "PetSite",
            "@@@",
            "lambda_step_priceGreaterThan55_AWS::Lambda::Function",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ids = assign_customer_ids(&names);
        assert_eq!(ids[2], "PetSite");
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(CustomerId::parse(id.as_bytes(), b"").is_ok(), "{id}");
        }
        for i in [0, 1, 4] {
            assert!(
                ids[i].starts_with("lambda_step_price") && ids[i].len() == 23,
                "{}",
                ids[i]
            );
        }
        assert!(ids[3].starts_with("id-") && ids[3].len() == 7, "{}", ids[3]);
        // a name keeps its id whatever the other names are (the disambiguator hashes the name)
        let again = assign_customer_ids(&[names[4].clone(), names[0].clone()]);
        assert_eq!(again, vec![ids[4].clone(), ids[0].clone()]);
    }

    #[test]
    fn a_set_is_written_sorted_with_a_spec_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = ImportedSet::new(
            "t-set",
            DatasetKind::MsCloudmon,
            60,
            vec![Feature::new("value", "", NON_NEGATIVE)],
        );
        set.labels = Some(Vec::new());
        set.customers = vec!["b".into(), "a".into()];
        set.push(120, 0, &[1.5], Some(false));
        set.push(60, 0, &[f64::NAN], Some(true));
        set.push(60, 1, &[0.1], Some(false));
        set.push(60 + 200_000, 1, &[3.0], Some(false));
        let s = write_set(&set, dir.path(), "test").unwrap();
        assert_eq!((s.rows, s.customers, s.missing_values), (4, 2, 1));
        assert_eq!(s.anomalous_points, Some(1));
        assert_eq!(s.max_future_skew_seconds, Some(259_200));
        let t = fs::read_to_string(dir.path().join("telemetry.csv")).unwrap();
        assert_eq!(
            t,
            "customer_id,ts,value\na,60,0.1\nb,60,\nb,120,1.5\na,200060,3\n"
        );
        let p = fs::read_to_string(dir.path().join("points.csv")).unwrap();
        assert_eq!(
            p,
            "customer_id,ts,label\na,60,0\nb,60,1\nb,120,0\na,200060,0\n"
        );
        let spec = Spec::load(&dir.path().join("spec.toml")).unwrap();
        assert_eq!(spec.name, "t-set");
        assert_eq!(spec.epoch.length_seconds, 60);
        assert_eq!(spec.epoch.allowed_lateness_seconds, 0);
        assert_eq!(spec.input.max_future_skew_seconds, 259_200);
        assert_eq!(spec.features[0].bounds, Some([0.0, f64::INFINITY]));
        let j: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("set.json")).unwrap())
                .unwrap();
        assert_eq!(j["rows"], 4);
        assert_eq!(j["labelled"], true);
        // a repeated (customer, ts) is refused
        set.push(120, 0, &[2.0], Some(false));
        assert!(write_set(&set, dir.path(), "test").is_err());
    }
}
