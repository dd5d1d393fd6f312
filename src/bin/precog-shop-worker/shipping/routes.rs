//! Carrier hub networks and the route a parcel takes from the warehouse to its delivery hub.
//!
//! Hubs are real sorting centres and gateways with their coordinates; leg lengths are great-circle
//! distances. Every carrier drives the same European road links but flies overseas only from its
//! own air gateway (DHL from Leipzig, UPS from Cologne, FedEx from Paris), so routes and transit
//! times differ by carrier. The fastest route is found with Dijkstra over hours on the road or in
//! the air plus handling at each hub.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::postal::PostalCode;

/// The shop's warehouse, where every route starts.
pub const WAREHOUSE: &str = "Kassel";

/// Sorting centres and gateways: name, latitude, longitude.
const HUBS: [(&str, f64, f64); 39] = [
    ("Kassel", 51.31, 9.49),
    ("Hamburg", 53.55, 9.99),
    ("Berlin", 52.52, 13.40),
    ("Leipzig", 51.34, 12.37),
    ("Cologne", 50.94, 6.96),
    ("Frankfurt", 50.11, 8.68),
    ("Stuttgart", 48.78, 9.18),
    ("Munich", 48.14, 11.58),
    ("Hannover", 52.37, 9.74),
    ("Nuremberg", 49.45, 11.08),
    ("Venlo", 51.37, 6.17),
    ("Amsterdam", 52.37, 4.90),
    ("Brussels", 50.85, 4.35),
    ("Paris", 48.86, 2.35),
    ("Lyon", 45.76, 4.84),
    ("Marseille", 43.30, 5.37),
    ("Bordeaux", 44.84, -0.58),
    ("Vienna", 48.21, 16.37),
    ("Zurich", 47.38, 8.54),
    ("Copenhagen", 55.68, 12.57),
    ("Malmo", 55.60, 13.00),
    ("Gothenburg", 57.71, 11.97),
    ("Stockholm", 59.33, 18.07),
    ("Poznan", 52.41, 16.93),
    ("Warsaw", 52.23, 21.01),
    ("Barcelona", 41.39, 2.17),
    ("Madrid", 40.42, -3.70),
    ("Milan", 45.46, 9.19),
    ("Rome", 41.90, 12.50),
    ("London", 51.51, -0.13),
    ("East Midlands", 52.83, -1.33),
    ("Glasgow", 55.86, -4.25),
    ("Belfast", 54.60, -5.93),
    ("New York", 40.71, -74.01),
    ("Cincinnati", 39.05, -84.66),
    ("Los Angeles", 34.05, -118.24),
    ("Toronto", 43.65, -79.38),
    ("Vancouver", 49.28, -123.12),
    ("Tokyo", 35.68, 139.69),
];

/// Road (and ferry or tunnel) links, driven by every carrier, both ways.
const ROAD_LINKS: [(&str, &str); 42] = [
    ("Kassel", "Hannover"),
    ("Kassel", "Frankfurt"),
    ("Kassel", "Leipzig"),
    ("Kassel", "Cologne"),
    ("Kassel", "Nuremberg"),
    ("Hannover", "Hamburg"),
    ("Hannover", "Berlin"),
    ("Leipzig", "Berlin"),
    ("Leipzig", "Nuremberg"),
    ("Frankfurt", "Stuttgart"),
    ("Frankfurt", "Cologne"),
    ("Nuremberg", "Munich"),
    ("Stuttgart", "Munich"),
    ("Cologne", "Venlo"),
    ("Venlo", "Amsterdam"),
    ("Cologne", "Brussels"),
    ("Brussels", "Paris"),
    ("Frankfurt", "Paris"),
    ("Paris", "Lyon"),
    ("Lyon", "Marseille"),
    ("Paris", "Bordeaux"),
    ("Munich", "Vienna"),
    ("Stuttgart", "Zurich"),
    ("Zurich", "Milan"),
    ("Milan", "Rome"),
    ("Hamburg", "Copenhagen"),
    ("Copenhagen", "Malmo"),
    ("Malmo", "Gothenburg"),
    ("Gothenburg", "Stockholm"),
    ("Malmo", "Stockholm"),
    ("Berlin", "Poznan"),
    ("Poznan", "Warsaw"),
    ("Lyon", "Barcelona"),
    ("Barcelona", "Madrid"),
    ("Bordeaux", "Madrid"),
    ("Marseille", "Milan"),
    ("Brussels", "London"),
    ("London", "East Midlands"),
    ("East Midlands", "Glasgow"),
    ("Glasgow", "Belfast"),
    ("New York", "Cincinnati"),
    ("Cincinnati", "Los Angeles"),
];

