//! The Connect protocol, JSON only, as E2B's envd speaks it over
//! HTTP/1.1: a unary call is `POST /<package>.<Service>/<Method>` with a
//! JSON body and a JSON answer (an error: an HTTP status and
//! `{code, message}`); a server stream answers `application/connect+json`
//! envelopes (a flag byte, a 4-byte big-endian length, JSON), sent as they
//! are produced and ended by an end-of-stream envelope (flag 0x02) that
//! carries the error, if any.

use std::io::{self, Read, Write};

use serde_json::{Value, json};

/// The end-of-stream flag of an envelope.
pub const END_STREAM: u8 = 0x02;

/// A Connect error code and the HTTP status a unary answer gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    DeadlineExceeded,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument | Self::FailedPrecondition => 400,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::ResourceExhausted => 429,
            Self::Unimplemented => 501,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
        }
    }

    /// The code of an HTTP status fcm's own operations answer.
    pub fn of_status(status: u16) -> Self {
        match status {
            400 | 413 => Self::InvalidArgument,
            404 => Self::NotFound,
            409 => Self::FailedPrecondition,
            429 => Self::ResourceExhausted,
            501 => Self::Unimplemented,
            502 | 503 => Self::Unavailable,
            504 => Self::DeadlineExceeded,
            _ => Self::Internal,
        }
    }
}

/// A failed RPC: its code and message.
#[derive(Debug)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({
            "code": self.code.name(),
            "message": crate::wire::text::printable(&self.message),
        })
    }
}

/// One envelope.
pub fn envelope(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + data.len());
    v.push(flags);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The end of a stream: `{}`, or `{"error": {code, message}}`.
pub fn end_stream(error: Option<&RpcError>) -> Vec<u8> {
    let v = match error {
        None => json!({}),
        Some(e) => json!({ "error": e.body() }),
    };
    envelope(END_STREAM, v.to_string().as_bytes())
}

/// The first message of a streaming request (one envelope of at most
/// `max` bytes).
pub fn read_envelope(r: &mut dyn Read, max: u32) -> Result<Value, RpcError> {
    let bad = |m: String| RpcError::new(Code::InvalidArgument, m);
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .map_err(|e| bad(format!("could not read the request envelope: {e}")))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > max {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("the request message is larger than {max} bytes"),
        ));
    }
    if head[0] & 0x01 != 0 {
        return Err(bad("compressed messages are not supported".into()));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)
        .map_err(|e| bad(format!("could not read the request message: {e}")))?;
    if data.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&data).map_err(|e| bad(format!("malformed JSON message: {e}")))
}

/// A chunked HTTP body written as it is produced: each write one chunk.
pub struct Chunked<'a> {
    pub out: &'a mut dyn Write,
}

impl Chunked<'_> {
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.out
            .write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(b"\r\n")?;
        self.out.flush()
    }

    pub fn finish(self) -> io::Result<()> {
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_end_streams_carry_errors() {
        let e = envelope(0, br#"{"a":1}"#);
        assert_eq!(&e[..5], &[0, 0, 0, 0, 7]);
        let v = read_envelope(&mut &e[..], 1024).expect("read");
        assert_eq!(v["a"], 1);
        assert!(read_envelope(&mut &e[..], 3).is_err());
        assert!(read_envelope(&mut &e[..4], 1024).is_err());
        let end = end_stream(Some(&RpcError::new(Code::NotFound, "gone")));
        assert_eq!(end[0], END_STREAM);
        let body: Value = serde_json::from_slice(&end[5..]).expect("json");
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(end_stream(None)[5..], *b"{}");
        let mut out = Vec::new();
        let mut c = Chunked { out: &mut out };
        c.send(b"hello").expect("send");
        c.finish().expect("finish");
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }
}
