//! The source side (`stasis migrate`): pre-copy iterations through the page-server protocol
//! on the control connection, the final dump leaving the tree stopped, and the switch.
//!
//! ```text
//!  connect + Hello ─► Welcome (else: error, nothing was touched)
//!  it-0, it-1, ...: predump::run (pages → the stream as a page-server session, ps_socket =
//!                   a duplicate of the control socket), local files → File frames,
//!                   IterationDone, convergence::record until it says stop
//!  final: engine::run (leave_running + leave_stopped: the tree is SIGSTOPped and released)
//!         ─► File frames ─► Final ─► Result
//!  "running": SIGKILL every pid of the tree      anything else: SIGCONT (runs on), error
//! ```
//! Local images (what is not pages) live in a scratch directory removed at the end.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{self, Message};
use super::convergence::{Convergence, Policy, Sample, Stop};
use super::{MigrateError, Result};
use crate::dump::options::{DumpOptions, PageServerAddr};
use crate::dump::ptrace_backend::PtraceBackend;
use crate::pages::pack::PackKey;

/// What `stasis migrate` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Root of the tree (`-t`).
    pub pid: i32,
    /// The destination (`--to ADDR:PORT`).
    pub to: String,
    pub policy: Policy,
    /// zstd level the destination packs the pages files with (`--compress`).
    pub compress: Option<i32>,
    /// `--encrypt-key`: proves the key to the destination, which seals its pages files.
    pub key: Option<Arc<PackKey>>,
    /// `--tcp-established`.
    pub tcp_established: bool,
    /// Scratch directory for the images that are not pages: created (it must not exist) and
    /// removed at the end.
    pub work_dir: PathBuf,
    /// Freeze timeout (`--timeout`).
    pub timeout: Option<Duration>,
    /// Print a progress line (the command line sets it on a terminal).
    pub progress: bool,
    /// `--profile`: the Chrome trace of the migration.
    pub profile: Option<PathBuf>,
}

/// What a migration did.
#[derive(Debug)]
pub struct MigrateReport {
    pub iterations: Vec<Sample>,
    pub stop: Stop,
    /// Frozen time of the final dump (µs).
    pub final_frozen_us: u64,
    /// From the final freeze until the destination said "running" (µs): the downtime.
    pub downtime_us: u64,
    pub total_us: u64,
    /// The destination's message ("running, root PID N").
    pub remote: String,
    /// The tree runs on the destination (false: `migrate-receive` without `--restore` took
    /// the images, the source copy runs on).
    pub moved: bool,
}

struct Link {
    peer: String,
    stream: TcpStream,
    /// Unbuffered: page-session answers are read from the same stream (see the destination).
    reader: TcpStream,
}

