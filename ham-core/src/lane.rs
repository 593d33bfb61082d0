//! Lanes: a detector ring of one's own, for a producer that pushes many events.
//!
//! The client segment's ring is shared by every producer: each push claims a ticket with a
//! compare-and-swap on `head`, publishes with another, and fences before it looks at the
//! doorbell. Each locked instruction waits for the event's stores to reach the cache lines
//! the consumer last read, so a producer is bound near 8 million events a second however
//! fast the HAM drains (docs/BENCHMARKS.md has the profile). A lane has one producer: it
//! needs neither compare-and-swap, and its publish is a plain release store.
//!
//! **Private.** Like a heartbeat page ([`crate::beat`]), ham creates each lane exclusively,
//! mode 0600 under its own user, and hands the producer the open descriptor over the
//! control socket. Only that process (and whoever it passes the descriptor to) can write
//! the lane, and the HAM knows who that is: the owner's pid, start time and uid are in the
//! lane's *name*, which only ham's user can create or rename. So an event on a lane carries
//! no identity and no token, and nothing on it can be forged by another client; whatever the
//! owner scribbles on its own lane is read as the owner's, validated like any event, and
//! costs no one else anything.
//!
//! **Crash-safety.** A producer that dies mid-write never published: its slot is simply not
//! there. The consumer's position (`tail`) is kept in the lane by the HAM; a successor reads
//! it and steps over the slots that show they were consumed after it (the HAM frees a slot
//! before it stores `tail`, and may die between the two). The owner could move `tail` too:
//! it only makes the HAM skip or re-read the owner's own events.
//!
//! **Doorbell.** A lane has none of its own: after publishing, the producer fences and
//! looks at the client segment's doorbell word like any producer
//! ([`crate::client::ring_doorbell`]). The fence stays: the HAM's side could do without it
//! (`membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` after it says it sleeps), and that was
//! measured: it made pushes no faster here, and it sent an interrupt to every CPU running a
//! client each time the HAM went to sleep (in a virtual machine, microseconds each, taken
//! from the clients; the ring's latency rose with it).
//!
//! Layout (`#[repr(C)]`, versioned, checked on map):
//! ```text
//! LaneHeader (192 B, padded to 256) · LaneSlot[slots] (128 B each)
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use memmap2::MmapRaw;
use rustix::shm;

use crate::client::{KIND_RAISE, KIND_STATE, Name, PushError, RingEvent};
use crate::segment::SegmentError;

/// `b"HAMLANE\0"` read as a little-endian `u64`.
pub const LANE_MAGIC: u64 = u64::from_le_bytes(*b"HAMLANE\0");
/// Bumped on any change to the lane's layout.
pub const LANE_LAYOUT_VERSION: u32 = 1;
/// Its mode: ham's user only (the producer gets a descriptor, never the name).
pub const LANE_MODE: u32 = 0o600;
/// Slots in a lane (a power of two): 32 KiB of events.
pub const LANE_SLOTS: u32 = 256;
/// Where the slots begin.
const SLOTS_OFFSET: usize = 256;

/// The lane's header. The consumer's words and the producer's sit on lines of their own.
#[repr(C, align(64))]
pub struct LaneHeader {
    /// [`LANE_MAGIC`], stored (Release) last by ham when it creates the lane.
    pub magic: AtomicU64,
    /// [`LANE_LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// Slots (a power of two).
    pub slots: AtomicU32,
    /// The owner, as ham knows it (written by ham; for display: ham trusts the name).
    pub pid: AtomicU32,
    pub uid: AtomicU32,
    _pad0: [AtomicU32; 10],
    // -- line 1: the consumer -------------------------------------------------------------
    /// Events the HAM has taken off the lane.
    pub tail: AtomicU64,
    /// `tail` as of the HAM's ring records, under the record's generation: `recorded[g % 2]`
    /// is stored before the record of generation `g` is published, so a successor that
    /// finds record `g` newest knows which of this lane's events that record counted (the
    /// others were taken after it: they count as consumed, as on the shared ring).
    pub recorded: [AtomicU64; 2],
    _pad1: [AtomicU64; 5],
    // -- line 2: the producer -------------------------------------------------------------
    /// Events the producer found no room for (dropped, and told [`PushError::Full`]).
    pub dropped_full: AtomicU64,
    _pad2: [AtomicU64; 7],
}

