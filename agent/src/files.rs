//! Files: `ReadFile`, `WriteFile` (a temp file beside the target, renamed
//! over it at `End`), `Stat`, `List`, `Mkdir`, `Remove`, `Rename`, and the
//! streams between an operation and the daemon that `tree` shares.
//!
//! Paths are the guest's own (the host is trusted); an empty path or one
//! with a NUL is refused, a relative one is taken from `/`.

use crate::error::OpError;
use crate::flow::Popped;
use crate::op::{Ctx, Op};
use fcm_proto::{CHUNK, Done, Entry, FromAgent, Kind, Stat};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest file `ReadFile` sends.
pub(crate) const MAX_FILE: u64 = 1 << 30;

/// A path from the daemon, checked.
pub(crate) fn guest_path(path: &str) -> Result<PathBuf, OpError> {
    if path.is_empty() {
        return Err(OpError::invalid("an empty path"));
    }
    if path.contains('\0') {
        return Err(OpError::invalid("a path with a NUL byte"));
    }
    Ok(Path::new("/").join(path))
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Sends everything `reader` gives as `Data`, within the credit; the
/// operation's stop ends it with an error.
pub(crate) fn send_all(ctx: &Ctx, mut reader: impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0;
    loop {
        let Some(credit) = ctx.op.credit.take(CHUNK) else {
            return Err(io::Error::other("cancelled"));
        };
        let n = match reader.read(&mut buf[..credit]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        ctx.op.credit.give_back(credit - n);
        if n == 0 {
            return Ok(sent);
        }
        sent += n as u64;
        if !ctx.send(FromAgent::Data {
            id: ctx.id(),
            data: buf[..n].to_vec(),
        }) {
            return Err(io::Error::other("the connection ended"));
        }
    }
}

/// A `Write` that sends what it is given as `Data` chunks, within the
/// credit (for the tar of `ReadTree`).
pub(crate) struct DataSink<'a> {
    ctx: &'a Ctx,
    buf: Vec<u8>,
}

impl<'a> DataSink<'a> {
    pub fn new(ctx: &'a Ctx) -> Self {
        Self {
            ctx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send_some(&mut self) -> io::Result<()> {
        let Some(n) = self.ctx.op.credit.take(self.buf.len()) else {
            return Err(io::Error::other("cancelled"));
        };
        let rest = self.buf.split_off(n);
        let data = std::mem::replace(&mut self.buf, rest);
        if !self.ctx.send(FromAgent::Data {
            id: self.ctx.id(),
            data,
        }) {
            return Err(io::Error::other("the connection ended"));
        }
        Ok(())
    }
}

impl Write for DataSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send_some()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            self.send_some()?;
        }
        Ok(())
    }
}

/// A `Read` of the `Data` the daemon sends, returning `Credit` for each
/// chunk once it is consumed (for the tar of `WriteTree`).
pub(crate) struct InboxReader<'a> {
    op: &'a Op,
    chunk: Vec<u8>,
    at: usize,
    pub received: u64,
    pub ended: bool,
}

impl<'a> InboxReader<'a> {
    pub fn new(op: &'a Op) -> Self {
        Self {
            op,
            chunk: Vec::new(),
            at: 0,
            received: 0,
            ended: false,
        }
    }

