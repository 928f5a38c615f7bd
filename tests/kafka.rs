//! The Kafka path against a real Kafka-protocol broker (Tansu) on 127.0.0.1, started and stopped by each
//! test: `produce` and `record`, `run` from Kafka to Kafka and to files, the dead-letter topic, committed
//! offsets, a SIGKILLed pipeline restarted, a broker restarted under a run (durable storage), two processes
//! sharing a topic's partitions, an idle partition that must not stall epochs, and a Kafka input resumed
//! from its checkpointed offsets under other layouts, a Kafka output restored from a checkpoint, and a
//! broker that requires SASL (SCRAM) authentication reached through librdkafka properties.
//!
//! The broker binaries: `$FLEETWATCH_TANSU` (or `tansu` on the PATH) with in-memory storage, and
//! `$FLEETWATCH_TANSU_DURABLE` (built with sqlite storage) for the broker-restart and authentication tests. `scripts/test`
//! installs both.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Tansu broker on a free loopback port; killed on drop.
struct Broker {
    child: Child,
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    storage: String,
    starts: u32,
    /// Extra `tansu broker` arguments (e.g. `--authentication`), kept across restarts.
    broker_args: Vec<String>,
    /// Arguments every `fleetwatch produce` / `record` of this broker gets (e.g. SASL properties).
    client_args: Vec<String>,
}

impl Broker {
    /// A broker with in-memory storage.
    fn start(dir: &Path) -> Broker {
        let bin = std::env::var_os("FLEETWATCH_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("tansu"));
        Broker::spawn(
            bin,
            dir,
            "memory://tansu/".into(),
            common::free_port(),
            0,
            &[],
        )
    }

    /// A broker that requires SASL authentication (`--authentication`), with one SCRAM-SHA-512 user:
    /// a client that does not authenticate, or with a wrong password, is refused. `client_args` are what
    /// `produce` and `record` pass to reach it. (Tansu keeps SCRAM users in its storage and creates them
    /// through a connection the broker has to accept: the user is created on the durable broker before it
    /// is restarted with authentication required.)
    fn start_authenticated(
        dir: &Path,
        user: &str,
        password: &str,
        client_args: &[String],
    ) -> Broker {
        let mut b = Broker::start_durable(dir);
        let out = Command::new(&b.bin)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", b.port))
            .args(["--mechanism", "scram512", user, password])
            .output()
            .expect("tansu user create");
        assert!(
            out.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b.broker_args = vec!["--authentication".to_string()];
        b.restart(Duration::ZERO);
        b.client_args = client_args.to_vec();
        b
    }

    /// A broker that keeps its topics in a sqlite file under `dir`, across restarts.
    fn start_durable(dir: &Path) -> Broker {
        let bin = std::env::var_os("FLEETWATCH_TANSU_DURABLE")
            .map(PathBuf::from)
            .expect(
                "FLEETWATCH_TANSU_DURABLE must name a tansu built with sqlite storage \
                 (cargo install tansu --features dynostore,libsql; ./scripts/test does it)",
            );
        // (tansu resolves sqlite:// paths against its working directory)
        Broker::spawn(
            bin,
            dir,
            "sqlite://tansu.db".into(),
            common::free_port(),
            0,
            &[],
        )
    }

    fn spawn(
        bin: PathBuf,
        dir: &Path,
        storage: String,
        port: u16,
        starts: u32,
        broker_args: &[String],
    ) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let log =
            std::fs::File::create(dir.join(format!("broker-{starts}.log"))).expect("broker log");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .args(broker_args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the broker {bin:?} ({e}); set FLEETWATCH_TANSU or run ./scripts/test")
            });
        wait_listening(port, "the broker");
        Broker {
            child,
            port,
            bin,
            dir: dir.to_path_buf(),
            storage,
            starts,
            broker_args: broker_args.to_vec(),
            client_args: Vec::new(),
        }
    }

    /// SIGKILLs the broker, waits `down`, and starts it again on the same port and storage.
    fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let next = Broker::spawn(
            self.bin.clone(),
            &self.dir,
            self.storage.clone(),
            self.port,
            self.starts + 1,
            &self.broker_args,
        );
        let old = std::mem::replace(self, next);
        self.client_args = old.client_args.clone();
        std::mem::forget(old); // its child is already reaped
    }

    /// `fleetwatch produce --from FROM --to <topic>`; returns its JSON report.
    fn produce(&self, from: &Path, topic: &str) -> String {
        let to = self.address(topic);
        let mut args = vec!["produce", "--from", from.to_str().unwrap(), "--to", &to];
        args.extend(self.client_args.iter().map(String::as_str));
        common::fleetwatch(&args)
    }

    /// `fleetwatch record` of a whole topic into `out`, ending after `idle` quiet seconds; returns its report.
    fn record(&self, topic: &str, out: &Path, idle: &str) -> String {
        let from = self.address(topic);
        let mut args = vec![
            "record",
            "--from",
            &from,
            "--out",
            out.to_str().unwrap(),
            "--until-idle",
            idle,
        ];
        args.extend(self.client_args.iter().map(String::as_str));
        common::fleetwatch(&args)
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
    let produced: serde_json::Value =
        serde_json::from_str(&broker.produce(&input, "telemetry")).unwrap();
    let recorded_path = dir.path().join("recorded.jsonl");
    let recorded: serde_json::Value =
        serde_json::from_str(&broker.record("telemetry", &recorded_path, "3")).unwrap();
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

/// The messages of a topic, every partition from the beginning: (partition, value) in each partition's order.
fn read_topic(broker: &Broker, topic: &str, dir: &Path) -> Vec<(u32, String)> {
    let path = dir.join(format!("{topic}.recorded.jsonl"));
    broker.record(topic, &path, "2");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let p = fleetwatch::sources::parse::fast_partition(l.as_bytes()).expect("partition");
            let (_, v) = l.split_once(",\"value\":").expect("a value");
            (p, v.strip_suffix('}').expect("closed envelope").to_string())
        })
        .collect()
}

