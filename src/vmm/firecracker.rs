//! The Firecracker backend: spawn the binary with its API socket in the VM
//! dir, configure the guest through the API, InstanceStart.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{LaunchSpec, Vmm, VmmError};
use crate::host;
use crate::store::Backend;

pub const SOCKET: &str = "firecracker.socket";
pub const PIDFILE: &str = "firecracker.pid";

pub struct Firecracker {
    bin: PathBuf,
}

impl Firecracker {
    pub fn new(bin: PathBuf) -> Self {
        Self { bin }
    }
}

/// One HTTP/1.1 request over the API socket; returns the status and body.
pub fn api_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let timeout = Some(Duration::from_secs(5));
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let body = body.to_string();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    // With Connection: close Firecracker ends the stream after the response;
    // a timeout after some bytes means the body was complete.
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if response_complete(&resp) {
                    break;
                }
            }
            Err(e) if !resp.is_empty() && e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn response_complete(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= len
}

fn put(
    socket: &Path,
    step: &'static str,
    path: &str,
    body: serde_json::Value,
) -> Result<(), VmmError> {
    match api_call(socket, "PUT", path, &body) {
        Ok((s, _)) if (200..300).contains(&s) => Ok(()),
        Ok((s, b)) => Err(VmmError::Api {
            step,
            detail: format!("HTTP {s}: {}", b.trim()),
        }),
        Err(detail) => Err(VmmError::Api { step, detail }),
    }
}

impl Vmm for Firecracker {
    fn backend(&self) -> Backend {
        Backend::Firecracker
    }

    fn binary(&self) -> &Path {
        &self.bin
    }

    fn runtime_files(&self) -> &'static [&'static str] {
        &[SOCKET, PIDFILE]
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError> {
        let bin = host::find_program(&self.bin).ok_or_else(|| VmmError::MissingBinary {
            program: "firecracker",
            path: self.bin.clone(),
        })?;
        let socket = spec.dir.join(SOCKET);
        let _ = fs::remove_file(&socket);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.console_log())
            .map_err(VmmError::Io)?;
        let log2 = log.try_clone().map_err(VmmError::Io)?;
        let mut child = Command::new(&bin)
            .arg("--api-sock")
            .arg(&socket)
            .arg("--id")
            .arg(spec.id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                program: "firecracker",
                source,
            })?;
        let pid = child.id();
        let kill = |e: VmmError| {
            host::signal(pid, libc::SIGKILL);
            e
        };
        host::write_atomic(&spec.dir.join(PIDFILE), pid.to_string().as_bytes(), 0o644)
            .map_err(|e| kill(VmmError::Io(e)))?;
        // Reap the child whenever it exits, so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let ready = host::wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            UnixStream::connect(&socket).ok()
        });
        if ready.is_none() {
            return Err(kill(VmmError::NotReady {
                program: "firecracker",
                detail: format!("API socket {} did not appear within 5 s", socket.display()),
            }));
        }
        let mut boot = json!({
            "kernel_image_path": spec.kernel,
            "boot_args": format!("{} pci=off", spec.cmdline),
        });
        if let Some(initrd) = spec.initrd {
            boot["initrd_path"] = json!(initrd);
        }
        let steps: [(&'static str, String, serde_json::Value); 5] = [
            ("boot-source", "/boot-source".into(), boot),
            (
                "drives",
                "/drives/rootfs".into(),
                json!({"drive_id": "rootfs", "path_on_host": spec.rootfs, "is_root_device": true, "is_read_only": false}),
            ),
            (
                "machine-config",
                "/machine-config".into(),
                json!({"vcpu_count": spec.cpus, "mem_size_mib": spec.memory_mib}),
            ),
            (
                "network-interfaces",
                "/network-interfaces/eth0".into(),
                json!({"iface_id": "eth0", "guest_mac": spec.mac, "host_dev_name": spec.tap}),
            ),
            (
                "InstanceStart",
                "/actions".into(),
                json!({"action_type": "InstanceStart"}),
            ),
        ];
        for (step, path, body) in steps {
            put(&socket, step, &path, body).map_err(kill)?;
        }
        Ok(pid)
    }

    fn request_shutdown(&self, dir: &Path) -> Result<(), VmmError> {
        put(
            &dir.join(SOCKET),
            "SendCtrlAltDel",
            "/actions",
            json!({"action_type": "SendCtrlAltDel"}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_completeness() {
        assert!(!response_complete(b"HTTP/1.1 204 No Content\r\n"));
        assert!(response_complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!response_complete(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nab"
        ));
        assert!(response_complete(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nabcde"
        ));
    }
}
