//! The state segment's layout: a [`Header`] followed by a fixed-capacity table of
//! [`EntitySlot`]s.
//!
//! Everything here is `#[repr(C)]` and made only of atomics, so that
//! * any bit pattern is a valid value (a reader can never be handed an invalid enum or bool);
//! * concurrent access from several processes is defined behaviour (no plain loads racing stores);
//! * the layout is the same for every build of ham that shares [`LAYOUT_VERSION`].
//!
//! # The record protocol (A/B copies)
//! The HAM is the single writer, and it may be SIGKILLed between any two instructions. A
//! plain seqlock would then be left odd forever. Each entity slot instead holds two copies of
//! its record. A copy is `checksum` + `body`, and `body[GEN]` is its generation. The newest
//! copy whose checksum matches its body is the record; a slot with no valid copy is free
//! (a zero-filled segment is therefore all free).
//!
//! To publish generation `g + 1` the writer overwrites the copy at index `(g + 1) % 2`,
//! never the copy holding `g`:
//! 1. `checksum := 0` (the copy is now invalid), then a release fence so that no body store
//!    is seen before it;
//! 2. the body words, relaxed;
//! 3. `checksum := sum(body)` with `Release`, pairing with the `Acquire` load in
//!    [`EntityCopy::load`].
//!
//! A writer killed anywhere in steps 1–3 leaves that copy invalid (or, if it died after
//! step 3, complete), and the other copy still holds generation `g`. A reader that races the
//! writer sees a body that does not match the checksum it loaded and retries.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::client::RingRecord;

/// `b"HAMSTATE"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"HAMSTATE");
/// Bumped on every incompatible change of anything in this module.
#[cfg(not(feature = "next-layout"))]
pub const LAYOUT_VERSION: u32 = 8;
/// The test build's next layout (feature `next-layout`): layout 8 and a count of live
/// upgrades in the header.
#[cfg(feature = "next-layout")]
pub const LAYOUT_VERSION: u32 = 9;

/// The older layouts this build migrates in place when it takes a segment over (a live
/// upgrade, or a warm start by a newer ham), by the steps in [`Header::migrate`]. Only
/// layouts whose header and records read as this one's may be listed (changes that fill
/// reserved words): readers (a Guardian, `hamctl`) read such a segment as it is, and only
/// the HAM that takes it over migrates it, before it writes anything else.
#[cfg(not(feature = "next-layout"))]
pub const MIGRATES_FROM: &[u32] = &[];
#[cfg(feature = "next-layout")]
pub const MIGRATES_FROM: &[u32] = &[8];
/// Longest entity name, in bytes (UTF-8).
pub const NAME_MAX: usize = 63;
const NAME_WORDS: usize = 8;

/// [`Header::ham_lock`]'s bits, the kernel's for a robust futex (`linux/futex.h`): some
/// thread may wait on the word (the kernel wakes one only when this is set)…
pub const LOCK_WAITERS: u32 = 0x8000_0000;
/// …the thread named by the word died holding it…
pub const LOCK_OWNER_DIED: u32 = 0x4000_0000;
/// …and the thread's id.
pub const LOCK_TID_MASK: u32 = 0x3fff_ffff;

/// Header flag: `hamctl shutdown` (or SIGTERM) was received; the HAM is stopping on purpose,
/// and a Guardian must not take over.
pub const FLAG_STOP_INTENT: u32 = 1 << 0;
/// Header flag: this HAM found a valid segment at start and re-adopted it (warm start).
pub const FLAG_WARM_START: u32 = 1 << 1;
/// Header flag: an operator switched device restarts off (`hamctl device-restart disable`);
/// escalations to a device restart are logged and skipped.
pub const FLAG_DEVICE_RESTART_OFF: u32 = 1 << 2;
/// Header flag: this HAM is a Guardian that took over from a HAM that died or was fenced
/// (set with [`FLAG_WARM_START`]; a cold or warm start clears it).
pub const FLAG_TOOK_OVER: u32 = 1 << 3;
/// Header flag: the HAM handed the instance over to a Guardian of a new binary and exited
/// (`hamctl upgrade`); that Guardian's takeover clears it.
pub const FLAG_UPGRADING: u32 = 1 << 4;
/// Header flag: the HAM stopped accepting control connections on purpose (no descriptor
/// left, or at its cap) until one closes: a connection waiting then is not a hang.
pub const FLAG_ACCEPT_PAUSED: u32 = 1 << 5;
/// Header flag: the HAM the header names has taken the segment over (a takeover or a warm
/// start) and is still adopting what its predecessor left: until it clears this, the records
/// are as that predecessor left them.
pub const FLAG_ADOPTING: u32 = 1 << 6;

/// Exit status source: `waitid` on the HAM's own children.
pub const EXIT_SOURCE_WAITID: u32 = 1 << 0;
/// Exit status source: `ioctl(PIDFD_GET_INFO, PIDFD_INFO_EXIT)` (Linux ≥ 6.15).
pub const EXIT_SOURCE_PIDFD_INFO: u32 = 1 << 1;
/// Exit status source: the netlink proc connector (needs CAP_NET_ADMIN).
pub const EXIT_SOURCE_PROC_CONNECTOR: u32 = 1 << 2;

