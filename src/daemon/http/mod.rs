//! The HTTP transport of the API: a small HTTP/1.1 server of fcm's own on
//! a std `TcpListener`, `httparse` and threads, bounded everywhere
//! (tiny_http, used before, has no connection cap, header limit or read
//! timeout, and cannot be given them from outside):
//! - admission through a [`Gate`]: a cap on connections that have not
//!   shown the token, per port and per peer address, and a separate cap on
//!   authorised requests;
//! - one deadline from accept to the end of the request head, TLS
//!   handshake included (`limits.http_pre_auth_secs`), then one for the
//!   body ([`BODY_DEADLINE`]) and one for the response ([`WRITE_DEADLINE`]);
//! - at most [`message::MAX_HEAD`] bytes and [`message::MAX_HEADERS`]
//!   headers (400 above), a JSON body of at most the route's limit (`api::MAX_BODY`,
//!   exec 12 MiB; 413 above); file transfers are streamed both ways, each
//!   read and write within [`STREAM_IDLE`];
//! - one request per connection (`Connection: close`);
//! - a thread per connection until its request is authorised and read,
//!   then a fixed pool of [`WORKERS`] runs it, fed by a bounded queue (503
//!   when full);
//! - **streams** (a streamed exec, file transfers) are not short requests:
//!   they run on their connection's own thread, with their own cap
//!   (`limits.http_streams`), never on a worker, so a hundred open streams
//!   leave every worker to `ls`. A quiet stream is not cut for being quiet:
//!   TCP keepalive tells a live peer from a gone one, and each stream's
//!   own deadline (the exec's timeout, [`TRANSFER_TIMEOUT`]) bounds it.
//!
//! `api` keeps the routes, the handlers and the status mapping; this
//! module only moves bytes. TLS (rustls) when the daemon's ports speak it.

mod exec;
mod message;
mod transfer;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::api::{self, Answer, ApiError, Route};
use super::auth::{TOKEN_HINT, bearer, token_matches};
use super::gate::{Authed, Gate, GateLimits, PreAuth};
use super::guest::TRANSFER_TIMEOUT;
use super::lock;
use super::manager::Manager;
use super::sessions::Sessions;
use crate::config::Limits;
use crate::wire::api::ExecRequest;
use crate::wire::stream::keepalive;
use crate::wire::tls::{DeadlineStream, Link, TlsLink, handshake};
use message::{Head, read_body, read_head, response};
use transfer::{BodyReader, write_stream};

/// Requests run at once.
pub const WORKERS: usize = 16;
/// Time an authorised client has to send its body.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// Time a client has to take a JSON response.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// After a streamed exec's timeout, how long its stream may still take
/// (the guest's kill, the last output, the exit).
const EXEC_GRACE: Duration = Duration::from_secs(60);
/// How much of a refused upload is read (and dropped) before answering.
const STREAM_DRAIN_MAX: u64 = 16 << 20;
/// After an early answer, how long unread input is drained so that the
/// close does not reset the connection before the answer is read.
const LINGER: Duration = Duration::from_secs(1);

/// A connection's byte stream, plain or TLS, with a movable deadline.
trait Transport: Read + Write + Send {
    fn set_deadline(&mut self, d: Option<Instant>);
    fn socket(&self) -> &TcpStream;
    /// Ends the TLS session, if any (close_notify).
    fn close_tls(&mut self) {}
    /// The connection as a link that one thread reads while others write
    /// (an upgraded stream).
    fn into_link(self: Box<Self>) -> Link;
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
}

/// An authorised request with its JSON body, for a worker.
struct Job {
    io: Box<dyn Transport>,
    route: Route,
    body: Vec<u8>,
    method: String,
    target: String,
    _slot: Authed,
}

/// What every connection thread needs.
struct Ctx {
    token: Arc<String>,
    /// The token that may only wake VMs (Caddy's, for idle sleep).
    wake_token: Option<Arc<String>>,
    tls: Option<Arc<ServerConfig>>,
    pre_auth: Duration,
    queue: SyncSender<Job>,
    /// For streams, which run on their connection's thread.
    m: Arc<Manager>,
}

/// Serves the API on `listener` for ever (the accept loop only backs off
/// on errors); TLS when `tls` is given.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    limits: &Limits,
    m: Arc<Manager>,
    s: Arc<Sessions>,
    token: Arc<String>,
    wake_token: Option<Arc<String>>,
) {
    let gate = Gate::new(GateLimits {
        total: limits.pre_auth_connections,
        per_peer: limits.pre_auth_per_peer,
        authed: limits.http_requests,
        streams: limits.http_streams,
    });
    let (queue, jobs) = sync_channel::<Job>(limits.http_requests);
    let jobs = Arc::new(Mutex::new(jobs));
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
        tls,
        pre_auth: Duration::from_secs(limits.http_pre_auth_secs),
        queue,
        m,
    });
    let plain = ctx.tls.is_none();
    gate.accept_loop(
        &listener,
        "API port",
        "fcm-http-conn",
        |r| plain.then(|| error_response(&ApiError::new(503, r.message()))),
        move |conn, slot| connection(conn, slot, &ctx),
    );
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

