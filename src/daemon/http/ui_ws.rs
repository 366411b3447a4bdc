//! The web console's terminal: a WebSocket (`GET /ui/ws?vm=…`) bridged to
//! the same console sessions as the terminal port (`stream::attach`), so
//! a session the browser opened is attached from the CLI and back.
//!
//! Admission, in the door (no thread until it passes):
//! - `Origin` must be the request's own origin (`http://` or `https://`
//!   as the port speaks, then `Host`): another site's page, or a client
//!   that sends no Origin, gets 403 (a browser always sends it);
//! - the token comes as a subprotocol, `fcm.token.<token>` beside
//!   `fcm.v1` (a browser cannot set `Authorization` on a WebSocket),
//!   compared in constant time: missing or wrong, 401; the answer names
//!   only `fcm.v1`;
//! - a slot of the streams' budget (`limits.http_streams`, 503 above).
//!
//! Then, on a thread of its own: the 101, the console (a refusal is a
//! `{"error","hint"}` text message and a close), and the two pumps:
//! binary messages are terminal bytes both ways, text messages JSON
//! control (`{"resize":{"cols","rows"}}` from the page; `{"attached":…}`,
//! `{"ended":…}` and `{"error":…}` from the daemon). Messages are at most
//! [`MAX_MESSAGE`] bytes; the output queue is bounded; a client that
//! takes no output for [`WRITE_TIMEOUT`] is dropped; TCP keepalive tells
//! a quiet page from a gone one.
//!
//! For a VM of another cluster host the console is opened on its owner
//! (`stream::relay::open`) and bridged the same way.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, sync_channel};
use std::thread;
use std::time::Duration;

use base64::Engine;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Bytes, Message, WebSocket};

use super::message::Head;
use super::{Ctx, error_response};
use crate::daemon::api::ApiError;
use crate::daemon::auth::{TOKEN_HINT, token_matches};
use crate::daemon::poller::{Opened, Step};
use crate::daemon::stream::attach::{self, Refusal, Terminal, Want};
use crate::daemon::stream::relay;
use crate::wire::stream::keepalive;
use crate::wire::tls::Link;

/// The subprotocol the page speaks (and the only one the answer names).
pub const PROTOCOL: &str = "fcm.v1";
/// The prefix of the subprotocol that carries the token.
pub const TOKEN_PREFIX: &str = "fcm.token.";
/// Largest message either way (a paste is one message).
const MAX_MESSAGE: usize = 1 << 20;
/// A page that takes no output for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pongs waiting for the writer, at most.
const CONTROL_QUEUE: usize = 8;

/// What the page asked for in the query.
#[derive(Debug, PartialEq)]
struct Query {
    vm: String,
    session: Option<String>,
    create: bool,
    cols: Option<u16>,
    rows: Option<u16>,
}

fn safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn query(target: &str) -> Result<Query, String> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut out = Query {
        vm: String::new(),
        session: None,
        create: false,
        cols: None,
        rows: None,
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !safe(v) {
            return Err(format!("bad value for {k:?} in the query"));
        }
        let size = || v.parse::<u16>().map_err(|_| format!("{k} is not a number"));
        match k {
            "vm" => out.vm = v.to_string(),
            "session" => out.session = Some(v.to_string()),
            "create" => out.create = v == "1" || v == "true",
            "cols" => out.cols = Some(size()?),
            "rows" => out.rows = Some(size()?),
            _ => {}
        }
    }
    if out.vm.is_empty() {
        return Err("the query names no VM (vm=<name>)".into());
    }
    Ok(out)
}

/// `host[:port]` without the scheme's default port, lower case.
fn authority(host: &str, tls: bool) -> String {
    let h = host.trim().to_ascii_lowercase();
    let default = if tls { ":443" } else { ":80" };
    h.strip_suffix(default).map(str::to_string).unwrap_or(h)
}

/// Whether `origin` is the page's own origin for a request to `host`.
fn same_origin(origin: Option<&str>, host: Option<&str>, tls: bool) -> bool {
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let scheme = if tls { "https://" } else { "http://" };
    let o = origin.trim().to_ascii_lowercase();
    o.strip_prefix(scheme)
        .is_some_and(|rest| !host.trim().is_empty() && authority(rest, tls) == authority(host, tls))
}

/// The subprotocols the page offered, in order.
fn protocols(head: &Head) -> Vec<&str> {
    head.headers()
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect()
}

fn refuse(status: u16, message: &str, hint: Option<&str>) -> Step {
    let mut e = ApiError::new(status, message);
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    Step::Answer(error_response(&e))
}

