//! `quote_carriers`: a detailed quote from every carrier, one carrier at a time, resumable.
//!
//! The quote first looks up each carrier's route to the delivery hub (needs only country and
//! postal code: the `prepare` phase), then prices the parcel per carrier with fuel and remote
//! surcharges and a transit time from the route. After each step the partial state is handed to
//! a checkpoint callback, so a worker killed halfway can be replaced and the next job resumes from
//! the carriers already quoted. The state is plain JSON of a few KiB at most.

use serde::{Deserialize, Serialize};

use super::routes::{Route, delivery_hub, fastest_route};
use super::{Destination, SERVICES, ShippingError, Zone, destination, parcel_weight};
use crate::postal::PostalCode;

/// Version of the checkpoint layout; a state of another version is ignored.
const STATE_VERSION: u32 = 1;

/// Carriers quoted, in order, with the gateway each flies overseas from.
pub const CARRIERS: [(&str, Option<&str>); 6] = [
    ("DHL", Some("Leipzig")),
    ("Hermes", None),
    ("DPD", None),
    ("GLS", None),
    ("UPS", Some("Cologne")),
    ("FedEx", Some("Paris")),
];

/// The partial state: routes from the prepare phase and the carriers quoted so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteState {
    pub v: u32,
    pub country: String,
    pub postal_code: String,
    pub routes: Vec<CarrierRoute>,
    pub cart_weight_g: Option<i64>,
    pub quotes: Vec<CarrierQuote>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierRoute {
    pub carrier: String,
    pub route: Option<Route>,
}

/// One carrier's answer; `reason` is set when it cannot carry the parcel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierQuote {
    pub carrier: String,
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cents: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surcharges_cents: Option<Surcharges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Surcharges {
    pub fuel: u32,
    pub remote: u32,
}

/// The finished quote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuoteReport {
    pub country: &'static str,
    pub postal_code: String,
    pub zone: Zone,
    pub remote: bool,
    pub delivery_hub: &'static str,
    pub cart_weight_g: i64,
    /// Available carriers cheapest first, then the ones that cannot carry the parcel.
    pub quotes: Vec<CarrierQuote>,
    pub cheapest: Option<String>,
    pub fastest: Option<String>,
    /// Carriers already quoted in the state this job resumed from.
    pub resumed_from: usize,
    /// Whether the route lookups came from the state (a prepare phase or an earlier attempt).
    pub routes_from_state: bool,
}

/// The prepare phase: route lookups only. Returns the state to checkpoint and whether it was
/// already in `state`.
pub fn prepare(postal: &PostalCode, state: Option<&serde_json::Value>) -> (QuoteState, bool) {
    let mut quote_state = usable_state(postal, state).unwrap_or_else(|| fresh_state(postal));
    let from_state = quote_state.routes.len() == CARRIERS.len();
    if !from_state {
        quote_state.routes = lookup_routes(postal);
    }
    (quote_state, from_state)
}

