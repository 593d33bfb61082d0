//! The client segment: what applications may write. It is separate from the state segment
//! (which only the HAM writes): a client may store its heartbeat word and push events to
//! the detector ring, and nothing it writes here can change an entity, condition or action
//! record. The HAM validates every byte it reads from it.
//!
//! Layout (`#[repr(C)]`, versioned, checked on attach):
//! ```text
//! ClientHeader (256 B) · HeartbeatSlot[hb_slots] (64 B each) · RingSlot[ring_slots] (128 B each)
//! ```
//!
//! **Heartbeats** are not here any more: a slot any group member could write let one
//! client forge or suppress another's beats. Each attachment beats into its own page
//! ([`crate::beat`]); ham creates this segment with no heartbeat slots (the region's
//! geometry is kept so the layout version stays, and tests use a slot as a flag).
//!
//! **The detector ring** is a bounded multi-producer, single-consumer queue of fixed-size
//! slots with per-slot sequence numbers (after Vyukov's bounded queue). A producer claims a
//! ticket with a CAS on `head` (only while the ring has room: a full ring drops and says
//! so), writes the slot, and publishes it with a CAS of the slot's sequence from `ticket`
//! to `ticket + 1`. A producer that dies between claim and publish would wedge Vyukov's
//! queue; here the consumer *abandons* such a slot — at once if the claimer's pid is
//! proven dead, else after a deadline — by a CAS of the sequence to the next lap, and
//! counts it. A slow (not dead) producer whose slot was abandoned finds its publish CAS
//! fails and is told. Every event is thus consumed once or counted as dropped, abandoned or
//! rejected, and the ring never wedges.
//!
//! **Rogue bytes.** Every slot carries a checksum over its words and its ticket; a slot
//! that fails it, names an unknown kind, or holds a sequence no producer writes is rejected
//! and counted. A `head` that no run of producers could have produced resets the ring.
//!
//! **Doorbell.** The consumer sets `sleeping` before it sleeps; a producer that publishes
//! while it is set swaps it to 0 and issues one `FUTEX_WAKE`. Under load no producer makes
//! a syscall.

// A loom build keeps only the ring's algorithm (the mapping is not modelled).
#![cfg_attr(loom, allow(dead_code, unused_imports))]

use crate::sync::{AtomicU32, AtomicU64, Ordering, fence};
use std::fs::File;
use std::io;
use std::mem::size_of;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::Mode;
use rustix::shm;

/// `b"HAMCLNT\0"` read as a little-endian `u64`.
pub const CLIENT_MAGIC: u64 = u64::from_le_bytes(*b"HAMCLNT\0");
/// Bumped on any change to the client segment's layout.
pub const CLIENT_LAYOUT_VERSION: u32 = 1;
/// Longest entity name or class an event carries.
pub const NAME_BYTES: usize = 32;

/// Doorbell states (the low 2 bits of the doorbell word).
pub const BELL_AWAKE: u32 = 0;
pub const BELL_ASLEEP: u32 = 1;
pub const BELL_RUNG: u32 = 2;

/// A doorbell word: `generation` (30 bits) and `state`. The consumer takes a new generation
/// each time it goes to sleep, so every "asleep" and every "rung" is a value never seen
/// before: a waiter that blocks on the value it last read cannot miss a ring (no ABA).
pub fn bell(generation: u32, state: u32) -> u32 {
    (generation << 2) | (state & 3)
}

/// Event kinds on the ring.
pub const KIND_RAISE: u32 = 1;
pub const KIND_STATE: u32 = 2;

/// Why a client segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum ClientSegmentError {
    #[error("client segment {name} does not exist (is ham running?)")]
    NotFound { name: String },
    #[error("client segment {name}: permission denied (a client must be in ham's client group)")]
    Denied { name: String },
    #[error("client segment {name}: {what}: {source}")]
    Io {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("client segment {name} is invalid: {why}")]
    Invalid { name: String, why: String },
}

/// The header. Words a client may write (`head`, `dropped_full`, `sleeping`) sit on their
/// own cache lines, apart from the consumer's `tail`.
#[repr(C, align(64))]
pub struct ClientHeader {
    magic: AtomicU64,
    version: AtomicU32,
    header_size: AtomicU32,
    total_size: AtomicU64,
    hb_slots: AtomicU32,
    ring_slots: AtomicU32,
    hb_offset: AtomicU64,
    ring_offset: AtomicU64,
    /// Pid of the HAM consuming the ring (informational).
    ham_pid: AtomicU32,
    _pad0: [AtomicU32; 3],
    // -- line 1: producers ---------------------------------------------------------------
    /// Tickets claimed so far.
    pub head: AtomicU64,
    /// Events producers dropped because the ring was full.
    pub dropped_full: AtomicU64,
    _pad1: [AtomicU64; 6],
    // -- line 2: the consumer ------------------------------------------------------------
    /// Tickets consumed (or abandoned) so far: producers may claim up to `tail + slots`.
    pub tail: AtomicU64,
    _pad2: [AtomicU64; 7],
    // -- line 3: the doorbell ------------------------------------------------------------
    /// The doorbell (a futex word): a generation in the high 30 bits and a state
    /// (`BELL_AWAKE`, `BELL_ASLEEP`, `BELL_RUNG`) in the low 2. See [`bell`].
    pub sleeping: AtomicU32,
    _pad3: AtomicU32,
    /// Wake-ups producers rang (a `FUTEX_WAKE`, or a write to the bell; for the benchmark).
    pub wakes: AtomicU64,
    /// Which bell the HAM listens on (0: none; a HAM's own eventfd, handed to clients at
    /// `hello` and from HAM to HAM at a takeover). A producer holding the bell of this id
    /// writes to it instead of `FUTEX_WAKE`: the HAM's loop wakes at once, with no doorbell
    /// thread between. Any other id (a HAM that started again without it, a client's stray
    /// write) sends it back to the futex, which the doorbell thread always watches.
    pub bell_id: AtomicU64,
    /// Of `wakes`, those rung on the bell (for the benchmark and the tests).
    pub bell_rings: AtomicU64,
    _pad4: [AtomicU64; 4],
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<ClientHeader>() == 256);

/// One heartbeat slot: the client's last beat, in `CLOCK_MONOTONIC` nanoseconds.
#[repr(C, align(64))]
pub struct HeartbeatSlot {
    /// Written by the client: the time of its last beat (0 = never).
    pub beat_ns: AtomicU64,
    /// Written by the HAM at attach: who holds the slot (informational for readers).
    pub pid: AtomicU32,
    _pad: AtomicU32,
    _rest: [AtomicU64; 6],
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<HeartbeatSlot>() == 64);

/// Words of a ring slot after its sequence number.
const SLOT_WORDS: usize = 15;
mod w {
    pub const CLAIM: usize = 0; // pid | (ticket as u32) << 32, written right after the claim
    pub const TOKEN: usize = 1;
    pub const KIND: usize = 2; // kind | severity << 32
    pub const VALUE: usize = 3;
    pub const AUX: usize = 4; // state: from | to << 32
    pub const ENTITY: usize = 5; // 4 words
    pub const CLASS: usize = 9; // 4 words
    pub const UID: usize = 13;
    pub const CHECKSUM: usize = 14;
}

