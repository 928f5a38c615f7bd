//! Graceful stop: SIGTERM / SIGINT end a run after the open epoch, with a checkpoint.
//!
//! The first signal (or [`Stop::request`]) asks every worker of every process to stop after one epoch `S`
//! they agree on; a second signal ends the process at once (exit status 128 + the signal's number).
//!
//! Agreement. A worker that learns of the request (from the signal, or from another worker) proposes
//! `p = max(its source's frontier, the latest epoch it has shipped anything at)` to every worker, and its
//! source reads nothing more until the decision: so nothing past `p` has left that source, and nothing
//! will before it knows `S`. Once a worker has heard every worker's proposal, `S = max(p)` — the same on
//! every worker, with no epoch after `S` started anywhere. Its source then reads until every partition has
//! closed `S` (the cut a checkpoint needs), keeps back what it read for later epochs (the checkpoint holds
//! it, the run does not process it), and ends. The model checkpoints `S`, the sink makes `S` durable and
//! writes no `end` line (the run is not over), sources commit their offsets up to `S`, and the process
//! exits 0. Started again with the same arguments, the run resumes after `S` (with `--checkpoint-dir`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// No stop epoch decided.
const NONE: u64 = u64::MAX;

/// Signals received by this process (SIGTERM, SIGINT).
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// Whether the handlers are installed (a second installation is a no-op).
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Whether a second signal ends the process at once (`run`), or is only counted (`launch`, which passes
/// it on to its processes).
static EXIT_ON_SECOND: AtomicBool = AtomicBool::new(true);

/// A run's stop: requested by a signal or by [`Stop::request`], and the epoch the workers agreed on.
#[derive(Debug)]
pub struct Stop {
    requested: AtomicBool,
    /// Whether this run listens to the process's SIGTERM / SIGINT.
    signals: bool,
    epoch: AtomicU64,
}

impl Default for Stop {
    fn default() -> Self {
        Stop::new(false)
    }
}

impl Stop {
    /// A stop that `request` triggers and, with `signals`, the process's SIGTERM / SIGINT too (see
    /// [`install_signal_handlers`]).
    pub fn new(signals: bool) -> Stop {
        Stop {
            requested: AtomicBool::new(false),
            signals,
            epoch: AtomicU64::new(NONE),
        }
    }

    /// Asks the run to stop after the open epoch.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for (here, or by a signal).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
            || (self.signals && SIGNALS.load(Ordering::SeqCst) > 0)
    }

    /// The epoch the run stops after, once the workers have agreed on it.
    pub fn epoch(&self) -> Option<u64> {
        match self.epoch.load(Ordering::SeqCst) {
            NONE => None,
            e => Some(e),
        }
    }

    /// Records the agreed stop epoch (every worker of the process computes the same one).
    pub fn settle(&self, e: u64) {
        self.epoch.store(e.min(NONE - 1), Ordering::SeqCst);
    }

    /// Whether the run stops after `e` exactly.
    pub fn is_stop_epoch(&self, e: u64) -> bool {
        self.epoch() == Some(e)
    }
}

/// One worker's part in agreeing on the stop epoch (shared by its source operator and its step loop).
#[derive(Debug, Default)]
pub struct Agreement {
    /// The lowest epoch this worker's source can still ship at or has shipped at: `max(frontier, latest
    /// epoch shipped)`; `None` until the source has run once.
    pub floor: Option<u64>,
    /// This worker's proposal, once made (its source holds from then until `settled`).
    pub proposed: Option<u64>,
    /// Proposals heard (every worker's, this one's included).
    pub heard: Vec<u64>,
    /// The agreed stop epoch.
    pub settled: Option<u64>,
}

impl Agreement {
    /// Raises the floor to `e`.
    pub fn raise_floor(&mut self, e: u64) {
        self.floor = Some(self.floor.map_or(e, |f| f.max(e)));
    }

    /// Raises the floor to what the source has reached: its frontier (`u64::MAX`, done, counts as 0: it
    /// can ship nothing more) and the latest epoch it shipped at.
    pub fn raise_floor_to(&mut self, frontier: Option<u64>, shipped: Option<u64>) {
        self.raise_floor(frontier.filter(|f| *f != u64::MAX).unwrap_or(0));
        if let Some(m) = shipped {
            self.raise_floor(m);
        }
    }

