//! Clusters: `cluster.toml`, the timely configuration of one process, and `launch`.
//!
//! ```toml
//! workers = 2                                  # worker threads per process
//! processes = ["host-a:2101", "host-b:2101"]   # one address per process, process i = line i
//! ```
//!
//! Every process runs `fleetwatch run ... --cluster cluster.toml --process I` with the same inputs; timely
//! connects them (all-to-all TCP) and the workers of all processes form one dataflow. `fleetwatch launch`
//! starts every process whose host is this machine, supervises them, and restarts them (from the last
//! checkpoint, with `--checkpoint-dir`) when one fails.
//!
//! Faults. The connections are made here rather than by timely, so that a process waits for its peers a
//! bounded time (`connect_timeout_seconds`, naming the peer it could not reach) and every connection has
//! TCP keepalive and a user timeout (a peer host that vanishes is noticed within about 30 s; a peer process
//! that dies, at once). When a connection fails, timely's communication threads panic; the hook
//! [`install_fault_hook`] turns that into one line naming the peer and the cause, and exit status
//! [`EXIT_PEER_LOST`], instead of a panic message and backtrace per thread.

use std::any::Any;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};

/// Exit status of a process that stopped because a peer process died, became unreachable, or could not
/// be reached at start.
pub const EXIT_PEER_LOST: i32 = 3;
/// How long a process waits for its peers at start, by default.
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u64 = 120;

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
    #[error("process {me} could not reach process {peer} ({address}) within {seconds} s: {cause}")]
    Unreachable {
        me: usize,
        peer: usize,
        address: String,
        seconds: u64,
        cause: String,
    },
    #[error("process {me}: connection with process {peer} ({address}) failed: {source}")]
    Connection {
        me: usize,
        peer: usize,
        address: String,
        source: std::io::Error,
    },
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
    /// How long a process waits for every peer to be reachable at start before it gives up (exit status
    /// [`EXIT_PEER_LOST`]); default [`DEFAULT_CONNECT_TIMEOUT_SECONDS`].
    #[serde(default)]
    pub connect_timeout_seconds: Option<u64>,
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
        if c.connect_timeout_seconds == Some(0) {
            return Err(invalid("connect_timeout_seconds must be at least 1".into()));
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

    /// How long process start waits for its peers.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(
            self.connect_timeout_seconds
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECONDS),
        )
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

/// The communication of one process for `timely::execute::execute_from`: threads within a process; for a
/// cluster, connections made by [`connect`] (bounded wait, keepalive) under timely's own send and receive
/// threads.
#[allow(clippy::type_complexity)]
pub fn communication(
    config: &timely::CommunicationConfig,
    connect_timeout: Duration,
) -> Result<(Vec<AllocatorBuilder>, Box<dyn Any + Send>), ClusterError> {
    match config {
        timely::CommunicationConfig::Cluster {
            threads,
            process,
            addresses,
            ..
        } => {
            let sockets = connect(addresses, *process, connect_timeout)?;
            let hooks = timely::communication::Hooks::default();
            let local = ProcessBuilder::new_typed_vector(
                *threads,
                hooks.refill.clone(),
                hooks.spill.clone(),
            );
            let (builders, guard) =
                initialize_networking_from_sockets(local, sockets, *process, *threads, hooks)
                    .map_err(|source| ClusterError::Connection {
                        me: *process,
                        peer: *process,
                        address: addresses[*process].clone(),
                        source,
                    })?;
            Ok((
                builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
                Box::new(guard),
            ))
        }
        other => other
            .clone()
            .try_build()
            .map_err(|message| ClusterError::Invalid {
                path: "communication".into(),
                message,
            }),
    }
}

