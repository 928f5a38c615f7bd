//! Serving what the fleet computes: the live query API (`--serve`) and every prediction as Parquet
//! (`--predictions`).
//!
//! ```text
//!  SeriesModel (each worker) ── while its merge-walk visits each customer ──▶ EpochView (view.rs)
//!        │  the finished view, by reference (Arc)                                 │
//!        ├──▶ Serving::publish: the worker's latest view ◀── GET /customers/{id}   │
//!        └──▶ PredictionsWriter (predictions.rs): DIR/epoch=E/part-W-of-P.parquet ◀┘
//!  Sink (worker 0) ── each closed epoch's changes ──▶ OpenAlerts ◀── GET /anomalies
//! ```
//!
//! A customer's answer comes from the view its owner worker (`customer_route % peers`) published after
//! its latest epoch: the state as of that epoch, with the numbers of each series' latest observation. No
//! copy of the state is made for it and the worker never waits for a request: it swaps an `Arc` per epoch.
//! In a cluster each process answers for its own workers' customers and redirects (307) a request for
//! another process's customer to that process's server; the open alerts live in process 0 (the sink's).

pub mod http;
pub mod predictions;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::keys::{CustomerId, customer_route};
use crate::model::AnomalyKind;
use crate::model::alert::Transition;
use crate::model::customer::OpenAnomaly;
use crate::model::header::Severity;
use crate::sinks::Change;
use view::EpochView;

/// One open alert as `GET /anomalies` lists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertEntry {
    pub kind: AnomalyKind,
    pub severity: Severity,
    /// The epoch it was raised (or the first epoch this run saw it open, after a restore).
    pub since: u64,
    /// Its latest change's epoch.
    pub updated: u64,
    pub score: f32,
    pub observed: f32,
    pub expected: f32,
    pub lower: f32,
    pub upper: f32,
}

/// The open alerts as of the last epoch the sink closed, by (customer, feature).
#[derive(Debug, Default)]
pub struct OpenAlerts {
    /// The last closed epoch (`None` before the first).
    pub epoch: Option<u64>,
    pub alerts: BTreeMap<(CustomerId, u16), AlertEntry>,
}

impl OpenAlerts {
    /// Applies one closed epoch's changes.
    pub fn apply(&mut self, epoch: u64, changes: &[Change]) {
        for c in changes {
            let key = (c.customer, c.feature);
            if c.status == Transition::Cleared {
                self.alerts.remove(&key);
                continue;
            }
            let OpenAnomaly { kind, severity, .. } = c.anomaly;
            let since = match (c.status, self.alerts.get(&key)) {
                (Transition::Updated, Some(old)) => old.since,
                _ => epoch,
            };
            let (score, observed, expected, lower, upper) = c
                .evidence
                .map_or((f32::NAN, f32::NAN, f32::NAN, f32::NAN, f32::NAN), |e| {
                    (e.score, e.observed, e.expected, e.lower, e.upper)
                });
            self.alerts.insert(
                key,
                AlertEntry {
                    kind,
                    severity,
                    since,
                    updated: epoch,
                    score,
                    observed,
                    expected,
                    lower,
                    upper,
                },
            );
        }
        self.epoch = Some(epoch);
    }
}

/// Where a customer's answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A worker of this process (its local index).
    Local(usize),
    /// A worker of another process.
    Process(usize),
}

/// A process's shared serving state: each local worker's latest view, and (process 0) the open alerts.
#[derive(Debug)]
pub struct Serving {
    pub features: Vec<String>,
    pub epoch_seconds: u64,
    pub customer_id_prefix: String,
    pub process: usize,
    pub workers_per_process: usize,
    pub processes: usize,
    /// Each process's server as `host:port` (index = process), for redirects.
    pub servers: Vec<String>,
    views: Vec<Mutex<Option<Arc<EpochView>>>>,
    alerts: RwLock<OpenAlerts>,
}

impl Serving {
    pub fn new(
        spec: &crate::spec::Spec,
        process: usize,
        workers_per_process: usize,
        servers: Vec<String>,
    ) -> Serving {
        let processes = servers.len().max(1);
        Serving {
            features: spec.features.iter().map(|f| f.name.clone()).collect(),
            epoch_seconds: spec.epoch.length_seconds,
            customer_id_prefix: spec.input.customer_id_prefix.clone(),
            process,
            workers_per_process,
            processes,
            servers,
            views: (0..workers_per_process).map(|_| Mutex::new(None)).collect(),
            alerts: RwLock::new(OpenAlerts::default()),
        }
    }

