//! The API port's door, run by its poller without blocking: the request
//! head as it arrives, its route, the token; then the request leaves the
//! poller with a slot of the [`Gate`](super::Gate): a JSON request whose
//! body came with its head goes straight to the workers' queue, the others
//! (a body still to read, a stream, an upgraded exec) get a thread.

use std::sync::Arc;
use std::sync::mpsc::TrySendError;
use std::thread;
use std::time::Instant;

use super::message::{Head, HeadError, MAX_HEAD, parse_head};
use super::streams::{exec_stream, transfer};
use super::{
    BODY_DEADLINE, Ctx, Job, Keep, Transport, answer_and_close, error_response, opened, transport,
};
use crate::daemon::api::{self, ApiError, Route};
use crate::daemon::auth::{TOKEN_HINT, bearer, token_matches};
use crate::daemon::gate::Slot;
use crate::daemon::poller::{Door, Opened, Refused, Step};

pub(super) struct HttpDoor {
    ctx: Arc<Ctx>,
}

impl HttpDoor {
    pub(super) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

/// What an authorised request is.
enum Kind {
    /// A streamed exec (`Upgrade: fcm-exec/1`) on this VM.
    Exec(String),
    /// A file transfer.
    Transfer,
    /// `GET /events`, of one VM or all.
    Events(Option<String>),
    /// A JSON request for the workers.
    Json,
}

fn answer(e: &ApiError) -> Step {
    Step::Answer(error_response(e))
}

fn too_many_requests() -> Vec<u8> {
    error_response(
        &ApiError::new(503, "the daemon is serving too many requests")
            .with_hint("try again in a moment"),
    )
}

impl Door for HttpDoor {
    fn max_input(&self) -> usize {
        MAX_HEAD
    }

    fn step(&self, input: &[u8], eof: bool) -> Step {
        let error = match parse_head(input) {
            Ok(Some((head, len))) => return self.admit(head, len),
            Ok(None) if !eof => return Step::More,
            Ok(None) if input.is_empty() => HeadError::Closed,
            Ok(None) => HeadError::Malformed("connection closed mid-request".into()),
            Err(e) => e,
        };
        match error.answer() {
            Some((status, message)) => answer(&ApiError::new(status, message)),
            None => Step::Close,
        }
    }

    fn late(&self) -> Option<Vec<u8>> {
        let (status, message) = HeadError::Timeout.answer()?;
        Some(error_response(&ApiError::new(status, message)))
    }

    fn not_tls(&self) -> Vec<u8> {
        error_response(
            &ApiError::new(400, "this port speaks TLS (HTTPS), not plain HTTP")
                .with_hint("use https://, e.g. FCM_HOST=https://<host>:7777"),
        )
    }

    fn pushed_out(&self) -> Vec<u8> {
        error_response(
            &ApiError::new(503, "too many unauthenticated connections")
                .with_hint("try again in a moment"),
        )
    }
}

impl HttpDoor {
    /// A whole head: its route and its token decide.
    fn admit(&self, head: Head, len: usize) -> Step {
        let ctx = &self.ctx;
        // The E2B API's requests (by path or sandbox headers) first.
        if let Some(step) = super::e2b::admit(ctx, &head, len) {
            return step;
        }
        // The web console's files and its terminal WebSocket.
        if let Some(step) = super::ui::admit(ctx, &head, len) {
            return step;
        }
        let route = match api::route(&head.method, &head.target) {
            Ok(r) => r,
            Err(e) => return answer(&e),
        };
        let upgrade = head.has_token("Connection", "upgrade")
            && head
                .header("Upgrade")
                .is_some_and(|u| u.trim().eq_ignore_ascii_case(crate::wire::exec::PROTOCOL));
        let kind = match &route {
            Route::Exec(vm) if upgrade => Kind::Exec(vm.clone()),
            Route::Events(vm) => Kind::Events(vm.clone()),
            r if r.streams() => Kind::Transfer,
            _ => Kind::Json,
        };
        let streams = !matches!(kind, Kind::Json);
        let slot = if route == Route::Health {
            ctx.gate.open()
        } else {
            match bearer(head.header("Authorization")) {
                Some(t) if token_matches(t, &ctx.token) && streams => ctx.gate.streaming(),
                Some(t) if token_matches(t, &ctx.token) => ctx.gate.authenticated(),
                Some(t)
                    if matches!(route, Route::WakeVm(_))
                        && ctx
                            .wake_token
                            .as_deref()
                            .is_some_and(|w| token_matches(t, w)) =>
                {
                    ctx.gate.authenticated()
                }
                // The metrics token opens `GET /metrics` and nothing else.
                Some(t)
                    if route == Route::Metrics
                        && ctx
                            .metrics_token
                            .as_deref()
                            .is_some_and(|w| token_matches(t, w)) =>
                {
                    ctx.gate.authenticated()
                }
                Some(_) => {
                    return answer(&ApiError::new(401, "invalid token").with_hint(TOKEN_HINT));
                }
                None => {
                    return answer(
                        &ApiError::new(401, "missing bearer token").with_hint(TOKEN_HINT),
                    );
                }
            }
        };
        let slot = match slot {
            Ok(s) => s,
            Err(busy) => {
                return answer(
                    &ApiError::new(503, busy.message()).with_hint("try again in a moment"),
                );
            }
        };
        let ctx = Arc::clone(ctx);
        Step::Pass(Box::new(move |o| {
            dispatch(&ctx, o, head, len, route, kind, slot)
        }))
    }
}

/// Runs `f` on a thread of its own; the connection ends if there is none.
pub(super) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        eprintln!("fcm daemon: API port: request: no thread: {e}");
    }
}

