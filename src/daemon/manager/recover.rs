//! Keeping the table true to the host: liveness refresh, housekeeping,
//! and recovery after a daemon restart.
//!
//! The record is a cache of the host's truth. The truth is: is a VMM
//! running on this VM's disk (found by scanning processes, and by the disk
//! lock that only a live VMM holds)? Recovery converges every record to it
//! through `lifecycle::recover`; housekeeping keeps doing so while the
//! daemon runs, and does the slow host work (tap removal, Caddy) that a
//! lookup must never wait for.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Entry, Manager};
use crate::daemon::lifecycle::{self, Recovery, Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::{self, VmRecord};
use crate::error::chain;
use crate::host::{self, Signal, cgroup, disk_lock, network, vmm};
use crate::names::VmName;

impl Manager {
    /// Ends every VMM of a VM: its recorded pid and any other found on the host.
    pub(super) fn kill_vmms(&self, r: &VmRecord) {
        let dir = self.dir(&r.id);
        let mut pids = vmm::find_vmms(&dir);
        pids.extend(r.pid);
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            self.kill(pid, &dir);
        }
    }

    pub(super) fn kill(&self, pid: u32, dir: &Path) {
        if !vmm::is_vmm_of(pid, dir) {
            return;
        }
        host::signal(pid, Signal::TERM);
        // Gone once its disk is let go too: an exiting process loses its
        // command line (its memory) before it closes its files, and a
        // daemon that crashed in between must not find the disk held.
        let rootfs = dir.join("rootfs.img");
        let gone = || (!vmm::is_vmm_of(pid, dir) && !disk_lock::in_use(&rootfs)).then_some(());
        if host::wait_until(Duration::from_secs(3), Duration::from_millis(20), gone).is_none() {
            host::signal(pid, Signal::KILL);
            let _ = host::wait_until(Duration::from_secs(3), Duration::from_millis(20), gone);
        }
    }

    /// Whether a VMM runs this VM right now: its recorded pid (checked
    /// against its command line), any VMM process naming its directory, or
    /// the disk lock held.
    fn vmm_alive(&self, r: &VmRecord) -> Option<u32> {
        let dir = self.dir(&r.id);
        if let Some(pid) = r.pid
            && vmm::is_vmm_of(pid, &dir)
        {
            return Some(pid);
        }
        vmm::find_vmms(&dir).first().copied().or_else(|| {
            // Held, but the process was not found: one still exiting (its
            // memory, and so its command line, gone before its files are
            // closed: a kill the crashed daemon sent just before) lets go
            // within moments; one that holds on (e.g. renamed itself) is
            // alive all the same, its pid unknown.
            let rootfs = dir.join("rootfs.img");
            let released = || (!disk_lock::in_use(&rootfs)).then_some(());
            host::wait_until(Duration::from_secs(3), Duration::from_millis(20), released)
                .is_none()
                .then_some(0)
        })
    }

    /// Marks a running VM whose VMM has died as stopped. Fast and never
    /// calls another program: the tap and the URL are left to housekeeping.
    /// Skipped while another operation holds the VM, or recovery has yet
    /// to reach it.
    pub(super) fn refresh(&self, e: &Entry) {
        if e.recovering.load(Ordering::Acquire) {
            return;
        }
        let Some(_op) = e.op.try_hold() else { return };
        self.refresh_held(e);
    }

    /// [`Self::refresh`], by the holder of the VM's operation lock (an
    /// operation's guard, before it checks its transition).
    pub(super) fn refresh_held(&self, e: &Entry) {
        let mut r = lock(&e.rec).clone();
        let (Ok(()), Some(stopped)) = (Transition::Died.check(r.state), Transition::Died.to())
        else {
            return;
        };
        let dir = self.dir(&r.id);
        let alive = r.pid.is_some_and(|p| vmm::is_vmm_of(p, &dir))
            || disk_lock::in_use(&dir.join("rootfs.img"));
        if alive {
            return;
        }
        r.state = stopped;
        r.pid = None;
        if let Err(err) = self.save(e, &r) {
            eprintln!("fcm: warning: {}", chain(&err));
        }
        e.cleanup_pending.store(true, Ordering::Release);
        e.url_pending.store(true, Ordering::Release);
        self.wake_housekeeping();
    }

    /// Removes the tap and the VMM's runtime files of a VM that is not running.
    pub(super) fn release_runtime(&self, r: &VmRecord) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = network::delete_tap(&self.cfg, &r.tap) {
            errors.push(chain(&e));
        }
        let dir = self.dir(&r.id);
        let vmm = self.vmm_for(r.backend);
        for f in vmm.runtime_files() {
            let _ = fs::remove_file(dir.join(f));
        }
        for d in vmm.runtime_dirs() {
            match fs::remove_dir_all(dir.join(d)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("could not remove {}: {e}", dir.join(d).display())),
            }
        }
        errors.extend(cgroup::release(&self.cfg.cgroup, &dir));
        errors
    }

    /// A VMM found running without its disk's lock (the daemon died before
    /// handing it to a jailed VMM) gets it now, in its own descriptor.
    fn rearm_disk_lock(&self, r: &VmRecord, pid: u32) {
        let disk = self.dir(&r.id).join("rootfs.img");
        if pid == 0 || disk_lock::in_use(&disk) {
            return;
        }
        match disk_lock::lock_in(pid, &disk) {
            Ok(()) => eprintln!("fcm: {}: its VMM holds its disk's lock again", r.name),
            Err(e) => eprintln!("fcm: warning: {}", chain(&e)),
        }
    }

    /// The slow work a refresh deferred: release a dead VM's tap and its
    /// guest connection, bring its URL in line with its state. Skipped
    /// while an operation holds the VM.
    fn converge(&self, e: &Entry) {
        let Some(_op) = e.op.try_hold() else { return };
        let r = lock(&e.rec).clone();
        if e.cleanup_pending.swap(false, Ordering::AcqRel) && !lifecycle::has_vmm(r.state) {
            // The VM left `running` when its VMM died: a connection kept
            // open to its guest goes too (a restart would otherwise
            // find it, stale, serving the new guest's address).
            self.forget_guest(&r);
            for err in self.release_runtime(&r) {
                eprintln!("fcm: warning: {err}");
            }
        }
        if e.url_pending.load(Ordering::Acquire)
            && matches!(
                r.state,
                VmState::Running | VmState::Stopped | VmState::Paused
            )
        {
            let publishing = self.caddy.as_ref().is_some_and(|c| c.enabled());
            match self.apply_url(e, r.state == VmState::Running) {
                None if publishing => eprintln!(
                    "fcm: the URL of {} now shows it {}",
                    r.name,
                    r.state.as_str()
                ),
                None => {}
                Some(w) => eprintln!("fcm: warning: {w} (will try again)"),
            }
        }
    }

    /// Housekeeping, run by the daemon's housekeeping thread.
    pub fn tick(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.vms)
            .values()
            .filter(|e| !e.recovering.load(Ordering::Acquire))
            .cloned()
            .collect();
        for e in entries {
            self.refresh(&e);
            self.converge(&e);
            if e.after_load_pending.load(Ordering::Acquire)
                && let Some(_op) = e.op.try_hold()
            {
                e.after_load_pending.store(false, Ordering::Release);
                let r = lock(&e.rec).clone();
                if r.state == VmState::Running
                    && let Some(w) = self.guest_after_load(&r)
                {
                    eprintln!("fcm: warning: {}: {w}", r.name);
                }
            }
            let id = lock(&e.rec).id.clone();
            vmm::cap_console_log(&self.dir(&id), self.cfg.console_log_max_bytes);
        }
    }

    /// Removes Caddy sites of VMs that no longer exist (after a crash).
    pub fn prune_sites(&self) {
        let Some(c) = self.caddy.as_ref().filter(|c| c.enabled()) else {
            return;
        };
        let names: BTreeSet<VmName> = lock(&self.vms).values().map(|e| e.name.clone()).collect();
        match c.prune_sites(&|n: &VmName| names.contains(n)) {
            Ok(pruned) => {
                for n in pruned {
                    eprintln!("fcm: removed the Caddy site of {n}, which no longer exists");
                }
            }
            Err(e) => eprintln!("fcm: warning: could not prune Caddy sites: {}", chain(&e)),
        }
    }

    /// Finishes what a crash interrupted in the state dir itself: `.new-*`
    /// (a create that never had its directory) and `.trash-*` (a destroy
    /// that renamed the directory away) are removed.
    fn sweep_state_dir(&self) {
        let Ok(dir) = fs::read_dir(&self.cfg.state_dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.starts_with(".new-") || name.starts_with(".trash-"))
                && entry.file_type().is_ok_and(|t| t.is_dir())
            {
                eprintln!("fcm: removing {name}, left by an interrupted operation");
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    eprintln!("fcm: warning: could not remove {name}: {e}");
                }
            }
        }
    }

    /// Loads the table from disk at start-up, every VM as recorded and
    /// marked as being recovered (listed, but operations wait for
    /// [`Self::recover`]). Directories without a valid record are listed as
    /// broken, never silently kept or deleted. What a crash left in the
    /// state dir itself (`.new-*`, `.trash-*`) goes first, before any new
    /// create can make one.
    pub(super) fn load(&self) {
        self.sweep_state_dir();
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
        for (id, rec) in found {
            match rec {
                Ok(r) if r.id == id => {
                    let e = Entry::new(r);
                    e.recovering.store(true, Ordering::Release);
                    lock(&self.vms).insert(id, e);
                }
                Ok(r) => {
                    let reason = format!("its record is of another id, {}", r.id);
                    eprintln!("fcm: warning: {}: {reason}", self.dir(&id).display());
                    lock(&self.broken).insert(id, reason);
                }
                Err(e) => {
                    let reason = chain(&e);
                    eprintln!("fcm: warning: {reason}; listed as broken");
                    lock(&self.broken).insert(id, reason);
                }
            }
        }
        let vms = lock(&self.vms).len() + lock(&self.broken).len();
        self.recovery_began(vms);
    }

    /// Brings every VM loaded at start-up in line with the host (see
    /// `lifecycle::recover`), one at a time under its operation lock, while
    /// the API serves: `ls` shows the others as recorded, an operation on
    /// one waits for it. Then removes the taps of VMs that no longer exist
    /// and the agent drives no VM uses. URLs are brought in line with the
    /// VMs' states by housekeeping.
    pub fn recover(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.vms)
            .values()
            .filter(|e| e.recovering.load(Ordering::Acquire))
            .cloned()
            .collect();
        for e in entries {
            let recovered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.recover_entry(&e);
            }));
            if recovered.is_err() {
                eprintln!(
                    "fcm daemon: the recovery of {} panicked (a bug); it is kept as recorded",
                    e.name
                );
            }
            self.recovered(&e);
        }
        // Taps first, then the table: a create under way inserts its entry
        // before it makes its tap, so every tap listed here has its VM in
        // the table read after.
        let taps = network::list_taps();
        let known: BTreeSet<_> = lock(&self.vms)
            .keys()
            .chain(lock(&self.broken).keys())
            .cloned()
            .collect();
        for id in taps {
            if !known.contains(&id) {
                eprintln!("fcm: removing leftover tap {}", id.tap_name());
                if let Err(e) = network::delete_tap(&self.cfg, &id.tap_name()) {
                    eprintln!("fcm: warning: {}", chain(&e));
                }
            }
        }
        self.sweep_agent_drives();
        let took = self.recovery_ended();
        let p = self.passes().recovery;
        eprintln!(
            "fcm daemon: recovered the {} VMs on record in {:.2} s (the API served meanwhile)",
            p.vms,
            took.as_secs_f64()
        );
        self.wake_housekeeping();
    }

    /// One loaded VM's recovery, under its operation lock: its record
    /// converged to the host, or the VM dropped from the table when it is
    /// gone (a create undone, a destroy finished).
    fn recover_entry(&self, e: &Arc<Entry>) {
        let _op = e.op.hold();
        let rec = lock(&e.rec).clone();
        let (id, was) = (rec.id.clone(), rec.state);
        match self.recover_one(rec) {
            Some(rec) => {
                let running = rec.state == VmState::Running;
                *lock(&e.rec) = rec;
                e.url_pending.store(true, Ordering::Release);
                if running
                    && matches!(
                        was,
                        VmState::Pausing
                            | VmState::Resuming
                            | VmState::Checkpointing
                            | VmState::Restoring
                            | VmState::Forking
                    )
                {
                    e.after_load_pending.store(true, Ordering::Release);
                }
            }
            None => {
                lock(&self.vms).remove(&id);
            }
        }
    }

    /// One VM's recovery; `None` when the VM is gone (undone or destroyed).
    fn recover_one(&self, mut rec: VmRecord) -> Option<VmRecord> {
        if rec.state == VmState::Creating && rec.identity_pending {
            // Made from another's memory and not yet its own: never adopted
            // (its guest may still have its source's MAC and address).
            eprintln!(
                "fcm: undoing the interrupted fork {}: it had not taken its own identity",
                rec.name
            );
            self.undo_create(&rec);
            return None;
        }
        let mut alive = self.vmm_alive(&rec);
        if rec.state == VmState::Stopping && alive.is_some() {
            // A stop was under way: its guest may be shutting down (told
            // before the daemon died), its VMM about to exit. Give it the
            // stop's time, so that the VM ends stopped as asked rather than
            // adopted running only to stop a moment later.
            let secs = self.cfg.stop_timeout_secs.clamp(1, 10);
            let gone = || self.vmm_alive(&rec).is_none().then_some(());
            if host::wait_until(Duration::from_secs(secs), Duration::from_millis(100), gone)
                .is_some()
            {
                alive = None;
            }
        }
        let was = rec.state;
        let saved = self.saved_dir(&rec.id).is_dir();
        let action = lifecycle::recover(rec.state, alive.is_some(), saved);
        // The state it converges to, if it changes (`Recovery::to`).
        let converged = action.to().unwrap_or(rec.state);
        if let Some(pid) = alive {
            self.rearm_disk_lock(&rec, pid);
        }
        let save = |rec: &VmRecord| {
            if let Err(e) = store::save(&self.cfg.state_dir, rec) {
                eprintln!("fcm: warning: {}", chain(&e));
            }
        };
        match action {
            Recovery::Keep => {
                if !lifecycle::has_vmm(rec.state) {
                    self.release_runtime(&rec);
                } else {
                    // Running on: its rules came with the policy at
                    // start-up; this re-asserts them and the port's
                    // isolation under the policy now configured.
                    if let Err(e) = network::create_tap(&self.cfg, &rec.nic()) {
                        eprintln!("fcm: warning: {}", chain(&e));
                    }
                    if let Some(pid) = alive.filter(|p| *p != 0 && rec.pid != Some(*p)) {
                        rec.pid = Some(pid);
                        save(&rec);
                    }
                }
            }
            Recovery::Adopt => {
                eprintln!(
                    "fcm: {} was recorded {} but its VMM runs: adopted as running",
                    rec.name,
                    was.as_str()
                );
                // The tap exists while the VMM holds it; this makes sure
                // it is on the bridge and up, with its rules and isolation.
                if let Err(e) = network::create_tap(&self.cfg, &rec.nic()) {
                    eprintln!("fcm: warning: {}", chain(&e));
                }
                rec.state = converged;
                if let Some(pid) = alive.filter(|p| *p != 0) {
                    rec.pid = Some(pid);
                }
                save(&rec);
            }
            Recovery::AdoptContinue => {
                eprintln!(
                    "fcm: {} was recorded {} and its VMM runs: adopted as running, its guest continues",
                    rec.name,
                    was.as_str()
                );
                if let Err(e) = network::create_tap(&self.cfg, &rec.nic()) {
                    eprintln!("fcm: warning: {}", chain(&e));
                }
                // Its vCPUs may be stopped, or a save still under way
                // (continue_guest ends it first). A guest frozen for a
                // checkpoint thaws by itself (the agent's freeze watchdog).
                if let Err(e) = self.vmm_for(rec.backend).continue_guest(&self.dir(&rec.id)) {
                    eprintln!("fcm: warning: {}: {}", rec.name, chain(&e));
                }
                rec.state = converged;
                if let Some(pid) = alive.filter(|p| *p != 0) {
                    rec.pid = Some(pid);
                }
                save(&rec);
            }
            Recovery::MarkPaused => {
                eprintln!(
                    "fcm: {} ({}) has no VMM and a complete saved state: marked paused",
                    rec.name,
                    was.as_str()
                );
                self.release_runtime(&rec);
                rec.state = converged;
                rec.pid = None;
                save(&rec);
            }
            Recovery::MarkStopped => {
                eprintln!(
                    "fcm: {} ({}) has no VMM any more; marked stopped",
                    rec.name,
                    was.as_str()
                );
                self.release_runtime(&rec);
                rec.state = converged;
                rec.pid = None;
                save(&rec);
            }
            Recovery::UndoCreate => {
                eprintln!("fcm: undoing the interrupted create of {}", rec.name);
                self.undo_create(&rec);
                return None;
            }
            Recovery::FinishDestroy => {
                eprintln!("fcm: finishing the interrupted destroy of {}", rec.name);
                for e in self.finish_destroy(&rec) {
                    eprintln!("fcm: warning: destroying {}: {e}", rec.name);
                }
                if self.dir(&rec.id).exists() {
                    // Keep it listed (destroying) so the user can retry.
                    return Some(rec);
                }
                return None;
            }
        }
        self.sweep_vm_dir(&rec);
        Some(rec)
    }
}
