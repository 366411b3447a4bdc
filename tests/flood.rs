//! Bounded servers, end to end: hundreds of idle and slow unauthenticated
//! connections to both of the daemon's ports (7777 and 7778), from ten
//! addresses other than the user's, kept open and renewed as the daemon
//! cuts them; meanwhile the user's `fcm ls` and `fcm console` (to a booted
//! guest, driven in a host-side tmux) work, and the daemon's threads and
//! fds stay bounded (figures printed).

mod common;

use std::fs;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::outer::Outer;
use common::{Fcm, e2e_ready, kill_pid, wait_for};

/// Opens `per` connections per port and source address, half idle (send
/// nothing) and half slow (one byte of a request every 0.5 s), and reopens
/// each one the daemon closes 0.3 s later. Bounded: at most `max_opens`
/// connections in all, for at most `secs`. Prints one JSON line of figures.
const FLOOD: &str = r#"
import json, select, socket, sys, time
ports = [int(p) for p in sys.argv[1].split(",")]
sources = sys.argv[2].split(",")
per, secs, max_opens = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
PREFIX = {7777: b"GET /vms HTTP/1.1\r\nHost: x\r\nX-Slow: ", 7778: b'{"vm":"x","token":"'}
st = dict(opened=0, reopened=0, cut=0, connect_failed=0, peak_open=0, slow_bytes=0)
live, later, poller = {}, [], select.poll()
def open_slot(slot):
    if st["opened"] >= max_opens:
        return
    port, src, kind = slot
    s = socket.socket()
    s.settimeout(2)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
    except OSError:
        st["connect_failed"] += 1
        s.close()
        later.append((time.time() + 0.3, slot))
        return
    s.setblocking(False)
    st["opened"] += 1
    live[s.fileno()] = {"s": s, "slot": slot, "sent": 0, "next": time.time() + 0.5}
    poller.register(s.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
def cut(fd):
    c = live.pop(fd)
    poller.unregister(fd)
    c["s"].close()
    st["cut"] += 1
    later.append((time.time() + 0.3, c["slot"]))
slots = [(p, src, "idle" if i % 2 else "slow") for p in ports for src in sources for i in range(per)]
for sl in slots:
    open_slot(sl)
end = time.time() + secs
while time.time() < end:
    st["peak_open"] = max(st["peak_open"], len(live))
    for fd, ev in poller.poll(100):
        if fd not in live:
            continue
        try:
            data = live[fd]["s"].recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            cut(fd)
    now = time.time()
    for fd, c in list(live.items()):
        if c["slot"][2] == "slow" and now >= c["next"]:
            p = PREFIX[c["slot"][0]]
            b = p[c["sent"]:c["sent"] + 1] or b"a"
            try:
                c["s"].send(b)
                c["sent"] += 1
                st["slow_bytes"] += 1
            except OSError:
                cut(fd)
                continue
            c["next"] = now + 0.5
    due = [x for x in later if x[0] <= now]
    later[:] = [x for x in later if x[0] > now]
    for _, slot in due:
        st["reopened"] += 1
        open_slot(slot)
st["open_at_end"] = len(live)
print(json.dumps(st), flush=True)
"#;

/// Threads and open fds of a process, from /proc.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (threads, fds)
}

#[test]
fn a_flood_of_strangers_locks_nobody_out_and_the_daemon_stays_bounded() {
    if !e2e_ready() {
        return;
    }
    let t0 = Instant::now();
    let f = Fcm::start("flood", &[]);
    let vm = f.create(&[]);
    let name = vm["name"].as_str().expect("name").to_string();
    let daemon = f.daemon_pid().expect("daemon pid");
    // Warm up: a console attach and detach, so the baseline includes what
    // one console costs.
    let o = Outer::new(&f, "fl");
    let w0 = o.open(&format!("console {name}"));
    o.wait_screen(&w0, "[main]", 90);
    o.keys(&w0, &["C-b", "d"]);
    o.wait_dead(&w0, 20);
    std::thread::sleep(Duration::from_secs(1));
    let before = threads_and_fds(daemon);

    // The flood: 10 addresses x 2 ports x 20 connections, for up to 60 s.
    let sources: Vec<String> = (2..12).map(|i| format!("127.0.0.{i}")).collect();
    let mut flood =
        f.ns.cmd("python3")
            .args([
                "-c",
                FLOOD,
                "7777,7778",
                &sources.join(","),
                "20",
                "60",
                "40000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            kill_pid(self.0);
        }
    }
    let _guard = KillOnDrop(flood.id());
    // Sample the daemon while the flood runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = (0, 0);
            while !stop.load(Ordering::Acquire) {
                let (t, n) = threads_and_fds(daemon);
                peak = (peak.0.max(t), peak.1.max(n));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        })
    };
    std::thread::sleep(Duration::from_secs(5));

    // The user's commands work through it.
    let mut ls_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = f.run(&["ls", "--json"]);
        ls_ms.push(t.elapsed().as_millis());
        assert!(
            out.status.success(),
            "fcm ls during the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&name));
        std::thread::sleep(Duration::from_millis(300));
    }
    let t = Instant::now();
    let w = o.open(&format!("console {name}"));
    o.wait_screen(&w, "[main]", 60);
    o.line(&w, "echo through-the-$((6*7))-flood");
    o.wait_screen(&w, "through-the-42-flood", 30);
    let console_ms = t.elapsed().as_millis();
    let during = threads_and_fds(daemon);
    // Raw protocol: a token-less API call is still answered, promptly.
    let (status, _) = f.api("GET", "/vms", None, None);
    assert_eq!(status, 401);

    let out = wait_for(Duration::from_secs(90), || flood.try_wait().ok().flatten());
    assert!(out.is_some(), "the flood did not end by itself");
    let out = flood.wait_with_output().expect("flood output");
    stop.store(true, Ordering::Release);
    let peak = sampler.join().expect("sampler");
    let figures: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_else(|e| {
            panic!(
                "flood output ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("flood: {figures}");
    eprintln!(
        "daemon threads/fds: before {before:?}, during {during:?}, peak {peak:?}; fcm ls ms {ls_ms:?}; console ready and echoing in {console_ms} ms"
    );
    // The flood was real: hundreds at once, renewed thousands of times.
    let n = |k: &str| figures[k].as_u64().unwrap_or(0);
    assert!(n("peak_open") >= 300, "{figures}");
    assert!(n("reopened") >= 1000 && n("cut") >= 1000, "{figures}");
    // Bounded: strangers cost no thread (they wait in each port's
    // poller), one fd each (at most the flood's 400); one console (two
    // threads, a pty and ssh's pipes) and a request or two.
    assert!(peak.0 <= before.0 + 8, "threads {peak:?} / {before:?}");
    assert!(peak.1 <= before.1 + 400 + 16, "fds {peak:?} / {before:?}");
    assert!(ls_ms.iter().all(|&ms| ms < 5000), "{ls_ms:?}");

    // And it all goes away again.
    o.keys(&w, &["C-b", "d"]);
    o.wait_dead(&w, 20);
    let settled = wait_for(Duration::from_secs(30), || {
        let now = threads_and_fds(daemon);
        (now.0 <= before.0 && now.1 <= before.1).then_some(now)
    });
    assert!(
        settled.is_some(),
        "after the flood the daemon holds {:?}, was {before:?}",
        threads_and_fds(daemon)
    );
    eprintln!("flood test took {:?}", t0.elapsed());
}
