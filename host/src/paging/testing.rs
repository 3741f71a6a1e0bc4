//! Fakes of the two hardware seams, for tests on Linux.
//!
//! [`FakeGuestMemory`] is a sparse guest memory whose pages are backed by
//! host frames in a deliberately scrambled order (guest page `n` lives in
//! host frame `GUEST_BACKING_BASE + (n ^ 3)`), so code that confuses
//! guest-physical with host-physical addresses, or assumes a large guest
//! page is host-contiguous, is caught. [`FakeFrames`] hands out shadow
//! frames from a separate range and panics on any misuse (double free, use
//! of a frame it does not own): those are host bugs.

use super::entry::TableIndex;
use super::hw::{GuestMemory, OutsideGuestMemory, ShadowFrames};
use crate::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use std::boxed::Box;
use std::collections::HashMap;
use std::vec::Vec;

/// The first host frame number backing guest memory.
pub const GUEST_BACKING_BASE: u64 = 0x40_0000;
/// The first host frame number of shadow frames.
pub const SHADOW_FRAMES_BASE: u64 = 0x100_0000;

/// A sparse fake guest memory; untouched pages read as zero.
pub struct FakeGuestMemory {
    size: u64,
    pages: HashMap<u64, Box<[u64; 512]>>,
    /// The register page's contents (the active vCPU's registers).
    registers: switcher::GuestRegs,
    /// Every vCPU's registers but the active one's, by vCPU number.
    other_registers: Vec<switcher::GuestRegs>,
    /// The vCPU whose registers are in `registers`.
    active: usize,
    /// The selected shared page.
    shared_page: GuestPhysAddr,
}

impl FakeGuestMemory {
    /// A guest memory of `size` bytes (a multiple of 16 KiB, so the
    /// scrambled backing stays a permutation).
    pub fn new(size: u64) -> Self {
        assert!(size.is_multiple_of(4 * PAGE_SIZE));
        Self {
            size,
            pages: HashMap::new(),
            registers: switcher::GuestRegs::default(),
            other_registers: Vec::new(),
            active: 0,
            shared_page: GuestPhysAddr::new(0),
        }
    }

    /// Reads a word, panicking outside memory (for test set-up).
    pub fn get(&self, gpa: u64) -> u64 {
        self.read_u64(GuestPhysAddr::new(gpa)).unwrap()
    }

    /// Writes a word, panicking outside memory (for test set-up).
    pub fn set(&mut self, gpa: u64, value: u64) {
        self.write_u64(GuestPhysAddr::new(gpa), value).unwrap()
    }

    /// The host frame backing guest page number `gfn`.
    pub fn backing(gfn: u64) -> HostPhysAddr {
        HostPhysAddr::from_frame_number(GUEST_BACKING_BASE + (gfn ^ 3)).unwrap()
    }

    fn check(&self, gpa: GuestPhysAddr) -> Result<(u64, usize), OutsideGuestMemory> {
        let raw = gpa.as_u64();
        if !raw.is_multiple_of(8) || raw >= self.size {
            return Err(OutsideGuestMemory(gpa));
        }
        Ok((raw / PAGE_SIZE, (raw % PAGE_SIZE / 8) as usize))
    }
}

impl GuestMemory for FakeGuestMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn host_frame(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        (gpa.as_u64() < self.size).then(|| Self::backing(gpa.frame_number()))
    }

    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, OutsideGuestMemory> {
        let (page, word) = self.check(gpa)?;
        Ok(self.pages.get(&page).map_or(0, |p| p[word]))
    }

    fn write_u64(&mut self, gpa: GuestPhysAddr, value: u64) -> Result<(), OutsideGuestMemory> {
        let (page, word) = self.check(gpa)?;
        self.pages.entry(page).or_insert_with(|| Box::new([0; 512]))[word] = value;
        Ok(())
    }

    fn zero_page(&mut self, page: GuestPhysAddr) -> Result<(), OutsideGuestMemory> {
        if !page.is_page_aligned() {
            return Err(OutsideGuestMemory(page));
        }
        let (number, _) = self.check(page)?;
        self.pages.remove(&number);
        Ok(())
    }

    fn compare_exchange_u64(
        &mut self,
        gpa: GuestPhysAddr,
        current: u64,
        new: u64,
    ) -> Result<bool, OutsideGuestMemory> {
        if self.read_u64(gpa)? != current {
            return Ok(false);
        }
        self.write_u64(gpa, new)?;
        Ok(true)
    }
}

/// Bytes, for the run loop and the loader: each byte is read or written
/// through its aligned word, so the two views of the fake always agree.
impl crate::guest::GuestRam for FakeGuestMemory {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutsideGuestMemory> {
        let start = self.check_bytes(gpa, buf.len())?;
        for (at, byte) in (start..).zip(buf.iter_mut()) {
            let word = self.read_u64(GuestPhysAddr::new(at & !7))?;
            *byte = word.to_le_bytes()[(at & 7) as usize];
        }
        Ok(())
    }

