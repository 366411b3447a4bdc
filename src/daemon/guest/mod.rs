//! The seam between the daemon and a guest. Everything the daemon does
//! inside a VM goes through one [`Guest`]: run a program (streamed, on a
//! terminal or not), move files and directories, freeze and thaw the file
//! system around a checkpoint, fix the clock and entropy after a restore,
//! ask for a shutdown, wait until the guest takes operations. How it gets
//! there is the implementation's business:
//!
//! | module | transport |
//! |---|---|
//! | `agent` | fcm-agent in the guest (docs/agent.md): one multiplexed connection per VM |
//! | `ssh` | the daemon's own SSH key and the guest's pinned host key, one multiplexed connection per VM |
//! | `pick` | the daemon's choice per VM: its agent where it has one and it answers, else SSH |
//! | `fake` | (tests) a guest in memory whose answers and faults a test sets |
//!
//! The daemon gets a [`Guest`] for a VM from its [`Guests`]. Nothing here
//! knows the VM table; whatever comes back from a guest is untrusted.

pub mod agent;
pub mod pick;
pub mod ssh;

#[cfg(test)]
pub mod fake;

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use thiserror::Error;

use crate::host::HostError;
use crate::host::vmm::AgentChannel;
use crate::names::{VmId, VmName};

/// Longest guest path accepted.
pub const PATH_MAX: usize = 4096;
/// Largest file or directory archive moved in one transfer.
pub const TRANSFER_MAX: u64 = 1 << 30;
/// How long one transfer may take.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(1800);

/// Which VM a [`Guest`] is: what a transport needs to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: VmId,
    pub name: VmName,
    pub ip: Ipv4Addr,
    /// The VM's directory on the host (its pinned host key, runtime files).
    pub dir: PathBuf,
    /// Where its agent is reached; none for a VM without one.
    pub agent: Option<AgentChannel>,
}

#[derive(Debug, Error)]
pub enum GuestError {
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("could not reach VM {vm} over {transport}: {detail}")]
    Unreachable {
        vm: String,
        transport: &'static str,
        detail: String,
    },
    #[error("could not run {what} for VM {vm}")]
    Host {
        vm: String,
        what: &'static str,
        #[source]
        source: HostError,
    },
    #[error("VM {vm} has no {what} {path}")]
    NotFound {
        vm: String,
        what: &'static str,
        path: String,
    },
    #[error("{path} in VM {vm} {problem}")]
    Refused {
        vm: String,
        path: String,
        problem: String,
    },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: &'static str, max: u64 },
    #[error("{action} {path} in VM {vm} failed: {detail}")]
    Failed {
        vm: String,
        action: &'static str,
        path: String,
        detail: String,
    },
}

impl GuestError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unreachable { .. } => {
                Some("the guest may still be booting; try again in a few seconds".into())
            }
            Self::NotFound { vm, .. } => Some(format!("look with: fcm exec {vm} -- ls -la DIR")),
            Self::TooLarge { .. } => Some("split it, or copy a directory (sent as tar)".into()),
            _ => None,
        }
    }
}

/// A guest path from a request: non-empty, bounded, no NUL.
pub fn check_path(path: &str) -> Result<(), GuestError> {
    if path.is_empty() || path.len() > PATH_MAX {
        return Err(GuestError::BadRequest(format!(
            "path must be 1 to {PATH_MAX} bytes"
        )));
    }
    if path.contains('\0') {
        return Err(GuestError::BadRequest(
            "path must not contain a NUL byte".into(),
        ));
    }
    Ok(())
}

/// A program to run in the guest.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// The program and its arguments, each passed as it is (no shell).
    pub argv: Vec<String>,
    /// On a terminal of this size and type; else stdin, stdout and stderr
    /// are three pipes.
    pub tty: Option<Tty>,
    /// Killed (its whole process group) once this much time has passed;
    /// `None`: it runs until it ends or is killed.
    pub timeout: Option<Duration>,
    /// Environment variables added for it (names checked).
    pub env: Vec<(String, String)>,
    /// Its working directory (default: the user's home, else `/`).
    pub cwd: Option<String>,
    /// Run as this user, a name or a number (default root).
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tty {
    pub cols: u16,
    pub rows: u16,
    /// `$TERM` in the guest.
    pub term: String,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code; 128 + N when signal N ended it; 124 when it was
    /// killed at its timeout.
    pub code: i32,
    pub timed_out: bool,
}

/// Signals a running program from any thread.
pub trait Control: Send + Sync {
    /// The terminal's new size (a program on a terminal gets SIGWINCH).
    fn resize(&self, cols: u16, rows: u16);
    /// Sends `signal` (a Linux signal number) to the program's process
    /// group; on a terminal, SIGINT and SIGQUIT are typed as the keys.
    fn signal(&self, signal: i32);
    /// Ends it now, and the channel it runs on.
    fn kill(&self);
}

