//! The door of a port: one thread runs the whole pre-authentication phase
//! of every connection as a non-blocking state machine over a readiness
//! loop (`polling`: epoll, not an async runtime): accept, TLS handshake,
//! reading the request (an HTTP head, a terminal handshake line), up to and
//! including the token check, which the port's [`Door`] does. Waiting for a
//! stranger's bytes costs no thread: a connection only gets one once it has
//! shown the token (the door's [`Step::Pass`]).
//!
//! Bounds:
//! - at most `pre_auth` connections that have not shown the token; when a
//!   new one comes and they are all held, the one that has held its place
//!   longest goes, whatever its address (told so when it can read it);
//! - a deadline from accept to the end of the request (TLS included),
//!   enforced here; an answer has [`LINGER`] to go out and drain;
//! - kept-alive HTTP connections come back through a [`Handback`] and wait
//!   here, idle, costing no thread, for `idle` at most; their number is
//!   bounded by the gate's `kept` slots, which they hold while they wait.

mod conn;
mod table;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};
use rustls::ServerConfig;

use super::gate::Slot;
pub use conn::Opened;
use conn::{Conn, Phase};
use table::Table;

/// The listener's key (connections are keyed by their table index).
const LISTENER: usize = usize::MAX - 1;
/// Time an answer has to go out, then time to drain what the client still
/// sends (so that closing does not reset the connection before the client
/// reads the answer).
pub const LINGER: Duration = Duration::from_secs(1);
/// Connections accepted per wake-up before the others get a turn.
const ACCEPT_BATCH: usize = 256;
/// Deadlines handled per turn of the loop.
const EXPIRE_BATCH: usize = 1024;
/// How long accepting pauses when the process is out of descriptors and
/// nothing can be pushed out.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often the count of pushed-out connections is logged (when any).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What the door makes of the bytes a client has sent so far.
pub enum Step {
    /// Not enough yet.
    More,
    /// Say this and close.
    Answer(Vec<u8>),
    /// Close without a word.
    Close,
    /// Authenticated: the connection leaves the poller (its socket blocking
    /// again) and this takes it, on the poller's thread, so it must not
    /// block (it spawns a thread or queues a job). An `Err` gives it back
    /// with an answer to say before closing.
    Pass(Pass),
}

pub type Pass = Box<dyn FnOnce(Opened) -> Result<(), Box<Refused>>>;

/// A connection a [`Pass`] gives back, with what to say before closing it.
pub struct Refused {
    pub opened: Opened,
    pub words: Vec<u8>,
}

/// A port's protocol up to the token check.
pub trait Door {
    /// The most input `step` needs to decide (more is not read).
    fn max_input(&self) -> usize;
    /// Called with everything received so far whenever more came (or the
    /// client closed its side: `eof`).
    fn step(&self, input: &[u8], eof: bool) -> Step;
    /// What to say when the deadline passes while a request is read.
    fn late(&self) -> Option<Vec<u8>>;
    /// What to say, in plain text, to a plain client on a TLS port.
    fn not_tls(&self) -> Vec<u8>;
    /// What to say to a connection pushed out for a newer one.
    fn pushed_out(&self) -> Vec<u8>;
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections that have not shown the token, at most.
    pub pre_auth: usize,
    /// From accept (or from a kept-alive connection's first new byte) to
    /// the end of the request.
    pub request: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
    /// Kept-alive connections that can come back at once (the gate's bound).
    pub kept: usize,
}

/// An answered connection going back to wait for its next request.
struct Returned {
    opened: Opened,
    slot: Slot,
}

/// Gives kept-alive connections back to a port's poller. Cheap to clone.
#[derive(Clone)]
pub struct Handback {
    tx: SyncSender<Returned>,
    poller: Arc<Poller>,
}

/// The poller's end of a [`Handback`].
pub struct Returns {
    rx: Receiver<Returned>,
    poller: Arc<Poller>,
}

