//! TLS beyond loopback, end to end: the real daemon listens on a veth
//! address in its namespace, a second namespace (the test's, joined by a
//! veth pair) plays the remote client with the real `fcm` CLI, and
//! tcpdump captures the veth. The client pins the daemon's certificate on
//! first use, refuses a new one with a clear message until told to accept
//! it, and the token never crosses the wire in clear text.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fcm, Netns, e2e_ready, fcm_bin, kill_pid, wait_for};

const DAEMON_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";
/// Sent in clear text on purpose, so the capture is shown to see payloads.
const CANARY: &str = "canary-plaintext-7f3a91c2";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// tcpdump on a link of the daemon's namespace; killed by PID on drop.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, link: &str, dir: &Path) -> Self {
        let have = Command::new("sh")
            .args(["-c", "command -v tcpdump"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            have,
            "tcpdump is missing: install it with `apt-get install tcpdump` (scripts/setup.sh does)"
        );
        let file = dir.join("veth.pcap");
        let log = dir.join("tcpdump.log");
        let child = ns
            .cmd("tcpdump")
            .args(["-i", link, "-n", "-U", "--immediate-mode", "-s", "0", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("tcpdump log"))
            .spawn()
            .expect("tcpdump");
        let listening = wait_for(Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("listening on")
                .then_some(())
        });
        assert!(
            listening.is_some(),
            "tcpdump did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Self { child, file }
    }

    /// Stops the capture and returns the pcap's bytes.
    fn finish(&mut self) -> Vec<u8> {
        // Let the last packets reach the file before tcpdump is stopped.
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let done = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if done.is_none() {
            kill_pid(self.child.id());
            let _ = self.child.wait();
        }
        fs::read(&self.file).expect("pcap")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_pid(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// The fingerprints the daemon printed at start-up, in order.
fn printed_fingerprints(f: &Fcm) -> Vec<String> {
    fs::read_to_string(f.log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("TLS certificate fingerprint ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Runs argv on a pty (consoles need a terminal); exits with its status.
const ON_A_PTY: &str =
    "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))";

/// The real `fcm` CLI in the client's namespace, as a remote user: its own
/// home, the token in FCM_TOKEN, no state dir; `attach` on a pty.
fn remote(c: &Netns, home: &Path, token: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = if args.first() == Some(&"attach") {
        let mut p = c.cmd("python3");
        p.args(["-c", ON_A_PTY, "env"]);
        p
    } else {
        c.cmd("env")
    };
    cmd.args([
        "-u",
        "FCM_HOST",
        "-u",
        "FCM_STREAM",
        "-u",
        "FCM_FINGERPRINT",
    ])
    .args(["-u", "XDG_CONFIG_HOME", "-u", "FCM_STATE_DIR"])
    .arg(format!("HOME={}", home.display()))
    .arg(format!("FCM_TOKEN={token}"));
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    let mut child = cmd
        .arg(fcm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fcm");
    let done = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("fcm");
    assert!(done.is_some(), "fcm {args:?} hung: {}", text(&out));
    out
}

/// Sends `data` in clear text to the daemon's port from the client's
/// namespace and returns what came back.
fn plain_probe(c: &Netns, port: u16, data: &str) -> String {
    let script = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(sys.argv[3].encode())
out = b""
try:
    while True:
        b = s.recv(4096)
        if not b:
            break
        out += b
except OSError:
    pass
print(out.decode(errors="replace"))
"#;
    let out = c
        .cmd("python3")
        .args(["-c", script, DAEMON_IP, &port.to_string(), data])
        .output()
        .expect("python3");
    text(&out)
}

#[test]
fn a_remote_client_pins_the_daemon_over_tls_and_the_token_stays_secret() {
    if !e2e_ready() {
        return;
    }
    let t0 = Instant::now();
    let client = Netns::new("tlscli");
    let api = format!("{DAEMON_IP}:7777");
    let stream = format!("{DAEMON_IP}:7778");
    let mut f = Fcm::start_with(
        "tls",
        &["--listen", &api, "--stream-listen", &stream],
        |ns| {
            let sh = |ns: &Netns, argv: &[&str]| {
                let o = ns.exec(argv);
                assert!(o.status.success(), "{argv:?}: {}", text(&o));
            };
            sh(
                ns,
                &[
                    "ip",
                    "link",
                    "add",
                    "fcmtls0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "fcmtls1",
                    "netns",
                    &client.name,
                ],
            );
            sh(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{DAEMON_IP}/24"),
                    "dev",
                    "fcmtls0",
                ],
            );
            sh(ns, &["ip", "link", "set", "fcmtls0", "up"]);
            sh(
                &client,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{CLIENT_IP}/24"),
                    "dev",
                    "fcmtls1",
                ],
            );
            sh(&client, &["ip", "link", "set", "fcmtls1", "up"]);
        },
    );
    let token = f.token();
    let home = f.dir.path().join("remote-home");
    fs::create_dir_all(&home).expect("home");
    let known = home.join(".config/fcm/known_daemons");

    // The daemon says it speaks TLS and which certificate it has; the flag
    // shows the same.
    let log = fs::read_to_string(f.log()).unwrap_or_default();
    assert!(log.contains(&format!("API on https://{api}")), "{log}");
    let fp1 = printed_fingerprints(&f).pop().expect("fingerprint printed");
    let shown = Command::new(fcm_bin())
        .args(["daemon", "--print-fingerprint", "--state-dir"])
        .arg(f.state())
        .output()
        .expect("print-fingerprint");
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        fp1,
        "{}",
        text(&shown)
    );
    let key = fs::metadata(f.state().join(".tls/key.pem")).expect("key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    let mut cap = Capture::start(&f.ns, "fcmtls0", f.dir.path());
    let https = format!("https://{api}");

    // First use: pinned, and said so.
    let out = remote(&client, &home, &token, &[("FCM_HOST", &https)], &["ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("pinned the TLS certificate") && e.contains(&fp1),
        "{e}"
    );
    let pins = fs::read_to_string(&known).expect("known_daemons");
    assert_eq!(pins.trim(), format!("{api} {fp1}"), "{pins}");
    // A bare host that is not loopback means TLS; the pin is reused quietly.
    let out = remote(
        &client,
        &home,
        &token,
        &[("FCM_HOST", DAEMON_IP)],
        &["ls", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(!text(&out).contains("pinned"), "{}", text(&out));
    // The console speaks TLS too: the daemon answers its handshake.
    let out = remote(
        &client,
        &home,
        &token,
        &[("FCM_HOST", &https)],
        &["attach", "nope", "main"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no VM named"), "{}", text(&out));
    // The client never sends the token over plain HTTP beyond loopback.
    let plain = format!("http://{api}");
    let out = remote(&client, &home, &token, &[("FCM_HOST", &plain)], &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("refusing to send the API token in clear text")
            && text(&out).contains("hint:"),
        "{}",
        text(&out)
    );
    // A plain client on either TLS port is told so, in plain text.
    let http = plain_probe(
        &client,
        7777,
        &format!("GET /vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CANARY}\r\n\r\n"),
    );
    assert!(
        http.starts_with("HTTP/1.1 400") && http.contains("speaks TLS"),
        "{http}"
    );
    let line = plain_probe(
        &client,
        7778,
        &format!("{{\"vm\":\"x\",\"token\":\"{CANARY}\"}}\n"),
    );
    assert!(
        line.contains("\"ok\":false") && line.contains("speaks TLS"),
        "{line}"
    );

    // A new certificate (the old files removed, the daemon restarted).
    f.kill_daemon();
    fs::remove_file(f.state().join(".tls/cert.pem")).expect("rm cert");
    fs::remove_file(f.state().join(".tls/key.pem")).expect("rm key");
    f.spawn_daemon();
    let fp2 = printed_fingerprints(&f).pop().expect("fingerprint printed");
    assert_ne!(fp1, fp2);
    for args in [vec!["ls"], vec!["attach", "nope", "main"]] {
        let out = remote(&client, &home, &token, &[("FCM_HOST", &https)], &args);
        let e = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        for want in [
            "presented a different TLS certificate",
            &format!("pinned:    {fp1}"),
            &format!("presented: {fp2}"),
            &known.display().to_string(),
            "line 1",
            &format!("FCM_FINGERPRINT={fp2}"),
            "--print-fingerprint",
        ] {
            assert!(e.contains(want), "{args:?}: {want:?} missing in:\n{e}");
        }
    }
    assert_eq!(
        fs::read_to_string(&known).expect("known").trim(),
        format!("{api} {fp1}")
    );
    // A fingerprint the user gives: a wrong one is refused, the right one
    // accepted and pinned in place of the old.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = remote(
        &client,
        &home,
        &token,
        &[("FCM_HOST", &https), ("FCM_FINGERPRINT", &wrong)],
        &["ls"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not the one FCM_FINGERPRINT names"),
        "{}",
        text(&out)
    );
    let out = remote(
        &client,
        &home,
        &token,
        &[("FCM_HOST", &https), ("FCM_FINGERPRINT", &fp2)],
        &["ls"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(&known).expect("known").trim(),
        format!("{api} {fp2}")
    );
    let out = remote(&client, &home, &token, &[("FCM_HOST", &https)], &["ls"]);
    assert!(out.status.success(), "{}", text(&out));

    // The capture: it saw the connections and clear text (the canary), but
    // never the token.
    let pcap = cap.finish();
    let has = |needle: &[u8]| pcap.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(CANARY.as_bytes()),
        "the capture saw no payload ({} bytes)",
        pcap.len()
    );
    assert!(
        !has(token.as_bytes()),
        "the token crossed the veth in clear text"
    );
    let syns = |port: u16| {
        let o = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&cap.file)
            .arg(format!(
                "tcp dst port {port} and src host {CLIENT_IP} and tcp[tcpflags] & tcp-syn != 0"
            ))
            .stderr(Stdio::null())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    let (api_syns, stream_syns) = (syns(7777), syns(7778));
    eprintln!(
        "capture: {} bytes, {api_syns} connections to 7777, {stream_syns} to 7778",
        pcap.len()
    );
    assert!(
        api_syns >= 6 && stream_syns >= 3,
        "{api_syns} / {stream_syns}"
    );
    eprintln!("tls test took {:?}", t0.elapsed());
}
