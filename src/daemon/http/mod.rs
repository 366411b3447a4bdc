//! The HTTP transport of the API: a small HTTP/1.1 server of fcm's own,
//! `httparse` and threads behind a readiness loop, bounded everywhere
//! (tiny_http, used before, has no connection cap, header limit or read
//! timeout, and cannot be given them from outside):
//! - until a request has shown the token, its connection costs no thread:
//!   the port's poller (`daemon/poller`) accepts it, runs the TLS
//!   handshake, reads the head and checks the token ([`door`]), all
//!   without blocking; at most `limits.pre_auth_connections` such
//!   connections, the oldest pushed out for a newcomer when all are held;
//! - one deadline from accept to the end of the request head, TLS
//!   handshake included (`limits.http_pre_auth_secs`, 408), then one for
//!   the body ([`BODY_DEADLINE`]) and one for the response
//!   ([`WRITE_DEADLINE`]);
//! - at most [`message::MAX_HEAD`] bytes and [`message::MAX_HEADERS`]
//!   headers (400 above), a JSON body of at most the route's limit (`api::MAX_BODY`,
//!   exec 12 MiB; 413 above); file transfers are streamed both ways, each
//!   read and write within [`TRANSFER_TIMEOUT`];
//! - an authorised request takes a slot of the [`Gate`]
//!   (`limits.http_requests`, 503 above) and goes to a fixed pool of
//!   [`WORKERS`] through a bounded queue (503 when full); its body is read
//!   by the poller when it came with the head, else on a thread of its own;
//! - **keep-alive**: an HTTP/1.1 client's connection stays open after a
//!   JSON answer, and goes back to the poller to wait, idle and threadless,
//!   for the next request (at most `limits.http_keepalive` such
//!   connections, each for `limits.http_idle_secs`; above, the answer says
//!   `Connection: close`). Every request shows the token again;
//! - **streams** (a streamed exec, file transfers) are not short requests:
//!   they run on a thread of their own, with their own cap
//!   (`limits.http_streams`), never on a worker, so a hundred open streams
//!   leave every worker to `ls`, and they end their connection. A quiet
//!   stream is not cut for being quiet: TCP keepalive tells a live peer
//!   from a gone one, and each stream's own deadline (the exec's timeout,
//!   [`TRANSFER_TIMEOUT`]) bounds it.
//!
//! `api` keeps the routes, the handlers and the status mapping; this
//! module only moves bytes. TLS (rustls) when the daemon's ports speak it.

mod door;
mod e2b;
mod events;
mod exec;
mod message;
mod relay;
mod streams;
mod transfer;
mod ui;
mod ui_ws;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::api::{self, Answer, ApiError, Route};
use super::e2b::E2b;
use super::gate::{Gate, GateLimits, Slot};
use super::lock;
use super::manager::Manager;
use super::poller::{self, Handback, Opened, Server, Settings};
use super::sessions::Sessions;
use crate::config::Limits;
use crate::wire::tls::{DeadlineStream, Link, TlsLink};
use door::HttpDoor;
use message::response;
use transfer::write_stream;

#[cfg(doc)]
use super::guest::TRANSFER_TIMEOUT;

/// Requests run at once.
pub const WORKERS: usize = 16;
/// Time an authorised client has to send its body.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// Time a client has to take a JSON response.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// After an early answer, how long unread input is drained so that the
/// close does not reset the connection before the answer is read.
const LINGER: Duration = poller::LINGER;

/// A connection's byte stream, plain or TLS, with a movable deadline.
trait Transport: Read + Write + Send {
    fn set_deadline(&mut self, d: Option<Instant>);
    fn socket(&self) -> &TcpStream;
    /// Ends the TLS session, if any (close_notify).
    fn close_tls(&mut self) {}
    /// The connection as a link that one thread reads while others write
    /// (an upgraded stream).
    fn into_link(self: Box<Self>) -> Link;
    /// The socket and its TLS state, for the poller (a kept-alive
    /// connection) or for an answer it says.
    fn into_parts(self: Box<Self>) -> (TcpStream, Option<ServerConnection>);
}

impl Transport for DeadlineStream {
    fn set_deadline(&mut self, d: Option<Instant>) {
        DeadlineStream::set_deadline(self, d);
    }
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
    fn into_link(self: Box<Self>) -> Link {
        Link::Plain(Arc::new(self.sock))
    }
    fn into_parts(self: Box<Self>) -> (TcpStream, Option<ServerConnection>) {
        (self.sock, None)
    }
}