/// A port's readiness poller and the way back into it for up to `kept`
/// kept-alive connections at once (0 for a port without keep-alive).
pub fn handback(kept: usize) -> io::Result<(Handback, Returns)> {
    let poller = Arc::new(Poller::new()?);
    let (tx, rx) = sync_channel(kept.max(1));
    let handback = Handback {
        tx,
        poller: Arc::clone(&poller),
    };
    Ok((handback, Returns { rx, poller }))
}

impl Handback {
    /// The connection waits in the poller for its next request, holding
    /// `slot` (a kept-alive one) meanwhile. Closed if that cannot be.
    pub fn keep(&self, opened: Opened, slot: Slot) {
        if opened.sock.set_nonblocking(true).is_err() {
            return;
        }
        if self.tx.try_send(Returned { opened, slot }).is_ok() {
            let _ = self.poller.notify();
        }
    }
}

/// A port's poller: its listener, its door, the connections it holds.
pub struct Server<D: Door> {
    port: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    door: D,
    settings: Settings,
    poller: Arc<Poller>,
    table: Table<Conn>,
    returns: Receiver<Returned>,
    /// Accepting paused until then (out of descriptors).
    paused: Option<Instant>,
    pushed_out: u64,
    logged: Instant,
}

/// The readiness registration of a source, level-triggered.
fn interest(key: usize, (r, w): (bool, bool)) -> Event {
    Event::new(key, r, w)
}