/// One ring slot. For ticket `t` (slot `t % slots`), `seq` goes, in order:
/// * `t`: free for the producer that claims ticket `t` (by `head`'s compare-exchange,
///   `AcqRel`). The consumer stored it (`Release`) when it freed the slot's previous lap;
///   the producer's `Acquire` of `head`/`tail` makes those stores visible before it writes.
/// * `t + 1`: published. The producer's compare-exchange `t → t + 1` is `Release`, after it
///   stored the words (`Relaxed`); the consumer's `Acquire` load of `seq` pairs with it, so
///   the words it then reads are the event's (and the checksum tells a torn one).
/// * `t + slots`: consumed (by the consumer, `Release`) or abandoned (by the consumer's
///   compare-exchange `t → t + slots`, `AcqRel`, when its claimer died or overstayed; the
///   producer then finds `seq != t` and refuses to publish, or its `t → t + 1` fails).
///
/// Anything else is a client's stray write: the consumer repairs the ring.
#[repr(C, align(128))]
pub struct RingSlot {
    seq: AtomicU64,
    /// The event (claim, token, kind, value, entity, class, uid, checksum): written only by
    /// the producer holding the slot's ticket, read only after `seq` says published.
    words: [AtomicU64; SLOT_WORDS],
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<RingSlot>() == 128);

/// An entity's name or an event's class as the ring carries it: at most [`NAME_BYTES`]
/// bytes of UTF-8, held inline, so that neither a producer nor the HAM allocates per event.
///
/// The bytes come first and aligned to a word, so that every copy of a `Name` is made and
/// read back a word at a time (with the length first they sat one byte off, and reading a
/// moved name a word at a time stalled on words that straddled the move's stores).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct Name {
    /// Invariant: `bytes[..len]` is UTF-8 and the rest is zero (both constructors check).
    bytes: [u8; NAME_BYTES],
    len: u8,
}