    pub fn peers(&self) -> usize {
        self.workers_per_process * self.processes
    }

    /// The worker that owns `customer` (as the exchange routes it).
    pub fn owner(&self, customer: &CustomerId) -> Owner {
        let w = (customer_route(customer) % self.peers() as u64) as usize;
        let p = w / self.workers_per_process.max(1);
        if p == self.process {
            Owner::Local(w % self.workers_per_process.max(1))
        } else {
            Owner::Process(p)
        }
    }

    /// Worker `local`'s latest view.
    pub fn view(&self, local: usize) -> Option<Arc<EpochView>> {
        let slot = self.views.get(local)?;
        let g = slot.lock().unwrap_or_else(|p| p.into_inner());
        g.clone()
    }

    /// Worker `global`'s view of its latest epoch replaces its previous one.
    pub fn publish(&self, global: usize, view: Arc<EpochView>) {
        let local = global % self.workers_per_process.max(1);
        if let Some(slot) = self.views.get(local) {
            let old = {
                let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
                g.replace(view)
            };
            // The previous view is freed here, outside the lock (unless a request still reads it).
            drop(old);
        }
    }

    /// The sink closed `epoch` with these changes.
    pub fn epoch_closed(&self, epoch: u64, changes: &[Change]) {
        let mut g = self.alerts.write().unwrap_or_else(|p| p.into_inner());
        g.apply(epoch, changes);
    }

    /// Reads the open alerts.
    pub fn with_alerts<T>(&self, f: impl FnOnce(&OpenAlerts) -> T) -> T {
        let g = self.alerts.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// Epoch of the oldest and newest local view (workers publish independently); `None` until every
    /// local worker has published one (until then some customers cannot be answered).
    pub fn view_epochs(&self) -> Option<(u64, u64)> {
        let epochs: Option<Vec<u64>> = (0..self.views.len())
            .map(|i| self.view(i).map(|v| v.epoch))
            .collect();
        let epochs = epochs?;
        Some((*epochs.iter().min()?, *epochs.iter().max()?))
    }
}

/// Asks the kernel for short time slices on the calling thread (Linux ≥ 6.12, EEVDF: `sched_setattr` with
/// a 0.1 ms `sched_runtime`, the same weight). A thread that wakes up — the HTTP server's, on a request —
/// then gets an earlier deadline than the workers busy with an epoch and runs at once instead of after
/// their 3 ms slice: on 2 cores busy with an epoch this is what keeps a query's tail latency in
/// milliseconds (BENCHMARKS.md). Needs no privilege; on older kernels or elsewhere nothing changes.
pub fn short_time_slices() {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct SchedAttr {
            size: u32,
            policy: u32,
            flags: u64,
            nice: i32,
            priority: u32,
            runtime: u64,
            deadline: u64,
            period: u64,
        }
        // SAFETY: getpriority reads this thread's nice value; no pointers.
        let nice = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        };
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            flags: 0,
            nice,
            priority: 0,
            runtime: 100_000,
            deadline: 0,
            period: 0,
        };
        // SAFETY: the calling thread (pid 0), a valid sched_attr of the size it declares, flags 0.
        let refused =
            unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } != 0;
        if refused {
            tracing::debug!("the server thread keeps the default time slice");
        }
    }
}

/// What the series model publishes each epoch (`--serve`, `--predictions`).
#[derive(Debug, Clone, Default)]
pub struct Publish {
    pub serving: Option<Arc<Serving>>,
    pub predictions: Option<predictions::PredictionsConfig>,
}

/// One worker's side of [`Publish`]: its latest view and its Parquet writer.
pub struct Publisher {
    serving: Option<Arc<Serving>>,
    predictions: Option<(
        predictions::PredictionsConfig,
        predictions::PredictionsWriter,
    )>,
    worker: usize,
    last: Option<Arc<EpochView>>,
    /// Retired views, reused once nothing else (a request, the Parquet writer) holds them: a view is
    /// about as large as the state, and fresh memory for it every epoch cost more than filling it.
    retired: Vec<Arc<EpochView>>,
}

/// Retired views kept for reuse (the one being built, the published one and one being written are the
/// steady state).
const RETIRED_KEPT: usize = 2;

