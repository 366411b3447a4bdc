//! The terminal stream (port 7778): one TCP connection per attached client.
//!
//! Protocol (full description in `docs/console.md`):
//! 1. the client sends one JSON line, at most [`MAX_HANDSHAKE`] bytes with
//!    its newline, all of it within [`HANDSHAKE_TIMEOUT`]:
//!    `{"vm":"cosmic-nova","session":"main","token":"…","cols":80,"rows":24,"term":"xterm-256color","create":true}`
//!    and then waits for the reply (anything sent early is refused);
//! 2. the daemon checks the token (constant time) before anything else, then
//!    the VM and the session, and answers one JSON line:
//!    `{"ok":true,"session":"main"}`, or `{"ok":false,"error":"…","hint":"…"}`
//!    and closes;
//! 3. then the client sends frames `[kind u8][len u16 BE][payload]`, kind 0 =
//!    input bytes, kind 1 = resize (`cols u16 BE, rows u16 BE`); the daemon
//!    sends raw terminal output until the session detaches or ends.
//!
//! The daemon runs `ssh -tt … tmux attach` on a local pty whose size it
//! sets from the handshake and the resize frames, so window changes reach
//! tmux in the guest the ordinary way (SIGWINCH → ssh window-change). When
//! either side goes away the ssh client is ended and reaped, the pty and
//! the socket are closed and both threads of the connection return; tmux in
//! the guest keeps the session.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::daemon::api::token_matches;
use crate::daemon::manager::{Manager, chain};
use crate::host;
use crate::names::SessionId;
use crate::sessions::{DEFAULT_SESSION, GUEST_TIMEOUT, SessionError, Sessions};
use crate::ssh;
use crate::store::VmRecord;

/// Largest handshake line, newline included.
pub const MAX_HANDSHAKE: usize = 4096;
/// The whole handshake line must arrive within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once (handshakes included); more are refused.
pub const MAX_STREAMS: usize = 256;
pub const FRAME_INPUT: u8 = 0;
pub const FRAME_RESIZE: u8 = 1;
/// Terminal sizes are clamped to this range in both dimensions.
const SIZE_RANGE: (u16, u16) = (2, 1000);
/// A client that accepts no output for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a refusal, how long the client's leftover bytes are drained so the
/// close does not reset the connection before the reply is read.
const LINGER: Duration = Duration::from_secs(1);
const CLIENT_HINT: &str = "connect with `fcm console <vm>` or `fcm attach <vm> <session>`";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handshake {
    pub vm: String,
    #[serde(default)]
    pub session: Option<String>,
    pub token: String,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    #[serde(default)]
    pub term: Option<String>,
    /// Create the session if it does not exist (what `fcm console` does).
    #[serde(default)]
    pub create: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandshakeReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Accepts terminal connections forever, one thread per connection.
pub fn serve(listener: TcpListener, m: Arc<Manager>, s: Arc<Sessions>, token: Arc<String>) {
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // Out of fds or similar: back off rather than spin.
                eprintln!("fcm daemon: terminal port: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = s.open_slot(MAX_STREAMS) else {
            // Answer without blocking the accept loop, then drop.
            let _ = conn.set_nonblocking(true);
            let _ = (&conn).write_all(&reply_line(&refusal(
                "too many terminal connections".into(),
                Some("try again later".into()),
            )));
            continue;
        };
        let (m, s, t) = (Arc::clone(&m), Arc::clone(&s), Arc::clone(&token));
        let spawned = thread::Builder::new()
            .name("fcm-stream".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = handle(conn, &m, &s, &t)
                    && !routine(&e)
                {
                    eprintln!("fcm daemon: terminal connection: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("fcm daemon: terminal connection: no thread: {e}");
        }
    }
}

/// Errors that only mean the client went away.
fn routine(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | TimedOut | UnexpectedEof | WouldBlock
    )
}

fn refusal(error: String, hint: Option<String>) -> HandshakeReply {
    HandshakeReply {
        ok: false,
        session: None,
        error: Some(error),
        hint: hint.filter(|h| !h.is_empty()),
    }
}

fn reply_line(r: &HandshakeReply) -> Vec<u8> {
    // Serialising these plain structs cannot fail; fall back to a fixed line.
    let mut v = serde_json::to_vec(r)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"internal error"}"#.to_vec());
    v.push(b'\n');
    v
}

/// Sends a refusal, then closes without resetting the connection.
fn refuse(conn: &TcpStream, error: String, hint: Option<String>) -> io::Result<()> {
    let mut w = conn;
    w.write_all(&reply_line(&refusal(error, hint)))?;
    let _ = conn.shutdown(Shutdown::Write);
    // Unread input makes close() send a reset, which can discard the reply
    // before the client reads it: drain a bounded amount for a bounded time.
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*conn).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    Ok(())
}

