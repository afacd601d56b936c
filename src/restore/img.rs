//! Image access for the restorer: the framing of CRIU image files and the messages restore
//! reads, declared with `prost` derives (tag numbers are CRIU 4.2's, read from its images).
//!
//! Interim: `stasis_images` will provide the framing and every message (`pb::*`); until those
//! land, restore decodes with these few definitions. Only fields restore uses are declared;
//! prost skips the others.
//!
//! ```text
//! file  := head_magic u32 [image_magic u32] entry*      (inventory.img: one magic only)
//! entry := len u32 | message bytes[len] | extra payload (pipes-data, ghost-file chunks)
//! pages-N.img: raw pages, consumed in pagemap order by PE_PRESENT entries
//! ```

use std::path::{Path, PathBuf};

use prost::Message;

use super::error::RestoreError;

/// Largest entry we accept (a core image with 64 sigactions is ~3 KiB; mm with 65k VMAs ~4 MiB).
const MAX_ENTRY: usize = 64 << 20;

/// The entries of one image file, with the raw bytes for entries that carry an extra payload.
pub struct ImageFile {
    /// Path, for error messages.
    pub path: PathBuf,
    data: Vec<u8>,
    pos: usize,
}

impl ImageFile {
    /// Opens `dir/name`, checks its magic header (`magics` = number of u32 magics: 2 or 1).
    pub fn open(dir: &Path, name: &str, magics: usize) -> Result<Self, RestoreError> {
        let path = dir.join(name);
        let data = std::fs::read(&path).map_err(|e| RestoreError::Io {
            step: "read image",
            path: path.clone(),
            source: e,
        })?;
        let hdr = 4 * magics;
        if data.len() < hdr {
            return Err(RestoreError::Image {
                path,
                index: 0,
                what: "truncated magic".into(),
            });
        }
        let first = u32::from_le_bytes(data[0..4].try_into().unwrap_or([0; 4]));
        if magics == 2 && first != 0x5456_4319 && first != 0x5510_5940 {
            return Err(RestoreError::Image {
                path,
                index: 0,
                what: format!("bad head magic {first:#x}"),
            });
        }
        Ok(Self {
            path,
            data,
            pos: hdr,
        })
    }

    /// Opens an image that may be absent (returns `None` then).
    pub fn open_opt(dir: &Path, name: &str, magics: usize) -> Result<Option<Self>, RestoreError> {
        if !dir.join(name).exists() {
            return Ok(None);
        }
        Self::open(dir, name, magics).map(Some)
    }

    /// Decodes the next entry as `M`; `None` at a clean end of file.
    pub fn next<M: Message + Default>(&mut self, index: usize) -> Result<Option<M>, RestoreError> {
        if self.pos == self.data.len() {
            return Ok(None);
        }
        let bytes = self.take_len(index)?;
        M::decode(bytes).map(Some).map_err(|e| RestoreError::Image {
            path: self.path.clone(),
            index,
            what: format!("decode: {e}"),
        })
    }

    /// Decodes every remaining entry as `M`.
    pub fn all<M: Message + Default>(&mut self) -> Result<Vec<M>, RestoreError> {
        let mut out = Vec::new();
        while let Some(m) = self.next::<M>(out.len())? {
            out.push(m);
        }
        Ok(out)
    }

