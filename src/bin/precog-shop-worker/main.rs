//! `precog-shop-worker`: the web shop's micro-processes, as a precog worker.
//!
//! Started by precogd as a pool command, it reads one JSON job per line on stdin and answers on
//! stdout with checkpoint lines and one result or error line per job (see
//! `docs/worker-protocol.md`). Bad input never ends it: every bad line gets an error line and the
//! worker reads on. It exits 0 at the end of its input.
//!
//! `precog-shop-worker build-catalog --from FILE` builds the SQLite catalogue that
//! `check_inventory`, `price_quote`, `cart_total` and `reserve_stock` read.

mod catalog;
mod coupon;
mod inputs;
mod job;
mod postal;
mod processes;
mod shipping;

use std::io::{BufRead, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::Value;

use catalog::Catalogue;
use processes::Context;

/// Where the packaged daemon's workers find the catalogue unless told otherwise.
const DEFAULT_CATALOG: &str = "/var/lib/precog/shop-catalog.sqlite";

/// Longest job line read; the daemon's own limits are far below this.
const JOB_LINE_MAX: u64 = 16 * 1024 * 1024;

#[derive(Parser)]
#[command(
    version,
    about = "The web shop's micro-processes, run as a precog worker"
)]
struct Cli {
    /// The shop catalogue (SQLite) read by check_inventory, price_quote, cart_total and
    /// reserve_stock.
    #[arg(long, global = true, env = "PRECOG_SHOP_CATALOG", default_value = DEFAULT_CATALOG)]
    catalog: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Build the shop catalogue from shop data files (REES46 .csv, OTTO .jsonl, JD .txt).
    BuildCatalog {
        /// A data file; repeat to merge several (the first file wins for a product id).
        #[arg(long = "from", required = true)]
        from: Vec<PathBuf>,
        /// Where to write the catalogue (default: the --catalog path).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::BuildCatalog { from, out }) => {
            build_catalog(&from, out.as_deref().unwrap_or(&cli.catalog))
        }
        None => serve(Catalogue::new(cli.catalog)),
    }
}

fn build_catalog(sources: &[PathBuf], out: &std::path::Path) -> anyhow::Result<()> {
    catalog::import::check_out(sources, out)?;
    let mut products = Vec::new();
    for source in sources {
        let found = catalog::import::read_source(source)?;
        println!("{}: {}", source.display(), products_count(found.len()));
        products.extend(found);
    }
    let stored = catalog::import::build(&products, out)?;
    println!("catalogue {}: {}", out.display(), products_count(stored));
    Ok(())
}

/// `1 product`, `2 products`.
fn products_count(n: usize) -> String {
    format!("{n} {}", if n == 1 { "product" } else { "products" })
}

/// Answers jobs from stdin until it ends.
fn serve(mut catalogue: Catalogue) -> anyhow::Result<()> {
    if let Err(e) = catalogue.check() {
        eprintln!(
            "precog-shop-worker: {e}. Until then check_inventory, price_quote, cart_total and \
             reserve_stock answer errors"
        );
    }

    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut stdin)
            .take(JOB_LINE_MAX + 1)
            .read_until(b'\n', &mut line)
            .context("cannot read jobs from stdin")?;
        if read == 0 {
            return Ok(());
        }
        if line.len() as u64 > JOB_LINE_MAX && line.last() != Some(&b'\n') {
            let id = job::salvage_job_id(&line);
            skip_rest_of_line(&mut stdin)?;
            let message = format!("job line longer than {JOB_LINE_MAX} bytes; not read");
            send(&mut stdout, &job::error_line(&id, &message, job::BAD_JOB))?;
            continue;
        }

        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        for reply in answer(text, &mut catalogue) {
            send(&mut stdout, &reply)?;
        }
    }
}

/// The reply lines for one job line: its checkpoints, then its result or error.
fn answer(text: &[u8], catalogue: &mut Catalogue) -> Vec<String> {
    let job = match job::decode(text) {
        Ok(job) => job,
        Err(rejected) => {
            let message = rejected.error.to_string();
            return vec![job::error_line(&rejected.id, &message, job::BAD_JOB)];
        }
    };

    let mut replies = Vec::new();
    let mut context = Context {
        catalogue,
        today: today(),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        processes::run(&job, &mut context, &mut |state: Value| {
            replies.push(job::checkpoint_line(&job.id, &state));
        })
    }));
    replies.push(match outcome {
        Ok(Ok(result)) => job::result_line(&job.id, &result),
        Ok(Err(error)) => job::error_line(&job.id, &error_text(&error), error.code()),
        // A bug in one process must not take the worker and its warm state down; the panic
        // message has already gone to stderr, which the daemon logs.
        Err(_) => job::error_line(
            &job.id,
            "internal error in the shop worker; see its log",
            "internal",
        ),
    });
    replies
}

/// The error and its causes, as one line for the daemon; a cause the message already quotes is
/// not said twice.
fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

fn send(stdout: &mut impl Write, line: &str) -> anyhow::Result<()> {
    stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write replies to stdout (has the daemon closed the pipe?)")
}

fn skip_rest_of_line(stdin: &mut impl BufRead) -> anyhow::Result<()> {
    loop {
        let buffer = stdin.fill_buf().context("cannot read jobs from stdin")?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => {
                stdin.consume(end + 1);
                return Ok(());
            }
            None => {
                let all = buffer.len();
                stdin.consume(all);
            }
        }
    }
}

/// Today's date in UTC, for coupon validity.
fn today() -> coupon::Date {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    coupon::Date::from_unix_days((seconds / 86_400) as i64)
}
