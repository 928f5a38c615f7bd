//! Clusters: `cluster.toml`, the timely configuration of one process, and `launch`.
//!
//! ```toml
//! workers = 2                                  # worker threads per process
//! processes = ["host-a:2101", "host-b:2101"]   # one address per process, process i = line i
//! ```
//!
//! Every process runs `fleetwatch run ... --cluster cluster.toml --process I` with the same inputs; timely
//! connects them (all-to-all TCP) and the workers of all processes form one dataflow. `fleetwatch launch`
//! starts every process whose host is this machine and waits for them.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::{Child, Command};

use serde::Deserialize;

/// Errors reading or using a cluster file.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster file {path} is invalid: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot start process {index}: {source}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
    #[error("process {index} failed: {status}")]
    Failed { index: usize, status: String },
}

/// The parsed `cluster.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Worker threads per process.
    pub workers: usize,
    /// `host:port` of each process; the index in this list is the process id.
    pub processes: Vec<String>,
    /// Log timely's connection progress.
    #[serde(default)]
    pub report_connections: bool,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let c: ClusterFile = toml::from_str(&text).map_err(|e| ClusterError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ClusterError::Invalid {
            path: path.display().to_string(),
            message,
        };
        if c.workers == 0 {
            return Err(invalid("workers must be at least 1".into()));
        }
        if c.processes.is_empty() {
            return Err(invalid("list at least one process address".into()));
        }
        for (i, p) in c.processes.iter().enumerate() {
            if p.rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid(format!(
                    "process {i} address {p:?} is not host:port"
                )));
            }
        }
        Ok(c)
    }

    /// The timely configuration for process `index`.
    pub fn timely_config(&self, index: usize) -> Result<timely::Config, ClusterError> {
        if index >= self.processes.len() {
            return Err(ClusterError::Invalid {
                path: "cluster".into(),
                message: format!(
                    "--process {index} but the cluster lists {} processes",
                    self.processes.len()
                ),
            });
        }
        let communication = if self.processes.len() == 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: index,
                addresses: self.processes.clone(),
                report: self.report_connections,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }

    /// Indexes of the processes whose host resolves to this machine (loopback or one of its names).
    pub fn local_processes(&self) -> Vec<usize> {
        let hostname = std::env::var("HOSTNAME").unwrap_or_default();
        self.processes
            .iter()
            .enumerate()
            .filter(|(_, addr)| {
                let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
                host == "localhost"
                    || host == hostname
                    || addr
                        .to_socket_addrs()
                        .map(|mut it| it.any(|a| a.ip().is_loopback()))
                        .unwrap_or(false)
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Starts `exe run <args> --cluster <file> --process i` for every local process, waits for all of them, and
/// fails if any fails (stopping the others).
pub fn launch(
    exe: &Path,
    cluster_path: &Path,
    run_args: &[String],
) -> Result<Vec<usize>, ClusterError> {
    let cluster = ClusterFile::load(cluster_path)?;
    let local = cluster.local_processes();
    if local.is_empty() {
        return Err(ClusterError::Invalid {
            path: cluster_path.display().to_string(),
            message: "no process of the cluster is on this host; run `fleetwatch run --cluster ... --process I` on each host".into(),
        });
    }
    let mut children: Vec<(usize, Child)> = Vec::new();
    for &i in &local {
        let child = Command::new(exe)
            .arg("run")
            .args(run_args)
            .arg("--cluster")
            .arg(cluster_path)
            .arg("--process")
            .arg(i.to_string())
            .spawn()
            .map_err(|source| ClusterError::Spawn { index: i, source });
        match child {
            Ok(c) => children.push((i, c)),
            Err(e) => {
                for (_, mut c) in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    let mut failure = None;
    while !children.is_empty() {
        let mut still = Vec::new();
        for (i, mut c) in children {
            match c.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    failure.get_or_insert(ClusterError::Failed {
                        index: i,
                        status: status.to_string(),
                    });
                }
                Ok(None) => still.push((i, c)),
                Err(e) => {
                    failure.get_or_insert(ClusterError::Failed {
                        index: i,
                        status: e.to_string(),
                    });
                }
            }
        }
        children = still;
        if failure.is_some() {
            for (_, c) in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "workers = 2\nprocesses = [\"127.0.0.1:2101\", \"127.0.0.1:2102\"]\n",
        )
        .unwrap();
        let c = ClusterFile::load(&p).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.local_processes(), vec![0, 1]);
        assert!(c.timely_config(1).is_ok());
        assert!(c.timely_config(2).is_err());
        std::fs::write(&p, "workers = 0\nprocesses = [\"a:1\"]\n").unwrap();
        assert!(ClusterFile::load(&p).is_err());
        std::fs::write(&p, "workers = 1\nprocesses = [\"nohostport\"]\n").unwrap();
        assert!(ClusterFile::load(&p).is_err());
    }
}
