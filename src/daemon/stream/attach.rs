//! One attached console: `tmux attach` on a terminal of the guest's
//! (through the guest seam), the wait for the guest's ready marker, and
//! the two pumps between that terminal and the client's socket.
//! [`open`] is shared by both transports of a console: the terminal port
//! and the web console's WebSocket (`daemon::http::ui_ws`), so a session
//! opened in one is attached from the other.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use super::{clamp_size, valid_term};
use crate::daemon::guest::{Control, ExecSpec, Process, Tty};
use crate::daemon::manager::Manager;
use crate::daemon::sessions::{GUEST_TIMEOUT, SessionError};
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::names::SessionId;
use crate::wire::DEFAULT_SESSION;
use crate::wire::stream::{Frame, read_frame};

/// Printed by the remote command right before it execs tmux (an APC
/// string, which terminals ignore should it ever get through).
const READY: &[u8] = b"\x1b_fcm-ready\x1b\\";
/// The remote command's exit status when the session does not exist.
const NO_SESSION_STATUS: i32 = 3;
/// Chunks of terminal output held between the guest and the client.
const QUEUE: usize = 16;

enum NotReady {
    /// The program ended before the marker (its status says why).
    Ended,
    /// No marker within the deadline, or garbage: what the guest said.
    Failed(String),
    /// The client hung up while waiting.
    ClientGone,
}

/// What a client asks for: a VM, a session (default `main`), whether to
/// make it, the terminal's type and size (clamped; defaults 80×24).
pub(crate) struct Want<'a> {
    pub vm: &'a str,
    pub session: Option<&'a str>,
    pub create: bool,
    pub term: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// Why no console was opened.
pub(crate) enum Refusal {
    /// The client hung up while it was being opened.
    ClientGone,
    /// An error and a hint, for the client.
    Said(String, Option<String>),
}

/// `tmux attach` running on a terminal of the guest's, past its ready
/// marker: its input, its output (a bounded queue), what came after the
/// marker, and the handle that resizes or ends it.
pub(crate) struct Console {
    pub rec: VmRecord,
    pub session: SessionId,
    pub process: Box<dyn Process>,
    pub control: Arc<dyn Control>,
    pub to_guest: Box<dyn Write + Send>,
    pub output: Receiver<Vec<u8>>,
    pub early: Vec<u8>,
}

/// A console as the web console bridges it: here (`local`: the VM's
/// record and the program) or relayed to the VM's owner (`stream::relay`).
pub(crate) struct Terminal {
    pub vm: String,
    pub session: String,
    pub control: Arc<dyn Control>,
    pub to_guest: Box<dyn Write + Send>,
    pub output: Receiver<Vec<u8>>,
    pub early: Vec<u8>,
    pub local: Option<(VmRecord, Box<dyn Process>)>,
}

impl From<Console> for Terminal {
    fn from(c: Console) -> Self {
        Self {
            vm: c.rec.name.to_string(),
            session: c.session.to_string(),
            control: c.control,
            to_guest: c.to_guest,
            output: c.output,
            early: c.early,
            local: Some((c.rec, c.process)),
        }
    }
}

fn said(e: &SessionError) -> Refusal {
    Refusal::Said(chain(e), e.hint())
}

