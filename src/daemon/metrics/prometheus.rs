//! `GET /metrics`: the Prometheus text exposition format 0.0.4 (every
//! family with `# HELP` and `# TYPE`; label values escaped). The series
//! are listed in docs/metrics.md.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::all;
use crate::daemon::events::ops::BUCKETS;
use crate::daemon::lifecycle::VmState;
use crate::daemon::manager::Manager;
use crate::host::usage;
use crate::wire::stats::VmStats;

/// The Content-Type of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value, escaped as the format says (`\\`, `\"`, `\n`).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A float as the format writes it.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl ToString) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", v.to_string());
    }

    /// One gauge or counter per VM.
    fn per_vm(
        &mut self,
        vms: &[VmStats],
        name: &str,
        kind: &str,
        help: &str,
        f: impl Fn(&VmStats) -> Option<f64>,
    ) {
        self.family(name, kind, help);
        for s in vms {
            if let Some(v) = f(s) {
                self.sample(name, &[("vm", &s.name), ("id", &s.id)], num(v));
            }
        }
    }
}

/// The whole page.
pub fn render(m: &Manager) -> String {
    let vms = all(m);
    let t = m.telemetry();
    let mut o = Out(String::with_capacity(4096 + vms.len() * 2048));

    o.family("fcm_vms", "gauge", "VMs by state.");
    for st in VmState::ALL {
        let n = vms.iter().filter(|v| v.state == st.as_str()).count();
        o.sample("fcm_vms", &[("state", st.as_str())], n);
    }

    let ops = t.ops.snapshot();
    o.family(
        "fcm_operations_total",
        "counter",
        "Operations ended, by kind and result.",
    );
    for ((op, ok), h) in &ops {
        let result = if *ok { "ok" } else { "error" };
        o.sample(
            "fcm_operations_total",
            &[("op", op), ("result", result)],
            h.count,
        );
    }
    let name = "fcm_operation_duration_seconds";
    o.family(
        name,
        "histogram",
        "How long operations took, by kind and result.",
    );
    for ((op, ok), h) in &ops {
        let result = if *ok { "ok" } else { "error" };
        for (le, n) in BUCKETS.iter().zip(h.cumulative()) {
            let le = num(*le);
            o.sample(
                &format!("{name}_bucket"),
                &[("op", op), ("result", result), ("le", &le)],
                n,
            );
        }
        o.sample(
            &format!("{name}_bucket"),
            &[("op", op), ("result", result), ("le", "+Inf")],
            h.count,
        );
        o.sample(
            &format!("{name}_sum"),
            &[("op", op), ("result", result)],
            num(h.sum_secs),
        );
        o.sample(
            &format!("{name}_count"),
            &[("op", op), ("result", result)],
            h.count,
        );
    }

    o.family("fcm_vm_info", "gauge", "One per VM: its state as a label.");
    for s in &vms {
        o.sample(
            "fcm_vm_info",
            &[("vm", &s.name), ("id", &s.id), ("state", &s.state)],
            1,
        );
    }
    let f = |v: u64| Some(v as f64);
    o.per_vm(&vms, "fcm_vm_vcpus", "gauge", "vCPUs of the VM.", |s| {
        f(u64::from(s.cpu.vcpus))
    });
    o.per_vm(
        &vms,
        "fcm_vm_cpu_seconds_total",
        "counter",
        "CPU time of the VM's VMM (all its threads) since it started.",
        |s| Some(s.cpu.usage_usec as f64 / 1e6),
    );
    o.per_vm(
        &vms,
        "fcm_vm_cpu_percent",
        "gauge",
        "CPU of the VMM over the sampler's last interval; 100 = one host core.",
        |s| Some(s.cpu.percent),
    );
    o.per_vm(
        &vms,
        "fcm_vm_memory_limit_bytes",
        "gauge",
        "Memory the guest is given.",
        |s| f(s.memory.limit_bytes),
    );
    o.per_vm(
        &vms,
        "fcm_vm_vmm_rss_bytes",
        "gauge",
        "Resident memory of the VMM process on the host.",
        |s| f(s.memory.vmm_rss_bytes),
    );
    o.per_vm(
        &vms,
        "fcm_vm_guest_memory_total_bytes",
        "gauge",
        "The guest's MemTotal (when its agent answered).",
        |s| s.memory.guest.as_ref().map(|g| g.total_bytes as f64),
    );
    o.per_vm(
        &vms,
        "fcm_vm_guest_memory_available_bytes",
        "gauge",
        "The guest's MemAvailable (when its agent answered).",
        |s| s.memory.guest.as_ref().map(|g| g.available_bytes as f64),
    );
    o.per_vm(
        &vms,
        "fcm_vm_disk_size_bytes",
        "gauge",
        "Apparent size of the VM's disk file.",
        |s| f(s.disk.size_bytes),
    );
    o.per_vm(
        &vms,
        "fcm_vm_disk_allocated_bytes",
        "gauge",
        "Bytes the host allocated for the VM's disk file.",
        |s| f(s.disk.allocated_bytes),
    );
    o.per_vm(
        &vms,
        "fcm_vm_guest_disk_total_bytes",
        "gauge",
        "Size of the guest's root file system (when its agent answered).",
        |s| s.disk.guest.as_ref().map(|g| g.total_bytes as f64),
    );
    o.per_vm(
        &vms,
        "fcm_vm_guest_disk_used_bytes",
        "gauge",
        "Used space of the guest's root file system (when its agent answered).",
        |s| s.disk.guest.as_ref().map(|g| g.used_bytes as f64),
    );
    for (name, help, get) in [
        (
            "fcm_vm_network_receive_bytes_total",
            "Bytes into the guest (its tap's tx).",
            (|s: &VmStats| s.net.rx_bytes) as fn(&VmStats) -> u64,
        ),
        (
            "fcm_vm_network_receive_packets_total",
            "Packets into the guest.",
            |s: &VmStats| s.net.rx_packets,
        ),
        (
            "fcm_vm_network_transmit_bytes_total",
            "Bytes out of the guest (its tap's rx).",
            |s: &VmStats| s.net.tx_bytes,
        ),
        (
            "fcm_vm_network_transmit_packets_total",
            "Packets out of the guest.",
            |s: &VmStats| s.net.tx_packets,
        ),
    ] {
        o.per_vm(&vms, name, "counter", help, |s| f(get(s)));
    }

    o.family(
        "fcm_events_total",
        "counter",
        "Events published (state changes, operations, creates, destroys).",
    );
    o.sample("fcm_events_total", &[], t.hub.published());
    o.family(
        "fcm_events_subscribers",
        "gauge",
        "Clients following GET /events.",
    );
    o.sample("fcm_events_subscribers", &[], t.hub.subscribers());
    o.family(
        "fcm_metrics_sampler_passes_total",
        "counter",
        "Passes of the metrics sampler.",
    );
    o.sample(
        "fcm_metrics_sampler_passes_total",
        &[],
        t.sampler_passes.load(Ordering::Relaxed),
    );
    o.family(
        "fcm_metrics_sampler_seconds_total",
        "counter",
        "Wall time the metrics sampler's passes took.",
    );
    o.sample(
        "fcm_metrics_sampler_seconds_total",
        &[],
        num(t.sampler_usec.load(Ordering::Relaxed) as f64 / 1e6),
    );
    let me = std::process::id();
    o.family(
        "process_cpu_seconds_total",
        "counter",
        "CPU time of the daemon.",
    );
    o.sample(
        "process_cpu_seconds_total",
        &[],
        num(usage::cpu_usec(me).unwrap_or(0) as f64 / 1e6),
    );
    o.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon.",
    );
    o.sample(
        "process_resident_memory_bytes",
        &[],
        usage::rss_bytes(me).unwrap_or(0),
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        let mut o = Out(String::new());
        o.sample("m", &[("vm", "a\"b")], 1);
        assert_eq!(o.0, "m{vm=\"a\\\"b\"} 1\n");
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(0.25), "0.25");
    }
}
