//! The terminal-stream server (port 7778): one TCP connection per
//! attached client; the protocol's types are in `wire::stream`.
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
//! The daemon runs `tmux attach` on a terminal of the guest's (the guest
//! seam: over SSH, `ssh -tt` on a local pty) sized from the handshake and
//! the resize frames, so window changes reach tmux the ordinary way. When
//! either side goes away the terminal is ended, the socket closed and
//! both threads of the connection return; tmux in the guest keeps the
//! session.

mod attach;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use super::auth::{TOKEN_HINT, token_matches};
use super::gate::{Gate, GateLimits, PreAuth};
use super::guest::Tty;
use super::manager::Manager;
use super::sessions::{SessionError, Sessions};
use crate::config::Limits;
use crate::error::chain;
use crate::names::SessionId;
use crate::wire::DEFAULT_SESSION;
use crate::wire::stream::{HANDSHAKE_TIMEOUT, Handshake, HandshakeReply, MAX_HANDSHAKE, keepalive};
use crate::wire::tls::{DeadlineStream, Link, TlsLink, handshake};

/// Terminal sizes are clamped to this range in both dimensions.
const SIZE_RANGE: (u16, u16) = (2, 1000);
/// A client that accepts no output for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a refusal, how long the client's leftover bytes are drained so the
/// close does not reset the connection before the reply is read.
const LINGER: Duration = Duration::from_secs(1);
const CLIENT_HINT: &str = "connect with `fcm console <vm>` or `fcm attach <vm> <session>`";
/// The TLS record type of a handshake: what a TLS client sends first.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts terminal connections forever, one thread per connection,
/// admitted through a [`Gate`]: unauthenticated connections have their own
/// small budget (per port and per peer) and [`HANDSHAKE_TIMEOUT`] from
/// accept to the end of the handshake line, TLS included; attached ones
/// have `limits.stream_connections`.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: &Limits,
    m: Arc<Manager>,
    s: Arc<Sessions>,
    token: Arc<String>,
) {
    let gate = Gate::new(GateLimits {
        total: limits.pre_auth_connections,
        per_peer: limits.pre_auth_per_peer,
        authed: limits.stream_connections,
        streams: 0,
    });
    let plain = tls.is_none();
    gate.accept_loop(
        &listener,
        "terminal port",
        "fcm-stream",
        |r| {
            plain.then(|| {
                HandshakeReply::refusal(r.message().into(), Some("try again later".into())).line()
            })
        },
        move |conn, slot| {
            if let Err(e) = open(conn, slot, tls.clone(), &m, &s, &token)
                && !routine(&e)
            {
                eprintln!("fcm daemon: terminal connection: {e}");
            }
        },
    );
}

/// The TLS handshake when the port speaks TLS (within the handshake's
/// deadline), then the terminal protocol.
fn open(
    conn: TcpStream,
    slot: PreAuth,
    tls: Option<Arc<ServerConfig>>,
    m: &Manager,
    s: &Sessions,
    token: &str,
) -> io::Result<()> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let link = match tls {
        None => Link::Plain(Arc::new(conn)),
        Some(cfg) => {
            conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            let mut first = [0u8; 1];
            match conn.peek(&mut first) {
                Ok(1) if first[0] == TLS_HANDSHAKE => {}
                Ok(1) => {
                    // A plain client on the TLS port: tell it in plain text.
                    let plain = Link::Plain(Arc::new(conn));
                    return refuse(
                        &plain,
                        "this terminal port speaks TLS".into(),
                        Some(
                            "the console uses TLS when the API does: set FCM_HOST=https://<host>:7777"
                                .into(),
                        ),
                    );
                }
                _ => return Ok(()),
            }
            let mut tls = ServerConnection::new(cfg).map_err(io::Error::other)?;
            let sock = conn.try_clone()?;
            let mut ds = DeadlineStream::new(conn, Some(deadline));
            handshake(&mut tls, &mut ds)?;
            Link::Tls(TlsLink::new(tls.into(), sock))
        }
    };
    handle(link, slot, deadline, m, s, token)
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

