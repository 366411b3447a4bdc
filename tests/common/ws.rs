//! A WebSocket client for the web console's terminal (`/ui/ws`), speaking
//! as a browser does: the upgrade written by hand (`Origin`, the token as
//! the `fcm.token.<t>` subprotocol), over TLS pinned to the daemon's
//! certificate, from inside a test's network namespace.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fcm::wire::pin::{Pin, client_config};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

#[derive(Debug)]
struct Fingerprint(String);

impl Pin for Fingerprint {
    fn accept(&self, fingerprint: String) -> Result<(), String> {
        if fingerprint == self.0 {
            Ok(())
        } else {
            Err(format!("certificate {fingerprint} is not {}", self.0))
        }
    }
}

/// A TCP connection to `addr` made from inside network namespace `ns`
/// (on a thread of its own that enters it: the socket stays there).
pub fn connect_in(ns: &str, addr: SocketAddr) -> TcpStream {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).expect("netns file");
            // SAFETY: setns(2) on an open namespace fd, for this thread only.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", io::Error::last_os_error());
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
        })
        .join()
        .expect("connect thread")
    })
}

/// An open terminal WebSocket and everything the page was sent so far.
pub struct Ws {
    ws: WebSocket<Tls>,
    /// Terminal output (lossy text) and the control messages, in order.
    pub seen: String,
}

impl Ws {
    /// Opens `/ui/ws?{query}` on the daemon at `addr` (in `ns`) whose
    /// certificate has `fingerprint`; panics unless it answers 101.
    pub fn open(ns: &str, addr: SocketAddr, fingerprint: &str, token: &str, query: &str) -> Self {
        let sock = connect_in(ns, addr);
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let cfg = client_config(Arc::new(Fingerprint(fingerprint.to_owned()))).expect("tls config");
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(cfg, name).expect("tls");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let req = format!(
            "GET /ui/ws?{query} HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://{addr}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: fcm.v1, fcm.token.{token}\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).expect("upgrade request");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            assert_eq!(
                tls.read(&mut b).expect("upgrade answer"),
                1,
                "closed: {head:?}"
            );
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tls.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        Self {
            ws: WebSocket::from_raw_socket(tls, Role::Client, None),
            seen: String::new(),
        }
    }

    /// Sends terminal input (a binary message).
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.ws.send(Message::binary(keys.to_vec())).expect("send");
    }

    /// Sends a control message (a text message).
    pub fn control(&mut self, json: &str) {
        self.ws.send(Message::text(json)).expect("send");
    }

    /// Reads until what was seen matches `done`, or panics after `secs`.
    pub fn wait_until(&mut self, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(&self.seen) {
            assert!(
                Instant::now() < deadline,
                "not within {secs} s; the page saw:\n{}",
                self.seen
            );
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(Message::Text(t)) => {
                    self.seen.push_str(t.as_str());
                    self.seen.push('\n');
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("the WebSocket ended ({e}); the page saw:\n{}", self.seen),
            }
        }
        self.seen.clone()
    }

    /// Closes the WebSocket as a page does.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}