const _: () = assert!(size_of::<LaneHeader>() == 192);
const _: () = assert!(size_of::<LaneHeader>() <= SLOTS_OFFSET);

/// Words of a lane slot after its sequence number.
const SLOT_WORDS: usize = 15;
mod w {
    pub const KIND: usize = 0; // kind | severity << 32
    pub const VALUE: usize = 1;
    pub const AUX: usize = 2; // raise: rtype in the low half; state: from | to << 32
    pub const ENTITY: usize = 3; // 4 words
    pub const CLASS: usize = 7; // 4 words
}

/// One slot. For ticket `t` (slot `t % slots`, lap `t / slots`), `seq` is `2 × lap` while
/// the slot is free for it (0, as the object is created, for the first lap; else stored by
/// the consumer, Release, when it took the lap before), and `2 × lap + 1` once the producer
/// published (Release, after its words). A new lane is all zeros: ham writes none of its
/// slots, and a lane costs memory only as far as its producer has pushed.
#[repr(C, align(128))]
pub struct LaneSlot {
    seq: AtomicU64,
    words: [AtomicU64; SLOT_WORDS],
}

const _: () = assert!(size_of::<LaneSlot>() == 128);

/// Bytes a lane of `slots` slots takes.
pub fn lane_size(slots: u32) -> usize {
    SLOTS_OFFSET + slots as usize * size_of::<LaneSlot>()
}

/// A mapped lane (either side).
pub struct LaneMap {
    map: MmapRaw,
    slots: u32,
}

impl LaneMap {
    /// ham's side: a new lane `name` (a stale one of ham's own is replaced; one that is not
    /// ham's is refused) for the owner `pid`/`uid`, and the descriptor to hand over.
    pub fn create(name: &str, pid: u32, uid: u32) -> Result<(Self, OwnedFd), SegmentError> {
        let fd = crate::segment::create_owned(name, LANE_MODE, lane_size(LANE_SLOTS) as u64)?;
        let lane = Self::map(&fd, name, LANE_SLOTS).inspect_err(|_| Self::unlink(name))?;
        let h = lane.header();
        h.version.store(LANE_LAYOUT_VERSION, Ordering::Relaxed);
        h.slots.store(LANE_SLOTS, Ordering::Relaxed);
        h.pid.store(pid, Ordering::Relaxed);
        h.uid.store(uid, Ordering::Relaxed);
        // Release: whoever sees the magic sees the rest.
        h.magic.store(LANE_MAGIC, Ordering::Release);
        Ok((lane, fd))
    }

    /// A successor's side: the lane `name` a predecessor made, if it is ham's own, and its
    /// descriptor.
    pub fn open(name: &str) -> Result<(Self, OwnedFd), SegmentError> {
        let fd = crate::segment::open_owned(name, LANE_MODE)?;
        Ok((Self::checked(&fd, name)?, fd))
    }

    /// The producer's side: the lane behind a descriptor ham handed over.
    pub fn from_fd(fd: &OwnedFd) -> Result<Self, SegmentError> {
        Self::checked(fd, "(detector lane)")
    }

    /// Removes the name (mappings stay valid). Missing is not an error.
    pub fn unlink(name: &str) {
        let _ = shm::unlink(name);
    }