    fn write_bytes(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), OutsideGuestMemory> {
        let start = self.check_bytes(gpa, data.len())?;
        for (at, &byte) in (start..).zip(data) {
            let word_gpa = GuestPhysAddr::new(at & !7);
            let mut bytes = self.read_u64(word_gpa)?.to_le_bytes();
            bytes[(at & 7) as usize] = byte;
            self.write_u64(word_gpa, u64::from_le_bytes(bytes))?;
        }
        Ok(())
    }

    fn registers(&self) -> &switcher::GuestRegs {
        &self.registers
    }

    fn registers_mut(&mut self) -> &mut switcher::GuestRegs {
        &mut self.registers
    }

    fn add_vcpu(&mut self) -> bool {
        if self.other_registers.is_empty() {
            self.other_registers.push(switcher::GuestRegs::default());
        }
        self.other_registers.push(switcher::GuestRegs::default());
        true
    }

    fn select_shared_page(&mut self, gpa: GuestPhysAddr) -> bool {
        let inside = gpa.is_page_aligned() && gpa.as_u64() < self.size;
        if inside {
            self.shared_page = gpa;
        }
        inside
    }

    fn shared_u64(&self, offset: u64) -> u64 {
        let at = self.shared_page.as_u64() + (offset & 0xff8);
        self.read_u64(GuestPhysAddr::new(at)).unwrap_or(0)
    }

    fn set_shared_u64(&mut self, offset: u64, value: u64) {
        let at = self.shared_page.as_u64() + (offset & 0xff8);
        let _ = self.write_u64(GuestPhysAddr::new(at), value);
    }

    fn select_vcpu(&mut self, vcpu: usize) {
        if vcpu == self.active || vcpu >= self.other_registers.len() {
            return;
        }
        core::mem::swap(&mut self.registers, &mut self.other_registers[self.active]);
        core::mem::swap(&mut self.registers, &mut self.other_registers[vcpu]);
        self.active = vcpu;
    }
}

impl FakeGuestMemory {
    /// Checks that `len` bytes at `gpa` lie inside memory (before any is
    /// touched, so a refused access changes nothing).
    fn check_bytes(&self, gpa: GuestPhysAddr, len: usize) -> Result<u64, OutsideGuestMemory> {
        let start = gpa.as_u64();
        match start.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(start),
            _ => Err(OutsideGuestMemory(gpa)),
        }
    }
}

/// A fake pool of host frames for shadow tables.
pub struct FakeFrames {
    tables: Vec<Option<Box<[u64; 512]>>>,
    free: Vec<usize>,
    limit: usize,
    in_use: usize,
}

impl FakeFrames {
    /// A pool of at most `limit` frames.
    pub fn new(limit: usize) -> Self {
        Self {
            tables: Vec::new(),
            free: Vec::new(),
            limit,
            in_use: 0,
        }
    }

    /// Frames handed out and not yet freed.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Whether `frame` is a live shadow frame of this pool.
    pub fn owns(&self, frame: HostPhysAddr) -> bool {
        self.slot(frame).is_some_and(|i| self.tables[i].is_some())
    }

    fn slot(&self, frame: HostPhysAddr) -> Option<usize> {
        let pfn = frame.frame_number().checked_sub(SHADOW_FRAMES_BASE)? as usize;
        (frame.is_page_aligned() && pfn < self.tables.len()).then_some(pfn)
    }

    fn table(&self, frame: HostPhysAddr) -> &[u64; 512] {
        let i = self
            .slot(frame)
            .unwrap_or_else(|| panic!("{frame} is no shadow frame"));
        self.tables[i]
            .as_deref()
            .unwrap_or_else(|| panic!("{frame} used after free"))
    }
}

impl ShadowFrames for FakeFrames {
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr> {
        if self.in_use >= self.limit {
            return None;
        }
        let i = self.free.pop().unwrap_or_else(|| {
            self.tables.push(None);
            self.tables.len() - 1
        });
        self.tables[i] = Some(Box::new([0; 512]));
        self.in_use += 1;
        HostPhysAddr::from_frame_number(SHADOW_FRAMES_BASE + i as u64)
    }

    fn free(&mut self, frame: HostPhysAddr) {
        let i = self
            .slot(frame)
            .unwrap_or_else(|| panic!("freeing {frame}: no shadow frame"));
        assert!(self.tables[i].take().is_some(), "double free of {frame}");
        self.free.push(i);
        self.in_use -= 1;
    }

    fn read_entry(&self, table: HostPhysAddr, index: TableIndex) -> u64 {
        self.table(table)[index.as_usize()]
    }

    fn write_entry(&mut self, table: HostPhysAddr, index: TableIndex, value: u64) {
        let i = self
            .slot(table)
            .unwrap_or_else(|| panic!("{table} is no shadow frame"));
        let t = self.tables[i]
            .as_deref_mut()
            .unwrap_or_else(|| panic!("{table} written after free"));
        t[index.as_usize()] = value;
    }
}

