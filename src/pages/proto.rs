//! CRIU 4.2's page-server wire format (facts from CRIU's `page-xfer.c`).
//!
//! Every command is one 32-byte header in the host byte order (x86-64: little endian), the
//! layout of C's `struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id; }`
//! with its 4 bytes of padding:
//!
//! ```text
//!  0        4        8                16               24               32
//!  +--------+--------+----------------+----------------+----------------+
//!  | cmd    | (pad)  | nr_pages       | vaddr          | dst_id         |
//!  +--------+--------+----------------+----------------+----------------+
//!  cmd    = flags << 16 | command          (flags: PE_* of the pagemap entry, for ADD_F)
//!  dst_id = id << 8 | type                 (type 1: pagemap-ID.img, 2: pagemap-shmem-ID.img)
//! ```
//!
//! A dump session, client → server (replies in brackets):
//!
//! ```text
//!  OPEN2 dst_id                   [u8 has_parent]          opens pagemap-ID + a new pages file
//!  PARENT dst_id                  [i32 parent has it]      (incremental dumps ask first)
//!  ADD_F flags nr vaddr dst_id    + nr*4096 page bytes if flags has PE_PRESENT
//!  ...                            (OPEN2 of the next pagemap closes the previous one)
//!  CLOSE | FORCE_CLOSE            [i32 status 0]           FORCE_CLOSE: socket from --ps-socket
//! ```
//! `ADD` (= ADD_F with PE_PRESENT), `HOLE` (= ADD_F with PE_PARENT) and `OPEN` (OPEN2 without
//! the answer) come from older CRIUs; the server accepts them. `GET` asks for pages (post-copy
//! restore from a dump-side server).

/// Size of one header on the wire.
pub const HEADER_LEN: usize = 32;

/// Pages (of `nr_pages`) follow the header (old form of `ADD_F` with `PE_PRESENT`).
pub const PS_IOV_ADD: u32 = 1;
/// A hole whose pages are in the parent (old form of `ADD_F` with `PE_PARENT`).
pub const PS_IOV_HOLE: u32 = 2;
/// Opens a pagemap, no answer.
pub const PS_IOV_OPEN: u32 = 3;
/// Opens a pagemap; answered by one byte: the server's parent images have it.
pub const PS_IOV_OPEN2: u32 = 4;
/// Asks whether the parent images have a pagemap; answered by an `i32`.
pub const PS_IOV_PARENT: u32 = 5;
/// A pagemap entry with its flags in the command's high 16 bits.
pub const PS_IOV_ADD_F: u32 = 6;
/// Asks the server for pages (lazy restore).
pub const PS_IOV_GET: u32 = 7;
/// Ends the session; answered by an `i32` status.
pub const PS_IOV_CLOSE: u32 = 0x1023;
/// Ends the session of a socket given with `--ps-socket`; answered by an `i32` status.
pub const PS_IOV_FORCE_CLOSE: u32 = 0x1024;

/// Bits of the command proper; the entry's flags are above.
pub const PS_CMD_BITS: u32 = 16;
/// Bits of the type in `dst_id`.
pub const PS_TYPE_BITS: u32 = 8;
/// `dst_id` type of a process pagemap.
pub const PS_TYPE_PID: u64 = 1;
/// `dst_id` type of a shared-memory pagemap.
pub const PS_TYPE_SHMEM: u64 = 2;

/// Which pagemap a stream of pages belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `pagemap-PID.img`.
    Process(u64),
    /// `pagemap-shmem-SHMID.img`.
    Shmem(u64),
}

impl Target {
    /// The pagemap file name.
    pub fn pagemap_name(&self) -> String {
        match self {
            Target::Process(pid) => format!("pagemap-{pid}.img"),
            Target::Shmem(id) => format!("pagemap-shmem-{id}.img"),
        }
    }

    /// `dst_id` of this pagemap.
    pub fn dst_id(&self) -> u64 {
        match *self {
            Target::Process(id) => id << PS_TYPE_BITS | PS_TYPE_PID,
            Target::Shmem(id) => id << PS_TYPE_BITS | PS_TYPE_SHMEM,
        }
    }

