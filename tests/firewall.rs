//! The network policy for real, in network namespaces (no VM needed): a
//! "host" namespace with the bridge fcm0, two "guests" joined to it by veth
//! pairs whose host ends are named like taps, and an "internet" namespace
//! behind the host. The policy is installed with `fcm::firewall` from a
//! thread that has entered the host namespace, and every check is what a
//! guest or the host would observe: a TCP connection answered or not, the
//! source address a server sees, the host's ARP and bridge tables.
//!
//! Needs root, `ip`, `nft`, `curl` and `python3`. Without them the test
//! fails, or is skipped with a message when FCM_E2E_OPTIONAL=1. All traffic
//! stays inside the namespaces the test makes; they and every process it
//! starts are removed on drop, also when an assertion fails.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fcm::host::firewall::{self, NetworkPolicy, Params, VmPort};
use fcm::host::network::mac_for;

const PYTHON: &str = "/usr/bin/python3";
const GW: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const IP_A: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 50);
const IP_B: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 51);
const TAP_A: &str = "tap_aaaaaaaa";
const TAP_B: &str = "tap_bbbbbbbb";
/// Addresses in the "internet" namespace, in each denied range.
const FAR_PRIVATE: [&str; 4] = ["10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1"];
const FAR_LINK_LOCAL: &str = "169.254.1.1";

/// A TCP server that answers any request with an HTTP response whose body is
/// `<name> <peer address>`. argv: address port name.
const SERVER: &str = r#"
import socket, sys
addr, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(16)
while True:
    c, peer = s.accept()
    try:
        c.settimeout(2)
        c.recv(4096)
        body = ("%s %s" % (name, peer[0])).encode()
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    c.close()
"#;

/// Sends raw frames out of eth0. argv: ethertype(hex) count then, for ARP
/// (0806), a reply claiming sender MAC and IP: sha spa.
const SEND_FRAMES: &str = r#"
import socket, sys, time
etype, count = int(sys.argv[1], 16), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
own = s.getsockname()[4]
if etype == 0x0806:
    sha = bytes.fromhex(sys.argv[3].replace(":", ""))
    spa = socket.inet_aton(sys.argv[4])
    payload = bytes.fromhex("0001080006040002") + sha + spa + b"\xff" * 6 + spa
elif etype == 0x86DD:
    # A well-formed packet (the bridge drops malformed IPv6): to ff02::1,
    # "no next header", the marker as its payload.
    src = bytes.fromhex("fe80" + "00" * 13 + "50")
    dst = bytes.fromhex("ff02" + "00" * 13 + "01")
    payload = bytes.fromhex("60000000") + (8).to_bytes(2, "big") + bytes([59, 64]) + src + dst + b"fcm-test"
else:
    payload = b"fcm-test" * 8
dst_mac = bytes.fromhex("333300000001") if etype == 0x86DD else b"\xff" * 6
frame = dst_mac + own + etype.to_bytes(2, "big") + payload
for _ in range(count):
    s.send(frame)
    time.sleep(0.2)
"#;

/// Waits up to 3 s for a frame from [`SEND_FRAMES`] of the given ethertype
/// on an interface and prints `seen` or `none`. argv: interface ethertype(hex).
const SNIFF: &str = r#"
import socket, sys
etype = int(sys.argv[2], 16)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(etype))
s.bind((sys.argv[1], etype))
s.settimeout(3)
try:
    while b"fcm-test" not in s.recv(2048):
        pass
    print("seen", flush=True)
except socket.timeout:
    print("none", flush=True)
"#;

