//! Running host programs (never through a shell), process liveness and
//! signals, and bounded waits.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use thiserror::Error;

/// Output kept of each of a program's streams; the rest is read and dropped.
pub const OUTPUT_CAP: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum HostError {
    #[error("could not run `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

/// What a bounded run of a program gave.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code; `None` when the deadline passed and it was killed,
    /// `Some(-1)` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for error messages.
    pub cmd: String,
}

/// Runs a program with arguments (no shell) and returns its stdout.
pub fn run<I, S>(program: &str, args: I) -> Result<String, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_full(program, args, None, None)
}

/// Like [`run`], feeding `stdin` to the program.
pub fn run_with_stdin<I, S>(
    program: &str,
    args: I,
    stdin: Option<&[u8]>,
) -> Result<String, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_full(program, args, stdin, None)
}

/// Like [`run`], killing the program if it has not finished within `timeout`.
pub fn run_timeout<I, S>(program: &str, args: I, timeout: Duration) -> Result<String, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_full(program, args, None, Some(timeout))
}

/// Like [`run`], but a non-zero exit is the caller's to judge: returns
/// the [`Outcome`] whatever the exit code.
pub fn run_outcome<I, S>(
    program: &str,
    args: I,
    stdin: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<Outcome, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut command = Command::new(program);
    command.args(&args);
    run_command(command, render(program, &args), stdin, timeout)
}

/// Like [`run_outcome`], for a command the caller has prepared (for
/// example one that inherits a descriptor); `cmd` is its printable form.
pub fn run_command(
    mut command: Command,
    cmd: String,
    stdin: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<Outcome, HostError> {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HostError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits early closes the pipe; its status tells why.
        let _ = pipe.write_all(data);
    }
    let status = match timeout {
        None => child.wait().ok(),
        Some(t) => wait_child(&mut child, t),
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(Outcome {
        code: status.map(|s| s.code().unwrap_or(-1)),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default().trim().to_owned(),
        cmd,
    })
}

/// The one way fcm runs a host program: no shell, stdout and stderr
/// captured (drained by threads so a chatty program cannot block, each
/// capped at [`OUTPUT_CAP`]), an optional deadline after which the program
/// is killed. A non-zero exit is an error carrying the program's stderr.
pub fn run_full<I, S>(
    program: &str,
    args: I,
    stdin: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<String, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let o = run_outcome(program, args, stdin, timeout)?;
    match o.code {
        Some(0) => Ok(o.stdout),
        None => Err(HostError::Failed {
            cmd: o.cmd,
            status: format!(
                "timed out after {} s",
                timeout.map(|t| t.as_secs_f32()).unwrap_or_default()
            ),
            stderr: o.stderr,
        }),
        Some(c) => Err(HostError::Failed {
            cmd: o.cmd,
            status: format!("exit status: {c}"),
            stderr: o.stderr,
        }),
    }
}

/// What [`capture`] gave: the exact bytes, each stream cut at its cap.
#[derive(Debug)]
pub struct Captured {
    /// The exit code; `None` when the deadline passed and it was killed,
    /// `Some(128 + N)` when signal N ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// A stream was longer than `cap` (the rest was read and dropped).
    pub truncated: bool,
    pub elapsed: Duration,
}

/// Runs a program (no shell) feeding it `stdin`, keeping at most `cap`
/// bytes of each stream as bytes, killing it at `timeout`.
pub fn capture<I, S>(
    program: &str,
    args: I,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    cap: usize,
) -> Result<Captured, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::os::unix::process::ExitStatusExt;
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HostError::Spawn {
            cmd: render(program, &args),
            source,
        })?;
    let out = drain_bytes(child.stdout.take(), cap);
    let err = drain_bytes(child.stderr.take(), cap);
    // Fed from a thread: a program that reads slowly (or not at all) must
    // not keep the deadline from being checked.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })),
        _ => None,
    };
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let (stdout, cut_out) = out.join().unwrap_or_default();
    let (stderr, cut_err) = err.join().unwrap_or_default();
    Ok(Captured {
        code: status.map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))),
        stdout,
        stderr,
        truncated: cut_out || cut_err,
        elapsed: started.elapsed(),
    })
}

pub(super) fn drain_bytes<R: Read + Send + 'static>(
    pipe: Option<R>,
    cap: usize,
) -> thread::JoinHandle<(Vec<u8>, bool)> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let mut cut = false;
        if let Some(mut p) = pipe {
            let _ = (&mut p).take(cap as u64).read_to_end(&mut buf);
            cut = io::copy(&mut p, &mut io::sink()).is_ok_and(|n| n > 0);
        }
        (buf, cut)
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = (&mut p).take(OUTPUT_CAP as u64).read_to_end(&mut buf);
            // Keep reading (and dropping) so the program never blocks on a full pipe.
            let _ = io::copy(&mut p, &mut io::sink());
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

