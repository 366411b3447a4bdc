//! Bad input gets a clear error and loses nothing. These need a daemon (in a
//! namespace) but no booted guest.

mod common;

use std::fs;

use common::{Fcm, fcm_bin};

fn entries(f: &Fcm) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(f.state())
        .expect("state dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    if !r {
        eprintln!("skipping: needs root for network namespaces");
    }
    r
}

fn root_and_assets() -> bool {
    let ok = root() && common::assets().join("base-rootfs.img").exists();
    if !ok {
        eprintln!("skipping: needs root and the guest assets (scripts/setup.sh)");
    }
    ok
}

/// A failed create left no VM directory and no tap.
fn assert_create_left_nothing(f: &Fcm) {
    let left: Vec<_> = entries(f)
        .into_iter()
        .filter(|n| !n.starts_with('.') && n != "ssh" && n != "agent")
        .collect();
    assert!(left.is_empty(), "create left {left:?}");
    assert!(
        !f.ns.links().iter().any(|l| l.starts_with("tap_")),
        "tap left: {:?}",
        f.ns.links()
    );
}

#[test]
fn api_rejects_bad_tokens_names_bodies_and_reports_missing_assets() {
    if !root() {
        return;
    }
    // Assets that do not exist: create must fail with 503 and a hint.
    let f = Fcm::start("errs", &["--kernel", "/nonexistent/vmlinux.bin"]);
    let t = f.token();
    let before = entries(&f);

    assert_eq!(f.api("GET", "/vms", None, None).0, 401);
    let (s, body) = f.api("GET", "/vms", Some("wrong-token"), None);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("invalid token"), "{body}");
    assert_eq!(f.api("GET", "/vms", Some(&t), None).0, 200);
    assert_eq!(f.api("GET", "/vms/no-such-vm", Some(&t), None).0, 404);
    assert_eq!(f.api("POST", "/vms/abcdefgh/stop", Some(&t), None).0, 404);
    assert_eq!(f.api("PUT", "/vms", Some(&t), None).0, 405);

    for hostile in [
        "..%2F..%2Fetc",
        "%24(reboot)",
        "a%3Brm%20-rf%20%2F",
        &"x".repeat(300),
        "CAPS",
    ] {
        let (s, body) = f.api("GET", &format!("/vms/{hostile}"), Some(&t), None);
        assert_eq!(s, 400, "{hostile}: {body}");
        let (s, _) = f.api("DELETE", &format!("/vms/{hostile}"), Some(&t), None);
        assert_eq!(s, 400, "{hostile}");
    }
    for name in [
        "../../etc",
        "$(reboot)",
        "a;b",
        "x".repeat(100).as_str(),
        "Ünïcode",
    ] {
        let body = serde_json::json!({ "name": name }).to_string();
        let (s, resp) = f.api("POST", "/vms", Some(&t), Some(body.as_bytes()));
        assert_eq!(s, 400, "{name}: {resp}");
        assert!(resp.contains("invalid VM name"), "{resp}");
    }
    let (s, resp) = f.api("POST", "/vms", Some(&t), Some(b"{\"name\": "));
    assert_eq!(s, 400, "{resp}");
    assert!(resp.contains("malformed JSON"), "{resp}");
    let (s, _) = f.api("POST", "/vms", Some(&t), Some(br#"{"cpus": 0}"#));
    assert_eq!(s, 400);
    let (s, _) = f.api(
        "POST",
        "/vms",
        Some(&t),
        Some(br#"{"ssh_public_key": "ssh-ed25519 AAAA\nevil"}"#),
    );
    assert_eq!(s, 400);
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(200_000));
    let (s, _) = f.api("POST", "/vms", Some(&t), Some(big.as_bytes()));
    assert_eq!(s, 413);

    let (s, resp) = f.api("POST", "/vms", Some(&t), Some(b"{}"));
    assert_eq!(s, 503, "{resp}");
    assert!(
        resp.contains("guest kernel") && resp.contains("hint"),
        "{resp}"
    );
    // The CLI says the same with a hint line and exit code 1.
    let out = f.run(&["create", "--no-wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("guest kernel not found") && err.contains("hint:"),
        "{err}"
    );
    let out = f.run(&["stop", "../../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid VM name"));

    // None of it touched the state dir.
    assert_eq!(entries(&f), before);
}

#[test]
fn missing_firecracker_binary_is_503_with_a_hint() {
    if !root() {
        return;
    }
    let f = Fcm::start(
        "nofc",
        &[
            "--backend",
            "firecracker",
            "--firecracker-bin",
            "/nonexistent/firecracker",
        ],
    );
    let (s, resp) = f.api("POST", "/vms", Some(&f.token()), Some(b"{}"));
    // The kernel may be missing too on a machine without the set-up; either
    // way it is a missing prerequisite.
    assert_eq!(s, 503, "{resp}");
    if common::assets().join("vmlinux.bin").exists()
        && common::assets().join("base-rootfs.img").exists()
    {
        assert!(
            resp.contains("firecracker") && resp.contains("install-firecracker"),
            "{resp}"
        );
    }
}

#[test]
fn daemon_refuses_a_second_instance_and_non_root() {
    if !root() {
        return;
    }
    let f = Fcm::start("lock", &[]);
    let second =
        f.ns.cmd(fcm_bin())
            .args(f.daemon_args())
            .output()
            .expect("second daemon");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another fcm daemon already owns"), "{err}");

    let nobody = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            fcm_bin(),
            "daemon",
            "--state-dir",
            "/nonexistent",
        ])
        .output()
        .expect("setpriv");
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("must run as root"));
}

