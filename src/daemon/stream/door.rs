//! The terminal port's door, run by its poller without blocking: the
//! handshake line as it arrives, then the token (constant time, before
//! anything else); an authenticated client leaves the poller for a thread
//! of its own with a slot of `limits.stream_connections`.

use std::sync::Arc;
use std::thread;

use super::{CLIENT_HINT, attach, routine};
use crate::daemon::auth::{TOKEN_HINT, token_matches};
use crate::daemon::gate::Gate;
use crate::daemon::manager::Manager;
use crate::daemon::poller::{Door, Opened, Step};
use crate::daemon::sessions::Sessions;
use crate::wire::stream::{HANDSHAKE_TIMEOUT, Handshake, HandshakeReply, MAX_HANDSHAKE};
use crate::wire::tls::{Link, TlsLink};

pub(super) struct StreamDoor {
    m: Arc<Manager>,
    s: Arc<Sessions>,
    token: Arc<String>,
    gate: Arc<Gate>,
}

impl StreamDoor {
    pub(super) fn new(
        m: Arc<Manager>,
        s: Arc<Sessions>,
        token: Arc<String>,
        gate: Arc<Gate>,
    ) -> Self {
        Self { m, s, token, gate }
    }
}

fn refusal(error: impl Into<String>, hint: &str) -> Vec<u8> {
    HandshakeReply::refusal(error.into(), Some(hint.into())).line()
}

/// The handshake line in what the client sent so far: `Ok(None)` while it
/// is not whole; an `Err` says why it is refused. At most
/// [`MAX_HANDSHAKE`] bytes with its newline, and nothing after it (the
/// client must wait for the reply).
pub(super) fn handshake_line(input: &[u8], eof: bool) -> Result<Option<Handshake>, String> {
    let larger =
        || format!("handshake larger than {MAX_HANDSHAKE} bytes (it must be one JSON line)");
    let Some(end) = input.iter().position(|&b| b == b'\n') else {
        if input.len() >= MAX_HANDSHAKE {
            return Err(larger());
        }
        if eof {
            return Err("connection closed before the handshake".into());
        }
        return Ok(None);
    };
    if end >= MAX_HANDSHAKE {
        return Err(larger());
    }
    let hs: Handshake =
        serde_json::from_slice(&input[..end]).map_err(|e| format!("malformed handshake: {e}"))?;
    if end + 1 != input.len() {
        return Err("data sent before the handshake was answered".into());
    }
    Ok(Some(hs))
}

impl Door for StreamDoor {
    fn max_input(&self) -> usize {
        MAX_HANDSHAKE
    }

    fn step(&self, input: &[u8], eof: bool) -> Step {
        let hs = match handshake_line(input, eof) {
            Ok(Some(hs)) => hs,
            Ok(None) => return Step::More,
            Err(e) => return Step::Answer(refusal(e, CLIENT_HINT)),
        };
        // The token first: nothing about VMs or sessions leaks to a stranger.
        if !token_matches(&hs.token, &self.token) {
            return Step::Answer(refusal("invalid token", TOKEN_HINT));
        }
        // Authenticated: out of the strangers' budget, into the users'.
        let Ok(slot) = self.gate.authenticated() else {
            return Step::Answer(refusal("too many terminal connections", "try again later"));
        };
        let (m, s) = (Arc::clone(&self.m), Arc::clone(&self.s));
        Step::Pass(Box::new(move |o: Opened| {
            let link = match o.tls {
                None => Link::Plain(Arc::new(o.sock)),
                Some(tls) => Link::Tls(TlsLink::new(tls.into(), o.sock)),
            };
            let spawned = thread::Builder::new()
                .name("fcm-stream".into())
                .spawn(move || {
                    if let Err(e) = attach(link, hs, slot, &m, &s)
                        && !routine(&e)
                    {
                        eprintln!("fcm daemon: terminal connection: {e}");
                    }
                });
            if let Err(e) = spawned {
                eprintln!("fcm daemon: terminal port: connection: no thread: {e}");
            }
            Ok(())
        }))
    }

    fn late(&self) -> Option<Vec<u8>> {
        Some(refusal(
            format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            CLIENT_HINT,
        ))
    }

    fn not_tls(&self) -> Vec<u8> {
        refusal(
            "this terminal port speaks TLS",
            "the console uses TLS when the API does: set FCM_HOST=https://<host>:7777",
        )
    }

    fn pushed_out(&self) -> Vec<u8> {
        refusal("too many unauthenticated connections", "try again later")
    }
}
