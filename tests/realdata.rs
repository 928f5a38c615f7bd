//! `fleetwatch import` on the real telemetry datasets: the counts their SOURCE.md gives, the row order the
//! CSV reader needs, point labels aligned with the telemetry, and specs that load.
//!
//! The datasets live outside the repository (`../shared/datasets/<name>`, or `FLEETWATCH_DATASETS_DIR` for
//! the folder holding them). Without them these tests fail, unless `FLEETWATCH_ALLOW_MISSING_DATASETS=1`
//! says the machine has no copy (`.ci/run` sets that only when it finds none, and says so loudly).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use fleetwatch::realdata::{self, DatasetKind};
use fleetwatch::spec::{Spec, UnknownFeaturePolicy};
use serde_json::Value;

fn dataset(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("FLEETWATCH_DATASETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"));
    let dir = root.join(name);
    if dir.join("SOURCE.md").is_file() {
        return Some(dir);
    }
    if std::env::var_os("FLEETWATCH_ALLOW_MISSING_DATASETS").is_some() {
        eprintln!(
            "{} not found and FLEETWATCH_ALLOW_MISSING_DATASETS is set: skipping",
            dir.display()
        );
        return None;
    }
    panic!(
        "{} not found: set FLEETWATCH_DATASETS_DIR to the folder holding the datasets, or \
         FLEETWATCH_ALLOW_MISSING_DATASETS=1 to skip",
        dir.display()
    );
}

/// What a written set holds, read back from its files.
struct SetFiles {
    meta: Value,
    spec: Spec,
    header: Vec<String>,
    /// Rows per customer.
    per_customer: BTreeMap<String, usize>,
    rows: usize,
    /// Rows labelled 1 in points.csv (labelled sets).
    anomalous: Option<usize>,
    timestamps: HashSet<i64>,
}

/// Reads a set back and checks what holds for every set: set.json's fields, a spec that loads with the
/// set's cadence, no lateness, no detector or alerting parameters; telemetry rows unique and sorted by
/// (ts, customer_id); points.csv (labelled sets) on exactly the telemetry's rows.
fn read_set(out: &Path, name: &str) -> SetFiles {
    let dir = out.join(name);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("set.json")).expect("set.json")).unwrap();
    assert_eq!(meta["name"], name);
    let cadence = meta["cadence_seconds"].as_u64().expect("cadence_seconds");
    let spec = Spec::load(&dir.join("spec.toml")).expect("spec.toml loads");
    assert_eq!(spec.name, name);
    assert_eq!(spec.epoch.length_seconds, cadence);
    assert_eq!(spec.epoch.allowed_lateness_seconds, 0);
    assert_eq!(
        spec.input.unknown_features,
        UnknownFeaturePolicy::DeadLetter
    );
    let text = std::fs::read_to_string(dir.join("spec.toml")).unwrap();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("[detector") || l.starts_with("[alerting")),
        "{name}: the spec sets detector or alerting parameters"
    );
    assert!(spec.detector.params.is_empty());

    let mut rdr = csv::Reader::from_path(dir.join("telemetry.csv")).expect("telemetry.csv");
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(&header[..2], ["customer_id", "ts"]);
    let features: Vec<String> = spec.features.iter().map(|f| f.name.clone()).collect();
    assert_eq!(header[2..], features[..]);
    assert_eq!(meta["features"], serde_json::json!(features));
    let mut keys: Vec<(i64, String)> = Vec::new();
    let mut per_customer = BTreeMap::new();
    let mut timestamps = HashSet::new();
    for r in rdr.records() {
        let r = r.unwrap();
        let ts: i64 = r[1].parse().expect("integer ts");
        for v in r.iter().skip(2) {
            assert!(
                v.is_empty() || v.parse::<f64>().is_ok_and(f64::is_finite),
                "{v:?}"
            );
        }
        *per_customer.entry(r[0].to_string()).or_insert(0) += 1;
        timestamps.insert(ts);
        keys.push((ts, r[0].to_string()));
    }
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "{name}: rows not strictly sorted by (ts, customer_id)"
    );
    assert_eq!(meta["rows"], keys.len());
    assert_eq!(meta["customers"], per_customer.len());

    let labelled = meta["labelled"].as_bool().expect("labelled");
    let anomalous = labelled.then(|| {
        let mut rdr = csv::Reader::from_path(dir.join("points.csv")).expect("points.csv");
        assert_eq!(rdr.headers().unwrap(), vec!["customer_id", "ts", "label"]);
        let mut ones = 0;
        let mut n = 0;
        for (r, key) in rdr.records().zip(&keys) {
            let r = r.unwrap();
            assert_eq!((r[1].parse::<i64>().unwrap(), r[0].to_string()), *key);
            ones += match &r[2] {
                "0" => 0,
                "1" => 1,
                other => panic!("label {other:?}"),
            };
            n += 1;
        }
        assert_eq!(
            n,
            keys.len(),
            "{name}: points.csv and telemetry.csv differ in rows"
        );
        assert_eq!(meta["anomalous_points"], ones);
        ones
    });
    assert_eq!(labelled, dir.join("points.csv").exists());
    SetFiles {
        meta,
        spec,
        header,
        rows: keys.len(),
        per_customer,
        anomalous,
        timestamps,
    }
}

