//! PostgreSQL log sequence numbers.
//!
//! An LSN is a byte position in the write-ahead log. PostgreSQL prints it as two hexadecimal
//! halves, `X/Y` (upper and lower 32 bits), and that is how it appears in our headers
//! (`Wal-Lsn`), logs and metrics.

use std::fmt;
use std::str::FromStr;

/// A WAL position; ordered like the log itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid/zero position (`0/0`): "from the slot's confirmed position" when starting.
    pub const ZERO: Lsn = Lsn(0);

    /// The `X/Y` text, without the formatting machinery (it is a header of every message).
    pub fn text(self) -> String {
        fn hex(mut v: u64, out: &mut String) {
            let mut digits = [0u8; 8];
            let mut n = 0;
            loop {
                digits[n] = b"0123456789ABCDEF"[(v & 0xF) as usize];
                n += 1;
                v >>= 4;
                if v == 0 {
                    break;
                }
            }
            out.extend(digits[..n].iter().rev().map(|&b| char::from(b)));
        }
        let mut out = String::with_capacity(17);
        hex(self.0 >> 32, &mut out);
        out.push('/');
        hex(self.0 & 0xFFFF_FFFF, &mut out);
        out
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text())
    }
}

/// Error for text that is not an `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for (text, value) in [
            ("0/0", 0u64),
            ("16/B374D848", 0x16_B374_D848),
            ("1/A0", 0x1_0000_00A0),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            assert_eq!(Lsn(value).to_string(), text);
            assert_eq!(Lsn(value).text(), text);
            assert_eq!(text.parse::<Lsn>(), Ok(Lsn(value)));
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "1", "1/", "/1", "G/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn orders_like_the_log() {
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
    }
}