    /// Whether this worker should propose now: a stop is wanted (`requested`, or another worker proposed)
    /// and it has not proposed yet.
    pub fn should_propose(&self, requested: bool) -> bool {
        self.proposed.is_none() && (requested || !self.heard.is_empty())
    }

    /// Once every one of `peers` proposals is in: the stop epoch (their maximum).
    pub fn decide(&mut self, peers: usize) -> Option<u64> {
        if self.settled.is_none() && self.heard.len() >= peers && peers > 0 {
            self.settled = self.heard.iter().copied().max();
        }
        self.settled
    }

    /// The source must not read: it proposed and the stop epoch is not decided yet.
    pub fn holding(&self) -> bool {
        self.proposed.is_some() && self.settled.is_none()
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe only: an atomic, write(2), _exit(2).
    let before = SIGNALS.fetch_add(1, Ordering::SeqCst);
    if !EXIT_ON_SECOND.load(Ordering::SeqCst) {
        return;
    }
    if before == 0 {
        let msg = b"fleetwatch: stopping after the open epoch (signal again to exit at once)\n";
        // SAFETY: write(2) on stderr with a valid buffer is async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    } else {
        let msg = b"fleetwatch: second signal, exiting at once\n";
        // SAFETY: as above; _exit(2) ends the process without running destructors (async-signal-safe).
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + signal);
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers of a graceful stop (see the module's documentation). Runs
/// that should listen to them are built with [`Stop::new`]`(true)`. With `exit_on_second` false, signals
/// are only counted ([`signals_received`]): the caller passes them on.
pub fn install_signal_handlers(exit_on_second: bool) -> std::io::Result<()> {
    EXIT_ON_SECOND.store(exit_on_second, Ordering::SeqCst);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that only touches atomics and async-signal-safe calls.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Signals received so far (0 until the first SIGTERM / SIGINT after [`install_signal_handlers`]).
pub fn signals_received() -> usize {
    SIGNALS.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_covers_the_frontier_and_what_was_shipped() {
        let mut a = Agreement::default();
        a.raise_floor_to(Some(5), None);
        assert_eq!(a.floor, Some(5));
        // A done source (frontier u64::MAX) still counts what it shipped; the floor never goes down.
        a.raise_floor_to(Some(u64::MAX), Some(7));
        assert_eq!(a.floor, Some(7));
        a.raise_floor_to(Some(6), Some(3));
        assert_eq!(a.floor, Some(7));
        a.raise_floor_to(None, Some(9));
        assert_eq!(a.floor, Some(9));
    }

    #[test]
    fn the_stop_epoch_is_the_largest_proposal_once_all_are_heard() {
        let mut a = Agreement::default();
        assert!(!a.should_propose(false));
        assert!(a.should_propose(true));
        a.heard.push(7);
        // Another worker's proposal is enough to make this one propose.
        assert!(a.should_propose(false));
        a.proposed = Some(5);
        a.heard.push(5);
        assert!(a.holding());
        assert_eq!(a.decide(3), None);
        assert!(a.holding());
        a.heard.push(6);
        assert_eq!(a.decide(3), Some(7));
        assert!(!a.holding());
        // Decided once: later proposals (there are none) would not move it.
        a.heard.push(9);
        assert_eq!(a.decide(3), Some(7));
    }

    #[test]
    fn a_stop_is_requested_once_and_settles_on_one_epoch() {
        let s = Stop::new(false);
        assert!(!s.is_requested());
        assert_eq!(s.epoch(), None);
        s.request();
        assert!(s.is_requested());
        s.settle(42);
        assert!(s.is_stop_epoch(42));
        assert!(!s.is_stop_epoch(41));
    }

    #[test]
    fn the_floor_only_rises() {
        let mut a = Agreement::default();
        a.raise_floor(10);
        a.raise_floor(8);
        assert_eq!(a.floor, Some(10));
    }
}
