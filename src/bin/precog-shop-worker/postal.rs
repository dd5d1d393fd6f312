//! Postal code rules per country: checks the format and gives the normalised form.
//!
//! The rules are the published formats of each postal service (digits, letters, fixed spacing),
//! plus the ranges that are never assigned where that is simple to say (a German code never starts
//! with 00, a Canadian one never uses D, F, I, O, Q or U). Shipping derives its zones from the
//! normalised code, so both share this module.

/// Why a postal code was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PostalError {
    #[error("no postal code rules for country {0:?}; supported: {SUPPORTED}")]
    UnsupportedCountry(String),
    #[error("{postal_code:?} is not a valid {country} postal code: {rule}")]
    BadFormat {
        country: &'static str,
        postal_code: String,
        rule: &'static str,
    },
}

/// The most characters of a refused input that an error message quotes: no postal code or
/// country name comes near it, and a message must not carry a whole oversized input back (the
/// refused result holds it already).
const QUOTED_MAX: usize = 32;

/// `input` as an error message quotes it: cut after [`QUOTED_MAX`] characters, with `…`.
fn quoted(input: &str) -> String {
    match input.char_indices().nth(QUOTED_MAX) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}

/// Countries with rules, as listed in error messages.
pub const SUPPORTED: &str = "AT, BE, CA, CH, DE, DK, ES, FR, GB, IT, JP, NL, PL, SE, US";

/// A postal code that passed its country's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostalCode {
    /// ISO 3166 alpha-2, upper case.
    pub country: &'static str,
    /// The form the postal service prints (`"SW1A 1AA"`, `"00-950"`, `"114 55"`).
    pub normalized: String,
}

impl PostalCode {
    /// The code's characters without separators, upper case.
    pub fn compact(&self) -> String {
        compact(&self.normalized)
    }

    /// The leading digits as a number (for digit-only systems), used for regional zones.
    pub fn leading_number(&self, digits: usize) -> Option<u32> {
        let compact = self.compact();
        compact.get(..digits)?.parse().ok()
    }
}

/// Maps a country name as users type it (`"de"`, `"UK"`) to the ISO code with rules.
pub fn country_code(country: &str) -> Result<&'static str, PostalError> {
    let upper = country.trim().to_ascii_uppercase();
    let code = match upper.as_str() {
        "UK" => "GB",
        other => other,
    };
    const CODES: [&str; 15] = [
        "AT", "BE", "CA", "CH", "DE", "DK", "ES", "FR", "GB", "IT", "JP", "NL", "PL", "SE", "US",
    ];
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .ok_or_else(|| PostalError::UnsupportedCountry(quoted(country.trim())))
}

/// Checks `postal_code` against the rules of `country` and normalises it.
pub fn validate(country: &str, postal_code: &str) -> Result<PostalCode, PostalError> {
    let country = country_code(country)?;
    let code = compact(postal_code);
    let bad = |rule: &'static str| PostalError::BadFormat {
        country,
        postal_code: quoted(postal_code.trim()),
        rule,
    };

    if !code.is_empty() && code.bytes().all(|b| b == b'0') {
        return Err(bad("no postal code is all zeros"));
    }
    let split = separator(postal_code).ok_or(bad(
        "at most one space or dash, where the country's codes have one",
    ))?;
    // Where a separator may stand, counted in characters of the code without it.
    let split_at = match country {
        "US" if code.len() == 9 => Some(5),
        "NL" => Some(4),
        "PL" => Some(2),
        "SE" | "JP" | "CA" => Some(3),
        "GB" => code.len().checked_sub(3),
        _ => None,
    };
    if split.is_some() && split != split_at {
        return Err(bad(match split_at {
            None => "no space or dash in these codes",
            Some(_) => "a space or dash only where the country's codes have one",
        }));
    }

    let normalized = match country {
        "DE" => {
            digits_only(&code, 5).ok_or(bad("5 digits, e.g. 10115"))?;
            if code.starts_with("00") {
                return Err(bad("no German postal code starts with 00"));
            }
            code
        }
        "FR" => {
            digits_only(&code, 5).ok_or(bad("5 digits, e.g. 75008"))?;
            if code.starts_with("00") || code.starts_with("96") || code.starts_with("99") {
                return Err(bad("the first two digits are a department (01-95, 97, 98)"));
            }
            code
        }
        "ES" => {
            digits_only(&code, 5).ok_or(bad("5 digits, e.g. 28013"))?;
            let province: u32 = code[..2].parse().unwrap_or(0);
            if !(1..=52).contains(&province) {
                return Err(bad("the first two digits are a province (01-52)"));
            }
            code
        }
        "IT" => {
            digits_only(&code, 5).ok_or(bad("5 digits, e.g. 00184"))?;
            code
        }
        "US" => us_zip(&code).ok_or(bad("5 digits or ZIP+4, e.g. 10001 or 10001-1234"))?,
        "AT" | "BE" | "CH" | "DK" => {
            digits_only(&code, 4).ok_or(bad("4 digits, e.g. 1010"))?;
            if code.starts_with('0') {
                return Err(bad("4 digits not starting with 0"));
            }
            code
        }
        "NL" => netherlands(&code).ok_or(bad("4 digits and 2 letters, e.g. 1012 AB"))?,
        "PL" => {
            digits_only(&code, 5).ok_or(bad("2 digits, a dash, 3 digits, e.g. 00-950"))?;
            format!("{}-{}", &code[..2], &code[2..])
        }
        "SE" => {
            digits_only(&code, 5).ok_or(bad("5 digits, e.g. 114 55"))?;
            if code.starts_with('0') {
                return Err(bad("5 digits not starting with 0"));
            }
            format!("{} {}", &code[..3], &code[3..])
        }
        "JP" => {
            digits_only(&code, 7).ok_or(bad("3 digits, a dash, 4 digits, e.g. 100-0001"))?;
            format!("{}-{}", &code[..3], &code[3..])
        }
        "CA" => canada(&code).ok_or(bad(
            "letter digit letter, digit letter digit, e.g. K1A 0B1 (no D, F, I, O, Q, U)",
        ))?,
        "GB" => britain(&code).ok_or(bad("an outward and inward code, e.g. SW1A 1AA"))?,
        _ => return Err(PostalError::UnsupportedCountry(country.to_owned())),
    };

    Ok(PostalCode {
        country,
        normalized,
    })
}

