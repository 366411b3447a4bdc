//! Warm create with real QEMU guests (TCG): a plain `fcm create` restores
//! the daemon's template and gives the same VM a cold boot gives: the
//! user's key logs in, the disk has the size asked, the hostname, address
//! and MAC are its own, and `ls` and `exec` answer as for a `--cold` one.
//! The crash-safety walk of warm create is in tests/crash.rs.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Fcm, e2e_ready, wait_for};

/// Output of a command in the guest over `fcm ssh` (the user's own key
/// and the VM's pinned host key), retried for a while.
fn ssh(f: &Fcm, vm: &str, cmd: &str) -> String {
    wait_for(Duration::from_secs(60), || {
        let o = f.ssh(vm, cmd);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "{vm}: `{cmd}` never succeeded over fcm ssh\n--- daemon log ---\n{}",
            fs::read_to_string(f.log()).unwrap_or_default()
        )
    })
}

fn exec(f: &Fcm, vm: &str, argv: &[&str]) -> String {
    let mut args = vec!["exec", vm, "--"];
    args.extend_from_slice(argv);
    f.ok(&args)
}

#[test]
fn warm_create_gives_the_vm_a_cold_one_gives() {
    if !e2e_ready() {
        eprintln!("skipping: the e2e prerequisites are missing (see tests/common)");
        return;
    }
    let f = Fcm::start("warm", &["--templates", "on"]);
    f.wait_template();
    let t = Instant::now();
    let warm = f.create(&["--name", "warm-one", "--disk", "12G"]);
    let warm_secs = t.elapsed().as_secs_f64();
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    assert!(
        log.contains("warm-one: warm create from template"),
        "warm-one was not made from the template:\n{log}"
    );
    let t = Instant::now();
    let cold = f.create(&["--name", "cold-one", "--disk", "12G", "--cold"]);
    let cold_secs = t.elapsed().as_secs_f64();
    eprintln!("create with --disk 12G: warm {warm_secs:.2} s, cold {cold_secs:.2} s");
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    assert!(
        !log.contains("cold-one: warm create"),
        "--cold made it from the template:\n{log}"
    );
    let user_key = fs::read_to_string(f.home().join(".ssh/id_ed25519.pub")).expect("user key");
    let user_key = user_key.split_whitespace().nth(1).expect("key body");
    for vm in [&warm, &cold] {
        let name = vm["name"].as_str().expect("name");
        assert_eq!(vm["state"], "running", "{vm}");
        // Over SSH with the user's own key: it is authorized.
        assert_eq!(ssh(&f, name, "hostname"), name);
        assert!(
            exec(&f, name, &["cat", "/run/fcm/authorized_keys"]).contains(user_key),
            "{name}: the user's key is not among the authorized keys"
        );
        let size: u64 = exec(&f, name, &["df", "-B1", "--output=size", "/"])
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("df size");
        assert!(
            size > 11 << 30 && size <= 12 << 30,
            "{name}: / is {size} bytes, not about 12 GiB"
        );
        let ip = vm["ip"].as_str().expect("ip");
        let addr = exec(&f, name, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!("{ip}/")), "{name}: {addr}");
        let mac = exec(&f, name, &["cat", "/sys/class/net/eth0/address"]);
        assert_eq!(mac.trim(), vm["mac"].as_str().expect("mac"), "{name}");
    }
    assert_ne!(warm["ip"], cold["ip"]);
    assert_ne!(warm["mac"], cold["mac"]);
    // The same answers from both.
    for argv in [&["uname", "-r"][..], &["cat", "/etc/os-release"], &["id"]] {
        assert_eq!(
            exec(&f, "warm-one", argv),
            exec(&f, "cold-one", argv),
            "{argv:?}"
        );
    }
    // The same `ls`: the same columns, the same values but name, IP, MAC, tap, id, pid, times.
    let ls = f.ok(&["ls"]);
    let cols = |name: &str| -> usize {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().count())
            .unwrap_or_else(|| panic!("{name} not in ls:\n{ls}"))
    };
    assert_eq!(cols("warm-one"), cols("cold-one"), "{ls}");
    let listed = f.vms();
    let get = |name: &str| {
        listed
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .expect("listed")
    };
    let (w, c) = (get("warm-one"), get("cold-one"));
    for field in [
        "state",
        "backend",
        "cpus",
        "memory_mib",
        "disk_bytes",
        "agent",
    ] {
        assert_eq!(w[field], c[field], "{field}: {w} vs {c}");
    }
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&w), keys(&c));
    // A warm VM forks like a booted one (it owns its memory): the fork
    // runs with its own name and the warm VM's files.
    exec(&f, "warm-one", &["sh", "-c", "echo kept > /root/note"]);
    f.ok(&["fork", "warm-one", "--name", "warm-fork"]);
    assert_eq!(ssh(&f, "warm-fork", "hostname"), "warm-fork");
    assert_eq!(exec(&f, "warm-fork", &["cat", "/root/note"]).trim(), "kept");
    f.ok(&["destroy", "warm-fork"]);
    // A warm VM stops and boots cold like any other (its disk the size asked).
    f.ok(&["stop", "warm-one"]);
    f.ok(&["start", "warm-one"]);
    assert_eq!(ssh(&f, "warm-one", "hostname"), "warm-one");
    f.ok(&["destroy", "warm-one"]);
    f.ok(&["destroy", "cold-one"]);
    assert!(f.taps().is_empty(), "taps left: {:?}", f.taps());
}