impl Transport for StreamOwned<ServerConnection, DeadlineStream> {
    fn set_deadline(&mut self, d: Option<Instant>) {
        self.sock.set_deadline(d);
    }
    fn socket(&self) -> &TcpStream {
        &self.sock.sock
    }
    fn close_tls(&mut self) {
        self.conn.send_close_notify();
        let _ = self.conn.complete_io(&mut self.sock);
    }
    fn into_link(self: Box<Self>) -> Link {
        let StreamOwned { conn, sock } = *self;
        Link::Tls(TlsLink::new(conn.into(), sock.sock))
    }
    fn into_parts(self: Box<Self>) -> (TcpStream, Option<ServerConnection>) {
        let StreamOwned { conn, sock } = *self;
        (sock.sock, Some(conn))
    }
}

/// A connection from the poller as a blocking transport.
fn transport(sock: TcpStream, tls: Option<ServerConnection>) -> Box<dyn Transport> {
    let ds = DeadlineStream::new(sock, None);
    match tls {
        None => Box::new(ds),
        Some(conn) => Box::new(StreamOwned::new(conn, ds)),
    }
}

/// A transport given back to the poller with an answer to say.
fn opened(io: Box<dyn Transport>, input: Vec<u8>) -> Opened {
    let (sock, tls) = io.into_parts();
    Opened { sock, tls, input }
}

/// An authorised request with its JSON body, for a worker.
struct Job {
    io: Box<dyn Transport>,
    route: Route,
    body: Vec<u8>,
    method: String,
    target: String,
    /// Sent by another host of the cluster: served here, never forwarded.
    forwarded: bool,
    /// Set when the client keeps its connection alive.
    keep: Option<Keep>,
    _slot: Slot,
}

/// What the door and the request threads share.
struct Ctx {
    token: Arc<String>,
    /// The token that may only wake VMs (Caddy's, for idle sleep).
    wake_token: Option<Arc<String>>,
    /// The token that may only read `GET /metrics` (a Prometheus scraper's).
    metrics_token: Option<Arc<String>>,
    queue: SyncSender<Job>,
    gate: Arc<Gate>,
    /// Where kept-alive connections wait for their next request.
    handback: Handback,
    /// Seconds a kept-alive connection may stay idle.
    idle_secs: u64,
    /// For streams, which run on threads of their own.
    m: Arc<Manager>,
    /// The E2B API (`daemon::e2b`): its requests run on threads of their own.
    e2b: Arc<E2b>,
    /// The consoles attached (the web console's terminals register there).
    s: Arc<Sessions>,
    /// Whether the port speaks TLS (the web console's origin is https).
    tls: bool,
}

/// Serves the API on `listener` (TLS when `tls` is given) until the
/// poller fails, which it returns.
#[allow(clippy::too_many_arguments)] // the daemon's pieces the port serves, each once
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: &Limits,
    m: Arc<Manager>,
    s: Arc<Sessions>,
    token: Arc<String>,
    wake_token: Option<Arc<String>>,
    metrics_token: Option<Arc<String>>,
    e2b: Arc<E2b>,
) -> io::Error {
    let gate = Gate::new(GateLimits {
        authed: limits.http_requests,
        streams: limits.http_streams,
        kept: limits.http_keepalive,
    });
    let (handback, returns) = match poller::handback(limits.http_keepalive) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let (queue, jobs) = sync_channel::<Job>(limits.http_requests);
    let jobs = Arc::new(Mutex::new(jobs));
    let https = tls.is_some();
    for i in 0..WORKERS {
        let (jobs, m, s) = (Arc::clone(&jobs), Arc::clone(&m), Arc::clone(&s));
        let spawned = thread::Builder::new()
            .name(format!("fcm-http-{i}"))
            .spawn(move || work(&jobs, &m, &s));
        if let Err(e) = spawned {
            eprintln!("fcm daemon: no HTTP worker thread: {e}");
        }
    }
    let ctx = Arc::new(Ctx {
        token,
        wake_token,
        metrics_token,
        queue,
        gate,
        handback,
        idle_secs: limits.http_idle_secs,
        m,
        e2b,
        s,
        tls: https,
    });
    let settings = Settings {
        pre_auth: limits.pre_auth_connections,
        request: Duration::from_secs(limits.http_pre_auth_secs),
        idle: Duration::from_secs(limits.http_idle_secs),
        kept: limits.http_keepalive,
    };
    match Server::new(
        "API port",
        listener,
        tls,
        HttpDoor::new(ctx),
        settings,
        returns,
    ) {
        Ok(server) => server.run(),
        Err(e) => e,
    }
}

