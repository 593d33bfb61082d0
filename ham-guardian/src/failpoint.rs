//! Failpoints: named places in the HAM's write paths where a test can make it die by
//! SIGKILL, exactly as an operator's `kill -9` would.
//!
//! Compiled in debug builds only (`cfg(debug_assertions)`); in a release build [`hit`] is
//! an empty inline function. A failpoint fires when `HAM_FAILPOINT` names it, the file
//! `$HAM_FAILPOINT_FILE.armed` exists, and `$HAM_FAILPOINT_FILE` does not: it creates that
//! file (so it fires once, whichever process reaches it) and kills its own process (a
//! Guardian's failpoint kills its HAM).

/// Every failpoint, in the order a restart passes them.
pub const ALL: &[&str] = &[
    "exit:before-record",
    "exit:after-record",
    "spawn:after-starting",
    "spawn:after-fork",
    "spawn:after-record-pid",
    "spawn:after-release",
    "spawn:after-running",
    "publish:invalidated",
    "publish:half-written",
    "stop:after-record",
    "stop:after-signal",
    "guardian:after-fork",
    "promote:after-epoch",
    "promote:after-guardian",
];

/// Failpoints on the condition-run paths (reached only when a condition or an escalation
/// runs; tested by their own scenarios).
pub const RUNS: &[&str] = &[
    "escalate:before-journal",
    "escalate:after-journal",
    "run:after-begin",
    "run:after-exec-pid",
];

/// Failpoints of the checkpoint store: ham dies writing a durable file, after the new file
/// is written and synced and before it replaces the old one.
pub const PSS: &[&str] = &["pss:before-rename"];

/// A failpoint on the control path: the HAM dies holding a request it accepted, before it
/// answers (what the SDK's retries are tested against).
pub const CONTROL: &[&str] = &["control:request"];

/// Failpoints that make a step fail (an error, not a death) for as long as they are armed:
/// what a transient shortage (no process, no memory) does.
pub const FAILURES: &[&str] = &["clients:setup", "guardian:start"];

/// Failpoints that make a step slow for as long as they are armed, by the milliseconds
/// written in `$HAM_FAILPOINT_FILE.armed`: `exit:slow`, the handling of each death (the pace
/// of a HAM working through a storm at 10,000 entities, on a small box).
pub const SLOWS: &[&str] = &["exit:slow"];

/// Failpoints in the Guardian: reached there, the Guardian kills its HAM (SIGKILL, then waits
/// for the exit) instead of itself. `guardian:beat-unread`: the HAM is stopped (SIGSTOP)
/// before the Guardian beats and killed after, so it dies with the beat unread, and the
/// Guardian's next read of the handoff socket reports ECONNRESET before what the HAM handed
/// over.
pub const GUARDIAN: &[&str] = &["guardian:beat-unread"];

/// A failpoint that corrupts instead of killing: `guardian:scribble-header`, reached by a
/// Guardian right before it maps the state segment, overwrites the segment's magic (as a
/// stray write landing between the HAM's check of its header and the Guardian's look
/// would). Fires once, in a Guardian of any HAM but the one `.armed` names.
pub const SCRIBBLES: &[&str] = &["guardian:scribble-header"];

/// A failpoint that leaves the Guardian deaf to its HAM's pidfd while it is armed (looked at
/// as the Guardian starts): `guardian:deaf-pidfd`. The HAM's death then reaches it only
/// through the HAM's lock (`sys::robust`), which a test shows is enough, takeover after
/// takeover.
pub const DEAF: &[&str] = &["guardian:deaf-pidfd"];

/// The environment variables a failpoint reads; ham removes them from entities' environment.
pub const ENV: &[&str] = &["HAM_FAILPOINT", "HAM_FAILPOINT_FILE"];

#[cfg(debug_assertions)]
pub fn hit(name: &'static str) {
    if fires(name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Whether the failpoint `name` fires now (once, whichever process reaches it first): the
/// caller then does what it stands for. [`hit`] kills its own process; a Guardian's
/// failpoint ([`GUARDIAN`]) kills its HAM.
#[cfg(debug_assertions)]
pub fn fires(name: &'static str) -> bool {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();
    let Some((want, file)) = ARMED.get_or_init(|| {
        let name = std::env::var("HAM_FAILPOINT").ok()?;
        let file = std::env::var_os("HAM_FAILPOINT_FILE")?;
        Some((name, file.into()))
    }) else {
        return false;
    };
    if want != name {
        return false;
    }
    let mut armed = file.clone().into_os_string();
    armed.push(".armed");
    if !std::path::Path::new(&armed).exists() {
        return false;
    }
    // Created once: whoever creates it fires.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .is_ok()
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fires(_name: &'static str) -> bool {
    false
}

/// [`fires`] in the Guardian of HAM `ham_pid`, unless `$HAM_FAILPOINT_FILE.armed` names that
/// HAM's pid (a test that arms it while the first Guardian may not have beaten yet spares it).
#[cfg(debug_assertions)]
pub fn fires_in_guardian_of(name: &'static str, ham_pid: i32) -> bool {
    let spared = std::env::var_os("HAM_FAILPOINT_FILE")
        .map(|f| {
            let mut armed = f;
            armed.push(".armed");
            armed
        })
        .and_then(|a| std::fs::read_to_string(a).ok())
        .is_some_and(|t| t.trim() == ham_pid.to_string());
    !spared && fires(name)
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fires_in_guardian_of(_name: &'static str, _ham_pid: i32) -> bool {
    false
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

/// Whether the step `name` (one of [`FAILURES`], or [`DEAF`]) is to fail now: `HAM_FAILPOINT` names it
/// and `$HAM_FAILPOINT_FILE.armed` exists. Debug builds only.
#[cfg(debug_assertions)]
pub fn fails(name: &'static str) -> bool {
    let (Ok(want), Some(file)) = (
        std::env::var("HAM_FAILPOINT"),
        std::env::var_os("HAM_FAILPOINT_FILE"),
    ) else {
        return false;
    };
    let mut armed = file;
    armed.push(".armed");
    want == name && std::path::Path::new(&armed).exists()
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_name: &'static str) -> bool {
    false
}

/// [`SLOWS`]: if `HAM_FAILPOINT` names `name` and `$HAM_FAILPOINT_FILE.armed` holds a
/// number of milliseconds, this step takes that much longer. Debug builds only.
#[cfg(debug_assertions)]
pub fn slow(name: &'static str) {
    let (Ok(want), Some(file)) = (
        std::env::var("HAM_FAILPOINT"),
        std::env::var_os("HAM_FAILPOINT_FILE"),
    ) else {
        return;
    };
    if want != name {
        return;
    }
    let mut armed = file;
    armed.push(".armed");
    if let Some(ms) = std::fs::read_to_string(armed)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn slow(_name: &'static str) {}

/// [`SCRIBBLES`]: if `guardian:scribble-header` fires in this Guardian of `ham_pid`, the
/// magic of the segment `name` is overwritten.
#[cfg(debug_assertions)]
pub fn scribble_header(name: &str, ham_pid: i32) {
    use std::os::unix::fs::FileExt;
    if !fires_in_guardian_of("guardian:scribble-header", ham_pid) {
        return;
    }
    let fd = rustix::shm::open(name, rustix::shm::OFlags::RDWR, rustix::fs::Mode::empty());
    if let Ok(fd) = fd {
        let _ = std::fs::File::from(fd).write_all_at(&[0xA5; 8], 0);
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn scribble_header(_name: &str, _ham_pid: i32) {}
