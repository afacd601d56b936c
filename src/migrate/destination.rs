//! The destination side (`stasis migrate-receive`): one migration on one connection.
//!
//! ```text
//!  accept ─► Hello: version, key proof (--encrypt-key) ─► Welcome | Refuse (exit non-zero)
//!  Iteration{dir, parent} ─► mkdir DIR/dir, parent link ─► page-server session on the same
//!                            stream (pages::server::serve, packed with --compress/--key)
//!  File{dir, name}        ─► DIR/dir/name (names checked: plain names of created dirs)
//!  Final{dir}             ─► --restore: restore DIR/dir detached ─► Result{running | error}
//!                            without: Result{images complete}
//!  Abort / cut stream / any error before Final: every directory received is removed
//! ```
//! The restore runs in this (single-threaded) process; the restored root is its child and
//! is left running when the command exits.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::control::{self, Message};
use super::{MigrateError, Result};
use crate::pages::pack::{PackKey, PackParams};
use crate::pages::server::{self, ServerOptions};

/// What `stasis migrate-receive` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// `-D`: where the iterations' directories go (must exist).
    pub images_dir: PathBuf,
    /// `--restore`: restore once the final iteration is in.
    pub restore: bool,
    /// `--pidfile`: the restored root's PID.
    pub pidfile: Option<PathBuf>,
    /// `--encrypt-key`: the key file (the source must prove the same key; pages files are
    /// sealed with it).
    pub key_file: Option<PathBuf>,
    pub key: Option<Arc<PackKey>>,
    /// Restore timeout (`--timeout`).
    pub timeout: Option<std::time::Duration>,
}

/// What a received migration produced.
#[derive(Debug, Clone)]
pub struct Received {
    /// The final image directory.
    pub final_dir: PathBuf,
    /// The restored root's PID (with `--restore`).
    pub root: Option<i32>,
    pub iterations: u32,
}

/// Removes what a failed migration received (RAII: disarmed on success).
struct Received_ {
    dirs: Vec<PathBuf>,
    armed: bool,
}

