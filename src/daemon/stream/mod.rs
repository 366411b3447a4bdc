//! The terminal-stream server (port 7778): one TCP connection per
//! attached client; the protocol's types are in `wire::stream`.
//!
//! Protocol (full description in `docs/console.md`):
//! 1. the client sends one JSON line, at most
//!    [`MAX_HANDSHAKE`](crate::wire::stream::MAX_HANDSHAKE) bytes with
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
//! The daemon runs `tmux attach` on a terminal of the guest's (the guest
//! seam: over SSH, `ssh -tt` on a local pty) sized from the handshake and
//! the resize frames, so window changes reach tmux the ordinary way. When
//! either side goes away the terminal is ended, the socket closed and
//! both threads of the connection return; tmux in the guest keeps the
//! session.

pub(crate) mod attach;
mod door;
pub(crate) mod relay;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use super::gate::{Gate, GateLimits, Slot};
use super::manager::Manager;
use super::poller::{self, LINGER, Server, Settings};
use super::sessions::Sessions;
use crate::config::Limits;
#[cfg(test)]
use crate::wire::stream::MAX_HANDSHAKE;
use crate::wire::stream::{HANDSHAKE_TIMEOUT, Handshake, HandshakeReply, keepalive};
use crate::wire::tls::Link;
use door::StreamDoor;
#[cfg(test)]
use door::handshake_line;

/// Terminal sizes are clamped to this range in both dimensions.
const SIZE_RANGE: (u16, u16) = (2, 1000);
/// A client that accepts no output for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_HINT: &str = "connect with `fcm console <vm>` or `fcm attach <vm> <session>`";

/// Serves terminal connections on `listener` (TLS when `tls` is given)
/// until the poller fails, which it returns. Until a client has shown the
/// token its connection costs no thread: the port's poller reads the
/// handshake line ([`door`]), within [`HANDSHAKE_TIMEOUT`] from accept,
/// TLS included, with the port's pre-authentication budget; an attached
/// console has a slot of `limits.stream_connections` and two threads.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: &Limits,
    m: Arc<Manager>,
    s: Arc<Sessions>,
    token: Arc<String>,
) -> io::Error {
    let gate = Gate::new(GateLimits {
        authed: limits.stream_connections,
        streams: 0,
        kept: 0,
    });
    let (_, returns) = match poller::handback(0) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let settings = Settings {
        pre_auth: limits.pre_auth_connections,
        request: HANDSHAKE_TIMEOUT,
        idle: HANDSHAKE_TIMEOUT,
        kept: 0,
    };
    let door = StreamDoor::new(m, s, token, gate);
    match Server::new("terminal port", listener, tls, door, settings, returns) {
        Ok(server) => server.run(),
        Err(e) => e,
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

/// Sends a refusal, then closes without resetting the connection.
fn refuse(link: &Link, error: String, hint: Option<String>) -> io::Result<()> {
    let mut w = link.clone();
    w.write_all(&HandshakeReply::refusal(error, hint).line())?;
    if let Link::Tls(t) = link {
        t.close_notify();
    }
    let conn = link.sock();
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

fn valid_term(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'+')
}

fn clamp_size(v: Option<u16>, default: u16) -> u16 {
    v.unwrap_or(default).clamp(SIZE_RANGE.0, SIZE_RANGE.1)
}

/// An authenticated terminal connection (its handshake read and its token
/// checked by the door), on a thread of its own: the VM, the session, the
/// guest's terminal, then the two pumps.
fn attach(link: Link, hs: Handshake, _slot: Slot, m: &Manager, s: &Sessions) -> io::Result<()> {
    // In a cluster, another host's VM's console is relayed there.
    let (link, hs) = match relay::unless_elsewhere(link, hs, m) {
        Some(both) => both,
        None => return Ok(()),
    };
    let conn = link.sock();
    let _ = conn.set_nodelay(true);
    keepalive(conn, Duration::from_secs(20), Duration::from_secs(5));
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let want = attach::Want {
        vm: &hs.vm,
        session: hs.session.as_deref(),
        create: hs.create,
        term: hs.term.clone(),
        cols: hs.cols,
        rows: hs.rows,
    };
    let console = match attach::open(m, want, conn) {
        Ok(c) => c,
        Err(attach::Refusal::ClientGone) => return Ok(()),
        Err(attach::Refusal::Said(error, hint)) => return refuse(&link, error, hint),
    };
    let attach::Console {
        rec,
        session,
        process,
        control,
        to_guest,
        output,
        early,
    } = console;
    // Input is taken only after the reply: bytes sent before it are a
    // protocol error, not keystrokes for the guest.
    if link.pending_input() {
        return refuse(
            &link,
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
    let reg = s.register(&rec, Arc::clone(&control));
    let mut out = link.clone();
    out.write_all(&ok.line())?;
    out.write_all(&early)?;
    conn.set_read_timeout(None)?;

    let input = {
        let from_client = link.clone();
        let control = Arc::clone(&control);
        thread::Builder::new()
            .name("fcm-stream-in".into())
            .spawn(move || {
                let _ = attach::pump_input(from_client, to_guest, &control);
                // The client is gone or broke the protocol: end the
                // terminal (tmux keeps the session).
                control.kill();
            })?
    };
    attach::pump_output(&output, &mut out);
    if reg.vm_gone.load(Ordering::Acquire) {
        let note = format!("\r\n{}\r\n", attach::vm_gone_note(rec.name.as_str()));
        let _ = out.write_all(note.as_bytes());
    }
    link.shutdown();
    control.kill();
    let _ = input.join();
    drop(reg);
    drop(output);
    let _ = process.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms() {
        assert!(valid_term("xterm-256color"));
        assert!(valid_term("rxvt-unicode+x"));
        assert!(!valid_term("x; rm -rf /"));
        assert!(!valid_term(""));
    }

    #[test]
    fn handshake_lines() {
        let ok = handshake_line(b"{\"vm\":\"a\",\"token\":\"t\"}\n", false);
        assert_eq!(ok.expect("ok").expect("whole").vm, "a");
        // Split anywhere: not whole yet.
        assert!(matches!(handshake_line(b"{\"vm\":\"a\",", false), Ok(None)));
        let big = handshake_line(&vec![b'x'; MAX_HANDSHAKE], false);
        assert!(big.expect_err("big").contains("larger than"));
        let mut long = vec![b' '; MAX_HANDSHAKE];
        long.push(b'\n');
        assert!(
            handshake_line(&long, false)
                .expect_err("long")
                .contains("larger than")
        );
        let early = handshake_line(b"{\"vm\":\"a\",\"token\":\"t\"}\n\x00\x00\x01a", false);
        assert!(early.expect_err("early").contains("before the handshake"));
        let garbage = handshake_line(b"GET / HTTP/1.0\r\n\r\n", false);
        assert!(garbage.expect_err("garbage").contains("malformed"));
        let closed = handshake_line(b"{\"vm\"", true);
        assert!(closed.expect_err("closed").contains("closed"));
    }
}
