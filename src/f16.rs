//! IEEE 754 half-precision conversions in plain integer arithmetic.
//!
//! The per-series state keeps its slowly varying quantities as 16-bit floats. Converting them is on the
//! hottest path (twelve conversions per series per epoch); portable software conversion is branch-light and
//! avoids a CPU-feature check per call. Round to nearest, ties to even, like the hardware instruction.

/// f32 → f16 bits (round to nearest even; overflow to ±∞; NaN stays NaN).
#[inline]
pub fn from_f32(value: f32) -> u16 {
    let x = value.to_bits();
    let sign = x & 0x8000_0000;
    let exp = x & 0x7F80_0000;
    let man = x & 0x007F_FFFF;
    if exp == 0x7F80_0000 {
        let nan_bit = if man == 0 { 0 } else { 0x0200 };
        return ((sign >> 16) | 0x7C00 | nan_bit | (man >> 13)) as u16;
    }
    let half_sign = sign >> 16;
    let half_exp = ((exp >> 23) as i32) - 127 + 15;
    if half_exp >= 0x1F {
        return (half_sign | 0x7C00) as u16;
    }
    if half_exp <= 0 {
        if 14 - half_exp > 24 {
            return half_sign as u16;
        }
        let man = man | 0x0080_0000;
        let mut half_man = man >> (14 - half_exp);
        let round_bit = 1 << (13 - half_exp);
        if (man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0 {
            half_man += 1;
        }
        return (half_sign | half_man) as u16;
    }
    let bits = half_sign | ((half_exp as u32) << 10) | (man >> 13);
    let round_bit = 0x0000_1000;
    if (man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0 {
        (bits + 1) as u16
    } else {
        bits as u16
    }
}

/// f16 bits → f32 (exact).
#[inline]
pub fn to_f32(h: u16) -> f32 {
    if h & 0x7FFF == 0 {
        return f32::from_bits((h as u32) << 16);
    }
    let sign = ((h & 0x8000) as u32) << 16;
    let half_exp = (h & 0x7C00) as u32;
    let half_man = (h & 0x03FF) as u32;
    if half_exp == 0x7C00 {
        return if half_man == 0 {
            f32::from_bits(sign | 0x7F80_0000)
        } else {
            f32::from_bits(sign | 0x7FC0_0000 | (half_man << 13))
        };
    }
    if half_exp == 0 {
        // subnormal: normalise
        let e = (half_man as u16).leading_zeros() - 6;
        let exp = (127 - 15 - e) << 23;
        let man = (half_man << (14 + e)) & 0x007F_FFFF;
        return f32::from_bits(sign | exp | man);
    }
    let exp = ((half_exp >> 10) + 127 - 15) << 23;
    f32::from_bits(sign | exp | (half_man << 13))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_ieee_conversion() {
        let mut rng = crate::rng::Rng::new(4, 4);
        let special = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65520.0,
            1e6,
            -1e6,
            6.1e-5,
            5.96e-8,
            2.9e-8,
            1e-9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.1,
            2.0003,
            1.0009765,
            1.000_488_3,
        ];
        let randoms = (0..200_000).map(|_| {
            let e = rng.range(-30.0, 20.0);
            (rng.normal() * e.exp2()) as f32
        });
        for v in special.into_iter().chain(randoms) {
            let ours = from_f32(v);
            let reference = half::f16::from_f32(v).to_bits();
            assert_eq!(ours, reference, "{v}");
            assert_eq!(
                to_f32(ours).to_bits(),
                half::f16::from_bits(ours).to_f32().to_bits(),
                "{v}"
            );
        }
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        for h in 0..=u16::MAX {
            let a = to_f32(h);
            let b = half::f16::from_bits(h).to_f32();
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{h:#x}"
            );
        }
    }
}
