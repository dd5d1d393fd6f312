//! `apply_coupon`: the shop's coupon rules evaluated over a cart.
//!
//! A coupon is a percentage or a fixed amount off, or free shipping, with a minimum spend, a
//! validity window, a cap on the discount and optionally a product category the cart must
//! contain. A refused coupon is an answer, not an error: the result says why.

use serde::Serialize;

/// Why a coupon is refused; the text is shown to the shopper.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    #[error("unknown coupon code")]
    Unknown,
    #[error("the coupon expired on {0}")]
    Expired(Date),
    #[error("the coupon is valid from {0}")]
    NotYetValid(Date),
    #[error("the coupon needs a cart of at least {} (cart is {})", money(*.needed), money(*.have))]
    BelowMinimum { needed: i64, have: i64 },
    #[error("the coupon applies only to carts with {0} products")]
    WrongCategory(&'static str),
    #[error("cart_total_cents must not be negative")]
    NegativeTotal,
}

/// A calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Date {
    const fn new(year: i32, month: u32, day: u32) -> Self {
        Self { year, month, day }
    }

    /// Parses `YYYY-MM-DD`: four digits, two and two, a day the month has.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let b = text.as_bytes();
        let shape = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape {
            return None;
        }
        let year: i32 = text[..4].parse().ok()?;
        let month: u32 = text[5..7].parse().ok()?;
        let day: u32 = text[8..].parse().ok()?;
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            1..=12 => 31,
            _ => return None,
        };
        (1..=days)
            .contains(&day)
            .then_some(Self { year, month, day })
    }

    /// The civil (UTC) date of a Unix day number, after Howard Hinnant's `civil_from_days`.
    pub fn from_unix_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Percent(i64),
    Fixed(i64),
    FreeShipping,
}

struct Coupon {
    code: &'static str,
    description: &'static str,
    kind: Kind,
    min_cents: i64,
    max_discount_cents: Option<i64>,
    valid_from: Option<Date>,
    valid_until: Option<Date>,
    category: Option<&'static str>,
}

const COUPONS: [Coupon; 7] = [
    Coupon {
        code: "WELCOME10",
        description: "10% off your first order (up to 50.00)",
        kind: Kind::Percent(10),
        min_cents: 2_000,
        max_discount_cents: Some(5_000),
        valid_from: None,
        valid_until: None,
        category: None,
    },
    Coupon {
        code: "SAVE5",
        description: "5.00 off orders from 25.00",
        kind: Kind::Fixed(500),
        min_cents: 2_500,
        max_discount_cents: None,
        valid_from: None,
        valid_until: None,
        category: None,
    },
    Coupon {
        code: "BIGSPENDER",
        description: "15% off orders from 200.00",
        kind: Kind::Percent(15),
        min_cents: 20_000,
        max_discount_cents: Some(15_000),
        valid_from: None,
        valid_until: None,
        category: None,
    },
    Coupon {
        code: "FREESHIP",
        description: "free standard shipping from 30.00",
        kind: Kind::FreeShipping,
        min_cents: 3_000,
        max_discount_cents: None,
        valid_from: None,
        valid_until: None,
        category: None,
    },
    Coupon {
        code: "ELECTRO20",
        description: "20% off carts with electronics (up to 100.00)",
        kind: Kind::Percent(20),
        min_cents: 5_000,
        max_discount_cents: Some(10_000),
        valid_from: None,
        valid_until: None,
        category: Some("electronics"),
    },
    Coupon {
        code: "AUTUMN2019",
        description: "12% off, autumn 2019",
        kind: Kind::Percent(12),
        min_cents: 0,
        max_discount_cents: None,
        valid_from: Some(Date::new(2019, 9, 1)),
        valid_until: Some(Date::new(2019, 11, 30)),
        category: None,
    },
    Coupon {
        code: "SPRING2099",
        description: "8% off, spring 2099",
        kind: Kind::Percent(8),
        min_cents: 0,
        max_discount_cents: None,
        valid_from: Some(Date::new(2099, 3, 1)),
        valid_until: Some(Date::new(2099, 5, 31)),
        category: None,
    },
];

/// The cart as far as coupons care.
pub struct Cart<'a> {
    pub total_cents: i64,
    /// Category paths of the cart's products (`"electronics.smartphone"`).
    pub categories: &'a [String],
    pub today: Date,
}

/// What `apply_coupon` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CouponOutcome {
    pub coupon: String,
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'static str>,
    pub discount_cents: i64,
    pub free_shipping: bool,
    pub total_cents: i64,
    pub new_total_cents: i64,
}

/// Applies `code` to the cart.
pub fn apply_coupon(code: &str, cart: &Cart<'_>) -> CouponOutcome {
    let code = code.trim().to_ascii_uppercase();
    let coupon = COUPONS.iter().find(|c| c.code == code);
    match coupon.map(|c| evaluate(c, cart)) {
        Some(Ok((discount_cents, free_shipping))) => CouponOutcome {
            coupon: code,
            accepted: true,
            reason: None,
            description: coupon.map(|c| c.description),
            discount_cents,
            free_shipping,
            total_cents: cart.total_cents,
            new_total_cents: cart.total_cents - discount_cents,
        },
        refused => {
            let refusal = refused.map_or(Refusal::Unknown, |r| r.unwrap_err());
            CouponOutcome {
                coupon: code,
                accepted: false,
                reason: Some(refusal.to_string()),
                description: None,
                discount_cents: 0,
                free_shipping: false,
                total_cents: cart.total_cents,
                new_total_cents: cart.total_cents,
            }
        }
    }
}

