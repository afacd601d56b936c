//! `criu service`: a SOCK_SEQPACKET unix socket at `--address` (CRIU's default
//! `./criu_service.socket`), mode 0666; each connection is served by a forked session
//! ([`super::session::serve`]) while the service goes on accepting.
//!
//! ```text
//!  bind ADDR, listen ─► [--daemon] ─► [--pidfile] ─► status ready ─► accept ─► fork ─► serve
//!                                                                     ▲                   │
//!                                                                     └───────────────────┘
//! ```

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::wire::Conn;

/// CRIU's default service address.
pub const DEFAULT_ADDRESS: &str = "criu_service.socket";

/// Binds and listens at `path` (an old socket file there is replaced, as CRIU does).
pub fn listen(path: &Path) -> Result<OwnedFd, String> {
    let err = |what: &str, e: nix::errno::Errno| format!("{what} {}: {e}", path.display());
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err("socket for", e))?;
    let _ = std::fs::remove_file(path);
    let addr = UnixAddr::new(path).map_err(|e| err("address", e))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| err("bind", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    socket::listen(&fd, socket::Backlog::new(16).map_err(|e| err("listen", e))?)
        .map_err(|e| err("listen", e))?;
    Ok(fd)
}

/// Accepts connections forever, one forked session each; returns only on an accept error.
pub fn accept_loop(listener: &OwnedFd) -> String {
    // Sessions are reaped by the kernel: the service never waits for them.
    crate::sys::daemon::reap_children_automatically(true);
    loop {
        let sk = match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(sk) => sk,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return format!("accept: {e}"),
        };
        let sk = crate::sys::fds::own(sk);
        match crate::sys::daemon::fork_worker() {
            Ok(None) => {
                // The session waits for its own children (workers, restored trees).
                crate::sys::daemon::reap_children_automatically(false);
                let status = super::session::serve(Conn::new(sk), false);
                std::process::exit(status);
            }
            Ok(Some(pid)) => tracing::info!("session {pid} serves a connection"),
            Err(e) => tracing::error!("fork a session: {e}"),
        }
    }
}
