//! A test "daemon": speaks the protocol through `fcm-proto` to an agent
//! serving one end of a socketpair in a thread of the test, with a
//! recording system (nothing happens to the host's clock, file systems,
//! power or identity).

#![allow(dead_code)]

use fcm_agent::system::Recorder;
use fcm_agent::{Agent, Config};
use fcm_proto::{
    CHUNK, Decoder, Done, Exec, Failure, FromAgent, Id, Next, ToAgent, VERSION, WINDOW, frame,
};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The longest any one answer may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Daemon {
    stream: UnixStream,
    decoder: Decoder,
    /// Messages read while waiting for others.
    pending: VecDeque<FromAgent>,
    pub system: Arc<Recorder>,
    next_id: Id,
    /// Output credit is granted as output arrives.
    pub auto_credit: bool,
}

/// How a program ended, and what it said.
#[derive(Debug, Default)]
pub struct Ran {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub failed: Option<Failure>,
}

impl Ran {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub fn exec(argv: &[&str]) -> Exec {
    Exec {
        id: 0,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        user: None,
        tty: None,
        timeout_ms: None,
    }
}

/// Is this the last message about an operation?
pub fn is_final(m: &FromAgent) -> bool {
    matches!(
        m,
        FromAgent::Exited { .. }
            | FromAgent::Done { .. }
            | FromAgent::Failed { .. }
            | FromAgent::End { .. }
            | FromAgent::Pong { .. }
    )
}

impl Daemon {
    /// An agent on a socketpair, after a `Hello`.
    pub fn start() -> Daemon {
        let mut d = Self::connect(Config::default());
        d.hello(1);
        d
    }

    /// An agent on a socketpair, before any `Hello`.
    pub fn connect(config: Config) -> Daemon {
        let system = Arc::new(Recorder::default());
        let agent = Agent::new(config, system.clone());
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let writer = theirs.try_clone().expect("clone");
        thread::spawn(move || agent.serve(theirs, writer));
        let mut d = Self::over(ours);
        d.system = system;
        d
    }

    /// A daemon on a stream to an agent served elsewhere.
    pub fn over(stream: UnixStream) -> Daemon {
        Daemon {
            stream,
            decoder: Decoder::new(),
            pending: VecDeque::new(),
            system: Arc::default(),
            next_id: 100,
            auto_credit: true,
        }
    }

    pub fn id(&mut self) -> Id {
        self.next_id += 1;
        self.next_id
    }

    pub fn send(&mut self, msg: &ToAgent) {
        let bytes = frame(msg).expect("frame");
        self.stream.write_all(&bytes).expect("write to the agent");
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the agent");
    }

