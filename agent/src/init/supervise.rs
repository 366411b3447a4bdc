//! The programs fcm's init keeps running: the agent, sshd (when the image
//! has it) and the image's service, each restarted with a backoff.

use crate::users::User;
use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first restart's delay; each one after a short run doubles it.
pub(super) const FIRST_DELAY: Duration = Duration::from_secs(1);
pub(super) const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run at least this long resets the delay to the first one.
pub(super) const RESET_AFTER: Duration = Duration::from_secs(60);

/// The delay before a restart: 1 s, doubling to 30 s, back to 1 s after a
/// run of 60 s or more.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The delay after a run of `ran`.
    pub(super) fn after(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

/// When a program that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Restart {
    /// The agent and sshd: whatever the way it ended.
    Always,
    /// The service, as Docker's `--restart on-failure`: a non-zero exit or
    /// a signal; an exit 0 is a job done and stays done.
    OnFailure,
}

/// How a program ended (from `waitpid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Exited(i32),
    Killed(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Killed(sig) => write!(f, "was killed by signal {sig}"),
        }
    }
}

impl Restart {
    pub(super) fn again(self, ended: Ended) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => ended != Ended::Exited(0),
        }
    }
}

/// A program to run: everything but what the moment decides.
#[derive(Debug, Clone)]
pub(super) struct Program {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// None: root, as init.
    pub user: Option<User>,
}

/// One supervised program and its state.
#[derive(Debug)]
pub(super) struct Unit {
    pub name: &'static str,
    pub program: Program,
    pub restart: Restart,
    /// A file whose presence holds the program off (the agent's
    /// `/run/fcm/agent.off`: tests put their own program on its port).
    pub off_switch: Option<PathBuf>,
    pub pid: Option<i32>,
    pub started: Instant,
    pub backoff: Backoff,
    /// When to start it (none: running, or done for good).
    pub due: Option<Instant>,
}

impl Unit {
    pub(super) fn new(name: &'static str, program: Program, restart: Restart) -> Self {
        Self {
            name,
            program,
            restart,
            off_switch: None,
            pid: None,
            started: Instant::now(),
            backoff: Backoff::default(),
            due: Some(Instant::now()),
        }
    }

    /// Starts it if due; a failure to start counts as a failed run.
    pub(super) fn start_if_due(&mut self, now: Instant) {
        if self.pid.is_some() || self.due.is_none_or(|d| d > now) {
            return;
        }
        if let Some(off) = &self.off_switch
            && off.exists()
        {
            self.due = Some(now + Duration::from_secs(5));
            return;
        }
        self.started = now;
        match spawn(&self.program) {
            Ok(pid) => {
                say!(
                    "started {} (pid {pid}): {}",
                    self.name,
                    self.program.argv.join(" ")
                );
                self.pid = Some(pid);
                self.due = None;
            }
            Err(e) => {
                let delay = self.backoff.after(Duration::ZERO);
                say!(
                    "cannot start {} ({}): {e}; trying again in {} s",
                    self.name,
                    self.program.argv.join(" "),
                    delay.as_secs()
                );
                self.due = Some(now + delay);
            }
        }
    }

    /// Its program `pid` ended.
    pub(super) fn ended(&mut self, ended: Ended, now: Instant) {
        self.pid = None;
        let ran = now.saturating_duration_since(self.started);
        if self.restart.again(ended) {
            let delay = self.backoff.after(ran);
            say!(
                "{} {ended} after {:.1} s; restarting in {} s",
                self.name,
                ran.as_secs_f64(),
                delay.as_secs()
            );
            self.due = Some(now + delay);
        } else {
            say!(
                "{} {ended} after {:.1} s; done (restarted only on failure)",
                self.name,
                ran.as_secs_f64()
            );
            self.due = None;
        }
    }
}

/// `name` as is when it has a `/`, else the first executable of that name
/// on `path`.
fn resolve(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return Some(name.into());
    }
    path.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
        let candidate = Path::new(dir).join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

/// Starts `p` in a session of its own, stdin `/dev/null`, stdout and
/// stderr init's own (the console), as its user in its directory.
fn spawn(p: &Program) -> io::Result<i32> {
    let Some(name) = p.argv.first() else {
        return Err(io::Error::other("an empty command"));
    };
    let path = p
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    let program = resolve(name, path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} not found on PATH={path}"),
        )
    })?;
    let cwd = CString::new(p.cwd.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("a NUL in the working directory"))?;
    let creds = p.user.as_ref().map(|u| {
        let groups: Vec<rustix::process::Gid> = u
            .groups
            .iter()
            .map(|&g| rustix::process::Gid::from_raw(g))
            .collect();
        (
            groups,
            rustix::process::Gid::from_raw(u.gid),
            rustix::process::Uid::from_raw(u.uid),
        )
    });
    let mut cmd = Command::new(program);
    cmd.arg0(name)
        .args(&p.argv[1..])
        .env_clear()
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the child between fork and exec: raw
    // system calls on data prepared before the fork, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // Init blocks the signals it waits for; its programs must not
            // inherit that (std may reset the mask too: this makes sure).
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            rustix::process::setsid()?;
            if let Some((groups, gid, uid)) = &creds {
                rustix::thread::set_thread_groups(groups)?;
                rustix::thread::set_thread_res_gid(*gid, *gid, *gid)?;
                rustix::thread::set_thread_res_uid(*uid, *uid, *uid)?;
            }
            rustix::process::chdir(cwd.as_c_str())?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Reaped by init's loop (waitpid(-1)), not through `child`.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(2);
        let got: Vec<u64> = (0..7).map(|_| b.after(short).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after(RESET_AFTER).as_secs(), 1, "a long run resets it");
        assert_eq!(b.after(short).as_secs(), 2);
    }

    #[test]
    fn the_service_restarts_only_on_failure() {
        assert!(!Restart::OnFailure.again(Ended::Exited(0)));
        assert!(Restart::OnFailure.again(Ended::Exited(1)));
        assert!(Restart::OnFailure.again(Ended::Killed(9)));
        assert!(Restart::Always.again(Ended::Exited(0)));
    }

    #[test]
    fn a_unit_runs_its_program_and_is_scheduled_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = Program {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            env: vec![("PATH".into(), crate::process::DEFAULT_PATH.into())],
            cwd: dir.path().into(),
            user: None,
        };
        let mut unit = Unit::new("test", program, Restart::OnFailure);
        let now = Instant::now();
        unit.start_if_due(now);
        let pid = unit.pid.expect("started");
        let mut status = 0;
        // SAFETY: waits for the child this test started.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert_eq!(libc::WEXITSTATUS(status), 3);
        unit.ended(Ended::Exited(3), now);
        assert_eq!(unit.due, Some(now + FIRST_DELAY));

        let missing = Program {
            argv: vec!["no-such-program-here".into()],
            ..unit.program.clone()
        };
        let mut bad = Unit::new("bad", missing, Restart::Always);
        let later = Instant::now();
        bad.start_if_due(later);
        assert_eq!((bad.pid, bad.due), (None, Some(later + FIRST_DELAY)));
    }
}
