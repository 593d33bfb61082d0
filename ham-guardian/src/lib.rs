//! The `ham` daemon and `hamctl`: configuration, the event loop, the control socket and
//! the status view. The binaries in `src/bin` are thin wrappers around this library.
//!
//! `unsafe` is denied here except in [`sys`], which wraps the few calls no safe crate offers.
#![deny(unsafe_code)]

pub mod actions;
pub mod cgroup;
pub mod cli;
pub mod cold;
pub mod config;
pub mod control;
pub mod cores;
pub mod daemon;
pub mod failpoint;
pub mod guardian;
pub mod handoff;
pub mod log;
pub mod metrics;
pub mod outlog;
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

/// The UTC date and time of `secs` since the Unix epoch: (year, month, day, hour, minute,
/// second), by Howard Hinnant's civil-from-days algorithm.
pub fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}
