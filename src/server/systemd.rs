//! The two small systemd protocols precogd speaks: socket activation (`LISTEN_FDS`) and
//! readiness / watchdog notification (`NOTIFY_SOCKET`). Both are silent no-ops when systemd did
//! not set them up.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// First descriptor systemd passes.
const LISTEN_FDS_START: i32 = 3;

/// Takes the first socket passed by systemd, if any were passed to this process.
pub fn take_listen_fd() -> Option<OwnedFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    // SAFETY: removing variables is safe here because it runs at start-up, before any other
    // thread reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if n < 1 {
        return None;
    }
    // SAFETY: descriptors 3.. were passed by systemd for this process (LISTEN_PID matched);
    // precog uses only the first, so the others are closed, and nothing else owns them.
    unsafe {
        for extra in LISTEN_FDS_START + 1..LISTEN_FDS_START + n {
            libc::close(extra);
        }
        libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    // SAFETY: systemd passed descriptor 3 to this process (LISTEN_PID matched) and nothing else
    // in the process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) })
}

/// Sends a state string (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`) to systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// How often to ping the watchdog, if systemd asked for it: half its timeout.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
