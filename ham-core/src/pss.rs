//! The checkpoint store (NX-OS's Persistent Storage Service): one region of shared memory
//! per entity, holding key → bytes, written by the entity's own processes without a
//! system call and read by ham (which keeps it across the process's death, a takeover and
//! a warm start, and writes its durable keys to disk).
//!
//! ## Who holds it
//! ham creates `/ham.<instance>.pss.<slot>` exclusively, mode 0600 under its own user, and
//! hands the entity's processes a descriptor over the control socket (as the heartbeat
//! pages, [`crate::beat`]): no one else can map it, so a private key is read only by the
//! entity's processes and ham. Other entities read the entity's *shared* keys through ham.
//! ham never writes a region a process may map: a stateless restart gives the new process
//! a fresh region, and a cold start fills a fresh region from disk before any process runs.
//!
//! ## Layout (`#[repr(C)]`, atomics only, versioned and checked on map)
//! A [`PssHeader`], then `keys` entries. An entry is a word `cur` and two copies; a copy is
//! [`COPY_HEAD_WORDS`] words of header (generation, flags and length, the key, the value's
//! checksum, the header's checksum) and `value_max` bytes of value.
//!
//! ## A put is all or nothing
//! Puts of one region are serialised by the header's `lock` word (the holder's pid; a lock
//! whose holder is dead is taken over). A put writes the entry's *inactive* copy, then
//! publishes it by one Release store of `cur` (`generation << 1 | copy`). A writer killed
//! anywhere before that store leaves the active copy as it was; killed after it, the put is
//! whole. A reader loads `cur` (Acquire), copies the copy it names, checks both checksums
//! and the generation, and loads `cur` again: a change means a put overwrote what it read
//! (it takes two puts to reach the copy being read), and it reads again. No state of a
//! dead writer makes a reader wait: there is no "write in progress" mark to be left set.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use memmap2::MmapRaw;

use crate::segment::SegmentError;

/// `b"HAMPSS\0\0"` read as a little-endian `u64`.
pub const PSS_MAGIC: u64 = u64::from_le_bytes(*b"HAMPSS\0\0");
/// Bumped on any change to the layout.
pub const PSS_LAYOUT_VERSION: u32 = 2;
/// The region's mode: ham's user only (processes get a descriptor, never the name).
pub const PSS_MODE: u32 = 0o600;
/// A key: 1 to `KEY_MAX` bytes of UTF-8, no NUL.
pub const KEY_MAX: usize = 64;
/// Words of a copy's header: generation, flags+length, key (8), value checksum, header
/// checksum.
pub const COPY_HEAD_WORDS: usize = 12;
/// Largest value a region may be made for (a copy's value area).
pub const VALUE_MAX_LIMIT: u32 = 1 << 20;
/// Most keys a region may be made for.
pub const KEYS_LIMIT: u32 = 4096;

/// A key's flags.
pub const FLAG_LIVE: u32 = 1;
/// Other entities may read it (through ham).
pub const FLAG_SHARED: u32 = 2;
/// ham keeps it on disk too: it survives a reboot.
pub const FLAG_DURABLE: u32 = 4;

/// How many times a reader tries a key that puts keep changing under it. Bounded low: ham
/// reads stores whose writers it does not trust, and a writer that flips a key for ever
/// must cost ham at most this many reads of it (≤ 256 × a value, for each key).
const READ_TRIES: u32 = 256;

/// The region's first words.
#[repr(C)]
pub struct PssHeader {
    /// [`PSS_MAGIC`], stored (Release) last when the region is made.
    pub magic: AtomicU64,
    /// [`PSS_LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// Entries.
    pub keys: AtomicU32,
    /// Bytes of a copy's value area (a multiple of 8).
    pub value_max: AtomicU32,
    /// The quota: bytes of all live values together.
    pub bytes_max: AtomicU32,
    /// The writer's pid while a put is under way, else 0.
    pub lock: AtomicU64,
    /// Puts and deletes published so far (ham's "has anything changed since").
    pub seq: AtomicU64,
    /// The entity it belongs to (its name, NUL-padded): a region found by its name (a slot
    /// number) is used only by the entity it was made for.
    pub owner: [AtomicU64; 8],
    /// Bytes of all live values (kept by the writers under the lock, for the quota; worked
    /// out again from the entries by a writer that takes over a dead holder's lock).
    pub live_bytes: AtomicU64,
    /// Room for later fields.
    pub reserved: [AtomicU64; 2],
}

