//! The guest's own view of its memory and root file system, asked through
//! the guest seam (its agent, else SSH): one small program of fcm's own,
//! with a deadline, on a thread of its own so the sampler never waits;
//! what comes back is hostile input, parsed defensively and clamped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use crate::daemon::guest::{self, ExecSpec, Guest};
use crate::host::usage::kib_field;
use crate::wire::stats::{GuestDisk, GuestMemory};

/// What the guest is asked: its memory, then its root file system.
const SCRIPT: &str = "cat /proc/meminfo; df -P -B1 / | tail -n 1";
/// The most of a guest's answer read.
const OUTPUT_CAP: usize = 16 * 1024;
/// Guest questions under way at once (one per VM at most).
const IN_FLIGHT_MAX: usize = 64;

/// The guest's view, as it said it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestView {
    pub memory: Option<GuestMemory>,
    pub disk: Option<GuestDisk>,
}

/// Parses the script's output; a part that does not parse is `None`.
pub fn parse(out: &str) -> GuestView {
    let memory = kib_field(out, "MemTotal:").map(|total| {
        let available = kib_field(out, "MemAvailable:").unwrap_or(0).min(total);
        GuestMemory {
            total_bytes: total,
            available_bytes: available,
            used_bytes: total - available,
        }
    });
    let disk = out.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Filesystem 1-blocks Used Available Capacity Mounted-on
        if f.len() != 6 || f[5] != "/" {
            return None;
        }
        let total: u64 = f[1].parse().ok()?;
        let used: u64 = f[2].parse().ok()?;
        Some(GuestDisk {
            total_bytes: total,
            used_bytes: used.min(total),
        })
    });
    GuestView { memory, disk }
}

/// The guest questions of the sampler: started without waiting, answers
/// collected when they come, one per VM at a time.
pub struct Asker {
    timeout: Duration,
    every: Duration,
    tx: SyncSender<(String, Option<GuestView>)>,
    rx: Receiver<(String, Option<GuestView>)>,
    in_flight: BTreeSet<String>,
    asked: BTreeMap<String, Instant>,
    /// The latest answer of each VM, and when it came.
    pub answers: BTreeMap<String, (Instant, GuestView)>,
}

impl Asker {
    pub fn new(every: Duration, timeout: Duration) -> Self {
        let (tx, rx) = sync_channel(IN_FLIGHT_MAX);
        Self {
            timeout,
            every,
            tx,
            rx,
            in_flight: BTreeSet::new(),
            asked: BTreeMap::new(),
            answers: BTreeMap::new(),
        }
    }

    /// Takes the answers that came.
    pub fn collect(&mut self) {
        while let Ok((id, view)) = self.rx.try_recv() {
            self.in_flight.remove(&id);
            match view {
                Some(v) => {
                    self.answers.insert(id, (Instant::now(), v));
                }
                None => {
                    self.answers.remove(&id);
                }
            }
        }
    }

    /// Asks VM `id`'s guest, unless asked lately or still asked.
    pub fn ask(&mut self, id: &str, g: Box<dyn Guest>) {
        let due = self.asked.get(id).is_none_or(|t| t.elapsed() >= self.every);
        if !due || self.in_flight.contains(id) || self.in_flight.len() >= IN_FLIGHT_MAX {
            return;
        }
        self.asked.insert(id.to_owned(), Instant::now());
        self.in_flight.insert(id.to_owned());
        let (tx, id2, timeout) = (self.tx.clone(), id.to_owned(), self.timeout);
        let spawned = std::thread::Builder::new()
            .name("fcm-metrics-guest".into())
            .spawn(move || {
                let spec = ExecSpec {
                    argv: vec!["sh".into(), "-c".into(), SCRIPT.into()],
                    timeout: Some(timeout),
                    ..ExecSpec::default()
                };
                let view = guest::output(&*g, &spec, b"", OUTPUT_CAP)
                    .ok()
                    .filter(|o| !o.exit.timed_out)
                    .map(|o| parse(&String::from_utf8_lossy(&o.stdout)));
                // Never full (one answer per question under way, at most
                // the channel's size); gone with the sampler: dropped.
                let _ = tx.try_send((id2, view));
            });
        if spawned.is_err() {
            self.in_flight.remove(id);
        }
    }

    /// The answer of VM `id` if it is recent enough to show.
    pub fn view(&self, id: &str) -> Option<&GuestView> {
        self.answers
            .get(id)
            .filter(|(t, _)| t.elapsed() <= self.every * 3 + self.timeout)
            .map(|(_, v)| v)
    }

    /// Forgets the VMs not in `live`.
    pub fn retain(&mut self, live: &BTreeSet<String>) {
        self.answers.retain(|k, _| live.contains(k));
        self.asked.retain(|k, _| live.contains(k));
    }

    /// Forgets what VM `id` said (it stopped).
    pub fn forget(&mut self, id: &str) {
        self.answers.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_s_words_are_parsed_and_clamped() {
        let out = "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  400 kB\n/dev/root 10000 2500 7500 25% /\n";
        let v = parse(out);
        let m = v.memory.expect("memory");
        assert_eq!(
            (m.total_bytes, m.available_bytes, m.used_bytes),
            (1_024_000, 409_600, 614_400)
        );
        assert_eq!(
            v.disk,
            Some(GuestDisk {
                total_bytes: 10000,
                used_bytes: 2500
            })
        );
        // Lies and nonsense never panic and never make used > total.
        let v = parse("MemTotal: 5 kB\nMemAvailable: 99999999999999999 kB\n/x 10 20 0 0% /\n");
        assert_eq!(v.memory.expect("m").used_bytes, 0);
        assert_eq!(v.disk.expect("d").used_bytes, 10);
        let v = parse("MemTotal: 18446744073709551615 kB\n\u{1b}[2J garbage / / / / /\n");
        assert!(v.memory.is_some());
        assert_eq!(v.disk, None);
        assert_eq!(parse(""), GuestView::default());
    }
}
