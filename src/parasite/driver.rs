//! [`Parasite`]: the dump parasite injected into a seized process and driven over its socket.
//!
//! ```text
//! remote area (one anonymous RWX mapping made by remote mmap):
//!   base                  blob image, relocated for `base`
//!   base + SIZE           args page: ParasiteArgs @0, scratch for remote syscalls @512
//!   + 4 KiB               the leader's signal frame (sigframe.rs): registers, mask, XSAVE
//!   + frame               stack (256 KiB), the parasite starts with sp at its top
//!   + 256 KiB             thread area: one slot per thread run at once (state, scratch with
//!                         the thread's signal frame, XSAVE area, a little stack)
//! inject:  save regs + xstate + sigmask of the leader; mmap (the one remote syscall through
//!          a word poked at the task's first executable mapping); write blob, frame and
//!          args; socketpair(AF_UNIX, SOCK_SEQPACKET) inside the task (through the blob's
//!          gadget, like every later one but the munmap), take one end with pidfd_getfd,
//!          close it in the task; write the exit frame (gadgets.rs); start the blob (ip =
//!          entry, rdi = args, every signal but SIGTRAP blocked), PTRACE_CONT: it serves
//! cure:    FINI; interrupt the leader in the parasite's wait for the hang-up (if it does
//!          not answer: interrupt it wherever it is, close its pipes too); close its socket
//!          remotely; write back xstate, mask, then regs; munmap through the poked exec area
//! ```
//!
//! Killed dumper: the kernel closes our end of the socket. The parasite, in whatever command
//! or wait it is, sees the hang-up, closes its descriptors and returns through its frame; so
//! does a thread in the thread routine. A leader alone in the area (no thread ran the
//! thread routine yet) leaves by unmapping it (gadgets.rs); after the thread routine ran the
//! area stays (another thread may still be inside it). A remote syscall is kill-safe at
//! every step (sys/remote.rs: syscall stops, a return frame on the task's stack). What may
//! stay: the area when the dumper dies between the remote mmap and the parasite's start
//! (nothing of ours runs in the task to remove it), a descriptor of the socketpair when it
//! dies between the socketpair and the close, and the poked word when it dies right around
//! the remote mmap or munmap (sys/remote.rs).
//!
//! Per-thread state: the leader answers THREAD_STATE itself; the other threads run the blob's
//! thread routine, all of them at once, in waves of at most one thread per slot:
//!
//! ```text
//! slots:      one write: socket, XSAVE software bytes, each thread's signal frame
//! start all:  ip = __export_thread_entry, rdi = slot, sp = slot end; PTRACE_CONT
//!             (no waiting in between); the routine blocks every signal first
//! notes:      read THREAD_DONE ^ tid from the socket until every thread sent its own
//! stop all:   PTRACE_INTERRUPT each (it waits in a poll), wait for the event stops
//! restore:    mask, then regs of every thread; read all slots with one /proc/PID/mem read
//! ```
//! Every thread started is stopped and restored, on error paths too. Pending signals,
//! registers and rseq come from ptrace (`SeizedTask`).
//!
//! Every thread of the process must stay seized while the parasite lives. The parasite's
//! socket is one extra descriptor in the task ([`Parasite::task_socket_fd`]; the pipe of
//! DUMP_PAGES another): list the task's descriptors before injecting, or skip these.

use super::blob::{dump as blob, DUMP};
use super::error::{Error, Result};
use super::proto::*;
use super::reply::{self, ReplyError};
use super::sigframe;
use crate::sys::channel;
use crate::sys::ptrace::{RseqConfig, UserDesc};
use crate::sys::regs::{TaskRegs, UserRegs, XState, EFLAGS_DF, EFLAGS_TF};
use crate::sys::remote::{Remote, RemoteMapping};
use crate::sys::task::SeizedTask;
use crate::sys::wait::WaitEvent;
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Stack of the parasite.
pub const STACK_SIZE: u64 = 256 * 1024;
/// Size of the args page.
const ARGS_SIZE: u64 = 4096;
/// Offset of the scratch area in the args page.
const SCRATCH: u64 = 512;
/// Thread slots of [`Parasite::inject`].
const DEFAULT_SLOTS: usize = 16;
/// Most thread slots (4 MiB of thread area).
pub const MAX_SLOTS: usize = 1024;
/// Pipe size asked for DUMP_PAGES (the kernel may give less without CAP_SYS_RESOURCE).
const PIPE_SIZE: usize = 1 << 20;
/// Pipes [`Parasite::pin_pages`] has in flight (commands sent, replies due).
const PIN_AHEAD: usize = 8;
/// Length of the message a thread routine sends when done (THREAD_DONE ^ tid).
const THREAD_NOTE_LEN: usize = 8;
/// How often a waiting command checks that the task still runs the parasite.
const POLL_MS: i32 = 50;
use crate::images::pagemap::PAGE_SIZE as PAGE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The leader is in a ptrace stop (before start, after a fault).
    Stopped,
    /// The parasite serves commands.
    Running,
    /// Cured: nothing of ours left in the task.
    Cured,
}

#[derive(Debug)]
struct PagePipe {
    read: OwnedFd,
    capacity: u64,
    task_fd: i32,
}

/// The dump parasite living in a process; cured (unmapped, registers, mask and code
/// restored) on drop or by [`Parasite::cure`].
#[derive(Debug)]
pub struct Parasite<'a> {
    leader: &'a SeizedTask,
    saved: TaskRegs,
    saved_mask: u64,
    exec_ip: u64,
    base: u64,
    len: u64,
    sock: OwnedFd,
    task_sock: i32,
    /// Page pipes (index = the parasite's pipe index), made by the first DUMP_PAGES.
    pipes: Vec<PagePipe>,
    state: State,
    /// Offset of the thread area from `base`, its number of slots and their size.
    slots_off: u64,
    slots: usize,
    slot_size: u64,
    /// How the thread routine reads the XSAVE area itself (None: ptrace does).
    xsave: Option<XsavePlan>,
    /// The leader's rseq registration, if any ([`Parasite::set_leader_rseq`]).
    leader_rseq: Option<RseqConfig>,
    /// `mlockall` flags the area was mapped under (MCL_FUTURE, MCL_ONFAULT), 0: none.
    mlockall: u32,
}

/// The thread routine's XSAVE. ptrace shows a thread's area in the standard format, `len`
/// bytes, with the software-reserved bytes (464..512) holding the enabled user features;
/// the routine saves the same features itself, except the dynamically enabled AMX tile data
/// (8 KiB, almost never in use): a thread using it (XINUSE, read by the routine with
/// `xgetbv 1`) is left to ptrace.
#[derive(Debug, Clone)]
struct XsavePlan {
    /// Bytes of the area as ptrace shows it (what it returned for the leader).
    len: usize,
    /// Features the routine saves (requested-feature bitmap of XSAVE).
    rfbm: u64,
    /// Features the routine leaves out.
    excluded: u64,
    /// Bytes the routine zeroes and saves into: the end of the last feature of `rfbm`
    /// (a multiple of 64).
    span: usize,
    /// Bytes 464..512 of the leader's area.
    sw_bytes: [u8; 48],
    /// The end of the last feature of `rfbm` (the xstate_size of a signal frame).
    end: usize,
}

