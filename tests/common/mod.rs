//! Helpers shared by the integration tests: run the real binary, generate fleets, compare outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The fleetwatch binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleetwatch"))
}

/// Runs the binary with arguments; panics with its stderr if it fails.
pub fn fleetwatch(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("the fleetwatch binary runs");
    assert!(
        out.status.success(),
        "fleetwatch {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates a fleet into `dir` (returns the telemetry path).
pub fn generate(dir: &Path, customers: usize, epochs: usize, seed: u64, extra: &[&str]) -> PathBuf {
    let c = customers.to_string();
    let e = epochs.to_string();
    let s = seed.to_string();
    let mut args = vec![
        "generate",
        "--customers",
        &c,
        "--epochs",
        &e,
        "--seed",
        &s,
        "--out",
        dir.to_str().expect("utf-8 temp path"),
    ];
    args.extend_from_slice(extra);
    fleetwatch(&args);
    dir.join("telemetry.jsonl")
}

/// `fleetwatch run --input <input> --output <out>` followed by `extra` arguments.
pub fn run(input: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "--input",
        input.to_str().expect("utf-8 temp path"),
        "--output",
        out.to_str().expect("utf-8 temp path"),
    ];
    args.extend_from_slice(extra);
    fleetwatch(&args)
}

/// Starts `fleetwatch run --input <input> --output <out> --reproducible` followed by `extra` as a child
/// process (stderr kept for [`wait_success`]), for tests that talk to a run while it runs.
pub fn spawn_run(input: &Path, out: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .args([
            "run",
            "--input",
            input.to_str().expect("utf-8 temp path"),
            "--output",
        ])
        .arg(out)
        .arg("--reproducible")
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the fleetwatch binary runs")
}

/// Waits for a child of [`spawn_run`]; panics with its stderr unless it succeeded.
pub fn wait_success(mut child: Child) {
    let status = child.wait().expect("the run can be waited for");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(status.success(), "the run failed: {status}\n{err}");
}

/// The last line of a run's output (its `end` record), parsed.
pub fn end_record(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out).expect("the run wrote its output");
    let last = text.lines().last().expect("the output has an end line");
    serde_json::from_str(last).expect("the end line is JSON")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Writes `dir/cluster.toml`: two processes of one worker each on free loopback ports.
pub fn two_process_cluster(dir: &Path) -> PathBuf {
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "workers = 1\nprocesses = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
            free_port(),
            free_port()
        ),
    )
    .expect("cluster file");
    cluster
}

/// The complete checkpoints (those with a manifest) in a checkpoint directory, newest first.
pub fn complete_checkpoints(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("MANIFEST.json").is_file())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("ckpt-")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// Waits (up to `limit`) until a complete checkpoint newer than `after` exists in `dir` and returns its
/// epoch; panics if one of `children` ends first.
pub fn wait_for_checkpoint(
    dir: &Path,
    after: Option<u64>,
    children: &mut [&mut Child],
    limit: Duration,
) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(&c) = complete_checkpoints(dir).first()
            && after.is_none_or(|a| c > a)
        {
            return c;
        }
        for ch in children.iter_mut() {
            if let Ok(Some(status)) = ch.try_wait() {
                panic!("the run ended ({status}) before a checkpoint after {after:?}");
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint after {after:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// dataflows/home-wifi.toml (the embedded spec's text).
pub fn home_wifi() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dataflows/home-wifi.toml"
    ))
    .expect("dataflows/home-wifi.toml")
}

/// home-wifi.toml's text with its first `from` replaced by `to`; panics if the spec no longer says `from`
/// (the test would measure something else).
pub fn home_wifi_replacing(from: &str, to: &str) -> String {
    let text = home_wifi();
    assert!(text.contains(from), "home-wifi.toml no longer has {from:?}");
    text.replacen(from, to, 1)
}

/// [`home_wifi_replacing`] written to `path` (which it returns).
pub fn home_wifi_variant(path: &Path, from: &str, to: &str) -> PathBuf {
    std::fs::write(path, home_wifi_replacing(from, to)).expect("spec variant");
    path.to_path_buf()
}

/// home-wifi.toml's text with its global model switched on (it ships off: QUALITY.md, "The global model on
/// real telemetry").
pub fn home_wifi_with_model_text() -> String {
    home_wifi_replacing("\nenabled = false\n", "\nenabled = true\n")
}

/// [`home_wifi_with_model_text`] written to `dir/with-model.toml` (which it returns).
pub fn home_wifi_with_model(dir: &Path) -> PathBuf {
    let path = dir.join("with-model.toml");
    std::fs::write(&path, home_wifi_with_model_text()).expect("spec with the global model");
    path
}

/// `fleetwatch run <args> --cluster <cluster> --process i` for both processes of a two-process cluster
/// (`two_process_cluster`), at once; panics unless both succeed.
pub fn run_two_processes(cluster: &Path, args: &[&str]) {
    let spawn = |i: &str| {
        Command::new(bin())
            .arg("run")
            .args(args)
            .args([
                "--cluster",
                cluster.to_str().expect("utf-8 path"),
                "--process",
                i,
            ])
            .spawn()
            .expect("the fleetwatch binary starts")
    };
    let (mut p0, mut p1) = (spawn("0"), spawn("1"));
    let (s0, s1) = (p0.wait(), p1.wait());
    assert!(
        s0.as_ref().is_ok_and(|s| s.success()) && s1.as_ref().is_ok_and(|s| s.success()),
        "two processes of run {args:?}: {s0:?}, {s1:?}"
    );
}

/// The event time of the first log of a recorded topic (its first line after the header).
pub fn first_log_ts(topic: &Path) -> u64 {
    let text = std::fs::read_to_string(topic).expect("a recorded topic");
    let line = text.lines().nth(1).expect("a log after the header");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log");
    v["value"]["ts"].as_u64().expect("a ts")
}

/// The first element fault of `kind` in a generated fleet's element_labels.jsonl that starts after `ts`.
pub fn element_fault_after(fleet: &Path, kind: &str, ts: u64) -> serde_json::Value {
    std::fs::read_to_string(fleet.join("element_labels.jsonl"))
        .expect("element labels")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON label"))
        .find(|v| v["kind"] == kind && v["start"].as_u64().is_some_and(|s| s > ts))
        .unwrap_or_else(|| panic!("no {kind} after {ts} in {}", fleet.display()))
}

/// `fleetwatch run --input <input> <args> --workers 2`, then the same as two processes: both must write
/// `reference` byte for byte (`args` include `--reproducible`).
pub fn assert_same_under_other_layouts(dir: &Path, input: &Path, reference: &[u8], args: &[&str]) {
    let two = dir.join("layout-w2.jsonl");
    let mut a = args.to_vec();
    a.extend(["--workers", "2"]);
    run(input, &two, &a);
    assert!(
        std::fs::read(&two).expect("output") == reference,
        "--workers 2 differs from --workers 1 ({args:?})"
    );
    let cluster = two_process_cluster(dir);
    let p2 = dir.join("layout-p2.jsonl");
    let mut a = vec![
        "--input",
        input.to_str().expect("utf-8 path"),
        "--output",
        p2.to_str().expect("utf-8 path"),
    ];
    a.extend_from_slice(args);
    run_two_processes(&cluster, &a);
    assert!(
        std::fs::read(&p2).expect("output") == reference,
        "2 processes differ from 1 worker ({args:?})"
    );
}