impl Drop for Received_ {
    fn drop(&mut self) {
        if self.armed {
            for d in self.dirs.iter().rev() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// Accepts one connection on `listener` and receives a migration.
pub fn receive(listener: &TcpListener, o: &ReceiveOptions) -> Result<Received> {
    let (stream, addr) = listener.accept().map_err(|e| MigrateError::Connect {
        peer: "accept".into(),
        what: e.to_string(),
    })?;
    let _ = stream.set_nodelay(true);
    tracing::info!("migration from {addr}");
    receive_on(stream, &addr.to_string(), o)
}

/// Receives a migration on a connected stream.
pub fn receive_on(stream: TcpStream, peer: &str, o: &ReceiveOptions) -> Result<Received> {
    let mut w = stream.try_clone().map_err(|e| MigrateError::Connect {
        peer: peer.into(),
        what: format!("dup: {e}"),
    })?;
    // Frames are read unbuffered: a page session follows a frame at once on the same
    // stream, and its first command must not sit in a read-ahead buffer the page server
    // never sees (`control::read_frame` reads exactly one frame).
    let mut r = stream.try_clone().map_err(|e| MigrateError::Connect {
        peer: peer.into(),
        what: format!("dup: {e}"),
    })?;
    let ctl = |source| MigrateError::Control {
        peer: peer.to_string(),
        source,
    };
    let proto = |what: String| MigrateError::Protocol {
        peer: peer.to_string(),
        what,
    };
    let (flags, compress) = match control::read_frame(&mut r).map_err(ctl)? {
        Message::Hello {
            version,
            flags,
            compress,
            auth,
        } => {
            let refusal = if version != control::VERSION {
                Some(format!(
                    "protocol version {version}, this destination speaks {}",
                    control::VERSION
                ))
            } else {
                match (&o.key, auth.is_empty()) {
                    (None, true) => None,
                    (None, false) => Some("the destination has no --encrypt-key".to_string()),
                    (Some(_), true) => Some("the destination requires --encrypt-key".to_string()),
                    (Some(k), false) if super::auth::check(k, &auth) => None,
                    (Some(_), false) => Some("wrong key (--encrypt-key differs)".to_string()),
                }
            };
            if let Some(reason) = refusal {
                let _ = control::write_frame(
                    &mut w,
                    &Message::Refuse {
                        reason: reason.clone(),
                    },
                );
                return Err(MigrateError::Refused(reason));
            }
            control::write_frame(&mut w, &Message::Welcome).map_err(ctl)?;
            (flags, compress)
        }
        m => return Err(proto(format!("{m:?} instead of Hello"))),
    };
    let pack = PackParams {
        zstd: (compress != 0).then_some(compress),
        key: o.key.clone(),
        ..Default::default()
    };
    let mut got = Received_ {
        dirs: Vec::new(),
        armed: true,
    };
    let mut iterations = 0;
    let dir_of = |got: &Received_, name: &str| -> Result<PathBuf> {
        let d = o.images_dir.join(name);
        if control::plain_name(name) && got.dirs.contains(&d) {
            Ok(d)
        } else {
            Err(MigrateError::Protocol {
                peer: peer.to_string(),
                what: format!("directory {name:?} was not announced"),
            })
        }
    };
    loop {
        match control::read_frame(&mut r).map_err(ctl)? {
            Message::Iteration { index, dir, parent } => {
                if !control::plain_name(&dir) || got.dirs.contains(&o.images_dir.join(&dir)) {
                    return Err(proto(format!("iteration directory {dir:?}")));
                }
                let prev = if parent.is_empty() {
                    None
                } else {
                    dir_of(&got, &parent)?;
                    Some(PathBuf::from(format!("../{parent}")))
                };
                let d = o.images_dir.join(&dir);
                let _ = std::fs::remove_dir_all(&d);
                std::fs::create_dir(&d).map_err(|e| MigrateError::io("create", &d, e))?;
                got.dirs.push(d.clone());
                let so = ServerOptions {
                    images_dir: d,
                    prev_images_dir: prev,
                    pack: pack.clone(),
                };
                server::prepare_dir(&so).map_err(|e| MigrateError::Pages(e.to_string()))?;
                let sock =
                    stream
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| MigrateError::Connect {
                            peer: peer.into(),
                            what: format!("dup: {e}"),
                        })?;
                // Nothing of the session can be buffered ahead in `r`: the source sends no
                // frame before the session's last answer.
                let rep = server::serve(sock.into(), peer, &so, true)
                    .map_err(|e| MigrateError::Pages(e.to_string()))?;
                tracing::info!(
                    "iteration {index} ({dir}): {} pages, {} bytes written",
                    rep.pages,
                    rep.sink.bytes
                );
                iterations += 1;
            }
            Message::File { dir, name, data } => {
                let d = dir_of(&got, &dir)?;
                if !control::plain_name(&name) || name == "parent" {
                    return Err(proto(format!("file name {name:?}")));
                }
                let p = d.join(&name);
                std::fs::write(&p, &data).map_err(|e| MigrateError::io("write", &p, e))?;
            }
            Message::IterationDone {
                index,
                pages,
                bytes,
                micros,
            } => tracing::info!(
                "iteration {index} done on the source: {pages} pages, {bytes} bytes, {micros} us"
            ),
            Message::Final { dir } => {
                let d = dir_of(&got, &dir)?;
                sync_dir(&d);
                let (result, root) = if o.restore {
                    match restore(&d, o, flags) {
                        Ok(root) => (Ok(format!("running, root PID {root}")), Some(root)),
                        Err(e) => (Err(e), None),
                    }
                } else {
                    (Ok("images complete".to_string()), None)
                };
                let answer = match &result {
                    Ok(m) => Message::Result {
                        ok: true,
                        running: root.is_some(),
                        message: m.clone(),
                    },
                    Err(e) => Message::Result {
                        ok: false,
                        running: false,
                        message: e.to_string(),
                    },
                };
                let sent = control::write_frame(&mut w, &answer);
                let message = result?;
                sent.map_err(ctl)?;
                tracing::info!("migration received: {message}");
                got.armed = false;
                return Ok(Received {
                    final_dir: d,
                    root,
                    iterations,
                });
            }
            Message::Abort { reason } => return Err(MigrateError::Aborted(reason)),
            m => return Err(proto(format!("{m:?} during the transfer"))),
        }
    }
}

fn sync_dir(d: &Path) {
    if let Ok(f) = std::fs::File::open(d) {
        let _ = nix::unistd::syncfs(f.as_fd());
    }
}

fn restore(d: &Path, o: &ReceiveOptions, flags: u32) -> Result<i32> {
    let ro = crate::restore::RestoreOptions {
        images_dir: d.to_path_buf(),
        detached: true,
        pidfile: o.pidfile.clone(),
        tcp_established: flags & control::FLAG_TCP_ESTABLISHED != 0,
        timeout: o.timeout,
        encrypt_key: o.key_file.clone(),
        ..Default::default()
    };
    crate::restore::restore(&ro)
        .map(|r| r.root)
        .map_err(|source| MigrateError::Restore {
            dir: d.to_path_buf(),
            source: Box::new(source),
        })
}
