//! A program in the guest through its agent: the seam's `Process` (its
//! streams, controls and exit) over one operation.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use fcm_proto::{self as proto, FailKind, FromAgent, Id, ToAgent};

use super::super::{Control, Exit, GuestError, Process};
use super::conn::Conn;
use super::ops::{FIRST_ANSWER, OpGuard, OpReader, OpWriter, next_event, out_of_turn, start};

/// Exit status of a program killed at its deadline (as timeout(1) uses).
const TIMED_OUT: i32 = 124;

/// A program's controls: terminal size, signals, kill.
struct AgentControl {
    conn: Arc<Conn>,
    id: Id,
}

impl Control for AgentControl {
    fn resize(&self, cols: u16, rows: u16) {
        let _ = self.conn.send(&ToAgent::Resize {
            id: self.id,
            cols,
            rows,
        });
    }

    fn signal(&self, signal: i32) {
        let _ = self.conn.send(&ToAgent::Signal {
            id: self.id,
            signal,
        });
    }

    fn kill(&self) {
        let _ = self.conn.send(&ToAgent::Cancel { id: self.id });
    }
}

/// A running program in the guest.
pub(super) struct AgentProcess {
    guard: Arc<OpGuard>,
    events: Receiver<FromAgent>,
    stdin: Option<OpWriter>,
    stdout: Option<OpReader>,
    stderr: Option<OpReader>,
    /// The daemon's own bound on the wait: the program's deadline and a
    /// grace period (the agent enforces the deadline itself).
    until: Option<Instant>,
}

/// A program that could not start: its reason on stderr, 127 or 126.
struct NotStarted {
    stderr: Option<Vec<u8>>,
    code: i32,
}

struct Nothing;

impl Control for Nothing {
    fn resize(&self, _cols: u16, _rows: u16) {}
    fn signal(&self, _signal: i32) {}
    fn kill(&self) {}
}

impl Process for NotStarted {
    fn stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        Some(Box::new(io::sink()))
    }
    fn stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        Some(Box::new(io::empty()))
    }
    fn stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stderr
            .take()
            .map(|e| Box::new(io::Cursor::new(e)) as Box<dyn Read + Send>)
    }
    fn control(&self) -> Arc<dyn Control> {
        Arc::new(Nothing)
    }
    fn wait(self: Box<Self>) -> Result<Exit, GuestError> {
        Ok(Exit {
            code: self.code,
            timed_out: false,
        })
    }
}

/// Starts a program: `Exec`, then its `Started` (or why not).
pub(super) fn exec(
    conn: &Arc<Conn>,
    spec: &super::super::ExecSpec,
) -> Result<Box<dyn Process>, GuestError> {
    let tty = spec.tty.as_ref().map(|t| proto::Tty {
        cols: t.cols,
        rows: t.rows,
        term: t.term.clone(),
    });
    let (id, ch, guard) = start(conn, true, |id| {
        ToAgent::Exec(proto::Exec {
            id,
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            tty,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
        })
    })?;
    match next_event(conn, &ch.events, Some(Instant::now() + FIRST_ANSWER))? {
        FromAgent::Started { .. } => {}
        FromAgent::Failed { failure, .. } => {
            guard.done.store(true, Ordering::Release);
            let code = if failure.kind == FailKind::NotFound {
                127
            } else {
                126
            };
            let msg = crate::wire::text::printable(&failure.message);
            return Ok(Box::new(NotStarted {
                stderr: Some(format!("fcm-agent: {msg}\n").into_bytes()),
                code,
            }));
        }
        other => return Err(out_of_turn(conn, "an exec", &other)),
    }
    let reader = |rx| OpReader {
        rx,
        cur: Vec::new(),
        pos: 0,
        conn: Arc::clone(conn),
        id,
        outstanding: Arc::clone(&ch.outstanding),
        events: None,
        until: None,
        guard: Arc::clone(&guard),
    };
    let stdout = Some(reader(ch.out));
    let stderr = spec.tty.is_none().then(|| reader(ch.err));
    Ok(Box::new(AgentProcess {
        stdin: Some(OpWriter {
            conn: Arc::clone(conn),
            id,
            window: Arc::clone(&ch.window),
            ended: false,
            _guard: Arc::clone(&guard),
        }),
        stdout,
        stderr,
        events: ch.events,
        until: spec
            .timeout
            .map(|t| Instant::now() + t + Duration::from_secs(30)),
        guard,
    }))
}

impl Process for AgentProcess {
    fn stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        self.stdin
            .take()
            .map(|w| Box::new(w) as Box<dyn Write + Send>)
    }

    fn stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>)
    }

    fn stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>)
    }

    fn control(&self) -> Arc<dyn Control> {
        Arc::new(AgentControl {
            conn: Arc::clone(&self.guard.conn),
            id: self.guard.id,
        })
    }

    fn wait(mut self: Box<Self>) -> Result<Exit, GuestError> {
        // Not sent stdin ends now.
        self.stdin = None;
        let conn = Arc::clone(&self.guard.conn);
        loop {
            let ev = match next_event(&conn, &self.events, self.until) {
                Ok(ev) => ev,
                Err(e) => {
                    let _ = conn.send(&ToAgent::Cancel { id: self.guard.id });
                    return Err(e);
                }
            };
            match ev {
                FromAgent::Exited {
                    code,
                    signal,
                    timed_out,
                    ..
                } => {
                    self.guard.done.store(true, Ordering::Release);
                    if timed_out {
                        return Ok(Exit {
                            code: TIMED_OUT,
                            timed_out: true,
                        });
                    }
                    return Ok(Exit {
                        code: code.unwrap_or_else(|| 128 + signal.unwrap_or(0)),
                        timed_out: false,
                    });
                }
                FromAgent::Failed { failure, .. } => {
                    self.guard.done.store(true, Ordering::Release);
                    return Err(GuestError::Failed {
                        vm: conn.vm.clone(),
                        action: "running",
                        path: "a program".into(),
                        detail: crate::wire::text::printable(&failure.message),
                    });
                }
                _ => {}
            }
        }
    }
}
