//! Shipping from the shop's warehouse (Kassel, Germany): zones, carriers' rate tables, options.
//!
//! A destination's zone comes from its country; its postal code marks remote areas (islands,
//! Alaska, the Canadian north) that cost more and take longer. Each carrier service prices a
//! parcel from its own table by weight band, scaled per zone. `calc_shipping` lists every service
//! that can carry the parcel there; `quote_carriers` (in [`quote`]) goes further and routes the
//! parcel through each carrier's hub network.

pub mod quote;
pub mod routes;

use serde::Serialize;

use crate::postal::{PostalCode, PostalError};

/// Why no shipping options can be given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShippingError {
    #[error(transparent)]
    Postal(#[from] PostalError),
    #[error("cart_weight_g must be more than 0, got {0}")]
    NoWeight(i64),
    #[error(
        "a parcel of {weight_g} g is heavier than any carrier takes to {country} \
         (at most {max_g} g); split the order"
    )]
    TooHeavy {
        weight_g: i64,
        max_g: u32,
        country: &'static str,
    },
}

/// Shipping zones as seen from the German warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    Domestic,
    EuNear,
    EuFar,
    World,
}

impl Zone {
    fn index(self) -> usize {
        self as usize
    }
}

/// Where a parcel goes, as far as pricing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub zone: Zone,
    /// Islands and outlying regions that carriers surcharge.
    pub remote: bool,
}

/// The zone and remoteness of a validated postal code.
pub fn destination(postal: &PostalCode) -> Destination {
    let code = postal.compact();
    let n3 = postal.leading_number(3);
    let n2 = postal.leading_number(2);
    let n4 = postal.leading_number(4);
    let n5 = postal.leading_number(5);
    let within = |n: Option<u32>, ranges: &[(u32, u32)]| {
        n.is_some_and(|n| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&n)))
    };

    let (zone, remote) = match postal.country {
        // North and East Frisian islands, Hiddensee, Helgoland.
        "DE" => (
            Zone::Domestic,
            within(
                n5,
                &[
                    (18565, 18565),
                    (25845, 25849),
                    (25859, 25869),
                    (25929, 25999),
                    (26465, 26486),
                    (26548, 26548),
                    (26571, 26579),
                    (26757, 26757),
                    (27498, 27498),
                ],
            ),
        ),
        // The Wadden islands.
        "NL" => (
            Zone::EuNear,
            within(
                n4,
                &[(1791, 1797), (8881, 8884), (8891, 8899), (9161, 9166)],
            ),
        ),
        // Corsica; the overseas departments are outside the EU customs area for parcels.
        "FR" if within(n2, &[(97, 98)]) => (Zone::World, true),
        "FR" => (Zone::EuNear, n2 == Some(20)),
        // Bornholm.
        "DK" => (Zone::EuNear, within(n4, &[(3700, 3799)])),
        "AT" | "BE" | "CH" | "PL" => (Zone::EuNear, false),
        // Balearics, Canaries, Ceuta, Melilla.
        "ES" => (
            Zone::EuFar,
            within(n2, &[(7, 7), (35, 35), (38, 38), (51, 52)]),
        ),
        // Livigno and Campione d'Italia.
        "IT" => (Zone::EuFar, matches!(n5, Some(23041 | 22061))),
        // Gotland.
        "SE" => (Zone::EuFar, within(n3, &[(620, 624)])),
        // Highlands and islands, Northern Ireland, the Crown dependencies.
        "GB" => {
            let area: String = code.chars().take_while(char::is_ascii_alphabetic).collect();
            let remote_areas = ["HS", "ZE", "KW", "IV", "BT", "IM", "JE", "GY"];
            (Zone::World, remote_areas.contains(&area.as_str()))
        }
        // Puerto Rico, Hawaii, Alaska.
        "US" => (Zone::World, within(n3, &[(6, 9), (967, 968), (995, 999)])),
        // Northwest Territories, Nunavut, Yukon.
        "CA" => (Zone::World, code.starts_with('X') || code.starts_with('Y')),
        // Okinawa.
        "JP" => (Zone::World, within(n3, &[(900, 909)])),
        _ => (Zone::World, false),
    };
    Destination { zone, remote }
}

/// Upper limits (grams) of the weight bands every rate table is written in.
const BANDS_G: [u32; 7] = [1_000, 2_000, 5_000, 10_000, 20_000, 31_500, 70_000];

