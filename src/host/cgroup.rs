//! One cgroup per VMM, `<parent>/<id>`, with a CPU quota of the VM's vCPUs
//! and a memory limit of its memory plus an overhead. cgroup v2 (one
//! unified hierarchy) and v1 (a hierarchy per controller, as on hosts that
//! still mount them so) are both handled; the VMM enters its cgroup between
//! fork and exec, so it and everything it starts are limited from the start.
//!
//! The directories made for a VM are listed in `<vm dir>/cgroups` before
//! they are made, so a restarted daemon removes exactly those once the VMM
//! has gone, wherever the daemon itself runs by then.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use thiserror::Error;

use crate::config::CgroupConfig;
use crate::host;

/// File in the VM dir listing the VM's cgroup directories.
pub const RECORD: &str = "cgroups";

/// CFS period used for the CPU quota, in microseconds.
const PERIOD_US: u64 = 100_000;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup hierarchy with the cpu and memory controllers under {root} \
         (or set \"cgroup\": {{\"enabled\": false}} in the daemon config)"
    )]
    NoHierarchy { root: PathBuf },
    #[error("could not set up the cgroup {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One unified hierarchy at this mount point.
    V2(PathBuf),
    /// `<root>/cpu` and `<root>/memory`, one hierarchy each.
    V1(PathBuf),
}

/// What a VMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub cpus: u8,
    /// CPU beyond one core per vCPU, in percent of a core.
    pub extra_cpu_percent: u32,
    pub memory_mib: u64,
}

impl Limits {
    fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    fn quota_us(&self) -> u64 {
        u64::from(self.cpus) * PERIOD_US + u64::from(self.extra_cpu_percent) * PERIOD_US / 100
    }
}

/// Finds the hierarchy with both cpu and memory under `root`, mounting it
/// there first if this mount namespace lacks it: `ip netns exec` gives the
/// daemon a fresh `/sys` without the cgroup file systems. The mounts are
/// the host's own hierarchies (the controller sets of `/proc/self/cgroup`),
/// visible to the daemon's mount namespace only.
pub fn find(root: &Path) -> Option<Hierarchy> {
    if let Some(h) = detect(root) {
        return Some(h);
    }
    // One mounter at a time: concurrent launches must not stack mounts.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(h) = detect(root) {
        return Some(h);
    }
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let sets: Vec<&str> = own
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|set| set.split(',').any(|c| c == "cpu" || c == "memory"))
        .collect();
    let mount = |args: &[&str]| host::run("mount", args).is_ok();
    let r = root.to_string_lossy();
    if sets.is_empty() {
        mount(&["-t", "cgroup2", "cgroup2", &r]);
    } else if mount(&["-t", "tmpfs", "-o", "mode=755", "cgroup", &r]) {
        for set in sets {
            let at = root.join(set);
            let _ = fs::create_dir_all(&at);
            mount(&["-t", "cgroup", "-o", set, "cgroup", &at.to_string_lossy()]);
            for c in set.split(',').filter(|c| *c != set) {
                let _ = std::os::unix::fs::symlink(set, root.join(c));
            }
        }
    }
    detect(root)
}

/// Finds the hierarchy that has both cpu and memory: a unified one at
/// `root` or `root/unified`, else the v1 ones.
pub fn detect(root: &Path) -> Option<Hierarchy> {
    let has_both = |mount: &Path| {
        fs::read_to_string(mount.join("cgroup.controllers")).is_ok_and(|c| {
            let mut w = c.split_whitespace();
            let all: Vec<&str> = w.by_ref().collect();
            all.contains(&"cpu") && all.contains(&"memory")
        })
    };
    for mount in [root.to_path_buf(), root.join("unified")] {
        if has_both(&mount) {
            return Some(Hierarchy::V2(mount));
        }
    }
    let v1 = ["cpu", "memory"]
        .iter()
        .all(|c| root.join(c).join("cgroup.procs").is_file());
    v1.then(|| Hierarchy::V1(root.to_path_buf()))
}

/// The daemon's own cgroup: the v2 path, or the v1 path of `controller`,
/// from the text of `/proc/self/cgroup`.
fn own_path(proc_cgroup: &str, controller: Option<&str>) -> String {
    proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = match controller {
                None => ctls.is_empty(),
                Some(c) => ctls.split(',').any(|x| x == c),
            };
            wanted.then(|| path.to_owned())
        })
        .next()
        .unwrap_or_else(|| "/".into())
}

