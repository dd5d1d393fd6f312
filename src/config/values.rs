//! Value types written as strings in the configuration: sizes (`256M`), durations (`2s`), CPU
//! lists (`0-3,6`), percentages of one CPU (`150%`) and octal file modes (`0660`).
//!
//! Each parses in its `Deserialize` impl, so a bad value is reported by the TOML parser with the
//! line and key it sits at.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A byte count: `1024`, `64K`, `256M`, `1G`, `2T` (binary multiples; `KiB`/`KB` also accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// A span of time: `250ms`, `2s`, `10m`, `6h`, `1d`, `100us`; at most [`Span::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

/// A set of CPU numbers: `0-3,6`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(pub Vec<usize>);

/// CPU time as a percentage of one CPU: `150%` is one and a half CPUs.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(pub f64);

/// A Unix file mode written in octal: `0660`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileMode(pub u32);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 512K, 256M or 1G"))?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            _ => return Err(format!("`{s}` has an unknown size unit; use K, M, G or T")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl Span {
    /// The longest span a key may be given: a century (36500 days). Longer ones mean "never"
    /// in practice, and past this the deadlines made from them would not fit in a clock value.
    pub const MAX: Duration = Duration::from_secs(36_500 * 86_400);
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 2s, 10m or 6h"))?;
        let d = match unit.trim() {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" | "" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => {
                return Err(format!(
                    "`{s}` has an unknown time unit; use us, ms, s, m, h or d"
                ));
            }
        };
        if d > Span::MAX {
            return Err(format!(
                "`{s}` is longer than a century; give at most 36500d"
            ));
        }
        Ok(Span(d))
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a CPU list; write e.g. 0-3,6");
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad());
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b || b >= 4096 {
                        return Err(bad());
                    }
                    cpus.extend(a..=b);
                }
                None => {
                    let c: usize = part.parse().map_err(|_| bad())?;
                    if c >= 4096 {
                        return Err(bad());
                    }
                    cpus.push(c);
                }
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    /// Writes the list in the kernel's own form (`0-3,6`), as cpuset files take it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

impl FromStr for Percent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let n = t
            .strip_suffix('%')
            .ok_or_else(|| format!("`{s}` is not a percentage; write e.g. 150%"))?;
        let v: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a percentage; write e.g. 150%"))?;
        if !(v.is_finite() && v > 0.0 && v <= 100_000.0) {
            return Err(format!("`{s}` must be above 0% and at most 100000%"));
        }
        Ok(Percent(v))
    }
}

impl FromStr for FileMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match u32::from_str_radix(s.trim(), 8) {
            Ok(m) if m <= 0o7777 => Ok(FileMode(m)),
            _ => Err(format!("`{s}` is not an octal file mode; write e.g. 0660")),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "{}us", self.0.as_micros())
        } else if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Sizes and spans may also be written as bare integers (bytes, seconds).
macro_rules! string_or_int {
    ($t:ty, $what:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, n: i64) -> Result<$t, E> {
                        if n < 0 {
                            return Err(E::custom(format!("{n} must not be negative")));
                        }
                        n.to_string().parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    };
}

string_or_int!(ByteSize, "a size such as 256M");
string_or_int!(Span, "a duration such as 2s");

macro_rules! string_only {
    ($t:ty, $what:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)
                    .map_err(|_| de::Error::custom(concat!("expected ", $what)))?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

string_only!(CpuList, "a CPU list such as \"0-3,6\"");
string_only!(Percent, "a percentage such as \"150%\"");
string_only!(FileMode, "an octal mode such as \"0660\"");

impl Serialize for CpuList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

/// The parser's message with the names of Rust types (`expected usize`) put in the words the
/// configuration reference uses, for people who write the file rather than the program.
pub fn in_plain_words(message: &str) -> String {
    const WORDS: [(&str, &str); 8] = [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, such as [\"a\", \"b\"]",
        ),
        ("expected a string", "expected a string in quotes"),
        ("floating point", "number with a fraction"),
    ];
    let mut plain = message.to_string();
    for (rust, words) in WORDS {
        plain = plain.replace(rust, words);
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_put_in_plain_words() {
        assert_eq!(
            in_plain_words("invalid type: string \"three\", expected usize"),
            "invalid type: string \"three\", expected a whole number, 0 or more"
        );
        assert_eq!(
            in_plain_words("invalid type: floating point `1.5`, expected u64"),
            "invalid type: number with a fraction `1.5`, expected a whole number, 0 or more"
        );
        assert_eq!(
            in_plain_words("invalid type: string \"x\", expected a sequence"),
            "invalid type: string \"x\", expected a list, such as [\"a\", \"b\"]"
        );
        assert_eq!(in_plain_words("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn sizes_parse_in_binary_multiples() {
        assert_eq!("256M".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("1G".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 64 << 10);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("M".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("2s".parse::<Span>().unwrap().0, Duration::from_secs(2));
        assert_eq!(
            "500ms".parse::<Span>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("10m".parse::<Span>().unwrap().0, Duration::from_secs(600));
        assert_eq!(
            "6h".parse::<Span>().unwrap().0,
            Duration::from_secs(6 * 3600)
        );
        assert!("2 weeks".parse::<Span>().is_err());
        assert_eq!("36500d".parse::<Span>().unwrap().0, Span::MAX);
        for huge in ["36501d", "18446744073709551615s", "18446744073709551615h"] {
            let e = huge.parse::<Span>().unwrap_err();
            assert!(e.contains("longer than a century"), "{huge}: {e}");
        }
        assert!("-1s".parse::<Span>().is_err());
    }

    #[test]
    fn cpu_lists_parse_and_print_in_kernel_form() {
        let c: CpuList = "0-3,6".parse().unwrap();
        assert_eq!(c.0, vec![0, 1, 2, 3, 6]);
        assert_eq!(c.to_string(), "0-3,6");
        assert_eq!("5,1,2".parse::<CpuList>().unwrap().to_string(), "1-2,5");
        assert!("3-1".parse::<CpuList>().is_err());
        assert!("a".parse::<CpuList>().is_err());
        assert!("1,,2".parse::<CpuList>().is_err());
    }

    #[test]
    fn percentages_and_modes_parse() {
        assert_eq!("150%".parse::<Percent>().unwrap().0, 150.0);
        assert!("150".parse::<Percent>().is_err());
        assert!("0%".parse::<Percent>().is_err());
        assert_eq!("0660".parse::<FileMode>().unwrap().0, 0o660);
        assert!("0999".parse::<FileMode>().is_err());
    }
}
