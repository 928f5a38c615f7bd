//! Criterion benchmarks of the two dataflow kernels that `benches/kernels.rs` cannot isolate:
//!
//! * `arrangement/epoch_*` — one epoch of the `SeriesModel` operator on one worker: the merge-walk of the
//!   series-state arrangement against the epoch's logs, the model step of every customer, the batch of
//!   Abelian block differences it inserts, and the eager merge that leaves one consolidated batch. The
//!   arrangement holds `CUSTOMERS` customers × 20 series; every customer reports once per epoch.
//! * `exchange/logs_2_workers` — one epoch's logs (`CUSTOMERS` of them, 180 B each) exchanged by customer
//!   between two worker threads of one process, as the pipeline's source → model edge does.
//!
//! Per-epoch times are measured from the moment the epoch's input is sent until the probe has passed it.
//! (`fleetwatch bench` measures the whole pipeline end to end, BENCHMARKS.md.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use timely::WorkerConfig;
use timely::communication::allocator::Allocator;
use timely::communication::allocator::thread::Thread;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Exchange, Feedback, Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use fleetwatch::arrangement::{ModelRun, series_model};
use fleetwatch::keys::{CustomerId, customer_route};
use fleetwatch::model::Registry;
use fleetwatch::model::cohort::CohortDelta;
use fleetwatch::model::customer::ModelConfig;
use fleetwatch::record::Log;
use fleetwatch::spec::Spec;

const CUSTOMERS: usize = 20_000;
const FEATURES: usize = 20;

/// One epoch's logs: every customer once, 20 noisy features (uptime counting up).
fn epoch_logs(ids: &[CustomerId], e: u64, rng: &mut fleetwatch::rng::Rng) -> Vec<Log> {
    ids.iter()
        .map(|&id| {
            let mut l = Log::empty(id);
            l.ts = e as i64 * 300 + 17;
            for (k, v) in l.values.iter_mut().enumerate().take(FEATURES) {
                *v = match k {
                    18 => (e * 300) as f32,
                    10 | 11 => (3.0 + rng.normal()).round().max(0.0) as f32,
                    _ => (50.0 + 5.0 * rng.normal()) as f32,
                };
            }
            l
        })
        .collect()
}

fn customers(n: usize) -> Vec<CustomerId> {
    (0..n)
        .map(|i| {
            CustomerId::parse(format!("cust-{i:07}").as_bytes(), b"")
                .expect("generated ids are valid customer ids")
        })
        .collect()
}

fn arrangement(c: &mut Criterion) {
    let spec = Spec::embedded();
    let config = ModelConfig::from_spec(&spec);
    let detector = Registry::builtin()
        .build(&spec.detector.name, &spec.detector.params)
        .expect("the embedded detector builds");
    let mut worker = timely::worker::Worker::new(
        WorkerConfig::default(),
        Allocator::Thread(Thread::default()),
        Some(Instant::now()),
    );
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Log>>> = InputHandle::new();
    let probe: ProbeHandle<u64> = worker.dataflow::<u64, _, _>(|scope| {
        let logs = scope.input_from(&mut input);
        let (handle, cycle) = scope.feedback::<Vec<CohortDelta>>(1);
        let model = series_model(
            logs,
            cycle,
            None,
            config,
            Arc::clone(&detector),
            ModelRun::default(),
        );
        model.cohort.broadcast().connect_loop(handle);
        model.counts.probe().0
    });
    let ids = customers(CUSTOMERS);
    let mut rng = fleetwatch::rng::Rng::new(7, 7);
    let mut epoch = 5_978_600u64;
    input.advance_to(epoch);
    let mut run_epoch = |epoch: &mut u64| -> Duration {
        let mut logs = epoch_logs(&ids, *epoch, &mut rng);
        let t = Instant::now();
        input.send_batch(&mut logs);
        *epoch += 1;
        input.advance_to(*epoch);
        while probe.less_than(input.time()) {
            worker.step();
        }
        t.elapsed()
    };
    // Warm: every series past its learning phase (255 observations), the arrangement at its steady size.
    for _ in 0..260 {
        run_epoch(&mut epoch);
    }
    let mut g = c.benchmark_group("arrangement");
    g.sample_size(20);
    g.throughput(Throughput::Elements((CUSTOMERS * FEATURES) as u64));
    g.bench_function(
        format!("epoch_{CUSTOMERS}_customers_x_{FEATURES}_series"),
        |b| b.iter_custom(|iters| (0..iters).map(|_| run_epoch(&mut epoch)).sum()),
    );
    g.finish();
}

fn exchange(c: &mut Criterion) {
    let mut g = c.benchmark_group("exchange");
    g.sample_size(20);
    g.throughput(Throughput::Elements(CUSTOMERS as u64));
    g.bench_function(format!("logs_2_workers_{CUSTOMERS}_per_epoch"), |b| {
        b.iter_custom(|iters| {
            // Each measurement starts two worker threads; each sends half of every epoch's logs and the
            // time is worker 0's, from the first send to the last epoch passing its probe.
            let took = Arc::new(std::sync::Mutex::new(Duration::ZERO));
            let out = Arc::clone(&took);
            let guards = timely::execute(timely::Config::process(2), move |worker| {
                let me = worker.index();
                let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Log>>> =
                    InputHandle::new();
                let probe = worker.dataflow::<u64, _, _>(|scope| {
                    scope
                        .input_from(&mut input)
                        .exchange(|l: &Log| customer_route(&l.customer))
                        .probe()
                        .0
                });
                let ids = customers(CUSTOMERS);
                let mine: Vec<CustomerId> = ids.into_iter().skip(me).step_by(2).collect();
                let mut rng = fleetwatch::rng::Rng::new(9, me as u64);
                let batches: Vec<Vec<Log>> = (0..iters.min(4))
                    .map(|e| epoch_logs(&mine, e, &mut rng))
                    .collect();
                let t = Instant::now();
                for e in 0..iters {
                    let mut batch = batches[(e % batches.len() as u64) as usize].clone();
                    input.send_batch(&mut batch);
                    input.advance_to(e + 1);
                    while probe.less_than(input.time()) {
                        worker.step();
                    }
                }
                if me == 0
                    && let Ok(mut d) = out.lock()
                {
                    *d = t.elapsed();
                }
            });
            if let Ok(g) = guards {
                drop(g.join());
            }
            took.lock().map(|d| *d).unwrap_or_default()
        })
    });
    g.finish();
}

criterion_group!(dataflow, arrangement, exchange);
criterion_main!(dataflow);
