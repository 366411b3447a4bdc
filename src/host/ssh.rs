//! SSH into guests: the daemon's own key, per-VM host keys pinned in a
//! known_hosts file, and readiness checks.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::{self, HostError};

/// The daemon's private key (its `.pub` beside it), made on first start.
pub fn daemon_key(state_dir: &Path) -> PathBuf {
    state_dir.join("ssh").join("id_ed25519")
}

/// Creates an ed25519 key pair at `path` unless its private key exists;
/// returns the public key. An existing private key is never replaced (every
/// guest trusts it): a missing or stale `.pub` is derived from it again.
pub fn ensure_keypair(path: &Path, comment: &str) -> Result<String, HostError> {
    let public = path.with_extension("pub");
    if path.exists() {
        let derived = host::run(
            "ssh-keygen",
            ["-y".as_ref(), "-f".as_ref(), path.as_os_str()],
        )?;
        let key: Vec<&str> = derived.split_whitespace().take(2).collect();
        let on_disk = std::fs::read_to_string(&public).unwrap_or_default();
        if on_disk.split_whitespace().take(2).eq(key.iter().copied()) {
            return Ok(on_disk.trim().to_owned());
        }
        let line = format!("{} {comment}", key.join(" "));
        host::write_atomic(&public, format!("{line}\n").as_bytes(), 0o644).map_err(|source| {
            HostError::Spawn {
                cmd: format!("write {}", public.display()),
                source,
            }
        })?;
        return Ok(line);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&public);
    host::run(
        "ssh-keygen",
        [
            "-q".as_ref(),
            "-t".as_ref(),
            "ed25519".as_ref(),
            "-N".as_ref(),
            "".as_ref(),
            "-C".as_ref(),
            comment.as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
        ],
    )?;
    std::fs::read_to_string(&public)
        .map(|s| s.trim().to_owned())
        .map_err(|source| HostError::Spawn {
            cmd: format!("read {}", public.display()),
            source,
        })
}

/// Options for a non-interactive SSH from the daemon into a guest: no
/// config file (root's `~/.ssh/config` must not change what fcm does), no
/// agent or X11 forwarding and no forwardings at all (the guest is
/// untrusted), the daemon's key only, and the guest's pinned host key.
pub fn daemon_ssh_args(key: &Path, known_hosts: &Path, ip: Ipv4Addr) -> Vec<String> {
    vec![
        "-F".into(),
        "none".into(),
        "-a".into(),
        "-x".into(),
        "-o".into(),
        "ClearAllForwardings=yes".into(),
        "-o".into(),
        "PermitLocalCommand=no".into(),
        "-o".into(),
        "UpdateHostKeys=no".into(),
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        // Includes the banner exchange, which a busy TCG guest can take
        // seconds over; every caller has its own overall deadline.
        "ConnectTimeout=15".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        format!("root@{ip}"),
    ]
}

/// Quotes one word for a POSIX shell: `'…'`, with each `'` written as
/// `'\''`. Whatever the text holds, the remote shell sees one literal word.
pub fn shell_quote(word: &str) -> String {
    let mut s = String::with_capacity(word.len() + 2);
    s.push('\'');
    for c in word.chars() {
        if c == '\'' {
            s.push_str("'\\''");
        } else {
            s.push(c);
        }
    }
    s.push('\'');
    s
}

/// A remote command line that runs `argv` exactly: every element quoted.
pub fn remote_command<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A known_hosts line pinning `host_key` (`ssh-ed25519 AAAA... comment`) for `ip`.
pub fn known_hosts_line(ip: Ipv4Addr, host_key: &str) -> String {
    let mut parts = host_key.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    format!("{ip} {kind} {key}\n")
}

/// True once something at ip:22 sends an SSH banner.
pub fn banner_ready(ip: Ipv4Addr) -> bool {
    let addr = SocketAddr::from((ip, 22));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

/// Waits until the guest's SSH answers.
pub fn wait_ready(ip: Ipv4Addr, timeout: Duration) -> bool {
    host::wait_until(timeout, Duration::from_millis(200), || {
        banner_ready(ip).then_some(())
    })
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_real_shell() {
        let nasty = [
            "plain",
            "",
            "it's",
            "$(reboot)",
            "`id`",
            "a b\tc\nd",
            "'; rm -rf / #",
            "\\'\"",
            "-n",
            "*",
        ];
        let line = format!("printf '%s\\0' {}", remote_command(&nasty));
        let out = host::run("sh", ["-c", line.as_str()]).expect("sh");
        let got: Vec<&str> = out.split('\0').collect();
        assert_eq!(&got[..nasty.len()], &nasty[..]);
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_daemon_ssh_reads_no_config_and_forwards_nothing() {
        let a = daemon_ssh_args(
            Path::new("/k"),
            Path::new("/kh"),
            Ipv4Addr::new(172, 16, 0, 50),
        );
        let joined = a.join(" ");
        assert!(joined.starts_with("-F none -a -x "), "{joined}");
        for opt in [
            "ClearAllForwardings=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/kh",
            "IdentitiesOnly=yes",
            "BatchMode=yes",
        ] {
            assert!(a.iter().any(|x| x == opt), "{opt} missing: {joined}");
        }
        assert_eq!(a.last().map(String::as_str), Some("root@172.16.0.50"));
    }

    #[test]
    fn a_lost_public_key_is_derived_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("id_ed25519");
        let first = ensure_keypair(&key, "fcm-daemon").expect("make");
        let private = std::fs::read(&key).expect("private");
        std::fs::remove_file(key.with_extension("pub")).expect("rm pub");
        let again = ensure_keypair(&key, "fcm-daemon").expect("derive");
        assert_eq!(std::fs::read(&key).expect("private"), private);
        assert_eq!(
            first.split_whitespace().nth(1),
            again.split_whitespace().nth(1)
        );
        assert!(key.with_extension("pub").exists());
    }

    #[test]
    fn known_hosts_line_drops_comment() {
        let l = known_hosts_line(Ipv4Addr::new(172, 16, 0, 50), "ssh-ed25519 AAAAC3 fcm-abc");
        assert_eq!(l, "172.16.0.50 ssh-ed25519 AAAAC3\n");
    }

    #[test]
    fn keypair_is_made_once() {
        if host::find_program(Path::new("ssh-keygen")).is_none() {
            eprintln!("skipping: ssh-keygen not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let k = dir.path().join("ssh/id_ed25519");
        let a = ensure_keypair(&k, "t").expect("keygen");
        let b = ensure_keypair(&k, "t").expect("keygen");
        assert!(a.starts_with("ssh-ed25519 "));
        assert_eq!(a, b);
    }

    #[test]
    fn banner_check_fails_fast_on_closed_port() {
        assert!(
            !banner_ready(Ipv4Addr::LOCALHOST)
                || std::net::TcpStream::connect("127.0.0.1:22").is_ok()
        );
    }
}