/// Connects process `me` with every other process of `addresses`, as timely does (process `i` connects
/// to every `j < i` and sends its index; it accepts every `j > i`), within `timeout`: an error names the
/// first peer not reached. Every connection gets `TCP_NODELAY`, keepalive and a user timeout.
pub fn connect(
    addresses: &[String],
    me: usize,
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>, ClusterError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let seconds = timeout.as_secs();
    let listener =
        TcpListener::bind(&addresses[me]).map_err(|source| ClusterError::Connection {
            me,
            peer: me,
            address: addresses[me].clone(),
            source,
        })?;
    let mut sockets: Vec<Option<TcpStream>> = (0..addresses.len()).map(|_| None).collect();
    let mut announced = false;
    // Lower indexes: connect and say who we are.
    for (peer, address) in addresses.iter().enumerate().take(me) {
        let stream = loop {
            let attempt = address
                .to_socket_addrs()
                .and_then(|mut a| {
                    a.next().ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "address does not resolve",
                        )
                    })
                })
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)));
            match attempt {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    if !announced && started.elapsed() >= Duration::from_secs(2) {
                        tracing::warn!(
                            "process {me}: waiting for process {peer} ({address}): {e}; retrying for up \
                             to {seconds} s"
                        );
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(ClusterError::Unreachable {
                        me,
                        peer,
                        address: address.clone(),
                        seconds,
                        cause: e.to_string(),
                    });
                }
            }
        };
        let failed = |source| ClusterError::Connection {
            me,
            peer,
            address: address.clone(),
            source,
        };
        configure(&stream).map_err(failed)?;
        (&stream)
            .write_all(&(me as u64).to_be_bytes())
            .map_err(|source| ClusterError::Connection {
                me,
                peer,
                address: address.clone(),
                source,
            })?;
        sockets[peer] = Some(stream);
    }
    // Higher indexes: accept until each has said who it is.
    listener
        .set_nonblocking(true)
        .map_err(|source| ClusterError::Connection {
            me,
            peer: me,
            address: addresses[me].clone(),
            source,
        })?;
    while let Some(missing) = (me + 1..addresses.len()).find(|&j| sockets[j].is_none()) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut id = [0u8; 8];
                if (&stream).read_exact(&mut id).is_err() {
                    // Not a fleetwatch peer, or one that went away at once: wait for the real one.
                    continue;
                }
                let _ = stream.set_read_timeout(None);
                let peer = u64::from_be_bytes(id) as usize;
                if peer <= me || peer >= addresses.len() || sockets[peer].is_some() {
                    tracing::warn!(
                        "process {me}: ignoring a connection that says it is process {peer}"
                    );
                    continue;
                }
                configure(&stream).map_err(|source| ClusterError::Connection {
                    me,
                    peer,
                    address: addresses[peer].clone(),
                    source,
                })?;
                sockets[peer] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(ClusterError::Unreachable {
                        me,
                        peer: missing,
                        address: addresses[missing].clone(),
                        seconds,
                        cause: "it did not connect".into(),
                    });
                }
                if !announced && started.elapsed() >= Duration::from_secs(2) {
                    tracing::warn!(
                        "process {me}: waiting for process {missing} ({}) to connect, for up to {seconds} s",
                        addresses[missing]
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ClusterError::Connection {
                    me,
                    peer: missing,
                    address: addresses[missing].clone(),
                    source,
                });
            }
        }
    }
    Ok(sockets)
}

/// `TCP_NODELAY`, keepalive (idle 10 s, then every 5 s, 4 probes) and a 30 s user timeout: a peer host
/// that disappears breaks the connection within about 30 s, whether it was idle or being written to.
fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = stream.as_raw_fd();
        let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
            // SAFETY: setsockopt on an open socket with a pointer to a live c_int of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4)?;
        set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 30_000)?;
    }
    Ok(())
}

/// Set by the first communication fault: the line is printed once, and every other thread's panic after
/// it is silent (the process is exiting).
static FAULTED: AtomicBool = AtomicBool::new(false);