const HEADER_BYTES: usize = std::mem::size_of::<PssHeader>();
const _: () = assert!(HEADER_BYTES == 128);

/// The shape of a region: how many keys, and how large a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub keys: u32,
    pub value_max: u32,
    pub bytes_max: u32,
}

impl Geometry {
    /// A value area rounded up to whole words.
    fn value_words(&self) -> usize {
        (self.value_max as usize).div_ceil(8)
    }
    fn copy_words(&self) -> usize {
        COPY_HEAD_WORDS + self.value_words()
    }
    fn entry_words(&self) -> usize {
        1 + 2 * self.copy_words()
    }
    /// The region's size in bytes.
    pub fn region_bytes(&self) -> usize {
        HEADER_BYTES + self.keys as usize * self.entry_words() * 8
    }
    /// Whether a region can be made with this shape, or why not.
    pub fn validate(&self) -> Result<(), String> {
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        if self.keys == 0 || self.keys > KEYS_LIMIT {
            return Err(format!("{} keys (1 to {KEYS_LIMIT})", self.keys));
        }
        if self.value_max == 0 || self.value_max > VALUE_MAX_LIMIT || self.value_max % 8 != 0 {
            return Err(format!(
                "a value of {} bytes (a multiple of 8, at most {VALUE_MAX_LIMIT})",
                self.value_max
            ));
        }
        Ok(())
    }
}

/// Why a put, a delete or a read was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PssError {
    #[error("key `{0}`: a key is 1 to {KEY_MAX} bytes, without NUL")]
    BadKey(String),
    #[error("key `{key}`: {len} bytes is more than a value may hold ({max})")]
    TooLarge { key: String, len: usize, max: u32 },
    #[error("the store holds {max} keys at most (pss_max.keys)")]
    TooManyKeys { max: u32 },
    #[error("key `{key}`: the store's values may take {max} bytes together (pss_max.bytes)")]
    OverQuota { key: String, max: u32 },
    #[error("the store is being written by pid {pid}, which holds it")]
    Busy { pid: u32 },
    #[error("key `{0}` keeps changing while it is read")]
    Unstable(String),
}

/// A key's value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub key: String,
    pub flags: u32,
    pub bytes: Vec<u8>,
    /// The key's generation: bumped by every put and delete of it.
    pub generation: u64,
}

impl Value {
    pub fn shared(&self) -> bool {
        self.flags & FLAG_SHARED != 0
    }
    pub fn durable(&self) -> bool {
        self.flags & FLAG_DURABLE != 0
    }
}

/// A mapped region.
pub struct PssMap {
    map: MmapRaw,
    geo: Geometry,
    /// This process's pid, read once at map (the lock word names its holder; reading it on
    /// every put would be a system call). A child of `fork` maps the store again.
    pid: u64,
}

/// FNV-1a over words, then a final mix: a checksum, not a defence (the writer is trusted
/// with its own data; this catches torn copies).
#[derive(Clone, Copy)]
struct Sum(u64);

impl Sum {
    fn new() -> Self {
        Sum(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn done(self) -> u64 {
        let h = self.0 ^ (self.0 >> 29);
        h.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1 // never 0: a zeroed copy never checks
    }
}

/// [`checksum`] of bytes, as little-endian words (the last one padded with zeros).
pub(crate) fn checksum_bytes(bytes: &[u8]) -> u64 {
    checksum(bytes.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    }))
}

pub(crate) fn checksum(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut s = Sum::new();
    for w in words {
        s.add(w);
    }
    s.done()
}

fn key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= KEY_MAX && !key.contains('\0')
}

