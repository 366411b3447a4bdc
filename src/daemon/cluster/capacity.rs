//! What a host has (vCPUs, memory, disk) and what its VMs take of it: the
//! numbers of its record, which placement reads.

use std::path::Path;

use crate::config::ClusterConfig;
use crate::wire::api::VmView;
use crate::wire::cluster::{Capacity, Load};

/// A value of `/proc/meminfo` in MiB (`MemTotal`, `MemAvailable`).
fn meminfo_mib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

/// The state dir's file system: (size, free) in bytes.
fn disk(state_dir: &Path) -> (u64, u64) {
    rustix::fs::statvfs(state_dir)
        .map(|s| {
            (
                s.f_blocks.saturating_mul(s.f_frsize),
                s.f_bavail.saturating_mul(s.f_frsize),
            )
        })
        .unwrap_or((0, 0))
}

pub fn capacity(cfg: &ClusterConfig, state_dir: &Path) -> Capacity {
    let cpus = cfg.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    });
    Capacity {
        cpus,
        memory_mib: cfg
            .memory_mib
            .or_else(|| meminfo_mib("MemTotal"))
            .unwrap_or(0),
        disk_bytes: disk(state_dir).0,
    }
}

/// Whether a VM in this state holds its vCPUs and memory (a paused or
/// stopped one keeps its memory on disk, if at all).
fn holds_memory(state: &str) -> bool {
    !matches!(state, "stopped" | "paused" | "broken" | "destroyed")
}

/// The load of `vms` on a host of `cap`.
pub fn load(cap: &Capacity, state_dir: &Path, vms: &[VmView]) -> Load {
    let holding: Vec<&VmView> = vms.iter().filter(|v| holds_memory(&v.state)).collect();
    let memory_used_mib: u64 = holding.iter().map(|v| u64::from(v.memory_mib)).sum();
    let mut free = cap.memory_mib.saturating_sub(memory_used_mib);
    if let Some(avail) = meminfo_mib("MemAvailable") {
        free = free.min(avail);
    }
    Load {
        vms: u32::try_from(vms.len()).unwrap_or(u32::MAX),
        running: u32::try_from(vms.iter().filter(|v| v.state == "running").count())
            .unwrap_or(u32::MAX),
        cpus_used: holding.iter().map(|v| u32::from(v.cpus)).sum(),
        memory_used_mib,
        free_memory_mib: free,
        disk_free_bytes: disk(state_dir).1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_measured_and_overrides_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = capacity(&ClusterConfig::default(), dir.path());
        assert!(c.cpus >= 1 && c.memory_mib > 0 && c.disk_bytes > 0, "{c:?}");
        let cfg = ClusterConfig {
            memory_mib: Some(2048),
            cpus: Some(3),
            ..Default::default()
        };
        let c = capacity(&cfg, dir.path());
        assert_eq!((c.cpus, c.memory_mib), (3, 2048));
        let l = load(&c, dir.path(), &[]);
        assert_eq!((l.vms, l.memory_used_mib), (0, 0));
        assert!(l.free_memory_mib <= 2048);
    }
}