/// A run's anomaly output: change lines per epoch (sorted), summaries and end records in order.
#[derive(Debug, Default, PartialEq)]
struct Output {
    changes: BTreeMap<u64, Vec<String>>,
    summaries: Vec<String>,
    ends: Vec<String>,
}

impl Output {
    fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Output {
        let mut o = Output::default();
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).expect("output lines are JSON");
            match v["type"].as_str() {
                Some("change") => o
                    .changes
                    .entry(v["epoch"].as_u64().unwrap())
                    .or_default()
                    .push(l.to_string()),
                Some("summary") => o.summaries.push(l.to_string()),
                Some("end") => o.ends.push(l.to_string()),
                t => panic!("unexpected output line type {t:?}: {l}"),
            }
        }
        for v in o.changes.values_mut() {
            v.sort();
        }
        o
    }

    fn from_file(path: &Path) -> Output {
        let text = std::fs::read_to_string(path).unwrap();
        Output::from_lines(text.lines())
    }

    /// From an output topic; also checks that every partition carries its epochs in order.
    fn from_topic(messages: &[(u32, String)]) -> Output {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, v) in messages {
            let j: serde_json::Value = serde_json::from_str(v).unwrap();
            if let Some(e) = j["epoch"].as_u64() {
                let l = last.entry(*p).or_insert(e);
                assert!(e >= *l, "partition {p}: epoch {e} after {l}");
                *l = e;
            }
        }
        Output::from_lines(messages.iter().map(|(_, v)| v.as_str()))
    }
}

fn file_run(input: &Path, dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.jsonl"));
    let dead = dir.join(format!("{name}.dead.jsonl"));
    let mut args = vec![
        "--dead-letter",
        dead.to_str().unwrap(),
        "--workers",
        "2",
        "--reproducible",
    ];
    args.extend_from_slice(extra);
    common::run(input, &out, &args);
    (out, dead)
}

#[test]
fn kafka_to_kafka_equals_the_file_run_with_dead_letters_and_commits() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        300,
        12,
        &[
            "--partitions",
            "4",
            "--malformed-rate",
            "0.01",
            "--history-epochs",
            "100",
        ],
    );
    broker.produce(&input, "tele");
    let (ref_out, ref_dead) = file_run(&input, dir.path(), "file", &[]);
    common::fleetwatch(&[
        "run",
        "--input",
        &broker.address("tele"),
        "--output",
        &broker.address("changes"),
        "--dead-letter",
        &broker.address("dlq"),
        "--output-partitions",
        "3",
        "--group-id",
        "fw-test",
        "--workers",
        "2",
        "--reproducible",
        "--until-idle",
        "3",
    ]);
    // The output topic holds, per epoch, the same changes as the file run, summaries in order, one end.
    let want = Output::from_file(&ref_out);
    let got = Output::from_topic(&read_topic(&broker, "changes", dir.path()));
    assert!(want.changes.values().map(Vec::len).sum::<usize>() > 10);
    assert_eq!(got, want);

    // Malformed messages land in the DLQ topic, with their reason in a header; good ones are unaffected
    // (checked above). The same dead letters as the file run's, reason for reason.
    let file_reasons = reasons(&ref_dead);
    assert!(file_reasons.len() >= 4, "{file_reasons:?}");
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "fw-test-dlq")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["dlq"]).unwrap();
    let mut header_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let total: usize = file_reasons.values().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while header_reasons.values().sum::<usize>() < total && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let headers = m.headers().expect("dead letters carry headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a reason header");
        assert_eq!(value["reason"].as_str(), Some(reason.as_str()));
        assert!(headers.iter().any(|h| h.key == "detail"));
        *header_reasons.entry(reason).or_insert(0) += 1;
    }
    assert_eq!(header_reasons, file_reasons);

    // Every input offset was committed, once its epoch's outputs were acknowledged: each partition's
    // committed position is one past its last message. (Counted from the messages themselves: Tansu 0.6
    // reports a high watermark at the start of a partition's last batch.)
    let mut ends: BTreeMap<u32, i64> = BTreeMap::new();
    let recorded = dir.path().join("tele.recorded.jsonl");
    broker.record("tele", &recorded, "2");
    for line in std::fs::read_to_string(&recorded).unwrap().lines().skip(1) {
        let p = fleetwatch::sources::parse::fast_partition(line.as_bytes()).unwrap();
        let rest = line.split_once("\"offset\":").unwrap().1;
        let o: i64 = rest[..rest.find(',').unwrap()].parse().unwrap();
        let e = ends.entry(p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let group: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "fw-test")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("tele", p);
    }
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    assert_eq!(ends.len(), 4);
    for (p, end) in ends {
        let c = committed.find_partition("tele", p as i32).unwrap().offset();
        assert_eq!(c, rdkafka::Offset::Offset(end), "partition {p}");
    }
}

