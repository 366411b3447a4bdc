//! Operations over an agent connection: their start and events, output
//! read (and credited back to the agent as its consumer takes it), input
//! sent while the agent's credit lasts; reads and writes of files and
//! trees, and the one-answer requests. Programs are in `program.rs`.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fcm_proto::{self as proto, Done, FailKind, Failure, FromAgent, Id, ToAgent};

use super::super::{Download, GuestError, TRANSFER_MAX};
use super::conn::{Conn, SendWindow};
use crate::daemon::lock;

/// How long the first answer to an operation may take.
pub const FIRST_ANSWER: Duration = Duration::from_secs(15);

pub(super) fn unreachable(conn: &Conn, detail: String) -> GuestError {
    GuestError::Unreachable {
        vm: conn.vm.clone(),
        transport: "fcm-agent",
        detail,
    }
}

/// The agent's failure as the seam's error.
pub(super) fn guest_failure(
    conn: &Conn,
    action: &'static str,
    what: &'static str,
    path: &str,
    f: Failure,
) -> GuestError {
    let vm = conn.vm.clone();
    let path = path.to_owned();
    let message = crate::wire::text::printable(&f.message);
    match f.kind {
        FailKind::NotFound => GuestError::NotFound { vm, what, path },
        FailKind::WrongKind => GuestError::Refused {
            vm,
            path,
            problem: message,
        },
        FailKind::TooLarge => GuestError::TooLarge {
            what: "the file",
            max: TRANSFER_MAX,
        },
        FailKind::Invalid => GuestError::BadRequest(message),
        FailKind::Failed | FailKind::Unsupported => GuestError::Failed {
            vm,
            action,
            path,
            detail: message,
        },
    }
}

/// Ends an operation on the daemon's side: unregistered, and cancelled
/// in the agent unless it ended there.
pub(super) struct OpGuard {
    pub conn: Arc<Conn>,
    pub id: Id,
    pub done: AtomicBool,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Acquire) {
            let _ = self.conn.send(&ToAgent::Cancel { id: self.id });
        }
        self.conn.unregister(self.id);
    }
}

/// Registers an operation and sends its first message.
pub(super) fn start(
    conn: &Arc<Conn>,
    streams: bool,
    msg: impl FnOnce(Id) -> ToAgent,
) -> Result<(Id, super::conn::Channels, Arc<OpGuard>), GuestError> {
    let (id, ch) = conn
        .register(streams)
        .map_err(|e| unreachable(conn, e.to_string()))?;
    let guard = Arc::new(OpGuard {
        conn: Arc::clone(conn),
        id,
        done: AtomicBool::new(false),
    });
    conn.send(&msg(id))
        .map_err(|e| unreachable(conn, e.to_string()))?;
    Ok((id, ch, guard))
}

/// An answer out of turn: the agent broke the protocol, and its
/// connection is ended.
pub(super) fn out_of_turn(conn: &Conn, what: &str, other: &FromAgent) -> GuestError {
    conn.fail(&format!("the agent answered {what} out of turn"));
    unreachable(conn, format!("the agent broke the protocol ({other:?})"))
}

/// Waits for an operation's next event, seeing a broken connection.
pub(super) fn next_event(
    conn: &Conn,
    events: &Receiver<FromAgent>,
    until: Option<Instant>,
) -> Result<FromAgent, GuestError> {
    loop {
        let step = match until {
            Some(u) => {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(unreachable(conn, "no answer in time".into()));
                }
                left.min(Duration::from_millis(500))
            }
            None => Duration::from_millis(500),
        };
        match events.recv_timeout(step) {
            Ok(m) => return Ok(m),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(why) = conn.broken() {
                    return Err(unreachable(conn, why));
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(unreachable(
                    conn,
                    conn.broken()
                        .unwrap_or_else(|| "the operation was dropped".into()),
                ));
            }
        }
    }
}

