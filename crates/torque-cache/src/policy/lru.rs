//! Least recently used: evict the entry whose last access is oldest.

use super::list::{Links, List};

/// Recency order of the ids in one shard.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    links: Links,
    list: List,
}

impl Lru {
    pub(crate) fn on_insert(&mut self, id: u32) {
        self.links.push_front(&mut self.list, id);
    }

    pub(crate) fn on_access(&mut self, id: u32) {
        self.links.move_to_front(&mut self.list, id);
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
    fn evicts_least_recently_used() {
        let mut p = Lru::default();
        for id in 0..4 {
            p.on_insert(id);
        }
        p.on_access(0);
        p.on_access(2);
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(3));
        p.on_remove(0);
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), None);
    }
}
