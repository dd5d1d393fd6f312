//! precogd's D-Bus interface on a private session bus, against the real daemon: introspection,
//! every method and property (checked against the socket's `stats`), InvalidArgs for bad
//! arguments, signals, a real client (busctl), precogctl over the bus, and a daemon that keeps
//! serving its socket when no bus is reachable. Without dbus-daemon, busctl or python3 each test
//! prints `SKIPPED: <reason>`.

#[path = "dbus_harness.rs"]
mod harness;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use harness::{Daemon, PrivateBus, busctl, missing_tool, wait_for_name, write_config};
use precog::control::{Bus, Precog1Proxy, connect};
use serde_json::{Value, json};
use zbus::export::futures_core::Stream;
use zbus::zvariant;

const OBJECT: &str = "/org/precog/Precog1";
const NAME: &str = "org.precog.Precog1";

fn setup() -> Option<(PrivateBus, Daemon)> {
    if let Some(why) = missing_tool() {
        println!("SKIPPED: {why}");
        return None;
    }
    let bus = PrivateBus::start(None);
    let daemon = Daemon::start(&bus.address);
    wait_for_name(&bus.address);
    Some((bus, daemon))
}

async fn proxy(bus: &PrivateBus) -> Precog1Proxy<'static> {
    let conn = connect(&Bus::Address(bus.address.clone()))
        .await
        .expect("test connects to the private bus");
    Precog1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("proxy")
}

fn run_request(postal_code: &str) -> Value {
    json!({"op": "run", "session": "t", "process": "calc_shipping",
           "inputs": {"country": "DE", "postal_code": postal_code, "cart_weight_g": 900}})
}

/// The next item of a signal stream (what `StreamExt::next` does, without another dependency).
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

fn method_error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

