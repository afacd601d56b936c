//! crit's explorers (`crit x DIR ps|fds|mems|rss`): summaries of an image directory,
//! computed from the plain (non-pretty) JSON of its images, printed exactly as crit does.
//!
//! ```text
//!  ps    pstree.img + core-PID.img          PID PGID SID tree with COMM
//!  fds   ids-PID, fdinfo-N, fs-PID, files   fd -> file (path, pipe[..], unix[..], TYPE.id)
//!  mems  mm-PID, files                      exe, then one line per VMA: range, prot, backing
//!  rss   mm-PID, pagemap-PID                pagemap runs against the VMAs they cover
//! ```
//!
//! Unlike crit, which stops with an exception there, tasks without the per-task images
//! (zombies have no ids/mm/fs/pagemap images) are left out of fds, mems and rss.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::error::JsonError;
use super::{decode_image, Codec};

/// Which explorer to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explorer {
    /// Process tree.
    Ps,
    /// Open files of each task.
    Fds,
    /// Memory mappings of each task.
    Mems,
    /// Resident (dumped) pages of each task against its mappings.
    Rss,
}

impl Explorer {
    /// Parses crit's explorer name.
    pub fn from_name(name: &str) -> Option<Explorer> {
        Some(match name {
            "ps" => Explorer::Ps,
            "fds" => Explorer::Fds,
            "mems" => Explorer::Mems,
            "rss" => Explorer::Rss,
            _ => return None,
        })
    }
}

/// A failure of an explorer, naming the image file.
#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    /// The image file cannot be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The image file does not decode.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: JsonError,
    },
    /// The image decodes but lacks something the explorer needs.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
}

struct Dir<'a> {
    codec: &'a Codec,
    dir: &'a Path,
    /// Entries of files.img (None: not loaded yet; Some(empty): absent).
    files: Option<Vec<Json>>,
    file_names: HashMap<(String, i64), String>,
}

fn int(v: &Json, key: &str) -> Option<i64> {
    v.get(key).and_then(Json::as_i64)
}

impl<'a> Dir<'a> {
    fn load(&self, name: &str) -> Result<Vec<Json>, ExploreError> {
        let path = self.dir.join(name);
        // A regular file within the image cap (crate::limits), not whatever the name holds.
        let bytes =
            crate::limits::read_regular(&path, crate::limits::MAX_IMAGE_FILE).map_err(|e| {
                ExploreError::Io {
                    path: path.clone(),
                    source: match e {
                        crate::error::ImageError::Io { source, .. } => source,
                        other => std::io::Error::other(other.to_string()),
                    },
                }
            })?;
        let doc =
            decode_image(self.codec, &bytes, false).map_err(|source| ExploreError::Decode {
                path: path.clone(),
                source,
            })?;
        match doc.get("entries") {
            Some(Json::Array(entries)) => Ok(entries.clone()),
            _ => Err(self.content(name, "no entries")),
        }
    }

    fn load_first(&self, name: &str) -> Result<Json, ExploreError> {
        self.load(name)?
            .into_iter()
            .next()
            .ok_or_else(|| self.content(name, "image has no entries"))
    }

    fn content(&self, name: &str, what: &str) -> ExploreError {
        ExploreError::Content {
            path: self.dir.join(name),
            what: what.to_string(),
        }
    }

    fn need(&self, v: &Json, key: &str, file: &str) -> Result<i64, ExploreError> {
        int(v, key).ok_or_else(|| self.content(file, &format!("entry has no integer {key:?}")))
    }

    /// crit's `get_task_id`: `pid`, or the first of `ns_pid`.
    fn task_id(&self, p: &Json, key: &str) -> Result<i64, ExploreError> {
        if let Some(v) = int(p, key) {
            return Ok(v);
        }
        p.get(format!("ns_{key}"))
            .and_then(|l| l.get(0))
            .and_then(Json::as_i64)
            .ok_or_else(|| self.content("pstree.img", &format!("entry has no {key}")))
    }

