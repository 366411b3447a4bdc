//! Hostile archives, written header by header (the crate's `Builder`
//! refuses most of what a hostile guest can send), unpacked into a temp
//! destination beside a sentinel directory that must not change.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// A tar archive built from raw headers.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, name: &[u8], kind: EntryType, mode: u32, link: &[u8], data: &[u8]) {
        if name.len() > 100 {
            self.long(EntryType::GNULongName, name);
        }
        if link.len() > 100 {
            self.long(EntryType::GNULongLink, link);
        }
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h.set_entry_type(kind);
        self.finish_header(h, mode, data);
    }

    fn finish_header(&mut self, mut h: tar::Header, mode: u32, data: &[u8]) {
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }

    /// A GNU long name (`L`) or long link (`K`) for the next header.
    fn long(&mut self, kind: EntryType, text: &[u8]) {
        let mut data = text.to_vec();
        data.push(0);
        self.header(b"././@LongLink", kind, 0o644, b"", &data);
    }

    /// A pax extended header (`x`) for the next header.
    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3; // " ", "=", "\n"
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.header(b"PaxHeaders/x", EntryType::XHeader, 0o644, b"", &data);
    }

    fn file(&mut self, name: &str, mode: u32, data: &str) -> &mut Self {
        self.header(
            name.as_bytes(),
            EntryType::Regular,
            mode,
            b"",
            data.as_bytes(),
        );
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.header(name.as_bytes(), EntryType::Directory, mode, b"", b"");
        self
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Self {
        self.header(name.as_bytes(), kind, 0o777, target.as_bytes(), b"");
        self
    }

    fn node(&mut self, name: &str, kind: EntryType) -> &mut Self {
        self.header(name.as_bytes(), kind, 0o666, b"", b"");
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend_from_slice(&[0; 1024]);
        v
    }
}

/// A destination `dest/` beside a `sentinel/` directory holding one file.
struct Place {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    dest: PathBuf,
    sentinel: PathBuf,
}

impl Place {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().to_path_buf();
        let (dest, sentinel) = (top.join("dest"), top.join("sentinel"));
        fs::create_dir(&dest).expect("dest");
        fs::create_dir(&sentinel).expect("sentinel");
        fs::write(sentinel.join("keep"), "sentinel\n").expect("keep");
        Self {
            _tmp: tmp,
            top,
            dest,
            sentinel,
        }
    }

    fn unpack(&self, t: &Tar) -> Report {
        unpack(t.bytes().as_slice(), &self.dest).expect("unpack")
    }
}

/// Every path under `dir` with its type, mode, size, mtime and content or
/// link target, never following a symlink.
fn snapshot(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).expect("readlink").display())
            } else if m.is_file() {
                String::from_utf8_lossy(&fs::read(&p).expect("read")).into_owned()
            } else {
                String::new()
            };
            let rel = p.strip_prefix(base).expect("rel").display().to_string();
            out.push(format!(
                "{rel} {:o} {} {} {what}",
                m.mode(),
                m.len(),
                m.mtime()
            ));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Only regular files, directories and symlinks, none with 0o7000 bits.
fn assert_only_safe_kinds(dir: &Path) {
    for line in snapshot(dir) {
        let rel = line.split(' ').next().expect("name");
        let m = fs::symlink_metadata(dir.join(rel)).expect("lstat");
        let t = m.file_type();
        assert!(t.is_file() || t.is_dir() || t.is_symlink(), "{line}");
        assert_eq!(m.mode() & 0o7000, 0, "special bits: {line}");
        assert_eq!(m.uid(), rustix::process::geteuid().as_raw(), "{line}");
    }
}

fn skipped(r: &Report) -> BTreeSet<(String, Why)> {
    r.skipped.iter().cloned().collect()
}

fn set(items: &[(&str, Why)]) -> BTreeSet<(String, Why)> {
    items.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
}

