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

thread_local! {
    /// This thread's lines held back (see [`hold`]).
    static HELD: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Holds this thread's lines back until [`write_held`]. The HAM holds what it says about a
/// death until the replacement is released, and writes it while that process execs: the
/// lines come out in the same order, a fraction of a millisecond later, and the restart
/// does not wait for them.
pub fn hold() {
    HELD.with(|h| {
        h.borrow_mut().get_or_insert_with(String::new);
    });
}

/// Writes the lines held since [`hold`], in one `write`, and stops holding.
pub fn write_held() {
    use std::io::Write;
    if let Some(text) = HELD.with(|h| h.borrow_mut().take())
        && !text.is_empty()
    {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// Writes one line to stderr in a single `write`, so the lines of the HAM and its Guardian
/// (which share stderr) never interleave mid-line; or holds it (see [`hold`]).
pub fn line(prefix: std::fmt::Arguments, msg: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("{prefix}: {msg}\n");
    let held = HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(buf) => {
            buf.push_str(&line);
            true
        }
        None => false,
    });
    if !held {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
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
