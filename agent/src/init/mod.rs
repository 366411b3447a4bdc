//! fcm's own init, `fcm-agent init`: PID 1 of a VM made from an image
//! (docs/guest.md, "Image boot"). The initramfs set up the network, put a
//! tmpfs on /run, the config drive's members in /run/fcm/config, the image
//! config at /run/fcm/image.json and this binary at /run/fcm/fcm-agent.
//!
//! It mounts what is missing, grows `/` to its disk, then supervises the
//! agent, sshd (when the image has one) and the image's service, reaps
//! every orphan, and shuts the machine down cleanly on SIGTERM (the
//! agent's `Shutdown`, busybox `reboot`), SIGUSR1/SIGUSR2 (busybox `halt`,
//! `poweroff`) and SIGINT (Ctrl-Alt-Del, QEMU's stop). It never exits:
//! PID 1 exiting panics the kernel. Every error is logged and survived.

use std::io::Write;

/// A line on the console, `fcm-init[uptime]: ...`; a console that cannot
/// be written is no reason to stop.
macro_rules! say {
    ($($t:tt)*) => {
        $crate::init::say_line(format_args!($($t)*))
    };
}

mod mounts;
pub use mounts::grow_root_to;
mod services;
mod supervise;

use std::time::{Duration, Instant};
use supervise::{Ended, Unit};

pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let up = up.split_whitespace().next().unwrap_or("?");
    let _ = writeln!(std::io::stderr(), "fcm-init[{up}]: {args}");
}

/// How long processes get to end after SIGTERM at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest sleep of the loop (an `agent.off` is looked at again).
const TICK: Duration = Duration::from_secs(5);

/// The signals init waits for (all blocked, taken with `sigtimedwait`).
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGHUP,
            libc::SIGPWR,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Runs as PID 1; never returns.
pub fn run() -> ! {
    say!("{} starting as init", crate::AGENT);
    // Ctrl-Alt-Del becomes a SIGINT to PID 1 instead of an instant reboot.
    // SAFETY: reboot(2) with a command that only sets a flag.
    if unsafe { libc::reboot(libc::RB_DISABLE_CAD) } < 0 {
        say!(
            "warning: cannot take Ctrl-Alt-Del: {}",
            std::io::Error::last_os_error()
        );
    }
    let set = signal_set();
    // SAFETY: blocks the set for this thread (init has no other).
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        say!("warning: cannot block signals");
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let _ = rustix::process::chdir("/");
    mounts::mount_all();
    mounts::grow_root();
    let mut units = services::units();
    loop {
        let step =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&mut units, &set)));
        if step.is_err() {
            say!("error: the supervision loop panicked; going on");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// One turn: start what is due, wait for a signal or the next start,
/// reap, shut down if asked.
fn step(units: &mut [Unit], set: &libc::sigset_t) {
    let now = Instant::now();
    for u in units.iter_mut() {
        u.start_if_due(now);
    }
    let wait = units
        .iter()
        .filter_map(|u| u.due)
        .map(|d| d.saturating_duration_since(now))
        .min()
        .unwrap_or(TICK)
        .clamp(Duration::from_millis(10), TICK);
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
    };
    // SAFETY: waits on the blocked set; the info pointer may be null.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    reap(units);
    match sig {
        libc::SIGTERM | libc::SIGINT | libc::SIGUSR1 | libc::SIGUSR2 | libc::SIGPWR => {
            shutdown(sig)
        }
        _ => {}
    }
}

/// Reaps every ended child (its own programs and reparented orphans).
fn reap(units: &mut [Unit]) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let ended = if libc::WIFSIGNALED(status) {
            Ended::Killed(libc::WTERMSIG(status))
        } else {
            Ended::Exited(libc::WEXITSTATUS(status))
        };
        if let Some(u) = units.iter_mut().find(|u| u.pid == Some(pid)) {
            u.ended(ended, Instant::now());
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT (Ctrl-Alt-Del)",
        libc::SIGUSR1 => "SIGUSR1 (halt)",
        libc::SIGUSR2 => "SIGUSR2 (poweroff)",
        libc::SIGPWR => "SIGPWR",
        _ => "a signal",
    }
}

/// Ends every process (SIGTERM, up to 5 s, then SIGKILL), syncs, remounts
/// `/` read-only and reboots: with `reboot=k` and QEMU's `-no-reboot` (and
/// in Firecracker) the VMM exits. Never returns.
fn shutdown(sig: i32) -> ! {
    say!("{}: stopping every process", signal_name(sig));
    // SAFETY: kill(2) of every process but init itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    let mut left = true;
    while Instant::now() < deadline {
        if !reap_all() {
            left = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if left {
        say!(
            "processes left after {} s, killed: {}",
            STOP_GRACE.as_secs(),
            user_processes().join(", ")
        );
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(1);
        while reap_all() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    rustix::fs::sync();
    // SAFETY: mount(2) remounting `/` read-only; the strings are literals.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if r < 0 {
        say!(
            "warning: cannot remount / read-only: {}",
            std::io::Error::last_os_error()
        );
    }
    rustix::fs::sync();
    say!("rebooting (the VMM exits)");
    // SAFETY: reboot(2); it does not return when it works.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    say!(
        "error: reboot failed: {}; waiting",
        std::io::Error::last_os_error()
    );
    loop {
        reap_all();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The processes other than init that run a program (kernel threads have
/// an empty command line), as `pid name`.
fn user_processes() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let pid: u32 = name.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if pid == 1 || cmdline.is_empty() {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Some(format!("{pid} {}", comm.trim()))
    })
    .collect()
}

/// Reaps what ended; whether any child is left.
fn reap_all() -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return true;
        }
        if pid < 0 {
            return false; // ECHILD: none left
        }
    }
}
