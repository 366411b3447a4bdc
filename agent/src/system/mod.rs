//! What the agent does to the guest as a whole: its clock, its entropy
//! pool, freezing its root file system, shutting it down, its identity.
//! These sit behind [`System`] so that tests run the agent as a host
//! process with a [`Recorder`] and never touch the host; [`Linux`] is the
//! real one, for the guest. The rules around them (what answers what, the
//! freeze's watchdog) are here, the same for both.

mod identity;
mod linux;
mod recorder;

pub use identity::validate as validate_identity;
pub use linux::Linux;
pub use recorder::{Call, Recorder};

use crate::error::OpError;
use crate::lock;
use crate::op::Ctx;
use fcm_proto::{Done, Identity};
use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// The guest-wide operations, real or recorded.
pub trait System: Send + Sync {
    /// Sets CLOCK_REALTIME; the time read right after.
    fn set_clock(&self, unix_secs: i64, nanos: u32) -> io::Result<(i64, u32)>;
    /// Mixes `entropy` into the pool (credited) and reseeds the CRNG.
    fn reseed(&self, entropy: &[u8]) -> io::Result<()>;
    /// Writes out every file system's dirty data.
    fn sync(&self);
    /// `FIFREEZE` on the root file system.
    fn freeze(&self) -> io::Result<()>;
    /// `FITHAW` on the root file system.
    fn thaw(&self) -> io::Result<()>;
    /// Asks init for a clean reboot (the VMM exits at it).
    fn shutdown(&self) -> io::Result<()>;
    /// Takes the identity given (already validated).
    fn set_identity(&self, identity: &Identity) -> Result<(), OpError>;
    /// Milliseconds since boot.
    fn uptime_ms(&self) -> u64;
}

/// `SetClock`: `Done(Clock)` with the time read back.
pub(crate) fn set_clock(sys: &dyn System, unix_secs: i64, nanos: u32) -> Result<Done, OpError> {
    if nanos >= 1_000_000_000 {
        return Err(OpError::invalid(format!(
            "{nanos} nanoseconds is not below a second"
        )));
    }
    let (unix_secs, nanos) = sys
        .set_clock(unix_secs, nanos)
        .map_err(|e| OpError::io("setting the clock", &e))?;
    Ok(Done::Clock { unix_secs, nanos })
}

/// `Reseed`: `Done(Ok)`.
pub(crate) fn reseed(sys: &dyn System, entropy: &[u8]) -> Result<Done, OpError> {
    sys.reseed(entropy)
        .map_err(|e| OpError::io("reseeding the entropy pool", &e))?;
    Ok(Done::Ok)
}

/// `Shutdown`: `Done(Ok)` written out first, then init is asked.
pub(crate) fn shutdown(ctx: Ctx) {
    ctx.done(Done::Ok);
    ctx.op.outbox_flush(Duration::from_secs(2));
    if let Err(e) = ctx.inner.system.shutdown() {
        log!("cannot shut down: {e}");
    }
}

/// `SetIdentity`: `Done(Ok)` once every field given is set.
pub(crate) fn set_identity(sys: &dyn System, identity: &Identity) -> Result<Done, OpError> {
    identity::validate(identity)?;
    sys.set_identity(identity)?;
    Ok(Done::Ok)
}

/// The freeze the agent holds, and its watchdog.
#[derive(Debug, Default)]
pub(crate) struct Freezer {
    state: Mutex<FreezeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FreezeState {
    frozen: bool,
    /// Bumped at every freeze and thaw: a watchdog of an older epoch is
    /// done.
    epoch: u64,
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY)
    )
}

impl Freezer {
    /// `Freeze`: sync, then `FIFREEZE`; `Frozen { frozen: false }` where
    /// the file system cannot be frozen. Thawed by itself after
    /// `watchdog_secs` (at least 1) unless thawed before.
    pub fn freeze(
        self: &Arc<Self>,
        sys: &Arc<dyn System>,
        watchdog_secs: u32,
    ) -> Result<Done, OpError> {
        sys.sync();
        match sys.freeze() {
            Ok(()) => {}
            // EBUSY: frozen already (by an earlier Freeze): re-armed.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) if unsupported(&e) => return Ok(Done::Frozen { frozen: false }),
            Err(e) => return Err(OpError::io("freezing /", &e)),
        }
        let epoch = {
            let mut s = lock(&self.state);
            s.frozen = true;
            s.epoch += 1;
            self.changed.notify_all();
            s.epoch
        };
        let (me, watched) = (self.clone(), sys.clone());
        let wait = Duration::from_secs(u64::from(watchdog_secs.max(1)));
        let spawned = thread::Builder::new()
            .name("freeze-watchdog".into())
            .spawn(move || me.watchdog(&*watched, epoch, wait));
        if let Err(e) = spawned {
            // No watchdog, no freeze.
            let _ = self.thaw(&**sys);
            return Err(OpError::failed(format!(
                "cannot start the freeze's watchdog: {e}"
            )));
        }
        Ok(Done::Frozen { frozen: true })
    }

    /// Thaws at the end of `wait`, unless a thaw or a newer freeze came.
    fn watchdog(&self, sys: &dyn System, epoch: u64, wait: Duration) {
        let s = lock(&self.state);
        let (mut s, _) = self
            .changed
            .wait_timeout_while(s, wait, |s| s.epoch == epoch)
            .unwrap_or_else(PoisonError::into_inner);
        if s.epoch == epoch && s.frozen {
            log!("thawing / after {wait:?} (the freeze's watchdog)");
            let _ = sys.thaw();
            s.frozen = false;
            s.epoch += 1;
        }
    }

    /// `Thaw`: `Frozen { frozen: false }`, also when nothing was frozen.
    pub fn thaw(&self, sys: &dyn System) -> Result<Done, OpError> {
        let mut s = lock(&self.state);
        s.epoch += 1;
        self.changed.notify_all();
        match sys.thaw() {
            Ok(()) => {}
            // EINVAL: not frozen.
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(OpError::io("thawing /", &e)),
        }
        s.frozen = false;
        Ok(Done::Frozen { frozen: false })
    }

    /// At a session's end: thaws what this agent froze.
    pub fn thaw_if_frozen(&self, sys: &dyn System) {
        let frozen = lock(&self.state).frozen;
        if frozen && let Err(e) = self.thaw(sys) {
            log!("{}", e.message);
        }
    }
}
