//! One connection's life: its frames decoded, the session a `Hello` opens,
//! the table of that session's operations, and where each message goes.
//!
//! Nothing is acted on before a `Hello`. A `Hello`, or the connection's end,
//! ends the session: its programs are killed, its writes discarded, a
//! freeze thawed. Messages about an id the session does not know (an
//! operation already ended, or never started) are ignored: `Credit`, `Data`
//! and `Cancel` legitimately cross an operation's end on the wire. A new
//! operation whose id is already running is refused with
//! `Failed { Invalid }` (about that id; the running one goes on).

use crate::error::OpError;
use crate::lock;
use crate::op::{Ctx, Op, OpKind};
use crate::outbox::Outbox;
use crate::system::{self, Freezer, System};
use crate::{AGENT, exec, files, tree};
use fcm_proto::{Decoder, FromAgent, Id, Next, ToAgent, VERSION};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Operations running at once in a session, at most.
const MAX_OPS: usize = 256;
/// How long the end of a connection waits for a write under way.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The files the agent reads, injectable for tests.
#[derive(Debug, Clone)]
pub struct Config {
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// Where processes are listed (to kill a program's whole session).
    pub proc_dir: PathBuf,
    /// Where the agent notes the programs it runs (one file per program,
    /// named by its session), so that an agent started again ends what a
    /// dead one left running; none: not noted (tests).
    pub programs_dir: Option<PathBuf>,
    /// The image this VM was made from (`/run/fcm/image.json`): its env,
    /// workdir and user are the defaults of every `Exec`; none for a VM of
    /// the base image.
    pub image: Option<fcm_proto::ImageConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            proc_dir: "/proc".into(),
            programs_dir: None,
            image: None,
        }
    }
}

/// The agent: what outlives connections (its configuration, the system it
/// acts on, a freeze).
pub struct Agent {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: Config,
    pub system: Arc<dyn System>,
    pub freezer: Arc<Freezer>,
    next_epoch: AtomicU64,
}

impl Agent {
    pub fn new(config: Config, system: Arc<dyn System>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                system,
                freezer: Arc::new(Freezer::default()),
                next_epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Serves one connection until its end (EOF or an error reading):
    /// `reader` is read here, `writer` is written by a thread of its own.
    /// The session it held ends with it.
    pub fn serve<R: Read, W: Write + Send + 'static>(&self, mut reader: R, writer: W) {
        let outbox = match Outbox::start(writer) {
            Ok(o) => o,
            Err(e) => {
                log!("cannot start a writer thread: {e}");
                return;
            }
        };
        let mut conn = Connection {
            inner: self.inner.clone(),
            outbox,
            session: None,
        };
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut rest = &buf[..n];
            loop {
                let taken = decoder.push(rest);
                rest = &rest[taken..];
                loop {
                    match decoder.decode::<ToAgent>() {
                        Next::Message(msg) => conn.handle(msg),
                        Next::Unknown => {}
                        Next::More => break,
                    }
                }
                if rest.is_empty() {
                    break;
                }
                if taken == 0 {
                    // A full decoder always holds a whole frame; never
                    // spin if that ever stops being true.
                    decoder.reset();
                }
            }
        }
        conn.end();
        conn.outbox.close(CLOSE_WAIT);
    }
}

struct Connection {
    inner: Arc<Inner>,
    outbox: Outbox,
    session: Option<Arc<Session>>,
}

impl Connection {
    fn handle(&mut self, msg: ToAgent) {
        match msg {
            ToAgent::Hello { session, .. } => self.hello(session),
            msg => {
                if let Some(s) = &self.session {
                    s.dispatch(&self.inner, msg);
                }
            }
        }
    }

    fn hello(&mut self, number: u64) {
        self.end();
        let epoch = self.inner.next_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let outbox = self.outbox.for_session(epoch);
        outbox.begin();
        let _ = outbox.send(&FromAgent::Hello {
            version: VERSION,
            session: number,
            agent: AGENT.into(),
        });
        self.session = Some(Arc::new(Session {
            outbox,
            ops: Mutex::new(HashMap::new()),
        }));
    }

    /// Ends what the session left under way.
    fn end(&mut self) {
        if let Some(s) = self.session.take() {
            s.end(&self.inner);
        }
        self.inner.freezer.thaw_if_frozen(&*self.inner.system);
    }
}

pub(crate) struct Session {
    outbox: Outbox,
    ops: Mutex<HashMap<Id, Arc<Op>>>,
}

impl Session {
    fn find(&self, id: Id) -> Option<Arc<Op>> {
        lock(&self.ops).get(&id).cloned()
    }

    /// Forgets an operation that ended (not a newer one with its id).
    pub fn remove(&self, op: &Arc<Op>) {
        let mut ops = lock(&self.ops);
        if ops.get(&op.id).is_some_and(|o| Arc::ptr_eq(o, op)) {
            ops.remove(&op.id);
        }
    }

    fn end(&self, inner: &Inner) {
        let ops = std::mem::take(&mut *lock(&self.ops));
        for op in ops.values() {
            op.cancel(&inner.config.proc_dir);
        }
    }

    fn refuse(&self, id: Id, e: OpError) {
        let _ = self.outbox.send(&FromAgent::Failed {
            id,
            failure: e.into(),
        });
    }