    /// The pagemap of `dst_id`, with the type numbers older CRIUs sent (CRIU 4.2 accepts
    /// them too: 10, 11, 16, 17 for processes; 27, 28, 29, 32, 33, 34 for shared memory).
    pub fn from_dst_id(dst_id: u64) -> Option<Target> {
        let id = dst_id >> PS_TYPE_BITS;
        match dst_id & ((1 << PS_TYPE_BITS) - 1) {
            1 | 10 | 11 | 16 | 17 => Some(Target::Process(id)),
            2 | 27 | 28 | 29 | 32 | 33 | 34 => Some(Target::Shmem(id)),
            _ => None,
        }
    }
}

/// One command header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// `flags << 16 | command`.
    pub cmd: u32,
    pub nr_pages: u64,
    pub vaddr: u64,
    pub dst_id: u64,
}

impl Header {
    /// A header of `command` with entry `flags`.
    pub fn new(command: u32, flags: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Header {
        Header {
            cmd: flags << PS_CMD_BITS | command,
            nr_pages,
            vaddr,
            dst_id,
        }
    }

    /// The command (low 16 bits).
    pub fn command(&self) -> u32 {
        self.cmd & ((1 << PS_CMD_BITS) - 1)
    }

    /// The entry flags (high 16 bits).
    pub fn flags(&self) -> u32 {
        self.cmd >> PS_CMD_BITS
    }

    /// The 32 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.cmd.to_le_bytes());
        b[8..16].copy_from_slice(&self.nr_pages.to_le_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.dst_id.to_le_bytes());
        b
    }

    /// Reads a header from its 32 bytes (the padding is ignored, as CRIU does).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Header {
            cmd: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte layouts as CRIU 4.2 sends them (struct page_server_iov on x86-64).
    #[test]
    fn header_layout_is_criu_s() {
        // ADD_F of 3 pages at 0x7f0000001000 with PE_PRESENT|PE_LAZY (6) to pagemap-42.img.
        let h = Header::new(
            PS_IOV_ADD_F,
            6,
            3,
            0x7f00_0000_1000,
            Target::Process(42).dst_id(),
        );
        let want: [u8; 32] = [
            0x06, 0x00, 0x06, 0x00, 0, 0, 0, 0, // cmd = 6 << 16 | 6, padding
            3, 0, 0, 0, 0, 0, 0, 0, // nr_pages
            0x00, 0x10, 0x00, 0x00, 0x00, 0x7f, 0, 0, // vaddr
            0x01, 42, 0, 0, 0, 0, 0, 0, // dst_id = 42 << 8 | PS_TYPE_PID
        ];
        assert_eq!(h.encode(), want);
        assert_eq!(Header::decode(&want), h);
        assert_eq!(h.command(), PS_IOV_ADD_F);
        assert_eq!(h.flags(), 6);
        // CLOSE: only the command.
        let c = Header::new(PS_IOV_CLOSE, 0, 0, 0, 0).encode();
        assert_eq!(&c[..4], &[0x23, 0x10, 0, 0]);
        assert!(c[4..].iter().all(|&b| b == 0));
        assert_eq!(PS_IOV_FORCE_CLOSE, 0x1024);
        // OPEN2 of pagemap-shmem-0x1234.img.
        let o = Header::new(PS_IOV_OPEN2, 0, 0, 0, Target::Shmem(0x1234).dst_id()).encode();
        assert_eq!(&o[..4], &[4, 0, 0, 0]);
        assert_eq!(&o[24..32], &[0x02, 0x34, 0x12, 0, 0, 0, 0, 0]);
        // Padding bytes are ignored on input.
        let mut p = want;
        p[4..8].copy_from_slice(&[0xaa; 4]);
        assert_eq!(Header::decode(&p), h);
    }

    #[test]
    fn dst_ids_of_old_criu_versions() {
        assert_eq!(Target::from_dst_id(7 << 8 | 11), Some(Target::Process(7)));
        assert_eq!(Target::from_dst_id(7 << 8 | 34), Some(Target::Shmem(7)));
        assert_eq!(Target::from_dst_id(7 << 8 | 3), None);
        assert_eq!(Target::Process(9).pagemap_name(), "pagemap-9.img");
        assert_eq!(Target::Shmem(9).pagemap_name(), "pagemap-shmem-9.img");
    }
}
