//! Parsing one input record into a [`Log`]: the recorded-topic envelope, the JSON log inside it, and CSV rows.
//!
//! Every refusal becomes a [`Rejection`] with a stable code; nothing here panics on any input (a property
//! test feeds arbitrary bytes). Allocation happens only on the error path (the rejection's detail text).

use crate::json::{Kind, Scanner, Str};
use crate::keys::CustomerId;
#[cfg(test)]
use crate::record::Log;
use crate::record::{LogN, RejectCode, Rejection, SourcePos};
use crate::spec::{Spec, UnknownFeaturePolicy};
use crate::timefmt::parse_rfc3339;

/// The envelope fields of one recorded-topic message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub partition: u32,
    pub offset: u64,
    /// Broker timestamp, milliseconds (absent in hand-made files).
    pub timestamp_ms: Option<i64>,
}

/// A parser configured from a spec; reuse one per worker (it owns scratch space).
pub struct LogParser {
    names: Vec<Vec<u8>>,
    /// `,"<name>":` for each feature: the canonical layout's separators.
    keyed: Vec<Vec<u8>>,
    prefix: Vec<u8>,
    unknown: UnknownFeaturePolicy,
    min_ts: i64,
    max_ts: i64,
    scratch: Vec<u8>,
    key_scratch: Vec<u8>,
}

fn reject<T>(code: RejectCode, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::new(code, detail))
}

fn malformed<T>(e: crate::json::JsonError) -> Result<T, Rejection> {
    let code = if e.what == "non-finite number" {
        RejectCode::NonFinite
    } else {
        RejectCode::Malformed
    };
    reject(code, format!("invalid JSON: {e}"))
}

/// Reads the partition of a line written in the canonical layout (`{"partition":N,...`) without parsing the
/// rest: every worker calls this on every line to find the lines it owns.
#[inline]
pub fn fast_partition(line: &[u8]) -> Option<u32> {
    const P: &[u8] = b"{\"partition\":";
    let rest = line.strip_prefix(P)?;
    let mut v: u32 = 0;
    let mut n = 0;
    for &c in rest.iter().take(10) {
        if c.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add((c - b'0') as u32)?;
            n += 1;
        } else {
            break;
        }
    }
    if n == 0 || rest.get(n) != Some(&b',') {
        return None;
    }
    Some(v)
}

/// Finds the partition of a line in any layout (slow path: walks the envelope's keys).
pub fn envelope_partition(line: &[u8]) -> Option<u32> {
    if let Some(p) = fast_partition(line) {
        return Some(p);
    }
    let mut sc = Scanner::new(line);
    let mut scratch = Vec::new();
    sc.expect(b'{', "").ok()?;
    if sc.eat(b'}') {
        return None;
    }
    loop {
        let is_partition = match sc.string(&mut scratch).ok()? {
            Str::Raw(k) => k == b"partition",
            Str::Decoded => scratch == b"partition",
        };
        sc.expect(b':', "").ok()?;
        if is_partition {
            return u32::try_from(sc.unsigned().ok()?).ok();
        }
        sc.skip_value().ok()?;
        if !sc.eat(b',') {
            return None;
        }
    }
}

impl LogParser {
    pub fn new(spec: &Spec) -> Self {
        LogParser {
            names: spec
                .features
                .iter()
                .map(|f| f.name.as_bytes().to_vec())
                .collect(),
            keyed: spec
                .features
                .iter()
                .map(|f| format!(",\"{}\":", f.name).into_bytes())
                .collect(),
            prefix: spec.input.customer_id_prefix.as_bytes().to_vec(),
            unknown: spec.input.unknown_features,
            min_ts: spec.input.min_timestamp,
            max_ts: spec.input.max_timestamp,
            scratch: Vec::with_capacity(64),
            key_scratch: Vec::with_capacity(64),
        }
    }

    /// Number of features.
    pub fn feature_count(&self) -> usize {
        self.names.len()
    }

    #[inline]
    fn lookup(&self, key: &[u8], hint: usize) -> Option<usize> {
        if let Some(n) = self.names.get(hint)
            && n.as_slice() == key
        {
            return Some(hint);
        }
        self.names.iter().position(|n| n.as_slice() == key)
    }

    /// Checks a timestamp against the spec's absolute window.
    pub fn check_ts(&self, ts: i64) -> Result<i64, Rejection> {
        if ts < self.min_ts || ts >= self.max_ts {
            return reject(
                RejectCode::AbsurdTimestamp,
                format!(
                    "timestamp {ts} is outside [{}, {}) (input.min_timestamp/max_timestamp)",
                    self.min_ts, self.max_ts
                ),
            );
        }
        Ok(ts)
    }

