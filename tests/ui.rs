//! The web console (`/ui/`), end to end: the real daemon and a guest that
//! really boots (QEMU, TCG) in a network namespace; Debian's Chromium,
//! headless, driven by Playwright (`tests/ui/console.mjs`) inside that
//! namespace, as a person would use the page; the CLI attached to the
//! session the browser opened; raw HTTP for what a browser never sends.
//! Screenshots of each view go to `target/ui-artifacts/`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pty::OnPty;
use common::{Fcm, e2e_ready, wait_for};

const TOOLS: &str = "/var/lib/fcm-test-tools/ui-js";
const CHROMIUM: &str = "/usr/bin/chromium";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether the browser tools are installed (scripts/test.sh does it);
/// missing, the test fails unless FCM_E2E_OPTIONAL=1 (then it says why).
fn browser_ready() -> bool {
    let playwright = format!("{TOOLS}/node_modules/playwright-core/package.json");
    let missing: Vec<&str> = [CHROMIUM, "/usr/bin/node", playwright.as_str()]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "the web console test needs {} (scripts/test.sh installs them)",
        missing.join(", ")
    );
    if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
        eprintln!("skipping: {msg}");
        false
    } else {
        panic!("{msg}");
    }
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-artifacts");
    fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// curl inside the namespace: status line and headers (and body), raw.
fn curl(f: &Fcm, args: &[&str]) -> String {
    let o =
        f.ns.cmd("curl")
            .args(["-sS", "-i", "-k", "--max-time", "10", "--path-as-is"])
            .args(args)
            .output()
            .expect("curl");
    text(&o)
}

