//! Persistent console sessions, end to end: the real daemon and a guest
//! that really boots (QEMU backend, TCG) in a network namespace, driven by
//! the real `fcm console` / `fcm attach` running in panes of a host-side
//! tmux (so they get a real terminal), read back with capture-pane.
//! Raw protocol abuse comes from python3 run inside the namespace.

mod common;

use std::fs;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::outer::Outer;
use common::{Fcm, e2e_ready, fcm_bin, wait_for};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `fcm <args>` in the namespace with extra environment, killed if it
/// runs longer than a minute (an attach that unexpectedly succeeds), its
/// standard input on a terminal (a pty of the test's) as a user's console
/// would be: `console` and `attach` refuse to run without one.
fn run_env(f: &Fcm, env: &[(&str, &str)], args: &[&str]) -> Output {
    let (_master, slave) = fcm::host::pty::open(80, 24).expect("pty");
    let mut c = f.ns.cmd("env");
    c.args(["-u", "FCM_TOKEN", "-u", "FCM_HOST", "-u", "FCM_STREAM"])
        .arg(format!("HOME={}", f.home().display()))
        .arg(format!("FCM_STATE_DIR={}", f.state().display()));
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    let mut child = c
        .arg(fcm_bin())
        .args(args)
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fcm");
    let done = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("fcm");
    assert!(
        done.is_some(),
        "fcm {args:?} did not finish: {}",
        text(&out)
    );
    out
}

fn sessions(f: &Fcm, vm: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(f.ok(&["sessions", vm, "--json"]).trim()).expect("sessions --json")
}

fn session<'v>(list: &'v [serde_json::Value], id: &str) -> Option<&'v serde_json::Value> {
    list.iter().find(|s| s["id"] == id)
}

/// Waits until session `id` has `n` attached clients.
fn wait_attached(f: &Fcm, vm: &str, id: &str, n: u64) {
    let ok = wait_for(Duration::from_secs(30), || {
        let l = sessions(f, vm);
        (session(&l, id).and_then(|s| s["attached"].as_u64()) == Some(n)).then_some(())
    });
    assert!(
        ok.is_some(),
        "session {id} never had {n} clients: {:?}",
        sessions(f, vm)
    );
}

