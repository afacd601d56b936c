//! The `--pretty` rules the CRIU 4.2 fixtures do not exercise (socket dictionaries, IPv4 and
//! IPv6 address fields, quoted-printable unix socket names, `dev`/`odev` device numbers,
//! leftover flag bits, extra payloads of sockets, TCP streams and SysV IPC, chunk-less ghost
//! files), checked against an independent implementation: Debian's crit (3.17, Python).
//!
//! For each hand-written document: we encode it; crit must print, for our image, exactly
//! the text we print (plain and `--pretty`); and our encoding of our own decode must give
//! the same bytes back.

mod common;

use std::process::Command;

use common::debian_crit;
use stasis_images::json::{self, Codec};

const DOCS: &[&str] = &[
    r#"{"magic": "INETSK", "entries": [
 {"id": 1, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 100, "family": "INET", "type": "STREAM", "proto": "TCP", "state": "LISTEN",
  "src_port": 80, "dst_port": 0, "flags": "0x802", "backlog": 5,
  "src_addr": ["127.0.0.1"], "dst_addr": ["0.0.0.0"]},
 {"id": 2, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 101, "family": "INET6", "type": "DGRAM", "proto": "UDP", "state": "CLOSE",
  "src_port": 53, "dst_port": 0, "flags": "0x0", "backlog": 0,
  "src_addr": ["2001:db8::1"], "dst_addr": ["::"], "v6only": true},
 {"id": 3, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 102, "family": 99, "type": 7, "proto": 200, "state": 42, "src_port": 1,
  "dst_port": 2, "flags": 0, "backlog": 0, "src_addr": ["::ffff:10.0.0.1"],
  "dst_addr": ["fe80::1:0:0:2"]},
 {"id": 4, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 103, "family": "PACKET", "type": "RAW", "proto": "UDPLITE", "state": "SYN_SENT",
  "src_port": 1, "dst_port": 2, "flags": 1, "backlog": 0,
  "src_addr": ["1:0:0:2:0:0:0:3"], "dst_addr": ["1:2:3:4:5:6:7:8"]}
]}"#,
    r#"{"magic": "UNIXSK", "entries": [
 {"id": 1, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 7, "type": "SEQPACKET", "state": "ESTABLISHED", "flags": "0x800",
  "uflags": "0x0", "backlog": 0, "peer": 8, "name": "=00abstract name=3D1"},
 {"id": 2, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 8, "type": "DGRAM", "state": "CLOSE", "flags": 0, "uflags": 1,
  "backlog": 3, "peer": 0, "name": "/tmp/a socket with spaces and tab\t"},
 {"id": 3, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 9, "type": "STREAM", "state": "LISTEN", "flags": 0, "uflags": 0,
  "backlog": 3, "peer": 0,
  "name": "/var/run/a/very/long/socket/path/that/goes/on/and/on/for/more/than/seventy-six/columns.sock"},
 {"id": 4, "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
  "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
           "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0},
  "ino": 10, "type": "STREAM", "state": "LISTEN", "flags": 0, "uflags": 0,
  "backlog": 3, "peer": 0, "name": "=FF=00=01=7F=80 x=0Ay", "deleted": true}
]}"#,
    r#"{"magic": "GHOST_FILE", "entries": [
 {"uid": 0, "gid": 0, "mode": 8630, "dev": "254:1", "ino": 5, "rdev": "1:3",
  "extra": "aGVsbG8gd29ybGQK\n"}
]}"#,
    r#"{"magic": "GHOST_FILE", "entries": [
 {"uid": 0, "gid": 0, "mode": 8630, "dev": "4095:1048575", "rdev": "300:70000",
  "extra": ""}
]}"#,
    r#"{"magic": "MNTS", "entries": [
 {"fstype": 1, "mnt_id": 22, "root_dev": "0:21", "parent_mnt_id": 1, "flags": "0x1000",
  "root": "/", "mountpoint": "/proc", "source": "proc", "options": "rw", "sb_flags": "0x0"}
]}"#,
    r#"{"magic": "INOTIFY_WD", "entries": [
 {"id": 1, "i_ino": 12, "mask": "0xfff", "ignored_mask": "0x0", "s_dev": "8:1", "wd": 1,
  "f_handle": {"bytes": 8, "type": 1, "handle": [1, 2], "path": "/x"}}
]}"#,
    r#"{"magic": "TCP_STREAM", "entries": [
 {"inq_len": 3, "inq_seq": 1, "outq_len": 5, "outq_seq": 2, "opt_mask": "0x7",
  "snd_wscale": 7, "mss_clamp": 1460, "nodelay": true,
  "extra": {"inq": "YWJj\n", "outq": "ZGVmZ2g=\n"}}
]}"#,
    r#"{"magic": "SK_QUEUES", "entries": [
 {"id_for": 1, "length": 4, "extra": "AAECAw==\n"},
 {"id_for": 2, "length": 0, "extra": ""}
]}"#,
    r#"{"magic": "PIPES_DATA", "entries": [
 {"pipe_id": 9, "bytes": 90, "extra": "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2\nNzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5\n"}
]}"#,
    r#"{"magic": "IPCNS_SEM", "entries": [
 {"desc": {"key": 1, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 438, "id": 0},
  "nsems": 3, "extra": [1, 65535, 7]}
]}"#,
    r#"{"magic": "IPCNS_SHM", "entries": [
 {"desc": {"key": 2, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 384, "id": 1},
  "size": 5, "extra": "aGVsbG8=\n"}
]}"#,
    r#"{"magic": "IPCNS_MSG", "entries": [
 {"desc": {"key": 3, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0, "mode": 384, "id": 2},
  "qbytes": 16384, "qnum": 2,
  "extra": [{"mtype": 1, "msize": 3}, "YWJj\n", {"mtype": 2, "msize": 9}, "MTIzNDU2Nzg5\n"]}
]}"#,
    r#"{"magic": "MEMFD_INODE", "entries": [
 {"name": "memfd:x", "uid": 0, "gid": 0, "size": 4096, "shmid": 1,
  "seals": "F_SEAL_SEAL | F_SEAL_WRITE | 0x40", "inode_id": 1}
]}"#,
    r#"{"magic": "CORE", "entries": [
 {"mtype": "X86_64", "tc": {"task_state": "Zombie", "exit_code": 0, "personality": 0,
  "flags": 0, "blk_sigset": "0x0", "comm": "a \"quoted\" \u00e9 name"}},
 {"mtype": "X86_64", "tc": {"task_state": 6, "exit_code": 1, "personality": 0, "flags": 0,
  "blk_sigset": "0xffffffffffffffff", "comm": "x"}},
 {"mtype": "X86_64", "tc": {"task_state": 2, "exit_code": 1, "personality": 0, "flags": 0,
  "blk_sigset": "0x1", "comm": "y"}}
]}"#,
    r#"{"magic": "MM", "entries": [
 {"mm_start_code": "0x1", "mm_end_code": "0x2", "mm_start_data": "0x3", "mm_end_data": "0x4",
  "mm_start_stack": "0x5", "mm_start_brk": "0x6", "mm_brk": "0x7", "mm_arg_start": "0x8",
  "mm_arg_end": "0x9", "mm_env_start": "0xa", "mm_env_end": "0xb", "exe_file_id": 1,
  "vmas": [{"start": "0x1000", "end": "0x2000", "pgoff": 0, "shmid": 0,
            "prot": "PROT_READ | 0x10", "flags": "MAP_SHARED | MAP_ANON | 0x4000",
            "status": "VMA_AREA_REGULAR | VMA_AREA_AIORING | 0x10000000", "fd": -1}]}
]}"#,
];

