//! A guest's memory made of host frames, and shadow-table frames from the
//! frame allocator: the two kinds of memory the decisions in [`host`] ask
//! for, given hardware.

use crate::memory;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use host::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use host::guest::GuestRam;
use host::paging::{GuestMemory, OutsideGuestMemory, ShadowFrames, TableIndex};
use switcher::GuestRegs;

/// A guest's memory: one host frame per guest page, not necessarily
/// contiguous, reached through the direct map.
pub struct FrameGuestMemory {
    frames: Vec<HostPhysAddr>,
    /// The active vCPU's register page: not guest memory (the guest cannot
    /// name it); the switcher maps it into the slot while the vCPU runs.
    registers: HostPhysAddr,
    /// Every vCPU's register page, by vCPU number.
    vcpu_registers: Vec<HostPhysAddr>,
    /// The frame of the active vCPU's shared page (guest memory).
    shared_page: HostPhysAddr,
}

impl FrameGuestMemory {
    /// Takes `bytes` of host memory (zeroed) for a guest.
    pub fn new(bytes: u64) -> Option<Self> {
        let pages = bytes / PAGE_SIZE;
        let mut frames = Vec::with_capacity(pages as usize + 1);
        for _ in 0..=pages {
            match memory::alloc_frame() {
                Some(frame) => {
                    zero_frame(frame);
                    frames.push(frame);
                }
                None => {
                    frames.into_iter().for_each(memory::free_frame);
                    return None;
                }
            }
        }
        let registers = frames.pop()?;
        // Until the guest names its vCPU 0's page (`Guest::new`), any page
        // of its own will do.
        let shared_page = *frames.first()?;
        Some(Self {
            frames,
            registers,
            vcpu_registers: alloc::vec![registers],
            shared_page,
        })
    }

    /// The frame of vCPU `vcpu`'s register page.
    pub fn register_page(&self, vcpu: usize) -> Option<HostPhysAddr> {
        self.vcpu_registers.get(vcpu).copied()
    }

    /// Gives the frames back.
    pub fn release(self) {
        self.frames.into_iter().for_each(memory::free_frame);
        self.vcpu_registers.into_iter().for_each(memory::free_frame);
    }

    fn registers_ptr(&self) -> *mut GuestRegs {
        memory::phys_to_virt(self.registers)
            .wrapping_add(switcher::REGS_OFFSET as usize)
            .cast()
    }

    /// The host address of guest byte `gpa`, if `len` bytes from it stay
    /// inside one page of guest memory.
    fn host_ptr(&self, gpa: GuestPhysAddr, len: usize) -> Result<*mut u8, OutsideGuestMemory> {
        let page = usize::try_from(gpa.frame_number()).map_err(|_| OutsideGuestMemory(gpa))?;
        let frame = self.frames.get(page).ok_or(OutsideGuestMemory(gpa))?;
        if gpa.page_offset() as usize + len > PAGE_SIZE as usize {
            return Err(OutsideGuestMemory(gpa));
        }
        Ok(memory::phys_to_virt(*frame).wrapping_add(gpa.page_offset() as usize))
    }

    fn word(&self, gpa: GuestPhysAddr) -> Result<&AtomicU64, OutsideGuestMemory> {
        if !gpa.as_u64().is_multiple_of(8) {
            return Err(OutsideGuestMemory(gpa));
        }
        let ptr = self.host_ptr(gpa, 8)?;
        // SAFETY: `host_ptr` checked that the 8 aligned bytes are inside a
        // frame of this guest's memory, which the direct map reaches and
        // which lives as long as `self`. The guest may write the word
        // concurrently (on another CPU), hence the atomic.
        Ok(unsafe { AtomicU64::from_ptr(ptr.cast()) })
    }
}

impl FrameGuestMemory {
    /// Word `offset` of the selected shared page, kept inside it.
    fn shared_word(&self, offset: u64) -> &AtomicU64 {
        let ptr = memory::phys_to_virt(self.shared_page).wrapping_add((offset & 0xff8) as usize);
        // SAFETY: `shared_page` is a frame of this guest's memory (set in
        // `new` or checked in `select_shared_page`), alive as long as
        // `self`; the offset is masked to an aligned word inside it. The
        // guest may write the word meanwhile, hence the atomic.
        unsafe { AtomicU64::from_ptr(ptr.cast()) }
    }
}

fn zero_frame(frame: HostPhysAddr) {
    // SAFETY: a frame just taken from the allocator, ours alone.
    unsafe { memory::phys_to_virt(frame).write_bytes(0, PAGE_SIZE as usize) };
}

impl GuestMemory for FrameGuestMemory {
    fn size(&self) -> u64 {
        self.frames.len() as u64 * PAGE_SIZE
    }

    fn host_frame(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.frames
            .get(usize::try_from(gpa.frame_number()).ok()?)
            .copied()
    }

    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, OutsideGuestMemory> {
        Ok(self.word(gpa)?.load(Ordering::Relaxed))
    }

