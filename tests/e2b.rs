//! The E2B API with the real E2B Python SDK (`e2b` 2.63.0 from PyPI,
//! installed by scripts/test.sh into /var/lib/fcm-test-tools/e2b-venv) and
//! a real QEMU guest (and the JS SDK, npm e2b 2.51.0, and the Python SDK
//! 2.50.0, before the v2 paths): the SDK's documented usage (tests/e2b/sdk_check.py)
//! runs unchanged with `E2B_API_URL=E2B_SANDBOX_URL=http://127.0.0.1:7777`
//! and the fcm token as `E2B_API_KEY`, inside the test's namespace; the
//! sandboxes it makes are fcm VMs (`fcm ls` shows their metadata, `fcm
//! exec` runs in them) and end at their timeout. The same SDK also by
//! `E2B_DOMAIN` through a real Caddy (its internal CA in `SSL_CERT_FILE`,
//! the names answered by a DNS stub in the namespace), and over the
//! daemon's own TLS.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::caddy::{PUBLIC_IP, start_caddy, write_caddy_config_on};
use common::{Fcm, e2e_ready, wait_for};

const SDK_VERSION: &str = "2.63.0";
/// The JS SDK (npm), pinned.
const JS_SDK_VERSION: &str = "2.51.0";
const JS_SDK_DIR: &str = "/var/lib/fcm-test-tools/e2b-js/node_modules";

/// An SDK from before the v2 paths (POST /v2/sandboxes came in 2.51).
const OLD_SDK_VERSION: &str = "2.50.0";

/// The venv's Python with that version of the SDK, if it is installed.
fn sdk_python_in(venv: &str, version: &str) -> Option<PathBuf> {
    let py = PathBuf::from(format!("/var/lib/fcm-test-tools/{venv}/bin/python"));
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('e2b'))",
        ])
        .output()
        .ok()?;
    (String::from_utf8_lossy(&out.stdout).trim() == version).then_some(py)
}

/// The venv's Python with the pinned SDK, if it is installed.
fn sdk_python() -> Option<PathBuf> {
    sdk_python_in("e2b-venv", SDK_VERSION)
}

/// Runs the SDK script in the daemon's namespace; its stdout.
fn sdk(f: &Fcm, py: &PathBuf, args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_check.py");
    let url = format!("http://{}", f.api_addr());
    let out =
        f.ns.cmd("env")
            .arg(format!("E2B_API_URL={url}"))
            .arg(format!("E2B_SANDBOX_URL={url}"))
            .arg(format!("E2B_API_KEY={}", f.token()))
            .args(["timeout", "600"])
            .arg(py)
            .arg(&script)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the E2B SDK script {args:?} failed: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- daemon log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    stdout
}

fn word_after<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} line in:\n{out}"))
}

/// Skips (FCM_E2E_OPTIONAL=1) or fails when a test tool is missing.
fn missing(msg: &str) {
    if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
        eprintln!("skipping: {msg}");
        return;
    }
    panic!("{msg}");
}

#[test]
fn an_e2b_sdk_before_2_51_uses_the_v1_paths() {
    if !e2e_ready() {
        return;
    }
    let Some(py) = sdk_python_in("e2b-old-venv", OLD_SDK_VERSION) else {
        return missing(&format!(
            "the E2B SDK {OLD_SDK_VERSION} is not installed (scripts/test.sh installs it into /var/lib/fcm-test-tools/e2b-old-venv)"
        ));
    };
    // 2.50's client has no /v2 create or connect: it calls POST /sandboxes
    // and POST /sandboxes/{id}/connect (its e2b/api/client/api/sandboxes/).
    let f = Fcm::start("e2bold", &[]);
    let out = sdk(&f, &py, &["old", &format!("old{}", std::process::id())]);
    assert!(out.lines().any(|l| l == "OK old-sdk"), "{out}");
    assert!(
        f.vms().is_empty(),
        "the old SDK's killed sandbox is still listed"
    );
}

