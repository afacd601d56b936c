//! Side images of the fd kinds, collected at dump time and read back for restore.
//!
//! ```text
//!  sk-queues.img          {sk_packet_entry {id_for, length}  + length bytes}*   (unix queues)
//!  tcp-stream-<ino>.img   tcp_stream_entry + inq_len bytes (receive queue)
//!                                          + outq_len bytes (send queue)
//!  tty-info.img           {tty_info_entry}*
//!  tty-data.img           {tty_data_entry}*   (data queued in pty pairs: tty_queue)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use stasis_images::framing::{Image, ImageWriter};
use stasis_images::magic::ImageKind;
use stasis_images::pb;

use super::error::{FilesError, Result};

/// Most bytes of queued data we keep for one socket (both directions of TCP together).
pub const MAX_QUEUE: usize = 64 << 20;

/// Side images of the fd kinds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extra {
    /// Unix packets: entry (`id_for` = receiving socket's files.img id) and its bytes.
    pub sk_queues: Vec<(pb::SkPacketEntry, Vec<u8>)>,
    /// TCP repair state by socket inode: entry, receive queue, send queue.
    pub tcp_streams: BTreeMap<u32, (pb::TcpStreamEntry, Vec<u8>, Vec<u8>)>,
    pub tty_info: Vec<pb::TtyInfoEntry>,
    pub tty_data: Vec<pb::TtyDataEntry>,
}

fn img(file: &Path) -> impl FnOnce(stasis_images::error::ImageError) -> FilesError + '_ {
    move |source| FilesError::Images {
        file: file.display().to_string(),
        source,
    }
}

/// Flushes and fsyncs a finished image file.
fn sync(p: &Path, w: std::io::BufWriter<std::fs::File>) -> Result<()> {
    let io = |e: std::io::Error| {
        super::error::sys("images", super::At::Id(0), format!("fsync {}", p.display()))(
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    };
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

impl Extra {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sk_queues.is_empty()
            && self.tcp_streams.is_empty()
            && self.tty_info.is_empty()
            && self.tty_data.is_empty()
    }

    /// The packets queued for socket `id`, in order.
    pub fn queue_for(&self, id: u32) -> impl Iterator<Item = &[u8]> {
        self.sk_queues
            .iter()
            .filter(move |(e, _)| e.id_for == id)
            .map(|(_, d)| d.as_slice())
    }

    /// Writes the non-empty side images into `dir`.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        use prost::Message;
        if !self.sk_queues.is_empty() {
            let p = dir.join(ImageKind::SkQueues.info().file_name(0));
            let mut w = ImageWriter::create(&p, ImageKind::SkQueues).map_err(img(&p))?;
            for (e, data) in &self.sk_queues {
                w.write_entry(&e.encode_to_vec(), Some(data))
                    .map_err(img(&p))?;
            }
            sync(&p, w.finish().map_err(img(&p))?)?;
        }
        for (ino, (e, inq, outq)) in &self.tcp_streams {
            let p = dir.join(ImageKind::TcpStream.info().file_name(u64::from(*ino)));
            let mut w = ImageWriter::create(&p, ImageKind::TcpStream).map_err(img(&p))?;
            let mut data = inq.clone();
            data.extend_from_slice(outq);
            w.write_entry(&e.encode_to_vec(), Some(&data))
                .map_err(img(&p))?;
            sync(&p, w.finish().map_err(img(&p))?)?;
        }
        for (kind, list) in [
            (
                ImageKind::TtyInfo,
                self.tty_info
                    .iter()
                    .map(|m| m.encode_to_vec())
                    .collect::<Vec<_>>(),
            ),
            (
                ImageKind::TtyData,
                self.tty_data.iter().map(|m| m.encode_to_vec()).collect(),
            ),
        ] {
            if list.is_empty() {
                continue;
            }
            let p = dir.join(kind.info().file_name(0));
            let mut w = ImageWriter::create(&p, kind).map_err(img(&p))?;
            for b in &list {
                w.write_entry(b, None).map_err(img(&p))?;
            }
            sync(&p, w.finish().map_err(img(&p))?)?;
        }
        Ok(())
    }

    /// Reads the side images present in `dir`; `tcp_inos` are the inodes of TCP sockets whose
    /// `tcp-stream-<ino>.img` must be read (established connections in files.img).
    pub fn read_dir(dir: &Path, tcp_inos: &[u32]) -> Result<Extra> {
        let mut x = Extra::default();
        let p = dir.join(ImageKind::SkQueues.info().file_name(0));
        if p.exists() {
            let im = Image::read_file(&p).map_err(img(&p))?;
            let mut total = 0usize;
            for i in 0..im.entries.len() {
                let e: pb::SkPacketEntry = im.decode_entry(i).map_err(img(&p))?;
                let data = im.entries[i].extra.clone().unwrap_or_default();
                total += data.len();
                if total > MAX_QUEUE * 16 {
                    return Err(super::error::image(
                        "sk-queues",
                        super::At::Id(e.id_for),
                        "queued data over the cap",
                    ));
                }
                x.sk_queues.push((e, data));
            }
        }
        for ino in tcp_inos {
            let p = dir.join(ImageKind::TcpStream.info().file_name(u64::from(*ino)));
            let im = Image::read_file(&p).map_err(img(&p))?;
            if im.entries.is_empty() {
                return Err(super::error::image(
                    "tcp",
                    super::At::Id(0),
                    format!("{} is empty", p.display()),
                ));
            }
            let e: pb::TcpStreamEntry = im.decode_entry(0).map_err(img(&p))?;
            let data = im.entries[0].extra.clone().unwrap_or_default();
            let inq = (e.inq_len as usize).min(data.len());
            let (a, b) = data.split_at(inq);
            x.tcp_streams.insert(*ino, (e, a.to_vec(), b.to_vec()));
        }
        let p = dir.join(ImageKind::TtyInfo.info().file_name(0));
        if p.exists() {
            x.tty_info = stasis_images::framing::read_entries(&p).map_err(img(&p))?;
        }
        let p = dir.join(ImageKind::TtyData.info().file_name(0));
        if p.exists() {
            x.tty_data = stasis_images::framing::read_entries(&p).map_err(img(&p))?;
        }
        Ok(x)
    }
}
