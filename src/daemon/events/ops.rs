//! Operations counted by kind and result, with latency histograms (for
//! `GET /metrics`). The kinds are the manager's fixed operation names, so
//! the table is bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::daemon::lock;

/// Upper bounds of the latency buckets, in seconds (`le`).
pub const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// One operation kind's numbers for one result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Operations in each bucket of [`BUCKETS`] (not cumulative).
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum_secs: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_secs += secs;
    }

    /// Cumulative counts, bucket by bucket (`_bucket{le=...}`); `+Inf` is
    /// [`Self::count`].
    pub fn cumulative(&self) -> [u64; BUCKETS.len()] {
        let mut acc = 0;
        self.buckets.map(|n| {
            acc += n;
            acc
        })
    }
}

/// Every operation's numbers, keyed by (kind, ok).
#[derive(Default)]
pub struct OpStats {
    table: Mutex<BTreeMap<(&'static str, bool), Histogram>>,
}

impl OpStats {
    pub fn record(&self, op: &'static str, ok: bool, took: Duration) {
        lock(&self.table)
            .entry((op, ok))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A copy of the table, for a scrape.
    pub fn snapshot(&self) -> BTreeMap<(&'static str, bool), Histogram> {
        lock(&self.table).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_and_accumulate() {
        let s = OpStats::default();
        s.record("start", true, Duration::from_millis(5));
        s.record("start", true, Duration::from_millis(700));
        s.record("start", true, Duration::from_secs(900));
        s.record("start", false, Duration::from_millis(20));
        let t = s.snapshot();
        let h = &t[&("start", true)];
        assert_eq!(h.count, 3);
        let c = h.cumulative();
        assert_eq!(c[0], 1);
        assert_eq!(c[5], 2);
        assert_eq!(c[BUCKETS.len() - 1], 2, "900 s is only in +Inf");
        assert_eq!(t[&("start", false)].count, 1);
    }
}
