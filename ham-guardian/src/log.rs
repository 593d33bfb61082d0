//! ham's own log: one line per event on stderr, `ham[INSTANCE]: …` from the HAM and
//! `ham[INSTANCE] guardian: …` from the Guardian, at a verbosity both roles share. (The
//! process log, `proclog`, and the syslog line per restart are records of what happened to
//! entities, not this.)

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// 0 quiet, 1 normal, 2 and up also each request (`ham_verbose`, the `verbose` request).
/// Kept in the state segment so that a successor logs alike.
static VERBOSITY: AtomicU32 = AtomicU32::new(1);

pub fn verbosity() -> u32 {
    VERBOSITY.load(Relaxed)
}

pub fn set_verbosity(v: u32) {
    VERBOSITY.store(v, Relaxed);
}

/// Writes one line to stderr in a single `write`, so the lines of the HAM and its Guardian
/// (which share stderr) never interleave mid-line.
pub fn line(prefix: std::fmt::Arguments, msg: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("{prefix}: {msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A line from the HAM of `instance`, unless quiet.
pub fn ham(instance: &str, msg: std::fmt::Arguments) {
    if verbosity() > 0 {
        line(format_args!("ham[{instance}]"), msg);
    }
}

/// A line from the HAM that only a verbose log shows.
pub fn ham_verbose(instance: &str, msg: std::fmt::Arguments) {
    if verbosity() > 1 {
        line(format_args!("ham[{instance}]"), msg);
    }
}

/// A line from the Guardian of `instance`, unless quiet.
pub fn guardian(instance: &str, msg: std::fmt::Arguments) {
    if verbosity() > 0 {
        line(format_args!("ham[{instance}] guardian"), msg);
    }
}
