//! What fcm's init mounts (what the initramfs did not: it moved /proc,
//! /sys and /dev over and put a tmpfs on /run), and `/` grown to its disk.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::time::Instant;

/// `_IOW('f', 16, __u64)`, from <linux/ext4.h> (not in the libc crate).
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
/// `_IOR(0x12, 114, size_t)`, from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// Grow only when the disk exceeds the file system by more than this (a
/// last block group too small to add stays unused: without the margin the
/// resize would be tried at every boot for nothing).
const MARGIN: u64 = 16 << 20;

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::other("a NUL in a mount argument"));
    let (src, target, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: every pointer is a NUL-terminated string alive for the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The mount points, from `/proc/self/mounts` (none if it cannot be read).
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect()
}

/// Whether `/etc/group` has a group numbered `gid`.
fn group_exists(gid: u32) -> bool {
    fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(':').nth(2) == Some(&gid.to_string()))
}

/// Mounts what is missing; every failure is a warning.
pub(super) fn mount_all() {
    let nosuid = libc::MS_NOSUID;
    let strict = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mut mounted = mount_points();
    if mounted.is_empty() {
        // No /proc yet: mount it first, then read the list.
        let _ = fs::create_dir_all("/proc");
        if let Err(e) = mount("proc", "/proc", "proc", strict, "") {
            say!("warning: cannot mount proc on /proc: {e}");
        }
        mounted = mount_points();
    }
    let pts_gid = if group_exists(5) { 5 } else { 0 };
    let pts_opts = format!("gid={pts_gid},mode=0620,ptmxmode=0666");
    let table: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
        ("proc", "/proc", "proc", strict, ""),
        ("sysfs", "/sys", "sysfs", strict, ""),
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=0755,size=20%",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid | libc::MS_NOEXEC,
            &pts_opts,
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=1777",
        ),
    ];
    for (src, target, fstype, flags, data) in table {
        if mounted.iter().any(|m| m == target) {
            continue;
        }
        if let Err(e) =
            fs::create_dir_all(target).and_then(|()| mount(src, target, fstype, flags, data))
        {
            say!("warning: cannot mount {fstype} on {target}: {e}");
        }
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if fs::symlink_metadata(link).is_err()
            && let Err(e) = std::os::unix::fs::symlink(to, link)
        {
            say!("warning: cannot link {link} to {to}: {e}");
        }
    }
    if fs::metadata("/tmp").is_err() {
        let made = fs::create_dir("/tmp")
            .and_then(|()| fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777)));
        if let Err(e) = made {
            say!("warning: cannot make /tmp: {e}");
        }
    }
}

/// What growing an ext4 file system of superblock `sb` (its 1024 bytes) to
/// a disk of `disk_bytes` means: `Ok(None)` when it already fills it,
/// else (block size, blocks now, blocks after).
pub(super) fn plan_growth(sb: &[u8], disk_bytes: u64) -> Result<Option<(u64, u64, u64)>, String> {
    let u32_at = |off: usize| -> Option<u64> {
        let b: [u8; 4] = sb.get(off..off + 4)?.try_into().ok()?;
        Some(u64::from(u32::from_le_bytes(b)))
    };
    let (Some(lo), Some(log), Some(incompat), Some(hi), Some(magic)) = (
        u32_at(4),
        u32_at(24),
        u32_at(0x60),
        u32_at(0x150),
        sb.get(0x38..0x3a),
    ) else {
        return Err("a short superblock".into());
    };
    if magic != [0x53, 0xEF] {
        return Err("not an ext2/3/4 file system".into());
    }
    if log > 6 {
        return Err(format!("a bad block size (log {log})"));
    }
    let bsize = 1024u64 << log;
    let blocks = if incompat & 0x80 != 0 {
        lo | hi << 32
    } else {
        lo
    };
    let disk_blocks = disk_bytes / bsize;
    if disk_blocks.saturating_sub(blocks) * bsize <= MARGIN {
        return Ok(None);
    }
    Ok(Some((bsize, blocks, disk_blocks)))
}

