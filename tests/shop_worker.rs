//! Black-box tests of `precog-shop-worker` and of the Python test workers in `tests/workers/`.
//!
//! Each test starts the real executable and speaks the worker protocol over its stdin and
//! stdout, as precogd does: one JSON job per line in, checkpoint lines and one result or error
//! line per job out.

mod worker_harness;

use serde_json::{Value, json};
use worker_harness::*;

#[test]
fn postal_codes_of_several_countries() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let valid = [
        ("DE", "10115", "10115"),
        ("GB", "sw1a1aa", "SW1A 1AA"),
        ("NL", "1012ab", "1012 AB"),
        ("PL", "00950", "00-950"),
        ("CA", "k1a 0b1", "K1A 0B1"),
        ("JP", "1000001", "100-0001"),
        ("SE", "11455", "114 55"),
        ("US", "10001-1234", "10001-1234"),
        ("FR", "75008", "75008"),
    ];
    for (country, code, normalized) in valid {
        let result = worker.result(
            "validate_postal_code",
            json!({"country": country, "postal_code": code}),
        );
        assert_eq!(result["valid"], true, "{country} {code}: {result}");
        assert_eq!(result["postal_code"], normalized);
    }

    let invalid = [
        ("DE", "1011"),
        ("GB", "SW1A 1CA"),
        ("US", "ABCDE"),
        ("CA", "D1A 0B1"),
    ];
    for (country, code) in invalid {
        let result = worker.result(
            "validate_postal_code",
            json!({"country": country, "postal_code": code}),
        );
        assert_eq!(result["valid"], false, "{country} {code}: {result}");
        assert!(result["reason"].as_str().unwrap().contains("not a valid"));
    }
    let unknown = worker.result(
        "validate_postal_code",
        json!({"country": "ZZ", "postal_code": "1"}),
    );
    assert!(
        unknown["reason"]
            .as_str()
            .unwrap()
            .contains("no postal code rules")
    );
    assert!(worker.finish().success());
}

#[test]
fn shipping_options_are_ordered_by_price() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let berlin = worker.result(
        "calc_shipping",
        json!({"country": "DE", "postal_code": "10115", "cart_weight_g": 1500}),
    );
    let options = berlin["options"].as_array().unwrap();
    assert!(options.len() >= 5, "{berlin}");
    let prices: Vec<u64> = options
        .iter()
        .map(|o| o["price_cents"].as_u64().unwrap())
        .collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    assert!(
        options
            .iter()
            .all(|o| o["carrier"].is_string() && o["days"].is_u64())
    );

    // An island costs more than the mainland; Japan more than both.
    let sylt = worker.result(
        "calc_shipping",
        json!({"country": "DE", "postal_code": "25980", "cart_weight_g": "1500"}),
    );
    assert_eq!(sylt["remote"], true);
    assert!(sylt["options"][0]["price_cents"].as_u64().unwrap() > prices[0]);
    let tokyo = worker.result(
        "calc_shipping",
        json!({"country": "JP", "postal_code": "100-0001", "cart_weight_g": 1500}),
    );
    assert_eq!(tokyo["zone"], "world");
    assert!(tokyo["options"][0]["price_cents"].as_u64().unwrap() > prices[0]);

    let bad_code = worker.error(
        "calc_shipping",
        json!({"country": "DE", "postal_code": "123", "cart_weight_g": 1500}),
    );
    assert!(
        bad_code.contains("not a valid DE postal code"),
        "{bad_code}"
    );
    let too_heavy = worker.error(
        "calc_shipping",
        json!({"country": "DE", "postal_code": "10115", "cart_weight_g": 500_000}),
    );
    assert!(too_heavy.contains("split the order"), "{too_heavy}");
}

