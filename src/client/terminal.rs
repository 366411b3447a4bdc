//! The local terminal and the daemon's ports, for the commands that
//! stream: `console`/`attach` and `exec -t`/`-i`. Raw mode is restored on
//! every exit path, termination signals included.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcsetattr};

use super::api::{daemon_authority, daemon_host, daemon_tls};
use super::console::ConsoleError;
use super::trust::Trust;
use crate::wire::tls::{DeadlineStream, Link, TlsLink, handshake};

/// The terminal settings to put back, for the signal handler.
static SAVED: OnceLock<(RawFd, Termios)> = OnceLock::new();

/// Restores the terminal's settings when dropped.
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    pub fn enable(fd: BorrowedFd<'_>) -> Option<Self> {
        if !rustix::termios::isatty(fd) {
            return None;
        }
        let saved = tcgetattr(fd).ok()?;
        let _ = SAVED.set((fd.as_raw_fd(), saved.clone()));
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
            // SAFETY: installs a handler that only makes async-signal-safe
            // calls (see `restore_and_die`).
            unsafe {
                libc::signal(sig, restore_and_die as *const () as libc::sighandler_t);
            }
        }
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
        Some(Self {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl RawMode {
    /// Only the output side of a terminal made raw (no `\n` → `\r\n`),
    /// for a guest's terminal shown here while the keys stay local (Ctrl-C
    /// is still a signal to fcm).
    pub fn output_only(fd: BorrowedFd<'_>) -> Option<Self> {
        if !rustix::termios::isatty(fd) {
            return None;
        }
        let saved = tcgetattr(fd).ok()?;
        let _ = SAVED.set((fd.as_raw_fd(), saved.clone()));
        let mut t = saved.clone();
        t.output_modes.remove(rustix::termios::OutputModes::OPOST);
        tcsetattr(fd, OptionalActions::Now, &t).ok()?;
        Some(Self {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the fd is stdin's, open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = tcsetattr(fd, OptionalActions::Now, &self.saved);
    }
}

/// Signal handler: puts the terminal back, then dies of the same signal.
extern "C" fn restore_and_die(sig: libc::c_int) {
    if let Some((fd, t)) = SAVED.get() {
        // SAFETY: stdin's fd stays open; tcsetattr is a plain ioctl, which
        // is async-signal-safe, and SAVED is only read here.
        let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
        let _ = tcsetattr(fd, OptionalActions::Now, t);
    }
    // SAFETY: signal and raise are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Follows the window's size (polled every 200 ms, so no signal handler
/// is needed), from `(cols, rows)`: `changed` gets each new size, and the
/// thread ends once it returns false.
pub fn follow_size(
    (cols, rows): (u16, u16),
    mut changed: impl FnMut(u16, u16) -> bool + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut last = (cols, rows);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = term_size();
            if now != last {
                last = now;
                if !changed(now.0, now.1) {
                    return;
                }
            }
        }
    });
}

/// The terminal's size, or $COLUMNS/$LINES, or 80x24.
pub fn term_size() -> (u16, u16) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(io::stdout())
        && ws.ws_col > 0
        && ws.ws_row > 0
    {
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

fn connect_tcp(addr: &str) -> Result<TcpStream, ConsoleError> {
    let err = |source| ConsoleError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(err)?.collect();
    let mut last = io::Error::other("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// A port of the daemon (`addr`: the terminal port, or the API's for an
/// upgraded stream), over TLS (the daemon's pinned certificate) when the
/// API is reached over TLS.
pub fn connect(addr: &str) -> Result<Link, ConsoleError> {
    let addr = addr.to_owned();
    let sock = connect_tcp(&addr)?;
    if !daemon_tls() {
        return Ok(Link::Plain(Arc::new(sock)));
    }
    let trust = Trust::for_daemon(&daemon_authority())?;
    let tls_err = |source| ConsoleError::Tls {
        addr: addr.clone(),
        source,
    };
    let name = rustls::pki_types::ServerName::try_from(daemon_host())
        .map_err(|e| tls_err(io::Error::other(e)))?;
    let mut conn = rustls::ClientConnection::new(trust.client_config()?, name)
        .map_err(|e| tls_err(io::Error::other(e)))?;
    let mut io = DeadlineStream::new(
        sock.try_clone()?,
        Some(Instant::now() + Duration::from_secs(10)),
    );
    if let Err(e) = handshake(&mut conn, &mut io) {
        return Err(match trust.failure() {
            Some(c) => c.into(),
            None => tls_err(e),
        });
    }
    trust.commit();
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;
    Ok(Link::Tls(TlsLink::new(conn.into(), sock)))
}
