//! Multi-process tests of the client segment's detector ring: real producer processes (this
//! test binary re-executed with `--exact <child test>`), producers killed between claim and
//! publish, and a rogue process scribbling over the ring while a good producer pushes.
//!
//! A child's role is named by `HAM_RINGTEST_ROLE` (the name of the `#[test]` function it
//! runs); that function returns at once when the variable does not name it, so in a normal
//! run the child tests pass trivially. The heavy tests hold one lock: on a 2-core machine
//! their processes would otherwise compete for the same CPUs.
#![cfg(not(loom))] // the mapped segment is not modelled under loom

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ham_core::client::{ClientSegment, Consumer, KIND_RAISE, Name, Polled, PushError, RingEvent};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open};
use rustix::time::{ClockId, Timespec, clock_gettime};

const ROLE: &str = "HAM_RINGTEST_ROLE";
const SEG: &str = "HAM_RINGTEST_SEGMENT";
const ID: &str = "HAM_RINGTEST_ID";
const COUNT: &str = "HAM_RINGTEST_COUNT";

/// Serialises the tests that run processes.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Whether `pid` is proven gone: no such process, or a pidfd on it is readable (it has
/// exited, possibly still a zombie waiting to be reaped). A pid from the ring may be any
/// bit pattern: out-of-range ones are "not known dead".
fn is_dead(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match pidfd_open(pid, PidfdFlags::empty()) {
        Err(Errno::SRCH) => true,
        Err(_) => false,
        Ok(fd) => {
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        }
    }
}

/// Removes the segment's name when the test ends, passed or failed.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        ClientSegment::unlink(&self.0);
    }
}

fn create_segment(test: &str, ring_slots: u32) -> (ClientSegment, Unlink) {
    let name = format!("/ham-ringtest-{}-{test}", std::process::id());
    let seg = ClientSegment::create(&name, 4, ring_slots, None).expect("create client segment");
    (seg, Unlink(name))
}

/// A child process that is SIGKILLed (by its pid, while it is still ours: not yet reaped)
/// and reaped when dropped, unless it was reaped already.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("wait for child")
    }

    /// The exit status if the child has exited (reaping it).
    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("try_wait for child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Not reaped yet (`try_wait` reaps and caches the status if it has exited): the pid
        // is still this child's, even as a zombie, so signalling it cannot hit another.
        if let Ok(None) = self.0.try_wait() {
            if let Some(pid) = i32::try_from(self.0.id()).ok().and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.0.wait();
    }
}

