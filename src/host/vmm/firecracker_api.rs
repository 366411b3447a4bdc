//! Firecracker's API: one HTTP/1.1 request per connection over its Unix
//! socket, connected to without following a symlink in the socket's place.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One HTTP/1.1 request over the API socket; returns the status and body.
/// Every read and write has a 5 s timeout, and the answer is read until
/// `httparse` has its head and `Content-Length` bytes of body arrived.
pub fn api_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    api_call_within(socket, method, path, body, Duration::from_secs(5))
}

/// [`api_call`] with another timeout per read and write (a snapshot of a
/// large guest takes longer than 5 s).
pub fn api_call_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let timeout = Some(timeout);
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let body = body.to_string();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if let Some(done) = parse_response(&resp)? {
                    return Ok(done);
                }
                if resp.len() > MAX_RESPONSE {
                    return Err(format!("response larger than {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    // The VMM closed the connection: what arrived must be a whole answer.
    parse_response(&resp)?.ok_or_else(|| {
        format!(
            "incomplete response: {:?}",
            String::from_utf8_lossy(&resp[..resp.len().min(200)])
        )
    })
}

/// Largest API answer read (Firecracker's are a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// `Some((status, body))` once `resp` holds a whole answer.
fn parse_response(resp: &[u8]) -> Result<Option<(u16, String)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(resp) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = r.code.ok_or("malformed response: no status")?;
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let body = &resp[head_len..];
    if body.len() < len {
        return Ok(None);
    }
    Ok(Some((
        status,
        String::from_utf8_lossy(&body[..len]).into_owned(),
    )))
}

/// Connects to an API socket without following a symlink put in its place
/// (a jailed VMM owns the directory of its socket): the socket is opened
/// with `O_PATH | O_NOFOLLOW`, checked to be a socket, and connected to
/// through `/proc/self/fd`.
pub(super) fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(socket)?;
    if !f.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a socket", socket.display()),
        ));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_completeness() {
        let complete = |r: &[u8]| parse_response(r).expect("parse").is_some();
        assert!(!complete(b"HTTP/1.1 204 No Content\r\n"));
        assert!(complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!complete(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nab"
        ));
        assert!(complete(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nabcde"
        ));
        assert_eq!(
            parse_response(b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nabcde").expect("parse"),
            Some((400, "abcde".into()))
        );
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