impl Name {
    /// `s`, if it fits.
    pub fn new(s: &str) -> Result<Self, PushError> {
        let b = s.as_bytes();
        if b.len() > NAME_BYTES {
            return Err(PushError::TooLong);
        }
        // A word at a time, never a copy of variable length: a copy's narrow stores, read
        // back a word at a time by `words` at the push, defeat the store-to-load forwarding
        // and cost the producer more than the push itself (a profile of `Client::raise`:
        // 60 % of its time in building the two names).
        let mut bytes = [0u8; NAME_BYTES];
        let mut chunks = b.chunks_exact(8);
        let mut at = 0;
        for c in &mut chunks {
            bytes[at..at + 8].copy_from_slice(c);
            at += 8;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let w = rest
                .iter()
                .enumerate()
                .fold(0u64, |w, (k, &x)| w | (u64::from(x) << (8 * k)));
            bytes[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
        Ok(Self {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Never empty by mistake: `new` copies a `str` and `from_words` checks, and the fields
        // are private (the check costs a few nanoseconds, and this crate has no `unsafe` here).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The four words a ring slot holds it in (zero-padded, little-endian).
    pub(crate) fn words(&self) -> [u64; 4] {
        let mut out = [0u64; 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u64::from_le_bytes(self.bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        out
    }

    /// Back from a slot's words: `None` unless UTF-8 up to the first zero, zeros after it.
    ///
    /// A word at a time (the HAM decodes two names per ring event): the first zero byte is
    /// found with the usual bit trick, and names of ASCII only (every byte below 0x80, the
    /// common case) need no further UTF-8 check.
    pub(crate) fn from_words(words: &[u64]) -> Option<Self> {
        const LOW: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let words: [u64; 4] = words.get(..4)?.try_into().ok()?;
        let mut len = NAME_BYTES;
        for (i, &w) in words.iter().enumerate() {
            // The lowest byte flagged here is the word's first zero byte (a flag above it
            // may be false, from the borrow, but none below it is).
            let zeros = w.wrapping_sub(LOW) & !w & HIGH;
            if zeros != 0 {
                let k = (zeros.trailing_zeros() / 8) as usize;
                // Nothing but zeros after the first zero: the rest of this word, and every
                // word after it.
                let rest = w >> (8 * k);
                if rest != 0 || words[i + 1..].iter().any(|&x| x != 0) {
                    return None;
                }
                len = i * 8 + k;
                break;
            }
        }
        let mut bytes = [0u8; NAME_BYTES];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let ascii = words.iter().fold(0, |a, &w| a | w) & HIGH == 0;
        if !ascii {
            std::str::from_utf8(&bytes[..len]).ok()?;
        }
        Some(Self {
            len: len as u8,
            bytes,
        })
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event on the ring, as a producer gives it and the consumer returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEvent {
    pub kind: u32,
    /// The producer's pid and uid (checked against `token` by the HAM).
    pub pid: u32,
    pub uid: u32,
    pub token: u64,
    pub entity: Name,
    pub class: Name,
    pub severity: u32,
    pub value: i64,
    /// For `KIND_STATE`: from and to.
    pub from: u32,
    pub to: u32,
}

/// Why a push did not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the detector ring is full: the event was dropped (and counted)")]
    Full,
    #[error("the event's slot was abandoned by ham before it was published (counted)")]
    Abandoned,
    #[error("entity name or class longer than {NAME_BYTES} bytes")]
    TooLong,
}

/// A mapped, validated client segment.
#[cfg(not(loom))]
pub struct ClientSegment {
    name: String,
    map: MmapRaw,
    /// The object itself, kept open so that the HAM can grow it back if a client shrinks it.
    file: File,
    hb_slots: u32,
    ring_slots: u32,
    /// The HAM's bell and its id, once `hello` handed it over (see [`ClientHeader::bell_id`]).
    bell: std::sync::OnceLock<(std::os::fd::OwnedFd, u64)>,
}

/// Bytes a client segment with these counts takes (whole pages).
pub fn client_segment_size(hb_slots: u32, ring_slots: u32) -> u64 {
    let ring_slots = ring_slots.clamp(2, 1 << 20).next_power_of_two();
    let raw = ring_offset(hb_slots) + u64::from(ring_slots) * size_of::<RingSlot>() as u64;
    raw.div_ceil(4096) * 4096
}

fn hb_offset() -> u64 {
    size_of::<ClientHeader>() as u64
}
fn ring_offset(hb_slots: u32) -> u64 {
    // 128-byte aligned: the header is 256 B and each heartbeat slot 64 B.
    (hb_offset() + u64::from(hb_slots) * size_of::<HeartbeatSlot>() as u64).div_ceil(128) * 128
}

/// The mode ham gives the client segment: its own user and the client group.
pub const CLIENT_MODE: u32 = 0o660;

#[cfg(not(loom))]
impl ClientSegment {
    /// Whether this object is ham's own (this user's, mode [`CLIENT_MODE`]): a client
    /// segment left under the name by anyone else is never reused.
    pub fn check_owned(&self) -> Result<(), crate::segment::SegmentError> {
        crate::segment::check_owned(&self.file, &self.name, CLIENT_MODE)
    }

    /// Creates (or replaces) the client segment with mode 0660, owned by group `gid` if
    /// given. `ring_slots` is rounded up to a power of two.
    pub fn create(
        name: &str,
        hb_slots: u32,
        ring_slots: u32,
        gid: Option<u32>,
    ) -> Result<Self, ClientSegmentError> {
        let io = |what: &'static str| {
            move |e: io::Error| ClientSegmentError::Io {
                name: name.to_owned(),
                what,
                source: e,
            }
        };
        let ring_slots = ring_slots.clamp(2, 1 << 20).next_power_of_two();
        let _ = shm::unlink(name);
        let fd = shm::open(
            name,
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::from_raw_mode(CLIENT_MODE),
        )
        .map_err(|e| io("shm_open")(e.into()))?;
        // The umask may have taken bits away; the mode is the permission rule, so set it.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(CLIENT_MODE))
            .map_err(|e| io("fchmod")(e.into()))?;
        if let Some(gid) = gid {
            rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(|e| io("fchown")(e.into()))?;
        }
        let file = File::from(fd);
        let size = client_segment_size(hb_slots, ring_slots);
        file.set_len(size).map_err(io("ftruncate"))?;
        // Allocated now (see `Segment::create`): a full /dev/shm fails here, not later.
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)
            .map_err(|e| io("fallocate (is /dev/shm full?)")(e.into()))?;
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .map_err(io("mmap"))?;
        let seg = Self {
            name: name.to_owned(),
            map,
            file,
            hb_slots,
            ring_slots,
            bell: Default::default(),
        };
        let h = seg.header();
        h.version.store(CLIENT_LAYOUT_VERSION, Ordering::Relaxed);
        h.header_size
            .store(size_of::<ClientHeader>() as u32, Ordering::Relaxed);
        h.total_size.store(size, Ordering::Relaxed);
        h.hb_slots.store(hb_slots, Ordering::Relaxed);
        h.ring_slots.store(ring_slots, Ordering::Relaxed);
        h.hb_offset.store(hb_offset(), Ordering::Relaxed);
        h.ring_offset
            .store(ring_offset(hb_slots), Ordering::Relaxed);
        for (i, s) in seg.ring().iter().enumerate() {
            s.seq.store(i as u64, Ordering::Relaxed);
        }
        // Release: a client that sees the magic sees the geometry and the sequences.
        h.magic.store(CLIENT_MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Maps an existing client segment read-write and validates its geometry.
    pub fn open(name: &str) -> Result<Self, ClientSegmentError> {
        let fd = shm::open(name, shm::OFlags::RDWR, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::NOENT => ClientSegmentError::NotFound { name: name.into() },
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                ClientSegmentError::Denied { name: name.into() }
            }
            e => ClientSegmentError::Io {
                name: name.into(),
                what: "shm_open",
                source: e.into(),
            },
        })?;
        let file = File::from(fd);
        let invalid = |why: String| ClientSegmentError::Invalid {
            name: name.into(),
            why,
        };
        let len = file
            .metadata()
            .map_err(|e| ClientSegmentError::Io {
                name: name.into(),
                what: "fstat",
                source: e,
            })?
            .len();
        if len < size_of::<ClientHeader>() as u64 {
            return Err(invalid(format!("{len} bytes, smaller than its header")));
        }
        let map = MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| ClientSegmentError::Io {
                name: name.into(),
                what: "mmap",
                source: e,
            })?;
        let mut seg = Self {
            name: name.to_owned(),
            map,
            file,
            hb_slots: 0,
            ring_slots: 0,
            bell: Default::default(),
        };
        let h = seg.header();
        if h.magic.load(Ordering::Acquire) != CLIENT_MAGIC {
            return Err(invalid("bad magic".into()));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != CLIENT_LAYOUT_VERSION {
            return Err(invalid(format!(
                "layout version {version}, this library understands {CLIENT_LAYOUT_VERSION}"
            )));
        }
        let (hb, ring) = (
            h.hb_slots.load(Ordering::Relaxed),
            h.ring_slots.load(Ordering::Relaxed),
        );
        if h.header_size.load(Ordering::Relaxed) as usize != size_of::<ClientHeader>()
            || h.hb_offset.load(Ordering::Relaxed) != hb_offset()
            || h.ring_offset.load(Ordering::Relaxed) != ring_offset(hb)
            || !ring.is_power_of_two()
            || ring_offset(hb) + u64::from(ring) * size_of::<RingSlot>() as u64 > len
        {
            return Err(invalid(format!(
                "geometry ({hb} heartbeat slots, {ring} ring slots) does not fit {len} bytes"
            )));
        }
        seg.hb_slots = hb;
        seg.ring_slots = ring;
        Ok(seg)
    }

    /// Removes the name. Missing is not an error.
    pub fn unlink(name: &str) {
        let _ = shm::unlink(name);
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn hb_slots(&self) -> u32 {
        self.hb_slots
    }
    pub fn ring_slots(&self) -> u32 {
        self.ring_slots
    }

    pub fn header(&self) -> &ClientHeader {
        // At least a header long: checked in `create`/`open`.
        crate::shm::view(&self.map, 0).expect("the client segment holds its header")
    }

    /// The heartbeat slots.
    pub fn heartbeats(&self) -> &[HeartbeatSlot] {
        // Inside the mapping, before the ring: checked in `create`/`open`.
        crate::shm::view_slice(&self.map, hb_offset() as usize, self.hb_slots as usize)
            .expect("the client segment holds its heartbeat slots")
    }

    /// The ring's slots: `ring_slots` slots of 128 B at the 128-aligned `ring_offset`,
    /// inside the mapping (checked in `create`/`open`).
    fn ring(&self) -> &[RingSlot] {
        let at = ring_offset(self.hb_slots) as usize;
        crate::shm::view_slice(&self.map, at, self.ring_slots as usize)
            .expect("the client segment holds its ring")
    }

    /// The ring as plain words to overwrite: for tests that play a rogue client.
    #[doc(hidden)]
    pub fn raw_ring_words(&self) -> &[AtomicU64] {
        let at = ring_offset(self.hb_slots) as usize;
        let words = self.ring_slots as usize * (SLOT_WORDS + 1);
        crate::shm::view_slice(&self.map, at, words).expect("the client segment holds its ring")
    }

    /// The mapping's address and length, and the object's descriptor: what a SIGBUS handler
    /// needs to grow a shrunk object back (see `ham-guardian`'s `sys::guard_mapping`).
    pub fn mapping(&self) -> (usize, usize, std::os::fd::RawFd) {
        use std::os::fd::AsRawFd;
        (
            self.map.as_ptr() as usize,
            self.map.len(),
            self.file.as_raw_fd(),
        )
    }

    /// Whether the header still says what this segment is (a client may have shrunk the
    /// object, and the HAM grown it back as zeros).
    pub fn header_intact(&self) -> bool {
        let h = self.header();
        h.magic.load(Ordering::Acquire) == CLIENT_MAGIC
            && h.version.load(Ordering::Relaxed) == CLIENT_LAYOUT_VERSION
            && h.hb_slots.load(Ordering::Relaxed) == self.hb_slots
            && h.ring_slots.load(Ordering::Relaxed) == self.ring_slots
    }

    /// Writes the header's fixed fields again (after a repair); the ring's sequences are put
    /// back in order by the consumer (`Consumer::poll` repairs what it finds out of place).
    pub fn rewrite_header(&self) {
        let h = self.header();
        h.version.store(CLIENT_LAYOUT_VERSION, Ordering::Relaxed);
        h.header_size
            .store(size_of::<ClientHeader>() as u32, Ordering::Relaxed);
        h.total_size.store(self.map.len() as u64, Ordering::Relaxed);
        h.hb_slots.store(self.hb_slots, Ordering::Relaxed);
        h.ring_slots.store(self.ring_slots, Ordering::Relaxed);
        h.hb_offset.store(hb_offset(), Ordering::Relaxed);
        h.ring_offset
            .store(ring_offset(self.hb_slots), Ordering::Relaxed);
        h.magic.store(CLIENT_MAGIC, Ordering::Release);
    }

    pub fn set_ham_pid(&self, pid: u32) {
        self.header().ham_pid.store(pid, Ordering::Relaxed);
    }

    /// The producer's side: the bell `hello` handed over, with its id. Set once; a later
    /// one is refused (returned).
    pub fn set_bell(
        &self,
        fd: std::os::fd::OwnedFd,
        id: u64,
    ) -> Result<(), (std::os::fd::OwnedFd, u64)> {
        self.bell.set((fd, id))
    }

    /// The HAM's side: the bell it listens on is `id` from now on.
    pub fn set_bell_id(&self, id: u64) {
        self.header().bell_id.store(id, Ordering::Release);
    }

    /// The id of the bell the HAM listens on (0: none).
    pub fn bell_id(&self) -> u64 {
        self.header().bell_id.load(Ordering::Acquire)
    }

    /// Stores a beat in slot `i` (the client's side). Out of range is ignored.
    #[inline]
    pub fn beat(&self, i: u32, now_ns: u64) {
        if let Some(s) = self.heartbeats().get(i as usize) {
            s.beat_ns.store(now_ns, Ordering::Release);
        }
    }

    /// Wakes the HAM if it sleeps (after a push to a lane, [`crate::lane`]).
    pub fn ring_doorbell(&self) {
        ring_doorbell(self.header(), self.bell.get());
    }

    /// Publishes one event. Never blocks: a full ring drops the event and counts it.
    pub fn push(&self, ev: &RingEvent) -> Result<(), PushError> {
        self.push_with(ev, || {})
    }

    /// [`push`](Self::push) with a hook run between the claim and the publish (tests kill
    /// the producer there).
    pub fn push_with(&self, ev: &RingEvent, after_claim: impl FnOnce()) -> Result<(), PushError> {
        self.ring_view().push_with(ev, after_claim)
    }
}

/// The ring as its producers and consumer see it: the client header and the slots, wherever
/// they are (a mapped client segment; in a loom model, plain memory).
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    header: &'a ClientHeader,
    slots: &'a [RingSlot],
    /// The HAM's bell, if this producer holds it.
    bell: Option<&'a (std::os::fd::OwnedFd, u64)>,
}

/// What holds a ring.
pub trait AsRing {
    fn ring_view(&self) -> Ring<'_>;
}

impl<T: AsRing + ?Sized> AsRing for std::sync::Arc<T> {
    fn ring_view(&self) -> Ring<'_> {
        (**self).ring_view()
    }
}

impl AsRing for Ring<'_> {
    fn ring_view(&self) -> Ring<'_> {
        *self
    }
}

#[cfg(not(loom))]
impl AsRing for ClientSegment {
    fn ring_view(&self) -> Ring<'_> {
        Ring {
            header: self.header(),
            slots: self.ring(),
            bell: self.bell.get(),
        }
    }
}

impl<'a> Ring<'a> {
    /// The header.
    pub fn header(&self) -> &'a ClientHeader {
        self.header
    }

    fn cap(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Publishes one event (see [`ClientSegment::push`]).
    pub fn push(&self, ev: &RingEvent) -> Result<(), PushError> {
        self.push_with(ev, || {})
    }

    /// [`push`](Self::push) with a hook run between the claim and the publish (tests kill
    /// the producer there).
    pub fn push_with(&self, ev: &RingEvent, after_claim: impl FnOnce()) -> Result<(), PushError> {
        let (entity, class) = (ev.entity.words(), ev.class.words());
        let h = self.header;
        let ring = self.slots;
        let cap = ring.len() as u64;
        let ticket = loop {
            let head = h.head.load(Ordering::Acquire);
            // The slot says whether it is free for this ticket: then `tail` (the consumer's
            // line, written at every event) need not be read, and does not travel between
            // the cores at every push.
            let free = ring[(head & (cap - 1)) as usize]
                .seq
                .load(Ordering::Acquire)
                == head;
            if !free {
                // A lap behind (full), `head` moved on meanwhile, or a stray write: `tail`
                // tells. The consumer frees a slot (`seq`) before it moves `tail` past it,
                // so room by `tail` with the slot not free is one of the latter two; the
                // compare-exchange below then fails (retry) or the publish is refused.
                let tail = h.tail.load(Ordering::Acquire);
                if head.wrapping_sub(tail) >= cap {
                    h.dropped_full.fetch_add(1, Ordering::Relaxed);
                    return Err(PushError::Full);
                }
            }
            if h.head
                .compare_exchange_weak(
                    head,
                    head.wrapping_add(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                break head;
            }
        };
        let slot = &ring[(ticket & (cap - 1)) as usize];
        slot.words[w::CLAIM].store(
            u64::from(ev.pid) | ((ticket & 0xffff_ffff) << 32),
            Ordering::Release,
        );
        after_claim();
        // A producer so slow that the consumer abandoned its claim (and a later producer
        // may own the slot) must not write over it: look before writing. A producer stalled
        // between this look and its last store can still tear the later event, which then
        // fails its checksum and is counted as rejected: never forged, never delivered torn.
        if slot.seq.load(Ordering::Acquire) != ticket {
            return Err(PushError::Abandoned);
        }
        let mut body = [0u64; SLOT_WORDS];
        body[w::CLAIM] = u64::from(ev.pid) | ((ticket & 0xffff_ffff) << 32);
        body[w::TOKEN] = ev.token;
        body[w::KIND] = u64::from(ev.kind) | (u64::from(ev.severity) << 32);
        body[w::VALUE] = ev.value as u64;
        body[w::AUX] = u64::from(ev.from) | (u64::from(ev.to) << 32);
        body[w::ENTITY..w::ENTITY + 4].copy_from_slice(&entity);
        body[w::CLASS..w::CLASS + 4].copy_from_slice(&class);
        body[w::UID] = u64::from(ev.uid);
        body[w::CHECKSUM] = slot_checksum(ticket, &body);
        for (dst, v) in slot.words.iter().zip(body.iter()).skip(1) {
            dst.store(*v, Ordering::Relaxed);
        }
        if slot
            .seq
            .compare_exchange(
                ticket,
                ticket.wrapping_add(1),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Err(PushError::Abandoned);
        }
        // Pairs with the consumer's fence between setting `sleeping` and its last look at
        // the ring: either it sees this event, or this producer sees it sleeping.
        fence(Ordering::SeqCst);
        ring_doorbell(h, self.bell);
        Ok(())
    }

    /// The slot at `ticket`, its sequence and its body.
    fn read_slot(&self, ticket: u64) -> (&'a RingSlot, u64) {
        let slot = &self.slots[(ticket & (self.slots.len() as u64 - 1)) as usize];
        (slot, slot.seq.load(Ordering::Acquire))
    }
}

/// Wakes the HAM if its doorbell word says it sleeps (a producer's last step, after its
/// publish and the fence that orders the two): one producer swaps "asleep"
/// for "rung" and writes the HAM's bell (if it holds the one the HAM listens on) or wakes
/// the futex.
pub fn ring_doorbell(h: &ClientHeader, bell: Option<&(std::os::fd::OwnedFd, u64)>) {
    let v = h.sleeping.load(Ordering::Relaxed);
    if v & 3 == BELL_ASLEEP
        && h.sleeping
            .compare_exchange(v, (v & !3) | BELL_RUNG, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        h.wakes.fetch_add(1, Ordering::Relaxed);
        match bell {
            Some((fd, id)) if h.bell_id.load(Ordering::Relaxed) == *id => {
                h.bell_rings.fetch_add(1, Ordering::Relaxed);
                ring_bell(fd);
            }
            _ => futex_wake(&h.sleeping),
        }
    }
}

/// Checksum over a slot's words (except the checksum itself) and its ticket, so a slot
/// copied from another lap, torn between two producers or overwritten fails it.
fn slot_checksum(ticket: u64, body: &[u64; SLOT_WORDS]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ ticket;
    for &x in &body[..w::CHECKSUM] {
        h ^= x;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    }
    h | 1 // never 0: an all-zero slot is never valid
}

/// What one look at the ring found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// An event, consumed.
    Event(RingEvent),
    /// A published slot that failed validation (rogue bytes), or a ring reset: consumed and
    /// counted.
    Rejected(&'static str),
    /// A slot claimed by a producer that died (or held it too long): skipped and counted.
    Abandoned { pid: u32 },
    /// Nothing to consume.
    Empty,
    /// The next slot is claimed but not yet published: look again at `retry_at` (or when
    /// the doorbell rings).
    Stalled { retry_at: u64 },
}

/// Counts the consumer keeps (in its own memory: a client cannot change them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    pub consumed: u64,
    pub rejected: u64,
    pub abandoned: u64,
    pub resets: u64,
}

/// What the consumer records where no client can write (the state segment's header, as one
/// A/B record, so a HAM killed while recording leaves the previous record whole): its
/// position and its counts. Each ticket before `tail` is counted once, as consumed, rejected
/// or abandoned (a ring repaired after a client's stray write also counts one rejection).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingRecord {
    pub tail: u64,
    /// Consumed, rejected, abandoned.
    pub counts: [u64; 3],
}

/// The ring's single consumer (the HAM).
pub struct Consumer {
    tail: u64,
    bell_gen: u32,
    stall: Option<(u64, u64)>,
    pub stats: RingStats,
    /// How long a claimed slot may stay unpublished by a producer not known to be dead.
    pub abandon_after_ns: u64,
}

impl Consumer {
    /// Resumes at `start` — where the previous consumer recorded it stopped, in memory no
    /// client can write — or, failing that, where the shared `tail` says.
    /// The shared `tail` is taken instead when it is ahead of `start` by slots that all
    /// show they were consumed (the predecessor died before recording its position); either
    /// is then stepped over the slots freed after it (the predecessor died between freeing
    /// a slot and storing `tail`).
    pub fn resume(seg: &impl AsRing, start: Option<u64>, abandon_after_ns: u64) -> Self {
        let seg = seg.ring_view();
        let cap = seg.cap();
        let head = seg.header().head.load(Ordering::Acquire);
        // Whether the slot of ticket `t` was consumed: freed for its next lap, or already
        // published in it. No slot at or after the consumer's true position shows that (its
        // sequence is its ticket, or ticket + 1), every slot in the lap before it does.
        let consumed = |t: u64| {
            let seq = seg.read_slot(t).1;
            seq == t.wrapping_add(cap) || seq == t.wrapping_add(cap + 1)
        };
        // The predecessor frees a slot before it stores `tail`, and may have died between
        // the two: from a position, step over the slots that show they were consumed (at
        // most a lap, never past `head`). Without this a successor resumed one ticket short,
        // found a sequence out of place and "repaired" the ring over an event already
        // consumed (counted twice, and a reset).
        let walk = |mut t: u64| {
            for _ in 0..cap {
                if t == head || !consumed(t) {
                    break;
                }
                t = t.wrapping_add(1);
            }
            t
        };
        let shared = walk(seg.header().tail.load(Ordering::Acquire));
        let tail = match start {
            None => shared,
            Some(rt) => {
                // The shared tail may run ahead of the recorded one (the predecessor died
                // before recording it); it is believed if it is not behind the record, not
                // past what producers claimed, and the slots just before it show they were
                // consumed. Otherwise the record is, stepped over what was consumed after it.
                let ahead = shared.wrapping_sub(rt);
                let plausible = ahead < 1 << 62 && head.wrapping_sub(shared) <= cap;
                if plausible && (1..=ahead.min(cap)).all(|k| consumed(shared.wrapping_sub(k))) {
                    shared
                } else {
                    walk(rt)
                }
            }
        };
        Self {
            tail,
            stall: None,
            stats: RingStats::default(),
            abandon_after_ns,
            bell_gen: seg.header().sleeping.load(Ordering::Relaxed) >> 2,
        }
    }

