//! Criterion benchmarks of the hot-path kernels: parsing one log, one customer's model step (20 series),
//! and the customer routing hash. (`fleetwatch bench` measures the whole pipeline end to end.)

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

use fleetwatch::keys::{CustomerId, customer_route};
use fleetwatch::model::customer::{ModelConfig, StepContext, StepOut, step_customer};
use fleetwatch::model::{FeaturePrior, Registry};
use fleetwatch::record::Log;
use fleetwatch::sources::parse::LogParser;
use fleetwatch::spec::Spec;
use fleetwatch::state::SLOT_BYTES;

const LINE: &str = r#"{"partition":6,"offset":1234567,"timestamp":1793577731137,"key":"cust-0001234","value":{"customer_id":"cust-0001234","ts":1793577731,"rssi_dbm":-66.9,"snr_db":28.5,"noise_floor_dbm":-86.8,"phy_rate_tx_mbps":897.5,"phy_rate_rx_mbps":196.1,"throughput_down_mbps":218.72,"throughput_up_mbps":4.77,"retrans_pct":3.02,"channel_util_pct":31.4,"interference_pct":10.4,"clients_2g":2,"clients_5g":2,"wan_latency_ms":21.5,"wan_loss_pct":0.012,"dns_fail_pct":1.87,"cpu_pct":19.0,"mem_pct":39.0,"temp_c":56.2,"uptime_s":566749,"reboot_count":6}}"#;

fn parse(c: &mut Criterion) {
    let spec = Spec::embedded();
    let mut parser = LogParser::new(&spec);
    let mut log = Log::empty(CustomerId::parse(b"x", b"").unwrap());
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(LINE.len() as u64));
    g.bench_function("recorded_line_20_features", |b| {
        b.iter(|| {
            parser
                .parse_recorded(black_box(LINE.as_bytes()), &mut log)
                .unwrap();
        })
    });
    g.bench_function("fast_partition", |b| {
        b.iter(|| fleetwatch::sources::parse::fast_partition(black_box(LINE.as_bytes())))
    });
    g.finish();
}

