//! Metrics, stats and events with a real daemon and a real QEMU guest
//! (TCG), one guest for every assertion: an idle VM against the same VM
//! running `yes`, guest memory, disk blocks after a write, tap counters
//! after traffic, a stopped VM, `fcm stats` and its JSON; `GET /metrics`
//! read by the Prometheus project's own text-format parser
//! (`prometheus_client`, installed pinned by scripts/test.sh) and its
//! read-only token; `GET /events` and `fcm events` through a stop and a
//! start, the `?vm=` filter, the subscriber cap.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fcm, e2e_ready, tcp_open, wait_for};
use serde_json::Value;

const VM: &str = "metered";

/// The venv scripts/test.sh installs prometheus_client into.
fn prom_python() -> PathBuf {
    let p = PathBuf::from("/var/lib/fcm-test-tools/prom-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: scripts/test.sh installs prometheus-client there",
        p.display()
    );
    p
}

fn stats(f: &Fcm, vm: &str) -> Value {
    let out = f.ok(&["stats", vm, "--json"]);
    serde_json::from_str(out.trim()).expect("stats --json")
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// The VMM's CPU use over `secs` seconds, in percent of one core, from
/// `usage_usec` (and the sampler's own `percent` readings meanwhile).
fn cpu_over(f: &Fcm, secs: u64) -> (f64, Vec<f64>) {
    let a = stats(f, VM);
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(1100));
        seen.push(stats(f, VM)["cpu"]["percent"].as_f64().expect("percent"));
    }
    let b = stats(f, VM);
    let used = u(&b, &["cpu", "usage_usec"]).saturating_sub(u(&a, &["cpu", "usage_usec"]));
    let wall = t.elapsed().as_micros() as f64;
    (used as f64 * 100.0 / wall, seen)
}

fn exec(f: &Fcm, argv: &[&str]) -> String {
    let mut args = vec!["exec", VM, "--"];
    args.extend_from_slice(argv);
    f.ok(&args)
}

/// A follower of the event stream: its lines, as they come.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Follower {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn follower");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().expect("lines").push(v);
                }
            }
        });
        let f = Self { child, lines };
        // The daemon's first line (a heartbeat) says it is subscribed.
        assert!(
            wait_for(Duration::from_secs(20), || (!f.lines().is_empty())
                .then_some(()))
            .is_some(),
            "the event stream said nothing"
        );
        f
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `(from, to)` of the state events, and the operations' ends.
fn states(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|e| e["type"] == "state")
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").to_string(),
                e["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn is_subsequence(want: &[(&str, &str)], got: &[(String, String)]) -> bool {
    let mut it = got.iter();
    want.iter().all(|(a, b)| it.any(|(x, y)| x == a && y == b))
}

