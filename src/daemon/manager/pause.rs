//! Pause and resume, and what they share with checkpoints and restore
//! (`checkpoints.rs`): the saved-state files, their sweep, the guest's
//! clock after a load.
//!
//! Files, in the VM's directory:
//!
//! ```text
//! paused/                  the saved memory and device state of a paused VM
//! .paused.tmp/             a pause under way (renamed to paused/ once complete)
//! checkpoints/<cp>/        checkpoint.json, rootfs.img, the saved state
//! checkpoints/.tmp-<cp>/   a checkpoint under way, or one being removed
//! .fork.tmp/               a fork under way: the source's devices and disk
//! rootfs.img.restore       a restore's copy of a checkpoint's disk, before
//!                          it is renamed over rootfs.img
//! ```
//!
//! Each saved state appears under its final name in one rename, only once
//! complete and synced, so recovery trusts what it finds there and removes
//! the rest (`sweep_vm_dir`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::daemon::guest::GuestError;

use super::{Cause, Manager, ManagerError};
use crate::daemon::fault;
use crate::daemon::lifecycle::{self, Transition};
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::host::{self, network};
use crate::wire::api::VmView;

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Renames a finished directory into place and syncs its parent.
pub(super) fn commit_dir(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    fs::rename(tmp, dest)?;
    host::fs::sync_dir(dest.parent().unwrap_or(Path::new("/")))
}

impl Manager {
    /// A paused VM's saved state.
    pub(super) fn saved_dir(&self, id: &crate::names::VmId) -> PathBuf {
        self.dir(id).join("paused")
    }