#[test]
fn the_e2b_js_sdk_drives_fcm_vms() {
    if !e2e_ready() {
        return;
    }
    let pkg = PathBuf::from(JS_SDK_DIR).join("e2b/package.json");
    let version = fs::read_to_string(&pkg)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    if version.as_deref() != Some(JS_SDK_VERSION) {
        return missing(&format!(
            "the E2B JS SDK {JS_SDK_VERSION} is not installed in {JS_SDK_DIR} (scripts/test.sh installs it)"
        ));
    }
    let f = Fcm::start("e2bjs", &[]);
    let run = format!("js{}", std::process::id());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_check.js");
    let url = format!("http://{}", f.api_addr());
    let out =
        f.ns.cmd("env")
            .arg(format!("E2B_API_URL={url}"))
            .arg(format!("E2B_SANDBOX_URL={url}"))
            .arg(format!("E2B_API_KEY={}", f.token()))
            .arg(format!("NODE_PATH={JS_SDK_DIR}"))
            .args(["timeout", "600", "node"])
            .arg(&script)
            .arg(&run)
            .stdin(Stdio::null())
            .output()
            .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the E2B JS SDK script failed: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- daemon log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    for check in [
        "run",
        "exit-code",
        "envs-cwd",
        "on-stdout",
        "files-1mib",
        "files",
        "watch-dir",
        "list-by-metadata",
        "kill",
    ] {
        assert!(
            stdout.lines().any(|l| l == format!("OK {check}")),
            "no OK {check} in:\n{stdout}"
        );
    }
    let id = word_after(&stdout, "SANDBOX ");
    assert!(
        !f.vms().iter().any(|v| v["name"] == id),
        "killed sandbox {id} is still listed"
    );
}

#[test]
fn the_e2b_python_sdk_drives_fcm_vms() {
    if !e2e_ready() {
        return;
    }
    let Some(py) = sdk_python() else {
        return missing(&format!(
            "the E2B SDK {SDK_VERSION} is not installed (scripts/test.sh installs it into /var/lib/fcm-test-tools/e2b-venv)"
        ));
    };
    let f = Fcm::start("e2b", &[]);
    let run = format!("run{}", std::process::id());
    let out = sdk(&f, &py, &["main", &run]);
    for check in [
        "run",
        "exit-code",
        "envs-cwd",
        "background-on-stdout",
        "list-kill",
        "connect",
        "stdin",
        "pty",
        "files-1mib",
        "list",
        "exists",
        "make-dir",
        "write-files-depth-info",
        "watch-dir",
        "rename",
        "remove",
        "list-by-metadata",
        "metrics",
        "pause-connect",
        "fork",
        "wrong-key",
        "unknown-template",
        "kill-unknown",
        "token-of-another",
        "auto-pause",
        "set-timeout",
    ] {
        assert!(
            out.lines().any(|l| l == format!("OK {check}")),
            "no OK {check} in:\n{out}"
        );
    }
    let id = word_after(&out, "SANDBOX ").to_owned();
    let short = word_after(&out, "SHORT ").to_owned();

    // The sandbox is an fcm VM: listed with its E2B id and metadata, and
    // fcm's own commands work on it.
    let vm = f
        .vms()
        .into_iter()
        .find(|v| v["name"] == id.as_str())
        .unwrap_or_else(|| panic!("sandbox {id} is not in fcm ls"));
    assert_eq!(vm["e2b"]["sandbox_id"], id.as_str());
    assert_eq!(vm["e2b"]["metadata"]["run"], run.as_str());
    let table = f.ok(&["ls"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("suite=fcm-e2b")),
        "{table}"
    );
    assert_eq!(
        f.ok(&["exec", &id, "--", "wc", "-c", "/root/e2b/blob.bin"])
            .trim(),
        "1048576 /root/e2b/blob.bin"
    );

    // set_timeout(5) on the second: gone from fcm ls within ~15 s.
    let gone = wait_for(Duration::from_secs(20), || {
        (!f.vms().iter().any(|v| v["name"] == short.as_str())).then_some(())
    });
    assert!(
        gone.is_some(),
        "sandbox {short} outlived its 5 s timeout\n--- daemon log ---\n{}",
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    assert!(
        fs::read_to_string(f.log())
            .unwrap_or_default()
            .contains(&format!("sandbox {short} reached its timeout: destroyed")),
        "the daemon's log does not say why {short} ended"
    );

    // kill(): the SDK says True, then False; the VM is gone.
    let out = sdk(&f, &py, &["kill", &id]);
    assert!(out.lines().any(|l| l == "OK kill"), "{out}");
    assert!(
        !f.vms().iter().any(|v| v["name"] == id.as_str()),
        "killed sandbox {id} is still listed"
    );
}

/// `/etc/netns/<ns>/` (which `ip netns exec` bind-mounts over `/etc`),
/// removed on drop.
struct EtcNetns(PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A process of the test's, killed by its pid on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `sdk_check.py short <mode>` in the namespace with `env`; its stdout,
/// after checking the core passed and the sandbox is gone from fcm.
fn sdk_short(
    f: &Fcm,
    py: &PathBuf,
    mode: &str,
    env: &[(&str, String)],
    caddy_log: &std::path::Path,
) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_check.py");
    let mut cmd = f.ns.cmd("env");
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    let out = cmd
        .arg(format!("E2B_API_KEY={}", f.token()))
        .args(["timeout", "300"])
        .arg(py)
        .arg(&script)
        .args(["short", mode])
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the E2B SDK ({mode}) failed: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- daemon log ---\n{}\n--- caddy log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(f.log()).unwrap_or_default(),
        fs::read_to_string(caddy_log).unwrap_or_default()
    );
    for check in ["run", "files", "kill"] {
        assert!(
            stdout.lines().any(|l| l == format!("OK {check}")),
            "no OK {check} ({mode}) in:\n{stdout}"
        );
    }
    // Killed: its VM and VMM are gone (the script saw the daemon say 404
    // after; the CLI is not pointed at a TLS daemon here).
    let id = word_after(&stdout, "SANDBOX ");
    let vmms = f.vmm_pids();
    assert!(
        vmms.is_empty(),
        "killed sandbox {id} ({mode}) left VMMs {vmms:?}"
    );
    stdout
}

