//! What the host's kernel says a VM uses: a process's CPU time and
//! resident memory (`/proc/<pid>/stat`, `/proc/<pid>/status`), a file's
//! apparent and allocated size, and the counters of network interfaces as
//! this process's network namespace sees them (`/proc/net/dev`). Each read
//! is one small file; a value that cannot be read is `None`, never a panic.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Kernel clock ticks per second (`utime`/`stime` are in these).
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// CPU time (user + system, every thread) of a process, in µs.
pub fn cpu_usec(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text).map(|t| t.saturating_mul(1_000_000) / ticks_per_second())
}

/// `utime + stime` of a `/proc/<pid>/stat` line: fields 14 and 15, counted
/// after the command name in parentheses (which may hold spaces and `)`).
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// Resident memory of a process (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, "VmRSS:")
}

/// A `Name:  N kB` line's value in bytes.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|k| k.saturating_mul(1024))
}

/// A file's apparent size and the bytes its blocks take on the host.
pub fn file_space(path: &Path) -> Option<(u64, u64)> {
    let m = fs::metadata(path).ok()?;
    Some((m.len(), m.blocks().saturating_mul(512)))
}

/// An interface's counters, as the host sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Every interface of this thread's network namespace and its counters.
pub fn interfaces() -> BTreeMap<String, IfCounters> {
    fs::read_to_string("/proc/net/dev")
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

fn parse_net_dev(text: &str) -> BTreeMap<String, IfCounters> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 10 {
            continue;
        }
        out.insert(
            name.trim().to_owned(),
            IfCounters {
                rx_bytes: v[0],
                rx_packets: v[1],
                tx_bytes: v[8],
                tx_packets: v[9],
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_odd_names() {
        let line = "42 (qemu) x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(300));
        assert_eq!(parse_stat_ticks("42 (short) S 1"), None);
        assert_eq!(parse_stat_ticks("nonsense"), None);
    }

    #[test]
    fn own_process_reads() {
        let me = std::process::id();
        assert!(cpu_usec(me).is_some());
        assert!(rss_bytes(me).is_some_and(|r| r > 0));
        assert_eq!(cpu_usec(u32::MAX), None);
    }

    #[test]
    fn net_dev_parses() {
        let t = "Inter-|   Receive  |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n\
                 tap_abc: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n bad: 1 2\n";
        let m = parse_net_dev(t);
        assert_eq!(
            m.get("tap_abc"),
            Some(&IfCounters {
                rx_bytes: 100,
                rx_packets: 2,
                tx_bytes: 300,
                tx_packets: 4
            })
        );
        assert!(m.contains_key("lo"));
        assert!(!m.contains_key("bad"));
    }
}
