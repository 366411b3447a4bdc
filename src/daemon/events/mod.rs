//! What happens to VMs, as it happens: every state change, every
//! operation's begin and end, VMs created and destroyed. The manager
//! records them here (its one record write, its operations' one wrapper);
//! `GET /events` streams them (NDJSON) and `GET /metrics` counts them.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the [`Hub`]: a bounded broadcast to a fixed number of subscribers |
//! | `ops.rs` | operation counts by kind and result, latency histograms |
//!
//! The producer never blocks: each subscriber has a queue of
//! [`QUEUE`] events; one that falls behind loses the newest it has no
//! room for and is told once how many (`{"type":"lagged","missed":N}`)
//! before the next event it gets. At most [`SUBSCRIBERS`] at once.

pub mod ops;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::daemon::lock;
use crate::wire::stats::{Event, VmStats};
pub use ops::OpStats;

/// Subscribers of `GET /events` at once (503 beyond).
pub const SUBSCRIBERS: usize = 16;
/// Events a subscriber may have waiting.
pub const QUEUE: usize = 1024;
/// Longest error text kept in an event.
const ERROR_MAX: usize = 1024;

/// What the daemon observed: the events, the operations' numbers, and
/// the metrics sampler's latest sample of each VM (`daemon::metrics`
/// writes it; the API reads it).
#[derive(Default)]
pub struct Telemetry {
    pub hub: Hub,
    pub ops: OpStats,
    /// The latest sample of each VM, by id.
    pub samples: Mutex<BTreeMap<String, VmStats>>,
    /// The sampler's passes, and the time they took (µs).
    pub sampler_passes: AtomicU64,
    pub sampler_usec: AtomicU64,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A VM's recorded state changed.
    pub fn state(&self, vm: &str, id: &str, from: Option<&str>, to: &str) {
        self.hub.publish(Event {
            kind: "state".into(),
            vm: Some(vm.into()),
            id: Some(id.into()),
            from: from.map(Into::into),
            to: Some(to.into()),
            ..Event::default()
        });
    }

    /// A VM appeared (`created`) or left the table (`destroyed`).
    pub fn lifetime(&self, kind: &str, vm: &str, id: &str) {
        self.hub.publish(Event {
            kind: kind.into(),
            vm: Some(vm.into()),
            id: Some(id.into()),
            ..Event::default()
        });
    }

    /// An operation begins on `vm` (empty: not yet named, a create).
    pub fn begin(&self, op: &'static str, vm: &str) -> OpRun<'_> {
        self.hub.publish(Event {
            kind: "operation".into(),
            op: Some(op.into()),
            vm: (!vm.is_empty()).then(|| vm.into()),
            phase: Some("begin".into()),
            ..Event::default()
        });
        OpRun {
            t: self,
            op,
            began: Instant::now(),
        }
    }
}

/// An operation under way; [`OpRun::end`] records how it ended.
pub struct OpRun<'a> {
    t: &'a Telemetry,
    op: &'static str,
    began: Instant,
}

impl OpRun<'_> {
    /// It ended, on `vm`, with `error` if it failed.
    pub fn end(self, vm: &str, error: Option<String>) {
        let took = self.began.elapsed();
        self.t.ops.record(self.op, error.is_none(), took);
        self.t.hub.publish(Event {
            kind: "operation".into(),
            op: Some(self.op.into()),
            vm: (!vm.is_empty()).then(|| vm.into()),
            phase: Some("end".into()),
            ok: Some(error.is_none()),
            ms: Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX)),
            error: error.map(|e| e.chars().take(ERROR_MAX).collect()),
            ..Event::default()
        });
    }
}

/// The time of an event: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The bounded broadcast of events.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

#[derive(Default)]
struct HubInner {
    seq: u64,
    subs: Vec<Weak<Queue>>,
}

struct Queue {
    /// A VM's name or id: only its events (none: all).
    filter: Option<String>,
    state: Mutex<QueueState>,
    ready: Condvar,
    cap: usize,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Event>,
    missed: u64,
}

/// The kind of the line that tells a subscriber it missed events.
pub const LAGGED: &str = "lagged";

fn lagged(missed: u64) -> Event {
    Event {
        kind: LAGGED.into(),
        time: now_rfc3339(),
        missed: Some(missed),
        ..Event::default()
    }
}

/// Too many subscribers already.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// What a subscriber gets next.
#[derive(Debug, PartialEq)]
pub enum Next {
    Event(Box<Event>),
    /// This many events did not fit in its queue.
    Lagged(u64),
    /// Nothing within the wait.
    Idle,
}

/// One subscriber's end; dropping it unsubscribes.
pub struct Subscription(Arc<Queue>);

impl Hub {
    /// A new subscriber of every event, or of one VM's (by name or id).
    pub fn subscribe(&self, filter: Option<String>) -> Result<Subscription, Full> {
        self.subscribe_with(filter, SUBSCRIBERS, QUEUE)
    }

