//! The default policy: W-TinyLFU (Einziger, Friedman & Manes, "TinyLFU: A
//! Highly Efficient Cache Admission Policy", ACM Transactions on Storage 13(4),
//! 2017), with a window whose size follows the returns of departed keys
//! ([`Adaptive::adapt`], ARC's adaptation), and an optional hill climber (as
//! in Caffeine, off).
//!
//! New entries enter a small *window*. When the shard must shed weight, the
//! window's oldest entry (the candidate) competes with the main space's victim
//! (the tail of the *probation* segment of a segmented LRU): a count-min sketch
//! of recent popularity ([`FrequencySketch`]) decides which one stays. Main
//! space is an SLRU: a hit in probation promotes to *protected* (80 % of main),
//! whose overflow is demoted back to probation. The window absorbs bursts of new
//! keys (recency); the admission filter keeps scans and one-hit wonders out of
//! main space (frequency).
//!
//! A hit costs no list move and no sketch update: the shard only bumps the
//! entry's saturating hit count ([`Hits`]), under its shared lock. The lists
//! act on those counts lazily, CLOCK style (second chance; Corbató 1968, and
//! as in CLOCK-Pro, Jiang, Chen & Zhang, USENIX ATC 2005, and S3-FIFO, Yang
//! et al., SOSP 2023): when an entry with hits reaches the eviction end of the
//! window or of protected it goes back to the front, and at probation's end it
//! is promoted to protected, instead of moving on every hit. Whenever the
//! policy takes an entry's hits (second chance, promotion, departure) it folds
//! them into the sketch in one batch, so the sketch still sees every access
//! (only later) and the admission contest compares the same frequencies as
//! textbook W-TinyLFU; the counts are halved with the sketch's periodic reset.
//!
//! One departure from textbook W-TinyLFU: a *ghost* ([`Ghost`]) remembers the
//! keys the admission filter recently turned away, and one that comes back
//! while still remembered is admitted without a contest (the ghost queue of
//! S3-FIFO, Yang et al., SOSP 2023, and the non-resident pages of CLOCK-Pro).
//! A key asked for again soon after it was refused is evidence of recency that
//! the sketch, which remembers popularity over many times the cache's size,
//! is slow to give: on recency-heavy traces the filter alone turned away most
//! newcomers and missed more than twice as often as LRU (docs/benchmarks.md,
//! "fifth pass").