    fn checked(fd: &impl AsFd, name: &str) -> Result<Self, SegmentError> {
        let (map, len) = crate::segment::map_whole(fd, name, SLOTS_OFFSET)?;
        let mut lane = Self { map, slots: 0 };
        let h = lane.header();
        crate::segment::check_version(
            name,
            (h.magic.load(Ordering::Acquire), LANE_MAGIC),
            (h.version.load(Ordering::Relaxed), LANE_LAYOUT_VERSION),
        )?;
        let slots = h.slots.load(Ordering::Relaxed);
        if !slots.is_power_of_two() || slots > 1 << 16 || len < lane_size(slots) {
            return Err(SegmentError::Geometry {
                name: name.to_owned(),
                why: format!(
                    "a lane of {slots} slots in {len} bytes (a power of two up to 65536, \
                     and {} bytes each, expected)",
                    size_of::<LaneSlot>()
                ),
            });
        }
        lane.slots = slots;
        Ok(lane)
    }

    fn map(fd: &impl AsFd, name: &str, slots: u32) -> Result<Self, SegmentError> {
        let (map, _) = crate::segment::map_whole(fd, name, lane_size(slots))?;
        Ok(Self { map, slots })
    }

    /// Where the mapping is, and how long (for the HAM's guard against a shrunk object).
    pub fn mapping(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }

    /// The header.
    pub fn header(&self) -> &LaneHeader {
        // The mapping holds at least SLOTS_OFFSET bytes, page-aligned.
        crate::shm::view(&self.map, 0).expect("a lane holds its header")
    }

    fn slots(&self) -> &[LaneSlot] {
        // Mapped with room for `slots` slots (checked when mapped).
        crate::shm::view_slice(&self.map, SLOTS_OFFSET, self.slots as usize)
            .expect("a lane holds its slots")
    }

    fn slot(&self, ticket: u64) -> &LaneSlot {
        &self.slots()[(ticket & u64::from(self.slots - 1)) as usize]
    }

    /// `seq` of the slot of `ticket` when it is free for it.
    fn free(&self, ticket: u64) -> u64 {
        (ticket >> self.slots.trailing_zeros()) << 1
    }

    /// Whether the slot at `ticket` holds a published event.
    pub fn has_published(&self, ticket: u64) -> bool {
        self.slot(ticket).seq.load(Ordering::Acquire) == self.free(ticket) | 1
    }
}

/// A page this process sees zeroed in a child it forks (`MADV_WIPEONFORK`, Linux 4.14): a
/// lane's producer is the process ham made it for, and a child pushing into it would be a
/// second producer, its events taken as the parent's. One load tells, with no `getpid`.
pub struct ForkGuard {
    page: memmap2::MmapMut,
}

impl ForkGuard {
    #[allow(unsafe_code)]
    pub fn new() -> std::io::Result<Self> {
        let mut page = memmap2::MmapMut::map_anon(4096)?;
        // SAFETY: the advice applies to exactly the anonymous page `page` owns, which stays
        // mapped while it lives; WIPEONFORK changes only what a forked child sees there.
        unsafe {
            rustix::mm::madvise(
                page.as_mut_ptr().cast(),
                page.len(),
                rustix::mm::Advice::LinuxWipeOnFork,
            )
        }
        .map_err(std::io::Error::from)?;
        page[0] = 1;
        Ok(Self { page })
    }

    /// Whether this is a child forked after the guard was made.
    #[inline]
    pub fn forked(&self) -> bool {
        self.page[0] == 0
    }
}

/// The producer's side of a lane. It has one producer by design: pushes from two threads
/// at once garble each other's events (all through atomics: the HAM rejects or misreads the
/// owner's own events, nothing worse); the SDK lets one thread push.
pub struct LaneProducer {
    lane: LaneMap,
    /// The next ticket (only the pushing thread loads and stores it).
    next: AtomicU64,
    fork: ForkGuard,
}

impl LaneProducer {
    /// The producer of `lane`.
    pub fn new(lane: LaneMap) -> std::io::Result<Self> {
        // Where the consumer is: the producer's tickets go on from there.
        let next = AtomicU64::new(lane.header().tail.load(Ordering::Acquire));
        Ok(Self {
            lane,
            next,
            fork: ForkGuard::new()?,
        })
    }

