//! `produce` and `record` against a real Kafka-protocol broker (Tansu) on 127.0.0.1, started and stopped by
//! each test. The broker binary is `$FLEETWATCH_TANSU` or `tansu` on the PATH (`scripts/test` installs one).
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Tansu broker with in-memory storage on a free loopback port; killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let bin = std::env::var_os("FLEETWATCH_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("tansu"));
        let port = common::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("broker.log")).expect("broker log");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the broker {bin:?} ({e}); set FLEETWATCH_TANSU or run ./scripts/test")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }

    fn address(&self, topic: &str) -> String {
        format!("kafka://127.0.0.1:{}/{topic}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A recorded topic's lines per partition (header skipped; a line without a readable partition belongs to
/// the partition of the line before it, as the file source reads it).
fn by_partition(path: &Path) -> BTreeMap<u32, Vec<String>> {
    let text = std::fs::read_to_string(path).expect("recorded topic");
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut last = 0;
    for line in text.lines().skip(1) {
        let p = fleetwatch::sources::parse::fast_partition(line.as_bytes()).unwrap_or(last);
        last = p;
        out.entry(p).or_default().push(line.to_string());
    }
    out
}

fn reasons(path: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("dead letters are JSON");
        *m.entry(v["reason"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn produce_then_record_round_trips_a_fleet_and_replays_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    // 1 % malformed messages of every kind the generator makes: they must survive the trip as they were.
    let fleet = dir.path().join("fleet");
    let input = common::generate(
        &fleet,
        40,
        300,
        11,
        &["--partitions", "4", "--malformed-rate", "0.01"],
    );
    let topic = broker.address("telemetry");
    let produced: serde_json::Value = serde_json::from_str(&common::fleetwatch(&[
        "produce",
        "--from",
        input.to_str().unwrap(),
        "--to",
        &topic,
    ]))
    .unwrap();
    let recorded_path = dir.path().join("recorded.jsonl");
    let recorded: serde_json::Value = serde_json::from_str(&common::fleetwatch(&[
        "record",
        "--from",
        &topic,
        "--out",
        recorded_path.to_str().unwrap(),
        "--until-idle",
        "3",
    ]))
    .unwrap();
    assert_eq!(produced["partitions"], 4);
    assert_eq!(produced["failed"], 0);
    assert_eq!(produced["messages"], produced["acknowledged"]);
    assert!(
        produced["raw_lines"].as_u64().unwrap() > 0,
        "malformed lines were sent"
    );
    assert_eq!(recorded["messages"], produced["messages"]);

    // Every partition comes back in order: the same offsets, keys, timestamps and values. (A line cut in half
    // by the generator comes back with its envelope closed: same value bytes, one more brace.)
    let (a, b) = (by_partition(&input), by_partition(&recorded_path));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (p, lines) in &a {
        assert_eq!(lines.len(), b[p].len(), "partition {p}");
        for (x, y) in lines.iter().zip(&b[p]) {
            assert!(x == y || format!("{x}}}") == *y, "partition {p}:\n{x}\n{y}");
        }
    }

    // Replaying the recorded topic gives byte-identical anomaly output and the same dead letters.
    let (out_a, out_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let (dl_a, dl_b) = (dir.path().join("a.dead"), dir.path().join("b.dead"));
    for (inp, out, dl) in [(&input, &out_a, &dl_a), (&recorded_path, &out_b, &dl_b)] {
        common::run(
            inp,
            out,
            &[
                "--dead-letter",
                dl.to_str().unwrap(),
                "--workers",
                "2",
                "--reproducible",
            ],
        );
    }
    let (ra, rb) = (
        std::fs::read(&out_a).unwrap(),
        std::fs::read(&out_b).unwrap(),
    );
    assert!(!ra.is_empty());
    assert!(
        ra == rb,
        "the replay of the recorded topic differs from the original"
    );
    let reasons_a = reasons(&dl_a);
    assert!(reasons_a.len() >= 4, "{reasons_a:?}");
    assert_eq!(reasons_a, reasons(&dl_b));
}

#[test]
fn produce_to_an_unreachable_broker_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(&dir.path().join("fleet"), 5, 30, 1, &[]);
    // a port nothing listens on
    let port = common::free_port();
    let started = Instant::now();
    let out = Command::new(common::bin())
        .args(["produce", "--from", input.to_str().unwrap(), "--to"])
        .arg(format!("kafka://127.0.0.1:{port}/t"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("produce"), "{err}");
}
