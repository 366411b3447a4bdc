//! The Firecracker backend: spawn the binary with its API socket in the VM
//! dir, configure the guest through the API, InstanceStart.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::Backend;
use super::{LaunchSpec, Vmm, VmmError};
use crate::host;

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
/// Every read and write has a 5 s timeout, and the answer is read until
/// `httparse` has its head and `Content-Length` bytes of body arrived.
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
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if let Some(done) = parse_response(&resp)? {
                    return Ok(done);
                }
                if resp.len() > MAX_RESPONSE {
                    return Err(format!("response larger than {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    // The VMM closed the connection: what arrived must be a whole answer.
    parse_response(&resp)?.ok_or_else(|| {
        format!(
            "incomplete response: {:?}",
            String::from_utf8_lossy(&resp[..resp.len().min(200)])
        )
    })
}

/// Largest API answer read (Firecracker's are a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// `Some((status, body))` once `resp` holds a whole answer.
fn parse_response(resp: &[u8]) -> Result<Option<(u16, String)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(resp) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = r.code.ok_or("malformed response: no status")?;
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let body = &resp[head_len..];
    if body.len() < len {
        return Ok(None);
    }
    Ok(Some((
        status,
        String::from_utf8_lossy(&body[..len]).into_owned(),
    )))
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
            .mode(0o600)
            .open(spec.console_log())
            .map_err(VmmError::Io)?;
        let log2 = log.try_clone().map_err(VmmError::Io)?;
        let mut cmd = Command::new(&bin);
        spec.disk_lock.pass_to(&mut cmd);
        let mut child = cmd
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
            host::signal(pid, host::Signal::KILL);
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
        let complete = |r: &[u8]| parse_response(r).expect("parse").is_some();
        assert!(!complete(b"HTTP/1.1 204 No Content\r\n"));
        assert!(complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(!complete(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nab"
        ));
        assert!(complete(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nabcde"
        ));
        assert_eq!(
            parse_response(b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nabcde").expect("parse"),
            Some((400, "abcde".into()))
        );
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
