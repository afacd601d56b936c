//! The dumper's side of the tracker ([`super::daemon`]): find it through the parent image
//! directory, or spawn it; adopt processes; ask what they wrote.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemon::{connect, read_frame, write_frame};
use super::track::Identity;
use super::{Dirt, Method};

/// The file of an image directory that names the tracker serving its chain.
pub const RECORD: &str = "dirty-tracker.json";

/// A connection to the tracker.
pub struct TrackerClient {
    conn: UnixStream,
    /// The abstract socket name.
    pub socket: String,
    /// The tracker's pid.
    pub pid: i32,
    /// The generation of the dump whose record found it (its last commit, if that dump
    /// succeeded).
    pub parent_gen: Option<u64>,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl TrackerClient {
    /// The tracker named in `dir`'s record, if it still answers.
    pub fn find(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let socket = v["socket"].as_str()?.to_string();
        let pid = v["pid"].as_i64()? as i32;
        let parent_gen = v["gen"].as_u64();
        match connect(&socket) {
            Ok(conn) => {
                let mut c = TrackerClient {
                    conn,
                    socket,
                    pid,
                    parent_gen,
                };
                // A tracker that died between connect and now answers nothing.
                c.request(&json!({"op": "status"})).ok()?;
                Some(c)
            }
            Err(e) => {
                tracing::info!("tracker of {} is gone ({e}): full dump", dir.display());
                None
            }
        }
    }

    /// Starts `exe dirty-tracker --socket NAME` in its own process group, stdio closed, and
    /// connects to it.
    pub fn spawn(exe: &Path) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let socket = format!("stasis-dirty-{}-{nanos}", std::process::id());
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("dirty-tracker")
            .arg("--socket")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .process_group(0);
        if let Ok(log) = std::env::var("STASIS_TRACKER_LOG") {
            cmd.stderr(std::fs::File::create(log)?);
        } else {
            cmd.stderr(std::process::Stdio::null());
        }
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Not waited for: it outlives this command (init or a subreaper reaps it).
        drop(child);
        let t0 = Instant::now();
        loop {
            match connect(&socket) {
                Ok(conn) => {
                    return Ok(TrackerClient {
                        conn,
                        socket,
                        pid,
                        parent_gen: None,
                    })
                }
                Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                    return Err(other(format!("tracker {pid} does not listen: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Writes `dir`'s record naming this tracker and the generation committed for it.
    pub fn record(&self, dir: &Path, generation: u64) -> std::io::Result<()> {
        std::fs::write(
            dir.join(RECORD),
            json!({"socket": self.socket, "pid": self.pid, "gen": generation}).to_string(),
        )
    }

    /// The collects of `pids` made by this dump are saved as generation `generation`.
    pub fn commit(&mut self, generation: u64, pids: &[i32]) -> std::io::Result<()> {
        self.request(&json!({"op": "commit", "gen": generation, "pids": pids}))
            .map(drop)
    }

    fn request(&mut self, req: &Value) -> std::io::Result<Value> {
        write_frame(&mut self.conn, req)?;
        self.answer()
    }

    fn answer(&mut self) -> std::io::Result<Value> {
        let v = read_frame(&mut self.conn)?.ok_or_else(|| other("the tracker hung up"))?;
        if v["ok"].as_bool() != Some(true) {
            return Err(other(format!("tracker: {}", v["error"])));
        }
        Ok(v)
    }

    /// Hands process `pid`'s handle (a userfaultfd, or none for soft-dirty) to the tracker.
    pub fn adopt(
        &mut self,
        pid: i32,
        id: Identity,
        method: Method,
        fd: Option<OwnedFd>,
    ) -> std::io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let req = json!({"op": "adopt", "pid": pid, "id": id.to_json(), "method": method.name()});
        let body = serde_json::to_vec(&req)?;
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let raw: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(&frame)];
        let sent = sendmsg::<()>(
            self.conn.as_raw_fd(),
            &iov,
            if raw.is_empty() { &[] } else { &cmsg },
            MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)?;
        if sent < frame.len() {
            use std::io::Write;
            self.conn.write_all(&frame[sent..])?;
        }
        self.answer().map(drop)
    }

    /// What `pid` wrote in each of `vmas` since the last collect (re-armed now); `None` when
    /// the tracker does not know this process (adopt it).
    pub fn collect(
        &mut self,
        pid: i32,
        id: Identity,
        vmas: &[(u64, u64)],
    ) -> std::io::Result<Option<Vec<Dirt>>> {
        let v = self.request(&json!({"op": "collect", "pid": pid, "id": id.to_json(),
            "parent": self.parent_gen,
            "vmas": vmas.iter().map(|r| [r.0, r.1]).collect::<Vec<_>>()}))?;
        if v["known"].as_bool() != Some(true) {
            return Ok(None);
        }
        let dirt = v["dirt"]
            .as_array()
            .ok_or_else(|| other("tracker: collect without dirt"))?;
        if dirt.len() != vmas.len() {
            return Err(other("tracker: collect answered another number of VMAs"));
        }
        Ok(Some(
            dirt.iter()
                .map(|d| match d.as_array() {
                    None => Dirt::All,
                    Some(w) => Dirt::Written(
                        w.iter()
                            .filter_map(|r| Some((r[0].as_u64()?, r[1].as_u64()?)))
                            .collect(),
                    ),
                })
                .collect(),
        ))
    }

    /// Drops `pid`'s handle.
    pub fn forget(&mut self, pid: i32) -> std::io::Result<()> {
        self.request(&json!({"op": "forget", "pid": pid})).map(drop)
    }

    /// The pids tracked.
    pub fn status(&mut self) -> std::io::Result<Vec<i32>> {
        let v = self.request(&json!({"op": "status"}))?;
        Ok(v["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Makes the tracker exit (every handle closes).
    pub fn stop(mut self) -> std::io::Result<()> {
        self.request(&json!({"op": "stop"})).map(drop)
    }
}
