//! Stop, start and destroy.

use std::fs;
use std::time::Duration;

use super::{Cause, Manager, ManagerError};
use crate::daemon::fault;
use crate::daemon::lifecycle::{Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::host::{self, disk_lock, network, vmm};
use crate::names::VmId;
use crate::wire::api::VmView;

impl Manager {
    /// Clean shutdown: Ctrl-Alt-Del where the VMM has it, else a shutdown
    /// asked of the guest (the guest's init syncs and unmounts, then the VMM exits), then
    /// SIGTERM/SIGKILL after the deadline. Returns whether it was clean.
    fn shutdown(&self, r: &VmRecord) -> bool {
        let Some(pid) = r.pid else { return true };
        let dir = self.dir(&r.id);
        if !vmm::is_vmm_of(pid, &dir) {
            return true;
        }
        let gone = || (!vmm::is_vmm_of(pid, &dir)).then_some(());
        let deadline = Duration::from_secs(self.cfg.stop_timeout_secs);
        let started = std::time::Instant::now();
        // Ctrl-Alt-Del through the VMM first; if the guest does not react
        // within a few seconds (or the VMM cannot send it), `reboot` over SSH,
        // which gets at least half the deadline.
        let asked = self.vmm_for(r.backend).request_shutdown(&dir).is_ok();
        let mut clean = asked
            && host::wait_until(
                (deadline / 2).min(Duration::from_secs(8)),
                Duration::from_millis(50),
                gone,
            )
            .is_some();
        if !clean {
            let _ = self.guest(r).shutdown();
            let left = deadline.saturating_sub(started.elapsed());
            clean = host::wait_until(left, Duration::from_millis(50), gone).is_some();
        }
        if !clean {
            self.kill(pid, &dir);
        }
        clean
    }

    pub(super) fn do_stop(&self, vm: &str) -> Result<VmView, ManagerError> {
        let mut op = self.operation(vm, Transition::Stop)?;
        let was_paused = op.r.state == VmState::Paused;
        op.begin()?;
        fault::crash_point("stop:after-record");
        let clean = self.shutdown(&op.r);
        self.forget_guest(&op.r);
        // A VMM that has exited can hold its disk's lock a moment longer
        // (its last threads): stopped means the disk is free to start again.
        let rootfs = self.dir(&op.r.id).join("rootfs.img");
        let _ = host::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            (!disk_lock::in_use(&rootfs)).then_some(())
        });
        fault::crash_point("stop:after-shutdown");
        let mut errors = self.release_runtime(&op.r);
        if was_paused {
            // A stopped VM keeps no memory state (recovery removes it too).
            let saved = self.saved_dir(&op.r.id);
            errors.push(match fs::remove_dir_all(&saved) {
                Ok(()) => "the VM was paused: its memory state (running programs) was discarded; \
                           it boots from its disk on the next start"
                    .into(),
                Err(err) => format!("could not remove {}: {err}", saved.display()),
            });
        }
        fault::crash_point("stop:after-release");
        op.r.pid = None;
        op.done()?;
        let mut view = op.r.view();
        if !clean {
            view.warnings.push(format!(
                "the guest did not shut down within {} s and was killed",
                self.cfg.stop_timeout_secs
            ));
        }
        view.warnings.extend(errors);
        view.warnings.extend(self.apply_url(op.entry(), false));
        Ok(view)
    }

    pub(super) fn do_start(&self, vm: &str) -> Result<VmView, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        if lock(&e.rec).state == VmState::Paused {
            // Starting a paused VM resumes it, as it was.
            return self.resume(vm);
        }
        let mut op = self.operation(vm, Transition::Start)?;
        self.check_prerequisites(op.r.backend)?;
        // A cold boot takes the current agent (docs/agent.md).
        op.r.agent_drive = self.agent_drive.clone();
        op.begin()?;
        fault::crash_point("start:after-record");
        let launched = network::create_tap_for(&self.cfg, &op.r.nic(), self.tap_owner(&op.r))
            .map_err(Cause::from)
            .and_then(|_| {
                fault::crash_point("start:after-tap");
                self.launch_from(&op.r, None)
            });
        let pid = match launched {
            Ok(pid) => pid,
            Err(cause) => {
                self.release_runtime(&op.r);
                return Err(op.fail(cause));
            }
        };
        fault::crash_point("start:after-launch");
        op.r.pid = Some(pid);
        op.done()?;
        let mut view = op.r.view();
        view.warnings.extend(self.apply_url(op.entry(), true));
        Ok(view)
    }

    pub(super) fn do_destroy(&self, vm: &str) -> Result<VmView, ManagerError> {
        let mut op = match self.operation(vm, Transition::Destroy) {
            Err(ManagerError::Broken { id, .. }) => return self.destroy_broken(&id),
            other => other?,
        };
        op.begin()?;
        fault::crash_point("destroy:after-record");
        let errors = self.finish_destroy(&op.r);
        if self.dir(&op.r.id).exists() {
            // Still `destroying`: a destroy again (or recovery) finishes it.
            return Err(op.fail(Cause::Several(errors)));
        }
        op.done()?;
        self.release_name(&op.r.name, &op.r.id);
        let mut view = op.r.view();
        view.state = "destroyed".into();
        view.pid = None;
        view.warnings = errors;
        Ok(view)
    }

    /// The side effects of a destroy, each step idempotent, so recovery
    /// can run them again after a crash. Returns what went wrong.
    pub(super) fn finish_destroy(&self, r: &VmRecord) -> Vec<String> {
        self.forget_guest(r);
        self.kill_vmms(r);
        fault::crash_point("destroy:after-kill");
        let mut errors = self.release_runtime(r);
        fault::crash_point("destroy:after-tap");
        if let Some(c) = &self.caddy
            && let Err(err) = c.remove_site(&r.name)
        {
            errors.push(chain(&err));
        }
        fault::crash_point("destroy:after-site");
        errors.extend(self.remove_dir(&r.id));
        errors
    }

    /// Removes a VM directory: renamed out of sight first (one atomic
    /// step), then deleted; recovery deletes a `.trash-*` left by a crash.
    pub(super) fn remove_dir(&self, id: &VmId) -> Option<String> {
        let dir = self.dir(id);
        let trash = self.cfg.state_dir.join(format!(".trash-{id}"));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(format!("could not remove {}: {e}", dir.display())),
        }
        let _ = host::fs::sync_dir(&self.cfg.state_dir);
        fs::remove_dir_all(&trash)
            .err()
            .map(|e| format!("could not remove {}: {e}", trash.display()))
    }

    /// Removes a VM directory that has no valid record: any VMM on it, its
    /// tap, the directory.
    fn destroy_broken(&self, id: &str) -> Result<VmView, ManagerError> {
        let _in_flight = self.begin()?;
        let id = VmId::parse(id)?;
        let dir = self.dir(&id);
        for pid in vmm::find_vmms(&dir) {
            self.kill(pid, &dir);
        }
        let mut errors = Vec::new();
        if let Err(err) = network::delete_tap(&self.cfg, &id.tap_name()) {
            errors.push(chain(&err));
        }
        errors.extend(host::cgroup::release(&self.cfg.cgroup, &dir));
        errors.extend(self.remove_dir(&id));
        if dir.exists() {
            return Err(ManagerError::Operation {
                action: "destroy",
                name: id.to_string(),
                cause: Box::new(Cause::Several(errors)),
            });
        }
        let reason = lock(&self.broken).remove(&id).unwrap_or_default();
        let mut view = super::broken_view(&id, &reason);
        view.state = "destroyed".into();
        view.warnings = errors;
        Ok(view)
    }
}
