//! The Firecracker backend: configure the guest through the API socket,
//! InstanceStart.
//!
//! By default Firecracker runs under its jailer: a chroot at
//! `<vm dir>/jail/firecracker/<id>/root` holding the guest's kernel, initrd
//! and disk (hard links), the VM's own uid and gid, a new mount namespace,
//! Firecracker's default seccomp filters, and the VM's cgroup (entered
//! before the jailer execs). Its API socket is then inside the chroot.
//! Without the jailer, Firecracker runs as root with its socket in the VM dir.
//!
//! **Saved guests.** A snapshot (pause, then Full snapshot create) is
//! written where the VMM can write: its chroot when jailed. The daemon then
//! moves the two files into the state directory (root's only) and checks
//! there that each is a plain file with one link, so a compromised VMM
//! cannot pass off a symlink or a link to a host file. A load links them
//! back into a fresh chroot, owned by root and only readable by the VM's
//! group, and restores the same tap by name.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::Backend;
use super::{AgentChannel, FC_VSOCK, LaunchSpec, Vmm, VmmError};
use crate::host;

mod api;
mod jail;

pub use api::{api_call, api_call_within};
use api::{call, connect, put};
pub use jail::{JAIL, api_socket, chroots, find_jailed, is_jailed_in};
use jail::{
    JAIL_AGENT, JAIL_CONFIG, JAIL_INITRD, JAIL_KERNEL, JAIL_ROOTFS, build_jail, link_into_jail,
    open_saved,
};

pub const SOCKET: &str = "firecracker.socket";
pub const PIDFILE: &str = "firecracker.pid";
/// A saved guest, inside a state directory: device state and memory.
pub const VMSTATE: &str = "vmstate";
pub const MEMORY: &str = "memory";
/// Longest a snapshot create or load may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Firecracker {
    bin: PathBuf,
    /// The jailer binary, when Firecracker runs jailed.
    jailer: Option<PathBuf>,
}

impl Firecracker {
    pub fn new(bin: PathBuf, jailer: Option<PathBuf>) -> Self {
        Self { bin, jailer }
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
        &[SOCKET, PIDFILE, FC_VSOCK]
    }

    fn agent_channel(&self, dir: &Path, port: u32) -> AgentChannel {
        // Jailed, the socket is in the chroot, beside the API socket.
        let api = api_socket(dir);
        let socket = match api.parent() {
            Some(p) if api != dir.join(SOCKET) => p.join(FC_VSOCK),
            _ => dir.join(FC_VSOCK),
        };
        AgentChannel::Vsock { socket, port }
    }

