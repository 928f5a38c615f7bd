//! A strict, allocation-free JSON scanner for the flat objects router logs are made of.
//!
//! `serde_json` builds values; the hot path only needs to walk one object, match its keys against the spec's
//! features and read numbers. This scanner does exactly that on a borrowed byte slice, validates the JSON
//! grammar it walks (so broken lines are refused, not misread) and parses numbers with an exact fast path
//! (Clinger: a mantissa below 2^53 scaled by an exactly representable power of ten is correctly rounded),
//! falling back to the standard library for anything longer.

/// Why a byte slice is not the JSON we expect. `at` is the byte offset where scanning stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub what: &'static str,
    pub at: usize,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

pub type JResult<T> = Result<T, JsonError>;

/// The kind of the next JSON value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
    /// `NaN`, `Infinity`, `-Infinity`: not JSON, but common from producers; reported distinctly.
    NonFinite,
    Invalid,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Bool => "boolean",
            Kind::Null => "null",
            Kind::NonFinite => "non-finite number",
            Kind::Invalid => "invalid token",
        }
    }
}

/// A string value: either borrowed as is (no escapes), or decoded into the caller's scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Str<'a> {
    Raw(&'a [u8]),
    Decoded,
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

const MAX_DEPTH: usize = 64;

/// A cursor over one JSON text.
pub struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0 }
    }

    /// A scanner positioned at byte `i` of `b`.
    pub fn at(b: &'a [u8], i: usize) -> Self {
        Scanner { b, i }
    }

    /// Current byte offset.
    pub fn pos(&self) -> usize {
        self.i
    }

    /// The underlying text.
    pub fn text(&self) -> &'a [u8] {
        self.b
    }

    fn err<T>(&self, what: &'static str) -> JResult<T> {
        Err(JsonError { what, at: self.i })
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// Consumes `c` (after whitespace) or fails.
    #[inline]
    pub fn expect(&mut self, c: u8, what: &'static str) -> JResult<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// Consumes `c` if it is next.
    #[inline]
    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Requires that only whitespace remains.
    pub fn end(&mut self) -> JResult<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("trailing characters after the JSON value")
        }
    }

    /// The kind of the next value (does not consume).
    pub fn kind(&mut self) -> Kind {
        match self.peek() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b'-') => {
                if self.b[self.i..].starts_with(b"-Infinity") {
                    Kind::NonFinite
                } else {
                    Kind::Number
                }
            }
            Some(b'0'..=b'9') => Kind::Number,
            Some(b't') | Some(b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(b'N') | Some(b'I') => Kind::NonFinite,
            _ => Kind::Invalid,
        }
    }

    /// Reads a string. Without escapes it is borrowed; with escapes it is decoded into `scratch`.
    pub fn string(&mut self, scratch: &mut Vec<u8>) -> JResult<Str<'a>> {
        self.expect(b'"', "expected a string")?;
        let start = self.i;
        // Fast scan for the closing quote without escapes.
        loop {
            match self.b.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Ok(Str::Raw(s));
                }
                Some(b'\\') => break,
                Some(&c) if c < 0x20 => return self.err("control character in string"),
                Some(_) => self.i += 1,
            }
        }
        scratch.clear();
        scratch.extend_from_slice(&self.b[start..self.i]);
        loop {
            match self.b.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let e = match self.b.get(self.i + 1) {
                        Some(e) => *e,
                        None => return self.err("unterminated escape"),
                    };
                    self.i += 2;
                    match e {
                        b'"' => scratch.push(b'"'),
                        b'\\' => scratch.push(b'\\'),
                        b'/' => scratch.push(b'/'),
                        b'b' => scratch.push(8),
                        b'f' => scratch.push(12),
                        b'n' => scratch.push(b'\n'),
                        b'r' => scratch.push(b'\r'),
                        b't' => scratch.push(b'\t'),
                        b'u' => {
                            let cp = self.hex4()?;
                            let ch = if (0xD800..0xDC00).contains(&cp) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return self.err("unpaired surrogate in string");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("invalid low surrogate in string");
                                }
                                char::from_u32(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                char::from_u32(cp)
                            };
                            match ch {
                                Some(ch) => {
                                    let mut buf = [0u8; 4];
                                    scratch.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                                }
                                None => return self.err("invalid unicode escape"),
                            }
                        }
                        _ => return self.err("invalid escape in string"),
                    }
                }
                Some(&c) if c < 0x20 => return self.err("control character in string"),
                Some(&c) => {
                    scratch.push(c);
                    self.i += 1;
                }
            }
        }
        Ok(Str::Decoded)
    }

    fn hex4(&mut self) -> JResult<u32> {
        let s = match self.b.get(self.i..self.i + 4) {
            Some(s) => s,
            None => return self.err("short unicode escape"),
        };
        let mut v = 0u32;
        for &c in s {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return self.err("invalid hex digit in unicode escape"),
            } as u32;
            v = v * 16 + d;
        }
        self.i += 4;
        Ok(v)
    }

    /// Reads a JSON number as `f64`. Overflow to infinity is an error (`non-finite number`).
    pub fn number(&mut self) -> JResult<f64> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut mant: u64 = 0;
        let mut sig_digits = 0usize;
        let mut int_digits = 0usize;
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                int_digits = 1;
            }
            Some(b'1'..=b'9') => {
                while let Some(&c @ b'0'..=b'9') = b.get(i) {
                    if sig_digits < 19 {
                        mant = mant * 10 + (c - b'0') as u64;
                        sig_digits += 1;
                    } else {
                        sig_digits += 1;
                    }
                    int_digits += 1;
                    i += 1;
                }
            }
            _ => {
                self.i = i;
                return self.err("expected a number");
            }
        }
        let mut frac_digits = 0usize;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let fs = i;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                if sig_digits < 19 && (mant != 0 || c != b'0' || sig_digits > 0) {
                    mant = mant * 10 + (c - b'0') as u64;
                    sig_digits += 1;
                    frac_digits += 1;
                } else if sig_digits < 19 {
                    // leading zeros of a fraction like 0.000123 still scale the value
                    frac_digits += 1;
                } else {
                    sig_digits += 1;
                }
                i += 1;
            }
            if i == fs {
                self.i = i;
                return self.err("expected digits after the decimal point");
            }
        }
        let mut exp: i64 = 0;
        if matches!(b.get(i), Some(b'e') | Some(b'E')) {
            i += 1;
            let eneg = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let es = i;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                if exp < 100_000 {
                    exp = exp * 10 + (c - b'0') as i64;
                }
                i += 1;
            }
            if i == es {
                self.i = i;
                return self.err("expected digits in the exponent");
            }
            if eneg {
                exp = -exp;
            }
        }
        self.i = i;
        let _ = int_digits;
        // Fast path: at most 19 significant digits were read exactly, the mantissa fits 53 bits and the
        // decimal exponent is within the exactly representable powers of ten.
        if sig_digits <= 19 && mant < (1u64 << 53) {
            let e = exp - frac_digits as i64;
            let v = if e == 0 {
                Some(mant as f64)
            } else if (1..=22).contains(&e) {
                Some(mant as f64 * POW10[e as usize])
            } else if (-22..0).contains(&e) {
                Some(mant as f64 / POW10[(-e) as usize])
            } else {
                None
            };
            if let Some(v) = v {
                return Ok(if neg { -v } else { v });
            }
        }
        // Slow path: the standard library's correctly rounded parser on the validated text.
        let text = match std::str::from_utf8(&b[start..i]) {
            Ok(t) => t,
            Err(_) => return self.err("expected a number"),
        };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            Ok(_) => Err(JsonError {
                what: "non-finite number",
                at: start,
            }),
            Err(_) => Err(JsonError {
                what: "expected a number",
                at: start,
            }),
        }
    }

    /// Reads a non-negative integer that fits `u64` (no fraction, no exponent).
    pub fn unsigned(&mut self) -> JResult<u64> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
            v = match v
                .checked_mul(10)
                .and_then(|v| v.checked_add((c - b'0') as u64))
            {
                Some(v) => v,
                None => return self.err("integer too large"),
            };
            self.i += 1;
        }
        if self.i == start {
            return self.err("expected a non-negative integer");
        }
        if matches!(self.b.get(self.i), Some(b'.') | Some(b'e') | Some(b'E')) {
            return self.err("expected an integer, found a fraction or exponent");
        }
        Ok(v)
    }

    /// Reads `true`/`false`/`null` literals.
    pub fn literal(&mut self) -> JResult<Kind> {
        self.ws();
        let rest = &self.b[self.i..];
        for (lit, kind) in [
            (&b"true"[..], Kind::Bool),
            (b"false", Kind::Bool),
            (b"null", Kind::Null),
        ] {
            if rest.starts_with(lit) {
                self.i += lit.len();
                return Ok(kind);
            }
        }
        self.err("invalid literal")
    }

    /// Skips any JSON value, validating it.
    pub fn skip_value(&mut self) -> JResult<()> {
        self.skip_depth(0)
    }

    fn skip_depth(&mut self, depth: usize) -> JResult<()> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        let mut scratch = Vec::new();
        match self.kind() {
            Kind::Object => {
                self.i += 1;
                if self.eat(b'}') {
                    return Ok(());
                }
                loop {
                    self.string(&mut scratch)?;
                    self.expect(b':', "expected ':' after an object key")?;
                    self.skip_depth(depth + 1)?;
                    if self.eat(b',') {
                        continue;
                    }
                    self.expect(b'}', "expected ',' or '}' in an object")?;
                    return Ok(());
                }
            }
            Kind::Array => {
                self.i += 1;
                if self.eat(b']') {
                    return Ok(());
                }
                loop {
                    self.skip_depth(depth + 1)?;
                    if self.eat(b',') {
                        continue;
                    }
                    self.expect(b']', "expected ',' or ']' in an array")?;
                    return Ok(());
                }
            }
            Kind::String => self.string(&mut scratch).map(|_| ()),
            Kind::Number => self.number().map(|_| ()),
            Kind::Bool | Kind::Null => self.literal().map(|_| ()),
            Kind::NonFinite => self.err("non-finite number"),
            Kind::Invalid => self.err("invalid JSON value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> JResult<f64> {
        let mut sc = Scanner::new(s.as_bytes());
        let v = sc.number()?;
        sc.end()?;
        Ok(v)
    }

    #[test]
    fn numbers_match_std() {
        for s in [
            "0",
            "-0",
            "1",
            "-61.25",
            "3.14159",
            "1e3",
            "1E-3",
            "0.000123",
            "123456789012345678",
            "1.7976931348623157e308",
            "5e-324",
            "12345678901234567890123",
            "0.1",
            "-2.5e+2",
            "9007199254740993",
            "100.000000000000000000001",
        ] {
            let ours = num(s).unwrap();
            let std: f64 = s.parse().unwrap();
            assert_eq!(ours.to_bits(), std.to_bits(), "{s}");
        }
    }

    #[test]
    fn rejects_bad_numbers() {
        for s in ["01", "1.", ".5", "-", "1e", "+1", "1e400", "--1", "0x10"] {
            assert!(num(s).is_err(), "{s}");
        }
        assert_eq!(num("1e400").unwrap_err().what, "non-finite number");
    }

    #[test]
    fn strings_and_escapes() {
        let mut scratch = Vec::new();
        let mut sc = Scanner::new(br#""plain""#);
        assert_eq!(sc.string(&mut scratch).unwrap(), Str::Raw(b"plain"));
        let mut sc = Scanner::new(br#""a\"b\u00e9\ud83d\ude00""#);
        assert_eq!(sc.string(&mut scratch).unwrap(), Str::Decoded);
        assert_eq!(std::str::from_utf8(&scratch).unwrap(), "a\"bé😀");
        let mut sc = Scanner::new(br#""bad\x""#);
        assert!(sc.string(&mut scratch).is_err());
        let mut sc = Scanner::new(b"\"unterminated");
        assert!(sc.string(&mut scratch).is_err());
    }

    #[test]
    fn skips_nested_values() {
        let mut sc = Scanner::new(br#"{"a":[1,2,{"b":null}],"c":"x","d":true} "#);
        sc.skip_value().unwrap();
        sc.end().unwrap();
        let mut sc = Scanner::new(br#"{"a":[1,2}"#);
        assert!(sc.skip_value().is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(Scanner::new(b" NaN").kind(), Kind::NonFinite);
        assert_eq!(Scanner::new(b"-Infinity").kind(), Kind::NonFinite);
        assert_eq!(Scanner::new(b"-1").kind(), Kind::Number);
        assert_eq!(Scanner::new(b"\"s\"").kind(), Kind::String);
    }
}
