//! `Exec`: a program, its output pumped to the daemon within its credit,
//! its stdin fed from `Data`, its deadline, signals, resizes and cancel.
//!
//! One thread per program pumps its output (stdout and stderr, or the
//! terminal) and watches its exit (a pidfd) and its deadline; another feeds
//! its stdin. `Exited` is sent once the output reached its end (EOF; EIO on
//! a terminal) and the program exited; the program is reaped only then, so
//! its process group's number cannot be reused while a signal may still be
//! sent to it.
//!
//! `Signal` goes to the program's process group; on a terminal, SIGINT,
//! SIGQUIT and SIGTSTP go to the terminal's foreground process group
//! instead, as the terminal's own ^C, ^\ and ^Z would (whatever the
//! terminal's modes). `Cancel`, the deadline and the session's end SIGKILL
//! the whole session. On a terminal, `End` ends only the daemon's input
//! (the terminal stays open: a ^D in the data is the program's EOF).

use crate::lock;
use crate::op::{Ctx, Op};
use crate::process::{self, Child};
use fcm_proto::{CHUNK, Exec, FromAgent};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long output is still read after the program was killed at its
/// deadline (a process that left the session may hold it open).
const GRACE: Duration = Duration::from_secs(2);
/// How long a killed program may take to die before `Exited` is sent
/// anyway (it is reaped whenever it does).
const DEATH_WAIT: Duration = Duration::from_secs(5);
/// Without a pidfd (kernels before 5.3), how often the exit is checked.
const EXIT_TICK: Duration = Duration::from_millis(20);

/// A started program, for signals, resizes and kills from the reader.
pub(crate) struct Process {
    pub pid: Pid,
    pub tty: Option<Arc<OwnedFd>>,
    /// Reaped: its number may belong to another process now.
    pub reaped: bool,
}

/// SIGKILLs the operation's program (its session), unless reaped.
pub(crate) fn kill(op: &Op, proc_dir: &Path) {
    if let Some(p) = lock(&op.process).as_ref().filter(|p| !p.reaped) {
        process::kill_session(p.pid, proc_dir);
    }
}

pub(crate) fn signal(op: &Op, signo: i32) {
    let Some(sig) = Signal::from_named_raw(signo) else {
        log!("operation {}: no signal {signo}; ignored", op.id);
        return;
    };
    let guard = lock(&op.process);
    let Some(p) = guard.as_ref().filter(|p| !p.reaped) else {
        return;
    };
    if let Some(tty) = &p.tty
        && matches!(sig, Signal::INT | Signal::QUIT | Signal::TSTP)
        && let Ok(fg) = rustix::termios::tcgetpgrp(&**tty)
    {
        let _ = rustix::process::kill_process_group(fg, sig);
        return;
    }
    let _ = rustix::process::kill_process_group(p.pid, sig);
}

pub(crate) fn resize(op: &Op, cols: u16, rows: u16) {
    if let Some(tty) = lock(&op.process).as_ref().and_then(|p| p.tty.clone()) {
        let _ = process::set_size(&tty, cols, rows);
    }
}

pub(crate) fn run(ctx: Ctx, exec: Exec) {
    let config = &ctx.inner.config;
    let child = match process::prepare(config, &exec).and_then(|p| process::spawn(&p)) {
        Ok(c) => c,
        Err(e) => return ctx.fail(e),
    };
    let Child {
        pid,
        stdin,
        stdout,
        stderr,
        tty,
    } = child;
    *lock(&ctx.op.process) = Some(Process {
        pid,
        tty,
        reaped: false,
    });
    let started = Instant::now();
    let raw_pid = pid.as_raw_nonzero().get() as u32;
    let programs = config.programs_dir.as_deref();
    process::note(programs, pid);
    ctx.send(FromAgent::Started {
        id: ctx.id(),
        pid: raw_pid,
    });
    if ctx.op.is_stopped() {
        // Cancelled before the program was registered.
        kill(&ctx.op, &config.proc_dir);
    }
    let feeder = ctx.op.clone();
    if let Err(e) = thread::Builder::new()
        .name(format!("stdin-{}", ctx.id()))
        .spawn(move || feed(&feeder, stdin))
    {
        log!("operation {}: no stdin ({e})", ctx.id());
    }

    let deadline = exec
        .timeout_ms
        .and_then(|ms| started.checked_add(Duration::from_millis(ms)));
    let mut outs = vec![(stdout, false)];
    outs.extend(stderr.map(|e| (e, true)));
    let end = pump(&ctx, outs, pid, deadline);

    // Reap: from here on nothing may signal the number.
    let status = if end.exited {
        if let Some(p) = lock(&ctx.op.process).as_mut() {
            p.reaped = true;
        }
        rustix::process::waitpid(Some(pid), WaitOptions::empty())
            .ok()
            .flatten()
            .map(|(_, s)| (s.exit_status(), s.terminating_signal()))
    } else {
        None
    };
    let (code, signal) = status.unwrap_or((None, Some(Signal::KILL.as_raw())));
    if end.exited {
        process::unnote(programs, pid);
    }
    ctx.finish(FromAgent::Exited {
        id: ctx.id(),
        code,
        signal,
        timed_out: end.timed_out,
    });
    ctx.op.stop();
    if !end.exited {
        // Killed but not dead yet (stuck in the kernel): reap it whenever
        // it dies.
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        if let Some(p) = lock(&ctx.op.process).as_mut() {
            p.reaped = true;
        }
        process::unnote(programs, pid);
    }
}