fn key_words(key: &str) -> [u64; 8] {
    let mut b = [0u8; KEY_MAX];
    b[..key.len()].copy_from_slice(key.as_bytes());
    let mut w = [0u64; 8];
    for (k, chunk) in b.chunks_exact(8).enumerate() {
        w[k] = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    w
}

fn key_from_words(w: &[u64; 8]) -> Option<String> {
    let mut b = Vec::with_capacity(KEY_MAX);
    for x in w {
        b.extend_from_slice(&x.to_le_bytes());
    }
    let end = b.iter().position(|&c| c == 0).unwrap_or(KEY_MAX);
    b.truncate(end);
    String::from_utf8(b).ok().filter(|k| key_ok(k))
}

/// One copy's header, as plain words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Head {
    generation: u64,
    flags: u32,
    len: u32,
    key: [u64; 8],
    value_sum: u64,
}

impl Head {
    fn words(&self) -> [u64; COPY_HEAD_WORDS - 1] {
        let mut w = [0u64; COPY_HEAD_WORDS - 1];
        w[0] = self.generation;
        w[1] = u64::from(self.flags) | (u64::from(self.len) << 32);
        w[2..10].copy_from_slice(&self.key);
        w[10] = self.value_sum;
        w
    }
    fn live(&self) -> bool {
        self.flags & FLAG_LIVE != 0
    }
}

impl PssMap {
    /// ham's side: a new region `name` (one of ham's own by that name is replaced; one
    /// that is not is refused), with a descriptor to hand to the entity's processes.
    pub fn create(name: &str, geo: Geometry, owner: &str) -> Result<(Self, OwnedFd), SegmentError> {
        geo.check().map_err(|why| SegmentError::Geometry {
            name: name.into(),
            why,
        })?;
        let fd = crate::segment::create_owned(name, PSS_MODE, geo.region_bytes() as u64)?;
        let region = Self::map(&fd, name, Some(geo)).inspect_err(|_| Self::unlink(name))?;
        let h = region.header();
        h.version.store(PSS_LAYOUT_VERSION, Ordering::Relaxed);
        h.keys.store(geo.keys, Ordering::Relaxed);
        h.value_max.store(geo.value_max, Ordering::Relaxed);
        h.bytes_max.store(geo.bytes_max, Ordering::Relaxed);
        for (w, x) in h
            .owner
            .iter()
            .zip(key_words(&owner[..owner.len().min(KEY_MAX)]))
        {
            w.store(x, Ordering::Relaxed);
        }
        // Release: whoever sees the magic sees the geometry.
        h.magic.store(PSS_MAGIC, Ordering::Release);
        Ok((region, fd))
    }

