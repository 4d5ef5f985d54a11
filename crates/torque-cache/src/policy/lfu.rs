//! Least frequently used: evict the entry with the fewest accesses since it
//! was inserted; ties go to the least recently used.
//!
//! Counts live only while the entry is cached (in-cache LFU, no aging), which
//! is the textbook policy the property tests model. As in the textbook, which
//! makes room before it inserts, the entry being written is never its own
//! write's victim while another entry is left: the shard inserts first and
//! then evicts, and before 2026-12-07 a newcomer's one use lost to every
//! entry read since it arrived, so once all of them had been read each new
//! key left on arrival and a full cache admitted nothing new.
//!
//! Every operation is O(1), after Shah, Mitra & Matani, "An O(1) algorithm
//! for implementing the LFU cache eviction scheme" (2010): the entries with
//! the same count share a *bucket*, a list in order of last use (front: most
//! recent), and the buckets form a list in increasing count. A use moves an
//! entry to the front of the next bucket (created right behind its own if
//! that count has no bucket yet); the victim is the back of the first
//! bucket. Order within a bucket is the order of arrival in it, which is
//! the order of last use, so this evicts exactly the minimum of `(count,
//! last use)` — what a sorted set of those pairs did until 2026-12-05, at
//! O(log n) and about five times the cost per request of the other
//! policies.

use super::list::{Links, List, NIL};

/// The entries with one access count, least recently used at the back.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    count: u64,
    entries: List,
    /// The neighbouring buckets: lower and higher counts.
    prev: u32,
    next: u32,
}

/// The bucket an id is in: [`NIL`] for none (never inserted, or left), which
/// is also what a node the arena grew for a higher id starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BucketOf(u32);

impl Default for BucketOf {
    fn default() -> Self {
        Self(NIL)
    }
}

/// Frequency order of the ids in one shard.
#[derive(Debug)]
pub(crate) struct Lfu {
    /// Each id's links within its bucket, and its bucket.
    links: Links<BucketOf>,
    buckets: Vec<Bucket>,
    /// Indices of `buckets` free for reuse.
    spare: Vec<u32>,
    /// The bucket of the lowest count, or [`NIL`].
    first: u32,
    /// The entry of the latest write (insert or rewrite), or [`NIL`]: not a
    /// victim while any other entry is left.
    written: u32,
}

impl Default for Lfu {
    fn default() -> Self {
        Self {
            links: Links::default(),
            buckets: Vec::new(),
            spare: Vec::new(),
            first: NIL,
            written: NIL,
        }
    }
}

impl Lfu {
    /// A new, empty bucket for `count` between `prev` and `next` (either may
    /// be [`NIL`]).
    fn add_bucket(&mut self, count: u64, prev: u32, next: u32) -> u32 {
        let bucket = Bucket {
            count,
            entries: List::new(),
            prev,
            next,
        };
        let index = match self.spare.pop() {
            Some(index) => {
                self.buckets[index as usize] = bucket;
                index
            }
            None => {
                // Never more buckets than entries, and ids are u32.
                let index = u32::try_from(self.buckets.len()).unwrap_or(NIL - 1);
                self.buckets.push(bucket);
                index
            }
        };
        if prev == NIL {
            self.first = index;
        } else {
            self.buckets[prev as usize].next = index;
        }
        if next != NIL {
            self.buckets[next as usize].prev = index;
        }
        index
    }

    /// Takes `id` out of its bucket, and the bucket out of the list if that
    /// left it empty. An id on no bucket ([`NIL`]) is left alone.
    fn leave(&mut self, id: u32) {
        let BucketOf(b) = std::mem::take(self.links.meta_mut(id));
        if b == NIL {
            return;
        }
        let bucket = &mut self.buckets[b as usize];
        self.links.unlink(&mut bucket.entries, id);
        if !bucket.entries.is_empty() {
            return;
        }
        let Bucket { prev, next, .. } = *bucket;
        if prev == NIL {
            self.first = next;
        } else {
            self.buckets[prev as usize].next = next;
        }
        if next != NIL {
            self.buckets[next as usize].prev = prev;
        }
        self.spare.push(b);
    }

    pub(crate) fn on_insert(&mut self, id: u32) {
        let first = self.first;
        let b = if first != NIL && self.buckets[first as usize].count == 1 {
            first
        } else {
            self.add_bucket(1, NIL, first)
        };
        self.links
            .push_front_with(&mut self.buckets[b as usize].entries, id, BucketOf(b));
        self.written = id;
    }

    /// A rewrite of `id`: a use, and the entry its write's evictions spare.
    pub(crate) fn on_update(&mut self, id: u32) {
        self.on_access(id);
        self.written = id;
    }

    pub(crate) fn on_access(&mut self, id: u32) {
        let BucketOf(b) = *self.links.meta(id);
        debug_assert_ne!(b, NIL, "a use of an id the policy does not hold");
        let Bucket {
            count,
            entries,
            next,
            ..
        } = self.buckets[b as usize];
        let Some(count) = count.checked_add(1) else {
            // Saturated: only the recency changes.
            self.links
                .move_to_front(&mut self.buckets[b as usize].entries, id);
            return;
        };
        if entries.len() == 1 && (next == NIL || self.buckets[next as usize].count != count) {
            // Alone in its bucket, and no bucket for the new count: the
            // bucket itself takes the new count.
            self.buckets[b as usize].count = count;
            return;
        }
        let target = if next != NIL && self.buckets[next as usize].count == count {
            next
        } else {
            self.add_bucket(count, b, next)
        };
        self.leave(id);
        self.links.push_front_with(
            &mut self.buckets[target as usize].entries,
            id,
            BucketOf(target),
        );
    }

