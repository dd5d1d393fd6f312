//! One replayed visitor as its app server knows it: where they ship to (derived from the session
//! id, so every run of a replay sees the same visitor), their cart, and what they have revealed.
//! Pure: builds event attributes and run inputs, learns from `cart_total` results.

use serde_json::{Map, Value, json};

use super::mapping::{Action, Effect};

/// Real postal codes per country, in each postal service's printed form.
const ADDRESSES: &[(&str, &[&str])] = &[
    (
        "DE",
        &["10115", "80331", "20095", "50667", "60311", "01067"],
    ),
    ("FR", &["75001", "69002", "13001", "31000", "67000"]),
    (
        "GB",
        &["SW1A 1AA", "EC1A 1BB", "M1 1AE", "B33 8TH", "CR2 6XH"],
    ),
    ("US", &["10001", "94105", "60601", "02108", "98101"]),
    ("NL", &["1012 AB", "3011 AD", "2511 CV"]),
    ("PL", &["00-950", "30-001", "80-001"]),
    ("SE", &["114 55", "411 04", "211 20"]),
    ("IT", &["00184", "20121", "50122"]),
    ("ES", &["28013", "08001", "41001"]),
    ("AT", &["1010", "5020", "8010"]),
    ("CH", &["8001", "3011", "1201"]),
    ("DK", &["1050", "8000", "5000"]),
    ("BE", &["1000", "2000", "9000"]),
    ("JP", &["100-0001", "530-0001", "060-0001"]),
    ("CA", &["K1A 0B1", "M5V 3L9", "H2Y 1C6"]),
];

/// Coupons a visitor may carry (the shop worker knows them all).
const COUPONS: &[&str] = &["WELCOME10", "SAVE5", "FREESHIP", "BIGSPENDER", "ELECTRO20"];

/// FNV-1a, so a session id always gives the same visitor on every machine.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Visitor {
    pub session: String,
    pub country: &'static str,
    pub postal_code: &'static str,
    /// One visitor in three has none, and then the app never asks for `apply_coupon`.
    pub coupon: Option<&'static str>,
    /// Country, postal code and coupon have been typed in.
    pub revealed: bool,
    pub cart: Vec<(String, u64)>,
    pub cart_weight_g: Option<u64>,
    pub cart_total_cents: Option<u64>,
    /// The item of the current action.
    pub sku: Option<String>,
    pub ordered: bool,
}

impl Visitor {
    pub fn new(session: &str) -> Visitor {
        let h = fnv1a(session);
        let (country, codes) = ADDRESSES[(h % ADDRESSES.len() as u64) as usize];
        let postal_code = codes[((h >> 16) % codes.len() as u64) as usize];
        let coupon = (!(h >> 32).is_multiple_of(3))
            .then(|| COUPONS[((h >> 40) % COUPONS.len() as u64) as usize]);
        Visitor {
            session: session.to_string(),
            country,
            postal_code,
            coupon,
            revealed: false,
            cart: Vec::new(),
            cart_weight_g: None,
            cart_total_cents: None,
            sku: None,
            ordered: false,
        }
    }

    /// What the action changes before its event is sent.
    pub fn begin(&mut self, action: Option<&Action>, item: Option<&str>) {
        self.sku = item.map(String::from);
        let Some(action) = action else { return };
        self.revealed |= action.reveal;
        let Some(item) = item else { return };
        match action.effect {
            Effect::AddToCart => self.add(item),
            Effect::Order if !self.cart.iter().any(|(s, _)| s == item) => self.add(item),
            _ => {}
        }
    }

    /// What the action changes once its runs are done.
    pub fn finish(&mut self, action: Option<&Action>, item: Option<&str>) {
        if let (Some(a), Some(item)) = (action, item)
            && a.effect == Effect::Order
        {
            self.cart.retain(|(s, _)| s != item);
            self.ordered = true;
        }
    }

    fn add(&mut self, item: &str) {
        match self.cart.iter_mut().find(|(s, _)| s == item) {
            Some((_, qty)) => *qty += 1,
            None => self.cart.push((item.to_string(), 1)),
        }
    }

    fn cart_json(&self) -> Value {
        Value::Array(
            self.cart
                .iter()
                .map(|(sku, qty)| json!({"sku": sku, "qty": qty}))
                .collect(),
        )
    }

