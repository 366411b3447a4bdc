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

/// Appends the tree under `root` to `b` as `.` and the paths below it.
fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path) -> io::Result<()> {
    b.append_dir(".", root)?;
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
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_socket() {
                continue;
            }
            let name = rel.join(entry.file_name());
            match b.append_path_with_name(entry.path(), &name) {
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
