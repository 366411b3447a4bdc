//! In a cluster: a console (or attach) for a VM of another host is relayed
//! to that host's terminal port (TLS with the certificate it registered):
//! the handshake line goes on, marked `relayed_from`, and then every byte
//! both ways (`cluster::splice`). The owner answers the handshake itself.
//! The web console's WebSocket (`daemon::http::ui_ws`) opens its relayed
//! consoles here too ([`open`]): the owner's answer is read here, and the
//! bytes and resizes go on as the terminal port's frames.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::attach::{Refusal, Terminal, Want, output_queue};
use super::refuse;
use crate::daemon::cluster::{Cluster, Owner, splice};
use crate::daemon::guest::Control;
use crate::daemon::manager::{Manager, ManagerError};
use crate::daemon::sessions::GUEST_TIMEOUT;
use crate::wire::DEFAULT_SESSION;
use crate::wire::cluster::HostRecord;
use crate::wire::stream::{
    FRAME_INPUT, Handshake, HandshakeReply, MAX_HANDSHAKE, frame, keepalive, resize_frame,
};
use crate::wire::tls::Link;

/// Where a console for a VM is served.
enum Route<'a> {
    Here,
    /// Its owner is down: the refusal's words.
    Dead(String, String),
    Owner(&'a Arc<Cluster>, Box<HostRecord>),
}

fn route<'a>(m: &'a Manager, vm: &str, relayed: bool) -> Route<'a> {
    let Some(c) = m.cluster().filter(|c| c.enabled()) else {
        return Route::Here;
    };
    if relayed || !matches!(m.get(vm), Err(ManagerError::NotFound(_))) {
        return Route::Here;
    }
    match c.owner_of(vm) {
        None => Route::Here,
        Some(Owner::Dead(host)) => Route::Dead(
            format!("VM {vm} is on host {host}, which is not answering the cluster"),
            "see fcm hosts; the VM is back once its host is".into(),
        ),
        Some(Owner::Live(h)) => Route::Owner(c, h),
    }
}

/// A connection to `owner`'s terminal port with the handshake line sent.
fn dial(c: &Cluster, owner: &HostRecord, hs: Handshake) -> io::Result<Link> {
    let up = c.connect_stream(owner).map_err(io::Error::other)?;
    let line = Handshake {
        relayed_from: Some(c.name()),
        ..hs
    };
    let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
    text.push(b'\n');
    up.clone().write_all(&text)?;
    Ok(up)
}

fn cannot_relay(owner: &HostRecord, e: &io::Error) -> (String, Option<String>) {
    (
        format!("could not relay the console to host {}: {e}", owner.name),
        Some("see fcm hosts".into()),
    )
}

/// The connection back (to be served here) unless its VM is another
/// host's: then it is relayed there (or refused with why) and `None`.
pub(super) fn unless_elsewhere(
    link: Link,
    hs: Handshake,
    m: &Manager,
) -> Option<(Link, Handshake)> {
    let (c, owner) = match route(m, &hs.vm, hs.relayed_from.is_some()) {
        Route::Here => return Some((link, hs)),
        Route::Dead(error, hint) => {
            let _ = refuse(&link, error, Some(hint));
            return None;
        }
        Route::Owner(c, owner) => (c, owner),
    };
    match dial(c, &owner, hs) {
        Ok(up) => splice(link, up),
        Err(e) => {
            let (error, hint) = cannot_relay(&owner, &e);
            let _ = refuse(&link, error, hint);
        }
    }
    None
}

/// The owner's side of a relayed console: input and resizes are written
/// as frames, one writer at a time; ending it closes the connection
/// (without waiting for a writer stuck on a full socket).
struct Upstream {
    writer: Mutex<Link>,
    link: Link,
}

impl Upstream {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut link = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        link.write_all(bytes)
    }
}

impl Control for Upstream {
    fn resize(&self, cols: u16, rows: u16) {
        let _ = self.send(&resize_frame(cols, rows));
    }
    /// The terminal port carries no signals: Ctrl-C is a typed byte.
    fn signal(&self, _signal: i32) {}
    fn kill(&self) {
        self.link.shutdown();
    }
}

/// Input for the owner, as input frames.
struct Input(Arc<Upstream>);

impl Write for Input {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(usize::from(u16::MAX));
        self.0.send(&frame(FRAME_INPUT, &b[..n]))?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The owner's reply line, read within the time the owner has to reach
/// tmux (plus a margin).
fn reply(link: &Link) -> io::Result<HandshakeReply> {
    link.sock()
        .set_read_timeout(Some(GUEST_TIMEOUT + Duration::from_secs(5)))?;
    let mut r = link.clone();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() <= MAX_HANDSHAKE {
        if r.read(&mut b)? == 0 {
            return Err(io::Error::other("the host closed the connection"));
        }
        if b[0] == b'\n' {
            link.sock().set_read_timeout(None)?;
            return serde_json::from_slice(&line).map_err(io::Error::other);
        }
        line.push(b[0]);
    }
    Err(io::Error::other("the host's answer is too long"))
}

/// A console for `want` on the VM's owner, or `None` when it is served
/// here. The refusals are the terminal port's words (the owner's own when
/// it refuses).
pub(crate) fn open(m: &Manager, want: &Want<'_>, token: &str) -> Option<Result<Terminal, Refusal>> {
    let (c, owner) = match route(m, want.vm, false) {
        Route::Here => return None,
        Route::Dead(error, hint) => return Some(Err(Refusal::Said(error, Some(hint)))),
        Route::Owner(c, owner) => (c, owner),
    };
    let hs = Handshake {
        vm: want.vm.to_string(),
        session: want.session.map(str::to_string),
        token: token.to_string(),
        cols: want.cols,
        rows: want.rows,
        term: want.term.clone(),
        create: want.create,
        relayed_from: None,
    };
    let said = |e: io::Error| {
        let (error, hint) = cannot_relay(&owner, &e);
        Refusal::Said(error, hint)
    };
    let opened = (|| {
        let up = dial(c, &owner, hs)?;
        keepalive(up.sock(), Duration::from_secs(20), Duration::from_secs(5));
        let r = reply(&up)?;
        Ok((up, r))
    })();
    let (up, r) = match opened {
        Ok(x) => x,
        Err(e) => return Some(Err(said(e))),
    };
    if !r.ok {
        let error = r.error.unwrap_or_else(|| "refused".into());
        return Some(Err(Refusal::Said(error, r.hint)));
    }
    let output = match output_queue(Box::new(up.clone())) {
        Ok(o) => o,
        Err(e) => return Some(Err(said(e))),
    };
    // An owner that stops reading must not hold the page's input forever.
    if let Err(e) = up.sock().set_write_timeout(Some(Duration::from_secs(60))) {
        return Some(Err(said(e)));
    }
    let upstream = Arc::new(Upstream {
        writer: Mutex::new(up.clone()),
        link: up,
    });
    Some(Ok(Terminal {
        vm: want.vm.to_string(),
        session: r
            .session
            .unwrap_or_else(|| want.session.unwrap_or(DEFAULT_SESSION).into()),
        control: Arc::clone(&upstream) as Arc<dyn Control>,
        to_guest: Box::new(Input(upstream)),
        output,
        early: Vec::new(),
        local: None,
    }))
}
