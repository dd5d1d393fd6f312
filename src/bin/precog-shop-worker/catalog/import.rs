//! Building the SQLite shop catalogue from real shop data files.
//!
//! Three sources are understood: the REES46 event CSV (product id, category path, brand, price),
//! the OTTO session JSONL (article ids only: price and the rest are derived) and the JD session
//! files (sku ids and a numeric category). What the files do not carry (stock, weight, OTTO and
//! JD prices) is derived from a hash of the product id, so the same file always builds the same
//! catalogue. The parsers are pure functions over the file's text; [`build`] writes the database
//! next to its final path and renames it into place, so a worker never opens half a catalogue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

/// Why a catalogue could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "cannot tell the format of {0}; give the REES46 CSV (.csv), the OTTO sessions (.jsonl) \
         or JD sessions (.txt)"
    )]
    UnknownFormat(PathBuf),
    #[error("no products found in {0}")]
    Empty(PathBuf),
    #[error("the catalogue {0} would overwrite a data file it is built from; give another --out")]
    OutIsSource(PathBuf),
    #[error("cannot write catalogue {path}; check the directory exists and is writable")]
    Write {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot move the new catalogue into place at {path}")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A product as stored in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    pub sku: String,
    pub source: &'static str,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub price_cents: i64,
    pub weight_g: i64,
    pub stock: i64,
}

/// A parse failure: the 1-based line and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// A stable hash of a product id with a purpose tag, so stock, weight and price vary
/// independently.
fn product_hash(purpose: &str, sku: &str) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(purpose.as_bytes());
    hasher.update(b":");
    hasher.update(sku.as_bytes());
    hasher.finalize()
}

/// Units in stock: about one product in ten is sold out, the rest have 1-120.
pub fn derived_stock(sku: &str) -> i64 {
    let hash = product_hash("stock", sku);
    if hash.is_multiple_of(10) {
        0
    } else {
        i64::from((hash / 10) % 120 + 1)
    }
}

/// Shipping weight: typical for the top-level category, varied by ±50%.
pub fn derived_weight_g(sku: &str, category: Option<&str>) -> i64 {
    let top = category.and_then(|c| c.split('.').next()).unwrap_or("");
    let typical = match top {
        "appliances" => 6_000,
        "furniture" => 9_000,
        "computers" => 2_200,
        "electronics" => 700,
        "construction" => 2_500,
        "apparel" | "accessories" => 400,
        "kids" | "sport" => 1_200,
        _ => 800,
    };
    let percent = i64::from(product_hash("weight", sku) % 101) + 50;
    (typical * percent / 100).max(50)
}

/// A price for products whose source has none: 2.99 to 299.99, ending in 99 cents.
pub fn derived_price_cents(sku: &str) -> i64 {
    i64::from(product_hash("price", sku) % 298 + 3) * 100 - 1
}

fn record(
    sku: String,
    source: &'static str,
    category: Option<String>,
    brand: Option<String>,
    price: Option<i64>,
) -> ProductRecord {
    ProductRecord {
        price_cents: price.unwrap_or_else(|| derived_price_cents(&sku)),
        weight_g: derived_weight_g(&sku, category.as_deref()),
        stock: derived_stock(&sku),
        sku,
        source,
        category,
        brand,
    }
}

/// Products of the REES46 CSV (`event_time,event_type,product_id,category_id,category_code,
/// brand,price,…`); the last price seen for a product wins.
pub fn parse_rees46(text: &str) -> Result<Vec<ProductRecord>, LineError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').collect())
        .unwrap_or_default();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| LineError {
                line: 1,
                message: format!("the header has no {name:?} column; is this the REES46 CSV?"),
            })
    };
    let (id_at, category_at, brand_at, price_at) = (
        column("product_id")?,
        column("category_code")?,
        column("brand")?,
        column("price")?,
    );

    let mut products = BTreeMap::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let bad = |message: String| LineError {
            line: index + 1,
            message,
        };
        // A row cut short may still reach the price column, with the price cut too.
        if fields.len() != header.len() {
            return Err(bad(format!(
                "expected {} fields, as in the header, found {} (a row cut short, or a comma \
                 inside a field)",
                header.len(),
                fields.len()
            )));
        }
        let field = |at: usize| fields[at].trim();
        let sku = field(id_at);
        if sku.is_empty() || !sku.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("product_id {sku:?} is not a number")));
        }
        let price_text = field(price_at);
        let price: f64 = price_text
            .parse()
            .map_err(|_| bad(format!("price {price_text:?} is not a number")))?;
        let price_cents = (price * 100.0).round();
        if !(0.0..=super::PRICE_MAX_CENTS as f64).contains(&price_cents) {
            return Err(bad(format!(
                "price {price_text:?} is not a price from 0.00 to {}.00",
                super::PRICE_MAX_CENTS / 100
            )));
        }
        let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        let category = non_empty(field(category_at));
        let brand = non_empty(field(brand_at));
        let price_cents = price_cents as i64;
        products.insert(
            sku.to_owned(),
            record(sku.to_owned(), "rees46", category, brand, Some(price_cents)),
        );
    }
    Ok(products.into_values().collect())
}

