//! Up-front checks before anything is created: every PID/TID free, every file the images refer
//! to present and unchanged (mode always; size and ELF build-id when the image recorded them,
//! as CRIU does).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::RestoreError;
use super::plan::Plan;

/// Fails with the first PID or TID of the plan that exists now, naming its owner.
pub fn pids_free(plan: &Plan) -> Result<(), RestoreError> {
    for id in plan.all_ids() {
        let p = format!("/proc/{id}");
        // A task that just died (e.g. killed by the dump) keeps its PID until reaped: give
        // its parent a moment before calling the PID taken.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while Path::new(&p).exists() && is_dead(id) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if Path::new(&p).exists() {
            return Err(RestoreError::PidTaken {
                pid: id,
                owner: owner_of(id),
            });
        }
    }
    Ok(())
}

/// Whether `pid` is a zombie or dead task.
fn is_dead(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .map(String::from)
        })
        .is_some_and(|st| st == "Z" || st == "X")
}

/// Longest command line quoted in a message (longer ones end in "...").
const MAX_CMDLINE: usize = 120;

/// "comm (cmdline)" of a running task, for messages, with "(a thread of tgid N)" when `pid`
/// is a thread of another process.
pub fn owner_of(pid: i32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut cmd: String = String::from_utf8_lossy(&cmd)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if cmd.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE;
        while !cmd.is_char_boundary(cut) {
            cut -= 1;
        }
        cmd.truncate(cut);
        cmd.push_str("...");
    }
    // A thread of another process shows up as /proc/TID too.
    let tgid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Tgid:"))
                .and_then(|l| l[5..].trim().parse::<i32>().ok())
        })
        .unwrap_or(pid);
    let mut who = if tgid != pid {
        format!(" (a thread of tgid {tgid})")
    } else {
        String::new()
    };
    if is_dead(pid) {
        who.push_str(" (zombie, not reaped by its parent)");
    }
    format!("{} ({}){who}", comm.trim(), cmd)
}

/// Checks every regular file the images name (skipping ghost files, which restore recreates,
/// and the paths of terminals) but for the entries `skip` (given by `--inherit-fd`).
pub fn files_unchanged_except(
    plan: &Plan,
    skip: &std::collections::BTreeSet<u32>,
) -> Result<(), RestoreError> {
    // A terminal's path entry (`regf_id`): the pty it names is made by the restore.
    let tty_paths: std::collections::BTreeSet<u32> = plan
        .files
        .values()
        .filter_map(|f| f.tty.as_ref()?.regf_id)
        .collect();
    for (id, f) in &plan.files {
        let Some(reg) = &f.reg else { continue };
        if skip.contains(id) || tty_paths.contains(id) {
            continue;
        }
        // Ghosts are recreated; the tree's own /proc files appear with their tasks.
        if plan.ghosts.contains_key(id) || super::open_files::tree_proc_path(plan, &reg.name) {
            continue;
        }
        let host = super::root::host_path(&plan.root, &reg.name);
        let path = host.as_path();
        // An O_PATH descriptor of a symlink is the link itself.
        let link = reg.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK);
        let stat = if link {
            std::fs::symlink_metadata
        } else {
            std::fs::metadata
        };
        let md = stat(path).map_err(|e| RestoreError::FileMismatch {
            path: path.to_path_buf(),
            what: format!("cannot stat ({e})"),
        })?;
        if let Some(mode) = reg.mode {
            if md.mode() != mode {
                return Err(RestoreError::FileMismatch {
                    path: path.to_path_buf(),
                    what: format!("mode {:o}, the images expect {mode:o}", md.mode()),
                });
            }
        }
        if let Some(size) = reg.size {
            if md.is_file() && md.size() != size {
                return Err(RestoreError::FileMismatch {
                    path: path.to_path_buf(),
                    what: format!("size {}, the images expect {size}", md.size()),
                });
            }
        }
        if !reg.build_id.is_empty() && md.is_file() {
            let want: Vec<u8> = reg.build_id.iter().flat_map(|w| w.to_le_bytes()).collect();
            match elf_build_id(path) {
                Some(have) if have == want => {}
                Some(have) => {
                    return Err(RestoreError::FileMismatch {
                        path: path.to_path_buf(),
                        what: format!("build-id {} differs from {}", hex(&have), hex(&want)),
                    })
                }
                None => {
                    return Err(RestoreError::FileMismatch {
                        path: path.to_path_buf(),
                        what: "no ELF build-id, the images recorded one".into(),
                    })
                }
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The GNU build-id note of an ELF64 little-endian file (None if absent or not ELF).
pub fn elf_build_id(path: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut data = Vec::new();
    f.by_ref().take(64 << 20).read_to_end(&mut data).ok()?;
    let rd16 = |o: usize| {
        data.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let rd32 = |o: usize| {
        data.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let rd64 = |o: usize| {
        data.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])) as usize)
    };
    if data.get(0..4)? != b"\x7fELF" || data.get(4)? != &2 || data.get(5)? != &1 {
        return None;
    }
    let phoff = rd64(0x20)?;
    let phentsize = rd16(0x36)?;
    let phnum = rd16(0x38)?;
    for i in 0..phnum.min(256) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if rd32(ph)? != 4 {
            continue; // PT_NOTE
        }
        let off = rd64(ph + 8)?;
        let size = rd64(ph + 32)?;
        let mut p = off;
        let end = off.checked_add(size)?.min(data.len());
        while p + 12 <= end {
            let namesz = rd32(p)?;
            let descsz = rd32(p + 4)?;
            let ty = rd32(p + 8)?;
            let name_off = p + 12;
            let desc_off = name_off + namesz.div_ceil(4) * 4;
            let next = desc_off + descsz.div_ceil(4) * 4;
            if ty == 3 && data.get(name_off..name_off + namesz)? == b"GNU\0" {
                return data.get(desc_off..desc_off + descsz).map(|s| s.to_vec());
            }
            p = next;
        }
    }
    None
}
