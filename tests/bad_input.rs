//! Bad input never crashes the pipeline and never changes what the good input produces: every malformed line
//! goes to the dead-letter output with its reason, and the anomaly changes are exactly those of the good
//! lines alone.

mod common;

use std::collections::BTreeMap;

fn changes_and_summaries(path: &std::path::Path) -> (Vec<String>, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut changes = Vec::new();
    let mut summaries = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("output lines are JSON");
        match v["type"].as_str() {
            Some("change") => changes.push(line.to_string()),
            Some("summary") => summaries.push(v),
            _ => {}
        }
    }
    (changes, summaries)
}

#[test]
fn malformed_lines_are_dead_lettered_and_good_output_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        420,
        4,
        // a day of clean history first: series are mature (and can alert) only after a day
        &["--history-epochs", "290", "--anomaly-rate", "3.0"],
    );
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let good = &lines[1..];
    let sample = good[good.len() / 2];
    let v: serde_json::Value = serde_json::from_str(sample).unwrap();
    let ts = v["value"]["ts"].as_i64().unwrap();
    let with = |from: &str, to: &str| sample.replacen(from, to, 1);
    let cust = v["key"].as_str().unwrap().to_string();
    // (bad line, expected reason code)
    let bad: Vec<(String, &str)> = vec![
        (sample[..sample.len() / 3].to_string(), "malformed"),
        ("this is not json at all".into(), "malformed"),
        ("\u{0}\u{1}garbage\u{7f}".into(), "malformed"),
        (
            with("\"rssi_dbm\":", "\"rssi_dbm\":\"strong\",\"x_\":"),
            "wrong_type",
        ),
        (with("\"snr_db\":", "\"snr_db\":true,\"y_\":"), "wrong_type"),
        (
            with("\"noise_floor_dbm\":", "\"noise_floor_dbm\":NaN,\"z_\":"),
            "non_finite",
        ),
        (
            with("\"temp_c\":", "\"temp_c\":Infinity,\"w_\":"),
            "non_finite",
        ),
        (
            with("\"mem_pct\":", "\"mem_pct\":1e999,\"v_\":"),
            "non_finite",
        ),
        (
            with(&format!("\"ts\":{ts}"), "\"ts\":99"),
            "absurd_timestamp",
        ),
        (
            with(
                &format!("\"ts\":{ts}"),
                &format!("\"ts\":{}", ts + 10 * 86_400),
            ),
            "absurd_timestamp",
        ),
        (
            with(&format!("\"ts\":{ts}"), "\"ts\":\"yesterday\""),
            "wrong_type",
        ),
        (
            with(
                &format!("\"customer_id\":\"{cust}\""),
                "\"customer_id\":\"CUST 01\"",
            ),
            "bad_customer_id",
        ),
        (
            with(
                &format!("\"customer_id\":\"{cust}\""),
                "\"customer_id\":\"user-17\"",
            ),
            "bad_customer_id",
        ),
        (with("\"cpu_pct\":", "\"cpu_load\":"), "unknown_feature"),
        (
            with(&format!("\"key\":\"{cust}\""), "\"key\":\"cust-9999999\""),
            "key_mismatch",
        ),
        (
            with(&format!("\"customer_id\":\"{cust}\","), ""),
            "missing_field",
        ),
        (with(&format!("\"ts\":{ts},"), ""), "missing_field"),
        (
            sample.split("\"value\":").next().unwrap().to_string() + "\"value\":null}",
            "missing_field",
        ),
        (
            sample.split("\"value\":").next().unwrap().to_string() + "\"value\":\"raw bytes\"}",
            "wrong_type",
        ),
    ];
    // Mix the bad lines in, plus exact duplicates of good lines right after their originals.
    let mut mixed = vec![lines[0].to_string()];
    let mut dup_count = 0;
    let step = good.len() / (bad.len() + 1);
    for (i, line) in good.iter().enumerate() {
        mixed.push(line.to_string());
        if i % step == step / 2 && i / step < bad.len() {
            mixed.push(bad[i / step].0.clone());
        }
        if i % 997 == 5 {
            mixed.push(line.to_string());
            dup_count += 1;
        }
    }
    let dirty = dir.path().join("dirty.jsonl");
    std::fs::write(&dirty, mixed.join("\n") + "\n").unwrap();

    let clean_out = dir.path().join("clean.out");
    let dirty_out = dir.path().join("dirty.out");
    let dead = dir.path().join("dead.jsonl");
    common::run(&input, &clean_out, &["--workers", "2", "--reproducible"]);
    common::run(
        &dirty,
        &dirty_out,
        &[
            "--dead-letter",
            dead.to_str().unwrap(),
            "--workers",
            "2",
            "--reproducible",
        ],
    );

    let (c_changes, c_sum) = changes_and_summaries(&clean_out);
    let (d_changes, d_sum) = changes_and_summaries(&dirty_out);
    assert!(!c_changes.is_empty());
    assert_eq!(
        c_changes, d_changes,
        "good lines give the same anomaly changes"
    );
    assert_eq!(c_sum.len(), d_sum.len());
    let mut dead_in_summaries = 0;
    for (c, d) in c_sum.iter().zip(&d_sum) {
        for k in [
            "epoch",
            "records",
            "late",
            "series_scored",
            "changes",
            "open_anomalies",
        ] {
            assert_eq!(c[k], d[k], "summary field {k}");
        }
        dead_in_summaries += d["dead_lettered"].as_u64().unwrap();
    }

    let dead_text = std::fs::read_to_string(&dead).unwrap();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for line in dead_text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("dead letters are JSON");
        assert!(!v["detail"].as_str().unwrap().is_empty());
        *reasons
            .entry(v["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in &bad {
        *expected.entry(r.to_string()).or_default() += 1;
    }
    *expected.entry("duplicate".into()).or_default() += dup_count;
    assert_eq!(
        reasons, expected,
        "every bad line is dead-lettered once, with its reason"
    );
    assert_eq!(
        dead_in_summaries as usize,
        bad.len() + dup_count,
        "summaries count them"
    );
}