/// Products of the OTTO sessions JSONL: every `aid` of every event.
pub fn parse_otto(text: &str) -> Result<Vec<ProductRecord>, LineError> {
    let mut skus = std::collections::BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| LineError {
            line: index + 1,
            message,
        };
        let session: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON session: {e}")))?;
        let events = session["events"]
            .as_array()
            .ok_or_else(|| bad("no \"events\" list; is this the OTTO sessions file?".into()))?;
        for event in events {
            let aid = event["aid"]
                .as_u64()
                .ok_or_else(|| bad("an event has no numeric \"aid\"".into()))?;
            skus.insert(aid.to_string());
        }
    }
    Ok(skus
        .into_iter()
        .map(|sku| record(sku, "otto", None, None, None))
        .collect())
}

/// Products of a JD sessions file: `sku+behavior+category+interval+dwell` actions.
pub fn parse_jd(text: &str) -> Result<Vec<ProductRecord>, LineError> {
    let mut products = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        for action in line.split_whitespace() {
            let parts: Vec<&str> = action.split('+').collect();
            let numeric = parts.len() == 5 && parts.iter().all(|p| p.parse::<u64>().is_ok());
            if !numeric {
                return Err(LineError {
                    line: index + 1,
                    message: format!("action {action:?} is not sku+behavior+category+gap+dwell"),
                });
            }
            let category = format!("jd.{}", parts[2]);
            products
                .entry(parts[0].to_owned())
                .or_insert_with(|| record(parts[0].to_owned(), "jd", Some(category), None, None));
        }
    }
    Ok(products.into_values().collect())
}

/// Reads and parses one source file, choosing the parser by its extension.
pub fn read_source(path: &Path) -> Result<Vec<ProductRecord>, ImportError> {
    let parse = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => parse_rees46,
        Some("jsonl") | Some("ndjson") => parse_otto,
        Some("txt") => parse_jd,
        _ => return Err(ImportError::UnknownFormat(path.to_owned())),
    };
    let bytes = std::fs::read(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = good
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        ImportError::Format {
            path: path.to_owned(),
            line: good.iter().filter(|b| **b == b'\n').count() + 1,
            message: format!(
                "not UTF-8 text (byte {:#04x} at column {}); convert the file to UTF-8",
                e.as_bytes()[good.len()],
                good.len() - line_start + 1
            ),
        }
    })?;
    let products = parse(&text).map_err(|e| ImportError::Format {
        path: path.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    if products.is_empty() {
        return Err(ImportError::Empty(path.to_owned()));
    }
    Ok(products)
}

/// Refuses an `out` that is one of the `sources`, before anything is read or written.
pub fn check_out(sources: &[PathBuf], out: &Path) -> Result<(), ImportError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(out) else {
        return Ok(());
    };
    let same = |source: &PathBuf| {
        std::fs::metadata(source).is_ok_and(|m| (m.dev(), m.ino()) == (target.dev(), target.ino()))
    };
    if sources.iter().any(same) {
        return Err(ImportError::OutIsSource(out.to_owned()));
    }
    Ok(())
}