/// Overseas destinations reached by air from a carrier's gateway.
const AIR_DESTINATIONS: [&str; 7] = [
    "London",
    "New York",
    "Cincinnati",
    "Los Angeles",
    "Toronto",
    "Vancouver",
    "Tokyo",
];

/// Hours spent sorting at each hub a parcel passes.
const HUB_HANDLING_H: f64 = 2.0;
/// Hours of export handling, customs and loading at an air gateway.
const AIR_HANDLING_H: f64 = 8.0;
/// Roads are longer than the great circle; trucks average this speed including rests.
const ROAD_DETOUR: f64 = 1.25;
const ROAD_KMH: f64 = 65.0;
const AIR_KMH: f64 = 750.0;

/// The fastest way to a delivery hub for one carrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub hubs: Vec<String>,
    pub km: u32,
    pub hours: u32,
    pub by_air: bool,
}

/// The hub that delivers to this postal code.
pub fn delivery_hub(postal: &PostalCode) -> &'static str {
    let first = postal.leading_number(1);
    let two = postal.leading_number(2).unwrap_or(0);
    let code = postal.compact();
    match postal.country {
        "DE" => match first {
            Some(0) => "Leipzig",
            Some(1) => "Berlin",
            Some(2) => "Hamburg",
            Some(3) => "Hannover",
            Some(4 | 5) => "Cologne",
            Some(6) => "Frankfurt",
            Some(7) => "Stuttgart",
            Some(8) => "Munich",
            _ => "Nuremberg",
        },
        "NL" if first.is_some_and(|d| d >= 5) => "Venlo",
        "NL" => "Amsterdam",
        "BE" => "Brussels",
        "FR" => match two {
            4 | 5 | 6 | 13 | 20 | 30 | 34 | 83 | 84 => "Marseille",
            1 | 38 | 42 | 69 | 73 | 74 => "Lyon",
            16 | 17 | 24 | 33 | 40 | 47 | 64 => "Bordeaux",
            _ => "Paris",
        },
        "AT" => "Vienna",
        "CH" => "Zurich",
        "DK" => "Copenhagen",
        "SE" => match first {
            Some(2) => "Malmo",
            Some(4 | 5) => "Gothenburg",
            _ => "Stockholm",
        },
        "PL" if first.is_some_and(|d| d <= 2) => "Warsaw",
        "PL" => "Poznan",
        "ES" if matches!(two, 8 | 17 | 25 | 43) => "Barcelona",
        "ES" => "Madrid",
        "IT" if two < 10 => "Rome",
        "IT" => "Milan",
        "GB" => {
            let area: String = code.chars().take_while(char::is_ascii_alphabetic).collect();
            let scottish = [
                "G", "PA", "EH", "KA", "ML", "FK", "KY", "DD", "AB", "IV", "HS", "ZE", "KW", "PH",
            ];
            let london = [
                "E", "EC", "N", "NW", "SE", "SW", "W", "WC", "BR", "CR", "HA", "UB",
            ];
            if area == "BT" {
                "Belfast"
            } else if scottish.contains(&area.as_str()) {
                "Glasgow"
            } else if london.contains(&area.as_str()) {
                "London"
            } else {
                "East Midlands"
            }
        }
        "US" => match first {
            Some(0..=2) => "New York",
            Some(3..=7) => "Cincinnati",
            _ => "Los Angeles",
        },
        "CA" if code.starts_with(['V', 'T', 'X', 'Y']) => "Vancouver",
        "CA" => "Toronto",
        _ => "Tokyo",
    }
}

