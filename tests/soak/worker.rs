//! One soak worker: one VM, taken through every operation in a cycle,
//! with a marker file in its guest checked after each restore and
//! restart. A daemon killed under an operation makes it fail: the worker
//! waits for the daemon, looks at what the operation left (the VM's state,
//! its checkpoints) and either counts it done or tries again. Every
//! failure is kept with its cause: a daemon kill during the attempt, a
//! restart before it (the VM's first attempts on the new daemon, until one
//! succeeds: they go through a new connection to its agent), an agent
//! kill, or nothing the test did (unexpected: the soak fails).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::probe::{Cli, Run};

/// How long one operation may take, its retries included.
const OP_DEADLINE: Duration = Duration::from_secs(300);
/// How long one `fcm` run may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(150);

/// What the workers, the killer and the sampler share.
pub struct Shared {
    pub cli: Cli,
    /// The test's network namespace (for diagnostics).
    pub ns: String,
    pub state_dir: PathBuf,
    pub tmp: PathBuf,
    pub memory: String,
    pub started: Instant,
    /// Daemon generations: odd while a kill and its restart are under way.
    pub epoch: AtomicU64,
    /// Operations completed.
    pub ops: AtomicU64,
    pub daemon_pid: AtomicU32,
    pub kills_done: AtomicBool,
    /// Set when any part of the soak failed: everyone stops.
    pub abort: AtomicBool,
    pub phase: Mutex<&'static str>,
    pub ledger: Mutex<Ledger>,
}

impl Shared {
    pub fn at_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything the soak saw.
#[derive(Debug, Default)]
pub struct Ledger {
    pub ops: Vec<OpRecord>,
    pub failures: Vec<Failure>,
    /// Every VM id seen, with the cgroup directories recorded for it.
    pub cgroups: BTreeMap<String, Vec<PathBuf>>,
    pub seen: BTreeSet<String>,
    /// A marker that was not what the guest should hold.
    pub lost: Vec<String>,
    /// A VM found in a state its operation does not lead to.
    pub deviations: Vec<String>,
    /// Seconds from the start at which the daemon was killed.
    pub kills: Vec<f64>,
    pub agent_kills: u32,
}

#[derive(Debug, Clone)]
pub struct OpRecord {
    pub vm: usize,
    pub kind: &'static str,
    /// The successful attempt's time (all attempts' when it was found
    /// done after a failure).
    pub ms: f64,
    pub attempts: u32,
    pub phase: &'static str,
    pub at_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The daemon was killed or restarted during the attempt.
    DaemonKill,
    /// The first attempts on a VM after a daemon restart, until one
    /// succeeds: the new daemon's first connection to its agent.
    AfterRestart,
    /// The guest's agent was killed and has not answered since.
    AgentKill,
    Unexpected,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub vm: usize,
    pub kind: &'static str,
    pub cause: Cause,
    pub message: String,
    pub at_s: f64,
}

/// What a failed attempt leaves to do, decided once the daemon answers.
enum Then {
    Retry,
    Done,
    /// The VM is not where the operation starts: bring it back to running.
    Heal,
}

type Judge<'j> = &'j dyn Fn(&Worker<'_>, Option<&str>) -> Then;

pub struct Worker<'a> {
    pub i: usize,
    pub name: String,
    sh: &'a Shared,
    pub id: Option<String>,
    /// What /root/marker holds in the guest, as far as the worker knows.
    pub marker: Option<String>,
    seq: u64,
    pub cycle: u64,
    /// The daemon generation of the last marker check.
    checked_epoch: u64,
    /// The daemon generation of the last successful operation.
    ok_epoch: u64,
    agent_killed: bool,
}

impl<'a> Worker<'a> {
    pub fn new(i: usize, sh: &'a Shared) -> Self {
        Self {
            i,
            name: format!("soak-{i}"),
            sh,
            id: None,
            marker: None,
            seq: 0,
            cycle: 0,
            checked_epoch: 0,
            ok_epoch: 0,
            agent_killed: false,
        }
    }

