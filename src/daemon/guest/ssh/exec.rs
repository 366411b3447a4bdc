//! Programs in the guest over SSH, two ways:
//! - **three pipes** (`ssh -T`): the remote shell prints its pid (the
//!   program's process group) on stderr's first line, which is taken off
//!   the stream; signals and the deadline are sent to that group with
//!   `kill` over the VM's master connection; the shell traps them so it
//!   reports the program's status (128 + N for a signal);
//! - **a terminal** (`ssh -tt` on a pty of the daemon's, cooked, so the
//!   guest's pty is cooked too): resizes are the pty's, SIGINT and SIGQUIT
//!   are the keys typed, any other signal or the deadline hangs it up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::super::{Control, ExecSpec, Exit, GuestError, Process, Tty};
use super::{SshGuest, SshLog};
use crate::daemon::lock;
use crate::host::child::{Handle, Supervised};
use crate::host::{self, Signal, pty, ssh};

/// After the deadline, SIGTERM; this much later, SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The local ssh is killed this long after the deadline, should the
/// guest not answer the remote kill.
const LOCAL_GRACE: Duration = Duration::from_secs(20);
/// How long a remote `kill` may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit status of a program killed at its deadline (as timeout(1) uses).
const TIMED_OUT: i32 = 124;
const SIGKILL: i32 = 9;

pub(super) fn start(g: &SshGuest, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError> {
    if spec.argv.is_empty() {
        return Err(GuestError::BadRequest("no program to run".into()));
    }
    if spec
        .user
        .as_deref()
        .is_some_and(|u| u != "root" && u != "0")
    {
        return Err(GuestError::BadRequest(
            "running as another user needs fcm-agent in the guest; this VM is reached over SSH (as root)".into(),
        ));
    }
    match &spec.tty {
        None => piped(g, spec),
        Some(t) => on_tty(g, spec, t),
    }
}

/// The pid the remote shell reports, once it has.
#[derive(Default)]
struct Pid {
    value: Mutex<Option<Option<u32>>>,
    set: Condvar,
}

impl Pid {
    fn put(&self, pid: Option<u32>) {
        let mut v = lock(&self.value);
        if v.is_none() {
            *v = Some(pid);
            self.set.notify_all();
        }
    }

    fn get(&self, wait: Duration) -> Option<u32> {
        let v = lock(&self.value);
        let (v, _) = self
            .set
            .wait_timeout_while(v, wait, |v| v.is_none())
            .unwrap_or_else(|p| p.into_inner());
        v.flatten()
    }
}

/// stderr with the remote shell's first line (`fcm-pid N`) taken off.
struct PidLine<R> {
    inner: R,
    pid: Arc<Pid>,
    head: Option<Vec<u8>>,
    pending: io::Cursor<Vec<u8>>,
}

impl<R: Read> Read for PidLine<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(head) = self.head.as_mut() {
            let mut b = [0u8; 64];
            let n = self.inner.read(&mut b)?;
            head.extend_from_slice(&b[..n]);
            let line_end = head.iter().position(|c| *c == b'\n');
            if n == 0 || line_end.is_some() || head.len() > 64 {
                let head = self.head.take().unwrap_or_default();
                let (pid, rest) = match line_end {
                    Some(i) => {
                        let line = String::from_utf8_lossy(&head[..i]).into_owned();
                        match line
                            .strip_prefix("fcm-pid ")
                            .and_then(|p| p.trim().parse().ok())
                        {
                            Some(p) => (Some(p), head[i + 1..].to_vec()),
                            None => (None, head),
                        }
                    }
                    None => (None, head),
                };
                self.pid.put(pid);
                self.pending = io::Cursor::new(rest);
            }
        }
        match self.pending.read(buf)? {
            0 => self.inner.read(buf),
            n => Ok(n),
        }
    }
}

