//! fleetwatch: personalised anomaly detection for every (customer, feature) series of a device fleet, every
//! epoch, as a timely/differential dataflow.
//!
//! The crate is organised one concern per module; `ARCHITECTURE.md` draws the dataflow.
//!
//! * [`sources`] — recorded-topic and CSV inputs, parsed partition-parallel ([`sources::parse`]).
//! * [`epoch`] — event-time epochs and the per-partition lateness policy.
//! * [`keys`] — customer ids and the routing hash (exchange by customer).
//! * [`model`] — the per-series model: detectors, calibrated thresholds with hysteresis, cohort priors.
//! * [`state`] — the 48-byte series slots and the Abelian block difference.
//! * [`arrangement`] — the operator maintaining the series-state arrangement.
//! * [`sinks`] — output and dead-letter writers.
//! * [`memory`] — the binary's allocator (recycles the arrangement's large blocks).
//! * [`dataflow`] — the assembled pipeline and `run`.
//! * [`cluster`] — `cluster.toml`, multi-process configuration, connections and their faults, `launch`
//!   (supervision and restarts).
//! * [`checkpoint`] — checkpoints of the state and the input and output positions; restore and rescaling.
//! * [`metrics`] — Prometheus metrics of a run (`run --metrics ADDR`).
//! * [`serving`] — the live query API (`run --serve ADDR`) and every prediction as Parquet
//!   (`run --predictions DIR`), both from the epoch view the series model builds.
//! * [`stop`] — graceful stop on SIGTERM / SIGINT after an epoch every worker agrees on.
//! * [`generate`] — the synthetic fleet with labelled anomalies; [`eval`] — scoring alerts against labels;
//!   [`compare`] — two runs' alerts side by side (a run and its shadow variant, `run --shadow`);
//!   [`incidenteval`] — scoring incidents against the generator's element and region faults.
//! * [`incidents`] — the incident operator (members' alerts joined with the topology, per-element sums, routed by
//!   region: elements, then their region; its checkpoint part).
//! * [`kafka`] (feature `kafka`) — Kafka clients, `produce` / `record`, the Kafka output;
//!   [`kafka_properties`] — the librdkafka properties an operator passes through (TLS, SASL).
//! * [`topology`] — customer → network element → region (`run --topology`): incidents per element and region.
//! * [`watch`] — every scored observation of a few watched customers; [`plot`] and [`report`] — one customer's
//!   SVG and a run's HTML page (`fleetwatch plot`, `fleetwatch report`).
//! * [`realdata`] — `fleetwatch import`: the real telemetry datasets as CSV exports, point labels and specs.

pub mod arrangement;
pub mod bench;
pub mod checkpoint;
pub mod cluster;
pub mod commands;
pub mod compare;
pub mod dataflow;
pub mod epoch;
pub mod eval;
pub mod f16;
pub mod generate;
pub mod incidenteval;
pub mod incidents;
pub mod json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kafka_properties;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod nab;
pub mod plot;
pub mod pointeval;
pub mod realdata;
pub mod record;
pub mod report;
pub mod rng;
pub mod serving;
pub mod sinks;
pub mod sources;
pub mod spec;
pub mod state;
pub mod stop;
pub mod timefmt;
pub mod topology;
pub mod topology_feed;
pub mod train;
pub mod watch;
