//! Hypercalls: `int 0x81`, and one wrapper per call.
//!
//! The convention (guest_abi::hypercall): the call's number in `rax`, up to
//! four arguments in `rdi`, `rsi`, `rdx`, `r10`, the result in `rax` (a
//! negated [`Error`] on failure), every other register preserved. The gate
//! has privilege level 1: only ring-1 code can use it.
//!
//! Calls that only read or report are safe functions. Calls that change
//! what the CPU will do with guest memory or control flow (where traps go,
//! which stack they use, which page tables are live) are `unsafe`: the
//! host checks that their arguments are inside guest memory, but only the
//! caller can know they are *right*.

use core::arch::asm;
use guest_abi::hypercall::{Error, Number, VECTOR};
use guest_abi::pte::MmuOp;

/// Makes hypercall `number` with `args`, and returns the raw `rax`.
///
/// # Safety
///
/// The arguments must be what the call expects: addresses of guest memory
/// the host may read or write as the call says, handlers and stacks that
/// are valid code and memory for as long as the host may use them.
#[inline(always)]
pub unsafe fn raw(number: Number, args: [u64; 4]) -> u64 {
    let result: u64;
    // SAFETY: `int 0x81` enters the host, which preserves every register
    // but rax (declared as the output) and does with memory only what the
    // call says, which the caller vouches for. It does not touch our stack
    // (the CPU switches to the host's stack for the gate), hence `nostack`.
    unsafe {
        asm!(
            "int {vector}",
            vector = const VECTOR,
            inlateout("rax") number as u64 => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            options(nostack),
        );
    }
    result
}

/// Splits a returned `rax` into a value or an [`Error`].
pub fn decode(rax: u64) -> Result<u64, Error> {
    match Error::from_return_value(rax) {
        Some(error) => Err(error),
        None => Ok(rax),
    }
}

/// A call that has no effect on guest memory or control flow.
fn harmless(number: Number, args: [u64; 4]) -> Result<u64, Error> {
    // SAFETY: every caller passes a call that takes no address and changes
    // nothing the program relies on (time, timer, halting, console reads of
    // a live buffer).
    decode(unsafe { raw(number, args) })
}

/// Prints `bytes` on the host console (the host prefixes the guest's
/// name). Returns the number of bytes written; long buffers are split into
/// calls of at most `CONSOLE_WRITE_MAX` bytes.
pub fn console_write(bytes: &[u8]) -> Result<u64, Error> {
    let mut written = 0;
    for chunk in bytes.chunks(guest_abi::hypercall::CONSOLE_WRITE_MAX as usize) {
        // The host only reads the buffer, which is borrowed for the call.
        written += harmless(
            Number::ConsoleWrite,
            [chunk.as_ptr() as u64, chunk.len() as u64, 0, 0],
        )?;
    }
    Ok(written)
}

/// Tells the host to deliver trap `vector` to `handler` (a guest-virtual
/// address) with `flags` (guest_abi::hypercall::trap_flags); 0 removes it.
///
/// # Safety
///
/// `handler` must be code that handles a trap frame as the host pushes it
/// (see [`crate::traps`]), for as long as it stays registered.
pub unsafe fn set_trap(vector: u8, handler: u64, flags: u64) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the handler.
    decode(unsafe { raw(Number::SetTrap, [vector.into(), handler, flags, 0]) })
}

/// Tells the host which stack to deliver traps on when they interrupt
/// guest user code.
///
/// # Safety
///
/// `top` must be the top of memory the guest kernel owns and does not use
/// for anything else while user code runs.
pub unsafe fn set_kernel_stack(top: u64) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the stack.
    decode(unsafe { raw(Number::SetKernelStack, [top, 0, 0, 0]) })
}

/// Sleeps until a virtual interrupt is pending (at once if one is). It is
/// not delivered here: that happens when the virtual flag allows.
pub fn halt() {
    let _ = harmless(Number::Halt, [0; 4]);
}

/// Raises the timer's virtual interrupt once, `ns` nanoseconds from now;
/// 0 cancels.
pub fn set_timer(ns: u64) -> Result<u64, Error> {
    harmless(Number::SetTimer, [ns, 0, 0, 0])
}

/// Nanoseconds since the host booted.
pub fn read_time() -> u64 {
    harmless(Number::ReadTime, [0; 4]).unwrap_or(0)
}

/// Ends the guest with exit `code`. The host never comes back.
pub fn shutdown(code: u64) -> ! {
    let _ = harmless(Number::Shutdown, [code, 0, 0, 0]);
    // A host that returned from Shutdown is broken; sleep rather than run on.
    loop {
        halt();
    }
}

