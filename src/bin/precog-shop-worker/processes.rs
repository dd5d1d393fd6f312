//! The shop's micro-processes by name: reads a job's inputs, runs the process, shapes its result.
//!
//! Names and inputs match the built-in configuration (`config/precogd.toml`). Each process
//! returns a JSON result or a [`JobError`] whose text goes back to the daemon in an `error` line.

use serde_json::{Value, json};

use crate::catalog::{CatalogError, Catalogue};
use crate::coupon::{self, Cart, Date};
use crate::inputs::{InputError, Inputs, wrong};
use crate::job::{Job, Phase};
use crate::postal;
use crate::shipping::{self, ShippingError, quote};

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "unknown process {0:?}; this worker runs validate_postal_code, calc_shipping, \
         quote_carriers, apply_coupon, check_inventory, price_quote, cart_total, reserve_stock"
    )]
    UnknownProcess(String),
    #[error("process {0} has no prepare phase")]
    NoPrepare(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Shipping(#[from] ShippingError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl JobError {
    /// The stable name of the failure, sent as the error line's `code`, which precogd passes
    /// on to the app as `worker_code`: an app branches on it, never on the message.
    pub fn code(&self) -> &'static str {
        use crate::postal::PostalError;
        match self {
            JobError::UnknownProcess(_) => "unknown_process",
            JobError::NoPrepare(_) => "no_prepare_phase",
            JobError::Input(InputError::Missing(_)) => "missing_input",
            JobError::Input(InputError::WrongType { .. }) => "bad_input",
            JobError::Shipping(ShippingError::Postal(PostalError::UnsupportedCountry(_))) => {
                "unsupported_country"
            }
            JobError::Shipping(ShippingError::Postal(PostalError::BadFormat { .. })) => {
                "bad_postal_code"
            }
            JobError::Shipping(ShippingError::NoWeight(_)) => "bad_input",
            JobError::Shipping(ShippingError::TooHeavy { .. }) => "too_heavy",
            JobError::Catalog(CatalogError::UnknownSku(_)) => "unknown_sku",
            JobError::Catalog(_) => "catalogue_unavailable",
        }
    }
}

/// Items per cart and units per item that `cart_total` accepts.
const CART_ITEMS_MAX: usize = 200;
const QTY_MAX: i64 = 999;

/// What a job needs from the worker around it.
pub struct Context<'a> {
    pub catalogue: &'a mut Catalogue,
    pub today: Date,
}

/// Runs one job; `checkpoint` receives partial states to send before the result.
pub fn run(
    job: &Job,
    context: &mut Context<'_>,
    checkpoint: &mut dyn FnMut(Value),
) -> Result<Value, JobError> {
    let inputs = Inputs(&job.inputs);
    if job.phase == Phase::Prepare && job.process != "quote_carriers" {
        return Err(JobError::NoPrepare(job.process.clone()));
    }

    match job.process.as_str() {
        "validate_postal_code" => validate_postal_code(&inputs),
        "calc_shipping" => calc_shipping(&inputs),
        "quote_carriers" => quote_carriers(job, &inputs, checkpoint),
        "apply_coupon" => apply_coupon(&inputs, context.today),
        "check_inventory" => check_inventory(&inputs, context.catalogue),
        "price_quote" => price_quote(&inputs, context.catalogue),
        "cart_total" => cart_total(&inputs, context.catalogue),
        "reserve_stock" => reserve_stock(&inputs, context.catalogue),
        other => Err(JobError::UnknownProcess(other.to_owned())),
    }
}

fn validate_postal_code(inputs: &Inputs<'_>) -> Result<Value, JobError> {
    let country = inputs.text("country")?;
    let code = inputs.text("postal_code")?;
    Ok(match postal::validate(&country, &code) {
        Ok(valid) => json!({
            "valid": true,
            "country": valid.country,
            "postal_code": valid.normalized,
        }),
        Err(refused) => json!({
            "valid": false,
            "country": country.trim().to_ascii_uppercase(),
            "postal_code": code,
            "reason": refused.to_string(),
        }),
    })
}

