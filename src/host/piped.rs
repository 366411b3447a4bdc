//! Programs whose stdin and stdout the caller streams (file transfers
//! through ssh, a local tar), with stderr collected and a watchdog that
//! kills the program at its deadline, so a stalled peer cannot hold it.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use super::process::{HostError, Signal, drain_bytes, render, signal, wait_until};

/// A program whose stdin and stdout the caller streams (file transfers),
/// with stderr collected and a deadline enforced by a watchdog that kills
/// it, so a stalled peer cannot hold it forever.
pub struct Piped {
    child: std::process::Child,
    stderr: Option<thread::JoinHandle<(Vec<u8>, bool)>>,
    watchdog: Option<(std::sync::mpsc::Sender<()>, thread::JoinHandle<bool>)>,
    pub cmd: String,
}

/// How a [`Piped`] program ended.
#[derive(Debug)]
pub struct Ended {
    /// `None` when the watchdog killed it.
    pub code: Option<i32>,
    pub stderr: String,
}

impl Piped {
    /// Spawns `program` with piped stdin and stdout; it is killed after `timeout`.
    pub fn spawn<I, S>(program: &str, args: I, timeout: Duration) -> Result<Self, HostError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let cmd = render(program, &args);
        let mut child = Command::new(program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HostError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        let stderr = Some(drain_bytes(child.stderr.take(), 64 * 1024));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let pid = child.id();
        // The watchdog signals only before `finish` has told it to stop,
        // which happens before the child is reaped: never a reused pid.
        let dog = thread::spawn(move || match rx.recv_timeout(timeout) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                signal(pid, Signal::KILL);
                true
            }
            _ => false,
        });
        Ok(Self {
            child,
            stderr,
            watchdog: Some((tx, dog)),
            cmd,
        })
    }

    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits for the program (up to its deadline) and reports how it ended.
    pub fn finish(mut self) -> Ended {
        drop(self.child.stdin.take());
        // Wait (bounded by the watchdog) before stopping the watchdog.
        let status = wait_until(
            Duration::from_secs(3600),
            Duration::from_millis(10),
            || match self.child.try_wait() {
                Ok(Some(s)) => Some(Some(s)),
                Ok(None) => None,
                Err(_) => Some(None),
            },
        )
        .flatten();
        let killed = match self.watchdog.take() {
            Some((tx, dog)) => {
                let _ = tx.send(());
                dog.join().unwrap_or(false)
            }
            None => false,
        };
        let status = status.or_else(|| self.child.wait().ok());
        let (err, _) = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ended {
            code: if killed {
                None
            } else {
                status.map(|s| s.code().unwrap_or(-1))
            },
            stderr: String::from_utf8_lossy(&err).trim().to_owned(),
        }
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if let Some((tx, dog)) = self.watchdog.take() {
            let _ = self.child.kill();
            let _ = tx.send(());
            let _ = dog.join();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    #[test]
    fn piped_streams_and_its_watchdog_kills() {
        let mut p = Piped::spawn("cat", [] as [&str; 0], Duration::from_secs(5)).expect("cat");
        let mut input = p.stdin().expect("stdin");
        let mut output = p.stdout().expect("stdout");
        input.write_all(b"hello").expect("write");
        drop(input);
        let mut got = String::new();
        output.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello");
        assert_eq!(p.finish().code, Some(0));
        let t = Instant::now();
        let p = Piped::spawn("sleep", ["5"], Duration::from_millis(200)).expect("sleep");
        assert_eq!(p.finish().code, None);
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
