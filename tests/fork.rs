//! `fcm fork` with real QEMU guests (TCG): forks run their source's
//! processes and tmux sessions on, each with its own identity; no fork
//! sends as its source; bad requests make nothing. The crash-safety walk
//! of fork is in tests/crash.rs.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::Child;
use std::time::Duration;

use common::{Fcm, e2e_ready, wait_for};

/// Output of a command in the guest (over `fcm ssh`, which checks the
/// VM's pinned host key), retried until SSH works.
fn guest(f: &Fcm, vm: &str, cmd: &str) -> String {
    let out = wait_for(Duration::from_secs(120), || {
        let o = f.ssh(vm, cmd);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    out.unwrap_or_else(|| {
        panic!(
            "{vm}: `{cmd}` never succeeded over SSH\n--- daemon log ---\n{}",
            fs::read_to_string(f.log()).unwrap_or_default()
        )
    })
}

/// A packet capture on every interface of the namespace (`-i any` names
/// the interface of each frame), ended and read on drop.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(f: &Fcm) -> Option<Self> {
        let file = f.dir.path().join("fork.frames");
        let said = f.dir.path().join("tcpdump.err");
        // Live, so that each frame is printed with its interface's name.
        let child =
            f.ns.cmd("tcpdump")
                .args(["-i", "any", "-e", "-n", "-l"])
                .stdout(fs::File::create(&file).ok()?)
                .stderr(fs::File::create(&said).ok()?)
                .spawn()
                .ok()?;
        wait_for(Duration::from_secs(10), || {
            fs::read_to_string(&said)
                .ok()?
                .contains("listening on")
                .then_some(())
        })?;
        Some(Self { child, file })
    }

    /// Ends the capture; every frame as tcpdump printed it.
    fn frames(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn forks_run_on_with_their_own_identity_and_never_send_as_their_source() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("fork", &[]);
    let src = f.create(&["--name", "origin"]);
    let (src_ip, src_mac) = (
        src["ip"].as_str().expect("ip").to_string(),
        src["mac"].as_str().expect("mac").to_string(),
    );
    let sleeper = guest(
        &f,
        "origin",
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    );
    guest(
        &f,
        "origin",
        "tmux new-session -d -s keep -e FORKVAR=forty-two && echo ok",
    );
    guest(&f, "origin", "echo source > /root/mine && sync");

    let capture = Capture::start(&f).expect("tcpdump could not start in the namespace");
    let out = f.ok(&["fork", "origin", "--count", "3", "--json"]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("fork --json");
    let forks: Vec<serde_json::Value> = r["forks"]
        .as_array()
        .expect("forks")
        .iter()
        .map(|x| x["vm"].clone())
        .collect();
    assert_eq!(forks.len(), 3, "{r}");
    for v in &forks {
        assert_eq!(v["state"], "running", "{r}");
    }

    let mut all = vec![src.clone()];
    all.extend(forks.iter().cloned());
    let field = |k: &str| -> BTreeSet<String> {
        all.iter()
            .map(|v| v[k].as_str().unwrap_or_default().to_string())
            .collect()
    };
    for k in ["name", "id", "ip", "mac", "tap"] {
        assert_eq!(field(k).len(), 4, "{k} is not each VM's own: {all:#?}");
    }
    // Each VM's pinned host key is its own (and `fcm ssh`, which pins
    // it, logs in to each below).
    let keys: BTreeSet<String> = all
        .iter()
        .map(|v| {
            fs::read_to_string(
                f.state()
                    .join(v["id"].as_str().expect("id"))
                    .join("known_hosts"),
            )
            .expect("known_hosts")
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 4, "host keys are shared: {keys:?}");

    let mut seen = [
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    ];
    for v in &all {
        let name = v["name"].as_str().expect("name");
        let said = guest(
            &f,
            name,
            &format!(
                "hostname; echo \"machine-id $(cat /etc/machine-id)\"; cat /sys/class/net/eth0/address; \
                 head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                 [ \"$(cat /proc/{sleeper}/comm)\" = sleep ] && echo sleeper-alive; \
                 tmux show-environment -t keep FORKVAR; \
                 ip -4 -o addr show dev eth0 | awk '{{print $4}}'"
            ),
        );
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 7, "{name}: {said}");
        assert_eq!(lines[0], name, "{name}: its hostname");
        assert_eq!(lines[2], v["mac"].as_str().expect("mac"), "{name}: MAC");
        assert_eq!(lines[4], "sleeper-alive", "{name}: the process");
        assert_eq!(lines[5], "FORKVAR=forty-two", "{name}: tmux");
        assert_eq!(
            lines[6].split('/').next(),
            v["ip"].as_str(),
            "{name}: its address"
        );
        for (i, set) in seen.iter_mut().enumerate() {
            set.insert(lines[[0, 1, 3, 2][i]].to_string());
        }
    }
    for (what, set) in ["hostnames", "machine ids", "random bytes", "MACs"]
        .iter()
        .zip(&seen)
    {
        assert_eq!(set.len(), 4, "{what} repeat: {set:?}");
    }

    // No frame from a fork's tap with the source's MAC or address, from
    // the fork until now (each fork answered SSH on its own address
    // meanwhile: the capture saw its tap).
    let frames = capture.frames();
    for v in &forks {
        // What the fork sent: its tap's frames but those going out to it
        // (tcpdump's In, B, M, P: to the host, broadcast, multicast, other).
        let tap = v["tap"].as_str().expect("tap");
        let sent: Vec<&String> = frames
            .iter()
            .filter(|l| l.contains(&format!("{tap} ")) && !l.contains(&format!("{tap} Out ")))
            .collect();
        let leaked: Vec<&&String> = sent
            .iter()
            .filter(|l| l.contains(&src_mac) || l.contains(&src_ip))
            .collect();
        assert!(
            !sent.is_empty(),
            "no frame sent by {tap} was captured (of {} frames)",
            frames.len()
        );
        assert!(
            leaked.is_empty(),
            "{tap} sent as its source ({src_mac}, {src_ip}): {leaked:#?}"
        );
    }

    // The forks' writes are theirs: the source's files are unchanged.
    for v in &forks {
        let name = v["name"].as_str().expect("name");
        assert_eq!(guest(&f, name, "cat /root/mine"), "source");
        guest(&f, name, &format!("echo {name} > /root/mine && sync"));
    }
    assert_eq!(guest(&f, "origin", "cat /root/mine"), "source");

    // The network policy holds for forks: one cannot reach its source.
    let fork0 = forks[0]["name"].as_str().expect("name");
    let reach = guest(
        &f,
        fork0,
        &format!(
            "if timeout 5 bash -c 'echo > /dev/tcp/{src_ip}/22' 2>/dev/null; then echo reached; else echo blocked; fi"
        ),
    );
    assert_eq!(reach, "blocked", "a fork reached its source's SSH");

    // A fork survives a stop and a cold start with its own identity.
    f.ok(&["stop", fork0]);
    f.ok(&["start", fork0]);
    assert_eq!(
        guest(&f, fork0, "hostname; cat /root/mine"),
        format!("{fork0}\n{fork0}")
    );
}

#[test]
fn bad_forks_make_nothing() {
    if !e2e_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.json");
    // Room for the source and two more.
    fs::write(
        &cfg,
        r#"{"pool_start": "172.16.0.50", "pool_end": "172.16.0.52", "caddy": {"enabled": false}}"#,
    )
    .expect("config");
    let f = Fcm::start("forkbad", &["--config", &cfg.display().to_string()]);
    f.create(&["--name", "lone"]);
    let token = f.token();
    let before: Vec<String> = fs::read_dir(f.state())
        .expect("state")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let fork = |body: &str| {
        f.api(
            "POST",
            "/vms/lone/fork",
            Some(&token),
            Some(body.as_bytes()),
        )
    };
    let (code, body) = fork(r#"{"count": 0}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = fork(r#"{"count": 3}"#);
    assert_eq!(code, 400, "past the pool: {body}");
    assert!(body.contains("free addresses"), "{body}");
    let (code, body) = fork(r#"{"count": 1, "name": "lone"}"#);
    assert_eq!(code, 409, "a taken name: {body}");
    let (code, body) = f.api("POST", "/vms/nosuchvm/fork", Some(&token), Some(b"{}"));
    assert_eq!(code, 404, "{body}");
    let after: Vec<String> = fs::read_dir(f.state())
        .expect("state")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(before, after, "a refused fork left something");
    assert_eq!(f.vms().len(), 1);
    assert_eq!(f.taps().len(), 1, "{:?}", f.taps());

    f.ok(&["stop", "lone"]);
    let (code, body) = fork(r#"{"count": 1}"#);
    assert_eq!(code, 409, "fork of a stopped VM: {body}");
    assert!(body.contains("fcm start lone"), "{body}");
    assert_eq!(f.vms().len(), 1);
}

#[test]
fn vms_from_one_checkpoint_outlive_it_and_their_source() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("fromcp", &[]);
    f.create(&["--name", "base"]);
    let sleeper = guest(
        &f,
        "base",
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    );
    guest(&f, "base", "echo kept > /root/mine && sync");
    f.ok(&["checkpoint", "base", "--name", "cp1"]);
    // Written after the checkpoint: no VM made from it has it.
    guest(&f, "base", "echo later > /root/mine && sync");

    let token = f.token();
    let (code, body) = f.api(
        "POST",
        "/vms",
        Some(&token),
        Some(br#"{"from": "base:nope"}"#),
    );
    assert_eq!(code, 404, "an unknown checkpoint: {body}");
    let (code, body) = f.api(
        "POST",
        "/vms",
        Some(&token),
        Some(br#"{"from": "nosuchvm:cp1"}"#),
    );
    assert_eq!(code, 404, "an unknown VM: {body}");
    assert_eq!(f.vms().len(), 1, "a refused create made something");

    let a = f.create(&["--from", "base:cp1", "--name", "c1"]);
    let b = f.create(&["--from", "base:cp1", "--name", "c2"]);
    assert_ne!(a["ip"], b["ip"]);
    assert_ne!(a["mac"], b["mac"]);
    // Neither needs the checkpoint nor its VM any more.
    f.ok(&["checkpoint", "rm", "base", "cp1"]);
    f.ok(&["destroy", "base"]);

    let check = format!(
        "hostname; cat /root/mine; \
         [ \"$(cat /proc/{sleeper}/comm)\" = sleep ] && echo sleeper-alive; \
         ip -4 -o addr show dev eth0 | awk '{{print $4}}' | cut -d/ -f1"
    );
    for v in [&a, &b] {
        let name = v["name"].as_str().expect("name");
        assert_eq!(v["state"], "running");
        assert_eq!(
            guest(&f, name, &check),
            format!(
                "{name}\nkept\nsleeper-alive\n{}",
                v["ip"].as_str().expect("ip")
            ),
            "{name}: its identity, the checkpoint's file and process"
        );
    }
    let ids: BTreeSet<String> = [&a, &b]
        .iter()
        .map(|v| guest(&f, v["name"].as_str().expect("name"), "cat /etc/machine-id"))
        .collect();
    assert_eq!(ids.len(), 2, "machine ids repeat: {ids:?}");
    for v in [&a, &b] {
        let name = v["name"].as_str().expect("name");
        f.ok(&["stop", name]);
        f.ok(&["start", name]);
        assert_eq!(
            guest(&f, name, "hostname; cat /root/mine"),
            format!("{name}\nkept"),
            "{name} after a stop and start"
        );
    }
}

#[test]
fn a_full_disk_midway_through_a_fork_is_a_clean_error_and_leaves_nothing() {
    if !e2e_ready() {
        return;
    }
    // A state dir on a tmpfs with room for the source's disk and the
    // fork's staged copy of it, but not for the fork's own copy (tmpfs
    // cannot reflink: the copies are sparse).
    let tmp = tempfile::Builder::new()
        .prefix("fcm-forkfull-")
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
    let size_mib = 2 * used / (1 << 20) + 100;
    let _unmount = common::SmallTmpfs::mount(&small, size_mib, "fcm-test-forkfull");
    let f = Fcm::start(
        "forkfull",
        &["--state-dir", &small.join("state").display().to_string()],
    );
    let src = f.create(&["--name", "crowded", "--memory", "256"]);
    let id = src["id"].as_str().expect("id").to_string();
    let sleeper = guest(
        &f,
        "crowded",
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    );
    let listing = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(f.state())
            .expect("state")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let out = f.run(&["fork", "crowded", "--name", "spill"]);
    assert_eq!(out.status.code(), Some(1), "the fork did not fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    assert!(!err.contains("panick"), "{err}");
    // Nothing half-made: no fork listed, no directory, tap or staging left.
    assert_eq!(f.vms().len(), 1, "{:?}", f.vms());
    assert_eq!(listing(), before, "a failed fork left something");
    assert!(!f.state().join(&id).join(".fork.tmp").exists());
    assert_eq!(f.taps().len(), 1, "{:?}", f.taps());
    assert_eq!(f.all_vmms().len(), 1, "{:?}", f.all_vmms());
    // The source runs on, as it was.
    assert_eq!(f.vm("crowded")["state"], "running");
    assert_eq!(
        guest(
            &f,
            "crowded",
            &format!("cat /proc/{sleeper}/comm; echo still > /root/still && sync && echo ok")
        ),
        "sleep\nok"
    );
    f.ok(&["destroy", "crowded"]);
}
