//! The guest through fcm-agent (docs/agent.md): one connection per VM,
//! opened on first use (or by the readiness wait) and kept; a broken or
//! silent one is replaced by a new session at the next operation.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the connector, the `Guest` implementation |
//! | `conn.rs` | one connection: hello, reader, writer, ping, protocol checks |
//! | `ops.rs` | an operation's start, events, streams and credits; reads, writes, one-answer requests |
//! | `program.rs` | a program: the seam's `Process` |

mod conn;
mod ops;
mod program;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fcm_proto::{Done, ToAgent};

use conn::Conn;
pub use conn::HELLO_TIMEOUT;

use super::{
    ClockSet, Download, ExecSpec, Frozen, Guest, GuestError, Process, TRANSFER_TIMEOUT, Target,
    check_path,
};
use crate::daemon::lock;
use crate::names::VmId;

/// A freeze's watchdog in the guest: it thaws by itself after this.
const FREEZE_WATCHDOG_SECS: u32 = 60;

/// The agent connections of every VM.
#[derive(Default)]
pub struct AgentGuests {
    conns: Mutex<HashMap<VmId, Arc<Conn>>>,
    /// Serialises opening a VM's connection.
    opening: Mutex<HashMap<VmId, Arc<Mutex<()>>>>,
}

impl AgentGuests {
    pub fn new() -> Self {
        Self::default()
    }

    /// The VM's connection: the one kept, if healthy, or a new one (its
    /// hello answered before `deadline`).
    pub fn conn(&self, t: &Target, deadline: Instant) -> Result<Arc<Conn>, GuestError> {
        let unreachable = |detail: String| GuestError::Unreachable {
            vm: t.name.to_string(),
            transport: "fcm-agent",
            detail,
        };
        let Some(channel) = &t.agent else {
            return Err(unreachable("the VM has no agent".into()));
        };
        if let Some(c) = lock(&self.conns).get(&t.id).filter(|c| c.healthy()) {
            return Ok(Arc::clone(c));
        }
        let gate = Arc::clone(lock(&self.opening).entry(t.id.clone()).or_default());
        let _one = lock(&gate);
        // Another caller may have opened it meanwhile.
        if let Some(c) = lock(&self.conns).get(&t.id).filter(|c| c.healthy()) {
            return Ok(Arc::clone(c));
        }
        if let Some(old) = lock(&self.conns).remove(&t.id) {
            old.fail("replaced by a new session");
        }
        let c = Conn::open(t.name.as_str(), channel, deadline)
            .map_err(|e| unreachable(e.to_string()))?;
        lock(&self.conns).insert(t.id.clone(), Arc::clone(&c));
        Ok(c)
    }

    /// Whether the VM has a live connection to its agent now.
    pub fn has_healthy(&self, id: &VmId) -> bool {
        lock(&self.conns).get(id).is_some_and(|c| c.healthy())
    }

    /// Waits until the VM's agent answers, or `timeout` passes.
    pub fn wait_ready(&self, t: &Target, timeout: Duration) -> Result<(), GuestError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = (Instant::now() + HELLO_TIMEOUT).min(deadline);
            match self.conn(t, attempt) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Drops the VM's connection (it left `running`).
    pub fn forget(&self, id: &VmId) {
        if let Some(c) = lock(&self.conns).remove(id) {
            c.fail("the VM left running");
        }
        lock(&self.opening).remove(id);
    }
}

/// One VM's guest through its agent.
pub struct AgentGuest {
    t: Target,
    guests: Arc<AgentGuests>,
}

impl AgentGuest {
    pub fn new(t: Target, guests: Arc<AgentGuests>) -> Self {
        Self { t, guests }
    }

    fn conn(&self) -> Result<Arc<Conn>, GuestError> {
        self.guests.conn(&self.t, Instant::now() + HELLO_TIMEOUT)
    }
}

/// The guest's root file system, frozen by the agent until thawed.
struct AgentFrozen {
    conn: Arc<Conn>,
    frozen: bool,
    thawed: AtomicBool,
}

impl Frozen for AgentFrozen {
    fn frozen(&self) -> bool {
        self.frozen
    }

    fn thaw(self: Box<Self>) -> Result<(), GuestError> {
        self.thawed
            .store(true, std::sync::atomic::Ordering::Release);
        ops::call(
            &self.conn,
            |id| ToAgent::Thaw { id },
            "thawing the file system of",
            Duration::from_secs(15),
        )
        .map(|_| ())
    }
}

