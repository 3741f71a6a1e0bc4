//! Walking the guest's own page tables, the way the CPU would.
//!
//! [`walk_guest`] follows the four levels from a guest root for one virtual
//! address, checking each present entry with [`GuestEntry::decode`] as it
//! goes, and gathers what the fault handler needs: where each entry lives
//! (to set its accessed and dirty bits later), the rights of the whole walk,
//! and the guest page the address lands in. It never writes: deciding and
//! changing are kept apart, so a walk can also serve the eager fill of
//! `set_entry`, which must not touch the guest's bits.
//!
//! The loop runs over [`Level::TOP_DOWN`], so a malformed (even cyclic) guest
//! table cannot make it run longer than four steps.

use super::entry::{GuestEntry, GuestEntryKind, GuestLimits, Level, PteFlags, Rights};
use super::error::PagingError;
use super::hw::GuestMemory;
use crate::addr::{GuestPhysAddr, GuestVirtAddr, PAGE_SIZE};
use bitflags::bitflags;

bitflags! {
    /// The error code of a page fault (the bits the host looks at).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultCode: u64 {
        /// Set: the page was present but the access not allowed; clear:
        /// nothing was mapped.
        const PROTECTION = 1 << 0;
        /// The access was a write.
        const WRITE = 1 << 1;
        /// The access came from ring 3.
        const USER = 1 << 2;
        /// A reserved bit was set in a table entry.
        const RESERVED = 1 << 3;
        /// The access was an instruction fetch.
        const FETCH = 1 << 4;
    }
}

/// One kind of memory access, as a page fault reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// A write (else a read or fetch).
    pub write: bool,
    /// From ring 3 (else from the guest kernel in ring 1: supervisor).
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// A supervisor write: what pinning the kernel stack asks for.
    pub const KERNEL_WRITE: Self = Self {
        write: true,
        user: false,
        fetch: false,
    };

    /// A supervisor read: what the host does to decode the guest's code.
    pub const KERNEL_READ: Self = Self {
        write: false,
        user: false,
        fetch: false,
    };

    /// The access a page-fault error code describes.
    pub const fn from_error_code(code: u64) -> Self {
        let code = FaultCode::from_bits_truncate(code);
        Self {
            write: code.contains(FaultCode::WRITE),
            user: code.contains(FaultCode::USER),
            fetch: code.contains(FaultCode::FETCH),
        }
    }

    /// The error code the guest should see for this access, found not
    /// present (`present == false`) or present but forbidden.
    pub const fn error_code(self, present: bool) -> u64 {
        let mut code = FaultCode::empty();
        if present {
            code = code.union(FaultCode::PROTECTION);
        }
        if self.write {
            code = code.union(FaultCode::WRITE);
        }
        if self.user {
            code = code.union(FaultCode::USER);
        }
        if self.fetch {
            code = code.union(FaultCode::FETCH);
        }
        code.bits()
    }

    /// Whether `rights` allow this access. The guest kernel is supervisor
    /// and CR0.WP is on, so a write needs write rights from it too.
    ///
    /// SMEP is modelled: a supervisor fetch from a user page (every level
    /// allowing user access) is refused, as the CPU refuses it when the
    /// host runs with CR4.SMEP (it does wherever the CPU has it). Were it
    /// judged allowed, the host would "fix" the fault by mapping the page
    /// the CPU had already mapped, and the guest would fault again for
    /// ever. The guest sees the same rule on every host: on one without
    /// SMEP, a fetch that finds the page already in the shadow is not
    /// refused by the CPU, but one that faults is always reflected.
    pub const fn allowed_by(self, rights: Rights) -> bool {
        let smep = self.fetch && !self.user && rights.user;
        (!self.write || rights.write)
            && (!self.user || rights.user)
            && (!self.fetch || rights.execute)
            && !smep
    }
}

/// A walk that reached a page (or, in [`WalkOutcome::NotPresent`], the
/// entry that stopped it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWalk {
    /// Where each entry of the walk lives and what it held, top level
    /// first; the first `depth` are used.
    entries: [(GuestPhysAddr, GuestEntry); 4],
    /// How many entries the walk went through (2..=4 for large pages).
    depth: usize,
    /// The level of the leaf entry.
    pub leaf_level: Level,
    /// The 4 KiB guest page the address lands in.
    pub page: GuestPhysAddr,
    /// The rights of the whole walk.
    pub rights: Rights,
}

