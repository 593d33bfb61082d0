//! The shared-memory contract, in one place: which types may live in a mapping that other
//! processes write at any moment ([`Shared`]), and the one function that turns a mapping's
//! bytes into references to them ([`view`], [`view_slice`]), checking bounds and alignment.
//! Every other module reaches shared memory through these, with no `unsafe` of its own;
//! [`make_writable`] adds write permission to a whole mapping; [`prefetch`] asks the CPU
//! for a shared word's line ahead of time.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::MmapRaw;

/// Asks the CPU to bring `word`'s cache line in ahead of a locked instruction on it: such
/// an instruction waits for its line before anything after it starts, so a loop of them over
/// many pages took their misses (and the pages' TLB misses) one at a time; asked for ahead,
/// they overlap. A hint: nothing is read into the program or written. A no-op where there is
/// no such hint. (A prefetch for writing, `PREFETCHW`, is not in the baseline x86_64 target,
/// and Rust does not yet let it be enabled for one function.)
#[inline]
pub fn prefetch<T: Shared>(word: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p: *const T = word;
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (the target's
        // baseline). A prefetch never faults and has no effect the program can see but
        // timing, whatever the address; this one is a live reference's anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = word;
}

/// A type that may be read and written in place in a shared mapping.
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose fields are all atomics (or arrays of them, or
/// other `Shared` types). Then every bit pattern is a valid value (another process, or a
/// torn write before a crash, can leave any), all mutation through `&self` is interior (the
/// atomics' `UnsafeCell`s), and padding, where alignment adds some, is never read.
pub unsafe trait Shared {}

// SAFETY: one atomic word.
unsafe impl Shared for AtomicU64 {}
// SAFETY: one atomic word.
unsafe impl Shared for AtomicU32 {}
// SAFETY: repr(C), all fields atomics (see `layout::Header`).
unsafe impl Shared for crate::layout::Header {}
// SAFETY: repr(C): two `Copy<N>`, each a checksum and N words, all `AtomicU64`.
unsafe impl<const N: usize> Shared for crate::layout::Slot<N> {}
// SAFETY: repr(C): two copies of checksum, generation, length, padding words and data
// words, all `AtomicU64`.
unsafe impl Shared for crate::blob::Blob {}
// SAFETY: repr(C), all fields `AtomicU64` / `AtomicU32` (see `client::ClientHeader`).
#[cfg(not(loom))]
unsafe impl Shared for crate::client::ClientHeader {}
// SAFETY: repr(C): a beat, a pid, padding words, all atomics.
#[cfg(not(loom))]
unsafe impl Shared for crate::client::HeartbeatSlot {}
// SAFETY: repr(C): a sequence word and SLOT_WORDS words, all `AtomicU64`.
#[cfg(not(loom))]
unsafe impl Shared for crate::client::RingSlot {}
// SAFETY: repr(C), all fields `AtomicU64` / `AtomicU32` (or arrays of them), no padding
// (192 bytes, asserted in `lane`).
#[cfg(not(loom))]
unsafe impl Shared for crate::lane::LaneHeader {}
// SAFETY: repr(C): a sequence word and 15 words, all `AtomicU64` (128 bytes, asserted).
#[cfg(not(loom))]
unsafe impl Shared for crate::lane::LaneSlot {}
// SAFETY: repr(C): magic, version, pid, beat, all atomics.
unsafe impl Shared for crate::beat::BeatPage {}
// SAFETY: repr(C), all fields `AtomicU64` / `AtomicU32` (or arrays of them), no padding
// (a 128-byte header, asserted in `pss`).
unsafe impl Shared for crate::pss::PssHeader {}
// SAFETY: repr(C), all fields `AtomicU64` / `AtomicU32` (or arrays of them), no padding
// (a 128-byte header, asserted in `mts`).
unsafe impl Shared for crate::mts::MtsHeader {}

/// Adds write permission to the whole of `map` (mapped read-only through a descriptor
/// open for writing; EACCES otherwise).
pub fn make_writable(map: &MmapRaw) -> std::io::Result<()> {
    // SAFETY: the range is exactly the mapping `map` owns (its start and length); adding
    // write permission moves nothing and invalidates no reference into it (every view of
    // it is of `Shared` types, written only through atomics).
    unsafe {
        rustix::mm::mprotect(
            map.as_mut_ptr().cast(),
            map.len(),
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
        )
    }
    .map_err(Into::into)
}

/// Maps the pages of `map`'s first `len` bytes now (`MADV_POPULATE_READ`, Linux 5.14),
/// so that reading them later takes no page fault. Only a hint: an older kernel refuses it.
pub fn populate_read(map: &MmapRaw, len: usize) -> std::io::Result<()> {
    let len = len.min(map.len());
    // SAFETY: the range lies inside the mapping `map` owns; populating reads pages in and
    // changes no memory.
    unsafe {
        rustix::mm::madvise(
            map.as_mut_ptr().cast(),
            len,
            rustix::mm::Advice::LinuxPopulateRead,
        )
    }
    .map_err(Into::into)
}

/// `count` values of `T` at byte `offset` of `map`, if they lie inside it and are aligned.
/// The references live as long as the borrow of `map` (which owns the mapping).
pub fn view_slice<T: Shared>(map: &MmapRaw, offset: usize, count: usize) -> Option<&[T]> {
    let size = std::mem::size_of::<T>().checked_mul(count)?;
    if offset.checked_add(size)? > map.len() {
        return None;
    }
    let ptr = map.as_ptr().wrapping_add(offset);
    if (ptr as usize) % std::mem::align_of::<T>() != 0 {
        return None;
    }
    // SAFETY: `ptr .. ptr + size` lies inside the mapping `map` owns (checked above), which
    // stays mapped while `map` is borrowed; it is aligned for `T` (checked). `T: Shared`:
    // any bytes there are a valid `T`, and writes by other processes are interior mutation
    // through atomics, so shared references to them are sound.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), count) })
}

/// The `T` at byte `offset` of `map`, if it lies inside it and is aligned.
pub fn view<T: Shared>(map: &MmapRaw, offset: usize) -> Option<&T> {
    view_slice(map, offset, 1).map(|s| &s[0])
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn map(len: usize) -> MmapRaw {
        memmap2::MmapOptions::new()
            .len(len)
            .map_anon()
            .expect("an anonymous mapping")
            .into()
    }

    #[test]
    fn a_view_is_refused_out_of_bounds_or_misaligned() {
        let m = map(4096);
        assert!(view::<AtomicU64>(&m, 0).is_some());
        assert!(view::<AtomicU64>(&m, 4088).is_some());
        assert!(view::<AtomicU64>(&m, 4089).is_none(), "past the end");
        assert!(view::<AtomicU64>(&m, 4).is_none(), "misaligned");
        assert!(view_slice::<AtomicU64>(&m, 0, 512).is_some());
        assert!(
            view_slice::<AtomicU64>(&m, 8, 512).is_none(),
            "one word too many"
        );
        assert!(
            view_slice::<AtomicU64>(&m, 0, usize::MAX).is_none(),
            "overflow"
        );
        assert!(
            view::<crate::client::RingSlot>(&m, 64).is_none(),
            "128-aligned"
        );
    }

    #[test]
    fn views_of_one_mapping_see_each_others_writes() {
        let m = map(4096);
        let words = view_slice::<AtomicU64>(&m, 0, 512).unwrap();
        words[3].store(42, Ordering::Release);
        assert_eq!(
            view::<AtomicU64>(&m, 24).unwrap().load(Ordering::Acquire),
            42
        );
    }
}
