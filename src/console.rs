//! `fcm console` / `fcm attach`: the client end of the terminal stream.
//! Puts the local terminal in raw mode (restored on every exit path),
//! forwards keystrokes and window sizes, prints what the guest sends.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use crate::client::{ClientError, stream_addr};
use crate::stream::{FRAME_INPUT, Handshake, HandshakeReply, frame, resize_frame};

/// Restores the terminal's settings when dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr on a valid fd with a termios
        // we own; failure is reported through return values.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(Self { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// The terminal's size, or $COLUMNS/$LINES, or 80x24.
fn term_size() -> (u16, u16) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes into a valid winsize.
    let rc = unsafe { libc::ioctl(io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        return (ws.ws_col, ws.ws_row);
    }
    let env = |k: &str, d: u16| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    (env("COLUMNS", 80), env("LINES", 24))
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot reach the daemon's terminal port {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{error}")]
    Refused { error: String, hint: Option<String> },
    #[error("terminal stream failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Attaches the local terminal to `session` (or the default) of `vm`.
/// Returns the session id once the stream ends (detach or disconnect).
pub fn attach(
    token: &str,
    vm: &str,
    session: Option<&str>,
    create: bool,
) -> Result<String, ConsoleError> {
    let addr = stream_addr();
    let sock = addr
        .to_socket_addrs()
        .map_err(|source| ConsoleError::Connect {
            addr: addr.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| ConsoleError::Connect {
            addr: addr.clone(),
            source: io::Error::other("no address"),
        })?;
    let conn = TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|source| {
        ConsoleError::Connect {
            addr: addr.clone(),
            source,
        }
    })?;
    let _ = conn.set_nodelay(true);
    let (cols, rows) = term_size();
    let hs = Handshake {
        vm: vm.to_owned(),
        session: session.map(str::to_owned),
        token: token.to_owned(),
        cols: Some(cols),
        rows: Some(rows),
        term: std::env::var("TERM").ok(),
        create,
    };
    let mut line = serde_json::to_string(&hs).map_err(io::Error::other)?;
    line.push('\n');
    (&conn).write_all(line.as_bytes())?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reply = Vec::new();
    let mut r = BufReader::new(&conn);
    r.read_until(b'\n', &mut reply)?;
    let reply: HandshakeReply = serde_json::from_slice(&reply)
        .map_err(|e| io::Error::other(format!("bad reply from the daemon: {e}")))?;
    if !reply.ok {
        return Err(ConsoleError::Refused {
            error: reply.error.unwrap_or_else(|| "refused".into()),
            hint: reply.hint.filter(|h| !h.is_empty()),
        });
    }
    let already = r.buffer().to_vec();
    drop(r);
    conn.set_read_timeout(None)?;
    let session = reply.session.unwrap_or_default();

    let raw = RawMode::enable(io::stdin().as_raw_fd());
    {
        // Keystrokes: stdin -> input frames. Ends with the process.
        let mut up = conn.try_clone()?;
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if up.write_all(&frame(FRAME_INPUT, &buf[..n])).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    {
        // Window size: polled, so no signal handler is needed.
        let mut up = conn.try_clone()?;
        thread::spawn(move || {
            let mut last = term_size();
            loop {
                thread::sleep(Duration::from_millis(200));
                let now = term_size();
                if now != last {
                    last = now;
                    if up.write_all(&resize_frame(now.0, now.1)).is_err() {
                        break;
                    }
                }
            }
        });
    }
    let mut out = io::stdout().lock();
    out.write_all(&already)?;
    out.flush()?;
    let mut buf = [0u8; 16 * 1024];
    let mut down = &conn;
    loop {
        match down.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    drop(raw);
    Ok(session)
}