/// Writes `products` as a fresh catalogue at `out`, replacing any catalogue there at once.
/// A product id present in several sources keeps the first source's entry.
pub fn build(products: &[ProductRecord], out: &Path) -> Result<usize, ImportError> {
    let staging = staging_path(out);
    let write_err = |source| ImportError::Write {
        path: out.to_owned(),
        source,
    };
    // A leftover from an interrupted build would otherwise be appended to.
    let _ = std::fs::remove_file(&staging);
    remove_abandoned(out);

    let mut db = Connection::open(&staging).map_err(write_err)?;
    let result = (|| {
        db.execute_batch(super::SCHEMA)?;
        let tx = db.transaction()?;
        let mut count = 0;
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO products \
                 (sku, source, category, brand, price_cents, weight_g, stock) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for p in products {
                count += insert.execute(params![
                    p.sku,
                    p.source,
                    p.category,
                    p.brand,
                    p.price_cents,
                    p.weight_g,
                    p.stock
                ])?;
            }
        }
        tx.commit()?;
        Ok(count)
    })();
    drop(db);
    let count = result.map_err(|source| {
        let _ = std::fs::remove_file(&staging);
        write_err(source)
    })?;

    std::fs::rename(&staging, out).map_err(|source| {
        let _ = std::fs::remove_file(&staging);
        ImportError::Rename {
            path: out.to_owned(),
            source,
        }
    })?;
    Ok(count)
}

/// Removes what builds of `out` that were killed left beside it: staging files (and their
/// SQLite journals) named for a process that no longer runs. A build still running keeps its own.
fn remove_abandoned(out: &Path) {
    let (Some(dir), Some(name)) = (out.parent(), out.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.building-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let digits = rest.split('-').next().unwrap_or_default();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        let suffix_ok = matches!(&rest[digits.len()..], "" | "-journal" | "-wal" | "-shm");
        if suffix_ok && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn staging_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".building-{}", std::process::id()));
    out.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_removes_what_killed_builds_left_but_not_a_running_ones() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("shop.sqlite");
        // No process has a number above the kernel's largest pid (4194304); pid 1 always runs.
        let dead = [
            "shop.sqlite.building-999999999",
            "shop.sqlite.building-999999999-journal",
        ];
        let kept = [
            "shop.sqlite.building-1",
            "other.sqlite.building-999999999",
            "notes.txt",
        ];
        for name in dead.iter().chain(&kept) {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let products = parse_rees46(REES46).unwrap();
        build(&products, &out).unwrap();
        for name in dead {
            assert!(!dir.path().join(name).exists(), "{name} is still there");
        }
        for name in kept {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
        assert!(out.exists());
    }

    const REES46: &str = "event_time,event_type,product_id,category_id,category_code,brand,\
price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,\
aqua,33.20,554748717,9333
2019-10-01 00:00:01 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,\
aqua,31.90,554748717,9333
";

    #[test]
    fn rees46_rows_become_products_with_the_last_price() {
        let products = parse_rees46(REES46).unwrap();
        assert_eq!(products.len(), 2);
        let heater = products.iter().find(|p| p.sku == "3900821").unwrap();
        assert_eq!(heater.price_cents, 3_190);
        assert_eq!(heater.brand.as_deref(), Some("aqua"));
        assert!(heater.weight_g >= 3_000, "appliances are heavy");
        let cream = products.iter().find(|p| p.sku == "44600062").unwrap();
        assert_eq!(cream.category, None);
    }

    #[test]
    fn rees46_errors_name_the_line() {
        let broken = "product_id,category_code,brand,price\n1,a,b,2.0\nx,a,b,2.0\n";
        assert_eq!(parse_rees46(broken).unwrap_err().line, 3);
        assert_eq!(parse_rees46("a,b\n1,2\n").unwrap_err().line, 1);
    }

    #[test]
    fn otto_and_jd_ids_get_derived_prices() {
        let otto = parse_otto(
            &(r#"{"session":0,"events":[{"aid":1517085,"ts":1,"type":"clicks"},"#.to_owned()
                + r#"{"aid":16246,"ts":2,"type":"carts"}]}"#),
        )
        .unwrap();
        assert_eq!(otto.len(), 2);
        assert!(
            otto.iter()
                .all(|p| p.price_cents % 100 == 99 && p.price_cents >= 299)
        );

        let jd = parse_jd("2024535+5+672+2+74 2024535+7+672+294+74 2692787+5+672+4+79\n").unwrap();
        assert_eq!(jd.len(), 2);
        assert_eq!(jd[0].category.as_deref(), Some("jd.672"));
        assert!(parse_jd("12+x").is_err());
    }

    #[test]
    fn derived_values_are_stable() {
        assert_eq!(derived_stock("1517085"), derived_stock("1517085"));
        assert_eq!(derived_price_cents("16246"), derived_price_cents("16246"));
        let sold_out = (0..1_000)
            .filter(|i| derived_stock(&i.to_string()) == 0)
            .count();
        assert!((50..150).contains(&sold_out), "{sold_out} of 1000 sold out");
    }
}