    fn runtime_dirs(&self) -> &'static [&'static str] {
        &[JAIL]
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<u32, VmmError> {
        let (pid, socket, files) = self.spawn(spec)?;
        self.configure(spec, pid, &socket, &files)
            .inspect_err(|_| host::signal(pid, host::Signal::KILL))?;
        Ok(pid)
    }

    fn launch_saved(&self, spec: &LaunchSpec<'_>, from: &Path) -> Result<u32, VmmError> {
        let saved = [from.join(VMSTATE), from.join(MEMORY)];
        for f in &saved {
            if !f.is_file() {
                return Err(VmmError::Load(format!("{} is missing", f.display())));
            }
        }
        let (pid, socket, _) = self.spawn(spec)?;
        let kill = |e: VmmError| {
            host::signal(pid, host::Signal::KILL);
            e
        };
        // Jailed, the files are linked into the chroot, read-only for the VM.
        let paths = match self.jailer.is_some() {
            true => {
                let root = socket.parent().unwrap_or(spec.dir).to_owned();
                for (f, name) in saved.iter().zip([VMSTATE, MEMORY]) {
                    link_into_jail(f, &root.join(name), spec.user.1)
                        .map_err(|e| kill(VmmError::Load(format!("{}: {e}", f.display()))))?;
                }
                [
                    PathBuf::from(format!("/{VMSTATE}")),
                    PathBuf::from(format!("/{MEMORY}")),
                ]
            }
            false => saved.clone(),
        };
        // The same tap as before, by name (it was re-created with it).
        let load = json!({
            "snapshot_path": paths[0],
            "mem_backend": {"backend_type": "File", "backend_path": paths[1]},
            "resume_vm": false,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": spec.tap}],
        });
        call(
            &socket,
            "PUT",
            "snapshot/load",
            "/snapshot/load",
            load,
            SNAPSHOT_TIMEOUT,
        )
        .map_err(|e| kill(VmmError::Load(crate::error::chain(&e))))?;
        if self.jailer.is_some() {
            // The loaded VMM opened the disk itself: the lock moves there.
            spec.disk_lock
                .hand_to(pid, spec.rootfs)
                .map_err(|e| kill(e.into()))?;
        }
        Ok(pid)
    }

    fn save_state(&self, dir: &Path, into: &Path) -> Result<(), VmmError> {
        let socket = api_socket(dir);
        let save = |e: VmmError| VmmError::Save(crate::error::chain(&e));
        call(
            &socket,
            "PATCH",
            "pause",
            "/vm",
            json!({"state": "Paused"}),
            Duration::from_secs(5),
        )
        .map_err(save)?;
        // Where the VMM writes: its chroot when jailed, else `into` itself.
        let jail = socket.parent().filter(|_| socket != dir.join(SOCKET));
        let written: [PathBuf; 2] = match jail {
            Some(root) => [root.join(VMSTATE), root.join(MEMORY)],
            None => [into.join(VMSTATE), into.join(MEMORY)],
        };
        for f in &written {
            let _ = fs::remove_file(f);
        }
        let (vm_path, mem_path) = match jail {
            Some(_) => (format!("/{VMSTATE}"), format!("/{MEMORY}")),
            None => (
                written[0].display().to_string(),
                written[1].display().to_string(),
            ),
        };
        call(
            &socket,
            "PUT",
            "snapshot/create",
            "/snapshot/create",
            json!({"snapshot_type": "Full", "snapshot_path": vm_path, "mem_file_path": mem_path}),
            SNAPSHOT_TIMEOUT,
        )
        .map_err(save)?;
        for (f, name) in written.iter().zip([VMSTATE, MEMORY]) {
            let dst = into.join(name);
            if jail.is_some() {
                fs::rename(f, &dst).map_err(|e| VmmError::Save(format!("{}: {e}", f.display())))?;
            }
            let file =
                open_saved(&dst).map_err(|e| VmmError::Save(format!("{}: {e}", dst.display())))?;
            file.sync_all()
                .map_err(|e| VmmError::Save(format!("{}: {e}", dst.display())))?;
        }
        host::fs::sync_dir(into).map_err(|e| VmmError::Save(format!("{}: {e}", into.display())))
    }

    fn continue_guest(&self, dir: &Path) -> Result<(), VmmError> {
        call(
            &api_socket(dir),
            "PATCH",
            "resume",
            "/vm",
            json!({"state": "Resumed"}),
            Duration::from_secs(5),
        )
    }

    fn request_shutdown(&self, dir: &Path) -> Result<(), VmmError> {
        put(
            &api_socket(dir),
            "SendCtrlAltDel",
            "/actions",
            json!({"action_type": "SendCtrlAltDel"}),
        )
    }
}

