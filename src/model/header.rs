//! The framework's part of a series slot: 8 bytes in front of the detector's state.
//!
//! ```text
//! byte 0..2  last_epoch  u16  epoch of the last observation, modulo 2^16 (227 days of 5-minute epochs)
//! byte 2..4  quantile    f16  the series' running estimate of its own surprise quantile (calibration)
//! byte 4     seen        u8   observations so far, saturating at 255
//! byte 5     alert       u8   bits 0-1 severity (0 none, 1 warning, 2 critical), bits 2-5 kind
//! byte 6     clear_run   u8   consecutive epochs below the clear ratio while an alert is open
//! byte 7     miss_run    u8   consecutive logs of the customer without this feature
//! ```

use super::{AnomalyKind, DETECTOR_BYTES, DetectorState};
use crate::state::{SLOT_BYTES, Slot, SlotView};

pub const HEADER_BYTES: usize = 8;

/// Alert severity of an open alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
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
    pub quantile: f32,
    pub seen: u8,
    pub alert: Option<OpenAlert>,
    pub clear_run: u8,
    pub miss_run: u8,
    pub detector: DetectorState,
}

impl SeriesSlot {
    pub fn decode(slot: &Slot) -> SeriesSlot {
        let mut copy = *slot;
        let v = SlotView(&mut copy);
        let mut detector = [0u8; DETECTOR_BYTES];
        detector.copy_from_slice(&slot[HEADER_BYTES..SLOT_BYTES]);
        SeriesSlot {
            last_epoch: v.u16(0),
            quantile: v.f16(2),
            seen: v.u8(4),
            alert: decode_alert(v.u8(5)),
            clear_run: v.u8(6),
            miss_run: v.u8(7),
            detector,
        }
    }

    pub fn encode(&self) -> Slot {
        let mut slot = [0u8; SLOT_BYTES];
        let mut v = SlotView(&mut slot);
        v.set_u16(0, self.last_epoch);
        v.set_f16(2, self.quantile);
        v.set_u8(4, self.seen);
        v.set_u8(5, encode_alert(self.alert));
        v.set_u8(6, self.clear_run);
        v.set_u8(7, self.miss_run);
        slot[HEADER_BYTES..].copy_from_slice(&self.detector);
        slot
    }

    /// True for a slot never written (all zero).
    pub fn is_fresh(&self) -> bool {
        self.seen == 0 && self.detector.iter().all(|b| *b == 0)
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
            quantile: 2.5,
            seen: 200,
            alert: Some(OpenAlert {
                severity: Severity::Critical,
                kind: AnomalyKind::StuckValue,
            }),
            clear_run: 2,
            miss_run: 7,
            detector: d,
        };
        assert_eq!(SeriesSlot::decode(&s.encode()), s);
        assert!(SeriesSlot::decode(&[0u8; SLOT_BYTES]).is_fresh());
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
                let a = Some(OpenAlert { severity: s, kind: k });
                assert_eq!(decode_alert(encode_alert(a)), a);
            }
        }
        assert_eq!(decode_alert(0), None);
    }
}
