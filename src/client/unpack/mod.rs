//! Unpacking a directory copied out of a guest (`fcm cp vm:/dir .`). The
//! tar comes from the guest, so it is untrusted input, whoever runs fcm:
//!
//! - only regular files, directories and symlinks are made, all inside the
//!   destination; modes keep their `rwx` bits only (no setuid, setgid or
//!   sticky bit; the umask applies; a directory stays `u+rwx`), and nothing
//!   takes the archive's owners;
//! - every path is walked one component at a time from a descriptor of the
//!   destination, opened with `O_NOFOLLOW`, so no write ever goes through a
//!   symlink (one the archive made, or one that was there before); an
//!   existing file is unlinked, then created anew (`O_EXCL`);
//! - devices, FIFOs, hard links, sparse files, unknown types, and names that
//!   are absolute, hold `..` or NUL, or are too long are skipped; the
//!   [`Report`] names them (the caller prints one warning).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;
use tar::EntryType;

use crate::wire::text::visible;

/// Most entries one archive may hold.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Longest member name or link target, in bytes (PATH_MAX).
const MAX_NAME: usize = 4096;
/// Longest component of a name, in bytes (NAME_MAX).
const MAX_COMPONENT: usize = 255;
/// How many skipped entries the report names; the others are counted.
pub const NAMED_SKIPS: usize = 20;
/// The mode bits kept from the archive: `rwx` for all, never 0o7000.
const MODE_BITS: u32 = 0o777;

/// Why an entry of the archive was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    BlockDevice,
    CharDevice,
    Fifo,
    HardLink,
    Sparse,
    UnknownType(u8),
    NulInName,
    EmptyName,
    AbsoluteName,
    DotDot,
    NameTooLong,
    BadLinkTarget,
    UnderSymlink,
    UnderNonDirectory,
    DirectoryInTheWay,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BlockDevice => f.write_str("block device"),
            Self::CharDevice => f.write_str("character device"),
            Self::Fifo => f.write_str("FIFO"),
            Self::HardLink => f.write_str("hard link"),
            Self::Sparse => f.write_str("sparse file"),
            Self::UnknownType(t) if t.is_ascii_graphic() => {
                write!(f, "unknown type '{}'", char::from(*t))
            }
            Self::UnknownType(t) => write!(f, "unknown type {t:#04x}"),
            Self::NulInName => f.write_str("NUL in its name"),
            Self::EmptyName => f.write_str("empty name"),
            Self::AbsoluteName => f.write_str("absolute name"),
            Self::DotDot => f.write_str("`..` in its name"),
            Self::NameTooLong => f.write_str("name too long"),
            Self::BadLinkTarget => f.write_str("symlink without a usable target"),
            Self::UnderSymlink => f.write_str("under a symlink"),
            Self::UnderNonDirectory => f.write_str("under something not a directory"),
            Self::DirectoryInTheWay => f.write_str("a directory is in the way"),
        }
    }
}

/// What an unpack made and what it skipped.
#[derive(Debug, Default)]
pub struct Report {
    /// Files, directories and symlinks made.
    pub made: u64,
    /// The first [`NAMED_SKIPS`] skipped entries: name (lossy, not yet
    /// escaped) and reason.
    pub skipped: Vec<(String, Why)>,
    /// Every skipped entry, named or not.
    pub skipped_total: u64,
}

impl Report {
    fn skip(&mut self, name: &[u8], why: Why) {
        self.skipped_total += 1;
        if self.skipped.len() < NAMED_SKIPS {
            self.skipped.push((lossy(name), why));
        }
    }

    /// `skipped blk (block device), fifo (FIFO) and 3 more`, one line
    /// with the guest's names escaped; `None` when nothing was skipped.
    pub fn warning(&self) -> Option<String> {
        if self.skipped_total == 0 {
            return None;
        }
        let named: Vec<String> = self
            .skipped
            .iter()
            .map(|(name, why)| format!("{} ({why})", one_line(name)))
            .collect();
        let more = self.skipped_total - self.skipped.len() as u64;
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Some(format!("skipped {}{tail}", named.join(", ")))
    }
}

/// A name for a message: at most 200 characters, lossy UTF-8.
fn lossy(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

/// Guest text on one line: [`visible`], and the line breaks and tabs it
/// keeps escaped too, so a name cannot start a line of its own.
fn one_line(s: &str) -> String {
    visible(s)
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open {}", path.display())]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the archive from the guest is damaged or was cut short")]
    Archive(#[source] io::Error),
    #[error("cannot write {}", one_line(name))]
    Write {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("the archive holds more than {max} entries")]
    TooManyEntries { max: u64 },
}

