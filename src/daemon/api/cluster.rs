//! In a cluster (docs/cluster.md): a request for a VM this host does not
//! have, but another host does, is forwarded to that host and its answer
//! handed back; `POST /vms` is placed (`host`, or the live host with the
//! most free memory; with `from`, the checkpoint's VM's host) and forwarded
//! when the place is another host. A forwarded request is served where it
//! arrives, never forwarded again.

use std::time::Duration;

use super::{ApiError, Reply, Route, handle, parse_body};
use crate::daemon::cluster::{Cluster, Owner, PlaceError, Reservation};
use crate::daemon::manager::is_base;
use crate::daemon::manager::{Manager, ManagerError};
use crate::daemon::sessions::Sessions;
use crate::wire::api::CreateRequest;
use crate::wire::cluster::HostRecord;

/// How long a forwarded request may take: an exec up to its own deadline
/// (at most an hour), a create or start with its wait for the guest.
fn timeout_of(r: &Route) -> Duration {
    match r {
        Route::Exec(_) => Duration::from_secs(3700),
        _ => Duration::from_secs(900),
    }
}

/// The VM a route is about, if it is about one.
pub fn vm_of(r: &Route) -> Option<&str> {
    Some(match r {
        Route::GetVm(v)
        | Route::VmSsh(v)
        | Route::StopVm(v)
        | Route::StartVm(v)
        | Route::DestroyVm(v)
        | Route::ListSessions(v)
        | Route::CreateSession(v)
        | Route::DeleteSession(v, _)
        | Route::PauseVm(v)
        | Route::ResumeVm(v)
        | Route::ForkVm(v)
        | Route::WakeVm(v)
        | Route::ListCheckpoints(v)
        | Route::CreateCheckpoint(v)
        | Route::RestoreCheckpoint(v, _)
        | Route::DeleteCheckpoint(v, _)
        | Route::ResizeVm(v)
        | Route::Exec(v)
        | Route::VmStats(v)
        | Route::Logs { vm: v, .. }
        | Route::GetFile { vm: v, .. }
        | Route::PutFile { vm: v, .. }
        | Route::GetArchive { vm: v, .. }
        | Route::PutArchive { vm: v, .. } => v,
        _ => return None,
    })
}

/// Runs a request here, or on the host that has its VM.
pub fn serve(
    m: &Manager,
    s: &Sessions,
    r: Route,
    method: &str,
    target: &str,
    body: &[u8],
    forwarded: bool,
) -> Result<Reply, ApiError> {
    let Some(c) = m.cluster().filter(|c| c.enabled()) else {
        return handle(m, s, r, body);
    };
    if forwarded {
        return here(c, m, s, r, body);
    }
    // A create placed here holds its memory on its host until it ended.
    let mut _reserved = None;
    let elsewhere = match &r {
        Route::Stats => return super::cluster_stats::stats(c, m, target),
        Route::CreateVm => {
            let (h, reserved) = placed(c, m, parse_body(body)?)?;
            _reserved = reserved;
            h
        }
        r => match vm_of(r) {
            // A VM this host has (or an error other than "no such VM") is served here.
            Some(vm) if matches!(m.get(vm), Err(ManagerError::NotFound(_))) => {
                match c.owner_of(vm) {
                    Some(Owner::Live(h)) => Some(*h),
                    Some(Owner::Dead(host)) => {
                        return Err(ApiError::new(
                            503,
                            format!(
                                "VM {vm} is on host {host}, which is not answering the cluster"
                            ),
                        )
                        .with_hint(
                            "its lease expired: see fcm hosts; the VM is back once its host is",
                        ));
                    }
                    None => None,
                }
            }
            _ => None,
        },
    };
    match elsewhere {
        None => here(c, m, s, r, body),
        Some(h) => forward(c, &h, &r, method, target, body),
    }
}

/// Served on this host; a VM in the answer says it is here.
fn here(c: &Cluster, m: &Manager, s: &Sessions, r: Route, body: &[u8]) -> Result<Reply, ApiError> {
    let mut reply = handle(m, s, r, body)?;
    crate::daemon::cluster::mark_host(&mut reply.body, &c.name());
    Ok(reply)
}

/// Where a create goes: `None` here, else the host to forward it to;
/// placed by free memory and image, with its memory reserved there.
fn placed<'a>(
    c: &'a Cluster,
    m: &Manager,
    req: CreateRequest,
) -> Result<(Option<HostRecord>, Option<Reservation<'a>>), ApiError> {
    let me = c.name();
    let wanted = match (&req.host, &req.from) {
        (Some(h), _) => Some(h.clone()),
        // A checkpoint lives on its VM's host.
        (None, Some(from)) => {
            let vm = from.split_once(':').map_or(from.as_str(), |(v, _)| v);
            match c.owner_of(vm) {
                Some(Owner::Live(h)) => return Ok((Some(*h), None)),
                Some(Owner::Dead(host)) => {
                    return Err(ApiError::new(
                        503,
                        format!("VM {vm} is on host {host}, which is not answering the cluster"),
                    ));
                }
                None => None,
            }
            .or(Some(me.clone()))
        }
        (None, None) => None,
    };
    let target = match wanted {
        Some(h) if h == me => return Ok((None, None)),
        Some(h) => match c.host(&h) {
            Some(v) if v.state == "live" => v.record,
            Some(_) => {
                return Err(
                    ApiError::new(503, format!("host {h} is not answering the cluster")).with_hint(
                        "see fcm hosts; or leave --host out to place the VM on a live host",
                    ),
                );
            }
            None => {
                return Err(
                    ApiError::new(404, format!("no host named {h} in the cluster"))
                        .with_hint("list them with: fcm hosts"),
                );
            }
        },
        None => {
            let image = req
                .image
                .as_deref()
                .filter(|i| !i.is_empty() && !is_base(i));
            let memory = u64::from(req.memory_mib.unwrap_or(m.config().default_memory_mib));
            match c.place_for(image, memory) {
                Ok(Some((h, reserved))) if h.name != me => return Ok((Some(h), Some(reserved))),
                Ok(Some((_, reserved))) => return Ok((None, Some(reserved))),
                Ok(None) => return Ok((None, None)),
                Err(PlaceError::NoImage(i)) => {
                    return Err(ApiError::new(
                        404,
                        format!("no live host of the cluster has image {i}"),
                    )
                    .with_hint(
                        "make it on a host with fcm image build or fcm image import (see fcm hosts --json: each host's images)",
                    ));
                }
            }
        }
    };
    Ok((Some(target), None))
}

fn forward(
    c: &Cluster,
    h: &HostRecord,
    r: &Route,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    match c.forward(h, method, target, body, timeout_of(r)) {
        Ok((status, body)) => Ok(Reply { status, body }),
        Err(why) => Err(ApiError::new(
            502,
            format!("could not forward the request to host {}: {why}", h.name),
        )
        .with_hint("the host is registered but does not answer; see fcm hosts")),
    }
}
