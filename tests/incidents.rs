//! Network-element incidents (`run --topology`): outages and congestions of the generator found per element,
//! the same output for any worker and process layout, the grouped mode, and bad topology rows dead-lettered
//! while the rest flows on.

mod common;

use std::process::Command;

fn eval(out: &std::path::Path, fleet: &std::path::Path) -> serde_json::Value {
    let text = common::fleetwatch(&[
        "eval",
        "--alerts",
        out.to_str().unwrap(),
        "--element-labels",
        fleet.join("element_labels.jsonl").to_str().unwrap(),
        "--topology",
        fleet.join("topology.csv").to_str().unwrap(),
    ]);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn element_faults_are_found_identically_for_any_layout_and_grouped_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    // 600 customers under 12 elements, 4 days: every element has an outage or a congestion every day or so
    // after the first day and a half (the members' own models, and then the elements' view of them, need
    // that to mature: a deployment starts from its history).
    let input = common::generate(
        &fleet,
        600,
        1152,
        21,
        &[
            "--outage-rate",
            "0.4",
            "--congestion-rate",
            "0.8",
            "--history-epochs",
            "432",
        ],
    );
    // Bad rows at the end of the topology: dead-lettered with their reason, the rest used.
    let topology = dir.path().join("topology.csv");
    let mut rows = std::fs::read_to_string(fleet.join("topology.csv")).unwrap();
    rows.push_str("cust-0000001,elem-00099,region-009\n"); // placed twice
    rows.push_str("cust-9999999,elem 1,region-000\n"); // a bad element id
    rows.push_str("just-one-column\n");
    std::fs::write(&topology, rows).unwrap();
    let topo = topology.to_str().unwrap();

    let one = dir.path().join("w1.jsonl");
    let dead = dir.path().join("dead.jsonl");
    common::run(
        &input,
        &one,
        &[
            "--reproducible",
            "--topology",
            topo,
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    let reference = std::fs::read(&one).unwrap();
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    let refused: Vec<serde_json::Value> = dead_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|d: &serde_json::Value| d["reason"] == "topology")
        .collect();
    assert_eq!(refused.len(), 3, "{dead_text}");
    assert!(
        refused.iter().all(|d| d["input"] == topo),
        "dead letters name the topology file: {dead_text}"
    );

    // The same bytes with 2 workers and with 2 processes.
    let two = dir.path().join("w2.jsonl");
    common::run(
        &input,
        &two,
        &["--reproducible", "--topology", topo, "--workers", "2"],
    );
    assert!(
        std::fs::read(&two).unwrap() == reference,
        "--workers 2 differs from --workers 1"
    );
    let cluster = common::two_process_cluster(dir.path());
    let p2 = dir.path().join("p2.jsonl");
    let spawn = |i: &str| {
        Command::new(common::bin())
            .args([
                "run",
                "--input",
                input.to_str().unwrap(),
                "--output",
                p2.to_str().unwrap(),
                "--reproducible",
                "--topology",
                topo,
                "--cluster",
                cluster.to_str().unwrap(),
                "--process",
                i,
            ])
            .spawn()
            .unwrap()
    };
    let mut a = spawn("0");
    let mut b = spawn("1");
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert!(
        std::fs::read(&p2).unwrap() == reference,
        "2 processes differ from 1 worker"
    );

    // Found: every outage at once, most congestions within a couple of epochs, few false incidents.
    let r = eval(&one, &fleet);
    let outage = &r["by_kind"]["outage"];
    let congestion = &r["by_kind"]["congestion"];
    assert!(outage["faults"].as_u64().unwrap() >= 3, "{r}");
    assert!(congestion["faults"].as_u64().unwrap() >= 8, "{r}");
    assert!(outage["recall"].as_f64().unwrap() >= 0.9, "{r}");
    assert_eq!(outage["median_delay_epochs"].as_f64(), Some(0.0), "{r}");
    assert!(congestion["recall"].as_f64().unwrap() >= 0.6, "{r}");
    assert!(
        congestion["median_delay_epochs"].as_f64().unwrap() <= 2.0,
        "{r}"
    );
    assert!(r["false_incidents"].as_u64().unwrap() <= 2, "{r}");
    assert!(
        r["incidents_per_found_fault"].as_f64().unwrap() <= 1.2,
        "{r}"
    );
    // An incident line says what it is about.
    let text = String::from_utf8_lossy(&reference);
    let line = text
        .lines()
        .find(|l| l.contains("\"type\":\"incident\"") && l.contains("\"kind\":\"congestion\""))
        .expect("a congestion incident");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "element");
    assert!(
        v["features"].as_array().is_some_and(|f| !f.is_empty()),
        "{line}"
    );
    assert!(
        v["why"]
            .as_str()
            .is_some_and(|w| w.contains("moved together")),
        "{line}"
    );

    // Grouped: an outage's members' silences are not written, the incident stands for them.
    let grouped = dir.path().join("grouped.jsonl");
    common::run(
        &input,
        &grouped,
        &["--reproducible", "--topology", topo, "--group-incidents"],
    );
    let g = eval(&grouped, &fleet);
    let before = outage["raises_per_fault"].as_f64().unwrap();
    let after = g["by_kind"]["outage"]["raises_per_fault"].as_f64().unwrap();
    assert!(before >= 20.0, "{r}");
    assert!(after * 10.0 <= before, "grouped {after} vs {before}");
    assert_eq!(g["found"], r["found"], "grouping changes no incident");
}

#[test]
fn a_topology_without_usable_rows_or_with_checkpoints_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(&dir.path().join("fleet"), 20, 12, 1, &[]);
    let topology = dir.path().join("topology.csv");
    std::fs::write(&topology, "customer,element,region\nonly,two\n").unwrap();
    let out = Command::new(common::bin())
        .args([
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.path().join("o.jsonl").to_str().unwrap(),
            "--topology",
            topology.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no usable row"), "{err}");
    let out = Command::new(common::bin())
        .args([
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.path().join("o.jsonl").to_str().unwrap(),
            "--topology",
            dir.path().join("fleet/topology.csv").to_str().unwrap(),
            "--checkpoint-dir",
            dir.path().join("ck").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not checkpointed"), "{err}");
}
