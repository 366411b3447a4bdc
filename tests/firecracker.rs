//! The Firecracker backend with the real binary. Firecracker runs here up to
//! and past InstanceStart, but its guest kernel cannot boot on this kind of
//! host (kvm-pvm, no VT-x/AMD-V), so this test stops at what the host can
//! show: the VMM configured and started, the daemon reporting it running,
//! and stop/destroy leaving nothing behind. The guest-side checks (SSH,
//! data surviving stop) run in tests/lifecycle.rs on the QEMU backend.

mod common;

use std::time::Duration;

use common::{Fcm, is_alive, wait_for};

fn firecracker_available() -> bool {
    let found = std::process::Command::new("firecracker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        let msg = "firecracker is not installed (run scripts/install-firecracker.sh)";
        if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
            eprintln!("skipping: {msg}");
        } else {
            panic!("{msg}");
        }
    }
    found
}

/// A daemon with the Firecracker backend (and a short stop deadline), or
/// `None` with the reason printed when this host cannot run Firecracker.
fn firecracker_daemon(tag: &str) -> Option<(tempfile::NamedTempFile, Fcm)> {
    if !common::e2e_ready() || !firecracker_available() {
        return None;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm is absent, so Firecracker cannot even create a VM here");
        return None;
    }
    eprintln!(
        "note: on this host the Firecracker guest kernel cannot boot (kvm-pvm); \
         the test checks the VMM side only"
    );
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), r#"{"stop_timeout_secs": 3}"#).expect("write config");
    let f = Fcm::start(
        tag,
        &[
            "--backend",
            "firecracker",
            "--config",
            &config.path().display().to_string(),
            "--no-caddy",
        ],
    );
    Some((config, f))
}

#[test]
fn firecracker_backend_reaches_instance_start_and_cleans_up() {
    let Some((_config, f)) = firecracker_daemon("fc") else {
        return;
    };
    let vm = f.create(&["--no-wait"]);
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["backend"], "firecracker");
    let id = vm["id"].as_str().expect("id").to_string();
    let name = vm["name"].as_str().expect("name").to_string();
    let pid = vm["pid"].as_u64().expect("pid") as u32;
    let dir = f.state().join(&id);
    assert!(dir.join("firecracker.socket").exists(), "no API socket");
    assert!(f.ns.links().contains(&format!("tap_{id}")), "tap missing");
    // The VMM accepted the configuration: boot-source, drive, machine
    // config and network interface are in its own view of the VM.
    let cfg = f.ns.exec(&[
        "curl",
        "-s",
        "--unix-socket",
        &dir.join("firecracker.socket").display().to_string(),
        "http://localhost/vm/config",
    ]);
    let cfg = String::from_utf8_lossy(&cfg.stdout).into_owned();
    if is_alive(pid) {
        assert!(
            cfg.contains(&format!("tap_{id}"))
                && cfg.contains("rootfs.img")
                && cfg.contains("vmlinux"),
            "{cfg}"
        );
        assert!(
            cfg.contains("\"mem_size_mib\":512") || cfg.contains("\"mem_size_mib\": 512"),
            "{cfg}"
        );
    }
    // The guest may already have crashed (it does here, within seconds); the
    // daemon then reports it stopped on its own. Either way stop must work.
    let out = f.run(&["stop", &name]);
    let state = f.vm(&name)["state"].clone();
    assert_eq!(
        state,
        "stopped",
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(5), || (!is_alive(pid)).then_some(())).is_some(),
        "firecracker still running"
    );
    assert!(
        !dir.join("firecracker.socket").exists(),
        "socket left after stop"
    );
    assert!(
        !f.ns.links().contains(&format!("tap_{id}")),
        "tap left after stop"
    );

    // Start again reaches InstanceStart again, then destroy removes it all.
    let _ = f.run(&["start", &name, "--no-wait"]);
    f.ok(&["destroy", &name]);
    assert!(!dir.exists(), "VM dir left");
    assert!(
        !f.ns.links().iter().any(|l| l.starts_with("tap_")),
        "tap left"
    );
    assert!(
        f.processes().is_empty(),
        "processes left: {:?}",
        f.processes()
    );
}

