//! Black-box tests of `precog-shop-worker build-catalog` on damaged data files, and of the
//! worker's answers where a catalogue or an input holds values past what money sums can carry.
//! A file that cannot be read right is refused with its name and line, nothing is left beside
//! the catalogue, no answer is a wrapped-around number, and a damaged catalogue is called that.

mod worker_harness;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use worker_harness::*;

const HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,\
user_id,user_session";

/// Runs build-catalog; returns whether it succeeded and its stderr.
fn build(from: &Path, out: &Path) -> (bool, String) {
    let output = Command::new(WORKER)
        .args(["build-catalog", "--from"])
        .arg(from)
        .arg("--out")
        .arg(out)
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

fn rees46(dir: &Path, name: &str, rows: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut text = format!("{HEADER}\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Names left in `dir` besides the data files the test wrote.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".sqlite"))
        .collect()
}

#[test]
fn prices_that_are_no_price_are_refused_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = "2019-10-01 00:00:00 UTC,view,1,2,,acme,19.99,3,s1";
    for price in [
        "NaN",
        "inf",
        "-inf",
        "-5.00",
        "1e17",
        "92233720368547758.07",
    ] {
        let bad = format!("2019-10-01 00:00:01 UTC,view,7,2,,acme,{price},3,s1");
        let data = rees46(dir.path(), "prices.csv", &[good, &bad]);
        let (ok, err) = build(&data, &dir.path().join("shop.sqlite"));
        assert!(!ok, "price {price} was accepted");
        assert!(err.contains("prices.csv:3: price"), "{price}: {err}");
        assert!(err.contains("not a price"), "{price}: {err}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }
}

#[test]
fn a_row_cut_short_is_refused_even_where_its_price_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let whole = "2019-10-01 00:00:00 UTC,view,1,2,,acme,35.79,3,s1";
    // The row was cut inside its price: 35.79 became 3.
    let cut = "2019-10-01 00:00:01 UTC,view,1,2,,acme,3";
    let data = rees46(dir.path(), "cut.csv", &[whole, cut]);
    let (ok, err) = build(&data, &dir.path().join("shop.sqlite"));
    assert!(!ok, "a cut row was read");
    assert!(
        err.contains("cut.csv:3: expected 9 fields, as in the header, found 7"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.csv");
    let mut bytes =
        format!("{HEADER}\n2019-10-01 00:00:00 UTC,view,1,2,,acme,1.00,3,s1\n").into_bytes();
    bytes.extend_from_slice(b"2019-10-01 00:00:01 UTC,view,2,2,,caf\xe9,1.00,3,s1\n");
    std::fs::write(&path, bytes).unwrap();
    let (ok, err) = build(&path, &dir.path().join("shop.sqlite"));
    assert!(!ok);
    assert!(err.contains("latin1.csv:3: not UTF-8 text"), "{err}");
}

#[test]
fn the_catalogue_may_not_overwrite_its_own_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = rees46(
        dir.path(),
        "data.csv",
        &["2019-10-01 00:00:00 UTC,view,1,2,,acme,1.00,3,s1"],
    );
    let before = std::fs::read(&data).unwrap();
    let (ok, err) = build(&data, &data);
    assert!(!ok, "the data file was replaced by the catalogue");
    assert!(err.contains("would overwrite a data file"), "{err}");
    assert_eq!(std::fs::read(&data).unwrap(), before);
}

#[test]
fn a_catalogue_that_cannot_be_moved_into_place_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = rees46(
        dir.path(),
        "data.csv",
        &["2019-10-01 00:00:00 UTC,view,1,2,,acme,1.00,3,s1"],
    );
    let out = dir.path().join("shop.sqlite");
    std::fs::create_dir(&out).unwrap();
    let (ok, err) = build(&data, &out);
    assert!(!ok);
    assert!(
        err.contains("cannot move the new catalogue into place"),
        "{err}"
    );
    let left: Vec<String> = leftovers(dir.path())
        .into_iter()
        .filter(|name| name != "shop.sqlite")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_catalogue_with_impossible_prices_gets_errors_not_wrapped_totals() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("shop.sqlite");
    let db = rusqlite::Connection::open(&catalog).unwrap();
    db.execute_batch(
        "CREATE TABLE products (sku TEXT PRIMARY KEY, source TEXT, category TEXT, brand TEXT, \
         price_cents INTEGER, weight_g INTEGER, stock INTEGER);
         INSERT INTO products VALUES ('huge', 'x', NULL, NULL, 9223372036854775807, 500, 3);
         INSERT INTO products VALUES ('fine', 'x', NULL, NULL, 1999, 500, 3);",
    )
    .unwrap();
    drop(db);

    let mut worker = Worker::shop(&catalog);
    let err = worker.error("price_quote", json!({"sku": "huge"}));
    assert!(err.contains("impossible price_cents"), "{err}");
    let err = worker.error("cart_total", json!({"cart": [{"sku": "huge", "qty": 999}]}));
    assert!(err.contains("impossible price_cents"), "{err}");
    let fine = worker.result("cart_total", json!({"cart": [{"sku": "fine", "qty": 3}]}));
    assert_eq!(fine["total_cents"], 5_997);
    assert!(worker.finish().success());
}

#[test]
fn the_largest_cart_total_gets_the_capped_coupon_discount() {
    let (_dir, catalog) = no_catalog();
    let mut worker = Worker::shop(&catalog);
    let most = worker.result(
        "apply_coupon",
        json!({"coupon": "WELCOME10", "cart_total_cents": i64::MAX}),
    );
    assert_eq!(most["accepted"], true, "{most}");
    assert_eq!(most["discount_cents"], 5_000, "{most}");
    assert_eq!(most["new_total_cents"], i64::MAX - 5_000, "{most}");
    assert!(worker.finish().success());
}

#[test]
fn reserving_in_a_damaged_catalogue_says_rebuild_not_write_access() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_database = dir.path().join("text.sqlite");
    std::fs::write(&not_a_database, "these are not the products\n").unwrap();
    let other_tables = dir.path().join("other.sqlite");
    let db = rusqlite::Connection::open(&other_tables).unwrap();
    db.execute_batch("CREATE TABLE orders (id INTEGER);")
        .unwrap();
    drop(db);

    for catalog in [not_a_database, other_tables] {
        let mut worker = Worker::shop(&catalog);
        let err = worker.error("reserve_stock", json!({"sku": "1"}));
        assert!(err.contains("rebuild it"), "{err}");
        assert!(!err.contains("write access"), "{err}");
        assert!(worker.finish().success());
    }
}
