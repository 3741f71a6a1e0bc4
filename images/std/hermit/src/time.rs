//! The clocks, and sleeping.
//!
//! `CLOCK_MONOTONIC` is the host's time since it booted, read without an
//! exit from the time-stamp counter and the scale the host publishes in
//! the shared page (`guest_rt::time::now_ns`). The ABI has no real-time
//! clock, so `CLOCK_REALTIME` is the same count from a fixed epoch,
//! [`REALTIME_AT_HOST_BOOT_NS`]: 0, that is, `SystemTime::now()` reads as
//! 1970-01-01 plus the host's uptime. Differences of real times are right;
//! dates are not.

use crate::sched;
use hermit_abi::errno::EINVAL;
use hermit_abi::{CLOCK_MONOTONIC, CLOCK_REALTIME, clockid_t, timespec};

/// The real time (nanoseconds since 1970) at which the host booted: unknown
/// to a guest, so the epoch itself.
pub const REALTIME_AT_HOST_BOOT_NS: u64 = 0;

const NS_PER_SECOND: u64 = 1_000_000_000;

/// Host nanoseconds since boot.
pub fn now_ns() -> u64 {
    guest_rt::time::now_ns()
}

/// Nanoseconds since 1970 by our fixed epoch.
pub fn realtime_ns() -> u64 {
    REALTIME_AT_HOST_BOOT_NS + now_ns()
}

/// A `timespec` in nanoseconds; `None` if negative or out of range.
pub fn timespec_ns(value: timespec) -> Option<u64> {
    let seconds = u64::try_from(value.tv_sec).ok()?;
    let nanoseconds = u64::try_from(value.tv_nsec).ok()?;
    if nanoseconds >= NS_PER_SECOND {
        return None;
    }
    seconds.checked_mul(NS_PER_SECOND)?.checked_add(nanoseconds)
}

/// `clock_gettime(clock, tp)`: `CLOCK_MONOTONIC` or `CLOCK_REALTIME`;
/// `-EINVAL` for any other clock or a null `tp`.
///
/// # Safety
///
/// `tp` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_clock_gettime(clock: clockid_t, tp: *mut timespec) -> i32 {
    let ns = match clock {
        CLOCK_MONOTONIC => now_ns(),
        CLOCK_REALTIME => realtime_ns(),
        _ => return -EINVAL,
    };
    if tp.is_null() {
        return -EINVAL;
    }
    let value = timespec {
        tv_sec: (ns / NS_PER_SECOND) as i64,
        tv_nsec: (ns % NS_PER_SECOND) as i32,
    };
    // SAFETY: the caller promises `tp` is writable.
    unsafe { tp.write(value) };
    0
}

/// `usleep(usecs)`: the thread sleeps at least that long; others run.
#[unsafe(no_mangle)]
pub extern "C" fn sys_usleep(usecs: u64) {
    sched::sleep(usecs.saturating_mul(1000));
}

/// `nanosleep(req)`: 0, or `-EINVAL` for a null or malformed time.
///
/// # Safety
///
/// `req` is null or a readable `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_nanosleep(req: *const timespec) -> i32 {
    if req.is_null() {
        return -EINVAL;
    }
    // SAFETY: the caller promises a readable timespec.
    match timespec_ns(unsafe { req.read() }) {
        Some(ns) => {
            sched::sleep(ns);
            0
        }
        None => -EINVAL,
    }
}
