//! Replays one customer's logs from a recorded topic (JSON lines) or a CSV export through the model and
//! prints, per epoch, what one feature's detector saw: observation, prediction, σ, surprise, the sustained
//! evidence and the bar it must reach to raise (`sus`/`bar`: the tail factor κ times the calibration's
//! `max(1, score_margin·G)`; at `sus` = 3 the detector adopts the new level, so a shift on a series whose
//! `bar` is above 3 is learned without being raised, marked `adopted`), the series' own thresholds, and its
//! alert. The spec is the embedded home-wifi one unless a fourth argument names one
//! (e.g. a spec written by `fleetwatch import`).
//!
//! ```text
//! cargo run --release --example explain_series -- telemetry.jsonl cust-0000042 rssi_dbm
//! cargo run --release --example explain_series -- real-eval/ms-cloudmon-1h/telemetry.csv app1-01 value \
//!     real-eval/ms-cloudmon-1h/spec.toml
//! ```
//!
//! (The cohort prior is left out: this is the series on its own.)

use std::io::BufRead;

use fleetwatch::keys::CustomerId;
use fleetwatch::model::customer::{ModelConfig, StepContext, StepOut, step_customer};
use fleetwatch::model::header::SeriesSlot;
use fleetwatch::model::{AnomalyKind, FeaturePrior, Registry};
use fleetwatch::record::Log;
use fleetwatch::sources::parse::LogParser;
use fleetwatch::spec::Spec;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (path, customer, feature, spec) = match args.as_slice() {
        [_, path, customer, feature] => (path, customer, feature, Spec::embedded()),
        [_, path, customer, feature, spec] => (
            path,
            customer,
            feature,
            Spec::load(std::path::Path::new(spec))?,
        ),
        _ => anyhow::bail!(
            "usage: explain_series <telemetry.jsonl|telemetry.csv> <customer> <feature> [spec.toml]"
        ),
    };
    let f = spec
        .feature_index(feature)
        .ok_or_else(|| anyhow::anyhow!("unknown feature {feature}"))?;
    let cfg = ModelConfig::from_spec(&spec);
    let detector = Registry::builtin()
        .build(&spec.detector.name, &spec.detector.params)
        .map_err(anyhow::Error::msg)?;
    let id = CustomerId::parse(customer.as_bytes(), b"")?;
    let mut parser = LogParser::new(&spec);
    let mut slots =
        vec![[0u8; fleetwatch::state::SLOT_BYTES]; ModelConfig::from_spec(&spec).slots()];
    let priors = vec![FeaturePrior::NONE; spec.features.len()];
    for log in customer_logs(path, customer, id, &mut parser)? {
        let epoch = (log.ts / spec.epoch.length_seconds as i64) as u64;
        let ctx = StepContext {
            config: &cfg,
            detector: detector.as_ref(),
            priors: &priors,
            epoch,
        };
        // What the detector says about this observation (on a copy of the state, before the real step).
        let before = SeriesSlot::decode(&slots[f]);
        // The bar the sustained evidence is held to at this epoch (quantiles and G before the step).
        let sustained_bar = cfg.alert.bar(before.q).tail
            * cfg
                .alert
                .score_divisor(cfg.score_quantile(&before.detector));
        let verdict = if log.values[f].is_nan() {
            None
        } else {
            let mut copy = before.detector;
            let obs = fleetwatch::model::Observation {
                value: log.values[f],
                ts: log.ts,
                gap_epochs: fleetwatch::model::header::epochs_since(before.last_epoch, epoch)
                    .min(1),
                seen: before.seen,
                resolution: [1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6]
                    [before.decimals.min(6) as usize],
                phase: fleetwatch::model::Observation::daily_phase(log.ts),
                weekend_step: fleetwatch::model::Observation::weekend_step_of(
                    log.ts,
                    cfg.epoch_seconds,
                ),
                transform: spec.features[f].transform,
                at_bound: fleetwatch::model::AtBound::of(log.values[f], cfg.bounds[f]),
            };
            Some(detector.observe(&mut copy, &obs, &priors[f]))
        };
        let mut out = StepOut::default();
        step_customer(&ctx, id, &mut slots, &[log], &mut out);
        let s = SeriesSlot::decode(&slots[f]);
        let (q_up, q_dn, q_lo) = s.q.values();
        let bar = cfg.alert.bar(s.q);
        let ev = out.evidence.iter().find(|e| e.feature as usize == f);
        println!(
            "{epoch} x={:<10} {} q_up={:<6.2} q_dn={:<6.2} q_lo={:<6.2} T_up={:<6.2} T_dn={:<6.2} alert={:?} {}",
            log.values[f],
            verdict
                .map(|a| format!(
                    "p={:<9.3} σ={:<8.3} |z|={:<6.2} sus={:<5.2} bar={:<5.2} {:<14}{}",
                    a.expected,
                    a.sigma,
                    a.surprise,
                    a.sustained,
                    sustained_bar,
                    a.kind.as_str(),
                    if a.kind == AnomalyKind::LevelShift
                        && a.sustained >= 3.0
                        && sustained_bar > a.sustained
                    {
                        " adopted"
                    } else {
                        ""
                    }
                ))
                .unwrap_or_default(),
            q_up,
            q_dn,
            q_lo,
            bar.up,
            bar.down,
            s.alert.map(|a| (a.kind, a.severity)),
            ev.map(|e| format!(
                "score={:.2} expected={:.2} band=[{:.2},{:.2}]",
                e.score, e.expected, e.lower, e.upper
            ))
            .unwrap_or_default()
        );
    }
    Ok(())
}

/// The customer's logs, in file order, from a recorded topic or (by extension) a CSV export.
fn customer_logs(
    path: &str,
    customer: &str,
    id: CustomerId,
    parser: &mut LogParser,
) -> anyhow::Result<Vec<Log>> {
    let mut logs = Vec::new();
    if path.ends_with(".csv") {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_path(path)?;
        let mut rows = reader.byte_records();
        let header = rows
            .next()
            .ok_or_else(|| anyhow::anyhow!("{path} is empty"))??;
        let columns = parser.csv_columns(&header).map_err(anyhow::Error::msg)?;
        for row in rows {
            let row = row?;
            if row.get(0) != Some(customer.as_bytes()) {
                continue;
            }
            let mut log = Log::empty(id);
            if parser.parse_csv_row(&row, &columns, &mut log).is_ok() {
                logs.push(log);
            }
        }
    } else {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        for line in file.lines() {
            let line = line?;
            if !line.contains(customer) {
                continue;
            }
            let mut log = Log::empty(id);
            if parser.parse_recorded(line.as_bytes(), &mut log).is_ok() && log.customer == id {
                logs.push(log);
            }
        }
    }
    Ok(logs)
}