fn run(job: Job, m: &Manager, s: &Sessions) {
    let Job {
        io,
        route,
        body,
        method,
        target,
        _slot,
    } = job;
    let result = guarded(|| api::handle(m, s, route, &body)).map(Answer::Json);
    finish(io, &method, &target, result);
}

/// Writes a handler's answer (JSON, a byte stream, or an error), then
/// ends the connection.
fn finish(
    mut io: Box<dyn Transport>,
    method: &str,
    target: &str,
    result: Result<Answer, ApiError>,
) {
    match result {
        Ok(Answer::Json(r)) => {
            let mut data = r.body.to_string().into_bytes();
            data.push(b'\n');
            io.set_deadline(Some(Instant::now() + WRITE_DEADLINE));
            // The client may have gone away; nothing to do about it.
            let _ = io.write_all(&response(r.status, &data, None));
        }
        Ok(Answer::Bytes {
            content_type,
            length,
            mut body,
        }) => {
            // A client that goes away mid-transfer ends it; nothing to report.
            let _ = write_stream(&mut io, content_type, length, &mut *body);
        }
        Err(e) => {
            if e.status >= 500 {
                eprintln!("fcm daemon: {method} {target}: {}", e.message);
            }
            io.set_deadline(Some(Instant::now() + WRITE_DEADLINE));
            let _ = io.write_all(&error_response(&e));
        }
    }
    io.close_tls();
    let _ = io.socket().shutdown(Shutdown::Both);
}

/// A file transfer, on its connection's thread: the body streamed in or
/// out, each read and write bounded by the transfer's deadline.
fn transfer(mut io: Box<dyn Transport>, m: &Manager, route: Route, head: &Head, early: Vec<u8>) {
    let (method, target) = (head.method.clone(), head.target.clone());
    io.set_deadline(None);
    let sock = io.socket();
    keepalive(sock, Duration::from_secs(20), Duration::from_secs(5));
    let _ = sock.set_read_timeout(Some(TRANSFER_TIMEOUT));
    let _ = sock.set_write_timeout(Some(TRANSFER_TIMEOUT));
    let result = match BodyReader::new(&mut io, head, early) {
        Err((status, message)) => Err(ApiError::new(status, message)),
        Ok(mut reader) => {
            let answer = guarded(|| api::stream(m, route, &mut reader));
            if answer.is_err() {
                // Refused before the upload was read: read a bounded part
                // of it, so that a client still sending can read the answer.
                let _ = io::copy(&mut (&mut reader).take(STREAM_DRAIN_MAX), &mut io::sink());
            }
            answer
        }
    };
    finish(io, &method, &target, result);
}

/// A streamed exec, on its connection's thread: its JSON body, then the
/// upgrade (`exec::serve`).
fn exec_stream(mut io: Box<dyn Transport>, m: &Manager, vm: &str, head: &Head, early: Vec<u8>) {
    io.set_deadline(Some(Instant::now() + BODY_DEADLINE));
    let body = match read_body(
        &mut io,
        head,
        early,
        Route::Exec(String::new()).body_limit(),
    ) {
        Ok(b) => b,
        Err((status, message)) => {
            return answer_and_close(io.as_mut(), &ApiError::new(status, message));
        }
    };
    let req: ExecRequest = match api::parse_body(&body) {
        Ok(r) => r,
        Err(e) => return answer_and_close(io.as_mut(), &e),
    };
    io.set_deadline(None);
    let link = io.into_link();
    let served = guarded(|| exec::serve(link.clone(), m, vm, &req, EXEC_GRACE));
    if let Err(e) = served {
        if e.status >= 500 {
            eprintln!("fcm daemon: POST {}: {}", head.target, e.message);
        }
        let mut w = link.clone();
        let sock = link.sock();
        let _ = sock.set_write_timeout(Some(WRITE_DEADLINE));
        let _ = w.write_all(&error_response(&e));
        link.close_notify();
        let _ = sock.shutdown(Shutdown::Write);
        linger(sock);
    }
}