/// Unpacks `archive` into the existing directory `dest`.
pub fn unpack(archive: impl Read, dest: &Path) -> Result<Report, UnpackError> {
    Unpacker::open(dest, MAX_ENTRIES)?.run(archive)
}

/// What one entry becomes.
enum Kind {
    File {
        mode: u32,
        mtime: u64,
    },
    Dir {
        mode: u32,
    },
    Symlink(Vec<u8>),
    /// A pax global header: metadata, not a member.
    Metadata,
}

/// Why one entry was not made.
enum Made {
    Skip(Why),
    /// Reading the archive failed.
    Archive(io::Error),
    /// Writing here failed.
    Local(io::Error),
}

impl From<Errno> for Made {
    fn from(e: Errno) -> Self {
        Self::Local(e.into())
    }
}

struct Unpacker {
    root: OwnedFd,
    /// The last parent directory walked to (its components from the root).
    parent: Option<(Vec<Vec<u8>>, OwnedFd)>,
    max_entries: u64,
    report: Report,
}

impl Unpacker {
    fn open(dest: &Path, max_entries: u64) -> Result<Self, UnpackError> {
        // The destination is the user's own choice: following a symlink
        // there is what `cp -r` does. Below it, nothing is followed.
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UnpackError::Destination {
            path: dest.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self {
            root,
            parent: None,
            max_entries,
            report: Report::default(),
        })
    }

    fn run(mut self, archive: impl Read) -> Result<Report, UnpackError> {
        let mut archive = tar::Archive::new(archive);
        let mut seen = 0u64;
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let mut entry = entry.map_err(UnpackError::Archive)?;
            seen += 1;
            if seen > self.max_entries {
                return Err(UnpackError::TooManyEntries {
                    max: self.max_entries,
                });
            }
            let kind = kind(&mut entry);
            if let Ok(Kind::Metadata) = kind {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let parts = match components(&raw) {
                Ok(p) => p,
                Err(why) => {
                    self.report.skip(&raw, why);
                    continue;
                }
            };
            let Some((last, parents)) = parts.split_last() else {
                // `./`, the directory itself: the destination is there.
                if !matches!(kind, Ok(Kind::Dir { .. })) {
                    self.report.skip(&raw, Why::EmptyName);
                }
                continue;
            };
            let name = parts.join(&b'/');
            let kind = match kind {
                Ok(k) => k,
                Err(why) => {
                    self.report.skip(&name, why);
                    continue;
                }
            };
            match self.make(parents, last, kind, &mut entry) {
                Ok(()) => self.report.made += 1,
                Err(Made::Skip(why)) => self.report.skip(&name, why),
                Err(Made::Archive(e)) => return Err(UnpackError::Archive(e)),
                Err(Made::Local(source)) => {
                    return Err(UnpackError::Write {
                        name: lossy(&name),
                        source,
                    });
                }
            }
        }
        Ok(self.report)
    }

    fn make(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        kind: Kind,
        data: &mut impl Read,
    ) -> Result<(), Made> {
        let dir = self.walk(parents)?;
        match kind {
            Kind::Dir { mode } => make_dir(dir, name, (mode & MODE_BITS) | 0o700),
            Kind::File { mode, mtime } => {
                clear(dir, name)?;
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode & MODE_BITS),
                )?;
                let mut file = File::from(fd);
                copy(data, &mut file)?;
                let times = Timestamps {
                    last_access: Timespec {
                        tv_sec: 0,
                        tv_nsec: UTIME_OMIT,
                    },
                    last_modification: Timespec {
                        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
                        tv_nsec: 0,
                    },
                };
                // The time is kept as `tar -x` keeps it, but an absurd one
                // (out of the kernel's range) is no reason to stop.
                let _ = rustix::fs::futimens(&file, &times);
                Ok(())
            }
            Kind::Symlink(target) => {
                clear(dir, name)?;
                rustix::fs::symlinkat(target.as_slice(), dir, name)?;
                Ok(())
            }
            Kind::Metadata => Ok(()),
        }
    }

    /// The directory `parents` (components below the root), made where
    /// missing, never through a symlink. The last one walked to is kept:
    /// a tar lists a directory's entries together.
    fn walk(&mut self, parents: &[&[u8]]) -> Result<BorrowedFd<'_>, Made> {
        if parents.is_empty() {
            return Ok(self.root.as_fd());
        }
        // Directories are never removed here, so a kept descriptor stays
        // the directory of that name.
        let kept = match &self.parent {
            Some((p, _))
                if p.len() <= parents.len() && p.iter().zip(parents).all(|(a, b)| a == b) =>
            {
                p.len()
            }
            _ => 0,
        };
        if kept < parents.len() {
            let mut fd = match &self.parent {
                Some((_, fd)) if kept > 0 => enter(fd.as_fd(), parents[kept])?,
                _ => enter(self.root.as_fd(), parents[0])?,
            };
            for c in &parents[kept + 1..] {
                fd = enter(fd.as_fd(), c)?;
            }
            self.parent = Some((parents.iter().map(|c| c.to_vec()).collect(), fd));
        }
        Ok(self
            .parent
            .as_ref()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }
}