    /// The `files.img` entry `id`, sub-object `field` (`reg`, `pipe`, `usk`).
    fn file_in_files(&mut self, field: &str, id: i64) -> Option<Json> {
        if self.files.is_none() {
            self.files = Some(self.load("files.img").unwrap_or_default());
        }
        let files = self.files.as_ref()?;
        let f = files.iter().find(|f| int(f, "id") == Some(id))?;
        f.get(field).cloned()
    }

    /// crit's `get_file_str` for a file of `kind` (`REG`, `PIPE`, `UNIXSK`, ...) and `id`.
    fn file_str(&mut self, kind: &str, id: i64) -> String {
        let key = (kind.to_string(), id);
        if let Some(s) = self.file_names.get(&key) {
            return s.clone();
        }
        let s = match kind {
            "REG" => self
                .file_in_files("reg", id)
                .and_then(|f| f.get("name").and_then(Json::as_str).map(str::to_string))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "unknown path".to_string()),
            "PIPE" => match self
                .file_in_files("pipe", id)
                .and_then(|p| int(&p, "pipe_id"))
            {
                Some(pipe_id) => format!("pipe[{pipe_id}]"),
                None => "pipe[?]".to_string(),
            },
            "UNIXSK" => match self.file_in_files("usk", id) {
                Some(ux) => {
                    let name = ux.get("name").and_then(Json::as_str).unwrap_or("");
                    let name = if name.is_empty() {
                        String::new()
                    } else {
                        format!(" {name}")
                    };
                    format!(
                        "unix[{} ({}){name}]",
                        int(&ux, "ino").unwrap_or(0),
                        int(&ux, "peer").unwrap_or(0)
                    )
                }
                None => "unix[?]".to_string(),
            },
            other => format!("{other}.{id}"),
        };
        self.file_names.insert(key, s.clone());
        s
    }

    fn tasks(&self) -> Result<Vec<Json>, ExploreError> {
        self.load("pstree.img")
    }

    /// Whether the image `name` exists (a zombie has no ids/mm/fs/pagemap images).
    fn has(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }
}

/// Runs an explorer on the image directory `dir`; returns what crit prints.
pub fn explore(codec: &Codec, dir: &Path, what: Explorer) -> Result<String, ExploreError> {
    let mut d = Dir {
        codec,
        dir,
        files: None,
        file_names: HashMap::new(),
    };
    match what {
        Explorer::Ps => ps(&mut d),
        Explorer::Fds => fds(&mut d),
        Explorer::Mems => mems(&mut d),
        Explorer::Rss => rss(&mut d),
    }
}

struct Task {
    pid: i64,
    ppid: i64,
    pgid: i64,
    sid: i64,
    comm: String,
    kids: Vec<usize>,
}

fn ps(d: &mut Dir<'_>) -> Result<String, ExploreError> {
    let mut tasks: Vec<Task> = Vec::new();
    for p in d.tasks()? {
        let pid = d.task_id(&p, "pid")?;
        let core_name = format!("core-{pid}.img");
        let core = d.load_first(&core_name)?;
        let comm = core
            .get("tc")
            .and_then(|tc| tc.get("comm"))
            .and_then(Json::as_str)
            .ok_or_else(|| d.content(&core_name, "no tc.comm"))?
            .to_string();
        tasks.push(Task {
            pid,
            ppid: d.need(&p, "ppid", "pstree.img")?,
            pgid: d.task_id(&p, "pgid")?,
            sid: d.task_id(&p, "sid")?,
            comm,
            kids: Vec::new(),
        });
    }
    let mut root = None;
    for i in 0..tasks.len() {
        if tasks[i].ppid == 0 {
            root = Some(i);
            continue;
        }
        let ppid = tasks[i].ppid;
        let parent = tasks.iter().position(|t| t.pid == ppid).ok_or_else(|| {
            d.content(
                "pstree.img",
                &format!("parent {ppid} of {} is not in the tree", tasks[i].pid),
            )
        })?;
        tasks[parent].kids.push(i);
    }
    let root = root.ok_or_else(|| d.content("pstree.img", "no root task (ppid 0)"))?;
    let mut out = format!("{:>7}{:>7}{:>7}   {}\n", "PID", "PGID", "SID", "COMM");
    fn show(out: &mut String, tasks: &[Task], i: usize, depth: usize) {
        let t = &tasks[i];
        let _ = writeln!(
            out,
            "{:>7}{:>7}{:>7}   {}{}",
            t.pid,
            t.pgid,
            t.sid,
            " ".repeat(4 * depth),
            t.comm
        );
        for &k in &t.kids {
            show(out, tasks, k, depth + 1);
        }
    }
    show(&mut out, &tasks, root, 0);
    Ok(out)
}

