//! `GET /stats` in a cluster (docs/cluster.md): every live host's VMs,
//! each with its `host`; `?host=NAME` one host's. This host's are sampled
//! here, the others' asked of their hosts (in parallel, the request marked
//! forwarded so each answers with its own). A dead host's VMs are left out
//! (`fcm ls` lists them `unreachable`); so are those of a live host that
//! does not answer in time, unless it was asked for by name (502).
//! `/metrics` and `/events` stay per host.

use std::time::Duration;

use super::{ApiError, Reply, ok, query};
use crate::daemon::cluster::Cluster;
use crate::daemon::manager::Manager;
use crate::daemon::metrics;
use crate::wire::cluster::HostRecord;
use crate::wire::stats::VmStats;

/// How long another host has to answer with its VMs' numbers.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

pub fn stats(c: &Cluster, m: &Manager, target: &str) -> Result<Reply, ApiError> {
    let wanted = query(target, "host")?.filter(|h| !h.is_empty());
    let me = c.name();
    let hosts = c.hosts().hosts;
    if let Some(h) = &wanted {
        match hosts.iter().find(|v| &v.record.name == h) {
            None => {
                return Err(
                    ApiError::new(404, format!("no host named {h} in the cluster"))
                        .with_hint("list them with: fcm hosts"),
                );
            }
            Some(v) if v.state != "live" && *h != me => {
                return Err(
                    ApiError::new(503, format!("host {h} is not answering the cluster"))
                        .with_hint("see fcm hosts"),
                );
            }
            Some(_) => {}
        }
    }
    let wants = |h: &str| wanted.as_deref().is_none_or(|w| w == h);
    let mut out: Vec<VmStats> = Vec::new();
    if wants(&me) {
        out.extend(metrics::all(m).into_iter().map(|mut s| {
            s.host = Some(me.clone());
            s
        }));
    }
    let others: Vec<HostRecord> = hosts
        .into_iter()
        .filter(|h| h.state == "live" && h.record.name != me && wants(&h.record.name))
        .map(|h| h.record)
        .collect();
    let answers: Vec<(String, Result<Vec<VmStats>, String>)> = std::thread::scope(|s| {
        let asks: Vec<_> = others
            .iter()
            .map(|h| (h.name.clone(), s.spawn(move || ask(c, h))))
            .collect();
        asks.into_iter()
            .map(|(name, t)| {
                let r = t
                    .join()
                    .unwrap_or_else(|_| Err("the request's thread panicked".into()));
                (name, r)
            })
            .collect()
    });
    for (host, answer) in answers {
        match answer {
            Ok(list) => out.extend(list.into_iter().map(|mut s| {
                // What the host is, by the record asked; not what it says.
                s.host = Some(host.clone());
                s
            })),
            Err(why) if wanted.is_some() => {
                return Err(ApiError::new(
                    502,
                    format!("could not get host {host}'s numbers: {why}"),
                )
                .with_hint("the host is registered but does not answer; see fcm hosts"));
            }
            Err(why) => eprintln!("fcm daemon: cluster: stats of host {host} left out: {why}"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.host.cmp(&b.host)));
    ok(200, out)
}

/// Another host's VMs' numbers (its own only: the request is marked
/// forwarded). What it answers is untrusted: entries that do not parse
/// as stats are left out.
fn ask(c: &Cluster, h: &HostRecord) -> Result<Vec<VmStats>, String> {
    let (status, body) = c.forward(h, "GET", "/stats", b"", ASK_TIMEOUT)?;
    if status != 200 {
        return Err(format!("it answered {status}"));
    }
    let list = body
        .as_array()
        .ok_or_else(|| "its answer is not a list".to_owned())?;
    Ok(list
        .iter()
        .filter_map(|v| serde_json::from_value::<VmStats>(v.clone()).ok())
        .filter(|s| {
            crate::names::VmName::parse(&s.name).is_ok() && crate::names::VmId::parse(&s.id).is_ok()
        })
        .collect())
}