/// Whether an accept error means the process or the system is out of
/// descriptors or memory (then waiting does not help; freeing does).
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl<D: Door> Server<D> {
    /// A poller for `listener` (`port` names it in logs); TLS when `tls`
    /// is given; kept-alive connections come back through `returns`.
    pub fn new(
        port: &'static str,
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        door: D,
        settings: Settings,
        returns: Returns,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let Returns {
            rx: returns,
            poller,
        } = returns;
        // SAFETY: the listener is owned by the server, which deletes it from
        // the poller before dropping it (`Drop`).
        unsafe { poller.add_with_mode(&listener, Event::readable(LISTENER), PollMode::Level)? };
        Ok(Self {
            port,
            listener,
            tls,
            door,
            settings,
            poller,
            table: Table::default(),
            returns,
            paused: None,
            pushed_out: 0,
            logged: Instant::now(),
        })
    }

    /// Serves for ever; returns only if waiting for readiness fails.
    pub fn run(mut self) -> io::Error {
        let mut events = Events::new();
        loop {
            events.clear();
            let timeout = self.timeout();
            if let Err(e) = self.poller.wait(&mut events, timeout) {
                return e;
            }
            for ev in events.iter() {
                if ev.key == LISTENER {
                    self.accept();
                } else {
                    self.advance(ev.key);
                }
            }
            self.take_returns();
            self.expire();
            self.resume_accepting();
            self.log_pushed_out();
        }
    }

    /// Until the next deadline (or the end of an accept pause).
    fn timeout(&self) -> Option<Duration> {
        let next = match (self.table.next_deadline(), self.paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((sock, _)) => self.admit(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if out_of_resources(&e) => {
                    // Free a descriptor by pushing out the oldest stranger;
                    // with none to push out, stop accepting for a moment.
                    if !self.push_out_oldest() {
                        eprintln!(
                            "fcm daemon: {}: accept failed: {e}; pausing {} ms",
                            self.port,
                            ACCEPT_PAUSE.as_millis()
                        );
                        let _ = self.poller.modify_with_mode(
                            &self.listener,
                            Event::none(LISTENER),
                            PollMode::Level,
                        );
                        self.paused = Some(Instant::now() + ACCEPT_PAUSE);
                        return;
                    }
                }
                // The client gave up before the accept, and the like.
                Err(_) => {}
            }
        }
    }

    fn resume_accepting(&mut self) {
        if self.paused.is_some_and(|p| p <= Instant::now()) {
            self.paused = None;
            let _ = self.poller.modify_with_mode(
                &self.listener,
                Event::readable(LISTENER),
                PollMode::Level,
            );
        }
    }

    /// A new connection: into the pre-authentication budget, the oldest
    /// pushed out if it is full.
    fn admit(&mut self, sock: TcpStream) {
        if sock.set_nonblocking(true).is_err() {
            return;
        }
        let _ = sock.set_nodelay(true);
        while self.table.pre_auth() >= self.settings.pre_auth {
            if !self.push_out_oldest() {
                break;
            }
        }
        let phase = if self.tls.is_some() {
            Phase::Sniff
        } else {
            Phase::Open
        };
        let deadline = Instant::now() + self.settings.request;
        self.insert(Conn::new(sock, phase), deadline, true);
    }

    /// Puts a connection in the table and registers it; `None` (and the
    /// connection closed) if the poller refuses it.
    fn insert(&mut self, conn: Conn, deadline: Instant, pre_auth: bool) -> Option<usize> {
        let key = self.table.insert(conn, deadline, pre_auth);
        let c = self.table.get_mut(key)?;
        c.interest = c.wanted();
        // SAFETY: the socket is owned by the table's entry, and every path
        // that takes an entry out of the table (`remove`) deletes the
        // socket from the poller first.
        let added = unsafe {
            self.poller
                .add_with_mode(&c.sock, interest(key, c.interest), PollMode::Level)
        };
        if added.is_err() {
            self.table.remove(key);
            return None;
        }
        Some(key)
    }

    /// Takes a connection out of the table and the poller.
    fn remove(&mut self, key: usize) -> Option<Conn> {
        let c = self.table.get_mut(key)?;
        let _ = self.poller.delete(&c.sock);
        self.table.remove(key)
    }

    /// Pushes out the pre-authentication connection admitted first;
    /// `false` if there is none.
    fn push_out_oldest(&mut self) -> bool {
        let Some(key) = self.table.oldest_pre_auth() else {
            return false;
        };
        if let Some(c) = self.remove(key) {
            c.farewell(&self.door.pushed_out());
        }
        self.pushed_out += 1;
        true
    }

    fn log_pushed_out(&mut self) {
        if self.pushed_out > 0 && self.logged.elapsed() >= LOG_EVERY {
            eprintln!(
                "fcm daemon: {}: {} unauthenticated connections pushed out (the oldest first) in the last {} s; holding {} (limit {}), {} in all",
                self.port,
                self.pushed_out,
                self.logged.elapsed().as_secs(),
                self.table.pre_auth(),
                self.settings.pre_auth,
                self.table.len()
            );
            self.pushed_out = 0;
            self.logged = Instant::now();
        }
    }

    /// Kept-alive connections given back: they wait, idle, for their next
    /// request (maybe already here, read by the thread or inside TLS).
    fn take_returns(&mut self) {
        for _ in 0..self.settings.kept.max(1) {
            let r = match self.returns.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            let mut c = Conn::from_opened(r.opened, Phase::Idle);
            c.kept = Some(r.slot);
            let deadline = Instant::now() + self.settings.idle;
            if let Some(key) = self.insert(c, deadline, false) {
                self.advance(key);
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        for key in self.table.expired(now, EXPIRE_BATCH) {
            let open = self
                .table
                .get_mut(key)
                .is_some_and(|c| c.phase == Phase::Open);
            match self.door.late().filter(|_| open) {
                Some(words) => self.say(key, &words),
                None => {
                    self.remove(key);
                }
            }
        }
    }

    /// Moves a connection to its last words, with [`LINGER`] to say them.
    fn say(&mut self, key: usize, words: &[u8]) {
        if let Some(c) = self.table.get_mut(key) {
            c.kept = None;
            c.answer(words);
        }
        self.table.set_deadline(key, Instant::now() + LINGER);
        self.advance(key);
    }

    /// Does what can be done for a connection now, then updates what it
    /// waits for.
    fn advance(&mut self, key: usize) {
        let step = {
            let max = self.door.max_input();
            let Some(c) = self.table.get_mut(key) else {
                return;
            };
            match c.phase {
                Phase::Sniff => {
                    let Some(cfg) = &self.tls else {
                        return;
                    };
                    match c.sniff(cfg) {
                        Ok(None) => Step::More,
                        Ok(Some(true)) => return self.advance(key),
                        Ok(Some(false)) => Step::Answer(self.door.not_tls()),
                        Err(_) => Step::Close,
                    }
                }
                Phase::Handshake | Phase::Open | Phase::Idle => match c.fill(max) {
                    Err(_) => Step::Close,
                    Ok(_) if c.handshaking() => {
                        if c.eof {
                            Step::Close
                        } else {
                            Step::More
                        }
                    }
                    Ok(filled) => {
                        let was = c.phase;
                        c.phase = Phase::Open;
                        if was == Phase::Idle && c.input.is_empty() {
                            if c.eof {
                                Step::Close
                            } else {
                                c.phase = Phase::Idle;
                                Step::More
                            }
                        } else {
                            if was == Phase::Idle {
                                // The next request has begun: it has its
                                // own deadline.
                                let d = Instant::now() + self.settings.request;
                                self.table.set_deadline(key, d);
                            }
                            match self.table.get_mut(key) {
                                Some(c) if filled.more || c.eof || was != Phase::Open => {
                                    self.door.step(&c.input, c.eof)
                                }
                                _ => Step::More,
                            }
                        }
                    }
                },
                Phase::Answering { .. } => match c.answering() {
                    Ok(false) => Step::More,
                    Ok(true) | Err(_) => Step::Close,
                },
            }
        };
        // A client at its end, or past what the door reads, cannot give
        // more: waiting for it would spin on a level-triggered socket.
        let stuck = |c: &Conn| {
            c.phase != Phase::Sniff
                && !matches!(c.phase, Phase::Answering { .. })
                && (c.eof || c.input.len() > self.door.max_input())
        };
        let step = match step {
            Step::More if self.table.get_mut(key).is_some_and(|c| stuck(c)) => Step::Close,
            s => s,
        };
        match step {
            Step::More => self.rearm(key),
            Step::Close => {
                self.remove(key);
            }
            Step::Answer(words) => self.say(key, &words),
            Step::Pass(pass) => self.pass(key, pass),
        }
    }

    /// Updates the registered interest if it changed.
    fn rearm(&mut self, key: usize) {
        let Some(c) = self.table.get_mut(key) else {
            return;
        };
        let want = c.wanted();
        if want != c.interest {
            c.interest = want;
            if self
                .poller
                .modify_with_mode(&c.sock, interest(key, want), PollMode::Level)
                .is_err()
            {
                self.remove(key);
            }
        }
    }

    /// The connection leaves the poller for the door's taker.
    fn pass(&mut self, key: usize, pass: Pass) {
        let Some(mut c) = self.remove(key) else {
            return;
        };
        // A kept-alive connection's slot goes: the request takes its own.
        c.kept = None;
        let Ok(opened) = c.into_opened() else {
            return;
        };
        if let Err(refused) = pass(opened) {
            let Refused { opened, words } = *refused;
            if opened.sock.set_nonblocking(true).is_err() {
                return;
            }
            let mut c = Conn::from_opened(opened, Phase::Open);
            c.answer(&words);
            if self.table.pre_auth() >= self.settings.pre_auth {
                self.push_out_oldest();
            }
            if let Some(key) = self.insert(c, Instant::now() + LINGER, true) {
                self.advance(key);
            }
        }
    }
}

impl<D: Door> Drop for Server<D> {
    fn drop(&mut self) {
        let _ = self.poller.delete(&self.listener);
        for k in self.table.keys() {
            self.remove(k);
        }
    }
}