    pub(crate) fn on_remove(&mut self, id: u32) {
        self.leave(id);
        if id == self.written {
            self.written = NIL;
        }
    }

    /// The least used entry, least recently used first, other than the one
    /// just written unless it is the only one.
    pub(crate) fn evict(&mut self) -> Option<u32> {
        if self.first == NIL {
            return None;
        }
        let first = self.buckets[self.first as usize];
        let mut id = first.entries.back()?;
        if id == self.written {
            // The next least recent of its count, else the least recent of
            // the next count (a written entry is at the front of the lowest
            // count only when that count's bucket holds nothing older).
            let other = match self.links.prev(id) {
                Some(other) => Some(other),
                None if first.next != NIL => self.buckets[first.next as usize].entries.back(),
                None => None,
            };
            match other {
                Some(other) => id = other,
                None => self.written = NIL,
            }
        }
        self.leave(id);
        Some(id)
    }

    /// The victim of another shard's write: the least used entry, sparing
    /// none (this shard's latest write is over; its entry is spared again,
    /// should it stay, only by this shard's own evictions).
    pub(crate) fn evict_any(&mut self) -> Option<u32> {
        super::evict_sparing_none(self, |p| &mut p.written, Self::evict)
    }

    pub(crate) fn clear(&mut self) {
        self.links.clear();
        self.buckets.clear();
        self.spare.clear();
        self.first = NIL;
        self.written = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reference;

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
        // 1 and 2 have two uses each; 1 was used before 2. But 2 was the
        // last written: spared while another entry is left.
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(0));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), None);
    }

    #[test]
    fn the_entry_just_written_is_not_its_own_victim() {
        // Every resident read once (two uses); a newcomer has one.
        let mut p = Lfu::default();
        for id in 0..3 {
            p.on_insert(id);
            p.on_access(id);
        }
        p.on_insert(3);
        // Textbook LFU makes room first: the least used resident goes.
        assert_eq!(p.evict(), Some(0));
        // The next newcomer displaces the unread one before it.
        p.on_insert(4);
        assert_eq!(p.evict(), Some(3));
        // Read since it arrived, the newcomer holds its own against the
        // residents, least recent first.
        p.on_access(4);
        p.on_insert(5);
        assert_eq!(p.evict(), Some(1));
        // A rewrite spares its entry in the same way: rewritten, 5 has two
        // uses and is the most recent; the least recent of two uses goes.
        p.on_update(5);
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), Some(4));
        // Alone, the written entry goes too.
        assert_eq!(p.evict(), Some(5));
        assert_eq!(p.evict(), None);
    }

    #[test]
    fn another_shards_write_spares_nothing_and_leaves_the_spare_in_place() {
        let mut p = Lfu::default();
        // 2 has five uses; 0 and 1 one each, 1 written last.
        p.on_insert(2);
        for _ in 0..4 {
            p.on_access(2);
        }
        p.on_insert(0);
        p.on_insert(1);
        // For another shard's write, the least used and least recent goes.
        assert_eq!(p.evict_any(), Some(0));
        // The latest write is the least used now: not spared either.
        let mut q = Lfu::default();
        q.on_insert(0);
        q.on_access(0);
        q.on_insert(1);
        assert_eq!(q.evict_any(), Some(1));
        assert_eq!(q.evict(), Some(0));
        // Where it stayed, this shard's own evictions still spare it.
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), None);
    }

    #[test]
    fn matches_a_sorted_set_of_count_and_last_use() {
        use std::collections::BTreeMap;

        // Random inserts, reads, rewrites, removals and evictions against the
        // obvious O(log n) reference: the minimum of (count, last use) over
        // the entries other than the one last written, unless it is alone.
        let mut p = Lfu::default();
        let mut model: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut written = None;
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut tick = 0;
        for _ in 0..200_000 {
            let rng = reference::next(&mut rng);
            let id = (rng % 64) as u32;
            tick += 1;
            match (rng >> 32) % 8 {
                0 => assert_eq!(
                    p.evict(),
                    reference::pop_min_sparing(&mut model, &mut written)
                ),
                1 => {
                    if model.remove(&id).is_some() {
                        p.on_remove(id);
                        if written == Some(id) {
                            written = None;
                        }
                    }
                }
                kind => match model.get_mut(&id) {
                    Some((count, last)) => {
                        *count += 1;
                        *last = tick;
                        if kind == 2 {
                            p.on_update(id);
                            written = Some(id);
                        } else {
                            p.on_access(id);
                        }
                    }
                    None => {
                        model.insert(id, (1, tick));
                        p.on_insert(id);
                        written = Some(id);
                    }
                },
            }
        }
    }

    #[test]
    fn removing_an_id_it_does_not_hold_changes_nothing() {
        let mut p = Lfu::default();
        p.on_insert(0);
        p.on_insert(1);
        p.on_remove(0);
        p.on_remove(0);
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), None);
        // An id below one inserted, never inserted itself.
        p.on_insert(5);
        p.on_remove(3);
        assert_eq!(p.evict(), Some(5));
        assert_eq!(p.evict(), None);
    }

    #[test]
    fn a_saturated_count_still_orders_by_recency() {
        let mut p = Lfu::default();
        p.on_insert(0);
        p.on_insert(1);
        // The last written, spared by every eviction but the last.
        p.on_insert(2);
        // All share the one bucket; put it at the top count.
        for b in &mut p.buckets {
            b.count = u64::MAX;
        }
        p.on_access(0);
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), Some(0));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), None);
    }
}
