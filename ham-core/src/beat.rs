//! Heartbeat pages: one small shared-memory object per attachment, that only the attached
//! client and ham can write.
//!
//! A heartbeat in the group-writable client segment could be written by any member of the
//! client group: one member made another look hung (beats "from the future" count as no
//! beat) and, through its policy, got the device restarted. So each attachment gets its
//! own page: ham creates `/ham.<instance>.hb.<slot>` exclusively, mode 0600 under ham's
//! own user (no one else can open the name), maps it, and hands the client the open
//! descriptor over the control socket (`SCM_RIGHTS`). Only processes holding that
//! descriptor (the client, and whoever it passes it to) can map the page. A successor HAM
//! (takeover or warm start) opens the page by name, checking it is ham's own. A new
//! attachment of the same slot unlinks the old page first: a previous client still mapping
//! it beats into memory nobody reads.
//!
//! Layout (`#[repr(C)]`, versioned, checked on map): [`BeatPage`], in one page.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;
use rustix::shm;

use crate::segment::SegmentError;

/// `b"HAMBEAT\0"` read as a little-endian `u64`.
pub const BEAT_MAGIC: u64 = u64::from_le_bytes(*b"HAMBEAT\0");
/// Bumped on any change to [`BeatPage`].
/// 2: the beat is a flag ham swaps back, not a time (2026-11-26).
pub const BEAT_LAYOUT_VERSION: u32 = 2;
/// The page's size: one page on every Linux ham runs on.
pub const BEAT_PAGE_SIZE: usize = 4096;
/// Its mode: ham's user only (the client gets a descriptor, never the name).
pub const BEAT_MODE: u32 = 0o600;

/// The words of a heartbeat page.
#[repr(C)]
pub struct BeatPage {
    /// [`BEAT_MAGIC`], stored (Release) last by ham when it creates the page.
    pub magic: AtomicU64,
    /// [`BEAT_LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// The attached pid (written by ham; for display).
    pub pid: AtomicU32,
    /// Non-zero: the client beat since ham last looked. The client stores 1 (no clock
    /// read, no read-modify-write); ham swaps it back to 0 at each of its checks, which
    /// fall on multiples of the period, so a beat is known to the check that follows it.
    pub beaten: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<BeatPage>() == 24);
const _: () = assert!(std::mem::size_of::<BeatPage>() <= BEAT_PAGE_SIZE);

/// A mapped heartbeat page.
pub struct BeatMap {
    map: MmapRaw,
}

impl BeatMap {
    /// ham's side: replaces the page `name` (a page of ham's own is unlinked first; one
    /// that is not is refused) with a new one, exclusively, and returns it with a
    /// descriptor to hand to the client.
    pub fn create(name: &str, pid: u32) -> Result<(Self, OwnedFd), SegmentError> {
        let fd = crate::segment::create_owned(name, BEAT_MODE, BEAT_PAGE_SIZE as u64)?;
        let page = Self::map(&fd, name).inspect_err(|_| Self::unlink(name))?;
        let p = page.page();
        p.version.store(BEAT_LAYOUT_VERSION, Ordering::Relaxed);
        p.pid.store(pid, Ordering::Relaxed);
        p.beaten.store(0, Ordering::Relaxed);
        // Release: whoever sees the magic sees the rest.
        p.magic.store(BEAT_MAGIC, Ordering::Release);
        Ok((page, fd))
    }

    /// A successor's side: the page `name` a predecessor made, if it is ham's own.
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::open_with_fd(name).map(|(page, _)| page)
    }

    /// [`open`](Self::open), and the page's descriptor (ham keeps it to grow the page back
    /// if its client shrinks it).
    pub fn open_with_fd(name: &str) -> Result<(Self, OwnedFd), SegmentError> {
        let fd = crate::segment::open_owned(name, BEAT_MODE)?;
        let page = Self::map(&fd, name)?;
        page.validate(name)?;
        Ok((page, fd))
    }

    /// Where the mapping is, and how long.
    pub fn mapping(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }

    /// The client's side: the page behind a descriptor ham handed over.
    pub fn from_fd(fd: &OwnedFd) -> Result<Self, SegmentError> {
        let page = Self::map(fd, "(heartbeat page)")?;
        page.validate("(heartbeat page)")?;
        Ok(page)
    }

    /// Removes the name (mappings stay valid). Missing is not an error.
    pub fn unlink(name: &str) {
        let _ = shm::unlink(name);
    }

    fn map(fd: &impl AsFd, name: &str) -> Result<Self, SegmentError> {
        let (map, _) = crate::segment::map_whole(fd, name, BEAT_PAGE_SIZE)?;
        Ok(Self { map })
    }

    fn validate(&self, name: &str) -> Result<(), SegmentError> {
        let p = self.page();
        crate::segment::check_version(
            name,
            (p.magic.load(Ordering::Acquire), BEAT_MAGIC),
            (p.version.load(Ordering::Relaxed), BEAT_LAYOUT_VERSION),
        )
    }

    /// The page's words.
    pub fn page(&self) -> &BeatPage {
        // The mapping is BEAT_PAGE_SIZE bytes, page-aligned.
        crate::shm::view(&self.map, 0).expect("a heartbeat page holds its words")
    }

    /// "I am alive" (the client): one plain store, no clock read, no syscall.
    #[inline]
    pub fn beat(&self) {
        // Relaxed: the word carries no other data; ham's swap sees it or the next does.
        self.page().beaten.store(1, Ordering::Relaxed);
    }

    /// Asks the CPU for the beat word's line ahead of a [`take_beat`](Self::take_beat): a
    /// check of many clients then overlaps their pages' misses, which the swap (a locked
    /// instruction, waiting for its line before anything after it) took one at a time. A
    /// hint only: it never faults and changes nothing.
    #[inline]
    pub fn prefetch(&self) {
        crate::shm::prefetch(&self.page().beaten);
    }

    /// Whether the client beat since the last call (ham, at each check): the word is
    /// swapped back to 0 atomically, so a beat that lands meanwhile is seen next time.
    pub fn take_beat(&self) -> bool {
        self.page().beaten.swap(0, Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_shared_through_its_descriptor_and_reopened_by_name() {
        let name = format!("/ham-core-test-beat-{}", std::process::id());
        let (ham, fd) = BeatMap::create(&name, 7).unwrap();
        let client = BeatMap::from_fd(&fd).unwrap();
        assert!(!ham.take_beat(), "a new page has no beat");
        client.beat();
        client.beat();
        assert!(ham.take_beat());
        assert!(!ham.take_beat(), "taking a beat clears it");
        client.beat();
        let successor = BeatMap::open(&name).unwrap();
        assert!(
            successor.take_beat(),
            "a successor sees a beat its predecessor did not take"
        );
        assert_eq!(successor.page().pid.load(Ordering::Relaxed), 7);
        // A new attachment of the slot: the old client's page is no longer ham's.
        let (fresh, _) = BeatMap::create(&name, 8).unwrap();
        client.beat();
        assert!(!fresh.take_beat());
        BeatMap::unlink(&name);
        assert!(matches!(
            BeatMap::open(&name),
            Err(SegmentError::NotFound { .. })
        ));
    }
}
