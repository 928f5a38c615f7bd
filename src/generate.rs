//! `fleetwatch generate`: a synthetic home Wi-Fi fleet with labelled anomalies, deterministic by seed.
//!
//! The fleet is meant to be hard in the ways real fleets are hard, so that detection quality measured on it
//! means something:
//!
//! * **Customer diversity** — every customer draws its own level, noise scale, noise shape (Student-t with 3 to
//!   30 degrees of freedom: some customers are heavy-tailed), noise memory (AR(1) coefficient up to 0.6), daily
//!   rhythm amplitude and phase (time zone and habits), and a weekend effect, per feature.
//! * **Benign disturbances** that must *not* raise alerts: missing logs (single or pairs), reboots (uptime
//!   resets, clients reconnect, throughput dips), integer-valued features that repeat, nights of zero clients.
//! * **Anomalies** (labelled): spike, level shift (persistent), drift (ramp, then persistent), variance burst,
//!   stuck value, dropout (a feature stops reporting), and element-wide outages (every customer under a network
//!   element goes silent). Magnitudes are drawn relative to the series' own noise, from barely detectable
//!   upwards — a fixed 3σ threshold would drown in the heavy-tailed customers' false alarms. A label means
//!   the anomaly is in the data: a spike that the feature's physical range cannot hold (it would be clamped
//!   or rounded onto the bound, which may be an ordinary value of that series) is not injected, and a spike
//!   whose log never arrived (a missing log, an outage) or was written corrupted is not labelled.
//! * **Customers joining mid-stream** (cold start).
//! * **The normal behaviours of real telemetry** (on unless `--without-normal-behaviours`; [`Habits`]): slow
//!   wander, Wi-Fi channel regimes, away periods, bursts of 1–3 epochs and coarse firmware that reports whole
//!   units and standard PHY rates. They are not labelled: a detector that raises on them raises false
//!   alerts, as it would on the real sets (QUALITY.md, "The honest generator"). Labelled shifts and drifts
//!   are sized against the series' normal variation with them, and spikes against its bursts.
//!
//! Outputs in `--out DIR`: `telemetry.jsonl` (a recorded topic, 16 partitions keyed by customer),
//! `labels.jsonl` (one line per anomaly: customer, feature or `*`, kind, start and end Unix seconds, end
//! exclusive, and `joined`, when the customer's first log was due) and `topology.csv` (customer, element, region).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::keys::{CustomerId, stable_hash};
use crate::rng::Rng;
use crate::sources::RecordedHeader;

/// Generator options.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub customers: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Unix seconds of the first epoch (aligned down to the epoch length).
    pub start: i64,
    pub epoch_seconds: i64,
    pub partitions: u32,
    /// Expected anomalies per customer per day.
    pub anomaly_rate: f64,
    /// Fraction of customers that join mid-stream.
    pub join_fraction: f64,
    /// Probability that an anomaly of a customer who joins mid-stream is placed inside its first hour
    /// (epochs 2–11 after joining): the cold-start measurement. 0 leaves placement uniform.
    pub cold_start_rate: f64,
    /// Expected element outages per element per day.
    pub outage_rate: f64,
    /// Expected element congestions per element per day: for 6–24 epochs most members' throughput drops
    /// and their latency rises, each by 0.6–1.2 times the series' normal variation (mildly: inside its own
    /// band). 0, the default, leaves the fleet exactly as without them (their random stream is separate).
    pub congestion_rate: f64,
    /// Expected region faults per region per day: every element of a region (20 elements) has an outage or
    /// a congestion at once, labelled per region in region_labels.jsonl (and per element and member as its
    /// own faults are). 0, the default, leaves the fleet exactly as without them.
    pub region_fault_rate: f64,
    /// Fraction of messages replaced by malformed ones (for demos of the dead-letter path).
    pub malformed_rate: f64,
    /// Epochs of clean history before the first anomaly of the customers present from the start: a
    /// deployment learns from history (a replay or a checkpoint) before it is trusted. Customers that join
    /// later may have anomalies from their third epoch (cold start).
    pub history_epochs: usize,
    /// Worker threads for formatting (0: all cores).
    pub threads: usize,
    /// Features written per log: the first `features` of the home Wi-Fi set (1..=20).
    pub features: usize,
    /// The normal behaviours of real telemetry (slow wander, Wi-Fi channel regimes, away periods, bursts,
    /// coarse firmware; see [`Habits`]). Off reproduces the fleets of the generator before them, byte for
    /// byte (their random stream is separate).
    pub normal_behaviours: bool,
    /// Features that move together (a router's link quality: signal, SNR and PHY rates; its load:
    /// throughput, channel utilisation, CPU and latency) and labelled relationship breaks (one of them moves
    /// 5–7.5 noise scales for 1–3 epochs while the rest of its group does not: inside its own band, not
    /// what the others imply). Off reproduces the fleets of the generator before them, byte for byte (their
    /// random stream is separate).
    pub relationships: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            customers: 1000,
            epochs: 288,
            seed: 1,
            start: 1_793_577_600, // 2026-11-02T00:00:00Z, a Monday
            epoch_seconds: 300,
            partitions: 16,
            anomaly_rate: 0.5,
            join_fraction: 0.05,
            cold_start_rate: 0.0,
            outage_rate: 1.0 / 14.0,
            congestion_rate: 0.0,
            region_fault_rate: 0.0,
            malformed_rate: 0.0,
            history_epochs: 288,
            threads: 0,
            features: 20,
            normal_behaviours: true,
            relationships: true,
        }
    }
}

/// How a feature's values are shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Real-valued, printed with `decimals`, clamped to [lo, hi].
    Real { lo: f64, hi: f64, decimals: u8 },
    /// Non-negative integer counts.
    Count,
    /// Seconds since boot.
    Uptime,
    /// Reboots since install.
    Reboots,
}

impl Shape {
    /// The physical range a value is clamped into, for the shapes that have one.
    fn bounds(self) -> Option<(f64, f64)> {
        match self {
            Shape::Real { lo, hi, .. } => Some((lo, hi)),
            Shape::Count => Some((0.0, f64::INFINITY)),
            Shape::Uptime | Shape::Reboots => None,
        }
    }
}

/// Population model of one feature.
#[derive(Debug, Clone, Copy)]
struct FeatureModel {
    name: &'static str,
    shape: Shape,
    /// Level: median and log-normal spread (`log_level`), or normal mean/sd (`!log_level`).
    level: (f64, f64),
    log_level: bool,
    /// Noise sd: relative to the level (`rel_noise`) or absolute; median and log-normal spread.
    noise: (f64, f64),
    rel_noise: bool,
    /// Daily amplitude as a fraction of the level (or absolute if `!rel_noise`): median.
    daily: f64,
    /// Does the daily rhythm follow household usage (evening peak, night low)?
    usage: bool,
}

const FEATURES: [FeatureModel; 20] = [
    fm(
        "rssi_dbm",
        Shape::Real {
            lo: -95.0,
            hi: -20.0,
            decimals: 1,
        },
        (-62.0, 8.0),
        false,
        (1.6, 0.5),
        false,
        1.2,
        false,
    ),
    fm(
        "snr_db",
        Shape::Real {
            lo: 0.0,
            hi: 70.0,
            decimals: 1,
        },
        (30.0, 7.0),
        false,
        (1.4, 0.5),
        false,
        1.0,
        false,
    ),
    fm(
        "noise_floor_dbm",
        Shape::Real {
            lo: -110.0,
            hi: -60.0,
            decimals: 1,
        },
        (-92.0, 3.0),
        false,
        (0.8, 0.4),
        false,
        0.8,
        false,
    ),
    fm(
        "phy_rate_tx_mbps",
        Shape::Real {
            lo: 1.0,
            hi: 4800.0,
            decimals: 1,
        },
        (400.0, 0.5),
        true,
        (0.07, 0.5),
        true,
        0.05,
        false,
    ),
    fm(
        "phy_rate_rx_mbps",
        Shape::Real {
            lo: 1.0,
            hi: 4800.0,
            decimals: 1,
        },
        (450.0, 0.5),
        true,
        (0.07, 0.5),
        true,
        0.05,
        false,
    ),
    fm(
        "throughput_down_mbps",
        Shape::Real {
            lo: 0.0,
            hi: 5000.0,
            decimals: 2,
        },
        (40.0, 0.9),
        true,
        (0.22, 0.4),
        true,
        0.6,
        true,
    ),
    fm(
        "throughput_up_mbps",
        Shape::Real {
            lo: 0.0,
            hi: 2000.0,
            decimals: 2,
        },
        (6.0, 0.9),
        true,
        (0.25, 0.4),
        true,
        0.5,
        true,
    ),
    fm(
        "retrans_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 2,
        },
        (2.0, 0.6),
        true,
        (0.25, 0.4),
        true,
        0.2,
        true,
    ),
    fm(
        "channel_util_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 1,
        },
        (35.0, 12.0),
        false,
        (3.5, 0.4),
        false,
        8.0,
        true,
    ),
    fm(
        "interference_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 1,
        },
        (12.0, 0.5),
        true,
        (0.18, 0.4),
        true,
        0.15,
        false,
    ),
    fm(
        "clients_2g",
        Shape::Count,
        (2.0, 0.6),
        true,
        (0.35, 0.3),
        true,
        0.6,
        true,
    ),
    fm(
        "clients_5g",
        Shape::Count,
        (4.0, 0.6),
        true,
        (0.3, 0.3),
        true,
        0.6,
        true,
    ),
    fm(
        "wan_latency_ms",
        Shape::Real {
            lo: 0.5,
            hi: 5000.0,
            decimals: 1,
        },
        (18.0, 0.45),
        true,
        (0.12, 0.5),
        true,
        0.2,
        true,
    ),
    fm(
        "wan_loss_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 3,
        },
        (0.2, 0.8),
        true,
        (0.4, 0.4),
        true,
        0.3,
        true,
    ),
    fm(
        "dns_fail_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 2,
        },
        (0.5, 0.7),
        true,
        (0.35, 0.4),
        true,
        0.2,
        true,
    ),
    fm(
        "cpu_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 1,
        },
        (20.0, 0.4),
        true,
        (0.15, 0.4),
        true,
        0.4,
        true,
    ),
    fm(
        "mem_pct",
        Shape::Real {
            lo: 0.0,
            hi: 100.0,
            decimals: 1,
        },
        (45.0, 10.0),
        false,
        (0.7, 0.4),
        false,
        1.0,
        false,
    ),
    fm(
        "temp_c",
        Shape::Real {
            lo: 10.0,
            hi: 110.0,
            decimals: 1,
        },
        (48.0, 5.0),
        false,
        (0.35, 0.4),
        false,
        1.5,
        false,
    ),
    fm(
        "uptime_s",
        Shape::Uptime,
        (0.0, 0.0),
        false,
        (0.0, 0.0),
        false,
        0.0,
        false,
    ),
    fm(
        "reboot_count",
        Shape::Reboots,
        (0.0, 0.0),
        false,
        (0.0, 0.0),
        false,
        0.0,
        false,
    ),
];

