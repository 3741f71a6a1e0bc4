//! The physical frame allocator's bookkeeping.
//!
//! Everything the host hands out of RAM (shadow page tables, guest memory,
//! heap, stacks) is a 4 KiB frame from here. The allocator is a pair of
//! bitmaps with one bit per frame below the highest usable address:
//!
//! - `usable`: the frame is RAM the boot memory map gave us (set once, at
//!   boot). Freeing a frame that was never usable is refused, so a stray
//!   address cannot smuggle MMIO or firmware memory into the free pool.
//! - `free`: the frame may be handed out now. Freeing a frame whose bit is
//!   already set is a double free, also refused.
//!
//! The bitmaps live in memory the kernel finds at boot (see
//! [`FrameBitmap::storage_words`]); this module only does the bookkeeping, so
//! it runs unchanged in `cargo test`. Counts are kept exactly: after a guest's
//! life, `stats()` must read what it read before, and the tests in `tests/`
//! check that it does.

use crate::addr::{HostPhysAddr, PAGE_SIZE};
use core::fmt;

/// Free and used frame counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameStats {
    /// Frames of RAM under management.
    pub usable: u64,
    /// Frames that can be allocated now.
    pub free: u64,
}

impl FrameStats {
    /// Frames handed out (including those reserved at boot).
    pub const fn used(&self) -> u64 {
        self.usable - self.free
    }
}

impl fmt::Display for FrameStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames usable ({} MiB), {} free, {} used",
            self.usable,
            (self.usable * PAGE_SIZE) >> 20,
            self.free,
            self.used()
        )
    }
}

/// Why a frame could not be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not the start of a frame.
    Misaligned(HostPhysAddr),
    /// The frame is not RAM this allocator manages.
    NotUsable(HostPhysAddr),
    /// The frame is already free.
    DoubleFree(HostPhysAddr),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned(a) => write!(f, "freeing {a}: not frame-aligned"),
            Self::NotUsable(a) => write!(f, "freeing {a}: not managed RAM"),
            Self::DoubleFree(a) => write!(f, "freeing {a}: already free"),
        }
    }
}

/// One bit per frame, two bitmaps: see the module docs.
pub struct FrameBitmap<'a> {
    usable: &'a mut [u64],
    free: &'a mut [u64],
    frames: u64,
    stats: FrameStats,
    /// Where the next search starts: allocation is next-fit, so a run of
    /// allocations walks forward instead of rescanning the low, full words.
    cursor: usize,
}

impl<'a> FrameBitmap<'a> {
    /// How many `u64` words of storage an allocator for RAM below `limit` needs.
    pub const fn storage_words(limit: HostPhysAddr) -> usize {
        let frames = limit.as_u64().div_ceil(PAGE_SIZE);
        2 * frames.div_ceil(64) as usize
    }

    /// Makes an allocator for frames below `limit` with nothing usable yet.
    /// `storage` must hold at least [`Self::storage_words`] words; extra words
    /// are ignored.
    ///
    /// # Panics
    ///
    /// If `storage` is too small: that is a bug in the kernel's boot code,
    /// not something a guest can cause.
    pub fn new(storage: &'a mut [u64], limit: HostPhysAddr) -> Self {
        let words = Self::storage_words(limit);
        assert!(storage.len() >= words, "frame bitmap storage too small");
        let (usable, rest) = storage[..words].split_at_mut(words / 2);
        usable.fill(0);
        rest.fill(0);
        Self {
            usable,
            free: rest,
            frames: limit.as_u64().div_ceil(PAGE_SIZE),
            stats: FrameStats::default(),
            cursor: 0,
        }
    }

