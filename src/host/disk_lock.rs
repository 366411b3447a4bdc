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
//! The locked bytes sit far past QEMU's own image-locking bytes (which are
//! near offset 100), so QEMU's locks and this one never conflict, and past
//! the end of any disk, so no data is involved.
//!
//! **Jailed VMMs.** The Firecracker jailer closes every inherited
//! descriptor but 0-2, so the daemon's descriptor cannot travel with it.
//! Instead, once the jailed Firecracker has opened the disk itself (through
//! its hard link in the chroot: the same inode), the daemon duplicates
//! *Firecracker's own* descriptor with `pidfd_getfd(2)` and locks that open
//! file description; the lock then lasts as long as Firecracker keeps its
//! disk open, like an inherited one. Two bytes make the hand-over gapless:
//! the daemon holds both, frees the second, the VMM's description takes
//! it, then the daemon drops the first. A disk is in use while either
//! byte is locked.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The first locked byte: 1 TiB, beyond any disk fcm makes.
const LOCK_OFFSET: i64 = 1 << 40;
/// How many bytes a launch locks (see the hand-over above).
const LOCK_LEN: i64 = 2;

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
    #[error("could not hand the lock of {path} to the VMM (pid {pid})")]
    HandOver {
        path: PathBuf,
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// A held lock on a VM's disk, not yet handed to a VMM.
#[derive(Debug)]
pub struct DiskLock {
    file: File,
}

fn ofd_lock(
    file: &impl AsRawFd,
    cmd: libc::c_int,
    l_type: libc::c_int,
    (start, len): (i64, i64),
) -> io::Result<libc::flock> {
    let mut fl = libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
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
        match ofd_lock(
            &file,
            libc::F_OFD_SETLK,
            libc::F_WRLCK,
            (LOCK_OFFSET, LOCK_LEN),
        ) {
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

impl DiskLock {
    /// The disk's open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Moves the lock into VMM `pid`'s own open file of the disk (see the
    /// module doc): from then on it lives exactly as long as that VMM
    /// keeps its disk open. Drop `self` afterwards.
    pub fn hand_to(&self, pid: u32, disk: &Path) -> Result<(), DiskLockError> {
        let err = |source| DiskLockError::HandOver {
            path: disk.to_owned(),
            pid,
            source,
        };
        let theirs = vmm_descriptor(pid, &self.file).map_err(err)?;
        let second = (LOCK_OFFSET + 1, 1);
        ofd_lock(&self.file, libc::F_OFD_SETLK, libc::F_UNLCK, second).map_err(err)?;
        if let Err(e) = ofd_lock(&theirs, libc::F_OFD_SETLK, libc::F_WRLCK, second) {
            // Take it back: the disk must never be unlocked.
            let _ = ofd_lock(&self.file, libc::F_OFD_SETLK, libc::F_WRLCK, second);
            return Err(err(e));
        }
        Ok(())
    }
}

/// Locks the disk again in a running VMM's own open file of it, for a VMM
/// that runs without the lock (a daemon crashed before handing it over).
pub fn lock_in(pid: u32, disk: &Path) -> Result<(), DiskLockError> {
    let err = |source| DiskLockError::HandOver {
        path: disk.to_owned(),
        pid,
        source,
    };
    let file = File::open(disk).map_err(err)?;
    let theirs = vmm_descriptor(pid, &file).map_err(err)?;
    ofd_lock(
        &theirs,
        libc::F_OFD_SETLK,
        libc::F_WRLCK,
        (LOCK_OFFSET + 1, 1),
    )
    .map(|_| ())
    .map_err(err)
}

/// A duplicate of the descriptor through which process `pid` has the
/// same file as `disk` open (same device and inode), via `pidfd_getfd`.
fn vmm_descriptor(pid: u32, disk: &File) -> io::Result<OwnedFd> {
    let want = disk.metadata()?;
    let target = fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter_map(|e| {
            let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
            let m = fs::metadata(e.path()).ok()?;
            (m.dev() == want.dev() && m.ino() == want.ino()).then_some(fd)
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the VMM has not opened the disk")
        })?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; no memory is passed.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number of that
    // process and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_getfd returned a new descriptor (close-on-exec) that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether some process holds the lock of `disk` (a VMM runs on it).
/// A disk that cannot be opened is not in use.
pub fn in_use(disk: &Path) -> bool {
    let Ok(file) = File::open(disk) else {
        return false;
    };
    ofd_lock(
        &file,
        libc::F_OFD_GETLK,
        libc::F_WRLCK,
        (LOCK_OFFSET, LOCK_LEN),
    )
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

    #[test]
    fn the_lock_moves_into_a_process_that_opened_the_disk_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("rootfs.img");
        std::fs::write(&disk, b"disk").expect("write");
        // A stand-in for a jailed VMM: it opens the disk by another name
        // (a hard link, as in the chroot) and inherits nothing.
        let link = dir.path().join("link.img");
        std::fs::hard_link(&disk, &link).expect("link");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec 5<>\"$0\"; echo ready; exec sleep 30")
            .arg(&link)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        let lock = DiskLock::acquire(&disk).expect("lock");
        lock.hand_to(child.id(), &disk).expect("hand over");
        drop(lock);
        assert!(in_use(&disk), "the VMM must hold the lock now");
        assert!(DiskLock::acquire(&disk).is_err());
        let _ = child.kill();
        let _ = child.wait();
        assert!(!in_use(&disk), "the lock must end with the VMM");
        // Re-arming a live process that lost it works the same way.
        let mut again = Command::new("sh")
            .arg("-c")
            .arg("exec 5<>\"$0\"; echo ready; exec sleep 30")
            .arg(&link)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        line.clear();
        std::io::BufReader::new(again.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        lock_in(again.id(), &disk).expect("lock in");
        assert!(in_use(&disk));
        let _ = again.kill();
        let _ = again.wait();
    }
}
