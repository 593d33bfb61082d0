//! Message queues that outlive a restart (NX-OS's Message and Transaction Service): one
//! bounded queue per receiving entity, kept by ham in a region of shared memory of its own
//! (`/ham.<instance>.mts.<slot>`, mode 0600, never handed to anyone), so that a successor
//! HAM finds every message its predecessor accepted.
//!
//! ## Layout (`#[repr(C)]`, atomics only, versioned and checked on map)
//! A [`MtsHeader`], then `capacity` slots of [`SLOT_HEAD_WORDS`] words and `message_max`
//! bytes. A slot's words: `state` (0 free, 1 queued), ham's message id, the sender's
//! idempotency key, the order it was accepted in, `delivery` (how many times it was handed
//! out, and to which incarnation of the receiver), the sender's uid and length, the
//! sender's name (64 bytes), then the message.
//!
//! ## One writer, and a kill at any point
//! Only ham writes (one HAM at a time, by its epoch). A message is written into a free slot
//! and then published by one Release store of `state = 1`: a HAM killed before that store
//! leaves the slot free and the sender unanswered, so the sender asks again (its request
//! carries its key, and a key already queued is not queued twice, so asking again never
//! duplicates). A delivery is one store of `delivery`; an acknowledgement one store of
//! `state = 0`.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use crate::segment::SegmentError;

/// `b"HAMMTS\0\0"` read as a little-endian `u64`.
pub const MTS_MAGIC: u64 = u64::from_le_bytes(*b"HAMMTS\0\0");
/// Bumped on any change to the layout.
pub const MTS_LAYOUT_VERSION: u32 = 2;
/// ham's user only.
pub const MTS_MODE: u32 = 0o600;
/// Words of a slot before its message.
pub const SLOT_HEAD_WORDS: usize = 15;
/// Largest message a queue may be made for.
pub const MESSAGE_MAX_LIMIT: u32 = 64 * 1024;
/// Most slots a queue may have.
pub const CAPACITY_LIMIT: u32 = 65536;

/// A queue's first words.
#[repr(C)]
pub struct MtsHeader {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    /// Slots.
    pub capacity: AtomicU32,
    /// Bytes of a slot's message (a multiple of 8).
    pub message_max: AtomicU32,
    pub pad: AtomicU32,
    /// The next message id and order number (ham's, never reused in a queue's life).
    pub next: AtomicU64,
    /// The receiving entity (its name, NUL-padded).
    pub owner: [AtomicU64; 8],
    pub reserved: [AtomicU64; 4],
}

const HEADER_BYTES: usize = std::mem::size_of::<MtsHeader>();
const _: () = assert!(HEADER_BYTES == 128);

/// The shape of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub capacity: u32,
    pub message_max: u32,
}

impl Shape {
    fn slot_words(&self) -> usize {
        SLOT_HEAD_WORDS + (self.message_max as usize).div_ceil(8)
    }
    /// The queue's size in bytes.
    pub fn region_bytes(&self) -> usize {
        HEADER_BYTES + self.capacity as usize * self.slot_words() * 8
    }
    /// Whether a queue can be made with this shape, or why not.
    pub fn validate(&self) -> Result<(), String> {
        if self.capacity == 0 || self.capacity > CAPACITY_LIMIT {
            return Err(format!(
                "{} messages (1 to {CAPACITY_LIMIT})",
                self.capacity
            ));
        }
        if self.message_max == 0
            || self.message_max > MESSAGE_MAX_LIMIT
            || self.message_max % 8 != 0
        {
            return Err(format!(
                "messages of {} bytes (a multiple of 8, at most {MESSAGE_MAX_LIMIT})",
                self.message_max
            ));
        }
        Ok(())
    }
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its slot.
    pub slot: u32,
    /// ham's id for it (what the receiver acknowledges).
    pub id: u64,
    /// The sender's idempotency key.
    pub key: u64,
    /// Accepted in this order (per queue).
    pub order: u64,
    /// Times handed out.
    pub deliveries: u32,
    /// The receiver incarnation it was last handed to (0: none yet).
    pub delivered_to: u32,
    pub sender: String,
    pub uid: u32,
    pub bytes: Vec<u8>,
}

