//! The Numenta Anomaly Benchmark in the product: the scorer reproduces NAB's published scoreboard from the
//! published per-row results, and `fleetwatch eval --nab` streams every series through the model and writes
//! NAB's own layout.
//!
//! NAB lives outside the repository (`../shared/datasets/nab`, or `FLEETWATCH_NAB_DIR`). Without it these
//! tests fail, unless `FLEETWATCH_ALLOW_MISSING_NAB=1` says the machine has no copy (`.ci/run` sets that only
//! when it finds none, and says so loudly).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleetwatch::nab::runner::SeriesModel;
use fleetwatch::nab::{Corpus, score_corpus};

fn nab_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FLEETWATCH_NAB_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/nab")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join("labels/combined_windows.json").is_file() {
            return Some(c);
        }
    }
    if std::env::var_os("FLEETWATCH_ALLOW_MISSING_NAB").is_some() {
        eprintln!("NAB not found and FLEETWATCH_ALLOW_MISSING_NAB is set: skipping");
        return None;
    }
    panic!(
        "NAB not found: set FLEETWATCH_NAB_DIR to NAB's root (data/, labels/, config/, results/)"
    );
}

type Published = BTreeMap<String, BTreeMap<String, f64>>;

#[test]
fn scorer_reproduces_the_published_scoreboard() {
    let Some(root) = nab_dir() else { return };
    let corpus = Corpus::load(&root).expect("NAB loads");
    assert_eq!(corpus.files.len(), 58);
    assert_eq!(corpus.window_count(), 116);
    let published: Published = serde_json::from_slice(
        &std::fs::read(root.join("results/final_results.json")).expect("final_results.json"),
    )
    .expect("final_results.json parses");
    for detector in ["numenta", "windowedGaussian"] {
        let scores = corpus
            .read_results(&root.join("results").join(detector), detector)
            .expect("published per-row results");
        let got = score_corpus(&corpus, &scores);
        for profile in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
            let want = published[detector][profile];
            let have = got.normalised(profile).expect("profile scored");
            assert!(
                (have - want).abs() <= 0.2,
                "{detector} {profile}: scored {have:.3}, published {want:.3}"
            );
        }
    }
}

#[test]
fn null_scores_zero_and_a_perfect_detector_a_hundred() {
    let Some(root) = nab_dir() else { return };
    let corpus = Corpus::load(&root).expect("NAB loads");
    let null: Vec<Vec<f64>> = corpus.files.iter().map(|f| vec![0.5; f.len()]).collect();
    let r = score_corpus(&corpus, &null);
    for p in &r.profiles {
        assert!(p.normalised.abs() < 1e-9, "{}: {}", p.profile, p.normalised);
    }
    // one detection on the first row of every window
    let perfect: Vec<Vec<f64>> = corpus
        .files
        .iter()
        .map(|f| {
            let mut s = vec![0.0; f.len()];
            for &(a, _) in &f.windows {
                s[a] = 1.0;
            }
            s
        })
        .collect();
    let r = score_corpus(&corpus, &perfect);
    for p in &r.profiles {
        assert!(p.normalised > 99.0, "{}: {}", p.profile, p.normalised);
        assert_eq!(p.false_positives, 0);
    }
}

#[test]
fn the_model_streams_without_look_ahead() {
    let Some(root) = nab_dir() else { return };
    let corpus = Corpus::load(&root).expect("NAB loads");
    let model = SeriesModel::new(&fleetwatch::spec::Spec::embedded_nab()).expect("model");
    for name in [
        "nyc_taxi.csv",
        "speed_7578.csv",
        "exchange-2_cpc_results.csv",
    ] {
        let full = corpus
            .files
            .iter()
            .find(|f| f.name == name)
            .expect("file in corpus");
        let whole = model.stream(full);
        // the same series cut short: every row it has must score exactly as in the full stream
        let mut cut = full.clone();
        let keep = full.len() * 2 / 3;
        cut.timestamps.truncate(keep);
        cut.micros.truncate(keep);
        cut.raw_values.truncate(keep);
        cut.values.truncate(keep);
        cut.windows.clear();
        assert_eq!(model.stream(&cut), whole[..keep], "{name}");
        assert!(whole.iter().all(|s| (0.0..1.0).contains(s)), "{name}");
        assert!(
            whole.iter().any(|&s| s > 0.5),
            "{name}: the model raises somewhere"
        );
    }
}

#[test]
fn eval_nab_writes_nab_layout_and_scores_it() {
    let Some(root) = nab_dir() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("results");
    let printed = common::fleetwatch(&[
        "eval",
        "--nab",
        root.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    let report: BTreeMap<String, f64> =
        serde_json::from_str(printed.trim()).expect("one JSON object");
    let keys: Vec<&str> = report.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["reward_low_FN_rate", "reward_low_FP_rate", "standard"],
        "exactly NAB's three profiles"
    );
    // A floor under today's figures (QUALITY.md): a change that loses on NAB fails here.
    assert!(report["standard"] >= 56.0, "{report:?}");
    assert!(report["reward_low_FP_rate"] >= 48.0, "{report:?}");
    assert!(report["reward_low_FN_rate"] >= 63.0, "{report:?}");

    let corpus = Corpus::load(&root).expect("NAB loads");
    let mut rescored = Vec::new();
    for f in &corpus.files {
        let path = out
            .join("fleetwatch")
            .join(&f.category)
            .join(format!("fleetwatch_{}", f.name));
        let text = std::fs::read_to_string(&path).expect("a results file per data file");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("timestamp,value,anomaly_score,label"));
        let labels = f.labels();
        let mut scores = Vec::new();
        for (i, line) in lines.enumerate() {
            let cols: Vec<&str> = line.split(',').collect();
            assert_eq!(cols.len(), 4, "{path:?} row {i}");
            assert_eq!(cols[0], f.timestamps[i]);
            assert_eq!(cols[1], f.raw_values[i]);
            assert_eq!(cols[3], labels[i].to_string());
            scores.push(cols[2].parse::<f64>().expect("a score"));
        }
        assert_eq!(scores.len(), f.len(), "{path:?}");
        rescored.push(scores);
    }
    // the files on disk score to what was printed (NAB's own tooling would read the same numbers)
    let again = score_corpus(&corpus, &rescored);
    assert!((again.normalised("standard").expect("standard") - report["standard"]).abs() < 1e-9);
    for p in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
        let table = out
            .join("fleetwatch")
            .join(format!("fleetwatch_{p}_scores.csv"));
        let text = std::fs::read_to_string(&table).expect("score table");
        assert_eq!(text.lines().count(), 1 + 58 + 1, "{table:?}");
    }
}
