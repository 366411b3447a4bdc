//! fcm-agent end to end, with real QEMU guests (TCG) in a namespace: a VM
//! made before the agent keeps working over SSH (and says so once; the
//! streamed exec's essentials are checked over SSH on it), new
//! VMs are reached through their agent (also with sshd gone), many execs
//! share its one channel, the agent killed in the guest costs only the
//! operation under way, hostile programs on the agent's port cost the
//! daemon nothing, and the agent answers after pause/resume,
//! checkpoint/restore and a daemon restart, with the guest's clock right.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pty::OnPty;
use common::{Fcm, e2e_ready, wait_for};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How often `what` is in the daemon's log after its first `from` bytes.
fn log_count(f: &Fcm, from: usize, what: &str) -> usize {
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    log.get(from..).unwrap_or_default().matches(what).count()
}

/// The guest's clock minus the host's, in seconds.
fn clock_offset(f: &Fcm, vm: &str) -> f64 {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    let out = f.ok(&["exec", vm, "--", "date", "+%s.%N"]);
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    let guest: f64 = out.trim().parse().expect("date");
    guest - (before + after) / 2.0
}

/// A streamed exec left running (its first line read).
fn running(f: &Fcm, vm: &str, script: &str) -> Child {
    let mut c = f
        .cli()
        .args(["exec", vm, "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fcm exec");
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    assert_eq!(line, "up\n");
    c
}

/// Programs that sit on the agent's port in place of the agent: garbage,
/// frames announcing 2 GiB, silence, or a hello followed by output that
/// ignores its credit. Python, run in the guest over SSH.
const HOSTILE: &str = r#"
import os, struct, sys, time, zlib
mode = sys.argv[1]
name = "fcm.agent.0"
port = None
for p in os.listdir("/sys/class/virtio-ports"):
    if open(f"/sys/class/virtio-ports/{p}/name").read().strip() == name:
        port = f"/dev/{p}"
fd = None
until = time.time() + 60
while fd is None and time.time() < until:
    try:
        fd = os.open(port, os.O_RDWR)
    except OSError:
        time.sleep(0.1)
print("open", flush=True)
def varint(n):
    out = b""
    while True:
        b = n & 0x7f
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def frame(payload):
    return b"\xfc\xa9" + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
def read_varint(b, i):
    n, shift = 0, 0
    while True:
        c = b[i]; i += 1
        n |= (c & 0x7f) << shift; shift += 7
        if not c & 0x80:
            return n, i
end = time.time() + 40
if mode == "garbage":
    junk = bytes((i * 7919) % 251 for i in range(65536))
    while time.time() < end:
        os.write(fd, junk)
elif mode == "giant":
    while time.time() < end:
        os.write(fd, b"\xfc\xa9" + struct.pack("<II", 0x7fffffff, 0) + b"\0" * 65536)
elif mode == "silent":
    while time.time() < end:
        os.read(fd, 65536)
elif mode == "flood":
    buf = b""
    while time.time() < end:
        buf += os.read(fd, 65536)
        while True:
            i = buf.find(b"\xfc\xa9")
            if i < 0 or len(buf) < i + 10:
                break
            n, crc = struct.unpack("<II", buf[i + 2:i + 10])
            if len(buf) < i + 10 + n:
                break
            p = buf[i + 10:i + 10 + n]
            buf = buf[i + 10 + n:]
            if p[0] == 0:  # Hello: answer it, same session
                _, j = read_varint(p, 1)
                session, j = read_varint(p, j)
                os.write(fd, frame(b"\x00" + varint(1) + varint(session) + varint(7) + b"hostile"))
            elif p[0] == 2:  # Exec: started, then output without end
                op, j = read_varint(p, 1)
                os.write(fd, frame(b"\x02" + varint(op) + varint(1)))
                chunk = frame(b"\x03" + varint(op) + varint(65536) + b"x" * 65536)
                while time.time() < end:
                    os.write(fd, chunk)
"#;

#[test]
fn the_agent_end_to_end() {
    if !e2e_ready() {
        return;
    }
    // A daemon without the agent's binary: its VMs are SSH-only, as VMs
    // made before fcm-agent are.
    let mut f = Fcm::start("agent", &["--agent", "/nonexistent/fcm-agent"]);
    let old = f.create(&["--name", "old"]);
    assert_eq!(old["agent"], false, "{old}");
    exec_over_ssh(&f, "old");

    // The daemon again, with the agent.
    f.kill_daemon();
    f.extra_args.clear();
    let from = fs::metadata(f.log()).map(|m| m.len() as usize).unwrap_or(0);
    f.spawn_daemon();
    for _ in 0..3 {
        assert_eq!(f.ok(&["exec", "old", "--", "echo", "ssh"]), "ssh\n");
    }
    assert_eq!(
        log_count(&f, from, "old: reached over SSH"),
        1,
        "said once: {}",
        fs::read_to_string(f.log()).unwrap_or_default()
    );

    let t = Instant::now();
    let v = f.create(&["--name", "new"]);
    println!("create to agent-ready: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(
        (v["agent"].as_bool(), v["ready"].as_bool()),
        (Some(true), Some(true)),
        "{v}"
    );
    let vm = "new";
    assert_eq!(f.ok(&["exec", vm, "--", "echo", "hi"]), "hi\n");
    assert!(
        through_agent(&f, vm),
        "an exec did not go through the agent"
    );

    // The agent killed in the guest: the exec under way fails cleanly,
    // init starts the agent again, the next exec works.
    let mut c = running(&f, vm, "echo up; sleep 60");
    let out = f.ssh(vm, "pkill -9 -x fcm-agent");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    let status = wait_for(Duration::from_secs(30), || c.try_wait().ok().flatten());
    let out = c.wait_with_output().expect("exec");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("agent"),
        "no clear error: {}",
        text(&out.stderr)
    );
    println!(
        "the exec under way failed {:.1} s after the agent died",
        t.elapsed().as_secs_f64()
    );
    assert!(through_agent(&f, vm), "the agent did not come back");
    assert_eq!(
        f.ok(&["exec", vm, "--", "pgrep", "-c", "-x", "fcm-agent"])
            .trim(),
        "1"
    );

    hostile_programs(&f, vm);

    // From here on the guest has no sshd: all goes through the agent.
    f.ok(&[
        "exec",
        vm,
        "--",
        "sh",
        "-c",
        "mv /usr/sbin/sshd /usr/sbin/sshd.off; pkill -x sshd; pkill -x sshd-session; true",
    ]);
    thread_sleep(1);
    assert_eq!(f.ok(&["exec", vm, "--", "echo", "agent"]), "agent\n");

    // cp both ways, a file and a directory.
    let work = f.dir.path().join("work");
    fs::create_dir_all(work.join("tree/sub")).expect("work");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    fs::write(work.join("tree/sub/blob"), &data).expect("blob");
    f.ok(&[
        "cp",
        &work.join("tree").display().to_string(),
        &format!("{vm}:/root/"),
    ]);
    f.ok(&[
        "cp",
        &format!("{vm}:/root/tree"),
        &work.join("back").display().to_string(),
    ]);
    assert!(fs::read(work.join("back/sub/blob")).expect("back") == data);

    // Many execs at once, on the agent's one channel.
    let kids: Vec<Child> = (0..20)
        .map(|i| {
            f.cli()
                .args(["exec", vm, "--", "sh", "-c", &format!("sleep 1; echo {i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("exec")
        })
        .collect();
    for (i, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().expect("exec");
        assert_eq!(
            (o.status.code(), text(&o.stdout)),
            (Some(0), format!("{i}\n")),
            "{}",
            text(&o.stderr)
        );
    }

    // Pause and resume, checkpoint and restore, a daemon restart: the agent
    // answers after each, the clock is right.
    f.ok(&["exec", vm, "--", "sh", "-c", "echo before > /root/mark"]);
    f.ok(&["pause", vm]);
    thread_sleep(3);
    let t = Instant::now();
    f.ok(&["resume", vm]);
    assert_eq!(f.ok(&["exec", vm, "--", "cat", "/root/mark"]), "before\n");
    println!(
        "resume to first exec answered: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let off = clock_offset(&f, vm);
    assert!(off.abs() < 1.0, "clock {off:+.2} s off after resume");

    let t = Instant::now();
    let cp = f.ok(&["checkpoint", vm, "--name", "c1", "--json"]);
    println!("checkpoint: {:.2} s", t.elapsed().as_secs_f64());
    assert!(
        !cp.contains("not frozen") && !cp.contains("not synced"),
        "{cp}"
    );
    f.ok(&["exec", vm, "--", "sh", "-c", "echo after > /root/mark"]);
    thread_sleep(2);
    f.ok(&["restore", vm, "c1"]);
    assert_eq!(f.ok(&["exec", vm, "--", "cat", "/root/mark"]), "before\n");
    let off = clock_offset(&f, vm);
    assert!(off.abs() < 1.0, "clock {off:+.2} s off after restore");
    // Not left frozen: a write goes through.
    f.ok(&[
        "exec",
        vm,
        "--timeout",
        "20",
        "--",
        "sh",
        "-c",
        "echo w > /root/w && sync",
    ]);

    f.kill_daemon();
    f.spawn_daemon();
    assert_eq!(f.ok(&["exec", vm, "--", "echo", "again"]), "again\n");

    // The old VM's next cold boot gets the agent.
    f.ok(&["stop", "old"]);
    let v: serde_json::Value =
        serde_json::from_str(f.ok(&["start", "old", "--json"]).trim()).expect("start --json");
    assert_eq!(v["agent"], true, "{v}");
    assert!(
        through_agent(&f, "old"),
        "the old VM's agent did not answer"
    );
    assert_eq!(
        f.ok(&["exec", "old", "--", "pgrep", "-c", "-x", "fcm-agent"])
            .trim(),
        "1"
    );
}

/// Waits until an exec runs under the agent again (its parent is the
/// agent, not sshd).
fn through_agent(f: &Fcm, vm: &str) -> bool {
    wait_for(Duration::from_secs(60), || {
        let o = f.run(&["exec", vm, "--", "sh", "-c", "cat /proc/$PPID/comm"]);
        (text(&o.stdout).trim() == "fcm-agent").then_some(())
    })
    .is_some()
}

/// The streamed exec's essentials over the SSH implementation (a VM
/// without an agent): output as it comes, exit codes and signals, the
/// deadline, stdin, a terminal, Ctrl-C.
fn exec_over_ssh(f: &Fcm, vm: &str) {
    let mut c = running(f, vm, "echo up; sleep 3; echo down");
    assert!(c.try_wait().expect("try_wait").is_none(), "not streamed");
    let out = c.wait_with_output().expect("exec");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "down\n".into())
    );
    let out = f.run(&["exec", vm, "--", "sh", "-c", "echo o; echo e >&2; exit 7"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(7), "o\n".into(), "e\n".into())
    );
    let out = f.run(&["exec", vm, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(
        (out.status.code(), text(&out.stderr)),
        (Some(137), String::new())
    );
    let out = f.run(&["exec", vm, "--timeout", "2", "--", "sleep", "60"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    let out = f.run_with_stdin(&["exec", "-i", vm, "--", "wc", "-c"], &vec![b'x'; 3 << 20]);
    assert_eq!(text(&out.stdout).trim(), (3 << 20).to_string());
    let mut p = OnPty::start(f, &["exec", "-it", vm, "--", "sh"], 90, 33);
    thread_sleep(2);
    p.type_keys(b"stty size\n");
    p.wait_for("33 90", 30);
    p.resize(101, 44);
    thread_sleep(1);
    p.type_keys(b"stty size\n");
    p.wait_for("44 101", 30);
    p.type_keys(b"sleep 60\n");
    thread_sleep(1);
    p.type_keys(b"\x03");
    p.type_keys(b"exit 3\n");
    assert_eq!(p.wait_exit(30), Some(3), "{:?}", p.screen());
}

fn thread_sleep(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

/// Each hostile program on the agent's port in turn: the daemon stays
/// responsive, execs end within their deadline (over SSH, or with an error
/// naming the agent), and the real agent serves again afterwards.
fn hostile_programs(f: &Fcm, vm: &str) {
    let script = f.dir.path().join("hostile.py");
    fs::write(&script, HOSTILE).expect("script");
    f.ok(&[
        "cp",
        &script.display().to_string(),
        &format!("{vm}:/root/hostile.py"),
    ]);
    for mode in ["garbage", "giant", "silent", "flood"] {
        // The agent held off, its port taken by the hostile program.
        let out = f.ssh(
            vm,
            &format!(
                "touch /run/fcm/agent.off; pkill -9 -x fcm-agent; sleep 0.5; \
                 (python3 /root/hostile.py {mode} > /run/hostile.log 2>&1 &); \
                 for i in $(seq 50); do grep -q open /run/hostile.log && break; sleep 0.2; done; cat /run/hostile.log"
            ),
        );
        assert!(
            text(&out.stdout).contains("open"),
            "{mode}: {}",
            text(&out.stderr)
        );
        let t = Instant::now();
        let exec = f.run(&["exec", vm, "--timeout", "10", "--", "echo", "through"]);
        let took = t.elapsed();
        let ls_start = Instant::now();
        f.ok(&["ls"]);
        let ls = ls_start.elapsed();
        let said = text(&exec.stderr);
        println!(
            "hostile {mode}: exec {} in {:.1} s ({}), ls {:.0} ms",
            exec.status,
            took.as_secs_f64(),
            said.lines().next().unwrap_or("-"),
            ls.as_secs_f64() * 1e3
        );
        assert!(took < Duration::from_secs(40), "{mode}: exec took {took:?}");
        assert!(ls < Duration::from_secs(2), "{mode}: ls took {ls:?}");
        assert!(
            exec.status.success() || said.contains("agent"),
            "{mode}: not a clear error: {said}"
        );
        let out = f.ssh(vm, "pkill -f 'hostil[e][.]py'; rm -f /run/fcm/agent.off");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(through_agent(f, vm), "{mode}: the agent did not come back");
    }
}
