//! Flow control, per operation and direction (`docs/agent.md`, "Flow
//! control"): the [`Credit`] the agent's output may use (a window the
//! daemon refills with `Credit`), and the bounded [`Inbox`] of the bytes
//! the daemon sends (stdin, a file or tar being written), whose consumer
//! returns `Credit` as it writes them on.

use crate::lock;
use fcm_proto::WINDOW;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// Bytes of output an operation may still send.
#[derive(Debug)]
pub(crate) struct Credit {
    state: Mutex<CreditState>,
    changed: Condvar,
}

#[derive(Debug)]
struct CreditState {
    available: u64,
    stopped: bool,
}

impl Credit {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(CreditState {
                available: u64::from(WINDOW),
                stopped: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// The daemon took `bytes` of the output.
    pub fn grant(&self, bytes: u32) {
        let mut s = lock(&self.state);
        s.available = s.available.saturating_add(u64::from(bytes));
        self.changed.notify_all();
    }

    /// Wakes every waiter for good: the operation is over.
    pub fn stop(&self) {
        lock(&self.state).stopped = true;
        self.changed.notify_all();
    }

    /// Takes up to `max` bytes of credit, waiting until there is some;
    /// `None` once the operation is stopped.
    pub fn take(&self, max: usize) -> Option<usize> {
        let mut s = lock(&self.state);
        loop {
            if s.stopped {
                return None;
            }
            if s.available > 0 {
                let n = s.available.min(max as u64);
                s.available -= n;
                return Some(n as usize);
            }
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Takes up to `max` bytes of credit without waiting (maybe 0).
    pub fn try_take(&self, max: usize) -> usize {
        let mut s = lock(&self.state);
        let n = s.available.min(max as u64);
        s.available -= n;
        n as usize
    }

    /// Returns credit taken but not used.
    pub fn give_back(&self, n: usize) {
        if n > 0 {
            let mut s = lock(&self.state);
            s.available = s.available.saturating_add(n as u64);
        }
    }

    /// Waits until there is credit, the operation stops, or `deadline`;
    /// true when there is credit.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut s = lock(&self.state);
        while s.available == 0 && !s.stopped {
            match deadline {
                None => s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let Some(left) = d.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    s = self
                        .changed
                        .wait_timeout(s, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        s.available > 0
    }
}

/// What [`Inbox::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Popped {
    Data(Vec<u8>),
    /// The daemon sent `End`: no more data.
    End,
    /// The operation was cancelled or its session ended.
    Stopped,
}

/// Why [`Inbox::push`] refused bytes: the daemon broke the protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// More than a window unacknowledged.
    BeyondWindow,
    /// Data after `End`.
    AfterEnd,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Self::BeyondWindow => "the daemon sent data beyond its window",
            Self::AfterEnd => "the daemon sent data after its End",
        }
    }
}

/// The bytes the daemon sent an operation and its consumer has not taken
/// yet: at most one window.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct InboxState {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    ended: bool,
    stopped: bool,
}

impl Inbox {
    pub fn push(&self, data: Vec<u8>) -> Result<(), Refused> {
        let mut s = lock(&self.state);
        if s.stopped {
            return Ok(());
        }
        if s.ended {
            return Err(Refused::AfterEnd);
        }
        if s.bytes + data.len() > WINDOW as usize {
            return Err(Refused::BeyondWindow);
        }
        s.bytes += data.len();
        s.chunks.push_back(data);
        self.changed.notify_all();
        Ok(())
    }

    pub fn end(&self) {
        lock(&self.state).ended = true;
        self.changed.notify_all();
    }

    /// Drops what is held and wakes the consumer for good.
    pub fn stop(&self) {
        let mut s = lock(&self.state);
        s.stopped = true;
        s.chunks.clear();
        s.bytes = 0;
        self.changed.notify_all();
    }

    /// The next chunk, waiting for it (or for the end, or a stop).
    pub fn pop(&self) -> Popped {
        let mut s = lock(&self.state);
        loop {
            if s.stopped {
                return Popped::Stopped;
            }
            if let Some(chunk) = s.chunks.pop_front() {
                s.bytes -= chunk.len();
                return Popped::Data(chunk);
            }
            if s.ended {
                return Popped::End;
            }
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn credit_is_a_window_refilled_by_grants() {
        let c = Credit::new();
        assert_eq!(c.try_take(usize::MAX), WINDOW as usize);
        assert_eq!(c.try_take(10), 0);
        assert!(!c.wait(Some(Instant::now() + Duration::from_millis(20))));
        c.grant(5);
        assert!(c.wait(None));
        assert_eq!(c.take(10), Some(5));
        c.give_back(3);
        assert_eq!(c.try_take(10), 3);
        // A waiter wakes at a grant and at a stop.
        let c = Arc::new(c);
        let t = {
            let c = c.clone();
            std::thread::spawn(move || (c.take(100), c.take(100)))
        };
        std::thread::sleep(Duration::from_millis(20));
        c.grant(7);
        std::thread::sleep(Duration::from_millis(20));
        c.stop();
        assert_eq!(t.join().expect("join"), (Some(7), None));
    }

    #[test]
    fn an_inbox_holds_one_window_and_ends() {
        let i = Inbox::default();
        i.push(vec![1; WINDOW as usize - 1]).expect("fits");
        assert_eq!(i.push(vec![2; 2]), Err(Refused::BeyondWindow));
        i.push(vec![3]).expect("fits exactly");
        assert_eq!(i.pop(), Popped::Data(vec![1; WINDOW as usize - 1]));
        i.end();
        assert_eq!(i.push(vec![4]), Err(Refused::AfterEnd));
        assert_eq!(i.pop(), Popped::Data(vec![3]));
        assert_eq!(i.pop(), Popped::End);
        i.stop();
        assert_eq!(i.pop(), Popped::Stopped);
        assert_eq!(i.push(vec![5]), Ok(()));
    }
}
