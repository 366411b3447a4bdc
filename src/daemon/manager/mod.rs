//! The VM manager: the one owner of VM state. Transports (the HTTP API,
//! the terminal stream) call into it; it drives the host layer.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the table, name resolution, queries, launch and URL helpers |
//! | `cause.rs` | why an operation failed, typed: its kind (conflict, missing, full) and hint |
//! | `operation.rs` | the one guard every operation opens with: in flight, resolved, locked, refreshed, checked; its states recorded from the transition |
//! | `create.rs` | create: validate, reserve, build, undo on failure |
//! | `from_checkpoint.rs` | create --from: a new VM from a checkpoint, with a fork's identity rules |
//! | `template.rs` | the template of the default size: made once (a hidden VM booted and saved), loaded at start |
//! | `warm.rs` | warm create: a create that restores the template (a fork's bring-up), cold if it cannot |
//! | `fork.rs` | fork: the running VM's memory, devices and disk copied into new VMs, each quarantined until it has its own identity |
//! | `exec.rs` | exec (buffered, or the start of a streamed one) and cp, through the guest seam |
//! | `launch.rs` | launching a VM's VMM: disk lock, cgroup, config drive, spec |
//! | `ops.rs` | stop, start, destroy |
//! | `recover.rs` | liveness refresh, housekeeping, recovery after a restart, ending VMMs |
//! | `passes.rs` | the times of recovery, housekeeping and idle passes; waiting for a VM's recovery |
//! | `pause.rs` | pause, resume; the saved-state files, the guest's clock after a load |
//! | `checkpoints.rs` | checkpoints and restore |
//! | `resize.rs` | resize a stopped VM (disk, vCPUs, memory); disk size rules |
//! | `logs.rs` | reading the console log |
//! | `measured.rs` | every public operation timed and told as events (`daemon::events`); the records for the metrics sampler |
//! | `idle.rs` | idle sleep: use, pausing idle VMs, waking them |
//! | `views.rs` | the list, one VM, ssh info, the running record; the URL |
//! | `tests/` | unit tests of every operation through a fake guest and a fake VMM |
//!
//! Locking: `vms` is held only briefly (lookups, reserving names and
//! addresses); each VM has its own operation lock, so a slow create or stop
//! never blocks listing or operating on other VMs. Every operation takes it
//! through one guard (`operation.rs`), which also records the states of
//! its transition (`lifecycle::Transition`: `during`, `to`, `failed`).

mod cause;
mod checkpoints;
mod claims;
mod create;
mod error;
pub mod exec;
mod fork;
mod from_checkpoint;
mod idle;
mod images;
mod launch;
mod logs;
mod measured;
mod operation;
mod ops;
mod passes;
mod pause;
mod recover;
mod resize;
mod template;
#[cfg(test)]
mod tests;
mod views;
mod warm;

use operation::OpLock;
use views::broken_view;

pub use cause::{Cause, Kind};
pub use error::ManagerError;
pub use images::{ImageJob, ImageSource, image_status, is_base};
pub use logs::LOG_CHUNK_MAX;
pub use passes::Pass;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::events::Telemetry;
use super::guest::{Guest, Guests, Target};
use super::lifecycle;
use super::lock;
use super::store::{self, VmRecord};
use crate::config::DaemonConfig;
use crate::error::chain;
use crate::host::caddy::{Caddy, WakeHook};
use crate::host::vmm::{self, Backend, Vmm};
use crate::host::{self, ssh};
use crate::names::{VmId, VmName};