fn ioctl(file: &File, request: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: `file` is open for the call; `arg` points at a u64 the
    // caller owns, which BLKGETSIZE64 writes and EXT4_IOC_RESIZE_FS reads.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The device mounted on `/`.
fn root_device() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "/" && f[0].starts_with("/dev/")).then(|| f[0].to_string())
    })
}

/// `fcm-agent grow-root --min-bytes N`: once the disk of `/` is at least
/// `min_bytes` (the host has just grown it: the new size arrives as an
/// interrupt), grows `/` to it, as at a boot. For a warm create from an
/// image's template, whose guest does not boot. At most `wait` for the size.
pub fn grow_root_to(min_bytes: u64, wait: std::time::Duration) -> Result<(), String> {
    let Some(dev) = root_device() else {
        return Err("no device is mounted on / (per /proc/self/mounts)".into());
    };
    let deadline = Instant::now() + wait;
    loop {
        let disk = File::open(&dev).map_err(|e| format!("{dev}: {e}"))?;
        let mut bytes = 0u64;
        ioctl(&disk, BLKGETSIZE64, (&raw mut bytes).cast())
            .map_err(|e| format!("{dev}: size: {e}"))?;
        if bytes >= min_bytes {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{dev} is {bytes} bytes, not the {min_bytes} asked, after {} s",
                wait.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    try_grow_root()
}

/// Grows `/` online to its disk's size (the host only extends the disk's
/// file; the image may have no resize2fs). Never fatal.
pub(super) fn grow_root() {
    if let Err(e) = try_grow_root() {
        say!("warning: cannot grow /: {e}");
    }
}

fn try_grow_root() -> Result<(), String> {
    let Some(dev) = root_device() else {
        return Err("no device is mounted on / (per /proc/self/mounts)".into());
    };
    let disk = File::open(&dev).map_err(|e| format!("{dev}: {e}"))?;
    let mut bytes = 0u64;
    ioctl(&disk, BLKGETSIZE64, (&raw mut bytes).cast()).map_err(|e| format!("{dev}: size: {e}"))?;
    let mut sb = vec![0u8; 1024];
    disk.read_exact_at(&mut sb, 1024)
        .map_err(|e| format!("{dev}: superblock: {e}"))?;
    let Some((bsize, from, mut to)) = plan_growth(&sb, bytes).map_err(|e| format!("{dev}: {e}"))?
    else {
        return Ok(());
    };
    let root = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/")
        .map_err(|e| format!("/: {e}"))?;
    let t0 = Instant::now();
    ioctl(&root, EXT4_IOC_RESIZE_FS, (&raw mut to).cast())
        .map_err(|e| format!("EXT4_IOC_RESIZE_FS on {dev} to {to} blocks: {e}"))?;
    say!(
        "grew / on {dev} from {} MiB to {} MiB online in {:.2} s",
        (from * bsize) >> 20,
        (to * bsize) >> 20,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(blocks: u64, log: u32, bit64: bool) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
        sb[24..28].copy_from_slice(&log.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&[0x53, 0xEF]);
        if bit64 {
            sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
            sb[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        sb
    }

    #[test]
    fn growth_is_planned_from_the_superblock() {
        // 64 MiB of 4 KiB blocks on a 1 GiB disk.
        let sb = superblock(16384, 2, true);
        assert_eq!(plan_growth(&sb, 1 << 30), Ok(Some((4096, 16384, 262144))));
        // Already (nearly) full: nothing to do.
        assert_eq!(plan_growth(&sb, (64 << 20) + (8 << 20)), Ok(None));
        assert_eq!(plan_growth(&sb, 64 << 20), Ok(None));
        // 1 KiB blocks, no 64bit feature: the high word is not read.
        let mut small = superblock(8192, 0, false);
        small[0x150] = 0xff;
        assert_eq!(plan_growth(&small, 64 << 20), Ok(Some((1024, 8192, 65536))));
        let mut bad = sb.clone();
        bad[0x38] = 0;
        assert!(plan_growth(&bad, 1 << 30).is_err());
        assert!(plan_growth(&sb[..100], 1 << 30).is_err());
    }
}
