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

mod dump_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dump_support::*;

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

fn stasis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
}

/// The restore tests' lock: one restore at a time on this machine.
fn restore_lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::File::create("/tmp/stasis-restore-tests.lock").unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
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
    let out = stasis()
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["-o", "dump.log", "-v4"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default()
    );
    wait_gone(&[pid], 10, "dumped task");
}

/// `stasis restore -d` of `dir`.
fn restore_detached(dir: &Path) {
    let out = stasis()
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .args(["-o", "restore.log", "-v4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default()
    );
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
    let bin = build("creds");
    let pid_cell: std::sync::Arc<std::sync::Mutex<i32>> = Default::default();
    let p2 = pid_cell.clone();
    with_deadline(
        120,
        move || kill_pid(*p2.lock().unwrap()),
        move || {
            let wd = work_dir();
            let result = wd.join(format!("creds-{}.result", std::process::id()));
            let ready = PathBuf::from(format!("{}.ready", result.display()));
            let _ = std::fs::remove_file(&ready);
            let w = launch_program(
                "creds",
                29100,
                bin.to_str().unwrap(),
                &[result.to_str().unwrap()],
            );
            *pid_cell.lock().unwrap() = w.pid;
            wait_file(&ready, 20, "creds workload");
            let before = proc_creds(w.pid);
            assert_eq!(before.len(), 2, "two threads");
            assert!(
                before[0].contains("Uid:\t2001\t2002\t2003\t2003"),
                "{}",
                before[0]
            );
            assert!(before[0].contains("Groups:\t100 200 300"), "{}", before[0]);
            let dir = tempfile::tempdir().unwrap();
            dump(w.pid, dir.path(), &[]);
            restore_detached(dir.path());
            let after = proc_creds(w.pid);
            assert_eq!(before, after, "creds seen in /proc after the restore");
            let v = verdict(w.pid, &result);
            kill_pid(w.pid);
            assert_eq!(v, "PASS", "the workload's own check");
        },
    )
}

fn crit_decode(img: &Path) -> serde_json::Value {
    let out = stasis()
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
    let st = stasis()
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
    let bin = build("vdso");
    let pid_cell: std::sync::Arc<std::sync::Mutex<i32>> = Default::default();
    let p2 = pid_cell.clone();
    with_deadline(
        120,
        move || kill_pid(*p2.lock().unwrap()),
        move || {
            let wd = work_dir();
            let result = wd.join(format!("vdso-{}-{base}.result", std::process::id()));
            let ready = PathBuf::from(format!("{}.ready", result.display()));
            let _ = std::fs::remove_file(&ready);
            let w = launch_program(
                "vdso",
                base,
                bin.to_str().unwrap(),
                &[result.to_str().unwrap()],
            );
            *pid_cell.lock().unwrap() = w.pid;
            wait_file(&ready, 20, "vdso workload");
            std::thread::sleep(Duration::from_millis(100));
            let dir = tempfile::tempdir().unwrap();
            dump(w.pid, dir.path(), &[]);
            let old = rewrite_vdso(dir.path(), w.pid, drop_vvar);
            restore_detached(dir.path());
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
        },
    )
}

#[test]
fn vdso_proxy_when_the_dumped_vdso_differs() {
    vdso_proxy_round_trip(false, 29200);
}

#[test]
fn vdso_proxy_for_an_image_without_vvar() {
    vdso_proxy_round_trip(true, 29300);
}