/// An authorised request, out of the poller (on its thread: nothing here
/// blocks). An `Err` is an answer for the poller to say.
fn dispatch(
    ctx: &Arc<Ctx>,
    o: Opened,
    head: Head,
    len: usize,
    route: Route,
    kind: Kind,
    slot: Slot,
) -> Result<(), Box<Refused>> {
    let Opened {
        sock,
        tls,
        mut input,
    } = o;
    let early = input.split_off(len.min(input.len()));
    let mut io = transport(sock, tls);
    let m = Arc::clone(&ctx.m);
    match kind {
        // In a cluster, another host's VM's stream is relayed there.
        Kind::Exec(vm) => spawn("fcm-http-exec", move || {
            if let Some((io, early)) = super::relay::unless_elsewhere(io, &m, &route, &head, early)
            {
                exec_stream(io, &m, &vm, &head, early);
            }
            drop(slot);
        }),
        Kind::Transfer => spawn("fcm-http-stream", move || {
            if let Some((io, early)) = super::relay::unless_elsewhere(io, &m, &route, &head, early)
            {
                transfer(io, &m, route, &head, early);
            }
            drop(slot);
        }),
        Kind::Events(vm) => spawn("fcm-http-events", move || {
            super::events::serve(io, &m, vm);
            drop(slot);
        }),
        Kind::Json => match head.body_in(&early) {
            Some(n) => {
                let mut body = early;
                let rest = body.split_off(n);
                let job = job(ctx, io, &head, route, body, rest, slot);
                if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                    ctx.queue.try_send(job)
                {
                    return Err(Box::new(Refused {
                        opened: opened(job.io, Vec::new()),
                        words: too_many_requests(),
                    }));
                }
            }
            None => {
                let ctx = Arc::clone(ctx);
                spawn("fcm-http-body", move || {
                    io.set_deadline(Some(Instant::now() + BODY_DEADLINE));
                    let read = super::message::read_body(&mut io, &head, early, route.body_limit());
                    let (body, rest) = match read {
                        Ok(b) => b,
                        Err((status, message)) => {
                            return answer_and_close(io.as_mut(), &ApiError::new(status, message));
                        }
                    };
                    let job = job(&ctx, io, &head, route, body, rest, slot);
                    if let Err(TrySendError::Full(mut job) | TrySendError::Disconnected(mut job)) =
                        ctx.queue.try_send(job)
                    {
                        answer_and_close(
                            job.io.as_mut(),
                            &ApiError::new(503, "the daemon is serving too many requests")
                                .with_hint("try again in a moment"),
                        );
                    }
                });
            }
        },
    }
    Ok(())
}

fn job(
    ctx: &Arc<Ctx>,
    io: Box<dyn Transport>,
    head: &Head,
    route: Route,
    body: Vec<u8>,
    rest: Vec<u8>,
    slot: Slot,
) -> Job {
    Job {
        io,
        route,
        body,
        method: head.method.clone(),
        target: head.target.clone(),
        forwarded: head
            .header(crate::daemon::cluster::FORWARDED_HEADER)
            .is_some(),
        keep: head.keeps_alive().then(|| Keep {
            ctx: Arc::clone(ctx),
            rest,
        }),
        _slot: slot,
    }
}