    /// Whether this process may push here: not a child forked after the lane was handed
    /// to its parent.
    #[inline]
    pub fn usable_here(&self) -> bool {
        !self.fork.forked()
    }

    /// Publishes one event (its kind, severity, value, aux, entity, class; the pid, uid and
    /// token are the lane's and not sent). Never blocks: a full lane drops the event, counts
    /// it and says so. Returns whether the HAM must be woken: the caller then rings the
    /// client segment's doorbell ([`crate::client::ring_doorbell`]).
    #[inline]
    pub fn push(&self, ev: &RingEvent, sleeping: &AtomicU32) -> Result<bool, PushError> {
        let t = self.next.load(Ordering::Relaxed);
        let slot = self.lane.slot(t);
        let free = self.lane.free(t);
        // Free for this ticket: the consumer took the lap before (its Release store of
        // `seq`, which this Acquire pairs with, came after its reads of the slot).
        if slot.seq.load(Ordering::Acquire) != free {
            self.lane
                .header()
                .dropped_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(PushError::Full);
        }
        let aux = match ev.kind {
            KIND_STATE => u64::from(ev.from) | (u64::from(ev.to) << 32),
            _ => u64::from(ev.from),
        };
        let s = &slot.words;
        s[w::KIND].store(
            u64::from(ev.kind) | (u64::from(ev.severity) << 32),
            Ordering::Relaxed,
        );
        s[w::VALUE].store(ev.value as u64, Ordering::Relaxed);
        s[w::AUX].store(aux, Ordering::Relaxed);
        for (d, v) in s[w::ENTITY..w::ENTITY + 4].iter().zip(ev.entity.words()) {
            d.store(v, Ordering::Relaxed);
        }
        for (d, v) in s[w::CLASS..w::CLASS + 4].iter().zip(ev.class.words()) {
            d.store(v, Ordering::Relaxed);
        }
        slot.seq.store(free | 1, Ordering::Release);
        self.next.store(t.wrapping_add(1), Ordering::Relaxed);
        // Pairs with the HAM's fence between saying it sleeps and its last look: either it
        // sees this event, or this producer sees it sleeping.
        fence(Ordering::SeqCst);
        Ok(sleeping.load(Ordering::Relaxed) & 3 == crate::client::BELL_ASLEEP)
    }

    /// The lane's header.
    pub fn header(&self) -> &LaneHeader {
        self.lane.header()
    }

    /// The next ticket (events pushed so far, and where the consumer began).
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// The HAM's side of one lane: its position, and the last names it decoded.
pub struct LaneConsumer {
    tail: u64,
    /// The last event's entity and class, as words and decoded: a detector's burst names
    /// the same ones again and again, and decoding them was a fifth of the HAM's time.
    names: Option<([u64; 8], Name, Name)>,
}

/// What one look at a lane found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanePolled {
    /// An event (its pid, uid and token are the lane owner's, filled in by the caller).
    Event(RingEvent),
    /// A published slot whose bytes are no event (the owner's stray write): taken off,
    /// to be counted.
    Rejected(&'static str),
    Empty,
}

impl LaneConsumer {
    /// A consumer where the lane says the last one stopped, stepped over the slots freed
    /// after that (a HAM that died between freeing a slot and storing `tail`). A freed slot
    /// may already hold the producer's next event in it, one lap on: that too says the slot
    /// was taken (stopping there left the successor waiting on that slot for ever, and the
    /// lane full behind it).
    pub fn resume(lane: &LaneMap) -> Self {
        let cap = u64::from(lane.slots);
        let mut t = lane.header().tail.load(Ordering::Acquire);
        for _ in 0..cap {
            let next_lap = lane.free(t.wrapping_add(cap));
            if lane.slot(t).seq.load(Ordering::Acquire) | 1 != next_lap | 1 {
                break;
            }
            t = t.wrapping_add(1);
        }
        lane.header().tail.store(t, Ordering::Release);
        Self {
            tail: t,
            names: None,
        }
    }

