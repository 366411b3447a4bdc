//! One SSH connection per VM, shared by every operation (OpenSSH's
//! connection multiplexing). Under TCG a login costs the guest about a
//! second of CPU; a new session on an open connection, tens of
//! milliseconds. The master is started on first use and runs in the
//! background (`ControlPersist`: it ends by itself after [`PERSIST_SECS`]
//! without a session, or when the guest stops answering its keepalives);
//! the daemon ends it when the VM leaves `running`. Its control socket is
//! `<vm dir>/ssh.mux`, in the daemon's 0700 state dir.
//!
//! A client given the socket falls back to a direct connection by itself
//! when no master answers there, so a master that died costs a login,
//! never an operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::daemon::lock;
use crate::host;
use crate::names::VmId;

use super::super::Target;

/// The control socket's name in the VM's directory.
pub const SOCKET: &str = "ssh.mux";
/// A master with no session for this long ends by itself.
const PERSIST_SECS: u32 = 600;
/// Longer socket paths do not fit a `sockaddr_un` with the suffix ssh
/// adds while binding: such VMs are reached without a master.
const PATH_LIMIT: usize = 90;
/// How long starting a master (one login) may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Slot {
    /// Serialises starting and checking this VM's master.
    start: Mutex<Option<u32>>,
}

/// The masters of every VM.
#[derive(Default)]
pub struct Mux {
    vms: Mutex<HashMap<VmId, Arc<Slot>>>,
}

fn socket_of(t: &Target) -> PathBuf {
    t.dir.join(SOCKET)
}

/// The pid in `ssh -O check`'s answer: "Master running (pid=N)".
fn parse_pid(said: &str) -> Option<u32> {
    let rest = said.split("pid=").nth(1)?;
    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
        .split(')')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The pid of the master serving `socket`, asked over the socket.
fn check(socket: &Path, base: &[String]) -> Option<u32> {
    let mut args: Vec<String> = vec![
        "-S".into(),
        socket.display().to_string(),
        "-O".into(),
        "check".into(),
    ];
    args.extend(base.iter().cloned());
    let o = host::run_outcome("ssh", &args, None, Some(Duration::from_secs(5))).ok()?;
    (o.code == Some(0)).then(|| parse_pid(&o.stderr)).flatten()
}

impl Mux {
    /// The control socket of a live master for `t`, started if needed;
    /// `None`: connect directly. `base` is the daemon's ssh options and
    /// destination (`host::ssh::daemon_ssh_args`).
    pub fn ready(&self, t: &Target, base: &[String]) -> Option<PathBuf> {
        let socket = socket_of(t);
        if socket.as_os_str().len() > PATH_LIMIT {
            return None;
        }
        let slot = Arc::clone(lock(&self.vms).entry(t.id.clone()).or_default());
        let mut master = lock(&slot.start);
        let marker = socket.display().to_string();
        if let Some(pid) = *master
            && host::process_alive(pid, &marker)
        {
            return Some(socket);
        }
        // A master of an earlier daemon may still serve the socket.
        if socket.exists() {
            if let Some(pid) = check(&socket, base) {
                *master = Some(pid);
                return Some(socket);
            }
            let _ = std::fs::remove_file(&socket);
        }
        let mut args: Vec<String> = [
            "-o",
            "ControlMaster=yes",
            "-o",
            &format!("ControlPersist={PERSIST_SECS}"),
            "-S",
            &marker,
            "-N",
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=3",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(base.iter().cloned());
        // The foreground ssh returns once logged in; the master lives on.
        let started = host::run_outcome("ssh", &args, None, Some(START_TIMEOUT));
        if !matches!(started, Ok(ref o) if o.code == Some(0)) {
            let _ = std::fs::remove_file(&socket);
            return None;
        }
        *master = check(&socket, base);
        master.map(|_| socket)
    }

    /// Ends the master of `t`, if any.
    pub fn close(&self, t: &Target, base: &[String]) {
        let slot = lock(&self.vms).remove(&t.id);
        let socket = socket_of(t);
        let pid = slot.and_then(|s| *lock(&s.start));
        let marker = socket.display().to_string();
        // Asked over the socket first (clean), then by signal.
        if socket.exists() {
            let mut args: Vec<String> =
                vec!["-S".into(), marker.clone(), "-O".into(), "exit".into()];
            args.extend(base.iter().cloned());
            let _ = host::run_outcome("ssh", &args, None, Some(Duration::from_secs(5)));
        }
        if let Some(pid) = pid
            && host::process_alive(pid, &marker)
        {
            host::signal(pid, host::Signal::TERM);
        }
        let _ = std::fs::remove_file(&socket);
    }
}

/// The options that send one ssh through the master at `socket`.
pub fn client_args(socket: Option<&Path>) -> Vec<String> {
    match socket {
        Some(s) => vec![
            "-S".into(),
            s.display().to_string(),
            "-o".into(),
            "ControlMaster=no".into(),
        ],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_pid_is_read_from_ssh_check() {
        assert_eq!(parse_pid("Master running (pid=18567)\r\n"), Some(18567));
        assert_eq!(parse_pid("Control socket connect(x): No such file"), None);
    }
}