/// The daemon's address beyond loopback (a second address of the
/// namespace's `lo`: not a loopback address, so the API speaks TLS).
const DAEMON_IP: &str = "10.213.0.1";

/// The pinned SDK and Caddy, or why the test cannot run.
fn sdk_and_caddy() -> Result<PathBuf, String> {
    let py = sdk_python().ok_or_else(|| format!(
        "the E2B SDK {SDK_VERSION} is not installed (scripts/test.sh installs it into /var/lib/fcm-test-tools/e2b-venv)"
    ))?;
    std::process::Command::new("caddy")
        .arg("version")
        .output()
        .map_err(|_| "caddy is not installed (apt-get install caddy)".to_owned())?;
    Ok(py)
}

#[test]
fn the_e2b_sdk_reaches_fcm_by_e2b_domain_through_caddy() {
    if !e2e_ready() {
        return;
    }
    let py = match sdk_and_caddy() {
        Ok(py) => py,
        Err(why) => return missing(&why),
    };
    let tmp = tempfile::Builder::new()
        .prefix("fcm-e2bdomain-")
        .tempdir_in(common::tmp_root())
        .expect("tempdir");
    // Caddy on 443 (the SDK's port) inside the namespace.
    let (caddyfile, sites_dir, config) = write_caddy_config_on(tmp.path(), 80, 443);
    let domain = format!("{}.sslip.io", PUBLIC_IP.replace('.', "-"));
    let etc = std::cell::RefCell::new(None);
    let mut f = Fcm::start_with(
        "e2bdom",
        &["--config", &config.display().to_string()],
        |ns| {
            // Names resolve through the test's DNS stub (below) in the namespace.
            let dir = PathBuf::from("/etc/netns").join(&ns.name);
            fs::create_dir_all(&dir).expect("/etc/netns/<ns>");
            *etc.borrow_mut() = Some(EtcNetns(dir.clone()));
            fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
        },
    );
    let dns = Killed(
        f.ns.cmd("python3")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/dns_stub.py"))
            .arg(&domain)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("DNS stub"),
    );
    let probe = format!("49983-iprobe.{domain}");
    let resolved = wait_for(Duration::from_secs(10), || {
        let o = f.ns.exec(&["getent", "hosts", &probe]);
        String::from_utf8_lossy(&o.stdout)
            .starts_with("127.0.0.1")
            .then_some(())
    });
    assert!(
        resolved.is_some(),
        "the DNS stub does not answer for {probe}"
    );
    let _caddy = start_caddy(&f, &caddyfile, tmp.path());

    // The daemon publishes the E2B site once Caddy runs (housekeeping retries).
    let site = sites_dir.join("_e2b.caddy");
    let published = wait_for(Duration::from_secs(30), || {
        log_has_line(&f, &format!("E2B through Caddy: E2B_DOMAIN={domain} ")).then_some(())
    });
    assert!(
        published.is_some(),
        "the E2B site was not published\n--- daemon log ---\n{}",
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    let text = fs::read_to_string(&site).expect("the E2B site file");
    assert!(text.contains(&format!("api.{domain} {{")), "{text}");
    assert!(text.contains("reverse_proxy 127.0.0.1:7777 {"), "{text}");

    // E2B_DOMAIN alone: https://api.<domain> and https://49983-<id>.<domain>,
    // resolved to 127.0.0.1:443 where only Caddy listens.
    let ca = tmp
        .path()
        .join("caddy-storage/pki/authorities/local/root.crt");
    let out = sdk_short(
        &f,
        &py,
        "domain",
        &[
            ("E2B_DOMAIN", domain.clone()),
            ("SSL_CERT_FILE", ca.display().to_string()),
        ],
        &tmp.path().join("caddy.log"),
    );
    assert!(out.lines().any(|l| l == "OK domain"), "{out}");

    // A name under the domain that is no sandbox's: Caddy's 404, not the API.
    let o = f.ns.exec(&[
        "curl",
        "-s",
        "--max-time",
        "10",
        "--cacert",
        &ca.display().to_string(),
        "-w",
        "\n%{http_code}",
        &format!("https://other.{domain}/sandboxes"),
    ]);
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(body.ends_with("\n404"), "{body}");

    // e2b.caddy false: the daemon takes its E2B site away.
    f.kill_daemon();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config).expect("config")).expect("json");
    cfg["e2b"] = serde_json::json!({"caddy": false});
    fs::write(&config, cfg.to_string()).expect("config");
    f.spawn_daemon();
    let removed = wait_for(Duration::from_secs(30), || (!site.exists()).then_some(()));
    assert!(
        removed.is_some(),
        "the E2B site stayed with e2b.caddy false\n--- daemon log ---\n{}",
        fs::read_to_string(f.log()).unwrap_or_default()
    );
    drop(dns);
}