impl Link {
    fn connect(to: &str) -> Result<Link> {
        let err = |what: String| MigrateError::Connect {
            peer: to.to_string(),
            what,
        };
        let addrs: Vec<_> = to
            .to_socket_addrs()
            .map_err(|e| err(format!("resolve: {e}")))?
            .collect();
        let mut last = String::from("the address resolves to nothing");
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let reader = s.try_clone().map_err(|e| err(format!("dup: {e}")))?;
                    return Ok(Link {
                        peer: to.to_string(),
                        stream: s,
                        reader,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(err(last))
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        control::write_frame(&mut self.stream, m).map_err(|source| MigrateError::Control {
            peer: self.peer.clone(),
            source,
        })
    }

    fn recv(&mut self) -> Result<Message> {
        control::read_frame(&mut self.reader).map_err(|source| MigrateError::Control {
            peer: self.peer.clone(),
            source,
        })
    }

    /// Ends a page-server session a failed dump left open (FORCE_CLOSE, its answer awaited
    /// a few seconds), so that the destination reads the next frame as a frame. Best effort:
    /// a session cut inside a page run makes the destination fail on its own.
    fn end_session(&mut self) {
        use crate::pages::proto::{Header, PS_IOV_FORCE_CLOSE};
        let h = Header::new(PS_IOV_FORCE_CLOSE, 0, 0, 0, 0).encode();
        if self.stream.write_all(&h).is_err() {
            return;
        }
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = [0u8; 4];
        let _ = std::io::Read::read_exact(&mut self.reader, &mut answer);
        let _ = self.stream.set_read_timeout(None);
    }

    /// A duplicate of the socket, as the raw fd a dump's `ps_socket` takes over.
    fn page_socket(&self) -> Result<i32> {
        let fd = self
            .stream
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| MigrateError::Connect {
                peer: self.peer.clone(),
                what: format!("dup: {e}"),
            })?;
        Ok(fd.into_raw_fd())
    }
}

/// Starts iteration `index` into directory `name` (`parent`: the previous one's, empty for
/// the first): the local directory made, the destination told; returns the dump options
/// every iteration shares (pages to a page-server session on the link, the parent link).
fn begin_iteration(
    o: &MigrateOptions,
    link: &mut Link,
    index: u32,
    name: &str,
    parent: &str,
) -> Result<DumpOptions> {
    let dir = o.work_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| MigrateError::io("create", &dir, e))?;
    link.send(&Message::Iteration {
        index,
        dir: name.to_string(),
        parent: parent.to_string(),
    })?;
    Ok(DumpOptions {
        pid: o.pid,
        images_dir: dir,
        leave_running: true,
        timeout: o.timeout,
        prev_images_dir: (!parent.is_empty()).then(|| PathBuf::from(format!("../{parent}"))),
        page_server: Some(PageServerAddr {
            address: link.peer.clone(),
            port: 0,
            ps_socket: Some(link.page_socket()?),
            // The migration's own stream: the key proof, not TLS, guards it.
            tls: None,
        }),
        ..Default::default()
    })
}