/// The segment header. Written only by the HAM that owns the current epoch.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`]; stored last (with `Release`) when a segment is created.
    magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    layout_version: AtomicU32,
    /// `size_of::<Header>()` of the writer.
    header_size: AtomicU32,
    /// Size of the whole object in bytes.
    total_size: AtomicU64,
    /// Number of entity slots.
    entity_capacity: AtomicU32,
    /// `size_of::<EntitySlot>()` of the writer.
    slot_size: AtomicU32,
    /// Byte offset of slot 0.
    entities_offset: AtomicU64,
    /// Bumped by each HAM that takes ownership; every write checks it still owns it.
    epoch: AtomicU64,
    /// Pid of the HAM owning `epoch` (stored as `u32`).
    ham_pid: AtomicU32,
    /// Pid of the current Guardian, 0 if none.
    guardian_pid: AtomicU32,
    /// Start time (clock ticks since boot, `/proc/PID/stat` field 22) of `ham_pid`.
    ham_start_time: AtomicU64,
    /// Start time of `guardian_pid`.
    guardian_start_time: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds of the HAM's last loop turn; the Guardian's lease.
    liveness: AtomicU64,
    /// `FLAG_*` bits.
    flags: AtomicU32,
    /// Slots `0..entity_count` have ever been used; readers need not look further.
    entity_count: AtomicU32,
    /// Wall-clock nanoseconds since the Unix epoch when the segment was created.
    created_unix_ns: AtomicU64,
    /// Times a HAM died and was replaced (QNX's "Ham Failures").
    ham_failures: AtomicU32,
    /// Times a Guardian died and was replaced.
    guardian_failures: AtomicU32,
    /// `EXIT_SOURCE_*` bits: where the HAM gets the exit status of processes that are not
    /// its children.
    exit_sources: AtomicU32,
    /// The HAM's lock, a robust futex: the HAM's thread id or'ed with
    /// [`LOCK_WAITERS`] while it runs; the kernel adds [`LOCK_OWNER_DIED`] and wakes a waiter
    /// (its Guardian) as that thread exits, before the rest of the process is torn down.
    /// 0 in a segment whose HAM predates it (padding until then, always zero): its Guardian
    /// watches the pidfd alone. See `ham-guardian/src/sys/robust.rs`.
    ham_lock: AtomicU32,
    /// Reserved for changes that span records (none does yet: each record is published on
    /// its own, see docs/ARCHITECTURE.md).
    intent: [AtomicU64; 8],
    /// Key of the client tokens (`client::client_token`): kept here, readable by the HAM
    /// and its Guardian only, so a successor accepts the tokens its predecessor gave.
    client_key: [AtomicU64; 2],
    /// Unused since layout 8: the ring's counts and position were four separate words here,
    /// and a HAM killed between them left counts of one record with the position of another
    /// (events counted twice). They are now one A/B record, `ring`.
    _ring_v7: [AtomicU64; 4],
    /// ham's log verbosity (`ham_verbose`): 0 quiet, 1 normal, 2 and up more.
    verbosity: AtomicU64,
    /// What the limits on what clients can make ham hold refused or dropped, indexed by
    /// `LIMIT_*` (0 in a segment from before they existed: nothing counted yet).
    limit_counts: [AtomicU64; LIMITS],
    /// CLOCK_MONOTONIC ns by which what the cluster placed here must be stopped (the
    /// cluster agent's last renewed lease, less a margin); 0: none. Kept here so that a
    /// successor fences at the same moment.
    fence_at: AtomicU64,
    /// The etcd lease `fence_at` belongs to (what is placed here hangs on it).
    fence_lease: AtomicU64,
    /// CLOCK_MONOTONIC ns of the HAM's earliest deadline (its timer), 0: none. The
    /// Guardian checks that the HAM turned its loop after it, `liveness_timeout` later (0
    /// in a segment from before it existed: the Guardian watches events only).
    deadline: AtomicU64,
    /// Layout 9 (the test layout): live upgrades this segment went through.
    #[cfg(feature = "next-layout")]
    upgrades: AtomicU64,
    #[cfg(feature = "next-layout")]
    _reserved: [AtomicU64; 14 - LIMITS],
    #[cfg(not(feature = "next-layout"))]
    _reserved: [AtomicU64; 15 - LIMITS],
    /// The detector ring consumer's position and counts (consumed, rejected, abandoned),
    /// kept here where no client can write them: one A/B record, so that a HAM killed while
    /// recording leaves the previous record whole.
    ring: RingStateSlot,
}

/// `limit_counts` indices: condition runs dropped over an entity's quota, definitions
/// refused over an entity's or unprivileged users' share, subscriptions refused, control
/// connections refused.
pub const LIMIT_RUNS: usize = 0;
pub const LIMIT_DEFS: usize = 1;
pub const LIMIT_SUBS: usize = 2;
pub const LIMIT_CONNS: usize = 3;
/// How many `limit_counts` there are.
pub const LIMITS: usize = 4;

const _: () = assert!(std::mem::size_of::<Header>() == 512);
const _: () = assert!(std::mem::align_of::<Header>() == 64);

/// What a reader takes from the header in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSnapshot {
    pub epoch: u64,
    pub ham_pid: i32,
    pub ham_start_time: u64,
    pub guardian_pid: i32,
    pub guardian_start_time: u64,
    pub liveness_ns: u64,
    pub flags: u32,
    pub entity_count: u32,
    pub entity_capacity: u32,
    pub created_unix_ns: u64,
    pub ham_failures: u32,
    pub guardian_failures: u32,
    pub exit_sources: u32,
}

impl Header {
    /// Loads every reader-visible field (each word is read atomically; fields written by
    /// different steps of the HAM may come from different moments).
    pub fn snapshot(&self) -> HeaderSnapshot {
        HeaderSnapshot {
            // Acquire pairs with the Release stores of `set_epoch`.
            epoch: self.epoch.load(Ordering::Acquire),
            ham_pid: self.ham_pid.load(Ordering::Relaxed) as i32,
            ham_start_time: self.ham_start_time.load(Ordering::Relaxed),
            guardian_pid: self.guardian_pid.load(Ordering::Relaxed) as i32,
            guardian_start_time: self.guardian_start_time.load(Ordering::Relaxed),
            liveness_ns: self.liveness.load(Ordering::Relaxed),
            flags: self.flags.load(Ordering::Relaxed),
            entity_count: self.entity_count.load(Ordering::Relaxed),
            entity_capacity: self.entity_capacity.load(Ordering::Relaxed),
            created_unix_ns: self.created_unix_ns.load(Ordering::Relaxed),
            ham_failures: self.ham_failures.load(Ordering::Relaxed),
            guardian_failures: self.guardian_failures.load(Ordering::Relaxed),
            exit_sources: self.exit_sources.load(Ordering::Relaxed),
        }
    }

