//! One guard per operation on a VM. [`Manager::operation`] opens every
//! operation the same way: counted as under way (refused while the daemon
//! shuts down), the VM resolved, its operation lock taken, the VM
//! refreshed and the transition checked against its state. The operation
//! then checks what is its own; [`Op::begin`] records the transition's
//! `during` state before the first side effect, [`Op::done`] its `to`
//! state, and [`Op::fail`] its `failed` state with the cause: the states
//! come from `lifecycle::Transition`, never from the operation's code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{Cause, Entry, Manager, ManagerError, wrong_state};
use crate::daemon::lifecycle::{Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::{StoreError, VmRecord};

/// Serialises the long operations on one VM. Its guard owns a handle of
/// the lock rather than borrowing it, so an [`Op`] that holds it can be
/// returned and moved.
pub(super) struct OpLock(Arc<(Mutex<bool>, Condvar)>);

/// Holds a VM's operation lock until dropped.
pub(super) struct OpGuard(Arc<(Mutex<bool>, Condvar)>);

impl OpLock {
    pub(super) fn new() -> Self {
        Self(Arc::new((Mutex::new(false), Condvar::new())))
    }

    /// Waits until no other operation holds the VM (an operation holds it
    /// until it has recorded where it ended; each of its waits has its own
    /// deadline).
    pub(super) fn hold(&self) -> OpGuard {
        let (busy, free) = &*self.0;
        let mut held = lock(busy);
        while *held {
            held = free.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held = true;
        OpGuard(Arc::clone(&self.0))
    }

    /// The lock, if no operation holds it (housekeeping skips a busy VM).
    pub(super) fn try_hold(&self) -> Option<OpGuard> {
        let mut held = lock(&self.0.0);
        if *held {
            return None;
        }
        *held = true;
        Some(OpGuard(Arc::clone(&self.0)))
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        let (busy, free) = &*self.0;
        *lock(busy) = false;
        free.notify_one();
    }
}

/// Counts an operation under way, for a graceful shutdown.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Manager {
    /// Admits an operation that changes a VM, unless the daemon is shutting
    /// down; the guard counts it as under way until dropped.
    pub(super) fn begin(&self) -> Result<InFlight<'_>, ManagerError> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(&self.in_flight);
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ManagerError::ShuttingDown);
        }
        Ok(guard)
    }

    /// Holds `vm` for an operation: counted as under way, resolved, its
    /// operation lock taken. Its transition is checked next
    /// ([`Held::check`]); `checkpoint rm`, which changes no state, uses
    /// the hold alone.
    pub(super) fn hold(&self, vm: &str) -> Result<Held<'_>, ManagerError> {
        let in_flight = self.begin()?;
        let (_, e) = self.resolve(vm)?;
        Ok(self.held(e, in_flight))
    }

    /// A VM held by an operation admitted as `in_flight`; the lock of a
    /// new VM (create) is taken before it can be found.
    pub(super) fn held<'m>(&'m self, e: Arc<Entry>, in_flight: InFlight<'m>) -> Held<'m> {
        let lock = e.op.hold();
        Held {
            m: self,
            e,
            _lock: lock,
            _in_flight: in_flight,
        }
    }

    /// The opening of an operation on `vm` taking transition `t`: held
    /// ([`Self::hold`]), refreshed, checked ([`Held::check`]).
    pub(super) fn operation(&self, vm: &str, t: Transition) -> Result<Op<'_>, ManagerError> {
        self.hold(vm)?.check(t)
    }
}

/// A VM held for an operation: counted as under way, resolved, its
/// operation lock taken.
pub(super) struct Held<'m> {
    m: &'m Manager,
    e: Arc<Entry>,
    _lock: OpGuard,
    _in_flight: InFlight<'m>,
}

impl<'m> Held<'m> {
    /// The VM's record now.
    pub(super) fn record(&self) -> VmRecord {
        lock(&self.e.rec).clone()
    }

    /// Refreshes the VM (a VMM found dead is recorded stopped; not for a
    /// destroy, which ends the VM whatever its VMM does) and checks that
    /// its state allows `t`: the operation may go on.
    pub(super) fn check(self, t: Transition) -> Result<Op<'m>, ManagerError> {
        if t != Transition::Destroy {
            self.m.refresh_held(&self.e);
        }
        let r = self.record();
        t.check(r.state).map_err(|w| wrong_state(&r, w))?;
        Ok(Op { held: self, r, t })
    }
}

/// An operation under way on a held VM, its transition checked.
pub(super) struct Op<'m> {
    held: Held<'m>,
    /// The record as the operation changes it; saved (and then made the
    /// entry's) by [`Op::begin`], [`Op::done`], [`Op::fail`], [`Op::save`].
    pub(super) r: VmRecord,
    t: Transition,
}

impl Op<'_> {
    pub(super) fn entry(&self) -> &Entry {
        &self.held.e
    }

    /// Records the transition's `during` state, its intent, before its
    /// first side effect (nothing for one without: resize).
    pub(super) fn begin(&mut self) -> Result<(), ManagerError> {
        match self.t.during() {
            Some(s) => self.record(s),
            None => Ok(()),
        }
    }

    /// Records the transition's `to` state; a VM that is no more
    /// (destroyed) leaves the table.
    pub(super) fn done(&mut self) -> Result<(), ManagerError> {
        match self.t.to() {
            Some(s) => self.record(s),
            None => {
                lock(&self.held.m.vms).remove(&self.r.id);
                self.held.m.told_destroyed(&self.r);
                Ok(())
            }
        }
    }

    /// The operation failed for `cause`: records the transition's `failed`
    /// state (once what it did is undone; nothing if the record says so
    /// already, e.g. before [`Op::begin`]) and returns the error. If that
    /// record cannot be saved, that is the error.
    pub(super) fn fail(&mut self, cause: impl Into<Cause>) -> ManagerError {
        if let Some(s) = self.t.failed()
            && s != self.r.state
            && let Err(e) = self.record(s)
        {
            return e;
        }
        self.error(cause.into())
    }

    /// Saves the record as it is now (create: with the guest's host key).
    pub(super) fn save(&mut self) -> Result<(), StoreError> {
        self.held.m.save(&self.held.e, &self.r)?;
        // In a cluster, the record goes to etcd now (`daemon::cluster`).
        if let Some(c) = self.held.m.cluster() {
            c.nudge();
        }
        Ok(())
    }

    fn record(&mut self, state: VmState) -> Result<(), ManagerError> {
        self.r.state = state;
        // Asleep by idle sleep only on the way to, in and out of `paused`.
        if !matches!(
            state,
            VmState::Pausing | VmState::Paused | VmState::Resuming
        ) {
            self.r.idle_paused = false;
        }
        self.save().map_err(|e| self.error(e.into()))
    }

    fn error(&self, cause: Cause) -> ManagerError {
        ManagerError::Operation {
            action: self.t.verb(),
            name: self.r.name.to_string(),
            cause: Box::new(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_operation_lock_has_one_holder_at_a_time() {
        let l = OpLock::new();
        let held = l.hold();
        assert!(l.try_hold().is_none(), "housekeeping got a held VM");
        let other = OpLock(Arc::clone(&l.0));
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _g = other.hold();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a second operation got the lock while it was held"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the waiting operation got the lock once it was free");
        waiter.join().expect("waiter");
        assert!(l.try_hold().is_some(), "free again once its holder ended");
    }
}
