//! The leak list: everything a VM leaves on the host, checked item by item
//! against what the daemon lists. Each finding is one line naming what
//! leaked and whose it is.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use crate::common::Fcm;

/// The daemon's own entries in its state dir (not VMs).
const DAEMON_OWN: [&str; 7] = [
    ".lock",
    ".token",
    ".metrics-token",
    ".wake-token",
    ".tls",
    "ssh",
    "agent",
];

/// Files a VM's directory holds only while its VMM runs.
const RUNTIME_FILES: [&str; 5] = ["qemu.pid", "qmp.sock", "agent.sock", "ssh.mux", "jail"];

/// What the daemon lists: id → state.
pub fn listed(f: &Fcm) -> BTreeMap<String, String> {
    f.vms()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default().to_string(),
                v["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every leak on the host, given every VM id the test has seen and the
/// cgroup directories recorded for them (`<id>/cgroups`, read while they
/// ran). A VM not listed running must own no tap, nft rule, cgroup,
/// process or runtime file; a VM not listed at all, nothing.
pub fn leaks(
    f: &Fcm,
    seen: &BTreeSet<String>,
    cgroups: &BTreeMap<String, Vec<PathBuf>>,
) -> Vec<String> {
    let listed = listed(f);
    let running: BTreeSet<&String> = listed
        .iter()
        .filter(|(_, s)| s.as_str() == "running")
        .map(|(id, _)| id)
        .collect();
    let all: BTreeSet<&String> = seen.iter().chain(listed.keys()).collect();
    let mut bad = Vec::new();
    let whose = |id: &str| match listed.get(id) {
        Some(s) => format!("{s} VM {id}"),
        None => format!("destroyed VM {id}"),
    };

    // Taps.
    for tap in f.taps() {
        let id = tap.trim_start_matches("tap_");
        if !running.contains(&id.to_string()) {
            bad.push(format!("tap {tap} of {}", whose(id)));
        }
    }
    for id in &running {
        bad.extend(network_faults(&f.ns.name, id));
    }

    // nftables: a VM's chain and its element of the port map.
    let rules = f.ns.exec(&["nft", "list", "ruleset"]);
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    for id in all.iter().filter(|id| !running.contains(*id)) {
        let mentions: Vec<&str> = rules
            .lines()
            .filter(|l| l.contains(&format!("tap_{id}")))
            .map(str::trim)
            .collect();
        if !mentions.is_empty() {
            bad.push(format!("nft rules of {}: {mentions:?}", whose(id)));
        }
    }

    // cgroups: the recorded directories, and the same names under every
    // parent the test has seen (a VM whose listing was never read).
    let parents: BTreeSet<PathBuf> = cgroups
        .values()
        .flatten()
        .filter_map(|d| d.parent().map(PathBuf::from))
        .collect();
    for id in all.iter().filter(|id| !running.contains(*id)) {
        let mut dirs: BTreeSet<PathBuf> = parents.iter().map(|p| p.join(id)).collect();
        dirs.extend(cgroups.get(*id).into_iter().flatten().cloned());
        for d in dirs.iter().filter(|d| d.exists()) {
            bad.push(format!("cgroup {} of {}", d.display(), whose(id)));
        }
    }

    // The state dir: VM directories, leftovers, runtime files.
    let state = f.state();
    for e in fs::read_dir(&state).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if DAEMON_OWN.contains(&name.as_str()) || listed.contains_key(&name) {
            continue;
        }
        if name.starts_with(".new-") || name.starts_with(".trash-") {
            bad.push(format!("leftover {name} in the state dir"));
        } else if seen.contains(&name) {
            bad.push(format!("VM directory of destroyed VM {name}"));
        } else {
            bad.push(format!("unknown entry {name} in the state dir"));
        }
    }
    for (id, s) in &listed {
        let dir = state.join(id);
        for leftover in [".paused.tmp", "rootfs.img.restore"] {
            if dir.join(leftover).exists() {
                bad.push(format!("{leftover} of {s} VM {id}"));
            }
        }
        if s != "running" {
            for f in RUNTIME_FILES.iter().filter(|f| dir.join(f).exists()) {
                bad.push(format!("runtime file {f} of {s} VM {id}"));
            }
        }
        if s != "paused" && dir.join("paused").exists() {
            bad.push(format!("saved state paused/ of {s} VM {id}"));
        }
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".ssh-") {
                bad.push(format!("ssh log {n} of {s} VM {id}"));
            }
        }
        for e in fs::read_dir(dir.join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            bad.push(format!(
                "checkpoint {n} of {s} VM {id}, removed by the test"
            ));
        }
    }

    // Processes naming the state dir: a VMM of a running VM (one each), or
    // an ssh master connection of one; nothing else, the daemon apart.
    let marker = state.display().to_string();
    let daemon = f.daemon_pid();
    let mut vmms: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (pid, cmd, parent) in processes_naming(&marker) {
        if Some(pid) == daemon {
            continue;
        }
        let owner = all
            .iter()
            .find(|id| cmd.contains(&format!("{marker}/{id}/")))
            .map(|id| id.to_string());
        let is_vmm = cmd.starts_with("/usr/bin/qemu-system") || cmd.contains("firecracker");
        match owner {
            Some(id) if running.contains(&id) && is_vmm => vmms.entry(id).or_default().push(pid),
            Some(id) if running.contains(&id) && cmd.starts_with("ssh ") && cmd.contains("-M") => {}
            Some(id) => bad.push(format!(
                "process {pid} (parent {parent}) of {}: {}",
                whose(&id),
                short(&cmd)
            )),
            None => bad.push(format!(
                "process {pid} (parent {parent}) naming the state dir: {}",
                short(&cmd)
            )),
        }
    }
    for (id, pids) in &vmms {
        if pids.len() > 1 {
            bad.push(format!("running VM {id} has {} VMMs: {pids:?}", pids.len()));
        }
    }
    for id in running.iter().filter(|id| !vmms.contains_key(**id)) {
        bad.push(format!("running VM {id} has no VMM process"));
    }

    // Children the daemon has not reaped.
    if let Some(d) = daemon {
        for (pid, parent, state) in proc_states() {
            if parent == d && state == "Z" {
                bad.push(format!("zombie {pid}, a child the daemon never reaped"));
            }
        }
    }

    // Mounts (the test's and the daemon's mount namespaces) and loop devices.
    let mut tables = vec![("this test's", "/proc/self/mountinfo".to_string())];
    if let Some(pid) = daemon {
        tables.push(("the daemon's", format!("/proc/{pid}/mountinfo")));
    }
    for (whose, table) in tables {
        for l in fs::read_to_string(&table).unwrap_or_default().lines() {
            if l.contains(&marker) {
                bad.push(format!("mount in {whose} namespace: {}", short(l)));
            }
        }
    }
    let loops = std::process::Command::new("losetup").arg("-a").output();
    for l in loops
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&marker))
    {
        bad.push(format!("loop device: {l}"));
    }
    bad
}

