//! Shadow variants (`run --shadow SPEC --shadow-output FILE`) and `fleetwatch compare`: a shadow writes, byte
//! for byte, what its spec alone would write, for any worker and process layout, and leaves the run's own
//! output unchanged; `compare` tells the two runs' alerts apart; a shadow the run's source cannot feed is
//! refused with a clear message.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_shadow_writes_what_its_spec_alone_would_for_any_layout() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    // Two days after a day of history, many labelled anomalies: relationship breaks among them.
    let input = common::generate(&fleet, 240, 864, 8, &["--anomaly-rate", "4.0"]);
    let with_model = common::home_wifi_with_model(dir.path());
    let with_model = with_model.to_str().unwrap();

    // Each spec alone.
    let alone = dir.path().join("alone.jsonl");
    common::run(&input, &alone, &["--workers", "1", "--reproducible"]);
    let model_alone = dir.path().join("model-alone.jsonl");
    common::run(
        &input,
        &model_alone,
        &["--dataflow", with_model, "--workers", "3", "--reproducible"],
    );
    let (alone_bytes, model_bytes) = (
        std::fs::read(&alone).unwrap(),
        std::fs::read(&model_alone).unwrap(),
    );
    assert_ne!(alone_bytes, model_bytes, "the model changes the alerts");

    // The default spec with the model as its shadow, on two workers.
    let (out, shadow) = (
        dir.path().join("out.jsonl"),
        dir.path().join("shadow.jsonl"),
    );
    common::run(
        &input,
        &out,
        &[
            "--workers",
            "2",
            "--reproducible",
            "--shadow",
            with_model,
            "--shadow-output",
            shadow.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&out).unwrap() == alone_bytes,
        "a shadow changes nothing in the run's output"
    );
    assert!(
        std::fs::read(&shadow).unwrap() == model_bytes,
        "the shadow writes what its spec alone writes"
    );

    // Two processes of one worker each: one read and one exchange serve both models.
    let cluster = common::two_process_cluster(dir.path());
    let (out2, shadow2) = (
        dir.path().join("p2.jsonl"),
        dir.path().join("p2-shadow.jsonl"),
    );
    common::run_two_processes(
        &cluster,
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            out2.to_str().unwrap(),
            "--shadow",
            with_model,
            "--shadow-output",
            shadow2.to_str().unwrap(),
            "--reproducible",
        ],
    );
    assert!(
        std::fs::read(&out2).unwrap() == alone_bytes,
        "2 processes: the run's output"
    );
    assert!(
        std::fs::read(&shadow2).unwrap() == model_bytes,
        "2 processes: the shadow's output"
    );

    // compare: the relationship alerts are the model's alone; with labels, both runs' figures.
    let labels = fleet.join("labels.jsonl");
    let report = common::fleetwatch(&[
        "compare",
        out.to_str().unwrap(),
        shadow.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    let rel = &r["by_kind"]["relationship"];
    assert_eq!(rel["a"], 0, "{report}");
    assert!(rel["b"].as_u64().unwrap() > 0, "{report}");
    assert!(rel["only_b"].as_u64().unwrap() > 0, "{report}");
    let total = &r["total"];
    assert_eq!(
        total["a"].as_u64().unwrap(),
        total["both"].as_u64().unwrap() + total["only_a"].as_u64().unwrap()
    );
    assert!(total["only_b"].as_u64().unwrap() >= rel["only_b"].as_u64().unwrap());
    assert_eq!(r["epochs_a"], r["epochs_b"]);
    let recall = |side: &str| {
        r[side]["by_kind"]["relationship"]["recall"]
            .as_f64()
            .unwrap()
    };
    assert!(
        recall("eval_b") > recall("eval_a"),
        "the model finds more relationship breaks: {report}"
    );
    // Raises counted by compare are the raised change lines of each output.
    let raised = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| {
                l.starts_with("{\"type\":\"change\"") && l.contains("\"status\":\"raised\"")
            })
            .count() as u64
    };
    assert_eq!(total["a"].as_u64().unwrap(), raised(&out));
    assert_eq!(total["b"].as_u64().unwrap(), raised(&shadow));

    // A run compared with itself: every alert in both.
    let same: serde_json::Value = serde_json::from_str(&common::fleetwatch(&[
        "compare",
        shadow.to_str().unwrap(),
        shadow.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(same["total"]["only_a"], 0);
    assert_eq!(same["total"]["only_b"], 0);
    assert_eq!(same["total"]["both"], same["total"]["a"]);
}

#[test]
fn a_shadow_the_run_cannot_feed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(&dir.path().join("fleet"), 5, 20, 1, &[]);
    let nab = concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/nab.toml");
    let out = dir.path().join("o.jsonl");
    let shadow_out = dir.path().join("s.jsonl");
    let try_run = |extra: &[&str]| {
        let o = Command::new(common::bin())
            .args([
                "run",
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    // Another feature list.
    let e = try_run(&[
        "--shadow",
        nab,
        "--shadow-output",
        shadow_out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("--shadow") && e.contains("differ from the run's"),
        "{e}"
    );
    // Other epochs: the run's source cuts them for both.
    let other_epochs = common::home_wifi_variant(
        &dir.path().join("ten-minutes.toml"),
        "length_seconds = 300",
        "length_seconds = 600",
    );
    let e = try_run(&[
        "--shadow",
        other_epochs.to_str().unwrap(),
        "--shadow-output",
        shadow_out.to_str().unwrap(),
    ]);
    assert!(e.contains("[epoch]"), "{e}");
    // Checkpoints, and the run's own output as the shadow's.
    let e = try_run(&[
        "--shadow",
        concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/home-wifi.toml"),
        "--shadow-output",
        shadow_out.to_str().unwrap(),
        "--checkpoint-dir",
        dir.path().join("ck").to_str().unwrap(),
    ]);
    assert!(
        e.contains("cannot be combined with --checkpoint-dir"),
        "{e}"
    );
    let e = try_run(&[
        "--shadow",
        concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/home-wifi.toml"),
        "--shadow-output",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("another file than --output"), "{e}");
    // Without --shadow-output: a usage error from the command line.
    let e = try_run(&[
        "--shadow",
        concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/home-wifi.toml"),
    ]);
    assert!(e.contains("--shadow-output"), "{e}");
}
