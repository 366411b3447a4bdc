//! The requests that are streams, each on a thread of its own with a
//! slot of the streams' budget, ending their connection: file transfers
//! (bodies streamed in or out) and the streamed exec (its JSON body, then
//! the upgrade).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::exec;
use super::message::{Head, read_body};
use super::transfer::BodyReader;
use super::{
    BODY_DEADLINE, Transport, WRITE_DEADLINE, answer_and_close, error_response, finish, guarded,
    linger,
};
use crate::daemon::api::{self, ApiError, Route};
use crate::daemon::guest::TRANSFER_TIMEOUT;
use crate::daemon::manager::Manager;
use crate::wire::api::ExecRequest;
use crate::wire::stream::keepalive;

/// After a streamed exec's timeout, how long its stream may still take
/// (the guest's kill, the last output, the exit).
const EXEC_GRACE: Duration = Duration::from_secs(60);
/// How much of a refused upload is read (and dropped) before answering.
const STREAM_DRAIN_MAX: u64 = 16 << 20;

/// A file transfer, on a thread of its own: the body streamed in or
/// out, each read and write bounded by the transfer's deadline.
pub(super) fn transfer(
    mut io: Box<dyn Transport>,
    m: &std::sync::Arc<Manager>,
    route: Route,
    head: &Head,
    early: Vec<u8>,
) {
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
    finish(io, &method, &target, result, None);
}

/// A streamed exec, on a thread of its own: its JSON body, then the
/// upgrade (`exec::serve`).
pub(super) fn exec_stream(
    mut io: Box<dyn Transport>,
    m: &Manager,
    vm: &str,
    head: &Head,
    early: Vec<u8>,
) {
    io.set_deadline(Some(Instant::now() + BODY_DEADLINE));
    let body = match read_body(
        &mut io,
        head,
        early,
        Route::Exec(String::new()).body_limit(),
    ) {
        Ok((b, _)) => b,
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