    fn dispatch(self: &Arc<Self>, inner: &Arc<Inner>, msg: ToAgent) {
        use OpKind::{Exec, Other, Write};
        match msg {
            ToAgent::Hello { .. } => {}
            ToAgent::Ping { id } => {
                let uptime_ms = inner.system.uptime_ms();
                let _ = self.outbox.send(&FromAgent::Pong { id, uptime_ms });
            }
            ToAgent::Exec(e) => self.start(inner, e.id, Exec, move |ctx| exec::run(ctx, e)),
            ToAgent::Data { id, data } => {
                if let Some(op) = self.find(id).filter(|op| op.kind != Other)
                    && let Err(refused) = op.inbox.push(data)
                {
                    // A protocol error: the operation fails (its program
                    // is killed), the session goes on.
                    let ctx = self.ctx(inner, op);
                    ctx.op.cancel(&inner.config.proc_dir);
                    ctx.fail(OpError::invalid(refused.message()));
                }
            }
            ToAgent::End { id } => self.with(id, |op| op.inbox.end()),
            ToAgent::Credit { id, bytes } => self.with(id, |op| op.credit.grant(bytes)),
            ToAgent::Resize { id, cols, rows } => self.with(id, |op| exec::resize(op, cols, rows)),
            ToAgent::Signal { id, signal } => self.with(id, |op| exec::signal(op, signal)),
            ToAgent::Cancel { id } => self.with(id, |op| op.cancel(&inner.config.proc_dir)),
            ToAgent::ReadFile { id, path } => {
                self.start(inner, id, Other, move |ctx| files::read_file(ctx, &path))
            }
            ToAgent::ReadTree { id, path } => {
                self.start(inner, id, Other, move |ctx| tree::read_tree(ctx, &path))
            }
            ToAgent::WriteFile { id, path, mode } => self.start(inner, id, Write, move |ctx| {
                files::write_file(ctx, &path, mode)
            }),
            ToAgent::WriteTree { id, path } => {
                self.start(inner, id, Write, move |ctx| tree::write_tree(ctx, &path))
            }
            ToAgent::Stat { id, path } => {
                self.start(inner, id, Other, move |ctx| ctx.answer(files::stat(&path)))
            }
            ToAgent::List { id, path } => {
                self.start(inner, id, Other, move |ctx| ctx.answer(files::list(&path)))
            }
            ToAgent::Mkdir { id, path, parents } => self.start(inner, id, Other, move |ctx| {
                ctx.answer(files::mkdir(&path, parents))
            }),
            ToAgent::Remove {
                id,
                path,
                recursive,
            } => self.start(inner, id, Other, move |ctx| {
                ctx.answer(files::remove(&path, recursive))
            }),
            ToAgent::Rename { id, from, to } => self.start(inner, id, Other, move |ctx| {
                ctx.answer(files::rename(&from, &to))
            }),
            ToAgent::SetClock {
                id,
                unix_secs,
                nanos,
            } => self.start(inner, id, Other, move |ctx| {
                let r = system::set_clock(&*ctx.inner.system, unix_secs, nanos);
                ctx.answer(r)
            }),
            ToAgent::Reseed { id, entropy } => self.start(inner, id, Other, move |ctx| {
                ctx.answer(system::reseed(&*ctx.inner.system, &entropy))
            }),
            ToAgent::Freeze { id, watchdog_secs } => self.start(inner, id, Other, move |ctx| {
                let r = ctx.inner.freezer.freeze(&ctx.inner.system, watchdog_secs);
                ctx.answer(r)
            }),
            ToAgent::Thaw { id } => self.start(inner, id, Other, move |ctx| {
                ctx.answer(ctx.inner.freezer.thaw(&*ctx.inner.system))
            }),
            ToAgent::Shutdown { id } => self.start(inner, id, Other, system::shutdown),
            ToAgent::SetIdentity { id, identity } => self.start(inner, id, Other, move |ctx| {
                ctx.answer(system::set_identity(&*ctx.inner.system, &identity))
            }),
        }
    }

    /// Runs `f` on the operation `id`, if the session knows it.
    fn with(&self, id: Id, f: impl FnOnce(&Op)) {
        if let Some(op) = self.find(id) {
            f(&op);
        }
    }

    fn ctx(self: &Arc<Self>, inner: &Arc<Inner>, op: Arc<Op>) -> Ctx {
        Ctx {
            inner: inner.clone(),
            op,
            session: self.clone(),
        }
    }

    /// Registers a new operation and runs `work` on a thread of its own.
    fn start(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        id: Id,
        kind: OpKind,
        work: impl FnOnce(Ctx) + Send + 'static,
    ) {
        let op = {
            let mut ops = lock(&self.ops);
            let refused = if ops.contains_key(&id) {
                Some(OpError::invalid(format!(
                    "operation {id} is already running"
                )))
            } else if ops.len() >= MAX_OPS {
                Some(OpError::failed(format!(
                    "too many operations at once (at most {MAX_OPS})"
                )))
            } else {
                None
            };
            if let Some(e) = refused {
                drop(ops);
                return self.refuse(id, e);
            }
            match Op::new(id, kind, self.outbox.clone()) {
                Ok(op) => {
                    let op = Arc::new(op);
                    ops.insert(id, op.clone());
                    op
                }
                Err(e) => {
                    drop(ops);
                    return self.refuse(id, e);
                }
            }
        };
        let ctx = self.ctx(inner, op);
        let on_thread = ctx.clone();
        let spawned = thread::Builder::new()
            .name(format!("op-{id}"))
            .spawn(move || {
                let ctx = on_thread;
                if catch_unwind(AssertUnwindSafe(|| work(ctx.clone()))).is_err() {
                    ctx.fail(OpError::failed("the agent failed (a bug in fcm-agent)"));
                }
            });
        if let Err(e) = spawned {
            ctx.fail(OpError::failed(format!("cannot start a thread: {e}")));
        }
    }
}