    /// Adds the RAM in `[start, end)` to the pool, shrunk inward to whole
    /// frames. Frames already added are not counted twice.
    pub fn add_free_region(&mut self, start: HostPhysAddr, end: HostPhysAddr) {
        for pfn in Self::whole_frames(start, end, self.frames) {
            let (w, b) = split(pfn);
            if self.usable[w] & b == 0 {
                self.usable[w] |= b;
                self.free[w] |= b;
                self.stats.usable += 1;
                self.stats.free += 1;
            }
        }
    }

    /// Marks the frames touching `[start, end)` as in use (the kernel image,
    /// boot data, this bitmap's own storage). Frames that are not usable RAM
    /// are skipped.
    pub fn reserve(&mut self, start: HostPhysAddr, end: HostPhysAddr) {
        let first = start.frame_number();
        let last = end.as_u64().div_ceil(PAGE_SIZE).min(self.frames);
        for pfn in first..last {
            let (w, b) = split(pfn);
            if self.free[w] & b != 0 {
                self.free[w] &= !b;
                self.stats.free -= 1;
            }
        }
    }

    /// Takes one free frame, or `None` when RAM is exhausted.
    pub fn allocate(&mut self) -> Option<HostPhysAddr> {
        let words = self.free.len();
        for i in 0..words {
            let w = (self.cursor + i) % words;
            let bits = self.free[w];
            if bits != 0 {
                let bit = bits.trailing_zeros();
                self.free[w] &= !(1u64 << bit);
                self.stats.free -= 1;
                self.cursor = w;
                return HostPhysAddr::from_frame_number(w as u64 * 64 + u64::from(bit));
            }
        }
        None
    }

    /// Takes `count` physically contiguous free frames (for the heap and
    /// other boot-time needs), lowest first; `None` if no run is long enough.
    pub fn allocate_contiguous(&mut self, count: u64) -> Option<HostPhysAddr> {
        if count == 0 {
            return None;
        }
        let mut run_start = 0;
        let mut run_len = 0;
        for pfn in 0..self.frames {
            if self.is_free(pfn) {
                if run_len == 0 {
                    run_start = pfn;
                }
                run_len += 1;
                if run_len == count {
                    for p in run_start..run_start + count {
                        let (w, b) = split(p);
                        self.free[w] &= !b;
                    }
                    self.stats.free -= count;
                    return HostPhysAddr::from_frame_number(run_start);
                }
            } else {
                run_len = 0;
            }
        }
        None
    }

    /// Returns a frame to the pool.
    pub fn free(&mut self, frame: HostPhysAddr) -> Result<(), FreeError> {
        if !frame.is_page_aligned() {
            return Err(FreeError::Misaligned(frame));
        }
        let pfn = frame.frame_number();
        if pfn >= self.frames {
            return Err(FreeError::NotUsable(frame));
        }
        let (w, b) = split(pfn);
        if self.usable[w] & b == 0 {
            return Err(FreeError::NotUsable(frame));
        }
        if self.free[w] & b != 0 {
            return Err(FreeError::DoubleFree(frame));
        }
        self.free[w] |= b;
        self.stats.free += 1;
        Ok(())
    }

    /// The current counts.
    pub fn stats(&self) -> FrameStats {
        self.stats
    }

    fn is_free(&self, pfn: u64) -> bool {
        let (w, b) = split(pfn);
        self.free[w] & b != 0
    }

    /// The frame numbers wholly inside `[start, end)`, clipped to `frames`.
    fn whole_frames(start: HostPhysAddr, end: HostPhysAddr, frames: u64) -> core::ops::Range<u64> {
        let first = start.as_u64().div_ceil(PAGE_SIZE);
        let last = (end.as_u64() / PAGE_SIZE).min(frames);
        first..last.max(first)
    }
}

