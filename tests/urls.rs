//! Public URLs end to end: the real daemon and a real Caddy (internal CA,
//! non-privileged ports, no ACME) in a network namespace, in front of guests
//! that really boot (QEMU backend).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Fcm, e2e_ready, wait_for};

const PUBLIC_IP: &str = "203.0.113.7";

struct CaddyGuard(Child);

impl Drop for CaddyGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_caddy_config(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let caddyfile = dir.join("Caddyfile");
    let sites = dir.join("fcm.d");
    let storage = dir.join("caddy-storage");
    fs::write(
        &caddyfile,
        format!(
            "{{\n\tadmin 127.0.0.1:2019\n\thttp_port 8080\n\thttps_port 8443\n\tdefault_bind 127.0.0.1\n\
             \tlocal_certs\n\tskip_install_trust\n\tauto_https disable_redirects\n\
             \tstorage file_system {{\n\t\troot {}\n\t}}\n}}\n\n\
             # The user's own site: fcm must never rewrite it.\n\
             http://user.example:8080 {{\n\trespond \"user site\"\n}}\n",
            storage.display()
        ),
    )
    .expect("Caddyfile");
    let config = dir.join("fcm.json");
    let cfg = serde_json::json!({
        "caddy": {
            "caddyfile": caddyfile,
            "sites_dir": sites,
            "admin": "127.0.0.1:2019",
            "public_ip": PUBLIC_IP,
        }
    });
    fs::write(&config, cfg.to_string()).expect("config");
    (caddyfile, sites, config)
}

fn start_caddy(f: &Fcm, caddyfile: &Path, dir: &Path) -> CaddyGuard {
    let log = fs::File::create(dir.join("caddy.log")).expect("log");
    let child =
        f.ns.cmd("env")
            .arg(format!("HOME={}", dir.display()))
            .arg(format!(
                "XDG_CONFIG_HOME={}",
                dir.join("xdg-config").display()
            ))
            .arg(format!("XDG_DATA_HOME={}", dir.join("xdg-data").display()))
            .args(["caddy", "run", "--adapter", "caddyfile", "--config"])
            .arg(caddyfile)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("caddy");
    let guard = CaddyGuard(child);
    let up = wait_for(Duration::from_secs(15), || {
        common::tcp_open(&f.ns, "127.0.0.1", 2019).then_some(())
    });
    assert!(
        up.is_some(),
        "caddy did not start: {}",
        fs::read_to_string(dir.join("caddy.log")).unwrap_or_default()
    );
    guard
}

/// (status, body) of the VM's URL, fetched through Caddy inside the namespace.
fn fetch(f: &Fcm, url: &str) -> (u16, String) {
    let host = url.trim_start_matches("https://");
    let out = f.ns.exec(&[
        "curl",
        "-sk",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--resolve",
        &format!("{host}:8443:127.0.0.1"),
        &format!("https://{host}:8443/"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn sites(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

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
