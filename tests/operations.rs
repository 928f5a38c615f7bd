//! Operations with real processes and real signals: SIGINT / SIGTERM stop a run after an epoch with a
//! checkpoint, exit 0, and the resumed run's output is byte-identical to an uninterrupted run's; a second
//! signal exits at once; a stop sent to one process of a cluster stops every process; `launch` restarts a
//! cluster one of whose processes was SIGKILLed, from the last checkpoint, to the uninterrupted output; a
//! peer that never comes is named, with exit status 3.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 300 customers × 400 epochs with malformed lines (dead letters) and anomalies.
fn fleet(dir: &Path) -> PathBuf {
    common::generate(
        &dir.join("fleet"),
        300,
        400,
        23,
        &[
            "--malformed-rate",
            "0.002",
            "--history-epochs",
            "96",
            "--anomaly-rate",
            "2.0",
        ],
    )
}

/// `run` arguments writing `out` / `dead` (and, with `ck`, checkpoints every 20 epochs); `speed` paces
/// the replay (400 epochs at 24,000× event time take 5 s).
fn args(
    input: &Path,
    out: &Path,
    dead: &Path,
    ck: Option<&Path>,
    speed: Option<&str>,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
        "--reproducible",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(ck) = ck {
        a.extend([
            "--checkpoint-dir".into(),
            ck.to_str().unwrap().into(),
            "--checkpoint-every".into(),
            "20".into(),
        ]);
    }
    if let Some(s) = speed {
        a.extend(["--speed".into(), s.into()]);
    }
    a
}

