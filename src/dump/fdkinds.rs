//! File entries of anonymous-inode fds, built from `/proc/PID/fdinfo/N` alone:
//!
//! ```text
//!  eventfd    eventfd-count: %16llx (hex)            -> efd  {counter}
//!  eventpoll  tfd: %8d events: %8x data: %16llx pos:%lli ino:%lx sdev:%x (one per target)
//!                                                    -> epfd {tfd[]}
//!  timerfd    clockid: N / ticks: N / settime flags: 0%o / it_value: (s, ns) / it_interval: (s, ns)
//!                                                    -> tfd  {clockid, ticks, settime_flags, v*, i*}
//!  signalfd   sigmask: %016llx                       -> sgfd {sigmask}
//!  inotify    inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x fhandle-bytes:%x
//!             fhandle-type:%x f_handle:<hex bytes>    -> ify  {wd[]}
//! ```

use serde_json::{json, Value};

use crate::proc::fd::FdInfo;

/// Why an fdinfo could not be turned into an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fdinfo of {kind}: field {field}: {why}")]
pub struct KindError {
    pub kind: &'static str,
    pub field: &'static str,
    pub why: String,
}

/// Builds the entry of one kind from its id, file flags and fdinfo.
pub type Builder = fn(u32, u32, &FdInfo) -> Result<Value, KindError>;

fn err(kind: &'static str, field: &'static str, why: impl Into<String>) -> KindError {
    KindError {
        kind,
        field,
        why: why.into(),
    }
}

fn hex(kind: &'static str, field: &'static str, s: &str) -> Result<u64, KindError> {
    u64::from_str_radix(s.trim(), 16).map_err(|e| err(kind, field, format!("{s:?}: {e}")))
}

fn dec(kind: &'static str, field: &'static str, s: &str) -> Result<u64, KindError> {
    s.trim()
        .parse::<u64>()
        .map_err(|e| err(kind, field, format!("{s:?}: {e}")))
}

fn extra<'a>(
    info: &'a FdInfo,
    kind: &'static str,
    key: &'static str,
) -> Result<&'a str, KindError> {
    info.extra(key).ok_or_else(|| err(kind, key, "missing"))
}

fn fown() -> Value {
    json!({"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0})
}

/// `key:value` pairs of one line such as `tfd: 3 events: 19 data: 3 pos:0 ino:40e sdev:10`.
fn pairs(line: &str) -> Vec<(String, String)> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        if let Some((k, v)) = t.split_once(':') {
            if v.is_empty() {
                out.push((
                    k.to_string(),
                    toks.get(i + 1).copied().unwrap_or("").to_string(),
                ));
                i += 2;
                continue;
            }
            out.push((k.to_string(), v.to_string()));
        }
        i += 1;
    }
    out
}

fn get<'a>(
    p: &'a [(String, String)],
    kind: &'static str,
    key: &'static str,
) -> Result<&'a str, KindError> {
    p.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| err(kind, key, "missing"))
}

/// The `efd` entry.
pub fn eventfd(id: u32, flags: u32, info: &FdInfo) -> Result<Value, KindError> {
    let counter = hex(
        "eventfd",
        "eventfd-count",
        extra(info, "eventfd", "eventfd-count")?,
    )?;
    Ok(json!({"id": id, "flags": flags, "fown": fown(), "counter": counter}))
}

/// The `epfd` entry (targets from the `tfd:` lines).
pub fn eventpoll(id: u32, flags: u32, info: &FdInfo) -> Result<Value, KindError> {
    let mut tfds = Vec::new();
    for (k, v) in &info.extra {
        if k != "tfd" {
            continue;
        }
        let p = pairs(&format!("tfd: {v}"));
        tfds.push(json!({
            "id": id,
            "tfd": dec("eventpoll", "tfd", get(&p, "eventpoll", "tfd")?)?,
            "events": hex("eventpoll", "events", get(&p, "eventpoll", "events")?)?,
            "data": hex("eventpoll", "data", get(&p, "eventpoll", "data")?)?,
            "dev": hex("eventpoll", "sdev", get(&p, "eventpoll", "sdev")?)?,
            "inode": hex("eventpoll", "ino", get(&p, "eventpoll", "ino")?)?,
            "pos": dec("eventpoll", "pos", get(&p, "eventpoll", "pos")?)?,
        }));
    }
    let mut v = json!({"id": id, "flags": flags, "fown": fown()});
    if !tfds.is_empty() {
        v["tfd"] = json!(tfds);
    }
    Ok(v)
}

fn timespec(kind: &'static str, field: &'static str, s: &str) -> Result<(u64, u64), KindError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| err(kind, field, format!("{s:?}")))?;
    let (a, b) = inner
        .split_once(',')
        .ok_or_else(|| err(kind, field, format!("{s:?}")))?;
    Ok((dec(kind, field, a)?, dec(kind, field, b)?))
}