#[test]
fn the_e2b_sdk_reaches_fcm_over_the_daemons_own_tls() {
    if !e2e_ready() {
        return;
    }
    let Some(py) = sdk_python() else {
        return missing(&format!(
            "the E2B SDK {SDK_VERSION} is not installed (scripts/test.sh installs it into /var/lib/fcm-test-tools/e2b-venv)"
        ));
    };
    let api = format!("{DAEMON_IP}:7777");
    let stream = format!("{DAEMON_IP}:7778");
    let f = Fcm::start_with(
        "e2btls",
        &["--listen", &api, "--stream-listen", &stream],
        |ns| {
            let argv = ["ip", "addr", "add", &format!("{DAEMON_IP}/32"), "dev", "lo"];
            let o = ns.exec(&argv);
            assert!(o.status.success(), "{argv:?}: {o:?}");
        },
    );
    // Both URLs at https://<address>:7777, the daemon's certificate the CA bundle.
    let url = format!("https://{api}");
    sdk_short(
        &f,
        &py,
        "tls",
        &[
            ("E2B_API_URL", url.clone()),
            ("E2B_SANDBOX_URL", url),
            (
                "SSL_CERT_FILE",
                f.state().join(".tls/cert.pem").display().to_string(),
            ),
        ],
        &f.log(),
    );
}

fn log_has_line(f: &Fcm, needle: &str) -> bool {
    fs::read_to_string(f.log())
        .unwrap_or_default()
        .contains(needle)
}
