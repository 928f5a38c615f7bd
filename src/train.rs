//! `fleetwatch train`: batch training of the global model (`model::global`) on a recorded topic or CSV export.
//!
//! 1. **Samples.** Every customer's logs are replayed through the spec's per-series model (the same
//!    `step_customer` the dataflow runs, customer by customer, without cohort priors): at each epoch, each
//!    warm series' normalised residual `z_f = (x − p)/σ` against its own prediction and noise scale. A
//!    customer-epoch with at least two known features is a sample; samples are chosen by a hash of (seed,
//!    customer, epoch), so the choice does not depend on file order. A tenth of the customers (by their
//!    routing hash) are held out for validation: the loss reported there is on customers the network never
//!    saw.
//! 2. **Training** (candle: autograd and AdamW on the CPU) of the leave-one-out network: every known
//!    feature is predicted from the others (and the time), the loss is the mean squared error over known
//!    features. Each pass also hides every known feature from the *others'* inputs with probability
//!    `mask_rate` (its `z` and mask set to 0), so the network learns to do with the features a customer
//!    happens not to report.
//! 3. **Calibration.** With the trained weights in our own inference kernel (the one the dataflow runs), the
//!    residual `r_f = z_f − ẑ_f` on the validation samples gives each feature's residual scale `s_f` (its
//!    RMS), stored with the weights.
//!
//! Deterministic: the initial weights, the masks and the batch order come from the seed; candle's CPU
//! matrix products split work by output blocks (each sum in one order), so the same inputs and seed give
//! the same weights file, byte for byte (tested).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Serialize;

use crate::keys::{CustomerId, customer_route, stable_hash};
use crate::model::customer::{ModelConfig, StepContext, StepOut, step_customer};
use crate::model::global::{self, FORMAT_NAME, FORMAT_VERSION, Network, TIME_INPUTS, Weights};
use crate::model::{FeaturePrior, Registry};
use crate::record::LogN;
use crate::rng::Rng;
use crate::sources::parse::LogParser;
use crate::sources::{InputFile, InputKind};
use crate::spec::Spec;
use crate::state::SLOT_BYTES;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// `fleetwatch train` options.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub inputs: Vec<PathBuf>,
    /// The spec (its features, epoch and per-series model); loaded without its own weights.
    pub spec: Spec,
    pub out: PathBuf,
    /// Samples (customer-epochs) to train and validate on.
    pub samples: usize,
    /// Passes over the training samples.
    pub passes: usize,
    pub seed: u64,
    pub hidden: usize,
    pub mask_rate: f64,
    pub learning_rate: f64,
    pub batch: usize,
    /// Print progress lines (on a TTY).
    pub progress: bool,
}

