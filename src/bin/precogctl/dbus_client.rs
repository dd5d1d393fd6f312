//! Reaching precogd's D-Bus interface from precogctl, and falling back to the socket's `stats`
//! for the read-only commands when the bus or the daemon's name is not there.

use std::path::Path;

use anyhow::Context;
use precog::control::{self, Bus, Precog1Proxy};
use serde_json::{Value, json};
use zbus::proxy::CacheProperties;

use crate::client::Client;

/// A runtime for the async D-Bus client: precogctl is otherwise synchronous, and zbus must not
/// block a tokio worker thread.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A proxy for precogd's object on `bus`.
pub async fn proxy(bus: &Bus) -> anyhow::Result<Precog1Proxy<'static>> {
    let connection = control::connect(bus).await?;
    let proxy = Precog1Proxy::builder(&connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    Ok(proxy)
}

/// Where a read-only command got its figures from.
pub enum Source {
    Bus(Precog1Proxy<'static>),
    Socket(Client),
}

impl Source {
    /// The bus when precogd answers there, else the socket; says on stderr that it fell back.
    pub async fn open(bus: &Bus, socket: &Path) -> anyhow::Result<Source> {
        let bus_error = match proxy(bus).await {
            Ok(p) => match p.version().await {
                Ok(_) => return Ok(Source::Bus(p)),
                Err(e) => anyhow::Error::from(e),
            },
            Err(e) => e,
        };
        match Client::connect(socket) {
            Ok(c) => {
                if !matches!(bus, Bus::None) {
                    eprintln!(
                        "precogctl: D-Bus not available ({}); using the socket",
                        crate::causes(&bus_error)
                    );
                }
                Ok(Source::Socket(c))
            }
            Err(socket_error) => Err(socket_error.context(format!(
                "precogd answers neither on the {bus} bus ({}) nor on its socket",
                crate::causes(&bus_error)
            ))),
        }
    }

    /// The full `stats` object.
    pub async fn stats(&mut self) -> anyhow::Result<Value> {
        match self {
            Source::Bus(p) => {
                let text = p.stats().await?;
                serde_json::from_str(&text).context("precogd sent stats that are not JSON")
            }
            Source::Socket(c) => {
                let mut reply = c.call_ok(&json!({"op": "stats"}))?;
                if let Some(m) = reply.as_object_mut() {
                    m.remove("id");
                    m.remove("ok");
                }
                Ok(reply)
            }
        }
    }
}