    /// Parses a recorded-topic line: the envelope and the log it carries.
    pub fn parse_recorded<const N: usize>(
        &mut self,
        line: &[u8],
        out: &mut LogN<N>,
    ) -> Result<Envelope, Rejection> {
        if let Some(env) = self.parse_canonical(line, out) {
            return Ok(env);
        }
        self.parse_general(line, out)
    }

    /// The fast path for lines in exactly the layout fleetwatch writes (`generate`, `record`): envelope keys
    /// in order, the log's features in spec order, plain numbers. It accepts a line only if the general
    /// parser would accept it with the same result; anything else (`None`) goes the general way, which also
    /// finds the reason for a refusal.
    fn parse_canonical<const N: usize>(
        &mut self,
        line: &[u8],
        out: &mut LogN<N>,
    ) -> Option<Envelope> {
        fn lit(line: &[u8], i: &mut usize, l: &[u8]) -> Option<()> {
            if line.get(*i..*i + l.len())? == l {
                *i += l.len();
                Some(())
            } else {
                None
            }
        }
        fn digits(line: &[u8], i: &mut usize) -> Option<u64> {
            let start = *i;
            let mut v: u64 = 0;
            while let Some(&c @ b'0'..=b'9') = line.get(*i) {
                v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
                *i += 1;
            }
            // no leading zeros (JSON), no fraction or exponent after
            let n = *i - start;
            if n == 0 || (n > 1 && line[start] == b'0') {
                return None;
            }
            if matches!(line.get(*i), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            Some(v)
        }
        fn plain_string<'l>(line: &'l [u8], i: &mut usize) -> Option<&'l [u8]> {
            let start = *i;
            let len = memchr::memchr(b'"', &line[start..])?;
            let s = &line[start..start + len];
            if s.iter().any(|c| *c == b'\\' || *c < 0x20) {
                return None;
            }
            *i = start + len + 1;
            Some(s)
        }
        let mut i = 0;
        lit(line, &mut i, b"{\"partition\":")?;
        let partition = u32::try_from(digits(line, &mut i)?).ok()?;
        lit(line, &mut i, b",\"offset\":")?;
        let offset = digits(line, &mut i)?;
        lit(line, &mut i, b",\"timestamp\":")?;
        let timestamp = digits(line, &mut i)?;
        if timestamp >= 9_000_000_000_000_000 {
            return None;
        }
        lit(line, &mut i, b",\"key\":\"")?;
        let key = plain_string(line, &mut i)?;
        lit(line, &mut i, b",\"value\":{\"customer_id\":\"")?;
        let id = plain_string(line, &mut i)?;
        if id != key {
            return None;
        }
        out.customer = CustomerId::parse(id, &self.prefix).ok()?;
        lit(line, &mut i, b",\"ts\":")?;
        let ts = digits(line, &mut i)?;
        if ts > i64::MAX as u64 {
            return None;
        }
        out.ts = self.check_ts(ts as i64).ok()?;
        out.values = [f32::NAN; N];
        for f in 0..self.keyed.len() {
            lit(line, &mut i, &self.keyed[f])?;
            if line.get(i..i + 4) == Some(b"null") {
                i += 4;
                continue;
            }
            match line.get(i) {
                Some(b'-' | b'0'..=b'9') => {}
                _ => return None,
            }
            let mut sc = Scanner::at(line, i);
            let v = sc.number().ok()?;
            if v.abs() > f32::MAX as f64 {
                return None;
            }
            out.values[f] = v as f32;
            i = sc.pos();
        }
        lit(line, &mut i, b"}}")?;
        if i != line.len() {
            return None;
        }
        out.pos = SourcePos { partition, offset };
        Some(Envelope {
            partition,
            offset,
            timestamp_ms: Some(timestamp as i64),
        })
    }

    fn parse_general<const N: usize>(
        &mut self,
        line: &[u8],
        out: &mut LogN<N>,
    ) -> Result<Envelope, Rejection> {
        let mut sc = Scanner::new(line);
        if let Err(e) = sc.expect(b'{', "expected a JSON object") {
            return malformed(e);
        }
        let mut partition: Option<u32> = None;
        let mut offset: Option<u64> = None;
        let mut timestamp_ms: Option<i64> = None;
        let mut key: Option<(usize, usize)> = None;
        let mut key_decoded = false;
        // The kind of the message value; an object (the log) is parsed into `out` where it stands.
        let mut value: Option<Kind> = None;
        if !sc.eat(b'}') {
            loop {
                let field = match sc.string(&mut self.scratch) {
                    Ok(Str::Raw(k)) => envelope_field(k),
                    Ok(Str::Decoded) => envelope_field(&self.scratch),
                    Err(e) => return malformed(e),
                };
                if let Err(e) = sc.expect(b':', "expected ':' after an object key") {
                    return malformed(e);
                }
                match field {
                    EnvField::Partition => {
                        if partition.is_some() {
                            return reject(
                                RejectCode::Malformed,
                                "field 'partition' appears twice",
                            );
                        }
                        match sc.unsigned() {
                            Ok(p) if p <= u32::MAX as u64 => partition = Some(p as u32),
                            Ok(_) => {
                                return reject(
                                    RejectCode::WrongType,
                                    "partition does not fit 32 bits",
                                );
                            }
                            Err(_) => {
                                return reject(
                                    RejectCode::WrongType,
                                    "partition must be a non-negative integer",
                                );
                            }
                        }
                    }
                    EnvField::Offset => {
                        if offset.is_some() {
                            return reject(RejectCode::Malformed, "field 'offset' appears twice");
                        }
                        match sc.unsigned() {
                            Ok(o) => offset = Some(o),
                            Err(_) => {
                                return reject(
                                    RejectCode::WrongType,
                                    "offset must be a non-negative integer",
                                );
                            }
                        }
                    }
                    EnvField::Timestamp => match sc.kind() {
                        Kind::Number => match sc.number() {
                            Ok(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                                timestamp_ms = Some(v as i64)
                            }
                            Ok(_) => {
                                return reject(
                                    RejectCode::WrongType,
                                    "envelope timestamp must be integer milliseconds",
                                );
                            }
                            Err(e) => return malformed(e),
                        },
                        Kind::Null => {
                            if let Err(e) = sc.literal() {
                                return malformed(e);
                            }
                        }
                        k => {
                            return reject(
                                RejectCode::WrongType,
                                format!("envelope timestamp must be a number, got {}", k.name()),
                            );
                        }
                    },
                    EnvField::Key => match sc.kind() {
                        Kind::String => {
                            sc.ws();
                            let start = sc.pos();
                            match sc.string(&mut self.key_scratch) {
                                Ok(Str::Raw(_)) => key = Some((start + 1, sc.pos() - 1)),
                                Ok(Str::Decoded) => {
                                    key_decoded = true;
                                    key = Some((0, 0));
                                }
                                Err(e) => return malformed(e),
                            }
                        }
                        Kind::Null => {
                            if let Err(e) = sc.literal() {
                                return malformed(e);
                            }
                        }
                        k => {
                            return reject(
                                RejectCode::WrongType,
                                format!("message key must be a string, got {}", k.name()),
                            );
                        }
                    },
                    EnvField::Value => {
                        let kind = sc.kind();
                        if kind == Kind::Object {
                            // Parse the log in place (one pass over the line, not a skip and a parse).
                            self.parse_log_at(&mut sc, out)?;
                        } else if let Err(e) = sc.skip_value() {
                            return malformed(e);
                        }
                        value = Some(kind);
                    }
                    EnvField::Other => {
                        if let Err(e) = sc.skip_value() {
                            return malformed(e);
                        }
                    }
                }
                if sc.eat(b',') {
                    continue;
                }
                if let Err(e) = sc.expect(b'}', "expected ',' or '}' in an object") {
                    return malformed(e);
                }
                break;
            }
        }
        if let Err(e) = sc.end() {
            return malformed(e);
        }
        let partition = match partition {
            Some(p) => p,
            None => return reject(RejectCode::MissingField, "envelope has no 'partition'"),
        };
        let offset = match offset {
            Some(o) => o,
            None => return reject(RejectCode::MissingField, "envelope has no 'offset'"),
        };
        let envelope = Envelope {
            partition,
            offset,
            timestamp_ms,
        };
        let kind = match value {
            Some(k) => k,
            None => return reject(RejectCode::MissingField, "envelope has no 'value'"),
        };
        match kind {
            Kind::Object => {}
            Kind::Null => {
                return reject(
                    RejectCode::MissingField,
                    "message value is null (tombstone)",
                );
            }
            k => {
                return reject(
                    RejectCode::WrongType,
                    format!(
                        "message value must be a JSON object (the log), got {}",
                        k.name()
                    ),
                );
            }
        }
        out.pos = SourcePos { partition, offset };
        // The message key, when present, must name the same customer as the log.
        if let Some((ks, ke)) = key {
            let key_bytes: &[u8] = if key_decoded {
                &self.key_scratch
            } else {
                &line[ks..ke]
            };
            if key_bytes != out.customer.as_bytes() {
                return reject(
                    RejectCode::KeyMismatch,
                    format!(
                        "message key {:?} differs from customer_id {:?}",
                        String::from_utf8_lossy(key_bytes),
                        out.customer.as_str()
                    ),
                );
            }
        }
        Ok(envelope)
    }

    /// Parses a JSON log object (`{"customer_id":..,"ts":..,<feature>:..}`) into `out`.
    pub fn parse_log_object<const N: usize>(
        &mut self,
        text: &[u8],
        out: &mut LogN<N>,
    ) -> Result<(), Rejection> {
        let mut sc = Scanner::new(text);
        self.parse_log_at(&mut sc, out)?;
        if let Err(e) = sc.end() {
            return malformed(e);
        }
        Ok(())
    }

    /// Parses the JSON log object starting at the scanner's position, leaving the scanner after it.
    fn parse_log_at<const N: usize>(
        &mut self,
        sc: &mut Scanner<'_>,
        out: &mut LogN<N>,
    ) -> Result<(), Rejection> {
        if let Err(e) = sc.expect(b'{', "expected a JSON object") {
            return malformed(e);
        }
        out.values = [f32::NAN; N];
        let mut seen: u128 = 0; // bit per feature, plus bits 126/127 for customer_id/ts
        let mut customer: Option<CustomerId> = None;
        let mut ts: Option<i64> = None;
        let mut hint = 0usize;
        if !sc.eat(b'}') {
            loop {
                let (field, name_for_errors) = {
                    let key: &[u8] = match sc.string(&mut self.scratch) {
                        Ok(Str::Raw(k)) => k,
                        Ok(Str::Decoded) => &self.scratch,
                        Err(e) => return malformed(e),
                    };
                    let field = if key == b"customer_id" {
                        LogField::Customer
                    } else if key == b"ts" {
                        LogField::Ts
                    } else {
                        match self.lookup(key, hint) {
                            Some(i) => LogField::Feature(i),
                            None => LogField::Unknown,
                        }
                    };
                    let name = match field {
                        LogField::Unknown => Some(String::from_utf8_lossy(key).into_owned()),
                        _ => None,
                    };
                    (field, name)
                };
                if let Err(e) = sc.expect(b':', "expected ':' after an object key") {
                    return malformed(e);
                }
                match field {
                    LogField::Customer => {
                        if seen & (1 << 126) != 0 {
                            return reject(
                                RejectCode::Malformed,
                                "field 'customer_id' appears twice",
                            );
                        }
                        seen |= 1 << 126;
                        if sc.kind() != Kind::String {
                            return reject(
                                RejectCode::WrongType,
                                format!("customer_id must be a string, got {}", sc.kind().name()),
                            );
                        }
                        let id = match sc.string(&mut self.scratch) {
                            Ok(Str::Raw(s)) => CustomerId::parse(s, &self.prefix),
                            Ok(Str::Decoded) => CustomerId::parse(&self.scratch, &self.prefix),
                            Err(e) => return malformed(e),
                        };
                        match id {
                            Ok(id) => customer = Some(id),
                            Err(e) => return reject(RejectCode::BadCustomerId, e.to_string()),
                        }
                    }
                    LogField::Ts => {
                        if seen & (1 << 127) != 0 {
                            return reject(RejectCode::Malformed, "field 'ts' appears twice");
                        }
                        seen |= 1 << 127;
                        ts = Some(self.read_ts(sc)?);
                    }
                    LogField::Feature(i) => {
                        if seen & (1 << i) != 0 {
                            return reject(
                                RejectCode::Malformed,
                                format!(
                                    "feature '{}' appears twice",
                                    String::from_utf8_lossy(&self.names[i])
                                ),
                            );
                        }
                        seen |= 1 << i;
                        hint = i + 1;
                        out.values[i] = self.read_feature(sc, i)?;
                    }
                    LogField::Unknown => {
                        let name = name_for_errors.unwrap_or_default();
                        match self.unknown {
                            UnknownFeaturePolicy::DeadLetter => {
                                return reject(
                                    RejectCode::UnknownFeature,
                                    format!("feature '{name}' is not in the spec"),
                                );
                            }
                            UnknownFeaturePolicy::Ignore => {
                                if let Err(e) = sc.skip_value() {
                                    return malformed(e);
                                }
                            }
                        }
                    }
                }
                if sc.eat(b',') {
                    continue;
                }
                if let Err(e) = sc.expect(b'}', "expected ',' or '}' in an object") {
                    return malformed(e);
                }
                break;
            }
        }
        out.customer = match customer {
            Some(c) => c,
            None => return reject(RejectCode::MissingField, "log has no 'customer_id'"),
        };
        out.ts = match ts {
            Some(t) => t,
            None => return reject(RejectCode::MissingField, "log has no 'ts'"),
        };
        Ok(())
    }

    fn read_ts(&mut self, sc: &mut Scanner<'_>) -> Result<i64, Rejection> {
        match sc.kind() {
            Kind::Number => match sc.number() {
                Ok(v) => {
                    if !(-1.0e15..1.0e15).contains(&v) {
                        return reject(
                            RejectCode::AbsurdTimestamp,
                            format!("timestamp {v} is absurd"),
                        );
                    }
                    self.check_ts(v.floor() as i64)
                }
                Err(e) => malformed(e),
            },
            Kind::String => {
                let parsed = match sc.string(&mut self.scratch) {
                    Ok(Str::Raw(s)) => parse_rfc3339(s),
                    Ok(Str::Decoded) => parse_rfc3339(&self.scratch),
                    Err(e) => return malformed(e),
                };
                match parsed {
                    Some(t) => self.check_ts(t),
                    None => reject(
                        RejectCode::WrongType,
                        "ts string is not an RFC 3339 timestamp (e.g. 2024-05-01T12:00:00Z)",
                    ),
                }
            }
            Kind::NonFinite => reject(RejectCode::NonFinite, "ts is not a finite number"),
            k => reject(
                RejectCode::WrongType,
                format!(
                    "ts must be Unix seconds or an RFC 3339 string, got {}",
                    k.name()
                ),
            ),
        }
    }

    #[inline]
    fn read_feature(&mut self, sc: &mut Scanner<'_>, i: usize) -> Result<f32, Rejection> {
        match sc.kind() {
            Kind::Number => match sc.number() {
                Ok(v) => {
                    if v.abs() > f32::MAX as f64 {
                        return reject(
                            RejectCode::NonFinite,
                            format!(
                                "feature '{}' = {v} overflows a 32-bit float",
                                String::from_utf8_lossy(&self.names[i])
                            ),
                        );
                    }
                    Ok(v as f32)
                }
                Err(e) => malformed(e),
            },
            Kind::Null => match sc.literal() {
                Ok(_) => Ok(f32::NAN),
                Err(e) => malformed(e),
            },
            Kind::NonFinite => reject(
                RejectCode::NonFinite,
                format!(
                    "feature '{}' is not a finite number",
                    String::from_utf8_lossy(&self.names[i])
                ),
            ),
            k => reject(
                RejectCode::WrongType,
                format!(
                    "feature '{}' must be a number or null, got {}",
                    String::from_utf8_lossy(&self.names[i]),
                    k.name()
                ),
            ),
        }
    }

    /// Parses one CSV row given the header's column map (`columns[i]` is the feature of column `i + 2`).
    pub fn parse_csv_row<const N: usize>(
        &mut self,
        fields: &csv::ByteRecord,
        columns: &[Option<usize>],
        out: &mut LogN<N>,
    ) -> Result<(), Rejection> {
        if fields.len() != columns.len() + 2 {
            return reject(
                RejectCode::Malformed,
                format!(
                    "row has {} fields, the header has {}",
                    fields.len(),
                    columns.len() + 2
                ),
            );
        }
        let id = fields.get(0).unwrap_or_default();
        out.customer = match CustomerId::parse(trim(id), &self.prefix) {
            Ok(c) => c,
            Err(e) => return reject(RejectCode::BadCustomerId, e.to_string()),
        };
        let ts_text = trim(fields.get(1).unwrap_or_default());
        out.ts = if ts_text.is_empty() {
            return reject(RejectCode::MissingField, "ts is empty");
        } else if ts_text
            .iter()
            .all(|c| c.is_ascii_digit() || *c == b'-' || *c == b'.')
        {
            let mut sc = Scanner::new(ts_text);
            match sc.number().and_then(|v| sc.end().map(|_| v)) {
                Ok(v) if (-1.0e15..1.0e15).contains(&v) => self.check_ts(v.floor() as i64)?,
                Ok(v) => {
                    return reject(
                        RejectCode::AbsurdTimestamp,
                        format!("timestamp {v} is absurd"),
                    );
                }
                Err(_) => return reject(RejectCode::WrongType, "ts is not a number"),
            }
        } else {
            match parse_rfc3339(ts_text) {
                Some(t) => self.check_ts(t)?,
                None => {
                    return reject(
                        RejectCode::WrongType,
                        "ts is neither Unix seconds nor an RFC 3339 timestamp",
                    );
                }
            }
        };
        out.values = [f32::NAN; N];
        for (col, feature) in columns.iter().enumerate() {
            let cell = trim(fields.get(col + 2).unwrap_or_default());
            let Some(i) = *feature else { continue };
            if cell.is_empty() {
                continue;
            }
            let lower = cell.to_ascii_lowercase();
            if matches!(
                lower.as_slice(),
                b"nan" | b"inf" | b"-inf" | b"+inf" | b"infinity" | b"-infinity" | b"+infinity"
            ) {
                return reject(
                    RejectCode::NonFinite,
                    format!(
                        "feature '{}' is not a finite number",
                        String::from_utf8_lossy(&self.names[i])
                    ),
                );
            }
            let mut sc = Scanner::new(cell);
            match sc.number().and_then(|v| sc.end().map(|_| v)) {
                Ok(v) if v.abs() <= f32::MAX as f64 => out.values[i] = v as f32,
                Ok(_) => {
                    return reject(
                        RejectCode::NonFinite,
                        format!(
                            "feature '{}' overflows a 32-bit float",
                            String::from_utf8_lossy(&self.names[i])
                        ),
                    );
                }
                Err(e) if e.what == "non-finite number" => {
                    return reject(
                        RejectCode::NonFinite,
                        format!(
                            "feature '{}' overflows a 64-bit float",
                            String::from_utf8_lossy(&self.names[i])
                        ),
                    );
                }
                Err(_) => {
                    return reject(
                        RejectCode::WrongType,
                        format!(
                            "feature '{}' = {:?} is not a number",
                            String::from_utf8_lossy(&self.names[i]),
                            String::from_utf8_lossy(cell)
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Maps a CSV header to feature indexes. The first two columns must be `customer_id` and `ts`.
    /// Unknown columns are an error under the `dead_letter` policy (every row would be refused) and are
    /// skipped under `ignore`.
    pub fn csv_columns(&self, header: &csv::ByteRecord) -> Result<Vec<Option<usize>>, String> {
        if header.len() < 3
            || trim(header.get(0).unwrap_or_default()) != b"customer_id"
            || trim(header.get(1).unwrap_or_default()) != b"ts"
        {
            return Err(
                "CSV header must start with customer_id,ts followed by feature columns".to_string(),
            );
        }
        let mut cols = Vec::new();
        let mut seen = 0u128;
        for name in header.iter().skip(2) {
            let name = trim(name);
            match self.lookup(name, 0) {
                Some(i) => {
                    if seen & (1 << i) != 0 {
                        return Err(format!(
                            "CSV column '{}' appears twice",
                            String::from_utf8_lossy(name)
                        ));
                    }
                    seen |= 1 << i;
                    cols.push(Some(i));
                }
                None => match self.unknown {
                    UnknownFeaturePolicy::Ignore => cols.push(None),
                    UnknownFeaturePolicy::DeadLetter => {
                        return Err(format!(
                            "CSV column '{}' is not a feature of the spec (fix the header, or set \
                             input.unknown_features = \"ignore\")",
                            String::from_utf8_lossy(name)
                        ));
                    }
                },
            }
        }
        Ok(cols)
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map(|p| p + 1)
        .unwrap_or(s);
    &b[s..e.max(s)]
}

#[derive(Clone, Copy)]
enum EnvField {
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Other,
}

fn envelope_field(k: &[u8]) -> EnvField {
    match k {
        b"partition" => EnvField::Partition,
        b"offset" => EnvField::Offset,
        b"timestamp" => EnvField::Timestamp,
        b"key" => EnvField::Key,
        b"value" => EnvField::Value,
        _ => EnvField::Other,
    }
}

#[derive(Clone, Copy)]
enum LogField {
    Customer,
    Ts,
    Feature(usize),
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec() -> Spec {
        Spec::parse(
            "name='t'\n[input]\ncustomer_id_prefix='cust-'\n[[features]]\nname='a'\n[[features]]\nname='b'\n",
            "t",
        )
        .unwrap()
    }

    fn parse(line: &str) -> Result<(Envelope, Log), Rejection> {
        let mut p = LogParser::new(&spec());
        let mut log = Log::empty(CustomerId::parse(b"x", b"").unwrap());
        p.parse_recorded(line.as_bytes(), &mut log)
            .map(|e| (e, log))
    }

    #[test]
    fn parses_canonical_line() {
        let line = r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"a":-61.5,"b":null}}"#;
        assert_eq!(fast_partition(line.as_bytes()), Some(3));
        let (env, log) = parse(line).unwrap();
        assert_eq!(env.partition, 3);
        assert_eq!(env.offset, 17);
        assert_eq!(env.timestamp_ms, Some(1_700_000_000_123));
        assert_eq!(log.customer.as_str(), "cust-1");
        assert_eq!(log.ts, 1_700_000_000);
        assert_eq!(log.values[0], -61.5);
        assert!(log.values[1].is_nan());
        assert_eq!(
            log.pos,
            SourcePos {
                partition: 3,
                offset: 17
            }
        );
    }

    #[test]
    fn fast_path_matches_the_general_parser() {
        let mut p = LogParser::new(&spec());
        let x = CustomerId::parse(b"x", b"").unwrap();
        let lines = [
            r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"a":-61.5,"b":null}}"#,
            r#"{"partition":0,"offset":0,"timestamp":0,"key":"cust-22","value":{"customer_id":"cust-22","ts":1700000300,"a":1e3,"b":0.000125}}"#,
        ];
        for line in lines {
            let (mut a, mut b) = (Log::empty(x), Log::empty(x));
            let fast = p
                .parse_canonical(line.as_bytes(), &mut a)
                .expect("canonical");
            let general = p.parse_general(line.as_bytes(), &mut b).unwrap();
            assert_eq!(fast, general);
            assert_eq!(a.customer, b.customer);
            assert_eq!(a.ts, b.ts);
            assert_eq!(a.pos, b.pos);
            for k in 0..a.values.len() {
                assert_eq!(a.values[k].to_bits(), b.values[k].to_bits());
            }
        }
        // Anything unusual is left to the general parser.
        for line in [
            r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"b":1,"a":2}}"#,
            r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"a":"1","b":2}}"#,
            r#"{"partition":03,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"a":1,"b":2}}"#,
            r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-2","value":{"customer_id":"cust-1","ts":1700000000,"a":1,"b":2}}"#,
            r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":99,"a":1,"b":2}}"#,
            r#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"a":1,"b":2}} "#,
        ] {
            let mut a = Log::empty(x);
            assert!(
                p.parse_canonical(line.as_bytes(), &mut a).is_none(),
                "{line}"
            );
        }
    }

    #[test]
    fn any_key_order_and_rfc3339() {
        let line = r#"{"value":{"a":1,"ts":"2023-11-14T22:13:20Z","customer_id":"cust-2"},"offset":1,"partition":0}"#;
        assert_eq!(fast_partition(line.as_bytes()), None);
        assert_eq!(envelope_partition(line.as_bytes()), Some(0));
        let (_, log) = parse(line).unwrap();
        assert_eq!(log.ts, 1_700_000_000);
        assert_eq!(log.values[0], 1.0);
    }

    #[test]
    fn rejection_codes() {
        let cases = [
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":1700000000,"a":1"#,
                RejectCode::Malformed,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":1700000000,"a":"x"}}"#,
                RejectCode::WrongType,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":1700000000,"a":NaN}}"#,
                RejectCode::NonFinite,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":1700000000,"a":1e39}}"#,
                RejectCode::NonFinite,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":99,"a":1}}"#,
                RejectCode::AbsurdTimestamp,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"user-1","ts":1700000000,"a":1}}"#,
                RejectCode::BadCustomerId,
            ),
            (
                r#"{"partition":0,"offset":1,"key":"cust-2","value":{"customer_id":"cust-1","ts":1700000000}}"#,
                RejectCode::KeyMismatch,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":1700000000,"zz":1}}"#,
                RejectCode::UnknownFeature,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"ts":1700000000,"a":1}}"#,
                RejectCode::MissingField,
            ),
            (
                r#"{"partition":0,"value":{"customer_id":"cust-1","ts":1700000000}}"#,
                RejectCode::MissingField,
            ),
            (
                r#"{"partition":0,"offset":1,"value":"not json"}"#,
                RejectCode::WrongType,
            ),
            (
                r#"{"partition":0,"offset":1,"value":{"customer_id":"cust-1","ts":1700000000,"a":1,"a":2}}"#,
                RejectCode::Malformed,
            ),
            (
                r#"{"partition":-1,"offset":1,"value":{}}"#,
                RejectCode::WrongType,
            ),
        ];
        for (line, code) in cases {
            assert_eq!(parse(line).map(|_| ()).unwrap_err().code, code, "{line}");
        }
    }

    #[test]
    fn csv_rows() {
        let p = LogParser::new(&spec());
        let header = csv::ByteRecord::from(vec!["customer_id", "ts", "b", "a"]);
        let cols = p.csv_columns(&header).unwrap();
        assert_eq!(cols, vec![Some(1), Some(0)]);
        let mut p = LogParser::new(&spec());
        let mut log = Log::empty(CustomerId::parse(b"x", b"").unwrap());
        let row = csv::ByteRecord::from(vec!["cust-9", "1700000000", "", "2.5"]);
        p.parse_csv_row(&row, &cols, &mut log).unwrap();
        assert_eq!(log.values[0], 2.5);
        assert!(log.values[1].is_nan());
        let bad = csv::ByteRecord::from(vec!["cust-9", "1700000000", "NaN", "2.5"]);
        assert_eq!(
            p.parse_csv_row(&bad, &cols, &mut log).unwrap_err().code,
            RejectCode::NonFinite
        );
        let short = csv::ByteRecord::from(vec!["cust-9", "1700000000"]);
        assert_eq!(
            p.parse_csv_row(&short, &cols, &mut log).unwrap_err().code,
            RejectCode::Malformed
        );
        let unknown = csv::ByteRecord::from(vec!["customer_id", "ts", "zz"]);
        assert!(p.csv_columns(&unknown).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut p = LogParser::new(&spec());
            let mut log = Log::empty(CustomerId::parse(b"x", b"").unwrap());
            let _ = p.parse_recorded(&bytes, &mut log);
            let _ = fast_partition(&bytes);
            let _ = envelope_partition(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_valid_lines(
            pos in 0usize..160,
            byte in any::<u8>(),
            cut in 0usize..170,
        ) {
            let line = br#"{"partition":3,"offset":17,"timestamp":1700000000123,"key":"cust-1","value":{"customer_id":"cust-1","ts":1700000000,"a":-61.5,"b":null}}"#;
            let mut m = line.to_vec();
            if pos < m.len() { m[pos] = byte; }
            m.truncate(cut.min(m.len()));
            let mut p = LogParser::new(&spec());
            let mut log = Log::empty(CustomerId::parse(b"x", b"").unwrap());
            let _ = p.parse_recorded(&m, &mut log);
        }

        #[test]
        fn fast_and_general_paths_agree(
            a in -1.0e7f64..1.0e7,
            b in proptest::option::of(-1.0e3f64..1.0e3),
            ts in 1_000_000_000i64..4_000_000_000,
            part in 0u32..100,
            off in 0u64..1_000_000_000,
        ) {
            let b = b.map(|v| format!("{v}")).unwrap_or_else(|| "null".into());
            let line = format!(
                r#"{{"partition":{part},"offset":{off},"timestamp":{},"key":"cust-7","value":{{"customer_id":"cust-7","ts":{ts},"a":{a},"b":{b}}}}}"#,
                ts * 1000
            );
            let mut p = LogParser::new(&spec());
            let x = CustomerId::parse(b"x", b"").unwrap();
            let (mut l1, mut l2) = (Log::empty(x), Log::empty(x));
            let fast = p.parse_canonical(line.as_bytes(), &mut l1);
            let general = p.parse_general(line.as_bytes(), &mut l2);
            prop_assert!(fast.is_some());
            prop_assert_eq!(fast, general.ok());
            prop_assert_eq!(l1.values[0].to_bits(), l2.values[0].to_bits());
            prop_assert_eq!(l1.values[1].to_bits(), l2.values[1].to_bits());
            prop_assert_eq!(l1.ts, l2.ts);
        }

        #[test]
        fn valid_numbers_round_trip(v in -1.0e6f64..1.0e6) {
            let line = format!(
                r#"{{"partition":0,"offset":1,"value":{{"customer_id":"cust-1","ts":1700000000,"a":{v}}}}}"#
            );
            let (_, log) = parse(&line).unwrap();
            prop_assert_eq!(log.values[0], v as f32);
        }
    }
}