/// The VM's cgroup directories: one for v2, one per controller for v1.
/// A relative `parent` is taken below the daemon's own cgroup.
pub fn dirs_for(h: &Hierarchy, parent: &str, proc_cgroup: &str, id: &str) -> Vec<PathBuf> {
    let place = |mount: &Path, own: String| {
        let base = if parent.starts_with('/') {
            PathBuf::from(parent.trim_start_matches('/'))
        } else {
            Path::new(own.trim_start_matches('/')).join(parent)
        };
        mount.join(base).join(id)
    };
    match h {
        Hierarchy::V2(mount) => vec![place(mount, own_path(proc_cgroup, None))],
        Hierarchy::V1(root) => ["cpu", "memory"]
            .iter()
            .map(|c| place(&root.join(c), own_path(proc_cgroup, Some(c))))
            .collect(),
    }
}

/// The limit files of one cgroup directory and their contents.
fn limit_files(h: &Hierarchy, dir: &Path, l: Limits) -> Vec<(PathBuf, String)> {
    match h {
        Hierarchy::V2(_) => vec![
            (dir.join("cpu.max"), format!("{} {PERIOD_US}", l.quota_us())),
            (dir.join("memory.max"), l.memory_bytes().to_string()),
        ],
        Hierarchy::V1(root) if dir.starts_with(root.join("cpu")) => vec![
            (dir.join("cpu.cfs_period_us"), PERIOD_US.to_string()),
            (dir.join("cpu.cfs_quota_us"), l.quota_us().to_string()),
        ],
        Hierarchy::V1(_) => vec![(
            dir.join("memory.limit_in_bytes"),
            l.memory_bytes().to_string(),
        )],
    }
}

/// The cgroups a VMM is to run in, made and limited, not yet entered.
#[derive(Debug)]
pub struct Placement {
    /// `cgroup.procs` of each directory, ready for the child.
    procs: Vec<CString>,
}

impl Placement {
    /// Makes the process `cmd` starts enter the cgroups before it execs
    /// (while it is still root: register this before dropping privileges).
    pub fn join_on_exec(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: between fork and exec the closure only calls open, write
        // and close (async-signal-safe) on paths prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // "0" moves the writing process itself.
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
    }
}

/// Starts, in the background, the wait that the first move of a task into
/// a cgroup pays after a quiet moment (the kernel's cgroup-attach lock
/// waits for an RCU grace period, 6-16 ms measured here), by moving the
/// daemon into the cgroup it is already in: a no-op that takes the lock.
/// A launch moments later then moves its VMM at once. Best effort: errors
/// only mean no head start.
pub fn warm_up(cfg: &CgroupConfig) {
    let Some(h) = detect(&cfg.root) else { return };
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let procs = match &h {
        Hierarchy::V2(mount) => mount.join(own_path(&own, None).trim_start_matches('/')),
        Hierarchy::V1(root) => root
            .join("cpu")
            .join(own_path(&own, Some("cpu")).trim_start_matches('/')),
    }
    .join("cgroup.procs");
    let _ = std::thread::Builder::new()
        .name("fcm-cgroup-warm".into())
        .spawn(move || {
            let _ = fs::write(&procs, std::process::id().to_string());
        });
}

