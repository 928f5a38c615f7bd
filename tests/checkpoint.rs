//! Checkpoints with real processes: `kill -9` mid-run and resume under another worker/process layout
//! (1×2 → 2×1 → 1×4) with output byte-identical to an uninterrupted run; damaged checkpoints are detected
//! and the previous one used; checkpoints of another layout version or another spec are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

/// A fleet with malformed lines, joiners, anomalies, and late records: every 61st line is moved 150
/// lines later (about 1.5 epochs for 100 customers: some land within the allowed lateness, some beyond
/// it and are folded into the next open epoch).
fn fleet(dir: &Path) -> PathBuf {
    let input = common::generate(
        &dir.join("fleet"),
        100,
        480,
        17,
        &[
            "--malformed-rate",
            "0.002",
            "--history-epochs",
            "96",
            "--anomaly-rate",
            "2.0",
            "--partitions",
            "5",
        ],
    );
    let text = std::fs::read_to_string(&input).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let mut moved = Vec::new();
    let mut i = 1;
    while i < lines.len() {
        if i % 61 == 0 {
            moved.push((i + 150, lines.remove(i)));
        }
        i += 1;
    }
    for (at, l) in moved.into_iter().rev() {
        let at = at.min(lines.len());
        lines.insert(at, l);
    }
    let out = dir.join("late.jsonl");
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();
    out
}

fn run_args<'a>(input: &'a Path, out: &'a Path, dead: &'a Path) -> Vec<&'a str> {
    vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
        "--reproducible",
    ]
}