    /// A consumer at the shared `tail` (a fresh ring, or one no record says more about).
    pub fn new(seg: &impl AsRing, abandon_after_ns: u64) -> Self {
        let seg = seg.ring_view();
        Self::resume(&seg, None, abandon_after_ns)
    }

    /// Resumes after a predecessor whose last record is `rec` (see [`resume`](Self::resume)),
    /// with its counts. The tickets between the recorded position and the one found were
    /// taken off the ring by the predecessor after it last recorded: they count as consumed
    /// (each once: what it did with them died with it). Without a record, the counts start
    /// at 0 at the shared `tail`.
    pub fn resume_recorded(
        seg: &impl AsRing,
        rec: Option<RingRecord>,
        abandon_after_ns: u64,
    ) -> Self {
        let seg = seg.ring_view();
        let mut c = Self::resume(&seg, rec.map(|r| r.tail), abandon_after_ns);
        if let Some(r) = rec {
            let [consumed, rejected, abandoned] = r.counts;
            c.stats = RingStats {
                consumed: consumed.wrapping_add(c.tail.wrapping_sub(r.tail)),
                rejected,
                abandoned,
                resets: 0,
            };
        }
        c
    }

    /// What to record (after a drain, and at once after a resume): the position and the
    /// counts, which account for exactly the tickets before it.
    pub fn record(&self) -> RingRecord {
        let s = self.stats;
        RingRecord {
            tail: self.tail,
            counts: [s.consumed, s.rejected, s.abandoned],
        }
    }

