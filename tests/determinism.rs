//! Same input, byte-identical output, for any worker and process layout.

mod common;

/// A reproducible run (no wall-clock fields) with the given layout arguments.
fn run(input: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["--reproducible"];
    args.extend_from_slice(extra);
    common::run(input, out, &args);
}

#[test]
fn byte_identical_for_1_2_4_workers_and_2_processes() {
    let dir = tempfile::tempdir().unwrap();
    // A day and a half, with malformed lines and customers joining: every code path that could depend
    // on the layout (epoch closing, dead letters, cohort priors, silence) is exercised.
    let input = common::generate(
        &dir.path().join("fleet"),
        150,
        432,
        9,
        &[
            "--malformed-rate",
            "0.001",
            "--history-epochs",
            "96",
            "--anomaly-rate",
            "2.0",
        ],
    );
    let one = dir.path().join("w1.jsonl");
    run(&input, &one, &["--workers", "1"]);
    let reference = std::fs::read(&one).unwrap();
    let text = String::from_utf8_lossy(&reference);
    assert!(
        text.contains("\"status\":\"raised\""),
        "the run raises alerts"
    );
    assert!(text.contains("\"status\":\"cleared\""), "and clears them");
    for w in ["2", "4"] {
        let out = dir.path().join(format!("w{w}.jsonl"));
        run(&input, &out, &["--workers", w]);
        assert!(
            std::fs::read(&out).unwrap() == reference,
            "--workers {w} differs from --workers 1"
        );
    }

    // Two processes of one worker each, connected over loopback by a cluster file.
    let cluster = common::two_process_cluster(dir.path());
    let out = dir.path().join("p2.jsonl");
    common::run_two_processes(
        &cluster,
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--reproducible",
        ],
    );
    assert!(
        std::fs::read(&out).unwrap() == reference,
        "2 processes x 1 worker differ from 1 worker"
    );

    // `launch` starts both local processes of the cluster file itself.
    let out = dir.path().join("launch.jsonl");
    common::fleetwatch(&[
        "launch",
        "--cluster",
        cluster.to_str().unwrap(),
        "--",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--reproducible",
    ]);
    assert!(
        std::fs::read(&out).unwrap() == reference,
        "launch differs from 1 worker"
    );
}

#[test]
fn wall_clock_is_the_only_difference_without_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        40,
        60,
        3,
        &["--history-epochs", "12"],
    );
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    common::run(&input, &a, &["--workers", "1"]);
    common::run(&input, &b, &["--workers", "2"]);
    let strip = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if v["type"] == "summary" {
                    assert!(
                        v["wall_seconds"].as_f64().is_some(),
                        "summary lines carry wall_seconds"
                    );
                    v.as_object_mut().unwrap().remove("wall_seconds");
                }
                v
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
}
