//! Pause/resume and checkpoints/restore with real QEMU guests (TCG), each
//! test in its own network namespace with the real daemon and CLI. The
//! crash-safety walk of these operations is in tests/crash.rs; the
//! Firecracker snapshot API with the real binary in tests/firecracker.rs.

mod common;

use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Fcm, e2e_ready, is_alive, wait_for};

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Output of a command in the guest (over `fcm ssh`), retried until SSH works.
fn guest(f: &Fcm, vm: &str, cmd: &str) -> String {
    let out = wait_for(Duration::from_secs(120), || {
        let o = f.ssh(vm, cmd);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    out.unwrap_or_else(|| panic!("{vm}: `{cmd}` never succeeded over SSH"))
}

/// Starts a `sleep` that outlives the SSH session; its pid.
fn start_sleeper(f: &Fcm, vm: &str) -> String {
    let pid = guest(
        f,
        vm,
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    );
    assert!(pid.parse::<u32>().is_ok(), "sleep pid: {pid:?}");
    pid
}

fn sleeper_alive(f: &Fcm, vm: &str, pid: &str) -> bool {
    guest(
        f,
        vm,
        // The pid and the command: a fresh boot may give the pid to another.
        &format!(
            "if [ \"$(cat /proc/{pid}/comm 2>/dev/null)\" = sleep ]; then echo alive; else echo gone; fi"
        ),
    ) == "alive"
}

/// The guest's clock minus the host's, in seconds (bounded by the SSH
/// round trip, which is subtracted from the error).
fn clock_error(f: &Fcm, vm: &str) -> f64 {
    let before = host_now();
    let g: f64 = guest(f, vm, "date +%s.%N").parse().expect("guest date");
    let after = host_now();
    if g < before {
        g - before
    } else if g > after {
        g - after
    } else {
        0.0
    }
}

/// How far off the daemon found the guest's clock when it read it back
/// right after setting it (the last such line in its log).
fn clock_read_back(f: &Fcm) -> f64 {
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("guest clock set from the host's"))
        .unwrap_or_else(|| panic!("the daemon never set a guest clock:\n{log}"));
    line.split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"))
}

/// The guest clock after a resume or restore: set within 1 s of the host's
/// (read back by the daemon), and still close when the test looks. Under
/// TCG on these hosts a guest's clock wanders by up to a second or two even
/// without any pause (a cold-booted guest too), so the user-visible check
/// allows 3 s, against a lag of at least `paused` without the correction.
fn assert_clock(f: &Fcm, vm: &str, when: &str, paused: f64) {
    let set = clock_read_back(f);
    assert!(set.abs() < 1.0, "{when}: guest clock set {set:+.3} s off");
    let err = clock_error(f, vm);
    assert!(
        err.abs() < 3.0 && err > -paused,
        "{when}: guest clock off by {err:+.3} s (paused about {paused} s)"
    );
}

#[test]
fn pause_frees_the_vmm_and_resume_brings_back_processes_tmux_and_the_clock() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("pause", &[]);
    let vm = f.create(&["--name", "napper"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let qemu = vm["pid"].as_u64().expect("pid") as u32;
    let sleeper = start_sleeper(&f, "napper");
    guest(
        &f,
        "napper",
        "tmux new-session -d -s keep && tmux send-keys -t keep 'X=42' Enter && echo ok",
    );

    let t = Instant::now();
    f.ok(&["pause", "napper"]);
    let pause_time = t.elapsed();
    let v = f.vm("napper");
    assert_eq!(v["state"], "paused", "{v}");
    assert!(v["pid"].is_null(), "{v}");
    assert!(
        f.vmms_of(&id).is_empty(),
        "a VMM is left: {:?}",
        f.vmms_of(&id)
    );
    assert!(
        !is_alive(qemu),
        "QEMU (pid {qemu}) still runs: its RAM is not freed"
    );
    assert!(
        !f.taps().contains(&format!("tap_{id}")),
        "tap kept while paused"
    );
    let saved = f.state().join(&id).join("paused");
    assert!(
        saved.join("memory.state").is_file(),
        "no saved memory state"
    );
    // Paused a while: the guest's clock would lag by this much.
    std::thread::sleep(Duration::from_secs(8));

    let t = Instant::now();
    f.ok(&["resume", "napper"]);
    let resume_time = t.elapsed();
    let v = f.vm("napper");
    assert_eq!(v["state"], "running", "{v}");
    for k in ["ip", "mac", "tap"] {
        assert_eq!(v[k], vm[k], "{k} changed");
    }
    assert!(f.taps().contains(&format!("tap_{id}")), "tap missing");
    assert!(!saved.exists(), "the used saved state was kept");
    assert!(
        sleeper_alive(&f, "napper", &sleeper),
        "sleep {sleeper} died"
    );
    let pane = guest(
        &f,
        "napper",
        "tmux send-keys -t keep 'echo val=$X' Enter; sleep 1; tmux capture-pane -p -t keep",
    );
    assert!(pane.contains("val=42"), "tmux lost X: {pane}");
    assert_clock(&f, "napper", "after resume", 8.0);
    println!(
        "pause {:.2} s, resume (to SSH) {:.2} s",
        pause_time.as_secs_f64(),
        resume_time.as_secs_f64()
    );

    // `fcm start` of a paused VM resumes it.
    f.ok(&["pause", "napper"]);
    f.ok(&["start", "napper"]);
    assert!(
        sleeper_alive(&f, "napper", &sleeper),
        "start did not resume"
    );

    // `fcm stop` of a paused VM says it discards the memory state.
    f.ok(&["pause", "napper"]);
    let out = f.run(&["stop", "napper"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("discard"), "{err}");
    assert_eq!(f.vm("napper")["state"], "stopped");
    assert!(!saved.exists(), "a stopped VM kept its memory state");
    // It boots from its disk: the sleeper is gone, the VM works.
    f.ok(&["start", "napper"]);
    assert!(!sleeper_alive(&f, "napper", &sleeper));
}

#[test]
fn restore_returns_disk_and_processes_to_the_checkpoint_and_bad_input_is_refused() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("ckpt", &[]);
    let vm = f.create(&["--name", "keeper"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let sleeper = start_sleeper(&f, "keeper");
    guest(&f, "keeper", "echo before > /root/before && sync");

    let t = Instant::now();
    let out = f.run(&["checkpoint", "keeper", "--name", "clean"]);
    let cp_time = t.elapsed();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("warning"), "{said}");
    let cp = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(cp.len(), 8, "checkpoint id: {cp:?}");
    assert_eq!(f.vm("keeper")["state"], "running");
    // It kept running: same VMM, the sleeper alive, the disk writable.
    assert!(sleeper_alive(&f, "keeper", &sleeper));
    guest(&f, "keeper", "echo after > /root/after && sync");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(f.ok(&["checkpoints", "keeper", "--json"]).trim()).expect("json");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], cp.as_str());
    assert_eq!(list[0]["name"], "clean");
    let size = list[0]["size_bytes"].as_u64().expect("size");
    assert!(size > 1 << 20, "size {size}");
    let table = f.ok(&["checkpoints", "keeper"]);
    assert!(table.contains("clean") && table.contains(&cp), "{table}");
    assert!(
        clock_read_back(&f).abs() < 1.0,
        "clock after the checkpoint"
    );

    // Kill the sleeper, then go back: the file is gone, the sleeper runs.
    guest(&f, "keeper", &format!("kill {sleeper}; echo killed"));
    assert!(!sleeper_alive(&f, "keeper", &sleeper));
    let t = Instant::now();
    let out = f.run(&["restore", "keeper", "clean"]);
    let restore_time = t.elapsed();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("warning"), "{said}");

    assert_eq!(f.vm("keeper")["state"], "running");
    assert_eq!(
        guest(&f, "keeper", "cat /root/after 2>/dev/null || echo no-file"),
        "no-file"
    );
    assert_eq!(guest(&f, "keeper", "cat /root/before"), "before");
    assert!(
        sleeper_alive(&f, "keeper", &sleeper),
        "the checkpoint's sleep is not running"
    );
    // The restored guest's file system is not left frozen, and its clock is right.
    guest(&f, "keeper", "echo again > /root/again && sync && echo ok");
    // The checkpoint is minutes old here: without the correction the
    // guest's clock would be that far behind.
    assert_clock(&f, "keeper", "after restore", 10.0);
    println!(
        "checkpoint {:.2} s ({size} bytes), restore (to SSH) {:.2} s",
        cp_time.as_secs_f64(),
        restore_time.as_secs_f64()
    );

    // Bad input.
    let token = f.token();
    let (status, body) = f.api(
        "POST",
        "/vms/keeper/checkpoints/nosuchcp/restore",
        Some(&token),
        Some(b"{}"),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = f.api(
        "POST",
        "/vms/keeper/checkpoints",
        Some(&token),
        Some(br#"{"name":"clean"}"#),
    );
    assert_eq!(status, 409, "a second checkpoint named clean: {body}");
    let (status, body) = f.api(
        "POST",
        "/vms/keeper/checkpoints",
        Some(&token),
        Some(br#"{"nome":"x"}"#),
    );
    assert_eq!(status, 400, "{body}");
    f.ok(&["stop", "keeper"]);
    let (status, body) = f.api("POST", "/vms/keeper/pause", Some(&token), Some(b"{}"));
    assert_eq!(status, 409, "pause of a stopped VM: {body}");
    let (status, body) = f.api("POST", "/vms/keeper/resume", Some(&token), None);
    assert_eq!(status, 409, "resume of a stopped VM: {body}");
    // A stopped VM can be restored too.
    f.ok(&["restore", "keeper", &cp]);
    assert!(sleeper_alive(&f, "keeper", &sleeper));

    // rm, then destroy removes every checkpoint.
    f.ok(&["checkpoint", "rm", "keeper", &cp]);
    assert!(f.ok(&["checkpoints", "keeper", "--json"]).trim() == "[]");
    let again = f.ok(&["checkpoint", "keeper"]).trim().to_string();
    assert!(
        f.state()
            .join(&id)
            .join("checkpoints")
            .join(&again)
            .is_dir()
    );
    f.ok(&["destroy", "keeper"]);
    assert!(!f.state().join(&id).exists());
}

#[test]
fn a_full_disk_during_a_checkpoint_is_a_clean_error_and_leaves_nothing() {
    if !e2e_ready() {
        return;
    }
    // A state dir on a tmpfs with room for the VM's disk but not for a
    // copy of it (tmpfs cannot reflink: the copy is sparse).
    let tmp = tempfile::Builder::new()
        .prefix("fcm-full-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let small = tmp.path().join("small");
    let used = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(common::assets().join("base-rootfs.img"))
            .expect("rootfs")
            .blocks()
            * 512
    };
    let size_mib = used / (1 << 20) + 120;
    let _unmount = common::SmallTmpfs::mount(&small, size_mib, "fcm-test-ckfull");
    let f = Fcm::start(
        "ckfull",
        &["--state-dir", &small.join("state").display().to_string()],
    );
    let vm = f.create(&["--name", "crowded", "--memory", "256"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let sleeper = start_sleeper(&f, "crowded");
    let out = f.run(&["checkpoint", "crowded"]);
    assert_eq!(out.status.code(), Some(1), "the checkpoint did not fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    assert!(!err.contains("panick"), "{err}");
    // Nothing half-written: no checkpoint, no temp directory.
    let cps = f.state().join(&id).join("checkpoints");
    let left: Vec<String> = fs::read_dir(&cps)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in checkpoints/: {left:?}");
    assert_eq!(f.ok(&["checkpoints", "crowded", "--json"]).trim(), "[]");
    // The VM runs on, as it was.
    assert_eq!(f.vm("crowded")["state"], "running");
    assert!(sleeper_alive(&f, "crowded", &sleeper));
    guest(&f, "crowded", "echo still > /root/still && sync && echo ok");
    f.ok(&["destroy", "crowded"]);
    drop(f);
}
