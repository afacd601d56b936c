//! The images' paths on this host: every path of `files.img` is absolute (`checks::file_paths`)
//! and is resolved under the restore's `--root` (`/` by default), never relative to the
//! restorer's cwd, and never out of the root by `..` or a symlink.
//!
//! ```text
//!  "/etc/app.conf", root /srv/r  ── open ──► openat2(fd of /srv/r, "/etc/app.conf", RESOLVE_IN_ROOT)
//!                                ── name ──► /srv/r/etc/app.conf   (ghost files, chroot, stat)
//! ```

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens the image path `name` under `root` with `flags` (resolution cannot leave `root`).
pub fn open(root: &Path, name: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    if !name.starts_with('/') {
        return Err(Errno::EINVAL);
    }
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    nix::fcntl::openat2(&dir, name, how)
}

/// The host path of the image path `name` under `root` (for creating ghost files, chroot and
/// messages; opens go through [`open`]).
pub fn host_path(root: &Path, name: &str) -> PathBuf {
    root.join(name.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let dir = std::env::temp_dir().join(format!("stasis-root-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/f"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("etc/link")).unwrap();
        let read = |name: &str| -> Result<String, Errno> {
            let fd = open(&dir, name, OFlag::O_RDONLY)?;
            Ok(std::io::read_to_string(std::fs::File::from(fd)).unwrap())
        };
        assert_eq!(read("/etc/f").unwrap(), "inside");
        assert_eq!(read("/../../etc/f").unwrap(), "inside");
        // An absolute symlink resolves inside the root too: there is no etc/hostname there.
        assert_eq!(read("/etc/link"), Err(Errno::ENOENT));
        assert_eq!(read("etc/f"), Err(Errno::EINVAL));
        assert_eq!(host_path(&dir, "/etc/f"), dir.join("etc/f"));
        assert_eq!(host_path(Path::new("/"), "/etc/f"), Path::new("/etc/f"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
