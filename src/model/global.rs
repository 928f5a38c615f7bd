//! The global model: one small neural network shared by the whole fleet, personalised per series.
//!
//! Every per-series model answers "is this value unusual for this series?". None of them can see a customer
//! whose features no longer fit *each other*: throughput collapsed while the signal, the clients and the
//! latency are normal for this customer, every feature inside its own band. The global model learns, from
//! the whole fleet, what a customer's features imply about each other — after each series' own model has
//! taken out what is personal (its level, rhythm and noise scale):
//!
//! ```text
//! z_f   = clamp((x_f − p_f) / σ_f, ±Z_CLIP)       p_f, σ_f: series f's own prediction and noise scale
//! m_f   = 1 if z_f is known (the series is warm and scored this epoch), else 0 (and z_f = 0)
//! t     = [cos 2πd, sin 2πd, cos 2πw, sin 2πw]    d, w: the fraction of the day and of the week (UTC)
//! x     = [z_1..z_F, m_1..m_F, t]                  (2F + 4 inputs)
//! a     = W·x + b                                  (H hidden units, shared by every output)
//! a⁻ᶠ   = a − z_f·W[:, f] − m_f·W[:, F+f]          the same units without feature f's own inputs
//! ẑ_f   = c_f + V_f · relu(a⁻ᶠ)                    feature f as the others (and the time) imply it
//! r_f   = z_f − ẑ_f,   u_f = r_f / s_f             s_f: the fleet's residual scale of feature f (training)
//! ```
//!
//! Each output leaves its own feature out (a leave-one-out network: one hidden layer computed once, then a
//! rank-one correction of H units per feature), so a feature that moves alone is not explained by itself —
//! an autoencoder that sees the feature it reconstructs partly follows the move and hides it.
//!
//! The residual is then **calibrated per series** by the machinery of the point evidence (`model::alert`):
//! each series keeps its own quantiles of `u_f` (the level it exceeds upwards and downwards 1.25 % of the
//! time, the 0.75 quantile of `|u_f|`), whose ratio measures its tail, and its bar `T_side` extrapolates to
//! the spec's design rate exactly as the series' own threshold does:
//!
//! ```text
//! e_f   = |u_f| / (margin · T_side(q_up, q_dn, q_lo))     ≥ 1: beyond this series' own bar
//! ```
//!
//! The evidence counts only while the feature's own evidence is below its own bar (`model::customer`): a
//! value outside its band is already an alert of its own kind, and "the features no longer fit each other"
//! is news only when each looks normal alone. It then enters the feature's score as kind `relationship`.
//!
//! Inference is per customer, in a fixed order of operations: a customer's result does not depend on which
//! customers share its batch, its worker or its process. The weights are a safetensors file (the format
//! PyTorch and candle read) whose metadata names the format version and the spec's features in order; a
//! file made for another feature list is refused at load.

use std::collections::BTreeMap;
use std::path::Path;

use super::alert::{AlertParams, Quantiles};
use crate::record::MAX_FEATURES;
use crate::state::{SLOT_BYTES, Slot};

/// The weights file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// What the metadata's `format` says.
pub const FORMAT_NAME: &str = "fleetwatch-global-model";
/// Time-of-day and time-of-week inputs.
pub const TIME_INPUTS: usize = 4;
/// The clamp of a normalised residual: beyond it, a value says "far out", not how far.
pub const Z_CLIP: f32 = 6.0;
/// Partial sums of an output's dot product over the hidden units (see [`Network::forward`]).
const LANES: usize = 8;
/// The largest hidden layer the inference kernel holds on its stack.
pub const MAX_HIDDEN: usize = 128;
const MAX_INPUTS: usize = 2 * MAX_FEATURES + TIME_INPUTS;
/// Bytes of per-series state: the residual's quantiles `q_up`, `q_dn`, `q_lo` (log-codes).
pub const SERIES_BYTES: usize = 6;

/// Why a weights file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GlobalModelError {
    #[error("cannot read global model weights {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("global model weights {path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "global model weights {path} were trained for features [{trained}], the spec has [{spec}]: train \
         them again for this spec (fleetwatch train)"
    )]
    Features {
        path: String,
        trained: String,
        spec: String,
    },
}