fn spawn(args: &[&str]) -> Child {
    Command::new(common::bin())
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn output(args: &[&str]) -> Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

/// Waits until a complete checkpoint newer than `after` exists, kills every child with SIGKILL, and
/// returns the newest complete checkpoint once they are dead (the children may complete another one
/// between the poll and the kill; the next layout must resume from, and be compared with, that one).
fn kill_after_checkpoint(dir: &Path, after: Option<u64>, children: &mut [Child]) -> u64 {
    let mut refs: Vec<&mut Child> = children.iter_mut().collect();
    common::wait_for_checkpoint(dir, after, &mut refs, Duration::from_secs(120));
    for ch in children.iter_mut() {
        ch.kill().unwrap(); // SIGKILL
        let _ = ch.wait();
    }
    common::complete_checkpoints(dir)[0]
}

#[test]
fn kill_9_and_resume_under_other_layouts_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet(dir.path());
    let (ref_out, ref_dead) = (dir.path().join("ref.jsonl"), dir.path().join("ref.dl"));
    let mut args = run_args(&input, &ref_out, &ref_dead);
    args.extend(["--workers", "1"]);
    common::fleetwatch(&args);
    let reference = std::fs::read(&ref_out).unwrap();
    let text = String::from_utf8_lossy(&reference);
    assert!(text.contains("\"status\":\"raised\"") && text.contains("\"late\":"));
    assert!(
        common::end_record(&ref_out)["records"].as_u64().unwrap() > 30_000,
        "the whole fleet was read"
    );
    let end = common::end_record(&ref_out);
    assert!(end["late"].as_u64().unwrap() > 0, "late records: {end}");

    let (out, dead) = (dir.path().join("out.jsonl"), dir.path().join("out.dl"));
    let ck = dir.path().join("ck");
    let ck_s = ck.to_str().unwrap().to_string();
    let paced = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = run_args(&input, &out, &dead)
            .into_iter()
            .map(String::from)
            .collect();
        // Paced (480 epochs in about 10 s) so that the kill lands mid-run.
        for x in [
            "--checkpoint-dir",
            &ck_s,
            "--checkpoint-every",
            "10",
            "--speed",
            "15000",
        ] {
            a.push(x.into());
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // 1 process × 2 workers, killed after its first checkpoint.
    let a = paced(&["--workers", "2"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let first = kill_after_checkpoint(&ck, None, &mut [spawn(&a)]);
    // 2 processes × 1 worker resume from it, and are killed after a later one.
    let cluster = common::two_process_cluster(dir.path());
    let procs: Vec<Vec<String>> = ["0", "1"]
        .iter()
        .map(|i| paced(&["--cluster", cluster.to_str().unwrap(), "--process", i]))
        .collect();
    let mut children: Vec<Child> = procs
        .iter()
        .map(|p| spawn(&p.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    let second = kill_after_checkpoint(&ck, Some(first), &mut children);
    assert!(second > first);
    // 1 process × 4 workers finish the run.
    let mut c = run_args(&input, &out, &dead);
    c.extend([
        "--checkpoint-dir",
        &ck_s,
        "--checkpoint-every",
        "10",
        "--workers",
        "4",
    ]);
    let done = output(&c);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(stderr.contains("resumed after epoch"), "{stderr}");
    assert!(
        std::fs::read(&out).unwrap() == reference,
        "output after kill -9 at two checkpoints and three layouts differs from an uninterrupted run"
    );
    assert_eq!(
        std::fs::read(&dead).unwrap(),
        std::fs::read(&ref_dead).unwrap(),
        "dead letters differ"
    );
    // Two complete checkpoints are kept, older ones pruned.
    assert_eq!(common::complete_checkpoints(&ck).len(), 2);
}

/// The newest checkpoint's parts, by name.
fn part(ck: &Path, epoch: u64, name: &str) -> PathBuf {
    ck.join(format!("ckpt-{epoch:020}")).join(name)
}

#[test]
fn damaged_checkpoints_fall_back_and_foreign_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(
        &dir.path().join("fleet"),
        60,
        200,
        5,
        &["--history-epochs", "48", "--anomaly-rate", "2.0"],
    );
    let (out, dead) = (dir.path().join("out.jsonl"), dir.path().join("out.dl"));
    let ck = dir.path().join("ck");
    let mut args = run_args(&input, &out, &dead);
    args.extend([
        "--workers",
        "2",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--checkpoint-every",
        "24",
    ]);
    common::fleetwatch(&args);
    let reference = std::fs::read(&out).unwrap();
    let kept = common::complete_checkpoints(&ck);
    assert_eq!(kept.len(), 2, "{kept:?}");

    // A flipped byte in the newest checkpoint's state: found, reported, and the previous one used.
    let state = part(&ck, kept[0], "state-0000-of-0002.part");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let r = output(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(
        stderr.contains(&format!("resumed after epoch {}", kept[1])),
        "{stderr}"
    );
    assert!(std::fs::read(&out).unwrap() == reference);

    // A truncated source part (and every older checkpoint gone): nothing to resume from, a fresh run.
    let kept = common::complete_checkpoints(&ck);
    for (i, c) in kept.iter().enumerate() {
        let p = part(&ck, *c, "source-0001-of-0002.part");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 1 - i]).unwrap();
    }
    let r = output(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(!stderr.contains("resumed after"), "{stderr}");
    assert!(std::fs::read(&out).unwrap() == reference);

    // Another state-layout version: refused with a clear message, the output left alone.
    let newest = common::complete_checkpoints(&ck)[0];
    let manifest = part(&ck, newest, "MANIFEST.json");
    let m = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        m.replace(
            &format!("\"layout\": {}", fleetwatch::checkpoint::LAYOUT_VERSION),
            "\"layout\": 99",
        ),
    )
    .unwrap();
    let r = output(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains("state layout version 99")
            && stderr.contains(&format!(
                "reads version {}",
                fleetwatch::checkpoint::LAYOUT_VERSION
            )),
        "{stderr}"
    );
    assert!(std::fs::read(&out).unwrap() == reference);
    std::fs::write(&manifest, m).unwrap();

    // A spec with other features: refused.
    let spec = dir.path().join("other.toml");
    std::fs::write(
        &spec,
        "name = 'other'\n[[features]]\nname = 'rssi_dbm'\n[[features]]\nname = 'snr_db'\n",
    )
    .unwrap();
    let mut other = args.clone();
    other.extend(["--dataflow", spec.to_str().unwrap()]);
    let r = output(&other);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(stderr.contains("does not fit this run"), "{stderr}");

    // An output file shorter than the checkpoint recorded: refused, not silently rewritten.
    std::fs::write(&out, b"").unwrap();
    let r = output(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(stderr.contains("truncated or replaced"), "{stderr}");
}