    /// The position (events taken off so far).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Before the HAM publishes its ring record of generation `generation`: this lane's
    /// position as that record counts it.
    pub fn note_record(&self, lane: &LaneMap, generation: u64) {
        lane.header().recorded[(generation % 2) as usize].store(self.tail, Ordering::Release);
    }

    /// Events taken off this lane after the ring record of generation `generation` (the
    /// newest one) was made: a successor counts them as consumed.
    pub fn taken_since_record(&self, lane: &LaneMap, generation: u64) -> u64 {
        let at = lane.header().recorded[(generation % 2) as usize].load(Ordering::Acquire);
        self.tail.wrapping_sub(at)
    }

    /// Whether the next slot holds a published event.
    pub fn has_published(&self, lane: &LaneMap) -> bool {
        lane.has_published(self.tail)
    }

    /// Takes the next event, with `pid`, `uid` and `token` as the lane's owner's.
    pub fn poll(&mut self, lane: &LaneMap, pid: u32, uid: u32, token: u64) -> LanePolled {
        let t = self.tail;
        let slot = lane.slot(t);
        if slot.seq.load(Ordering::Acquire) != lane.free(t) | 1 {
            return LanePolled::Empty;
        }
        let mut b = [0u64; SLOT_WORDS];
        for (x, s) in b.iter_mut().zip(slot.words.iter()) {
            *x = s.load(Ordering::Relaxed);
        }
        // Free for the next lap only after the words are read (Release orders the reads
        // before it), then the position.
        let cap = u64::from(lane.slots);
        slot.seq
            .store(lane.free(t.wrapping_add(cap)), Ordering::Release);
        self.tail = t.wrapping_add(1);
        lane.header().tail.store(self.tail, Ordering::Release);
        let raw: [u64; 8] = b[w::ENTITY..w::CLASS + 4]
            .try_into()
            .expect("eight name words");
        let names = match &self.names {
            Some((r, e, c)) if *r == raw => Ok((*e, *c)),
            _ => decode_names(&raw),
        };
        match names.and_then(|n| decode(&b, n, pid, uid, token)) {
            Ok(ev) => {
                self.names = Some((raw, ev.entity, ev.class));
                LanePolled::Event(ev)
            }
            Err(why) => LanePolled::Rejected(why),
        }
    }
}

fn decode_names(raw: &[u64; 8]) -> Result<(Name, Name), &'static str> {
    Ok((
        Name::from_words(&raw[..4]).ok_or("entity name not UTF-8")?,
        Name::from_words(&raw[4..]).ok_or("class not UTF-8")?,
    ))
}

