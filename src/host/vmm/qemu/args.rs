//! QEMU's command line: every file a descriptor the daemon opened
//! (`-add-fd`, `/proc/self/fd/N`), the devices both boots and loads share,
//! and the kernel arguments TCG needs.

use std::fs;
use std::os::fd::RawFd;
use std::path::Path;

use super::fork;
use super::{Qemu, SANDBOX, TB_SIZE_MIB};
use crate::host::vmm::LaunchSpec;

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
    /// Loaded after start-up (`-incoming defer`, then `migrate-incoming`):
    /// a fork's device state, its RAM from its image.
    pub incoming_defer: bool,
    /// The guest's RAM as a file, and whether it is mapped shared
    /// (`Ram::Shared`) or privately (`Ram::Image`); none: QEMU's own.
    pub ram: Option<(RawFd, bool)>,
}

impl Qemu {
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
        if let Some((fd, shared)) = fds.ram {
            a.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id={},size={}M,mem-path=/proc/self/fd/{fd},share={}",
                    fork::RAM_ID,
                    spec.memory_mib,
                    if shared { "on" } else { "off" }
                ),
                "-machine".into(),
                format!("memory-backend={}", fork::RAM_ID),
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
        match fds.incoming {
            Some(_) if fds.incoming_defer => a.extend(["-incoming".into(), "defer".into()]),
            Some(fd) => a.extend(["-incoming".into(), format!("fd:{fd}")]),
            None => {}
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
