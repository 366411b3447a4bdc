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
use super::{AGENT_SOCKET, AgentChannel, LaunchSpec, Ram, Vmm, VmmError};
use crate::host;

mod args;
pub mod fork;
mod qmp;

pub use args::{Fds, cmdline_extra, host_tsc_khz};

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

/// What a new QEMU loads instead of booting.
enum Incoming {
    Boot,
    /// A whole saved guest (pause, checkpoint): `-incoming fd:N`.
    Stream(File),
    /// A fork's device state, its RAM the image (`-incoming defer`).
    Devices(File),
}

impl Qemu {
    pub fn new(bin: PathBuf, sandbox: bool) -> Self {
        Self { bin, sandbox }
    }
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
        self.spawn(spec, Incoming::Boot)
    }

    fn launch_saved(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError> {
        let memory = from.join(MEMORY);
        let stream = File::open(&memory)
            .map_err(|e| VmmError::Load(format!("{}: {e}", memory.display())))?;
        self.spawn(spec, Incoming::Stream(stream))
    }

    fn save_for_fork(&self, dir: &Path, pid: u32, into: &Path) -> Result<File, VmmError> {
        fork::save_devices(dir, into)?;
        fork::ram_image(pid)
    }

    fn resize_disk(&self, dir: &Path, bytes: u64) -> Result<(), VmmError> {
        // The drive's id on the command line (`args.rs`): the guest is told
        // its disk grew (a virtio config change) and sees the new size.
        qmp(
            &dir.join(QMP),
            &serde_json::json!({"execute": "block_resize",
                "arguments": {"device": "root", "size": bytes}}),
        )
        .map(|_| ())
        .map_err(|e| VmmError::Save(format!("growing the disk: {e}")))
    }

    fn launch_fork(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError> {
        let path = from.join(fork::DEVICES);
        let devices =
            File::open(&path).map_err(|e| VmmError::Load(format!("{}: {e}", path.display())))?;
        self.spawn(spec, Incoming::Devices(devices))
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
    fn spawn(&self, spec: &LaunchSpec<'_>, incoming: Incoming) -> Result<u32, VmmError> {
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
        let (incoming, incoming_defer) = match incoming {
            Incoming::Boot => (None, false),
            Incoming::Stream(f) => (Some(f), false),
            Incoming::Devices(f) => (Some(f), true),
        };
        // Shared RAM: a memfd of the guest's size, made here; an image:
        // the caller's (sealed) file.
        let own_ram = match spec.ram {
            Ram::Shared => Some(
                fork::memfd(
                    &format!("fcm-ram-{}", spec.id),
                    u64::from(spec.memory_mib) << 20,
                )
                .map_err(VmmError::Io)?,
            ),
            Ram::CopyOf(image) => {
                let size = image.metadata().map_err(VmmError::Io)?.len();
                let f = fork::memfd(&format!("fcm-ram-{}", spec.id), size).map_err(VmmError::Io)?;
                fork::copy_data(image, &f, size).map_err(VmmError::Io)?;
                Some(f)
            }
            Ram::Own | Ram::Image(_) => None,
        };
        let ram = match spec.ram {
            Ram::Own => None,
            Ram::Shared | Ram::CopyOf(_) => own_ram.as_ref().map(|f| (f.as_raw_fd(), true)),
            Ram::Image(f) => Some((f.as_raw_fd(), false)),
        };
        let fds = Fds {
            ram,
            incoming_defer,
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
            .chain(fds.ram.map(|(fd, _)| fd))
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
            agent,
            own_ram,
        ));
        let incoming_fd = incoming.as_ref().map(AsRawFd::as_raw_fd);
        drop(incoming);
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
            Some(true) if incoming_defer => {
                let fd = incoming_fd.unwrap_or(-1);
                fork::migrate_incoming(spec.dir, fd)
                    .map(|_| pid)
                    .map_err(|e| kill(VmmError::Load(e)))
            }
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
