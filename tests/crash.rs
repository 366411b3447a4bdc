//! Crash safety, for real: the daemon is killed in the middle of every step
//! of every operation (the test fault switch `FCM_TEST_CRASH_AT`, which
//! aborts the daemon like a SIGKILL), by real SIGKILLs at random moments,
//! and by SIGTERM during a create. After each, a fresh daemon must show
//! every VM either fully there and usable or fully gone, never two VMMs on
//! one disk, and the interrupted operation must succeed when retried.
//! Guests really boot (QEMU backend) in a network namespace.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Fcm, e2e_ready, wait_for};

/// A daemon config for these tests: short stop deadline, no Caddy.
fn config(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("fcm-crash.json");
    let cfg = serde_json::json!({
        "stop_timeout_secs": 4,
        "caddy": { "enabled": false },
    });
    fs::write(&p, cfg.to_string()).expect("config");
    p
}

fn start(tag: &str) -> (tempfile::TempDir, Fcm) {
    let tmp = tempfile::Builder::new()
        .prefix("fcm-crash-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let cfg = config(tmp.path());
    let f = Fcm::start(tag, &["--config", &cfg.display().to_string()]);
    (tmp, f)
}

/// Restarts the daemon armed to abort at `step`, runs `fcm args`, waits
/// for the crash, then starts a normal daemon (which recovers).
fn crash_at(f: &mut Fcm, step: &str, args: &[&str]) {
    f.kill_daemon();
    f.spawn_daemon_env(&[("FCM_TEST_CRASH_AT", step)]);
    let out = f.run(args);
    let status = f.wait_daemon_exit(Duration::from_secs(90));
    assert!(
        status.is_some(),
        "the daemon did not abort at {step}; fcm {args:?} said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "fcm {args:?} succeeded although the daemon aborted at {step}"
    );
    f.spawn_daemon();
}

/// Everything on the host that belongs to no listed VM, and any VM with
/// more than one VMM. Empty when the host and the daemon agree.
fn disagreements(f: &Fcm) -> Vec<String> {
    let vms = f.vms();
    let listed: BTreeMap<String, String> = vms
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default().to_string(),
                v["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut bad = Vec::new();
    for e in fs::read_dir(f.state()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".new-") || name.starts_with(".trash-") {
            bad.push(format!("leftover {name}"));
        }
        if e.path().join("config.json").exists() && !listed.contains_key(&name) {
            bad.push(format!("directory {name} of no listed VM"));
        }
    }
    for tap in f.taps() {
        let id = tap.trim_start_matches("tap_");
        if !listed.contains_key(id) {
            bad.push(format!("tap {tap} of no listed VM"));
        }
    }
    let mut per_vm: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (id, pid) in f.all_vmms() {
        per_vm.entry(id).or_default().push(pid);
    }
    for (id, pids) in &per_vm {
        match listed.get(id).map(String::as_str) {
            Some("running") => {}
            Some(s) => bad.push(format!("VMM {pids:?} runs VM {id}, listed {s}")),
            None => bad.push(format!("orphan VMM {pids:?} of VM dir {id}")),
        }
        if pids.len() > 1 {
            bad.push(format!("VM {id} has {} VMMs: {pids:?}", pids.len()));
        }
    }
    for (id, state) in &listed {
        if state == "running" && per_vm.get(id).is_none_or(|p| p.is_empty()) {
            bad.push(format!("VM {id} listed running without a VMM"));
        }
        if (state == "stopped" || state == "paused") && f.taps().contains(&format!("tap_{id}")) {
            bad.push(format!("{state} VM {id} still has its tap"));
        }
        let dir = f.state().join(id);
        if (state == "paused") != dir.join("paused").is_dir() {
            bad.push(format!(
                "VM {id} is {state}, its saved state exists: {}",
                dir.join("paused").is_dir()
            ));
        }
        for leftover in [".paused.tmp", "rootfs.img.restore", ".fork.tmp"] {
            if dir.join(leftover).exists() {
                bad.push(format!("VM {id} has a leftover {leftover}"));
            }
        }
        for e in fs::read_dir(dir.join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with('.') {
                bad.push(format!(
                    "VM {id} has a half-made checkpoint {:?}",
                    e.file_name()
                ));
            }
        }
    }
    bad
}

fn assert_agree(f: &Fcm, when: &str) {
    let bad = disagreements(f);
    assert!(bad.is_empty(), "after {when}:\n{}", bad.join("\n"));
}

fn state_of(f: &Fcm, name: &str) -> Option<String> {
    f.vms()
        .into_iter()
        .find(|v| v["name"] == name)
        .map(|v| v["state"].as_str().unwrap_or_default().to_string())
}

/// SSH answers and the file written before the crash is intact.
fn assert_usable(f: &Fcm, name: &str, mark: &str) {
    let got = wait_for(Duration::from_secs(180), || {
        let out = f.ssh(name, "cat /root/mark 2>/dev/null || echo no-mark");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(got.as_deref(), Some(mark), "{name}: SSH or its file");
}

/// The crash points compiled into the daemon (read from its source, so a
/// new step cannot be added without this test walking it).
fn crash_points_of(ops: &[&str]) -> Vec<String> {
    crash_points()
        .into_iter()
        .filter(|p| ops.iter().any(|o| p.starts_with(&format!("{o}:"))))
        .collect()
}

/// The operations the two walks below cover; a crash point of any other
/// operation fails this test, so a new one cannot go unwalked.
const WALKED_OPS: [&str; 11] = [
    "fork",
    "warm",
    "template",
    "create",
    "start",
    "stop",
    "destroy",
    "pause",
    "resume",
    "checkpoint",
    "restore",
];

#[test]
fn every_crash_point_belongs_to_a_walked_operation() {
    let stray: Vec<String> = crash_points()
        .into_iter()
        .filter(|p| crash_points_of(&WALKED_OPS).binary_search(p).is_err())
        .collect();
    assert!(stray.is_empty(), "crash points no test walks: {stray:?}");
}

fn crash_points() -> Vec<String> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/daemon/manager");
    let mut v = Vec::new();
    for e in fs::read_dir(src).expect("src").flatten() {
        // The files of the manager (its unit tests are a directory).
        if !e.path().is_file() {
            continue;
        }
        let text = fs::read_to_string(e.path()).expect("read");
        for part in text.split("fault::crash_point(\"").skip(1) {
            if let Some(step) = part.split('"').next() {
                v.push(step.to_string());
            }
        }
        // The steps a fork and a warm create share (fork.rs `crash`): both.
        for part in text.split("crash(origin, \"").skip(1) {
            let mut words = part.split('"');
            if let (Some(fork), Some(", "), Some(warm)) = (words.next(), words.next(), words.next())
            {
                v.push(fork.to_string());
                v.push(warm.to_string());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn a_crash_at_every_step_leaves_each_vm_whole_or_gone() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("crash");
    let mut walked: Vec<String> = Vec::new();
    let mut matrix: Vec<(String, String)> = Vec::new();

    // A VM with a file on its disk, for start and stop.
    f.create(&["--name", "victim"]);
    let mark = "intact-before-crashes";
    let w = f.ssh("victim", &format!("echo {mark} > /root/mark && sync"));
    assert!(w.status.success(), "write the mark");

    // ----- create -----
    for step in [
        "after-record",
        "after-copy",
        "after-inject",
        "after-tap",
        "after-launch",
        "after-save",
    ] {
        let at = format!("create:{step}");
        let name = format!("c-{}", step.trim_start_matches("after-"));
        crash_at(&mut f, &at, &["create", "--no-wait", "--name", &name]);
        assert_agree(&f, &at);
        let outcome = match state_of(&f, &name).as_deref() {
            Some("running") => {
                let out = f.ssh(&name, "true");
                let ok = wait_for(Duration::from_secs(180), || {
                    f.ssh(&name, "true").status.success().then_some(())
                });
                assert!(ok.is_some() || out.status.success(), "{name} not usable");
                "complete (adopted), SSH works".to_string()
            }
            None => {
                f.ok(&["create", "--no-wait", "--name", &name]);
                assert_eq!(state_of(&f, &name).as_deref(), Some("running"));
                "undone; retried create succeeded".to_string()
            }
            Some(other) => panic!("{at}: {name} is {other}"),
        };
        f.ok(&["destroy", &name]);
        assert_agree(&f, &format!("destroy after {at}"));
        matrix.push((at.clone(), outcome));
        walked.push(at);
    }

    // ----- stop (the victim runs) -----
    for step in ["after-record", "after-shutdown", "after-release"] {
        let at = format!("stop:{step}");
        crash_at(&mut f, &at, &["stop", "victim"]);
        assert_agree(&f, &at);
        let outcome = match state_of(&f, "victim").as_deref() {
            Some("running") => {
                assert_usable(&f, "victim", mark);
                f.ok(&["stop", "victim"]);
                "not done (adopted, running, usable); retried stop succeeded"
            }
            Some("stopped") => "done (stopped, tap released)",
            other => panic!("{at}: victim is {other:?}"),
        };
        assert_eq!(state_of(&f, "victim").as_deref(), Some("stopped"));
        assert_agree(&f, &format!("{at}, stopped"));
        f.ok(&["start", "victim"]);
        assert_usable(&f, "victim", mark);
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    // ----- start (the victim is stopped) -----
    for step in ["after-record", "after-tap", "after-launch"] {
        let at = format!("start:{step}");
        f.ok(&["stop", "victim"]);
        crash_at(&mut f, &at, &["start", "--no-wait", "victim"]);
        assert_agree(&f, &at);
        let outcome = match state_of(&f, "victim").as_deref() {
            Some("running") => "done (adopted as running)",
            Some("stopped") => {
                f.ok(&["start", "--no-wait", "victim"]);
                "not done (stopped, tap released); retried start succeeded"
            }
            other => panic!("{at}: victim is {other:?}"),
        };
        assert_usable(&f, "victim", mark);
        assert_agree(&f, &format!("{at}, running"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    // ----- destroy -----
    for step in ["after-record", "after-kill", "after-tap", "after-site"] {
        let at = format!("destroy:{step}");
        let name = format!("d-{}", step.trim_start_matches("after-"));
        f.create(&["--no-wait", "--name", &name]);
        crash_at(&mut f, &at, &["destroy", &name]);
        assert_agree(&f, &at);
        let outcome = match state_of(&f, &name) {
            None => "done (recovery finished the destroy)",
            Some(s) => {
                f.ok(&["destroy", &name]);
                assert_eq!(state_of(&f, &name), None, "{name} ({s}) after retry");
                "retried destroy succeeded"
            }
        };
        assert_agree(&f, &format!("{at}, destroyed"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    // The victim lived through all of it, with its file.
    assert_usable(&f, "victim", mark);

    println!("crash matrix ({} steps):", matrix.len());
    for (step, outcome) in &matrix {
        println!("  {step:<24} {outcome}");
    }
    walked.sort();
    assert_eq!(
        walked,
        crash_points_of(&["create", "start", "stop", "destroy"]),
        "every crash point of create, start, stop and destroy must be walked"
    );
}

/// The pid of a `sleep` started in the guest, if it still runs as `sleep`.
fn sleeper_runs(f: &Fcm, vm: &str, pid: &str) -> bool {
    let got = wait_for(Duration::from_secs(180), || {
        let out = f.ssh(
            vm,
            &format!("if [ \"$(cat /proc/{pid}/comm 2>/dev/null)\" = sleep ]; then echo alive; else echo gone; fi"),
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    got.as_deref() == Some("alive")
}

fn checkpoint_names(f: &Fcm, vm: &str) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(f.ok(&["checkpoints", vm, "--json"]).trim()).expect("json");
    list.iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_crash_at_every_step_of_pause_resume_checkpoint_and_restore_loses_nothing() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("snapcrash");
    let mut walked: Vec<String> = Vec::new();
    let mut matrix: Vec<(String, String)> = Vec::new();
    f.create(&["--name", "sleepy"]);
    let mark = "intact-before-crashes";
    let w = f.ssh("sleepy", &format!("echo {mark} > /root/mark && sync"));
    assert!(w.status.success(), "write the mark");
    let out = f.ssh(
        "sleepy",
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    );
    let sleeper = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(sleeper.parse::<u32>().is_ok(), "sleeper pid {sleeper:?}");
    // The checkpoint every restore returns to: the mark, the sleeper.
    f.ok(&["checkpoint", "sleepy", "--name", "base"]);
    let whole = |f: &Fcm, at: &str| {
        assert_agree(f, at);
        assert_usable(f, "sleepy", mark);
        assert!(
            sleeper_runs(f, "sleepy", &sleeper),
            "{at}: the sleeper died"
        );
        assert!(
            checkpoint_names(f, "sleepy").contains(&"base".to_string()),
            "{at}: base lost"
        );
    };

    // ----- pause (running) -----
    for step in ["after-record", "after-save", "after-exit"] {
        let at = format!("pause:{step}");
        crash_at(&mut f, &at, &["pause", "sleepy"]);
        assert_agree(&f, &at);
        let outcome = match state_of(&f, "sleepy").as_deref() {
            Some("running") => {
                whole(&f, &at);
                f.ok(&["pause", "sleepy"]);
                "not done (adopted, the guest continued); retried pause succeeded"
            }
            Some("paused") => "done (paused, memory state complete)",
            other => panic!("{at}: sleepy is {other:?}"),
        };
        f.ok(&["resume", "sleepy"]);
        whole(&f, &format!("{at}, resumed"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    // ----- resume (paused) -----
    for step in ["after-record", "after-tap", "after-launch", "after-save"] {
        let at = format!("resume:{step}");
        f.ok(&["pause", "sleepy"]);
        crash_at(&mut f, &at, &["resume", "sleepy"]);
        assert_agree(&f, &at);
        let outcome = match state_of(&f, "sleepy").as_deref() {
            Some("running") => "done (adopted as running, its guest continued)",
            Some("paused") => {
                f.ok(&["resume", "sleepy"]);
                "not done (still paused, state intact); retried resume succeeded"
            }
            other => panic!("{at}: sleepy is {other:?}"),
        };
        whole(&f, &format!("{at}, running"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    // ----- checkpoint (running) -----
    for step in [
        "after-record",
        "after-freeze",
        "after-memory",
        "after-disk",
        "after-commit",
    ] {
        let at = format!("checkpoint:{step}");
        let name = format!("c-{}", step.trim_start_matches("after-"));
        crash_at(&mut f, &at, &["checkpoint", "sleepy", "--name", &name]);
        assert_eq!(state_of(&f, "sleepy").as_deref(), Some("running"), "{at}");
        whole(&f, &at);
        // Its file system is not left frozen.
        let w = wait_for(Duration::from_secs(120), || {
            f.ssh("sleepy", "echo w > /root/w && sync")
                .status
                .success()
                .then_some(())
        });
        assert!(w.is_some(), "{at}: the guest's disk is not writable");
        let outcome = if checkpoint_names(&f, "sleepy").contains(&name) {
            "done (the checkpoint is complete and listed)"
        } else {
            f.ok(&["checkpoint", "sleepy", "--name", &name]);
            "not done (nothing half-written); retried checkpoint succeeded"
        };
        assert!(checkpoint_names(&f, "sleepy").contains(&name));
        f.ok(&["checkpoint", "rm", "sleepy", &name]);
        assert_agree(&f, &format!("{at}, removed"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    // ----- restore (running, with a file written after the checkpoint) -----
    for step in ["after-record", "after-kill", "after-disk", "after-launch"] {
        let at = format!("restore:{step}");
        let w = f.ssh("sleepy", "echo scratch > /root/scratch && sync");
        assert!(w.status.success(), "{at}: write scratch");
        crash_at(&mut f, &at, &["restore", "sleepy", "base"]);
        assert_agree(&f, &at);
        let has_scratch = |f: &Fcm| {
            let out = wait_for(Duration::from_secs(180), || {
                let o = f.ssh("sleepy", "cat /root/scratch 2>/dev/null || echo none");
                o.status
                    .success()
                    .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
            });
            out.as_deref() != Some("none")
        };
        let outcome = match state_of(&f, "sleepy").as_deref() {
            Some("running") if has_scratch(&f) => {
                f.ok(&["restore", "sleepy", "base"]);
                "not done (the old VMM adopted, disk intact); retried restore succeeded"
            }
            Some("running") => "done (adopted: the restored guest continued)",
            Some("stopped") => {
                f.ok(&["restore", "sleepy", "base"]);
                "not done (stopped, checkpoint intact); retried restore succeeded"
            }
            other => panic!("{at}: sleepy is {other:?}"),
        };
        whole(&f, &format!("{at}, restored"));
        assert!(!has_scratch(&f), "{at}: the disk is not the checkpoint's");
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }

    println!("crash matrix ({} steps):", matrix.len());
    for (step, outcome) in &matrix {
        println!("  {step:<26} {outcome}");
    }
    walked.sort();
    assert_eq!(
        walked,
        crash_points_of(&["pause", "resume", "checkpoint", "restore"]),
        "every crash point of pause, resume, checkpoint and restore must be walked"
    );
}

#[test]
fn a_crash_at_every_step_of_a_fork_leaves_the_source_whole_and_no_half_fork() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("forkcrash");
    let mut walked: Vec<String> = Vec::new();
    let mut matrix: Vec<(String, String)> = Vec::new();
    f.create(&["--name", "parent"]);
    let mark = "intact-before-crashes";
    let w = f.ssh("parent", &format!("echo {mark} > /root/mark && sync"));
    assert!(w.status.success(), "write the mark");
    let out = f.ssh(
        "parent",
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    );
    let sleeper = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(sleeper.parse::<u32>().is_ok(), "sleeper pid {sleeper:?}");
    let steps = [
        "after-record",
        "after-devices",
        "after-continue",
        "after-copy",
        "after-inject",
        "after-tap",
        "after-launch",
        "after-identity",
        "after-attach",
        "after-commit",
    ];
    for step in steps {
        let at = format!("fork:{step}");
        let name = format!("f-{}", step.trim_start_matches("after-"));
        crash_at(&mut f, &at, &["fork", "parent", "--name", &name]);
        assert_agree(&f, &at);
        // The source runs on (its guest continued), with its file and process.
        assert_eq!(state_of(&f, "parent").as_deref(), Some("running"), "{at}");
        assert_usable(&f, "parent", mark);
        assert!(
            sleeper_runs(&f, "parent", &sleeper),
            "{at}: the sleeper died"
        );
        let outcome = match state_of(&f, &name).as_deref() {
            // Only once it had its own identity and was on the bridge.
            Some("running") => {
                assert_eq!(
                    step, "after-commit",
                    "{at}: a fork adopted before its identity"
                );
                assert_usable(&f, &name, mark);
                "done (it had its identity: adopted, usable)"
            }
            None => {
                f.ok(&["fork", "parent", "--name", &name]);
                assert_usable(&f, &name, mark);
                "undone (no identity yet); retried fork succeeded"
            }
            Some(other) => panic!("{at}: {name} is {other}"),
        };
        f.ok(&["destroy", &name]);
        assert_agree(&f, &format!("destroy after {at}"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }
    println!("crash matrix ({} steps):", matrix.len());
    for (step, outcome) in &matrix {
        println!("  {step:<24} {outcome}");
    }
    walked.sort();
    assert_eq!(
        walked,
        crash_points_of(&["fork"]),
        "every crash point of fork must be walked"
    );
}

#[test]
fn a_crash_at_every_step_of_a_warm_create_leaves_no_half_vm() {
    if !e2e_ready() {
        eprintln!("skipping: the e2e prerequisites are missing (see tests/common)");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-crash-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let cfg = config(tmp.path());
    let mut f = Fcm::start(
        "warmcrash",
        &["--config", &cfg.display().to_string(), "--templates", "on"],
    );
    f.wait_template();
    let mut walked: Vec<String> = Vec::new();
    let mut matrix: Vec<(String, String)> = Vec::new();
    let steps = [
        "after-copy",
        "after-inject",
        "after-tap",
        "after-launch",
        "after-identity",
        "after-keys",
        "after-attach",
        "after-commit",
    ];
    for step in steps {
        let at = format!("warm:{step}");
        let name = format!("w-{}", step.trim_start_matches("after-"));
        // As crash_at, once the armed daemon has loaded its template.
        f.kill_daemon();
        f.spawn_daemon_env(&[("FCM_TEST_CRASH_AT", &at)]);
        f.wait_template();
        let out = f.run(&["create", "--name", &name]);
        assert!(
            f.wait_daemon_exit(Duration::from_secs(90)).is_some(),
            "the daemon did not abort at {at}; create said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{at}: create succeeded");
        f.spawn_daemon();
        f.wait_template();
        assert_agree(&f, &at);
        let outcome = match state_of(&f, &name).as_deref() {
            Some("running") => {
                assert_eq!(step, "after-commit", "{at}: adopted before its identity");
                "done (adopted, usable)"
            }
            None => {
                f.create(&["--name", &name]);
                "undone; retried create succeeded"
            }
            Some(other) => panic!("{at}: {name} is {other}"),
        };
        let hostname = wait_for(Duration::from_secs(60), || {
            let o = f.ssh(&name, "hostname");
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        });
        assert_eq!(hostname.as_deref(), Some(name.as_str()), "{at}");
        f.ok(&["destroy", &name]);
        assert_agree(&f, &format!("destroy after {at}"));
        matrix.push((at.clone(), outcome.to_string()));
        walked.push(at);
    }
    println!("crash matrix ({} steps):", matrix.len());
    for (step, outcome) in &matrix {
        println!("  {step:<24} {outcome}");
    }
    // Making the template: a crash leaves nothing but what the next daemon
    // removes before it makes the template again.
    for step in ["after-disk", "after-launch", "after-save"] {
        let at = format!("template:{step}");
        f.kill_daemon();
        let _ = fs::remove_dir_all(f.state().join(".templates"));
        f.spawn_daemon_env(&[("FCM_TEST_CRASH_AT", &at)]);
        assert!(
            f.wait_daemon_exit(Duration::from_secs(300)).is_some(),
            "the daemon did not abort at {at}"
        );
        f.spawn_daemon();
        f.wait_template();
        assert_agree(&f, &at);
        let hidden: Vec<u32> = f
            .processes()
            .into_iter()
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("/.template/"))
                    .unwrap_or(false)
            })
            .collect();
        assert!(hidden.is_empty(), "{at}: the hidden VM runs on: {hidden:?}");
        assert!(
            !f.state().join(".template").exists(),
            "{at}: .template left"
        );
        let templates = fs::read_dir(f.state().join(".templates"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(templates, 1, "{at}: templates");
        walked.push(at);
    }
    walked.sort();
    assert_eq!(
        walked,
        crash_points_of(&["warm", "template"]),
        "every crash point of warm create and of making a template must be walked"
    );
}

/// A tiny deterministic generator, seeded from the clock (printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_sigkills_lose_no_disk_and_leave_no_orphan_or_duplicate_vmm() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("kills");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1;
    println!("random SIGKILLs: seed {seed}");
    let mut rng = Rng(seed);
    let (mut lost, mut orphans, mut duplicates, mut kills) = (0, 0, 0, 0);
    let cycles = 20;
    let started = Instant::now();
    for cycle in 0..cycles {
        let name = format!("k{cycle}");
        let cli = f.cli();
        let name2 = name.clone();
        // One create/stop/start/destroy cycle in the background...
        let worker = std::thread::spawn(move || {
            let mut cli = cli;
            let script = [
                vec!["create", "--no-wait", "--name", &name2],
                vec!["stop", &name2],
                vec!["start", "--no-wait", &name2],
                vec!["destroy", &name2],
            ];
            let mut done = 0;
            for args in script {
                let mut c = std::process::Command::new(cli.get_program());
                c.args(cli.get_args()).args(&args);
                let ok = c
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if !ok {
                    break;
                }
                done += 1;
            }
            let _ = &mut cli;
            done
        });
        // ...and the daemon SIGKILLed at a random moment within it.
        std::thread::sleep(Duration::from_millis(rng.next() % 6000));
        f.kill_daemon();
        kills += 1;
        let _ = worker.join();
        f.spawn_daemon();
        let bad = disagreements(&f);
        orphans += bad
            .iter()
            .filter(|b| b.contains("orphan") || b.contains(", listed "))
            .count();
        duplicates += bad.iter().filter(|b| b.contains("VMMs:")).count();
        assert!(bad.is_empty(), "cycle {cycle}:\n{}", bad.join("\n"));
        // Every listed VM still has its disk.
        for v in f.vms() {
            let id = v["id"].as_str().unwrap_or_default();
            if !f.state().join(id).join("rootfs.img").is_file() {
                lost += 1;
            }
        }
        // Finish the cycle by hand so the next starts clean.
        if state_of(&f, &name).is_some() {
            f.ok(&["destroy", &name]);
        }
    }
    println!(
        "{cycles} cycles, {kills} SIGKILLs in {:.0} s: {lost} lost disks, {orphans} orphan VMMs, {duplicates} duplicate VMMs",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, orphans, duplicates), (0, 0, 0));
}

#[test]
fn sigterm_during_a_create_finishes_or_undoes_it_and_exits_0() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("sigterm");
    let cli = f.cli();
    let creator = std::thread::spawn(move || {
        let mut c = std::process::Command::new(cli.get_program());
        c.args(cli.get_args())
            .args(["create", "--no-wait", "--name", "t1"])
            .stdin(std::process::Stdio::null())
            .output()
    });
    // SIGTERM once the create has begun (its directory exists).
    let begun = wait_for(Duration::from_secs(30), || {
        fs::read_dir(f.state())
            .ok()?
            .flatten()
            .any(|e| e.path().join("config.json").exists())
            .then_some(())
    });
    assert!(begun.is_some(), "the create never began");
    let pid = f.daemon_pid().expect("daemon pid");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let status = f.wait_daemon_exit(Duration::from_secs(60));
    let status = status.expect("the daemon did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let _ = creator.join();
    f.spawn_daemon();
    assert_agree(&f, "SIGTERM during create");
    match state_of(&f, "t1").as_deref() {
        Some("running") => {
            let ok = wait_for(Duration::from_secs(180), || {
                f.ssh("t1", "true").status.success().then_some(())
            });
            assert!(ok.is_some(), "t1 is listed running but SSH never answered");
            println!("SIGTERM during create: the create completed; the VM works");
        }
        None => {
            f.ok(&["create", "--no-wait", "--name", "t1"]);
            println!("SIGTERM during create: the create was undone; retried, it succeeded");
        }
        Some(s) => panic!("t1 is {s} after SIGTERM"),
    }
}

#[test]
fn a_directory_without_a_record_is_listed_broken_and_destroy_removes_it() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("broken");
    let dir = f.state().join("brokenvm");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("config.json"), "{ not json").expect("write");
    let stray = f.state().join("nocfg123");
    fs::create_dir_all(&stray).expect("mkdir");
    f.kill_daemon();
    f.spawn_daemon();
    let vms = f.vms();
    for id in ["brokenvm", "nocfg123"] {
        let v = vms
            .iter()
            .find(|v| v["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {vms:?}"));
        assert_eq!(v["state"], "broken");
        let warnings = v["warnings"].to_string();
        assert!(
            warnings.contains(&format!("fcm destroy {id}")),
            "{warnings}"
        );
    }
    let table = f.ok(&["ls"]);
    assert!(table.contains("broken"), "{table}");
    // Other operations refuse it with the hint.
    let out = f.run(&["start", "brokenvm"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fcm destroy brokenvm"), "{err}");
    f.ok(&["destroy", "brokenvm"]);
    f.ok(&["destroy", "nocfg123"]);
    assert!(!dir.exists() && !stray.exists());
    assert!(f.vms().is_empty());
}

#[test]
fn a_panicking_handler_answers_500_and_the_workers_live_on() {
    if !e2e_ready() {
        return;
    }
    let (_tmp, mut f) = start("panic");
    f.kill_daemon();
    f.spawn_daemon_env(&[("FCM_TEST_CRASH_AT", "api:panic-in-list")]);
    let token = f.token();
    // More requests than there are workers: each panics, none kills one.
    for _ in 0..40 {
        let (status, body) = f.api("GET", "/vms", Some(&token), None);
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("bug"), "{body}");
    }
    let (status, _) = f.api("GET", "/health", None, None);
    assert_eq!(status, 200, "the daemon must still serve");
}