/// The network's weights, laid out for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub features: usize,
    pub hidden: usize,
    /// `W^T`: `(inputs × hidden)` row-major (one input's weights to every unit are contiguous), and `b`.
    w_t: Vec<f32>,
    b: Vec<f32>,
    /// `V`: `(features × hidden)` row-major, and `c`.
    v: Vec<f32>,
    c: Vec<f32>,
    /// `s_f`: the fleet's residual scale per feature (RMS of `r_f` on the validation sample).
    pub residual_scale: Vec<f32>,
}

/// The network's tensors as PyTorch/candle lay them out (`[out, in]` row-major).
pub struct Weights<'a> {
    /// `W`: `[hidden, 2F + 4]`, `b`: `[hidden]`.
    pub hidden_weight: &'a [f32],
    pub hidden_bias: &'a [f32],
    /// `V`: `[F, hidden]`, `c`: `[F]`.
    pub out_weight: &'a [f32],
    pub out_bias: &'a [f32],
}

impl Network {
    /// Inputs of the network: `2F + 4`.
    pub fn inputs(&self) -> usize {
        2 * self.features + TIME_INPUTS
    }

    /// Builds a network from its tensors, checking every shape.
    pub fn new(
        features: usize,
        hidden: usize,
        w: Weights<'_>,
        residual_scale: Vec<f32>,
    ) -> Result<Network, String> {
        if !(2..=MAX_FEATURES).contains(&features) {
            return Err(format!("{features} features (2..={MAX_FEATURES})"));
        }
        if hidden == 0 || hidden > MAX_HIDDEN {
            return Err(format!("hidden {hidden}: must be 1..={MAX_HIDDEN}"));
        }
        let inputs = 2 * features + TIME_INPUTS;
        for (name, t, len) in [
            ("hidden.weight", w.hidden_weight, hidden * inputs),
            ("hidden.bias", w.hidden_bias, hidden),
            ("out.weight", w.out_weight, features * hidden),
            ("out.bias", w.out_bias, features),
        ] {
            if t.len() != len {
                return Err(format!("{name} has {} values, expected {len}", t.len()));
            }
            if t.iter().any(|v| !v.is_finite()) {
                return Err(format!("{name}: a weight is not finite"));
            }
        }
        if residual_scale.len() != features
            || residual_scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(format!(
                "residual_scale needs {features} positive values, has {residual_scale:?}"
            ));
        }
        let mut w_t = vec![0f32; inputs * hidden];
        for h in 0..hidden {
            for i in 0..inputs {
                w_t[i * hidden + h] = w.hidden_weight[h * inputs + i];
            }
        }
        Ok(Network {
            features,
            hidden,
            w_t,
            b: w.hidden_bias.to_vec(),
            v: w.out_weight.to_vec(),
            c: w.out_bias.to_vec(),
            residual_scale,
        })
    }

    /// `W` as `[hidden, inputs]` row-major (PyTorch's `Linear.weight`).
    pub fn hidden_weight(&self) -> Vec<f32> {
        let (i_n, h_n) = (self.inputs(), self.hidden);
        let mut w = vec![0f32; i_n * h_n];
        for h in 0..h_n {
            for i in 0..i_n {
                w[h * i_n + i] = self.w_t[i * h_n + h];
            }
        }
        w
    }

    /// `ẑ_f` for every known feature of one customer's input vector (`x.len() == inputs()`; unknown
    /// features, `m_f = 0`, get 0). Each sum runs over its terms in one fixed order, whatever the batch.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let (f_n, h_n) = (self.features, self.hidden);
        let mut a = [0f32; MAX_HIDDEN];
        let a = &mut a[..h_n];
        a.copy_from_slice(&self.b);
        for (i, &xi) in x.iter().enumerate() {
            if xi == 0.0 {
                continue; // an exact zero adds nothing: the masks and unknown features
            }
            for (u, w) in a.iter_mut().zip(&self.w_t[i * h_n..(i + 1) * h_n]) {
                *u += w * xi;
            }
        }
        for f in 0..f_n {
            if x[f_n + f] == 0.0 {
                out[f] = 0.0;
                continue;
            }
            let (zf, mf) = (x[f], x[f_n + f]);
            let wz = &self.w_t[f * h_n..(f + 1) * h_n];
            let wm = &self.w_t[(f_n + f) * h_n..(f_n + f + 1) * h_n];
            let vf = &self.v[f * h_n..(f + 1) * h_n];
            // Eight partial sums, unit h into lane h mod 8, then added up in lane order: a fixed order
            // (the result does not depend on the batch or the machine) that the compiler can keep in
            // vector registers (one running sum would have to add the units one after the other).
            let mut lanes = [0f32; LANES];
            let whole = h_n - h_n % LANES;
            for (((a, wz), wm), vf) in a[..whole]
                .chunks_exact(LANES)
                .zip(wz.chunks_exact(LANES))
                .zip(wm.chunks_exact(LANES))
                .zip(vf.chunks_exact(LANES))
            {
                for l in 0..LANES {
                    let u = a[l] - zf * wz[l] - mf * wm[l];
                    lanes[l] += vf[l] * u.max(0.0);
                }
            }
            for h in whole..h_n {
                let u = a[h] - zf * wz[h] - mf * wm[h];
                lanes[h % LANES] += vf[h] * u.max(0.0);
            }
            let mut acc = self.c[f];
            for l in lanes {
                acc += l;
            }
            out[f] = acc;
        }
    }
}