#[test]
fn a_live_run_and_the_replay_of_its_recording_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        50,
        300,
        13,
        &["--partitions", "3", "--malformed-rate", "0.005"],
    );
    broker.produce(&input, "tele");
    let live = dir.path().join("live.jsonl");
    common::fleetwatch(&[
        "run",
        "--input",
        &broker.address("tele"),
        "--output",
        live.to_str().unwrap(),
        "--workers",
        "2",
        "--reproducible",
        "--until-idle",
        "3",
    ]);
    let recorded = dir.path().join("recorded.jsonl");
    broker.record("tele", &recorded, "2");
    let (replay, _) = file_run(&recorded, dir.path(), "replay", &[]);
    let (original, _) = file_run(&input, dir.path(), "original", &[]);
    let live_bytes = std::fs::read(&live).unwrap();
    assert!(live_bytes.len() > 1000);
    assert!(
        live_bytes == std::fs::read(&replay).unwrap(),
        "replay differs from the live run"
    );
    assert!(
        live_bytes == std::fs::read(&original).unwrap(),
        "live run differs from the file run"
    );
}

#[test]
fn a_pipeline_killed_mid_run_and_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        400,
        14,
        &["--partitions", "4"],
    );
    broker.produce(&input, "tele");
    let (ref_out, _) = file_run(&input, dir.path(), "file", &[]);
    let want = Output::from_file(&ref_out);
    assert!(want.changes.values().map(Vec::len).sum::<usize>() > 10);
    let args = |speed: Option<&'static str>| {
        let mut a = vec![
            "run".to_string(),
            "--input".into(),
            broker.address("tele"),
            "--output".into(),
            broker.address("changes"),
            "--workers".into(),
            "2".into(),
            "--reproducible".into(),
            "--until-idle".into(),
            "3".into(),
        ];
        if let Some(s) = speed {
            a.extend(["--speed".to_string(), s.to_string()]);
        }
        a
    };
    // 400 epochs paced over about 24 s; SIGKILL once a hundred summaries are durable. The pace leaves the
    // polling below (a fresh consumer per look) 18 s to notice, even on a loaded machine.
    let mut first = Command::new(common::bin())
        .args(args(Some("5000")))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first_epoch = want.summaries.first().map(|s| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["epoch"]
            .as_u64()
            .unwrap()
    });
    let first_epoch = first_epoch.expect("the reference run has summaries");
    let killed_at = kill_once_durable(&broker, &mut first, |d| d >= first_epoch + 100);
    assert!(
        killed_at < first_epoch + 399,
        "the kill came too late to test anything"
    );
    let a = args(None);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    common::fleetwatch(&a);

    check_restarted_output(&broker, dir.path(), &want, killed_at);
}

/// Waits (at most 60 s) until the durable summaries on `changes` satisfy `enough`, then SIGKILLs `first`
/// and returns the last epoch whose summary reached the topic.
fn kill_once_durable(broker: &Broker, first: &mut Child, enough: impl Fn(u64) -> bool) -> u64 {
    let brokers = fleetwatch::kafka::Brokers::plain(broker.brokers());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the first run made no progress");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it was killed"
        );
        let done = fleetwatch::kafka::durable_summary_epoch(&brokers, "changes").unwrap_or(None);
        if done.is_some_and(&enough) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500)); // requests already on the wire reach the log
    fleetwatch::kafka::last_summary_epoch(&brokers, "changes")
        .unwrap()
        .unwrap()
}

