//! `futex_wait` and `futex_wake`: what std's mutexes, condition variables,
//! `Once`, thread parking and channels are built on.
//!
//! A waiter blocks only if the word still holds the value it expects, and
//! the check and the blocking happen with virtual interrupts off, so a
//! wake between them cannot be missed (the scheduler does both, see
//! `sched::futex_wait`).

use crate::{sched, time};
use core::sync::atomic::AtomicU32;
use hermit_abi::errno::EINVAL;
use hermit_abi::{FUTEX_RELATIVE_TIMEOUT, timespec};

/// `futex_wait(address, expected, timeout, flags)`: 0 when woken,
/// `-EAGAIN` if `*address != expected`, `-ETIMEDOUT` when the timeout
/// (relative with `FUTEX_RELATIVE_TIMEOUT`, else an absolute
/// `CLOCK_MONOTONIC` time) passes first, `-EINVAL` for a null address, a
/// negative timeout or unknown flags.
///
/// # Safety
///
/// `address` is null or a live, aligned `u32`; `timeout` is null or a
/// readable `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_futex_wait(
    address: *mut u32,
    expected: u32,
    timeout: *const timespec,
    flags: u32,
) -> i32 {
    if address.is_null() || flags & !FUTEX_RELATIVE_TIMEOUT != 0 {
        return -EINVAL;
    }
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: the caller promises a readable timespec.
        let Some(ns) = time::timespec_ns(unsafe { timeout.read() }) else {
            return -EINVAL;
        };
        Some(if flags & FUTEX_RELATIVE_TIMEOUT != 0 {
            time::now_ns().saturating_add(ns)
        } else {
            ns
        })
    };
    // SAFETY: the caller promises a live, aligned u32, which other threads
    // change only atomically (std's futex users do).
    let word = unsafe { AtomicU32::from_ptr(address) };
    match sched::futex_wait(word, expected, deadline) {
        Ok(()) => 0,
        Err(errno) => -errno,
    }
}

/// `futex_wake(address, count)`: wakes up to `count` waiters (all for
/// `i32::MAX`); returns how many, or `-EINVAL` for a null address or a
/// negative count.
#[unsafe(no_mangle)]
pub extern "C" fn sys_futex_wake(address: *mut u32, count: i32) -> i32 {
    if address.is_null() || count < 0 {
        return -EINVAL;
    }
    let woken = sched::futex_wake(address.cast(), count as usize);
    i32::try_from(woken).unwrap_or(i32::MAX)
}
