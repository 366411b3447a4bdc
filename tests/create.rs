//! Create on a guest that really boots (QEMU, TCG): the disk is the base
//! image's copy, untouched, and the guest's identity (host key, authorized
//! keys) arrives on a read-only config drive, at create and at start.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};

use common::{Fcm, assets, e2e_ready};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A QEMU "binary" that, before it execs the real one, says on its stderr
/// (the VM's console log) whether the disk it was given starts with the
/// base image's bytes exactly, and lists its arguments. It runs as the
/// VM's user and reads the disk through the descriptor QEMU gets. The base
/// image's size and digest are the test's (read as root): on a host where
/// `fcm daemon` has run on the default state dir, the assets' directory is
/// 0700 and the VM's user cannot read the base image by name.
const WRAPPER: &str = r#"#!/bin/bash
n=
for a in "$@"; do
	case $a in fd=*,set=1,opaque=*:ro) n=${a#fd=}; n=${n%%,*} ;; esac
done
same=no
if [ -n "$n" ] && [ "$(head -c @SIZE@ <&"$n" | sha256sum)" = "@SHA256@  -" ]; then same=yes; fi
echo "fcm-test-wrapper: rootfs-as-base=$same" >&2
printf 'fcm-test-wrapper: arg %s\n' "$@" >&2
exec qemu-system-x86_64 "$@"
"#;

#[test]
fn identity_comes_on_a_read_only_config_drive_and_the_disk_stays_the_base_copy() {
    if !e2e_ready() {
        return;
    }
    let tools = tempfile::Builder::new()
        .prefix("fcm-create-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    fs::set_permissions(tools.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let base = assets().join("base-rootfs.img");
    let size = fs::metadata(&base).expect("base rootfs").len();
    let digest = Command::new("sha256sum")
        .arg(&base)
        .output()
        .expect("sha256sum");
    assert!(digest.status.success(), "sha256sum: {}", text(&digest));
    let digest = String::from_utf8_lossy(&digest.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let qemu = tools.path().join("qemu-wrapper");
    fs::write(
        &qemu,
        WRAPPER
            .replace("@SIZE@", &size.to_string())
            .replace("@SHA256@", &digest),
    )
    .expect("wrapper");
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).expect("chmod");

    let qemu_arg = qemu.display().to_string();
    let f = Fcm::start("create", &["--qemu-bin", &qemu_arg]);
    let vm = f.create(&[]);
    let name = vm["name"].as_str().expect("name").to_string();
    let id = vm["id"].as_str().expect("id").to_string();
    let ip = vm["ip"].as_str().expect("ip").to_string();
    let dir = f.state().join(&id);
    let console = || fs::read_to_string(dir.join("console.log")).unwrap_or_default();

    // Create copied the disk and wrote nothing into it.
    assert!(
        console().contains("fcm-test-wrapper: rootfs-as-base=yes"),
        "the disk QEMU got is not the base image's copy:\n{}",
        console()
    );
    // The config drive: root's, 0600, attached read-only as its own fd set.
    let cfg = dir.join("config.img");
    let m = fs::metadata(&cfg).expect("config.img");
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
    assert_eq!(m.len() % 4096, 0);
    let log = console();
    assert!(
        log.contains(
            "fcm-test-wrapper: arg id=config,file=/dev/fdset/3,format=raw,if=none,readonly=on"
        ) && log.contains(&format!("set=3,opaque={}:ro", cfg.display())),
        "no read-only config drive on QEMU's command line:\n{log}"
    );
    // One timing line per create.
    let daemon_log = fs::read_to_string(f.log()).unwrap_or_default();
    assert!(
        daemon_log.lines().any(|l| l
            .starts_with(&format!("fcm: {name}: host work before the VMM: "))
            && l.contains("config drive")
            && l.contains("tap")),
        "no timing line:\n{daemon_log}"
    );

    // SSH as root with the user's own key, the host key checked against the
    // VM's pinned known_hosts: the guest's key is the one create made.
    let known_hosts = dir.join("known_hosts");
    let pinned = fs::read_to_string(&known_hosts).expect("known_hosts");
    let pinned_key = pinned
        .split_whitespace()
        .nth(2)
        .expect("pinned key")
        .to_string();
    let user_key = f.home().join(".ssh/id_ed25519");
    let user_pub = fs::read_to_string(user_key.with_extension("pub")).expect("user key");
    let ssh = |cmd: &str| {
        f.ns.cmd("ssh")
            .args(["-F", "none", "-i"])
            .arg(&user_key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
            ])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "ConnectTimeout=20", &format!("root@{ip}"), cmd])
            .output()
            .expect("ssh")
    };
    let probe = "awk '$2==\"/\"{print \"root \" $1}' /proc/mounts; \
                 echo \"vdb-ro $(cat /sys/block/vdb/ro)\"; \
                 if dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; then echo vdb-writable; else echo vdb-refused; fi; \
                 echo \"hostkey $(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)\"; \
                 stat -c 'keymode %a' /etc/ssh/ssh_host_ed25519_key; \
                 cat /run/fcm/authorized_keys; \
                 [ -e /root/.ssh/authorized_keys ] && echo image-has-authorized-keys; true";
    let check = |when: &str| {
        // Create answers once the guest's agent does; its sshd may take a
        // moment more (a loaded machine: seconds).
        let mut out = ssh(probe);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !out.status.success() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(500));
            out = ssh(probe);
        }
        let got = text(&out);
        assert!(out.status.success(), "{when}: ssh failed: {got}");
        for want in [
            "root /dev/vda".to_string(),
            "vdb-ro 1".into(),
            "vdb-refused".into(),
            format!("hostkey {pinned_key}"),
            "keymode 600".into(),
        ] {
            assert!(
                got.lines().any(|l| l == want),
                "{when}: no {want:?} in:\n{got}"
            );
        }
        let user_body = user_pub.split_whitespace().nth(1).expect("key body");
        assert!(
            got.contains(user_body),
            "{when}: user key not authorized:\n{got}"
        );
        assert!(!got.contains("image-has-authorized-keys"), "{when}: {got}");
    };
    check("after create");
    eprintln!(
        "{}",
        daemon_log
            .lines()
            .find(|l| l.contains("host work before the VMM"))
            .unwrap_or_default()
    );
    assert!(f.ssh(&name, "true").status.success(), "fcm ssh failed");

    // A start attaches the same drive: same host key, same keys.
    f.ok(&["stop", &name]);
    f.ok(&["start", &name]);
    check("after start");
    f.ok(&["destroy", &name]);
    assert!(!dir.exists(), "the VM dir outlived destroy");
}