fn bounds(spec: &Spec, feature: &str) -> Option<[f64; 2]> {
    spec.features
        .iter()
        .find(|f| f.name == feature)
        .and_then(|f| f.bounds)
}

#[test]
fn azure_vm_cpu() {
    let Some(src) = dataset("azure-vm-cpu") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let r = realdata::import(&src, out.path()).expect("azure imports");
    assert_eq!(r.dataset, DatasetKind::AzureVmCpu);
    assert_eq!(r.sets.len(), 1);
    let s = read_set(out.path(), "azure-vm-cpu");
    // SOURCE.md: 177 VMs, 100 x 8,004 + 77 x 8,400 = 1,447,200 rows, no missing values
    assert_eq!(s.per_customer.len(), 177);
    assert_eq!(s.rows, 1_447_200);
    let mut sizes = BTreeMap::new();
    for n in s.per_customer.values() {
        *sizes.entry(*n).or_insert(0) += 1;
    }
    assert_eq!(sizes, BTreeMap::from([(8_004, 100), (8_400, 77)]));
    assert!(s.per_customer.keys().all(|c| c.starts_with("vm-")));
    assert_eq!(s.meta["missing_values"], 0);
    assert_eq!(s.meta["labelled"], false);
    assert_eq!(s.meta["first_ts"], 1_704_067_200);
    assert_eq!(s.meta["last_ts"], 1_704_067_200 + 300 * 8_399);
    assert!(s.timestamps.iter().all(|t| (t - 1_704_067_200) % 300 == 0));
    assert_eq!(s.header, ["customer_id", "ts", "cpu_avg", "cpu_max"]);
    for f in ["cpu_avg", "cpu_max"] {
        assert_eq!(bounds(&s.spec, f), Some([0.0, 100.0]));
    }
    assert_eq!(s.spec.epoch.length_seconds, 300);
}

