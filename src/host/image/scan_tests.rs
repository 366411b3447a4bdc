//! The pre-scan on archives crafted with the `tar` crate.

use std::io::Write;

use super::*;

/// One entry, its name and link written raw (the `tar` crate's own
/// setters refuse `..`, which is what these tests need to write).
pub(crate) struct E<'a> {
    pub name: &'a str,
    pub kind: EntryType,
    pub link: &'a str,
    pub data: &'a [u8],
    pub mode: u32,
}

pub(crate) fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        name,
        kind: EntryType::Regular,
        link: "",
        data,
        mode: 0o644,
    }
}

pub(crate) fn link<'a>(name: &'a str, kind: EntryType, target: &'a str) -> E<'a> {
    E {
        name,
        kind,
        link: target,
        data: b"",
        mode: 0o777,
    }
}

pub(crate) fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_cksum();
        b.append(&h, e.data).expect("append");
    }
    b.into_inner().expect("tar")
}

pub(crate) fn gz(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).expect("gz");
    g.finish().expect("gz")
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p
}

const BIG: Limits = Limits {
    max_upload_bytes: 1 << 30,
    max_unpacked_bytes: 1 << 30,
};

#[test]
fn formats_are_told_by_content() {
    let t = tempfile::tempdir().expect("tmp");
    let layer = tar_of(&[file("etc/hostname", b"x\n")]);
    let oci = tar_of(&[
        file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        file("index.json", b"{}"),
        file("blobs/sha256/aa", &gz(&layer)),
        file("blobs/sha256/bb", b"{\"config\":1}"),
    ]);
    let docker = tar_of(&[file("manifest.json", b"[]"), file("abc/layer.tar", &layer)]);
    let rootfs = tar_of(&[
        file("./bin/sh", b"#!"),
        file("./usr/share/doc/x.gz", &gz(b"doc")),
    ]);
    let cases = [
        ("oci.tar", oci, ArchiveFormat::Oci, false),
        ("docker.tar", docker, ArchiveFormat::Docker, false),
        (
            "rootfs.tar",
            rootfs.clone(),
            ArchiveFormat::RootfsTar,
            false,
        ),
        ("rootfs.tar.gz", gz(&rootfs), ArchiveFormat::RootfsTar, true),
    ];
    for (name, data, format, gzip) in cases {
        let s = scan_archive(&write(t.path(), name, &data), &BIG).expect(name);
        assert_eq!((s.format, s.gzip), (format, gzip), "{name}");
        assert!(s.unpacked_bytes > 0, "{name}");
    }
    for (name, data, why) in [
        ("text", b"hello world".to_vec(), "not a tar"),
        ("json", b"{}".to_vec(), "not a tar"),
        ("zstd.tar", vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0], "zstd"),
    ] {
        let e = scan_archive(&write(t.path(), name, &data), &BIG).expect_err(name);
        assert!(e.to_string().contains(why), "{name}: {e}");
    }
}

#[test]
fn hostile_entries_are_refused_by_name() {
    let t = tempfile::tempdir().expect("tmp");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_of(&[file("../../etc/passwd", b"x")]),
            "entry ../../etc/passwd leaves the image",
        ),
        (
            "inner-dotdot",
            tar_of(&[file("a/../../b", b"x")]),
            "a/../../b leaves",
        ),
        (
            "absolute",
            tar_of(&[file("/etc/cron.d/x", b"x")]),
            "/etc/cron.d/x is an absolute path",
        ),
        (
            "hardlink-abs",
            tar_of(&[link("passwd", EntryType::Link, "/etc/passwd")]),
            "hard link passwd points outside the image (/etc/passwd)",
        ),
        (
            "hardlink-up",
            tar_of(&[link("x", EntryType::Link, "../../etc/shadow")]),
            "outside the image (../../etc/shadow)",
        ),
    ];
    for (name, data, msg) in cases {
        let e = scan_archive(&write(t.path(), name, &data), &BIG).expect_err(name);
        assert!(e.to_string().contains(msg), "{name}: {e}");
    }
    // The same in a later layer of an image archive names the layer.
    let good = tar_of(&[file("etc/ok", b"ok")]);
    let bad = tar_of(&[file("../../etc/passwd", b"x")]);
    let docker = tar_of(&[
        file("manifest.json", b"[]"),
        file("1/layer.tar", &good),
        file("2/layer.tar", &gz(&bad)),
    ]);
    let e = scan_archive(&write(t.path(), "d.tar", &docker), &BIG).expect_err("layer 2");
    assert!(
        e.to_string()
            .starts_with("layer 2 (layer.tar): entry ../../etc/passwd leaves the image"),
        "{e}"
    );
    let zstd = tar_of(&[
        file("manifest.json", b"[]"),
        file("blobs/sha256/cc", &[0x28, 0xb5, 0x2f, 0xfd, 1, 2]),
    ]);
    let e = scan_archive(&write(t.path(), "z.tar", &zstd), &BIG).expect_err("zstd");
    assert!(
        e.to_string().contains("zstd, which fcm cannot check"),
        "{e}"
    );
}

