//! The HAM's lock: a robust futex in the segment's header that tells its Guardian the HAM
//! died a few hundred microseconds before its pidfd does.
//!
//! A pidfd becomes readable only at the end of the kernel's `do_exit`: after the dying
//! process's memory is unmapped and every descriptor closed (a HAM holds a pidfd per entity
//! in an epoll set), which takes 0.3–0.5 ms here. The robust-futex list is walked at the
//! start of it, when the exiting thread lets go of its memory (`exit_mm_release`) and
//! before anything is torn down. So the HAM's main thread names a futex word of the header
//! in a robust list of its own (`set_robust_list`) and stores its thread id there; the
//! kernel marks the word [`LOCK_OWNER_DIED`] when that thread exits and wakes one thread
//! waiting on it: the Guardian's [`Watcher`], which rings the Guardian's loop.
//!
//! What the mark means: the HAM's main thread will run no more user code. The HAM never
//! `execve`s (the only other walk of the list), and its main thread never exits alone
//! (returning from `main` or a fatal signal ends every thread), so the whole HAM is dying;
//! what the kernel still does for it (closing its descriptors, unmapping, handing its
//! children to a reaper) is nothing a takeover waits for: the pidfds, sockets and pipes the
//! Guardian needs are its own copies, and a child the HAM was still holding before its
//! `execve` decides by its record, as after any death of the HAM (`sys::spawn`). The
//! pidfd stays watched: a Guardian that misses the wake (a HAM of an older build that
//! holds no lock, another process waiting on the word) takes over when it becomes readable,
//! as before.
//!
//! The list replaces the one glibc registers for the main thread: glibc uses it only for
//! robust pthread mutexes, which ham does not use. The list and the word must stay mapped
//! for as long as the thread runs; both are leaked (the word through a mapping of its own,
//! [`Segment::into_static`]), once per process.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use ham_core::layout::{LOCK_OWNER_DIED, LOCK_TID_MASK, LOCK_WAITERS};
use rustix::thread::futex;

/// `struct robust_list` (`linux/futex.h`).
#[repr(C)]
struct RobustList {
    next: *mut RobustList,
}

/// `struct robust_list_head` (`linux/futex.h`): the list, the offset from an entry to its
/// futex word, and an entry being added or removed (none here: the list never changes).
#[repr(C)]
struct RobustListHead {
    list: RobustList,
    futex_offset: libc::c_long,
    list_op_pending: *mut RobustList,
}

static HELD: AtomicBool = AtomicBool::new(false);

