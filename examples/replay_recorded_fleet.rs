//! Replays a recorded topic through the pipeline on two workers and scores the result.
//!
//! ```text
//! cargo run --release --example replay_recorded_fleet
//! ```
//!
//! The same three steps a user takes from the shell (`fleetwatch generate`, `run`, `eval`), through the
//! library: a fleet is written as a recorded topic, replayed as fast as possible, and its anomaly changes are
//! compared with the labels the generator injected.

use fleetwatch::commands::{self, Layout, RunOptions};
use fleetwatch::generate::GenerateConfig;

fn main() -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let fleet = GenerateConfig {
        customers: 200,
        epochs: 576, // two days: one of clean history, one with anomalies
        seed: 3,
        ..Default::default()
    };
    let generated = commands::generate(&fleet, &dir)?;
    println!(
        "recorded topic: {} messages, {} labelled anomalies",
        generated.messages, generated.labels
    );
    let opts = RunOptions {
        dataflow: None, // the embedded home Wi-Fi spec
        inputs: vec![dir.join("telemetry.jsonl")],
        output: dir.join("changes.jsonl"),
        dead_letter: Some(dir.join("dead-letters.jsonl")),
        layout: Layout::Threads(2),
        reproducible: true,
        speed: None,
        kafka: Default::default(),
        checkpoint_dir: None,
        checkpoint_every: None,
        signals: false,
        topology: None,
        topology_changes: None,
        group_incidents: false,
        watch: None,
        serving: Default::default(),
        shadow: None,
    };
    let run = commands::run(&opts)?;
    println!(
        "replayed {} epochs: {} series scored, {} anomaly changes, {:.2} s",
        run.epochs, run.series_scored, run.changes, run.wall_seconds
    );
    let eval = commands::eval(&dir.join("labels.jsonl"), &opts.output)?;
    println!(
        "precision {:.3}, recall {:.3}, F1 {:.3}",
        eval.precision, eval.recall, eval.f1
    );
    let first = std::fs::read_to_string(&opts.output)?
        .lines()
        .find(|l| l.contains("\"status\":\"raised\""))
        .map(commands::pretty_change);
    if let Some(line) = first {
        println!("first alert: {line}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleetwatch-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
