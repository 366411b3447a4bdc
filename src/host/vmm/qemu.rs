//! The QEMU backend: `microvm` under TCG, the same kernel, initrd, rootfs,
//! command line, tap and MAC as Firecracker. A slow fallback for hosts
//! without usable hardware virtualisation.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Backend;
use super::{LaunchSpec, Vmm, VmmError};
use crate::host;

pub const PIDFILE: &str = "qemu.pid";
pub const QMP: &str = "qmp.sock";
/// The migration stream of a saved guest, inside a state directory.
pub const MEMORY: &str = "memory.state";

pub struct Qemu {
    bin: PathBuf,
}

impl Qemu {
    pub fn new(bin: PathBuf) -> Self {
        Self { bin }
    }

    /// The full argument list; public for the benchmark and tests.
    pub fn args(spec: &LaunchSpec<'_>) -> Vec<String> {
        let d = |p: &Path| p.display().to_string();
        let mut a: Vec<String> = [
            "-name",
            &format!("fcm-{}", spec.id),
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            &spec.cpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            // A keyboard controller: Ctrl-Alt-Del over QMP for a clean stop,
            // and the guest's reboot=k exits QEMU at once.
            "-device",
            "i8042",
            "-chardev",
            &format!("file,id=con,path={},append=on", d(&spec.console_log())),
            "-serial",
            "chardev:con",
            "-kernel",
            &d(spec.kernel),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(initrd) = spec.initrd {
            a.extend(["-initrd".into(), d(initrd)]);
        }
        a.extend(
            [
                "-append",
                &format!("{} {}", spec.cmdline, cmdline_extra()),
                "-drive",
                &format!(
                    "id=root,file={},format=raw,if=none,cache=writeback",
                    d(spec.rootfs)
                ),
                "-device",
                "virtio-blk-device,drive=root",
                "-netdev",
                &format!("tap,id=net0,ifname={},script=no,downscript=no", spec.tap),
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={}", spec.mac),
                "-qmp",
                &format!("unix:{},server=on,wait=off", d(&spec.dir.join(QMP))),
                "-pidfile",
                &d(&spec.dir.join(PIDFILE)),
                "-daemonize",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a
    }
}

/// One message from QMP: the answer to a command, or an event in between.
#[derive(serde::Deserialize)]
struct QmpMessage {
    #[serde(default)]
    r#return: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<QmpError>,
}

#[derive(serde::Deserialize)]
struct QmpError {
    class: String,
    desc: String,
}

/// Runs one QMP command: read the greeting, negotiate, send, read the
/// answer (skipping events), each read and write within 3 s. QMP serves one
/// client at a time; the connection is closed on return.
fn qmp(socket: &Path, command: &serde_json::Value) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    let s = UnixStream::connect(socket).map_err(|e| format!("QMP {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new((&s).take(1 << 20));
    let mut line = String::new();
    let mut w = &s;
    r.read_line(&mut line)
        .map_err(|e| format!("QMP greeting: {e}"))?;
    let mut answer = serde_json::Value::Null;
    for cmd in [
        serde_json::json!({"execute": "qmp_capabilities"}),
        command.clone(),
    ] {
        writeln!(w, "{cmd}").map_err(|e| format!("QMP write: {e}"))?;
        answer = loop {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| format!("QMP read: {e}"))?;
            if line.is_empty() {
                return Err("QMP closed the connection".into());
            }
            let msg: QmpMessage = serde_json::from_str(&line)
                .map_err(|e| format!("QMP sent something that is not JSON ({e})"))?;
            if let Some(e) = msg.error {
                return Err(format!("QMP {}: {}", e.class, e.desc));
            }
            if let Some(v) = msg.r#return {
                break v;
            }
            // An asynchronous event: keep reading for the answer.
        };
    }
    Ok(answer)
}

/// Extra kernel arguments QEMU's microvm needs under TCG: the guest's TSC
/// ticks at the host's TSC rate, and calibrating it against the emulated PIT
/// is unreliable under emulation, so the rate is passed in. A wrong value
/// breaks the guest's timers (sleeps never end).
pub fn cmdline_extra() -> String {
    match host_tsc_khz() {
        Some(khz) => format!("tsc_early_khz={khz}"),
        None => String::new(),
    }
}

/// The host's TSC frequency in kHz: sysfs where the kernel exports it,
/// else the first `cpu MHz` of /proc/cpuinfo.
pub fn host_tsc_khz() -> Option<u64> {
    if let Ok(s) = fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        && let Ok(k) = s.trim().parse()
    {
        return Some(k);
    }
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&info)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

impl Vmm for Qemu {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }

    fn binary(&self) -> &Path {
        &self.bin
    }

    fn runtime_files(&self) -> &'static [&'static str] {
        &[PIDFILE, QMP]
    }

