//! Soak: many operations on many VMs at once, for real (QEMU guests in a
//! network namespace), with the daemon SIGKILLed and restarted under them
//! and the guests' agents killed now and then. One worker thread per VM
//! takes it through create, exec, cp, pause, resume, checkpoint, restore,
//! stop, start and destroy (tests/soak/worker.rs); a marker file in each
//! guest is checked after every restore and restart.
//!
//! Phases: *chaos* (the daemon is killed every `FCM_SOAK_OPS_PER_KILL`
//! operations, `FCM_SOAK_KILLS` times), *warm-up* (one cycle on the last
//! daemon), *measured* (`FCM_SOAK_CYCLES` cycles). After it: every VM is
//! there with its data, nothing leaked (tests/soak/leaks.rs: taps, nft
//! rules, cgroups, directories, processes, mounts, loop devices), and the
//! daemon's RSS and threads are back within 10 % of their figures after
//! the warm-up, its descriptors within a few. `bench/soak.sh` runs it long
//! (`FCM_SOAK_VMS`, `FCM_SOAK_MEMORY`, `FCM_SOAK_REPORT` for its figures).

mod common;
#[path = "soak/leaks.rs"]
mod leaks;
#[path = "soak/probe.rs"]
mod probe;
#[path = "soak/worker.rs"]
mod worker;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Fcm, e2e_ready, wait_for};
use probe::{Cli, Figures, figures, percentile};
use worker::{Cause, Shared, Worker};

/// The sizes of a run, from the environment (the CI's by default).
#[derive(Debug, Clone)]
struct Knobs {
    vms: usize,
    kills: u64,
    ops_per_kill: u64,
    /// Cycles each worker runs at least in the chaos phase.
    chaos_cycles: u64,
    measured_cycles: u64,
    memory_mib: u64,
    report: Option<PathBuf>,
}

impl Knobs {
    fn from_env() -> Self {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Self {
            vms: num("FCM_SOAK_VMS", 6) as usize,
            kills: num("FCM_SOAK_KILLS", 3),
            ops_per_kill: num("FCM_SOAK_OPS_PER_KILL", 35),
            chaos_cycles: num("FCM_SOAK_CHAOS_CYCLES", 1),
            measured_cycles: num("FCM_SOAK_CYCLES", 1),
            memory_mib: num("FCM_SOAK_MEMORY", 128),
            report: std::env::var_os("FCM_SOAK_REPORT").map(PathBuf::from),
        }
    }
}

/// A tiny deterministic generator, seeded from the clock (printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

fn set_phase(sh: &Shared, p: &'static str) {
    *sh.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    println!(
        "soak: phase {p} at {:.0} s, {} ops",
        sh.at_s(),
        sh.ops.load(Ordering::Acquire)
    );
}

