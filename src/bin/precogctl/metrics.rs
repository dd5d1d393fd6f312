//! `precogctl stats --prometheus`: the daemon's counters in the Prometheus text format, for a
//! node exporter's textfile collector or a quick look at what a scraper would see.

use serde_json::Value;

pub fn print(stats: &Value) {
    print!("{}", precog::metrics::render(stats));
}
