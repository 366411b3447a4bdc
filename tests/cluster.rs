//! Several hosts, one fcm (docs/cluster.md): three hosts (network
//! namespaces on a bridge), a 3-member etcd, the real daemons and QEMU
//! guests. Hosts register under a lease and list each other; a second host
//! with a name, subnet, bridge or token of the cluster's is refused; a host
//! killed shows `dead` within the lease time and its VMs `unreachable`, and
//! both come back; one etcd member down changes nothing; a host cut off
//! from etcd serves its own VMs and says the cluster is unreachable; names
//! and ids are unique across hosts; requests, streams, consoles and the web
//! console's terminal reach a VM on another host; creates are placed; a
//! rolling restart loses nothing. The benchmark is bench/cluster_harness.rs.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{self, Cluster, TOKEN, all_live, states};
use common::{Netns, fcm_bin, wait_for};

/// Starts a fourth daemon on the LAN with these flags; its exit status and
/// log (it is expected to be refused, and to exit within 30 s).
fn refused_join(
    c: &Cluster,
    ns: &Netns,
    token: &str,
    name: &str,
    bridge: &str,
    subnet_of: usize,
) -> String {
    let f = cluster::unstarted(Netns::new("cl-x"), Vec::new(), token);
    // The fourth host's namespace is `ns` (joined to the LAN); `f` only
    // lends its state dir and harness flags.
    let config = cluster::host_config(c.dir.path(), subnet_of, 1024);
    let mut args = f.daemon_args();
    args.extend(cluster::host_args(&config, 3, name, bridge));
    let out_path = f.dir.path().join("x.log");
    let log = std::fs::File::create(&out_path).expect("log");
    let mut child = ns
        .cmd(fcm_bin())
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("daemon");
    let status = wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if status.is_none() {
        common::kill_pid(child.id());
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a conflicting host ({name}, bridge {bridge}, subnet of h{subnet_of}) was not refused: {status:?}\n{text}"
    );
    text
}

#[test]
fn hosts_register_list_each_other_and_conflicts_are_refused() {
    if !common::e2e_ready() {
        return;
    }
    // Every host sees all three live, with what each registered.
    let c = Cluster::start_live("cl1", [4096, 2048, 1024]);
    let hosts = c.hosts(1);
    assert_eq!(hosts["cluster"]["state"], "connected", "{hosts}");
    assert_eq!(hosts["cluster"]["host"], "h1");
    for (i, mem) in [4096u64, 2048, 1024].into_iter().enumerate() {
        let h = hosts["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == format!("h{i}")))
            .expect("host")
            .clone();
        assert_eq!(h["address"], format!("{}:7777", cluster::host_ip(i)));
        assert_eq!(h["stream_address"], format!("{}:7778", cluster::host_ip(i)));
        assert_eq!(h["subnet"], format!("172.16.{}.0/24", i + 1));
        assert_eq!(h["bridge"], format!("fcmb{i}"));
        assert_eq!(h["tls"], true);
        assert_eq!(h["capacity"]["memory_mib"], mem);
        assert_eq!(h["load"]["free_memory_mib"], mem, "no VMs yet: {h}");
        assert!(h["capacity"]["cpus"].as_u64().unwrap_or(0) >= 1, "{h}");
        // The fingerprint is the one the daemon presents (its log says it).
        let fp = h["fingerprint"].as_str().unwrap_or_default().to_owned();
        assert!(fp.starts_with("sha256:"), "{h}");
        let log = std::fs::read_to_string(c.hosts[i].log()).unwrap_or_default();
        assert!(log.contains(&fp), "h{i}'s log does not name {fp}");
    }
    let health = c.hosts[0].health().expect("health");
    assert_eq!(health["cluster"], "connected", "{health}");
    // The table a person reads.
    let table = c.ok(2, &["hosts"]);
    eprintln!("fcm hosts on h2:\n{table}");
    assert!(table.starts_with("HOST"), "{table}");
    for i in 0..3 {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("h{i} "))
                && l.contains("live")
                && l.contains(&cluster::host_ip(i))),
            "{table}"
        );
    }

    // A fourth machine on the LAN that would take what is the cluster's.
    let ns = Netns::new("cl1-h3");
    cluster::plug(&c.lan, &ns, 3);
    let began = Instant::now();
    let log = refused_join(&c, &ns, TOKEN, "h1", "fcmb3", 3);
    assert!(
        log.contains("host name h1 is held by another live host"),
        "{log}"
    );
    let log = refused_join(&c, &ns, TOKEN, "h3", "fcmb3", 1);
    assert!(log.contains("overlaps h1's"), "{log}");
    let log = refused_join(&c, &ns, TOKEN, "h3", "fcmb2", 3);
    assert!(log.contains("the bridge fcmb2 is h2's"), "{log}");
    let log = refused_join(
        &c,
        &ns,
        "another-token-0123456789abcdefgh",
        "h3",
        "fcmb3",
        3,
    );
    assert!(log.contains("token is not the cluster's"), "{log}");
    eprintln!("four refused joins took {:?}", began.elapsed());
    // None of them left a trace: still three hosts, all live.
    assert_eq!(states(&c, 0), all_live());
}

