//! Wide specs: up to 64 features per spec (real telemetry sets have 38 metrics per machine; the pipeline is
//! instantiated at the spec's width, 32 or 64), end to end from a CSV export, the same output for any
//! worker layout, and a spec wider than that refused at load with a clear error.

mod common;

use std::fmt::Write as _;

/// `features` × 12 customers × 400 five-minute epochs of Gaussian noise around per-feature levels, and one
/// spike on the last feature of one customer.
fn wide_csv(path: &std::path::Path, features: usize) {
    let mut rng = fleetwatch::rng::Rng::new(40, 1);
    let mut text = String::from("customer_id,ts");
    for f in 0..features {
        write!(text, ",m{f:02}").unwrap();
    }
    text.push('\n');
    for e in 0..400i64 {
        let ts = 1_704_067_200 + 300 * e;
        for c in 0..12 {
            write!(text, "host-{c:02},{ts}").unwrap();
            for f in 0..features {
                let level = 10.0 + f as f64;
                let mut v = level + rng.normal();
                if c == 3 && f == features - 1 && e == 350 {
                    v += 40.0;
                }
                write!(text, ",{v:.3}").unwrap();
            }
            text.push('\n');
        }
    }
    std::fs::write(path, text).unwrap();
}

fn spec(path: &std::path::Path, features: usize) {
    let mut text = String::from(
        "name = 'wide'\n[input]\nunknown_features = 'dead_letter'\n[epoch]\nlength_seconds = 300\n",
    );
    for f in 0..features {
        write!(text, "[[features]]\nname = 'm{f:02}'\n").unwrap();
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_38_feature_spec_runs_end_to_end_and_its_output_does_not_depend_on_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (input, spec_path) = (dir.path().join("wide.csv"), dir.path().join("wide.toml"));
    let width = 38;
    wide_csv(&input, width);
    spec(&spec_path, width);
    let mut outputs = Vec::new();
    for workers in ["1", "2"] {
        let out = dir.path().join(format!("out-{workers}.jsonl"));
        common::run(
            &input,
            &out,
            &[
                "--dataflow",
                spec_path.to_str().unwrap(),
                "--workers",
                workers,
                "--reproducible",
            ],
        );
        outputs.push(std::fs::read_to_string(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1], "1 and 2 workers differ");
    let text = &outputs[0];
    let summaries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "summary")
        .collect();
    let scored: u64 = summaries
        .iter()
        .map(|v| v["series_scored"].as_u64().unwrap())
        .sum();
    let dead: u64 = summaries
        .iter()
        .map(|v| v["dead_lettered"].as_u64().unwrap())
        .sum();
    assert_eq!(dead, 0);
    // Every series of every customer is scored from its second log on.
    assert_eq!(scored, 12 * width as u64 * 399);
    // The spike on the last feature (beyond the 32 a narrow log holds) is raised on its customer.
    assert!(
        text.lines().any(|l| l.contains("\"status\":\"raised\"")
            && l.contains("\"customer\":\"host-03\"")
            && l.contains(&format!("\"feature\":\"m{:02}\"", width - 1))
            && l.contains("\"kind\":\"spike\"")),
        "no spike raised on host-03's last feature"
    );
}

#[test]
fn a_spec_wider_than_that_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("too-wide.toml");
    let width = fleetwatch::record::MAX_FEATURES;
    spec(&spec_path, width + 1);
    let out = std::process::Command::new(common::bin())
        .args([
            "run",
            "--dataflow",
            spec_path.to_str().unwrap(),
            "--input",
            "x.csv",
            "--output",
            "o",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} features listed; at most {width}", width + 1)),
        "{err}"
    );
}