use super::list::{Links, List};
use super::sketch::{FrequencySketch, MAX_ENTRIES, MIN_ENTRIES};
use super::{Hits, MAX_HITS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Segment {
    #[default]
    Window,
    Probation,
    Protected,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    segment: Segment,
    /// Hits taken from the shard's count (at a second chance or promotion)
    /// and not yet folded into the sketch: they are folded when the entry
    /// leaves, and count in the admission contest meanwhile. Saturates at
    /// [`MAX_HITS`]; halved with the sketch.
    resident: u8,
    /// The sketch's estimate of the key's popularity right after its
    /// insert counted it ([`FrequencySketch::frequency`]), aged with the
    /// sketch. While the entry is resident its own hits go to `resident`,
    /// not to the sketch, so the sketch's figure for its hash moves only
    /// by the halving (applied here too) and by other keys' collisions
    /// (count-min noise): the admission contest reads this instead of the
    /// sketch, whose block for a long-resident victim is rarely still in
    /// the CPU's caches.
    estimate: u8,
    /// [`DOOR`], [`TRIAL`], [`RETURNED`] and [`DEMOTED`], in one byte so
    /// that a node stays 16 bytes.
    flags: u8,
    weight: u32,
}

/// In [`Meta::flags`]: `estimate` includes the doorkeeper's one (cleared
/// with the doorkeeper at the halving).
const DOOR: u8 = 1;
/// In [`Meta::flags`]: a recalled key placed in protected, whose first
/// look at protected's tail is a trial of that placement
/// ([`RecallTrials`]).
const TRIAL: u8 = 2;
/// In [`Meta::flags`]: the key was refused lately and has come back
/// ([`Adaptive::adapt`] recalled it from the ghost on its insert), so it
/// is admitted when it leaves the window, as a key the ghost recalls there
/// ([`Adaptive::admit_or_recall`]).
///
/// The ghost is checked when the key returns, not when it reaches the
/// window's end: ARC acts on a ghost hit at once, moving the key to its
/// frequency list (Megiddo & Modha, USENIX FAST 2003), as S3-FIFO
/// (Yang et al., SOSP 2023) and quick_cache put a ghost hit in their main
/// queue. Checked at the window's end only, the fingerprint had to last
/// through the key's whole stay in the window as well, and a window grown
/// past the ghost's length (a few tens of entries in a shard of a few
/// hundred) let almost every one be overwritten on the way: on a Zipf whose
/// hot keys change every 100k requests, at 1k entries, a shift grew the
/// window, returning keys then grew it on, were refused again at its end
/// by main's few and hottest entries, and no key came into main to be
/// evicted and shrink it again; the window stayed at its cap (95 %) for
/// whole phases, missing 0.63 where the same cache had missed 0.54 before
/// the first shift (docs/benchmarks.md, 2026-12-07, twenty-first session).
const RETURNED: u8 = 4;
/// In [`Meta::flags`]: the entry came to probation by a demotion from
/// protected (it was promoted once), not from the window. Main space's
/// victims are remembered with it, and a victim's return then moves
/// protected's share one way or the other ([`Adaptive::move_protected`]).
const DEMOTED: u8 = 8;

/// Whether the window is resized by the hill climber. Off: on our traces
/// (docs/benchmarks.md, 2026-11-23) a fixed 1 % window had a lower miss ratio
/// in every cell than the climber run per shard, which sees only its shard's
/// share of the samples and steps too coarsely for shards of a few hundred
/// entries. Kept, tested, for a later global climber. Before switching it
/// on: since every eviction of a round is a contest
/// ([`Adaptive::contest_more`]), inserts into a full cache no longer
/// overflow a window whose share was just raised, so the window would
/// stay at its old size; a step up must move entries from probation into
/// the window itself, as Caffeine's `increaseWindow` does.
pub(crate) const HILL_CLIMBING: bool = false;
/// The most entries a shard's sketch is sized for before any entry arrives
/// (16,384 entries: a table of 32,768 blocks, 1 MiB of counters and as
/// much of doorkeeper).
const INITIAL_SKETCH_ENTRIES: u64 = 1 << 14;
/// Share of main space kept as the protected segment, in percent: 80, as
/// Caffeine. From 2026-11-23 to 2026-12-06 it was 90, because 80 lost the
/// issue's scan/loop @1k cell to quick_cache (0.6951 against 0.6952 in
/// half the runs); that loss came from a sketch table with as few as one
/// block per entry ([`FrequencySketch::new`]), and with one and a half
/// the cell holds at 80 (0.6943 against 0.6953 over 24 hasher seeds, as
/// at 90 before). A smaller protected segment lets popularity that has
/// moved on leave sooner: over 12 hasher seeds each, against 90 with the
/// narrow table, shifting Zipf @10k 0.4530 → 0.4409 and @1k 0.6166 →
/// 0.6107, recency @10k 0.3168 → 0.3100 and @1k 0.7506 → 0.7393, the
/// issue's Zipf cells within +0.0012; 70 reached 0.4369 on the shifting
/// Zipf (below quick_cache's 0.4391) but left scan/loop @1k a margin of
/// 0.0005 (docs/benchmarks.md, 2026-12-06, sixteenth session).
///
/// This is protected's most: while the window is long
/// ([`LONG_GHOSTS_DIVISOR`]) the returns of main space's victims lower it to
/// as little as half of it, and raise it back ([`Adaptive::move_protected`]).
const PROTECTED_PERCENT: u64 = 80;
/// Probation keeps at least this fraction (1/20, 5 %) of the main space a
/// shard actually holds ([`Adaptive::protected_limit`]), so it never runs
/// dry. 5 %, not the nominal 10 %: with 10 % the issue's scan/loop @1k
/// cell, a near-tie with quick_cache, averaged 0.6947 against 0.6944 with
/// 5 % (two batches of 12 hasher seeds, `cache_hit_ratio_cell -- scan 1000
/// 12`; 0.6943 without the bound), and 2 % let the shifting trace below
/// reach 0.619.
const PROBATION_OF_HELD_DIVISOR: u64 = 20;
/// Whether a shard's window follows the returns of departed keys
/// ([`Adaptive::adapt`]).
const ADAPTIVE_WINDOW: bool = true;
/// Moves of the window in one direction in a row per doubling of its
/// step: the fourth move of a run takes two entries, the eighth four
/// (entries of the average weight with weights; [`Adaptive::step`]). A
/// return counts towards the run whether or not the window moves (at its
/// least size or its cap, or held by a weighted window's brake). On
/// popularity that lasts, returns of the two kinds alternate and the
/// window moves by one entry; after a shift, or where popularity decays
/// (recency), they come in runs, and the window crosses a shard of a few
/// thousand entries in tens of moves instead of thousands (the way a hill climber's step restarts large, Caffeine's
/// included). One entry per move, at 10k entries over 12 hasher seeds:
/// recency 0.3101, shifting Zipf 0.4413; with doubling every four moves
/// 0.2975 and 0.4211 (quick_cache 0.3065 and 0.4391), the issue's cells
/// within 0.0002, but the twice-touched scan @10k 0.3794 → 0.3917 and the
/// shifting Zipf @1k 0.6116 → 0.6163 (docs/benchmarks.md, 2026-12-06,
/// sixteenth session). With weights (steps of the average entry weight,
/// the size still at most two entries ahead of the window itself) the
/// same doubling took recency at 20,000 units (entries of 1–190) from
/// 0.232 to 0.224 (three runs each), the other weighted cells within the
/// hashers' noise.
const MOMENTUM_RUN: u32 = 4;
/// The most entries one step of the window may be ([`Adaptive::step`]):
/// a shrink's entries move from the window to probation in the next
/// [`Adaptive::evict`], under one insert, so an eighth of a large
/// shard's window would be that many list moves at once (Caffeine caps
/// its own transfers per maintenance run likewise). No cell of the
/// hit-ratio benches moved by more than the hashers' noise with this cap
/// (2026-12-06, sixteenth session: 12 seeds, the twelve cells of
/// `benches/scripts/cells.sh` within 0.0003, the twice-touched scan
/// @10k 0.3917 → 0.3896; the sweeps' recency cells within 0.001).
const MAX_STEP_ENTRIES: u64 = 64;
/// While the window of an unweighted shard holds at least this fraction
/// (an eighth) of the shard, both ghosts remember [`LONG_GHOSTS_FACTOR`]
/// times as many keys ([`Adaptive::lengthen_ghosts`]). A window grown that
/// far says the traffic's popularity decays (recency), and there the
/// ghosts, sized from the shard's entries (an eighth or a quarter;
/// [`Ghost`]), fall short of the distances at which departed keys come
/// back: on the recency trace at 5k entries (shards of 625, the window at
/// about 60 % of a shard) a third of all misses were keys refused at the
/// window's end, three quarters of them returning 256 to 4,095 inserts
/// after their refusal, where the ghost of refused keys (78 slots)
/// recalled almost none (docs/benchmarks.md, 2026-12-07, twenty-first
/// session). The long ghosts are nearer ARC's, whose two ghost lists
/// together hold as many keys as the cache (Megiddo & Modha, USENIX FAST
/// 2003), and quick_cache's (half the capacity). Both at once: the window's size is set where the
/// two ghosts' returns balance, and lengthening one alone moved that
/// balance (twice as long, the ghost of refused keys alone: recency @5k
/// 0.446 → 0.448; the victims' alone, 0.450). Below an eighth (the issue's
/// Zipf and scan/loop cells keep windows of 1–5 %) nothing changes: a
/// ghost of refused keys a quarter as long as the shard there lost the
/// issue's scan/loop @1k cell ("fifth pass"). An eighth and four times,
/// over a quarter and twice (3 hasher seeds each): recency @5k 0.4414 →
/// 0.4402, shifting Zipf @1k 0.5905 → 0.5829 and @10k 0.4200 → 0.4160,
/// the twice-touched scan @10k 0.3812 → 0.3826; eight times took the
/// shifting Zipf @1k to 0.5788 but the twice-touched scan to 0.3848.
const LONG_GHOSTS_DIVISOR: u64 = 8;
/// See [`LONG_GHOSTS_DIVISOR`], which also lets victims' returns move
/// protected's share ([`Adaptive::move_protected`]). The slots are allocated when a ghost is
/// first long: 4 bytes per entry per ghost in a shard whose window has
/// grown that far, none in the others.
const LONG_GHOSTS_FACTOR: usize = 4;
/// The fewest entries a weighted shard holds while its victims' returns
/// move protected's share ([`Adaptive::move_protected`]). The share moves
/// one (average) entry per return within a range of half of it, about
/// R = 0.4 n entries in a shard of n. Where the trace does not change, the
/// two kinds of return balance and the share does a random walk, which
/// crosses R in about R² returns; a bias b (the surplus of one kind over
/// the other per return) crosses it in about R / b. The move follows the
/// returns' signal sooner than their noise only when R / b < R², that is
/// b > 1 / R. With n = 256, R ≈ 100 and a bias of 1 % is enough; a shard
/// of 30–200 entries (R = 12–80) would need 1.3–8 %, a surplus its few
/// returns show by chance on a stationary Zipf. 256 is the power of two
/// that puts the bias needed at about 1 %, chosen so and not fitted (no
/// other value was measured). A weighted window never makes the ghosts
/// long ([`Adaptive::window_is_long`]), so the entry count is the gate.
const PROTECTED_MOVE_ENTRIES: u64 = 256;
/// The most of a shard the window may grow to: all but a twentieth
/// (rounded up), 95 %. Where popularity does not last, the ghosts grow the
/// window towards its cap and the cache then behaves as an LRU of the
/// window's size: at 80 % (Caffeine's climber stops there) the recency
/// trace at 10k entries missed 0.340 against LRU's 0.297, at 95 % 0.317
/// (12 hasher seeds each; 98 % 0.313, 99.9 % 0.311), with the issue's
/// cells within 0.0003 and no seed of scan/loop @1k lost
/// (docs/benchmarks.md, 2026-12-06, sixteenth session).
const fn max_window(weight: u64) -> u64 {
    weight - weight.div_ceil(WINDOW_MAX_DIVISOR)
}
/// See [`max_window`].
const WINDOW_MAX_DIVISOR: u64 = 20;
/// Protected's limit from `held` units of main space before
/// [`Adaptive::protected_max`] applies ([`Adaptive::hold_main`]):
/// nondecreasing in `held`.
#[inline]
const fn protected_of_held(held: u64) -> u64 {
    let probation = held / PROBATION_OF_HELD_DIVISOR;
    held.saturating_sub(if probation > 2 { probation } else { 2 })
}

/// The least `held` whose [`protected_of_held`] is at least `max`
/// (`u64::MAX` if none is: no shard holds that much).
fn protected_full_at(max: u64) -> u64 {
    // protected_of_held(h) is about 19 h / 20: start there and step.
    let mut h = max.saturating_add(max / (PROBATION_OF_HELD_DIVISOR - 1));
    while protected_of_held(h) < max {
        if h == u64::MAX {
            return u64::MAX;
        }
        h += 1;
    }
    while h > 0 && protected_of_held(h - 1) >= max {
        h -= 1;
    }
    h
}

/// Initial window share of the capacity, in percent (Caffeine's default).
const INITIAL_WINDOW_PERCENT: f64 = 1.0;
/// Hill climber: first step, and after a large change in hit rate, as a share
/// of capacity; per-sample decay of the step; the change that restarts it.
const STEP_PERCENT: f64 = 6.25;
const STEP_DECAY: f64 = 0.98;
const RESTART_THRESHOLD: f64 = 0.05;
/// Candidates at least this popular are sometimes admitted at random even
/// when not more popular than the victim, so an attacker cannot pin the victim
/// by flooding its hash (Caffeine's HashDoS defence).
const RANDOM_ADMIT_FREQUENCY: u8 = 6;
/// Evictions counted before the reads at the eviction ends are halved
/// ([`Adaptive::end_rounds`]): a few thousand, as [`MAIN_EVICTION_MEMORY`].
const END_MEMORY: u64 = 4096;
/// Main space's victims counted by kind before the counts are halved
/// ([`Adaptive::main_evictions`]): a few thousand, as the victims' ghost is
/// at most a few thousand slots in the shards where it matters.
const MAIN_EVICTION_MEMORY: u32 = 4096;
/// The most probation entries a heavy candidate is weighed against
/// ([`Adaptive::aggregate_victims`]), which bounds the cost of one contest.
const MAX_AGGREGATED_VICTIMS: usize = 64;

/// W-TinyLFU state of one shard.
#[derive(Debug)]
pub(crate) struct Adaptive {
    /// List links and [`Meta`] of every id, side by side (16 bytes a node;
    /// an entry's hash is read from the shard's slot, through [`Hits`],
    /// which the policy touches anyway when it looks at an entry).
    links: Links<Meta>,
    window: List,
    probation: List,
    protected: List,
    window_weight: u64,
    probation_weight: u64,
    protected_weight: u64,
    capacity: u64,
    window_max: u64,
    /// [`PROTECTED_PERCENT`] of main space, kept with `window_max` (it is
    /// checked on every eviction).
    protected_max: u64,
    /// The least weight held from which [`Self::window_size_now`] is
    /// `window_max`, and the least main space held from which
    /// [`Self::hold_main`] sets protected's limit to `protected_max`: the
    /// common case of a full shard then costs one compare each, not the
    /// divisions (kept with the two by [`Self::limits_changed`]).
    window_full_at: u64,
    protected_full_at: u64,
    /// Sized for the entries actually held, not the capacity (which may be
    /// a weight in bytes, or a generous bound never reached); regrown when
    /// the shard holds more entries than its table would have blocks were
    /// it dense ([`Self::grow_at`]), to four times that, carrying the
    /// residents' estimates ([`Self::regrow`]; other keys' counts are lost).
    sketch: FrequencySketch,
    entries: u64,
    /// Entries demoted from protected to probation during the current
    /// [`Self::evict`], and the first of them: the admission candidate
    /// belongs right behind it (see there).
    demoted_now: usize,
    first_demoted: u32,
    /// The entry count past which the sketch is regrown
    /// ([`FrequencySketch::sized_for`], kept here: checked on every insert).
    grow_at: u64,
    rng: u64,
    climber: Option<HillClimber>,
    /// Candidates recently refused admission.
    ghost: Ghost,
    /// Entries recently evicted from main space (a quarter as many slots
    /// as the shard holds entries, like [`Self::ghost`] at its widest).
    victims: Ghost,
    /// Whether the window's size follows the two ghosts ([`Self::adapt`]).
    adapts: bool,
    /// Whether entries have weights (a weigher): the window then adapts
    /// under two more rules ([`Self::adapt`], [`Self::contest_more`]).
    weighted: bool,
    /// The window's initial (and least) size, and its most.
    window_min: u64,
    window_cap: u64,
    /// The run of like moves of the window ([`Self::adapt`]): how many
    /// grows in a row (positive) or shrinks in a row (negative).
    run: i32,
    /// The window's size for the current [`Self::evict`]
    /// ([`Self::window_size_now`]), set when it starts.
    window_now: u64,
    /// Whether the last [`Self::admit_or_recall`] admitted through the
    /// ghost.
    recalled: bool,
    /// Whether both ghosts use [`LONG_GHOSTS_FACTOR`] times their width
    /// ([`LONG_GHOSTS_DIVISOR`]).
    long_ghosts: bool,
    /// Where recalled keys go ([`RecallTrials`]).
    trials: RecallTrials,
    /// Protected's limit for the current eviction
    /// ([`Self::protected_limit`]), set when [`Self::evict`] starts.
    protected_cap: u64,
    /// The weight protected's share ([`PROTECTED_PERCENT`] of main space)
    /// gives to probation ([`Self::move_protected`]): at most half the share,
    /// and counted only while the ghosts are long.
    protected_give: u64,
    /// Half of protected's share with the window at `window_max`, the most
    /// `protected_give` may be (kept by [`Self::limits_changed`]).
    protected_give_most: u64,
    /// Main space's victims lately (the low 32 bits) and of them those that
    /// had been demoted from protected ([`DEMOTED`], the high 32 bits), both
    /// halved at [`MAIN_EVICTION_MEMORY`]: the two kinds' shares of the
    /// victims' ghost, which scale [`Self::move_protected`]'s steps as
    /// ARC's. One word, so that counting a victim is an add and a compare.
    main_evictions: u64,
    /// Entries that left the window in this round of evictions (since the
    /// last insert) and entered probation without a contest, oldest first:
    /// only the newest of the leavers of one [`Self::evict`] contests at
    /// once, the others when the round needs more room ([`Self::contest_more`]).
    pending: Vec<u32>,
    /// The weight of the entry that last left the window at its end (for
    /// a contest): a weighted window at its size is short of it by up to
    /// that much after the leave ([`Self::brake_slack`]).
    window_leaver: u64,
    /// Evictions lately ([`Self::evict`] calls), and the entries found
    /// read at the window's eviction end (a second chance) and at
    /// probation's (a promotion) meanwhile, all three halved at
    /// [`END_MEMORY`]: an eviction looks at each end and finds one entry
    /// unread there, so the share of its looks that find an entry read is
    /// about reads / (reads + evictions) ([`Self::main_end_busier`]).
    end_rounds: u64,
    window_end_reads: u64,
    probation_end_reads: u64,
}

/// Fingerprints of the keys the admission filter refused lately (or that
/// left the window with no victim to contest, which is a refusal too: they
/// were not admitted), one per slot of a direct-mapped table (sized from
/// the sketch's entry count, so a weighted cache's ghost grows with it): a
/// refusal overwrites whatever its slot held, so a key is remembered for
/// about as many refusals as there are slots in use. A returning key is
/// found with one load and compare; a fingerprint collision (one in 2^32
/// per look-up) admits a key that was not refused, which costs a contest
/// skipped.
///
/// Its width follows [`RecallTrials`]: an eighth as many slots as the shard
/// holds entries while the keys it recalls fail their trials in protected,
/// a quarter while they pass. A fixed quarter helped recency most but lost
/// the issue's closest cell (scan/loop at 1k entries) in half the seeds,
/// and an eighth lost none (docs/benchmarks.md, "fifth pass"); gated by
/// the trials, the quarter leaves that cell as it was (1–2 of 24 hasher
/// seeds lost, before and after) and takes the recency trace at 10k
/// entries from 0.401 to 0.370. A half took it to 0.344 but lost 4–5 of
/// the 24 seeds (measured with one trial in 8 while trials fail;
/// docs/benchmarks.md, 2026-12-06, ninth session).
///
/// Both ghosts (refused keys and [`Adaptive::victims`]) use
/// [`LONG_GHOSTS_FACTOR`] times their width while the window is at least
/// [`LONG_GHOSTS_DIVISOR`]'th of the shard ([`Adaptive::lengthen_ghosts`]).
#[derive(Debug)]
struct Ghost {
    /// 0 is an empty slot (fingerprints are never 0): `wide` of them,
    /// [`LONG_GHOSTS_FACTOR`] times that once the ghost has been long.
    slots: Vec<u32>,
    /// The slots in use: `wide` while keys recalled from here pass their
    /// trials in protected ([`RecallTrials`]), `narrow` otherwise, and
    /// [`LONG_GHOSTS_FACTOR`] times that while `long`.
    active: usize,
    /// A quarter as many slots as entries.
    wide: usize,
    /// An eighth as many slots as entries.
    narrow: usize,
    /// Whether the width is multiplied by [`LONG_GHOSTS_FACTOR`].
    long: bool,
    /// Whether the last [`Self::widen`] asked for `wide`.
    is_wide: bool,
}

impl Ghost {
    /// A ghost for a shard of about `entries` entries.
    fn for_entries(entries: u64) -> Self {
        // At most MAX_ENTRIES / 4 slots: a shard's sketch (and so `entries`)
        // is never sized for more.
        let entries = entries.min(MAX_ENTRIES);
        let wide = usize::try_from((entries / 4).max(1)).unwrap_or(1);
        let narrow = usize::try_from((entries / 8).max(1)).unwrap_or(1);
        Self {
            slots: vec![0; wide],
            active: narrow,
            wide,
            narrow,
            long: false,
            is_wide: false,
        }
    }

    /// Uses every slot (`wide`) or an eighth of the entries' worth. The keys
    /// remembered in the other width are mostly lost (they sit in other
    /// slots); the width changes only when the trials' verdict does.
    fn widen(&mut self, wide: bool) {
        self.is_wide = wide;
        self.resize();
    }

    /// Multiplies the width in use by [`LONG_GHOSTS_FACTOR`] (`long`) or
    /// not, allocating the slots the first time it is long. The keys
    /// remembered in the other width are mostly lost, as at
    /// [`Self::widen`]; the length changes only when the window crosses
    /// [`LONG_GHOSTS_DIVISOR`].
    fn lengthen(&mut self, long: bool) {
        self.long = long;
        self.resize();
    }

    fn resize(&mut self) {
        let width = if self.is_wide { self.wide } else { self.narrow };
        self.active = if self.long {
            LONG_GHOSTS_FACTOR * width
        } else {
            width
        };
        if self.active > self.slots.len() {
            self.slots.resize(self.active, 0);
        }
    }

    /// The slot and fingerprint of `hash` (mixed, so neither depends on the
    /// bits that chose the shard or the table bucket).
    #[inline]
    fn place(&self, hash: u64) -> (usize, u32) {
        let m = (hash ^ (hash >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let m = m ^ (m >> 32);
        // Lemire's multiply-shift range reduction: no power-of-two size.
        let slot = ((u128::from(m) * self.active as u128) >> 64) as usize;
        // Bit 0 is left for [`Self::remember_tagged`]'s tag; never 0.
        (slot, (m as u32 & !1).max(2))
    }

    /// Remembers a refused key.
    #[inline]
    fn remember(&mut self, hash: u64) {
        let (slot, print) = self.place(hash);
        self.slots[slot] = print;
    }

    /// Whether `hash` was refused lately; forgets it if so.
    #[inline]
    fn recall(&mut self, hash: u64) -> bool {
        self.recall_at(self.place(hash))
    }

    /// [`Self::recall`] of a hash's [`Self::place`].
    #[inline]
    fn recall_at(&mut self, (slot, print): (usize, u32)) -> bool {
        let found = self.slots[slot] == print;
        if found {
            self.slots[slot] = 0;
        }
        found
    }

    /// Remembers a key with a one-bit tag ([`Adaptive::victims`]: whether
    /// it had been demoted from protected).
    #[inline]
    fn remember_tagged(&mut self, hash: u64, tag: bool) {
        let (slot, print) = self.place(hash);
        self.slots[slot] = print | u32::from(tag);
    }

    /// Whether `hash` was remembered lately, and with which tag; forgets it
    /// if so.
    #[inline]
    fn recall_tagged(&mut self, hash: u64) -> Option<bool> {
        let (slot, print) = self.place(hash);
        let found = self.slots[slot];
        if found & !1 != print {
            return None;
        }
        self.slots[slot] = 0;
        Some(found & 1 != 0)
    }

    /// [`Self::remember`] of a hash's [`Self::place`] (taken at the
    /// ghost's current width).
    #[inline]
    fn remember_at(&mut self, (slot, print): (usize, u32)) {
        self.slots[slot] = print;
    }
}

/// Where a key admitted through the ghost goes: probation, or protected.
///
/// A key asked for again soon after the filter refused it is evidence of
/// recency; whether it will be read again soon depends on the traffic. On
/// recency-driven traffic it mostly is, and such keys are best kept in
/// protected (as quick_cache puts a ghost hit in its hot queue), where
/// they last longer than in probation's short stay. On Zipf traffic they
/// are mostly the popular tail coming back by chance, and in protected
/// they push out entries read more often; on a scan that touches each key
/// twice they are never read again at all.
///
/// So recalled keys are placed in protected on trial, and the trials are
/// judged where protected judges all its entries, at its eviction end: a
/// trial passes if the entry was read since it was placed. Recalled keys go
/// to protected while trials pass at least as often as protected's other
/// entries are found read there; otherwise to probation, with one in
/// [`RecallTrials::EXPLORE`] still placed on trial so that a change of
/// traffic is seen. Both rates are kept recent by halving their counts.
/// This is the placement of [`Adaptive::evict`]'s contest, which is every
/// contest of an unweighted cache; the further contests of a weighted
/// round ([`Adaptive::contest_more`]) leave a recalled winner in probation.
///
/// Measured per trace (`cache_hit_ratio`'s traces, default shards, every
/// recalled key placed on trial; 2026-12-06): trials passed 0.44–0.58 of
/// the time on Zipf 0.8 and 1.0 against 0.84–0.87 for protected's other
/// entries, 0.49–0.50 against 0.90–0.93 on scan/loop, 0.00 against 0.84 on
/// the twice-touched scan at 10k entries; 0.81 against 0.50 on the recency
/// trace at 10k entries, 0.80–0.82 against 0.31–0.60 on shifting Zipf.
#[derive(Debug, Default)]
struct RecallTrials {
    /// Trials found read and unread at protected's eviction end.
    trial: (u32, u32),
    /// The same for protected's other entries.
    other: (u32, u32),
    /// Recalled keys placed in probation since the last trial.
    skipped: u32,
}

impl RecallTrials {
    /// While trials fail, one recalled key in this many is still placed on
    /// trial: noticing a change of traffic costs a sixteenth of the
    /// placement's cost where it does not pay, and takes `EXPLORE ×
    /// MIN_TRIALS` recalls. On the twice-touched scan at 10k entries (no
    /// trial passes) 8, 16 and 32 missed 0.637, 0.633 and 0.630 (0.627
    /// with recalled keys always in probation); on the recency trace they
    /// missed 0.367, 0.369 and 0.376 (docs/benchmarks.md, 2026-12-06).
    const EXPLORE: u32 = 16;
    /// The counts are halved when they reach these totals: a few hundred
    /// trials, and a few thousand looks at protected's other entries, which
    /// come far more often.
    const TRIAL_MEMORY: u32 = 256;
    const OTHER_MEMORY: u32 = 4096;
    /// Trials needed before they can pass: a first few read by chance must
    /// not switch the placement (and widen the ghost).
    const MIN_TRIALS: u32 = 16;

    /// Whether trials are read at least as often as protected's other
    /// entries.
    fn passing(&self) -> bool {
        let (read, unread) = self.trial;
        let (other_read, other_unread) = self.other;
        // read / (read + unread) >= other_read / (other_read + other_unread)
        read + unread >= Self::MIN_TRIALS
            && other_read + other_unread > 0
            && u64::from(read) * u64::from(other_read + other_unread)
                >= u64::from(other_read) * u64::from(read + unread)
    }

    /// Whether the next recalled key goes to protected, on trial.
    fn protect(&mut self) -> bool {
        if self.passing() || self.skipped == 0 {
            self.skipped = Self::EXPLORE - 1;
            return true;
        }
        self.skipped -= 1;
        false
    }

    /// A trial at protected's eviction end, found read since it was placed
    /// or not.
    fn record_trial(&mut self, read: bool) {
        Self::count(&mut self.trial, read, Self::TRIAL_MEMORY);
    }

    /// Another entry at protected's eviction end, found read since it was
    /// last looked at ([`Self::count`] with the outcome known).
    #[inline(always)]
    fn record_other_read(&mut self) {
        self.other.0 += 1;
        if self.other.0 + self.other.1 >= Self::OTHER_MEMORY {
            self.other = (self.other.0 / 2, self.other.1 / 2);
        }
    }

    /// Another entry at protected's eviction end, found unread.
    #[inline(always)]
    fn record_other_unread(&mut self) {
        self.other.1 += 1;
        if self.other.0 + self.other.1 >= Self::OTHER_MEMORY {
            self.other = (self.other.0 / 2, self.other.1 / 2);
        }
    }

    #[inline(always)]
    fn count(counts: &mut (u32, u32), read: bool, memory: u32) {
        counts.0 += u32::from(read);
        counts.1 += u32::from(!read);
        if counts.0 + counts.1 >= memory {
            *counts = (counts.0 / 2, counts.1 / 2);
        }
    }
}

/// Moves the window size in the direction that last improved the hit rate
/// (Caffeine's `hillClimber`, after the simulator study in the W-TinyLFU
/// follow-up "Adaptive Software Cache Management", Middleware 2018).
#[derive(Debug)]
struct HillClimber {
    hits: u64,
    misses: u64,
    sample_size: u64,
    previous_hit_rate: f64,
    step: f64,
    /// The window size as a float, so small steps accumulate.
    window: f64,
}

impl Adaptive {
    /// A policy for a shard that holds about `capacity` weight; `climb`
    /// enables adaptive window sizing. When the capacity counts entries
    /// (`weighted` false) the sketch is sized for it up front (up to
    /// [`INITIAL_SKETCH_ENTRIES`]), so filling the cache does not restart the
    /// counts; a weighted capacity says nothing about the entry count, so
    /// that sketch starts small and grows.
    pub(crate) fn new(capacity: u64, climb: bool, weighted: bool) -> Self {
        let sketch_entries = if weighted {
            MIN_ENTRIES
        } else {
            capacity.clamp(MIN_ENTRIES, INITIAL_SKETCH_ENTRIES)
        };
        let window = (capacity as f64 * INITIAL_WINDOW_PERCENT / 100.0).max(1.0);
        let sketch = FrequencySketch::new(sketch_entries);
        let ghost = Ghost::for_entries(capacity.min(sketch.sized_for()));
        let mut victims = Ghost::for_entries(capacity.min(sketch.sized_for()));
        victims.widen(true);
        let window_min = window as u64;
        let mut policy = Self {
            links: Links::default(),
            window: List::new(),
            probation: List::new(),
            protected: List::new(),
            window_weight: 0,
            probation_weight: 0,
            protected_weight: 0,
            capacity,
            window_max: window as u64,
            protected_max: Self::protected_share(capacity, window as u64),
            window_full_at: 0,
            protected_full_at: 0,
            grow_at: sketch.sized_for(),
            sketch,
            entries: 0,
            demoted_now: 0,
            first_demoted: 0,
            rng: 0x853c_49e6_748f_ea9b,
            ghost,
            victims,
            adapts: ADAPTIVE_WINDOW && !climb,
            weighted,
            window_min,
            window_cap: max_window(capacity).max(window_min),
            run: 0,
            window_now: window_min,
            pending: Vec::new(),
            window_leaver: 0,
            end_rounds: 0,
            window_end_reads: 0,
            probation_end_reads: 0,
            protected_cap: 0,
            protected_give: 0,
            protected_give_most: 0,
            main_evictions: 0,
            recalled: false,
            long_ghosts: false,
            trials: RecallTrials::default(),
            climber: climb.then(|| HillClimber {
                hits: 0,
                misses: 0,
                sample_size: capacity.saturating_mul(10).max(100),
                previous_hit_rate: 0.0,
                step: -(capacity as f64) * STEP_PERCENT / 100.0,
                window,
            }),
        };
        policy.limits_changed();
        policy
    }

    /// Recomputes [`Self::window_full_at`] and [`Self::protected_full_at`]
    /// after `window_max`, `window_min` or `protected_max` changed.
    fn limits_changed(&mut self) {
        // max_window(held) = held - ceil(held / D) reaches `window_max`
        // from held = window_max + ceil(window_max / (D - 1)).
        self.window_full_at = if self.window_max <= self.window_min {
            0
        } else {
            self.window_max
                .saturating_add(self.window_max.div_ceil(WINDOW_MAX_DIVISOR - 1))
        };
        self.protected_full_at = protected_full_at(self.protected_max);
        self.protected_give_most = Self::protected_share(self.capacity, self.window_max) / 2;
    }

    fn protected_share(capacity: u64, window_max: u64) -> u64 {
        // In u128: a capacity near u64::MAX (no bound) times the percentage
        // overflows u64; the result is at most the main space, so it fits.
        let main = u128::from(capacity.saturating_sub(window_max));
        u64::try_from(main * u128::from(PROTECTED_PERCENT) / 100).unwrap_or(u64::MAX)
    }

    /// This policy with the window fixed at its initial size (the
    /// textbook W-TinyLFU that the differential tests compare against).
    #[cfg(test)]
    fn fixed_window(mut self) -> Self {
        self.adapts = false;
        self
    }

    #[cfg(test)]
    fn main_weight(&self) -> u64 {
        self.probation_weight + self.protected_weight
    }

    fn meta(&self, id: u32) -> Meta {
        *self.links.meta(id)
    }

    #[inline]
    fn push(&mut self, id: u32, segment: Segment) {
        let meta = self.links.meta_mut(id);
        meta.segment = segment;
        let weight = u64::from(meta.weight);
        match segment {
            Segment::Window => {
                self.links.push_front(&mut self.window, id);
                self.window_weight += weight;
            }
            Segment::Probation => {
                self.links.push_front(&mut self.probation, id);
                self.probation_weight += weight;
            }
            Segment::Protected => {
                self.links.push_front(&mut self.protected, id);
                self.protected_weight += weight;
            }
        }
    }

    #[inline]
    fn unlink(&mut self, id: u32) {
        let segment = self.links.meta(id).segment;
        self.unlink_from(segment, id);
    }

    /// [`Self::unlink`] for an id known to be on `segment`: with a constant
    /// segment (the eviction paths) the dispatch on it compiles away.
    #[inline]
    fn unlink_from(&mut self, segment: Segment, id: u32) {
        let weight = u64::from(self.links.meta(id).weight);
        match segment {
            Segment::Window => {
                self.links.unlink(&mut self.window, id);
                self.window_weight -= weight;
            }
            Segment::Probation => {
                self.links.unlink(&mut self.probation, id);
                self.probation_weight -= weight;
            }
            Segment::Protected => {
                self.links.unlink(&mut self.protected, id);
                self.protected_weight -= weight;
            }
        }
    }

    /// Takes `id`'s hits into its resident count; returns whether it had
    /// any. The sketch counts them towards its sample now (so it ages at
    /// the same pace as if each hit had been recorded) but receives them
    /// only when the entry leaves: a hot entry cycling through the CLOCK
    /// costs a few stores per lap, not a sketch update.
    #[inline]
    fn take_hits(&mut self, id: u32, hits: &mut impl Hits) -> bool {
        let n = hits.take(id);
        if n == 0 {
            return false;
        }
        let meta = self.links.meta_mut(id);
        meta.resident = meta.resident.saturating_add(n).min(MAX_HITS);
        if self.sketch.count(u64::from(n)) {
            self.age(hits);
        }
        true
    }

    /// `id` leaves: its resident hits and any it has not had taken go into
    /// the sketch, so the key's popularity is known if it comes back.
    fn depart(&mut self, id: u32, hits: &mut impl Hits) {
        let n = hits.take(id);
        let resident = self.meta(id).resident;
        let total = resident.saturating_add(n).min(MAX_HITS);
        if total > 0 && self.sketch.fold(hits.hash(id), total, resident) {
            self.age(hits);
        }
    }

    /// [`Self::depart`] for an entry whose hits have just been taken (so
    /// only its resident count is left to fold).
    fn depart_taken(&mut self, id: u32, hits: &mut impl Hits) {
        let resident = self.meta(id).resident;
        if resident > 0 && self.sketch.fold(hits.hash(id), resident, resident) {
            self.age(hits);
        }
    }

    /// The sketch was halved: halve the counts that are not in it yet.
    #[cold]
    fn age(&mut self, hits: &mut impl Hits) {
        hits.halve_all();
        self.links.for_each_meta_mut(|m| {
            m.resident >>= 1;
            let counters = m.estimate - (m.flags & DOOR);
            m.estimate = counters >> 1;
            m.flags &= !DOOR;
        });
    }

    /// The popularity of `id` for the admission contest: the sketch's
    /// estimate (as of its insert, aged since) plus the hits not folded into
    /// the sketch yet, capped where the sketch saturates (15 and the
    /// doorkeeper's one).
    #[inline]
    fn frequency(&self, id: u32) -> u8 {
        let Meta {
            resident, estimate, ..
        } = self.meta(id);
        (estimate + resident).min(MAX_HITS + 1)
    }

    /// The window's size for the eviction starting: its learned size, and
    /// with the adaptation at most [`max_window`] of what the shard
    /// holds. A shard holds what the global bound leaves it, which can be
    /// well below its nominal capacity: a window grown towards 80 % of that
    /// capacity then never reached its size, main space gave up every
    /// eviction unopposed until it was empty, and no admission filter was
    /// left (`regression_a_grown_window_in_a_shard_below_its_share_...`).
    #[inline]
    fn window_size_now(&self) -> u64 {
        if !self.adapts {
            return self.window_max;
        }
        let held = self.window_weight + self.probation_weight + self.protected_weight;
        if held >= self.window_full_at {
            return self.window_max;
        }
        let most = max_window(held).max(self.window_min);
        self.window_max.min(most)
    }

    /// Sets protected's limit for an eviction from the main space held as
    /// it starts (see [`Self::protected_limit`]).
    #[inline]
    fn hold_main(&mut self) {
        let held = (self.window_weight + self.probation_weight + self.protected_weight)
            .saturating_sub(self.window_weight.min(self.window_now));
        // At least two units: `held` counts the window's overflow, whose
        // newest (the candidate) needs one older entry to meet.
        self.protected_cap = if held >= self.protected_full_at {
            self.protected_max
        } else {
            self.protected_max.min(protected_of_held(held))
        };
    }

    /// Protected's limit: [`PROTECTED_PERCENT`] of the nominal main space,
    /// and at most 19/20 of the main space this shard actually holds
    /// ([`PROBATION_OF_HELD_DIVISOR`]; probation keeps at least 2 units).
    /// A shard holds what the global bound leaves it, which can be less
    /// than its nominal share (shards fill unevenly, and
    /// each insert then evicts in its own shard, so the sizes stay as they
    /// filled); with the nominal limit alone, protected could take all of
    /// a smaller shard's main space, probation ran dry, every newcomer was
    /// refused unopposed, and the shard kept its protected entries however
    /// stale. On a Zipf trace whose hot keys change every 100k requests,
    /// one shard of four then missed 94 % of its requests after the first
    /// change: the cache missed 0.68–0.70 instead of 0.60 in 4 of 12
    /// hasher seeds (`shifting_zipf_trace` at 1k entries); with this limit
    /// 0.606–0.611 in all 12 (one shard: 0.603).
    #[inline(always)]
    fn protected_limit(&self) -> u64 {
        self.protected_cap
    }

    /// Demotes protected's overflow to probation, giving entries read since
    /// they were last looked at a second chance at protected's front. The
    /// check is inline: most evictions find no overflow, and a call that
    /// returns at once cost about 15 instructions of prologue and epilogue.
    #[inline(always)]
    fn demote_protected_overflow(&mut self, hits: &mut impl Hits) {
        if self.protected_weight > self.protected_limit() {
            self.demote_protected_overflow_now(hits);
        }
    }

    #[inline(never)]
    fn demote_protected_overflow_now(&mut self, hits: &mut impl Hits) {
        while self.protected_weight > self.protected_limit() {
            // Second chances until the back is an entry not read since it
            // was last looked at (they move no weight: the loop's test
            // need not be repeated meanwhile). The entries read are passed
            // over from the back and then moved to the front together, in
            // the order that moving each in turn would give.
            let Some(back) = self.protected.back() else {
                return;
            };
            let mut id = back;
            // The front-most of the entries read so far (the run's first).
            let mut read_run = None;
            loop {
                let trial = self.links.meta(id).flags & TRIAL != 0;
                let read = self.take_hits(id, hits);
                if trial {
                    self.judge_trial(id, read);
                }
                if !read {
                    if !trial {
                        self.trials.record_other_unread();
                    }
                    break;
                }
                if !trial {
                    self.trials.record_other_read();
                }
                read_run = Some(id);
                id = match self.links.prev(id) {
                    Some(prev) => prev,
                    None => {
                        // Every entry was read: all of them moved to the
                        // front in turn leave the order as it was, and the
                        // back (its hits just taken) is looked at again.
                        read_run = None;
                        back
                    }
                };
            }
            if let Some(first) = read_run {
                self.links
                    .move_back_run_to_front(&mut self.protected, first);
            }
            // `unlink_from` and `push` with one look at the node.
            let meta = self.links.meta_mut(id);
            meta.segment = Segment::Probation;
            meta.flags |= DEMOTED;
            let weight = u64::from(meta.weight);
            self.links.unlink(&mut self.protected, id);
            self.protected_weight -= weight;
            self.links.push_front(&mut self.probation, id);
            self.probation_weight += weight;
            if self.demoted_now == 0 {
                self.first_demoted = id;
            }
            self.demoted_now += 1;
        }
    }

    /// A recalled key on trial reached protected's eviction end: `read`
    /// since it was placed or not ([`RecallTrials`]).
    #[cold]
    fn judge_trial(&mut self, id: u32, read: bool) {
        self.links.meta_mut(id).flags &= !TRIAL;
        self.trials.record_trial(read);
        self.ghost.widen(self.trials.passing());
    }

    /// Places a key admitted through the ghost in protected, on trial
    /// ([`RecallTrials`]).
    #[cold]
    fn protect_recalled(&mut self, id: u32, hits: &mut impl Hits) {
        self.links.meta_mut(id).flags |= TRIAL;
        self.push(id, Segment::Protected);
        self.demote_protected_overflow(hits);
    }

    /// Promotes the entries at probation's eviction end that were read since
    /// they got there (the lazy form of "a hit in probation promotes"), so
    /// that the tail is an entry nobody has read.
    #[inline(always)]
    fn promote_probation_tail(&mut self, hits: &mut impl Hits) {
        while let Some(id) = self.probation.back() {
            if !self.take_hits(id, hits) {
                break;
            }
            self.probation_end_reads += 1;
            self.unlink_from(Segment::Probation, id);
            self.push(id, Segment::Protected);
            self.demote_protected_overflow(hits);
        }
    }

    /// Inlined into the shard's insert, as [`Self::evict`] into its
    /// eviction (see there).
    #[inline(always)]
    pub(crate) fn on_insert(&mut self, id: u32, hash: u64, weight: u32, hits: &mut impl Hits) {
        // A new round of evictions; the ids of the last one may be reused.
        self.pending.clear();
        self.entries += 1;
        if self.entries > self.grow_at && self.entries <= MAX_ENTRIES {
            self.regrow(hits);
        }
        let (estimate, halved) = self.sketch.record(hash);
        if halved {
            self.age(hits);
        }
        let returned = self.adapts && self.adapt(hash);
        // The node is written once, after the sketch (whose halving ages
        // every other node's data).
        self.links.push_front_with(
            &mut self.window,
            id,
            Meta {
                segment: Segment::Window,
                resident: 0,
                estimate,
                // After a halving the estimate was read from the aged
                // sketch, whose doorkeeper is empty.
                flags: if halved { 0 } else { DOOR } | if returned { RETURNED } else { 0 },
                weight,
            },
        );
        self.window_weight += u64::from(weight);
    }

    /// The shard holds more entries than its sketch is sized for (a
    /// weighted shard's sketch starts small; an unweighted one is sized for
    /// the shard's share, which the global bound lets it pass): a larger
    /// sketch, into which every resident's estimate is carried, so that the
    /// residents keep the popularity they have earned. (Until 2026-12-06
    /// the new sketch started empty and every resident's estimate was
    /// zeroed, so right after a regrowth any newcomer seen twice outranked
    /// the shard's most popular entries.) The ghosts start afresh: their
    /// fingerprints' places depend on their size.
    #[cold]
    #[inline(never)]
    fn regrow(&mut self, hits: &mut impl Hits) {
        let mut sketch =
            FrequencySketch::for_shard_holding(self.entries.next_power_of_two(), self.entries);
        for list in [&self.window, &self.probation, &self.protected] {
            let mut next = list.back();
            while let Some(id) = next {
                let meta = self.links.meta(id);
                if meta.estimate > 0 {
                    sketch.carry(hits.hash(id), meta.estimate);
                }
                next = self.links.prev(id);
            }
        }
        self.sketch = sketch;
        // The doorkeeper's one is in each carried estimate now (the carry
        // sets the doorkeeper first), whether or not it was before.
        self.links.for_each_meta_mut(|m| {
            if m.estimate > 0 {
                m.flags |= DOOR;
            }
        });
        self.grow_at = self.sketch.sized_for();
        self.ghost = Ghost::for_entries(self.capacity.min(self.grow_at));
        self.ghost.widen(self.trials.passing());
        self.victims = Ghost::for_entries(self.capacity.min(self.grow_at));
        self.victims.widen(true);
        self.lengthen_ghosts();
    }

    /// Moves the window by one (average) entry, doubled in runs of like
    /// returns ([`MOMENTUM_RUN`], [`Self::step`]), on the evidence of a
    /// missed key's return, as ARC moves its target (Megiddo & Modha, "ARC:
    /// A Self-Tuning, Low Overhead Replacement Cache", USENIX FAST 2003): a
    /// key refused at the window's end lately ([`Self::ghost`]) would have
    /// been a hit with a larger window, so the window grows; one evicted
    /// from main space lately ([`Self::victims`]) would have been a hit
    /// with a larger main space, so the window shrinks. Between its initial
    /// 1 % and [`max_window`]. A window below its size grows as new keys
    /// arrive, main space giving the room ([`Self::contest_more`]); one
    /// above it shrinks at the next evictions, its overflow contesting.
    ///
    /// Caffeine's hill climber, which samples the hit rate instead, moved
    /// the window too slowly at its sample period and too noisily at
    /// shorter ones to gain on recency traces without losing the issue's
    /// cells (docs/benchmarks.md, 2026-12-06, ninth session). The ghosts'
    /// returns are a signal per miss. Measured on `cache_hit_ratio`
    /// (docs/benchmarks.md, 2026-12-06, twelfth session): the recency trace
    /// at 10k entries 0.369 → 0.338, at 20k 0.330 → 0.239, Zipf with a
    /// twice-touched scan at 10k 0.633 → 0.380; the issue's cells within
    /// 0.002 of before; but a Zipf whose hot set shifts every 100k
    /// requests, at 1k entries, 0.599 → 0.615 (there a larger window is
    /// worse at every fixed size, yet refused keys return more often than
    /// evicted ones).
    ///
    /// With weights the ghosts still count keys, so a step is of the
    /// shard's average entry weight (what it held over its entries before
    /// this one; exactly 1 without weights), not the returning key's:
    /// refused keys are heavier than evicted ones (a heavy candidate must
    /// outweigh every victim it would displace), and steps of their weight
    /// pushed the window up on Zipf traffic. And a weighted window's size
    /// grows only while it is at most [`Self::brake_slack`] ahead of the
    /// window itself (one average entry, or in a shard of
    /// [`PROTECTED_MOVE_ENTRIES`] entries or more the weight of the entry
    /// that last left the window if that is more), and then to at most one
    /// entry beyond that, however long the run: a return says a larger
    /// window than the one the shard holds would have kept the key, not one
    /// larger than a size it never reached. Without that brake small
    /// weighted shards grew their windows on Zipf and scan/loop traffic (about 1,000 average entries of 1–100
    /// units: Zipf 0.9 0.533 → 0.545, scan/loop 0.666 → 0.691).
    /// Measured with weights of 1–100 (`cache_weighted_traces`,
    /// docs/benchmarks.md, 2026-12-06, thirteenth session): recency at about
    /// 20,000 entries 0.362 → 0.270–0.284, twice-touched scan 0.614 →
    /// 0.373; Zipf and scan/loop within 0.003, but Zipf 0.9 with popular
    /// keys heavy at 20,000 units 0.548 → 0.556 (`cache_more_traces`).
    ///
    /// In an unweighted shard whose main space's margin is the busier
    /// ([`Self::main_end_busier`]) a refused key's return counts as no
    /// return: the window stays, and the key must win its contest.
    ///
    /// Returns whether the key was refused lately: its fingerprint is
    /// forgotten here, and the entry carries [`RETURNED`] instead.
    #[inline]
    fn adapt(&mut self, hash: u64) -> bool {
        let grow = if self.ghost.recall(hash) {
            if !self.weighted && self.main_end_busier() {
                return false;
            }
            true
        } else if let Some(demoted) = self.victims.recall_tagged(hash) {
            if self.moves_protected() {
                self.move_protected(demoted);
            }
            false
        } else {
            return false;
        };
        self.move_window(grow);
        grow
    }

    /// Moves protected's share of main space on a victim's return, as ARC
    /// moves its target between its recency and frequency lists (Megiddo &
    /// Modha, USENIX FAST 2003): a key evicted from probation before any
    /// read promoted it would have been kept by a larger probation (ARC's
    /// hit in B1), so protected gives probation one (average) entry; one
    /// that had been demoted from protected ([`DEMOTED`]) would have been
    /// kept by a larger protected (a hit in B2), so protected takes one
    /// back. Each step is scaled as ARC's, by the other kind's share of
    /// the victims lately over this kind's, at least one entry: the returns
    /// are weighed per victim of the kind, not in total. Between half of
    /// protected's share ([`PROTECTED_PERCENT`] of main space) and all of
    /// it.
    ///
    /// Protected is where popularity that has moved on lingers: its unread
    /// entries leave only as promotions push them out, and then meet
    /// newcomers in probation with the estimates they earned before. On
    /// the shifting Zipf with weights (docs/benchmarks.md, 2026-12-07,
    /// twenty-second session; 8 shards of about 625 entries, the sketch
    /// halving about once in the whole run) protected held 79 % of the
    /// shard through every phase and the miss ratio took 80–100k requests
    /// to settle after each shift, where moka (TinyLFU before one LRU list)
    /// settled in 40–60k. Without the floor, the twice-touched scan at
    /// about 1,000 weighted entries went 0.696 → 0.703 (quick_cache 0.702):
    /// the Zipf keys its scan evicts from probation came back and took
    /// protected's room from the popular ones.
    ///
    /// Only while the ghosts are long ([`LONG_GHOSTS_DIVISOR`]: an
    /// unweighted shard whose window holds an eighth of it or more, the
    /// adaptation's own verdict that popularity decays); otherwise
    /// protected keeps its share and what it gave is set aside
    /// ([`Self::protected_now`]). In every unweighted shard it measured as
    /// well on hit ratio (12 hasher seeds: shifting Zipf @10k 0.4168 →
    /// 0.4086, recency @3k in `cache_capacity_sweep` 0.547 → 0.542), but on
    /// the throughput workload, whose windows stay small, protected gave
    /// way with no gain and its extra demotions cost 2 instructions a
    /// request (258.04 → 261.39; 259.20 gated). With weights it took the
    /// shifting Zipf at 5,000 average entries from 0.484 to 0.461 (moka
    /// 0.471), but on Zipf 0.9 with the popular keys heavy or light at
    /// 20,000 units (shards of 30–200 entries, a step of the average weight
    /// 3–8 % of the shard) protected's share walked on noise and missed
    /// 0.559 → 0.562 and 0.653 → 0.656 (three runs each; `cache_more_traces`).
    /// Gated, over 12 hasher seeds: shifting Zipf @1k 0.5825 → 0.5802 and
    /// @10k 0.4168 → 0.4119, recency @10k 0.2891 → 0.2879, the issue's cells
    /// within 0.0002; recency @3k 0.547 → 0.543 and @5k 0.440 → 0.432
    /// (`cache_capacity_sweep`).
    ///
    /// A weighted shard moves the share too once it holds
    /// [`PROTECTED_MOVE_ENTRIES`] entries, where the returns are a signal
    /// rather than noise (the argument is there): `cache_weighted_traces`,
    /// three runs each, shifting Zipf at 5,000 average entries (shards of
    /// about 625) 0.484–0.485 → 0.462 and at 20,000 0.367–0.368 →
    /// 0.346–0.349 (moka 0.470–0.471 / 0.356), recency at 5,000 0.447–0.453
    /// → 0.435–0.436 (quick_cache 0.429); the shards of 30–200 entries of
    /// `cache_more_traces` keep their share (heavy and light popular at
    /// 20,000 units 0.558–0.560 → 0.558–0.559 and 0.652–0.653 → 0.653).
    #[cold]
    fn move_protected(&mut self, demoted: bool) {
        // A return that finds the share at its bound moves nothing.
        if demoted && self.protected_give == 0
            || !demoted && self.protected_give >= self.protected_give_most
        {
            return;
        }
        let entry = self.entry_step();
        let total = self.main_evictions & u64::from(u32::MAX);
        let once = self.main_evictions >> 32;
        let (never, once) = (total.saturating_sub(once).max(1), once.max(1));
        let share = Self::protected_share(self.capacity, self.window_max);
        let give = if demoted {
            self.protected_give
                .saturating_sub(entry.saturating_mul((never / once).max(1)))
        } else {
            self.protected_give
                .saturating_add(entry.saturating_mul((once / never).max(1)))
                .min(share / 2)
        };
        if give != self.protected_give {
            self.protected_give = give;
            self.protected_max = share - give.min(share / 2);
            self.limits_changed();
        }
    }

    /// Protected's limit with the window at `window_max`: its share of
    /// main space, less what it gives to probation
    /// ([`Self::move_protected`]) while the ghosts are long, or always with weights.
    fn protected_now(&self, window_max: u64) -> u64 {
        let share = Self::protected_share(self.capacity, window_max);
        // A weighted shard's give is zero until it has held
        // PROTECTED_MOVE_ENTRIES entries, and is kept as the shard empties
        // (by removals or `clear`), as the window's size is.
        if self.long_ghosts || self.weighted {
            share - self.protected_give.min(share / 2)
        } else {
            share
        }
    }

    /// [`Self::adapt`]'s move of the window: grow after a refused key's
    /// return, shrink after an evicted one's.
    #[inline]
    fn move_window(&mut self, grow: bool) {
        self.run = match (grow, self.run) {
            (true, run) if run > 0 => run.saturating_add(1),
            (true, _) => 1,
            (false, run) if run < 0 => run.saturating_sub(1),
            (false, _) => -1,
        };
        let entry = self.entry_step();
        let step = self.step(entry);
        let max = if grow {
            if self.weighted {
                // At most one entry beyond the slack ahead of the window
                // itself, however long the run (two entries in a small
                // shard).
                let slack = self.brake_slack(entry);
                if self.window_max > self.window_weight + slack {
                    return;
                }
                (self.window_max + step)
                    .min(self.window_weight + slack + entry)
                    .min(self.window_cap)
            } else {
                (self.window_max + step).min(self.window_cap)
            }
        } else {
            self.window_max.saturating_sub(step).max(self.window_min)
        };
        if max != self.window_max {
            self.window_max = max;
            // The ghosts' length first: it switches protected's give.
            if self.long_ghosts != self.window_is_long() {
                self.lengthen_ghosts();
            }
            self.protected_max = self.protected_now(max);
            self.limits_changed();
        }
    }

    /// How far below its size a weighted window may be and still count as
    /// at its size for [`Self::move_window`]'s brake: one average `entry`,
    /// and in a shard of [`PROTECTED_MOVE_ENTRIES`] entries or more at
    /// least the weight of the entry that last left the window. Entries
    /// leave the window whole, so a window that holds its size is short of
    /// it by anything up to the leaver's weight after each leave; with one
    /// average entry only, the brake took a window at its size for one
    /// that never reached it and dropped the grow. On weighted recency at
    /// 5,000 average entries (entries of 1–100 units, shards of about 625)
    /// it dropped about 4,000 of the 6,800 grows per 100k requests, against
    /// about 5,300 shrinks, so the window stayed within 1–2 % of the shard
    /// where the unweighted one settles near 60 % (docs/benchmarks.md,
    /// 2026-12-07, twenty-third session). Below [`PROTECTED_MOVE_ENTRIES`]
    /// one step of the average weight is a few percent of the shard and
    /// its walk is noise (the argument there), and the wider slack there
    /// cost the twice-touched scan at 1,000 average entries (shards of
    /// about 125) 0.696 → 0.701 (`cache_weighted_traces`).
    #[inline]
    fn brake_slack(&self, entry: u64) -> u64 {
        if self.entries >= PROTECTED_MOVE_ENTRIES {
            entry.max(self.window_leaver)
        } else {
            entry
        }
    }

    /// Whether victims' returns move protected's share
    /// ([`Self::move_protected`]): in an unweighted shard while its ghosts
    /// are long, in a weighted one while it holds at least
    /// [`PROTECTED_MOVE_ENTRIES`] entries. (What a weighted shard's share
    /// gave stays given when the shard holds fewer: [`Self::protected_now`].)
    #[inline]
    fn moves_protected(&self) -> bool {
        self.long_ghosts || self.weighted && self.entries >= PROTECTED_MOVE_ENTRIES
    }

    /// Whether the window holds at least [`LONG_GHOSTS_DIVISOR`]'th of
    /// the shard, without weights: a weighted window moves under its own
    /// brake ([`Self::move_window`]), and there the long ghosts cost the
    /// twice-touched scan at 5,000 units 0.425 → 0.433
    /// (`cache_weighted_traces`, two runs each).
    #[inline]
    fn window_is_long(&self) -> bool {
        !self.weighted && self.window_max >= self.capacity / LONG_GHOSTS_DIVISOR
    }

    /// Sets both ghosts' length from the window's size
    /// ([`LONG_GHOSTS_DIVISOR`]).
    #[cold]
    fn lengthen_ghosts(&mut self) {
        self.long_ghosts = self.window_is_long();
        self.ghost.lengthen(self.long_ghosts);
        self.victims.lengthen(self.long_ghosts);
    }

    /// One entry, for [`Self::adapt`]: with weights, of the shard's
    /// average weight (what it held before the entry being inserted,
    /// which `entries` already counts).
    #[inline]
    fn entry_step(&self) -> u64 {
        if !self.weighted {
            return 1;
        }
        let held = self.window_weight + self.probation_weight + self.protected_weight;
        (held / self.entries.saturating_sub(1).max(1)).max(1)
    }

    /// One step of [`Self::adapt`]: one `entry` ([`Self::entry_step`]),
    /// doubled every [`MOMENTUM_RUN`] moves of one kind in a row and reset
    /// by a move the other way, at most an eighth of the window and
    /// [`MAX_STEP_ENTRIES`] entries.
    #[inline]
    fn step(&self, entry: u64) -> u64 {
        // Doubled every MOMENTUM_RUN moves of one kind in a row (the run
        // counts this move), at most an eighth of the window (and at least
        // one entry) and MAX_STEP_ENTRIES entries.
        let doublings = (self.run.unsigned_abs() / MOMENTUM_RUN).min(32);
        entry
            .saturating_mul(1 << doublings)
            .min((self.window_max / 8).max(entry))
            .min(entry.saturating_mul(MAX_STEP_ENTRIES))
    }

    /// Counts an eviction for [`Self::main_end_busier`].
    #[inline(always)]
    fn count_round(&mut self) {
        self.end_rounds += 1;
        if self.end_rounds >= END_MEMORY {
            self.halve_ends();
        }
    }

    #[cold]
    fn halve_ends(&mut self) {
        self.end_rounds /= 2;
        self.window_end_reads /= 2;
        self.probation_end_reads /= 2;
    }

    /// Whether main space's margin (probation's eviction end) is found
    /// read in more than a quarter of its looks lately, and more often than
    /// the window's margin: then a refused key's return neither grows the
    /// window nor marks the key for admission ([`Self::adapt`]).
    ///
    /// The ghosts price what a larger window would gain (a refused key that
    /// came back would have been a hit), not what main space would lose
    /// for it: the room comes from probation's end, which in ARC's setting
    /// (Megiddo & Modha, USENIX FAST 2003) is as cold as the returns say.
    /// On a loop slightly longer than the cache it is not: a Zipf sample of
    /// 30,000 requests replayed, at 10,000 entries, refused keys come back
    /// a pass later while most entries reaching probation's end have been
    /// read during their stay (about 0.6 of the looks, the window's end
    /// about 0.05), so every step of the window and every recalled key
    /// took a key the next pass reads, the displaced keys came back in
    /// turn, and the shard converged in 500k requests instead of 100k
    /// (docs/benchmarks.md, 2026-12-07, twenty-sixth session). Probation's
    /// end on the twelve cells of `benches/scripts/cells.sh` is read in
    /// 0.01–0.09 of its looks; where it is busy on recency, the window's end is
    /// busier still. Both tests: the quarter alone held back the window's
    /// growth on recency @10k while the cache filled (0.2880 → 0.2893);
    /// the comparison alone (probation's end read twice as often as the
    /// window's) held it back after each shift of the shifting Zipf
    /// (@1k 0.5811 → 0.6098, @10k 0.4116 → 0.4461).
    ///
    /// Unweighted shards only ([`Self::adapt`]): a weighted window moves
    /// under its own brake ([`Self::brake_slack`]), and there the gate took
    /// weighted recency at 5,000 average entries from 0.428 to 0.430–0.431
    /// (quick_cache 0.429; `cache_weighted_traces`).
    ///
    /// With an eviction's one unread look at each end counted as the
    /// eviction ([`Self::end_rounds`]), probation's share of read looks
    /// r / (r + e) is above a quarter when 3 r > e, and above the window's
    /// w / (w + e) when r > w: an add per eviction and per read found, where
    /// a count of every look at both ends cost the throughput workload 1.9
    /// instructions a request (248.28 → 250.13; 248.22 so).
    #[inline]
    fn main_end_busier(&self) -> bool {
        let read = self.probation_end_reads;
        read.saturating_mul(3) > self.end_rounds && read > self.window_end_reads
    }

    /// A main-space entry leaves for capacity: remembered with whether it
    /// had been demoted from protected, and counted by that.
    #[inline]
    fn evicted_from_main(&mut self, id: u32, hash: u64) {
        if self.adapts {
            let demoted = self.links.meta(id).flags & DEMOTED != 0;
            self.victims.remember_tagged(hash, demoted);
            self.main_evictions += 1 | u64::from(demoted) << 32;
            if self.main_evictions as u32 >= MAIN_EVICTION_MEMORY {
                // Both halves at once (the low half's bit 0 shifts out of
                // the high half's reach: it is masked off first).
                self.main_evictions = (self.main_evictions & !(1 | 1 << 32)) >> 1;
            }
        }
    }

    /// Whether the hill climber runs (then every read must reach
    /// [`Self::on_access`] or [`Self::on_miss`] under the exclusive lock).
    pub(crate) fn climbs(&self) -> bool {
        self.climber.is_some()
    }

    /// A read that found the entry, under the exclusive lock (the shard has
    /// bumped its hit count; only the hill climber needs telling).
    pub(crate) fn on_access(&mut self) {
        if let Some(c) = &mut self.climber {
            c.hits += 1;
        }
        self.climb();
    }

    /// A read of `hash` that found nothing.
    pub(crate) fn on_miss(&mut self, _hash: u64) {
        if let Some(c) = &mut self.climber {
            c.misses += 1;
        }
        self.climb();
    }

    /// A write over an existing entry, possibly with a new weight (the shard
    /// has bumped its hit count, as for a read).
    ///
    /// Inline, with the move out of line: most updates keep the weight
    /// (every update of an unweighted cache), and as a call (through the
    /// GOT) the compare cost about 10 instructions more per update; on the
    /// throughput workload 250.5 → 249.6 instructions a request
    /// (docs/benchmarks.md, 2026-12-07, twenty-fourth session).
    #[inline]
    pub(crate) fn on_update(&mut self, id: u32, weight: u32) {
        if weight != self.links.meta(id).weight {
            self.reweigh(id, weight);
        }
    }

    /// [`Self::on_update`] with a new weight.
    #[inline(never)]
    fn reweigh(&mut self, id: u32, weight: u32) {
        let segment = self.links.meta(id).segment;
        self.pending.clear();
        self.unlink(id);
        self.links.meta_mut(id).weight = weight;
        self.push(id, segment);
    }

    pub(crate) fn on_remove(&mut self, id: u32, hits: &mut impl Hits) {
        self.pending.clear();
        self.depart(id, hits);
        self.unlink(id);
        self.entries -= 1;
    }

    /// Whether `candidate` takes `victim`'s place: at once if it was
    /// refused lately ([`Ghost`]), else by the sketch's contest.
    /// `older` is how many entries at probation's eviction end may be
    /// displaced (those not demoted during this eviction), `victim` the
    /// last of them.
    /// `place` is the candidate's [`Ghost::place`], which a refused
    /// candidate's caller then remembers ([`Ghost::remember_at`]).
    #[inline(always)]
    fn admit_or_recall(
        &mut self,
        candidate: u32,
        victim: u32,
        older: usize,
        place: (usize, u32),
    ) -> bool {
        self.recalled =
            self.links.meta(candidate).flags & RETURNED != 0 || self.ghost.recall_at(place);
        self.recalled || self.admit(candidate, victim, older)
    }

    /// The sketch's contest. A candidate heavier than the victim would
    /// displace more than that one entry to make room, so it is weighed
    /// against all the entries its weight displaces from probation's end
    /// ([`Self::aggregate_victims`]): the size-aware admission of Einziger,
    /// Eytan, Friedman & Manes, "Lightweight Robust Size Aware Cache
    /// Management", ACM Transactions on Storage 18(3), 2022 (their
    /// "aggregated victims", as in moka). With entries of one weight it is
    /// textbook W-TinyLFU's one-to-one contest.
    #[inline]
    fn admit(&mut self, candidate: u32, victim: u32, older: usize) -> bool {
        let c = self.frequency(candidate);
        let v = self.frequency(victim);
        // Most candidates lose to the first victim alone, and then the
        // weights need no look.
        if c > v
            && (self.links.meta(victim).weight >= self.links.meta(candidate).weight
                || u32::from(c) > self.aggregate_victims(candidate, victim, older))
        {
            return true;
        }
        if c >= RANDOM_ADMIT_FREQUENCY {
            // xorshift64: deterministic, so the policy stays reproducible.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            return self.rng & 127 == 0;
        }
        false
    }

    /// The summed popularity of the entries at probation's eviction end,
    /// from `victim` on, that `candidate` would displace: as many as it
    /// takes to match the candidate's weight, at most `older` of them and
    /// at most [`MAX_AGGREGATED_VICTIMS`]; the walk stops as soon as the sum
    /// reaches the candidate's popularity, which has then lost. If probation
    /// holds too little weight, the candidate is weighed against what it
    /// holds (the rest of the room then comes unopposed from probation's
    /// newer entries or protected, as for any winner).
    #[inline(never)]
    fn aggregate_victims(&self, candidate: u32, victim: u32, older: usize) -> u32 {
        let needed = u64::from(self.links.meta(candidate).weight);
        let c = u32::from(self.frequency(candidate));
        let (mut weight, mut sum) = (0u64, 0u32);
        let mut next = Some(victim);
        for _ in 0..older.min(MAX_AGGREGATED_VICTIMS) {
            let Some(id) = next.filter(|&id| id != candidate) else {
                break;
            };
            weight += u64::from(self.links.meta(id).weight);
            sum += u32::from(self.frequency(id));
            if weight >= needed || sum >= c {
                break;
            }
            next = self.links.prev(id);
        }
        sum
    }

    /// Chooses, detaches and returns the id to evict. Called only when the
    /// cache as a whole is over capacity, so this shard is full at whatever
    /// size it has now: as in Caffeine, the window's overflow moves into
    /// probation and the newest of those candidates must beat probation's
    /// tail to stay (there is no "main still has room" shortcut, which would
    /// switch the filter off in shards smaller than their nominal share).
    /// Hits are settled first (second chances, promotions), so both
    /// contestants' hits count when the sketch judges.
    ///
    /// Inlined (with [`Self::admit_or_recall`] and
    /// [`Self::promote_probation_tail`], which the compiler otherwise
    /// outlines once this is inlined) into the shard's eviction, as
    /// [`Self::on_insert`] into its insert: each call of its own cost a
    /// prologue and an epilogue of about 15 instructions and its
    /// arguments' moves per write. On the throughput workload 259.5 →
    /// 252.8 instructions a request, the same decisions
    /// (docs/benchmarks.md, 2026-12-07, twenty-fourth session).
    #[inline(always)]
    pub(crate) fn evict(&mut self, hits: &mut impl Hits) -> Option<u32> {
        // The newest of the window's overflow (the candidate) is held on no
        // list while the contest is prepared: most candidates lose, and one
        // that loses then costs no push onto probation and no unlink from
        // it. The decisions are those of the textbook order, in which the
        // candidate enters probation's front first and the entries demoted
        // from protected meanwhile go in front of it: it meets probation's
        // tail only if older entries are left there (otherwise it would be
        // that tail itself, and is evicted unopposed), and a winner is put
        // back right behind the first entry demoted meanwhile.
        self.count_round();
        self.demoted_now = 0;
        self.window_now = self.window_size_now();
        self.hold_main();
        let mut candidate = None;
        while self.window_weight > self.window_now {
            let Some(id) = self.window.back() else {
                break;
            };
            if self.take_hits(id, hits) {
                self.window_end_reads += 1;
                self.links.move_back_to_front(&mut self.window);
                continue;
            }
            if let Some(previous) = candidate.replace(id) {
                self.push(previous, Segment::Probation);
                self.pending.push(previous);
            }
            self.window_leaver = u64::from(self.links.meta(id).weight);
            self.unlink_from(Segment::Window, id);
        }
        self.demote_protected_overflow(hits);
        self.promote_probation_tail(hits);
        if let Some(candidate) = candidate {
            // Demoted entries have no hits, so the promotions stop at them
            // and they are all still in probation.
            let older = self.probation.len().saturating_sub(self.demoted_now);
            // Where the ghost recalls or remembers the candidate: mixed
            // once for both.
            let place = self.ghost.place(hits.hash(candidate));
            let loser = match self.probation.back() {
                Some(victim)
                    if older > 0 && self.admit_or_recall(candidate, victim, older, place) =>
                {
                    self.unlink_from(Segment::Probation, victim);
                    self.evicted_from_main(victim, hits.hash(victim));
                    if self.recalled && self.trials.protect() {
                        self.protect_recalled(candidate, hits);
                    } else if self.demoted_now == 0 {
                        self.push(candidate, Segment::Probation);
                    } else {
                        let meta = self.links.meta_mut(candidate);
                        meta.segment = Segment::Probation;
                        let weight = u64::from(meta.weight);
                        self.links.insert_behind(
                            &mut self.probation,
                            self.first_demoted,
                            candidate,
                        );
                        self.probation_weight += weight;
                    }
                    victim
                }
                _ => {
                    self.ghost.remember_at(place);
                    candidate
                }
            };
            // Both contestants' hits were just taken (the window's tail
            // and probation's tail are only left once they have none).
            self.depart_taken(loser, hits);
            self.entries -= 1;
            return Some(loser);
        }
        if let Some(loser) = self.contest_more(hits) {
            return Some(loser);
        }
        self.evict_without_candidate(hits)
    }

    /// An eviction with no window overflow, in a round that needs more room
    /// than the window's overflow gave (with a weigher, one heavy insert
    /// needs several evictions): as in Caffeine's `evictFromMain`, every
    /// eviction is still a contest while there are candidates. First the
    /// entries that left the window in this round without a contest (only
    /// the newest of one [`Self::evict`]'s leavers contests at once), newest
    /// first; then the window's entries from its oldest
    /// ([`Self::contest_window`]), though the window is not over its
    /// share. `None` when there is no candidate or nothing older to meet:
    /// the caller then evicts unopposed.
    ///
    /// Before, the rest of the room came from probation's tail unopposed,
    /// whatever its popularity: with weights 1–190 on the scan/loop trace
    /// at about 2,100 entries a third of all evictions were unopposed, the
    /// loop's keys (more popular than the Zipf tail) were never kept, and
    /// the miss ratio was 0.678 against moka's 0.59
    /// (`cache_weighted_shards`). Unweighted caches rarely get here: each
    /// insert overflows the window by the one entry it contests.
    #[cold]
    #[inline(never)]
    fn contest_more(&mut self, hits: &mut impl Hits) -> Option<u32> {
        while let Some(candidate) = self.pending.pop() {
            // Still in probation, where it was put: an entry that left it
            // (a victim meanwhile) is unlinked, with no predecessor while
            // not the head.
            let in_probation = self.links.meta(candidate).segment == Segment::Probation
                && (self.links.prev(candidate).is_some()
                    || self.probation.front() == Some(candidate));
            if !in_probation {
                continue;
            }
            if self.take_hits(candidate, hits) {
                // Read since it left the window (a round's leftovers, met
                // by a later eviction): promoted, as at probation's tail.
                self.unlink_from(Segment::Probation, candidate);
                self.push(candidate, Segment::Protected);
                self.demote_protected_overflow(hits);
                continue;
            }
            let victim = self.probation.back()?;
            if victim == candidate {
                // Nothing older left to meet: it leaves unopposed, a
                // refusal too (as in `evict`).
                self.ghost.remember(hits.hash(candidate));
                return None;
            }
            let place = self.ghost.place(hits.hash(candidate));
            let loser = if self.admit_or_recall(candidate, victim, MAX_AGGREGATED_VICTIMS, place) {
                self.evicted_from_main(victim, hits.hash(victim));
                victim
            } else {
                self.ghost.remember_at(place);
                candidate
            };
            self.unlink_from(Segment::Probation, loser);
            self.depart_taken(loser, hits);
            self.entries -= 1;
            return Some(loser);
        }
        if self.adapts
            && self.window_weight < self.window_now
            && (!self.weighted || self.window_max > self.window_min)
        {
            // The window is below its size, which has grown
            // ([`Self::adapt`]): main space gives the room, unopposed. (At
            // its size, the window's oldest still contests, as without
            // adaptation: taking main's tail there too lost the issue's
            // scan/loop cell at 1k entries in 4 of 8 hasher seeds, against
            // none of 8; `cache_hit_ratio_cell -- scan 1000 8`.) A
            // weighted window is below its size after most contests (an
            // entry leaves whole), so at its least size it keeps the fixed
            // window's contests: taking main's tail there turned the filter
            // off for much of the traffic (scan/loop at about 1,000 average
            // entries 0.666 → 0.707, `cache_weighted_traces`).
            return None;
        }
        self.contest_window(hits)
    }

    /// The window's part of [`Self::contest_more`]: the window's oldest
    /// entry not read since it was last looked at (one read lately gets a
    /// second chance at the front, as at an overflow; each entry's hits are
    /// taken once, so the walk ends) meets probation's tail; a winner moves
    /// on to probation, a loser leaves.
    ///
    /// Caffeine instead leaves a winner in the window (and takes the next
    /// window entry for the round's next contest), which keeps the window
    /// of a weighted shard nearer its share: here, with weights 1–190 at
    /// 20,000 units, 39 of a 200-unit share on average against about 70.
    /// Measured both ways (2026-12-06), Caffeine's way was better with one
    /// shard (`cache_weighted_shards`: Zipf 0.9 at about 210 entries 0.657
    /// against 0.663, scan/loop at about 2,100 0.583 against 0.595) but not
    /// with the default shards users get (there 0.587 against 0.592 on
    /// scan/loop at about 2,100, 0.315 against 0.311 at about 21,000;
    /// `cache_more_traces`, popular keys heavy: 0.554 against 0.548 at
    /// 20,000 units, 0.297 against 0.294 at 200,000; light: 0.488 against
    /// 0.485): a winner left in a window smaller than one entry meets a
    /// second contest at the next insert's overflow.
    fn contest_window(&mut self, hits: &mut impl Hits) -> Option<u32> {
        let older = self.probation.len().saturating_sub(self.demoted_now);
        if older == 0 {
            return None;
        }
        let victim = self.probation.back()?;
        let candidate = loop {
            let id = self.window.back()?;
            if !self.take_hits(id, hits) {
                break id;
            }
            self.window_end_reads += 1;
            self.links.move_back_to_front(&mut self.window);
        };
        self.window_leaver = u64::from(self.links.meta(candidate).weight);
        self.unlink_from(Segment::Window, candidate);
        let place = self.ghost.place(hits.hash(candidate));
        let loser = if self.admit_or_recall(candidate, victim, older, place) {
            self.unlink_from(Segment::Probation, victim);
            self.evicted_from_main(victim, hits.hash(victim));
            self.push(candidate, Segment::Probation);
            victim
        } else {
            self.ghost.remember_at(place);
            candidate
        };
        self.depart_taken(loser, hits);
        self.entries -= 1;
        Some(loser)
    }

    /// An eviction with no window overflow to contest: the oldest entry of
    /// probation, else of protected, else of the window, leaves unopposed.
    fn evict_without_candidate(&mut self, hits: &mut impl Hits) -> Option<u32> {
        let victim = self
            .probation
            .back()
            .or(self.protected.back())
            .or(self.window.back())?;
        if self.links.meta(victim).segment != Segment::Window {
            self.evicted_from_main(victim, hits.hash(victim));
        }
        self.depart(victim, hits);
        self.unlink(victim);
        self.entries -= 1;
        Some(victim)
    }

    /// Lets the hill climber take a step if it has enough samples; a no-op
    /// without a climber, kept inline so the read path pays one branch.
    #[inline]
    fn climb(&mut self) {
        if self.climber.is_some() {
            self.climb_step();
        }
    }

    #[cold]
    fn climb_step(&mut self) {
        let Some(c) = &mut self.climber else {
            return;
        };
        let samples = c.hits + c.misses;
        if samples < c.sample_size {
            return;
        }
        let hit_rate = c.hits as f64 / samples as f64;
        let change = hit_rate - c.previous_hit_rate;
        let amount = if change >= 0.0 { c.step } else { -c.step };
        let next_step = if change.abs() >= RESTART_THRESHOLD {
            let step = self.capacity as f64 * STEP_PERCENT / 100.0;
            if amount >= 0.0 { step } else { -step }
        } else {
            STEP_DECAY * amount
        };
        c.previous_hit_rate = hit_rate;
        c.step = next_step;
        c.hits = 0;
        c.misses = 0;
        // The window stays between one entry and 80 % of the shard.
        let max_window = (self.capacity as f64 * 0.8).max(1.0);
        c.window = (c.window + amount).clamp(1.0, max_window);
        // Protected's overflow, if the main space shrank, is demoted at the
        // next eviction.
        self.window_max = c.window as u64;
        self.protected_max = self.protected_now(self.window_max);
        self.limits_changed();
    }

    /// Forgets every id; the popularity history (sketch, ghost and recall
    /// trials) is kept.
    pub(crate) fn clear(&mut self) {
        let sketch = std::mem::replace(&mut self.sketch, FrequencySketch::new(MIN_ENTRIES));
        let ghost = std::mem::replace(&mut self.ghost, Ghost::for_entries(1));
        // The trials are history too, and set the ghost's width.
        let trials = std::mem::take(&mut self.trials);
        let (capacity, climb) = (self.capacity, self.climber.is_some());
        let victims = std::mem::replace(&mut self.victims, Ghost::for_entries(1));
        // The window's size is learned history too; `new` with `weighted`
        // (for the sketch's sizing) would switch the adaptation off.
        let (adapts, weighted, window_max) = (self.adapts, self.weighted, self.window_max);
        let (give, main_evictions) = (self.protected_give, self.main_evictions);
        *self = Self::new(capacity, climb, true);
        self.victims = victims;
        self.adapts = adapts;
        self.weighted = weighted;
        if adapts {
            self.window_max = window_max;
            self.protected_give = give;
            self.main_evictions = main_evictions;
            self.protected_max = self.protected_now(window_max);
            self.limits_changed();
        }
        self.grow_at = sketch.sized_for();
        self.sketch = sketch;
        self.ghost = ghost;
        self.trials = trials;
        self.lengthen_ghosts();
        if adapts {
            // Protected's give counts only while the ghosts are long.
            self.protected_max = self.protected_now(window_max);
            self.limits_changed();
        }
    }
}

/// One list from its eviction end: id, segment, resident hits, estimate,
/// weight.
#[cfg(test)]
type ListSnapshot = Vec<(u32, Segment, u8, u8, u32)>;

/// The textbook order of [`Adaptive::evict`], for the differential test:
/// every entry leaving the window enters probation's front, the entries
/// demoted from protected meanwhile go in front of them, and the newest of
/// them contests probation's tail (unless it is that tail itself).
#[cfg(test)]
impl Adaptive {
    fn evict_textbook(&mut self, hits: &mut impl Hits) -> Option<u32> {
        self.count_round();
        self.demoted_now = 0;
        self.window_now = self.window_size_now();
        self.hold_main();
        let mut candidate = None;
        while self.window_weight > self.window_now {
            let Some(id) = self.window.back() else {
                break;
            };
            if self.take_hits(id, hits) {
                self.window_end_reads += 1;
                self.links.move_to_front(&mut self.window, id);
                continue;
            }
            self.window_leaver = u64::from(self.links.meta(id).weight);
            self.unlink_from(Segment::Window, id);
            self.push(id, Segment::Probation);
            if let Some(previous) = candidate.replace(id) {
                self.pending.push(previous);
            }
        }
        self.demote_protected_overflow(hits);
        self.promote_probation_tail(hits);
        if let Some(candidate) = candidate {
            let victim = self.probation.back()?;
            // The entries behind the candidate, which it may displace.
            let mut older = 0;
            let mut at = Some(victim);
            while let Some(id) = at.filter(|&id| id != candidate) {
                older += 1;
                at = self.links.prev(id);
            }
            let place = self.ghost.place(hits.hash(candidate));
            let won = victim != candidate && self.admit_or_recall(candidate, victim, older, place);
            let loser = if won {
                victim
            } else {
                self.ghost.remember_at(place);
                candidate
            };
            self.unlink(loser);
            if won && self.recalled && self.trials.protect() {
                self.unlink_from(Segment::Probation, candidate);
                self.protect_recalled(candidate, hits);
            }
            self.depart_taken(loser, hits);
            self.entries -= 1;
            return Some(loser);
        }
        if let Some(loser) = self.contest_more(hits) {
            return Some(loser);
        }
        self.evict_without_candidate(hits)
    }

    /// The three lists, each from its eviction end, with every entry's
    /// segment, counts and estimate.
    fn snapshot(&self) -> Vec<ListSnapshot> {
        [&self.window, &self.probation, &self.protected]
            .into_iter()
            .map(|list| {
                let mut out = Vec::new();
                let mut at = list.back();
                while let Some(id) = at {
                    let m = self.meta(id);
                    out.push((id, m.segment, m.resident, m.estimate, m.weight));
                    at = self.links.prev(id);
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_thresholds_match_the_limits_they_shortcut() {
        // protected_full_at: the least held at which the limit is `max`.
        let maxes = (0..3000).chain([u64::MAX / 2, u64::MAX / 20 * 19, u64::MAX - 1, u64::MAX]);
        for max in maxes {
            let at = protected_full_at(max);
            if at == u64::MAX {
                assert!(protected_of_held(u64::MAX - 1) < max, "{max}");
                continue;
            }
            assert!(protected_of_held(at) >= max, "{max}");
            assert!(at == 0 || protected_of_held(at - 1) < max, "{max}");
        }
        // window_full_at: the least held from which the window's size is
        // `window_max`.
        for (capacity, window_max) in [(100, 1), (100, 0), (100, 40), (1000, 7), (5, 3)] {
            let mut p = Adaptive::new(capacity, false, false);
            p.window_max = window_max;
            p.limits_changed();
            for held in 0..3 * capacity {
                let slow = p.window_max.min(max_window(held).max(p.window_min));
                assert_eq!(
                    held >= p.window_full_at,
                    slow == p.window_max,
                    "{capacity} {window_max} {held}"
                );
            }
        }
    }

    /// The shard's per-entry hit counts and hashes, as plain vectors.
    #[derive(Default)]
    struct TestHits(Vec<u8>, Vec<u64>);

    impl TestHits {
        /// Records `id`'s hash (as the shard's slot would) and inserts it.
        fn insert(&mut self, p: &mut Adaptive, id: u32, hash: u64, weight: u32) {
            let i = id as usize;
            if self.1.len() <= i {
                self.1.resize(i + 1, 0);
            }
            self.1[i] = hash;
            p.on_insert(id, hash, weight, self);
        }

        fn bump(&mut self, id: u32) {
            let i = id as usize;
            if self.0.len() <= i {
                self.0.resize(i + 1, 0);
            }
            self.0[i] = (self.0[i] + 1).min(crate::policy::MAX_HITS);
        }
    }

    /// Seeded xorshift64 draws in `0..n` (0 when `n` is 0): deterministic
    /// workloads for the randomized tests.
    fn draws(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut rng = seed;
        move |n| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        }
    }

    impl Hits for TestHits {
        fn take(&mut self, id: u32) -> u8 {
            self.0.get_mut(id as usize).map_or(0, std::mem::take)
        }
        fn halve_all(&mut self) {
            for h in &mut self.0 {
                *h >>= 1;
            }
        }
        fn hash(&self, id: u32) -> u64 {
            self.1[id as usize]
        }
    }

    #[test]
    fn window_overflow_fills_main_before_any_competition() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(10, false, false);
        for id in 0..10 {
            hits.insert(&mut p, id, u64::from(id) * 7919, 1);
        }
        hits.insert(&mut p, 10, 10 * 7919, 1);
        // Over capacity by one: the oldest window entries move into main
        // until it is full, then the newest candidate competes and, being no
        // more popular than the victim, is the one evicted.
        let evicted = p.evict(&mut hits).unwrap();
        assert_eq!(p.window_weight + p.main_weight(), 10);
        assert!(evicted <= 10);
    }

    #[test]
    fn a_refused_key_that_returns_soon_is_admitted_and_put_on_trial() {
        let cap = 100u32;
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(u64::from(cap), false, false).fixed_window();
        // No window: each eviction's candidate is the newest insert.
        p.window_max = 0;
        p.limits_changed();
        // Residents the sketch has seen several times each.
        for id in 0..cap {
            for _ in 0..5 {
                p.sketch.record(hash(id));
            }
            hits.insert(&mut p, id, hash(id), 1);
        }
        let newcomer = hash(1_000);
        // First arrival: less popular than any victim, so refused.
        hits.insert(&mut p, cap, newcomer, 1);
        assert_eq!(p.evict(&mut hits), Some(cap));
        // It comes back at once (the slot id is reused, as the shard does):
        // still less popular than the victim by the sketch, but remembered.
        hits.insert(&mut p, cap, newcomer, 1);
        assert!(p.frequency(cap) < 6, "the contest alone would refuse it");
        let evicted = p.evict(&mut hits).unwrap();
        assert_ne!(evicted, cap, "a key refused lately is admitted");
        // The first key admitted so goes to protected on trial
        // (`RecallTrials`).
        assert_eq!(p.meta(cap).segment, Segment::Protected);
        assert_ne!(p.meta(cap).flags & TRIAL, 0);
        // Remembered once: refused again later, it must win on its own.
        assert!(!p.ghost.recall(newcomer));
        // Read once while in protected; then every protected entry is
        // looked at from the eviction end, where the trial is judged.
        assert_eq!(p.trials.trial, (0, 0));
        hits.bump(cap);
        p.protected_cap = 0;
        p.demote_protected_overflow(&mut hits);
        assert_eq!(
            p.trials.trial,
            (1, 0),
            "a trial read since its placement passes"
        );
        assert_eq!(p.meta(cap).flags & TRIAL, 0, "judged once");
        assert_eq!(p.meta(cap).segment, Segment::Probation);
    }

    #[test]
    fn other_entries_are_counted_and_halved_as_trials_are() {
        let mut t = RecallTrials::default();
        let mut counts = (0, 0);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3 * RecallTrials::OTHER_MEMORY {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let read = !rng.is_multiple_of(7);
            if read {
                t.record_other_read();
            } else {
                t.record_other_unread();
            }
            RecallTrials::count(&mut counts, read, RecallTrials::OTHER_MEMORY);
            assert_eq!(t.other, counts);
        }
    }

    #[test]
    fn recalled_keys_go_to_protected_only_while_their_trials_pass() {
        let mut t = RecallTrials::default();
        // No evidence yet: one recalled key in EXPLORE goes on trial.
        let placed = (0..160).filter(|_| t.protect()).count();
        assert_eq!(placed, 160 / RecallTrials::EXPLORE as usize);
        // Protected's other entries are found read 9 times in 10.
        for i in 0..1_000 {
            if i % 10 != 0 {
                t.record_other_read();
            } else {
                t.record_other_unread();
            }
        }
        // Trials read every time, but too few of them to judge.
        for _ in 0..RecallTrials::MIN_TRIALS - 1 {
            t.record_trial(true);
        }
        assert!(!t.passing());
        // Enough trials, read 15 times in 16: passing (15/16 >= 9/10).
        t.record_trial(false);
        assert!(t.passing());
        assert!(
            (0..20).all(|_| t.protect()),
            "every recalled key goes on trial"
        );
        // Trials that are mostly not read (a scan touching each key twice):
        // back to one in EXPLORE.
        for _ in 0..40 {
            t.record_trial(false);
        }
        assert!(!t.passing());
        let placed = (0..160).filter(|_| t.protect()).count();
        assert_eq!(placed, 160 / RecallTrials::EXPLORE as usize);
        // The counts stay recent: halved at their memory, so trials read
        // again pass again after a few memories' worth.
        for _ in 0..2 * RecallTrials::TRIAL_MEMORY {
            t.record_trial(true);
        }
        assert!(t.trial.0 + t.trial.1 < RecallTrials::TRIAL_MEMORY);
        assert!(t.passing(), "recent trials outweigh old ones");
    }

    #[test]
    fn regression_a_refused_key_returning_to_a_window_longer_than_the_ghost_is_admitted() {
        // A window grown past the ghost's length: a refused key that comes
        // back is forgotten by the ghost (other refusals overwrite its slot)
        // before it reaches the window's end again. It must be admitted
        // there all the same: its return was seen on its insert.
        let cap = 200u32;
        let window = 60u64;
        let hash = |i: u64| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(u64::from(cap), false, false);
        assert!(p.adapts);
        // Residents the sketch has seen several times each, all in main.
        p.window_max = 0;
        p.limits_changed();
        for id in 0..cap {
            for _ in 0..5 {
                p.sketch.record(hash(u64::from(id)));
            }
            hits.insert(&mut p, id, hash(u64::from(id)), 1);
        }
        p.window_max = window;
        p.limits_changed();
        let mut next = cap;
        let mut insert = |p: &mut Adaptive, hits: &mut TestHits, key: u64| {
            let id = next;
            next += 1;
            hits.insert(p, id, key, 1);
            let evicted = p.evict(hits).unwrap();
            (id, evicted)
        };
        // Fresh keys fill the window (main gives the room), then each one
        // that reaches its end is refused.
        let newcomer = hash(1_000_000);
        let mut fresh = 10_000u64;
        for _ in 0..window {
            insert(&mut p, &mut hits, hash(fresh));
            fresh += 1;
        }
        let (first, _) = insert(&mut p, &mut hits, newcomer);
        let mut refused = false;
        for _ in 0..=window {
            let (_, evicted) = insert(&mut p, &mut hits, hash(fresh));
            fresh += 1;
            refused |= evicted == first;
        }
        assert!(refused, "a newcomer less popular than main's entries");
        // It comes back: the window grows by one for it.
        let before = p.window_max;
        let (again, _) = insert(&mut p, &mut hits, newcomer);
        assert_eq!(p.window_max, before + 1);
        // As many other refusals as the window is long: the ghost's slot
        // for the key holds another key's fingerprint by then.
        let (slot, print) = p.ghost.place(newcomer);
        let mut left = None;
        for _ in 0..2 * window {
            let (_, evicted) = insert(&mut p, &mut hits, hash(fresh));
            fresh += 1;
            if evicted == again {
                left = Some(evicted);
            }
            if p.meta(again).segment != Segment::Window {
                break;
            }
        }
        assert_ne!(p.ghost.slots[slot], print, "the ghost has forgotten it");
        assert_eq!(left, None, "a returning key is not refused again");
        assert_ne!(p.meta(again).segment, Segment::Window, "admitted");
    }

    #[test]
    fn the_window_grows_when_refused_keys_return_and_shrinks_when_evicted_ones_do() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100, false, false);
        assert!(p.adapts);
        let (min, cap) = (p.window_min, p.window_cap);
        assert_eq!((min, cap), (1, 95));
        let h = |i: u64| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // A key refused lately comes back: a larger window would have kept it.
        p.ghost.remember(h(1));
        hits.insert(&mut p, 0, h(1), 1);
        assert_eq!(p.window_max, min + 1);
        assert_eq!(p.protected_max, Adaptive::protected_share(100, min + 1));
        // A key evicted from main space lately comes back: the window
        // gives the entry back (once: the victim is forgotten).
        p.victims.remember(h(2));
        hits.insert(&mut p, 1, h(2), 1);
        assert_eq!(p.window_max, min);
        hits.insert(&mut p, 2, h(2), 1);
        assert_eq!(p.window_max, min);
        // Never below the initial window, nor above its cap.
        p.victims.remember(h(3));
        hits.insert(&mut p, 3, h(3), 1);
        assert_eq!(p.window_max, min);
        for i in 0..200 {
            p.ghost.remember(h(10 + i));
            hits.insert(&mut p, 4 + i as u32, h(10 + i), 1);
        }
        assert_eq!(p.window_max, cap);
        // A key that never left moves nothing.
        hits.insert(&mut p, 500, h(5_000), 1);
        assert_eq!(p.window_max, cap);
    }

    /// A policy of 1,000 entries whose window has grown to half the shard
    /// (as refused keys' returns grow it where popularity decays), with
    /// protected at its share; and a function that makes a victim return
    /// (tagged as demoted or not) and then a refused key, so that the
    /// window, which the first shrinks, stays where it is.
    fn long_window() -> (
        Adaptive,
        TestHits,
        impl FnMut(&mut Adaptive, &mut TestHits, u64, bool),
    ) {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1000, false, false);
        let h = |i: u64| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 20_000..20_200 {
            p.ghost.remember(h(i));
            hits.insert(&mut p, i as u32, h(i), 1);
        }
        assert!(p.long_ghosts, "window {}", p.window_max);
        p.window_max = 500;
        p.protected_max = Adaptive::protected_share(1000, 500);
        p.limits_changed();
        let returns = move |p: &mut Adaptive, hits: &mut TestHits, i: u64, demoted: bool| {
            if demoted {
                p.victims.remember_tagged(h(i), true);
            } else {
                p.victims.remember(h(i));
            }
            hits.insert(p, i as u32, h(i), 1);
            p.ghost.remember(h(i + 10_000));
            hits.insert(p, (i + 10_000) as u32, h(i + 10_000), 1);
            assert_eq!(p.window_max, 500);
        };
        (p, hits, returns)
    }

    #[test]
    fn returns_of_keys_evicted_from_probation_unpromoted_shrink_protected() {
        let (mut p, mut hits, mut returns) = long_window();
        let nominal = Adaptive::protected_share(1000, 500);
        assert_eq!(p.protected_max, nominal);
        // Keys evicted from probation before any read promoted them come
        // back: a larger probation would have kept them (ARC's return to
        // the ghost of its recency list), so protected gives room.
        for i in 0..100 {
            returns(&mut p, &mut hits, i, false);
        }
        assert!(
            p.protected_max < nominal,
            "protected keeps {} of {nominal} after 100 such returns",
            p.protected_max
        );
        // Never below half its share.
        for i in 100..300 {
            returns(&mut p, &mut hits, i, false);
        }
        assert_eq!(p.protected_max, nominal - nominal / 2);
    }

    #[test]
    fn returns_of_keys_demoted_from_protected_grow_it_back() {
        let (mut p, mut hits, mut returns) = long_window();
        let nominal = Adaptive::protected_share(1000, 500);
        for i in 0..300 {
            returns(&mut p, &mut hits, i, false);
        }
        // Keys evicted after a demotion from protected come back: a larger
        // protected would have kept them, and it takes its room back.
        for i in 300..350 {
            returns(&mut p, &mut hits, i, true);
        }
        assert!(p.protected_max > nominal - nominal / 2);
        for i in 350..600 {
            returns(&mut p, &mut hits, i, true);
        }
        assert_eq!(p.protected_max, nominal);
    }

    #[test]
    fn a_weighted_shard_of_enough_entries_moves_protected_on_victims_returns() {
        let h = |i: u64| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100_000, false, true);
        let nominal = p.protected_max;
        // 300 entries of 100 units: past PROTECTED_MOVE_ENTRIES, under
        // the capacity.
        for i in 0..300 {
            hits.insert(&mut p, i as u32, h(i), 100);
        }
        assert!(!p.long_ghosts);
        // Keys evicted from probation unpromoted come back: protected gives
        // probation room, as in an unweighted shard with a long window.
        for i in 300..400 {
            p.victims.remember(h(i));
            hits.insert(&mut p, i as u32, h(i), 100);
        }
        assert!(
            p.protected_max < nominal,
            "protected keeps {} of {nominal} after 100 returns in a weighted shard of 400 entries",
            p.protected_max
        );
        assert!(p.protected_max >= nominal - nominal / 2);
    }

    #[test]
    fn protected_keeps_its_share_while_the_window_is_short_or_the_weighted_shard_small() {
        let h = |i: u64| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for weighted in [false, true] {
            let mut hits = TestHits::default();
            let mut p = Adaptive::new(if weighted { 100_000 } else { 1000 }, false, weighted);
            let nominal = p.protected_max;
            for i in 0..100 {
                p.victims.remember(h(i));
                hits.insert(&mut p, i as u32, h(i), if weighted { 100 } else { 1 });
            }
            assert_eq!(p.protected_max, nominal, "weighted {weighted}");
        }
    }

    #[test]
    fn runs_of_like_returns_move_the_window_in_growing_steps() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(10_000, false, false);
        p.window_max = 800;
        p.protected_max = Adaptive::protected_share(10_000, 800);
        p.limits_changed();
        let h = |i: u64| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut id = 0u32;
        let mut grow = |p: &mut Adaptive, hits: &mut TestHits, ghost: bool| {
            let before = p.window_max;
            let hash = h(u64::from(id));
            if ghost {
                p.ghost.remember(hash);
            } else {
                p.victims.remember(hash);
            }
            hits.insert(p, id, hash, 1);
            id += 1;
            p.window_max.abs_diff(before)
        };
        // Grows in a row: the fourth doubles the step, and every fourth
        // after it.
        let steps: Vec<u64> = (0..16).map(|_| grow(&mut p, &mut hits, true)).collect();
        assert_eq!(steps, [1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 16]);
        // A shrink resets the run: one entry.
        assert_eq!(grow(&mut p, &mut hits, false), 1);
        // Alternating returns (popularity that lasts) move by one entry.
        for _ in 0..20 {
            assert_eq!(grow(&mut p, &mut hits, true), 1);
            assert_eq!(grow(&mut p, &mut hits, false), 1);
        }
        // A long run's step stops at an eighth of the window, and at
        // MAX_STEP_ENTRIES.
        let mut capped = 0;
        for _ in 0..40 {
            let before = p.window_max;
            let step = grow(&mut p, &mut hits, true);
            let most = (before / 8).min(MAX_STEP_ENTRIES);
            assert!(step <= most, "step {step} from a window of {before}");
            capped += usize::from(step == most);
        }
        assert!(capped > 0, "the run never reached the cap");
        assert!(p.window_max < p.window_cap);
        check_lists(&p, "after the runs");
        // A small window: an eighth of it.
        p.window_max = 100;
        p.limits_changed();
        p.run = 1_000;
        assert_eq!(p.step(1), 12);
    }

    #[test]
    fn a_weighted_window_steps_by_the_average_weight_doubled_in_runs() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1_000_000, false, true);
        // 101 entries of 10 units: 100 held before the newest, so the
        // average entry (one step) is 10 units.
        for id in 0..101u32 {
            hits.insert(
                &mut p,
                id,
                u64::from(id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                10,
            );
        }
        p.window_max = 10_000;
        assert_eq!(p.entry_step(), 10);
        for (run, step) in [(1, 10), (3, 10), (4, 20), (-4, 20), (8, 40), (-12, 80)] {
            p.run = run;
            assert_eq!(p.step(p.entry_step()), step, "run {run}");
        }
        // At most MAX_STEP_ENTRIES entries and an eighth of the window,
        // and never below one entry.
        p.run = 40;
        assert_eq!(p.step(p.entry_step()), 10 * MAX_STEP_ENTRIES);
        p.window_max = 4_000;
        assert_eq!(p.step(p.entry_step()), 4_000 / 8);
        p.window_max = 16;
        assert_eq!(p.step(p.entry_step()), 10);
    }

    /// Randomized (seeded): long runs of refused keys' and evicted keys'
    /// returns, alternations and quiet spells, with the evictions each
    /// insert needs, removals and `clear`, in unweighted and weighted
    /// shards (weights up to `u32::MAX`): the window stays between its
    /// least size and its cap, every move is at most an eighth of the
    /// window (or one entry), a weighted window's grown size at most an
    /// entry beyond [`Adaptive::brake_slack`] ahead of the window, the
    /// limits derived from the size agree with it, and the lists stay
    /// consistent.
    #[test]
    fn long_runs_of_like_returns_keep_the_window_in_bounds() {
        let mut next = draws(0x2545_f491_4f6c_dd1d);
        let mut longest = 0u32;
        let mut largest_move = 0u64;
        for round in 0..24 {
            let weighted = round % 2 == 1;
            let extreme = round % 6 == 5;
            let capacity = match (weighted, extreme) {
                (false, _) => 1 + next(3_000),
                (true, false) => 1 + next(200_000),
                (true, true) => u64::from(u32::MAX) * (1 + next(200)),
            };
            let mut p = Adaptive::new(capacity, false, weighted);
            let mut hits = TestHits::default();
            let mut resident: std::collections::HashMap<u32, u32> = Default::default();
            let (mut fresh, mut free) = (0u32, Vec::new());
            let mut weight = 0u64;
            let mut key = 0u64;
            for phase in 0..60 {
                // 0: grows in a row, 1: shrinks in a row, 2: alternating,
                // 3: no returns.
                let kind = next(4);
                let len = 1 + next(400);
                if phase % 20 == 19 {
                    p.clear();
                    resident.clear();
                    free.clear();
                    fresh = 0;
                    weight = 0;
                    hits = TestHits::default();
                }
                for i in 0..len {
                    let ctx = format!("round {round} phase {phase} move {i} cap {capacity}");
                    let w: u32 = if !weighted {
                        1
                    } else if extreme {
                        match next(3) {
                            0 => u32::MAX - next(3) as u32,
                            _ => 1 + next(u64::from(u32::MAX)) as u32,
                        }
                    } else {
                        1 + next(200) as u32
                    };
                    key += 1;
                    let hash = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    match (kind, i % 2) {
                        (0, _) | (2, 0) => p.ghost.remember(hash),
                        (1, _) | (2, _) => p.victims.remember(hash),
                        _ => {}
                    }
                    let before = p.window_max;
                    let held = p.window_weight + p.main_weight();
                    let entry = (held / p.entries.max(1)).max(1);
                    // A grow ends at most an entry beyond the brake's slack
                    // ahead of the window (`brake_slack`, with the entry
                    // count the insert is about to reach).
                    let slack = if p.entries + 1 >= PROTECTED_MOVE_ENTRIES {
                        entry.max(p.window_leaver)
                    } else {
                        entry
                    };
                    let ahead = p.window_weight + slack + entry;
                    let id = free.pop().unwrap_or_else(|| {
                        fresh += 1;
                        fresh - 1
                    });
                    hits.insert(&mut p, id, hash, w);
                    resident.insert(id, w);
                    weight += u64::from(w);
                    let moved = p.window_max.abs_diff(before);
                    largest_move = largest_move.max(moved);
                    longest = longest.max(p.run.unsigned_abs());
                    assert!(
                        moved <= (before / 8).max(entry),
                        "{ctx}: moved {moved} from {before} (entry {entry})"
                    );
                    if weighted && p.window_max > before {
                        assert!(p.window_max <= ahead, "{ctx}: {} > {ahead}", p.window_max);
                    }
                    assert!(p.window_min <= p.window_max, "{ctx}: under its least");
                    assert!(p.window_max <= p.window_cap, "{ctx}: over its cap");
                    // Protected's share, less at most half of it given to
                    // probation by victims' returns (`move_protected`).
                    let share = Adaptive::protected_share(capacity, p.window_max);
                    assert_eq!(p.protected_max, p.protected_now(p.window_max), "{ctx}");
                    assert!(
                        share - share / 2 <= p.protected_max && p.protected_max <= share,
                        "{ctx}: protected {} of {share}",
                        p.protected_max
                    );
                    let (window_full_at, protected_full_at) =
                        (p.window_full_at, p.protected_full_at);
                    p.limits_changed();
                    assert_eq!(
                        (window_full_at, protected_full_at),
                        (p.window_full_at, p.protected_full_at),
                        "{ctx}"
                    );
                    if next(8) == 0 {
                        hits.bump(id);
                    }
                    if next(50) == 0 {
                        let mut ids: Vec<u32> = resident.keys().copied().collect();
                        ids.sort_unstable();
                        let gone = ids[next(ids.len() as u64) as usize];
                        weight -= u64::from(resident.remove(&gone).unwrap());
                        free.push(gone);
                        p.on_remove(gone, &mut hits);
                    }
                    while weight > capacity {
                        let Some(gone) = p.evict(&mut hits) else {
                            panic!("{ctx}: None with {weight} held");
                        };
                        let w = resident
                            .remove(&gone)
                            .unwrap_or_else(|| panic!("{ctx}: evicted {gone} not resident"));
                        weight -= u64::from(w);
                        free.push(gone);
                    }
                    if i % 61 == 0 || i + 1 == len {
                        let linked = check_lists(&p, &ctx);
                        assert_eq!(linked.len(), resident.len(), "{ctx}");
                    }
                }
            }
        }
        assert!(longest >= 200, "the longest run was {longest}");
        assert!(largest_move >= 64, "the largest move was {largest_move}");
    }

    #[test]
    fn a_weighted_window_moves_in_doubling_steps_of_the_average_weight() {
        let doubling = [1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 16].map(|d| 10 * d);
        let h = |i: u32| u64::from(i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let moves = |p: &mut Adaptive, hits: &mut TestHits, from: u32, grow: bool| {
            (from..from + 16)
                .map(|id| {
                    let before = p.window_max;
                    if grow {
                        p.ghost.remember(h(id));
                    } else {
                        p.victims.remember(h(id));
                    }
                    hits.insert(p, id, h(id), 10);
                    p.window_max.abs_diff(before)
                })
                .collect::<Vec<u64>>()
        };
        // Shrinks: a shard of 1,000,000 units holding 2,000 entries of 10
        // (all in the window, nothing evicted), its size set to 100,000.
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1_000_000, false, true);
        for id in 0..2_000 {
            hits.insert(&mut p, id, h(id), 10);
        }
        p.window_max = 100_000;
        p.protected_max = Adaptive::protected_share(1_000_000, 100_000);
        p.limits_changed();
        assert_eq!(moves(&mut p, &mut hits, 2_000, false), doubling);
        // Grows: the window (20,000 units) far ahead of its size (10,000),
        // so the brake does not hold it yet.
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1_000_000, false, true);
        for id in 0..2_000 {
            hits.insert(&mut p, id, h(id), 10);
        }
        assert_eq!(p.window_max, 10_000);
        assert_eq!(moves(&mut p, &mut hits, 2_000, true), doubling);
        check_lists(&p, "after the grows");
    }

    #[test]
    fn a_growing_window_takes_its_room_from_main_space_and_a_shrinking_one_gives_it_back() {
        let cap = 100u32;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(u64::from(cap), false, false);
        let h = |i: u32| u64::from(i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Filled past its capacity: the window's overflow has moved on.
        let mut free = Vec::new();
        for i in 0..2 * cap {
            let id = free.pop().unwrap_or(i);
            hits.insert(&mut p, id, h(i), 1);
            if p.window_weight + p.main_weight() > u64::from(cap) {
                free.push(p.evict(&mut hits).unwrap());
            }
        }
        assert_eq!((p.window_weight, p.main_weight()), (1, 99));
        let cap = 2 * cap;
        p.window_max = 40;
        p.protected_max = Adaptive::protected_share(100, 40);
        p.limits_changed();
        let mut from_window = 0;
        let mut new_ids: Vec<u32> = Vec::new();
        for i in cap..cap + 38 {
            let id = free.pop().unwrap_or(i);
            new_ids.push(id);
            hits.insert(&mut p, id, h(i), 1);
            let victim = p.evict(&mut hits).unwrap();
            from_window += u32::from(new_ids.contains(&victim));
            free.push(victim);
        }
        assert_eq!(from_window, 0, "the new keys stay while the window grows");
        assert_eq!((p.window_weight, p.main_weight()), (39, 61));
        // Shrunk, the window's overflow contests at the next evictions.
        p.window_max = 1;
        p.protected_max = Adaptive::protected_share(100, 1);
        p.limits_changed();
        hits.insert(&mut p, free.pop().unwrap(), h(1_000), 1);
        p.evict(&mut hits).unwrap();
        assert_eq!(p.window_weight, 1);
        check_lists(&p, "after the shrink");
    }

    #[test]
    fn regression_a_grown_window_in_a_shard_below_its_share_leaves_main_space_its_share() {
        // A shard holds what the global bound leaves it, which can be well
        // below its nominal capacity. A window grown towards its cap of that
        // capacity then never reached its size, and main space gave up
        // every eviction unopposed until it was empty: no admission filter
        // was left.
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100, false, false);
        p.window_max = max_window(100);
        p.protected_max = Adaptive::protected_share(100, p.window_max);
        p.limits_changed();
        let h = |i: u32| u64::from(i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // The shard holds 50 entries at most: every insert past that evicts.
        let mut free = Vec::new();
        for i in 0..1_000u32 {
            let id = free.pop().unwrap_or(i);
            hits.insert(&mut p, id, h(i), 1);
            if p.window_weight + p.main_weight() > 50 {
                free.push(p.evict(&mut hits).unwrap());
            }
        }
        assert_eq!(p.window_weight + p.main_weight(), 50);
        // An eviction counts the newcomer: of the 51 units then held, the
        // window keeps at most its cap's share, one unit leaves, and main
        // space keeps the rest (two units at least, so a candidate always
        // meets a victim).
        assert!(
            p.main_weight() >= (50 - max_window(51)).max(2),
            "main space holds {} of 50, window {}",
            p.main_weight(),
            p.window_weight
        );
        check_lists(&p, "under-filled shard");
    }

    #[test]
    fn clear_keeps_the_learned_window() {
        for weighted in [false, true] {
            let mut p = Adaptive::new(100, false, weighted);
            assert!(p.adapts);
            p.window_max = 30;
            p.limits_changed();
            p.clear();
            assert!(p.adapts, "clear must not switch the adaptation off");
            assert_eq!(p.weighted, weighted);
            assert_eq!(p.window_max, 30);
            assert_eq!(p.protected_max, Adaptive::protected_share(100, 30));
        }
    }

    #[test]
    fn a_weighted_window_steps_by_the_average_weight_within_a_step_of_itself() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1_000, false, true);
        let min = p.window_min;
        assert_eq!(min, 10);
        let h = |i: u32| u64::from(i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Five entries of 20 units (the shard is not full: all in the
        // window, 100 units).
        for i in 0..5 {
            hits.insert(&mut p, i, h(i), 20);
        }
        // A heavy refused key comes back: the window grows by the average
        // weight, 20, not by the key's own 300.
        p.ghost.remember(h(5));
        hits.insert(&mut p, 5, h(5), 300);
        assert_eq!(p.window_max, min + 20);
        // An evicted one comes back: it shrinks by the average, now 400 / 6.
        p.victims.remember(h(6));
        hits.insert(&mut p, 6, h(6), 20);
        assert_eq!(p.window_max, min);
        // A window of 420 units lets its size grow up to a step beyond it,
        // and no further, however many refused keys come back.
        for i in 7..200 {
            p.ghost.remember(h(i));
            hits.insert(&mut p, i, h(i), 1);
        }
        // (No evictions: the shard holds 613 of its 1,000 units, all in
        // the window. Its size grew by the average, about 3, per return,
        // the window by 1: it caught up, then was held.)
        let window = p.window_weight;
        let step = (window + p.main_weight()) / p.entries;
        assert_eq!(window, 613);
        assert!(
            p.window_max <= window + 2 * step,
            "size {} ahead of a window of {window}",
            p.window_max
        );
        assert!(
            p.window_max >= window,
            "grew up to the window: {}",
            p.window_max
        );
    }

    #[test]
    fn a_weighted_window_short_of_its_size_by_a_heavy_leaver_still_grows() {
        let h = |i: u32| u64::from(i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(6_000, false, true);
        // As the shard does: insert, then evict while over capacity.
        let mut held = 0u64;
        let mut insert = |p: &mut Adaptive, hits: &mut TestHits, id: u32, weight: u32| {
            hits.insert(p, id, h(id), weight);
            held += u64::from(weight);
            while held > 6_000 {
                let gone = p.evict(hits).expect("an entry to evict");
                held -= u64::from(p.links.meta(gone).weight);
            }
        };
        // 600 entries of 10 units fill the shard (past
        // PROTECTED_MOVE_ENTRIES); the window's size is then set to 1,000
        // and the next 100 fill it, main space giving the room.
        for id in 0..700 {
            insert(&mut p, &mut hits, id, 10);
        }
        p.window_max = 1_000;
        p.protected_max = p.protected_now(1_000);
        p.limits_changed();
        for id in 700..800 {
            insert(&mut p, &mut hits, id, 10);
        }
        // At its size: the window's oldest contests once it is full, so
        // it is short of its size by at most that entry.
        assert!(p.window_max - p.window_weight <= 10, "{}", p.window_weight);
        // An entry of 60 units goes through the window; when it leaves, the
        // window, at its size, is short of it by up to 60 units: more than
        // two average entries (10 units).
        let heavy = 800;
        insert(&mut p, &mut hits, heavy, 60);
        let mut id = heavy + 1;
        while p.window_max - p.window_weight <= 20 && id < 2_000 {
            insert(&mut p, &mut hits, id, 10);
            id += 1;
        }
        assert_eq!(p.window_max, 1_000);
        assert!(
            p.window_weight + 2 * p.entry_step() < p.window_max,
            "window {} of {}",
            p.window_weight,
            p.window_max
        );
        // A refused key comes back: a larger window would have kept it.
        p.ghost.remember(h(id));
        insert(&mut p, &mut hits, id, 10);
        assert!(
            p.window_max > 1_000,
            "a window at its size but for a leaver of 60 units did not grow: {}",
            p.window_max
        );
        check_lists(&p, "after the grow");
    }

    #[test]
    fn a_node_meta_stays_eight_bytes() {
        // With two u32 links, a policy node is 16 bytes: four to a cache
        // line. The trial flag shares the doorkeeper's byte for this.
        assert_eq!(std::mem::size_of::<Meta>(), 8);
    }

    #[test]
    fn the_ghost_widens_while_its_recalls_pass() {
        let mut g = Ghost::for_entries(800);
        assert_eq!((g.wide, g.active), (200, 100));
        g.remember(7);
        assert!(g.recall(7));
        g.widen(true);
        assert_eq!(g.active, 200);
        g.remember(7);
        assert!(g.recall(7), "remembered and recalled in the wide ghost");
        assert!(!g.recall(7), "forgotten once recalled");
        g.widen(false);
        assert_eq!(g.active, 100);
        // The smallest ghost still has a slot in either width.
        let mut tiny = Ghost::for_entries(1);
        tiny.widen(true);
        tiny.remember(9);
        assert!(tiny.recall(9));
    }

    #[test]
    fn a_window_of_an_eighth_of_the_shard_or_more_lengthens_both_ghosts() {
        // Keys remembered, then recalled: a ghost holds at most as many as
        // the slots it uses. A shard of 800: the ghost of refused keys uses
        // 100 slots (trials not passing), the victims' 200; four times that
        // with the window at an eighth of the shard or more.
        fn recalled(g: &mut Ghost, keys: u64) -> u64 {
            let hash = |k: u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
            (0..keys).for_each(|k| g.remember(hash(k)));
            (0..keys).filter(|&k| g.recall(hash(k))).count() as u64
        }
        let mut p = Adaptive::new(800, false, false);
        assert!(recalled(&mut p.ghost, 4_000) <= 100);
        assert!(recalled(&mut p.victims, 4_000) <= 200);
        // Refused keys keep coming back: the window grows past an eighth.
        while p.window_max < 100 {
            p.move_window(true);
        }
        let refused = recalled(&mut p.ghost, 4_000);
        let evicted = recalled(&mut p.victims, 4_000);
        assert!(
            refused > 300 && refused <= 400,
            "{refused} refused keys recalled with the window at {}",
            p.window_max
        );
        assert!(
            evicted > 600 && evicted <= 800,
            "{evicted} evicted keys recalled"
        );
        // Back below an eighth, the ghosts are short again.
        while p.window_max >= 100 {
            p.move_window(false);
        }
        assert!(recalled(&mut p.ghost, 4_000) <= 100);
        assert!(recalled(&mut p.victims, 4_000) <= 200);
    }

    #[test]
    fn a_heavy_candidate_must_outweigh_every_victim_it_displaces() {
        // Residents of weight 1 seen once each (popularity 1); a newcomer
        // seen 7 times is more popular than any one of them. Weighing 4 it
        // displaces 4 of them (summed popularity 4): admitted. Weighing 10
        // it would displace 10 (summed popularity 10 > 7): refused, where a
        // one-to-one contest would have let it in and then freed the other
        // nine unopposed.
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for (weight, admitted) in [(1, true), (4, true), (10, false)] {
            let mut hits = TestHits::default();
            // Sized up front (as unweighted), so the sketch has room
            // enough for every key to count alone.
            let mut p = Adaptive::new(100, false, false);
            p.window_max = 0;
            p.limits_changed();
            for id in 0..100 {
                hits.insert(&mut p, id, hash(id), 1);
            }
            // Moves them all to probation; one leaves.
            let free = p.evict(&mut hits).unwrap();
            for id in (0..100).filter(|&id| id != free) {
                assert_eq!(p.frequency(id), 1, "resident {id}");
            }
            let newcomer = hash(1_000);
            for _ in 0..6 {
                p.sketch.record(newcomer);
            }
            hits.insert(&mut p, free, newcomer, weight);
            assert_eq!(p.frequency(free), 7, "weight {weight}");
            let evicted = p.evict(&mut hits).unwrap();
            assert_eq!(evicted != free, admitted, "weight {weight}");
        }
    }

    #[test]
    fn every_eviction_of_a_heavy_inserts_round_is_a_contest() {
        // 80 popular entries and 20 unpopular ones fill a weighted shard of
        // 100; a newcomer weighing 10 needs 10 units freed. Each of those
        // evictions must be a contest, which the unpopular lose: before,
        // only the first was, and the other nine took popular entries from
        // probation's tail unopposed.
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100, false, false);
        p.window_max = 20;
        p.limits_changed();
        let mut weights = std::collections::HashMap::new();
        for id in 0..100 {
            if id < 80 {
                for _ in 0..5 {
                    p.sketch.record(hash(id));
                }
            }
            hits.insert(&mut p, id, hash(id), 1);
            weights.insert(id, 1u64);
        }
        hits.insert(&mut p, 100, hash(100), 10);
        weights.insert(100, 10);
        let mut total: u64 = weights.values().sum();
        let mut evicted = Vec::new();
        while total > 100 {
            let id = p.evict(&mut hits).expect("entries left");
            total -= weights[&id];
            evicted.push(id);
        }
        assert!(evicted.iter().all(|&id| id >= 80), "evicted {evicted:?}");
    }

    #[test]
    fn regression_a_shard_holding_less_than_its_share_keeps_a_probation() {
        // A shard with a nominal capacity of 1,000 that the global bound
        // leaves at 500 (or 25) entries, all of them read: promotions would
        // move every one of them to protected (its nominal limit, 891, is
        // never reached), probation would run dry, and every newcomer,
        // however popular, would be refused unopposed. At 25, a twentieth
        // of the held space rounds to nothing: probation keeps 2 units.
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for held in [500u32, 25] {
            let mut hits = TestHits::default();
            let mut p = Adaptive::new(1_000, false, false);
            for id in 0..held {
                hits.insert(&mut p, id, hash(id), 1);
            }
            hits.insert(&mut p, held, hash(held), 1);
            let free = p.evict(&mut hits).unwrap();
            for id in (0..=held).filter(|&id| id != free) {
                hits.bump(id);
            }
            // A one-off newcomer: this eviction settles the reads
            // (promotions, and demotions of protected's overflow).
            hits.insert(&mut p, free, hash(20_000), 1);
            let free = p.evict(&mut hits).unwrap();
            let newcomer = hash(10_000);
            for _ in 0..10 {
                p.sketch.record(newcomer);
            }
            hits.insert(&mut p, free, newcomer, 1);
            let evicted = p.evict(&mut hits).unwrap();
            assert_ne!(evicted, free, "held {held}: a popular newcomer is admitted");
            assert!(!p.probation.is_empty(), "held {held}: probation ran dry");
            assert!(p.protected_weight <= p.protected_cap, "held {held}");
        }
    }

    #[test]
    fn the_ghost_survives_clear_and_grows_with_the_sketch() {
        // Weighted: the sketch (and the ghost) start small and grow.
        let mut p = Adaptive::new(1 << 20, false, true);
        let small = p.ghost.slots.len();
        p.ghost.remember(42);
        p.clear();
        assert!(p.ghost.recall(42), "invalidate_all keeps the history");
        let mut hits = TestHits::default();
        let grow_at = u32::try_from(p.grow_at).unwrap();
        for id in 0..=grow_at {
            hits.insert(&mut p, id, u64::from(id).wrapping_mul(7919) | 1, 1);
        }
        assert!(p.ghost.slots.len() > small, "{} slots", p.ghost.slots.len());
    }

    /// A shard of fewer than [`SPARSE_FROM`] entries keeps the dense
    /// sketch table ([`FrequencySketch::new`]), also when it got there by a
    /// regrowth (a weighted shard's sketch starts small): the regrowth at
    /// 513 entries sized the sketch for 1,024 and so made it sparse, a
    /// table of 512 blocks, no larger than the one it replaced.
    #[test]
    fn regression_a_sketch_regrown_below_sparse_from_is_dense() {
        use super::super::sketch::SPARSE_FROM;
        let mut p = Adaptive::new(1 << 20, false, true);
        let mut hits = TestHits::default();
        let mut id = 0u32;
        while p.entries < SPARSE_FROM - 1 {
            let before = (p.sketch.blocks(), p.grow_at);
            hits.insert(&mut p, id, u64::from(id).wrapping_mul(7919) | 1, 1);
            id += 1;
            if p.grow_at != before.1 {
                assert!(
                    p.sketch.blocks() > before.0,
                    "regrown at {} entries: {} blocks, {} before",
                    p.entries,
                    p.sketch.blocks(),
                    before.0
                );
            }
            assert_eq!(
                p.sketch.blocks(),
                p.sketch.sized_for(),
                "{} entries",
                p.entries
            );
        }
    }

    /// Trials that pass, and the ghost widened to match.
    fn passing_trials(p: &mut Adaptive) {
        p.trials.trial = (RecallTrials::MIN_TRIALS, 0);
        p.trials.other = (1, 1);
        assert!(p.trials.passing());
        p.ghost.widen(true);
    }

    #[test]
    fn regression_the_ghost_stays_wide_when_the_sketch_regrows_while_trials_pass() {
        let mut p = Adaptive::new(1 << 20, false, true);
        passing_trials(&mut p);
        let mut hits = TestHits::default();
        let grow_at = u32::try_from(p.grow_at).unwrap();
        for id in 0..=grow_at {
            hits.insert(&mut p, id, u64::from(id).wrapping_mul(7919) | 1, 1);
        }
        assert!(p.trials.passing());
        assert_eq!(
            p.ghost.active, p.ghost.wide,
            "the regrown ghost must be as wide as the trials say"
        );
    }

    #[test]
    fn regression_clear_keeps_the_ghost_width_and_the_trials_consistent() {
        let mut p = Adaptive::new(1 << 20, false, true);
        passing_trials(&mut p);
        p.clear();
        // Either both kept (history) or both reset; not a wide ghost with
        // trials that no longer pass.
        assert_eq!(
            p.ghost.active == p.ghost.wide,
            p.trials.passing(),
            "ghost width {} of {} slots, trials passing: {}",
            p.ghost.active,
            p.ghost.wide,
            p.trials.passing()
        );
    }

    #[test]
    fn frequent_keys_survive_a_scan() {
        let cap = 100u32;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(u64::from(cap), false, false);
        let mut resident = std::collections::HashSet::new();
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // A hot set of 50 ids, each read many times.
        for id in 0..50 {
            hits.insert(&mut p, id, hash(id), 1);
            resident.insert(id);
        }
        for _ in 0..10 {
            for id in 0..50 {
                hits.bump(id);
                p.on_access();
            }
        }
        // A scan of 1000 one-off ids.
        for id in 1000..2000 {
            p.on_miss(hash(id));
            hits.insert(&mut p, id, hash(id), 1);
            resident.insert(id);
            while resident.len() > cap as usize {
                let v = p.evict(&mut hits).unwrap();
                assert!(resident.remove(&v));
            }
        }
        let hot_left = (0..50).filter(|id| resident.contains(id)).count();
        assert!(hot_left >= 45, "only {hot_left} of 50 hot ids survived");
    }

    #[test]
    fn hits_are_folded_into_the_sketch_when_taken() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100, false, false);
        hits.insert(&mut p, 0, 42, 1);
        let before = p.sketch.frequency(42);
        for _ in 0..5 {
            hits.bump(0);
        }
        assert_eq!(
            p.sketch.frequency(42),
            before,
            "a hit alone touches no sketch"
        );
        p.on_remove(0, &mut hits);
        assert_eq!(p.sketch.frequency(42), before + 5, "folded on departure");
        assert_eq!(hits.take(0), 0);
    }

    #[test]
    fn regression_resident_hits_age_with_the_sketch() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(64, false, false);
        hits.insert(&mut p, 0, 1, 1);
        for _ in 0..12 {
            hits.bump(0);
        }
        // Push other keys through the sketch until it halves; the resident
        // count must halve with it, not keep its pre-reset weight.
        let mut id = 1;
        while hits.0[0] == 12 {
            hits.insert(
                &mut p,
                id,
                u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                1,
            );
            p.on_remove(id, &mut hits);
            id += 1;
            assert!(id < 1_000_000, "the sketch never reset");
        }
        assert_eq!(hits.0[0], 6);
        // Taken hits (not yet in the sketch) age too.
        let mut p = Adaptive::new(64, false, false);
        hits.insert(&mut p, 0, 1, 1);
        hits.0[0] = 12;
        assert!(p.take_hits(0, &mut hits));
        let mut id = 1;
        while p.meta(0).resident == 12 {
            hits.insert(
                &mut p,
                id,
                u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                1,
            );
            p.on_remove(id, &mut hits);
            id += 1;
            assert!(id < 1_000_000, "the sketch never reset");
        }
        assert_eq!(p.meta(0).resident, 6);
    }

    /// Inserts new keys of one unit, ids from `first`, until the shard's
    /// sketch is regrown; returns the next unused id.
    fn insert_until_the_sketch_grows(p: &mut Adaptive, hits: &mut TestHits, first: u32) -> u32 {
        let grow_at = p.grow_at;
        let mut id = first;
        while p.grow_at == grow_at {
            hits.insert(p, id, u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15), 1);
            id += 1;
            assert!(id < 1_000_000, "the sketch never grew");
        }
        id
    }

    #[test]
    fn a_regrown_sketch_keeps_the_residents_popularity() {
        // A weighted shard's sketch starts small and is rebuilt larger as
        // entries arrive. A popular resident must keep its estimate, in its
        // node and in the new sketch (where it is looked up if it leaves
        // and comes back), or any newcomer seen twice outranks it.
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1 << 20, false, true);
        let hash = 0x1234_5678_9abc_def1;
        for _ in 0..10 {
            p.sketch.record(hash);
        }
        hits.insert(&mut p, 0, hash, 1);
        let popular = p.frequency(0);
        assert!(popular >= 10, "estimate {popular}");
        let id = insert_until_the_sketch_grows(&mut p, &mut hits, 1);
        assert_eq!(p.frequency(0), popular, "the resident's estimate");
        assert!(
            p.sketch.frequency(hash) >= popular,
            "the new sketch's estimate {} < {popular}",
            p.sketch.frequency(hash)
        );
        // A newcomer seen twice does not outrank it.
        let newcomer = 0x0fed_cba9_8765_4321;
        p.sketch.record(newcomer);
        hits.insert(&mut p, id, newcomer, 1);
        assert!(p.frequency(id) < popular);
        check_lists(&p, "after the regrowth");
    }

    #[test]
    fn carried_estimates_age_in_the_node_as_in_the_new_sketch() {
        // A node's estimate counts the doorkeeper's one while `DOOR` is
        // set, and the halving takes that one off before halving the rest,
        // as the sketch does. A regrowth carries the estimate into the new
        // sketch doorkeeper first, so the node's estimate counts the
        // doorkeeper's one afterwards even if it did not before (the key's
        // doorkeeper bit was cleared by an earlier halving): the next
        // halving must still agree with the sketch.
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(1 << 20, false, true);
        let aged = 0x1234_5678_9abc_def1;
        for _ in 0..8 {
            p.sketch.record(aged);
        }
        hits.insert(&mut p, 0, aged, 1);
        // A halving: the node's estimate is counters only (4), no `DOOR`.
        while !p.sketch.count(1) {}
        p.age(&mut hits);
        assert_eq!(p.meta(0).estimate, 4);
        assert_eq!(p.meta(0).flags & DOOR, 0);
        let fresh = 0x0fed_cba9_8765_4321;
        for _ in 0..8 {
            p.sketch.record(fresh);
        }
        hits.insert(&mut p, 1, fresh, 1);
        assert_ne!(p.meta(1).flags & DOOR, 0);
        insert_until_the_sketch_grows(&mut p, &mut hits, 2);
        for (id, hash) in [(0, aged), (1, fresh)] {
            assert_eq!(p.frequency(id), p.sketch.frequency(hash), "id {id} carried");
        }
        while !p.sketch.count(1) {}
        p.age(&mut hits);
        for (id, hash) in [(0, aged), (1, fresh)] {
            assert_eq!(
                p.frequency(id),
                p.sketch.frequency(hash),
                "id {id} after the halving"
            );
        }
        check_lists(&p, "after the regrowth");
    }

    #[test]
    fn resident_estimates_follow_the_sketch_through_halvings() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(64, false, false);
        let hash = 0x1234_5678_9abc_def1;
        // Seen twice before (doorkeeper, then a counter), then inserted.
        p.sketch.record(hash);
        p.sketch.record(hash);
        hits.insert(&mut p, 0, hash, 1);
        assert_eq!(p.frequency(0), p.sketch.frequency(hash));
        let mut id = 1;
        for halvings in 1..=2 {
            let before = p.meta(0).estimate;
            while p.meta(0).estimate == before {
                hits.insert(
                    &mut p,
                    id,
                    u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    1,
                );
                p.on_remove(id, &mut hits);
                id += 1;
                assert!(id < 1_000_000, "the sketch never reset");
            }
            assert_eq!(
                p.frequency(0),
                p.sketch.frequency(hash),
                "after halving {halvings}"
            );
        }
    }

    #[test]
    fn read_entries_get_a_second_chance_and_probation_hits_promote() {
        let mut hits = TestHits::default();
        // A read entry at probation's tail is promoted rather than evicted.
        let mut p = Adaptive::new(10, false, false);
        for id in 0..10 {
            hits.insert(&mut p, id, u64::from(id) * 0x9e37_79b9, 1);
        }
        hits.insert(&mut p, 10, 10 * 0x9e37_79b9, 1);
        p.evict(&mut hits);
        let oldest = p.probation.back().unwrap();
        hits.bump(oldest);
        hits.insert(&mut p, 11, 11 * 0x9e37_79b9, 1);
        let evicted = p.evict(&mut hits).unwrap();
        assert_ne!(evicted, oldest);
        assert_eq!(p.meta(oldest).segment, Segment::Protected);
    }

    #[test]
    fn removal_and_update_keep_weights_consistent() {
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(10, true, false);
        hits.insert(&mut p, 0, 1, 3);
        hits.insert(&mut p, 1, 2, 4);
        p.on_update(0, 5);
        assert_eq!(p.window_weight + p.main_weight(), 9);
        p.on_remove(1, &mut hits);
        assert_eq!(p.window_weight + p.main_weight(), 5);
        assert_eq!(p.evict(&mut hits), Some(0));
        assert_eq!(p.evict(&mut hits), None);
        assert_eq!(p.window_weight + p.main_weight(), 0);
    }

    /// [`Adaptive::evict`] holds the admission candidate off the lists and
    /// puts a winner straight into its textbook place; this checks, on
    /// random workloads (inserts, reads, rewrites with new weights,
    /// removals, evictions; weighted and not; tiny and larger shards), that
    /// it evicts the same entries and leaves every list in the same order as
    /// the textbook sequence of moves.
    #[test]
    fn evict_matches_the_textbook_order() {
        let mut next = draws(0x2545_f491_4f6c_dd1d_u64);
        let mut evictions = 0u64;
        for round in 0..300 {
            let capacity = 1 + next(if round % 3 == 0 { 8 } else { 300 });
            let weighted = round % 2 == 1;
            let mut fast = Adaptive::new(capacity, false, weighted).fixed_window();
            let mut slow = Adaptive::new(capacity, false, weighted).fixed_window();
            let (mut fast_hits, mut slow_hits) = (TestHits::default(), TestHits::default());
            let mut resident: Vec<(u32, u32)> = Vec::new();
            let mut weight = 0u64;
            let (mut fresh, mut free) = (0u32, Vec::new());
            for _ in 0..3_000 {
                match next(10) {
                    0..=3 => {
                        let w = if weighted { 1 + next(4) as u32 } else { 1 };
                        // Freed ids are reused, as the shard does; hashes
                        // repeat, so the sketch sees returning keys.
                        let id = free.pop().unwrap_or_else(|| {
                            fresh += 1;
                            fresh - 1
                        });
                        let hash = next(capacity * 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        fast_hits.insert(&mut fast, id, hash, w);
                        slow_hits.insert(&mut slow, id, hash, w);
                        resident.push((id, w));
                        weight += u64::from(w);
                    }
                    4..=7 if !resident.is_empty() => {
                        let (id, _) = resident[next(resident.len() as u64) as usize];
                        fast_hits.bump(id);
                        slow_hits.bump(id);
                    }
                    8 if !resident.is_empty() && weighted => {
                        let i = next(resident.len() as u64) as usize;
                        let w = 1 + next(4) as u32;
                        weight = weight - u64::from(resident[i].1) + u64::from(w);
                        resident[i].1 = w;
                        fast.on_update(resident[i].0, w);
                        slow.on_update(resident[i].0, w);
                    }
                    9 if !resident.is_empty() => {
                        let (id, w) = resident.swap_remove(next(resident.len() as u64) as usize);
                        weight -= u64::from(w);
                        free.push(id);
                        fast.on_remove(id, &mut fast_hits);
                        slow.on_remove(id, &mut slow_hits);
                    }
                    _ => {}
                }
                let mut evicted = false;
                while weight > capacity {
                    let a = fast.evict(&mut fast_hits);
                    let b = slow.evict_textbook(&mut slow_hits);
                    assert_eq!(a, b, "round {round}: different victims");
                    let Some(id) = a else { break };
                    let i = resident
                        .iter()
                        .position(|&(r, _)| r == id)
                        .expect("resident");
                    weight -= u64::from(resident.swap_remove(i).1);
                    free.push(id);
                    evictions += 1;
                    evicted = true;
                }
                if evicted {
                    assert_eq!(
                        fast.snapshot(),
                        slow.snapshot(),
                        "round {round}: lists differ"
                    );
                    assert_eq!(fast_hits.0, slow_hits.0, "round {round}: hits differ");
                }
            }
            assert_eq!(
                fast.snapshot(),
                slow.snapshot(),
                "round {round}: lists differ"
            );
        }
        assert!(evictions > 100_000, "only {evictions} evictions exercised");
    }

    // ---- Review tests (h-rev) ----

    /// Walks every list, checking links, segments and weights against the
    /// policy's counters; returns the linked ids.
    fn check_lists(p: &Adaptive, ctx: &str) -> std::collections::HashSet<u32> {
        let mut seen = std::collections::HashSet::new();
        for (list, segment, weight) in [
            (&p.window, Segment::Window, p.window_weight),
            (&p.probation, Segment::Probation, p.probation_weight),
            (&p.protected, Segment::Protected, p.protected_weight),
        ] {
            let (mut n, mut w) = (0usize, 0u64);
            let mut at = list.back();
            while let Some(id) = at {
                assert!(seen.insert(id), "{ctx}: {id} linked twice");
                assert_eq!(p.meta(id).segment, segment, "{ctx}: {id}");
                n += 1;
                w += u64::from(p.meta(id).weight);
                at = p.links.prev(id);
                assert!(n <= 1_000_000, "{ctx}: cycle");
            }
            assert_eq!(n, list.len(), "{ctx}: {segment:?} len");
            assert_eq!(w, weight, "{ctx}: {segment:?} weight");
        }
        assert_eq!(seen.len() as u64, p.entries, "{ctx}: entries");
        seen
    }

    /// Randomized: inserts, reads, weight updates, removals, the evictions
    /// an insert needs, and stray evictions with no insert (as
    /// `evict_elsewhere` and racing writers make), with weights of 0 to
    /// many times the capacity, capacities from 0, no window, and the hill
    /// climber. Every evicted id was resident and is evicted once, the
    /// lists hold exactly the resident ids with the right weights, and
    /// `evict` agrees with `evict_textbook` throughout.
    #[test]
    fn random_operations_keep_the_lists_consistent_and_match_the_textbook() {
        random_operations(false, false);
    }

    /// The same operations with the window following the ghosts
    /// ([`Adaptive::adapt`]): no textbook to match, but the lists must
    /// stay consistent, every eviction valid, and the window within its
    /// bounds.
    #[test]
    fn random_operations_keep_the_lists_consistent_with_an_adaptive_window() {
        random_operations(true, false);
    }

    /// The adaptive window of weighted shards at the extremes: weights up
    /// to `u32::MAX` and capacities up to `u64::MAX` (no overflow, the
    /// window within its bounds, the lists consistent).
    #[test]
    fn random_operations_keep_an_adaptive_weighted_window_in_bounds_at_extreme_weights() {
        random_operations(true, true);
    }

    fn random_operations(adapt: bool, extreme: bool) {
        let mut next = draws(0x9e37_79b9_7f4a_7c15_u64);
        let mut evictions = 0u64;
        for round in 0..120 {
            let capacity = match (extreme, round % 5) {
                (true, 0) => u64::MAX - next(3),
                (true, 1) => u64::from(u32::MAX) * (1 + next(50)),
                (true, _) => u64::from(u32::MAX) / (1 + next(400)),
                (false, 0) => next(3),
                (false, 1) => 1 + next(10),
                (false, _) => 1 + next(400),
            };
            let weighted = extreme || round % 4 != 0;
            let climb = round % 7 == 3;
            let mut fast = Adaptive::new(capacity, climb, weighted);
            let mut slow = Adaptive::new(capacity, climb, weighted);
            if !adapt {
                (fast, slow) = (fast.fixed_window(), slow.fixed_window());
            }
            if round % 6 == 5 && !extreme {
                fast.window_max = 0;
                slow.window_max = 0;
                fast.limits_changed();
                slow.limits_changed();
            }
            let (mut fh, mut sh) = (TestHits::default(), TestHits::default());
            let mut resident: std::collections::HashMap<u32, u32> = Default::default();
            let mut weight = 0u64;
            let (mut fresh, mut free) = (0u32, Vec::new());
            let weigh = |next: &mut dyn FnMut(u64) -> u64| -> u32 {
                if !weighted {
                    return 1;
                }
                if extreme {
                    return match next(4) {
                        0 => u32::MAX - next(3) as u32,
                        1 => 1 + next(u64::from(u32::MAX)) as u32,
                        2 => 0,
                        _ => 1 + next(u64::from(u32::MAX) / 400) as u32,
                    };
                }
                match next(20) {
                    0 => 0,
                    1 => 1 + next(capacity.max(1) * 2) as u32,
                    2 => 1 + next(capacity.max(1) / 2 + 1) as u32,
                    _ => 1 + next(6) as u32,
                }
            };
            for step in 0..2_000 {
                let ctx = format!("round {round} step {step} cap {capacity}");
                let mut stray = false;
                match next(12) {
                    0..=3 => {
                        let w = weigh(&mut next);
                        let id = free.pop().unwrap_or_else(|| {
                            fresh += 1;
                            fresh - 1
                        });
                        let hash = (1 + next(capacity.min(1_000) * 3 + 3))
                            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        fh.insert(&mut fast, id, hash, w);
                        sh.insert(&mut slow, id, hash, w);
                        assert!(resident.insert(id, w).is_none());
                        weight += u64::from(w);
                    }
                    4..=6 if !resident.is_empty() => {
                        let ids: Vec<u32> = resident.keys().copied().collect();
                        let id = ids[next(ids.len() as u64) as usize];
                        fh.bump(id);
                        sh.bump(id);
                        fast.on_access();
                        slow.on_access();
                    }
                    7 if !resident.is_empty() => {
                        let mut ids: Vec<u32> = resident.keys().copied().collect();
                        ids.sort_unstable();
                        let id = ids[next(ids.len() as u64) as usize];
                        let w = weigh(&mut next);
                        weight = weight - u64::from(resident[&id]) + u64::from(w);
                        resident.insert(id, w);
                        fh.bump(id);
                        sh.bump(id);
                        fast.on_update(id, w);
                        slow.on_update(id, w);
                    }
                    8 if !resident.is_empty() => {
                        let mut ids: Vec<u32> = resident.keys().copied().collect();
                        ids.sort_unstable();
                        let id = ids[next(ids.len() as u64) as usize];
                        weight -= u64::from(resident.remove(&id).unwrap());
                        free.push(id);
                        fast.on_remove(id, &mut fh);
                        slow.on_remove(id, &mut sh);
                    }
                    9 => stray = true,
                    _ => {}
                }
                let evict_one = |fast: &mut Adaptive,
                                 slow: &mut Adaptive,
                                 fh: &mut TestHits,
                                 sh: &mut TestHits,
                                 resident: &mut std::collections::HashMap<u32, u32>,
                                 weight: &mut u64,
                                 free: &mut Vec<u32>|
                 -> bool {
                    let a = fast.evict(fh);
                    // With an adaptive window there is no textbook: the
                    // second policy then runs the same code (a check that
                    // it is deterministic).
                    let b = if adapt {
                        slow.evict(sh)
                    } else {
                        slow.evict_textbook(sh)
                    };
                    assert_eq!(a, b, "{ctx}: different victims");
                    assert!(
                        !extreme || fast.window_max >= fast.window_min,
                        "{ctx}: window {} under its least {}",
                        fast.window_max,
                        fast.window_min
                    );
                    assert!(
                        fast.window_max <= fast.window_cap.max(fast.window_min),
                        "{ctx}: window {} over its cap {}",
                        fast.window_max,
                        fast.window_cap
                    );
                    let Some(id) = a else {
                        assert!(resident.is_empty(), "{ctx}: None with entries left");
                        return false;
                    };
                    let w = resident
                        .remove(&id)
                        .unwrap_or_else(|| panic!("{ctx}: evicted {id} not resident"));
                    *weight -= u64::from(w);
                    free.push(id);
                    assert!(
                        fast.protected_weight <= fast.protected_cap || fast.protected.len() <= 1,
                        "{ctx}: protected {} over its cap {}",
                        fast.protected_weight,
                        fast.protected_cap
                    );
                    true
                };
                while weight > capacity {
                    if !evict_one(
                        &mut fast,
                        &mut slow,
                        &mut fh,
                        &mut sh,
                        &mut resident,
                        &mut weight,
                        &mut free,
                    ) {
                        break;
                    }
                    evictions += 1;
                }
                if stray {
                    evict_one(
                        &mut fast,
                        &mut slow,
                        &mut fh,
                        &mut sh,
                        &mut resident,
                        &mut weight,
                        &mut free,
                    );
                }
                let linked = check_lists(&fast, &ctx);
                check_lists(&slow, &ctx);
                assert_eq!(
                    linked,
                    resident.keys().copied().collect(),
                    "{ctx}: lists hold other ids than the resident ones"
                );
                let sum: u64 = resident.values().map(|&w| u64::from(w)).sum();
                assert_eq!(sum, weight);
                assert_eq!(fast.snapshot(), slow.snapshot(), "{ctx}: lists differ");
                assert_eq!(fh.0, sh.0, "{ctx}: hits differ");
            }
        }
        assert!(
            evictions > if extreme { 1_000 } else { 15_000 },
            "only {evictions} evictions exercised"
        );
    }

    /// Unweighted, a stray eviction (no insert: `evict_elsewhere`, or two
    /// writers racing) contests the window's oldest through
    /// `contest_more`, which may leave the window one short; the insert
    /// that follows needs no eviction and refills it, so the window is back
    /// at its share (guard: unweighted caches keep their window).
    #[test]
    fn a_stray_eviction_does_not_leave_an_unweighted_window_short() {
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100, false, false);
        assert_eq!(p.window_max, 1);
        let mut resident = std::collections::HashSet::new();
        let mut id = 0;
        let mut insert = |p: &mut Adaptive,
                          hits: &mut TestHits,
                          resident: &mut std::collections::HashSet<u32>| {
            hits.insert(p, id, hash(id), 1);
            resident.insert(id);
            id += 1;
            while resident.len() > 100 {
                let v = p.evict(hits).unwrap();
                assert!(resident.remove(&v));
            }
        };
        for _ in 0..300 {
            insert(&mut p, &mut hits, &mut resident);
        }
        assert_eq!(
            p.window_weight, 1,
            "steady state: the window holds its share"
        );
        // One stray eviction.
        let v = p.evict(&mut hits).unwrap();
        assert!(resident.remove(&v));
        // Refill by one (no eviction needed), then steady state again.
        insert(&mut p, &mut hits, &mut resident);
        let mut short = 0;
        for _ in 0..1_000 {
            insert(&mut p, &mut hits, &mut resident);
            short += usize::from(p.window_weight < p.window_max);
        }
        assert_eq!(
            short, 0,
            "window short of its share after {short} of 1000 inserts"
        );
    }

    /// How full the window is in a full weighted shard (weights 1–190, as
    /// the benches' weighted traces), sampled after each insert's
    /// evictions: window contests ([`Adaptive::contest_window`]) take from
    /// the window between inserts, but do not drain it.
    #[test]
    fn the_window_of_a_weighted_shard_stays_near_its_share() {
        let hash = |id: u64| id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = draws(0x2545_f491_4f6c_dd1d_u64);
        for capacity in [2_000u64, 20_000, 200_000] {
            let mut hits = TestHits::default();
            let mut p = Adaptive::new(capacity, false, true);
            let mut resident = std::collections::HashMap::new();
            let (mut weight, mut fresh, mut free) = (0u64, 0u32, Vec::new());
            let (mut sum, mut samples, mut empty) = (0u64, 0u64, 0u64);
            for step in 0..60_000 {
                let w = 1 + next(190) as u32;
                let id = free.pop().unwrap_or_else(|| {
                    fresh += 1;
                    fresh - 1
                });
                hits.insert(&mut p, id, hash(next(capacity)), w);
                resident.insert(id, w);
                weight += u64::from(w);
                while weight > capacity {
                    let v = p.evict(&mut hits).unwrap();
                    weight -= u64::from(resident.remove(&v).unwrap());
                    free.push(v);
                }
                if step > 20_000 {
                    sum += p.window_weight;
                    samples += 1;
                    empty += u64::from(p.window.is_empty());
                }
            }
            let mean = sum as f64 / samples as f64;
            let share = p.window_max as f64;
            // Entries of up to 190 units overflow a share of 20 alone; at
            // 20,000 units the window holds about 39 of 200 on average
            // (empty after half the inserts: see `contest_window`), at
            // 200,000 about 990 of 2,000, empty after 5 % of the inserts
            // (1,815 before the sketch's table got half a block more per
            // entry, 1,640 before a regrown sketch kept the residents'
            // estimates). The window swings widely on this one stream
            // (339–2,526 sampled every 4,000 steps, 743–1,964 before the
            // carried estimates), so these means are its path more than a
            // steady level. The guard is against a window drained for good.
            let floor = match capacity {
                2_000 => 0.0,
                20_000 => 0.1 * share,
                _ => 0.4 * share,
            };
            assert!(
                mean >= floor,
                "capacity {capacity}: mean window weight {mean:.1} of {share}, \
                 empty after {:.1} % of inserts",
                100.0 * empty as f64 / samples as f64
            );
        }
    }

    /// `pending` is cleared only by inserts, removals and weight updates,
    /// so it outlives the insert's round: a later eviction with no insert
    /// (`evict_elsewhere` from another shard's writer, after reads under the
    /// shared lock) pops it. A pending entry read meanwhile is skipped with
    /// `take_hits`, which consumes the read: it is neither promoted nor left
    /// with the hit that `promote_probation_tail` would promote it for at
    /// the tail ("a hit in probation promotes" is lost).
    #[test]
    fn regression_a_leftover_pending_entry_read_since_is_promoted() {
        let hash = |id: u32| u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(100, false, true);
        let mut resident = std::collections::HashSet::new();
        for id in 0..150 {
            hits.insert(&mut p, id, hash(id), 1);
            resident.insert(id);
            while resident.len() > 100 {
                assert!(resident.remove(&p.evict(&mut hits).unwrap()));
            }
        }
        // Three removals from probation make room: three inserts need no
        // eviction and the window grows to 4 entries.
        for _ in 0..3 {
            let id = p.probation.back().unwrap();
            p.on_remove(id, &mut hits);
            resident.remove(&id);
        }
        for id in 150..153 {
            hits.insert(&mut p, id, hash(id), 1);
            resident.insert(id);
        }
        // One more insert: one eviction, whose window overflow moves 4
        // entries to probation; the newest contests, 3 stay pending.
        hits.insert(&mut p, 153, hash(153), 1);
        resident.insert(153);
        assert!(resident.remove(&p.evict(&mut hits).unwrap()));
        assert_eq!(p.pending.len(), 3, "pending after the round");
        let read = *p.pending.last().unwrap();
        // Read under the shared lock after the round.
        hits.bump(read);
        // Another shard's writer evicts one entry here.
        let evicted = p.evict(&mut hits).unwrap();
        assert_ne!(evicted, read);
        assert!(
            p.meta(read).segment == Segment::Protected || hits.0[read as usize] > 0,
            "the read of {read} was consumed and it stays in {:?} unpromoted",
            p.meta(read).segment
        );
    }

    /// One shard's share of a loop slightly longer than the cache: a
    /// Zipf(1.0) sample of 30,000 requests over 100,000 keys, of which the
    /// keys one shard of eight would get (about 3,750 requests, some 1,300
    /// keys), replayed to 125,000 requests at 1,250 entries. After the first
    /// tenth the shard must miss about as rarely as it will for good: refused
    /// keys come back a pass later, but probation's end is busy with keys
    /// the next pass reads, so their returns must not grow the window or
    /// admit them (`Adaptive::main_end_busier`). Before, the window's steps
    /// and the recalled keys displaced keys that came back in turn, and
    /// the later nine tenths missed 0.026 (one tenth of them 0.054), now
    /// 0.008; the sampled pass fixed, the figures are deterministic.
    #[test]
    fn a_shard_converges_on_a_loop_slightly_longer_than_the_cache() {
        let keys = 100_000u32;
        let mut cdf = Vec::with_capacity(keys as usize);
        let mut total = 0.0;
        for rank in 1..=keys {
            total += 1.0 / f64::from(rank);
            cdf.push(total);
        }
        let mut draw = draws(0x1234_5678_9abc_def1);
        let pass: Vec<u32> = (0..30_000)
            .map(|_| {
                let u = draw(1 << 40) as f64 / (1u64 << 40) as f64 * total;
                cdf.partition_point(|&c| c < u) as u32
            })
            .filter(|key| key % 8 == 0)
            .collect();
        let cap = 1_250u32;
        let hash = |key: u32| u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut hits = TestHits::default();
        let mut p = Adaptive::new(u64::from(cap), false, false);
        let mut resident = vec![false; keys as usize];
        let mut held = 0u32;
        let len = 125_000;
        let mut later_misses = 0usize;
        for i in 0..len {
            // Keys stand for their ids (each key has one slot).
            let key = pass[i % pass.len()];
            if resident[key as usize] {
                hits.bump(key);
                continue;
            }
            if i >= len / 10 {
                later_misses += 1;
            }
            hits.insert(&mut p, key, hash(key), 1);
            resident[key as usize] = true;
            held += 1;
            while held > cap {
                let evicted = p.evict(&mut hits).unwrap();
                resident[evicted as usize] = false;
                held -= 1;
            }
        }
        let later = later_misses as f64 / (len - len / 10) as f64;
        assert!(later < 0.012, "the later nine tenths missed {later:.4}");
    }
}
