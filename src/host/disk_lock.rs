//! One VMM per disk, enforced by the kernel.
//!
//! Before a launch the daemon opens the VM's `rootfs.img` and takes an
//! open-file-description (OFD) write lock on one byte of it, then hands
//! that descriptor to the VMM process (it is inherited across exec). The
//! lock belongs to the open file description, so it lasts exactly as long
//! as the VMM holds the descriptor: it survives the daemon (a crash, a
//! restart), and vanishes when the VMM exits, however it exits. A second
//! launch on the same disk fails to take the lock and is refused.
//!
//! The locked byte sits far past QEMU's own image-locking bytes (which are
//! near offset 100), so QEMU's locks and this one never conflict, and past
//! the end of any disk, so no data is involved.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The byte that is locked: 1 TiB, beyond any disk fcm makes.
const LOCK_OFFSET: i64 = 1 << 40;

#[derive(Debug, Error)]
pub enum DiskLockError {
    #[error("the disk {path} is in use by another VMM")]
    Busy { path: PathBuf },
    #[error("could not lock the disk {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A held lock on a VM's disk, not yet handed to a VMM.
#[derive(Debug)]
pub struct DiskLock {
    file: File,
}

fn ofd_lock(file: &File, cmd: libc::c_int, l_type: libc::c_int) -> io::Result<libc::flock> {
    let mut fl = libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: LOCK_OFFSET,
        l_len: 1,
        // Must be 0 for OFD locks.
        l_pid: 0,
    };
    // SAFETY: fcntl with an OFD lock command reads (and for F_OFD_GETLK
    // writes) the flock struct we own, on a descriptor we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl)
}

impl DiskLock {
    /// Takes the lock, or says the disk is in use.
    pub fn acquire(disk: &Path) -> Result<Self, DiskLockError> {
        let io_err = |source| DiskLockError::Io {
            path: disk.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .map_err(io_err)?;
        match ofd_lock(&file, libc::F_OFD_SETLK, libc::F_WRLCK) {
            Ok(_) => Ok(Self { file }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                Err(DiskLockError::Busy {
                    path: disk.to_owned(),
                })
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Makes `cmd`'s process inherit the locked descriptor (it is
    /// close-on-exec in the daemon). Once the process has started, drop
    /// this value: the lock then lives in the VMM alone.
    pub fn pass_to(&self, cmd: &mut Command) {
        let fd: RawFd = self.file.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls fcntl, which
        // is async-signal-safe, on a descriptor open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Whether some process holds the lock of `disk` (a VMM runs on it).
/// A disk that cannot be opened is not in use.
pub fn in_use(disk: &Path) -> bool {
    let Ok(file) = File::open(disk) else {
        return false;
    };
    ofd_lock(&file, libc::F_OFD_GETLK, libc::F_WRLCK)
        .is_ok_and(|fl| fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn a_second_lock_is_refused_and_the_lock_lives_in_the_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("rootfs.img");
        std::fs::write(&disk, b"disk").expect("write");
        assert!(!in_use(&disk));
        let lock = DiskLock::acquire(&disk).expect("first lock");
        assert!(in_use(&disk));
        assert!(matches!(
            DiskLock::acquire(&disk),
            Err(DiskLockError::Busy { .. })
        ));
        // Hand it to a child, drop ours: the child alone holds it.
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null());
        lock.pass_to(&mut cmd);
        let mut child = cmd.spawn().expect("spawn");
        drop(cmd);
        drop(lock);
        assert!(in_use(&disk), "the child must hold the lock");
        assert!(DiskLock::acquire(&disk).is_err());
        let _ = child.kill();
        let _ = child.wait();
        assert!(!in_use(&disk), "the lock must end with the child");
        assert!(DiskLock::acquire(&disk).is_ok());
    }
}