/// Re-executes this test binary to run the child test `role` alone.
fn spawn(role: &str, seg: &str, id: u64, count: u64, stdout: Stdio) -> Proc {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", role, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SEG, seg)
        .env(ID, id.to_string())
        .env(COUNT, count.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process");
    Proc(child)
}

/// In a child: its segment, id and count, if this process was started to play `role`.
fn child_args(role: &str) -> Option<(ClientSegment, u64, u64)> {
    if std::env::var(ROLE).ok()? != role {
        return None;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let seg = ClientSegment::open(&var(SEG)).expect("open client segment");
    let id = var(ID).parse().expect("id");
    let count = var(COUNT).parse().expect("count");
    Some((seg, id, count))
}

fn event(value: i64) -> RingEvent {
    RingEvent {
        kind: KIND_RAISE,
        pid: std::process::id(),
        uid: rustix::process::getuid().as_raw(),
        token: 0x7e57,
        entity: Name::new("e").unwrap(),
        class: Name::new("c").unwrap(),
        severity: 0,
        value,
        from: 0,
        to: 0,
    }
}

/// Pushes `ev`, retrying after a yield while the ring is full; returns how many times it
/// was full.
fn push_until_accepted(seg: &ClientSegment, ev: &RingEvent) -> u64 {
    let mut full = 0;
    loop {
        match seg.push(ev) {
            Ok(()) => return full,
            Err(PushError::Full) => {
                full += 1;
                std::thread::yield_now();
            }
            Err(e) => panic!("push failed: {e}"),
        }
    }
}

// --- 1. four producers, a million events each ------------------------------------------

const FOUR_PRODUCERS: usize = 4;

fn events_per_producer() -> u64 {
    match std::env::var("HAM_RING_EVENTS") {
        Ok(v) => v.parse().expect("HAM_RING_EVENTS must be a number"),
        Err(_) => 1_000_000,
    }
}

#[test]
fn child_four_producer() {
    let Some((seg, id, count)) = child_args("child_four_producer") else {
        return;
    };
    let mut ev = event(0);
    let mut full = 0;
    for s in 0..count {
        ev.value = ((id << 32) | s) as i64;
        full += push_until_accepted(&seg, &ev);
    }
    println!("FULL={full}");
}

#[test]
fn four_producers_a_million_events_each() {
    let _serial = serial();
    let started = Instant::now();
    let n = events_per_producer();
    assert!(n < 1 << 32, "the sequence must fit in 32 bits");
    let (seg, _unlink) = create_segment("four", 4096);
    let mut consumer = Consumer::new(&seg, 60_000_000_000);
    let mut kids: Vec<Proc> = (0..FOUR_PRODUCERS as u64)
        .map(|id| spawn("child_four_producer", seg.name(), id, n, Stdio::piped()))
        .collect();
    let pids: Vec<u32> = kids.iter().map(Proc::pid).collect();
    let deadline = Instant::now() + Duration::from_secs(300);

    let total = n * FOUR_PRODUCERS as u64;
    let mut next = [0u64; FOUR_PRODUCERS];
    let mut received = 0u64;
    let mut idle = 0u64;
    while received < total {
        match consumer.poll(&seg, now_ns(), |_| false) {
            Polled::Event(ev) => {
                let id = (ev.value as u64 >> 32) as usize;
                let s = ev.value as u64 & 0xffff_ffff;
                assert!(id < FOUR_PRODUCERS, "event from unknown producer: {ev:?}");
                assert_eq!(s, next[id], "producer {id}: out of order or duplicate");
                assert_eq!(ev.pid, pids[id], "producer {id}: wrong pid");
                assert!(
                    ev.kind == KIND_RAISE && ev.entity == "e" && ev.class == "c",
                    "corrupt event {ev:?}"
                );
                next[id] += 1;
                received += 1;
            }
            Polled::Empty | Polled::Stalled { .. } => {
                idle += 1;
                if idle % 4096 == 0 {
                    for (id, kid) in kids.iter_mut().enumerate() {
                        if let Some(status) = kid.try_wait() {
                            assert!(
                                status.success(),
                                "producer {id} failed ({status}) after {} events",
                                next[id]
                            );
                        }
                    }
                    assert!(
                        Instant::now() < deadline,
                        "timed out: {received} of {total} events, next {next:?}"
                    );
                }
                std::thread::yield_now();
            }
            other => panic!("unexpected {other:?} with {received} events received"),
        }
    }
    assert_eq!(next, [n; FOUR_PRODUCERS]);
    assert_eq!(consumer.poll(&seg, now_ns(), |_| false), Polled::Empty);
    assert_eq!(consumer.stats.consumed, total);
    assert_eq!(consumer.stats.rejected, 0);
    assert_eq!(consumer.stats.abandoned, 0);
    assert_eq!(consumer.stats.resets, 0);

    let mut full_sum = 0u64;
    for (id, kid) in kids.iter_mut().enumerate() {
        let status = kid.wait();
        assert!(status.success(), "producer {id}: {status}");
        let mut out = String::new();
        kid.0
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut out)
            .expect("read producer output");
        // libtest may print "test <name> ... " on the same line, before it.
        let full: u64 = out
            .split_once("FULL=")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("producer {id} printed no FULL=<n>: {out:?}"));
        full_sum += full;
    }
    assert_eq!(full_sum, seg.header().dropped_full.load(Ordering::Relaxed));
    eprintln!(
        "four producers: {total} events in {:.2?}, {full_sum} pushes found the ring full",
        started.elapsed()
    );
}

// --- 2. producers killed between claim and publish --------------------------------------

const KILLED: u64 = 1000;

/// Complete events child `i` pushes before it dies mid-publish.
fn complete_events(i: u64) -> u64 {
    i % 7 + 1
}

#[test]
fn child_killed_mid_publish() {
    let Some((seg, id, count)) = child_args("child_killed_mid_publish") else {
        return;
    };
    for s in 0..count {
        push_until_accepted(&seg, &event(((id << 32) | s) as i64));
    }
    let last = event(((id << 32) | count) as i64);
    loop {
        match seg.push_with(&last, || {
            let _ = kill_process(rustix::process::getpid(), Signal::KILL);
        }) {
            Err(PushError::Full) => std::thread::yield_now(),
            r => panic!("the producer outlived its own SIGKILL: {r:?}"),
        }
    }
}

struct Killed {
    proc: Proc,
    index: u64,
    abandoned: bool,
    /// Seen exited (before a poll that found the ring empty, which then proves it left
    /// no claim behind).
    exited: bool,
}

fn check_killed(kid: &mut Killed, next: &[u64]) {
    let status = kid.proc.wait();
    let i = kid.index;
    assert_eq!(
        status.signal(),
        Some(Signal::KILL.as_raw()),
        "child {i} was not killed by SIGKILL: {status}"
    );
    assert!(kid.abandoned, "child {i}'s claim was never abandoned");
    assert_eq!(
        next[i as usize],
        complete_events(i),
        "child {i}: complete events missing"
    );
}