impl Drop for AgentFrozen {
    fn drop(&mut self) {
        if !self.thawed.load(std::sync::atomic::Ordering::Acquire) {
            // Best effort; the agent's watchdog thaws anyway.
            let _ = self.conn.send(&ToAgent::Thaw { id: 0 });
        }
    }
}

impl Guest for AgentGuest {
    fn transport(&self) -> &'static str {
        "fcm-agent"
    }

    fn wait_ready(&self, timeout: Duration) -> bool {
        self.guests.wait_ready(&self.t, timeout).is_ok()
    }

    fn exec(&self, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError> {
        if spec.argv.is_empty() {
            return Err(GuestError::BadRequest("no program to run".into()));
        }
        program::exec(&self.conn()?, spec)
    }

    fn read_file(&self, path: &str) -> Result<Download, GuestError> {
        check_path(path)?;
        let path_owned = path.to_owned();
        ops::read(
            &self.conn()?,
            |id| ToAgent::ReadFile {
                id,
                path: path_owned,
            },
            "file",
            path,
            TRANSFER_TIMEOUT,
        )
    }

    fn write_file(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        check_path(path)?;
        let path_owned = path.to_owned();
        ops::write(
            &self.conn()?,
            |id| ToAgent::WriteFile {
                id,
                path: path_owned,
                mode: 0o644,
            },
            "directory for",
            path,
            body,
        )
    }

    fn read_tree(&self, path: &str) -> Result<Download, GuestError> {
        check_path(path)?;
        let path_owned = path.to_owned();
        ops::read(
            &self.conn()?,
            |id| ToAgent::ReadTree {
                id,
                path: path_owned,
            },
            "directory",
            path,
            TRANSFER_TIMEOUT,
        )
    }

    fn write_tree(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        check_path(path)?;
        let path_owned = path.to_owned();
        ops::write(
            &self.conn()?,
            |id| ToAgent::WriteTree {
                id,
                path: path_owned,
            },
            "directory",
            path,
            body,
        )
    }

    fn freeze(&self) -> Result<Box<dyn Frozen>, GuestError> {
        let conn = self.conn()?;
        let done = ops::call(
            &conn,
            |id| ToAgent::Freeze {
                id,
                watchdog_secs: FREEZE_WATCHDOG_SECS,
            },
            "freezing the file system of",
            Duration::from_secs(20),
        )?;
        let frozen = matches!(done, Done::Frozen { frozen: true });
        Ok(Box::new(AgentFrozen {
            conn,
            frozen,
            thawed: AtomicBool::new(false),
        }))
    }

    fn after_restore(&self, entropy: &[u8; 64]) -> Result<ClockSet, GuestError> {
        let conn = self.conn()?;
        // A file system frozen when the state was taken (a checkpoint).
        ops::call(
            &conn,
            |id| ToAgent::Thaw { id },
            "thawing the file system of",
            Duration::from_secs(10),
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let done = ops::call(
            &conn,
            |id| ToAgent::SetClock {
                id,
                unix_secs: now.as_secs() as i64,
                nanos: now.subsec_nanos(),
            },
            "setting the clock of",
            Duration::from_secs(10),
        )?;
        let back = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        ops::call(
            &conn,
            |id| ToAgent::Reseed {
                id,
                entropy: entropy.to_vec(),
            },
            "reseeding the entropy of",
            Duration::from_secs(10),
        )?;
        Ok(ClockSet {
            offset: match done {
                Done::Clock { unix_secs, nanos } => {
                    Some(unix_secs as f64 + f64::from(nanos) / 1e9 - back)
                }
                _ => None,
            },
        })
    }

    fn shutdown(&self) -> Result<(), GuestError> {
        ops::call(
            &self.conn()?,
            |id| ToAgent::Shutdown { id },
            "shutting down",
            Duration::from_secs(5),
        )
        .map(|_| ())
    }

    fn set_identity(&self, identity: &fcm_proto::Identity) -> Result<(), GuestError> {
        ops::call(
            &self.conn()?,
            |id| ToAgent::SetIdentity {
                id,
                identity: identity.clone(),
            },
            "setting the identity of",
            Duration::from_secs(30),
        )
        .map(|_| ())
    }
}
