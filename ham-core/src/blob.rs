//! A variable-length document in the state segment (the definitions made at run time
//! through the API: entities, conditions, actions), kept as two copies with the A/B protocol
//! of the records: the writer fills the copy the next generation selects (checksum zeroed
//! first, written last), so a writer killed at any instruction leaves the previous document
//! intact, and readers take the newest copy whose checksum matches.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Words of document one copy holds (256 KiB).
pub const BLOB_WORDS: usize = 32 * 1024;

/// One copy: checksum, generation, length in bytes, then the bytes as words.
#[repr(C, align(64))]
pub struct BlobCopy {
    checksum: AtomicU64,
    generation: AtomicU64,
    len: AtomicU64,
    _pad: [AtomicU64; 5],
    data: [AtomicU64; BLOB_WORDS],
}

/// The two copies.
#[repr(C, align(64))]
pub struct Blob {
    copies: [BlobCopy; 2],
}

const _: () = assert!(std::mem::size_of::<BlobCopy>() == 64 + BLOB_WORDS * 8);

/// The document does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes do not fit the segment's {} bytes for run-time definitions", BLOB_WORDS * 8)]
pub struct TooBig {
    pub len: usize,
}

fn sum(generation: u64, len: u64, words: &[u64]) -> u64 {
    let mut h: u64 = 0x6c62_272e_07bb_0142 ^ generation ^ len.rotate_left(32);
    for &w in words {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    }
    h | 1
}

impl BlobCopy {
    /// `(generation, bytes)` if this copy is valid.
    fn load(&self) -> Option<(u64, Vec<u8>)> {
        let checksum = self.checksum.load(Ordering::Acquire);
        if checksum == 0 {
            return None;
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        if len > (BLOB_WORDS * 8) as u64 {
            return None;
        }
        let n = (len as usize).div_ceil(8);
        let words: Vec<u64> = self.data[..n]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        if sum(generation, len, &words) != checksum {
            return None;
        }
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.truncate(len as usize);
        Some((generation, bytes))
    }
}

impl Blob {
    /// The newest valid document, if any.
    pub fn read(&self) -> Option<Vec<u8>> {
        self.newest().map(|(_, b)| b)
    }

    fn newest(&self) -> Option<(u64, Vec<u8>)> {
        let (a, b) = (self.copies[0].load(), self.copies[1].load());
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (x, None) | (None, x) => x,
        }
    }

    /// Publishes `bytes` as the next generation. Single writer only (the HAM owning the
    /// epoch, enforced by `SegmentWriter`).
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<u64, TooBig> {
        if bytes.len() > BLOB_WORDS * 8 {
            return Err(TooBig { len: bytes.len() });
        }
        let current = [0, 1]
            .iter()
            .filter_map(|&i| self.copies[i].load().map(|(g, _)| g))
            .max()
            .unwrap_or(0);
        let generation = current + 1;
        let copy = &self.copies[(generation % 2) as usize];
        copy.checksum.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        copy.generation.store(generation, Ordering::Relaxed);
        copy.len.store(bytes.len() as u64, Ordering::Relaxed);
        for (dst, &w) in copy.data.iter().zip(&words) {
            dst.store(w, Ordering::Relaxed);
        }
        copy.checksum.store(
            sum(generation, bytes.len() as u64, &words),
            Ordering::Release,
        );
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn zeroed() -> Box<Blob> {
        // SAFETY: Blob is atomics only; all-zero bytes are a valid (empty) value of it.
        unsafe { Box::<Blob>::new_zeroed().assume_init() }
    }

    #[test]
    fn the_newest_whole_document_wins_and_a_torn_one_is_ignored() {
        let b = zeroed();
        assert_eq!(b.read(), None);
        b.write(b"first").unwrap();
        assert_eq!(b.read().unwrap(), b"first");
        b.write(b"second, longer than a word").unwrap();
        assert_eq!(b.read().unwrap(), b"second, longer than a word");
        // A writer killed mid-write of the third: its copy's checksum is 0 or stale.
        let third = &b.copies[1];
        third.checksum.store(0, Ordering::Relaxed);
        third.data[0].store(42, Ordering::Relaxed);
        assert_eq!(b.read().unwrap(), b"second, longer than a word");
        third.checksum.store(12345, Ordering::Relaxed);
        assert_eq!(b.read().unwrap(), b"second, longer than a word");
        assert_eq!(
            b.write(&vec![0u8; BLOB_WORDS * 8 + 1]),
            Err(TooBig {
                len: BLOB_WORDS * 8 + 1
            })
        );
    }
}