/// The time inputs of an event time: day and week phase as cos/sin pairs (UTC, weeks from Monday).
pub fn time_inputs(ts: i64) -> [f32; TIME_INPUTS] {
    let tau = std::f64::consts::TAU;
    let d = tau * ts.rem_euclid(86_400) as f64 / 86_400.0;
    // 1970-01-01 was a Thursday: shift so the week starts on Monday 00:00.
    let w = tau * (ts + 3 * 86_400).rem_euclid(604_800) as f64 / 604_800.0;
    [
        d.cos() as f32,
        d.sin() as f32,
        w.cos() as f32,
        w.sin() as f32,
    ]
}

/// One customer's input vector: `z` and mask per feature (`None`: unknown), then the time inputs.
pub fn fill_inputs(z: &[Option<f32>], ts: i64, x: &mut [f32]) {
    let f = z.len();
    for (i, v) in z.iter().enumerate() {
        match v {
            Some(v) if v.is_finite() => {
                x[i] = v.clamp(-Z_CLIP, Z_CLIP);
                x[f + i] = 1.0;
            }
            _ => {
                x[i] = 0.0;
                x[f + i] = 0.0;
            }
        }
    }
    x[2 * f..2 * f + TIME_INPUTS].copy_from_slice(&time_inputs(ts));
}

/// The spec's `[global_model]` parameters with the loaded network.
#[derive(Debug, Clone)]
pub struct GlobalModel {
    pub net: Network,
    /// The file it came from (for messages).
    pub origin: String,
    /// `margin` of `e_f = |u_f| / (margin · T_side)`.
    pub margin: f32,
    /// Metadata of the file (format, version, features, training settings and losses).
    pub metadata: BTreeMap<String, String>,
}

/// A feature's relationship verdict of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Relationship {
    /// `ẑ_f`: what the customer's other features imply for this one, in its own σ.
    pub expected_z: f32,
    /// `e_f`: the evidence against this series' own bar.
    pub evidence: f32,
    /// The bar on the residual's side, `margin · T_side` in `u` units (the band's half is
    /// `bar · s_f · σ_f`).
    pub bar: f32,
}

impl GlobalModel {
    /// Slots of per-series state a customer needs for `features` series.
    pub fn slots_for(features: usize) -> usize {
        (features * SERIES_BYTES).div_ceil(SLOT_BYTES)
    }

    /// Series `f`'s slot and offset in the customer's global slots (6 divides 48: none straddles two).
    fn place(f: usize) -> (usize, usize) {
        (f * SERIES_BYTES / SLOT_BYTES, f * SERIES_BYTES % SLOT_BYTES)
    }

    fn quantiles(state: &[Slot], f: usize) -> Quantiles {
        let (slot, at) = Self::place(f);
        Quantiles::read_le(&state[slot], at)
    }

    fn set_quantiles(state: &mut [Slot], f: usize, q: Quantiles) {
        let (slot, at) = Self::place(f);
        q.write_le(&mut state[slot], at);
    }

