//! `GET /sandboxes/{id}/metrics` of the control API: one sample, read in
//! the sandbox's guest when asked (E2B keeps a history; fcm does not yet).

use serde_json::{Value, json};

use super::control::Failure;
use super::{E2b, rfc3339, unix_now};

/// What the guest says for a metrics sample: the CPU lines of /proc/stat
/// 0.2 s apart, the CPUs, memory (KiB), the root file system (bytes).
const METRICS_SCRIPT: &str = "head -1 /proc/stat; sleep 0.2; head -1 /proc/stat; nproc; \
     grep -E '^(MemTotal|MemAvailable|Cached):' /proc/meminfo; df -P -B1 / | tail -1";

#[derive(Debug, PartialEq)]
struct Metrics {
    cpus: u64,
    cpu_pct: f64,
    mem_total: u64,
    mem_used: u64,
    mem_cache: u64,
    disk_total: u64,
    disk_used: u64,
}

fn parse_metrics(out: &str) -> Option<Metrics> {
    let lines: Vec<&str> = out.lines().collect();
    let ticks = |l: &str| -> Option<(u64, u64)> {
        let v: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let idle = v.get(3)?.saturating_add(*v.get(4).unwrap_or(&0));
        Some((v.iter().fold(0u64, |a, x| a.saturating_add(*x)), idle))
    };
    let (t0, i0) = ticks(lines.first()?)?;
    let (t1, i1) = ticks(lines.get(1)?)?;
    // Guest numbers: never trusted to be sane (no overflow, no underflow).
    let (total, idle) = (t1.saturating_sub(t0), i1.saturating_sub(i0));
    let busy = total.saturating_sub(idle);
    let cpu_pct = if total > 0 {
        (busy as f64 * 100.0 / total as f64 * 10.0).round() / 10.0
    } else {
        0.0
    };
    let cpus = lines.get(2)?.trim().parse().ok()?;
    let kib = |name: &str| -> Option<u64> {
        lines
            .iter()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k.saturating_mul(1024))
    };
    let mem_total = kib("MemTotal:")?;
    let mem_used = mem_total.saturating_sub(kib("MemAvailable:")?);
    let mem_cache = kib("Cached:").unwrap_or(0);
    let df: Vec<u64> = lines
        .last()?
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    Some(Metrics {
        cpus,
        cpu_pct,
        mem_total,
        mem_used,
        mem_cache,
        disk_total: *df.first()?,
        disk_used: *df.get(1)?,
    })
}

impl E2b {
    /// Metrics: one sample, now, read in the guest (CPU over 0.2 s from
    /// /proc/stat, memory from /proc/meminfo, the root file system from df).
    /// A paused sandbox has none (an empty list).
    pub(super) fn metrics(&self, id: &str) -> Result<Value, Failure> {
        let (v, _) = self.sandbox(id)?;
        if v.state != "running" {
            return Ok(json!([]));
        }
        let (code, out, err) = self
            .helper(id, &[METRICS_SCRIPT])
            .map_err(|e| (e.code.http_status(), e.message))?;
        if code != 0 {
            return Err((502, format!("the guest could not say its metrics: {err}")));
        }
        let m = parse_metrics(&String::from_utf8_lossy(&out))
            .ok_or_else(|| (502, "the guest's metrics could not be read".to_owned()))?;
        let now = unix_now();
        Ok(json!([{
            "timestamp": rfc3339(now),
            "timestampUnix": now,
            "cpuCount": m.cpus,
            "cpuUsedPct": m.cpu_pct,
            "memUsed": m.mem_used,
            "memTotal": m.mem_total,
            "memCache": m.mem_cache,
            "diskUsed": m.disk_used,
            "diskTotal": m.disk_total,
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_the_guest_s_words() {
        let out = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu  150 0 150 900 0 0 0 0 0 0\n2\nMemTotal:  1000 kB\nMemAvailable:  400 kB\nCached:  100 kB\n/dev/vda 10000 2500 7500 25% /\n";
        let m = parse_metrics(out).expect("metrics");
        assert_eq!(m.cpus, 2);
        assert_eq!(m.cpu_pct, 50.0);
        assert_eq!(
            (m.mem_total, m.mem_used, m.mem_cache),
            (1_024_000, 614_400, 102_400)
        );
        assert_eq!((m.disk_total, m.disk_used), (10000, 2500));
        assert_eq!(parse_metrics("nonsense"), None);
        // A guest's nonsense never panics the daemon.
        let odd = "cpu 18446744073709551615 18446744073709551615 0 0\ncpu 0 0 0 0\n1\nMemTotal: 18446744073709551615 kB\nMemAvailable: 0 kB\n/dev/vda 1 2 0 0% /\n";
        assert!(parse_metrics(odd).is_some());
    }
}
