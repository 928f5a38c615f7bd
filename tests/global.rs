//! The global model (issue "The fourth constraint"): `fleetwatch train` is deterministic, its weights are what a
//! spec's `[global_model]` names, a run with it is byte-identical for any layout and raises `relationship`
//! alerts, and weights made for another feature list are refused at load with a clear error.

mod common;

use std::path::Path;
use std::process::Command;

/// The embedded home Wi-Fi spec with its `[global_model]` on and pointing at `weights` (or as it ships: off).
fn spec_with(dir: &Path, weights: Option<&Path>) -> std::path::PathBuf {
    let text = match weights {
        Some(w) => common::home_wifi_with_model_text().replace(
            "weights = \"home-wifi.safetensors\"",
            &format!("weights = {:?}", w.to_str().unwrap()),
        ),
        None => common::home_wifi(),
    };
    let path = dir.join(if weights.is_some() {
        "with.toml"
    } else {
        "without.toml"
    });
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn training_is_deterministic_and_a_run_uses_the_weights_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(&dir.path().join("fleet"), 120, 600, 21, &[]);
    let train = |out: &Path, seed: &str| {
        let report = common::fleetwatch(&[
            "train",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--samples",
            "20000",
            "--passes",
            "3",
            "--seed",
            seed,
        ]);
        serde_json::from_str::<serde_json::Value>(&report).unwrap()
    };
    let (a, b, c) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let report = train(&a, "3");
    train(&b, "3");
    train(&c, "4");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same input and seed: the same weights, byte for byte"
    );
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    // The report: losses per pass, the network explains part of the features' residuals.
    assert_eq!(report["train_loss"].as_array().unwrap().len(), 3);
    let (err, base) = (
        report["validation_error"].as_f64().unwrap(),
        report["validation_baseline"].as_f64().unwrap(),
    );
    assert!(
        err < base,
        "validation error {err} below the baseline {base}"
    );
    // The coupled features (signal and SNR move together) are explained best.
    let scale = &report["residual_scale"];
    assert!(
        scale["snr_db"].as_f64().unwrap() < 0.8 * report["z_scale"]["snr_db"].as_f64().unwrap()
    );

    // A run with these weights differs from one with the embedded ones and from one without a model.
    let out_a = dir.path().join("out-a.jsonl");
    let out_off = dir.path().join("out-off.jsonl");
    let with = spec_with(dir.path(), Some(&a));
    let without = spec_with(dir.path(), None);
    common::run(
        &input,
        &out_a,
        &["--dataflow", with.to_str().unwrap(), "--reproducible"],
    );
    common::run(
        &input,
        &out_off,
        &["--dataflow", without.to_str().unwrap(), "--reproducible"],
    );
    let off = std::fs::read_to_string(&out_off).unwrap();
    assert!(!off.contains("\"kind\":\"relationship\""));
    assert_ne!(std::fs::read_to_string(&out_a).unwrap(), off);
}

#[test]
fn relationship_alerts_are_byte_identical_for_any_layout() {
    let dir = tempfile::tempdir().unwrap();
    // Two days after a day of history, many labelled anomalies: relationship breaks among them.
    let input = common::generate(
        &dir.path().join("fleet"),
        300,
        864,
        8,
        &["--anomaly-rate", "4.0"],
    );
    // The embedded spec with its built-in weights switched on (a copy elsewhere keeps them).
    let spec = common::home_wifi_with_model(dir.path());
    let spec = spec.to_str().unwrap();
    let one = dir.path().join("w1.jsonl");
    common::run(
        &input,
        &one,
        &["--dataflow", spec, "--workers", "1", "--reproducible"],
    );
    let reference = std::fs::read(&one).unwrap();
    let text = String::from_utf8_lossy(&reference);
    assert!(
        text.contains("\"kind\":\"relationship\""),
        "the global model raises relationship alerts"
    );
    let why = text
        .lines()
        .find(|l| l.contains("\"kind\":\"relationship\"") && l.contains("\"level\":\"feature\""))
        .unwrap();
    assert!(
        why.contains("what the customer's other features imply"),
        "{why}"
    );
    let three = dir.path().join("w3.jsonl");
    common::run(
        &input,
        &three,
        &["--dataflow", spec, "--workers", "3", "--reproducible"],
    );
    assert!(
        std::fs::read(&three).unwrap() == reference,
        "--workers 3 differs from --workers 1"
    );
}

#[test]
fn weights_for_another_feature_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::generate(&dir.path().join("fleet"), 5, 20, 1, &["--features", "4"]);
    // The home Wi-Fi weights (20 features) named by a 4-feature spec.
    let text = common::home_wifi_with_model_text();
    let cut = text.find("[[features]]").unwrap();
    let mut spec = text[..cut].replace(
        "weights = \"home-wifi.safetensors\"",
        &format!(
            "weights = {:?}",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/dataflows/home-wifi.safetensors"
            )
        ),
    );
    spec = spec.replace("reboot_feature = \"uptime_s\"", "reboot_feature = \"\"");
    for f in ["rssi_dbm", "snr_db", "noise_floor_dbm", "phy_rate_tx_mbps"] {
        spec.push_str(&format!("[[features]]\nname = \"{f}\"\n"));
    }
    let path = dir.path().join("four.toml");
    std::fs::write(&path, spec).unwrap();
    let out = Command::new(common::bin())
        .args([
            "run",
            "--dataflow",
            path.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.path().join("o.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("were trained for features [rssi_dbm,snr_db,")
            && stderr.contains("the spec has [rssi_dbm,snr_db,noise_floor_dbm,phy_rate_tx_mbps]"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