struct Entry {
    /// Serialises long operations on this VM (`operation.rs`).
    op: OpLock,
    /// The record, behind a short lock: never held across a call to
    /// another process, so lookups never wait behind a slow operation.
    rec: Mutex<VmRecord>,
    /// Name and address never change: name resolution reads them without
    /// taking any VM's lock.
    name: VmName,
    ip: Ipv4Addr,
    /// The VM's URL does not yet show its state (Caddy was down, or the
    /// change is deferred to housekeeping).
    url_pending: AtomicBool,
    /// The VMM died: its tap and runtime files wait to be released.
    cleanup_pending: AtomicBool,
    /// The guest runs from a saved state that recovery adopted: its clock
    /// (and a file system frozen for a checkpoint) wait for housekeeping.
    after_load_pending: AtomicBool,
    /// Idle sleep: when the VM was last seen in use.
    activity: Mutex<idle::Activity>,
    /// Loaded at start-up and not yet brought in line with the host:
    /// listed as recorded; operations wait, background passes skip it.
    recovering: AtomicBool,
}

impl Entry {
    fn new(rec: VmRecord) -> Arc<Self> {
        Arc::new(Self {
            op: OpLock::new(),
            name: rec.name.clone(),
            ip: rec.ip,
            rec: Mutex::new(rec),
            url_pending: AtomicBool::new(false),
            cleanup_pending: AtomicBool::new(false),
            after_load_pending: AtomicBool::new(false),
            activity: Mutex::new(idle::Activity::new()),
            recovering: AtomicBool::new(false),
        })
    }
}

pub struct Manager {
    cfg: Arc<DaemonConfig>,
    backend: Backend,
    vms: Mutex<BTreeMap<VmId, Arc<Entry>>>,
    /// VM directories without a valid record, and why (shown as `broken`).
    broken: Mutex<BTreeMap<VmId, String>>,
    caddy: Option<Caddy>,
    key: PathBuf,
    key_pub: String,
    shutting_down: AtomicBool,
    in_flight: AtomicUsize,
    /// Wakes the housekeeping thread early (deferred cleanup, URLs).
    housekeeping_signal: (Mutex<bool>, Condvar),
    /// Where Caddy asks the daemon to wake a VM with idle sleep.
    wake_hook: Option<WakeHook>,
    /// The way into guests (`daemon::guest`).
    guests: Arc<dyn Guests>,
    /// The agent drive a VM booting now gets (`host::agent_drive`); none
    /// without an agent binary.
    agent_drive: Option<String>,
    /// Makes the VMM of a backend (`vmm::make`; a fake in tests).
    vmms: Vmms,
    /// The times of recovery, housekeeping and idle passes.
    passes: Mutex<passes::PassLog>,
    /// Notified as each VM's recovery ends.
    recovery_signal: (Mutex<()>, Condvar),
    /// The template warm creates restore (`template.rs`).
    template: Mutex<template::Slot>,
    /// One image build or import at a time (`images.rs`).
    builds: images::Builds,
    /// One template made at a time (`template.rs`).
    template_builds: Mutex<()>,
    /// The image store (`images.rs`), opened at first use.
    images: std::sync::OnceLock<Result<crate::host::image::Store, String>>,
    /// This host's membership of a cluster (`daemon::cluster`), once set.
    cluster: std::sync::OnceLock<Arc<crate::daemon::cluster::Cluster>>,
    /// The daemon's own handle on the manager, for work on threads of its
    /// own (`Self::set_handle`).
    me: std::sync::OnceLock<std::sync::Weak<Manager>>,
    /// Events and operation numbers (`daemon::events`; `measured.rs`).
    telemetry: Arc<Telemetry>,
}

/// Makes the [`Vmm`] of a backend under a config: [`vmm::make`] in the
/// daemon, a fake in the manager's unit tests.
pub type Vmms = Arc<dyn Fn(Backend, &DaemonConfig) -> Box<dyn Vmm> + Send + Sync>;

impl Manager {
    /// Sets up what the daemon owns (key, the VMs on record, loaded as
    /// recorded); the network and the lock are the caller's, and so is
    /// [`Self::recover`], which brings the VMs in line with the host: the
    /// daemon runs it on a thread of its own while it serves.
    /// `wake_hook`: how Caddy reaches the daemon to wake a sleeping VM
    /// (none: sites of VMs with idle sleep do not wake them).
    pub fn new(
        cfg: Arc<DaemonConfig>,
        caddy: Option<Caddy>,
        wake_hook: Option<WakeHook>,
    ) -> Result<Self, ManagerError> {
        let key = ssh::daemon_key(&cfg.state_dir);
        let guests = Arc::new(super::guest::pick::PickGuests::new(key.clone()));
        Self::loaded(cfg, caddy, wake_hook, guests, Arc::new(vmm::make))
    }

