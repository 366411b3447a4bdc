//! The Firecracker backend with the real binary. Firecracker runs here up to
//! and past InstanceStart, but its guest kernel cannot boot on this kind of
//! host (kvm-pvm, no VT-x/AMD-V), so this test stops at what the host can
//! show: the VMM configured and started, the daemon reporting it running,
//! and stop/destroy leaving nothing behind. The guest-side checks (SSH,
//! data surviving stop) run in tests/lifecycle.rs on the QEMU backend.

mod common;

use std::time::Duration;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Fcm, cgroup_limits, is_alive, proc_status, root_of, wait_for};

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
    let ip: std::net::Ipv4Addr = vm["ip"].as_str().expect("ip").parse().expect("ip");
    let dir = f.state().join(&id);
    // What the host shows of the jailed VMM, read at once (the guest
    // crashes on this host within seconds, and the VMM with it).
    let chroot = dir.join("jail/firecracker").join(&id).join("root");
    let seen = Jailed::read(pid, &dir);
    let socket = chroot.join("firecracker.socket");
    let cfg = f.ns.exec(&[
        "curl",
        "-s",
        "--unix-socket",
        &socket.display().to_string(),
        "http://localhost/vm/config",
    ]);
    let cfg = String::from_utf8_lossy(&cfg.stdout).into_owned();
    let alive_after = is_alive(pid);
    assert!(
        seen.alive && alive_after,
        "Firecracker {pid} died right after InstanceStart; nothing left to check"
    );
    eprintln!("jailed Firecracker {pid}: {seen:?}");
    // The chroot is its root: the VM's disk is there (the same inode), the
    // host's files are not.
    let want_root = std::fs::metadata(&chroot).expect("chroot");
    assert_eq!(
        seen.root,
        Some((want_root.dev(), want_root.ino())),
        "root is not the chroot"
    );
    assert!(seen.disk_in_root, "the VM's disk is not in the chroot");
    assert!(
        !seen.host_etc_visible,
        "the host's /etc is visible in the jail"
    );
    // Its own uid and gid (300000 + the address's last byte), seccomp on.
    let own = 300_000 + u32::from(ip.octets()[3]);
    assert_eq!(seen.uid.as_deref().and_then(first), Some(own), "{seen:?}");
    assert_eq!(seen.gid.as_deref().and_then(first), Some(own), "{seen:?}");
    assert_eq!(
        seen.seccomp.as_deref(),
        Some("2"),
        "seccomp filters are off"
    );
    // Its cgroup: 512 MiB + the 256 MiB overhead, one CPU.
    assert_eq!(seen.memory_limit, Some(768 << 20), "{seen:?}");
    assert_eq!(seen.cpu_quota, Some(100_000), "{seen:?}");
    assert!(
        seen.cgroups
            .iter()
            .all(|d| d.ends_with(format!("fcm/{id}")))
            && !seen.cgroups.is_empty(),
        "{seen:?}"
    );
    // The tap belongs to the VM's user, the disk lock lives in the jailed VMM.
    let owner =
        f.ns.exec(&["cat", &format!("/sys/class/net/tap_{id}/owner")]);
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout).trim(),
        own.to_string()
    );
    assert!(
        seen.disk_locked,
        "the jailed VMM does not hold its disk's lock"
    );
    // The VMM accepted the configuration: boot-source, drive, machine
    // config and network interface are in its own view of the VM.
    assert!(
        cfg.contains(&format!("tap_{id}")) && cfg.contains("rootfs.img") && cfg.contains("vmlinux"),
        "{cfg}"
    );
    assert!(
        cfg.contains("\"mem_size_mib\":512") || cfg.contains("\"mem_size_mib\": 512"),
        "{cfg}"
    );
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
    assert!(!dir.join("jail").exists(), "jail left after stop");
    assert!(
        seen.cgroups.iter().all(|d| !d.exists()),
        "cgroup left after stop: {:?}",
        seen.cgroups
    );
    assert!(
        !f.ns.links().contains(&format!("tap_{id}")),
        "tap left after stop"
    );

    // Start again reaches InstanceStart again, jailed again, then destroy
    // removes it all: process, jail, cgroup, tap, directory.
    let _ = f.run(&["start", &name, "--no-wait"]);
    let again = f.vm(&name)["pid"].as_u64().map(|p| p as u32);
    let cgroups = again.map(|p| cgroup_limits(p).2).unwrap_or_default();
    f.ok(&["destroy", &name]);
    if let Some(p) = again {
        assert!(
            wait_for(Duration::from_secs(5), || (!is_alive(p)).then_some(())).is_some(),
            "firecracker still running after destroy"
        );
    }
    assert!(
        cgroups.iter().all(|d| !d.exists()),
        "cgroup left: {cgroups:?}"
    );
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

fn first(ids: &str) -> Option<u32> {
    ids.split_whitespace().next()?.parse().ok()
}

/// What /proc shows of a jailed Firecracker.
#[derive(Debug, Default)]
struct Jailed {
    alive: bool,
    root: Option<(u64, u64)>,
    disk_in_root: bool,
    host_etc_visible: bool,
    uid: Option<String>,
    gid: Option<String>,
    seccomp: Option<String>,
    memory_limit: Option<u64>,
    cpu_quota: Option<u64>,
    cgroups: Vec<std::path::PathBuf>,
    disk_locked: bool,
}

