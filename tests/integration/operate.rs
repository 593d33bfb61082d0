//! What an operator sees: process names in `ps`/`top`, `hamctl`'s answers to mistakes.

use crate::util::*;

/// `/proc/PID/cmdline` as `ps` shows it (NULs as spaces, trailing ones dropped), and `comm`.
fn names(pid: i32) -> (String, String) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let shown = String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .trim_end()
        .to_owned();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    (shown, comm.trim_end().to_owned())
}

#[test]
fn the_pair_is_named_ham_hams_and_guardian_in_ps_and_top_and_after_a_takeover() {
    let mut ham = Ham::start("names", &sleeper("a"));
    let s = ham.wait_for("a running", |s| running(s, "a"));
    let (h, g) = (
        s["ham"]["pid"].as_i64().unwrap() as i32,
        s["guardian"]["pid"].as_i64().unwrap() as i32,
    );
    let n = ham.name.clone();
    assert_eq!(names(h), (format!("ham: HAM {n}"), "ham".into()));
    assert_eq!(names(g), (format!("ham: guardian {n}"), "ham".into()));
    sigkill(h);
    assert_eq!(ham.wait_exit(), -1);
    let s = ham.wait_for("the guardian promoted", |s| {
        s["ham"]["pid"] == g && s["guardian"]["alive"] == true
    });
    let g2 = s["guardian"]["pid"].as_i64().unwrap() as i32;
    // The promoted Guardian's command line no longer names a Guardian or a dead pid.
    assert_eq!(names(g), (format!("ham: HAM {n}"), "ham".into()));
    assert_eq!(names(g2), (format!("ham: guardian {n}"), "ham".into()));
}
