//! The `ham` daemon and `hamctl`: configuration, the event loop, the control socket and
//! the status view. The binaries in `src/bin` are thin wrappers around this library.
//!
//! `unsafe` is denied here except in [`sys`], which wraps the few calls no safe crate offers.
#![deny(unsafe_code)]

pub mod actions;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod cores;
pub mod daemon;
pub mod failpoint;
pub mod guardian;
pub mod handoff;
pub mod log;
pub mod metrics;
pub mod procfs;
pub mod proclog;
pub mod respawned;
pub mod status;
pub mod sys;

/// Exit codes shared by `ham` and `hamctl` (documented in the README).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The command ran and failed (unknown entity, refused request, invalid configuration).
    pub const FAILED: i32 = 1;
    /// Bad command-line usage.
    pub const USAGE: i32 = 2;
    /// No running instance could be reached, or a system call failed.
    pub const UNAVAILABLE: i32 = 3;
}

pub use ham_core::clock::{mono_ns, unix_ns};
