//! The QEMU backend: `microvm` under TCG, the same kernel, initrd, rootfs,
//! command line, tap and MAC as Firecracker. A slow fallback for hosts
//! without usable hardware virtualisation.
//!
//! **Least privilege.** QEMU runs as the VM's own uid and gid (never root)
//! under `-sandbox` with every option QEMU 7.2 has set to deny, in the VM's
//! cgroup. QEMU 7.2 installs its seccomp filter before `-daemonize` forks
//! and before `-runas` drops privileges, and the filter forbids both
//! (`spawn=deny` kills the fork, `elevateprivileges=deny` the setsid and
//! setuid), so the daemon itself starts QEMU, in its own session, already
//! as the VM's user. That user can open nothing of the VM's: the state dir
//! is root's alone. So QEMU is handed descriptors the daemon opened: the
//! disk (the daemon's locked descriptor, which keeps the one-VMM-per-disk
//! lock in QEMU), the console log, kernel and initrd, the tap, and the
//! bound QMP socket. Records stay 0600 root.
//!
//! **Saved guests.** A pause or checkpoint migrates the stopped guest into
//! a file the daemon opened and hands over QMP (`getfd`, SCM_RIGHTS, then
//! `migrate fd:`); a resume starts QEMU with that file as `-incoming fd:N`.
//! QEMU never opens a path or runs a program for it (`exec:` migration
//! would need the fork the sandbox forbids).

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Backend;
use super::{AGENT_SOCKET, AgentChannel, LaunchSpec, Vmm, VmmError};
use crate::host;

mod qmp;

use qmp::{migration_active, migration_done, qmp, qmp_session};

pub const PIDFILE: &str = "qemu.pid";
pub const QMP: &str = "qmp.sock";
/// The migration stream of a saved guest, inside a state directory.
pub const MEMORY: &str = "memory.state";
/// Longest a save or a load of a guest's memory may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Qemu {
    bin: PathBuf,
    /// Run as the VM's user under `-sandbox` (see the module doc).
    sandbox: bool,
}

/// TCG's translation cache, in MiB. QEMU's default on a large host is
/// 1 GiB of anonymous memory, which would not fit the VM's cgroup; a
/// bounded cache is flushed when full.
pub const TB_SIZE_MIB: u32 = 256;

/// QEMU's seccomp sandbox: everything QEMU 7.2 can deny.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The descriptors QEMU is given instead of paths (their numbers, which
/// stay the same in QEMU).
#[derive(Debug, Clone, Copy)]
pub struct Fds {
    /// The disk, read-write: the daemon's locked descriptor itself.
    pub disk: RawFd,
    /// The disk again, read-only (QEMU probes it so before opening it for writing).
    pub disk_ro: RawFd,
    /// The config drive, read-only, when the VM has one.
    pub config: Option<RawFd>,
    pub console: RawFd,
    pub kernel: RawFd,
    pub initrd: Option<RawFd>,
    pub tap: RawFd,
    /// The QMP socket, bound and listening.
    pub qmp: RawFd,
    /// The agent drive, read-only, and the agent port's socket, bound and
    /// listening, when the VM has an agent.
    pub agent: Option<(RawFd, RawFd)>,
    /// A saved guest's migration stream, read-only, to load instead of booting.
    pub incoming: Option<RawFd>,
}

impl Qemu {
    pub fn new(bin: PathBuf, sandbox: bool) -> Self {
        Self { bin, sandbox }
    }

