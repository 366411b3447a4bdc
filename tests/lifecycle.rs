//! The whole VM lifecycle on a guest that really boots (QEMU backend, TCG),
//! inside a network namespace, driven through the real `fcm` CLI.

mod common;

use std::fs;
use std::time::Duration;

use common::{Fcm, cgroup_limits, e2e_ready, is_alive, proc_status, wait_for};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn create_ssh_stop_start_destroy_keeps_data_and_leaves_nothing() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("life", &[]);
    let vm = f.create(&[]);
    let name = vm["name"].as_str().expect("name").to_string();
    let id = vm["id"].as_str().expect("id").to_string();
    let ip = vm["ip"].as_str().expect("ip").to_string();
    assert_eq!(vm["state"], "running");
    assert_eq!(
        vm["ssh_ready"], true,
        "create returned before SSH answered: {vm}"
    );
    assert_eq!(id.len(), 8);
    assert!(ip.starts_with("172.16.0."), "{ip}");
    let (adj, noun) = name.split_once('-').expect("adjective-noun name");
    assert!(
        fcm::names::ADJECTIVES.contains(&adj) && fcm::names::NOUNS.contains(&noun),
        "{name}"
    );

    // QEMU runs as the VM's own user (300000 + the address's last byte),
    // under its seccomp sandbox, in a cgroup of the VM's size (512 MiB +
    // the 256 MiB overhead + the 256 MiB TCG cache; one CPU + half a core
    // for QEMU's device emulation); the VM's
    // record stays root's alone.
    let pid = vm["pid"].as_u64().expect("pid") as u32;
    let own: u32 = 300_000
        + ip.rsplit('.')
            .next()
            .and_then(|o| o.parse::<u32>().ok())
            .expect("ip");
    let ids = |f: &str| proc_status(pid, f).unwrap_or_default();
    assert!(
        ids("Uid").split_whitespace().all(|u| u == own.to_string()),
        "Uid: {}",
        ids("Uid")
    );
    assert!(
        ids("Gid").split_whitespace().all(|g| g == own.to_string()),
        "Gid: {}",
        ids("Gid")
    );
    assert_eq!(ids("Groups"), "", "supplementary groups kept");
    assert_eq!(ids("Seccomp"), "2", "QEMU runs without its sandbox");
    let (mem, cpu, cgroups) = cgroup_limits(pid);
    assert_eq!((mem, cpu), (Some(1024 << 20), Some(150_000)), "{cgroups:?}");
    assert!(
        cgroups.iter().all(|d| d.ends_with(format!("fcm/{id}"))),
        "{cgroups:?}"
    );
    eprintln!(
        "QEMU {pid}: uid {own}, seccomp 2, cgroups {cgroups:?}, VmRSS {}",
        ids("VmRSS")
    );
    {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(f.state().join(&id).join("config.json")).expect("record");
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (0, 0o600),
            "the record is not root's alone"
        );
    }

    // The human-readable list shows it.
    let ls = f.ok(&["ls"]);
    assert!(
        ls.contains(&name) && ls.contains(&id) && ls.contains("running") && ls.contains(&ip),
        "{ls}"
    );

    // The user's key is in, the guest is who it says, and the spec's tools are there.
    let out = f.ssh(
        &name,
        "hostname; tmux -V; python3 -V; ruby -v; ip -4 -o addr show eth0",
    );
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{name}\n")), "{text}");
    assert!(
        text.contains("tmux") && text.contains("Python 3") && text.contains("ruby"),
        "{text}"
    );
    assert!(text.contains(&format!("{ip}/24")), "{text}");
    // The id works as well as the name, and the placeholder page names the VM.
    let page = f.ssh(&id, "curl -s http://127.0.0.1:8000/");
    assert!(
        stdout(&page).contains(&name),
        "port 8000 page: {}",
        stdout(&page)
    );

    // Data written before a clean stop survives it (no explicit sync).
    let w = f.ssh(&name, "echo persisted-$(hostname) > /root/data.txt");
    assert!(w.status.success());
    eprintln!("QEMU {pid} after SSH use: VmRSS {}", ids("VmRSS"));
    let pid = f.vm(&name)["pid"].as_u64().expect("pid") as u32;
    let stop = f.ok(&["stop", &name]);
    assert!(stop.contains("stopped"), "{stop}");
    assert!(!is_alive(pid), "VMM {pid} still running after stop");
    assert!(
        !f.ns.links().contains(&format!("tap_{id}")),
        "tap left after stop"
    );
    assert_eq!(f.vm(&name)["state"], "stopped");
    assert!(
        cgroups.iter().all(|d| !d.exists()),
        "cgroup left after stop: {cgroups:?}"
    );
    let rec: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(f.state().join(&id).join("config.json")).expect("config.json"),
    )
    .expect("json");
    assert_eq!(rec["state"], "stopped");

    // Wrong state is a clear 409-style error, and nothing changes.
    let again = f.run(&["stop", &name]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is stopped") && err.contains("fcm start"),
        "{err}"
    );
    let ssh_stopped = f.run(&["ssh", &name, "--", "true"]);
    assert!(!ssh_stopped.status.success());

    let start = f.ok(&["start", &name]);
    assert!(start.contains("running"), "{start}");
    let vm2 = f.vm(&name);
    assert_eq!(
        (vm2["ip"].as_str(), vm2["id"].as_str()),
        (Some(ip.as_str()), Some(id.as_str()))
    );
    let data = f.ssh(&name, "cat /root/data.txt");
    assert_eq!(
        stdout(&data).trim(),
        format!("persisted-{name}"),
        "{}",
        String::from_utf8_lossy(&data.stderr)
    );

    let pid = f.vm(&name)["pid"].as_u64().expect("pid") as u32;
    f.ok(&["destroy", &name]);
    assert!(!is_alive(pid), "VMM still running after destroy");
    assert!(!f.state().join(&id).exists(), "VM dir left after destroy");
    assert!(
        !f.ns.links().iter().any(|l| l.starts_with("tap_")),
        "tap left: {:?}",
        f.ns.links()
    );
    assert!(f.vms().is_empty());
    assert!(
        f.processes().is_empty(),
        "processes left: {:?}",
        f.processes()
    );
    let nft = f.ns.exec(&["nft", "list", "ruleset"]);
    let nft = stdout(&nft);
    assert!(
        !nft.contains(&ip) && !nft.contains(&id),
        "nft still mentions the VM:\n{nft}"
    );
    // The unknown VM is now a clean 404-style error.
    let gone = f.run(&["destroy", &name]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no VM named"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[test]
fn three_concurrent_creates_get_distinct_names_and_addresses() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("conc", &[]);
    let vms: Vec<serde_json::Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| f.create(&["--memory", "256"])))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("create thread"))
            .collect()
    });
    let mut names: Vec<&str> = vms
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    let mut ips: Vec<&str> = vms.iter().map(|v| v["ip"].as_str().expect("ip")).collect();
    names.sort();
    names.dedup();
    ips.sort();
    ips.dedup();
    assert_eq!((names.len(), ips.len()), (3, 3), "{vms:?}");
    for v in &vms {
        let name = v["name"].as_str().expect("name");
        let out = f.ssh(name, "hostname; free -m | awk '/Mem/ {print $2}'");
        let text = stdout(&out);
        assert!(
            text.starts_with(&format!("{name}\n")),
            "{name}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mem: u32 = text
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            (150..=256).contains(&mem),
            "--memory 256 not applied: {mem} MiB"
        );
    }
}

