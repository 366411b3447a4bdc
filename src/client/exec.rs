//! `fcm exec <vm> [-i] [-t] -- cmd...`: a command in the guest, its output
//! streamed as it comes (`POST /vms/{vm}/exec` upgraded to `fcm-exec/1`,
//! frames in `wire::exec`). stdout and stderr stay apart and byte-exact
//! to a file or a pipe; on a terminal, control characters from the guest
//! are shown escaped, except with `-t`, where the guest owns the terminal.
//! stdin is streamed with `-i`, or whenever it is not a terminal; `-t`
//! runs the command on a terminal in the guest (raw mode here, resizes
//! followed, Ctrl-C reaching the guest). The exit status is the command's.
//! `--json` asks for the buffered form (`ExecResponse`).

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::api::{Client, ClientError, admitted, daemon_authority, seg};
use super::terminal::{RawMode, connect, follow_size, term_size};
use super::{Failure, out_json};
use crate::cli::ExecArgs;
use crate::wire::api::{ErrorBody, ExecRequest, ExecResponse};
use crate::wire::exec::{self as proto, ExecExit};
use crate::wire::stream::keepalive;
use crate::wire::text::visible;
use crate::wire::tls::Link;

/// The daemon's limits (documented in docs/openapi.yaml).
const STDIN_MAX: usize = 8 << 20;
const DEFAULT_TIMEOUT: u64 = 60;
/// Exit status of a command killed at its timeout (as timeout(1) uses).
pub const TIMED_OUT: i32 = 124;
/// With no frame (not even a heartbeat) for this long, the daemon is gone.
const SILENCE: Duration = Duration::from_secs(proto::HEARTBEAT_SECS * 4);

pub(super) fn exec(a: ExecArgs) -> Result<i32, Failure> {
    if a.json {
        return buffered(a);
    }
    streamed(a)
}

/// `-e NAME=VALUE` arguments as a map.
fn env_of(a: &ExecArgs) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    a.env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Failure::usage(
                format!("-e takes NAME=VALUE, not {kv:?}"),
                Some("e.g. fcm exec -e RUST_LOG=debug vm -- cmd".into()),
            )),
        })
        .collect()
}

/// The buffered form: one JSON answer once the command has ended.
fn buffered(a: ExecArgs) -> Result<i32, Failure> {
    let c = Client::from_env()?;
    let stdin = read_stdin()?;
    let mut req = ExecRequest {
        env: env_of(&a)?,
        cwd: a.workdir.clone(),
        user: a.user.clone(),
        cmd: a.command,
        timeout_secs: a.timeout,
        ..Default::default()
    };
    match stdin.map(String::from_utf8) {
        Some(Ok(text)) => req.stdin = Some(text),
        Some(Err(bytes)) => req.stdin_base64 = Some(B64.encode(bytes.into_bytes())),
        None => {}
    }
    let wait = Duration::from_secs(a.timeout.unwrap_or(DEFAULT_TIMEOUT) + 60);
    let r: ExecResponse = c.post_within(&format!("/vms/{}/exec", seg(&a.vm)), &req, wait)?;
    out_json(&r)?;
    if r.truncated {
        eprintln!("warning: output was cut at 1 MiB per stream");
    }
    if r.timed_out {
        timed_out(a.timeout);
        return Ok(TIMED_OUT);
    }
    Ok(r.exit_code)
}

fn timed_out(timeout: Option<u64>) {
    eprintln!(
        "error: the command did not finish within {} s and was killed",
        timeout.unwrap_or(DEFAULT_TIMEOUT)
    );
    eprintln!(
        "hint: give it more time with --timeout SECS (at most 3600), or 0 for none with -i or -t"
    );
}

/// All of stdin when it is not a terminal (at most 8 MiB), else nothing.
fn read_stdin() -> Result<Option<Vec<u8>>, Failure> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(STDIN_MAX as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::new(format!("could not read standard input: {e}"), None))?;
    if buf.len() > STDIN_MAX {
        return Err(Failure::new(
            "standard input is larger than 8 MiB (with --json)",
            Some("leave out --json to stream it".into()),
        ));
    }
    Ok((!buf.is_empty()).then_some(buf))
}

/// [`upgrade`], tried again while the daemon turns it away at the door.
fn admitted_upgrade(c: &Client, path: &str, req: &ExecRequest) -> Result<Link, Failure> {
    let mut other = None;
    let r = admitted(|| match upgrade(c, path, req) {
        Ok(l) => Ok(Some(l)),
        Err(Refusal::Api(e)) => Err(e),
        // Cut before any answer: the daemon turned it away at the door
        // while it was still being sent; tried again like a 503.
        Err(Refusal::Cut(why)) => Err(ClientError::Api {
            status: 503,
            message: format!("too many connections at once ({why})"),
            hint: Some("try again in a moment".into()),
        }),
        Err(Refusal::Other(f)) => {
            other = Some(f);
            Ok(None)
        }
    });
    match (r, other) {
        (Ok(Some(l)), _) => Ok(l),
        (Err(e), _) => Err(e.into()),
        (Ok(None), Some(f)) => Err(f),
        (Ok(None), None) => Err(Failure::new("the streamed exec did not start", None)),
    }
}