impl Jailed {
    fn read(pid: u32, dir: &Path) -> Self {
        let disk = std::fs::metadata(dir.join("rootfs.img")).expect("disk");
        let in_root = std::fs::metadata(format!("/proc/{pid}/root/rootfs.img"));
        let (memory_limit, cpu_quota, cgroups) = cgroup_limits(pid);
        Self {
            root: root_of(pid),
            disk_in_root: in_root.is_ok_and(|m| (m.dev(), m.ino()) == (disk.dev(), disk.ino())),
            host_etc_visible: Path::new(&format!("/proc/{pid}/root/etc/passwd")).exists(),
            uid: proc_status(pid, "Uid"),
            gid: proc_status(pid, "Gid"),
            seccomp: proc_status(pid, "Seccomp"),
            memory_limit,
            cpu_quota,
            cgroups,
            disk_locked: fcm::host::disk_lock::in_use(&dir.join("rootfs.img")),
            alive: is_alive(pid),
        }
    }
}

#[test]
fn a_restarted_daemon_adopts_a_running_jailed_firecracker() {
    if !common::e2e_ready() || !firecracker_available() {
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm is absent, so Firecracker cannot even create a VM here");
        return;
    }
    eprintln!(
        "note: on this host the Firecracker guest kernel cannot boot (kvm-pvm); \
         the test adopts the VMM while it runs (it dies with its guest within seconds)"
    );
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), r#"{"stop_timeout_secs": 3}"#).expect("write config");
    let mut f = Fcm::start(
        "fcadopt",
        &[
            "--backend",
            "firecracker",
            "--config",
            &config.path().display().to_string(),
            "--no-caddy",
        ],
    );
    let vm = f.create(&["--no-wait"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let name = vm["name"].as_str().expect("name").to_string();
    let pid = vm["pid"].as_u64().expect("pid") as u32;
    // The record forgets the pid: the new daemon must find the VMM on the
    // host, by its root (the jail), not by its command line.
    f.kill_daemon();
    let rec_path = f.state().join(&id).join("config.json");
    let mut rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rec_path).expect("record")).expect("json");
    rec["pid"] = serde_json::Value::Null;
    std::fs::write(&rec_path, rec.to_string()).expect("write record");
    assert_eq!(
        f.vmms_of(&id),
        vec![pid],
        "the harness does not see the jailed VMM"
    );
    f.spawn_daemon();
    let alive = is_alive(pid);
    let listed = f.vm(&name);
    if alive && is_alive(pid) {
        assert_eq!(listed["state"], "running", "{listed}");
        assert_eq!(listed["pid"].as_u64(), Some(u64::from(pid)), "{listed}");
    } else {
        panic!("Firecracker {pid} died (its guest crashed) before the new daemon could adopt it");
    }
    // Stop through the jail's API socket (or the signals after it), and
    // destroy: nothing of the jail is left.
    let cgroups = cgroup_limits(pid).2;
    f.ok(&["stop", &name]);
    assert!(
        wait_for(Duration::from_secs(5), || (!is_alive(pid)).then_some(())).is_some(),
        "firecracker still running after stop"
    );
    assert_eq!(f.vm(&name)["state"], "stopped");
    assert!(
        !f.state().join(&id).join("jail").exists(),
        "jail left after stop"
    );
    assert!(
        cgroups.iter().all(|d| !d.exists()),
        "cgroup left: {cgroups:?}"
    );
    f.ok(&["destroy", &name]);
    assert!(f.processes().is_empty() && f.vmms_of(&id).is_empty());
}

#[test]
fn firecracker_snapshot_api_pauses_saves_exits_and_loads_on_the_same_tap() {
    let Some((_config, f)) = firecracker_daemon("fcsnap") else {
        return;
    };
    eprintln!(
        "note: the Firecracker guest cannot run here (kvm-pvm: its kernel crashes soon after \
         InstanceStart), so this checks the VMM side: pause, Full snapshot out of the jail, \
         VMM exit, a new jailed VMM loading the snapshot on the same tap, resume"
    );
    let vm = f.create(&["--no-wait", "--memory", "128"]);
    let id = vm["id"].as_str().expect("id").to_string();
    let name = vm["name"].as_str().expect("name").to_string();
    let dir = f.state().join(&id);
    // Pause at once: the guest kernel may crash (and Firecracker exit)
    // within seconds here; if it did, boot it again and retry.
    let mut paused = false;
    let mut pid = vm["pid"].as_u64().expect("pid") as u32;
    let mut last = String::new();
    for _ in 0..3 {
        let out = f.run(&["pause", &name]);
        if out.status.success() {
            paused = true;
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = f.run(&["start", &name, "--no-wait"]);
        pid = f.vm(&name)["pid"].as_u64().unwrap_or(0) as u32;
    }
    assert!(paused, "pause never succeeded: {last}");
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
    assert_eq!(mem.nlink(), 1, "the memory file is still linked elsewhere");
    assert!(dir.join("paused/vmstate").is_file(), "no vmstate file");
    assert!(!dir.join("jail").exists(), "the jail outlived its VMM");

    // Resume: a new jailed Firecracker loads the snapshot (same tap, by name).
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
    // still runs, its API says the loaded VM runs, on the same tap, jailed.
    if is_alive(new_pid) {
        assert!(f.ns.links().contains(&format!("tap_{id}")), "tap missing");
        let root = dir.join(format!("jail/firecracker/{id}/root"));
        assert_eq!(
            root_of(new_pid),
            std::fs::metadata(&root).ok().map(|m| (m.dev(), m.ino())),
            "the loaded VMM is not in the VM's jail"
        );
        let info = f.ns.exec(&[
            "curl",
            "-s",
            "--max-time",
            "5",
            "--unix-socket",
            &root.join("firecracker.socket").display().to_string(),
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