    pub fn magic(&self) -> u64 {
        // Acquire pairs with the Release store in `init`: a reader that sees the magic sees
        // every geometry field.
        self.magic.load(Ordering::Acquire)
    }
    pub fn layout_version(&self) -> u32 {
        self.layout_version.load(Ordering::Relaxed)
    }

    /// Makes a segment of layout `from` (one of [`MIGRATES_FROM`]) one of this layout, in
    /// place; by the HAM that owns it, before anything else is written. Each step only
    /// fills words that were reserved (zero) in the older layout, then stores the version.
    pub(crate) fn migrate(&self, from: u32) {
        let mut v = from;
        while v < LAYOUT_VERSION {
            #[cfg(feature = "next-layout")]
            if v == 8 {
                // 8 → 9: `upgrades` was a reserved word (zero); this migration is one.
                self.upgrades.fetch_add(1, Ordering::Relaxed);
            }
            v += 1;
        }
        self.layout_version.store(LAYOUT_VERSION, Ordering::Release);
    }

    /// Live upgrades this segment went through (layout 9 only; `None` before).
    pub fn upgrades(&self) -> Option<u64> {
        #[cfg(feature = "next-layout")]
        return Some(self.upgrades.load(Ordering::Relaxed));
        #[cfg(not(feature = "next-layout"))]
        None
    }
    pub fn header_size(&self) -> u32 {
        self.header_size.load(Ordering::Relaxed)
    }
    pub fn total_size(&self) -> u64 {
        self.total_size.load(Ordering::Relaxed)
    }
    pub fn entity_capacity(&self) -> u32 {
        self.entity_capacity.load(Ordering::Relaxed)
    }
    pub fn slot_size(&self) -> u32 {
        self.slot_size.load(Ordering::Relaxed)
    }
    pub fn entities_offset(&self) -> u64 {
        self.entities_offset.load(Ordering::Relaxed)
    }
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    pub fn entity_count(&self) -> u32 {
        self.entity_count.load(Ordering::Acquire)
    }
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    /// The HAM's lock word (see the field): written by the HAM and by the kernel only.
    pub fn ham_lock(&self) -> &AtomicU32 {
        &self.ham_lock
    }