impl GuestWalk {
    /// The entries walked, top level first, with their addresses.
    pub fn entries(&self) -> &[(GuestPhysAddr, GuestEntry)] {
        self.entries.get(..self.depth).unwrap_or(&[])
    }

    /// The leaf entry (the one that maps the page).
    pub fn leaf(&self) -> GuestEntry {
        self.entries()
            .last()
            .map_or(GuestEntry::new(0), |&(_, e)| e)
    }

    /// Where the leaf entry lives.
    pub fn leaf_gpa(&self) -> GuestPhysAddr {
        self.entries()
            .last()
            .map_or(GuestPhysAddr::new(0), |&(gpa, _)| gpa)
    }

    /// This walk, ended by a level-1 `leaf` that maps the 4 KiB `page` in
    /// place of the entry it ended on (written there since).
    pub fn with_leaf(mut self, leaf: GuestEntry, page: GuestPhysAddr) -> Self {
        if let Some(last) = self
            .depth
            .checked_sub(1)
            .and_then(|i| self.entries.get_mut(i))
        {
            last.1 = leaf;
        }
        self.leaf_level = Level::L1;
        self.page = page;
        self.rights = self.rights.narrowed_by(leaf.flags());
        self
    }

    /// Whether every entry of the walk already has its accessed bit.
    pub fn all_accessed(&self) -> bool {
        self.entries()
            .iter()
            .all(|(_, e)| e.flags().contains(PteFlags::ACCESSED))
    }
}

/// Where a walk ended.
#[derive(Clone, Copy, Debug)]
pub enum WalkOutcome {
    /// A page is mapped.
    Mapped(GuestWalk),
    /// An entry is not present: the walk as far as it went. Its last entry
    /// is the absent one (with the guest's own bits: a zero-on-demand
    /// entry, say), at `leaf_level`, and its rights are those of the levels
    /// above. (The same payload as `Mapped`, so that neither is copied
    /// about to be told apart.)
    NotPresent(GuestWalk),
}

/// The upper three levels of a full walk, down to a level-1 table: what
/// lets the next walk under the same table (a fault, or an eager fill's
/// report, in the same 2 MiB) skip decoding them again, as a CPU's
/// paging-structure cache does. Nothing in it is believed unless its three
/// entries, read again, still hold the values it decoded
/// ([`UpperWalk::holds`]); an eager fill's batch may read them once for all
/// its reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct UpperWalk {
    /// The address space walked.
    pub(super) root: GuestPhysAddr,
    /// The 2 MiB region (virtual address shifted right by 21).
    region: u64,
    /// Where the level-4, -3 and -2 entries live and what they held.
    entries: [(GuestPhysAddr, u64); 3],
    /// The level-1 table they lead to.
    pub(super) table: GuestPhysAddr,
    /// The rights of the three levels together.
    pub(super) rights: Rights,
}

impl UpperWalk {
    /// The upper part of `walk` (of `vaddr` in `root`), if it went through
    /// four levels, every one of the upper three already accessed (so that
    /// setting accessed bits does not change them at once).
    pub(super) fn of(root: GuestPhysAddr, vaddr: GuestVirtAddr, walk: &GuestWalk) -> Option<Self> {
        let [l4, l3, l2, l1] = walk.entries() else {
            return None;
        };
        let accessed = |e: &GuestEntry| e.flags().contains(PteFlags::ACCESSED);
        if !(accessed(&l4.1) && accessed(&l3.1) && accessed(&l2.1)) {
            return None;
        }
        let table = GuestPhysAddr::new(l1.0.as_u64() & !0xfff);
        let rights = Rights::ALL
            .narrowed_by(l4.1.flags())
            .narrowed_by(l3.1.flags())
            .narrowed_by(l2.1.flags());
        Some(Self {
            root,
            region: Self::region_of(vaddr),
            entries: [(l4.0, l4.1.raw()), (l3.0, l3.1.raw()), (l2.0, l2.1.raw())],
            table,
            rights,
        })
    }

    fn region_of(vaddr: GuestVirtAddr) -> u64 {
        vaddr.as_u64() / Level::L2.bytes_mapped()
    }