#[test]
fn a_lost_host_is_dead_then_back_and_a_lost_etcd_is_said() {
    if !common::e2e_ready() {
        return;
    }
    let mut c = Cluster::start_live("cl2", [2048, 2048, 2048]);
    // h2's daemon killed: dead within the lease time (4 s) on h0 and h1.
    c.hosts[2].kill_daemon();
    let killed = Instant::now();
    let dead = wait_for(Duration::from_secs(12), || {
        (c.state_of(0, "h2").as_deref() == Some("dead")).then_some(())
    });
    assert!(dead.is_some(), "h0 sees {:?}", states(&c, 0));
    eprintln!("h2 dead on h0 after {:?} (lease 4 s)", killed.elapsed());
    assert_eq!(c.state_of(1, "h2").as_deref(), Some("dead"));
    assert_eq!(c.state_of(1, "h0").as_deref(), Some("live"));
    // Back: live again, the same record, nothing duplicated.
    c.hosts[2].spawn_daemon();
    assert!(
        wait_for(Duration::from_secs(15), || (states(&c, 0) == all_live())
            .then_some(()))
        .is_some(),
        "h0 sees {:?}",
        states(&c, 0)
    );
    // Killed and restarted at once (its old lease still running): it takes
    // its own name back.
    c.hosts[2].kill_daemon();
    c.hosts[2].spawn_daemon();
    assert!(
        wait_for(Duration::from_secs(15), || (states(&c, 1) == all_live())
            .then_some(()))
        .is_some(),
        "h1 sees {:?}",
        states(&c, 1)
    );

    // One etcd member stopped (h0's own): the cluster works on.
    c.etcd[0].stop();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(states(&c, 0), all_live());
    assert_eq!(c.hosts[0].health().expect("health")["cluster"], "connected");

    // A VM of h1's own, to be served while h1 cannot reach etcd.
    c.ok(1, &["create", "--name", "own", "--host", "h1", "--json"]);
    // etcd out of reach from h1: h1 says so and serves its own VMs; the
    // others see h1 dead once its lease runs out.
    let drop_etcd = "add table inet fcmtest\n\
        add chain inet fcmtest out { type filter hook output priority 0; }\n\
        add rule inet fcmtest out tcp dport 2379 drop\n";
    let out = c.hosts[1]
        .ns
        .exec(&["nft", "-f", &write_tmp(&c, "drop.nft", drop_etcd)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = wait_for(Duration::from_secs(20), || {
        c.hosts[1].health().and_then(|h| {
            h["cluster"]
                .as_str()
                .filter(|s| s.starts_with("unreachable"))
                .map(str::to_owned)
        })
    });
    assert!(said.is_some(), "h1's health: {:?}", c.hosts[1].health());
    let out = c.run_at(1, 1, &["hosts"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster unreachable"), "{err}");
    assert_eq!(
        listed(&c, 1, "own"),
        vec![("h1".to_owned(), "running".to_owned())],
        "h1 lists its own VMs"
    );
    let out: serde_json::Value =
        serde_json::from_str(c.ok(1, &["exec", "--json", "own", "--", "true"]).trim())
            .expect("exec --json");
    assert_eq!(out["exit_code"], 0, "h1 serves its own VMs: {out}");
    // A new VM's name cannot be claimed: refused (503), nothing made.
    let out = c.run_at(1, 1, &["create", "--name", "new", "--no-wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cluster is unreachable"),
        "{err}"
    );
    assert!(
        wait_for(Duration::from_secs(12), || (c.state_of(0, "h1").as_deref()
            == Some("dead"))
        .then_some(()))
        .is_some(),
        "h0 sees {:?}",
        states(&c, 0)
    );
    // etcd back: h1 rejoins (its lease expired meanwhile).
    assert!(
        c.hosts[1]
            .ns
            .exec(&["nft", "delete", "table", "inet", "fcmtest"])
            .status
            .success()
    );
    assert!(
        wait_for(Duration::from_secs(20), || (states(&c, 0) == all_live())
            .then_some(()))
        .is_some(),
        "h0 sees {:?}",
        states(&c, 0)
    );
    assert!(
        wait_for(Duration::from_secs(10), || (c.hosts[1].health()?["cluster"]
            == "connected")
            .then_some(()))
        .is_some(),
        "h1's health: {:?}",
        c.hosts[1].health()
    );
    let log = std::fs::read_to_string(c.hosts[1].log()).unwrap_or_default();
    assert!(log.contains("cluster unreachable"), "{log}");
    assert!(log.contains("rejoined"), "{log}");
    // Its VM as it was, listed once everywhere; the refused create left nothing.
    let own = vec![("h1".to_owned(), "running".to_owned())];
    for i in 0..3 {
        let seen = wait_for(Duration::from_secs(10), || {
            (listed(&c, i, "own") == own).then_some(())
        });
        assert!(seen.is_some(), "h{i} lists {:?}", listed(&c, i, "own"));
        assert!(listed(&c, i, "new").is_empty());
    }
    c.ok(0, &["destroy", "own"]);
}

fn write_tmp(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// `POST /vms` on host `at` from host `from`, with curl: the status code.
fn create_status(c: &Cluster, from: usize, at: usize, body: &str) -> String {
    let url = format!("https://{}:7777/vms", cluster::host_ip(at));
    let auth = format!("Authorization: Bearer {TOKEN}");
    let out = c.hosts[from].ns.exec(&[
        "curl",
        "-sk",
        "--max-time",
        "60",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &url,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ls(c: &Cluster, i: usize, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["ls", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(c.ok(i, &args).trim()).expect("ls --json")
}

/// (host, state) of each VM named `name` that host `i` lists.
fn listed(c: &Cluster, i: usize, name: &str) -> Vec<(String, String)> {
    ls(c, i, &[])
        .iter()
        .filter(|v| v["name"] == name)
        .map(|v| {
            (
                v["host"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_name_is_one_vm_across_hosts_and_ls_on_any_host_lists_every_vm() {
    if !common::e2e_ready() {
        return;
    }
    let mut c = Cluster::start_live("cl3", [2048, 2048, 2048]);
    // Two creates of `web` at once, made on h0 and on h1: one wins.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            c.run_at(
                0,
                0,
                &[
                    "create",
                    "--name",
                    "web",
                    "--host",
                    "h0",
                    "--no-wait",
                    "--json",
                ],
            )
        });
        let b = s.spawn(|| {
            c.run_at(
                1,
                1,
                &[
                    "create",
                    "--name",
                    "web",
                    "--host",
                    "h1",
                    "--no-wait",
                    "--json",
                ],
            )
        });
        (
            a.join().expect("h0's create"),
            b.join().expect("h1's create"),
        )
    });
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(
        a.status.success() != b.status.success(),
        "exactly one create of web must win:\nh0: {}\nh1: {}",
        text(&a),
        text(&b)
    );
    let (w, lost) = if a.status.success() { (0, &b) } else { (1, &a) };
    let won: serde_json::Value =
        serde_json::from_slice(if w == 0 { &a.stdout } else { &b.stdout }).expect("json");
    assert_eq!(won["host"], format!("h{w}"), "{won}");
    let loser = 1 - w;
    let err = text(lost);
    assert!(
        err.contains("already exists") && err.contains(&format!("on host h{w}")),
        "{err}"
    );
    // The same through the API on the third host: 409.
    assert_eq!(
        create_status(&c, 2, 2, r#"{"name":"web","wait_ready":false}"#),
        "409"
    );
    let host = format!("h{w}");
    // Every host lists it, on its host.
    for i in 0..3 {
        let seen = wait_for(Duration::from_secs(10), || {
            (listed(&c, i, "web").len() == 1 && listed(&c, i, "web")[0].0 == host).then_some(())
        });
        assert!(seen.is_some(), "h{i} lists {:?}", listed(&c, i, "web"));
    }
    let table = c.ok(2, &["ls"]);
    eprintln!("fcm ls on h2:\n{table}");
    assert!(table.starts_with("HOST"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{host} ")) && l.contains("web")),
        "{table}"
    );
    assert_eq!(ls(&c, 2, &["--host", &host]).len(), 1);
    assert!(ls(&c, 2, &["--host", &format!("h{loser}")]).is_empty());
    // Its id is claimed in etcd too, by its host (ids are unique across
    // the cluster, as names).
    let id = won["id"].as_str().expect("id").to_owned();
    let ids = c.etcd_keys("ids/");
    eprintln!("ids in etcd: {ids:?}");
    let claim = ids
        .iter()
        .find(|(k, _)| *k == format!("/fcm/ids/{id}"))
        .unwrap_or_else(|| panic!("no claim of id {id} in {ids:?}"));
    assert!(
        claim.1.contains(&format!("\"host\":\"{host}\"")),
        "{claim:?}"
    );
    // The losing create gave back what it claimed: one id claim per VM.
    assert_eq!(ids.len(), 1, "{ids:?}");

    // The winner's daemon and its VM killed: unreachable elsewhere.
    c.hosts[w].kill_daemon();
    let vmms = c.hosts[w].vmm_pids();
    assert!(!vmms.is_empty(), "web's VMM on h{w}");
    for pid in vmms {
        common::kill_pid(pid);
    }
    let gone = wait_for(Duration::from_secs(12), || {
        (listed(&c, 2, "web") == vec![(host.clone(), "unreachable".to_owned())]).then_some(())
    });
    assert!(gone.is_some(), "h2 lists {:?}", listed(&c, 2, "web"));
    assert!(c.ok(loser, &["ls"]).contains("unreachable"));
    // Back: listed as it is (its VMM gone: stopped), once.
    c.hosts[w].spawn_daemon();
    let back = wait_for(Duration::from_secs(15), || {
        let l = listed(&c, 2, "web");
        (l.len() == 1 && l[0].0 == host && l[0].1 == "stopped").then_some(())
    });
    assert!(back.is_some(), "h2 lists {:?}", listed(&c, 2, "web"));

    // Destroyed: gone from every list, and the name is free on another host.
    c.ok(w, &["destroy", "web"]);
    let freed = wait_for(Duration::from_secs(10), || {
        listed(&c, 2, "web").is_empty().then_some(())
    });
    assert!(freed.is_some(), "h2 lists {:?}", listed(&c, 2, "web"));
    // Its id is given back with its name.
    let ids = c.etcd_keys("ids/");
    assert!(
        !ids.iter().any(|(k, _)| k.ends_with(&id)),
        "id {id} still claimed: {ids:?}"
    );
    let made = c.run_at(
        loser,
        loser,
        &[
            "create",
            "--name",
            "web",
            "--host",
            &format!("h{loser}"),
            "--no-wait",
            "--json",
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    let on_loser = wait_for(Duration::from_secs(10), || {
        (listed(&c, w, "web").first().map(|v| v.0.clone()) == Some(format!("h{loser}")))
            .then_some(())
    });
    assert!(on_loser.is_some(), "h{w} lists {:?}", listed(&c, w, "web"));
    c.ok(loser, &["destroy", "web"]);
}

/// `fcm stats --json` on host `i`: (host, name) of each VM, sorted.
fn stats(c: &Cluster, i: usize, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["stats", "--json"];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_str(c.ok(i, &args).trim()).expect("stats");
    let mut l: Vec<(String, String)> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["host"].as_str().unwrap_or("-").to_owned(),
                s["name"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    l.sort();
    l
}

#[test]
fn requests_for_another_hosts_vm_are_forwarded_and_creates_placed() {
    if !common::e2e_ready() {
        return;
    }
    // h1 has the most memory: a create sent to h0 lands there.
    let mut c = Cluster::start_live("cl4", [1024, 4096, 2048]);
    let began = Instant::now();
    let made: serde_json::Value =
        serde_json::from_str(c.ok(0, &["create", "--name", "far", "--json"]).trim()).expect("json");
    eprintln!(
        "create through h0, placed on {}: {:?}",
        made["host"],
        began.elapsed()
    );
    assert_eq!(made["host"], "h1", "{made}");
    assert!(
        made["ip"]
            .as_str()
            .unwrap_or_default()
            .starts_with("172.16.2."),
        "{made}"
    );
    assert_eq!(
        listed(&c, 2, "far"),
        vec![("h1".to_owned(), "running".to_owned())]
    );
    // Through h0, a buffered exec reaches the guest on h1.
    let out: serde_json::Value = serde_json::from_str(
        c.ok(
            0,
            &[
                "exec", "--json", "far", "--", "ip", "-4", "-o", "addr", "show", "eth0",
            ],
        )
        .trim(),
    )
    .expect("exec --json");
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(
        out["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains(made["ip"].as_str().unwrap_or("?")),
        "{out}"
    );
    // The streamed exec and cp through other hosts are relayed to h1.
    let out = c.run_at(
        0,
        0,
        &[
            "exec",
            "far",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = c.dir.path().join("in.bin");
    std::fs::write(&src, &data).expect("write");
    c.ok(0, &["cp", &src.display().to_string(), "far:/root/in.bin"]);
    let back = c.dir.path().join("back.bin");
    c.ok(2, &["cp", "far:/root/in.bin", &back.display().to_string()]);
    assert!(
        std::fs::read(&back).expect("read") == data,
        "the file came back changed"
    );
    let tree = c.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("sub/a.txt"), "relayed\n").expect("write");
    c.ok(0, &["cp", &tree.display().to_string(), "far:/root/"]);
    let out_dir = c.dir.path().join("out");
    c.ok(2, &["cp", "far:/root/tree", &out_dir.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("sub/a.txt")).expect("copied tree"),
        "relayed\n"
    );
    // A console through h0, relayed to h1's terminal port.
    let mut cmd = c.cli_at(0, 0);
    cmd.args(["console", "far"]);
    let mut con = common::pty::OnPty::start_cmd(cmd, 100, 30);
    std::thread::sleep(Duration::from_secs(2));
    con.type_keys(b"echo relayed-$((6*7))\r");
    con.wait_for("relayed-42", 30);
    // The client killed (it ends by the pty helper), the session lives on.
    let _ = con.wait_exit(1);
    let sessions = c.ok(2, &["sessions", "far"]);
    assert!(sessions.contains("main"), "{sessions}");
    // The web console's terminal through h0, relayed to h1 too.
    web_console_through(&c, 0, "far");
    // Through h2: its console log, stop, start.
    assert!(!c.ok(2, &["logs", "far"]).is_empty());
    c.ok(2, &["stop", "far"]);
    // The owner mirrors the change to etcd as it happens (not before it
    // answers): another host's list follows within moments.
    let stopped = vec![("h1".to_owned(), "stopped".to_owned())];
    let seen = wait_for(Duration::from_secs(10), || {
        (listed(&c, 0, "far") == stopped).then_some(())
    });
    assert!(seen.is_some(), "h0 lists {:?}", listed(&c, 0, "far"));
    c.ok(2, &["start", "far", "--no-wait"]);
    assert_eq!(listed(&c, 1, "far")[0].1, "running");
    // --host chooses: through h0, onto h2.
    let near: serde_json::Value = serde_json::from_str(
        c.ok(
            0,
            &[
                "create",
                "--name",
                "near",
                "--host",
                "h2",
                "--no-wait",
                "--json",
            ],
        )
        .trim(),
    )
    .expect("json");
    assert_eq!(near["host"], "h2", "{near}");
    let out = c.run_at(0, 0, &["create", "--host", "h9", "--no-wait"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host named h9"));
    // An image only h0 has (the least free memory): a create of it
    // without --host, sent to h2, is placed on h0; one no host has: 404.
    let tar = busybox_tarball(c.dir.path());
    c.ok(
        0,
        &["image", "import", &tar.display().to_string(), "-t", "bb"],
    );
    let listed_bb = wait_for(Duration::from_secs(15), || {
        let hosts = c.hosts(2);
        let has = |h: &str| {
            hosts["hosts"].as_array().is_some_and(|l| {
                l.iter().any(|x| {
                    x["name"] == h
                        && x["images"]
                            .as_array()
                            .is_some_and(|i| i.iter().any(|n| n == "bb"))
                })
            })
        };
        (has("h0") && !has("h1") && !has("h2")).then_some(())
    });
    assert!(listed_bb.is_some(), "h0's record lists bb: {}", c.hosts(2));
    let bb: serde_json::Value = serde_json::from_str(
        c.ok(
            2,
            &[
                "create",
                "--image",
                "bb",
                "--name",
                "bb1",
                "--no-wait",
                "--json",
            ],
        )
        .trim(),
    )
    .expect("json");
    assert_eq!(bb["host"], "h0", "{bb}");
    let out = c.run_at(2, 2, &["create", "--image", "nothere", "--no-wait"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no live host of the cluster has image nothere") && err.contains("fcm image"),
        "{err}"
    );
    c.ok(1, &["destroy", "bb1"]);
    // Two creates placed through h0 at the same moment: the first's
    // memory is reserved on its host (h1: 3584 MiB free, then 1408), so
    // the second goes to h2 (1536 free), not to h1 as well.
    let (a, b) = std::thread::scope(|s| {
        let go = |n: &'static str| {
            let c = &c;
            s.spawn(move || {
                c.run_at(
                    0,
                    0,
                    &[
                        "create",
                        "--name",
                        n,
                        "--memory",
                        "2176",
                        "--no-wait",
                        "--json",
                    ],
                )
            })
        };
        let (a, b) = (go("twin-a"), go("twin-b"));
        (a.join().expect("twin-a"), b.join().expect("twin-b"))
    });
    let host_of = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        v["host"].as_str().unwrap_or("-").to_owned()
    };
    let mut placed = vec![host_of(&a), host_of(&b)];
    placed.sort();
    assert_eq!(placed, vec!["h1".to_owned(), "h2".to_owned()]);
    c.ok(2, &["destroy", "twin-a"]);
    c.ok(2, &["destroy", "twin-b"]);
    // Stats on any host: every live host's VMs, each with its host.
    let pair = |h: &str, n: &str| (h.to_owned(), n.to_owned());
    assert_eq!(
        stats(&c, 0, &[]),
        vec![pair("h1", "far"), pair("h2", "near")]
    );
    assert_eq!(stats(&c, 2, &["--host", "h1"]), vec![pair("h1", "far")]);
    assert_eq!(stats(&c, 1, &["--host", "h2"]), vec![pair("h2", "near")]);
    assert!(stats(&c, 1, &["--host", "h0"]).is_empty());
    let table = c.ok(0, &["stats"]);
    eprintln!("fcm stats on h0:\n{table}");
    assert!(table.starts_with("HOST"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains("far")),
        "{table}"
    );
    let out = c.run_at(0, 0, &["stats", "--host", "h9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host named h9"));
    // A VM of a host that is down: said, not hung.
    c.hosts[2].kill_daemon();
    let said = wait_for(Duration::from_secs(15), || {
        let out = c.run_at(0, 0, &["stop", "near"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("not answering")).then_some(err)
    });
    assert!(said.is_some(), "stop of a dead host's VM");
    // Its VMs are left out of the stats (fcm ls lists them unreachable).
    assert_eq!(stats(&c, 0, &[]), vec![pair("h1", "far")]);
    let out = c.run_at(0, 0, &["stats", "--host", "h2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not answering"));
    let mut ws = web_socket(&c, 0, "vm=near&session=main&create=1");
    ws.wait_until(30, |s| {
        s.contains("\"error\"") && s.contains("not answering")
    });
    ws.close();
    c.hosts[2].spawn_daemon();
    // Destroyed through other hosts.
    let back = wait_for(Duration::from_secs(20), || {
        c.run_at(1, 1, &["destroy", "near"])
            .status
            .success()
            .then_some(())
    });
    assert!(back.is_some(), "destroy near through h1");
    c.ok(0, &["destroy", "far"]);
    let empty = wait_for(Duration::from_secs(10), || {
        ls(&c, 2, &[]).is_empty().then_some(())
    });
    assert!(empty.is_some(), "{:?}", ls(&c, 2, &[]));
}

#[test]
fn a_rolling_restart_of_every_daemon_loses_nothing() {
    if !common::e2e_ready() {
        return;
    }
    let mut c = Cluster::start_live("cl5", [2048, 2048, 2048]);
    c.ok(2, &["create", "--name", "va", "--host", "h0", "--json"]);
    c.ok(2, &["create", "--name", "vb", "--host", "h1", "--json"]);
    let both = |c: &Cluster, i: usize| -> Vec<(String, String, String)> {
        let mut v: Vec<(String, String, String)> = ls(c, i, &[])
            .iter()
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("host"), s("state"))
            })
            .collect();
        v.sort();
        v
    };
    let running = vec![
        ("va".to_owned(), "h0".to_owned(), "running".to_owned()),
        ("vb".to_owned(), "h1".to_owned(), "running".to_owned()),
    ];
    for i in 0..3 {
        assert!(
            wait_for(Duration::from_secs(10), || (both(&c, i) == running)
                .then_some(()))
            .is_some()
        );
    }
    // Each daemon in turn stopped (SIGTERM: its lease revoked) and started.
    for i in 0..3 {
        let pid = c.hosts[i].daemon_pid().expect("daemon");
        // SAFETY: kill(2) on the daemon this test started.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        assert!(
            c.hosts[i]
                .wait_daemon_exit(Duration::from_secs(40))
                .is_some(),
            "h{i} did not stop"
        );
        let other = (i + 1) % 3;
        // Its VMs show unreachable meanwhile; the others' do not change.
        let during = wait_for(Duration::from_secs(10), || {
            let l = both(&c, other);
            let ok = l.len() == 2
                && l.iter()
                    .all(|(_, host, state)| (host == &format!("h{i}")) == (state == "unreachable"));
            ok.then_some(())
        });
        assert!(
            during.is_some(),
            "h{other} lists {:?} while h{i} is down",
            both(&c, other)
        );
        c.hosts[i].spawn_daemon();
        for j in 0..3 {
            let back = wait_for(Duration::from_secs(20), || {
                (both(&c, j) == running).then_some(())
            });
            assert!(
                back.is_some(),
                "after h{i}'s restart h{j} lists {:?}",
                both(&c, j)
            );
        }
    }
    // Nothing lost: both guests answer, through a third host.
    for vm in ["va", "vb"] {
        let out: serde_json::Value =
            serde_json::from_str(c.ok(2, &["exec", "--json", vm, "--", "true"]).trim())
                .expect("json");
        assert_eq!(out["exit_code"], 0, "{vm}: {out}");
    }
    assert_eq!(states(&c, 0), all_live());
}

/// A root file system of Debian's busybox-static only (as tests/images.rs):
/// the fastest image to import.
fn busybox_tarball(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("bb-root");
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
    }
    for d in ["etc", "root", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("dir");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    let tar = dir.join("bb.tar");
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tar failed");
    tar
}

/// `/ui/ws?{query}` on host `at`'s API, as a page served by it opens it.
fn web_socket(c: &Cluster, at: usize, query: &str) -> common::ws::Ws {
    let hosts = c.hosts(at);
    let fingerprint = hosts["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == format!("h{at}")))
        .and_then(|h| h["fingerprint"].as_str())
        .expect("fingerprint in fcm hosts --json")
        .to_owned();
    let addr = format!("{}:7777", cluster::host_ip(at))
        .parse()
        .expect("address");
    common::ws::Ws::open(&c.hosts[at].ns.name, addr, &fingerprint, TOKEN, query)
}

/// Input, output and a resize on `vm`'s console through host `at`'s page.
fn web_console_through(c: &Cluster, at: usize, vm: &str) {
    let began = Instant::now();
    let mut ws = web_socket(
        c,
        at,
        &format!("vm={vm}&session=main&create=1&cols=100&rows=30"),
    );
    ws.wait_until(30, |s| s.contains("\"attached\""));
    eprintln!("web console through h{at} attached: {:?}", began.elapsed());
    ws.type_keys(b"echo ui-$((6*7))\r");
    ws.wait_until(30, |s| s.contains("ui-42"));
    ws.control(r#"{"resize":{"cols":91,"rows":33}}"#);
    std::thread::sleep(Duration::from_secs(1));
    ws.type_keys(b"echo size-$(stty size | tr ' ' x)\r");
    ws.wait_until(30, |s| s.contains("32x91") || s.contains("33x91"));
    ws.close();
}
