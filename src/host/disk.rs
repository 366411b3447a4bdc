//! Per-VM disks: a sparse (or reflinked) copy of the base rootfs, grown to
//! the VM's disk size. Nothing is written into the image: a guest's
//! identity travels on its config drive (`host::config_drive`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("could not copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not set the size of {image} to {bytes} bytes")]
    Grow {
        image: PathBuf,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error("{image} is {current} bytes; a disk can only grow, not shrink to {wanted}")]
    Shrink {
        image: PathBuf,
        current: u64,
        wanted: u64,
    },
}

/// How a copy was made, for benchmarks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

/// Copies `from` to `to`: a reflink where the filesystem supports it,
/// otherwise a sparse copy that moves only the allocated extents.
pub fn copy_rootfs(from: &Path, to: &Path) -> Result<CopyMethod, DiskError> {
    let err = |source| DiskError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let src = File::open(from).map_err(err)?;
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(err)?;
    let result = (|| {
        if rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
            return Ok(CopyMethod::Reflink);
        }
        sparse_copy(&src, &dst)?;
        Ok(CopyMethod::Sparse)
    })();
    if result.is_err() {
        let _ = fs::remove_file(to);
    }
    result.map_err(err)
}

fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    use rustix::fs::{SeekFrom, seek};
    use rustix::io::Errno;
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos: u64 = 0;
    while pos < len {
        let data = match seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = seek(src, SeekFrom::Hole(data))?;
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)
            {
                Ok(0) => break,
                Ok(_) => {}
                // Across filesystems (or where unsupported) copy by hand.
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) => {
                    copy_range(src, dst, off_in, hole)?;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        pos = hole;
    }
    // No fsync here: a crash before the VM is recorded as running undoes
    // the create, and create syncs the disk off its path once the VMM runs.
    Ok(())
}

/// Copies bytes `[from, to)` with positioned reads and writes.
fn copy_range(src: &File, dst: &File, from: u64, end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = from;
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(buf.len())
            .min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Extends a disk image to `bytes` (sparse: the new part is a hole). The
/// guest grows its file system to the device at boot. A disk never
/// shrinks: a smaller size is an error, the same size does nothing.
pub fn grow(image: &Path, bytes: u64) -> Result<(), DiskError> {
    let f = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|source| DiskError::Grow {
            image: image.to_owned(),
            bytes,
            source,
        })?;
    let current = size(image)?;
    if bytes < current {
        return Err(DiskError::Shrink {
            image: image.to_owned(),
            current,
            wanted: bytes,
        });
    }
    if bytes > current {
        f.set_len(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|source| DiskError::Grow {
                image: image.to_owned(),
                bytes,
                source,
            })?;
    }
    Ok(())
}

/// The apparent size of an image in bytes.
pub fn size(image: &Path) -> Result<u64, DiskError> {
    fs::metadata(image)
        .map(|m| m.len())
        .map_err(|source| DiskError::Grow {
            image: image.to_owned(),
            bytes: 0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.img");
        let mut f = File::create(&src).expect("create");
        f.write_all(b"head").expect("write");
        f.seek(SeekFrom::Start(64 << 20)).expect("seek");
        f.write_all(b"tail").expect("write");
        drop(f);
        let dst = dir.path().join("dst.img");
        copy_rootfs(&src, &dst).expect("copy");
        assert_eq!(fs::read(&src).expect("src"), fs::read(&dst).expect("dst"));
        assert!(
            dst.metadata().expect("meta").blocks() * 512 < 4 << 20,
            "copy is not sparse"
        );
        // Refuses to overwrite an existing disk.
        assert!(copy_rootfs(&src, &dst).is_err());
    }

    #[test]
    fn disks_grow_sparsely_and_never_shrink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("d.img");
        fs::write(&img, b"data").expect("write");
        grow(&img, 1 << 30).expect("grow");
        assert_eq!(size(&img).expect("size"), 1 << 30);
        assert!(img.metadata().expect("meta").blocks() * 512 < 1 << 20);
        assert_eq!(&fs::read(&img).expect("read")[..4], b"data");
        grow(&img, 1 << 30).expect("same size is fine");
        let e = grow(&img, 1 << 20).expect_err("shrink");
        assert!(matches!(e, DiskError::Shrink { .. }), "{e}");
        assert_eq!(size(&img).expect("size"), 1 << 30);
    }
}
