//! A model test of the detector ring's accounting across takeovers.
//!
//! A real client segment (and a real state segment for the consumer's record) is driven
//! through interleavings proptest chooses of: producers pushing (through, or finding the ring
//! full), producers killed between claim and publish, producers so slow that their claim is
//! abandoned under them, the HAM taking events (denying some, as the daemon does for a bad
//! token), the HAM recording its position and counts (or killed in the middle of recording),
//! and takeovers: the HAM killed at any of those points — also inside a poll, between freeing
//! a slot and storing `tail` — and a successor resumed from the last record exactly as the
//! daemon does (`Consumer::resume_recorded`, then a record at once).
//!
//! After a final drain, every ticket is accounted for exactly once — consumed + rejected +
//! abandoned = successful pushes + claims never published — and no event was delivered
//! twice (nor lost: every successful push was delivered).
#![cfg(not(loom))] // the mapped segment is not modelled under loom

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU32, Ordering};

use ham_core::client::{ClientSegment, Consumer, KIND_RAISE, Name, Polled, PushError, RingEvent};
use ham_core::segment::{Access, Segment, SegmentWriter};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Ring slots: small, so that the ring laps and fills often.
const SLOTS: u32 = 4;
/// How long a claim by a producer not proven dead may stay unpublished.
const ABANDON_AFTER: u64 = 1_000;
/// Pids at or above this are producers the model killed (no real pid is this large).
const DEAD: u32 = 0x4000_0000;

#[derive(Debug, Clone)]
enum Op {
    /// A producer pushes `n` events (each goes through or finds the ring full).
    Push(u8),
    /// A producer claims a ticket and is killed before it publishes; `dead`: its pid is
    /// proven gone (else the HAM waits out the deadline).
    PushKilled { dead: bool },
    /// A producer stalls between claim and publish until the HAM abandons its claim.
    PushSlow,
    /// The HAM takes up to `n` events; with `deny`, it denies the odd ones.
    Poll { n: u8, deny: bool },
    /// The HAM records its position and counts; `tear`: it is killed in the middle of the
    /// record (at the named publish step) and a successor takes over.
    Record { tear: Option<&'static str> },
    /// The HAM is killed. `in_poll`: inside its last poll (if the last thing it did was to
    /// take a slot), between freeing the slot and storing `tail`. `record`: the successor
    /// lives long enough to record at once what it resumed with.
    Takeover { in_poll: bool, record: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..=6).prop_map(Op::Push),
        1 => any::<bool>().prop_map(|dead| Op::PushKilled { dead }),
        1 => Just(Op::PushSlow),
        4 => (1u8..=6, any::<bool>()).prop_map(|(n, deny)| Op::Poll { n, deny }),
        2 => prop_oneof![
            Just(None),
            Just(Some("publish:invalidated")),
            Just(Some("publish:half-written")),
        ]
        .prop_map(|tear| Op::Record { tear }),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(in_poll, record)| Op::Takeover { in_poll, record }),
    ]
}

/// The shm objects of one case, removed whatever happens.
struct Names {
    client: String,
    state: String,
}

