//! `ham-core`: what the HAM, its Guardian, `hamctl` and the SDK agree on.
//!
//! * [`layout`] — the `#[repr(C)]` state segment: header and entity slots, and the A/B
//!   record protocol that survives a writer killed between any two instructions.
//! * [`journal`] — condition runs in progress, as records a successor HAM carries on.
//! * [`segment`] — creating, attaching and validating the named shared-memory object.
//! * [`policy`] — pure decisions (state, event, time) → what to do; no processes, no clocks.
//! * [`lifecycle`] — one entity's lifecycle as a pure table: (state, wanted, input) → (state,
//!   wanted, effects), written out whole in `tests/lifecycle.table`.
//! * [`engine`] — the recovery policies (switch preset, NX-OS stages, Erlang intensity) as
//!   pure decisions over a fixed-size memory; not yet wired into the daemon.
//! * [`blob`] — the run-time definitions document (A/B copies of variable length).
//! * [`client`] — the client segment: heartbeat slots and the detector ring (MPSC, crash-
//!   proof, validated by its consumer).
//! * [`lane`] — a detector ring of one producer's own (SPSC, private, no locked
//!   instruction per event), for producers that push many events.
//! * [`protocol`] — the control socket's JSON request and response types.
//! * [`duration`] — the duration syntax used in configuration files.
//! * [`clock`] — the monotonic and wall clocks, read the same way everywhere.
//! * [`paths`] — where an instance's things are (names, defaults, its run directory).
//!
//! `unsafe` is denied here except in [`shm`] (the shared-memory contract: which types may be
//! shared, the one checked view of a mapping, and making a mapping writable), where a mapping is made, and the one `madvise` of
//! [`lane::ForkGuard`].
#![deny(unsafe_code)]

pub mod beat;
pub mod blob;
pub mod client;
pub mod clock;
pub mod duration;
pub mod engine;
pub mod journal;
#[cfg(not(loom))]
pub mod lane;
pub mod layout;
pub mod lifecycle;
pub mod mts;
pub mod paths;
pub mod policy;
pub mod protocol;
pub mod pss;
pub mod segment;
pub mod shm;
pub mod sync;

pub use layout::{EntityRecord, EntityState, LastExit};
pub use segment::{Segment, SegmentError};