/// What both kinds of process share: the local ssh, its log, the
/// deadline's watchdog.
struct Local {
    child: Supervised,
    log: SshLog,
    vm: String,
    /// The deadline passed (or the guest-side kill for it was sent).
    timed_out: Arc<AtomicBool>,
    /// A SIGKILL was sent on purpose: ssh's 255 is then the kill's doing.
    killed: Arc<AtomicBool>,
    dog: Option<(Sender<()>, thread::JoinHandle<()>)>,
}

impl Local {
    fn wait(&mut self) -> Result<Exit, GuestError> {
        let ended = self
            .child
            .wait_for(Duration::from_secs(u64::from(u32::MAX)));
        if let Some((tx, dog)) = self.dog.take() {
            let _ = tx.send(());
            let _ = dog.join();
        }
        let ended = ended.ok_or_else(|| GuestError::Failed {
            vm: self.vm.clone(),
            action: "running",
            path: "a program".into(),
            detail: "ssh did not end".into(),
        })?;
        if ended.timed_out || self.timed_out.load(Ordering::Acquire) {
            return Ok(Exit {
                code: TIMED_OUT,
                timed_out: true,
            });
        }
        if ended.code == 255 {
            if self.killed.load(Ordering::Acquire) {
                return Ok(Exit {
                    code: 128 + SIGKILL,
                    timed_out: false,
                });
            }
            let said = self.log.text();
            if !said.is_empty() {
                return Err(GuestError::Unreachable {
                    vm: self.vm.clone(),
                    transport: "ssh",
                    detail: said,
                });
            }
        }
        Ok(Exit {
            code: ended.code,
            timed_out: false,
        })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some((tx, dog)) = self.dog.take() {
            let _ = tx.send(());
            let _ = dog.join();
        }
    }
}

/// Starts a watchdog that calls `at_deadline` once `timeout` has passed.
fn watchdog(
    timeout: Option<Duration>,
    at_deadline: impl FnOnce() + Send + 'static,
) -> Option<(Sender<()>, thread::JoinHandle<()>)> {
    let timeout = timeout?;
    let (tx, rx) = channel::<()>();
    let dog = thread::spawn(move || {
        if rx.recv_timeout(timeout) == Err(RecvTimeoutError::Timeout) {
            at_deadline();
        }
    });
    Some((tx, dog))
}

/// Signals the remote program's process group (over the master connection).
struct GroupKill {
    guest: SshGuest,
    pid: Arc<Pid>,
    local: Handle,
    killed: Arc<AtomicBool>,
}

impl GroupKill {
    fn send(&self, signal: i32) {
        if signal == SIGKILL {
            self.killed.store(true, Ordering::Release);
        }
        let Some(pid) = self.pid.get(Duration::from_secs(5)) else {
            if signal == SIGKILL {
                self.local.kill();
            }
            return;
        };
        if !self.local.running() {
            return;
        }
        let log = SshLog::new(&self.guest.t);
        // `kill -N -PGID`: the program and whatever it started.
        let args = self
            .guest
            .args(&log, &["-T"], format!("kill -{signal} -{pid} 2>/dev/null"));
        let _ = host::run_outcome("ssh", &args, None, Some(KILL_TIMEOUT));
    }
}

struct PipedControl(Arc<GroupKill>);

impl Control for PipedControl {
    fn resize(&self, _cols: u16, _rows: u16) {}

    fn signal(&self, signal: i32) {
        self.0.send(signal);
    }

    fn kill(&self) {
        self.0.send(SIGKILL);
        self.0.local.kill();
    }
}

struct Piped {
    local: Local,
    kill: Arc<GroupKill>,
    stdin: Option<Box<dyn Write + Send>>,
    stdout: Option<Box<dyn Read + Send>>,
    stderr: Option<Box<dyn Read + Send>>,
}

/// The program with its directory and environment, for the remote shell.
fn command_line(spec: &ExecSpec) -> String {
    let mut line = String::new();
    if let Some(cwd) = &spec.cwd {
        line.push_str(&format!("cd {} && ", ssh::shell_quote(cwd)));
    }
    if !spec.env.is_empty() {
        line.push_str("env ");
        for (k, v) in &spec.env {
            line.push_str(&ssh::shell_quote(&format!("{k}={v}")));
            line.push(' ');
        }
    }
    line.push_str(&ssh::remote_command(&spec.argv));
    line
}