fn work(jobs: &Mutex<Receiver<Job>>, m: &Manager, s: &Sessions) {
    loop {
        let job = lock(jobs).recv();
        let Ok(job) = job else {
            return;
        };
        run(job, m, s);
    }
}

/// Runs a handler; a panic in it answers 500 and the worker lives on.
fn guarded<T>(f: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ApiError::new(
            500,
            "internal error: the daemon hit a bug handling this request (see its log)",
        ))
    })
}

/// A kept-alive connection's way back to the poller: the context, and
/// what the client sent past the request.
struct Keep {
    ctx: Arc<Ctx>,
    rest: Vec<u8>,
}

fn run(job: Job, m: &Manager, s: &Sessions) {
    let Job {
        io,
        route,
        body,
        method,
        target,
        forwarded,
        keep,
        _slot,
    } = job;
    let result = match route {
        // Prometheus text, not JSON.
        Route::Metrics => guarded(|| {
            let page = super::metrics::prometheus::render(m).into_bytes();
            Ok(Answer::Bytes {
                content_type: super::metrics::prometheus::CONTENT_TYPE,
                length: Some(page.len() as u64),
                body: Box::new(io::Cursor::new(page)),
            })
        }),
        // In a cluster, another host's VM's request is forwarded there.
        route => guarded(|| api::serve(m, s, route, &method, &target, &body, forwarded))
            .map(Answer::Json),
    };
    finish(io, &method, &target, result, keep);
}

/// Writes a handler's answer (JSON, a byte stream, or an error); then the
/// connection goes back to the poller when the client keeps it alive and
/// a kept-alive slot is free, else it ends.
fn finish(
    mut io: Box<dyn Transport>,
    method: &str,
    target: &str,
    result: Result<Answer, ApiError>,
    keep: Option<Keep>,
) {
    let json = match result {
        Ok(Answer::Json(r)) => {
            let mut data = r.body.to_string().into_bytes();
            data.push(b'\n');
            Some((r.status, data, None))
        }
        Ok(Answer::Bytes {
            content_type,
            length,
            mut body,
        }) => {
            // A client that goes away mid-transfer ends it; nothing to report.
            let _ = write_stream(&mut io, content_type, length, &mut *body);
            None
        }
        Err(e) => {
            if e.status >= 500 {
                eprintln!("fcm daemon: {method} {target}: {}", e.message);
            }
            let mut data = e.body().to_string().into_bytes();
            data.push(b'\n');
            Some((e.status, data, e.allow.clone()))
        }
    };
    if let Some((status, data, allow)) = json {
        let kept = keep
            .as_ref()
            .and_then(|k| k.ctx.gate.keep_alive().map(|slot| (slot, k.ctx.idle_secs)));
        io.set_deadline(Some(Instant::now() + WRITE_DEADLINE));
        let answer = response(status, &data, allow.as_deref(), kept.as_ref().map(|k| k.1));
        // The client may have gone away; nothing to do about it.
        let written = io.write_all(&answer).and_then(|()| io.flush()).is_ok();
        if let (true, Some((slot, _)), Some(k)) = (written, kept, keep) {
            io.set_deadline(None);
            k.ctx.handback.keep(opened(io, k.rest), slot);
            return;
        }
    }
    io.close_tls();
    let _ = io.socket().shutdown(Shutdown::Both);
}

fn error_response(e: &ApiError) -> Vec<u8> {
    let mut data = e.body().to_string().into_bytes();
    data.push(b'\n');
    response(e.status, &data, e.allow.as_deref(), None)
}

/// Answers early (an error before the request was whole), then closes
/// without resetting the connection.
fn answer_and_close(io: &mut dyn Transport, e: &ApiError) {
    io.set_deadline(Some(Instant::now() + LINGER));
    let _ = io.write_all(&error_response(e));
    io.close_tls();
    let sock = io.socket();
    let _ = sock.shutdown(Shutdown::Write);
    linger(sock);
}

/// Drains a bounded amount of unread input for a bounded time: unread
/// input makes close() send a reset, which can discard the answer before
/// the client reads it.
fn linger(sock: &TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < 256 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*sock).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
