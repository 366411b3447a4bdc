//! The VM table and every operation on a VM. The manager is the one owner of
//! VM state: transports (the HTTP API, the terminal stream) call into it.
//!
//! Locking: `vms` is held only briefly (lookups, reserving names and
//! addresses); each VM has its own operation lock, so a slow create or stop
//! never blocks listing or operating on other VMs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::caddy::Caddy;
use crate::config::DaemonConfig;
use crate::disk::{self, GuestFile};
use crate::host;
use crate::names::{NameError, VmId, VmName};
use crate::network;
use crate::ssh;
use crate::store::{self, Backend, Expose, VmRecord, VmState};
use crate::vmm::{self, LaunchSpec, Vmm};

#[derive(Debug, Error)]
pub enum ManagerError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("no VM named or with id {0:?}")]
    NotFound(String),
    #[error("{0:?} is ambiguous: it is the name of one VM and the id of another; use the id")]
    Ambiguous(String),
    #[error("VM {name} is {state}; it must be {wanted} to {action}")]
    WrongState {
        name: String,
        state: &'static str,
        wanted: &'static str,
        action: &'static str,
    },
    #[error("a VM named {0} already exists")]
    NameTaken(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("{what} not found at {path}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("no free IP address in the pool {0}")]
    PoolExhausted(String),
    #[error("create failed at step \"{step}\": {message}")]
    CreateStep { step: &'static str, message: String },
    #[error("{action} of VM {name} failed: {message}")]
    Operation {
        action: &'static str,
        name: String,
        message: String,
    },
}

impl ManagerError {
    /// What the user should do next, naming the VM where that helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Missing { hint, .. } => Some((*hint).into()),
            Self::NotFound(_) => Some("list VMs with: fcm ls".into()),
            Self::WrongState {
                name,
                wanted: "running",
                ..
            } => Some(format!("start it with: fcm start {name}")),
            Self::WrongState {
                name,
                wanted: "stopped",
                ..
            } => Some(format!("stop it first with: fcm stop {name}")),
            _ => None,
        }
    }
}

/// Formats an error with its whole chain of causes.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Body of `POST /vms`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub cpus: Option<u8>,
    pub memory_mib: Option<u32>,
    pub ssh_public_key: Option<String>,
    /// Return only once the guest's SSH answers (default true).
    pub wait_ssh: Option<bool>,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    pub id: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub state: String,
    pub backend: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub mac: String,
    pub tap: String,
    pub created_at: u64,
    pub pid: Option<u32>,
    pub url: Option<String>,
    pub expose: Option<Expose>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ready: Option<bool>,
}

impl VmView {
    fn of(rec: &VmRecord) -> Self {
        Self {
            id: rec.id.to_string(),
            name: rec.name.to_string(),
            ip: rec.ip,
            state: rec.state.as_str().into(),
            backend: rec.backend.as_str().into(),
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
            mac: rec.mac.clone(),
            tap: rec.tap.clone(),
            created_at: rec.created_at,
            pid: rec.pid,
            url: rec.expose.as_ref().map(|e| format!("https://{}", e.domain)),
            expose: rec.expose.clone(),
            warnings: Vec::new(),
            ssh_ready: None,
        }
    }
}

/// What `fcm ssh` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshInfo {
    pub id: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub user: String,
    pub port: u16,
    pub state: String,
    pub host_key: Option<String>,
}