/// Offset of the software-reserved bytes and of the XSAVE header.
const SW_BYTES_OFF: usize = 464;
const XSAVE_HEADER_OFF: usize = 512;
const XSAVE_HEADER_LEN: usize = 64;
/// XFEATURE_XTILE_DATA: AMX tile data, enabled per process on request.
const XFEATURE_XTILE_DATA: u64 = 1 << 18;

impl XsavePlan {
    fn from_leader(area: &[u8]) -> Option<Self> {
        let features =
            u64::from_le_bytes(area.get(SW_BYTES_OFF..SW_BYTES_OFF + 8)?.try_into().ok()?);
        let len = area.len();
        // x87 | SSE at least, and a whole header: anything else stays with ptrace.
        if features & 3 != 3 || len < XSAVE_HEADER_OFF + XSAVE_HEADER_LEN {
            return None;
        }
        let excluded = if crate::sys::cpu::xgetbv1_available() {
            features & XFEATURE_XTILE_DATA
        } else {
            0
        };
        let rfbm = features & !excluded;
        let mut span = XSAVE_HEADER_OFF + XSAVE_HEADER_LEN;
        for i in 2..64 {
            if rfbm & (1 << i) != 0 {
                let (offset, size) = crate::sys::cpu::xsave_component(i);
                span = span.max(offset as usize + size as usize);
            }
        }
        if span > len {
            return None;
        }
        Some(XsavePlan {
            len,
            rfbm,
            excluded,
            end: span,
            span: span.next_multiple_of(64),
            sw_bytes: area.get(SW_BYTES_OFF..XSAVE_HEADER_OFF)?.try_into().ok()?,
        })
    }

    /// The area as ptrace shows it, from what the routine saved, or None when the thread
    /// uses a feature the routine left out (`xinuse`).
    fn to_xstate(&self, saved: &[u8], xinuse: u64) -> Option<XState> {
        if xinuse & self.excluded != 0 {
            return None;
        }
        // What follows the span is the left-out features in their initial state: zeros.
        let mut bytes = saved.get(..self.span.min(self.len))?.to_vec();
        bytes[SW_BYTES_OFF..XSAVE_HEADER_OFF].copy_from_slice(&self.sw_bytes);
        bytes[XSAVE_HEADER_OFF + 8..XSAVE_HEADER_OFF + XSAVE_HEADER_LEN].fill(0);
        Some(XState::from_prefix(bytes, self.len))
    }
}

/// What [`Parasite::threads_state`] read of one thread.
#[derive(Debug, Clone)]
pub struct ThreadDump {
    /// The rseq registration, when the thread routine confirmed it (otherwise ask ptrace).
    pub rseq: Option<RseqConfig>,
    /// The GDT TLS slots (ptrace, read as the thread trapped).
    pub tls: [UserDesc; 3],
    /// Registers and XSAVE area as they were (restored).
    pub regs: TaskRegs,
    /// Blocked signals as they were (restored).
    pub sigmask: u64,
    /// What the thread routine read inside the thread.
    pub state: ThreadState,
}

fn cmd_name(cmd: u32) -> &'static str {
    match cmd {
        CMD_SET_PIPE => "SET_PIPE",
        CMD_DUMP_PAGES => "DUMP_PAGES",
        CMD_MPROTECT => "MPROTECT",
        CMD_DRAIN_FDS => "DRAIN_FDS",
        CMD_MISC => "MISC",
        CMD_SIGACTIONS => "SIGACTIONS",
        CMD_POSIX_TIMERS => "POSIX_TIMERS",
        CMD_THREAD_STATE => "THREAD_STATE",
        CMD_FINI => "FINI",
        CMD_DUMP_PAGES_TO => "DUMP_PAGES",
        CMD_USERFAULTFD => "USERFAULTFD",
        _ => "unknown",
    }
}

impl<'a> Parasite<'a> {
    /// Injects the parasite into the process of `leader` (its thread group leader, stopped;
    /// all other threads seized too) and starts it.
    pub fn inject(leader: &'a SeizedTask) -> Result<Self> {
        Self::inject_with_slots(leader, DEFAULT_SLOTS)
    }

