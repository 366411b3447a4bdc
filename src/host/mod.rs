//! The host layer: everything fcm does to the machine it runs on. It
//! knows nothing of the daemon; the daemon drives it.
//!
//! | module | the host side of |
//! |---|---|
//! | `process` | running programs (never a shell), signals, liveness, bounded waits |
//! | `piped` | programs whose stdin/stdout are streamed, with a watchdog |
//! | `child` | a child whose streams the caller pumps: deadline, safe signals |
//! | `fs` | atomic writes, file locks |
//! | `pty` | pseudo-terminals for the console's `ssh -tt` |
//! | `firewall` | the network policy: guests isolated from the host, each other, metadata; anti-spoofing |
//! | `network` | the bridge, `tap_<id>` devices with their policy rules, addresses |
//! | `tap` | tap devices in process: TUN ioctls, rtnetlink link changes |
//! | `usage` | what a VM uses: a process's CPU time and RSS, a file's allocated size, interface counters |
//! | `disk` | per-VM rootfs copies, growing them |
//! | `agent_drive` | the read-only drive with the guest agent, one per agent build |
//! | `config_drive` | the read-only drive with a guest's identity (host key, authorized keys) |
//! | `disk_lock` | one VMM per disk: a kernel lock the VMM itself holds |
//! | `cgroup` | one cgroup per VMM with the VM's CPU and memory limits |
//! | `vmm` | the VMM backends: Firecracker and QEMU |
//! | `caddy` | the public URLs: one Caddy site file per VM |
//! | `ssh` | the daemon's key, guests' host keys, SSH readiness |

pub mod agent_drive;
pub mod caddy;
pub mod cgroup;
pub mod child;
pub mod config_drive;
pub mod disk;
pub mod disk_lock;
pub mod firewall;
pub mod fs;
pub mod image;
pub mod network;
pub mod piped;
pub mod process;
pub mod pty;
pub mod ssh;
pub mod tap;
pub mod usage;
pub mod vmm;

pub use fs::{set_mode, write_atomic};
pub use piped::{Ended, Piped};
pub use process::{
    Captured, HostError, Outcome, Signal, capture, find_processes, find_program, is_root,
    process_alive, run, run_command, run_full, run_outcome, run_timeout, run_with_stdin, signal,
    wait_until,
};
