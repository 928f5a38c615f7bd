//! Pictures (`fleetwatch plot`, `fleetwatch report`): the band drawn is the run's own, the same picture for any
//! worker layout, the report counts what the run wrote and links pictures that exist, and bad requests are
//! refused with a reason.

mod common;

use std::process::Command;

use fleetwatch::commands::{ReplaySettings, replay_watching};

#[test]
fn pictures_show_the_runs_own_bands_and_changes_for_any_layout() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    let input = common::generate(&fleet, 120, 600, 7, &["--congestion-rate", "0.5"]);
    let topo = fleet.join("topology.csv");
    let topo_s = topo.to_str().unwrap();
    let out = dir.path().join("changes.jsonl");
    common::run(
        &input,
        &out,
        &["--reproducible", "--topology", topo_s, "--workers", "2"],
    );
    let run_text = std::fs::read_to_string(&out).unwrap();
    let changes: Vec<serde_json::Value> = run_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["type"] == "change" && v["level"] == "feature")
        .collect();
    assert!(
        changes.len() > 10,
        "the fleet must alert: {}",
        changes.len()
    );
    let customer = changes[0]["customer"].as_str().unwrap().to_string();

    // The replay's evidence at each of the customer's feature changes is the evidence the run wrote.
    let settings = ReplaySettings {
        dataflow: None,
        inputs: vec![input.clone()],
        topology: Some(topo.clone()),
        group_incidents: false,
        workers: 1,
    };
    let r = replay_watching(&settings, std::slice::from_ref(&customer)).unwrap();
    assert!(!r.rows.is_empty());
    assert!(
        r.elements.contains_key(&customer),
        "its element comes from the topology"
    );
    let names: Vec<&str> = r.spec.features.iter().map(|f| f.name.as_str()).collect();
    let mut compared = 0;
    for c in changes
        .iter()
        .filter(|c| c["customer"] == customer.as_str() && c["status"] != "cleared")
    {
        let f = names
            .iter()
            .position(|n| *n == c["feature"].as_str().unwrap())
            .unwrap() as u16;
        let epoch = c["epoch"].as_u64().unwrap();
        let row = r
            .rows
            .iter()
            .find(|w| w.epoch == epoch && w.evidence.feature == f)
            .unwrap_or_else(|| panic!("no watched evidence for {c}"));
        for (key, v) in [
            ("expected", row.evidence.expected),
            ("lower", row.evidence.lower),
            ("upper", row.evidence.upper),
        ] {
            let written = c[key].as_f64().unwrap();
            assert!(
                (written - v as f64).abs() <= 1e-3 * (1.0 + written.abs()),
                "{key} of {c}: watched {v}"
            );
        }
        compared += 1;
    }
    assert!(compared > 0);

    // The SVG: the same bytes for 1 and 2 replay workers; panels of the alerting features.
    let svg1 = dir.path().join("w1.svg");
    let svg2 = dir.path().join("w2.svg");
    let labels = fleet.join("labels.jsonl");
    let mut summary = serde_json::Value::Null;
    for (svg, w) in [(&svg1, "1"), (&svg2, "2")] {
        let text = common::fleetwatch(&[
            "plot",
            "--input",
            input.to_str().unwrap(),
            "--topology",
            topo_s,
            "--labels",
            labels.to_str().unwrap(),
            "--customer",
            &customer,
            "--workers",
            w,
            "--out",
            svg.to_str().unwrap(),
        ]);
        summary = serde_json::from_str(&text).unwrap();
    }
    let a = std::fs::read(&svg1).unwrap();
    assert_eq!(
        a,
        std::fs::read(&svg2).unwrap(),
        "same picture for any layout"
    );
    let svg = String::from_utf8(a).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(&format!("customer {customer}")));
    let first_feature = changes[0]["feature"].as_str().unwrap();
    assert!(
        summary["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == first_feature),
        "{summary}"
    );
    assert!(svg.contains(first_feature));
    assert!(summary["alert_spans"].as_u64().unwrap() >= 1, "{summary}");

    // The report: what the run wrote, pictures of its top customers, linked.
    let rep = dir.path().join("report");
    let text = common::fleetwatch(&[
        "report",
        "--changes",
        out.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--topology",
        topo_s,
        "--top",
        "3",
    ]);
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    let raised = run_text
        .lines()
        .filter(|l| l.contains("\"type\":\"change\"") && l.contains("\"status\":\"raised\""))
        .count() as u64;
    assert_eq!(s["raised"].as_u64().unwrap(), raised, "{s}");
    assert_eq!(s["replay_matches"], true, "{s}");
    let page = std::fs::read_to_string(rep.join("index.html")).unwrap();
    let plots = s["plots"].as_array().unwrap();
    assert_eq!(plots.len(), 3);
    for p in plots {
        let p = std::path::Path::new(p.as_str().unwrap());
        assert!(p.is_file(), "{}", p.display());
        let rel = format!("plots/{}", p.file_name().unwrap().to_str().unwrap());
        assert!(page.contains(&format!("href=\"{rel}\"")), "{rel} linked");
    }

    // Refusals, with reasons: a customer not in the input, a feature not in the spec, a bad time.
    let refuse = |args: &[&str], why: &str| {
        let o = Command::new(common::bin()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{args:?}: {err}");
    };
    let svg3 = dir.path().join("x.svg");
    let base = [
        "plot",
        "--input",
        input.to_str().unwrap(),
        "--out",
        svg3.to_str().unwrap(),
    ];
    refuse(
        &[&base[..], &["--customer", "cust-9999999"]].concat(),
        "no scored observation",
    );
    refuse(
        &[&base[..], &["--customer", &customer, "--features", "nope"]].concat(),
        "no feature \"nope\"",
    );
    refuse(
        &[&base[..], &["--customer", &customer, "--from", "yesterday"]].concat(),
        "--from",
    );
    assert!(!svg3.exists(), "nothing written on a refusal");
}