/// Opens a console as `want` says, watching `conn` (the client's socket)
/// for a hang-up while the guest starts tmux.
pub(crate) fn open(m: &Manager, want: Want<'_>, conn: &TcpStream) -> Result<Console, Refusal> {
    let session = SessionId::parse(want.session.unwrap_or(DEFAULT_SESSION))
        .map_err(|e| said(&SessionError::from(e)))?;
    let rec = m
        .running_console(want.vm)
        .map_err(|e| said(&SessionError::from(e)))?;
    let term = want
        .term
        .filter(|t| valid_term(t))
        .unwrap_or_else(|| "xterm-256color".into());
    let (cols, rows) = (clamp_size(want.cols, 80), clamp_size(want.rows, 24));
    let tty = Tty { cols, rows, term };
    let mut process = m
        .guest(&rec)
        .exec(&spec(&session, want.create, tty))
        .map_err(|e| Refusal::Said(chain(&e), e.hint()))?;
    let control = process.control();
    let (Some(to_guest), Some(from_guest)) = (process.stdin(), process.stdout()) else {
        return Err(Refusal::Said(
            "the guest's terminal has no input or output".into(),
            None,
        ));
    };
    let output = output_queue(from_guest)
        .map_err(|e| Refusal::Said(format!("no thread for the console's output: {e}"), None))?;
    let booting = || Some("the guest may still be booting; try again in a few seconds".into());
    // Ready only once tmux is about to run in the guest, so that "ok"
    // means attached and a missing session is a clean refusal.
    let early = match await_ready(&output, conn) {
        Ok(early) => early,
        Err(NotReady::ClientGone) => return Err(Refusal::ClientGone),
        Err(NotReady::Ended) => {
            let e = match process.wait() {
                Ok(exit) if exit.code == NO_SESSION_STATUS => SessionError::NotFound {
                    vm: rec.name.to_string(),
                    session: session.to_string(),
                },
                Ok(exit) => {
                    return Err(Refusal::Said(
                        format!(
                            "could not reach tmux in VM {}: it exited with status {}",
                            rec.name, exit.code
                        ),
                        booting(),
                    ));
                }
                Err(source) => SessionError::Guest {
                    vm: rec.name.to_string(),
                    source: Box::new(source),
                },
            };
            return Err(said(&e));
        }
        Err(NotReady::Failed(why)) => {
            return Err(Refusal::Said(
                format!("could not reach tmux in VM {}: {why}", rec.name),
                booting(),
            ));
        }
    };
    Ok(Console {
        rec,
        session,
        process,
        control,
        to_guest,
        output,
        early,
    })
}

/// What a client sees when its console ends because the VM stops.
pub(crate) fn vm_gone_note(vm: &str) -> String {
    format!("[fcm: VM {vm} is stopping; its sessions have ended]")
}

/// The program that attaches to (or makes) `session` on a terminal.
fn spec(session: &SessionId, create: bool, tty: Tty) -> ExecSpec {
    // A terminal type the guest has no terminfo for would stop tmux: fall
    // back to one every guest has. Then the ready marker, then tmux.
    let prelude = "tput -T \"$TERM\" cols >/dev/null 2>&1 || export TERM=xterm-256color; \
                   printf '\\033_fcm-ready\\033\\\\'";
    let script = if create {
        format!("{prelude}; exec tmux -u new-session -A -s {session}")
    } else {
        format!(
            "tmux has-session -t ={session} 2>/dev/null || exit {NO_SESSION_STATUS}; \
             {prelude}; exec tmux -u attach-session -t ={session}"
        )
    };
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script],
        tty: Some(tty),
        ..ExecSpec::default()
    }
}

/// The terminal's output as chunks on a bounded queue, read by a thread
/// of its own (so the wait for the marker can watch the client too).
pub(crate) fn output_queue(mut out: Box<dyn Read + Send>) -> io::Result<Receiver<Vec<u8>>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    thread::Builder::new()
        .name("fcm-stream-out".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })?;
    Ok(rx)
}

/// Whether the client hung up (without taking its data).
fn client_gone(conn: &TcpStream) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut pfd = [PollFd::new(conn, PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut pfd, Some(&zero)), Ok(n) if n > 0)
        && pfd[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// Reads the terminal until the remote command's [`READY`] marker, within
/// `GUEST_TIMEOUT`, giving up early if the client hangs up. Returns what
/// came after the marker.
fn await_ready(out: &Receiver<Vec<u8>>, conn: &TcpStream) -> Result<Vec<u8>, NotReady> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut seen: Vec<u8> = Vec::new();
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
        if client_gone(conn) {
            return Err(NotReady::ClientGone);
        }
        match out.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if seen.is_empty() {
                    return Err(NotReady::Ended);
                }
                let text = String::from_utf8_lossy(&seen);
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                return Err(NotReady::Failed(text.chars().take(300).collect()));
            }
        }
    }
}

/// Terminal output → client, until the terminal closes or the client is gone.
pub(crate) fn pump_output(out: &Receiver<Vec<u8>>, writer: &mut impl Write) {
    while let Ok(chunk) = out.recv() {
        if writer.write_all(&chunk).is_err() {
            break;
        }
    }
}

/// Client frames → terminal (input) or its size (resize).
pub(super) fn pump_input(
    from: impl Read,
    mut to: Box<dyn Write + Send>,
    control: &Arc<dyn Control>,
) -> io::Result<()> {
    let mut from = io::BufReader::with_capacity(64 * 1024, from);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        match read_frame(&mut from, &mut buf)? {
            Frame::Input(bytes) => to.write_all(bytes)?,
            Frame::Resize { cols, rows } => {
                control.resize(clamp_size(Some(cols), 80), clamp_size(Some(rows), 24));
            }
        }
    }
}