#[test]
fn console_sessions_persist_resize_share_and_end() {
    if !e2e_ready() {
        return;
    }
    let t0 = Instant::now();
    let f = Fcm::start("con", &[]);
    let vm = f.create(&[]);
    let name = vm["name"].as_str().expect("name").to_string();
    let o = Outer::new(&f, "a");

    // 1. A console, some state, then the client is killed outright.
    let w1 = o.open(&format!("console {name}"));
    o.wait_screen(&w1, "[main]", 60);
    o.line(&w1, "export X=42; cd /tmp; echo ready-$((6*7))");
    o.wait_screen(&w1, "ready-42", 20);
    // Colours reach the terminal, Ctrl-C reaches the guest, full-screen
    // programs draw and give the screen back.
    o.line(
        &w1,
        "printf '\\033[31mRED\\033[0m tput=%s\\n' $(tput colors)",
    );
    o.wait_screen(&w1, "tput=256", 20);
    let esc = o.screen_escapes(&w1);
    assert!(esc.contains("\x1b[31mRED"), "no colour escape in:\n{esc}");
    o.line(&w1, "sleep 300; echo not-interrupted");
    std::thread::sleep(Duration::from_millis(800));
    o.keys(&w1, &["C-c"]);
    o.line(&w1, "echo after-$((1+1))-int");
    let s = o.wait_screen(&w1, "after-2-int", 20);
    assert!(!s.lines().any(|l| l.trim() == "not-interrupted"), "{s}");
    o.line(&w1, "seq 1000 | less");
    o.wait_screen(&w1, "\n38\n", 20);
    o.keys(&w1, &["q"]);
    o.line(&w1, "echo back-from-$((0+0))-less");
    o.wait_screen(&w1, "back-from-0-less", 20);
    // `~.` at the start of a line is text, not an ssh escape.
    o.keys(&w1, &["Enter", "~", "."]);
    o.keys(&w1, &["C-u"]);
    o.line(&w1, "echo tilde-$((2*2))-ok");
    o.wait_screen(&w1, "tilde-4-ok", 20);

    let pid = o.pane_pid(&w1);
    common::kill_pid(pid);
    o.wait_dead(&w1, 10);
    // The session lives on and its (dead) client is released daemon-side.
    let listed = f.ok(&["sessions", &name]);
    assert!(
        listed.contains("SESSION") && listed.lines().any(|l| l.starts_with("main ")),
        "{listed}"
    );
    wait_attached(&f, &name, "main", 0);
    let l = sessions(&f, &name);
    let main = session(&l, "main").expect("main listed");
    assert_eq!(main["command"], "bash", "{main}");
    assert!(main["created"].as_u64().unwrap_or(0) > 0, "{main}");

    // Rejoin in a new window: screen, variables, cwd are as they were.
    let w2 = o.open(&format!("attach {name} main"));
    let s = o.wait_screen(&w2, "tilde-4-ok", 60);
    assert!(s.contains("[main]"), "{s}");
    o.line(&w2, "echo $X $(pwd)");
    o.wait_screen(&w2, "42 /tmp", 20);
    // The session's scrollback from before the kill is there too.
    o.line(
        &w2,
        "echo scrollback=$(tmux capture-pane -p -S - | grep -c '^ready-42$')",
    );
    o.wait_screen(&w2, "scrollback=1", 20);

    // 2. Resizing the outer window reaches the guest's terminal.
    for (x, y) in [(100u16, 30u16), (132, 45)] {
        o.tmux(&[
            "resize-window",
            "-t",
            &w2,
            "-x",
            &x.to_string(),
            "-y",
            &y.to_string(),
        ]);
        // tmux in the guest keeps one row for its status line.
        let want = format!("size={} {x}", y - 1);
        let seen = wait_for(Duration::from_secs(20), || {
            o.line(&w2, "echo size=$(stty size)");
            std::thread::sleep(Duration::from_millis(700));
            o.screen(&w2).contains(&want).then_some(())
        });
        assert!(seen.is_some(), "{want} not seen:\n{}", o.screen(&w2));
    }

    // 3a. Two clients on one session see the same output.
    let w3 = o.open(&format!("console {name}"));
    o.wait_screen(&w3, "[main]", 60);
    wait_attached(&f, &name, "main", 2);
    o.line(&w3, "echo shared-$((2+3))-out");
    o.wait_screen(&w3, "shared-5-out", 20);
    o.wait_screen(&w2, "shared-5-out", 20);

    // 3b. A second session is separate from the first.
    let w4 = o.open(&format!("console {name} --new"));
    let s = o.wait_screen(&w4, "root@", 60);
    assert!(!s.contains("[main]"), "--new joined main:\n{s}");
    o.line(&w4, "echo other-[$X]-$((9*9))");
    o.wait_screen(&w4, "other-[]-81", 20);
    let l = sessions(&f, &name);
    assert_eq!(l.len(), 2, "{l:?}");
    let extra = l
        .iter()
        .find(|s| s["id"] != "main")
        .and_then(|s| s["id"].as_str())
        .expect("second session")
        .to_string();
    assert!(o.screen(&w4).contains(&format!("[{extra}]")));
    // A tmux detach ends the client and says how to come back.
    o.keys(&w4, &["C-b", "d"]);
    let s = o.wait_dead(&w4, 20);
    assert!(
        s.contains(&format!("rejoin with: fcm attach {name} {extra}")),
        "{s}"
    );
    wait_attached(&f, &name, &extra, 0);

    // FCM_HOST alone is enough to find the terminal port; a wrong
    // FCM_STREAM is a clear error.
    let token = f.token();
    let w5 = o.open_env(
        &[("FCM_HOST", "localhost"), ("FCM_TOKEN", &token)],
        &format!("attach {name} {extra}"),
    );
    o.wait_screen(&w5, &format!("[{extra}]"), 60);
    o.line(&w5, "echo via-host-$((5*5))");
    o.wait_screen(&w5, "via-host-25", 20);
    let bad = run_env(
        &f,
        &[("FCM_STREAM", "127.0.0.1:9")],
        &["attach", &name, &extra],
    );
    assert_eq!(bad.status.code(), Some(1));
    let e = text(&bad);
    assert!(
        e.contains("terminal port 127.0.0.1:9") && e.contains("hint:"),
        "{e}"
    );

    // 6. Killing a session ends it and its clients; unknown ones are errors.
    let k = f.run(&["kill", &name, &extra]);
    assert!(k.status.success(), "{}", text(&k));
    let s = o.wait_dead(&w5, 20);
    assert!(
        s.contains(&format!("session {extra} of {name} has ended")),
        "{s}"
    );
    assert!(session(&sessions(&f, &name), &extra).is_none());
    let again = f.run(&["kill", &name, &extra]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("has no session"), "{}", text(&again));
    let (status, body) = f.api(
        "DELETE",
        &format!("/vms/{name}/sessions/main"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    o.wait_dead(&w2, 20);
    o.wait_dead(&w3, 20);
    let unknown = run_env(&f, &[], &["attach", &name, "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    let e = text(&unknown);
    assert!(
        e.contains(&format!("VM {name} has no session nope"))
            && e.contains(&format!("hint: list sessions with: fcm sessions {name}")),
        "{e}"
    );
    let novm = run_env(&f, &[], &["console", "no-such-vm"]);
    let e = text(&novm);
    assert!(
        novm.status.code() == Some(1) && e.contains("no VM named") && e.contains("fcm ls"),
        "{e}"
    );

    // Stopping the VM ends its sessions and tells attached clients why;
    // afterwards the console says what to do.
    let w6 = o.open(&format!("console {name}"));
    o.wait_screen(&w6, "[main]", 60);
    f.ok(&["stop", &name]);
    let s = o.wait_dead(&w6, 30);
    assert!(
        s.contains(&format!("[VM {name} stopped; session main has ended]")),
        "{s}"
    );
    for args in [
        vec!["console", name.as_str()],
        vec!["attach", name.as_str(), "main"],
    ] {
        let out = run_env(&f, &[], &args);
        let e = text(&out);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(
            e.contains(&format!("VM {name} is stopped"))
                && e.contains(&format!("hint: start it with: fcm start {name}")),
            "{args:?}: {e}"
        );
        assert_eq!(e.lines().count(), 2, "{e}");
    }
    eprintln!("console test took {:?}", t0.elapsed());
}

/// Talks to the terminal port from inside the namespace with python3.
/// Each case prints one JSON line: {"case", "secs", "reply"}.
const RAW_CLIENT: &str = r#"
import json, socket, struct, sys, time
tok, vm = sys.argv[1], sys.argv[2]
def hs(**kw):
    d = {"vm": vm, "token": tok}
    d.update(kw)
    return json.dumps(d).encode() + b"\n"
def talk(data, then=None):
    s = socket.create_connection(("127.0.0.1", 7778), timeout=20)
    t = time.time()
    if data:
        s.sendall(data)
    f = s.makefile("rb")
    reply = f.readline()
    rest = b""
    if then:
        rest = then(s, f)
    # The daemon must close a refused connection by itself.
    closed = None
    if not json.loads(reply or b"{}").get("ok"):
        try:
            closed = f.read() == b""
        except ConnectionResetError:
            closed = True
    s.close()
    return {"secs": round(time.time() - t, 2), "reply": reply.decode(errors="replace"),
            "rest": rest.decode(errors="replace"), "closed": closed}
def shell(s, f):
    cmd = b"echo alive-$((3*4))-$(stty size | tr ' ' x)\r"
    s.sendall(struct.pack(">BH", 0, len(cmd)) + cmd)
    out, end = b"", time.time() + 30
    s.settimeout(2)
    while b"alive-12-" not in out and time.time() < end:
        try:
            c = s.recv(65536)
        except socket.timeout:
            continue
        if not c:
            break
        out += c
    i = out.find(b"alive-12-")
    return out[i:i + 20] if i >= 0 else out[-300:]
cases = {
    "wrong_token": lambda: talk(hs(token="x" * 32)),
    "empty_token": lambda: talk(hs(token="")),
    "garbage": lambda: talk(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "binary": lambda: talk(bytes(range(256)) * 4),
    "oversized": lambda: talk(b'{"vm":"' + b"a" * 100000 + b'"}\n'),
    "early_data": lambda: talk(hs() + b"\x00\x00\x02ls"),
    "silent": lambda: talk(b""),
    "unknown_vm": lambda: talk(hs(vm="no-such-vm")),
    "unknown_session": lambda: talk(hs(session="nope")),
    "bad_session": lambda: talk(hs(session="../etc")),
    "unknown_field": lambda: talk(hs(admin=True)),
    "works": lambda: talk(hs(create=True, cols=100, rows=30), shell),
}
for name in sys.argv[3:]:
    r = cases[name]()
    r["case"] = name
    print(json.dumps(r), flush=True)
"#;

/// Connects and disconnects `n` times in the ways a client can go away,
/// four at a time. Prints a summary JSON line.
const CYCLES: &str = r#"
import json, socket, struct, sys, time
from concurrent.futures import ThreadPoolExecutor
tok, vm, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
hs = json.dumps({"vm": vm, "token": tok, "create": True}).encode() + b"\n"
def one(i):
    kind = ["full", "hangup", "rst", "badframe", "full_rst", "refused", "slow_close"][i % 7]
    s = socket.create_connection(("127.0.0.1", 7778), timeout=30)
    try:
        if kind == "refused":
            s.sendall(b"nonsense\n")
            return kind, s.makefile("rb").readline()[:40].decode()
        s.sendall(hs)
        if kind == "hangup":
            return kind, "closed"
        if kind == "rst":
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return kind, "reset"
        f = s.makefile("rb")
        r = f.readline()
        if not json.loads(r).get("ok"):
            return kind, "refused: " + r.decode()
        if kind == "badframe":
            s.sendall(b"\x09\x00\x00")
            return kind, "eof" if s.recv(65536) is not None else ""
        s.sendall(struct.pack(">BH", 1, 4) + struct.pack(">HH", 80 + i % 40, 24))
        s.sendall(struct.pack(">BH", 0, 3) + b"\x1b[A"[:3])
        data = s.recv(65536)
        if kind == "full_rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if kind == "slow_close":
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
        return kind, "ok %d" % len(data)
    finally:
        s.close()
t = time.time()
with ThreadPoolExecutor(4) as ex:
    res = list(ex.map(one, range(n)))
bad = [r for r in res if r[1].startswith("refused:") or r[1] == ""]
print(json.dumps({"n": len(res), "secs": round(time.time() - t, 1), "bad": bad[:5],
                  "kinds": sorted(set(r[0] for r in res))}))
"#;

/// What the daemon holds: open fds, threads, child processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    fds: usize,
    threads: usize,
    children: usize,
}

fn held(pid: u32) -> Held {
    let count = |p: String| fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let mut children = 0;
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        // The VMMs are the daemon's children too (QEMU and Firecracker are
        // spawned and reaped by it); only the others count.
        let vmm = stat.contains("(qemu-system-x86)") || stat.contains("(firecracker)");
        if ppid == Some(pid) && !vmm {
            children += 1;
        }
    }
    Held {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        children,
    }
}

/// Waits until the daemon holds no more than `base`.
fn settles(pid: u32, base: Held) -> Result<Held, Held> {
    let mut last = held(pid);
    wait_for(Duration::from_secs(30), || {
        last = held(pid);
        (last.fds <= base.fds && last.threads <= base.threads && last.children <= base.children)
            .then_some(last)
    })
    .ok_or(last)
}

fn raw(f: &Fcm, script: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out =
        f.ns.cmd("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("python3");
    assert!(out.status.success(), "python3 failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn terminal_port_refuses_bad_handshakes_and_leaks_nothing() {
    if !e2e_ready() {
        return;
    }
    let t0 = Instant::now();
    let f = Fcm::start("conraw", &[]);
    let vm = f.create(&[]);
    let name = vm["name"].as_str().expect("name").to_string();
    let token = f.token();
    let daemon = f.daemon.as_ref().expect("daemon").id();

    // Warm up (a full attach and detach), then note what the daemon holds.
    let warm = raw(&f, RAW_CLIENT, &[&token, &name, "works"]);
    assert!(
        warm[0]["rest"]
            .as_str()
            .unwrap_or("")
            .contains("alive-12-29x100"),
        "{warm:?}"
    );
    let rest = wait_for(Duration::from_secs(30), || {
        (held(daemon).children == 0).then_some(())
    });
    assert!(rest.is_some(), "ssh left running: {:?}", held(daemon));
    std::thread::sleep(Duration::from_secs(1));
    let base = held(daemon);

    // 4. Every kind of bad handshake gets a clear refusal and a close.
    let cases = [
        ("wrong_token", "invalid token"),
        ("empty_token", "invalid token"),
        ("garbage", "malformed handshake"),
        ("binary", "malformed handshake"),
        ("oversized", "handshake larger than 4096 bytes"),
        ("early_data", "data sent before the handshake was answered"),
        ("silent", "no handshake within 5 s"),
        ("unknown_vm", "no VM named or with id \\\"no-such-vm\\\""),
        ("unknown_session", &format!("VM {name} has no session nope")),
        ("bad_session", "invalid session id"),
        ("unknown_field", "unknown field `admin`"),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let mut args = vec![token.as_str(), name.as_str()];
    args.extend(&names);
    let results = raw(&f, RAW_CLIENT, &args);
    assert_eq!(results.len(), cases.len());
    for (r, (case, want)) in results.iter().zip(cases) {
        let reply = r["reply"].as_str().unwrap_or("");
        assert!(
            reply.starts_with("{\"ok\":false,\"error\":") && reply.contains(want),
            "{case}: {r}"
        );
        assert!(reply.contains("\"hint\":"), "{case}: no hint: {r}");
        assert_eq!(r["closed"], true, "{case}: not closed: {r}");
        let secs = r["secs"].as_f64().unwrap_or(99.0);
        if case == "silent" {
            assert!((4.9..8.0).contains(&secs), "{case}: {secs} s");
        } else if !case.contains("session") {
            // Refused before the guest is asked anything.
            assert!(secs < 1.0, "{case}: {secs} s");
        }
        if case.contains("token") || case == "garbage" {
            assert!(!reply.contains(&name), "{case} leaks the VM: {reply}");
        }
    }
    // Nothing lasting: the daemon holds what it held before.
    if let Err(h) = settles(daemon, base) {
        panic!("after bad handshakes the daemon holds {h:?}, was {base:?}");
    }

    // 5. 100 connects and disconnects of every kind.
    let summary = raw(&f, CYCLES, &[&token, &name, "100"]);
    let s = &summary[0];
    assert_eq!(s["n"], 100, "{s}");
    assert_eq!(s["bad"].as_array().map(Vec::len), Some(0), "{s}");
    eprintln!("100 cycles: {s}");
    match settles(daemon, base) {
        Ok(h) => eprintln!("daemon before {base:?}, after {h:?}"),
        Err(h) => panic!(
            "after 100 cycles the daemon holds {h:?}, was {base:?}\n{}",
            fs::read_to_string(f.log()).unwrap_or_default()
        ),
    }
    // Nothing is left attached in the guest either.
    let clients = wait_for(Duration::from_secs(30), || {
        let out = f.ssh(&name, "tmux list-clients | wc -l");
        (String::from_utf8_lossy(&out.stdout).trim() == "0").then_some(())
    });
    assert!(clients.is_some(), "tmux clients left in the guest");

    // The daemon is unharmed: a real console still works.
    let o = Outer::new(&f, "b");
    let w = o.open(&format!("console {name}"));
    o.wait_screen(&w, "[main]", 60);
    o.line(&w, "echo still-$((7*6))-here");
    o.wait_screen(&w, "still-42-here", 20);
    eprintln!("raw test took {:?}", t0.elapsed());
}

#[test]
fn text_from_a_guest_reaches_no_terminal_with_its_control_sequences() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("guesttext", &[]);
    let vm = f.create(&["--name", "hostile"]);
    assert_eq!(vm["state"], "running");
    // A hostile guest controls its own tmux: this one answers the
    // daemon's listing with a command name that is an escape sequence (it
    // would retitle the user's window and clear the screen).
    let setup = r#"mv /usr/bin/tmux /usr/bin/tmux.real && cat > /usr/bin/tmux <<'EOS'
#!/bin/sh
if [ "$1" = list-panes ]; then
  printf 'evil|1700000000|0|]0;owned[2Jboom|11
'
  exit 0
fi
exec /usr/bin/tmux.real "$@"
EOS
chmod 755 /usr/bin/tmux && tmux list-panes -a -F x | od -An -tx1 | head -2"#;
    let out = f.ssh("hostile", setup);
    let od = text(&out);
    assert!(
        out.status.success() && od.contains("1b"),
        "the guest's tmux does not print raw escapes: {od}"
    );
    let table = f.run(&["sessions", "hostile"]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let all = [table.stdout.as_slice(), table.stderr.as_slice()].concat();
    assert!(
        !all.iter().any(|b| *b == 0x1b || *b == 0x07),
        "control bytes reached the terminal: {:?}",
        String::from_utf8_lossy(&all)
    );
    let shown = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(shown.contains("evil") && shown.contains("boom"), "{shown}");
    // The JSON API carries it stripped too.
    let json = f.run(&["sessions", "hostile", "--json"]);
    assert!(
        !json.stdout.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&json.stdout)
    );
}