#[test]
fn client_without_daemon_says_what_to_do() {
    let out = std::process::Command::new(fcm_bin())
        .args(["ls"])
        .env("FCM_HOST", "127.0.0.1:1")
        .env("FCM_TOKEN", "x")
        .output()
        .expect("fcm ls");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the fcm daemon") && err.contains("hint: is the daemon running"),
        "{err}"
    );
    let usage = std::process::Command::new(fcm_bin())
        .args(["frobnicate"])
        .output()
        .expect("fcm");
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn a_full_disk_fails_create_at_a_named_step_and_leaves_nothing() {
    if !root_and_assets() {
        return;
    }
    // A state dir on a 64 MiB tmpfs: the 1 GiB sparse rootfs (~400 MB of
    // data) cannot be copied there.
    let f = Fcm::start("full", &[]);
    let small = f.dir.path().join("small");
    let _unmount = common::SmallTmpfs::mount(&small, 64, "fcm-test-full");
    let g = Fcm::start(
        "full2",
        &["--state-dir", &small.join("state").display().to_string()],
    );
    let out = g.run(&["create", "--no-wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("copy rootfs") && err.contains("No space left"),
        "{err}"
    );
    assert!(err.contains("hint: ") && err.contains("df -h"), "{err}");
    assert_create_left_nothing(&g);
    // To the API, a full disk is 507 Insufficient Storage, not a bug (500).
    let (s, body) = g.api(
        "POST",
        "/vms",
        Some(&g.token()),
        Some(br#"{"wait_ready": false}"#),
    );
    assert_eq!(s, 507, "{body}");
    assert!(body.contains("No space left"), "{body}");
    assert_create_left_nothing(&g);
    // Dropped in reverse order: g's daemon, the tmpfs, then f's directory
    // that held it (removable only once unmounted).
}

#[test]
fn a_name_that_is_another_vms_id_is_ambiguous_and_the_error_says_so() {
    if !root_and_assets() {
        return;
    }
    let f = Fcm::start("ambig", &[]);
    // Ids may start with a digit; names may not. Make VMs until one's id
    // could also be a name (each try has a 26/36 chance).
    let mut a_id = String::new();
    for _ in 0..20 {
        let a = f.create(&["--no-wait"]);
        let id = a["id"].as_str().expect("id").to_string();
        if id.starts_with(|c: char| c.is_ascii_lowercase()) {
            a_id = id;
            break;
        }
        f.ok(&["destroy", &id]);
    }
    assert!(!a_id.is_empty(), "no letter-led id in 20 tries");
    let b = f.create(&["--no-wait", "--name", &a_id]);
    assert_eq!(b["name"], a_id.as_str());
    let (s, body) = f.api("GET", &format!("/vms/{a_id}"), Some(&f.token()), None);
    assert_eq!(s, 409, "{body}");
    assert!(
        body.contains("ambiguous") && body.contains("use the id"),
        "{body}"
    );
    // A duplicate name is refused outright.
    let dup = f.run(&["create", "--no-wait", "--name", &a_id]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    // Each VM is still reachable by its own id.
    f.ok(&["destroy", b["id"].as_str().expect("id")]);
    f.ok(&["destroy", &a_id]);
    assert!(f.vms().is_empty());
}

#[test]
fn a_tap_that_cannot_be_made_fails_create_at_its_step_and_leaves_nothing() {
    if !root_and_assets() {
        return;
    }
    // With the bridge gone the tap cannot be put on it: the create must
    // fail at that step with no VMM started and nothing of the VM left.
    let f = Fcm::start("notap", &[]);
    let del = f.ns.exec(&["ip", "link", "del", "fcm0"]);
    assert!(del.status.success(), "{del:?}");
    let out = f.run(&["create", "--no-wait", "--name", "tapless"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("create tap device") && err.contains("bridge"),
        "{err}"
    );
    println!("create without a bridge: {}", err.trim());
    assert!(
        f.all_vmms().is_empty(),
        "a VMM was started: {:?}",
        f.all_vmms()
    );
    assert!(f.vms().is_empty(), "{:?}", f.vms());
    assert_create_left_nothing(&f);
}