/// The door's decision on an upgrade to the terminal WebSocket.
pub(super) fn admit(ctx: &Arc<Ctx>, head: &Head, len: usize) -> Step {
    let upgrade = head.has_token("Connection", "upgrade")
        && head
            .header("Upgrade")
            .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"));
    if head.method != "GET" {
        let mut e = ApiError::new(405, "the terminal WebSocket is opened with GET");
        e.allow = Some("GET".into());
        return Step::Answer(error_response(&e));
    }
    if !same_origin(head.header("Origin"), head.header("Host"), ctx.tls) {
        return refuse(
            403,
            "a WebSocket from another origin (or with no Origin) is refused",
            None,
        );
    }
    let offered = protocols(head);
    let token = offered.iter().find_map(|p| p.strip_prefix(TOKEN_PREFIX));
    match token {
        Some(t) if token_matches(t, &ctx.token) => {}
        Some(_) => return refuse(401, "invalid token", Some(TOKEN_HINT)),
        None => return refuse(401, "missing token subprotocol", Some(TOKEN_HINT)),
    }
    if !upgrade {
        return refuse(
            400,
            "this is the web console's terminal WebSocket",
            Some("open it from the page at /ui/"),
        );
    }
    if !offered.contains(&PROTOCOL) {
        return refuse(400, "the page must offer the subprotocol fcm.v1", None);
    }
    let key = head.header("Sec-WebSocket-Key").map(str::trim);
    let key_ok = key.is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|d| d.len() == 16)
    });
    if head.header("Sec-WebSocket-Version").map(str::trim) != Some("13") || !key_ok {
        return refuse(
            400,
            "a WebSocket version 13 upgrade with a key is needed",
            None,
        );
    }
    let q = match query(&head.target) {
        Ok(q) => q,
        Err(e) => return refuse(400, &e, None),
    };
    let slot = match ctx.gate.streaming() {
        Ok(s) => s,
        Err(busy) => return refuse(503, busy.message(), Some("try again in a moment")),
    };
    let accept = accept_key(key.unwrap_or_default());
    let ctx = Arc::clone(ctx);
    Step::Pass(Box::new(move |o: Opened| {
        let Opened { sock, tls, input } = o;
        let io = super::transport(sock, tls);
        super::door::spawn("fcm-ui-ws", move || {
            // A client speaks only after the 101: bytes past the head are
            // a protocol error.
            if input.len() <= len {
                let _ = serve(&ctx, io.into_link(), &accept, q);
            }
            drop(slot);
        });
        Ok(())
    }))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// The read side of a link for a reader-only WebSocket: what it would
/// write (pongs, the close reply) is dropped here and said by the writer.
struct ReadHalf(Link);

impl Read for ReadHalf {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .max_write_buffer_size(4 * MAX_MESSAGE)
}

fn text(v: serde_json::Value) -> Message {
    Message::text(v.to_string())
}

/// What the reader hands the writer.
enum FromPage {
    Pong(Bytes),
    Closed,
}

fn serve(ctx: &Ctx, link: Link, accept: &str, q: Query) -> io::Result<()> {
    let conn = link.sock();
    let _ = conn.set_nodelay(true);
    keepalive(conn, Duration::from_secs(20), Duration::from_secs(5));
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    conn.set_read_timeout(None)?;
    let mut out = link.clone();
    out.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut ws = WebSocket::from_raw_socket(out, Role::Server, Some(config()));
    let want = Want {
        vm: &q.vm,
        session: q.session.as_deref(),
        create: q.create,
        term: None,
        cols: q.cols,
        rows: q.rows,
    };
    // A VM of another host: its console is opened there (docs/cluster.md).
    let opened = match relay::open(&ctx.m, &want, &ctx.token) {
        Some(relayed) => relayed,
        None => attach::open(&ctx.m, want, conn).map(Terminal::from),
    };
    let console = match opened {
        Ok(c) => c,
        Err(Refusal::ClientGone) => return Ok(()),
        Err(Refusal::Said(error, hint)) => {
            let _ = ws.send(text(json!({ "error": error, "hint": hint })));
            let _ = ws.close(None);
            let _ = ws.flush();
            link.shutdown();
            return Ok(());
        }
    };
    bridge(ctx, &link, ws, console)
}