pub(super) fn render(program: &str, args: &[std::ffi::OsString]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Waits for `child` to exit, at most `timeout`: polled from 250 µs,
/// doubling to 10 ms, so a quick program (nft: ~2.5 ms) is not charged a
/// whole 10 ms step and a slow one costs few wake-ups.
fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut step = Duration::from_micros(250);
    loop {
        if let Some(s) = child.try_wait().ok().flatten() {
            return Some(s);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(step.min(deadline - now));
        step = (step * 2).min(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn wait_until<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(step);
    }
}

/// True when a process with this pid exists and its command line mentions
/// `marker` (guards against pid reuse after a reboot or a long downtime).
pub fn process_alive(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; it only waits to be reaped.
        if let Some(rest) = stat.rsplit_once(')')
            && rest.1.trim_start().starts_with('Z')
        {
            return false;
        }
    }
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(marker)
}

/// Sends a signal; a process that is already gone is not an error, and
/// pids 0 and 1 are never signalled.
pub fn signal(pid: u32, sig: Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, sig);
}

/// Live processes whose program is one of `programs` (the file name of
/// argv[0]) and whose command line mentions `marker`: how the daemon finds
/// a VM's VMM on the host, whatever its records say.
pub fn find_processes(programs: &[&str], marker: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            programs.iter().any(|p| p.as_bytes() == name) && process_alive(*pid, marker)
        })
        .collect();
    found.sort_unstable();
    found
}

/// Whether the current process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Looks a program up on `PATH` (or checks an explicit path).
pub fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`).
/// A daemon that lives for months on threads that come and go (a thread
/// per stream, per console) leaves freed memory in malloc's per-thread
/// arenas, which RSS counts until it is trimmed; the housekeeping thread
/// calls this now and then.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims malloc's own arenas, under
    // their locks; it takes no pointer and changes no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_stderr_of_failures() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"]).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
        assert_eq!(run("echo", ["hi"]).expect("echo").trim(), "hi");
    }

    #[test]
    fn run_timeout_kills_slow_programs() {
        let t = Instant::now();
        let err =
            run_timeout("sleep", ["5"], Duration::from_millis(200)).expect_err("must time out");
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(4));
        assert_eq!(
            run_timeout("echo", ["ok"], Duration::from_secs(5))
                .expect("echo")
                .trim(),
            "ok"
        );
    }

    #[test]
    fn outcome_keeps_the_exit_code_and_caps_output() {
        let o =
            run_outcome("sh", ["-c", "echo out; echo err >&2; exit 7"], None, None).expect("run");
        assert_eq!(
            (o.code, o.stdout.trim(), o.stderr.as_str()),
            (Some(7), "out", "err")
        );
        let big = run_outcome("head", ["-c", "3000000", "/dev/zero"], None, None).expect("run");
        assert_eq!((big.code, big.stdout.len()), (Some(0), OUTPUT_CAP));
        let slow =
            run_outcome("sleep", ["5"], None, Some(Duration::from_millis(100))).expect("run");
        assert_eq!(slow.code, None);
    }

    #[test]
    fn capture_keeps_bytes_flags_truncation_and_times_out() {
        let o = capture(
            "sh",
            ["-c", "cat; printf '\\377' >&2; exit 7"],
            Some(b"in".to_vec()),
            Duration::from_secs(5),
            16,
        )
        .expect("run");
        assert_eq!(
            (o.code, o.stdout.as_slice(), o.stderr.as_slice()),
            (Some(7), &b"in"[..], &[0xffu8][..])
        );
        assert!(!o.truncated);
        let big = capture(
            "head",
            ["-c", "100", "/dev/zero"],
            None,
            Duration::from_secs(5),
            10,
        )
        .expect("run");
        assert_eq!((big.stdout.len(), big.truncated), (10, true));
        let slow = capture("sleep", ["5"], None, Duration::from_millis(100), 10).expect("run");
        assert_eq!(slow.code, None);
        let sig =
            capture("sh", ["-c", "kill -9 $$"], None, Duration::from_secs(5), 10).expect("run");
        assert_eq!(sig.code, Some(137));
    }

    #[test]
    fn processes_are_found_by_program_and_marker() {
        let mut child = Command::new("sleep").arg("29.123").spawn().expect("spawn");
        // Until the child has exec'd, its command line is still ours.
        let found = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            let f = find_processes(&["sleep"], "29.123");
            f.contains(&child.id()).then_some(f)
        });
        assert!(
            found.is_some(),
            "{:?}",
            find_processes(&["sleep"], "29.123")
        );
        assert!(find_processes(&["qemu-system-x86_64"], "29.123").is_empty());
        let _ = child.kill();
        let _ = child.wait();
        assert!(!find_processes(&["sleep"], "29.123").contains(&child.id()));
    }

    #[test]
    fn liveness_checks_marker() {
        let me = std::process::id();
        assert!(process_alive(me, ""));
        assert!(!process_alive(me, "no-such-marker-xyz"));
        assert!(!process_alive(u32::MAX - 1, ""));
    }

    #[test]
    fn wait_until_gives_up() {
        let t = Instant::now();
        assert_eq!(
            wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
                None::<()>
            }),
            None
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            wait_until(Duration::from_secs(1), Duration::from_millis(1), || Some(7)),
            Some(7)
        );
    }
}
