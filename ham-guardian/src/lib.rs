//! The `ham` daemon and `hamctl`: configuration, the event loop, the control socket and
//! the status view. The binaries in `src/bin` are thin wrappers around this library.
//!
//! `unsafe` is denied here except in [`sys`], which wraps the few calls no safe crate offers.
#![deny(unsafe_code)]

pub mod actions;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod daemon;
pub mod failpoint;
pub mod guardian;
pub mod handoff;
pub mod procfs;
pub mod proclog;
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

/// Writes one log line to stderr in a single `write`, so the lines of the HAM and its
/// Guardian (which share stderr) never interleave mid-line.
pub fn log_line(prefix: std::fmt::Arguments, msg: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("{prefix}: {msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Wall-clock nanoseconds since the Unix epoch (log lines and display only).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
