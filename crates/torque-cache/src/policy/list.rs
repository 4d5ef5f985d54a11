//! Doubly linked lists of slot ids threaded through one shared node arena.
//!
//! Ids are small integers handed out by the shard's slot arena, so links are
//! `u32` indices instead of pointers: no `unsafe`, no per-node allocation, and
//! several lists (the segments of a policy) can share one arena because an id is
//! on at most one list at a time. A policy's per-id data can ride in the same
//! node (`Links<M>`), so a hit reads one array slot instead of two.

/// The "no neighbour" marker.
pub(crate) const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node<M> {
    prev: u32,
    next: u32,
    meta: M,
}

/// The head and tail of one list; its nodes live in a [`Links`].
///
/// The front (head) is the most recently pushed end, the back (tail) the
/// eviction end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    pub(crate) const fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id at the eviction end.
    pub(crate) fn back(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// The id at the most recent end.
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }
}

impl Default for List {
    fn default() -> Self {
        List::new()
    }
}

/// The node arena shared by the lists of one policy, with the policy's
/// per-id data `M` beside each node's links.
#[derive(Debug)]
pub(crate) struct Links<M = ()> {
    nodes: Vec<Node<M>>,
}

impl<M> Default for Links<M> {
    fn default() -> Self {
        Self { nodes: Vec::new() }
    }
}

impl<M: Copy + Default> Links<M> {
    /// Makes room for `id` (its data starts as `M::default()`).
    #[inline]
    pub(crate) fn ensure(&mut self, id: u32) {
        if self.nodes.len() <= id as usize {
            self.grow(id);
        }
    }