#[allow(clippy::too_many_arguments)]
const fn fm(
    name: &'static str,
    shape: Shape,
    level: (f64, f64),
    log_level: bool,
    noise: (f64, f64),
    rel_noise: bool,
    daily: f64,
    usage: bool,
) -> FeatureModel {
    FeatureModel {
        name,
        shape,
        level,
        log_level,
        noise,
        rel_noise,
        daily,
        usage,
    }
}

/// The feature names, in the order of `dataflows/home-wifi.toml`.
pub fn feature_names() -> Vec<&'static str> {
    FEATURES.iter().map(|f| f.name).collect()
}

/// Anomaly kinds the generator injects (the label's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InjectedKind {
    Spike,
    LevelShift,
    Drift,
    VarianceBurst,
    StuckValue,
    Dropout,
    Outage,
    /// One feature of a coupled group moves while the group does not ([`Coupling`]).
    RelationshipBreak,
}

impl InjectedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InjectedKind::Spike => "spike",
            InjectedKind::LevelShift => "level_shift",
            InjectedKind::Drift => "drift",
            InjectedKind::VarianceBurst => "variance_burst",
            InjectedKind::StuckValue => "stuck_value",
            InjectedKind::Dropout => "dropout",
            InjectedKind::Outage => "outage",
            InjectedKind::RelationshipBreak => "relationship",
        }
    }
}

/// One injected anomaly on one series (`feature = None`: the whole customer).
#[derive(Debug, Clone, Copy)]
struct Anomaly {
    feature: Option<usize>,
    kind: InjectedKind,
    start: usize,
    /// Epochs the label covers.
    len: usize,
    /// Epochs the effect lasts in the data (persistent shifts: to the end).
    effect_len: usize,
    magnitude: f64,
    /// A spike: whether it is in the data — its log was emitted (not missing, not in an outage) and the
    /// feature's range could hold it (else it was withdrawn). A spike that is not, or whose log was written
    /// corrupted (`malformed_rate`), is not labelled.
    observed: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct SeriesParams {
    level: f64,
    noise: f64,
    df: f64,
    ar: f64,
    daily: f64,
    phase: f64,
    weekend: f64,
}

/// [`SeriesParams`] as stored per customer: single precision halves the fleet's memory (2 M customers).
#[derive(Debug, Clone, Copy, Default)]
struct StoredParams {
    level: f32,
    noise: f32,
    df: u8,
    ar: f32,
    daily: f32,
    phase: f32,
    weekend: f32,
}

impl StoredParams {
    fn store(p: SeriesParams) -> Self {
        StoredParams {
            level: p.level as f32,
            noise: p.noise as f32,
            df: p.df as u8,
            ar: p.ar as f32,
            daily: p.daily as f32,
            phase: p.phase as f32,
            weekend: p.weekend as f32,
        }
    }

    fn wide(&self) -> SeriesParams {
        SeriesParams {
            level: self.level as f64,
            noise: self.noise as f64,
            df: self.df as f64,
            ar: self.ar as f64,
            daily: self.daily as f64,
            phase: self.phase as f64,
            weekend: self.weekend as f64,
        }
    }
}

/// Per-customer state that persists across epochs.
struct CustomerState {
    id: CustomerId,
    partition: u32,
    rng: Rng,
    join: usize,
    /// Seconds into each epoch at which the customer logs.
    offset: i64,
    missing_rate: f64,
    reboot_rate: f64,
    params: [StoredParams; 20],
    ar_state: [f32; 20],
    last: [f32; 20],
    uptime: f64,
    reboots: u64,
    /// Epochs left in a reboot's after-effects.
    rebooting: u8,
    missing_left: u8,
    anomalies: Vec<Anomaly>,
    element: usize,
    habits: Habits,
    coupling: Coupling,
}

/// The coupled features: (feature, group, sign of its loading). Group 0 is the link's quality (a better
/// link: stronger signal, higher SNR and PHY rates), group 1 the household's load (more traffic: more
/// throughput, a busier channel and CPU, a longer queue).
const COUPLED: [(usize, usize, f32); 9] = [
    (fx::RSSI, 0, 1.0),
    (fx::SNR, 0, 1.0),
    (fx::PHY_TX, 0, 1.0),
    (fx::PHY_RX, 0, 1.0),
    (fx::THROUGHPUT_DOWN, 1, 1.0),
    (fx::THROUGHPUT_UP, 1, 1.0),
    (fx::CHANNEL_UTIL, 1, 1.0),
    (fx::CPU, 1, 1.0),
    (fx::WAN_LATENCY, 1, 1.0),
];

/// Features that move together ([`COUPLED`]): each group has a per-customer AR(1) factor `F_g` (φ = 0.3,
/// unit variance), and a coupled series' noise is `√(1 − ρ_g²)·own + ρ_g·σ·sign·F_g` — the same marginal
/// scale as without, a share ρ_g² ∈ [0.75, 0.95] of it in common with its group (a router's SNR is its
/// signal over its noise floor, its PHY rate follows its SNR; its traffic loads its channel and CPU). Drawn
/// from its own random stream; inert (ρ = 0) when the fleet has no relationships.
struct Coupling {
    rng: Rng,
    factor: [f32; 2],
    rho: [f32; 2],
}

impl Coupling {
    fn draw(cfg: &GenerateConfig, i: usize) -> Coupling {
        let mut c = Coupling {
            rng: Rng::new(cfg.seed, (i as u64 + 1) | (2 << 48)),
            factor: [0.0; 2],
            rho: [0.0; 2],
        };
        if cfg.relationships {
            for r in c.rho.iter_mut() {
                *r = c.rng.range(0.75, 0.95).sqrt() as f32;
            }
            for f in c.factor.iter_mut() {
                *f = c.rng.normal() as f32;
            }
        }
        c
    }

    fn advance(&mut self) {
        if self.rho == [0.0; 2] {
            return;
        }
        let phi = 0.3f64;
        for f in self.factor.iter_mut() {
            *f = (phi * *f as f64 + (1.0 - phi * phi).sqrt() * self.rng.normal()) as f32;
        }
    }

