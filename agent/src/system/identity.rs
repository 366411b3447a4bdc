//! `SetIdentity`, for a VM made from another's memory: a hostname, a
//! machine id, the first interface's MAC, address and default route (set
//! by running `ip`, iproute2's or busybox's; in an image without one, the
//! initramfs's busybox copied to `/run/fcm/busybox`), and SSH host keys (sshd is
//! told to reload them). Every field is checked before any is applied;
//! then each is applied, and every failure is reported together.

use super::Linux;
use crate::error::OpError;
use crate::files::write_atomic;
use crate::process::{DEFAULT_PATH, find_program, run_helper};
use fcm_proto::Identity;
use rustix::process::{Pid, Signal};
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// The initramfs's busybox, copied here by an image boot (docs/guest.md).
const BUSYBOX: &str = "/run/fcm/busybox";

/// The command that runs `ip`: the guest's own, else `busybox ip`.
fn ip_command(guest_has_ip: bool, busybox: &Path) -> Vec<String> {
    if !guest_has_ip && busybox.is_file() {
        return vec![busybox.to_string_lossy().into_owned(), "ip".into()];
    }
    vec!["ip".into()]
}

fn hostname_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn mac_ok(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn address_ok(a: &str) -> bool {
    let Some((ip, prefix)) = a.split_once('/') else {
        return false;
    };
    ip.parse::<Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}

/// A file name under `/etc/ssh`.
fn key_name_ok(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks every field given; `Invalid` names the first bad one.
pub fn validate(id: &Identity) -> Result<(), OpError> {
    let bad = |what: &str, v: &str| Err(OpError::invalid(format!("a bad {what}: {v:?}")));
    if let Some(h) = &id.hostname
        && !hostname_ok(h)
    {
        return bad("hostname", h);
    }
    if let Some(m) = &id.machine_id
        && !(m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return bad("machine id (32 hex digits)", m);
    }
    if let Some(m) = &id.mac
        && !mac_ok(m)
    {
        return bad("MAC", m);
    }
    if let Some(a) = &id.address
        && !address_ok(a)
    {
        return bad("address (a.b.c.d/prefix)", a);
    }
    if let Some(g) = &id.gateway
        && g.parse::<Ipv4Addr>().is_err()
    {
        return bad("gateway", g);
    }
    for (name, _) in &id.ssh_host_keys {
        if !key_name_ok(name) {
            return bad("SSH key file name", name);
        }
    }
    Ok(())
}

/// The first network interface other than `lo`, by name.
fn first_interface(sys_net: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(sys_net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The default route's gateway, from `/proc/net/route` (its fields are
/// hex, in the host's byte order).
fn default_gateway(proc_dir: &Path) -> Option<Ipv4Addr> {
    let table = fs::read_to_string(proc_dir.join("net/route")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[1] != "00000000" {
            return None;
        }
        let raw = u32::from_str_radix(f[2], 16).ok()?;
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    })
}

/// The sshd that listens (not a connection's): its parent is no sshd.
fn sshd_listeners(proc_dir: &Path) -> Vec<Pid> {
    let comm = |pid: &str| fs::read_to_string(proc_dir.join(pid).join("comm")).unwrap_or_default();
    let parent = |pid: &str| -> Option<String> {
        let stat = fs::read_to_string(proc_dir.join(pid).join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(1).map(String::from)
    };
    let Ok(dir) = fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| comm(pid).trim() == "sshd")
        .filter(|pid| parent(pid).is_none_or(|pp| comm(&pp).trim() != "sshd"))
        .filter_map(|pid| Pid::from_raw(pid.parse().ok()?))
        .collect()
}

pub(super) fn apply(sys: &Linux, id: &Identity) -> Result<(), OpError> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    let file = |name: &str, text: &str, mode: u32| {
        write_atomic(&sys.etc.join(name), text.as_bytes(), mode).map_err(|e| e.message)
    };

    if let Some(h) = &id.hostname {
        note(rustix::system::sethostname(h.as_bytes()).map_err(|e| format!("sethostname: {e}")));
        note(file("hostname", &format!("{h}\n"), 0o644));
    }
    if let Some(m) = &id.machine_id {
        note(file(
            "machine-id",
            &format!("{}\n", m.to_ascii_lowercase()),
            0o444,
        ));
    }
    if id.mac.is_some() || id.address.is_some() || id.gateway.is_some() {
        match first_interface(&sys.sys_net) {
            None => note(Err("no network interface".into())),
            Some(dev) => {
                let old_gateway = default_gateway(&sys.proc_dir);
                let has_ip = find_program("ip", DEFAULT_PATH, Path::new("/")).is_some();
                let ip_argv = ip_command(has_ip, Path::new(BUSYBOX));
                let ip = |args: &[&str]| {
                    let mut argv: Vec<&str> = ip_argv.iter().map(String::as_str).collect();
                    argv.extend_from_slice(args);
                    run_helper(&argv, IP_TIMEOUT)
                };
                if let Some(mac) = &id.mac {
                    // Most drivers take a new MAC only while down.
                    note(ip(&["link", "set", "dev", &dev, "down"]));
                    note(ip(&["link", "set", "dev", &dev, "address", mac]));
                    note(ip(&["link", "set", "dev", &dev, "up"]));
                }
                if let Some(addr) = &id.address {
                    note(ip(&["addr", "flush", "dev", &dev]));
                    note(ip(&["addr", "add", addr, "dev", &dev]));
                }
                // A link taken down, or addresses flushed, lose the default
                // route: put back the one given, else the one there was.
                let gateway = id.gateway.clone().or(old_gateway.map(|g| g.to_string()));
                if let Some(gw) = gateway {
                    note(ip(&[
                        "route", "replace", "default", "via", &gw, "dev", &dev,
                    ]));
                }
            }
        }
    }
    if !id.ssh_host_keys.is_empty() {
        for (name, key) in &id.ssh_host_keys {
            // Public halves are readable by all, as ssh-keygen makes them.
            let mode = if name.ends_with(".pub") { 0o644 } else { 0o600 };
            note(file(&format!("ssh/{name}"), key, mode));
        }
        for pid in sshd_listeners(&sys.proc_dir) {
            note(
                rustix::process::kill_process(pid, Signal::HUP)
                    .map_err(|e| format!("SIGHUP to sshd: {e}")),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(OpError::failed(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked() {
        let ok = Identity {
            hostname: Some("vm-1.example".into()),
            machine_id: Some("0123456789abcdef0123456789ABCDEF".into()),
            mac: Some("aa:bb:cc:dd:ee:0f".into()),
            address: Some("172.16.0.5/24".into()),
            gateway: Some("172.16.0.1".into()),
            ssh_host_keys: vec![("ssh_host_ed25519_key.pub".into(), "k".into())],
        };
        assert_eq!(validate(&ok), Ok(()));
        assert_eq!(validate(&Identity::default()), Ok(()));
        let bad = [
            Identity {
                hostname: Some("a b".into()),
                ..ok.clone()
            },
            Identity {
                hostname: Some("-a".into()),
                ..ok.clone()
            },
            Identity {
                machine_id: Some("xyz".into()),
                ..ok.clone()
            },
            Identity {
                mac: Some("aa:bb:cc:dd:ee".into()),
                ..ok.clone()
            },
            Identity {
                address: Some("172.16.0.5".into()),
                ..ok.clone()
            },
            Identity {
                address: Some("172.16.0.5/33".into()),
                ..ok.clone()
            },
            Identity {
                gateway: Some("gw".into()),
                ..ok.clone()
            },
            Identity {
                ssh_host_keys: vec![("../passwd".into(), "x".into())],
                ..ok.clone()
            },
        ];
        for id in bad {
            assert!(validate(&id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn without_ip_the_initramfs_busybox_runs_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let busybox = dir.path().join("busybox");
        assert_eq!(ip_command(false, &busybox), ["ip"], "no busybox either");
        fs::write(&busybox, b"").expect("write");
        assert_eq!(ip_command(true, &busybox), ["ip"]);
        assert_eq!(
            ip_command(false, &busybox),
            [busybox.to_string_lossy().into_owned(), "ip".into()]
        );
    }

    #[test]
    fn the_default_gateway_is_read_from_the_route_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("net")).expect("mkdir");
        fs::write(
            dir.path().join("net/route"),
            "Iface\tDestination\tGateway \tFlags\n\
             eth0\t0010AC00\t00000000\t0001\n\
             eth0\t00000000\t010010AC\t0003\n",
        )
        .expect("write");
        assert_eq!(
            default_gateway(dir.path()),
            Some(Ipv4Addr::new(172, 16, 0, 1))
        );
    }
}