impl Firecracker {
    /// Spawns the VMM (under the jailer, when set) and waits for its API
    /// socket; returns its pid, the socket and the guest's files as the
    /// VMM sees them.
    fn spawn(&self, spec: &LaunchSpec<'_>) -> Result<(u32, PathBuf, GuestFiles), VmmError> {
        let bin = host::find_program(&self.bin).ok_or_else(|| VmmError::MissingBinary {
            program: "firecracker",
            path: self.bin.clone(),
        })?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(spec.console_log())
            .map_err(VmmError::Io)?;
        let log2 = log.try_clone().map_err(VmmError::Io)?;
        // Where the VMM finds its socket and files, and how it is started.
        let (mut cmd, socket, files) = match &self.jailer {
            Some(jailer) => {
                let jailer = host::find_program(jailer).ok_or_else(|| VmmError::MissingBinary {
                    program: "jailer",
                    path: jailer.clone(),
                })?;
                let root = build_jail(&bin, spec)?;
                let (uid, gid) = spec.user;
                let mut cmd = Command::new(jailer);
                cmd.arg("--id")
                    .arg(spec.id)
                    .arg("--exec-file")
                    .arg(&bin)
                    .arg("--uid")
                    .arg(uid.to_string())
                    .arg("--gid")
                    .arg(gid.to_string())
                    .arg("--chroot-base-dir")
                    .arg(spec.dir.join(JAIL))
                    .arg("--")
                    .arg("--api-sock")
                    .arg(format!("/{SOCKET}"));
                let files = GuestFiles {
                    kernel: PathBuf::from(JAIL_KERNEL),
                    initrd: spec.initrd.map(|_| PathBuf::from(JAIL_INITRD)),
                    rootfs: PathBuf::from(JAIL_ROOTFS),
                    config: spec.config_drive.map(|_| PathBuf::from(JAIL_CONFIG)),
                    agent: spec.agent_drive.map(|_| {
                        (
                            PathBuf::from(JAIL_AGENT),
                            PathBuf::from(format!("/{FC_VSOCK}")),
                        )
                    }),
                };
                (cmd, root.join(SOCKET), files)
            }
            None => {
                let socket = spec.dir.join(SOCKET);
                let _ = fs::remove_file(&socket);
                let mut cmd = Command::new(&bin);
                spec.disk_lock.pass_to(&mut cmd);
                cmd.arg("--api-sock").arg(&socket).arg("--id").arg(spec.id);
                let files = GuestFiles {
                    kernel: spec.kernel.to_owned(),
                    initrd: spec.initrd.map(Path::to_owned),
                    rootfs: spec.rootfs.to_owned(),
                    config: spec.config_drive.map(Path::to_owned),
                    agent: spec
                        .agent_drive
                        .map(|d| (d.to_owned(), spec.dir.join(FC_VSOCK))),
                };
                if files.agent.is_some() {
                    let _ = fs::remove_file(spec.dir.join(FC_VSOCK));
                }
                (cmd, socket, files)
            }
        };
        if let Some(cg) = spec.cgroup {
            cg.join_on_exec(&mut cmd);
        }
        spec.spawned_at.set(Some(std::time::Instant::now()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                program: if self.jailer.is_some() {
                    "jailer"
                } else {
                    "firecracker"
                },
                source,
            })?;
        let pid = child.id();
        let kill = |e: VmmError| {
            host::signal(pid, host::Signal::KILL);
            e
        };
        host::write_atomic(&spec.dir.join(PIDFILE), pid.to_string().as_bytes(), 0o600)
            .map_err(|e| kill(VmmError::Io(e)))?;
        // Reap the child whenever it exits, so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let ready = host::wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            connect(&socket).ok()
        });
        if ready.is_none() {
            return Err(kill(VmmError::NotReady {
                program: "firecracker",
                detail: format!("API socket {} did not appear within 5 s", socket.display()),
            }));
        }
        Ok((pid, socket, files))
    }

    /// Configures a fresh VMM and boots its guest.
    fn configure(
        &self,
        spec: &LaunchSpec<'_>,
        pid: u32,
        socket: &Path,
        files: &GuestFiles,
    ) -> Result<(), VmmError> {
        let mut boot = json!({
            "kernel_image_path": files.kernel,
            "boot_args": format!("{} pci=off", spec.cmdline),
        });
        if let Some(initrd) = &files.initrd {
            boot["initrd_path"] = json!(initrd);
        }
        put(socket, "boot-source", "/boot-source", boot)?;
        put(
            socket,
            "drives",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": files.rootfs, "is_root_device": true, "is_read_only": false}),
        )?;
        if let Some(config) = &files.config {
            put(
                socket,
                "drives",
                "/drives/config",
                json!({"drive_id": "config", "path_on_host": config, "is_root_device": false, "is_read_only": true}),
            )?;
        }
        if let Some((drive, vsock)) = &files.agent {
            put(
                socket,
                "drives",
                "/drives/agent",
                json!({"drive_id": "agent", "path_on_host": drive, "is_root_device": false, "is_read_only": true}),
            )?;
            put(
                socket,
                "vsock",
                "/vsock",
                json!({"guest_cid": 3, "uds_path": vsock}),
            )?;
        }
        if self.jailer.is_some() {
            // The jailer closed the inherited lock; Firecracker has now
            // opened the disk itself: the lock moves into its descriptor.
            spec.disk_lock.hand_to(pid, spec.rootfs)?;
        }
        let steps: [(&'static str, &str, serde_json::Value); 3] = [
            (
                "machine-config",
                "/machine-config",
                json!({"vcpu_count": spec.cpus, "mem_size_mib": spec.memory_mib}),
            ),
            (
                "network-interfaces",
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "guest_mac": spec.mac, "host_dev_name": spec.tap}),
            ),
            (
                "InstanceStart",
                "/actions",
                json!({"action_type": "InstanceStart"}),
            ),
        ];
        for (step, path, body) in steps {
            put(socket, step, path, body)?;
        }
        Ok(())
    }
}

/// Paths of the guest's files as the VMM sees them.
struct GuestFiles {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    rootfs: PathBuf,
    config: Option<PathBuf>,
    /// The agent drive, and where Firecracker puts its vsock socket.
    agent: Option<(PathBuf, PathBuf)>,
}
