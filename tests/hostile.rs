//! A hostile guest, for real: the daemon in a network namespace with its
//! network policy, two QEMU guests that really boot, a real Caddy, and a
//! stand-in internet (a second namespace behind a veth pair). From inside
//! guest A (through `fcm ssh`), the daemon's ports, a service of the test's
//! on the bridge address, guest B and a metadata address are unreachable;
//! A's claims to B's address and MAC (ARP and IP) are dropped and the host
//! keeps reaching the real B; A still reaches the internet, and the host
//! still reaches A by SSH and through its URL. Every blocked thing is first
//! seen reachable with the policy replaced by the plain NAT fcm used to
//! install (positive controls), and the policy comes back by restarting the
//! daemon, as after a crash, with both VMs running. A last restart with
//! `allow_guest_to_guest` lets A reach B.
//!
//! All traffic stays in the namespaces the test makes; servers are killed
//! by pid and the namespaces deleted on drop, also when an assertion fails.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::caddy::{fetch, start_caddy, write_caddy_config};
use common::{Fcm, Netns, e2e_ready, wait_for};

const PYTHON: &str = "/usr/bin/python3";
const GATEWAY: &str = "172.16.0.1";
const INTERNET: &str = "198.18.0.1";
const METADATA: &str = "169.254.169.254";
/// The test's own service on the bridge address, in the daemon's namespace.
const HOST_SERVICE_PORT: u16 = 9999;

/// What fcm installed before the policy: NAT and forwarding, nothing else.
/// Loaded by hand for the positive controls (the daemon never installs it).
const PLAIN_NAT: &str = "table inet fcm {}\ndelete table inet fcm\n\
    table bridge fcm {}\ndelete table bridge fcm\n\
    table ip fcm {}\ndelete table ip fcm\n\
    table ip fcm {\n\
    \tchain postrouting {\n\
    \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
    \t\tip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 masquerade\n\
    \t}\n\
    \tchain forward {\n\
    \t\ttype filter hook forward priority filter; policy accept;\n\
    \t\tiifname \"fcm0\" accept\n\
    \t\toifname \"fcm0\" ct state established,related accept\n\
    \t}\n\
    }\n";

/// Runs in the guest: TCP connects to `name=host:port` arguments, all at
/// once, 3 s each; prints `name open|timeout|refused|error`.
const PROBE: &str = r#"
import socket, sys, threading
res = {}
def probe(name, host, port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        res[name] = "open"
    except socket.timeout:
        res[name] = "timeout"
    except ConnectionRefusedError:
        res[name] = "refused"
    except OSError as e:
        res[name] = "error%s" % e.errno
    finally:
        s.close()
ts = []
for a in sys.argv[1:]:
    name, rest = a.split("=")
    host, port = rest.rsplit(":", 1)
    t = threading.Thread(target=probe, args=(name, host, port))
    t.start()
    ts.append(t)
for t in ts:
    t.join()
for k in sorted(res):
    print(k, res[k])
"#;

/// Runs in the guest: raw frames out of eth0 with the interface's current
/// MAC as source, one every 0.2 s.
///   arp SPA COUNT                 ARP replies claiming SPA is at this MAC
///   udp SRC DST DSTMAC COUNT      IPv4/UDP from SRC carrying the marker
const FRAMES: &str = r#"
import socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return (~s) & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
own = s.getsockname()[4]
if sys.argv[1] == "arp":
    spa, n = socket.inet_aton(sys.argv[2]), int(sys.argv[3])
    arp = bytes.fromhex("0001080006040002") + own + spa + b"\xff" * 6 + spa
    frame = b"\xff" * 6 + own + b"\x08\x06" + arp
else:
    src, dst = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
    dmac, n = bytes.fromhex(sys.argv[4].replace(":", "")), int(sys.argv[5])
    payload = b"fcm-hostile-marker"
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frame = dmac + own + b"\x08\x00" + ip + udp
for _ in range(n):
    s.send(frame)
    time.sleep(0.2)
"#;

/// Runs on the host side: waits up to SECS for an IPv4 frame on IFACE from
/// SRC carrying the marker; prints `seen <source MAC>` or `none`.
const SNIFF: &str = r#"
import socket, sys, time
iface, src, secs = sys.argv[1], socket.inet_aton(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((iface, 0x0800))
end = time.time() + secs
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        f = s.recv(2048)
    except socket.timeout:
        break
    if b"fcm-hostile-marker" in f and f[26:30] == src:
        print("seen", f[6:12].hex(":"), flush=True)
        sys.exit(0)
print("none", flush=True)
"#;

/// A static web server: `python3 -m http.server` without its reverse DNS
/// lookup of the bound address (which would wait on a resolver the
/// namespaces do not have). argv: address port directory.
const WEB: &str = r#"
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
"#;

/// Runs `cmd` with a deadline; killed (by pid) when it passes.
fn run_for(mut cmd: Command, secs: u64) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            common::kill_pid(pid);
            rx.recv_timeout(Duration::from_secs(5))
                .expect("killed command did not end")
                .expect("wait")
        }
    }
}