/// Turns timely's communication panics ("timely communication error: …" in its `timely:send-N` /
/// `timely:recv-N` threads, N the peer) into one line naming the peer and the cause, and exit status
/// [`EXIT_PEER_LOST`]. Other panics keep the default report.
pub fn install_fault_hook(addresses: Vec<String>, me: usize) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        let peer = name
            .strip_prefix("timely:recv-")
            .or_else(|| name.strip_prefix("timely:send-"))
            .and_then(|n| n.parse::<usize>().ok());
        let communication = message.contains("timely communication error")
            || message.contains("MergeQueue poisoned")
            || message.contains("Send thread panic")
            || message.contains("Recv thread panic");
        if communication || FAULTED.load(Ordering::SeqCst) {
            if !FAULTED.swap(true, Ordering::SeqCst) {
                let cause = message
                    .strip_prefix("timely communication error: ")
                    .unwrap_or(&message);
                let cause = match cause {
                    c if c.contains("socket closed") || c.contains("Connection reset") => {
                        format!("{c} (the process exited or was killed)")
                    }
                    c if c.contains("timed out") => {
                        format!("{c} (its host stopped answering)")
                    }
                    c => c.to_string(),
                };
                match peer {
                    Some(p) => eprintln!(
                        "fleetwatch: process {me} lost process {p} ({}): {cause}; stopping (exit status {EXIT_PEER_LOST})",
                        addresses.get(p).map(String::as_str).unwrap_or("?")
                    ),
                    None => eprintln!(
                        "fleetwatch: process {me} lost a peer process: {cause}; stopping (exit status {EXIT_PEER_LOST})"
                    ),
                }
                std::process::exit(EXIT_PEER_LOST);
            }
            // Another thread is already ending the process.
            loop {
                std::thread::park();
            }
        }
        default(info);
    }));
}

/// How `launch` supervises its processes.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// Restarts after failures in a row (a cluster that ran [`Supervision::healthy_after`] since its last
    /// start has its count reset).
    pub max_restarts: u32,
    /// The wait before the first restart; doubled for each restart in a row, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub healthy_after: Duration,
    /// How long the other local processes get to stop by themselves after one fails (they lose their
    /// peer and exit with [`EXIT_PEER_LOST`] within seconds) before they are killed.
    pub grace: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            max_restarts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            healthy_after: Duration::from_secs(300),
            grace: Duration::from_secs(10),
        }
    }
}

/// What `launch` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchReport {
    /// The local processes (indexes in the cluster file).
    pub processes: Vec<usize>,
    /// Restarts of the local processes after failures.
    pub restarts: u32,
    /// The processes were asked to stop (SIGTERM / SIGINT to `launch`) and did.
    pub stopped: bool,
}