    /// Feature `k`'s (own-noise share, common term in noise units).
    fn of(&self, k: usize) -> (f64, f64) {
        match COUPLED.iter().find(|(f, _, _)| *f == k) {
            Some(&(_, g, sign)) if self.rho[g] > 0.0 => {
                let r = self.rho[g] as f64;
                (
                    (1.0 - r * r).sqrt(),
                    r * sign as f64 * self.factor[g] as f64,
                )
            }
            _ => (1.0, 0.0),
        }
    }
}

/// The index of a feature of [`FEATURES`] by name, at compile time (a name not in the set does not compile).
const fn feature_index(name: &str) -> usize {
    let mut i = 0;
    while i < FEATURES.len() {
        let (a, b) = (FEATURES[i].name.as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not a feature of the home Wi-Fi set")
}

/// Feature indices the normal behaviours refer to, derived from [`FEATURES`]' names.
mod fx {
    use super::feature_index as at;
    pub const RSSI: usize = at("rssi_dbm");
    pub const SNR: usize = at("snr_db");
    pub const NOISE_FLOOR: usize = at("noise_floor_dbm");
    pub const PHY_TX: usize = at("phy_rate_tx_mbps");
    pub const PHY_RX: usize = at("phy_rate_rx_mbps");
    pub const THROUGHPUT_DOWN: usize = at("throughput_down_mbps");
    pub const THROUGHPUT_UP: usize = at("throughput_up_mbps");
    pub const RETRANS: usize = at("retrans_pct");
    pub const CHANNEL_UTIL: usize = at("channel_util_pct");
    pub const INTERFERENCE: usize = at("interference_pct");
    pub const CLIENTS_2G: usize = at("clients_2g");
    pub const CLIENTS_5G: usize = at("clients_5g");
    pub const WAN_LATENCY: usize = at("wan_latency_ms");
    pub const DNS_FAIL: usize = at("dns_fail_pct");
    pub const CPU: usize = at("cpu_pct");
    pub const MEM: usize = at("mem_pct");
    pub const TEMP: usize = at("temp_c");
}

/// The lowest value of [`usage_curve`]: `0.75·cos h + 0.25·cos 2h` is smallest where `cos h = −0.75`.
const USAGE_TROUGH: f64 = -0.53125;

/// The series whose values bursts raise: traffic, its retransmissions and latency, DNS failures and CPU.
const BURSTY: [usize; 6] = [
    fx::THROUGHPUT_DOWN,
    fx::THROUGHPUT_UP,
    fx::RETRANS,
    fx::WAN_LATENCY,
    fx::DNS_FAIL,
    fx::CPU,
];

/// The radio series a Wi-Fi channel change moves.
const CHANNEL_SERIES: [usize; 3] = [fx::CHANNEL_UTIL, fx::INTERFERENCE, fx::NOISE_FLOOR];

/// Features a coarse firmware reports in whole units (dBm, dB, %, ms, °C).
const COARSE_WHOLE: [usize; 9] = [
    fx::RSSI,
    fx::SNR,
    fx::NOISE_FLOOR,
    fx::CHANNEL_UTIL,
    fx::INTERFERENCE,
    fx::WAN_LATENCY,
    fx::CPU,
    fx::MEM,
    fx::TEMP,
];

/// 802.11 a/g/n/ac/ax PHY rates (Mbps) a coarse firmware snaps its PHY rate to.
const PHY_RATES: [f64; 40] = [
    1.0, 2.0, 5.5, 6.0, 9.0, 11.0, 12.0, 18.0, 24.0, 36.0, 48.0, 54.0, 65.0, 72.2, 86.7, 130.0,
    144.4, 173.3, 195.0, 216.7, 260.0, 288.9, 390.0, 433.3, 468.0, 520.0, 585.0, 650.0, 702.0,
    780.0, 866.7, 1040.0, 1170.0, 1300.0, 1560.0, 1733.3, 2041.7, 2401.9, 2882.4, 4803.9,
];

/// Normal behaviours of real telemetry that are **not** incidents and are not labelled: a detector that
/// raises on them raises a false alert. Learned from the real sets in `../shared/datasets/` (QUALITY.md, "Real
/// telemetry"), whose residuals are autocorrelated, bursty, quantised and switch regimes:
///
/// * **slow wander** — 30 % of a customer's series carry, on top of their noise, an AR(1) component with a
///   time constant of 20–100 epochs (φ ∈ [0.95, 0.99]) and 0.3–1.2 times the noise's scale: load and
///   neighbours' interference drift for hours and come back;
/// * **Wi-Fi channel regimes** — 35 % of routers switch between two channels now and then (each stay 6 hours
///   to 3 days): channel utilisation, interference and the noise floor move by 1–3 of their noise scales
///   while on the second one, and back;
/// * **away periods** — 25 % of households go away every 4–20 days for 12 hours to 3 days: the usage-driven
///   series sit at their night-time trough all day, clients and throughput near zero;
/// * **bursts** — 40 % of the traffic, retransmission, latency, DNS-failure and CPU series burst 1–6 times a
///   day for 1–3 epochs, upwards by a Pareto(1.5) amount from 3 noise scales up to the series' own cap of
///   6–15 (a download, bufferbloat, a firmware task). A labelled spike is measured against that cap too:
///   it must stand out from the series' own bursts;
/// * **coarse firmware** — 25 % of routers report radio, latency, CPU, memory and temperature in whole units
///   and their PHY rate as the nearest standard 802.11 rate: quantised series whose steps can exceed their
///   noise.
///
/// Drawn from their own random stream, so a fleet generated without them is the earlier generator's.
struct Habits {
    rng: Rng,
    /// Per-epoch AR(1) coefficient of the slow wander (one per customer) and its scale per series (noise
    /// units; 0: none).
    wander_phi: f32,
    wander_amp: [f32; 20],
    wander: [f32; 20],
    /// Per-epoch probability of a channel switch (0: one channel), whether on the second channel, and the
    /// offsets of [`CHANNEL_SERIES`] there (noise units).
    channel_hazard: f32,
    second_channel: bool,
    channel_offset: [f32; 3],
    /// Per-epoch probability that an away period starts (0: never), its length range in epochs, and the
    /// epochs left of the current one.
    away_hazard: f32,
    away_len: (u16, u16),
    away_left: u16,
    /// Per-epoch burst probability per series (0: not bursty), the cap of a burst (noise units), the epochs
    /// left of the current burst and its size (noise units).
    burst_p: [f32; 20],
    burst_cap: [u8; 20],
    burst_left: [u8; 20],
    burst_size: [f32; 20],
    coarse: bool,
}

impl Habits {
    fn draw(cfg: &GenerateConfig, i: usize) -> Self {
        let mut h = Habits {
            rng: Rng::new(cfg.seed, (i as u64 + 1) | (1 << 48)),
            wander_phi: 0.0,
            wander_amp: [0.0; 20],
            wander: [0.0; 20],
            channel_hazard: 0.0,
            second_channel: false,
            channel_offset: [0.0; 3],
            away_hazard: 0.0,
            away_len: (0, 0),
            away_left: 0,
            burst_p: [0.0; 20],
            burst_cap: [0; 20],
            burst_left: [0; 20],
            burst_size: [0.0; 20],
            coarse: false,
        };
        if !cfg.normal_behaviours {
            return h;
        }
        let per_day = 86_400.0 / cfg.epoch_seconds.max(1) as f64;
        let rng = &mut h.rng;
        h.wander_phi = rng.range(0.95, 0.99) as f32;
        for a in h.wander_amp.iter_mut().take(18) {
            if rng.chance(0.3) {
                *a = rng.range(0.3, 1.2) as f32;
            }
        }
        if rng.chance(0.35) {
            // One switch per 6 hours to 3 days of 5-minute epochs, whatever the epoch length.
            h.channel_hazard = (1.0 / (rng.range(0.25, 3.0) * per_day)) as f32;
            for o in h.channel_offset.iter_mut() {
                let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
                *o = (sign * rng.range(1.0, 3.0)) as f32;
            }
        }
        if rng.chance(0.25) {
            h.away_hazard = (1.0 / (rng.range(4.0, 20.0) * per_day)) as f32;
            h.away_len = (
                (0.5 * per_day).round().max(1.0) as u16,
                (3.0 * per_day).round().max(2.0) as u16,
            );
        }
        for &k in &BURSTY {
            if rng.chance(0.4) {
                h.burst_p[k] = (rng.range(1.0, 6.0) / per_day) as f32;
                h.burst_cap[k] = rng.range(6.0, 15.0).round() as u8;
            }
        }
        h.coarse = rng.chance(0.25);
        h
    }

    /// The largest excursion a series makes in the ordinary course of its life (noise units): its noise's
    /// three-year extreme, or its bursts' cap.
    fn extreme(&self, k: usize, df: f64) -> f64 {
        extreme_excursion(df).max(self.burst_cap[k] as f64)
    }

    /// The scale of feature `k`'s normal variation, in its own units: its noise, widened by its slow wander
    /// (`σ·√(1 + a²)`), by its channel offset when it has two channels, and by a coarse firmware's rounding
    /// (`√(s² + q²/12)` for a quantum `q`: one unit, or the gap between the 802.11 rates around the level).
    /// Labelled shifts, drifts and their bounds are sized in it: a change within a series' normal variation
    /// is not an anomaly. Without the behaviours it is `p.noise` exactly.
    fn scale(&self, k: usize, p: &SeriesParams) -> f64 {
        let a = self.wander_amp[k] as f64;
        let mut s = p.noise * (1.0 + a * a).sqrt();
        if self.channel_hazard > 0.0
            && let Some(j) = CHANNEL_SERIES.iter().position(|&c| c == k)
        {
            s += self.channel_offset[j].abs() as f64 * p.noise;
        }
        if self.coarse {
            let q = if k == fx::PHY_TX || k == fx::PHY_RX {
                let i = PHY_RATES
                    .partition_point(|&r| r < p.level)
                    .clamp(1, PHY_RATES.len() - 1);
                PHY_RATES[i] - PHY_RATES[i - 1]
            } else if COARSE_WHOLE.contains(&k) {
                1.0
            } else {
                0.0
            };
            s = (s * s + q * q / 12.0).sqrt();
        }
        s
    }

    /// One epoch of the behaviours' own dynamics (they go on whether or not the log arrives).
    fn advance(&mut self) {
        let rng = &mut self.rng;
        let phi = self.wander_phi as f64;
        let innovation = (1.0 - phi * phi).sqrt();
        for (w, a) in self.wander.iter_mut().zip(&self.wander_amp) {
            if *a > 0.0 {
                *w = (phi * *w as f64 + innovation * rng.normal()) as f32;
            }
        }
        if self.channel_hazard > 0.0 && rng.chance(self.channel_hazard as f64) {
            self.second_channel = !self.second_channel;
        }
        if self.away_left > 0 {
            self.away_left -= 1;
        } else if self.away_hazard > 0.0 && rng.chance(self.away_hazard as f64) {
            let (lo, hi) = self.away_len;
            self.away_left = lo + rng.below((hi - lo) as u64 + 1) as u16;
        }
        for k in 0..20 {
            if self.burst_left[k] > 0 {
                self.burst_left[k] -= 1;
            }
            if self.burst_left[k] == 0
                && self.burst_p[k] > 0.0
                && rng.chance(self.burst_p[k] as f64)
            {
                self.burst_left[k] = 1 + rng.below(3) as u8;
                let u = 1.0 - rng.f64(); // (0, 1]
                self.burst_size[k] =
                    (3.0 * u.powf(-1.0 / 1.5)).min(self.burst_cap[k] as f64) as f32;
            }
        }
    }

    fn away(&self) -> bool {
        self.away_left > 0
    }

    /// What the behaviours add to feature `k`'s mean (noise units): a channel offset, a burst.
    fn mean_shift(&self, k: usize) -> f64 {
        let mut add = 0.0;
        if self.second_channel
            && let Some(j) = CHANNEL_SERIES.iter().position(|&c| c == k)
        {
            add += self.channel_offset[j] as f64;
        }
        if self.burst_left[k] > 0 {
            add += self.burst_size[k] as f64;
        }
        add
    }

    /// The slow wander of feature `k` (noise units).
    fn wander(&self, k: usize) -> f64 {
        (self.wander_amp[k] * self.wander[k]) as f64
    }

    /// A value as a coarse firmware reports it.
    fn quantise(&self, k: usize, v: f64) -> f64 {
        if !self.coarse || !v.is_finite() {
            return v;
        }
        if k == fx::PHY_TX || k == fx::PHY_RX {
            let i = PHY_RATES.partition_point(|&r| r < v);
            return match (i.checked_sub(1).map(|j| PHY_RATES[j]), PHY_RATES.get(i)) {
                (Some(lo), Some(&hi)) => {
                    if v - lo <= hi - v {
                        lo
                    } else {
                        hi
                    }
                }
                (Some(lo), None) => lo,
                (None, Some(&hi)) => hi,
                (None, None) => v,
            };
        }
        if COARSE_WHOLE.contains(&k) {
            return v.round();
        }
        v
    }
}

/// An away household's usage on feature `k`: nobody streams, devices sleep.
fn away_effect(k: usize, mean: f64) -> f64 {
    match k {
        fx::CLIENTS_2G | fx::CLIENTS_5G => mean * 0.1,
        fx::THROUGHPUT_DOWN | fx::THROUGHPUT_UP => mean * 0.15,
        fx::CPU => mean * 0.8,
        _ => mean,
    }
}

/// Totals of a generated fleet.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerateReport {
    pub customers: usize,
    pub epochs: usize,
    pub messages: u64,
    pub labels: u64,
    pub bytes: u64,
    /// Element-level faults written to element_labels.jsonl.
    pub element_faults: u64,
    /// Region-level faults written to region_labels.jsonl.
    pub region_faults: u64,
}

/// The largest excursion |noise| makes once in ~3·10⁵ observations (about three years of 5-minute logs),
/// for Student-t(df) noise of unit variance: 4.7 for Gaussian noise, 52 for t(3).
fn extreme_excursion(df: f64) -> f64 {
    match df as u32 {
        0..=3 => 52.0,
        4 => 26.5,
        5..=6 => 13.6,
        7..=10 => 8.3,
        _ => 5.5,
    }
}

fn day_phase(ts: i64) -> f64 {
    std::f64::consts::TAU * (ts.rem_euclid(86_400) as f64) / 86_400.0
}

/// Household usage curve over the day, in [−1, 1]: low at night, peak in the evening.
fn usage_curve(phi: f64) -> f64 {
    // A blend of harmonics: trough ~04:00, peak ~20:30.
    let h = phi - std::f64::consts::TAU * (20.5 / 24.0);
    0.75 * h.cos() + 0.25 * (2.0 * h).cos()
}

fn draw_params(f: &FeatureModel, rng: &mut Rng) -> SeriesParams {
    let level = if f.log_level {
        rng.lognormal(f.level.0, f.level.1)
    } else {
        f.level.0 + f.level.1 * rng.normal()
    };
    let noise_scale = rng.lognormal(f.noise.0, f.noise.1);
    let noise = if f.rel_noise {
        noise_scale * level.abs().max(0.5)
    } else {
        noise_scale
    };
    // Noise shape by feature family: network quality metrics are the heavy-tailed ones (bursty loss,
    // latency spikes), radio metrics moderately so, device metrics nearly Gaussian.
    let weights: &[f64; 5] = match f.name {
        "wan_latency_ms" | "wan_loss_pct" | "dns_fail_pct" | "retrans_pct" => {
            &[0.3, 0.3, 0.25, 0.1, 0.05]
        }
        "throughput_down_mbps" | "throughput_up_mbps" | "interference_pct" | "channel_util_pct" => {
            &[0.05, 0.15, 0.3, 0.3, 0.2]
        }
        "rssi_dbm" | "snr_db" | "noise_floor_dbm" | "phy_rate_tx_mbps" | "phy_rate_rx_mbps" => {
            &[0.0, 0.05, 0.2, 0.35, 0.4]
        }
        _ => &[0.0, 0.0, 0.1, 0.3, 0.6],
    };
    let df = [3.0, 4.0, 6.0, 10.0, 30.0][rng.weighted(weights)];
    let ar = rng.range(0.0, 0.6).powi(2) / 0.6;
    let daily_rel = f.daily * rng.range(0.2, 1.6);
    let daily = if f.rel_noise || f.log_level {
        daily_rel * level.abs()
    } else {
        daily_rel
    };
    SeriesParams {
        level,
        noise,
        df,
        ar,
        daily,
        phase: rng.range(-0.8, 0.8),
        weekend: rng.range(-0.1, 0.25),
    }
}

fn new_customer(cfg: &GenerateConfig, i: usize, elements: usize) -> CustomerState {
    let mut rng = Rng::new(cfg.seed, i as u64 + 1);
    let text = format!("cust-{i:07}");
    let id = CustomerId::parse(text.as_bytes(), b"").expect("generated ids are valid customer ids");
    let partition = (stable_hash(text.as_bytes()) % cfg.partitions as u64) as u32;
    let join = if rng.chance(cfg.join_fraction) && cfg.epochs > 24 {
        rng.below(cfg.epochs as u64 * 3 / 4) as usize + 12
    } else {
        0
    };
    let mut params = [StoredParams::default(); 20];
    for (k, f) in FEATURES.iter().enumerate() {
        params[k] = StoredParams::store(draw_params(f, &mut rng));
    }
    let habits = Habits::draw(cfg, i);
    let days = cfg.epochs as f64 * cfg.epoch_seconds as f64 / 86_400.0;
    let mut anomalies = Vec::new();
    let n = poisson(&mut rng, cfg.anomaly_rate * days);
    let active = cfg.epochs.saturating_sub(join);
    // The initial fleet has a clean history first; joiners may show anomalies from their third epoch.
    let earliest = if join == 0 {
        cfg.history_epochs
    } else {
        join + 2
    };
    for _ in 0..n {
        if active < 24 {
            break;
        }
        // Kinds and their durations (epochs).
        let kind = [
            InjectedKind::Spike,
            InjectedKind::LevelShift,
            InjectedKind::Drift,
            InjectedKind::VarianceBurst,
            InjectedKind::StuckValue,
            InjectedKind::Dropout,
        ][rng.weighted(&[0.3, 0.18, 0.12, 0.14, 0.13, 0.13])];
        // Stuck values are injected into real-valued features (integer counts repeat by nature).
        let candidates: Vec<usize> = (0..18.min(cfg.features.max(1)))
            .filter(|k| {
                kind != InjectedKind::StuckValue || matches!(FEATURES[*k].shape, Shape::Real { .. })
            })
            .collect();
        let feature = candidates[rng.below(candidates.len() as u64) as usize];
        let (len, effect_len, magnitude) = match kind {
            InjectedKind::Spike => (1, 1, rng.range(1.5, 4.0)),
            InjectedKind::LevelShift => (12, usize::MAX, rng.range(3.0, 8.0)),
            InjectedKind::Drift => {
                let ramp = 24 + rng.below(48) as usize;
                (ramp, usize::MAX, rng.range(7.0, 14.0))
            }
            InjectedKind::VarianceBurst => {
                let l = 12 + rng.below(24) as usize;
                (l, l, rng.range(3.5, 7.0))
            }
            InjectedKind::StuckValue => {
                let l = 12 + rng.below(24) as usize;
                (l, l, 0.0)
            }
            InjectedKind::Dropout => {
                let l = 6 + rng.below(18) as usize;
                (l, l, 0.0)
            }
            InjectedKind::Outage | InjectedKind::RelationshipBreak => (0, 0, 0.0),
        };
        if earliest + len + 2 >= cfg.epochs {
            continue;
        }
        let start = earliest + rng.below((cfg.epochs - earliest - len - 1) as u64) as usize;
        // (the extra draw only happens when asked for: default fleets stay byte-identical)
        let start = if join > 0 && cfg.cold_start_rate > 0.0 && rng.chance(cfg.cold_start_rate) {
            (join + 2 + rng.below(10) as usize).min(cfg.epochs - len - 3)
        } else {
            start
        };
        let mut sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
        // Shifts and drifts move away from a physical bound they would otherwise run into (a percentage
        // pushed below zero just sits at zero: that is not the anomaly being labelled).
        if matches!(
            kind,
            InjectedKind::LevelShift | InjectedKind::Drift | InjectedKind::Spike
        ) {
            let p = params[feature].wide();
            let reach = magnitude
                * if kind == InjectedKind::Spike {
                    p.noise * habits.extreme(feature, p.df)
                } else {
                    habits.scale(feature, &p)
                };
            sign = away_from_bounds(feature, &p, reach, sign);
        }
        push_unless_clash(
            &mut anomalies,
            Anomaly {
                feature: Some(feature),
                kind,
                start,
                len,
                effect_len,
                magnitude: sign * magnitude,
                observed: false,
            },
            cfg.epochs,
        );
    }
    let mut coupling = Coupling::draw(cfg, i);
    if cfg.relationships {
        let candidates: Vec<usize> = COUPLED
            .iter()
            .map(|(k, _, _)| *k)
            .filter(|k| *k < cfg.features)
            .collect();
        let n = poisson(&mut coupling.rng, 0.2 * cfg.anomaly_rate * days);
        for _ in 0..n {
            let rng = &mut coupling.rng;
            let (feature, len, magnitude, at) = (
                candidates.get(rng.below(candidates.len().max(1) as u64) as usize),
                1 + rng.below(3) as usize,
                rng.range(5.0, 7.5),
                rng.f64(),
            );
            let down = rng.chance(0.5);
            let Some(&feature) = feature else { break };
            if active < 24 || earliest + len + 2 >= cfg.epochs {
                break;
            }
            let start = earliest + (at * (cfg.epochs - earliest - len - 1) as f64) as usize;
            let p = params[feature].wide();
            let sign = away_from_bounds(
                feature,
                &p,
                magnitude * p.noise,
                if down { -1.0 } else { 1.0 },
            );
            push_unless_clash(
                &mut anomalies,
                Anomaly {
                    feature: Some(feature),
                    kind: InjectedKind::RelationshipBreak,
                    start,
                    len,
                    effect_len: len,
                    magnitude: sign * magnitude,
                    observed: false,
                },
                cfg.epochs,
            );
        }
    }
    CustomerState {
        id,
        partition,
        join,
        offset: 5 + rng.below(cfg.epoch_seconds.max(20) as u64 - 15) as i64,
        missing_rate: rng.range(0.0, 0.012),
        reboot_rate: rng.range(0.0, 1.0 / (288.0 * 7.0)),
        params,
        ar_state: [0.0; 20],
        last: [f32::NAN; 20],
        uptime: rng.range(3_600.0, 3_000_000.0).floor(),
        reboots: rng.below(20),
        rebooting: 0,
        missing_left: 0,
        anomalies,
        element: (i / 50).min(elements.saturating_sub(1)),
        rng,
        habits,
        coupling,
    }
}

/// The direction `sign` of a move of `reach` from feature `k`'s level (and its daily swing), turned away
/// from a physical bound of the feature it would otherwise run into.
fn away_from_bounds(k: usize, p: &SeriesParams, reach: f64, mut sign: f64) -> f64 {
    if let Some((lo, hi)) = FEATURES[k].shape.bounds() {
        if sign < 0.0 && p.level - p.daily.abs() - reach < lo {
            sign = 1.0;
        }
        if sign > 0.0 && p.level + p.daily.abs() + reach > hi {
            sign = -1.0;
        }
    }
    sign
}

/// Adds `a` unless it comes within 24 epochs of an anomaly of the same series (their labels would be
/// ambiguous).
fn push_unless_clash(anomalies: &mut Vec<Anomaly>, a: Anomaly, epochs: usize) {
    let clash = anomalies.iter().any(|b| {
        b.feature == a.feature
            && a.start < b.start + b.len.max(b.effect_len.min(epochs)) + 24
            && b.start < a.start + a.len.max(a.effect_len.min(epochs)) + 24
    });
    if !clash {
        anomalies.push(a);
    }
}

fn poisson(rng: &mut Rng, mean: f64) -> usize {
    let l = (-mean).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.f64();
        if p <= l || k > 10_000 {
            return k;
        }
        k += 1;
    }
}

/// Appends `v` with `decimals` fixed decimals (fast, no float formatting machinery).
fn push_fixed(s: &mut String, v: f64, decimals: u8) {
    let scale = [1.0, 10.0, 100.0, 1000.0][decimals.min(3) as usize];
    let scaled = (v * scale).round();
    if !scaled.is_finite() || scaled.abs() > 9.0e15 {
        let _ = write!(s, "{v}");
        return;
    }
    let mut n = scaled as i64;
    if n < 0 {
        s.push('-');
        n = -n;
    }
    let int = n / scale as i64;
    let frac = n % scale as i64;
    let _ = write!(s, "{int}");
    if decimals > 0 {
        s.push('.');
        let mut div = scale as i64 / 10;
        while div > 0 {
            s.push((b'0' + ((frac / div) % 10) as u8) as char);
            div /= 10;
        }
    }
}

/// One log's values for one customer at epoch `e` (NaN = missing feature), or `None` when the log is missing.
/// Whether a customer is among the members a congestion starting at epoch `s` reaches (four in five).
fn congested_member(c: &CustomerState, s: usize) -> bool {
    let h = stable_hash(format!("{}@{s}", c.id).as_bytes());
    h % 5 != 0
}

/// The features an element's congestion moves, and which way: throughput down, latency up.
const CONGESTED: [(usize, f64); 3] = [
    (fx::THROUGHPUT_DOWN, -1.0),
    (fx::THROUGHPUT_UP, -1.0),
    (fx::WAN_LATENCY, 1.0),
];

fn step(
    c: &mut CustomerState,
    e: usize,
    ts: i64,
    outage: bool,
    congestion: f64,
    out: &mut [f64; 20],
) -> bool {
    let rng = &mut c.rng;
    // Draw the log-level events first so the random stream does not depend on what follows.
    let missing_draw = rng.f64();
    let pair_draw = rng.f64();
    let reboot_draw = rng.f64();
    if e < c.join {
        return false;
    }
    // The router keeps running (and counting uptime) whether or not its log arrives; so do its habits.
    c.habits.advance();
    c.coupling.advance();
    let rebooted = reboot_draw < c.reboot_rate;
    if rebooted {
        c.uptime = c.rng.range(20.0, 120.0).floor();
        c.reboots += 1;
        c.rebooting = 2;
    } else {
        c.uptime += 300.0;
    }
    if outage {
        return false;
    }
    if c.missing_left > 0 {
        c.missing_left -= 1;
        return false;
    }
    if missing_draw < c.missing_rate {
        // A missing log, sometimes two in a row.
        if pair_draw < 0.3 {
            c.missing_left = 1;
        }
        return false;
    }
    let phi = day_phase(ts);
    let weekend = crate::timefmt::weekday(ts) >= 5;
    for k in 0..20 {
        let f = &FEATURES[k];
        let p = c.params[k].wide();
        match f.shape {
            Shape::Uptime => {
                out[k] = c.uptime;
                continue;
            }
            Shape::Reboots => {
                out[k] = c.reboots as f64;
                continue;
            }
            _ => {}
        }
        let away = f.usage && c.habits.away();
        let shape = if away {
            USAGE_TROUGH
        } else if f.usage {
            usage_curve(phi + p.phase)
        } else {
            (phi + p.phase).cos()
        };
        let mut mean = p.level + p.daily * shape;
        if weekend && f.usage && !away {
            mean += p.weekend * p.level.abs();
        }
        if away {
            mean = away_effect(k, mean);
        }
        mean += c.habits.mean_shift(k) * p.noise;

        if congestion > 0.0
            && let Some((_, sign)) = CONGESTED.iter().find(|(f, _)| *f == k)
        {
            mean += sign * congestion * c.habits.scale(k, &p);
        }
        // Heavy-tailed AR(1) noise, its share of the variance when the feature is coupled to others.
        let (own, common) = c.coupling.of(k);
        let innovation = c.rng.student_t(p.df) * p.noise;
        let ar_state = p.ar * c.ar_state[k] as f64 + (1.0 - p.ar * p.ar).sqrt() * innovation;
        c.ar_state[k] = ar_state as f32;
        let mut noise = if common == 0.0 && own == 1.0 {
            ar_state
        } else {
            own * ar_state + common * p.noise
        } + c.habits.wander(k) * p.noise;
        let mut value_override = None;
        let mut spike: Option<(usize, f64)> = None;
        for (i, a) in c.anomalies.iter_mut().enumerate() {
            if a.feature != Some(k) || e < a.start {
                continue;
            }
            let into = e - a.start;
            if into >= a.effect_len {
                continue;
            }
            match a.kind {
                // A spike is measured against the series' own extremes: 1.5 to 4 times the largest
                // excursion its noise makes in about three years. Heavy-tailed series make big excursions
                // every week; an anomaly there has to stand out from those, not from a Gaussian's.
                InjectedKind::Spike => {
                    // (this log is emitted — the missing and outage cases returned above — if perhaps corrupted)
                    a.observed = true;
                    let add = a.magnitude * p.noise * c.habits.extreme(k, p.df);
                    spike = Some((i, add));
                    mean += add;
                }
                // Shifts and drifts are measured against the series' normal variation, its habits included.
                InjectedKind::LevelShift => mean += a.magnitude * c.habits.scale(k, &p),
                InjectedKind::Drift => {
                    let frac = ((into + 1) as f64 / a.len as f64).min(1.0);
                    mean += a.magnitude * c.habits.scale(k, &p) * frac;
                }
                InjectedKind::VarianceBurst => noise *= a.magnitude.abs(),
                InjectedKind::StuckValue => {
                    if c.last[k].is_finite() {
                        value_override = Some(c.last[k] as f64);
                    }
                }
                InjectedKind::Dropout => value_override = Some(f64::NAN),
                InjectedKind::Outage => {}
                // The feature moves, its group does not: inside its own band, not what the others imply.
                InjectedKind::RelationshipBreak => {
                    a.observed = true;
                    mean += a.magnitude * p.noise;
                }
            }
        }
        // The spike, if there is one, with the mean it leaves out (no other anomaly shares a spike's feature
        // and epoch).
        let spike = spike.map(|(i, add)| (i, mean - add));
        let rebooting = c.rebooting > 0;
        if rebooting {
            mean = reboot_effect(f.name, mean);
        }
        if let Some((i, free)) = spike {
            // A spike the feature's physical range cannot hold would be clamped (or rounded) onto its bound,
            // where it may be an ordinary value of this series (a channel at 35 ± 3.5 % "spiking" to 0 %):
            // such a spike is not injected, and so not labelled.
            let v = c.habits.quantise(k, shaped(f.shape, mean + noise));
            let at_bound = f.shape.bounds().is_some_and(|(lo, hi)| v <= lo || v >= hi);
            if at_bound {
                mean = if rebooting {
                    reboot_effect(f.name, free)
                } else {
                    free
                };
                c.anomalies[i].observed = false;
            }
        }
        let v = match value_override {
            Some(v) => v,
            None => c.habits.quantise(k, shaped(f.shape, mean + noise)),
        };
        out[k] = v;
        if v.is_finite() {
            c.last[k] = v as f32;
        }
    }
    if c.rebooting > 0 {
        c.rebooting -= 1;
    }
    true
}

/// Reboot after-effects on a feature's mean: devices reconnect, traffic and CPU are briefly off.
fn reboot_effect(feature: &str, mean: f64) -> f64 {
    match feature {
        "clients_2g" | "clients_5g" => mean * 0.2,
        "throughput_down_mbps" | "throughput_up_mbps" => mean * 0.3,
        "cpu_pct" => mean + 25.0,
        _ => mean,
    }
}

/// The value a feature reports for `raw`: clamped into its range and rounded to its resolution.
fn shaped(shape: Shape, raw: f64) -> f64 {
    match shape {
        Shape::Real { lo, hi, decimals } => {
            let scale = [1.0, 10.0, 100.0, 1000.0][decimals.min(3) as usize];
            (raw.clamp(lo, hi) * scale).round() / scale
        }
        Shape::Count => raw.max(0.0).round(),
        Shape::Uptime | Shape::Reboots => raw,
    }
}

/// Customers per chunk of work (a fixed size: the file's line order must not depend on the thread count).
const CHUNK: usize = 32_768;

/// Writes a fleet to `out_dir`.
pub fn generate(cfg: &GenerateConfig, out_dir: &Path) -> std::io::Result<GenerateReport> {
    std::fs::create_dir_all(out_dir)?;
    let epoch_len = cfg.epoch_seconds;
    let start = cfg.start - cfg.start.rem_euclid(epoch_len);
    let elements = cfg.customers.div_ceil(50).max(1);
    let regions = elements.div_ceil(20).max(1);
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.threads
    }
    .max(1);

