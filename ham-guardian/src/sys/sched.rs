//! Who runs first when woken: the scheduling of ham's own threads.
//!
//! A takeover is a chain of wake-ups (the HAM's death wakes the Guardian's lock watcher,
//! whose ring wakes the Guardian's loop), and on a box this small each link can land on the
//! CPU where the dead HAM is still being torn down (0.5 ms of the kernel closing its
//! descriptors and unmapping its memory, not preempted there): measured on the 2-CPU
//! machine of `docs/BENCHMARKS.md`, the loop saw the ring a median 0.28 ms after it was
//! rung, up to 1.4 ms. Three settings take that off the takeover:
//!
//! * the main threads of the HAM and the Guardian run with the shortest time slice the
//!   kernel allows ([`short_slice`], 0.1 ms; 6.12+): woken, they preempt a thread of the
//!   default slice (1.4 ms on that machine) rather than wait for it;
//! * the lock watcher sleeps at `SCHED_FIFO` priority 1 ([`run_first`]): woken once, at
//!   the HAM's death, it is put on a CPU at once; it raises the Guardian's loop the same
//!   way just before it rings (the loop lowers itself back as soon as it sees the ring),
//!   then runs as `SCHED_IDLE` ([`give_way`]);
//! * none of it is inherited: a child (an entity, the next Guardian) or a thread starts
//!   with the default policy and slice (`SCHED_FLAG_RESET_ON_FORK`).
//!
//! Each is a request: refused (no `CAP_SYS_NICE` for `SCHED_FIFO`, a kernel before 6.12
//! for the slice), ham runs as before.

/// `struct sched_attr` of `sched_setattr(2)`, as far as its `SCHED_FLAG_UTIL_CLAMP` fields
/// (the size it says is the size the kernel reads).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For `SCHED_OTHER` (6.12+): the time slice asked for, in ns (0.1–100 ms).
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The shortest slice the kernel grants (`NSEC_PER_MSEC / 10`).
const SHORT_SLICE_NS: u64 = 100_000;

fn set_attr(tid: i32, policy: i32, priority: u32, runtime: u64) -> bool {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy as u32,
        flags: SCHED_FLAG_RESET_ON_FORK,
        nice: 0,
        priority,
        runtime,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: `sched_setattr` reads `attr`, a valid `sched_attr` on our stack whose `size`
    // field is its size; it changes only the scheduling of thread `tid` (0: the caller).
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &raw const attr,
            0 as libc::c_uint,
        )
    };
    r == 0
}

/// The calling thread as a normal (`SCHED_OTHER`) one with the shortest slice. Whether the
/// kernel took it.
pub fn short_slice() -> bool {
    set_attr(0, libc::SCHED_OTHER, 0, SHORT_SLICE_NS)
}

/// Thread `tid` (0: the calling one) at `SCHED_FIFO` priority 1. Whether the kernel took
/// it (it needs `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at least 1).
pub fn run_first(tid: i32) -> bool {
    set_attr(tid, libc::SCHED_FIFO, 1, 0)
}

/// Makes the calling thread run only on a CPU nothing else wants (`SCHED_IDLE`), and gives
/// up its CPU now: the lock watcher once it has rung, so that what it does then never
/// delays the takeover. The yield is what makes it at once: the thread its ring woke may be
/// queued on this CPU, and a change of policy alone does not make the running thread give
/// way (the loop saw the ring a median 0.28 ms after it, 0.08 ms with the yield).
pub fn give_way() {
    let _ = set_attr(0, libc::SCHED_IDLE, 0, 0);
    std::thread::yield_now();
}

/// The calling thread's policy and slice, from `/proc/thread-self/sched` (for the tests).
#[cfg(test)]
pub(crate) fn own_policy_and_slice() -> Option<(i64, i64)> {
    let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as i64)
    };
    Some((field("policy")?, field("se.slice").unwrap_or(-1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_slice_is_not_inherited_by_a_thread() {
        let t = std::thread::spawn(|| {
            if !short_slice() {
                eprintln!("skipped: this kernel has no custom slices");
                return;
            }
            let (policy, slice) = own_policy_and_slice().expect("/proc/thread-self/sched");
            assert_eq!(policy, libc::SCHED_OTHER as i64);
            if slice >= 0 {
                assert_eq!(slice as u64, SHORT_SLICE_NS);
            }
            let child = std::thread::spawn(|| own_policy_and_slice().unwrap())
                .join()
                .unwrap();
            assert_eq!(child.0, libc::SCHED_OTHER as i64);
            if child.1 >= 0 {
                assert_ne!(child.1 as u64, SHORT_SLICE_NS, "the slice was inherited");
            }
        });
        t.join().unwrap();
    }

    #[test]
    fn first_then_idle_then_back() {
        let t = std::thread::spawn(|| {
            if !run_first(0) {
                eprintln!("skipped: SCHED_FIFO refused here");
                return;
            }
            assert_eq!(own_policy_and_slice().unwrap().0, libc::SCHED_FIFO as i64);
            let child = std::thread::spawn(|| own_policy_and_slice().unwrap())
                .join()
                .unwrap();
            assert_eq!(
                child.0,
                libc::SCHED_OTHER as i64,
                "SCHED_FIFO was inherited"
            );
            give_way();
            assert_eq!(own_policy_and_slice().unwrap().0, libc::SCHED_IDLE as i64);
            assert!(short_slice());
            assert_eq!(own_policy_and_slice().unwrap().0, libc::SCHED_OTHER as i64);
        });
        t.join().unwrap();
    }
}