#[test]
fn coupons_are_accepted_or_refused_with_a_reason() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let accepted = worker.result(
        "apply_coupon",
        json!({"coupon": "welcome10", "cart_total_cents": 4999}),
    );
    assert_eq!(accepted["accepted"], true);
    assert_eq!(accepted["discount_cents"], 500);
    assert_eq!(accepted["new_total_cents"], 4499);

    let refusals = [
        (
            json!({"coupon": "SAVE5", "cart_total_cents": 1000}),
            "at least 25.00",
        ),
        (
            json!({"coupon": "NOSUCH", "cart_total_cents": 1000}),
            "unknown coupon",
        ),
        (
            json!({"coupon": "AUTUMN2019", "cart_total_cents": 1000}),
            "expired",
        ),
        (
            json!({"coupon": "ELECTRO20", "cart_total_cents": 9000, "categories": ["apparel"]}),
            "electronics",
        ),
    ];
    for (inputs, reason) in refusals {
        let refused = worker.result("apply_coupon", inputs.clone());
        assert_eq!(refused["accepted"], false, "{inputs}");
        assert!(
            refused["reason"].as_str().unwrap().contains(reason),
            "{refused}"
        );
        assert_eq!(refused["new_total_cents"], inputs["cart_total_cents"]);
    }
    let in_autumn = worker.result(
        "apply_coupon",
        json!({"coupon": "AUTUMN2019", "cart_total_cents": 1000, "today": "2019-10-15"}),
    );
    assert_eq!(in_autumn["discount_cents"], 120);
}

