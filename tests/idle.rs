//! Idle sleep end to end: a VM created with `--idle-pause` is paused once
//! no console is attached and its tap is quiet, and a request to its URL
//! through a real Caddy wakes it (Caddy holds the request while the daemon
//! resumes the VM) and gets the guest's page, its programs still running.
//! An attached console keeps it awake, `exec` wakes it, and a VM a user
//! paused stays paused.

mod common;

use std::time::{Duration, Instant};

use common::caddy::{fetch, fetch_within, start_caddy, write_caddy_config};
use common::outer::Outer;
use common::{Fcm, e2e_ready, wait_for};

/// Output of `fcm exec <vm> -- sh -c <script>`, which wakes a sleeping VM.
fn exec(f: &Fcm, vm: &str, script: &str) -> std::process::Output {
    f.run(&["exec", vm, "--", "sh", "-c", script])
}

fn state(f: &Fcm, vm: &str) -> (String, bool) {
    let v = f.vm(vm);
    (
        v["state"].as_str().unwrap_or_default().to_owned(),
        v["idle_paused"].as_bool().unwrap_or(false),
    )
}

/// Waits until idle sleep has paused the VM; how long that took.
fn wait_idle_paused(f: &Fcm, vm: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    let paused = wait_for(within, || {
        (state(f, vm) == ("paused".into(), true)).then_some(())
    });
    assert!(
        paused.is_some(),
        "{vm} was not paused by idle sleep within {within:?}: {:?}",
        state(f, vm)
    );
    t0.elapsed()
}

#[test]
fn an_idle_vm_sleeps_and_a_request_to_its_url_wakes_it_with_its_programs() {
    if !e2e_ready() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-idle-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (caddyfile, sites_dir, config) = write_caddy_config(tmp.path());
    // A daemon default, for VMs created without --idle-pause.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config")).expect("json");
    cfg["idle_pause_secs"] = 3600.into();
    std::fs::write(&config, cfg.to_string()).expect("config");
    let f = Fcm::start("idle", &["--config", &config.display().to_string()]);
    let _caddy = start_caddy(&f, &caddyfile, tmp.path());

    let vm = f.create(&["--idle-pause", "8s"]);
    let name = vm["name"].as_str().expect("name").to_string();
    let id = vm["id"].as_str().expect("id").to_string();
    let url = vm["url"].as_str().expect("url").to_string();
    assert_eq!(vm["idle_pause_secs"], 8, "{vm}");
    let page = wait_for(Duration::from_secs(30), || {
        let (s, body) = fetch(&f, &url);
        (s == 200).then_some(body)
    })
    .unwrap_or_else(|| panic!("{url} never served: {:?}", fetch(&f, &url)));
    assert!(page.contains(&name), "{page}");
    let site = std::fs::read_to_string(sites_dir.join(format!("{name}.caddy"))).expect("site");
    assert!(site.contains("forward_auth"), "{site}");
    assert!(
        !site.contains(&f.token()),
        "the API token is in Caddy's config:\n{site}"
    );

    // Traffic keeps it awake: a request straight to the guest (not through
    // Caddy) every half second, for 14 s.
    let ip = vm["ip"].as_str().expect("ip").to_string();
    let traffic = f.ns.exec(&[
        "sh",
        "-c",
        &format!(
            "for i in $(seq 28); do curl -s -o /dev/null --max-time 2 http://{ip}:8000/ || exit 1; sleep 0.5; done"
        ),
    ]);
    assert!(traffic.status.success(), "{traffic:?}");
    assert_eq!(
        state(&f, &name),
        ("running".into(), false),
        "paused while it had traffic"
    );

    // A program that must survive the sleep.
    let out = exec(
        &f,
        &name,
        "setsid sleep 3000 >/dev/null 2>&1 < /dev/null & echo $!",
    );
    assert!(out.status.success(), "{out:?}");
    let sleeper = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(sleeper.parse::<u32>().is_ok(), "{sleeper:?}");

    // An attached console keeps it awake well past its idle time.
    let o = Outer::new(&f, "idle");
    let w = o.open(&format!("console {name}"));
    o.wait_screen(&w, "[main]", 60);
    std::thread::sleep(Duration::from_secs(16));
    assert_eq!(
        state(&f, &name),
        ("running".into(), false),
        "paused with a console attached"
    );
    common::kill_pid(o.pane_pid(&w));
    o.wait_dead(&w, 10);

    // Quiet now: it sleeps, its VMM gone.
    let took = wait_idle_paused(&f, &name, Duration::from_secs(90));
    println!("idle-paused {took:?} after the console closed (idle time 8 s)");
    assert!(
        took >= Duration::from_secs(5),
        "paused before it had been idle for long: {took:?}"
    );
    assert!(f.vmms_of(&id).is_empty(), "a VMM runs while it sleeps");
    let log = std::fs::read_to_string(f.log()).unwrap_or_default();
    assert!(log.contains("its limit 8 s): pausing it"), "{log}");

    // A request to its URL wakes it and gets the guest's page.
    let t0 = Instant::now();
    let (status, body) = fetch_within(&f, &url, 120);
    println!("request to a sleeping VM answered in {:?}", t0.elapsed());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&name), "another page: {body}");
    assert_eq!(state(&f, &name), ("running".into(), false));
    assert_eq!(f.vmms_of(&id).len(), 1, "not one VMM after the wake");
    let comm = exec(&f, &name, &format!("cat /proc/{sleeper}/comm"));
    assert_eq!(
        String::from_utf8_lossy(&comm.stdout).trim(),
        "sleep",
        "the guest's program did not survive the sleep: {comm:?}"
    );

    // Asleep again, `exec` wakes it.
    wait_idle_paused(&f, &name, Duration::from_secs(90));
    let out = exec(&f, &name, &format!("cat /proc/{sleeper}/comm"));
    assert!(out.status.success(), "exec did not wake it: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sleep");
    assert_eq!(state(&f, &name).0, "running");

    // Paused by a user: neither a request nor exec wakes it.
    f.ok(&["pause", &name]);
    assert_eq!(state(&f, &name), ("paused".into(), false));
    let (status, body) = fetch_within(&f, &url, 30);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("is paused") && body.contains(&format!("fcm resume {name}")),
        "{body}"
    );
    let out = exec(&f, &name, "true");
    assert!(!out.status.success(), "exec woke a VM a user paused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paused") && err.contains("fcm start"), "{err}");
    assert_eq!(state(&f, &name), ("paused".into(), false));

    // A bad --idle-pause is refused before anything is made.
    let out = f.run(&["create", "--idle-pause", "soon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("duration"),
        "{out:?}"
    );
    f.ok(&["destroy", &name]);

    // The daemon's default applies without the flag; `off` turns it off.
    let d = f.create(&["--no-wait"]);
    assert_eq!(d["idle_pause_secs"], 3600, "{d}");
    let n = f.create(&["--no-wait", "--idle-pause", "off"]);
    assert!(n["idle_pause_secs"].is_null(), "{n}");
    for v in [&d, &n] {
        f.ok(&["destroy", v["name"].as_str().expect("name")]);
    }
}
