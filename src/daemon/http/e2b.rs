//! The door's part for the E2B API (`daemon::e2b`): a request it names
//! (by path or sandbox headers) is admitted on its E2B key, takes a slot
//! of the streams' budget (an envd request may stream for long), and is
//! served on a thread of its own, its body streamed; the connection ends
//! after the answer.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

use super::message::Head;
use super::transfer::BodyReader;
use super::{Ctx, Transport};
use crate::daemon::e2b::{self, Call, Refusal, Request};
use crate::daemon::guest::TRANSFER_TIMEOUT;
use crate::daemon::poller::Step;
use crate::wire::stream::keepalive;

/// An E2B request, if this head is one: what the poller does with it.
pub(super) fn admit(ctx: &Arc<Ctx>, head: &Head, len: usize) -> Option<Step> {
    let call = e2b::classify(&head.target, head.headers())?;
    if let Err(r) = ctx.e2b.admits(&call, head.headers()) {
        return Some(Step::Answer(e2b::refusal_response(&r)));
    }
    let slot = match ctx.gate.streaming() {
        Ok(s) => s,
        Err(busy) => {
            return Some(Step::Answer(e2b::refusal_response(&Refusal {
                status: 503,
                message: busy.message().to_string(),
            })));
        }
    };
    let req = Request {
        method: head.method.clone(),
        target: head.target.clone(),
        headers: head.headers().to_vec(),
    };
    let head = head.clone();
    let ctx = Arc::clone(ctx);
    Some(Step::Pass(Box::new(move |o| {
        let crate::daemon::poller::Opened {
            sock,
            tls,
            mut input,
        } = o;
        let early = input.split_off(len.min(input.len()));
        let io = super::transport(sock, tls);
        super::door::spawn("fcm-e2b", move || {
            serve(&ctx, io, &head, early, call, &req);
            drop(slot);
        });
        Ok(())
    })))
}

/// The connection, read (the body) and written (the answer) in turns
/// by one thread: each read or write borrows it for that call only.
struct Shared<'a>(&'a RefCell<Box<dyn Transport>>);

impl Read for Shared<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(b)
    }
}

impl Write for Shared<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

fn serve(
    ctx: &Ctx,
    mut io: Box<dyn Transport>,
    head: &Head,
    early: Vec<u8>,
    call: Call,
    req: &Request,
) {
    io.set_deadline(None);
    let sock = io.socket();
    keepalive(sock, Duration::from_secs(20), Duration::from_secs(5));
    let _ = sock.set_read_timeout(Some(TRANSFER_TIMEOUT));
    let _ = sock.set_write_timeout(Some(TRANSFER_TIMEOUT));
    let conn = RefCell::new(io);
    {
        let mut input = Shared(&conn);
        let mut out = Shared(&conn);
        match BodyReader::new(&mut input, head, early) {
            Err((status, message)) => {
                let _ = out.write_all(&e2b::refusal_response(&Refusal { status, message }));
            }
            Ok(mut body) => {
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ctx.e2b.serve(call, req, &mut body, &mut out);
                }));
                if served.is_err() {
                    eprintln!(
                        "fcm daemon: E2B {} {}: the handler panicked (a bug)",
                        req.method, req.target
                    );
                }
            }
        }
    }
    let mut io = conn.into_inner();
    io.close_tls();
    let _ = io.socket().shutdown(Shutdown::Write);
    super::linger(io.socket());
}