/// The full quote, resuming from `state` where it matches this destination and weight.
/// `checkpoint` receives the state after each carrier but the last.
pub fn quote_carriers(
    postal: &PostalCode,
    weight_g: i64,
    state: Option<&serde_json::Value>,
    checkpoint: &mut dyn FnMut(&QuoteState),
) -> Result<QuoteReport, ShippingError> {
    let grams = parcel_weight(weight_g)?;
    let (mut quote_state, routes_from_state) = prepare(postal, state);
    if quote_state.cart_weight_g != Some(weight_g) {
        quote_state.quotes.clear();
        quote_state.cart_weight_g = Some(weight_g);
    }

    // Keep only a prefix of quotes that matches the carrier order, so a tampered or older
    // state cannot skip or duplicate a carrier.
    let done = quote_state
        .quotes
        .iter()
        .zip(CARRIERS)
        .take_while(|(quote, (carrier, _))| quote.carrier == *carrier)
        .count();
    quote_state.quotes.truncate(done);
    let resumed_from = done;

    let destination = destination(postal);
    for (index, (carrier, _)) in CARRIERS.iter().enumerate().skip(done) {
        let route = quote_state.routes[index].route.clone();
        let quote = quote_one(carrier, &destination, grams, route);
        quote_state.quotes.push(quote);
        if index + 1 < CARRIERS.len() {
            checkpoint(&quote_state);
        }
    }

    let mut quotes = quote_state.quotes;
    if quotes.iter().all(|q| !q.available) {
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
    quotes.sort_by_key(|q| (!q.available, q.price_cents, q.days));
    let cheapest = quotes.first().map(|q| q.carrier.clone());
    let fastest = quotes
        .iter()
        .filter(|q| q.available)
        .min_by_key(|q| (q.days, q.price_cents))
        .map(|q| q.carrier.clone());

    Ok(QuoteReport {
        country: postal.country,
        postal_code: postal.normalized.clone(),
        zone: destination.zone,
        remote: destination.remote,
        delivery_hub: delivery_hub(postal),
        cart_weight_g: weight_g,
        quotes,
        cheapest,
        fastest,
        resumed_from,
        routes_from_state,
    })
}

fn fresh_state(postal: &PostalCode) -> QuoteState {
    QuoteState {
        v: STATE_VERSION,
        country: postal.country.to_owned(),
        postal_code: postal.normalized.clone(),
        routes: Vec::new(),
        cart_weight_g: None,
        quotes: Vec::new(),
    }
}

/// The given state if it is ours and for this destination; anything else starts over.
fn usable_state(postal: &PostalCode, state: Option<&serde_json::Value>) -> Option<QuoteState> {
    let state: QuoteState = serde_json::from_value(state?.clone()).ok()?;
    let matches = state.v == STATE_VERSION
        && state.country == postal.country
        && state.postal_code == postal.normalized;
    let routes_ok = state.routes.is_empty()
        || (state.routes.len() == CARRIERS.len()
            && state
                .routes
                .iter()
                .zip(CARRIERS)
                .all(|(r, (c, _))| r.carrier == c));
    (matches && routes_ok).then_some(state)
}

fn lookup_routes(postal: &PostalCode) -> Vec<CarrierRoute> {
    let hub = delivery_hub(postal);
    CARRIERS
        .iter()
        .map(|(carrier, gateway)| CarrierRoute {
            carrier: (*carrier).to_owned(),
            route: fastest_route(*gateway, hub),
        })
        .collect()
}

fn quote_one(
    carrier: &str,
    destination: &Destination,
    grams: u32,
    route: Option<Route>,
) -> CarrierQuote {
    let unavailable = |reason: &str| CarrierQuote {
        carrier: carrier.to_owned(),
        available: false,
        reason: Some(reason.to_owned()),
        service: None,
        price_cents: None,
        surcharges_cents: None,
        days: None,
        route: None,
    };
    let Some(route) = route else {
        return unavailable("no route from the warehouse to this destination");
    };

    // The carrier's cheapest service that takes this parcel to this zone.
    let offer = SERVICES
        .iter()
        .filter(|s| s.carrier == carrier)
        .filter_map(|s| {
            let base = Destination {
                zone: destination.zone,
                remote: false,
            };
            s.offer(&base, grams).map(|offer| (s, offer))
        })
        .min_by_key(|(_, offer)| offer.price_cents);
    let Some((service, offer)) = offer else {
        return unavailable("does not carry a parcel of this weight to this zone");
    };

    let fuel = offer.price_cents * service.fuel_pct / 100;
    let remote = if destination.remote {
        service.remote_cents
    } else {
        0
    };
    // A day starts at the warehouse's evening pickup; the last mile takes one more day.
    let mut days = route.hours.div_ceil(24) + 1;
    if destination.remote {
        days += service.remote_days;
    }
    CarrierQuote {
        carrier: carrier.to_owned(),
        available: true,
        reason: None,
        service: Some(service.service.to_owned()),
        price_cents: Some(offer.price_cents + fuel + remote),
        surcharges_cents: Some(Surcharges { fuel, remote }),
        days: Some(days),
        route: Some(route),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postal::validate;

    fn run(
        postal: &PostalCode,
        weight: i64,
        state: Option<&serde_json::Value>,
    ) -> (QuoteReport, Vec<QuoteState>) {
        let mut checkpoints = Vec::new();
        let report =
            quote_carriers(postal, weight, state, &mut |s| checkpoints.push(s.clone())).unwrap();
        (report, checkpoints)
    }

    #[test]
    fn quotes_every_carrier_and_checkpoints_between_them() {
        let postal = validate("DE", "10115").unwrap();
        let (report, checkpoints) = run(&postal, 2_000, None);
        assert_eq!(report.quotes.len(), CARRIERS.len());
        assert_eq!(checkpoints.len(), CARRIERS.len() - 1);
        assert_eq!(checkpoints[0].quotes.len(), 1);
        assert_eq!(report.resumed_from, 0);
        assert!(!report.routes_from_state);
        // FedEx does not deliver domestically; it is listed last and unavailable.
        let last = report.quotes.last().unwrap();
        assert_eq!((last.carrier.as_str(), last.available), ("FedEx", false));
        let prices: Vec<u32> = report.quotes.iter().filter_map(|q| q.price_cents).collect();
        assert!(prices.windows(2).all(|w| w[0] <= w[1]));
        let size = serde_json::to_vec(checkpoints.last().unwrap())
            .unwrap()
            .len();
        assert!(size < 8 * 1024, "checkpoint of {size} bytes");
    }

    #[test]
    fn resumes_from_a_checkpoint_with_the_same_answer() {
        let postal = validate("US", "10001").unwrap();
        let (fresh, checkpoints) = run(&postal, 3_000, None);
        let state = serde_json::to_value(&checkpoints[2]).unwrap();
        let (resumed, later) = run(&postal, 3_000, Some(&state));
        assert_eq!(resumed.resumed_from, 3);
        assert!(resumed.routes_from_state);
        assert_eq!(later.len(), CARRIERS.len() - 4);
        assert_eq!(resumed.quotes, fresh.quotes);
    }

    #[test]
    fn a_state_for_another_destination_or_weight_is_not_reused() {
        let berlin = validate("DE", "10115").unwrap();
        let (_, checkpoints) = run(&berlin, 2_000, None);
        let state = serde_json::to_value(&checkpoints[3]).unwrap();

        let munich = validate("DE", "80331").unwrap();
        let (report, _) = run(&munich, 2_000, Some(&state));
        assert_eq!((report.resumed_from, report.routes_from_state), (0, false));

        let (report, _) = run(&berlin, 5_000, Some(&state));
        assert_eq!((report.resumed_from, report.routes_from_state), (0, true));

        let garbage = serde_json::json!({"v": 1, "quotes": "x"});
        let (report, _) = run(&berlin, 2_000, Some(&garbage));
        assert_eq!(report.resumed_from, 0);
    }

    #[test]
    fn prepare_looks_up_routes_that_the_full_quote_reuses() {
        let postal = validate("JP", "100-0001").unwrap();
        let (state, from_state) = prepare(&postal, None);
        assert!(!from_state);
        assert_eq!(state.routes.len(), CARRIERS.len());
        assert!(state.routes[0].route.as_ref().unwrap().by_air);
        assert_eq!(state.routes[1].route, None, "Hermes has no air gateway");

        let value = serde_json::to_value(&state).unwrap();
        let (report, _) = run(&postal, 1_000, Some(&value));
        assert!(report.routes_from_state);
        assert_eq!(report.resumed_from, 0);
        assert_eq!(report.zone, Zone::World);
        assert!(
            report
                .quotes
                .iter()
                .any(|q| q.carrier == "DHL" && q.available)
        );
    }
}
