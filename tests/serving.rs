//! `run --serve` and `run --predictions`: live queries of a running pipeline agree with what the run wrote
//! and read; every prediction lands in Parquet that a real reader (pyarrow) reads, the same rows for any
//! worker layout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

const EPOCH: i64 = 300;

/// The embedded spec's features with `transform = "rate"`: what the model observes is their increase.
const RATE_FEATURES: [&str; 2] = ["uptime_s", "reboot_count"];

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(4)
        .build()
}

/// `GET url` with an optional token: (status, body as JSON), or `None` if nothing listens yet.
fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Option<(u16, Value)> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let (status, body) = match req.call() {
        Ok(r) => (r.status(), r.into_string().ok()?),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().ok()?),
        Err(_) => return None,
    };
    Some((
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}")),
    ))
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The open alerts after each epoch, from a run's change lines: epoch → (customer, feature) → (kind,
/// severity).
type Open = BTreeMap<(String, String), (String, String)>;

fn open_after(out: &[Value], epoch: u64) -> Open {
    let mut open = Open::new();
    for v in out
        .iter()
        .filter(|v| v["type"] == "change" && v["epoch"].as_u64().unwrap() <= epoch)
    {
        let key = (
            v["customer"].as_str().unwrap().to_string(),
            v["feature"].as_str().unwrap().to_string(),
        );
        if v["status"] == "cleared" {
            open.remove(&key);
        } else {
            open.insert(
                key,
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["severity"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    open
}

/// Every value a customer reported per (epoch, feature), from the recorded topic.
fn reported(input: &Path) -> BTreeMap<(String, i64, String), Vec<f64>> {
    let mut m: BTreeMap<(String, i64, String), Vec<f64>> = BTreeMap::new();
    for v in lines(input).iter().skip(1) {
        let value = &v["value"];
        let Some(c) = value["customer_id"].as_str() else {
            continue;
        };
        let Some(ts) = value["ts"].as_i64() else {
            continue;
        };
        for (k, x) in value.as_object().unwrap() {
            if let Some(x) = x.as_f64() {
                m.entry((c.to_string(), ts.div_euclid(EPOCH), k.clone()))
                    .or_default()
                    .push(x);
            }
        }
    }
    m
}

#[test]
fn live_queries_of_a_running_pipeline_agree_with_its_output_and_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        120,
        300,
        9,
        // (every customer reports from the start: a joiner is rightly unknown before its first log)
        &["--anomaly-rate", "3", "--join-fraction", "0"],
    );
    let out = dir.path().join("out.jsonl");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-for-the-test\n").unwrap();
    let token = Some("t0ken-for-the-test");
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    // 300 epochs at 9,000× event time: about 10 s of queries.
    let child = common::spawn_run(
        &input,
        &out,
        &[
            "--workers",
            "2",
            "--speed",
            "9000",
            "--serve",
            &format!("127.0.0.1:{port}"),
            "--serve-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let a = agent();
    let started = Instant::now();
    let mut answers: Vec<Value> = Vec::new();
    let mut pages: Vec<Value> = Vec::new();
    let mut errors_checked = false;
    let mut i = 0u64;
    let mut child = Some(child);
    while child.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not end"
        );
        let Some((status, health)) = get(&a, &format!("{base}/health"), None) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        assert_eq!(status, 200, "{health}");
        if health["views"].is_null() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        for _ in 0..5 {
            i += 1;
            let c = format!("cust-{:07}", (i * 37) % 120);
            if let Some((s, v)) = get(&a, &format!("{base}/customers/{c}"), token) {
                assert_eq!(s, 200, "{v}");
                assert_eq!(v["customer"], c.as_str());
                answers.push(v);
            }
        }
        if let Some((s, v)) = get(&a, &format!("{base}/anomalies?limit=10000"), token) {
            assert_eq!(s, 200, "{v}");
            pages.push(v);
        }
        if !errors_checked {
            let expect = |path: &str, token: Option<&str>, want: u16| {
                let (s, v) = get(&a, &format!("{base}{path}"), token).unwrap();
                assert_eq!(s, want, "{path}: {v}");
                assert!(v["error"].is_string(), "{path}: {v}");
            };
            expect("/customers/cust-0000001", None, 401);
            expect("/customers/cust-0000001", Some("wrong-token-for-it"), 401);
            expect("/anomalies", None, 401);
            expect("/customers/cust-9999999", token, 404);
            expect("/customers/not%20an%20id", token, 400);
            expect("/customers/other-1", token, 400);
            expect("/anomalies?limit=0", token, 400);
            expect("/anomalies?kind=meteor", token, 400);
            expect("/anomalies?cursor=x", token, 400);
            expect("/nothing/here", token, 404);
            errors_checked = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    common::wait_success(child.take().unwrap());
    assert!(errors_checked, "no answer while the run was running");
    assert!(answers.len() >= 20, "only {} answers", answers.len());

    let output = lines(&out);
    let values = reported(&input);
    let mut with_alerts = 0;
    let mut observed_checked = 0;
    for v in &answers {
        let e = v["epoch"].as_u64().unwrap();
        let c = v["customer"].as_str().unwrap();
        let open = open_after(&output, e);
        for f in v["features"].as_array().unwrap() {
            let name = f["feature"].as_str().unwrap();
            let alert = open
                .get(&(c.to_string(), name.to_string()))
                .map(|(k, s)| serde_json::json!({"kind": k, "severity": s}))
                .unwrap_or(Value::Null);
            assert_eq!(f["alert"], alert, "{c} {name} as of epoch {e}: {v}");
            with_alerts += (!alert.is_null()) as usize;
            if let Some(at) = f["epoch"].as_i64() {
                assert!(at as u64 <= e);
                let x = f["observed"].as_f64().unwrap();
                let sent = &values[&(c.to_string(), at, name.to_string())];
                // (the spec models its two counters by their increase per log: `transform = "rate"`)
                if !RATE_FEATURES.contains(&name) {
                    assert!(
                        sent.iter().any(|s| (*s as f32) == x as f32),
                        "{c} {name} at {at}: answered {x}, sent {sent:?}"
                    );
                }
                let (lo, ex, hi) = (
                    f["lower"].as_f64().unwrap(),
                    f["expected"].as_f64().unwrap(),
                    f["upper"].as_f64().unwrap(),
                );
                assert!(lo <= ex && ex <= hi, "{f}");
                observed_checked += 1;
            }
        }
        // The customer-level alerts: the customer alert and silence.
        let star = open.get(&(c.to_string(), "*".to_string()));
        let silence = v["silence"]["kind"].as_str();
        let alert = v["alert"]["kind"].as_str();
        match star {
            Some((k, _)) if k == "silent" => assert_eq!(silence, Some("silent"), "{v}"),
            Some((k, _)) => assert_eq!(alert, Some(k.as_str()), "{v}"),
            None => assert!(silence.is_none() && alert.is_none(), "{v}"),
        }
        let last = v["last_seen_epoch"].as_u64().unwrap();
        assert!(
            values
                .keys()
                .any(|(cc, at, _)| cc == c && *at as u64 == last)
        );
    }
    assert!(observed_checked > 1000, "{observed_checked}");
    let mut pages_with_alerts = 0;
    for p in &pages {
        let e = p["epoch"].as_u64().unwrap();
        let want: BTreeSet<(String, String, String, String)> = open_after(&output, e)
            .into_iter()
            .map(|((c, f), (k, s))| (c, f, k, s))
            .collect();
        let got: BTreeSet<(String, String, String, String)> = p["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let s = |k: &str| a[k].as_str().unwrap().to_string();
                (s("customer"), s("feature"), s("kind"), s("severity"))
            })
            .collect();
        assert_eq!(got, want, "open alerts as of epoch {e}");
        pages_with_alerts += (!got.is_empty()) as usize;
    }
    assert!(pages_with_alerts > 0 && with_alerts > 0, "nothing was open");
}

#[test]
fn anomalies_page_through_with_a_cursor_and_filter_by_kind_and_level() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        150,
        300,
        4,
        &["--anomaly-rate", "4"],
    );
    let out = dir.path().join("out.jsonl");
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = common::spawn_run(
        &input,
        &out,
        &["--speed", "6000", "--serve", &format!("127.0.0.1:{port}")],
    );
    let a = agent();
    let started = Instant::now();
    let mut checked = 0;
    while child.try_wait().unwrap().is_none() && checked < 5 {
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(100));
        let Some((200, all)) = get(&a, &format!("{base}/anomalies?limit=10000"), None) else {
            continue;
        };
        let n = all["count"].as_u64().unwrap();
        if n < 5 {
            continue;
        }
        // Pages of 2 walk the same list (unless an epoch closed in between: then start over).
        let mut walked = Vec::new();
        let mut url = format!("{base}/anomalies?limit=2");
        let mut same_epoch = true;
        loop {
            let (s, p) = get(&a, &url, None).unwrap();
            assert_eq!(s, 200);
            same_epoch &= p["epoch"] == all["epoch"];
            walked.extend(p["alerts"].as_array().unwrap().iter().cloned());
            match p["next"].as_str() {
                Some(c) => url = format!("{base}/anomalies?limit=2&cursor={c}"),
                None => break,
            }
        }
        if !same_epoch {
            continue;
        }
        assert_eq!(&walked, all["alerts"].as_array().unwrap());
        for (q, field, want) in [
            ("kind=level_shift", "kind", "level_shift"),
            ("level=customer", "level", "customer"),
            ("level=feature", "level", "feature"),
            ("severity=critical", "severity", "critical"),
        ] {
            let (s, p) = get(&a, &format!("{base}/anomalies?limit=10000&{q}"), None).unwrap();
            assert_eq!(s, 200);
            if p["epoch"] != all["epoch"] {
                continue;
            }
            let want_list: Vec<&Value> = all["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x[field] == want)
                .collect();
            let got: Vec<&Value> = p["alerts"].as_array().unwrap().iter().collect();
            assert_eq!(got, want_list, "{q}");
        }
        checked += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(checked > 0, "never saw five open alerts");
}

#[test]
fn in_a_cluster_any_process_answers_for_any_customer_by_redirecting_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        80,
        300,
        6,
        &["--join-fraction", "0"],
    );
    let cluster = common::two_process_cluster(dir.path());
    // Two consecutive free ports: process i serves on the port + i.
    let port = (0..50)
        .map(|_| common::free_port())
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .unwrap();
    let children: Vec<Child> = (0..2)
        .map(|p| {
            common::spawn_run(
                &input,
                &dir.path().join(format!("out-{p}.jsonl")),
                &[
                    "--cluster",
                    cluster.to_str().unwrap(),
                    "--process",
                    &p.to_string(),
                    "--speed",
                    "6000",
                    "--serve",
                    &format!("127.0.0.1:{port}"),
                ],
            )
        })
        .collect();
    let a = agent();
    let no_redirects = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build();
    let started = Instant::now();
    let mut redirected = [0usize; 2];
    let mut answered = 0;
    'outer: while started.elapsed() < Duration::from_secs(60) {
        for (p, url) in [port, port + 1]
            .iter()
            .map(|q| format!("http://127.0.0.1:{q}"))
            .enumerate()
        {
            let ready = get(&a, &format!("{url}/health"), None)
                .is_some_and(|(s, h)| s == 200 && !h["views"].is_null());
            if !ready {
                std::thread::sleep(Duration::from_millis(50));
                continue 'outer;
            }
            for i in 0..40 {
                let c = format!("cust-{i:07}");
                let (s, v) = get(&a, &format!("{url}/customers/{c}"), None).unwrap();
                assert_eq!(s, 200, "{v}");
                assert_eq!(v["customer"], c.as_str());
                let (s, _) = get(&no_redirects, &format!("{url}/customers/{c}"), None).unwrap();
                assert!(s == 200 || s == 307, "{s}");
                redirected[p] += (s == 307) as usize;
                answered += 1;
            }
            let (s, v) = get(&a, &format!("{url}/anomalies"), None).unwrap();
            assert_eq!(s, 200, "{v}");
        }
        break;
    }
    for c in children {
        common::wait_success(c);
    }
    assert_eq!(answered, 80);
    // Each process owns about half of the customers and redirects the others.
    assert!(redirected[0] > 5 && redirected[1] > 5, "{redirected:?}");
    assert_eq!(redirected[0] + redirected[1], 40, "{redirected:?}");
}