/// Makes the calling thread (the HAM's main thread) the holder of `word`: registers a robust
/// list naming it, then stores the thread's id with [`LOCK_WAITERS`] (the kernel wakes a
/// waiter at the thread's death only when that bit is set), and wakes whoever waits for
/// the word to change (a Guardian started before). Once per process.
pub fn hold(word: &'static AtomicU32) -> io::Result<()> {
    if HELD.swap(true, Ordering::AcqRel) {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    if tid & !LOCK_TID_MASK != 0 {
        return Err(io::Error::from_raw_os_error(libc::ERANGE));
    }
    let head: &'static mut RobustListHead = Box::leak(Box::new(RobustListHead {
        list: RobustList {
            next: std::ptr::null_mut(),
        },
        futex_offset: 0,
        list_op_pending: std::ptr::null_mut(),
    }));
    let entry: &'static mut RobustList = Box::leak(Box::new(RobustList {
        next: &mut head.list,
    }));
    let entry_ptr: *mut RobustList = entry;
    head.futex_offset = (word.as_ptr() as libc::c_long).wrapping_sub(entry_ptr as libc::c_long);
    head.list.next = entry_ptr;
    let head_ptr: *mut RobustListHead = head;
    // SAFETY: `set_robust_list` only records the pointer for this thread; the kernel reads
    // the head, the entry and the word (entry + offset) when the thread exits. All three
    // stay mapped for the life of the process: head and entry are leaked heap memory, the
    // word lies in a mapping that is never unmapped (`&'static`), and the list is a valid
    // circular list of one entry. A fault there would only end the kernel's walk.
    let r = unsafe {
        libc::syscall(
            libc::SYS_set_robust_list,
            head_ptr,
            std::mem::size_of::<RobustListHead>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    word.store(tid | LOCK_WAITERS, Ordering::Release);
    let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
    Ok(())
}

/// A thread of the Guardian asleep on its HAM's lock word; it writes `bell` once the
/// kernel marks the word [`LOCK_OWNER_DIED`] for the HAM `owner`. Dropped (at a
/// takeover, before this process holds the lock itself), it stops: otherwise it would wait
/// on this process's own lock and could take the one wake-up meant for the next Guardian.
pub struct Watcher {
    word: &'static AtomicU32,
    stop: Arc<AtomicBool>,
    /// The thread has seen `owner` hold the word: from then on, its death is told. (A death
    /// before that reads as a predecessor's mark, and is left to the pidfd.)
    saw_owner: Arc<AtomicBool>,
    raise: Arc<Raise>,
}

/// The thread the ring wakes, raised to run first just before the ring (see
/// [`super::sched`]), and put back as it was by itself as soon as it has seen the ring
/// ([`Watcher::rung`]). One lock orders the two: a thread put back (or that never needed it)
/// is never raised afterwards, so a takeover never runs at `SCHED_FIFO`.
struct Raise {
    /// The thread, and its scheduling before the raise (`None`: nothing is raised).
    target: Option<(i32, super::sched::Attr)>,
    state: std::sync::Mutex<RaiseState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RaiseState {
    /// Not raised yet; the watcher may.
    Armed,
    /// Raised by the watcher: the thread puts itself back.
    Raised,
    /// The ring was seen: never raised again.
    Done,
}

impl Watcher {
    /// Starts watching `word` for the death of thread `owner` (the HAM's pid: its main
    /// thread). A word that does not name `owner` yet (a HAM that has not taken it, or
    /// whose build has no lock) is waited on until it changes.
    /// Once it has rung, the thread runs `then` (work the takeover can use, done on
    /// another CPU while the takeover's thread goes on).
    /// `raise`: the calling thread is the one `bell` wakes, raised to run first just
    /// before the ring; it calls [`Watcher::rung`] as soon as it has seen the ring.
    pub fn start(
        word: &'static AtomicU32,
        owner: u32,
        bell: OwnedFd,
        raise: bool,
        then: impl FnOnce() + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let saw_owner = Arc::new(AtomicBool::new(false));
        // Only a thread whose scheduling can be put back is raised.
        let target = raise
            .then(super::sched::Attr::current)
            .flatten()
            .map(|saved| (rustix::thread::gettid().as_raw_nonzero().get(), saved));
        let raise = Arc::new(Raise {
            target,
            state: std::sync::Mutex::new(RaiseState::Armed),
        });
        let (stopped, saw, raising) = (stop.clone(), saw_owner.clone(), raise.clone());
        std::thread::Builder::new()
            .name("ham-lock".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Woken once, at the HAM's death: on a CPU at once (see `sched`).
                super::sched::run_first(0);
                watch(word, owner, &bell, (&stopped, &saw), &raising, then)
            })?;
        Ok(Self {
            word,
            stop,
            saw_owner,
            raise,
        })
    }

    /// Called by the thread the ring wakes (the one that started the watcher with `raise`),
    /// as soon as it has seen the ring (or has left watching by another way): puts it back
    /// as it was if the watcher raised it, and makes sure the watcher never does after this.
    pub fn rung(&self) {
        let mut state = self
            .raise
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (RaiseState::Raised, Some((_, saved))) = (*state, &self.raise.target) {
            saved.restore();
        }
        *state = RaiseState::Done;
    }

    /// Whether the thread has seen its owner hold the word (see the field).
    pub fn saw_owner(&self) -> bool {
        self.saw_owner.load(Ordering::Acquire)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = futex::wake(self.word, futex::Flags::empty(), u32::MAX);
    }
}

/// What the watcher makes of the word's value `v`, having seen `owner` hold it or not.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// `owner` holds it: sleep until it changes.
    Held,
    /// `owner` held it and the kernel marked it: the owner died. (The kernel clears the
    /// thread id as it marks the word, keeping only [`LOCK_WAITERS`].)
    Died,
    /// Not `owner`'s yet (a HAM that has not taken it, a predecessor's death mark, a HAM
    /// without the lock): sleep until it changes.
    NotYet,
    /// Another thread took it after `owner` held it: nothing more to watch.
    Other,
}

fn seen(v: u32, owner: u32, held: bool) -> Seen {
    if v & LOCK_TID_MASK == owner && owner != 0 {
        return if v & LOCK_OWNER_DIED != 0 {
            Seen::Died
        } else {
            Seen::Held
        };
    }
    match (held, v & LOCK_TID_MASK == 0 && v & LOCK_OWNER_DIED != 0) {
        (true, true) => Seen::Died,
        (true, false) => Seen::Other,
        (false, _) => Seen::NotYet,
    }
}