/// Why [`upgrade`] failed: the daemon's answer, a connection cut before
/// any answer, or anything else.
enum Refusal {
    Api(ClientError),
    Cut(String),
    Other(Failure),
}

impl From<Failure> for Refusal {
    fn from(f: Failure) -> Self {
        Self::Other(f)
    }
}

/// Opens the streamed exec: the request, then the daemon's `101`, or
/// its error answer.
fn upgrade(c: &Client, path: &str, req: &ExecRequest) -> Result<Link, Refusal> {
    let link = connect(&daemon_authority()).map_err(Failure::from)?;
    let body = serde_json::to_vec(req)
        .map_err(|e| Failure::new(format!("could not encode the request: {e}"), None))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        daemon_authority(),
        c.token(),
        proto::PROTOCOL,
        body.len()
    );
    let sock = link.sock();
    sock.set_write_timeout(Some(Duration::from_secs(60)))
        .and_then(|_| sock.set_read_timeout(Some(Duration::from_secs(120))))
        .map_err(|e| Failure::new(format!("socket: {e}"), None))?;
    let cut = |e: io::Error| Refusal::Cut(e.to_string());
    let mut w = link.clone();
    w.write_all(head.as_bytes()).map_err(cut)?;
    w.write_all(&body).map_err(cut)?;
    // The answer's head, a byte at a time: nothing past it is taken.
    let mut r = link.clone();
    let mut answer = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() > 16 * 1024 {
            let e = ClientError::Protocol("an answer head over 16 KiB".into());
            return Err(Refusal::Other(e.into()));
        }
        match r.read(&mut b) {
            Ok(0) => {
                return Err(Refusal::Cut(
                    "the daemon closed the connection without an answer".into(),
                ));
            }
            Ok(_) => answer.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cut(e)),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        sock.set_read_timeout(Some(SILENCE))
            .map_err(|e| Failure::new(format!("socket: {e}"), None))?;
        return Ok(link);
    }
    // An error answer: its JSON body says why.
    let length = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = vec![0u8; length];
    let _ = r.read_exact(&mut body);
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => Err(Refusal::Api(ClientError::Api {
            status,
            message: e.error,
            hint: e.hint,
        })),
        Err(_) => Err(Refusal::Other(
            ClientError::Protocol(format!("HTTP {status} to the streamed exec")).into(),
        )),
    }
}

/// Guest bytes for a terminal: control characters shown escaped, UTF-8
/// sequences split across chunks kept whole.
#[derive(Default)]
struct Escaper {
    carry: Vec<u8>,
}

impl Escaper {
    fn show(&mut self, chunk: &[u8]) -> String {
        self.carry.extend_from_slice(chunk);
        let mut cut = self.carry.len();
        // An incomplete sequence at the end waits for the next chunk.
        if let Err(e) = std::str::from_utf8(&self.carry)
            && e.error_len().is_none()
        {
            cut = e.valid_up_to();
        }
        let rest = self.carry.split_off(cut);
        let text = visible(&String::from_utf8_lossy(&self.carry));
        self.carry = rest;
        text
    }
}

/// Where one of the program's streams goes: exact bytes, or escaped on a
/// terminal (unless the guest owns it: `-t`).
struct Sink<W: Write> {
    w: W,
    escape: Option<Escaper>,
}

impl<W: Write> Sink<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.escape.as_mut() {
            Some(e) => {
                let s = e.show(bytes);
                self.w.write_all(s.as_bytes())?;
            }
            None => self.w.write_all(bytes)?,
        }
        self.w.flush()
    }
}

/// Frames to the daemon, one whole frame at a time.
type Up = Arc<Mutex<Link>>;

fn send(up: &Up, kind: u8, payload: &[u8]) -> bool {
    let mut w = up.lock().unwrap_or_else(|p| p.into_inner());
    proto::write_frame(&mut *w, kind, payload).is_ok()
}

