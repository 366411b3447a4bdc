//! `"cluster": {...}`: several hosts, one fcm, on etcd (docs/cluster.md).
//! Off unless `endpoints` is set (`fcm daemon --cluster URLS`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd's client URLs (`http://10.0.0.1:2379`), tried in turn; empty: no cluster.
    pub endpoints: Vec<String>,
    /// This host's name in the cluster; unset: the machine's hostname.
    pub host_name: Option<String>,
    /// The API address other hosts and clients reach this host at; unset:
    /// the API's own (`listen`), which must then not be `0.0.0.0`.
    pub advertise: Option<SocketAddr>,
    /// Seconds the host's lease lives without a keep-alive: a host silent
    /// this long is `dead`. Keep-alives go out every third of it.
    pub lease_ttl_secs: u64,
    /// Deadline of each request to an etcd member, in milliseconds.
    pub request_timeout_ms: u64,
    /// Where fcm's keys live in etcd (one prefix per cluster).
    pub prefix: String,
    /// Memory placement counts for this host, in MiB; unset: the machine's.
    pub memory_mib: Option<u64>,
    /// vCPUs shown for this host; unset: the machine's.
    pub cpus: Option<u32>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            host_name: None,
            advertise: None,
            lease_ttl_secs: 10,
            request_timeout_ms: 2000,
            prefix: "/fcm/".into(),
            memory_mib: None,
            cpus: None,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Some(format!(
                "cluster.endpoints: {e:?} is not an http:// or https:// URL of an etcd member"
            ));
        }
        if !(2..=3600).contains(&self.lease_ttl_secs) {
            return Some("cluster.lease_ttl_secs must be between 2 and 3600".into());
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Some("cluster.request_timeout_ms must be between 100 and 60000".into());
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() > 64 {
            return Some("cluster.prefix must start and end with / (at most 64 bytes)".into());
        }
        if let Some(p) = self.host_name.as_deref().and_then(host_name_problem) {
            return Some(format!("cluster.host_name: {p}"));
        }
        None
    }
}

/// Why `name` cannot be a host's name: 1-63 of `[a-z0-9-]`, not starting
/// or ending with `-` (it is a DNS label and an etcd key).
pub fn host_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!ok).then(|| {
        format!("{name:?} is not a host name: 1-63 of [a-z0-9-], not starting or ending with -")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        let mut c = ClusterConfig::default();
        assert!(!c.enabled() && c.problem().is_none());
        c.endpoints = vec!["10.0.0.1:2379".into()];
        assert!(c.problem().is_some());
        c.endpoints = vec!["http://10.0.0.1:2379".into()];
        assert_eq!(c.problem(), None);
        c.host_name = Some("Bad_Name".into());
        assert!(c.problem().is_some());
        c.host_name = Some("node-1".into());
        c.lease_ttl_secs = 1;
        assert!(c.problem().is_some());
    }
}