fn model(c: &mut Criterion) {
    let spec = Spec::embedded();
    let cfg = ModelConfig::from_spec(&spec);
    let det = Registry::builtin()
        .build(&spec.detector.name, &spec.detector.params)
        .unwrap();
    let mut parser = LogParser::new(&spec);
    let id = CustomerId::parse(b"cust-0001234", b"").unwrap();
    let mut base = Log::empty(id);
    parser.parse_recorded(LINE.as_bytes(), &mut base).unwrap();
    // A day of logs with noisy values (uptime counting up), replayed in a cycle: the steady state of an
    // ordinary customer, not a degenerate constant series.
    let mut rng = fleetwatch::rng::Rng::new(1, 1);
    let logs: Vec<Log> = (0..288)
        .map(|i| {
            let mut l = base;
            for (k, v) in l.values.iter_mut().enumerate().take(18) {
                *v = (*v as f64 * (1.0 + 0.05 * rng.normal()) + 0.3 * rng.normal()) as f32;
                if k == 10 || k == 11 {
                    *v = v.round().max(0.0);
                }
            }
            l.values[18] += 300.0 * i as f32;
            l
        })
        .collect();
    let priors = vec![FeaturePrior::NONE; spec.features.len()];
    let mut slots = vec![[0u8; SLOT_BYTES]; ModelConfig::from_spec(&spec).slots()];
    let mut epoch = (base.ts / 300) as u64;
    let step = |epoch: &mut u64, slots: &mut [fleetwatch::state::Slot]| {
        *epoch += 1;
        let mut log = logs[(*epoch % 288) as usize];
        log.ts = *epoch as i64 * 300 + 17;
        let ctx = StepContext {
            config: &cfg,
            detector: det.as_ref(),
            priors: &priors,
            epoch: *epoch,
        };
        let mut out = StepOut::default();
        step_customer(&ctx, id, slots, black_box(&[log]), &mut out);
        out.series_scored
    };
    // A customer past its series' 24th observation but short of a day (every calibration runs, the
    // young factor too): what the 36-epoch fleet bench measures. Each iteration steps a copy of the state
    // at its 30th epoch, so it stays that age.
    for _ in 0..30 {
        step(&mut epoch, &mut slots);
    }
    let (young, young_epoch) = (slots.clone(), epoch);
    let mut scratch = young.clone();
    for _ in 30..600 {
        step(&mut epoch, &mut slots);
    }
    let mut g = c.benchmark_group("model");
    g.throughput(Throughput::Elements(spec.features.len() as u64));
    g.bench_function("customer_step_20_series_30th_epoch", |b| {
        b.iter(|| {
            scratch.copy_from_slice(&young);
            let mut e = young_epoch;
            step(&mut e, &mut scratch)
        })
    });
    g.bench_function("customer_step_20_series", |b| {
        b.iter(|| step(&mut epoch, &mut slots))
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let id = CustomerId::parse(b"cust-0001234", b"").unwrap();
    c.bench_function("exchange/customer_route", |b| {
        b.iter(|| customer_route(black_box(&id)))
    });
}

/// One worker's Parquet file of an epoch's predictions (`run --predictions`), per row: 50,000 customers
/// × 20 features with noisy values and a few open alerts.
fn predictions(c: &mut Criterion) {
    use fleetwatch::serving::predictions::{PredictionsConfig, write_file};
    use fleetwatch::serving::view::EpochView;
    let spec = Spec::embedded();
    let features = spec.features.len();
    let customers = 50_000usize;
    let series = customers * features;
    let mut rng = fleetwatch::rng::Rng::new(3, 1);
    let mut col = |scale: f64| -> Vec<f32> {
        (0..series)
            .map(|_| (scale * (1.0 + 0.1 * rng.normal())) as f32)
            .collect()
    };
    let observed = col(50.0);
    let expected = col(50.0);
    let lower = col(40.0);
    let upper = col(60.0);
    let score = col(0.3);
    let view = EpochView {
        epoch: 5_978_600,
        features,
        customers: (0..customers)
            .map(|i| CustomerId::parse(format!("cust-{i:07}").as_bytes(), b"").unwrap())
            .collect(),
        last_seen: vec![5_978_601; customers],
        customer_alert: vec![0; customers],
        silence: vec![0; customers],
        scored_at: vec![5_978_601; series],
        observed,
        expected,
        lower,
        upper,
        score,
        alert: (0..series)
            .map(|i| if i % 997 == 0 { 6 } else { 0 })
            .collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = PredictionsConfig {
        dir: dir.path().to_path_buf(),
        every: 1,
        features: spec.features.iter().map(|f| f.name.clone()).collect(),
        epoch_seconds: 300,
    };
    let path = cfg.file(view.epoch, 0, 1);
    let mut g = c.benchmark_group("predictions");
    g.throughput(Throughput::Elements(series as u64));
    g.sample_size(10);
    g.bench_function("parquet_file_1m_rows", |b| {
        b.iter(|| write_file(&cfg, black_box(&view), &path).unwrap())
    });
    g.finish();
}

/// The global model's inference for one customer (20 features): the leave-one-out network over its
/// normalised residuals, then each feature's evidence against its own calibration. `numpy` does the same
/// network over a batch in `scripts/global_model_numpy.py` (BENCHMARKS.md: the two side by side).
fn global_model(c: &mut Criterion) {
    use fleetwatch::model::global::GlobalModel;
    // The embedded spec ships its global model off: switched on here with its built-in weights.
    let mut spec = fleetwatch::spec::Spec::embedded();
    spec.enable_global_model(None, "embedded")
        .expect("the embedded spec's built-in weights load");
    let g = spec.global.clone().expect("switched on above");
    let alert = fleetwatch::model::alert::AlertParams::from_spec(&spec.alerting, 300);
    let f = spec.features.len();
    let mut rng = fleetwatch::rng::Rng::new(1, 2);
    let customers: Vec<Vec<Option<f32>>> = (0..1024)
        .map(|_| (0..f).map(|_| Some(rng.normal() as f32)).collect())
        .collect();
    let mut state = vec![[0u8; fleetwatch::state::SLOT_BYTES]; GlobalModel::slots_for(f)];
    let learn = vec![true; f];
    let mut out = vec![None; f];
    let mut group = c.benchmark_group("global_model");
    group.throughput(Throughput::Elements(customers.len() as u64));
    group.bench_function("customer_20_features", |b| {
        b.iter(|| {
            for (i, z) in customers.iter().enumerate() {
                g.assess(
                    &alert,
                    black_box(z),
                    1_793_577_600 + i as i64 * 300,
                    &mut state,
                    (&learn, &learn),
                    &mut out,
                );
            }
            black_box(&out);
        })
    });
    group.finish();
}

/// One network element's epoch (`model::incident`): 50 members, 20 features, warmed with a shared load
/// factor on half the features (so its correlations are learned). The incident operator runs this once per
/// element and epoch: 20,000 elements at 2 M customers.
fn incidents(c: &mut Criterion) {
    use fleetwatch::model::incident::{AlertCounts, ElementPartial, ElementState, IncidentParams};
    let p = IncidentParams::default();
    let id = |s: &str| CustomerId::parse(s.as_bytes(), b"").expect("a valid id");
    let mut rng = fleetwatch::rng::Rng::new(3, 4);
    let partials: Vec<ElementPartial> = (0..1024)
        .map(|_| {
            let mut x = ElementPartial::new(id("elem-1"), id("region-1"), 20);
            (x.members, x.active, x.reporting) = (50, 50, 50);
            for _ in 0..50 {
                let load = rng.normal() as f32;
                for f in 0..20 {
                    let own = rng.normal() as f32;
                    let z = if f < 10 { 0.8 * load + 0.6 * own } else { own };
                    x.add_deviation(f, 0.5 * z);
                }
            }
            x
        })
        .collect();
    let fleet = vec![0.0f32; 20];
    let none = AlertCounts::default();
    let mut state = ElementState::new(20);
    for (e, x) in partials.iter().enumerate() {
        black_box(state.step(&p, e as u64, x, &none, &fleet));
    }
    let mut g = c.benchmark_group("incidents");
    g.throughput(Throughput::Elements(partials.len() as u64));
    g.bench_function("element_epoch_20_features", |b| {
        let mut e = partials.len() as u64;
        b.iter(|| {
            for x in &partials {
                black_box(state.step(&p, e, black_box(x), &none, &fleet));
                e += 1;
            }
        })
    });
    g.finish();
}

criterion_group!(
    kernels,
    parse,
    model,
    routing,
    predictions,
    global_model,
    incidents
);
criterion_main!(kernels);
