//! Idle sleep: a VM created with `--idle-pause` (or under the daemon's
//! `idle_pause_secs`) is paused once it has had no console attached and no
//! network traffic for that long, and woken by the next use: `console`,
//! `attach`, `sessions`, `exec`, `cp` (through [`Manager::running`]), `ssh`
//! and a request to its URL (both through `POST|GET /vms/{vm}/wake`; Caddy's
//! `forward_auth` holds the request until the VM runs).
//!
//! Traffic is the tap's packet counters (`/proc/net/dev`, read in the
//! daemon's network namespace, where the taps are), sampled every second:
//! more than [`NOISE_PACKETS`] in a second counts as use. A pause by idle
//! sleep is marked in the record (`idle_paused`), so only those wake by
//! themselves; a VM a user paused stays paused until `fcm resume`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Entry, Manager, ManagerError, wrong_state};
use crate::daemon::lifecycle::{self, VmState};
use crate::daemon::lock;
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::names::VmId;
use crate::wire::api::VmView;

/// Packets a second a quiet VM may still exchange (a stray ARP or
/// neighbour probe) without counting as in use.
const NOISE_PACKETS: u64 = 2;

/// Longest a wake waits for a pause or resume under way to finish.
const WAKE_DEADLINE: Duration = Duration::from_secs(120);

/// When a VM was last seen in use, its tap's packet count then, and the
/// state the last round saw it in.
pub(super) struct Activity {
    last: Instant,
    packets: Option<u64>,
    seen: Option<VmState>,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            last: Instant::now(),
            packets: None,
            seen: None,
        }
    }
}

/// The VM is in use now.
pub(super) fn touch(e: &Entry) {
    lock(&e.activity).last = Instant::now();
}

/// Whether a VM with idle sleep after `secs` has been idle that long.
pub(super) fn still_idle(e: &Entry, secs: Option<u64>) -> bool {
    secs.is_some_and(|s| lock(&e.activity).last.elapsed() >= Duration::from_secs(s))
}

/// Packets in and out of each interface of this network namespace
/// (`host::usage`, which the metrics sampler reads too).
fn packet_counts() -> HashMap<String, u64> {
    crate::host::usage::interfaces()
        .into_iter()
        .map(|(name, c)| (name, c.rx_packets.saturating_add(c.tx_packets)))
        .collect()
}

impl Manager {
    /// A VM asleep by idle sleep (or on its way in or out of it).
    pub(super) fn asleep(r: &VmRecord) -> bool {
        r.idle_paused
            && matches!(
                r.state,
                VmState::Pausing | VmState::Paused | VmState::Resuming
            )
    }

    /// One round of idle sleep (every second): notes use, pauses the VMs
    /// idle for their time. `consoles` counts the consoles attached to a VM.
    pub fn idle_tick(&self, consoles: &dyn Fn(&VmId) -> usize) {
        let entries: Vec<Arc<Entry>> = lock(&self.vms)
            .values()
            .filter(|e| !e.recovering.load(std::sync::atomic::Ordering::Acquire))
            .cloned()
            .collect();
        if !entries
            .iter()
            .any(|e| lock(&e.rec).idle_pause_secs.is_some())
        {
            return;
        }
        let counts = packet_counts();
        for e in entries {
            let (id, tap, state, secs) = {
                let r = lock(&e.rec);
                (r.id.clone(), r.tap.clone(), r.state, r.idle_pause_secs)
            };
            let Some(secs) = secs else { continue };
            let now = counts.get(&tap).copied();
            {
                let mut a = lock(&e.activity);
                let traffic = match (a.packets, now) {
                    (Some(before), Some(now)) => now.saturating_sub(before) > NOISE_PACKETS,
                    _ => false,
                };
                a.packets = now;
                // A VM that has just come to run (a resume, a start) counts
                // as used now: rounds may have been missed while this thread
                // paused another VM, and its `last` is from before.
                let arrived = a.seen.replace(state) != Some(VmState::Running);
                if state != VmState::Running || arrived || traffic || consoles(&id) > 0 {
                    a.last = Instant::now();
                    continue;
                }
                let idle = a.last.elapsed();
                if idle < Duration::from_secs(secs) {
                    continue;
                }
                eprintln!(
                    "fcm: {}: idle for {:.1} s (no console, no traffic; its limit {secs} s): pausing it",
                    e.name,
                    idle.as_secs_f64()
                );
            }
            if let Err(err) = self.pause_as(id.as_str(), true) {
                eprintln!("fcm: warning: idle sleep of {}: {}", e.name, chain(&err));
                // Not again at once: after another idle period.
                touch(&e);
            }
        }
    }

    /// `POST|GET /vms/{vm}/wake`: a VM asleep by idle sleep is resumed (a
    /// pause or resume under way is waited for); a running VM counts as in
    /// use. Answers once the VM runs; a VM stopped or paused by a user is a
    /// wrong-state error.
    pub fn wake(&self, vm: &str) -> Result<VmView, ManagerError> {
        let deadline = Instant::now() + WAKE_DEADLINE;
        loop {
            let (_, e) = self.resolve(vm)?;
            self.refresh(&e);
            let r = lock(&e.rec).clone();
            let under_way = matches!(
                r.state,
                VmState::Pausing | VmState::Resuming | VmState::Starting | VmState::Creating
            );
            match r.state {
                VmState::Running => {
                    touch(&e);
                    return Ok(r.view());
                }
                VmState::Paused if r.idle_paused => {
                    eprintln!("fcm: {}: woken from idle sleep", r.name);
                    match self.resume(vm) {
                        Ok(view) => {
                            touch(&e);
                            return Ok(view);
                        }
                        // Another wake got there first: look again.
                        Err(ManagerError::WrongState { .. }) => {}
                        Err(err) => return Err(err),
                    }
                }
                _ if under_way && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let w = lifecycle::WrongState {
                        state: r.state,
                        wanted: "running",
                        action: "use it",
                    };
                    return Err(wrong_state(&r, w));
                }
            }
        }
    }
}
