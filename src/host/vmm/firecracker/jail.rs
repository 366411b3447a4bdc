//! The jailer's chroot of a VM: built before each jailed launch, found
//! again from `/proc` (a jailed VMM's command line names only its id), and
//! the saved-state files moved in and out of it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::super::{LaunchSpec, VmmError};
use super::SOCKET;
use crate::host;

/// Opens a saved file the VMM wrote, refusing what a compromised VMM could
/// have put there instead: a symlink, something other than a plain file,
/// or a second link to another file.
pub(super) fn open_saved(p: &Path) -> std::io::Result<fs::File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)?;
    let m = f.metadata()?;
    if !m.is_file() || m.nlink() != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a plain file with one link (refused)",
        ));
    }
    Ok(f)
}

/// Links a saved file into a jail, owned by root and readable by the VM's
/// group `gid` only: the VMM reads it and cannot change it.
pub(super) fn link_into_jail(src: &Path, dst: &Path, gid: u32) -> std::io::Result<()> {
    let f = open_saved(src)?;
    std::os::unix::fs::fchown(&f, Some(0), Some(gid))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o440))?;
    fs::hard_link(src, dst)
}

/// Names of the guest's files inside the jail.
pub(super) const JAIL_KERNEL: &str = "/vmlinux";
pub(super) const JAIL_INITRD: &str = "/initrd";
pub(super) const JAIL_ROOTFS: &str = "/rootfs.img";
pub(super) const JAIL_CONFIG: &str = "/config.img";
pub(super) const JAIL_AGENT: &str = "/agent.img";

/// The jails' base directory in the VM dir: the jailer builds the chroot
/// at `jail/<exec file name>/<id>/root`.
pub const JAIL: &str = "jail";

/// The chroots under the VM dir `dir` (one, unless the Firecracker binary
/// was renamed between launches).
pub fn chroots(dir: &Path) -> Vec<PathBuf> {
    let Some(id) = dir.file_name() else {
        return Vec::new();
    };
    let Ok(rd) = fs::read_dir(dir.join(JAIL)) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path().join(id).join("root"))
        .filter(|p| p.is_dir())
        .collect()
}

/// The API socket of the VM in `dir`: inside its jail when it runs jailed.
pub fn api_socket(dir: &Path) -> PathBuf {
    chroots(dir)
        .into_iter()
        .map(|r| r.join(SOCKET))
        .find(|s| s.symlink_metadata().is_ok())
        .unwrap_or_else(|| dir.join(SOCKET))
}

/// Makes the chroot for a jailed launch, anew: the guest's kernel and
/// initrd hard-linked (copied, readable by the VM's user only, when they
/// are on another file system or not world-readable), the disk
/// hard-linked (the VM dir holds both, so one file system) and owned by the
/// VM's user. Returns the chroot.
pub(super) fn build_jail(bin: &Path, spec: &LaunchSpec<'_>) -> Result<PathBuf, VmmError> {
    let name = bin
        .file_name()
        .filter(|n| n.to_string_lossy().contains("firecracker"))
        .ok_or_else(|| VmmError::NotReady {
            program: "jailer",
            detail: format!(
                "the jailer runs only a binary whose name contains \"firecracker\" (not {})",
                bin.display()
            ),
        })?;
    let base = spec.dir.join(JAIL);
    let root = base.join(name).join(spec.id).join("root");
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| VmmError::Jail { path, source }
    };
    // A jail left by an earlier run (its VMM has gone: the disk lock is ours).
    match fs::remove_dir_all(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&base)(e)),
    }
    fs::create_dir_all(&root).map_err(err(&root))?;
    let (uid, gid) = spec.user;
    let place = |src: &Path, name: &str| -> Result<(), VmmError> {
        let dst = root.join(name.trim_start_matches('/'));
        let world_readable = fs::metadata(src).is_ok_and(|m| m.mode() & 0o004 != 0);
        if world_readable && fs::hard_link(src, &dst).is_ok() {
            return Ok(());
        }
        fs::copy(src, &dst).map_err(err(&dst))?;
        std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).map_err(err(&dst))?;
        host::set_mode(&dst, 0o400).map_err(err(&dst))
    };
    place(spec.kernel, JAIL_KERNEL)?;
    if let Some(initrd) = spec.initrd {
        place(initrd, JAIL_INITRD)?;
    }
    let disk = root.join(JAIL_ROOTFS.trim_start_matches('/'));
    fs::hard_link(spec.rootfs, &disk).map_err(err(&disk))?;
    std::os::unix::fs::chown(spec.rootfs, Some(uid), Some(gid)).map_err(err(spec.rootfs))?;
    host::set_mode(spec.rootfs, 0o600).map_err(err(spec.rootfs))?;
    // The config drive: linked, root's, readable by the VM's group only,
    // so the VMM reads it and cannot change it.
    if let Some(config) = spec.config_drive {
        let dst = root.join(JAIL_CONFIG.trim_start_matches('/'));
        std::os::unix::fs::chown(config, Some(0), Some(gid)).map_err(err(config))?;
        host::set_mode(config, 0o440).map_err(err(config))?;
        fs::hard_link(config, &dst).map_err(err(&dst))?;
    }
    // The agent drive: shared by VMs (root's, world-readable: it holds
    // only the agent's binary), linked (the state dir is one file system).
    if let Some(agent) = spec.agent_drive {
        let dst = root.join(JAIL_AGENT.trim_start_matches('/'));
        fs::hard_link(agent, &dst).map_err(err(&dst))?;
    }
    Ok(root)
}

/// Jailed Firecracker processes of the VM dir `dir`: those whose root
/// directory is the VM's chroot (same device and inode). Their command
/// line names only the jail id, not the directory.
pub fn find_jailed(dir: &Path) -> Vec<u32> {
    let roots: Vec<(u64, u64)> = chroots(dir)
        .iter()
        .filter_map(|r| fs::metadata(r).ok().map(|m| (m.dev(), m.ino())))
        .collect();
    if roots.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| jailed_root(*pid).is_some_and(|r| roots.contains(&r)))
        .collect();
    found.sort_unstable();
    found
}

/// Whether `pid` is a live jailed Firecracker of the VM dir `dir`.
pub fn is_jailed_in(pid: u32, dir: &Path) -> bool {
    jailed_root(pid).is_some_and(|r| {
        chroots(dir)
            .iter()
            .filter_map(|c| fs::metadata(c).ok())
            .any(|m| (m.dev(), m.ino()) == r)
    })
}

/// The root directory (device, inode) of `pid` when it is a live
/// Firecracker process.
fn jailed_root(pid: u32) -> Option<(u64, u64)> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let name = argv0.rsplit(|b| *b == b'/').next()?;
    if !String::from_utf8_lossy(name).contains("firecracker") || !host::process_alive(pid, "") {
        return None;
    }
    let m = fs::metadata(format!("/proc/{pid}/root")).ok()?;
    Some((m.dev(), m.ino()))
}
