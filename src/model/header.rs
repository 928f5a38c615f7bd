//! The framework's part of a series slot: 12 bytes in front of the detector's state.
//!
//! ```text
//! byte 0..2   last_epoch  u16  epoch of the last observation, modulo 2^16 (227 days of 5-minute epochs)
//! byte 2..4   q_up        u16  running estimate of the level its signed surprise z exceeds 1.25 % of the time
//! byte 4..6   q_dn        u16  the same for −z (the lower side's tail)
//! byte 6..8   q_lo        u16  running estimate of the 0.75 quantile of |z| (with q_up, q_dn: each tail's shape)
//!                              (all three as log-codes, alert::Quantiles: 0.034 % steps, 0 = uncalibrated)
//! byte 8      seen        u8   observations so far, saturating at 255
//! byte 9      alert       u8   bits 0-1 severity (0 none, 1 warning, 2 critical), bits 2-5 kind
//!             maturity         bits 6-7: 3 for a series that started on a cohort prior; else the quarter-day
//!                              boundaries (UTC 00/06/12/18 h) it has crossed since its 255th observation, to 3
//! byte 10     clear_run   u8   consecutive epochs below the clear ratio while an alert is open
//! byte 11     miss_run    bits 0-4: consecutive logs of the customer without this feature (saturating 31)
//!             decimals    bits 5-7: most decimal digits any of its values had (its resolution is 10^-decimals)
//! ```

use super::alert::Quantiles;
use super::{AnomalyKind, DETECTOR_BYTES, DetectorState};
use crate::state::{SLOT_BYTES, Slot, le};

pub const HEADER_BYTES: usize = 12;

/// `SeriesSlot::maturity` of a series that started on a cohort prior, or has seen a whole day.
pub const MATURE: u8 = 3;

/// Alert severity of an open alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An open alert as stored in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAlert {
    pub severity: Severity,
    pub kind: AnomalyKind,
}

/// Decodes the alert byte.
#[inline]
pub fn decode_alert(b: u8) -> Option<OpenAlert> {
    let severity = match b & 0b11 {
        1 => Severity::Warning,
        2 => Severity::Critical,
        _ => return None,
    };
    Some(OpenAlert {
        severity,
        kind: AnomalyKind::from_index((b >> 2) & 0b1111),
    })
}

/// Encodes the alert byte.
#[inline]
pub fn encode_alert(a: Option<OpenAlert>) -> u8 {
    match a {
        None => 0,
        Some(a) => {
            let s = match a.severity {
                Severity::Warning => 1,
                Severity::Critical => 2,
            };
            s | (a.kind.index() << 2)
        }
    }
}

/// The decoded header plus the detector's bytes of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesSlot {
    pub last_epoch: u16,
    /// The surprise quantiles that set its thresholds (0: not yet calibrated).
    pub q: Quantiles,
    pub seen: u8,
    pub alert: Option<OpenAlert>,
    /// How much of a whole day a series that started without a cohort prior has seen since its 255th
    /// observation, in quarter days crossed (0..=3); 3 for a series that started on a prior.
    pub maturity: u8,
    pub clear_run: u8,
    pub miss_run: u8,
    pub decimals: u8,
    pub detector: DetectorState,
}

impl SeriesSlot {
    /// A fresh series.
    pub const ZERO: SeriesSlot = SeriesSlot {
        last_epoch: 0,
        q: Quantiles {
            up: 0,
            dn: 0,
            lo: 0,
        },
        seen: 0,
        alert: None,
        maturity: 0,
        clear_run: 0,
        miss_run: 0,
        decimals: 0,
        detector: [0; DETECTOR_BYTES],
    };

