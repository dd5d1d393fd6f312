//! The operator's commands over D-Bus: status, pools, set-pool, policy, reload, flush.
//!
//! `status` and `pools` only read, so they fall back to the socket's `stats` when the bus is out
//! of reach; the commands that change precogd need the bus, whose policy decides who may.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use precog::control::{Bus, ControlError, view};
use serde_json::Value;
use zbus::zvariant;

use crate::dbus_client::{Source, proxy, runtime};
use crate::pool_table;

#[derive(clap::Args, Debug)]
pub struct SetPoolArgs {
    /// The pool to change.
    pub pool: String,
    /// Limits as written in the configuration: warm_min=2 workers_max=8 timeout=2s
    /// cpu_quota=150% cpu_weight=100 memory_max=256M memory_reserve=64M pids_max=64.
    #[arg(value_name = "KEY=VALUE", required = true)]
    pub changes: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Policy values: hot_path=5 threshold=0.4 speculation=true|false.
    #[arg(value_name = "KEY=VALUE", required = true)]
    pub changes: Vec<String>,
}

pub fn status(bus: &Bus, socket: &Path, json: bool) -> anyhow::Result<()> {
    let summary: Value = runtime()?.block_on(async {
        match proxy(bus).await {
            Ok(p) => match p.status().await {
                Ok(text) => return serde_json::from_str(&text).context("status is not JSON"),
                Err(e) => eprintln!("precogctl: D-Bus not available ({e}); using the socket"),
            },
            Err(_) if matches!(bus, Bus::None) => {}
            Err(e) => eprintln!(
                "precogctl: D-Bus not available ({}); using the socket",
                crate::causes(&e)
            ),
        }
        let mut source = Source::Socket(crate::client::Client::connect(socket)?);
        Ok::<_, anyhow::Error>(view::status_summary(&source.stats().await?))
    })?;
    if json {
        println!("{summary}");
        return Ok(());
    }
    let s = &summary;
    println!(
        "precogd {}, up {} s",
        s["version"].as_str().unwrap_or("?"),
        s["uptime_s"]
    );
    let hit_ratio = share(&s["hit_ratio"], &s["runs_served"], "no run served yet");
    let precision = share(
        &s["speculation_precision"],
        &s["speculation_judged"],
        "no guess judged yet",
    );
    println!(
        "requests {}  runs {}  hit ratio {hit_ratio}  speculation precision {precision}",
        s["requests"], s["runs_served"],
    );
    let cache = match s["cache_off"].as_str() {
        Some(why) => format!("off ({why})"),
        None if s["cache_entries"].as_u64() == Some(0) => "empty".into(),
        None => format!(
            "{}, {}",
            crate::counted_value(&s["cache_entries"], "entry", "entries"),
            s["cache_bytes"]
                .as_u64()
                .map_or("? bytes".into(), crate::pool_table::bytes)
        ),
    };
    println!(
        "sessions {}  cache {cache}  in flight {}",
        s["active_sessions"], s["inflight_jobs"]
    );
    println!(
        "pools {}  workers {} (busy {}, max {})",
        s["pools"], s["workers"], s["busy"], s["workers_max"]
    );
    Ok(())
}

/// A ratio as a percentage, or what is missing when nothing was counted for it yet (a 0.0%
/// would read as a failure).
fn share(ratio: &Value, counted: &Value, none_yet: &str) -> String {
    if counted.as_u64() == Some(0) {
        return format!("- ({none_yet})");
    }
    format!("{:.1}%", ratio.as_f64().unwrap_or(0.0) * 100.0)
}

pub fn pools(bus: &Bus, socket: &Path, json: bool) -> anyhow::Result<()> {
    let pools: Value = runtime()?.block_on(async {
        match proxy(bus).await {
            Ok(p) => match p.pools().await {
                Ok(text) => return serde_json::from_str(&text).context("pools are not JSON"),
                Err(e) => eprintln!("precogctl: D-Bus not available ({e}); using the socket"),
            },
            Err(_) if matches!(bus, Bus::None) => {}
            Err(e) => eprintln!(
                "precogctl: D-Bus not available ({}); using the socket",
                crate::causes(&e)
            ),
        }
        // The socket's stats carry the live figures, the limits in force and the tuner's
        // state; the configured limits and the timeout are the bus's alone.
        let mut source = Source::Socket(crate::client::Client::connect(socket)?);
        Ok::<_, anyhow::Error>(view::pools_from_stats(&source.stats().await?))
    })?;
    if json {
        println!("{pools}");
        return Ok(());
    }
    let rows: Vec<String> = pools
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, p)| pool_table::row(name, p))
        .collect();
    println!("{}", pool_table::header());
    for r in &rows {
        println!("{r}");
    }
    for line in pool_table::legend(&rows) {
        println!("{line}");
    }
    Ok(())
}

