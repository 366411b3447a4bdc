//! A child process whose streams the caller takes and pumps itself (a
//! streamed exec's ssh, a terminal's ssh on a pty), with:
//! - an optional deadline, enforced by a watchdog thread that kills it;
//! - a [`Handle`] other threads use to signal or kill it, which never
//!   signals a reused pid (the child is reaped under the same lock);
//! - a wait that reports how it ended, and a drop that kills and reaps it.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::process::{HostError, Signal, signal};

struct State {
    child: Child,
    /// Set once reaped: from then on the pid may be another process's.
    status: Option<std::process::ExitStatus>,
}

struct Shared {
    state: Mutex<State>,
    /// The watchdog killed it at its deadline.
    timed_out: AtomicBool,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Reaps the child if it has exited; whether it is still running.
    fn running(&self) -> bool {
        let mut s = lock(self);
        if s.status.is_some() {
            return false;
        }
        match s.child.try_wait() {
            Ok(Some(st)) => {
                s.status = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn signal(&self, sig: Signal) {
        let s = lock(self);
        if s.status.is_none() {
            signal(s.child.id(), sig);
        }
    }
}

/// Signals a [`Supervised`] child from any thread.
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

impl Handle {
    /// Sends `sig` unless the child has already been reaped.
    pub fn signal(&self, sig: Signal) {
        self.0.signal(sig);
    }

    /// Kills it (SIGKILL) unless it has already been reaped.
    pub fn kill(&self) {
        self.0.signal(Signal::KILL);
    }

    pub fn running(&self) -> bool {
        self.0.running()
    }
}

/// How a supervised child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code, or 128 + N when signal N ended it.
    pub code: i32,
    /// The watchdog killed it at its deadline.
    pub timed_out: bool,
}

/// A running child; see the module's comment.
pub struct Supervised {
    shared: Arc<Shared>,
    watchdog: Option<(Sender<()>, thread::JoinHandle<()>)>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    /// The command line, for messages.
    pub cmd: String,
}

impl Supervised {
    /// Spawns `cmd` (its stdio as the caller set it up); with a
    /// `deadline`, a watchdog kills it when that much time has passed.
    pub fn spawn(
        mut cmd: Command,
        display: String,
        deadline: Option<Duration>,
    ) -> Result<Self, HostError> {
        let mut child = cmd.spawn().map_err(|source| HostError::Spawn {
            cmd: display.clone(),
            source,
        })?;
        drop(cmd);
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                child,
                status: None,
            }),
            timed_out: AtomicBool::new(false),
        });
        let watchdog = deadline.map(|d| {
            let (tx, rx) = channel::<()>();
            let s = Arc::clone(&shared);
            let dog = thread::spawn(move || {
                if rx.recv_timeout(d) == Err(RecvTimeoutError::Timeout) && s.running() {
                    s.timed_out.store(true, Ordering::Release);
                    s.signal(Signal::KILL);
                }
            });
            (tx, dog)
        });
        Ok(Self {
            shared,
            watchdog,
            stdin,
            stdout,
            stderr,
            cmd: display,
        })
    }

    pub fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.shared))
    }

    pub fn pid(&self) -> u32 {
        lock(&self.shared).child.id()
    }

    /// Waits until it exits (its deadline, if any, kills it first), or at
    /// most `limit`; `None` if it still runs then (it is left running).
    pub fn wait_for(&mut self, limit: Duration) -> Option<Ended> {
        let until = Instant::now() + limit;
        let mut step = Duration::from_micros(250);
        loop {
            if !self.shared.running() {
                break;
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            thread::sleep(step.min(until - now));
            step = (step * 2).min(Duration::from_millis(10));
        }
        if let Some((tx, dog)) = self.watchdog.take() {
            let _ = tx.send(());
            let _ = dog.join();
        }
        let status = lock(&self.shared).status;
        let code = status.map_or(-1, |s| {
            s.code()
                .unwrap_or_else(|| 128 + s.signal().unwrap_or_default())
        });
        Some(Ended {
            code,
            timed_out: self.shared.timed_out.load(Ordering::Acquire),
        })
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stdin = None;
        if self.shared.running() {
            self.shared.signal(Signal::KILL);
        }
        if let Some((tx, dog)) = self.watchdog.take() {
            let _ = tx.send(());
            let _ = dog.join();
        }
        let mut s = lock(&self.shared);
        if s.status.is_none() {
            s.status = s.child.wait().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::process::Stdio;

    fn piped(args: &[&str]) -> Command {
        let mut c = Command::new(args[0]);
        c.args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    #[test]
    fn streams_exit_codes_and_signals() {
        let mut p = Supervised::spawn(piped(&["sh", "-c", "cat; exit 3"]), "sh".into(), None)
            .expect("spawn");
        let mut input = p.stdin.take().expect("stdin");
        input.write_all(b"hello").expect("write");
        drop(input);
        let mut out = String::new();
        p.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        assert_eq!(out, "hello");
        let end = p.wait_for(Duration::from_secs(5)).expect("ended");
        assert_eq!(
            end,
            Ended {
                code: 3,
                timed_out: false
            }
        );

        let mut p =
            Supervised::spawn(piped(&["sleep", "30"]), "sleep".into(), None).expect("spawn");
        assert!(p.wait_for(Duration::from_millis(50)).is_none());
        p.handle().signal(Signal::TERM);
        let end = p.wait_for(Duration::from_secs(5)).expect("ended");
        assert_eq!(end.code, 128 + 15);
    }

    #[test]
    fn the_watchdog_kills_at_the_deadline_and_handles_outlive_the_child() {
        let t = Instant::now();
        let mut p = Supervised::spawn(
            piped(&["sleep", "30"]),
            "sleep".into(),
            Some(Duration::from_millis(200)),
        )
        .expect("spawn");
        let h = p.handle();
        let end = p.wait_for(Duration::from_secs(5)).expect("ended");
        assert!(end.timed_out && end.code == 128 + 9, "{end:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
        drop(p);
        // Reaped: the handle signals nothing any more.
        assert!(!h.running());
        h.kill();
    }
}
