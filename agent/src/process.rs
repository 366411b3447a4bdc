//! Starting a program as `Exec` asks: its user, environment, working
//! directory and program path worked out here (in the agent), then a fork
//! in which the child makes itself a session leader (with the terminal as
//! its controlling one), takes the user's groups, gid and uid, and enters
//! its directory before the exec. Also: killing a program's whole session.

use crate::error::OpError;
use crate::session::Config;
use crate::users::{self, User};
use fcm_proto::{Exec, Tty};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use std::ffi::CString;
use std::fs;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// `PATH` for every program, root or not.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A program, ready to start.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The directory to enter; `fallback` says to enter `/` when that
    /// fails (the default one, the user's home).
    pub cwd: CString,
    pub fallback: bool,
    pub user: User,
    pub tty: Option<Tty>,
}

fn no_nul(what: &str, s: &str) -> Result<(), OpError> {
    if s.contains('\0') {
        return Err(OpError::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// Works out everything about `exec` that can fail before a fork.
pub(crate) fn prepare(config: &Config, exec: &Exec) -> Result<Prepared, OpError> {
    let Some(name) = exec.argv.first() else {
        return Err(OpError::invalid("an empty argv"));
    };
    if name.is_empty() {
        return Err(OpError::invalid("an empty program name"));
    }
    for a in &exec.argv {
        no_nul("an argument", a)?;
    }
    let passwd = fs::read_to_string(&config.passwd).unwrap_or_default();
    let group = fs::read_to_string(&config.group).unwrap_or_default();
    let image = config.image.as_ref();
    let user_spec = exec
        .user
        .as_deref()
        .or(image.and_then(|i| i.user.as_deref()));
    let user = users::lookup_spec(user_spec, &passwd, &group)?;

    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), user.home.clone()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), user.shell.clone()),
    ];
    if let Some(tty) = &exec.tty {
        no_nul("TERM", &tty.term)?;
        let term = if tty.term.is_empty() {
            "xterm"
        } else {
            &tty.term
        };
        env.push(("TERM".into(), term.into()));
    }
    // Then the image's env, then the request's (a later one wins), as
    // `docker exec` does.
    if let Some(image) = image {
        for (k, v) in crate::image::env_pairs(image) {
            crate::image::set_env(&mut env, &k, &v);
        }
    }
    for (k, v) in &exec.env {
        if k.is_empty() || k.contains('=') {
            return Err(OpError::invalid(format!("a bad environment name {k:?}")));
        }
        no_nul("an environment variable", k)?;
        no_nul("an environment value", v)?;
        crate::image::set_env(&mut env, k, v);
    }

    let (cwd, fallback) = match (&exec.cwd, image) {
        (Some(dir), _) => {
            no_nul("the working directory", dir)?;
            match fs::metadata(dir) {
                Ok(m) if m.is_dir() => (dir.clone(), false),
                Ok(_) => return Err(OpError::wrong_kind(format!("{dir} is not a directory"))),
                Err(e) => return Err(OpError::io(dir, &e)),
            }
        }
        // An image's workdir, as `docker exec` (falling back to `/` if it
        // went away).
        (None, Some(image)) => (crate::image::workdir(image).to_string(), true),
        (None, None) if Path::new(&user.home).is_dir() => (user.home.clone(), true),
        (None, None) => ("/".into(), false),
    };
    let cwd = CString::new(cwd).map_err(|_| OpError::invalid("a NUL in the directory"))?;

    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let program = find_program(
        name,
        path.unwrap_or(""),
        Path::new(cwd.to_str().unwrap_or("/")),
    )
    .ok_or_else(|| OpError::not_found(format!("{name}: program not found")))?;
    Ok(Prepared {
        program,
        argv: exec.argv.clone(),
        env,
        cwd,
        fallback,
        user,
        tty: exec.tty.clone(),
    })
}