/// Reads the handshake line: at most [`MAX_HANDSHAKE`] bytes, all within
/// [`HANDSHAKE_TIMEOUT`] (a slow sender cannot stretch it), nothing after
/// the newline.
fn read_handshake(conn: &TcpStream) -> Result<Handshake, String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut line: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
        if left.is_zero() {
            return Err(timeout());
        }
        conn.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match (&*conn).read(&mut chunk) {
            Ok(0) => return Err("connection closed before the handshake".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout());
            }
            Err(e) => return Err(e.to_string()),
        };
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            if end >= MAX_HANDSHAKE {
                break;
            }
            let hs: Handshake = serde_json::from_slice(&line[..end])
                .map_err(|e| format!("malformed handshake: {e}"))?;
            if end + 1 != line.len() {
                return Err("data sent before the handshake was answered".into());
            }
            return Ok(hs);
        }
        if line.len() >= MAX_HANDSHAKE {
            break;
        }
    }
    Err(format!(
        "handshake larger than {MAX_HANDSHAKE} bytes (it must be one JSON line)"
    ))
}

fn valid_term(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'+')
}

fn clamp_size(v: Option<u16>, default: u16) -> u16 {
    v.unwrap_or(default).clamp(SIZE_RANGE.0, SIZE_RANGE.1)
}

/// Turns on TCP keepalive so a peer that vanished (network lost, machine
/// gone) is noticed within about `idle + 3 * interval` seconds, and caps
/// how long sent data may stay unacknowledged.
pub fn keepalive(conn: &TcpStream, idle: libc::c_int, interval: libc::c_int) {
    let fd = conn.as_raw_fd();
    let set = |level: libc::c_int, opt: libc::c_int, val: libc::c_int| {
        // SAFETY: setsockopt reads a c_int from a valid pointer of the
        // stated size; the fd is a socket we own for the duration.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        (idle + 3 * interval).saturating_mul(1000),
    );
}

/// The `ssh -tt … tmux …` process of one connection. Dropping it ends the
/// process (SIGHUP, then SIGKILL after 3 s) and reaps it.
struct SshChild(Child);