    /// The event just consumed was not acted on (a bad token, or a sender that may not act
    /// on its entity): it counts as rejected instead.
    pub fn deny(&mut self) {
        if self.stats.consumed > 0 {
            self.stats.consumed -= 1;
            self.stats.rejected += 1;
        }
    }

    fn advance(&mut self, seg: &impl AsRing, slot: &RingSlot, ticket: u64) {
        let seg = seg.ring_view();
        // The slot is free for the next lap before producers can see the room.
        slot.seq
            .store(ticket.wrapping_add(seg.cap()), Ordering::Release);
        self.tail = ticket.wrapping_add(1);
        self.stall = None;
        seg.header().tail.store(self.tail, Ordering::Release);
    }

    /// Takes the next event. `is_dead(pid)` says whether a claimer is proven gone.
    pub fn poll(
        &mut self,
        seg: &impl AsRing,
        now_ns: u64,
        is_dead: impl Fn(u32) -> bool,
    ) -> Polled {
        let seg = seg.ring_view();
        let cap = seg.cap();
        let h = seg.header();
        let t = self.tail;
        // A rogue client may have rewritten `tail`: producers must see ours.
        if h.tail.load(Ordering::Relaxed) != t {
            h.tail.store(t, Ordering::Release);
        }
        let (slot, seq) = seg.read_slot(t);
        if seq == t.wrapping_add(1) {
            let mut body = [0u64; SLOT_WORDS];
            for (b, src) in body.iter_mut().zip(slot.words.iter()) {
                *b = src.load(Ordering::Relaxed);
            }
            self.advance(&seg, slot, t);
            return match decode(t, &body) {
                Ok(ev) => {
                    self.stats.consumed += 1;
                    Polled::Event(ev)
                }
                Err(why) => {
                    self.stats.rejected += 1;
                    Polled::Rejected(why)
                }
            };
        }
        let head = h.head.load(Ordering::Acquire);
        // A producer only ever moves a sequence from its ticket to ticket + 1, and no run
        // of producers leaves `head` behind `tail` or more than a lap ahead: anything else
        // is a client's stray write, and the ring is put back in order.
        if head.wrapping_sub(t) > cap || seq != t {
            self.reset(&seg, head);
            self.stats.rejected += 1;
            return Polled::Rejected(if seq != t {
                "slot sequence out of place: ring repaired"
            } else {
                "ring head out of range: ring repaired"
            });
        }
        if head == t {
            return Polled::Empty;
        }
        // Claimed, not yet published.
        let first = match self.stall {
            Some((ticket, since)) if ticket == t => since,
            _ => {
                self.stall = Some((t, now_ns));
                now_ns
            }
        };
        let claim = slot.words[w::CLAIM].load(Ordering::Acquire);
        let pid = (claim & 0xffff_ffff) as u32;
        let ours = claim >> 32 == t & 0xffff_ffff && pid != 0;
        let dead = ours && is_dead(pid);
        if !dead && now_ns < first.saturating_add(self.abandon_after_ns) {
            return Polled::Stalled {
                retry_at: first.saturating_add(self.abandon_after_ns),
            };
        }
        match slot
            .seq
            .compare_exchange(t, t.wrapping_add(cap), Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                self.tail = t.wrapping_add(1);
                self.stall = None;
                h.tail.store(self.tail, Ordering::Release);
                self.stats.abandoned += 1;
                Polled::Abandoned {
                    pid: if ours { pid } else { 0 },
                }
            }
            // Published just now (or a stray write raced us): look again, once.
            Err(_) => Polled::Stalled { retry_at: now_ns },
        }
    }

