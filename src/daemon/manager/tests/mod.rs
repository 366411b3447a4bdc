//! Unit tests of the manager through its two seams, both faked: the guest
//! (`daemon::guest::fake`) and the VMM (`fake_vmm`: a harmless process that
//! the manager finds, locks its disk and kills like a VMM). What they check
//! is what a user would: the record on disk before and after each side
//! effect (intent before effect), the warnings and errors returned, and
//! what is left on the host (VMM processes, the disk lock, taps, files).
//!
//! Each test runs on a thread of its own in a new network namespace (and a
//! mount namespace whose `/sys` shows it, as `ip netns exec` gives the
//! daemon), with the bridge and nftables tables the daemon sets up at
//! start-up, on a temp state dir. Namespaces need root: without it each
//! test says why and passes without running.
//!
//! | file | what |
//! |---|---|
//! | `create.rs` | create: journal, undo, bad requests, prerequisites, readiness |
//! | `ops.rs` | stop, start, destroy, resize; wrong states; shutting down; a VMM that dies; a restart; serving while recovering |
//! | `pause.rs` | pause, resume |
//! | `checkpoints.rs` | checkpoint, restore, checkpoint rm |
//! | `idle.rs` | idle sleep and waking |
//! | `exec.rs` | exec and cp through the manager |
//! | `fake_vmm.rs` | the fake VMM |

mod checkpoints;
mod create;
mod events;
mod exec;
mod fake_vmm;
mod fork;
mod idle;
mod ops;
mod pause;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use super::{Manager, ManagerError};
use crate::config::{BackendChoice, DaemonConfig};
use crate::daemon::api;
use crate::daemon::guest::Target;
use crate::daemon::guest::fake::FakeGuests;
use crate::daemon::lock;
use crate::daemon::store::{self, VmRecord};
use crate::host::{self, disk_lock, network, vmm};
use crate::names::VmId;
use crate::wire::api::{CreateRequest, VmView};
use fake_vmm::FakeVmms;

/// What happened, in order, across both fakes: `"<op> <vm>: <state>"`,
/// the state being what the VM's record on disk said at that moment
/// (VMM calls start with `vmm `).
type Journal = Arc<Mutex<Vec<String>>>;

/// The VM's name and its recorded state, read from its directory now.
fn on_disk(dir: &Path) -> (String, String) {
    match store::load(&dir.join("config.json")) {
        Ok(r) => (r.name.to_string(), r.state.as_str().to_owned()),
        Err(_) => (
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            "no record".into(),
        ),
    }
}

/// A manager on a temp state dir with a fake guest and a fake VMM.
struct Harness {
    m: Manager,
    guests: FakeGuests,
    vmms: FakeVmms,
    journal: Journal,
    /// The guest powers off when asked to shut down (its VMM exits).
    guest_powers_off: Arc<AtomicBool>,
    cfg: Arc<DaemonConfig>,
    /// Removed last, once every fake VMM is gone.
    _state: TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Also when a test failed: no process outlives its test.
        self.vmms.kill_all();
    }
}

/// The config of a test: everything in `state`, unique network names,
/// QEMU as the backend, no cgroups, jailer or Caddy, short timeouts.
fn config(state: &Path) -> DaemonConfig {
    let tag: String = (0..6)
        .map(|_| char::from(b"0123456789abcdef"[rand::random::<usize>() % 16]))
        .collect();
    let mut cfg = DaemonConfig {
        state_dir: state.to_owned(),
        bridge: format!("fcmt{tag}"),
        nft_table: format!("fcmt_{tag}"),
        backend: BackendChoice::Qemu,
        stop_timeout_secs: 1,
        ssh_timeout_secs: 1,
        ..Default::default()
    };
    cfg.cgroup.enabled = false;
    cfg.jailer.enabled = false;
    cfg.caddy.enabled = false;
    cfg
}

/// Runs `test` with a fresh [`Harness`] (see the module doc).
fn run(test: impl FnOnce(&mut Harness) + Send + 'static) {
    run_with(|_| {}, test);
}

