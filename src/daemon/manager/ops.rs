//! Stop, start and destroy.

use std::fs;
use std::time::Duration;

use super::{Manager, ManagerError, check};
use crate::daemon::lifecycle::{Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::{self, VmRecord};
use crate::error::chain;
use crate::host::{self, network, ssh};
use crate::wire::api::VmView;

impl Manager {
    /// Clean shutdown: Ctrl-Alt-Del where the VMM has it, `reboot` over SSH
    /// (the guest's init syncs and unmounts, then the VMM exits), then
    /// SIGTERM/SIGKILL after the deadline. Returns whether it was clean.
    fn shutdown(&self, r: &VmRecord) -> bool {
        let Some(pid) = r.pid else { return true };
        let dir = self.dir(&r.id);
        let marker = dir.to_string_lossy().into_owned();
        if !host::process_alive(pid, &marker) {
            return true;
        }
        let gone = || (!host::process_alive(pid, &marker)).then_some(());
        let deadline = Duration::from_secs(self.cfg.stop_timeout_secs);
        let started = std::time::Instant::now();
        // Ctrl-Alt-Del through the VMM first; if the guest does not react
        // within a few seconds (or the VMM cannot send it), `reboot` over SSH.
        let asked = self.vmm_for(r.backend).request_shutdown(&dir).is_ok();
        let mut clean = asked
            && host::wait_until(
                deadline.min(Duration::from_secs(8)),
                Duration::from_millis(50),
                gone,
            )
            .is_some();
        if !clean {
            let mut args = ssh::daemon_ssh_args(&self.key, &self.known_hosts(&r.id), r.ip);
            args.push("reboot".into());
            let _ = host::run_timeout("ssh", &args, Duration::from_secs(10));
            let left = deadline.saturating_sub(started.elapsed());
            clean = host::wait_until(left, Duration::from_millis(50), gone).is_some();
        }
        if !clean {
            self.kill(pid, &dir);
        }
        clean
    }

    pub fn stop(&self, vm: &str) -> Result<VmView, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        let _op = lock(&e.op);
        let r = lock(&e.rec).clone();
        check(&r, Transition::Stop)?;
        let clean = self.shutdown(&r);
        let errors = self.release_runtime(&r);
        let mut r2 = r.clone();
        r2.state = VmState::Stopped;
        r2.pid = None;
        *lock(&e.rec) = r2.clone();
        store::save(&self.cfg.state_dir, &r2).map_err(|err| ManagerError::Operation {
            action: "stop",
            name: r.name.to_string(),
            message: chain(&err),
        })?;
        let mut view = r2.view();
        if !clean {
            view.warnings.push(format!(
                "the guest did not shut down within {} s and was killed",
                self.cfg.stop_timeout_secs
            ));
        }
        view.warnings.extend(errors);
        view.warnings.extend(self.mark_url(&r, true));
        Ok(view)
    }

    pub fn start(&self, vm: &str) -> Result<VmView, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        let _op = lock(&e.op);
        let mut r = lock(&e.rec).clone();
        check(&r, Transition::Start)?;
        self.check_prerequisites(r.backend)?;
        let fail = |msg: String| ManagerError::Operation {
            action: "start",
            name: r.name.to_string(),
            message: msg,
        };
        network::create_tap(&self.cfg, &r.id).map_err(|err| fail(chain(&err)))?;
        let pid = match self.launch(&r) {
            Ok(pid) => pid,
            Err(err) => {
                self.release_runtime(&r);
                return Err(fail(chain(&err)));
            }
        };
        r.pid = Some(pid);
        r.state = VmState::Running;
        *lock(&e.rec) = r.clone();
        store::save(&self.cfg.state_dir, &r).map_err(|err| fail(chain(&err)))?;
        let mut view = r.view();
        view.warnings.extend(self.mark_url(&r, false));
        Ok(view)
    }

    pub fn destroy(&self, vm: &str) -> Result<VmView, ManagerError> {
        let (id, e) = self.resolve(vm)?;
        let _op = lock(&e.op);
        let r = lock(&e.rec).clone();
        if let Some(pid) = r.pid {
            self.kill(pid, &self.dir(&id));
        }
        let mut errors = self.release_runtime(&r);
        if let Some(c) = &self.caddy
            && let Err(err) = c.remove_site(&r.name)
        {
            errors.push(chain(&err));
        }
        if let Err(err) = fs::remove_dir_all(self.dir(&id))
            && err.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!(
                "could not remove {}: {err}",
                self.dir(&id).display()
            ));
        }
        if self.dir(&id).exists() {
            return Err(ManagerError::Operation {
                action: "destroy",
                name: r.name.to_string(),
                message: errors.join("; "),
            });
        }
        lock(&self.vms).remove(&id);
        let mut view = r.view();
        view.state = "destroyed".into();
        view.pid = None;
        view.warnings = errors;
        Ok(view)
    }
}