fn calc_shipping(inputs: &Inputs<'_>) -> Result<Value, JobError> {
    let postal = postal::validate(&inputs.text("country")?, &inputs.text("postal_code")?)
        .map_err(ShippingError::from)?;
    let weight_g = inputs.integer("cart_weight_g")?;
    let (destination, options) = shipping::shipping_options(&postal, weight_g)?;
    Ok(json!({
        "country": postal.country,
        "postal_code": postal.normalized,
        "zone": destination.zone,
        "remote": destination.remote,
        "cart_weight_g": weight_g,
        "options": options,
    }))
}

fn quote_carriers(
    job: &Job,
    inputs: &Inputs<'_>,
    checkpoint: &mut dyn FnMut(Value),
) -> Result<Value, JobError> {
    let postal = postal::validate(&inputs.text("country")?, &inputs.text("postal_code")?)
        .map_err(ShippingError::from)?;

    if job.phase == Phase::Prepare {
        let (state, from_state) = quote::prepare(&postal, job.state.as_ref());
        let routed = state.routes.iter().filter(|r| r.route.is_some()).count();
        checkpoint(serde_json::to_value(&state).unwrap_or(Value::Null));
        return Ok(json!({
            "prepared": true,
            "country": postal.country,
            "postal_code": postal.normalized,
            "carriers_routed": routed,
            "from_state": from_state,
        }));
    }

    let weight_g = inputs.integer("cart_weight_g")?;
    let report = quote::quote_carriers(&postal, weight_g, job.state.as_ref(), &mut |state| {
        checkpoint(serde_json::to_value(state).unwrap_or(Value::Null));
    })?;
    Ok(serde_json::to_value(&report).unwrap_or(Value::Null))
}

fn apply_coupon(inputs: &Inputs<'_>, today: Date) -> Result<Value, JobError> {
    let code = inputs.text("coupon")?;
    let total_cents = inputs.integer("cart_total_cents")?;
    let categories = inputs.text_list("categories")?;
    // An app may evaluate a coupon for a given day (an order placed before midnight).
    let today = match inputs.optional_text("today")? {
        Some(day) => Date::parse(&day)
            .ok_or_else(|| wrong("today", "a date as YYYY-MM-DD", &Value::String(day.clone())))?,
        None => today,
    };
    let outcome = coupon::apply_coupon(
        &code,
        &Cart {
            total_cents,
            categories: &categories,
            today,
        },
    );
    Ok(serde_json::to_value(&outcome).unwrap_or(Value::Null))
}

/// Stock at or below this is reported as running low.
const LOW_STOCK: i64 = 5;

fn check_inventory(inputs: &Inputs<'_>, catalogue: &mut Catalogue) -> Result<Value, JobError> {
    let product = catalogue.product(&inputs.text("sku")?)?;
    let status = match product.stock {
        0 => "out_of_stock",
        n if n <= LOW_STOCK => "low_stock",
        _ => "in_stock",
    };
    Ok(json!({
        "sku": product.sku,
        "in_stock": product.stock > 0,
        "stock": product.stock,
        "status": status,
    }))
}

fn price_quote(inputs: &Inputs<'_>, catalogue: &mut Catalogue) -> Result<Value, JobError> {
    let product = catalogue.product(&inputs.text("sku")?)?;
    // Shop prices include German VAT at 19%.
    let net_cents = (product.price_cents * 100 + 59) / 119;
    Ok(json!({
        "sku": product.sku,
        "price_cents": product.price_cents,
        "currency": "EUR",
        "net_cents": net_cents,
        "vat_cents": product.price_cents - net_cents,
        "brand": product.brand,
        "category": product.category,
        "weight_g": product.weight_g,
    }))
}

