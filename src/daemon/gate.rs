//! Admission to a port, shared by the HTTP API and the terminal stream.
//! A connection is *pre-authentication* from accept until it has shown
//! the token, and *authenticated* after; each kind has its own budget, so
//! strangers never take the slots of users:
//! - at most `per_peer` pre-authentication connections from one address;
//! - at most `total` pre-authentication connections on the port; when they
//!   are all taken, a newcomer from an address holding fewer than the
//!   biggest holder pushes out that holder's oldest connection (so a
//!   flood from a few addresses cannot keep another address out), else it
//!   is refused;
//! - authenticated connections have their own cap (`authed`).
//!
//! Each server also puts a short deadline on the pre-authentication phase,
//! so a slot is never held for long.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::lock;

#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub total: usize,
    pub per_peer: usize,
    pub authed: usize,
    /// Authenticated long-lived streams (exec, file transfers), apart from
    /// `authed` so that they never starve short requests.
    pub streams: usize,
}

struct Waiting {
    id: u64,
    since: Instant,
    /// A clone of the socket, to cut it when it is pushed out.
    sock: Option<TcpStream>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<IpAddr, Vec<Waiting>>,
    pre_auth: usize,
    authed: usize,
    streams: usize,
    next_id: u64,
    pushed_out: u64,
    refused: u64,
}

pub struct Gate {
    limits: GateLimits,
    state: Mutex<State>,
}

/// Why a connection was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already holds `per_peer` pre-authentication slots.
    PeerFull,
    /// Every pre-authentication slot is taken by addresses holding no more.
    Full,
    /// Every authenticated slot is taken.
    Busy,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Self::PeerFull => "too many unauthenticated connections from your address",
            Self::Full => "too many unauthenticated connections",
            Self::Busy => "too many connections at once",
        }
    }
}

/// A pre-authentication slot; released when dropped.
pub struct PreAuth {
    gate: Arc<Gate>,
    peer: IpAddr,
    id: u64,
}

/// An authenticated slot (a request, or a stream); released when dropped.
pub struct Authed {
    gate: Arc<Gate>,
    stream: bool,
}

/// What a gate holds, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub pre_auth: usize,
    pub authed: usize,
    pub streams: usize,
    pub pushed_out: u64,
    pub refused: u64,
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
            pre_auth: s.pre_auth,
            authed: s.authed,
            streams: s.streams,
            pushed_out: s.pushed_out,
            refused: s.refused,
        }
    }

    /// The accept loop of a port (`port` names it in logs): each connection
    /// is admitted, then served by `serve` on a thread of its own named
    /// `thread_name`. A refused one gets the bytes `refusal` makes of why (none
    /// under TLS: a TLS client could not read them), written without
    /// blocking the loop, and is dropped. Returns when the listener fails
    /// for good (never, in practice).
    pub fn accept_loop<F>(
        self: &Arc<Self>,
        listener: &TcpListener,
        port: &str,
        thread_name: &str,
        refusal: impl Fn(&Refusal) -> Option<Vec<u8>>,
        serve: F,
    ) where
        F: Fn(TcpStream, PreAuth) + Send + Sync + 'static,
    {
        let serve = Arc::new(serve);
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds or similar: back off rather than spin.
                    eprintln!("fcm daemon: {port}: accept failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Ok(peer) = conn.peer_addr() else {
                continue;
            };
            let slot = match self.admit(peer.ip(), &conn) {
                Ok(s) => s,
                Err(r) => {
                    if let Some(bytes) = refusal(&r) {
                        let _ = conn.set_nonblocking(true);
                        let _ = (&conn).write_all(&bytes);
                    }
                    continue;
                }
            };
            let serve = Arc::clone(&serve);
            let spawned = thread::Builder::new()
                .name(thread_name.into())
                .spawn(move || serve(conn, slot));
            if let Err(e) = spawned {
                eprintln!("fcm daemon: {port}: connection: no thread: {e}");
            }
        }
    }

    /// Lets a just-accepted connection from `peer` into the
    /// pre-authentication phase, or says why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, sock: &TcpStream) -> Result<PreAuth, Refusal> {
        let mut s = lock(&self.state);
        let mine = s.waiting.get(&peer).map_or(0, Vec::len);
        if mine >= self.limits.per_peer {
            s.refused += 1;
            return Err(Refusal::PeerFull);
        }
        if s.pre_auth >= self.limits.total {
            // The biggest holder, if pushing one of its connections out
            // makes the shares fairer.
            let victim = s
                .waiting
                .iter()
                .filter(|(_, v)| v.len() > mine + 1)
                .max_by_key(|(_, v)| v.len())
                .map(|(ip, _)| *ip);
            let Some(victim) = victim else {
                s.refused += 1;
                return Err(Refusal::Full);
            };
            if let Some(list) = s.waiting.get_mut(&victim)
                && let Some(oldest) = (0..list.len()).min_by_key(|&i| list[i].since)
            {
                let w = list.swap_remove(oldest);
                if let Some(sock) = w.sock {
                    let _ = sock.shutdown(Shutdown::Both);
                }
                s.pre_auth -= 1;
                s.pushed_out += 1;
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        s.pre_auth += 1;
        s.waiting.entry(peer).or_default().push(Waiting {
            id,
            since: Instant::now(),
            sock: sock.try_clone().ok(),
        });
        Ok(PreAuth {
            gate: Arc::clone(self),
            peer,
            id,
        })
    }

    fn release_pre_auth(&self, peer: IpAddr, id: u64) {
        let mut s = lock(&self.state);
        let mut found = false;
        if let Some(list) = s.waiting.get_mut(&peer)
            && let Some(i) = list.iter().position(|w| w.id == id)
        {
            list.swap_remove(i);
            found = true;
            if list.is_empty() {
                s.waiting.remove(&peer);
            }
        }
        // A connection pushed out was already taken off the count.
        if found {
            s.pre_auth -= 1;
        }
    }
}

