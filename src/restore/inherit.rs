//! `--inherit-fd fd[N]:RES` (CRIU's meaning): descriptor N, passed by the caller of
//! `stasis restore`, stands for the resource RES of the images; every descriptor of the tree
//! open on RES gets a duplicate of N instead of a file opened (or a pipe made) by the restore.
//!
//! ```text
//!  RES (the key CRIU prints)         files.img entry
//!  path/of/file  or /path/of/file    REG whose name is /path/of/file
//!  pipe:[ID]                         PIPE of pipe_id ID (every end of it)
//!  tty[RDEV:DEV]                     TTY whose tty-info has that rdev and dev (hex): an
//!                                    external terminal (`--external tty[...]` at dump)
//!  socket:[INO]                      refused by name: inheriting sockets is not built yet
//! ```
//! The duplicates are parked like the restore's own descriptors ([`Opened::desc`]), before
//! anything is opened, so that nothing else is opened for those entries. An N that is not
//! open, or a RES no entry has, is an error naming it.

use std::os::fd::{BorrowedFd, RawFd};

use super::error::RestoreError;
use super::model::Plan;
use super::open_files::Opened;

/// One `--inherit-fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    /// The caller's descriptor.
    pub fd: RawFd,
    /// The resource key.
    pub key: String,
}

impl InheritFd {
    /// Parses `fd[N]:RES`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let parsed = spec
            .strip_prefix("fd[")
            .and_then(|r| r.split_once("]:"))
            .and_then(|(n, key)| Some((n.parse::<RawFd>().ok()?, key)))
            .filter(|(n, key)| *n >= 0 && !key.is_empty());
        match parsed {
            Some((fd, key)) => Ok(InheritFd {
                fd,
                key: key.to_string(),
            }),
            None => Err(format!(
                "--inherit-fd: invalid argument {spec} (fd[N]:RESOURCE)"
            )),
        }
    }
}

/// The key CRIU gives files.img entry `f`, if it is of a kind that can be inherited
/// (`ttys`: the images' tty-info entries).
fn key_of(f: &super::img::msg::FileEntry, ttys: &crate::files::Extra) -> Option<String> {
    if let Some(r) = &f.reg {
        return Some(r.name.trim_start_matches('/').to_string());
    }
    if f.tty.is_some() {
        return crate::files::tty::info_of(ttys, f).map(crate::files::tty::ext_key);
    }
    f.pipe.as_ref().map(|p| format!("pipe:[{}]", p.pipe_id))
}

/// The tty-info entries of the images, if any (the keys of inherited terminals).
fn tty_infos(plan: &Plan, inherited: &[InheritFd]) -> crate::files::Extra {
    let mut x = crate::files::Extra::default();
    let path = plan.dir.join("tty-info.img");
    if inherited.iter().any(|i| i.key.starts_with("tty[")) && path.exists() {
        x.tty_info = stasis_images::framing::read_entries(&path).unwrap_or_default();
    }
    x
}

/// The files.img ids of the entries `inherited` stands for.
pub fn inherited_ids(plan: &Plan, inherited: &[InheritFd]) -> std::collections::BTreeSet<u32> {
    let keys: Vec<&str> = inherited
        .iter()
        .map(|i| i.key.trim_start_matches('/'))
        .collect();
    let ttys = tty_infos(plan, inherited);
    plan.files
        .iter()
        .filter(|(_, f)| key_of(f, &ttys).is_some_and(|k| keys.contains(&k.as_str())))
        .map(|(id, _)| *id)
        .collect()
}

/// Parks a duplicate of each inherited descriptor for every entry of its resource.
pub fn park_inherited(
    plan: &Plan,
    o: &mut Opened,
    inherited: &[InheritFd],
) -> Result<(), RestoreError> {
    let ttys = tty_infos(plan, inherited);
    for inh in inherited {
        if inh.key.starts_with("socket:[") {
            return Err(RestoreError::Unsupported(format!(
                "--inherit-fd fd[{}]:{}: inheriting sockets is not built yet",
                inh.fd, inh.key
            )));
        }
        let key = inh.key.trim_start_matches('/');
        let ids: Vec<u32> = plan
            .files
            .iter()
            .filter(|(_, f)| key_of(f, &ttys).as_deref() == Some(key))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Err(RestoreError::Unsupported(format!(
                "--inherit-fd fd[{}]:{}: no file of the images is {}",
                inh.fd, inh.key, inh.key
            )));
        }
        // SAFETY: the caller passed this descriptor for the restore; it is only borrowed here
        // to duplicate it (a closed number makes fcntl fail with EBADF).
        let borrowed = unsafe { BorrowedFd::borrow_raw(inh.fd) };
        for id in ids {
            let owned = borrowed.try_clone_to_owned().map_err(|e| {
                RestoreError::sys(
                    format!("--inherit-fd fd[{}]:{}", inh.fd, inh.key),
                    0,
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
                )
            })?;
            let n = o.park(owned)?;
            tracing::info!(
                "file {} (id {id}) restored from inherited fd {}",
                inh.key,
                inh.fd
            );
            o.desc.insert(id, n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_criu_spells_them() {
        assert_eq!(
            InheritFd::parse("fd[3]:pipe:[42]"),
            Ok(InheritFd {
                fd: 3,
                key: "pipe:[42]".into()
            })
        );
        assert_eq!(InheritFd::parse("fd[0]:tmp/x").unwrap().key, "tmp/x");
        for bad in ["fd[3]", "fd[x]:a", "fd[-1]:a", "fd[3]:", "3:a"] {
            assert!(InheritFd::parse(bad).is_err(), "{bad}");
        }
    }
}
