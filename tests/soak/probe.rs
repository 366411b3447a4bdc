//! What the soak and scale tests read off the host: the daemon's own
//! figures (RSS, threads, descriptors), a deadline-bound `fcm` runner that
//! several threads share, and percentiles.
#![allow(dead_code)] // shared by tests/soak.rs and tests/scale.rs, which use parts

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Fcm;

/// The daemon process's resident memory, threads and open descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {} KiB, {} threads, {} fds",
            self.rss_kib, self.threads, self.fds
        )
    }
}

fn status_number(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The figures of process `pid`, while it runs.
pub fn figures(pid: u32) -> Option<Figures> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Figures {
        rss_kib: status_number(&status, "VmRSS:")?,
        threads: status_number(&status, "Threads:")?,
        fds,
    })
}

/// What a process's descriptors point at, counted ("socket" for every
/// socket, paths otherwise): named in a leak's message.
pub fn fd_kinds(pid: u32) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let kind = match target.split_once(':') {
            Some((k @ ("socket" | "pipe" | "anon_inode"), _)) => k.to_string(),
            _ => target,
        };
        *counts.entry(kind).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// The value at `q` (0..=1) of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One `fcm` run: its status, output and time.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    /// The exit code (none: killed by a signal, or not run).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// The `fcm` CLI of a test's namespace, as an owned command line that
/// many threads can run at once, each run with a deadline.
#[derive(Debug, Clone)]
pub struct Cli {
    program: OsString,
    args: Vec<OsString>,
}

impl Cli {
    pub fn of(f: &Fcm) -> Self {
        let c = f.cli();
        Self {
            program: c.get_program().to_owned(),
            args: c.get_args().map(ToOwned::to_owned).collect(),
        }
    }

    /// Runs `fcm args`, killed at `timeout` (then not ok, "timed out").
    pub fn run(&self, args: &[&str], timeout: Duration) -> Run {
        let started = Instant::now();
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return Run {
                    ok: false,
                    code: None,
                    stdout: String::new(),
                    stderr: format!("could not run fcm: {e}"),
                    took: started.elapsed(),
                };
            }
        };
        // Drained from threads, so a chatty command never blocks on a pipe.
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut s);
                }
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
        let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
        // Polled finely at first, so a fast command's time is its own.
        let mut status = None;
        while status.is_none() && started.elapsed() < timeout {
            status = child.try_wait().ok().flatten();
            if status.is_none() {
                let pause = if started.elapsed() < Duration::from_secs(1) {
                    2
                } else {
                    20
                };
                std::thread::sleep(Duration::from_millis(pause));
            }
        }
        let timed_out = status.is_none();
        if timed_out {
            // Our own child, by its pid.
            let _ = child.kill();
        }
        let status = status.or_else(|| child.wait().ok());
        let stdout = out.join().unwrap_or_default();
        let mut stderr = err.join().unwrap_or_default();
        if timed_out {
            stderr.push_str(&format!("\n(timed out after {} s)", timeout.as_secs()));
        }
        Run {
            ok: !timed_out && status.is_some_and(|s| s.success()),
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
            took: started.elapsed(),
        }
    }
}
