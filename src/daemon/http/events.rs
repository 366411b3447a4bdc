//! `GET /events`: the daemon's events as NDJSON, one object per line
//! (docs/metrics.md), on a thread of its own with a slot of the streams'
//! budget, until the client goes. A heartbeat line once subscribed, then every
//! [`HEARTBEAT`] when nothing happens, each write within
//! [`EVENT_WRITE_DEADLINE`]: a client that went away, or stopped reading,
//! is noticed and its subscription ends.

use std::io::Write;
use std::time::Duration;

use super::{Transport, answer_and_close};
use crate::daemon::api::ApiError;
use crate::daemon::events::{Full, Next, SUBSCRIBERS, now_rfc3339};
use crate::daemon::manager::Manager;
use crate::wire::stats::Event;
use crate::wire::stream::keepalive;

/// A line every this often when nothing happens.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long one line may take to leave.
const EVENT_WRITE_DEADLINE: Duration = Duration::from_secs(30);

pub(super) fn serve(mut io: Box<dyn Transport>, m: &Manager, vm: Option<String>) {
    // `?vm=` names a VM that exists (404 otherwise), by name or id.
    let filter = match vm.map(|v| m.record_now(&v)).transpose() {
        Ok(r) => r.map(|r| r.name.to_string()),
        Err(e) => return answer_and_close(io.as_mut(), &e.into()),
    };
    let sub = match m.telemetry().hub.subscribe(filter) {
        Ok(s) => s,
        Err(Full) => {
            return answer_and_close(
                io.as_mut(),
                &ApiError::new(
                    503,
                    format!("{SUBSCRIBERS} clients already follow the events"),
                )
                .with_hint("try again later, or end another fcm events"),
            );
        }
    };
    io.set_deadline(None);
    let sock = io.socket();
    keepalive(sock, Duration::from_secs(20), Duration::from_secs(5));
    let _ = sock.set_write_timeout(Some(EVENT_WRITE_DEADLINE));
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if io
        .write_all(head.as_bytes())
        .and_then(|()| io.flush())
        .is_err()
    {
        return;
    }
    // A heartbeat first: the client knows it is subscribed (nothing it
    // does after this line is missed).
    let mut first = true;
    loop {
        let next = if std::mem::take(&mut first) {
            Next::Idle
        } else {
            sub.next(HEARTBEAT)
        };
        let ev = match next {
            Next::Event(e) => *e,
            Next::Lagged(n) => Event {
                kind: "lagged".into(),
                time: now_rfc3339(),
                missed: Some(n),
                ..Event::default()
            },
            Next::Idle => Event {
                kind: "heartbeat".into(),
                time: now_rfc3339(),
                ..Event::default()
            },
        };
        let Ok(mut line) = serde_json::to_vec(&ev) else {
            continue;
        };
        line.push(b'\n');
        let chunk = [
            format!("{:x}\r\n", line.len()).into_bytes(),
            line,
            b"\r\n".to_vec(),
        ]
        .concat();
        if io.write_all(&chunk).and_then(|()| io.flush()).is_err() {
            break;
        }
    }
    io.close_tls();
    let _ = io.socket().shutdown(std::net::Shutdown::Both);
}