    /// One cycle: every operation once, the marker checked after each
    /// restore and restart. `rebirth` destroys the VM and makes it anew
    /// first; `agent_kill` kills its agent at the end.
    pub fn cycle(&mut self, rebirth: bool, agent_kill: bool) {
        if self.id.is_some() && self.checked_epoch != self.sh.epoch() {
            self.check_marker("after a daemon restart");
        }
        if rebirth && self.id.is_some() {
            self.destroy();
        }
        if self.id.is_none() {
            self.create();
        }
        self.write_marker();
        self.check_marker("after writing it");
        self.copy_round_trip();
        self.simple("pause", "paused", &["running"]);
        self.simple("resume", "running", &["paused"]);
        self.check_marker("after resume");
        let cp = format!("k{}", self.cycle);
        self.checkpoint(&cp);
        let at_checkpoint = self.marker.clone();
        self.write_marker();
        self.restore(&cp, at_checkpoint);
        self.check_marker("after restore");
        self.checkpoint_rm(&cp);
        self.simple("stop", "stopped", &["running", "paused"]);
        self.simple("start", "running", &["stopped"]);
        self.check_marker("after start");
        if agent_kill {
            self.kill_agent();
            self.check_marker("after its agent was killed");
        }
        self.cycle += 1;
    }

    fn stop_if_aborted(&self) {
        if self.sh.abort.load(Ordering::Acquire) {
            panic!("{}: stopped, another part of the soak failed", self.name);
        }
    }