#[test]
fn late_records_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"partition":0,"offset":OFF,"key":"cust-1","value":{"customer_id":"cust-1","ts":TS,"rssi_dbm":-60}}"#;
    let base = 1_793_577_600i64;
    let mut lines = Vec::new();
    for i in 0..20i64 {
        lines.push(
            good.replace("OFF", &i.to_string())
                .replace("TS", &(base + i * 300).to_string()),
        );
    }
    // an hour late: its epoch closed long ago in partition 0
    lines.push(
        good.replace("OFF", "20")
            .replace("TS", &(base + 3 * 300 + 7).to_string()),
    );
    let input = dir.path().join("late.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for (policy, late_dead) in [("next_epoch", 0), ("dead_letter", 1)] {
        let spec = dir.path().join(format!("{policy}.toml"));
        let text = fleetwatch::spec::EMBEDDED_HOME_WIFI.replace(
            "late_policy = \"next_epoch\"",
            &format!("late_policy = \"{policy}\""),
        );
        std::fs::write(&spec, text).unwrap();
        let out = dir.path().join(format!("{policy}.out"));
        let dead = dir.path().join(format!("{policy}.dead"));
        common::run(
            &input,
            &out,
            &[
                "--dataflow",
                spec.to_str().unwrap(),
                "--dead-letter",
                dead.to_str().unwrap(),
                "--reproducible",
            ],
        );
        let end = common::end_record(&out);
        assert_eq!(end["late"], 1, "{policy}: the late record is counted");
        assert_eq!(end["dead_lettered"], late_dead, "{policy}");
        assert_eq!(end["records"], 21 - late_dead, "{policy}");
        let dead_lines = std::fs::read_to_string(&dead).unwrap();
        assert_eq!(dead_lines.lines().count() as u64, late_dead);
        if late_dead == 1 {
            assert!(dead_lines.contains("\"reason\":\"late\""));
        }
    }
}

#[test]
fn csv_input_with_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("export.csv");
    let mut text = String::from("customer_id,ts,rssi_dbm,snr_db\n");
    for i in 0..50 {
        text += &format!("cust-1,{},{},30\n", 1_793_577_600 + i * 300, -60 - (i % 3));
        if i == 10 {
            text += "cust-1,not-a-time,-60,30\n";
            text += "cust-1,1793580900,-60\n";
            text += "cust-1,1793581200,NaN,30\n";
        }
    }
    std::fs::write(&csv, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    common::run(
        &csv,
        &out,
        &[
            "--dead-letter",
            dead.to_str().unwrap(),
            "--workers",
            "2",
            "--reproducible",
        ],
    );
    let end = common::end_record(&out);
    assert_eq!(end["records"], 50);
    assert_eq!(end["dead_lettered"], 3);
    let reasons: Vec<String> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(reasons, vec!["wrong_type", "malformed", "non_finite"]);
    // A header naming an unknown feature is a usage error reported before any work, not a crash.
    let bad_header = dir.path().join("bad.csv");
    std::fs::write(&bad_header, "customer_id,ts,rssi\ncust-1,1793577600,-60\n").unwrap();
    let res = std::process::Command::new(common::bin())
        .args([
            "run",
            "--input",
            bad_header.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("not a feature of the spec"));
}

/// A reader that closes the pipe early (`fleetwatch eval … | head`) ends the program quietly with success,
/// not with a panic and a backtrace.
#[test]
fn a_closed_stdout_pipe_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    let input = common::generate(&fleet, 20, 60, 3, &[]);
    let out = dir.path().join("out.jsonl");
    common::run(&input, &out, &["--reproducible"]);
    let mut child = std::process::Command::new(common::bin())
        .args([
            "eval",
            "--labels",
            fleet.join("labels.jsonl").to_str().unwrap(),
            "--alerts",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the command writes anything.
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{:?}: {err}", done.status);
    assert!(!err.contains("panicked"), "{err}");
}
