//! The cluster's wire types (docs/cluster.md): a host's record, as stored
//! in etcd under `<prefix>hosts/<name>` and served by `GET /hosts`.

use serde::{Deserialize, Serialize};

/// What a host is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mib: u64,
    /// The state dir's file system.
    pub disk_bytes: u64,
}

/// What its VMs take of it, and what is left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub vms: u32,
    pub running: u32,
    /// vCPUs and memory of the VMs that hold them (running, or on their way).
    pub cpus_used: u32,
    pub memory_used_mib: u64,
    /// Capacity minus what the VMs hold, at most what the kernel has available.
    pub free_memory_mib: u64,
    pub disk_free_bytes: u64,
}

/// One host of the cluster, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Random, kept in the host's state dir: tells a restart of this host
    /// from another host taking its name.
    pub host_id: String,
    /// The API's address (`ip:port`) other hosts and clients reach.
    pub address: String,
    /// The terminal stream's address.
    pub stream_address: String,
    /// Whether both ports speak TLS.
    pub tls: bool,
    /// SHA-256 fingerprint of the daemon's certificate (`sha256:…`).
    pub fingerprint: String,
    /// The VM subnet (CIDR) and bridge: each host has its own.
    pub subnet: String,
    pub bridge: String,
    pub capacity: Capacity,
    pub load: Load,
    pub version: String,
    /// Unix seconds: when the daemon started, and when this record was written.
    pub started: u64,
    pub updated: u64,
    /// The names of the images this host has (placement of `create --image`).
    #[serde(default)]
    pub images: Vec<String>,
}

/// A host in `GET /hosts`: its record and whether it is alive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub record: HostRecord,
    /// `live` (its lease holds), `dead` (expired), or `unknown` (this
    /// daemon cannot reach the cluster: the record as last seen).
    pub state: String,
}

/// This daemon's link to the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `off` (a single host), `joining`, `connected`, `unreachable`, or
    /// `refused` (etcd answered, but the host may not join: the message says why).
    pub state: String,
    /// This host's name in the cluster.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Unix seconds since when the state holds.
    pub since: u64,
}

/// `GET /hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostsResponse {
    pub cluster: ClusterStatus,
    pub hosts: Vec<HostView>,
}
