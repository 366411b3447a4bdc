//! One operation: its id, the credit its output may use, the inbox of the
//! bytes sent to it, how it is stopped, the program it runs, and the rule
//! that it ends with exactly one final message (`Exited`, `Done`, `Failed`,
//! or `End` for a read) after which nothing more is sent about it.

use crate::error::OpError;
use crate::exec::{self, Process};
use crate::flow::{Credit, Inbox};
use crate::lock;
use crate::outbox::{Outbox, SendError};
use crate::session::{Inner, Session};
use fcm_proto::{Done, FailKind, FromAgent, Id};
use rustix::event::{EventfdFlags, eventfd};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What an operation is, for routing the daemon's messages about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// A program: stdin data, signals, resizes.
    Exec,
    /// Data flows to it (a file or a tree written).
    Write,
    /// Everything else (reads, system operations).
    Other,
}

pub(crate) struct Op {
    pub id: Id,
    pub kind: OpKind,
    /// Output the agent may still send.
    pub credit: Credit,
    /// Data from the daemon, for `Exec` and `Write`.
    pub inbox: Inbox,
    /// The program, once started.
    pub process: Mutex<Option<Process>>,
    /// Readable once stopped (for a program's `poll`).
    pub stop_fd: Option<OwnedFd>,
    stopped: AtomicBool,
    /// True once the final message was sent; held while sending, so
    /// nothing follows it.
    ended: Mutex<bool>,
    outbox: Outbox,
}

impl Op {
    pub fn new(id: Id, kind: OpKind, outbox: Outbox) -> Result<Op, OpError> {
        let stop_fd = match kind {
            OpKind::Exec => Some(
                eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                    .map_err(|e| OpError::failed(format!("cannot make an eventfd: {e}")))?,
            ),
            _ => None,
        };
        Ok(Op {
            id,
            kind,
            credit: Credit::new(),
            inbox: Inbox::default(),
            process: Mutex::new(None),
            stop_fd,
            stopped: AtomicBool::new(false),
            ended: Mutex::new(false),
            outbox,
        })
    }

    /// Sends a message about the operation, unless it has ended; false
    /// when it was not sent.
    pub fn send(&self, msg: &FromAgent) -> bool {
        let ended = lock(&self.ended);
        !*ended && self.outbox.send(msg).is_ok()
    }

    /// Sends the operation's final message (only the first call does).
    pub fn finish(&self, msg: &FromAgent) {
        let mut ended = lock(&self.ended);
        if *ended {
            return;
        }
        *ended = true;
        if let Err(SendError::TooLarge) = self.outbox.send(msg) {
            let _ = self.outbox.send(&FromAgent::Failed {
                id: self.id,
                failure: OpError::new(FailKind::TooLarge, "the answer does not fit in a frame")
                    .into(),
            });
        }
    }

    /// Waits (at most `timeout`) until what the operation sent is written.
    pub fn outbox_flush(&self, timeout: std::time::Duration) -> bool {
        self.outbox.flush(timeout)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops whatever the operation's threads wait on, for good.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.credit.stop();
        self.inbox.stop();
        if let Some(fd) = &self.stop_fd {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// `Cancel`, or the end of its session: stopped, its program killed.
    pub fn cancel(&self, proc_dir: &Path) {
        self.stop();
        exec::kill(self, proc_dir);
    }
}

/// What an operation's thread holds: the agent, its session, itself.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub inner: Arc<Inner>,
    pub op: Arc<Op>,
    pub session: Arc<Session>,
}

impl Ctx {
    pub fn id(&self) -> Id {
        self.op.id
    }

    pub fn send(&self, msg: FromAgent) -> bool {
        self.op.send(&msg)
    }

    /// The final message; the id is free again afterwards.
    pub fn finish(&self, msg: FromAgent) {
        self.op.finish(&msg);
        self.session.remove(&self.op);
    }

    pub fn fail(&self, e: OpError) {
        self.finish(FromAgent::Failed {
            id: self.id(),
            failure: e.into(),
        });
    }

    pub fn done(&self, done: Done) {
        self.finish(FromAgent::Done {
            id: self.id(),
            done,
        });
    }

    pub fn answer(&self, result: Result<Done, OpError>) {
        match result {
            Ok(done) => self.done(done),
            Err(e) => self.fail(e),
        }
    }
}