/// The discount and free-shipping flag, or why the coupon does not apply.
fn evaluate(coupon: &Coupon, cart: &Cart<'_>) -> Result<(i64, bool), Refusal> {
    if cart.total_cents < 0 {
        return Err(Refusal::NegativeTotal);
    }
    if let Some(from) = coupon.valid_from.filter(|from| cart.today < *from) {
        return Err(Refusal::NotYetValid(from));
    }
    if let Some(until) = coupon.valid_until.filter(|until| cart.today > *until) {
        return Err(Refusal::Expired(until));
    }
    if cart.total_cents < coupon.min_cents {
        return Err(Refusal::BelowMinimum {
            needed: coupon.min_cents,
            have: cart.total_cents,
        });
    }
    if let Some(category) = coupon.category {
        let in_cart = cart
            .categories
            .iter()
            .any(|c| c.split('.').next() == Some(category));
        if !in_cart {
            return Err(Refusal::WrongCategory(category));
        }
    }

    let discount = match coupon.kind {
        // Round half up to the cent, as the till does; in 128 bits, so that no cart total is
        // too large to take a percentage of.
        Kind::Percent(percent) => {
            let cents = (i128::from(cart.total_cents) * i128::from(percent) + 50) / 100;
            i64::try_from(cents).unwrap_or(i64::MAX)
        }
        Kind::Fixed(cents) => cents,
        Kind::FreeShipping => return Ok((0, true)),
    };
    let capped = coupon
        .max_discount_cents
        .map_or(discount, |cap| discount.min(cap));
    Ok((capped.min(cart.total_cents), false))
}

/// Cents as `12.34`.
fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: Date = Date::new(2024, 6, 1);

    fn apply(code: &str, total: i64, categories: &[&str]) -> CouponOutcome {
        let categories: Vec<String> = categories.iter().map(|c| c.to_string()).collect();
        apply_coupon(
            code,
            &Cart {
                total_cents: total,
                categories: &categories,
                today: TODAY,
            },
        )
    }

    #[test]
    fn percent_and_fixed_coupons_discount() {
        let ten = apply(" welcome10 ", 4_999, &[]);
        assert!(ten.accepted);
        assert_eq!((ten.discount_cents, ten.new_total_cents), (500, 4_499));
        assert_eq!(apply("SAVE5", 3_000, &[]).new_total_cents, 2_500);
        assert_eq!(
            apply("WELCOME10", 90_000, &[]).discount_cents,
            5_000,
            "capped"
        );
        assert!(apply("FREESHIP", 3_000, &[]).free_shipping);
    }

    #[test]
    fn the_largest_cart_totals_get_the_capped_discount() {
        let most = apply("WELCOME10", i64::MAX, &[]);
        assert_eq!(most.discount_cents, 5_000, "{most:?}");
        assert_eq!(most.new_total_cents, i64::MAX - 5_000);
        let autumn = apply_coupon(
            "AUTUMN2019",
            &Cart {
                total_cents: i64::MAX,
                categories: &[],
                today: Date::new(2019, 10, 1),
            },
        );
        // 12% of the total, uncapped, rounded half up.
        let twelve = (i128::from(i64::MAX) * 12 + 50) / 100;
        assert_eq!(i128::from(autumn.discount_cents), twelve, "{autumn:?}");
    }

    #[test]
    fn refusals_say_why() {
        let low = apply("SAVE5", 1_000, &[]);
        assert!(!low.accepted);
        assert_eq!(
            low.reason.as_deref(),
            Some("the coupon needs a cart of at least 25.00 (cart is 10.00)")
        );
        assert_eq!(low.new_total_cents, 1_000);
        assert_eq!(
            apply("NOPE", 1_000, &[]).reason.as_deref(),
            Some("unknown coupon code")
        );
        assert_eq!(
            apply("AUTUMN2019", 1_000, &[]).reason.as_deref(),
            Some("the coupon expired on 2019-11-30")
        );
        assert!(
            apply("SPRING2099", 1_000, &[])
                .reason
                .unwrap()
                .contains("valid from")
        );
    }

    #[test]
    fn category_coupons_need_the_category() {
        let refused = apply("ELECTRO20", 10_000, &["apparel.shoes"]);
        assert!(refused.reason.unwrap().contains("electronics"));
        let accepted = apply("ELECTRO20", 10_000, &["electronics.smartphone"]);
        assert_eq!(accepted.discount_cents, 2_000);
    }

    #[test]
    fn unix_days_become_dates() {
        assert_eq!(Date::from_unix_days(0), Date::new(1970, 1, 1));
        assert_eq!(Date::from_unix_days(19_723), Date::new(2024, 1, 1));
        assert_eq!(Date::from_unix_days(11_016), Date::new(2000, 2, 29));
        assert_eq!(Date::parse("2019-10-01"), Some(Date::new(2019, 10, 1)));
        assert_eq!(Date::parse("2019-13-01"), None);
    }

    #[test]
    fn only_days_the_calendar_has_are_dates() {
        assert_eq!(Date::parse(" 2024-02-29 "), Some(Date::new(2024, 2, 29)));
        assert_eq!(Date::parse("2000-02-29"), Some(Date::new(2000, 2, 29)));
        assert_eq!(Date::parse("2019-12-31"), Some(Date::new(2019, 12, 31)));
        for bad in [
            "2099-02-31",
            "2023-02-29",
            "1900-02-29",
            "2019-04-31",
            "2019-10-00",
            "+2019-10-01",
            "2019-1-01",
            "2019-10-1",
            "20191-10-01",
            "2019/10/01",
            "",
        ] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
    }
}
