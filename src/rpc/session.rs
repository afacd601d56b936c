//! One RPC session (CRIU's `cr_service_work`): requests in, responses out, until the client
//! closes the connection or a request that cannot be followed by another is served.
//!
//! ```text
//!  VERSION, FEATURE_CHECK, CHECK, CPUINFO_*, PAGE_SERVER   answered; another request may
//!                                                          follow when keep_open is set
//!  PRE_DUMP ─► PRE_DUMP ... ─► DUMP                        the chain of one session
//!  DUMP, RESTORE                                           the session's last request
//! ```
//!
//! DUMP and RESTORE run in this process (a restored tree's root is our child, or with
//! `rst_sibling` the client's); PRE_DUMP, CHECK-like requests and the page server run in a
//! forked worker as CRIU does, so that each has its own log and leaves nothing behind. A
//! failed request answers `success = false` with `cr_errmsg` (the error, naming the task or
//! file concerned) and `cr_errno` when the kernel gave one; the session never panics on a
//! request.

use std::ffi::OsString;
use std::sync::Arc;

use stasis_images::pb::{
    CriuDumpResp, CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp, CriuRestoreResp,
    CriuVersion,
};

use super::notify::RpcNotifier;
use super::opts::{self, Peer};
use super::wire::Conn;
use crate::cli::common::{self, Verb, VerbArgs};
use crate::cli::criu_options;

/// CRIU's errno for a request whose options cannot be honoured.
const EBADRQC: i32 = 56;

/// A failed request: what the response says.
#[derive(Debug, Clone)]
struct Failure {
    /// `cr_errno` (0: none).
    errno: i32,
    /// `cr_errmsg`.
    msg: String,
}

impl Failure {
    /// A request whose options are refused.
    fn opts(msg: impl std::fmt::Display) -> Self {
        Failure {
            errno: EBADRQC,
            msg: msg.to_string(),
        }
    }

    /// [`Failure::opts`], once the log is set up: also an `Error` line of the log.
    fn logged(msg: String) -> Self {
        tracing::error!("{msg}");
        Failure::opts(msg)
    }
}

/// The hook points of a request with `notify_scripts` also notify the client.
fn notifying(
    scripts: crate::action_scripts::ActionScripts,
    o: &CriuOpts,
    conn: &Arc<Conn>,
) -> crate::action_scripts::ActionScripts {
    if o.notify_scripts == Some(true) {
        scripts.with_notifier(Arc::new(RpcNotifier::new(conn.clone())))
    } else {
        scripts
    }
}

/// Runs a request's work; a panic in it becomes a failed answer instead of a session that
/// ends without one.
fn guarded<T>(work: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        let msg = format!("internal error: {what}");
        tracing::error!("{msg}");
        Err(Failure { errno: 0, msg })
    })
}

fn answer(ty: CriuReqType, result: &Result<(), Failure>) -> CriuResp {
    let mut r = CriuResp {
        r#type: ty as i32,
        success: result.is_ok(),
        ..Default::default()
    };
    if let Err(f) = result {
        r.cr_errno = (f.errno != 0).then_some(f.errno);
        r.cr_errmsg = Some(f.msg.clone());
    }
    r
}