/// An operation's output (a program's stdout or stderr, a read's bytes),
/// credited back as it is read.
pub(super) struct OpReader {
    pub(super) rx: Receiver<Vec<u8>>,
    pub(super) cur: Vec<u8>,
    pub(super) pos: usize,
    pub(super) conn: Arc<Conn>,
    pub(super) id: Id,
    pub(super) outstanding: Arc<AtomicU64>,
    /// For a read: its events, to tell its `End` from a failure.
    pub(super) events: Option<Receiver<FromAgent>>,
    /// A read's deadline.
    pub(super) until: Option<Instant>,
    pub(super) guard: Arc<OpGuard>,
}

impl OpReader {
    fn credit(&mut self) {
        let n = self.cur.len();
        if n == 0 {
            return;
        }
        self.outstanding.fetch_sub(n as u64, Ordering::AcqRel);
        let _ = self.conn.send(&ToAgent::Credit {
            id: self.id,
            bytes: n as u32,
        });
        self.cur.clear();
        self.pos = 0;
    }

    /// At the end of the bytes: a read's last event says how it ended.
    fn end(&mut self) -> io::Result<usize> {
        if let Some(why) = self.conn.broken() {
            return Err(io::Error::other(format!(
                "the agent's connection broke: {why}"
            )));
        }
        let Some(events) = self.events.take() else {
            return Ok(0);
        };
        match next_event(
            &self.conn,
            &events,
            Some(Instant::now() + Duration::from_secs(10)),
        ) {
            Ok(FromAgent::End { .. }) => {
                self.guard.done.store(true, Ordering::Release);
                Ok(0)
            }
            Ok(FromAgent::Failed { failure, .. }) => {
                self.guard.done.store(true, Ordering::Release);
                Err(io::Error::other(crate::wire::text::printable(
                    &failure.message,
                )))
            }
            Ok(other) => Err(io::Error::other(format!(
                "the agent broke the protocol ({other:?} in a read)"
            ))),
            Err(e) => Err(io::Error::other(crate::error::chain(&e))),
        }
    }
}

impl Read for OpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.cur.len() {
            self.credit();
            let got = match self.until {
                Some(u) => {
                    let left = u.saturating_duration_since(Instant::now());
                    self.rx.recv_timeout(left).map_err(|e| match e {
                        RecvTimeoutError::Timeout => Some(()),
                        RecvTimeoutError::Disconnected => None,
                    })
                }
                None => self.rx.recv().map_err(|_| None),
            };
            match got {
                Ok(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Err(Some(())) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the transfer did not end in time",
                    ));
                }
                Err(None) => return self.end(),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Bytes for an operation (stdin, an upload), sent while the agent's
/// credit lasts; dropping it ends them (`End`).
pub(super) struct OpWriter {
    pub(super) conn: Arc<Conn>,
    pub(super) id: Id,
    pub(super) window: Arc<SendWindow>,
    pub(super) ended: bool,
    pub(super) _guard: Arc<OpGuard>,
}

impl OpWriter {
    fn end(&mut self) -> io::Result<()> {
        if !self.ended {
            self.ended = true;
            self.conn.send(&ToAgent::End { id: self.id })?;
        }
        Ok(())
    }
}

