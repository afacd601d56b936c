//! The page pipeline: how dumped memory reaches its destination.
//!
//! ```text
//!  page source                     stages (pack)                   page sink
//!  ───────────                     ─────────────                   ─────────
//!  dump parasite (vmsplice) ─┐                                  ┌─ LocalSink: pagemap-*.img +
//!  /proc/PID/mem            ─┼─ runs + page bytes ─► zstd, seal ┤    pages-N.img (splice fast
//!  shmem object file        ─┤   (PageSink::entry,   (PackWriter,│    path, no copy) or
//!  page-server socket       ─┘    PageSink::pages)    threads)   │    pages-N.pack.img
//!   (server side)                                               └─ PageServerSink: CRIU 4.2's
//!                                                                    page-server protocol
//! ```
//!
//! A sink receives one pagemap at a time: [`PageSink::open`] (a process or a shared-memory
//! object), then its entries in address order; after each entry with `PE_PRESENT`, exactly its
//! pages (`nr_pages * 4096` bytes) through [`PageSink::pages`], then [`PageSink::close`]. A sink
//! that can take the pages of all entries at once by `splice` (the local plain sink) offers a
//! file with [`PageSink::splice_file`]; the dump then writes every entry first and lets the
//! parasite splice straight into that file. [`PageSink::finish`] ends the stream (for a page
//! server: `PS_IOV_CLOSE` and the server's answer), after which the dump may kill the tree.
//!
//! The dump side of this (sources, the driver that feeds a sink) is in
//! [`crate::dump::pages`]; the page server's receiving loop is [`server`]; reading packed
//! streams back to plain images is [`convert`].

pub(crate) mod client;
pub(crate) mod convert;
pub(crate) mod error;
pub mod lazy;
pub mod lazy_source;
pub(crate) mod pack;
pub(crate) mod proto;
pub mod record;
pub(crate) mod server;
pub(crate) mod sink;
pub mod tls;

use std::fs::File;

pub use error::{PagesError, Result};
pub use proto::Target;

/// Pages are in the parent image directory.
pub const PE_PARENT: u32 = 1;
/// Pages may be restored lazily.
pub const PE_LAZY: u32 = 2;
/// Pages follow in this stream.
pub const PE_PRESENT: u32 = 4;
pub use crate::images::pagemap::PAGE_SIZE;

/// One pagemap entry: `nr_pages` pages from `vaddr` (for shared memory: the offset in the
/// object), with `PE_*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
}

impl Run {
    /// Bytes of page data that follow this entry in a stream.
    pub fn data_len(&self) -> u64 {
        if self.flags & PE_PRESENT != 0 {
            self.nr_pages * PAGE_SIZE
        } else {
            0
        }
    }
}

/// What a sink wrote, for the dump's report.
#[derive(Debug, Clone, Default)]
pub struct SinkReport {
    /// Files created (local sinks).
    pub files: Vec<std::path::PathBuf>,
    /// Bytes written to files or sent.
    pub bytes: u64,
    /// Pagemaps opened.
    pub pagemaps: u64,
}

/// Where a dump's pages go. See the module documentation for the order of calls.
pub trait PageSink: Send {
    /// Starts the pagemap of `target` (closing the previous one). Returns whether the
    /// destination's parent images have this pagemap (incremental dumps may then write
    /// `PE_PARENT` entries).
    fn open(&mut self, target: Target) -> Result<bool>;
    #[cfg(test)]
    /// Whether the destination's parent images have the pagemap of `target`, without opening
    /// it (CRIU's `PS_IOV_PARENT`).
    fn parent_has(&mut self, target: Target) -> Result<bool>;
    /// Appends an entry to the open pagemap.
    fn entry(&mut self, run: &Run) -> Result<()>;
    /// Page bytes of the present entries, in order (any split).
    fn pages(&mut self, data: &[u8]) -> Result<()>;
    /// A file the pages of all entries may be spliced into at its position, after every entry
    /// was given; None when the sink needs the bytes through [`PageSink::pages`].
    fn splice_file(&mut self) -> Result<Option<&mut File>> {
        Ok(None)
    }
    /// Accounts bytes written into [`PageSink::splice_file`].
    fn spliced(&mut self, _bytes: u64) {}
    /// Ends the open pagemap; checks that every present entry got its pages.
    fn close(&mut self) -> Result<()>;
    /// Ends the stream. Nothing may be sent after it.
    fn finish(&mut self) -> Result<SinkReport>;
}