    fn write_u64(&mut self, gpa: GuestPhysAddr, value: u64) -> Result<(), OutsideGuestMemory> {
        self.word(gpa)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn zero_page(&mut self, page: GuestPhysAddr) -> Result<(), OutsideGuestMemory> {
        if !page.is_page_aligned() {
            return Err(OutsideGuestMemory(page));
        }
        let ptr = self.host_ptr(page, PAGE_SIZE as usize)?;
        // SAFETY: `host_ptr` checked that the whole page is a frame of this
        // guest's memory, reached through the direct map; the host holds no
        // reference into guest memory, whose bytes are plain data to it.
        unsafe { ptr.write_bytes(0, PAGE_SIZE as usize) };
        Ok(())
    }

    fn compare_exchange_u64(
        &mut self,
        gpa: GuestPhysAddr,
        current: u64,
        new: u64,
    ) -> Result<bool, OutsideGuestMemory> {
        let word = self.word(gpa)?;
        Ok(word
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok())
    }

    /// One check for the lot when the words lie in one page (a ring slot
    /// always does), not one per word.
    fn read_u64s(&self, gpa: GuestPhysAddr, words: &mut [u64]) -> Result<(), OutsideGuestMemory> {
        let in_one_page = gpa.as_u64().is_multiple_of(8)
            && (words.len() as u64).saturating_mul(8) <= PAGE_SIZE - gpa.page_offset();
        if !in_one_page {
            for (i, word) in (0u64..).zip(words.iter_mut()) {
                let at = gpa.checked_add(8 * i).ok_or(OutsideGuestMemory(gpa))?;
                *word = self.read_u64(at)?;
            }
            return Ok(());
        }
        let src = self.host_ptr(gpa, 8 * words.len())?.cast::<u64>();
        for (i, word) in words.iter_mut().enumerate() {
            // SAFETY: `host_ptr` checked that the words lie in one frame of
            // this guest's memory, which the direct map reaches and which
            // lives as long as `self`; `gpa`, and so each word, is aligned
            // to 8. The guest may write them meanwhile, hence the atomic
            // loads.
            *word = unsafe { AtomicU64::from_ptr(src.add(i)) }.load(Ordering::Relaxed);
        }
        Ok(())
    }
}

impl GuestRam for FrameGuestMemory {
    fn registers(&self) -> &GuestRegs {
        // SAFETY: the register frame is this guest's alone (taken in `new`
        // or `add_vcpu`, freed in `release`), reached through the direct
        // map; `REGS_OFFSET` leaves exactly one aligned `GuestRegs` at the
        // page's top. A switcher writes it only inside `CpuSwitcher::run`
        // of its own vCPU, which takes no reference to it, and the selected
        // vCPU is one whose exit the caller handles (it holds the guest's
        // lock, `super::vcpus`): not in the guest, so no Rust reference is
        // live across a write.
        unsafe { &*self.registers_ptr() }
    }

    fn registers_mut(&mut self) -> &mut GuestRegs {
        // SAFETY: as for `registers`; `&mut self` makes this the only one.
        unsafe { &mut *self.registers_ptr() }
    }

    fn add_vcpu(&mut self) -> bool {
        let Some(frame) = memory::alloc_frame() else {
            return false;
        };
        zero_frame(frame);
        if self.vcpu_registers.try_reserve(1).is_err() {
            memory::free_frame(frame);
            return false;
        }
        self.vcpu_registers.push(frame);
        true
    }

    fn select_shared_page(&mut self, gpa: GuestPhysAddr) -> bool {
        match self.host_frame(gpa) {
            Some(frame) if gpa.is_page_aligned() => {
                self.shared_page = frame;
                true
            }
            _ => false,
        }
    }

    fn shared_u64(&self, offset: u64) -> u64 {
        self.shared_word(offset).load(Ordering::Relaxed)
    }

    fn set_shared_u64(&mut self, offset: u64, value: u64) {
        self.shared_word(offset).store(value, Ordering::Relaxed);
    }

    fn select_vcpu(&mut self, vcpu: usize) {
        if let Some(&page) = self.vcpu_registers.get(vcpu) {
            self.registers = page;
        }
    }

    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutsideGuestMemory> {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa
                .checked_add(done as u64)
                .ok_or(OutsideGuestMemory(gpa))?;
            let n = (buf.len() - done).min((PAGE_SIZE - at.page_offset()) as usize);
            let src = self.host_ptr(at, n)?;
            // SAFETY: `host_ptr` checked the n bytes lie in one guest frame.
            unsafe { core::ptr::copy_nonoverlapping(src, buf[done..].as_mut_ptr(), n) };
            done += n;
        }
        Ok(())
    }

    fn write_bytes(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), OutsideGuestMemory> {
        let mut done = 0;
        while done < data.len() {
            let at = gpa
                .checked_add(done as u64)
                .ok_or(OutsideGuestMemory(gpa))?;
            let n = (data.len() - done).min((PAGE_SIZE - at.page_offset()) as usize);
            let dst = self.host_ptr(at, n)?;
            // SAFETY: as for `read_bytes`.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n) };
            done += n;
        }
        Ok(())
    }
}

/// Shadow page-table frames, straight from the frame allocator.
pub struct HostFrames;

impl ShadowFrames for HostFrames {
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr> {
        let frame = memory::alloc_frame()?;
        zero_frame(frame);
        Some(frame)
    }

    fn free(&mut self, frame: HostPhysAddr) {
        memory::free_frame(frame);
    }

    fn read_entry(&self, table: HostPhysAddr, index: TableIndex) -> u64 {
        // SAFETY: `table` is a shadow-table frame we handed out (the trait's
        // contract), and `index` < 512.
        unsafe {
            memory::phys_to_virt(table)
                .cast::<u64>()
                .add(index.as_usize())
                .read_volatile()
        }
    }

    fn write_entry(&mut self, table: HostPhysAddr, index: TableIndex, value: u64) {
        // SAFETY: as for `read_entry`.
        unsafe {
            memory::phys_to_virt(table)
                .cast::<u64>()
                .add(index.as_usize())
                .write_volatile(value)
        }
    }
}
