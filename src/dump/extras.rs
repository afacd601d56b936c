//! Per-thread state the engine adds to each core after the probe: seccomp filters
//! ([`super::seccomp`]) and the cgroup set ([`crate::cgroup`]), and the images they make
//! (`seccomp.img`, always written like CRIU 4.2 does; `cgroup.img` unless every task is in
//! the dumper's own cgroups).
//!
//! ```text
//!  engine, per thread:  extras.thread(pid, tid, &mut core)?   thread_core.{seccomp_mode,
//!                                                             seccomp_filter, cg_set}
//!  images:              extras.write(dir, root)?; inventory.root_cg_set = extras.root_cg_set()
//! ```

use super::error::{DumpError, Result};
use super::images_out::{self as out, ImageDir};
use super::seccomp::Filters;
use crate::cgroup::{CgSets, CgroupError};

fn cg_err(pid: i32) -> impl Fn(CgroupError) -> DumpError {
    move |e| DumpError::new("cgroup", pid, e.errno(), e.to_string())
}

/// Seccomp filters and cgroup sets of the whole tree.
#[derive(Debug)]
pub struct Extras {
    pub seccomp: Filters,
    pub cgroups: CgSets,
}

impl Extras {
    /// Starts with the dumper's own cgroup set (CRIU's set 1).
    pub fn new(root: i32) -> Result<Self> {
        Ok(Extras {
            seccomp: Filters::new(),
            cgroups: CgSets::new().map_err(cg_err(root))?,
        })
    }

    /// `inventory.root_cg_set`.
    pub fn root_cg_set(&self) -> u32 {
        self.cgroups.root_set()
    }

    /// Writes `seccomp.img` and, if needed, `cgroup.img`.
    pub fn write(&self, dir: &mut ImageDir, root: i32) -> Result<()> {
        let img = |e| DumpError::image("images", root, e);
        dir.write_all("seccomp.img", out::SECCOMP, &[self.seccomp.entry()])
            .map_err(img)?;
        if let Some(cg) = self.cgroups.image().map_err(cg_err(root))? {
            dir.write_all("cgroup.img", out::CGROUP, &[cg])
                .map_err(img)?;
        }
        Ok(())
    }
}
