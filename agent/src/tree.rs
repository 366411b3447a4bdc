//! Directories as tar, made and unpacked in process: `ReadTree` sends a
//! directory's contents (symlinks stored as links, never followed; sockets
//! left out, as tar(1) does), `WriteTree` unpacks the tar it is sent into a
//! directory (made if missing), everything owned by root.

use crate::error::OpError;
use crate::files::{DataSink, InboxReader, guest_path};
use crate::op::Ctx;
use fcm_proto::{Done, FromAgent};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// An entry that vanished while the tree was read is left out.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Appends the tree under `root` to `b` as `.` and the paths below it,
/// as tar(1) does: a file linked more than once inside the tree once, its
/// other names as hard links; FIFOs and devices as headers (their
/// contents are never read).
fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path) -> io::Result<()> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    b.append_dir(".", root)?;
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let entries = match fs::read_dir(root.join(&rel)) {
            Ok(rd) => rd,
            Err(e) if vanished(&e) && rel != Path::new("") => continue,
            Err(e) => return Err(e),
        };
        let mut entries: Vec<_> = entries.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Ok(meta) = entry.metadata() else { continue };
            let ft = meta.file_type();
            if ft.is_socket() {
                continue;
            }
            let name = rel.join(entry.file_name());
            let special = ft.is_fifo() || ft.is_char_device() || ft.is_block_device();
            let added = if ft.is_file() && meta.nlink() > 1 {
                match linked.get(&(meta.dev(), meta.ino())) {
                    Some(first) => {
                        let mut h = tar::Header::new_gnu();
                        h.set_metadata(&meta);
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &name, first)
                    }
                    None => {
                        linked.insert((meta.dev(), meta.ino()), name.clone());
                        b.append_path_with_name(entry.path(), &name)
                    }
                }
            } else if special {
                append_special(b, &name, &meta)
            } else {
                b.append_path_with_name(entry.path(), &name)
            };
            match added {
                Ok(()) => {}
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            }
            if ft.is_dir() {
                dirs.push(name);
            }
        }
    }
    Ok(())
}

/// A FIFO or a device node: its header (kind, numbers), named `name`.
fn append_special<W: Write>(
    b: &mut tar::Builder<W>,
    name: &Path,
    meta: &fs::Metadata,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ft = meta.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_metadata(meta);
    h.set_size(0);
    h.set_entry_type(if ft.is_fifo() {
        tar::EntryType::Fifo
    } else if ft.is_char_device() {
        tar::EntryType::Char
    } else {
        tar::EntryType::Block
    });
    let dev = meta.rdev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    h.set_device_major(major as u32)?;
    h.set_device_minor(minor as u32)?;
    b.append_data(&mut h, name, io::empty())
}

/// `ReadTree`: `Opened { size: None }`, the tar as `Data`, `End`.
pub(crate) fn read_tree(ctx: Ctx, path: &str) {
    let root = match guest_path(path).and_then(|p| match fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(OpError::wrong_kind(format!("{path} is not a directory"))),
        Err(e) => Err(OpError::io(path, &e)),
    }) {
        Ok(p) => p,
        Err(e) => return ctx.fail(e),
    };
    ctx.send(FromAgent::Opened {
        id: ctx.id(),
        size: None,
    });
    let mut b = tar::Builder::new(DataSink::new(&ctx));
    b.follow_symlinks(false);
    let made = append_tree(&mut b, &root)
        .and_then(|()| b.into_inner())
        .and_then(|mut sink| sink.flush());
    match made {
        Ok(()) => ctx.finish(FromAgent::End { id: ctx.id() }),
        Err(_) if ctx.op.is_stopped() => ctx.fail(OpError::cancelled()),
        Err(e) => ctx.fail(OpError::failed(format!("{path}: {e}"))),
    }
}

/// `WriteTree`: unpacks the `Data` that follow into `path`, returning
/// `Credit` as the tar is read; `Done(Written)` with the tar's size.
pub(crate) fn write_tree(ctx: Ctx, path: &str) {
    let result = (|| {
        let dir = guest_path(path)?;
        match fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => {
                return Err(OpError::wrong_kind(format!("{path} is not a directory")));
            }
            Ok(_) => {}
            Err(_) => fs::create_dir_all(&dir).map_err(|e| OpError::io(path, &e))?,
        }
        let mut ar = tar::Archive::new(InboxReader::new(&ctx.op));
        ar.set_preserve_ownerships(false);
        ar.set_preserve_permissions(false);
        ar.set_preserve_mtime(true);
        ar.set_overwrite(true);
        ar.set_unpack_xattrs(false);
        let unpacked = ar.unpack(&dir);
        let mut reader = ar.into_inner();
        if let Err(e) = unpacked {
            return Err(if ctx.op.is_stopped() {
                OpError::cancelled()
            } else {
                OpError::failed(format!("unpacking into {path}: {e}"))
            });
        }
        // What follows the archive's end (tar pads to a record) is read
        // and acknowledged too.
        reader.drain().map_err(|_| OpError::cancelled())?;
        Ok(Done::Written {
            bytes: reader.received,
        })
    })();
    ctx.answer(result);
}