fn cart_total(inputs: &Inputs<'_>, catalogue: &mut Catalogue) -> Result<Value, JobError> {
    let items = cart_items(inputs.raw("cart")?)?;
    let mut lines = Vec::with_capacity(items.len());
    let (mut total_cents, mut weight_g, mut units) = (0i64, 0i64, 0i64);
    for (sku, qty) in items {
        let product = catalogue.product(&sku)?;
        let line_cents = product.price_cents * qty;
        total_cents += line_cents;
        weight_g += product.weight_g * qty;
        units += qty;
        lines.push(json!({
            "sku": product.sku,
            "qty": qty,
            "price_cents": product.price_cents,
            "line_cents": line_cents,
            "weight_g": product.weight_g * qty,
            "category": product.category,
        }));
    }
    Ok(json!({
        "items": lines,
        "units": units,
        "total_cents": total_cents,
        "weight_g": weight_g,
        "currency": "EUR",
    }))
}

/// A cart as `[{"sku":…,"qty":…}]`, also accepted as that list encoded in a string (a form
/// field). `qty` defaults to 1.
fn cart_items(cart: &Value) -> Result<Vec<(String, i64)>, InputError> {
    const EXPECTED: &str = "a list of {\"sku\", \"qty\"} items";
    let decoded;
    let cart = match cart {
        Value::String(text) => {
            decoded =
                serde_json::from_str::<Value>(text).map_err(|_| wrong("cart", EXPECTED, cart))?;
            &decoded
        }
        other => other,
    };
    let items = cart
        .as_array()
        .ok_or_else(|| wrong("cart", EXPECTED, cart))?;
    if items.is_empty() || items.len() > CART_ITEMS_MAX {
        return Err(wrong("cart", "a list of 1 to 200 items", cart));
    }

    items
        .iter()
        .map(|item| {
            let fields = item
                .as_object()
                .ok_or_else(|| wrong("cart", EXPECTED, item))?;
            let item_inputs = Inputs(fields);
            let sku = item_inputs
                .text("sku")
                .map_err(|_| wrong("cart", "items with a \"sku\"", item))?;
            let qty = match fields.get("qty") {
                None | Some(Value::Null) => 1,
                Some(_) => item_inputs
                    .integer("qty")
                    .ok()
                    .filter(|q| (1..=QTY_MAX).contains(q))
                    .ok_or_else(|| wrong("cart", "items with a qty from 1 to 999", item))?,
            };
            Ok((sku, qty))
        })
        .collect()
}

fn reserve_stock(inputs: &Inputs<'_>, catalogue: &mut Catalogue) -> Result<Value, JobError> {
    let sku = inputs.text("sku")?;
    let qty = match inputs.0.get("qty") {
        None | Some(Value::Null) => 1,
        Some(_) => inputs
            .integer("qty")
            .ok()
            .filter(|q| (1..=QTY_MAX).contains(q))
            .ok_or_else(|| wrong("qty", "a whole number from 1 to 999", &inputs.0["qty"]))?,
    };
    Ok(match catalogue.reserve(&sku, qty)? {
        Some(left) => json!({"sku": sku, "reserved": true, "qty": qty, "stock_left": left}),
        None => json!({
            "sku": sku,
            "reserved": false,
            "qty": qty,
            "reason": "not enough stock",
            "stock_left": catalogue.product(&sku)?.stock,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carts_are_read_from_lists_or_strings() {
        let list = json!([{"sku": "1", "qty": 2}, {"sku": 7}]);
        assert_eq!(
            cart_items(&list).unwrap(),
            vec![("1".to_owned(), 2), ("7".to_owned(), 1)]
        );
        let text = json!("[{\"sku\":\"1\",\"qty\":\"3\"}]");
        assert_eq!(cart_items(&text).unwrap(), vec![("1".to_owned(), 3)]);
    }

    #[test]
    fn bad_carts_are_refused() {
        assert!(cart_items(&json!([])).is_err());
        assert!(cart_items(&json!({"sku": "1"})).is_err());
        assert!(cart_items(&json!([{"qty": 1}])).is_err());
        assert!(cart_items(&json!([{"sku": "1", "qty": 0}])).is_err());
        assert!(cart_items(&json!("not json")).is_err());
    }
}