fn piped(g: &SshGuest, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError> {
    let argv = command_line(spec);
    // The shell stays to report the program's status, whatever signal the
    // group gets (a trapped signal is the default again in the program);
    // its own messages ("Killed") go nowhere, the program's stderr on.
    let remote = format!(
        "trap : INT TERM HUP QUIT USR1 USR2; printf 'fcm-pid %s\\n' \"$$\" >&2; \
         exec 3>&2 2>/dev/null; {argv} 2>&3 3>&-; exit $?"
    );
    let log = SshLog::new(&g.t);
    let args = g.args(&log, &["-T"], remote);
    let mut cmd = Command::new("ssh");
    cmd.args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Supervised::spawn(
        cmd,
        format!("ssh root@{}", g.t.ip),
        spec.timeout.map(|t| t + LOCAL_GRACE),
    )
    .map_err(|e| g.host_error(e))?;
    let pid = Arc::new(Pid::default());
    let killed = Arc::new(AtomicBool::new(false));
    let kill = Arc::new(GroupKill {
        guest: SshGuest {
            t: g.t.clone(),
            key: g.key.clone(),
            mux: Arc::clone(&g.mux),
        },
        pid: Arc::clone(&pid),
        local: child.handle(),
        killed: Arc::clone(&killed),
    });
    let timed_out = Arc::new(AtomicBool::new(false));
    let dog = {
        let (kill, flag) = (Arc::clone(&kill), Arc::clone(&timed_out));
        watchdog(spec.timeout, move || {
            flag.store(true, Ordering::Release);
            kill.send(libc::SIGTERM);
            let until = Instant::now() + KILL_GRACE;
            while kill.local.running() && Instant::now() < until {
                thread::sleep(Duration::from_millis(50));
            }
            if kill.local.running() {
                kill.send(SIGKILL);
            }
        })
    };
    let stdin = child
        .stdin
        .take()
        .map(|w| Box::new(w) as Box<dyn Write + Send>);
    let stdout = child
        .stdout
        .take()
        .map(|r| Box::new(r) as Box<dyn Read + Send>);
    let stderr = child.stderr.take().map(|r| {
        Box::new(PidLine {
            inner: r,
            pid,
            head: Some(Vec::new()),
            pending: io::Cursor::new(Vec::new()),
        }) as Box<dyn Read + Send>
    });
    Ok(Box::new(Piped {
        local: Local {
            child,
            log,
            vm: g.vm(),
            timed_out,
            killed,
            dog,
        },
        kill,
        stdin,
        stdout,
        stderr,
    }))
}

impl Process for Piped {
    fn stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        self.stdin.take()
    }

    fn stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stdout.take()
    }

    fn stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stderr.take()
    }

    fn control(&self) -> Arc<dyn Control> {
        Arc::new(PipedControl(Arc::clone(&self.kill)))
    }

    fn wait(mut self: Box<Self>) -> Result<Exit, GuestError> {
        self.stdin = None;
        self.local.wait()
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        // Gone before it ended (the client went away): end it in the guest.
        if self.local.child.handle().running() {
            self.kill.send(SIGKILL);
        }
    }
}

/// A program on a terminal: `ssh -tt` on a pty whose master is its
/// input and output.
struct OnTty {
    local: Local,
    master: Arc<File>,
    stdin: Option<Box<dyn Write + Send>>,
    stdout: Option<Box<dyn Read + Send>>,
}

/// The pty's output; EIO (the other side closed) is its end.
struct PtyReader(File);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

struct TtyControl {
    master: Arc<File>,
    local: Handle,
    killed: Arc<AtomicBool>,
}

impl Control for TtyControl {
    fn resize(&self, cols: u16, rows: u16) {
        let _ = pty::set_size(&*self.master, cols, rows);
    }

