//! Who runs first when woken: the scheduling of the threads of a takeover.
//!
//! A takeover is a chain of wake-ups (the HAM's death wakes the Guardian's lock watcher,
//! whose ring wakes the Guardian's loop), and on a box this small each link can land on the
//! CPU where the dead HAM is still being torn down (0.5 ms of the kernel closing its
//! descriptors and unmapping its memory, not preempted there): measured on the 2-CPU
//! machine of `docs/BENCHMARKS.md`, the loop saw the ring a median 0.28 ms after it was
//! rung, up to 1.4 ms. So:
//!
//! * the lock watcher sleeps at `SCHED_FIFO` priority 1 ([`run_first`]): woken once, at the
//!   HAM's death, it is put on a CPU at once;
//! * just before it rings, it raises the Guardian's loop the same way, and the loop puts
//!   back what it had ([`Attr::restore`]: policy, nice value, slice, as the operator set
//!   them) as soon as it sees the HAM gone, before any takeover work;
//! * then the watcher runs as `SCHED_IDLE` ([`give_way`]).
//!
//! `SCHED_FIFO` is not inherited (`SCHED_FLAG_RESET_ON_FORK`), and nothing forks while it
//! holds. Each setting is a request: refused (no `CAP_SYS_NICE`), ham runs as before.

/// `struct sched_attr` of `sched_setattr(2)`, as far as its `SCHED_FLAG_UTIL_CLAMP` fields
/// (the size it says is the size the kernel reads or writes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For `SCHED_OTHER` (6.12+): the time slice asked for, in ns (0: the default).
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

const ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;

fn set(tid: i32, attr: &SchedAttr) -> bool {
    // SAFETY: `sched_setattr` reads `attr`, a valid `sched_attr` whose `size` field is its
    // size; it changes only the scheduling of thread `tid` (0: the caller).
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    r == 0
}

fn set_policy(tid: i32, policy: i32, priority: u32) -> bool {
    set(
        tid,
        &SchedAttr {
            size: ATTR_SIZE,
            policy: policy as u32,
            flags: SCHED_FLAG_RESET_ON_FORK,
            priority,
            ..SchedAttr::default()
        },
    )
}

/// A thread's scheduling as it was, to be put back by [`Attr::restore`].
pub struct Attr(SchedAttr);

impl Attr {
    /// The calling thread's (`None` if the kernel would not say).
    pub fn current() -> Option<Self> {
        let mut attr = SchedAttr::default();
        // SAFETY: `sched_getattr` writes at most `ATTR_SIZE` bytes (the size of `attr`, on
        // our stack and valid for writes) about the calling thread (0).
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                &raw mut attr,
                ATTR_SIZE as libc::c_uint,
                0 as libc::c_uint,
            )
        };
        (r == 0).then(|| {
            attr.size = ATTR_SIZE;
            // Utilisation clamps it may report are not asked back (they need rights of
            // their own): the policy, nice value, slice and reset-on-fork are.
            attr.flags &= SCHED_FLAG_RESET_ON_FORK;
            Self(attr)
        })
    }

    /// Puts the calling thread back as it was. Whether the kernel took it.
    pub fn restore(&self) -> bool {
        set(0, &self.0)
    }
}

/// Thread `tid` (0: the calling one) at `SCHED_FIFO` priority 1, not inherited by what it
/// forks. Whether the kernel took it (it needs `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at
/// least 1).
pub fn run_first(tid: i32) -> bool {
    set_policy(tid, libc::SCHED_FIFO, 1)
}

/// Makes the calling thread run only on a CPU nothing else wants (`SCHED_IDLE`), and gives
/// up its CPU now: the lock watcher once it has rung, so that what it does then never
/// delays the takeover. The yield is what makes it at once: the thread its ring woke may be
/// queued on this CPU, and a change of policy alone does not make the running thread give
/// way (the loop saw the ring a median 0.28 ms after it, 0.08 ms with the yield).
pub fn give_way() {
    let _ = set_policy(0, libc::SCHED_IDLE, 0);
    std::thread::yield_now();
}

/// The calling thread's policy and static priority (120 + its nice value, for a normal
/// thread), from `/proc/thread-self/sched` (for the tests).
#[cfg(test)]
pub(crate) fn own_policy_and_prio() -> Option<(i64, i64)> {
    let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    Some((field("policy")?, field("prio")?))
}

/// Sets the calling thread's nice value (raising it needs no privilege; for the tests).
#[cfg(test)]
pub(crate) fn set_own_nice(n: i32) {
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    // SAFETY: setpriority changes only the nice value of thread `tid`, the caller.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, n) };
    assert_eq!(r, 0, "setpriority");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_put_back_as_it_was_and_first_is_not_inherited() {
        std::thread::spawn(|| {
            set_own_nice(3);
            let before = own_policy_and_prio().unwrap();
            assert_eq!(before, (libc::SCHED_OTHER as i64, 123));
            let saved = Attr::current().expect("sched_getattr");
            if !run_first(0) {
                eprintln!("skipped: SCHED_FIFO refused here");
                return;
            }
            assert_eq!(own_policy_and_prio().unwrap().0, libc::SCHED_FIFO as i64);
            let child = std::thread::spawn(|| own_policy_and_prio().unwrap())
                .join()
                .unwrap();
            assert_eq!(
                child.0,
                libc::SCHED_OTHER as i64,
                "SCHED_FIFO was inherited"
            );
            assert!(saved.restore());
            assert_eq!(own_policy_and_prio().unwrap(), before, "not put back");
            give_way();
            assert_eq!(own_policy_and_prio().unwrap().0, libc::SCHED_IDLE as i64);
        })
        .join()
        .unwrap();
    }
}