    /// [`Self::ensure`] when the arena is too short: out of line, so that
    /// the pushes inlined into a policy carry one compare and no resize.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, id: u32) {
        self.nodes.resize(
            id as usize + 1,
            Node {
                prev: NIL,
                next: NIL,
                meta: M::default(),
            },
        );
    }

    /// The data of `id`, which must have been [`ensure`](Self::ensure)d.
    #[inline]
    pub(crate) fn meta(&self, id: u32) -> &M {
        &self.nodes[id as usize].meta
    }

    /// The data of `id`, which must have been [`ensure`](Self::ensure)d.
    #[inline]
    pub(crate) fn meta_mut(&mut self, id: u32) -> &mut M {
        &mut self.nodes[id as usize].meta
    }

    #[inline]
    pub(crate) fn push_front(&mut self, list: &mut List, id: u32) {
        // One bounds check for the growth test and the index both.
        let node = match self.nodes.get_mut(id as usize) {
            Some(node) => node,
            None => {
                self.grow(id);
                &mut self.nodes[id as usize]
            }
        };
        node.prev = NIL;
        node.next = list.head;
        if list.head != NIL {
            self.nodes[list.head as usize].prev = id;
        } else {
            list.tail = id;
        }
        list.head = id;
        list.len += 1;
    }

    /// Pushes a new `id` with its data: [`Self::push_front`] and a write of
    /// the data in one pass over the node.
    #[inline]
    pub(crate) fn push_front_with(&mut self, list: &mut List, id: u32, meta: M) {
        let new = Node {
            prev: NIL,
            next: list.head,
            meta,
        };
        // One bounds check for the growth test and the store both.
        match self.nodes.get_mut(id as usize) {
            Some(node) => *node = new,
            None => {
                self.grow(id);
                self.nodes[id as usize] = new;
            }
        }
        if list.head != NIL {
            self.nodes[list.head as usize].prev = id;
        } else {
            list.tail = id;
        }
        list.head = id;
        list.len += 1;
    }

    /// Puts `id` on `list` right behind `anchor` (one step towards the
    /// back from it).
    #[inline]
    pub(crate) fn insert_behind(&mut self, list: &mut List, anchor: u32, id: u32) {
        self.ensure(id);
        let next = self.nodes[anchor as usize].next;
        let node = &mut self.nodes[id as usize];
        node.prev = anchor;
        node.next = next;
        if next != NIL {
            self.nodes[next as usize].prev = id;
        } else {
            list.tail = id;
        }
        self.nodes[anchor as usize].next = id;
        list.len += 1;
    }

    #[inline]
    pub(crate) fn unlink(&mut self, list: &mut List, id: u32) {
        let Node { prev, next, .. } = self.nodes[id as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            list.tail = prev;
        }
        let node = &mut self.nodes[id as usize];
        node.prev = NIL;
        node.next = NIL;
        list.len -= 1;
    }

    /// Moves `id` (on `list`) to the front. The hot operation of LRU hits
    /// and CLOCK second chances, so written out: `id` is not the head, so it
    /// has a predecessor, and only its neighbours' links and the old head's
    /// change (no clearing of its own links, no arena growth check).
    #[inline]
    pub(crate) fn move_to_front(&mut self, list: &mut List, id: u32) {
        let old_head = list.head;
        if old_head == id {
            return;
        }
        let Node { prev, next, .. } = self.nodes[id as usize];
        self.nodes[prev as usize].next = next;
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            list.tail = prev;
        }
        self.nodes[old_head as usize].prev = id;
        let node = &mut self.nodes[id as usize];
        node.prev = NIL;
        node.next = old_head;
        list.head = id;
    }

    /// [`Self::move_to_front`] of the back of a non-empty `list`: the
    /// moved id has no successor, so one fewer link to mend.
    #[inline]
    pub(crate) fn move_back_to_front(&mut self, list: &mut List) {
        let id = list.tail;
        let old_head = list.head;
        if old_head == id {
            return;
        }
        let prev = self.nodes[id as usize].prev;
        self.nodes[prev as usize].next = NIL;
        list.tail = prev;
        self.nodes[old_head as usize].prev = id;
        let node = &mut self.nodes[id as usize];
        node.prev = NIL;
        node.next = old_head;
        list.head = id;
    }

    /// Moves the run of `list` from `first` to its back to the front, in
    /// the same order: what [`Self::move_back_to_front`] does to each of
    /// them in turn from the back, with four links mended in all instead
    /// of four each (CLOCK's second chances of several entries in a row).
    #[inline]
    pub(crate) fn move_back_run_to_front(&mut self, list: &mut List, first: u32) {
        let old_head = list.head;
        if old_head == first {
            // The run is the whole list: turned all the way round.
            return;
        }
        let last = list.tail;
        // Not the head, so it has a predecessor.
        let before = self.nodes[first as usize].prev;
        self.nodes[before as usize].next = NIL;
        list.tail = before;
        self.nodes[last as usize].next = old_head;
        self.nodes[old_head as usize].prev = last;
        self.nodes[first as usize].prev = NIL;
        list.head = first;
    }

    pub(crate) fn pop_back(&mut self, list: &mut List) -> Option<u32> {
        let id = list.back()?;
        self.unlink(list, id);
        Some(id)
    }

    /// The id one step towards the front from `id`.
    pub(crate) fn prev(&self, id: u32) -> Option<u32> {
        let p = self.nodes[id as usize].prev;
        (p != NIL).then_some(p)
    }

    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
    }

    /// Applies `f` to the data of every id (listed or not). A pass over
    /// the whole arena (the policies age their data with it), so cold.
    #[cold]
    #[inline(never)]
    pub(crate) fn for_each_meta_mut(&mut self, mut f: impl FnMut(&mut M)) {
        for node in &mut self.nodes {
            f(&mut node.meta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_moves_as_the_general_form_does() {
        for n in 1..6u32 {
            let (mut fast, mut slow) = (Links::<()>::default(), Links::<()>::default());
            let (mut f, mut s) = (List::new(), List::new());
            for id in 0..n {
                fast.push_front(&mut f, id);
                slow.push_front(&mut s, id);
            }
            fast.move_back_to_front(&mut f);
            let back = s.back().unwrap();
            slow.move_to_front(&mut s, back);
            assert_eq!(collect(&fast, &f), collect(&slow, &s));
            assert_eq!(
                (f.len(), f.front(), f.back()),
                (s.len(), s.front(), s.back())
            );
            // The old back's links are whole: it unlinks as in the other.
            let front = f.front().unwrap();
            fast.unlink(&mut f, front);
            slow.unlink(&mut s, front);
            assert_eq!(collect(&fast, &f), collect(&slow, &s));
            assert_eq!(
                (f.len(), f.front(), f.back()),
                (s.len(), s.front(), s.back())
            );
        }
    }

    #[test]
    fn a_run_from_the_back_moves_as_its_entries_one_by_one() {
        for n in 1..7u32 {
            for run in 1..=n {
                let (mut fast, mut slow) = (Links::<()>::default(), Links::<()>::default());
                let (mut f, mut s) = (List::new(), List::new());
                for id in 0..n {
                    fast.push_front(&mut f, id);
                    slow.push_front(&mut s, id);
                }
                // The run's front-most entry: `run` steps from the back.
                let first = run - 1;
                fast.move_back_run_to_front(&mut f, first);
                for _ in 0..run {
                    slow.move_back_to_front(&mut s);
                }
                assert_eq!(collect(&fast, &f), collect(&slow, &s), "n {n} run {run}");
                assert_eq!(
                    (f.len(), f.front(), f.back()),
                    (s.len(), s.front(), s.back())
                );
                // Every link is whole: each entry unlinks as in the other,
                // from the front (following `next`) down to the back.
                while let Some(front) = f.front() {
                    fast.unlink(&mut f, front);
                    slow.unlink(&mut s, front);
                    assert_eq!(collect(&fast, &f), collect(&slow, &s), "n {n} run {run}");
                    assert_eq!(
                        (f.len(), f.front(), f.back()),
                        (s.len(), s.front(), s.back())
                    );
                }
            }
        }
    }

    fn collect(links: &Links<()>, list: &List) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = list.back();
        while let Some(id) = cur {
            out.push(id);
            cur = links.prev(id);
        }
        out
    }

    #[test]
    fn push_move_unlink_pop_keep_order() {
        let mut links = Links::<()>::default();
        let mut list = List::new();
        for id in [3, 1, 4, 7] {
            links.push_front(&mut list, id);
        }
        assert_eq!(collect(&links, &list), vec![3, 1, 4, 7]);
        links.move_to_front(&mut list, 3);
        assert_eq!(collect(&links, &list), vec![1, 4, 7, 3]);
        links.move_to_front(&mut list, 4);
        assert_eq!(collect(&links, &list), vec![1, 7, 3, 4]);
        links.move_to_front(&mut list, 4);
        assert_eq!(collect(&links, &list), vec![1, 7, 3, 4]);
        links.move_to_front(&mut list, 7);
        links.move_to_front(&mut list, 3);
        links.move_to_front(&mut list, 4);
        assert_eq!(collect(&links, &list), vec![1, 7, 3, 4]);
        assert_eq!(list.front(), Some(4));
        links.unlink(&mut list, 4);
        links.push_front(&mut list, 4);
        links.move_to_front(&mut list, 3);
        links.unlink(&mut list, 4);
        assert_eq!(collect(&links, &list), vec![1, 7, 3]);
        assert_eq!(list.front(), Some(3));
        assert_eq!(links.pop_back(&mut list), Some(1));
        assert_eq!(links.pop_back(&mut list), Some(7));
        assert_eq!(links.pop_back(&mut list), Some(3));
        assert_eq!(links.pop_back(&mut list), None);
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn push_front_with_writes_links_and_data() {
        let mut links = Links::<u8>::default();
        let mut list = List::new();
        links.push_front_with(&mut list, 2, 20);
        links.push_front_with(&mut list, 0, 10);
        links.push_front(&mut list, 5);
        *links.meta_mut(5) = 50;
        assert_eq!(list.back(), Some(2));
        assert_eq!(list.front(), Some(5));
        assert_eq!(links.prev(2), Some(0));
        assert_eq!(links.prev(0), Some(5));
        assert_eq!(
            (*links.meta(2), *links.meta(0), *links.meta(5)),
            (20, 10, 50)
        );
        links.unlink(&mut list, 0);
        // A reused id gets fresh links and data.
        links.push_front_with(&mut list, 0, 11);
        assert_eq!(list.front(), Some(0));
        assert_eq!(links.prev(5), Some(0));
        assert_eq!(*links.meta(0), 11);
        assert_eq!(list.len(), 3);
        links.insert_behind(&mut list, 0, 7);
        links.insert_behind(&mut list, 2, 8);
        assert_eq!(collect_u8(&links, &list), vec![8, 2, 5, 7, 0]);
        assert_eq!(list.len(), 5);
    }

    fn collect_u8(links: &Links<u8>, list: &List) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = list.back();
        while let Some(id) = cur {
            out.push(id);
            cur = links.prev(id);
        }
        out
    }

    /// Both ways along `list`: front to back by `next` must be back to
    /// front by `prev` reversed, with `len` ids and the ends' outer links
    /// `NIL` (a splice that forgets one link shows here, not only later).
    fn checked(links: &Links<()>, list: &List) -> Vec<u32> {
        // Bounded: a broken splice can leave a cycle.
        let mut by_prev = Vec::new();
        let mut cur = list.tail;
        while cur != NIL && by_prev.len() <= list.len() {
            by_prev.push(cur);
            cur = links.nodes[cur as usize].prev;
        }
        let mut by_next = Vec::new();
        let mut cur = list.head;
        while cur != NIL && by_next.len() <= list.len() {
            by_next.push(cur);
            cur = links.nodes[cur as usize].next;
        }
        by_next.reverse();
        assert_eq!(by_prev, by_next, "prev and next links disagree");
        assert_eq!(by_prev.len(), list.len(), "len");
        if let (Some(front), Some(back)) = (list.front(), list.back()) {
            assert_eq!(links.nodes[front as usize].prev, NIL);
            assert_eq!(links.nodes[back as usize].next, NIL);
        }
        by_prev
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Pushes an id on no list to the front of list `0` or `1`.
        Push(u32, usize),
        /// Unlinks an id, if listed.
        Unlink(u32),
        /// Moves an id to the front of its list, if listed.
        ToFront(u32),
        /// The back of list `0` or `1` to its front.
        BackToFront(usize),
        /// The run of list `0` or `1` from its n-th entry from the back
        /// (modulo its length, from 0) to the back, to its front.
        RunToFront(usize, usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..12u32, 0..2usize).prop_map(|(id, l)| Op::Push(id, l)),
            1 => (0..12u32).prop_map(Op::Unlink),
            1 => (0..12u32).prop_map(Op::ToFront),
            1 => (0..2usize).prop_map(Op::BackToFront),
            3 => (0..2usize, 0..16usize).prop_map(|(l, n)| Op::RunToFront(l, n)),
        ]
    }

    proptest::proptest! {
        /// `move_back_run_to_front` against `move_back_to_front` once per
        /// entry of the run, and both against a model (two lists sharing
        /// one arena, ids pushed in any order, after any other moves).
        #[test]
        fn a_run_moves_as_its_entries_one_by_one_after_any_history(
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            use std::collections::VecDeque;
            let (mut fast, mut slow) = (Links::<()>::default(), Links::<()>::default());
            let mut f = [List::new(), List::new()];
            let mut s = [List::new(), List::new()];
            // Front first, as the lists.
            let mut model: [VecDeque<u32>; 2] = [VecDeque::new(), VecDeque::new()];
            let on = |model: &[VecDeque<u32>; 2], id: u32| model.iter().position(|l| l.contains(&id));
            for op in ops {
                match op {
                    Op::Push(id, l) => {
                        if on(&model, id).is_none() {
                            fast.push_front(&mut f[l], id);
                            slow.push_front(&mut s[l], id);
                            model[l].push_front(id);
                        }
                    }
                    Op::Unlink(id) => {
                        if let Some(l) = on(&model, id) {
                            fast.unlink(&mut f[l], id);
                            slow.unlink(&mut s[l], id);
                            model[l].retain(|&x| x != id);
                        }
                    }
                    Op::ToFront(id) => {
                        if let Some(l) = on(&model, id) {
                            fast.move_to_front(&mut f[l], id);
                            slow.move_to_front(&mut s[l], id);
                            model[l].retain(|&x| x != id);
                            model[l].push_front(id);
                        }
                    }
                    Op::BackToFront(l) => {
                        if !model[l].is_empty() {
                            fast.move_back_to_front(&mut f[l]);
                            slow.move_back_to_front(&mut s[l]);
                            let id = model[l].pop_back().unwrap();
                            model[l].push_front(id);
                        }
                    }
                    Op::RunToFront(l, n) => {
                        if !model[l].is_empty() {
                            let run = n % model[l].len() + 1;
                            let first = model[l][model[l].len() - run];
                            fast.move_back_run_to_front(&mut f[l], first);
                            for _ in 0..run {
                                slow.move_back_to_front(&mut s[l]);
                            }
                            model[l].rotate_right(run);
                        }
                    }
                }
                for l in 0..2 {
                    let want: Vec<u32> = model[l].iter().rev().copied().collect();
                    proptest::prop_assert_eq!(&checked(&fast, &f[l]), &want);
                    proptest::prop_assert_eq!(&checked(&slow, &s[l]), &want);
                    proptest::prop_assert_eq!(f[l].back(), model[l].back().copied());
                    proptest::prop_assert_eq!(f[l].front(), model[l].front().copied());
                }
            }
        }
    }
}