    /// Puts the ring back in order at our tail: every slot gets the sequence its next
    /// ticket expects, except events already published within a plausible `head`.
    fn reset(&mut self, seg: &impl AsRing, head: u64) {
        let seg = seg.ring_view();
        let cap = seg.cap();
        let h = seg.header();
        let claimed = if head.wrapping_sub(self.tail) <= cap {
            head.wrapping_sub(self.tail)
        } else {
            h.head.store(self.tail, Ordering::Release);
            0
        };
        for k in 0..cap {
            let ticket = self.tail.wrapping_add(k);
            let (slot, seq) = seg.read_slot(ticket);
            if !(k < claimed && (seq == ticket || seq == ticket.wrapping_add(1))) {
                slot.seq.store(ticket, Ordering::Release);
            }
        }
        h.tail.store(self.tail, Ordering::Release);
        self.stall = None;
        self.stats.resets += 1;
    }

    /// Marks the consumer asleep, in a new generation. Returns false (and stays awake) if
    /// the ring has work, which the caller must then drain before trying again.
    pub fn prepare_sleep(&mut self, seg: &impl AsRing) -> bool {
        let seg = seg.ring_view();
        let h = seg.header();
        self.bell_gen = (self.bell_gen + 1) & 0x3fff_ffff;
        h.sleeping
            .store(bell(self.bell_gen, BELL_ASLEEP), Ordering::Release);
        fence(Ordering::SeqCst);
        // Only a published event counts: a claim not yet published has its own deadline
        // (a timer), and its producer rings when it publishes.
        if self.has_published(&seg) {
            self.awake(&seg);
            return false;
        }
        true
    }

    /// Marks the consumer awake (after a ring, before it drains).
    pub fn awake(&self, seg: &impl AsRing) {
        let seg = seg.ring_view();
        seg.header()
            .sleeping
            .store(bell(self.bell_gen, BELL_AWAKE), Ordering::Release);
    }

    /// Whether the next slot holds a published event.
    pub fn has_published(&self, seg: &impl AsRing) -> bool {
        let seg = seg.ring_view();
        seg.read_slot(self.tail).1 == self.tail.wrapping_add(1)
    }

    /// The consumer's position (tickets consumed so far).
    pub fn tail(&self) -> u64 {
        self.tail
    }
}

fn decode(ticket: u64, body: &[u64; SLOT_WORDS]) -> Result<RingEvent, &'static str> {
    if body[w::CHECKSUM] != slot_checksum(ticket, body) {
        return Err("checksum mismatch");
    }
    let kind = (body[w::KIND] & 0xffff_ffff) as u32;
    if kind != KIND_RAISE && kind != KIND_STATE {
        return Err("unknown event kind");
    }
    let entity =
        Name::from_words(&body[w::ENTITY..w::ENTITY + 4]).ok_or("entity name not UTF-8")?;
    let class = Name::from_words(&body[w::CLASS..w::CLASS + 4]).ok_or("class not UTF-8")?;
    let uid = body[w::UID];
    if uid > u64::from(u32::MAX) {
        return Err("uid out of range");
    }
    Ok(RingEvent {
        kind,
        pid: (body[w::CLAIM] & 0xffff_ffff) as u32,
        uid: uid as u32,
        token: body[w::TOKEN],
        entity,
        class,
        severity: (body[w::KIND] >> 32) as u32,
        value: body[w::VALUE] as i64,
        from: (body[w::AUX] & 0xffff_ffff) as u32,
        to: (body[w::AUX] >> 32) as u32,
    })
}