    // Customers, drawn in parallel (each from its own random stream, so the thread count does not matter),
    // kept as one contiguous part per thread (customer `i` is at `parts[i / per][i % per]`).
    // A multiple of CHUNK, so that chunk boundaries (and so the order of lines) do not depend on threads.
    let per_part = cfg
        .customers
        .div_ceil(threads)
        .max(1)
        .next_multiple_of(CHUNK);
    let mut parts_c: Vec<Vec<CustomerState>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    (t * per_part..((t + 1) * per_part).min(cfg.customers))
                        .map(|i| new_customer(cfg, i, elements))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let customer_at = |parts: &[Vec<CustomerState>], i: usize| -> Option<(usize, usize)> {
        let (p, o) = (i / per_part, i % per_part);
        (p < parts.len() && o < parts[p].len()).then_some((p, o))
    };

    // Element outages.
    let mut outages: Vec<(usize, usize, usize)> = Vec::new(); // (element, start, len)
    let mut orng = Rng::new(cfg.seed, 0xE1E);
    let days = cfg.epochs as f64 * epoch_len as f64 / 86_400.0;
    for el in 0..elements {
        let n = poisson(&mut orng, cfg.outage_rate * days);
        for _ in 0..n {
            let len = 4 + orng.below(20) as usize;
            let first = cfg.history_epochs.min(cfg.epochs / 2);
            if cfg.epochs < first + len + 2 {
                continue;
            }
            let s = first + orng.below((cfg.epochs - first - len) as u64) as usize;
            if !outages
                .iter()
                .any(|(e, os, ol)| *e == el && s < os + ol + 12 && *os < s + len + 12)
            {
                outages.push((el, s, len));
            }
        }
    }