struct Ending {
    /// The program exited (it is a zombie, not reaped yet).
    exited: bool,
    timed_out: bool,
}

/// Whether `pid` has exited, without reaping it.
fn has_exited(pid: Pid, pidfd: Option<&OwnedFd>) -> bool {
    let id = match pidfd {
        Some(fd) => WaitId::PidFd(fd.as_fd()),
        None => WaitId::Pid(pid),
    };
    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
    matches!(
        rustix::process::waitid(id, opts),
        Ok(Some(_)) | Err(Errno::CHILD)
    )
}

fn earliest(times: &[Option<Instant>]) -> Option<Instant> {
    times.iter().flatten().min().copied()
}

/// Sends the program's output within the credit until it ends, and waits
/// for its exit; kills it at its deadline or when the operation stops.
fn pump(ctx: &Ctx, mut outs: Vec<(OwnedFd, bool)>, pid: Pid, deadline: Option<Instant>) -> Ending {
    let op = &ctx.op;
    let proc_dir = &ctx.inner.config.proc_dir;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok();
    let mut exited = false;
    let mut timed_out = false;
    let mut killed_at: Option<Instant> = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let now = Instant::now();
        if op.is_stopped() {
            // Cancelled: the output is nobody's any more.
            outs.clear();
            if killed_at.is_none() {
                process::kill_session(pid, proc_dir);
                killed_at = Some(now);
            }
        } else if killed_at.is_none() && deadline.is_some_and(|d| now >= d) {
            process::kill_session(pid, proc_dir);
            timed_out = true;
            killed_at = Some(now);
        }
        if killed_at.is_some_and(|k| now >= k + GRACE) {
            outs.clear();
        }
        if !exited && (pidfd.is_none() || outs.is_empty()) {
            exited = has_exited(pid, pidfd.as_ref());
        }
        if outs.is_empty() && (exited || killed_at.is_some_and(|k| now >= k + DEATH_WAIT)) {
            return Ending { exited, timed_out };
        }

        let wake = earliest(&[
            deadline.filter(|_| killed_at.is_none()),
            killed_at.map(|k| k + if outs.is_empty() { DEATH_WAIT } else { GRACE }),
            (pidfd.is_none() && !exited).then(|| now + EXIT_TICK),
        ]);
        if !outs.is_empty() && !op.credit.wait(wake) {
            continue; // out of credit until a deadline, or stopped
        }

        let mut fds: Vec<PollFd<'_>> = outs
            .iter()
            .map(|(fd, _)| PollFd::new(fd, PollFlags::IN))
            .collect();
        if let Some(fd) = pidfd.as_ref().filter(|_| !exited) {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        if let Some(fd) = op.stop_fd.as_ref().filter(|_| killed_at.is_none()) {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let timeout = wake.map(|w| {
            let left = w.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                log!("operation {}: poll: {e}", op.id);
                thread::sleep(EXIT_TICK);
            }
        }
        let ready: Vec<bool> = fds[..outs.len()]
            .iter()
            .map(|p| !p.revents().is_empty())
            .collect();
        let pid_ready = pidfd.is_some()
            && !exited
            && fds.get(outs.len()).is_some_and(|p| !p.revents().is_empty());
        drop(fds);
        if pid_ready {
            exited = has_exited(pid, pidfd.as_ref());
        }

        let mut closed = Vec::new();
        for (i, (fd, is_err)) in outs.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            let credit = op.credit.try_take(CHUNK);
            if credit == 0 {
                break;
            }
            match rustix::io::read(fd, &mut buf[..credit]) {
                Ok(0) => {
                    op.credit.give_back(credit);
                    closed.push(i);
                }
                Ok(n) => {
                    op.credit.give_back(credit - n);
                    let data = buf[..n].to_vec();
                    let id = op.id;
                    ctx.send(if *is_err {
                        FromAgent::Stderr { id, data }
                    } else {
                        FromAgent::Stdout { id, data }
                    });
                }
                Err(Errno::AGAIN | Errno::INTR) => op.credit.give_back(credit),
                Err(_) => {
                    // EIO: a terminal's end (no slave open any more).
                    op.credit.give_back(credit);
                    closed.push(i);
                }
            }
        }
        for i in closed.into_iter().rev() {
            outs.remove(i);
        }
    }
}

/// Writes the `Data` sent for the program's stdin, returning `Credit` for
/// each chunk written (or dropped, once the program stopped reading).
fn feed(op: &Op, stdin: OwnedFd) {
    let mut broken = false;
    loop {
        match op.inbox.pop() {
            crate::flow::Popped::Data(chunk) => {
                if !broken && write_all(op, &stdin, &chunk).is_err() {
                    broken = true;
                }
                let bytes = chunk.len() as u32;
                if bytes > 0 {
                    op.send(&FromAgent::Credit { id: op.id, bytes });
                }
            }
            crate::flow::Popped::End | crate::flow::Popped::Stopped => return,
        }
    }
}

fn write_all(op: &Op, fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        let mut fds = vec![PollFd::new(fd, PollFlags::OUT)];
        if let Some(stop) = &op.stop_fd {
            fds.push(PollFd::new(stop, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        if op.is_stopped() {
            return Err(Errno::CANCELED);
        }
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