    /// [`Parasite::inject`] with room to run the thread routine in `slots` threads at once
    /// (1..=[`MAX_SLOTS`]).
    pub fn inject_with_slots(leader: &'a SeizedTask, slots: usize) -> Result<Self> {
        let slots = slots.clamp(1, MAX_SLOTS);
        leader.check_tracer("inject parasite")?;
        let pid = leader.tgid();
        if !leader.is_leader() {
            return Err(Error::Request {
                cmd: "inject",
                pid,
                what: format!("thread {} is not the thread group leader", leader.tid()),
            });
        }
        let saved = leader.task_regs()?;
        let saved_mask = leader.sigmask()?;
        let remote = Remote::new(leader)?;
        let size = blob::SIZE as u64;
        // The leader's signal frame (sigframe.rs), written before the parasite can run.
        let frame_off = size + ARGS_SIZE;
        let frame_len = (sigframe::FRAME_FPSTATE as u64 + saved.xstate.len() as u64 + 64)
            .next_multiple_of(PAGE);
        let slots_off = frame_off + frame_len + STACK_SIZE;
        let xsave = XsavePlan::from_leader(saved.xstate.as_bytes());
        // A slot: state and scratch, the XSAVE area and its MAGIC2, and room below the
        // slot's end for a signal frame (the routine never unblocks signals while it runs,
        // but the dumper gives a thread its mask back a moment before its registers).
        let slot_size = xsave
            .as_ref()
            .map_or(THREAD_SLOT, |x| THREAD_XSAVE_OFF + 2 * x.span + 64 + 1024)
            .next_multiple_of(THREAD_SLOT) as u64;
        let len = slots_off + slots as u64 * slot_size;
        let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        let locked_before = locked_kib(pid);
        let map = RemoteMapping::new(remote, len, prot)?;
        let base = map.addr();
        let mlockall = mlockall_future(pid, base, len, locked_before);
        map.write(0, &DUMP.relocated(base))?;
        let scratch = base + size + SCRATCH;
        let sock_type = (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as u64;
        // The blob's own gadget from here on: no word of the task's code poked.
        let in_area = Remote::with_gadget(leader, base + blob::EXPORT_SYSCALL_GADGET as u64);
        in_area.syscall(
            "socketpair",
            libc::SYS_socketpair,
            &[libc::AF_UNIX as u64, sock_type, 0, scratch],
        )?;
        let mut pair = [0u8; 8];
        map.read(size + SCRATCH, &mut pair)?;
        let task_sock = i32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
        let task_peer = i32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
        let sock = take_fd(pid, task_peer);
        let closed = in_area.syscall("close", libc::SYS_close, &[task_peer as u64]);
        let sock = match (sock, closed) {
            (Ok(sock), Ok(_)) => sock,
            (Err(e), _) | (Ok(_), Err(e)) => {
                let _ = in_area.syscall("close", libc::SYS_close, &[task_sock as u64]);
                let _ = in_area.syscall("close", libc::SYS_close, &[task_peer as u64]);
                return Err(e.into());
            }
        };
        // From here on the Parasite owns the area and the task's socket: any failure cures.
        let (base, len) = map.leak();
        let mut parasite = Parasite {
            leader,
            saved,
            saved_mask,
            exec_ip: remote.ip(),
            base,
            len,
            sock,
            task_sock,
            pipes: Vec::new(),
            state: State::Stopped,
            slots_off,
            slots,
            slot_size,
            xsave,
            leader_rseq: None,
            mlockall,
        };
        let frame_addr = base + frame_off;
        let frame = sigframe::frame(
            frame_addr,
            &parasite.saved.regs,
            saved_mask,
            &parasite.saved.xstate,
        );
        crate::sys::mem::write(pid, frame_addr, &frame)?;
        let (exit_frame, exit_syscall_ret) =
            write_exit_frame(pid, &parasite.saved, saved_mask).unwrap_or((0, 0));
        let args = ParasiteArgs {
            magic: ARGS_MAGIC,
            sock_fd: task_sock,
            pad: 0,
            cure_sp: frame_addr + sigframe::FRAME_UC as u64,
            area_base: base,
            area_len: len,
            exit_frame,
            exit_syscall_ret,
            unmap_ok: 1,
        };
        crate::sys::mem::write(pid, base + size, bytes_of(&args))?;
        crate::sys::stop_point::stop_point("inject");
        parasite.start()?;
        crate::sys::stop_point::stop_point("serve");
        Ok(parasite)
    }

    fn start(&mut self) -> Result<()> {
        let mut regs = self.saved.regs;
        regs.ip = self.base + blob::EXPORT_ENTRY as u64;
        regs.sp = self.base + self.slots_off;
        regs.di = self.base + blob::SIZE as u64;
        regs.orig_ax = u64::MAX;
        regs.flags &= !(EFLAGS_TF | EFLAGS_DF);
        self.leader.set_regs(&regs)?;
        self.leader.set_sigmask(!(1u64 << (libc::SIGTRAP - 1)))?;
        crate::sys::stop_point::stop_point("start");
        self.leader.cont(0)?;
        self.state = State::Running;
        Ok(())
    }

    /// The `mlockall` flags for future mappings in effect in the task (MCL_FUTURE and
    /// MCL_ONFAULT; 0: none), seen on the parasite's own area when it was mapped.
    pub fn mlockall_future(&self) -> u32 {
        self.mlockall
    }

    /// Address of the parasite area in the task.
    pub fn area(&self) -> (u64, u64) {
        (self.base, self.len)
    }

    /// The parasite's socket descriptor number inside the task.
    pub fn task_socket_fd(&self) -> i32 {
        self.task_sock
    }

    /// The first page pipe's descriptor number inside the task, once pages were dumped.
    pub fn task_pipe_fd(&self) -> Option<i32> {
        self.pipes.first().map(|p| p.task_fd)
    }

    /// Descriptor numbers of every page pipe inside the task.
    pub fn task_pipe_fds(&self) -> Vec<i32> {
        self.pipes.iter().map(|p| p.task_fd).collect()
    }

    /// Sends command `cmd` and returns the reply payload and descriptors.
    fn command(
        &mut self,
        cmd: u32,
        payload: &[u8],
        fds: &[i32],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        self.send_command(cmd, payload, fds)?;
        self.recv_reply(cmd)
    }

    /// Sends command `cmd` (its reply is read by [`Parasite::recv_reply`]; commands are
    /// answered in order).
    fn send_command(&mut self, cmd: u32, payload: &[u8], fds: &[i32]) -> Result<()> {
        let name = cmd_name(cmd);
        let pid = self.leader.tgid();
        if self.state != State::Running {
            return Err(Error::Request {
                cmd: name,
                pid,
                what: "the parasite is not running".into(),
            });
        }
        let hdr = CmdHeader {
            cmd,
            len: payload.len() as u32,
        };
        if std::mem::size_of::<CmdHeader>() + payload.len() > MAX_MSG {
            return Err(Error::Request {
                cmd: name,
                pid,
                what: format!("{} bytes of payload", payload.len()),
            });
        }
        if let Err(e) = channel::send_msg(self.sock.as_fd(), &[bytes_of(&hdr), payload], fds) {
            return Err(self.explain_silence(name, e));
        }
        Ok(())
    }

    /// Waits for the reply to command `cmd` and returns its payload and descriptors.
    fn recv_reply(&mut self, cmd: u32) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let name = cmd_name(cmd);
        let pid = self.leader.tgid();
        while !channel::poll_readable(self.sock.as_fd(), POLL_MS)? {
            if let Some(event) = self.leader.poll()? {
                self.state = State::Stopped;
                let ip = self.leader.regs().map(|r| r.ip).unwrap_or(0);
                return Err(Error::Stopped {
                    cmd: name,
                    pid,
                    event,
                    ip,
                });
            }
        }
        let mut buf = vec![0u8; MAX_MSG];
        let (n, fds) = match channel::recv_msg(self.sock.as_fd(), &mut buf) {
            Ok(r) => r,
            Err(e) => return Err(self.explain_silence(name, e)),
        };
        if n == THREAD_NOTE_LEN {
            // A late note of the thread routine (a wave that failed): not a reply.
            return self.recv_reply(cmd);
        }
        if n == 0 {
            let e = crate::sys::Error::Sys {
                op: "recvmsg",
                errno: Errno::ECONNRESET,
            };
            return Err(self.explain_silence(name, e));
        }
        let payload = reply::header(cmd, &buf[..n]).map_err(|e| reply_error(name, pid, e))?;
        Ok((payload.to_vec(), fds))
    }

    /// A socket error: say "task N died" if the task is gone.
    fn explain_silence(&mut self, cmd: &'static str, err: crate::sys::Error) -> Error {
        let pid = self.leader.tgid();
        match self.leader.poll() {
            Err(e) => e.into(),
            Ok(Some(event)) => {
                self.state = State::Stopped;
                let ip = self.leader.regs().map(|r| r.ip).unwrap_or(0);
                Error::Stopped {
                    cmd,
                    pid,
                    event,
                    ip,
                }
            }
            Ok(None) if crate::sys::proc_tasks::is_exiting(pid, self.leader.tid()) => {
                self.state = State::Cured;
                crate::sys::Error::TaskDied { pid, op: cmd }.into()
            }
            Ok(None) => Error::Protocol {
                cmd,
                pid,
                what: err.to_string(),
            },
        }
    }

