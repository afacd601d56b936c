//! The migration's control stream: small typed frames on the one TCP connection between
//! `stasis migrate` (source) and `stasis migrate-receive` (destination). Pages do not travel
//! in frames: after an `Iteration` frame the same stream carries one page-server session
//! (CRIU's protocol, [`crate::pages::client`] → [`crate::pages::server`]), ended by its
//! `PS_IOV_FORCE_CLOSE` and the server's answer, after which frames resume.
//!
//! ```text
//!  frame:  u8 type | u32 LE payload length (≤ MAX_PAYLOAD) | payload
//!  strings and blobs inside a payload: u32 LE length | bytes (bounded by the payload)
//!
//!  source                                         destination
//!  Hello{version, flags, compress, auth} ──►
//!                                        ◄──      Welcome | Refuse{reason}
//!  Iteration{index, dir, parent}         ──►      mkdir DIR/dir, parent link
//!  <page-server session>                 ◄─►      pagemaps + pages into DIR/dir
//!  File{dir, name, bytes} ...            ──►      DIR/dir/name
//!  IterationDone{index, pages, bytes, us} ──►
//!  ... (more iterations; the last one is the final dump's)
//!  Final{dir}                            ──►      restore DIR/dir (with --restore)
//!                                        ◄──      Result{ok, running, message}
//!  Abort{reason}                         ──►      (any time: the source gave up)
//! ```
//! [`decode`] never panics and allocates only what the payload holds; [`read_frame`] reads a
//! payload as it arrives (never a buffer sized by the announced length up front).

use std::io::{Read, Write};

/// Version of the stream (Hello's first field).
pub const VERSION: u32 = 1;

/// Largest payload of one frame (an image file travels in one `File` frame).
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Hello flag: the dump holds established TCP connections (restore them).
pub const FLAG_TCP_ESTABLISHED: u32 = 1;

/// Longest name or message.
const MAX_STRING: usize = 4096;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_REFUSE: u8 = 3;
const T_ITERATION: u8 = 4;
const T_FILE: u8 = 5;
const T_ITERATION_DONE: u8 = 6;
const T_FINAL: u8 = 7;
const T_RESULT: u8 = 8;
const T_ABORT: u8 = 9;

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame of the source: protocol version, [`FLAG_TCP_ESTABLISHED`]..., zstd level
    /// the destination packs its pages files with (0: none), and the key proof (empty
    /// without `--encrypt-key`, see [`super::auth`]).
    Hello {
        version: u32,
        flags: u32,
        compress: i32,
        auth: Vec<u8>,
    },
    /// The destination accepts the migration.
    Welcome,
    /// The destination refuses it (wrong version, wrong key, ...).
    Refuse { reason: String },
    /// A page-server session into directory `dir` follows (`parent`: the previous
    /// iteration's directory, empty for the first).
    Iteration {
        index: u32,
        dir: String,
        parent: String,
    },
    /// An image file written by the source's dump.
    File {
        dir: String,
        name: String,
        data: Vec<u8>,
    },
    /// Statistics of a finished iteration.
    IterationDone {
        index: u32,
        pages: u64,
        bytes: u64,
        micros: u64,
    },
    /// Everything of the final dump (in `dir`) has been sent.
    Final { dir: String },
    /// The destination's outcome: `ok` once the tree runs (`running`) or, without
    /// `--restore`, once the images are complete (not `running`: the source resumes its tree).
    Result {
        ok: bool,
        running: bool,
        message: String,
    },
    /// The source gave up; the destination discards what it received.
    Abort { reason: String },
}

/// A malformed frame or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control frame type {0} is unknown")]
    UnknownType(u8),
    #[error("control frame of {0} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge(u64),
    #[error("control frame {what}: truncated")]
    Truncated { what: &'static str },
    #[error("control frame {what}: {len} trailing bytes")]
    Trailing { what: &'static str, len: usize },
    #[error("control frame {what}: string of {len} bytes (at most {MAX_STRING})")]
    LongString { what: &'static str, len: u64 },
    #[error("control frame {what}: not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("control stream: {0}")]
    Io(String),
    #[error("control stream: the peer closed the connection")]
    Closed,
}

struct Cursor<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ControlError> {
        if self.b.len() < n {
            return Err(ControlError::Truncated { what: self.what });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ControlError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, ControlError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn blob(&mut self) -> Result<&'a [u8], ControlError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, ControlError> {
        let n = self.u32()?;
        if n as usize > MAX_STRING {
            return Err(ControlError::LongString {
                what: self.what,
                len: u64::from(n),
            });
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| ControlError::NotUtf8 { what: self.what })
    }
    fn end(self) -> Result<(), ControlError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(ControlError::Trailing {
                what: self.what,
                len: self.b.len(),
            })
        }
    }
}

fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Message {
    /// The frame type and payload.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let mut p = Vec::new();
        let t = match self {
            Message::Hello {
                version,
                flags,
                compress,
                auth,
            } => {
                p.extend_from_slice(&version.to_le_bytes());
                p.extend_from_slice(&flags.to_le_bytes());
                p.extend_from_slice(&compress.to_le_bytes());
                put_blob(&mut p, auth);
                T_HELLO
            }
            Message::Welcome => T_WELCOME,
            Message::Refuse { reason } => {
                put_blob(&mut p, reason.as_bytes());
                T_REFUSE
            }
            Message::Iteration { index, dir, parent } => {
                p.extend_from_slice(&index.to_le_bytes());
                put_blob(&mut p, dir.as_bytes());
                put_blob(&mut p, parent.as_bytes());
                T_ITERATION
            }
            Message::File { dir, name, data } => {
                put_blob(&mut p, dir.as_bytes());
                put_blob(&mut p, name.as_bytes());
                put_blob(&mut p, data);
                T_FILE
            }
            Message::IterationDone {
                index,
                pages,
                bytes,
                micros,
            } => {
                p.extend_from_slice(&index.to_le_bytes());
                p.extend_from_slice(&pages.to_le_bytes());
                p.extend_from_slice(&bytes.to_le_bytes());
                p.extend_from_slice(&micros.to_le_bytes());
                T_ITERATION_DONE
            }
            Message::Final { dir } => {
                put_blob(&mut p, dir.as_bytes());
                T_FINAL
            }
            Message::Result {
                ok,
                running,
                message,
            } => {
                p.push(u8::from(*ok));
                p.push(u8::from(*running));
                put_blob(&mut p, message.as_bytes());
                T_RESULT
            }
            Message::Abort { reason } => {
                put_blob(&mut p, reason.as_bytes());
                T_ABORT
            }
        };
        (t, p)
    }

    /// The whole frame (header and payload).
    pub fn to_frame(&self) -> Vec<u8> {
        let (t, p) = self.encode();
        let mut f = Vec::with_capacity(5 + p.len());
        f.push(t);
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&p);
        f
    }
}

/// Decodes the payload of a frame of type `t`.
pub fn decode(t: u8, payload: &[u8]) -> Result<Message, ControlError> {
    let what = match t {
        T_HELLO => "Hello",
        T_WELCOME => "Welcome",
        T_REFUSE => "Refuse",
        T_ITERATION => "Iteration",
        T_FILE => "File",
        T_ITERATION_DONE => "IterationDone",
        T_FINAL => "Final",
        T_RESULT => "Result",
        T_ABORT => "Abort",
        _ => return Err(ControlError::UnknownType(t)),
    };
    let mut c = Cursor { b: payload, what };
    let m = match t {
        T_HELLO => Message::Hello {
            version: c.u32()?,
            flags: c.u32()?,
            compress: c.u32()? as i32,
            auth: c.blob()?.to_vec(),
        },
        T_WELCOME => Message::Welcome,
        T_REFUSE => Message::Refuse {
            reason: c.string()?,
        },
        T_ITERATION => Message::Iteration {
            index: c.u32()?,
            dir: c.string()?,
            parent: c.string()?,
        },
        T_FILE => Message::File {
            dir: c.string()?,
            name: c.string()?,
            data: c.blob()?.to_vec(),
        },
        T_ITERATION_DONE => Message::IterationDone {
            index: c.u32()?,
            pages: c.u64()?,
            bytes: c.u64()?,
            micros: c.u64()?,
        },
        T_FINAL => Message::Final { dir: c.string()? },
        T_RESULT => Message::Result {
            ok: c.u8()? != 0,
            running: c.u8()? != 0,
            message: c.string()?,
        },
        _ => Message::Abort {
            reason: c.string()?,
        },
    };
    c.end()?;
    Ok(m)
}

