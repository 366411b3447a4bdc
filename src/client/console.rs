//! `fcm console` / `fcm attach`: the client end of the terminal stream
//! (protocol in `docs/console.md`). Puts the local terminal in raw mode
//! (restored on every exit path, termination signals included), forwards
//! keystrokes and window sizes, prints what the guest sends.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::api::{ClientError, stream_addr};
use super::terminal::{RawMode, connect, follow_size, term_size};
use crate::wire::stream::{FRAME_INPUT, Handshake, HandshakeReply, frame, keepalive, resize_frame};
use crate::wire::tls::Link;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot reach the daemon's terminal port {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{error}")]
    Refused { error: String, hint: Option<String> },
    #[error("TLS with the daemon's terminal port {addr} failed")]
    Tls {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("terminal stream failed")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ConsoleError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Connect { .. } => Some(
                "is the daemon running and its port 7778 reachable? set FCM_HOST or FCM_STREAM"
                    .into(),
            ),
            Self::Refused { hint, .. } => hint.clone(),
            Self::Tls { .. } => Some(
                "the console speaks TLS when FCM_HOST is https://; a daemon on loopback without TLS wants http://"
                    .into(),
            ),
            Self::Client(c) => c.hint(),
            Self::Io(_) => None,
        }
    }
}

/// How an attached stream ended.
#[derive(Debug)]
pub enum Ending {
    /// The client detached (tmux detach, or the daemon closed the stream);
    /// the session keeps running.
    Detached,
    /// The session's last shell exited, or the session was killed.
    Exited,
    /// The VM was stopped or destroyed.
    VmStopped,
    /// The connection broke; the session keeps running.
    Lost(io::Error),
}

/// A finished attachment: which session, and how it ended.
#[derive(Debug)]
pub struct Attached {
    pub session: String,
    pub ending: Ending,
}

impl Attached {
    /// The line to show once the local terminal is back.
    pub fn message(&self, vm: &str) -> String {
        let id = &self.session;
        match &self.ending {
            Ending::Detached => {
                format!("[detached from session {id} of {vm}; rejoin with: fcm attach {vm} {id}]")
            }
            Ending::Exited => format!("[session {id} of {vm} has ended]"),
            Ending::VmStopped => format!("[VM {vm} stopped; session {id} has ended]"),
            Ending::Lost(e) => format!(
                "[connection to the daemon lost ({e}); session {id} keeps running; rejoin with: fcm attach {vm} {id}]"
            ),
        }
    }
}

/// Leaves modes a full-screen program may have set when the stream broke
/// before tmux could undo them: alternate screen, hidden cursor, mouse
/// reporting, bracketed paste, attributes.
const TERMINAL_RESET: &[u8] =
    b"\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[0m";

/// Attaches the local terminal to `session` (or the default) of `vm`;
/// with `create`, the session is made if missing. Returns once the stream
/// ends (detach, session end, disconnect).
pub fn attach(
    token: &str,
    vm: &str,
    session: Option<&str>,
    create: bool,
) -> Result<Attached, ConsoleError> {
    let link = connect(&stream_addr())?;
    let conn = link.sock();
    let _ = conn.set_nodelay(true);
    keepalive(conn, Duration::from_secs(15), Duration::from_secs(5));
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let (cols, rows) = term_size();
    let hs = Handshake {
        vm: vm.to_owned(),
        session: session.map(str::to_owned),
        token: token.to_owned(),
        cols: Some(cols),
        rows: Some(rows),
        term: std::env::var("TERM").ok(),
        create,
        relayed_from: None,
    };
    let mut line = serde_json::to_vec(&hs).map_err(io::Error::other)?;
    line.push(b'\n');
    link.clone().write_all(&line)?;
    // The daemon may ask the guest whether the session exists first.
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reply = Vec::new();
    let mut r = BufReader::new(link.clone().take(64 * 1024));
    r.read_until(b'\n', &mut reply)?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without a reply",
        )
        .into());
    }
    let reply: HandshakeReply = serde_json::from_slice(&reply)
        .map_err(|e| io::Error::other(format!("bad reply from the daemon: {e}")))?;
    if !reply.ok {
        return Err(ConsoleError::Refused {
            error: reply.error.unwrap_or_else(|| "refused".into()),
            hint: reply.hint.filter(|h| !h.is_empty()),
        });
    }
    let already = r.buffer().to_vec();
    drop(r);
    conn.set_read_timeout(None)?;
    let session = reply.session.unwrap_or_default();

    let stdin = io::stdin();
    let raw = RawMode::enable(stdin.as_fd());
    // Both threads send frames; one lock keeps each frame whole.
    let up = Arc::new(Mutex::new(link.clone()));
    let send = |up: &Mutex<Link>, f: &[u8]| -> bool {
        let mut w = up.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(f).is_ok()
    };
    {
        // Keystrokes: stdin -> input frames. Ends with the process.
        let up = Arc::clone(&up);
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !send(&up, &frame(FRAME_INPUT, &buf[..n])) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        });
    }
    {
        let up = Arc::clone(&up);
        follow_size((cols, rows), move |c, r| send(&up, &resize_frame(c, r)));
    }
    let mut out = io::stdout().lock();
    // The tail of the output tells a detach from a session's end.
    let mut tail: Vec<u8> = Vec::with_capacity(1024);
    let mut keep = |data: &[u8]| {
        tail.extend_from_slice(data);
        if tail.len() > 512 {
            tail.drain(..tail.len() - 512);
        }
    };
    out.write_all(&already)?;
    out.flush()?;
    keep(&already);
    let mut buf = vec![0u8; 64 * 1024];
    let mut down = link.clone();
    let broken = loop {
        match down.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
                keep(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        }
    };
    let tail = String::from_utf8_lossy(&tail);
    let ending = match broken {
        Some(e) => Ending::Lost(e),
        None if tail.contains("[fcm: VM ") => Ending::VmStopped,
        None if tail.contains("[exited]") || tail.contains("[server exited]") => Ending::Exited,
        None => Ending::Detached,
    };
    if matches!(ending, Ending::Lost(_) | Ending::VmStopped) {
        let _ = out.write_all(TERMINAL_RESET);
        let _ = out.flush();
    }
    drop(raw);
    Ok(Attached { session, ending })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_say_what_to_do() {
        let a = |ending| Attached {
            session: "main".into(),
            ending,
        };
        assert!(
            a(Ending::Detached)
                .message("vm")
                .contains("rejoin with: fcm attach vm main")
        );
        assert_eq!(
            a(Ending::Exited).message("vm"),
            "[session main of vm has ended]"
        );
        assert!(
            a(Ending::Lost(io::Error::other("x")))
                .message("vm")
                .contains("keeps running")
        );
    }
}
