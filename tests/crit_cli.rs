//! `stasis crit` end to end: the built binary against the CRIU 4.2 fixtures, and against
//! Debian's crit (3.17) where its output does not depend on fields it lacks.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::crit::debian_crit;
use common::fixtures::fixtures;

const BIN: &str = env!("CARGO_BIN_EXE_stasis");

fn fixture(dir: &str, file: &str) -> PathBuf {
    let p = fixtures().join("criu-4.2").join(dir).join(file);
    assert!(p.is_file(), "fixture {} missing", p.display());
    p
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stasis");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(data) = stdin {
            input.write_all(data).expect("write stdin");
        }
    }
    child.wait_with_output().expect("wait stasis")
}

fn ok(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "stasis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fails(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(args, stdin);
    assert_eq!(out.status.code(), Some(1), "stasis {args:?} should exit 1");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn show_and_decode_pretty_print_exactly_crits_text() {
    for (dir, file) in [
        ("fx-files", "mm-30300.img"),
        ("fx-files", "files.img"),
        ("fx-signals", "core-30500.img"),
        ("fx-files", "pipes-data.img"),
        ("fx-files", "ghost-file-1.img"),
        ("fx-mem", "pagemap-30100.img"),
        ("fx-loop", "stats-dump"),
    ] {
        let image = fixture(dir, file);
        let expected = std::fs::read(image.with_file_name(format!("{file}.json"))).unwrap();
        assert_eq!(
            ok(&["crit", "show", s(&image)], None),
            expected,
            "show {dir}/{file}"
        );
        let decoded = ok(&["crit", "decode", "--pretty", "-i", s(&image)], None);
        assert_eq!(decoded, expected, "decode --pretty {dir}/{file}");
    }
}

#[test]
fn decode_encode_roundtrip_through_files_and_pipes() {
    let tmp = tempfile::tempdir().unwrap();
    for (dir, file) in [
        ("fx-threads", "core-30201.img"),
        ("fx-files", "fdinfo-2.img"),
        ("fx-files", "inventory.img"),
        ("fx-files", "pipes-data.img"),
        ("fx-tree", "pstree.img"),
    ] {
        let image = fixture(dir, file);
        let original = std::fs::read(&image).unwrap();
        for pretty in [false, true] {
            let json = tmp.path().join(format!("{file}.{pretty}.json"));
            let mut args = vec!["crit", "decode", "-i", s(&image), "-o", s(&json)];
            if pretty {
                args.push("--pretty");
            }
            assert!(ok(&args, None).is_empty());
            let text = std::fs::read_to_string(&json).unwrap();
            // Like crit: a newline only when printing to standard output.
            assert!(
                !text.ends_with('\n'),
                "{file}: file output has no trailing newline"
            );
            assert_eq!(text.contains('\n'), pretty, "{file}: pretty is multi-line");
            let back = tmp.path().join(format!("{file}.{pretty}.img"));
            assert!(ok(&["crit", "encode", "-i", s(&json), "-o", s(&back)], None).is_empty());
            assert_eq!(
                std::fs::read(&back).unwrap(),
                original,
                "{file} pretty={pretty}"
            );
        }
        // stdin -> stdout both ways
        let json = ok(&["crit", "decode"], Some(&original));
        assert!(json.ends_with(b"}\n"));
        assert_eq!(
            ok(&["crit", "encode"], Some(&json)),
            original,
            "{file} via pipes"
        );
    }
}

#[test]
fn info_prints_magic_and_count() {
    let out = ok(
        &["crit", "info", s(&fixture("fx-files", "fdinfo-2.img"))],
        None,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\n    \"magic\": \"FDINFO\",\n    \"count\": 11\n}\n"
    );
    // pagemap: the head entry is not counted (crit's rule)
    let out = ok(
        &["crit", "info", s(&fixture("fx-files", "pagemap-30300.img"))],
        None,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\n    \"magic\": \"PAGEMAP\",\n    \"count\": 8\n}\n"
    );
}

#[test]
fn explorers_match_debian_crit() {
    let crit = debian_crit();
    // ps everywhere; fds and mems where crit 3.17 does not stop at a zombie; rss depends
    // on pagemap nr_pages, which crit 3.17 cannot read, so it is checked on its own below.
    let cases = [
        ("fx-tree", "ps"),
        ("fx-threads", "ps"),
        ("fx-files", "fds"),
        ("fx-loop", "fds"),
        ("fx-files", "mems"),
        ("fx-mem", "mems"),
        ("fx-threads", "mems"),
    ];
    for (dir, what) in cases {
        let path = fixtures().join("criu-4.2").join(dir);
        let ours = ok(&["crit", "x", s(&path), what], None);
        let theirs = Command::new(&crit)
            .args(["x", s(&path), what])
            .output()
            .expect("run crit");
        assert!(theirs.status.success(), "crit x {dir} {what} failed");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs.stdout),
            "x {dir} {what}"
        );
    }
}