#[test]
fn a_second_launch_on_a_locked_disk_is_refused() {
    use fcm::host::disk_lock::{DiskLock, in_use};
    let Some((_config, f)) = firecracker_daemon("fclock") else {
        return;
    };
    let vm = f.create(&["--no-wait"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let name = vm["name"].as_str().expect("name").to_string();
    let pid = vm["pid"].as_u64().expect("pid") as u32;
    let rootfs = f.state().join(&id).join("rootfs.img");
    // The running Firecracker itself holds its disk's lock (while it lives:
    // the guest crashes here within seconds, and the VMM with it).
    if is_alive(pid) {
        let held = in_use(&rootfs);
        assert!(
            held || !is_alive(pid),
            "a live Firecracker does not hold its disk"
        );
    }
    f.ok(&["stop", &name]);
    assert!(!in_use(&rootfs), "the lock outlived the VMM");

    // Another VMM holds the disk (this test takes its lock, as one would):
    // a launch on it is refused, and no second Firecracker starts.
    let other = DiskLock::acquire(&rootfs).expect("lock the disk");
    let out = f.run(&["start", &name, "--no-wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start on a locked disk succeeded");
    assert!(err.contains("in use by another VMM"), "{err}");
    assert_eq!(f.vm(&name)["state"], "stopped");
    assert!(f.vmms_of(&id).is_empty(), "a VMM started on a locked disk");
    assert!(
        !f.ns.links().contains(&format!("tap_{id}")),
        "the refused start left its tap"
    );
    // Once the disk is free, the same start works.
    drop(other);
    f.ok(&["start", &name, "--no-wait"]);
    f.ok(&["destroy", &name]);
}

#[test]
fn firecracker_snapshot_api_pauses_saves_exits_and_loads_on_the_same_tap() {
    if !common::e2e_ready() || !firecracker_available() {
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm is absent, so Firecracker cannot even create a VM here");
        return;
    }
    eprintln!(
        "note: on this host the Firecracker guest cannot run (kvm-pvm: its kernel crashes \
         soon after InstanceStart), so this test checks the VMM side only: pause, Full \
         snapshot, VMM exit, a new VMM loading the snapshot on the same tap, resume"
    );
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), r#"{"stop_timeout_secs": 3}"#).expect("write config");
    let f = Fcm::start(
        "fcsnap",
        &[
            "--backend",
            "firecracker",
            "--config",
            &config.path().display().to_string(),
            "--no-caddy",
        ],
    );
    let vm = f.create(&["--no-wait", "--memory", "128"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let name = vm["name"].as_str().expect("name").to_string();
    let dir = f.state().join(&id);
    // Pause at once: the guest kernel may crash (and Firecracker exit)
    // within seconds here; if it did, boot it again and retry.
    let mut paused = false;
    let mut pid = vm["pid"].as_u64().expect("pid") as u32;
    for _ in 0..3 {
        if f.run(&["pause", &name]).status.success() {
            paused = true;
            break;
        }
        let _ = f.run(&["start", &name, "--no-wait"]);
        pid = f.vm(&name)["pid"].as_u64().unwrap_or(0) as u32;
    }
    assert!(paused, "pause never succeeded");
    assert_eq!(f.vm(&name)["state"], "paused");
    // (An exiting process can linger a moment as it frees its memory.)
    let _ = wait_for(Duration::from_secs(5), || (!is_alive(pid)).then_some(()));
    assert!(
        !is_alive(pid),
        "Firecracker (pid {pid}) still runs after pause"
    );
    assert!(f.vmms_of(&id).is_empty(), "a VMM is left");
    assert!(
        !f.ns.links().contains(&format!("tap_{id}")),
        "tap kept while paused"
    );
    let mem = std::fs::metadata(dir.join("paused/memory")).expect("memory file");
    assert_eq!(mem.len(), 128 << 20, "memory file size");
    assert!(dir.join("paused/vmstate").is_file(), "no vmstate file");

    // Resume: a new Firecracker loads the snapshot (same tap, by name).
    let out = f.run(&["resume", &name, "--no-wait"]);
    assert!(
        out.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = f.vm(&name);
    let new_pid = v["pid"].as_u64().unwrap_or(0) as u32;
    assert_ne!(new_pid, pid, "the VMM was not replaced");
    assert!(!dir.join("paused").exists(), "the used snapshot was kept");
    // The VMM may already have exited (the guest cannot run here); if it
    // still runs, its API says the loaded VM runs, on the same tap.
    if is_alive(new_pid) {
        assert!(f.ns.links().contains(&format!("tap_{id}")), "tap missing");
        let info = f.ns.exec(&[
            "curl",
            "-s",
            "--max-time",
            "5",
            "--unix-socket",
            &dir.join("firecracker.socket").display().to_string(),
            "http://localhost/",
        ]);
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("\"Running\""), "instance info: {info}");
        println!("after load: {info}");
    } else {
        println!("the loaded guest already crashed (expected on this host)");
    }
    f.ok(&["destroy", &name]);
    assert!(!dir.exists());
    let _ = wait_for(Duration::from_secs(5), || {
        (!is_alive(new_pid)).then_some(())
    });
    assert!(!is_alive(new_pid), "Firecracker survived destroy");
}
