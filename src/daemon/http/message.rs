//! HTTP/1.1 messages as the API needs them, with limits: the request head
//! (parsed by `httparse`, at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//! headers), the body (`Content-Length` or chunked, at most a given size)
//! and the response (JSON; `Connection: close`, or kept alive with the
//! idle time the client may leave between requests).

use std::io::{self, Read, Write};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// The minor version: HTTP/1.0 or HTTP/1.1.
    pub version: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    /// Every header, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header of that name (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn chunked(&self) -> bool {
        self.has_token("Transfer-Encoding", "chunked")
    }

    pub fn expects_continue(&self) -> bool {
        self.has_token("Expect", "100-continue")
    }

    /// Whether the client means to send more requests on this connection:
    /// HTTP/1.1 without `Connection: close` (an HTTP/1.0 client gets one
    /// answer per connection, as it expects by default).
    pub fn keeps_alive(&self) -> bool {
        self.version == 1 && !self.has_token("Connection", "close")
    }

    /// The length of the body when all of it came with the head (`after`
    /// holds the bytes read past the head); `None` when more must be read
    /// (or answered: chunked, a bad length).
    pub fn body_in(&self, after: &[u8]) -> Option<usize> {
        if self.header("Transfer-Encoding").is_some() {
            return None;
        }
        match self.content_length() {
            Ok(None) => Some(0),
            Ok(Some(n)) if n <= after.len() => Some(n),
            _ => None,
        }
    }

    /// The declared body length; `Err` if the header is not a number.
    pub fn content_length(&self) -> Result<Option<usize>, ()> {
        match self.header("Content-Length") {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| ()),
        }
    }
}

#[derive(Debug)]
pub enum HeadError {
    /// The client closed before sending anything.
    Closed,
    /// The deadline passed (or a read timed out) before the head was whole.
    Timeout,
    TooLarge,
    TooManyHeaders,
    Malformed(String),
}

impl HeadError {
    /// The status and message to answer with, if any answer is worth sending.
    pub fn answer(&self) -> Option<(u16, String)> {
        match self {
            Self::Closed => None,
            Self::Timeout => Some((408, "the request headers did not arrive in time".into())),
            // 400 rather than 414/431: the API documents 400 for bad input.
            Self::TooLarge => Some((
                400,
                format!("the request line and headers are larger than {MAX_HEAD} bytes"),
            )),
            Self::TooManyHeaders => Some((400, format!("more than {MAX_HEADERS} headers"))),
            Self::Malformed(m) => Some((400, format!("malformed HTTP request: {m}"))),
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Parses a request head from the bytes received so far: `Ok(None)` if it
/// is not whole yet, else the head and its length (what follows is the
/// start of the body, or of the next request).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            if len > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            let version = match req.version {
                Some(v @ (0 | 1)) => v,
                _ => return Err(HeadError::Malformed("only HTTP/1.x is spoken here".into())),
            };
            let head = Head {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                version,
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Reads a request head from a blocking reader. Returns it and the bytes
/// read past it (the start of the body).
#[cfg(test)]
pub fn read_head(r: &mut impl Read) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed("connection closed mid-request".into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if timed_out(&e) => return Err(HeadError::Timeout),
            Err(_) => return Err(HeadError::Closed),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some((head, len)) = parse_head(&buf)? {
            return Ok((head, buf.split_off(len)));
        }
    }
}

/// Why a body could not be read: the status and message to answer with.
pub type BodyError = (u16, String);

/// Reads the body the head announces, at most `max` bytes; returns it and
/// the bytes read past it (a next request's). `early` holds bytes already
/// read past the head. A `Content-Length` above `max` is
/// refused (413) before anything is read; with `Expect: 100-continue` the
/// client is told to go on only when the length is acceptable.
pub fn read_body<S: Read + Write>(
    s: &mut S,
    head: &Head,
    early: Vec<u8>,
    max: usize,
) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
    let too_big = || (413, format!("request body is larger than {max} bytes"));
    let io_err = |e: io::Error| {
        if timed_out(&e) {
            (408, "the request body did not arrive in time".to_owned())
        } else {
            (400, format!("could not read the request body: {e}"))
        }
    };
    let length = head
        .content_length()
        .map_err(|()| (400, "Content-Length is not a number".to_owned()))?;
    if head.chunked() {
        if head.expects_continue() {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(io_err)?;
        }
        return read_chunked(s, early, max).map_err(|e| match e {
            ChunkError::TooBig => too_big(),
            ChunkError::Bad(m) => (400, format!("malformed chunked body: {m}")),
            ChunkError::Io(e) => io_err(e),
        });
    }
    let Some(len) = length else {
        return Ok((Vec::new(), early));
    };
    if len > max {
        return Err(too_big());
    }
    if head.expects_continue() && early.len() < len {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(io_err)?;
    }
    let mut body = early;
    let after = if body.len() > len {
        body.split_off(len)
    } else {
        Vec::new()
    };
    let mut rest = vec![0u8; len - body.len()];
    s.read_exact(&mut rest).map_err(io_err)?;
    body.extend_from_slice(&rest);
    Ok((body, after))
}

enum ChunkError {
    TooBig,
    Bad(&'static str),
    Io(io::Error),
}

/// Bytes of the body as they arrive, for the chunked decoder.
struct Input<'a, R> {
    r: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> Input<'_, R> {
    fn more(&mut self) -> Result<(), ChunkError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.r.read(&mut chunk) {
                Ok(0) => return Err(ChunkError::Bad("connection closed mid-body")),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChunkError::Io(e)),
            }
        }
    }

    fn line(&mut self) -> Result<String, ChunkError> {
        loop {
            let rest = &self.buf[self.pos..];
            if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&rest[..i]).into_owned();
                self.pos += i + 2;
                return Ok(l);
            }
            if rest.len() > 1024 {
                return Err(ChunkError::Bad("chunk line too long"));
            }
            self.more()?;
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], ChunkError> {
        while self.buf.len() - self.pos < n {
            self.more()?;
        }
        let at = self.pos;
        self.pos += n;
        Ok(&self.buf[at..at + n])
    }
}

