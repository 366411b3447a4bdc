//! The poller's table of connections: a slab whose indexes are the
//! readiness keys, the order in which pre-authentication connections were
//! admitted (when the budget is full, the oldest goes, whatever its
//! address) and every connection's deadline. Pure bookkeeping: no sockets.

use std::collections::BTreeMap;
use std::time::Instant;

struct Entry<C> {
    conn: C,
    /// Admission order, unique for the table's life.
    seq: u64,
    deadline: Instant,
    /// Counted in the pre-authentication budget (else: a kept-alive one).
    pre_auth: bool,
}

pub struct Table<C> {
    slots: Vec<Option<Entry<C>>>,
    free: Vec<usize>,
    next_seq: u64,
    /// Pre-authentication connections by admission, oldest first.
    admitted: BTreeMap<u64, usize>,
    /// Every connection by deadline (ties by admission).
    deadlines: BTreeMap<(Instant, u64), usize>,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            admitted: BTreeMap::new(),
            deadlines: BTreeMap::new(),
        }
    }
}

impl<C> Table<C> {
    /// Adds a connection; returns its key.
    pub fn insert(&mut self, conn: C, deadline: Instant, pre_auth: bool) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            conn,
            seq,
            deadline,
            pre_auth,
        };
        let key = match self.free.pop() {
            Some(k) => {
                self.slots[k] = Some(entry);
                k
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        if pre_auth {
            self.admitted.insert(seq, key);
        }
        self.deadlines.insert((deadline, seq), key);
        key
    }

    pub fn remove(&mut self, key: usize) -> Option<C> {
        let e = self.slots.get_mut(key)?.take()?;
        self.free.push(key);
        if e.pre_auth {
            self.admitted.remove(&e.seq);
        }
        self.deadlines.remove(&(e.deadline, e.seq));
        Some(e.conn)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut C> {
        self.slots.get_mut(key)?.as_mut().map(|e| &mut e.conn)
    }

    pub fn set_deadline(&mut self, key: usize, deadline: Instant) {
        let Some(Some(e)) = self.slots.get_mut(key) else {
            return;
        };
        self.deadlines.remove(&(e.deadline, e.seq));
        e.deadline = deadline;
        self.deadlines.insert((deadline, e.seq), key);
    }

    /// The pre-authentication connection admitted first.
    pub fn oldest_pre_auth(&self) -> Option<usize> {
        self.admitted.values().next().copied()
    }

    /// Connections in the pre-authentication budget.
    pub fn pre_auth(&self) -> usize {
        self.admitted.len()
    }

    /// Every connection held.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// The keys of every connection held.
    pub fn keys(&self) -> Vec<usize> {
        self.deadlines.values().copied().collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(d, _)| *d)
    }

    /// Keys whose deadline is at or before `now`, earliest first, at most `max`.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<usize> {
        self.deadlines
            .iter()
            .take_while(|((d, _), _)| *d <= now)
            .take(max)
            .map(|(_, k)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_oldest_pre_auth_connection_is_the_first_to_go() {
        let mut t: Table<&str> = Table::default();
        let now = Instant::now();
        let far = now + Duration::from_secs(10);
        let a = t.insert("a", far, true);
        let b = t.insert("b", far, true);
        let kept = t.insert("kept", now, false);
        let c = t.insert("c", far, true);
        assert_eq!((t.pre_auth(), t.len()), (3, 4));
        // A kept-alive connection, older or not, is not in that budget.
        assert_eq!(t.oldest_pre_auth(), Some(a));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.oldest_pre_auth(), Some(b));
        // A key is reused, but the newcomer is the youngest.
        let d = t.insert("d", far, true);
        assert_eq!(d, a);
        assert_eq!(t.remove(b), Some("b"));
        assert_eq!(t.oldest_pre_auth(), Some(c));
        assert_eq!(t.remove(c), Some("c"));
        assert_eq!(t.oldest_pre_auth(), Some(d));
        assert_eq!(t.remove(kept), Some("kept"));
        assert_eq!(t.remove(kept), None);
        assert_eq!((t.pre_auth(), t.len()), (1, 1));
    }

    #[test]
    fn deadlines_expire_in_order_and_can_move() {
        let mut t: Table<u32> = Table::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let a = t.insert(1, at(300), true);
        let b = t.insert(2, at(100), true);
        let c = t.insert(3, at(200), false);
        assert_eq!(t.next_deadline(), Some(at(100)));
        assert_eq!(t.expired(at(50), 10), Vec::<usize>::new());
        assert_eq!(t.expired(at(250), 10), vec![b, c]);
        assert_eq!(t.expired(at(250), 1), vec![b]);
        // A connection that moves on gets a new deadline.
        t.set_deadline(b, at(1000));
        assert_eq!(t.expired(at(400), 10), vec![c, a]);
        t.remove(c);
        assert_eq!(t.next_deadline(), Some(at(300)));
        t.remove(a);
        t.remove(b);
        assert_eq!(t.next_deadline(), None);
    }
}
