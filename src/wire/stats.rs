//! A VM's resource use (`GET /vms/{vm}/stats`, `GET /stats`, `fcm stats`,
//! the web page): one sample of the daemon's sampler (docs/metrics.md).

use serde::{Deserialize, Serialize};

/// One VM's numbers at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    /// In a cluster, the VM's host (`GET /stats` lists every live host's
    /// VMs); absent on a single host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub name: String,
    pub id: String,
    pub state: String,
    /// When the host-side numbers were read, Unix milliseconds.
    pub at: u64,
    /// The sampler's interval: `cpu.percent` is over the last one.
    pub interval_ms: u64,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub disk: DiskStats,
    pub net: NetStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuStats {
    pub vcpus: u32,
    /// CPU time of the VMM (all its threads) since it started, µs.
    pub usage_usec: u64,
    /// Over the last interval; 100 = one host core (may exceed 100).
    pub percent: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// The VM's memory (what the guest is given).
    pub limit_bytes: u64,
    /// Resident memory of the VMM process on the host.
    pub vmm_rss_bytes: u64,
    /// The guest's own view (its /proc/meminfo); null when its agent did
    /// not answer (not running, no agent, too slow).
    pub guest: Option<GuestMemory>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskStats {
    /// Apparent size of the VM's disk file.
    pub size_bytes: u64,
    /// Blocks the host allocated for it (sparse and reflinked files hold less).
    pub allocated_bytes: u64,
    /// The guest's root file system (df); null as for memory.
    pub guest: Option<GuestDisk>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestDisk {
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// The VM's network interface, seen from the guest: rx is what went into
/// the guest (its tap's tx), tx what came out of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// One line of `GET /events` (NDJSON). Fields a type does not have are
/// left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Ordinal of the event in the daemon's life (none on heartbeats and
    /// `lagged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// RFC 3339, UTC, milliseconds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    /// `state`, `operation`, `created`, `destroyed`, `lagged`, `heartbeat`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// `begin` or `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `lagged`: how many events this subscriber missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_have_the_documented_fields() {
        let v = serde_json::to_value(VmStats::default()).expect("json");
        for k in ["name", "id", "state", "at", "interval_ms", "cpu", "memory"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["memory"]["guest"].is_null());
        assert!(v["disk"]["guest"].is_null());
        assert!(v["net"]["rx_packets"].is_u64());
        let e = Event {
            seq: Some(1),
            kind: "state".into(),
            from: Some("stopped".into()),
            ..Event::default()
        };
        let s = serde_json::to_string(&e).expect("json");
        assert_eq!(s, r#"{"seq":1,"type":"state","from":"stopped"}"#);
    }
}