    /// Removes what an interrupted pause, checkpoint or restore left, and a
    /// saved state the VM's state no longer uses.
    pub(super) fn sweep_vm_dir(&self, r: &VmRecord) {
        let dir = self.dir(&r.id);
        let mut gone = vec![
            dir.join(".paused.tmp"),
            dir.join("rootfs.img.restore"),
            dir.join(super::fork::STAGE),
        ];
        if !lifecycle::keeps_saved_state(r.state) {
            gone.push(self.saved_dir(&r.id));
        }
        for e in fs::read_dir(self.checkpoints_dir(&r.id))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                gone.push(e.path());
            }
        }
        for p in gone {
            let removed = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match removed {
                Ok(()) => eprintln!(
                    "fcm: {}: removed {}, left by an interrupted operation or no longer needed",
                    r.name,
                    p.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("fcm: warning: could not remove {}: {e}", p.display()),
            }
        }
    }

    /// `fcm pause`: the guest's memory and devices go to `paused/`, then
    /// the VMM exits and its tap is released.
    pub(super) fn do_pause(&self, vm: &str) -> Result<VmView, ManagerError> {
        self.pause_as(vm, false)
    }

    /// A pause by a user, or by idle sleep (`idle`: then a use wakes it).
    pub(super) fn pause_as(&self, vm: &str, idle: bool) -> Result<VmView, ManagerError> {
        let mut op = self.operation(vm, Transition::Pause)?;
        if idle && !super::idle::still_idle(op.entry(), op.r.idle_pause_secs) {
            // In use again since the idle check: stay running.
            return Ok(op.r.view());
        }
        op.r.idle_paused = idle;
        op.begin()?;
        fault::crash_point("pause:after-record");
        let dir = self.dir(&op.r.id);
        let tmp = dir.join(".paused.tmp");
        let vmm = self.vmm_for(op.r.backend);
        let _ = fs::remove_dir_all(&tmp);
        let saved = fs::create_dir(&tmp)
            .map_err(Cause::file(&tmp))
            .and_then(|_| vmm.save_state(&dir, &tmp).map_err(Cause::from))
            .and_then(|_| commit_dir(&tmp, &self.saved_dir(&op.r.id)).map_err(Cause::file(&tmp)));
        if let Err(mut cause) = saved {
            let _ = fs::remove_dir_all(&tmp);
            if let Err(err) = vmm.continue_guest(&dir) {
                cause = cause.also(format!(
                    "; and the guest could not continue: {}",
                    chain(&err)
                ));
            }
            return Err(op.fail(cause));
        }
        fault::crash_point("pause:after-save");
        // The state is safe: the VMM (its guest stopped) may go.
        self.forget_guest(&op.r);
        self.kill_vmms(&op.r);
        // Paused means the VMM is gone, its memory freed: its last threads
        // hold the disk lock until then.
        let rootfs = dir.join("rootfs.img");
        let _ = host::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            (!crate::host::disk_lock::in_use(&rootfs)).then_some(())
        });
        fault::crash_point("pause:after-exit");
        let errors = self.release_runtime(&op.r);
        op.r.pid = None;
        op.done()?;
        let mut view = op.r.view();
        view.warnings.extend(errors);
        view.warnings.extend(self.apply_url(op.entry(), false));
        Ok(view)
    }

    /// `fcm resume` (and `fcm start` of a paused VM): a VMM with the same
    /// command line, tap and disk lock loads `paused/`; the guest runs on,
    /// its clock set from the host's.
    pub(super) fn do_resume(&self, vm: &str) -> Result<VmView, ManagerError> {
        let mut op = self.operation(vm, Transition::Resume)?;
        self.check_prerequisites(op.r.backend)?;
        let saved = self.saved_dir(&op.r.id);
        if !saved.is_dir() {
            return Err(op.fail(Cause::SavedStateMissing(saved)));
        }
        op.begin()?;
        fault::crash_point("resume:after-record");
        let dir = self.dir(&op.r.id);
        let vmm = self.vmm_for(op.r.backend);
        let launched = network::create_tap_for(&self.cfg, &op.r.nic(), self.tap_owner(&op.r))
            .map_err(Cause::from)
            .and_then(|_| {
                fault::crash_point("resume:after-tap");
                self.launch_from(&op.r, Some(&saved))
            })
            .and_then(|pid| {
                fault::crash_point("resume:after-launch");
                vmm.continue_guest(&dir).map(|_| pid).map_err(Cause::from)
            });
        let pid = match launched {
            Ok(pid) => pid,
            Err(cause) => {
                // The saved state is untouched: the VM stays paused.
                self.kill_vmms(&op.r);
                self.release_runtime(&op.r);
                return Err(op.fail(cause));
            }
        };
        op.r.pid = Some(pid);
        // Used now: idle sleep counts its time from here, not from before
        // the pause.
        super::idle::touch(op.entry());
        op.done()?;
        fault::crash_point("resume:after-save");
        let mut view = op.r.view();
        if let Err(err) = fs::remove_dir_all(&saved) {
            view.warnings
                .push(format!("could not remove {}: {err}", saved.display()));
        }
        view.warnings.extend(self.guest_after_load(&op.r));
        view.warnings.extend(self.apply_url(op.entry(), true));
        super::idle::touch(op.entry());
        Ok(view)
    }

    /// Once a guest runs again from a saved state: thaw, clock,
    /// randomness (`Guest::after_restore`). A warning if it failed.
    pub(super) fn guest_after_load(&self, r: &VmRecord) -> Option<String> {
        let entropy: [u8; 64] = std::array::from_fn(|_| rand::random());
        match self.guest(r).after_restore(&entropy) {
            Ok(set) => {
                if let Some(off) = set.offset {
                    eprintln!(
                        "fcm: {}: guest clock set from the host's ({off:+.3} s off when read back)",
                        r.name
                    );
                }
                None
            }
            Err(e @ GuestError::Failed { .. }) => {
                Some(format!("the guest's clock could not be set: {}", chain(&e)))
            }
            Err(e) => Some(format!(
                "the guest's clock was not corrected ({}); it lags by the time it was paused",
                chain(&e)
            )),
        }
    }
}