#[test]
fn metrics_stats_and_events_of_a_real_guest() {
    if !e2e_ready() {
        eprintln!("skipping: the e2e prerequisites are missing (see tests/common)");
        return;
    }
    let python = prom_python();
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg_dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"caddy": {"enabled": false},
            "metrics": {"interval_secs": 1, "guest_interval_secs": 2, "guest_timeout_secs": 5}}"#,
    )
    .expect("config");
    let f = Fcm::start("metrics", &["--config", cfg.to_str().expect("utf-8")]);

    // Everything the daemon says, from before the VM exists.
    let mut all_cmd = f.cli();
    all_cmd.args(["events", "--json"]);
    let all = Follower::start(all_cmd);

    let vm = f.create(&["--name", VM]);
    let ip = vm["ip"].as_str().expect("ip").to_string();
    let mut one_cmd = f.cli();
    one_cmd.args(["events", "--json", "--vm", VM]);
    let one = Follower::start(one_cmd);

    // The guest's own view arrives through its agent.
    let s = wait_for(Duration::from_secs(90), || {
        let s = stats(&f, VM);
        (!s["memory"]["guest"].is_null() && !s["disk"]["guest"].is_null()).then_some(s)
    })
    .unwrap_or_else(|| panic!("no guest view in the stats: {}", stats(&f, VM)));
    eprintln!("stats of the booted VM: {s}");
    assert_eq!(s["name"], VM);
    assert_eq!(s["state"], "running");
    assert_eq!(u(&s, &["interval_ms"]), 1000);
    assert_eq!(u(&s, &["cpu", "vcpus"]), 1);
    let limit = u(&s, &["memory", "limit_bytes"]);
    assert_eq!(limit, 512 << 20);
    let rss = u(&s, &["memory", "vmm_rss_bytes"]);
    assert!(rss > 16 << 20 && rss < limit + (512 << 20), "RSS {rss}");
    let (gt, gu, ga) = (
        u(&s, &["memory", "guest", "total_bytes"]),
        u(&s, &["memory", "guest", "used_bytes"]),
        u(&s, &["memory", "guest", "available_bytes"]),
    );
    assert!(
        gt > limit * 7 / 10 && gt <= limit,
        "guest MemTotal {gt} is not near the VM's {limit}"
    );
    assert!(gu <= gt && ga <= gt && gu + ga == gt, "{s}");
    let dt = u(&s, &["disk", "guest", "total_bytes"]);
    assert!(u(&s, &["disk", "guest", "used_bytes"]) <= dt);
    assert!(u(&s, &["disk", "size_bytes"]) >= dt);

    // Idle, then busy with `yes` (started in the background through exec).
    let (idle, idle_seen) = cpu_over(&f, 8);
    exec(
        &f,
        &[
            "sh",
            "-c",
            "setsid -f sh -c 'exec yes > /dev/null' < /dev/null > /dev/null 2>&1",
        ],
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let o = f.run(&["exec", VM, "--", "pidof", "yes"]);
            o.status.success().then_some(())
        })
        .is_some(),
        "yes is not running in the guest"
    );
    let (busy, busy_seen) = cpu_over(&f, 8);
    eprintln!(
        "CPU: idle {idle:.1} % (sampler {idle_seen:?}), busy {busy:.1} % (sampler {busy_seen:?})"
    );
    assert!(idle < 30.0, "an idle VM used {idle:.1} % of a core");
    assert!(
        busy > 50.0 && busy > idle + 30.0,
        "a VM running yes used {busy:.1} % of a core (idle: {idle:.1} %)"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    assert!(
        median(busy_seen) > median(idle_seen) + 25.0,
        "the sampler's percent did not tell busy from idle"
    );
    exec(&f, &["sh", "-c", "kill $(pidof yes)"]);

    // 64 MiB written and synced in the guest: the disk file's blocks grow.
    let before = u(&stats(&f, VM), &["disk", "allocated_bytes"]);
    exec(
        &f,
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/root/fill bs=1M count=64 2>/dev/null && sync",
        ],
    );
    let grown = wait_for(Duration::from_secs(30), || {
        let a = u(&stats(&f, VM), &["disk", "allocated_bytes"]);
        (a >= before + (48 << 20)).then_some(a)
    });
    assert!(
        grown.is_some(),
        "disk allocated {before} -> {} after writing 64 MiB",
        u(&stats(&f, VM), &["disk", "allocated_bytes"])
    );

    // Traffic with the guest over its network: SSH connections, and
    // 256 KiB the guest sends over one. Its rx (the tap's tx) and tx grow.
    let n0 = stats(&f, VM)["net"].clone();
    for _ in 0..5 {
        assert!(tcp_open(&f.ns, &ip, 22), "the guest's SSH does not answer");
    }
    let o = f.ssh(VM, "head -c 262144 /dev/zero");
    assert!(
        o.status.success() && o.stdout.len() == 262_144,
        "fcm ssh: {o:?}"
    );
    let n1 = wait_for(Duration::from_secs(10), || {
        let n = stats(&f, VM)["net"].clone();
        (u(&n, &["tx_bytes"]) >= u(&n0, &["tx_bytes"]) + 262_144).then_some(n)
    })
    .unwrap_or_else(|| panic!("tx did not grow: {n0} -> {}", stats(&f, VM)["net"]));
    eprintln!("net: {n0} -> {n1}");
    assert!(
        u(&n1, &["tx_packets"]) >= u(&n0, &["tx_packets"]) + 20,
        "{n0} -> {n1}"
    );
    assert!(
        u(&n1, &["rx_packets"]) >= u(&n0, &["rx_packets"]) + 20,
        "{n0} -> {n1}"
    );
    assert!(
        u(&n1, &["rx_bytes"]) > u(&n0, &["rx_bytes"]) + 2000,
        "{n0} -> {n1}"
    );

    // `fcm stats`: the table, and the array of every VM.
    let table = f.ok(&["stats"]);
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    for col in ["NAME", "STATE", "CPU%", "MEM", "GUEST MEM", "DISK", "NET"] {
        assert!(head.contains(col), "no {col} in {head:?}");
    }
    assert!(
        lines.any(|l| l.starts_with(VM) && l.contains("running")),
        "{table}"
    );
    let every: Vec<Value> = serde_json::from_str(f.ok(&["stats", "--json"]).trim()).expect("json");
    assert_eq!(every.len(), 1);
    assert_eq!(every[0]["name"], VM);

    // `-w --json`: one line per refresh (every interval, 1 s here).
    let watched =
        f.ns.cmd("timeout")
            .arg("3.5")
            // `env ... fcm` of the CLI command, after `ip netns exec NS`.
            .args(f.cli().get_args().skip(3))
            .args(["stats", "-w", "--json"])
            .output()
            .expect("stats -w");
    let refreshes: Vec<Vec<Value>> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON array per line"))
        .collect();
    assert!(refreshes.len() >= 2, "{refreshes:?}");
    assert!(refreshes.iter().all(|r| r.len() == 1 && r[0]["name"] == VM));

    // /metrics through the Prometheus parser, with the API token.
    metrics_page(&f, &python);

    // Stop and start: the events say so, in order, and stats of a stopped VM.
    f.ok(&["stop", VM]);
    let st = stats(&f, VM);
    assert_eq!(st["state"], "stopped");
    assert_eq!(u(&st, &["cpu", "usage_usec"]), 0);
    assert_eq!(u(&st, &["memory", "vmm_rss_bytes"]), 0);
    assert!(st["memory"]["guest"].is_null() && st["disk"]["guest"].is_null());
    assert!(u(&st, &["disk", "allocated_bytes"]) > 64 << 20, "{st}");
    f.ok(&["start", VM]);
    let want = [
        ("running", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "starting"),
        ("starting", "running"),
    ];
    for (who, fol) in [("all", &all), ("--vm", &one)] {
        let seen = wait_for(Duration::from_secs(20), || {
            let l = fol.lines();
            is_subsequence(&want, &states(&l)).then_some(l)
        })
        .unwrap_or_else(|| panic!("{who}: states {:?}", states(&fol.lines())));
        for op in ["stop", "start"] {
            let end = seen
                .iter()
                .find(|e| e["type"] == "operation" && e["op"] == op && e["phase"] == "end")
                .unwrap_or_else(|| panic!("{who}: no end of {op}"));
            assert_eq!(end["ok"], true, "{end}");
            assert!(end["ms"].as_u64().is_some_and(|ms| ms > 0), "{end}");
            assert_eq!(end["vm"], VM);
        }
        let seqs: Vec<u64> = seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{who}: {seqs:?}");
    }
    let all_lines = all.lines();
    assert!(
        all_lines
            .iter()
            .any(|e| e["type"] == "created" && e["vm"] == VM),
        "no created event"
    );
    assert!(
        all_lines
            .iter()
            .any(|e| e["type"] == "operation" && e["op"] == "exec" && e["phase"] == "end"),
        "no exec operation"
    );

    // The filter: another VM's events do not reach `--vm`.
    let other = f.create(&["--name", "other-vm", "--no-wait"]);
    let other = other["name"].as_str().expect("name").to_string();
    assert!(
        wait_for(Duration::from_secs(10), || all
            .lines()
            .iter()
            .any(|e| e["vm"] == other.as_str())
            .then_some(()))
        .is_some()
    );
    assert!(
        one.lines()
            .iter()
            .all(|e| e["vm"].is_null() || e["vm"] == VM),
        "--vm {VM} got another VM's events"
    );
    f.ok(&["destroy", &other]);

    // Unknown VM: 404 in the API, the usual error in the CLI.
    let token = f.token();
    let (code, body) = f.api("GET", "/vms/nope/stats", Some(&token), None);
    assert_eq!(code, 404, "{body}");
    let (code, _) = f.api("GET", "/events?vm=nope", Some(&token), None);
    assert_eq!(code, 404);
    let o = f.run(&["stats", "nope"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope"), "{err}");

    subscriber_cap(&f);
}

/// `GET /metrics` parsed by prometheus_client; the families of
/// docs/metrics.md with the VM's label; the tokens.
fn metrics_page(f: &Fcm, python: &PathBuf) {
    let token = f.token();
    let (code, page) = f.api("GET", "/metrics", Some(&token), None);
    assert_eq!(code, 200, "{page}");
    let script = [
        "import sys, json",
        "from prometheus_client.parser import text_string_to_metric_families",
        "out = []",
        "for fam in text_string_to_metric_families(sys.stdin.read()):",
        "    for s in fam.samples:",
        "        out.append([fam.name, fam.type, s.name, s.labels, s.value])",
        "print(json.dumps(out))",
    ]
    .join("\n");
    let mut child = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(page.as_bytes()).expect("page");
    }
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, String, String, Value, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser output");
    let has = |name: &str, kind: &str, vm: Option<&str>| {
        samples.iter().any(|(_, k, n, labels, _)| {
            n == name && k == kind && vm.is_none_or(|v| labels["vm"] == v)
        })
    };
    for name in [
        "fcm_vm_cpu_seconds_total",
        "fcm_vm_network_receive_bytes_total",
        "fcm_vm_network_receive_packets_total",
        "fcm_vm_network_transmit_bytes_total",
        "fcm_vm_network_transmit_packets_total",
    ] {
        assert!(has(name, "counter", Some(VM)), "no counter {name} of {VM}");
    }
    for name in [
        "fcm_vm_info",
        "fcm_vm_vcpus",
        "fcm_vm_cpu_percent",
        "fcm_vm_memory_limit_bytes",
        "fcm_vm_vmm_rss_bytes",
        "fcm_vm_guest_memory_total_bytes",
        "fcm_vm_guest_memory_available_bytes",
        "fcm_vm_disk_size_bytes",
        "fcm_vm_disk_allocated_bytes",
        "fcm_vm_guest_disk_total_bytes",
        "fcm_vm_guest_disk_used_bytes",
    ] {
        assert!(has(name, "gauge", Some(VM)), "no gauge {name} of {VM}");
    }
    for (name, kind) in [
        ("fcm_vms", "gauge"),
        ("fcm_operations_total", "counter"),
        ("fcm_operation_duration_seconds_bucket", "histogram"),
        ("fcm_operation_duration_seconds_sum", "histogram"),
        ("fcm_operation_duration_seconds_count", "histogram"),
        ("fcm_events_total", "counter"),
        ("fcm_events_subscribers", "gauge"),
        ("fcm_metrics_sampler_passes_total", "counter"),
        ("fcm_metrics_sampler_seconds_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert!(has(name, kind, None), "no {kind} {name}");
    }
    let running = samples
        .iter()
        .find(|(_, _, n, l, _)| n == "fcm_vms" && l["state"] == "running")
        .map(|s| s.4);
    assert_eq!(running, Some(1.0));
    let creates = samples
        .iter()
        .find(|(_, _, n, l, _)| {
            n == "fcm_operations_total" && l["op"] == "create" && l["result"] == "ok"
        })
        .map(|s| s.4);
    assert_eq!(creates, Some(1.0));

    // The metrics token: /metrics only.
    let mt = std::fs::read_to_string(f.state().join(".metrics-token")).expect("metrics token");
    let mt = mt.trim();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.state().join(".metrics-token"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(f.api("GET", "/metrics", Some(mt), None).0, 200);
    assert_eq!(f.api("GET", "/vms", Some(mt), None).0, 401);
    assert_eq!(f.api("GET", "/stats", Some(mt), None).0, 401);
    assert_eq!(f.api("GET", "/metrics", Some("wrong-token"), None).0, 401);
    assert_eq!(f.api("GET", "/metrics", None, None).0, 401);
}

/// At most 16 followers: the 17th is refused with 503.
fn subscriber_cap(f: &Fcm) {
    let token = f.token();
    let subscribers = || -> u64 {
        let (_, page) = f.api("GET", "/metrics", Some(&token), None);
        page.lines()
            .find_map(|l| l.strip_prefix("fcm_events_subscribers "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut held = Vec::new();
    let auth = format!("Authorization: Bearer {token}");
    for _ in 0..32 {
        if subscribers() >= 16 {
            break;
        }
        let c =
            f.ns.cmd("curl")
                .args(["-sN", "--max-time", "120", "-o", "/dev/null", "-H", &auth])
                .arg("http://127.0.0.1:7777/events")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("curl");
        held.push(c);
        let want = (held.len() + 2).min(16) as u64;
        wait_for(Duration::from_secs(5), || {
            (subscribers() >= want).then_some(())
        });
    }
    assert_eq!(subscribers(), 16);
    let (code, body) = f.api("GET", "/events", Some(&token), None);
    for mut c in held {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("follow the events"), "{body}");
    // Gone clients free their places (each noticed at its next write).
    assert!(
        wait_for(Duration::from_secs(40), || (subscribers() <= 2)
            .then_some(()))
        .is_some(),
        "followers that went away still count: {}",
        subscribers()
    );
}