/// `name` as is when it has a `/`, else the first executable file of that
/// name on `path` (an empty entry is the working directory).
pub(crate) fn find_program(name: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(name.into());
    }
    path.split(':').find_map(|dir| {
        let candidate = if dir.is_empty() {
            cwd.join(name)
        } else {
            Path::new(dir).join(name)
        };
        let meta = fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

/// A started program and the agent's ends of its streams.
pub(crate) struct Child {
    pub pid: Pid,
    /// Stdin (a pipe, or the terminal).
    pub stdin: OwnedFd,
    /// Stdout, or the terminal (all output).
    pub stdout: OwnedFd,
    /// Stderr (none on a terminal).
    pub stderr: Option<OwnedFd>,
    /// The terminal's master side, for resizes and its foreground group.
    pub tty: Option<Arc<OwnedFd>>,
}

fn failed(what: &str) -> impl Fn(rustix::io::Errno) -> OpError + '_ {
    move |e| OpError::failed(format!("{what}: {e}"))
}

/// A new terminal of `tty`'s size: (master, slave).
fn open_pty(tty: &Tty) -> Result<(OwnedFd, OwnedFd), OpError> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags).map_err(failed("cannot open a terminal"))?;
    rustix::pty::grantpt(&master).map_err(failed("grantpt"))?;
    rustix::pty::unlockpt(&master).map_err(failed("unlockpt"))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(failed("ptsname"))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed("cannot open the terminal's slave"))?;
    set_size(&master, tty.cols, tty.rows).map_err(failed("cannot size the terminal"))?;
    Ok((master, slave))
}

pub(crate) fn set_size(master: &OwnedFd, cols: u16, rows: u16) -> rustix::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
}

fn nonblocking(fd: OwnedFd) -> Result<OwnedFd, OpError> {
    rustix::io::ioctl_fionbio(&fd, true)
        .map_err(failed("cannot make a descriptor non-blocking"))?;
    Ok(fd)
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, OpError> {
    fd.try_clone()
        .map_err(|e| OpError::failed(format!("cannot duplicate a descriptor: {e}")))
}

/// Starts `p`; the agent's ends of its streams are non-blocking.
pub(crate) fn spawn(p: &Prepared) -> Result<Child, OpError> {
    let mut cmd = Command::new(&p.program);
    cmd.arg0(&p.argv[0])
        .args(&p.argv[1..])
        .env_clear()
        .envs(p.env.iter().map(|(k, v)| (k, v)));
    let master = match &p.tty {
        Some(tty) => {
            let (master, slave) = open_pty(tty)?;
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            Some(master)
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    let on_tty = master.is_some();
    let groups: Vec<rustix::process::Gid> = p
        .user
        .groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    let gid = rustix::process::Gid::from_raw(p.user.gid);
    let uid = rustix::process::Uid::from_raw(p.user.uid);
    let cwd = p.cwd.clone();
    let fallback = p.fallback;
    let agent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe work is allowed: it makes raw system calls on
    // data prepared before the fork and allocates nothing. Fd 0 is the
    // terminal's slave there (std sets the child's stdio before it).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            if on_tty {
                // SAFETY: fd 0 is open in the child (its stdin).
                let stdin = BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
            }
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            // Dies with the agent (set after the credentials, which clear
            // it); an agent already gone by now is checked for.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if rustix::process::getppid() != Some(agent) {
                return Err(std::io::Error::other("the agent is gone"));
            }
            if let Err(e) = rustix::process::chdir(cwd.as_c_str()) {
                if !fallback {
                    return Err(e.into());
                }
                rustix::process::chdir(c"/")?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        let name = &p.argv[0];
        match e.kind() {
            std::io::ErrorKind::NotFound => OpError::not_found(format!("{name}: {e}")),
            _ => OpError::failed(format!("cannot start {name}: {e}")),
        }
    })?;
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32)
        .ok_or_else(|| OpError::failed("the program has no process id"))?;
    match master {
        Some(master) => {
            let master = nonblocking(master)?;
            Ok(Child {
                pid,
                stdin: dup(&master)?,
                stdout: dup(&master)?,
                stderr: None,
                tty: Some(Arc::new(master)),
            })
        }
        None => {
            let (Some(i), Some(o), Some(e)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(OpError::failed("the program's pipes are missing"));
            };
            Ok(Child {
                pid,
                stdin: nonblocking(i.into())?,
                stdout: nonblocking(o.into())?,
                stderr: Some(nonblocking(e.into())?),
                tty: None,
            })
        }
    }
}

