//! The detector ring under loom: every interleaving (within a preemption bound) of its
//! producers and its consumer, with the atomics and orderings the ring really uses.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p ham-core --release --test loom_ring`
//! (`.ci/run` runs it). In an ordinary build this file is empty.
#![cfg(loom)]

use ham_core::client::{
    AsRing, BELL_RUNG, Consumer, ModelRing, Name, Polled, PushError, RingEvent,
};
use loom::sync::Arc;
use loom::sync::atomic::Ordering;

fn event(pid: u32, value: i64) -> RingEvent {
    RingEvent {
        kind: ham_core::client::KIND_RAISE,
        pid,
        uid: 1000,
        token: 7,
        entity: Name::new("db").unwrap(),
        class: Name::new("disk").unwrap(),
        severity: 2,
        value,
        from: 0,
        to: 0,
    }
}

fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    // A consumer that finds a slot claimed looks again: allow it the steps.
    b.max_branches = 100_000;
    b.check(f);
}

/// Polls until the ring says something other than "nothing yet".
fn next(c: &mut Consumer, ring: &ModelRing, now: u64, dead: bool) -> Polled {
    loop {
        match c.poll(ring, now, |_| dead) {
            Polled::Empty | Polled::Stalled { .. } => loom::thread::yield_now(),
            other => return other,
        }
    }
}

#[test]
fn two_producers_claim_distinct_slots_and_publish_whole_events() {
    model(3, || {
        let ring = Arc::new(ModelRing::new(2));
        let producers: Vec<_> = [(11, 1), (12, 2)]
            .into_iter()
            .map(|(pid, v)| {
                let ring = ring.clone();
                loom::thread::spawn(move || ring.ring_view().push(&event(pid, v)))
            })
            .collect();
        for p in producers {
            assert_eq!(p.join().unwrap(), Ok(()));
        }
        let mut c = Consumer::new(&*ring, u64::MAX);
        let mut got = Vec::new();
        for _ in 0..2 {
            match c.poll(&*ring, 0, |_| false) {
                Polled::Event(ev) => got.push(ev),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(c.poll(&*ring, 0, |_| false), Polled::Empty));
        // Each event whole (its checksum held), each once.
        got.sort_by_key(|e| e.pid);
        assert_eq!(got, vec![event(11, 1), event(12, 2)]);
    });
}

#[test]
fn an_event_published_while_the_consumer_looks_arrives_once_and_whole() {
    model(3, || {
        let ring = Arc::new(ModelRing::new(2));
        let producer = {
            let ring = ring.clone();
            loom::thread::spawn(move || ring.ring_view().push(&event(11, 1)))
        };
        let mut c = Consumer::new(&*ring, u64::MAX);
        match next(&mut c, &ring, 0, false) {
            Polled::Event(ev) => assert_eq!(ev, event(11, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(producer.join().unwrap(), Ok(()));
        assert_eq!(c.stats.rejected, 0);
    });
}

#[test]
fn an_abandoned_claim_is_either_delivered_or_refused_to_its_producer_never_both() {
    model(3, || {
        let ring = Arc::new(ModelRing::new(2));
        let producer = {
            let ring = ring.clone();
            loom::thread::spawn(move || ring.ring_view().push(&event(21, 5)))
        };
        // Past its deadline, and its producer "proven dead": the consumer abandons the
        // slot if it finds it claimed but not published.
        let mut c = Consumer::new(&*ring, 0);
        let outcome = next(&mut c, &ring, 1, true);
        let pushed = producer.join().unwrap();
        match outcome {
            Polled::Event(ev) => {
                assert_eq!(ev, event(21, 5));
                assert_eq!(pushed, Ok(()));
            }
            Polled::Abandoned { pid } => {
                // 0 when the claim was seen before its producer wrote who it is.
                assert!(pid == 21 || pid == 0, "{pid}");
                assert_eq!(pushed, Err(PushError::Abandoned));
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_consumer_going_to_sleep_never_misses_an_event() {
    model(3, || {
        let ring = Arc::new(ModelRing::new(2));
        let producer = {
            let ring = ring.clone();
            loom::thread::spawn(move || ring.ring_view().push(&event(31, 9)))
        };
        let mut c = Consumer::new(&*ring, u64::MAX);
        let asleep = c.prepare_sleep(&*ring);
        assert_eq!(producer.join().unwrap(), Ok(()));
        if asleep {
            // Asleep with an event published: the producer must have rung the doorbell.
            let bell = ring.ring_view().header().sleeping.load(Ordering::Acquire);
            assert_eq!(
                bell & 3,
                BELL_RUNG,
                "an event published while the consumer slept unrung"
            );
        } else {
            assert!(c.has_published(&*ring));
        }
    });
}
