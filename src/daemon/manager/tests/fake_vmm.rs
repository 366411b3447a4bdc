//! A fake VMM for the manager's tests: a real, harmless process that the
//! manager finds, locks and kills like a VMM. It is `tail -f <vm
//! dir>/console.log` named `qemu-system-x86_64` (argv[0]), so its command
//! line names the VM's directory (`vmm::find_vmms`); it inherits the
//! disk's locked descriptor as QEMU does (`disk_lock::in_use` while it
//! runs), runs in its own process group and is reaped by a thread. A test
//! says which calls fail and how a shutdown request ends; every call goes
//! to the journal with the state the VM's record had on disk then.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Journal, on_disk};
use crate::config::DaemonConfig;
use crate::daemon::lock;
use crate::daemon::manager::Vmms;
use crate::host::vmm::{Backend, LaunchSpec, Vmm, VmmError, is_vmm_of};
use crate::host::{self, Signal};

/// The name the fake runs under: one of `vmm::VMM_PROGRAMS`.
const PROGRAM: &str = "qemu-system-x86_64";
/// The fake's runtime file in the VM's directory (its pid).
pub(super) const PIDFILE: &str = "fake-vmm.pid";
/// What a VMM that dies after its spawn writes to its log.
pub(super) const DYING_WORDS: &str = "fake VMM: -netdev tap,fd=3: could not configure\n";
/// What `save_state` writes into its directory.
pub(super) const STATE_FILE: &str = "fake-vm.state";

/// How a launch (or a launch from a saved state) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch {
    Works,
    /// Fails before any process starts.
    Fails,
    /// The process starts and writes [`DYING_WORDS`] to its log, then the
    /// launch fails (it is killed, as the real backends kill a VMM that did
    /// not come up).
    DiesAfterSpawn,
}

/// What the VMM does when asked to shut its guest down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shutdown {
    /// The guest powers off: the VMM exits.
    PowersOff,
    /// The request is taken and nothing happens.
    Ignored,
    /// The VMM cannot send it.
    Fails,
}

type VmmHook = dyn Fn(&str, &Path) + Send + Sync;

/// A change of the script, e.g. one fault.
pub(super) type Change = fn(&mut FakeVmmScript);

pub(super) struct FakeVmmScript {
    pub launch: Launch,
    pub launch_saved: Launch,
    pub save_fails: bool,
    pub continue_fails: bool,
    pub shutdown: Shutdown,
    /// What `binary()` says (the prerequisite check looks for it).
    pub binary: PathBuf,
    /// Called at each call with its name and the VM's directory, before
    /// it answers: a test looks at the host at that very moment.
    pub hook: Option<Arc<VmmHook>>,
}

impl Default for FakeVmmScript {
    fn default() -> Self {
        Self {
            launch: Launch::Works,
            launch_saved: Launch::Works,
            save_fails: false,
            continue_fails: false,
            shutdown: Shutdown::PowersOff,
            binary: tail(),
            hook: None,
        }
    }
}

fn tail() -> PathBuf {
    host::find_program(Path::new("tail")).unwrap_or_else(|| PathBuf::from("/usr/bin/tail"))
}

/// Makes fake VMMs; remembers every process they started.
#[derive(Clone)]
pub(super) struct FakeVmms {
    script: Arc<Mutex<FakeVmmScript>>,
    journal: Journal,
    spawned: Arc<Mutex<Vec<(u32, PathBuf)>>>,
}

impl FakeVmms {
    pub fn new(journal: Journal) -> Self {
        Self {
            script: Arc::default(),
            journal,
            spawned: Arc::default(),
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut FakeVmmScript)) {
        f(&mut lock(&self.script));
    }

    /// The manager's VMM factory, making fakes.
    pub fn factory(&self) -> Vmms {
        let me = self.clone();
        Arc::new(move |backend: Backend, _: &DaemonConfig| -> Box<dyn Vmm> {
            Box::new(FakeVmm {
                backend,
                binary: lock(&me.script).binary.clone(),
                vmms: me.clone(),
            })
        })
    }

    /// Journals a call and runs the hook (outside the script's lock).
    fn note(&self, op: &str, dir: &Path) {
        let (name, state) = on_disk(dir);
        lock(&self.journal).push(format!("vmm {op} {name}: {state}"));
        let hook = lock(&self.script).hook.clone();
        if let Some(h) = hook {
            h(op, dir);
        }
    }

