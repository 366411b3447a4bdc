//! A fake guest for the daemon's unit tests: no VM and no transport
//! behind it. A test says how each operation answers (which ones fail)
//! and reads back what the daemon asked, in order. Its name says it is a
//! fake: the end-to-end tests under `tests/` use real guests.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    ClockSet, Control, Download, ExecSpec, Exit, Frozen, Guest, GuestError, Guests, Process, Target,
};
use crate::daemon::lock;

/// What a fake program prints and how it ends.
#[derive(Debug, Clone, Default)]
pub struct FakeRun {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: i32,
}

type ExecFn = dyn Fn(&ExecSpec) -> Result<FakeRun, GuestError> + Send + Sync;
type HookFn = dyn Fn(&str, &Target) + Send + Sync;

/// How the fake guests answer; shared by every guest it hands out.
pub struct FakeScript {
    /// `wait_ready` answers this.
    pub ready: bool,
    /// `freeze`: `Ok(true)` frozen, `Ok(false)` only synced, `Err` fails.
    pub freeze: Result<bool, String>,
    pub thaw_fails: bool,
    /// `after_restore` fails with this error text (the clock could not be set).
    pub clock_fails: Option<String>,
    /// `after_restore` cannot reach the guest (this error text).
    pub clock_unreachable: Option<String>,
    pub shutdown_fails: bool,
    /// What `exec` runs; by default every program prints nothing, exits 0.
    pub exec: Arc<ExecFn>,
    /// Called at each operation with its name (`thaw` of a frozen guest and
    /// `forget` too), before it answers: a test looks at the host (e.g. the
    /// VM's record) at that very moment.
    pub hook: Option<Arc<HookFn>>,
}

impl Default for FakeScript {
    fn default() -> Self {
        Self {
            ready: true,
            freeze: Ok(true),
            thaw_fails: false,
            clock_fails: None,
            clock_unreachable: None,
            shutdown_fails: false,
            exec: Arc::new(|_| Ok(FakeRun::default())),
            hook: None,
        }
    }
}

/// Hands out fake guests; `calls` is what was asked of them, in order:
/// `"<operation> <vm name>"`.
#[derive(Default, Clone)]
pub struct FakeGuests {
    pub script: Arc<Mutex<FakeScript>>,
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Everything programs were fed on their stdin, in order.
    pub stdin: Arc<Mutex<Vec<u8>>>,
}

impl FakeGuests {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Logs a call and runs the hook (outside the script's lock).
    fn log(&self, op: &str, t: &Target) {
        lock(&self.calls).push(format!("{op} {}", t.name));
        let hook = lock(&self.script).hook.clone();
        if let Some(h) = hook {
            h(op, t);
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut FakeScript)) {
        f(&mut lock(&self.script));
    }
}

impl Guests for FakeGuests {
    fn guest(&self, target: &Target) -> Box<dyn Guest> {
        Box::new(FakeGuest {
            t: target.clone(),
            g: self.clone(),
        })
    }

    fn forget(&self, target: &Target) {
        self.log("forget", target);
    }
}

struct FakeGuest {
    t: Target,
    g: FakeGuests,
}

impl FakeGuest {
    /// Logs the call, runs the hook; the script as it is now.
    fn call(&self, op: &str) -> std::sync::MutexGuard<'_, FakeScript> {
        self.g.log(op, &self.t);
        lock(&self.g.script)
    }

    fn failed(&self, action: &'static str, detail: &str) -> GuestError {
        GuestError::Failed {
            vm: self.t.name.to_string(),
            action,
            path: "/".into(),
            detail: format!("fake guest: {detail}"),
        }
    }
}

struct FakeFrozen {
    frozen: bool,
    fails: bool,
    g: FakeGuests,
    t: Target,
}

impl Frozen for FakeFrozen {
    fn frozen(&self) -> bool {
        self.frozen
    }

    fn thaw(self: Box<Self>) -> Result<(), GuestError> {
        self.g.log("thaw", &self.t);
        if self.fails {
            return Err(GuestError::Failed {
                vm: self.t.name.to_string(),
                action: "thawing",
                path: "/".into(),
                detail: "fake guest: thaw fails".into(),
            });
        }
        Ok(())
    }
}

