//! The terminal stream (port 7778), both ends' view of it. Full
//! description in docs/console.md:
//! 1. the client sends one [`Handshake`] JSON line, at most
//!    [`MAX_HANDSHAKE`] bytes with its newline, all of it within
//!    [`HANDSHAKE_TIMEOUT`], and waits for the reply;
//! 2. the daemon answers one [`HandshakeReply`] line (`ok` means attached);
//! 3. then the client sends frames `[kind u8][len u16 BE][payload]`
//!    ([`Frame`]), and the daemon sends raw terminal output.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest handshake line, newline included.
pub const MAX_HANDSHAKE: usize = 4096;
/// The whole handshake line must arrive within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// In a cluster: the host that relayed this connection (docs/cluster.md);
    /// such a connection is served where it arrives, never relayed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_from: Option<String>,
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

impl HandshakeReply {
    /// A refusal; its text is made [`printable`](super::text::printable)
    /// (it may quote what a guest printed).
    pub fn refusal(error: String, hint: Option<String>) -> Self {
        Self {
            ok: false,
            session: None,
            error: Some(super::text::printable(&error)),
            hint: hint
                .filter(|h| !h.is_empty())
                .map(|h| super::text::printable(&h)),
        }
    }

    /// The reply as one line, newline included.
    pub fn line(&self) -> Vec<u8> {
        // Serialising this plain struct cannot fail; fall back to a fixed line.
        let mut v = serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"ok":false,"error":"internal error"}"#.to_vec());
        v.push(b'\n');
        v
    }
}

/// One client → daemon frame after the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Input(&'a [u8]),
    Resize { cols: u16, rows: u16 },
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

/// Reads one frame into `buf` (which must hold 65535 bytes); an unknown
/// kind or a malformed resize is `InvalidData`.
pub fn read_frame<'b>(r: &mut impl Read, buf: &'b mut [u8]) -> io::Result<Frame<'b>> {
    let mut head = [0u8; 3];
    r.read_exact(&mut head)?;
    let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let payload = buf
        .get_mut(..len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame buffer too small"))?;
    r.read_exact(payload)?;
    match (head[0], &*payload) {
        (FRAME_INPUT, _) => Ok(Frame::Input(payload)),
        (FRAME_RESIZE, [c0, c1, r0, r1]) => Ok(Frame::Resize {
            cols: u16::from_be_bytes([*c0, *c1]),
            rows: u16::from_be_bytes([*r0, *r1]),
        }),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unknown frame")),
    }
}

/// Turns on TCP keepalive, as both ends of the stream do, so a peer that
/// vanished (network lost, machine gone) is noticed within about
/// `idle + 3 * interval`, and caps how long sent data may stay
/// unacknowledged. Best effort: a socket that refuses an option keeps
/// working without it.
pub fn keepalive(conn: &TcpStream, idle: Duration, interval: Duration) {
    let sock = socket2::SockRef::from(conn);
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
    let _ = sock.set_tcp_user_timeout(Some(idle + interval * 3));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode() {
        assert_eq!(frame(FRAME_INPUT, b"ab"), vec![0, 0, 2, b'a', b'b']);
        assert_eq!(resize_frame(80, 24), vec![1, 0, 4, 0, 80, 0, 24]);
        assert_eq!(frame(FRAME_INPUT, &vec![7; 70_000]).len(), 3 + 65_535);
    }

    #[test]
    fn frames_decode() {
        let mut buf = vec![0u8; 65_535];
        let mut data: &[u8] = &[0, 0, 2, b'h', b'i', 1, 0, 4, 0, 100, 0, 30, 9, 0, 0];
        assert_eq!(
            read_frame(&mut data, &mut buf).expect("input"),
            Frame::Input(b"hi")
        );
        assert_eq!(
            read_frame(&mut data, &mut buf).expect("resize"),
            Frame::Resize {
                cols: 100,
                rows: 30
            }
        );
        let e = read_frame(&mut data, &mut buf).expect_err("unknown kind");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn handshake_parses_and_rejects_unknown_fields() {
        let h: Handshake =
            serde_json::from_str(r#"{"vm":"a","token":"t","cols":80,"rows":24}"#).expect("parse");
        assert_eq!((h.vm.as_str(), h.cols, h.create), ("a", Some(80), false));
        assert!(serde_json::from_str::<Handshake>(r#"{"vm":"a","token":"t","evil":1}"#).is_err());
    }
}