/// One carrier service with its published rate table.
#[derive(Debug)]
pub struct Service {
    pub carrier: &'static str,
    pub service: &'static str,
    /// Domestic price (cents) per weight band; 0 where the service stops.
    pub band_cents: [u32; 7],
    /// Price factor (percent of domestic) per zone; `None` where the service does not go.
    pub zone_factor: [Option<u32>; 4],
    /// Delivery days per zone.
    pub days: [u32; 4],
    pub remote_cents: u32,
    pub remote_days: u32,
    /// Fuel surcharge in percent, applied by detailed quotes.
    pub fuel_pct: u32,
}

pub const SERVICES: [Service; 8] = [
    Service {
        carrier: "DHL",
        service: "Paket",
        band_cents: [499, 549, 699, 999, 1_799, 1_999, 0],
        zone_factor: [Some(100), Some(240), Some(300), Some(560)],
        days: [2, 3, 5, 8],
        remote_cents: 350,
        remote_days: 1,
        fuel_pct: 8,
    },
    Service {
        carrier: "DHL",
        service: "Express",
        band_cents: [1_990, 2_190, 2_690, 3_490, 4_990, 5_990, 8_990],
        zone_factor: [Some(100), Some(180), Some(210), Some(330)],
        days: [1, 1, 2, 3],
        remote_cents: 900,
        remote_days: 1,
        fuel_pct: 22,
    },
    Service {
        carrier: "Hermes",
        service: "Standard",
        band_cents: [419, 489, 619, 899, 1_599, 0, 0],
        zone_factor: [Some(100), None, None, None],
        days: [3, 0, 0, 0],
        remote_cents: 500,
        remote_days: 2,
        fuel_pct: 6,
    },
    Service {
        carrier: "DPD",
        service: "Classic",
        band_cents: [459, 529, 659, 949, 1_690, 1_890, 0],
        zone_factor: [Some(100), Some(230), Some(290), Some(520)],
        days: [2, 3, 4, 6],
        remote_cents: 450,
        remote_days: 2,
        fuel_pct: 9,
    },
    Service {
        carrier: "GLS",
        service: "BusinessParcel",
        band_cents: [479, 519, 649, 929, 1_650, 1_850, 2_890],
        zone_factor: [Some(100), Some(220), Some(280), None],
        days: [2, 3, 4, 0],
        remote_cents: 400,
        remote_days: 1,
        fuel_pct: 10,
    },
    Service {
        carrier: "UPS",
        service: "Standard",
        band_cents: [699, 749, 899, 1_199, 1_899, 2_199, 3_990],
        zone_factor: [Some(100), Some(200), Some(260), None],
        days: [1, 2, 3, 0],
        remote_cents: 700,
        remote_days: 1,
        fuel_pct: 18,
    },
    Service {
        carrier: "UPS",
        service: "Express Saver",
        band_cents: [1_790, 1_990, 2_490, 3_290, 4_690, 5_590, 8_490],
        zone_factor: [Some(100), Some(170), Some(200), Some(310)],
        days: [1, 1, 2, 3],
        remote_cents: 900,
        remote_days: 1,
        fuel_pct: 20,
    },
    Service {
        carrier: "FedEx",
        service: "International Economy",
        band_cents: [1_290, 1_490, 1_890, 2_590, 3_890, 4_790, 7_490],
        zone_factor: [None, Some(150), Some(170), Some(260)],
        days: [0, 3, 4, 5],
        remote_cents: 1_100,
        remote_days: 2,
        fuel_pct: 21,
    },
];

/// One way to ship the cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShippingOption {
    pub carrier: &'static str,
    pub service: &'static str,
    pub price_cents: u32,
    pub days: u32,
}

impl Service {
    /// This service's price and days for a parcel, or `None` when it cannot carry it there.
    pub fn offer(&self, destination: &Destination, weight_g: u32) -> Option<ShippingOption> {
        let zone = destination.zone.index();
        let factor = self.zone_factor[zone]?;
        let band = BANDS_G.iter().position(|max| weight_g <= *max)?;
        let domestic = self.band_cents[band];
        if domestic == 0 {
            return None;
        }

        // Round to whole tens of cents, as the carriers' published prices are.
        let mut price_cents = (domestic * factor / 100).div_ceil(10) * 10;
        let mut days = self.days[zone];
        if destination.remote {
            price_cents += self.remote_cents;
            days += self.remote_days;
        }
        Some(ShippingOption {
            carrier: self.carrier,
            service: self.service,
            price_cents,
            days,
        })
    }