    // Element congestions (element, start, len, magnitude), apart from the element's outages and each other.
    let mut congestions: Vec<(usize, usize, usize, f64)> = Vec::new();
    if cfg.congestion_rate > 0.0 {
        let mut crng = Rng::new(cfg.seed, 0xC0C);
        for el in 0..elements {
            let n = poisson(&mut crng, cfg.congestion_rate * days);
            for _ in 0..n {
                let len = 6 + crng.below(19) as usize;
                let magnitude = 0.6 + 0.6 * crng.f64();
                let first = cfg.history_epochs.min(cfg.epochs / 2);
                if cfg.epochs < first + len + 2 {
                    continue;
                }
                let s = first + crng.below((cfg.epochs - first - len) as u64) as usize;
                let clash = |e: usize, os: usize, ol: usize| {
                    e == el && s < os + ol + 12 && os < s + len + 12
                };
                if !outages.iter().any(|(e, os, ol)| clash(*e, *os, *ol))
                    && !congestions.iter().any(|(e, os, ol, _)| clash(*e, *os, *ol))
                {
                    congestions.push((el, s, len, magnitude));
                }
            }
        }
    }

    // Region faults (region, start, len, outage or congestion, magnitude): every element of the region at
    // once. Its elements' own faults that would overlap one are dropped: the region's becomes theirs.
    let mut region_faults: Vec<(usize, usize, usize, bool, f64)> = Vec::new();
    if cfg.region_fault_rate > 0.0 {
        let mut rrng = Rng::new(cfg.seed, 0x4E6);
        for r in 0..regions {
            let n = poisson(&mut rrng, cfg.region_fault_rate * days);
            for _ in 0..n {
                let outage = rrng.below(2) == 0;
                let len = if outage {
                    4 + rrng.below(20) as usize
                } else {
                    6 + rrng.below(19) as usize
                };
                let magnitude = 0.6 + 0.6 * rrng.f64();
                let first = cfg.history_epochs.min(cfg.epochs / 2);
                if cfg.epochs < first + len + 2 {
                    continue;
                }
                let s = first + rrng.below((cfg.epochs - first - len) as u64) as usize;
                if !region_faults
                    .iter()
                    .any(|(rr, os, ol, _, _)| *rr == r && s < os + ol + 12 && *os < s + len + 12)
                {
                    region_faults.push((r, s, len, outage, magnitude));
                }
            }
        }
        for &(r, s, len, outage, magnitude) in &region_faults {
            let mine = |el: usize| el * regions / elements.max(1) == r;
            let clash =
                |el: usize, os: usize, ol: usize| mine(el) && s < os + ol + 12 && os < s + len + 12;
            outages.retain(|&(el, os, ol)| !clash(el, os, ol));
            congestions.retain(|&(el, os, ol, _)| !clash(el, os, ol));
            for el in (0..elements).filter(|el| mine(*el)) {
                if outage {
                    outages.push((el, s, len));
                } else {
                    congestions.push((el, s, len, magnitude));
                }
            }
        }
    }

