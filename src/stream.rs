//! The terminal stream (port 7778): one TCP connection per attached client.
//!
//! Protocol (see ARCHITECTURE.md):
//! 1. the client sends one JSON line, at most 4 KiB, within 5 s:
//!    `{"vm":"cosmic-nova","session":"main","token":"…","cols":80,"rows":24,"term":"xterm-256color","create":true}`
//! 2. the daemon checks the token (constant time), the VM and the session,
//!    and answers one JSON line: `{"ok":true,"session":"main"}` or
//!    `{"ok":false,"error":"…","hint":"…"}` (then closes);
//! 3. then the client sends frames `[kind u8][len u16 BE][payload]`, kind 0 =
//!    input bytes, kind 1 = resize (`cols u16 BE, rows u16 BE`); the daemon
//!    sends raw terminal output.
//!
//! The daemon runs `ssh -tt … tmux attach` on a local pty whose size it
//! sets from the handshake and the resize frames, so window changes reach
//! tmux in the guest the ordinary way (SIGWINCH → ssh window-change).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::daemon::api::token_matches;
use crate::daemon::manager::{Manager, chain};
use crate::names::SessionId;
use crate::sessions::{DEFAULT_SESSION, HANDSHAKE_TIMEOUT, SessionError, Sessions};
use crate::ssh;

pub const MAX_HANDSHAKE: usize = 4096;
const MAX_STREAMS: usize = 256;
pub const FRAME_INPUT: u8 = 0;
pub const FRAME_RESIZE: u8 = 1;

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