/// A command run inside a namespace, under `timeout`, never a shell.
fn ns_run(ns: &Netns, secs: u32, argv: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.args([
        "-k",
        "1",
        &secs.to_string(),
        "ip",
        "netns",
        "exec",
        &ns.name,
    ]);
    c.args(argv);
    run_for(c, u64::from(secs) + 3)
}

fn ns_ok(ns: &Netns, argv: &[&str]) -> String {
    let out = ns_run(ns, 10, argv);
    assert!(
        out.status.success(),
        "{}: {argv:?} failed: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `fcm` CLI of the test's user. The API listens beyond loopback here,
/// so it speaks TLS (the daemon's certificate is pinned on first use).
fn cli(f: &Fcm) -> Command {
    let mut c = f.ns.cmd("env");
    c.args([
        "-u",
        "FCM_TOKEN",
        "-u",
        "FCM_STREAM",
        "-u",
        "FCM_FINGERPRINT",
    ])
    .arg(format!("HOME={}", f.home().display()))
    .arg(format!("FCM_STATE_DIR={}", f.state().display()))
    .arg("FCM_HOST=https://127.0.0.1:7777")
    .arg(common::fcm_bin());
    c
}

/// `fcm create --json --name <name>` (waits for SSH).
fn create(f: &Fcm, name: &str) -> serde_json::Value {
    let mut c = cli(f);
    c.args(["create", "--json", "--name", name]);
    let out = run_for(c, 240);
    assert!(
        out.status.success(),
        "fcm create {name} failed: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).expect("create --json output")
}

/// `fcm ssh <vm> -- <script>` with a deadline: (success, stdout).
fn guest(f: &Fcm, vm: &str, script: &str) -> (bool, String) {
    let mut c = cli(f);
    c.args(["ssh", vm, "--", script]);
    let out = run_for(c, 40);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn guest_ok(f: &Fcm, vm: &str, script: &str) -> String {
    let (ok, out) = guest(f, vm, script);
    assert!(ok, "in {vm}: {script:?} failed: {out}");
    out
}

/// Copies a script into the guest as /root/<name> (hex on the command line).
fn put_script(f: &Fcm, vm: &str, name: &str, text: &str) {
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    guest_ok(
        f,
        vm,
        &format!(
            "python3 -c 'import sys; open(sys.argv[1], \"wb\").write(bytes.fromhex(sys.argv[2]))' \
             /root/{name} {hex}"
        ),
    );
}

/// Processes of the test (servers, sniffers): killed by pid on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Children {
    /// [`WEB`] in `ns` on addr:port serving `body` as its
    /// index page; waits until it answers from inside `ns`.
    fn web(&mut self, ns: &Netns, dir: &Path, addr: &str, port: u16, body: &str) {
        let root = dir.join(format!("www-{addr}-{port}"));
        fs::create_dir_all(&root).expect("www");
        fs::write(root.join("index.html"), body).expect("index");
        let log = fs::File::create(dir.join(format!("www-{addr}-{port}.log"))).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                PYTHON,
                "-c",
                WEB,
                addr,
                &port.to_string(),
            ])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("http.server");
        self.0.push(child);
        let url = format!("http://{addr}:{port}/");
        let up = wait_for(Duration::from_secs(10), || {
            let out = ns_run(ns, 3, &["curl", "-s", "-m", "1", &url]);
            (String::from_utf8_lossy(&out.stdout).trim() == body).then_some(())
        });
        assert!(
            up.is_some(),
            "test server {url} never answered: {:?} {}",
            ns_run(ns, 3, &["curl", "-sv", "-m", "1", &url]),
            fs::read_to_string(dir.join(format!("www-{addr}-{port}.log"))).unwrap_or_default()
        );
    }
}

/// The internet stand-in: a namespace joined to the daemon's by a veth
/// pair, 198.18.0.1 on the far side, the daemon's default route to it.
fn internet(f: &Fcm) -> Netns {
    let inet = Netns::new("inet");
    let d = &f.ns;
    ns_ok(
        d,
        &[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &inet.name,
        ],
    );
    ns_ok(d, &["ip", "addr", "add", "198.18.0.2/24", "dev", "up0"]);
    ns_ok(d, &["ip", "link", "set", "up0", "up"]);
    ns_ok(d, &["ip", "route", "add", "default", "via", INTERNET]);
    ns_ok(
        &inet,
        &["ip", "addr", "add", "198.18.0.1/24", "dev", "eth0"],
    );
    ns_ok(&inet, &["ip", "link", "set", "eth0", "up"]);
    // A metadata service, as clouds have, on an address of the host (no
    // dummy interfaces on these kernels: loopback holds it).
    ns_ok(
        d,
        &["ip", "addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
    );
    inet
}

/// The daemon config: Caddy (from the harness), the API and the stream on
/// every address (so that, without the policy, a guest reaches both; they
/// speak TLS then), and the network policy given.
fn config(caddy_cfg: &Path, dir: &Path, file: &str, policy: serde_json::Value) -> PathBuf {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(caddy_cfg).expect("config")).expect("json");
    cfg["listen"] = "0.0.0.0:7777".into();
    cfg["stream_listen"] = "0.0.0.0:7778".into();
    cfg["stop_timeout_secs"] = 5.into();
    cfg["network_policy"] = policy;
    let p = dir.join(file);
    fs::write(&p, cfg.to_string()).expect("write config");
    p
}

struct Vm {
    name: String,
    ip: String,
    mac: String,
    tap: String,
    url: String,
}

impl Vm {
    fn of(v: &serde_json::Value) -> Self {
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{k} in {v}"))
                .to_owned()
        };
        Self {
            name: s("name"),
            ip: s("ip"),
            mac: s("mac"),
            tap: s("tap"),
            url: s("url"),
        }
    }
}

