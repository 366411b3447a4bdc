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

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError> {
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
        let args = Self::args(spec);
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

    fn request_shutdown(&self, dir: &Path) -> Result<(), VmmError> {
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
