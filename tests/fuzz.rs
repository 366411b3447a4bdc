//! The HTTP API fuzzed against its own description: schemathesis (from
//! PyPI; installed by scripts/test.sh) generates well over 1000 requests
//! from docs/openapi.yaml, valid and invalid, and checks every answer
//! against the description (status codes, schemas, no server errors). The
//! daemon is real, in a namespace, with `max_vms: 0` so that no generated
//! create boots a guest (a create answers 409 instead).

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{Fcm, e2e_ready};

/// The schemathesis the test set-up installed, or one on PATH.
fn schemathesis() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FCM_SCHEMATHESIS").map(PathBuf::from),
        Some(PathBuf::from(
            "/var/lib/fcm-test-tools/venv/bin/schemathesis",
        )),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(p);
    }
    let on_path = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path.then(|| PathBuf::from("schemathesis"))
}

#[test]
fn the_api_survives_a_thousand_generated_requests_and_matches_its_description() {
    if !e2e_ready() {
        return;
    }
    let Some(st) = schemathesis() else {
        let msg = "schemathesis is not installed (scripts/test.sh installs it into /var/lib/fcm-test-tools/venv)";
        if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
            eprintln!("skipping: {msg}");
            return;
        }
        panic!("{msg}");
    };
    let tmp = tempfile::Builder::new()
        .prefix("fcm-fuzz-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let config = tmp.path().join("fcm.json");
    std::fs::write(&config, r#"{"max_vms": 0, "caddy": {"enabled": false}}"#).expect("config");
    let f = Fcm::start("fuzz", &["--config", &config.display().to_string()]);
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let out =
        f.ns.cmd("timeout")
            .arg("900")
            .arg(&st)
            .args(["run"])
            .arg(&spec)
            .args(["-u", "http://127.0.0.1:7777", "-H"])
            .arg(format!("Authorization: Bearer {}", f.token()))
            // The E2B API's routes take the token as X-API-KEY.
            .arg("-H")
            .arg(format!("X-API-KEY: {}", f.token()))
            // A fixed seed: the same 1000+ requests every run, so CI is stable;
            // one worker (schemathesis on CPython 3.11 is not thread-safe here).
            .args(["-n", "80", "--seed", "20261201", "--workers", "1"])
            // Every check runs (the default).
            .args(["--no-color"])
            // An endless stream (tests/metrics.rs follows it).
            .args(["--exclude-path", "/events"])
            .stdin(Stdio::null())
            .output()
            .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" generated"))
        .unwrap_or_default()
        .trim()
        .to_string();
    println!("schemathesis: {summary}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    let generated: u64 = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(generated >= 1000, "only {generated} requests: {summary}");
    assert!(
        !summary.contains("failed") && !summary.contains("errored"),
        "{summary}"
    );
    // No crash: the daemon still answers, and never panicked.
    let (status, _) = f.api("GET", "/health", None, None);
    assert_eq!(status, 200, "the daemon no longer answers");
    let log = std::fs::read_to_string(f.log()).unwrap_or_default();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}
