//! In a cluster: a console (or attach) for a VM of another host is relayed
//! to that host's terminal port (TLS with the certificate it registered):
//! the handshake line goes on, marked `relayed_from`, and then every byte
//! both ways (`cluster::splice`). The owner answers the handshake itself.

use std::io::{self, Write};

use super::refuse;
use crate::daemon::cluster::{Owner, splice};
use crate::daemon::manager::{Manager, ManagerError};
use crate::wire::stream::Handshake;
use crate::wire::tls::Link;

/// The connection back (to be served here) unless its VM is another
/// host's: then it is relayed there (or refused with why) and `None`.
pub(super) fn unless_elsewhere(
    link: Link,
    hs: Handshake,
    m: &Manager,
) -> Option<(Link, Handshake)> {
    let Some(c) = m.cluster().filter(|c| c.enabled()) else {
        return Some((link, hs));
    };
    if hs.relayed_from.is_some() || !matches!(m.get(&hs.vm), Err(ManagerError::NotFound(_))) {
        return Some((link, hs));
    }
    let owner = match c.owner_of(&hs.vm) {
        None => return Some((link, hs)),
        Some(Owner::Dead(host)) => {
            let _ = refuse(
                &link,
                format!(
                    "VM {} is on host {host}, which is not answering the cluster",
                    hs.vm
                ),
                Some("see fcm hosts; the VM is back once its host is".into()),
            );
            return None;
        }
        Some(Owner::Live(h)) => h,
    };
    let relayed = (|| -> io::Result<Link> {
        let up = c.connect_stream(&owner).map_err(io::Error::other)?;
        let line = Handshake {
            relayed_from: Some(c.name()),
            ..hs
        };
        let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
        text.push(b'\n');
        up.clone().write_all(&text)?;
        Ok(up)
    })();
    match relayed {
        Ok(up) => splice(link, up),
        Err(e) => {
            let _ = refuse(
                &link,
                format!("could not relay the console to host {}: {e}", owner.name),
                Some("see fcm hosts".into()),
            );
        }
    }
    None
}