/// A program's stdin: kept in [`FakeGuests::stdin`].
struct FakeStdin(Arc<Mutex<Vec<u8>>>);

impl Write for FakeStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct NoControl;

impl Control for NoControl {
    fn resize(&self, _cols: u16, _rows: u16) {}
    fn signal(&self, _signal: i32) {}
    fn kill(&self) {}
}

struct FakeProcess {
    run: FakeRun,
    stdin: Option<Box<dyn Write + Send>>,
}

impl Process for FakeProcess {
    fn stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        self.stdin.take()
    }

    fn stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        Some(Box::new(io::Cursor::new(std::mem::take(
            &mut self.run.stdout,
        ))))
    }

    fn stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        Some(Box::new(io::Cursor::new(std::mem::take(
            &mut self.run.stderr,
        ))))
    }

    fn control(&self) -> Arc<dyn Control> {
        Arc::new(NoControl)
    }

    fn wait(self: Box<Self>) -> Result<Exit, GuestError> {
        Ok(Exit {
            code: self.run.code,
            timed_out: false,
        })
    }
}

impl Guest for FakeGuest {
    fn transport(&self) -> &'static str {
        "fake"
    }

    fn wait_ready(&self, _timeout: Duration) -> bool {
        self.call("wait_ready").ready
    }

    fn exec(&self, spec: &ExecSpec) -> Result<Box<dyn Process>, GuestError> {
        let run = {
            let s = self.call(&format!("exec {:?}", spec.argv));
            Arc::clone(&s.exec)
        };
        Ok(Box::new(FakeProcess {
            run: run(spec)?,
            stdin: Some(Box::new(FakeStdin(Arc::clone(&self.g.stdin)))),
        }))
    }

    fn read_file(&self, path: &str) -> Result<Download, GuestError> {
        drop(self.call("read_file"));
        Err(GuestError::NotFound {
            vm: self.t.name.to_string(),
            what: "file",
            path: path.into(),
        })
    }

    fn write_file(&self, _path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        drop(self.call("write_file"));
        io::copy(body, &mut io::sink()).map_err(|e| GuestError::BadRequest(e.to_string()))
    }

    fn read_tree(&self, path: &str) -> Result<Download, GuestError> {
        drop(self.call("read_tree"));
        Err(GuestError::NotFound {
            vm: self.t.name.to_string(),
            what: "directory",
            path: path.into(),
        })
    }

    fn write_tree(&self, _path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
        drop(self.call("write_tree"));
        io::copy(body, &mut io::sink()).map_err(|e| GuestError::BadRequest(e.to_string()))
    }

    fn freeze(&self) -> Result<Box<dyn Frozen>, GuestError> {
        let s = self.call("freeze");
        match &s.freeze {
            Ok(frozen) => Ok(Box::new(FakeFrozen {
                frozen: *frozen,
                fails: s.thaw_fails,
                g: self.g.clone(),
                t: self.t.clone(),
            })),
            Err(why) => Err(GuestError::Unreachable {
                vm: self.t.name.to_string(),
                transport: "fake",
                detail: why.clone(),
            }),
        }
    }

    fn after_restore(&self, _entropy: &[u8; 64]) -> Result<ClockSet, GuestError> {
        let s = self.call("after_restore");
        if let Some(why) = &s.clock_unreachable {
            return Err(GuestError::Unreachable {
                vm: self.t.name.to_string(),
                transport: "fake",
                detail: why.clone(),
            });
        }
        match &s.clock_fails {
            Some(why) => Err(self.failed("setting the clock of", why)),
            None => Ok(ClockSet { offset: Some(0.0) }),
        }
    }

    fn shutdown(&self) -> Result<(), GuestError> {
        let s = self.call("shutdown");
        if s.shutdown_fails {
            return Err(self.failed("shutting down", "shutdown fails"));
        }
        Ok(())
    }
}