    /// The heaviest parcel (grams) this service takes to `zone`.
    fn max_g(&self, zone: Zone) -> u32 {
        if self.zone_factor[zone.index()].is_none() {
            return 0;
        }
        BANDS_G
            .iter()
            .zip(self.band_cents)
            .filter(|(_, cents)| *cents > 0)
            .map(|(max, _)| *max)
            .max()
            .unwrap_or(0)
    }
}

/// Checks a cart weight and turns it into grams.
pub fn parcel_weight(weight_g: i64) -> Result<u32, ShippingError> {
    if weight_g <= 0 {
        return Err(ShippingError::NoWeight(weight_g));
    }
    Ok(u32::try_from(weight_g).unwrap_or(u32::MAX))
}

/// Every service that can carry the parcel, cheapest first (then fastest).
pub fn shipping_options(
    postal: &PostalCode,
    weight_g: i64,
) -> Result<(Destination, Vec<ShippingOption>), ShippingError> {
    let grams = parcel_weight(weight_g)?;
    let destination = destination(postal);
    let mut options: Vec<ShippingOption> = SERVICES
        .iter()
        .filter_map(|service| service.offer(&destination, grams))
        .collect();
    if options.is_empty() {
        let max_g = SERVICES
            .iter()
            .map(|s| s.max_g(destination.zone))
            .max()
            .unwrap_or(0);
        return Err(ShippingError::TooHeavy {
            weight_g,
            max_g,
            country: postal.country,
        });
    }

    options.sort_by_key(|o| (o.price_cents, o.days, o.carrier, o.service));
    Ok((destination, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postal::validate;

    fn options(country: &str, code: &str, weight_g: i64) -> Vec<ShippingOption> {
        shipping_options(&validate(country, code).unwrap(), weight_g)
            .unwrap()
            .1
    }

    #[test]
    fn domestic_options_are_sorted_by_price() {
        let list = options("DE", "10115", 1_500);
        assert!(list.len() >= 5, "{list:?}");
        assert!(
            list.windows(2)
                .all(|w| w[0].price_cents <= w[1].price_cents)
        );
        assert_eq!(list[0].carrier, "Hermes");
        assert_eq!(list[0].price_cents, 490);
    }

    #[test]
    fn zones_follow_the_country_and_islands_are_remote() {
        let berlin = destination(&validate("DE", "10115").unwrap());
        assert_eq!(
            berlin,
            Destination {
                zone: Zone::Domestic,
                remote: false
            }
        );
        let sylt = destination(&validate("DE", "25980").unwrap());
        assert!(sylt.remote);
        assert_eq!(
            destination(&validate("US", "99501").unwrap()).zone,
            Zone::World
        );
        assert!(destination(&validate("US", "99501").unwrap()).remote);
        assert!(destination(&validate("GB", "HS1 2AA").unwrap()).remote);
        assert!(!destination(&validate("GB", "SW1A 1AA").unwrap()).remote);
        assert_eq!(
            destination(&validate("SE", "11455").unwrap()).zone,
            Zone::EuFar
        );

        let mainland = options("DE", "10115", 1_500);
        let island = options("DE", "25980", 1_500);
        let dhl =
            |list: &[ShippingOption]| list.iter().find(|o| o.service == "Paket").unwrap().clone();
        assert!(dhl(&island).price_cents > dhl(&mainland).price_cents);
        assert!(dhl(&island).days > dhl(&mainland).days);
    }

    #[test]
    fn heavier_parcels_and_farther_zones_cost_more() {
        let light = options("FR", "75008", 900);
        let heavy = options("FR", "75008", 9_000);
        let far = options("JP", "1000001", 900);
        let cheapest = |list: &[ShippingOption]| list[0].price_cents;
        assert!(cheapest(&heavy) > cheapest(&light));
        assert!(cheapest(&far) > cheapest(&light));
        assert!(far.iter().all(|o| o.carrier != "Hermes"));
    }

    #[test]
    fn refuses_impossible_parcels() {
        let postal = validate("DE", "10115").unwrap();
        assert_eq!(
            shipping_options(&postal, 0),
            Err(ShippingError::NoWeight(0))
        );
        let err = shipping_options(&postal, 80_000).unwrap_err();
        assert!(
            matches!(err, ShippingError::TooHeavy { max_g: 70_000, .. }),
            "{err}"
        );
        // Only the express services take 40 kg abroad.
        let abroad = options("US", "10001", 40_000);
        assert!(abroad.iter().all(|o| o.service != "Paket"));
    }
}
