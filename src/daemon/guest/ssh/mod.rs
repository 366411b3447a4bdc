//! The guest over SSH: the daemon's own key (`<state>/ssh/id_ed25519`),
//! the guest's host key pinned in `<vm dir>/known_hosts`, no config file,
//! no forwarding of any kind (`host::ssh::daemon_ssh_args`), one
//! multiplexed connection per VM (`mux`). Every word that reaches the
//! guest's shell is fcm's own or quoted with `host::ssh::shell_quote`.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the connector, readiness, freeze, the clock after a restore, shutdown |
//! | `exec.rs` | programs: three pipes, or a terminal (`ssh -tt` on a pty) |
//! | `files.rs` | files and directories (tar) both ways |
//! | `mux.rs` | the per-VM master connection |
//!
//! ssh's own messages go to a per-call log in the VM's directory (`-E`),
//! so the remote stderr stays the program's; exit status 255 with
//! something in that log is ssh failing, not the program.

mod exec;
mod files;
mod mux;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ClockSet, Download, ExecSpec, Frozen, Guest, GuestError, Guests, Process, Target};
use crate::host::ssh::{self, GuestScript};
use crate::host::{self, HostError};

pub use mux::SOCKET as MUX_SOCKET;

/// Freezes the guest's root file system for a checkpoint (syncs it where
/// `fsfreeze` is missing), waits for a line on stdin, thaws. If the daemon
/// dies meanwhile, stdin ends and the guest thaws; `timeout` caps it.
const FREEZE_SCRIPT: &str = "sync; if fsfreeze -f / 2>/dev/null; then echo frozen; else echo synced; fi; \
     timeout 60 head -n1 >/dev/null; fsfreeze -u / 2>/dev/null; echo thawed";

/// Run after a guest comes back from a saved state: thaws a root file
/// system frozen when the state was taken (a checkpoint), sets the clock
/// from the host's time sent on stdin, and mixes 64 host random bytes into
/// the guest's pool (not credited; QEMU's microvm has no VMGenID). With
/// Python, already running when the time arrives, the clock is set within
/// a millisecond of receipt; else `date -s`, which must first be exec'd.
const CLOCK_SCRIPT: &str = r#"fsfreeze -u / 2>/dev/null
if command -v python3 >/dev/null 2>&1; then exec python3 -c 'import sys, time
i = sys.stdin.buffer
print("ready", flush=True)
time.clock_settime(time.CLOCK_REALTIME, float(i.readline()))
print("clock-set", time.time(), flush=True)
open("/dev/urandom", "wb").write(i.read(64))'
else echo ready; read t; date -s "@$t" >/dev/null && echo clock-set $(date +%s.%N); head -c 64 > /dev/urandom; fi"#;

/// The SSH transport of every guest.
pub struct SshGuests {
    key: PathBuf,
    mux: Arc<mux::Mux>,
}

impl SshGuests {
    /// `key`: the daemon's private key.
    pub fn new(key: PathBuf) -> Self {
        Self {
            key,
            mux: Arc::default(),
        }
    }
}

impl Guests for SshGuests {
    fn guest(&self, target: &Target) -> Box<dyn Guest> {
        Box::new(SshGuest {
            t: target.clone(),
            key: self.key.clone(),
            mux: Arc::clone(&self.mux),
        })
    }

    fn forget(&self, target: &Target) {
        let g = SshGuest {
            t: target.clone(),
            key: self.key.clone(),
            mux: Arc::clone(&self.mux),
        };
        self.mux.close(target, &g.base());
    }
}

/// A per-call file for ssh's own messages, removed on drop.
pub(super) struct SshLog(PathBuf);

impl SshLog {
    fn new(t: &Target) -> Self {
        Self(
            t.dir
                .join(format!(".ssh-{:016x}.log", rand::random::<u64>())),
        )
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = fs::File::open(&self.0).and_then(|f| f.take(64 * 1024).read_to_string(&mut s));
        s.trim().to_owned()
    }
}

impl Drop for SshLog {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

pub(super) struct SshGuest {
    t: Target,
    key: PathBuf,
    mux: Arc<mux::Mux>,
}

impl SshGuest {
    /// The daemon's options and the destination.
    fn base(&self) -> Vec<String> {
        ssh::daemon_ssh_args(&self.key, &self.t.dir.join("known_hosts"), self.t.ip)
    }

    /// An ssh command line: `opts`, ssh's messages to `log`, keepalives,
    /// the VM's master connection when there is one, then `remote`.
    fn args(&self, log: &SshLog, opts: &[&str], remote: String) -> Vec<String> {
        let mut args = self.to_guest(log, opts);
        args.push(remote);
        args
    }

    /// [`Self::args`] up to the destination.
    fn to_guest(&self, log: &SshLog, opts: &[&str]) -> Vec<String> {
        let base = self.base();
        let mut args: Vec<String> = opts.iter().map(|s| (*s).to_owned()).collect();
        args.extend([
            "-E".into(),
            log.0.display().to_string(),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
        ]);
        args.extend(mux::client_args(self.mux.ready(&self.t, &base).as_deref()));
        args.extend(base);
        args
    }

