//! The E2B API with the real E2B Python SDK (`e2b` 2.63.0 from PyPI,
//! installed by scripts/test.sh into /var/lib/fcm-test-tools/e2b-venv) and
//! a real QEMU guest (and the JS SDK, npm e2b 2.51.0, and the Python SDK
//! 2.50.0, before the v2 paths): the SDK's documented usage (tests/e2b/sdk_check.py)
//! runs unchanged with `E2B_API_URL=E2B_SANDBOX_URL=http://127.0.0.1:7777`
//! and the fcm token as `E2B_API_KEY`, inside the test's namespace; the
//! sandboxes it makes are fcm VMs (`fcm ls` shows their metadata, `fcm
//! exec` runs in them) and end at their timeout.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

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
