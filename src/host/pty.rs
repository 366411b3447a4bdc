//! Pseudo-terminals: the daemon runs the console's `ssh -tt` on a pty it
//! owns, so window sizes reach tmux in the guest the ordinary way.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{OptionalActions, Winsize, tcgetattr, tcsetattr, tcsetwinsize};

/// A pty pair sized `cols`×`rows`, both ends close-on-exec from the start
/// (another thread's fork can never inherit them), the slave in raw mode
/// so early input is not cooked before the program takes the terminal over.
pub fn open(cols: u16, rows: u16) -> io::Result<(File, OwnedFd)> {
    let (master, slave) = open_cooked(cols, rows)?;
    if let Ok(mut t) = tcgetattr(&slave) {
        t.make_raw();
        tcsetattr(&slave, OptionalActions::Now, &t)?;
    }
    Ok((master, slave))
}

/// A pty pair sized `cols`×`rows` in the kernel's default (cooked) modes,
/// both ends close-on-exec: for `ssh -tt`, which gives the guest's
/// terminal the modes of its own (so Ctrl-C there is SIGINT).
pub fn open_cooked(cols: u16, rows: u16) -> io::Result<(File, OwnedFd)> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let master = File::from(master);
    set_size(&master, cols, rows)?;
    Ok((master, slave))
}

/// Sets the terminal's size; the program on the slave gets SIGWINCH.
pub fn set_size(pty: &impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(pty, ws)?;
    Ok(())
}

/// Starts `cmd` in a new session with `slave` as its stdio and controlling
/// terminal. The slave's descriptors are closed here once the child has
/// them, so the master sees EOF when the child exits.
pub fn spawn_on(cmd: Command, slave: OwnedFd) -> io::Result<Child> {
    let mut cmd = prepare_on(cmd, slave)?;
    let child = cmd.spawn();
    drop(cmd);
    child
}

/// `cmd` made to start in a new session with `slave` as its stdio and
/// controlling terminal; the caller spawns it, then drops it (which
/// closes the slave's descriptors, so the master sees EOF when the child
/// exits).
pub fn prepare_on(mut cmd: Command, slave: OwnedFd) -> io::Result<Command> {
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec the closure makes only raw system calls
    // (setsid, ioctl), which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_is_sized_and_close_on_exec() {
        let (master, slave) = open(100, 30).expect("pty");
        let ws = rustix::termios::tcgetwinsize(&slave).expect("winsize");
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
        for fd in [master.as_fd(), slave.as_fd()] {
            let flags = rustix::io::fcntl_getfd(fd).expect("getfd");
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn a_child_on_the_pty_sees_its_size() {
        use std::io::Read;
        let (mut master, slave) = open(77, 22).expect("pty");
        let mut cmd = Command::new("stty");
        cmd.arg("size");
        let mut child = spawn_on(cmd, slave).expect("spawn");
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let _ = child.wait();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "22 77");
    }
}