    /// Every input the app server knows for this visitor now.
    pub fn known_inputs(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(sku) = &self.sku {
            m.insert("sku".into(), json!(sku));
        }
        if self.revealed {
            m.insert("country".into(), json!(self.country));
            m.insert("postal_code".into(), json!(self.postal_code));
            if let Some(c) = self.coupon {
                m.insert("coupon".into(), json!(c));
            }
        }
        if !self.cart.is_empty() {
            m.insert("cart".into(), self.cart_json());
        }
        if let Some(w) = self.cart_weight_g {
            m.insert("cart_weight_g".into(), json!(w));
        }
        if let Some(t) = self.cart_total_cents {
            m.insert("cart_total_cents".into(), json!(t));
        }
        m
    }

    /// The inputs of a run of a process that declares `declared`, or None when the visitor will
    /// never have one of them (no coupon), so the app would not ask.
    pub fn run_inputs(&self, declared: &[String]) -> Option<Map<String, Value>> {
        if declared.iter().any(|d| d == "coupon") && self.coupon.is_none() {
            return None;
        }
        let known = self.known_inputs();
        Some(
            declared
                .iter()
                .filter_map(|d| known.get(d).map(|v| (d.clone(), v.clone())))
                .collect(),
        )
    }

    /// Takes the cart's weight and total from a `cart_total` result; returns the `input`
    /// event's attributes that tell precog, or None when the result lacks them.
    pub fn priced(&mut self, result: &Value) -> Option<Map<String, Value>> {
        let weight = result["weight_g"].as_u64()?;
        let total = result["total_cents"].as_u64()?;
        self.cart_weight_g = Some(weight);
        self.cart_total_cents = Some(total);
        let mut attrs = Map::new();
        attrs.insert("cart_weight_g".into(), json!(weight));
        attrs.insert("cart_total_cents".into(), json!(total));
        Some(attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(effect: Effect, reveal: bool) -> Action {
        Action {
            page: "p".into(),
            effect,
            reveal,
            runs: vec![],
        }
    }

    #[test]
    fn a_session_id_always_gives_the_same_visitor() {
        assert_eq!(Visitor::new("jd:17"), Visitor::new("jd:17"));
        let countries: std::collections::HashSet<&str> = (0..200)
            .map(|i| Visitor::new(&format!("s{i}")).country)
            .collect();
        assert!(countries.len() > 5, "{countries:?}");
        let without = (0..300)
            .filter(|i| Visitor::new(&format!("s{i}")).coupon.is_none())
            .count();
        assert!((50..150).contains(&without), "{without}");
    }

    #[test]
    fn the_address_is_known_only_once_typed() {
        let mut v = Visitor::new("s1");
        v.begin(Some(&action(Effect::None, false)), Some("42"));
        let before = v.known_inputs();
        assert_eq!(before["sku"], "42");
        assert!(before.get("postal_code").is_none());
        v.begin(Some(&action(Effect::AddToCart, true)), Some("42"));
        let after = v.known_inputs();
        assert_eq!(after["postal_code"], v.postal_code);
        assert_eq!(after["cart"], json!([{"sku": "42", "qty": 1}]));
    }

    #[test]
    fn an_order_prices_the_cart_with_its_item_then_empties_it() {
        let mut v = Visitor::new("s2");
        v.begin(Some(&action(Effect::AddToCart, true)), Some("a"));
        let order = action(Effect::Order, true);
        v.begin(Some(&order), Some("b"));
        assert_eq!(v.cart.len(), 2);
        v.finish(Some(&order), Some("b"));
        assert_eq!(v.cart, vec![("a".to_string(), 1)]);
        assert!(v.ordered);
    }

    #[test]
    fn run_inputs_take_only_what_the_process_declares() {
        let mut v = Visitor::new("s3");
        v.begin(Some(&action(Effect::AddToCart, true)), Some("7"));
        let attrs = v
            .priced(&json!({"weight_g": 900, "total_cents": 1999}))
            .unwrap();
        assert_eq!(attrs["cart_weight_g"], 900);
        let declared: Vec<String> = ["country", "postal_code", "cart_weight_g"]
            .map(String::from)
            .to_vec();
        let inputs = v.run_inputs(&declared).unwrap();
        assert_eq!(inputs.len(), 3);
        assert_eq!(inputs["cart_weight_g"], 900);
        let coupon = vec!["coupon".to_string()];
        assert_eq!(v.run_inputs(&coupon).is_some(), v.coupon.is_some());
    }
}