    /// Runs the network over one customer's `z` (`None`: unknown) at `ts`, then scores each known
    /// feature's residual against its own calibration in `state` (the customer's global slots) and learns
    /// from it where `learn[f]` (`mature[f]`: the series has seen 255 observations). `out[f]` is `None` for
    /// unknown features. Needs at least two known features (else nothing is implied).
    pub fn assess(
        &self,
        alert: &AlertParams,
        z: &[Option<f32>],
        ts: i64,
        state: &mut [Slot],
        (learn, mature): (&[bool], &[bool]),
        out: &mut [Option<Relationship>],
    ) {
        let f_count = self.net.features;
        let mut x = [0f32; MAX_INPUTS];
        let mut zh = [0f32; MAX_FEATURES];
        let x = &mut x[..self.net.inputs()];
        fill_inputs(&z[..f_count], ts, x);
        self.net.forward(x, &mut zh[..f_count]);
        for f in 0..f_count {
            out[f] = None;
            if x[f_count + f] == 0.0 {
                continue;
            }
            let q = Self::quantiles(state, f);
            let u = (x[f] - zh[f]) / self.net.residual_scale[f];
            let bar = self.margin * alert.threshold_on(q, u > 0.0);
            if learn[f] {
                Self::set_quantiles(state, f, alert.update_quantiles(q, u, mature[f]));
            }
            out[f] = Some(Relationship {
                expected_z: zh[f],
                evidence: u.abs() / bar,
                bar,
            });
        }
    }

    /// Reads a weights file and checks it against the spec's feature list.
    pub fn load(
        path: &Path,
        features: &[String],
        margin: f32,
    ) -> Result<GlobalModel, GlobalModelError> {
        let bytes = std::fs::read(path).map_err(|source| GlobalModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string(), features, margin)
    }

    /// Parses weights (safetensors) and checks them against the spec's feature list.
    pub fn from_bytes(
        bytes: &[u8],
        origin: &str,
        features: &[String],
        margin: f32,
    ) -> Result<GlobalModel, GlobalModelError> {
        let invalid = |message: String| GlobalModelError::Invalid {
            path: origin.to_string(),
            message,
        };
        let (metadata, tensors) = read_safetensors(bytes).map_err(invalid)?;
        if metadata.get("format").map(String::as_str) != Some(FORMAT_NAME) {
            return Err(invalid(format!(
                "not a fleetwatch global model (metadata format {:?}, expected {FORMAT_NAME:?})",
                metadata.get("format")
            )));
        }
        let version = metadata.get("version").map(String::as_str).unwrap_or("?");
        if version != FORMAT_VERSION.to_string() {
            return Err(invalid(format!(
                "format version {version}; this build reads version {FORMAT_VERSION}: train them again \
                 (fleetwatch train)"
            )));
        }
        let trained = metadata.get("features").cloned().unwrap_or_default();
        if trained != features.join(",") {
            return Err(GlobalModelError::Features {
                path: origin.to_string(),
                trained,
                spec: features.join(","),
            });
        }
        let get = |name: &str| {
            tensors
                .get(name)
                .map(|t| t.1.as_slice())
                .ok_or_else(|| invalid(format!("no tensor {name}")))
        };
        let hidden = tensors
            .get("hidden.bias")
            .map(|t| t.1.len())
            .ok_or_else(|| invalid("no tensor hidden.bias".into()))?;
        let net = Network::new(
            features.len(),
            hidden,
            Weights {
                hidden_weight: get("hidden.weight")?,
                hidden_bias: get("hidden.bias")?,
                out_weight: get("out.weight")?,
                out_bias: get("out.bias")?,
            },
            get("residual_scale")?.to_vec(),
        )
        .map_err(invalid)?;
        Ok(GlobalModel {
            net,
            origin: origin.to_string(),
            margin,
            metadata,
        })
    }
}

