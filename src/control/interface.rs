//! The `org.precog.Precog1` object: methods, properties and signals, all forwarded to the engine.
//!
//! Nothing here is kept between calls: every property read takes a fresh snapshot from the
//! engine, every method is one engine operation, and a reload is handed to the daemon so that it
//! takes the same path as SIGHUP.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use zbus::fdo;
use zbus::object_server::SignalEmitter;
use zbus::zvariant;

use super::ReloadRequest;
use super::view::{self, Properties};
use crate::engine::{ControlOp, EngineHandle};

/// The object served at `/org/precog/Precog1`.
pub struct ControlObject {
    pub(super) engine: EngineHandle,
    pub(super) reload: mpsc::Sender<ReloadRequest>,
}

impl ControlObject {
    async fn stats(&self) -> fdo::Result<Value> {
        self.engine
            .snapshot()
            .await
            .ok_or_else(|| fdo::Error::Failed("precogd is stopping".into()))
    }

    async fn properties(&self) -> fdo::Result<Properties> {
        Ok(Properties::from_stats(&self.stats().await?))
    }
}

#[zbus::interface(name = "org.precog.Precog1")]
impl ControlObject {
    /// A short JSON summary: version, uptime, runs served, hit ratio, workers.
    async fn status(&self) -> fdo::Result<String> {
        Ok(view::status_summary(&self.stats().await?).to_string())
    }

    /// The full `stats` reply as JSON, as the socket gives it (without `id` and `ok`).
    #[zbus(name = "Stats")]
    async fn stats_json(&self) -> fdo::Result<String> {
        Ok(self.stats().await?.to_string())
    }

    /// Every pool with its limits and live figures, as JSON.
    async fn pools(&self) -> fdo::Result<String> {
        let pools = self
            .engine
            .control(ControlOp::Pools)
            .await
            .map_err(fdo::Error::Failed)?;
        Ok(pools.to_string())
    }

    /// Changes a pool's limits, values written as in the configuration file (`"2s"`, `"150%"`,
    /// `"256M"`, `"4"`); returns the pool as `Pools` shows it.
    async fn set_pool_limits(
        &self,
        pool: String,
        changes: HashMap<String, String>,
    ) -> fdo::Result<String> {
        let changes = changes
            .into_iter()
            .map(|(k, v)| (k, pool_limit_json(&v)))
            .collect();
        let pool = self
            .engine
            .control(ControlOp::SetPool { pool, changes })
            .await
            .map_err(fdo::Error::InvalidArgs)?;
        Ok(pool.to_string())
    }

    /// Changes the prediction policy (`hot_path` u, `threshold` d, `speculation` b); returns the
    /// policy now in force.
    async fn set_policy(
        &self,
        changes: HashMap<String, zvariant::OwnedValue>,
    ) -> fdo::Result<String> {
        let mut json = Map::new();
        for (k, v) in changes {
            let value = variant_json(&v).ok_or_else(|| {
                let shown: String = k.chars().take(64).collect();
                fdo::Error::InvalidArgs(format!(
                    "`{shown}` has a value of type {}; give a boolean, a number or a string",
                    v.value_signature()
                ))
            })?;
            json.insert(k, value);
        }
        let policy = self
            .engine
            .control(ControlOp::SetPolicy { changes: json })
            .await
            .map_err(fdo::Error::InvalidArgs)?;
        Ok(policy.to_string())
    }

    /// Reloads the configuration, exactly as SIGHUP does.
    async fn reload(&self) -> fdo::Result<()> {
        let (done, answer) = oneshot::channel();
        self.reload
            .send(done)
            .await
            .map_err(|_| fdo::Error::Failed("precogd is stopping".into()))?;
        answer
            .await
            .map_err(|_| fdo::Error::Failed("precogd is stopping".into()))?
            .map_err(fdo::Error::Failed)
    }

