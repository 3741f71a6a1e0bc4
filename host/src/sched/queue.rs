//! A CPU's run queue: the vCPUs waiting for that CPU, in round-robin order.
//!
//! The round robin is positional, as the kernel's run loop always was:
//! every vCPU has a rank (the order it was added in), and a CPU serves its
//! waiting vCPUs in rank order, cyclically, starting after the rank it ran
//! last. A vCPU that wakes takes its own place in the cycle instead of
//! joining the back of a line, so on one CPU the order is exactly the old
//! loop's walk over its list of guests; each waiting vCPU still gets one
//! turn per cycle.
//!
//! The queue is a sorted vector of ranks whose capacity the scheduler
//! reserves when a vCPU is added ([`RunQueue::reserve_total`]): inserting
//! and removing then move a few words and never allocate.

/// A vCPU's place in the round robin: the order it was added in, never
/// reused.
pub type Rank = u64;

/// The vCPUs waiting for one CPU.
#[derive(Debug, Default)]
pub struct RunQueue {
    /// The waiting vCPUs' ranks, ascending.
    ranks: alloc::vec::Vec<Rank>,
    /// The rank this CPU ran last: the cycle resumes after it.
    last_run: Option<Rank>,
}

impl RunQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many vCPUs wait.
    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    /// Makes room for `total` waiting vCPUs (every vCPU the scheduler
    /// knows), so that no later insertion allocates.
    pub fn reserve_total(&mut self, total: usize) {
        self.ranks.reserve(total.saturating_sub(self.ranks.len()));
    }

    /// How many vCPUs it has room for without allocating.
    pub fn capacity(&self) -> usize {
        self.ranks.capacity()
    }

    /// Puts `rank` in its place in the cycle (once, however often asked).
    pub fn insert(&mut self, rank: Rank) {
        if let Err(at) = self.ranks.binary_search(&rank) {
            self.ranks.insert(at, rank);
        }
    }

    /// Takes `rank` out; says whether it was there.
    pub fn remove(&mut self, rank: Rank) -> bool {
        match self.ranks.binary_search(&rank) {
            Ok(at) => {
                self.ranks.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The waiting vCPUs in the order this CPU would run them: from the
    /// first after the one it ran last, round to the start.
    pub fn in_turn_order(&self) -> impl Iterator<Item = Rank> + '_ {
        let after = self.first_after_last_run();
        self.ranks[after..]
            .iter()
            .chain(&self.ranks[..after])
            .copied()
    }

    /// The vCPU this CPU runs next.
    pub fn next(&self) -> Option<Rank> {
        self.in_turn_order().next()
    }

    /// Takes the vCPU this CPU runs next out of the queue, and remembers
    /// it as the one that ran last.
    pub fn take_next(&mut self) -> Option<Rank> {
        let rank = self.next()?;
        self.remove(rank);
        self.last_run = Some(rank);
        Some(rank)
    }

    /// Whether `rank` waits here.
    pub fn contains(&self, rank: Rank) -> bool {
        self.ranks.binary_search(&rank).is_ok()
    }

    /// Whether the ranks are in ascending order, each once.
    pub fn is_sorted(&self) -> bool {
        self.ranks.windows(2).all(|pair| pair[0] < pair[1])
    }

    fn first_after_last_run(&self) -> usize {
        self.last_run
            .map_or(0, |last| self.ranks.partition_point(|&rank| rank <= last))
    }
}