    /// [`Self::new`] with the given ways into guests and to VMMs (the
    /// manager's unit tests give fakes of both), recovered before it returns.
    pub fn with_seams(
        cfg: Arc<DaemonConfig>,
        caddy: Option<Caddy>,
        wake_hook: Option<WakeHook>,
        guests: Arc<dyn Guests>,
        vmms: Vmms,
    ) -> Result<Self, ManagerError> {
        let m = Self::loaded(cfg, caddy, wake_hook, guests, vmms)?;
        m.recover();
        Ok(m)
    }

    fn loaded(
        cfg: Arc<DaemonConfig>,
        caddy: Option<Caddy>,
        wake_hook: Option<WakeHook>,
        guests: Arc<dyn Guests>,
        vmms: Vmms,
    ) -> Result<Self, ManagerError> {
        let key = ssh::daemon_key(&cfg.state_dir);
        let key_pub =
            ssh::ensure_keypair(&key, "fcm-daemon").map_err(|e| ManagerError::Operation {
                action: "key generation",
                name: "daemon".into(),
                cause: Box::new(e.into()),
            })?;
        let agent_drive = Self::current_agent_drive(&cfg);
        let m = Self {
            agent_drive,
            backend: vmm::choose(&cfg),
            cfg,
            vms: Mutex::new(BTreeMap::new()),
            broken: Mutex::new(BTreeMap::new()),
            caddy,
            key,
            key_pub,
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            housekeeping_signal: (Mutex::new(false), Condvar::new()),
            wake_hook,
            guests,
            vmms,
            passes: Mutex::new(passes::PassLog::new()),
            recovery_signal: (Mutex::new(()), Condvar::new()),
            template: Mutex::new(template::Slot::default()),
            builds: images::Builds::default(),
            template_builds: Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
            images: std::sync::OnceLock::new(),
            me: std::sync::OnceLock::new(),
            telemetry: Telemetry::new(),
        };
        m.load();
        Ok(m)
    }

    /// The host's cluster membership (the daemon sets it once at start).
    pub fn set_cluster(&self, c: Arc<crate::daemon::cluster::Cluster>) {
        let _ = self.cluster.set(c);
    }