#[test]
fn bad_input_gets_an_error_line_and_the_worker_keeps_serving() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let postal = json!({"country": "DE", "postal_code": "10115"});

    // Every error line carries a stable `code` besides its message: an app branches on it.
    worker.send_raw("this is not json");
    let reply = worker.next();
    assert_eq!(reply["job"], Value::Null);
    assert!(reply["error"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(reply["code"], "bad_job");

    worker.send_raw(r#"{"job": 77, "process": "calc_shipping", "inputs": {"#);
    let reply = worker.next();
    assert_eq!(reply["job"], 77, "the id of a broken line is salvaged");

    let shipping = |inputs: Value| json!({"job": 10, "process": "calc_shipping", "inputs": inputs});
    let cases = [
        (
            json!({"job": 3, "process": "launch_rocket", "inputs": {}}),
            "unknown process",
            "unknown_process",
        ),
        (
            json!({"job": 4, "process": "calc_shipping", "inputs": postal}),
            "cart_weight_g",
            "missing_input",
        ),
        (
            json!({"job": 5, "process": "calc_shipping",
                   "inputs": {"country": "DE", "postal_code": "10115", "cart_weight_g": "heavy"}}),
            "must be a whole number",
            "bad_input",
        ),
        (json!({"job": 6, "inputs": {}}), "no \"process\"", "bad_job"),
        (
            json!({"job": 7, "process": "apply_coupon", "inputs": [1, 2]}),
            "inputs",
            "bad_job",
        ),
        (
            json!({"job": 8, "process": "cart_total", "inputs": {"cart": "x"}}),
            "cart",
            "bad_input",
        ),
        (
            json!({"job": 9, "process": "calc_shipping", "inputs": postal, "phase": "prepare"}),
            "no prepare phase",
            "no_prepare_phase",
        ),
        (
            shipping(json!({"country": "DE", "postal_code": "1011", "cart_weight_g": 500})),
            "not a valid DE postal code",
            "bad_postal_code",
        ),
        (
            shipping(json!({"country": "ZZ", "postal_code": "1", "cart_weight_g": 500})),
            "no postal code rules",
            "unsupported_country",
        ),
        (
            shipping(json!({"country": "DE", "postal_code": "10115", "cart_weight_g": 0})),
            "more than 0",
            "bad_input",
        ),
        (
            shipping(json!({"country": "DE", "postal_code": "10115", "cart_weight_g": 900000})),
            "heavier than any carrier",
            "too_heavy",
        ),
    ];
    for (job, expected, code) in cases {
        let (_, reply) = worker.ask(job.clone());
        let error = reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{job}: {reply}"));
        assert!(error.contains(expected), "{job}: {error}");
        assert_eq!(reply["code"], code, "{job}: {reply}");
    }
    worker.send_raw("[1,2,3]");
    assert!(worker.next()["error"].is_string());
    worker.send_raw("");

    let still = worker.result("validate_postal_code", postal);
    assert_eq!(still["valid"], true);
    assert_eq!(worker.finish().code(), Some(0));
}

#[test]
fn catalogue_processes_explain_a_missing_catalogue() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    for process in ["check_inventory", "price_quote", "reserve_stock"] {
        let error = worker.error(process, json!({"sku": "1517085"}));
        assert!(error.contains("build-catalog"), "{process}: {error}");
    }
    let (_, reply) = worker.ask(json!({"job": 1, "process": "check_inventory",
        "inputs": {"sku": "1517085"}}));
    assert_eq!(reply["code"], "catalogue_unavailable", "{reply}");
    let error = worker.error(
        "cart_total",
        json!({"cart": [{"sku": "1517085", "qty": 1}]}),
    );
    assert!(error.contains("build-catalog"), "{error}");
    // The other processes do not need the catalogue.
    let coupon = worker.result(
        "apply_coupon",
        json!({"coupon": "SAVE5", "cart_total_cents": 3000}),
    );
    assert_eq!(coupon["accepted"], true);
}

#[test]
fn catalogue_built_from_otto_answers_stock_and_prices() {
    let Some(otto) = shared_data("otto/otto_train_sample.jsonl") else {
        println!("SKIPPED: ../shared/data/otto/otto_train_sample.jsonl is absent");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("shop.sqlite");
    build_catalog(&otto, &catalog);

    let first_session: Value = serde_json::from_str(
        std::fs::read_to_string(&otto)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let sku = first_session["events"][0]["aid"].to_string();

    let mut worker = Worker::shop(&catalog);
    let price = worker.result("price_quote", json!({"sku": sku}));
    let price_cents = price["price_cents"].as_i64().unwrap();
    assert!(price_cents > 0, "{price}");
    assert_eq!(price["currency"], "EUR");
    assert_eq!(
        price["net_cents"].as_i64().unwrap() + price["vat_cents"].as_i64().unwrap(),
        price_cents
    );

    let stock = worker.result("check_inventory", json!({"sku": sku}));
    let units = stock["stock"].as_i64().unwrap();
    assert_eq!(stock["in_stock"], units > 0);

    let total = worker.result("cart_total", json!({"cart": [{"sku": sku, "qty": 3}]}));
    assert_eq!(total["total_cents"].as_i64().unwrap(), 3 * price_cents);
    assert!(total["weight_g"].as_i64().unwrap() > 0);

    let reserved = worker.result("reserve_stock", json!({"sku": sku}));
    if units > 0 {
        assert_eq!(reserved["reserved"], true, "{reserved}");
        assert_eq!(reserved["stock_left"], units - 1);
        let after = worker.result("check_inventory", json!({"sku": sku}));
        assert_eq!(after["stock"], units - 1, "reserving is a real write");
    } else {
        assert_eq!(reserved["reserved"], false, "{reserved}");
    }

    let unknown = worker.error("price_quote", json!({"sku": "no-such-sku"}));
    assert!(unknown.contains("unknown sku"), "{unknown}");
    let (_, reply) = worker.ask(json!({"job": 1, "process": "check_inventory",
        "inputs": {"sku": "no-such-sku"}}));
    assert_eq!(reply["code"], "unknown_sku", "{reply}");
    assert!(worker.finish().success());

    // The same file always builds the same catalogue.
    let again = dir.path().join("again.sqlite");
    build_catalog(&otto, &again);
    let mut worker = Worker::shop(&again);
    assert_eq!(
        worker.result("price_quote", json!({"sku": sku}))["price_cents"],
        price_cents
    );
    assert_eq!(
        worker.result("check_inventory", json!({"sku": sku}))["stock"],
        units
    );
}

#[test]
fn catalogue_built_from_rees46_keeps_the_listed_price() {
    let Some(rees46) = shared_data("rees46/2019-Oct_head.complete_rows.csv") else {
        println!("SKIPPED: ../shared/data/rees46 is absent");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("shop.sqlite");
    build_catalog(&rees46, &catalog);

    // The last row of a product carries its current price.
    let text = std::fs::read_to_string(&rees46).unwrap();
    let row: Vec<&str> = text.lines().nth(2).unwrap().split(',').collect();
    let sku = row[2];
    let last_price = text
        .lines()
        .rev()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&sku))
        .map(|f| f[6].parse::<f64>().unwrap())
        .unwrap();

    let mut worker = Worker::shop(&catalog);
    let price = worker.result("price_quote", json!({"sku": sku}));
    assert_eq!(
        price["price_cents"],
        (last_price * 100.0).round() as i64,
        "{price}"
    );
    let brand = row[5];
    if !brand.is_empty() {
        assert_eq!(price["brand"], brand);
    }
}

#[test]
fn quote_carriers_checkpoints_and_resumes() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let inputs = json!({"country": "US", "postal_code": "10001", "cart_weight_g": 2500});
    let (checkpoints, reply) = worker.ask(json!({
        "job": 10, "process": "quote_carriers", "inputs": inputs, "state": null
    }));
    let fresh = &reply["result"];
    assert_eq!(fresh["resumed_from"], 0);
    let quotes = fresh["quotes"].as_array().unwrap();
    assert!(quotes.len() >= 4);
    assert_eq!(
        checkpoints.len(),
        quotes.len() - 1,
        "a checkpoint between carriers"
    );
    for checkpoint in &checkpoints {
        assert!(checkpoint.to_string().len() < 64 * 1024);
    }

    // A replacement worker given the third checkpoint does only the remaining carriers.
    let mut replacement = Worker::shop(&catalog);
    let (later, reply) = replacement.ask(json!({
        "job": 11, "process": "quote_carriers", "inputs": inputs, "state": checkpoints[2]
    }));
    let resumed = &reply["result"];
    assert_eq!(resumed["resumed_from"], 3, "{resumed}");
    assert_eq!(later.len(), quotes.len() - 4);
    assert_eq!(resumed["quotes"], fresh["quotes"]);
    assert_eq!(resumed["cheapest"], fresh["cheapest"]);
}

#[test]
fn quote_carriers_prepare_phase_does_the_route_lookups() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let (checkpoints, reply) = worker.ask(json!({
        "job": 20, "process": "quote_carriers", "phase": "prepare",
        "inputs": {"country": "GB", "postal_code": "EH1 1YZ"}
    }));
    assert_eq!(reply["result"]["prepared"], true, "{reply}");
    assert_eq!(checkpoints.len(), 1);
    let routes = checkpoints[0]["routes"].as_array().unwrap();
    assert!(routes.iter().any(|r| r["route"]["hubs"].is_array()));

    let (_, reply) = worker.ask(json!({
        "job": 21, "process": "quote_carriers", "state": checkpoints[0],
        "inputs": {"country": "GB", "postal_code": "EH1 1YZ", "cart_weight_g": 800}
    }));
    let result = &reply["result"];
    assert_eq!(result["routes_from_state"], true, "{result}");
    assert_eq!(result["resumed_from"], 0);
    assert_eq!(result["delivery_hub"], "Glasgow");
}

