//! A cluster under test: three "hosts" (network namespaces) joined by a
//! bridge in a fourth (the LAN, 10.99.0.0/24), a member of a 3-member etcd
//! in each host, and the real `fcm daemon --cluster` in each, with its own
//! VM subnet (172.16.<i>.0/24) and bridge. Everything is undone on drop:
//! etcd members killed by PID, daemons and namespaces by their `Fcm`.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{Fcm, Netns, fcm_bin, kill_pid, tmp_root, wait_for};

/// The token every host of the test cluster shares.
pub const TOKEN: &str = "fcmclustertesttoken0123456789abc";

pub struct Member {
    pub child: Option<Child>,
    pub ip: String,
}

pub struct Cluster {
    /// Dropped last: the hosts' veths go with their namespaces.
    pub hosts: Vec<Fcm>,
    pub etcd: Vec<Member>,
    pub lan: Netns,
    pub dir: tempfile::TempDir,
}

pub fn host_ip(i: usize) -> String {
    format!("10.99.0.{}", i + 1)
}

pub fn endpoints(n: usize) -> String {
    (0..n)
        .map(|i| format!("http://{}:2379", host_ip(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Joins `ns` to the LAN as `10.99.0.<i+1>` (its `eth0`).
pub fn plug(lan: &Netns, ns: &Netns, i: usize) {
    let port = format!("p{i}");
    for argv in [
        vec![
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ],
        vec!["ip", "link", "set", &port, "master", "br0", "up"],
    ] {
        let out = lan.exec(&argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let addr = format!("{}/24", host_ip(i));
    for argv in [
        vec!["ip", "addr", "add", &addr, "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
    ] {
        let out = ns.exec(&argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The daemon config of host `i`: its own subnet, a short lease, a memory
/// size of its own for placement.
pub fn host_config(dir: &std::path::Path, i: usize, memory_mib: u64) -> PathBuf {
    let cfg = serde_json::json!({
        "gateway": format!("172.16.{}.1", i + 1),
        "pool_start": format!("172.16.{}.50", i + 1),
        "pool_end": format!("172.16.{}.254", i + 1),
        "caddy": { "enabled": false },
        "cluster": { "lease_ttl_secs": 4, "request_timeout_ms": 1000, "memory_mib": memory_mib },
    });
    let p = dir.join(format!("host{i}.json"));
    fs::write(&p, cfg.to_string()).expect("config");
    p
}

/// The daemon flags of host `i` (config file, ports, names, etcd).
pub fn host_args(config: &std::path::Path, i: usize, name: &str, bridge: &str) -> Vec<String> {
    [
        "--config",
        &config.display().to_string(),
        "--listen",
        "0.0.0.0:7777",
        "--stream-listen",
        "0.0.0.0:7778",
        "--advertise",
        &format!("{}:7777", host_ip(i)),
        "--cluster",
        &endpoints(3),
        "--host-name",
        name,
        "--bridge",
        bridge,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An `Fcm` whose daemon is not started yet, its state dir holding `token`.
pub fn unstarted(ns: Netns, extra_args: Vec<String>, token: &str) -> Fcm {
    let dir = tempfile::Builder::new()
        .prefix("fcm-test-")
        .tempdir_in(tmp_root())
        .expect("tempdir");
    let f = Fcm {
        ns,
        dir,
        daemon: None,
        extra_args,
    };
    fs::create_dir_all(f.state()).expect("state");
    fs::create_dir_all(f.home().join(".ssh")).expect("home");
    let tok = f.state().join(".token");
    fs::write(&tok, format!("{token}\n")).expect("token");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tok, fs::Permissions::from_mode(0o600)).expect("chmod");
    f
}

impl Member {
    pub fn start(ns: &Netns, i: usize, dir: &std::path::Path) -> Self {
        let ip = host_ip(i);
        let peers = (0..3)
            .map(|j| format!("e{j}=http://{}:2380", host_ip(j)))
            .collect::<Vec<_>>()
            .join(",");
        let data = dir.join(format!("etcd{i}"));
        let log = fs::File::create(dir.join(format!("etcd{i}.log"))).expect("log");
        let child = ns
            .cmd("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://{ip}:2379,http://127.0.0.1:2379"),
                "--advertise-client-urls",
                &format!("http://{ip}:2379"),
                "--listen-peer-urls",
                &format!("http://{ip}:2380"),
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
                "--initial-cluster",
                &peers,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "fcm-test",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        Self {
            child: Some(child),
            ip,
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_pid(c.id());
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Three hosts, etcd on each, daemons started and joined.
    pub fn start(tag: &str, memory_mib: [u64; 3]) -> Self {
        let have = Command::new("etcd").arg("--version").output();
        assert!(
            have.map(|o| o.status.success()).unwrap_or(false),
            "the cluster tests need etcd (scripts/test.sh installs etcd-server)"
        );
        let lan = Netns::new(&format!("{tag}-lan"));
        for argv in [
            vec!["ip", "link", "add", "br0", "type", "bridge"],
            vec!["ip", "link", "set", "br0", "up"],
        ] {
            assert!(lan.exec(&argv).status.success(), "{argv:?}");
        }
        let dir = tempfile::Builder::new()
            .prefix("fcm-cluster-")
            .tempdir_in(tmp_root())
            .expect("tempdir");
        let mut c = Self {
            hosts: Vec::new(),
            etcd: Vec::new(),
            lan,
            dir,
        };
        for (i, mem) in memory_mib.iter().enumerate() {
            let ns = Netns::new(&format!("{tag}-h{i}"));
            plug(&c.lan, &ns, i);
            let config = host_config(c.dir.path(), i, *mem);
            let args = host_args(&config, i, &format!("h{i}"), &format!("fcmb{i}"));
            c.etcd.push(Member::start(&ns, i, c.dir.path()));
            c.hosts.push(unstarted(ns, args, TOKEN));
        }
        for i in 0..3 {
            let ok = wait_for(Duration::from_secs(30), || {
                let out = c.hosts[i].ns.exec(&[
                    "curl",
                    "-s",
                    "--max-time",
                    "2",
                    "http://127.0.0.1:2379/health",
                ]);
                String::from_utf8_lossy(&out.stdout)
                    .contains("true")
                    .then_some(())
            });
            assert!(
                ok.is_some(),
                "etcd member {i} is not healthy:\n{}",
                c.etcd_log(i)
            );
        }
        for h in &mut c.hosts {
            h.spawn_daemon();
        }
        c
    }

    pub fn etcd_log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.path().join(format!("etcd{i}.log"))).unwrap_or_default()
    }

    /// `fcm args…` run on host `i` against host `at`'s API (TLS, pinned on first use).
    pub fn run_at(&self, i: usize, at: usize, args: &[&str]) -> Output {
        self.cli_at(i, at)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("fcm")
    }

    /// The `fcm` command line on host `i`, aimed at host `at`.
    pub fn cli_at(&self, i: usize, at: usize) -> Command {
        let h = &self.hosts[i];
        let mut c = h.ns.cmd("env");
        c.args(["-u", "FCM_TOKEN", "-u", "FCM_STREAM"])
            .arg(format!("HOME={}", h.home().display()))
            .arg(format!("FCM_TOKEN={TOKEN}"))
            .arg(format!("FCM_HOST={}", host_ip(at)))
            .arg(fcm_bin());
        c
    }

    /// `fcm args…` on host `i` against its own daemon; panics unless it succeeds.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.run_at(i, i, args);
        assert!(
            out.status.success(),
            "fcm {args:?} on h{i} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The values of etcd's keys under `/fcm/<prefix>` (key → value), read
    /// with etcdctl from host 2's namespace.
    pub fn etcd_keys(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.hosts[2]
            .ns
            .cmd("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &endpoints(3),
                "--command-timeout=5s",
                "get",
                "--prefix",
                &format!("/fcm/{prefix}"),
            ])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string())))
            .collect()
    }

    /// `fcm hosts --json` on host `i`.
    pub fn hosts(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(self.ok(i, &["hosts", "--json"]).trim()).expect("hosts --json")
    }

    /// The state of host `name` as host `i` sees it.
    pub fn state_of(&self, i: usize, name: &str) -> Option<String> {
        self.hosts(i)["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == name)
            .and_then(|h| h["state"].as_str().map(str::to_owned))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.etcd.len() {
                let log = self.etcd_log(i);
                let tail: String = log
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                eprintln!("--- etcd member {i} (tail) ---\n{tail}");
            }
        }
        for m in &mut self.etcd {
            m.stop();
        }
        // The hosts (daemons, namespaces) drop next, then the LAN.
        self.hosts.clear();
    }
}

/// The hosts host `i` lists, with their state, sorted.
pub fn states(c: &Cluster, i: usize) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c.hosts(i)["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap_or_default().to_owned(),
                h["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// What [`states`] says of a cluster whose three hosts are up.
pub fn all_live() -> Vec<(String, String)> {
    (0..3)
        .map(|i| (format!("h{i}"), "live".to_owned()))
        .collect()
}

impl Cluster {
    /// [`Cluster::start`], then waits until every host lists all three
    /// hosts live (15 s each).
    pub fn start_live(tag: &str, memory_mib: [u64; 3]) -> Cluster {
        let c = Cluster::start(tag, memory_mib);
        for i in 0..3 {
            let seen = wait_for(Duration::from_secs(15), || {
                (states(&c, i) == all_live()).then_some(())
            });
            assert!(seen.is_some(), "h{i} sees {:?}", states(&c, i));
        }
        c
    }
}
