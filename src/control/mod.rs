//! The D-Bus control interface: `org.precog.Precog1` at `/org/precog/Precog1`.
//!
//! An edge like the socket server: the object forwards every call to the engine and keeps no
//! state of its own. Two small tasks run beside it — one turns engine events into D-Bus signals
//! (worker failures rate-limited), one polls the engine's snapshot about once a second and
//! announces the properties that moved with `PropertiesChanged`. The bus policy (who may call
//! what) lives in the packaged policy file, not here.

mod interface;
mod proxy;
pub mod view;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;

pub use interface::ControlObject;
pub use proxy::Precog1Proxy;

use crate::engine::{EngineEvent, EngineHandle};
use view::{Properties, SignalLimiter};

/// The well-known bus name precogd owns.
pub const BUS_NAME: &str = "org.precog.Precog1";
/// The path of the one object.
pub const OBJECT_PATH: &str = "/org/precog/Precog1";
/// The interface name.
pub const INTERFACE: &str = "org.precog.Precog1";

/// How often the properties are compared for `PropertiesChanged`.
const PROPERTY_POLL: Duration = Duration::from_secs(1);
/// `WorkerFailed` signals allowed per second; the rest are counted and dropped.
const WORKER_FAILED_PER_SECOND: u32 = 5;
/// How long connecting to a bus and claiming the name may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A reload asked for over D-Bus; the daemon answers with the result of its SIGHUP path.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// Which bus to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    System,
    Session,
    /// No D-Bus at all.
    None,
    /// A bus at a D-Bus address such as `unix:path=/run/dbus/system_bus_socket`.
    Address(String),
}

impl FromStr for Bus {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<Bus, ControlError> {
        match s {
            "system" => Ok(Bus::System),
            "session" => Ok(Bus::Session),
            "none" => Ok(Bus::None),
            a if a.contains(':') && a.contains('=') => Ok(Bus::Address(a.to_string())),
            other => Err(ControlError::UnknownBus(other.to_string())),
        }
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bus::System => f.write_str("system"),
            Bus::Session => f.write_str("session"),
            Bus::None => f.write_str("none"),
            Bus::Address(a) => f.write_str(a),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "`{0}` is not a bus; use system, session, none or a D-Bus address such as \
         unix:path=/run/dbus/system_bus_socket"
    )]
    UnknownBus(String),
    #[error("cannot connect to the {bus} bus")]
    Connect {
        bus: Bus,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "cannot own {BUS_NAME} on the {bus} bus; another precogd may hold it, or the bus policy \
         does not let this user own it"
    )]
    Claim {
        bus: Bus,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "no bus was chosen (--bus none, the default with --socket or PRECOG_SOCKET); this \
         command speaks D-Bus: give --bus system, session or an address"
    )]
    NoBus,
    #[error("the {bus} bus did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout { bus: Bus },
}

/// Opens a client connection to a bus (for `precogctl` and tests).
pub async fn connect(bus: &Bus) -> Result<zbus::Connection, ControlError> {
    if *bus == Bus::None {
        return Err(ControlError::NoBus);
    }
    let builder = builder(bus).map_err(|source| ControlError::Connect {
        bus: bus.clone(),
        source,
    })?;
    let connecting = builder.build();
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(source)) => Err(ControlError::Connect {
            bus: bus.clone(),
            source,
        }),
        Err(_) => Err(ControlError::Timeout { bus: bus.clone() }),
    }
}

fn builder(bus: &Bus) -> zbus::Result<zbus::connection::Builder<'static>> {
    match bus {
        Bus::System | Bus::None => zbus::connection::Builder::system(),
        Bus::Session => zbus::connection::Builder::session(),
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    }
}

