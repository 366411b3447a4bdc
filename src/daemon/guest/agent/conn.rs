//! One connection to one VM's agent (protocol: `fcm_proto`,
//! docs/agent.md): the hello, a reader thread that routes each message to
//! its operation, a writer shared by the operations, a ping that tells a
//! live agent from a gone one, and the checks that keep a hostile agent
//! from costing the daemon more than that VM's operations.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fcm_proto::{self as proto, FromAgent, Id, Next, ToAgent};

use crate::daemon::lock;
use crate::host::vmm::AgentChannel;

/// The hello must be answered this fast once the agent runs.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the daemon pings a connection.
const PING_EVERY: Duration = Duration::from_secs(2);
/// Silence for this long (pings unanswered) ends the connection.
const SILENCE: Duration = Duration::from_secs(7);
/// How long one write may block (an agent that stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued per operation and stream: the window in chunks, and
/// some room for the control messages.
const QUEUE: usize = (proto::WINDOW as usize / proto::CHUNK) + 8;
/// An operation's unacknowledged output beyond this breaks the protocol.
const OUTSTANDING_MAX: u64 = proto::WINDOW as u64 + proto::CHUNK as u64;

/// Bytes the daemon may still send for an operation (the agent's credit).
#[derive(Default)]
pub struct SendWindow {
    left: Mutex<u64>,
    more: Condvar,
}

impl SendWindow {
    fn new() -> Self {
        Self {
            left: Mutex::new(u64::from(proto::WINDOW)),
            more: Condvar::new(),
        }
    }

    fn add(&self, n: u64) {
        let mut l = lock(&self.left);
        // A hostile agent cannot make the daemon send beyond a window.
        *l = (*l + n).min(u64::from(proto::WINDOW));
        self.more.notify_all();
    }

    /// Takes up to `want` bytes of credit, waiting (in steps, so a broken
    /// connection is noticed) while there is none.
    pub fn take(&self, want: u64, conn: &Conn) -> io::Result<u64> {
        let mut l = lock(&self.left);
        loop {
            if let Some(why) = conn.broken() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, why));
            }
            if *l > 0 {
                let n = want.min(*l);
                *l -= n;
                return Ok(n);
            }
            l = self
                .more
                .wait_timeout(l, Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Where the reader puts one operation's messages.
struct Route {
    /// `Stdout` and `Data` bytes.
    out: Option<SyncSender<Vec<u8>>>,
    /// `Stderr` bytes.
    err: Option<SyncSender<Vec<u8>>>,
    /// Everything else but `Credit`.
    events: SyncSender<FromAgent>,
    /// Bytes delivered and not yet credited back.
    outstanding: Arc<AtomicU64>,
    window: Arc<SendWindow>,
}

/// The receiving ends of an operation's messages.
pub struct Channels {
    pub out: Receiver<Vec<u8>>,
    pub err: Receiver<Vec<u8>>,
    pub events: Receiver<FromAgent>,
    pub outstanding: Arc<AtomicU64>,
    pub window: Arc<SendWindow>,
}

pub struct Conn {
    pub vm: String,
    /// The agent's own name and version.
    pub agent: String,
    writer: Mutex<UnixStream>,
    sock: UnixStream,
    routes: Mutex<HashMap<Id, Route>>,
    next_id: AtomicU64,
    broken: Mutex<Option<String>>,
    closed: AtomicBool,
    last_heard: Mutex<Instant>,
}

/// Opens the stream: the QEMU port's socket, or Firecracker's vsock
/// socket with its `CONNECT` (opened without following a symlink: a
/// jailed VMM owns that directory).
fn open(channel: &AgentChannel, deadline: Instant) -> io::Result<UnixStream> {
    match channel {
        AgentChannel::Serial(path) => UnixStream::connect(path),
        AgentChannel::Vsock { socket, port } => {
            let s = connect_nofollow(socket)?;
            let left = deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
            (&s).write_all(format!("CONNECT {port}\n").as_bytes())?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\n") {
                if line.len() > 64 || (&s).read(&mut b)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "the VMM's vsock refused the connection",
                    ));
                }
                line.push(b[0]);
            }
            if !line.starts_with(b"OK ") {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "nothing listens on the agent's vsock port",
                ));
            }
            Ok(s)
        }
    }
}