#[test]
fn producers_killed_mid_publish_1000_times() {
    let _serial = serial();
    let started = Instant::now();
    let (seg, _unlink) = create_segment("killed", 256);
    // Abandonment must come from the dead-pid check, not from this deadline.
    let mut consumer = Consumer::new(&seg, 10_000_000_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut kids: Vec<Killed> = Vec::new();
    let mut next = vec![0u64; KILLED as usize];
    let (mut spawned, mut died, mut looks) = (0u64, 0u64, 0u64);
    while died < KILLED {
        while kids.len() < 2 && spawned < KILLED {
            let proc = spawn(
                "child_killed_mid_publish",
                seg.name(),
                spawned,
                complete_events(spawned),
                Stdio::null(),
            );
            kids.push(Killed {
                proc,
                index: spawned,
                abandoned: false,
                exited: false,
            });
            spawned += 1;
        }
        match consumer.poll(&seg, now_ns(), is_dead) {
            Polled::Event(ev) => {
                let (i, s) = (ev.value as u64 >> 32, ev.value as u64 & 0xffff_ffff);
                let kid = kids
                    .iter()
                    .find(|k| k.index == i)
                    .unwrap_or_else(|| panic!("event from a child not running: {ev:?}"));
                assert_eq!(ev.pid, kid.proc.pid(), "child {i}: wrong pid");
                assert!(s < complete_events(i), "child {i}: its last event came out");
                assert_eq!(s, next[i as usize], "child {i}: out of order or duplicate");
                next[i as usize] += 1;
            }
            Polled::Abandoned { pid } => {
                let at = kids
                    .iter()
                    .position(|k| k.proc.pid() == pid)
                    .unwrap_or_else(|| panic!("abandoned a claim of pid {pid}, not a child"));
                let mut kid = kids.swap_remove(at);
                assert!(!kid.abandoned);
                kid.abandoned = true;
                // All of the child's claims are behind us: reap it (only now, so its pid
                // could not be reused while the ring might still name it).
                check_killed(&mut kid, &next);
                died += 1;
            }
            Polled::Empty => {
                // A child seen exited before this look at an empty ring left no claim:
                // that is a failure (it died some other way); report its status.
                if let Some(kid) = kids.iter_mut().find(|k| k.exited) {
                    check_killed(kid, &next);
                }
                for kid in &mut kids {
                    kid.exited = is_dead(kid.proc.pid());
                }
                std::thread::yield_now();
            }
            Polled::Stalled { .. } => std::thread::yield_now(),
            Polled::Rejected(why) => panic!("rejected: {why}"),
        }
        looks += 1;
        if looks % 1024 == 0 {
            assert!(
                Instant::now() < deadline,
                "timed out: {died} children died, {spawned} spawned"
            );
        }
    }
    assert_eq!(consumer.stats.abandoned, KILLED);
    assert_eq!(consumer.stats.rejected, 0);
    assert_eq!(consumer.stats.resets, 0);
    let complete: u64 = (0..KILLED).map(complete_events).sum();
    assert_eq!(consumer.stats.consumed, complete);
    for i in 0..KILLED {
        assert_eq!(next[i as usize], complete_events(i), "child {i}");
    }
    // The ring still flows.
    let ev = event(-1);
    seg.push(&ev).expect("push after the killings");
    assert_eq!(consumer.poll(&seg, now_ns(), is_dead), Polled::Event(ev));
    assert_eq!(consumer.poll(&seg, now_ns(), is_dead), Polled::Empty);
    eprintln!(
        "killed mid-publish: {KILLED} children, {complete} events in {:.2?}",
        started.elapsed()
    );
}

// --- 3. a rogue process scribbles over the ring -----------------------------------------

/// Ring slots for the rogue test: small, so that the scribbles hit the live slots.
const ROGUE_RING: u32 = 64;
/// Rounds of scribbling the rogue does.
const ROGUE_ROUNDS: u64 = 100_000;
/// Tag of the good producer's values; the low 40 bits are its sequence number.
const GOOD_TAG: u64 = 0x600d << 48;
const GOOD_SEQ_MASK: u64 = (1 << 40) - 1;
/// The heartbeat slot the parent sets to tell the good producer to stop (the rogue writes
/// only the ring and `head`).
const STOP_SLOT: u32 = 1;

#[test]
fn child_good_producer() {
    let Some((seg, _, _)) = child_args("child_good_producer") else {
        return;
    };
    let mut ev = event(0);
    let stop = &seg.heartbeats()[STOP_SLOT as usize].beat_ns;
    let mut s = 0u64;
    while stop.load(Ordering::Acquire) == 0 {
        ev.value = (GOOD_TAG | (s & GOOD_SEQ_MASK)) as i64;
        match seg.push(&ev) {
            // Full: retry the same event.
            Err(PushError::Full) => std::thread::yield_now(),
            // Sent (or abandoned by the consumer: lost, allowed here).
            Ok(()) | Err(PushError::Abandoned) => s += 1,
            Err(e) => panic!("push failed: {e}"),
        }
    }
}

#[test]
fn child_rogue() {
    let Some((seg, _, rounds)) = child_args("child_rogue") else {
        return;
    };
    let words = seg.raw_ring_words();
    let mut x = ((u64::from(std::process::id()) << 20) ^ now_ns()) | 1;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..rounds {
        if round % 8 == 0 {
            for w in words {
                w.store(rand(), Ordering::Relaxed);
            }
        } else {
            // A few words here and there: the ring mostly works, some slots are torn.
            for _ in 0..4 {
                let i = (rand() % words.len() as u64) as usize;
                words[i].store(rand(), Ordering::Relaxed);
            }
        }
        if round % 3 == 0 {
            seg.header().head.store(rand(), Ordering::Relaxed);
        }
        if round % 16 == 0 {
            std::thread::yield_now();
        }
    }
}

/// One look at the ring for the rogue test: a consumed event must be one the good
/// producer sent, once; anything else is returned (after a yield if there was nothing).
fn take_good(
    consumer: &mut Consumer,
    seg: &ClientSegment,
    good_pid: u32,
    seen: &mut HashSet<u64>,
    deadline: Instant,
) -> Polled {
    assert!(Instant::now() < deadline, "timed out");
    let p = consumer.poll(seg, now_ns(), is_dead);
    match &p {
        Polled::Event(ev) => {
            let v = ev.value as u64;
            assert_eq!(v & !GOOD_SEQ_MASK, GOOD_TAG, "forged event {ev:?}");
            let sent = RingEvent {
                pid: good_pid,
                ..event(ev.value)
            };
            assert_eq!(ev, &sent, "forged event");
            assert!(seen.insert(v), "event consumed twice: {ev:?}");
        }
        Polled::Empty | Polled::Stalled { .. } => std::thread::yield_now(),
        Polled::Rejected(_) | Polled::Abandoned { .. } => {}
    }
    p
}

#[test]
fn rogue_process_scribbles_over_the_ring() {
    let _serial = serial();
    let started = Instant::now();
    let (seg, _unlink) = create_segment("rogue", ROGUE_RING);
    let mut consumer = Consumer::new(&seg, 100_000_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut good = spawn("child_good_producer", seg.name(), 0, 0, Stdio::null());
    let good_pid = good.pid();
    let mut seen = HashSet::new();
    let take = |consumer: &mut Consumer, seen: &mut HashSet<u64>| {
        take_good(consumer, &seg, good_pid, seen, deadline)
    };

    // The good producer is running before the rogue starts.
    while seen.is_empty() {
        take(&mut consumer, &mut seen);
    }
    let before = seen.len();
    let mut rogue = spawn("child_rogue", seg.name(), 0, ROGUE_ROUNDS, Stdio::null());
    let mut n = 0u64;
    let status = loop {
        take(&mut consumer, &mut seen);
        n += 1;
        if n % 256 == 0 {
            if let Some(status) = rogue.try_wait() {
                break status;
            }
        }
    };
    assert!(status.success(), "rogue: {status}");
    let during = seen.len() - before;
    assert!(
        consumer.stats.rejected > 0,
        "the rogue's bytes were never seen"
    );
    // With the rogue gone the good producer's events flow again.
    let after = seen.len();
    while seen.len() < after + 100 {
        take(&mut consumer, &mut seen);
    }
    seg.beat(STOP_SLOT, 1);
    let status = loop {
        take(&mut consumer, &mut seen);
        if let Some(status) = good.try_wait() {
            break status;
        }
    };
    assert!(status.success(), "good producer: {status}");
    while take(&mut consumer, &mut seen) != Polled::Empty {}
    let stats = consumer.stats;

    // A fresh event from here comes out as pushed (the first pushes may land in slots the
    // rogue left out of order: the consumer repairs them).
    let fresh = event(0x0f0f_0f0f);
    let mut delivered = false;
    for _ in 0..100 {
        match seg.push(&fresh) {
            Ok(()) => {
                let p = consumer.poll(&seg, now_ns(), is_dead);
                assert_eq!(p, Polled::Event(fresh.clone()));
                delivered = true;
                break;
            }
            Err(PushError::Full | PushError::Abandoned) => {
                // Let the consumer see (and repair) what the push ran into.
                while !matches!(take(&mut consumer, &mut seen), Polled::Empty) {}
            }
            Err(e) => panic!("push failed: {e}"),
        }
    }
    assert!(delivered, "the ring did not recover");
    eprintln!(
        "rogue: {ROGUE_ROUNDS} rounds in {:.2?}; {} good events ({during} while scribbling), \
         {stats:?}, then {} more rejected to recover",
        started.elapsed(),
        seen.len(),
        consumer.stats.rejected - stats.rejected,
    );
}
