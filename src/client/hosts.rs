//! `fcm hosts`: the hosts of the cluster (docs/cluster.md), with their
//! state, capacity and load; this host alone without a cluster.

use super::api::Client;
use super::{Failure, out, out_json};
use crate::wire::cluster::HostsResponse;
use crate::wire::text::visible;

fn gib(mib: u64) -> String {
    format!("{:.1}G", mib as f64 / 1024.0)
}

pub(super) fn list(json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let r: HostsResponse = c.get("/hosts")?;
    if json {
        return out_json(&r);
    }
    let s = &r.cluster;
    match s.state.as_str() {
        "off" => eprintln!("not in a cluster (fcm daemon --cluster URLS joins one)"),
        "connected" => {}
        other => eprintln!(
            "warning: cluster {other}{}: hosts as last seen",
            s.message
                .as_deref()
                .map(|m| format!(" ({})", visible(m)))
                .unwrap_or_default()
        ),
    }
    let head = format!(
        "{:<16} {:<8} {:<22} {:>4} {:>9} {:>13} {:>11} {:<8}",
        "HOST", "STATE", "ADDRESS", "VMS", "CPUS", "MEMORY FREE", "DISK FREE", "VERSION"
    );
    out(head.trim_end());
    for h in r.hosts {
        let (rec, load) = (&h.record, &h.record.load);
        let line = format!(
            "{:<16} {:<8} {:<22} {:>4} {:>9} {:>13} {:>11} {:<8}",
            visible(&rec.name),
            visible(&h.state),
            visible(&rec.address),
            load.vms,
            format!("{}/{}", load.cpus_used, rec.capacity.cpus),
            format!(
                "{}/{}",
                gib(load.free_memory_mib),
                gib(rec.capacity.memory_mib)
            ),
            gib(load.disk_free_bytes >> 20),
            visible(&rec.version),
        );
        out(line.trim_end());
    }
    Ok(())
}