use super::entry::{Level, ShadowEntry};
use super::{FaultDecision, PagingConfig, ShadowPaging};
use crate::addr::GuestVirtAddr;
use guest_abi::pte;

/// Guest memory of the fixture: 4 GiB, so 1 GiB pages fit.
pub const MEMORY_SIZE: u64 = 4 << 30;
/// The first guest root.
pub const ROOT_A: u64 = 0x1000;
/// A second guest root.
pub const ROOT_B: u64 = 0x2000;
/// Flags of the intermediate entries the fixture makes.
pub const TABLE_FLAGS: u64 = pte::PRESENT | pte::WRITABLE | pte::USER;

/// A guest with page tables built by hand, its shadow and its frames.
pub struct Fixture {
    /// The guest's memory.
    pub mem: FakeGuestMemory,
    /// The host's shadow frames.
    pub frames: FakeFrames,
    /// The shadow tables under test.
    pub paging: ShadowPaging,
    /// Guest roots made so far (kernel-half top-level entries are written
    /// to all of them, as the ABI asks).
    pub roots: Vec<u64>,
    next_table: u64,
}

impl Fixture {
    /// A guest running on [`ROOT_A`].
    pub fn new(config: PagingConfig) -> Self {
        let mem = FakeGuestMemory::new(MEMORY_SIZE);
        let mut frames = FakeFrames::new(10_000);
        let paging = ShadowPaging::new(config, &mem, &mut frames, ROOT_A).unwrap();
        Self {
            mem,
            frames,
            paging,
            roots: std::vec![ROOT_A, ROOT_B],
            next_table: 0x10_0000,
        }
    }

    /// A fresh zeroed guest table page.
    pub fn new_table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += PAGE_SIZE;
        t
    }

    /// The guest-physical address of the entry at `level` for `vaddr`
    /// under `root`, making missing tables above it with `upper` flags.
    pub fn entry_gpa(&mut self, root: u64, vaddr: u64, level: Level, upper: u64) -> u64 {
        let va = GuestVirtAddr::new_truncate(vaddr);
        let mut table = root;
        for l in Level::TOP_DOWN {
            let at = table + 8 * va.table_index(l.number()) as u64;
            if l == level {
                return at;
            }
            let e = self.mem.get(at);
            table = if e & pte::PRESENT != 0 {
                e & pte::ADDRESS_MASK
            } else {
                let t = self.new_table();
                if l == Level::L4 && va.is_upper_half() {
                    for r in self.roots.clone() {
                        self.mem.set(r + 8 * va.table_index(4) as u64, t | upper);
                    }
                } else {
                    self.mem.set(at, t | upper);
                }
                t
            };
        }
        unreachable!()
    }

    /// Writes a guest entry (making the tables above it).
    pub fn write(&mut self, root: u64, vaddr: u64, level: Level, value: u64) {
        let at = self.entry_gpa(root, vaddr, level, TABLE_FLAGS);
        self.mem.set(at, value);
    }

    /// Maps a 4 KiB page `vaddr` -> `gpa` with leaf `flags` under `root`.
    pub fn map(&mut self, root: u64, vaddr: u64, gpa: u64, flags: u64) {
        self.write(root, vaddr, Level::L1, gpa | flags | pte::PRESENT);
    }

    /// The guest entry at `level` for `vaddr` under `root`.
    pub fn guest_entry(&mut self, root: u64, vaddr: u64, level: Level) -> u64 {
        let at = self.entry_gpa(root, vaddr, level, TABLE_FLAGS);
        self.mem.get(at)
    }

    /// A page fault in the running address space.
    pub fn fault(&mut self, vaddr: u64, code: u64) -> FaultDecision {
        let va = GuestVirtAddr::try_new(vaddr).unwrap();
        self.paging
            .demand_page(&mut self.mem, &mut self.frames, va, code)
    }

    /// The shadow leaf for `vaddr` in the running root.
    pub fn leaf(&self, vaddr: u64) -> ShadowEntry {
        let va = GuestVirtAddr::try_new(vaddr).unwrap();
        ShadowPaging::shadow_leaf(&self.frames, self.paging.current_shadow_root(), va)
    }

    /// Reports a changed entry.
    pub fn set_entry(
        &mut self,
        root: u64,
        vaddr: u64,
        level: Level,
        value: u64,
    ) -> Result<(), super::PagingError> {
        self.paging.set_entry(
            &mut self.mem,
            &mut self.frames,
            root,
            vaddr,
            u64::from(level.number()),
            value,
        )
    }

    /// Tears the shadow down and checks every frame came back.
    pub fn teardown(self) -> super::PagingStats {
        let mut frames = self.frames;
        let stats = self.paging.teardown(&mut frames);
        assert_eq!(stats.frames_held, 0);
        assert_eq!(frames.in_use(), 0, "shadow frames leaked");
        stats
    }
}