/// [`run`] with the config changed by `change` first.
fn run_with(
    change: impl FnOnce(&mut DaemonConfig) + Send + 'static,
    test: impl FnOnce(&mut Harness) + Send + 'static,
) {
    if !host::is_root() {
        eprintln!(
            "skipping: the manager's tests make taps and nftables rules in a network \
             namespace of their own, which needs root"
        );
        return;
    }
    // A thread of its own: the namespaces end with it.
    let t = std::thread::spawn(move || {
        enter_namespaces().expect("new network and mount namespaces");
        let mut h = Harness::new(change);
        test(&mut h);
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// Moves this thread into a new network namespace with `lo` up, and a new
/// mount namespace whose `/sys` shows that network namespace's links (as
/// `ip netns exec` does). Threads and programs it starts inherit both.
fn enter_namespaces() -> std::io::Result<()> {
    let os = std::io::Error::last_os_error;
    // SAFETY: unshare takes flags only and changes this thread's own
    // namespaces (and its copy of the file system attributes).
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } == -1 {
        return Err(os());
    }
    let (root, sys, sysfs) = (cstr("/"), cstr("/sys"), cstr("sysfs"));
    // SAFETY: mount with NUL-terminated strings that outlive the calls, or
    // null where mount(2) ignores the argument. First every mount of this
    // namespace becomes a slave, so nothing mounted here reaches the host.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    if rc == -1 {
        return Err(os());
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(
            sysfs.as_ptr(),
            sys.as_ptr(),
            sysfs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == -1 {
        return Err(os());
    }
    host::run_timeout("ip", ["link", "set", "lo", "up"], Duration::from_secs(10))
        .map_err(std::io::Error::other)?;
    Ok(())
}

impl Harness {
    fn new(change: impl FnOnce(&mut DaemonConfig)) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let mut cfg = config(state.path());
        change(&mut cfg);
        for (asset, bytes) in [(&cfg.kernel, 4096), (&cfg.rootfs, 1 << 20)] {
            let p = cfg.asset(asset);
            if !p.exists() && p.starts_with(state.path()) {
                std::fs::write(&p, vec![7u8; bytes]).expect("asset");
            }
        }
        // As `daemon::run` does before the manager starts.
        network::setup(&cfg, &[]).expect("bridge and policy");
        let journal: Journal = Arc::default();
        let vmms = FakeVmms::new(Arc::clone(&journal));
        let guest_powers_off = Arc::new(AtomicBool::new(false));
        let guests = FakeGuests::default();
        let (j, v, off) = (
            Arc::clone(&journal),
            vmms.clone(),
            Arc::clone(&guest_powers_off),
        );
        guests.set(move |s| {
            s.hook = Some(Arc::new(move |op: &str, t: &Target| {
                let (_, state) = on_disk(&t.dir);
                lock(&j).push(format!("{op} {}: {state}", t.name));
                if op == "shutdown" && off.load(Ordering::Acquire) {
                    v.power_off(&t.dir);
                }
            }));
        });
        let cfg = Arc::new(cfg);
        let m = Manager::with_seams(
            Arc::clone(&cfg),
            None,
            None,
            Arc::new(guests.clone()),
            vmms.factory(),
        )
        .expect("manager");
        Self {
            m,
            guests,
            vmms,
            journal,
            guest_powers_off,
            cfg,
            _state: state,
        }
    }

    /// A new manager on the same state dir, fakes and journal, as after a
    /// daemon restart (the VMMs run on).
    fn restart(&mut self) {
        self.m = Manager::with_seams(
            Arc::clone(&self.cfg),
            None,
            None,
            Arc::new(self.guests.clone()),
            self.vmms.factory(),
        )
        .expect("manager");
    }

    /// [`Self::restart`] as the daemon does it: the VMs loaded as recorded,
    /// their recovery left to [`Manager::recover`].
    fn restart_unrecovered(&mut self) {
        self.m = Manager::loaded(
            Arc::clone(&self.cfg),
            None,
            None,
            Arc::new(self.guests.clone()),
            self.vmms.factory(),
        )
        .expect("manager");
    }

    /// Whether the guest powers off when asked to shut down.
    fn guest_powers_off(&self, yes: bool) {
        self.guest_powers_off.store(yes, Ordering::Release);
    }

    /// Creates a running VM named `name`.
    fn create(&self, name: &str) -> VmView {
        self.m
            .create(CreateRequest {
                name: Some(name.into()),
                ..Default::default()
            })
            .expect("create")
    }

    /// The journal so far, emptied.
    fn take_journal(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.journal))
    }

    fn dir(&self, v: &VmView) -> PathBuf {
        self.cfg.state_dir.join(&v.id)
    }

    /// The VM's record on disk.
    fn record(&self, v: &VmView) -> VmRecord {
        let id = VmId::parse(&v.id).expect("id");
        store::load(&store::record_path(&self.cfg.state_dir, &id)).expect("record")
    }

    /// What the record on disk says the VM is.
    fn state(&self, v: &VmView) -> String {
        on_disk(&self.dir(v)).1
    }

    /// The VMM processes found on the host for the VM, as the manager finds them.
    fn vmm_pids(&self, v: &VmView) -> Vec<u32> {
        vmm::find_vmms(&self.dir(v))
    }

    /// Waits until the VM's VMM has exited and let go of its disk.
    fn wait_gone(&self, v: &VmView) {
        let gone = || (self.vmm_pids(v).is_empty() && !self.disk_locked(v)).then_some(());
        host::wait_until(Duration::from_secs(5), Duration::from_millis(10), gone)
            .expect("the VMM ended");
    }

    fn tap_exists(&self, v: &VmView) -> bool {
        Path::new("/sys/class/net").join(&v.tap).exists()
    }

    fn disk_locked(&self, v: &VmView) -> bool {
        disk_lock::in_use(&self.dir(v).join("rootfs.img"))
    }

    /// Running as a user would see it: recorded running with the pid of
    /// the one VMM found on the host, which holds the disk's lock; its tap
    /// is up on the bridge.
    fn assert_running(&self, v: &VmView) {
        let r = self.record(v);
        assert_eq!(r.state.as_str(), "running", "{}", v.name);
        let pids = self.vmm_pids(v);
        assert_eq!(pids.len(), 1, "one VMM of {}: {pids:?}", v.name);
        assert_eq!(r.pid, Some(pids[0]), "recorded pid of {}", v.name);
        assert!(self.disk_locked(v), "{}'s disk is not locked", v.name);
        assert!(self.tap_exists(v), "{} has no tap", v.name);
        let master = std::fs::read_link(format!("/sys/class/net/{}/master", v.tap))
            .ok()
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
        assert_eq!(
            master.as_deref(),
            Some(self.cfg.bridge.as_str()),
            "{}'s tap is not on the bridge",
            v.name
        );
    }

    /// Nothing of a VM runs: no VMM, its disk free, no tap, no pid recorded.
    fn assert_down(&self, v: &VmView) {
        assert_eq!(self.vmm_pids(v), Vec::<u32>::new(), "VMMs of {}", v.name);
        assert!(!self.disk_locked(v), "{}'s disk is still locked", v.name);
        assert!(!self.tap_exists(v), "{}'s tap is still there", v.name);
        if self.dir(v).exists() {
            assert_eq!(self.record(v).pid, None, "pid of {}", v.name);
            assert!(
                !self.dir(v).join(fake_vmm::PIDFILE).exists(),
                "{}'s runtime file is left",
                v.name
            );
        }
    }
}

/// The HTTP status a manager error becomes.
fn status(e: &ManagerError) -> u16 {
    api::status_of(e)
}

/// Whether `e` is a wrong-state refusal saying the VM is `state`, must be
/// `wanted` to do `action`.
fn assert_wrong_state(e: &ManagerError, state: &str, wanted: &str, action: &str) {
    match e {
        ManagerError::WrongState {
            state: s,
            wanted: w,
            action: a,
            ..
        } => assert_eq!((*s, *w, *a), (state, wanted, action), "{e}"),
        other => panic!("not a wrong-state error: {other:?}"),
    }
    assert_eq!(status(e), 409, "{e}");
}