    let telemetry = out_dir.join("telemetry.jsonl");
    let mut w = BufWriter::with_capacity(8 << 20, File::create(&telemetry)?);
    let header = serde_json::to_string(&RecordedHeader::new("telemetry", cfg.partitions))
        .map_err(std::io::Error::other)?;
    writeln!(w, "{header}")?;
    let mut report = GenerateReport {
        customers: cfg.customers,
        epochs: cfg.epochs,
        ..Default::default()
    };
    report.bytes += header.len() as u64 + 1;
    let mut offsets = vec![0u64; cfg.partitions as usize];
    let parts = cfg.partitions as usize;
    let features = cfg.features.clamp(1, FEATURES.len());
    let mut mrng = Rng::new(cfg.seed, 0xBAD);
    // (customer, epoch) of the logs written corrupted
    let mut corrupted: std::collections::HashSet<(String, usize)> =
        std::collections::HashSet::new();
    // Customers are processed in chunks with buffers reused from chunk to chunk: memory stays bounded and
    // no page of it is touched for the first time twice, whatever the fleet size.
    let mut values: Vec<Option<[f64; 20]>> = Vec::with_capacity(CHUNK);
    let mut slots: Vec<(u32, u64)> = Vec::with_capacity(CHUNK);
    let mut bufs: Vec<Vec<String>> = vec![vec![String::new(); parts]; threads];

    for e in 0..cfg.epochs {
        let epoch_start = start + e as i64 * epoch_len;
        let down: Vec<usize> = outages
            .iter()
            .filter(|(_, s, l)| e >= *s && e < s + l)
            .map(|(el, _, _)| *el)
            .collect();
        let congested: Vec<(usize, usize, f64)> = congestions
            .iter()
            .filter(|(_, s, l, _)| e >= *s && e < s + l)
            .map(|(el, s, _, m)| (*el, *s, *m))
            .collect();
        for chunk in parts_c.iter_mut().flat_map(|p| p.chunks_mut(CHUNK)) {
            // Pass 1 (parallel): the customers' values, or `None` for a missing log.
            values.clear();
            values.resize(chunk.len(), None);
            let per = chunk.len().div_ceil(threads).max(1);
            std::thread::scope(|sc| {
                for (cs, vs) in chunk.chunks_mut(per).zip(values.chunks_mut(per)) {
                    let down = &down;
                    let congested = &congested;
                    sc.spawn(move || {
                        for (c, v) in cs.iter_mut().zip(vs.iter_mut()) {
                            let mut vals = [0f64; 20];
                            let outage = down.contains(&c.element);
                            let congestion = congested
                                .iter()
                                .find(|(el, s, _)| *el == c.element && congested_member(c, *s))
                                .map_or(0.0, |(_, _, m)| *m);
                            let ts = epoch_start + c.offset;
                            if step(c, e, ts, outage, congestion, &mut vals) {
                                *v = Some(vals);
                            }
                        }
                    });
                }
            });
            // Offsets per partition, in customer order.
            slots.clear();
            for (c, v) in chunk.iter().zip(values.iter()) {
                if v.is_some() {
                    let p = c.partition as usize;
                    slots.push((c.partition, offsets[p]));
                    offsets[p] += 1;
                } else {
                    slots.push((u32::MAX, 0));
                }
            }
            // Pass 2 (parallel): format, one buffer per partition per thread.
            let chunk_ref: &[CustomerState] = chunk;
            std::thread::scope(|sc| {
                for (((cs, vs), ss), tb) in chunk_ref
                    .chunks(per)
                    .zip(values.chunks(per))
                    .zip(slots.chunks(per))
                    .zip(bufs.iter_mut())
                {
                    sc.spawn(move || {
                        for b in tb.iter_mut() {
                            b.clear();
                        }
                        for ((c, v), (p, off)) in cs.iter().zip(vs).zip(ss) {
                            if let Some(vals) = v {
                                let ts = epoch_start + c.offset;
                                format_message(
                                    &mut tb[*p as usize],
                                    *p,
                                    *off,
                                    c.id.as_str(),
                                    ts,
                                    vals,
                                    features,
                                );
                            }
                        }
                    });
                }
            });
            for p in 0..parts {
                for tb in bufs.iter().take(chunk.len().div_ceil(per)) {
                    let b = &tb[p];
                    if cfg.malformed_rate > 0.0 {
                        for line in b.lines() {
                            let l = if mrng.chance(cfg.malformed_rate) {
                                // (its record goes to the dead-letter output: a spike on it is not labelled)
                                if let Some(key) = line
                                    .split_once("\"key\":\"")
                                    .and_then(|(_, rest)| rest.split_once('"'))
                                {
                                    corrupted.insert((key.0.to_string(), e));
                                }
                                corrupt(line, &mut mrng)
                            } else {
                                line.to_string()
                            };
                            w.write_all(l.as_bytes())?;
                            w.write_all(b"\n")?;
                            report.bytes += l.len() as u64 + 1;
                        }
                    } else {
                        w.write_all(b.as_bytes())?;
                        report.bytes += b.len() as u64;
                    }
                }
            }
            report.messages += values.iter().filter(|v| v.is_some()).count() as u64;
        }
    }
    w.flush()?;