    /// Fills in a zeroed header. The magic goes last, with `Release`.
    pub(crate) fn init(&self, total_size: u64, capacity: u32, created_unix_ns: u64) {
        self.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        self.header_size
            .store(std::mem::size_of::<Header>() as u32, Ordering::Relaxed);
        self.total_size.store(total_size, Ordering::Relaxed);
        self.entity_capacity.store(capacity, Ordering::Relaxed);
        self.slot_size
            .store(std::mem::size_of::<EntitySlot>() as u32, Ordering::Relaxed);
        self.entities_offset
            .store(std::mem::size_of::<Header>() as u64, Ordering::Relaxed);
        self.created_unix_ns
            .store(created_unix_ns, Ordering::Relaxed);
        // Release pairs with the Acquire in `magic()`.
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Rewrites the words that say what the segment is (magic, layout, sizes), as `init` wrote
    /// them, where any differs: by the HAM that owns it, whose mapping and capacity are the
    /// truth. Returns what was wrong (`None`: intact, nothing written).
    pub(crate) fn mend(&self, total_size: u64, capacity: u32) -> Option<String> {
        let header = std::mem::size_of::<Header>();
        let slot = std::mem::size_of::<EntitySlot>();
        let found = [
            ("magic", self.magic(), MAGIC),
            (
                "layout",
                self.layout_version().into(),
                LAYOUT_VERSION.into(),
            ),
            ("header size", self.header_size().into(), header as u64),
            ("size", self.total_size(), total_size),
            ("capacity", self.entity_capacity().into(), capacity.into()),
            ("slot size", self.slot_size().into(), slot as u64),
            ("slot offset", self.entities_offset(), header as u64),
        ];
        let wrong: Vec<String> = found
            .iter()
            .filter(|(_, was, want)| was != want)
            .map(|(what, was, want)| format!("{what} {was:#x} (not {want:#x})"))
            .collect();
        if wrong.is_empty() {
            return None;
        }
        self.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        self.header_size.store(header as u32, Ordering::Relaxed);
        self.total_size.store(total_size, Ordering::Relaxed);
        self.entity_capacity.store(capacity, Ordering::Relaxed);
        self.slot_size.store(slot as u32, Ordering::Relaxed);
        self.entities_offset.store(header as u64, Ordering::Relaxed);
        // Release, as in `init`: a reader that sees the magic sees the rest.
        self.magic.store(MAGIC, Ordering::Release);
        Some(wrong.join(", "))
    }

    /// Takes the next epoch: atomic, so two would-be owners never get the same one, and the
    /// older one's next write sees it is fenced.
    pub(crate) fn next_epoch(&self) -> u64 {
        // AcqRel: pairs with the Acquire loads in `epoch()` / `snapshot()`.
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }
    pub(crate) fn set_ham(&self, pid: i32, start_time: u64) {
        self.ham_start_time.store(start_time, Ordering::Relaxed);
        self.ham_pid.store(pid as u32, Ordering::Release);
    }
    pub(crate) fn set_guardian(&self, pid: i32, start_time: u64) {
        self.guardian_start_time
            .store(start_time, Ordering::Relaxed);
        self.guardian_pid.store(pid as u32, Ordering::Release);
    }
    pub(crate) fn set_liveness(&self, mono_ns: u64) {
        self.liveness.store(mono_ns, Ordering::Relaxed);
    }
    pub(crate) fn set_deadline(&self, mono_ns: u64) {
        self.deadline.store(mono_ns, Ordering::Relaxed);
    }
    /// The HAM's earliest deadline (CLOCK_MONOTONIC ns), 0: none.
    pub fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }
    pub(crate) fn set_flags(&self, flags: u32) {
        self.flags.store(flags, Ordering::Release);
    }
    pub(crate) fn set_entity_count(&self, n: u32) {
        // Release: a reader that sees the count sees the slots published before it.
        self.entity_count.store(n, Ordering::Release);
    }
    pub(crate) fn set_exit_sources(&self, bits: u32) {
        self.exit_sources.store(bits, Ordering::Relaxed);
    }
    pub(crate) fn set_client_key(&self, key: [u64; 2]) {
        self.client_key[0].store(key[0], Ordering::Relaxed);
        self.client_key[1].store(key[1], Ordering::Relaxed);
    }
    /// The client-token key (0, 0 if none was made yet).
    pub fn client_key(&self) -> [u64; 2] {
        [
            self.client_key[0].load(Ordering::Relaxed),
            self.client_key[1].load(Ordering::Relaxed),
        ]
    }
    pub(crate) fn set_verbosity(&self, level: u64) {
        self.verbosity.store(level, Ordering::Relaxed);
    }
    /// The log verbosity (0 in a segment that never set it: read as "normal").
    pub fn verbosity(&self) -> u64 {
        self.verbosity.load(Ordering::Relaxed)
    }
    /// Records the ring consumer's position and counts as the next generation (single
    /// writer: the HAM owning the epoch).
    pub(crate) fn publish_ring_state(&self, rec: RingRecord, hook: Option<Hook>) {
        let [consumed, rejected, abandoned] = rec.counts;
        self.ring
            .publish_body(|g| [g, rec.tail, consumed, rejected, abandoned], hook);
    }
    /// The ring consumer's last record (position and counts, from one record); `None` if no
    /// HAM recorded one (or a reader kept racing the writer).
    pub fn ring_state(&self) -> Option<RingRecord> {
        match self.ring.newest() {
            Ok(Some([_, tail, consumed, rejected, abandoned])) => Some(RingRecord {
                tail,
                counts: [consumed, rejected, abandoned],
            }),
            _ => None,
        }
    }
    /// The generation of the ring consumer's last record (the next one is this + 1; a
    /// single writer publishes them). Lanes keep their position at each record under it
    /// (`ham_core::lane`).
    pub fn ring_generation(&self) -> u64 {
        self.ring.current_generation()
    }
    /// Where the detector ring's consumer stopped.
    pub fn ring_tail(&self) -> u64 {
        self.ring_state().unwrap_or_default().tail
    }
    /// The detector ring's consumed, rejected and abandoned counts.
    pub fn ring_counts(&self) -> [u64; 3] {
        self.ring_state().unwrap_or_default().counts
    }
    pub(crate) fn bump_limit(&self, which: usize) {
        if let Some(c) = self.limit_counts.get(which) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// The `LIMIT_*` counts.
    pub fn limit_counts(&self) -> [u64; LIMITS] {
        std::array::from_fn(|i| self.limit_counts[i].load(Ordering::Relaxed))
    }
    pub(crate) fn set_fence(&self, lease: u64, at: u64) {
        self.fence_lease.store(lease, Ordering::Relaxed);
        self.fence_at.store(at, Ordering::Relaxed);
    }
    /// The cluster lease what is placed here hangs on, and when it must be stopped by
    /// (0, 0: none).
    pub fn fence(&self) -> (u64, u64) {
        (
            self.fence_lease.load(Ordering::Relaxed),
            self.fence_at.load(Ordering::Relaxed),
        )
    }
    pub(crate) fn bump_ham_failures(&self) {
        self.ham_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn bump_guardian_failures(&self) {
        self.guardian_failures.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Entity records
// ---------------------------------------------------------------------------------------------

/// Index of each field in [`EntityCopy::body`]. The body is plain `u64` words so that the
/// checksum covers exactly what is stored, and a new field is a new index (and a new
/// [`LAYOUT_VERSION`]).
mod word {
    pub const GEN: usize = 0;
    pub const NAME: usize = 1; // NAME..NAME+8: UTF-8, NUL padded
    pub const PID: usize = 9;
    pub const START_TIME: usize = 10;
    pub const STATE: usize = 11;
    pub const RESTARTS: usize = 12;
    pub const STARTS: usize = 13;
    pub const LAST_EXIT: usize = 14;
    pub const STARTED_MONO: usize = 15;
    pub const EXITED_MONO: usize = 16;
    pub const STARTED_UNIX: usize = 17;
    pub const EXITED_UNIX: usize = 18;
    pub const POLICY: usize = 19; // POLICY..POLICY+engine::MEMORY_WORDS
    pub const PENDING: usize = 54; // bit 0: start again once stopped; bit 1: automatically;
    // bit 2: a device restart to journal; bit 3: ready; bits 4-5: the restart kind
    // (HAM_RESTART: 0 first, 1 stateful, 2 stateless)
    pub const EXITS: usize = 55; // EXITS..EXITS+16: recent automatic exits (for conditions)
    pub const RESTARTS_AT: usize = 71; // ..+16: recent automatic restarts
    pub const STAMP_LENS: usize = 87; // exits len | restarts len << 8
    pub const HB_PERIOD: usize = 88; // heartbeat period in ns (0: not attached)
    pub const HB_MISSED: usize = 89; // missed_low | missed_high << 32
    pub const DISARMED: usize = 90; // bit k: condition k was pruned by a restart (no re-arm)
    pub const FENCING_TOKEN: usize = 91; // the cluster placed it here with this token (0: not)
    pub const BODY_WORDS: usize = 95;
}
const BODY_WORDS: usize = word::BODY_WORDS;

/// One copy of a record: a checksum and the `N` body words it covers (word 0 is the
/// generation).
#[repr(C)]
pub struct Copy<const N: usize> {
    /// `checksum(body)`, or 0 while the copy is being written. Written last, `Release`.
    checksum: AtomicU64,
    body: [AtomicU64; N],
}

/// A record slot: two copies, the newer valid one wins.
#[repr(C, align(64))]
pub struct Slot<const N: usize> {
    copies: [Copy<N>; 2],
}

/// The ring consumer's record: generation, tail, consumed, rejected, abandoned.
pub type RingStateSlot = Slot<5>;
const _: () = assert!(std::mem::size_of::<RingStateSlot>() == 128);

/// An entity slot's place in the state segment (`Segment::slot`, `SegmentWriter::publish`):
/// a type of its own, so that it is never taken for a run-journal slot or for the daemon's
/// index of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SlotIndex(pub u32);

impl std::fmt::Display for SlotIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One copy of an entity record.
pub type EntityCopy = Copy<BODY_WORDS>;
/// An entity slot.
pub type EntitySlot = Slot<BODY_WORDS>;

const _: () = assert!(std::mem::size_of::<EntityCopy>() == 768);
const _: () = assert!(std::mem::size_of::<EntitySlot>() == 1536);
const _: () = assert!(word::EXITS + crate::engine::STAMPS == word::RESTARTS_AT);
const _: () = assert!(word::RESTARTS_AT + crate::engine::STAMPS == word::STAMP_LENS);
const _: () = assert!(word::POLICY + crate::engine::MEMORY_WORDS <= word::PENDING);
const _: () = assert!(word::PENDING < BODY_WORDS);
const _: () = assert!(word::DISARMED < BODY_WORDS);

/// The lifecycle state of an entity as stored in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntityState {
    /// Not running, and not to be started until asked (`hamctl start`).
    Stopped = 1,
    /// ham decided to start it and is spawning it; no pid yet.
    Starting = 2,
    /// Running with `pid`.
    Running = 3,
    /// Asked to stop: stop signal sent, waiting for its exit (SIGKILL at the deadline).
    Stopping = 4,
    /// Exited, and its restart mode says it stays down.
    Exited = 5,
    /// Spawning failed; ham tries again at a deadline.
    Backoff = 6,
    /// Its recovery policy holds it off until a deadline (e.g. 5 exits in 2 minutes).
    HeldOff = 7,
    /// Waiting for the entities it starts `after` to be ready.
    Waiting = 8,
}

impl EntityState {
    pub fn from_word(w: u64) -> Option<Self> {
        Some(match w {
            1 => Self::Stopped,
            2 => Self::Starting,
            3 => Self::Running,
            4 => Self::Stopping,
            5 => Self::Exited,
            6 => Self::Backoff,
            7 => Self::HeldOff,
            8 => Self::Waiting,
            _ => return None,
        })
    }
    /// The name used by `hamctl status` and its JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
            Self::Backoff => "backoff",
            Self::HeldOff => "held-off",
            Self::Waiting => "waiting",
        }
    }
    /// States in which the record's pid names a live (or not yet reaped) process.
    pub fn has_process(self) -> bool {
        matches!(self, Self::Running | Self::Stopping)
    }
}

/// How an entity's last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LastExit {
    /// It has not exited yet.
    #[default]
    None,
    /// It exited with this status (0 is a clean exit).
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It died but no source could tell how; treated as abnormal.
    Unknown,
}

