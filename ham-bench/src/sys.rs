//! Small system helpers: clocks, signals, reaping, and what `/proc` tells about a process.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub type Result<T> = std::result::Result<T, String>;

/// CLOCK_MONOTONIC in nanoseconds (the clock the child stamps with).
pub use ham_core::clock::mono_ns;

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Sleeps until CLOCK_MONOTONIC reaches `t` (ns); returns at once if it has.
pub fn sleep_until(t: u64) {
    let now = mono_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// Sleeps `secs` in short steps, stopping early (with an error) on SIGINT/SIGTERM.
pub fn sleep_interruptible(secs: f64) -> Result<()> {
    let end = mono_ns() + (secs * 1e9) as u64;
    loop {
        check_interrupted()?;
        let now = mono_ns();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep(Duration::from_nanos((end - now).min(100_000_000)));
    }
}

/// Sends `sig` to `pid`; false if it could not be sent.
pub fn kill(pid: i32, sig: i32) -> bool {
    if pid <= 0 {
        return false; // never a process group or "everyone"
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 names one process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Smaller timer slack for this thread, so short sleeps in polling loops stay short.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument and only affects this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// Raises RLIMIT_NOFILE's hard limit to at least `n` where this process may (root), for
/// what it starts: ham holds a pidfd per running entity, and at times a second one in
/// flight to its Guardian, so 10,000 entities need more than a common 20,000 (ham warns at
/// start when its limit is short). Returns the hard limit in force.
pub fn raise_nofile_hard(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one struct passed, alive for both.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_max < n {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_cur,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return n;
            }
        }
    }
    lim.rlim_max
}

/// Makes this process the reaper of orphaned descendants. PID 1 of some containers never
/// reaps, and a takeover orphans the killed HAM's children; without this they would stay
/// zombies for good. [`reap`] collects them.
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
}

/// Reaps every exited child (our own and adopted orphans) without blocking.
pub fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

pub fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout_ns` for `fd` to become readable.
pub fn poll_readable(fd: i32, timeout_ns: u64) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout_ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT/SIGTERM/SIGHUP set a flag that the loops check, so the bench unwinds and cleans up.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_interrupt as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` the bench uses.
#[derive(Debug, Clone)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub utime: u64,
    pub stime: u64,
    pub start_time: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let f: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // f[0] is field 3 (state); field k is f[k - 3].
    Some(Stat {
        comm,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// True if `pid` runs (not a zombie), and started at `start_time` when one is given.
pub fn alive(pid: i32, start_time: Option<u64>) -> bool {
    match stat(pid) {
        Some(s) => {
            !matches!(s.state, 'Z' | 'X' | 'x') && start_time.is_none_or(|t| t == s.start_time)
        }
        None => false,
    }
}

/// The executable of `pid`, without the " (deleted)" mark of a replaced file.
pub fn exe(pid: i32) -> Option<PathBuf> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = p.to_string_lossy();
    Some(match s.strip_suffix(" (deleted)") {
        Some(t) => PathBuf::from(t),
        None => p,
    })
}

pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn environ_has(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| b.split(|&c| c == 0).any(|s| s == entry.as_bytes()))
        .unwrap_or(false)
}

/// Every pid in /proc with its stat.
pub fn all_processes() -> Vec<(i32, Stat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// Live children of `ppid` whose command name is `comm`.
pub fn children_named(ppid: i32, comm: &str) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, s)| s.ppid == ppid && s.comm == comm && s.state != 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// Sums over a set of processes: memory from smaps_rollup, CPU and wake-ups.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub nproc: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// utime + stime, clock ticks.
    pub ticks: u64,
    /// On-CPU time from /proc/PID/schedstat, ns (finer than ticks).
    pub sched_ns: u64,
    pub voluntary: u64,
    pub nonvoluntary: u64,
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_ascii_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn sample(pids: &[i32]) -> Sample {
    let mut s = Sample::default();
    for &pid in pids {
        let (Some(st), Ok(status), Ok(roll)) = (
            stat(pid),
            std::fs::read_to_string(format!("/proc/{pid}/status")),
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")),
        ) else {
            continue;
        };
        s.nproc += 1;
        s.rss_kib += field_kib(&roll, "Rss:");
        s.pss_kib += field_kib(&roll, "Pss:");
        s.ticks += st.utime + st.stime;
        s.sched_ns += std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()
            .and_then(|t| t.split_ascii_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        s.voluntary += field_kib(&status, "voluntary_ctxt_switches:");
        s.nonvoluntary += field_kib(&status, "nonvoluntary_ctxt_switches:");
    }
    s
}

pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// `which NAME`: the first executable file called NAME on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