    fn vm(&self) -> String {
        self.t.name.to_string()
    }

    fn host_error(&self, source: HostError) -> GuestError {
        GuestError::Host {
            vm: self.vm(),
            what: "ssh",
            source,
        }
    }

    fn unreachable(&self, detail: String) -> GuestError {
        GuestError::Unreachable {
            vm: self.vm(),
            transport: "ssh",
            detail,
        }
    }

    /// A script of fcm's own with a pipe to its stdin and its stdout read
    /// line by line.
    fn script(&self, text: &str) -> Result<(GuestScript, SshLog), GuestError> {
        let log = SshLog::new(&self.t);
        GuestScript::spawn(self.to_guest(&log, &["-T"]), text)
            .map(|s| (s, log))
            .map_err(|source| {
                self.host_error(HostError::Spawn {
                    cmd: "ssh".into(),
                    source,
                })
            })
    }
}

/// The guest's file system, frozen by [`FREEZE_SCRIPT`] until told.
struct SshFrozen {
    script: GuestScript,
    frozen: bool,
    vm: String,
    _log: SshLog,
}

impl Frozen for SshFrozen {
    fn frozen(&self) -> bool {
        self.frozen
    }

    fn thaw(mut self: Box<Self>) -> Result<(), GuestError> {
        let _ = self.script.send(b"thaw\n");
        let thawed = self.script.line(Duration::from_secs(15)).as_deref() == Some("thawed");
        if thawed {
            return Ok(());
        }
        Err(GuestError::Failed {
            vm: self.vm.clone(),
            action: "thawing",
            path: "/".into(),
            detail: "the guest did not confirm it (it thaws within 60 s by itself)".into(),
        })
    }
}

impl Guest for SshGuest {
    fn transport(&self) -> &'static str {
        "ssh"
    }

    fn wait_ready(&self, timeout: Duration) -> bool {
        ssh::wait_ready(self.t.ip, timeout)
    }

    fn exec(&self, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError> {
        exec::start(self, spec)
    }

    fn read_file(&self, path: &str) -> Result<Download, GuestError> {
        files::read_file(self, path)
    }

    fn write_file(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        files::write_file(self, path, body)
    }

    fn read_tree(&self, path: &str) -> Result<Download, GuestError> {
        files::read_tree(self, path)
    }

    fn write_tree(&self, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        files::write_tree(self, path, body)
    }

    fn freeze(&self) -> Result<Box<dyn Frozen>, GuestError> {
        let (script, log) = self.script(FREEZE_SCRIPT)?;
        let frozen = match script.line(Duration::from_secs(20)).as_deref() {
            Some("frozen") => true,
            Some("synced") => false,
            _ => {
                let said = log.text();
                return Err(self.unreachable(if said.is_empty() {
                    "no answer within 20 s".into()
                } else {
                    said
                }));
            }
        };
        Ok(Box::new(SshFrozen {
            script,
            frozen,
            vm: self.vm(),
            _log: log,
        }))
    }

    fn after_restore(&self, entropy: &[u8; 64]) -> Result<ClockSet, GuestError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut last = String::from("SSH did not answer");
        while std::time::Instant::now() < deadline {
            let (mut s, log) = self.script(CLOCK_SCRIPT)?;
            if s.line(Duration::from_secs(10)).as_deref() != Some("ready") {
                let said = log.text();
                last = if said.is_empty() {
                    "the guest did not answer over SSH".into()
                } else {
                    said
                };
                drop(s);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            // The time when the guest is ready to take it.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let mut msg = format!("{}.{:09}\n", t.as_secs(), t.subsec_nanos()).into_bytes();
            msg.extend_from_slice(entropy);
            if let Err(e) = s.send(&msg) {
                last = format!("writing to the guest's shell failed: {e}");
                continue;
            }
            let set = s.line(Duration::from_secs(5));
            let read_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            s.finish(Duration::from_secs(5));
            return match set.as_deref().and_then(|l| l.strip_prefix("clock-set")) {
                // The guest's clock read back right after the set: at most
                // the return trip behind the host's.
                Some(rest) => Ok(ClockSet {
                    offset: rest.trim().parse::<f64>().ok().map(|g| g - read_at),
                }),
                None => Err(GuestError::Failed {
                    vm: self.vm(),
                    action: "setting the clock of",
                    path: "the guest".into(),
                    detail: "date -s failed".into(),
                }),
            };
        }
        Err(self.unreachable(last))
    }

    fn shutdown(&self) -> Result<(), GuestError> {
        let log = SshLog::new(&self.t);
        let args = self.args(&log, &["-T"], "reboot".into());
        let o = host::run_outcome("ssh", &args, None, Some(Duration::from_secs(10)))
            .map_err(|e| self.host_error(e))?;
        match o.code {
            Some(255) | None => Err(self.unreachable(log.text())),
            _ => Ok(()),
        }
    }
}