#[test]
fn what_stays_inside_the_image_is_allowed() {
    let t = tempfile::tempdir().expect("tmp");
    let mut dev = link("dev/sda", EntryType::Block, "");
    dev.mode = 0o660;
    let mut suid = file("usr/bin/su", b"\x7fELF");
    suid.mode = 0o4755;
    let data = tar_of(&[
        link("etc/evil", EntryType::Symlink, "/etc"),
        file("etc/evil/x", b"in the image"),
        link("lib64", EntryType::Symlink, "../../../usr/lib"),
        link("usr/bin/sh2", EntryType::Link, "usr/bin/su"),
        dev,
        suid,
    ]);
    let s = scan_archive(&write(t.path(), "ok.tar", &data), &BIG).expect("allowed");
    assert_eq!(s.format, ArchiveFormat::RootfsTar);
}

#[test]
fn the_unpacked_size_is_capped_across_layers() {
    let t = tempfile::tempdir().expect("tmp");
    let chunk = vec![0u8; 600 * 1024];
    let layer = tar_of(&[file("a", &chunk)]);
    let docker = tar_of(&[
        file("manifest.json", b"[]"),
        file("1/layer.tar", &layer),
        file("2/layer.tar", &gz(&layer)),
    ]);
    let p = write(t.path(), "d.tar", &docker);
    let small = Limits {
        max_upload_bytes: 1 << 30,
        max_unpacked_bytes: 1 << 20,
    };
    // Each layer alone is under 1 MiB; the two are over.
    let e = scan_archive(&p, &small).expect_err("cap");
    assert!(
        e.to_string()
            .contains("more than 1048576 bytes (images.max_unpacked_bytes)"),
        "{e}"
    );
    let eight = ImageError::TooBig { limit: 8 << 30 };
    assert_eq!(
        eight.to_string(),
        "the image unpacks to more than 8 GiB (images.max_unpacked_bytes)"
    );
    assert!(scan_archive(&p, &BIG).is_ok());
}

#[test]
fn a_context_unpacks_privately_and_only_inside() {
    let t = tempfile::tempdir().expect("tmp");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mk");
    let mut suid = file("tool", b"#!/bin/sh\n");
    suid.mode = 0o4755;
    let ctx = tar_of(&[
        file("Dockerfile", b"FROM fcm/base\n"),
        suid,
        link("out", EntryType::Symlink, outside.to_str().expect("utf8")),
        file("out/planted", b"x"),
    ]);
    let dest = t.path().join("ctx");
    let r = unpack_context(&write(t.path(), "c.tar", &ctx), &dest, &BIG);
    // Through the symlink is refused by the unpacker; nothing lands outside.
    assert!(r.is_err(), "{r:?}");
    assert_eq!(std::fs::read_dir(&outside).expect("ls").count(), 0);
    let ctx = tar_of(&[file("Dockerfile", b"FROM fcm/base\n"), suid_file()]);
    let dest = t.path().join("ctx2");
    unpack_context(&write(t.path(), "c2.tar", &ctx), &dest, &BIG).expect("unpack");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(&dest), 0o700);
    assert_eq!(
        mode(&dest.join("tool")) & 0o7000,
        0,
        "no setuid on the host"
    );
    assert!(inside(&dest, "Dockerfile").is_some_and(|p| p.is_file()));
    assert!(inside(&dest, "../c.tar").is_none() && inside(&dest, "/etc/passwd").is_none());
    std::os::unix::fs::symlink("/etc/passwd", dest.join("Evil")).expect("ln");
    assert!(
        inside(&dest, "Evil").is_none(),
        "a symlinked Dockerfile is not read"
    );
    let e = unpack_context(
        &write(t.path(), "c3.tar", &tar_of(&[file("../x", b"")])),
        &t.path().join("c3"),
        &BIG,
    )
    .expect_err("dotdot");
    assert!(
        e.to_string()
            .contains("the build context: entry ../x leaves the image"),
        "{e}"
    );
}

fn suid_file() -> E<'static> {
    let mut f = file("tool", b"#!/bin/sh\n");
    f.mode = 0o4755;
    f
}