/// Splits `key=value` arguments.
fn pairs(args: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k, v)),
            _ => bail!("`{a}` is not KEY=VALUE"),
        })
        .collect()
}

/// A policy value as the variant type the daemon expects: true/false, whole numbers, decimals,
/// or else the text itself.
fn policy_value(text: &str) -> zvariant::Value<'_> {
    if let Ok(b) = text.parse::<bool>() {
        b.into()
    } else if let Ok(n) = text.parse::<u64>() {
        n.into()
    } else if let Ok(x) = text.parse::<f64>() {
        x.into()
    } else {
        text.into()
    }
}

pub fn set_pool(args: &SetPoolArgs, bus: &Bus, json: bool) -> anyhow::Result<()> {
    let changes: HashMap<&str, &str> = pairs(&args.changes)?.into_iter().collect();
    let pool: Value = runtime()?.block_on(async {
        let text = proxy(bus)
            .await?
            .set_pool_limits(&args.pool, changes)
            .await
            .context("pool limits not changed")?;
        serde_json::from_str(&text).context("the pool came back as text that is not JSON")
    })?;
    if json {
        println!("{pool}");
    } else {
        println!("{}", pool_table::row(&args.pool, &pool));
    }
    Ok(())
}

pub fn policy(args: &PolicyArgs, bus: &Bus) -> anyhow::Result<()> {
    let changes: HashMap<&str, zvariant::Value<'_>> = pairs(&args.changes)?
        .into_iter()
        .map(|(k, v)| (k, policy_value(v)))
        .collect();
    let policy = runtime()?.block_on(async {
        proxy(bus)
            .await?
            .set_policy(changes)
            .await
            .context("policy not changed")
    })?;
    println!("{policy}");
    Ok(())
}

/// Reloads over the bus. Without one, SIGHUP does the same, so the error says how to send it,
/// to the daemon that serves `socket` when it answers there.
pub fn reload(bus: &Bus, socket: &Path) -> anyhow::Result<()> {
    if *bus == Bus::None {
        let pid = daemon_pid(socket).map_or_else(|| "<pid of precogd>".into(), |p| p.to_string());
        bail!(
            "{}; or send precogd the signal that reloads it: kill -HUP {pid}",
            ControlError::NoBus
        );
    }
    runtime()?.block_on(async { proxy(bus).await?.reload().await.context("reload failed") })?;
    println!("configuration reloaded");
    Ok(())
}

/// The process that serves `socket`, as the kernel tells its peers.
fn daemon_pid(socket: &Path) -> Option<i32> {
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    cred.ok().map(|c| c.pid()).filter(|pid| *pid > 0)
}

pub fn flush(bus: &Bus) -> anyhow::Result<()> {
    let flushed = runtime()?.block_on(async {
        proxy(bus)
            .await?
            .flush_cache()
            .await
            .context("cache not flushed")
    })?;
    println!(
        "flushed {}",
        crate::counted(flushed, "cached result", "cached results")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_values_get_their_types() {
        assert_eq!(policy_value("true"), zvariant::Value::from(true));
        assert_eq!(policy_value("5"), zvariant::Value::from(5u64));
        assert_eq!(policy_value("0.4"), zvariant::Value::from(0.4));
        assert_eq!(policy_value("high"), zvariant::Value::from("high"));
    }

    #[test]
    fn pairs_need_a_key_and_an_equals_sign() {
        let args = ["a=1".to_string(), "b=".to_string()];
        let ok = pairs(&args).unwrap();
        assert_eq!(ok, [("a", "1"), ("b", "")]);
        assert!(pairs(&["=1".into()]).is_err());
        assert!(pairs(&["a".into()]).is_err());
    }
}