/// A worker started as `nobody`, as the packaged service starts its workers as an unprivileged
/// user, on `catalog`.
fn shop_as_nobody(catalog: &std::path::Path) -> Worker {
    let mut command = std::process::Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", WORKER])
        .arg("--catalog")
        .arg(catalog)
        .env_clear();
    Worker::start(command)
}

#[test]
fn a_catalogue_the_worker_may_not_use_is_named_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let root = nix::unistd::geteuid().is_root();
    if !root || !std::path::Path::new("/usr/bin/setpriv").exists() {
        println!("SKIPPED: needs root and setpriv to run the worker as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions.jsonl");
    std::fs::write(
        &sessions,
        r#"{"session":0,"events":[{"aid":1517085,"ts":1,"type":"clicks"}]}"#,
    )
    .unwrap();
    let catalog = dir.path().join("shop.sqlite");
    build_catalog(&sessions, &catalog);
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let shown = catalog.display().to_string();
    let sku = json!({"sku": "1517085"});

    // A directory on the way the worker's user may not enter.
    mode(dir.path(), 0o700);
    let error = shop_as_nobody(&catalog).error("price_quote", sku.clone());
    assert!(error.contains("Permission denied"), "{error}");
    assert!(error.contains(&shown), "{error}");
    assert!(!error.contains("build-catalog"), "{error}");
    assert_eq!(
        error.matches("Permission denied").count(),
        1,
        "said once: {error}"
    );

    // A file the worker's user may not read.
    mode(dir.path(), 0o755);
    mode(&catalog, 0o600);
    let error = shop_as_nobody(&catalog).error("check_inventory", sku.clone());
    assert!(error.contains("cannot read shop catalogue"), "{error}");
    assert!(
        error.contains("Permission denied") && error.contains(&shown),
        "{error}"
    );

    // A file it may read but not write: prices answer, a reservation says what it lacks.
    mode(&catalog, 0o644);
    let mut worker = shop_as_nobody(&catalog);
    assert!(worker.result("price_quote", sku.clone())["price_cents"].as_i64() > Some(0));
    let error = worker.error("reserve_stock", sku);
    assert!(error.contains("cannot reserve stock"), "{error}");
    assert!(
        error.contains("Permission denied") && error.contains(&shown),
        "{error}"
    );
    assert!(worker.finish().success());
}