/// The fastest route for a carrier flying overseas from `air_gateway`, or `None` when its
/// network does not reach `to`.
pub fn fastest_route(air_gateway: Option<&str>, to: &str) -> Option<Route> {
    let index = |name: &str| HUBS.iter().position(|(hub, _, _)| *hub == name);
    let start = index(WAREHOUSE)?;
    let goal = index(to)?;

    // Adjacency as (neighbour, hours, km, by_air); rebuilt per call because the air links
    // depend on the carrier, and the network is small.
    let mut links: Vec<Vec<(usize, f64, f64, bool)>> = vec![Vec::new(); HUBS.len()];
    for (a, b) in ROAD_LINKS {
        let (a, b) = (index(a)?, index(b)?);
        let km = great_circle_km(a, b) * ROAD_DETOUR;
        let hours = km / ROAD_KMH + HUB_HANDLING_H;
        links[a].push((b, hours, km, false));
        links[b].push((a, hours, km, false));
    }
    if let Some(gateway) = air_gateway.and_then(index) {
        for destination in AIR_DESTINATIONS.iter().filter_map(|d| index(d)) {
            let km = great_circle_km(gateway, destination);
            let hours = km / AIR_KMH + AIR_HANDLING_H;
            links[gateway].push((destination, hours, km, true));
        }
    }

    // Dijkstra over whole minutes, so the heap holds integers.
    let mut best = vec![u64::MAX; HUBS.len()];
    let mut previous: Vec<Option<(usize, f64, bool)>> = vec![None; HUBS.len()];
    let mut queue = BinaryHeap::new();
    best[start] = 0;
    queue.push(Reverse((0u64, start)));
    while let Some(Reverse((minutes, hub))) = queue.pop() {
        if minutes > best[hub] {
            continue;
        }
        if hub == goal {
            break;
        }
        for &(next, hours, km, by_air) in &links[hub] {
            let arrival = minutes + (hours * 60.0).round() as u64;
            if arrival < best[next] {
                best[next] = arrival;
                previous[next] = Some((hub, km, by_air));
                queue.push(Reverse((arrival, next)));
            }
        }
    }
    if best[goal] == u64::MAX {
        return None;
    }

    let mut hubs = vec![HUBS[goal].0.to_owned()];
    let (mut km, mut by_air, mut at) = (0.0, false, goal);
    while let Some((from, leg_km, leg_by_air)) = previous[at] {
        km += leg_km;
        by_air |= leg_by_air;
        hubs.push(HUBS[from].0.to_owned());
        at = from;
    }
    hubs.reverse();
    Some(Route {
        hubs,
        km: km.round() as u32,
        hours: best[goal].div_ceil(60) as u32,
        by_air,
    })
}

/// Haversine distance between two hubs.
fn great_circle_km(a: usize, b: usize) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6_371.0;
    let (_, lat1, lon1) = HUBS[a];
    let (_, lat2, lon2) = HUBS[b];
    let (lat1, lat2) = (lat1.to_radians(), lat2.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (lon2 - lon1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postal::validate;

    #[test]
    fn domestic_route_goes_by_road() {
        let route = fastest_route(None, "Berlin").unwrap();
        assert_eq!(route.hubs.first().map(String::as_str), Some("Kassel"));
        assert_eq!(route.hubs.last().map(String::as_str), Some("Berlin"));
        assert!(!route.by_air);
        assert!((300..600).contains(&route.km), "{route:?}");
    }

    #[test]
    fn overseas_needs_an_air_gateway() {
        assert_eq!(fastest_route(None, "Tokyo"), None);
        let dhl = fastest_route(Some("Leipzig"), "Tokyo").unwrap();
        let ups = fastest_route(Some("Cologne"), "Tokyo").unwrap();
        assert!(dhl.by_air && ups.by_air);
        assert!(dhl.hubs.contains(&"Leipzig".to_owned()));
        assert!(ups.hubs.contains(&"Cologne".to_owned()));
        assert!(dhl.km > 8_000);
    }

    #[test]
    fn delivery_hubs_follow_the_postal_region() {
        let hub = |country, code| delivery_hub(&validate(country, code).unwrap());
        assert_eq!(hub("DE", "80331"), "Munich");
        assert_eq!(hub("FR", "13001"), "Marseille");
        assert_eq!(hub("GB", "EH1 1YZ"), "Glasgow");
        assert_eq!(hub("US", "90210"), "Los Angeles");
        assert_eq!(hub("CA", "V6B 1A1"), "Vancouver");
    }
}