/// The stated guarantee of a Kafka output across a crash (README): every epoch's summary exactly once, in
/// order; every epoch's changes complete; duplicates only within the one epoch being written at the crash
/// (the one after `killed_at`, the last durable summary), identical to the first copy.
fn check_restarted_output(broker: &Broker, dir: &Path, want: &Output, killed_at: u64) {
    let got = Output::from_topic(&read_topic(broker, "changes", dir));
    if got.summaries != want.summaries {
        let i = (0..got.summaries.len().max(want.summaries.len()))
            .find(|&i| got.summaries.get(i) != want.summaries.get(i))
            .unwrap_or(0);
        panic!(
            "summaries differ (crash after epoch {killed_at}): {} vs {} expected; first at {i}:\n got  {:?}\n want {:?}",
            got.summaries.len(),
            want.summaries.len(),
            got.summaries.get(i),
            want.summaries.get(i)
        );
    }
    assert_eq!(got.ends, want.ends);
    assert_eq!(
        got.changes.keys().collect::<Vec<_>>(),
        want.changes.keys().collect::<Vec<_>>()
    );
    let mut duplicated_epochs = Vec::new();
    for (e, lines) in &got.changes {
        let mut distinct = lines.clone();
        distinct.dedup();
        assert_eq!(&distinct, &want.changes[e], "epoch {e}");
        if distinct.len() != lines.len() {
            duplicated_epochs.push(*e);
        }
    }
    assert!(
        duplicated_epochs.iter().all(|e| *e == killed_at + 1),
        "duplicates in epochs {duplicated_epochs:?}, crash after epoch {killed_at}"
    );
}

#[test]
fn a_broker_restart_during_a_run_with_durable_storage_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_durable(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        200,
        300,
        15,
        &["--partitions", "4"],
    );
    broker.produce(&input, "tele");
    let (ref_out, _) = file_run(&input, dir.path(), "file", &[]);
    let mut run = Command::new(common::bin())
        .args([
            "run",
            "--input",
            &broker.address("tele"),
            "--output",
            &broker.address("changes"),
        ])
        .args(["--workers", "2", "--reproducible", "--until-idle", "4"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run ended before the broker restart"
    );
    broker.restart(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            panic!("the run did not complete after the broker restart");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the run failed: {status}");
    let got = Output::from_topic(&read_topic(&broker, "changes", dir.path()));
    assert_eq!(got, Output::from_file(&ref_out));
}

#[test]
fn two_processes_share_a_four_partition_topic_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        200,
        16,
        &["--partitions", "4"],
    );
    broker.produce(&input, "tele");
    let one = dir.path().join("one.jsonl");
    common::fleetwatch(&[
        "run",
        "--input",
        &broker.address("tele"),
        "--output",
        one.to_str().unwrap(),
        "--workers",
        "1",
        "--reproducible",
        "--until-idle",
        "3",
        "--group-id",
        "one",
    ]);
    let cluster = common::two_process_cluster(dir.path());
    let two = dir.path().join("two.jsonl");
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(common::bin())
                .args([
                    "run",
                    "--input",
                    &broker.address("tele"),
                    "--output",
                    two.to_str().unwrap(),
                ])
                .args([
                    "--cluster",
                    cluster.to_str().unwrap(),
                    "--process",
                    &i.to_string(),
                ])
                .args(["--reproducible", "--until-idle", "3", "--group-id", "two"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
    assert!(a.len() > 1000);
    assert!(a == b, "2 processes x 1 worker differ from 1 process");
}

/// Produces a fleet whose partition 0 goes silent after its first 30 epochs, runs the pipeline live on it
/// with `spec_edit` applied to the embedded spec, and sends partition 0's remaining logs once the live
/// output's summaries satisfy `ready` (polled, so a slow or loaded machine waits instead of racing a fixed
/// sleep; after 120 s the test fails). Returns (the live run's output, the file run's output of the whole
/// fleet, the logs held back).
fn run_with_a_lagging_partition(
    dir: &Path,
    spec_edit: &[(&str, &str)],
    ready: fn(&[(u64, bool)]) -> bool,
) -> (PathBuf, PathBuf, usize) {
    let broker = Broker::start(dir);
    let input = common::generate(&dir.join("fleet"), 40, 60, 17, &["--partitions", "2"]);
    let text = std::fs::read_to_string(&input).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let cut = {
        let first: serde_json::Value = serde_json::from_str(lines.clone().next().unwrap()).unwrap();
        first["value"]["ts"].as_i64().unwrap() + 30 * 300
    };
    let (mut now, mut later) = (vec![header.to_string()], vec![header.to_string()]);
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["partition"] == 0 && v["value"]["ts"].as_i64().unwrap() >= cut {
            later.push(l.to_string());
        } else {
            now.push(l.to_string());
        }
    }
    assert!(later.len() > 100);
    let (now_path, later_path) = (dir.join("now.jsonl"), dir.join("later.jsonl"));
    std::fs::write(&now_path, now.join("\n") + "\n").unwrap();
    std::fs::write(&later_path, later.join("\n") + "\n").unwrap();
    let spec = dir.join("spec.toml");
    let mut text = fleetwatch::spec::EMBEDDED_HOME_WIFI.to_string();
    for (from, to) in spec_edit {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(&spec, text).unwrap();
    broker.produce(&now_path, "tele");
    let out = dir.join("out.jsonl");
    let run = Command::new(common::bin())
        .args([
            "run",
            "--dataflow",
            spec.to_str().unwrap(),
            "--input",
            &broker.address("tele"),
        ])
        .args([
            "--output",
            out.to_str().unwrap(),
            "--reproducible",
            // Long enough that a loaded machine's guard can close its epochs and partition 0's late logs
            // can arrive before the run counts itself idle (it stops 20 s after the last record).
            "--until-idle",
            "20",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if ready(&summaries_so_far(&out)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the live run never got ready for partition 0's late logs: {:?}",
            summaries_so_far(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.produce(&later_path, "tele");
    let status = run.wait_with_output().unwrap().status;
    assert!(status.success());
    let (ref_out, _) = file_run(&input, dir, "file", &[]);
    (out, ref_out, later.len() - 1)
}

/// The summaries a live run has flushed so far (complete lines only; nothing if the file is not there yet).
fn summaries_so_far(path: &Path) -> Vec<(u64, bool)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    summary_fields(&Output::from_lines(complete.lines()))
}

/// Per epoch: the summary's records, and whether the guard closed it.
fn summaries(path: &Path) -> Vec<(u64, bool)> {
    summary_fields(&Output::from_file(path))
}

fn summary_fields(o: &Output) -> Vec<(u64, bool)> {
    o.summaries
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            (v["records"].as_u64().unwrap(), v["closed_by_guard"] == true)
        })
        .collect()
}

/// Nothing lost: every log of the file run is counted, the held-back ones as late; and at least `closed`
/// epochs were closed while partition 0 was silent (they hold fewer records than in the file run).
fn check_lagging_run(out: &Path, ref_out: &Path, held_back: usize, closed: usize) {
    let (want, got) = (common::end_record(ref_out), common::end_record(out));
    assert_eq!(got["records"], want["records"]);
    assert_eq!(want["late"], 0);
    let late = got["late"].as_u64().unwrap();
    assert!(
        late as usize >= held_back / 2,
        "late {late} of {held_back} held back"
    );
    let (live, full) = (summaries(out), summaries(ref_out));
    assert_eq!(live.len(), full.len());
    let fewer = live.iter().zip(&full).filter(|(a, b)| a.0 < b.0).count();
    assert!(
        fewer >= closed,
        "only {fewer} epochs closed without partition 0"
    );
}

#[test]
fn an_idle_partition_does_not_stall_epochs_and_its_late_records_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ref_out, held_back) = run_with_a_lagging_partition(
        dir.path(),
        &[("idle_partition_seconds = 30", "idle_partition_seconds = 1")],
        // 30 full epochs, then 20 closed on partition 1 alone once partition 0 went idle: more than half of
        // partition 0's held-back epochs are closed before its logs arrive, so they must count as late.
        |s| s.len() >= 50,
    );
    check_lagging_run(&out, &ref_out, held_back, 20);
    assert!(
        summaries(&out).iter().all(|(_, g)| !g),
        "the guard had no reason to fire"
    );
}

