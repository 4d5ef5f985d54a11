//! First in, first out: evict the entry inserted longest ago; reads and
//! replacements do not change the order.

use super::list::{Links, List};

/// Insertion order of the ids in one shard.
#[derive(Debug, Default)]
pub(crate) struct Fifo {
    links: Links,
    list: List,
}

impl Fifo {
    pub(crate) fn on_insert(&mut self, id: u32) {
        self.links.push_front(&mut self.list, id);
    }

    pub(crate) fn on_remove(&mut self, id: u32) {
        self.links.unlink(&mut self.list, id);
    }

    pub(crate) fn evict(&mut self) -> Option<u32> {
        self.links.pop_back(&mut self.list)
    }

    pub(crate) fn clear(&mut self) {
        self.links.clear();
        self.list = List::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_insert_regardless_of_use() {
        let mut p = Fifo::default();
        for id in 0..3 {
            p.on_insert(id);
        }
        p.on_remove(1);
        assert_eq!(p.evict(), Some(0));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), None);
    }
}