/// The processes of the session `sid` (read from `proc_dir`).
fn session_members(proc_dir: &Path, sid: Pid) -> Vec<Pid> {
    let Ok(dir) = fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // pid (comm) state ppid pgrp session ...: comm may hold anything,
        // so read the fields after its last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let session: i32 = rest.split_whitespace().nth(3)?.parse().ok()?;
        (session == sid.as_raw_nonzero().get())
            .then(|| Pid::from_raw(pid))
            .flatten()
    })
    .collect()
}

/// Notes a started program (its session: the program's pid) in
/// `Config::programs_dir`.
pub(crate) fn note(dir: Option<&Path>, leader: Pid) {
    if let Some(dir) = dir {
        let _ = fs::create_dir_all(dir);
        let _ = fs::write(dir.join(leader.as_raw_nonzero().get().to_string()), b"");
    }
}

/// Forgets a program noted by [`note`] (it was reaped).
pub(crate) fn unnote(dir: Option<&Path>, leader: Pid) {
    if let Some(dir) = dir {
        let _ = fs::remove_file(dir.join(leader.as_raw_nonzero().get().to_string()));
    }
}

/// Ends what the programs noted by an earlier agent left running: every
/// process still in one of their sessions (their leaders are gone, so
/// their numbers are only killed as sessions, never as pids). Returns the
/// sessions ended.
pub fn end_leftovers(config: &crate::Config) -> Vec<i32> {
    let Some(dir) = config.programs_dir.as_deref() else {
        return Vec::new();
    };
    let mut ended = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(sid) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        let members = session_members(&config.proc_dir, sid);
        for pid in &members {
            let _ = rustix::process::kill_process(*pid, Signal::KILL);
        }
        if !members.is_empty() {
            ended.push(sid.as_raw_nonzero().get());
        }
        let _ = fs::remove_file(e.path());
    }
    ended
}

