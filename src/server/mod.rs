//! The Unix socket server: binding (or taking systemd's socket), connections, backpressure.
//!
//! Each connection reads newline-delimited requests through a [`Framer`], hands each to the
//! engine without waiting for the answer, and a writer task sends the replies in request order —
//! so clients may pipeline. At most `max_connections` connections are served; one more is told
//! `overloaded` and closed. At most [`PIPELINE_DEPTH`] requests of one connection are in flight;
//! past that the connection is not read until replies drain, which is the backpressure.

mod accept;
pub mod systemd;

pub use accept::AcceptPause;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::engine::{Client, EngineHandle, Reply};
use crate::protocol::{ErrorCode, ErrorReply, Framer, decode_request, encode_error, encode_ok};

/// Requests of one connection that may await their replies at once.
pub const PIPELINE_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another precogd is already serving {0}; stop it first or choose another --socket")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who may use the socket, besides root and the daemon's own user.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Access {
    /// Resolves configured names; names that do not exist are skipped with a warning.
    pub fn resolve(users: &[String], groups: &[String]) -> Access {
        let mut a = Access::default();
        for u in users {
            match nix::unistd::User::from_name(u) {
                Ok(Some(user)) => a.uids.push(user.uid.as_raw()),
                _ => tracing::warn!(user = %u, "allowed user does not exist; ignored"),
            }
        }
        for g in groups {
            match nix::unistd::Group::from_name(g) {
                Ok(Some(group)) => a.gids.push(group.gid.as_raw()),
                _ => tracing::warn!(group = %g, "allowed group does not exist; ignored"),
            }
        }
        a
    }

    fn open_to_all(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    /// Whether the peer may use precog: root, the daemon's user, a listed user, or a member
    /// (primary or supplementary) of a listed group.
    pub fn allows(&self, client: &Client) -> bool {
        let me = nix::unistd::geteuid().as_raw();
        if self.open_to_all() || client.uid == 0 || client.uid == me {
            return true;
        }
        if self.uids.contains(&client.uid) || self.gids.contains(&client.gid) {
            return true;
        }
        supplementary_groups(client.uid, client.gid)
            .iter()
            .any(|g| self.gids.contains(g))
    }
}

fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// Settings of the server that may change on reload.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_connections: usize,
    pub max_line: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_close: Duration,
    pub access: Access,
}

/// Binds the socket at `path`, replacing a stale one, refusing if a live daemon answers there.
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, ServerError> {
    let io = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| ServerError::Io { op, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if answers_ping(path) {
                return Err(ServerError::AlreadyRunning(path.to_path_buf()));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }

    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of"))?;
    if let Some(group) = group {
        match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => {
                nix::unistd::chown(path, None, Some(g.gid))
                    .map_err(|e| io("set the group of")(e.into()))?;
            }
            _ => tracing::warn!(
                group,
                "socket group does not exist; the socket keeps its group"
            ),
        }
    }
    Ok(listener)
}

/// Whether a daemon serves the socket: it must accept and answer a `ping` within a second. A
/// socket that accepts but never answers is held by something that is not serving it (a
/// process left over from a crash), and is treated as stale.
fn answers_ping(path: &Path) -> bool {
    use std::io::{BufRead, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"{\"op\":\"ping\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stream);
    matches!(reader.read_line(&mut line), Ok(n) if n > 0)
}

/// Wraps a socket passed by systemd.
pub fn from_systemd(fd: OwnedFd) -> Result<UnixListener, ServerError> {
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    let path = PathBuf::from("<systemd socket>");
    std_listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Io {
            op: "use",
            path: path.clone(),
            source,
        })?;
    UnixListener::from_std(std_listener).map_err(|source| ServerError::Io {
        op: "use",
        path,
        source,
    })
}

/// Accepts connections until `stop` turns true.
pub async fn serve(
    listener: UnixListener,
    engine: EngineHandle,
    settings: watch::Receiver<Arc<ServerSettings>>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = settings.borrow().max_connections;
    let slots = Arc::new(Semaphore::new(limit));
    let mut accept_pause = AcceptPause::new("socket");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                accept_pause.after_failure(&e).await;
                continue;
            }
        };
        let current = settings.borrow().clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, current.max_connections));
            continue;
        };
        let engine = engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            connection(stream, engine, current, stop).await;
            drop(permit);
        });
    }
}

async fn refuse(mut stream: UnixStream, limit: usize) {
    let e = ErrorReply::new(
        ErrorCode::Overloaded,
        format!("precogd serves at most {limit} connections; try again later"),
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(&encode_error(&Value::Null, &e)),
    )
    .await;
}

enum Pending {
    Ready(Vec<u8>),
    Waiting(Value, oneshot::Receiver<Reply>),
}

async fn connection(
    stream: UnixStream,
    engine: EngineHandle,
    settings: Arc<ServerSettings>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match stream.peer_cred() {
        Ok(c) => Client {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid().unwrap_or(0),
        },
        Err(_) => return,
    };
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(PIPELINE_DEPTH);
    let writer = tokio::spawn(write_replies(wr, rx));

    if !settings.access.allows(&client) {
        tracing::debug!(uid = client.uid, pid = client.pid, "refused a client");
        let e = ErrorReply::new(ErrorCode::Forbidden, "this user may not use precog");
        let _ = tx
            .send(Pending::Ready(encode_error(&Value::Null, &e)))
            .await;
        drop(tx);
        let _ = writer.await;
        // Read what the client sends before closing: a client refused before its first request
        // arrived would otherwise meet a closed socket and never read the reply saying why.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut sink = [0u8; 4096];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        return;
    }

    let mut framer = Framer::new(settings.max_line);
    let mut buf = vec![0u8; 64 * 1024];
    // A connection that sends nothing for this long gives its slot back; clients reconnect
    // when they need to. One timer, set afresh each time the connection starts waiting (not
    // while its replies back up, which is the client's doing, not idleness).
    let idle = tokio::time::sleep(settings.idle_close);
    tokio::pin!(idle);
    'conn: loop {
        idle.as_mut()
            .reset(tokio::time::Instant::now() + settings.idle_close);
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.changed() => break,
            _ = &mut idle, if framer.pending() == 0 => break,
        };
        framer.push(&buf[..n]);
        while let Some(line) = framer.next_line() {
            let pending = match line {
                Err(_) => {
                    let e = ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!("a request line may be at most {} bytes", settings.max_line),
                    );
                    let _ = tx
                        .send(Pending::Ready(encode_error(&Value::Null, &e)))
                        .await;
                    break 'conn;
                }
                Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(line) => match decode_request(&line) {
                    Err((id, e)) => Pending::Ready(encode_error(&id, &e)),
                    Ok(req) => Pending::Waiting(req.id, engine.request(req.op, client).await),
                },
            };
            if tx.send(pending).await.is_err() {
                break 'conn;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn write_replies(wr: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Pending>) {
    let mut out = BufWriter::new(wr);
    while let Some(p) = rx.recv().await {
        let bytes = match p {
            Pending::Ready(b) => b,
            Pending::Waiting(id, reply) => match reply.await {
                Ok(Ok(fields)) => encode_ok(&id, fields),
                Ok(Err(e)) => encode_error(&id, &e),
                Err(_) => encode_error(
                    &id,
                    &ErrorReply::new(ErrorCode::ShuttingDown, "precogd is stopping"),
                ),
            },
        };
        if out.write_all(&bytes).await.is_err() {
            return;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