fn fds(d: &mut Dir<'_>) -> Result<String, ExploreError> {
    let mut out = String::new();
    for p in d.tasks()? {
        let pid = d.task_id(&p, "pid")?;
        let ids_name = format!("ids-{pid}.img");
        if !d.has(&ids_name) {
            continue;
        }
        let ids = d.load_first(&ids_name)?;
        let files_id = d.need(&ids, "files_id", &ids_name)?;
        let fdinfo_name = format!("fdinfo-{files_id}.img");
        let fdinfo = d.load(&fdinfo_name)?;
        let _ = writeln!(out, "{pid}");
        for fd in fdinfo {
            let kind = fd
                .get("type")
                .and_then(Json::as_str)
                .unwrap_or("?")
                .to_string();
            let id = d.need(&fd, "id", &fdinfo_name)?;
            let num = d.need(&fd, "fd", &fdinfo_name)?;
            let s = d.file_str(&kind, id);
            let _ = writeln!(out, "\t{num:>7}: {s}");
        }
        let fs_name = format!("fs-{pid}.img");
        let fs = d.load_first(&fs_name)?;
        for (label, key) in [("cwd", "cwd_id"), ("root", "root_id")] {
            let id = d.need(&fs, key, &fs_name)?;
            let s = d.file_str("REG", id);
            let _ = writeln!(out, "\t{label:>7}: {s}");
        }
    }
    Ok(out)
}

const VMA_AREA_REGULAR: i64 = 1;
const VMA_AREA_STACK: i64 = 1 << 1;
const VMA_AREA_VSYSCALL: i64 = 1 << 2;
const VMA_AREA_VDSO: i64 = 1 << 3;
const VMA_FILE_PRIVATE: i64 = 1 << 6;
const VMA_FILE_SHARED: i64 = 1 << 7;
const VMA_ANON_SHARED: i64 = 1 << 8;
const VMA_AREA_SYSVIPC: i64 = 1 << 10;
const VMA_AREA_SOCKET: i64 = 1 << 11;
const MAP_GROWSDOWN: i64 = 0x100;

