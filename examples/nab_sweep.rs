//! Sweeps spec parameters on NAB: prints the three normalised scores for each value of each swept parameter
//! (one at a time, around the fixed ones). This is how dataflows/nab.toml's parameters were chosen, once for
//! all 58 files (QUALITY.md).
//!
//! ```text
//! cargo run --release --example nab_sweep -- NAB_DIR [-d] [key=value ...] [key=v1,v2,v3 ...]
//! ```
//!
//! Keys are `[alerting]` fields (`threshold_margin`, `clear_epochs`, ...) or detector parameters (`eta`,
//! `cusum_h`, ...), applied to the embedded NAB spec (dataflows/nab.toml); `-d` prints windows
//! detected and false-positive rows at the optimal standard threshold, `-m` each window missed there and
//! why (the model's best score inside it, and whether an alert opened before it hid that score).
use fleetwatch::nab::runner::{RowTrace, SeriesModel, to_anomaly_scores};
use fleetwatch::spec::Spec;

fn eval(corpus: &fleetwatch::nab::Corpus, spec: &Spec) -> [f64; 3] {
    let Ok(model) = SeriesModel::new(spec) else {
        return [f64::NAN; 3];
    };
    let traces: Vec<Vec<RowTrace>> = corpus.files.iter().map(|f| model.trace(f)).collect();
    let k: usize = std::env::var("K")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let scores: Vec<Vec<f64>> = traces
        .iter()
        .map(|t| {
            if k == 0 {
                to_anomaly_scores(t)
            } else {
                let s: Vec<f32> = t.iter().map(|r| r.score).collect();
                (0..s.len())
                    .map(|i| {
                        let lo = i.saturating_sub(k);
                        let m = s[lo..i].iter().cloned().fold(0.0f32, f32::max);
                        if s[i] > m {
                            (s[i] / (1.0 + s[i])) as f64
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
        })
        .collect();
    let r = fleetwatch::nab::score_corpus(corpus, &scores);
    [
        r.profiles[0].normalised,
        r.profiles[1].normalised,
        r.profiles[2].normalised,
    ]
}

fn set(spec: &mut Spec, key: &str, v: f64) {
    match key {
        "threshold_floor" => spec.alerting.threshold_floor = v,
        "threshold_margin" => spec.alerting.threshold_margin = v,
        "sustained_tail_exponent" => spec.alerting.sustained_tail_exponent = v,
        "clear_ratio" => spec.alerting.clear_ratio = v,
        "clear_epochs" => spec.alerting.clear_epochs = v as u8,
        "critical_ratio" => spec.alerting.critical_ratio = v,
        k => {
            spec.detector
                .params
                .insert(k.to_string(), toml::Value::Float(v));
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first() else {
        anyhow::bail!("usage: nab_sweep NAB_DIR [-d] [key=value ...] [key=v1,v2 ...]");
    };
    let corpus = fleetwatch::nab::Corpus::load(std::path::Path::new(root))?;
    let mut spec = Spec::embedded_nab();
    // fixed settings: key=value
    let mut grid = Vec::new();
    for a in &args {
        if let Some((k, v)) = a.split_once('=') {
            if v.contains(',') {
                grid.push((
                    k.to_string(),
                    v.split(',')
                        .map(|x| x.parse::<f64>().unwrap())
                        .collect::<Vec<_>>(),
                ));
            } else {
                set(&mut spec, k, v.parse()?);
            }
        }
    }
    if args.iter().any(|a| a == "-d") {
        detail(&corpus, &spec);
    }
    if args.iter().any(|a| a == "-m") {
        missed(&corpus, &spec);
    }
    let base = eval(&corpus, &spec);
    println!("base {:.2} {:.2} {:.2}", base[0], base[1], base[2]);
    for (k, vals) in grid {
        for v in vals {
            let mut s = spec.clone();
            set(&mut s, &k, v);
            let r = eval(&corpus, &s);
            println!("{k}={v:<8} {:.2} {:.2} {:.2}", r[0], r[1], r[2]);
        }
    }
    Ok(())
}

#[allow(dead_code)]
pub fn detail(corpus: &fleetwatch::nab::Corpus, spec: &Spec) {
    let Ok(model) = SeriesModel::new(spec) else {
        return;
    };
    let scores: Vec<Vec<f64>> = corpus
        .files
        .iter()
        .map(|f| to_anomaly_scores(&model.trace(f)))
        .collect();
    let r = fleetwatch::nab::score_corpus(corpus, &scores);
    let p = &r.profiles[0];
    let (mut wd, mut fp, mut early) = (0, 0, 0.0);
    for (f, s) in corpus.files.iter().zip(&scores) {
        let prob = (0.15 * f.len() as f64).floor().min(750.0) as usize;
        for &(a, b) in &f.windows {
            if let Some(i) = (a.max(prob)..=b).find(|&i| s[i] >= p.threshold) {
                wd += 1;
                early += (i - a) as f64 / (b - a + 1) as f64;
            }
        }
        let mut inw = vec![false; f.len()];
        for &(a, b) in &f.windows {
            for x in &mut inw[a..=b] {
                *x = true;
            }
        }
        fp += (prob..f.len())
            .filter(|&i| !inw[i] && s[i] >= p.threshold)
            .count();
    }
    println!(
        "threshold {:.3}: windows detected {wd}/{} (mean relative position {:.2}), FP rows {fp}",
        p.threshold,
        corpus.window_count(),
        early / wd as f64
    );
}

/// Lists the windows not detected at the optimal standard threshold, with the model's view of them.
pub fn missed(corpus: &fleetwatch::nab::Corpus, spec: &Spec) {
    let Ok(model) = SeriesModel::new(spec) else {
        return;
    };
    let traces: Vec<Vec<RowTrace>> = corpus.files.iter().map(|f| model.trace(f)).collect();
    let scores: Vec<Vec<f64>> = traces.iter().map(|t| to_anomaly_scores(t)).collect();
    let r = fleetwatch::nab::score_corpus(corpus, &scores);
    let th = r.profiles[0].threshold;
    println!(
        "missed windows at threshold {th:.3} (rows; best raw score s inside; rows hidden behind an alert):"
    );
    for ((f, s), t) in corpus.files.iter().zip(&scores).zip(&traces) {
        let prob = (0.15 * f.len() as f64).floor().min(750.0) as usize;
        for &(a, b) in &f.windows {
            if (a.max(prob)..=b).any(|i| s[i] >= th) {
                continue;
            }
            let (best, at) = (a..=b).fold((0.0f32, a), |m, i| {
                if t[i].score > m.0 { (t[i].score, i) } else { m }
            });
            let hidden = (a..=b)
                .filter(|&i| t[i].open_before && t[i].score >= 1.0)
                .count();
            // the raise of the alert open at the window's start: rows before the window, and its score
            let opened = t[a]
                .open_before
                .then(|| (1..=a).rev().find(|&i| !t[i - 1].open_before))
                .flatten()
                .map(|i| format!("{} rows before, s {:.2}", a - (i - 1), t[i - 1].score))
                .unwrap_or_else(|| "-".into());
            println!(
                "  {:<52} {a:>5}..{b:<5} best s {best:8.2} at {:>4.2}  hidden rows >= 1: {hidden:>3}  open since: {opened}",
                f.rel,
                (at - a) as f64 / (b - a + 1) as f64
            );
        }
    }
}