/// Decodes a chunked body (trailers are skipped), at most `max` bytes;
/// returns it and the bytes read past it.
fn read_chunked(
    r: &mut impl Read,
    early: Vec<u8>,
    max: usize,
) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
    let mut input = Input {
        r,
        buf: early,
        pos: 0,
    };
    let mut body = Vec::new();
    loop {
        let size_line = input.line()?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| ChunkError::Bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, then an empty line; at most a few.
            for _ in 0..MAX_HEADERS {
                if input.line()?.is_empty() {
                    let after = input.buf.split_off(input.pos);
                    return Ok((body, after));
                }
            }
            return Err(ChunkError::Bad("too many trailers"));
        }
        if body.len().saturating_add(size) > max {
            return Err(ChunkError::TooBig);
        }
        body.extend_from_slice(input.take(size)?);
        if input.take(2)? != b"\r\n" {
            return Err(ChunkError::Bad("chunk without its CRLF"));
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

/// A whole JSON response; `allow` is a 405's `Allow`. `keep_alive`: the
/// connection stays open for the next request for at most that many
/// seconds, else `Connection: close`.
pub fn response(status: u16, json: &[u8], allow: Option<&str>, keep_alive: Option<u64>) -> Vec<u8> {
    let allow = allow
        .filter(|a| {
            a.bytes()
                .all(|b| b.is_ascii_uppercase() || b == b',' || b == b' ')
        })
        .map(|a| format!("Allow: {a}\r\n"))
        .unwrap_or_default();
    let connection = match keep_alive {
        Some(secs) => format!("Connection: keep-alive\r\nKeep-Alive: timeout={secs}"),
        None => "Connection: close".to_owned(),
    };
    let mut v = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}{connection}\r\n\r\n",
        reason(status),
        json.len()
    )
    .into_bytes();
    v.extend_from_slice(json);
    v
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An in-memory client: reads come from `input`, writes go to `out`
    /// (also used by `transfer`'s tests).
    pub(in crate::daemon::http) struct Mem {
        pub(in crate::daemon::http) input: io::Cursor<Vec<u8>>,
        pub(in crate::daemon::http) out: Vec<u8>,
    }

    impl Read for Mem {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.out.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    pub(in crate::daemon::http) fn mem(s: &[u8]) -> Mem {
        Mem {
            input: io::Cursor::new(s.to_vec()),
            out: Vec::new(),
        }
    }

    #[test]
    fn a_request_with_a_body() {
        let mut m = mem(b"POST /vms HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nauthorization: Bearer t\r\n\r\n{\"a\":1}");
        let (head, early) = read_head(&mut m).expect("head");
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("POST", "/vms")
        );
        assert_eq!(head.header("Authorization"), Some("Bearer t"));
        let (body, after) = read_body(&mut m, &head, early, 64).expect("body");
        assert_eq!(body, b"{\"a\":1}");
        assert!(after.is_empty());
    }

    #[test]
    fn a_head_split_in_many_packets_is_whole_only_at_its_end() {
        let raw = b"POST /vms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET";
        let end = raw.len() - 5;
        for i in 0..end {
            assert!(matches!(parse_head(&raw[..i]), Ok(None)), "{i}");
        }
        let (head, len) = parse_head(raw).expect("parse").expect("whole");
        assert_eq!((head.method.as_str(), head.version, len), ("POST", 1, end));
        assert!(head.keeps_alive());
        // Its body came with it (and the start of another request).
        assert_eq!(head.body_in(&raw[len..]), Some(2));
        assert_eq!(head.body_in(b"{"), None);
        let get = b"GET /vms HTTP/1.0\r\n\r\n";
        let (head, len) = parse_head(get).expect("parse").expect("whole");
        assert_eq!(
            (head.version, head.body_in(b""), len),
            (0, Some(0), get.len())
        );
        // HTTP/1.0 gets one answer per connection; HTTP/1.1 keeps it
        // unless it says close.
        assert!(!head.keeps_alive());
        let (head, _) = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("parse")
            .expect("whole");
        assert_eq!(head.body_in(b"0\r\n\r\n"), None);
        let (head, _) = parse_head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .expect("parse")
            .expect("whole");
        assert!(!head.keeps_alive());
    }

    #[test]
    fn limits_are_kept() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            read_head(&mut mem(big.as_bytes())),
            Err(HeadError::TooLarge)
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            read_head(&mut mem(req.as_bytes())),
            Err(HeadError::TooManyHeaders)
        ));
        assert!(matches!(
            read_head(&mut mem(b"\x16\x03\x01\x02\x00\x01")),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(read_head(&mut mem(b"")), Err(HeadError::Closed)));
        let mut m =
            mem(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n");
        let (head, early) = read_head(&mut m).expect("head");
        assert_eq!(read_body(&mut m, &head, early, 64).expect_err("413").0, 413);
        assert!(m.out.is_empty(), "no 100 Continue for a refused body");
    }

    #[test]
    fn chunked_bodies_decode_and_are_capped() {
        let mut m = mem(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\nGET /next");
        let (head, early) = read_head(&mut m).expect("head");
        assert_eq!(
            read_body(&mut m, &head, early, 64).expect("body"),
            (b"{\"a\":1}".to_vec(), b"GET /next".to_vec())
        );
        let mut m = mem(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n");
        let (head, early) = read_head(&mut m).expect("head");
        assert_eq!(read_body(&mut m, &head, early, 64).expect_err("413").0, 413);
    }

    #[test]
    fn responses_say_close_or_keep_alive() {
        let r = String::from_utf8(response(405, b"{}", Some("GET, POST"), None)).expect("utf8");
        assert!(r.contains("\r\nAllow: GET, POST\r\n"), "{r}");
        let r = String::from_utf8(response(200, b"{}", None, Some(30))).expect("utf8");
        assert!(
            r.contains("\r\nConnection: keep-alive\r\nKeep-Alive: timeout=30\r\n\r\n{}"),
            "{r}"
        );
        let r = String::from_utf8(response(404, b"{}", None, None)).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(
            r.contains("Content-Length: 2\r\nConnection: close\r\n\r\n{}"),
            "{r}"
        );
    }
}
