//! The thread `sys_*` functions std calls: spawning, joining, yielding,
//! and how many CPUs there are (the vCPUs that run threads).

use crate::sched::{self, Tid};
use hermit_abi::errno::EINVAL;

/// `spawn2(func, arg, prio, stack_size, core_id)`: the new thread's id, or
/// 0 when it could not be made (no room for its stack or thread-local
/// block: std then reports an error, nothing crashes). Priorities and
/// cores are ignored: threads take turns on whichever vCPU is free.
#[unsafe(no_mangle)]
pub extern "C" fn sys_spawn2(
    func: extern "C" fn(usize),
    arg: usize,
    _prio: u8,
    stack_size: usize,
    _core_id: isize,
) -> Tid {
    sched::spawn(func, arg, stack_size).unwrap_or(0)
}

/// `spawn(id, func, arg, prio, core_id)`: as `spawn2` with std's default
/// stack size; 0, or `-EINVAL` when the thread could not be made.
///
/// # Safety
///
/// `id` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_spawn(
    id: *mut Tid,
    func: extern "C" fn(usize),
    arg: usize,
    prio: u8,
    core_id: isize,
) -> i32 {
    const DEFAULT_STACK_BYTES: usize = 1 << 20;
    let tid = sys_spawn2(func, arg, prio, DEFAULT_STACK_BYTES, core_id);
    if tid == 0 {
        return -EINVAL;
    }
    if !id.is_null() {
        // SAFETY: the caller promises `id` is writable.
        unsafe { id.write(tid) };
    }
    0
}

/// `join(id)`: 0 once the thread has finished; `-ESRCH` for no such thread.
#[unsafe(no_mangle)]
pub extern "C" fn sys_join(id: Tid) -> i32 {
    match sched::join(id) {
        Ok(()) => 0,
        Err(errno) => -errno,
    }
}

/// `yield_now()`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_yield() {
    sched::yield_now();
}

/// `available_parallelism()`: how many vCPUs run threads (1 unless the
/// guest has several and `FSGSBASE`, see `smp`).
#[unsafe(no_mangle)]
pub extern "C" fn sys_available_parallelism() -> usize {
    crate::smp::running()
}
