//! The VMM seam: one trait, two backends. Firecracker where hardware
//! virtualisation is usable; QEMU `microvm` under TCG as a slow fallback.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{BackendChoice, DaemonConfig};
use crate::host::HostError;

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
}

/// What a backend needs to boot one guest. Paths are already validated.
pub struct LaunchSpec<'a> {
    pub id: &'a str,
    pub dir: &'a Path,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub rootfs: &'a Path,
    /// Kernel command line shared by both backends; they may append to it.
    pub cmdline: String,
    pub tap: &'a str,
    pub mac: &'a str,
    pub cpus: u8,
    pub memory_mib: u32,
}

impl LaunchSpec<'_> {
    pub fn console_log(&self) -> PathBuf {
        console_log_path(self.dir)
    }
}

pub fn console_log_path(dir: &Path) -> PathBuf {
    dir.join("console.log")
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
    /// The binary this backend runs.
    fn binary(&self) -> &Path;
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
        Backend::Firecracker => {
            Box::new(firecracker::Firecracker::new(cfg.firecracker_bin.clone()))
        }
        Backend::Qemu => Box::new(qemu::Qemu::new(cfg.qemu_bin.clone())),
    }
}

/// Keeps a serial log under `max` bytes: the older half moves to `.1`.
/// Both VMMs open the log in append mode, so truncation is safe.
pub fn cap_console_log(dir: &Path, max: u64) {
    let log = console_log_path(dir);
    let Ok(meta) = fs::metadata(&log) else { return };
    if meta.len() <= max {
        return;
    }
    let old = dir.join("console.log.1");
    if fs::copy(&log, &old).is_ok() {
        let _ = OpenOptions::new()
            .write(true)
            .open(&log)
            .and_then(|f| f.set_len(0));
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
    fn console_log_is_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(console_log_path(dir.path()), vec![b'x'; 2000]).expect("write");
        cap_console_log(dir.path(), 1000);
        assert_eq!(
            fs::metadata(console_log_path(dir.path()))
                .expect("meta")
                .len(),
            0
        );
        assert_eq!(
            fs::metadata(dir.path().join("console.log.1"))
                .expect("meta")
                .len(),
            2000
        );
    }
}
