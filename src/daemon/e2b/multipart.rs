//! `multipart/form-data` uploads read as a stream: part after part, each
//! part's bytes handed on as they arrive (a 1 GiB file is never held).

use std::io::{self, Read};

/// Largest part head, and largest preamble skipped before the first part.
const HEAD_MAX: usize = 16 * 1024;
const READ: usize = 64 * 1024;

/// One part's head: the form field's name and its file name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
}

pub struct Multipart<'a> {
    r: &'a mut dyn Read,
    /// `\r\n--<boundary>`: what ends a part.
    delim: Vec<u8>,
    buf: Vec<u8>,
    in_part: bool,
    done: bool,
}

fn invalid(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The boundary of a `multipart/form-data` Content-Type, if it is one.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

/// `name="x"` out of a Content-Disposition value.
fn param(value: &str, key: &str) -> Option<String> {
    value.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

impl<'a> Multipart<'a> {
    pub fn new(r: &'a mut dyn Read, boundary: &str) -> Self {
        Self {
            r,
            delim: format!("\r\n--{boundary}").into_bytes(),
            // The first delimiter has no CRLF before it: pretend it had.
            buf: b"\r\n".to_vec(),
            in_part: false,
            done: false,
        }
    }

    /// Reads more; false at the end of the body.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = vec![0u8; READ];
        let n = self.r.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next part's head (the rest of the part before it is skipped);
    /// none after the last.
    pub fn next_part(&mut self) -> io::Result<Option<Part>> {
        if self.in_part {
            io::copy(self, &mut io::sink())?;
        }
        if self.done {
            return Ok(None);
        }
        // The delimiter, then `--` (the end) or CRLF and the part's head.
        let at = loop {
            if let Some(i) = find(&self.buf, &self.delim) {
                break i;
            }
            if self.buf.len() > HEAD_MAX + self.delim.len() || !self.fill()? {
                return Err(invalid("no multipart boundary where one was expected"));
            }
        };
        self.buf.drain(..at + self.delim.len());
        while self.buf.len() < 2 {
            if !self.fill()? {
                return Err(invalid("the multipart body ends early"));
            }
        }
        if self.buf.starts_with(b"--") {
            self.done = true;
            return Ok(None);
        }
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > HEAD_MAX || !self.fill()? {
                return Err(invalid("a multipart part's head is too long or cut"));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut part = Part::default();
        for line in head.split("\r\n") {
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-disposition")
            {
                part.name = param(v, "name");
                part.filename = param(v, "filename");
            }
        }
        self.in_part = true;
        Ok(Some(part))
    }
}

/// The current part's bytes.
impl Read for Multipart<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.in_part || out.is_empty() {
            return Ok(0);
        }
        loop {
            let safe = match find(&self.buf, &self.delim) {
                Some(0) => {
                    self.in_part = false;
                    return Ok(0);
                }
                Some(i) => i,
                None => self.buf.len().saturating_sub(self.delim.len() - 1),
            };
            if safe > 0 {
                let n = safe.min(out.len());
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                return Ok(n);
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the multipart body ends inside a part",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives a few bytes at a time (delimiters cut anywhere).
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn parts_stream_out_whatever_the_reads() {
        let ct = "multipart/form-data; boundary=\"XyZ\"";
        assert_eq!(boundary(ct).as_deref(), Some("XyZ"));
        assert_eq!(boundary("application/octet-stream"), None);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/a/b\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c\"\r\n\r\n\r\n--X\r\n--XyZ--\r\n");
        for step in [1, 3, 7, 64, 100_000] {
            let mut r = Trickle(&body, step);
            let mut m = Multipart::new(&mut r, "XyZ");
            let p = m.next_part().expect("part").expect("one");
            assert_eq!(p.name.as_deref(), Some("file"));
            assert_eq!(p.filename.as_deref(), Some("/a/b"));
            let mut got = Vec::new();
            m.read_to_end(&mut got).expect("read");
            assert_eq!(got, data, "step {step}");
            let p = m.next_part().expect("part").expect("two");
            assert_eq!(p.filename.as_deref(), Some("c"));
            let mut got = Vec::new();
            m.read_to_end(&mut got).expect("read");
            assert_eq!(got, b"\r\n--X");
            assert_eq!(m.next_part().expect("end"), None);
        }
        let mut cut = Trickle(&body[..200], 50);
        let mut m = Multipart::new(&mut cut, "XyZ");
        m.next_part().expect("part");
        assert!(m.read_to_end(&mut Vec::new()).is_err());
    }
}
