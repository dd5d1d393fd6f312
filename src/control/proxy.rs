//! A typed client for `org.precog.Precog1`, used by `precogctl` and the tests.

use std::collections::HashMap;

use zbus::zvariant::Value;

#[zbus::proxy(
    interface = "org.precog.Precog1",
    default_service = "org.precog.Precog1",
    default_path = "/org/precog/Precog1",
    gen_blocking = false
)]
pub trait Precog1 {
    fn status(&self) -> zbus::Result<String>;

    fn stats(&self) -> zbus::Result<String>;

    fn pools(&self) -> zbus::Result<String>;

    fn set_pool_limits(&self, pool: &str, changes: HashMap<&str, &str>) -> zbus::Result<String>;

    fn set_policy(&self, changes: HashMap<&str, Value<'_>>) -> zbus::Result<String>;

    fn reload(&self) -> zbus::Result<()>;

    fn flush_cache(&self) -> zbus::Result<u64>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn uptime(&self) -> zbus::Result<u64>;

    #[zbus(property)]
    fn active_sessions(&self) -> zbus::Result<u64>;

    #[zbus(property)]
    fn cache_bytes(&self) -> zbus::Result<u64>;

    #[zbus(property)]
    fn cache_entries(&self) -> zbus::Result<u64>;

    #[zbus(property)]
    fn hit_ratio(&self) -> zbus::Result<f64>;

    #[zbus(property)]
    fn speculation_precision(&self) -> zbus::Result<f64>;

    #[zbus(signal)]
    fn pool_resized(&self, pool: String, workers: u64) -> zbus::Result<()>;

    #[zbus(signal)]
    fn quota_changed(
        &self,
        pool: String,
        what: String,
        old: String,
        new: String,
        why: String,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    fn worker_failed(&self, pool: String, reason: String) -> zbus::Result<()>;
}
