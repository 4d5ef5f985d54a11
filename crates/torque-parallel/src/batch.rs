//! Batching: size- and time-bounded batches for a sink, and an adaptive
//! batch sizer.
//!
//! A sink whose cost is `overhead + n × per_item` — a multi-row `INSERT`, a
//! pipelined Redis write, a bulk HTTP call — moves far more items per second
//! in batches, at the price of latency. [`BatchSizer`] (sans-IO, no runtime)
//! learns `overhead` and `per_item` from the batches it sees and picks the
//! biggest batch that stays within a latency target — capped, when items
//! arrive at their own pace, at a few times the keep-up size (about 2.5 ×
//! when the items dominate the cost; see [`BatchSizer`]) so that one
//! big write does not hold up everything queued behind it. With the `tokio`
//! feature, `Batcher` puts a bounded queue in front of a sink and writes a
//! batch when it is full or its first item has waited `max_linger`; its
//! size is fixed or chosen by a `BatchSizer` (then, by default, a partial
//! batch is written as soon as the sink is free).

#[cfg(feature = "tokio")]
mod batcher;
mod sizer;

#[cfg(feature = "tokio")]
pub use batcher::{
    BatchDriver, BatchStats, Batcher, BatcherBuilder, Built, Closed, FlushError, Receipt, Sink,
    TrySendError,
};
pub use sizer::{BatchSizer, BatchSizerBuilder, CostModel};
