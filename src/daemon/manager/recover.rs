//! Keeping the table true to the host: liveness refresh, housekeeping,
//! and recovery after a daemon restart.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;

use super::{Entry, Manager};
use crate::daemon::lifecycle::VmState;
use crate::daemon::lock;
use crate::daemon::store::{self, VmRecord};
use crate::error::chain;
use crate::host::{self, network, vmm};
use crate::names::VmName;

impl Manager {
    /// Marks a VM whose VMM died as stopped and releases its host resources.
    /// Skipped while another operation holds the VM.
    pub(super) fn refresh(&self, e: &Entry) {
        let Ok(_op) = e.op.try_lock() else { return };
        let mut r = lock(&e.rec);
        if r.state != VmState::Running {
            return;
        }
        let dir = self.dir(&r.id);
        let alive = r
            .pid
            .is_some_and(|p| host::process_alive(p, &dir.to_string_lossy()));
        if !alive {
            self.release_runtime(&r);
            r.state = VmState::Stopped;
            r.pid = None;
            if let Err(err) = store::save(&self.cfg.state_dir, &r) {
                eprintln!("fcm: warning: {}", chain(&err));
            }
            if let Some(w) = self.mark_url(&r, true) {
                eprintln!("fcm: warning: {w}");
            }
        }
    }

    /// Removes the tap and the VMM's runtime files of a VM that is not running.
    pub(super) fn release_runtime(&self, r: &VmRecord) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = network::delete_tap(&r.tap) {
            errors.push(chain(&e));
        }
        let dir = self.dir(&r.id);
        for f in self.vmm_for(r.backend).runtime_files() {
            let _ = fs::remove_file(dir.join(f));
        }
        errors
    }

    /// Housekeeping run periodically by the daemon.
    pub fn tick(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        for e in entries {
            self.refresh(&e);
            let id = lock(&e.rec).id.clone();
            vmm::cap_console_log(&self.dir(&id), self.cfg.console_log_max_bytes);
        }
    }

    /// Removes Caddy sites of VMs that no longer exist (after a crash).
    pub fn prune_sites(&self) {
        let Some(c) = self.caddy.as_ref().filter(|c| c.enabled()) else {
            return;
        };
        let names: BTreeSet<VmName> = lock(&self.vms)
            .values()
            .map(|e| lock(&e.rec).name.clone())
            .collect();
        match c.prune_sites(&|n: &VmName| names.contains(n)) {
            Ok(pruned) => {
                for n in pruned {
                    eprintln!("fcm: removed the Caddy site of {n}, which no longer exists");
                }
            }
            Err(e) => eprintln!("fcm: warning: could not prune Caddy sites: {}", chain(&e)),
        }
    }

    /// Rebuilds the table from disk after a (re)start: running VMs whose
    /// VMM is alive stay running; dead ones become stopped; half-made
    /// creates are undone; taps of VMs that no longer exist are removed.
    pub(super) fn recover(&self) {
        let found = match store::scan(&self.cfg.state_dir) {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "fcm: warning: cannot scan {}: {e}",
                    self.cfg.state_dir.display()
                );
                Vec::new()
            }
        };
        let mut vms = lock(&self.vms);
        for (id, rec) in found {
            let mut rec = match rec {
                Ok(r) if r.id == id => r,
                Ok(_) => {
                    eprintln!(
                        "fcm: warning: {} holds a record of another id; left alone",
                        self.dir(&id).display()
                    );
                    continue;
                }
                Err(e) => {
                    eprintln!("fcm: warning: {}; left alone", chain(&e));
                    continue;
                }
            };
            match rec.state {
                VmState::Creating => {
                    eprintln!("fcm: undoing the interrupted create of {}", rec.name);
                    self.undo_create(&rec);
                    continue;
                }
                VmState::Running => {
                    let alive = rec
                        .pid
                        .is_some_and(|p| host::process_alive(p, &self.dir(&id).to_string_lossy()));
                    if !alive {
                        eprintln!("fcm: {} is no longer running; marked stopped", rec.name);
                        self.release_runtime(&rec);
                        rec.state = VmState::Stopped;
                        rec.pid = None;
                        if let Err(e) = store::save(&self.cfg.state_dir, &rec) {
                            eprintln!("fcm: warning: {}", chain(&e));
                        }
                    }
                }
                VmState::Stopped => {
                    self.release_runtime(&rec);
                }
            }
            vms.insert(id, Entry::new(rec));
        }
        for id in network::list_taps() {
            if !vms.contains_key(&id) {
                eprintln!("fcm: removing leftover tap {}", id.tap_name());
                if let Err(e) = network::delete_tap(&id.tap_name()) {
                    eprintln!("fcm: warning: {}", chain(&e));
                }
            }
        }
    }
}