impl TrainOptions {
    pub fn new(inputs: Vec<PathBuf>, spec: Spec, out: PathBuf) -> TrainOptions {
        TrainOptions {
            inputs,
            spec,
            out,
            samples: 300_000,
            passes: 12,
            seed: 1,
            hidden: 32,
            mask_rate: 0.1,
            learning_rate: 2e-3,
            batch: 256,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// What `train` reports (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: String,
    pub features: Vec<String>,
    pub logs: u64,
    pub customers: u64,
    /// Customer-epochs with at least two known features.
    pub candidates: u64,
    pub train_samples: usize,
    pub validation_samples: usize,
    pub passes: usize,
    pub seed: u64,
    pub hidden: usize,
    /// Mean squared error on the training samples per pass (with the masks of that pass).
    pub train_loss: Vec<f64>,
    /// Mean squared error on the validation samples per pass, with the same masking rate (fixed masks).
    pub validation_loss: Vec<f64>,
    /// The validation error without masks (what the dataflow scores), with our own inference kernel.
    pub validation_error: f64,
    /// What predicting `ẑ = 0` (each series' own model alone) scores on the same validation samples.
    pub validation_baseline: f64,
    /// Per feature: the RMS of `z_f` and of the residual `z_f − ẑ_f` on the validation samples (how much
    /// of each feature its customer's other features explain).
    pub z_scale: BTreeMap<String, f64>,
    /// `s_f` per feature: the residual scale stored with the weights.
    pub residual_scale: BTreeMap<String, f64>,
    pub sample_seconds: f64,
    pub train_seconds: f64,
}

/// One sample: a customer-epoch's normalised residuals (NaN: unknown) and its time.
struct Samples {
    f: usize,
    z: Vec<f32>,
    ts: Vec<i64>,
}

impl Samples {
    fn new(f: usize) -> Samples {
        Samples {
            f,
            z: Vec::new(),
            ts: Vec::new(),
        }
    }
    fn len(&self) -> usize {
        self.ts.len()
    }
    fn row(&self, i: usize) -> &[f32] {
        &self.z[i * self.f..(i + 1) * self.f]
    }
}

/// Trains the global model for `opts.spec` and writes its weights.
pub fn train(opts: &TrainOptions) -> Result<TrainReport, TrainError> {
    let f_count = opts.spec.features.len();
    if opts.inputs.is_empty() {
        return Err(TrainError::Usage("train needs at least one --input".into()));
    }
    if opts.samples < 100 || opts.passes == 0 || opts.batch == 0 {
        return Err(TrainError::Usage(
            "--samples must be at least 100, --passes and --batch at least 1".into(),
        ));
    }
    if f_count < 2 || opts.hidden == 0 || opts.hidden > global::MAX_HIDDEN {
        return Err(TrainError::Usage(format!(
            "the global model needs a spec of at least 2 features and --hidden 1..={}",
            global::MAX_HIDDEN
        )));
    }
    if !(0.0..0.9).contains(&opts.mask_rate) {
        return Err(TrainError::Usage(
            "the mask rate must be in [0, 0.9)".into(),
        ));
    }
    let started = Instant::now();
    let (train, val, stats) = if f_count <= crate::record::NARROW {
        collect::<{ crate::record::NARROW }>(opts)?
    } else {
        collect::<{ crate::record::MAX_FEATURES }>(opts)?
    };
    if train.len() < 10 || val.len() < 10 {
        return Err(TrainError::Usage(format!(
            "the inputs gave {} training and {} validation samples (customer-epochs with two warm features); \
             train on more data",
            train.len(),
            val.len()
        )));
    }
    let sample_seconds = started.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!(
            "train: {} logs of {} customers → {} training and {} validation samples ({:.1} s)",
            stats.0,
            stats.1,
            train.len(),
            val.len(),
            sample_seconds
        );
    }
    let started = Instant::now();
    let (net, train_loss, validation_loss) = fit(opts, &train, &val)?;
    let train_seconds = started.elapsed().as_secs_f64();

    // Residual scales and losses with our own kernel, on the validation samples.
    let mut sq = vec![0f64; f_count];
    let mut zsq = vec![0f64; f_count];
    let mut n = vec![0u64; f_count];
    let mut x = vec![0f32; net.inputs()];
    let mut zh = vec![0f32; f_count];
    let mut known: Vec<Option<f32>> = vec![None; f_count];
    for i in 0..val.len() {
        for (k, v) in known.iter_mut().zip(val.row(i)) {
            *k = v.is_finite().then_some(*v);
        }
        global::fill_inputs(&known, val.ts[i], &mut x);
        net.forward(&x, &mut zh);
        for f in 0..f_count {
            if known[f].is_some() {
                let z = x[f] as f64;
                let r = z - zh[f] as f64;
                sq[f] += r * r;
                zsq[f] += z * z;
                n[f] += 1;
            }
        }
    }
    let total: u64 = n.iter().sum();
    let validation_error = sq.iter().sum::<f64>() / total.max(1) as f64;
    let validation_baseline = zsq.iter().sum::<f64>() / total.max(1) as f64;
    let rms = |v: f64, n: u64| if n > 0 { (v / n as f64).sqrt() } else { 1.0 };
    let scale: Vec<f32> = (0..f_count)
        .map(|f| (rms(sq[f], n[f]) as f32).max(0.05))
        .collect();
    let mut net = net;
    net.residual_scale = scale.clone();

    let names: Vec<String> = opts.spec.features.iter().map(|f| f.name.clone()).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), FORMAT_NAME.to_string());
    meta.insert("version".into(), FORMAT_VERSION.to_string());
    meta.insert("features".into(), names.join(","));
    meta.insert("spec".into(), opts.spec.name.clone());
    meta.insert("seed".into(), opts.seed.to_string());
    meta.insert("samples".into(), (train.len() + val.len()).to_string());
    meta.insert("passes".into(), opts.passes.to_string());
    meta.insert("mask_rate".into(), opts.mask_rate.to_string());
    meta.insert("hidden".into(), opts.hidden.to_string());
    meta.insert("validation_error".into(), format!("{validation_error:.6}"));
    let bytes = global::to_safetensors(&net, &meta);
    write_atomically(&opts.out, &bytes)?;
    Ok(TrainReport {
        out: opts.out.display().to_string(),
        features: names.clone(),
        logs: stats.0,
        customers: stats.1,
        candidates: stats.2,
        train_samples: train.len(),
        validation_samples: val.len(),
        passes: opts.passes,
        seed: opts.seed,
        hidden: opts.hidden,
        train_loss,
        validation_loss,
        validation_error,
        validation_baseline,
        z_scale: names
            .iter()
            .enumerate()
            .map(|(f, name)| (name.clone(), rms(zsq[f], n[f])))
            .collect(),
        residual_scale: names
            .iter()
            .zip(&scale)
            .map(|(n, s)| (n.clone(), *s as f64))
            .collect(),
        sample_seconds,
        train_seconds,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let err = |source| TrainError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::checkpoint::part::write_file_durably(path, bytes).map_err(err)
}

/// Training and validation samples, and (logs, customers, candidates) read.
type Collected = (Samples, Samples, (u64, u64, u64));

/// Reads every input, replays each customer through the per-series model and keeps the chosen samples:
/// (training, validation, (logs, customers, candidates)).
fn collect<const N: usize>(opts: &TrainOptions) -> Result<Collected, TrainError> {
    let spec = &opts.spec;
    let f_count = spec.features.len();
    let mut parser = LogParser::new(spec);
    let mut logs: Vec<LogN<N>> = Vec::new();
    for (i, path) in opts.inputs.iter().enumerate() {
        read_logs(path, i as u32, &mut parser, &mut logs)?;
    }
    logs.sort_unstable_by(|a, b| {
        a.customer
            .cmp(&b.customer)
            .then(a.ts.cmp(&b.ts))
            .then(a.pos.cmp(&b.pos))
    });
    let mut config = ModelConfig::from_spec(spec);
    config.global = None;
    let detector = Registry::builtin()
        .build(&spec.detector.name, &spec.detector.params)
        .map_err(TrainError::Usage)?;
    let priors = vec![FeaturePrior::NONE; f_count];
    let epoch_len = spec.epoch.length_seconds.max(1) as i64;
    // Keep a candidate with probability ~ 1.5 × samples / logs (then the lowest hashes).
    let keep_below = {
        let p = (1.5 * opts.samples as f64 / logs.len().max(1) as f64).min(1.0);
        if p >= 1.0 {
            u64::MAX
        } else {
            (p * u64::MAX as f64) as u64
        }
    };
    let mut chosen: Vec<(u64, bool, i64, Vec<f32>)> = Vec::new();
    let mut out = StepOut {
        sample: true,
        ..StepOut::default()
    };
    let mut slots = vec![[0u8; SLOT_BYTES]; config.slots()];
    let mut customers = 0u64;
    let mut candidates = 0u64;
    let mut i = 0;
    while i < logs.len() {
        let customer: CustomerId = logs[i].customer;
        let held_out = customer_route(&customer) % 10 == 0;
        customers += 1;
        for s in slots.iter_mut() {
            *s = [0u8; SLOT_BYTES];
        }
        while i < logs.len() && logs[i].customer == customer {
            let e = logs[i].ts.div_euclid(epoch_len);
            let start = i;
            while i < logs.len()
                && logs[i].customer == customer
                && logs[i].ts.div_euclid(epoch_len) == e
            {
                i += 1;
            }
            let ctx = StepContext {
                config: &config,
                detector: detector.as_ref(),
                priors: &priors,
                epoch: e.max(0) as u64,
            };
            out.changes.clear();
            out.evidence.clear();
            out.duplicates.clear();
            out.samples.clear();
            step_customer(&ctx, customer, &mut slots, &logs[start..i], &mut out);
            if out.samples.len() < 2 {
                continue;
            }
            candidates += 1;
            let mut key_bytes = [0u8; 24];
            key_bytes[..8].copy_from_slice(&opts.seed.to_le_bytes());
            key_bytes[8..16].copy_from_slice(&customer_route(&customer).to_le_bytes());
            key_bytes[16..].copy_from_slice(&e.to_le_bytes());
            let key = stable_hash(&key_bytes);
            if key > keep_below {
                continue;
            }
            let mut z = vec![f32::NAN; f_count];
            for &(f, v) in &out.samples {
                z[f as usize] = v;
            }
            chosen.push((key, held_out, logs[i - 1].ts, z));
        }
    }
    chosen.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    chosen.truncate(opts.samples);
    let (mut train, mut val) = (Samples::new(f_count), Samples::new(f_count));
    for (_, held_out, ts, z) in chosen {
        let s = if held_out { &mut val } else { &mut train };
        s.z.extend_from_slice(&z);
        s.ts.push(ts);
    }
    Ok((train, val, (logs.len() as u64, customers, candidates)))
}

/// Appends every parseable log of a recorded topic or CSV export (what does not parse is skipped: the
/// dataflow's dead-letter path is where bad records are reported).
fn read_logs<const N: usize>(
    path: &Path,
    input: u32,
    parser: &mut LogParser,
    logs: &mut Vec<LogN<N>>,
) -> Result<(), TrainError> {
    let err = |source| TrainError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = InputFile::detect(path).map_err(|e| TrainError::Usage(e.to_string()))?;
    let placeholder =
        CustomerId::parse(b"placeholder", b"").map_err(|e| TrainError::Usage(e.to_string()))?;
    match file.kind {
        InputKind::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_path(path)
                .map_err(|e| TrainError::Usage(format!("{}: {e}", path.display())))?;
            let mut rows = reader.byte_records();
            let header = match rows.next() {
                Some(Ok(h)) => h,
                _ => return Err(TrainError::Usage(format!("{} is empty", path.display()))),
            };
            let columns = parser
                .csv_columns(&header)
                .map_err(|e| TrainError::Usage(format!("{}: {e}", path.display())))?;
            for (row_no, row) in rows.enumerate() {
                let Ok(row) = row else { continue };
                let mut log = LogN::<N>::empty(placeholder);
                if parser.parse_csv_row(&row, &columns, &mut log).is_ok() {
                    log.pos.partition = input;
                    log.pos.offset = row_no as u64;
                    logs.push(log);
                }
            }
        }
        InputKind::RecordedTopic => {
            let mut reader =
                std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(err)?);
            let mut line = Vec::new();
            let mut offset = 0u64;
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(err)?;
                if n == 0 {
                    break;
                }
                let mut log = LogN::<N>::empty(placeholder);
                if parser.parse_recorded(&line, &mut log).is_ok() {
                    log.pos.partition = input;
                    log.pos.offset = offset;
                    logs.push(log);
                }
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// A uniform initial tensor from the seed (candle's own initialisers draw from a thread RNG).
fn uniform(
    rng: &mut Rng,
    shape: (usize, usize),
    bound: f64,
    dev: &Device,
) -> Result<Var, candle_core::Error> {
    let w: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.range(-bound, bound) as f32)
        .collect();
    Var::from_tensor(&Tensor::from_vec(w, shape, dev)?)
}

/// The batch tensors of samples `idx`: the input (with features hidden at `mask_rate`), target z, the
/// known mask of the targets.
fn batch(
    s: &Samples,
    idx: &[usize],
    mask_rate: f64,
    rng: &mut Rng,
    dev: &Device,
) -> Result<(Tensor, Tensor, Tensor), candle_core::Error> {
    let f = s.f;
    let w = 2 * f + TIME_INPUTS;
    let mut x = vec![0f32; idx.len() * w];
    let mut y = vec![0f32; idx.len() * f];
    let mut m = vec![0f32; idx.len() * f];
    let mut known: Vec<Option<f32>> = vec![None; f];
    let mut shown: Vec<Option<f32>> = vec![None; f];
    for (r, &i) in idx.iter().enumerate() {
        for (k, v) in known.iter_mut().zip(s.row(i)) {
            *k = v.is_finite().then_some(*v);
        }
        for k in 0..f {
            if let Some(v) = known[k] {
                y[r * f + k] = v.clamp(-global::Z_CLIP, global::Z_CLIP);
                m[r * f + k] = 1.0;
            }
            shown[k] = known[k].filter(|_| !(mask_rate > 0.0 && rng.chance(mask_rate)));
        }
        global::fill_inputs(&shown, s.ts[i], &mut x[r * w..(r + 1) * w]);
    }
    let n = idx.len();
    Ok((
        Tensor::from_vec(x, (n, w), dev)?,
        Tensor::from_vec(y, (n, f), dev)?,
        Tensor::from_vec(m, (n, f), dev)?,
    ))
}

/// The leave-one-out network of `model::global`, batched: `a = x·Wᵀ + b`; for every feature f,
/// `a − z_f·W[:, f] − m_f·W[:, F+f]`, its ReLU, and `V_f ·` that `+ c_f`.
struct Loo {
    w: Var,
    b: Var,
    v: Var,
    c: Var,
    f: usize,
}

impl Loo {
    fn forward(&self, x: &Tensor) -> Result<Tensor, candle_core::Error> {
        let f = self.f;
        let w = self.w.as_tensor();
        let a = x.matmul(&w.t()?)?.broadcast_add(self.b.as_tensor())?; // (B, H)
        let z = x.narrow(1, 0, f)?; // (B, F)
        let m = x.narrow(1, f, f)?;
        let wz = w.narrow(1, 0, f)?.t()?; // (F, H)
        let wm = w.narrow(1, f, f)?.t()?;
        let own = z
            .unsqueeze(2)?
            .broadcast_mul(&wz.unsqueeze(0)?)?
            .add(&m.unsqueeze(2)?.broadcast_mul(&wm.unsqueeze(0)?)?)?; // (B, F, H)
        let u = a.unsqueeze(1)?.broadcast_sub(&own)?.relu()?;
        u.broadcast_mul(&self.v.as_tensor().unsqueeze(0)?)?
            .sum(2)?
            .broadcast_add(self.c.as_tensor())
    }
}

/// Trains the network; returns it with the per-pass training and validation losses.
fn fit(
    opts: &TrainOptions,
    train: &Samples,
    val: &Samples,
) -> Result<(Network, Vec<f64>, Vec<f64>), TrainError> {
    let dev = Device::Cpu;
    let f = train.f;
    let h = opts.hidden;
    let inputs = 2 * f + TIME_INPUTS;
    let mut rng = Rng::new(opts.seed, 0x0074_7261_696e);
    let net = Loo {
        w: uniform(&mut rng, (h, inputs), (6.0 / inputs as f64).sqrt(), &dev)?,
        b: Var::from_tensor(&Tensor::zeros(h, DType::F32, &dev)?)?,
        v: uniform(&mut rng, (f, h), (3.0 / h as f64).sqrt(), &dev)?,
        c: Var::from_tensor(&Tensor::zeros(f, DType::F32, &dev)?)?,
        f,
    };
    let vars = vec![net.w.clone(), net.b.clone(), net.v.clone(), net.c.clone()];
    let masked_mse = |o: &Tensor, y: &Tensor, m: &Tensor| -> Result<Tensor, candle_core::Error> {
        let d = ((o - y)? * m)?;
        d.sqr()?.sum_all()? / m.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64
    };
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: 1e-4,
            ..ParamsAdamW::default()
        },
    )?;
    // Validation batches with fixed masks (their own stream): comparable from pass to pass.
    let mut vrng = Rng::new(opts.seed, 0x0076_616c);
    let val_idx: Vec<usize> = (0..val.len()).collect();
    let mut val_batches = Vec::new();
    for chunk in val_idx.chunks(4096) {
        val_batches.push(batch(val, chunk, opts.mask_rate, &mut vrng, &dev)?);
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut train_loss, mut val_loss) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for pass in 0..opts.passes {
        // Fisher–Yates with the seed's stream.
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        // The last third of the passes at a fifth of the rate.
        if pass == opts.passes - opts.passes / 3 {
            opt.set_learning_rate(opts.learning_rate / 5.0);
        }
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in order.chunks(opts.batch) {
            let (x, y, m) = batch(train, chunk, opts.mask_rate, &mut rng, &dev)?;
            let loss = masked_mse(&net.forward(&x)?, &y, &m)?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            count += chunk.len();
        }
        train_loss.push(sum / count.max(1) as f64);
        let (mut vs, mut vn) = (0f64, 0f64);
        for (x, y, m) in &val_batches {
            let d = ((net.forward(x)? - y)? * m)?;
            vs += d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            vn += m.sum_all()?.to_scalar::<f32>()? as f64;
        }
        val_loss.push(vs / vn.max(1.0));
        if opts.progress {
            eprintln!(
                "train: pass {}/{}  train loss {:.4}  validation loss {:.4}  ({:.1} s)",
                pass + 1,
                opts.passes,
                train_loss[pass],
                val_loss[pass],
                started.elapsed().as_secs_f64()
            );
        } else {
            tracing::info!(
                pass = pass + 1,
                train_loss = train_loss[pass],
                validation_loss = val_loss[pass],
                "train"
            );
        }
    }
    let values = |v: &Var| -> Result<Vec<f32>, candle_core::Error> {
        v.as_tensor().flatten_all()?.to_vec1::<f32>()
    };
    let (w, b, v, c) = (
        values(&net.w)?,
        values(&net.b)?,
        values(&net.v)?,
        values(&net.c)?,
    );
    let net = Network::new(
        f,
        h,
        Weights {
            hidden_weight: &w,
            hidden_bias: &b,
            out_weight: &v,
            out_bias: &c,
        },
        vec![1.0; f],
    )
    .map_err(TrainError::Usage)?;
    Ok((net, train_loss, val_loss))
}
