//! The VMM seam: one trait, two backends. Firecracker where hardware
//! virtualisation is usable; QEMU `microvm` under TCG as a slow fallback.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{BackendChoice, DaemonConfig};
use crate::host::HostError;
use crate::host::cgroup::Placement;
use crate::host::disk_lock::{DiskLock, DiskLockError};

pub mod firecracker;
pub mod qemu;

/// Which VMM runs a VM (kept in its record: a VM stays on its backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Firecracker,
    Qemu,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Error)]
pub enum VmmError {
    #[error("{program} is not installed (looked for {path})")]
    MissingBinary {
        program: &'static str,
        path: PathBuf,
    },
    #[error("could not start {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not come up: {detail}")]
    NotReady {
        program: &'static str,
        detail: String,
    },
    #[error("Firecracker API call {step} failed: {detail}")]
    Api { step: &'static str, detail: String },
    #[error("QEMU failed to start")]
    Qemu(#[source] HostError),
    #[error("could not prepare the VM directory")]
    Io(#[source] std::io::Error),
    #[error(
        "the disk {disk} is in use by another VMM (pid {pids}); refusing to run a second one on it"
    )]
    DiskInUse { disk: PathBuf, pids: String },
    #[error("saving the guest's state failed: {0}")]
    Save(String),
    #[error("loading the guest's saved state failed: {0}")]
    Load(String),
    #[error("could not prepare the jail {path}")]
    Jail {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    DiskLock(#[from] DiskLockError),
    #[error(transparent)]
    Cgroup(#[from] crate::host::cgroup::CgroupError),
    #[error("the network device could not be handed to the VMM")]
    Tap(#[source] crate::host::network::NetworkError),
    #[error("{0} is not supported by this VMM")]
    Unsupported(&'static str),
}

/// Where a guest's RAM lives.
#[derive(Debug, Clone, Copy)]
pub enum Ram<'a> {
    /// The VMM's own memory (a VM made before shared RAM; Firecracker).
    Own,
    /// A memfd the VMM maps shared, made at launch (QEMU,
    /// `qemu::fork::RAM_ID`): its pages can be copied while the guest is
    /// stopped, so the VM can be forked.
    Shared,
    /// A private copy-on-write mapping of a fork image that never changes:
    /// the VMs mapping it share the pages none of them wrote.
    Image(&'a File),
    /// A memfd made at launch holding a copy of an image's data, mapped
    /// shared: a VM restored from an image (a warm create) that owns its
    /// memory like a booted one, so it can be forked.
    CopyOf(&'a File),
}

/// What a backend needs to boot one guest. Paths are already validated.
pub struct LaunchSpec<'a> {
    pub id: &'a str,
    pub dir: &'a Path,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub rootfs: &'a Path,
    /// The config drive (`host::config_drive`), attached read-only after
    /// the disk; `None` for a VM made before there were config drives.
    pub config_drive: Option<&'a Path>,
    /// The agent drive (`host::agent_drive`), read-only after the config
    /// drive, and the agent's channel (QEMU: a virtio-serial port on
    /// [`AGENT_SOCKET`]; Firecracker: vsock on [`FC_VSOCK`]); `None` for a
    /// VM whose guest has no agent.
    pub agent_drive: Option<&'a Path>,
    /// Kernel command line shared by both backends; they may append to it.
    pub cmdline: String,
    pub tap: &'a str,
    pub mac: &'a str,
    pub cpus: u8,
    pub memory_mib: u32,
    pub ram: Ram<'a>,
    /// The disk's lock, handed to the VMM process (see `host::disk_lock`).
    pub disk_lock: &'a DiskLock,
    /// The VM's own uid and gid, for a jailed or sandboxed VMM
    /// (`DaemonConfig::vm_user`).
    pub user: (u32, u32),
    /// The cgroups the VMM enters before it execs.
    pub cgroup: Option<&'a Placement>,
    /// Set by the backend just before it forks the VMM (or its jailer):
    /// where create's host work ends.
    pub spawned_at: &'a std::cell::Cell<Option<std::time::Instant>>,
}

impl LaunchSpec<'_> {
    pub fn console_log(&self) -> PathBuf {
        console_log_path(self.dir)
    }
}

/// The host end of the agent's virtio-serial port (QEMU), in the VM dir:
/// a socket the daemon binds and hands to QEMU, and connects to.
pub const AGENT_SOCKET: &str = "agent.sock";
/// Firecracker's vsock Unix socket, in its chroot (jailed) or the VM dir.
pub const FC_VSOCK: &str = "v.sock";

/// How the daemon reaches a VM's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChannel {
    /// Connect to this socket: the stream is the virtio-serial port.
    Serial(PathBuf),
    /// Connect to Firecracker's vsock socket and ask for `port`.
    Vsock { socket: PathBuf, port: u32 },
}

pub fn console_log_path(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// What a log gained since it was `from` bytes long (at most 2 KiB, the
/// end of it), as text: where a VMM that did not start said why.
pub fn log_since(log: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(2048));
    let mut buf = Vec::new();
    let _ = f
        .seek(SeekFrom::Start(start))
        .and_then(|_| f.take(2048).read_to_end(&mut buf));
    String::from_utf8_lossy(&buf).trim().to_owned()
}

pub trait Vmm: Send + Sync {
    fn backend(&self) -> Backend;
    /// Starts the VMM and boots the guest; returns the VMM's pid. The VMM
    /// runs in its own process group so it outlives the daemon.
    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError>;
    /// Asks the guest to shut down cleanly, where the VMM has a way to.
    fn request_shutdown(&self, dir: &Path) -> Result<(), VmmError>;
    /// Files in the VM dir that belong to a running VMM (removed after it stops).
    fn runtime_files(&self) -> &'static [&'static str];
    /// Directories in the VM dir that belong to a running VMM (removed,
    /// with all they hold, after it stops): the jail.
    fn runtime_dirs(&self) -> &'static [&'static str] {
        &[]
    }
    /// The binary this backend runs.
    fn binary(&self) -> &Path;
    /// Stops the guest's vCPUs and writes its memory and device state into
    /// the directory `into` (which exists); on return every file there is
    /// complete and synced. The guest stays stopped until
    /// [`Vmm::continue_guest`]; the VMM keeps running.
    fn save_state(&self, dir: &Path, into: &Path) -> Result<(), VmmError>;
    /// Lets a guest stopped by `save_state` (or loaded by `launch_saved`) run.
    fn continue_guest(&self, dir: &Path) -> Result<(), VmmError>;
    /// Starts a VMM with the same configuration as `launch` that loads the
    /// state `save_state` wrote into `from`, instead of booting; returns its
    /// pid. The guest runs once [`Vmm::continue_guest`] returns.
    fn launch_saved(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError>;
    /// A fork's first half: stops the guest of the VM in `dir` (VMM `pid`,
    /// launched with [`Ram::Shared`]), writes its device state into `into`
    /// and returns a sealed copy of its RAM (the fork image). The guest
    /// stays stopped until [`Vmm::continue_guest`].
    fn save_for_fork(&self, _dir: &Path, _pid: u32, _into: &Path) -> Result<File, VmmError> {
        Err(VmmError::Unsupported("forking a running VM"))
    }
    /// A fork's second half: a VMM with `spec` (its RAM a
    /// [`Ram::Image`]) that loads the device state `save_for_fork` wrote
    /// into `from`; the guest runs once [`Vmm::continue_guest`] returns.
    fn launch_fork(&self, _spec: &LaunchSpec<'_>, _from: &Path) -> Result<u32, VmmError> {
        Err(VmmError::Unsupported("forking a running VM"))
    }
    /// Grows the running VM's disk (in `dir`) to `bytes`, telling the
    /// guest (its file system is the guest's to grow).
    fn resize_disk(&self, _dir: &Path, _bytes: u64) -> Result<(), VmmError> {
        Err(VmmError::Unsupported("growing a running VM's disk"))
    }
    /// Memory the VMM itself needs beyond the guest's and the configured
    /// overhead (QEMU's TCG translation cache), for its cgroup's limit.
    fn memory_overhead_mib(&self) -> u32 {
        0
    }
    /// CPU the VMM needs beyond one core per vCPU (percent of a core).
    fn cpu_overhead_percent(&self) -> u32 {
        0
    }
    /// Where the agent of the VM whose directory is `dir` is reached (for a
    /// VM launched with an agent drive).
    fn agent_channel(&self, dir: &Path, port: u32) -> AgentChannel;
}

/// Fsyncs a file written by another process.
pub fn sync_file(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

/// Program names a VMM process of either backend has (argv[0]'s file name).
pub const VMM_PROGRAMS: &[&str] = &["firecracker", "qemu-system-x86_64", "jailer"];

/// The VMM processes running the VM whose directory is `dir`, found on the
/// host (not from any record): a VMM of a VM mentions its directory in its
/// command line, or, jailed, has the VM's jail as its root directory.
pub fn find_vmms(dir: &Path) -> Vec<u32> {
    let mut found = crate::host::find_processes(VMM_PROGRAMS, &format!("{}/", dir.display()));
    found.extend(firecracker::find_jailed(dir));
    found.sort_unstable();
    found.dedup();
    found
}

/// Whether `pid` is a live VMM of the VM whose directory is `dir` (the
/// guard against a recorded pid that now belongs to another process).
pub fn is_vmm_of(pid: u32, dir: &Path) -> bool {
    crate::host::process_alive(pid, &format!("{}/", dir.display()))
        || firecracker::is_jailed_in(pid, dir)
}

/// Hardware virtualisation is usable when /dev/kvm opens, the CPU has
/// vmx or svm, and the kvm module is not kvm-pvm (which boots only PVM guests).
pub fn hardware_virt_usable() -> bool {
    let kvm_opens = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpu_flags = fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    kvm_opens && cpu_flags && !Path::new("/sys/module/kvm_pvm").exists()
}

/// Resolves `auto` to a concrete backend.
pub fn choose(cfg: &DaemonConfig) -> Backend {
    match cfg.backend {
        BackendChoice::Firecracker => Backend::Firecracker,
        BackendChoice::Qemu => Backend::Qemu,
        BackendChoice::Auto if hardware_virt_usable() => Backend::Firecracker,
        BackendChoice::Auto => Backend::Qemu,
    }
}

pub fn make(backend: Backend, cfg: &DaemonConfig) -> Box<dyn Vmm> {
    match backend {
        Backend::Firecracker => Box::new(firecracker::Firecracker::new(
            cfg.firecracker_bin.clone(),
            cfg.jailer.enabled.then(|| cfg.jailer.bin.clone()),
        )),
        Backend::Qemu => Box::new(qemu::Qemu::new(
            cfg.qemu_bin.clone(),
            cfg.qemu_sandbox.enabled,
        )),
    }
}

/// Keeps a serial log under about `max` bytes without losing a byte: the
/// oldest whole blocks move to `console.log.1` (replacing it), then are cut
/// from the head of the log in place (`FALLOC_FL_COLLAPSE_RANGE`). The VMM
/// keeps writing at the end (it opened the log for appending), and what it
/// writes meanwhile is beyond the range that moves. Where the file system
/// cannot collapse a range (tmpfs), the log is copied and truncated, which
/// can lose what the guest prints in that instant; the log says so once.
pub fn cap_console_log(dir: &Path, max: u64) {
    let log = console_log_path(dir);
    let Ok(meta) = fs::metadata(&log) else { return };
    if meta.len() <= max {
        return;
    }
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&log) else {
        return;
    };
    // Cut whole blocks, keeping about the newer half.
    const BLOCK: u64 = 4096;
    let cut = (meta.len() - max / 2) / BLOCK * BLOCK;
    if cut == 0 {
        return;
    }
    let old = dir.join("console.log.1");
    let saved = (|| -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let tmp = dir.join(".console.log.1.tmp");
        let mut out = File::create(&tmp)?;
        file.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut (&mut file).take(cut), &mut out)?;
        out.sync_all()?;
        fs::rename(&tmp, &old)
    })();
    if saved.is_err() {
        return;
    }
    let collapsed =
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::COLLAPSE_RANGE, 0, cut);
    if collapsed.is_err() {
        // No collapse here: fall back to truncating (see above).
        let _ = file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choice_wins() {
        let cfg = DaemonConfig {
            backend: BackendChoice::Qemu,
            ..Default::default()
        };
        assert_eq!(choose(&cfg), Backend::Qemu);
        let cfg = DaemonConfig {
            backend: BackendChoice::Firecracker,
            ..Default::default()
        };
        assert_eq!(choose(&cfg), Backend::Firecracker);
    }

    #[test]
    fn kvm_pvm_is_not_usable() {
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!hardware_virt_usable());
        }
    }

    #[test]
    fn console_log_is_capped_without_losing_a_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = console_log_path(dir.path());
        let text: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, &text).expect("write");
        // The VMM's own descriptor, opened for appending, as both VMMs do.
        let mut vmm = OpenOptions::new().append(true).open(&log).expect("open");
        cap_console_log(dir.path(), 8192);
        use std::io::Write;
        vmm.write_all(b"after the cap\n").expect("write");
        let old = fs::read_to_string(dir.path().join("console.log.1")).expect("old");
        let new = fs::read_to_string(&log).expect("new");
        assert!(new.len() < text.len(), "the log was not capped");
        // (The temp dir is on ext4 here, which collapses ranges.)
        assert_eq!(format!("{old}{new}"), format!("{text}after the cap\n"));
    }
}