fn bridge(ctx: &Ctx, link: &Link, mut ws: WebSocket<Link>, c: Terminal) -> io::Result<()> {
    let Terminal {
        vm,
        session,
        control,
        mut to_guest,
        output,
        early,
        local,
    } = c;
    // A relayed console is registered on its owner, which ends it there.
    let reg = local
        .as_ref()
        .map(|(rec, _)| ctx.s.register(rec, Arc::clone(&control)));
    let sent = ws
        .send(text(
            json!({ "attached": { "vm": vm.as_str(), "session": session.as_str() } }),
        ))
        .and_then(|()| ws.send(Message::binary(early)));
    let (tx, from_page) = sync_channel::<FromPage>(CONTROL_QUEUE);
    let reader = {
        let link = link.clone();
        let control = Arc::clone(&control);
        thread::Builder::new()
            .name("fcm-ui-ws-in".into())
            .spawn(move || {
                let mut r =
                    WebSocket::from_raw_socket(ReadHalf(link), Role::Server, Some(config()));
                while let Ok(m) = r.read() {
                    match m {
                        Message::Binary(b) => {
                            if to_guest.write_all(&b).is_err() {
                                break;
                            }
                        }
                        Message::Text(t) => {
                            if let Some((cols, rows)) = resize(t.as_str()) {
                                control.resize(cols, rows);
                            }
                        }
                        // A full queue drops the pong: the page pings again.
                        Message::Ping(p) => drop(tx.try_send(FromPage::Pong(p))),
                        Message::Close(_) => break,
                        Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                // The page is gone or broke the protocol: end the guest's
                // terminal (tmux keeps the session).
                let _ = tx.try_send(FromPage::Closed);
                control.kill();
            })?
    };
    let page_closed = match sent {
        Ok(()) => pump(&mut ws, &output, &from_page),
        Err(_) => true,
    };
    if !page_closed {
        let why = if reg
            .as_ref()
            .is_some_and(|r| r.vm_gone.load(Ordering::Acquire))
        {
            attach::vm_gone_note(&vm)
        } else {
            format!(
                "[fcm: detached from session {session}; rejoin with: fcm attach {vm} {session}]"
            )
        };
        let _ = ws.send(text(json!({ "ended": why })));
    }
    // The close handshake's frame: an answer to the page's close, or ours.
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "ended".into(),
    }));
    let _ = ws.flush();
    link.shutdown();
    control.kill();
    let _ = reader.join();
    drop(reg);
    drop(output);
    if let Some((_, process)) = local {
        let _ = process.wait();
    }
    Ok(())
}

/// Terminal output → page, and the reader's pongs, until the terminal
/// ends (false) or the page goes (true).
fn pump(
    ws: &mut WebSocket<Link>,
    output: &Receiver<Vec<u8>>,
    from_page: &Receiver<FromPage>,
) -> bool {
    loop {
        match output.recv_timeout(Duration::from_millis(250)) {
            Ok(chunk) => {
                if ws.send(Message::binary(chunk)).is_err() {
                    return true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        loop {
            match from_page.try_recv() {
                Ok(FromPage::Pong(p)) => {
                    if ws.send(Message::Pong(p)).is_err() {
                        return true;
                    }
                }
                Ok(FromPage::Closed) => return true,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }
}

/// A resize control message: `{"resize":{"cols":C,"rows":R}}`.
fn resize(t: &str) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let r = v.get("resize")?;
    let n = |k: &str| r.get(k)?.as_u64().map(|x| x.clamp(2, 1000) as u16);
    Some((n("cols")?, n("rows")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(same_origin(
            Some("http://127.0.0.1:7777"),
            Some("127.0.0.1:7777"),
            false
        ));
        assert!(same_origin(
            Some("https://h.example"),
            Some("h.example:443"),
            true
        ));
        assert!(!same_origin(
            Some("http://127.0.0.1:7777"),
            Some("127.0.0.1:7777"),
            true
        ));
        assert!(!same_origin(
            Some("http://evil.example"),
            Some("127.0.0.1:7777"),
            false
        ));
        assert!(!same_origin(Some("null"), Some("127.0.0.1:7777"), false));
        assert!(!same_origin(None, Some("127.0.0.1:7777"), false));
        assert!(!same_origin(Some("http://127.0.0.1:7777"), None, false));
    }

    #[test]
    fn queries() {
        let q = query("/ui/ws?vm=cosmic-nova&session=main&create=1&cols=100&rows=30").expect("q");
        assert_eq!(q.vm, "cosmic-nova");
        assert_eq!(q.session.as_deref(), Some("main"));
        assert!(q.create);
        assert_eq!((q.cols, q.rows), (Some(100), Some(30)));
        assert!(query("/ui/ws?session=main").is_err());
        assert!(query("/ui/ws?vm=a%20b").is_err());
        assert!(query("/ui/ws?vm=a&cols=x").is_err());
    }

    #[test]
    fn accept_keys() {
        // RFC 6455's example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn resizes() {
        assert_eq!(
            resize(r#"{"resize":{"cols":120,"rows":40}}"#),
            Some((120, 40))
        );
        assert_eq!(
            resize(r#"{"resize":{"cols":0,"rows":99999}}"#),
            Some((2, 1000))
        );
        assert_eq!(resize(r#"{"other":1}"#), None);
        assert_eq!(resize("nonsense"), None);
    }
}