/// Writes a network as safetensors (F32, little-endian), tensors in name order, the metadata's keys sorted:
/// the same network and metadata give the same bytes.
pub fn to_safetensors(net: &Network, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let (f, h) = (net.features, net.hidden);
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    tensors.insert(
        "hidden.weight".into(),
        (vec![h, net.inputs()], net.hidden_weight()),
    );
    tensors.insert("hidden.bias".into(), (vec![h], net.b.clone()));
    tensors.insert("out.weight".into(), (vec![f, h], net.v.clone()));
    tensors.insert("out.bias".into(), (vec![f], net.c.clone()));
    tensors.insert(
        "residual_scale".into(),
        (vec![f], net.residual_scale.clone()),
    );
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
    );
    let mut data = Vec::new();
    for (name, (shape, values)) in &tensors {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    // The format pads the header with spaces to 8-byte alignment.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a safetensors file of F32 tensors: its metadata and every tensor (shape, values).
pub fn read_safetensors(bytes: &[u8]) -> Result<(BTreeMap<String, String>, Tensors), String> {
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .ok_or("shorter than a safetensors header")?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|e| *e <= bytes.len())
        .ok_or("header length beyond the file")?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..end])
        .map_err(|e| format!("header is not a JSON object: {e}"))?;
    let data = &bytes[end..];
    let mut metadata = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            let m = v.as_object().ok_or("__metadata__ is not an object")?;
            for (k, v) in m {
                let v = v.as_str().ok_or(format!("metadata {k} is not a string"))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        if v["dtype"] != "F32" {
            return Err(format!(
                "tensor {name}: dtype {} (F32 expected)",
                v["dtype"]
            ));
        }
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .ok_or(format!("tensor {name}: no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or(format!("tensor {name}: a dimension is not a number"))?;
        let off = v["data_offsets"]
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or(format!("tensor {name}: no data_offsets"))?;
        let count: usize = shape.iter().product();
        if off.0 > off.1 || off.1 > data.len() || off.1 - off.0 != count * 4 {
            return Err(format!(
                "tensor {name}: data_offsets {off:?} do not hold {count} F32 values in {} bytes",
                data.len()
            ));
        }
        let values = data[off.0..off.1]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name, (shape, values));
    }
    Ok((metadata, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AlertSpec;

    /// Two features, two hidden units: small enough to compute by hand.
    fn tiny() -> Network {
        // inputs: z1, z2, m1, m2, t1..t4 (8)
        #[rustfmt::skip]
        let w = [
            1.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, // unit 0
            -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // unit 1
        ];
        let b = [0.0, 0.5];
        let v = [1.0, -1.0, 0.5, 2.0];
        let c = [0.0, 0.25];
        Network::new(
            2,
            2,
            Weights {
                hidden_weight: &w,
                hidden_bias: &b,
                out_weight: &v,
                out_bias: &c,
            },
            vec![0.5, 1.0],
        )
        .unwrap()
    }

    #[test]
    fn each_output_leaves_its_own_feature_out() {
        let net = tiny();
        // z = (1, 2): a = (1 + 4 + 0.5, −1 + 2 + 0.5) = (5.5, 1.5)
        // f = 0: a − 1·W[:,0] − 1·W[:,2] = (5.5 − 1 − 0.5, 1.5 + 1) = (4, 2.5) → ẑ₀ = 0 + 4 − 2.5 = 1.5
        //        (= from z₂ alone: (2·2, 1 + 0.5) = (4, 1.5)... with the bias: unit 1 = 2 + 0.5 = 2.5 ✓)
        // f = 1: a − 2·W[:,1] − 1·W[:,3] = (5.5 − 4, 1.5 − 2) = (1.5, −0.5) → relu (1.5, 0) → ẑ₁ = 0.25 + 0.75
        let mut x = [0f32; 8];
        fill_inputs(&[Some(1.0), Some(2.0)], 0, &mut x);
        assert_eq!(&x[..4], &[1.0, 2.0, 1.0, 1.0]);
        let mut out = [0f32; 2];
        net.forward(&x, &mut out);
        assert_eq!(out, [1.5, 1.0]);
        // ẑ₀ does not depend on z₀
        fill_inputs(&[Some(-3.0), Some(2.0)], 0, &mut x);
        net.forward(&x, &mut out);
        assert_eq!(out[0], 1.5);
        // an unknown feature gets 0 and takes no part in the others'
        fill_inputs(&[None, Some(2.0)], 0, &mut x);
        net.forward(&x, &mut out);
        // f = 1 with nothing known but itself: a = (0, 0.5) → (0, 0.5) → ẑ₁ = 0.25 + 2·0.5
        assert_eq!(out, [0.0, 1.25]);
    }

    #[test]
    fn inputs_clamp_and_mask() {
        let mut x = [9f32; 8];
        fill_inputs(&[Some(40.0), None], 0, &mut x);
        assert_eq!(&x[..4], &[Z_CLIP, 0.0, 1.0, 0.0]);
        // midnight UTC on a Monday (2026-11-02): day phase 0, week phase 0
        let t = time_inputs(1_793_577_600);
        assert!((t[0] - 1.0).abs() < 1e-6 && t[1].abs() < 1e-6, "{t:?}");
        assert!((t[2] - 1.0).abs() < 1e-6 && t[3].abs() < 1e-6, "{t:?}");
        // noon: day phase ½
        let t = time_inputs(1_793_577_600 + 43_200);
        assert!((t[0] + 1.0).abs() < 1e-6, "{t:?}");
    }

    fn params() -> AlertParams {
        let spec: AlertSpec =
            toml::from_str("threshold_floor = 4.0\nthreshold_margin = 1.5").unwrap();
        AlertParams::from_spec(&spec, 300)
    }

    #[test]
    fn evidence_against_the_series_own_bar() {
        let g = GlobalModel {
            net: tiny(),
            origin: "test".into(),
            margin: 1.0,
            metadata: BTreeMap::new(),
        };
        let alert = params();
        let mut state = vec![[0u8; SLOT_BYTES]; GlobalModel::slots_for(2)];
        let mut out = [None; 2];
        // z = (1, 2) → ẑ = (1.5, 1.0): u₀ = (1 − 1.5)/0.5 = −1, u₁ = (2 − 1)/1 = 1
        g.assess(
            &alert,
            &[Some(1.0), Some(2.0)],
            0,
            &mut state,
            (&[true, true], &[false, false]),
            &mut out,
        );
        let (r0, r1) = (out[0].unwrap(), out[1].unwrap());
        // a fresh series' bar is the spec's Gaussian threshold on both sides
        let t = alert.bar(Quantiles::INITIAL);
        let skewed = Quantiles {
            up: 36_000,
            dn: 35_000,
            lo: 33_000,
        };
        for q in [Quantiles::INITIAL, skewed] {
            assert_eq!(alert.threshold_on(q, true), alert.bar(q).up);
            assert_eq!(alert.threshold_on(q, false), alert.bar(q).down);
        }
        assert_eq!(r0.bar, t.down);
        assert_eq!(r1.bar, t.up);
        assert!((r0.evidence - 1.0 / t.down).abs() < 1e-6);
        assert_eq!(r1.expected_z, 1.0);
        // each series learned from its own residual, as the point evidence's quantiles do
        assert_eq!(
            GlobalModel::quantiles(&state, 0),
            alert.update_quantiles(Quantiles::INITIAL, -1.0, false)
        );
        assert_eq!(
            GlobalModel::quantiles(&state, 1),
            alert.update_quantiles(Quantiles::INITIAL, 1.0, false)
        );
        // an unknown feature has no verdict and its state is untouched; nor is one that may not learn
        let before = state.clone();
        g.assess(
            &alert,
            &[None, Some(0.0)],
            0,
            &mut state,
            (&[true, false], &[false, false]),
            &mut out,
        );
        assert!(out[0].is_none() && out[1].is_some());
        assert_eq!(state, before);
        // a series whose residual's tail is heavy earns a higher bar
        let mut heavy = vec![[0u8; SLOT_BYTES]; 1];
        for i in 0..2000 {
            let u = if i % 20 == 0 { 12.0 } else { 0.5 };
            let q = GlobalModel::quantiles(&heavy, 0);
            GlobalModel::set_quantiles(&mut heavy, 0, alert.update_quantiles(q, u, true));
        }
        assert!(alert.bar(GlobalModel::quantiles(&heavy, 0)).up > 2.0 * t.up);
    }

    #[test]
    fn safetensors_round_trip_and_refusals() {
        let net = tiny();
        let feats = vec!["a".to_string(), "b".to_string()];
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), FORMAT_NAME.into());
        meta.insert("version".into(), FORMAT_VERSION.to_string());
        meta.insert("features".into(), "a,b".into());
        let bytes = to_safetensors(&net, &meta);
        assert_eq!(bytes, to_safetensors(&net, &meta), "deterministic bytes");
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let g = GlobalModel::from_bytes(&bytes, "t", &feats, 1.0).unwrap();
        assert_eq!(g.net, net);
        // another feature list
        let other = vec!["a".to_string(), "c".to_string()];
        let e = GlobalModel::from_bytes(&bytes, "t", &other, 1.0).unwrap_err();
        assert!(e.to_string().contains("trained for features [a,b]"), "{e}");
        // another version
        meta.insert("version".into(), "99".into());
        let e =
            GlobalModel::from_bytes(&to_safetensors(&net, &meta), "t", &feats, 1.0).unwrap_err();
        assert!(e.to_string().contains("format version 99"), "{e}");
        // truncated
        let e = GlobalModel::from_bytes(&bytes[..bytes.len() - 3], "t", &feats, 1.0).unwrap_err();
        assert!(e.to_string().contains("data_offsets"), "{e}");
        assert!(GlobalModel::from_bytes(&[1, 2], "t", &feats, 1.0).is_err());
    }
}