#[test]
fn explorer_output_formats() {
    let tree = fixtures().join("criu-4.2/fx-tree");
    let ps = String::from_utf8(ok(&["crit", "x", s(&tree), "ps"], None)).unwrap();
    let expected = "    PID   PGID    SID   COMM
  30400  30400  30400   fx-tree
  30402  30400  30400       fx-tree
  30404  30400  30400           fx-tree
  30403  30403  30400       fx-tree
  30405  30405  30405       fx-tree
  30406  30400  30400       fx-tree
";
    assert_eq!(ps, expected);
    let files = fixtures().join("criu-4.2/fx-files");
    let rss = String::from_utf8(ok(&["crit", "x", s(&files), "rss"], None)).unwrap();
    let first: Vec<&str> = rss.lines().take(3).collect();
    assert_eq!(first[0], "30300");
    assert_eq!(
        first[1],
        "\t401000 / 1              00401000 / 122      /tmp/criu-fixtures/bin/fx-files"
    );
    // the zombie of fx-tree has no mm image: it is left out instead of failing
    let mems = String::from_utf8(ok(&["crit", "x", s(&tree), "mems"], None)).unwrap();
    assert!(mems.starts_with("30400\n\texe "));
    assert!(!mems.contains("30406"));
    let fds = String::from_utf8(ok(&["crit", "x", s(&files), "fds"], None)).unwrap();
    assert!(
        fds.contains("\t     10: /tmp/criu-fixtures/data/fx-files/ro.dat\n"),
        "{fds}"
    );
    assert!(
        fds.contains("\t    cwd: /tmp/criu-fixtures/data/fx-files\n"),
        "{fds}"
    );
}

#[test]
fn debian_crit_reads_what_we_encode() {
    let crit = debian_crit();
    let tmp = tempfile::tempdir().unwrap();
    let image = fixture("fx-files", "files.img");
    let json = ok(&["crit", "decode", "--pretty", "-i", s(&image)], None);
    let out = tmp.path().join("files.img");
    ok(&["crit", "encode", "-o", s(&out)], Some(&json));
    let theirs = Command::new(&crit)
        .args(["decode", "-i", s(&out)])
        .output()
        .expect("run crit");
    assert!(theirs.status.success());
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    assert_eq!(theirs["magic"], "FILES");
    assert_eq!(
        theirs["entries"][3]["reg"]["name"],
        "/tmp/criu-fixtures/data/fx-files/ro.dat"
    );
}

#[test]
fn errors_name_the_file_and_exit_1() {
    let pages = fixture("fx-files", "pages-1.img");
    let err = fails(&["crit", "decode", "-i", s(&pages)], None);
    assert!(
        err.contains("pages-1.img") && err.contains("unknown magic"),
        "{err}"
    );

    let err = fails(&["crit", "info", "/nonexistent/x.img"], None);
    assert!(err.contains("/nonexistent/x.img"), "{err}");

    let bad = br#"{"magic": "PSTREE", "entries": [{"pid": 1, "ppid": 0, "pgid": 1, "sid": 1},
        {"pid": 2, "ppid": 1, "pgid": 1, "sid": 1, "bogus": 3}]}"#;
    let err = fails(&["crit", "encode"], Some(bad));
    assert!(err.contains("entry 1") && err.contains("bogus"), "{err}");

    let bad = br#"{"magic": "MM", "entries": [{"vmas": [{"prot": "PROT_READ | PROT_NOPE"}]}]}"#;
    let err = fails(&["crit", "encode"], Some(bad));
    assert!(
        err.contains("vmas[0].prot") && err.contains("PROT_NOPE"),
        "{err}"
    );

    let image = std::fs::read(fixture("fx-files", "mm-30300.img")).unwrap();
    let err = fails(&["crit", "encode"], Some(&image));
    assert!(err.contains("encode expects JSON"), "{err}");

    let truncated = &image[..image.len() - 10];
    let err = fails(&["crit", "decode"], Some(truncated));
    assert!(err.contains("<stdin>") && err.contains("entry 0"), "{err}");

    let err = fails(&["crit", "frobnicate"], None);
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn help_explains_each_subcommand() {
    let top = String::from_utf8(ok(&["crit", "--help"], None)).unwrap();
    for sub in ["decode", "encode", "show", "info", "x"] {
        assert!(top.contains(sub), "{top}");
        let help = String::from_utf8(ok(&["crit", sub, "--help"], None)).unwrap();
        assert!(help.contains("Usage: stasis crit"), "{help}");
    }
    let x = String::from_utf8(ok(&["crit", "x", "--help"], None)).unwrap();
    assert!(x.contains("ps") && x.contains("rss"), "{x}");
}

#[test]
fn invoked_as_crit() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("crit");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = Command::new(&link)
        .args(["info", s(&fixture("fx-loop", "pstree.img"))])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\n    \"magic\": \"PSTREE\",\n    \"count\": 1\n}\n"
    );
    let help = Command::new(&link).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: crit"));
}