/// Reads a predictions tree with pyarrow: per epoch, its rows and the sum of their scores.
fn read_with_pyarrow(dir: &Path) -> BTreeMap<u64, (u64, f64)> {
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
out = {}
for row in t.select(["epoch", "score"]).to_pylist():
    e = str(row["epoch"])
    n, s = out.get(e, (0, 0.0))
    out[e] = (n + 1, s + row["score"])
print(json.dumps(out))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("python3 runs (the test script installs pyarrow)");
    assert!(
        o.status.success(),
        "pyarrow could not read {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: BTreeMap<String, (u64, f64)> = serde_json::from_slice(&o.stdout).unwrap();
    v.into_iter()
        .map(|(k, x)| (k.parse().unwrap(), x))
        .collect()
}

/// Every row of a predictions tree (read with the parquet crate), as sortable text.
fn rows(dir: &Path) -> Vec<String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out = Vec::new();
    for epoch in std::fs::read_dir(dir).unwrap() {
        let epoch = epoch.unwrap().path();
        let e = epoch.file_name().unwrap().to_string_lossy().to_string();
        for part in std::fs::read_dir(&epoch).unwrap() {
            let part = part.unwrap().path();
            assert_eq!(part.extension().unwrap(), "parquet", "{}", part.display());
            let r = SerializedFileReader::new(std::fs::File::open(&part).unwrap()).unwrap();
            for row in r.get_row_iter(None).unwrap() {
                out.push(format!("{e} {}", row.unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_prediction_is_written_as_parquet_that_pyarrow_reads_the_same_for_any_layout() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        150,
        200,
        12,
        &["--anomaly-rate", "3"],
    );
    let mut trees = Vec::new();
    for workers in ["1", "3"] {
        let pred = dir.path().join(format!("pred-{workers}"));
        let out = dir.path().join(format!("out-{workers}.jsonl"));
        common::run(
            &input,
            &out,
            &[
                "--workers",
                workers,
                "--reproducible",
                "--predictions",
                pred.to_str().unwrap(),
                "--predictions-every",
                "20",
            ],
        );
        trees.push((pred, out));
    }
    let (pred, out) = &trees[0];
    let summaries: BTreeMap<u64, u64> = lines(out)
        .iter()
        .filter(|v| v["type"] == "summary")
        .map(|v| {
            (
                v["epoch"].as_u64().unwrap(),
                v["series_scored"].as_u64().unwrap(),
            )
        })
        .collect();
    let due: BTreeMap<u64, u64> = summaries
        .iter()
        .filter(|(e, _)| *e % 20 == 0)
        .map(|(e, n)| (*e, *n))
        .collect();
    assert!(due.len() >= 9, "{due:?}");
    let read = read_with_pyarrow(pred);
    let counts: BTreeMap<u64, u64> = read.iter().map(|(e, (n, _))| (*e, *n)).collect();
    assert_eq!(counts, due, "rows per epoch = the summary's series scored");
    // The same rows whatever the layout (files split differently: 1 part vs 3 per epoch).
    let one = rows(&trees[0].0);
    let three = rows(&trees[1].0);
    assert_eq!(one.len() as u64, due.values().sum::<u64>());
    assert_eq!(one, three);
    let parts = std::fs::read_dir(
        trees[1]
            .0
            .join(format!("epoch={:06}", due.keys().next().unwrap())),
    )
    .unwrap()
    .count();
    assert_eq!(parts, 3);
    // Alerts in the files are the output's open alerts at that epoch.
    let output = lines(out);
    let (e, _) = due.iter().last().unwrap();
    let open = open_after(&output, *e);
    let in_file: Open = one
        .iter()
        .filter(|r| r.starts_with(&format!("epoch={e:06} ")) && !r.contains("alert: null"))
        .map(|r| {
            let field = |k: &str| {
                let at = r.find(&format!("{k}: \"")).unwrap() + k.len() + 3;
                r[at..at + r[at..].find('"').unwrap()].to_string()
            };
            (
                (field("customer"), field("feature")),
                (field("alert"), field("severity")),
            )
        })
        .collect();
    let open_features: Open = open
        .into_iter()
        .filter(|((c, f), _)| {
            f != "*"
                && one.iter().any(|r| {
                    r.starts_with(&format!("epoch={e:06} "))
                        && r.contains(&format!("customer: \"{c}\", feature: \"{f}\""))
                })
        })
        .collect();
    assert_eq!(in_file, open_features);
}
