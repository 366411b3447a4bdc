//! Where a create goes when it names no host: the live host with the most
//! free memory among those that have its image (each host lists its
//! images in its record), less what creates placed from this daemon hold
//! until their VM is on record (reservations, kept in this daemon's
//! memory: two creates placed here at once never count the same memory;
//! two daemons placing at the same moment still can).

use std::time::{Duration, Instant};

use super::{Cluster, lock, unix_now};
use crate::wire::cluster::{HostRecord, HostView};

/// A reservation whose create ended is dropped once its host's record is
/// newer than that, or after this long.
const KEEP_AFTER: Duration = Duration::from_secs(30);
/// A reservation is never held longer (a create that hangs).
const KEEP_MAX: Duration = Duration::from_secs(20 * 60);
/// The most reservations held (the oldest go first).
const MAX_HELD: usize = 1024;

/// Memory a create placed from here holds on a host.
pub(super) struct Held {
    id: u64,
    host: String,
    mib: u64,
    made: Instant,
    /// When its create ended: (then, unix seconds then).
    done: Option<(Instant, u64)>,
}

/// Why no host can take a create.
#[derive(Debug, PartialEq)]
pub enum PlaceError {
    /// No live host has the image.
    NoImage(String),
}

/// A create's memory reserved on its host: the create ended when this is
/// dropped (kept a little longer, until the host's record shows the VM).
pub struct Reservation<'a> {
    c: &'a Cluster,
    id: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.c.reserved);
        if let Some(h) = held.iter_mut().find(|h| h.id == self.id) {
            h.done = Some((Instant::now(), unix_now()));
        }
    }
}

/// Whether `list` (a host's images) has `want`, with or without `:latest`.
fn has_image(list: &[String], want: &str) -> bool {
    list.iter()
        .any(|i| i == want || *i == format!("{want}:latest") || format!("{i}:latest") == want)
}

/// The live host with the most free memory less `held` (host, MiB) among
/// those with `image` (none: any); ties by name.
pub(super) fn choose(
    hosts: &[HostView],
    held: &[(String, u64)],
    image: Option<&str>,
) -> Result<Option<HostRecord>, PlaceError> {
    let live: Vec<&HostRecord> = hosts
        .iter()
        .filter(|h| h.state == "live")
        .map(|h| &h.record)
        .collect();
    let fit: Vec<&HostRecord> = match image {
        Some(i) => {
            let with: Vec<&HostRecord> = live
                .into_iter()
                .filter(|h| has_image(&h.images, i))
                .collect();
            if with.is_empty() {
                return Err(PlaceError::NoImage(i.to_owned()));
            }
            with
        }
        None => live,
    };
    let free = |h: &HostRecord| {
        let taken: u64 = held
            .iter()
            .filter(|(n, _)| *n == h.name)
            .map(|(_, m)| *m)
            .sum();
        h.load.free_memory_mib.saturating_sub(taken)
    };
    Ok(fit
        .into_iter()
        .max_by(|a, b| free(a).cmp(&free(b)).then_with(|| b.name.cmp(&a.name)))
        .cloned())
}

impl Cluster {
    /// Places a create of `memory_mib` from `image` (none: the base image,
    /// which every host has) and reserves the memory there.
    pub fn place_for(
        &self,
        image: Option<&str>,
        memory_mib: u64,
    ) -> Result<Option<(HostRecord, Reservation<'_>)>, PlaceError> {
        let hosts = self.hosts().hosts;
        let mut held = lock(&self.reserved);
        held.retain(|r| {
            let updated = hosts
                .iter()
                .find(|h| h.record.name == r.host)
                .map_or(0, |h| h.record.updated);
            match r.done {
                Some((at, secs)) => updated <= secs && at.elapsed() < KEEP_AFTER,
                None => r.made.elapsed() < KEEP_MAX,
            }
        });
        let pairs: Vec<(String, u64)> = held.iter().map(|r| (r.host.clone(), r.mib)).collect();
        let Some(h) = choose(&hosts, &pairs, image)? else {
            return Ok(None);
        };
        if held.len() >= MAX_HELD {
            held.remove(0);
        }
        let id = held.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        held.push(Held {
            id,
            host: h.name.clone(),
            mib: memory_mib,
            made: Instant::now(),
            done: None,
        });
        Ok(Some((h, Reservation { c: self, id })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, free: u64, images: &[&str], state: &str) -> HostView {
        let mut record: HostRecord = serde_json::from_value(serde_json::json!({
            "name": name, "host_id": "x", "address": "127.0.0.1:1",
            "stream_address": "127.0.0.1:2", "tls": false, "fingerprint": "",
            "subnet": "", "bridge": "", "version": "", "started": 0, "updated": 0,
            "capacity": {"cpus": 1, "memory_mib": 8192, "disk_bytes": 0},
            "load": {"vms": 0, "running": 0, "cpus_used": 0, "memory_used_mib": 0,
                     "free_memory_mib": 0, "disk_free_bytes": 0}
        }))
        .expect("record");
        record.load.free_memory_mib = free;
        record.images = images.iter().map(|s| (*s).to_owned()).collect();
        HostView {
            record,
            state: state.into(),
        }
    }

    #[test]
    fn the_most_free_memory_among_the_hosts_with_the_image_less_what_is_reserved() {
        let hosts = vec![
            host("a", 1000, &["fcm/base", "web:1"], "live"),
            host("b", 4000, &["fcm/base"], "live"),
            host("c", 3000, &["fcm/base", "web:latest"], "live"),
            host("d", 9000, &["fcm/base", "web:1"], "dead"),
        ];
        let name = |r: Result<Option<HostRecord>, PlaceError>| r.map(|h| h.map(|h| h.name));
        assert_eq!(name(choose(&hosts, &[], None)), Ok(Some("b".into())));
        assert_eq!(
            name(choose(&hosts, &[], Some("web:1"))),
            Ok(Some("a".into()))
        );
        assert_eq!(name(choose(&hosts, &[], Some("web"))), Ok(Some("c".into())));
        assert_eq!(
            name(choose(&hosts, &[], Some("db"))),
            Err(PlaceError::NoImage("db".into()))
        );
        // Two creates at once: the first's 2500 MiB reserved on b, the
        // second goes to c.
        let held = vec![("b".to_owned(), 2500)];
        assert_eq!(name(choose(&hosts, &held, None)), Ok(Some("c".into())));
    }
}