impl Publisher {
    /// Worker `worker` of `peers`' publisher (`None` when nothing is published).
    pub fn new(p: Publish, worker: usize, peers: usize) -> Option<Publisher> {
        let predictions =
            p.predictions.and_then(|cfg| {
                match predictions::PredictionsWriter::start(cfg.clone(), worker, peers) {
                    Ok(w) => Some((cfg, w)),
                    Err(e) => {
                        tracing::error!("{e}; no predictions are written");
                        None
                    }
                }
            });
        (p.serving.is_some() || predictions.is_some()).then_some(Publisher {
            serving: p.serving,
            predictions,
            worker,
            last: None,
            retired: Vec::new(),
        })
    }

    /// The view epoch `epoch` builds, if it is published: every epoch when serving (carrying each series'
    /// latest numbers), else the epochs whose predictions are due.
    pub fn begin(&mut self, epoch: u64, features: usize, hint: usize) -> Option<view::ViewBuilder> {
        let carry = self.serving.is_some();
        if !carry
            && !self
                .predictions
                .as_ref()
                .is_some_and(|(c, _)| c.is_due(epoch))
        {
            return None;
        }
        let reuse = self.take_retired();
        let prev = if carry { self.last.clone() } else { None };
        Some(view::ViewBuilder::begin(
            epoch, features, carry, prev, hint, reuse,
        ))
    }

    /// A retired view nothing else holds any more.
    fn take_retired(&mut self) -> Option<EpochView> {
        let i = self
            .retired
            .iter()
            .position(|v| Arc::strong_count(v) == 1)?;
        Arc::try_unwrap(self.retired.swap_remove(i)).ok()
    }

    fn retire(&mut self, v: Arc<EpochView>) {
        self.retired.push(v);
        if self.retired.len() > RETIRED_KEPT {
            // The oldest goes (freed when its last holder lets go).
            self.retired.remove(0);
        }
    }

    /// Publishes a finished view (the previous one is released).
    pub fn finish(&mut self, builder: view::ViewBuilder) {
        let v = Arc::new(builder.finish());
        if let Some(s) = &self.serving {
            s.publish(self.worker, Arc::clone(&v));
            if let Some(old) = self.last.replace(Arc::clone(&v)) {
                self.retire(old);
            }
        }
        if let Some((cfg, w)) = &self.predictions
            && cfg.is_due(v.epoch)
        {
            w.write(Arc::clone(&v));
        }
        if self.serving.is_none() {
            // Written by the Parquet writer, then reusable.
            self.retire(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::customer::Evidence;
    use crate::model::customer::TopFeature;

    fn change(c: &str, status: Transition, score: f32) -> Change {
        let customer = CustomerId::parse(c.as_bytes(), b"").unwrap();
        Change {
            customer,
            feature: 3,
            status,
            anomaly: OpenAnomaly {
                feature: 3,
                kind: AnomalyKind::Spike,
                severity: Severity::Warning,
            },
            evidence: Some(Evidence {
                customer,
                feature: 3,
                score,
                observed: 9.0,
                expected: 1.0,
                lower: 0.0,
                upper: 2.0,
                customer_score: 0.0,
                top: [TopFeature::NONE; 3],
            }),
        }
    }

    #[test]
    fn open_alerts_follow_raises_updates_and_clears_and_keep_when_they_started() {
        let mut a = OpenAlerts::default();
        a.apply(5, &[change("a", Transition::Raised, 1.5)]);
        a.apply(
            6,
            &[
                change("a", Transition::Updated, 3.0),
                change("b", Transition::Raised, 2.0),
            ],
        );
        assert_eq!(a.epoch, Some(6));
        let e = a.alerts.values().next().unwrap();
        assert_eq!((e.since, e.updated, e.score), (5, 6, 3.0));
        a.apply(7, &[change("a", Transition::Cleared, 0.1)]);
        assert_eq!(a.alerts.len(), 1);
        // an update of an alert this run never saw raised (a restore) starts at its epoch
        a.apply(8, &[change("c", Transition::Updated, 2.0)]);
        assert_eq!(a.alerts.values().last().unwrap().since, 8);
    }

    #[test]
    fn a_customer_is_answered_by_the_process_of_the_worker_the_exchange_routes_it_to() {
        let spec = crate::spec::Spec::embedded();
        let s = Serving::new(&spec, 1, 2, vec!["a:1".into(), "b:2".into(), "c:3".into()]);
        for i in 0..200 {
            let c = CustomerId::parse(format!("c-{i}").as_bytes(), b"").unwrap();
            let w = (customer_route(&c) % 6) as usize;
            let want = if w / 2 == 1 {
                Owner::Local(w % 2)
            } else {
                Owner::Process(w / 2)
            };
            assert_eq!(s.owner(&c), want);
        }
    }
}
