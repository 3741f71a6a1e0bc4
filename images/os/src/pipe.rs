//! Pipes: bounded byte queues between processes.
//!
//! A pipe is a ring of [`PIPE_BYTES`] bytes in the kernel. `read` blocks
//! while it is empty and returns what is there (at least one byte);
//! `write` blocks while it is full and returns when all its bytes are in.
//! Pipes are named by a small number that a process passes on to the
//! children it forks (there are no file descriptors in this OS).
//!
//! User buffers are copied through a kernel buffer on the stack, outside
//! any borrow of the pipe table: touching user memory may fault (demand
//! zero, copy-on-write), and the fault handler must find no borrow held.

use crate::cell::Kernel;
use crate::process::{self, Wait};

/// How many pipes may exist at once.
pub const MAX_PIPES: usize = 8;
/// Bytes a pipe holds.
pub const PIPE_BYTES: usize = 512;

#[derive(Clone, Copy)]
struct Pipe {
    in_use: bool,
    bytes: [u8; PIPE_BYTES],
    /// Where the oldest byte is.
    start: usize,
    len: usize,
}

const UNUSED: Pipe = Pipe {
    in_use: false,
    bytes: [0; PIPE_BYTES],
    start: 0,
    len: 0,
};

static PIPES: Kernel<[Pipe; MAX_PIPES]> = Kernel::new([UNUSED; MAX_PIPES]);

/// A new, empty pipe's number.
pub fn create() -> Option<usize> {
    PIPES.with(|pipes| {
        let n = pipes.iter().position(|p| !p.in_use)?;
        pipes[n] = Pipe {
            in_use: true,
            ..UNUSED
        };
        Some(n)
    })
}

/// Frees pipe `n`.
pub fn destroy(n: usize) -> bool {
    PIPES.with(|pipes| match pipes.get_mut(n) {
        Some(p) if p.in_use => {
            *p = UNUSED;
            true
        }
        _ => false,
    })
}

fn exists(n: usize) -> bool {
    PIPES.with(|pipes| pipes.get(n).is_some_and(|p| p.in_use))
}

/// Reads up to `buf.len()` bytes (at least one) from pipe `n`, blocking
/// while it is empty. `None` if there is no such pipe.
pub fn read(n: usize, buf: &mut [u8]) -> Option<usize> {
    if !exists(n) {
        return None;
    }
    loop {
        let got = PIPES.with(|pipes| {
            let p = &mut pipes[n];
            let count = p.len.min(buf.len());
            for (i, byte) in buf[..count].iter_mut().enumerate() {
                *byte = p.bytes[(p.start + i) % PIPE_BYTES];
            }
            p.start = (p.start + count) % PIPE_BYTES;
            p.len -= count;
            count
        });
        if got > 0 || buf.is_empty() {
            process::wake(Wait::PipeWrite(n));
            return Some(got);
        }
        process::block(Wait::PipeRead(n));
    }
}

/// Writes all of `buf` into pipe `n`, blocking while it is full.
pub fn write(n: usize, buf: &[u8]) -> Option<usize> {
    if !exists(n) {
        return None;
    }
    let mut done = 0;
    while done < buf.len() {
        let put = PIPES.with(|pipes| {
            let p = &mut pipes[n];
            let count = (PIPE_BYTES - p.len).min(buf.len() - done);
            for (i, &byte) in buf[done..done + count].iter().enumerate() {
                p.bytes[(p.start + p.len + i) % PIPE_BYTES] = byte;
            }
            p.len += count;
            count
        });
        done += put;
        if put > 0 {
            process::wake(Wait::PipeRead(n));
        }
        if done < buf.len() {
            process::block(Wait::PipeWrite(n));
        }
    }
    Some(done)
}
