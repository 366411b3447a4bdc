//! In a cluster: a streamed request (the upgraded exec, a file or archive
//! transfer) for a VM of another host is relayed there byte for byte: the
//! request's head (marked forwarded, `Connection: close` unless it is an
//! upgrade) and what follows it go to the owner over TLS with its pinned
//! certificate (`cluster::Cluster::connect`), its answer comes back, one
//! thread each way, until either side ends.

use std::io::Write;

use super::message::Head;
use super::{Transport, answer_and_close};
use crate::daemon::api::{ApiError, Route, vm_of};
use crate::daemon::cluster::{FORWARDED_HEADER, Owner, splice};
use crate::daemon::manager::{Manager, ManagerError};

/// Serves the stream here (gives `io` and `early` back) unless its VM is
/// another host's: then relays it there (or says why not) and returns `None`.
pub(super) fn unless_elsewhere(
    mut io: Box<dyn Transport>,
    m: &Manager,
    route: &Route,
    head: &Head,
    early: Vec<u8>,
) -> Option<(Box<dyn Transport>, Vec<u8>)> {
    let Some(c) = m.cluster().filter(|c| c.enabled()) else {
        return Some((io, early));
    };
    if head.header(FORWARDED_HEADER).is_some() {
        return Some((io, early));
    }
    let Some(vm) = vm_of(route) else {
        return Some((io, early));
    };
    if !matches!(m.get(vm), Err(ManagerError::NotFound(_))) {
        return Some((io, early));
    }
    let owner = match c.owner_of(vm) {
        None => return Some((io, early)),
        Some(Owner::Dead(host)) => {
            answer_and_close(
                io.as_mut(),
                &ApiError::new(
                    503,
                    format!("VM {vm} is on host {host}, which is not answering the cluster"),
                ),
            );
            return None;
        }
        Some(Owner::Live(h)) => h,
    };
    let up = match c.connect(&owner) {
        Ok(l) => l,
        Err(why) => {
            answer_and_close(
                io.as_mut(),
                &ApiError::new(
                    502,
                    format!("could not relay to host {}: {why}", owner.name),
                ),
            );
            return None;
        }
    };
    let upgrade = head.has_token("Connection", "upgrade");
    let mut text = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
    for (k, v) in head.headers() {
        if k.eq_ignore_ascii_case(FORWARDED_HEADER)
            || (!upgrade && k.eq_ignore_ascii_case("Connection"))
        {
            continue;
        }
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !upgrade {
        text.push_str("Connection: close\r\n");
    }
    text.push_str(&format!("{FORWARDED_HEADER}: {}\r\n\r\n", c.name()));
    io.set_deadline(None);
    let down = io.into_link();
    let mut w = up.clone();
    if w.write_all(text.as_bytes())
        .and_then(|()| w.write_all(&early))
        .is_err()
    {
        down.shutdown();
        up.shutdown();
        return None;
    }
    splice(down, up);
    None
}
