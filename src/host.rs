//! The seam for side effects on the host: running commands (never through a
//! shell), atomic file writes, process liveness and bounded waits.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

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

/// The one way fcm runs a host program: no shell, stdout and stderr
/// captured (drained by threads so a chatty program cannot block), an
/// optional deadline after which the program is killed.
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
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmd = render(program, &args);
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
        Some(t) => wait_until(t, Duration::from_millis(10), || {
            child.try_wait().ok().flatten()
        }),
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = (out.join(), err.join());
        let secs = timeout.map(|t| t.as_secs_f32()).unwrap_or_default();
        return Err(HostError::Failed {
            cmd,
            status: format!("timed out after {secs} s"),
            stderr: String::new(),
        });
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(HostError::Failed {
            cmd,
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        })
    }
}

fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn render(program: &str, args: &[std::ffi::OsString]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Writes `data` to `path` so that a crash leaves either the old or the new
/// content: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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

/// Sends a signal; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a positive pid and a valid signal number has no
    // memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether the current process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
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
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.json");
        write_atomic(&p, b"one", 0o600).expect("write");
        write_atomic(&p, b"two", 0o600).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "temp file left behind"
        );
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