    /// Drops every cached result; returns how many entries there were.
    async fn flush_cache(&self) -> fdo::Result<u64> {
        let flushed = self
            .engine
            .control(ControlOp::FlushCache)
            .await
            .map_err(fdo::Error::Failed)?;
        Ok(flushed["flushed"].as_u64().unwrap_or(0))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> fdo::Result<String> {
        Ok(self.properties().await?.version)
    }

    /// Seconds since precogd started; not announced, since it changes every second.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn uptime(&self) -> fdo::Result<u64> {
        Ok(self.properties().await?.uptime_s)
    }

    #[zbus(property)]
    async fn active_sessions(&self) -> fdo::Result<u64> {
        Ok(self.properties().await?.active_sessions)
    }

    #[zbus(property)]
    async fn cache_bytes(&self) -> fdo::Result<u64> {
        Ok(self.properties().await?.cache_bytes)
    }

    #[zbus(property)]
    async fn cache_entries(&self) -> fdo::Result<u64> {
        Ok(self.properties().await?.cache_entries)
    }

    #[zbus(property)]
    async fn hit_ratio(&self) -> fdo::Result<f64> {
        Ok(self.properties().await?.hit_ratio)
    }

    #[zbus(property)]
    async fn speculation_precision(&self) -> fdo::Result<f64> {
        Ok(self.properties().await?.speculation_precision)
    }

    /// A pool now has `workers` workers.
    #[zbus(signal)]
    pub async fn pool_resized(
        emitter: &SignalEmitter<'_>,
        pool: &str,
        workers: u64,
    ) -> zbus::Result<()>;

    /// A pool limit moved, by the operator or the tuner; `why` says which.
    #[zbus(signal)]
    pub async fn quota_changed(
        emitter: &SignalEmitter<'_>,
        pool: &str,
        what: &str,
        old: &str,
        new: &str,
        why: &str,
    ) -> zbus::Result<()>;

    /// A worker crashed, timed out or broke the protocol (a few per second at most).
    #[zbus(signal)]
    pub async fn worker_failed(
        emitter: &SignalEmitter<'_>,
        pool: &str,
        reason: &str,
    ) -> zbus::Result<()>;
}

/// A pool limit as the configuration parser wants it: whole numbers as numbers (`warm_min`,
/// `pids_max`), everything else (`2s`, `150%`, `256M`) as the string written.
fn pool_limit_json(text: &str) -> Value {
    match text.parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(text),
    }
}

/// A D-Bus variant as JSON, for the scalar types a policy value can have.
fn variant_json(v: &zvariant::Value<'_>) -> Option<Value> {
    use zvariant::Value as V;
    Some(match v {
        V::Bool(b) => Value::from(*b),
        V::U8(n) => Value::from(*n),
        V::U16(n) => Value::from(*n),
        V::U32(n) => Value::from(*n),
        V::U64(n) => Value::from(*n),
        V::I16(n) => Value::from(*n),
        V::I32(n) => Value::from(*n),
        V::I64(n) => Value::from(*n),
        V::F64(n) => Value::from(*n),
        V::Str(s) => Value::from(s.as_str()),
        V::Value(inner) => return variant_json(inner),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_limits_keep_units_and_pass_numbers_as_numbers() {
        assert_eq!(pool_limit_json("4"), Value::from(4u64));
        assert_eq!(pool_limit_json("150%"), Value::from("150%"));
        assert_eq!(pool_limit_json("-1"), Value::from("-1"));
    }

    #[test]
    fn policy_variants_become_json_scalars() {
        assert_eq!(
            variant_json(&zvariant::Value::from(0.4)),
            Some(Value::from(0.4))
        );
        assert_eq!(
            variant_json(&zvariant::Value::from(true)),
            Some(Value::from(true))
        );
        assert_eq!(
            variant_json(&zvariant::Value::from(3u32)),
            Some(Value::from(3u32))
        );
        let nested = zvariant::Value::Value(Box::new(zvariant::Value::from(7i32)));
        assert_eq!(variant_json(&nested), Some(Value::from(7)));
        let list = zvariant::Value::from(vec![1u8, 2]);
        assert_eq!(variant_json(&list), None);
    }
}