    /// A successor's side: the region `name` a predecessor made, if it is ham's own.
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::map(&crate::segment::open_owned(name, PSS_MODE)?, name, None)
    }

    /// A descriptor of the region `name` (for an entity's process that asks for it).
    pub fn descriptor(name: &str) -> Result<OwnedFd, SegmentError> {
        crate::segment::open_owned(name, PSS_MODE)
    }

    /// The entity's side: the region behind a descriptor ham handed over.
    pub fn from_fd(fd: &impl AsFd) -> Result<Self, SegmentError> {
        Self::map(fd, "(checkpoint store)", None)
    }

    /// Removes the name (mappings stay valid). Missing is not an error.
    pub fn unlink(name: &str) {
        let _ = rustix::shm::unlink(name);
    }

    /// Maps the region; `made` is the geometry of a region being made (its header is not
    /// written yet), `None` to read and check it from the header.
    fn map(fd: &impl AsFd, name: &str, made: Option<Geometry>) -> Result<Self, SegmentError> {
        let (map, len) = crate::segment::map_whole(fd, name, HEADER_BYTES)?;
        let geo = match made {
            Some(g) => g,
            None => {
                let h: &PssHeader = crate::shm::view(&map, 0).expect("the mapping holds a header");
                crate::segment::check_version(
                    name,
                    (h.magic.load(Ordering::Acquire), PSS_MAGIC),
                    (h.version.load(Ordering::Relaxed), PSS_LAYOUT_VERSION),
                )?;
                Geometry {
                    keys: h.keys.load(Ordering::Relaxed),
                    value_max: h.value_max.load(Ordering::Relaxed),
                    bytes_max: h.bytes_max.load(Ordering::Relaxed),
                }
            }
        };
        let bad = |why: String| SegmentError::Geometry {
            name: name.into(),
            why,
        };
        geo.check().map_err(bad)?;
        if geo.region_bytes() > len {
            return Err(bad(format!(
                "{len} bytes, its header says {}",
                geo.region_bytes()
            )));
        }
        Ok(Self {
            map,
            geo,
            pid: u64::from(
                rustix::process::getpid()
                    .as_raw_nonzero()
                    .get()
                    .unsigned_abs(),
            ),
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The entity it was made for.
    pub fn owner(&self) -> Option<String> {
        let mut w = [0u64; 8];
        for (x, a) in w.iter_mut().zip(&self.header().owner) {
            *x = a.load(Ordering::Relaxed);
        }
        key_from_words(&w)
    }

    pub fn header(&self) -> &PssHeader {
        crate::shm::view(&self.map, 0).expect("checked at map")
    }

    /// The words of entry `e` (its `cur`, then its two copies).
    fn entry(&self, e: usize) -> &[AtomicU64] {
        debug_assert!(e < self.geo.keys as usize);
        let off = HEADER_BYTES + e * self.geo.entry_words() * 8;
        crate::shm::view_slice(&self.map, off, self.geo.entry_words())
            .expect("checked at map: every entry is inside the mapping")
    }

    fn copy(&self, e: usize, c: usize) -> &[AtomicU64] {
        let n = self.geo.copy_words();
        &self.entry(e)[1 + c * n..1 + (c + 1) * n]
    }

    fn head(words: &[AtomicU64]) -> Option<Head> {
        let w: Vec<u64> = words[..COPY_HEAD_WORDS]
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect();
        let mut key = [0u64; 8];
        key.copy_from_slice(&w[2..10]);
        let head = Head {
            generation: w[0],
            flags: w[1] as u32,
            len: (w[1] >> 32) as u32,
            key,
            value_sum: w[10],
        };
        (checksum(head.words()) == w[11]).then_some(head)
    }

    /// Entry `e`'s current copy, whole: `None` while it is free (never written, or
    /// deleted). `Err` when puts keep changing it.
    fn read_entry(&self, e: usize) -> Result<Option<(Head, Vec<u8>)>, ()> {
        let cur = &self.entry(e)[0];
        for _ in 0..READ_TRIES {
            // Acquire: pairs with the writer's Release store of `cur`; the copy it names
            // was written before that store.
            let c = cur.load(Ordering::Acquire);
            if c == 0 {
                return Ok(None); // never written
            }
            let words = self.copy(e, (c & 1) as usize);
            let Some(head) = Self::head(words) else {
                if cur.load(Ordering::Acquire) == c {
                    return Err(()); // published, and does not check: not ours to fix
                }
                continue;
            };
            let len = (head.len as usize).min(self.geo.value_max as usize);
            let mut value = Vec::with_capacity(len);
            let mut sum_words = Vec::with_capacity(len.div_ceil(8));
            for w in &words[COPY_HEAD_WORDS..COPY_HEAD_WORDS + len.div_ceil(8)] {
                let x = w.load(Ordering::Relaxed);
                sum_words.push(x);
                value.extend_from_slice(&x.to_le_bytes());
            }
            value.truncate(len);
            // The copy's words are read before `cur` is looked at again.
            fence(Ordering::Acquire);
            if cur.load(Ordering::Relaxed) != c {
                continue; // a put came by: read again
            }
            if head.generation != c >> 1 || checksum(sum_words) != head.value_sum {
                return Err(());
            }
            return Ok(head.live().then_some((head, value)));
        }
        Err(())
    }

    /// Every live key, read whole (ham: the durable commit, `hamctl pss`, shared reads).
    pub fn entries(&self) -> Vec<Value> {
        (0..self.geo.keys as usize)
            .filter_map(|e| match self.read_entry(e) {
                Ok(Some((h, bytes))) => Some(Value {
                    key: key_from_words(&h.key)?,
                    flags: h.flags,
                    bytes,
                    generation: h.generation,
                }),
                _ => None,
            })
            .collect()
    }

    /// The entry that holds `key` (live), and its current head.
    fn find(&self, key: &[u64; 8]) -> Result<Option<(usize, Head, Vec<u8>)>, ()> {
        for e in 0..self.geo.keys as usize {
            // A cheap look at the current copy's key before reading it whole.
            let cur = self.entry(e)[0].load(Ordering::Acquire);
            if cur == 0 {
                continue;
            }
            let words = self.copy(e, (cur & 1) as usize);
            if (0..8).any(|k| words[2 + k].load(Ordering::Relaxed) != key[k]) {
                continue;
            }
            if let Some((h, v)) = self.read_entry(e)? {
                if h.key == *key {
                    return Ok(Some((e, h, v)));
                }
            }
        }
        Ok(None)
    }

    /// The value of `key`, if it is there.
    pub fn get(&self, key: &str) -> Result<Option<Value>, PssError> {
        if !key_ok(key) {
            return Err(PssError::BadKey(key.into()));
        }
        match self.find(&key_words(key)) {
            Ok(found) => Ok(found.map(|(_, h, bytes)| Value {
                key: key.to_owned(),
                flags: h.flags,
                bytes,
                generation: h.generation,
            })),
            Err(()) => Err(PssError::Unstable(key.into())),
        }
    }

    /// Writes `value` under `key` with `flags` (`FLAG_SHARED`, `FLAG_DURABLE`): all or
    /// nothing. Returns the region's sequence number after it.
    pub fn put(&self, key: &str, value: &[u8], flags: u32) -> Result<u64, PssError> {
        if !key_ok(key) {
            return Err(PssError::BadKey(key.into()));
        }
        if value.len() > self.geo.value_max as usize {
            return Err(PssError::TooLarge {
                key: key.into(),
                len: value.len(),
                max: self.geo.value_max,
            });
        }
        let _lock = self.lock()?;
        self.write(key, Some((value, flags & (FLAG_SHARED | FLAG_DURABLE))))
    }

    /// Deletes `key`; whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, PssError> {
        if !key_ok(key) {
            return Err(PssError::BadKey(key.into()));
        }
        let _lock = self.lock()?;
        let there = self.find_head(&key_words(key)).is_some();
        if there {
            self.write(key, None)?;
        }
        Ok(there)
    }

    /// Under the lock (no put changes the current copies): the entry whose current copy is
    /// `key`, live, and its head. Only the copies' headers are read.
    fn find_head(&self, key: &[u64; 8]) -> Option<(usize, Head)> {
        (0..self.geo.keys as usize).find_map(|e| {
            let cur = self.entry(e)[0].load(Ordering::Acquire);
            if cur == 0 {
                return None;
            }
            let words = self.copy(e, (cur & 1) as usize);
            if (0..8).any(|k| words[2 + k].load(Ordering::Relaxed) != key[k]) {
                return None;
            }
            Self::head(words)
                .filter(|h| h.live() && h.key == *key)
                .map(|h| (e, h))
        })
    }

    /// A put (`Some`) or a delete (`None`), under the lock.
    fn write(&self, key: &str, put: Option<(&[u8], u32)>) -> Result<u64, PssError> {
        let kw = key_words(key);
        let found = self.find_head(&kw);
        let old_len = found.map_or(0, |(_, h)| u64::from(h.len));
        let e = match found {
            Some((e, _)) => e,
            None if put.is_none() => return Ok(self.header().seq.load(Ordering::Acquire)),
            None => {
                // A free entry: never written, or whose current copy is not live.
                let free = (0..self.geo.keys as usize).find(|&e| {
                    let cur = self.entry(e)[0].load(Ordering::Acquire);
                    cur == 0
                        || Self::head(self.copy(e, (cur & 1) as usize)).is_some_and(|h| !h.live())
                });
                match free {
                    Some(e) => e,
                    None => {
                        return Err(PssError::TooManyKeys { max: self.geo.keys });
                    }
                }
            }
        };
        let live = &self.header().live_bytes;
        let others = live.load(Ordering::Relaxed).saturating_sub(old_len);
        if let Some((value, _)) = put {
            if others + value.len() as u64 > u64::from(self.geo.bytes_max) {
                return Err(PssError::OverQuota {
                    key: key.into(),
                    max: self.geo.bytes_max,
                });
            }
        }
        let cur = &self.entry(e)[0];
        let c = cur.load(Ordering::Acquire);
        let (generation, inactive) = ((c >> 1) + 1, if c == 0 { 0 } else { 1 - (c & 1) });
        let words = self.copy(e, inactive as usize);
        // Release: a reader that reads any word this put writes below, then fences
        // (Acquire), sees `cur` as the previous put left it or later, and so reads again
        // (the seqlock's reader check, without a "writing" mark a dead writer could leave).
        fence(Ordering::Release);
        let (value, flags) = put.map_or((&[][..], 0), |(v, f)| (v, f | FLAG_LIVE));
        let mut sum = Sum::new();
        for (k, chunk) in value.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            let x = u64::from_le_bytes(b);
            sum.add(x);
            words[COPY_HEAD_WORDS + k].store(x, Ordering::Relaxed);
        }
        let head = Head {
            generation,
            flags,
            len: value.len() as u32,
            key: kw,
            value_sum: sum.done(),
        };
        let hw = head.words();
        for (k, w) in hw.iter().enumerate() {
            words[k].store(*w, Ordering::Relaxed);
        }
        words[COPY_HEAD_WORDS - 1].store(checksum(hw), Ordering::Relaxed);
        // The commit: Release, so that a reader that sees this value of `cur` sees the
        // copy it names whole.
        cur.store((generation << 1) | inactive, Ordering::Release);
        live.store(others + value.len() as u64, Ordering::Relaxed);
        Ok(self.header().seq.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// The length of every live value, from the copies' headers (under the lock no put
    /// changes them; a copy that does not check counts as empty).
    fn count_live_bytes(&self) -> u64 {
        (0..self.geo.keys as usize)
            .filter_map(|e| {
                let cur = self.entry(e)[0].load(Ordering::Acquire);
                (cur != 0).then(|| Self::head(self.copy(e, (cur & 1) as usize)))?
            })
            .filter(Head::live)
            .map(|h| u64::from(h.len))
            .sum()
    }

    /// Takes the region's writer lock for this process. A lock held by a process that no
    /// longer exists is taken over (its put never published); one held by a live process
    /// is waited for a while, then refused.
    ///
    /// Uncontended, this is one compare-and-swap and no system call. Two threads of one
    /// process (or a process and a child that kept its mapping across `fork`) take turns
    /// like any two holders; only the liveness check tells a dead holder from a slow one.
    fn lock(&self) -> Result<LockGuard<'_>, PssError> {
        let me = self.pid;
        let word = &self.header().lock;
        let mut deadline = None;
        let mut spins = 0u32;
        loop {
            let holder = match word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(LockGuard { word, me }),
                Err(holder) => holder,
            };
            spins += 1;
            if spins % 64 == 0 {
                let dead = rustix::process::Pid::from_raw(holder as i32)
                    .is_none_or(|p| rustix::process::test_kill_process(p).is_err());
                if dead
                    && word
                        .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    // Its put may have been published before it could count its bytes.
                    self.header()
                        .live_bytes
                        .store(self.count_live_bytes(), Ordering::Relaxed);
                    return Ok(LockGuard { word, me });
                }
                let now = crate::clock::mono_ns();
                if now > *deadline.get_or_insert(now + 2_000_000_000) {
                    return Err(PssError::Busy { pid: holder as u32 });
                }
            }
            if spins < 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// The region's sequence number: puts and deletes published so far.
    pub fn seq(&self) -> u64 {
        self.header().seq.load(Ordering::Acquire)
    }
}

struct LockGuard<'a> {
    word: &'a AtomicU64,
    me: u64,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Release: the next holder sees this holder's writes.
        let _ = self
            .word
            .compare_exchange(self.me, 0, Ordering::Release, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// On disk: the durable keys of one entity, as one file written whole (ham's side)
// ---------------------------------------------------------------------------------------------

const FILE_MAGIC: &[u8; 8] = b"HAMPSSD1";

/// The durable keys as the bytes of a file: magic, then per key its length (u16), flags
/// (u32), value length (u32), key and value, then a checksum of all that (u64).
pub fn encode_durable(values: &[Value]) -> Vec<u8> {
    let mut out = FILE_MAGIC.to_vec();
    for v in values {
        out.extend_from_slice(&(v.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&v.flags.to_le_bytes());
        out.extend_from_slice(&(v.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(v.key.as_bytes());
        out.extend_from_slice(&v.bytes);
    }
    let sum = checksum_bytes(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A file [`encode_durable`] wrote, or why it is not one.
pub fn decode_durable(bytes: &[u8]) -> Result<Vec<Value>, String> {
    if bytes.len() < FILE_MAGIC.len() + 8 || &bytes[..8] != FILE_MAGIC {
        return Err("not a ham checkpoint file".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let want = checksum_bytes(body);
    if u64::from_le_bytes(sum.try_into().expect("8 bytes")) != want {
        return Err("its checksum does not match (a torn or damaged file)".into());
    }
    let mut at = FILE_MAGIC.len();
    let mut out = Vec::new();
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = body.get(*at..*at + n).ok_or("truncated")?;
        *at += n;
        Ok(s)
    };
    while at < body.len() {
        let klen = u16::from_le_bytes(take(&mut at, 2)?.try_into().expect("2")) as usize;
        let flags = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4"));
        let vlen = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4")) as usize;
        let key =
            String::from_utf8(take(&mut at, klen)?.to_vec()).map_err(|_| "a key is not UTF-8")?;
        if !key_ok(&key) {
            return Err(format!("bad key `{key}`"));
        }
        let bytes = take(&mut at, vlen)?.to_vec();
        out.push(Value {
            key,
            flags,
            bytes,
            generation: 0,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        keys: 4,
        value_max: 64,
        bytes_max: 128,
    };

    fn region(tag: &str) -> (String, PssMap, OwnedFd) {
        let name = format!("/ham-core-test-pss-{tag}-{}", std::process::id());
        let (map, fd) = PssMap::create(&name, GEO, "counter").unwrap();
        (name, map, fd)
    }

    #[test]
    fn puts_gets_and_deletes_are_seen_through_the_descriptor_and_by_name() {
        let (name, ham, fd) = region("basic");
        let client = PssMap::from_fd(&fd).unwrap();
        assert_eq!(client.get("count").unwrap(), None);
        client.put("count", b"41", 0).unwrap();
        client.put("count", b"42", FLAG_DURABLE).unwrap();
        client.put("peer", b"10.0.0.2", FLAG_SHARED).unwrap();
        let v = ham.get("count").unwrap().unwrap();
        assert_eq!(
            (v.bytes.as_slice(), v.durable(), v.generation),
            (&b"42"[..], true, 2)
        );
        let successor = PssMap::open(&name).unwrap();
        assert_eq!(successor.owner().as_deref(), Some("counter"));
        let mut keys: Vec<String> = successor.entries().into_iter().map(|v| v.key).collect();
        keys.sort();
        assert_eq!(keys, ["count", "peer"]);
        assert!(client.delete("count").unwrap());
        assert!(!client.delete("count").unwrap());
        assert_eq!(ham.get("count").unwrap(), None);
        assert_eq!(ham.seq(), 4);
        PssMap::unlink(&name);
    }

    #[test]
    fn quotas_and_bad_keys_are_refused_with_their_reason() {
        let (name, m, _fd) = region("quota");
        assert_eq!(m.put("", b"x", 0), Err(PssError::BadKey("".into())));
        assert!(matches!(
            m.put(&"k".repeat(65), b"x", 0),
            Err(PssError::BadKey(_))
        ));
        assert!(matches!(
            m.put("big", &[0; 65], 0),
            Err(PssError::TooLarge { len: 65, .. })
        ));
        m.put("a", &[1; 64], 0).unwrap();
        m.put("b", &[2; 64], 0).unwrap();
        assert!(matches!(
            m.put("c", &[3; 1], 0),
            Err(PssError::OverQuota { .. })
        ));
        // Replacing a value counts its new size, not both.
        m.put("b", &[4; 64], 0).unwrap();
        m.put("c", &[], 0).unwrap();
        m.put("d", &[], 0).unwrap();
        assert_eq!(m.put("e", &[], 0), Err(PssError::TooManyKeys { max: 4 }));
        // A deleted key's entry is taken again.
        m.delete("d").unwrap();
        m.put("e", &[], 0).unwrap();
        assert_eq!(m.get("e").unwrap().unwrap().bytes, b"");
        PssMap::unlink(&name);
    }

    #[test]
    fn a_put_torn_before_its_commit_leaves_the_old_value() {
        let (name, m, _fd) = region("torn");
        m.put("k", b"old value", 0).unwrap();
        // A writer that died mid-put: the inactive copy is half-written, `cur` unchanged.
        let c = m.entry(0)[0].load(Ordering::Relaxed);
        let inactive = m.copy(0, 1 - (c & 1) as usize);
        for w in &inactive[..COPY_HEAD_WORDS + 2] {
            w.store(0xdead_beef, Ordering::Relaxed);
        }
        // …holding the lock: its pid is no process.
        m.header()
            .lock
            .store(u64::from(u32::MAX >> 1), Ordering::Relaxed);
        assert_eq!(m.get("k").unwrap().unwrap().bytes, b"old value");
        // The next writer takes the lock over and its put is whole.
        m.put("k", b"new", 0).unwrap();
        assert_eq!(m.get("k").unwrap().unwrap().bytes, b"new");
        assert_eq!(m.header().lock.load(Ordering::Relaxed), 0);
        PssMap::unlink(&name);
    }

    #[test]
    fn a_reader_never_sees_a_value_half_written() {
        let (name, m, fd) = region("race");
        let writer = PssMap::from_fd(&fd).unwrap();
        m.put("n", &0u64.to_le_bytes().repeat(8), 0).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let mut n = 1u64;
            while !s.load(Ordering::Relaxed) {
                writer.put("n", &n.to_le_bytes().repeat(8), 0).unwrap();
                n += 1;
            }
        });
        let (mut last, mut whole) = (0, 0);
        for _ in 0..20_000 {
            match m.get("n") {
                Ok(Some(v)) => {
                    whole += 1;
                    let first = u64::from_le_bytes(v.bytes[..8].try_into().unwrap());
                    assert!(v.bytes.chunks(8).all(|c| c == first.to_le_bytes()), "torn");
                    assert!(first >= last, "went back from {last} to {first}");
                    last = first;
                }
                Ok(None) => panic!("the key vanished"),
                Err(PssError::Unstable(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(whole > 1_000, "only {whole} reads got through");
        assert!(last > 0, "the writer never got a put in");
        PssMap::unlink(&name);
    }

    #[test]
    fn durable_files_round_trip_and_a_damaged_one_is_refused() {
        let values = vec![
            Value {
                key: "a".into(),
                flags: FLAG_LIVE | FLAG_DURABLE,
                bytes: b"hello".to_vec(),
                generation: 3,
            },
            Value {
                key: "b".into(),
                flags: FLAG_LIVE | FLAG_DURABLE | FLAG_SHARED,
                bytes: vec![],
                generation: 1,
            },
        ];
        let bytes = encode_durable(&values);
        let back = decode_durable(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].key.as_str(), back[0].bytes.as_slice()),
            ("a", &b"hello"[..])
        );
        assert!(back[1].shared());
        let mut bad = bytes.clone();
        bad[12] ^= 1;
        assert!(decode_durable(&bad).unwrap_err().contains("checksum"));
        assert!(decode_durable(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode_durable(b"nonsense").is_err());
    }

    #[test]
    fn a_region_that_is_not_one_is_refused() {
        let (name, m, fd) = region("magic");
        m.header().magic.store(0, Ordering::Relaxed);
        assert!(matches!(
            PssMap::from_fd(&fd),
            Err(SegmentError::BadMagic { .. })
        ));
        PssMap::unlink(&name);
    }
}