/// Upper case with spaces and dashes removed.
fn compact(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Where the one space or dash of `postal_code` stands, counted in the other characters (leading
/// and trailing whitespace aside): `Some(None)` without one, `None` with more than one.
fn separator(postal_code: &str) -> Option<Option<usize>> {
    let mut at = None;
    for (before, c) in postal_code.trim().chars().enumerate() {
        if c.is_whitespace() || c == '-' {
            if at.is_some() {
                return None;
            }
            at = Some(before);
        }
    }
    Some(at)
}

fn digits_only(code: &str, len: usize) -> Option<()> {
    (code.len() == len && code.bytes().all(|b| b.is_ascii_digit())).then_some(())
}

fn us_zip(code: &str) -> Option<String> {
    match code.len() {
        5 => digits_only(code, 5).map(|()| code.to_owned()),
        9 => digits_only(code, 9).map(|()| format!("{}-{}", &code[..5], &code[5..])),
        _ => None,
    }
}

fn netherlands(code: &str) -> Option<String> {
    let bytes = code.as_bytes();
    if bytes.len() != 6 || bytes[0] == b'0' {
        return None;
    }
    let digits_ok = bytes[..4].iter().all(u8::is_ascii_digit);
    let letters_ok = bytes[4..].iter().all(u8::is_ascii_uppercase);
    // PostNL never issues SA, SD and SS.
    let unused = matches!(&code[4..], "SA" | "SD" | "SS");
    (digits_ok && letters_ok && !unused).then(|| format!("{} {}", &code[..4], &code[4..]))
}

fn canada(code: &str) -> Option<String> {
    let bytes = code.as_bytes();
    if bytes.len() != 6 {
        return None;
    }
    let letter = |b: u8| b.is_ascii_uppercase() && !b"DFIOQU".contains(&b);
    let shape = letter(bytes[0])
        && bytes[1].is_ascii_digit()
        && letter(bytes[2])
        && bytes[3].is_ascii_digit()
        && letter(bytes[4])
        && bytes[5].is_ascii_digit();
    let first_ok = !matches!(bytes[0], b'W' | b'Z');
    (shape && first_ok).then(|| format!("{} {}", &code[..3], &code[3..]))
}

fn britain(code: &str) -> Option<String> {
    if code == "GIR0AA" {
        return Some("GIR 0AA".to_owned());
    }
    if !(5..=7).contains(&code.len()) || !code.is_ascii() {
        return None;
    }
    let (outward, inward) = code.split_at(code.len() - 3);
    let inward_bytes = inward.as_bytes();
    // Royal Mail leaves C, I, K, M, O and V out of the inward code's letters.
    let inward_letter = |b: u8| b.is_ascii_uppercase() && !b"CIKMOV".contains(&b);
    let inward_ok = inward_bytes[0].is_ascii_digit()
        && inward_letter(inward_bytes[1])
        && inward_letter(inward_bytes[2]);

    let shape: String = outward
        .bytes()
        .map(|b| if b.is_ascii_digit() { '9' } else { 'A' })
        .collect();
    let outward_ok = matches!(
        shape.as_str(),
        "A9" | "A99" | "A9A" | "AA9" | "AA99" | "AA9A"
    ) && !b"QVX".contains(&outward.as_bytes()[0]);

    (inward_ok && outward_ok).then(|| format!("{outward} {inward}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(country: &str, code: &str) -> String {
        validate(country, code).unwrap().normalized
    }

    #[test]
    fn accepts_and_normalises_known_codes() {
        assert_eq!(normalized("DE", " 10115 "), "10115");
        assert_eq!(normalized("de", "80331"), "80331");
        assert_eq!(normalized("FR", "75008"), "75008");
        assert_eq!(normalized("GB", "sw1a1aa"), "SW1A 1AA");
        assert_eq!(normalized("UK", "M1 1AE"), "M1 1AE");
        assert_eq!(normalized("GB", "EC1A 1BB"), "EC1A 1BB");
        assert_eq!(normalized("US", "10001"), "10001");
        assert_eq!(normalized("US", "100011234"), "10001-1234");
        assert_eq!(normalized("NL", "1012ab"), "1012 AB");
        assert_eq!(normalized("PL", "00950"), "00-950");
        assert_eq!(normalized("PL", "00-950"), "00-950");
        assert_eq!(normalized("CA", "k1a0b1"), "K1A 0B1");
        assert_eq!(normalized("JP", "1000001"), "100-0001");
        assert_eq!(normalized("SE", "11455"), "114 55");
        assert_eq!(normalized("AT", "1010"), "1010");
        assert_eq!(normalized("ES", "28013"), "28013");
    }

    #[test]
    fn refuses_malformed_codes_with_the_rule() {
        let err = validate("DE", "1011").unwrap_err();
        assert!(err.to_string().contains("5 digits"), "{err}");
        assert!(validate("DE", "00123").is_err());
        assert!(validate("FR", "96000").is_err());
        assert!(
            validate("GB", "SW1A 1CA").is_err(),
            "C is not an inward letter"
        );
        assert!(validate("GB", "QW1 1AA").is_err());
        assert!(validate("US", "1234").is_err());
        assert!(validate("NL", "0123 AB").is_err());
        assert!(validate("NL", "1234 SS").is_err());
        assert!(validate("CA", "D1A 0B1").is_err());
        assert!(validate("CA", "W1A 0B1").is_err());
        assert!(validate("JP", "100-001").is_err());
        assert!(validate("SE", "01455").is_err());
        assert!(validate("ES", "53001").is_err());
    }

    #[test]
    fn separators_stand_only_where_the_country_puts_one() {
        assert_eq!(normalized("US", "10001-1234"), "10001-1234");
        assert_eq!(normalized("US", "10001 1234"), "10001-1234");
        assert_eq!(normalized("GB", "M1-1AE"), "M1 1AE");
        assert_eq!(normalized("CA", "K1A-0B1"), "K1A 0B1");
        assert_eq!(normalized("SE", "114-55"), "114 55");
        assert_eq!(normalized("NL", " 1012 ab "), "1012 AB");
        for (country, code) in [
            ("US", "1-0-0-0-1"),
            ("US", "100-01"),
            ("US", "10001--1234"),
            ("DE", "10 115"),
            ("DE", "101-15"),
            ("PL", "009-50"),
            ("GB", "SW 1A1AA"),
            ("GB", "SW1A  1AA"),
            ("JP", "1000-001"),
            ("NL", "10 12AB"),
        ] {
            let err = validate(country, code).unwrap_err();
            assert!(
                err.to_string().contains("space or dash"),
                "{country} {code}: {err}"
            );
        }
    }

    #[test]
    fn all_zeros_is_no_postal_code() {
        for (country, code) in [("US", "00000"), ("IT", "00000"), ("PL", "00-000")] {
            let err = validate(country, code).unwrap_err();
            assert!(
                err.to_string().contains("all zeros"),
                "{country} {code}: {err}"
            );
        }
        assert_eq!(normalized("IT", "00184"), "00184");
    }

    #[test]
    fn unknown_countries_are_named() {
        let err = validate("ZZ", "12345").unwrap_err();
        assert_eq!(err, PostalError::UnsupportedCountry("ZZ".into()));
        assert!(err.to_string().contains("supported"));
    }

    #[test]
    fn leading_number_reads_the_region_digits() {
        let code = validate("DE", "34117").unwrap();
        assert_eq!(code.leading_number(2), Some(34));
        assert_eq!(validate("GB", "SW1A 1AA").unwrap().leading_number(2), None);
    }

    #[test]
    fn a_refusal_quotes_at_most_the_start_of_an_oversized_input() {
        let long = "1".repeat(100_000);
        let refused = validate("DE", &long).unwrap_err().to_string();
        assert!(refused.len() < 200, "{refused}");
        assert!(
            refused.contains(&format!("{}…", "1".repeat(QUOTED_MAX))),
            "{refused}"
        );
        let refused = validate(&"X".repeat(5_000), "10115")
            .unwrap_err()
            .to_string();
        assert!(refused.len() < 300, "{refused}");
        // Short inputs are quoted whole.
        let refused = validate("DE", "1234").unwrap_err().to_string();
        assert!(refused.contains("\"1234\""), "{refused}");
    }
}
