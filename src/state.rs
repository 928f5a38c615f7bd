//! The per-series state as it lives in the differential arrangement, and the Abelian difference type that
//! updates it.
//!
//! # Layout
//!
//! Every (customer, feature) series owns one 48-byte [`Slot`]; a customer additionally owns one *meta* slot
//! (silence, reboots, duplicate guard). A customer's slots are grouped eight to a [`Block`] of 384 bytes, and
//! the arrangement is keyed by customer with the block index as value:
//!
//! ```text
//!   key: CustomerId (24 B)   val: block index (u8)   time: epoch (u64)   diff: Block ([u64; 48] = 8 slots)
//! ```
//!
//! For the 20-feature home Wi-Fi spec a customer has 21 slots in 3 blocks (3 slots spare).
//!
//! # Why the difference is the state
//!
//! Differential collections accumulate *differences*. Here the difference type is the state itself under
//! wrapping addition of 64-bit words, an Abelian group: an epoch inserts `new - old` (word-wise, wrapping) for
//! every block that changed, and the accumulation of all differences of a key is bit-for-bit the current
//! state. Integer wrapping addition is associative and commutative, so the result is exact whatever order the
//! spine merges batches in — which is what makes output byte-identical across worker layouts. An all-zero
//! block is the identity, so a block that returns to zero leaves the arrangement, and a never-seen customer
//! reads as zeros ("fresh").

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

/// Bytes of state per series (and per customer meta slot).
pub const SLOT_BYTES: usize = 48;
/// Slots per block.
pub const BLOCK_SLOTS: usize = 8;
/// 64-bit words per block.
pub const BLOCK_WORDS: usize = SLOT_BYTES * BLOCK_SLOTS / 8;

/// One series' state as raw bytes (interpreted by [`crate::model`]).
pub type Slot = [u8; SLOT_BYTES];

/// Eight slots as the arrangement's difference type (wrapping word addition).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block(pub [u64; BLOCK_WORDS]);

impl Block {
    pub const ZERO: Block = Block([0; BLOCK_WORDS]);

    /// Reads slot `i` (0..8) as bytes.
    #[inline]
    pub fn slot(&self, i: usize) -> Slot {
        let mut s = [0u8; SLOT_BYTES];
        for w in 0..SLOT_BYTES / 8 {
            s[w * 8..w * 8 + 8].copy_from_slice(&self.0[i * (SLOT_BYTES / 8) + w].to_le_bytes());
        }
        s
    }

    /// Writes slot `i` (0..8).
    #[inline]
    pub fn set_slot(&mut self, i: usize, s: &Slot) {
        for w in 0..SLOT_BYTES / 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&s[w * 8..w * 8 + 8]);
            self.0[i * (SLOT_BYTES / 8) + w] = u64::from_le_bytes(b);
        }
    }

    /// `self - other`, word-wise wrapping: the difference that turns `other` into `self`.
    #[inline]
    pub fn minus(&self, other: &Block) -> Block {
        let mut d = Block::ZERO;
        for i in 0..BLOCK_WORDS {
            d.0[i] = self.0[i].wrapping_sub(other.0[i]);
        }
        d
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({:x?})", &self.0[..4])
    }
}

impl Default for Block {
    fn default() -> Self {
        Block::ZERO
    }
}

impl IsZero for Block {
    #[inline]
    fn is_zero(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

impl Semigroup for Block {
    #[inline]
    fn plus_equals(&mut self, rhs: &Self) {
        for i in 0..BLOCK_WORDS {
            self.0[i] = self.0[i].wrapping_add(rhs.0[i]);
        }
    }
}

impl Monoid for Block {
    fn zero() -> Self {
        Block::ZERO
    }
}

impl Abelian for Block {
    fn negate(&mut self) {
        for w in self.0.iter_mut() {
            *w = w.wrapping_neg();
        }
    }
}

// Blocks cross process boundaries only inside arrangements that are not exchanged, but timely requires
// serde on data types that might; serialize as a sequence of words.
impl Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(BLOCK_WORDS)?;
        for w in &self.0 {
            t.serialize_element(w)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Block;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{BLOCK_WORDS} words")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Block, A::Error> {
                let mut b = Block::ZERO;
                for (i, w) in b.0.iter_mut().enumerate() {
                    *w = a
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(b)
            }
        }
        d.deserialize_tuple(BLOCK_WORDS, V)
    }
}

