//! The atomics the ring and its doorbell use: the standard library's, or, in a
//! `--cfg loom` build, loom's, so that `tests/loom_ring.rs` can explore every interleaving
//! of producers and the consumer (`RUSTFLAGS="--cfg loom" cargo test -p ham-core --release
//! --test loom_ring`).

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