impl LastExit {
    pub fn to_word(self) -> u64 {
        let (kind, value): (u64, i32) = match self {
            Self::None => (0, 0),
            Self::Code(c) => (1, c),
            Self::Signal(s) => (2, s),
            Self::Unknown => (3, 0),
        };
        (kind << 32) | u64::from(value as u32)
    }
    pub fn from_word(w: u64) -> Option<Self> {
        let value = (w & 0xffff_ffff) as u32 as i32;
        Some(match w >> 32 {
            0 => Self::None,
            1 => Self::Code(value),
            2 => Self::Signal(value),
            3 => Self::Unknown,
            _ => return None,
        })
    }
    /// A clean exit is status 0; a signal, a non-zero status or an unknown end is abnormal.
    pub fn is_abnormal(self) -> bool {
        !matches!(self, Self::None | Self::Code(0))
    }
}

/// An entity record as plain data, decoded from the newest valid copy of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRecord {
    /// Generation of the copy it was read from (0 for a record not yet published).
    pub generation: u64,
    pub name: String,
    /// 0 when there is no process.
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot; with `pid` it names one process.
    pub start_time: u64,
    pub state: EntityState,
    /// Automatic restarts (after a death). Operator starts are counted in `starts`.
    pub restarts: u32,
    /// Starts asked for by an operator (`hamctl start|restart`), including the first start.
    pub starts: u32,
    pub last_exit: LastExit,
    pub started_mono_ns: u64,
    pub exited_mono_ns: u64,
    pub started_unix_ns: u64,
    pub exited_unix_ns: u64,
    /// What the recovery policy remembers (windows, stage, hold-off), published with the
    /// state it explains.
    pub policy: crate::engine::Memory,
    /// Being stopped in order to be started again (`hamctl restart`): a successor that
    /// finds it `stopping` finishes the restart rather than leaving it down.
    pub restart_pending: bool,
    /// The pending restart is ham's own (a group restart, a missed watchdog), not an
    /// operator's: it counts as an automatic restart.
    pub restart_automatic: bool,
    /// Its recovery policy escalated to a device restart that is not yet in the run
    /// journal: a successor that finds this set starts it.
    pub device_restart_pending: bool,
    /// Its process said it is ready (READY=1, the SDK's `ready`, or `ready_after`): a
    /// successor goes on from there (entities `after` it may start, an sd_notify watchdog
    /// is armed) rather than wait for a second READY=1 that never comes.
    pub ready: bool,
    /// When it recently exited on its own, and was restarted automatically (for the
    /// `exits-within` and `restarts-within` conditions).
    pub exit_stamps: crate::engine::Stamps,
    pub restart_stamps: crate::engine::Stamps,
    /// The heartbeat a client attached with (`None`: not attached). Its beats are in the
    /// client segment's slot of the same index.
    pub heartbeat: Option<HeartbeatSpec>,
    /// Bit k set: the entity's condition k (in configuration order) was pruned by a
    /// restart because it does not re-arm (QNX `HREARMAFTERRESTART` unset).
    pub disarmed: u64,
    /// How its next (or current) process starts (`HAM_RESTART`): kept here so that a
    /// successor that carries out a restart its predecessor began tells the process what
    /// the predecessor decided.
    pub restart_kind: RestartKind,
    /// The cluster placed it on this node with this fencing token (0: not placed): a
    /// successor keeps running it under the same token, until the fence deadline.
    pub fencing_token: u64,
}

