//! One test per rejection path of the framing layer: each hostile input gives its own typed
//! error naming the entry index and offset, never a panic nor a huge allocation.

use stasis_images::error::ImageError;
use stasis_images::framing::{Image, ImageReader, ImageWriter, MAX_ENTRY_LEN};
use stasis_images::magic::{ImageKind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

fn head(kind: ImageKind) -> Vec<u8> {
    stasis_images::framing::head_bytes(kind)
}

/// A pipe_data_entry { pipe_id: 7, bytes: n }.
fn pipe_data(n: u8) -> Vec<u8> {
    vec![0x08, 0x07, 0x10, n]
}

fn framed(kind: ImageKind, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = head(kind);
    for (e, x) in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
        out.extend_from_slice(x);
    }
    out
}

#[test]
fn empty_file_is_truncated_head() {
    let err = Image::parse(&[]).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                what: "head magic",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_head_magic() {
    let err = Image::parse(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::BadHeadMagic {
                found: 0x0403_0201,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn image_magic_without_head_is_bad_head() {
    // core magic alone (only inventory may omit the head magic)
    let err = Image::parse(&0x5505_3847u32.to_le_bytes()).unwrap_err();
    assert!(matches!(err, ImageError::BadHeadMagic { .. }), "{err}");
}

#[test]
fn service_head_on_common_kind_is_bad_head() {
    let mut b = IMG_SERVICE_MAGIC.to_le_bytes().to_vec();
    b.extend_from_slice(&ImageKind::Core.info().magic.to_le_bytes());
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::BadHeadMagic {
                found: IMG_SERVICE_MAGIC,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_image_magic() {
    let mut b = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    b.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::UnknownMagic {
                found: 0xdead_beef,
                offset: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_image_magic() {
    let b = IMG_COMMON_MAGIC.to_le_bytes();
    let err = Image::parse(&b[..]).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                what: "image magic",
                offset: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_length() {
    let mut b = framed(ImageKind::Core, &[(&[0x08, 0x01], &[])]);
    b.extend_from_slice(&[0x02, 0x00]);
    let err = Image::parse(&b).unwrap_err();
    match err {
        ImageError::Truncated {
            what,
            index,
            offset,
            needed,
            available,
            ..
        } => {
            assert_eq!(
                (what, index, offset, needed, available),
                ("entry length", Some(1), 14, 4, 2)
            );
        }
        e => panic!("{e}"),
    }
}

#[test]
fn truncated_entry() {
    let mut b = head(ImageKind::Core);
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&[0x08, 0x01]);
    let err = Image::parse(&b).unwrap_err();
    match &err {
        ImageError::Truncated {
            what,
            index,
            offset,
            needed,
            available,
            ..
        } => {
            assert_eq!(
                (*what, *index, *offset, *needed, *available),
                ("entry", Some(0), 12, 10, 2)
            );
        }
        e => panic!("{e}"),
    }
    assert!(err.to_string().contains("entry 0"), "{err}");
}

#[test]
fn oversized_length_is_refused_before_reading() {
    let mut b = head(ImageKind::Core);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::EntryTooLarge {
                index: 0,
                offset: 8,
                cap: MAX_ENTRY_LEN,
                ..
            }
        ),
        "{err}"
    );
    // same through the streaming reader
    let mut r = ImageReader::new(&b[..], Default::default()).unwrap();
    assert!(matches!(
        r.next_entry(),
        Err(ImageError::EntryTooLarge { .. })
    ));
}

#[test]
fn large_length_beyond_file_is_truncated_not_allocated() {
    let mut b = head(ImageKind::Core);
    b.extend_from_slice(&((MAX_ENTRY_LEN - 1) as u32).to_le_bytes());
    b.push(0x08);
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                what: "entry",
                available: 1,
                ..
            }
        ),
        "{err}"
    );
    let mut r = ImageReader::new(&b[..], Default::default()).unwrap();
    assert!(matches!(r.next_entry(), Err(ImageError::Truncated { .. })));
}

#[test]
fn malformed_message() {
    // tag of field 1 as varint, then a varint that never ends
    let b = framed(
        ImageKind::Core,
        &[(&[0x08, 0x01], &[]), (&[0x08, 0xff, 0xff], &[])],
    );
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Malformed {
                index: 1,
                message: "criu.core_entry",
                at: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn undecodable_message_for_its_type() {
    // well-formed wire data, but field 1 of pipe_data_entry (uint32) given as bytes
    let b = framed(ImageKind::Pipes, &[(&[0x0a, 0x01, 0x00], &[])]);
    let img = Image::parse(&b).unwrap();
    if stasis_images::schema::message("criu.pipe_entry").is_some() {
        let err = img.check_messages().unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Decode {
                    index: 0,
                    offset: 8,
                    ..
                }
            ),
            "{err}"
        );
    }
    // typed decode through prost: a struct whose field 1 is a uint32
    #[derive(Clone, PartialEq, prost::Message)]
    struct One {
        #[prost(uint32, optional, tag = "1")]
        x: Option<u32>,
    }
    let err = img.decode::<One>().unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Decode {
                index: 0,
                offset: 8,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_payload() {
    let mut b = framed(ImageKind::PipesData, &[(&pipe_data(5), &[])]);
    b.extend_from_slice(b"abc");
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                what: "extra payload",
                index: Some(0),
                needed: 5,
                available: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_payload_size_field() {
    let b = framed(ImageKind::PipesData, &[(&[0x08, 0x07], &[])]);
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::BadPayloadField {
                index: 0,
                field: "bytes",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn payload_round_trip_and_writer_check() {
    let b = framed(
        ImageKind::PipesData,
        &[(&pipe_data(3), b"xyz"), (&pipe_data(0), b"")],
    );
    let img = Image::parse(&b).unwrap();
    assert_eq!(img.entries[0].extra.as_deref(), Some(&b"xyz"[..]));
    assert_eq!(img.entries[1].extra.as_deref(), Some(&b""[..]));
    assert_eq!(img.to_bytes(), b);
    let mut w = ImageWriter::new(Vec::new(), ImageKind::PipesData, Default::default()).unwrap();
    let err = w.write_entry(&pipe_data(3), Some(b"toolong")).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::PayloadMismatch {
                index: 0,
                actual: 7,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn raw_kinds_have_no_entries() {
    let err = Image::parse_body(ImageKind::Pages, &[0; 16]).unwrap_err();
    assert!(
        matches!(err, ImageError::RawImage { kind: "PAGES", .. }),
        "{err}"
    );
    assert!(ImageWriter::new(Vec::new(), ImageKind::Pages, Default::default()).is_err());
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("core-1.img");
    std::fs::write(&p, [1, 2, 3, 4]).unwrap();
    let err = Image::read_file(&p).unwrap_err();
    assert!(
        err.to_string().starts_with(&p.display().to_string()),
        "{err}"
    );
    let err = stasis_images::framing::read_entries::<prost_types_like::Empty>(
        dir.path().join("nope.img"),
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::Io { op: "open", .. }), "{err}");
}

/// Only regular files are read, and none over the cap: checked before anything is read
/// (`crit decode -i /dev/zero` used to grow without bound).
#[test]
fn devices_fifos_directories_and_huge_files_are_refused_before_reading() {
    use stasis_images::limits::{self, MAX_IMAGE_FILE};
    for dev in ["/dev/zero", "/dev/urandom"] {
        let err = Image::read_file(dev).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::NotRegular {
                    what: "a character device",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(dev), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Image::read_file(dir.path()).unwrap_err(),
        ImageError::NotRegular {
            what: "a directory",
            ..
        }
    ));
    let fifo = dir.path().join("fifo.img");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // (opening a FIFO for reading blocks until a writer comes: keep one open)
    let _w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    assert!(matches!(
        Image::read_file(&fifo).unwrap_err(),
        ImageError::NotRegular { what: "a FIFO", .. }
    ));
    // A sparse file one byte over the cap: refused from its size, nothing allocated.
    let big = dir.path().join("core-1.img");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_IMAGE_FILE + 1).unwrap();
    let err = Image::read_file(&big).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                cap: MAX_IMAGE_FILE,
                ..
            }
        ),
        "{err}"
    );
    // A symlink to a device is the device.
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    assert!(matches!(
        Image::read_file(&link).unwrap_err(),
        ImageError::NotRegular { .. }
    ));
    // Streams (standard input) are read up to the cap only.
    let err = limits::read_capped(std::io::repeat(0), 1 << 20, &Default::default()).unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { cap: 0x100000, .. }),
        "{err}"
    );
}

mod prost_types_like {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
}

#[test]
fn wrong_kind() {
    let b = framed(ImageKind::Core, &[]);
    let err = Image::parse_as(ImageKind::Mm, &b).unwrap_err();
    assert!(matches!(err, ImageError::WrongKind { .. }), "{err}");
}

#[test]
fn ghost_file_without_chunks_keeps_the_tail() {
    // ghost_file_entry{uid 0, gid 0, mode 0x81a4} then raw content to EOF
    let e = [0x08, 0x00, 0x10, 0x00, 0x18, 0xa4, 0x83, 0x02];
    let b = framed(ImageKind::GhostFile, &[(&e, b"content")]);
    let img = Image::parse(&b).unwrap();
    assert_eq!(img.entries.len(), 1);
    assert_eq!(img.entries[0].extra.as_deref(), Some(&b"content"[..]));
    assert_eq!(img.to_bytes(), b);
}

#[test]
fn ipc_msg_queue_truncated_inside_a_message() {
    // ipc_msg_entry{qbytes 1, qnum 2}, one message only
    let entry = [0x10, 0x01, 0x18, 0x02];
    let msg = [0x08, 0x01, 0x10, 0x03];
    let extra = stasis_images::payload::ipc_msg_extra(&[(&msg, b"abc")]);
    let b = framed(ImageKind::IpcnsMsg, &[(&entry, &extra)]);
    let err = Image::parse(&b).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                what: "ipc_msg length",
                index: Some(0),
                ..
            }
        ),
        "{err}"
    );
}
