//! `fcm ssh`: the user's own ssh, with the guest's host key pinned.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use super::Failure;
use super::api::{self, Client, seg};
use crate::host;
use crate::wire::api::{SshInfo, VmView};

pub(super) fn ssh(vm: &str, command: &[String]) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let mut info: SshInfo = c.get(&format!("/vms/{}/ssh", seg(vm)))?;
    if matches!(info.state.as_str(), "paused" | "pausing" | "resuming") {
        // Asleep by idle sleep: the daemon wakes it (a VM a user paused
        // is an error with its hint).
        let _: VmView = c.post_within(
            &format!("/vms/{}/wake", seg(vm)),
            &serde_json::json!({}),
            std::time::Duration::from_secs(180),
        )?;
        info = c.get(&format!("/vms/{}/ssh", seg(vm)))?;
    }
    if info.state != "running" {
        return Err(Failure::new(
            format!("VM {} is {}", info.name, info.state),
            Some(format!("start it with: fcm start {}", info.name)),
        ));
    }
    let mut args: Vec<String> = Vec::new();
    if let Some((private, _)) = api::user_ssh_key()
        && private.exists()
    {
        args.extend([
            "-i".into(),
            private.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]);
    }
    if let Some(key) = &info.host_key {
        let kh = known_hosts_file(info.ip, key)?;
        args.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", kh.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
        ]);
    } else {
        args.extend(["-o".into(), "StrictHostKeyChecking=accept-new".into()]);
    }
    args.extend(["-o".into(), "LogLevel=ERROR".into()]);
    // Never hang on a guest that stopped answering: the connection and the
    // key exchange get 15 s (a busy TCG guest takes seconds), and a session
    // whose guest is silent for a minute ends.
    for opt in [
        "ConnectTimeout=15",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
    ] {
        args.extend(["-o".into(), opt.into()]);
    }
    if !api::daemon_is_local() {
        // The VM's address lives on the daemon host's bridge: jump through it.
        let user = std::env::var("FCM_JUMP_USER").unwrap_or_else(|_| "root".into());
        args.extend(["-J".into(), format!("{user}@{}", api::daemon_host())]);
    }
    args.push(format!("{}@{}", info.user, info.ip));
    args.extend(command.iter().cloned());
    let err = std::process::Command::new("ssh").args(&args).exec();
    Err(Failure::new(
        format!("could not run ssh: {err}"),
        Some("install openssh-client".into()),
    ))
}

/// Writes the pinned host key to a known_hosts file of the VM's address
/// alone (`~/.cache/fcm/known_hosts.d/<ip>`). One file per address, so
/// that `fcm ssh` to several VMs at once never loses another's line (a
/// shared file rewritten by each lost lines to the race, and ssh then
/// refused a VM as unknown); a new VM on a reused address replaces it.
fn known_hosts_file(ip: Ipv4Addr, key: &str) -> Result<PathBuf, Failure> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("fcm").join("known_hosts.d");
    let io =
        |e: std::io::Error| Failure::new(format!("could not write {}: {e}", dir.display()), None);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let path = dir.join(ip.to_string());
    let line = host::ssh::known_hosts_line(ip, key);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(line.as_str()) {
        host::write_atomic(&path, line.as_bytes(), 0o644).map_err(io)?;
    }
    Ok(path)
}