    /// Writes the pages of `iovs` (page-aligned regions of the task's memory, readable) to
    /// `out` at its file position: the parasite vmsplices them into a pipe, we splice the
    /// pipe into `out`; no copy passes through user space. Returns the bytes written.
    ///
    /// Several pipes (up to MAX_PIPES, 1 MiB each) keep the parasite ahead of us: while we
    /// splice batch k into `out`, it already vmsplices batches k+1.. into the other pipes
    /// (commands are sent ahead, replies come back in order).
    pub fn dump_pages(&mut self, iovs: &[RemoteIov], out: BorrowedFd<'_>) -> Result<u64> {
        let pid = self.leader.tgid();
        for iov in iovs {
            if iov.base % PAGE != 0 || iov.len % PAGE != 0 {
                return Err(Error::Request {
                    cmd: "DUMP_PAGES",
                    pid,
                    what: format!("region {:#x}+{:#x} is not page aligned", iov.base, iov.len),
                });
            }
        }
        let capacity = self.page_pipes()?;
        // Batches of at most one pipe's capacity and MAX_IOVS - 1 regions (the pipe index
        // takes one region's room in the message).
        let mut batches: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut batch: Vec<RemoteIov> = Vec::new();
        let mut batch_bytes = 0;
        let mut close = |batch: &mut Vec<RemoteIov>, bytes: &mut u64| {
            if !batch.is_empty() {
                batches.push((bytes_of_slice(batch).to_vec(), *bytes));
                batch.clear();
                *bytes = 0;
            }
        };
        for iov in iovs {
            let (mut base, mut left) = (iov.base, iov.len);
            while left > 0 {
                let take = left.min(capacity - batch_bytes);
                batch.push(RemoteIov { base, len: take });
                batch_bytes += take;
                base += take;
                left -= take;
                if batch_bytes == capacity || batch.len() == MAX_IOVS - 1 {
                    close(&mut batch, &mut batch_bytes);
                }
            }
        }
        close(&mut batch, &mut batch_bytes);
        let npipes = self.pipes.len();
        let (mut sent, mut done, mut total) = (0usize, 0usize, 0u64);
        let result = (|| {
            while done < batches.len() {
                while sent < batches.len() && sent - done < npipes {
                    let mut payload = ((sent % npipes) as u64).to_le_bytes().to_vec();
                    payload.extend_from_slice(&batches[sent].0);
                    self.send_command(CMD_DUMP_PAGES_TO, &payload, &[])?;
                    sent += 1;
                }
                let replied = self.recv_reply(CMD_DUMP_PAGES_TO);
                let bytes = batches[done].1;
                let pipe = done % npipes;
                done += 1;
                let (reply, _) = replied?;
                reply::byte_count(&reply, bytes).map_err(|e| reply_error("DUMP_PAGES", pid, e))?;
                channel::splice_exact(self.pipes[pipe].read.as_fd(), out, bytes as usize)?;
                total += bytes;
                crate::sys::stop_point::stop_point("pages");
            }
            Ok(total)
        })();
        if result.is_err() {
            // Collect the replies still due (the parasite answers every command), then
            // empty the pipes: nothing of this dump may go into the next one.
            while done < sent && self.state == State::Running {
                done += 1;
                if let Err(e) = self.recv_reply(CMD_DUMP_PAGES_TO) {
                    if !matches!(e, Error::Command { .. } | Error::Protocol { .. }) {
                        break;
                    }
                }
            }
            self.discard_pipes();
        }
        result
    }

    /// vmsplices `iovs` (page aligned, readable) into new pipes the caller keeps, one pipe
    /// after the other, in order: the pipes hold references to the pages, not copies, and
    /// keep them after the parasite is gone (CRIU's pre-dump splice mode: the tree runs again
    /// before the pipes are drained; a dump: writer threads drain them while the next process
    /// is dumped). Returns each pipe's read end and its bytes.
    ///
    /// Commands go out ahead of the replies (up to [`PIN_AHEAD`] pipes: SET_PIPE, then
    /// DUMP_PAGES_TO into it), so the parasite vmsplices the next pipe while we read the
    /// reply about the previous one: no round trip per pipe.
    pub fn pin_pages(&mut self, iovs: &[RemoteIov]) -> Result<Vec<(OwnedFd, u64)>> {
        let pid = self.leader.tgid();
        if !self.pipes.is_empty() {
            return Err(Error::Request {
                cmd: "DUMP_PAGES",
                pid,
                what: "pinning pages after DUMP_PAGES (the pipe slots are taken)".into(),
            });
        }
        if let Some(iov) = iovs
            .iter()
            .find(|i| i.base % PAGE != 0 || i.len % PAGE != 0)
        {
            return Err(Error::Request {
                cmd: "DUMP_PAGES",
                pid,
                what: format!("region {:#x}+{:#x} is not page aligned", iov.base, iov.len),
            });
        }
        let mut out = Vec::new();
        let mut todo: std::collections::VecDeque<RemoteIov> = iovs.iter().copied().collect();
        // Pipes whose two commands are sent and whose replies are due, in order.
        let mut due: std::collections::VecDeque<(OwnedFd, u64)> = Default::default();
        // Replies not read yet.
        let mut replies = 0usize;
        let result = (|| {
            loop {
                while due.len() < PIN_AHEAD && !todo.is_empty() {
                    let (read, write) = channel::pipe()?;
                    let cap = match channel::set_pipe_size(write.as_fd(), PIPE_SIZE) {
                        Ok(c) => c,
                        Err(_) => channel::set_pipe_size(write.as_fd(), 64 * 1024)?,
                    } as u64
                        / PAGE
                        * PAGE;
                    let mut batch: Vec<RemoteIov> = Vec::new();
                    let mut bytes = 0;
                    while let Some(iov) = todo.pop_front() {
                        let take = iov.len.min(cap - bytes);
                        batch.push(RemoteIov {
                            base: iov.base,
                            len: take,
                        });
                        bytes += take;
                        if take < iov.len {
                            todo.push_front(RemoteIov {
                                base: iov.base + take,
                                len: iov.len - take,
                            });
                        }
                        if bytes == cap || batch.len() == MAX_IOVS - 1 {
                            break;
                        }
                    }
                    // Slot 0 takes this pipe (the previous one's write end closes in the
                    // task; its data stays in the pipe we keep).
                    self.send_command(CMD_SET_PIPE, bytes_of(&0i32), &[write.as_raw_fd()])?;
                    replies += 1;
                    drop(write);
                    let mut payload = 0u64.to_le_bytes().to_vec();
                    payload.extend_from_slice(bytes_of_slice(&batch));
                    self.send_command(CMD_DUMP_PAGES_TO, &payload, &[])?;
                    replies += 1;
                    due.push_back((read, bytes));
                }
                let Some((read, bytes)) = due.pop_front() else {
                    return Ok(());
                };
                // The SET_PIPE reply first: if it failed, so does the DUMP_PAGES_TO after
                // it, whose reply is still collected below.
                let set = self.recv_reply(CMD_SET_PIPE);
                replies -= 1;
                let set_failed = match set {
                    Ok(_) => None,
                    // Answered: the DUMP_PAGES_TO after it is answered too.
                    Err(e @ Error::Command { .. }) => Some(e),
                    Err(e) => return Err(e),
                };
                let dumped = self.recv_reply(CMD_DUMP_PAGES_TO);
                replies -= 1;
                if let Some(e) = set_failed {
                    return Err(e);
                }
                let (reply, _) = dumped?;
                reply::byte_count(&reply, bytes).map_err(|e| reply_error("DUMP_PAGES", pid, e))?;
                out.push((read, bytes));
                crate::sys::stop_point::stop_point("pages");
            }
        })();
        if let Err(e) = result {
            // Collect the replies still due (two per pipe; the parasite answers every
            // command), so that the next command meets its own reply.
            for _ in 0..replies {
                if self.state != State::Running {
                    break;
                }
                if let Err(e) = self.recv_reply(CMD_DUMP_PAGES_TO) {
                    if !matches!(e, Error::Command { .. } | Error::Protocol { .. }) {
                        break;
                    }
                }
            }
            return Err(e);
        }
        Ok(out)
    }

