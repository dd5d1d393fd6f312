//! Operator actions on the engine: pool limits, prediction policy, cache flush, status.
//!
//! The D-Bus interface and `precogctl` reach these through [`EngineHandle`]; they hold no state
//! of their own. Changes are announced on the engine's event channel so that watchers (D-Bus
//! signals, `precogctl top`) see them.

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::tuning::ControlReply;
use super::{Command, Engine, EngineHandle, json_map};
use crate::config::MAX_HOT_PATH;

/// Something that happened that an operator may want to see as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    PoolResized {
        pool: String,
        workers: u64,
    },
    QuotaChanged {
        pool: String,
        what: String,
        old: String,
        new: String,
        why: String,
    },
    WorkerFailed {
        pool: String,
        reason: String,
    },
    PolicyChanged,
}

/// An operator action.
#[derive(Debug, Clone)]
pub enum ControlOp {
    Pools,
    /// Keys: `warm_min`, `workers_max`, `timeout`, `start_timeout`, `cpu_quota`, `cpu_weight`,
    /// `memory_max`, `memory_reserve`, `pids_max`, with values as written in the configuration.
    SetPool {
        pool: String,
        changes: Map<String, Value>,
    },
    /// Keys: `hot_path`, `threshold`, `speculation`.
    SetPolicy {
        changes: Map<String, Value>,
    },
    FlushCache,
}

impl EngineHandle {
    /// Runs an operator action; `Err` carries a message saying what was wrong with it.
    pub async fn control(&self, op: ControlOp) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Control { op, reply: tx })
            .await
            .is_err()
        {
            return Err("precogd is stopping".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("precogd is stopping".into()))
    }

    /// Subscribes to engine events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }
}

impl Engine {
    /// Runs an operator action and answers it: a change of a pool's limits once its cgroup took
    /// them, or the kernel refused them.
    pub(super) fn control(&mut self, op: ControlOp, reply: ControlReply) {
        let answer = match op {
            ControlOp::Pools => Ok(self.pools_view()),
            ControlOp::SetPool { pool, changes } => match self.set_pool(&pool, changes) {
                Ok(()) => return self.reply_once_written(&pool, reply),
                Err(e) => Err(e),
            },
            ControlOp::SetPolicy { changes } => self.set_policy(changes),
            ControlOp::FlushCache => Ok(json!({"flushed": self.flush_cache()})),
        };
        let _ = reply.send(answer);
    }

    /// Every pool with its configured limits and its live figures.
    pub(super) fn pools_view(&self) -> Value {
        let mut out = Map::new();
        for p in &self.config.pools {
            let live = self
                .pools
                .get(&p.name)
                .map(|pool| serde_json::to_value(pool.stats()).unwrap_or_default())
                .unwrap_or_default();
            out.insert(
                p.name.clone(),
                json!({
                    "command": p.command,
                    "limits": {
                        "cpus": p.cpus.as_ref().map(|c| c.to_string()),
                        "cpu_quota": p.cpu_quota.map(|q| q.to_string()),
                        "cpu_weight": p.cpu_weight,
                        "memory_max": p.memory_max.map(|m| m.0),
                        "memory_reserve": p.memory_reserve.map(|m| m.0),
                        "pids_max": p.pids_max,
                        "warm_min": p.warm_min,
                        "workers_max": p.workers_max,
                        "timeout_ms": p.timeout.0.as_millis() as u64,
                        "start_timeout_ms": p.start_timeout.0.as_millis() as u64,
                    },
                    "live": live,
                }),
            );
        }
        Value::Object(out)
    }