/// What cuts a running VM off its network: its tap missing, not on the
/// bridge or down; its port's chain or map element missing (the bridge
/// then drops every frame it sends). Empty when it is whole.
pub fn network_faults(ns: &str, id: &str) -> Vec<String> {
    let tap = format!("tap_{id}");
    let run = |argv: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut bad = Vec::new();
    let link = run(&["ip", "-o", "link", "show", "dev", &tap]);
    if link.is_empty() {
        bad.push(format!("running VM {id} has no tap"));
    } else {
        if !link.contains("master fcm0") {
            bad.push(format!(
                "the tap of running VM {id} is not on the bridge: {}",
                link.trim()
            ));
        }
        if !link.contains("state UP") && !link.contains(",UP") {
            bad.push(format!(
                "the tap of running VM {id} is down: {}",
                link.trim()
            ));
        }
    }
    let rules = run(&["nft", "list", "table", "bridge", "fcm"]);
    if !rules.contains(&format!("chain from_{tap} ")) {
        bad.push(format!("running VM {id} has no nft chain from_{tap}"));
    }
    if !rules.contains(&format!("\"{tap}\" : jump from_{tap}")) {
        bad.push(format!(
            "running VM {id} has no element in the bridge's port map"
        ));
    }
    bad
}

/// (pid, command line, parent pid) of live processes whose command line
/// contains `marker` (zombies are their parent's to reap, listed apart).
pub fn processes_naming(marker: &str) -> Vec<(u32, String, u32)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(c) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&c).replace('\0', " ");
        if !cmd.contains(marker) || pid == std::process::id() {
            continue;
        }
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or_default();
        let parent = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" {
            v.push((pid, cmd.trim().to_string(), parent));
        }
    }
    v
}

/// (pid, parent pid, state letter) of every process.
fn proc_states() -> Vec<(u32, u32, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or_default().to_string();
        let parent = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        v.push((pid, parent, state));
    }
    v
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 200 {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    } else {
        s.to_string()
    }
}

/// The leak check can fail: a tap, a cgroup, a process and a
/// leftover directory of a destroyed VM, planted by the test, must each be
/// reported. Returns the plants that went unnoticed (and removes them all).
pub fn unnoticed_plants(
    f: &Fcm,
    ghost: &str,
    seen: &BTreeSet<String>,
    cgroups: &BTreeMap<String, Vec<PathBuf>>,
) -> Vec<String> {
    let tap = format!("tap_{ghost}");
    let made =
        f.ns.exec(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
    assert!(made.status.success(), "plant a tap: {made:?}");
    let cgroup = cgroups
        .values()
        .flatten()
        .find_map(|d| d.parent())
        .map(|p| p.join(ghost));
    if let Some(c) = &cgroup {
        fs::create_dir(c).expect("plant a cgroup");
    }
    let named = f.state().join(ghost).join("planted");
    let mut process = std::process::Command::new("sh")
        .args(["-c", "sleep 60", &named.display().to_string()])
        .spawn()
        .expect("plant a process");
    let trash = f.state().join(format!(".trash-{ghost}"));
    fs::create_dir(&trash).expect("plant a directory");

    let found = leaks(f, seen, cgroups).join("\n");
    let mut missed = Vec::new();
    let mut expect = |what: &str, needle: String| {
        if !found.contains(&needle) {
            missed.push(format!("{what} ({needle})"));
        }
    };
    expect("tap", format!("tap {tap} of destroyed VM {ghost}"));
    if let Some(c) = &cgroup {
        expect(
            "cgroup",
            format!("cgroup {} of destroyed VM {ghost}", c.display()),
        );
    }
    expect("process", format!("process {} ", process.id()));
    expect("directory", format!("leftover .trash-{ghost}"));

    let _ = process.kill();
    let _ = process.wait();
    let _ = f.ns.exec(&["ip", "link", "del", &tap]);
    if let Some(c) = &cgroup {
        let _ = fs::remove_dir(c);
    }
    let _ = fs::remove_dir(&trash);
    missed
}