    // Labels, once the data is written: a spike whose log never arrived is not one.
    let mut labels: Vec<(i64, String, String, &'static str, i64, i64)> = Vec::new();
    for c in parts_c.iter().flatten() {
        for a in &c.anomalies {
            if matches!(
                a.kind,
                InjectedKind::Spike | InjectedKind::RelationshipBreak
            ) && (!a.observed || corrupted.contains(&(c.id.to_string(), a.start)))
            {
                continue;
            }
            let s = start + a.start as i64 * epoch_len;
            let name = match a.feature {
                Some(k) => FEATURES[k].name.to_string(),
                None => "*".to_string(),
            };
            labels.push((
                s,
                c.id.to_string(),
                name,
                a.kind.as_str(),
                s + a.len as i64 * epoch_len,
                start + c.join as i64 * epoch_len,
            ));
        }
    }
    // Customers are numbered in blocks of 50 per element: index the outages' customers directly.
    for (el, s, len) in &outages {
        let members = (el * 50..(el + 1) * 50)
            .filter_map(|i| customer_at(&parts_c, i))
            .map(|(p, o)| &parts_c[p][o])
            .filter(|c| c.element == *el);
        for c in members {
            if c.join > *s {
                continue;
            }
            let st = start + *s as i64 * epoch_len;
            labels.push((
                st,
                c.id.to_string(),
                "*".into(),
                "outage",
                st + *len as i64 * epoch_len,
                start + c.join as i64 * epoch_len,
            ));
        }
    }
    // A congestion is labelled on each member it reaches, per feature it moves (kind `congestion`).
    for (el, s, len, _) in &congestions {
        for c in (el * 50..(el + 1) * 50)
            .filter_map(|i| customer_at(&parts_c, i))
            .map(|(p, o)| &parts_c[p][o])
            .filter(|c| c.element == *el && c.join <= *s && congested_member(c, *s))
        {
            let st = start + *s as i64 * epoch_len;
            for (k, _) in CONGESTED {
                labels.push((
                    st,
                    c.id.to_string(),
                    FEATURES[k].name.to_string(),
                    "congestion",
                    st + *len as i64 * epoch_len,
                    start + c.join as i64 * epoch_len,
                ));
            }
        }
    }
    labels.sort();

    // The element-level faults, for incident scoring (`eval --element-labels`).
    let mut faults: Vec<(i64, String, String, &'static str, i64)> = Vec::new();
    let region_of = |el: usize| format!("region-{:03}", el * regions / elements.max(1));
    for (el, s, len) in &outages {
        let st = start + *s as i64 * epoch_len;
        faults.push((
            st,
            format!("elem-{el:05}"),
            region_of(*el),
            "outage",
            st + *len as i64 * epoch_len,
        ));
    }
    for (el, s, len, _) in &congestions {
        let st = start + *s as i64 * epoch_len;
        faults.push((
            st,
            format!("elem-{el:05}"),
            region_of(*el),
            "congestion",
            st + *len as i64 * epoch_len,
        ));
    }
    faults.sort();
    let mut ew = BufWriter::new(File::create(out_dir.join("element_labels.jsonl"))?);
    for (s, el, region, kind, end) in &faults {
        writeln!(
            ew,
            "{{\"element\":\"{el}\",\"region\":\"{region}\",\"kind\":\"{kind}\",\"start\":{s},\"end\":{end}}}"
        )?;
    }
    ew.flush()?;
    report.element_faults = faults.len() as u64;
    let mut rw = BufWriter::new(File::create(out_dir.join("region_labels.jsonl"))?);
    region_faults.sort_by_key(|f| (f.1, f.0));
    for &(r, s, len, outage, _) in &region_faults {
        let st = start + s as i64 * epoch_len;
        writeln!(
            rw,
            "{{\"region\":\"region-{r:03}\",\"kind\":\"{}\",\"start\":{st},\"end\":{},\"elements\":{}}}",
            if outage { "outage" } else { "congestion" },
            st + len as i64 * epoch_len,
            (0..elements)
                .filter(|el| el * regions / elements.max(1) == r)
                .count()
        )?;
    }
    rw.flush()?;
    report.region_faults = region_faults.len() as u64;

    let mut lw = BufWriter::new(File::create(out_dir.join("labels.jsonl"))?);
    for (s, c, f, k, end, joined) in &labels {
        writeln!(
            lw,
            "{{\"customer\":\"{c}\",\"feature\":\"{f}\",\"kind\":\"{k}\",\"start\":{s},\"end\":{end},\"joined\":{joined}}}"
        )?;
    }
    lw.flush()?;
    report.labels = labels.len() as u64;

    let mut tw = BufWriter::new(File::create(out_dir.join("topology.csv"))?);
    writeln!(tw, "customer,element,region")?;
    for c in parts_c.iter().flatten() {
        writeln!(
            tw,
            "{},elem-{:05},region-{:03}",
            c.id,
            c.element,
            c.element * regions / elements.max(1)
        )?;
    }
    tw.flush()?;
    Ok(report)
}

fn format_message(
    s: &mut String,
    partition: u32,
    offset: u64,
    id: &str,
    ts: i64,
    vals: &[f64; 20],
    features: usize,
) {
    let _ = write!(
        s,
        "{{\"partition\":{partition},\"offset\":{offset},\"timestamp\":{},\"key\":\"{id}\",\"value\":{{\"customer_id\":\"{id}\",\"ts\":{ts}",
        ts * 1000 + 137
    );
    for (k, f) in FEATURES.iter().enumerate().take(features) {
        s.push_str(",\"");
        s.push_str(f.name);
        s.push_str("\":");
        let v = vals[k];
        if !v.is_finite() {
            s.push_str("null");
            continue;
        }
        match f.shape {
            Shape::Real { decimals, .. } => push_fixed(s, v, decimals),
            Shape::Count | Shape::Uptime | Shape::Reboots => push_fixed(s, v, 0),
        }
    }
    s.push_str("}}\n");
}

/// Breaks a message in one of the ways producers break messages.
fn corrupt(line: &str, rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => line[..line.len() / 2].to_string(),
        1 => line.replacen("\"rssi_dbm\":", "\"rssi_dbm\":\"n/a\",\"x\":", 1),
        2 => line.replacen("\"snr_db\":", "\"snr_db\":NaN,\"y\":", 1),
        3 => line.replacen("\"ts\":", "\"ts\":9", 1),
        4 => line.replacen("\"customer_id\":\"cust-", "\"customer_id\":\"CUST ", 1),
        _ => line.replacen("\"cpu_pct\":", "\"cpu_load\":", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_formatting() {
        let mut s = String::new();
        push_fixed(&mut s, -61.25, 1);
        s.push(' ');
        push_fixed(&mut s, 0.004, 3);
        s.push(' ');
        push_fixed(&mut s, 12.0, 0);
        s.push(' ');
        push_fixed(&mut s, -0.04, 1);
        assert_eq!(s, "-61.3 0.004 12 0.0");
    }

    #[test]
    fn every_labelled_spike_is_in_the_data_inside_its_features_range() {
        // Many spikes on a small fleet: bounded features near their bounds (a channel at 35 ± 3.5 %), missing
        // logs, outages and corrupted lines. A spike the range cannot hold would be clamped to a bound, one
        // on a missing log left no trace, one on a corrupted line is dead-lettered: none is labelled.
        let dir = tempfile::tempdir().unwrap();
        let cfg = GenerateConfig {
            customers: 60,
            epochs: 600,
            seed: 11,
            anomaly_rate: 40.0,
            outage_rate: 1.0,
            malformed_rate: 0.01,
            history_epochs: 24,
            threads: 1,
            ..Default::default()
        };
        generate(&cfg, dir.path()).unwrap();
        let mut logs: std::collections::HashMap<(String, i64), serde_json::Value> =
            std::collections::HashMap::new();
        let text = std::fs::read_to_string(dir.path().join("telemetry.jsonl")).unwrap();
        let spec = crate::spec::Spec::embedded();
        let mut parser = crate::sources::parse::LogParser::new(&spec);
        let mut log = crate::record::Log::empty(CustomerId::parse(b"x", b"").unwrap());
        for line in text.lines().skip(1) {
            if parser.parse_recorded(line.as_bytes(), &mut log).is_err() {
                continue; // dead-lettered by the pipeline
            }
            let m: serde_json::Value = serde_json::from_str(line).unwrap();
            let v = m["value"].clone();
            let c = v["customer_id"].as_str().unwrap().to_string();
            let e = v["ts"].as_i64().unwrap().div_euclid(cfg.epoch_seconds);
            logs.insert((c, e), v);
        }
        let labels = std::fs::read_to_string(dir.path().join("labels.jsonl")).unwrap();
        let mut spikes = 0;
        for line in labels.lines() {
            let l: serde_json::Value = serde_json::from_str(line).unwrap();
            if l["kind"] != "spike" {
                continue;
            }
            spikes += 1;
            let c = l["customer"].as_str().unwrap().to_string();
            let e = l["start"].as_i64().unwrap().div_euclid(cfg.epoch_seconds);
            let f = l["feature"].as_str().unwrap();
            let log = logs
                .get(&(c.clone(), e))
                .unwrap_or_else(|| panic!("spike of {c} {f} at epoch {e} on a missing log"));
            let x = log[f].as_f64().unwrap();
            let k = FEATURES.iter().position(|m| m.name == f).unwrap();
            if let Some((lo, hi)) = FEATURES[k].shape.bounds() {
                assert!(
                    x > lo && x < hi,
                    "spike of {c} {f} at epoch {e} clamped to {x}"
                );
            }
        }
        assert!(spikes > 200, "{spikes} spikes");
    }

    fn params(level: f64, noise: f64) -> SeriesParams {
        SeriesParams {
            level,
            noise,
            df: 30.0,
            ar: 0.0,
            daily: 0.0,
            phase: 0.0,
            weekend: 0.0,
        }
    }

    #[test]
    fn without_normal_behaviours_the_habits_are_inert() {
        let cfg = GenerateConfig {
            normal_behaviours: false,
            ..Default::default()
        };
        for i in 0..50 {
            let mut h = Habits::draw(&cfg, i);
            for _ in 0..2000 {
                h.advance();
                assert!(!h.away());
                for k in 0..20 {
                    assert_eq!(h.mean_shift(k), 0.0);
                    assert_eq!(h.wander(k), 0.0);
                    assert_eq!(h.quantise(k, 433.21), 433.21);
                    let p = params(500.0, 3.7);
                    assert_eq!(h.scale(k, &p), 3.7, "labels sized exactly as before");
                    assert_eq!(h.extreme(k, 4.0), extreme_excursion(4.0));
                }
            }
        }
    }

    #[test]
    fn coarse_firmware_reports_whole_units_and_standard_phy_rates() {
        let cfg = GenerateConfig::default();
        let h = (0..200)
            .map(|i| Habits::draw(&cfg, i))
            .find(|h| h.coarse)
            .expect("a quarter of routers are coarse");
        assert_eq!(h.quantise(fx::PHY_TX, 860.0), 866.7);
        assert_eq!(h.quantise(fx::PHY_RX, 95.0), 86.7);
        assert_eq!(
            h.quantise(fx::PHY_RX, 0.2),
            1.0,
            "below the table: its lowest rate"
        );
        assert_eq!(
            h.quantise(fx::PHY_RX, 9000.0),
            4803.9,
            "above it: its highest"
        );
        assert_eq!(h.quantise(fx::CPU, 12.6), 13.0);
        assert!(h.quantise(fx::CPU, f64::NAN).is_nan());
        assert_eq!(
            h.quantise(fx::THROUGHPUT_DOWN, 12.6),
            12.6,
            "throughput keeps its decimals"
        );
        // The quantisation noise q²/12 widens the scale labels are sized in: whole units on a σ = 0.5 series.
        let p = params(40.0, 0.5);
        let s = h.scale(fx::CPU, &p);
        let a = h.wander_amp[fx::CPU] as f64;
        let want = ((0.5f64 * (1.0 + a * a).sqrt()).powi(2) + 1.0 / 12.0).sqrt();
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
        // A PHY rate at 600 Mbps sits between 585 and 650: a quantum of 65.
        let p = params(600.0, 10.0);
        let a = h.wander_amp[fx::PHY_TX] as f64;
        let want = ((10.0f64 * (1.0 + a * a).sqrt()).powi(2) + 65.0f64.powi(2) / 12.0).sqrt();
        assert!((h.scale(fx::PHY_TX, &p) - want).abs() < 1e-9);
    }

    #[test]
    fn bursts_away_periods_and_channels_keep_to_their_ranges() {
        let cfg = GenerateConfig::default();
        let (mut bursts, mut away_epochs, mut switches) = (0u64, 0u64, 0u64);
        for i in 0..300 {
            let mut h = Habits::draw(&cfg, i);
            let mut left = [0u8; 20];
            let mut away_run = 0u32;
            let mut channel = false;
            for _ in 0..(288 * 30) {
                h.advance();
                for (k, left) in left.iter_mut().enumerate() {
                    let b = h.burst_left[k] > 0;
                    if h.burst_p[k] == 0.0 {
                        assert!(!b, "only the bursty series burst");
                        continue;
                    }
                    assert!(BURSTY.contains(&k));
                    if b {
                        let size = h.burst_size[k];
                        assert!(
                            size >= 3.0 - 1e-6 && size <= h.burst_cap[k] as f32,
                            "{size}"
                        );
                        assert!((6..=15).contains(&h.burst_cap[k]));
                        assert!(h.burst_left[k] <= 3, "a burst lasts 1–3 epochs");
                        if h.burst_left[k] >= *left {
                            bursts += 1; // a new one (a running one counts down)
                        }
                    }
                    *left = h.burst_left[k];
                }
                if h.away() {
                    away_epochs += 1;
                    away_run += 1;
                    assert!(away_run <= 3 * 288 + 1, "away at most three days");
                } else {
                    away_run = 0;
                }
                if h.second_channel != channel {
                    switches += 1;
                    channel = h.second_channel;
                    assert!(h.channel_hazard > 0.0);
                }
                for k in 0..20 {
                    let w = h.wander(k);
                    assert!(w.abs() < 1.2 * 7.0, "the wander stays near its scale: {w}");
                    if h.wander_amp[k] == 0.0 {
                        assert_eq!(w, 0.0);
                    }
                }
            }
        }
        // 300 routers × 30 days: 40 % of 6 bursty series bursting 1–6 times a day, a quarter of households
        // away now and then, a third switching channels.
        assert!(bursts > 300 * 30 * 6 / 4, "{bursts} bursts");
        assert!(away_epochs > 300 * 288, "{away_epochs} epochs away");
        assert!(switches > 300, "{switches} channel switches");
    }

    #[test]
    fn deterministic_and_parseable() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GenerateConfig {
            customers: 30,
            epochs: 120,
            seed: 7,
            anomaly_rate: 4.0,
            history_epochs: 24,
            threads: 3,
            ..Default::default()
        };
        let a = generate(&cfg, &dir.path().join("a")).unwrap();
        let cfg1 = GenerateConfig { threads: 1, ..cfg };
        generate(&cfg1, &dir.path().join("b")).unwrap();
        for f in [
            "telemetry.jsonl",
            "labels.jsonl",
            "topology.csv",
            "element_labels.jsonl",
            "region_labels.jsonl",
        ] {
            let x = std::fs::read(dir.path().join("a").join(f)).unwrap();
            let y = std::fs::read(dir.path().join("b").join(f)).unwrap();
            assert!(x == y, "{f} differs between thread counts");
        }
        assert!(a.messages > 30 * 100);
        assert!(a.labels > 0);
        let spec = crate::spec::Spec::embedded();
        let mut p = crate::sources::parse::LogParser::new(&spec);
        let text = std::fs::read_to_string(dir.path().join("a/telemetry.jsonl")).unwrap();
        let mut log = crate::record::Log::empty(CustomerId::parse(b"x", b"").unwrap());
        for line in text.lines().skip(1) {
            p.parse_recorded(line.as_bytes(), &mut log)
                .unwrap_or_else(|e| panic!("{line}: {e:?}"));
        }
    }

    /// A quiet fleet (no anomalies, no outages) in `a`, and the same with `faults` applied in `b`.
    fn quiet_and_faulted(
        customers: usize,
        epochs: usize,
        seed: u64,
        faults: impl FnOnce(GenerateConfig) -> GenerateConfig,
    ) -> (tempfile::TempDir, GenerateReport) {
        let dir = tempfile::tempdir().unwrap();
        let base = GenerateConfig {
            customers,
            epochs,
            seed,
            anomaly_rate: 0.0,
            outage_rate: 0.0,
            history_epochs: 24,
            threads: 2,
            ..Default::default()
        };
        generate(&base, &dir.path().join("a")).unwrap();
        let r = generate(&faults(base), &dir.path().join("b")).unwrap();
        (dir, r)
    }

    fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn congestions_are_labelled_per_element_and_member_and_change_only_values() {
        let (dir, r) = quiet_and_faulted(100, 300, 4, |c| GenerateConfig {
            congestion_rate: 4.0,
            ..c
        });
        let read = |d: &str, f: &str| std::fs::read_to_string(dir.path().join(d).join(f)).unwrap();
        assert_eq!(read("a", "element_labels.jsonl"), "");
        let faults = read_jsonl(&dir.path().join("b/element_labels.jsonl"));
        assert!(!faults.is_empty(), "{faults:?}");
        assert_eq!(r.element_faults, faults.len() as u64);
        assert!(faults.iter().all(|f| f["kind"] == "congestion"));
        // Each fault labels the members it reaches on the three features it moves.
        let member_labels: Vec<serde_json::Value> = read_jsonl(&dir.path().join("b/labels.jsonl"))
            .into_iter()
            .filter(|l| l["kind"] == "congestion")
            .collect();
        assert_eq!(member_labels.len() % 3, 0);
        assert!(
            member_labels.len() >= 3 * 30 * faults.len(),
            "{}",
            member_labels.len()
        );
        for l in &member_labels {
            let f = l["feature"].as_str().unwrap();
            assert!(CONGESTED.iter().any(|(k, _)| FEATURES[*k].name == f), "{f}");
        }
        // The same logs arrive (a congestion moves values, it drops nothing), some values differ.
        let (ta, tb) = (read("a", "telemetry.jsonl"), read("b", "telemetry.jsonl"));
        assert_eq!(ta.lines().count(), tb.lines().count());
        assert!(ta != tb);
    }

    #[test]
    fn region_faults_are_every_element_of_the_region_at_once_and_labelled_per_region() {
        // 2,000 customers: 40 elements in 2 regions of 20.
        let (dir, r) = quiet_and_faulted(2000, 200, 9, |c| GenerateConfig {
            region_fault_rate: 6.0,
            ..c
        });
        let read = |d: &str, f: &str| std::fs::read_to_string(dir.path().join(d).join(f)).unwrap();
        assert_eq!(read("a", "region_labels.jsonl"), "");
        let regions = read_jsonl(&dir.path().join("b/region_labels.jsonl"));
        assert!(!regions.is_empty());
        assert_eq!(r.region_faults, regions.len() as u64);
        let elements = read_jsonl(&dir.path().join("b/element_labels.jsonl"));
        for f in &regions {
            assert_eq!(f["elements"], 20, "{f}");
            // Every element of the region has the same fault, at the same time.
            let same: Vec<&serde_json::Value> = elements
                .iter()
                .filter(|e| {
                    e["region"] == f["region"]
                        && e["kind"] == f["kind"]
                        && e["start"] == f["start"]
                        && e["end"] == f["end"]
                })
                .collect();
            assert_eq!(same.len(), 20, "{f}");
        }
        // An outage silences the region's customers: fewer logs than the fleet without it.
        let count = |d: &str| read(d, "telemetry.jsonl").lines().count();
        if regions.iter().any(|f| f["kind"] == "outage") {
            assert!(count("b") < count("a"));
        }
    }
}