impl Write for OpWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(proto::CHUNK) as u64;
        let n = self.window.take(want, &self.conn)? as usize;
        self.conn.send(&ToAgent::Data {
            id: self.id,
            data: buf[..n].to_vec(),
        })?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for OpWriter {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// A read: `ReadFile` or `ReadTree`, then its `Opened`.
pub(super) fn read(
    conn: &Arc<Conn>,
    msg: impl FnOnce(Id) -> ToAgent,
    what: &'static str,
    path: &str,
    timeout: Duration,
) -> Result<Download, GuestError> {
    let (id, ch, guard) = start(conn, true, msg)?;
    let length = match next_event(conn, &ch.events, Some(Instant::now() + FIRST_ANSWER))? {
        FromAgent::Opened { size, .. } => size,
        FromAgent::Failed { failure, .. } => {
            guard.done.store(true, Ordering::Release);
            return Err(guest_failure(conn, "reading", what, path, failure));
        }
        other => return Err(out_of_turn(conn, "a read", &other)),
    };
    if length.is_some_and(|l| l > TRANSFER_MAX) {
        return Err(GuestError::TooLarge {
            what: "the file",
            max: TRANSFER_MAX,
        });
    }
    let body = OpReader {
        rx: ch.out,
        cur: Vec::new(),
        pos: 0,
        conn: Arc::clone(conn),
        id,
        outstanding: ch.outstanding,
        events: Some(ch.events),
        until: Some(Instant::now() + timeout),
        guard,
    };
    let limit = length.unwrap_or(TRANSFER_MAX);
    Ok(Download {
        length,
        body: Box::new(body.take(limit)),
    })
}

/// A write: `WriteFile` or `WriteTree`, the body as `Data` while the
/// agent's credit lasts, `End`, then `Done(Written)`.
pub(super) fn write(
    conn: &Arc<Conn>,
    msg: impl FnOnce(Id) -> ToAgent,
    what: &'static str,
    path: &str,
    body: &mut dyn Read,
) -> Result<u64, GuestError> {
    let (id, ch, guard) = start(conn, false, msg)?;
    let mut w = OpWriter {
        conn: Arc::clone(conn),
        id,
        window: Arc::clone(&ch.window),
        ended: false,
        _guard: Arc::clone(&guard),
    };
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; proto::CHUNK];
    let early = Mutex::new(None);
    loop {
        // The agent may have refused already (a missing directory…).
        if let Ok(ev) = ch.events.try_recv() {
            *lock(&early) = Some(ev);
            break;
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(GuestError::BadRequest(format!(
                    "could not read the request body: {e}"
                )));
            }
        };
        sent += n as u64;
        if sent > TRANSFER_MAX {
            return Err(GuestError::TooLarge {
                what: "the upload",
                max: TRANSFER_MAX,
            });
        }
        w.write_all(&buf[..n])
            .map_err(|e| unreachable(conn, e.to_string()))?;
    }
    let early = lock(&early).take();
    let answer = match early {
        Some(ev) => ev,
        None => {
            w.end().map_err(|e| unreachable(conn, e.to_string()))?;
            next_event(
                conn,
                &ch.events,
                Some(Instant::now() + Duration::from_secs(120)),
            )?
        }
    };
    match answer {
        FromAgent::Done {
            done: Done::Written { bytes },
            ..
        } => {
            guard.done.store(true, Ordering::Release);
            Ok(bytes)
        }
        FromAgent::Failed { failure, .. } => {
            guard.done.store(true, Ordering::Release);
            // Read what the client still sends, so that it gets to read
            // the answer instead of a reset connection.
            let left = (TRANSFER_MAX + 1).saturating_sub(sent);
            let _ = io::copy(&mut body.take(left), &mut io::sink());
            Err(guest_failure(conn, "writing", what, path, failure))
        }
        other => Err(out_of_turn(conn, "a write", &other)),
    }
}

/// A request with one answer (`Done` or `Failed`) within `timeout`.
pub(super) fn call(
    conn: &Arc<Conn>,
    msg: impl FnOnce(Id) -> ToAgent,
    action: &'static str,
    timeout: Duration,
) -> Result<Done, GuestError> {
    let (_, ch, guard) = start(conn, false, msg)?;
    let answer = next_event(conn, &ch.events, Some(Instant::now() + timeout))?;
    guard.done.store(true, Ordering::Release);
    match answer {
        FromAgent::Done { done, .. } => Ok(done),
        FromAgent::Failed { failure, .. } => Err(GuestError::Failed {
            vm: conn.vm.clone(),
            action,
            path: "the guest".into(),
            detail: crate::wire::text::printable(&failure.message),
        }),
        other => Err(out_of_turn(conn, "a request", &other)),
    }
}