fn watch(
    word: &AtomicU32,
    owner: u32,
    bell: &impl AsFd,
    (stop, saw_owner): (&AtomicBool, &AtomicBool),
    raise: &Raise,
    then: impl FnOnce(),
) {
    let mut then = Some(then);
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let v = word.load(Ordering::Acquire);
        match seen(v, owner, saw_owner.load(Ordering::Relaxed)) {
            // Rung once, the thread sleeps on until stopped rather than exit: its exit
            // (unmapping its stack) would take the CPU the takeover's thread was woken on.
            Seen::Died => {
                if let Some(f) = then.take() {
                    if let Some((tid, _)) = raise.target {
                        let mut state = raise
                            .state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if *state == RaiseState::Armed && super::sched::run_first(tid) {
                            *state = RaiseState::Raised;
                        }
                    }
                    let _ = rustix::io::write(bell, &1u64.to_ne_bytes());
                    f();
                }
            }
            Seen::Other => return,
            Seen::Held => saw_owner.store(true, Ordering::Release),
            Seen::NotYet => {}
        }
        // Returns at once if the word moved on since the load (EAGAIN), when woken, or on
        // a signal: the loop looks again in every case.
        let _ = futex::wait(word, futex::Flags::empty(), v, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_death_after_the_owner_was_seen_holding_counts() {
        let dead = LOCK_WAITERS | LOCK_OWNER_DIED;
        assert_eq!(seen(42 | LOCK_WAITERS, 42, false), Seen::Held);
        assert_eq!(seen(42 | LOCK_WAITERS, 42, true), Seen::Held);
        // The kernel's mark: the id cleared.
        assert_eq!(seen(dead, 42, true), Seen::Died);
        // A predecessor's mark, before the owner took the word: wait.
        assert_eq!(seen(dead, 42, false), Seen::NotYet);
        assert_eq!(seen(0, 42, false), Seen::NotYet);
        assert_eq!(seen(43 | LOCK_WAITERS, 42, false), Seen::NotYet);
        // Taken by another after the owner held it.
        assert_eq!(seen(43 | LOCK_WAITERS, 42, true), Seen::Other);
        assert_eq!(seen(0, 42, true), Seen::Other);
    }

    /// A thread holding the word exits (the kernel walks its robust list as it would the
    /// HAM's main thread's): the watcher rings, and the word carries the kernel's mark.
    #[test]
    fn a_holder_that_exits_rings_the_watcher() {
        let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let bell = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            hold(word).unwrap();
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                .unwrap();
            go_rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        assert_eq!(word.load(Ordering::Acquire), tid | LOCK_WAITERS);
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        let w = Watcher::start(word, tid, bell.try_clone().unwrap(), false, move || {
            ran_tx.send(()).unwrap()
        })
        .unwrap();
        // The holder exits only once the watcher has seen it hold the word: a death the
        // watcher never saw held is left to the pidfd (a mark then reads as a predecessor's).
        let since = std::time::Instant::now();
        while !w.saw_owner() {
            assert!(
                since.elapsed() < std::time::Duration::from_secs(10),
                "the watcher never looked at the word"
            );
            std::thread::yield_now();
        }
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        // The holder's death is told by the kernel as the thread exits; 10 s is only a
        // bound for a watcher that missed it.
        wait_rung(&bell);
        let mut buf = [0u8; 8];
        rustix::io::read(&bell, &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 1);
        ran_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("what is to follow the ring ran");
        assert_eq!(word.load(Ordering::Acquire), LOCK_WAITERS | LOCK_OWNER_DIED);
        drop(w);
        // Once per process.
        assert!(hold(word).is_err());
    }

    /// The word marked as the kernel marks it when its holder dies, and its waiters woken.
    fn mark_dead(word: &AtomicU32) {
        word.store(LOCK_WAITERS | LOCK_OWNER_DIED, Ordering::Release);
        let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
    }

    fn wait_rung(bell: &OwnedFd) {
        let mut fds = [rustix::event::PollFd::new(
            bell,
            rustix::event::PollFlags::IN,
        )];
        let ten = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        assert_eq!(
            rustix::event::poll(&mut fds, Some(&ten)).unwrap(),
            1,
            "no ring within 10 s"
        );
    }

    fn watching(owner: u32, raise: bool) -> (&'static AtomicU32, OwnedFd, Watcher) {
        let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(owner | LOCK_WAITERS)));
        let bell = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let w = Watcher::start(word, owner, bell.try_clone().unwrap(), raise, || {}).unwrap();
        let since = std::time::Instant::now();
        while !w.saw_owner() {
            assert!(since.elapsed() < std::time::Duration::from_secs(10));
            std::thread::yield_now();
        }
        (word, bell, w)
    }

    /// The thread the ring wakes runs first from just before the ring until it has seen it,
    /// is put back then as it was (its nice value kept), and is never raised once it has
    /// (a takeover never runs at `SCHED_FIFO`).
    #[test]
    fn the_woken_thread_runs_first_only_until_it_has_seen_the_ring() {
        use super::super::sched::{own_policy_and_prio, run_first, set_own_nice};
        let fifo_allowed = std::thread::spawn(|| run_first(0)).join().unwrap();
        std::thread::spawn(move || {
            set_own_nice(2);
            let before = own_policy_and_prio().unwrap();
            let (word, bell, w) = watching(4242, true);
            mark_dead(word);
            wait_rung(&bell);
            let expected = if fifo_allowed {
                libc::SCHED_FIFO
            } else {
                libc::SCHED_OTHER
            };
            assert_eq!(own_policy_and_prio().unwrap().0, expected as i64);
            w.rung();
            assert_eq!(own_policy_and_prio().unwrap(), before);

            // Seen (or left by another way) before the ring: never raised.
            let (word, bell, w) = watching(4243, true);
            w.rung();
            mark_dead(word);
            wait_rung(&bell);
            assert_eq!(own_policy_and_prio().unwrap(), before);
            drop(w);
        })
        .join()
        .unwrap();
    }
}
