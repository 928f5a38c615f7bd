//! The records that flow through the dataflow: parsed router logs and dead letters.

use serde::{Deserialize, Serialize};

use crate::keys::CustomerId;

/// The most features one spec may list (the width of a log's value array).
pub const MAX_FEATURES: usize = 32;

/// Where a record came from: a source partition (input file and topic partition) and its offset in it.
///
/// Used to order a customer's logs deterministically and to name a dead letter's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourcePos {
    pub partition: u32,
    pub offset: u64,
}

/// One parsed router log: a customer, an event time and the feature values (missing = NaN).
///
/// Fixed-size and `Copy`: no heap allocation per record anywhere on the hot path.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Log {
    pub customer: CustomerId,
    /// Event time, Unix seconds.
    pub ts: i64,
    pub pos: SourcePos,
    /// Feature values in spec order; `NaN` marks a feature absent from the log (or `null`).
    pub values: [f32; MAX_FEATURES],
}

impl Log {
    /// An empty log (all features missing).
    pub fn empty(customer: CustomerId) -> Log {
        Log {
            customer,
            ts: 0,
            pos: SourcePos {
                partition: 0,
                offset: 0,
            },
            values: [f32::NAN; MAX_FEATURES],
        }
    }
}

/// Why a record was refused. The code is stable (for counting and alerting on dead letters); the detail is
/// for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Not valid JSON / CSV at all.
    Malformed,
    /// A required field (customer_id, ts, partition, offset) is absent.
    MissingField,
    /// A field has the wrong JSON type (string where a number belongs...).
    WrongType,
    /// NaN, Infinity or a number beyond the f32 range.
    NonFinite,
    /// Timestamp outside the spec's absolute window, or absurdly ahead of its partition.
    AbsurdTimestamp,
    /// A second log of the same customer at the same timestamp.
    Duplicate,
    /// The customer id does not have the expected format.
    BadCustomerId,
    /// The message key and the log's customer id disagree.
    KeyMismatch,
    /// A feature the spec does not list.
    UnknownFeature,
    /// A record whose epoch had already closed, under the `dead_letter` late policy.
    Late,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Malformed => "malformed",
            RejectCode::MissingField => "missing_field",
            RejectCode::WrongType => "wrong_type",
            RejectCode::NonFinite => "non_finite",
            RejectCode::AbsurdTimestamp => "absurd_timestamp",
            RejectCode::Duplicate => "duplicate",
            RejectCode::BadCustomerId => "bad_customer_id",
            RejectCode::KeyMismatch => "key_mismatch",
            RejectCode::UnknownFeature => "unknown_feature",
            RejectCode::Late => "late",
        }
    }
}

/// A refusal: a code and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Rejection {
            code,
            detail: detail.into(),
        }
    }
}

/// The longest raw text kept in a dead letter (the rest is cut, and the cut is marked).
pub const DEAD_LETTER_RAW_CAP: usize = 4096;

/// A refused input record, with everything needed to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The epoch whose summary counts it; `None` until attributed (see `sources`).
    pub epoch: Option<u64>,
    /// Index of the input (in `--input` order) and 1-based line number within it.
    pub input: u32,
    pub line: u64,
    /// Topic partition and offset when the envelope could be read.
    pub partition: Option<u32>,
    pub offset: Option<u64>,
    pub code: RejectCode,
    pub detail: String,
    /// The raw text (UTF-8, lossily decoded, truncated at [`DEAD_LETTER_RAW_CAP`] bytes).
    pub raw: String,
}

impl DeadLetter {
    /// Builds a dead letter, truncating and lossily decoding the raw bytes.
    pub fn new(input: u32, line: u64, raw: &[u8], rejection: Rejection) -> Self {
        let cut = raw.len().min(DEAD_LETTER_RAW_CAP);
        let mut text = String::from_utf8_lossy(&raw[..cut]).into_owned();
        if cut < raw.len() {
            text.push_str("…[truncated]");
        }
        DeadLetter {
            epoch: None,
            input,
            line,
            partition: None,
            offset: None,
            code: rejection.code,
            detail: rejection.detail,
            raw: text,
        }
    }
}
