//! A real Caddy for tests: internal CA, non-privileged ports, no ACME, run
//! inside the test's namespace and killed (by pid) on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{Fcm, wait_for};

pub const PUBLIC_IP: &str = "203.0.113.7";

pub struct CaddyGuard(pub Child);

impl Drop for CaddyGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn write_caddy_config(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    write_caddy_config_on(dir, 8080, 8443)
}

/// [`write_caddy_config`] with Caddy's HTTP and HTTPS ports (in the test's
/// namespace, 80 and 443 are its own: a client that insists on 443 works).
pub fn write_caddy_config_on(dir: &Path, http: u16, https: u16) -> (PathBuf, PathBuf, PathBuf) {
    let caddyfile = dir.join("Caddyfile");
    let sites = dir.join("fcm.d");
    let storage = dir.join("caddy-storage");
    fs::write(
        &caddyfile,
        format!(
            "{{\n\tadmin 127.0.0.1:2019\n\thttp_port {http}\n\thttps_port {https}\n\tdefault_bind 127.0.0.1\n\
             \tlocal_certs\n\tskip_install_trust\n\tauto_https disable_redirects\n\
             \tstorage file_system {{\n\t\troot {}\n\t}}\n}}\n\n\
             # The user's own site: fcm must never rewrite it.\n\
             http://user.example:{http} {{\n\trespond \"user site\"\n}}\n",
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

pub fn start_caddy(f: &Fcm, caddyfile: &Path, dir: &Path) -> CaddyGuard {
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
        super::tcp_open(&f.ns, "127.0.0.1", 2019).then_some(())
    });
    assert!(
        up.is_some(),
        "caddy did not start: {}",
        fs::read_to_string(dir.join("caddy.log")).unwrap_or_default()
    );
    guard
}

/// (status, body) of the VM's URL, fetched through Caddy inside the namespace.
pub fn fetch(f: &Fcm, url: &str) -> (u16, String) {
    fetch_within(f, url, 10)
}

/// [`fetch`] that gives the answer up to `secs` seconds.
pub fn fetch_within(f: &Fcm, url: &str, secs: u32) -> (u16, String) {
    let host = url.trim_start_matches("https://");
    let secs = secs.to_string();
    let out = f.ns.exec(&[
        "curl",
        "-sk",
        "--max-time",
        &secs,
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

/// The files in fcm's sites directory but the E2B API's `_e2b.caddy`
/// (published by default while Caddy is on; tests/e2b.rs looks at it).
pub fn sites(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "_e2b.caddy")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