/// The `tfd` (timerfd) entry.
pub fn timerfd(id: u32, flags: u32, info: &FdInfo) -> Result<Value, KindError> {
    let k = "timerfd";
    let (vsec, vnsec) = timespec(k, "it_value", extra(info, k, "it_value")?)?;
    let (isec, insec) = timespec(k, "it_interval", extra(info, k, "it_interval")?)?;
    let settime = u64::from_str_radix(extra(info, k, "settime flags")?.trim(), 8)
        .map_err(|e| err(k, "settime flags", e.to_string()))?;
    Ok(json!({
        "id": id, "flags": flags, "fown": fown(),
        "clockid": dec(k, "clockid", extra(info, k, "clockid")?)?,
        "ticks": dec(k, "ticks", extra(info, k, "ticks")?)?,
        "settime_flags": settime, "vsec": vsec, "vnsec": vnsec, "isec": isec, "insec": insec,
    }))
}

/// The `sgfd` (signalfd) entry.
pub fn signalfd(id: u32, flags: u32, info: &FdInfo) -> Result<Value, KindError> {
    let mask = hex("signalfd", "sigmask", extra(info, "signalfd", "sigmask")?)?;
    Ok(json!({"id": id, "flags": flags, "fown": fown(), "sigmask": mask}))
}

/// The `ify` (inotify) entry with one `wd` per watch.
pub fn inotify(id: u32, flags: u32, info: &FdInfo) -> Result<Value, KindError> {
    let k = "inotify";
    let mut wds = Vec::new();
    for (key, v) in &info.extra {
        if key != "inotify wd" && key != "inotify" {
            continue;
        }
        let line = if key == "inotify wd" {
            format!("wd:{v}")
        } else {
            v.clone()
        };
        let p = pairs(&line);
        let hbytes = hex(k, "fhandle-bytes", get(&p, k, "fhandle-bytes")?)? as usize;
        let raw = get(&p, k, "f_handle")?;
        if raw.len() % 2 != 0 || raw.len() / 2 != hbytes || hbytes > 128 {
            return Err(err(k, "f_handle", format!("{raw:?} is not {hbytes} bytes")));
        }
        let bytes: Vec<u8> = (0..hbytes)
            .map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let mut handle: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        // CRIU keeps a fixed 16-word handle buffer.
        handle.resize(16, 0);
        wds.push(json!({
            "id": id,
            "i_ino": hex(k, "ino", get(&p, k, "ino")?)?,
            "mask": hex(k, "mask", get(&p, k, "mask")?)?,
            "ignored_mask": hex(k, "ignored_mask", get(&p, k, "ignored_mask")?)?,
            "s_dev": hex(k, "sdev", get(&p, k, "sdev")?)?,
            "wd": hex(k, "wd", get(&p, k, "wd")?)?,
            "f_handle": {"bytes": hbytes, "type": hex(k, "fhandle-type", get(&p, k, "fhandle-type")?)?, "handle": handle},
        }));
    }
    let mut v = json!({"id": id, "flags": flags, "fown": fown()});
    if !wds.is_empty() {
        v["wd"] = json!(wds);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::fd::parse_fdinfo;
    use std::path::Path;

    fn info(t: &str) -> FdInfo {
        parse_fdinfo(Path::new("fdinfo"), t).unwrap()
    }

    #[test]
    fn eventfd_counter_is_hex() {
        let i = info("pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:               1a\neventfd-id: 1\n");
        assert_eq!(eventfd(3, 0o4002, &i).unwrap()["counter"], 26);
        assert!(eventfd(3, 0, &info("flags:\t0\n")).is_err());
    }

    #[test]
    fn epoll_targets() {
        let i = info("pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\ntfd:        3 events:       19 data:                3  pos:0 ino:40e sdev:10\ntfd:        5 events: 80000019 data:                5  pos:0 ino:29d1e sdev:f\n");
        let v = eventpoll(9, 2, &i).unwrap();
        let t = v["tfd"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1]["tfd"], 5);
        assert_eq!(t[1]["events"], 0x8000_0019u64);
        assert_eq!(t[1]["inode"], 0x29d1e);
        assert_eq!(t[0]["dev"], 0x10);
    }

    #[test]
    fn timerfd_values() {
        let i = info("flags:\t04002\nclockid: 1\nticks: 0\nsettime flags: 01\nit_value: (99, 999432564)\nit_interval: (1, 500)\n");
        let v = timerfd(4, 0o4002, &i).unwrap();
        assert_eq!(
            (
                v["vsec"].as_u64(),
                v["vnsec"].as_u64(),
                v["isec"].as_u64(),
                v["insec"].as_u64()
            ),
            (Some(99), Some(999432564), Some(1), Some(500))
        );
        assert_eq!(v["settime_flags"], 1);
        assert!(timerfd(4, 0, &info("flags:\t0\nclockid: 1\nticks: 0\nsettime flags: 0\nit_value: 5\nit_interval: (1, 0)\n")).is_err());
    }

    #[test]
    fn inotify_watch() {
        let i = info("flags:\t00\ninotify wd:1 ino:2 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000\n");
        let v = inotify(5, 0, &i).unwrap();
        let w = &v["wd"][0];
        assert_eq!(w["wd"], 1);
        assert_eq!(w["mask"], 0x300);
        assert_eq!(w["s_dev"], 0xfe00000u64);
        assert_eq!(w["f_handle"]["handle"][0], 2);
        assert_eq!(w["f_handle"]["bytes"], 8);
    }

    #[test]
    fn signalfd_mask() {
        let v = signalfd(6, 0, &info("flags:\t02\nsigmask:\t0000000000000201\n")).unwrap();
        assert_eq!(v["sigmask"], 0x201);
    }
}