    /// Empties the page pipes after a failed DUMP_PAGES (the pages spliced before the failure
    /// must not go into the next image).
    fn discard_pipes(&self) {
        for p in &self.pipes {
            if let Err(e) = crate::sys::infect::drain_pipe(p.read.as_fd()) {
                tracing::error!("draining a page pipe of {}: {e}", self.leader.tgid());
            }
        }
    }

    /// Creates the page pipes and hands their write ends to the parasite; returns the
    /// capacity of each.
    fn page_pipes(&mut self) -> Result<u64> {
        if let Some(p) = self.pipes.first() {
            return Ok(p.capacity);
        }
        let mut capacity = u64::MAX;
        for idx in 0..MAX_PIPES as i32 {
            let (read, write) = channel::pipe()?;
            let cap = match channel::set_pipe_size(write.as_fd(), PIPE_SIZE) {
                Ok(c) => c,
                Err(_) => channel::set_pipe_size(write.as_fd(), 64 * 1024)?,
            } as u64;
            let (reply, _) = self.command(CMD_SET_PIPE, bytes_of(&idx), &[write.as_raw_fd()])?;
            drop(write);
            let task_fd = reply::pipe_fd(&reply)
                .map_err(|e| reply_error("SET_PIPE", self.leader.tgid(), e))?;
            let cap = cap / PAGE * PAGE;
            capacity = capacity.min(cap);
            self.pipes.push(PagePipe {
                read,
                capacity: cap,
                task_fd,
            });
        }
        for p in &mut self.pipes {
            p.capacity = capacity;
        }
        Ok(capacity)
    }

    /// Runs mprotect inside the task for each request (to read PROT_NONE memory, and back).
    pub fn mprotect(&mut self, reqs: &[MprotectReq]) -> Result<()> {
        for chunk in reqs.chunks((MAX_MSG - 64) / std::mem::size_of::<MprotectReq>()) {
            self.command(CMD_MPROTECT, bytes_of_slice(chunk), &[])?;
        }
        Ok(())
    }

    /// Receives duplicates of the task's descriptors `fds` (SCM_RIGHTS), with what the task
    /// knows of each (close-on-exec, owner, signal), in the same order.
    pub fn drain_fds(&mut self, fds: &[i32]) -> Result<Vec<(OwnedFd, FdOpts)>> {
        let pid = self.leader.tgid();
        let mut out = Vec::with_capacity(fds.len());
        for chunk in fds.chunks(MAX_FDS) {
            let (payload, got) = self.command(CMD_DRAIN_FDS, bytes_of_slice(chunk), &[])?;
            let opts = reply::fd_opts(&payload, chunk, got.len())
                .map_err(|e| reply_error("DRAIN_FDS", pid, e))?;
            out.extend(got.into_iter().zip(opts));
        }
        Ok(out)
    }

    /// A userfaultfd made in the task by `userfaultfd(flags)` (its mm is the task's), sent
    /// over and closed there: the task's descriptor table is as before.
    pub fn userfaultfd(&mut self, flags: u32) -> Result<OwnedFd> {
        let pid = self.leader.tgid();
        let (_, mut got) = self.command(CMD_USERFAULTFD, &(flags as i32).to_ne_bytes(), &[])?;
        match (got.pop(), got.is_empty()) {
            (Some(fd), true) => Ok(fd),
            _ => Err(Error::Protocol {
                cmd: "USERFAULTFD",
                pid,
                what: "the reply carried no single descriptor".into(),
            }),
        }
    }

    /// Per-process state from inside (see [`MiscState`]).
    pub fn misc(&mut self) -> Result<MiscState> {
        let (payload, _) = self.command(CMD_MISC, &[], &[])?;
        reply::misc(&payload).map_err(|e| reply_error("MISC", self.leader.tgid(), e))
    }

    /// The 64 signal dispositions; index `sig - 1` (SIGKILL and SIGSTOP entries are zero).
    pub fn sigactions(&mut self) -> Result<Vec<KSigaction>> {
        let (payload, _) = self.command(CMD_SIGACTIONS, &[], &[])?;
        reply::sigactions(&payload).map_err(|e| reply_error("SIGACTIONS", self.leader.tgid(), e))
    }

