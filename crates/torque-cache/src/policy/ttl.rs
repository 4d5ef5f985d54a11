//! Nearest expiry first: evict the entry that would expire soonest; entries
//! that never expire go last, oldest insert first.
//!
//! The order is `(deadline, insert order)`. Most caches write deadlines in
//! that order already — a cache-wide time-to-live gives every insert a later
//! deadline than the one before, and without expiry every deadline is
//! "never" — so entries that arrive in order go on a list, in O(1), and only
//! those that arrive out of order (a shorter per-entry time-to-live, a
//! time-to-idle refresh that lands between two others) go into a sorted
//! set. The victim is the smaller of the list's oldest end and the set's
//! first. (A cache that mixes entries that never expire with entries that
//! do falls back to the set: once a never-expiring entry is the newest on
//! the list, every finite deadline after it is out of order until it
//! leaves — which, as such entries go last, can be long. The order is the
//! same either way; only the cost is O(log n) again.) Until 2026-12-05 every entry went into the set: an insert cost
//! about 100 ns in the crate's bench against 30–50 for the other policies.
//!
//! As a cache that makes room before it writes (Redis's `volatile-ttl`),
//! the entry being written is never its own write's victim while another
//! entry is left: the shard inserts first and then evicts, and until
//! 2026-12-07 a newcomer with a shorter time-to-live than every resident
//! was evicted on arrival, so a cache full of long-lived entries admitted
//! no short-lived one until they expired.

use std::collections::BTreeSet;

use super::list::{Links, List, NIL};

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    deadline: u64,
    /// Insert order: ties of deadline go to the older insert.
    tick: u64,
    /// On the in-order list (else in the set).
    listed: bool,
    present: bool,
}

impl Meta {
    fn key(self) -> (u64, u64) {
        (self.deadline, self.tick)
    }
}

/// Expiry order of the ids in one shard.
#[derive(Debug)]
pub(crate) struct NearestExpiry {
    links: Links<Meta>,
    /// Ids in increasing `(deadline, insert order)` from back to front.
    listed: List,
    /// The others, as `(deadline, insert order, id)`.
    sorted: BTreeSet<(u64, u64, u32)>,
    tick: u64,
    /// The entry of the latest write (insert or rewrite), or [`NIL`]: not
    /// a victim while any other entry is left.
    written: u32,
}

impl Default for NearestExpiry {
    fn default() -> Self {
        Self {
            links: Links::default(),
            listed: List::new(),
            sorted: BTreeSet::new(),
            tick: 0,
            written: NIL,
        }
    }
}

impl NearestExpiry {
    /// Files `id` (not on either) under `(deadline, tick)`: on the list if
    /// it goes after the list's newest entry, else in the set.
    fn file(&mut self, id: u32, deadline: u64, tick: u64) {
        let in_order = self
            .listed
            .front()
            .is_none_or(|newest| self.links.meta(newest).key() <= (deadline, tick));
        let meta = Meta {
            deadline,
            tick,
            listed: in_order,
            present: true,
        };
        if in_order {
            self.links.push_front_with(&mut self.listed, id, meta);
        } else {
            self.links.ensure(id);
            *self.links.meta_mut(id) = meta;
            self.sorted.insert((deadline, tick, id));
        }
    }

    /// Takes `id` off the list or out of the set; returns its key.
    fn unfile(&mut self, id: u32) -> Option<(u64, u64)> {
        let meta = *self.links.meta(id);
        if !meta.present {
            return None;
        }
        if meta.listed {
            self.links.unlink(&mut self.listed, id);
        } else {
            self.sorted.remove(&(meta.deadline, meta.tick, id));
        }
        self.links.meta_mut(id).present = false;
        Some(meta.key())
    }

    pub(crate) fn on_insert(&mut self, id: u32, deadline: u64) {
        self.tick += 1;
        self.written = id;
        self.file(id, deadline, self.tick);
    }

    /// A rewrite of `id` with a deadline that may have moved: the entry
    /// its write's evictions spare.
    pub(crate) fn on_update(&mut self, id: u32, deadline: u64) {
        self.written = id;
        self.on_deadline(id, deadline);
    }

    /// A read or a replacement that may have moved the deadline.
    pub(crate) fn on_deadline(&mut self, id: u32, deadline: u64) {
        let meta = *self.links.meta(id);
        if meta.present && meta.deadline != deadline {
            self.unfile(id);
            self.file(id, deadline, meta.tick);
        }
    }

    pub(crate) fn on_remove(&mut self, id: u32) {
        self.unfile(id);
        if self.written == id {
            self.written = NIL;
        }
    }

