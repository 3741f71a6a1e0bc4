//! The CPUs, by number, and small sets of them.
//!
//! A set is a 128-bit mask, so that [`super::Scheduler::pick`] can hand
//! back the CPUs to kick without allocating; the switcher's slot has room
//! for 124 CPUs' pages, so 128 is enough.

/// The most CPUs the scheduler shares out.
pub const MAX_CPUS: usize = 128;

/// A CPU, numbered from 0 (the boot CPU) as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub usize);

impl CpuId {
    /// The boot CPU.
    pub const BOOT: Self = Self(0);

    /// Its number, as an index.
    pub const fn index(self) -> usize {
        self.0
    }
}

impl core::fmt::Display for CpuId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cpu {}", self.0)
    }
}

/// A set of CPUs: those to kick with an inter-processor interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(u128);

impl CpuSet {
    /// No CPU.
    pub const EMPTY: Self = Self(0);

    /// Adds `cpu`.
    pub fn insert(&mut self, cpu: CpuId) {
        self.0 |= 1 << cpu.index();
    }

    /// Whether `cpu` is in the set.
    pub fn contains(self, cpu: CpuId) -> bool {
        cpu.index() < MAX_CPUS && self.0 & (1 << cpu.index()) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many CPUs it holds.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The lowest-numbered CPU in it.
    pub fn first(self) -> Option<CpuId> {
        (self.0 != 0).then(|| CpuId(self.0.trailing_zeros() as usize))
    }

    /// Its CPUs, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        let mut rest = self.0;
        core::iter::from_fn(move || {
            let cpu = (rest != 0).then(|| rest.trailing_zeros() as usize)?;
            rest &= rest - 1;
            Some(CpuId(cpu))
        })
    }
}