/// How a process starts (`HAM_RESTART` in its environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartKind {
    /// Started, not restarted: by ham at its start, or by an operator.
    #[default]
    First,
    /// An automatic restart that keeps its checkpoints.
    Stateful,
    /// An automatic restart that starts from an empty store.
    Stateless,
}

impl RestartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartKind::First => "first",
            RestartKind::Stateful => "stateful",
            RestartKind::Stateless => "stateless",
        }
    }

    fn to_bits(self) -> u64 {
        match self {
            RestartKind::First => 0,
            RestartKind::Stateful => 1,
            RestartKind::Stateless => 2,
        }
    }

    fn from_bits(b: u64) -> Self {
        match b & 3 {
            1 => RestartKind::Stateful,
            2 => RestartKind::Stateless,
            _ => RestartKind::First,
        }
    }
}

/// What a client asked for when it attached: a beat every `period_ns`; `missed_low` and
/// `missed_high` missed periods fire the heartbeat-missed conditions (0 = never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatSpec {
    pub period_ns: u64,
    pub missed_low: u32,
    pub missed_high: u32,
}

impl EntityRecord {
    /// A fresh, stopped record.
    pub fn new(name: &str) -> Self {
        Self {
            generation: 0,
            name: name.to_owned(),
            pid: 0,
            start_time: 0,
            state: EntityState::Stopped,
            restarts: 0,
            starts: 0,
            last_exit: LastExit::None,
            started_mono_ns: 0,
            exited_mono_ns: 0,
            started_unix_ns: 0,
            exited_unix_ns: 0,
            policy: crate::engine::Memory::default(),
            restart_pending: false,
            restart_automatic: false,
            device_restart_pending: false,
            ready: false,
            exit_stamps: crate::engine::Stamps::default(),
            restart_stamps: crate::engine::Stamps::default(),
            heartbeat: None,
            disarmed: 0,
            restart_kind: RestartKind::First,
            fencing_token: 0,
        }
    }

    fn encode(&self, generation: u64) -> [u64; BODY_WORDS] {
        let mut b = [0u64; BODY_WORDS];
        b[word::GEN] = generation;
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_MAX);
        let mut bytes = [0u8; NAME_WORDS * 8];
        bytes[..n].copy_from_slice(&name[..n]);
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            b[word::NAME + i] = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        b[word::PID] = u64::from(self.pid as u32);
        b[word::START_TIME] = self.start_time;
        b[word::STATE] = self.state as u64;
        b[word::RESTARTS] = u64::from(self.restarts);
        b[word::STARTS] = u64::from(self.starts);
        b[word::LAST_EXIT] = self.last_exit.to_word();
        b[word::STARTED_MONO] = self.started_mono_ns;
        b[word::EXITED_MONO] = self.exited_mono_ns;
        b[word::STARTED_UNIX] = self.started_unix_ns;
        b[word::EXITED_UNIX] = self.exited_unix_ns;
        let m = self.policy.to_words();
        b[word::POLICY..word::POLICY + m.len()].copy_from_slice(&m);
        b[word::PENDING] = u64::from(self.restart_pending)
            | (u64::from(self.restart_automatic) << 1)
            | (u64::from(self.device_restart_pending) << 2)
            | (u64::from(self.ready) << 3)
            | (self.restart_kind.to_bits() << 4);
        let (ex, ex_len) = self.exit_stamps.to_words();
        let (rs, rs_len) = self.restart_stamps.to_words();
        b[word::EXITS..word::EXITS + ex.len()].copy_from_slice(&ex);
        b[word::RESTARTS_AT..word::RESTARTS_AT + rs.len()].copy_from_slice(&rs);
        b[word::STAMP_LENS] = u64::from(ex_len) | (u64::from(rs_len) << 8);
        b[word::DISARMED] = self.disarmed;
        b[word::FENCING_TOKEN] = self.fencing_token;
        if let Some(hb) = self.heartbeat {
            b[word::HB_PERIOD] = hb.period_ns;
            b[word::HB_MISSED] = u64::from(hb.missed_low) | (u64::from(hb.missed_high) << 32);
        }
        b
    }

    /// Decodes a body whose checksum matched. A body with a valid checksum but impossible
    /// contents (a writer from a bug, not a crash) is rejected as corrupt.
    fn decode(b: &[u64; BODY_WORDS]) -> Result<Self, RecordError> {
        let mut bytes = [0u8; NAME_WORDS * 8];
        for i in 0..NAME_WORDS {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&b[word::NAME + i].to_le_bytes());
        }
        let len = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
        if len > NAME_MAX {
            return Err(RecordError::Corrupt("name is not NUL-terminated"));
        }
        let name = std::str::from_utf8(&bytes[..len])
            .map_err(|_| RecordError::Corrupt("name is not UTF-8"))?
            .to_owned();
        let state =
            EntityState::from_word(b[word::STATE]).ok_or(RecordError::Corrupt("unknown state"))?;
        let last_exit = LastExit::from_word(b[word::LAST_EXIT])
            .ok_or(RecordError::Corrupt("unknown exit kind"))?;
        let small = |w: u64, what| u32::try_from(w).map_err(|_| RecordError::Corrupt(what));
        Ok(Self {
            generation: b[word::GEN],
            name,
            pid: small(b[word::PID], "pid out of range")? as i32,
            start_time: b[word::START_TIME],
            state,
            restarts: small(b[word::RESTARTS], "restart count out of range")?,
            starts: small(b[word::STARTS], "start count out of range")?,
            last_exit,
            started_mono_ns: b[word::STARTED_MONO],
            exited_mono_ns: b[word::EXITED_MONO],
            started_unix_ns: b[word::STARTED_UNIX],
            exited_unix_ns: b[word::EXITED_UNIX],
            policy: crate::engine::Memory::from_words(
                b[word::POLICY..word::POLICY + crate::engine::MEMORY_WORDS]
                    .try_into()
                    .expect("MEMORY_WORDS words"),
            ),
            restart_pending: b[word::PENDING] & 1 == 1,
            restart_automatic: b[word::PENDING] & 2 == 2,
            device_restart_pending: b[word::PENDING] & 4 == 4,
            ready: b[word::PENDING] & 8 == 8,
            restart_kind: RestartKind::from_bits(b[word::PENDING] >> 4),
            exit_stamps: crate::engine::Stamps::from_words(
                b[word::EXITS..word::EXITS + crate::engine::STAMPS]
                    .try_into()
                    .expect("STAMPS words"),
                (b[word::STAMP_LENS] & 0xff) as u8,
            ),
            restart_stamps: crate::engine::Stamps::from_words(
                b[word::RESTARTS_AT..word::RESTARTS_AT + crate::engine::STAMPS]
                    .try_into()
                    .expect("STAMPS words"),
                ((b[word::STAMP_LENS] >> 8) & 0xff) as u8,
            ),
            disarmed: b[word::DISARMED],
            fencing_token: b[word::FENCING_TOKEN],
            heartbeat: (b[word::HB_PERIOD] != 0).then(|| HeartbeatSpec {
                period_ns: b[word::HB_PERIOD],
                missed_low: (b[word::HB_MISSED] & 0xffff_ffff) as u32,
                missed_high: (b[word::HB_MISSED] >> 32) as u32,
            }),
        })
    }
}