    /// Values of the POSIX timers `ids` (from /proc/PID/timers), in the same order.
    pub fn posix_timers(&mut self, ids: &[i32]) -> Result<Vec<PosixTimerState>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_TIMERS) {
            let (payload, _) = self.command(CMD_POSIX_TIMERS, bytes_of_slice(chunk), &[])?;
            out.extend(
                reply::posix_timers(&payload, chunk)
                    .map_err(|e| reply_error("POSIX_TIMERS", self.leader.tgid(), e))?,
            );
        }
        Ok(out)
    }

    /// Per-thread state of `thread` (a seized thread of this process): the leader answers
    /// itself, other threads run remote syscalls through the blob's gadget.
    pub fn thread_state(&mut self, thread: &SeizedTask) -> Result<ThreadState> {
        let pid = self.leader.tgid();
        if thread.tgid() != pid {
            return Err(Error::Request {
                cmd: "THREAD_STATE",
                pid,
                what: format!(
                    "thread {} belongs to process {}",
                    thread.tid(),
                    thread.tgid()
                ),
            });
        }
        if thread.tid() == self.leader.tid() {
            let (payload, _) = self.command(CMD_THREAD_STATE, &[], &[])?;
            return reply::thread_state(&payload).map_err(|e| reply_error("THREAD_STATE", pid, e));
        }
        let mut one = self.threads_state(&[thread])?;
        Ok(one.remove(0).state)
    }

    /// Registers, XSAVE area, blocked mask and [`ThreadState`] of `threads` (seized threads
    /// of this process other than the leader), in the same order; the threads run the blob's
    /// thread routine all at once (see the module doc) and are left exactly as they were.
    pub fn threads_state(&mut self, threads: &[&SeizedTask]) -> Result<Vec<ThreadDump>> {
        let pid = self.leader.tgid();
        for t in threads {
            if t.tgid() != pid || t.tid() == self.leader.tid() {
                return Err(Error::Request {
                    cmd: "thread routine",
                    pid,
                    what: format!("thread {} is not a non-leader thread of {pid}", t.tid()),
                });
            }
        }
        if !threads.is_empty() {
            // From here on other threads may run the area's code: a leader left alone must
            // not unmap it.
            let at =
                self.base + blob::SIZE as u64 + std::mem::offset_of!(ParasiteArgs, unmap_ok) as u64;
            crate::sys::mem::write(pid, at, &0u64.to_le_bytes())?;
        }
        let mut out = Vec::with_capacity(threads.len());
        for wave in threads.chunks(self.slots) {
            self.run_wave(wave, &mut out)?;
        }
        Ok(out)
    }

    fn run_wave(&mut self, wave: &[&SeizedTask], out: &mut Vec<ThreadDump>) -> Result<()> {
        use crate::sys::ptrace;
        let pid = self.leader.tgid();
        let entry = self.base + blob::EXPORT_THREAD_ENTRY as u64;
        let area = self.base + self.slots_off;
        let stride = self.slot_size;
        let slot = |i: usize| area + i as u64 * stride;
        let (xsave_span, rfbm) = self
            .xsave
            .as_ref()
            .map_or((0, 0), |x| (x.span as u64, x.rfbm));
        let mut flags = 0;
        if self.xsave.as_ref().is_some_and(|x| x.excluded != 0) {
            flags |= THREAD_FLAG_XINUSE;
        }
        // ptrace answers only the tracer thread: check once, then use the raw requests.
        self.leader.check_tracer("thread routine")?;
        if let Some(t) = wave.iter().find(|t| t.tracer() != self.leader.tracer()) {
            t.check_tracer("thread routine")?;
        }
        let mut saved: Vec<UserRegs> = Vec::with_capacity(wave.len());
        for t in wave {
            saved.push(ptrace::get_regs(t.tid())?);
        }
        self.write_slots(wave.len(), &saved)?;
        // Start every thread; (tid of each started one, its own mask once a signal made us
        // read it by ptrace).
        let mut own_masks: Vec<Option<u64>> = Vec::with_capacity(wave.len());
        let mut result = Ok(());
        for (i, t) in wave.iter().enumerate() {
            let tid = t.tid();
            let mut regs = saved[i];
            regs.ip = entry;
            regs.di = slot(i);
            regs.si = xsave_span;
            regs.dx = rfbm;
            regs.cx = flags;
            let guess = self.rseq_guess(saved[i].fs_base);
            regs.r8 = guess.map_or(0, |g| g.rseq_abi_pointer);
            regs.r9 = guess.map_or(0, |g| u64::from(g.rseq_abi_size));
            regs.r10 = guess.map_or(0, |g| u64::from(g.signature));
            regs.sp = slot(i + 1);
            regs.orig_ax = u64::MAX;
            regs.flags &= !(EFLAGS_TF | EFLAGS_DF);
            // From here the thread must get its registers back, whatever happens.
            own_masks.push(None);
            let go = ptrace::set_regs(tid, &regs).and_then(|_| ptrace::cont(tid, 0));
            if let Err(e) = go {
                result = Err(e.into());
                break;
            }
        }
        let started = &wave[..own_masks.len()];
        if result.is_ok() {
            result = self.collect_notes(started, &mut own_masks, slot);
            crate::sys::stop_point::stop_point("threads");
        }
        // Every started thread is stopped (in the routine's final poll, or wherever it is on
        // an error path) and gets its own mask and registers back at once: the area it runs
        // in is unmapped at cure.
        for t in started {
            let _ = ptrace::interrupt(t.tid());
        }
        let mut tls = Vec::with_capacity(started.len());
        for (i, t) in started.iter().enumerate() {
            match park_thread(t, &mut own_masks[i]).and_then(|_| Ok(ptrace::tls(t.tid())?)) {
                Ok(descs) => tls.push(descs),
                Err(e) => {
                    tls.push(Default::default());
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        // The XSAVE area came from ptrace when the routine does not save it.
        let tail = if self.xsave.is_some() {
            THREAD_XSAVE_OFF + xsave_span as usize
        } else {
            std::mem::size_of::<ThreadState>()
        };
        let stride = stride as usize;
        let mut raw = vec![0u8; (started.len().max(1) - 1) * stride + tail];
        let read = crate::sys::mem::read(pid, area, &mut raw);
        let mut masks = Vec::with_capacity(started.len());
        for (i, t) in started.iter().enumerate() {
            // The mask the routine found (it blocked every signal), unless ptrace read it
            // first; none when the routine did not get to block anything.
            let word = |off: usize| {
                raw.get(i * stride + off..i * stride + off + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            };
            let mask = own_masks[i].or_else(|| match (&read, word(512)) {
                (Ok(()), Some(1)) => word(504),
                _ => None,
            });
            masks.push(mask);
            let back = match mask {
                Some(m) => ptrace::set_sigmask(t.tid(), m),
                None => Ok(()),
            }
            .and_then(|_| ptrace::set_regs(t.tid(), &saved[i]));
            if let Err(e) = back {
                if result.is_ok() {
                    result = Err(e.into());
                }
            }
        }
        result?;
        read?;
        let mut xstates = Vec::with_capacity(started.len());
        if self.xsave.is_none() {
            for t in wave {
                xstates.push(ptrace::get_xstate(t.tid())?);
            }
        }
        let mut xstates = xstates.into_iter();
        let own = own_tids(self.leader.tgid(), wave);
        for (i, (tls, mask)) in tls.into_iter().zip(masks).enumerate() {
            let tid = wave[i].tid();
            let regs = saved[i];
            let slot_bytes = &raw[i * stride..];
            let state = reply::thread_slot(slot_bytes, own[i], xsave_span as usize)
                .map_err(|e| reply_error("thread routine", tid, e))?;
            let mask = mask.unwrap_or(state.blocked);
            let saved = match &self.xsave {
                Some(plan) if state.xsave_len as usize == plan.span => {
                    let xinuse = u64::from_le_bytes(
                        slot_bytes[THREAD_XINUSE_OFF..THREAD_XINUSE_OFF + 8]
                            .try_into()
                            .unwrap_or([0xff; 8]),
                    );
                    plan.to_xstate(&slot_bytes[THREAD_XSAVE_OFF..], xinuse)
                }
                _ => None,
            };
            let xstate = match (saved, xstates.next()) {
                (Some(x), _) | (None, Some(x)) => x,
                (None, None) => ptrace::get_xstate(tid)?,
            };
            let rseq = if state.rseq_status == 0 {
                self.rseq_guess(regs.fs_base)
            } else {
                None
            };
            out.push(ThreadDump {
                rseq,
                tls,
                regs: TaskRegs { regs, xstate },
                sigmask: mask,
                state,
            });
        }
        Ok(())
    }

    /// Writes the first `n` thread slots before their threads start: the socket, the XSAVE
    /// software bytes and each thread's signal frame (its registers `saved[i]`; the routine
    /// fills the mask and the XSAVE area), so that a thread finding the dumper gone returns
    /// through it.
    fn write_slots(&self, n: usize, saved: &[UserRegs]) -> Result<()> {
        let area = self.base + self.slots_off;
        let stride = self.slot_size as usize;
        let mut init = vec![0u8; (n.max(1) - 1) * stride + THREAD_XSAVE_OFF];
        for (i, regs) in saved.iter().take(n).enumerate() {
            let s = &mut init[i * stride..];
            s[THREAD_SOCK_OFF..THREAD_SOCK_OFF + 8]
                .copy_from_slice(&(self.task_sock as u64).to_le_bytes());
            let fpstate = match &self.xsave {
                Some(plan) => {
                    s[THREAD_SW_BYTES_OFF..THREAD_SW_BYTES_OFF + 24]
                        .copy_from_slice(&sigframe::sw_bytes(plan.rfbm, plan.end));
                    area + (i * stride + THREAD_XSAVE_OFF) as u64
                }
                // No XSAVE in the routine: a thread returning through its frame gets its
                // FPU state reset (the plan exists on every CPU with XSAVE).
                None => 0,
            };
            let uc = sigframe::ucontext(regs, 0, fpstate);
            s[THREAD_FRAME_OFF..THREAD_FRAME_OFF + sigframe::UC_LEN].copy_from_slice(&uc);
        }
        Ok(crate::sys::mem::write(self.leader.tgid(), area, &init)?)
    }

    /// Waits for the note of every thread of `wave` (started into the routine) on the
    /// socket. A thread stopped by a signal while its own mask was in force (before the
    /// routine's first system call) gets every signal blocked by ptrace and the signal back
    /// (it stays pending); its own mask is read then, recorded in `own_masks` and written
    /// into its frame.
    fn collect_notes(
        &mut self,
        wave: &[&SeizedTask],
        own_masks: &mut [Option<u64>],
        slot: impl Fn(usize) -> u64,
    ) -> Result<()> {
        use crate::sys::ptrace;
        let pid = self.leader.tgid();
        let mut noted = vec![false; wave.len()];
        let mut left = wave.len();
        // The routine sends gettid(): the tid in the task's own pid namespace.
        let index: std::collections::HashMap<i32, usize> = own_tids(pid, wave)
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i))
            .collect();
        let mut buf = vec![0u8; MAX_MSG];
        while left > 0 {
            // Notes come in bursts: take every one waiting, then wait for more; a thread
            // stopped by a signal is seen when no note came for POLL_MS.
            while left > 0 && channel::poll_readable(self.sock.as_fd(), 0)? {
                let (n, _) = channel::recv_msg(self.sock.as_fd(), &mut buf)?;
                match reply::thread_note(&buf[..n]).and_then(|tid| index.get(&tid)) {
                    Some(&i) if !noted[i] => {
                        noted[i] = true;
                        left -= 1;
                    }
                    _ => {
                        return Err(Error::Protocol {
                            cmd: "thread routine",
                            pid,
                            what: format!("unexpected {n}-byte message"),
                        })
                    }
                }
            }
            if left == 0 || channel::poll_readable(self.sock.as_fd(), POLL_MS)? {
                continue;
            }
            for (i, t) in wave.iter().enumerate() {
                if noted[i] {
                    continue;
                }
                match t.poll()? {
                    None => {}
                    Some(WaitEvent::SignalStop { sig: libc::SIGSTOP }) => {
                        ptrace::cont(t.tid(), libc::SIGSTOP)?
                    }
                    Some(WaitEvent::SignalStop { sig }) => {
                        if own_masks[i].is_none() {
                            let mask = ptrace::get_sigmask(t.tid())?;
                            own_masks[i] = Some(mask);
                            let frame = slot(i) + THREAD_FRAME_OFF as u64;
                            crate::sys::mem::write(
                                pid,
                                frame + sigframe::UC_SIGMASK as u64,
                                &mask.to_le_bytes(),
                            )?;
                            crate::sys::mem::write(
                                pid,
                                slot(i) + THREAD_MASK_KNOWN_OFF as u64,
                                &1u64.to_le_bytes(),
                            )?;
                        }
                        ptrace::set_sigmask(t.tid(), u64::MAX)?;
                        ptrace::cont(t.tid(), sig)?;
                    }
                    Some(_) => ptrace::cont(t.tid(), 0)?,
                }
            }
        }
        Ok(())
    }

    /// Tells the thread routine the leader's rseq registration (read by ptrace before the
    /// parasite started): threads whose TLS sits at another base are asked to confirm the
    /// same registration at the same offset from their own base (glibc's layout), which
    /// saves a `PTRACE_GET_RSEQ_CONFIGURATION` per thread. A thread that cannot confirm it
    /// gets no [`ThreadDump::rseq`].
    pub fn set_leader_rseq(&mut self, rseq: RseqConfig) {
        self.leader_rseq = (rseq.rseq_abi_pointer != 0).then_some(rseq);
    }

    /// The rseq registration the thread routine is asked to confirm in a thread whose
    /// fs base is `fs_base`.
    fn rseq_guess(&self, fs_base: u64) -> Option<RseqConfig> {
        let leader = self.leader_rseq?;
        let leader_fs = self.saved.regs.fs_base;
        if fs_base == 0 || fs_base == leader_fs || leader_fs == 0 {
            return None;
        }
        let ptr = fs_base.wrapping_add(leader.rseq_abi_pointer.wrapping_sub(leader_fs));
        Some(RseqConfig {
            rseq_abi_pointer: ptr,
            ..leader
        })
    }

    /// Registers and XSAVE area of the leader as they were before the parasite started.
    pub fn leader_regs(&self) -> &TaskRegs {
        &self.saved
    }

    /// Blocked signals of the leader as they were before the parasite started.
    pub fn leader_sigmask(&self) -> u64 {
        self.saved_mask
    }

    /// Stops the parasite and removes every trace of it; reports the first failure.
    pub fn cure(mut self) -> Result<()> {
        self.cure_inner()
    }

    fn cure_inner(&mut self) -> Result<()> {
        if self.state == State::Cured {
            return Ok(());
        }
        let pid = self.leader.tgid();
        let mut pipes_closed = false;
        if self.state == State::Running {
            match self.fini() {
                Ok(()) => pipes_closed = true,
                Err(e) if e.is_task_died() => {
                    self.state = State::Cured;
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!("parasite fini in task {pid}: {e}; interrupting it");
                    self.stop_leader()?;
                }
            }
        }
        self.state = State::Stopped;
        // The leader is in an event stop inside the parasite. Each step leaves it able to
        // put itself back should we die: with its socket closed it returns through its frame
        // (the poll says POLLNVAL); with its own registers back it is no longer in the area.
        let remote = Remote::at(self.leader, self.exec_ip);
        let in_area =
            Remote::with_gadget(self.leader, self.base + blob::EXPORT_SYSCALL_GADGET as u64);
        let mut first: Option<Error> = None;
        let mut fds = vec![self.task_sock];
        if !pipes_closed {
            fds.extend(self.task_pipe_fds());
        }
        for fd in fds {
            if let Err(e) = in_area.syscall("close", libc::SYS_close, &[fd as u64]) {
                if e.errno() != Some(Errno::EBADF) {
                    first.get_or_insert(e.into());
                }
            }
        }
        // XSAVE area and mask first, the registers last: one write takes it out of the area.
        if let Err(e) = self.leader.set_xstate(&self.saved.xstate) {
            first.get_or_insert(e.into());
        }
        if let Err(e) = self.leader.set_sigmask(self.saved_mask) {
            first.get_or_insert(e.into());
        }
        if let Err(e) = self.leader.set_regs(&self.saved.regs) {
            first.get_or_insert(e.into());
        }
        if first.is_none() {
            if let Err(e) = remote.syscall("munmap", libc::SYS_munmap, &[self.base, self.len]) {
                first.get_or_insert(e.into());
            }
        }
        self.state = State::Cured;
        first.map_or(Ok(()), Err)
    }

    /// FINI, then stop the leader in the parasite's wait for the hang-up.
    fn fini(&mut self) -> Result<()> {
        self.command(CMD_FINI, &[], &[])?;
        self.stop_leader()?;
        crate::sys::stop_point::stop_point("cure");
        Ok(())
    }

    /// Brings a leader that may still run parasite code into a ptrace stop.
    fn stop_leader(&mut self) -> Result<()> {
        if self.state != State::Running {
            return Ok(());
        }
        self.leader.interrupt()?;
        loop {
            match self.leader.wait()? {
                WaitEvent::EventStop { .. } | WaitEvent::SignalStop { .. } => break,
                WaitEvent::OtherEvent { .. } => self.leader.cont(0)?,
                WaitEvent::Exited { .. } | WaitEvent::Killed { .. } => break,
            }
        }
        self.state = State::Stopped;
        Ok(())
    }
}

impl Drop for Parasite<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.cure_inner() {
            if !e.is_task_died() {
                tracing::error!("curing the parasite in task {}: {e}", self.leader.tgid());
            }
        }
    }
}

