//! The streamed form of `POST /vms/{vm}/exec`: the request carries
//! `Connection: Upgrade` and `Upgrade: fcm-exec/1` with its JSON body
//! (`wire::api::ExecRequest`); the daemon starts the program, answers
//! `101 Switching Protocols`, and from then on both sides send frames
//! `[kind u8][length u32 BE][payload]` (payload at most [`MAX_PAYLOAD`]):
//!
//! | kind | from | payload |
//! |---|---|---|
//! | `STDIN` 0 | client | bytes for the program's stdin (terminal input with a tty) |
//! | `STDIN_EOF` 1 | client | none: stdin is closed |
//! | `RESIZE` 2 | client | cols u16 BE, rows u16 BE |
//! | `SIGNAL` 3 | client | a Linux signal number, u8 (with a tty, SIGINT/SIGQUIT are the keys) |
//! | `STDOUT` 16 | daemon | bytes the program wrote (everything, with a tty) |
//! | `STDERR` 17 | daemon | bytes the program wrote to stderr |
//! | `EXIT` 18 | daemon | JSON [`ExecExit`]; the last frame |
//! | `ERROR` 19 | daemon | JSON `wire::api::ErrorBody`: the exec failed after it started; the last frame |
//! | `HEARTBEAT` 20 | daemon | none: sent when nothing else was for a while |
//!
//! A client that closes the connection ends the program (it is killed in
//! the guest). See `docs/openapi.yaml` and the README.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The `Upgrade` token of the streamed exec.
pub const PROTOCOL: &str = "fcm-exec/1";
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Seconds between heartbeats on an otherwise quiet stream.
pub const HEARTBEAT_SECS: u64 = 15;

pub const STDIN: u8 = 0;
pub const STDIN_EOF: u8 = 1;
pub const RESIZE: u8 = 2;
pub const SIGNAL: u8 = 3;
pub const STDOUT: u8 = 16;
pub const STDERR: u8 = 17;
pub const EXIT: u8 = 18;
pub const ERROR: u8 = 19;
pub const HEARTBEAT: u8 = 20;

/// The payload of an `EXIT` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    /// The command's exit code; 124 when it was killed at its timeout,
    /// 128+N when a signal N ended it.
    pub exit_code: i32,
    /// The command outlived `timeout_secs` and was killed.
    pub timed_out: bool,
}

/// One frame's header and payload, ready to write in one call.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&frame(kind, payload))
}

pub fn resize_payload(cols: u16, rows: u16) -> [u8; 4] {
    let (c, r) = (cols.to_be_bytes(), rows.to_be_bytes());
    [c[0], c[1], r[0], r[1]]
}

/// Reads one frame into `buf`: its kind and payload length. A payload over
/// [`MAX_PAYLOAD`] is a protocol error; the end of the stream between
/// frames is `Ok(None)`.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("exec frame of {len} bytes (at most {MAX_PAYLOAD})"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(Some(head[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut wire = Vec::new();
        write_frame(&mut wire, STDOUT, b"hello").expect("w");
        write_frame(&mut wire, RESIZE, &resize_payload(120, 40)).expect("w");
        write_frame(&mut wire, STDIN_EOF, b"").expect("w");
        let mut r = &wire[..];
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).expect("f"), Some(STDOUT));
        assert_eq!(buf, b"hello");
        assert_eq!(read_frame(&mut r, &mut buf).expect("f"), Some(RESIZE));
        assert_eq!(buf, [0, 120, 0, 40]);
        assert_eq!(read_frame(&mut r, &mut buf).expect("f"), Some(STDIN_EOF));
        assert!(buf.is_empty());
        assert_eq!(read_frame(&mut r, &mut buf).expect("end"), None);

        let huge = [STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..], &mut buf).is_err());
        let cut = [STDIN, 0, 0, 0, 9, b'x'];
        assert!(read_frame(&mut &cut[..], &mut buf).is_err());
        assert!(read_frame(&mut &[STDIN, 0][..], &mut buf).is_err());
    }
}