#[test]
fn hostile_entries_are_skipped_named_and_nothing_escapes() {
    let p = Place::new();
    let outside = p.sentinel.display().to_string();
    let (before, passwd) = (
        snapshot(&p.top),
        fs::metadata("/etc/passwd").expect("passwd"),
    );
    let deep = format!("{}f", "d/".repeat(1000));
    let mut t = Tar::default();
    t.dir("./", 0o755)
        .file("./ok.txt", 0o644, "ok\n")
        .node("./blk", EntryType::Block)
        .node("./chr", EntryType::Char)
        .node("./fifo", EntryType::Fifo)
        .file("./suid", 0o4755, "suid\n")
        .file("./sgid", 0o2755, "sgid\n")
        .dir("./sticky/", 0o1777)
        .link(EntryType::Link, "./hl-passwd", "/etc/passwd")
        .link(EntryType::Link, "./hl-ok", "./ok.txt")
        .link(EntryType::Symlink, "./abs", &outside)
        .file("./abs/pwned", 0o644, "through a symlink\n")
        .link(EntryType::Symlink, "./up", "..")
        .file("./up/sentinel/keep", 0o644, "overwritten\n")
        .link(EntryType::Symlink, "./passwd", "/etc/passwd")
        .file("./passwd", 0o644, "replaces the link, not /etc/passwd\n")
        .file("../escape", 0o644, "x")
        .file("/abs/path", 0o644, "x")
        .file("a/../../x", 0o644, "x")
        .node("./vol", EntryType::new(b'V'))
        .file(&deep, 0o644, "deep\n")
        .file(&format!("{}f", "e/".repeat(2100)), 0o644, "x")
        .file(&"n".repeat(256), 0o644, "x");
    t.long(EntryType::GNULongName, b"nul\0name");
    t.file("ignored", 0o644, "x");
    // A GNU sparse file claiming a terabyte from five bytes.
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").expect("path");
    h.set_entry_type(EntryType::GNUSparse);
    let gnu = h.as_gnu_mut().expect("gnu");
    gnu.sparse[0].set_offset(1 << 40);
    gnu.sparse[0].set_length(5);
    gnu.set_real_size((1 << 40) + 5);
    t.finish_header(h, 0o644, b"hello");
    t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]);
    t.file("pax-sparse", 0o644, "map");
    t.pax(&[("path", b"pax\0nul")]);
    t.file("ignored-too", 0o644, "x");

    let r = p.unpack(&t);
    // Names over 200 characters are cut for the message.
    let (long, long_part) = (
        format!("{}…", "e/".repeat(100)),
        format!("{}…", "n".repeat(200)),
    );
    assert_eq!(
        skipped(&r),
        set(&[
            ("blk", Why::BlockDevice),
            ("chr", Why::CharDevice),
            ("fifo", Why::Fifo),
            ("hl-passwd", Why::HardLink),
            ("hl-ok", Why::HardLink),
            ("abs/pwned", Why::UnderSymlink),
            ("up/sentinel/keep", Why::UnderSymlink),
            ("../escape", Why::DotDot),
            ("/abs/path", Why::AbsoluteName),
            ("a/../../x", Why::DotDot),
            ("vol", Why::UnknownType(b'V')),
            (&long, Why::NameTooLong),
            (&long_part, Why::NameTooLong),
            ("nul\0name", Why::NulInName),
            ("sparse", Why::Sparse),
            ("pax-sparse", Why::Sparse),
            ("pax\0nul", Why::NulInName),
        ])
    );
    assert_eq!(r.skipped_total, 17);

    assert_only_safe_kinds(&p.dest);
    assert_eq!(
        fs::read_to_string(p.dest.join("ok.txt")).ok().as_deref(),
        Some("ok\n")
    );
    for f in ["suid", "sgid"] {
        let m = fs::metadata(p.dest.join(f)).expect(f);
        assert!(
            m.is_file() && m.mode() & 0o700 == 0o700,
            "{f}: {:o}",
            m.mode()
        );
    }
    let sticky = fs::metadata(p.dest.join("sticky")).expect("sticky");
    assert!(sticky.is_dir() && sticky.mode() & 0o7000 == 0);
    assert_eq!(
        fs::read_link(p.dest.join("abs")).ok(),
        Some(p.sentinel.clone())
    );
    assert_eq!(fs::read_link(p.dest.join("up")).ok(), Some("..".into()));
    assert_eq!(
        fs::read_to_string(p.dest.join("passwd")).ok().as_deref(),
        Some("replaces the link, not /etc/passwd\n")
    );
    assert_eq!(
        fs::read_to_string(p.dest.join(&deep)).ok().as_deref(),
        Some("deep\n")
    );
    assert_eq!(
        fs::read_dir(&p.top).expect("top").count(),
        2,
        "only dest and sentinel"
    );
    let after: Vec<String> = snapshot(&p.top)
        .into_iter()
        .filter(|l| !l.starts_with("dest"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|l| !l.starts_with("dest"))
        .collect();
    assert_eq!(after, before);
    let passwd_now = fs::metadata("/etc/passwd").expect("passwd");
    assert_eq!(
        (passwd_now.len(), passwd_now.mtime(), passwd_now.nlink()),
        (passwd.len(), passwd.mtime(), passwd.nlink())
    );
}