impl Names {
    fn new() -> Self {
        static CASE: AtomicU32 = AtomicU32::new(0);
        let k = CASE.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{k}", std::process::id());
        Self {
            client: format!("/ham-ring-model-{id}.client"),
            state: format!("/ham-ring-model-{id}.state"),
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        ClientSegment::unlink(&self.client);
        let _ = Segment::unlink(&self.state);
    }
}

thread_local! {
    /// The publish step at which the HAM is to be killed (once).
    static KILL_AT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// What a kill unwinds with (`resume_unwind`: no panic message).
struct Killed;

/// The state segment writer's failpoint hook.
fn failpoint(step: &'static str) {
    if KILL_AT.with(|k| k.get()) == Some(step) {
        KILL_AT.with(|k| k.set(None));
        resume_unwind(Box::new(Killed));
    }
}

fn is_dead(pid: u32) -> bool {
    pid >= DEAD
}

fn event(pid: u32, value: i64) -> RingEvent {
    RingEvent {
        kind: KIND_RAISE,
        pid,
        uid: 0,
        token: 7,
        entity: Name::new("db").unwrap(),
        class: Name::new("tick").unwrap(),
        severity: 0,
        value,
        from: 0,
        to: 0,
    }
}

/// What the model saw.
#[derive(Default)]
struct Book {
    /// Values of the events whose push went through.
    pushed: Vec<i64>,
    /// Times each value was delivered.
    delivered: HashMap<i64, u32>,
    /// Claims never published (killed or abandoned producers).
    lost_claims: u64,
    full: u64,
}

/// The HAM: the ring's consumer and the state segment it records into.
struct Ham {
    seg: ClientSegment,
    writer: SegmentWriter,
    consumer: Consumer,
    now: u64,
    /// The last thing it did was to take a slot off the ring (freed it, stored `tail`).
    just_took: bool,
}

impl Ham {
    fn first(names: &Names) -> Self {
        let seg = ClientSegment::create(&names.client, 0, SLOTS, None).unwrap();
        let state = Segment::create(&names.state, 1, 0).unwrap();
        let mut writer = SegmentWriter::take(state, 1, 0).unwrap();
        writer.set_hook(Some(failpoint));
        let consumer = Consumer::resume_recorded(&seg, None, ABANDON_AFTER);
        writer.set_ring_state(consumer.record()).unwrap();
        Self {
            seg,
            writer,
            consumer,
            now: 0,
            just_took: false,
        }
    }

    /// A successor, as the daemon makes one: it maps both segments again, resumes from the
    /// record and (if it lives long enough) records at once.
    fn successor(names: &Names, now: u64, record: bool) -> Self {
        let seg = ClientSegment::open(&names.client).unwrap();
        let state = Segment::open(&names.state, Access::ReadWrite).unwrap();
        let mut writer = SegmentWriter::take(state, 1, 0).unwrap();
        writer.set_hook(Some(failpoint));
        let rec = writer.segment().header().ring_state();
        let consumer = Consumer::resume_recorded(&seg, rec, ABANDON_AFTER);
        if record {
            writer.set_ring_state(consumer.record()).unwrap();
        }
        Self {
            seg,
            writer,
            consumer,
            now,
            just_took: false,
        }
    }

    /// One poll; `Some(pid)` when it abandoned a claim by `pid`, `None` at an empty ring.
    fn poll(&mut self, book: &mut Book, deny: bool) -> Option<Option<u32>> {
        let polled = self.consumer.poll(&self.seg, self.now, is_dead);
        assert_eq!(self.consumer.stats.resets, 0, "the ring was reset");
        self.just_took = matches!(polled, Polled::Event(_) | Polled::Abandoned { .. });
        match polled {
            Polled::Event(ev) => {
                let n = book.delivered.entry(ev.value).or_default();
                *n += 1;
                assert_eq!(*n, 1, "event {} delivered twice", ev.value);
                if deny && ev.value % 2 == 1 {
                    self.consumer.deny();
                }
                Some(None)
            }
            Polled::Rejected(why) => panic!("rejected with no stray write: {why}"),
            Polled::Abandoned { pid } => Some(Some(pid)),
            Polled::Empty => None,
            Polled::Stalled { retry_at } => {
                // Time passes until the claim's deadline.
                self.now = self.now.max(retry_at);
                Some(None)
            }
        }
    }

    fn record(&self) {
        self.writer.set_ring_state(self.consumer.record()).unwrap();
    }
}

fn run(ops: &[Op]) {
    let names = Names::new();
    let mut ham = Ham::first(&names);
    // Producers have their own mapping.
    let producer = ClientSegment::open(&names.client).unwrap();
    let me = std::process::id();
    let mut book = Book::default();
    let mut next_value = 0i64;
    let mut killed = 0u32;
    for op in ops {
        match *op {
            Op::Push(n) => {
                for _ in 0..n {
                    next_value += 1;
                    match producer.push(&event(me, next_value)) {
                        Ok(()) => book.pushed.push(next_value),
                        Err(PushError::Full) => book.full += 1,
                        Err(e) => panic!("push: {e}"),
                    }
                }
                ham.just_took = false;
            }
            Op::PushKilled { dead } => {
                next_value += 1;
                killed += 1;
                let pid = if dead { DEAD + killed } else { me };
                let r = catch_unwind(AssertUnwindSafe(|| {
                    producer.push_with(&event(pid, next_value), || resume_unwind(Box::new(Killed)))
                }));
                match r {
                    Err(_) => book.lost_claims += 1,
                    Ok(Err(PushError::Full)) => book.full += 1,
                    Ok(r) => panic!("a producer killed before publishing: {r:?}"),
                }
                ham.just_took = false;
            }
            Op::PushSlow => {
                next_value += 1;
                let ham = &mut ham;
                let book_ = &mut book;
                let mut claimed = false;
                let r = producer.push_with(&event(me, next_value), || {
                    claimed = true;
                    let ticket = ham.seg.header().head.load(Ordering::Acquire) - 1;
                    // The HAM takes what comes before, then abandons this claim.
                    for _ in 0..4 * SLOTS {
                        if ham.consumer.tail() > ticket {
                            return;
                        }
                        ham.poll(book_, false);
                    }
                    panic!("the HAM never abandoned the slow claim");
                });
                match r {
                    Err(PushError::Abandoned) => book.lost_claims += 1,
                    Err(PushError::Full) if !claimed => book.full += 1,
                    r => panic!("a slow producer whose claim was abandoned: {r:?}"),
                }
            }
            Op::Poll { n, deny } => {
                for _ in 0..n {
                    if ham.poll(&mut book, deny).is_none() {
                        break;
                    }
                }
            }
            Op::Record { tear: None } => {
                ham.record();
                ham.just_took = false;
            }
            Op::Record { tear: Some(step) } => {
                KILL_AT.with(|k| k.set(Some(step)));
                let r = catch_unwind(AssertUnwindSafe(|| ham.record()));
                assert!(r.is_err(), "the record was not torn at {step}");
                let now = ham.now;
                drop(ham);
                ham = Ham::successor(&names, now, true);
            }
            Op::Takeover { in_poll, record } => {
                if in_poll && ham.just_took {
                    // Killed inside the poll that took the last slot: freed, but `tail` not
                    // stored yet.
                    let t = ham.consumer.tail();
                    ham.seg.header().tail.store(t - 1, Ordering::Release);
                }
                let now = ham.now;
                drop(ham);
                ham = Ham::successor(&names, now, record);
            }
        }
    }
    // The last HAM drains the ring (every claim left unpublished is abandoned) and records.
    let mut guard = 0;
    while ham.poll(&mut book, false).is_some() {
        guard += 1;
        assert!(guard < 100 * SLOTS, "the final drain does not end");
    }
    ham.record();

    let h = producer.header();
    let head = h.head.load(Ordering::Acquire);
    assert_eq!(h.dropped_full.load(Ordering::Relaxed), book.full);
    let rec = ham.writer.segment().header().ring_state().unwrap();
    assert_eq!(
        rec.tail, head,
        "the consumer stopped short of what was claimed"
    );
    let [consumed, rejected, abandoned] = rec.counts;
    assert_eq!(
        consumed + rejected + abandoned,
        book.pushed.len() as u64 + book.lost_claims,
        "every claimed ticket counted exactly once: {consumed} consumed, {rejected} rejected, \
         {abandoned} abandoned for {} pushed and {} claims never published",
        book.pushed.len(),
        book.lost_claims
    );
    assert_eq!(head, book.pushed.len() as u64 + book.lost_claims);
    // Every event pushed was delivered, once; nothing else was.
    for v in &book.pushed {
        assert_eq!(book.delivered.get(v), Some(&1), "event {v} not delivered");
    }
    assert_eq!(book.delivered.len(), book.pushed.len());
}

proptest! {
    #![proptest_config(Config {
        cases: 512,
        rng_seed: RngSeed::Fixed(0x4a4d_5249_4e47),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn every_ticket_is_counted_once_across_takeovers(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

/// The interleavings that found the bugs, kept as plain cases.
#[test]
fn a_successor_after_a_kill_between_freeing_a_slot_and_storing_tail() {
    run(&[
        Op::Push(2),
        Op::Poll { n: 1, deny: false },
        Op::Takeover {
            in_poll: true,
            record: true,
        },
        Op::Push(3),
    ]);
}

#[test]
fn a_kill_after_taking_events_and_before_recording_them() {
    run(&[
        Op::Push(3),
        Op::Record { tear: None },
        Op::Poll { n: 2, deny: true },
        Op::Takeover {
            in_poll: false,
            record: false,
        },
        Op::Takeover {
            in_poll: false,
            record: true,
        },
        Op::Poll { n: 1, deny: false },
        Op::Record {
            tear: Some("publish:half-written"),
        },
    ]);
}
