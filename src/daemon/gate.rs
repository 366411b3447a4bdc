//! Slots of authenticated connections, shared by the HTTP API and the
//! terminal stream. Connections that have not shown the token are not
//! counted here: they wait in the port's poller (`daemon/poller`), which
//! has its own large budget and costs them no thread. Once a connection has
//! shown the token it takes one slot here, so strangers never take the
//! slots of users:
//! - `authed`: requests being read, queued or served (HTTP), or attached
//!   consoles (stream);
//! - `streams`: long-lived HTTP streams (exec, file transfers), apart from
//!   `authed` so that they never starve short requests;
//! - `kept`: idle kept-alive HTTP connections waiting in the poller for
//!   their next request.

use std::sync::{Arc, Mutex};

use super::lock;

#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub authed: usize,
    pub streams: usize,
    /// Idle kept-alive connections (HTTP); 0: no keep-alive.
    pub kept: usize,
}

#[derive(Default)]
struct State {
    authed: usize,
    streams: usize,
    kept: usize,
}

pub struct Gate {
    limits: GateLimits,
    state: Mutex<State>,
}

/// Why an authenticated connection was not let in: every slot is taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl Busy {
    pub fn message(&self) -> &'static str {
        "too many connections at once"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Authed,
    Stream,
    Kept,
}

/// A slot (a request, a stream, a console or a kept-alive connection);
/// released when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    kind: Kind,
}

/// What a gate holds, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub authed: usize,
    pub streams: usize,
    pub kept: usize,
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    pub fn counts(&self) -> Counts {
        let s = lock(&self.state);
        Counts {
            authed: s.authed,
            streams: s.streams,
            kept: s.kept,
        }
    }

    fn take(self: &Arc<Self>, kind: Kind) -> Result<Slot, Busy> {
        let mut s = lock(&self.state);
        let (held, limit) = match kind {
            Kind::Authed => (&mut s.authed, self.limits.authed),
            Kind::Stream => (&mut s.streams, self.limits.streams),
            Kind::Kept => (&mut s.kept, self.limits.kept),
        };
        if *held >= limit {
            return Err(Busy);
        }
        *held += 1;
        Ok(Slot {
            gate: Arc::clone(self),
            kind,
        })
    }

    /// The token was right: a slot for a request (or a console).
    pub fn authenticated(self: &Arc<Self>) -> Result<Slot, Busy> {
        self.take(Kind::Authed)
    }

    /// The token was right and the request is a long-lived stream: a slot
    /// from the streams' own budget.
    pub fn streaming(self: &Arc<Self>) -> Result<Slot, Busy> {
        self.take(Kind::Stream)
    }

    /// A slot for a request that needs no token (`GET /health`), counted
    /// with the authenticated ones.
    pub fn open(self: &Arc<Self>) -> Result<Slot, Busy> {
        self.take(Kind::Authed)
    }

    /// A slot for an answered connection to wait, idle, for its next
    /// request; `None` when they are all taken (the answer then says
    /// `Connection: close`).
    pub fn keep_alive(self: &Arc<Self>) -> Option<Slot> {
        self.take(Kind::Kept).ok()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = lock(&self.gate.state);
        let held = match self.kind {
            Kind::Authed => &mut s.authed,
            Kind::Stream => &mut s.streams,
            Kind::Kept => &mut s.kept,
        };
        *held = held.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_budget_and_slots_come_back() {
        let g = Gate::new(GateLimits {
            authed: 1,
            streams: 1,
            kept: 1,
        });
        let a = g.authenticated().expect("authed");
        assert_eq!(g.authenticated().err(), Some(Busy));
        assert_eq!(g.open().err(), Some(Busy));
        // Streams have their own budget: one goes in while requests are full.
        let s = g.streaming().expect("stream");
        assert_eq!(g.streaming().err(), Some(Busy));
        let k = g.keep_alive().expect("kept");
        assert!(g.keep_alive().is_none());
        assert_eq!(
            g.counts(),
            Counts {
                authed: 1,
                streams: 1,
                kept: 1
            }
        );
        drop((a, s, k));
        assert_eq!(
            g.counts(),
            Counts {
                authed: 0,
                streams: 0,
                kept: 0
            }
        );
        assert!(g.open().is_ok());
    }
}