/// Why a slot could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A copy validated but holds impossible values.
    #[error("record is corrupt: {0}")]
    Corrupt(&'static str),
}

/// A 64-bit checksum of a body (a multiply–xorshift mix per word; 0 is reserved for
/// "invalid"). It detects torn copies, not deliberate forgery: the state segment is
/// writable only by ham itself.
fn checksum<const N: usize>(body: &[u64; N]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ N as u64;
    for &w in body {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    }
    if h == 0 { 1 } else { h }
}

impl<const N: usize> Copy<N> {
    /// Loads this copy; `None` if it is invalid (being written, torn, or never written).
    fn load(&self) -> Option<[u64; N]> {
        // Acquire pairs with the Release store of the checksum in `store`: every body word
        // written before that checksum is visible, or a newer one (which then mismatches).
        let sum = self.checksum.load(Ordering::Acquire);
        if sum == 0 {
            return None;
        }
        let mut body = [0u64; N];
        for (dst, src) in body.iter_mut().zip(self.body.iter()) {
            *dst = src.load(Ordering::Relaxed);
        }
        (checksum(&body) == sum).then_some(body)
    }

    fn store(&self, body: &[u64; N], hook: Option<Hook>) {
        self.checksum.store(0, Ordering::Relaxed);
        // Release fence: the invalidation above is ordered before every body store below.
        fence(Ordering::Release);
        if let Some(h) = hook {
            h("publish:invalidated");
        }
        for (i, (dst, &src)) in self.body.iter().zip(body.iter()).enumerate() {
            dst.store(src, Ordering::Relaxed);
            if i == N / 2 {
                if let Some(h) = hook {
                    h("publish:half-written");
                }
            }
        }
        // Release pairs with the Acquire load in `load`.
        self.checksum.store(checksum(body), Ordering::Release);
    }
}

