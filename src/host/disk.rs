//! Per-VM disks: a sparse (or reflinked) copy of the base rootfs, and files
//! written into the ext4 image with `debugfs`, without mounting it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::host::{self, HostError};

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("could not copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write {guest_path} into {image}")]
    Inject {
        image: PathBuf,
        guest_path: String,
        #[source]
        source: HostError,
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
    #[error("could not stage a file for {image}")]
    Stage {
        image: PathBuf,
        #[source]
        source: io::Error,
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
    // No fsync: a crash before the VM is recorded as running undoes the
    // create, and debugfs flushes the image when it opens it next.
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

/// A file to place in the guest's filesystem.
pub struct GuestFile<'a> {
    pub path: &'a str,
    pub content: &'a [u8],
    /// Permission bits, e.g. 0o600.
    pub mode: u32,
    /// Permission bits of the parent directory (it is created if missing).
    pub dir_mode: u32,
}

/// Writes files (owned by root) into an ext4 image with `debugfs -w`,
/// creating their parent directory when missing.
/// Guest paths are constants of fcm, never user input.
pub fn inject(image: &Path, files: &[GuestFile<'_>]) -> Result<(), DiskError> {
    let staging = tempdir_near(image).map_err(|source| DiskError::Stage {
        image: image.to_owned(),
        source,
    })?;
    let mut script = String::new();
    for (i, f) in files.iter().enumerate() {
        let local = staging.join(format!("f{i}"));
        fs::write(&local, f.content).map_err(|source| DiskError::Stage {
            image: image.to_owned(),
            source,
        })?;
        if let Some((dir, _)) = f.path.rsplit_once('/')
            && !dir.is_empty()
        {
            // mkdir fails harmlessly when the directory exists.
            script.push_str(&format!(
                "mkdir {dir}\nsif {dir} mode 040{m:03o}\nsif {dir} uid 0\nsif {dir} gid 0\n",
                m = f.dir_mode & 0o777
            ));
        }
        script.push_str(&format!(
            "rm {p}\nwrite {l} {p}\nsif {p} mode 0100{m:03o}\nsif {p} uid 0\nsif {p} gid 0\n",
            p = f.path,
            l = local.display(),
            m = f.mode & 0o777
        ));
    }
    let cmdfile = staging.join("cmds");
    fs::write(&cmdfile, &script).map_err(|source| DiskError::Stage {
        image: image.to_owned(),
        source,
    })?;
    let out = host::run(
        "debugfs",
        [
            "-w".as_ref(),
            "-f".as_ref(),
            cmdfile.as_os_str(),
            image.as_os_str(),
        ],
    );
    let _ = fs::remove_dir_all(&staging);
    let guest_path = files.iter().map(|f| f.path).collect::<Vec<_>>().join(", ");
    out.map_err(|source| DiskError::Inject {
        image: image.to_owned(),
        guest_path: guest_path.clone(),
        source,
    })?;
    // debugfs reports failed commands on stderr but still exits 0: check,
    // in one more run, that every file is there with its size. With -f,
    // debugfs echoes each command as "debugfs: <command>" before its output.
    let stats: String = files.iter().map(|f| format!("stat {}\n", f.path)).collect();
    let missing = |path: &str, detail: String| DiskError::Inject {
        image: image.to_owned(),
        guest_path: path.to_owned(),
        source: HostError::Failed {
            cmd: "debugfs write".into(),
            status: "file missing afterwards".into(),
            stderr: detail,
        },
    };
    let out = host::run_with_stdin(
        "debugfs",
        ["-f".as_ref(), "-".as_ref(), image.as_os_str()],
        Some(stats.as_bytes()),
    )
    .map_err(|source| DiskError::Inject {
        image: image.to_owned(),
        guest_path: guest_path.clone(),
        source,
    })?;
    let blocks: Vec<&str> = out.split("debugfs: stat ").skip(1).collect();
    for f in files {
        let block = blocks
            .iter()
            .find(|b| b.starts_with(&format!("{}\n", f.path)));
        let want = format!("Size: {}", f.content.len());
        match block {
            Some(b) if b.contains(&want) => {}
            other => {
                return Err(missing(
                    f.path,
                    other.map(|b| b.to_string()).unwrap_or_default(),
                ));
            }
        }
    }
    Ok(())
}

/// Reads a file out of an ext4 image (used by tests and diagnostics).
pub fn read_file(image: &Path, guest_path: &str) -> Result<String, HostError> {
    host::run(
        "debugfs",
        [
            "-R".as_ref(),
            format!("cat {guest_path}").as_ref(),
            image.as_os_str(),
        ],
    )
}

fn tempdir_near(image: &Path) -> io::Result<PathBuf> {
    let parent = image.parent().unwrap_or(Path::new("/tmp"));
    let dir = parent.join(format!(
        ".inject-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&dir)?;
    Ok(dir)
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

    #[test]
    fn inject_writes_files_without_mounting() {
        if host::find_program(Path::new("mkfs.ext4")).is_none() {
            eprintln!("skipping: mkfs.ext4 not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("fs.img");
        host::run(
            "mkfs.ext4",
            [
                "-q".as_ref(),
                "-F".as_ref(),
                img.as_os_str(),
                "16M".as_ref(),
            ],
        )
        .expect("mkfs");
        let files = [GuestFile {
            path: "/root/.ssh/authorized_keys",
            content: b"ssh-ed25519 AAAA one\n",
            mode: 0o600,
            dir_mode: 0o700,
        }];
        host::run(
            "debugfs",
            [
                "-w".as_ref(),
                "-R".as_ref(),
                "mkdir /root".as_ref(),
                img.as_os_str(),
            ],
        )
        .expect("mkdir");
        inject(&img, &files).expect("inject");
        // A second injection replaces the file.
        let files = [GuestFile {
            path: "/root/.ssh/authorized_keys",
            content: b"ssh-ed25519 AAAA two\n",
            mode: 0o600,
            dir_mode: 0o700,
        }];
        inject(&img, &files).expect("inject again");
        assert_eq!(
            read_file(&img, "/root/.ssh/authorized_keys").expect("cat"),
            "ssh-ed25519 AAAA two\n"
        );
        let stat = host::run(
            "debugfs",
            [
                "-R".as_ref(),
                "stat /root/.ssh/authorized_keys".as_ref(),
                img.as_os_str(),
            ],
        )
        .expect("stat");
        assert!(stat.contains("Mode:  0600"), "{stat}");
        // debugfs exits 0 when a write fails (here: the grandparent
        // directory is missing); inject must notice and say which file.
        let bad = [GuestFile {
            path: "/no/such/dir/file",
            content: b"x",
            mode: 0o600,
            dir_mode: 0o700,
        }];
        let err = inject(&img, &bad).expect_err("a failed write must be reported");
        assert!(err.to_string().contains("/no/such/dir/file"), "{err}");
    }
}