    /// The full argument list; public for the benchmark and tests. QEMU
    /// opens nothing by name: every file, the tap and the QMP socket are
    /// descriptors the daemon opened (`-add-fd`'s `opaque` keeps the
    /// paths in the command line, which is how the VM dir's VMM is found).
    pub fn args(spec: &LaunchSpec<'_>, fds: &Fds, sandbox: bool) -> Vec<String> {
        let d = |p: &Path| p.display().to_string();
        let mut a: Vec<String> = [
            "-name",
            &format!("fcm-{}", spec.id),
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=on",
            "-accel",
            &format!("tcg,tb-size={TB_SIZE_MIB}"),
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
            "-add-fd",
            &format!("fd={},set=1,opaque={}", fds.disk, d(spec.rootfs)),
            "-add-fd",
            &format!("fd={},set=1,opaque={}:ro", fds.disk_ro, d(spec.rootfs)),
            "-add-fd",
            &format!("fd={},set=2,opaque={}", fds.console, d(&spec.console_log())),
            "-chardev",
            "file,id=con,path=/dev/fdset/2,append=on",
            "-serial",
            "chardev:con",
            // The kernel loader opens a path: the daemon's descriptor's.
            "-kernel",
            &format!("/proc/self/fd/{}", fds.kernel),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(initrd) = fds.initrd {
            a.extend(["-initrd".into(), format!("/proc/self/fd/{initrd}")]);
        }
        a.extend(
            [
                "-append",
                &format!("{} {}", spec.cmdline, cmdline_extra()),
                // QEMU's own image locks are off: the disk's descriptors
                // are separate opens of one file, and after a migration to
                // a file QEMU could not take its write lock back from its
                // own read-only descriptor to continue the guest. fcm's disk
                // lock (held in the descriptor QEMU inherits) keeps one VMM
                // per disk instead.
                "-drive",
                "id=root,file=/dev/fdset/1,format=raw,if=none,cache=writeback,file.locking=off",
                "-device",
                "virtio-blk-device,drive=root",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        // The config drive: a second disk, read-only (its own fd set).
        if let (Some(fd), Some(path)) = (fds.config, spec.config_drive) {
            a.extend([
                "-add-fd".into(),
                format!("fd={fd},set=3,opaque={}:ro", d(path)),
                "-drive".into(),
                "id=config,file=/dev/fdset/3,format=raw,if=none,readonly=on,file.locking=off"
                    .into(),
                "-device".into(),
                "virtio-blk-device,drive=config".into(),
            ]);
        }
        // The agent: its drive (read-only, fd set 4) and its channel, a
        // virtio-serial port the guest finds by name (docs/agent.md).
        if let (Some((drive, sock)), Some(path)) = (fds.agent, spec.agent_drive) {
            a.extend([
                "-add-fd".into(),
                format!("fd={drive},set=4,opaque={}:ro", d(path)),
                "-drive".into(),
                "id=agent,file=/dev/fdset/4,format=raw,if=none,readonly=on,file.locking=off".into(),
                "-device".into(),
                "virtio-blk-device,drive=agent".into(),
                "-device".into(),
                "virtio-serial-device".into(),
                "-chardev".into(),
                format!("socket,id=agent,fd={sock},server=on,wait=off"),
                "-device".into(),
                format!("virtserialport,chardev=agent,name={}", fcm_proto::PORT_NAME),
            ]);
        }
        a.extend(
            [
                "-netdev",
                &format!("tap,id=net0,fd={}", fds.tap),
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={}", spec.mac),
                "-chardev",
                &format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp),
                "-mon",
                "chardev=qmp,mode=control",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(fd) = fds.incoming {
            a.extend(["-incoming".into(), format!("fd:{fd}")]);
        }
        if sandbox {
            a.extend(["-sandbox".into(), SANDBOX.into()]);
        }
        a
    }
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
        &[PIDFILE, QMP, AGENT_SOCKET]
    }

    fn agent_channel(&self, dir: &Path, _port: u32) -> AgentChannel {
        AgentChannel::Serial(dir.join(AGENT_SOCKET))
    }

    fn memory_overhead_mib(&self) -> u32 {
        TB_SIZE_MIB
    }

    fn cpu_overhead_percent(&self) -> u32 {
        // Under TCG each vCPU thread can take a whole core; the main loop
        // that emulates the disk and network needs room beside them.
        50
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError> {
        self.spawn(spec, None)
    }

    fn launch_saved(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError> {
        let memory = from.join(MEMORY);
        let stream = File::open(&memory)
            .map_err(|e| VmmError::Load(format!("{}: {e}", memory.display())))?;
        self.spawn(spec, Some(stream))
    }

    fn save_state(&self, dir: &Path, into: &Path) -> Result<(), VmmError> {
        let sock = dir.join(QMP);
        let save = |e: String| VmmError::Save(e);
        qmp(&sock, &serde_json::json!({"execute": "stop"})).map_err(save)?;
        let (part, done) = (into.join(format!("{MEMORY}.part")), into.join(MEMORY));
        // The daemon opens the file (QEMU, sandboxed as the VM's user,
        // could not); it takes its final name only once whole and synced.
        let file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| save(format!("{}: {e}", part.display())))?;
        let result = (|| {
            // No bandwidth cap (QEMU's default is 32 MiB/s): the guest is stopped.
            qmp_session(
                &sock,
                &[
                    serde_json::json!({"execute": "getfd", "arguments": {"fdname": "fcm-save"}}),
                    serde_json::json!({"execute": "migrate-set-parameters",
                        "arguments": {"max-bandwidth": 1u64 << 40}}),
                    serde_json::json!({"execute": "migrate", "arguments": {"uri": "fd:fcm-save"}}),
                ],
                Some(file.as_fd()),
            )?;
            host::wait_until(MIGRATION_TIMEOUT, Duration::from_millis(20), || {
                match qmp(&sock, &serde_json::json!({"execute": "query-migrate"})) {
                    Ok(v) => migration_done(&v),
                    Err(e) => Some(Err(e)),
                }
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "migration did not complete within {} s",
                    MIGRATION_TIMEOUT.as_secs()
                ))
            })?;
            file.sync_all()
                .map_err(|e| format!("{}: {e}", part.display()))?;
            fs::rename(&part, &done).map_err(|e| format!("{}: {e}", done.display()))?;
            host::fs::sync_dir(into).map_err(|e| format!("{}: {e}", into.display()))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        result.map_err(save)
    }

    fn continue_guest(&self, dir: &Path) -> Result<(), VmmError> {
        let sock = dir.join(QMP);
        // An incoming QEMU loads the state first; `cont` once it has.
        let status = host::wait_until(MIGRATION_TIMEOUT, Duration::from_millis(20), || {
            match qmp(&sock, &serde_json::json!({"execute": "query-status"})) {
                Ok(v) => {
                    let s = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
                    (s != "inmigrate").then(|| Ok(s.to_owned()))
                }
                Err(e) => Some(Err(e)),
            }
        })
        .unwrap_or_else(|| {
            Err(format!(
                "the saved state did not load within {} s",
                MIGRATION_TIMEOUT.as_secs()
            ))
        })
        .map_err(VmmError::Load)?;
        if status == "running" {
            return Ok(());
        }
        // A save the daemon began before it died may still run: `cont`
        // now would run the guest only until it completes, when QEMU stops
        // it for good (postmigrate) while it is recorded running. Ended
        // first, it leaves the guest paused.
        let status = if migration_active(&sock) {
            let _ = qmp(&sock, &serde_json::json!({"execute": "migrate_cancel"}));
            host::wait_until(MIGRATION_TIMEOUT, Duration::from_millis(20), || {
                (!migration_active(&sock)).then_some(())
            })
            .ok_or_else(|| {
                VmmError::Load(format!(
                    "an unfinished save did not end within {} s",
                    MIGRATION_TIMEOUT.as_secs()
                ))
            })?;
            qmp(&sock, &serde_json::json!({"execute": "query-status"}))
                .map(|v| {
                    v.get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("")
                        .to_owned()
                })
                .map_err(VmmError::Load)?
        } else {
            status
        };
        if !matches!(status.as_str(), "paused" | "postmigrate" | "prelaunch") {
            return Err(VmmError::Load(format!("the guest is {status}")));
        }
        qmp(&sock, &serde_json::json!({"execute": "cont"}))
            .map(|_| ())
            .map_err(VmmError::Load)
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

impl Qemu {
    /// Starts QEMU: `launch`'s command line, plus `-incoming` from a saved
    /// guest's migration stream when `incoming` is set.
    fn spawn(&self, spec: &LaunchSpec<'_>, incoming: Option<File>) -> Result<u32, VmmError> {
        const PROGRAM: &str = "qemu-system-x86_64";
        let bin = host::find_program(&self.bin).ok_or_else(|| VmmError::MissingBinary {
            program: PROGRAM,
            path: self.bin.clone(),
        })?;
        let pidfile = spec.dir.join(PIDFILE);
        let _ = fs::remove_file(&pidfile);
        let open_ro = |p: &Path| -> Result<File, VmmError> {
            if self.sandbox && fs::metadata(p).is_ok_and(|m| m.mode() & 0o004 == 0) {
                return Err(VmmError::NotReady {
                    program: PROGRAM,
                    detail: format!(
                        "{} must be world-readable for QEMU's unprivileged user (chmod 0644 it, \
                         or turn qemu_sandbox off)",
                        p.display()
                    ),
                });
            }
            File::open(p).map_err(VmmError::Io)
        };
        let kernel = open_ro(spec.kernel)?;
        let initrd = spec.initrd.map(open_ro).transpose()?;
        let disk_ro = File::open(spec.rootfs).map_err(VmmError::Io)?;
        let config = spec
            .config_drive
            .map(File::open)
            .transpose()
            .map_err(VmmError::Io)?;
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(spec.console_log())
            .map_err(VmmError::Io)?;
        let stderr = console.try_clone().map_err(VmmError::Io)?;
        let tap = host::network::open_tap(spec.tap).map_err(VmmError::Tap)?;
        let qmp_path = spec.dir.join(QMP);
        let _ = fs::remove_file(&qmp_path);
        let qmp_listener = UnixListener::bind(&qmp_path).map_err(VmmError::Io)?;
        host::set_mode(&qmp_path, 0o600).map_err(VmmError::Io)?;
        // The agent's port: a socket in the VM dir (0700, root's) that
        // QEMU only holds as a descriptor, and its drive.
        let agent = match spec.agent_drive {
            Some(drive) => {
                let path = spec.dir.join(AGENT_SOCKET);
                let _ = fs::remove_file(&path);
                let listener = UnixListener::bind(&path).map_err(VmmError::Io)?;
                host::set_mode(&path, 0o600).map_err(VmmError::Io)?;
                Some((File::open(drive).map_err(VmmError::Io)?, listener))
            }
            None => None,
        };
        let fds = Fds {
            disk: spec.disk_lock.file().as_raw_fd(),
            disk_ro: disk_ro.as_raw_fd(),
            config: config.as_ref().map(AsRawFd::as_raw_fd),
            console: console.as_raw_fd(),
            kernel: kernel.as_raw_fd(),
            initrd: initrd.as_ref().map(AsRawFd::as_raw_fd),
            tap: tap.as_raw_fd(),
            qmp: qmp_listener.as_raw_fd(),
            agent: agent
                .as_ref()
                .map(|(drive, sock)| (drive.as_raw_fd(), sock.as_raw_fd())),
            incoming: incoming.as_ref().map(AsRawFd::as_raw_fd),
        };
        let args = Self::args(spec, &fds, self.sandbox);
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // In the child, in this order: enter the cgroups (as root), keep
        // the descriptors across exec, leave the daemon's session, drop to
        // the VM's user (QEMU's sandbox forbids it later).
        if let Some(cg) = spec.cgroup {
            cg.join_on_exec(&mut cmd);
        }
        spec.disk_lock.pass_to(&mut cmd);
        let inherit: Vec<RawFd> = [fds.disk_ro, fds.console, fds.kernel, fds.tap, fds.qmp]
            .into_iter()
            .chain(fds.initrd)
            .chain(fds.config)
            .chain(fds.incoming)
            .chain(fds.agent.into_iter().flat_map(|(a, b)| [a, b]))
            .collect();
        let user = self.sandbox.then_some(spec.user);
        // SAFETY: between fork and exec the closure only calls fcntl,
        // setsid, setgroups, setgid and setuid (async-signal-safe) on
        // values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags == -1
                        || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((uid, gid)) = user
                    && (libc::setgroups(0, std::ptr::null()) == -1
                        || libc::setgid(gid) == -1
                        || libc::setuid(uid) == -1)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        spec.spawned_at.set(Some(std::time::Instant::now()));
        let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
            program: PROGRAM,
            source,
        })?;
        let pid = child.id();
        // QEMU has its own copies now.
        drop((
            kernel,
            initrd,
            disk_ro,
            config,
            tap,
            qmp_listener,
            console,
            incoming,
            agent,
        ));
        // Reap the child whenever it exits, so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let kill = |e: VmmError| {
            host::signal(pid, host::Signal::KILL);
            e
        };
        host::write_atomic(&pidfile, pid.to_string().as_bytes(), 0o600)
            .map_err(|e| kill(VmmError::Io(e)))?;
        // Up once QMP answers (the machine is built then); a QEMU that
        // exits first says why on its stderr, in the console log.
        let query = serde_json::json!({"execute": "query-status"});
        let mut last = String::new();
        let up = host::wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            if !host::process_alive(pid, "") {
                return Some(false);
            }
            match qmp(&qmp_path, &query) {
                Ok(_) => Some(true),
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        match up {
            Some(true) => Ok(pid),
            // Why is on its stderr, in the console log: the manager adds
            // what the log gained to the error (`vmm::log_since`).
            Some(false) => Err(VmmError::NotReady {
                program: PROGRAM,
                detail: "it exited".into(),
            }),
            None => Err(kill(VmmError::NotReady {
                program: PROGRAM,
                detail: format!("QMP did not answer within 30 s ({last})"),
            })),
        }
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