    // Always inlined, like `encode` and the detector's own decode/encode: out of line, the callee wrote the
    // struct field by field and the caller read it back whole (a store-forwarding stall per series; 9 % of
    // a 20,000-customer replay, BENCHMARKS.md).
    #[inline(always)]
    pub fn decode(slot: &Slot) -> SeriesSlot {
        let mut detector = [0u8; DETECTOR_BYTES];
        detector.copy_from_slice(&slot[HEADER_BYTES..SLOT_BYTES]);
        SeriesSlot {
            last_epoch: le::u16(slot, 0),
            q: Quantiles::read_le(slot, 2),
            seen: slot[8],
            alert: decode_alert(slot[9] & 0x3F),
            maturity: slot[9] >> 6,
            clear_run: slot[10],
            miss_run: slot[11] & 0x1F,
            decimals: slot[11] >> 5,
            detector,
        }
    }

    #[inline(always)]
    pub fn encode(&self) -> Slot {
        let mut slot = [0u8; SLOT_BYTES];
        le::set_u16(&mut slot, 0, self.last_epoch);
        self.q.write_le(&mut slot, 2);
        slot[8] = self.seen;
        slot[9] = encode_alert(self.alert) | (self.maturity.min(3) << 6);
        slot[10] = self.clear_run;
        slot[11] = self.miss_run.min(31) | (self.decimals.min(7) << 5);
        slot[HEADER_BYTES..].copy_from_slice(&self.detector);
        slot
    }

    /// True for a slot never written (all zero).
    pub fn is_fresh(&self) -> bool {
        self.seen == 0 && self.detector.iter().all(|b| *b == 0)
    }
}

/// Decimal digits a value carries (0..=6): the smallest `k` with `x·10^k` integral (to f32 precision).
pub fn decimals_of(x: f32) -> u8 {
    let x = x as f64;
    let mut scale = 1.0f64;
    for k in 0..=6u8 {
        let v = x * scale;
        // An f32 parsed from decimal text is within half an ulp of the decimal value.
        let tol = (v.abs() * 1e-6).max(1e-9);
        if (v - v.round()).abs() <= tol {
            return k;
        }
        scale *= 10.0;
    }
    6
}

/// The decimals a series has shown, after seeing `x` (cheap when `x` has no more decimals than before).
#[inline]
pub fn raise_decimals(current: u8, x: f32) -> u8 {
    if current >= 6 {
        return current;
    }
    let v = x as f64 * [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6][current as usize];
    if (v - v.round()).abs() <= (v.abs() * 1e-6).max(1e-9) {
        current
    } else {
        current.max(decimals_of(x))
    }
}

/// Epochs between a stored 16-bit epoch and the current one (wrapping), for gaps under 2^16 epochs.
pub fn epochs_since(last: u16, now: u64) -> u32 {
    (now as u16).wrapping_sub(last) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut d = [0u8; DETECTOR_BYTES];
        d[3] = 9;
        let s = SeriesSlot {
            last_epoch: 65_000,
            q: Quantiles {
                up: 35_475,
                dn: 36_014,
                lo: 33_966,
            },
            seen: 200,
            alert: Some(OpenAlert {
                severity: Severity::Critical,
                kind: AnomalyKind::StuckValue,
            }),
            maturity: 2,
            clear_run: 2,
            miss_run: 7,
            decimals: 3,
            detector: d,
        };
        assert_eq!(SeriesSlot::decode(&s.encode()), s);
        assert!(SeriesSlot::decode(&[0u8; SLOT_BYTES]).is_fresh());
    }

    #[test]
    fn decimals() {
        assert_eq!(decimals_of(3.0), 0);
        assert_eq!(decimals_of(-61.3), 1);
        assert_eq!(decimals_of(218.72), 2);
        assert_eq!(decimals_of(0.004), 3);
        assert_eq!(decimals_of(1_700_000.0), 0);
    }

    #[test]
    fn epoch_gaps_wrap() {
        assert_eq!(epochs_since(65_535, 65_536 + 2), 3);
        assert_eq!(epochs_since(10, 12), 2);
    }

    #[test]
    fn alert_byte() {
        for k in AnomalyKind::ALL {
            for s in [Severity::Warning, Severity::Critical] {
                let a = Some(OpenAlert {
                    severity: s,
                    kind: k,
                });
                assert_eq!(decode_alert(encode_alert(a)), a);
            }
        }
        assert_eq!(decode_alert(0), None);
    }
}