/// How a process ended, in words.
fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(EXIT_PEER_LOST), _) => {
            format!("exited with status {EXIT_PEER_LOST} (lost a peer process)")
        }
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed (SIGKILL)".into(),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Sends `signal` to a child.
fn signal_child(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this process has not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Starts `exe run <args> --cluster <file> --process i` for every local process and supervises them: when
/// one fails, the others are stopped and all are started again — from the last checkpoint when `<args>`
/// have `--checkpoint-dir`, else from the beginning of the inputs — up to `sup.max_restarts` times in a
/// row, waiting `sup.backoff` (doubling) before each restart. SIGTERM / SIGINT to `launch` (as counted by
/// [`crate::stop::signals_received`]) are passed on to the processes, which stop gracefully; a second one
/// makes them exit at once. Each process runs in its own process group, so a terminal's Ctrl-C reaches
/// them only through `launch`.
pub fn launch(
    exe: &Path,
    cluster_path: &Path,
    run_args: &[String],
    sup: &Supervision,
) -> Result<LaunchReport, ClusterError> {
    use std::os::unix::process::CommandExt;
    let cluster = ClusterFile::load(cluster_path)?;
    let local = cluster.local_processes();
    if local.is_empty() {
        return Err(ClusterError::Invalid {
            path: cluster_path.display().to_string(),
            message: "no process of the cluster is on this host; run `fleetwatch run --cluster ... --process I` on each host".into(),
        });
    }
    let resumes = run_args
        .iter()
        .position(|a| a == "--checkpoint-dir" || a.starts_with("--checkpoint-dir="))
        .map(|i| match run_args[i].split_once('=') {
            Some((_, d)) => d.to_string(),
            None => run_args.get(i + 1).cloned().unwrap_or_default(),
        });
    let mut report = LaunchReport {
        processes: local.clone(),
        ..Default::default()
    };
    let mut in_a_row = 0u32;
    let mut forwarded = crate::stop::signals_received();
    loop {
        let started = Instant::now();
        let mut children: Vec<(usize, Child)> = Vec::new();
        for &i in &local {
            let child = Command::new(exe)
                .arg("run")
                .args(run_args)
                .arg("--cluster")
                .arg(cluster_path)
                .arg("--process")
                .arg(i.to_string())
                .process_group(0)
                .spawn()
                .map_err(|source| ClusterError::Spawn { index: i, source });
            match child {
                Ok(c) => {
                    eprintln!("launch: process {i} started (pid {})", c.id());
                    children.push((i, c));
                }
                Err(e) => {
                    for (_, mut c) in children {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(e);
                }
            }
        }
        // Wait for all; on the first failure give the others `grace` to stop, then kill them.
        let mut failure: Option<(usize, std::process::ExitStatus)> = None;
        let mut failed_at: Option<Instant> = None;
        let mut running: Vec<(usize, Child)> = children;
        while !running.is_empty() {
            let received = crate::stop::signals_received();
            if received > forwarded {
                forwarded = received;
                report.stopped = true;
                let how = if received == 1 {
                    "stopping them after the open epoch (signal again to stop them at once)"
                } else {
                    "stopping them at once"
                };
                eprintln!("launch: signal received: {how}");
                for (_, c) in &running {
                    signal_child(c, libc::SIGTERM);
                }
            }
            let mut still = Vec::new();
            for (i, mut c) in running {
                match c.try_wait() {
                    Ok(Some(status)) if status.success() => {}
                    Ok(Some(status)) => {
                        eprintln!("launch: process {i} {}", describe(&status));
                        // The cause, rather than the processes that lost it as a peer.
                        if failure.is_none_or(|(_, f)| {
                            f.code() == Some(EXIT_PEER_LOST)
                                && status.code() != Some(EXIT_PEER_LOST)
                        }) {
                            failure = Some((i, status));
                        }
                        failed_at.get_or_insert_with(Instant::now);
                    }
                    Ok(None) => still.push((i, c)),
                    Err(e) => {
                        tracing::warn!("launch: cannot wait for process {i}: {e}");
                        still.push((i, c));
                    }
                }
            }
            running = still;
            if failed_at.is_some_and(|t| t.elapsed() >= sup.grace) {
                for (i, c) in running.iter_mut() {
                    eprintln!("launch: process {i} did not stop by itself; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                }
                running.clear();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some((index, status)) = failure else {
            return Ok(report);
        };
        let fault = ClusterError::Failed {
            index,
            status: describe(&status),
        };
        if report.stopped {
            return Err(fault);
        }
        if status.code() == Some(2) {
            eprintln!("launch: a usage error is not retried");
            return Err(fault);
        }
        if started.elapsed() >= sup.healthy_after {
            in_a_row = 0;
        }
        if in_a_row >= sup.max_restarts {
            eprintln!(
                "launch: giving up after {} restarts in a row",
                sup.max_restarts
            );
            return Err(fault);
        }
        in_a_row += 1;
        report.restarts += 1;
        let wait = sup
            .backoff
            .saturating_mul(1 << (in_a_row - 1).min(16))
            .min(sup.max_backoff);
        let from = match &resumes {
            Some(d) => format!("from the last checkpoint in {d}"),
            None => "from the beginning of the inputs (no --checkpoint-dir)".into(),
        };
        eprintln!(
            "launch: restarting the local processes {from} in {:.1} s (restart {in_a_row} of at most {} in a row)",
            wait.as_secs_f64(),
            sup.max_restarts
        );
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if crate::stop::signals_received() > forwarded {
                eprintln!("launch: signal received while waiting to restart: not restarting");
                report.stopped = true;
                return Err(fault);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
