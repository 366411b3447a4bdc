//! Where the daemon's connections come from.
//!
//! - **virtio-serial** (QEMU): the port whose
//!   `/sys/class/virtio-ports/*/name` is `fcm.agent.0`, opened as
//!   `/dev/<port>` (no udev in the guest: found by that name). A port is one
//!   byte stream with one opener; while the host end is not connected, poll
//!   reports POLLHUP and reads return EOF, so the agent checks every 50 ms
//!   until the host connects again; each connection starts with a fresh
//!   decoder.
//! - **vsock** (Firecracker): a listener on port 10789, any CID. Each new
//!   connection replaces the current one (the daemon reconnects after a
//!   snapshot).
//! - **Unix** (`--unix PATH`, for development and tests): a listener on
//!   PATH, served like vsock.
//!
//! [`run`] never returns: a connection's end is followed by waiting for the
//! next.

use crate::Agent;
use crate::lock;
use fcm_proto::{PORT_NAME, VSOCK_PORT};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{Shutdown, SocketFlags};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often a disconnected port is checked for the host's return.
const PORT_TICK: Duration = Duration::from_millis(50);
/// How long to wait before looking for a channel again.
const RETRY: Duration = Duration::from_secs(1);

/// Which channel to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// The virtio-serial port named `fcm.agent.0`, else vsock.
    Auto,
    /// A Unix socket listening at this path.
    Unix(PathBuf),
}

/// The device of the virtio-serial port named [`PORT_NAME`]: the entry of
/// `sys_ports` (`/sys/class/virtio-ports`) whose `name` it is, under `dev`.
pub fn find_port(sys_ports: &Path, dev: &Path) -> Option<PathBuf> {
    let mut ports: Vec<_> = fs::read_dir(sys_ports)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim_end() == PORT_NAME)
        })
        .map(|e| dev.join(e.file_name()))
        .collect();
    ports.sort();
    ports.into_iter().next()
}

/// Serves connections from `channel` for ever (it returns only if the
/// channel cannot be served any more, for the caller to try again).
pub fn run(agent: &Agent, channel: &Channel) -> io::Error {
    match channel {
        Channel::Unix(path) => match listen_unix(path) {
            Ok(l) => serve_listener(agent, l),
            Err(e) => e,
        },
        Channel::Auto => {
            let mut last_error = String::new();
            let mut complain = |e: String| {
                if e != last_error {
                    log!("{e}; trying again every {RETRY:?}");
                    last_error = e;
                }
            };
            loop {
                let sys = Path::new("/sys/class/virtio-ports");
                if let Some(dev) = find_port(sys, Path::new("/dev")) {
                    match open_port(&dev) {
                        Ok(fd) => {
                            log!("serving {}", dev.display());
                            serve_port(agent, &dev, Arc::new(fd));
                            complain(format!("{} went away", dev.display()));
                        }
                        Err(e) => complain(format!("{}: {e}", dev.display())),
                    }
                } else {
                    match listen_vsock(VSOCK_PORT) {
                        Ok(l) => {
                            log!("listening on vsock port {VSOCK_PORT}");
                            return serve_listener(agent, l);
                        }
                        Err(e) => complain(format!("no port named {PORT_NAME} and no vsock ({e})")),
                    }
                }
                thread::sleep(RETRY);
            }
        }
    }
}

fn open_port(dev: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(dev, flags, Mode::empty())?)
}

/// Serves the port's successive host connections; returns when the port
/// went away (an unplugged port reports POLLHUP for ever).
fn serve_port(agent: &Agent, dev: &Path, fd: Arc<OwnedFd>) {
    loop {
        // Wait until the host is connected: no POLLHUP.
        loop {
            if !dev.exists() {
                return;
            }
            let mut p = [PollFd::new(&*fd, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match poll(&mut p, Some(&zero)) {
                Ok(_) if !p[0].revents().contains(PollFlags::HUP) => break,
                Ok(_) | Err(Errno::INTR) => thread::sleep(PORT_TICK),
                Err(e) => {
                    log!("polling the port: {e}");
                    return;
                }
            }
        }
        agent.serve(PortIo(fd.clone()), PortIo(fd.clone()));
    }
}

/// One side of a non-blocking virtio-serial port: reads wait for data (EOF
/// once the host is gone), writes wait for room (an error once it is).
struct PortIo(Arc<OwnedFd>);

impl Read for PortIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut p = [PollFd::new(&*self.0, PollFlags::IN)];
            match poll(&mut p, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            match rustix::io::read(&*self.0, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Write for PortIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let mut p = [PollFd::new(&*self.0, PollFlags::OUT)];
            match poll(&mut p, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if p[0].revents().contains(PollFlags::HUP) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match rustix::io::write(&*self.0, buf) {
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected socket, read and written with plain read(2) and write(2).
struct Stream(Arc<OwnedFd>);

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&*self.0, buf)?)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::io::write(&*self.0, buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn listen_unix(path: &Path) -> io::Result<OwnedFd> {
    // A socket left by an earlier run is replaced; anything else is not.
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        fs::remove_file(path)?;
    }
    Ok(UnixListener::bind(path)?.into())
}

fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; its result is checked
    // before it is owned.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes, `raw` is open.
    if unsafe { libc::bind(raw, (&raw const addr).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&fd, 16)?;
    Ok(fd)
}

/// Accepts connections on a thread; each new one shuts the current one
/// down (its reader sees the end) and is served next.
fn serve_listener(agent: &Agent, listener: OwnedFd) -> io::Error {
    let current: Arc<Mutex<Option<Arc<OwnedFd>>>> = Arc::default();
    let (tx, rx) = sync_channel::<Arc<OwnedFd>>(1);
    let spawned = thread::Builder::new().name("accept".into()).spawn({
        let current = current.clone();
        move || {
            loop {
                match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
                    Ok(fd) => {
                        let fd = Arc::new(fd);
                        if let Some(old) = lock(&current).replace(fd.clone()) {
                            let _ = rustix::net::shutdown(&*old, Shutdown::Both);
                        }
                        if tx.send(fd).is_err() {
                            return;
                        }
                    }
                    Err(Errno::INTR | Errno::CONNABORTED) => {}
                    Err(e) => {
                        log!("accept: {e}");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    });
    if let Err(e) = spawned {
        return e;
    }
    for fd in rx {
        agent.serve(Stream(fd.clone()), Stream(fd));
    }
    io::Error::other("the accepting thread ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_found_by_its_name() {
        let sys = tempfile::tempdir().expect("tempdir");
        for (port, name) in [
            ("vport0p1", "org.qemu.guest_agent.0\n"),
            ("vport1p1", "fcm.agent.0\n"),
        ] {
            fs::create_dir(sys.path().join(port)).expect("mkdir");
            fs::write(sys.path().join(port).join("name"), name).expect("write");
        }
        fs::create_dir(sys.path().join("vport2p1")).expect("a port without a name");
        assert_eq!(
            find_port(sys.path(), Path::new("/dev")),
            Some(PathBuf::from("/dev/vport1p1"))
        );
        assert_eq!(find_port(&sys.path().join("none"), Path::new("/dev")), None);
    }
}