    /// Reads and acknowledges what is left until `End`.
    pub fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl Read for InboxReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if !self.chunk.is_empty() {
                let bytes = self.chunk.len() as u32;
                self.op.send(&FromAgent::Credit {
                    id: self.op.id,
                    bytes,
                });
                self.chunk.clear();
                self.at = 0;
            }
            if self.ended {
                return Ok(0);
            }
            match self.op.inbox.pop() {
                Popped::Data(d) => {
                    self.received += d.len() as u64;
                    self.chunk = d;
                }
                Popped::End => self.ended = true,
                Popped::Stopped => return Err(io::Error::other("cancelled")),
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `ReadFile`: `Opened { size }`, the bytes as `Data`, `End`.
pub(crate) fn read_file(ctx: Ctx, path: &str) {
    let opened = (|| {
        let p = guest_path(path)?;
        let meta = fs::metadata(&p).map_err(|e| OpError::io(shown(&p), &e))?;
        if !meta.is_file() {
            return Err(OpError::wrong_kind(format!(
                "{} is not a regular file",
                shown(&p)
            )));
        }
        // Non-blocking: a FIFO swapped in meanwhile never hangs the open.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&p)
            .map_err(|e| OpError::io(shown(&p), &e))?;
        let meta = file.metadata().map_err(|e| OpError::io(shown(&p), &e))?;
        if !meta.is_file() {
            return Err(OpError::wrong_kind(format!(
                "{} is not a regular file",
                shown(&p)
            )));
        }
        if meta.len() > MAX_FILE {
            return Err(OpError::new(
                fcm_proto::FailKind::TooLarge,
                format!(
                    "{} has {} bytes (at most {MAX_FILE})",
                    shown(&p),
                    meta.len()
                ),
            ));
        }
        Ok((file, meta.len()))
    })();
    let (file, size) = match opened {
        Ok(f) => f,
        Err(e) => return ctx.fail(e),
    };
    // A file of /proc or /sys says it has 0 bytes and has more: its size
    // is unknown, and it is read to its end (at most MAX_FILE).
    let (size, limit) = if size == 0 {
        (None, MAX_FILE)
    } else {
        (Some(size), size)
    };
    ctx.send(FromAgent::Opened { id: ctx.id(), size });
    // The size announced is the size sent (a file that grows is cut there).
    match send_all(&ctx, file.take(limit)) {
        Ok(_) => ctx.finish(FromAgent::End { id: ctx.id() }),
        Err(_) if ctx.op.is_stopped() => ctx.fail(OpError::cancelled()),
        Err(e) => ctx.fail(OpError::io(path, &e)),
    }
}

/// A temporary file removed when dropped, unless kept.
struct Temp {
    path: PathBuf,
    kept: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A new temporary file beside `target` (same directory, so a rename
/// replaces the target atomically).
fn temp_beside(target: &Path, tag: u64) -> Result<(File, Temp), OpError> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(OpError::invalid(format!("{} names no file", shown(target))));
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(OpError::not_found(format!(
                "{} is not a directory",
                shown(dir)
            )));
        }
        Err(e) => return Err(OpError::io(shown(dir), &e)),
    }
    if fs::metadata(target).is_ok_and(|m| m.is_dir()) {
        return Err(OpError::wrong_kind(format!(
            "{} is a directory",
            shown(target)
        )));
    }
    let pid = std::process::id();
    for n in 0..100 {
        let path = dir.join(format!(
            ".{}.fcm-{pid}-{tag}-{n}.tmp",
            name.to_string_lossy()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => return Ok((f, Temp { path, kept: false })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(OpError::io(shown(&path), &e)),
        }
    }
    Err(OpError::failed(format!(
        "no temporary name free beside {}",
        shown(target)
    )))
}

/// Makes `file` (written to `temp`) the `target`, durably.
fn commit(file: File, mut temp: Temp, target: &Path, mode: u32) -> Result<(), OpError> {
    let what = || shown(target);
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| OpError::io(what(), &e))?;
    file.sync_all().map_err(|e| OpError::io(what(), &e))?;
    drop(file);
    fs::rename(&temp.path, target).map_err(|e| OpError::io(what(), &e))?;
    temp.kept = true;
    if let Some(dir) = target.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `target` atomically (for the guest's identity files).
pub(crate) fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<(), OpError> {
    let (mut file, temp) = temp_beside(target, 0)?;
    file.write_all(bytes)
        .map_err(|e| OpError::io(shown(target), &e))?;
    commit(file, temp, target, mode)
}

/// `WriteFile`: the `Data` that follow to a temp file, renamed over the
/// target at `End`; `Cancel` or the session's end removes the temp file.
pub(crate) fn write_file(ctx: Ctx, path: &str, mode: u32) {
    let result = (|| {
        let target = guest_path(path)?;
        let (mut file, temp) = temp_beside(&target, ctx.id())?;
        let mut written = 0u64;
        loop {
            match ctx.op.inbox.pop() {
                Popped::Data(chunk) => {
                    file.write_all(&chunk)
                        .map_err(|e| OpError::io(shown(&target), &e))?;
                    written += chunk.len() as u64;
                    if !chunk.is_empty() {
                        ctx.send(FromAgent::Credit {
                            id: ctx.id(),
                            bytes: chunk.len() as u32,
                        });
                    }
                }
                Popped::End => break,
                Popped::Stopped => return Err(OpError::cancelled()),
            }
        }
        commit(file, temp, &target, mode)?;
        Ok(Done::Written { bytes: written })
    })();
    ctx.answer(result);
}

fn stat_of(meta: &Metadata) -> Stat {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    Stat {
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
    }
}

/// `Stat`: the path itself (a symlink is not followed).
pub(crate) fn stat(path: &str) -> Result<Done, OpError> {
    let p = guest_path(path)?;
    let meta = fs::symlink_metadata(&p).map_err(|e| OpError::io(shown(&p), &e))?;
    Ok(Done::Stat(stat_of(&meta)))
}

/// `List`: a directory's entries by name (symlinks not followed). A name
/// that is not UTF-8 is shown lossily.
pub(crate) fn list(path: &str) -> Result<Done, OpError> {
    let p = guest_path(path)?;
    let meta = fs::metadata(&p).map_err(|e| OpError::io(shown(&p), &e))?;
    if !meta.is_dir() {
        return Err(OpError::wrong_kind(format!(
            "{} is not a directory",
            shown(&p)
        )));
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(&p).map_err(|e| OpError::io(shown(&p), &e))? {
        let entry = entry.map_err(|e| OpError::io(shown(&p), &e))?;
        // An entry removed meanwhile is left out.
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        entries.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            stat: stat_of(&meta),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Done::List(entries))
}

/// `Mkdir` (mode 0755 before the umask); with `parents`, an existing
/// directory is fine.
pub(crate) fn mkdir(path: &str, parents: bool) -> Result<Done, OpError> {
    let p = guest_path(path)?;
    let made = if parents {
        fs::create_dir_all(&p)
    } else {
        fs::create_dir(&p)
    };
    match made {
        Ok(()) => Ok(Done::Ok),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::metadata(&p).is_ok_and(|m| m.is_dir()) {
                Err(OpError::failed(format!("{} already exists", shown(&p))))
            } else {
                Err(OpError::wrong_kind(format!(
                    "{} exists and is not a directory",
                    shown(&p)
                )))
            }
        }
        Err(e) => Err(OpError::io(shown(&p), &e)),
    }
}

/// `Remove`: a file, a symlink (not what it points to), an empty
/// directory, or with `recursive` a whole tree. `/` is never removed.
pub(crate) fn remove(path: &str, recursive: bool) -> Result<Done, OpError> {
    let p = guest_path(path)?;
    if p.parent().is_none() {
        return Err(OpError::invalid("refusing to remove /"));
    }
    let meta = fs::symlink_metadata(&p).map_err(|e| OpError::io(shown(&p), &e))?;
    let removed = if !meta.is_dir() {
        fs::remove_file(&p)
    } else if recursive {
        fs::remove_dir_all(&p)
    } else {
        fs::remove_dir(&p)
    };
    removed.map_err(|e| OpError::io(shown(&p), &e))?;
    Ok(Done::Ok)
}

/// `Rename`: as rename(2) (a file replaces a file, an empty directory is
/// replaced by a directory).
pub(crate) fn rename(from: &str, to: &str) -> Result<Done, OpError> {
    let (f, t) = (guest_path(from)?, guest_path(to)?);
    fs::rename(&f, &t).map_err(|e| OpError::io(format!("{} to {}", shown(&f), shown(&t)), &e))?;
    Ok(Done::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcm_proto::FailKind;

    #[test]
    fn paths_are_checked() {
        assert_eq!(guest_path("").map_err(|e| e.kind), Err(FailKind::Invalid));
        assert_eq!(
            guest_path("/a\0b").map_err(|e| e.kind),
            Err(FailKind::Invalid)
        );
        assert_eq!(guest_path("etc/x"), Ok(PathBuf::from("/etc/x")));
        assert_eq!(guest_path("/etc/x"), Ok(PathBuf::from("/etc/x")));
        assert_eq!(
            remove("/", true).map_err(|e| e.kind),
            Err(FailKind::Invalid)
        );
    }

    #[test]
    fn atomic_writes_leave_no_temp_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f");
        write_atomic(&target, b"one", 0o640).expect("write");
        write_atomic(&target, b"two", 0o600).expect("rewrite");
        assert_eq!(fs::read(&target).expect("read"), b"two");
        let meta = fs::metadata(&target).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").collect();
        assert_eq!(names.len(), 1);
        let missing = dir.path().join("no/such/f");
        assert_eq!(
            write_atomic(&missing, b"x", 0o600).map_err(|e| e.kind),
            Err(FailKind::NotFound)
        );
        assert_eq!(
            write_atomic(dir.path(), b"x", 0o600).map_err(|e| e.kind),
            Err(FailKind::WrongKind)
        );
    }
}