/// Rings the HAM's bell (its eventfd): one write, never blocking (the count saturating
/// only after 2^64 - 2 rings the HAM has not read).
#[cfg(not(loom))]
fn ring_bell(fd: &std::os::fd::OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

#[cfg(loom)]
fn ring_bell(_fd: &std::os::fd::OwnedFd) {}

/// Blocks until the doorbell word leaves `value` (or a spurious wake-up). Shared futex:
/// the word is in a segment mapped by several processes.
#[cfg(not(loom))]
pub fn futex_wait(word: &AtomicU32, value: u32) {
    let _ = rustix::thread::futex::wait(word, rustix::thread::futex::Flags::empty(), value, None);
}

/// Wakes one waiter on `word`.
#[cfg(not(loom))]
pub fn futex_wake(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
}

/// In a loom model the doorbell's word is what is checked; the wake itself is not modelled.
#[cfg(loom)]
pub fn futex_wake(_word: &AtomicU32) {}

/// A ring in plain memory, for loom models (`tests/loom_ring.rs`): a header and `slots`
/// slots (a power of two), each expecting its first ticket.
#[cfg(loom)]
pub struct ModelRing {
    header: ClientHeader,
    slots: Vec<RingSlot>,
}

#[cfg(loom)]
impl ModelRing {
    pub fn new(slots: usize) -> Self {
        assert!(slots.is_power_of_two());
        let header = ClientHeader {
            magic: AtomicU64::new(CLIENT_MAGIC),
            version: AtomicU32::new(CLIENT_LAYOUT_VERSION),
            header_size: AtomicU32::new(0),
            total_size: AtomicU64::new(0),
            hb_slots: AtomicU32::new(0),
            ring_slots: AtomicU32::new(slots as u32),
            hb_offset: AtomicU64::new(0),
            ring_offset: AtomicU64::new(0),
            ham_pid: AtomicU32::new(0),
            _pad0: std::array::from_fn(|_| AtomicU32::new(0)),
            head: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            _pad1: std::array::from_fn(|_| AtomicU64::new(0)),
            tail: AtomicU64::new(0),
            _pad2: std::array::from_fn(|_| AtomicU64::new(0)),
            sleeping: AtomicU32::new(0),
            _pad3: AtomicU32::new(0),
            wakes: AtomicU64::new(0),
            bell_id: AtomicU64::new(0),
            bell_rings: AtomicU64::new(0),
            _pad4: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        let slots = (0..slots as u64)
            .map(|t| RingSlot {
                seq: AtomicU64::new(t),
                words: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        Self { header, slots }
    }
}

#[cfg(loom)]
impl AsRing for ModelRing {
    fn ring_view(&self) -> Ring<'_> {
        Ring {
            header: &self.header,
            slots: &self.slots,
            bell: None,
        }
    }
}

/// The token a HAM gives a client at connect: SipHash-2-4, keyed with 128 random bits, of
/// the peer's pid and uid (as the kernel reported them), so that the HAM, and any successor
/// that reads the same key from the state segment, can check an event's claimed pid and uid
/// without keeping a table.
#[allow(deprecated)] // std's SipHasher is SipHash-2-4 with a key, which is what this needs
pub fn client_token(key: [u64; 2], pid: u32, uid: u32) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(key[0], key[1]);
    h.write_u32(pid);
    h.write_u32(uid);
    h.finish()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn seg(name: &str, ring: u32) -> ClientSegment {
        ClientSegment::create(
            &format!("/ham-test-client-{}-{name}", std::process::id()),
            4,
            ring,
            None,
        )
        .unwrap()
    }

    fn ev(i: i64) -> RingEvent {
        RingEvent {
            kind: KIND_RAISE,
            pid: std::process::id(),
            uid: 0,
            token: 7,
            entity: Name::new("db").unwrap(),
            class: Name::new("disk").unwrap(),
            severity: 3,
            value: i,
            from: 0,
            to: 0,
        }
    }

    #[test]
    fn events_come_out_in_order_and_a_full_ring_drops() {
        let s = seg("order", 4);
        let mut c = Consumer::new(&s, 1_000_000);
        for i in 0..4 {
            s.push(&ev(i)).unwrap();
        }
        assert_eq!(s.push(&ev(99)), Err(PushError::Full));
        assert_eq!(s.header().dropped_full.load(Ordering::Relaxed), 1);
        for i in 0..4 {
            assert_eq!(c.poll(&s, 0, |_| false), Polled::Event(ev(i)));
        }
        assert_eq!(c.poll(&s, 0, |_| false), Polled::Empty);
        // Room again, many laps.
        for i in 0..100 {
            s.push(&ev(i)).unwrap();
            assert_eq!(c.poll(&s, 0, |_| false), Polled::Event(ev(i)));
        }
        ClientSegment::unlink(s.name());
    }

    #[test]
    fn a_claim_never_published_is_abandoned_after_the_deadline_or_at_once_if_dead() {
        let s = seg("abandon", 8);
        let mut c = Consumer::new(&s, 1000);
        // Simulate a producer that claims and never publishes.
        s.header().head.fetch_add(1, Ordering::AcqRel);
        s.ring()[0].words[w::CLAIM].store(42, Ordering::Release);
        s.push(&ev(1)).unwrap();
        assert_eq!(
            c.poll(&s, 10, |_| false),
            Polled::Stalled { retry_at: 1010 }
        );
        assert_eq!(
            c.poll(&s, 500, |_| false),
            Polled::Stalled { retry_at: 1010 }
        );
        assert_eq!(c.poll(&s, 1010, |_| false), Polled::Abandoned { pid: 42 });
        assert_eq!(c.poll(&s, 1010, |_| false), Polled::Event(ev(1)));
        // A dead claimer is abandoned without waiting.
        let t = s.header().head.fetch_add(1, Ordering::AcqRel);
        let slot = &s.ring()[(t & 7) as usize];
        slot.words[w::CLAIM].store(77 | ((t & 0xffff_ffff) << 32), Ordering::Release);
        assert_eq!(
            c.poll(&s, 2000, |pid| pid == 77),
            Polled::Abandoned { pid: 77 }
        );
        assert_eq!(c.stats.abandoned, 2);
        // The slow producer's late publish fails and is told.
        let t = s.header().head.load(Ordering::Acquire);
        let r = s.push_with(&ev(5), || {
            let mut c2 = Consumer::new(&s, 0);
            assert_eq!(
                c2.poll(&s, 1, |_| false),
                Polled::Abandoned {
                    pid: std::process::id()
                }
            );
        });
        assert_eq!(r, Err(PushError::Abandoned));
        assert_eq!(s.header().tail.load(Ordering::Acquire), t + 1);
        ClientSegment::unlink(s.name());
    }

    #[test]
    fn a_name_is_inline_utf8_of_at_most_32_bytes_and_checked_off_the_ring() {
        let n = Name::new("dévice-9").unwrap();
        assert_eq!(n, "dévice-9");
        assert_eq!(Name::from_words(&n.words()), Some(n));
        assert_eq!(Name::new(&"x".repeat(32)).unwrap().len(), 32);
        assert_eq!(Name::new(&"x".repeat(33)), Err(PushError::TooLong));
        // Off the ring: bytes after the first zero, or bytes that are not UTF-8, are refused.
        let mut words = Name::new("ab").unwrap().words();
        words[1] = 1;
        assert_eq!(Name::from_words(&words), None);
        assert_eq!(Name::from_words(&[0xff, 0, 0, 0]), None);
        assert_eq!(Name::from_words(&[0; 4]), Some(Name::new("").unwrap()));
        // Built a word at a time, as a plain copy would: every length, multi-byte
        // characters across the words' edges.
        let text = "aé€𝄞bcdefghijklmnopqrstuvwxyz0123456789";
        for end in (0..=text.len()).filter(|&e| text.is_char_boundary(e) && e <= NAME_BYTES) {
            let s = &text[..end];
            let n = Name::new(s).unwrap();
            assert_eq!(n.as_str(), s);
            let mut plain = [0u8; NAME_BYTES];
            plain[..end].copy_from_slice(s.as_bytes());
            assert_eq!(n.bytes, plain, "{s:?}");
            assert_eq!(Name::from_words(&n.words()), Some(n));
        }
    }

    /// `from_words` works a word at a time: it must agree with the plain reading, a byte at
    /// a time, on every kind of byte (zero, ASCII, UTF-8 lead and continuation, invalid) in
    /// every place.
    #[test]
    fn a_name_read_a_word_at_a_time_agrees_with_a_byte_at_a_time() {
        fn bytewise(words: &[u64; 4]) -> Option<(usize, [u8; NAME_BYTES])> {
            let mut bytes = [0u8; NAME_BYTES];
            for (i, w) in words.iter().enumerate() {
                bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            let len = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
            if bytes[len..].iter().any(|&b| b != 0) {
                return None;
            }
            std::str::from_utf8(&bytes[..len]).ok()?;
            Some((len, bytes))
        }
        let alphabet = [0x00u8, 0x01, 0x41, 0x7f, 0x80, 0xbf, 0xc3, 0xa9, 0xe2, 0xff];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..200_000 {
            let mut bytes = [0u8; NAME_BYTES];
            // Mostly a name then zeros (the shape producers write), sometimes any bytes.
            let len = (next() % 33) as usize;
            let tail_noise = next() % 4 == 0;
            for (i, b) in bytes.iter_mut().enumerate() {
                if i < len || tail_noise {
                    *b = alphabet[(next() % alphabet.len() as u64) as usize];
                }
            }
            let mut words = [0u64; 4];
            for (i, w) in words.iter_mut().enumerate() {
                *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
            }
            let want = bytewise(&words);
            let got = Name::from_words(&words).map(|n| (usize::from(n.len), n.bytes));
            assert_eq!(got, want, "{bytes:02x?}");
            if want.is_some() {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        // Both answers were exercised.
        assert!(valid > 5_000 && invalid > 5_000, "{valid} {invalid}");
    }

    #[test]
    fn rogue_bytes_are_rejected_and_the_ring_flows_again() {
        let s = seg("rogue", 16);
        let mut c = Consumer::new(&s, 1000);
        let mut x: u64 = 0x1234_5678;
        for round in 0..200 {
            for wd in s.raw_ring_words() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                wd.store(x, Ordering::Relaxed);
            }
            if round % 3 == 0 {
                s.header().head.store(x, Ordering::Relaxed);
            }
            let mut n = 0;
            loop {
                n += 1;
                assert!(n < 1000, "the consumer must get through rogue bytes");
                match c.poll(&s, u64::MAX / 2, |_| true) {
                    Polled::Empty => break,
                    Polled::Event(_) => panic!("random bytes passed validation"),
                    _ => {}
                }
            }
            s.push(&ev(round)).unwrap();
            assert_eq!(c.poll(&s, 0, |_| false), Polled::Event(ev(round)));
        }
        assert!(c.stats.rejected > 0);
        ClientSegment::unlink(s.name());
    }

    #[test]
    fn the_doorbell_is_rung_only_for_a_sleeping_consumer() {
        let s = seg("bell", 8);
        let mut c = Consumer::new(&s, 1000);
        s.push(&ev(1)).unwrap();
        assert!(!c.prepare_sleep(&s), "work pending: do not sleep");
        assert!(matches!(c.poll(&s, 0, |_| false), Polled::Event(_)));
        assert!(c.prepare_sleep(&s));
        let asleep = s.header().sleeping.load(Ordering::Relaxed);
        assert_eq!(asleep & 3, BELL_ASLEEP);
        s.push(&ev(2)).unwrap();
        s.push(&ev(3)).unwrap();
        assert_eq!(s.header().wakes.load(Ordering::Relaxed), 1);
        let rung = s.header().sleeping.load(Ordering::Relaxed);
        assert_eq!(rung, (asleep & !3) | BELL_RUNG);
        // The next sleep is a new generation: its "rung" is a value never seen before.
        c.awake(&s);
        while matches!(c.poll(&s, 0, |_| false), Polled::Event(_)) {}
        assert!(c.prepare_sleep(&s));
        s.push(&ev(4)).unwrap();
        assert_ne!(s.header().sleeping.load(Ordering::Relaxed), rung);
        assert_eq!(s.header().wakes.load(Ordering::Relaxed), 2);
        ClientSegment::unlink(s.name());
    }

    #[test]
    fn a_successor_resumes_at_the_recorded_or_the_proven_position() {
        let s = seg("resume", 8);
        let mut c = Consumer::new(&s, 1000);
        for i in 0..3 {
            s.push(&ev(i)).unwrap();
            assert_eq!(c.poll(&s, 0, |_| false), Polled::Event(ev(i)));
        }
        // Recorded 1, but slots 1 and 2 show they were consumed: resume at 3.
        assert_eq!(Consumer::resume(&s, Some(1), 0).tail(), 3);
        // A shared tail a client moved ahead over unconsumed slots is not believed.
        s.header().tail.store(7, Ordering::Relaxed);
        assert_eq!(Consumer::resume(&s, Some(3), 0).tail(), 3);
        s.header().tail.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(Consumer::resume(&s, Some(3), 0).tail(), 3);
        ClientSegment::unlink(s.name());
    }

    #[test]
    fn tokens_depend_on_key_pid_and_uid() {
        let k = [1, 2];
        let t = client_token(k, 10, 0);
        assert_eq!(t, client_token(k, 10, 0));
        assert_ne!(t, client_token(k, 11, 0));
        assert_ne!(t, client_token(k, 10, 1));
        assert_ne!(t, client_token([1, 3], 10, 0));
    }
}