/// The uninterrupted run's output and dead letters.
fn reference(dir: &Path, input: &Path) -> (Vec<u8>, Vec<u8>) {
    let out = dir.join("ref.jsonl");
    let dead = dir.join("ref-dead.jsonl");
    let mut a = vec!["run".to_string()];
    a.extend(args(input, &out, &dead, None, None));
    a.extend(["--workers".into(), "2".into()]);
    let o = Command::new(common::bin()).args(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (std::fs::read(&out).unwrap(), std::fs::read(&dead).unwrap())
}

fn spawn_run(a: &[String], extra: &[&str]) -> Child {
    Command::new(common::bin())
        .arg("run")
        .args(a)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Waits for `child` up to `limit`; returns its status and stderr.
fn finish(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

/// Waits until a complete checkpoint newer than `after` exists (the run is mid-way).
fn wait_for_checkpoint(dir: &Path, after: Option<u64>, children: &mut [&mut Child]) -> u64 {
    common::wait_for_checkpoint(dir, after, children, Duration::from_secs(120))
}

/// The epoch a stopped run says it stopped after.
fn stopped_after(stderr: &str) -> u64 {
    let at = stderr
        .find("stopped after epoch ")
        .unwrap_or_else(|| panic!("no stop line in:\n{stderr}"));
    stderr[at + 20..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .expect("an epoch number")
}

/// The output and dead letters equal the uninterrupted run's, byte for byte.
fn assert_identical(out: &Path, dead: &Path, ref_out: &[u8], ref_dead: &[u8]) {
    assert!(
        std::fs::read(out).unwrap() == ref_out,
        "output differs from the uninterrupted run's"
    );
    assert!(
        std::fs::read(dead).unwrap() == ref_dead,
        "dead letters differ"
    );
}

fn last_line(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().expect("a line")).unwrap()
}

#[test]
fn sigint_and_sigterm_stop_after_an_epoch_and_the_resumed_output_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet(dir.path());
    let (ref_out, ref_dead) = reference(dir.path(), &input);
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let ck = dir.path().join("ck");
    let paced = args(&input, &out, &dead, Some(&ck), Some("24000"));

    // SIGINT (Ctrl-C) mid-run, 2 workers.
    let mut run = spawn_run(&paced, &["--workers", "2"]);
    let first = wait_for_checkpoint(&ck, None, &mut [&mut run]);
    signal(run.id(), libc::SIGINT);
    let t = Instant::now();
    let (status, err) = finish(run, Duration::from_secs(60));
    assert!(status.success(), "{status}: {err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the stop took {:?}",
        t.elapsed()
    );
    let s1 = stopped_after(&err);
    assert!(
        s1 >= first,
        "stopped at {s1}, before the checkpoint {first}"
    );
    assert_eq!(
        common::complete_checkpoints(&ck).first(),
        Some(&s1),
        "a checkpoint at the stop epoch"
    );
    // The run is not over: its output ends with the stop epoch's summary, not an end line.
    let last = last_line(&out);
    assert_eq!(last["type"], "summary", "{last}");
    assert_eq!(last["epoch"].as_u64(), Some(s1));

    // Resumed under 3 workers, stopped again by SIGTERM.
    let mut run = spawn_run(&paced, &["--workers", "3"]);
    wait_for_checkpoint(&ck, Some(s1), &mut [&mut run]);
    signal(run.id(), libc::SIGTERM);
    let (status, err) = finish(run, Duration::from_secs(60));
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains(&format!("resumed after epoch {s1}")), "{err}");
    let s2 = stopped_after(&err);
    assert!(s2 > s1);

    // Resumed once more to the end, on one worker, as fast as it goes.
    let o = Command::new(common::bin())
        .arg("run")
        .args(args(&input, &out, &dead, Some(&ck), None))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_identical(&out, &dead, &ref_out, &ref_dead);
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet(dir.path());
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let ck = dir.path().join("ck");
    // One epoch per second: the open epoch closes a second or more after the first signal.
    let mut run = spawn_run(
        &args(&input, &out, &dead, Some(&ck), Some("300")),
        &["--workers", "2"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(run.try_wait().unwrap().is_none(), "the run ended early");
    signal(run.id(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    signal(run.id(), libc::SIGTERM);
    let t = Instant::now();
    let (status, err) = finish(run, Duration::from_secs(30));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}: {err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(err.contains("second signal, exiting at once"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_stop_sent_to_one_process_stops_the_cluster_and_it_resumes_under_another_layout() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet(dir.path());
    let (ref_out, ref_dead) = reference(dir.path(), &input);
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let ck = dir.path().join("ck");
    let cluster = common::two_process_cluster(dir.path());
    let paced = args(&input, &out, &dead, Some(&ck), Some("24000"));
    let cluster_args = |i: &'static str| -> Vec<String> {
        vec![
            "--cluster".into(),
            cluster.to_str().unwrap().into(),
            "--process".into(),
            i.into(),
        ]
    };
    let c0 = cluster_args("0");
    let c1 = cluster_args("1");
    let mut p0 = spawn_run(&paced, &c0.iter().map(String::as_str).collect::<Vec<_>>());
    let mut p1 = spawn_run(&paced, &c1.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_checkpoint(&ck, None, &mut [&mut p0, &mut p1]);
    signal(p1.id(), libc::SIGTERM);
    let (s0, e0) = finish(p0, Duration::from_secs(60));
    let (s1, e1) = finish(p1, Duration::from_secs(60));
    assert!(s0.success() && s1.success(), "{s0}: {e0}\n{s1}: {e1}");
    let stop = stopped_after(&e0);
    assert_eq!(
        stopped_after(&e1),
        stop,
        "both processes stop after the same epoch"
    );
    assert_eq!(common::complete_checkpoints(&ck).first(), Some(&stop));
    // One process of two workers takes over the checkpoint written by two processes.
    let o = Command::new(common::bin())
        .arg("run")
        .args(args(&input, &out, &dead, Some(&ck), None))
        .args(["--workers", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_identical(&out, &dead, &ref_out, &ref_dead);
}

#[test]
fn launch_restarts_a_cluster_whose_process_was_killed_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet(dir.path());
    let (ref_out, ref_dead) = reference(dir.path(), &input);
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let ck = dir.path().join("ck");
    let cluster = common::two_process_cluster(dir.path());
    let mut launch = Command::new(common::bin())
        .args([
            "launch",
            "--cluster",
            cluster.to_str().unwrap(),
            "--restart-backoff",
            "0.5",
            "--",
        ])
        .args(args(&input, &out, &dead, Some(&ck), Some("24000")))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Everything launch and its processes say, line by line.
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let lines = Arc::clone(&lines);
        let err = launch.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let pid_of = |i: usize| -> Option<u32> {
        let prefix = format!("launch: process {i} started (pid ");
        lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix(&prefix)?.trim_end_matches(')').parse().ok())
    };
    let first = wait_for_checkpoint(&ck, None, &mut [&mut launch]);
    let victim = pid_of(1).expect("launch says which pid process 1 has");
    signal(victim, libc::SIGKILL);
    let (status, _) = finish(launch, Duration::from_secs(180));
    reader.join().unwrap();
    let said = lines.lock().unwrap().join("\n");
    assert!(status.success(), "{status}:\n{said}");
    assert!(
        said.contains("launch: process 1 was killed (SIGKILL)"),
        "{said}"
    );
    // The survivor names its lost peer in one line and exits with status 3, without a panic.
    assert!(said.contains("process 0 lost process 1"), "{said}");
    assert!(said.contains("(exit status 3)"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert!(
        said.contains("restarting the local processes from the last checkpoint"),
        "{said}"
    );
    assert!(said.contains("resumed after epoch"), "{said}");
    assert!(said.contains("after 1 restarts"), "{said}");
    assert!(
        common::complete_checkpoints(&ck)
            .first()
            .is_some_and(|&c| c > first)
    );
    assert_identical(&out, &dead, &ref_out, &ref_dead);
}

#[test]
fn a_peer_that_never_comes_is_named_with_exit_status_3() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet(dir.path());
    let cluster = dir.path().join("cluster.toml");
    let (a, b) = (common::free_port(), common::free_port());
    std::fs::write(
        &cluster,
        format!(
            "workers = 1\nprocesses = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\nconnect_timeout_seconds = 2\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    // Process 1 alone: process 0 is never there to connect to.
    let run = spawn_run(
        &args(&input, &out, &dead, None, None),
        &["--cluster", cluster.to_str().unwrap(), "--process", "1"],
    );
    let t = Instant::now();
    let (status, err) = finish(run, Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{status}: {err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        err.contains(&format!(
            "could not reach process 0 (127.0.0.1:{a}) within 2 s"
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