#[test]
fn debian_crit_prints_what_we_print_for_synthetic_images() {
    let crit = debian_crit();
    let codec = Codec::criu().expect("descriptor set loads");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for (i, text) in DOCS.iter().enumerate() {
        let doc = json::parse_text(text).expect("test document parses");
        let bytes = json::encode_image(codec, &doc)
            .unwrap_or_else(|e| panic!("document {i}: our encode: {e}"));
        let file = tmp.path().join(format!("doc-{i}.img"));
        std::fs::write(&file, &bytes).expect("write image");
        for pretty in [false, true] {
            let mut cmd = Command::new(&crit);
            cmd.arg("decode").arg("-i").arg(&file);
            if pretty {
                cmd.arg("--pretty");
            }
            let out = cmd.output().expect("run crit");
            if !out.status.success() {
                failures.push(format!(
                    "document {i}: crit failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ));
                continue;
            }
            let ours = json::decode_image(codec, &bytes, pretty)
                .unwrap_or_else(|e| panic!("document {i}: our decode: {e}"));
            let ours_text = json::to_text(&ours, pretty) + "\n";
            let theirs = String::from_utf8_lossy(&out.stdout);
            if ours_text != theirs {
                failures.push(format!(
                    "document {i} (pretty={pretty}):\n ours:   {ours_text}\n theirs: {theirs}"
                ));
            }
            let again = json::encode_image(codec, &ours)
                .unwrap_or_else(|e| panic!("document {i}: re-encode: {e}"));
            if again != bytes {
                failures.push(format!("document {i} (pretty={pretty}): re-encode differs"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