/// Does nothing, through the host: what the benchmark times.
#[inline(always)]
pub fn nop() -> u64 {
    // SAFETY: Nop takes no arguments and changes nothing.
    unsafe { raw(Number::Nop, [0; 4]) }
}

/// Reports one page-table operation (guest_abi::pte) to the host.
///
/// # Safety
///
/// The operation changes what the host maps for us: the entry it reports
/// must be the one the guest wrote, in tables the guest means to use.
pub unsafe fn mmu_op(op: MmuOp) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the operation.
    decode(unsafe { raw(Number::MmuOp, op.encode()) })
}

/// Switches to the address space whose top-level table is at
/// guest-physical `root`.
///
/// # Safety
///
/// The new tables must map the running code, its stack and everything the
/// program goes on to use, where it expects them.
pub unsafe fn set_root(root: u64) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the tables.
    decode(unsafe { raw(Number::SetRoot, [root, 0, 0, 0]) })
}

/// Switches to another process: its address space (`root`, as for
/// [`set_root`]) and its kernel stack (`kernel_stack`, as for
/// [`set_kernel_stack`]), in one exit.
///
/// # Safety
///
/// As for [`set_root`] and [`set_kernel_stack`] together.
pub unsafe fn switch_process(root: u64, kernel_stack: u64) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the tables and the stack.
    decode(unsafe { raw(Number::SetRoot, [root, kernel_stack, 0, 0]) })
}

/// Starts (`phase` 0) or ends (`phase` 1) benchmark measurement `id`; at
/// the end the host prints the events in between (`bench events id=...`).
pub fn bench_mark(phase: u64, id: u64) -> Result<u64, Error> {
    // SAFETY: BenchMark only counts; it changes nothing of the guest.
    decode(unsafe { raw(Number::BenchMark, [phase, id, 0, 0]) })
}

/// Applies the page-table operations queued in the MMU ring of the shared
/// page (guest_abi::pte::ring); returns how many the host applied.
///
/// # Safety
///
/// As for [`mmu_op`], for every operation queued.
pub unsafe fn flush_mmu_ring() -> Result<u64, Error> {
    // SAFETY: the caller vouches for the queued operations.
    decode(unsafe { raw(Number::FlushMmuRing, [0; 4]) })
}

/// Starts vCPU number `vcpu` at guest-virtual `entry`, in ring 1, with
/// `rsp` = `stack` and `rdi` = `vcpu`, virtual interrupts off, in our
/// address space and with a copy of our traps; `shared_page` is the
/// guest-physical address of its own shared page, which the host zeroes.
/// vCPUs start in order (1, 2, ...), each once; [`crate::smp::start`] is
/// the safe way.
///
/// # Safety
///
/// `entry` must be code that runs on that stack with those registers and
/// never returns; `stack` the top of memory only the new vCPU uses, for as
/// long as it runs; `shared_page` a page nothing else in the guest uses
/// from now on (the host writes it behind our back).
pub unsafe fn start_vcpu(
    vcpu: u64,
    entry: u64,
    stack: u64,
    shared_page: u64,
) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the entry, the stack and the page.
    decode(unsafe { raw(Number::StartVcpu, [vcpu, entry, stack, shared_page]) })
}

/// Raises virtual interrupt `vector` on the guest's vCPU `vcpu` (this one
/// included): it wakes if halted, and takes the interrupt once its virtual
/// interrupts are on.
pub fn send_ipi(vcpu: u64, vector: u8) -> Result<u64, Error> {
    // SAFETY: only sets a pending bit in a vCPU's shared page.
    decode(unsafe { raw(Number::SendIpi, [vcpu, u64::from(vector), 0, 0]) })
}

/// Tells the host that the driver wrote device `device`'s page
/// (guest_abi::virtio): it reads the status there and, once the features
/// are accepted, which queues are ready. Returns the status it accepted
/// (also written back to the page).
///
/// # Safety
///
/// Every queue the page marks ready must describe rings in memory the
/// driver has handed to the device: from this call on, the host writes the
/// used ring there, and into the buffers the driver posts.
pub unsafe fn virtio_status(device: u64) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the rings the page describes.
    decode(unsafe { raw(Number::VirtioStatus, [device, 0, 0, 0]) })
}

/// Tells the host that buffers are available on queue `queue` of device
/// `device`; it takes every one before it returns.
///
/// # Safety
///
/// Every buffer made available on the queue must be memory the driver has
/// handed to the device: the host writes the device-writable ones.
pub unsafe fn virtio_notify(device: u64, queue: u64) -> Result<u64, Error> {
    // SAFETY: the caller vouches for the buffers on the queue.
    decode(unsafe { raw(Number::VirtioNotify, [device, queue, 0, 0]) })
}