/// Makes the VM's cgroups with its limits, recording them in the VM dir
/// first (intent before effect).
pub fn create(
    cfg: &CgroupConfig,
    vm_dir: &Path,
    id: &str,
    limits: Limits,
) -> Result<Placement, CgroupError> {
    let h = find(&cfg.root).ok_or_else(|| CgroupError::NoHierarchy {
        root: cfg.root.clone(),
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let dirs = dirs_for(&h, &cfg.parent, &own, id);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CgroupError::Io { path, source }
    };
    let listing: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
    let record = vm_dir.join(RECORD);
    host::write_atomic(&record, listing.as_bytes(), 0o600).map_err(io(&record))?;
    for dir in &dirs {
        if let Hierarchy::V2(mount) = &h {
            enable_controllers(mount, dir)?;
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        for (file, value) in limit_files(&h, dir, limits) {
            fs::write(&file, value).map_err(io(&file))?;
        }
    }
    let procs = dirs
        .iter()
        .map(|d| {
            let p = d.join("cgroup.procs");
            CString::new(p.as_os_str().as_bytes()).map_err(|_| CgroupError::Io {
                path: p.clone(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Placement { procs })
}

/// cgroup v2 hands a controller to children only when every ancestor
/// enables it in `cgroup.subtree_control`.
fn enable_controllers(mount: &Path, dir: &Path) -> Result<(), CgroupError> {
    let Ok(rel) = dir.strip_prefix(mount) else {
        return Ok(());
    };
    let mut at = mount.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    // Every ancestor of the VM's directory, from the mount point down.
    for c in comps.iter().take(comps.len().saturating_sub(1)).copied() {
        write_subtree(&at)?;
        at.push(c);
        fs::create_dir_all(&at).map_err(|source| CgroupError::Io {
            path: at.clone(),
            source,
        })?;
    }
    write_subtree(&at)
}

fn write_subtree(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|mut f| f.write_all(b"+cpu +memory"))
        .map_err(|source| CgroupError::Io { path: file, source })
}

/// Removes the cgroups recorded for a VM whose VMM has gone (a cgroup is
/// removable once its last process has been reaped: retried for 3 s).
/// Returns what could not be removed.
pub fn release(cfg: &CgroupConfig, vm_dir: &Path) -> Vec<String> {
    let record = vm_dir.join(RECORD);
    let Ok(listing) = fs::read_to_string(&record) else {
        return Vec::new();
    };
    let _ = find(&cfg.root);
    let mut errors = Vec::new();
    for line in listing.lines().filter(|l| !l.is_empty()) {
        let dir = PathBuf::from(line);
        // Only ever a directory under the cgroup mount.
        if !dir.starts_with(&cfg.root) || !dir.is_dir() {
            continue;
        }
        let gone = host::wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
            match fs::remove_dir(&dir) {
                Ok(()) => Some(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Ok(())),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => None,
                Err(e) => Some(Err(e)),
            }
        });
        match gone {
            Some(Ok(())) => {}
            Some(Err(e)) => errors.push(format!("could not remove cgroup {}: {e}", dir.display())),
            None => errors.push(format!(
                "could not remove cgroup {}: it still has processes",
                dir.display()
            )),
        }
    }
    if errors.is_empty() {
        let _ = fs::remove_file(&record);
    }
    errors
}

/// The directories of the cgroups process `pid` is in, one per hierarchy
/// that has cpu or memory (for tests and diagnostics).
pub fn of_process(root: &Path, pid: u32) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    match detect(root) {
        Some(Hierarchy::V2(mount)) => {
            vec![mount.join(own_path(&text, None).trim_start_matches('/'))]
        }
        Some(Hierarchy::V1(root)) => ["cpu", "memory"]
            .iter()
            .map(|c| {
                root.join(c)
                    .join(own_path(&text, Some(c)).trim_start_matches('/'))
            })
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
    const V1_JOINED: &str = "3:cpu,cpuacct:/system.slice/fcm.service\n2:memory:/system.slice/fcm.service\n0::/system.slice/fcm.service\n";
    const V2: &str = "0::/system.slice/fcm.service\n";

    #[test]
    fn own_cgroup_is_read_per_controller() {
        assert_eq!(own_path(V1, Some("memory")), "/process_api/abc");
        assert_eq!(own_path(V1, Some("cpu")), "/");
        assert_eq!(
            own_path(V1_JOINED, Some("cpu")),
            "/system.slice/fcm.service"
        );
        assert_eq!(own_path(V2, None), "/system.slice/fcm.service");
        assert_eq!(own_path("", None), "/");
    }

    #[test]
    fn relative_parents_sit_below_the_daemon_and_absolute_ones_below_the_root() {
        let v1 = Hierarchy::V1("/sys/fs/cgroup".into());
        assert_eq!(
            dirs_for(&v1, "fcm", V1, "ab12cd34"),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/fcm/ab12cd34"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/fcm/ab12cd34"),
            ]
        );
        let v2 = Hierarchy::V2("/sys/fs/cgroup".into());
        assert_eq!(
            dirs_for(&v2, "/fcm.slice", V2, "ab12cd34"),
            vec![PathBuf::from("/sys/fs/cgroup/fcm.slice/ab12cd34")]
        );
        assert_eq!(
            dirs_for(&v2, "vms", V2, "ab12cd34"),
            vec![PathBuf::from(
                "/sys/fs/cgroup/system.slice/fcm.service/vms/ab12cd34"
            )]
        );
    }

    #[test]
    fn limits_match_the_vm() {
        let l = Limits {
            cpus: 2,
            extra_cpu_percent: 0,
            memory_mib: 768,
        };
        let v2 = Hierarchy::V2("/cg".into());
        assert_eq!(
            limit_files(&v2, Path::new("/cg/fcm/x"), l),
            vec![
                (PathBuf::from("/cg/fcm/x/cpu.max"), "200000 100000".into()),
                (
                    PathBuf::from("/cg/fcm/x/memory.max"),
                    (768u64 << 20).to_string()
                ),
            ]
        );
        let v1 = Hierarchy::V1("/cg".into());
        assert_eq!(
            limit_files(&v1, Path::new("/cg/cpu/fcm/x"), l)[1],
            (
                PathBuf::from("/cg/cpu/fcm/x/cpu.cfs_quota_us"),
                "200000".into()
            )
        );
        assert_eq!(
            limit_files(&v1, Path::new("/cg/memory/fcm/x"), l),
            vec![(
                PathBuf::from("/cg/memory/fcm/x/memory.limit_in_bytes"),
                (768u64 << 20).to_string()
            )]
        );
    }
}