#[test]
fn petshop_through_the_binary() {
    let Some(src) = dataset("petshop") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let stdout = common::fleetwatch(&[
        "import",
        "--dataset",
        src.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON object on stdout");
    assert_eq!(summary["dataset"], "petshop");
    assert_eq!(summary["sets"].as_array().map(Vec::len), Some(2));
    // the temporal_traffic scenarios have no normal period in the snapshot
    assert_eq!(summary["skipped"].as_array().map(Vec::len), Some(2));
    let mut ids = Vec::new();
    for (name, nodes, empty_share) in [("petshop-high", 39, 0.084), ("petshop-low", 41, 0.162)] {
        let s = read_set(out.path(), name);
        // SOURCE.md: 39 / 41 nodes x 589 five-minute rows, no gaps; 8.4 % / 16.2 % empty cells
        assert_eq!(s.per_customer.len(), nodes);
        assert!(s.per_customer.values().all(|&n| n == 589));
        assert_eq!(s.rows, nodes * 589);
        assert_eq!(s.timestamps.len(), 589);
        assert_eq!(s.spec.epoch.length_seconds, 300);
        let share = s.meta["missing_values"].as_f64().unwrap() / (s.rows * 7) as f64;
        assert!((share - empty_share).abs() < 0.001, "{name}: {share}");
        assert_eq!(s.anomalous, None);
        assert_eq!(bounds(&s.spec, "availability_avg"), Some([0.0, 100.0]));
        for f in ["latency_avg", "latency_p99", "requests_sum"] {
            assert_eq!(bounds(&s.spec, f), Some([0.0, f64::INFINITY]));
        }
        let names = s.meta["customer_names"]
            .as_object()
            .expect("customer_names");
        assert_eq!(names.len(), nodes);
        assert!(names.keys().all(|k| s.per_customer.contains_key(k)));
        assert_eq!(names["PetSite"], "PetSite");
        ids.push(
            names
                .iter()
                .map(|(k, v)| (v.as_str().unwrap_or("").to_string(), k.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    // the 39 nodes of both scenarios get the same ids in both
    let common: Vec<_> = ids[0]
        .iter()
        .filter(|(n, _)| ids[1].contains_key(*n))
        .collect();
    assert_eq!(common.len(), 39);
    assert!(common.iter().all(|(n, id)| ids[1][*n] == **id));
}

#[test]
fn ms_cloudmon() {
    let Some(src) = dataset("ms-cloudmon") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let r = realdata::import(&src, out.path()).expect("ms-cloudmon imports");
    assert_eq!(r.dataset, DatasetKind::MsCloudmon);
    let mut names: Vec<&str> = r.sets.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["ms-cloudmon-1h", "ms-cloudmon-1m", "ms-cloudmon-5m"]
    );

    // SOURCE.md: 49 hourly series, 46,885 rows of which 241 repeat a timestamp (110 + 130 + 1);
    // 2,166 labelled rows before de-duplication, 2,146 after (a repeat keeps the larger label)
    let h = read_set(out.path(), "ms-cloudmon-1h");
    assert_eq!(h.per_customer.len(), 49);
    assert_eq!(h.rows, 46_885 - 241);
    assert_eq!(h.anomalous, Some(2_146));
    assert_eq!(h.meta["missing_values"], 5 + 11 + 26);
    assert_eq!(h.spec.epoch.length_seconds, 3_600);
    // 11 one-minute series, 178,560 rows, 2,389 anomalous
    let m = read_set(out.path(), "ms-cloudmon-1m");
    assert_eq!(m.per_customer.len(), 11);
    assert_eq!(m.rows, 178_560);
    assert_eq!(m.anomalous, Some(2_389));
    assert_eq!(m.spec.epoch.length_seconds, 60);
    // mongodb-machine-rps starts 38 days after the others end: the spec lets the watermark jump
    assert!(
        m.spec.input.max_future_skew_seconds as i64
            >= m.meta["largest_step_seconds"].as_i64().unwrap()
    );
    // the same series in 5-minute buckets: 5 minutes each, all complete
    let f = read_set(out.path(), "ms-cloudmon-5m");
    assert_eq!(
        f.per_customer.keys().collect::<Vec<_>>(),
        m.per_customer.keys().collect::<Vec<_>>()
    );
    assert_eq!(f.rows, 178_560 / 5);
    assert!(f.timestamps.iter().all(|t| t % 300 == 0));
    assert_eq!(f.spec.epoch.length_seconds, 300);
    let labelled = f.anomalous.unwrap();
    assert!(labelled > 2_389 / 5 && labelled < 2_389, "{labelled}");
    // 60 series in all, split 49 / 11 by the cadence found in the data
    let all: HashSet<&String> = h.per_customer.keys().chain(m.per_customer.keys()).collect();
    assert_eq!(all.len(), 60);
    for (s, cadence) in [(&h, 3_600), (&m, 60)] {
        for folder in s.meta["folders"].as_array().unwrap() {
            assert_eq!(folder["cadence_seconds"], cadence, "{folder}");
        }
    }
    // one feature per folder (a folder is one metric across entities), every one non-negative
    for s in [&h, &m, &f] {
        let folders = s.meta["folders"].as_array().unwrap();
        for folder in folders {
            let feature = folder["feature"].as_str().unwrap();
            assert_eq!(
                feature,
                folder["folder"].as_str().unwrap().replace('-', "_")
            );
            assert_eq!(bounds(&s.spec, feature), Some([0.0, f64::INFINITY]));
        }
        assert_eq!(s.spec.features.len(), folders.len());
    }
}

/// Point scoring end to end on a slice of a labelled real set: the 5-minute ms-cloudmon set's first 20,000
/// rows (in time order: ten series' first week or so) run through the pipeline with the set's own spec (the detector's
/// defaults), then `eval --points --telemetry`: point and event figures, raises in normal stretches, and the
/// robust z-score baseline at its best threshold on the same rows.
#[test]
fn a_labelled_real_slice_is_scored_against_its_points_and_the_baseline() {
    let Some(cloudmon) = dataset("ms-cloudmon") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sets");
    common::fleetwatch(&[
        "import",
        "--dataset",
        cloudmon.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let set = out.join("ms-cloudmon-5m");
    let slice = |name: &str| {
        let text = std::fs::read_to_string(set.join(name)).unwrap();
        let kept: Vec<&str> = text.lines().take(20_001).collect();
        let path = tmp.path().join(name);
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        path
    };
    let (telemetry, points) = (slice("telemetry.csv"), slice("points.csv"));
    let changes = tmp.path().join("changes.jsonl");
    common::run(
        &telemetry,
        &changes,
        &[
            "--dataflow",
            set.join("spec.toml").to_str().unwrap(),
            "--workers",
            "2",
            "--reproducible",
        ],
    );
    let report: Value = serde_json::from_str(&common::fleetwatch(&[
        "eval",
        "--alerts",
        changes.to_str().unwrap(),
        "--points",
        points.to_str().unwrap(),
        "--telemetry",
        telemetry.to_str().unwrap(),
    ]))
    .unwrap();
    eprintln!("{report:#}");
    let n = |k: &str| report[k].as_f64().unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(n("points"), 20_000.0);
    // machine-01 starts 38 days after the others end: the slice holds the other ten series.
    assert_eq!(n("customers"), 10.0);
    assert!(n("anomalous_points") > 0.0 && n("events") > 0.0);
    // The run has customer-level alerts: they are what the labels are scored on.
    assert_eq!(report["flagged_by"], "customer");
    // Every raise is in an anomaly, in a normal stretch, or after its series' data ended.
    let raises_in_anomalies = n("raises") - n("raises_normal") - n("raises_after_data_end");
    assert!(raises_in_anomalies >= 0.0);
    let by_kind: f64 = report["raises_by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert_eq!(by_kind, n("raises_normal"));
    // The defaults are calibrated against each series' own history: on these series the thresholds before
    // it raised about 900 times per 1,000 normal series-days (QUALITY.md, "Real telemetry").
    assert!(
        n("raises_per_1000_series_days") < 150.0,
        "{}",
        n("raises_per_1000_series_days")
    );
    let scores = &report["scores"];
    let share = scores["flagged_share"].as_f64().unwrap();
    assert!((0.0..0.05).contains(&share), "flagged share {share}");
    // The baseline, its threshold chosen with these labels, finds some of them.
    let base = &report["baseline"]["max"];
    assert!(base["threshold"].as_f64().unwrap().is_finite());
    let f1 = base["f1"].as_f64().unwrap();
    assert!(f1 > 0.05 && f1 <= 1.0, "baseline F1 {f1}");
    let er = base["event_recall"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&er));
    // Its raises in normal stretches at that threshold, and its best F1 within the run's own volume: never
    // above the unconstrained best, never raising more often than the run.
    assert!(base["raises_per_1000_series_days"].as_f64().unwrap() >= 0.0);
    let matched = &report["baseline"]["max_at_run_volume"];
    if !matched.is_null() {
        assert!(matched["f1"].as_f64().unwrap() <= f1 + 1e-12);
        assert!(
            matched["raises_per_1000_series_days"].as_f64().unwrap()
                <= n("raises_per_1000_series_days") + 1e-9
        );
    }
}
