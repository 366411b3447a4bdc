//! One attached console: `ssh -tt … tmux attach` on the daemon's pty,
//! the wait for the guest's ready marker, and the two pumps between the
//! pty and the client's socket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::clamp_size;
use crate::daemon::manager::Manager;
use crate::daemon::sessions::GUEST_TIMEOUT;
use crate::daemon::store::VmRecord;
use crate::host::{self, pty, ssh};
use crate::names::SessionId;
use crate::wire::stream::{Frame, read_frame};

/// Printed by the remote command right before it execs tmux (an APC
/// string, which terminals ignore should it ever get through).
const READY: &[u8] = b"\x1b_fcm-ready\x1b\\";
/// The remote command's exit status when the session does not exist.
const NO_SESSION_STATUS: i32 = 3;

pub(super) enum NotReady {
    NoSession,
    /// ssh failed (guest unreachable, tmux missing…): what it said.
    Failed(String),
    /// The client hung up while waiting.
    ClientGone,
}

/// Reads the pty until the remote command's [`READY`] marker, within
/// `GUEST_TIMEOUT`, giving up early if the client hangs up. Returns what
/// came after the marker.
pub(super) fn await_ready(
    master: &File,
    child: &mut Child,
    conn: &TcpStream,
) -> Result<Vec<u8>, NotReady> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut seen: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = seen.windows(READY.len()).position(|w| w == READY) {
            return Ok(seen.split_off(at + READY.len()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || seen.len() > 64 * 1024 {
            return Err(NotReady::Failed(format!(
                "no answer within {} s",
                GUEST_TIMEOUT.as_secs()
            )));
        }
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut pfd = [
            PollFd::new(master, PollFlags::IN),
            // Only hang-ups: a client that sent early data is refused later.
            PollFd::new(conn, PollFlags::RDHUP),
        ];
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        if !matches!(poll(&mut pfd, Some(&timeout)), Ok(n) if n > 0) {
            continue;
        }
        let (pty_ready, client) = (pfd[0].revents(), pfd[1].revents());
        if client.intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR) {
            return Err(NotReady::ClientGone);
        }
        if pty_ready.is_empty() {
            continue;
        }
        match (&*master).read(&mut chunk) {
            Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => {
                // ssh has exited (EIO): its status says why.
                let status =
                    host::wait_until(Duration::from_secs(3), Duration::from_millis(10), || {
                        child.try_wait().ok().flatten()
                    });
                if status.and_then(|s| s.code()) == Some(NO_SESSION_STATUS) {
                    return Err(NotReady::NoSession);
                }
                let text = String::from_utf8_lossy(&seen);
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let text: String = text.chars().take(300).collect();
                return Err(NotReady::Failed(if text.is_empty() {
                    "ssh exited".into()
                } else {
                    text
                }));
            }
        }
    }
}

/// Terminal output → client, until ssh closes the pty or the client is gone.
pub(super) fn pump_output(master: &File, writer: &mut impl Write) {
    let mut out = vec![0u8; 64 * 1024];
    let mut reader = master;
    loop {
        match reader.read(&mut out) {
            Ok(0) => break,
            Ok(n) => {
                if writer.write_all(&out[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break, // EIO once ssh has exited
        }
    }
}

/// Client frames → pty (input) or window size (resize).
pub(super) fn pump_input(from: impl Read, to_pty: File) -> io::Result<()> {
    let mut from = io::BufReader::with_capacity(64 * 1024, from);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let mut pty = &to_pty;
    loop {
        match read_frame(&mut from, &mut buf)? {
            Frame::Input(bytes) => pty.write_all(bytes)?,
            Frame::Resize { cols, rows } => pty::set_size(
                &to_pty,
                clamp_size(Some(cols), 80),
                clamp_size(Some(rows), 24),
            )?,
        }
    }
}

pub(super) fn spawn_ssh(
    m: &Manager,
    rec: &VmRecord,
    session: &SessionId,
    create: bool,
    term: &str,
    slave: OwnedFd,
) -> io::Result<Child> {
    // A terminal type the guest has no terminfo for would stop tmux: fall
    // back to one every guest has ($TERM comes from ssh's pty request).
    // Then the ready marker, then tmux.
    let prelude = "tput -T \"$TERM\" cols >/dev/null 2>&1 || export TERM=xterm-256color; \
                   printf '\\033_fcm-ready\\033\\\\'";
    let remote = if create {
        format!("{prelude}; exec tmux -u new-session -A -s {session}")
    } else {
        format!(
            "tmux has-session -t ={session} 2>/dev/null || exit {NO_SESSION_STATUS}; \
             {prelude}; exec tmux -u attach-session -t ={session}"
        )
    };
    let mut args: Vec<String> = [
        "-tt",
        // No escape character: `~.` typed in the console is the guest's.
        "-e",
        "none",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=3",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(ssh::daemon_ssh_args(
        m.daemon_key(),
        &m.known_hosts(&rec.id),
        rec.ip,
    ));
    args.push(remote);
    let mut cmd = Command::new("ssh");
    cmd.args(&args).env("TERM", term);
    pty::spawn_on(cmd, slave)
}
