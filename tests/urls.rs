//! Public URLs end to end: the real daemon and a real Caddy (internal CA,
//! non-privileged ports, no ACME) in a network namespace, in front of guests
//! that really boot (QEMU backend).

mod common;

use std::fs;
use std::time::Duration;

use common::caddy::{fetch, sites, start_caddy, write_caddy_config};
use common::{Fcm, e2e_ready, wait_for};

#[test]
fn every_vm_gets_its_own_https_url_and_loses_it_on_destroy() {
    if !e2e_ready() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-caddy-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (caddyfile, sites_dir, config) = write_caddy_config(tmp.path());
    let f = Fcm::start("urls", &["--config", &config.display().to_string()]);
    let caddy = start_caddy(&f, &caddyfile, tmp.path());
    // The daemon added its one import line at start; from now on the
    // user's Caddyfile must not change.
    let main_before = fs::read(&caddyfile).expect("Caddyfile");
    assert!(
        String::from_utf8_lossy(&main_before).contains("import "),
        "no import line"
    );

    let a = f.create(&[]);
    let b = f.create(&[]);
    for v in [&a, &b] {
        let name = v["name"].as_str().expect("name");
        let url = v["url"].as_str().expect("url");
        assert_eq!(url, format!("https://{name}.203-0-113-7.sslip.io"));
        assert!(v["warnings"].is_null(), "unexpected warnings: {v}");
        let page = wait_for(Duration::from_secs(20), || {
            let (s, body) = fetch(&f, url);
            (s == 200).then_some(body)
        });
        let page = page.unwrap_or_else(|| panic!("{url} never served: {:?}", fetch(&f, url)));
        assert!(page.contains(name), "{url} served another page: {page}");
    }
    let ls = f.ok(&["ls"]);
    assert!(ls.contains(a["url"].as_str().expect("url")), "{ls}");

    // Hostile names never reach Caddy's configuration.
    let before = sites(&sites_dir);
    for name in ["evil.com { }", "../../x", "a\nb"] {
        let body = serde_json::json!({ "name": name }).to_string();
        assert_eq!(
            f.api("POST", "/vms", Some(&f.token()), Some(body.as_bytes()))
                .0,
            400
        );
    }
    assert_eq!(sites(&sites_dir), before);

    // A stopped VM's URL answers at once with a clear status.
    let a_name = a["name"].as_str().expect("name");
    let a_url = a["url"].as_str().expect("url");
    f.ok(&["stop", a_name]);
    let (s, body) = fetch(&f, a_url);
    assert_eq!(s, 503, "{body}");
    assert!(
        body.contains("is stopped") && body.contains("fcm start"),
        "{body}"
    );
    f.ok(&["start", a_name]);
    assert!(
        wait_for(Duration::from_secs(20), || (fetch(&f, a_url).0 == 200)
            .then_some(()))
        .is_some()
    );

    // Destroy removes the site; the user's Caddyfile is byte-identical.
    let b_url = b["url"].as_str().expect("url");
    f.ok(&["destroy", b["name"].as_str().expect("name")]);
    let (s, body) = fetch(&f, b_url);
    assert!(
        s != 200 && !body.contains(b["name"].as_str().expect("name")),
        "{b_url} still served: {s} {body}"
    );
    f.ok(&["destroy", a_name]);
    assert!(
        sites(&sites_dir).is_empty(),
        "site files left: {:?}",
        sites(&sites_dir)
    );
    assert_eq!(
        fs::read(&caddyfile).expect("Caddyfile"),
        main_before,
        "the user's Caddyfile changed"
    );
    let out = f.ns.exec(&[
        "curl",
        "-s",
        "--resolve",
        "user.example:8080:127.0.0.1",
        "http://user.example:8080/",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "user site");

    // With Caddy down, create still gives a working VM, says why the URL is
    // not live, and leaves nothing half-written.
    drop(caddy);
    let c = f.create(&[]);
    let c_name = c["name"].as_str().expect("name");
    let warnings = c["warnings"].to_string();
    assert!(warnings.contains("not live"), "no warning: {c}");
    assert_eq!(c["state"], "running");
    assert_eq!(
        String::from_utf8_lossy(&f.ssh(c_name, "hostname").stdout).trim(),
        c_name
    );
    assert!(
        sites(&sites_dir).is_empty(),
        "half-written site: {:?}",
        sites(&sites_dir)
    );
    assert_eq!(fs::read(&caddyfile).expect("Caddyfile"), main_before);
}

#[test]
fn a_url_that_could_not_be_published_goes_live_once_caddy_is_up() {
    if !e2e_ready() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-caddy-late-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (caddyfile, _sites, config) = write_caddy_config(tmp.path());
    let f = Fcm::start("urllate", &["--config", &config.display().to_string()]);
    // Caddy is down at create: the VM works, the URL is not live yet.
    let v = f.create(&[]);
    let name = v["name"].as_str().expect("name").to_string();
    let url = v["url"].as_str().expect("url").to_string();
    assert!(v["warnings"].to_string().contains("not live"), "{v}");
    // Caddy comes up; nobody touches fcm; the URL goes live.
    let _caddy = start_caddy(&f, &caddyfile, tmp.path());
    let page = wait_for(Duration::from_secs(60), || {
        let (s, body) = fetch(&f, &url);
        (s == 200).then_some(body)
    });
    let page = page.unwrap_or_else(|| panic!("{url} never went live: {:?}", fetch(&f, &url)));
    assert!(page.contains(&name), "{page}");
    // The guest dies behind fcm's back: its URL turns into the stopped page.
    let id = v["id"].as_str().expect("id");
    for pid in f.vmms_of(id) {
        common::kill_pid(pid);
    }
    let stopped = wait_for(Duration::from_secs(60), || {
        let (s, body) = fetch(&f, &url);
        (s == 503 && body.contains("is stopped")).then_some(())
    });
    assert!(stopped.is_some(), "still {:?}", fetch(&f, &url));
    assert_eq!(f.vm(&name)["state"], "stopped");
}

#[test]
fn ls_answers_while_a_caddy_reload_hangs() {
    if !e2e_ready() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fcm-caddy-hang-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let (caddyfile, sites_dir, _) = write_caddy_config(tmp.path());
    let d = tmp.path();
    // A reload that hangs while the file `hang` exists (at most 60 s).
    let script = d.join("reload.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e {d}/hang ] || exit 0\ntouch {d}/reload-started\n\
             i=0; while [ -e {d}/hang ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
             touch {d}/reload-finished\n",
            d = d.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = d.join("fcm-hang.json");
    let cfg = serde_json::json!({
        "caddy": {
            "caddyfile": caddyfile,
            "sites_dir": sites_dir,
            "admin": "127.0.0.1:2019",
            "public_ip": "203.0.113.7",
            "reload_command": [script],
        }
    });
    fs::write(&config, cfg.to_string()).expect("config");
    let f = Fcm::start("urlhang", &["--config", &config.display().to_string()]);
    let a = f.create(&["--no-wait", "--name", "hang-a"]);
    f.create(&["--no-wait", "--name", "hang-b"]);
    let id = a["id"].as_str().expect("id");

    // From now on a reload hangs; then A's VMM dies.
    fs::write(d.join("hang"), "").expect("hang");
    for pid in f.vmms_of(id) {
        common::kill_pid(pid);
    }
    // Housekeeping notices and switches A's URL: the reload starts, and hangs.
    let started = wait_for(Duration::from_secs(60), || {
        let _ = f.run(&["ls"]);
        d.join("reload-started").exists().then_some(())
    });
    assert!(started.is_some(), "no reload started");

    // While it hangs: ls, get and name resolution answer.
    let mut ls = f.cli();
    ls.args(["ls", "--json"])
        .stdout(std::process::Stdio::piped());
    let mut child = ls.spawn().expect("ls");
    let done = wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("ls output");
    assert!(done.is_some(), "ls did not return while the reload hung");
    let reload_still_running = !d.join("reload-finished").exists();
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json");
    let state = |n: &str| {
        vms.as_array()
            .and_then(|l| l.iter().find(|v| v["name"] == n))
            .map(|v| v["state"].clone())
    };
    assert_eq!(state("hang-a"), Some("stopped".into()), "{vms}");
    assert_eq!(state("hang-b"), Some("running".into()), "{vms}");
    let get = f.run(&["ssh", "hang-zzz"]);
    assert!(!get.status.success(), "an unknown VM must be refused");
    // The order: ls answered before the hanging reload finished.
    assert!(
        reload_still_running && !d.join("reload-finished").exists(),
        "the reload finished before ls was checked: the test proved nothing"
    );
    let _ = fs::remove_file(d.join("hang"));
    let finished = wait_for(Duration::from_secs(30), || {
        d.join("reload-finished").exists().then_some(())
    });
    assert!(finished.is_some());
}
