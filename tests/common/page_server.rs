//! Page servers for tests (stasis's or CRIU's), on loopback: a free port, readiness through
//! `--status-fd`, the session's exit status, and the merge of its files into a dump's
//! directory.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running page server.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub what: String,
}

/// Starts `program page-server -D dir --address 127.0.0.1 --port P --status-fd N EXTRA...`
/// (with `-o page-server.log -v4`) and waits (20 s at most) for its ready byte.
pub fn start(program: &Path, dir: &Path, extra: &[&str]) -> Server {
    let port = free_port();
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    // The write end is inherited by the server (no O_CLOEXEC); ours closes after spawn.
    let child = Command::new(program)
        .arg("page-server")
        .arg("-D")
        .arg(dir)
        .args(["--address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--status-fd", &w.as_raw_fd().to_string()])
        .args(["-o", "page-server.log", "-v4"])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    drop(w);
    let what = format!("{} page-server on port {port}", program.display());
    let mut f = std::fs::File::from(r);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(f.read(&mut b).map(|n| (n, b[0])));
    });
    let mut s = Server { child, port, what };
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok((1, 0))) => s,
        other => {
            let _ = s.child.kill();
            let _ = s.child.wait();
            panic!(
                "{} not ready ({other:?}): {}",
                s.what,
                std::fs::read_to_string(dir.join("page-server.log")).unwrap_or_default()
            );
        }
    }
}

impl Server {
    /// Waits (30 s at most) for the server to end its session; fails unless it exited 0.
    pub fn wait_ok(mut self, dir: &Path) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "{} exited with {st}: {}",
                    self.what,
                    std::fs::read_to_string(dir.join("page-server.log")).unwrap_or_default()
                );
                return;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not end its session", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies the page server's pagemaps and pages files into the dump's directory.
pub fn merge(server_dir: &Path, dump_dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(server_dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("pagemap-") || name.starts_with("pages-") {
            std::fs::copy(&p, dump_dir.join(&name)).unwrap();
            n += 1;
        }
    }
    n
}