/// The running D-Bus service; dropping it stops the helper tasks and leaves the bus.
pub struct ControlService {
    connection: zbus::Connection,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlService {
    pub fn connection(&self) -> &zbus::Connection {
        &self.connection
    }
}

impl Drop for ControlService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Publishes the interface on `bus` and starts announcing signals and property changes.
/// Returns `None` for [`Bus::None`]. Reloads asked for over the bus arrive on `reload`.
pub async fn serve(
    engine: EngineHandle,
    bus: &Bus,
    reload: mpsc::Sender<ReloadRequest>,
) -> Result<Option<ControlService>, ControlError> {
    if *bus == Bus::None {
        return Ok(None);
    }
    let connection = connect(bus).await?;

    // Subscribe before the object is visible so no event between the two is missed.
    let events = engine.events();
    let object = ControlObject {
        engine: engine.clone(),
        reload,
    };
    let claim = async {
        connection.object_server().at(OBJECT_PATH, object).await?;
        connection.request_name(BUS_NAME).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, claim).await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(ControlError::Claim {
                bus: bus.clone(),
                source,
            });
        }
        Err(_) => return Err(ControlError::Timeout { bus: bus.clone() }),
    }

    let tasks = vec![
        tokio::spawn(forward_events(connection.clone(), events)),
        tokio::spawn(announce_properties(connection.clone(), engine)),
    ];
    tracing::info!(%bus, name = BUS_NAME, "D-Bus interface published");
    Ok(Some(ControlService { connection, tasks }))
}

/// Turns engine events into signals until the engine goes away.
async fn forward_events(
    connection: zbus::Connection,
    mut events: broadcast::Receiver<EngineEvent>,
) {
    let Ok(emitter) = SignalEmitter::new(&connection, OBJECT_PATH) else {
        return;
    };
    let mut failures = SignalLimiter::new(WORKER_FAILED_PER_SECOND, Duration::from_secs(1));
    loop {
        let sent = match events.recv().await {
            Ok(EngineEvent::PoolResized { pool, workers }) => {
                ControlObject::pool_resized(&emitter, &pool, workers).await
            }
            Ok(EngineEvent::QuotaChanged {
                pool,
                what,
                old,
                new,
                why,
            }) => ControlObject::quota_changed(&emitter, &pool, &what, &old, &new, &why).await,
            Ok(EngineEvent::WorkerFailed { pool, reason }) => {
                let (admitted, dropped) = failures.admit(Instant::now());
                if dropped > 0 {
                    tracing::info!(dropped, "WorkerFailed signals dropped by the rate limit");
                }
                if !admitted {
                    continue;
                }
                ControlObject::worker_failed(&emitter, &pool, &reason).await
            }
            // The new policy shows through Stats and the properties poll.
            Ok(EngineEvent::PolicyChanged) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "D-Bus signal forwarder fell behind the engine");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Err(e) = sent {
            tracing::debug!("cannot emit a D-Bus signal: {e}");
        }
    }
}

/// Compares the properties with the engine's snapshot about once a second and announces the
/// ones that moved.
async fn announce_properties(connection: zbus::Connection, engine: EngineHandle) {
    let Ok(emitter) = SignalEmitter::new(&connection, OBJECT_PATH) else {
        return;
    };
    let interface = InterfaceName::from_static_str_unchecked(INTERFACE);
    let mut tick = tokio::time::interval(PROPERTY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Properties> = None;
    loop {
        tick.tick().await;
        let Some(stats) = engine.snapshot().await else {
            return;
        };
        let now = Properties::from_stats(&stats);
        if let Some(before) = &last {
            let changed = now.changed_since(before);
            if !changed.is_empty() {
                let changed: HashMap<&str, zbus::zvariant::Value<'_>> =
                    changed.into_iter().collect();
                let sent = zbus::fdo::Properties::properties_changed(
                    &emitter,
                    interface.clone(),
                    changed,
                    Cow::Borrowed(&[]),
                )
                .await;
                if let Err(e) = sent {
                    tracing::debug!("cannot emit PropertiesChanged: {e}");
                }
            }
        }
        last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_names_and_addresses_parse() {
        assert_eq!("system".parse::<Bus>().unwrap(), Bus::System);
        assert_eq!("none".parse::<Bus>().unwrap(), Bus::None);
        assert_eq!(
            "unix:path=/tmp/b".parse::<Bus>().unwrap(),
            Bus::Address("unix:path=/tmp/b".into())
        );
        assert!("sytem".parse::<Bus>().is_err());
    }
}