    /// The entry nearest its expiry other than the one just written,
    /// unless that one is alone.
    pub(crate) fn evict(&mut self) -> Option<u32> {
        let written = self.written;
        // The list's oldest, or the one after it if that was just written
        // (on the list or in the set, the written entry is passed over
        // where it is the smallest: one step further).
        let listed = match self.listed.back() {
            Some(l) if l == written => self.links.prev(l),
            l => l,
        };
        let sorted = match self.sorted.first() {
            Some(&(_, _, s)) if s == written => self.sorted.iter().nth(1).map(|&(_, _, id)| id),
            s => s.map(|&(_, _, id)| id),
        };
        let id = match (listed, sorted) {
            (Some(l), Some(s)) => {
                if self.links.meta(l).key() <= self.links.meta(s).key() {
                    l
                } else {
                    s
                }
            }
            (Some(l), None) => l,
            (None, Some(s)) => s,
            (None, None) => {
                // Nothing but the written entry (or nothing) is left.
                self.written = NIL;
                if written == NIL || !self.links.meta(written).present {
                    return None;
                }
                written
            }
        };
        self.unfile(id);
        Some(id)
    }

    /// The victim of another shard's write: the entry nearest its expiry,
    /// sparing none (this shard's latest write is over; its entry is
    /// spared again, should it stay, only by this shard's own evictions).
    pub(crate) fn evict_any(&mut self) -> Option<u32> {
        super::evict_sparing_none(self, |p| &mut p.written, Self::evict)
    }

    pub(crate) fn clear(&mut self) {
        self.links.clear();
        self.listed = List::new();
        self.sorted.clear();
        self.written = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NEVER;
    use crate::policy::reference;

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

    #[test]
    fn the_entry_just_written_is_not_its_own_victim() {
        let mut p = NearestExpiry::default();
        p.on_insert(0, 100);
        p.on_insert(1, 200);
        // Nearer its expiry than every resident: still not its own write's
        // victim; the resident nearest its expiry makes room.
        p.on_insert(2, 10);
        assert_eq!(p.evict(), Some(0));
        // A rewrite spares its entry too (1 would be next otherwise: 2 is
        // no longer the latest write, and goes first after the rewrite).
        p.on_update(1, 5);
        assert_eq!(p.evict(), Some(2));
        // Alone, the written entry goes.
        assert_eq!(p.evict(), Some(1));
        assert_eq!(p.evict(), None);
    }

    #[test]
    fn another_shards_write_spares_nothing_and_leaves_the_spare_in_place() {
        let mut p = NearestExpiry::default();
        p.on_insert(0, 100);
        p.on_insert(1, 10);
        p.on_insert(2, 20);
        // For another shard's write, the nearest expiry goes.
        assert_eq!(p.evict_any(), Some(1));
        // Where it stayed, this shard's own evictions still spare 2.
        assert_eq!(p.evict(), Some(0));
        assert_eq!(p.evict(), Some(2));
        assert_eq!(p.evict(), None);
        // The latest write nearest its expiry: not spared either.
        p.on_insert(3, 100);
        p.on_insert(4, 10);
        assert_eq!(p.evict_any(), Some(4));
        assert_eq!(p.evict_any(), Some(3));
        assert_eq!(p.evict_any(), None);
    }

    #[test]
    fn matches_a_sorted_set_of_deadline_and_insert_order() {
        // Random inserts (deadlines mostly rising, as with a cache-wide
        // time-to-live, sometimes not), deadline moves by reads and by
        // rewrites, removals and evictions against the obvious reference:
        // the minimum of (deadline, insert order) over the entries other
        // than the one last written, unless it is alone.
        use std::collections::BTreeMap;

        let mut p = NearestExpiry::default();
        let mut model: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut written = None;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let (mut tick, mut now) = (0, 1_000);
        for _ in 0..200_000 {
            let rng = reference::next(&mut rng);
            let id = (rng % 64) as u32;
            now += rng >> 60;
            let deadline = match (rng >> 40) % 10 {
                0 => NEVER,
                1 | 2 => now + (rng >> 20) % 500,
                _ => now + 1_000,
            };
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
                kind @ (2 | 3) => {
                    if let Some(key) = model.get_mut(&id) {
                        key.0 = deadline;
                        if kind == 2 {
                            p.on_deadline(id, deadline);
                        } else {
                            p.on_update(id, deadline);
                            written = Some(id);
                        }
                    }
                }
                _ => {
                    if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(id) {
                        tick += 1;
                        slot.insert((deadline, tick));
                        p.on_insert(id, deadline);
                        written = Some(id);
                    }
                }
            }
        }
    }
}