pub fn serve(listener: TcpListener, m: Arc<Manager>, s: Arc<Sessions>, token: Arc<String>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if s.active_streams() >= MAX_STREAMS {
            let _ = refuse(&conn, "too many terminal connections".into(), None);
            continue;
        }
        let (m, s, t) = (Arc::clone(&m), Arc::clone(&s), Arc::clone(&token));
        thread::spawn(move || {
            s.streams.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = handle(conn, &m, &s, &t) {
                // A client that went away is routine.
                if e.kind() != io::ErrorKind::BrokenPipe
                    && e.kind() != io::ErrorKind::ConnectionReset
                {
                    eprintln!("fcm daemon: terminal connection: {e}");
                }
            }
            s.streams.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn refuse(mut conn: &TcpStream, error: String, hint: Option<String>) -> io::Result<()> {
    let reply = HandshakeReply {
        ok: false,
        session: None,
        error: Some(error),
        hint,
    };
    let mut line = serde_json::to_string(&reply).map_err(io::Error::other)?;
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

/// Reads the handshake line with a deadline and a size cap.
fn read_handshake(conn: &TcpStream) -> Result<Handshake, String> {
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut r = BufReader::new(conn.take(MAX_HANDSHAKE as u64 + 1));
    match r.read_until(b'\n', &mut line) {
        Ok(_) if line.len() > MAX_HANDSHAKE => {
            return Err(format!("handshake larger than {MAX_HANDSHAKE} bytes"));
        }
        Ok(0) => return Err("connection closed before the handshake".into()),
        Ok(_) if !line.ends_with(b"\n") => return Err("handshake must be one JSON line".into()),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!(
                "no handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    // Nothing may be buffered past the newline: the client waits for the reply.
    if !r.buffer().is_empty() {
        return Err("data sent before the handshake was answered".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("malformed handshake: {e}"))
}

fn valid_term(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

fn handle(conn: TcpStream, m: &Manager, s: &Sessions, token: &str) -> io::Result<()> {
    let hs = match read_handshake(&conn) {
        Ok(h) => h,
        Err(e) => return refuse(&conn, e, Some("use `fcm console` or `fcm attach`".into())),
    };
    if !token_matches(&hs.token, token) {
        return refuse(
            &conn,
            "invalid token".into(),
            Some("set FCM_TOKEN or ~/.fcm-token".into()),
        );
    }
    let session = match SessionId::parse(hs.session.as_deref().unwrap_or(DEFAULT_SESSION)) {
        Ok(id) => id,
        Err(e) => return refuse(&conn, e.to_string(), None),
    };
    let rec = match m.running(&hs.vm) {
        Ok(r) => r,
        Err(e) => return refuse(&conn, chain(&e), e.hint().map(Into::into)),
    };
    if !hs.create
        && let Err(e) = s.require(m, &rec, &session)
    {
        let hint = e.hint();
        let msg = chain(&e);
        return refuse(
            &conn,
            msg,
            hint.or_else(|| matches!(e, SessionError::NotFound { .. }).then(String::new)),
        );
    }
    let term = hs
        .term
        .filter(|t| valid_term(t))
        .unwrap_or_else(|| "xterm-256color".into());
    let (cols, rows) = (
        hs.cols.unwrap_or(80).clamp(2, 1000),
        hs.rows.unwrap_or(24).clamp(2, 1000),
    );

    let (master, slave) = openpty(cols, rows)?;
    let remote = if hs.create {
        format!("exec tmux -u new-session -A -s {session}")
    } else {
        format!("exec tmux -u attach-session -t ={session}")
    };
    let mut args = ssh::daemon_ssh_args(m.daemon_key(), &m.known_hosts(&rec.id), rec.ip);
    args.insert(0, "-tt".into());
    args.extend(["-o".into(), "ServerAliveInterval=15".into(), remote]);
    let mut cmd = Command::new("ssh");
    cmd.args(&args)
        .env("TERM", &term)
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
    let mut child = cmd.spawn()?;
    // The Command still holds the slave's fds; drop them so EOF reaches us.
    drop(cmd);

    let ok = HandshakeReply {
        ok: true,
        session: Some(session.to_string()),
        error: None,
        hint: None,
    };
    let mut line = serde_json::to_string(&ok).map_err(io::Error::other)?;
    line.push('\n');
    (&conn).write_all(line.as_bytes())?;
    conn.set_read_timeout(None)?;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;

    let master = File::from(master);
    let input = {
        let mut to_pty = master.try_clone()?;
        let mut from_client = conn.try_clone()?;
        let resize_fd = master.try_clone()?;
        let child_pid = child.id();
        thread::spawn(move || {
            let _ = pump_input(&mut from_client, &mut to_pty, &resize_fd);
            // The client is gone: end the ssh client (tmux keeps the session).
            crate::host::signal(child_pid, libc::SIGHUP);
        })
    };
    let mut out = [0u8; 16 * 1024];
    let mut reader = &master;
    let mut writer = &conn;
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
    let _ = conn.shutdown(Shutdown::Both);
    crate::host::signal(child.id(), libc::SIGHUP);
    if crate::host::wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    })
    .is_none()
    {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = input.join();
    Ok(())
}

fn pump_input(from: &mut TcpStream, to_pty: &mut File, pty: &File) -> io::Result<()> {
    let mut head = [0u8; 3];
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        from.read_exact(&mut head)?;
        let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let payload = &mut buf[..len];
        from.read_exact(payload)?;
        match head[0] {
            FRAME_INPUT => to_pty.write_all(payload)?,
            FRAME_RESIZE if len == 4 => {
                let cols = u16::from_be_bytes([payload[0], payload[1]]).clamp(2, 1000);
                let rows = u16::from_be_bytes([payload[2], payload[3]]).clamp(2, 1000);
                set_winsize(pty, cols, rows)?;
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unknown frame")),
        }
    }
}

fn openpty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the provided ints; name and termios
    // may be null; ws points to a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both fds are open and owned by nobody else.
    let fds = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&fds.0, &fds.1] {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(fds)
}

fn set_winsize(pty: &File, cols: u16, rows: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
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

/// Encodes one client frame.
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

    #[test]
    fn frames_encode() {
        assert_eq!(frame(FRAME_INPUT, b"ab"), vec![0, 0, 2, b'a', b'b']);
        assert_eq!(resize_frame(80, 24), vec![1, 0, 4, 0, 80, 0, 24]);
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
        assert!(!valid_term("x; rm -rf /"));
    }
}