/// A mapped queue (ham's side only).
pub struct MtsMap {
    map: MmapRaw,
    shape: Shape,
}

fn name_words(s: &str) -> [u64; 8] {
    let mut b = [0u8; 64];
    let n = s.len().min(64);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    let mut w = [0u64; 8];
    for (k, c) in b.chunks_exact(8).enumerate() {
        w[k] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    w
}

fn name_from(words: &[AtomicU64]) -> String {
    let mut b = Vec::with_capacity(64);
    for w in words {
        b.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

// Slot words.
const W_STATE: usize = 0;
const W_ID: usize = 1;
const W_KEY: usize = 2;
const W_ORDER: usize = 3;
const W_DELIVERY: usize = 4; // deliveries << 32 | incarnation
const W_UID_LEN: usize = 5; // uid << 32 | len
const W_SENDER: usize = 6; // 8 words
const W_SUM: usize = 14; // checksum of the message's words

use crate::pss::{checksum, checksum_bytes};

impl MtsMap {
    /// A new queue `name` (one of ham's own by that name is replaced; one that is not is
    /// refused).
    pub fn create(name: &str, shape: Shape, owner: &str) -> Result<Self, SegmentError> {
        shape.validate().map_err(|why| SegmentError::Geometry {
            name: name.into(),
            why,
        })?;
        let fd = crate::segment::create_owned(name, MTS_MODE, shape.region_bytes() as u64)?;
        let q = Self::map(&fd, name, Some(shape)).inspect_err(|_| Self::unlink(name))?;
        let h = q.header();
        h.version.store(MTS_LAYOUT_VERSION, Ordering::Relaxed);
        h.capacity.store(shape.capacity, Ordering::Relaxed);
        h.message_max.store(shape.message_max, Ordering::Relaxed);
        h.next.store(1, Ordering::Relaxed);
        for (w, x) in h.owner.iter().zip(name_words(owner)) {
            w.store(x, Ordering::Relaxed);
        }
        h.magic.store(MTS_MAGIC, Ordering::Release);
        Ok(q)
    }

    /// A predecessor's queue `name`, if it is ham's own.
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::map(&crate::segment::open_owned(name, MTS_MODE)?, name, None)
    }

    pub fn unlink(name: &str) {
        let _ = rustix::shm::unlink(name);
    }

    fn map(fd: &impl AsFd, name: &str, made: Option<Shape>) -> Result<Self, SegmentError> {
        let (map, len) = crate::segment::map_whole(fd, name, HEADER_BYTES)?;
        let bad = |why: String| SegmentError::Geometry {
            name: name.into(),
            why,
        };
        let shape = match made {
            Some(s) => s,
            None => {
                let h: &MtsHeader = crate::shm::view(&map, 0).expect("a header fits");
                crate::segment::check_version(
                    name,
                    (h.magic.load(Ordering::Acquire), MTS_MAGIC),
                    (h.version.load(Ordering::Relaxed), MTS_LAYOUT_VERSION),
                )?;
                Shape {
                    capacity: h.capacity.load(Ordering::Relaxed),
                    message_max: h.message_max.load(Ordering::Relaxed),
                }
            }
        };
        shape.validate().map_err(bad)?;
        if shape.region_bytes() > len {
            return Err(bad(format!(
                "{len} bytes, its header says {}",
                shape.region_bytes()
            )));
        }
        Ok(Self { map, shape })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn header(&self) -> &MtsHeader {
        crate::shm::view(&self.map, 0).expect("checked at map")
    }

    /// The receiving entity.
    pub fn owner(&self) -> String {
        name_from(&self.header().owner)
    }

    fn slot(&self, s: usize) -> &[AtomicU64] {
        let n = self.shape.slot_words();
        crate::shm::view_slice(&self.map, HEADER_BYTES + s * n * 8, n)
            .expect("checked at map: every slot is inside the mapping")
    }

    /// Every queued message, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        let mut v: Vec<Message> = (0..self.shape.capacity as usize)
            .filter_map(|s| self.read(s))
            .collect();
        v.sort_by_key(|m| m.order);
        v
    }

    /// Queued messages.
    pub fn len(&self) -> usize {
        (0..self.shape.capacity as usize)
            .filter(|&s| self.slot(s)[W_STATE].load(Ordering::Acquire) == 1)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self, s: usize) -> Option<Message> {
        let w = self.slot(s);
        if w[W_STATE].load(Ordering::Acquire) != 1 {
            return None;
        }
        let uid_len = w[W_UID_LEN].load(Ordering::Relaxed);
        let len = ((uid_len & 0xffff_ffff) as usize).min(self.shape.message_max as usize);
        let words: Vec<u64> = w[SLOT_HEAD_WORDS..SLOT_HEAD_WORDS + len.div_ceil(8)]
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect();
        if checksum(words.iter().copied()) != w[W_SUM].load(Ordering::Relaxed) {
            return None; // not ours: only a broken memory gets here
        }
        let mut bytes: Vec<u8> = words.iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.truncate(len);
        let d = w[W_DELIVERY].load(Ordering::Relaxed);
        Some(Message {
            slot: s as u32,
            id: w[W_ID].load(Ordering::Relaxed),
            key: w[W_KEY].load(Ordering::Relaxed),
            order: w[W_ORDER].load(Ordering::Relaxed),
            deliveries: (d >> 32) as u32,
            delivered_to: d as u32,
            sender: name_from(&w[W_SENDER..W_SENDER + 8]),
            uid: (uid_len >> 32) as u32,
            bytes,
        })
    }

    /// Queues `bytes` from `sender` (uid `uid`) under the sender's idempotency `key`:
    /// `Ok(id)`, the same id if that key is queued already. `Err` when full or too large.
    pub fn push(&self, key: u64, sender: &str, uid: u32, bytes: &[u8]) -> Result<u64, MtsError> {
        if bytes.len() > self.shape.message_max as usize {
            return Err(MtsError::TooLarge {
                len: bytes.len(),
                max: self.shape.message_max,
            });
        }
        let mut free = None;
        for s in 0..self.shape.capacity as usize {
            let w = self.slot(s);
            match w[W_STATE].load(Ordering::Acquire) {
                1 if key != 0 && w[W_KEY].load(Ordering::Relaxed) == key => {
                    return Ok(w[W_ID].load(Ordering::Relaxed));
                }
                1 => {}
                _ => {
                    free.get_or_insert(s);
                }
            }
        }
        let Some(s) = free else {
            return Err(MtsError::Full {
                capacity: self.shape.capacity,
            });
        };
        let h = self.header();
        let id = h.next.fetch_add(1, Ordering::Relaxed);
        let w = self.slot(s);
        let mut words = Vec::with_capacity(bytes.len().div_ceil(8));
        for (k, c) in bytes.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            let x = u64::from_le_bytes(b);
            words.push(x);
            w[SLOT_HEAD_WORDS + k].store(x, Ordering::Relaxed);
        }
        w[W_ID].store(id, Ordering::Relaxed);
        w[W_KEY].store(key, Ordering::Relaxed);
        w[W_ORDER].store(id, Ordering::Relaxed);
        w[W_DELIVERY].store(0, Ordering::Relaxed);
        w[W_UID_LEN].store(
            (u64::from(uid) << 32) | bytes.len() as u64,
            Ordering::Relaxed,
        );
        for (x, y) in w[W_SENDER..W_SENDER + 8].iter().zip(name_words(sender)) {
            x.store(y, Ordering::Relaxed);
        }
        w[W_SUM].store(checksum(words), Ordering::Relaxed);
        // The commit (Release: a successor that sees 1 sees the slot whole).
        w[W_STATE].store(1, Ordering::Release);
        Ok(id)
    }

    /// The oldest queued message, handed to receiver incarnation `incarnation`: its count
    /// of deliveries goes up the first time each incarnation gets it (asking again gives
    /// the same message, until it is acknowledged: receiving is idempotent, and strictly
    /// in order).
    pub fn deliver(&self, incarnation: u32) -> Option<Message> {
        let m = self.messages().into_iter().next()?;
        if m.delivered_to == incarnation {
            return Some(m);
        }
        let d = (u64::from(m.deliveries + 1) << 32) | u64::from(incarnation);
        self.slot(m.slot as usize)[W_DELIVERY].store(d, Ordering::Release);
        Some(Message {
            deliveries: m.deliveries + 1,
            delivered_to: incarnation,
            ..m
        })
    }

    /// The highest message id given so far.
    pub fn last_id(&self) -> u64 {
        self.header().next.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Puts back a message read from disk (a durable queue after a reboot), with its id and
    /// order; later ids come after it.
    pub fn restore(&self, m: &Message) -> Result<(), MtsError> {
        let id = self.push(m.key, &m.sender, m.uid, &m.bytes)?;
        let w = self.slot(
            (0..self.shape.capacity as usize)
                .find(|&s| {
                    self.slot(s)[W_STATE].load(Ordering::Acquire) == 1
                        && self.slot(s)[W_ID].load(Ordering::Relaxed) == id
                })
                .expect("just pushed"),
        );
        w[W_ID].store(m.id, Ordering::Relaxed);
        w[W_ORDER].store(m.order, Ordering::Relaxed);
        let h = self.header();
        h.next.store(
            h.next.load(Ordering::Relaxed).max(m.id + 1),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Removes message `id`: whether it was queued.
    pub fn ack(&self, id: u64) -> bool {
        (0..self.shape.capacity as usize).any(|s| {
            let w = self.slot(s);
            if w[W_STATE].load(Ordering::Acquire) == 1 && w[W_ID].load(Ordering::Relaxed) == id {
                w[W_STATE].store(0, Ordering::Release);
                true
            } else {
                false
            }
        })
    }
}

const FILE_MAGIC: &[u8; 8] = b"HAMMTSD1";

/// A durable queue's messages as the bytes of a file: magic, then per message its id,
/// key, order (u64 each), uid, sender length, length (u32 each), sender and message, then a
/// checksum of all that.
pub fn encode_queue(messages: &[Message]) -> Vec<u8> {
    let mut out = FILE_MAGIC.to_vec();
    for m in messages {
        for x in [m.id, m.key, m.order] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in [m.uid, m.sender.len() as u32, m.bytes.len() as u32] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(m.sender.as_bytes());
        out.extend_from_slice(&m.bytes);
    }
    let sum = checksum_bytes(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A file [`encode_queue`] wrote, or why it is not one.
pub fn decode_queue(bytes: &[u8]) -> Result<Vec<Message>, String> {
    if bytes.len() < 16 || &bytes[..8] != FILE_MAGIC {
        return Err("not a ham queue file".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let want = checksum_bytes(body);
    if u64::from_le_bytes(sum.try_into().expect("8")) != want {
        return Err("its checksum does not match (a torn or damaged file)".into());
    }
    fn take<'a>(body: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let s = body.get(*at..*at + n).ok_or("truncated")?;
        *at += n;
        Ok(s)
    }
    let u64_at = |at: &mut usize| -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            take(body, at, 8)?.try_into().expect("8"),
        ))
    };
    let u32_at = |at: &mut usize| -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            take(body, at, 4)?.try_into().expect("4"),
        ))
    };
    let mut at = 8;
    let mut out = Vec::new();
    while at < body.len() {
        let (id, key, order) = (u64_at(&mut at)?, u64_at(&mut at)?, u64_at(&mut at)?);
        let (uid, slen, len) = (u32_at(&mut at)?, u32_at(&mut at)?, u32_at(&mut at)?);
        let sender = String::from_utf8_lossy(take(body, &mut at, slen as usize)?).into_owned();
        let bytes = take(body, &mut at, len as usize)?.to_vec();
        out.push(Message {
            slot: 0,
            id,
            key,
            order,
            deliveries: 0,
            delivered_to: 0,
            sender,
            uid,
            bytes,
        });
    }
    Ok(out)
}

/// Why a message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MtsError {
    #[error("the queue is full ({capacity} messages, mts_queue)")]
    Full { capacity: u32 },
    #[error("a message of {len} bytes is larger than the queue takes ({max}, mts_message_max)")]
    TooLarge { len: usize, max: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        capacity: 3,
        message_max: 16,
    };

    #[test]
    fn messages_queue_in_order_are_delivered_again_to_a_new_incarnation_and_leave_on_ack() {
        let name = format!("/ham-core-test-mts-{}", std::process::id());
        let q = MtsMap::create(&name, SHAPE, "rx").unwrap();
        let a = q.push(11, "tx", 0, b"first").unwrap();
        let b = q.push(12, "tx", 0, b"second").unwrap();
        // A sender asking again (its HAM died before answering) is not queued twice.
        assert_eq!(q.push(11, "tx", 0, b"first").unwrap(), a);
        q.push(13, "tx", 0, b"third").unwrap();
        assert_eq!(
            q.push(14, "tx", 0, b"x"),
            Err(MtsError::Full { capacity: 3 })
        );
        assert!(matches!(
            q.push(15, "tx", 0, &[0; 17]),
            Err(MtsError::TooLarge { .. })
        ));
        // Incarnation 1 gets the oldest, again until it acknowledges it, then the next.
        let m = q.deliver(1).unwrap();
        assert_eq!(
            (m.id, m.deliveries, m.bytes.as_slice()),
            (a, 1, &b"first"[..])
        );
        assert_eq!(q.deliver(1).unwrap(), m);
        assert!(q.ack(a));
        assert!(!q.ack(a));
        assert_eq!(q.deliver(1).unwrap().id, b);
        // A successor finds the queue as it was.
        let s = MtsMap::open(&name).unwrap();
        assert_eq!(s.owner(), "rx");
        let left: Vec<u64> = s.messages().iter().map(|m| m.id).collect();
        assert_eq!(left.len(), 2);
        // The receiver restarted (incarnation 2): `second` again, counted twice.
        let m = s.deliver(2).unwrap();
        assert_eq!((m.id, m.deliveries, m.sender.as_str()), (b, 2, "tx"));
        MtsMap::unlink(&name);
    }

    #[test]
    fn a_queue_file_round_trips_and_a_restored_queue_keeps_ids_and_order() {
        let name = format!("/ham-core-test-mts-file-{}", std::process::id());
        let q = MtsMap::create(&name, SHAPE, "rx").unwrap();
        q.push(7, "tx", 5, b"one").unwrap();
        let two = q.push(8, "tx", 5, b"two").unwrap();
        q.ack(q.messages()[0].id);
        let bytes = encode_queue(&q.messages());
        MtsMap::unlink(&name);
        let back = decode_queue(&bytes).unwrap();
        assert_eq!(back.len(), 1);
        let fresh = MtsMap::create(&name, SHAPE, "rx").unwrap();
        fresh.restore(&back[0]).unwrap();
        let m = fresh.deliver(1).unwrap();
        assert_eq!(
            (m.id, m.key, m.bytes.as_slice(), m.uid),
            (two, 8, &b"two"[..], 5)
        );
        assert!(
            fresh.push(9, "tx", 0, b"three").unwrap() > two,
            "later ids come after"
        );
        let mut bad = bytes.clone();
        bad[9] ^= 1;
        assert!(decode_queue(&bad).unwrap_err().contains("checksum"));
        assert!(decode_queue(&bytes[..bytes.len() - 2]).is_err());
        MtsMap::unlink(&name);
    }

    #[test]
    fn a_slot_never_published_is_free() {
        let name = format!("/ham-core-test-mts-torn-{}", std::process::id());
        let q = MtsMap::create(&name, SHAPE, "rx").unwrap();
        // A HAM that died writing slot 0: everything but the state word.
        q.slot(0)[W_ID].store(99, Ordering::Relaxed);
        q.slot(0)[W_UID_LEN].store(5, Ordering::Relaxed);
        assert!(q.is_empty());
        let id = q.push(1, "tx", 0, b"hello").unwrap();
        assert_eq!(q.messages()[0].id, id);
        MtsMap::unlink(&name);
    }
}
