//! End to end tests of the restore features of issue 4, each with a workload of its own
//! (C sources in `tests/restore_features/`, built static at test time):
//!
//! * creds: a task that dropped to other uids/gids/groups with a few capabilities kept is
//!   dumped and restored by `stasis`, and its creds are identical (seen from /proc and by
//!   the workload itself);
//! * vdso proxy: the dumped vdso is rewritten into one of another kernel (one page longer,
//!   code that traps), so the restore must proxy it; the workload keeps reading the clocks
//!   through the vdso;
//! * shell job: a job on a pty, dumped with `-j`, restored with `-j` on another pty, keeps
//!   printing its counter there and reads a line typed on the new master.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::deadline::with_deadline;
use common::dump::*;
use common::lock::restore_lock;

/// Scratch directory of these tests (world-writable: workloads drop their uid).
fn work_dir() -> PathBuf {
    let d = PathBuf::from("/tmp/stasis-features-tests");
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Builds workload `name` (static, so its layout does not depend on this machine's libc).
fn build(name: &str) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/restore_features/{name}.c"));
    let out = work_dir().join(format!("bin/{name}-{}", std::process::id()));
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc {name}.c failed");
    out
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn wait_file(p: &Path, secs: u64, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: no {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Dumps `pid` into `dir` (the task is killed) and waits until it is gone.
fn dump(pid: i32, dir: &Path, extra: &[&str]) {
    stasis_dump(pid, dir, extra);
    wait_gone(&[pid], 10, "dumped task");
}

/// Sends SIGUSR2 and returns the verdict written to `result`.
fn verdict(pid: i32, result: &Path) -> String {
    let _ = std::fs::remove_file(result);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    wait_file(result, 10, "verdict")
}

/// Builds workload `name`, then, under a 120 s deadline that kills it, starts it at a pid
/// from `base` with its verdict file `result` (in [`work_dir`]) as argument, waits for
/// `RESULT.ready` and runs `body(workload, result)`.
fn with_workload(
    name: &'static str,
    base: i32,
    result: String,
    body: impl FnOnce(&Workload, PathBuf) + Send + 'static,
) {
    let bin = build(name);
    let pid_cell: std::sync::Arc<std::sync::Mutex<i32>> = Default::default();
    let p2 = pid_cell.clone();
    with_deadline(
        120,
        // 0 until launched: kill(0) would hit our own process group.
        move || match *p2.lock().unwrap() {
            0 => {}
            pid => kill_pid(pid),
        },
        move || {
            let result = work_dir().join(result);
            let ready = PathBuf::from(format!("{}.ready", result.display()));
            let _ = std::fs::remove_file(&ready);
            let w = launch_program(
                name,
                base,
                bin.to_str().unwrap(),
                &[result.to_str().unwrap()],
            );
            *pid_cell.lock().unwrap() = w.pid;
            wait_file(&ready, 20, &format!("{name} workload"));
            body(&w, result)
        },
    )
}

/// The creds lines of every thread of `pid`, as /proc shows them.
fn proc_creds(pid: i32) -> Vec<String> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let keys = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
    ];
    tids.iter()
        .map(|t| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
            s.lines()
                .filter(|l| keys.iter().any(|k| l.starts_with(k)))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[test]
fn creds_survive_dump_and_restore() {
    let _lock = restore_lock();
    let result = format!("creds-{}.result", std::process::id());
    with_workload("creds", 29100, result, |w, result| {
        let before = proc_creds(w.pid);
        assert_eq!(before.len(), 2, "two threads");
        assert!(
            before[0].contains("Uid:\t2001\t2002\t2003\t2003"),
            "{}",
            before[0]
        );
        assert!(before[0].contains("Groups:\t100 200 300"), "{}", before[0]);
        assert!(before[0].contains("NoNewPrivs:\t1"), "{}", before[0]);
        let dir = tempfile::tempdir().unwrap();
        dump(w.pid, dir.path(), &[]);
        stasis_restore_detached(dir.path(), &[]);
        let after = proc_creds(w.pid);
        assert_eq!(before, after, "creds seen in /proc after the restore");
        let v = verdict(w.pid, &result);
        kill_pid(w.pid);
        assert_eq!(v, "PASS", "the workload's own check");
    })
}

fn crit_decode(img: &Path) -> serde_json::Value {
    let out = stasis_bin()
        .args(["crit", "decode", "-i"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "decode {}", img.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn crit_encode(v: &serde_json::Value, img: &Path) {
    let json = img.with_extension("json");
    std::fs::write(&json, serde_json::to_vec(v).unwrap()).unwrap();
    let st = stasis_bin()
        .args(["crit", "encode", "-i"])
        .arg(&json)
        .arg("-o")
        .arg(img)
        .status()
        .unwrap();
    assert!(st.success(), "encode {}", img.display());
    std::fs::remove_file(json).unwrap();
}

const VMA_VDSO: u64 = 1 << 3;
const VMA_VVAR: u64 = 1 << 12;
const PE_PRESENT: u64 = 4;

/// File range of section `name` of a little-endian ELF64 image.
fn elf_section(elf: &[u8], name: &str) -> Option<(usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + shstrndx * shentsize + 24);
    (0..shnum).find_map(|i| {
        let sh = shoff + i * shentsize;
        let n = strtab + u32_at(sh);
        let end = n + elf[n..].iter().position(|&c| c == 0)?;
        (&elf[n..end] == name.as_bytes()).then(|| (u64_at(sh + 24), u64_at(sh + 32)))
    })
}

/// Turns the dumped vdso of task `pid` in `dir` into one of "another kernel": one page longer
/// (the extra page traps) and every function's code replaced by `int3`, symbol table kept (the
/// task's libc looked its entry points up in it). The running kernel's vdso then differs in
/// size and content, so only a proxy can work: entry points patched to jump into the running
/// vdso. With `drop_vvar` the image also loses its `[vvar]` VMA, as on kernels that have none.
/// Returns the image's vdso start.
fn rewrite_vdso(dir: &Path, pid: i32, drop_vvar: bool) -> u64 {
    let mm_img = dir.join(format!("mm-{pid}.img"));
    let pm_img = dir.join(format!("pagemap-{pid}.img"));
    let mut mm = crit_decode(&mm_img);
    let mut pm = crit_decode(&pm_img);
    let vmas = mm["entries"][0]["vmas"].as_array_mut().unwrap();
    let vi = vmas
        .iter()
        .position(|v| v["status"].as_u64().unwrap() & VMA_VDSO != 0)
        .expect("a vdso vma in the image");
    let (start, end) = (
        vmas[vi]["start"].as_u64().unwrap(),
        vmas[vi]["end"].as_u64().unwrap(),
    );
    assert!(
        vmas.get(vi + 1)
            .is_none_or(|n| n["start"].as_u64().unwrap() >= end + 4096),
        "no room after the vdso"
    );
    vmas[vi]["end"] = (end + 4096).into();
    if drop_vvar {
        let before = vmas.len();
        vmas.retain(|v| v["status"].as_u64().unwrap() & VMA_VVAR == 0);
        assert_eq!(vmas.len(), before - 1, "the image had a [vvar] vma");
    }
    // Find the vdso's pages and rebuild the pages image with the new vdso.
    let pages_id = pm["entries"][0]["pages_id"].as_u64().unwrap();
    let pages_img = dir.join(format!("pages-{pages_id}.img"));
    let pages = std::fs::read(&pages_img).unwrap();
    let mut off = 0usize;
    let mut found = None;
    for (i, e) in pm["entries"].as_array().unwrap().iter().enumerate().skip(1) {
        let nr = e["nr_pages"].as_u64().unwrap() as usize;
        if e["flags"].as_u64().unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
            continue;
        }
        if e["vaddr"].as_u64().unwrap() == start {
            assert_eq!(
                nr as u64 * 4096,
                end - start,
                "one pagemap run is the whole vdso"
            );
            found = Some((i, off));
        }
        off += nr * 4096;
    }
    let (entry, at) = found.expect("the vdso's pages are in the image");
    let len = (end - start) as usize;
    let mut vdso = pages[at..at + len].to_vec();
    let syms = stasis::restore::vdso::vdso_symbols(&vdso).unwrap();
    assert!(syms.iter().any(|(n, _)| n == "__vdso_clock_gettime"));
    let (toff, tlen) = elf_section(&vdso, ".text").expect("vdso .text");
    vdso[toff..toff + tlen].fill(0xcc);
    vdso.extend_from_slice(&[0xcc; 4096]);
    let mut new_pages = pages[..at].to_vec();
    new_pages.extend_from_slice(&vdso);
    new_pages.extend_from_slice(&pages[at + len..]);
    std::fs::write(&pages_img, new_pages).unwrap();
    pm["entries"][entry]["nr_pages"] = ((len / 4096 + 1) as u64).into();
    crit_encode(&mm, &mm_img);
    crit_encode(&pm, &pm_img);
    start
}

/// The start of the `[vdso]` mapping of `pid` and the mapping found at `addr`.
fn maps_of(pid: i32, addr: u64) -> (u64, String) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let range = |l: &str| {
        let (s, e) = l
            .split_whitespace()
            .next()
            .unwrap()
            .split_once('-')
            .unwrap();
        (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        )
    };
    let vdso = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .map(|l| range(l).0)
        .expect("a [vdso] mapping");
    let at = maps
        .lines()
        .find(|l| {
            let (s, e) = range(l);
            s <= addr && addr < e
        })
        .unwrap_or("")
        .to_string();
    (vdso, at)
}

fn vdso_proxy_round_trip(drop_vvar: bool, base: i32) {
    let _lock = restore_lock();
    let result = format!("vdso-{}-{base}.result", std::process::id());
    with_workload("vdso", base, result, move |w, result| {
        std::thread::sleep(Duration::from_millis(100));
        let dir = tempfile::tempdir().unwrap();
        dump(w.pid, dir.path(), &[]);
        let old = rewrite_vdso(dir.path(), w.pid, drop_vvar);
        stasis_restore_detached(dir.path(), &[]);
        let (running, at_old) = maps_of(w.pid, old);
        assert_ne!(running, old, "the running vdso was moved elsewhere (proxy)");
        assert!(
            at_old.contains(" r-xp ") && !at_old.ends_with("[vdso]"),
            "the image's vdso is restored as a private copy: {at_old}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let v = verdict(w.pid, &result);
        kill_pid(w.pid);
        let _ = std::fs::remove_file(&result);
        assert_eq!(v, "PASS", "clocks through the proxied vdso");
    })
}

#[test]
fn vdso_proxy_when_the_dumped_vdso_differs() {
    vdso_proxy_round_trip(false, 29200);
}

#[test]
fn vdso_proxy_for_an_image_without_vvar() {
    vdso_proxy_round_trip(true, 29300);
}

/// The same rewrite of a CRIU 4.2 fixture image (fx-loop): restored through the proxy, it
/// passes its own checks.
#[test]
fn vdso_proxy_restores_a_criu_image_with_another_vdso() {
    let run = common::restore::fixture_run("fx-loop");
    let dir = &run.dir;
    let (root, _) = common::restore::manifest("fx-loop");
    let old = rewrite_vdso(dir, root, false);
    let pidfile = common::restore::restore_detached_with_pidfile(dir);
    let (running, at_old) = maps_of(root, old);
    assert_ne!(running, old, "the running vdso was moved elsewhere (proxy)");
    assert!(at_old.contains(" r-xp "), "the image's vdso copy: {at_old}");
    let (ok, text) = common::restore::verify("fx-loop", &pidfile);
    assert!(ok, "fx-loop through a proxied vdso: {text}");
    drop(run);
}

/// Reads what the terminal shows on `master` until `done(text)` or `secs` pass.
fn read_tty_until(master: &std::os::fd::OwnedFd, secs: u64, done: impl Fn(&str) -> bool) -> String {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut text = String::new();
    let t0 = Instant::now();
    while !done(&text) && t0.elapsed() < Duration::from_secs(secs) {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if let Ok(1) = poll(&mut fds, PollTimeout::from(100u16)) {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(master.as_fd(), &mut buf) {
                Ok(n) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
    }
    text
}

/// The `count N` values printed so far.
fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("count ")?.parse().ok())
        .collect()
}

/// Fields of /proc/PID/stat after the command: (pgrp, session, tty_nr, tpgid).
fn stat_ids(pid: i32) -> (i32, i32, u64, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        f[4].parse().unwrap(),
        f[5].parse().unwrap(),
    )
}

/// `tty_nr` as /proc encodes the device of `fd`.
fn tty_nr(fd: &std::os::fd::OwnedFd) -> u64 {
    let st = nix::sys::stat::fstat(fd).unwrap();
    let (ma, mi) = (
        libc::major(st.st_rdev) as u64,
        libc::minor(st.st_rdev) as u64,
    );
    (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12)
}

#[test]
fn shell_job_moves_to_the_restorers_terminal() {
    shell_job_round_trip(true);
}

/// `stasis restore -j` whose terminal (fd 0) is not its controlling one: the job gets the
/// terminal as its descriptors, prints and reads there, without job control.
#[test]
fn shell_job_on_a_terminal_that_is_not_the_restorers_controlling_one() {
    shell_job_round_trip(false);
}

fn shell_job_round_trip(ctty: bool) {
    let _lock = restore_lock();
    let bin = build("ttyjob");
    let pids: std::sync::Arc<std::sync::Mutex<Vec<i32>>> = Default::default();
    let p2 = pids.clone();
    with_deadline(
        120,
        move || p2.lock().unwrap().iter().for_each(|&p| kill_pid(p)),
        move || {
            let wd = work_dir();
            // The "old" terminal: a shell in its own session runs the job in the foreground.
            let old = nix::pty::openpty(None, None).unwrap();
            let old_path = nix::unistd::ttyname(&old.slave).unwrap();
            let pidfile = wd.join(format!("ttyjob-{}.pid", std::process::id()));
            let _ = std::fs::remove_file(&pidfile);
            let mut shell = Command::new(&bin)
                .arg("shell")
                .arg(&old_path)
                .arg(&pidfile)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            drop(old.slave);
            pids.lock().unwrap().push(shell.id() as i32);
            let job: i32 = wait_file(&pidfile, 20, "shell").trim().parse().unwrap();
            pids.lock().unwrap().push(job);
            let seen = read_tty_until(&old.master, 20, |t| counts(t).len() >= 5);
            assert!(
                counts(&seen).len() >= 5,
                "the job prints its counter: {seen:?}"
            );
            let (pgrp, sid, _, tpgid) = stat_ids(job);
            assert_eq!(
                (pgrp, sid, tpgid),
                (job, shell.id() as i32, job),
                "a foreground job"
            );

            let dir = tempfile::tempdir().unwrap();
            dump(job, dir.path(), &["-j"]);
            let last = *counts(&read_tty_until(&old.master, 1, |_| false))
                .last()
                .unwrap_or(counts(&seen).last().unwrap());
            // The images say what CRIU writes for a shell job: the session is outside.
            let pstree = crit_decode(&dir.path().join("pstree.img"));
            assert_eq!(pstree["entries"][0]["sid"], shell.id() as i64);
            let info = crit_decode(&dir.path().join("tty-info.img"));
            let e = &info["entries"][0];
            let index: u64 = old_path
                .to_str()
                .unwrap()
                .trim_start_matches("/dev/pts/")
                .parse()
                .unwrap();
            assert_eq!(e["id"], index << 1, "slave side: {e}");
            assert_eq!(e["sid"], shell.id() as i64, "{e}");
            assert_eq!(e["pgrp"], job as i64, "{e}");
            assert_eq!(e["pty"]["index"], index, "{e}");
            assert_eq!(
                info["entries"].as_array().unwrap().len(),
                1,
                "no master: {info}"
            );
            let files = crit_decode(&dir.path().join("files.img"));
            let ttys: Vec<_> = files["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f.get("tty").is_some())
                .collect();
            assert_eq!(ttys.len(), 1, "{files}");
            assert_eq!(ttys[0]["tty"]["tty_info_id"], index << 1);

            // The new terminal: `stasis restore -j` runs on it as a session leader.
            let new = nix::pty::openpty(None, None).unwrap();
            let slave =
                |fd: &std::os::fd::OwnedFd| std::process::Stdio::from(fd.try_clone().unwrap());
            let mut restorer = Command::new("setsid")
                .args(if ctty { &["-c"][..] } else { &[][..] })
                .arg(env!("CARGO_BIN_EXE_stasis"))
                .args(["restore", "-j", "-D"])
                .arg(dir.path())
                .args(["-o", "restore.log", "-v4"])
                .stdin(slave(&new.slave))
                .stdout(slave(&new.slave))
                .stderr(slave(&new.slave))
                .spawn()
                .unwrap();
            pids.lock().unwrap().push(restorer.id() as i32);
            let new_nr = tty_nr(&new.slave);
            drop(new.slave);
            let out = read_tty_until(&new.master, 20, |t| {
                counts(t).iter().filter(|&&n| n > last).count() >= 3
            });
            let log =
                || std::fs::read_to_string(dir.path().join("restore.log")).unwrap_or_default();
            assert!(
                counts(&out).iter().filter(|&&n| n > last).count() >= 3,
                "the restored job prints on the new terminal, after {last}: {out:?}\n{}",
                log()
            );
            assert!(
                counts(&out).first().is_some_and(|&n| n <= last + 2),
                "the counter continues ({last} before): {out:?}"
            );
            let (pgrp, sid, nr, tpgid) = stat_ids(job);
            assert_eq!(sid, restorer.id() as i32, "in the restorer's session");
            assert_eq!(pgrp, job, "still its own group");
            if ctty {
                assert_eq!(nr, new_nr, "controlling terminal: the new one");
                assert_eq!(tpgid, job, "the job is the terminal's foreground group");
            } else {
                assert_eq!(nr, 0, "no controlling terminal, as the restorer");
            }
            nix::unistd::write(&new.master, b"hello stasis\n").unwrap();
            let out = read_tty_until(&new.master, 10, |t| t.contains("got: hello stasis"));
            assert!(
                out.contains("got: hello stasis"),
                "the job reads the new terminal: {out:?}"
            );
            kill_pid(job);
            let t0 = Instant::now();
            let st = loop {
                if let Some(st) = restorer.try_wait().unwrap() {
                    break st;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "stasis restore did not exit"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(
                st.code(),
                Some(128 + 9),
                "stasis restore exits with the job's status"
            );
            kill_pid(shell.id() as i32);
            let _ = shell.wait();
            let _ = std::fs::remove_file(&pidfile);
        },
    )
}