/// Runs a program with a deadline (`timeout -k 1`), never through a shell.
fn run(timeout_secs: u32, argv: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-k", "1", &timeout_secs.to_string()])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("spawn timeout")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether the test can run here; prints why not (project convention:
/// missing pieces fail unless FCM_E2E_OPTIONAL=1).
fn ready() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_owned());
    }
    for p in ["ip", "nft", "curl", "timeout", PYTHON] {
        if !have(p) {
            missing.push(p.to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("firewall test needs {}", missing.join(", "));
    if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
        eprintln!("skipping: {msg}");
        false
    } else {
        panic!("{msg}");
    }
}

/// The namespaces and processes of one test run; all removed on drop.
struct Lab {
    host: String,
    a: String,
    b: String,
    inet: String,
    children: Vec<Child>,
}

impl Lab {
    fn ns_names() -> [String; 4] {
        let pid = std::process::id();
        ["h", "a", "b", "i"].map(|r| format!("fcmfw-{r}-{pid}"))
    }

    fn new() -> Self {
        let [host, a, b, inet] = Self::ns_names();
        for ns in [&host, &a, &b, &inet] {
            // Left over by a killed earlier run with the same pid: rare.
            let _ = run(10, &["ip", "netns", "del", ns]);
        }
        let mut lab = Self {
            host,
            a,
            b,
            inet,
            children: Vec::new(),
        };
        for ns in [&lab.host, &lab.a, &lab.b, &lab.inet] {
            ok(run(10, &["ip", "netns", "add", ns]));
        }
        for ns in [&lab.host, &lab.a, &lab.b, &lab.inet] {
            lab.ok(ns, &["ip", "link", "set", "lo", "up"]);
        }
        let h = lab.host.clone();
        // The host: bridge with the gateway, forwarding, an uplink.
        for argv in [
            &["ip", "link", "add", "fcm0", "type", "bridge"][..],
            &["ip", "addr", "add", "172.16.0.1/24", "dev", "fcm0"],
            &["ip", "addr", "add", "fd00::1/64", "dev", "fcm0", "nodad"],
            &["ip", "link", "set", "fcm0", "up"],
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            // A plain host: bridged frames skip the IP hooks (see below for
            // hosts where br_netfilter is on, as with Docker).
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=0"],
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-arptables=0"],
            &["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"],
            &[
                "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns",
                &lab.inet,
            ],
            &["ip", "addr", "add", "198.18.0.2/24", "dev", "up0"],
            &["ip", "link", "set", "up0", "up"],
            &["ip", "route", "add", "default", "via", "198.18.0.1"],
        ] {
            lab.ok(&h, argv);
        }
        let i = lab.inet.clone();
        lab.ok(&i, &["ip", "addr", "add", "198.18.0.1/24", "dev", "eth0"]);
        lab.ok(&i, &["ip", "link", "set", "eth0", "up"]);
        // Beyond the host (its default route): private and link-local
        // destinations, served by the same "internet" server.
        for addr in FAR_PRIVATE.iter().chain([&FAR_LINK_LOCAL]) {
            lab.ok(
                &i,
                &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
            );
        }
        // The guests: the host end of each veth is the "tap".
        for (ns, tap, ip, v6) in [
            (lab.a.clone(), TAP_A, IP_A, "fd00::50/64"),
            (lab.b.clone(), TAP_B, IP_B, "fd00::51/64"),
        ] {
            lab.ok(
                &h,
                &[
                    "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            lab.ok(&h, &["ip", "link", "set", tap, "master", "fcm0", "up"]);
            let addr = format!("{ip}/24");
            for argv in [
                &["ip", "link", "set", "eth0", "address", &mac_for(ip)][..],
                &["ip", "addr", "add", &addr, "dev", "eth0"],
                &["ip", "addr", "add", v6, "dev", "eth0", "nodad"],
                &["ip", "link", "set", "eth0", "up"],
                &["ip", "route", "add", "default", "via", "172.16.0.1"],
            ] {
                lab.ok(&ns, argv);
            }
        }
        // Servers: daemon-like ports on the host, the metadata stand-in,
        // the internet, a service in B and an "SSH" port in A.
        lab.serve(&h, "0.0.0.0", 7778, "host-stream", "127.0.0.1");
        lab.serve(&h, "172.16.0.1", 7777, "host-api", "172.16.0.1");
        lab.serve(&h, "172.16.0.1", 8080, "host-extra", "172.16.0.1");
        lab.serve(&h, "fd00::1", 7780, "host-v6", "[fd00::1]");
        lab.serve(&h, "169.254.169.254", 80, "metadata", "169.254.169.254");
        lab.serve(&i, "0.0.0.0", 80, "internet", "198.18.0.1");
        let (a, b) = (lab.a.clone(), lab.b.clone());
        lab.serve(&b, "172.16.0.51", 8000, "B", "172.16.0.51");
        lab.serve(&a, "172.16.0.50", 22, "A", "172.16.0.50");
        lab
    }

    /// `argv` inside `ns`, with a deadline.
    fn exec(&self, ns: &str, secs: u32, argv: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        run(secs, &full)
    }

    fn ok(&self, ns: &str, argv: &[&str]) -> String {
        let out = self.exec(ns, 10, argv);
        assert!(
            out.status.success(),
            "{ns}: {argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a server and waits until it answers from its own namespace.
    fn serve(&mut self, ns: &str, addr: &str, port: u16, name: &str, local: &str) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, PYTHON, "-c", SERVER, addr])
            .arg(port.to_string())
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        self.children.push(child);
        let url = format!("http://{local}:{port}/");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.get(ns, &url).is_none() {
            assert!(
                Instant::now() < deadline,
                "{name} server in {ns} never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The body `url` answers with from inside `ns`, or None when the
    /// connection is refused or times out (1 s to connect). Proxies are
    /// never used.
    fn get(&self, ns: &str, url: &str) -> Option<String> {
        let out = self.exec(
            ns,
            5,
            &[
                "curl",
                "-sf",
                "--noproxy",
                "*",
                "--connect-timeout",
                "1",
                "--max-time",
                "2",
                url,
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether a frame of `etype` sent from guest A reaches the bridge.
    fn frame_reaches_host(&self, etype: &str) -> bool {
        let sniffer = Command::new("ip")
            .args([
                "netns", "exec", &self.host, PYTHON, "-c", SNIFF, "fcm0", etype,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sniffer");
        std::thread::sleep(Duration::from_millis(300));
        self.ok(&self.a, &[PYTHON, "-c", SEND_FRAMES, etype, "8"]);
        let out = sniffer.wait_with_output().expect("sniffer");
        String::from_utf8_lossy(&out.stdout).trim() == "seen"
    }

    /// Guest A sends ARP replies claiming `ip` is at `mac`.
    fn arp_claim(&self, mac: &str, ip: Ipv4Addr) {
        self.ok(
            &self.a,
            &[PYTHON, "-c", SEND_FRAMES, "0806", "3", mac, &ip.to_string()],
        );
    }

    /// The MAC the host has for `ip` ("" if none).
    fn host_neigh(&self, ip: Ipv4Addr) -> String {
        let out = self.ok(
            &self.host,
            &["ip", "neigh", "show", &ip.to_string(), "dev", "fcm0"],
        );
        out.split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether bridged IPv4/IPv6 frames also pass the host's IP hooks.
    fn set_br_netfilter(&self, on: bool) {
        let v = u8::from(on);
        for proto in ["iptables", "ip6tables"] {
            let kv = format!("net.bridge.bridge-nf-call-{proto}={v}");
            self.ok(&self.host, &["sysctl", "-qw", &kv]);
        }
    }

    /// Runs `f` on a thread inside the host namespace, as the daemon would.
    fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.host);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).expect("open netns");
                // SAFETY: setns on a valid namespace fd only changes this
                // thread's network namespace; the thread ends with `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in host namespace")
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.host, &self.a, &self.b, &self.inet] {
            let _ = run(10, &["ip", "netns", "del", ns]);
        }
    }
}

fn ok(out: Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn params(policy: NetworkPolicy) -> Params {
    Params::new("fcm", "fcm0", GW, 24, policy).expect("params")
}

#[test]
fn policy_holds_in_namespaces() {
    if !ready() {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let (a, b, h, i) = (&lab.a, &lab.b, &lab.host, &lab.inet);
    let (mac_a, mac_b) = (mac_for(IP_A), mac_for(IP_B));
    let internet = "http://198.18.0.1/";
    let b_svc = "http://172.16.0.51:8000/";

    // Without the policy everything below is reachable (so the probes
    // work), except the internet: there is no NAT yet.
    assert_eq!(
        lab.get(a, "http://172.16.0.1:7778/").as_deref(),
        Some("host-stream 172.16.0.50")
    );
    assert!(lab.get(a, "http://169.254.169.254/").is_some());
    assert_eq!(lab.get(a, b_svc).as_deref(), Some("B 172.16.0.50"));
    assert!(lab.get(a, "http://[fd00::1]:7780/").is_some());
    assert!(lab.get(a, internet).is_none(), "reachable without NAT?");
    assert!(lab.frame_reaches_host("88b5"));
    assert!(lab.frame_reaches_host("86dd"));
    // ... and an ARP claim from A rewrites the host's entry for B.
    assert_eq!(lab.get(h, b_svc).as_deref(), Some("B 172.16.0.1"));
    std::thread::sleep(Duration::from_millis(1100)); // neighbour locktime
    lab.arp_claim(&mac_a, IP_B);
    assert_eq!(lab.host_neigh(IP_B), mac_a, "ARP probe does not work");
    lab.ok(h, &["ip", "neigh", "flush", "dev", "fcm0"]);

    // Install the default policy with both VMs, as a starting daemon would.
    let p = params(NetworkPolicy::default());
    let vms = [
        VmPort::new(&p, TAP_A, &mac_a, IP_A).expect("vm a"),
        VmPort::new(&p, TAP_B, &mac_b, IP_B).expect("vm b"),
    ];
    lab.in_host(|| {
        firewall::apply(&p, &vms).expect("apply");
        firewall::isolate_port(&p, TAP_A).expect("isolate a");
        firewall::isolate_port(&p, TAP_B).expect("isolate b");
    });
    let listed = lab.in_host(|| firewall::list(&p).expect("list"));
    assert!(listed.contains("from_tap_aaaaaaaa") && listed.contains("from_tap_bbbbbbbb"));

    // Out to the internet, through NAT.
    assert_eq!(lab.get(a, internet).as_deref(), Some("internet 198.18.0.2"));
    // Nothing on the host: daemon ports on the gateway, on another host
    // address, IPv6, and the metadata address.
    for url in [
        "http://172.16.0.1:7778/",
        "http://172.16.0.1:7777/",
        "http://172.16.0.1:8080/",
        "http://198.18.0.2:7778/",
        "http://169.254.169.254/",
        "http://[fd00::1]:7780/",
    ] {
        assert_eq!(lab.get(a, url), None, "guest reached {url}");
    }
    // Nor private or link-local networks beyond the host, which the host
    // itself reaches.
    for addr in FAR_PRIVATE.iter().chain([&FAR_LINK_LOCAL]) {
        let url = format!("http://{addr}/");
        assert_eq!(lab.get(h, &url).as_deref(), Some("internet 198.18.0.2"));
        assert_eq!(lab.get(a, &url), None, "guest reached {url}");
    }
    // The input rules leave the host's other interfaces alone.
    assert_eq!(
        lab.get(i, "http://198.18.0.2:7778/").as_deref(),
        Some("host-stream 198.18.0.1")
    );
    // The host reaches the guests, and their replies come back.
    assert_eq!(
        lab.get(h, "http://172.16.0.50:22/").as_deref(),
        Some("A 172.16.0.1")
    );
    assert_eq!(lab.get(h, b_svc).as_deref(), Some("B 172.16.0.1"));

    // Guest to guest: not bridged (port isolation and nftables each on
    // their own), not routed through the gateway either.
    assert_eq!(lab.get(a, b_svc), None, "A reached B over the bridge");
    for tap in [TAP_A, TAP_B] {
        lab.ok(
            h,
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
    assert_eq!(
        lab.get(a, b_svc),
        None,
        "nftables alone does not stop A -> B"
    );
    lab.set_br_netfilter(true);
    assert_eq!(lab.get(a, b_svc), None, "A reached B with br_netfilter on");
    lab.set_br_netfilter(false);
    lab.in_host(|| {
        firewall::isolate_port(&p, TAP_A).expect("isolate a");
        firewall::isolate_port(&p, TAP_B).expect("isolate b");
    });
    let details = lab.ok(h, &["ip", "-d", "link", "show", TAP_A]);
    assert!(details.contains("isolated on"), "{details}");
    lab.ok(
        a,
        &["ip", "route", "add", "172.16.0.51/32", "via", "172.16.0.1"],
    );
    assert_eq!(lab.get(a, b_svc), None, "A reached B through the gateway");
    lab.ok(a, &["ip", "route", "del", "172.16.0.51/32"]);

    // Anti-spoofing. Frames that are neither IPv4 nor ARP (IPv6 included)
    // never arrive.
    assert!(!lab.frame_reaches_host("88b5"), "odd ethertype passed");
    assert!(!lab.frame_reaches_host("86dd"), "IPv6 passed the bridge");
    // ARP claims for B's address, or with B's MAC as sender, are dropped.
    assert_eq!(lab.get(h, b_svc).as_deref(), Some("B 172.16.0.1"));
    assert_eq!(
        lab.get(h, "http://172.16.0.50:22/").as_deref(),
        Some("A 172.16.0.1")
    );
    std::thread::sleep(Duration::from_millis(1100));
    lab.arp_claim(&mac_a, IP_B);
    lab.arp_claim(&mac_b, IP_A);
    assert_eq!(lab.host_neigh(IP_B), mac_b);
    assert_eq!(lab.host_neigh(IP_A), mac_a);
    // A takes B's address: its packets go nowhere, the host still reaches B.
    lab.ok(a, &["ip", "addr", "del", "172.16.0.50/24", "dev", "eth0"]);
    lab.ok(a, &["ip", "addr", "add", "172.16.0.51/24", "dev", "eth0"]);
    lab.ok(
        a,
        &["ip", "route", "replace", "default", "via", "172.16.0.1"],
    );
    assert_eq!(lab.get(a, internet), None, "A got out with B's address");
    lab.ok(h, &["ip", "neigh", "flush", "dev", "fcm0"]);
    assert_eq!(lab.get(h, b_svc).as_deref(), Some("B 172.16.0.1"));
    assert_eq!(lab.host_neigh(IP_B), mac_b);
    lab.ok(a, &["ip", "addr", "del", "172.16.0.51/24", "dev", "eth0"]);
    lab.ok(a, &["ip", "addr", "add", "172.16.0.50/24", "dev", "eth0"]);
    lab.ok(
        a,
        &["ip", "route", "replace", "default", "via", "172.16.0.1"],
    );
    // A takes B's MAC (and knows the gateway's, so it sends IP at once):
    // dropped before the bridge learns it.
    let gw_mac = lab.ok(h, &["cat", "/sys/class/net/fcm0/address"]);
    lab.ok(a, &["ip", "link", "set", "eth0", "address", &mac_b]);
    lab.ok(
        a,
        &[
            "ip",
            "neigh",
            "replace",
            "172.16.0.1",
            "lladdr",
            gw_mac.trim(),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    assert_eq!(lab.get(a, internet), None, "A got out with B's MAC");
    let fdb = lab.ok(h, &["bridge", "fdb", "show", "br", "fcm0"]);
    for line in fdb.lines().filter(|l| l.starts_with(&mac_b)) {
        assert!(
            line.contains(TAP_B),
            "bridge learnt B's MAC elsewhere: {line}"
        );
    }
    assert_eq!(lab.get(h, b_svc).as_deref(), Some("B 172.16.0.1"));
    lab.ok(a, &["ip", "link", "set", "eth0", "address", &mac_a]);
    lab.ok(a, &["ip", "neigh", "flush", "dev", "eth0", "nud", "all"]);
    assert_eq!(lab.get(a, internet).as_deref(), Some("internet 198.18.0.2"));

    // apply is idempotent; per-VM removal leaves nothing behind and cuts
    // the port off; adding the VM again restores it.
    lab.in_host(|| {
        let before = firewall::list(&p).expect("list");
        firewall::apply(&p, &vms).expect("apply again");
        assert_eq!(firewall::list(&p).expect("list"), before);
        firewall::remove_vm(&p, TAP_B).expect("remove b");
        firewall::remove_vm(&p, TAP_B).expect("remove b twice");
        firewall::remove_vm(&p, "tap_cccccccc").expect("remove unknown");
        let after = firewall::list(&p).expect("list");
        assert!(!after.contains(TAP_B), "{after}");
        assert!(after.contains("from_tap_aaaaaaaa"), "{after}");
    });
    lab.ok(h, &["ip", "neigh", "flush", "dev", "fcm0"]);
    assert_eq!(lab.get(h, b_svc), None, "a removed VM still talks");
    lab.in_host(|| {
        firewall::add_vm(&p, TAP_B, &mac_b, IP_B).expect("add b");
        firewall::add_vm(&p, TAP_B, &mac_b, IP_B).expect("add b twice");
    });
    assert_eq!(lab.get(h, b_svc).as_deref(), Some("B 172.16.0.1"));

    // The opt-ins: guest to guest, one host port, private ranges.
    let open = params(NetworkPolicy {
        allow_guest_to_guest: true,
        allow_host_ports: vec![8080],
        allow_private_ranges: true,
        ..Default::default()
    });
    lab.in_host(|| {
        firewall::apply(&open, &vms).expect("apply open");
        firewall::isolate_port(&open, TAP_A).expect("unisolate a");
        firewall::isolate_port(&open, TAP_B).expect("unisolate b");
    });
    assert_eq!(lab.get(a, b_svc).as_deref(), Some("B 172.16.0.50"));
    lab.set_br_netfilter(true);
    assert_eq!(lab.get(a, b_svc).as_deref(), Some("B 172.16.0.50"));
    lab.set_br_netfilter(false);
    assert_eq!(
        lab.get(a, "http://172.16.0.1:8080/").as_deref(),
        Some("host-extra 172.16.0.50")
    );
    assert_eq!(lab.get(a, "http://172.16.0.1:7778/"), None);
    assert_eq!(lab.get(a, "http://169.254.169.254/"), None);
    for addr in FAR_PRIVATE {
        let url = format!("http://{addr}/");
        assert_eq!(lab.get(a, &url).as_deref(), Some("internet 198.18.0.2"));
    }
    let url = format!("http://{FAR_LINK_LOCAL}/");
    assert_eq!(lab.get(a, &url), None, "link-local is never allowed");

    // Teardown leaves the namespace's ruleset empty.
    lab.in_host(|| firewall::teardown(&open).expect("teardown"));
    let rest = lab.ok(h, &["nft", "list", "ruleset"]);
    assert!(rest.trim().is_empty(), "{rest}");
    let _ = b;
    eprintln!(
        "firewall test took {:.1} s",
        started.elapsed().as_secs_f32()
    );
}