/// Marks the soak failed if the thread it guards panics, so the others stop.
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// Runs `cycles` cycles (or, with `until_kills`, until the killer is done
/// too) on every worker at once.
fn run_phase(workers: &mut [Worker<'_>], sh: &Shared, cycles: u64, until_kills: bool) {
    std::thread::scope(|s| {
        for w in workers.iter_mut() {
            s.spawn(move || {
                let _guard = AbortOnPanic(&sh.abort);
                let mut done = 0;
                while done < cycles || (until_kills && !sh.kills_done.load(Ordering::Acquire)) {
                    let c = w.cycle + w.i as u64;
                    w.cycle(c % 3 == 2, c % 2 == 1);
                    done += 1;
                }
            });
        }
    });
}

/// Kills the daemon (SIGKILL) every `ops_per_kill` operations (± a third),
/// restarting it after a random pause of up to 1.5 s.
fn killer(f: &mut Fcm, sh: &Shared, k: &Knobs, rng: &mut Rng) {
    let _guard = AbortOnPanic(&sh.abort);
    let mut next = 0;
    for n in 0..k.kills {
        next += k.ops_per_kill * 2 / 3 + rng.next(k.ops_per_kill * 2 / 3 + 1);
        while sh.ops.load(Ordering::Acquire) < next {
            if sh.abort.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        sh.epoch.fetch_add(1, Ordering::AcqRel);
        f.kill_daemon();
        sh.ledger().kills.push(sh.at_s());
        println!(
            "soak: daemon SIGKILLed ({} of {}) at {:.0} s, after {} ops",
            n + 1,
            k.kills,
            sh.at_s(),
            sh.ops.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(rng.next(1500)));
        f.spawn_daemon();
        sh.daemon_pid
            .store(f.daemon_pid().unwrap_or(0), Ordering::Release);
        sh.epoch.fetch_add(1, Ordering::AcqRel);
    }
    sh.kills_done.store(true, Ordering::Release);
}

/// Waits (up to 60 s) for the daemon's figures to come back within the
/// bounds of `base`: RSS and threads within 10 %, descriptors within 10 %
/// or 4. Returns the last figures and whether they did.
fn settle(pid: u32, base: Figures) -> (Figures, bool) {
    let within = |now: &Figures| {
        let ten = |a: u64, b: u64| a as f64 <= b as f64 * 1.10;
        ten(now.rss_kib, base.rss_kib)
            && ten(now.threads, base.threads)
            && now.fds <= (base.fds + 4).max(base.fds * 11 / 10)
    };
    let ok = wait_for(Duration::from_secs(60), || {
        figures(pid).filter(within).map(|_| ())
    });
    (figures(pid).unwrap_or(base), ok.is_some())
}

#[test]
fn soak_many_operations_on_many_vms_with_daemon_kills_leaks_nothing() {
    if !e2e_ready() {
        return;
    }
    let k = Knobs::from_env();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1;
    println!("soak: {k:?}, seed {seed}");
    let tmp = tempfile::Builder::new()
        .prefix("fcm-soak-")
        .tempdir_in(common::tmp_root())
        .expect("tempdir");
    let cfg = tmp.path().join("fcm-soak.json");
    let cfg_text = serde_json::json!({ "stop_timeout_secs": 10, "caddy": { "enabled": false } });
    fs::write(&cfg, cfg_text.to_string()).expect("config");
    let mut f = Fcm::start("soak", &["--config", &cfg.display().to_string()]);
    let sh = Shared {
        cli: Cli::of(&f),
        ns: f.ns.name.clone(),
        state_dir: f.state(),
        tmp: tmp.path().to_path_buf(),
        memory: k.memory_mib.to_string(),
        started: Instant::now(),
        epoch: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        daemon_pid: AtomicU32::new(f.daemon_pid().unwrap_or(0)),
        kills_done: AtomicBool::new(k.kills == 0),
        abort: AtomicBool::new(false),
        phase: Mutex::new("chaos"),
        ledger: Mutex::default(),
    };
    let mut rng = Rng(seed);
    let mut workers: Vec<Worker<'_>> = (0..k.vms).map(|i| Worker::new(i, &sh)).collect();
    let samples: Mutex<Vec<(f64, Figures)>> = Mutex::default();
    let sampling = AtomicBool::new(true);
    let mut baseline = None;
    let mut end = None;

    // The phases; a failure in them still leaves its figures (the report,
    // for bench/soak.sh) before it fails the test.
    let phases = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::scope(|outer| {
            // The daemon's figures every second, whichever daemon runs.
            outer.spawn(|| {
                while sampling.load(Ordering::Acquire) {
                    let pid = sh.daemon_pid.load(Ordering::Acquire);
                    if let Some(fig) = figures(pid) {
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((sh.at_s(), fig));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
            let _stop_sampling = StopFlag(&sampling);
            set_phase(&sh, "chaos");
            std::thread::scope(|s| {
                let (f, sh, k, rng) = (&mut f, &sh, &k, &mut rng);
                s.spawn(move || killer(f, sh, k, rng));
                run_phase(&mut workers, sh, k.chaos_cycles, true);
            });
            set_phase(&sh, "warm-up");
            run_phase(&mut workers, &sh, 1, false);
            let pid = f.daemon_pid().expect("daemon pid");
            std::thread::sleep(Duration::from_secs(3));
            let base = figures(pid).expect("daemon figures");
            println!("soak: daemon after the warm-up: {base}");
            baseline = Some(base);
            set_phase(&sh, "measured");
            run_phase(&mut workers, &sh, k.measured_cycles, false);
            set_phase(&sh, "settle");
            end = Some(settle(pid, base));
        });
    }));
    if let Err(panic) = phases {
        let none = Figures {
            rss_kib: 0,
            threads: 0,
            fds: 0,
        };
        let mut report = summary(&sh, &k, baseline.unwrap_or(none), none, &lock(&samples));
        report["failed"] = serde_json::json!(true);
        write_report(&k, &report);
        std::panic::resume_unwind(panic);
    }
    let base = baseline.expect("baseline");
    let (end_figures, settled) = end.expect("end figures");
    // Nothing under way: the daemon has nothing to say (two housekeeping
    // passes and a dozen idle ones later).
    let before = fs::read_to_string(f.log()).unwrap_or_default().len();
    std::thread::sleep(Duration::from_secs(12));
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    let chatter: Vec<&str> = log.get(before..).unwrap_or_default().lines().collect();
    println!("soak: daemon after the measured phase: {end_figures} (after the warm-up: {base})");

    // Every VM is there, running, with its data.
    for w in workers.iter_mut() {
        w.check_marker("at the end");
    }
    let listed = leaks::listed(&f);
    let names: Vec<String> = f
        .vms()
        .iter()
        .map(|v| {
            format!(
                "{}={}",
                v["name"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(listed.len(), k.vms, "VMs listed at the end: {names:?}");
    for w in &workers {
        let id = w.id.clone().expect("every worker ends with a VM");
        assert_eq!(
            listed.get(&id).map(String::as_str),
            Some("running"),
            "{}: {names:?}",
            w.name
        );
    }
    let (seen, cgroups) = {
        let l = sh.ledger();
        (l.seen.clone(), l.cgroups.clone())
    };
    let mut findings: Vec<String> = leaks::leaks(&f, &seen, &cgroups)
        .into_iter()
        .map(|l| format!("all running: {l}"))
        .collect();

    // Parked: one stopped and one paused VM own nothing of a running one.
    let park = |verb: &str, w: &Worker<'_>| {
        let out = f.run(&[verb, &w.name]);
        assert!(
            out.status.success(),
            "{verb} {}: {}",
            w.name,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    park("stop", &workers[0]);
    if workers.len() > 1 {
        park("pause", &workers[1]);
    }
    findings.extend(
        leaks::leaks(&f, &seen, &cgroups)
            .into_iter()
            .map(|l| format!("parked: {l}")),
    );
    // Destroyed: nothing of any VM is left.
    for w in &workers {
        park("destroy", w);
    }
    findings.extend(
        leaks::leaks(&f, &seen, &cgroups)
            .into_iter()
            .map(|l| format!("all destroyed: {l}")),
    );

    // The check itself can fail: what the test plants, it reports.
    let ghost = seen.iter().next().cloned().expect("a VM was made");
    let missed = leaks::unnoticed_plants(&f, &ghost, &seen, &cgroups);
    assert!(
        missed.is_empty(),
        "the leak check missed planted leaks: {missed:?}"
    );
    println!(
        "soak: leak list (taps, nft, cgroups, dirs, processes, mounts, loops) over {} VM ids, \
         all running, parked and all destroyed: {} findings; planted leaks all found",
        seen.len(),
        findings.len()
    );

    let report = summary(&sh, &k, base, end_figures, &lock(&samples));
    write_report(&k, &report);

    let l = sh.ledger();
    let unexpected: Vec<String> = l
        .failures
        .iter()
        .filter(|x| x.cause == Cause::Unexpected)
        .map(|x| format!("soak-{} {}: {}", x.vm, x.kind, x.message))
        .collect();
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert!(
        l.ops.len() >= 200 || k.vms < 6,
        "only {} operations",
        l.ops.len()
    );
    assert_eq!(l.kills.len() as u64, k.kills, "daemon kills");
    assert!(
        unexpected.is_empty(),
        "failures no kill explains:\n{}",
        unexpected.join("\n")
    );
    assert!(l.lost.is_empty(), "data lost:\n{}", l.lost.join("\n"));
    assert!(findings.is_empty(), "leaks:\n{}", findings.join("\n"));
    assert!(
        chatter.is_empty(),
        "the daemon's log grew by {} lines in 12 s with nothing under way:\n{}",
        chatter.len(),
        chatter
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        panics.is_empty(),
        "the daemon logged panics:\n{}",
        panics.join("\n")
    );
    assert!(
        settled,
        "the daemon did not come back to its figures after the warm-up: {end_figures}, \
         after the warm-up {base} (RSS and threads within 10 %, descriptors within 10 % or 4); \
         descriptors now: {:?}",
        f.daemon_pid().map(probe::fd_kinds)
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_report(k: &Knobs, report: &serde_json::Value) {
    if let Some(path) = &k.report {
        let text = serde_json::to_string_pretty(report).unwrap_or_default();
        fs::write(path, text).expect("report");
    }
}

/// Sets a flag to false when dropped (also on a panic).
struct StopFlag<'a>(&'a AtomicBool);

impl Drop for StopFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Prints the run's figures and returns them as JSON (for bench/soak.sh).
fn summary(
    sh: &Shared,
    k: &Knobs,
    base: Figures,
    end: Figures,
    samples: &[(f64, Figures)],
) -> serde_json::Value {
    let l = sh.ledger();
    let secs = sh.at_s();
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for o in &l.ops {
        by_kind.entry(o.kind).or_default().push(o.ms);
    }
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    for x in &l.failures {
        *causes.entry(format!("{:?}", x.cause)).or_default() += 1;
    }
    println!(
        "soak: {} operations on {} VMs in {secs:.0} s ({:.1} per minute), {} daemon kills, {} agent kills, {} VMs made in all",
        l.ops.len(),
        k.vms,
        l.ops.len() as f64 * 60.0 / secs,
        l.kills.len(),
        l.agent_kills,
        l.seen.len()
    );
    println!(
        "soak: failed attempts by cause: {causes:?}; deviations: {}",
        l.deviations.len()
    );
    let mut kinds = serde_json::Map::new();
    for (kind, v) in by_kind.iter_mut() {
        v.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "soak:   {kind:<14} {:>4} ops  p50 {p50:>8.1} ms  p99 {p99:>8.1} ms",
            v.len()
        );
        kinds.insert(
            kind.to_string(),
            serde_json::json!({ "count": v.len(), "p50_ms": p50, "p99_ms": p99 }),
        );
    }
    let fig = |f: Figures| serde_json::json!({ "rss_kib": f.rss_kib, "threads": f.threads, "fds": f.fds });
    serde_json::json!({
        "vms": k.vms,
        "memory_mib": k.memory_mib,
        "seconds": secs,
        "operations": l.ops.len(),
        "kills": l.kills,
        "agent_kills": l.agent_kills,
        "vms_made": l.seen.len(),
        "failed_attempts": causes,
        "ops_per_vm": (0..k.vms).map(|i| l.ops.iter().filter(|o| o.vm == i).count()).collect::<Vec<_>>(),
        "retried_ops": l.ops.iter().filter(|o| o.attempts > 1).count(),
        "failures": l.failures.iter().map(|x| serde_json::json!({
            "at_s": x.at_s, "vm": x.vm, "kind": x.kind,
            "cause": format!("{:?}", x.cause), "message": x.message,
        })).collect::<Vec<_>>(),
        "deviations": l.deviations,
        "kinds": kinds,
        "after_warm_up": fig(base),
        "after_measured": fig(end),
        "samples": samples.iter().map(|(t, f)| serde_json::json!([t, f.rss_kib, f.threads, f.fds])).collect::<Vec<_>>(),
        "phases": l.ops.iter().fold(BTreeMap::<&str, (f64, f64)>::new(), |mut m, o| {
            let e = m.entry(o.phase).or_insert((o.at_s, o.at_s));
            e.0 = e.0.min(o.at_s);
            e.1 = e.1.max(o.at_s);
            m
        }),
    })
}