/// What A's probes found, by name.
fn probe(f: &Fcm, a: &Vm, targets: &[(&str, String)]) -> BTreeMap<String, String> {
    let args: Vec<String> = targets.iter().map(|(n, t)| format!("{n}={t}")).collect();
    let out = guest_ok(
        f,
        &a.name,
        &format!("python3 /root/probe.py {}", args.join(" ")),
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The MAC the daemon's namespace has for `ip` on the bridge ("" if none).
fn host_neigh(f: &Fcm, ip: &str) -> String {
    let out = ns_ok(&f.ns, &["ip", "neigh", "show", ip, "dev", "fcm0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Starts a sniffer on the bridge for marker frames from `src`.
fn sniffer(f: &Fcm, src: &str, secs: u32) -> Child {
    let c =
        f.ns.cmd(PYTHON)
            .args(["-c", SNIFF, "fcm0", src, &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sniffer");
    // Let it bind before anything is sent.
    std::thread::sleep(Duration::from_millis(700));
    c
}

fn sniffed(c: Child) -> String {
    let pid = c.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => String::from_utf8_lossy(&out.expect("sniffer").stdout)
            .trim()
            .to_owned(),
        Err(_) => {
            common::kill_pid(pid);
            panic!("the sniffer did not end");
        }
    }
}

/// Forgets what the host learnt of the guests (neighbours, bridge FDB), so
/// a poisoned entry from a positive control does not linger.
fn forget_neighbours(f: &Fcm) {
    ns_ok(&f.ns, &["ip", "neigh", "flush", "dev", "fcm0"]);
    ns_ok(
        &f.ns,
        &["ip", "link", "set", "fcm0", "type", "bridge", "fdb_flush"],
    );
}

/// A claims B's address: adds it to eth0, announces it by ARP, sends IP
/// from it. Returns (the host's MAC for B afterwards, what a sniffer on the
/// bridge saw of A's packets from B's address).
fn claim_address(f: &Fcm, a: &Vm, b: &Vm) -> (String, String) {
    // The host knows the real B, and the ARP lock time has passed.
    assert!(guest(f, &b.name, "true").0, "host cannot reach B");
    std::thread::sleep(Duration::from_millis(1100));
    let gw_mac = ns_ok(&f.ns, &["cat", "/sys/class/net/fcm0/address"]);
    let sniff = sniffer(f, &b.ip, 8);
    guest_ok(
        f,
        &a.name,
        &format!(
            "ip addr add {bip}/32 dev eth0 && python3 /root/frames.py arp {bip} 4 && \
             python3 /root/frames.py udp {bip} {GATEWAY} {gw} 4; \
             ip addr del {bip}/32 dev eth0",
            bip = b.ip,
            gw = gw_mac.trim()
        ),
    );
    let seen = sniffed(sniff);
    (host_neigh(f, &b.ip), seen)
}

/// A takes B's MAC on its interface for a few seconds (in the background,
/// since A's SSH session cannot survive it) and sends IP with it. Returns
/// (whether the bridge ever learnt B's MAC on A's port, the sniffer's
/// verdict on A's packets, whether the host reached B meanwhile).
fn claim_mac(f: &Fcm, a: &Vm, b: &Vm) -> (bool, String, bool) {
    let gw_mac = ns_ok(&f.ns, &["cat", "/sys/class/net/fcm0/address"]);
    let sniff = sniffer(f, &a.ip, 12);
    guest_ok(
        f,
        &a.name,
        &format!(
            "setsid sh -c 'ip link set eth0 address {bmac} && \
             python3 /root/frames.py udp {aip} {GATEWAY} {gw} 20; \
             ip link set eth0 address {amac}' </dev/null >/tmp/claim-mac.log 2>&1 &",
            bmac = b.mac,
            amac = a.mac,
            aip = a.ip,
            gw = gw_mac.trim()
        ),
    );
    let mut learnt_on_a = false;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let fdb = ns_ok(&f.ns, &["bridge", "fdb", "show", "br", "fcm0"]);
        learnt_on_a |= fdb
            .lines()
            .any(|l| l.starts_with(&b.mac) && l.contains(&a.tap));
        std::thread::sleep(Duration::from_millis(300));
    }
    let b_reached = guest(f, &b.name, "hostname").1.trim() == b.name;
    let seen = sniffed(sniff);
    // A has its own MAC back once the job ends. Without the policy the
    // host may meanwhile have learnt B's MAC for A: then it must forget.
    let a_back = || {
        wait_for(Duration::from_secs(15), || {
            (guest(f, &a.name, "cat /sys/class/net/eth0/address")
                .1
                .trim()
                == a.mac)
                .then_some(())
        })
    };
    if a_back().is_none() {
        forget_neighbours(f);
        assert!(a_back().is_some(), "A never got its MAC back");
    }
    (learnt_on_a, seen, b_reached)
}

/// A fetches the internet stand-in's page.
fn internet_page(f: &Fcm, a: &Vm, when: &str) {
    let page = guest_ok(f, &a.name, &format!("curl -s -m 5 http://{INTERNET}/"));
    assert_eq!(
        page.trim(),
        "internet",
        "{when}: A cannot fetch from the internet"
    );
}

/// The host reaches A by SSH and through its URL (Caddy to port 8000).
fn host_reaches_a(f: &Fcm, a: &Vm, when: &str) {
    let (ok, name) = guest(f, &a.name, "hostname");
    assert!(ok && name.trim() == a.name, "{when}: no SSH to A: {name}");
    let (status, page) = fetch(f, &a.url);
    assert!(
        status == 200 && page.contains(&a.name),
        "{when}: A's URL served {status} {page}"
    );
}

fn isolated(f: &Fcm, tap: &str) -> bool {
    ns_ok(&f.ns, &["ip", "-d", "link", "show", tap]).contains("isolated on")
}

#[test]
fn a_hostile_guest_reaches_the_internet_and_nothing_of_ours() {
    if !e2e_ready() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("fcm-hostile-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (caddyfile, _sites, caddy_cfg) = write_caddy_config(tmp.path());
    let strict = config(&caddy_cfg, tmp.path(), "strict.json", serde_json::json!({}));
    let mut f = Fcm::start("hostile", &["--config", &strict.display().to_string()]);
    let inet = internet(&f);
    let mut servers = Children::default();
    servers.web(&inet, tmp.path(), INTERNET, 80, "internet");
    servers.web(
        &f.ns,
        tmp.path(),
        GATEWAY,
        HOST_SERVICE_PORT,
        "host service",
    );
    servers.web(&f.ns, tmp.path(), METADATA, 80, "metadata");
    let _caddy = start_caddy(&f, &caddyfile, tmp.path());

    // Two guests, booted under the policy.
    let a = Vm::of(&create(&f, "hostile-a"));
    let b = Vm::of(&create(&f, "hostile-b"));
    for v in [&a, &b] {
        let ok = wait_for(Duration::from_secs(30), || {
            guest(
                &f,
                &v.name,
                "curl -s -m 2 -o /dev/null http://127.0.0.1:8000/",
            )
            .0
            .then_some(())
        });
        assert!(ok.is_some(), "{} does not serve its page", v.name);
    }
    put_script(&f, &a.name, "probe.py", PROBE);
    put_script(&f, &a.name, "frames.py", FRAMES);
    let targets = [
        ("api", format!("{GATEWAY}:7777")),
        ("stream", format!("{GATEWAY}:7778")),
        ("service", format!("{GATEWAY}:{HOST_SERVICE_PORT}")),
        ("metadata", format!("{METADATA}:80")),
        ("b_ssh", format!("{}:22", b.ip)),
        ("b_web", format!("{}:8000", b.ip)),
        ("internet", format!("{INTERNET}:80")),
    ];
    let blocked = |r: &BTreeMap<String, String>, when: &str| {
        for (name, target) in &targets[..6] {
            let got = r.get(*name).map(String::as_str).unwrap_or("missing");
            assert_ne!(
                got, "open",
                "{when}: guest A reached {name} ({target}): {r:?}"
            );
            assert_ne!(got, "missing", "{when}: no probe result for {name}: {r:?}");
        }
        assert_eq!(r["internet"], "open", "{when}: A lost the internet: {r:?}");
    };
    // 1. VMs created under the policy: blocked from the first packet.
    let r = probe(&f, &a, &targets);
    eprintln!(
        "[{:.0} s] created under the policy: {r:?}",
        started.elapsed().as_secs_f32()
    );
    blocked(&r, "after create");
    internet_page(&f, &a, "after create");
    host_reaches_a(&f, &a, "after create");

    // 2. Positive controls: with only NAT (what fcm installed before the
    // policy) and no port isolation, every probe gets through and A's
    // claims work.
    let d = &f.ns;
    let out = d
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(PLAIN_NAT.as_bytes())?;
            c.wait()
        })
        .expect("nft");
    assert!(out.success(), "could not load the plain NAT table");
    for tap in [&a.tap, &b.tap] {
        ns_ok(
            d,
            &[
                "ip",
                "link",
                "set",
                "dev",
                tap,
                "type",
                "bridge_slave",
                "isolated",
                "off",
            ],
        );
    }
    let r = probe(&f, &a, &targets);
    eprintln!(
        "[{:.0} s] without the policy: {r:?}",
        started.elapsed().as_secs_f32()
    );
    for (name, target) in &targets {
        assert_eq!(
            r[*name], "open",
            "without the policy, {name} ({target}) is not reachable: the probe proves nothing"
        );
    }
    let (neigh, seen) = claim_address(&f, &a, &b);
    assert_eq!(
        neigh, a.mac,
        "without the policy, A's ARP claim did not take: the check proves nothing"
    );
    assert!(
        seen.starts_with("seen"),
        "without the policy, A's packets from B's address were not seen: {seen}"
    );
    forget_neighbours(&f);
    let (learnt, seen, _) = claim_mac(&f, &a, &b);
    assert!(
        learnt,
        "without the policy, the bridge never learnt B's MAC on A's port"
    );
    assert_eq!(
        seen,
        format!("seen {}", b.mac),
        "without the policy, A's frames with B's MAC were not seen"
    );
    forget_neighbours(&f);

    eprintln!(
        "[{:.0} s] positive controls done",
        started.elapsed().as_secs_f32()
    );

    // 3. The daemon restarts (VMs keep running): the policy is back, with
    // both VMs' rules and their ports isolated.
    f.kill_daemon();
    f.spawn_daemon();
    let tables = ns_ok(&f.ns, &["nft", "list", "ruleset"]);
    for tap in [&a.tap, &b.tap] {
        assert!(
            tables.contains(&format!("from_{tap}")),
            "no rules for {tap}: {tables}"
        );
        assert!(isolated(&f, tap), "{tap} is not isolated after the restart");
    }
    assert!(
        !tables.contains("table ip fcm"),
        "the plain NAT table survived: {tables}"
    );
    let r = probe(&f, &a, &targets);
    eprintln!(
        "[{:.0} s] after a daemon restart: {r:?}",
        started.elapsed().as_secs_f32()
    );
    blocked(&r, "after a restart");
    internet_page(&f, &a, "after a restart");
    host_reaches_a(&f, &a, "after a restart");
    // A claims B's address: the host's ARP entry stays B's, nothing from
    // B's address gets past A's port, and the host reaches the real B.
    let (neigh, seen) = claim_address(&f, &a, &b);
    assert_eq!(neigh, b.mac, "A's ARP claim for B's address took");
    assert_eq!(seen, "none", "A's packets from B's address passed");
    assert_eq!(guest_ok(&f, &b.name, "hostname").trim(), b.name);
    // A claims B's MAC: the bridge never learns it on A's port, the
    // frames are dropped, and the host reaches B throughout.
    let (learnt, seen, b_reached) = claim_mac(&f, &a, &b);
    assert!(!learnt, "the bridge learnt B's MAC on A's port");
    assert_eq!(seen, "none", "A's frames with B's MAC passed");
    assert!(b_reached, "the host lost B while A claimed its MAC");
    assert_eq!(
        host_neigh(&f, &b.ip),
        b.mac,
        "the host's ARP entry for B changed"
    );
    assert_eq!(guest_ok(&f, &b.name, "hostname").trim(), b.name);
    internet_page(&f, &a, "after the claims");
    host_reaches_a(&f, &a, "after the claims");

    eprintln!("[{:.0} s] claims dropped", started.elapsed().as_secs_f32());

    // 4. The opt-in: guests may talk to each other; the host stays closed.
    let open = config(
        &caddy_cfg,
        tmp.path(),
        "guest-to-guest.json",
        serde_json::json!({ "allow_guest_to_guest": true }),
    );
    f.kill_daemon();
    f.extra_args = vec!["--config".into(), open.display().to_string()];
    f.spawn_daemon();
    assert!(
        !isolated(&f, &a.tap),
        "allow_guest_to_guest left A isolated"
    );
    let r = probe(&f, &a, &targets);
    eprintln!(
        "[{:.0} s] with allow_guest_to_guest: {r:?}",
        started.elapsed().as_secs_f32()
    );
    assert_eq!(
        r["b_web"], "open",
        "allow_guest_to_guest: A cannot reach B's port 8000"
    );
    assert_eq!(
        r["b_ssh"], "open",
        "allow_guest_to_guest: A cannot reach B's SSH"
    );
    for name in ["api", "stream", "service", "metadata"] {
        assert_ne!(r[name], "open", "allow_guest_to_guest opened {name}: {r:?}");
    }
    let page = guest_ok(&f, &a.name, &format!("curl -s -m 5 http://{}:8000/", b.ip));
    assert!(page.contains(&b.name), "A got another page from B: {page}");

    drop(servers);
    eprintln!(
        "hostile-guest test took {:.1} s",
        started.elapsed().as_secs_f32()
    );
}