/// The word index and bit mask of frame `pfn`.
fn split(pfn: u64) -> (usize, u64) {
    ((pfn / 64) as usize, 1u64 << (pfn % 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec;

    fn hpa(x: u64) -> HostPhysAddr {
        HostPhysAddr::new(x)
    }

    #[test]
    fn regions_are_shrunk_to_whole_frames_and_counted_once() {
        let limit = hpa(1 << 20);
        let mut storage = vec![0; FrameBitmap::storage_words(limit)];
        let mut frames = FrameBitmap::new(&mut storage, limit);
        frames.add_free_region(hpa(0x1800), hpa(0x5800)); // frames 2, 3, 4
        frames.add_free_region(hpa(0x3000), hpa(0x6000)); // adds only 5
        assert_eq!(frames.stats(), FrameStats { usable: 4, free: 4 });
        frames.reserve(hpa(0x2000), hpa(0x3001)); // frames 2 and 3
        assert_eq!(frames.stats().used(), 2);
        let got: BTreeSet<_> = core::iter::from_fn(|| frames.allocate()).collect();
        assert_eq!(got, [hpa(0x4000), hpa(0x5000)].into());
    }

    #[test]
    fn bad_frees_are_refused_with_the_reason() {
        let limit = hpa(1 << 20);
        let mut storage = vec![0; FrameBitmap::storage_words(limit)];
        let mut frames = FrameBitmap::new(&mut storage, limit);
        frames.add_free_region(hpa(0x10000), hpa(0x20000));
        let f = frames.allocate().unwrap();
        assert_eq!(
            frames.free(hpa(f.as_u64() + 8)),
            Err(FreeError::Misaligned(hpa(f.as_u64() + 8)))
        );
        assert_eq!(
            frames.free(hpa(0x1000)),
            Err(FreeError::NotUsable(hpa(0x1000)))
        );
        assert_eq!(
            frames.free(hpa(1 << 30)),
            Err(FreeError::NotUsable(hpa(1 << 30)))
        );
        assert_eq!(frames.free(f), Ok(()));
        assert_eq!(frames.free(f), Err(FreeError::DoubleFree(f)));
    }

    #[test]
    fn contiguous_runs_skip_holes() {
        let limit = hpa(1 << 20);
        let mut storage = vec![0; FrameBitmap::storage_words(limit)];
        let mut frames = FrameBitmap::new(&mut storage, limit);
        frames.add_free_region(hpa(0x1000), hpa(0x3000)); // 2 frames
        frames.add_free_region(hpa(0x8000), hpa(0x10000)); // 8 frames
        assert_eq!(frames.allocate_contiguous(4), Some(hpa(0x8000)));
        assert_eq!(frames.allocate_contiguous(5), None);
        assert_eq!(frames.stats().free, 6);
    }

    proptest! {
        /// Any interleaving of allocations and frees hands out each frame at
        /// most once, and the counts come back to the start when all is freed.
        #[test]
        fn allocations_are_unique_and_counts_balance(ops in prop::collection::vec(any::<(bool, u8)>(), 1..400)) {
            let limit = hpa(64 * 4096 * 3);
            let mut storage = vec![0; FrameBitmap::storage_words(limit)];
            let mut frames = FrameBitmap::new(&mut storage, limit);
            frames.add_free_region(hpa(4096), hpa(100 * 4096));
            let start = frames.stats();
            let mut held = std::vec::Vec::new();
            for (alloc, pick) in ops {
                if alloc || held.is_empty() {
                    if let Some(f) = frames.allocate() {
                        prop_assert!(!held.contains(&f));
                        prop_assert!(f.as_u64() >= 4096 && f.as_u64() < 100 * 4096);
                        held.push(f);
                    } else {
                        prop_assert_eq!(held.len() as u64, start.free);
                    }
                } else {
                    let f = held.swap_remove(pick as usize % held.len());
                    prop_assert_eq!(frames.free(f), Ok(()));
                }
                prop_assert_eq!(frames.stats().free, start.free - held.len() as u64);
            }
            for f in held.drain(..) {
                prop_assert_eq!(frames.free(f), Ok(()));
            }
            prop_assert_eq!(frames.stats(), start);
        }
    }
}