fn mems(d: &mut Dir<'_>) -> Result<String, ExploreError> {
    let mut out = String::new();
    // crit numbers shared segments 1, 2, ... in the order it meets them.
    let mut seg_ids: HashMap<i64, i64> = HashMap::new();
    let mut seg = |shmid: i64| -> i64 {
        let next = seg_ids.len() as i64 + 1;
        *seg_ids.entry(shmid).or_insert(next)
    };
    for p in d.tasks()? {
        let pid = d.task_id(&p, "pid")?;
        let mm_name = format!("mm-{pid}.img");
        if !d.has(&mm_name) {
            continue;
        }
        let mm = d.load_first(&mm_name)?;
        let _ = writeln!(out, "{pid}");
        let exe = d.file_str("REG", int(&mm, "exe_file_id").unwrap_or(0));
        let _ = writeln!(out, "\t{:<36}    {exe}", "exe");
        let vmas = mm
            .get("vmas")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default();
        for vma in &vmas {
            let st = d.need(vma, "status", &mm_name)?;
            let shmid = int(vma, "shmid").unwrap_or(0);
            let mut fname = if st & VMA_AREA_SYSVIPC != 0 {
                format!(" ips[{:x}]", seg(shmid))
            } else if st & VMA_ANON_SHARED != 0 {
                format!(" shmem[{:x}]", seg(shmid))
            } else if st & VMA_AREA_SOCKET != 0 {
                format!(" packet[{:x}]", seg(shmid))
            } else if st & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                let mut s = format!(" {}", d.file_str("REG", shmid));
                let pgoff = int(vma, "pgoff").unwrap_or(0);
                if pgoff != 0 {
                    let _ = write!(s, " + {pgoff:#x}");
                }
                if st & VMA_FILE_SHARED != 0 {
                    s.push_str(" (s)");
                }
                s
            } else if st & VMA_AREA_STACK != 0 {
                " [stack]".to_string()
            } else if st & VMA_AREA_VSYSCALL != 0 {
                " [vsyscall]".to_string()
            } else if st & VMA_AREA_VDSO != 0 {
                " [vdso]".to_string()
            } else if int(vma, "flags").unwrap_or(0) & MAP_GROWSDOWN != 0 {
                " [stack?]".to_string()
            } else {
                String::new()
            };
            if st & VMA_AREA_REGULAR == 0 {
                fname.push_str(" *");
            }
            let prot = int(vma, "prot").unwrap_or(0);
            let prot = format!(
                "{}{}{}",
                if prot & 1 != 0 { 'r' } else { '-' },
                if prot & 2 != 0 { 'w' } else { '-' },
                if prot & 4 != 0 { 'x' } else { '-' }
            );
            let range = format!("{:08x}-{:08x}", vma_u64(vma, "start"), vma_u64(vma, "end"));
            let _ = writeln!(out, "\t{range:<36}{prot}{fname}");
        }
    }
    Ok(out)
}

fn vma_u64(v: &Json, key: &str) -> u64 {
    v.get(key).and_then(Json::as_u64).unwrap_or(0)
}

fn rss(d: &mut Dir<'_>) -> Result<String, ExploreError> {
    let mut out = String::new();
    for p in d.tasks()? {
        let pid = d.task_id(&p, "pid")?;
        let mm_name = format!("mm-{pid}.img");
        if !d.has(&mm_name) {
            continue;
        }
        let mm = d.load_first(&mm_name)?;
        let vmas = mm
            .get("vmas")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default();
        let pms = d.load(&format!("pagemap-{pid}.img"))?;
        let _ = writeln!(out, "{pid}");
        let mut vmi = 0usize;
        let mut pvmi: Option<usize> = None;
        for pm in pms.iter().skip(1) {
            let vaddr = vma_u64(pm, "vaddr");
            let nr = vma_u64(pm, "nr_pages");
            let pstr = format!("\t{vaddr:x} / {nr:<8}");
            while vmi < vmas.len() && vma_u64(&vmas[vmi], "end") <= vaddr {
                vmi += 1;
            }
            let pme = vaddr.wrapping_add(nr << 12);
            let mut vstr = String::new();
            while vmi < vmas.len() && vma_u64(&vmas[vmi], "start") < pme {
                let vma = &vmas[vmi];
                if pvmi == Some(vmi) {
                    vstr.push_str(" ~");
                } else {
                    let start = vma_u64(vma, "start");
                    let pages = vma_u64(vma, "end").wrapping_sub(start) >> 12;
                    let _ = write!(vstr, " {start:08x} / {pages:<8}");
                    if int(vma, "status").unwrap_or(0) & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                        let s = d.file_str("REG", int(vma, "shmid").unwrap_or(0));
                        let _ = write!(vstr, " {s}");
                    }
                    pvmi = Some(vmi);
                }
                let _ = write!(vstr, "\n\t{:23}", "");
                vmi += 1;
            }
            // crit steps back one VMA so the next run can start inside the same one.
            vmi = vmi.saturating_sub(1);
            let _ = writeln!(out, "{pstr:<24}{vstr}");
        }
    }
    Ok(out)
}