#[test]
fn the_wall_clock_guard_closes_epochs_a_silent_partition_holds() {
    // Partition 0 is never idle here (1 hour): only the guard (0.2 s per epoch) can close its epochs.
    let dir = tempfile::tempdir().unwrap();
    let (out, ref_out, held_back) = run_with_a_lagging_partition(
        dir.path(),
        &[
            (
                "idle_partition_seconds = 30",
                "idle_partition_seconds = 3600",
            ),
            ("epoch_timeout_seconds = 60", "epoch_timeout_seconds = 0.2"),
        ],
        |s| s.iter().filter(|(_, g)| *g).count() >= 16,
    );
    check_lagging_run(&out, &ref_out, held_back, 10);
    let guarded = summaries(&out).iter().filter(|(_, g)| *g).count();
    assert!(guarded >= 10, "{guarded} epochs closed by the guard");
}

#[test]
fn a_kafka_input_resumes_from_its_checkpointed_offsets_under_other_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        100,
        400,
        23,
        &[
            "--partitions",
            "4",
            "--malformed-rate",
            "0.002",
            "--history-epochs",
            "96",
            "--anomaly-rate",
            "2.0",
        ],
    );
    broker.produce(&input, "tele");
    let run_args = |name: &str, ck: bool| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--input".into(),
            broker.address("tele"),
            "--output".into(),
            dir.path()
                .join(format!("{name}.jsonl"))
                .display()
                .to_string(),
            "--dead-letter".into(),
            dir.path()
                .join(format!("{name}.dead.jsonl"))
                .display()
                .to_string(),
            "--reproducible".into(),
            "--until-idle".into(),
            "3".into(),
        ];
        if ck {
            a.extend([
                "--checkpoint-dir".into(),
                dir.path().join("ck").display().to_string(),
                "--checkpoint-every".into(),
                "20".into(),
            ]);
        }
        a
    };
    // The uninterrupted Kafka run.
    let a = run_args("ref", false);
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    a.extend(["--workers", "2"]);
    common::fleetwatch(&a);
    let ck = dir.path().join("ck");
    let spawn = |workers: &str| {
        Command::new(common::bin())
            .args(run_args("out", true))
            .args(["--workers", workers, "--speed", "12000"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // 2 workers, paced (400 epochs in 10 s): SIGKILL once a checkpoint is complete.
    let mut run = spawn("2");
    common::wait_for_checkpoint(&ck, None, &mut [&mut run], Duration::from_secs(60));
    run.kill().unwrap();
    run.wait().unwrap();
    // The newest checkpoint once the run is dead: between the poll and the kill the run may have
    // completed another one, and waiting for a checkpoint newer than the polled one would then return
    // at once and signal the resumed run before it has installed its handlers (CI of 6a10293: the
    // resumed run died of the SIGTERM's default action with nothing on stderr).
    let first = common::complete_checkpoints(&ck)[0];
    // Resumed from the checkpointed offsets under 3 workers (partitions move to other workers), stopped
    // by SIGTERM once it has written a checkpoint of its own.
    let mut run = spawn("3");
    common::wait_for_checkpoint(&ck, Some(first), &mut [&mut run], Duration::from_secs(60));
    // SAFETY: kill(2) on a child this test started and has not reaped.
    assert_eq!(
        unsafe { libc::kill(run.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let o = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}: {err}", o.status);
    assert!(err.contains("resumed after epoch"), "{err}");
    assert!(err.contains("stopped after epoch"), "{err}");
    // Resumed once more to the end, on one worker, unpaced.
    let a = run_args("out", true);
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    a.extend(["--workers", "1"]);
    common::fleetwatch(&a);
    let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
    assert!(
        read("out.jsonl") == read("ref.jsonl"),
        "output differs from the uninterrupted Kafka run's"
    );
    assert!(
        read("out.dead.jsonl") == read("ref.dead.jsonl"),
        "dead letters differ"
    );
    let summary = common::end_record(&dir.path().join("out.jsonl"));
    assert_eq!(summary["late"].as_u64(), Some(0), "{summary}");
}

#[test]
fn a_kafka_output_restored_from_a_checkpoint_loses_nothing_and_repeats_at_most_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        400,
        24,
        &["--partitions", "4", "--malformed-rate", "0.002"],
    );
    broker.produce(&input, "tele");
    let (ref_out, _) = file_run(&input, dir.path(), "file", &[]);
    let want = Output::from_file(&ref_out);
    assert!(want.changes.values().map(Vec::len).sum::<usize>() > 10);
    let ck = dir.path().join("ck");
    let args = |workers: &str| -> Vec<String> {
        [
            "run",
            "--input",
            &broker.address("tele"),
            "--output",
            &broker.address("changes"),
            "--reproducible",
            "--until-idle",
            "3",
            "--checkpoint-dir",
            ck.to_str().unwrap(),
            "--checkpoint-every",
            "40",
            "--workers",
            workers,
        ]
        .map(String::from)
        .to_vec()
    };
    // 2 workers, paced (400 epochs over about 60 s). SIGKILL once a checkpoint is complete and 15 more
    // epochs are durable on the output topic: the restored run starts before what the topic already holds.
    // (At 5000× a loaded machine's poll-and-kill could let the run reach its next checkpoint, 25 epochs
    // later, before the kill: nothing left to restore before the topic's end.)
    let mut first = Command::new(common::bin())
        .args(args("2"))
        .args(["--speed", "2000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = common::wait_for_checkpoint(&ck, None, &mut [&mut first], Duration::from_secs(60));
    let killed_at = kill_once_durable(&broker, &mut first, |d| d >= c + 15);
    let restored_from = common::complete_checkpoints(&ck)[0];
    assert!(
        killed_at > restored_from,
        "the topic must hold epochs after the checkpoint ({killed_at} <= {restored_from})"
    );
    let last_epoch = want
        .summaries
        .last()
        .map(|s| serde_json::from_str::<serde_json::Value>(s).unwrap()["epoch"].as_u64())
        .unwrap()
        .unwrap();
    assert!(
        killed_at < last_epoch,
        "the kill came too late to test anything"
    );

    // Restored under 3 workers, unpaced, to the end.
    let o = Command::new(common::bin())
        .args(args("3"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}: {err}", o.status);
    assert!(
        err.contains(&format!("resumed after epoch {restored_from}")),
        "{err}"
    );
    check_restarted_output(&broker, dir.path(), &want, killed_at);
}

/// `fleetwatch ARGS` that must fail within `limit`: its stderr.
fn failing_run(args: &[&str], limit: Duration) -> String {
    let started = Instant::now();
    let mut child = Command::new(common::bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "fleetwatch {args:?} succeeded");
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("fleetwatch {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn a_broker_that_requires_sasl_is_reached_through_properties_and_a_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let password = "pw-7f3a9c-never-logged";
    let secret = dir.path().join("kafka-password");
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    let secret_arg = format!("sasl.password={}", secret.display());
    let sasl: Vec<String> = [
        "--kafka-property",
        "security.protocol=SASL_PLAINTEXT",
        "--kafka-property",
        "sasl.mechanism=SCRAM-SHA-512",
        "--kafka-property",
        "sasl.username=alice",
        "--kafka-secret-file",
        &secret_arg,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let broker = Broker::start_authenticated(dir.path(), "alice", password, &sasl);
    let input = common::generate(
        &dir.path().join("fleet"),
        40,
        300,
        21,
        &[
            "--partitions",
            "2",
            "--malformed-rate",
            "0.005",
            "--anomaly-rate",
            "2",
        ],
    );
    broker.produce(&input, "tele");
    let (ref_out, _) = file_run(&input, dir.path(), "file", &[]);

    // The run takes the same settings from its spec: the properties as a nested TOML table, the password
    // from a file named in [kafka.secret_files].
    let spec = dir.path().join("spec.toml");
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/home-wifi.toml"),
    )
    .unwrap();
    text.push_str(&format!(
        "\n[kafka.properties]\nsecurity.protocol = \"SASL_PLAINTEXT\"\nsasl.mechanism = \
         \"SCRAM-SHA-512\"\nsasl.username = \"alice\"\n\n[kafka.secret_files]\n\
         \"sasl.password\" = {:?}\n",
        secret.display().to_string()
    ));
    std::fs::write(&spec, text).unwrap();
    let run_args = |output: &str| -> Vec<String> {
        [
            "run",
            "--dataflow",
            spec.to_str().unwrap(),
            "--input",
            &broker.address("tele"),
            "--output",
            output,
            "--workers",
            "2",
            "--reproducible",
            "--until-idle",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = run_args(&broker.address("changes"));
    let out = Command::new(common::bin())
        .args(&args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // What it logs names the properties, and the secret only by its file.
    assert!(
        stderr.contains(&format!("sasl.password=<from {}>", secret.display())),
        "{stderr}"
    );
    assert!(stderr.contains("sasl.username=alice"), "{stderr}");
    assert!(
        !stderr.contains(password),
        "the password was logged: {stderr}"
    );
    let want = Output::from_file(&ref_out);
    assert!(want.changes.values().map(Vec::len).sum::<usize>() > 5);
    assert_eq!(
        Output::from_topic(&read_topic(&broker, "changes", dir.path())),
        want
    );

    // Without the properties the broker refuses the run's clients: the run stops with a message, it does
    // not hang.
    let mut plain_args = run_args(&broker.address("changes2"));
    plain_args.drain(1..3); // the default spec
    let args: Vec<&str> = plain_args.iter().map(String::as_str).collect();
    let err = failing_run(&args, Duration::from_secs(90));
    assert!(err.contains("cannot reach the brokers"), "{err}");

    // A wrong password: the run stops with the broker's refusal, without echoing the password.
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password-5521").unwrap();
    let mut args = run_args(&broker.address("changes2"));
    args.push("--kafka-secret-file".into());
    args.push(format!("sasl.password={}", wrong.display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failing_run(&args, Duration::from_secs(90));
    assert!(err.contains("SASL authentication error"), "{err}");
    assert!(!err.contains("not-the-password-5521"), "{err}");

    // A secret given inline is refused before anything connects, without echoing it.
    let mut args = run_args(&broker.address("changes2"));
    args.extend([
        "--kafka-property".into(),
        "sasl.password=inline-secret-9".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failing_run(&args, Duration::from_secs(20));
    assert!(err.contains("--kafka-secret-file"), "{err}");
    assert!(!err.contains("inline-secret-9"), "{err}");
    // And so is a key fleetwatch owns.
    let mut args = run_args(&broker.address("changes3"));
    args.extend(["--kafka-property".into(), "enable.auto.commit=true".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failing_run(&args, Duration::from_secs(20));
    assert!(err.contains("enable.auto.commit"), "{err}");
    // A key librdkafka does not know stops the run with its message.
    let mut args = run_args(&broker.address("changes4"));
    args.extend(["--kafka-property".into(), "no.such.property=1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failing_run(&args, Duration::from_secs(60));
    assert!(err.contains("no.such.property"), "{err}");
}

/// Writes a self-signed certificate for 127.0.0.1 and its key into `dir` (the openssl command line).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (./scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_broker_reached_over_tls_is_read_and_written_with_the_ssl_properties() {
    // Tansu 0.6 speaks plaintext only: TLS is terminated in front of it by socat (OpenSSL), and the broker
    // advertises the TLS port, so every connection a client makes — bootstrap and broker — is TLS.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "broker");
    let (other_ca, _) = self_signed(dir.path(), "other");
    let bin = std::env::var_os("FLEETWATCH_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tansu"));
    let (plain, tls) = (common::free_port(), common::free_port());
    let _broker = Killed(
        Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{plain}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{tls}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the broker starts (FLEETWATCH_TANSU)"),
    );
    wait_listening(plain, "the broker");
    let _tls = Killed(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs (./scripts/test installs it)"),
    );
    wait_listening(tls, "the TLS endpoint");

    let input = common::generate(
        &dir.path().join("fleet"),
        40,
        300,
        23,
        &["--partitions", "2", "--anomaly-rate", "3"],
    );
    let ca = format!("ssl.ca.location={}", cert.display());
    let ssl = [
        "--kafka-property",
        "security.protocol=SSL",
        "--kafka-property",
        &ca,
    ];
    let topic = |t: &str| format!("kafka://127.0.0.1:{tls}/{t}");
    let mut args = vec!["produce", "--from", input.to_str().unwrap()];
    let to = topic("tele");
    args.extend(["--to", &to]);
    args.extend(ssl);
    common::fleetwatch(&args);
    let (ref_out, _) = file_run(&input, dir.path(), "file", &[]);

    // Kafka in over TLS, the changes to a file: the same changes as the file run.
    let out = dir.path().join("tls.jsonl");
    let from = topic("tele");
    let mut args = vec!["run", "--input", &from, "--output", out.to_str().unwrap()];
    args.extend(["--workers", "2", "--reproducible", "--until-idle", "3"]);
    args.extend(ssl);
    common::fleetwatch(&args);
    let want = Output::from_file(&ref_out);
    assert!(want.changes.values().map(Vec::len).sum::<usize>() > 3);
    assert_eq!(Output::from_file(&out).changes, want.changes);

    // Without the TLS settings, and with a certificate authority that did not sign the broker's, the run
    // stops with the client's refusal instead of waiting.
    let out2 = dir.path().join("refused.jsonl");
    let base = [
        "run",
        "--input",
        &from,
        "--output",
        out2.to_str().unwrap(),
        "--until-idle",
        "3",
    ];
    let err = failing_run(&base, Duration::from_secs(90));
    assert!(err.contains("cannot reach the brokers"), "{err}");
    let wrong = format!("ssl.ca.location={}", other_ca.display());
    let mut args = base.to_vec();
    args.extend([
        "--kafka-property",
        "security.protocol=SSL",
        "--kafka-property",
        &wrong,
    ]);
    let err = failing_run(&args, Duration::from_secs(90));
    assert!(err.contains("cannot reach the brokers"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn topology_changes_from_a_topic_apply_as_the_same_changes_from_a_file() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let fleet = dir.path().join("fleet");
    let input = common::generate(
        &fleet,
        200,
        500,
        31,
        &[
            "--partitions",
            "2",
            "--without-relationships",
            "--outage-rate",
            "1.0",
            "--history-epochs",
            "150",
        ],
    );
    broker.produce(&input, "tele");
    // Every member of an element with an outage after epoch 250 moves to an element added for them, 50
    // epochs before it; one line is refused.
    let first_ts = common::first_log_ts(&input);
    let outage = common::element_fault_after(&fleet, "outage", first_ts + 250 * 300);
    let at = outage["start"].as_u64().unwrap() - 50 * 300;
    let mut lines: Vec<String> = std::fs::read_to_string(fleet.join("topology.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(1) == outage["element"].as_str())
        .map(|l| {
            let c = l.split(',').next().unwrap();
            format!(r#"{{"ts":{at},"customer":"{c}","element":"elem-added","region":"region-9"}}"#)
        })
        .collect();
    assert!(lines.len() >= 10);
    lines.push(format!(
        r#"{{"ts":{at},"customer":"cust-9999999","remove":true}}"#
    ));
    let changes = dir.path().join("changes.jsonl");
    std::fs::write(&changes, lines.join("\n") + "\n").unwrap();
    fleetwatch::kafka::ensure_topic(
        &fleetwatch::kafka::Brokers::plain(broker.brokers()),
        "topo",
        1,
    )
    .unwrap();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    for l in &lines {
        producer
            .send(BaseRecord::<(), str>::to("topo").payload(l.as_str()))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let topo = fleet.join("topology.csv");
    let (reference, ref_dead) = file_run(
        &input,
        dir.path(),
        "file",
        &[
            "--topology",
            topo.to_str().unwrap(),
            "--topology-changes",
            changes.to_str().unwrap(),
        ],
    );
    let live = dir.path().join("live.jsonl");
    let live_dead = dir.path().join("live.dead.jsonl");
    common::fleetwatch(&[
        "run",
        "--input",
        &broker.address("tele"),
        "--output",
        live.to_str().unwrap(),
        "--dead-letter",
        live_dead.to_str().unwrap(),
        "--topology",
        topo.to_str().unwrap(),
        "--topology-changes",
        &broker.address("topo"),
        "--workers",
        "2",
        "--reproducible",
        "--until-idle",
        "3",
    ]);
    let want = std::fs::read_to_string(&reference).unwrap();
    assert!(
        want.lines().any(|l| l.contains(r#""type":"incident""#)
            && l.contains(r#""element":"elem-added""#)
            && l.contains(r#""kind":"outage""#)),
        "the moved members' outage is the added element's"
    );
    assert!(
        std::fs::read_to_string(&live).unwrap() == want,
        "topology changes from a topic differ from the same changes from a file"
    );
    // The refused change, from the topic: its partition and offset in the dead letter.
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&live_dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|d: &serde_json::Value| d["reason"] == "topology")
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["detail"].as_str().unwrap().contains("not placed"));
    assert_eq!(dead[0]["offset"].as_u64(), Some(lines.len() as u64 - 1));
    assert!(
        std::fs::read_to_string(&ref_dead)
            .unwrap()
            .contains("cust-9999999")
    );
}