/// A failpoint hook: called with a step's name between the steps of a publish, so tests can
/// kill the writer there. `None` in production.
pub type Hook = fn(&'static str);

/// How many times a reader retries a slot that a writer keeps changing under it.
const READ_RETRIES: usize = 64;

impl<const N: usize> Slot<N> {
    /// The newest valid copy's body, if any. A copy is valid when its checksum matches and
    /// it sits at the index its generation selects (`gen % 2`, generation ≥ 1).
    pub(crate) fn newest(&self) -> Result<Option<[u64; N]>, RecordError> {
        for _ in 0..READ_RETRIES {
            let valid = |i: usize| {
                self.copies[i]
                    .load()
                    .filter(|b| b[word::GEN] != 0 && (b[word::GEN] % 2) as usize == i)
            };
            // The copy that says it is newer first: if it validates, no valid copy is newer
            // (generations only grow), and the other need not be checksummed.
            let said = |i: usize| self.copies[i].body[word::GEN].load(Ordering::Relaxed);
            let first = usize::from(said(1) > said(0));
            match valid(first).or_else(|| valid(1 - first)) {
                Some(x) => return Ok(Some(x)),
                None => {
                    // A writer killed mid-store leaves checksum 0, so two zero checksums mean
                    // free (never published, or cleared). A non-zero, mismatching checksum is
                    // a read that raced the writer: read again.
                    if self.copies[0].checksum.load(Ordering::Acquire) == 0
                        && self.copies[1].checksum.load(Ordering::Acquire) == 0
                    {
                        return Ok(None);
                    }
                }
            }
        }
        Err(RecordError::Corrupt(
            "no copy validates (checksum mismatch)",
        ))
    }

    /// The generation the next publish follows: the newest valid one's. A copy that no
    /// longer validates (the previous writer died mid-store) is simply not counted: the
    /// next publish overwrites it, never the newest valid one.
    pub(crate) fn current_generation(&self) -> u64 {
        match self.newest() {
            Ok(Some(body)) => body[word::GEN],
            Ok(None) | Err(_) => {
                let g0 = self.copies[0].load().map(|b| b[word::GEN]).unwrap_or(0);
                let g1 = self.copies[1].load().map(|b| b[word::GEN]).unwrap_or(0);
                g0.max(g1)
            }
        }
    }

    /// Publishes the body `encode(generation)` as the next generation and returns it.
    /// Single writer only: the caller must be the HAM owning the current epoch (enforced by
    /// `SegmentWriter`).
    pub(crate) fn publish_body(
        &self,
        encode: impl FnOnce(u64) -> [u64; N],
        hook: Option<Hook>,
    ) -> u64 {
        let next = self.current_generation() + 1;
        self.copies[(next % 2) as usize].store(&encode(next), hook);
        next
    }

    /// Makes the slot free: both copies invalid.
    pub(crate) fn clear(&self) {
        for c in &self.copies {
            c.checksum.store(0, Ordering::Release);
        }
    }
}

impl EntitySlot {
    /// Whether the newest valid record says `Running` with `pid`. Allocates nothing and
    /// takes no lock: a forked child calls it before `execve` (see ham's spawn: a child
    /// whose HAM died before releasing it runs its program only if the record already
    /// says it was released).
    pub fn says_running(&self, pid: i32) -> bool {
        matches!(self.newest(), Ok(Some(body))
            if body[word::PID] == pid as u32 as u64
                && body[word::STATE] == EntityState::Running as u64)
    }

    /// Reads the record: `Ok(None)` for a free slot.
    pub fn read(&self) -> Result<Option<EntityRecord>, RecordError> {
        match self.newest()? {
            None => Ok(None),
            Some(body) => EntityRecord::decode(&body).map(Some),
        }
    }

    /// Publishes `rec` as the next generation and returns it. Single writer only.
    pub(crate) fn publish(&self, rec: &EntityRecord, hook: Option<Hook>) -> u64 {
        self.publish_body(|generation| rec.encode(generation), hook)
    }

    /// Test hook: stores only the first `words` body words of the next generation, as a
    /// writer killed mid-publish would leave them.
    #[cfg(test)]
    fn publish_torn_for_test(&self, rec: &EntityRecord, words: usize) {
        let current = self
            .newest()
            .ok()
            .flatten()
            .map(|b| b[word::GEN])
            .unwrap_or(0);
        let next = current + 1;
        let copy = &self.copies[(next % 2) as usize];
        let body = rec.encode(next);
        copy.checksum.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        for (dst, &src) in copy.body.iter().zip(body.iter()).take(words) {
            dst.store(src, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed_slot() -> Box<EntitySlot> {
        // A slot built from atomics, all zero: the state of a fresh segment.
        Box::new(EntitySlot {
            copies: std::array::from_fn(|_| EntityCopy {
                checksum: AtomicU64::new(0),
                body: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        })
    }

    fn sample(name: &str) -> EntityRecord {
        EntityRecord {
            generation: 0,
            name: name.into(),
            pid: 4242,
            start_time: 99,
            state: EntityState::Running,
            restarts: 3,
            starts: 1,
            last_exit: LastExit::Signal(9),
            started_mono_ns: 10,
            exited_mono_ns: 5,
            started_unix_ns: 11,
            exited_unix_ns: 6,
            policy: crate::engine::Memory::default(),
            restart_pending: false,
            restart_automatic: false,
            device_restart_pending: true,
            ready: true,
            exit_stamps: crate::engine::Stamps::default(),
            restart_stamps: crate::engine::Stamps::default(),
            heartbeat: Some(HeartbeatSpec {
                period_ns: 40_000_000,
                missed_low: 2,
                missed_high: 4,
            }),
            disarmed: 0b101,
            restart_kind: RestartKind::Stateless,
            fencing_token: 17,
        }
    }

    #[test]
    fn zeroed_slot_is_free() {
        assert_eq!(zeroed_slot().read(), Ok(None));
    }

    #[test]
    fn publish_then_read_round_trips() {
        let slot = zeroed_slot();
        let rec = sample("web");
        assert_eq!(slot.publish(&rec, None), 1);
        let got = slot.read().unwrap().unwrap();
        assert_eq!(
            got,
            EntityRecord {
                generation: 1,
                ..rec.clone()
            }
        );
        let mut rec2 = rec;
        rec2.restarts = 4;
        rec2.last_exit = LastExit::Code(3);
        assert_eq!(slot.publish(&rec2, None), 2);
        assert_eq!(slot.read().unwrap().unwrap().last_exit, LastExit::Code(3));
    }

    #[test]
    fn a_torn_publish_leaves_the_previous_generation_readable() {
        let slot = zeroed_slot();
        let mut rec = sample("db");
        slot.publish(&rec, None);
        slot.publish(&rec, None);
        for words in 0..BODY_WORDS {
            rec.restarts = 100 + words as u32;
            slot.publish_torn_for_test(&rec, words);
            let got = slot.read().unwrap().unwrap();
            assert_eq!(got.generation, 2, "torn after {words} words");
            assert_eq!(got.restarts, 3);
        }
        // The next writer recovers: it overwrites the torn copy, not the valid one.
        rec.restarts = 7;
        assert_eq!(slot.publish(&rec, None), 3);
        assert_eq!(slot.read().unwrap().unwrap().restarts, 7);
    }

    #[test]
    fn exit_words_round_trip() {
        for e in [
            LastExit::None,
            LastExit::Code(0),
            LastExit::Code(-1),
            LastExit::Code(255),
            LastExit::Signal(9),
            LastExit::Unknown,
        ] {
            assert_eq!(LastExit::from_word(e.to_word()), Some(e));
        }
        assert_eq!(LastExit::from_word(7 << 32), None);
    }

    #[test]
    fn clear_frees_the_slot() {
        let slot = zeroed_slot();
        slot.publish(&sample("x"), None);
        slot.clear();
        assert_eq!(slot.read(), Ok(None));
    }

    #[test]
    fn long_names_are_truncated_to_the_limit() {
        let slot = zeroed_slot();
        let long = "n".repeat(NAME_MAX + 10);
        slot.publish(&sample(&long), None);
        assert_eq!(slot.read().unwrap().unwrap().name.len(), NAME_MAX);
    }

    #[test]
    fn concurrent_reader_never_sees_a_torn_record() {
        let slot: &'static EntitySlot = Box::leak(zeroed_slot());
        let mut first = sample("r");
        (first.restarts, first.starts, first.pid) = (0, 0, 0);
        slot.publish(&first, None);
        let writer = std::thread::spawn(move || {
            let mut rec = sample("r");
            for i in 0..20_000u32 {
                rec.restarts = i;
                rec.starts = i;
                rec.pid = i as i32;
                slot.publish(&rec, None);
            }
        });
        let mut seen = 0;
        while !writer.is_finished() {
            if let Ok(Some(r)) = slot.read() {
                assert_eq!(r.restarts, r.starts);
                assert_eq!(r.pid as u32, r.restarts);
                seen += 1;
            }
        }
        writer.join().unwrap();
        assert!(seen > 0);
    }
}