impl PreAuth {
    /// The token was right: trade this slot for an authenticated one.
    pub fn authenticated(self) -> Result<Authed, Refusal> {
        let gate = Arc::clone(&self.gate);
        drop(self);
        let mut s = lock(&gate.state);
        if s.authed >= gate.limits.authed {
            return Err(Refusal::Busy);
        }
        s.authed += 1;
        drop(s);
        Ok(Authed {
            gate,
            stream: false,
        })
    }

    /// The token was right and the request is a long-lived stream: an
    /// authenticated slot from the streams' own budget.
    pub fn streaming(self) -> Result<Authed, Refusal> {
        let gate = Arc::clone(&self.gate);
        drop(self);
        let mut s = lock(&gate.state);
        if s.streams >= gate.limits.streams {
            return Err(Refusal::Busy);
        }
        s.streams += 1;
        drop(s);
        Ok(Authed { gate, stream: true })
    }

    /// A slot for a request that needs no token (`GET /health`), counted
    /// with the authenticated ones.
    pub fn open(self) -> Result<Authed, Refusal> {
        self.authenticated()
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        self.gate.release_pre_auth(self.peer, self.id);
    }
}

impl Drop for Authed {
    fn drop(&mut self) {
        let mut s = lock(&self.gate.state);
        if self.stream {
            s.streams = s.streams.saturating_sub(1);
        } else {
            s.authed = s.authed.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn sock(l: &TcpListener) -> TcpStream {
        TcpStream::connect(l.local_addr().expect("addr")).expect("connect")
    }

    #[test]
    fn peers_are_capped_and_a_flood_cannot_keep_others_out() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let g = Gate::new(GateLimits {
            total: 4,
            per_peer: 3,
            authed: 1,
            streams: 1,
        });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
            "10.0.0.3".parse().expect("ip"),
        );
        let s = sock(&l);
        let mut held: Vec<PreAuth> = (0..3).map(|_| g.admit(a, &s).expect("a")).collect();
        assert_eq!(g.admit(a, &s).err(), Some(Refusal::PeerFull));
        held.push(g.admit(b, &s).expect("b"));
        // Full: c (holding none) pushes out one of a's (holding 3).
        let pc = g.admit(c, &s).expect("c pushes a out");
        assert_eq!(g.counts().pre_auth, 4);
        assert_eq!(g.counts().pushed_out, 1);
        // b (1) against a (2) and c (1): nobody holds 3, so b is refused.
        assert_eq!(g.admit(b, &s).err(), Some(Refusal::Full));
        // Releasing a pushed-out slot does not count it twice.
        drop(held);
        assert_eq!(g.counts().pre_auth, 1);
        let authed = pc.authenticated().expect("authed");
        assert_eq!(
            g.counts(),
            Counts {
                pre_auth: 0,
                authed: 1,
                streams: 0,
                pushed_out: 1,
                refused: 2
            }
        );
        let other = g.admit(a, &s).expect("a again");
        assert_eq!(other.authenticated().err(), Some(Refusal::Busy));
        // Streams have their own budget: one goes in while requests are full.
        let stream = g.admit(a, &s).expect("a").streaming().expect("stream");
        assert_eq!(
            g.admit(a, &s).expect("a").streaming().err(),
            Some(Refusal::Busy)
        );
        drop(authed);
        drop(stream);
        assert_eq!((g.counts().authed, g.counts().streams), (0, 0));
    }
}