/// Decodes every frame of `data` in turn (the fuzz target's entry): the messages up to the
/// first error, and that error (None: `data` ended on a frame boundary).
pub fn decode_all(mut data: &[u8]) -> (Vec<Message>, Option<ControlError>) {
    let mut out = Vec::new();
    loop {
        if data.is_empty() {
            return (out, None);
        }
        match read_frame(&mut data) {
            Ok(m) => out.push(m),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Reads one frame from `r`: the payload is read as it arrives, so a lying length costs
/// nothing before the bytes are there.
pub fn read_frame(r: &mut impl Read) -> Result<Message, ControlError> {
    let mut h = [0u8; 5];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(ControlError::Closed),
            Ok(0) => return Err(ControlError::Truncated { what: "header" }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ControlError::Io(e.to_string())),
        }
    }
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if len > MAX_PAYLOAD {
        return Err(ControlError::TooLarge(u64::from(len)));
    }
    let mut payload = Vec::new();
    let n = r
        .take(u64::from(len))
        .read_to_end(&mut payload)
        .map_err(|e| ControlError::Io(e.to_string()))?;
    if n != len as usize {
        return Err(ControlError::Truncated { what: "payload" });
    }
    decode(h[0], &payload)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, m: &Message) -> Result<(), ControlError> {
    w.write_all(&m.to_frame())
        .and_then(|_| w.flush())
        .map_err(|e| ControlError::Io(e.to_string()))
}

/// Whether `name` is a plain file or directory name (no separator, not `.`/`..`, not empty):
/// the destination refuses any other name from the stream.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Hello {
                version: VERSION,
                flags: FLAG_TCP_ESTABLISHED,
                compress: 3,
                auth: vec![1, 2, 3],
            },
            Message::Welcome,
            Message::Refuse {
                reason: "wrong key".into(),
            },
            Message::Iteration {
                index: 2,
                dir: "it-2".into(),
                parent: "it-1".into(),
            },
            Message::File {
                dir: "final".into(),
                name: "core-1.img".into(),
                data: vec![0; 100],
            },
            Message::IterationDone {
                index: 1,
                pages: 10,
                bytes: 40960,
                micros: 1234,
            },
            Message::Final {
                dir: "final".into(),
            },
            Message::Result {
                ok: true,
                running: true,
                message: "running".into(),
            },
            Message::Abort {
                reason: "freeze failed".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut stream = Vec::new();
        for m in all() {
            stream.extend(m.to_frame());
        }
        let (got, err) = decode_all(&stream);
        assert_eq!(err, None);
        assert_eq!(got, all());
    }

    #[test]
    fn truncations_and_lies_are_errors() {
        let f = all()[4].to_frame();
        for cut in 1..f.len() {
            let (got, err) = decode_all(&f[..cut]);
            assert!(got.is_empty() && err.is_some(), "cut at {cut}");
        }
        // A length far beyond the data: refused or truncated, nothing allocated for it.
        let mut lie = vec![T_FILE];
        lie.extend_from_slice(&(MAX_PAYLOAD).to_le_bytes());
        assert_eq!(
            decode_all(&lie).1,
            Some(ControlError::Truncated { what: "payload" })
        );
        lie[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_all(&lie).1,
            Some(ControlError::TooLarge(_))
        ));
        // A string length lying inside the payload.
        let mut p = vec![T_FINAL, 4, 0, 0, 0];
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_all(&p).1,
            Some(ControlError::LongString { .. })
        ));
        assert_eq!(decode(99, &[]), Err(ControlError::UnknownType(99)));
        assert!(matches!(
            decode(T_WELCOME, &[0]),
            Err(ControlError::Trailing { .. })
        ));
    }

    #[test]
    fn random_streams_never_panic() {
        // What the fuzz target does, briefly: random bytes and mutated valid streams.
        let mut valid = Vec::new();
        for m in all() {
            valid.extend(m.to_frame());
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let len = (next() % 300) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_all(&random);
            let mut m = valid.clone();
            for _ in 0..4 {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            let _ = decode_all(&m);
        }
    }

    #[test]
    fn names_from_the_stream_stay_inside() {
        assert!(plain_name("pages-1.img"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc"] {
            assert!(!plain_name(bad), "{bad}");
        }
    }
}