    /// Live fakes of the VM in `dir`.
    fn running_in(&self, dir: &Path) -> Vec<u32> {
        lock(&self.spawned)
            .iter()
            .filter(|(pid, d)| d == dir && is_vmm_of(*pid, d))
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// The guest of the VM in `dir` powers off: its VMM exits.
    pub fn power_off(&self, dir: &Path) {
        for pid in self.running_in(dir) {
            host::signal(pid, Signal::TERM);
        }
    }

    /// Kills every fake still running and waits until they are gone.
    pub fn kill_all(&self) {
        let spawned = lock(&self.spawned).clone();
        for (pid, dir) in &spawned {
            if is_vmm_of(*pid, dir) {
                host::signal(*pid, Signal::KILL);
            }
        }
        let gone = || {
            spawned
                .iter()
                .all(|(pid, dir)| !is_vmm_of(*pid, dir))
                .then_some(())
        };
        let _ = host::wait_until(Duration::from_secs(5), Duration::from_millis(10), gone);
    }
}

struct FakeVmm {
    backend: Backend,
    binary: PathBuf,
    vmms: FakeVmms,
}

impl FakeVmm {
    fn script(&self) -> std::sync::MutexGuard<'_, FakeVmmScript> {
        lock(&self.vmms.script)
    }

    fn spawn(&self, spec: &LaunchSpec<'_>, how: Launch) -> Result<u32, VmmError> {
        if how == Launch::Fails {
            return Err(VmmError::NotReady {
                program: PROGRAM,
                detail: "fake VMM: launch fails".into(),
            });
        }
        // The console log, made by the VMM as QEMU makes it.
        let log = spec.console_log();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(VmmError::Io)?;
        let mut cmd = Command::new(tail());
        cmd.arg0(PROGRAM)
            .arg("-f")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        spec.disk_lock.pass_to(&mut cmd);
        spec.spawned_at.set(Some(Instant::now()));
        let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
            program: PROGRAM,
            source,
        })?;
        let pid = child.id();
        lock(&self.vmms.spawned).push((pid, spec.dir.to_owned()));
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        if how == Launch::DiesAfterSpawn {
            // As QEMU does, it says why on its stderr, the console log.
            fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .and_then(|mut f| std::io::Write::write_all(&mut f, DYING_WORDS.as_bytes()))
                .map_err(VmmError::Io)?;
            host::signal(pid, Signal::KILL);
            return Err(VmmError::NotReady {
                program: PROGRAM,
                detail: "fake VMM: the guest did not come up".into(),
            });
        }
        host::write_atomic(&spec.dir.join(PIDFILE), pid.to_string().as_bytes(), 0o600)
            .map_err(VmmError::Io)?;
        Ok(pid)
    }

    /// Like QMP, which only a live VMM answers.
    fn alive(&self, dir: &Path) -> Result<(), String> {
        match self.vmms.running_in(dir).is_empty() {
            true => Err("fake VMM: no VMM runs".into()),
            false => Ok(()),
        }
    }
}

impl Vmm for FakeVmm {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError> {
        self.vmms.note("launch", spec.dir);
        let how = self.script().launch;
        self.spawn(spec, how)
    }

    fn launch_saved(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError> {
        let from_name = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.vmms
            .note(&format!("launch_saved({from_name})"), spec.dir);
        let saved = from.join(STATE_FILE);
        if !saved.is_file() {
            return Err(VmmError::Load(format!("{} is missing", saved.display())));
        }
        let how = self.script().launch_saved;
        self.spawn(spec, how)
    }

    fn request_shutdown(&self, dir: &Path) -> Result<(), VmmError> {
        self.vmms.note("request_shutdown", dir);
        let how = self.script().shutdown;
        match how {
            Shutdown::PowersOff => {
                self.vmms.power_off(dir);
                Ok(())
            }
            Shutdown::Ignored => Ok(()),
            Shutdown::Fails => Err(VmmError::NotReady {
                program: PROGRAM,
                detail: "fake VMM: cannot send Ctrl-Alt-Del".into(),
            }),
        }
    }

    fn runtime_files(&self) -> &'static [&'static str] {
        &[PIDFILE]
    }

    fn agent_channel(&self, dir: &Path, _port: u32) -> crate::host::vmm::AgentChannel {
        crate::host::vmm::AgentChannel::Serial(dir.join("agent.sock"))
    }

    fn binary(&self) -> &Path {
        &self.binary
    }

    fn save_state(&self, dir: &Path, into: &Path) -> Result<(), VmmError> {
        self.vmms.note("save_state", dir);
        self.alive(dir).map_err(VmmError::Save)?;
        if self.script().save_fails {
            return Err(VmmError::Save("fake VMM: save fails".into()));
        }
        let (name, _) = on_disk(dir);
        fs::write(into.join(STATE_FILE), format!("memory of {name}\n"))
            .map_err(|e| VmmError::Save(e.to_string()))
    }

    fn continue_guest(&self, dir: &Path) -> Result<(), VmmError> {
        self.vmms.note("continue_guest", dir);
        self.alive(dir).map_err(VmmError::Load)?;
        if self.script().continue_fails {
            return Err(VmmError::Load(
                "fake VMM: the guest does not continue".into(),
            ));
        }
        Ok(())
    }
}