/// Reads the handshake line: at most [`MAX_HANDSHAKE`] bytes, all by
/// `deadline` ([`HANDSHAKE_TIMEOUT`] after accept: a slow sender cannot
/// stretch it), nothing after the newline.
fn read_handshake(link: &Link, deadline: Instant) -> Result<Handshake, String> {
    let mut reader = link.clone();
    let conn = link.sock();
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
        let n = match reader.read(&mut chunk) {
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
            if link.pending_input() {
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

fn handle(
    link: Link,
    slot: PreAuth,
    deadline: Instant,
    m: &Manager,
    s: &Sessions,
    token: &str,
) -> io::Result<()> {
    let conn = link.sock();
    let _ = conn.set_nodelay(true);
    keepalive(conn, Duration::from_secs(20), Duration::from_secs(5));
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let hs = match read_handshake(&link, deadline) {
        Ok(h) => h,
        Err(e) => return refuse(&link, e, Some(CLIENT_HINT.into())),
    };
    // The token first: nothing about VMs or sessions leaks to a stranger.
    if !token_matches(&hs.token, token) {
        return refuse(&link, "invalid token".into(), Some(TOKEN_HINT.into()));
    }
    // Authenticated: out of the strangers' budget, into the users'.
    let _slot = match slot.authenticated() {
        Ok(a) => a,
        Err(_) => {
            return refuse(
                &link,
                "too many terminal connections".into(),
                Some("try again later".into()),
            );
        }
    };
    let session = match SessionId::parse(hs.session.as_deref().unwrap_or(DEFAULT_SESSION)) {
        Ok(id) => id,
        Err(e) => {
            let e = SessionError::from(e);
            return refuse(&link, chain(&e), e.hint());
        }
    };
    let rec = match m.running(&hs.vm) {
        Ok(r) => r,
        Err(e) => {
            let e = SessionError::from(e);
            return refuse(&link, chain(&e), e.hint());
        }
    };
    let term = hs
        .term
        .filter(|t| valid_term(t))
        .unwrap_or_else(|| "xterm-256color".into());
    let (cols, rows) = (clamp_size(hs.cols, 80), clamp_size(hs.rows, 24));

    let tty = Tty { cols, rows, term };
    let mut process = match m.guest(&rec).exec(&attach::spec(&session, hs.create, tty)) {
        Ok(p) => p,
        Err(e) => return refuse(&link, chain(&e), e.hint()),
    };
    let control = process.control();
    let (Some(to_guest), Some(from_guest)) = (process.stdin(), process.stdout()) else {
        return refuse(
            &link,
            "the guest's terminal has no input or output".into(),
            None,
        );
    };
    let output = attach::output_queue(from_guest)?;
    // Answer only once tmux is about to run in the guest, so that "ok"
    // means attached and a missing session is a clean refusal.
    let early = match attach::await_ready(&output, conn) {
        Ok(early) => early,
        Err(attach::NotReady::ClientGone) => return Ok(()),
        Err(attach::NotReady::Ended) => {
            let e = match process.wait() {
                Ok(exit) if exit.code == attach::NO_SESSION_STATUS => SessionError::NotFound {
                    vm: rec.name.to_string(),
                    session: session.to_string(),
                },
                Ok(exit) => {
                    return refuse(
                        &link,
                        format!(
                            "could not reach tmux in VM {}: it exited with status {}",
                            rec.name, exit.code
                        ),
                        Some("the guest may still be booting; try again in a few seconds".into()),
                    );
                }
                Err(source) => SessionError::Guest {
                    vm: rec.name.to_string(),
                    source: Box::new(source),
                },
            };
            return refuse(&link, chain(&e), e.hint());
        }
        Err(attach::NotReady::Failed(why)) => {
            return refuse(
                &link,
                format!("could not reach tmux in VM {}: {why}", rec.name),
                Some("the guest may still be booting; try again in a few seconds".into()),
            );
        }
    };
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
        let note = format!(
            "\r\n[fcm: VM {} is stopping; its sessions have ended]\r\n",
            rec.name
        );
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

    /// Runs `read_handshake` on a real socket fed by `client`.
    fn server_sees(client: impl FnOnce(TcpStream) + Send + 'static) -> Result<Handshake, String> {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = thread::spawn(move || client(TcpStream::connect(addr).expect("connect")));
        let (conn, _) = l.accept().expect("accept");
        let link = Link::Plain(Arc::new(conn));
        let r = read_handshake(&link, Instant::now() + HANDSHAKE_TIMEOUT);
        drop(link);
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
}
