//! The console log of a VM (`<state>/<id>/console.log`: the guest's serial
//! console, boot messages first), read in pieces by offset.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use super::{Cause, Manager, ManagerError};
use crate::daemon::lock;
use crate::host::vmm;
use crate::wire::api::LogChunk;

/// The most one answer carries.
pub const LOG_CHUNK_MAX: usize = 256 * 1024;

impl Manager {
    /// Up to `max` bytes of the console log from `offset`. An offset past
    /// the end (the log was rotated) starts again at 0 with `reset`.
    pub fn logs(&self, vm: &str, offset: u64, max: usize) -> Result<LogChunk, ManagerError> {
        let (id, e) = self.resolve(vm)?;
        let name = lock(&e.rec).name.to_string();
        let path = vmm::console_log_path(&self.dir(&id));
        read_chunk(&path, offset, max.clamp(1, LOG_CHUNK_MAX)).map_err(|err| {
            ManagerError::Operation {
                action: "reading the console log",
                name,
                cause: Box::new(Cause::file(&path)(err)),
            }
        })
    }
}

fn read_chunk(path: &std::path::Path, offset: u64, max: usize) -> io::Result<LogChunk> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(LogChunk {
                offset: 0,
                next_offset: 0,
                size: 0,
                data: String::new(),
                reset: offset > 0,
            });
        }
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    let (start, reset) = if offset > size {
        (0, true)
    } else {
        (offset, false)
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    (&mut f).take(max as u64).read_to_end(&mut buf)?;
    // Do not split a UTF-8 character at the end: leave its start for the
    // next read (bytes that can never be UTF-8 are taken as they are).
    let keep = match std::str::from_utf8(&buf) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => buf.len(),
    };
    buf.truncate(keep);
    Ok(LogChunk {
        offset: start,
        next_offset: start + buf.len() as u64,
        size,
        data: String::from_utf8_lossy(&buf).into_owned(),
        reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_offsets_and_survive_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        let missing = read_chunk(&p, 0, 10).expect("missing log");
        assert_eq!((missing.size, missing.data.as_str()), (0, ""));
        std::fs::write(&p, "Linux version 6.1\nhé\n").expect("write");
        let a = read_chunk(&p, 0, 19).expect("read");
        // "é" is two bytes; the first is not cut off alone.
        assert_eq!(a.data, "Linux version 6.1\nh");
        let b = read_chunk(&p, a.next_offset, 100).expect("read");
        assert_eq!(b.data, "é\n");
        assert_eq!(b.next_offset, b.size);
        let c = read_chunk(&p, 10_000, 100).expect("rotated");
        assert!(c.reset && c.offset == 0 && c.data.starts_with("Linux"));
    }
}