#[test]
fn symlinks_already_in_the_destination_are_never_followed() {
    let p = Place::new();
    let keep = p.sentinel.join("keep");
    std::os::unix::fs::symlink(&p.sentinel, p.dest.join("pre")).expect("symlink");
    std::os::unix::fs::symlink(&p.sentinel, p.dest.join("pre-dir")).expect("symlink");
    std::os::unix::fs::symlink(&keep, p.dest.join("link-file")).expect("symlink");
    fs::hard_link(&keep, p.dest.join("hard")).expect("hard link");
    let before = snapshot(&p.sentinel);
    let mut t = Tar::default();
    t.file("pre/x", 0o644, "through\n")
        .file("pre/keep", 0o644, "through\n")
        .file("link-file", 0o644, "new\n")
        .file("hard", 0o644, "new\n")
        .dir("pre-dir", 0o755)
        .file("pre-dir/y", 0o644, "inside\n");
    let r = p.unpack(&t);
    assert_eq!(
        skipped(&r),
        set(&[
            ("pre/x", Why::UnderSymlink),
            ("pre/keep", Why::UnderSymlink)
        ])
    );
    assert_eq!(snapshot(&p.sentinel), before);
    for f in ["link-file", "hard"] {
        let m = fs::symlink_metadata(p.dest.join(f)).expect(f);
        assert!(m.is_file() && m.nlink() == 1, "{f}");
        assert_eq!(
            fs::read_to_string(p.dest.join(f)).ok().as_deref(),
            Some("new\n")
        );
    }
    assert!(
        fs::symlink_metadata(p.dest.join("pre-dir"))
            .expect("pre-dir")
            .is_dir()
    );
    assert!(p.dest.join("pre-dir/y").is_file());
}

#[test]
fn files_are_replaced_directories_kept_modes_masked() {
    let p = Place::new();
    fs::write(p.dest.join("f"), "old\n").expect("f");
    fs::create_dir(p.dest.join("d")).expect("d");
    fs::write(p.dest.join("d/keep"), "kept\n").expect("keep");
    let mut t = Tar::default();
    t.file("f", 0o7777, "new\n")
        .file("d", 0o644, "a file where a directory is\n")
        .dir("d", 0o700)
        .dir("locked", 0o000)
        .file("locked/inner", 0o000, "in\n")
        .file("a/b/c/made-parents", 0o644, "p\n")
        .file("x/", 0o644, "")
        .dir(".", 0o777);
    let r = p.unpack(&t);
    assert_eq!(skipped(&r), set(&[("d", Why::DirectoryInTheWay)]));
    assert_only_safe_kinds(&p.dest);
    let f = fs::metadata(p.dest.join("f")).expect("f");
    assert_eq!((f.mode() & 0o7000, f.mtime()), (0, 1_600_000_000));
    assert_eq!(
        fs::read_to_string(p.dest.join("f")).ok().as_deref(),
        Some("new\n")
    );
    assert_eq!(
        fs::read_to_string(p.dest.join("d/keep")).ok().as_deref(),
        Some("kept\n")
    );
    let locked = fs::metadata(p.dest.join("locked")).expect("locked");
    assert_eq!(locked.permissions().mode() & 0o700, 0o700);
    assert!(p.dest.join("locked/inner").is_file());
    assert!(p.dest.join("a/b/c/made-parents").is_file());
    assert!(p.dest.join("x").is_file());
    assert_eq!(r.made, 6);
}

#[test]
fn too_many_entries_and_a_cut_archive_are_errors() {
    let p = Place::new();
    let mut t = Tar::default();
    for i in 0..4 {
        t.file(&format!("f{i}"), 0o644, "x");
    }
    let r = Unpacker::open(&p.dest, 3)
        .expect("open")
        .run(t.bytes().as_slice());
    assert!(
        matches!(r, Err(UnpackError::TooManyEntries { max: 3 })),
        "{r:?}"
    );

    let mut t = Tar::default();
    t.file("big", 0o644, &"y".repeat(5000));
    let cut = &t.bytes()[..2048];
    let r = unpack(cut, &p.dest);
    assert!(matches!(r, Err(UnpackError::Archive(_))), "{r:?}");

    let r = unpack(t.bytes().as_slice(), &p.top.join("missing"));
    assert!(matches!(r, Err(UnpackError::Destination { .. })), "{r:?}");
}

#[test]
fn the_warning_is_one_line_escaped_and_bounded() {
    let mut r = Report::default();
    assert_eq!(r.warning(), None);
    r.skip(b"evil\n\x1b[2Jname\t", Why::Fifo);
    for i in 0..24 {
        r.skip(format!("n{i}").as_bytes(), Why::BlockDevice);
    }
    let w = r.warning().expect("warning");
    assert!(
        w.starts_with("skipped evil\\n\\x1b[2Jname\\t (FIFO), n0 (block device), "),
        "{w}"
    );
    assert!(w.ends_with("n18 (block device) and 5 more"), "{w}");
    assert!(!w.contains(['\n', '\x1b', '\t']), "{w}");
    assert_eq!(r.skipped.len(), NAMED_SKIPS);
    assert_eq!(r.skipped_total, 25);
}

#[test]
fn names_are_components_below_the_destination() {
    let ok = |s: &str| components(s.as_bytes()).map(|v| v.join(&b'/'));
    assert_eq!(ok("./a//b/./c/"), Ok(b"a/b/c".to_vec()));
    assert_eq!(ok("./"), Ok(Vec::new()));
    assert_eq!(ok("a/.."), Err(Why::DotDot));
    assert_eq!(ok("/etc"), Err(Why::AbsoluteName));
    assert_eq!(ok(&"a".repeat(4097)), Err(Why::NameTooLong));
}
