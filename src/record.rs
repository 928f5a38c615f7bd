//! The records that flow through the dataflow: parsed router logs and dead letters.

use serde::{Deserialize, Serialize};

use crate::keys::CustomerId;

/// The most features one spec may list (the width of the widest log's value array).
pub const MAX_FEATURES: usize = 64;

/// The width of the log that specs of up to this many features use ([`Log`]); wider specs use
/// [`WideLog`]. The whole pipeline is instantiated at the spec's width, so a 20-feature spec's logs are not
/// twice as large for the sake of a wider one (a 64-wide log cost 1 GiB of peak memory at 2 M customers).
pub const NARROW: usize = 32;

/// Bytes of a log's binary form before its values: id, event time, partition, offset.
pub const LOG_HEAD_BYTES: usize = CustomerId::WIRE_BYTES + 8 + 4 + 8;
/// The longest binary form of any log: the head and [`MAX_FEATURES`] values.
pub const LOG_WIRE_MAX: usize = LOG_HEAD_BYTES + 4 * MAX_FEATURES;

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
/// Fixed-size and `Copy`: no heap allocation per record anywhere on the hot path. Serialised (between
/// processes) as one byte string rather than field by field: bincode would otherwise make some sixty calls
/// per log (every byte of the id, every value) and timely sizes every batch before writing it, so exchanging
/// logs across processes cost twice that. The string carries the values up to the last one present, so a
/// 20-feature spec's logs cross as [`Log::HEAD_BYTES`] + 80 bytes however wide the array is.
#[derive(Debug, Clone, Copy)]
pub struct LogN<const N: usize> {
    pub customer: CustomerId,
    /// Event time, Unix seconds.
    pub ts: i64,
    pub pos: SourcePos,
    /// Feature values in spec order; `NaN` marks a feature absent from the log (or `null`).
    pub values: [f32; N],
}

/// The log of specs of up to [`NARROW`] features.
pub type Log = LogN<NARROW>;
/// The log of wider specs, up to [`MAX_FEATURES`].
pub type WideLog = LogN<MAX_FEATURES>;

impl<const N: usize> LogN<N> {
    /// Bytes of the binary form's head: id, event time, partition, offset (little-endian).
    pub const HEAD_BYTES: usize = LOG_HEAD_BYTES;
    /// The longest binary form of this width: the head and every value.
    pub const WIRE_BYTES: usize = LOG_HEAD_BYTES + 4 * N;

    /// The binary form (values bit for bit, NaN payloads included, up to the last value that is not a
    /// plain missing one): the buffer and how many of its bytes are used.
    pub fn to_wire(&self) -> ([u8; LOG_WIRE_MAX], usize) {
        let mut w = [0u8; LOG_WIRE_MAX];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            w[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.customer.to_wire());
        put(&self.ts.to_le_bytes());
        put(&self.pos.partition.to_le_bytes());
        put(&self.pos.offset.to_le_bytes());
        let missing = f32::NAN.to_bits();
        let used = self
            .values
            .iter()
            .rposition(|v| v.to_bits() != missing)
            .map_or(0, |i| i + 1);
        for v in &self.values[..used] {
            put(&v.to_bits().to_le_bytes());
        }
        (w, at)
    }

    /// Reads [`LogN::to_wire`]'s form (`None` for anything else, or more values than this width holds);
    /// values not in it are missing.
    pub fn from_wire(w: &[u8]) -> Option<LogN<N>> {
        if w.len() < Self::HEAD_BYTES
            || w.len() > Self::WIRE_BYTES
            || (w.len() - Self::HEAD_BYTES) % 4 != 0
        {
            return None;
        }
        let (id, rest) = w.split_at(CustomerId::WIRE_BYTES);
        let customer = CustomerId::from_wire(id)?;
        let (ts, rest) = rest.split_first_chunk::<8>()?;
        let (partition, rest) = rest.split_first_chunk::<4>()?;
        let (offset, rest) = rest.split_first_chunk::<8>()?;
        let mut values = [f32::NAN; N];
        for (v, b) in values.iter_mut().zip(rest.chunks_exact(4)) {
            *v = f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        Some(LogN {
            customer,
            ts: i64::from_le_bytes(*ts),
            pos: SourcePos {
                partition: u32::from_le_bytes(*partition),
                offset: u64::from_le_bytes(*offset),
            },
            values,
        })
    }

    /// An empty log (all features missing).
    pub fn empty(customer: CustomerId) -> LogN<N> {
        LogN {
            customer,
            ts: 0,
            pos: SourcePos {
                partition: 0,
                offset: 0,
            },
            values: [f32::NAN; N],
        }
    }
}

impl<const N: usize> Serialize for LogN<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (w, n) = self.to_wire();
        s.serialize_bytes(&w[..n])
    }
}

