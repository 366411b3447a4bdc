//! The real [`System`], for the guest: system calls and ioctls on the
//! guest's own clock, `/dev/urandom`, root file system and init.

use super::{System, identity};
use crate::error::OpError;
use crate::process::run_helper;
use fcm_proto::Identity;
use rustix::process::{Pid, Signal};
use rustix::time::{ClockId, Timespec};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

// The ioctl numbers, from <linux/fs.h> and <linux/random.h> (the libc
// crate has none of them): _IOWR('X', 119, int), _IOWR('X', 120, int),
// _IOW('R', 0x03, int[2]), _IO('R', 0x07).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The most entropy one `Reseed` adds (the kernel's pool is 256 bits;
/// more is mixed in but buys nothing).
const MAX_ENTROPY: usize = 4096;

/// The guest. Paths are fields so a test can aim the freeze at a file
/// system of its own; everything else acts on the machine it runs on.
#[derive(Debug, Clone)]
pub struct Linux {
    /// The file system `Freeze` freezes (its mount point).
    pub freeze_root: PathBuf,
    /// Where `hostname`, `machine-id` and `ssh/` are.
    pub etc: PathBuf,
    pub proc_dir: PathBuf,
    /// Where the network interfaces are listed.
    pub sys_net: PathBuf,
    pub urandom: PathBuf,
}

impl Default for Linux {
    fn default() -> Self {
        Self {
            freeze_root: "/".into(),
            etc: "/etc".into(),
            proc_dir: "/proc".into(),
            sys_net: "/sys/class/net".into(),
            urandom: "/dev/urandom".into(),
        }
    }
}

/// Milliseconds since boot (CLOCK_BOOTTIME: counts suspended time too).
pub(crate) fn boot_ms() -> u64 {
    let t = rustix::time::clock_gettime(ClockId::Boottime);
    (t.tv_sec as u64).saturating_mul(1000) + (t.tv_nsec as u64) / 1_000_000
}

/// `ioctl(fd, request, arg)`, its error as an `io::Error`.
fn ioctl(file: &File, request: libc::c_ulong, arg: *const libc::c_void) -> io::Result<()> {
    // SAFETY: `file` is an open descriptor for the call's duration; every
    // request used here reads at most the buffer its caller passes as
    // `arg` (FIFREEZE/FITHAW and RNDRESEEDCRNG ignore it).
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Linux {
    fn root(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.freeze_root)
    }

    /// Whether PID 1 shuts the machine down at SIGTERM: busybox init (it
    /// runs its shutdown actions, then reboots) and fcm's own init
    /// (`fcm-agent init`, this very binary, in a VM made from an image).
    fn init_stops_at_sigterm(&self) -> bool {
        let Ok(init) = fs::read_link(self.proc_dir.join("1/exe")) else {
            return false;
        };
        init.to_string_lossy().contains("busybox")
            || fs::read_link(self.proc_dir.join("self/exe")).is_ok_and(|me| me == init)
    }
}

impl System for Linux {
    fn set_clock(&self, unix_secs: i64, nanos: u32) -> io::Result<(i64, u32)> {
        let ts = Timespec {
            tv_sec: unix_secs,
            tv_nsec: i64::from(nanos),
        };
        rustix::time::clock_settime(ClockId::Realtime, ts)?;
        let now = rustix::time::clock_gettime(ClockId::Realtime);
        Ok((now.tv_sec, now.tv_nsec as u32))
    }

    fn reseed(&self, entropy: &[u8]) -> io::Result<()> {
        let urandom = OpenOptions::new().write(true).open(&self.urandom)?;
        let entropy = &entropy[..entropy.len().min(MAX_ENTROPY)];
        if !entropy.is_empty() {
            // struct rand_pool_info { int entropy_count; int buf_size;
            // __u32 buf[]; }, built in u32 words (its alignment).
            let mut info = vec![0u32; 2 + entropy.len().div_ceil(4)];
            info[0] = (entropy.len() * 8) as u32;
            info[1] = entropy.len() as u32;
            for (word, bytes) in info[2..].iter_mut().zip(entropy.chunks(4)) {
                let mut b = [0u8; 4];
                b[..bytes.len()].copy_from_slice(bytes);
                *word = u32::from_ne_bytes(b);
            }
            ioctl(&urandom, RNDADDENTROPY, info.as_ptr().cast())?;
        }
        match ioctl(&urandom, RNDRESEEDCRNG, std::ptr::null()) {
            // Kernels before 4.17 reseed by themselves.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => Ok(()),
            r => r,
        }
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn freeze(&self) -> io::Result<()> {
        ioctl(&self.root()?, FIFREEZE, std::ptr::null())
    }

    fn thaw(&self) -> io::Result<()> {
        ioctl(&self.root()?, FITHAW, std::ptr::null())
    }

    fn shutdown(&self) -> io::Result<()> {
        if self.init_stops_at_sigterm() {
            return rustix::process::kill_process(Pid::INIT, Signal::TERM).map_err(Into::into);
        }
        match run_helper(&["reboot"], Duration::from_secs(30)) {
            Ok(()) => Ok(()),
            // No reboot program (an image): every init takes SIGTERM as a
            // request to stop, or ignores it (then the caller's deadline
            // and the VMM's kill remain).
            Err(e) if e.contains("not found") => {
                rustix::process::kill_process(Pid::INIT, Signal::TERM).map_err(Into::into)
            }
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn set_identity(&self, id: &Identity) -> Result<(), OpError> {
        identity::apply(self, id)
    }

    fn uptime_ms(&self) -> u64 {
        boot_ms()
    }
}
