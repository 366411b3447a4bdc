//! Joining the cluster: the token, the host's name, its VM subnet and its
//! bridge each claimed in an etcd transaction, so two hosts can never hold
//! the same one; then the host's `alive` key under a fresh lease.

use std::path::Path;

use super::etcd::{Cmp, Etcd, Op};
use super::{Cluster, ClusterError, lock};
use crate::config::host_name_problem;
use crate::wire::cluster::HostRecord;

/// The machine's hostname as a host name (lowercase, up to the first dot).
pub(super) fn machine_name() -> Result<String, ClusterError> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host_name_problem(&name) {
        None => Ok(name),
        Some(p) => Err(ClusterError::Setup(format!(
            "the machine's hostname {p}: give one with --host-name"
        ))),
    }
}

/// This host's id, made once and kept in the state dir.
pub(super) fn host_id(state_dir: &Path) -> Result<String, ClusterError> {
    let path = state_dir.join(".cluster-host-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_owned());
        }
    }
    let id: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    crate::host::write_atomic(&path, id.as_bytes(), 0o600)
        .map_err(|e| ClusterError::Setup(format!("could not write {}: {e}", path.display())))?;
    Ok(id)
}

/// SHA-256 of the token, hex: what etcd keeps to check that every host has
/// the same token (never the token itself).
pub(super) fn digest(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether two CIDR subnets share an address.
fn overlap(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Option<(u32, u32)> {
        let (ip, len) = s.split_once('/')?;
        let ip: std::net::Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        Some((u32::from(ip) & mask, mask))
    };
    match (parse(a), parse(b)) {
        (Some((na, ma)), Some((nb, mb))) => {
            let m = ma & mb;
            na & m == nb & m
        }
        _ => false,
    }
}

fn refused(message: String, hint: &str) -> ClusterError {
    ClusterError::Refused {
        message,
        hint: hint.to_owned(),
    }
}

impl Cluster {
    /// Claims what is this host's and registers it under a new lease.
    pub(super) fn join(&self, etcd: &Etcd) -> Result<(), ClusterError> {
        let me = self.fresh();
        let k = &self.keys;
        let name = me.name.clone();
        // The token: the first host sets it, the others must match it.
        let t = etcd.txn(
            &[Cmp::Absent(k.token())],
            &[Op::Put {
                key: k.token(),
                value: self.token_digest.clone().into_bytes(),
                lease: 0,
            }],
            &[Op::Get(k.token())],
        )?;
        if !t.succeeded
            && t.got.first().map(|kv| kv.value.as_slice()) != Some(self.token_digest.as_bytes())
        {
            return Err(refused(
                "this host's API token is not the cluster's".into(),
                "every host of a cluster has the same token: copy <state>/.token from a host of the cluster (0600), then start the daemon again",
            ));
        }
        // The name: not held by a live host, nor recorded for another one.
        if let Some(kv) = etcd.get(&k.alive(&name))? {
            if kv.value != me.host_id.as_bytes() {
                return Err(refused(
                    format!("the host name {name} is held by another live host"),
                    "give this host another name: --host-name NAME",
                ));
            }
            // This host's own key from before a restart: its lease goes.
            etcd.revoke(kv.lease)?;
        }
        let others: Vec<HostRecord> = etcd
            .list(&k.hosts())?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice::<HostRecord>(&kv.value).ok())
            .collect();
        for o in &others {
            if o.name == name && o.host_id != me.host_id {
                return Err(refused(
                    format!(
                        "the host name {name} belongs to another host (at {}, id {})",
                        o.address, o.host_id
                    ),
                    "give this host another name (--host-name NAME); if that host is gone for good, remove its record from etcd first",
                ));
            }
            if o.host_id != me.host_id && o.name != name {
                if overlap(&o.subnet, &me.subnet) {
                    return Err(refused(
                        format!(
                            "the VM subnet {} overlaps {}'s ({})",
                            me.subnet, o.name, o.subnet
                        ),
                        "give each host its own VM subnet (gateway, prefix_len, pool_start, pool_end in the config file)",
                    ));
                }
                if o.bridge == me.bridge {
                    return Err(refused(
                        format!("the bridge {} is {}'s", me.bridge, o.name),
                        "give each host its own bridge (--bridge NAME)",
                    ));
                }
            }
        }
        for (what, value) in [("subnet", &me.subnet), ("bridge", &me.bridge)] {
            let key = k.claim(what, value);
            let t = etcd.txn(
                &[Cmp::Absent(key.clone())],
                &[Op::Put {
                    key: key.clone(),
                    value: name.clone().into_bytes(),
                    lease: 0,
                }],
                &[Op::Get(key)],
            )?;
            let holder = t
                .got
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            if !t.succeeded && holder.as_deref() != Some(name.as_str()) {
                return Err(refused(
                    format!(
                        "the {what} {value} is claimed by host {}",
                        holder.unwrap_or_default()
                    ),
                    "give each host its own VM subnet and bridge",
                ));
            }
        }
        // Claims of this host that its configuration no longer names.
        let mine = [k.claim("subnet", &me.subnet), k.claim("bridge", &me.bridge)];
        for kv in etcd.list(&k.claims())? {
            if kv.value == name.as_bytes() && !mine.contains(&kv.key) {
                etcd.delete(&kv.key)?;
            }
        }
        let lease = etcd.grant(self.cfg.lease_ttl_secs)?;
        let t = etcd.txn(
            &[Cmp::Absent(k.alive(&name))],
            &[
                Op::Put {
                    key: k.alive(&name),
                    value: me.host_id.clone().into_bytes(),
                    lease,
                },
                Op::Put {
                    key: k.host(&name),
                    value: serde_json::to_vec(&me).unwrap_or_default(),
                    lease: 0,
                },
            ],
            &[],
        )?;
        if !t.succeeded {
            let _ = etcd.revoke(lease);
            return Err(refused(
                format!("the host name {name} was taken by another host meanwhile"),
                "give this host another name: --host-name NAME",
            ));
        }
        lock(&self.link).lease = lease;
        lock(&self.mirror).reset();
        self.set_state("connected", None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_overlap_by_their_common_prefix() {
        assert!(overlap("172.16.0.0/24", "172.16.0.0/24"));
        assert!(overlap("172.16.0.0/16", "172.16.5.0/24"));
        assert!(!overlap("172.16.1.0/24", "172.16.2.0/24"));
        assert!(!overlap("bad", "172.16.2.0/24"));
        assert_eq!(digest("t").len(), 64);
    }
}