    fn subscribe_with(
        &self,
        filter: Option<String>,
        max: usize,
        cap: usize,
    ) -> Result<Subscription, Full> {
        let mut inner = lock(&self.inner);
        inner.subs.retain(|w| w.strong_count() > 0);
        if inner.subs.len() >= max {
            return Err(Full);
        }
        let q = Arc::new(Queue {
            filter,
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            cap,
        });
        inner.subs.push(Arc::downgrade(&q));
        Ok(Subscription(q))
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        lock(&self.inner).seq
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        lock(&self.inner)
            .subs
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Numbers the event and hands it to every subscriber that wants it,
    /// without ever waiting for one.
    pub fn publish(&self, mut ev: Event) {
        let mut inner = lock(&self.inner);
        inner.seq += 1;
        ev.seq = Some(inner.seq);
        ev.time = now_rfc3339();
        inner.subs.retain(|w| w.strong_count() > 0);
        for q in inner.subs.iter().filter_map(Weak::upgrade) {
            let wanted = q
                .filter
                .as_deref()
                .is_none_or(|f| ev.vm.as_deref() == Some(f) || ev.id.as_deref() == Some(f));
            if !wanted {
                continue;
            }
            let mut s = lock(&q.state);
            // The loss is told where it happened: before the first event
            // that fits again.
            if s.missed > 0 && s.events.len() < q.cap {
                let missed = std::mem::take(&mut s.missed);
                s.events.push_back(lagged(missed));
            }
            if s.events.len() >= q.cap {
                s.missed = s.missed.saturating_add(1);
            } else {
                s.events.push_back(ev.clone());
            }
            drop(s);
            q.ready.notify_one();
        }
    }
}

impl Subscription {
    /// The next event, or how many were missed, waiting at most `wait`.
    pub fn next(&self, wait: Duration) -> Next {
        let q = &self.0;
        let deadline = Instant::now() + wait;
        let mut s = lock(&q.state);
        loop {
            if let Some(ev) = s.events.pop_front() {
                return match ev.missed {
                    Some(n) if ev.kind == LAGGED => Next::Lagged(n),
                    _ => Next::Event(Box::new(ev)),
                };
            }
            if s.missed > 0 {
                return Next::Lagged(std::mem::take(&mut s.missed));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Idle;
            }
            s = q
                .ready
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(vm: &str) -> Event {
        Event {
            kind: "state".into(),
            vm: Some(vm.into()),
            ..Event::default()
        }
    }

    #[test]
    fn a_slow_subscriber_is_told_it_lagged_and_the_producer_never_waits() {
        let hub = Hub::default();
        let slow = hub.subscribe_with(None, 4, 8).expect("sub");
        let t = Instant::now();
        for _ in 0..10_000 {
            hub.publish(ev("a"));
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "publishing waited for a subscriber that never read"
        );
        // The first 8 were kept, in order; the rest counted.
        for want in 1..=8u64 {
            match slow.next(Duration::ZERO) {
                Next::Event(e) => assert_eq!(e.seq, Some(want)),
                other => panic!("event {want}: {other:?}"),
            }
        }
        assert_eq!(slow.next(Duration::ZERO), Next::Lagged(9_992));
        assert_eq!(slow.next(Duration::from_millis(10)), Next::Idle);
        hub.publish(ev("a"));
        match slow.next(Duration::ZERO) {
            Next::Event(e) => assert_eq!(e.seq, Some(10_001)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscribers_are_capped_filtered_and_leave_on_drop() {
        let hub = Hub::default();
        let a = hub.subscribe_with(Some("web".into()), 2, 8).expect("a");
        let b = hub.subscribe_with(None, 2, 8).expect("b");
        assert_eq!(hub.subscribe_with(None, 2, 8).err(), Some(Full));
        hub.publish(ev("db"));
        hub.publish(ev("web"));
        match a.next(Duration::ZERO) {
            Next::Event(e) => assert_eq!(e.vm.as_deref(), Some("web")),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.next(Duration::ZERO), Next::Idle);
        assert!(matches!(b.next(Duration::ZERO), Next::Event(_)));
        assert!(matches!(b.next(Duration::ZERO), Next::Event(_)));
        drop(b);
        assert_eq!(hub.subscribers(), 1);
        assert!(hub.subscribe_with(None, 2, 8).is_ok());
    }

    #[test]
    fn a_waiting_subscriber_wakes_on_publish() {
        let hub = Arc::new(Hub::default());
        let s = hub.subscribe(None).expect("sub");
        let h = Arc::clone(&hub);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            h.publish(ev("x"));
        });
        assert!(matches!(s.next(Duration::from_secs(5)), Next::Event(_)));
        t.join().expect("join");
    }
}