    /// Runs `fcm args` until it succeeds or `judge` (asked after each
    /// failure, with the VM's state) says the operation is done anyway.
    /// Returns the successful run's stdout.
    fn op(&mut self, kind: &'static str, args: &[&str], judge: Judge<'_>) -> Option<String> {
        let first = Instant::now();
        let mut attempts = 0;
        loop {
            self.stop_if_aborted();
            attempts += 1;
            let e0 = self.sh.epoch();
            let run = self.sh.cli.run(args, ATTEMPT_TIMEOUT);
            let e1 = self.sh.epoch();
            if run.ok {
                if kind == "exec" {
                    self.agent_killed = false;
                }
                self.ok_epoch = e1;
                self.record(kind, run.took, attempts);
                return Some(run.stdout);
            }
            let cause = if e0 % 2 == 1 || e1 != e0 {
                Cause::DaemonKill
            } else if self.ok_epoch != e0 {
                Cause::AfterRestart
            } else if self.agent_killed {
                Cause::AgentKill
            } else {
                Cause::Unexpected
            };
            self.fail(kind, cause, args, &run);
            assert!(
                first.elapsed() < OP_DEADLINE,
                "{}: fcm {args:?} kept failing for {} s: {}",
                self.name,
                OP_DEADLINE.as_secs(),
                run.stderr.trim()
            );
            let state = self.state();
            let then = match judge(self, state.as_deref()) {
                Then::Heal => {
                    self.heal(kind, state.as_deref());
                    judge(self, self.state().as_deref())
                }
                t => t,
            };
            if let Then::Done = then {
                // Done, though no call of it succeeded: a daemon kill cut
                // it (e.g. a start adopted as running after the restart,
                // whose readiness wait was lost with the daemon: its guest
                // may still be booting). The next failures are still the
                // restart's until an operation succeeds, so `ok_epoch`
                // stays.
                self.record(kind, first.elapsed(), attempts);
                return None;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn record(&self, kind: &'static str, took: Duration, attempts: u32) {
        self.sh.ops.fetch_add(1, Ordering::AcqRel);
        self.sh.ledger().ops.push(OpRecord {
            vm: self.i,
            kind,
            ms: took.as_secs_f64() * 1000.0,
            attempts,
            phase: self.sh.phase(),
            at_s: self.sh.at_s(),
        });
    }

    fn fail(&self, kind: &'static str, cause: Cause, args: &[&str], run: &Run) {
        let mut message = format!(
            "fcm {}: exit {:?} after {:.1} s: {}",
            args.join(" "),
            run.code,
            run.took.as_secs_f64(),
            run.stderr.trim()
        );
        if run.stderr.trim().is_empty() {
            message.push_str(&format!("(no stderr; stdout {:?})", run.stdout));
        }
        if cause == Cause::Unexpected {
            // What a user would look at next: is the VM on its network?
            if let Some(id) = &self.id {
                let faults = crate::leaks::network_faults(&self.sh.ns, id);
                let facts = if faults.is_empty() {
                    "its tap and port rules are in place".to_string()
                } else {
                    faults.join("; ")
                };
                message.push_str(&format!(" [{facts}]"));
            }
            eprintln!("soak: {} UNEXPECTED failure: {message}", self.name);
        }
        self.sh.ledger().failures.push(Failure {
            vm: self.i,
            kind,
            cause,
            message,
            at_s: self.sh.at_s(),
        });
    }

    /// The VM's (id, state) as listed, waiting (up to 2 minutes) for the
    /// daemon to answer; `None` when it is not listed.
    fn lookup(&self) -> Option<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.stop_if_aborted();
            let run = self.sh.cli.run(&["ls", "--json"], Duration::from_secs(30));
            let list: Option<Vec<serde_json::Value>> = run
                .ok
                .then(|| serde_json::from_str(run.stdout.trim()).ok())
                .flatten();
            if let Some(list) = list {
                return list
                    .into_iter()
                    .find(|v| v["name"] == self.name.as_str())
                    .map(|v| {
                        (
                            v["id"].as_str().unwrap_or_default().to_string(),
                            v["state"].as_str().unwrap_or_default().to_string(),
                        )
                    });
            }
            assert!(
                Instant::now() < deadline,
                "{}: the daemon did not answer `ls` for 2 minutes: {}",
                self.name,
                run.stderr.trim()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn state(&self) -> Option<String> {
        self.lookup().map(|(_, s)| s)
    }

    /// Brings the VM back to running from wherever a kill left it.
    fn heal(&mut self, during: &'static str, state: Option<&str>) {
        let note = format!(
            "{}: found {} during {during}; brought back to running",
            self.name,
            state.unwrap_or("missing")
        );
        eprintln!("soak: {note}");
        self.sh.ledger().deviations.push(note);
        match state {
            None => {
                if let Some(m) = self.marker.take() {
                    self.sh
                        .ledger()
                        .lost
                        .push(format!("{}: the VM vanished with marker {m}", self.name));
                }
                self.id = None;
                self.create();
            }
            Some("paused") => self.simple("resume", "running", &["paused"]),
            Some("stopped") => self.simple("start", "running", &["stopped"]),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }

    /// An operation whose outcome is a state: done once the VM is in
    /// `goal`, tried again from the states in `from`.
    fn simple(&mut self, verb: &'static str, goal: &'static str, from: &'static [&'static str]) {
        let name = self.name.clone();
        self.op(verb, &[verb, &name], &|_, s| match s {
            Some(s) if s == goal => Then::Done,
            Some(s) if from.contains(&s) => Then::Retry,
            _ => Then::Heal,
        });
        if goal == "running" {
            self.note_cgroups();
        }
    }

    fn create(&mut self) {
        let (name, memory) = (self.name.clone(), self.sh.memory.clone());
        let args = ["create", "--json", "--name", &name, "--memory", &memory];
        let out = self.op("create", &args, &|_, s| match s {
            Some("running") => Then::Done,
            Some(_) => Then::Heal,
            None => Then::Retry,
        });
        let id = out
            .and_then(|o| serde_json::from_str::<serde_json::Value>(o.trim()).ok())
            .and_then(|v| v["id"].as_str().map(String::from))
            .or_else(|| self.lookup().map(|(id, _)| id));
        let id = id.unwrap_or_else(|| panic!("{name}: created, but not listed"));
        self.sh.ledger().seen.insert(id.clone());
        self.id = Some(id);
        self.marker = None;
        self.note_cgroups();
    }

    fn destroy(&mut self) {
        let name = self.name.clone();
        self.op("destroy", &["destroy", &name], &|_, s| match s {
            None => Then::Done,
            Some(_) => Then::Retry,
        });
        self.id = None;
        self.marker = None;
    }

    /// Keeps the cgroup directories the VM's record lists (read while it
    /// runs: they are gone with it), for the leak check.
    fn note_cgroups(&self) {
        let Some(id) = &self.id else { return };
        let listing =
            fs::read_to_string(self.sh.state_dir.join(id).join("cgroups")).unwrap_or_default();
        let mut l = self.sh.ledger();
        let dirs = l.cgroups.entry(id.clone()).or_default();
        for line in listing.lines().filter(|l| !l.is_empty()) {
            if !dirs.iter().any(|d| d.as_os_str() == line) {
                dirs.push(PathBuf::from(line));
            }
        }
    }

    fn exec(&mut self, script: &str) -> String {
        let name = self.name.clone();
        let args = ["exec", &name, "--", "sh", "-c", script];
        let out = self.op("exec", &args, &|_, s| match s {
            Some("running") => Then::Retry,
            _ => Then::Heal,
        });
        out.unwrap_or_default()
    }

    fn write_marker(&mut self) {
        self.seq += 1;
        let m = format!("{}-c{}-{}", self.name, self.cycle, self.seq);
        self.exec(&format!("printf %s {m} > /root/marker && sync"));
        self.marker = Some(m);
    }

    /// The guest's marker must be what the worker last wrote (or, after a
    /// restore, what it was at the checkpoint).
    pub fn check_marker(&mut self, when: &str) {
        let epoch = self.sh.epoch();
        let got = self.exec("cat /root/marker 2>/dev/null || printf no-marker");
        self.checked_epoch = epoch;
        let want = self.marker.clone().unwrap_or_else(|| "no-marker".into());
        if got.trim() != want {
            let lost = format!(
                "{} ({}): marker {:?} {when}, expected {want:?}",
                self.name,
                self.id.as_deref().unwrap_or("?"),
                got.trim()
            );
            eprintln!("soak: LOST {lost}");
            self.sh.ledger().lost.push(lost);
            // Go on from what the guest holds, so one loss is counted once.
            self.marker = Some(got.trim().to_string());
        }
    }

    /// A file copied in and back out must come back byte for byte.
    fn copy_round_trip(&mut self) {
        self.seq += 1;
        let name = self.name.clone();
        let body = format!("{name} copy {} {}\n", self.cycle, self.seq).repeat(64);
        let local = self.sh.tmp.join(format!("{name}.in"));
        let back = self.sh.tmp.join(format!("{name}.out"));
        fs::write(&local, &body).expect("local file");
        let (l, b) = (local.display().to_string(), back.display().to_string());
        let remote = format!("{name}:/root/copied.txt");
        let in_guest = &|_: &Worker<'_>, s: Option<&str>| match s {
            Some("running") => Then::Retry,
            _ => Then::Heal,
        };
        self.op("cp", &["cp", "-q", &l, &remote], in_guest);
        let _ = fs::remove_file(&back);
        self.op("cp", &["cp", "-q", &remote, &b], in_guest);
        let got = fs::read_to_string(&back).unwrap_or_default();
        if got != body {
            self.sh.ledger().lost.push(format!(
                "{name}: a file copied in came back as {} bytes, not {}",
                got.len(),
                body.len()
            ));
        }
        let _ = fs::remove_file(&local);
        let _ = fs::remove_file(&back);
    }

    fn checkpoints(&self) -> Vec<String> {
        let run = self.sh.cli.run(
            &["checkpoints", &self.name, "--json"],
            Duration::from_secs(30),
        );
        serde_json::from_str::<Vec<serde_json::Value>>(run.stdout.trim())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    }

    fn checkpoint(&mut self, cp: &str) {
        let name = self.name.clone();
        self.op(
            "checkpoint",
            &["checkpoint", &name, "--name", cp],
            &|w, s| match s {
                _ if w.checkpoints().iter().any(|c| c == cp) => Then::Done,
                Some("running") => Then::Retry,
                _ => Then::Heal,
            },
        );
    }

    fn restore(&mut self, cp: &str, marker: Option<String>) {
        let name = self.name.clone();
        // Restoring again is always right: from running, paused or stopped.
        self.op("restore", &["restore", &name, cp], &|_, s| match s {
            None => Then::Heal,
            Some(_) => Then::Retry,
        });
        self.marker = marker;
        self.note_cgroups();
    }

    fn checkpoint_rm(&mut self, cp: &str) {
        let name = self.name.clone();
        self.op(
            "checkpoint-rm",
            &["checkpoint", "rm", &name, cp],
            &|w, _| {
                if w.checkpoints().iter().any(|c| c == cp) {
                    Then::Retry
                } else {
                    Then::Done
                }
            },
        );
    }

    /// Kills the guest's agent (its init starts it again).
    fn kill_agent(&mut self) {
        let name = self.name.clone();
        self.op(
            "agent-kill",
            &["ssh", &name, "--", "pkill -9 -x fcm-agent || true"],
            &|_, s| match s {
                Some("running") => Then::Retry,
                _ => Then::Heal,
            },
        );
        self.agent_killed = true;
        self.sh.ledger().agent_kills += 1;
    }
}