impl Drop for SshChild {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        host::signal(self.0.id(), libc::SIGHUP);
        let exited = host::wait_until(Duration::from_secs(3), Duration::from_millis(10), || {
            self.0.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn handle(conn: TcpStream, m: &Manager, s: &Sessions, token: &str) -> io::Result<()> {
    let _ = conn.set_nodelay(true);
    keepalive(&conn, 20, 5);
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let hs = match read_handshake(&conn) {
        Ok(h) => h,
        Err(e) => return refuse(&conn, e, Some(CLIENT_HINT.into())),
    };
    // The token first: nothing about VMs or sessions leaks to a stranger.
    if !token_matches(&hs.token, token) {
        return refuse(
            &conn,
            "invalid token".into(),
            Some("set FCM_TOKEN, or copy the daemon's <state>/.token to ~/.fcm-token".into()),
        );
    }
    let session = match SessionId::parse(hs.session.as_deref().unwrap_or(DEFAULT_SESSION)) {
        Ok(id) => id,
        Err(e) => {
            let e = SessionError::from(e);
            return refuse(&conn, chain(&e), e.hint());
        }
    };
    let rec = match m.running(&hs.vm) {
        Ok(r) => r,
        Err(e) => {
            let e = SessionError::from(e);
            return refuse(&conn, chain(&e), e.hint());
        }
    };
    let term = hs
        .term
        .filter(|t| valid_term(t))
        .unwrap_or_else(|| "xterm-256color".into());
    let (cols, rows) = (clamp_size(hs.cols, 80), clamp_size(hs.rows, 24));

    let (master, slave) = open_pty(cols, rows)?;
    let mut child = match spawn_ssh(m, &rec, &session, hs.create, &term, slave) {
        Ok(c) => SshChild(c),
        Err(e) => {
            return refuse(
                &conn,
                format!("could not start ssh: {e}"),
                Some("install openssh-client on the daemon's host".into()),
            );
        }
    };
    // Answer only once tmux is about to run in the guest, so that "ok"
    // means attached and a missing session is a clean refusal.
    let early = match await_ready(&master, &mut child.0, &conn) {
        Ok(early) => early,
        Err(NotReady::ClientGone) => return Ok(()),
        Err(NotReady::NoSession) => {
            let e = SessionError::NotFound {
                vm: rec.name.to_string(),
                session: session.to_string(),
            };
            return refuse(&conn, chain(&e), e.hint());
        }
        Err(NotReady::Failed(why)) => {
            return refuse(
                &conn,
                format!("could not reach tmux in VM {}: {why}", rec.name),
                Some("the guest may still be booting; try again in a few seconds".into()),
            );
        }
    };
    // Input is taken only after the reply: bytes sent before it are a
    // protocol error, not keystrokes for the guest.
    if pending_input(&conn) {
        return refuse(
            &conn,
            "data sent before the handshake was answered".into(),
            Some(CLIENT_HINT.into()),
        );
    }
    let ok = HandshakeReply {
        ok: true,
        session: Some(session.to_string()),
        error: None,
        hint: None,
    };
    // Declared after `child`, so it is dropped (unregistered) before the
    // child is reaped: `forget_vm` never signals a reused pid.
    let reg = s.register(&rec, child.0.id());
    (&conn).write_all(&reply_line(&ok))?;
    (&conn).write_all(&early)?;
    conn.set_read_timeout(None)?;

    let input = {
        let to_pty = master.try_clone()?;
        let from_client = conn.try_clone()?;
        let ssh_pid = child.0.id();
        thread::Builder::new()
            .name("fcm-stream-in".into())
            .spawn(move || {
                let _ = pump_input(from_client, to_pty);
                // The client is gone or broke the protocol: end the ssh
                // client (tmux keeps the session). The pid is still ours:
                // the child is reaped only after this thread is joined.
                host::signal(ssh_pid, libc::SIGHUP);
            })?
    };
    pump_output(&master, &conn);
    if reg.vm_gone.load(Ordering::Acquire) {
        let note = format!(
            "\r\n[fcm: VM {} is stopping; its sessions have ended]\r\n",
            rec.name
        );
        let _ = (&conn).write_all(note.as_bytes());
    }
    let _ = conn.shutdown(Shutdown::Both);
    let _ = input.join();
    drop(master);
    drop(reg);
    drop(child);
    Ok(())
}

/// Whether the client has sent bytes that are not yet read.
fn pending_input(conn: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv into a valid one-byte buffer; MSG_PEEK leaves it queued.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Printed by the remote command right before it execs tmux (an APC
/// string, which terminals ignore should it ever get through).
const READY: &[u8] = b"\x1b_fcm-ready\x1b\\";
/// The remote command's exit status when the session does not exist.
const NO_SESSION_STATUS: i32 = 3;

enum NotReady {
    NoSession,
    /// ssh failed (guest unreachable, tmux missing…): what it said.
    Failed(String),
    /// The client hung up while waiting.
    ClientGone,
}

/// Reads the pty until the remote command's [`READY`] marker, within
/// `GUEST_TIMEOUT`, giving up early if the client hangs up. Returns what
/// came after the marker.
fn await_ready(master: &File, child: &mut Child, conn: &TcpStream) -> Result<Vec<u8>, NotReady> {
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
        let mut pfd = [
            libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            // Only hang-ups: a client that sent early data is refused later.
            libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on two valid pollfds we own, with a bounded timeout.
        if unsafe { libc::poll(pfd.as_mut_ptr(), 2, ms.max(1)) } <= 0 {
            continue;
        }
        if pfd[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(NotReady::ClientGone);
        }
        if pfd[0].revents == 0 {
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
fn pump_output(master: &File, conn: &TcpStream) {
    let mut out = vec![0u8; 64 * 1024];
    let (mut reader, mut writer) = (master, conn);
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
fn pump_input(from: TcpStream, to_pty: File) -> io::Result<()> {
    let mut from = io::BufReader::with_capacity(64 * 1024, from);
    let mut head = [0u8; 3];
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let mut pty = &to_pty;
    loop {
        from.read_exact(&mut head)?;
        let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let payload = &mut buf[..len];
        from.read_exact(payload)?;
        match head[0] {
            FRAME_INPUT => pty.write_all(payload)?,
            FRAME_RESIZE if len == 4 => {
                let cols = u16::from_be_bytes([payload[0], payload[1]]);
                let rows = u16::from_be_bytes([payload[2], payload[3]]);
                set_winsize(
                    &to_pty,
                    clamp_size(Some(cols), 80),
                    clamp_size(Some(rows), 24),
                )?;
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unknown frame")),
        }
    }
}

fn spawn_ssh(
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
    cmd.args(&args)
        .env("TERM", term)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    // The Command still holds the slave's fds; drop them so EOF reaches us.
    drop(cmd);
    child
}

/// A pty pair sized `cols`×`rows`, both ends close-on-exec from the start
/// (another thread's fork can never inherit them), the slave in raw mode
/// so early input is not cooked before ssh takes the terminal over.
fn open_pty(cols: u16, rows: u16) -> io::Result<(File, OwnedFd)> {
    // std opens with O_CLOEXEC.
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")?;
    let mfd = master.as_raw_fd();
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt take an fd we own; ptsname_r writes a
    // NUL-terminated path into the buffer of the stated length.
    unsafe {
        if libc::grantpt(mfd) != 0
            || libc::unlockpt(mfd) != 0
            || libc::ptsname_r(mfd, name.as_mut_ptr(), name.len()) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()))?;
    // SAFETY: tcgetattr/tcsetattr on an fd we own, with a termios we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    set_winsize(&master, cols, rows)?;
    Ok((master, OwnedFd::from(slave)))
}

fn set_winsize(pty: &File, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Encodes one client frame; a payload longer than 65535 bytes is cut
/// (callers send at most that much at a time).
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut v = Vec::with_capacity(3 + usize::from(len));
    v.push(kind);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&payload[..usize::from(len)]);
    v
}

pub fn resize_frame(cols: u16, rows: u16) -> Vec<u8> {
    let mut p = cols.to_be_bytes().to_vec();
    p.extend_from_slice(&rows.to_be_bytes());
    frame(FRAME_RESIZE, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn frames_encode() {
        assert_eq!(frame(FRAME_INPUT, b"ab"), vec![0, 0, 2, b'a', b'b']);
        assert_eq!(resize_frame(80, 24), vec![1, 0, 4, 0, 80, 0, 24]);
        assert_eq!(frame(FRAME_INPUT, &vec![7; 70_000]).len(), 3 + 65_535);
    }

    #[test]
    fn handshake_parses_and_rejects_unknown_fields() {
        let h: Handshake =
            serde_json::from_str(r#"{"vm":"a","token":"t","cols":80,"rows":24}"#).expect("parse");
        assert_eq!((h.vm.as_str(), h.cols, h.create), ("a", Some(80), false));
        assert!(serde_json::from_str::<Handshake>(r#"{"vm":"a","token":"t","evil":1}"#).is_err());
    }

    #[test]
    fn terms() {
        assert!(valid_term("xterm-256color"));
        assert!(valid_term("rxvt-unicode+x"));
        assert!(!valid_term("x; rm -rf /"));
        assert!(!valid_term(""));
    }

    /// Runs `read_handshake` on a real socket fed by `client`.
    fn server_sees(client: impl FnOnce(TcpStream) + Send + 'static) -> Result<Handshake, String> {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = thread::spawn(move || client(TcpStream::connect(addr).expect("connect")));
        let (conn, _) = l.accept().expect("accept");
        let r = read_handshake(&conn);
        drop(conn);
        let _ = t.join();
        r
    }

    #[test]
    fn handshake_limits() {
        let ok = server_sees(|mut c| {
            c.write_all(b"{\"vm\":\"a\",\"token\":\"t\"}\n").expect("w");
            thread::sleep(Duration::from_millis(100));
        });
        assert_eq!(ok.expect("ok").vm, "a");
        let big = server_sees(|mut c| {
            let _ = c.write_all(&vec![b'x'; 10_000]);
        });
        assert!(big.expect_err("big").contains("larger than"));
        let early = server_sees(|mut c| {
            c.write_all(b"{\"vm\":\"a\",\"token\":\"t\"}\n\x00\x00\x01a")
                .expect("w");
            thread::sleep(Duration::from_millis(100));
        });
        assert!(early.expect_err("early").contains("before the handshake"));
        let garbage = server_sees(|mut c| {
            c.write_all(b"GET / HTTP/1.0\r\n").expect("w");
            thread::sleep(Duration::from_millis(100));
        });
        assert!(garbage.expect_err("garbage").contains("malformed"));
        let closed = server_sees(drop);
        assert!(closed.expect_err("closed").contains("closed"));
    }

    #[test]
    fn a_trickling_handshake_is_cut_at_the_deadline() {
        let t0 = Instant::now();
        let slow = server_sees(|mut c| {
            for _ in 0..80 {
                if c.write_all(b" ").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        assert!(slow.expect_err("slow").contains("no handshake within"));
        let took = t0.elapsed();
        assert!(
            took >= HANDSHAKE_TIMEOUT && took < HANDSHAKE_TIMEOUT + Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn pty_is_sized_and_close_on_exec() {
        let (master, slave) = open_pty(100, 30).expect("pty");
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes into a valid winsize; fcntl on owned fds.
        unsafe {
            assert_eq!(libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws), 0);
            for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
                assert_ne!(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            }
        }
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
    }
}