/// Waits until `t`, interrupted (in the thread routine's final poll, or anywhere on an error
/// path), is in its `PTRACE_EVENT_STOP`. A signal stop on the way is handled as in
/// [`Parasite::collect_notes`] (its mask recorded in `own_mask`, every signal blocked, the
/// signal handed back to stay pending); SIGSTOP is let through.
fn park_thread(t: &SeizedTask, own_mask: &mut Option<u64>) -> Result<()> {
    use crate::sys::ptrace;
    loop {
        match t.wait()? {
            WaitEvent::EventStop { .. } => return Ok(()),
            WaitEvent::SignalStop { sig: libc::SIGSTOP } => ptrace::cont(t.tid(), libc::SIGSTOP)?,
            WaitEvent::SignalStop { sig } => {
                if own_mask.is_none() {
                    *own_mask = Some(ptrace::get_sigmask(t.tid())?);
                }
                ptrace::set_sigmask(t.tid(), u64::MAX)?;
                ptrace::cont(t.tid(), sig)?;
            }
            WaitEvent::OtherEvent { .. } => ptrace::cont(t.tid(), 0)?,
            event => {
                let ip = t.regs().map(|r| r.ip).unwrap_or(0);
                return Err(Error::Stopped {
                    cmd: "thread routine",
                    pid: t.tid(),
                    event,
                    ip,
                });
            }
        }
    }
}

