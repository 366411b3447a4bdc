//! VM resource use (docs/metrics.md): a sampler thread reads, every
//! `metrics.interval_secs`, each VM's host-side numbers (the VMM's CPU
//! time and RSS from /proc, its disk file's size and blocks, its tap's
//! counters) and, less often and never waiting for it, the guest's own
//! view through its agent (`guest.rs`); `GET /stats`, `GET /vms/{vm}/stats`
//! and `GET /metrics` (`prometheus.rs`) read its latest sample.
//!
//! The sampler keeps one previous sample per VM (for CPU percent) and
//! forgets VMs that are gone: its memory is bounded by the VM table. It
//! takes no VM's lock, so it never blocks an operation.

mod guest;
pub mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::lifecycle::VmState;
use super::lock;
use super::manager::{Manager, ManagerError};
use super::store::{self, VmRecord};
use crate::host::usage::{self, IfCounters};
use crate::wire::stats::{CpuStats, DiskStats, MemoryStats, NetStats, VmStats};
use guest::Asker;

/// Starts the sampler thread, unless `metrics.interval_secs` is 0.
pub fn start(m: Arc<Manager>) {
    let cfg = m.config().metrics.clone();
    if cfg.interval_secs == 0 {
        eprintln!("fcm daemon: metrics sampler off (metrics.interval_secs is 0)");
        return;
    }
    let interval = Duration::from_secs(cfg.interval_secs);
    let every = Duration::from_secs(cfg.guest_interval_secs.max(cfg.interval_secs));
    let timeout = Duration::from_secs(cfg.guest_timeout_secs.max(1));
    let spawned = std::thread::Builder::new()
        .name("fcm-metrics".into())
        .spawn(move || {
            let mut s = Sampler {
                prev: BTreeMap::new(),
                asker: Asker::new(every, timeout),
                interval,
            };
            loop {
                let began = Instant::now();
                // A bug here must not end the sampler.
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.pass(&m)));
                if pass.is_err() {
                    eprintln!("fcm daemon: the metrics sampler panicked (a bug); it goes on");
                }
                let t = m.telemetry();
                t.sampler_passes.fetch_add(1, Ordering::Relaxed);
                let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                t.sampler_usec.fetch_add(took, Ordering::Relaxed);
                std::thread::sleep(interval.saturating_sub(began.elapsed()));
            }
        });
    if let Err(e) = spawned {
        eprintln!("fcm daemon: warning: no metrics sampler thread: {e}");
    }
}

/// The host-side numbers of one VM at one moment.
struct HostSample {
    at: Instant,
    /// The VMM process they were read from.
    pid: Option<u32>,
    cpu_usec: u64,
}

struct Sampler {
    prev: BTreeMap<String, HostSample>,
    asker: Asker,
    interval: Duration,
}

impl Sampler {
    fn pass(&mut self, m: &Manager) {
        self.asker.collect();
        let ifs = usage::interfaces();
        let mut out = BTreeMap::new();
        let mut live = BTreeSet::new();
        for r in m.records() {
            let id = r.id.to_string();
            live.insert(id.clone());
            let mut st = host_stats(m, &r, &ifs);
            st.interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
            let now = HostSample {
                at: Instant::now(),
                pid: running_pid(&r),
                cpu_usec: st.cpu.usage_usec,
            };
            if let Some(p) = self
                .prev
                .get(&id)
                .filter(|p| p.pid == now.pid && now.pid.is_some())
            {
                let wall = now.at.duration_since(p.at).as_micros();
                let used = now.cpu_usec.saturating_sub(p.cpu_usec);
                if wall > 0 {
                    let pct = used as f64 * 100.0 / wall as f64;
                    st.cpu.percent = (pct * 10.0).round() / 10.0;
                }
            }
            if r.state == VmState::Running && !r.identity_pending && r.pid.is_some() {
                self.asker.ask(&id, m.guest(&r));
                if let Some(v) = self.asker.view(&id) {
                    st.memory.guest = v.memory.clone();
                    st.disk.guest = v.disk.clone();
                }
            } else {
                self.asker.forget(&id);
            }
            self.prev.insert(id.clone(), now);
            out.insert(id, st);
        }
        self.prev.retain(|k, _| live.contains(k));
        self.asker.retain(&live);
        *lock(&m.telemetry().samples) = out;
    }
}

/// The VMM's pid while one runs the VM.
fn running_pid(r: &VmRecord) -> Option<u32> {
    let runs = matches!(
        r.state,
        VmState::Running | VmState::Checkpointing | VmState::Forking | VmState::Stopping
    );
    r.pid.filter(|p| runs && *p > 0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A VM's host-side numbers now (no CPU percent, no guest view).
fn host_stats(m: &Manager, r: &VmRecord, ifs: &BTreeMap<String, IfCounters>) -> VmStats {
    let pid = running_pid(r);
    let disk = store::vm_dir(&m.config().state_dir, &r.id).join("rootfs.img");
    let (size, allocated) = usage::file_space(&disk).unwrap_or((0, 0));
    // The tap's rx is what the guest sent; its tx what the guest got.
    let tap = pid
        .and_then(|_| ifs.get(&r.tap))
        .copied()
        .unwrap_or_default();
    VmStats {
        host: None,
        name: r.name.to_string(),
        id: r.id.to_string(),
        state: r.state.as_str().to_owned(),
        at: unix_ms(),
        interval_ms: 0,
        cpu: CpuStats {
            vcpus: u32::from(r.cpus),
            usage_usec: pid.and_then(usage::cpu_usec).unwrap_or(0),
            percent: 0.0,
        },
        memory: MemoryStats {
            limit_bytes: u64::from(r.memory_mib) << 20,
            vmm_rss_bytes: pid.and_then(usage::rss_bytes).unwrap_or(0),
            guest: None,
        },
        disk: DiskStats {
            size_bytes: size,
            allocated_bytes: allocated,
            guest: None,
        },
        net: NetStats {
            rx_bytes: tap.tx_bytes,
            rx_packets: tap.tx_packets,
            tx_bytes: tap.rx_bytes,
            tx_packets: tap.rx_packets,
        },
    }
}

/// A VM's stats: the sampler's latest, unless there is none or the VM
/// changed state since (then its host-side numbers, read now).
fn stats_of(m: &Manager, r: &VmRecord, ifs: &BTreeMap<String, IfCounters>) -> VmStats {
    let cached = lock(&m.telemetry().samples).get(r.id.as_str()).cloned();
    match cached {
        Some(s) if s.state == r.state.as_str() => s,
        _ => host_stats(m, r, ifs),
    }
}

/// `GET /vms/{vm}/stats`.
pub fn one(m: &Manager, vm: &str) -> Result<VmStats, ManagerError> {
    let r = m.record_now(vm)?;
    Ok(stats_of(m, &r, &usage::interfaces()))
}

/// `GET /stats`: every VM, by name.
pub fn all(m: &Manager) -> Vec<VmStats> {
    let ifs = usage::interfaces();
    let mut v: Vec<VmStats> = m.records().iter().map(|r| stats_of(m, r, &ifs)).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}