    fn signal(&self, signal: i32) {
        // The keys the guest's terminal turns into these signals.
        let key: &[u8] = match signal {
            libc::SIGINT => b"\x03",
            libc::SIGQUIT => b"\x1c",
            libc::SIGTSTP => b"\x1a",
            _ => {
                // Anything else hangs the terminal up.
                self.kill();
                return;
            }
        };
        let _ = (&*self.master).write_all(key);
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.local.signal(Signal::HUP);
    }
}

fn on_tty(g: &SshGuest, spec: &ExecSpec, tty: &Tty) -> Result<Box<dyn Process>, GuestError> {
    // As with pipes, the shell stays to report a status of 128 + N when
    // the terminal's keys kill the program (ssh itself would say 255).
    let remote = format!(
        "trap : INT QUIT; exec 3>&2 2>/dev/null; {} 2>&3 3>&-; exit $?",
        command_line(spec)
    );
    let log = SshLog::new(&g.t);
    let args = g.args(&log, &["-tt", "-e", "none"], remote);
    let io_err = |source: io::Error| {
        g.host_error(host::HostError::Spawn {
            cmd: "a pty".into(),
            source,
        })
    };
    let (master, slave) = pty::open_cooked(tty.cols, tty.rows).map_err(io_err)?;
    let mut cmd = Command::new("ssh");
    cmd.args(&args).env("TERM", &tty.term);
    let cmd = pty::prepare_on(cmd, slave).map_err(io_err)?;
    let child = Supervised::spawn(
        cmd,
        format!("ssh -tt root@{}", g.t.ip),
        spec.timeout.map(|t| t + LOCAL_GRACE),
    )
    .map_err(|e| g.host_error(e))?;
    let master = Arc::new(master);
    let reader = master.try_clone().map_err(io_err)?;
    let writer = master.try_clone().map_err(io_err)?;
    let timed_out = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let dog = {
        let (h, flag) = (child.handle(), Arc::clone(&timed_out));
        watchdog(spec.timeout, move || {
            flag.store(true, Ordering::Release);
            h.signal(Signal::HUP);
        })
    };
    Ok(Box::new(OnTty {
        local: Local {
            child,
            log,
            vm: g.vm(),
            timed_out,
            killed,
            dog,
        },
        master,
        stdin: Some(Box::new(writer)),
        stdout: Some(Box::new(PtyReader(reader))),
    }))
}

impl Process for OnTty {
    fn stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        self.stdin.take()
    }

    fn stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stdout.take()
    }

    fn stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        None
    }

    fn control(&self) -> Arc<dyn Control> {
        Arc::new(TtyControl {
            master: Arc::clone(&self.master),
            local: self.local.child.handle(),
            killed: Arc::clone(&self.local.killed),
        })
    }

    fn wait(mut self: Box<Self>) -> Result<Exit, GuestError> {
        self.stdin = None;
        let exit = self.local.wait();
        if self.local.killed.load(Ordering::Acquire) && exit.is_err() {
            // Hung up on purpose.
            return Ok(Exit {
                code: 128 + libc::SIGHUP,
                timed_out: false,
            });
        }
        exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_line_is_taken_off_stderr() {
        let pid = Arc::new(Pid::default());
        let mut r = PidLine {
            inner: &b"fcm-pid 4242\nreal stderr\n"[..],
            pid: Arc::clone(&pid),
            head: Some(Vec::new()),
            pending: io::Cursor::new(Vec::new()),
        };
        let mut s = String::new();
        r.read_to_string(&mut s).expect("read");
        assert_eq!(s, "real stderr\n");
        assert_eq!(pid.get(Duration::ZERO), Some(4242));

        // Anything else is passed on whole.
        let pid = Arc::new(Pid::default());
        let mut r = PidLine {
            inner: &b"sh: not what we said\n"[..],
            pid: Arc::clone(&pid),
            head: Some(Vec::new()),
            pending: io::Cursor::new(Vec::new()),
        };
        let mut s = String::new();
        r.read_to_string(&mut s).expect("read");
        assert_eq!(s, "sh: not what we said\n");
        assert_eq!(pid.get(Duration::ZERO), None);
    }
}