fn status_of(answer: &str) -> u16 {
    answer
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An upgrade to the terminal WebSocket with these extra headers.
fn upgrade(f: &Fcm, base: &str, vm: &str, extra: &[String]) -> String {
    let mut args: Vec<String> = [
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in extra {
        args.extend(["-H".to_string(), e.clone()]);
    }
    args.push(format!("{base}/ui/ws?vm={vm}&session=main&create=1"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(f, &refs)
}

/// What a browser never sends, and the headers of the page.
fn raw_http_checks(f: &Fcm, base: &str, vm: &str) {
    let host = base.split("://").nth(1).unwrap_or_default();
    let page = curl(f, &[&format!("{base}/ui/")]);
    assert_eq!(status_of(&page), 200, "{page}");
    for h in [
        "Content-Security-Policy: default-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
        "Content-Type: text/html",
    ] {
        assert!(page.contains(h), "no {h:?} in:\n{page}");
    }
    let root = curl(f, &[&format!("{base}/")]);
    assert_eq!(status_of(&root), 302, "{root}");
    assert!(root.contains("Location: /ui/"), "{root}");
    for bad in ["/ui/../", "/ui/../.token", "/ui/nope.js", "/ui/vendor/"] {
        let a = curl(f, &[&format!("{base}{bad}")]);
        assert_eq!(status_of(&a), 404, "{bad}: {a}");
    }
    let js = curl(
        f,
        &[
            "-H",
            "Accept-Encoding: gzip",
            &format!("{base}/ui/vendor/xterm.js"),
        ],
    );
    assert!(
        js.contains("Content-Encoding: gzip"),
        "{}",
        &js[..400.min(js.len())]
    );

    let origin = format!(
        "Origin: {}://{host}",
        base.split("://").next().unwrap_or("http")
    );
    let good = format!("Sec-WebSocket-Protocol: fcm.v1, fcm.token.{}", f.token());
    let cross = upgrade(
        f,
        base,
        vm,
        &["Origin: http://evil.example".into(), good.clone()],
    );
    assert_eq!(status_of(&cross), 403, "{cross}");
    let none = upgrade(f, base, vm, std::slice::from_ref(&good));
    assert_eq!(status_of(&none), 403, "no Origin: {none}");
    let wrong = upgrade(
        f,
        base,
        vm,
        &[
            origin.clone(),
            format!(
                "Sec-WebSocket-Protocol: fcm.v1, fcm.token.{}",
                "x".repeat(32)
            ),
        ],
    );
    assert_eq!(status_of(&wrong), 401, "{wrong}");
    let missing = upgrade(
        f,
        base,
        vm,
        &[origin, "Sec-WebSocket-Protocol: fcm.v1".into()],
    );
    assert_eq!(status_of(&missing), 401, "{missing}");
    assert!(!wrong.contains(&f.token()) && !missing.contains(&f.token()));
}

/// Runs the browser script in the namespace and answers its steps with
/// `on_step`; returns its output. Fails the test when the script fails.
fn run_browser(
    f: &Fcm,
    mode: &str,
    url: &str,
    vm: &str,
    ip: &str,
    mut on_step: impl FnMut(&str) -> Result<(), String>,
) -> String {
    let sync = tempfile::tempdir_in(common::tmp_root()).expect("sync dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/console.mjs");
    let mut child =
        f.ns.cmd("env")
            .arg(format!("FCM_UI_URL={url}"))
            .arg(format!("FCM_TOKEN={}", f.token()))
            .arg(format!("FCM_VM={vm}"))
            .arg(format!("FCM_VM_IP={ip}"))
            .arg(format!("FCM_UI_MODE={mode}"))
            .arg(format!("FCM_UI_SYNC={}", sync.path().display()))
            .arg(format!("FCM_UI_ARTIFACTS={}", artifacts().display()))
            .arg(format!("FCM_UI_JS={TOOLS}"))
            .args(["node", &script.display().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node");
    let (tx, lines) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(l) => {
                eprintln!("browser: {l}");
                seen.push_str(&l);
                seen.push('\n');
                if let Some(rest) = l.strip_prefix("STEP ") {
                    let (n, what) = rest.split_once(' ').unwrap_or((rest, ""));
                    let said = match on_step(what) {
                        Ok(()) => "ok".to_string(),
                        Err(e) => e,
                    };
                    fs::write(sync.path().join(format!("ack-{n}")), said).expect("ack");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                common::kill_pid(child.id());
                panic!("the browser script did not finish in time:\n{seen}");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if status.is_none() {
        common::kill_pid(child.id());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.is_some_and(|s| s.success()) && seen.lines().any(|l| l == "OK"),
        "the browser script failed:\n{seen}\n{err}"
    );
    seen
}

#[test]
fn web_console_in_a_browser_lists_drives_and_shares_the_terminal() {
    if !e2e_ready() || !browser_ready() {
        return;
    }
    let t0 = Instant::now();
    let f = Fcm::start("ui", &[]);
    let vm = f.create(&[]);
    let name = vm["name"].as_str().expect("name").to_string();
    let ip = vm["ip"].as_str().expect("ip").to_string();
    eprintln!("VM {name} up after {:?}", t0.elapsed());
    raw_http_checks(&f, "http://127.0.0.1:7777", &name);

    let mut cli: Option<OnPty> = None;
    let out = run_browser(
        &f,
        "full",
        "http://127.0.0.1:7777/ui/",
        &name,
        &ip,
        |what| {
            let words: Vec<&str> = what.split_whitespace().collect();
            match words.as_slice() {
                ["cli-attach"] => {
                    let mut p = OnPty::start(&f, &["attach", &name, "main"], 100, 30);
                    p.wait_for("from-browser-15", 60);
                    p.type_keys(b"echo from-cli-$((4*5))\r");
                    p.wait_for("from-cli-20", 30);
                    cli = Some(p);
                    Ok(())
                }
                ["created", made] => {
                    let ls = f.ok(&["ls"]);
                    ls.contains(made)
                        .then_some(())
                        .ok_or(format!("fcm ls has no {made}:\n{ls}"))
                }
                ["destroyed", made] => {
                    let ls = f.ok(&["ls"]);
                    (!ls.contains(made))
                        .then_some(())
                        .ok_or(format!("fcm ls still has {made}:\n{ls}"))
                }
                ["stopped", _] => {
                    // The CLI's attach of the same session ended too.
                    let p = cli.as_mut().ok_or("no CLI attached")?;
                    p.wait_exit(60).ok_or("fcm attach did not end")?;
                    let s = p.screen();
                    s.contains("is stopping")
                        .then_some(())
                        .ok_or(format!("the CLI was not told: {s:?}"))
                }
                _ => Err(format!("unknown step {what}")),
            }
        },
    );
    assert!(out.contains("SEEN 42"), "{out}");
    let vms = f.vms();
    assert!(
        vms.iter()
            .any(|v| v["name"] == name.as_str() && v["state"] == "stopped"),
        "{vms:?}"
    );
    eprintln!(
        "screenshots in {}; web console test took {:?}",
        artifacts().display(),
        t0.elapsed()
    );
}

#[test]
fn web_console_over_tls_reads_42_over_wss() {
    if !e2e_ready() || !browser_ready() {
        return;
    }
    let t0 = Instant::now();
    let f = Fcm::start("uitls", &["--tls", "on"]);
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    let fp = log
        .lines()
        .find_map(|l| l.split("TLS certificate fingerprint ").nth(1))
        .expect("fingerprint in the daemon's log")
        .trim()
        .to_string();
    let o =
        f.ns.cmd("env")
            .arg(format!("HOME={}", f.home().display()))
            .arg(format!("FCM_STATE_DIR={}", f.state().display()))
            .arg("FCM_HOST=https://127.0.0.1:7777")
            .arg(format!("FCM_FINGERPRINT={fp}"))
            .args([common::fcm_bin(), "create", "--json"])
            .output()
            .expect("fcm create");
    assert!(o.status.success(), "create over TLS: {}", text(&o));
    let vm: serde_json::Value = serde_json::from_slice(&o.stdout).expect("create --json");
    let name = vm["name"].as_str().expect("name").to_string();
    let ip = vm["ip"].as_str().expect("ip").to_string();
    raw_http_checks(&f, "https://127.0.0.1:7777", &name);
    let out = run_browser(
        &f,
        "tls",
        "https://127.0.0.1:7777/ui/",
        &name,
        &ip,
        |what| Err(format!("unexpected step {what}")),
    );
    assert!(out.contains("SEEN 42"), "{out}");
    assert!(out.contains("SEEN wss"), "{out}");
    eprintln!("TLS web console test took {:?}", t0.elapsed());
}
