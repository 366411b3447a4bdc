//! Resize a stopped VM: grow its disk (the guest grows its file system to
//! the disk at its next boot), change its vCPUs or memory. Also the disk
//! size rules that create shares.

use std::time::Duration;

use super::create::{CPUS_MAX, MEMORY_RANGE};
use super::{Manager, ManagerError};
use crate::daemon::lifecycle::Transition;
use crate::host::{self, disk, disk_lock};
use crate::wire::api::{DiskSize, ResizeRequest, VmView};
use crate::wire::size::human;

/// Disk of a VM created without `disk`.
pub const DEFAULT_DISK: u64 = 10 << 30;
/// How long resize waits for a VMM that is exiting to release the disk.
const DISK_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// The largest disk fcm makes (the file is sparse; this bounds typos).
pub const DISK_MAX: u64 = 16 << 40;

impl Manager {
    /// The disk size to give a VM: `wanted`, or the default; never below
    /// the base image nor, for an existing disk, below `current`.
    pub(super) fn disk_size(
        &self,
        wanted: Option<DiskSize>,
        current: Option<u64>,
    ) -> Result<u64, ManagerError> {
        let bytes = wanted.map(|d| d.0).unwrap_or(DEFAULT_DISK);
        let base = disk::size(&self.cfg.asset(&self.cfg.rootfs)).unwrap_or(0);
        if bytes > DISK_MAX {
            return Err(ManagerError::BadRequest(format!(
                "disk must be at most {}",
                human(DISK_MAX)
            )));
        }
        if let Some(cur) = current
            && bytes < cur
        {
            return Err(ManagerError::BadRequest(format!(
                "a disk can only grow: it is {} and {} is smaller (to get a smaller disk, \
                 create a new VM with --disk and copy the data with fcm cp)",
                human(cur),
                human(bytes)
            )));
        }
        if bytes < base {
            return Err(ManagerError::BadRequest(format!(
                "disk must be at least {} (the size of the base image)",
                human(base)
            )));
        }
        Ok(bytes)
    }

    /// Changes disk, vCPUs and memory of a stopped VM (409 otherwise).
    pub(super) fn do_resize(&self, vm: &str, req: ResizeRequest) -> Result<VmView, ManagerError> {
        // An unknown VM is the first thing to say.
        self.resolve(vm)?;
        if req.disk.is_none() && req.cpus.is_none() && req.memory_mib.is_none() {
            return Err(ManagerError::BadRequest(
                "nothing to change: give disk, cpus or memory_mib".into(),
            ));
        }
        if let Some(c) = req.cpus
            && (c == 0 || c > CPUS_MAX)
        {
            return Err(ManagerError::BadRequest(format!(
                "cpus must be between 1 and {CPUS_MAX}"
            )));
        }
        if let Some(m) = req.memory_mib
            && !MEMORY_RANGE.contains(&m)
        {
            return Err(ManagerError::BadRequest(format!(
                "memory_mib must be between {} and {}",
                MEMORY_RANGE.start(),
                MEMORY_RANGE.end()
            )));
        }
        let mut op = self.operation(vm, Transition::Resize)?;
        op.begin()?;
        let image = self.dir(&op.r.id).join("rootfs.img");
        // Recorded stopped but a VMM still on the disk (one that is still
        // exiting, or one recovery will adopt): not a disk to change under
        // a guest's feet. An exiting VMM gets a few seconds to let go.
        let free = || (!disk_lock::in_use(&image)).then_some(());
        if host::wait_until(DISK_RELEASE_WAIT, Duration::from_millis(100), free).is_none() {
            return Err(ManagerError::WrongState {
                name: op.r.name.to_string(),
                state: "running",
                wanted: "stopped",
                action: "resize it",
            });
        }
        if let Some(d) = req.disk {
            let current = match disk::size(&image) {
                Ok(c) => c,
                Err(err) => return Err(op.fail(err)),
            };
            let bytes = self.disk_size(Some(d), Some(current))?;
            if let Err(err) = disk::grow(&image, bytes) {
                return Err(op.fail(err));
            }
            op.r.disk_bytes = Some(bytes);
        }
        if let Some(c) = req.cpus {
            op.r.cpus = c;
        }
        if let Some(m) = req.memory_mib {
            op.r.memory_mib = m;
        }
        op.done()?;
        Ok(op.r.view())
    }
}
