//! TLS as both ends use it (API and terminal stream, when the daemon
//! listens beyond loopback or is told to): the certificate fingerprint
//! users compare and pin, a socket whose reads and writes end by one
//! deadline, and a TLS connection split into handles that one thread can
//! read from while another writes (the terminal stream's two pumps).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How fingerprints are written: `sha256:` and 64 lowercase hex digits of
/// the SHA-256 of the certificate (DER).
pub const FINGERPRINT_PREFIX: &str = "sha256:";

/// The fingerprint of a certificate (DER bytes).
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::from(FINGERPRINT_PREFIX);
    for b in d.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A fingerprint as a user may type it (`sha256:` optional, upper or lower
/// case, colons between bytes allowed) in canonical form, or `None`.
pub fn parse_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    let hex = s
        .strip_prefix(FINGERPRINT_PREFIX)
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: String = hex.chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{FINGERPRINT_PREFIX}{}", hex.to_ascii_lowercase()))
}

/// The one crypto provider fcm uses (ring), for both ends.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TCP stream whose reads and writes all fail once `deadline` has
/// passed: each read waits at most the time left, so a peer that trickles
/// one byte at a time cannot stretch an exchange (a TLS handshake, a
/// request's headers) past it.
pub struct DeadlineStream {
    pub sock: TcpStream,
    deadline: Option<Instant>,
}

impl DeadlineStream {
    pub fn new(sock: TcpStream, deadline: Option<Instant>) -> Self {
        Self { sock, deadline }
    }

    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    fn left(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
                } else {
                    Ok(Some(left))
                }
            }
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.left()? {
            self.sock.set_read_timeout(Some(left))?;
        }
        self.sock.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.left()? {
            self.sock.set_write_timeout(Some(left))?;
        }
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// Runs a TLS handshake to its end over `io` (whose deadline bounds it).
pub fn handshake<D: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<D>,
    io: &mut DeadlineStream,
) -> io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(io)?;
    }
    // Flush what the handshake left to send (TLS 1.3 session tickets).
    while conn.wants_write() {
        conn.write_tls(io)?;
    }
    Ok(())
}

struct Shared {
    tls: Mutex<rustls::Connection>,
    /// Held while TLS records are encrypted and sent, so they go out in order.
    send: Mutex<()>,
    sock: TcpStream,
}

/// A TLS connection after its handshake, as a handle that can be cloned:
/// one clone reads while another writes. Reads wait for the socket without
/// holding the TLS state, so a blocked reader never stalls a writer; the
/// socket's read timeout bounds each read, its write timeout each write.
#[derive(Clone)]
pub struct TlsLink {
    inner: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TlsLink {
    pub fn new(conn: rustls::Connection, sock: TcpStream) -> Self {
        Self {
            inner: Arc::new(Shared {
                tls: Mutex::new(conn),
                send: Mutex::new(()),
                sock,
            }),
        }
    }

    /// The TCP socket under the TLS (for timeouts, poll, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.inner.sock
    }

    /// Whether decrypted bytes are waiting to be read.
    pub fn has_plaintext(&self) -> bool {
        let mut c = lock(&self.inner.tls);
        c.process_new_packets()
            .map(|s| s.plaintext_bytes_to_read() > 0)
            .unwrap_or(false)
    }

    /// Sends TLS's close_notify (best effort).
    pub fn close_notify(&self) {
        lock(&self.inner.tls).send_close_notify();
        let _ = self.send_pending();
    }

    fn send_pending(&self) -> io::Result<()> {
        let _order = lock(&self.inner.send);
        let mut out = Vec::new();
        {
            let mut c = lock(&self.inner.tls);
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        (&self.inner.sock).write_all(&out)
    }

    /// Waits until the socket is readable, for at most its read timeout.
    fn wait_readable(&self, until: Option<Instant>) -> io::Result<()> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        loop {
            let timeout = match until {
                None => None,
                Some(u) => {
                    let left = u.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::WouldBlock, "read timed out"));
                    }
                    Some(Timespec::try_from(left).unwrap_or(Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    }))
                }
            };
            let mut pfd = [PollFd::new(&self.inner.sock, PollFlags::IN)];
            match poll(&mut pfd, timeout.as_ref()) {
                Ok(n) if n > 0 => return Ok(()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Read for TlsLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let until = self.inner.sock.read_timeout()?.map(|t| Instant::now() + t);
        loop {
            {
                let mut c = lock(&self.inner.tls);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            self.wait_readable(until)?;
            let reply = {
                let mut c = lock(&self.inner.tls);
                match c.read_tls(&mut &self.inner.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
                c.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                c.wants_write()
            };
            if reply {
                self.send_pending()?;
            }
        }
    }
}

impl Write for TlsLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _order = lock(&self.inner.send);
        let mut out = Vec::with_capacity(buf.len() + 64);
        let n = {
            let mut c = lock(&self.inner.tls);
            let n = c.writer().write(buf)?;
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
            n
        };
        (&self.inner.sock).write_all(&out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection that is either plain TCP or TLS over it, as the terminal
/// stream's two ends use it. Clones share the connection (one thread
/// reads while another writes).
#[derive(Clone)]
pub enum Link {
    Plain(Arc<TcpStream>),
    Tls(TlsLink),
}

impl Link {
    pub fn sock(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.socket(),
        }
    }

    /// Whether the client has sent bytes that are not yet read.
    pub fn pending_input(&self) -> bool {
        use rustix::net::{RecvFlags, recv};
        let mut b = [0u8; 1];
        let raw = matches!(
            recv(self.sock(), &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT),
            Ok((n, _)) if n > 0
        );
        raw || matches!(self, Self::Tls(t) if t.has_plaintext())
    }

    /// Says the end of the TLS session (close_notify); nothing in plain.
    pub fn close_notify(&self) {
        if let Self::Tls(t) = self {
            t.close_notify();
        }
    }

    /// Ends the connection in both directions (TLS: close_notify first).
    pub fn shutdown(&self) {
        if let Self::Tls(t) = self {
            t.close_notify();
        }
        let _ = self.sock().shutdown(Shutdown::Both);
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => (&**s).read(buf),
            Self::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => (&**s).write(buf),
            Self::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_users_type() {
        let fp = fingerprint(b"cert");
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        assert_eq!(parse_fingerprint(&fp).as_deref(), Some(fp.as_str()));
        let upper = fp[7..].to_ascii_uppercase();
        assert_eq!(parse_fingerprint(&upper).as_deref(), Some(fp.as_str()));
        let colons: Vec<String> = fp.as_bytes()[7..]
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        assert_eq!(
            parse_fingerprint(&format!("SHA256:{}", colons.join(":"))).as_deref(),
            Some(fp.as_str())
        );
        assert_eq!(parse_fingerprint("sha256:abc"), None);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{}", "g".repeat(64))),
            None
        );
    }

    #[test]
    fn a_deadline_ends_a_trickle() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).expect("connect");
            for _ in 0..30 {
                if c.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (s, _) = l.accept().expect("accept");
        let t0 = Instant::now();
        let mut d = DeadlineStream::new(s, Some(Instant::now() + Duration::from_millis(400)));
        let mut buf = [0u8; 1];
        let err = loop {
            if let Err(e) = d.read(&mut buf) {
                break e;
            }
        };
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{err}"
        );
        assert!(t0.elapsed() < Duration::from_millis(900));
        drop(d);
        let _ = t.join();
    }
}
