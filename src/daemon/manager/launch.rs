//! Launching a VM's VMM: the disk lock, the cgroup, the config drive when
//! the VM has one, and the launch spec both backends share. A VMM that
//! does not start is reported with what its log gained meanwhile.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Cause, Manager};
use crate::daemon::store::VmRecord;
use crate::host;
use crate::host::cgroup;
use crate::host::disk_lock::{DiskLock, DiskLockError};
use crate::host::vmm::{self, LaunchSpec, Ram};

/// What a launched VMM does first.
#[derive(Clone, Copy)]
pub(super) enum Boot<'a> {
    /// Boots the kernel.
    Cold,
    /// Loads the whole saved state in this directory (pause, checkpoint).
    Saved(&'a Path),
    /// Loads a fork's device state in this directory, its RAM the image
    /// (mapped copy-on-write; or, with `own`, copied into the VM's own
    /// shared memory, so that it can be forked in turn).
    Fork {
        from: &'a Path,
        image: &'a std::fs::File,
        own: bool,
    },
}

impl Manager {
    /// Launches a VM's VMM to boot; `spawned_at` gets the moment the VMM
    /// was forked (where create's host work ends).
    pub(super) fn launch(
        &self,
        rec: &VmRecord,
        spawned_at: &Cell<Option<Instant>>,
    ) -> Result<u32, Cause> {
        self.launch_with(rec, Boot::Cold, spawned_at)
    }

    /// Launches the VM's VMM: booting, or loading the state saved in
    /// `saved` (same command line, same tap, same disk lock).
    pub(super) fn launch_from(&self, rec: &VmRecord, saved: Option<&Path>) -> Result<u32, Cause> {
        let boot = saved.map_or(Boot::Cold, Boot::Saved);
        self.launch_with(rec, boot, &Cell::new(None))
    }

    pub(super) fn launch_with(
        &self,
        rec: &VmRecord,
        boot: Boot<'_>,
        spawned_at: &Cell<Option<Instant>>,
    ) -> Result<u32, Cause> {
        self.launch_in(&self.dir(&rec.id), rec, boot, spawned_at)
    }

    /// [`Self::launch_with`] for a VM whose files are in `dir` (a template
    /// being made has no VM directory).
    pub(super) fn launch_in(
        &self,
        dir: &Path,
        rec: &VmRecord,
        boot: Boot<'_>,
        spawned_at: &Cell<Option<Instant>>,
    ) -> Result<u32, Cause> {
        let dir = dir.to_path_buf();
        let kernel = self.cfg.asset(&self.cfg.kernel);
        let initrd = self.initrd();
        let rootfs = dir.join("rootfs.img");
        let config = dir.join(host::config_drive::FILE);
        let config_drive = config.is_file().then_some(config.as_path());
        let agent = rec
            .agent_drive
            .as_deref()
            .map(|n| host::agent_drive::path(&self.cfg.state_dir, n))
            .filter(|p| p.is_file());
        // One VMM per disk: the lock is taken here and lives in the VMM. A
        // VMM that is exiting (none is found running) gets a moment to let go.
        let acquire = || match DiskLock::acquire(&rootfs) {
            Err(DiskLockError::Busy { .. }) if vmm::find_vmms(&dir).is_empty() => None,
            other => Some(other),
        };
        let taken = host::wait_until(Duration::from_secs(3), Duration::from_millis(20), acquire)
            .unwrap_or_else(|| DiskLock::acquire(&rootfs));
        // Busy: a conflict (409), naming the VMMs of this VM found on it.
        let disk_lock = taken.map_err(|e| {
            let pids = vmm::find_vmms(&dir);
            match e {
                DiskLockError::Busy { .. } if !pids.is_empty() => vmm::VmmError::DiskInUse {
                    disk: rootfs.clone(),
                    pids: pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                other => other.into(),
            }
        })?;
        // Its cgroup, made before the VMM exists and entered as it starts.
        let cgroup = if self.cfg.cgroup.enabled {
            let limits = cgroup::Limits {
                cpus: rec.cpus,
                extra_cpu_percent: self.vmm_for(rec.backend).cpu_overhead_percent(),
                memory_mib: u64::from(rec.memory_mib)
                    + u64::from(self.cfg.cgroup.memory_overhead_mib)
                    + u64::from(self.vmm_for(rec.backend).memory_overhead_mib()),
            };
            Some(
                cgroup::create(&self.cfg.cgroup, &dir, rec.id.as_str(), limits)
                    .map_err(vmm::VmmError::from)?,
            )
        } else {
            None
        };
        let spec = LaunchSpec {
            id: rec.id.as_str(),
            dir: &dir,
            kernel: &kernel,
            initrd: initrd.as_deref(),
            rootfs: &rootfs,
            config_drive,
            agent_drive: agent.as_deref(),
            cmdline: self.cmdline(rec),
            tap: &rec.tap,
            mac: &rec.mac,
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
            ram: match boot {
                Boot::Fork {
                    image, own: false, ..
                } => Ram::Image(image),
                Boot::Fork {
                    image, own: true, ..
                } => Ram::CopyOf(image),
                _ if rec.shared_ram => Ram::Shared,
                _ => Ram::Own,
            },
            disk_lock: &disk_lock,
            user: self.cfg.vm_user(rec.ip),
            cgroup: cgroup.as_ref(),
            spawned_at,
        };
        let vmm = self.vmm_for(rec.backend);
        let log = spec.console_log();
        let logged_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        match boot {
            Boot::Cold => vmm.launch(&spec),
            Boot::Saved(from) => vmm.launch_saved(&spec, from),
            Boot::Fork { from, .. } => vmm.launch_fork(&spec, from),
        }
        .map_err(|e| Cause::Launch {
            vmm: Box::new(e),
            log: vmm::log_since(&log, logged_before),
        })
    }
}
