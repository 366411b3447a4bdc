//! Sizes as people write them (`20G`, `512M`, `1.5T`, `4096`): binary
//! units (K = 1024), a bare number is bytes. `DiskSize` accepts either a
//! JSON number of bytes or such a string, and is sent as a number.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiskSize(pub u64);

/// Parses `20G`, `512M`, `1.5G`, `10GiB`, `4096` (bytes); units are binary.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a size; write e.g. 20G, 512M or a number of bytes (units K, M, G, T are powers of 1024)"
        )
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let whole = int.checked_shl(shift).filter(|v| v >> shift == int);
    let mut bytes = whole.ok_or_else(|| format!("{s:?} is too large"))?;
    if !frac.is_empty() {
        // At most 9 fractional digits: enough for any size that matters.
        let digits = &frac[..frac.len().min(9)];
        let f: u64 = digits.parse().map_err(|_| bad())?;
        let scale = 10u64.pow(digits.len() as u32);
        let extra = (u128::from(f) << shift) / u128::from(scale);
        bytes = bytes
            .checked_add(u64::try_from(extra).map_err(|_| bad())?)
            .ok_or_else(|| format!("{s:?} is too large"))?;
    }
    Ok(bytes)
}

/// `10 GiB`, `512 MiB`, `1.5 GiB`, `4096 B`: for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl std::str::FromStr for DiskSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(DiskSize)
    }
}

impl Serialize for DiskSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for DiskSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DiskSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of bytes or a size such as \"20G\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DiskSize, E> {
                Ok(DiskSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DiskSize, E> {
                u64::try_from(v)
                    .map(DiskSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DiskSize, E> {
                parse_size(v).map(DiskSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 T "), Ok(2 << 40));
        for bad in ["", "G", "12X", "1.2.3G", "-1G", "99999999999T", "1e9"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn disk_size_takes_numbers_and_strings() {
        let a: DiskSize = serde_json::from_str("\"4G\"").expect("string");
        let b: DiskSize = serde_json::from_str("4294967296").expect("number");
        assert_eq!(a, b);
        assert!(serde_json::from_str::<DiskSize>("-5").is_err());
        assert_eq!(serde_json::to_string(&a).expect("json"), "4294967296");
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