#[test]
fn introspection_lists_the_interface() {
    let Some((bus, _daemon)) = setup() else {
        return;
    };
    let (ok, xml, err) = busctl(
        &bus.address,
        None,
        &["introspect", "--xml-interface", NAME, OBJECT],
    );
    assert!(ok, "{err}");
    assert!(
        xml.contains(r#"<interface name="org.precog.Precog1">"#),
        "{xml}"
    );
    for member in [
        "Status",
        "Stats",
        "Pools",
        "SetPoolLimits",
        "SetPolicy",
        "Reload",
        "FlushCache",
        "PoolResized",
        "QuotaChanged",
        "WorkerFailed",
        "HitRatio",
        "SpeculationPrecision",
        "ActiveSessions",
    ] {
        assert!(
            xml.contains(&format!("name=\"{member}\"")),
            "{member} missing: {xml}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_properties_match_the_socket_stats() {
    let Some((bus, daemon)) = setup() else {
        return;
    };
    let p = proxy(&bus).await;

    // Two identical runs at once: the second joins the first, so one of two is a hit.
    let replies = daemon.call_many(&[run_request("10115"), run_request("10115")]);
    let served: Vec<&str> = replies
        .iter()
        .map(|r| r["served"].as_str().unwrap())
        .collect();
    assert_eq!(served, ["warm", "inflight"], "{replies:?}");

    let socket = daemon.call(json!({"op": "stats"}));
    let stats: Value = serde_json::from_str(&p.stats().await.unwrap()).unwrap();
    let mut keys: Vec<&String> = stats.as_object().unwrap().keys().collect();
    let mut socket_keys: Vec<&String> = socket
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "ok" && *k != "id")
        .collect();
    keys.sort();
    socket_keys.sort();
    assert_eq!(keys, socket_keys);
    assert_eq!(stats["served"], socket["served"]);
    assert_eq!(stats["pools"]["shop"]["workers_max"], 2);
    assert_eq!(stats["policy"], socket["policy"]);

    assert_eq!(
        p.version().await.unwrap(),
        socket["version"].as_str().unwrap()
    );
    let uptime = p.uptime().await.unwrap();
    assert!(uptime.abs_diff(socket["uptime_s"].as_u64().unwrap()) <= 2);
    assert_eq!(p.hit_ratio().await.unwrap(), 0.5);
    // The runs' session and the result they left in the cache, as the socket reports them.
    let socket = daemon.call(json!({"op": "stats"}));
    assert_eq!(p.active_sessions().await.unwrap(), 1);
    assert_eq!(
        p.active_sessions().await.unwrap(),
        socket["sessions"]["active"].as_u64().unwrap()
    );
    assert_eq!(
        p.cache_bytes().await.unwrap(),
        socket["cache"]["bytes"].as_u64().unwrap()
    );
    assert_eq!(p.cache_entries().await.unwrap(), 1);
    assert_eq!(
        p.speculation_precision().await.unwrap(),
        socket["speculation"]["precision"].as_f64().unwrap()
    );

    let status: Value = serde_json::from_str(&p.status().await.unwrap()).unwrap();
    assert_eq!(status["runs_served"], 2);
    assert_eq!(status["hit_ratio"], 0.5);
    assert_eq!(status["pools"], 1);

    let pools: Value = serde_json::from_str(&p.pools().await.unwrap()).unwrap();
    assert_eq!(pools["shop"]["limits"]["workers_max"], 2);
    assert_eq!(pools["shop"]["live"]["jobs_ok"], 1);

    // A limit change is announced and shows in Pools and in the socket's stats.
    let mut quota = p.receive_quota_changed().await.unwrap();
    let changed = p
        .set_pool_limits("shop", HashMap::from([("workers_max", "3")]))
        .await
        .unwrap();
    let changed: Value = serde_json::from_str(&changed).unwrap();
    assert_eq!(changed["limits"]["workers_max"], 3);
    let signal = tokio::time::timeout(Duration::from_secs(5), next(&mut quota))
        .await
        .expect("QuotaChanged arrives")
        .unwrap();
    let args = signal.args().unwrap();
    assert_eq!(
        (
            args.pool.as_str(),
            args.what.as_str(),
            args.old.as_str(),
            args.new.as_str()
        ),
        ("shop", "workers_max", "2", "3")
    );
    let socket = daemon.call(json!({"op": "stats"}));
    assert_eq!(socket["pools"]["shop"]["workers_max"], 3);
    // A worker's start-up allowance can be raised while a slow worker is looked into.
    let changed = p
        .set_pool_limits("shop", HashMap::from([("start_timeout", "30s")]))
        .await
        .unwrap();
    let changed: Value = serde_json::from_str(&changed).unwrap();
    assert_eq!(changed["limits"]["start_timeout_ms"], 30_000);

    let policy = p
        .set_policy(HashMap::from([("threshold", zvariant::Value::from(0.25))]))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&policy).unwrap()["threshold"],
        0.25
    );
    let socket = daemon.call(json!({"op": "stats"}));
    assert_eq!(socket["policy"]["threshold"], 0.25);

    let cached = daemon.call(json!({"op": "stats"}))["cache"]["entries"]
        .as_u64()
        .unwrap();
    assert_eq!(p.flush_cache().await.unwrap(), cached);
    let socket = daemon.call(json!({"op": "stats"}));
    assert_eq!(socket["cache"]["entries"], 0);

    // Reload reads the file again, as SIGHUP does: the file's new limit replaces the operator's.
    write_config(&daemon.config, daemon.dir.path(), 5);
    p.reload().await.unwrap();
    let pools: Value = serde_json::from_str(&p.pools().await.unwrap()).unwrap();
    assert_eq!(pools["shop"]["limits"]["workers_max"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_invalid_args_with_the_engine_message() {
    let Some((bus, _daemon)) = setup() else {
        return;
    };
    let p = proxy(&bus).await;

    let e = p
        .set_pool_limits("shop", HashMap::from([("colour", "blue")]))
        .await
        .unwrap_err();
    assert_eq!(
        method_error_name(&e),
        "org.freedesktop.DBus.Error.InvalidArgs"
    );
    assert!(e.to_string().contains("`colour` cannot be changed"), "{e}");

    let e = p
        .set_pool_limits("nosuch", HashMap::from([("workers_max", "3")]))
        .await
        .unwrap_err();
    assert_eq!(
        method_error_name(&e),
        "org.freedesktop.DBus.Error.InvalidArgs"
    );
    assert!(e.to_string().contains("no pool named `nosuch`"), "{e}");

    let e = p
        .set_policy(HashMap::from([("threshold", zvariant::Value::from(1.5))]))
        .await
        .unwrap_err();
    assert_eq!(
        method_error_name(&e),
        "org.freedesktop.DBus.Error.InvalidArgs"
    );
    assert!(
        e.to_string()
            .contains("threshold must be a number from 0 to 1"),
        "{e}"
    );

    let e = p
        .set_policy(HashMap::from([(
            "hot_path",
            zvariant::Value::from(vec![1u8]),
        )]))
        .await
        .unwrap_err();
    assert_eq!(
        method_error_name(&e),
        "org.freedesktop.DBus.Error.InvalidArgs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pool_keeps_the_operators_policy_until_a_reload() {
    let Some((bus, daemon)) = setup() else {
        return;
    };
    let p = proxy(&bus).await;
    let policy = HashMap::from([
        ("threshold", zvariant::Value::from(0.9)),
        ("hot_path", zvariant::Value::from(3u64)),
    ]);
    p.set_policy(policy).await.unwrap();
    p.set_pool_limits("shop", HashMap::from([("warm_min", "1")]))
        .await
        .unwrap();
    let policy = &daemon.call(json!({"op": "stats"}))["policy"];
    assert_eq!(policy["threshold"], 0.9, "{policy}");
    assert_eq!(policy["hot_path"], 3, "{policy}");

    // The pinned threshold still decides: a process at even odds is not guessed, a likely one is.
    let issued = |p: f64| {
        let r = daemon.call_many(&[
            json!({"op": "event", "session": "g", "type": "page_view",
                   "attrs": {"country": "DE", "postal_code": "10115"}}),
            json!({"op": "hint", "session": "g",
                   "predictions": [{"process": "validate_postal_code", "p": p}]}),
            json!({"op": "stats"}),
        ]);
        assert_eq!(r[1]["ok"], json!(true), "{}", r[1]);
        r[2]["speculation"]["issued"].as_u64().unwrap()
    };
    assert_eq!(issued(0.5), 0, "guessed under the pinned threshold");
    assert_eq!(issued(0.95), 1, "not guessed above the pinned threshold");

    // A reload from the file ends the policy.
    p.reload().await.unwrap();
    let policy = &daemon.call(json!({"op": "stats"}))["policy"];
    assert_eq!(policy["hot_path"], 5, "{policy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pool_errors_say_what_is_wrong_without_echoing_what_was_sent() {
    let Some((bus, _daemon)) = setup() else {
        return;
    };
    let p = proxy(&bus).await;
    let e = p
        .set_pool_limits(
            "shop",
            HashMap::from([("workers_max", "18446744073709551615")]),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`workers_max` = 18446744073709551615 is out of range"),
        "{e}"
    );
    let key = "x".repeat(120_000);
    let e = p
        .set_pool_limits("shop", HashMap::from([(key.as_str(), "1")]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot be changed"), "{e}");
    assert!(e.to_string().len() < 1000, "{} bytes", e.to_string().len());
    let e = p
        .set_pool_limits(&key, HashMap::from([("warm_min", "1")]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no pool named"), "{e}");
    assert!(e.to_string().len() < 1000, "{} bytes", e.to_string().len());
    for (k, v) in [("pids_max", "4194305"), ("cpu_quota", "0.5%")] {
        let e = p
            .set_pool_limits("shop", HashMap::from([(k, v)]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&format!("pool.shop.{k}:")), "{e}");
    }
    let e = p
        .set_pool_limits("shop", HashMap::from([("warm_min", "some")]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("expected a whole number, 0 or more"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_property_is_announced() {
    let Some((bus, daemon)) = setup() else {
        return;
    };
    let conn = connect(&Bus::Address(bus.address.clone())).await.unwrap();
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination(NAME)
        .unwrap()
        .path(OBJECT)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut changes = props.receive_properties_changed().await.unwrap();

    // Let the daemon's announcer take its first look before anything moves.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.call_many(&[run_request("80331"), run_request("80331")]);
    // Other properties (sessions, cache) move too and may be announced first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ratio = loop {
        let signal = tokio::time::timeout_at(deadline, next(&mut changes))
            .await
            .expect("HitRatio is announced within the poll period")
            .unwrap();
        let args = signal.args().unwrap();
        assert_eq!(args.interface_name.as_str(), NAME);
        assert!(!args.changed_properties.contains_key("Uptime"));
        if let Some(ratio) = args.changed_properties.get("HitRatio") {
            break f64::try_from(ratio).unwrap();
        }
    };
    assert_eq!(ratio, 0.5);
}

#[test]
fn busctl_calls_status() {
    let Some((bus, _daemon)) = setup() else {
        return;
    };
    let (ok, out, err) = busctl(
        &bus.address,
        None,
        &["--json=short", "call", NAME, OBJECT, NAME, "Status"],
    );
    assert!(ok, "{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["type"], "s");
    let status: Value = serde_json::from_str(reply["data"][0].as_str().unwrap()).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["pools"], 1);
}

fn precogctl(daemon: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_precogctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .expect("precogctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn precogctl_speaks_the_bus_and_falls_back_to_the_socket() {
    let Some((bus, daemon)) = setup() else {
        return;
    };
    let addr = bus.address.as_str();

    // --bus goes before the subcommand or after it.
    for args in [
        ["--json", "status", "--bus", addr],
        ["--bus", addr, "--json", "status"],
    ] {
        let (ok, out, err) = precogctl(&daemon, &args);
        assert!(ok, "{args:?}: {err}");
        assert!(err.is_empty(), "no fallback expected: {err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["pools"], 1);
    }

    let (ok, out, err) = precogctl(&daemon, &["set-pool", "shop", "warm_min=2", "--bus", addr]);
    assert!(ok, "{err}");
    assert!(out.starts_with("shop "), "{out}");
    let (ok, _, err) = precogctl(&daemon, &["policy", "hot_path=3", "--bus", addr]);
    assert!(ok, "{err}");
    assert_eq!(daemon.call(json!({"op": "stats"}))["policy"]["hot_path"], 3);
    let (ok, _, err) = precogctl(&daemon, &["policy", "hot_path=0", "--bus", addr]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgs") && err.contains("hot_path"),
        "{err}"
    );
    let (ok, out, _) = precogctl(&daemon, &["flush", "--bus", addr]);
    assert!(ok && out.contains("flushed 0"), "{out}");
    let (ok, _, err) = precogctl(&daemon, &["reload", "--bus", addr]);
    assert!(ok, "{err}");

    let (ok, out, err) = precogctl(&daemon, &["top", "--count", "2", "--bus", addr]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.contains("workers=")), "{out}");

    // No bus at that address: the read-only commands use the socket and say so.
    let gone = "unix:path=/nonexistent/precog-test-bus";
    let (ok, out, err) = precogctl(&daemon, &["--json", "status", "--bus", gone]);
    assert!(ok, "{err}");
    assert!(err.contains("using the socket"), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["pools"], 1);
    let (ok, out, _) = precogctl(&daemon, &["top", "--count", "2", "--bus", gone]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, _, err) = precogctl(&daemon, &["flush", "--bus", gone]);
    assert!(!ok, "a change needs the bus: {err}");
}

#[test]
fn precogd_without_a_reachable_bus_still_serves_its_socket() {
    if let Some(why) = missing_tool() {
        println!("SKIPPED: {why}");
        return;
    }
    let daemon = Daemon::start("unix:path=/nonexistent/precog-test-bus");
    let reply = daemon.call(json!({"op": "ping"}));
    assert_eq!(reply["ok"], true);
    let log = daemon.log_text();
    assert_eq!(
        log.matches("running without the D-Bus interface").count(),
        1,
        "{log}"
    );
}

#[test]
fn precogctl_pools_over_the_bus_shows_the_limits_in_force_beside_the_configured_ones() {
    let Some((bus, daemon)) = setup() else {
        return;
    };
    // The pool's cgroup, as its stats name it; the built-in shop pool's memory_max is 256M.
    let stats = daemon.call(json!({"op": "stats"}));
    let paths = &stats["pools"]["shop"]["cgroup"]["paths"];
    let memory_file = paths.as_array().into_iter().flatten().find_map(|p| {
        let dir = std::path::Path::new(p.as_str()?);
        ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .map(|f| dir.join(f))
            .find(|f| f.is_file())
    });
    let Some(memory_file) = memory_file else {
        println!("SKIPPED: the pool has no memory cgroup here (needs root and cgroups)");
        return;
    };
    // What the tuner does when jobs use little: a lower limit in the cgroup than configured.
    std::fs::write(&memory_file, (64u64 << 20).to_string()).expect("lower the limit");

    let (ok, out, err) = precogctl(&daemon, &["pools", "--bus", &bus.address]);
    assert!(ok, "{err}");
    assert!(err.is_empty(), "no fallback expected: {err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("shop "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("64M (256M)"), "{out}");
    assert!(row.contains(" 150% "), "{out}");
    assert!(out.contains("the configured value"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pool_limits_answers_once_the_cgroup_holds_them_or_with_the_refusal() {
    let Some((bus, daemon)) = setup() else {
        return;
    };
    let stats = daemon.call(json!({"op": "stats"}));
    let paths = &stats["pools"]["shop"]["cgroup"]["paths"];
    let quota = paths.as_array().into_iter().flatten().find_map(|p| {
        let file = std::path::Path::new(p.as_str()?).join("cpu.cfs_quota_us");
        file.is_file().then_some(file)
    });
    let Some(quota) = quota else {
        println!("SKIPPED: the pool has no cgroup-v1 cpu controller here (needs root and cgroups)");
        return;
    };
    let read = || std::fs::read_to_string(&quota).unwrap().trim().to_string();
    // The kernel refuses a quota above the parent's: cap the parent (precogd's own cgroup
    // parent, at the pool's 150%).
    let parent = quota
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("cpu.cfs_quota_us");
    std::fs::write(&parent, "150000").unwrap();
    let before = read();

    let p = proxy(&bus).await;
    let e = p
        .set_pool_limits("shop", HashMap::from([("cpu_quota", "400%")]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("its cgroup refused the new limits"),
        "{e}"
    );
    assert_eq!(read(), before);

    // A quota the kernel takes is in the cgroup by the time the answer comes.
    let changed = p
        .set_pool_limits("shop", HashMap::from([("cpu_quota", "50%")]))
        .await
        .unwrap();
    assert_eq!(read(), "50000", "{changed}");
    let changed: Value = serde_json::from_str(&changed).unwrap();
    assert_eq!(changed["limits"]["cpu_quota"], "50%");
}