struct Entry {
    /// Serialises long operations on this VM.
    op: Mutex<()>,
    rec: Mutex<VmRecord>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another request must not take the daemon down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Manager {
    cfg: Arc<DaemonConfig>,
    backend: Backend,
    vms: Mutex<BTreeMap<VmId, Arc<Entry>>>,
    caddy: Option<Caddy>,
    key: PathBuf,
    key_pub: String,
}

const CPUS_MAX: u8 = 32;
const MEMORY_RANGE: std::ops::RangeInclusive<u32> = 64..=262_144;
const KEY_MAX: usize = 16 * 1024;

impl Manager {
    /// Sets up what the daemon owns (key, recovered VMs); the network and
    /// the lock are the caller's.
    pub fn new(cfg: Arc<DaemonConfig>, caddy: Option<Caddy>) -> Result<Self, ManagerError> {
        let key = ssh::daemon_key(&cfg.state_dir);
        let key_pub =
            ssh::ensure_keypair(&key, "fcm-daemon").map_err(|e| ManagerError::Operation {
                action: "key generation",
                name: "daemon".into(),
                message: chain(&e),
            })?;
        let m = Self {
            backend: vmm::choose(&cfg),
            cfg,
            vms: Mutex::new(BTreeMap::new()),
            caddy,
            key,
            key_pub,
        };
        m.recover();
        Ok(m)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.cfg
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

    /// Resolves a user's `<vm>` argument (a name or an id).
    fn resolve(&self, vm: &str) -> Result<(VmId, Arc<Entry>), ManagerError> {
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
            .and_then(|n| vms.iter().find(|(_, e)| &lock(&e.rec).name == n));
        match (by_id, by_name) {
            (Some(a), Some(b)) if a.0 != b.0 => Err(ManagerError::Ambiguous(vm.into())),
            (Some((id, e)), _) | (None, Some((id, e))) => Ok((id.clone(), Arc::clone(e))),
            (None, None) => Err(ManagerError::NotFound(vm.into())),
        }
    }

    fn vmm_for(&self, backend: Backend) -> Box<dyn Vmm> {
        vmm::make(backend, &self.cfg)
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

    fn initrd(&self) -> Option<PathBuf> {
        let p = self.cfg.asset(&self.cfg.initrd);
        p.is_file().then_some(p)
    }

    fn cmdline(&self, rec: &VmRecord) -> String {
        format!(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip={}::{}:{}:{}:eth0:on fcm.dns={}",
            rec.ip,
            self.cfg.gateway,
            self.cfg.netmask(),
            rec.name,
            self.cfg.dns
        )
    }

    // ----- queries -----

    pub fn list(&self) -> Vec<VmView> {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        let mut out: Vec<VmView> = entries
            .iter()
            .map(|e| {
                self.refresh(e);
                VmView::of(&lock(&e.rec))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn get(&self, vm: &str) -> Result<VmView, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        Ok(VmView::of(&lock(&e.rec)))
    }

    pub fn ssh_info(&self, vm: &str) -> Result<SshInfo, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        let r = lock(&e.rec);
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

    /// The record of a running VM, for the session layer.
    pub fn running(&self, vm: &str) -> Result<VmRecord, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        self.refresh(&e);
        let r = lock(&e.rec).clone();
        require_state(&r, VmState::Running, "use it")?;
        Ok(r)
    }

    /// Marks a VM whose VMM died as stopped and releases its host resources.
    /// Skipped while another operation holds the VM.
    fn refresh(&self, e: &Entry) {
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
    fn release_runtime(&self, r: &VmRecord) -> Vec<String> {
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

    // ----- create -----

    pub fn create(&self, req: CreateRequest) -> Result<VmView, ManagerError> {
        let cpus = req.cpus.unwrap_or(self.cfg.default_cpus);
        if cpus == 0 || cpus > CPUS_MAX {
            return Err(ManagerError::BadRequest(format!(
                "cpus must be between 1 and {CPUS_MAX}"
            )));
        }
        let memory_mib = req.memory_mib.unwrap_or(self.cfg.default_memory_mib);
        if !MEMORY_RANGE.contains(&memory_mib) {
            return Err(ManagerError::BadRequest(format!(
                "memory_mib must be between {} and {}",
                MEMORY_RANGE.start(),
                MEMORY_RANGE.end()
            )));
        }
        let wanted_name = req.name.as_deref().map(VmName::parse).transpose()?;
        let user_key = req
            .ssh_public_key
            .as_deref()
            .map(validate_public_key)
            .transpose()?;
        let backend = self.backend;
        self.check_prerequisites(backend)?;

        // Reserve id, name and address while holding the table lock.
        let entry;
        let rec;
        {
            let mut vms = lock(&self.vms);
            let records: Vec<VmRecord> = vms.values().map(|e| lock(&e.rec).clone()).collect();
            let taken = |n: &VmName| records.iter().any(|r| &r.name == n);
            let name = match wanted_name {
                Some(n) if taken(&n) => return Err(ManagerError::NameTaken(n.to_string())),
                Some(n) => n,
                None => VmName::random_unique(&taken),
            };
            let used: BTreeSet<Ipv4Addr> = records.iter().map(|r| r.ip).collect();
            let ip = network::allocate_ip(&self.cfg, &used).map_err(|_| {
                ManagerError::PoolExhausted(format!(
                    "{}-{}",
                    self.cfg.pool_start, self.cfg.pool_end
                ))
            })?;
            let mut id = VmId::random();
            while vms.contains_key(&id) || self.dir(&id).exists() {
                id = VmId::random();
            }
            fs::create_dir_all(&self.cfg.state_dir)
                .and_then(|_| fs::create_dir(self.dir(&id)))
                .map_err(|e| ManagerError::CreateStep {
                    step: "create VM directory",
                    message: e.to_string(),
                })?;
            let expose = self.caddy.as_ref().filter(|c| c.enabled()).map(|c| Expose {
                port: self.cfg.caddy.guest_port,
                domain: c.domain(&name),
            });
            rec = VmRecord {
                tap: id.tap_name(),
                mac: network::mac_for(ip),
                id: id.clone(),
                name,
                ip,
                state: VmState::Creating,
                expose,
                backend,
                cpus,
                memory_mib,
                created_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                pid: None,
                host_key: None,
            };
            entry = Arc::new(Entry {
                op: Mutex::new(()),
                rec: Mutex::new(rec.clone()),
            });
            vms.insert(id, Arc::clone(&entry));
        }
        let _op = lock(&entry.op);
        match self.build(&entry, rec.clone(), user_key.as_deref()) {
            Ok(view) => Ok(view),
            Err((step, message)) => {
                let mut r = lock(&entry.rec).clone();
                r.state = VmState::Creating;
                self.undo_create(&r);
                lock(&self.vms).remove(&r.id);
                Err(ManagerError::CreateStep { step, message })
            }
        }
    }

    /// The steps of create after reservation. An error names its step.
    fn build(
        &self,
        entry: &Entry,
        mut rec: VmRecord,
        user_key: Option<&str>,
    ) -> Result<VmView, (&'static str, String)> {
        let dir = self.dir(&rec.id);
        let step = |s: &'static str| move |e: &dyn std::error::Error| (s, chain(e));
        store::save(&self.cfg.state_dir, &rec).map_err(|e| step("save record")(&e))?;
        let rootfs = dir.join("rootfs.img");
        disk::copy_rootfs(&self.cfg.asset(&self.cfg.rootfs), &rootfs)
            .map_err(|e| step("copy rootfs")(&e))?;
        let host_key_path = dir.join("ssh_host_ed25519_key");
        let host_pub = ssh::ensure_keypair(&host_key_path, &format!("fcm-{}", rec.id))
            .map_err(|e| step("generate host key")(&e))?;
        let host_priv = fs::read(&host_key_path).map_err(|e| step("generate host key")(&e))?;
        let mut authorized = format!("{}\n", self.key_pub);
        if let Some(k) = user_key {
            authorized.push_str(k);
            authorized.push('\n');
        }
        let host_pub_line = format!("{host_pub}\n");
        disk::inject(
            &rootfs,
            &[
                GuestFile {
                    path: "/root/.ssh/authorized_keys",
                    content: authorized.as_bytes(),
                    mode: 0o600,
                    dir_mode: 0o700,
                },
                GuestFile {
                    path: "/etc/ssh/ssh_host_ed25519_key",
                    content: &host_priv,
                    mode: 0o600,
                    dir_mode: 0o755,
                },
                GuestFile {
                    path: "/etc/ssh/ssh_host_ed25519_key.pub",
                    content: host_pub_line.as_bytes(),
                    mode: 0o644,
                    dir_mode: 0o755,
                },
            ],
        )
        .map_err(|e| step("inject SSH keys")(&e))?;
        // The private host key lives only in the guest's disk.
        let _ = fs::remove_file(&host_key_path);
        host::write_atomic(
            &self.known_hosts(&rec.id),
            ssh::known_hosts_line(rec.ip, &host_pub).as_bytes(),
            0o644,
        )
        .map_err(|e| step("write known_hosts")(&e))?;
        rec.host_key = Some(host_pub);
        network::create_tap(&self.cfg, &rec.id).map_err(|e| step("create tap device")(&e))?;
        let pid = self.launch(&rec).map_err(|e| step("start VMM")(&e))?;
        rec.pid = Some(pid);
        rec.state = VmState::Running;
        *lock(&entry.rec) = rec.clone();
        store::save(&self.cfg.state_dir, &rec).map_err(|e| step("save record")(&e))?;
        let mut view = VmView::of(&rec);
        view.warnings = self.publish(&rec);
        Ok(view)
    }

    fn launch(&self, rec: &VmRecord) -> Result<u32, vmm::VmmError> {
        let dir = self.dir(&rec.id);
        let kernel = self.cfg.asset(&self.cfg.kernel);
        let initrd = self.initrd();
        let rootfs = dir.join("rootfs.img");
        let spec = LaunchSpec {
            id: rec.id.as_str(),
            dir: &dir,
            kernel: &kernel,
            initrd: initrd.as_deref(),
            rootfs: &rootfs,
            cmdline: self.cmdline(rec),
            tap: &rec.tap,
            mac: &rec.mac,
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
        };
        self.vmm_for(rec.backend).launch(&spec)
    }

    /// Switches the VM's URL between proxying and the "stopped" page; a
    /// failure is a warning for the caller to show.
    fn mark_url(&self, r: &VmRecord, stopped: bool) -> Option<String> {
        let c = self.caddy.as_ref()?;
        c.set_stopped(&r.name, stopped, r.ip)
            .err()
            .map(|e| chain(&e))
    }

    /// Adds the VM's URL; failures are warnings, never a failed create.
    fn publish(&self, rec: &VmRecord) -> Vec<String> {
        let Some(c) = self.caddy.as_ref().filter(|c| c.enabled()) else {
            return Vec::new();
        };
        match c.add_site(&rec.name, rec.ip) {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!(
                "URL {} is not live: {}",
                c.url(&rec.name),
                chain(&e)
            )],
        }
    }

    fn undo_create(&self, r: &VmRecord) {
        if let Some(pid) = r.pid {
            self.kill(pid, &self.dir(&r.id));
        }
        for e in self.release_runtime(r) {
            eprintln!("fcm: warning: undoing create of {}: {e}", r.name);
        }
        if let Some(c) = &self.caddy {
            let _ = c.remove_site(&r.name);
        }
        if let Err(e) = fs::remove_dir_all(self.dir(&r.id)) {
            eprintln!("fcm: warning: undoing create of {}: {e}", r.name);
        }
    }

    /// Waits for the guest's SSH (used after create and start).
    pub fn wait_ssh(&self, ip: Ipv4Addr) -> bool {
        ssh::wait_ready(ip, Duration::from_secs(self.cfg.ssh_timeout_secs))
    }

    // ----- stop / start / destroy -----

    fn kill(&self, pid: u32, dir: &Path) {
        let marker = dir.to_string_lossy();
        if !host::process_alive(pid, &marker) {
            return;
        }
        host::signal(pid, libc::SIGTERM);
        let gone = || (!host::process_alive(pid, &marker)).then_some(());
        if host::wait_until(Duration::from_secs(3), Duration::from_millis(20), gone).is_none() {
            host::signal(pid, libc::SIGKILL);
            let _ = host::wait_until(Duration::from_secs(3), Duration::from_millis(20), gone);
        }
    }

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
        require_state(&r, VmState::Running, "stop it")?;
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
        let mut view = VmView::of(&r2);
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
        require_state(&r, VmState::Stopped, "start it")?;
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
        let mut view = VmView::of(&r);
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
        let mut view = VmView::of(&r);
        view.state = "destroyed".into();
        view.pid = None;
        view.warnings = errors;
        Ok(view)
    }

    // ----- recovery -----

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
    fn recover(&self) {
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
            vms.insert(
                id,
                Arc::new(Entry {
                    op: Mutex::new(()),
                    rec: Mutex::new(rec),
                }),
            );
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

/// A wrong-state error unless `r` is in `wanted`.
fn require_state(r: &VmRecord, wanted: VmState, action: &'static str) -> Result<(), ManagerError> {
    if r.state == wanted {
        return Ok(());
    }
    Err(ManagerError::WrongState {
        name: r.name.to_string(),
        state: r.state.as_str(),
        wanted: wanted.as_str(),
        action,
    })
}

/// Accepts one OpenSSH public key line.
fn validate_public_key(k: &str) -> Result<String, ManagerError> {
    let k = k.trim();
    let bad = |m: &str| Err(ManagerError::BadRequest(format!("ssh_public_key {m}")));
    if k.is_empty() || k.len() > KEY_MAX {
        return bad("must be one OpenSSH public key line of at most 16 KiB");
    }
    if k.chars().any(|c| c.is_control()) {
        return bad("must be a single line without control characters");
    }
    let mut parts = k.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    if !known
        || body.is_empty()
        || !body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
    {
        return bad(
            "is not an OpenSSH public key (expected e.g. \"ssh-ed25519 AAAA... user@host\")",
        );
    }
    Ok(k.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_checked() {
        assert!(validate_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI me@host").is_ok());
        assert!(validate_public_key("ssh-rsa AAAAB3Nza== ").is_ok());
        for bad in [
            "",
            "hello",
            "ssh-ed25519",
            "ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa AAAA",
            "ssh-ed25519 $(reboot)",
        ] {
            assert!(validate_public_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_chain_is_flattened() {
        let e = ManagerError::CreateStep {
            step: "copy rootfs",
            message: "disk full".into(),
        };
        assert_eq!(
            chain(&e),
            "create failed at step \"copy rootfs\": disk full"
        );
    }
}