/// Serves requests on `conn` until the session ends; returns the exit status (0 when the
/// last request succeeded). `swrk`: the client is our parent (`stasis swrk FD`), which allows
/// the options naming inherited descriptors.
pub fn serve(conn: Conn, swrk: bool) -> i32 {
    let conn = Arc::new(conn);
    let peer = match conn.peer_pid() {
        Ok(pid) => Peer { pid, swrk },
        Err(e) => {
            eprintln!("Error (rpc): {e}");
            return 1;
        }
    };
    loop {
        let req = match conn.recv_req() {
            Ok(Some(r)) => r,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("Error (rpc): {e}");
                send_err(&conn, &e.to_string());
                return 1;
            }
        };
        let keep_open = req.keep_open == Some(true);
        let Ok(ty) = CriuReqType::try_from(req.r#type) else {
            send_err(&conn, &format!("Invalid req: unknown type {}", req.r#type));
            return 1;
        };
        if keep_open && !may_keep_open(ty) {
            send_err(
                &conn,
                &format!("keep_open is not allowed for {}", ty.as_str_name()),
            );
            return 1;
        }
        let ok = match ty {
            CriuReqType::Version => send(&conn, &version()),
            CriuReqType::FeatureCheck => send(&conn, &feature_check(&req)),
            CriuReqType::Check => send(&conn, &answer(ty, &guarded(check))),
            CriuReqType::CpuinfoDump | CriuReqType::CpuinfoCheck => {
                let o = req.opts.clone().unwrap_or_default();
                in_worker(&conn, ty, || answer(ty, &guarded(|| cpuinfo(ty, &o, peer))))
            }
            CriuReqType::PreDump => pre_dump_chain(&conn, req, peer),
            CriuReqType::SinglePreDump => {
                let o = req.opts.clone().unwrap_or_default();
                in_worker(&conn, ty, || answer(ty, &guarded(|| pre_dump(&o, peer))))
            }
            CriuReqType::Dump => dump(&conn, &req, peer),
            CriuReqType::Restore => restore(&conn, &req, peer),
            CriuReqType::PageServer => page_server(&conn, &req, peer),
            other => {
                send_err(
                    &conn,
                    &format!("Invalid req: {} is not built", other.as_str_name()),
                );
                false
            }
        };
        if !(ok && keep_open) {
            return if ok { 0 } else { 1 };
        }
    }
}

/// CRIU allows `keep_open` only for the requests that leave nothing behind.
fn may_keep_open(ty: CriuReqType) -> bool {
    matches!(
        ty,
        CriuReqType::PageServer
            | CriuReqType::PageServerChld
            | CriuReqType::CpuinfoDump
            | CriuReqType::CpuinfoCheck
            | CriuReqType::FeatureCheck
            | CriuReqType::Version
    )
}

fn send(conn: &Conn, resp: &CriuResp) -> bool {
    match conn.send_resp(resp) {
        Ok(()) => resp.success,
        Err(e) => {
            tracing::error!("{e}");
            false
        }
    }
}

/// CRIU's `send_criu_err`: a failed EMPTY response.
fn send_err(conn: &Conn, msg: &str) {
    tracing::error!("RPC error: {msg}");
    let _ = conn.send_resp(&answer(
        CriuReqType::Empty,
        &Err(Failure {
            errno: 0,
            msg: msg.into(),
        }),
    ));
}

/// Runs `work` in a forked worker that sends its response itself; if the worker dies
/// without answering, the response says so. Returns whether the request succeeded.
fn in_worker(conn: &Conn, ty: CriuReqType, work: impl FnOnce() -> CriuResp) -> bool {
    use nix::sys::wait::{waitpid, WaitStatus};
    match crate::sys::daemon::fork_worker() {
        Ok(None) => {
            let resp = work();
            let code = match conn.send_resp(&resp) {
                Ok(()) if resp.success => 0,
                Ok(()) => 2,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
        Ok(Some(child)) => {
            let status = loop {
                match waitpid(nix::unistd::Pid::from_raw(child), None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => break r,
                }
            };
            let why = match status {
                Ok(WaitStatus::Exited(_, 0)) => return true,
                Ok(WaitStatus::Exited(_, 2)) => return false,
                Ok(s) => format!(
                    "the {} worker {child} ended without answering: {s:?}",
                    ty.as_str_name()
                ),
                Err(e) => format!("wait for the {} worker {child}: {e}", ty.as_str_name()),
            };
            send(conn, &answer(ty, &Err(Failure { errno: 0, msg: why })))
        }
        Err(e) => send(
            conn,
            &answer(
                ty,
                &Err(Failure {
                    errno: e as i32,
                    msg: format!("fork a worker for {}: {e}", ty.as_str_name()),
                }),
            ),
        ),
    }
}

/// From the request's options to a verb's parsed options, as the command line would have
/// them: the conversion to CRIU's options, config files, the refusals of what is not built,
/// the log (in the work directory, which becomes the current directory as with CRIU) and
/// the checks of the values.
fn setup<T: VerbArgs>(
    verb_name: &str,
    verb: Verb,
    o: &CriuOpts,
    peer: Peer,
    extra: &[&str],
) -> Result<T, Failure> {
    let mut logged = false;
    let r = setup_logged(verb_name, verb, o, peer, extra, &mut logged);
    if let (Err(f), false) = (&r, logged) {
        early_log(o, peer, &f.msg);
    }
    r
}

/// A failure before the log is set up still goes to the log file the client will read
/// (runc shows it): `log_file` (or criu.log) in the work directory, else standard error.
fn early_log(o: &CriuOpts, peer: Peer, msg: &str) {
    let fd_dir = |fd: i32| std::path::PathBuf::from(format!("/proc/{}/fd/{fd}", peer.pid));
    let dir = match (o.work_dir_fd, o.images_dir_fd, &o.images_dir) {
        (Some(fd), _, _) => Some(fd_dir(fd)),
        (None, fd, _) if fd != -1 => Some(fd_dir(fd)),
        (None, _, Some(d)) => Some(d.into()),
        _ => None,
    };
    let line = format!("Error (rpc): {msg}\n");
    let name = o.log_file.as_deref().unwrap_or("criu.log");
    let written = dir.filter(|_| !name.contains('/')).is_some_and(|d| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(name))
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .is_ok()
    });
    if !written {
        eprint!("{line}");
    }
}

fn setup_logged<T: VerbArgs>(
    verb_name: &str,
    verb: Verb,
    o: &CriuOpts,
    peer: Peer,
    extra: &[&str],
    logged: &mut bool,
) -> Result<T, Failure> {
    let mut args = opts::to_args(verb_name, o, peer).map_err(Failure::opts)?;
    args.splice(2..2, extra.iter().map(OsString::from));
    let mut args = common::normalize_args(args).map_err(Failure::opts)?;
    // A config file that does not exist is skipped, as CRIU does (runc always names
    // /etc/criu/runc.conf).
    if let Some(f) = o
        .config_file
        .as_ref()
        .filter(|f| std::path::Path::new(f).exists())
    {
        let conf = common::read_config(std::path::Path::new(f)).map_err(Failure::opts)?;
        opts::append_config(&mut args, &conf);
    }
    let (kept, refused) = criu_options::split_not_built(&args);
    let a: T = common::try_parse_verb(&kept).map_err(|e| {
        Failure::opts(
            e.render()
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid options")
                .trim_start_matches("error: "),
        )
    })?;
    let c = a.common();
    if c.images_dir.is_some() || c.work_dir.is_some() {
        let wd = c.work_dir();
        std::env::set_current_dir(&wd)
            .map_err(|e| Failure::opts(format!("Can't chdir to work_dir {}: {e}", wd.display())))?;
    }
    c.init_logging().map_err(Failure::opts)?;
    *logged = true;
    tracing::info!("RPC request: {}", display_args(&kept));
    common::check_parsed(c, &refused, verb).map_err(Failure::logged)?;
    Ok(a)
}

fn display_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Logs a failure of the engine (the log's `Error` line) and makes it the response's.
fn engine_failure(what: &str, msg: String, errno: Option<i32>) -> Failure {
    tracing::error!("{msg}");
    tracing::error!("{what} FAILED.");
    Failure {
        errno: errno.unwrap_or(0),
        msg,
    }
}

fn version() -> CriuResp {
    CriuResp {
        r#type: CriuReqType::Version as i32,
        success: true,
        version: Some(CriuVersion {
            major_number: 4,
            minor_number: 2,
            gitid: None,
            sublevel: None,
            extra: None,
            name: Some(format!("stasis {}", env!("CARGO_PKG_VERSION"))),
        }),
        ..Default::default()
    }
}

/// CRIU's feature check: each feature asked for is answered; the others are false.
fn feature_check(req: &CriuReq) -> CriuResp {
    let asked = req.features.unwrap_or_default();
    let mem_track = asked.mem_track == Some(true) && crate::dump::dirty::detect().is_ok();
    CriuResp {
        r#type: CriuReqType::FeatureCheck as i32,
        success: true,
        features: Some(CriuFeatures {
            mem_track: Some(mem_track),
            // Neither lazy pages nor the pidfd store are built.
            lazy_pages: Some(false),
            pidfd_store: Some(false),
        }),
        ..Default::default()
    }
}

/// `criu check`: the features every dump and restore needs.
fn check() -> Result<(), Failure> {
    use crate::cli::check::{Outcome, FEATURES};
    for f in FEATURES.iter().filter(|f| f.required) {
        if let Outcome::Missing(why) = (f.probe)() {
            return Err(Failure {
                errno: 0,
                msg: format!("{}: {why}", f.name),
            });
        }
    }
    Ok(())
}

/// CPUINFO_DUMP writes `cpuinfo.img`; CPUINFO_CHECK checks this host against it (CRIU's
/// default capabilities unless `cpu_cap` names others).
fn cpuinfo(ty: CriuReqType, o: &CriuOpts, peer: Peer) -> Result<(), Failure> {
    let a: crate::cli::check::CheckArgs = setup("check", Verb::Check, o, peer, &[])?;
    let dir = a.common.images_dir();
    let r = if ty == CriuReqType::CpuinfoDump {
        crate::cpuinfo::write(&dir)
    } else {
        let caps = match &a.common.criu.cpu_cap {
            Some(c) => crate::cpuinfo::option_caps(&Some(Some(c.clone()))),
            None => Ok(crate::cpuinfo::CAP_DEFAULT | crate::cpuinfo::CAP_IMAGE),
        };
        caps.and_then(|caps| crate::cpuinfo::check_dir(&dir, caps))
    };
    r.map_err(|e| Failure {
        errno: if ty == CriuReqType::CpuinfoCheck {
            libc::ENOTSUP
        } else {
            0
        },
        msg: e.to_string(),
    })
}

/// PRE_DUMP requests, each in a worker, until the DUMP that ends the chain.
fn pre_dump_chain(conn: &Arc<Conn>, first: CriuReq, peer: Peer) -> bool {
    let mut req = first;
    loop {
        let o = req.opts.clone().unwrap_or_default();
        let ty = CriuReqType::PreDump;
        if !in_worker(conn, ty, || answer(ty, &guarded(|| pre_dump(&o, peer)))) {
            return false;
        }
        req = match conn.recv_req() {
            Ok(Some(r)) => r,
            Ok(None) => return true,
            Err(e) => {
                eprintln!("Error (rpc): {e}");
                return false;
            }
        };
        match CriuReqType::try_from(req.r#type) {
            Ok(CriuReqType::PreDump) => continue,
            Ok(CriuReqType::Dump) => return dump(conn, &req, peer),
            _ => {
                send_err(conn, "Bad req seq");
                return false;
            }
        }
    }
}

fn pre_dump(o: &CriuOpts, peer: Peer) -> Result<(), Failure> {
    let a: crate::cli::predump::PreDumpArgs = setup("pre-dump", Verb::Dump, o, peer, &[])?;
    let opts = a.options().map_err(Failure::opts)?;
    let mut backend = crate::dump::ptrace_backend::PtraceBackend;
    crate::dump::predump::run(&opts, &mut backend)
        .map(|_| tracing::info!("Pre-dumping finished successfully"))
        .map_err(|e| engine_failure("Pre-dumping", e.to_string(), None))
}

/// DUMP: answered unless the client dumped itself and is not left running (as CRIU: it is
/// gone, or it is being restored).
fn dump(conn: &Arc<Conn>, req: &CriuReq, peer: Peer) -> bool {
    let o = req.opts.clone().unwrap_or_default();
    let self_dump = o.pid.unwrap_or(0) == 0;
    let result = guarded(|| run_dump(conn, &o, peer));
    let ok = result.is_ok();
    if o.leave_running == Some(true) || !self_dump || !ok {
        let mut resp = answer(CriuReqType::Dump, &result);
        resp.dump = Some(CriuDumpResp {
            restored: Some(false),
        });
        return send(conn, &resp);
    }
    ok
}

fn run_dump(conn: &Arc<Conn>, o: &CriuOpts, peer: Peer) -> Result<(), Failure> {
    let a: crate::cli::dump::DumpArgs = setup("dump", Verb::Dump, o, peer, &[])?;
    let mut opts = a.prepare().map_err(Failure::logged)?;
    opts.scripts = notifying(opts.scripts, o, conn);
    tracing::info!(
        "dumping tree {} into {}",
        opts.pid,
        opts.images_dir.display()
    );
    let mut backend = crate::dump::ptrace_backend::PtraceBackend;
    crate::dump::run(&opts, &mut backend)
        .map(|_| tracing::info!("Dumping finished successfully"))
        .map_err(|e| engine_failure("Dumping", e.to_string(), e.errno))
}

/// RESTORE, always detached (CRIU: the tree runs under the service, or with `rst_sibling`
/// under the client); the response carries the root's PID. With `exec_cmd`, this process
/// then becomes that command.
fn restore(conn: &Arc<Conn>, req: &CriuReq, peer: Peer) -> bool {
    let o = req.opts.clone().unwrap_or_default();
    let result = guarded(|| run_restore(conn, &o, peer));
    let pid = result.as_ref().map_or(-1, |(root, _)| *root);
    let mut resp = answer(
        CriuReqType::Restore,
        &result.as_ref().map(|_| ()).map_err(Failure::clone),
    );
    resp.restore = Some(CriuRestoreResp { pid });
    let ok = send(conn, &resp);
    if let (true, Ok((_, Some(cmd)))) = (ok, result) {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
        tracing::error!("Failed to exec command {:?}: {err}", cmd[0]);
        return false;
    }
    ok
}

/// The restored root, and the command to become (`exec_cmd`).
type Restored = (i32, Option<Vec<OsString>>);

fn run_restore(conn: &Arc<Conn>, o: &CriuOpts, peer: Peer) -> Result<Restored, Failure> {
    let a: crate::cli::restore::RestoreArgs =
        setup("restore", Verb::Restore, o, peer, &["--restore-detached"])?;
    let mut opts = a.options().map_err(Failure::logged)?;
    opts.scripts = notifying(opts.scripts, o, conn);
    let restored = crate::restore::restore(&opts).map_err(|e| {
        let errno = match &e {
            crate::restore::RestoreError::PidTaken { .. } => Some(libc::EEXIST),
            _ => None,
        };
        engine_failure("Restoring", format!("restore failed: {e}"), errno)
    })?;
    tracing::info!("Restore finished successfully. Tasks resumed.");
    let c = &a.common.criu;
    let cmd = (c.exec_cmd && !c.command.is_empty()).then(|| c.command.clone());
    Ok((restored.root, cmd))
}

/// PAGE_SERVER: a page server in the background, listening on `ps.address`/`ps.port`; the
/// response carries its PID and port.
fn page_server(conn: &Arc<Conn>, req: &CriuReq, peer: Peer) -> bool {
    let ty = CriuReqType::PageServer;
    let o = req.opts.clone().unwrap_or_default();
    let port = o.ps.as_ref().and_then(|p| p.port).unwrap_or(0);
    if port == 0 {
        return send(
            conn,
            &answer(
                ty,
                &Err(Failure::opts(
                    "page server: ps.port is required (choosing a free port is not built yet)",
                )),
            ),
        );
    }
    let pidfile = match tempfile_path() {
        Ok(p) => p,
        Err(e) => return send(conn, &answer(ty, &Err(Failure::opts(e)))),
    };
    in_worker(conn, ty, || {
        let me = std::process::id();
        let args = opts::to_args("page-server", &o, peer).map(|mut a| {
            a.splice(
                2..2,
                [
                    OsString::from("--daemon"),
                    "--pidfile".into(),
                    pidfile.clone().into(),
                ],
            );
            a
        });
        let status = match args.and_then(common::normalize_args) {
            Ok(a) => crate::cli::page_server::run(a),
            Err(e) => return answer(ty, &Err(Failure::opts(e))),
        };
        if std::process::id() != me {
            // The page server itself, once its session is over.
            std::process::exit(status);
        }
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let _ = std::fs::remove_file(&pidfile);
        match (status, pid) {
            (0, Some(pid)) => CriuResp {
                r#type: ty as i32,
                success: true,
                ps: Some(stasis_images::pb::CriuPageServerInfo {
                    pid: Some(pid),
                    port: Some(port),
                    ..Default::default()
                }),
                ..Default::default()
            },
            _ => answer(
                ty,
                &Err(Failure {
                    errno: 0,
                    msg: format!("page server failed to start (exit status {status}; see its log)"),
                }),
            ),
        }
    })
}

/// A fresh path for the page server's pidfile.
fn tempfile_path() -> Result<String, String> {
    let dir = std::env::temp_dir();
    let name = format!(
        "stasis-rpc-ps-{}-{}.pid",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    Ok(dir.join(name).to_string_lossy().into_owned())
}