impl Block {
    /// Bytes of the little-endian form ([`Block::write_le`]).
    pub const BYTES: usize = BLOCK_WORDS * 8;

    /// Appends the block's words, little-endian (a checkpoint's form: the same on every platform).
    pub fn write_le(&self, out: &mut [u8]) {
        for (w, o) in self.0.iter().zip(out.chunks_exact_mut(8)) {
            o.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Reads [`Block::write_le`]'s form (`bytes` holds at least [`Block::BYTES`]).
    pub fn read_le(bytes: &[u8]) -> Block {
        let mut b = Block::ZERO;
        for (w, i) in b.0.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(i);
            *w = u64::from_le_bytes(a);
        }
        b
    }
}

/// Slots per customer: `features` series, the meta slot, and with the global model its per-series
/// calibration (`model::global`, 6 bytes a series).
pub fn slots_for(features: usize, global: bool) -> usize {
    features
        + 1
        + if global {
            crate::model::global::GlobalModel::slots_for(features)
        } else {
            0
        }
}

/// Blocks per customer (see [`slots_for`]).
pub fn blocks_for(features: usize, global: bool) -> usize {
    slots_for(features, global).div_ceil(BLOCK_SLOTS)
}

/// Little-endian fields in a byte buffer (a slot, a detector's state), so the byte layout is the same on every
/// platform. Single bytes are plain indexing.
pub mod le {
    #[inline]
    pub fn f32(b: &[u8], at: usize) -> f32 {
        f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    #[inline]
    pub fn set_f32(b: &mut [u8], at: usize, v: f32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// An IEEE half-precision field, widened to f32.
    #[inline]
    pub fn f16(b: &[u8], at: usize) -> f32 {
        crate::f16::to_f32(u16(b, at))
    }
    #[inline]
    pub fn set_f16(b: &mut [u8], at: usize, v: f32) {
        set_u16(b, at, crate::f16::from_f32(v));
    }
    /// A non-negative scale as an unsigned 16-bit float: 6 exponent bits (bias 32), 10 mantissa bits, code 0
    /// for zero — 4.7·10⁻¹⁰ … 4.3·10⁹ at an IEEE half's precision (an IEEE half stops at 65504: the noise
    /// scale of a byte counter overflows it). Bit operations only; encoding rounds to nearest; decode →
    /// encode is exact.
    #[inline]
    pub fn scale16(b: &[u8], at: usize) -> f32 {
        let v = u16(b, at) as u32;
        if v == 0 {
            return 0.0;
        }
        f32::from_bits((((v >> 10) + 127 - 32) << 23) | ((v & 0x3ff) << 13))
    }
    #[inline]
    pub fn set_scale16(b: &mut [u8], at: usize, x: f32) {
        let v = if x > 0.0 && x.is_finite() {
            // round the mantissa to 10 bits (a carry moves into the exponent, as it should)
            let bits = x.to_bits() + 0x1000;
            let e = (bits >> 23) as i32 - 127 + 32;
            if e < 1 {
                1 << 10
            } else if e > 63 {
                u16::MAX
            } else {
                ((e as u32) << 10 | ((bits >> 13) & 0x3ff)) as u16
            }
        } else if x > 0.0 {
            u16::MAX
        } else {
            0
        };
        set_u16(b, at, v);
    }
    /// A bound of a value range as a signed 16-bit float: sign bit, 6 exponent bits (bias 32), 9 mantissa
    /// bits; code 0 is zero and exponent 63 with mantissa 511 is ±infinity — magnitudes 4.7·10⁻¹⁰ … 4.3·10⁹
    /// at 2⁻¹⁰ relative precision. Encoding rounds **outward** (`up`: to the smallest code ≥ x, else to the
    /// largest code ≤ x), so a stored range always contains every value put into it; beyond the largest
    /// finite code the bound becomes infinite. Bit operations only; decode → encode is exact.
    #[inline]
    pub fn bound16(b: &[u8], at: usize) -> f32 {
        let v = u16(b, at) as u32;
        let sign = (v & 0x8000) << 16;
        let mag = v & 0x7fff;
        if mag == 0 {
            return 0.0;
        }
        if mag == 0x7fff {
            return f32::from_bits(sign | f32::INFINITY.to_bits());
        }
        f32::from_bits(sign | (((mag >> 9) + 127 - 32) << 23) | ((mag & 0x1ff) << 14))
    }
    #[inline]
    pub fn set_bound16(b: &mut [u8], at: usize, x: f32, up: bool) {
        set_u16(b, at, bound16_code(x, up));
    }
    /// Writes `x` in [`bound16`]'s format rounded to the nearest code (half-way magnitudes away from zero,
    /// so the rounding of −x mirrors that of x: a quantity learned by symmetric increments stays unbiased);
    /// magnitudes below 2^-32 become 0, beyond the largest finite code (≈ 4.3·10⁹) saturate at it, NaN is 0.
    #[inline]
    pub fn set_nearest16(b: &mut [u8], at: usize, x: f32) {
        set_u16(b, at, nearest16_code(x));
    }
    #[inline]
    fn nearest16_code(x: f32) -> u16 {
        if x.is_nan() {
            return 0;
        }
        let sign: u16 = if x < 0.0 { 0x8000 } else { 0 };
        if x.is_infinite() {
            return sign | 0x7ffe;
        }
        let bits = x.abs().to_bits() + 0x2000; // half of the 14 dropped bits; a carry moves into the exponent
        let e = (bits >> 23) as i32 - 127 + 32;
        if e < 1 {
            return 0;
        }
        if e > 63 || (e == 63 && ((bits >> 14) & 0x1ff) == 0x1ff) {
            return sign | 0x7ffe;
        }
        sign | ((e as u32) << 9 | ((bits >> 14) & 0x1ff)) as u16
    }
    #[inline]
    fn bound16_code(x: f32, up: bool) -> u16 {
        if x.is_nan() {
            // No value: the widest range (a NaN never reaches a detector; this keeps the codec total).
            return if up { 0x7fff } else { 0xffff };
        }
        let neg = x < 0.0;
        if x.is_infinite() {
            return if neg { 0xffff } else { 0x7fff };
        }
        // Outward for a positive x rounds its magnitude up when `up`; for a negative x when not `up`.
        let ceil = up != neg;
        let bits = x.abs().to_bits();
        if bits == 0 {
            return 0;
        }
        let sign: u16 = if neg { 0x8000 } else { 0 };
        let dropped = bits & 0x3fff;
        let bits = if ceil && dropped != 0 {
            bits + 0x4000 // a carry moves into the exponent, as it should
        } else {
            bits
        };
        let e = (bits >> 23) as i32 - 127 + 32;
        let mag: u16 = if e < 1 {
            if ceil { 1 << 9 } else { 0 }
        } else if e > 63 || (e == 63 && ((bits >> 14) & 0x1ff) == 0x1ff) {
            if ceil { 0x7fff } else { 0x7ffe }
        } else {
            ((e as u32) << 9 | ((bits >> 14) & 0x1ff)) as u16
        };
        if mag == 0 { 0 } else { sign | mag }
    }
    #[inline]
    pub fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    #[inline]
    pub fn set_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    #[inline]
    pub fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    #[inline]
    pub fn set_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale16_round_trips_every_code_and_covers_byte_counters() {
        let mut b = [0u8; 2];
        // codes 1..1023 are not produced (exponent field 0 is reserved for zero)
        for v in (0..=u16::MAX).filter(|v| *v == 0 || *v >= 1 << 10) {
            le::set_u16(&mut b, 0, v);
            let x = le::scale16(&b, 0);
            le::set_scale16(&mut b, 0, x);
            assert_eq!(le::u16(&b, 0), v, "code {v} ({x})");
        }
        // by hand: 1.0 = 2^0 → exponent field 32, mantissa 0; 1.5 → mantissa 0x200
        le::set_scale16(&mut b, 0, 1.0);
        assert_eq!(le::u16(&b, 0), 32 << 10);
        le::set_scale16(&mut b, 0, 1.5);
        assert_eq!(le::u16(&b, 0), (32 << 10) | 0x200);
        for x in [1e-6f32, 0.5, 1.162, 3.5, 65504.0, 3.2e6, 1e9] {
            le::set_scale16(&mut b, 0, x);
            let y = le::scale16(&b, 0);
            assert!((y / x - 1.0).abs() <= 1.0 / 2048.0, "{x} -> {y}");
        }
        le::set_scale16(&mut b, 0, 0.0);
        assert_eq!(le::scale16(&b, 0), 0.0);
        le::set_scale16(&mut b, 0, -3.0);
        assert_eq!(le::scale16(&b, 0), 0.0);
        le::set_scale16(&mut b, 0, f32::INFINITY);
        assert!(le::scale16(&b, 0) > 4e9);
        le::set_scale16(&mut b, 0, 1e-20);
        assert!((le::scale16(&b, 0) - 2f32.powi(-31)).abs() < 1e-15);
    }

    #[test]
    fn nearest16_rounds_to_the_nearest_code_symmetrically() {
        let mut b = [0u8; 2];
        // every finite code round-trips
        for v in 0..=u16::MAX {
            let mag = v & 0x7fff;
            if (mag != 0 && mag < 1 << 9) || v == 0x8000 || mag == 0x7fff {
                continue;
            }
            le::set_u16(&mut b, 0, v);
            let x = le::bound16(&b, 0);
            le::set_nearest16(&mut b, 0, x);
            assert_eq!(le::u16(&b, 0), v, "code {v:#x} ({x})");
        }
        // by hand: 1 + 2^-12 is nearer 1 than 1 + 2^-9; 1 + 3·2^-11 nearer 1 + 2^-9; the half-way 1 + 2^-10
        // goes away from zero; −x mirrors x
        for (x, want) in [
            (1.0 + 2f32.powi(-12), 1.0),
            (1.0 + 3.0 * 2f32.powi(-11), 1.0 + 2f32.powi(-9)),
            (1.0 + 2f32.powi(-10), 1.0 + 2f32.powi(-9)),
            (2.0 - 2f32.powi(-12), 2.0),
        ] {
            le::set_nearest16(&mut b, 0, x);
            assert_eq!(le::bound16(&b, 0), want, "{x}");
            le::set_nearest16(&mut b, 0, -x);
            assert_eq!(le::bound16(&b, 0), -want, "{}", -x);
        }
        // within half a code (2^-10 relative) for the magnitudes a weekend offset takes; saturating, not ∞
        for x in [3e-9f32, 0.37, -1.162, 99.99, -65504.0, 3.2e6] {
            le::set_nearest16(&mut b, 0, x);
            assert!((le::bound16(&b, 0) - x).abs() <= x.abs() / 1024.0, "{x}");
        }
        le::set_nearest16(&mut b, 0, 1e12);
        assert!(le::bound16(&b, 0).is_finite() && le::bound16(&b, 0) > 4e9);
        le::set_nearest16(&mut b, 0, 1e-12);
        assert_eq!(le::bound16(&b, 0), 0.0);
    }

    #[test]
    fn bound16_rounds_outward_and_round_trips() {
        let mut b = [0u8; 2];
        // every code decodes to a value that encodes back to it, in both directions
        for v in 0..=u16::MAX {
            let mag = v & 0x7fff;
            if (mag != 0 && mag < 1 << 9) || v == 0x8000 {
                continue; // exponent field 0 is reserved for zero; -0 is written as 0
            }
            le::set_u16(&mut b, 0, v);
            let x = le::bound16(&b, 0);
            for up in [false, true] {
                le::set_bound16(&mut b, 0, x, up);
                assert_eq!(le::u16(&b, 0), v, "code {v:#x} ({x}, up {up})");
            }
        }
        // by hand: 1.0 = 2^0 → exponent field 32; 1.5 → mantissa 0x100; -2 → sign and exponent 33
        le::set_bound16(&mut b, 0, 1.0, true);
        assert_eq!(le::u16(&b, 0), 32 << 9);
        le::set_bound16(&mut b, 0, 1.5, false);
        assert_eq!(le::u16(&b, 0), (32 << 9) | 0x100);
        le::set_bound16(&mut b, 0, -2.0, true);
        assert_eq!(le::u16(&b, 0), 0x8000 | (33 << 9));
        // 1 + 2^-12 lies between the codes 1 and 1 + 2^-9: up gives the larger, down the smaller
        let x = 1.0 + 2f32.powi(-12);
        le::set_bound16(&mut b, 0, x, true);
        assert_eq!(le::bound16(&b, 0), 1.0 + 2f32.powi(-9));
        le::set_bound16(&mut b, 0, x, false);
        assert_eq!(le::bound16(&b, 0), 1.0);
        le::set_bound16(&mut b, 0, -x, true);
        assert_eq!(le::bound16(&b, 0), -1.0);
        le::set_bound16(&mut b, 0, -x, false);
        assert_eq!(le::bound16(&b, 0), -1.0 - 2f32.powi(-9));
        // outward for every magnitude NAB and the fleet produce, within 2^-9 relative
        for x in [3e-9f32, 0.37, 1.162, 99.99, 65504.0, 3.2e6, -7.5e8, 1.9e9] {
            le::set_bound16(&mut b, 0, x, true);
            let hi = le::bound16(&b, 0);
            le::set_bound16(&mut b, 0, x, false);
            let lo = le::bound16(&b, 0);
            assert!(lo <= x && x <= hi, "{lo} <= {x} <= {hi}");
            assert!((hi - lo) <= x.abs() / 512.0, "{x}: [{lo}, {hi}]");
        }
        // beyond the codes: infinite outward, the largest finite inward; tiny values to zero or the smallest
        le::set_bound16(&mut b, 0, 1e10, true);
        assert_eq!(le::bound16(&b, 0), f32::INFINITY);
        le::set_bound16(&mut b, 0, -1e10, false);
        assert_eq!(le::bound16(&b, 0), f32::NEG_INFINITY);
        le::set_bound16(&mut b, 0, 1e10, false);
        assert!(le::bound16(&b, 0) > 4e9 && le::bound16(&b, 0).is_finite());
        le::set_bound16(&mut b, 0, 1e-20, false);
        assert_eq!(le::bound16(&b, 0), 0.0);
        le::set_bound16(&mut b, 0, 1e-20, true);
        assert_eq!(le::bound16(&b, 0), 2f32.powi(-31));
        le::set_bound16(&mut b, 0, 0.0, true);
        assert_eq!(le::u16(&b, 0), 0);
    }

    #[test]
    fn deltas_reconstruct_state_exactly_in_any_order() {
        let mut a = Block::ZERO;
        let mut b = Block::ZERO;
        let mut c = Block::ZERO;
        for i in 0..BLOCK_WORDS {
            a.0[i] = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            b.0[i] = u64::MAX - i as u64;
            c.0[i] = 12345 * i as u64;
        }
        // zero -> a -> b -> c as three deltas, accumulated in two different orders.
        let d1 = a.minus(&Block::ZERO);
        let d2 = b.minus(&a);
        let d3 = c.minus(&b);
        let mut x = d3;
        x.plus_equals(&d1);
        x.plus_equals(&d2);
        let mut y = d1;
        y.plus_equals(&d2);
        y.plus_equals(&d3);
        assert_eq!(x, c);
        assert_eq!(y, c);
        let mut n = d2;
        n.negate();
        n.plus_equals(&d2);
        assert!(n.is_zero());
    }

    #[test]
    fn slots_round_trip() {
        let mut b = Block::ZERO;
        let mut s = [0u8; SLOT_BYTES];
        for (i, v) in s.iter_mut().enumerate() {
            *v = i as u8 + 1;
        }
        b.set_slot(5, &s);
        assert_eq!(b.slot(5), s);
        assert_eq!(b.slot(4), [0u8; SLOT_BYTES]);
        assert_eq!(blocks_for(20, false), 3);
        assert_eq!(blocks_for(7, false), 1);
        assert_eq!(blocks_for(8, false), 2);
        // the global model's 120 bytes for 20 series fill the third block's 3 free slots
        assert_eq!(slots_for(20, true), 24);
        assert_eq!(blocks_for(20, true), 3);
        assert_eq!(blocks_for(7, true), 2);
    }

    #[test]
    fn serde_round_trip() {
        let mut b = Block::ZERO;
        b.0[3] = 77;
        let j = serde_json::to_string(&b).unwrap();
        let back: Block = serde_json::from_str(&j).unwrap();
        assert_eq!(b, back);
    }
}
