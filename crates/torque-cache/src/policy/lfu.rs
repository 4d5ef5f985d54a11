//! Least frequently used: evict the entry with the fewest accesses since it
//! was inserted; ties go to the least recently used.
//!
//! Counts live only while the entry is cached (in-cache LFU, no aging), which
//! is the textbook policy the property tests model.

use std::collections::BTreeSet;

const ABSENT: (u64, u64) = (u64::MAX, u64::MAX);

/// Frequency order of the ids in one shard: `(count, last use, id)`.
#[derive(Debug, Default)]
pub(crate) struct Lfu {
    order: BTreeSet<(u64, u64, u32)>,
    keys: Vec<(u64, u64)>,
    tick: u64,
}

impl Lfu {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    pub(crate) fn on_insert(&mut self, id: u32) {
        let tick = self.next_tick();
        let idx = id as usize;
        if self.keys.len() <= idx {
            self.keys.resize(idx + 1, ABSENT);
        }
        self.keys[idx] = (1, tick);
        self.order.insert((1, tick, id));
    }

    pub(crate) fn on_access(&mut self, id: u32) {
        let tick = self.next_tick();
        let (count, last) = self.keys[id as usize];
        self.order.remove(&(count, last, id));
        let count = count.saturating_add(1);
        self.keys[id as usize] = (count, tick);
        self.order.insert((count, tick, id));
    }

    pub(crate) fn on_remove(&mut self, id: u32) {
        let (count, last) = self.keys[id as usize];
        self.order.remove(&(count, last, id));
        self.keys[id as usize] = ABSENT;
    }

    pub(crate) fn evict(&mut self) -> Option<u32> {
        let (_, _, id) = self.order.pop_first()?;
        self.keys[id as usize] = ABSENT;
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

    #[test]
    fn evicts_least_frequent_then_least_recent() {
        let mut p = Lfu::default();
        for id in 0..3 {
            p.on_insert(id);
        }
        p.on_access(0);
        p.on_access(0);
        p.on_access(1);
        p.on_access(2);
        // 1 and 2 have two uses each; 1 was used before 2.
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), Some(0));
        assert_eq!(p.evict(), None);
    }
}