/// SIGKILLs the program `leader` started: its process group, and every
/// process still in its session (job control may have made other groups).
/// Only call it while `leader` is not reaped, so its number is not reused.
pub(crate) fn kill_session(leader: Pid, proc_dir: &Path) {
    let _ = rustix::process::kill_process_group(leader, Signal::KILL);
    for pid in session_members(proc_dir, leader) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// Runs a helper program (`ip`, `reboot`) to its end, at most `timeout`:
/// its stderr, or why it failed.
pub(crate) fn run_helper(argv: &[&str], timeout: Duration) -> Result<(), String> {
    let shown = argv.join(" ");
    let Some((name, args)) = argv.split_first() else {
        return Err("no program".into());
    };
    let program = find_program(name, DEFAULT_PATH, Path::new("/"))
        .ok_or_else(|| format!("{shown}: {name} not found"))?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.by_ref().take(4096).read_to_string(&mut err);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{shown}: {status}: {}", err.trim()))
                };
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown}: no answer in {timeout:?}"));
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path() {
        let sh = find_program("sh", DEFAULT_PATH, Path::new("/")).expect("sh");
        assert!(sh.ends_with("sh"));
        assert_eq!(find_program("./x", "", Path::new("/")), Some("./x".into()));
        assert_eq!(
            find_program("no-such-program-here", DEFAULT_PATH, Path::new("/")),
            None
        );
        // A directory or a file that is not executable is no program.
        assert_eq!(find_program("etc", "/", Path::new("/")), None);
        assert_eq!(find_program("passwd", "/etc", Path::new("/")), None);
    }

    #[test]
    fn requests_are_checked_before_a_fork() {
        let exec = |argv: &[&str], env: &[(&str, &str)], cwd: Option<&str>| Exec {
            id: 1,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: cwd.map(Into::into),
            user: None,
            tty: None,
            timeout_ms: None,
        };
        let c = Config::default();
        let kind = |e: Exec| prepare(&c, &e).map(|_| ()).map_err(|e| e.kind);
        use fcm_proto::FailKind::*;
        assert_eq!(kind(exec(&[], &[], None)), Err(Invalid));
        assert_eq!(kind(exec(&["ec\0ho"], &[], None)), Err(Invalid));
        assert_eq!(kind(exec(&["echo"], &[("A=B", "c")], None)), Err(Invalid));
        assert_eq!(kind(exec(&["echo"], &[("A", "c\0")], None)), Err(Invalid));
        assert_eq!(
            kind(exec(&["echo"], &[], Some("/no/such/dir"))),
            Err(NotFound)
        );
        assert_eq!(
            kind(exec(&["echo"], &[], Some("/etc/passwd"))),
            Err(WrongKind)
        );
        assert_eq!(
            kind(exec(&["no-such-program-here"], &[], None)),
            Err(NotFound)
        );
        let p = prepare(
            &c,
            &exec(&["echo"], &[("PATH", "/bin"), ("X", "1")], Some("/")),
        )
        .expect("prepared");
        assert_eq!(p.program, Path::new("/bin/echo"));
        assert!(p.env.contains(&("PATH".into(), "/bin".into())));
        assert!(p.env.contains(&("X".into(), "1".into())));
        assert!(p.env.contains(&("USER".into(), "root".into())));
    }

    #[test]
    fn an_image_gives_the_defaults_and_the_request_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        fs::write(dir.path().join("group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        let c = Config {
            passwd: dir.path().join("passwd"),
            group: dir.path().join("group"),
            image: Some(fcm_proto::ImageConfig {
                env: vec!["GREETING=hi".into(), "PATH=/opt/bin:/bin".into()],
                workdir: Some("/tmp".into()),
                user: Some("app:staff".into()),
                ..Default::default()
            }),
            ..Config::default()
        };
        let mut e = Exec {
            id: 1,
            argv: vec!["sh".into()],
            env: vec![],
            cwd: None,
            user: None,
            tty: None,
            timeout_ms: None,
        };
        let p = prepare(&c, &e).expect("prepared");
        assert_eq!((p.user.name.as_str(), p.user.gid), ("app", 50));
        assert_eq!(p.cwd.to_str(), Ok("/tmp"));
        assert!(p.env.contains(&("GREETING".into(), "hi".into())));
        assert!(p.env.contains(&("PATH".into(), "/opt/bin:/bin".into())));
        assert!(p.env.contains(&("HOME".into(), "/home/app".into())));
        assert_eq!(p.program, Path::new("/bin/sh"));

        e.env = vec![("GREETING".into(), "hello".into())];
        e.cwd = Some("/".into());
        e.user = Some("root".into());
        let p = prepare(&c, &e).expect("prepared");
        assert_eq!((p.user.uid, p.cwd.to_str()), (0, Ok("/")));
        assert!(p.env.contains(&("GREETING".into(), "hello".into())));
        assert!(!p.env.contains(&("GREETING".into(), "hi".into())));
    }

    #[test]
    fn what_a_dead_agent_left_running_is_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config {
            programs_dir: Some(dir.path().join("programs")),
            ..Config::default()
        };
        // A program in a session of its own, its leader gone, a child left.
        let out = Command::new("setsid")
            .args(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $$ $!"])
            .output()
            .expect("setsid");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text
            .split_whitespace()
            .map(|n| n.parse::<i32>().expect("pid"));
        let (sid, left) = (it.next().expect("sid"), it.next().expect("pid"));
        let alive = |pid: i32| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false)
        };
        assert!(alive(left));
        note(c.programs_dir.as_deref(), Pid::from_raw(sid).expect("pid"));
        assert_eq!(end_leftovers(&c), vec![sid]);
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(left)
        });
        assert!(gone, "the leftover {left} still runs");
        assert!(end_leftovers(&c).is_empty(), "noted twice");
    }
}
