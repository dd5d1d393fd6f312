//! The Unix socket server: binding (or taking systemd's socket), connections, backpressure.
//!
//! Each connection reads newline-delimited requests through a [`crate::protocol::Framer`],
//! hands each to the engine without waiting for the answer, and a writer task sends the replies
//! in request order — so clients may pipeline. At most `max_connections` connections are served
//! (the value of the moment: a reload applies to the next client); one more is told
//! `overloaded` and closed. At most [`PIPELINE_DEPTH`] requests of one connection are in flight;
//! past that the connection is not read until replies drain, which is the backpressure. How
//! long a connection may hold its slot without finishing a request line or taking its replies,
//! and how much its partial lines may hold, is in the `conn` module.

mod accept;
mod conn;
mod limits;
pub mod systemd;

pub use accept::AcceptPause;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::engine::{Client, EngineHandle};
use crate::protocol::{ErrorCode, ErrorReply, encode_error};
use limits::{LineBudget, Slots};

/// Requests of one connection that may await their replies at once.
pub const PIPELINE_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another precogd is already serving {0}; stop it first or choose another --socket")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error(
        "cannot set the group of {path} to `{group}`, as daemon.socket_group asks: {cause}; \
         remove daemon.socket_group from the configuration, or run precogd as root or as a \
         member of group `{group}`"
    )]
    SocketGroup {
        path: PathBuf,
        group: String,
        cause: nix::Error,
    },
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
    /// Users or groups were named. Names that do not exist let nobody in; they never open the
    /// socket to everyone, as empty lists do.
    pub restricted: bool,
}

impl Access {
    /// Resolves configured names; names that do not exist are skipped with a warning.
    pub fn resolve(users: &[String], groups: &[String]) -> Access {
        let mut a = Access {
            restricted: !users.is_empty() || !groups.is_empty(),
            ..Access::default()
        };
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
        if a.restricted && a.uids.is_empty() && a.gids.is_empty() {
            tracing::warn!(
                "none of the allowed users and groups exist: only root and precogd's own user \
                 may use the socket"
            );
        }
        a
    }

    /// Whether the peer may use precog: root, the daemon's user, a listed user, or a process
    /// holding a listed group (primary or supplementary). `groups` are the supplementary groups
    /// the peer process holds, as the kernel recorded them at connect; without them (a kernel
    /// that cannot tell) the user database's are taken.
    pub fn allows(&self, client: &Client, groups: Option<&[u32]>) -> bool {
        let me = nix::unistd::geteuid().as_raw();
        if !self.restricted || client.uid == 0 || client.uid == me {
            return true;
        }
        if self.uids.contains(&client.uid) || self.gids.contains(&client.gid) {
            return true;
        }
        match groups {
            Some(held) => held.iter().any(|g| self.gids.contains(g)),
            None => supplementary_groups(client.uid, client.gid)
                .iter()
                .any(|g| self.gids.contains(g)),
        }
    }
}

/// The supplementary groups of the process at the other end of a Unix socket, as the kernel
/// recorded them when it connected (`SO_PEERGROUPS`, Linux 4.13); `None` where it cannot tell.
pub fn peer_groups(fd: std::os::fd::RawFd) -> Option<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, which holds that many.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / GID);
            return Some(groups);
        }
        // Too small a buffer: the kernel says how large it must be.
        let needed = len as usize / GID;
        let too_small = std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE);
        if !too_small || needed <= groups.len() {
            return None;
        }
        groups.resize(needed, 0);
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
    /// A connection on which no request line ends for this long is closed, and so is one whose
    /// replies cannot be written for this long.
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
    // A socket this start made and cannot set up goes again: a daemon that did not start leaves
    // nothing behind.
    set_access(path, mode, group).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    Ok(listener)
}

/// Gives the new socket its mode and, if configured, its group.
fn set_access(path: &Path, mode: u32, group: Option<&str>) -> Result<(), ServerError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ServerError::Io {
            op: "set the mode of",
            path: path.to_path_buf(),
            source,
        }
    })?;
    let Some(group) = group else {
        return Ok(());
    };
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => {
            nix::unistd::chown(path, None, Some(g.gid)).map_err(|cause| {
                ServerError::SocketGroup {
                    path: path.to_path_buf(),
                    group: group.to_string(),
                    cause,
                }
            })?;
        }
        _ => tracing::warn!(
            group,
            "socket group does not exist; the socket keeps its group"
        ),
    }
    Ok(())
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
    let slots = Arc::new(Slots::default());
    let lines = Arc::new(LineBudget::default());
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
        // The settings of the moment: a reload applies its `max_connections` to the next client.
        let current = settings.borrow().clone();
        let Some(slot) = slots.try_take(current.max_connections) else {
            engine.count_error(ErrorCode::Overloaded);
            tokio::spawn(refuse(stream, current.max_connections));
            continue;
        };
        let engine = engine.clone();
        let lines = lines.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            conn::connection(stream, engine, current, lines, stop).await;
            drop(slot);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(uid: u32, gid: u32) -> Client {
        Client { uid, gid, pid: 1 }
    }

    #[test]
    fn names_that_do_not_exist_let_nobody_in_rather_than_everyone() {
        let none = Access::resolve(&["no-such-user-precog".into()], &[]);
        assert!(!none.allows(&client(65534, 65534), None));
        let none = Access::resolve(&[], &["no-such-group-precog".into()]);
        assert!(!none.allows(&client(65534, 65534), None));
        // Root and the daemon's own user are always served.
        assert!(none.allows(&client(0, 0), None));
        let me = nix::unistd::geteuid().as_raw();
        assert!(none.allows(&client(me, 12345), None));
    }

    #[test]
    fn empty_lists_leave_access_to_the_socket_file() {
        assert!(Access::resolve(&[], &[]).allows(&client(65534, 65534), None));
    }
}