#[test]
fn vms_survive_a_killed_daemon_and_dead_ones_show_stopped() {
    if !e2e_ready() {
        return;
    }
    let mut f = Fcm::start("restart", &[]);
    let a = f.create(&[]);
    let b = f.create(&["--no-wait"]);
    let (a_name, b_name) = (
        a["name"].as_str().expect("a").to_string(),
        b["name"].as_str().expect("b").to_string(),
    );
    let b_pid = b["pid"].as_u64().expect("pid") as u32;
    let b_tap = format!("tap_{}", b["id"].as_str().expect("id"));

    f.kill_daemon();
    // While the daemon is down, B's VMM dies and a stray tap appears.
    common::kill_pid(b_pid);
    assert!(wait_for(Duration::from_secs(5), || (!is_alive(b_pid)).then_some(())).is_some());
    f.ns.exec(&["ip", "tuntap", "add", "dev", "tap_zz99zz99", "mode", "tap"]);
    assert!(f.ns.links().contains(&"tap_zz99zz99".to_string()));

    f.spawn_daemon();
    let a2 = f.vm(&a_name);
    assert_eq!(a2["state"], "running", "{a2}");
    let out = f.ssh(&a_name, "hostname");
    assert_eq!(
        stdout(&out).trim(),
        a_name,
        "A unreachable after restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.vm(&b_name)["state"], "stopped");
    let links = f.ns.links();
    assert!(!links.contains(&b_tap), "dead VM's tap left: {links:?}");
    assert!(
        !links.contains(&"tap_zz99zz99".to_string()),
        "stray tap left: {links:?}"
    );
    // B boots again from its own disk.
    f.ok(&["start", &b_name]);
    assert_eq!(stdout(&f.ssh(&b_name, "hostname")).trim(), b_name);
}