/// A running program. Its streams are taken once each; reading stdout
/// and stderr to their ends, then [`Process::wait`], gives the exit.
/// Dropping it before it ended kills it in the guest.
pub trait Process: Send {
    fn stdin(&mut self) -> Option<Box<dyn Write + Send>>;
    /// On a terminal: everything the terminal shows.
    fn stdout(&mut self) -> Option<Box<dyn Read + Send>>;
    /// None on a terminal.
    fn stderr(&mut self) -> Option<Box<dyn Read + Send>>;
    fn control(&self) -> Arc<dyn Control>;
    /// Waits for the end: at most its timeout and a grace period, or, for
    /// a program without one, until it ends or is killed.
    fn wait(self: Box<Self>) -> Result<Exit, GuestError>;
}

/// What a download sends: its length when known, and the bytes.
pub struct Download {
    pub length: Option<u64>,
    pub body: Box<dyn Read + Send>,
}

/// A guest file system frozen for a checkpoint (or only synced, where the
/// guest cannot freeze). Dropping it thaws it too; and should the daemon
/// go away, the guest thaws by itself within a minute.
pub trait Frozen: Send {
    /// False when the guest could only sync (no `fsfreeze`).
    fn frozen(&self) -> bool;
    fn thaw(self: Box<Self>) -> Result<(), GuestError>;
}

/// What the guest said after its clock was set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockSet {
    /// The guest's clock minus the host's when read back (seconds), if known.
    pub offset: Option<f64>,
}

/// One running guest, as the daemon uses it.
pub trait Guest: Send + Sync {
    /// The transport's name, for messages ("ssh").
    fn transport(&self) -> &'static str;
    /// Waits until the guest takes operations; false after `timeout`.
    fn wait_ready(&self, timeout: Duration) -> bool;
    /// Starts a program.
    fn exec(&self, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError>;
    /// A regular file, streamed.
    fn read_file(&self, path: &str) -> Result<Download, GuestError>;
    /// Writes a file (to a temporary name, renamed over `path` once
    /// complete); its directory must exist. Returns the bytes written.
    fn write_file(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError>;
    /// The contents of a directory as tar, streamed.
    fn read_tree(&self, path: &str) -> Result<Download, GuestError>;
    /// Unpacks a tar into a directory (made if missing), files owned by root.
    fn write_tree(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError>;
    /// Syncs and freezes the root file system until thawed.
    fn freeze(&self) -> Result<Box<dyn Frozen>, GuestError>;
    /// After a restore from saved memory: thaws a file system frozen when
    /// the state was taken, sets the clock from the host's, mixes
    /// `entropy` into the guest's pool.
    fn after_restore(&self, entropy: &[u8; 64]) -> Result<ClockSet, GuestError>;
    /// Asks the guest's init to shut down cleanly (the VMM then exits).
    fn shutdown(&self) -> Result<(), GuestError>;
    /// Gives a guest made from another's memory (a fork) its own identity:
    /// hostname, machine id, MAC, address and route, SSH host key. Only
    /// the agent can: the guest's network is not its own until then.
    fn set_identity(&self, _identity: &fcm_proto::Identity) -> Result<(), GuestError> {
        Err(GuestError::BadRequest(format!(
            "a new identity needs fcm-agent, and this guest is reached over {}",
            self.transport()
        )))
    }
}

/// Hands out [`Guest`]s; one per daemon.
pub trait Guests: Send + Sync {
    fn guest(&self, target: &Target) -> Box<dyn Guest>;
    /// The VM left `running` (stopped, paused, restored, destroyed): drop
    /// whatever connection to it is kept open.
    fn forget(&self, target: &Target);
}

/// What [`output`] gave: each stream cut at its cap.
#[derive(Debug)]
pub struct Output {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// A stream was longer than the cap (the rest was read and dropped).
    pub truncated: bool,
}

/// Runs a program to its end, feeding it `stdin` and keeping at most
/// `cap` bytes of each of stdout and stderr.
pub fn output(
    g: &dyn Guest,
    spec: &ExecSpec,
    stdin: &[u8],
    cap: usize,
) -> Result<Output, GuestError> {
    let mut p = g.exec(spec)?;
    let feeder = p.stdin().map(|mut w| {
        let data = stdin.to_vec();
        // A program that exits early closes the pipe; its status says why.
        thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let mut cut = false;
            if let Some(mut r) = r {
                let _ = (&mut r).take(cap as u64).read_to_end(&mut buf);
                cut = io::copy(&mut r, &mut io::sink()).is_ok_and(|n| n > 0);
            }
            (buf, cut)
        })
    };
    let out = drain(p.stdout());
    let err = drain(p.stderr());
    let (stdout, cut_out) = out.join().unwrap_or_default();
    let (stderr, cut_err) = err.join().unwrap_or_default();
    let exit = p.wait();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Output {
        exit: exit?,
        stdout,
        stderr,
        truncated: cut_out || cut_err,
    })
}

/// Runs a shell script of fcm's own (never user input) within `timeout`;
/// its exit code and stdout (at most 1 MiB).
pub fn script(g: &dyn Guest, text: &str, timeout: Duration) -> Result<(i32, String), GuestError> {
    let spec = ExecSpec {
        argv: vec!["sh".into(), "-c".into(), text.into()],
        timeout: Some(timeout),
        ..ExecSpec::default()
    };
    let o = output(g, &spec, b"", 1 << 20)?;
    Ok((o.exit.code, String::from_utf8_lossy(&o.stdout).into_owned()))
}
