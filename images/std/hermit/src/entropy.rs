//! Random bytes for std (`HashMap`'s keys, `std::random`).
//!
//! From the CPU's `rdrand` when CPUID says it has one (QEMU's TCG offers
//! it with `-cpu max`, most hardware has it). Without it, from a
//! splitmix64 generator seeded with the time-stamp counter: unpredictable
//! enough to spread hash keys, **not** cryptographically secure. The
//! runtime says so once on the console when it falls back.

use crate::console;
use crate::sync::IrqLock;
use core::arch::x86_64::__cpuid;
use hermit_abi::errno::{EFAULT, EINVAL};

/// CPUID leaf 1, ECX bit 30: `rdrand`.
const CPUID_ECX_RDRAND: u32 = 1 << 30;

/// How often to retry a `rdrand` that has no number ready, as Intel
/// advises, before deciding it is broken.
const RDRAND_RETRIES: usize = 10;

/// The fallback generator's state; 0 until seeded.
static FALLBACK: IrqLock<u64> = IrqLock::new(0);

fn has_rdrand() -> bool {
    // CPUID is not privileged, and leaf 1 exists on every x86-64 CPU.
    __cpuid(1).ecx & CPUID_ECX_RDRAND != 0
}

/// One `rdrand`, retried a little; `None` if the CPU gives none.
fn rdrand() -> Option<u64> {
    for _ in 0..RDRAND_RETRIES {
        let value: u64;
        let ready: u8;
        // SAFETY: rdrand only writes the register and the carry flag; the
        // caller checked CPUID for it.
        unsafe {
            core::arch::asm!(
                "rdrand {value}",
                "setc {ready}",
                value = out(reg) value,
                ready = out(reg_byte) ready,
                options(nomem, nostack),
            );
        }
        if ready != 0 {
            return Some(value);
        }
    }
    None
}

/// The next number of the fallback generator (splitmix64).
fn fallback() -> u64 {
    FALLBACK.with(|state| {
        if *state == 0 {
            *state = guest_rt::time::cycles() | 1;
            console::report(format_args!(
                "no rdrand: random numbers come from a TSC-seeded generator, not a secure one"
            ));
        }
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `read_entropy(buf, len, flags)`: fills `buf`, returns `len`; `-EINVAL`
/// for any flag (none is known).
///
/// # Safety
///
/// `buf` is valid for writing `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_read_entropy(buf: *mut u8, len: usize, flags: u32) -> isize {
    if flags != 0 {
        return -(EINVAL as isize);
    }
    if len == 0 {
        return 0;
    }
    if buf.is_null() {
        return -(EFAULT as isize);
    }
    // SAFETY: the caller promises `len` writable bytes.
    let buffer = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    let use_rdrand = has_rdrand();
    for chunk in buffer.chunks_mut(8) {
        let value = use_rdrand.then(rdrand).flatten().unwrap_or_else(fallback);
        chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
    }
    isize::try_from(len).unwrap_or(isize::MAX)
}