    fn set_pool(&mut self, name: &str, changes: Map<String, Value>) -> Result<(), String> {
        if changes.is_empty() {
            return Err("give at least one key=value to change".into());
        }
        let mut cfg = self.config.clone();
        let Some(pool) = cfg.pools.iter_mut().find(|p| p.name == name) else {
            return Err(format!("no pool named `{}`", shown(name)));
        };
        // Re-use the configuration parser so values are written and checked exactly as in the
        // file: build a one-pool TOML layer and merge it over the running configuration.
        let table = pool_changes(&changes)?;
        let mut merged = toml::Table::try_from(&*pool).map_err(|e| e.to_string())?;
        merged.extend(table);
        let updated: crate::config::PoolConfig = merged
            .try_into()
            .map_err(|e: toml::de::Error| crate::config::in_plain_words(e.message()))?;
        *pool = updated;
        let check = crate::config::load_sources(&[crate::config::Source {
            name: "<set-pool>".into(),
            text: toml::to_string(&cfg).map_err(|e| e.to_string())?,
        }]);
        let cfg = check.map_err(|e| e.to_string())?;
        let old = self.config.pool(name).cloned();
        // The running configuration carries the policy's hot path and speculation; a pinned
        // threshold is the predictor's, which a reload unpins. The policy holds until the next
        // reload from the files, which this is not.
        let pinned = self.predictor.pinned_threshold();
        self.reload(cfg)?;
        if pinned.is_some() {
            self.apply_policy(pinned);
        }
        if let (Some(old), Some(new)) = (old, self.config.pool(name).cloned()) {
            for (what, o, n) in [
                (
                    "workers_max",
                    old.workers_max.to_string(),
                    new.workers_max.to_string(),
                ),
                (
                    "warm_min",
                    old.warm_min.to_string(),
                    new.warm_min.to_string(),
                ),
                (
                    "cpu_quota",
                    fmt_opt(&old.cpu_quota),
                    fmt_opt(&new.cpu_quota),
                ),
                (
                    "memory_max",
                    fmt_opt(&old.memory_max),
                    fmt_opt(&new.memory_max),
                ),
            ] {
                if o != n {
                    tracing::info!(pool = name, what, old = %o, new = %n,
                        "pool limit changed by operator");
                    let _ = self.events.send(super::EngineEvent::QuotaChanged {
                        pool: name.to_string(),
                        what: what.to_string(),
                        old: o,
                        new: n,
                        why: "operator".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn set_policy(&mut self, changes: Map<String, Value>) -> Result<Value, String> {
        if changes.is_empty() {
            return Err("give at least one of hot_path, threshold, speculation".into());
        }
        let mut predict = self.config.predict.clone();
        let mut threshold = None;
        for (k, v) in &changes {
            match k.as_str() {
                "hot_path" => {
                    predict.hot_path = v
                        .as_u64()
                        .filter(|&n| (1..=MAX_HOT_PATH as u64).contains(&n))
                        .ok_or_else(|| {
                            format!("hot_path must be a whole number from 1 to {MAX_HOT_PATH}")
                        })? as usize;
                }
                "threshold" => {
                    threshold = Some(
                        v.as_f64()
                            .filter(|t| (0.0..=1.0).contains(t))
                            .ok_or("threshold must be a number from 0 to 1")?,
                    );
                }
                "speculation" => {
                    predict.speculation = v.as_bool().ok_or("speculation must be true or false")?;
                }
                other => {
                    return Err(format!(
                        "`{}` is not a policy key; use hot_path, threshold or speculation",
                        shown(other)
                    ));
                }
            }
        }
        self.config.predict = predict;
        self.apply_policy(threshold);
        let changes = Value::Object(changes);
        tracing::info!(%changes, "prediction policy changed by operator");
        let _ = self.events.send(super::EngineEvent::PolicyChanged);
        Ok(self.policy_view())
    }
}

/// The keys `set-pool` may change.
const CHANGEABLE: [&str; 9] = [
    "warm_min",
    "workers_max",
    "timeout",
    "start_timeout",
    "cpu_quota",
    "cpu_weight",
    "memory_max",
    "memory_reserve",
    "pids_max",
];

/// The longest value `set-pool` takes: every valid one is far shorter, and a refused one is
/// echoed in the error.
const VALUE_MAX: usize = 64;

/// `set-pool`'s changes as a one-pool TOML table, for the configuration parser to check as if
/// written in the file. What the parser cannot be given is refused here, with a message that
/// names the key but never echoes more than [`VALUE_MAX`] characters of what the client sent.
fn pool_changes(changes: &Map<String, Value>) -> Result<toml::Table, String> {
    let mut table = toml::Table::new();
    for (k, v) in changes {
        if !CHANGEABLE.contains(&k.as_str()) {
            return Err(format!(
                "`{}` cannot be changed; changeable: {}",
                shown(k),
                CHANGEABLE.join(", ")
            ));
        }
        let tv = match v {
            Value::String(s) if s.len() > VALUE_MAX => {
                return Err(format!(
                    "the value of `{k}` is {} bytes long; no valid one is over {VALUE_MAX}",
                    s.len()
                ));
            }
            Value::String(s) => toml::Value::String(s.clone()),
            // The file's integers are signed 64-bit: a larger number is no value of any key.
            Value::Number(n) if n.is_u64() => match n.as_u64().map(i64::try_from) {
                Some(Ok(i)) => toml::Value::Integer(i),
                _ => return Err(format!("`{k}` = {n} is out of range; at most {}", i64::MAX)),
            },
            _ => return Err(format!("`{k}` needs a string or a whole number")),
        };
        table.insert(k.clone(), tv);
    }
    Ok(table)
}

/// A name a client sent, cut for an error message.
fn shown(name: &str) -> String {
    match name.char_indices().nth(VALUE_MAX) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_string(),
    }
}

fn fmt_opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "unset".into())
}

pub(super) fn policy_json(hot_path: usize, threshold: f64, speculation: bool) -> Value {
    Value::Object(json_map(json!({
        "hot_path": hot_path,
        "threshold": threshold,
        "speculation": speculation,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(v: Value) -> Map<String, Value> {
        json_map(v)
    }

    #[test]
    fn pool_changes_become_toml_values_as_in_the_file() {
        let t = pool_changes(&changes(json!({"workers_max": 3, "memory_max": "256M"}))).unwrap();
        assert_eq!(t["workers_max"], toml::Value::Integer(3));
        assert_eq!(t["memory_max"], toml::Value::String("256M".into()));
    }

    #[test]
    fn a_number_past_the_files_integers_is_out_of_range() {
        let e = pool_changes(&changes(json!({"workers_max": u64::MAX}))).unwrap_err();
        assert_eq!(
            e,
            "`workers_max` = 18446744073709551615 is out of range; at most 9223372036854775807"
        );
        let t = pool_changes(&changes(json!({"pids_max": i64::MAX as u64}))).unwrap();
        assert_eq!(t["pids_max"], toml::Value::Integer(i64::MAX));
    }

    #[test]
    fn errors_echo_at_most_a_short_part_of_what_was_sent() {
        let key = "k".repeat(120_000);
        let e = pool_changes(&changes(json!({key: 1}))).unwrap_err();
        assert!(
            e.starts_with(&format!("`{}…` cannot be changed", "k".repeat(64))),
            "{e}"
        );
        assert!(e.len() < 300, "{} bytes", e.len());
        let e = pool_changes(&changes(json!({"memory_max": "9".repeat(120_000)}))).unwrap_err();
        assert_eq!(
            e,
            "the value of `memory_max` is 120000 bytes long; no valid one is over 64"
        );
        assert_eq!(
            shown("é".repeat(70).as_str()),
            format!("{}…", "é".repeat(64))
        );
        assert_eq!(shown("shop"), "shop");
    }
}
