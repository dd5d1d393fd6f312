//! A small blocking client for the precogd socket: one request line out, one reply line in.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Client {
    pub fn connect(path: &Path) -> anyhow::Result<Client> {
        let in_runtime_dir = refuse_foreign_runtime_dir(path)?;
        let stream = UnixStream::connect(path).map_err(|e| {
            use std::os::unix::fs::FileTypeExt;
            let not_a_socket = std::fs::metadata(path).is_ok_and(|m| !m.file_type().is_socket());
            let advice = if e.kind() == std::io::ErrorKind::PermissionDenied {
                access_advice(path)
            } else if not_a_socket {
                "that is not a socket: name precogd's socket (`daemon.socket`, or precogd's \
                 --socket)"
                    .to_string()
            } else {
                "is it running? (start it with `precogd`, or pass --socket)".to_string()
            };
            anyhow::Error::new(e).context(format!(
                "cannot reach precogd at {}: {advice}",
                path.display()
            ))
        })?;
        if in_runtime_dir {
            refuse_foreign_server(&stream, path)?;
        }
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            path: path.to_path_buf(),
        })
    }

    /// Sends one request and returns the whole reply object (`ok` true or false).
    pub fn call(&mut self, request: &Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("cannot send to {}", self.path.display()))?;
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .with_context(|| format!("no reply from {}", self.path.display()))?;
        if n == 0 {
            bail!("precogd closed the connection without replying");
        }
        serde_json::from_str(&reply).context("precogd sent a reply that is not JSON")
    }

    /// Like `call`, but an error reply becomes an error.
    pub fn call_ok(&mut self, request: &Value) -> anyhow::Result<Value> {
        let reply = self.call(request)?;
        if reply["ok"] == Value::Bool(true) {
            Ok(reply)
        } else {
            let code = reply["error"]["code"].as_str().unwrap_or("unknown");
            let msg = reply["error"]["message"].as_str().unwrap_or("");
            bail!("{code}: {msg}")
        }
    }
}

/// A socket in the per-user runtime directory under the shared temporary directory is only
/// trusted when that directory is this user's own: another user who made it first could answer
/// there in precogd's place and read every request. Returns whether `path` is in that directory,
/// named as it is or through `..`, links or a relative path.
fn refuse_foreign_runtime_dir(path: &Path) -> anyhow::Result<bool> {
    let dir = precog::cli::fallback_runtime_dir();
    if !in_dir(path, &dir) {
        return Ok(false);
    }
    match precog::cli::foreign_runtime_dir(&dir) {
        Ok(None) => Ok(true),
        Ok(Some(why)) => bail!(
            "will not use {}: {} {why}, so the socket in it may not be precogd's; remove it, or \
             set XDG_RUNTIME_DIR or --socket",
            path.display(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read the owner of {}", dir.display())),
    }
}

/// Whether `path` lies in `dir`, as written or once the links and `..` on the way to both are
/// resolved.
fn in_dir(path: &Path, dir: &Path) -> bool {
    if path.starts_with(dir) {
        return true;
    }
    let resolved = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
    let Some(resolved) = resolved else {
        return false;
    };
    // The directory by its own name, and where it leads if it is a link.
    let named = std::fs::canonicalize(dir.parent().unwrap_or(dir))
        .ok()
        .zip(dir.file_name())
        .map(|(parent, name)| parent.join(name));
    [named, std::fs::canonicalize(dir).ok()]
        .into_iter()
        .flatten()
        .any(|d| resolved.starts_with(d))
}

/// The process serving a socket in the per-user runtime directory must be this user's own: a
/// directory inside it, or the directory itself, may be a link or another user's, or be swapped
/// while precogctl looks, and only the kernel's word on the peer settles who answers.
fn refuse_foreign_server(stream: &UnixStream, path: &Path) -> anyhow::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let uid = nix::unistd::getuid().as_raw();
    let cred = getsockopt(stream, PeerCredentials)
        .with_context(|| format!("cannot tell who serves {}", path.display()))?;
    if cred.uid() != uid {
        bail!(
            "will not use {}: it is served by uid {}, not by this user (uid {uid}), so it may \
             not be precogd's; remove it, or set XDG_RUNTIME_DIR or --socket",
            path.display(),
            cred.uid()
        );
    }
    Ok(())
}

/// What a user refused the socket (EACCES) should do: join the group that owns it.
fn access_advice(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;

    let Ok(meta) = std::fs::metadata(path) else {
        return "this user may not look into a directory on the way to the socket".into();
    };
    let gid = nix::unistd::Gid::from_raw(meta.gid());
    let group = nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "$USER".into());
    if gid.as_raw() == 0 {
        // Membership of root's group is worth more than the socket: the socket's group is the
        // thing to change.
        return "this user may not open the socket, which belongs to group `root`: give the \
                socket a group of its own (`socket_group` in precogd's configuration; the \
                package's is `precog`) and add the user to that group"
            .into();
    }
    format!(
        "this user may not open the socket, which belongs to group `{group}`: add the user to \
         that group (`sudo usermod -aG {group} {user}`, then log in again)"
    )
}

/// The socket `$PRECOG_SOCKET` names, when it is set and not empty.
pub fn socket_from_env() -> Option<PathBuf> {
    std::env::var_os("PRECOG_SOCKET")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The socket path a client uses when none is given: `$PRECOG_SOCKET`, the system socket, or
/// the per-user one that an unprivileged precogd picks.
pub fn default_socket() -> PathBuf {
    if let Some(p) = socket_from_env() {
        return p;
    }
    // The system daemon's socket when there is one (root, or an app user in group `precog`),
    // else the one a developer's own unprivileged precogd uses.
    let system = PathBuf::from("/run/precog/precogd.sock");
    if nix::unistd::geteuid().is_root() || system.exists() {
        return system;
    }
    precog::cli::user_runtime_dir().join("precog/precogd.sock")
}