fn streamed(a: ExecArgs) -> Result<i32, Failure> {
    let c = Client::from_env()?;
    let stdin_tty = io::stdin().is_terminal();
    // stdin goes to the guest when asked (-i), or when it is a pipe or a
    // file (as it always did).
    let forward = a.interactive || !stdin_tty;
    let interactive = a.interactive || a.tty;
    let (cols, rows) = term_size();
    let req = ExecRequest {
        env: env_of(&a)?,
        cwd: a.workdir.clone(),
        user: a.user.clone(),
        cmd: a.command.clone(),
        // An interactive command has no deadline unless one is given.
        timeout_secs: a.timeout.or(interactive.then_some(0)),
        tty: a.tty.then_some(true),
        cols: a.tty.then_some(cols),
        rows: a.tty.then_some(rows),
        term: a.tty.then(|| std::env::var("TERM").ok()).flatten(),
        ..Default::default()
    };
    let path = format!("/vms/{}/exec", seg(&a.vm));
    let link = admitted_upgrade(&c, &path, &req)?;
    keepalive(link.sock(), Duration::from_secs(15), Duration::from_secs(5));
    let up: Up = Arc::new(Mutex::new(link.clone()));
    let stdin = io::stdin();
    // The guest's terminal is this one: raw, so every key reaches it.
    let raw = (a.tty && forward && stdin_tty)
        .then(|| RawMode::enable(stdin.as_fd()))
        .flatten();
    // -t alone: the keys stay here, the guest's output is shown as it is.
    let out_raw = (a.tty && raw.is_none())
        .then(|| RawMode::output_only(io::stdout().as_fd()))
        .flatten();
    if forward {
        let up = Arc::clone(&up);
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut input = io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !send(&up, proto::STDIN, &buf[..n]) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            send(&up, proto::STDIN_EOF, b"");
        });
    } else {
        send(&up, proto::STDIN_EOF, b"");
    }
    if a.tty {
        let up = Arc::clone(&up);
        follow_size((cols, rows), move |c, r| {
            send(&up, proto::RESIZE, &proto::resize_payload(c, r))
        });
    }
    if raw.is_none() {
        forward_signals(&up);
    }
    let escape = |terminal: bool| (terminal && !a.tty).then(Escaper::default);
    let mut out = Sink {
        w: io::stdout().lock(),
        escape: escape(io::stdout().is_terminal()),
    };
    let mut err = Sink {
        w: io::stderr().lock(),
        escape: escape(io::stderr().is_terminal()),
    };
    let mut down = link.clone();
    let mut buf = Vec::new();
    let ended = loop {
        match proto::read_frame(&mut down, &mut buf) {
            Ok(Some(proto::STDOUT)) => {
                if out.put(&buf).is_err() {
                    // stdout is gone (a closed pipe): so is the command.
                    break Err(None);
                }
            }
            Ok(Some(proto::STDERR)) => {
                let _ = err.put(&buf);
            }
            Ok(Some(proto::HEARTBEAT)) => {}
            Ok(Some(proto::EXIT)) => {
                break serde_json::from_slice::<ExecExit>(&buf)
                    .map_err(|e| Some(format!("a bad exit frame: {e}")));
            }
            Ok(Some(proto::ERROR)) => {
                let e: Option<ErrorBody> = serde_json::from_slice(&buf).ok();
                drop(raw);
                drop(out_raw);
                return Err(match e {
                    Some(e) => Failure::new(e.error, e.hint),
                    None => Failure::new("the exec failed in the daemon", None),
                });
            }
            Ok(Some(k)) => break Err(Some(format!("an unknown frame ({k})"))),
            Ok(None) => break Err(Some("the daemon closed the stream".into())),
            Err(e) => break Err(Some(e.to_string())),
        }
    };
    drop(raw);
    drop(out_raw);
    link.shutdown();
    match ended {
        Ok(x) if x.timed_out => {
            timed_out(a.timeout);
            Ok(TIMED_OUT)
        }
        Ok(x) => Ok(x.exit_code),
        // Like any program whose stdout is closed.
        Err(None) => Ok(128 + libc::SIGPIPE),
        Err(Some(why)) => Err(Failure::new(
            format!("the connection to the daemon broke off: {why}"),
            Some("the command was ended in the guest; run it again".into()),
        )),
    }
}

/// Ctrl-C (without `-t`'s raw mode) goes to the guest's command: the
/// first as SIGINT, a second ends fcm (and, with the connection, the
/// command). SIGTERM and SIGHUP go to the command, then end fcm.
fn forward_signals(up: &Up) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let up = Arc::clone(up);
    let once = Arc::new(AtomicBool::new(false));
    thread::spawn(move || {
        for sig in signals.forever() {
            let Ok(n) = u8::try_from(sig) else { continue };
            send(&up, proto::SIGNAL, &[n]);
            if sig != SIGINT || once.swap(true, Ordering::AcqRel) {
                std::process::exit(128 + sig);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escaper_keeps_split_utf8_whole_and_shows_controls() {
        let mut e = Escaper::default();
        let s = "é\x1b[2J".as_bytes();
        let first = e.show(&s[..1]);
        assert_eq!(first, "");
        let rest = e.show(&s[1..]);
        assert_eq!(rest, "é\\x1b[2J");
        // Invalid bytes are not held back for ever.
        assert_eq!(e.show(&[0xff, b'a']), "\u{fffd}a");
    }
}
