//! What the manager shows: the VM list and one VM, what `fcm ssh` needs,
//! the record of a running VM for the session layer, and the VM's URL
//! (Caddy's site) kept in step with its state.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Entry, Manager, ManagerError, idle, wrong_state};
use crate::daemon::lifecycle::{self, VmState};
use crate::daemon::lock;
use crate::daemon::store::{self, VmRecord};
use crate::error::chain;
use crate::names::VmId;
use crate::wire::api::{SshInfo, VmView};

impl Manager {
    pub fn list(&self) -> Vec<VmView> {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        let mut out: Vec<VmView> = entries
            .iter()
            .map(|e| {
                self.refresh(e);
                self.with_e2b(view_of(e))
            })
            .collect();
        out.extend(
            lock(&self.broken)
                .iter()
                .map(|(id, reason)| broken_view(id, reason)),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One VM, as recorded while its recovery is under way (never waits).
    pub fn get(&self, vm: &str) -> Result<VmView, ManagerError> {
        let (_, e) = self.resolve_now(vm)?;
        self.refresh(&e);
        Ok(self.with_e2b(view_of(&e)))
    }

    /// The view with the VM's E2B block, if it is a sandbox of the E2B API.
    fn with_e2b(&self, mut v: VmView) -> VmView {
        if let Ok(id) = VmId::parse(&v.id) {
            v.e2b = store::load_e2b(&self.cfg.state_dir, &id).map(|r| Box::new(r.info()));
        }
        v
    }

    pub fn ssh_info(&self, vm: &str) -> Result<SshInfo, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        let r = lock(&e.rec);
        if let Some(i) = r.image.as_ref().filter(|i| !i.sshd) {
            return Err(ManagerError::NoSshd {
                name: r.name.to_string(),
                image: i.name.clone(),
            });
        }
        Ok(SshInfo {
            id: r.id.to_string(),
            name: r.name.to_string(),
            ip: r.ip,
            user: "root".into(),
            port: 22,
            state: r.state.as_str().into(),
            host_key: r.host_key.clone(),
        })
    }

    /// The record of a running VM, for the session layer (console,
    /// attach, sessions, exec, cp): a VM asleep by idle sleep is woken
    /// first, and the use counts as activity.
    pub fn running(&self, vm: &str) -> Result<VmRecord, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        if Self::asleep(&lock(&e.rec)) {
            self.wake(vm)?;
        }
        let r = lock(&e.rec).clone();
        lifecycle::require(r.state, VmState::Running, "use it").map_err(|w| wrong_state(&r, w))?;
        idle::touch(&e);
        Ok(r)
    }

    /// [`Self::running`] for a console or session: its image must have
    /// tmux (the base image does).
    pub fn running_console(&self, vm: &str) -> Result<VmRecord, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        let r = lock(&e.rec).clone();
        if let Some(i) = r.image.as_ref().filter(|i| !i.tmux) {
            return Err(ManagerError::NoTmux {
                name: r.name.to_string(),
                image: i.name.clone(),
            });
        }
        self.running(vm)
    }

    /// Makes the VM's URL show its state: the guest's page while it runs,
    /// the "stopped" page otherwise. A failure leaves the URL pending (the
    /// housekeeping thread tries again) and is a warning for the caller.
    pub(super) fn apply_url(&self, e: &Entry, running: bool) -> Option<String> {
        let Some(c) = self.caddy.as_ref().filter(|c| c.enabled()) else {
            // Without Caddy there is no URL to keep in step.
            e.url_pending.store(false, Ordering::Release);
            return None;
        };
        let (id, idle_sleep, idle_paused, state, no_url) = {
            let r = lock(&e.rec);
            (
                r.id.clone(),
                r.idle_pause_secs.is_some(),
                r.idle_paused,
                r.state,
                r.no_url,
            )
        };
        if no_url {
            e.url_pending.store(false, Ordering::Release);
            return None;
        }
        let result = match &self.wake_hook {
            // A VM with idle sleep keeps its proxy while it sleeps: the
            // request wakes it.
            Some(hook) if idle_sleep && (running || idle_paused) => {
                c.add_waking_site(&e.name, e.ip, &format!("/vms/{id}/wake"), hook)
            }
            _ if running => c.add_site(&e.name, e.ip),
            _ if state == VmState::Paused => c.set_paused(&e.name),
            _ => c.set_stopped(&e.name, true, e.ip),
        };
        match result {
            Ok(()) => {
                e.url_pending.store(false, Ordering::Release);
                None
            }
            Err(err) => {
                e.url_pending.store(true, Ordering::Release);
                Some(format!(
                    "URL {} is not live: {}",
                    c.url(&e.name),
                    chain(&err)
                ))
            }
        }
    }
}

/// How a VM is listed: its record, and a word while it is being recovered.
fn view_of(e: &Entry) -> VmView {
    let mut v = lock(&e.rec).view();
    if e.recovering.load(Ordering::Acquire) {
        v.warnings.push(
            "shown as recorded: the daemon is bringing it in line with the host after a restart"
                .into(),
        );
    }
    v
}

/// How a VM directory without a valid record is listed.
pub(super) fn broken_view(id: &VmId, reason: &str) -> VmView {
    VmView {
        id: id.to_string(),
        name: id.to_string(),
        ip: Ipv4Addr::UNSPECIFIED,
        state: "broken".into(),
        backend: "unknown".into(),
        cpus: 0,
        memory_mib: 0,
        disk_bytes: None,
        mac: String::new(),
        tap: id.tap_name(),
        created_at: 0,
        pid: None,
        url: None,
        expose: None,
        warnings: vec![
            format!("no valid record: {reason}"),
            format!("remove it with: fcm destroy {id}"),
        ],
        ready: None,
        ssh_ready: None,
        idle_pause_secs: None,
        idle_paused: false,
        agent: false,
        e2b: None,
        image: None,
        host: None,
    }
}
