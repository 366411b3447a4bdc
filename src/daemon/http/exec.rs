//! The streamed exec (protocol: `wire::exec`): after the `101`, four
//! threads of the connection move bytes between the client and the
//! program: stdout and stderr (each read a chunk at a time and written as
//! a frame, so a slow client slows the program instead of filling memory),
//! the client's frames (stdin, resizes, signals), and a heartbeat on a
//! quiet stream. The connection's own thread waits for the end and sends
//! the exit. A client that goes away ends the program.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::api::ApiError;
use crate::daemon::guest::Control;
use crate::daemon::lock;
use crate::daemon::manager::Manager;
use crate::wire::api::{ErrorBody, ExecRequest};
use crate::wire::exec::{self as proto, ExecExit};
use crate::wire::stream::keepalive;
use crate::wire::text::printable;
use crate::wire::tls::Link;

/// Output is read from the program this much at a time.
const CHUNK: usize = 64 * 1024;

/// The frames going to the client, one writer at a time; when the last
/// frame went, for the heartbeat.
struct Out {
    link: Mutex<(Link, Instant)>,
}

impl Out {
    fn send(&self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let mut g = lock(&self.link);
        proto::write_frame(&mut g.0, kind, payload)?;
        g.1 = Instant::now();
        Ok(())
    }
}

/// Answers the upgrade and runs the program to its end. Errors before
/// the start are ordinary HTTP answers (`Err`).
pub(super) fn serve(
    link: Link,
    m: &Manager,
    vm: &str,
    req: &ExecRequest,
    deadline_grace: Duration,
) -> Result<(), ApiError> {
    let (_rec, mut p) = m.exec_start(vm, req)?;
    let sock = link.sock();
    let _ = sock.set_nodelay(true);
    keepalive(sock, Duration::from_secs(20), Duration::from_secs(5));
    let _ = sock.set_read_timeout(None);
    // A client that takes no output may hold the program (as over ssh),
    // for as long as the program may run.
    let write_limit = req
        .timeout_secs
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t) + deadline_grace);
    let _ = sock.set_write_timeout(write_limit);
    let mut head = link.clone();
    let answered = head.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
            proto::PROTOCOL
        )
        .as_bytes(),
    );
    let control = p.control();
    if answered.is_err() {
        control.kill();
        return Ok(());
    }
    let out = Arc::new(Out {
        link: Mutex::new((link.clone(), Instant::now())),
    });
    let pump = |r: Option<Box<dyn Read + Send>>, kind: u8| {
        let (out, control) = (Arc::clone(&out), Arc::clone(&control));
        thread::Builder::new()
            .name("fcm-exec-out".into())
            .spawn(move || {
                let Some(mut r) = r else { return };
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if out.send(kind, &buf[..n]).is_err() {
                                // The client is gone: so is the program.
                                control.kill();
                                // Drain, so the program is not held.
                                let _ = io::copy(&mut r, &mut io::sink());
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })
    };
    let stdout = pump(p.stdout(), proto::STDOUT);
    let stderr = pump(p.stderr(), proto::STDERR);
    let input = {
        let (from, control, to) = (link.clone(), Arc::clone(&control), p.stdin());
        thread::Builder::new()
            .name("fcm-exec-in".into())
            .spawn(move || pump_input(from, to, &control))
    };
    let (stop, stopped) = channel::<()>();
    let beat = {
        let out = Arc::clone(&out);
        thread::Builder::new()
            .name("fcm-exec-beat".into())
            .spawn(move || {
                let every = Duration::from_secs(proto::HEARTBEAT_SECS);
                loop {
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let quiet = lock(&out.link).1.elapsed() >= every;
                    if quiet && out.send(proto::HEARTBEAT, b"").is_err() {
                        return;
                    }
                }
            })
    };
    for t in [stdout, stderr].into_iter().flatten() {
        let _ = t.join();
    }
    let end = p.wait();
    let _ = stop.send(());
    if let Ok(t) = beat {
        let _ = t.join();
    }
    let last: Result<(u8, Vec<u8>), _> = match end {
        Ok(exit) => serde_json::to_vec(&ExecExit {
            exit_code: exit.code,
            timed_out: exit.timed_out,
        })
        .map(|j| (proto::EXIT, j)),
        Err(e) => {
            let e = ApiError::from(crate::daemon::manager::ManagerError::from(e));
            serde_json::to_vec(&ErrorBody {
                error: printable(&e.message),
                status: e.status,
                hint: e.hint.as_deref().map(printable),
            })
            .map(|j| (proto::ERROR, j))
        }
    };
    if let Ok((kind, json)) = last {
        let _ = out.send(kind, &json);
    }
    link.close_notify();
    let _ = link.sock().shutdown(Shutdown::Both);
    control.kill();
    if let Ok(t) = input {
        let _ = t.join();
    }
    Ok(())
}

/// The client's frames → the program: stdin, its end, resizes, signals.
/// The connection's end (or a protocol error) ends the program.
fn pump_input(
    mut from: Link,
    mut to: Option<Box<dyn io::Write + Send>>,
    control: &Arc<dyn Control>,
) {
    let mut buf = Vec::new();
    loop {
        match proto::read_frame(&mut from, &mut buf) {
            Ok(Some(proto::STDIN)) => {
                if let Some(w) = to.as_mut()
                    && w.write_all(&buf).and_then(|_| w.flush()).is_err()
                {
                    // The program closed its stdin: what follows is dropped.
                    to = None;
                }
            }
            Ok(Some(proto::STDIN_EOF)) => to = None,
            Ok(Some(proto::RESIZE)) if buf.len() == 4 => {
                let cols = u16::from_be_bytes([buf[0], buf[1]]);
                let rows = u16::from_be_bytes([buf[2], buf[3]]);
                control.resize(cols.clamp(2, 1000), rows.clamp(2, 1000));
            }
            Ok(Some(proto::SIGNAL)) if buf.len() == 1 && (1..=64).contains(&buf[0]) => {
                control.signal(i32::from(buf[0]));
            }
            // The end of the connection, a broken one, or garbage.
            _ => {
                control.kill();
                return;
            }
        }
    }
}
