//! First in, first out: evict the entry inserted longest ago; reads and
//! replacements do not change the order.
//!
//! As a cache that makes room before it writes, the entry being written is
//! never its own write's victim while another entry is left: a rewrite of
//! the oldest entry that makes it heavier evicts the next oldest (until
//! 2026-12-07 it evicted the rewritten entry itself, new value and all).

use super::list::{Links, List, NIL};

/// Insertion order of the ids in one shard.
#[derive(Debug)]
pub(crate) struct Fifo {
    links: Links,
    list: List,
    /// The entry of the latest write (insert or rewrite), or [`NIL`]: not
    /// a victim of its write's evictions while any other entry is left.
    written: u32,
}

impl Default for Fifo {
    fn default() -> Self {
        Self {
            links: Links::default(),
            list: List::new(),
            written: NIL,
        }
    }
}

impl Fifo {
    pub(crate) fn on_insert(&mut self, id: u32) {
        self.written = id;
        self.links.push_front(&mut self.list, id);
    }

    /// A rewrite of `id`: its place does not change, but its write's
    /// evictions spare it.
    pub(crate) fn on_update(&mut self, id: u32) {
        self.written = id;
    }

    pub(crate) fn on_remove(&mut self, id: u32) {
        self.links.unlink(&mut self.list, id);
        if id == self.written {
            self.written = NIL;
        }
    }

    /// The oldest entry other than the one just written, unless that one is
    /// alone. (A new entry is the newest, so only a rewrite of the oldest
    /// is ever passed over.)
    pub(crate) fn evict(&mut self) -> Option<u32> {
        let mut id = self.list.back()?;
        if id == self.written {
            match self.links.prev(id) {
                Some(other) => id = other,
                None => self.written = NIL,
            }
        }
        self.links.unlink(&mut self.list, id);
        Some(id)
    }

    /// The victim of another shard's write: the oldest entry, sparing none
    /// (this shard's latest write is over; its entry is spared again,
    /// should it stay, only by this shard's own evictions).
    pub(crate) fn evict_any(&mut self) -> Option<u32> {
        super::evict_sparing_none(self, |p| &mut p.written, Self::evict)
    }

    pub(crate) fn clear(&mut self) {
        self.links.clear();
        self.list = List::new();
        self.written = NIL;
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

    #[test]
    fn a_rewritten_oldest_entry_is_not_its_own_writes_victim() {
        let mut p = Fifo::default();
        for id in 0..3 {
            p.on_insert(id);
        }
        // 0 rewritten (heavier): its write's evictions take 1, then 2.
        p.on_update(0);
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(2));
        // Alone, it goes.
        assert_eq!(p.evict(), Some(0));
        assert_eq!(p.evict(), None);
        // Another shard's write spares nothing.
        p.on_insert(3);
        p.on_insert(4);
        p.on_update(3);
        assert_eq!(p.evict_any(), Some(3));
        assert_eq!(p.evict(), Some(4));
    }
}
