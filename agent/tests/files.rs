//! Files and trees through the agent, in a temp dir of the test's.

mod common;

use common::{Daemon, Noise};
use fcm_proto::{Done, FailKind, FromAgent, Kind, ToAgent};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8").to_string()
}

/// Reads a file or tree: (size announced, bytes).
fn read(
    d: &mut Daemon,
    msg: impl FnOnce(u64) -> ToAgent,
) -> Result<(Option<u64>, Vec<u8>), FailKind> {
    let id = d.id();
    d.send(&msg(id));
    let mut size = None;
    let mut bytes = Vec::new();
    for m in d.until_end(id) {
        match m {
            FromAgent::Opened { size: s, .. } => size = s,
            FromAgent::Data { data, .. } => bytes.extend(data),
            FromAgent::End { .. } => {}
            FromAgent::Failed { failure, .. } => return Err(failure.kind),
            other => panic!("{other:?}"),
        }
    }
    Ok((size, bytes))
}

/// Writes a file or tree from `data`: its `Done` or failure.
fn write(d: &mut Daemon, data: &[u8], msg: impl FnOnce(u64) -> ToAgent) -> Result<Done, FailKind> {
    let id = d.id();
    d.send(&msg(id));
    let mut returned = d.upload(id, data);
    loop {
        match d.expect_for(id) {
            FromAgent::Credit { bytes, .. } => returned += u64::from(bytes),
            FromAgent::Done { done, .. } => {
                assert_eq!(returned, data.len() as u64, "every byte is credited back");
                return Ok(done);
            }
            FromAgent::Failed { failure, .. } => return Err(failure.kind),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_file_written_reads_back_byte_exact() {
    let mut d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("data.bin");
    let data = Noise::new(3).bytes(3 * 1024 * 1024 + 17);
    let done = write(&mut d, &data, |id| ToAgent::WriteFile {
        id,
        path: s(&target),
        mode: 0o640,
    });
    assert_eq!(
        done,
        Ok(Done::Written {
            bytes: data.len() as u64
        })
    );
    assert!(fs::read(&target).expect("read") == data);
    assert_eq!(fs::metadata(&target).expect("meta").mode() & 0o7777, 0o640);
    let (size, back) = read(&mut d, |id| ToAgent::ReadFile {
        id,
        path: s(&target),
    })
    .expect("read");
    assert_eq!(size, Some(data.len() as u64));
    assert!(back == data, "read back differs");
    // Rewritten: replaced whole; an empty file too.
    let done = write(&mut d, b"", |id| ToAgent::WriteFile {
        id,
        path: s(&target),
        mode: 0o600,
    });
    assert_eq!(done, Ok(Done::Written { bytes: 0 }));
    assert_eq!(fs::read(&target).expect("read"), b"");
    let names: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(names.len(), 1, "no temp file is left");
    // A file of /proc says it is empty: read to its end, size unknown.
    let (size, status) = read(&mut d, |id| ToAgent::ReadFile {
        id,
        path: "/proc/self/status".into(),
    })
    .expect("read");
    assert_eq!(size, None);
    assert!(String::from_utf8_lossy(&status).contains("Name:"));
}

#[test]
fn reads_and_writes_refuse_what_they_cannot_do() {
    let mut d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let r = |d: &mut Daemon, p: &str| {
        read(d, |id| ToAgent::ReadFile { id, path: p.into() }).map(|_| ())
    };
    assert_eq!(r(&mut d, "/no/such/file"), Err(FailKind::NotFound));
    assert_eq!(r(&mut d, &s(dir.path())), Err(FailKind::WrongKind));
    assert_eq!(r(&mut d, "/dev/null"), Err(FailKind::WrongKind));
    assert_eq!(r(&mut d, ""), Err(FailKind::Invalid));
    assert_eq!(r(&mut d, "/etc/\0passwd"), Err(FailKind::Invalid));
    let big = dir.path().join("big");
    fs::File::create(&big)
        .expect("create")
        .set_len((1 << 30) + 1)
        .expect("sparse");
    assert_eq!(r(&mut d, &s(&big)), Err(FailKind::TooLarge));

    let w = |d: &mut Daemon, p: String| {
        write(d, b"x", |id| ToAgent::WriteFile {
            id,
            path: p,
            mode: 0o644,
        })
    };
    assert_eq!(
        w(&mut d, s(&dir.path().join("no/dir/f"))),
        Err(FailKind::NotFound)
    );
    assert_eq!(w(&mut d, s(dir.path())), Err(FailKind::WrongKind));
    let t = |d: &mut Daemon, p: String| read(d, |id| ToAgent::ReadTree { id, path: p }).map(|_| ());
    assert_eq!(t(&mut d, s(&big)), Err(FailKind::WrongKind));
    assert_eq!(t(&mut d, "/no/such/dir".into()), Err(FailKind::NotFound));
}

#[test]
fn a_cancelled_write_leaves_nothing() {
    let mut d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("f");
    let id = d.id();
    d.send(&ToAgent::WriteFile {
        id,
        path: s(&target),
        mode: 0o644,
    });
    d.send(&ToAgent::Data {
        id,
        data: vec![1; 1000],
    });
    assert!(matches!(
        d.expect_for(id),
        FromAgent::Credit { bytes: 1000, .. }
    ));
    assert_eq!(
        fs::read_dir(dir.path()).expect("ls").count(),
        1,
        "the temp file"
    );
    d.send(&ToAgent::Cancel { id });
    match d.expect_for(id) {
        FromAgent::Failed { failure, .. } => assert_eq!(failure.kind, FailKind::Failed),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);

    // A session's end discards a write under way too.
    let id = d.id();
    d.send(&ToAgent::WriteFile {
        id,
        path: s(&target),
        mode: 0o644,
    });
    d.send(&ToAgent::Data {
        id,
        data: vec![1; 10],
    });
    assert!(matches!(d.expect_for(id), FromAgent::Credit { .. }));
    d.hello(9);
    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || { fs::read_dir(dir.path()).map(|r| r.count()).unwrap_or(1) == 0 }
    ));
}

#[test]
fn stat_list_mkdir_rename_remove() {
    let mut d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| s(&dir.path().join(n));
    assert_eq!(
        d.ask(|id| ToAgent::Mkdir {
            id,
            path: p("a/b/c"),
            parents: false
        })
        .map_err(|f| f.kind),
        Err(FailKind::NotFound)
    );
    assert_eq!(
        d.ask(|id| ToAgent::Mkdir {
            id,
            path: p("a/b/c"),
            parents: true
        }),
        Ok(Done::Ok)
    );
    assert_eq!(
        d.ask(|id| ToAgent::Mkdir {
            id,
            path: p("a/b/c"),
            parents: true
        }),
        Ok(Done::Ok)
    );
    assert_eq!(
        d.ask(|id| ToAgent::Mkdir {
            id,
            path: p("a"),
            parents: false
        })
        .map_err(|f| f.kind),
        Err(FailKind::Failed)
    );
    fs::write(dir.path().join("a/file"), b"12345").expect("write");
    fs::set_permissions(dir.path().join("a/file"), fs::Permissions::from_mode(0o754))
        .expect("chmod");
    symlink("file", dir.path().join("a/link")).expect("symlink");

    match d.ask(|id| ToAgent::Stat {
        id,
        path: p("a/file"),
    }) {
        Ok(Done::Stat(st)) => {
            assert_eq!(
                (st.kind, st.size, st.mode, st.uid),
                (Kind::File, 5, 0o754, 0)
            );
            assert!(st.mtime > 1_600_000_000);
        }
        other => panic!("{other:?}"),
    }
    match d.ask(|id| ToAgent::Stat {
        id,
        path: p("a/link"),
    }) {
        Ok(Done::Stat(st)) => assert_eq!(st.kind, Kind::Symlink),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.ask(|id| ToAgent::Stat {
            id,
            path: p("nothing")
        })
        .map_err(|f| f.kind),
        Err(FailKind::NotFound)
    );
    match d.ask(|id| ToAgent::List { id, path: p("a") }) {
        Ok(Done::List(entries)) => {
            let names: Vec<_> = entries
                .iter()
                .map(|e| (e.name.as_str(), e.stat.kind))
                .collect();
            assert_eq!(
                names,
                [
                    ("b", Kind::Dir),
                    ("file", Kind::File),
                    ("link", Kind::Symlink)
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.ask(|id| ToAgent::List {
            id,
            path: p("a/file")
        })
        .map_err(|f| f.kind),
        Err(FailKind::WrongKind)
    );

    assert_eq!(
        d.ask(|id| ToAgent::Rename {
            id,
            from: p("a/file"),
            to: p("a/moved")
        }),
        Ok(Done::Ok)
    );
    assert_eq!(
        fs::read(dir.path().join("a/moved")).expect("moved"),
        b"12345"
    );
    assert_eq!(
        d.ask(|id| ToAgent::Rename {
            id,
            from: p("a/file"),
            to: p("x")
        })
        .map_err(|f| f.kind),
        Err(FailKind::NotFound)
    );

    assert_eq!(
        d.ask(|id| ToAgent::Remove {
            id,
            path: p("a"),
            recursive: false
        })
        .map_err(|f| f.kind),
        Err(FailKind::Failed)
    );
    assert_eq!(
        d.ask(|id| ToAgent::Remove {
            id,
            path: p("a/link"),
            recursive: false
        }),
        Ok(Done::Ok)
    );
    assert!(
        dir.path().join("a/moved").exists(),
        "a symlink's target stays"
    );
    assert_eq!(
        d.ask(|id| ToAgent::Remove {
            id,
            path: p("a"),
            recursive: true
        }),
        Ok(Done::Ok)
    );
    assert!(!dir.path().join("a").exists());
    assert_eq!(
        d.ask(|id| ToAgent::Remove {
            id,
            path: p("a"),
            recursive: true
        })
        .map_err(|f| f.kind),
        Err(FailKind::NotFound)
    );
    assert_eq!(
        d.ask(|id| ToAgent::Remove {
            id,
            path: "/".into(),
            recursive: true
        })
        .map_err(|f| f.kind),
        Err(FailKind::Invalid)
    );
}

#[test]
fn a_tree_round_trips_with_its_symlinks() {
    let mut d = Daemon::start();
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let sp = src.path();
    fs::create_dir_all(sp.join("a/deep/er")).expect("mkdir");
    fs::create_dir(sp.join("empty")).expect("mkdir");
    fs::write(sp.join("a/b.txt"), b"bee").expect("write");
    fs::write(sp.join("a/deep/er/big"), Noise::new(5).bytes(300_000)).expect("write");
    fs::write(sp.join("run.sh"), b"#!/bin/sh\n").expect("write");
    fs::set_permissions(sp.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    symlink("a/b.txt", sp.join("link")).expect("symlink");
    symlink("/etc/passwd", sp.join("outside")).expect("symlink");
    std::os::unix::net::UnixListener::bind(sp.join("sock")).expect("a socket, left out");

    let (size, tar) = read(&mut d, |id| ToAgent::ReadTree { id, path: s(sp) }).expect("read tree");
    assert_eq!(size, None);
    let out = dst.path().join("new/dir");
    let done = write(&mut d, &tar, |id| ToAgent::WriteTree { id, path: s(&out) });
    assert_eq!(
        done,
        Ok(Done::Written {
            bytes: tar.len() as u64
        })
    );

    assert_eq!(fs::read(out.join("a/b.txt")).expect("b"), b"bee");
    assert_eq!(
        fs::read(out.join("a/deep/er/big")).expect("big"),
        fs::read(sp.join("a/deep/er/big")).expect("big")
    );
    assert!(out.join("empty").is_dir());
    assert_eq!(
        fs::metadata(out.join("run.sh")).expect("meta").mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(out.join("link")).expect("link"),
        Path::new("a/b.txt")
    );
    assert_eq!(
        fs::read_link(out.join("outside")).expect("link"),
        Path::new("/etc/passwd")
    );
    assert!(!out.join("sock").exists());
    assert_eq!(fs::metadata(out.join("a/b.txt")).expect("meta").uid(), 0);

    // A tree into a file is refused.
    let file = dst.path().join("f");
    fs::write(&file, b"").expect("write");
    assert_eq!(
        write(&mut d, &tar, |id| ToAgent::WriteTree { id, path: s(&file) }),
        Err(FailKind::WrongKind)
    );
    // Garbage is no tar.
    let junk = Noise::new(9).bytes(5000);
    let r = write(&mut d, &junk, |id| ToAgent::WriteTree {
        id,
        path: s(&dst.path().join("junk")),
    });
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn fifos_devices_and_hard_links_are_stored_as_tar_does() {
    let mut d = Daemon::start();
    let src = tempfile::tempdir().expect("tempdir");
    let sp = src.path();
    fs::write(sp.join("a"), b"one file").expect("write");
    fs::hard_link(sp.join("a"), sp.join("b")).expect("link");
    let made = std::process::Command::new("mkfifo")
        .arg(sp.join("fifo"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(made, "mkfifo");
    let root = rustix::process::geteuid().is_root();
    if root {
        let made = std::process::Command::new("mknod")
            .arg(sp.join("null"))
            .args(["c", "1", "3"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(made, "mknod");
    } else {
        eprintln!("not root: no device node in this tree");
    }
    // A FIFO is never opened: reading it would wait for ever.
    let (_, tar) = read(&mut d, |id| ToAgent::ReadTree { id, path: s(sp) }).expect("read tree");
    let mut kinds = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().expect("entries") {
        let e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let link = e
            .link_name()
            .expect("link")
            .map(|l| l.display().to_string());
        kinds.insert(
            name,
            (
                e.header().entry_type(),
                link,
                e.header().device_major().ok().flatten(),
            ),
        );
    }
    assert_eq!(kinds["a"].0, tar::EntryType::Regular);
    assert_eq!(kinds["b"].0, tar::EntryType::Link);
    assert_eq!(kinds["b"].1.as_deref(), Some("a"));
    assert_eq!(kinds["fifo"].0, tar::EntryType::Fifo);
    if root {
        assert_eq!(kinds["null"].0, tar::EntryType::Char);
        assert_eq!(kinds["null"].2, Some(1));
    }
}