/// The local files of an iteration that travel as `File` frames: every regular file but
/// the records the source keeps for itself (what it sent, the tracker, logs).
fn local_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| MigrateError::io("read directory", dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep =
            name.starts_with("sent-") || name == "dirty-tracker.json" || name.ends_with(".log");
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) && !keep {
            out.push((name, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn send_files(link: &mut Link, dir_name: &str, dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for (name, path) in local_files(dir)? {
        let data = std::fs::read(&path).map_err(|e| MigrateError::io("read", &path, e))?;
        bytes += data.len() as u64;
        link.send(&Message::File {
            dir: dir_name.to_string(),
            name,
            data,
        })?;
    }
    Ok(bytes)
}

/// Stops the dirty tracker recorded in `dir` (the chain ends without a final dump).
fn stop_tracker(dir: &Path) {
    if let Some(c) = crate::dump::dirty::client::TrackerClient::find(dir) {
        if let Err(e) = c.stop() {
            tracing::warn!("stop the dirty tracker: {e}");
        }
    }
}

fn signal_all(pids: &[i32], sig: nix::sys::signal::Signal) {
    for &p in pids {
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig) {
            tracing::warn!("{sig} to {p}: {e}");
        }
    }
}

fn progress(c: &Convergence, index: usize, s: &Sample) {
    let rate = c.dirty_rate().map_or("-".into(), |r| format!("{r:.0}"));
    let pred = c
        .predicted_downtime_us()
        .map_or("-".into(), |p| format!("{} ms", p / 1000));
    let mut e = std::io::stderr();
    let _ = write!(
        e,
        "\riteration {index}: {} dirty pages, {rate} pages/s, predicted downtime {pred}   ",
        s.pages
    );
    let _ = e.flush();
}

/// Migrates the tree of `o.pid` to `o.to`.
pub fn migrate(o: &MigrateOptions) -> Result<MigrateReport> {
    let prof_t0 = Instant::now();
    let mut trace = Trace::default();
    let mut link = Link::connect(&o.to)?;
    let auth = match &o.key {
        Some(k) => super::auth::prove(k).map_err(MigrateError::Usage)?,
        None => Vec::new(),
    };
    let flags = if o.tcp_established {
        control::FLAG_TCP_ESTABLISHED
    } else {
        0
    };
    link.send(&Message::Hello {
        version: control::VERSION,
        flags,
        compress: o.compress.unwrap_or(0),
        auth,
    })?;
    match link.recv()? {
        Message::Welcome => {}
        Message::Refuse { reason } => return Err(MigrateError::Refused(reason)),
        m => {
            return Err(MigrateError::Protocol {
                peer: link.peer.clone(),
                what: format!("{m:?} instead of Welcome"),
            })
        }
    }
    std::fs::create_dir_all(&o.work_dir).map_err(|e| MigrateError::io("create", &o.work_dir, e))?;
    let result = run(o, &mut link, &mut trace, prof_t0);
    if let Err(e) = &result {
        let _ = link.send(&Message::Abort {
            reason: e.to_string(),
        });
    }
    if let Some(p) = &o.profile {
        if let Err(e) = std::fs::write(p, trace.chrome().to_string()) {
            tracing::warn!("--profile {}: {e}", p.display());
        }
    }
    let _ = std::fs::remove_dir_all(&o.work_dir);
    result
}

fn run(
    o: &MigrateOptions,
    link: &mut Link,
    trace: &mut Trace,
    t0: Instant,
) -> Result<MigrateReport> {
    let us = |t: Instant| t.duration_since(t0).as_micros() as u64;
    let mut conv = Convergence::new(o.policy);
    let mut last_start: Option<Instant> = None;
    let mut index = 0u32;
    let stop = loop {
        let name = format!("it-{index}");
        let parent = if index == 0 {
            String::new()
        } else {
            format!("it-{}", index - 1)
        };
        let start = Instant::now();
        let opts = DumpOptions {
            track_mem: true,
            ..begin_iteration(o, link, index, &name, &parent)?
        };
        let dir = opts.images_dir.clone();
        let rep = crate::dump::predump::run(&opts, &mut PtraceBackend).map_err(|source| {
            link.end_session();
            if index > 0 {
                stop_tracker(&o.work_dir.join(&parent));
            }
            MigrateError::Dump {
                step: "pre-dump",
                pid: o.pid,
                source: Box::new(source),
            }
        })?;
        let sent = send_files(link, &name, &dir).inspect_err(|_| stop_tracker(&dir))?;
        let s = &rep.stats;
        let sample = Sample {
            pages: s.pages.pages_written,
            bytes: s.pages.pages_written * 4096 + sent,
            frozen_us: s.frozen_time,
            copy_us: s.memwrite_time,
            window_us: last_start.map_or(0, |l| start.duration_since(l).as_micros() as u64),
        };
        last_start = Some(start);
        link.send(&Message::IterationDone {
            index,
            pages: sample.pages,
            bytes: sample.bytes,
            micros: start.elapsed().as_micros() as u64,
        })
        .inspect_err(|_| stop_tracker(&dir))?;
        trace.span(&format!("pre-dump {index}"), us(start), start.elapsed());
        let decision = conv.record(sample);
        if o.progress {
            progress(&conv, index as usize, &sample);
        }
        tracing::info!(
            "iteration {index}: {} pages, frozen {} us, copied in {} us, rate {:?} pages/s, predicted downtime {:?} us",
            sample.pages,
            sample.frozen_us,
            sample.copy_us,
            conv.dirty_rate(),
            conv.predicted_downtime_us()
        );
        index += 1;
        if let Some(stop) = decision {
            break stop;
        }
    };
    if o.progress {
        eprintln!();
    }
    tracing::info!("pre-copy stopped after {index} iterations: {stop}");
    // The final dump: frozen, then left stopped (SIGSTOP) and released, never killed here.
    let parent = format!("it-{}", index - 1);
    let name = "final".to_string();
    let t_final = Instant::now();
    let opts = DumpOptions {
        leave_stopped: true,
        tcp_established: o.tcp_established,
        ..begin_iteration(o, link, index, &name, &parent)?
    };
    let dir = opts.images_dir.clone();
    let rep = crate::dump::engine::run(&opts, &mut PtraceBackend).map_err(|source| {
        // A failed dump released the tree running; the chain's tracker goes.
        link.end_session();
        stop_tracker(&o.work_dir.join(&parent));
        MigrateError::Dump {
            step: "final dump",
            pid: o.pid,
            source: Box::new(source),
        }
    })?;
    trace.span(
        "final dump (frozen)",
        us(t_final),
        Duration::from_micros(rep.stats.frozen_time),
    );
    // From here the tree is stopped: it is resumed unless the destination says "running",
    // also if this process dies before it knows (the guardian's SIGCONT).
    let pids = rep.pids.clone();
    let mut guard = crate::sys::continue_guard::ContinueGuard::spawn(&pids)
        .inspect_err(|e| tracing::warn!("no guardian for the stopped tree: {e}"))
        .ok();
    crate::sys::stop_point::stop_point("migrate-stopped");
    let switch = (|| {
        let t = Instant::now();
        send_files(link, &name, &dir)?;
        link.send(&Message::Final { dir: name.clone() })?;
        trace.span("final images sent", us(t), t.elapsed());
        let t = Instant::now();
        let answer = link.recv();
        trace.span("destination restore", us(t), t.elapsed());
        match answer? {
            Message::Result {
                ok: true,
                running,
                message,
            } => Ok((running, message)),
            Message::Result { message, .. } => Err(MigrateError::RemoteRestore(message)),
            m => Err(MigrateError::Protocol {
                peer: link.peer.clone(),
                what: format!("{m:?} instead of Result"),
            }),
        }
    })();
    match switch {
        Ok((running, remote)) => {
            if running {
                signal_all(&pids, nix::sys::signal::Signal::SIGKILL);
                tracing::info!(
                    "the destination runs the tree ({remote}); the source copy is killed"
                );
            } else {
                // Images delivered, nothing restored there: the source copy runs on.
                signal_all(&pids, nix::sys::signal::Signal::SIGCONT);
                tracing::info!("the destination has the images ({remote}); the source runs on");
            }
            if let Some(g) = guard.as_mut() {
                g.dismiss();
            }
            let downtime_us = t_final.elapsed().as_micros() as u64;
            Ok(MigrateReport {
                moved: running,
                iterations: conv.samples().to_vec(),
                stop,
                final_frozen_us: rep.stats.frozen_time,
                downtime_us,
                total_us: t0.elapsed().as_micros() as u64,
                remote,
            })
        }
        Err(e) => {
            signal_all(&pids, nix::sys::signal::Signal::SIGCONT);
            if let Some(g) = guard.as_mut() {
                g.dismiss();
            }
            tracing::error!(
                "migration failed after the final dump ({e}): the source tree runs again"
            );
            Err(e)
        }
    }
}

/// The Chrome trace of the migration (`--profile`).
#[derive(Default)]
struct Trace {
    spans: Vec<(String, u64, u64)>,
}

impl Trace {
    fn span(&mut self, name: &str, start_us: u64, d: Duration) {
        self.spans
            .push((name.to_string(), start_us, d.as_micros() as u64));
    }

    fn chrome(&self) -> serde_json::Value {
        let events: Vec<_> = self
            .spans
            .iter()
            .map(|(n, s, d)| {
                serde_json::json!({"name": n, "cat": "migrate", "ph": "X", "ts": s, "dur": d,
                                   "pid": 1, "tid": 1})
            })
            .collect();
        serde_json::json!({ "traceEvents": events })
    }
}