/// Writes all of `bytes` before `deadline` (a socket's write timeout
/// bounds each write, and a slow reader takes a little at a time), then
/// leaves the socket's usual write timeout. Out of time: the agent did not
/// read its channel (a guest too busy, or stale bytes of an earlier
/// session before it), said as such rather than as the raw "Resource
/// temporarily unavailable".
fn write_by(mut sock: &UnixStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = if left.is_zero() {
            Err(io::Error::from(io::ErrorKind::TimedOut))
        } else {
            sock.set_write_timeout(Some(left))?;
            sock.write(bytes)
        };
        match n {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the agent did not answer (it read nothing more of its channel in time)",
                ));
            }
            Err(e) => return Err(e),
        }
    }
    sock.set_write_timeout(Some(WRITE_TIMEOUT))
}

fn connect_nofollow(socket: &Path) -> io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(socket)?;
    if !f.metadata()?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a socket", socket.display()),
        ));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

impl Conn {
    /// Connects and says hello; the connection once the agent answered
    /// (before `deadline`).
    pub fn open(vm: &str, channel: &AgentChannel, deadline: Instant) -> io::Result<Arc<Self>> {
        let sock = open(channel, deadline)?;
        let session: u64 = rand::random();
        let hello = proto::frame(&ToAgent::Hello {
            version: proto::VERSION,
            session,
        })
        .map_err(io::Error::other)?;
        write_by(&sock, &hello, deadline)?;
        // Everything before the answer is an earlier session's, or garbage.
        let mut dec = proto::Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        // An agent whose decoder waits for the rest of a frame cut short
        // (stale bytes of an earlier connection) would swallow the hello:
        // if it is not answered soon, bytes that fill any such frame go
        // first, then the hello again.
        let mut flush_at = Some(Instant::now() + Duration::from_secs(1));
        let (version, agent) = loop {
            if flush_at.is_some_and(|t| Instant::now() >= t) {
                flush_at = None;
                let mut again = vec![0u8; proto::MAX_PAYLOAD + 16];
                again.extend_from_slice(&hello);
                write_by(&sock, &again, deadline)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the agent did not answer",
                ));
            }
            let step = match flush_at {
                Some(t) => left.min(t.saturating_duration_since(Instant::now())),
                None => left,
            };
            sock.set_read_timeout(Some(step.max(Duration::from_millis(1))))?;
            let n = match (&sock).read(&mut buf[..dec.room().min(64 * 1024)]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the agent's channel closed",
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            dec.push(&buf[..n]);
            let mut found = None;
            loop {
                match dec.decode::<FromAgent>() {
                    Next::More => break,
                    Next::Message(FromAgent::Hello {
                        version,
                        session: s,
                        agent,
                    }) if s == session => {
                        found = Some((version, agent));
                        break;
                    }
                    Next::Message(_) | Next::Unknown => {}
                }
            }
            if let Some(f) = found {
                break f;
            }
        };
        if version < proto::MIN_AGENT_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "its agent ({agent}) speaks protocol {version}, this daemon needs {}; the VM gets the current agent at its next boot (fcm stop, then fcm start)",
                    proto::MIN_AGENT_VERSION
                ),
            ));
        }
        sock.set_read_timeout(Some(PING_EVERY))?;
        let conn = Arc::new(Self {
            vm: vm.to_owned(),
            agent,
            writer: Mutex::new(sock.try_clone()?),
            sock: sock.try_clone()?,
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            broken: Mutex::new(None),
            closed: AtomicBool::new(false),
            last_heard: Mutex::new(Instant::now()),
        });
        let reader = Arc::clone(&conn);
        thread::Builder::new()
            .name("fcm-agent-read".into())
            .spawn(move || reader.read_loop(sock, dec))?;
        Ok(conn)
    }

    /// Why the connection is no good any more, if it is not.
    pub fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    /// Whether it is usable: not broken, and heard from lately.
    pub fn healthy(&self) -> bool {
        self.broken().is_none() && lock(&self.last_heard).elapsed() < SILENCE
    }

    /// Ends the connection: every operation on it fails with `why`.
    pub fn fail(&self, why: &str) {
        {
            let mut b = lock(&self.broken);
            if b.is_none() {
                *b = Some(why.to_owned());
            }
        }
        self.closed.store(true, Ordering::Release);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        // Their senders gone, the operations see the end.
        lock(&self.routes).clear();
    }

    /// Sends one message.
    pub fn send(&self, msg: &ToAgent) -> io::Result<()> {
        if let Some(why) = self.broken() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, why));
        }
        let f = proto::frame(msg).map_err(io::Error::other)?;
        let r = lock(&self.writer).write_all(&f);
        if let Err(e) = &r {
            self.fail(&format!("writing to the agent failed: {e}"));
        }
        r
    }

    /// A new operation: its id and where its messages will come.
    pub fn register(&self, streams: bool) -> io::Result<(Id, Channels)> {
        if let Some(why) = self.broken() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, why));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (out_tx, out) = sync_channel(if streams { QUEUE } else { 1 });
        let (err_tx, err) = sync_channel(if streams { QUEUE } else { 1 });
        let (ev_tx, events) = sync_channel(16);
        let outstanding = Arc::new(AtomicU64::new(0));
        let window = Arc::new(SendWindow::new());
        lock(&self.routes).insert(
            id,
            Route {
                out: Some(out_tx),
                err: Some(err_tx),
                events: ev_tx,
                outstanding: Arc::clone(&outstanding),
                window: Arc::clone(&window),
            },
        );
        Ok((
            id,
            Channels {
                out,
                err,
                events,
                outstanding,
                window,
            },
        ))
    }

    /// The operation is over on the daemon's side.
    pub fn unregister(&self, id: Id) {
        lock(&self.routes).remove(&id);
    }

    fn read_loop(self: Arc<Self>, mut sock: UnixStream, mut dec: proto::Decoder) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pinged = Instant::now();
        let why = loop {
            if self.closed.load(Ordering::Acquire) {
                break None;
            }
            if pinged.elapsed() >= PING_EVERY {
                pinged = Instant::now();
                let _ = self.send(&ToAgent::Ping { id: 0 });
            }
            if lock(&self.last_heard).elapsed() >= SILENCE {
                break Some(format!(
                    "the agent did not answer for {} s",
                    SILENCE.as_secs()
                ));
            }
            let room = dec.room().min(buf.len());
            let n = match sock.read(&mut buf[..room]) {
                Ok(0) => break Some("the agent's channel closed".into()),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => break Some(format!("reading from the agent failed: {e}")),
            };
            dec.push(&buf[..n]);
            let mut bad = None;
            loop {
                match dec.decode::<FromAgent>() {
                    Next::More => break,
                    Next::Unknown => {}
                    Next::Message(m) => {
                        *lock(&self.last_heard) = Instant::now();
                        if let Err(e) = self.route(m) {
                            bad = Some(e);
                            break;
                        }
                    }
                }
            }
            if let Some(e) = bad {
                break Some(e);
            }
        };
        if let Some(why) = why {
            self.fail(&format!("{why} (VM {})", self.vm));
        }
    }

    /// Delivers one message to its operation; `Err` when the agent broke
    /// the protocol.
    fn route(&self, m: FromAgent) -> Result<(), String> {
        let Some(id) = m.id() else {
            return Ok(()); // a stray hello
        };
        if id == 0 {
            return Ok(()); // the pings' pongs
        }
        let mut routes = lock(&self.routes);
        let Some(r) = routes.get_mut(&id) else {
            // An operation already over on this side.
            return Ok(());
        };
        let over = |n: usize, r: &Route| {
            let total = r.outstanding.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
            (total > OUTSTANDING_MAX).then(|| {
                format!("the agent sent {total} bytes beyond its credit (protocol broken)")
            })
        };
        match m {
            FromAgent::Credit { bytes, .. } => {
                r.window.add(u64::from(bytes));
                Ok(())
            }
            FromAgent::Stdout { data, .. } | FromAgent::Data { data, .. } => {
                if let Some(e) = over(data.len(), r) {
                    return Err(e);
                }
                match r.out.as_ref().map(|t| t.try_send(data)) {
                    Some(Err(TrySendError::Full(_))) => {
                        Err("the agent sent more than its window (protocol broken)".into())
                    }
                    _ => Ok(()),
                }
            }
            FromAgent::Stderr { data, .. } => {
                if let Some(e) = over(data.len(), r) {
                    return Err(e);
                }
                match r.err.as_ref().map(|t| t.try_send(data)) {
                    Some(Err(TrySendError::Full(_))) => {
                        Err("the agent sent more than its window (protocol broken)".into())
                    }
                    _ => Ok(()),
                }
            }
            other => {
                let last = matches!(
                    other,
                    FromAgent::Exited { .. }
                        | FromAgent::End { .. }
                        | FromAgent::Done { .. }
                        | FromAgent::Failed { .. }
                );
                if last {
                    // The streams end here: their readers see it.
                    r.out = None;
                    r.err = None;
                }
                match r.events.try_send(other) {
                    Err(TrySendError::Full(_)) => {
                        Err("the agent sent too many messages (protocol broken)".into())
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}
