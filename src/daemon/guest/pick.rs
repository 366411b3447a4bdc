//! Which way into a guest: its agent where the VM has one and it answers,
//! else SSH (a VM made before fcm-agent, a daemon without the agent's
//! binary, an image whose init does not start it). The choice is made per
//! VM and said once in the daemon's log; a VM reached over SSH is offered
//! its agent again 15 s later, and at its next boot.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::agent::{AgentGuest, AgentGuests};
use super::ssh::SshGuests;
use super::{ClockSet, Download, ExecSpec, Frozen, Guest, GuestError, Guests, Process, Target};
use crate::daemon::lock;
use crate::host::ssh::banner_ready;
use crate::names::VmId;

/// How long a first operation waits for an agent before it tries SSH.
const FIRST_TRY: Duration = Duration::from_secs(3);
/// A guest whose SSH answers while its agent stays silent this long is
/// reached over SSH.
const SSH_AFTER: Duration = Duration::from_secs(10);
/// How long a VM reached over SSH stays so before its agent is tried again.
const SSH_FOR: Duration = Duration::from_secs(15);

#[derive(Clone, Copy)]
enum Mode {
    Agent,
    Ssh(Instant),
}

struct Inner {
    agent: Arc<AgentGuests>,
    ssh: SshGuests,
    modes: Mutex<HashMap<VmId, Mode>>,
    told: Mutex<HashSet<VmId>>,
}

/// The daemon's way into guests: the agent, or SSH.
pub struct PickGuests {
    inner: Arc<Inner>,
}

impl PickGuests {
    /// `key`: the daemon's SSH key.
    pub fn new(key: std::path::PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                agent: Arc::new(AgentGuests::new()),
                ssh: SshGuests::new(key),
                modes: Mutex::new(HashMap::new()),
                told: Mutex::new(HashSet::new()),
            }),
        }
    }
}

impl Inner {
    /// Says once per VM why it is reached over SSH.
    fn tell_once(&self, t: &Target, why: &str) {
        if lock(&self.told).insert(t.id.clone()) {
            eprintln!("fcm: {}: reached over SSH: {why}", t.name);
        }
    }
}

impl Guests for PickGuests {
    fn guest(&self, target: &Target) -> Box<dyn Guest> {
        if target.agent.is_none() {
            self.inner.tell_once(
                target,
                "it has no fcm-agent (made before the agent, or the daemon has no agent binary); it gets one at its next cold boot (fcm stop, then fcm start)",
            );
            return self.inner.ssh.guest(target);
        }
        Box::new(Picked {
            t: target.clone(),
            inner: Arc::clone(&self.inner),
        })
    }

    fn forget(&self, target: &Target) {
        lock(&self.inner.modes).remove(&target.id);
        self.inner.agent.forget(&target.id);
        self.inner.ssh.forget(target);
    }
}

/// One VM with an agent channel.
struct Picked {
    t: Target,
    inner: Arc<Inner>,
}

impl Picked {
    fn agent(&self) -> AgentGuest {
        AgentGuest::new(self.t.clone(), Arc::clone(&self.inner.agent))
    }

    /// The guest to use for an operation.
    fn choose(&self) -> Result<Box<dyn Guest>, GuestError> {
        if self.inner.agent.has_healthy(&self.t.id) {
            lock(&self.inner.modes).insert(self.t.id.clone(), Mode::Agent);
            return Ok(Box::new(self.agent()));
        }
        let mode = lock(&self.inner.modes).get(&self.t.id).copied();
        match mode {
            Some(Mode::Agent) => return Ok(Box::new(self.agent())),
            Some(Mode::Ssh(since)) if since.elapsed() < SSH_FOR => {
                return Ok(self.inner.ssh.guest(&self.t));
            }
            _ => {}
        }
        match self.inner.agent.conn(&self.t, Instant::now() + FIRST_TRY) {
            Ok(_) => {
                lock(&self.inner.modes).insert(self.t.id.clone(), Mode::Agent);
                Ok(Box::new(self.agent()))
            }
            Err(e) if banner_ready(self.t.ip) => {
                self.use_ssh(&crate::error::chain(&e));
                Ok(self.inner.ssh.guest(&self.t))
            }
            Err(e) => Err(e),
        }
    }

    fn use_ssh(&self, why: &str) {
        lock(&self.inner.modes).insert(self.t.id.clone(), Mode::Ssh(Instant::now()));
        self.inner
            .tell_once(&self.t, &format!("its agent did not answer ({why})"));
    }
}

impl Guest for Picked {
    fn transport(&self) -> &'static str {
        match lock(&self.inner.modes).get(&self.t.id) {
            Some(Mode::Ssh(_)) => "ssh",
            _ => "fcm-agent",
        }
    }

    /// Ready once the agent answers; a guest whose SSH answers while its
    /// agent stays silent for [`SSH_AFTER`] is ready over SSH.
    fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ssh_since: Option<Instant> = None;
        while Instant::now() < deadline {
            let attempt = (Instant::now() + Duration::from_secs(1)).min(deadline);
            if self.inner.agent.conn(&self.t, attempt).is_ok() {
                lock(&self.inner.modes).insert(self.t.id.clone(), Mode::Agent);
                return true;
            }
            if banner_ready(self.t.ip) {
                let since = *ssh_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SSH_AFTER {
                    self.use_ssh(&format!(
                        "no answer {} s after its SSH did",
                        SSH_AFTER.as_secs()
                    ));
                    return true;
                }
            }
        }
        false
    }

    fn exec(&self, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError> {
        self.choose()?.exec(spec)
    }

    fn read_file(&self, path: &str) -> Result<Download, GuestError> {
        self.choose()?.read_file(path)
    }

    fn write_file(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        self.choose()?.write_file(path, body)
    }

    fn read_tree(&self, path: &str) -> Result<Download, GuestError> {
        self.choose()?.read_tree(path)
    }

    fn write_tree(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        self.choose()?.write_tree(path, body)
    }

    fn freeze(&self) -> Result<Box<dyn Frozen>, GuestError> {
        self.choose()?.freeze()
    }

    fn after_restore(&self, entropy: &[u8; 64]) -> Result<ClockSet, GuestError> {
        // Right after a restore the connection is new: the agent gets the
        // time it needs to answer its first hello.
        let mode = lock(&self.inner.modes).get(&self.t.id).copied();
        if !matches!(mode, Some(Mode::Ssh(_)))
            && self
                .inner
                .agent
                .wait_ready(&self.t, Duration::from_secs(10))
                .is_ok()
        {
            lock(&self.inner.modes).insert(self.t.id.clone(), Mode::Agent);
        }
        self.choose()?.after_restore(entropy)
    }

    fn shutdown(&self) -> Result<(), GuestError> {
        self.choose()?.shutdown()
    }

    /// Always through the agent (never SSH: a fork's network is the
    /// source's until this has run), given up to 20 s to answer.
    fn set_identity(&self, identity: &fcm_proto::Identity) -> Result<(), GuestError> {
        self.inner
            .agent
            .wait_ready(&self.t, Duration::from_secs(20))?;
        lock(&self.inner.modes).insert(self.t.id.clone(), Mode::Agent);
        self.agent().set_identity(identity)
    }
}