fn decode(
    b: &[u64; SLOT_WORDS],
    (entity, class): (Name, Name),
    pid: u32,
    uid: u32,
    token: u64,
) -> Result<RingEvent, &'static str> {
    let kind = (b[w::KIND] & 0xffff_ffff) as u32;
    if kind != KIND_RAISE && kind != KIND_STATE {
        return Err("unknown event kind");
    }
    let aux = b[w::AUX];
    let (from, to) = match kind {
        KIND_STATE => ((aux & 0xffff_ffff) as u32, (aux >> 32) as u32),
        _ => {
            if aux >> 32 != 0 {
                return Err("raise type out of range");
            }
            (aux as u32, 0)
        }
    };
    Ok(RingEvent {
        kind,
        pid,
        uid,
        token,
        entity,
        class,
        severity: (b[w::KIND] >> 32) as u32,
        value: b[w::VALUE] as i64,
        from,
        to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{BELL_ASLEEP, bell};

    fn event(entity: &str, value: i64) -> RingEvent {
        RingEvent {
            kind: KIND_RAISE,
            pid: 0,
            uid: 0,
            token: 0,
            entity: Name::new(entity).unwrap(),
            class: Name::new("disk").unwrap(),
            severity: 3,
            value,
            from: 7,
            to: 0,
        }
    }

    /// A lane's name, removed when the test ends (passed or not).
    struct Named(String);

    impl std::ops::Deref for Named {
        type Target = str;
        fn deref(&self) -> &str {
            &self.0
        }
    }

    impl Drop for Named {
        fn drop(&mut self) {
            LaneMap::unlink(&self.0);
        }
    }

    fn lane(tag: &str) -> (Named, LaneMap, OwnedFd) {
        let name = Named(format!("/ham-core-test-lane-{tag}-{}", std::process::id()));
        let (lane, fd) = LaneMap::create(&name, 42, 1000).unwrap();
        (name, lane, fd)
    }

    #[test]
    fn events_go_through_in_order_with_the_owners_identity() {
        let (_name, ham, fd) = lane("order");
        let p = LaneProducer::new(LaneMap::from_fd(&fd).unwrap()).unwrap();
        assert!(p.usable_here());
        let mut c = LaneConsumer::resume(&ham);
        let awake = AtomicU32::new(0);
        for round in 0..3 {
            // Fill the lane whole, then drain it: the tickets wrap three times.
            for i in 0..i64::from(LANE_SLOTS) {
                assert_eq!(p.push(&event("db", round * 1000 + i), &awake), Ok(false));
            }
            assert_eq!(p.push(&event("db", -1), &awake), Err(PushError::Full));
            for i in 0..i64::from(LANE_SLOTS) {
                let LanePolled::Event(ev) = c.poll(&ham, 42, 1000, 9) else {
                    panic!("event {i} of round {round} missing");
                };
                assert_eq!((ev.pid, ev.uid, ev.token), (42, 1000, 9));
                assert_eq!((ev.entity.as_str(), ev.class.as_str()), ("db", "disk"));
                assert_eq!((ev.severity, ev.value, ev.from), (3, round * 1000 + i, 7));
            }
            assert_eq!(c.poll(&ham, 42, 1000, 9), LanePolled::Empty);
        }
        assert_eq!(ham.header().dropped_full.load(Ordering::Relaxed), 3);
        let asleep = AtomicU32::new(bell(5, BELL_ASLEEP));
        assert_eq!(p.push(&event("db", 1), &asleep), Ok(true), "asleep: ring");
    }

    #[test]
    fn a_successor_resumes_where_the_lane_says_and_steps_over_freed_slots() {
        let (name, ham, fd) = lane("resume");
        let p = LaneProducer::new(LaneMap::from_fd(&fd).unwrap()).unwrap();
        let awake = AtomicU32::new(0);
        for i in 0..10 {
            p.push(&event("db", i), &awake).unwrap();
        }
        let mut c = LaneConsumer::resume(&ham);
        for _ in 0..4 {
            assert!(matches!(c.poll(&ham, 1, 1, 1), LanePolled::Event(_)));
        }
        // A HAM killed after freeing slot 4 and before storing its position.
        ham.slot(4)
            .seq
            .store(ham.free(4 + u64::from(LANE_SLOTS)), Ordering::Release);
        let (successor, _) = LaneMap::open(&name).unwrap();
        let mut c2 = LaneConsumer::resume(&successor);
        assert_eq!(c2.tail(), 5);
        let LanePolled::Event(ev) = c2.poll(&successor, 1, 1, 1) else {
            panic!("event 5 missing");
        };
        assert_eq!(ev.value, 5);
        // The same, once the producer has filled the lane again: the freed slot holds its
        // next lap's event (the successor must not wait on it).
        let (_name, ham, fd) = lane("resume-lap");
        let p = LaneProducer::new(LaneMap::from_fd(&fd).unwrap()).unwrap();
        let mut c = LaneConsumer::resume(&ham);
        for i in 0..i64::from(LANE_SLOTS) {
            p.push(&event("db", i), &awake).unwrap();
        }
        assert!(matches!(c.poll(&ham, 1, 1, 1), LanePolled::Event(_)));
        // Killed after freeing slot 1, before storing the position 2.
        let _ = c.poll(&ham, 1, 1, 1);
        ham.header().tail.store(1, Ordering::Release);
        p.push(&event("db", 1000), &awake).unwrap();
        p.push(&event("db", 1001), &awake).unwrap();
        assert_eq!(p.push(&event("db", 1002), &awake), Err(PushError::Full));
        let mut c2 = LaneConsumer::resume(&ham);
        assert_eq!(c2.tail(), 2);
        for want in (2..i64::from(LANE_SLOTS)).chain([1000, 1001]) {
            let LanePolled::Event(ev) = c2.poll(&ham, 1, 1, 1) else {
                panic!("event {want} missing");
            };
            assert_eq!(ev.value, want);
        }
        assert_eq!(c2.poll(&ham, 1, 1, 1), LanePolled::Empty);
    }

    #[test]
    fn stray_bytes_are_rejected_and_a_producer_dying_mid_write_publishes_nothing() {
        let (_name, ham, _fd) = lane("stray");
        let mut c = LaneConsumer::resume(&ham);
        // Words written, sequence not: a producer killed before it published.
        ham.slot(0).words[w::KIND].store(u64::from(KIND_RAISE), Ordering::Relaxed);
        assert_eq!(c.poll(&ham, 1, 1, 1), LanePolled::Empty);
        // Published garbage: an unknown kind, then a name that is not UTF-8.
        ham.slot(0).words[w::KIND].store(99, Ordering::Relaxed);
        ham.slot(0).seq.store(1, Ordering::Release);
        assert_eq!(
            c.poll(&ham, 1, 1, 1),
            LanePolled::Rejected("unknown event kind")
        );
        ham.slot(1).words[w::KIND].store(u64::from(KIND_RAISE), Ordering::Relaxed);
        ham.slot(1).words[w::ENTITY].store(0xff, Ordering::Relaxed);
        ham.slot(1).seq.store(1, Ordering::Release);
        assert_eq!(
            c.poll(&ham, 1, 1, 1),
            LanePolled::Rejected("entity name not UTF-8")
        );
        // A sequence no producer writes: the lane looks empty (only its owner is harmed).
        ham.slot(2).seq.store(12345, Ordering::Release);
        assert_eq!(c.poll(&ham, 1, 1, 1), LanePolled::Empty);
    }

    #[test]
    fn a_lane_of_another_layout_or_geometry_is_refused() {
        let (_name, ham, fd) = lane("layout");
        ham.header().slots.store(3, Ordering::Relaxed);
        assert!(matches!(
            LaneMap::from_fd(&fd),
            Err(SegmentError::Geometry { .. })
        ));
        ham.header().slots.store(LANE_SLOTS, Ordering::Relaxed);
        ham.header().version.store(99, Ordering::Relaxed);
        assert!(LaneMap::from_fd(&fd).is_err());
    }

    #[test]
    fn a_thread_pushing_while_another_drains_loses_nothing() {
        let (_name, ham, fd) = lane("threads");
        let p = LaneProducer::new(LaneMap::from_fd(&fd).unwrap()).unwrap();
        let awake = AtomicU32::new(0);
        const N: i64 = 200_000;
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..N {
                    while p.push(&event("db", i), &awake) == Err(PushError::Full) {
                        std::thread::yield_now();
                    }
                }
            });
            let mut c = LaneConsumer::resume(&ham);
            let mut want = 0;
            while want < N {
                match c.poll(&ham, 1, 1, 1) {
                    LanePolled::Event(ev) => {
                        assert_eq!(ev.value, want);
                        want += 1;
                    }
                    LanePolled::Empty => std::thread::yield_now(),
                    LanePolled::Rejected(why) => panic!("rejected: {why}"),
                }
            }
        });
    }
}
