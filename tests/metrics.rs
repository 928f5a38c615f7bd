//! `run --metrics ADDR`: a running pipeline is scraped over HTTP, and what the scrape says agrees with the
//! run's own summary lines up to the epoch the scrape names.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET path` on 127.0.0.1:port: (status line, body), or `None` if nothing listens yet.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// The samples of a scrape: series (name with labels) → value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The samples of one labelled metric (`prefix` is its name and `{`) with a value above zero.
fn nonzero(samples: &BTreeMap<String, f64>, prefix: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|(k, v)| k.starts_with(prefix) && **v > 0.0)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[test]
fn a_scrape_of_a_running_pipeline_agrees_with_its_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        300,
        5,
        &["--malformed-rate", "0.01", "--anomaly-rate", "2"],
    );
    let out = dir.path().join("out.jsonl");
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    // 300 epochs of 5 minutes at 9,000× event time: about 10 s, long enough to scrape it running.
    let mut child = common::spawn_run(
        &input,
        &out,
        &["--workers", "2", "--speed", "9000", "--metrics", &addr],
    );
    let started = Instant::now();
    let mut scrapes = Vec::new();
    let mut other_paths_checked = false;
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not end"
        );
        if let Some((status, body)) = get(port, "/metrics") {
            assert!(status.contains("200"), "{status}");
            let s = samples(&body);
            if s.get("fleetwatch_epochs_closed_total")
                .is_some_and(|&n| n >= 1.0)
            {
                scrapes.push(s);
            }
            if !other_paths_checked {
                let (status, _) = get(port, "/nope").expect("a 404 answer");
                assert!(status.contains("404"), "{status}");
                other_paths_checked = true;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    common::wait_success(child);
    assert!(
        scrapes.len() >= 3,
        "only {} scrapes while running",
        scrapes.len()
    );

    // The run's summaries and changes, per epoch.
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let check = |s: &BTreeMap<String, f64>| {
        let last = s["fleetwatch_last_epoch"] as u64;
        let summaries: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| v["type"] == "summary" && v["epoch"].as_u64().unwrap() <= last)
            .collect();
        assert_eq!(
            s["fleetwatch_epochs_closed_total"] as usize,
            summaries.len(),
            "epochs closed up to {last}"
        );
        let sum = |k: &str| -> f64 {
            summaries
                .iter()
                .map(|v| v[k].as_u64().unwrap() as f64)
                .sum()
        };
        assert_eq!(s["fleetwatch_records_total"], sum("records"));
        assert_eq!(s["fleetwatch_late_records_total"], sum("late"));
        assert_eq!(s["fleetwatch_series_scored_total"], sum("series_scored"));
        let dead: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with("fleetwatch_dead_lettered_total{"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(dead, sum("dead_lettered"));
        // Changes by status, kind and level, and the open alerts they leave, from the change lines.
        let mut changes: BTreeMap<String, f64> = BTreeMap::new();
        let mut open: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
        for v in lines
            .iter()
            .filter(|v| v["type"] == "change" && v["epoch"].as_u64().unwrap() <= last)
        {
            let (status, kind, level) = (
                v["status"].as_str().unwrap(),
                v["kind"].as_str().unwrap(),
                v["level"].as_str().unwrap(),
            );
            *changes
                .entry(format!(
                    "fleetwatch_changes_total{{status=\"{status}\",kind=\"{kind}\",level=\"{level}\"}}"
                ))
                .or_default() += 1.0;
            let key = (
                v["customer"].as_str().unwrap().to_string(),
                v["feature"].as_str().unwrap().to_string(),
            );
            if status == "cleared" {
                open.remove(&key);
            } else {
                open.insert(key, (kind.to_string(), level.to_string()));
            }
        }
        assert_eq!(
            nonzero(s, "fleetwatch_changes_total{"),
            changes,
            "changes up to epoch {last}"
        );
        let mut open_by: BTreeMap<String, f64> = BTreeMap::new();
        for (kind, level) in open.values() {
            *open_by
                .entry(format!(
                    "fleetwatch_open_alerts{{kind=\"{kind}\",level=\"{level}\"}}"
                ))
                .or_default() += 1.0;
        }
        assert_eq!(
            nonzero(s, "fleetwatch_open_alerts{"),
            open_by,
            "open alerts after epoch {last}"
        );
        assert_eq!(
            summaries.last().unwrap()["open_anomalies"]
                .as_f64()
                .unwrap(),
            open.len() as f64
        );
        assert!(s["fleetwatch_resident_memory_bytes"] > 1e6);
        assert_eq!(
            s["fleetwatch_epoch_seconds_count"],
            s["fleetwatch_epochs_closed_total"]
        );
    };
    for s in &scrapes {
        check(s);
    }
    // The scrapes saw the run advance, and its alerts: the last one is well into the run.
    let last = scrapes.last().unwrap();
    assert!(last["fleetwatch_epochs_closed_total"] >= 100.0, "{last:?}");
    assert!(
        last.iter()
            .any(|(k, v)| k.starts_with("fleetwatch_changes_total{") && *v > 0.0),
        "{last:?}"
    );
    assert!(
        last.iter().any(|(k, v)| k
            .starts_with("fleetwatch_dead_lettered_total{reason=\"malformed\"}")
            && *v > 0.0),
        "{last:?}"
    );
}