impl<'de, const N: usize> Deserialize<'de> for LogN<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LogN<N>, D::Error> {
        struct WireVisitor<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for WireVisitor<N> {
            type Value = LogN<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "a log's {} to {} bytes",
                    LogN::<N>::HEAD_BYTES,
                    LogN::<N>::WIRE_BYTES
                )
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<LogN<N>, E> {
                LogN::from_wire(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Bytes(v), &self))
            }
            // Formats without a byte-string type (JSON) write the bytes as a sequence of numbers.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LogN<N>, A::Error> {
                let mut v = Vec::with_capacity(LogN::<N>::WIRE_BYTES);
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(WireVisitor::<N>)
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
    /// A topology row that cannot be used (`run --topology`).
    Topology,
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
            RejectCode::Topology => "topology",
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(id: &str, ts: i64, partition: u32, offset: u64, values: &[u32]) -> Log {
        let mut l = Log::empty(CustomerId::parse(id.as_bytes(), b"").unwrap());
        l.ts = ts;
        l.pos = SourcePos { partition, offset };
        for (v, bits) in l.values.iter_mut().zip(values) {
            *v = f32::from_bits(*bits);
        }
        l
    }

    fn same(a: &Log, b: &Log) -> bool {
        a.customer == b.customer
            && a.ts == b.ts
            && a.pos == b.pos
            && a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn the_wire_form_is_what_bincode_and_json_carry() {
        let l = log(
            "cust-0000042",
            1_700_000_000,
            (3 << 20) | 7,
            u64::MAX - 1,
            &[0x3f80_0000, 0x7fc0_1234, 0x8000_0000, 0xff80_0000],
        );
        let (w, n) = l.to_wire();
        // the head and the four values present (the rest are missing: not carried)
        assert_eq!(n, Log::HEAD_BYTES + 16);
        let w = &w[..n];
        assert_eq!(&w[..13], b"\x0ccust-0000042");
        assert!(same(&Log::from_wire(w).unwrap(), &l));
        // bincode (timely's exchange between processes): a length, then the bytes.
        let b = bincode::serialize(&vec![l, l]).unwrap();
        assert_eq!(b.len(), 8 + 2 * (8 + n));
        // a log with every value of its width carries them all; a narrow log refuses a wide one's form
        let full = log("c", 1, 2, 3, &[0x4000_0000; NARROW]);
        assert_eq!(full.to_wire().1, Log::WIRE_BYTES);
        let (fw, fnn) = full.to_wire();
        assert!(same(&Log::from_wire(&fw[..fnn]).unwrap(), &full));
        let mut wide = WideLog::empty(full.customer);
        wide.values = [1.0; MAX_FEATURES];
        let (w, n) = wide.to_wire();
        assert_eq!(n, LOG_WIRE_MAX);
        assert!(Log::from_wire(&w[..n]).is_none());
        let back = WideLog::from_wire(&w[..n]).unwrap();
        assert!(back.values.iter().all(|v| *v == 1.0));
        let round: WideLog = bincode::deserialize(&bincode::serialize(&wide).unwrap()).unwrap();
        assert_eq!(round.values, wide.values);
        let back: Vec<Log> = bincode::deserialize(&b).unwrap();
        assert!(back.iter().all(|x| same(x, &l)));
        // JSON writes the bytes as numbers and reads them back.
        let j = serde_json::to_string(&l).unwrap();
        assert!(same(&serde_json::from_str::<Log>(&j).unwrap(), &l));
    }

    #[test]
    fn malformed_wire_forms_are_refused() {
        let (w, n) = log("c1", 0, 0, 0, &[0x3f80_0000]).to_wire();
        let w = w[..n].to_vec();
        assert!(Log::from_wire(&w[1..]).is_none(), "short");
        assert!(Log::from_wire(&w[..n - 2]).is_none(), "a broken value");
        assert!(
            Log::from_wire(&[0u8; Log::WIRE_BYTES + 4]).is_none(),
            "too long"
        );
        let mut bad = w.clone();
        bad[0] = 0;
        assert!(Log::from_wire(&bad).is_none(), "empty id");
        let mut bad = w.clone();
        bad[0] = 24;
        assert!(
            Log::from_wire(&bad).is_none(),
            "id longer than the capacity"
        );
        let mut bad = w.clone();
        bad[10] = b'x';
        assert!(Log::from_wire(&bad).is_none(), "bytes after the id");
        assert!(
            bincode::deserialize::<Log>(&bincode::serialize(&[1u8, 2, 3][..]).unwrap()).is_err()
        );
    }

    proptest! {
        #[test]
        fn wire_round_trip(
            id in "[a-z0-9][a-z0-9._:-]{0,22}",
            ts in any::<i64>(),
            partition in any::<u32>(),
            offset in any::<u64>(),
            values in proptest::collection::vec(any::<u32>(), 0..=NARROW),
        ) {
            let l = log(&id, ts, partition, offset, &values);
            let (w, n) = l.to_wire();
            prop_assert!(same(&Log::from_wire(&w[..n]).unwrap(), &l));
            let b: Log = bincode::deserialize(&bincode::serialize(&l).unwrap()).unwrap();
            prop_assert!(same(&b, &l));
        }
    }
}
