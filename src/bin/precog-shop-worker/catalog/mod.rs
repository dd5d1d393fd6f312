//! The shop catalogue: products, prices, weights and stock in a SQLite file.
//!
//! The worker opens the catalogue read-only once and keeps it; if the file is missing it answers
//! the catalogue processes with an error saying how to build it (or, when the worker's user may
//! not read it, what the file system refused, with the path) and looks again on the next job,
//! and if the file is replaced (a rebuild renames a new one into place) it reopens it. Reserving
//! stock is the one write, on a separate read-write connection opened when first needed, with a
//! busy timeout because the other workers of the pool share the file.

pub mod import;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

/// The catalogue's tables.
pub const SCHEMA: &str = "
CREATE TABLE products (
    sku TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    category TEXT,
    brand TEXT,
    price_cents INTEGER NOT NULL,
    weight_g INTEGER NOT NULL,
    stock INTEGER NOT NULL CHECK (stock >= 0)
);";

/// The dearest price (cents) and heaviest weight (grams) a catalogue product may have. Within
/// them, no cart of up to 200 items of up to 999 units each can add up past what an `i64` holds.
pub const PRICE_MAX_CENTS: i64 = 100_000_000;
pub const WEIGHT_MAX_G: i64 = 1_000_000;

/// How long a stock reservation waits for another worker's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the catalogue could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "no shop catalogue at {0}; build it with `precog-shop-worker build-catalog --from FILE \
         --out PATH` and point the worker at it (--catalog or PRECOG_SHOP_CATALOG)"
    )]
    Missing(PathBuf),
    /// The path is there, maybe, but the worker's user may not look it up.
    #[error(
        "cannot reach shop catalogue {path}: {source}; the worker's user needs search access to \
         every directory on the way to it"
    )]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read shop catalogue {path}: {source}; the worker's user needs read access to it"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open shop catalogue {path}; rebuild it with `precog-shop-worker build-catalog`"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "cannot read shop catalogue {path}; rebuild it with `precog-shop-worker build-catalog`"
    )]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "cannot reserve stock in shop catalogue {path}: {source}; the worker's user needs write \
         access to it and to its directory (SQLite writes a journal beside it)"
    )]
    Write {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "cannot reserve stock in shop catalogue {path}: {source}; the worker's user needs write \
         access to it and to its directory (SQLite writes a journal beside it)"
    )]
    WriteAccess {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unknown sku {0:?}: not in the shop catalogue")]
    UnknownSku(String),
    #[error(
        "shop catalogue {path} gives sku {sku:?} an impossible {what}; rebuild it with \
         `precog-shop-worker build-catalog`"
    )]
    BadProduct {
        path: PathBuf,
        sku: String,
        what: String,
    },
}

/// A catalogue product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub sku: String,
    pub source: String,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub price_cents: i64,
    pub weight_g: i64,
    pub stock: i64,
}

/// Identity of the opened file, to notice when a rebuild replaced it.
type FileId = (u64, u64);

/// The catalogue at a path, opened when it exists.
pub struct Catalogue {
    path: PathBuf,
    reader: Option<(Connection, FileId)>,
    writer: Option<(Connection, FileId)>,
}

impl Catalogue {
    /// A catalogue at `path`; it is opened now if it exists, later otherwise.
    pub fn new(path: PathBuf) -> Self {
        let mut catalogue = Self {
            path,
            reader: None,
            writer: None,
        };
        // A missing file is reported per job; an unreadable one too, with its cause.
        let _ = catalogue.reader();
        catalogue
    }

    /// Whether the catalogue file is there and opened.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.reader.is_some()
    }

    /// Opens the catalogue now if it is not open yet; says why it cannot be read.
    pub fn check(&mut self) -> Result<(), CatalogError> {
        self.reader().map(|_| ())
    }

    fn current_file(&self) -> Result<FileId, CatalogError> {
        let meta = std::fs::metadata(&self.path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CatalogError::Missing(self.path.clone())
            } else {
                CatalogError::Unreachable {
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        Ok((meta.dev(), meta.ino()))
    }

    fn reader(&mut self) -> Result<&Connection, CatalogError> {
        let file = self.current_file()?;
        if self
            .reader
            .as_ref()
            .is_none_or(|(_, opened)| *opened != file)
        {
            // SQLite says only "unable to open database file"; the file system says why.
            std::fs::File::open(&self.path).map_err(|source| CatalogError::Unreadable {
                path: self.path.clone(),
                source,
            })?;
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let db = Connection::open_with_flags(&self.path, flags).map_err(|source| {
                CatalogError::Open {
                    path: self.path.clone(),
                    source,
                }
            })?;
            self.reader = Some((db, file));
        }
        Ok(&self.reader.as_ref().expect("opened above").0)
    }

    fn writer(&mut self) -> Result<&Connection, CatalogError> {
        let file = self.current_file()?;
        if self
            .writer
            .as_ref()
            .is_none_or(|(_, opened)| *opened != file)
        {
            let write_err = |source| CatalogError::Write {
                path: self.path.clone(),
                source,
            };
            // SQLite would open a file it may not write read-only, and fail only at the write.
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(|source| CatalogError::WriteAccess {
                    path: self.path.clone(),
                    source,
                })?;
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let db = Connection::open_with_flags(&self.path, flags).map_err(write_err)?;
            db.busy_timeout(BUSY_TIMEOUT).map_err(write_err)?;
            self.writer = Some((db, file));
        }
        Ok(&self.writer.as_ref().expect("opened above").0)
    }

    /// The product with this sku.
    pub fn product(&mut self, sku: &str) -> Result<Product, CatalogError> {
        let path = self.path.clone();
        let db = self.reader()?;
        let product = db
            .query_row(
                "SELECT sku, source, category, brand, price_cents, weight_g, stock \
                 FROM products WHERE sku = ?1",
                params![sku],
                |row| {
                    Ok(Product {
                        sku: row.get(0)?,
                        source: row.get(1)?,
                        category: row.get(2)?,
                        brand: row.get(3)?,
                        price_cents: row.get(4)?,
                        weight_g: row.get(5)?,
                        stock: row.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(|source| CatalogError::Read {
                path: path.clone(),
                source,
            })?;
        let product = product.ok_or_else(|| CatalogError::UnknownSku(sku.to_owned()))?;
        // A catalogue written by another tool may hold what no build makes; answering with it
        // would give wrong totals, not an error.
        let what = if !(0..=PRICE_MAX_CENTS).contains(&product.price_cents) {
            format!("price_cents {}", product.price_cents)
        } else if !(0..=WEIGHT_MAX_G).contains(&product.weight_g) {
            format!("weight_g {}", product.weight_g)
        } else if product.stock < 0 {
            format!("stock {}", product.stock)
        } else {
            return Ok(product);
        };
        Err(CatalogError::BadProduct {
            path,
            sku: product.sku,
            what,
        })
    }

    /// Takes `qty` units of `sku` out of stock. Returns the stock left, or `None` when there
    /// are fewer than `qty` units (nothing is taken then).
    pub fn reserve(&mut self, sku: &str, qty: i64) -> Result<Option<i64>, CatalogError> {
        let path = self.path.clone();
        let db = self.writer()?;
        // One statement, so two workers reserving the last unit cannot both get it.
        let left: Option<i64> = db
            .query_row(
                "UPDATE products SET stock = stock - ?2 WHERE sku = ?1 AND stock >= ?2 \
                 RETURNING stock",
                params![sku, qty],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| write_error(path, source))?;
        if left.is_none() {
            // Distinguish sold out from unknown for the answer.
            self.product(sku)?;
        }
        Ok(left)
    }
}

/// A failed write: for want of access, or because the file is no catalogue (damaged, or another
/// database), which only a rebuild mends.
fn write_error(path: PathBuf, source: rusqlite::Error) -> CatalogError {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseBusy, DatabaseLocked, PermissionDenied, ReadOnly,
    };
    match source.sqlite_error_code() {
        Some(ReadOnly | CannotOpen | PermissionDenied | DatabaseBusy | DatabaseLocked) => {
            CatalogError::Write { path, source }
        }
        _ => CatalogError::Read { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::import::{ProductRecord, build};
    use super::*;

    fn product(sku: &str, stock: i64) -> ProductRecord {
        ProductRecord {
            sku: sku.into(),
            source: "test",
            category: Some("electronics.audio".into()),
            brand: None,
            price_cents: 1_999,
            weight_g: 500,
            stock,
        }
    }

    #[test]
    fn missing_catalogue_says_how_to_build_it_and_appears_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.sqlite");
        let mut catalogue = Catalogue::new(path.clone());
        let err = catalogue.product("1").unwrap_err();
        assert!(err.to_string().contains("build-catalog"), "{err}");

        build(&[product("1", 3)], &path).unwrap();
        assert_eq!(catalogue.product("1").unwrap().price_cents, 1_999);
        assert!(matches!(
            catalogue.product("2"),
            Err(CatalogError::UnknownSku(_))
        ));
    }

    #[test]
    fn reserving_takes_stock_until_none_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.sqlite");
        build(&[product("1", 2)], &path).unwrap();
        let mut catalogue = Catalogue::new(path.clone());
        assert_eq!(catalogue.reserve("1", 1).unwrap(), Some(1));
        assert_eq!(catalogue.reserve("1", 2).unwrap(), None);
        assert_eq!(catalogue.reserve("1", 1).unwrap(), Some(0));
        assert_eq!(catalogue.reserve("1", 1).unwrap(), None);
        assert_eq!(catalogue.product("1").unwrap().stock, 0);
        assert!(catalogue.reserve("nope", 1).is_err());
    }

    #[test]
    fn impossible_values_are_refused_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.sqlite");
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE products (sku TEXT PRIMARY KEY, source TEXT, category TEXT, \
             brand TEXT, price_cents INTEGER, weight_g INTEGER, stock INTEGER);
             INSERT INTO products VALUES ('max', 'x', NULL, NULL, 9223372036854775807, 1, 1);
             INSERT INTO products VALUES ('neg', 'x', NULL, NULL, -500, 1, 1);
             INSERT INTO products VALUES ('heavy', 'x', NULL, NULL, 100, -1, 1);
             INSERT INTO products VALUES ('owed', 'x', NULL, NULL, 100, 1, -2);
             INSERT INTO products VALUES ('fine', 'x', NULL, NULL, 100000000, 1000000, 0);",
        )
        .unwrap();
        drop(db);
        let mut catalogue = Catalogue::new(path);
        for sku in ["max", "neg", "heavy", "owed"] {
            let err = catalogue.product(sku).unwrap_err();
            assert!(
                matches!(err, CatalogError::BadProduct { .. }),
                "{sku}: {err}"
            );
            assert!(err.to_string().contains("rebuild"), "{err}");
        }
        assert_eq!(
            catalogue.product("fine").unwrap().price_cents,
            PRICE_MAX_CENTS
        );
    }

    #[test]
    fn a_rebuilt_catalogue_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.sqlite");
        build(&[product("1", 2)], &path).unwrap();
        let mut catalogue = Catalogue::new(path.clone());
        assert!(catalogue.is_open());
        assert_eq!(catalogue.product("1").unwrap().stock, 2);

        build(&[product("1", 9)], &path).unwrap();
        assert_eq!(catalogue.product("1").unwrap().stock, 9);
    }
}
