//! How long the daemon's background passes take: the recovery of the VMs
//! found at start-up (which runs while the API serves), housekeeping and
//! idle sleep. `GET /passes` shows them; the log gets one line per
//! recovery, and one when a housekeeping or idle pass is slow (at most one
//! per kind every ten minutes).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Entry, Manager, ManagerError};
use crate::daemon::lock;
use crate::names::VmId;
use crate::wire::api::{PassTimes, Passes, RecoveryPass};

/// A housekeeping or idle pass longer than this is logged.
const SLOW: Duration = Duration::from_secs(2);
/// At most one slow-pass line per kind this often.
const SLOW_LOG_EVERY: Duration = Duration::from_secs(600);
/// How long an operation waits for its VM's recovery.
const RECOVERY_WAIT: Duration = Duration::from_secs(120);

/// A background loop of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Housekeeping,
    Idle,
}

#[derive(Debug, Default)]
struct Loop {
    passes: u64,
    last: Duration,
    max: Duration,
    total: Duration,
    slow_logged: Option<Instant>,
}

impl Loop {
    fn times(&self) -> PassTimes {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        PassTimes {
            passes: self.passes,
            last_ms: ms(self.last),
            mean_ms: if self.passes == 0 {
                0.0
            } else {
                ms(self.total) / self.passes as f64
            },
            max_ms: ms(self.max),
        }
    }
}

/// What the manager keeps about its passes.
#[derive(Debug)]
pub(super) struct PassLog {
    recovery_started: Instant,
    recovery_took: Option<Duration>,
    recovery_vms: u32,
    housekeeping: Loop,
    idle: Loop,
}

impl PassLog {
    pub(super) fn new() -> Self {
        Self {
            recovery_started: Instant::now(),
            recovery_took: None,
            recovery_vms: 0,
            housekeeping: Loop::default(),
            idle: Loop::default(),
        }
    }
}

impl Manager {
    /// Counts a pass of a background loop; a slow one is logged (rarely).
    pub fn note_pass(&self, pass: Pass, took: Duration) {
        let vms = lock(&self.vms).len();
        let mut log = lock(&self.passes);
        let l = match pass {
            Pass::Housekeeping => &mut log.housekeeping,
            Pass::Idle => &mut log.idle,
        };
        l.passes += 1;
        l.last = took;
        l.max = l.max.max(took);
        l.total += took;
        if took > SLOW && l.slow_logged.is_none_or(|t| t.elapsed() > SLOW_LOG_EVERY) {
            l.slow_logged = Some(Instant::now());
            let what = match pass {
                Pass::Housekeeping => "housekeeping",
                Pass::Idle => "idle sleep",
            };
            eprintln!(
                "fcm daemon: a pass of {what} took {:.1} s ({vms} VMs); said at most every {} min",
                took.as_secs_f64(),
                SLOW_LOG_EVERY.as_secs() / 60
            );
        }
    }

    /// The passes' times so far.
    pub fn passes(&self) -> Passes {
        let log = lock(&self.passes);
        Passes {
            recovery: RecoveryPass {
                done: log.recovery_took.is_some(),
                vms: log.recovery_vms,
                ms: log
                    .recovery_took
                    .unwrap_or_else(|| log.recovery_started.elapsed())
                    .as_secs_f64()
                    * 1000.0,
            },
            housekeeping: log.housekeeping.times(),
            idle: log.idle.times(),
        }
    }

    /// Whether the recovery of the VMs found at start-up is still running.
    pub fn recovering(&self) -> bool {
        lock(&self.passes).recovery_took.is_none()
    }

    pub(super) fn recovery_began(&self, vms: usize) {
        let mut log = lock(&self.passes);
        log.recovery_started = Instant::now();
        log.recovery_vms = u32::try_from(vms).unwrap_or(u32::MAX);
    }

    pub(super) fn recovery_ended(&self) -> Duration {
        let mut log = lock(&self.passes);
        let took = log.recovery_started.elapsed();
        log.recovery_took = Some(took);
        took
    }

    /// One VM is recovered (or its recovery gave up): operations waiting
    /// for it go on.
    pub(super) fn recovered(&self, e: &Entry) {
        e.recovering.store(false, Ordering::Release);
        let (m, cv) = &self.recovery_signal;
        let _g = lock(m);
        cv.notify_all();
    }

    /// Resolves a user's `<vm>` argument (a name or an id) for an
    /// operation: a VM still being recovered after a restart is waited for
    /// (up to [`RECOVERY_WAIT`]).
    pub(super) fn resolve(&self, vm: &str) -> Result<(VmId, Arc<Entry>), ManagerError> {
        let mut deadline = None;
        loop {
            let (id, e) = self.resolve_now(vm)?;
            if self.await_recovery(&e, &mut deadline)? {
                return Ok((id, e));
            }
        }
    }

    /// Waits (up to [`RECOVERY_WAIT`] in all) until `e` is no longer being
    /// recovered. `Ok(false)` when it was not; then it may have left the
    /// table (a create undone, a destroy finished): resolve it again.
    fn await_recovery(
        &self,
        e: &Arc<Entry>,
        deadline: &mut Option<Instant>,
    ) -> Result<bool, ManagerError> {
        if !e.recovering.load(Ordering::Acquire) {
            return Ok(true);
        }
        let until = *deadline.get_or_insert_with(|| Instant::now() + RECOVERY_WAIT);
        let (m, cv) = &self.recovery_signal;
        let mut g = lock(m);
        while e.recovering.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= until {
                return Err(ManagerError::Recovering(e.name.to_string()));
            }
            g = cv
                .wait_timeout(g, (until - now).min(Duration::from_secs(1)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(false)
    }
}