    fn request_shutdown(&self, dir: &Path) -> Result<(), VmmError> {
        self.request_shutdown_keys(dir)
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError> {
        self.spawn(spec, None)
    }

    fn launch_saved(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError> {
        let memory = from.join(MEMORY);
        if !memory.is_file() {
            return Err(VmmError::Load(format!("{} is missing", memory.display())));
        }
        self.spawn(spec, Some(&memory))
    }

    fn save_state(&self, dir: &Path, into: &Path) -> Result<(), VmmError> {
        let sock = dir.join(QMP);
        let save = |e: String| VmmError::Save(e);
        qmp(&sock, &serde_json::json!({"execute": "stop"})).map_err(save)?;
        // No bandwidth cap (QEMU's default is 32 MiB/s): the guest is stopped.
        qmp(
            &sock,
            &serde_json::json!({"execute": "migrate-set-parameters",
                "arguments": {"max-bandwidth": 1u64 << 40}}),
        )
        .map_err(save)?;
        let (part, done, failed) = (
            into.join(format!("{MEMORY}.part")),
            into.join(MEMORY),
            into.join(format!("{MEMORY}.failed")),
        );
        // The file takes its final name only once cat has written all of it.
        let uri = format!(
            "exec:cat > {p} && mv {p} {d} || echo failed > {f}",
            p = super::sh_quote(&part),
            d = super::sh_quote(&done),
            f = super::sh_quote(&failed)
        );
        qmp(
            &sock,
            &serde_json::json!({"execute": "migrate", "arguments": {"uri": uri}}),
        )
        .map_err(save)?;
        let status =
            host::wait_until(
                Duration::from_secs(300),
                Duration::from_millis(20),
                || match qmp(&sock, &serde_json::json!({"execute": "query-migrate"})) {
                    Ok(v) => match v.get("status").and_then(|s| s.as_str()) {
                        Some("completed") => Some(Ok(())),
                        Some("failed" | "cancelled") => Some(Err(v
                            .get("error-desc")
                            .and_then(|d| d.as_str())
                            .unwrap_or("migration failed")
                            .to_owned())),
                        _ => None,
                    },
                    Err(e) => Some(Err(e)),
                },
            )
            .unwrap_or_else(|| Err("migration did not complete within 300 s".into()));
        status.map_err(save)?;
        let written = host::wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
            if done.is_file() {
                Some(Ok(()))
            } else if failed.exists() {
                Some(Err(format!("writing {} failed", part.display())))
            } else {
                None
            }
        })
        .unwrap_or_else(|| Err(format!("{} did not appear within 60 s", done.display())));
        written.map_err(save)?;
        super::sync_file(&done).map_err(|e| save(format!("{}: {e}", done.display())))
    }

    fn continue_guest(&self, dir: &Path) -> Result<(), VmmError> {
        let sock = dir.join(QMP);
        // An incoming QEMU loads the state first; `cont` once it has.
        let status =
            host::wait_until(
                Duration::from_secs(120),
                Duration::from_millis(20),
                || match qmp(&sock, &serde_json::json!({"execute": "query-status"})) {
                    Ok(v) => {
                        let s = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
                        (s != "inmigrate").then(|| Ok(s.to_owned()))
                    }
                    Err(e) if e.starts_with("QMP ") && e.contains(".sock") => None,
                    Err(e) => Some(Err(e)),
                },
            )
            .unwrap_or_else(|| Err("the saved state did not load within 120 s".into()))
            .map_err(VmmError::Load)?;
        if status == "running" {
            return Ok(());
        }
        if !matches!(status.as_str(), "paused" | "postmigrate" | "prelaunch") {
            return Err(VmmError::Load(format!("the guest is {status}")));
        }
        qmp(&sock, &serde_json::json!({"execute": "cont"}))
            .map(|_| ())
            .map_err(VmmError::Load)
    }
}

impl Qemu {
    /// Starts QEMU (`launch`'s command line, plus `-incoming` from a saved
    /// migration stream when `incoming` is set).
    fn spawn(&self, spec: &LaunchSpec<'_>, incoming: Option<&Path>) -> Result<u32, VmmError> {
        let bin = host::find_program(&self.bin).ok_or_else(|| VmmError::MissingBinary {
            program: "qemu-system-x86_64",
            path: self.bin.clone(),
        })?;
        let pidfile = spec.dir.join(PIDFILE);
        let _ = fs::remove_file(&pidfile);
        // QEMU appends to an existing log and keeps its mode: 0600.
        {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(spec.console_log())
                .map_err(VmmError::Io)?;
        }
        // With -daemonize QEMU returns once the machine is set up (tap opened,
        // disk opened), so its exit status reports configuration errors.
        let mut args = Self::args(spec);
        if let Some(m) = incoming {
            args.extend([
                "-incoming".into(),
                format!("exec:cat {}", super::sh_quote(m)),
            ]);
        }
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&args);
        spec.disk_lock.pass_to(&mut cmd);
        let printable = format!("{} {}", bin.display(), args.join(" "));
        let o = host::run_command(cmd, printable, None, Some(Duration::from_secs(60)))
            .map_err(VmmError::Qemu)?;
        if o.code != Some(0) {
            return Err(VmmError::Qemu(host::HostError::Failed {
                cmd: o.cmd,
                status: o.code.map_or("timed out after 60 s".into(), |c| {
                    format!("exit status: {c}")
                }),
                stderr: o.stderr,
            }));
        }
        host::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            fs::read_to_string(&pidfile)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        })
        .ok_or_else(|| VmmError::NotReady {
            program: "qemu-system-x86_64",
            detail: format!("no pid in {}", pidfile.display()),
        })
    }
}

impl Qemu {
    fn request_shutdown_keys(&self, dir: &Path) -> Result<(), VmmError> {
        let keys = serde_json::json!({
            "execute": "send-key",
            "arguments": {"keys": [
                {"type": "qcode", "data": "ctrl"},
                {"type": "qcode", "data": "alt"},
                {"type": "qcode", "data": "delete"}
            ]}
        });
        qmp(&dir.join(QMP), &keys)
            .map(|_| ())
            .map_err(|detail| VmmError::NotReady {
                program: "qemu-system-x86_64",
                detail,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_mhz_becomes_khz() {
        assert_eq!(
            parse_cpu_mhz("processor\t: 0\ncpu MHz\t\t: 2445.406\n"),
            Some(2_445_406)
        );
        assert_eq!(parse_cpu_mhz("nothing here"), None);
    }
}