    /// Takes `len` raw payload bytes following an entry.
    pub fn payload(&mut self, len: u64, index: usize) -> Result<&[u8], RestoreError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.data.len() - self.pos {
            return Err(self.truncated(index, "payload"));
        }
        let s = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    fn take_len(&mut self, index: usize) -> Result<&[u8], RestoreError> {
        if self.data.len() - self.pos < 4 {
            return Err(self.truncated(index, "entry length"));
        }
        let len = u32::from_le_bytes(
            self.data[self.pos..self.pos + 4]
                .try_into()
                .unwrap_or([0; 4]),
        ) as usize;
        self.pos += 4;
        if len > MAX_ENTRY || len > self.data.len() - self.pos {
            return Err(self.truncated(index, "entry"));
        }
        let s = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    fn truncated(&self, index: usize, what: &str) -> RestoreError {
        RestoreError::Image {
            path: self.path.clone(),
            index,
            what: format!("truncated {what}"),
        }
    }
}

/// Decodes exactly one entry (`what` names the message for the error).
pub fn one<M: Message + Default>(dir: &Path, name: &str) -> Result<M, RestoreError> {
    let mut f = ImageFile::open(dir, name, 2)?;
    f.next::<M>(0)?.ok_or_else(|| RestoreError::Image {
        path: f.path.clone(),
        index: 0,
        what: "no entry".into(),
    })
}

#[allow(missing_docs)]
pub mod msg {
    //! Message definitions (restore's subset of CRIU 4.2's schema).
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    pub struct PstreeEntry {
        #[prost(uint32, tag = "1")]
        pub pid: u32,
        #[prost(uint32, tag = "2")]
        pub ppid: u32,
        #[prost(uint32, tag = "3")]
        pub pgid: u32,
        #[prost(uint32, tag = "4")]
        pub sid: u32,
        #[prost(uint32, repeated, packed = "false", tag = "5")]
        pub threads: Vec<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct CoreEntry {
        #[prost(uint32, tag = "1")]
        pub mtype: u32,
        #[prost(message, optional, tag = "2")]
        pub thread_info: Option<ThreadInfoX86>,
        #[prost(message, optional, tag = "3")]
        pub tc: Option<TaskCoreEntry>,
        #[prost(message, optional, tag = "4")]
        pub ids: Option<TaskKobjIds>,
        #[prost(message, optional, tag = "5")]
        pub thread_core: Option<ThreadCoreEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ThreadInfoX86 {
        #[prost(uint64, tag = "1")]
        pub clear_tid_addr: u64,
        #[prost(message, optional, tag = "2")]
        pub gpregs: Option<UserX86Regs>,
        #[prost(message, optional, tag = "3")]
        pub fpregs: Option<UserX86Fpregs>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct UserX86Regs {
        #[prost(uint64, tag = "1")]
        pub r15: u64,
        #[prost(uint64, tag = "2")]
        pub r14: u64,
        #[prost(uint64, tag = "3")]
        pub r13: u64,
        #[prost(uint64, tag = "4")]
        pub r12: u64,
        #[prost(uint64, tag = "5")]
        pub bp: u64,
        #[prost(uint64, tag = "6")]
        pub bx: u64,
        #[prost(uint64, tag = "7")]
        pub r11: u64,
        #[prost(uint64, tag = "8")]
        pub r10: u64,
        #[prost(uint64, tag = "9")]
        pub r9: u64,
        #[prost(uint64, tag = "10")]
        pub r8: u64,
        #[prost(uint64, tag = "11")]
        pub ax: u64,
        #[prost(uint64, tag = "12")]
        pub cx: u64,
        #[prost(uint64, tag = "13")]
        pub dx: u64,
        #[prost(uint64, tag = "14")]
        pub si: u64,
        #[prost(uint64, tag = "15")]
        pub di: u64,
        #[prost(uint64, tag = "16")]
        pub orig_ax: u64,
        #[prost(uint64, tag = "17")]
        pub ip: u64,
        #[prost(uint64, tag = "18")]
        pub cs: u64,
        #[prost(uint64, tag = "19")]
        pub flags: u64,
        #[prost(uint64, tag = "20")]
        pub sp: u64,
        #[prost(uint64, tag = "21")]
        pub ss: u64,
        #[prost(uint64, tag = "22")]
        pub fs_base: u64,
        #[prost(uint64, tag = "23")]
        pub gs_base: u64,
        #[prost(uint64, tag = "24")]
        pub ds: u64,
        #[prost(uint64, tag = "25")]
        pub es: u64,
        #[prost(uint64, tag = "26")]
        pub fs: u64,
        #[prost(uint64, tag = "27")]
        pub gs: u64,
        #[prost(uint32, optional, tag = "28")]
        pub mode: Option<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct UserX86Fpregs {
        #[prost(uint32, tag = "1")]
        pub cwd: u32,
        #[prost(uint32, tag = "2")]
        pub swd: u32,
        #[prost(uint32, tag = "3")]
        pub twd: u32,
        #[prost(uint32, tag = "4")]
        pub fop: u32,
        #[prost(uint64, tag = "5")]
        pub rip: u64,
        #[prost(uint64, tag = "6")]
        pub rdp: u64,
        #[prost(uint32, tag = "7")]
        pub mxcsr: u32,
        #[prost(uint32, tag = "8")]
        pub mxcsr_mask: u32,
        #[prost(uint32, repeated, packed = "false", tag = "9")]
        pub st_space: Vec<u32>,
        #[prost(uint32, repeated, packed = "false", tag = "10")]
        pub xmm_space: Vec<u32>,
        #[prost(message, optional, tag = "13")]
        pub xsave: Option<UserX86Xsave>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct UserX86Xsave {
        #[prost(uint64, tag = "1")]
        pub xstate_bv: u64,
        #[prost(uint32, repeated, packed = "false", tag = "2")]
        pub ymmh_space: Vec<u32>,
        #[prost(uint64, repeated, packed = "false", tag = "5")]
        pub opmask_reg: Vec<u64>,
        #[prost(uint64, repeated, packed = "false", tag = "6")]
        pub zmm_upper: Vec<u64>,
        #[prost(uint64, repeated, packed = "false", tag = "7")]
        pub hi16_zmm: Vec<u64>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct TaskCoreEntry {
        #[prost(uint32, tag = "1")]
        pub task_state: u32,
        #[prost(uint32, tag = "2")]
        pub exit_code: u32,
        #[prost(uint32, tag = "3")]
        pub personality: u32,
        #[prost(uint32, tag = "4")]
        pub flags: u32,
        #[prost(uint64, tag = "5")]
        pub blk_sigset: u64,
        #[prost(string, tag = "6")]
        pub comm: String,
        #[prost(message, optional, tag = "7")]
        pub timers: Option<TaskTimers>,
        #[prost(message, optional, tag = "8")]
        pub rlimits: Option<TaskRlimits>,
        #[prost(message, optional, tag = "10")]
        pub signals_s: Option<SignalQueue>,
        #[prost(uint32, optional, tag = "11")]
        pub old_seccomp_mode: Option<u32>,
        #[prost(message, repeated, tag = "15")]
        pub sigactions: Vec<SaEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct TaskKobjIds {
        #[prost(uint32, tag = "1")]
        pub vm_id: u32,
        #[prost(uint32, tag = "2")]
        pub files_id: u32,
        #[prost(uint32, tag = "3")]
        pub fs_id: u32,
        #[prost(uint32, tag = "4")]
        pub sighand_id: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ThreadSas {
        #[prost(uint64, tag = "1")]
        pub ss_sp: u64,
        #[prost(uint64, tag = "2")]
        pub ss_size: u64,
        #[prost(uint32, tag = "3")]
        pub ss_flags: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ThreadCoreEntry {
        #[prost(uint64, tag = "1")]
        pub futex_rla: u64,
        #[prost(uint32, tag = "2")]
        pub futex_rla_len: u32,
        #[prost(sint32, optional, tag = "3")]
        pub sched_nice: Option<i32>,
        #[prost(uint64, optional, tag = "6")]
        pub blk_sigset: Option<u64>,
        #[prost(message, optional, tag = "7")]
        pub sas: Option<ThreadSas>,
        #[prost(uint32, optional, tag = "8")]
        pub pdeath_sig: Option<u32>,
        #[prost(message, optional, tag = "9")]
        pub signals_p: Option<SignalQueue>,
        #[prost(message, optional, tag = "10")]
        pub creds: Option<CredsEntry>,
        #[prost(uint32, optional, tag = "11")]
        pub seccomp_mode: Option<u32>,
        #[prost(string, optional, tag = "13")]
        pub comm: Option<String>,
        #[prost(message, optional, tag = "15")]
        pub rseq_entry: Option<RseqEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct RseqEntry {
        #[prost(uint64, tag = "1")]
        pub rseq_abi_pointer: u64,
        #[prost(uint32, tag = "2")]
        pub rseq_abi_size: u32,
        #[prost(uint32, tag = "3")]
        pub signature: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct CredsEntry {
        #[prost(uint32, tag = "1")]
        pub uid: u32,
        #[prost(uint32, tag = "2")]
        pub gid: u32,
        #[prost(uint32, tag = "3")]
        pub euid: u32,
        #[prost(uint32, tag = "4")]
        pub egid: u32,
        #[prost(uint32, tag = "5")]
        pub suid: u32,
        #[prost(uint32, tag = "6")]
        pub sgid: u32,
        #[prost(uint32, tag = "7")]
        pub fsuid: u32,
        #[prost(uint32, tag = "8")]
        pub fsgid: u32,
        #[prost(uint32, repeated, packed = "false", tag = "9")]
        pub cap_inh: Vec<u32>,
        #[prost(uint32, repeated, packed = "false", tag = "10")]
        pub cap_prm: Vec<u32>,
        #[prost(uint32, repeated, packed = "false", tag = "11")]
        pub cap_eff: Vec<u32>,
        #[prost(uint32, repeated, packed = "false", tag = "12")]
        pub cap_bnd: Vec<u32>,
        #[prost(uint32, tag = "13")]
        pub secbits: u32,
        #[prost(uint32, repeated, packed = "false", tag = "14")]
        pub groups: Vec<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct SaEntry {
        #[prost(uint64, tag = "1")]
        pub sigaction: u64,
        #[prost(uint64, tag = "2")]
        pub flags: u64,
        #[prost(uint64, tag = "3")]
        pub restorer: u64,
        #[prost(uint64, tag = "4")]
        pub mask: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ItimerEntry {
        #[prost(uint64, tag = "1")]
        pub isec: u64,
        #[prost(uint64, tag = "2")]
        pub iusec: u64,
        #[prost(uint64, tag = "3")]
        pub vsec: u64,
        #[prost(uint64, tag = "4")]
        pub vusec: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PosixTimerEntry {
        #[prost(uint32, tag = "1")]
        pub it_id: u32,
        #[prost(uint32, tag = "2")]
        pub clock_id: u32,
        #[prost(uint32, tag = "3")]
        pub si_signo: u32,
        #[prost(uint32, tag = "4")]
        pub it_sigev_notify: u32,
        #[prost(uint64, tag = "5")]
        pub sival_ptr: u64,
        #[prost(uint32, tag = "6")]
        pub overrun: u32,
        #[prost(uint64, tag = "7")]
        pub isec: u64,
        #[prost(uint64, tag = "8")]
        pub insec: u64,
        #[prost(uint64, tag = "9")]
        pub vsec: u64,
        #[prost(uint64, tag = "10")]
        pub vnsec: u64,
        #[prost(int32, optional, tag = "11")]
        pub notify_thread_id: Option<i32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct TaskTimers {
        #[prost(message, optional, tag = "1")]
        pub real: Option<ItimerEntry>,
        #[prost(message, optional, tag = "2")]
        pub virt: Option<ItimerEntry>,
        #[prost(message, optional, tag = "3")]
        pub prof: Option<ItimerEntry>,
        #[prost(message, repeated, tag = "4")]
        pub posix: Vec<PosixTimerEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct RlimitEntry {
        #[prost(uint64, tag = "1")]
        pub cur: u64,
        #[prost(uint64, tag = "2")]
        pub max: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct TaskRlimits {
        #[prost(message, repeated, tag = "1")]
        pub rlimits: Vec<RlimitEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct SiginfoEntry {
        #[prost(bytes = "vec", tag = "1")]
        pub siginfo: Vec<u8>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct SignalQueue {
        #[prost(message, repeated, tag = "1")]
        pub signals: Vec<SiginfoEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MmEntry {
        #[prost(uint64, tag = "1")]
        pub mm_start_code: u64,
        #[prost(uint64, tag = "2")]
        pub mm_end_code: u64,
        #[prost(uint64, tag = "3")]
        pub mm_start_data: u64,
        #[prost(uint64, tag = "4")]
        pub mm_end_data: u64,
        #[prost(uint64, tag = "5")]
        pub mm_start_stack: u64,
        #[prost(uint64, tag = "6")]
        pub mm_start_brk: u64,
        #[prost(uint64, tag = "7")]
        pub mm_brk: u64,
        #[prost(uint64, tag = "8")]
        pub mm_arg_start: u64,
        #[prost(uint64, tag = "9")]
        pub mm_arg_end: u64,
        #[prost(uint64, tag = "10")]
        pub mm_env_start: u64,
        #[prost(uint64, tag = "11")]
        pub mm_env_end: u64,
        #[prost(uint32, tag = "12")]
        pub exe_file_id: u32,
        #[prost(uint64, repeated, packed = "false", tag = "13")]
        pub mm_saved_auxv: Vec<u64>,
        #[prost(message, repeated, tag = "14")]
        pub vmas: Vec<VmaEntry>,
        #[prost(int32, optional, tag = "15")]
        pub dumpable: Option<i32>,
        #[prost(bool, optional, tag = "17")]
        pub thp_disabled: Option<bool>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct VmaEntry {
        #[prost(uint64, tag = "1")]
        pub start: u64,
        #[prost(uint64, tag = "2")]
        pub end: u64,
        #[prost(uint64, tag = "3")]
        pub pgoff: u64,
        #[prost(uint64, tag = "4")]
        pub shmid: u64,
        #[prost(uint32, tag = "5")]
        pub prot: u32,
        #[prost(uint32, tag = "6")]
        pub flags: u32,
        #[prost(uint32, tag = "7")]
        pub status: u32,
        #[prost(sint64, tag = "8")]
        pub fd: i64,
        #[prost(uint64, optional, tag = "9")]
        pub madv: Option<u64>,
        #[prost(uint32, optional, tag = "10")]
        pub fdflags: Option<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PagemapHead {
        #[prost(uint32, tag = "1")]
        pub pages_id: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PagemapEntry {
        #[prost(uint64, tag = "1")]
        pub vaddr: u64,
        #[prost(uint32, tag = "2")]
        pub compat_nr_pages: u32,
        #[prost(bool, optional, tag = "3")]
        pub in_parent: Option<bool>,
        #[prost(uint32, optional, tag = "4")]
        pub flags: Option<u32>,
        #[prost(uint64, optional, tag = "5")]
        pub nr_pages: Option<u64>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct FdinfoEntry {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(uint32, tag = "2")]
        pub flags: u32,
        #[prost(int32, tag = "3")]
        pub r#type: i32,
        #[prost(uint32, tag = "4")]
        pub fd: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct FileEntry {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(uint32, tag = "2")]
        pub id: u32,
        #[prost(message, optional, tag = "3")]
        pub reg: Option<RegFileEntry>,
        #[prost(message, optional, tag = "18")]
        pub pipe: Option<PipeEntry>,
        #[prost(message, optional, tag = "20")]
        pub memfd: Option<MemfdFileEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct RegFileEntry {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(uint32, tag = "2")]
        pub flags: u32,
        #[prost(uint64, tag = "3")]
        pub pos: u64,
        #[prost(string, tag = "6")]
        pub name: String,
        #[prost(uint64, optional, tag = "8")]
        pub size: Option<u64>,
        #[prost(uint32, optional, tag = "10")]
        pub mode: Option<u32>,
        #[prost(uint32, repeated, packed = "false", tag = "11")]
        pub build_id: Vec<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PipeEntry {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(uint32, tag = "2")]
        pub pipe_id: u32,
        #[prost(uint32, tag = "3")]
        pub flags: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PipeDataEntry {
        #[prost(uint32, tag = "1")]
        pub pipe_id: u32,
        #[prost(uint32, tag = "2")]
        pub bytes: u32,
        #[prost(uint32, optional, tag = "3")]
        pub size: Option<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemfdFileEntry {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(uint32, tag = "2")]
        pub flags: u32,
        #[prost(uint64, tag = "3")]
        pub pos: u64,
        #[prost(uint32, tag = "5")]
        pub inode_id: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemfdInodeEntry {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint64, tag = "4")]
        pub size: u64,
        #[prost(uint32, tag = "5")]
        pub shmid: u32,
        #[prost(uint32, tag = "6")]
        pub seals: u32,
        #[prost(uint64, tag = "7")]
        pub inode_id: u64,
        #[prost(uint32, optional, tag = "9")]
        pub mode: Option<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct FsEntry {
        #[prost(uint32, tag = "1")]
        pub cwd_id: u32,
        #[prost(uint32, tag = "2")]
        pub root_id: u32,
        #[prost(uint32, optional, tag = "3")]
        pub umask: Option<u32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct RemapFilePathEntry {
        #[prost(uint32, tag = "1")]
        pub orig_id: u32,
        #[prost(uint32, tag = "2")]
        pub remap_id: u32,
        #[prost(int32, optional, tag = "3")]
        pub remap_type: Option<i32>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct GhostFileEntry {
        #[prost(uint32, tag = "1")]
        pub uid: u32,
        #[prost(uint32, tag = "2")]
        pub gid: u32,
        #[prost(uint32, tag = "3")]
        pub mode: u32,
        #[prost(bool, optional, tag = "9")]
        pub chunks: Option<bool>,
        #[prost(uint64, optional, tag = "10")]
        pub size: Option<u64>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct GhostChunkEntry {
        #[prost(uint64, tag = "1")]
        pub len: u64,
        #[prost(uint64, tag = "2")]
        pub off: u64,
    }
}
