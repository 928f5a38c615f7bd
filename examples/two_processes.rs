//! Two worker processes, one dataflow: what `fleetwatch launch --cluster cluster.toml` does, on loopback.
//!
//! ```text
//! cargo run --release --example two_processes
//! ```
//!
//! The example writes a cluster file with two processes on 127.0.0.1, starts itself twice (once per
//! process id), and checks that the output equals that of a single process with two worker threads.

use std::process::Command;

use fleetwatch::commands::{self, Layout, RunOptions};
use fleetwatch::generate::GenerateConfig;

fn options(dir: &std::path::Path, output: &str, layout: Layout) -> RunOptions {
    RunOptions {
        dataflow: None,
        inputs: vec![dir.join("telemetry.jsonl")],
        output: dir.join(output),
        dead_letter: None,
        layout,
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
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--process" {
        // Child: run one process of the cluster.
        let dir = std::path::PathBuf::from(&args[3]);
        let index: usize = args[2].parse()?;
        let layout = Layout::Cluster {
            file: dir.join("cluster.toml"),
            index,
        };
        commands::run(&options(&dir, "two-processes.jsonl", layout))?;
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("fleetwatch-two-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    commands::generate(
        &GenerateConfig {
            customers: 100,
            epochs: 144,
            seed: 2,
            history_epochs: 48,
            ..Default::default()
        },
        &dir,
    )?;
    let port = |p: u16| {
        std::net::TcpListener::bind(("127.0.0.1", p)).map(|l| l.local_addr().map(|a| a.port()))
    };
    let (a, b) = (port(0)??, port(0)??);
    std::fs::write(
        dir.join("cluster.toml"),
        format!("workers = 1\nprocesses = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n"),
    )?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..2 {
        children.push(
            Command::new(&exe)
                .args([
                    "--process",
                    &i.to_string(),
                    dir.to_str().unwrap_or_default(),
                ])
                .spawn()?,
        );
    }
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "a cluster process failed");
    }
    commands::run(&options(&dir, "one-process.jsonl", Layout::Threads(2)))?;
    let same = std::fs::read(dir.join("two-processes.jsonl"))?
        == std::fs::read(dir.join("one-process.jsonl"))?;
    println!("2 processes x 1 worker == 1 process x 2 workers: {same}");
    std::fs::remove_dir_all(&dir)?;
    anyhow::ensure!(same, "outputs differ");
    Ok(())
}
