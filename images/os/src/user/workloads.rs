//! The workloads: each does real work across processes and checks it,
//! printing one line with the result. Each returns whether it passed.

use super::{Line, exit, fork, free_pages, peek, pipe, pipe_free, poke, receive, sbrk, send, wait};

const PAGE: u64 = 4096;

/// A fork-and-compute tree: the sum of `i * i` for `i` below [`TREE_N`],
/// split in halves down [`TREE_DEPTH`] levels of processes; each leaf sums
/// its share through an array on its (demand-zero) heap, each inner node
/// adds what its two children return as exit codes.
pub fn fork_tree() -> bool {
    let sum = tree(TREE_DEPTH, 0, TREE_N);
    let n = TREE_N;
    let expected = (n - 1) * n * (2 * n - 1) / 6;
    let ok = sum == expected;
    Line::new()
        .text("forktree: depth=")
        .num(u64::from(TREE_DEPTH))
        .text(" processes=")
        .num((1 << (TREE_DEPTH + 1)) - 2)
        .text(" sum=")
        .num(sum)
        .text(" expected=")
        .num(expected)
        .text(if ok { " ok" } else { " WRONG" })
        .print();
    ok
}

const TREE_DEPTH: u32 = 3;
const TREE_N: u64 = 1 << 14;

fn tree(depth: u32, lo: u64, hi: u64) -> u64 {
    if depth == 0 {
        return leaf_sum(lo, hi);
    }
    let mid = lo + (hi - lo) / 2;
    let mut sum = 0;
    let mut children = 0;
    for (a, b) in [(lo, mid), (mid, hi)] {
        match fork() {
            Some(0) => exit(tree(depth - 1, a, b)),
            Some(_) => children += 1,
            None => sum += tree(depth - 1, a, b), // out of processes: do it here
        }
    }
    for _ in 0..children {
        match wait() {
            Some((_, part)) => sum += part,
            None => return 0,
        }
    }
    sum
}

fn leaf_sum(lo: u64, hi: u64) -> u64 {
    let bytes = (hi - lo) * 8;
    let array = sbrk(bytes as i64);
    for i in lo..hi {
        poke(array + (i - lo) * 8, i * i);
    }
    let mut sum = 0;
    for i in lo..hi {
        sum += peek(array + (i - lo) * 8);
    }
    sbrk(-(bytes as i64));
    sum
}

/// Ping-pong over two pipes: the parent sends a number, the child sends it
/// back plus one, [`ROUNDS`] times.
pub fn ping_pong() -> bool {
    let (ok, rounds) = ping_pong_rounds(ROUNDS);
    Line::new()
        .text("pingpong: rounds=")
        .num(rounds)
        .text(if ok { " ok" } else { " WRONG" })
        .print();
    ok
}

const ROUNDS: u64 = 500;

/// The ping-pong itself; returns whether every answer was right, and how
/// many rounds were made.
pub fn ping_pong_rounds(rounds: u64) -> (bool, u64) {
    let (there, back) = (pipe(), pipe());
    match fork() {
        Some(0) => {
            for _ in 0..rounds {
                let Some(v) = receive(there) else { exit(1) };
                send(back, v + 1);
            }
            exit(0)
        }
        None => return (false, 0),
        Some(_) => {}
    }
    let mut ok = true;
    let mut done = 0;
    for i in 0..rounds {
        ok &= send(there, i * 3);
        ok &= receive(back) == Some(i * 3 + 1);
        done += 1;
    }
    ok &= matches!(wait(), Some((_, 0)));
    pipe_free(there);
    pipe_free(back);
    (ok, done)
}

/// A memory toucher: grows the heap by [`TOUCH_PAGES`] pages, checks they
/// read as zero, writes and checks a pattern, and gives them back,
/// [`TOUCH_ROUNDS`] times; every page must come back to the kernel.
pub fn mem_touch() -> bool {
    let mut ok = true;
    let mut free_after_first = 0;
    for round in 0..TOUCH_ROUNDS {
        let base = sbrk((TOUCH_PAGES * PAGE) as i64);
        for p in 0..TOUCH_PAGES {
            let page = base + p * PAGE;
            ok &= peek(page) == 0 && peek(page + PAGE - 8) == 0;
            poke(page, round << 32 | p);
            poke(page + PAGE - 8, !(round << 32 | p));
        }
        for p in 0..TOUCH_PAGES {
            let page = base + p * PAGE;
            ok &= peek(page) == round << 32 | p && peek(page + PAGE - 8) == !(round << 32 | p);
        }
        sbrk(-((TOUCH_PAGES * PAGE) as i64));
        // The first round also made the heap's page tables, which stay.
        if round == 0 {
            free_after_first = free_pages();
        }
    }
    let balanced = free_pages() == free_after_first;
    ok &= balanced;
    Line::new()
        .text("memtouch: pages=")
        .num(TOUCH_PAGES)
        .text(" rounds=")
        .num(TOUCH_ROUNDS)
        .text(if balanced {
            " pages returned"
        } else {
            " PAGES LEAKED"
        })
        .text(if ok { " ok" } else { " WRONG" })
        .print();
    ok
}

const TOUCH_PAGES: u64 = 256;
const TOUCH_ROUNDS: u64 = 4;

/// The copy-on-write micro-benchmark of lguest's seed: the parent fills a
/// buffer of [`COW_PAGES`] pages, then forks [`COW_CHILDREN`] children that
/// each check they see the parent's bytes, write their own over the whole
/// buffer (a copy-on-write fault per page) and check them; the parent's
/// buffer must come through unchanged.
pub fn cow() -> bool {
    let ok = cow_children(COW_CHILDREN);
    Line::new()
        .text("cow: children=")
        .num(COW_CHILDREN)
        .text(" pages=")
        .num(COW_PAGES)
        .text(if ok { " ok" } else { " WRONG" })
        .print();
    ok
}

/// Pages of the shared buffer.
pub const COW_PAGES: u64 = 64;
/// Children forked over it.
pub const COW_CHILDREN: u64 = 8;

/// The copy-on-write run with `children` children; whether all checks
/// passed.
pub fn cow_children(children: u64) -> bool {
    let words = COW_PAGES * PAGE / 8;
    let buffer = sbrk((COW_PAGES * PAGE) as i64);
    for w in 0..words {
        poke(buffer + w * 8, 0xa5a5_0000_0000 | w);
    }
    let mut forked = 0;
    for c in 1..=children {
        match fork() {
            Some(0) => {
                let mut ok = true;
                for w in 0..words {
                    ok &= peek(buffer + w * 8) == 0xa5a5_0000_0000 | w;
                    poke(buffer + w * 8, c << 40 | w);
                }
                for w in 0..words {
                    ok &= peek(buffer + w * 8) == c << 40 | w;
                }
                exit(if ok { 0 } else { 1 })
            }
            Some(_) => forked += 1,
            None => break,
        }
    }
    let mut ok = forked == children;
    for _ in 0..forked {
        ok &= matches!(wait(), Some((_, 0)));
    }
    for w in 0..words {
        ok &= peek(buffer + w * 8) == 0xa5a5_0000_0000 | w;
    }
    sbrk(-((COW_PAGES * PAGE) as i64));
    ok
}
