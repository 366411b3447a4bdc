//! Bodies of file transfers, streamed both ways: a request body read as
//! it arrives (`Content-Length` or chunked) and a response body written as
//! it is produced (its length when known, chunked otherwise).

use std::io::{self, Read, Write};

use super::message::{BodyError, Head, MAX_HEADERS};

/// A request body read as a stream (file uploads): `Content-Length` bytes,
/// chunked, or nothing. Each read is bounded by the socket's timeouts, not
/// by a deadline, so a large upload may take as long as it keeps moving.
pub struct BodyReader<'a, R> {
    r: &'a mut R,
    early: Vec<u8>,
    pos: usize,
    mode: BodyMode,
}

enum BodyMode {
    Empty,
    Length(u64),
    Chunked {
        left: u64,
        need_crlf: bool,
        done: bool,
    },
}

fn bad_data(m: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

impl<'a, R: Read + Write> BodyReader<'a, R> {
    /// `early` holds bytes already read past the head. Answers
    /// `Expect: 100-continue` first.
    pub fn new(r: &'a mut R, head: &Head, early: Vec<u8>) -> Result<Self, BodyError> {
        let mode = if head.chunked() {
            BodyMode::Chunked {
                left: 0,
                need_crlf: false,
                done: false,
            }
        } else {
            match head.content_length() {
                Err(()) => return Err((400, "Content-Length is not a number".into())),
                Ok(None) | Ok(Some(0)) => BodyMode::Empty,
                Ok(Some(n)) => BodyMode::Length(n as u64),
            }
        };
        if head.expects_continue() && !matches!(mode, BodyMode::Empty) {
            r.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| (400, format!("could not answer Expect: {e}")))?;
        }
        Ok(Self {
            r,
            early,
            pos: 0,
            mode,
        })
    }
}

impl<R: Read> BodyReader<'_, R> {
    fn raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.early.len() {
            let n = buf.len().min(self.early.len() - self.pos);
            buf[..n].copy_from_slice(&self.early[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.r.read(buf)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut l = Vec::new();
        let mut b = [0u8; 1];
        while !l.ends_with(b"\r\n") {
            if l.len() > 1024 {
                return Err(bad_data("chunk line too long"));
            }
            if self.raw(&mut b)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            l.push(b[0]);
        }
        l.truncate(l.len() - 2);
        Ok(String::from_utf8_lossy(&l).into_owned())
    }
}

impl<R: Read> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = match self.mode {
            BodyMode::Empty | BodyMode::Chunked { done: true, .. } | BodyMode::Length(0) => {
                return Ok(0);
            }
            BodyMode::Length(n) => n,
            BodyMode::Chunked {
                left: 0, need_crlf, ..
            } => {
                if need_crlf && !self.line()?.is_empty() {
                    return Err(bad_data("chunk without its CRLF"));
                }
                let l = self.line()?;
                let size = u64::from_str_radix(l.split(';').next().unwrap_or_default().trim(), 16)
                    .map_err(|_| bad_data("bad chunk size"))?;
                if size == 0 {
                    for _ in 0..MAX_HEADERS {
                        if self.line()?.is_empty() {
                            self.mode = BodyMode::Chunked {
                                left: 0,
                                need_crlf: false,
                                done: true,
                            };
                            return Ok(0);
                        }
                    }
                    return Err(bad_data("too many trailers"));
                }
                size
            }
            BodyMode::Chunked { left, .. } => left,
        };
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.raw(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let rest = left - n as u64;
        self.mode = match self.mode {
            BodyMode::Length(_) => BodyMode::Length(rest),
            _ => BodyMode::Chunked {
                left: rest,
                need_crlf: rest == 0,
                done: false,
            },
        };
        Ok(n)
    }
}

/// Writes a 200 answer whose body is streamed from `body`: with its
/// length when known, chunked otherwise.
pub fn write_stream(
    w: &mut impl Write,
    content_type: &str,
    length: Option<u64>,
    body: &mut dyn Read,
) -> io::Result<()> {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    w.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{framing}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if length.is_some() {
            w.write_all(&buf[..n])?;
        } else {
            w.write_all(format!("{n:x}\r\n").as_bytes())?;
            w.write_all(&buf[..n])?;
            w.write_all(b"\r\n")?;
            // A stream of unknown length (a build's log) is read as it
            // comes: each chunk goes out at once.
            w.flush()?;
        }
    }
    if length.is_none() {
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::http::message::read_head;
    use crate::daemon::http::message::tests::mem;

    #[test]
    fn streamed_bodies_in_both_framings() {
        for raw in [
            &b"PUT /f HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"[..],
            &b"PUT /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..],
        ] {
            let mut m = mem(raw);
            let (head, early) = read_head(&mut m).expect("head");
            let mut body = Vec::new();
            BodyReader::new(&mut m, &head, early)
                .expect("reader")
                .read_to_end(&mut body)
                .expect("read");
            assert_eq!(body, b"hello world");
        }
        let mut out = Vec::new();
        write_stream(&mut out, "application/x-tar", None, &mut &b"abc"[..]).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.ends_with("chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            "{text}"
        );
    }
}