fn error_response(e: &ApiError) -> Vec<u8> {
    let mut data = e.body().to_string().into_bytes();
    data.push(b'\n');
    response(e.status, &data, e.allow.as_deref())
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

/// The first byte the client sends, without taking it, by the deadline.
fn first_byte(sock: &TcpStream, deadline: Instant) -> Option<u8> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
        return None;
    }
    let mut b = [0u8; 1];
    match sock.peek(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// The TLS record type of a handshake: what a TLS client sends first.
const TLS_HANDSHAKE: u8 = 0x16;

/// One connection up to its authorised request: TLS, head, token, body;
/// then the request goes to the workers.
fn connection(conn: TcpStream, slot: PreAuth, ctx: &Ctx) {
    let deadline = Instant::now() + ctx.pre_auth;
    let _ = conn.set_nodelay(true);
    let mut io: Box<dyn Transport> = match &ctx.tls {
        None => Box::new(DeadlineStream::new(conn, Some(deadline))),
        Some(cfg) => {
            match first_byte(&conn, deadline) {
                Some(TLS_HANDSHAKE) => {}
                Some(_) => {
                    // Plain HTTP on the TLS port: say so in plain HTTP.
                    let mut plain = DeadlineStream::new(conn, None);
                    answer_and_close(
                        &mut plain,
                        &ApiError::new(400, "this port speaks TLS (HTTPS), not plain HTTP")
                            .with_hint("use https://, e.g. FCM_HOST=https://<host>:7777"),
                    );
                    return;
                }
                None => return,
            }
            let Ok(mut tls) = ServerConnection::new(Arc::clone(cfg)) else {
                return;
            };
            let mut ds = DeadlineStream::new(conn, Some(deadline));
            if handshake(&mut tls, &mut ds).is_err() {
                return;
            }
            Box::new(StreamOwned::new(tls, ds))
        }
    };
    let (head, early) = match read_head(&mut io) {
        Ok(h) => h,
        Err(e) => {
            if let Some((status, message)) = e.answer() {
                answer_and_close(io.as_mut(), &ApiError::new(status, message));
            }
            return;
        }
    };
    let early_answer = |io: &mut Box<dyn Transport>, e: ApiError| answer_and_close(io.as_mut(), &e);
    let route = match api::route(&head.method, &head.target) {
        Ok(r) => r,
        Err(e) => return early_answer(&mut io, e),
    };
    let upgrade = head.has_token("Connection", "upgrade")
        && head
            .header("Upgrade")
            .is_some_and(|u| u.trim().eq_ignore_ascii_case(crate::wire::exec::PROTOCOL));
    let exec_vm = match &route {
        Route::Exec(vm) if upgrade => Some(vm.clone()),
        _ => None,
    };
    let streams = exec_vm.is_some() || route.streams();
    let slot = if route == Route::Health {
        slot.open()
    } else {
        match bearer(head.header("Authorization")) {
            Some(t) if token_matches(t, &ctx.token) && streams => slot.streaming(),
            Some(t) if token_matches(t, &ctx.token) => slot.authenticated(),
            Some(t)
                if matches!(route, Route::WakeVm(_))
                    && ctx
                        .wake_token
                        .as_deref()
                        .is_some_and(|w| token_matches(t, w)) =>
            {
                slot.authenticated()
            }
            Some(_) => {
                return early_answer(
                    &mut io,
                    ApiError::new(401, "invalid token").with_hint(TOKEN_HINT),
                );
            }
            None => {
                return early_answer(
                    &mut io,
                    ApiError::new(401, "missing bearer token").with_hint(TOKEN_HINT),
                );
            }
        }
    };
    let slot = match slot {
        Ok(s) => s,
        Err(r) => {
            return early_answer(
                &mut io,
                ApiError::new(503, r.message()).with_hint("try again in a moment"),
            );
        }
    };
    // Streams stay on this thread, with their slot, to their end.
    if let Some(vm) = exec_vm {
        exec_stream(io, &ctx.m, &vm, &head, early);
        drop(slot);
        return;
    }
    if route.streams() {
        transfer(io, &ctx.m, route, &head, early);
        drop(slot);
        return;
    }
    io.set_deadline(Some(Instant::now() + BODY_DEADLINE));
    let body = match read_body(&mut io, &head, early, route.body_limit()) {
        Ok(b) => b,
        Err((status, message)) => {
            return early_answer(&mut io, ApiError::new(status, message));
        }
    };
    let job = Job {
        io,
        route,
        body,
        method: head.method,
        target: head.target,
        _slot: slot,
    };
    match ctx.queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(mut job) | TrySendError::Disconnected(mut job)) => {
            answer_and_close(
                job.io.as_mut(),
                &ApiError::new(503, "the daemon is serving too many requests")
                    .with_hint("try again in a moment"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_socket_reports_the_first_byte() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        c.write_all(b"\x16\x03").expect("write");
        assert_eq!(
            first_byte(&s, Instant::now() + Duration::from_secs(2)),
            Some(TLS_HANDSHAKE)
        );
        drop(c);
        let (_s2, _) = (
            TcpStream::connect(l.local_addr().expect("addr")).expect("connect"),
            (),
        );
        let (s2, _) = l.accept().expect("accept");
        let t0 = Instant::now();
        assert_eq!(
            first_byte(&s2, Instant::now() + Duration::from_millis(200)),
            None
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