/// What an entry's header makes of it (an `Err` is a skip).
fn kind<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Kind, Why> {
    let h = entry.header();
    let mode = h.mode().ok();
    Ok(match h.entry_type() {
        EntryType::Regular | EntryType::Continuous => {
            let mtime = h.mtime().unwrap_or(0);
            // pax-format sparse files (GNU.sparse.*) hold a map, not the data.
            let sparse = entry.pax_extensions().ok().flatten().is_some_and(|mut x| {
                x.any(|e| e.is_ok_and(|e| e.key_bytes().starts_with(b"GNU.sparse.")))
            });
            if sparse {
                return Err(Why::Sparse);
            }
            Kind::File {
                mode: mode.unwrap_or(0o644),
                mtime,
            }
        }
        EntryType::Directory => Kind::Dir {
            mode: mode.unwrap_or(0o755),
        },
        EntryType::Symlink => match entry.link_name_bytes() {
            Some(t) if !t.is_empty() && t.len() <= MAX_NAME && !t.contains(&0) => {
                Kind::Symlink(t.into_owned())
            }
            _ => return Err(Why::BadLinkTarget),
        },
        EntryType::XGlobalHeader => Kind::Metadata,
        EntryType::Link => return Err(Why::HardLink),
        EntryType::Block => return Err(Why::BlockDevice),
        EntryType::Char => return Err(Why::CharDevice),
        EntryType::Fifo => return Err(Why::Fifo),
        // The crate would expand the holes: a few bytes could claim a terabyte.
        EntryType::GNUSparse => return Err(Why::Sparse),
        other => return Err(Why::UnknownType(other.as_byte())),
    })
}

/// The components of a member name below the destination (`.` and empty
/// ones dropped), or why it has none there.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, Why> {
    if raw.len() > MAX_NAME {
        return Err(Why::NameTooLong);
    }
    if raw.contains(&0) {
        return Err(Why::NulInName);
    }
    if raw.starts_with(b"/") {
        return Err(Why::AbsoluteName);
    }
    let mut parts = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Why::DotDot),
            c if c.len() > MAX_COMPONENT => return Err(Why::NameTooLong),
            c => parts.push(c),
        }
    }
    Ok(parts)
}

/// The directory `name` in `dir`, made if missing, opened without following
/// a symlink.
fn enter(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Made> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open = || rustix::fs::openat(dir, name, flags, Mode::empty());
    let opened = match open() {
        Err(Errno::NOENT) => match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => open(),
            Err(e) => Err(e),
        },
        r => r,
    };
    opened.map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => Made::Skip(in_the_way(dir, name)),
        e => e.into(),
    })
}

/// Why `name` in `dir` cannot be entered: a symlink, or something else.
fn in_the_way(dir: BorrowedFd<'_>, name: &[u8]) -> Why {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => Why::UnderSymlink,
        _ => Why::UnderNonDirectory,
    }
}

/// Makes the directory `name` in `dir`; an existing directory is kept as
/// it is, anything else there (a file, a symlink) is replaced.
fn make_dir(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), Made> {
    let mode = Mode::from_raw_mode(mode);
    match rustix::fs::mkdirat(dir, name, mode) {
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
                rustix::fs::mkdirat(dir, name, mode)?;
            }
            Ok(())
        }
        r => Ok(r?),
    }
}

/// Removes what is at `name` in `dir` (a file, a symlink: the link itself)
/// so that it can be created anew; a directory stays and the entry is skipped.
fn clear(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Made> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => Err(Made::Skip(Why::DirectoryInTheWay)),
        Err(e) => Err(e.into()),
    }
}

/// Copies an entry's data, telling a broken archive from a failed write.
fn copy(from: &mut impl Read, to: &mut File) -> Result<(), Made> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Made::Archive(e)),
        };
        to.write_all(&buf[..n]).map_err(Made::Local)?;
    }
}

#[cfg(test)]
mod tests;