    pub fn cluster(&self) -> Option<&Arc<crate::daemon::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Gives the manager its own handle, once it is shared: it can then
    /// make image templates in the background.
    pub fn set_handle(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// The drive of the configured agent binary, made if needed; none
    /// (with a line in the log) without one.
    fn current_agent_drive(cfg: &DaemonConfig) -> Option<String> {
        let bin = cfg.asset(&cfg.agent);
        if !bin.is_file() {
            eprintln!(
                "fcm daemon: no guest agent at {} (build it with scripts/build-agent.sh): VMs are reached over SSH only",
                bin.display()
            );
            return None;
        }
        match host::agent_drive::ensure(&cfg.state_dir, &bin) {
            Ok(name) => Some(name),
            Err(e) => {
                eprintln!(
                    "fcm daemon: warning: {}; VMs are reached over SSH only",
                    chain(&e)
                );
                None
            }
        }
    }

    /// Removes the agent drives that no VM and no checkpoint uses.
    fn sweep_agent_drives(&self) {
        let mut keep: std::collections::BTreeSet<String> =
            self.agent_drive.iter().cloned().collect();
        for e in lock(&self.vms).values() {
            let r = lock(&e.rec).clone();
            keep.extend(r.agent_drive.clone());
            keep.extend(self.checkpoint_agent_drives(&r));
        }
        for name in host::agent_drive::sweep(&self.cfg.state_dir, &keep) {
            eprintln!("fcm daemon: removed the agent drive {name}, which no VM uses any more");
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.cfg
    }

    /// fcm's Caddy, when URLs are on.
    pub fn caddy(&self) -> Option<&Caddy> {
        self.caddy.as_ref().filter(|c| c.enabled())
    }

    pub fn daemon_key(&self) -> &Path {
        &self.key
    }

    fn dir(&self, id: &VmId) -> PathBuf {
        store::vm_dir(&self.cfg.state_dir, id)
    }

    pub fn known_hosts(&self, id: &VmId) -> PathBuf {
        self.dir(id).join("known_hosts")
    }

    /// Resolves a user's `<vm>` argument (a name or an id), as it is now
    /// ([`Self::resolve`] waits for its recovery). Takes the table lock
    /// only, never a VM's.
    fn resolve_now(&self, vm: &str) -> Result<(VmId, Arc<Entry>), ManagerError> {
        let as_id = VmId::parse(vm).ok();
        let as_name = VmName::parse(vm).ok();
        if as_id.is_none() && as_name.is_none() {
            return Err(VmName::parse(vm)
                .err()
                .map(Into::into)
                .unwrap_or(ManagerError::NotFound(vm.into())));
        }
        let vms = lock(&self.vms);
        let by_id = as_id.as_ref().and_then(|id| vms.get_key_value(id));
        let by_name = as_name
            .as_ref()
            .and_then(|n| vms.iter().find(|(_, e)| &e.name == n));
        match (by_id, by_name) {
            (Some(a), Some(b)) if a.0 != b.0 => Err(ManagerError::Ambiguous(vm.into())),
            (Some((id, e)), _) | (None, Some((id, e))) => Ok((id.clone(), Arc::clone(e))),
            (None, None) => {
                drop(vms);
                match as_id.and_then(|id| lock(&self.broken).get(&id).cloned().map(|r| (id, r))) {
                    Some((id, reason)) => Err(ManagerError::Broken {
                        id: id.to_string(),
                        reason,
                    }),
                    None => Err(ManagerError::NotFound(vm.into())),
                }
            }
        }
    }

    /// Refuses new operations from now on; returns once those under way
    /// have reached a recorded state, or `grace` has passed (false).
    pub fn shut_down(&self, grace: Duration) -> bool {
        self.shutting_down.store(true, Ordering::Release);
        let settled = host::wait_until(grace, Duration::from_millis(50), || {
            (self.in_flight.load(Ordering::Acquire) == 0).then_some(())
        })
        .is_some();
        // A template being made is no VM: its hidden VM goes with the daemon.
        self.sweep_template_build();
        settled
    }

    /// Saves a record, then makes it the entry's: what is in memory is
    /// never ahead of what is on disk.
    /// The one place a VM's state changes: the change is an event.
    fn save(&self, e: &Entry, rec: &VmRecord) -> Result<(), store::StoreError> {
        store::save(&self.cfg.state_dir, rec)?;
        let from = std::mem::replace(&mut *lock(&e.rec), rec.clone()).state;
        if from != rec.state {
            self.telemetry.state(
                rec.name.as_str(),
                rec.id.as_str(),
                Some(from.as_str()),
                rec.state.as_str(),
            );
        }
        Ok(())
    }

    /// Asks the housekeeping thread to run now.
    fn wake_housekeeping(&self) {
        let (flag, cv) = &self.housekeeping_signal;
        *lock(flag) = true;
        cv.notify_one();
    }

    /// Waits up to `timeout` for [`Self::wake_housekeeping`].
    pub fn wait_for_work(&self, timeout: Duration) {
        let (flag, cv) = &self.housekeeping_signal;
        let mut woken = lock(flag);
        if !*woken {
            woken = cv
                .wait_timeout(woken, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *woken = false;
    }

    fn vmm_for(&self, backend: Backend) -> Box<dyn Vmm> {
        (self.vmms)(backend, &self.cfg)
    }

    /// Fails with 503-style errors when an asset or binary is missing.
    fn check_prerequisites(&self, backend: Backend) -> Result<(), ManagerError> {
        const SETUP: &str =
            "run scripts/setup.sh (see README) or set the path in the daemon config";
        let kernel = self.cfg.asset(&self.cfg.kernel);
        if !kernel.is_file() {
            return Err(ManagerError::Missing {
                what: "guest kernel",
                path: kernel,
                hint: SETUP,
            });
        }
        let rootfs = self.cfg.asset(&self.cfg.rootfs);
        if !rootfs.is_file() {
            return Err(ManagerError::Missing {
                what: "base rootfs",
                path: rootfs,
                hint: SETUP,
            });
        }
        let vmm = self.vmm_for(backend);
        if host::find_program(vmm.binary()).is_none() {
            let (what, hint) = match backend {
                Backend::Firecracker => (
                    "firecracker binary",
                    "run scripts/install-firecracker.sh, or set firecracker_bin",
                ),
                Backend::Qemu => (
                    "qemu-system-x86_64",
                    "apt-get install qemu-system-x86, or set qemu_bin",
                ),
            };
            return Err(ManagerError::Missing {
                what,
                path: vmm.binary().to_owned(),
                hint,
            });
        }
        Ok(())
    }

    /// Who must own the VM's tap: the VM's user when its VMM opens the
    /// tap itself as that user (jailed Firecracker). QEMU gets the tap as a
    /// descriptor the daemon opened.
    fn tap_owner(&self, rec: &VmRecord) -> Option<(u32, u32)> {
        (rec.backend == Backend::Firecracker && self.cfg.jailer.enabled)
            .then(|| self.cfg.vm_user(rec.ip))
    }

    fn initrd(&self) -> Option<PathBuf> {
        let p = self.cfg.asset(&self.cfg.initrd);
        p.is_file().then_some(p)
    }

    fn cmdline(&self, rec: &VmRecord) -> String {
        let mut line = format!(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip={}::{}:{}:{}:eth0:on fcm.dns={}",
            rec.ip,
            self.cfg.gateway,
            self.cfg.netmask(),
            rec.name,
            self.cfg.dns
        );
        if rec.image.is_some() {
            // The initramfs boots it with fcm's init (`fcm-agent init`).
            line.push(' ');
            line.push_str(fcm_proto::IMAGE_BOOT_PARAM);
        }
        line
    }

    /// What the guest seam needs to reach a VM.
    pub fn target(&self, r: &VmRecord) -> Target {
        self.target_in(self.dir(&r.id), r)
    }

    /// [`Self::target`] of a VM whose files are in `dir`.
    fn target_in(&self, dir: PathBuf, r: &VmRecord) -> Target {
        Target {
            id: r.id.clone(),
            name: r.name.clone(),
            ip: r.ip,
            agent: r.agent_drive.as_ref().map(|_| {
                self.vmm_for(r.backend)
                    .agent_channel(&dir, fcm_proto::VSOCK_PORT)
            }),
            dir,
        }
    }

    /// The way into a VM's guest.
    pub fn guest(&self, r: &VmRecord) -> Box<dyn Guest> {
        self.guests.guest(&self.target(r))
    }

    /// The VM left `running`: connections kept open to its guest go.
    fn forget_guest(&self, r: &VmRecord) {
        self.guests.forget(&self.target(r));
    }

    /// Waits until a VM's guest takes operations (after create, start,
    /// resume, restore), at most `ssh_timeout_secs`.
    pub fn wait_ready(&self, vm: &str) -> bool {
        let Ok((_, e)) = self.resolve(vm) else {
            return false;
        };
        let r = lock(&e.rec).clone();
        self.guest(&r)
            .wait_ready(Duration::from_secs(self.cfg.ssh_timeout_secs))
    }
}

fn wrong_state(r: &VmRecord, w: lifecycle::WrongState) -> ManagerError {
    ManagerError::WrongState {
        name: r.name.to_string(),
        state: w.state.as_str(),
        wanted: w.wanted,
        action: w.action,
    }
}
