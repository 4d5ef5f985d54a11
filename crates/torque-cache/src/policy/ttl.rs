//! Nearest expiry first: evict the entry that would expire soonest; entries
//! that never expire go last, oldest insert first.

use std::collections::BTreeSet;

/// Expiry order of the ids in one shard: `(deadline, insert order, id)`.
#[derive(Debug, Default)]
pub(crate) struct NearestExpiry {
    order: BTreeSet<(u64, u64, u32)>,
    keys: Vec<Option<(u64, u64)>>,
    tick: u64,
}

impl NearestExpiry {
    pub(crate) fn on_insert(&mut self, id: u32, deadline: u64) {
        self.tick += 1;
        let idx = id as usize;
        if self.keys.len() <= idx {
            self.keys.resize(idx + 1, None);
        }
        self.keys[idx] = Some((deadline, self.tick));
        self.order.insert((deadline, self.tick, id));
    }

    /// A read or a replacement that may have moved the deadline.
    pub(crate) fn on_deadline(&mut self, id: u32, deadline: u64) {
        if let Some((old, tick)) = self.keys[id as usize]
            && old != deadline
        {
            self.order.remove(&(old, tick, id));
            self.keys[id as usize] = Some((deadline, tick));
            self.order.insert((deadline, tick, id));
        }
    }

    pub(crate) fn on_remove(&mut self, id: u32) {
        if let Some((deadline, tick)) = self.keys[id as usize].take() {
            self.order.remove(&(deadline, tick, id));
        }
    }

    pub(crate) fn evict(&mut self) -> Option<u32> {
        let (_, _, id) = self.order.pop_first()?;
        self.keys[id as usize] = None;
        Some(id)
    }

    pub(crate) fn clear(&mut self) {
        self.order.clear();
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NEVER;

    #[test]
    fn evicts_nearest_deadline_and_never_expiring_last() {
        let mut p = NearestExpiry::default();
        p.on_insert(0, NEVER);
        p.on_insert(1, 50);
        p.on_insert(2, 10);
        p.on_insert(3, NEVER);
        p.on_deadline(1, 5);
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), Some(0));
        p.on_remove(3);
        assert_eq!(p.evict(), None);
    }
}