/// `VmLck` of process `pid` in KiB (None: unreadable).
fn locked_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `mlockall` flags for future mappings of process `pid`, read on its fresh mapping
/// `[base, base + len)`: the kernel adds its length to the locked memory when the process
/// called `mlockall(MCL_FUTURE)` (no query for it exists); then the mapping's VmFlags in
/// smaps tell MCL_ONFAULT (`lf`).
fn mlockall_future(pid: i32, base: u64, len: u64, before: Option<u64>) -> u32 {
    const MCL_FUTURE: u32 = 2;
    const MCL_ONFAULT: u32 = 4;
    let (Some(before), Some(after)) = (before, locked_kib(pid)) else {
        return 0;
    };
    if after < before + len / 1024 {
        return 0;
    }
    let onfault = crate::proc::maps::read_smaps(pid)
        .ok()
        .and_then(|vmas| vmas.into_iter().find(|v| v.start == base))
        .is_some_and(|v| v.has_flag("lf"));
    MCL_FUTURE | if onfault { MCL_ONFAULT } else { 0 }
}

/// Writes the leader's exit frame (see [`ParasiteArgs::exit_frame`] and gadgets.rs) below its
/// stack pointer's red zone: the frame of `saved` and `mask` with the address of an
/// `rt_sigreturn` sequence as its pretcode. Returns the frame's address and the
/// `syscall; ret` to leave through, or None (no gadgets, no mapped stack there): the area
/// then stays behind should the dumper die.
fn write_exit_frame(pid: i32, saved: &TaskRegs, mask: u64) -> Option<(u64, u64)> {
    let (syscall_ret, sigreturn) = super::gadgets::find(pid)?;
    let addr = sigframe::below_red_zone(saved.regs.sp, saved.xstate.len())?;
    let mut frame = sigframe::frame(addr, &saved.regs, mask, &saved.xstate);
    frame[..8].copy_from_slice(&sigreturn.to_le_bytes());
    crate::sys::mem::write(pid, addr, &frame).ok()?;
    Some((addr, syscall_ret))
}

/// The driver's error for a reply that [`reply`] refused.
fn reply_error(cmd: &'static str, pid: i32, e: ReplyError) -> Error {
    match e {
        ReplyError::Failed(errno) => Error::Command { cmd, pid, errno },
        ReplyError::Malformed(what) => Error::Protocol { cmd, pid, what },
    }
}

/// Takes a duplicate of descriptor `fd` of process `pid`.
fn take_fd(pid: i32, fd: i32) -> crate::sys::Result<OwnedFd> {
    let pidfd = channel::pidfd_open(pid)?;
    channel::pidfd_getfd(pid, pidfd.as_fd(), fd)
}

/// The tids of `wave` as the threads themselves see them (`gettid()` in their pid namespace,
/// the last of `NSpid`): the same numbers unless process `pid` is in another pid namespace
/// than the dumper (then one /proc read per thread).
fn own_tids(pid: i32, wave: &[&SeizedTask]) -> Vec<i32> {
    let ns = |p: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/pid"))
            .ok()
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            })
    };
    if ns("self") == ns(&pid.to_string()) {
        return wave.iter().map(|t| t.tid()).collect();
    }
    wave.iter()
        .map(|t| crate::proc::ns::own_tid(pid, t.tid()).unwrap_or(t.tid()))
        .collect()
}