    /// Whether this walk leads to the level-1 table of `vaddr` in `root`.
    pub(super) fn covers(&self, root: GuestPhysAddr, vaddr: GuestVirtAddr) -> bool {
        self.root == root && self.region == Self::region_of(vaddr)
    }

    /// Whether the three entries still hold what this walk decoded.
    pub(super) fn holds<M: GuestMemory>(&self, mem: &M) -> bool {
        self.entries
            .iter()
            .all(|&(gpa, raw)| mem.read_u64(gpa) == Ok(raw))
    }

    /// The walk of `vaddr` (which this walk covers, and whose entries
    /// still hold): only its level-1 entry is read and decoded. The same
    /// outcome as [`walk_guest`]'s.
    pub(super) fn walk_leaf<M: GuestMemory>(
        &self,
        mem: &M,
        vaddr: GuestVirtAddr,
        limits: &GuestLimits,
    ) -> Result<WalkOutcome, PagingError> {
        let entry_gpa = GuestPhysAddr::new(self.table.as_u64() + vaddr.table_index(1) as u64 * 8);
        let entry = GuestEntry::new(
            mem.read_u64(entry_gpa)
                .map_err(|_| PagingError::GuestMemory { gpa: entry_gpa })?,
        );
        let [(g4, e4), (g3, e3), (g2, e2)] = self.entries;
        let entries = [
            (g4, GuestEntry::new(e4)),
            (g3, GuestEntry::new(e3)),
            (g2, GuestEntry::new(e2)),
            (entry_gpa, entry),
        ];
        let mut walk = GuestWalk {
            entries,
            depth: 4,
            leaf_level: Level::L1,
            page: GuestPhysAddr::new(0),
            rights: self.rights,
        };
        Ok(match entry.decode(Level::L1, vaddr, limits)? {
            GuestEntryKind::Page { base, .. } => {
                walk.page = base;
                walk.rights = self.rights.narrowed_by(entry.flags());
                WalkOutcome::Mapped(walk)
            }
            // A level-1 entry is a page or absent.
            GuestEntryKind::Absent | GuestEntryKind::Table(_) => WalkOutcome::NotPresent(walk),
        })
    }
}

/// Walks the guest's tables from `root` for `vaddr`; see the module docs.
pub fn walk_guest<M: GuestMemory>(
    mem: &M,
    root: GuestPhysAddr,
    vaddr: GuestVirtAddr,
    limits: &GuestLimits,
) -> Result<WalkOutcome, PagingError> {
    let mut table = root;
    let mut rights = Rights::ALL;
    let mut entries = [(GuestPhysAddr::new(0), GuestEntry::new(0)); 4];
    for (depth, level) in Level::TOP_DOWN.into_iter().enumerate() {
        let index = vaddr.table_index(level.number()) as u64;
        let entry_gpa = GuestPhysAddr::new(table.as_u64() + index * 8);
        let entry = GuestEntry::new(
            mem.read_u64(entry_gpa)
                .map_err(|_| PagingError::GuestMemory { gpa: entry_gpa })?,
        );
        // `depth` counts the four levels, so it is always below 4.
        if let Some(slot) = entries.get_mut(depth) {
            *slot = (entry_gpa, entry);
        }
        match entry.decode(level, vaddr, limits)? {
            GuestEntryKind::Absent => {
                return Ok(WalkOutcome::NotPresent(GuestWalk {
                    entries,
                    depth: depth + 1,
                    leaf_level: level,
                    page: GuestPhysAddr::new(0),
                    rights,
                }));
            }
            GuestEntryKind::Table(next) => {
                rights = rights.narrowed_by(entry.flags());
                table = next;
            }
            GuestEntryKind::Page { base, level } => {
                let offset = vaddr.as_u64() & (level.bytes_mapped() - 1) & !(PAGE_SIZE - 1);
                return Ok(WalkOutcome::Mapped(GuestWalk {
                    entries,
                    depth: depth + 1,
                    leaf_level: level,
                    page: GuestPhysAddr::new(base.as_u64() + offset),
                    rights: rights.narrowed_by(entry.flags()),
                }));
            }
        }
    }
    // Level 1 entries always decode to a page or absent, so the loop
    // returns before this; a walk that did not is treated as not present.
    Ok(WalkOutcome::NotPresent(GuestWalk {
        entries,
        depth: 0,
        leaf_level: Level::L1,
        page: table,
        rights,
    }))
}