    /// The agent's side is gone (EOF).
    pub fn closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            self.stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => {}
            }
        }
        false
    }

    /// The next message off the wire, if one comes within `timeout`.
    fn read_one(&mut self, timeout: Duration) -> Option<FromAgent> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            match self.decoder.decode::<FromAgent>() {
                Next::Message(m) => return Some(m),
                Next::Unknown => continue,
                Next::More => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let n = match self.stream.read(&mut buf[..self.decoder.room().min(65536)]) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
                Err(e) => panic!("reading from the agent: {e}"),
            };
            self.decoder.push(&buf[..n]);
        }
    }

    /// Grants the output credit a message used, when `auto_credit`.
    fn credit_for(&mut self, m: &FromAgent) {
        if !self.auto_credit {
            return;
        }
        if let FromAgent::Stdout { id, data }
        | FromAgent::Stderr { id, data }
        | FromAgent::Data { id, data } = m
        {
            let (id, bytes) = (*id, data.len() as u32);
            self.send(&ToAgent::Credit { id, bytes });
        }
    }

    /// The next message (any id), within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<FromAgent> {
        let m = match self.pending.pop_front() {
            Some(m) => m,
            None => {
                let m = self.read_one(timeout)?;
                self.credit_for(&m);
                m
            }
        };
        Some(m)
    }

    /// The next message about `id` (others are kept for later).
    pub fn recv_for(&mut self, id: Id, timeout: Duration) -> Option<FromAgent> {
        if let Some(i) = self.pending.iter().position(|m| m.id() == Some(id)) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.read_one(left)?;
            self.credit_for(&m);
            if m.id() == Some(id) {
                return Some(m);
            }
            self.pending.push_back(m);
        }
    }

    pub fn expect_for(&mut self, id: Id) -> FromAgent {
        self.recv_for(id, WAIT)
            .unwrap_or_else(|| panic!("no answer about operation {id} in {WAIT:?}"))
    }

    /// Every message about `id` up to its last.
    pub fn until_end(&mut self, id: Id) -> Vec<FromAgent> {
        let mut out = Vec::new();
        loop {
            let m = self.expect_for(id);
            let last = is_final(&m);
            out.push(m);
            if last {
                return out;
            }
        }
    }

    /// Nothing arrives about `id` for `quiet`.
    pub fn silent_for(&mut self, id: Id, quiet: Duration) -> bool {
        self.recv_for(id, quiet).is_none()
    }

    pub fn hello(&mut self, session: u64) {
        self.send(&ToAgent::Hello {
            version: VERSION,
            session,
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("no Hello answer in time");
            match self.read_one(left) {
                Some(FromAgent::Hello {
                    version,
                    session: s,
                    agent,
                }) if s == session => {
                    assert_eq!(version, VERSION);
                    assert!(agent.starts_with("fcm-agent "), "{agent}");
                    self.pending.clear();
                    return;
                }
                Some(_) => {}
                None => panic!("no Hello answer"),
            }
        }
    }

    /// Runs a program (stdin closed at once) and collects what it did.
    pub fn run(&mut self, mut e: Exec) -> Ran {
        let id = self.id();
        e.id = id;
        let tty = e.tty.is_some();
        self.send(&ToAgent::Exec(e));
        if !tty {
            self.send(&ToAgent::End { id });
        }
        self.collect(id)
    }

    /// What arrives about a program up to its end.
    pub fn collect(&mut self, id: Id) -> Ran {
        let mut ran = Ran::default();
        for m in self.until_end(id) {
            match m {
                FromAgent::Started { pid, .. } => ran.pid = Some(pid),
                FromAgent::Stdout { data, .. } => ran.stdout.extend(data),
                FromAgent::Stderr { data, .. } => ran.stderr.extend(data),
                FromAgent::Exited {
                    code,
                    signal,
                    timed_out,
                    ..
                } => {
                    ran.code = code;
                    ran.signal = signal;
                    ran.timed_out = timed_out;
                }
                FromAgent::Failed { failure, .. } => ran.failed = Some(failure),
                FromAgent::Credit { .. } => {}
                other => panic!("unexpected for a program: {other:?}"),
            }
        }
        ran
    }

    /// Sends `data` as `Data` for `id` within the agent's credit, then
    /// `End`; messages about other things that arrive meanwhile are kept.
    /// Returns the `Credit` the agent gave back.
    pub fn upload(&mut self, id: Id, data: &[u8]) -> u64 {
        let mut credit = u64::from(WINDOW);
        let mut returned = 0u64;
        let mut rest = data;
        let deadline = Instant::now() + WAIT * 3;
        while !rest.is_empty() {
            let n = rest.len().min(CHUNK);
            if credit >= n as u64 {
                self.send(&ToAgent::Data {
                    id,
                    data: rest[..n].to_vec(),
                });
                credit -= n as u64;
                rest = &rest[n..];
                continue;
            }
            assert!(Instant::now() < deadline, "the upload stalled");
            match self.read_one(Duration::from_millis(100)) {
                Some(FromAgent::Credit { id: i, bytes }) if i == id => {
                    credit += u64::from(bytes);
                    returned += u64::from(bytes);
                }
                Some(m) => {
                    self.credit_for(&m);
                    self.pending.push_back(m);
                }
                None => {}
            }
        }
        self.send(&ToAgent::End { id });
        // Credits still on their way are counted as they are read later.
        returned
    }

    /// Runs a simple request to its `Done` (or `Failed`).
    pub fn ask(&mut self, msg: impl FnOnce(Id) -> ToAgent) -> Result<Done, Failure> {
        let id = self.id();
        self.send(&msg(id));
        match self.expect_for(id) {
            FromAgent::Done { done, .. } => Ok(done),
            FromAgent::Failed { failure, .. } => Err(failure),
            other => panic!("unexpected answer: {other:?}"),
        }
    }

    pub fn ping(&mut self) {
        let id = self.id();
        self.send(&ToAgent::Ping { id });
        assert!(
            matches!(self.expect_for(id), FromAgent::Pong { .. }),
            "no Pong"
        );
    }
}

/// Deterministic noise for tests.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Up to `max` bytes (fewer at random).
    pub fn some(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        self.bytes(n)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Waits until `f` holds, or `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    f()
}
